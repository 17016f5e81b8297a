//! A container's filesystem as `docker cp`, `docker export` and `docker diff` see it.
//!
//! Every path the client names is resolved inside the container's root with
//! `openat2(RESOLVE_IN_ROOT)`, so `..` and symlinks (absolute or relative) can never leave it,
//! whatever the container's processes do meanwhile. Objects are then created, opened or removed
//! one component at a time relative to a directory descriptor, with `O_NOFOLLOW`/`O_EXCL`/
//! `AT_SYMLINK_NOFOLLOW`, so a symlink swapped in by a running container is never followed.
//!
//! The root is `/proc/PID/root` for a running container (its own mounts included), or, for a
//! stopped one, an overlay of its layers mounted in a private mount namespace of a dedicated
//! thread: the mount disappears with the thread, even if the operation fails half-way.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{
    fstatat, futimens, major, makedev, minor, mkdirat, mknodat, FileStat, Mode, SFlag,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use serde::Serialize;

/// Errors of archive operations; each knows its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The path does not exist in the container (Docker's text).
    #[error("Could not find the file {path} in container {container}")]
    NotFound {
        /// The path asked for.
        path: String,
        /// The container reference the client used.
        container: String,
    },
    /// `PUT` into something that is not a directory (Docker's text).
    #[error("extraction point is not a directory")]
    NotADirectory {
        /// The path asked for.
        path: String,
    },
    /// An archive entry is unacceptable (escapes the destination, bad link, overwrite refused).
    #[error("{reason}")]
    Invalid {
        /// Why.
        reason: String,
    },
    /// A file system operation failed.
    #[error("cannot access {path} in the container")]
    Io {
        /// The container path concerned.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The container's root could not be made visible.
    #[error("cannot mount the file system of container {id}")]
    Mount {
        /// The container id.
        id: String,
        /// The cause.
        #[source]
        source: Errno,
    },
}

fn io_at(path: &str) -> impl FnOnce(Errno) -> ArchiveError + '_ {
    move |errno| ArchiveError::Io {
        path: path.to_string(),
        source: io::Error::from(errno),
    }
}

/// Where a container's root file system comes from.
#[derive(Debug, Clone)]
pub enum RootSource {
    /// A running container: `/proc/PID/root`.
    Running {
        /// Host PID of its PID 1.
        pid: i32,
    },
    /// A stopped (or any) container: its layers, mounted privately.
    Layers {
        /// The container id (for messages).
        id: String,
        /// Image layers, topmost first.
        lower: Vec<PathBuf>,
        /// The container's upper dir.
        upper: PathBuf,
        /// The overlay work dir (used when writable).
        work: PathBuf,
        /// An empty directory to mount on.
        mountpoint: PathBuf,
        /// Mount read-write (upper + work); otherwise the upper dir is one more read-only layer.
        writable: bool,
        /// The container's binds and volumes, mounted over the root as a start would (what
        /// dockerd's `docker cp` sees in a stopped container); parents first.
        mounts: Vec<ContainerMount>,
    },
}

/// A bind or volume of a stopped container, for [`RootSource::Layers`].
#[derive(Debug, Clone)]
pub struct ContainerMount {
    /// Host path (the bind's source, the volume's directory).
    pub source: PathBuf,
    /// Path in the container.
    pub destination: String,
    /// Writable.
    pub writable: bool,
}

