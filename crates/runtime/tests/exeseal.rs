//! Root tests of [`rmachine_runtime::exeseal`]: what a container holding `CAP_SYS_PTRACE` could
//! do through `/proc/PID/exe` of a runtime running from each kind of sealed executable. The
//! executable sealed here is this test binary's own; it must come out unchanged.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rmachine_runtime::exeseal;

/// Returns early (passing) when not root: the overlay needs `CAP_SYS_ADMIN`.
macro_rules! require_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: this test needs root");
            return;
        }
    };
}

/// Mode, owner and contents of a file.
fn snapshot(path: &Path) -> (u32, u32, u32, Vec<u8>) {
    let meta = fs::metadata(path).expect("stat the test binary");
    let contents = fs::read(path).expect("read the test binary");
    (meta.mode(), meta.uid(), meta.gid(), contents)
}

/// The magic link a container would follow: `/proc/self/fd/N` behaves as `/proc/PID/exe`.
fn link(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Tries every change through `path`; returns the names of those that succeeded.
fn attack(path: &Path) -> Vec<&'static str> {
    let mut done = Vec::new();
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in the path");
    if nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        path,
        nix::sys::stat::Mode::from_bits_truncate(0o6777),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .is_ok()
    {
        done.push("chmod");
    }
    if nix::unistd::chown(path, Some(1.into()), Some(1.into())).is_ok() {
        done.push("chown");
    }
    // SAFETY: valid NUL-terminated name and path, and a value buffer of the length given.
    let xattr = unsafe {
        libc::setxattr(
            c_path.as_ptr(),
            c"trusted.rmachine".as_ptr(),
            b"x".as_ptr().cast(),
            1,
            0,
        )
    };
    if xattr == 0 {
        done.push("setxattr");
    }
    if let Ok(mut file) = fs::OpenOptions::new().write(true).open(path) {
        if file.write_all(b"x").is_ok() {
            done.push("write");
        }
    }
    if fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .is_ok_and(|f| f.metadata().is_ok_and(|m| m.len() == 0))
    {
        done.push("truncate");
    }
    done
}

fn contents(fd: &OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    fs::File::open(link(fd))
        .and_then(|mut f| f.read_to_end(&mut out))
        .expect("read the sealed executable");
    out
}

#[test]
fn overlay_view_refuses_every_change() {
    require_root!();
    let exe = std::env::current_exe().expect("the test binary");
    let before = snapshot(&exe);
    let scratch = tempfile::tempdir().expect("scratch dir");
    let sealed = exeseal::overlay_exe(scratch.path()).expect("overlayfs view of the binary");
    assert_eq!(attack(&link(&sealed)), Vec::<&str>::new());
    assert_eq!(contents(&sealed), before.3);
    assert!(snapshot(&exe) == before, "the test binary changed");
}

#[test]
fn memfd_copy_keeps_its_contents_and_the_binary() {
    require_root!();
    let exe = std::env::current_exe().expect("the test binary");
    let before = snapshot(&exe);
    let sealed = exeseal::memfd_exe().expect("sealed memfd copy");
    let done = attack(&link(&sealed));
    // Metadata changes only reach the copy; its contents are sealed.
    assert!(
        !done.contains(&"write") && !done.contains(&"truncate"),
        "{done:?}"
    );
    assert_eq!(contents(&sealed), before.3);
    assert!(snapshot(&exe) == before, "the test binary changed");
}

#[test]
fn overlay_refuses_a_scratch_dir_inside_the_binarys_directory() {
    require_root!();
    let exe = std::env::current_exe().expect("the test binary");
    let dir = exe.parent().expect("the test binary's directory");
    let scratch = tempfile::tempdir_in(dir).expect("scratch dir beside the binary");
    // Nested layers: the caller falls back to the memfd copy.
    assert!(exeseal::overlay_exe(scratch.path()).is_err());
    assert!(exeseal::sealed_exe(scratch.path()).is_ok());
}
