//! Filesystems: leaving the initramfs rootfs for a bind mount of it, the early API mounts, and the
//! unmounting done at shutdown.
//!
//! The kernel unpacks the initramfs into *rootfs*, the root of the initial mount namespace,
//! which can never be unmounted or moved, so `pivot_root(2)` fails on it with EINVAL — and
//! the container runtime needs pivot_root (container rootfs mounts must have a parent that
//! can be pivoted). So PID 1 first bind-mounts rootfs onto a directory of itself, moves that
//! bind mount over `/`, chroots into it and re-executes `/init`: the new root has a parent
//! mount, and no file is copied (copying the 37 MB image into a tmpfs took a third of a second
//! of a TCG boot, docs/boot-timings.md).

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// What can go wrong with mounts.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A mount(2) call failed.
    #[error("cannot mount {what} on {target}")]
    Mount {
        /// The source or filesystem type.
        what: String,
        /// The mount point.
        target: PathBuf,
        /// The errno.
        #[source]
        source: nix::errno::Errno,
    },
    /// chroot/chdir/exec while switching root failed.
    #[error("switching root failed at {step}")]
    Switch {
        /// The step.
        step: &'static str,
        /// The errno.
        #[source]
        source: nix::errno::Errno,
    },
}

/// One line of `/proc/self/mountinfo`, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// The mount's id.
    pub id: u32,
    /// The id of the mount it is attached to (its own for the root of a namespace).
    pub parent: u32,
    /// Mount point (octal escapes decoded).
    pub mount_point: String,
    /// Filesystem type.
    pub fstype: String,
}

/// Decodes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(value) = field
                .get(i + 1..i + 4)
                .and_then(|oct| u8::from_str_radix(oct, 8).ok())
            {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut fields = left.split_whitespace();
            let id = fields.next()?.parse().ok()?;
            let parent = fields.next()?.parse().ok()?;
            let mount_point = fields.nth(2)?;
            let fstype = right.split_whitespace().next()?;
            Some(MountInfo {
                id,
                parent,
                mount_point: unescape(mount_point),
                fstype: fstype.to_owned(),
            })
        })
        .collect()
}

/// Whether the topmost mount on `/` is the initramfs rootfs itself: the root of the initial
/// mount namespace, the one mount that is its own parent. A bind mount of rootfs (what
/// [`switch_root`] makes) has the same type but a parent, which is what `pivot_root(2)` needs.
pub fn root_is_initial_rootfs(mounts: &[MountInfo]) -> bool {
    mounts
        .iter()
        .rev()
        .find(|m| m.mount_point == "/")
        .is_some_and(|m| m.fstype == "rootfs" && m.id == m.parent)
}

