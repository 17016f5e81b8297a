//! The request handling that the host's share SFTP server (`rmachine-host`'s `sftpshare`) and
//! the guest's scp SFTP server (`rmachine-init`'s `sftp`) have in common: statuses, blocking
//! file work, attribute conversions, positional reads and writes, and the table of open
//! handles. Where each server looks its paths up (a `cap_std` folder on the host, the guest's
//! own root) stays with it. Builds for every host (Linux, macOS, Windows) and the guest.

use std::collections::HashMap;
use std::fs::{File as StdFile, FileTimes};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use cap_std::fs::Metadata;
use russh_sftp::protocol::{Data, FileAttributes, Status, StatusCode};
use russh_sftp::server::StatusReply;

/// Directory entries sent per `READDIR` answer, to stay well under the packet size limit.
pub const ENTRIES_PER_READDIR: usize = 128;

/// The `Ok` status answering request `id`.
pub fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".to_owned(),
        language_tag: "en-US".to_owned(),
    }
}

fn status_code(kind: std::io::ErrorKind) -> StatusCode {
    match kind {
        std::io::ErrorKind::NotFound => StatusCode::NoSuchFile,
        std::io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    }
}

/// The SFTP status for a failed file operation, with the system's message.
pub fn io_status(err: &std::io::Error) -> StatusReply {
    status_code(err.kind()).with_message(err.to_string())
}

/// The Linux errno name for what went wrong, which a guest's filesystem returns: SFTP v3's
/// few status codes would turn "directory not empty" or "file exists" into `EIO`.
pub fn errno_name(kind: std::io::ErrorKind) -> Option<&'static str> {
    use std::io::ErrorKind as K;
    Some(match kind {
        K::NotFound => "ENOENT",
        K::PermissionDenied => "EACCES",
        K::AlreadyExists => "EEXIST",
        K::DirectoryNotEmpty => "ENOTEMPTY",
        K::NotADirectory => "ENOTDIR",
        K::IsADirectory => "EISDIR",
        K::InvalidInput => "EINVAL",
        K::StorageFull => "ENOSPC",
        K::ReadOnlyFilesystem => "EROFS",
        K::CrossesDevices => "EXDEV",
        K::FileTooLarge => "EFBIG",
        K::InvalidFilename => "ENAMETOOLONG",
        K::ResourceBusy => "EBUSY",
        _ => return None,
    })
}

/// The SFTP status for a failed file operation: the errno's name, then the system's message
/// (for a client that maps the name back to the errno, as the guest's share mount does).
pub fn errno_status(err: &std::io::Error) -> StatusReply {
    match errno_name(err.kind()) {
        Some(name) => status_code(err.kind()).with_message(format!("{name}: {err}")),
        None => io_status(err),
    }
}

/// Runs file work on tokio's blocking pool; a failure becomes the status `status` makes of it
/// (`io_status` or `errno_status`).
pub async fn blocking<T, F>(
    status: fn(&std::io::Error) -> StatusReply,
    work: F,
) -> Result<T, StatusReply>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|e| status(&e)),
        Err(join) => Err(StatusCode::Failure.with_message(join.to_string())),
    }
}

/// The SFTP attributes of a file: size, times and, on Unix, the mode (whose type bits tell
/// symlinks, FIFOs and devices apart) and owner; elsewhere a mode made of the file's kind and
/// read-only flag.
pub fn attributes(meta: &Metadata) -> FileAttributes {
    let secs = |time: std::io::Result<cap_std::time::SystemTime>| {
        time.ok()
            .and_then(|t| t.into_std().duration_since(UNIX_EPOCH).ok())
            .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
    };
    let mut attrs = FileAttributes::empty();
    attrs.size = Some(meta.len());
    attrs.atime = secs(meta.accessed());
    attrs.mtime = secs(meta.modified());
    #[cfg(unix)]
    {
        use cap_std::fs::MetadataExt;
        attrs.permissions = Some(meta.mode());
        attrs.uid = Some(meta.uid());
        attrs.gid = Some(meta.gid());
    }
    #[cfg(not(unix))]
    {
        let kind = meta.file_type();
        attrs.permissions = Some(if kind.is_symlink() {
            0o120_777
        } else if kind.is_dir() {
            0o040_755
        } else if meta.permissions().readonly() {
            0o100_444
        } else {
            0o100_644
        });
    }
    attrs
}

