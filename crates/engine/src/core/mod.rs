//! The engine core: every container and image operation the API offers, as typed calls.
//!
//! The API layer parses a request, calls one method here and turns the result (or
//! [`EngineError`]) into a response; it never touches the runtime, the state directory or the
//! image store itself. The core owns the container table, persists every state change
//! (`state`), spawns the runtime (`container::launch`) and runs one monitor task per running
//! container that pumps its output and records its exit.
//!
//! Error messages here are Docker's own texts (capitalised where Docker's are), because the
//! `docker` CLI prints them verbatim and scripts match on them.
//!
//! This file holds the [`Engine`] itself (its shared state, `open`, the container table and
//! the helpers every operation uses); the operations live in files named for what they hold:
//!
//! - `error`: [`EngineError`].
//! - `create`: `docker create`; `host_config`: dockerd's `HostConfig` defaults and checks and
//!   the runtime features they become; `options`: the per-container namespace, ulimit, sysctl,
//!   device and DNS options; `unsupported`: options refused by name.
//! - `start`: launching the runtime and the monitor of a running container; `lifecycle`:
//!   stop, kill, restart, wait, pause/unpause, rename; `restart`: restart policies and their
//!   supervisor; `signal`: signal names; `health`: healthchecks.
//! - `remove`: `rm` and `container prune`; `exec`: exec instances; `attach`: attach, logs and
//!   resize; `resources`: update, top, stats and the limit checks; `archive`: `docker cp`,
//!   export, diff and sizes; `images`: image load, list, inspect and remove; `lookup`: the
//!   lookups of `ps` filters; `list`: `docker ps`; `volumes`: the volume API and the mounts
//!   of a container (decided at create, made at start); `host_ready`: what waits for the
//!   host's kernel modules in a machine that is still booting.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use rmachine_runtime::cgroup::{Cgroup, CgroupError};
use rmachine_runtime::spec::{self, SpecFile};
use tracing::{debug, info, warn};

use crate::container::Container;
use crate::events::EventBus;
use crate::image::ImageStore;
use crate::state::{ContainerRecord, StateStore, Status};

mod archive;
mod attach;
mod build;
mod create;
mod error;
mod exec;
mod health;
mod host_config;
mod host_ready;
mod image_ops;
mod images;
mod lifecycle;
mod list;
pub(crate) mod lookup;
pub mod networks;
mod options;
mod pull;
mod remove;
mod resources;
mod restart;
mod signal;
mod start;
mod unsupported;
mod volumes;

pub use archive::ContainerSizes;
pub use attach::{AttachSession, LogSource};
pub use build::{BuildRequest, PreparedBuild};
pub use create::{CreateRequest, Created};
pub use error::EngineError;
pub use host_config::DEFAULT_RUNTIME;
pub use image_ops::{repo_tag, CommitOptions, ImagePruneFilters, ImagePruneReport, ImportOptions};
pub use lifecycle::WaitCondition;
pub use list::{ListOptions, ListedContainer};
pub use remove::{PruneFilters, PruneReport};
pub use signal::{parse_kill_signal, parse_signal};
pub use volumes::VolumeFilters;

use error::io_err;
use host_config::features_of;

/// How long output pumps may run on after the container's process ended.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Engine settings from the command line.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// `--data-root`.
    pub data_root: PathBuf,
    /// `--exec-root`: state that need not survive a reboot (exec specs, under `execs/`; see [`exec_dir`]).
    pub exec_root: PathBuf,
    /// The runtime binary.
    pub runtime: PathBuf,
    /// `--label K=V`.
    pub labels: Vec<String>,
    /// `--registry-mirror` and `--insecure-registry`, checked.
    pub registry: crate::registry_config::RegistryConfig,
    /// `--debug`.
    pub debug: bool,
}

/// Container counts for `/info`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// All containers.
    pub total: usize,
    /// Running ones.
    pub running: usize,
    /// Paused ones (none: pause is not supported).
    pub paused: usize,
    /// The others.
    pub stopped: usize,
}

#[derive(Default)]
struct Table {
    by_id: BTreeMap<String, Arc<Container>>,
    names: HashMap<String, String>,
}

