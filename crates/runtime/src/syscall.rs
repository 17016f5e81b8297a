//! The seam between the runtime and the kernel.
//!
//! Every call that changes the container's view of the world (namespaces, mounts, the root,
//! identity, the terminal) or reads the filesystem while the rootfs is being assembled goes
//! through [`Syscall`]. The real process injects [`LinuxSyscall`]; unit tests inject
//! [`RecordingSyscall`] and assert the exact sequence of calls without root. The choice is made
//! by the caller, never by `cfg!(test)`.
//!
//! Process plumbing (fork, pipes, waitpid) stays outside the trait: it is the same for every
//! container and is covered by the root integration tests.

mod recording;

use std::ffi::CString;
use std::fs::{DirBuilder, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use nix::errno::Errno;
pub use nix::mount::{MntFlags, MsFlags};
pub use nix::sched::CloneFlags;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal};
pub use nix::sys::stat::{Mode, SFlag};

pub use recording::{Call, RecordingSyscall, FAKE_SOCKET_FD};

/// An errno displayed the way Go (and so Docker) spells it: `no such file or directory`.
///
/// Failure messages reach `docker` users, who know runc's wording; nix's `ENOENT: No such
/// file or directory` would look foreign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysError(pub Errno);

impl std::fmt::Display for SysError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let desc = self.0.desc();
        let mut chars = desc.chars();
        match chars.next() {
            Some(first) => write!(f, "{}{}", first.to_lowercase(), chars.as_str()),
            None => write!(f, "errno {}", self.0 as i32),
        }
    }
}

impl std::error::Error for SysError {}

impl From<Errno> for SysError {
    fn from(errno: Errno) -> Self {
        Self(errno)
    }
}

/// What the runtime needs to know about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    /// The kind of file.
    pub kind: FileKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
}

/// File kinds the runtime distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (only from [`Syscall::lstat`]).
    Symlink,
    /// Anything else: devices, sockets, fifos.
    Other,
}

