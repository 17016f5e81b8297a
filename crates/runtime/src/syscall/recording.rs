//! A [`Syscall`] that records calls instead of making them, for tests without root.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use super::{
    CloneFlags, Errno, FileInfo, FileKind, HostDevice, MntFlags, Mode, MsFlags, SFlag, Syscall,
};

/// One recorded kernel call, with owned copies of its arguments.
///
/// Queries (`stat`, `lstat`, `read_link`) are answered from the fake file table and not
/// recorded: tests assert what the runtime *changes*.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // Each variant mirrors the `Syscall` method of the same name.
pub enum Call {
    Unshare(CloneFlags),
    Setns {
        path: PathBuf,
        nstype: CloneFlags,
    },
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount2 {
        target: PathBuf,
        flags: MntFlags,
    },
    ReadonlyRecursive(PathBuf),
    OpenDir(PathBuf),
    PivotRoot {
        new_root: PathBuf,
        put_old: PathBuf,
    },
    Chroot(PathBuf),
    Warn(String),
    Chdir(PathBuf),
    Sethostname(String),
    LoopbackUp,
    Mknod {
        path: PathBuf,
        kind: SFlag,
        perm: u32,
        dev: u64,
    },
    MkdirAll {
        path: PathBuf,
        mode: u32,
    },
    CreateFile(PathBuf),
    Symlink {
        target: PathBuf,
        link: PathBuf,
    },
    Setgroups(Vec<u32>),
    Setgid(u32),
    Setuid(u32),
    Setsid,
    SetControllingTerminal(RawFd),
    DropBoundingCapability(u32),
    LimitCapabilities(u64),
    SetParentDeathSignal,
    /// A seccomp filter of this many instructions.
    InstallSeccomp(usize),
    SetNoNewPrivileges,
    Umask(u32),
    ResetSignals,
    CloexecFrom(RawFd),
    Execve {
        path: PathBuf,
        argv: Vec<String>,
        envp: Vec<String>,
    },
    ConnectUnix(PathBuf),
    SendConsole {
        socket: RawFd,
        pts: PathBuf,
        name_prefix: PathBuf,
    },
    SetTitle(Vec<String>),
    Setrlimit {
        resource: i32,
        soft: u64,
        hard: u64,
    },
    WriteFile {
        path: PathBuf,
        value: String,
    },
}

/// The descriptor [`RecordingSyscall::connect_unix`] pretends to return.
pub const FAKE_SOCKET_FD: RawFd = 100;

type FailureRule = (Box<dyn Fn(&Call) -> bool>, Errno);

/// Records every call; answers file queries from an in-memory table; fails the calls a test
/// asks it to.
///
/// Calls that create files (`mkdir_all`, `create_file`, `symlink`, `mknod`) also add them to the
/// table, so later `stat`s see them as the real kernel would. `execve` never succeeds: it
/// returns the errno of a matching failure rule, else `ENOSYS`.
#[derive(Default)]
pub struct RecordingSyscall {
    calls: RefCell<Vec<Call>>,
    files: RefCell<HashMap<PathBuf, FileInfo>>,
    links: RefCell<HashMap<PathBuf, PathBuf>>,
    failures: RefCell<Vec<FailureRule>>,
    devices: RefCell<Vec<HostDevice>>,
    /// `(st_dev, st_ino)` per path; `/proc/self/ns/*` follow `unshare` and `setns`.
    ids: RefCell<HashMap<PathBuf, (u64, u64)>>,
    next_id: std::cell::Cell<u64>,
}

