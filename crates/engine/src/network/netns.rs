//! Named network namespaces for containers: a new namespace made on a short-lived thread and
//! bind-mounted on a file (as `ip netns add` does), so that the engine can configure it before
//! the container's process runs and the runtime can join it by path.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::NetworkError;

/// Makes a new network namespace and bind-mounts it on `path` (created empty first).
pub fn create(path: &Path) -> Result<(), NetworkError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| NetworkError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::File::create(path).map_err(|source| NetworkError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let target = path.to_path_buf();
    // unshare(CLONE_NEWNET) moves only the calling thread: a thread of its own keeps the
    // engine's other threads (and tokio's workers) in the engine's namespace.
    let made = std::thread::spawn(move || -> Result<(), NetworkError> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| NetworkError::Netns {
            path: target.clone(),
            source: e.into(),
        })?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| NetworkError::Netns {
            path: target.clone(),
            source: e.into(),
        })
    })
    .join()
    .unwrap_or_else(|_| {
        Err(NetworkError::Netns {
            path: path.to_path_buf(),
            source: std::io::Error::other("namespace thread panicked"),
        })
    });
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Unmounts and removes a namespace file made by [`create`]; a missing file is not an error.
pub fn remove(path: &Path) {
    let _ = umount2(path, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(path);
}

/// Runs `f` on a thread that has joined the namespace at `path` (e.g. to open a netlink socket
/// there: a socket stays in the namespace it was made in).
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetworkError> {
    let file = std::fs::File::open(path).map_err(|source| NetworkError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let owned: PathBuf = path.to_path_buf();
    std::thread::spawn(move || -> Result<T, NetworkError> {
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| NetworkError::Netns {
            path: owned,
            source: e.into(),
        })?;
        Ok(f())
    })
    .join()
    .unwrap_or_else(|_| {
        Err(NetworkError::Netns {
            path: path.to_path_buf(),
            source: std::io::Error::other("namespace thread panicked"),
        })
    })
}

/// Bind-mounts the network namespace of running process `pid` (a container the runtime made
/// without one of ours) on `path`, from one open descriptor: the namespace checked is the
/// one kept. Refuses the engine's own namespace (the PID gone and reused by a host process).
pub fn adopt(pid: i32, path: &Path) -> Result<(), NetworkError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let proc_ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NetworkError::Io { path, source }
    };
    let file = std::fs::File::open(&proc_ns).map_err(io(&proc_ns))?;
    let theirs = file.metadata().map_err(io(&proc_ns))?;
    let own = Path::new("/proc/self/ns/net");
    let ours = std::fs::metadata(own).map_err(io(own))?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Err(NetworkError::Netns {
            path: proc_ns,
            source: std::io::Error::other("the container's process is gone"),
        });
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::File::create(path).map_err(io(path))?;
    let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    if let Err(e) = mount(
        Some(fd_path.as_str()),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = std::fs::remove_file(path);
        return Err(NetworkError::Netns {
            path: path.to_path_buf(),
            source: e.into(),
        });
    }
    Ok(())
}
