//! The runtime never runs from the host's file while any of it is inside a container
//! (CVE-2019-5736).
//!
//! Part of the runtime lives in a container's namespaces: the `--init` PID 1 for the container's
//! whole life, and every process between `fork` and the user's `execve` (the `docker exec`
//! helper, once it has joined the PID namespace, is visible in the container's `/proc`). A
//! container that can open `/proc/PID/exe` of such a process reaches the runtime's executable:
//! were that the host's `rmachine-runtime`, it could `chmod`/`chown`/`setxattr` it (a setuid
//! runtime owned by the container's uid) or rewrite it once it is no longer busy. Two layers,
//! as runc has them:
//!
//! - the monitor makes itself non-dumpable before it joins or creates a namespace
//!   (`PR_SET_DUMPABLE` 0, inherited by its children until they `execve` the user's program):
//!   `/proc/PID/exe`, `fd/`, `environ`, `mem` of the runtime then need `CAP_SYS_PTRACE`, which a
//!   default container does not have;
//! - `run` and `exec` first re-execute the runtime from a sealed executable ([`ensure_sealed`])
//!   so even a container holding `CAP_SYS_PTRACE` only reaches something immutable: the binary
//!   seen through a private, detached, read-only overlayfs mount whose lower layers are the
//!   binary's directory and the container's state directory (read-only superblock: no mode,
//!   owner, xattr or content change reaches the file below; nothing to copy, so it costs one
//!   mount and one `execve`), or, when overlayfs cannot be mounted, a copy of the binary in a
//!   memfd sealed against any change of its contents (`F_SEAL_SEAL|SHRINK|GROW|WRITE`; its
//!   metadata belongs to that one process).
//!
//! The engine usually starts the runtime from such a view already ([`overlay_view`], one per
//! engine), so the runtime finds itself sealed and the re-exec costs nothing.

