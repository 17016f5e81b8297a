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

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use rmachine_runtime::spec::{self, RuntimeSpec};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::container::launch::{self, LaunchError, LaunchIo, Launched};
use crate::container::logs::LogWriter;
use crate::container::{config, io, names, Container, Lifecycle, Output, StdinEvent, StreamKind};
use crate::events::EventBus;
use crate::image::{DeleteItem, ImageError, ImageRecord, ImageStore, ImageSummary};
use crate::state::{
    ContainerConfig, ContainerRecord, ContainerState, HostConfig, NetworkingConfig, StateError,
    StateStore, Status,
};

mod archive;
mod ext;
mod health;
pub(crate) mod lookup;
mod options;
mod restart;
mod signal;
mod unsupported;

pub use ext::{create_warnings, PruneFilters, DEFAULT_RUNTIME};
pub use signal::{parse_kill_signal, parse_signal};

/// How long output pumps may run on after the container's process ended.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of engine operations. Each maps to one HTTP status in `api::error`.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No container has this id, id prefix or name.
    #[error("No such container: {reference}")]
    NoSuchContainer {
        /// What the client asked for.
        reference: String,
    },
    /// An id prefix matches several containers.
    #[error("multiple IDs found with provided prefix: {prefix}")]
    AmbiguousReference {
        /// The prefix.
        prefix: String,
    },
    /// The name is taken.
    #[error("Conflict. The container name \"/{name}\" is already in use by container \"{id}\". You have to remove (or rename) that container to be able to reuse that name.")]
    NameConflict {
        /// The requested name.
        name: String,
        /// The container holding it.
        id: String,
    },
    /// `rename` could not take the new name (moby's wrapper text, daemon/rename.go).
    #[error("Error when allocating new name")]
    NameAllocation {
        /// Why: an invalid name or a conflict.
        #[source]
        source: Box<EngineError>,
    },
    /// A request parameter is invalid.
    #[error("{reason}")]
    InvalidParameter {
        /// Docker's message.
        reason: String,
    },
    /// The container must run for this operation (moby's text since v25).
    #[error("container {id} is not running")]
    NotRunning {
        /// The container id.
        id: String,
    },
    /// Start of a running container or stop of a stopped one: nothing to do (HTTP 304).
    #[error("container {id} is already {state}")]
    NotModified {
        /// The container id.
        id: String,
        /// `started` or `stopped`.
        state: &'static str,
    },
    /// Removal of a running container without force (moby v28.2's text, naming the container
    /// as the client did).
    #[error("cannot remove container \"{name}\": container is running: stop the container before removing or force remove")]
    RemoveRunning {
        /// The reference the client used.
        name: String,
    },
    /// Removal without force of a container waiting for its restart by policy.
    #[error("cannot remove container \"{name}\": container is restarting: stop the container before removing or force remove")]
    RemoveRestarting {
        /// The reference the client used.
        name: String,
    },
    /// Removal without force of a paused container.
    #[error("cannot remove container \"{name}\": container is paused and must be unpaused first")]
    RemovePaused {
        /// The reference the client used.
        name: String,
    },
    /// The runtime could not start the container's process.
    #[error("failed to create task for container: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: {message}: unknown")]
    StartFailed {
        /// The runtime's message.
        message: String,
        /// The exit code recorded (127 not found, 126 not executable, else 1).
        exit_code: i64,
    },
    /// The working directory exists in the container as a file (dockerd's
    /// `SetupWorkingDirectory`).
    #[error("Cannot mkdir: {path} is not a directory")]
    WorkingDirNotDir {
        /// The working directory as configured.
        path: String,
    },
    /// Starting the runtime itself failed.
    #[error("cannot start container {id}")]
    Launch {
        /// The container id.
        id: String,
        /// The cause.
        #[source]
        source: LaunchError,
    },
    /// An image a running container uses cannot be removed, even with force.
    #[error("conflict: unable to delete {} (cannot be forced) - image is being used by running container {}", crate::image::short_id(image), &container[..container.len().min(12)])]
    ImageUsedByRunning {
        /// The image id.
        image: String,
        /// The running container.
        container: String,
    },
    /// The image store failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Container records could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// A file or directory of the engine could not be accessed.
    #[error("cannot access {path}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The container's state forbids the operation (Docker's text, HTTP 409).
    #[error("{reason}")]
    Conflict {
        /// Docker's message.
        reason: String,
    },
    /// No exec instance has this id.
    #[error("No such exec instance: {id}")]
    NoSuchExec {
        /// The exec id.
        id: String,
    },
    /// The container's cgroup could not be read or changed.
    #[error("cannot use the cgroup of container {id}")]
    Cgroup {
        /// The container id.
        id: String,
        /// The cause.
        #[source]
        source: rmachine_runtime::cgroup::CgroupError,
    },
    /// `docker top` could not render the processes (`ps`'s own words, as dockerd passes them).
    #[error("{reason}")]
    Top {
        /// The container id.
        id: String,
        /// Why.
        reason: String,
    },
    /// A background task failed to run.
    #[error("internal task failed: {reason}")]
    Task {
        /// What happened.
        reason: String,
    },
    /// `docker logs` of a container whose log driver keeps nothing (`--log-driver none`).
    #[error("configured logging driver does not support reading")]
    LogsNotSupported {
        /// The container id.
        id: String,
    },
    /// Copying files to or from a container failed.
    #[error(transparent)]
    Archive(#[from] crate::container::archive::ArchiveError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Engine settings from the command line.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// `--data-root`.
    pub data_root: PathBuf,
    /// The runtime binary.
    pub runtime: PathBuf,
    /// `--label K=V`.
    pub labels: Vec<String>,
    /// `--registry-mirror` and `--insecure-registry`, checked.
    pub registry: crate::registry_config::RegistryConfig,
    /// `--debug`.
    pub debug: bool,
}

