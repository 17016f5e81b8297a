//! Host folders shared into the guest (virtio-fs or virtio-9p), mounted at the paths the host
//! asked for.
//!
//! The configuration drive lists each share as a `mount_tag` the hypervisor exports and a guest
//! path, usually the host path itself so that `docker run -v "$PWD":/src` typed on the host
//! names the same folder inside the guest. A share that cannot be mounted is logged on the
//! console and skipped: the machine stays usable without it.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use rmachine_guest_config::report::{ShareStatus, SharesReport};
use rmachine_guest_config::{ShareFilesystem, ShareMount};

/// The 9p payload size: the largest the kernel's virtio transport accepts (500 KB) — the
/// default of 8 KiB makes large reads and writes many times slower.
pub const MSIZE: u32 = 512_000;

/// What can go wrong mounting a share.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The guest path is not absolute or climbs with `..`.
    #[error("share {tag}: guest path {path:?} is not a plain absolute path")]
    BadPath {
        /// The share's tag.
        tag: String,
        /// The guest path given.
        path: String,
    },
    /// The mount point could not be created.
    #[error("share {tag}: cannot create {path}")]
    MountPoint {
        /// The share's tag.
        tag: String,
        /// The mount point.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the mount.
    #[error("share {tag}: cannot mount on {path}")]
    Mount {
        /// The share's tag.
        tag: String,
        /// The mount point.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::errno::Errno,
    },
}

/// The mount flags and filesystem options of a share.
///
/// 9p: `cache=mmap` keeps the guest coherent with the host (no page cache of file contents,
/// which the host may change behind the guest's back) while still allowing shared writable
/// mmap, which programs run from a bind mount (databases, compilers) use. virtio-fs takes no
/// options: coherence is virtiofsd's `cache=` setting, chosen on the host.
pub fn mount_options(share: &ShareMount) -> (MsFlags, String) {
    let mut flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    if share.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let options = match share.filesystem {
        ShareFilesystem::NineP => {
            format!("trans=virtio,version=9p2000.L,msize={MSIZE},cache=mmap")
        }
        ShareFilesystem::Virtiofs => String::new(),
    };
    (flags, options)
}

/// The guest path of a share, if it is absolute and has no `..` (the host validated it; a
/// drive from elsewhere must not mount over `/` or climb out of a directory).
pub fn guest_path(share: &ShareMount) -> Result<PathBuf, ShareError> {
    let path = Path::new(&share.guest_path);
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && path.components().count() > 1;
    if plain {
        Ok(path.to_owned())
    } else {
        Err(ShareError::BadPath {
            tag: share.tag.clone(),
            path: share.guest_path.clone(),
        })
    }
}

