//! Disks: find the configuration drive and the data disk, format a blank data disk, mount it.
//!
//! Disks are told apart by content, never by order: the configuration drive starts with the
//! `rmachine-guest-config.json` tar entry, and the data disk is the first other writable
//! disk. A data disk is formatted only if its first [`HEAD_LEN`] bytes are all zero — any
//! filesystem, partition table or unknown data makes us refuse, so a user's disk attached by
//! mistake is never destroyed.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use rmachine_guest_config::GuestConfig;

/// How many bytes of each disk [`classify`] looks at (covers the btrfs superblock at 64 KiB).
pub const HEAD_LEN: usize = 128 * 1024;

/// Filesystem label of a data disk formatted by the guest.
pub const DATA_LABEL: &str = "rmachine-data";

/// What can go wrong with disks.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A device could not be read.
    #[error("cannot read {device}")]
    Read {
        /// The device path.
        device: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `mke2fs` could not be run or failed.
    #[error("formatting {device} failed: {detail}")]
    Format {
        /// The device path.
        device: PathBuf,
        /// Exit status or spawn error, with mke2fs's stderr.
        detail: String,
    },
    /// The mount failed.
    #[error("cannot mount {device} on {target}")]
    Mount {
        /// The device path.
        device: PathBuf,
        /// The mount point.
        target: PathBuf,
        /// The errno.
        #[source]
        source: nix::errno::Errno,
    },
}

/// What the first bytes of a disk say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskContent {
    /// All zeroes: safe to format.
    Blank,
    /// An ext2/3/4 filesystem.
    Ext,
    /// An rmachine configuration drive.
    ConfigDrive,
    /// Anything else; the name of what was recognised.
    Other(&'static str),
}

/// Classifies a disk from its first bytes (ideally [`HEAD_LEN`] of them).
pub fn classify(head: &[u8]) -> DiskContent {
    let at = |offset: usize, magic: &[u8]| {
        head.get(offset..offset + magic.len())
            .is_some_and(|bytes| bytes == magic)
    };
    if GuestConfig::is_config_drive(head) {
        return DiskContent::ConfigDrive;
    }
    // ext2/3/4: superblock at 1024, s_magic (0xEF53, little endian) at offset 56 within it.
    if at(1080, &[0x53, 0xEF]) {
        return DiskContent::Ext;
    }
    let signatures: [(usize, &[u8], &'static str); 9] = [
        (0, b"XFSB", "xfs"),
        (0, b"LUKS\xba\xbe", "luks"),
        (0, b"hsqs", "squashfs"),
        (512, b"EFI PART", "gpt partition table"),
        (4086, b"SWAPSPACE2", "swap"),
        (4086, b"SWAP-SPACE", "swap"),
        (32769, b"CD001", "iso9660"),
        (65600, b"_BHRfS_M", "btrfs"),
        (257, b"ustar", "tar archive"),
    ];
    if let Some((_, _, name)) = signatures.iter().find(|(off, magic, _)| at(*off, magic)) {
        return DiskContent::Other(name);
    }
    if at(510, &[0x55, 0xAA]) {
        return DiskContent::Other("mbr partition table or fat");
    }
    if head.iter().all(|&b| b == 0) {
        DiskContent::Blank
    } else {
        DiskContent::Other("unknown data")
    }
}

/// One block device found under `/sys/block`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name, e.g. `vda`.
    pub name: String,
    /// Read-only devices (`/sys/block/X/ro`) can never be the data disk.
    pub read_only: bool,
    /// What its first bytes hold.
    pub content: DiskContent,
}

impl Disk {
    /// The device node, `/dev/NAME`.
    pub fn device(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }
}

/// The disks rmachine cares about, picked from all disks found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DiskChoice {
    /// The first configuration drive.
    pub config: Option<Disk>,
    /// The first writable disk that is not a configuration drive.
    pub data: Option<Disk>,
}

/// Picks the configuration drive and the data disk; `disks` must be in kernel name order.
pub fn choose(disks: &[Disk]) -> DiskChoice {
    DiskChoice {
        config: disks
            .iter()
            .find(|d| d.content == DiskContent::ConfigDrive)
            .cloned(),
        data: disks
            .iter()
            .find(|d| d.content != DiskContent::ConfigDrive && !d.read_only)
            .cloned(),
    }
}

/// Whether a `/sys/block` name is a disk we consider (virtio, SCSI/SATA, Xen, NVMe).
pub fn is_candidate(name: &str) -> bool {
    ["vd", "sd", "xvd", "nvme"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Sort key giving kernel order: `vdb` before `vdaa`, `nvme0n2` before `nvme0n10`.
pub fn order_key(name: &str) -> (usize, String) {
    (name.len(), name.to_owned())
}

/// Lists candidate disks under `/sys/block` and classifies each by its first bytes.
pub fn scan(sys_block: &Path) -> Vec<Disk> {
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| is_candidate(n))
                .collect()
        })
        .unwrap_or_default();
    names.sort_by_key(|n| order_key(n));
    let mut disks = Vec::new();
    for name in names {
        let read_only = std::fs::read_to_string(sys_block.join(&name).join("ro"))
            .map(|s| s.trim() == "1")
            .unwrap_or(false);
        let device = Path::new("/dev").join(&name);
        match read_head(&device) {
            Ok(head) => disks.push(Disk {
                content: classify(&head),
                name,
                read_only,
            }),
            Err(err) => tracing::warn!("skipping disk: {err}"),
        }
    }
    disks
}