/// A create request, as the API decoded it.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// `?name=`, without or with a leading slash.
    pub name: Option<String>,
    /// `Config` (the top-level fields of the body).
    pub config: ContainerConfig,
    /// `HostConfig`.
    pub host_config: HostConfig,
    /// `NetworkingConfig`.
    pub networking_config: NetworkingConfig,
}

/// What `wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCondition {
    /// Returns at once if the container does not run, else at its exit.
    NotRunning,
    /// The next exit.
    NextExit,
    /// Removal.
    Removed,
}

/// What an attached client receives and may send.
#[derive(Debug)]
pub struct AttachSession {
    /// The container has a TTY: raw stream, no multiplexing.
    pub tty: bool,
    /// Output of the current or next run (only the streams asked for); ends with the run.
    pub output: mpsc::Receiver<Output>,
    /// Where to send the client's input, when it attached stdin and the container keeps it.
    pub stdin: Option<mpsc::UnboundedSender<StdinEvent>>,
    /// Close the container's stdin when this client's input ends.
    pub stdin_once: bool,
}

/// What `POST /containers/prune` removed.
#[derive(Debug, Default)]
pub struct PruneReport {
    /// Ids of the removed containers.
    pub deleted: Vec<String>,
    /// Bytes their writable layers held.
    pub space_reclaimed: u64,
}

/// Where `logs` reads from.
#[derive(Debug)]
pub struct LogSource {
    /// The json-file log.
    pub path: PathBuf,
    /// The container has a TTY (raw output, no multiplexing).
    pub tty: bool,
    /// Lifecycle updates, to know when following ends.
    pub lifecycle: watch::Receiver<Lifecycle>,
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
    events: EventBus,
    table: Mutex<Table>,
    ext: ext::Extras,
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
        crate::state::modes::ensure_dir(
            &config.data_root.join("tmp"),
            crate::state::modes::PRIVATE_DIR,
        );
        crate::state::modes::secure(&config.data_root);
        let engine_id = engine_id(&config.data_root);
        // Monitors, cgroups, directories and spools of a previous engine (crate::recovery).
        let reconciled = crate::recovery::reconcile(&config.data_root);
        let mut table = Table::default();
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
        Ok(Engine {
            inner: Arc::new(Inner {
                config,
                engine_id,
                images,
                state,
                events: EventBus::default(),
                table: Mutex::new(table),
                ext: ext::Extras::default(),
            }),
        })
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

    /// Creates a container from an image.
    pub async fn create(&self, request: CreateRequest) -> Result<String, EngineError> {
        let CreateRequest {
            name,
            mut config,
            mut host_config,
            networking_config,
        } = request;
        unsupported::check_create(&unsupported::Request {
            config: &config,
            host: &host_config,
            networking: &networking_config,
        })?;
        ext::normalize_host_config(&mut host_config)?;
        validate_log_config(&mut host_config)?;
        if let Some(name) = &name {
            config::validate_name(name)?;
        }
        if config.image.is_empty() {
            return Err(EngineError::InvalidParameter {
                reason: "config cannot be empty in order to create a container".into(),
            });
        }
        config::validate_config(&mut config)?;
        restart::validate_create(&config, &host_config)?;
        options::validate(&mut host_config, &config, &|r| {
            self.container(r).ok().map(|c| (c.record(), c.dir.clone()))
        })?;
        let image = self.resolve_image(&config.image).await?;
        config::merge_image_config(&mut config, &image);
        config::check_working_dir(
            &config.working_dir,
            &self.inner.images.rootfs_layers(&image.id)?,
        )?;
        let mut argv = config.entrypoint.clone().unwrap_or_default();
        argv.extend(config.cmd.clone().unwrap_or_default());
        let Some((path, args)) = argv.split_first() else {
            return Err(EngineError::InvalidParameter {
                reason: "no command specified".into(),
            });
        };
        let id = new_id();
        let dir = self.inner.state.dir(&id);
        let container = {
            let mut table = lock(&self.inner.table);
            let name = match name {
                Some(name) => {
                    let name = name.trim_start_matches('/').to_string();
                    if let Some(holder) = table.names.get(&name) {
                        return Err(EngineError::NameConflict {
                            name,
                            id: holder.clone(),
                        });
                    }
                    name
                }
                None => names::generate(|n| table.names.contains_key(n)),
            };
            let record = ContainerRecord {
                id: id.clone(),
                name: format!("/{name}"),
                created: Utc::now(),
                path: path.clone(),
                args: args.to_vec(),
                image_id: image.id.clone(),
                config,
                host_config,
                state: ContainerState {
                    status: Status::Created,
                    paused: false,
                    pid: 0,
                    exit_code: 0,
                    error: String::new(),
                    started_at: None,
                    finished_at: None,
                    health: None,
                },
                restart_count: 0,
            };
            let container = Container::new(record, dir.clone());
            table.names.insert(name, id.clone());
            table.by_id.insert(id.clone(), container.clone());
            container
        };
        let saved = self
            .inner
            .state
            .create_dir(&id)
            .and_then(|()| self.inner.state.save(&container.record()))
            .map_err(EngineError::from);
        if let Err(err) = saved {
            self.forget(&container);
            let _ = self.inner.state.remove(&id);
            return Err(err);
        }
        info!(container = %id, "created");
        self.emit(&container.record(), "create", &[]);
        Ok(id)
    }