/// Runs `f` with a descriptor of the container's root. For [`RootSource::Layers`] the calling
/// thread's mount namespace is replaced: call this only on a dedicated thread.
pub fn with_root<T>(
    source: &RootSource,
    f: impl FnOnce(BorrowedFd<'_>) -> Result<T, ArchiveError>,
) -> Result<T, ArchiveError> {
    match source {
        RootSource::Running { pid } => {
            let path = format!("/proc/{pid}/root");
            let root = nix::fcntl::open(
                path.as_str(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(io_at("/"))?;
            f(root.as_fd())
        }
        RootSource::Layers {
            id,
            lower,
            upper,
            work,
            mountpoint,
            writable,
            mounts,
        } => {
            let mount_err = |source| ArchiveError::Mount {
                id: id.clone(),
                source,
            };
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(mount_err)?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(mount_err)?;
            let join = |dirs: &[PathBuf]| {
                dirs.iter()
                    .map(|d| d.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(":")
            };
            let (data, flags) = if *writable {
                (
                    format!(
                        "lowerdir={},upperdir={},workdir={}",
                        join(lower),
                        upper.display(),
                        work.display()
                    ),
                    MsFlags::empty(),
                )
            } else {
                let mut all = vec![upper.clone()];
                all.extend(lower.iter().cloned());
                (format!("lowerdir={}", join(&all)), MsFlags::MS_RDONLY)
            };
            // A container's root may create device nodes in its upper dir (CAP_MKNOD is in the
            // default set); `nodev` makes sure that copying from a stopped container can never
            // open one of them as the host's device.
            let flags = flags | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
            mount(
                Some("overlay"),
                mountpoint.as_path(),
                Some("overlay"),
                flags,
                Some(data.as_str()),
            )
            .map_err(mount_err)?;
            let root = nix::fcntl::open(
                mountpoint.as_path(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(io_at("/"))?;
            for m in mounts {
                mount_inside(root.as_fd(), m, *writable).map_err(mount_err)?;
            }
            f(root.as_fd())
        }
    }
}

/// Binds `m` over its destination in the root (resolved with `RESOLVE_IN_ROOT`, the mount made
/// through the descriptor's `/proc/self/fd` path, so no symlink of the container is followed);
/// a destination the image lacks is made in a writable root (as dockerd's `mountVolumes`), left
/// out of a read-only one (the runtime makes it at the first start).
fn mount_inside(root: BorrowedFd<'_>, m: &ContainerMount, create: bool) -> Result<(), Errno> {
    let parts = components(&m.destination);
    let target = match open_in_root(root, &parts, OFlag::O_PATH) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) if create && m.source.is_dir() => {
            for depth in 1..=parts.len() {
                match open_in_root(root, &parts[..depth], OFlag::O_PATH) {
                    Ok(_) => continue,
                    Err(Errno::ENOENT) => {}
                    Err(errno) => return Err(errno),
                }
                let parent = open_in_root(
                    root,
                    &parts[..depth - 1],
                    OFlag::O_PATH | OFlag::O_DIRECTORY,
                )?;
                match mkdirat(
                    parent.as_fd(),
                    parts[depth - 1].as_str(),
                    Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(errno) => return Err(errno),
                }
            }
            open_in_root(root, &parts, OFlag::O_PATH)?
        }
        Err(Errno::ENOENT) => return Ok(()),
        Err(errno) => return Err(errno),
    };
    let fd_path = |fd: &OwnedFd| {
        use std::os::fd::AsRawFd;
        format!("/proc/self/fd/{}", fd.as_raw_fd())
    };
    mount(
        Some(m.source.as_path()),
        fd_path(&target).as_str(),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    if !m.writable {
        // The descriptor names the directory under the new mount; the mount's root is found
        // by resolving the path again.
        let top = open_in_root(root, &parts, OFlag::O_PATH)?;
        mount(
            None::<&str>,
            fd_path(&top).as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )?;
    }
    Ok(())
}

/// `X-Docker-Container-Path-Stat`: what the CLI learns about a path before copying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathStat {
    /// Base name.
    pub name: String,
    /// Size in bytes.
    pub size: i64,
    /// Go's `os.FileMode` bits (type bits high, permissions low).
    pub mode: u32,
    /// Modification time, RFC 3339.
    pub mtime: String,
    /// For a symlink, the absolute path it points to inside the container.
    #[serde(rename = "linkTarget")]
    pub link_target: String,
}

impl PathStat {
    /// The header value: base64 of the JSON.
    pub fn header_value(&self) -> String {
        base64(&serde_json::to_vec(self).unwrap_or_default())
    }
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Go's `os.FileMode` for a stat result.
fn go_mode(st: &FileStat) -> u32 {
    let perm = st.st_mode & 0o777;
    let fmt = st.st_mode & libc::S_IFMT;
    let mut mode = perm;
    mode |= match fmt {
        libc::S_IFDIR => 1 << 31,
        libc::S_IFLNK => 1 << 27,
        libc::S_IFBLK => 1 << 26,
        libc::S_IFIFO => 1 << 25,
        libc::S_IFSOCK => 1 << 24,
        libc::S_IFCHR => (1 << 26) | (1 << 21),
        _ => 0,
    };
    if st.st_mode & libc::S_ISUID != 0 {
        mode |= 1 << 23;
    }
    if st.st_mode & libc::S_ISGID != 0 {
        mode |= 1 << 22;
    }
    if st.st_mode & libc::S_ISVTX != 0 {
        mode |= 1 << 20;
    }
    mode
}

/// Splits a container path into clean components: `.` dropped, `..` popped (never above `/`).
pub fn components(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p.to_string()),
        }
    }
    out
}

fn join_components(parts: &[String]) -> String {
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

/// Opens `path` (relative to the container root) with every component resolved inside it.
fn open_in_root(root: BorrowedFd<'_>, parts: &[String], flags: OFlag) -> Result<OwnedFd, Errno> {
    let rel = join_components(parts);
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root, rel.as_str(), how)
}

fn timespec(secs: i64) -> TimeSpec {
    TimeSpec::new(secs, 0)
}

/// The parent directory and base name of a path, both resolved in the root; `None` as name
/// for the root itself.
fn parent_and_name(
    root: BorrowedFd<'_>,
    path: &str,
    reference: &str,
) -> Result<(OwnedFd, Option<String>), ArchiveError> {
    let mut parts = components(path);
    let name = parts.pop();
    let parent =
        open_in_root(root, &parts, OFlag::O_PATH | OFlag::O_DIRECTORY).map_err(|e| match e {
            Errno::ENOENT | Errno::ENOTDIR => ArchiveError::NotFound {
                path: path.to_string(),
                container: reference.to_string(),
            },
            e => io_at(path)(e),
        })?;
    Ok((parent, name))
}

fn stat_at(dir: BorrowedFd<'_>, name: Option<&str>) -> Result<FileStat, Errno> {
    match name {
        Some(name) => fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW),
        None => fstatat(dir, "", AtFlags::AT_EMPTY_PATH),
    }
}

/// Docker's path resolution for stat and GET: intermediate symlinks are followed (inside the
/// root), the last component is not, unless the path ends with `/` or `/.`.
fn resolve_for_read(
    root: BorrowedFd<'_>,
    path: &str,
    reference: &str,
) -> Result<(OwnedFd, Option<String>, FileStat), ArchiveError> {
    let not_found = || ArchiveError::NotFound {
        path: path.to_string(),
        container: reference.to_string(),
    };
    let follow = path.ends_with('/') || path.ends_with("/.");
    if follow {
        let parts = components(path);
        // Inside a kernel view (not the mount point itself): absent from dockerd's view.
        if let Some((_, parents)) = parts.split_last() {
            if open_in_root(root, parents, OFlag::O_PATH).is_ok_and(|p| is_kernel_view(p.as_fd())) {
                return Err(not_found());
            }
        }
        let fd = open_in_root(root, &parts, OFlag::O_PATH).map_err(|e| match e {
            Errno::ENOENT | Errno::ENOTDIR => not_found(),
            e => io_at(path)(e),
        })?;
        let st = stat_at(fd.as_fd(), None).map_err(io_at(path))?;
        return Ok((fd, None, st));
    }
    let (parent, name) = parent_and_name(root, path, reference)?;
    if name.is_some() && is_kernel_view(parent.as_fd()) {
        return Err(not_found());
    }
    let st = stat_at(parent.as_fd(), name.as_deref()).map_err(|e| match e {
        Errno::ENOENT | Errno::ENOTDIR => not_found(),
        e => io_at(path)(e),
    })?;
    Ok((parent, name, st))
}

/// `HEAD /containers/{id}/archive`.
pub fn stat_path(
    root: BorrowedFd<'_>,
    path: &str,
    reference: &str,
) -> Result<PathStat, ArchiveError> {
    let (parent, name, st) = resolve_for_read(root, path, reference)?;
    let mut link_target = String::new();
    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        if let Some(name) = &name {
            let target =
                nix::fcntl::readlinkat(parent.as_fd(), name.as_str()).map_err(io_at(path))?;
            let target = target.to_string_lossy().into_owned();
            let mut parts = components(path);
            parts.pop();
            let joined = if target.starts_with('/') {
                target
            } else {
                format!("/{}/{}", parts.join("/"), target)
            };
            link_target = format!("/{}", components(&joined).join("/"));
        }
    }
    let base = components(path).pop().unwrap_or_else(|| "/".to_string());
    Ok(PathStat {
        name: base,
        size: st.st_size,
        mode: go_mode(&st),
        mtime: chrono::DateTime::from_timestamp(st.st_mtime, 0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        link_target,
    })
}

/// Writes a tar of `path` (named by its base name, as Docker rebases it) to `out`.
pub fn write_archive(
    root: BorrowedFd<'_>,
    path: &str,
    reference: &str,
    out: impl Write,
) -> Result<(), ArchiveError> {
    let (dir, name, st) = resolve_for_read(root, path, reference)?;
    let base = if path.ends_with("/.") {
        ".".to_string()
    } else {
        components(path).pop().unwrap_or_else(|| ".".to_string())
    };
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    append(&mut builder, dir.as_fd(), name.as_deref(), &st, &base)?;
    builder.into_inner().map_err(|source| ArchiveError::Io {
        path: path.to_string(),
        source,
    })?;
    Ok(())
}

/// Writes a tar of the whole root file system (`docker export`): entries without `./`.
pub fn export(root: BorrowedFd<'_>, out: impl Write) -> Result<(), ArchiveError> {
    let st = stat_at(root, None).map_err(io_at("/"))?;
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    append_children(&mut builder, root, None, &st, "")?;
    builder.into_inner().map_err(|source| ArchiveError::Io {
        path: "/".into(),
        source,
    })?;
    Ok(())
}

fn header_for(st: &FileStat, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(st.st_mode & 0o7777);
    header.set_uid(u64::from(st.st_uid));
    header.set_gid(u64::from(st.st_gid));
    header.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    header.set_size(0);
    header
}

fn tar_io(path: &str) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_string(),
        source,
    }
}