use std::ffi::{CStr, CString, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::syscall::{Errno, SysError};

/// Set in the environment of the re-executed runtime: it must then find itself sealed, and
/// never re-execute again.
pub const SEALED_ENV: &str = "_RMACHINE_RUNTIME_SEALED";

const SELF_EXE: &str = "/proc/self/exe";

/// A failure to run the runtime from a sealed executable.
#[derive(Debug, thiserror::Error)]
pub enum ExeSealError {
    /// The runtime's own executable could not be read.
    #[error("open the runtime's executable {}", path.display())]
    OpenSelf {
        /// The path opened.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Neither a read-only overlay nor a sealed memfd could hold the runtime's executable.
    #[error("make a sealed copy of the runtime's executable ({what})")]
    Seal {
        /// The step that failed.
        what: &'static str,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// Copying the executable into the memfd failed or came out short.
    #[error("copy the runtime's executable into a memfd")]
    Copy {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `execveat` of the sealed executable failed.
    #[error("re-execute the runtime from its sealed copy")]
    Exec {
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// The re-executed runtime still runs from an unsealed file.
    #[error("the runtime was re-executed from a sealed copy but /proc/self/exe is not sealed")]
    NotSealed,
}

fn seal_error(what: &'static str) -> impl FnOnce(Errno) -> ExeSealError {
    move |errno| ExeSealError::Seal {
        what,
        source: errno.into(),
    }
}

/// Makes sure the process runs from a sealed executable: returns at once if it does, otherwise
/// re-executes `args` (the whole argv, with the same environment and descriptors) from one
/// and never returns. `scratch` is a directory of the container's own (its state directory):
/// the overlay's second lower layer, never written to.
///
/// MUST be called before the process creates a thread or takes ownership of an inherited
/// descriptor that is not close-on-exec yet (the sync pipe): they must survive the `execve`.
pub fn ensure_sealed(args: &[OsString], scratch: &Path) -> Result<(), ExeSealError> {
    if is_sealed()? {
        return Ok(());
    }
    if std::env::var_os(SEALED_ENV).is_some() {
        return Err(ExeSealError::NotSealed);
    }
    let exe = sealed_exe(scratch)?;
    Err(reexec(&exe, args))
}

/// Whether this process's executable is one [`sealed_exe`] makes: a memfd carrying the
/// content seals, or a file on a read-only overlayfs mount (a binary installed on some other
/// read-only overlay counts too: through that mount nothing can change it either).
pub fn is_sealed() -> Result<bool, ExeSealError> {
    let exe = File::open(SELF_EXE).map_err(|source| ExeSealError::OpenSelf {
        path: SELF_EXE.into(),
        source,
    })?;
    Ok(is_sealed_file(exe.as_fd()))
}

fn is_sealed_file(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    // SAFETY: F_GET_SEALS only reads the open file's seals.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals >= 0 && seals & MEMFD_SEALS == MEMFD_SEALS {
        return true;
    }
    match nix::sys::statfs::fstatfs(fd) {
        Ok(fs) => {
            fs.filesystem_type() == nix::sys::statfs::OVERLAYFS_SUPER_MAGIC
                && nix::sys::statvfs::fstatvfs(fd)
                    .is_ok_and(|vfs| vfs.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        }
        Err(_) => false,
    }
}

/// A descriptor of an immutable view of the runtime's executable, to `execveat`: the overlay
/// when the kernel and the layout allow it ([`overlay_exe`]), the sealed memfd copy otherwise
/// ([`memfd_exe`]).
pub fn sealed_exe(scratch: &Path) -> Result<OwnedFd, ExeSealError> {
    // The runtime has no log of its own (its stderr is the container's): a failed overlay
    // only shows as the cost of the copy.
    overlay_exe(scratch).or_else(|_| memfd_exe())
}

const MEMFD_SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
// From linux/mount.h and linux/fcntl.h / linux/memfd.h; libc lacks them on some targets.
const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
const MOUNT_ATTR_RDONLY: libc::c_uint = 0x1;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
const F_SEAL_EXEC: libc::c_int = 0x20;
const MFD_EXEC: libc::c_uint = 0x10;

fn syscall_fd(ret: libc::c_long) -> Result<OwnedFd, Errno> {
    if ret < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just returned this descriptor to this process; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as libc::c_int) })
}

fn fsconfig(
    fs: &OwnedFd,
    cmd: libc::c_uint,
    key: Option<&CStr>,
    value: Option<&CStr>,
) -> Result<(), Errno> {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: `fs` is an fs context descriptor; key and value are NUL-terminated strings that
    // outlive the call (or null where the command takes none).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            cmd,
            ptr(key),
            ptr(value),
            0 as libc::c_int,
        )
    };
    if ret < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// `\` and `:` separate overlay layers; escape them in a layer's path.
fn escape_layer(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        if b == b'\\' || b == b':' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// An `O_PATH` descriptor of the executable through a detached overlayfs with only lower
/// layers (read-only by construction, and mounted read-only, nosuid, nodev): the binary's
/// directory on top, so nothing in `scratch` can stand in for it. Overlayfs refuses a lower
/// layer alone and layers nested in one another (`scratch` inside the binary's directory, on
/// the same filesystem): [`sealed_exe`] then falls back to [`memfd_exe`]. Needs
/// `CAP_SYS_ADMIN`.
pub fn overlay_exe(scratch: &Path) -> Result<OwnedFd, ExeSealError> {
    let path = std::fs::read_link(SELF_EXE).map_err(|source| ExeSealError::OpenSelf {
        path: SELF_EXE.into(),
        source,
    })?;
    overlay_of(&path, scratch)
}

/// [`overlay_exe`] for the executable `binary` (symlinks followed): how the engine makes one
/// view of the runtime for every runtime it starts, which then finds itself sealed and skips
/// its own mount and re-exec.
pub fn overlay_view(binary: &Path, scratch: &Path) -> Result<OwnedFd, ExeSealError> {
    let path = std::fs::canonicalize(binary).map_err(|source| ExeSealError::OpenSelf {
        path: binary.to_path_buf(),
        source,
    })?;
    overlay_of(&path, scratch)
}

fn overlay_of(path: &Path, scratch: &Path) -> Result<OwnedFd, ExeSealError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(seal_error("executable path")(Errno::EINVAL));
    };
    if nested(dir, scratch) {
        return Err(seal_error("overlay layers nested in one another")(
            Errno::ELOOP,
        ));
    }
    let mut lower = escape_layer(dir);
    lower.push(b':');
    lower.extend(escape_layer(scratch));
    let lower = CString::new(lower).map_err(|_| seal_error("overlay lowerdir")(Errno::EINVAL))?;
    let name =
        CString::new(name.as_bytes()).map_err(|_| seal_error("executable name")(Errno::EINVAL))?;
    // SAFETY: the name is a NUL-terminated string; fsopen returns a new descriptor or -1.
    let fs =
        syscall_fd(unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), FSOPEN_CLOEXEC) })
            .map_err(seal_error("fsopen overlay"))?;
    fsconfig(&fs, FSCONFIG_SET_STRING, Some(c"lowerdir"), Some(&lower))
        .map_err(seal_error("overlay lowerdir"))?;
    // Inode numbers do not matter here; without this, layers on two filesystems log a warning.
    let _ = fsconfig(&fs, FSCONFIG_SET_STRING, Some(c"xino"), Some(c"off"));
    fsconfig(&fs, FSCONFIG_CMD_CREATE, None, None).map_err(seal_error("create overlay"))?;
    // SAFETY: `fs` is a configured fs context; fsmount returns a new mount descriptor or -1.
    let mnt = syscall_fd(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        )
    })
    .map_err(seal_error("fsmount overlay"))?;
    // The mount is never attached anywhere: this descriptor (then the process's exe) is the
    // only way to it, and it goes away with them.
    nix::fcntl::openat(
        mnt.as_fd(),
        name.as_c_str(),
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(seal_error("open the executable in the overlay"))
}

