//! PID 1 proper: a small synchronous loop that reaps zombies and turns signals into shutdown.
//!
//! Design: PID 1 does the work that must happen before anything else runs (leave rootfs,
//! mount the API filesystems, open the console) and then forks the [`supervisor`], which runs
//! tokio. PID 1 itself stays single-threaded with every signal it cares about blocked, and
//! waits for them with `sigtimedwait`. That split keeps two things apart that conflict in one
//! process: PID 1 must `waitpid(-1)` to reap every orphan in the system, while tokio reaps its
//! own children by pid and would lose their exit statuses to a `waitpid(-1)` in the same
//! process. Orphans (daemonized processes, double-forked shells) are re-parented to PID 1 and
//! reaped here; the supervisor's children (engine, SSH sessions) stay with tokio.
//!
//! Shutdown: a signal to PID 1 is forwarded to the supervisor (SIGUSR2 = power off, SIGTERM =
//! reboot), which stops the engine and unmounts the data disk and exits with the [`Action`]
//! code; the power button reaches the supervisor directly. PID 1 then ends what is left,
//! syncs, unmounts (again, in case the supervisor could not) and calls `reboot(2)`.
//!
//! [`supervisor`]: crate::supervisor

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use rmachine_guest_config::timeline::{GuestStage, Stage};

use crate::{logging, mounts, supervisor, Action};

/// How long the supervisor gets to shut down after PID 1 forwarded a request: the engine's
/// 15 s stop timeout plus unmounting.
const SUPERVISOR_GRACE: Duration = Duration::from_secs(25);

/// What a signal sent to PID 1 asks for (busybox `poweroff` sends SIGUSR2, `halt` SIGUSR1,
/// `reboot` SIGTERM; the kernel sends SIGINT for Ctrl-Alt-Del and SIGPWR on power failure).
pub fn action_for(signal: Signal) -> Option<Action> {
    match signal {
        Signal::SIGUSR1 | Signal::SIGUSR2 | Signal::SIGPWR => Some(Action::PowerOff),
        Signal::SIGTERM | Signal::SIGINT => Some(Action::Reboot),
        _ => None,
    }
}

fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGPWR,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    set
}

/// Waits for one of `set`, at most `timeout`.
fn wait_signal(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let ts = libc::timespec {
        // `as _` rather than naming `libc::time_t`, which the libc crate deprecates on musl
        // (its width changes with musl 1.2); the timeouts used here are a few seconds.
        tv_sec: timeout.as_secs() as _,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    // SAFETY: `set` is a valid sigset_t for the call, `ts` a valid timespec, and a null
    // siginfo pointer is allowed.
    let signo = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    if signo < 0 {
        None
    } else {
        Signal::try_from(signo).ok()
    }
}

/// Reaps every exited child; returns the supervisor's status if it was among them.
fn reap(supervisor: Pid) -> Option<WaitStatus> {
    let mut found = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return found,
            Ok(status) => {
                if status.pid() == Some(supervisor) {
                    found = Some(status);
                }
            }
        }
    }
}

/// Pids of user-space processes other than PID 1 and `except` (kernel threads, which have
/// an empty command line, are left out: `kill(-1, …)` cannot end them anyway).
pub fn user_processes(except: &[u32]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != 1 && !except.contains(pid))
        .filter(|pid| {
            // Zombies also have an empty cmdline; they are gone once reaped.
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
        })
        .collect()
}