struct Inner {
    config: EngineConfig,
    engine_id: String,
    images: Arc<ImageStore>,
    state: StateStore,
    volumes: Arc<crate::volume::VolumeStore>,
    events: EventBus,
    table: Mutex<Table>,
    execs: exec::ExecTable,
    restarts: restart::RestartManager,
    network: networks::NetworkState,
    /// Held from checking who uses a volume to deleting it, and from choosing a new
    /// container's volumes until it is in the table: a volume is never deleted under a
    /// container being created.
    volume_uses: Mutex<()>,
    /// The exec root's lock ([`crate::daemon::lock::lock_exec_root`]), held for the engine's
    /// life: no other engine empties its exec specs.
    _exec_root_lock: crate::daemon::lock::DataRootLock,
    /// Whether containers may start yet (`host_ready`).
    host_ready: host_ready::HostReady,
}

/// The engine: shared by every connection, cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("data_root", &self.inner.config.data_root)
            .finish()
    }
}

fn lock(m: &Mutex<Table>) -> MutexGuard<'_, Table> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn conflict(reason: String) -> EngineError {
    EngineError::Conflict { reason }
}

fn cgroup_err(id: &str) -> impl FnOnce(CgroupError) -> EngineError + '_ {
    move |source| EngineError::Cgroup {
        id: id.to_string(),
        source,
    }
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_string())
}

/// Removes the cgroup a container's monitor left behind when it was killed together with the
/// previous engine (a SIGKILLed monitor cannot clean up), killing any straggler in it.
fn cgroup_of(record: &ContainerRecord) -> Result<Cgroup, EngineError> {
    let features = features_of(&record.host_config);
    Cgroup::for_container(&record.id, features.cgroup_parent.as_deref())
        .map_err(cgroup_err(&record.id))
}

fn read_spec(c: &Container) -> Result<SpecFile, EngineError> {
    let path = c.dir.join(spec::SPEC_FILE);
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    serde_json::from_slice(&bytes).map_err(|e| EngineError::Io {
        path,
        source: std::io::Error::other(e),
    })
}

impl Engine {
    /// Opens the data root: image store, container records (containers recorded as running
    /// are marked exited, since their processes died with the previous engine).
    ///
    /// The caller MUST hold the data root's lock ([`crate::daemon::lock`]): the startup
    /// reconcile ([`crate::recovery`]) kills every container process of this data root it
    /// finds, which would be another engine's if two shared it.
    pub fn open(config: EngineConfig) -> Result<Engine, EngineError> {
        std::fs::create_dir_all(&config.data_root).map_err(io_err(&config.data_root))?;
        let images = Arc::new(ImageStore::open(&config.data_root.join("image"))?);
        let state = StateStore::open(&config.data_root)?;
        let volumes = Arc::new(crate::volume::VolumeStore::open(&config.data_root)?);
        crate::state::modes::ensure_dir(
            &config.data_root.join("tmp"),
            crate::state::modes::PRIVATE_DIR,
        );
        crate::state::modes::secure(&config.data_root);
        // The exec root is created private if missing; an existing one (`--exec-root /run`)
        // keeps its mode: only the engine's own `execs` directory is made private.
        if !config.exec_root.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(crate::state::modes::PRIVATE_DIR)
                .create(&config.exec_root)
                .map_err(io_err(&config.exec_root))?;
        }
        // Another engine with the same exec root (the default one, another --data-root)
        // would have its execs' specs removed below: refuse instead.
        let exec_root_lock = crate::daemon::lock::lock_exec_root(&config.exec_root)?;
        // Exec specs live only while their runtime starts; what a killed engine left there
        // is stale (a reboot empties the tmpfs anyway).
        let exec_dir = exec_dir(&config.exec_root);
        let _ = std::fs::remove_dir_all(&exec_dir);
        std::fs::DirBuilder::new()
            .mode(crate::state::modes::PRIVATE_DIR)
            .create(&exec_dir)
            .map_err(io_err(&exec_dir))?;
        crate::state::modes::ensure_dir(&exec_dir, crate::state::modes::PRIVATE_DIR);
        let engine_id = engine_id(&config.data_root);
        // Monitors, cgroups, directories and spools of a previous engine (crate::recovery).
        let reconciled = crate::recovery::reconcile(&config.data_root);
        let mut table = Table::default();
        // The anonymous volumes of auto-remove containers removed here go once the engine
        // exists to judge who else uses them.
        let mut dropped_mounts = Vec::new();
        for mut record in state.load_all()? {
            // A container recorded as created may have run: the engine died between spawning
            // its runtime and recording the start.
            let was_running = matches!(record.state.status, Status::Running | Status::Removing)
                || reconciled.stopped.contains(&record.id);
            if was_running && record.host_config.auto_remove {
                info!(container = %record.id, "removing auto-remove container left by the previous engine");
                if let Err(err) = state.remove(&record.id) {
                    warn!(container = %record.id, error = %err, "cannot remove container");
                } else {
                    dropped_mounts.push(record.mount_points);
                    continue;
                }
            }
            if was_running {
                // As dockerd without live-restore (daemon.go restore): a container whose
                // monitor died is stopped, a paused one too; the reconcile above killed
                // whatever of it still ran.
                info!(container = %record.id, paused = record.state.paused, "container was running when the engine stopped; marking it exited");
                record.state.status = Status::Exited;
                record.state.paused = false;
                record.state.pid = 0;
                record.state.exit_code = 255;
                record.state.finished_at = Some(Utc::now());
                // On a full disk the record cannot be rewritten: the engine must start anyway
                // (to let users free space), and the next start marks it again.
                if let Err(err) = state.save(&record) {
                    warn!(container = %record.id, error = %err, "cannot persist container state");
                }
            }
            let name = record.name.trim_start_matches('/').to_string();
            let id = record.id.clone();
            let container = Container::new(record, state.dir(&id));
            table.names.insert(name, id.clone());
            table.by_id.insert(id, container);
        }
        let network = networks::NetworkState::new(&config.data_root);
        let engine = Engine {
            inner: Arc::new(Inner {
                network,
                config,
                engine_id,
                images,
                state,
                volumes,
                events: EventBus::default(),
                table: Mutex::new(table),
                execs: exec::ExecTable::default(),
                restarts: restart::RestartManager::default(),
                volume_uses: Mutex::new(()),
                _exec_root_lock: exec_root_lock,
                host_ready: host_ready::HostReady::default(),
            }),
        };
        for points in &dropped_mounts {
            engine.remove_anonymous_volumes(points);
        }
        Ok(engine)
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// A stable id for `/info`.
    pub fn engine_id(&self) -> &str {
        &self.inner.engine_id
    }