/// Kernel calls made while setting up a container.
///
/// All calls act on the calling process (or its mount namespace) and MUST be made from the
/// single thread of the runtime process: namespaces, the root and credentials are per-thread or
/// per-process state the kernel refuses to change in multi-threaded processes.
pub trait Syscall {
    /// `unshare(2)`.
    fn unshare(&self, flags: CloneFlags) -> Result<(), Errno>;
    /// Opens the namespace file at `path` and `setns(2)`s into it.
    fn setns(&self, path: &Path, nstype: CloneFlags) -> Result<(), Errno>;
    /// `mount(2)`.
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno>;
    /// `umount2(2)`.
    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<(), Errno>;
    /// `pivot_root(2)`.
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), Errno>;
    /// `chroot(2)`.
    fn chroot(&self, path: &Path) -> Result<(), Errno>;
    /// Logs a warning to the kernel log (`/dev/kmsg`, read by `dmesg`): the runtime's own
    /// stderr is the container's, which must not carry it. Best effort.
    fn warn(&self, message: &str);
    /// `chdir(2)`.
    fn chdir(&self, path: &Path) -> Result<(), Errno>;
    /// `sethostname(2)`.
    fn sethostname(&self, name: &str) -> Result<(), Errno>;
    /// Brings the `lo` interface of the current network namespace up.
    fn loopback_up(&self) -> Result<(), Errno>;
    /// `mknod(2)`; the mode is applied exactly (not filtered by the umask).
    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> Result<(), Errno>;
    /// Creates a directory and its missing parents (`mkdir -p`) with `mode`.
    fn mkdir_all(&self, path: &Path, mode: u32) -> Result<(), Errno>;
    /// Creates an empty file if nothing exists at `path` (a mountpoint for a file bind).
    fn create_file(&self, path: &Path) -> Result<(), Errno>;
    /// `symlink(2)`: creates `link` pointing to `target`.
    fn symlink(&self, target: &Path, link: &Path) -> Result<(), Errno>;
    /// `stat(2)`, following symlinks.
    fn stat(&self, path: &Path) -> Result<FileInfo, Errno>;
    /// `lstat(2)`, not following a final symlink.
    fn lstat(&self, path: &Path) -> Result<FileInfo, Errno>;
    /// `readlink(2)`.
    fn read_link(&self, path: &Path) -> Result<PathBuf, Errno>;
    /// `setgroups(2)`.
    fn setgroups(&self, gids: &[u32]) -> Result<(), Errno>;
    /// `setgid(2)`.
    fn setgid(&self, gid: u32) -> Result<(), Errno>;
    /// `setuid(2)`.
    fn setuid(&self, uid: u32) -> Result<(), Errno>;
    /// `setsid(2)`.
    fn setsid(&self) -> Result<(), Errno>;
    /// Makes the terminal open on `fd` the controlling terminal (`TIOCSCTTY`).
    fn set_controlling_terminal(&self, fd: RawFd) -> Result<(), Errno>;
    /// Removes capability `cap` from the bounding set (`PR_CAPBSET_DROP`); `EINVAL` means the
    /// kernel knows no such capability.
    fn drop_bounding_capability(&self, cap: u32) -> Result<(), Errno>;
    /// Limits the permitted and effective sets to `keep` (a bit mask by capability number) and
    /// empties the inheritable set (`capset(2)`), never adding a capability the process lacks.
    fn limit_capabilities(&self, keep: u64) -> Result<(), Errno>;
    /// Asks for SIGKILL when the parent (the monitor) dies (`PR_SET_PDEATHSIG`). The kernel
    /// forgets it whenever the uid or gid changes, so it is set again after those.
    fn set_parent_death_signal(&self) -> Result<(), Errno>;
    /// `PR_SET_NO_NEW_PRIVS`: no `execve` may raise privileges again.
    fn set_no_new_privileges(&self) -> Result<(), Errno>;
    /// Installs a seccomp filter on the process (inherited across `execve` and `fork`).
    fn install_seccomp(&self, filter: &crate::seccomp::Filter) -> Result<(), Errno>;
    /// `umask(2)`.
    fn umask(&self, mask: u32);
    /// Unblocks every signal and restores every disposition to its default, so the container
    /// does not inherit what the engine (or Rust's runtime, which ignores `SIGPIPE`) set.
    fn reset_signals(&self) -> Result<(), Errno>;
    /// Marks every descriptor from `first` up close-on-exec.
    fn cloexec_from(&self, first: RawFd) -> Result<(), Errno>;
    /// `execve(2)`; returns only on failure.
    fn execve(&self, path: &Path, argv: &[CString], envp: &[CString]) -> Errno;
    /// Connects a unix stream socket to `path`; returns the connected (close-on-exec)
    /// descriptor, which the caller owns.
    fn connect_unix(&self, path: &Path) -> Result<RawFd, Errno>;
    /// Opens a new PTY in the devpts instance mounted at `pts`, makes its slave the process's
    /// stdin, stdout and stderr, sends the master with `SCM_RIGHTS` on the connected `socket`
    /// (the data is the slave's name under `name_prefix`, e.g. `/dev/pts/0`), then closes the
    /// master and the socket. Returns the slave's path under `pts`.
    fn send_console(&self, socket: RawFd, pts: &Path, name_prefix: &Path)
        -> Result<PathBuf, Errno>;
    /// The host's device nodes under `/dev` (for `--privileged`), without the pseudo-terminal,
    /// shared-memory and message-queue directories nor `/dev/console`.
    fn host_devices(&self) -> Result<Vec<HostDevice>, Errno>;
    /// Replaces the process's command line (`/proc/self/cmdline`, what `ps` shows) with `argv`
    /// and its name (`comm`) with the basename of `argv[0]`. Needs `CAP_SYS_RESOURCE`.
    fn set_title(&self, argv: &[String]) -> Result<(), Errno>;
    /// `setrlimit(2)` of `resource` (an `RLIMIT_*` number).
    fn setrlimit(&self, resource: i32, soft: u64, hard: u64) -> Result<(), Errno>;
    /// Writes `value` to the existing file `path` (a `/proc` knob: a sysctl, `oom_score_adj`).
    fn write_file(&self, path: &Path, value: &str) -> Result<(), Errno>;
    /// `(st_dev, st_ino)` of `path`, links followed: what identifies a namespace through its
    /// `/proc/PID/ns/NAME` file.
    fn file_id(&self, path: &Path) -> Result<(u64, u64), Errno>;
    /// `mount_setattr(2)` with `AT_RECURSIVE` and `MOUNT_ATTR_RDONLY`: `target` and every
    /// mount below it read-only (kernel 5.12+; `ENOSYS` before).
    fn make_readonly_recursive(&self, target: &Path) -> Result<(), Errno>;
    /// The mount point of the mount holding `path` (from `/proc/self/mountinfo`).
    fn mount_point_of(&self, path: &Path) -> Result<PathBuf, Errno>;
    /// Opens a directory (`O_RDONLY|O_DIRECTORY|O_CLOEXEC`) and leaves the descriptor open (it
    /// closes at `execve`).
    fn open_dir(&self, path: &Path) -> Result<RawFd, Errno>;
}