/// Creates the mount point and mounts one share.
pub fn mount(share: &ShareMount) -> Result<PathBuf, ShareError> {
    let path = guest_path(share)?;
    fs::create_dir_all(&path).map_err(|source| ShareError::MountPoint {
        tag: share.tag.clone(),
        path: path.clone(),
        source,
    })?;
    let (flags, options) = mount_options(share);
    nix::mount::mount(
        Some(share.tag.as_str()),
        &path,
        Some(share.filesystem.fstype()),
        flags,
        (!options.is_empty()).then_some(options.as_str()),
    )
    .map_err(|source| ShareError::Mount {
        tag: share.tag.clone(),
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// How long virtio-fs devices the host plugs in after boot get to arrive (see
/// [`wait_for_virtiofs_devices`]); they come within a few hundred milliseconds under TCG.
pub const PLUGGED_IN_WITHIN: Duration = Duration::from_secs(10);

/// Waits until `wanted` virtio-fs devices have bound to the `virtiofs` driver under `sys_bus`
/// (`/sys/bus`), for at most `timeout`; returns how many did. On a machine that takes or starts
/// from a QEMU boot snapshot the host plugs them into PCIe hot-plug slots once the guest runs,
/// and a mount before the device is there fails (its tag is unknown). Without the driver (its
/// module did not load) none can bind: no wait.
pub fn wait_for_virtiofs_devices(sys_bus: &Path, wanted: usize, timeout: Duration) -> usize {
    let driver = sys_bus.join("virtio/drivers/virtiofs");
    if !driver.is_dir() {
        return 0;
    }
    let bound = || {
        fs::read_dir(&driver)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("virtio"))
                    .count()
            })
            .unwrap_or(0)
    };
    let deadline = Instant::now() + timeout;
    loop {
        let found = bound();
        if found >= wanted || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Mounts every share, logging each outcome; returns the report the host reads from the
/// console (a share that failed shows in `rmachine ls` and `inspect`).
pub fn mount_all(shares: &[ShareMount]) -> SharesReport {
    let sys_bus = Path::new("/sys/bus");
    let virtiofs = shares
        .iter()
        .filter(|s| s.filesystem == ShareFilesystem::Virtiofs)
        .count();
    if virtiofs > 0 && crate::modules::has_hotplug_slot(sys_bus) {
        let began = Instant::now();
        let found = wait_for_virtiofs_devices(sys_bus, virtiofs, PLUGGED_IN_WITHIN);
        if found < virtiofs {
            tracing::warn!(
                "share: {found} of {virtiofs} virtio-fs devices arrived within {} s",
                PLUGGED_IN_WITHIN.as_secs()
            );
        } else {
            tracing::debug!(
                "share: {virtiofs} virtio-fs devices there after {} ms",
                began.elapsed().as_millis()
            );
        }
    }
    let mut report = SharesReport::default();
    for share in shares {
        let error = match mount(share) {
            Ok(path) => {
                tracing::info!(
                    "share: {} ({}) mounted on {}{}",
                    share.tag,
                    share.filesystem.fstype(),
                    path.display(),
                    if share.read_only { " (read-only)" } else { "" }
                );
                None
            }
            Err(err) => {
                let text = crate::error_chain(&err);
                tracing::error!("share: {text}");
                Some(text)
            }
        };
        report.shares.push(ShareStatus {
            tag: share.tag.clone(),
            guest_path: share.guest_path.clone(),
            mounted: error.is_none(),
            error,
        });
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(path: &str, read_only: bool) -> ShareMount {
        ShareMount {
            tag: "rmshare0".into(),
            guest_path: path.into(),
            read_only,
            filesystem: ShareFilesystem::NineP,
        }
    }

    #[test]
    fn virtiofs_devices_are_waited_for_until_they_bind() {
        let sys = tempfile::tempdir().expect("tempdir");
        let began = Instant::now();
        assert_eq!(
            wait_for_virtiofs_devices(sys.path(), 1, Duration::from_secs(10)),
            0
        );
        assert!(
            began.elapsed() < Duration::from_secs(1),
            "no driver, no wait"
        );
        let driver = sys.path().join("virtio/drivers/virtiofs");
        std::fs::create_dir_all(&driver).expect("driver dir");
        std::fs::create_dir(driver.join("bind")).expect("bind");
        let short = Duration::from_millis(50);
        assert_eq!(wait_for_virtiofs_devices(sys.path(), 1, short), 0);
        let arrives = {
            let driver = driver.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                std::fs::create_dir(driver.join("virtio6")).expect("device");
            })
        };
        let began = Instant::now();
        assert_eq!(
            wait_for_virtiofs_devices(sys.path(), 1, Duration::from_secs(10)),
            1
        );
        assert!(began.elapsed() < Duration::from_secs(5));
        arrives.join().expect("thread");
        assert_eq!(wait_for_virtiofs_devices(sys.path(), 2, short), 1);
    }

    #[test]
    fn virtiofs_mounts_take_no_9p_options() {
        let mut ro = share("/home/me", true);
        ro.filesystem = ShareFilesystem::Virtiofs;
        let (flags, options) = mount_options(&ro);
        assert_eq!(options, "");
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID));
    }

    #[test]
    fn options_are_9p2000l_over_virtio_with_a_large_msize() {
        let (flags, options) = mount_options(&share("/home/me", false));
        assert_eq!(
            options,
            "trans=virtio,version=9p2000.L,msize=512000,cache=mmap"
        );
        assert!(!flags.contains(MsFlags::MS_RDONLY));
        let (flags, _) = mount_options(&share("/home/me", true));
        assert!(flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn guest_paths_must_be_plain_and_absolute() {
        assert_eq!(
            guest_path(&share("/c/Users/me", false)).unwrap(),
            PathBuf::from("/c/Users/me")
        );
        for bad in ["", "/", "home/me", "/home/../etc"] {
            assert!(
                matches!(
                    guest_path(&share(bad, false)),
                    Err(ShareError::BadPath { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }
}