    async fn resolve_image(&self, reference: &str) -> Result<ImageRecord, EngineError> {
        let images = self.inner.images.clone();
        let reference = reference.to_string();
        tokio::task::spawn_blocking(move || images.resolve(&reference))
            .await
            .map_err(|e| EngineError::Task {
                reason: e.to_string(),
            })?
            .map_err(EngineError::from)
    }

    /// Starts a created or exited container.
    pub async fn start(&self, reference: &str) -> Result<(), EngineError> {
        let c = self.container(reference)?;
        let _op = c.op.lock().await;
        if c.lifecycle().borrow().removed {
            return Err(EngineError::NoSuchContainer {
                reference: reference.to_string(),
            });
        }
        let record = c.record();
        // Paused first: a paused container also runs (daemon/start.go `validateState`).
        if record.state.paused && record.state.status == Status::Running {
            return Err(EngineError::Conflict {
                reason: "cannot start a paused container, try unpause instead".into(),
            });
        }
        if record.state.status == Status::Running {
            return Err(EngineError::NotModified {
                id: c.id.clone(),
                state: "started",
            });
        }
        // `State.OOMKilled` describes the last run only.
        let _ = std::fs::remove_file(c.dir.join(spec::OOM_KILLED_FILE));
        // A start that fails before the runtime runs (e.g. an unknown `-u` user) ends like one
        // the runtime refused: the error is recorded, waiters are told, `--rm` removes it.
        let prepared = self.prepare(&c, &record).await.and_then(|spec| {
            let mut features = ext::features_of(&record.host_config);
            options::apply(&record, &c.dir, &mut features, &|r| {
                self.container(r).ok().map(|c| (c.record(), c.dir.clone()))
            })?;
            Ok((spec, features))
        });
        let launched = match prepared {
            Ok((spec, features)) => {
                let stdio = launch::StdioOptions {
                    open_stdin: record.config.open_stdin,
                    console_size: config::console_size(&record.host_config),
                };
                let runtime = &self.inner.config.runtime;
                launch::launch_with(runtime, &c.dir, &spec, features, stdio)
                    .await
                    .map_err(|err| match err {
                        LaunchError::Failed(failed) => {
                            // dockerd's setExitCodeFromError: the code follows the message.
                            let (exit_code, message) =
                                launch::exit_code_from_error(&failed.message);
                            EngineError::StartFailed { message, exit_code }
                        }
                        err => EngineError::Launch {
                            id: c.id.clone(),
                            source: err,
                        },
                    })
            }
            Err(err) => Err(err),
        };
        match launched {
            Ok(launched) => {
                let pid = launched.pid;
                c.update(|r| {
                    r.state.status = Status::Running;
                    r.state.paused = false;
                    r.state.pid = pid;
                    r.state.error.clear();
                    r.state.exit_code = 0;
                    r.state.started_at = Some(Utc::now());
                    r.state.finished_at = None;
                });
                self.health_on_start(&c);
                c.notify(|l| l.running = true);
                if let Err(err) = self.inner.state.save(&c.record()) {
                    warn!(container = %c.id, error = %err, "cannot persist container state");
                }
                info!(container = %c.id, pid, "started");
                self.emit(&c.record(), "start", &[]);
                // Known before start returns: the CLI resizes the TTY right after start.
                if let LaunchIo::Pty { master } = &launched.io {
                    c.set_pty(master.try_clone().ok().map(Arc::new));
                }
                self.spawn_monitor(c.clone(), launched);
                Ok(())
            }
            Err(error) => {
                let exit_code = match &error {
                    EngineError::StartFailed { exit_code, .. } => *exit_code,
                    _ => 128,
                };
                warn!(container = %c.id, error = %error, "start failed");
                let message = error.to_string();
                c.update(|r| {
                    r.state.exit_code = exit_code;
                    r.state.error = message;
                });
                self.inner.state.save(&c.record())?;
                c.close_subscribers();
                c.reset_stdin();
                c.notify(|l| {
                    l.exits += 1;
                    l.exit_code = exit_code;
                });
                if record.host_config.auto_remove {
                    self.remove_locked(&c)?;
                }
                Err(error)
            }
        }
    }

