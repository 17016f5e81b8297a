//! The default seccomp filter installed in a real process: what Docker's default profile
//! refuses is refused with its errno, what it allows still works. Needs root (installing a
//! filter without no_new_privs takes CAP_SYS_ADMIN).

use rmachine_runtime::caps::DEFAULT_CAPABILITIES;
use rmachine_runtime::seccomp::Filter;

mod common;
use common::cannot_run;

fn default_caps() -> u64 {
    DEFAULT_CAPABILITIES
        .iter()
        .fold(0, |mask, cap| mask | 1 << cap)
}

/// Forks a child that installs `filter` and then runs `probe`, which returns the child's exit
/// status; only async-signal-safe calls may happen in `probe` (the test harness is threaded).
fn in_filtered_child(filter: &Filter, probe: fn() -> i32) -> i32 {
    // SAFETY: the child only calls prctl, raw system calls and _exit, all async-signal-safe.
    match unsafe { libc::fork() } {
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            let status = match filter.install() {
                Ok(()) => probe(),
                Err(_) => 99,
            };
            // SAFETY: ends the forked child without running the parent's handlers.
            unsafe { libc::_exit(status) }
        }
        pid => {
            let mut status = 0;
            // SAFETY: waits for the child just forked; `status` is a valid out pointer.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status), "child died: {status:#x}");
            libc::WEXITSTATUS(status)
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Each probe answers 0 for "as Docker's default profile", else the step that differed.
fn docker_default_probe() -> i32 {
    // SAFETY: raw system calls with valid or null arguments.
    unsafe {
        if libc::unshare(libc::CLONE_NEWUTS) != -1 || errno() != libc::EPERM {
            return 1;
        }
        if libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) != -1 || errno() != libc::EPERM {
            return 2;
        }
        if libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0) != -1
            || errno() != libc::ENOSYS
        {
            return 3;
        }
        if libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) != -1 || errno() != libc::EPERM {
            return 4;
        }
        if libc::personality(0xffff_ffff) == -1 {
            return 5;
        }
        if libc::personality(0x0040_0000) != -1 || errno() != libc::EPERM {
            return 6;
        }
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return 7;
        }
        libc::close(fd);
        if libc::getpid() <= 0 {
            return 8;
        }
        // open_tree_attr (467), newer than the policy: ENOSYS whatever the kernel has.
        if libc::syscall(
            467,
            -1,
            std::ptr::null::<u8>(),
            0,
            std::ptr::null::<u8>(),
            0,
        ) != -1
            || errno() != libc::ENOSYS
        {
            return 11;
        }
        // A plain fork (clone without namespace flags) still works.
        match libc::fork() {
            -1 => return 9,
            0 => libc::_exit(0),
            pid => {
                let mut status = 0;
                if libc::waitpid(pid, &mut status, 0) != pid
                    || !libc::WIFEXITED(status)
                    || libc::WEXITSTATUS(status) != 0
                {
                    return 10;
                }
            }
        }
    }
    0
}

fn sys_admin_probe() -> i32 {
    // SAFETY: raw system calls with valid arguments.
    unsafe {
        // With CAP_SYS_ADMIN the namespace group is allowed again.
        if libc::unshare(libc::CLONE_NEWUTS) != 0 {
            return 1;
        }
        // keyctl stays refused whatever the capabilities.
        if libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) != -1 || errno() != libc::EPERM {
            return 2;
        }
    }
    0
}

#[test]
fn the_default_filter_refuses_what_dockers_profile_refuses() {
    if !nix::unistd::geteuid().is_root() {
        cannot_run("needs root");
        return;
    }
    let filter = Filter::docker_default(default_caps());
    assert_eq!(in_filtered_child(&filter, docker_default_probe), 0);
}

#[test]
fn cap_sys_admin_lifts_the_namespace_group() {
    if !nix::unistd::geteuid().is_root() {
        cannot_run("needs root");
        return;
    }
    let filter = Filter::docker_default(default_caps() | 1 << 21);
    assert_eq!(in_filtered_child(&filter, sys_admin_probe), 0);
}