/// Runs PID 1 after the root switch; never returns.
pub fn run() -> ! {
    let mount_errors = mounts::early_mounts();
    mounts::open_console();
    logging::init();
    let init_started = logging::stage(Stage::InitStarted);
    for err in &mount_errors {
        tracing::error!("{}", crate::error_chain(err));
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    tracing::info!(
        "started as PID 1 (kernel {release}, rmachine {})",
        env!("CARGO_PKG_VERSION")
    );
    std::env::set_var(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    std::env::set_var("HOME", "/root");
    // Ctrl-Alt-Del becomes SIGINT to us instead of an immediate reboot.
    let _ = nix::sys::reboot::set_cad_enabled(false);

    let set = handled_signals();
    if let Err(err) = set.thread_block() {
        tracing::error!("cannot block signals: {err}");
    }
    let supervisor = spawn_supervisor(init_started);

    let mut requested: Option<Action> = None;
    let mut deadline: Option<Instant> = None;
    let action = loop {
        let timeout = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        let signal = wait_signal(&set, timeout);
        tracing::debug!("pid 1: woke up ({signal:?})");
        if let Some(status) = reap(supervisor) {
            break match status {
                WaitStatus::Exited(_, code) => match Action::from_code(code) {
                    Some(action) => action,
                    None => {
                        tracing::error!("supervisor exited with status {code}; powering off");
                        Action::PowerOff
                    }
                },
                other => {
                    tracing::error!("supervisor died ({other:?}); powering off");
                    Action::PowerOff
                }
            };
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(
                "shutdown: supervisor still busy after {}s; going on without it",
                SUPERVISOR_GRACE.as_secs()
            );
            break requested.unwrap_or(Action::PowerOff);
        }
        let Some(signal) = signal else { continue };
        let Some(action) = action_for(signal) else {
            continue;
        };
        if requested.is_none() {
            tracing::info!(
                "received {signal}; asking the supervisor to {}",
                action.verb()
            );
            requested = Some(action);
            deadline = Some(Instant::now() + SUPERVISOR_GRACE);
            let _ = kill(supervisor, action.supervisor_signal());
        }
    };
    finish(action, &set)
}

/// Forks the supervisor, handing it the [`Stage::InitStarted`] mark PID 1 printed (a boot
/// snapshot prints it again, see [`crate::boot_snapshot`]): the child is a fork without exec,
/// so the value crosses in its copy of our memory, with no environment variable to parse.
fn spawn_supervisor(init_started: GuestStage) -> Pid {
    // SAFETY: PID 1 is single-threaded here (no runtime, no threads started), so the child
    // may run arbitrary code after fork.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            // Signals are blocked in PID 1 for sigtimedwait; tokio needs them delivered.
            let _ = nix::sys::signal::sigprocmask(
                SigmaskHow::SIG_SETMASK,
                Some(&SigSet::empty()),
                None,
            );
            let code = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(runtime) => {
                    let action = runtime.block_on(supervisor::run(init_started));
                    // Dropping the runtime would wait for blocking reads that never end (the
                    // power button device); the process is exiting anyway.
                    runtime.shutdown_background();
                    action.code()
                }
                Err(err) => {
                    tracing::error!("cannot start the async runtime: {err}");
                    1
                }
            };
            std::process::exit(code);
        }
        Ok(ForkResult::Parent { child }) => {
            tracing::debug!("supervisor is pid {child}");
            child
        }
        Err(err) => {
            tracing::error!("cannot fork the supervisor: {err}; powering off");
            finish(Action::PowerOff, &handled_signals())
        }
    }
}

/// Last steps, in PID 1: end every process, sync, unmount, reboot or power off.
fn finish(action: Action, set: &SigSet) -> ! {
    let everyone = Pid::from_raw(-1);
    let _ = reap(Pid::from_raw(0));
    if !user_processes(&[]).is_empty() {
        tracing::info!("sending SIGTERM to remaining processes");
        let _ = kill(everyone, Signal::SIGTERM);
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            let _ = wait_signal(set, Duration::from_millis(50));
            let _ = reap(Pid::from_raw(0));
            if user_processes(&[]).is_empty() {
                break;
            }
        }
        if !user_processes(&[]).is_empty() {
            tracing::info!("sending SIGKILL to remaining processes");
            let _ = kill(everyone, Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(50));
            let _ = reap(Pid::from_raw(0));
        }
    }
    nix::unistd::sync();
    mounts::unmount_all(&supervisor::DATA_MOUNTS);
    nix::unistd::sync();
    tracing::info!("{} now", action.verb());
    let result = match action {
        Action::PowerOff => nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF),
        Action::Reboot => nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT),
    };
    // reboot(2) only returns on error; PID 1 must never exit (the kernel would panic).
    tracing::error!("reboot(2) failed: {result:?}");
    loop {
        let _ = wait_signal(set, Duration::from_secs(3600));
        let _ = reap(Pid::from_raw(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_and_kernel_signals_map_to_actions() {
        assert_eq!(
            action_for(Signal::SIGUSR2),
            Some(Action::PowerOff),
            "busybox poweroff"
        );
        assert_eq!(
            action_for(Signal::SIGUSR1),
            Some(Action::PowerOff),
            "busybox halt"
        );
        assert_eq!(action_for(Signal::SIGPWR), Some(Action::PowerOff));
        assert_eq!(
            action_for(Signal::SIGTERM),
            Some(Action::Reboot),
            "busybox reboot"
        );
        assert_eq!(
            action_for(Signal::SIGINT),
            Some(Action::Reboot),
            "ctrl-alt-del"
        );
        assert_eq!(action_for(Signal::SIGHUP), None);
    }
}