/// Appends one object (`name` in `dir`, or `dir` itself) and, for a directory, its contents.
fn append<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: BorrowedFd<'_>,
    name: Option<&str>,
    st: &FileStat,
    tar_name: &str,
) -> Result<(), ArchiveError> {
    let fmt = st.st_mode & libc::S_IFMT;
    match fmt {
        libc::S_IFDIR => {
            let mut header = header_for(st, tar::EntryType::Directory);
            let dir_name = format!("{}/", tar_name.trim_end_matches('/'));
            builder
                .append_data(&mut header, &dir_name, io::empty())
                .map_err(tar_io(tar_name))?;
            append_children(builder, dir, name, st, tar_name)?;
        }
        libc::S_IFREG => {
            let Some(name) = name else {
                return Ok(());
            };
            let file = openat(
                dir,
                name,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(io_at(tar_name))?;
            let size = u64::try_from(st.st_size).unwrap_or(0);
            let mut header = header_for(st, tar::EntryType::Regular);
            header.set_size(size);
            // A file that shrinks while being read is padded, one that grows is cut: the
            // header's size must stay true.
            let reader = std::fs::File::from(file)
                .take(size)
                .chain(io::repeat(0))
                .take(size);
            builder
                .append_data(&mut header, tar_name, reader)
                .map_err(tar_io(tar_name))?;
        }
        libc::S_IFLNK => {
            let Some(name) = name else {
                return Ok(());
            };
            let target = nix::fcntl::readlinkat(dir, name).map_err(io_at(tar_name))?;
            let mut header = header_for(st, tar::EntryType::Symlink);
            builder
                .append_link(&mut header, tar_name, Path::new(&target))
                .map_err(tar_io(tar_name))?;
        }
        libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO => {
            let kind = match fmt {
                libc::S_IFCHR => tar::EntryType::Char,
                libc::S_IFBLK => tar::EntryType::Block,
                _ => tar::EntryType::Fifo,
            };
            let mut header = header_for(st, kind);
            if fmt != libc::S_IFIFO {
                let major = u32::try_from(major(st.st_rdev)).unwrap_or(0);
                let minor = u32::try_from(minor(st.st_rdev)).unwrap_or(0);
                header
                    .set_device_major(major)
                    .and_then(|()| header.set_device_minor(minor))
                    .map_err(tar_io(tar_name))?;
            }
            builder
                .append_data(&mut header, tar_name, io::empty())
                .map_err(tar_io(tar_name))?;
        }
        // Sockets are not archived (as Docker).
        _ => {}
    }
    Ok(())
}

fn append_children<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: BorrowedFd<'_>,
    name: Option<&str>,
    _st: &FileStat,
    tar_name: &str,
) -> Result<(), ArchiveError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(dir, name.unwrap_or("."), flags, Mode::empty()).map_err(io_at(tar_name))?;
    if is_kernel_view(fd.as_fd()) {
        return Ok(());
    }
    let listing = fd.try_clone().map_err(tar_io(tar_name))?;
    let mut entries: Vec<OsString> = nix::dir::Dir::from_fd(listing)
        .map_err(io_at(tar_name))?
        .into_iter()
        .filter_map(Result::ok)
        .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
        .filter(|n| n != "." && n != "..")
        .collect();
    entries.sort();
    for child in entries {
        let child = child.to_string_lossy().into_owned();
        let child_tar = if tar_name.is_empty() {
            child.clone()
        } else {
            format!("{}/{child}", tar_name.trim_end_matches('/'))
        };
        // Entries removed meanwhile (a running container) are skipped.
        let Ok(st) = fstatat(fd.as_fd(), child.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        append(builder, fd.as_fd(), Some(&child), &st, &child_tar)?;
    }
    Ok(())
}