/// A device node of the host, for `--privileged` containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    /// Path relative to `/dev` (`kvm`, `net/tun`).
    pub path: PathBuf,
    /// `S_IFCHR` or `S_IFBLK`.
    pub kind: SFlag,
    /// Permission bits.
    pub mode: u32,
    /// Device number.
    pub rdev: u64,
}

// The ioctl request type is `c_ulong` with glibc and `c_int` with musl (the guest's libc); the
// values fit both.
#[allow(clippy::unnecessary_cast)]
const SIOCGIFFLAGS: libc::Ioctl = libc::SIOCGIFFLAGS as libc::Ioctl;
#[allow(clippy::unnecessary_cast)]
const SIOCSIFFLAGS: libc::Ioctl = libc::SIOCSIFFLAGS as libc::Ioctl;
#[allow(clippy::unnecessary_cast)]
const TIOCSPTLCK: libc::Ioctl = libc::TIOCSPTLCK as libc::Ioctl;
#[allow(clippy::unnecessary_cast)]
const TIOCGPTN: libc::Ioctl = libc::TIOCGPTN as libc::Ioctl;

/// Directories of `/dev` whose nodes a privileged container does not copy: it has its own.
const PRIVATE_DEV_DIRS: [&str; 4] = ["pts", "shm", "mqueue", "fd"];