    /// Finds a container by full id, name (with or without `/`) or unique id prefix.
    pub fn container(&self, reference: &str) -> Result<Arc<Container>, EngineError> {
        let table = lock(&self.inner.table);
        let not_found = || EngineError::NoSuchContainer {
            reference: reference.to_string(),
        };
        if reference.is_empty() {
            return Err(not_found());
        }
        if let Some(c) = table.by_id.get(reference) {
            return Ok(c.clone());
        }
        if let Some(id) = table.names.get(reference.trim_start_matches('/')) {
            if let Some(c) = table.by_id.get(id) {
                return Ok(c.clone());
            }
        }
        let mut matches = table
            .by_id
            .range(reference.to_string()..)
            .take_while(|(id, _)| id.starts_with(reference));
        match (matches.next(), matches.next()) {
            (Some((_, c)), None) => Ok(c.clone()),
            (Some(_), Some(_)) => Err(EngineError::AmbiguousReference {
                prefix: reference.to_string(),
            }),
            _ => Err(not_found()),
        }
    }

    /// Every container's record, newest first (as `docker ps` lists them).
    pub fn list(&self) -> Vec<ContainerRecord> {
        let table = lock(&self.inner.table);
        let mut records: Vec<_> = table.by_id.values().map(|c| c.record()).collect();
        records.sort_by_key(|r| std::cmp::Reverse(r.created));
        records
    }