/// `mqueue`'s magic number (nix names no constant for it).
const MQUEUE_MAGIC: i64 = 0x1980_0202;

/// Whether a directory is the root of a kernel file system or a tmpfs: the mounts the runtime
/// makes inside a running container (`/proc`, `/sys`, `/dev`, `--tmpfs`…). dockerd archives a
/// container from a view of its root file system and volumes only (daemon/containerfs_linux.go
/// `openContainerFS`), where these are empty mount-point directories; walking them here would
/// read the whole of `/proc` and `/sys` (files like `/proc/kcore` included).
fn is_kernel_view(dir: BorrowedFd<'_>) -> bool {
    use nix::sys::statfs::{
        fstatfs, FsType, BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC, DEBUGFS_MAGIC,
        DEVPTS_SUPER_MAGIC, HUGETLBFS_MAGIC, PROC_SUPER_MAGIC, SECURITYFS_MAGIC, SYSFS_MAGIC,
        TMPFS_MAGIC, TRACEFS_MAGIC,
    };
    let Ok(fs) = fstatfs(dir) else {
        return false;
    };
    let kind = fs.filesystem_type();
    [
        PROC_SUPER_MAGIC,
        SYSFS_MAGIC,
        TMPFS_MAGIC,
        DEVPTS_SUPER_MAGIC,
        CGROUP_SUPER_MAGIC,
        CGROUP2_SUPER_MAGIC,
        SECURITYFS_MAGIC,
        DEBUGFS_MAGIC,
        TRACEFS_MAGIC,
        BPF_FS_MAGIC,
        HUGETLBFS_MAGIC,
        FsType(MQUEUE_MAGIC as _),
    ]
    .contains(&kind)
}