    /// Prepares the container directory and builds the runtime spec.
    async fn prepare(
        &self,
        c: &Container,
        record: &ContainerRecord,
    ) -> Result<RuntimeSpec, EngineError> {
        let images = self.inner.images.clone();
        let image_id = record.image_id.clone();
        let lower_dirs = tokio::task::spawn_blocking(move || images.rootfs_layers(&image_id))
            .await
            .map_err(|e| EngineError::Task {
                reason: e.to_string(),
            })??;
        for sub in ["upper", "work", "merged"] {
            let path = c.dir.join(sub);
            std::fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        let lower_dirs =
            launch::with_init_layer(&c.dir, lower_dirs).map_err(|e| EngineError::Launch {
                id: c.id.clone(),
                source: e,
            })?;
        let config = &record.config;
        let hostname = if config.hostname.is_empty() {
            record.short_id().to_string()
        } else {
            config.hostname.clone()
        };
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let files = [
            ("hostname", "/etc/hostname", format!("{hostname}\n")),
            (
                "hosts",
                "/etc/hosts",
                launch::hosts_file(&ext::extra_hosts(&record.host_config)),
            ),
            (
                "resolv.conf",
                "/etc/resolv.conf",
                options::resolv_conf(&record.host_config, &host_resolv),
            ),
        ];
        let mut etc_files = Vec::new();
        for (file, destination, content) in files {
            let source = c.dir.join(file);
            launch::write_atomic(&source, content.as_bytes()).map_err(|e| EngineError::Launch {
                id: c.id.clone(),
                source: e,
            })?;
            etc_files.push(spec::EtcFile {
                source,
                destination: destination.to_string(),
            });
        }
        let mut search = vec![c.dir.join("upper")];
        search.extend(lower_dirs.iter().cloned());
        config::check_working_dir(&config.working_dir, &search)?;
        let group_add = config::group_add(&record.host_config);
        let user = config::resolve_user_with(&config.user, &search, &group_add)?;
        let env = config::container_env(config, &hostname, &user.home);
        let mut args = vec![record.path.clone()];
        args.extend(record.args.iter().cloned());
        Ok(RuntimeSpec {
            id: c.id.clone(),
            rootfs: spec::Rootfs {
                lower_dirs,
                upper_dir: c.dir.join("upper"),
                work_dir: c.dir.join("work"),
                merged_dir: c.dir.join("merged"),
            },
            process: spec::Process {
                args,
                env,
                cwd: if config.working_dir.is_empty() {
                    "/".into()
                } else {
                    config.working_dir.clone()
                },
                uid: user.uid,
                gid: user.gid,
                additional_gids: user.additional_gids,
                terminal: config.tty,
            },
            hostname,
            mounts: restart::tmpfs_mounts(&record.host_config),
            etc_files,
            readonly_rootfs: restart::readonly_rootfs(&record.host_config),
            network: spec::NetworkNamespace::Loopback,
        })
    }

    fn spawn_monitor(&self, c: Arc<Container>, launched: Launched) {
        let engine = self.clone();
        tokio::spawn(async move {
            let Launched { mut child, io, .. } = launched;
            let record = c.record();
            let tag = crate::container::logs::TagInfo {
                id: record.id.clone(),
                name: record.name.trim_start_matches('/').to_string(),
                image_id: record.image_id.clone(),
                image_name: record.config.image.clone(),
            };
            let attrs = crate::container::logs::extra_attributes(
                &log_options(&record.host_config),
                &record.config.labels,
                &record.config.env,
                &tag,
            )
            .unwrap_or_else(|err| {
                warn!(container = %c.id, error = %err, "cannot compute log attributes");
                BTreeMap::new()
            });
            // `--log-driver none`: the output goes to attached clients only.
            let log = if log_type(&record.host_config) == "none" {
                None
            } else {
                match LogWriter::open(&c.log_path()) {
                    Ok(log) => Some(log.with_attrs(attrs)),
                    Err(err) => {
                        warn!(container = %c.id, error = %err, "cannot open the container log");
                        None
                    }
                }
            };
            let log = Arc::new(std::sync::Mutex::new(log));
            let mut pumps = Vec::new();
            let stdin_rx = c.take_stdin();
            match io {
                LaunchIo::Pipes {
                    stdin,
                    stdout,
                    stderr,
                } => {
                    pumps.push(tokio::spawn(io::pump(
                        c.clone(),
                        log.clone(),
                        stdout,
                        StreamKind::Stdout,
                    )));
                    pumps.push(tokio::spawn(io::pump(
                        c.clone(),
                        log.clone(),
                        stderr,
                        StreamKind::Stderr,
                    )));
                    if let (Some(stdin), Some(rx)) = (stdin, stdin_rx) {
                        tokio::spawn(io::write_stdin(stdin, rx));
                    }
                }
                LaunchIo::Pty { master } => match io::pty_io(master) {
                    Ok(pty) => {
                        let pty = Arc::new(pty);
                        pumps.push(tokio::spawn(io::pump_pty(
                            c.clone(),
                            log.clone(),
                            pty.clone(),
                        )));
                        if let Some(rx) = stdin_rx {
                            tokio::spawn(io::write_pty(pty, rx));
                        }
                    }
                    Err(err) => warn!(container = %c.id, error = %err, "cannot use the PTY"),
                },
            }
            let code = match child.wait().await {
                Ok(status) => launch::exit_code(status),
                Err(err) => {
                    warn!(container = %c.id, error = %err, "cannot wait for the runtime");
                    255
                }
            };
            for pump in pumps {
                if tokio::time::timeout(DRAIN_TIMEOUT, pump).await.is_err() {
                    debug!(container = %c.id, "output still open after exit; closing it");
                }
            }
            engine.finish_run(&c, code).await;
        });
    }

    async fn finish_run(&self, c: &Arc<Container>, code: i64) {
        info!(container = %c.id, exit_code = code, "exited");
        options::unmount_shm(&c.dir);
        self.emit(&c.record(), "die", &[("exitCode", code.to_string())]);
        self.health_stop(c);
        c.update(|r| {
            r.state.status = Status::Exited;
            r.state.paused = false;
            r.state.pid = 0;
            r.state.exit_code = code;
            r.state.finished_at = Some(Utc::now());
        });
        let auto_remove = c.record().host_config.auto_remove;
        // An auto-remove container is deleted next; persisting its exit first only costs a
        // write (after a crash, a record still saying "running" is removed at engine start).
        if !auto_remove && !c.lifecycle().borrow().removed {
            if let Err(err) = self.inner.state.save_unsynced(&c.record()) {
                warn!(container = %c.id, error = %err, "cannot persist container state");
            }
        }
        c.set_pty(None);
        c.close_subscribers();
        c.reset_stdin();
        c.notify(|l| {
            l.running = false;
            l.exits += 1;
            l.exit_code = code;
        });
        if auto_remove {
            let _op = c.op.lock().await;
            if let Err(err) = self.remove_locked(c) {
                warn!(container = %c.id, error = %err, "cannot auto-remove container");
            }
        } else {
            self.after_exit(c, code);
        }
    }

    /// Stops a running container: its stop signal, then SIGKILL after `timeout` seconds
    /// (`None`: the container's StopTimeout, else 10; negative: wait forever).
    pub async fn stop(
        &self,
        reference: &str,
        timeout: Option<i64>,
        signal: Option<&str>,
    ) -> Result<(), EngineError> {
        let c = self.container(reference)?;
        let _op = c.op.lock().await;
        let record = c.record();
        if record.state.status != Status::Running {
            return Err(EngineError::NotModified {
                id: c.id.clone(),
                state: "stopped",
            });
        }
        let signal = parse_signal(
            signal
                .or(record.config.stop_signal.as_deref())
                .unwrap_or("SIGTERM"),
        )?;
        let timeout = timeout.or(record.config.stop_timeout).unwrap_or(10);
        self.thaw_for_signal(&c);
        stop_process(self, &c, &record, signal, timeout).await;
        self.emit(&record, "stop", &[]);
        Ok(())
    }

    /// Restarts a container (stop if running, then start).
    pub async fn restart(&self, reference: &str, timeout: Option<i64>) -> Result<(), EngineError> {
        match self.stop(reference, timeout, None).await {
            Ok(()) | Err(EngineError::NotModified { .. }) => {}
            Err(err) => return Err(err),
        }
        self.start(reference).await
    }

    /// Sends a signal (default SIGKILL) to a running container.
    pub async fn kill(&self, reference: &str, signal: Option<&str>) -> Result<(), EngineError> {
        let c = self.container(reference)?;
        let _op = c.op.lock().await;
        let record = c.record();
        if record.state.status != Status::Running {
            return Err(EngineError::NotRunning { id: c.id.clone() });
        }
        let signal = parse_kill_signal(signal.unwrap_or("SIGKILL"))?;
        let mut lifecycle = c.lifecycle();
        let exits = lifecycle.borrow().exits;
        send_signal(record.state.pid, signal);
        // dockerd resumes a paused container only for a signal that also cancels its restart
        // policy (daemon/kill.go `killWithSignal`); another one waits for `unpause`.
        if restart::signal_cancels_restart(signal, record.config.stop_signal.as_deref()) {
            self.thaw_for_signal(&c);
        }
        self.emit(&record, "kill", &[("signal", signal.to_string())]);
        if signal == signal::SIGKILL {
            // As dockerd: a kill with SIGKILL returns once the container is gone.
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                lifecycle.wait_for(|l| l.exits > exits),
            )
            .await;
        }
        Ok(())
    }