/// Mount points at or below any of `prefixes`, in the order to unmount them (last mounted,
/// i.e. deepest, first).
pub fn unmount_order(mounts: &[MountInfo], prefixes: &[&str]) -> Vec<String> {
    mounts
        .iter()
        .rev()
        .filter(|m| {
            prefixes.iter().any(|p| {
                m.mount_point == *p
                    || m.mount_point
                        .strip_prefix(p)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
        })
        .map(|m| m.mount_point.clone())
        .collect()
}

fn mount_err(what: &str, target: &Path) -> impl FnOnce(nix::errno::Errno) -> MountError {
    let what = what.to_owned();
    let target = target.to_owned();
    move |source| MountError::Mount {
        what,
        target,
        source,
    }
}

/// Mounts a pseudo filesystem, creating the mount point.
fn mount_fs(
    fstype: &str,
    target: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    let target = Path::new(target);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(target)
        .ok();
    mount(Some(fstype), target, Some(fstype), flags, data).map_err(mount_err(fstype, target))
}

/// Whether `/` is still the initramfs rootfs (mounts /proc temporarily to find out).
pub fn on_rootfs() -> Result<bool, MountError> {
    mount_fs("proc", "/proc", MsFlags::empty(), None)?;
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let result = root_is_initial_rootfs(&parse_mountinfo(&info));
    umount2("/proc", MntFlags::MNT_DETACH).map_err(mount_err("umount", Path::new("/proc")))?;
    Ok(result)
}

/// Makes a bind mount of rootfs the root (see the module's doc) and re-executes `/init` there.
///
/// Only returns on failure, with the error.
pub fn switch_root(args: &[String]) -> MountError {
    match try_switch_root(args) {
        Ok(never) => match never {},
        Err(err) => err,
    }
}

fn try_switch_root(args: &[String]) -> Result<std::convert::Infallible, MountError> {
    let new_root = Path::new("/.newroot");
    fs::DirBuilder::new().mode(0o755).create(new_root).ok();
    mount(
        Some("/"),
        new_root,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(mount_err("bind of /", new_root))?;
    let switch = |step| move |source| MountError::Switch { step, source };
    // Until the move, a failure leaves PID 1 on rootfs as it found it: no stray bind mount
    // at /.newroot, no working directory inside it.
    let undo = |err: MountError| {
        let _ = nix::unistd::chdir("/");
        let _ = umount2(new_root, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(new_root);
        err
    };
    nix::unistd::chdir(new_root)
        .map_err(switch("chdir"))
        .map_err(undo)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(switch("move"))
        .map_err(undo)?;
    nix::unistd::chroot(".").map_err(switch("chroot"))?;
    nix::unistd::chdir("/").map_err(switch("chdir /"))?;
    // The mount point is an empty directory of rootfs, seen again through the bind mount.
    let _ = fs::remove_dir(new_root);
    let c_args: Vec<CString> = args
        .iter()
        .filter_map(|a| CString::new(a.as_str()).ok())
        .collect();
    nix::unistd::execv(c"/init", &c_args).map_err(switch("exec /init"))
}

/// One early mount: source, fstype, target, flags, data, mode of the mount point.
type EarlyMount = (
    &'static str,
    &'static str,
    &'static str,
    MsFlags,
    Option<&'static str>,
    u32,
);

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run, /tmp and cgroup2, and makes `/` shared.
///
/// Each mount is attempted even if an earlier one failed; the failures are returned.
pub fn early_mounts() -> Vec<MountError> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let tmpfs_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let mut errors = Vec::new();
    // Shared propagation, so container bind mounts with rshared/rslave work (as on systemd).
    if let Err(err) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    ) {
        errors.push(mount_err("make-rshared", Path::new("/"))(err));
    }
    let steps: [EarlyMount; 8] = [
        ("proc", "proc", "/proc", nosuid_nodev_noexec, None, 0o555),
        ("sysfs", "sysfs", "/sys", nosuid_nodev_noexec, None, 0o555),
        (
            "devtmpfs",
            "devtmpfs",
            "/dev",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
            0o755,
        ),
        (
            "devpts",
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
            0o755,
        ),
        (
            "shm",
            "tmpfs",
            "/dev/shm",
            tmpfs_flags,
            Some("mode=1777"),
            0o1777,
        ),
        (
            "run",
            "tmpfs",
            "/run",
            tmpfs_flags,
            Some("mode=0755"),
            0o755,
        ),
        (
            "tmp",
            "tmpfs",
            "/tmp",
            tmpfs_flags,
            Some("mode=1777"),
            0o1777,
        ),
        (
            "cgroup2",
            "cgroup2",
            "/sys/fs/cgroup",
            nosuid_nodev_noexec,
            Some("nsdelegate"),
            0o755,
        ),
    ];
    for (source, fstype, target, flags, data, mode) in steps {
        let target = Path::new(target);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(target)
            .ok();
        if let Err(err) = mount(Some(source), target, Some(fstype), flags, data) {
            errors.push(mount_err(fstype, target)(err));
        }
    }
    // /var/run is /run on every modern distribution; programs use both names.
    if fs::read_link("/var/run").is_err() {
        let _ = fs::remove_dir("/var/run");
        let _ = std::os::unix::fs::symlink("/run", "/var/run");
    }
    // Standard /dev links devtmpfs does not create.
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
    ] {
        if fs::symlink_metadata(link).is_err() {
            let _ = std::os::unix::fs::symlink(target, link);
        }
    }
    errors
}

/// Points stdin, stdout and stderr at `/dev/console`.
pub fn open_console() {
    use std::os::fd::AsRawFd;
    if let Ok(console) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors; `console` stays open for the call.
            unsafe {
                libc::dup2(console.as_raw_fd(), fd);
            }
        }
    }
}

/// Unmounts everything at or below `prefixes`, deepest first; a mount that stays busy is
/// remounted read-only so that its data is consistent on power-off.
pub fn unmount_all(prefixes: &[&str]) {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for target in unmount_order(&parse_mountinfo(&info), prefixes) {
        match umount2(target.as_str(), MntFlags::empty()) {
            Ok(()) => tracing::info!("shutdown: unmounted {target}"),
            Err(err) => {
                let ro = mount(
                    None::<&str>,
                    target.as_str(),
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                );
                tracing::warn!(
                    "shutdown: cannot unmount {target} ({err}); remount read-only: {}",
                    if ro.is_ok() { "ok" } else { "failed" }
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
1 1 0:2 / / rw - rootfs rootfs rw
22 1 0:21 / /proc rw,nosuid - proc proc rw
30 1 254:0 / /mnt/data rw,noatime shared:5 - ext4 /dev/vda rw
31 1 254:0 /engine /var/lib/rmachine-engine rw shared:5 - ext4 /dev/vda rw
40 31 0:40 / /var/lib/rmachine-engine/containers/abc/merged rw - overlay overlay rw
41 1 0:41 / /mnt/data2 rw - tmpfs tmpfs rw
42 1 0:42 / /mnt/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn rootfs_is_detected() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!((mounts[0].id, mounts[0].parent), (1, 1));
        assert!(root_is_initial_rootfs(&mounts));
        // After the switch: a bind mount of rootfs, attached to rootfs (not shown in the chroot).
        let bound = parse_mountinfo("14 1 0:2 / / rw shared:1 - rootfs rootfs rw\n");
        assert!(!root_is_initial_rootfs(&bound));
        // Images from before: a tmpfs the files were copied into.
        let tmpfs_root = parse_mountinfo("5 1 0:5 / / rw shared:1 - tmpfs rootfs rw\n");
        assert!(!root_is_initial_rootfs(&tmpfs_root));
    }

    #[test]
    fn escapes_are_decoded() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts[6].mount_point, "/mnt/with space");
    }

    #[test]
    fn data_mounts_unmount_deepest_first() {
        let order = unmount_order(
            &parse_mountinfo(MOUNTINFO),
            &["/var/lib/rmachine-engine", "/mnt/data"],
        );
        assert_eq!(
            order,
            [
                "/var/lib/rmachine-engine/containers/abc/merged",
                "/var/lib/rmachine-engine",
                "/mnt/data",
            ]
        );
    }
}