/// Reads up to [`HEAD_LEN`] bytes from the start of a device.
pub fn read_head(device: &Path) -> Result<Vec<u8>, DiskError> {
    let read_err = |source| DiskError::Read {
        device: device.to_owned(),
        source,
    };
    let file = File::open(device).map_err(read_err)?;
    let mut head = Vec::with_capacity(HEAD_LEN);
    file.take(HEAD_LEN as u64)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    Ok(head)
}

/// Reads the guest configuration from a configuration drive.
pub fn read_config(device: &Path) -> Result<GuestConfig, rmachine_guest_config::GuestConfigError> {
    let file = File::open(device).map_err(rmachine_guest_config::GuestConfigError::Io)?;
    GuestConfig::read_drive(io::BufReader::new(file))
}

/// Formats a blank disk with busybox `mke2fs` (ext2; the ext4 driver mounts it).
///
/// Callers MUST have checked [`DiskContent::Blank`]; this re-checks, as formatting is the
/// one irreversible thing init does.
pub fn format_blank(device: &Path) -> Result<(), DiskError> {
    let content = classify(&read_head(device)?);
    if content != DiskContent::Blank {
        return Err(DiskError::Format {
            device: device.to_owned(),
            detail: format!("refusing: disk is not blank ({content:?})"),
        });
    }
    let output = Command::new("/sbin/mke2fs")
        .args(["-F", "-L", DATA_LABEL, "-m", "0"])
        .arg(device)
        .output()
        .map_err(|err| DiskError::Format {
            device: device.to_owned(),
            detail: err.to_string(),
        })?;
    if !output.status.success() {
        return Err(DiskError::Format {
            device: device.to_owned(),
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// Mounts an ext2/3/4 disk (the ext4 driver serves all three).
pub fn mount_ext(device: &Path, target: &Path) -> Result<(), DiskError> {
    std::fs::create_dir_all(target).ok();
    nix::mount::mount(
        Some(device),
        target,
        Some("ext4"),
        nix::mount::MsFlags::MS_NOATIME,
        None::<&str>,
    )
    .map_err(|source| DiskError::Mount {
        device: device.to_owned(),
        target: target.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank() -> Vec<u8> {
        vec![0u8; HEAD_LEN]
    }

    #[test]
    fn zeroes_are_blank() {
        assert_eq!(classify(&blank()), DiskContent::Blank);
    }

    #[test]
    fn ext_magic_is_recognised() {
        let mut head = blank();
        head[1080] = 0x53;
        head[1081] = 0xEF;
        assert_eq!(classify(&head), DiskContent::Ext);
    }

    #[test]
    fn config_drive_is_recognised() {
        let config = GuestConfig {
            format_version: rmachine_guest_config::FORMAT_VERSION,
            hostname: "intro".into(),
            ca_pem: String::new(),
            server_cert_pem: String::new(),
            server_key_pem: String::new(),
            authorized_keys: vec![],
            engine: Default::default(),
        };
        let mut image = Vec::new();
        config
            .write_drive(&mut image)
            .expect("writing to a Vec cannot fail");
        assert_eq!(classify(&image), DiskContent::ConfigDrive);
    }

    #[test]
    fn anything_else_is_never_blank() {
        let mut mbr = blank();
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        assert!(matches!(classify(&mbr), DiskContent::Other(_)));
        let mut xfs = blank();
        xfs[..4].copy_from_slice(b"XFSB");
        assert_eq!(classify(&xfs), DiskContent::Other("xfs"));
        let mut junk = blank();
        junk[100_000] = 1;
        assert_eq!(classify(&junk), DiskContent::Other("unknown data"));
    }

    fn disk(name: &str, content: DiskContent, read_only: bool) -> Disk {
        Disk {
            name: name.into(),
            read_only,
            content,
        }
    }

    #[test]
    fn config_drive_is_found_whatever_its_position() {
        let disks = [
            disk("vda", DiskContent::ConfigDrive, true),
            disk("vdb", DiskContent::Blank, false),
        ];
        let choice = choose(&disks);
        assert_eq!(choice.config.map(|d| d.name), Some("vda".into()));
        assert_eq!(choice.data.map(|d| d.name), Some("vdb".into()));
    }

    #[test]
    fn read_only_disks_are_not_data_disks() {
        let disks = [
            disk("vda", DiskContent::Other("iso9660"), true),
            disk("vdb", DiskContent::Ext, false),
        ];
        assert_eq!(choose(&disks).data.map(|d| d.name), Some("vdb".into()));
        assert_eq!(choose(&disks).config, None);
    }

    #[test]
    fn kernel_order_sorts_by_length_first() {
        let mut names = vec!["vdaa", "vdb", "vda"];
        names.sort_by_key(|n| order_key(n));
        assert_eq!(names, ["vda", "vdb", "vdaa"]);
    }
}