    /// Removes a container; a running one only with `force` (it is killed first).
    pub async fn remove(&self, reference: &str, force: bool) -> Result<(), EngineError> {
        let c = self.container(reference)?;
        let _op = c.op.lock().await;
        if c.lifecycle().borrow().removed {
            // Another request removed it while this one waited: dockerd reports the race
            // (daemon/delete.go `SetRemovalInProgress`), so `rm a a` does not succeed twice.
            return Err(EngineError::Conflict {
                reason: format!("removal of container {reference} is already in progress"),
            });
        }
        let record = c.record();
        if record.state.status == Status::Running {
            if !force && record.state.paused {
                return Err(EngineError::RemovePaused {
                    name: reference.to_string(),
                });
            }
            if !force {
                return Err(EngineError::RemoveRunning {
                    name: reference.to_string(),
                });
            }
            self.thaw_for_signal(&c);
            stop_process(self, &c, &record, signal::SIGKILL, 0).await;
        } else if self.is_restarting(&c.id) {
            if !force {
                return Err(EngineError::RemoveRestarting {
                    name: reference.to_string(),
                });
            }
            self.cancel_restart(&c.id);
        }
        self.remove_locked(&c)
    }

    /// Renames a container.
    /// Checks in moby's order and with its texts (daemon/rename.go): empty names, the
    /// container, the same name, then the new name's validity and availability.
    pub async fn rename(&self, reference: &str, new_name: &str) -> Result<(), EngineError> {
        let (reference, new_name) = (reference.trim(), new_name.trim());
        let bare = |n: &str| n.strip_prefix('/').unwrap_or(n).to_string();
        if bare(reference).is_empty() || bare(new_name).is_empty() {
            return Err(EngineError::InvalidParameter {
                reason: "Neither old nor new names may be empty".into(),
            });
        }
        let c = self.container(reference)?;
        let _op = c.op.lock().await;
        let new_name = bare(new_name);
        if c.record().name == format!("/{new_name}") {
            return Err(EngineError::InvalidParameter {
                reason: "Renaming a container with the same name as its current name".into(),
            });
        }
        let allocation = |source| EngineError::NameAllocation {
            source: Box::new(source),
        };
        config::validate_name(&format!("/{new_name}")).map_err(allocation)?;
        {
            let mut table = lock(&self.inner.table);
            if let Some(holder) = table.names.get(&new_name) {
                return Err(allocation(EngineError::NameConflict {
                    name: new_name,
                    id: holder.clone(),
                }));
            }
            table.names.retain(|_, id| *id != c.id);
            table.names.insert(new_name.clone(), c.id.clone());
        }
        let old_name = c.record().name;
        c.update(|r| r.name = format!("/{new_name}"));
        self.emit(&c.record(), "rename", &[("oldName", old_name)]);
        self.inner.state.save(&c.record())?;
        Ok(())
    }