/// Options of `PUT /containers/{id}/archive`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExtractOptions {
    /// Refuse to replace a directory with a non-directory or the reverse.
    pub no_overwrite_dir_non_dir: bool,
    /// `docker cp -a`: everything belongs to the container's user (when it has one).
    pub copy_uid_gid: bool,
    /// The owner every extracted object gets (the container's user, with `-a`); `None`
    /// keeps the archive's uid and gid, as dockerd's default tar options do.
    pub owner: Option<(u32, u32)>,
    /// The container was created with `--read-only`: refuse, once the destination is known
    /// to be a directory (dockerd's `checkWritablePath`; there are no volumes to write to).
    pub read_only_root: bool,
}

/// Extracts a tar into the directory `dest` of the container.
pub fn extract(
    root: BorrowedFd<'_>,
    dest: &str,
    reference: &str,
    input: impl Read,
    options: ExtractOptions,
) -> Result<(), ArchiveError> {
    let dest_parts = components(dest);
    let dest_fd = open_in_root(root, &dest_parts, OFlag::O_PATH).map_err(|e| match e {
        Errno::ENOENT => ArchiveError::NotFound {
            path: dest.to_string(),
            container: reference.to_string(),
        },
        Errno::ENOTDIR => ArchiveError::NotADirectory {
            path: dest.to_string(),
        },
        e => io_at(dest)(e),
    })?;
    let st = stat_at(dest_fd.as_fd(), None).map_err(io_at(dest))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(ArchiveError::NotADirectory {
            path: dest.to_string(),
        });
    }
    if options.read_only_root {
        return Err(ArchiveError::Invalid {
            reason: "container rootfs is marked read-only".into(),
        });
    }
    let mut archive = tar::Archive::new(input);
    let mut dir_times: Vec<(Vec<String>, i64)> = Vec::new();
    let entries = archive.entries().map_err(tar_io(dest))?;
    for entry in entries {
        let mut entry = entry.map_err(tar_io(dest))?;
        let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let rel = entry_components(&raw_name, dest)?;
        let Some((name, parents)) = rel.split_last() else {
            continue;
        };
        let mut full: Vec<String> = dest_parts.clone();
        full.extend(parents.iter().cloned());
        let parent = make_dirs(root, &full, &raw_name)?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        let display = format!("/{}/{}", full.join("/"), name);
        let existing = fstatat(parent.as_fd(), name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW).ok();
        if let Some(existing) = existing {
            let existing_dir = existing.st_mode & libc::S_IFMT == libc::S_IFDIR;
            let new_dir = kind == tar::EntryType::Directory;
            if options.no_overwrite_dir_non_dir && existing_dir && !new_dir {
                return Err(ArchiveError::Invalid {
                    reason: format!(
                        "cannot overwrite directory {display:?} with non-directory {raw_name:?}"
                    ),
                });
            }
            if options.no_overwrite_dir_non_dir && !existing_dir && new_dir {
                return Err(ArchiveError::Invalid {
                    reason: format!(
                        "cannot overwrite non-directory {display:?} with directory {raw_name:?}"
                    ),
                });
            }
            if !(existing_dir && new_dir) {
                remove_all_at(parent.as_fd(), name, &display)?;
            }
        }
        let mode = Mode::from_bits_truncate(header.mode().unwrap_or(0o644) & 0o7777);
        let mtime = i64::try_from(header.mtime().unwrap_or(0)).unwrap_or(0);
        let (uid, gid) = options.owner.unwrap_or_else(|| {
            (
                u32::try_from(header.uid().unwrap_or(0)).unwrap_or(0),
                u32::try_from(header.gid().unwrap_or(0)).unwrap_or(0),
            )
        });
        let owner = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
        // For entries that cannot be opened to chown (symlinks, nodes): by name, never following.
        let chown_by_name = || {
            fchownat(
                parent.as_fd(),
                name.as_str(),
                owner.0,
                owner.1,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(io_at(&display))
        };
        match kind {
            tar::EntryType::Directory => {
                match mkdirat(parent.as_fd(), name.as_str(), mode) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(io_at(&display)(e)),
                }
                let fd = openat(
                    parent.as_fd(),
                    name.as_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io_at(&display))?;
                nix::sys::stat::fchmod(&fd, mode).map_err(io_at(&display))?;
                nix::unistd::fchown(&fd, owner.0, owner.1).map_err(io_at(&display))?;
                let mut path = full.clone();
                path.push(name.clone());
                dir_times.push((path, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let fd = openat(
                    parent.as_fd(),
                    name.as_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    mode,
                )
                .map_err(io_at(&display))?;
                let mut file = std::fs::File::from(fd);
                io::copy(&mut entry, &mut file).map_err(tar_io(&display))?;
                nix::sys::stat::fchmod(&file, mode).map_err(io_at(&display))?;
                nix::unistd::fchown(&file, owner.0, owner.1).map_err(io_at(&display))?;
                futimens(&file, &timespec(mtime), &timespec(mtime)).map_err(io_at(&display))?;
            }
            tar::EntryType::Symlink => {
                let target = header
                    .link_name_bytes()
                    .map(|b| OsStr::from_bytes(&b).to_os_string())
                    .unwrap_or_default();
                symlinkat(target.as_os_str(), parent.as_fd(), name.as_str())
                    .map_err(io_at(&display))?;
                chown_by_name()?;
            }
            tar::EntryType::Link => {
                let target = header
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let mut target_parts = dest_parts.clone();
                target_parts.extend(entry_components(&target, dest)?);
                let source = open_in_root(root, &target_parts, OFlag::O_PATH | OFlag::O_NOFOLLOW)
                    .map_err(|_| ArchiveError::Invalid {
                    reason: format!("invalid hardlink {raw_name:?} -> {target:?}"),
                })?;
                let st = stat_at(source.as_fd(), None).map_err(io_at(&display))?;
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    return Err(ArchiveError::Invalid {
                        reason: format!("invalid hardlink {raw_name:?} -> {target:?}"),
                    });
                }
                linkat(
                    source.as_fd(),
                    "",
                    parent.as_fd(),
                    name.as_str(),
                    AtFlags::AT_EMPTY_PATH,
                )
                .map_err(io_at(&display))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let kind_flag = match kind {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let dev = makedev(
                    u64::from(header.device_major().ok().flatten().unwrap_or(0)),
                    u64::from(header.device_minor().ok().flatten().unwrap_or(0)),
                );
                mknodat(parent.as_fd(), name.as_str(), kind_flag, mode, dev)
                    .map_err(io_at(&display))?;
                chown_by_name()?;
            }
            // Global pax headers and other metadata entries carry nothing to create.
            _ => {}
        }
    }
    // Directory times last: creating their children changed them.
    for (parts, mtime) in dir_times.iter().rev() {
        if let Ok(fd) = open_in_root(
            root,
            parts,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
        ) {
            let _ = futimens(&fd, &timespec(*mtime), &timespec(*mtime));
        }
    }
    Ok(())
}

/// The clean components of an archive entry name; `..` reaching above the destination is
/// refused as moby's untar does.
fn entry_components(name: &str, dest: &str) -> Result<Vec<String>, ArchiveError> {
    let mut out: Vec<String> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(ArchiveError::Invalid {
                        reason: format!("{name:?} is outside of {dest:?}"),
                    });
                }
            }
            p => out.push(p.to_string()),
        }
    }
    Ok(out)
}

