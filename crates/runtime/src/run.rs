//! `rmachine-runtime run DIR` and `exec DIR EXEC_JSON`: the monitor process.
//!
//! The process the engine spawns stays in the engine's namespaces and becomes the container's
//! monitor:
//! 1. it reads `DIR/runtime.json`, takes the sync pipe on [`SYNC_FD`] if the engine passed one,
//!    and arranges to die with the engine (`PR_SET_PDEATHSIG`);
//! 2. it creates the container's cgroup and writes its limits ([`crate::cgroup`]);
//! 3. `unshare(CLONE_NEWPID)` and `fork`: the child is PID 1 of the new PID namespace. On
//!    cgroup v2 it is born in the container's cgroup (`clone3(CLONE_INTO_CGROUP)`); otherwise it
//!    waits on a pipe until the monitor has moved it in, so nothing of the container ever runs
//!    outside it;
//! 4. the child runs [`container::setup_with`] and [`container::exec`] (or, with `--init`,
//!    [`crate::init::run`]); if either fails it writes a
//!    [`Failed`] as JSON on a close-on-exec pipe, so EOF with nothing read means `execve`
//!    succeeded;
//! 5. the monitor writes the one [`SyncMessage`] to the engine and closes the sync pipe, then
//!    waits for the child, notes whether the OOM killer struck ([`OOM_KILLED_FILE`]), removes
//!    the cgroup and exits with the child's status (code, or 128+signal).
//!
//! `exec` differs in steps 2 and 3: the monitor joins the running container's PID namespace
//! instead of creating one and moves the child into the container's cgroup, and the child joins
//! its other namespaces instead of building them. On v1, joining runs while the monitor writes
//! the cgroup (a first write to `cgroup.procs` waits for an RCU grace period, 8–16 ms): the
//! child only runs the runtime's own code before the go, and waits for it before `execve`. On
//! v2 the child is born in the cgroup and there is no such wait.
//!
//! The monitor holds the same stdio as the container: it exits as soon as the container's PID 1
//! does, so the engine still sees EOF on the container's output then.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};

use crate::cgroup::{Cgroup, CgroupError, CgroupMode};
use crate::container::{self, CgroupView, ContainerError};
use crate::spec::{
    ExecFile, Failed, Features, Namespace, SpecFile, SyncMessage, OOM_KILLED_FILE, PARENT_PID_ENV,
    SPEC_FILE, SYNC_FD,
};
use crate::status::exit_code;
use crate::syscall::{CloneFlags, Errno, SysError, Syscall};