    /// Removes every container that is not running and that `filters` select; reports their
    /// ids and the size of their writable layers (moby's containerPrune `SpaceReclaimed`).
    pub async fn prune(&self, filters: &PruneFilters) -> Result<PruneReport, EngineError> {
        let mut report = PruneReport::default();
        for record in self.list() {
            let Ok(c) = self.container(&record.id) else {
                continue;
            };
            let _op = c.op.lock().await;
            if c.record().state.status == Status::Running || !filters.matches(&c.record()) {
                continue;
            }
            let upper = self.inner.state.dir(&c.id).join("upper");
            let size = crate::container::archive::dir_size(&upper);
            self.remove_locked(&c)?;
            report.deleted.push(c.id.clone());
            report.space_reclaimed = report.space_reclaimed.saturating_add(size);
        }
        Ok(report)
    }

    /// Removes a stopped container; the caller holds its operation lock.
    fn remove_locked(&self, c: &Arc<Container>) -> Result<(), EngineError> {
        if c.lifecycle().borrow().removed {
            return Ok(());
        }
        // Left mounted by an engine that died before seeing the exit.
        options::unmount_shm(&c.dir);
        // A cgroup the monitor could not remove (it was killed) goes with the container.
        crate::recovery::remove_cgroup(&c.dir, &c.id);
        self.inner.state.remove(&c.id)?;
        self.forget(c);
        // Clients attached to a container that never ran would otherwise wait forever.
        c.close_subscribers();
        c.notify(|l| l.removed = true);
        info!(container = %c.id, "removed");
        self.emit(&c.record(), "destroy", &[]);
        Ok(())
    }

    fn forget(&self, c: &Container) {
        let mut table = lock(&self.inner.table);
        table.by_id.remove(&c.id);
        table.names.retain(|_, id| *id != c.id);
    }