/// Opens the directory `parts` (from the root), creating missing components as 0755 dirs.
fn make_dirs(root: BorrowedFd<'_>, parts: &[String], entry: &str) -> Result<OwnedFd, ArchiveError> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    match open_in_root(root, parts, flags) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(Errno::ENOTDIR) => {
            return Err(ArchiveError::Invalid {
                reason: format!("cannot extract {entry:?}: a parent is not a directory"),
            })
        }
        Err(e) => return Err(io_at(entry)(e)),
    }
    let mut fd = open_in_root(root, &[], flags).map_err(io_at(entry))?;
    for (i, part) in parts.iter().enumerate() {
        match mkdirat(fd.as_fd(), part.as_str(), Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io_at(entry)(e)),
        }
        // Resolved again from the root, so a symlink met here stays scoped to the container.
        fd = open_in_root(root, &parts[..=i], flags).map_err(|e| match e {
            Errno::ENOTDIR => ArchiveError::Invalid {
                reason: format!("cannot extract {entry:?}: a parent is not a directory"),
            },
            e => io_at(entry)(e),
        })?;
    }
    Ok(fd)
}

/// Removes `name` in `dir`, recursively, never following symlinks.
fn remove_all_at(dir: BorrowedFd<'_>, name: &str, display: &str) -> Result<(), ArchiveError> {
    let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(io_at(display)(e)),
    };
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        let fd = openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_at(display))?;
        let listing = fd.try_clone().map_err(tar_io(display))?;
        let children: Vec<String> = nix::dir::Dir::from_fd(listing)
            .map_err(io_at(display))?
            .into_iter()
            .filter_map(Result::ok)
            .map(|e| String::from_utf8_lossy(e.file_name().to_bytes()).into_owned())
            .filter(|n| n != "." && n != "..")
            .collect();
        for child in children {
            remove_all_at(fd.as_fd(), &child, display)?;
        }
        unlinkat(dir, name, UnlinkatFlags::RemoveDir).map_err(io_at(display))?;
    } else {
        unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(io_at(display))?;
    }
    Ok(())
}

