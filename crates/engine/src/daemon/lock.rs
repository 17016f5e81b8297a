//! The data-root lock: one engine per data root.
//!
//! Two engines on one data root would each take the other's containers for leftovers of a
//! crash and kill them. The engine holds an exclusive `flock` on `<data-root>/engine.pid` for
//! its whole life (the kernel drops it when the process dies, however it dies) and writes its
//! PID there so that a second engine can name the holder.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tracing::warn;

/// File name of the lock inside the data root.
pub const LOCK_FILE: &str = "engine.pid";

/// File name of the lock inside the exec root (`--exec-root`): the engine empties the exec
/// root's `execs` directory when it starts, which would break the running execs of another
/// engine given the same exec root (the default one, with another `--data-root`).
pub const EXEC_ROOT_LOCK_FILE: &str = "engine.lock";

/// Why the data root could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another engine holds the lock.
    #[error("data root {data_root} is in use by another engine (pid {holder}); stop it first or pass another --data-root")]
    Held {
        /// The data root.
        data_root: PathBuf,
        /// The holder's PID as it wrote it, or `unknown`.
        holder: String,
    },
    /// Another engine holds the exec root's lock.
    #[error("exec root {exec_root} is in use by another engine (pid {holder}); pass another --exec-root")]
    ExecRootHeld {
        /// The exec root.
        exec_root: PathBuf,
        /// The holder's PID as it wrote it, or `unknown`.
        holder: String,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {path}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The held lock; dropping it releases the data root (or the exec root).
#[derive(Debug)]
pub struct DataRootLock {
    _lock: Flock<File>,
}

/// Takes the data root's lock, or says which engine holds it.
pub fn lock(data_root: &Path) -> Result<DataRootLock, LockError> {
    take(data_root, LOCK_FILE).map_err(|held| match held {
        Taken::Held(holder) => LockError::Held {
            data_root: data_root.to_path_buf(),
            holder,
        },
        Taken::Failed(err) => err,
    })
}

/// Takes the exec root's lock (held for the engine's life), or says which engine holds it.
pub fn lock_exec_root(exec_root: &Path) -> Result<DataRootLock, LockError> {
    take(exec_root, EXEC_ROOT_LOCK_FILE).map_err(|held| match held {
        Taken::Held(holder) => LockError::ExecRootHeld {
            exec_root: exec_root.to_path_buf(),
            holder,
        },
        Taken::Failed(err) => err,
    })
}

/// Why [`take`] did not take a lock.
enum Taken {
    /// Another process holds it; its PID as it wrote it, or `unknown`.
    Held(String),
    /// The lock file could not be opened or locked.
    Failed(LockError),
}

fn take(dir: &Path, file_name: &str) -> Result<DataRootLock, Taken> {
    let path = dir.join(file_name);
    let io = |source| {
        Taken::Failed(LockError::Io {
            path: path.clone(),
            source,
        })
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(io)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(Taken::Held(if holder.is_empty() {
                "unknown".into()
            } else {
                holder.to_string()
            }));
        }
        Err((_, errno)) => return Err(io(errno.into())),
    };
    // The PID is only for the message above: a full disk must not keep the engine from
    // starting (that is when one needs it to free space), so a failed write is logged.
    let written = lock
        .set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|()| writeln!(lock, "{}", std::process::id()));
    if let Err(err) = written {
        warn!(path = %path.display(), error = %err, "cannot record the engine's pid in its lock file");
    }
    Ok(DataRootLock { _lock: lock })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        let err = lock(dir.path()).unwrap_err();
        let pid = std::process::id().to_string();
        assert!(
            matches!(&err, LockError::Held { holder, .. } if *holder == pid),
            "{err}"
        );
        drop(held);
        lock(dir.path()).unwrap();
    }
}
