//! `rmachine-init sftp-mount`: the guest side of a share over SSH (transport `sftp`).
//!
//! The host's port agent opens an exec channel running this command; its stdin and stdout are
//! that channel, and the host answers SFTP on the other end, rooted at the shared folder
//! (`rmachine_host::sftpshare`). This side mounts a FUSE filesystem at the share's guest path
//! (as root, straight through `/dev/fuse` and mount(2): no libfuse, no fusermount) and turns
//! each kernel request into SFTP requests, so containers see the host folder as with the
//! other transports. Files are read and created by the host's agent, so they belong to the
//! user on the host; the ids the host reports are shown as they are.
//!
//! The filesystem lives as long as the channel: when it closes (the machine stops, the agent
//! is replaced), requests fail with `ENOTCONN` and the next agent mounts afresh over the same
//! path after detaching the dead mount.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request,
    SessionACL, TimeOrNow, WriteFlags,
};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags as SftpOpen, StatusCode};
use tokio::runtime::Handle as Runtime;

/// How long the kernel may keep names and attributes: short, since the host changes files
/// behind the guest's back.
const TTL: Duration = Duration::from_secs(1);

/// The largest write the kernel sends at once; one SFTP packet carries it (the server takes
/// packets of up to 256 KiB).
const MAX_WRITE: u32 = 128 * 1024;

/// How long one SFTP request may take before the kernel gets `EIO` (a large write under
/// emulation is slow).
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// The line the host's agent waits for on stderr (`rmachine_host::sftpshare::MOUNTED_LINE`).
pub const MOUNTED_LINE: &str = "rmachine-sftp: mounted";

/// Kernel request threads: SFTP round trips are the cost, so a few run at once.
const THREADS: usize = 4;