impl std::fmt::Debug for RecordingSyscall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingSyscall")
            .field("calls", &self.calls)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl RecordingSyscall {
    /// An empty recorder with an empty filesystem.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file (and nothing else) to the fake filesystem.
    pub fn with_file(self, path: impl Into<PathBuf>, kind: FileKind, mode: u32) -> Self {
        self.files
            .borrow_mut()
            .insert(path.into(), FileInfo { kind, mode });
        self
    }

    /// Adds a symlink `link → target` to the fake filesystem.
    pub fn with_symlink(self, link: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Self {
        let link = link.into();
        self.files.borrow_mut().insert(
            link.clone(),
            FileInfo {
                kind: FileKind::Symlink,
                mode: 0o777,
            },
        );
        self.links.borrow_mut().insert(link, target.into());
        self
    }

    /// Adds a device node to the fake host `/dev` ([`Syscall::host_devices`]).
    pub fn with_host_device(self, device: HostDevice) -> Self {
        self.devices.borrow_mut().push(device);
        self
    }

    /// Makes every call for which `matches` holds fail with `errno` (it is still recorded).
    pub fn fail_when(self, matches: impl Fn(&Call) -> bool + 'static, errno: Errno) -> Self {
        self.failures.borrow_mut().push((Box::new(matches), errno));
        self
    }

    /// Gives `path` the identity `id` (a namespace file shared with another path).
    pub fn with_file_id(self, path: impl Into<PathBuf>, id: (u64, u64)) -> Self {
        self.ids.borrow_mut().insert(path.into(), id);
        self
    }

    /// The identity of `path`, a new one the first time it is asked.
    fn id_of(&self, path: &Path) -> (u64, u64) {
        let fresh = self.fresh_id();
        *self
            .ids
            .borrow_mut()
            .entry(path.to_path_buf())
            .or_insert(fresh)
    }

    /// An identity no other path has (device 0; tests give theirs another device).
    fn fresh_id(&self) -> (u64, u64) {
        let next = self.next_id.get() + 1;
        self.next_id.set(next);
        (0, next)
    }

    /// Moves the process into namespace `id` for each namespace kind in `flags`.
    fn enter(&self, flags: CloneFlags, id: Option<(u64, u64)>) {
        for (flag, name) in [
            (CloneFlags::CLONE_NEWIPC, "ipc"),
            (CloneFlags::CLONE_NEWUTS, "uts"),
            (CloneFlags::CLONE_NEWNET, "net"),
        ] {
            if flags.contains(flag) {
                let fresh = id.unwrap_or_else(|| self.fresh_id());
                self.ids
                    .borrow_mut()
                    .insert(PathBuf::from(format!("/proc/self/ns/{name}")), fresh);
            }
        }
    }

    /// The calls made so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    fn record(&self, call: Call) -> Result<(), Errno> {
        let failure = self
            .failures
            .borrow()
            .iter()
            .find(|(matches, _)| matches(&call))
            .map(|(_, errno)| *errno);
        self.calls.borrow_mut().push(call);
        failure.map_or(Ok(()), Err)
    }

    fn add(&self, path: &Path, kind: FileKind, mode: u32) {
        self.files
            .borrow_mut()
            .entry(path.to_path_buf())
            .or_insert(FileInfo { kind, mode });
    }

    fn lookup(&self, path: &Path) -> Result<FileInfo, Errno> {
        self.files.borrow().get(path).copied().ok_or(Errno::ENOENT)
    }
}

fn lossy(items: &[CString]) -> Vec<String> {
    items
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect()
}

impl Syscall for RecordingSyscall {
    fn unshare(&self, flags: CloneFlags) -> Result<(), Errno> {
        self.record(Call::Unshare(flags))?;
        self.enter(flags, None);
        Ok(())
    }

    fn setns(&self, path: &Path, nstype: CloneFlags) -> Result<(), Errno> {
        self.record(Call::Setns {
            path: path.into(),
            nstype,
        })?;
        let id = self.id_of(path);
        self.enter(nstype, Some(id));
        Ok(())
    }

    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        self.record(Call::Mount {
            source: source.map(Into::into),
            target: target.into(),
            fstype: fstype.map(Into::into),
            flags,
            data: data.map(Into::into),
        })
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<(), Errno> {
        self.record(Call::Umount2 {
            target: target.into(),
            flags,
        })
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), Errno> {
        self.record(Call::PivotRoot {
            new_root: new_root.into(),
            put_old: put_old.into(),
        })
    }

    fn chroot(&self, path: &Path) -> Result<(), Errno> {
        self.record(Call::Chroot(path.into()))
    }

    fn warn(&self, message: &str) {
        let _ = self.record(Call::Warn(message.to_owned()));
    }

    fn chdir(&self, path: &Path) -> Result<(), Errno> {
        self.record(Call::Chdir(path.into()))
    }

    fn sethostname(&self, name: &str) -> Result<(), Errno> {
        self.record(Call::Sethostname(name.into()))
    }

    fn loopback_up(&self) -> Result<(), Errno> {
        self.record(Call::LoopbackUp)
    }

    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> Result<(), Errno> {
        self.record(Call::Mknod {
            path: path.into(),
            kind,
            perm: perm.bits(),
            dev,
        })?;
        self.add(path, FileKind::Other, perm.bits());
        Ok(())
    }

    fn mkdir_all(&self, path: &Path, mode: u32) -> Result<(), Errno> {
        self.record(Call::MkdirAll {
            path: path.into(),
            mode,
        })?;
        for dir in path.ancestors() {
            self.add(dir, FileKind::Dir, mode);
        }
        Ok(())
    }