    /// Container counts for `/info`.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for record in self.list() {
            counts.total += 1;
            if self.is_paused(&record.id) {
                counts.paused += 1;
            } else if record.state.status == Status::Running {
                counts.running += 1;
            } else {
                counts.stopped += 1;
            }
        }
        counts
    }

    /// The json-file log path of a container.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.inner.state.dir(id).join(format!("{id}-json.log"))
    }

    /// The event bus (`GET /events`).
    pub fn events(&self) -> &EventBus {
        &self.inner.events
    }

    /// Emits a container event with Docker's attributes (name, image, labels) and `extra`.
    fn emit(&self, record: &ContainerRecord, action: &str, extra: &[(&str, String)]) {
        let mut attributes = record.config.labels.clone();
        attributes.insert(
            "name".into(),
            record.name.trim_start_matches('/').to_string(),
        );
        attributes.insert("image".into(), record.config.image.clone());
        for (k, v) in extra {
            attributes.insert((*k).to_string(), v.clone());
        }
        self.inner
            .events
            .emit("container", action, &record.id, attributes);
    }

    /// Number of images, for `/info`.
    pub async fn image_count(&self) -> usize {
        self.list_images(true).await.map(|l| l.len()).unwrap_or(0)
    }

    /// Stops every running container (as `docker stop` each), for a graceful engine exit.
    pub async fn shutdown(&self) {
        self.begin_shutdown();
        let running: Vec<ContainerRecord> = self
            .list()
            .into_iter()
            .filter(|r| r.state.status == Status::Running)
            .collect();
        let stops = running.iter().map(|r| async move {
            if let Err(err) = self.stop(&r.id, None, None).await {
                warn!(container = %r.id, error = %err, "cannot stop container");
            }
        });
        futures_util::future::join_all(stops).await;
    }
}

/// Sends `signal` to `pid`; false if the kernel refused it.
fn send_signal(pid: i32, signal: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) only takes two integers; nix's Signal cannot name real-time signals.
    if unsafe { libc::kill(pid, signal) } != 0 {
        let err = std::io::Error::last_os_error();
        debug!(pid, signal, error = %err, "signal not delivered");
        return false;
    }
    true
}

fn new_id() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Where exec specs are written for the runtime: under the exec root, off the data disk, so
/// that `docker exec` still starts when the data disk is full.
pub(crate) fn exec_dir(exec_root: &Path) -> PathBuf {
    exec_root.join("execs")
}