/// `attributes` of what `std::fs` returned.
pub fn std_attributes(meta: std::fs::Metadata) -> FileAttributes {
    attributes(&Metadata::from_just_metadata(meta))
}

/// The access and modification times SETSTAT asks for, if any.
pub fn times(attrs: &FileAttributes) -> Option<FileTimes> {
    let at = |secs: u32| UNIX_EPOCH + Duration::from_secs(secs.into());
    match (attrs.atime, attrs.mtime) {
        (None, None) => None,
        (atime, mtime) => {
            let mut times = FileTimes::new();
            if let Some(atime) = atime {
                times = times.set_accessed(at(atime));
            }
            if let Some(mtime) = mtime {
                times = times.set_modified(at(mtime));
            }
            Some(times)
        }
    }
}

/// Applies what SETSTAT/FSETSTAT may change (size, mode within `mode_mask`, times) to an open
/// file. Owners are left alone: the client's ids mean nothing to the server's side. Off Unix
/// the mode only sets or clears the read-only flag.
pub fn apply(file: &StdFile, attrs: &FileAttributes, mode_mask: u32) -> std::io::Result<()> {
    if let Some(size) = attrs.size {
        file.set_len(size)?;
    }
    if let Some(mode) = attrs.permissions {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode & mode_mask))?;
        }
        #[cfg(not(unix))]
        {
            let mut permissions = file.metadata()?.permissions();
            permissions.set_readonly(mode & mode_mask & 0o222 == 0);
            file.set_permissions(permissions)?;
        }
    }
    if let Some(times) = times(attrs) {
        file.set_times(times)?;
    }
    Ok(())
}

/// Reads at `offset` without moving (or needing) a file position, so pipelined requests need
/// no seek state.
pub fn read_at(file: &StdFile, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        std::os::windows::fs::FileExt::seek_read(file, buf, offset)
    }
}

