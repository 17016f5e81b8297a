//! Durable writes: what the engine acknowledges survives a power cut.
//!
//! A rename is atomic but not durable until the directory holding the new name is on disk,
//! and the renamed file's data only if it was flushed before the rename. So every state file
//! goes through [`write_atomic`] (temp file, `fsync`, rename, `fsync` of the directory), and a
//! tree published by a rename (an extracted layer) is flushed with one [`sync_filesystem`]
//! (`syncfs(2)`) before its rename rather than one `fsync` per file, which costs a disk flush
//! per file on a layer of thousands.
//!
//! A flush can take seconds (ext4 in ordered mode writes other files' dirty data with the
//! journal commit an `fsync` forces), and the guest's engine may have one async worker: every
//! flush runs through [`off_the_async_workers`], so `ps`, log streams and health probes go on
//! meanwhile.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `bytes` to `path` (mode `mode`) durably: a temp file beside it, flushed, renamed over
/// `path`, then the directory flushed. Readers see the old content or the new, never half.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    off_the_async_workers(|| write_atomic_blocking(path, bytes, mode))
}

fn write_atomic_blocking(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{:016x}", rand::random::<u64>()));
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    File::open(dir)?.sync_all()
}

/// Flushes a directory's entries (names created, renamed or removed in it).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    off_the_async_workers(|| File::open(dir)?.sync_all())
}

/// Flushes a path's parent directory: after creating, renaming or removing `path`.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    sync_dir(parent(path))
}

/// Flushes the whole filesystem holding `path` (`syncfs(2)`): for a tree of many files
/// published by one rename afterwards.
pub fn sync_filesystem(path: &Path) -> io::Result<()> {
    off_the_async_workers(|| {
        let dir = File::open(path)?;
        // SAFETY: syncfs only takes a descriptor, open for the duration of the call.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })
}

/// Runs blocking `work` without stalling the async tasks of the worker it is called on:
/// through `block_in_place` on a multi-threaded runtime (other threads take the worker's
/// tasks meanwhile); as is elsewhere (outside a runtime, or on a current-thread one, where
/// `block_in_place` is not allowed).
pub fn off_the_async_workers<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_writes_replace_whole_files_with_the_mode_asked_and_leave_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        sync_filesystem(dir.path()).unwrap();
    }
}
