//! Startup reconcile: what an engine that died (kill -9, power cut, OOM) left behind.
//!
//! The engine holds the data-root lock ([`crate::daemon::lock`]) before this runs, so nothing
//! else acts on this data root meanwhile: every runtime monitor, cgroup, container directory
//! and spool that belongs to it is a leftover of a previous engine.
//!
//! - **Containers whose processes outlived the engine are stopped, not adopted.** Adopting
//!   would need what died with the engine: the read ends of the container's stdout/stderr
//!   pipes (its log and attach streams) and the monitor's parentage (only a parent can collect
//!   the exit status). A container adopted without them would run on with no log and no exit
//!   record. dockerd without live-restore stops them too. Monitors of this data root are found
//!   in `/proc` (`rmachine-runtime run|exec <data-root>/containers/<id>`) and killed; the
//!   container's cgroup is then emptied (SIGKILL to every process, thawed if frozen) and
//!   removed, so a later `docker start` never runs a second copy on the same upper directory.
//! - **Cgroups are found through the container's `runtime.json`**, which the engine writes
//!   before the runtime creates the cgroup and deletes only with the container directory, after
//!   the cgroup ([`remove_cgroup`] in `docker rm`). Cgroups of containers of *other* data roots
//!   (other engines on the same host share the cgroup parent) are never touched.
//! - **Container directories without a record** (a crash between creating the directory and
//!   writing its record) are removed, as are spooled uploads and loads in `<data-root>/tmp`.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rmachine_runtime::cgroup::Cgroup;
use rmachine_runtime::spec::{SpecFile, SPEC_FILE};
use tracing::{info, warn};

use crate::state::RECORD_FILE;

/// What the reconcile found.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Containers that had processes (a monitor or anything in their cgroup) still alive;
    /// they are all dead now.
    pub stopped: HashSet<String>,
}

/// Cleans up after a previous engine on `data_root` (see the module docs). Best effort: each
/// failure is logged, since an engine that cannot clean up must still start and serve.
/// Monitors are recognised by their command line and the engine's namespaces, not by their
/// `argv[0]`: an engine restarted with another `--runtime` must still find its predecessor's.
pub fn reconcile(data_root: &Path) -> Reconciled {
    let containers = data_root.join("containers");
    let mut reconciled = Reconciled::default();
    for id in kill_monitors(&containers) {
        reconciled.stopped.insert(id);
    }
    let entries = match fs::read_dir(&containers) {
        Ok(entries) => entries,
        Err(err) => {
            warn!(path = %containers.display(), error = %err, "cannot list containers");
            return reconciled;
        }
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let Some(id) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        if !is_container_id(&id) || !dir.is_dir() {
            continue;
        }
        if remove_cgroup(&dir, &id) {
            reconciled.stopped.insert(id.clone());
        }
        if !dir.join(RECORD_FILE).exists() {
            info!(container = %id, "removing a container directory without a record");
            if let Err(err) = fs::remove_dir_all(&dir) {
                warn!(path = %dir.display(), error = %err, "cannot remove container directory");
            }
        }
    }
    clean_spools(&data_root.join("tmp"));
    reconciled
}

/// Removes the cgroup of the container in `dir`, killing whatever still runs in it; true if
/// processes were found there. Nothing to do for a container that never started. The removal
/// waits (up to seconds) for killed processes to go: on a worker of the engine's
/// multi-threaded runtime it runs in `block_in_place`, so other tasks go on meanwhile.
pub fn remove_cgroup(dir: &Path, id: &str) -> bool {
    remove_cgroup_with(dir, id, |parent| Cgroup::for_container(id, parent))
}

/// [`remove_cgroup`] with the cgroup found by `locate` from the recorded parent.
fn remove_cgroup_with(
    dir: &Path,
    id: &str,
    locate: impl FnOnce(Option<&str>) -> Result<Cgroup, rmachine_runtime::cgroup::CgroupError>,
) -> bool {
    let Ok(bytes) = fs::read(dir.join(SPEC_FILE)) else {
        return false;
    };
    let parent = match serde_json::from_slice::<SpecFile>(&bytes) {
        Ok(file) => file.features.cgroup_parent,
        Err(err) => {
            warn!(container = %id, error = %err, "unreadable runtime spec; trying the default cgroup parent");
            None
        }
    };
    let cgroup = match locate(parent.as_deref()) {
        Ok(cgroup) => cgroup,
        Err(err) => {
            warn!(container = %id, error = %err, "cannot find the container's cgroup");
            return false;
        }
    };
    crate::state::durable::off_the_async_workers(|| {
        let alive = cgroup.pids().is_ok_and(|pids| !pids.is_empty());
        if alive {
            info!(container = %id, "container processes outlived the engine; killing them");
        }
        if let Err(err) = cgroup.remove() {
            warn!(container = %id, error = %err, "cannot remove the container's cgroup");
        }
        alive
    })
}