/// One line of `docker diff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Change {
    /// Absolute path in the container.
    pub path: String,
    /// 0 modified, 1 added, 2 deleted.
    pub kind: u8,
}

/// Paths the runtime creates as mount points or the engine bind-mounts; Docker keeps them in
/// its init layer, so they never show in `docker diff`.
const INIT_PATHS: &[&str] = &[
    "/etc/hostname",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/.dockerenv",
    "/dev",
    "/proc",
    "/sys",
    "/etc/mtab",
];

/// The changes recorded in the container's upper dir relative to its layers.
pub fn changes(upper: &Path, lower: &[PathBuf]) -> Result<Vec<Change>, ArchiveError> {
    let mut out = Vec::new();
    walk_changes(upper, lower, "", false, &mut out)?;
    // A directory that only changed because of init paths under it is not a change either.
    let listed: Vec<String> = out.iter().map(|c| c.path.clone()).collect();
    out.retain(|c| {
        c.kind != 0
            || !INIT_PATHS
                .iter()
                .any(|p| p.starts_with(&format!("{}/", c.path)))
            || listed
                .iter()
                .any(|p| p.starts_with(&format!("{}/", c.path)) && !is_init_path(p))
    });
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn is_init_path(path: &str) -> bool {
    INIT_PATHS
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

fn walk_changes(
    upper: &Path,
    lower: &[PathBuf],
    rel: &str,
    added_parent: bool,
    out: &mut Vec<Change>,
) -> Result<(), ArchiveError> {
    let dir = upper.join(rel.trim_start_matches('/'));
    let read = std::fs::read_dir(&dir).map_err(|source| ArchiveError::Io {
        path: format!("{rel}/"),
        source,
    })?;
    let mut names: Vec<String> = read
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let path = format!("{rel}/{name}");
        if is_init_path(&path) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(upper.join(path.trim_start_matches('/'))) else {
            continue;
        };
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        if meta.file_type().is_char_device() && meta.rdev() == 0 {
            out.push(Change { path, kind: 2 });
            continue;
        }
        let in_lower = !added_parent
            && lower
                .iter()
                .any(|l| std::fs::symlink_metadata(l.join(path.trim_start_matches('/'))).is_ok());
        out.push(Change {
            path: path.clone(),
            kind: if in_lower { 0 } else { 1 },
        });
        if meta.is_dir() {
            walk_changes(upper, lower, &path, !in_lower, out)?;
        }
    }
    Ok(())
}

/// Bytes of the non-directory files under `dir` (hard links counted once): Docker's SizeRw.
pub fn dir_size(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(read) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in read.filter_map(Result::ok) {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.nlink() <= 1 || seen.insert(meta.ino()) {
                total += meta.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_with_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn entry_names_cannot_climb_above_the_destination() {
        assert_eq!(
            entry_components("./a/../b/c", "/tmp").unwrap(),
            vec!["b".to_string(), "c".to_string()]
        );
        let err = entry_components("../../etc/passwd", "/tmp").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#""../../etc/passwd" is outside of "/tmp""#
        );
    }

    fn tar_with(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, link, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            // Raw names: the tar crate refuses `..` in set_path.
            let bytes = name.as_bytes();
            header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            if !link.is_empty() {
                let l = link.as_bytes();
                header.as_old_mut().linkname[..l.len()].copy_from_slice(l);
            }
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn root_of(dir: &Path) -> OwnedFd {
        nix::fcntl::open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap()
    }

    #[test]
    fn symlinks_in_the_root_never_lead_outside_it() {
        let outside = tempfile::tempdir().unwrap();
        let root_dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(root_dir.path().join("tmp")).unwrap();
        let root = root_of(root_dir.path());
        let escape = outside.path().to_string_lossy().into_owned();
        // The target exists inside the root too: followed on the host it would be written to.
        std::fs::create_dir_all(root_dir.path().join(escape.trim_start_matches('/'))).unwrap();
        let archive = tar_with(&[
            ("link", tar::EntryType::Symlink, &escape, b""),
            ("link/pwned", tar::EntryType::Regular, "", b"x"),
            ("up", tar::EntryType::Symlink, "../../../..", b""),
            ("up/pwned2", tar::EntryType::Regular, "", b"y"),
        ]);
        extract(
            root.as_fd(),
            "/tmp",
            "c",
            &archive[..],
            ExtractOptions::default(),
        )
        .unwrap();
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // The writes landed inside the root, where the links resolve when scoped to it.
        let inside = root_dir
            .path()
            .join(escape.trim_start_matches('/'))
            .join("pwned");
        assert_eq!(std::fs::read(inside).unwrap(), b"x");
        assert_eq!(std::fs::read(root_dir.path().join("pwned2")).unwrap(), b"y");

        let climbing = tar_with(&[("../../escape", tar::EntryType::Regular, "", b"z")]);
        let err = extract(
            root.as_fd(),
            "/tmp",
            "c",
            &climbing[..],
            ExtractOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ArchiveError::Invalid { .. }), "{err}");
    }

    #[test]
    fn archives_are_named_by_base_name_and_stat_reports_go_modes() {
        let root_dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root_dir.path().join("etc/sub")).unwrap();
        std::fs::write(root_dir.path().join("etc/sub/file"), b"hello").unwrap();
        std::os::unix::fs::symlink("sub/file", root_dir.path().join("etc/link")).unwrap();
        let root = root_of(root_dir.path());
        let mut out = Vec::new();
        write_archive(root.as_fd(), "/etc", "c", &mut out).unwrap();
        let mut archive = tar::Archive::new(&out[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["etc/", "etc/link", "etc/sub/", "etc/sub/file"]);
        let stat = stat_path(root.as_fd(), "/etc/link", "c").unwrap();
        assert_eq!(stat.link_target, "/etc/sub/file");
        assert_eq!(stat.mode & (1 << 27), 1 << 27);
        let dir = stat_path(root.as_fd(), "/etc", "c").unwrap();
        assert_eq!(dir.mode & (1 << 31), 1 << 31);
        let missing = stat_path(root.as_fd(), "/nope", "abc").unwrap_err();
        assert_eq!(
            missing.to_string(),
            "Could not find the file /nope in container abc"
        );
    }
}