/// A random id kept in `<data-root>/engine-id`, shown as `ID` by `/info`. One that cannot be
/// saved (a full disk) is used for this run only: the engine must start anyway.
fn engine_id(data_root: &Path) -> String {
    let path = data_root.join("engine-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        if !id.trim().is_empty() {
            return id.trim().to_string();
        }
    }
    let b = rand::random::<[u8; 16]>();
    let id = format!(
        "{}-{}-{}-{}-{}",
        hex::encode(&b[0..4]),
        hex::encode(&b[4..6]),
        hex::encode(&b[6..8]),
        hex::encode(&b[8..10]),
        hex::encode(&b[10..16])
    );
    if let Err(err) = crate::state::durable::write_atomic(&path, id.as_bytes(), 0o600) {
        warn!(path = %path.display(), error = %err, "cannot save the engine id");
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ContainerConfig, ContainerState, HostConfig};

    fn open_with(data_root: &Path, exec_root: &Path) -> Result<Engine, EngineError> {
        Engine::open(EngineConfig {
            data_root: data_root.to_path_buf(),
            exec_root: exec_root.to_path_buf(),
            runtime: PathBuf::from("/nonexistent/rmachine-runtime"),
            labels: vec![],
            registry: Default::default(),
            debug: false,
        })
    }

    /// Two engines with their own data roots and one exec root (the default): the second
    /// would empty the first's exec specs, so it refuses, naming the exec root.
    #[test]
    fn a_second_engine_on_one_exec_root_refuses_and_leaves_the_first_s_execs() {
        let (a, b, run) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let exec_root = run.path().join("rmachine-engine");
        let first = open_with(a.path(), &exec_root).unwrap();
        let spec = exec_dir(&exec_root).join("exec-1.json");
        std::fs::write(&spec, b"{}").unwrap();
        let err = open_with(b.path(), &exec_root).unwrap_err().to_string();
        assert!(
            err.contains(&exec_root.display().to_string())
                && err.contains("another engine")
                && err.contains(&std::process::id().to_string()),
            "{err}"
        );
        assert!(spec.exists(), "the first engine's exec spec was removed");
        drop(first);
        open_with(b.path(), &exec_root).unwrap();
    }

    /// An exec root that exists keeps its mode (`--exec-root /run` must not lock down /run);
    /// one the engine creates, and its `execs` directory, are private.
    #[test]
    fn an_existing_exec_root_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let (data, run) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::set_permissions(run.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let engine = open_with(data.path(), run.path()).unwrap();
        assert_eq!(mode(run.path()), 0o755);
        assert_eq!(mode(&exec_dir(run.path())), 0o700);
        drop(engine);
        let created = run.path().join("new/exec-root");
        let _engine = open_with(data.path(), &created).unwrap();
        assert_eq!((mode(&created), mode(&exec_dir(&created))), (0o700, 0o700));
    }

    pub(super) fn record(
        id: &str,
        name: &str,
        status: Status,
        auto_remove: bool,
    ) -> ContainerRecord {
        ContainerRecord {
            id: id.to_string(),
            name: format!("/{name}"),
            created: Utc::now(),
            path: "sleep".into(),
            args: vec!["1000".into()],
            image_id: "sha256:00".into(),
            config: ContainerConfig::default(),
            host_config: HostConfig {
                auto_remove,
                ..HostConfig::default()
            },
            state: ContainerState {
                status,
                paused: false,
                pid: if status == Status::Running { 4242 } else { 0 },
                exit_code: 0,
                error: String::new(),
                started_at: Some(Utc::now()),
                finished_at: None,
                health: None,
            },
            restart_count: 0,
            mount_points: Default::default(),
        }
    }

    pub(super) fn engine_with(records: &[ContainerRecord]) -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateStore::open(dir.path()).unwrap();
        for r in records {
            std::fs::create_dir_all(state.dir(&r.id)).unwrap();
            state.save(r).unwrap();
        }
        let engine = Engine::open(EngineConfig {
            data_root: dir.path().to_path_buf(),
            exec_root: dir.path().join("exec-root"),
            runtime: PathBuf::from("/nonexistent/rmachine-runtime"),
            labels: vec![],
            registry: Default::default(),
            debug: false,
        })
        .unwrap();
        (dir, engine)
    }

    #[test]
    fn restart_marks_running_containers_exited_and_drops_auto_remove_ones() {
        let running = record(&"a".repeat(64), "web", Status::Running, false);
        let ephemeral = record(&"b".repeat(64), "tmp", Status::Running, true);
        let (dir, engine) = engine_with(&[running.clone(), ephemeral.clone()]);
        let records = engine.list();
        assert_eq!(records.len(), 1);
        let state = &records[0].state;
        assert_eq!(
            (state.status, state.exit_code, state.pid),
            (Status::Exited, 255, 0)
        );
        assert!(state.finished_at.is_some());
        // The change is on disk too.
        let reloaded = StateStore::open(dir.path()).unwrap().load_all().unwrap();
        assert_eq!(reloaded[0].state.status, Status::Exited);
        assert!(!dir.path().join("containers").join(&ephemeral.id).exists());
    }

    #[test]
    fn references_resolve_by_id_name_and_unique_prefix() {
        let one = record(
            &format!("ab1{}", "0".repeat(61)),
            "one",
            Status::Exited,
            false,
        );
        let two = record(
            &format!("ab2{}", "0".repeat(61)),
            "two",
            Status::Exited,
            false,
        );
        let (_dir, engine) = engine_with(&[one.clone(), two.clone()]);
        assert_eq!(engine.container(&one.id).unwrap().id, one.id);
        assert_eq!(engine.container("two").unwrap().id, two.id);
        assert_eq!(engine.container("/two").unwrap().id, two.id);
        assert_eq!(engine.container("ab1").unwrap().id, one.id);
        let ambiguous = engine.container("ab").unwrap_err();
        assert_eq!(
            ambiguous.to_string(),
            "multiple IDs found with provided prefix: ab"
        );
        let missing = engine.container("zz").unwrap_err();
        assert_eq!(missing.to_string(), "No such container: zz");
    }

    #[tokio::test]
    async fn removing_a_stopped_container_deletes_its_directory_and_wakes_waiters() {
        let gone = record(&"c".repeat(64), "gone", Status::Exited, false);
        let (dir, engine) = engine_with(std::slice::from_ref(&gone));
        let removed = engine.wait("gone", WaitCondition::Removed).unwrap();
        engine.remove("gone", false).await.unwrap();
        assert_eq!(removed.await, 0);
        assert!(!dir.path().join("containers").join(&gone.id).exists());
        assert!(engine.container("gone").is_err());
    }
}