    fn create_file(&self, path: &Path) -> Result<(), Errno> {
        self.record(Call::CreateFile(path.into()))?;
        self.add(path, FileKind::File, 0o644);
        Ok(())
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<(), Errno> {
        self.record(Call::Symlink {
            target: target.into(),
            link: link.into(),
        })?;
        self.add(link, FileKind::Symlink, 0o777);
        self.links
            .borrow_mut()
            .insert(link.to_path_buf(), target.to_path_buf());
        Ok(())
    }

    fn stat(&self, path: &Path) -> Result<FileInfo, Errno> {
        let mut path = path.to_path_buf();
        // Follow a bounded chain of fake symlinks, as the kernel does (ELOOP after 40).
        for _ in 0..40 {
            let info = self.lookup(&path)?;
            if info.kind != FileKind::Symlink {
                return Ok(info);
            }
            let target = self.read_link(&path)?;
            path = match path.parent() {
                Some(parent) if target.is_relative() => parent.join(target),
                _ => target,
            };
        }
        Err(Errno::ELOOP)
    }

    fn lstat(&self, path: &Path) -> Result<FileInfo, Errno> {
        self.lookup(path)
    }

    fn read_link(&self, path: &Path) -> Result<PathBuf, Errno> {
        self.links.borrow().get(path).cloned().ok_or(Errno::EINVAL)
    }

    fn setgroups(&self, gids: &[u32]) -> Result<(), Errno> {
        self.record(Call::Setgroups(gids.to_vec()))
    }

    fn setgid(&self, gid: u32) -> Result<(), Errno> {
        self.record(Call::Setgid(gid))
    }

    fn setuid(&self, uid: u32) -> Result<(), Errno> {
        self.record(Call::Setuid(uid))
    }

    fn setsid(&self) -> Result<(), Errno> {
        self.record(Call::Setsid)
    }

    fn set_controlling_terminal(&self, fd: RawFd) -> Result<(), Errno> {
        self.record(Call::SetControllingTerminal(fd))
    }

    fn drop_bounding_capability(&self, cap: u32) -> Result<(), Errno> {
        self.record(Call::DropBoundingCapability(cap))
    }

    fn limit_capabilities(&self, keep: u64) -> Result<(), Errno> {
        self.record(Call::LimitCapabilities(keep))
    }

    fn set_parent_death_signal(&self) -> Result<(), Errno> {
        self.record(Call::SetParentDeathSignal)
    }

    fn install_seccomp(&self, filter: &crate::seccomp::Filter) -> Result<(), Errno> {
        self.record(Call::InstallSeccomp(filter.len()))
    }

    fn set_no_new_privileges(&self) -> Result<(), Errno> {
        self.record(Call::SetNoNewPrivileges)
    }

    fn umask(&self, mask: u32) {
        // umask(2) cannot fail, so failure rules do not apply.
        let _ = self.record(Call::Umask(mask));
    }

    fn reset_signals(&self) -> Result<(), Errno> {
        self.record(Call::ResetSignals)
    }

    fn cloexec_from(&self, first: RawFd) -> Result<(), Errno> {
        self.record(Call::CloexecFrom(first))
    }

    fn execve(&self, path: &Path, argv: &[CString], envp: &[CString]) -> Errno {
        match self.record(Call::Execve {
            path: path.into(),
            argv: lossy(argv),
            envp: lossy(envp),
        }) {
            Err(errno) => errno,
            Ok(()) => Errno::ENOSYS,
        }
    }

    fn connect_unix(&self, path: &Path) -> Result<RawFd, Errno> {
        self.record(Call::ConnectUnix(path.into()))
            .map(|()| FAKE_SOCKET_FD)
    }

    fn send_console(
        &self,
        socket: RawFd,
        pts: &Path,
        name_prefix: &Path,
    ) -> Result<PathBuf, Errno> {
        self.record(Call::SendConsole {
            socket,
            pts: pts.into(),
            name_prefix: name_prefix.into(),
        })?;
        let slave = pts.join("0");
        self.add(&slave, FileKind::Other, 0o620);
        Ok(slave)
    }

    fn host_devices(&self) -> Result<Vec<HostDevice>, Errno> {
        Ok(self.devices.borrow().clone())
    }

    fn set_title(&self, argv: &[String]) -> Result<(), Errno> {
        self.record(Call::SetTitle(argv.to_vec()))
    }

    fn setrlimit(&self, resource: i32, soft: u64, hard: u64) -> Result<(), Errno> {
        self.record(Call::Setrlimit {
            resource,
            soft,
            hard,
        })
    }

    fn write_file(&self, path: &Path, value: &str) -> Result<(), Errno> {
        self.record(Call::WriteFile {
            path: path.into(),
            value: value.into(),
        })
    }

    fn file_id(&self, path: &Path) -> Result<(u64, u64), Errno> {
        Ok(self.id_of(path))
    }

    fn open_dir(&self, path: &Path) -> Result<RawFd, Errno> {
        self.record(Call::OpenDir(path.into()))?;
        Ok(100)
    }

    fn mount_point_of(&self, _path: &Path) -> Result<PathBuf, Errno> {
        Ok(PathBuf::from("/"))
    }

    fn make_readonly_recursive(&self, target: &Path) -> Result<(), Errno> {
        self.record(Call::ReadonlyRecursive(target.into()))
    }
}
