//! The synchronous container runtime: namespaces, overlayfs rootfs, pivot_root, exec; run as its
//! own process.
//!
//! The engine never forks containers itself: it writes a [`spec::RuntimeSpec`] into the
//! container's state directory and spawns `rmachine-runtime run DIR` (see [`spec`] for the whole
//! contract). This crate is also a library so the engine can share the spec types, and so the
//! guest's multi-call `rmachine-init` can run [`main_entry`] when invoked as `rmachine-runtime`.
//!
//! Modules, in the order a container meets them: [`run`] (the monitor process), [`container`]
//! (the child between fork and exec), [`exeseal`] (the sealed executable the runtime re-runs from
//! before anything else), [`rootfs`] (mounts), [`lookup`] (finding the command),
//! [`status`] (exit codes). Kernel calls go through [`syscall::Syscall`].
#![warn(missing_docs)]

use std::ffi::OsString;
use std::path::Path;

pub mod caps;
pub mod cgroup;
pub mod container;
pub mod exeseal;
pub mod init;
pub mod lookup;
pub mod rootfs;
pub mod run;
pub mod seccomp;
pub mod spec;
pub mod status;
pub mod syscall;

const USAGE: &str = "usage: rmachine-runtime run DIR\n       rmachine-runtime exec DIR EXEC_JSON";

/// The runtime's command line: `args` is the whole argv (`args[0]` is the program name).
/// Returns the process exit code.
///
/// MUST be called before the process starts any thread (the runtime forks and changes
/// namespaces); a multi-threaded caller gets an error instead of a container.
pub fn main_entry(args: Vec<OsString>) -> i32 {
    let command = args.get(1).and_then(|c| c.to_str());
    let rest = args.get(2..).unwrap_or_default();
    match (command, rest) {
        (Some("run"), [dir]) => {
            sealed(&args, dir).unwrap_or_else(|| run::run(Path::new(dir), &syscall::LinuxSyscall))
        }
        (Some("exec"), [dir, exec]) => sealed(&args, dir)
            .unwrap_or_else(|| run::exec(Path::new(dir), Path::new(exec), &syscall::LinuxSyscall)),
        (Some("-h" | "--help" | "help"), []) => {
            println!("{USAGE}");
            0
        }
        _ => {
            eprintln!("rmachine-runtime: bad arguments\n{USAGE}");
            2
        }
    }
}

/// Re-executes the runtime from a sealed executable unless it already runs from one (see
/// [`exeseal`]); returns the exit code of a failure to do so, reported as the container's.
fn sealed(args: &[OsString], dir: &OsString) -> Option<i32> {
    let dir = Path::new(dir);
    match exeseal::ensure_sealed(args, dir) {
        Ok(()) => None,
        Err(err) => Some(run::refuse(dir, &run::RunError::Seal(err))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_arguments_exit_2() {
        let argv = |args: &[&str]| args.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(main_entry(argv(&["rmachine-runtime"])), 2);
        assert_eq!(main_entry(argv(&["rmachine-runtime", "run"])), 2);
        assert_eq!(main_entry(argv(&["rmachine-runtime", "run", "a", "b"])), 2);
        assert_eq!(main_entry(argv(&["rmachine-runtime", "start", "a"])), 2);
        assert_eq!(main_entry(argv(&["rmachine-runtime", "--help"])), 0);
    }
}