/// Whether overlayfs would refuse `a` and `b` as layers for being nested in one another on one
/// filesystem: it would also say so in the kernel log (the guest's console) on every run.
fn nested(a: &Path, b: &Path) -> bool {
    let (Ok(a), Ok(b)) = (std::fs::canonicalize(a), std::fs::canonicalize(b)) else {
        return false;
    };
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    (a.starts_with(&b) || b.starts_with(&a)) && dev(&a).is_some() && dev(&a) == dev(&b)
}

/// A copy of the executable in a memfd sealed against writes, growth and shrinking (mode
/// 0511; its metadata is this copy's alone).
pub fn memfd_exe() -> Result<OwnedFd, ExeSealError> {
    let create = |flags: libc::c_uint| {
        // SAFETY: the name is a NUL-terminated string; memfd_create returns a new descriptor.
        let fd = unsafe { libc::memfd_create(c"rmachine-runtime".as_ptr(), flags) };
        syscall_fd(fd as libc::c_long)
    };
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // MFD_EXEC (6.3+) asks for an executable memfd where vm.memfd_noexec would refuse one;
    // older kernels reject the flag and make memfds executable anyway.
    let memfd = match create(base | MFD_EXEC) {
        Err(Errno::EINVAL) => create(base),
        other => other,
    }
    .map_err(seal_error("memfd_create"))?;
    let mut src = File::open(SELF_EXE).map_err(|source| ExeSealError::OpenSelf {
        path: SELF_EXE.into(),
        source,
    })?;
    let size = src
        .metadata()
        .map_err(|source| ExeSealError::Copy { source })?
        .len();
    let mut dst = File::from(memfd);
    let copied =
        std::io::copy(&mut src, &mut dst).map_err(|source| ExeSealError::Copy { source })?;
    if copied != size {
        return Err(ExeSealError::Copy {
            source: std::io::Error::other(format!("copied {copied} of {size} bytes")),
        });
    }
    nix::sys::stat::fchmod(&dst, nix::sys::stat::Mode::from_bits_truncate(0o511))
        .map_err(seal_error("chmod the memfd"))?;
    // SAFETY: F_ADD_SEALS only changes the memfd's seals. F_SEAL_EXEC (6.3+) is optional.
    unsafe { libc::fcntl(dst.as_raw_fd(), libc::F_ADD_SEALS, F_SEAL_EXEC) };
    // SAFETY: as above.
    if unsafe { libc::fcntl(dst.as_raw_fd(), libc::F_ADD_SEALS, MEMFD_SEALS) } < 0 {
        return Err(seal_error("seal the memfd")(Errno::last()));
    }
    Ok(dst.into())
}

/// `execveat(exe, "", args, environ + SEALED_ENV, AT_EMPTY_PATH)`; returns only on failure.
fn reexec(exe: &OwnedFd, args: &[OsString]) -> ExeSealError {
    let to_cstring =
        |s: Vec<u8>| CString::new(s).map_err(|_| seal_error("argument with NUL")(Errno::EINVAL));
    let argv: Result<Vec<CString>, _> = args
        .iter()
        .map(|a| to_cstring(a.clone().into_vec()))
        .collect();
    let mut envp: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            CString::new(kv).ok()
        })
        .collect();
    envp.push(CString::new(format!("{SEALED_ENV}=1")).expect("a constant without NUL"));
    let argv = match argv {
        Ok(argv) => argv,
        Err(err) => return err,
    };
    match nix::unistd::execveat(
        exe.as_fd(),
        c"",
        &argv,
        &envp,
        nix::fcntl::AtFlags::AT_EMPTY_PATH,
    ) {
        Err(errno) => ExeSealError::Exec {
            source: errno.into(),
        },
        Ok(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_layers_are_seen_before_overlayfs_logs_them() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(a.join("inner")).expect("mkdir");
        std::fs::create_dir(&b).expect("mkdir");
        assert!(nested(&a, &a.join("inner")));
        assert!(nested(&a.join("inner"), &a));
        assert!(!nested(&a, &b));
        // Nesting across filesystems is fine for overlayfs.
        assert!(!nested(Path::new("/proc/self"), Path::new("/")));
    }

    #[test]
    fn layer_paths_escape_separators() {
        assert_eq!(escape_layer(Path::new("/a:b\\c")), b"/a\\:b\\\\c".to_vec());
        assert_eq!(escape_layer(Path::new("/usr/bin")), b"/usr/bin".to_vec());
    }
}
