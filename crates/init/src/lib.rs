//! The guest's PID 1: mounts, data disk, network, SSH server, engine supervision.
//!
//! Boot, as the console shows it (every line stamped with the time since the kernel started):
//!
//! 1. [`mounts`]: the kernel runs `/init` on the initramfs *rootfs*; PID 1 bind-mounts rootfs,
//!    moves the bind over `/` and re-executes itself there (pivot_root, which containers need,
//!    fails on rootfs itself; no file is copied), then mounts /proc, /sys, /dev, /run, cgroup2… and makes `/` shared.
//! 2. [`pid1`]: PID 1 forks the [`supervisor`] and from then on only reaps zombies and turns
//!    signals into shutdown requests (see its docs for why the two are separate processes).
//! 3. [`supervisor`] (tokio): [`modules`] → the [`boot_snapshot`] point, if the host asks for
//!    one (wait for its go; distrust what the boot learnt before) → configuration drive
//!    (found by content) → [`disk`] + [`config`] (data disk formatted when blank) in parallel
//!    with [`net`] (the drive's static address, else DHCP) → [`sshd`] → [`shares`] →
//!    [`engine`]; then waits for a shutdown request or the [`power`] button. Each stage prints
//!    a timeline line ([`logging::stage`]).
//!
//! The same binary is a multi-call program: as `rmachine-runtime` it is the container runtime,
//! and `rmachine-init shutdown` asks a running PID 1 to power off.
#![warn(missing_docs)]

pub mod boot_snapshot;
pub mod clock;
pub mod config;
pub mod disk;
pub mod engine;
pub mod forward;
pub mod logging;
pub mod modules;
pub mod mounts;
pub mod net;
pub mod pid1;
pub mod power;
pub mod sftp;
pub mod sftpfs;
pub mod shares;
pub mod sshd;
pub mod supervisor;

use nix::sys::signal::Signal;

/// How the machine goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `reboot(RB_POWER_OFF)`: the hypervisor sees the VM stop.
    PowerOff,
    /// `reboot(RB_AUTOBOOT)`: the VM restarts with the same kernel and disks.
    Reboot,
}

impl Action {
    /// Exit code by which the supervisor tells PID 1 what to do.
    pub fn code(self) -> i32 {
        match self {
            Action::PowerOff => 10,
            Action::Reboot => 11,
        }
    }

    /// Inverse of [`Action::code`]; any other code means the supervisor failed.
    pub fn from_code(code: i32) -> Option<Action> {
        match code {
            10 => Some(Action::PowerOff),
            11 => Some(Action::Reboot),
            _ => None,
        }
    }

    /// The signal that asks the supervisor (or PID 1) for this action.
    pub fn supervisor_signal(self) -> Signal {
        match self {
            Action::PowerOff => Signal::SIGUSR2,
            Action::Reboot => Signal::SIGTERM,
        }
    }

    /// For log lines: "power off" or "reboot".
    pub fn verb(self) -> &'static str {
        match self {
            Action::PowerOff => "power off",
            Action::Reboot => "reboot",
        }
    }
}

/// An error and its causes, joined with `: ` (for console lines).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_codes_round_trip_and_others_are_failures() {
        for action in [Action::PowerOff, Action::Reboot] {
            assert_eq!(Action::from_code(action.code()), Some(action));
        }
        assert_eq!(Action::from_code(0), None);
        assert_eq!(Action::from_code(101), None, "a panic is not a request");
    }
}
