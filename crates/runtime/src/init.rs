//! `--init`: a tiny init as the container's PID 1, like Docker's `docker-init` (tini).
//!
//! The container's first process, once set up ([`crate::container::setup_with`] already gave
//! it the `/sbin/docker-init -- CMD…` title `ps` shows), blocks every signal and forks: the
//! child execs the command in its own process group (the terminal's foreground one), while
//! PID 1 waits for signals. It forwards each one to the child, reaps every zombie the
//! namespace hands it (orphans are re-parented to PID 1), and exits with the child's status
//! (its code, or 128+N when signal N killed it) as soon as the child is gone.
//!
//! It lives in the runtime's own process rather than in a separate binary bound into the
//! container, so it needs nothing from the image (not even a libc).

use std::os::fd::{AsFd, RawFd};

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::container::{self, ContainerError, Exec};
use crate::status::exit_code;
use crate::syscall::{Errno, Syscall};

/// Runs `exec` as the child of an init (see the module docs). In the init, never returns; in
/// the child, returns only with the error that kept it from exec'ing, like
/// [`container::exec`].
///
/// `report` is the close-on-exec pipe whose EOF tells the monitor that the command was
/// exec'd: the init closes its copy so that only the child's exec decides.
///
/// MUST be called by a single-threaded process.
pub fn run(exec: &Exec, sys: &dyn Syscall, report: RawFd, terminal: bool) -> ContainerError {
    let signals = SigSet::all();
    // Blocked rather than handled: a namespace's PID 1 never gets signals it has no handler
    // for, but blocked ones are always queued, and sigwait takes them in order.
    if let Err(errno) = signals.thread_block() {
        return ContainerError::Process {
            what: "block signals",
            source: errno.into(),
        };
    }
    // SAFETY: the process is single-threaded (the runtime checks before its first fork), so
    // the child can run arbitrary code.
    match unsafe { nix::unistd::fork() } {
        Err(errno) => ContainerError::Process {
            what: "fork the init's child",
            source: errno.into(),
        },
        Ok(ForkResult::Child) => {
            // Like tini: its own process group, in the foreground of the terminal, so ^C
            // reaches it once, from the kernel, and not again through the init.
            let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
            if terminal {
                let _ = nix::unistd::tcsetpgrp(std::io::stdin().as_fd(), nix::unistd::getpid());
            }
            if let Err(errno) = sys.set_parent_death_signal() {
                return ContainerError::Process {
                    what: "set parent death signal",
                    source: errno.into(),
                };
            }
            // Unblocks the signals again before the command runs.
            container::exec(exec, sys)
        }
        Ok(ForkResult::Parent { child }) => {
            let _ = nix::unistd::close(report);
            let code = supervise(child, &signals);
            // SAFETY: _exit ends the init without running destructors of state copied from
            // the runtime; the container ends with it.
            unsafe { libc::_exit(code) }
        }
    }
}

/// Forwards signals to `child` and reaps zombies until `child` ends; returns its exit code.
fn supervise(child: Pid, signals: &SigSet) -> i32 {
    loop {
        let Ok(signal) = signals.wait() else {
            continue;
        };
        if signal != Signal::SIGCHLD {
            let _ = kill(child, signal);
            continue;
        }
        if let Some(code) = reap(child) {
            return code;
        }
    }
}

/// Reaps every finished process; returns `child`'s exit code if it is one of them.
fn reap(child: Pid) -> Option<i32> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return None,
            Ok(status) if status.pid() == Some(child) => {
                if let Some(code) = exit_code(status) {
                    return Some(code);
                }
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
}