fn open_raw(path: &Path, flags: libc::c_int) -> Result<std::os::fd::OwnedFd, Errno> {
    let path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: open(2) just returned this descriptor and nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Points the kernel's record of the command line at a new, leaked buffer (`PR_SET_MM`).
fn point_cmdline_at(argv: &[String]) -> Result<(), Errno> {
    let mut buffer = Vec::new();
    for arg in argv {
        buffer.extend_from_slice(arg.as_bytes());
        buffer.push(0);
    }
    // The kernel reads /proc/PID/cmdline from this memory for as long as the process lives,
    // so it must never be freed.
    let buffer: &'static mut [u8] = buffer.leak();
    let start = buffer.as_ptr() as libc::c_ulong;
    let end = start + buffer.len() as libc::c_ulong;
    for (field, value) in [
        (libc::PR_SET_MM_ARG_START, start),
        (libc::PR_SET_MM_ARG_END, end),
    ] {
        let field = libc::c_ulong::try_from(field).map_err(|_| Errno::EINVAL)?;
        // SAFETY: PR_SET_MM with an argument address only records the address; the memory it
        // points to is leaked above and stays valid.
        let rc = unsafe { libc::prctl(libc::PR_SET_MM, field, value, 0 as libc::c_ulong, 0) };
        if rc < 0 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// Writes `title` over the process's original argument strings, setproctitle-style (cut to
/// their length): the kernel shows the area up to its first NUL.
fn overwrite_cmdline(title: &str) -> Result<(), Errno> {
    let stat = std::fs::read_to_string("/proc/self/stat").map_err(|e| io_errno(&e))?;
    // Fields after the command name in parentheses; arg_start and arg_end are the 48th and
    // 49th of the line, the 46th and 47th after `state` (the 3rd).
    let rest = stat.rsplit_once(") ").ok_or(Errno::EINVAL)?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<usize, Errno> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or(Errno::EINVAL)
    };
    let (start, end) = (field(48)?, field(49)?);
    let len = end
        .checked_sub(start)
        .filter(|l| *l > 1)
        .ok_or(Errno::EINVAL)?;
    let bytes = title.as_bytes();
    let copied = bytes.len().min(len - 1);
    // SAFETY: [start, end) is this process's own argument area, which the kernel mapped
    // writable on the stack and which nothing reads any more once the runtime parsed its
    // arguments; every write stays inside it.
    unsafe {
        let area = std::slice::from_raw_parts_mut(start as *mut u8, len);
        area[..copied].copy_from_slice(&bytes[..copied]);
        area[copied..].fill(0);
    }
    Ok(())
}

fn walk_devices(dir: &Path, base: &Path, out: &mut Vec<HostDevice>) -> Result<(), Errno> {
    use std::os::unix::fs::FileTypeExt;
    for entry in std::fs::read_dir(dir).map_err(|e| io_errno(&e))? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = meta.file_type();
        let relative = path.strip_prefix(base).unwrap_or(&path).to_path_buf();
        if ft.is_dir() {
            let private =
                dir == base && PRIVATE_DEV_DIRS.iter().any(|p| relative.as_os_str() == *p);
            if !private {
                walk_devices(&path, base, out)?;
            }
            continue;
        }
        let kind = if ft.is_char_device() {
            SFlag::S_IFCHR
        } else if ft.is_block_device() {
            SFlag::S_IFBLK
        } else {
            continue;
        };
        if relative.as_os_str() == "console" {
            continue;
        }
        out.push(HostDevice {
            path: relative,
            kind,
            mode: meta.mode() & 0o7777,
            rdev: meta.rdev(),
        });
    }
    Ok(())
}

/// The real kernel, through `nix` and `libc`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

/// The errno inside an I/O error (`EIO` for errors that carry none).
/// A mount table field with its octal escapes (`\040` for a space) decoded.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn io_errno(err: &std::io::Error) -> Errno {
    err.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

fn info_from(meta: &std::fs::Metadata) -> FileInfo {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else {
        FileKind::Other
    };
    FileInfo {
        kind,
        mode: meta.mode() & 0o7777,
    }
}

impl Syscall for LinuxSyscall {
    fn unshare(&self, flags: CloneFlags) -> Result<(), Errno> {
        nix::sched::unshare(flags)
    }

    fn setns(&self, path: &Path, nstype: CloneFlags) -> Result<(), Errno> {
        let file = std::fs::File::open(path).map_err(|e| io_errno(&e))?;
        nix::sched::setns(file.as_fd(), nstype)
    }

    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<(), Errno> {
        nix::mount::umount2(target, flags)
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), Errno> {
        nix::unistd::pivot_root(new_root, put_old)
    }

    fn chroot(&self, path: &Path) -> Result<(), Errno> {
        nix::unistd::chroot(path)
    }

    fn warn(&self, message: &str) {
        use std::io::Write;
        // "<4>": KERN_WARNING. A missing /dev/kmsg loses the warning, nothing else.
        if let Ok(mut kmsg) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
            let _ = writeln!(kmsg, "<4>rmachine-runtime: {message}");
        }
    }

    fn chdir(&self, path: &Path) -> Result<(), Errno> {
        nix::unistd::chdir(path)
    }

    fn sethostname(&self, name: &str) -> Result<(), Errno> {
        nix::unistd::sethostname(name)
    }

    fn loopback_up(&self) -> Result<(), Errno> {
        // SAFETY: plain socket(2) call; the result is checked and owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(Errno::last());
        }
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS reads the interface named in `req` and writes its flags into
        // the same struct, which lives for the whole call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(Errno::last());
        }
        // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
        unsafe {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        }
        // SAFETY: SIOCSIFFLAGS reads the name and flags from `req`, valid for the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCSIFFLAGS, &req) } < 0 {
            return Err(Errno::last());
        }
        Ok(())
    }

    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> Result<(), Errno> {
        nix::sys::stat::mknod(path, kind, perm, dev)?;
        // The umask may have filtered the mode: set it exactly, as the caller asked.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            path,
            perm,
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
    }

    fn mkdir_all(&self, path: &Path, mode: u32) -> Result<(), Errno> {
        DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(|e| io_errno(&e))
    }

    fn create_file(&self, path: &Path) -> Result<(), Errno> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map(drop)
            .map_err(|e| io_errno(&e))
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<(), Errno> {
        std::os::unix::fs::symlink(target, link).map_err(|e| io_errno(&e))
    }

    fn stat(&self, path: &Path) -> Result<FileInfo, Errno> {
        std::fs::metadata(path)
            .map(|m| info_from(&m))
            .map_err(|e| io_errno(&e))
    }

    fn lstat(&self, path: &Path) -> Result<FileInfo, Errno> {
        std::fs::symlink_metadata(path)
            .map(|m| info_from(&m))
            .map_err(|e| io_errno(&e))
    }

    fn read_link(&self, path: &Path) -> Result<PathBuf, Errno> {
        std::fs::read_link(path).map_err(|e| io_errno(&e))
    }

    fn setgroups(&self, gids: &[u32]) -> Result<(), Errno> {
        let gids: Vec<nix::unistd::Gid> = gids
            .iter()
            .copied()
            .map(nix::unistd::Gid::from_raw)
            .collect();
        nix::unistd::setgroups(&gids)
    }

    fn setgid(&self, gid: u32) -> Result<(), Errno> {
        nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))
    }

    fn setuid(&self, uid: u32) -> Result<(), Errno> {
        nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))
    }

    fn setsid(&self) -> Result<(), Errno> {
        nix::unistd::setsid().map(drop)
    }

    fn set_controlling_terminal(&self, fd: RawFd) -> Result<(), Errno> {
        // SAFETY: TIOCSCTTY takes an int argument (0: do not steal from another session) and
        // touches no memory of ours.
        if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } < 0 {
            return Err(Errno::last());
        }
        Ok(())
    }

    fn drop_bounding_capability(&self, cap: u32) -> Result<(), Errno> {
        // SAFETY: PR_CAPBSET_DROP takes an integer argument and touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        if rc < 0 {
            return Err(Errno::last());
        }
        Ok(())
    }

    fn limit_capabilities(&self, keep: u64) -> Result<(), Errno> {
        /// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets as two 32-bit halves.
        const VERSION_3: u32 = 0x2008_0522;
        #[repr(C)]
        struct Header {
            version: u32,
            pid: libc::c_int,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let mut header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        // SAFETY: capget writes two `Data` entries for version 3, which `data` holds; both
        // pointers are valid for the call.
        if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } < 0 {
            return Err(Errno::last());
        }
        for (half, entry) in data.iter_mut().enumerate() {
            // Truncation intended: each entry holds one 32-bit half of the mask.
            let keep = (keep >> (32 * half)) as u32;
            entry.permitted &= keep;
            entry.effective = entry.permitted;
            entry.inheritable = 0;
        }
        // SAFETY: capset reads the header and two `Data` entries, all valid for the call.
        if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } < 0 {
            return Err(Errno::last());
        }
        Ok(())
    }

    fn set_parent_death_signal(&self) -> Result<(), Errno> {
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
    }

    fn install_seccomp(&self, filter: &crate::seccomp::Filter) -> Result<(), Errno> {
        filter.install()
    }

    fn set_no_new_privileges(&self) -> Result<(), Errno> {
        nix::sys::prctl::set_no_new_privs()
    }

    fn umask(&self, mask: u32) {
        nix::sys::stat::umask(Mode::from_bits_truncate(mask as libc::mode_t));
    }

    fn reset_signals(&self) -> Result<(), Errno> {
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
        for signal in Signal::iterator() {
            if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
                continue;
            }
            // SAFETY: restoring the default disposition installs no Rust handler, so no
            // handler can observe inconsistent state.
            unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) }?;
        }
        Ok(())
    }

    fn cloexec_from(&self, first: RawFd) -> Result<(), Errno> {
        let first = libc::c_uint::try_from(first).map_err(|_| Errno::EINVAL)?;
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on descriptors; it
        // closes nothing and touches no memory.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        // Kernels before 5.11 lack CLOSE_RANGE_CLOEXEC: walk /proc/self/fd instead.
        let dir = std::fs::read_dir("/proc/self/fd").map_err(|e| io_errno(&e))?;
        let fds: Vec<RawFd> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd >= first as RawFd)
            .collect();
        for fd in fds {
            // SAFETY: setting FD_CLOEXEC on a descriptor (possibly already closed, which
            // just fails with EBADF) touches no memory.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        Ok(())
    }

    fn execve(&self, path: &Path, argv: &[CString], envp: &[CString]) -> Errno {
        let Ok(path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
            return Errno::EINVAL;
        };
        match nix::unistd::execve(&path, argv, envp) {
            Err(errno) => errno,
            Ok(never) => match never {},
        }
    }

    fn connect_unix(&self, path: &Path) -> Result<RawFd, Errno> {
        use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
        use std::os::fd::IntoRawFd;
        let sock = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        connect(sock.as_raw_fd(), &UnixAddr::new(path)?)?;
        Ok(sock.into_raw_fd())
    }

    fn send_console(
        &self,
        socket: RawFd,
        pts: &Path,
        name_prefix: &Path,
    ) -> Result<PathBuf, Errno> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
        // SAFETY: the caller hands over the connected socket; it is closed here whatever
        // happens.
        let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(socket) };
        let master = open_raw(&pts.join("ptmx"), libc::O_RDWR | libc::O_NOCTTY)?;
        let unlock: libc::c_int = 0;
        // SAFETY: TIOCSPTLCK reads one int, which lives for the call.
        if unsafe { libc::ioctl(master.as_raw_fd(), TIOCSPTLCK, &unlock) } < 0 {
            return Err(Errno::last());
        }
        let mut number: libc::c_uint = 0;
        // SAFETY: TIOCGPTN writes one unsigned int into `number`, valid for the call.
        if unsafe { libc::ioctl(master.as_raw_fd(), TIOCGPTN, &mut number) } < 0 {
            return Err(Errno::last());
        }
        let slave_path = pts.join(number.to_string());
        let slave = open_raw(&slave_path, libc::O_RDWR | libc::O_NOCTTY)?;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which this process owns by
            // convention; it touches no memory.
            if unsafe { libc::dup2(slave.as_raw_fd(), fd) } < 0 {
                return Err(Errno::last());
            }
        }
        let name = name_prefix.join(number.to_string());
        let data = [std::io::IoSlice::new(name.as_os_str().as_encoded_bytes())];
        let fds = [master.as_raw_fd()];
        sendmsg::<UnixAddr>(
            socket.as_raw_fd(),
            &data,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )?;
        Ok(slave_path)
    }

    fn host_devices(&self) -> Result<Vec<HostDevice>, Errno> {
        let mut devices = Vec::new();
        walk_devices(Path::new("/dev"), Path::new("/dev"), &mut devices)?;
        devices.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(devices)
    }

    fn set_title(&self, argv: &[String]) -> Result<(), Errno> {
        if let Some(name) = argv
            .first()
            .and_then(|a| Path::new(a).file_name())
            .and_then(|n| CString::new(n.as_encoded_bytes()).ok())
        {
            nix::sys::prctl::set_name(&name)?;
        }
        match point_cmdline_at(argv) {
            // Without CAP_SYS_RESOURCE, overwrite the original argv in place instead.
            Err(Errno::EPERM) => overwrite_cmdline(&argv.join(" ")),
            other => other,
        }
    }

    fn setrlimit(&self, resource: i32, soft: u64, hard: u64) -> Result<(), Errno> {
        let limit = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: `limit` is a valid rlimit for the duration of the call; the resource type is
        // c_uint with glibc and c_int with musl, and the numbers are small.
        let ret = unsafe { libc::setrlimit(resource as _, &limit) };
        if ret == 0 {
            Ok(())
        } else {
            Err(Errno::last())
        }
    }

    fn file_id(&self, path: &Path) -> Result<(u64, u64), Errno> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| io_errno(&e))
    }

    fn open_dir(&self, path: &Path) -> Result<RawFd, Errno> {
        use std::os::fd::IntoRawFd;
        Ok(open_raw(path, libc::O_RDONLY | libc::O_DIRECTORY)?.into_raw_fd())
    }

    fn mount_point_of(&self, path: &Path) -> Result<PathBuf, Errno> {
        let table = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| io_errno(&e))?;
        table
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .map(|field| PathBuf::from(unescape_mountinfo(field)))
            .filter(|mount_point| path.starts_with(mount_point))
            // The deepest mount point holds it.
            .max_by_key(|mount_point| mount_point.components().count())
            .ok_or(Errno::ENOENT)
    }

    fn make_readonly_recursive(&self, target: &Path) -> Result<(), Errno> {
        /// The kernel's `struct mount_attr` (MOUNT_ATTR_SIZE_VER0).
        #[repr(C)]
        struct MountAttr {
            attr_set: u64,
            attr_clr: u64,
            propagation: u64,
            userns_fd: u64,
        }
        const MOUNT_ATTR_RDONLY: u64 = 0x1;
        let path =
            CString::new(target.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)?;
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: `path` is a NUL-terminated string and `attr` a live struct of the size
        // passed; the kernel only reads both during the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(Errno::last())
        }
    }

    fn write_file(&self, path: &Path, value: &str) -> Result<(), Errno> {
        use std::io::Write;
        // A /proc knob takes the value in one write; it must exist (never created here).
        let mut file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| io_errno(&e))?;
        file.write_all(value.as_bytes()).map_err(|e| io_errno(&e))
    }
}