    /// Registers a waiter and returns the future that resolves to the exit code. The waiter is
    /// registered before this returns, so a start issued afterwards cannot be missed.
    pub fn wait(
        &self,
        reference: &str,
        condition: WaitCondition,
    ) -> Result<impl std::future::Future<Output = i64> + Send + 'static, EngineError> {
        let c = self.container(reference)?;
        let mut lifecycle = c.lifecycle();
        let start = *lifecycle.borrow();
        Ok(async move {
            let done = |l: &Lifecycle| match condition {
                WaitCondition::NotRunning => !l.running,
                WaitCondition::NextExit => l.exits > start.exits || l.removed,
                WaitCondition::Removed => l.removed,
            };
            match lifecycle.wait_for(done).await {
                Ok(l) => l.exit_code,
                // The container object is gone; its last known code is the answer.
                Err(_) => start.exit_code,
            }
        })
    }

    /// Attaches to a container's streams.
    pub fn attach(
        &self,
        reference: &str,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<AttachSession, EngineError> {
        let c = self.container(reference)?;
        let record = c.record();
        let tty = record.config.tty;
        // Subscribed even without stdout/stderr: the channel's end tells the client the run ended.
        let output = c.subscribe(stdout, stderr || (stdout && tty));
        let stdin = (stdin && record.config.open_stdin).then(|| c.stdin());
        // moby's containerAttach logs every attach, streaming or not (daemon/attach.go).
        self.emit(&record, "attach", &[]);
        Ok(AttachSession {
            tty,
            output,
            stdin,
            stdin_once: record.config.stdin_once,
        })
    }

    /// Where a container's logs are.
    pub fn log_source(&self, reference: &str) -> Result<LogSource, EngineError> {
        let c = self.container(reference)?;
        if log_type(&c.record().host_config) == "none" {
            return Err(EngineError::LogsNotSupported { id: c.id.clone() });
        }
        Ok(LogSource {
            path: c.log_path(),
            tty: c.record().config.tty,
            lifecycle: c.lifecycle(),
        })
    }

    /// Resizes a TTY container's terminal.
    pub fn resize(&self, reference: &str, height: u16, width: u16) -> Result<(), EngineError> {
        let c = self.container(reference)?;
        let Some(master) = c.pty() else {
            if c.record().state.status != Status::Running {
                return Err(EngineError::NotRunning { id: c.id.clone() });
            }
            return Ok(());
        };
        let size = libc::winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid for the call;
        // the descriptor is an open PTY master owned by `master`.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&master.as_fd()),
                libc::TIOCSWINSZ,
                &size,
            )
        };
        if rc < 0 {
            return Err(EngineError::Io {
                path: PathBuf::from("/dev/ptmx"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Loads a `docker save` / OCI archive; `progress` receives each line as it happens.
    pub async fn load_images(
        &self,
        archive: PathBuf,
        progress: mpsc::UnboundedSender<String>,
    ) -> Result<Vec<String>, EngineError> {
        let images = self.inner.images.clone();
        let lines = tokio::task::spawn_blocking(move || {
            let mut file = std::fs::File::open(&archive).map_err(io_err(&archive))?;
            let mut report = |line: &str| {
                let _ = progress.send(line.to_string());
            };
            Ok::<_, EngineError>(images.load(&mut file, &mut report)?)
        })
        .await
        .map_err(|e| EngineError::Task {
            reason: e.to_string(),
        })??;
        // As moby's tarexport load: one `load` event per image, named by its id.
        let mut announced = std::collections::HashSet::new();
        for line in &lines {
            let reference = line
                .strip_prefix("Loaded image: ")
                .or_else(|| line.strip_prefix("Loaded image ID: "));
            let Some(id) = reference.and_then(|r| self.inner.images.resolve(r).ok()) else {
                continue;
            };
            if announced.insert(id.id.clone()) {
                let attrs = BTreeMap::from([("name".to_string(), id.id.clone())]);
                self.inner.events.emit("image", "load", &id.id, attrs);
            }
        }
        Ok(lines)
    }

    /// `docker images`.
    pub async fn list_images(&self) -> Result<Vec<ImageSummary>, EngineError> {
        let images = self.inner.images.clone();
        tokio::task::spawn_blocking(move || images.list())
            .await
            .map_err(|e| EngineError::Task {
                reason: e.to_string(),
            })?
            .map_err(EngineError::from)
    }

    /// `docker image inspect`.
    pub async fn inspect_image(&self, reference: &str) -> Result<serde_json::Value, EngineError> {
        let images = self.inner.images.clone();
        let reference = reference.to_string();
        tokio::task::spawn_blocking(move || images.inspect(&reference))
            .await
            .map_err(|e| EngineError::Task {
                reason: e.to_string(),
            })?
            .map_err(EngineError::from)
    }

    /// `docker rmi`; refuses images that containers use unless forced.
    pub async fn remove_image(
        &self,
        reference: &str,
        force: bool,
    ) -> Result<Vec<DeleteItem>, EngineError> {
        let users: Vec<(String, String, bool)> = lock(&self.inner.table)
            .by_id
            .values()
            .map(|c| {
                let record = c.record();
                let running = record.state.status == Status::Running;
                (record.image_id, c.id.clone(), running)
            })
            .collect();
        let image = self.resolve_image(reference).await?;
        if let Some((_, container, _)) = users
            .iter()
            .find(|(image_id, _, running)| *running && *image_id == image.id)
        {
            return Err(EngineError::ImageUsedByRunning {
                image: image.id,
                container: container.clone(),
            });
        }
        let images = self.inner.images.clone();
        let reference = reference.to_string();
        let items = tokio::task::spawn_blocking(move || {
            let in_use = |image_id: &str| {
                users
                    .iter()
                    .find(|(image, _, _)| image == image_id)
                    .map(|(_, id, _)| id.clone())
            };
            images.remove(&reference, force, &in_use)
        })
        .await
        .map_err(|e| EngineError::Task {
            reason: e.to_string(),
        })??;
        for item in &items {
            let (action, id) = match item {
                DeleteItem::Untagged(tag) => ("untag", tag),
                DeleteItem::Deleted(id) => ("delete", id),
            };
            self.inner.events.emit(
                "image",
                action,
                id,
                BTreeMap::from([("name".to_string(), id.clone())]),
            );
        }
        Ok(items)
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
        self.list_images().await.map(|l| l.len()).unwrap_or(0)
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

/// Signals the container and waits for its exit, escalating to SIGKILL after `timeout`
/// seconds (negative: no escalation).
///
/// Each signal delivered is a `kill` event, as moby's killWithSignal logs one for the stop
/// signal and again for the SIGKILL that follows a timeout (daemon/stop.go, kill.go).
async fn stop_process(
    engine: &Engine,
    c: &Container,
    record: &ContainerRecord,
    signal: i32,
    timeout: i64,
) {
    let pid = record.state.pid;
    let mut lifecycle = c.lifecycle();
    let exits = lifecycle.borrow().exits;
    if lifecycle.borrow().exits > exits || !lifecycle.borrow().running {
        return;
    }
    let signal_event = |signal: i32| {
        engine.emit(record, "kill", &[("signal", signal.to_string())]);
    };
    let delivered = send_signal(pid, signal);
    if delivered {
        signal_event(signal);
    }
    let exited = |l: &Lifecycle| l.exits > exits;
    if timeout < 0 && delivered {
        let _ = lifecycle.wait_for(exited).await;
        return;
    }
    // As dockerd's containerStop: a stop signal that could not be sent leaves 2 s.
    let grace = if delivered {
        Duration::from_secs(u64::try_from(timeout).unwrap_or(0))
    } else {
        Duration::from_secs(2)
    };
    if signal != signal::SIGKILL
        && tokio::time::timeout(grace, lifecycle.wait_for(exited))
            .await
            .is_ok()
    {
        return;
    }
    // A SIGKILL already delivered needs no second one (nor a second event).
    if !(signal == signal::SIGKILL && delivered) {
        info!(container = %c.id, "did not stop in time; killing it");
        if send_signal(pid, signal::SIGKILL) {
            signal_event(signal::SIGKILL);
        }
    }
    if tokio::time::timeout(Duration::from_secs(30), lifecycle.wait_for(exited))
        .await
        .is_err()
    {
        warn!(container = %c.id, "still running 30s after SIGKILL");
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

/// `HostConfig.LogConfig.Config`: the `--log-opt` pairs.
fn log_options(host: &HostConfig) -> BTreeMap<String, String> {
    host.log_config.config.clone()
}

/// `HostConfig.LogConfig.Type`; `json-file` when unset, as dockerd stores it.
fn log_type(host: &HostConfig) -> &str {
    match host.log_config.kind.as_str() {
        "" => "json-file",
        kind => kind,
    }
}

/// dockerd's create-time handling of `LogConfig` (daemon/logs.go `mergeAndVerifyLogConfig`,
/// daemon/logger/factory.go `ValidateLogOpts`): the default driver filled in, then the options
/// checked. The drivers here are `json-file` and `none`; any other is one this engine was not
/// built with, as dockerd says of a driver it lacks.
fn validate_log_config(host: &mut HostConfig) -> Result<(), EngineError> {
    let kind = log_type(host).to_string();
    let options = log_options(host);
    host.log_config.kind.clone_from(&kind);
    crate::container::logs::validate_driver(&kind, &options).map_err(|err| {
        EngineError::InvalidParameter {
            reason: err.to_string(),
        }
    })
}

fn new_id() -> String {
    hex::encode(rand::random::<[u8; 32]>())
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

    fn record(id: &str, name: &str, status: Status, auto_remove: bool) -> ContainerRecord {
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
        }
    }

    fn engine_with(records: &[ContainerRecord]) -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateStore::open(dir.path()).unwrap();
        for r in records {
            std::fs::create_dir_all(state.dir(&r.id)).unwrap();
            state.save(r).unwrap();
        }
        let engine = Engine::open(EngineConfig {
            data_root: dir.path().to_path_buf(),
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