/// A failure of the monitor itself, before or after the container's process.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The spec file could not be read.
    #[error("read spec {}", path.display())]
    ReadSpec {
        /// The spec file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: SysError,
    },
    /// The spec file is not a valid [`SpecFile`] (or [`ExecFile`]).
    #[error("parse spec {}", path.display())]
    ParseSpec {
        /// The spec file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The runtime was started in a process that already runs threads.
    #[error("the runtime must run single-threaded, found {threads} threads")]
    Threaded {
        /// How many threads `/proc/self/status` lists.
        threads: u64,
    },
    /// The container to exec into is not running (or its namespaces cannot be joined).
    #[error("container process {pid} is not running")]
    Join {
        /// The host PID from the exec spec.
        pid: i32,
        /// The cause.
        #[source]
        source: ContainerError,
    },
    /// The runtime could not run from a sealed copy of its executable.
    #[error(transparent)]
    Seal(#[from] crate::exeseal::ExeSealError),
    /// The container's cgroup could not be set up.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The engine that spawned the monitor died before the monitor armed its parent-death
    /// signal, so nothing would stop the container if it ran.
    #[error("the engine (pid {engine}) that started the runtime is gone")]
    EngineGone {
        /// The engine's PID from [`PARENT_PID_ENV`].
        engine: i32,
    },
    /// A step of the monitor's own setup failed.
    #[error("{what}")]
    Monitor {
        /// The step.
        what: &'static str,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
}

impl RunError {
    fn monitor(what: &'static str) -> impl FnOnce(Errno) -> Self {
        move |errno| Self::Monitor {
            what,
            source: errno.into(),
        }
    }

    fn to_failed(&self) -> Failed {
        let mut message = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(err) = cause {
            message.push_str(": ");
            message.push_str(&err.to_string());
            cause = err.source();
        }
        Failed {
            message,
            exit_code: 1,
        }
    }
}

/// The write end of the engine's sync pipe, if the engine passed one.
struct SyncPipe(Option<File>);

impl SyncPipe {
    /// Takes [`SYNC_FD`] if it is open; manual runs have none.
    fn take() -> Self {
        // SAFETY: F_GETFD only queries the descriptor's flags.
        let open = unsafe { libc::fcntl(SYNC_FD, libc::F_GETFD) } >= 0;
        if !open {
            return Self(None);
        }
        // SAFETY: the descriptor is open and, by the invocation contract, given to the runtime
        // to own; nothing else in this process uses it.
        let fd = unsafe { OwnedFd::from_raw_fd(SYNC_FD) };
        // The container must never inherit it, even if setup fails half-way.
        let _ = nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        Self(Some(File::from(fd)))
    }

    /// Sends the one message and closes the pipe, so the engine sees EOF right after it.
    fn send(&mut self, message: &SyncMessage) {
        if let Some(mut pipe) = self.0.take() {
            // An engine that went away cannot be told anything; the container goes on (or
            // dies with it through PR_SET_PDEATHSIG).
            if let Ok(mut line) = serde_json::to_vec(message) {
                line.push(b'\n');
                let _ = pipe.write_all(&line);
            }
        }
    }
}

/// Runs the container described by `dir/runtime.json` and returns the monitor's exit code (see
/// the module docs). Failures are sent on the sync pipe; without one (a manual run) they are
/// printed on stderr with the container id, since stderr then belongs to a person rather than to
/// the container's log.
///
/// MUST be called from a single-threaded process: it forks and the child changes namespaces.
pub fn run(dir: &Path, sys: &dyn Syscall) -> i32 {
    let mut sync = SyncPipe::take();
    let file = match load_spec(dir) {
        Ok(file) => file,
        Err(err) => return report_failure(&mut sync, &dir.display().to_string(), &err.to_failed()),
    };
    match monitor(dir, &file, sys, &mut sync) {
        Ok(code) => code,
        Err(err) => report_failure(&mut sync, &file.spec.id, &err.to_failed()),
    }
}

/// Runs the process described by the [`ExecFile`] in `exec_file` inside the running container
/// whose state directory is `dir`, and returns its exit code; the same contract as [`run`].
///
/// MUST be called from a single-threaded process.
pub fn exec(dir: &Path, exec_file: &Path, sys: &dyn Syscall) -> i32 {
    let mut sync = SyncPipe::take();
    // The container's spec names it in messages and gives its capabilities and cgroup.
    let (id, features) = match load_spec(dir) {
        Ok(file) => (file.spec.id, file.features),
        Err(_) => (dir.display().to_string(), Features::default()),
    };
    let file: ExecFile = match load_json(exec_file) {
        Ok(file) => file,
        Err(err) => return report_failure(&mut sync, &id, &err.to_failed()),
    };
    let spec = &file.exec;
    let before_fork = || {
        container::join_pid_namespace(spec.pid, sys).map_err(|err| RunError::Join {
            pid: spec.pid,
            source: err,
        })
    };
    // A container started without a cgroup (no cgroupfs) has none to join.
    let cgroup = Cgroup::for_container(&id, features.cgroup_parent.as_deref())
        .ok()
        .filter(|cgroup| {
            cgroup
                .path("pids")
                .or_else(|| cgroup.path("memory"))
                .is_some_and(|p| p.is_dir())
        });
    let born_into = cgroup.as_ref().and_then(Cgroup::open_for_clone);
    let after_fork = |pid: Pid, born_in_cgroup: bool| match &cgroup {
        Some(cgroup) if !born_in_cgroup => Ok(cgroup.add_process(pid.as_raw())?),
        _ => Ok(()),
    };
    // Joining the namespaces does not depend on the cgroup (the cgroup namespace joined is the
    // container's, whatever cgroup the child is in), so it overlaps the monitor's cgroup write.
    let child = |_report: RawFd, go: Go| {
        let setup = container::setup_exec_with(
            spec.pid,
            &spec.process,
            &features,
            file.privileged,
            file.console_socket.as_deref(),
            sys,
        );
        // A failure is reported after the go too: the monitor's cgroup write must not meet a
        // child that already exited.
        go.wait();
        match setup {
            Ok(exec) => container::exec(&exec, sys),
            Err(err) => err,
        }
    };
    match supervise(&id, &mut sync, before_fork, born_into, after_fork, child) {
        Ok(code) => code,
        Err(err) => report_failure(&mut sync, &id, &err.to_failed()),
    }
}

/// Reports `err`, a failure before the container's spec was even read, as [`run`] reports its
/// own (on the sync pipe, else on stderr) and returns the exit code.
pub fn refuse(dir: &Path, err: &RunError) -> i32 {
    let mut sync = SyncPipe::take();
    report_failure(&mut sync, &dir.display().to_string(), &err.to_failed())
}

fn load_spec(dir: &Path) -> Result<SpecFile, RunError> {
    load_json(&dir.join(SPEC_FILE))
}

fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, RunError> {
    let bytes = std::fs::read(path).map_err(|err| RunError::ReadSpec {
        path: path.to_path_buf(),
        source: SysError(crate::syscall::io_errno(&err)),
    })?;
    serde_json::from_slice(&bytes).map_err(|source| RunError::ParseSpec {
        path: path.to_path_buf(),
        source,
    })
}

fn report_failure(sync: &mut SyncPipe, id: &str, failed: &Failed) -> i32 {
    if sync.0.is_some() {
        sync.send(&SyncMessage::Failed(failed.clone()));
    } else {
        eprintln!("rmachine-runtime: container {id}: {}", failed.message);
    }
    failed.exit_code
}

fn monitor(
    dir: &Path,
    file: &SpecFile,
    sys: &dyn Syscall,
    sync: &mut SyncPipe,
) -> Result<i32, RunError> {
    let (spec, features) = (&file.spec, &file.features);
    let cgroup = create_cgroup(&spec.id, features)?;
    // The namespace the forked child lands in: a new one (the child is its PID 1), the
    // host's, or another container's (`--pid container:ID`).
    let before_fork = || match &features.namespaces.pid {
        Namespace::Private => sys
            .unshare(CloneFlags::CLONE_NEWPID)
            .map_err(RunError::monitor("new pid namespace")),
        Namespace::Host => Ok(()),
        Namespace::Path { path } => sys
            .setns(path, CloneFlags::CLONE_NEWPID)
            .map_err(RunError::monitor("join pid namespace")),
    };
    let born_into = cgroup.as_ref().and_then(Cgroup::open_for_clone);
    let after_fork = |pid: Pid, born_in_cgroup: bool| match &cgroup {
        Some(cgroup) if !born_in_cgroup => Ok(cgroup.add_process(pid.as_raw())?),
        _ => Ok(()),
    };
    let view = match &cgroup {
        Some(cgroup) if cgroup.mode() == CgroupMode::V2 => CgroupView::Private,
        Some(cgroup) => CgroupView::HostV1(cgroup.v1_dirs()),
        None => CgroupView::Hidden,
    };
    // The setup waits for the go: a private cgroup namespace is rooted at the cgroup the child
    // is in when it unshares it.
    let child = |report: RawFd, go: Go| {
        go.wait();
        match container::setup_in(spec, features, view, sys) {
            Ok(exec) if features.init => {
                crate::init::run(&exec, sys, report, spec.process.terminal)
            }
            Ok(exec) => container::exec(&exec, sys),
            Err(err) => err,
        }
    };
    let result = supervise(&spec.id, sync, before_fork, born_into, after_fork, child);
    if let Some(cgroup) = cgroup {
        if cgroup.oom_killed().unwrap_or(false) {
            let _ = std::fs::write(dir.join(OOM_KILLED_FILE), b"");
        }
        // The container is gone; a cgroup that cannot be removed only leaks a directory.
        let _ = cgroup.remove();
    }
    result
}

/// Creates the container's cgroup with its device list and limits. A host without cgroupfs
/// still runs containers that ask for no limits, without a cgroup (and without a device list:
/// the `nodev` mounts of [`crate::rootfs`] are then its only protection).
fn create_cgroup(id: &str, features: &Features) -> Result<Option<Cgroup>, RunError> {
    let cgroup = match Cgroup::for_container(id, features.cgroup_parent.as_deref()) {
        Ok(cgroup) => cgroup,
        Err(CgroupError::NotMounted { .. }) if features.resources.is_none() => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    cgroup.create()?;
    let extra: Vec<_> = features
        .devices
        .iter()
        .map(|d| &d.allow)
        .chain(&features.device_rules)
        .flat_map(crate::cgroup::devices::rules_of)
        .collect();
    let limited = cgroup
        .limit_devices_with(features.privileged, &extra)
        .and_then(|()| match &features.resources {
            Some(resources) => cgroup.update(resources),
            None => Ok(()),
        });
    if let Err(err) = limited {
        let _ = cgroup.remove();
        return Err(err.into());
    }
    Ok(Some(cgroup))
}

/// The monitor's life, shared by `run` and `exec`: `before_fork` prepares the monitor (it
/// decides the PID namespace the child lands in), `born_into` is the v2 cgroup to create the
/// child in, `after_fork` acts on the child (its host PID, and whether it was born in the
/// cgroup) before the child may go on, `child` runs in the forked child and returns only with the error
/// that kept it from exec'ing; it gets the report pipe's descriptor and the [`Go`] it must wait
/// for before running anything of the container.
fn supervise(
    id: &str,
    sync: &mut SyncPipe,
    before_fork: impl FnOnce() -> Result<(), RunError>,
    born_into: Option<OwnedFd>,
    after_fork: impl FnOnce(Pid, bool) -> Result<(), RunError>,
    child: impl FnOnce(RawFd, Go) -> ContainerError,
) -> Result<i32, RunError> {
    ensure_single_threaded()?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(RunError::monitor("set parent death signal"))?;
    check_parent_alive(
        std::env::var(PARENT_PID_ENV).ok().as_deref(),
        nix::unistd::getppid().as_raw(),
    )?;
    // Before any namespace is joined or made: the child inherits it, so from inside the
    // container the runtime's /proc/PID/exe, fd/, mem need CAP_SYS_PTRACE (see
    // crate::exeseal). The user's program is dumpable again after its execve.
    nix::sys::prctl::set_dumpable(false)
        .map_err(RunError::monitor("make the runtime non-dumpable"))?;
    before_fork()?;
    let (report_read, report_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(RunError::monitor("create report pipe"))?;
    let (go_read, go_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(RunError::monitor("create start pipe"))?;
    let (fork, born_in_cgroup) = fork_child(born_into)?;
    let child_pid = match fork {
        ForkResult::Child => {
            drop(report_read);
            drop(go_write);
            // The container must not hold the engine's sync pipe open.
            drop(sync.0.take());
            child_main(child, report_write, go_read)
        }
        ForkResult::Parent { child } => child,
    };
    drop(report_write);
    drop(go_read);
    if let Err(err) = after_fork(child_pid, born_in_cgroup) {
        // The child is still waiting for the go: it never ran anything of the container.
        let _ = nix::sys::signal::kill(child_pid, Signal::SIGKILL);
        let _ = wait_for(child_pid);
        return Err(err);
    }
    // A child that died meanwhile is found by the report below.
    let _ = File::from(go_write).write_all(b"g");
    let mut report = Vec::new();
    let read = File::from(report_read).read_to_end(&mut report);
    if read.is_ok() && report.is_empty() {
        sync.send(&SyncMessage::Started {
            pid: child_pid.as_raw(),
        });
        return wait_for(child_pid);
    }
    let failed = serde_json::from_slice::<Failed>(&report).unwrap_or_else(|_| Failed {
        message: format!(
            "container init failed without a report: {}",
            String::from_utf8_lossy(&report)
        ),
        exit_code: 1,
    });
    // Reap the child; its own status is always the failure's exit code.
    let _ = wait_for(child_pid);
    Ok(report_failure(sync, id, &failed))
}

/// Forks the container's process, into the cgroup `born_into` when there is one and the
/// kernel supports it (5.7+); returns whether the child was born in that cgroup. Any failure
/// of `clone3` falls back to `fork`: the caller then writes `cgroup.procs`, which names what is
/// wrong if the cgroup cannot take the process at all.
///
/// MUST be called from a single-threaded process (as `fork`).
fn fork_child(born_into: Option<OwnedFd>) -> Result<(ForkResult, bool), RunError> {
    if let Some(dir) = born_into {
        if let Ok(fork) = clone_into_cgroup(&dir) {
            return Ok((fork, true));
        }
    }
    // SAFETY: the process is single-threaded (the caller's contract), so the child can run
    // arbitrary code after fork without meeting a lock held by a thread that does not exist
    // there.
    let fork = unsafe { nix::unistd::fork() }.map_err(RunError::monitor("fork"))?;
    Ok((fork, false))
}

/// The kernel's `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`); the libc crate
/// does not define it for every target.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` from linux/sched.h.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `clone3` with `CLONE_INTO_CGROUP` and no new stack: a `fork` whose child starts in the
/// cgroup `dir`.
fn clone_into_cgroup(dir: &OwnedFd) -> Result<ForkResult, Errno> {
    let mut args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size passed; without CLONE_VM or a stack the
    // child gets a copy of this address space and returns here like a `fork` child. The
    // process is single-threaded (the caller's contract), so no lock is held by a thread
    // missing from the child; the child only runs the runtime's setup and then execs. libc did
    // not see this clone, so its cached thread id is the parent's: the child must not call what
    // uses it (musl's `raise`, `pthread_kill`), and it does not.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent {
            child: Pid::from_raw(pid as i32),
        }),
    }
}

/// Checks, after `PR_SET_PDEATHSIG` is armed, that the engine which spawned the monitor is
/// still its parent. The signal only fires for a parent that dies *after* it is armed: an
/// engine killed between spawning the runtime and this point has already reparented the
/// monitor (to PID 1 or a subreaper), and a container started now would run unmanaged
/// (prctl(2) advises this very check). `expected` is the [`PARENT_PID_ENV`] value; a manual
/// run without it is not checked.
fn check_parent_alive(expected: Option<&str>, parent: i32) -> Result<(), RunError> {
    match expected.and_then(|pid| pid.trim().parse::<i32>().ok()) {
        Some(engine) if engine != parent => Err(RunError::EngineGone { engine }),
        _ => Ok(()),
    }
}

/// The monitor's go: the child is in the container's cgroup.
struct Go(OwnedFd);

impl Go {
    /// Blocks until the monitor gives the go; a monitor that gave up (and reports why itself)
    /// ends the child here.
    fn wait(self) {
        let mut byte = [0u8; 1];
        if !matches!(File::from(self.0).read(&mut byte), Ok(1)) {
            // SAFETY: _exit ends the forked child without running the parent's handlers.
            unsafe { libc::_exit(1) }
        }
    }
}

/// The child's life: set up, wait for the monitor's go, exec, or report why not and exit.
fn child_main(child: impl FnOnce(RawFd, Go) -> ContainerError, report: OwnedFd, go: OwnedFd) -> ! {
    // Armed at once so a monitor killed mid-setup takes the child along; the setup arms it
    // again after changing the uid, which clears it.
    let error = match nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        Err(errno) => ContainerError::Process {
            what: "set parent death signal",
            source: errno.into(),
        },
        Ok(()) => child(report.as_raw_fd(), Go(go)),
    };
    let failed = error.to_failed();
    if let Ok(bytes) = serde_json::to_vec(&failed) {
        let _ = File::from(report).write_all(&bytes);
    }
    // SAFETY: _exit ends the forked child without running the parent's atexit handlers or
    // flushing buffers copied from it.
    unsafe { libc::_exit(failed.exit_code) }
}

fn wait_for(child: Pid) -> Result<i32, RunError> {
    loop {
        match waitpid(child, None) {
            Ok(status) => {
                if let Some(code) = exit_code(status) {
                    return Ok(code);
                }
            }
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(RunError::monitor("wait for the container")(errno)),
        }
    }
}

/// `fork` in a multi-threaded process leaves the child with locks nobody will release, and
/// `unshare(CLONE_NEWNS)`/`setns` refuse to run there: check rather than hang.
fn ensure_single_threaded() -> Result<(), RunError> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        // Without /proc we cannot tell; the kernel calls will fail loudly if it matters.
        return Ok(());
    };
    let threads = status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(1);
    if threads > 1 {
        return Err(RunError::Threaded { threads });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_monitor_whose_engine_died_before_pdeathsig_gives_up() {
        // Reparented to PID 1: the engine that passed 4242 is gone.
        let err = check_parent_alive(Some("4242"), 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the engine (pid 4242) that started the runtime is gone"
        );
        assert!(check_parent_alive(Some("4242"), 4242).is_ok());
        // A manual run (no engine PID) is not checked.
        assert!(check_parent_alive(None, 1).is_ok());
    }
}