/// Kills every runtime monitor (`run` or `exec`) of a container under `containers`; returns
/// the containers concerned.
fn kill_monitors(containers: &Path) -> HashSet<String> {
    let mut killed = HashSet::new();
    let Ok(containers) = containers.canonicalize() else {
        return killed;
    };
    let Some(engine) = EngineNamespaces::own() else {
        warn!("cannot read the engine's own namespaces; no runtime monitor is killed");
        return killed;
    };
    let Ok(procs) = fs::read_dir("/proc") else {
        return killed;
    };
    let mut pids = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        if let Some(id) = monitored_container(pid, &containers, &engine) {
            info!(pid, container = %id, "killing a runtime monitor left by the previous engine");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            pids.push(pid);
            killed.insert(id);
        }
    }
    // They are not our children: wait for them to vanish from /proc.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pids
        .iter()
        .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    killed
}

/// The PID and mount namespaces of the engine, which its runtime monitors share.
struct EngineNamespaces {
    pid: (u64, u64),
    mnt: (u64, u64),
}

impl EngineNamespaces {
    fn own() -> Option<Self> {
        Self::of("self")
    }

    /// `process`'s namespaces (`self` or a PID), `None` when unreadable (gone, or not ours).
    fn of(process: &str) -> Option<Self> {
        let id = |name: &str| {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(format!("/proc/{process}/ns/{name}"))
                .ok()
                .map(|m| (m.dev(), m.ino()))
        };
        Some(Self {
            pid: id("pid")?,
            mnt: id("mnt")?,
        })
    }
}

/// The container id if process `pid` is `rmachine-runtime run|exec DIR …` with `DIR` a
/// container directory under `containers`, and is a monitor the engine started: a command
/// line is anyone's to write, so the process must also be in the engine's PID namespace (a
/// container's processes are not, unless `--pid host`) and mount namespace (a container's
/// never are; monitors stay in the engine's).
fn monitored_container(pid: i32, containers: &Path, engine: &EngineNamespaces) -> Option<String> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let (verb, dir) = (args.get(1)?, args.get(2)?);
    let theirs = EngineNamespaces::of(&pid.to_string())?;
    if theirs.pid != engine.pid || theirs.mnt != engine.mnt {
        return None;
    }
    if *verb != b"run" && *verb != b"exec" {
        return None;
    }
    let dir = PathBuf::from(std::str::from_utf8(dir).ok()?);
    let dir = if dir.is_relative() {
        fs::read_link(format!("/proc/{pid}/cwd")).ok()?.join(dir)
    } else {
        dir
    };
    let id = dir.file_name()?.to_str()?.to_string();
    let parent = dir.parent()?.canonicalize().ok()?;
    (parent == containers && is_container_id(&id)).then_some(id)
}

/// Removes spooled uploads and loads (`load-*.tar`, `cp-*.tar`) a killed engine left.
fn clean_spools(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let removed = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match removed {
            Ok(()) => info!(path = %path.display(), "removed a spool left by the previous engine"),
            Err(err) => warn!(path = %path.display(), error = %err, "cannot remove spool"),
        }
    }
}

fn is_container_id(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_without_a_record_and_spools_go_records_stay() {
        let root = tempfile::tempdir().unwrap();
        let kept = root.path().join("containers").join("a".repeat(64));
        let orphan = root.path().join("containers").join("b".repeat(64));
        let foreign = root.path().join("containers").join("notes");
        for dir in [&kept, &orphan, &foreign] {
            fs::create_dir_all(dir.join("upper")).unwrap();
        }
        fs::write(kept.join(RECORD_FILE), b"{}").unwrap();
        fs::create_dir_all(root.path().join("tmp")).unwrap();
        fs::write(root.path().join("tmp/load-1.tar"), b"x").unwrap();
        reconcile(root.path());
        assert!(kept.join("upper").is_dir());
        assert!(!orphan.exists());
        assert!(foreign.exists(), "only container ids are touched");
        assert_eq!(fs::read_dir(root.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_slow_cgroup_removal_leaves_the_workers_other_tasks_running() {
        let root = tempfile::tempdir().unwrap();
        let id = "e".repeat(64);
        let dir = root.path().join("containers").join(&id);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(SPEC_FILE), b"{}").unwrap();
        // A directory that cannot be removed (not empty) keeps the removal retrying for its
        // whole timeout, as a cgroup whose processes do not die would.
        let cgroups = root.path().join("cgroup");
        fs::create_dir_all(cgroups.join("rmachine").join(&id).join("busy")).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let removal = runtime.spawn({
            let (dir, id, cgroups) = (dir.clone(), id.clone(), cgroups.clone());
            async move {
                remove_cgroup_with(&dir, &id, |parent| {
                    Cgroup::under(
                        &cgroups,
                        rmachine_runtime::cgroup::CgroupMode::V2,
                        &id,
                        parent,
                    )
                })
            }
        });
        // Let the only worker pick the removal up.
        std::thread::sleep(Duration::from_millis(200));
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let _ = tx.send(());
        });
        let other = rx.recv_timeout(Duration::from_secs(2));
        let removed = runtime.block_on(removal).unwrap();
        assert!(other.is_ok(), "a task waited for the cgroup removal");
        assert!(!removed, "nothing ran in the cgroup");
    }
}