/// What can go wrong setting up a share over SFTP.
#[derive(Debug, thiserror::Error)]
pub enum SftpMountError {
    /// The mount point could not be made.
    #[error("cannot create the mount point {path}")]
    MountPoint {
        /// The guest path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The host's SFTP server did not answer the handshake.
    #[error("the host's SFTP server did not answer for {path}")]
    Handshake {
        /// The guest path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: SftpError,
    },
    /// FUSE refused the mount or its session failed.
    #[error("FUSE mount on {path} failed")]
    Fuse {
        /// The guest path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Mounts the share whose SFTP server answers on stdin/stdout at `path` and serves it until
/// the channel or the mount goes away.
pub fn run(path: &Path, read_only: bool) -> Result<(), SftpMountError> {
    std::fs::create_dir_all(path).map_err(|source| SftpMountError::MountPoint {
        path: path.to_owned(),
        source,
    })?;
    // A mount left by an earlier agent whose channel closed answers nothing but ENOTCONN.
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| SftpMountError::Fuse {
            path: path.to_owned(),
            source,
        })?;
    // Our own descriptors rather than tokio's stdout, which goes through std's line-buffered
    // `Stdout` and would hold binary SFTP packets until a newline.
    let fd = |fd: std::io::Result<std::os::fd::OwnedFd>| {
        fd.map(|fd| tokio::fs::File::from_std(std::fs::File::from(fd)))
            .map_err(|source| SftpMountError::Fuse {
                path: path.to_owned(),
                source,
            })
    };
    use std::os::fd::AsFd as _;
    let input = fd(std::io::stdin().as_fd().try_clone_to_owned())?;
    let output = fd(std::io::stdout().as_fd().try_clone_to_owned())?;
    let stream = tokio::io::join(input, output);
    let sftp = runtime.block_on(async {
        let sftp = RawSftpSession::new(stream);
        sftp.set_timeout(REQUEST_TIMEOUT_SECS);
        sftp.init().await.map(|_| sftp)
    });
    let sftp = sftp.map_err(|source| SftpMountError::Handshake {
        path: path.to_owned(),
        source,
    })?;
    let fs = SftpFs::new(sftp, runtime.handle().clone(), read_only);
    let mut options = vec![
        MountOption::FSName("rmachine-sftp".to_owned()),
        MountOption::Subtype("sftp".to_owned()),
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    options.push(if read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    let mut config = Config::default();
    config.mount_options = options;
    // Containers run as any user; access is the host's to decide (as with 9p and virtio-fs).
    config.acl = SessionACL::All;
    config.n_threads = Some(THREADS);
    config.clone_fd = true;
    let fuse_error = |source| SftpMountError::Fuse {
        path: path.to_owned(),
        source,
    };
    let session = fuser::Session::new(fs, path, &config).map_err(fuse_error)?;
    // The host's agent waits for this line to report the share mounted.
    eprintln!("{MOUNTED_LINE}");
    session.run().map_err(fuse_error)
}

/// The Linux errno for a failed SFTP request. SFTP v3 has few status codes; our host server
/// puts the errno's name first in the message (`ENOTEMPTY: …`), which is read when present.
fn errno(err: &SftpError) -> Errno {
    match err {
        SftpError::Status(status) => {
            let tag = status.error_message.split(':').next().unwrap_or_default();
            if let Some(errno) = errno_named(tag) {
                return errno;
            }
            match status.status_code {
                StatusCode::NoSuchFile => Errno::ENOENT,
                StatusCode::PermissionDenied => Errno::EACCES,
                StatusCode::OpUnsupported => Errno::ENOSYS,
                StatusCode::NoConnection | StatusCode::ConnectionLost => Errno::ENOTCONN,
                _ => Errno::EIO,
            }
        }
        SftpError::IO(_) => Errno::ENOTCONN,
        _ => Errno::EIO,
    }
}

/// The errno a name written by the host's server stands for.
pub fn errno_named(name: &str) -> Option<Errno> {
    Some(match name {
        "ENOENT" => Errno::ENOENT,
        "EACCES" => Errno::EACCES,
        "EEXIST" => Errno::EEXIST,
        "ENOTEMPTY" => Errno::ENOTEMPTY,
        "ENOTDIR" => Errno::ENOTDIR,
        "EISDIR" => Errno::EISDIR,
        "EINVAL" => Errno::EINVAL,
        "ENOSPC" => Errno::ENOSPC,
        "EROFS" => Errno::EROFS,
        "EXDEV" => Errno::EXDEV,
        "EFBIG" => Errno::EFBIG,
        "ENAMETOOLONG" => Errno::ENAMETOOLONG,
        "EBUSY" => Errno::EBUSY,
        _ => return None,
    })
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn system_time(secs: Option<u32>) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.unwrap_or(0).into())
}

/// The FUSE attributes of an SFTP answer.
pub fn file_attr(ino: u64, attrs: &FileAttributes) -> FileAttr {
    let mode = attrs.permissions.unwrap_or(0o100_644);
    let size = attrs.size.unwrap_or(0);
    let kind = kind_of(mode);
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: system_time(attrs.atime),
        mtime: system_time(attrs.mtime),
        ctime: system_time(attrs.mtime),
        crtime: system_time(attrs.mtime),
        kind,
        // The mask keeps the permission bits (the type is in `kind`).
        perm: (mode & 0o7777) as u16,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: attrs.uid.unwrap_or(0),
        gid: attrs.gid.unwrap_or(0),
        rdev: 0,
        blksize: MAX_WRITE,
        flags: 0,
    }
}

/// `name` under the share path `parent` (`/` is the share's top). SFTP names are UTF-8: a
/// name that is not is refused with `EILSEQ` rather than converted lossily, which would make
/// two different names one file on the host.
pub fn child(parent: &str, name: &OsStr) -> Result<String, Errno> {
    name.to_str()
        .map(|name| join(parent, name))
        .ok_or(Errno::EILSEQ)
}

fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// The inode numbers handed to the kernel and the share paths they stand for.
#[derive(Default)]
struct Inodes {
    paths: HashMap<u64, String>,
    numbers: HashMap<String, u64>,
    next: u64,
}

impl Inodes {
    fn new() -> Self {
        let mut inodes = Inodes {
            next: 2,
            ..Inodes::default()
        };
        inodes.paths.insert(1, "/".to_owned());
        inodes.numbers.insert("/".to_owned(), 1);
        inodes
    }

    fn number(&mut self, path: &str) -> u64 {
        if let Some(ino) = self.numbers.get(path) {
            return *ino;
        }
        let ino = self.next;
        self.next += 1;
        self.paths.insert(ino, path.to_owned());
        self.numbers.insert(path.to_owned(), ino);
        ino
    }

    /// Moves `from` and everything under it to `to`.
    fn rename(&mut self, from: &str, to: &str) {
        self.forget_path(to);
        let prefix = format!("{from}/");
        let moved: Vec<(String, u64)> = self
            .numbers
            .iter()
            .filter(|(path, _)| *path == from || path.starts_with(&prefix))
            .map(|(path, ino)| (path.clone(), *ino))
            .collect();
        for (old, ino) in moved {
            self.numbers.remove(&old);
            let new = format!("{to}{}", &old[from.len()..]);
            self.paths.insert(ino, new.clone());
            self.numbers.insert(new, ino);
        }
    }

    fn forget_path(&mut self, path: &str) {
        if let Some(ino) = self.numbers.remove(path) {
            self.paths.remove(&ino);
        }
    }
}

/// The FUSE filesystem: every request becomes SFTP requests on one session.
struct SftpFs {
    sftp: Arc<RawSftpSession>,
    runtime: Runtime,
    read_only: bool,
    inodes: Mutex<Inodes>,
    /// Open files: FUSE file handle → SFTP handle.
    files: Mutex<HashMap<u64, String>>,
    /// Open directories: FUSE handle → the entries listed at `opendir`.
    dirs: Mutex<HashMap<u64, Vec<(String, FileType)>>>,
    next_handle: Mutex<u64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking request thread must not take the whole share down with it.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn sftp_time(time: Option<TimeOrNow>) -> Option<u32> {
    let time = match time? {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => SystemTime::now(),
    };
    let secs = time.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(u32::try_from(secs).unwrap_or(u32::MAX))
}

impl SftpFs {
    fn new(sftp: RawSftpSession, runtime: Runtime, read_only: bool) -> Self {
        SftpFs {
            sftp: Arc::new(sftp),
            runtime,
            read_only,
            inodes: Mutex::new(Inodes::new()),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_handle: Mutex::new(1),
        }
    }

    fn path(&self, ino: INodeNo) -> Result<String, Errno> {
        lock(&self.inodes)
            .paths
            .get(&ino.0)
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    fn handle(&self) -> u64 {
        let mut next = lock(&self.next_handle);
        *next += 1;
        *next
    }

    fn sftp_handle(&self, fh: FileHandle) -> Result<String, Errno> {
        lock(&self.files).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn writable(&self) -> Result<(), Errno> {
        if self.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// Runs one SFTP request to its answer on the session's runtime.
    fn call<T, F>(&self, request: F) -> Result<T, Errno>
    where
        F: std::future::Future<Output = Result<T, SftpError>>,
    {
        self.runtime.block_on(request).map_err(|e| {
            let errno = errno(&e);
            if errno == Errno::EIO || errno == Errno::ENOTCONN {
                tracing::warn!("sftp share: {e}");
            }
            errno
        })
    }

    /// `lstat` of a share path, as an entry with its inode number.
    fn entry(&self, path: &str) -> Result<FileAttr, Errno> {
        let sftp = self.sftp.clone();
        let attrs = self.call(sftp.lstat(path.to_owned()))?.attrs;
        let ino = lock(&self.inodes).number(path);
        Ok(file_attr(ino, &attrs))
    }
}

impl Filesystem for SftpFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self
            .path(parent)
            .and_then(|p| child(&p, name).and_then(|path| self.entry(&path)))
        {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        // `fstat` on an open file asks about the file itself, even if its name has gone; a
        // handle that is not an open file (a directory's) falls back to the path.
        let handle = fh.and_then(|fh| self.sftp_handle(fh).ok());
        let result = match handle {
            Some(handle) => {
                let sftp = self.sftp.clone();
                self.call(sftp.fstat(handle))
                    .map(|reply| file_attr(ino.0, &reply.attrs))
            }
            None => self.path(ino).and_then(|p| self.entry(&p)),
        };
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = (|| {
            self.writable()?;
            let path = self.path(ino)?;
            let current = self.entry(&path)?;
            // The host's user owns every file of the share; it cannot give one away, as a
            // non-root virtiofsd could not either.
            if uid.is_some_and(|u| u != current.uid) || gid.is_some_and(|g| g != current.gid) {
                return Err(Errno::EPERM);
            }
            let mut attrs = FileAttributes::empty();
            attrs.size = size;
            attrs.permissions = mode.map(|m| m & 0o1777);
            let (atime, mtime) = (sftp_time(atime), sftp_time(mtime));
            if atime.is_some() || mtime.is_some() {
                // SFTP v3 sets both times at once.
                attrs.atime = atime.or(Some(
                    current
                        .atime
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
                ));
                attrs.mtime = mtime.or(Some(
                    current
                        .mtime
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
                ));
            }
            let sftp = self.sftp.clone();
            match fh.map(|fh| self.sftp_handle(fh)).transpose()? {
                Some(handle) => self.call(sftp.fsetstat(handle, attrs))?,
                None => self.call(sftp.setstat(path.clone(), attrs))?,
            };
            self.entry(&path)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let result = self.path(ino).and_then(|path| {
            let sftp = self.sftp.clone();
            let name = self.call(sftp.readlink(path))?;
            name.files
                .into_iter()
                .next()
                .map(|f| f.filename)
                .ok_or(Errno::EIO)
        });
        match result {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = (|| {
            self.writable()?;
            let path = child(&self.path(parent)?, name)?;
            let mut attrs = FileAttributes::empty();
            attrs.permissions = Some(mode & !umask & 0o1777);
            let sftp = self.sftp.clone();
            self.call(sftp.mkdir(path.clone(), attrs))?;
            self.entry(&path)
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = (|| {
            self.writable()?;
            let path = child(&self.path(parent)?, name)?;
            let sftp = self.sftp.clone();
            self.call(sftp.remove(path.clone()))?;
            lock(&self.inodes).forget_path(&path);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = (|| {
            self.writable()?;
            let path = child(&self.path(parent)?, name)?;
            let sftp = self.sftp.clone();
            self.call(sftp.rmdir(path.clone()))?;
            lock(&self.inodes).forget_path(&path);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let result = (|| {
            self.writable()?;
            let path = child(&self.path(parent)?, link_name)?;
            let sftp = self.sftp.clone();
            let target = target.to_str().ok_or(Errno::EILSEQ)?.to_owned();
            self.call(sftp.symlink(path.clone(), target))?;
            self.entry(&path)
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = (|| {
            self.writable()?;
            // RENAME_EXCHANGE and RENAME_NOREPLACE have no SFTP v3 request.
            if flags != RenameFlags::empty() {
                return Err(Errno::EINVAL);
            }
            let from = child(&self.path(parent)?, name)?;
            let to = child(&self.path(newparent)?, newname)?;
            let sftp = self.sftp.clone();
            self.call(sftp.rename(from.clone(), to.clone()))?;
            lock(&self.inodes).rename(&from, &to);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let result = (|| {
            let mut pflags = match flags.acc_mode() {
                OpenAccMode::O_RDONLY => SftpOpen::READ,
                OpenAccMode::O_WRONLY => SftpOpen::WRITE,
                OpenAccMode::O_RDWR => SftpOpen::READ | SftpOpen::WRITE,
            };
            if flags.0 & libc::O_TRUNC != 0 {
                pflags |= SftpOpen::TRUNCATE;
            }
            if pflags.intersects(SftpOpen::WRITE | SftpOpen::TRUNCATE) {
                self.writable()?;
            }
            let path = self.path(ino)?;
            let sftp = self.sftp.clone();
            let handle = self
                .call(sftp.open(path, pflags, FileAttributes::empty()))?
                .handle;
            let fh = self.handle();
            lock(&self.files).insert(fh, handle);
            Ok(fh)
        })();
        match result {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = (|| {
            self.writable()?;
            let path = child(&self.path(parent)?, name)?;
            let mut pflags = SftpOpen::CREATE | SftpOpen::WRITE | SftpOpen::READ;
            if flags & libc::O_EXCL != 0 {
                pflags |= SftpOpen::EXCLUDE;
            }
            if flags & libc::O_TRUNC != 0 {
                pflags |= SftpOpen::TRUNCATE;
            }
            let mut attrs = FileAttributes::empty();
            attrs.permissions = Some(mode & !umask & 0o1777);
            let sftp = self.sftp.clone();
            let handle = self.call(sftp.open(path.clone(), pflags, attrs))?.handle;
            let attr = match self.entry(&path) {
                Ok(attr) => attr,
                Err(e) => {
                    // The kernel gets no handle, so nothing would ever close the host's.
                    let sftp = self.sftp.clone();
                    let _ = self.call(sftp.close(handle));
                    return Err(e);
                }
            };
            let fh = self.handle();
            lock(&self.files).insert(fh, handle);
            Ok((attr, fh))
        })();
        match result {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let result = (|| {
            let handle = self.sftp_handle(fh)?;
            let mut data = Vec::with_capacity(size as usize);
            // A server may answer with less than asked; the kernel takes a short read as the
            // end of the file, so ask again until it is full or at the end.
            while data.len() < size as usize {
                let sftp = self.sftp.clone();
                let want = size - data.len() as u32;
                let at = offset + data.len() as u64;
                match self.runtime.block_on(sftp.read(handle.clone(), at, want)) {
                    Ok(chunk) if chunk.data.is_empty() => break,
                    Ok(chunk) => data.extend_from_slice(&chunk.data),
                    Err(SftpError::Status(status)) if status.status_code == StatusCode::Eof => {
                        break
                    }
                    Err(e) => return Err(errno(&e)),
                }
            }
            Ok(data)
        })();
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = (|| {
            self.writable()?;
            let handle = self.sftp_handle(fh)?;
            let sftp = self.sftp.clone();
            self.call(sftp.write(handle, offset, data.to_vec()))?;
            u32::try_from(data.len()).map_err(|_| Errno::EFBIG)
        })();
        match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Every write has reached the host when it was answered.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let handle = lock(&self.files).remove(&fh.0);
        if let Some(handle) = handle {
            let sftp = self.sftp.clone();
            if let Err(e) = self.call(sftp.close(handle)) {
                reply.error(e);
                return;
            }
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = (|| {
            let path = self.path(ino)?;
            let sftp = self.sftp.clone();
            let handle = self.call(sftp.opendir(path))?.handle;
            let mut entries = Vec::new();
            loop {
                let sftp = self.sftp.clone();
                match self.runtime.block_on(sftp.readdir(handle.clone())) {
                    Ok(name) => entries.extend(name.files.into_iter().filter_map(|f| {
                        let mode = f.attrs.permissions.unwrap_or(0o100_644);
                        (f.filename != "." && f.filename != "..")
                            .then(|| (f.filename, kind_of(mode)))
                    })),
                    Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => break,
                    Err(e) => {
                        let sftp = self.sftp.clone();
                        let _ = self.runtime.block_on(sftp.close(handle));
                        return Err(errno(&e));
                    }
                }
            }
            let sftp = self.sftp.clone();
            let _ = self.runtime.block_on(sftp.close(handle));
            let fh = self.handle();
            lock(&self.dirs).insert(fh, entries);
            Ok(fh)
        })();
        match result {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Ok(dir) = self.path(ino) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let dirs = lock(&self.dirs);
        let Some(entries) = dirs.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        let parent_ino = {
            let parent = Path::new(&dir)
                .parent()
                .map_or("/".to_owned(), |p| p.to_string_lossy().into_owned());
            lock(&self.inodes).number(&parent)
        };
        let dots = [
            (ino.0, FileType::Directory, ".".to_owned()),
            (parent_ino, FileType::Directory, "..".to_owned()),
        ];
        let named = entries.iter().map(|(name, kind)| {
            let ino = lock(&self.inodes).number(&join(&dir, name));
            (ino, *kind, name.clone())
        });
        for (index, (entry_ino, kind, name)) in dots
            .into_iter()
            .chain(named)
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        {
            if reply.add(INodeNo(entry_ino), index as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_move_every_inode_below() {
        let mut inodes = Inodes::new();
        let dir = inodes.number("/a");
        let file = inodes.number("/a/f");
        let other = inodes.number("/ab");
        inodes.rename("/a", "/b");
        assert_eq!(inodes.paths[&dir], "/b");
        assert_eq!(inodes.paths[&file], "/b/f");
        assert_eq!(inodes.paths[&other], "/ab");
        assert_eq!(inodes.number("/b/f"), file);
        assert_ne!(inodes.number("/a/f"), file);
    }

    #[test]
    fn attributes_keep_the_hosts_owner_and_the_type() {
        let attrs = FileAttributes {
            size: Some(1000),
            uid: Some(501),
            gid: Some(20),
            permissions: Some(0o120_777),
            ..FileAttributes::empty()
        };
        let attr = file_attr(7, &attrs);
        assert_eq!((attr.uid, attr.gid), (501, 20));
        assert_eq!(attr.kind, FileType::Symlink);
        assert_eq!(attr.perm, 0o777);
        assert_eq!(attr.blocks, 2);
        assert_eq!(child("/", OsStr::new("x")), Ok("/x".to_owned()));
        assert_eq!(child("/x", OsStr::new("y")), Ok("/x/y".to_owned()));
        {
            use std::os::unix::ffi::OsStrExt;
            // Lossily both would be "/x/a\u{fffd}": one host file for two guest names.
            assert_eq!(child("/x", OsStr::from_bytes(b"a\xff")), Err(Errno::EILSEQ));
            assert_eq!(child("/x", OsStr::from_bytes(b"a\xfe")), Err(Errno::EILSEQ));
        }
    }

    #[test]
    fn the_hosts_errno_names_are_read_first() {
        let status = |code, message: &str| {
            SftpError::Status(russh_sftp::protocol::Status {
                id: 1,
                status_code: code,
                error_message: message.to_owned(),
                language_tag: "en-US".to_owned(),
            })
        };
        assert_eq!(
            errno(&status(
                StatusCode::Failure,
                "ENOTEMPTY: Directory not empty"
            )),
            Errno::ENOTEMPTY
        );
        assert_eq!(
            errno(&status(
                StatusCode::PermissionDenied,
                "EROFS: the share is read-only"
            )),
            Errno::EROFS
        );
        assert_eq!(
            errno(&status(StatusCode::NoSuchFile, "gone")),
            Errno::ENOENT
        );
        assert_eq!(errno(&status(StatusCode::Failure, "odd")), Errno::EIO);
    }
}