/// Writes all of `data` at `offset`, as `read_at` reads.
pub fn write_all_at(file: &StdFile, mut data: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !data.is_empty() {
        #[cfg(unix)]
        let written = std::os::unix::fs::FileExt::write_at(file, data, offset);
        #[cfg(windows)]
        let written = std::os::windows::fs::FileExt::seek_write(file, data, offset);
        match written {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The answer to READ `id` of `len` bytes (at most `max_read`) at `offset` in `file`: the
/// bytes there, or EOF past the file's end.
pub async fn read_data(
    status: fn(&std::io::Error) -> StatusReply,
    file: Arc<StdFile>,
    id: u32,
    offset: u64,
    len: u32,
    max_read: u32,
) -> Result<Data, StatusReply> {
    let data = blocking(status, move || {
        let mut buf = vec![0u8; len.min(max_read) as usize];
        let n = read_at(&file, &mut buf, offset)?;
        buf.truncate(n);
        Ok(buf)
    })
    .await?;
    if data.is_empty() {
        return Err(StatusCode::Eof.into());
    }
    Ok(Data { id, data })
}

/// What a handle stands for: an open file, or a directory being listed (`D`, which each
/// server keeps its own way).
pub enum Open<D> {
    /// A file opened by OPEN.
    File(Arc<StdFile>),
    /// A directory opened by OPENDIR.
    Dir(D),
}

/// One session's open handles, numbered from 1.
pub struct Handles<D> {
    open: HashMap<String, Open<D>>,
    next: u64,
}

impl<D> Default for Handles<D> {
    fn default() -> Self {
        Self {
            open: HashMap::new(),
            next: 0,
        }
    }
}

fn no_handle(handle: &str) -> StatusReply {
    StatusCode::Failure.with_message(format!("no handle {handle}"))
}

impl<D> Handles<D> {
    /// How many handles are open.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no handle is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Keeps `open` under a new handle, returned.
    pub fn add(&mut self, open: Open<D>) -> String {
        self.next += 1;
        let handle = self.next.to_string();
        self.open.insert(handle.clone(), open);
        handle
    }

    /// Forgets `handle` (CLOSE), closing what it stood for once no request uses it any more.
    pub fn close(&mut self, handle: &str) -> Result<(), StatusReply> {
        match self.open.remove(handle) {
            Some(_) => Ok(()),
            None => Err(no_handle(handle)),
        }
    }

    /// The file `handle` stands for.
    pub fn file(&self, handle: &str) -> Result<Arc<StdFile>, StatusReply> {
        match self.open.get(handle) {
            Some(Open::File(file)) => Ok(file.clone()),
            Some(Open::Dir(_)) => Err(StatusCode::Failure.with_message("handle is a directory")),
            None => Err(no_handle(handle)),
        }
    }

    /// The directory listing `handle` stands for.
    pub fn dir(&mut self, handle: &str) -> Result<&mut D, StatusReply> {
        match self.open.get_mut(handle) {
            Some(Open::Dir(dir)) => Ok(dir),
            Some(Open::File(_)) => Err(StatusCode::Failure.with_message("handle is a file")),
            None => Err(no_handle(handle)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file holding `0123456789` in a new temporary folder, opened for reading and writing.
    fn ten_digits() -> (tempfile::TempDir, std::path::PathBuf, StdFile) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").expect("write");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        (dir, path, file)
    }

    fn message(status: &StatusReply) -> &str {
        status.error_message.as_deref().unwrap_or_default()
    }

    #[test]
    fn errno_status_names_the_errno_and_io_status_does_not() {
        let err = std::io::Error::from(std::io::ErrorKind::DirectoryNotEmpty);
        let named = errno_status(&err);
        assert_eq!(named.status_code, StatusCode::Failure);
        assert!(
            message(&named).starts_with("ENOTEMPTY: "),
            "{}",
            message(&named)
        );
        let plain = io_status(&err);
        assert_eq!(message(&plain), err.to_string());
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(errno_status(&missing).status_code, StatusCode::NoSuchFile);
        assert_eq!(io_status(&missing).status_code, StatusCode::NoSuchFile);
    }

    #[test]
    fn positional_writes_and_reads_leave_the_rest_alone() {
        let (_dir, path, file) = ten_digits();
        write_all_at(&file, b"ab", 4).expect("write_at");
        let mut buf = [0u8; 4];
        let n = read_at(&file, &mut buf, 3).expect("read_at");
        assert_eq!(&buf[..n], b"3ab6");
        assert_eq!(std::fs::read(&path).expect("read"), b"0123ab6789");
    }

    #[test]
    fn apply_sets_size_and_times_and_attributes_read_them_back() {
        let (_dir, path, file) = ten_digits();
        let attrs = FileAttributes {
            size: Some(3),
            permissions: Some(0o4600),
            atime: Some(2_000_000),
            mtime: Some(1_000_000),
            ..FileAttributes::empty()
        };
        apply(&file, &attrs, 0o1777).expect("apply");
        let back = std_attributes(std::fs::metadata(&path).expect("stat"));
        assert_eq!(back.size, Some(3));
        assert_eq!(back.mtime, Some(1_000_000));
        assert_eq!(back.atime, Some(2_000_000));
        #[cfg(unix)]
        // Regular file type bits, and no setuid: the mask took it off.
        assert_eq!(back.permissions, Some(0o100_600));
    }

    #[test]
    fn handles_tell_files_from_directories_and_forget_closed_ones() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = Arc::new(StdFile::create(dir.path().join("f")).expect("create"));
        let mut handles: Handles<Vec<u8>> = Handles::default();
        let f = handles.add(Open::File(file));
        let d = handles.add(Open::Dir(vec![1, 2]));
        assert_ne!(f, d);
        assert_eq!(handles.len(), 2);
        assert!(handles.file(&f).is_ok());
        assert_eq!(handles.dir(&d).expect("dir").len(), 2);
        let wrong = handles.file(&d).expect_err("a directory");
        assert_eq!(message(&wrong), "handle is a directory");
        let wrong = handles.dir(&f).expect_err("a file");
        assert_eq!(message(&wrong), "handle is a file");
        handles.close(&f).expect("close");
        let gone = handles.file(&f).expect_err("closed");
        assert_eq!(message(&gone), format!("no handle {f}"));
        assert!(handles.close(&f).is_err());
        assert_eq!(handles.len(), 1);
    }

    #[tokio::test]
    async fn blocking_answers_a_failure_with_the_given_status() {
        let err = blocking(errno_status, || -> std::io::Result<()> {
            Err(std::io::ErrorKind::AlreadyExists.into())
        })
        .await
        .expect_err("fails");
        assert!(message(&err).starts_with("EEXIST: "), "{}", message(&err));
        let value = blocking(io_status, || Ok(7)).await.expect("works");
        assert_eq!(value, 7);
    }
}
