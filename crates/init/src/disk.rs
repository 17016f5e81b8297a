//! Disks: find the configuration drive and the data disk, format a blank data disk, check it,
//! mount it.
//!
//! Disks are told apart by content, never by order: the configuration drive starts with the
//! `rmachine-guest-config.json` tar entry, and the data disk is the first other writable
//! disk. A data disk is formatted only if its first [`HEAD_LEN`] bytes are all zero — any
//! filesystem, partition table or unknown data makes us refuse, so a user's disk attached by
//! mistake is never destroyed.
//!
//! Surviving power loss (`rmachine kill`, a host crash): the data disk is ext4 with a journal
//! (Debian's e2fsprogs in the guest image), formatted with lazy inode-table and journal
//! initialisation so that first boot stays well under a second. Before mounting, the
//! superblock decides whether e2fsck must run ([`Superblock::check_reasons`]: not cleanly
//! unmounted, errors recorded, journal to recover); it then runs `e2fsck -p` and, if preening
//! gives up, `e2fsck -fy`. An ext2 disk made by older guests gets a journal (`tune2fs -j`). The
//! last check is kept on the disk ([`LAST_CHECK_FILE`]) and reported on the console.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rmachine_guest_config::report::{CheckResult, CheckRun, DiskCheck};
use rmachine_guest_config::GuestConfig;

/// How many bytes of each disk [`classify`] looks at (covers the btrfs superblock at 64 KiB).
pub const HEAD_LEN: usize = 128 * 1024;

/// Filesystem label of a data disk formatted by the guest.
pub const DATA_LABEL: &str = "rmachine-data";

/// e2fsprogs in the guest image (guest/build.sh).
pub const MKE2FS: &str = "/sbin/mke2fs";
/// See [`MKE2FS`].
pub const E2FSCK: &str = "/sbin/e2fsck";
/// See [`MKE2FS`].
pub const TUNE2FS: &str = "/sbin/tune2fs";

/// The last [`DiskCheck`] as JSON, relative to the data disk's mount point.
pub const LAST_CHECK_FILE: &str = "last-check.json";

/// Mount options of the data disk. `errors=remount-ro`: once the kernel finds the filesystem
/// inconsistent, going on writing can spread the damage into images and containers; read-only
/// makes the engine fail loudly instead, and the error flag it leaves makes the next boot run
/// e2fsck (`rmachine restart` repairs). data=ordered (the default) is kept: file data reaches
/// the disk before the metadata that points at it, so a crash never exposes stale blocks.
/// `discard`: blocks ext4 frees (a deleted image or volume) are unmapped at once, and the host
/// drive's `discard=unmap` turns that into a smaller qcow2 on the host.
pub const MOUNT_OPTIONS: &str = "errors=remount-ro,discard";

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
    /// `tune2fs -j` could not add a journal.
    #[error("adding a journal to {device} failed: {detail}")]
    AddJournal {
        /// The device path.
        device: PathBuf,
        /// Exit status or spawn error, with tune2fs's stderr.
        detail: String,
    },
    /// The device holds no ext2/3/4 superblock.
    #[error("{device} holds no ext2/3/4 filesystem")]
    NotExt {
        /// The device path.
        device: PathBuf,
    },
    /// The last-check record could not be written.
    #[error("cannot write {path}")]
    Record {
        /// The record file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
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

/// Offset of the ext2/3/4 superblock from the start of the device.
const SUPERBLOCK_OFFSET: usize = 1024;
/// `s_state`: cleanly unmounted.
const STATE_VALID: u16 = 0x0001;
/// `s_state`: the kernel found errors.
const STATE_ERROR: u16 = 0x0002;
/// `s_state`: orphan inodes being recovered.
const STATE_ORPHANS: u16 = 0x0004;
/// `s_feature_compat`: has a journal.
const COMPAT_HAS_JOURNAL: u32 = 0x0004;
/// `s_feature_incompat`: the journal holds transactions not yet written to their places.
const INCOMPAT_RECOVER: u32 = 0x0004;

/// The fields of an ext2/3/4 superblock that decide whether to check, convert or format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// `s_state`.
    pub state: u16,
    /// `s_feature_compat`.
    pub feature_compat: u32,
    /// `s_feature_incompat`.
    pub feature_incompat: u32,
    /// `s_error_count`: errors the kernel recorded since the last full check.
    pub error_count: u32,
    /// `s_volume_name`.
    pub label: String,
}

/// Why the data disk must be checked before it is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckReason {
    /// `s_state` lacks the valid bit: mounted without a journal and never unmounted.
    NotCleanlyUnmounted,
    /// The kernel flagged errors (`s_state` error bit or a non-zero error count).
    ErrorsFlagged,
    /// Orphan inodes were being processed when the machine stopped.
    OrphansPending,
    /// The journal holds transactions to replay (mounted with a journal, never unmounted).
    JournalNeedsRecovery,
}

impl CheckReason {
    /// For the console and the record.
    pub fn describe(self) -> &'static str {
        match self {
            CheckReason::NotCleanlyUnmounted => "not cleanly unmounted",
            CheckReason::ErrorsFlagged => "errors flagged",
            CheckReason::OrphansPending => "orphan inodes pending",
            CheckReason::JournalNeedsRecovery => "journal needs recovery",
        }
    }
}

impl Superblock {
    /// Whether this is a data disk a guest formatted (its label). Only such a disk is checked,
    /// repaired, converted or mounted: `e2fsck -fy` and `tune2fs -j` on a user's own disk
    /// attached by mistake would change it without asking.
    pub fn is_rmachine_data(&self) -> bool {
        self.label == DATA_LABEL
    }

    /// Parses the superblock from the first bytes of a device (at least 2 KiB); `None` unless
    /// the ext magic is there.
    pub fn parse(head: &[u8]) -> Option<Superblock> {
        let sb = head.get(SUPERBLOCK_OFFSET..SUPERBLOCK_OFFSET + 1024)?;
        let u16_at = |off: usize| u16::from_le_bytes([sb[off], sb[off + 1]]);
        let u32_at =
            |off: usize| u32::from_le_bytes([sb[off], sb[off + 1], sb[off + 2], sb[off + 3]]);
        if u16_at(0x38) != 0xEF53 {
            return None;
        }
        let name = &sb[0x78..0x88];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        Some(Superblock {
            state: u16_at(0x3A),
            feature_compat: u32_at(0x5C),
            feature_incompat: u32_at(0x60),
            error_count: u32_at(0x194),
            label: String::from_utf8_lossy(&name[..end]).into_owned(),
        })
    }

    /// Whether the filesystem has a journal.
    pub fn has_journal(&self) -> bool {
        self.feature_compat & COMPAT_HAS_JOURNAL != 0
    }

    /// Why e2fsck must run before mounting; empty if the filesystem was left clean.
    ///
    /// ext4 with a journal keeps the valid bit while mounted and marks itself with the
    /// recover flag instead; without a journal the kernel clears the valid bit at mount and
    /// sets it again at unmount. Either way a machine that lost power leaves a mark here.
    pub fn check_reasons(&self) -> Vec<CheckReason> {
        let mut reasons = Vec::new();
        if self.state & STATE_VALID == 0 {
            reasons.push(CheckReason::NotCleanlyUnmounted);
        }
        if self.state & STATE_ERROR != 0 || self.error_count != 0 {
            reasons.push(CheckReason::ErrorsFlagged);
        }
        if self.state & STATE_ORPHANS != 0 {
            reasons.push(CheckReason::OrphansPending);
        }
        if self.feature_incompat & INCOMPAT_RECOVER != 0 {
            reasons.push(CheckReason::JournalNeedsRecovery);
        }
        reasons
    }
}

/// Output of a finished tool run.
struct ToolOutput {
    run: CheckRun,
    stdout: String,
    stderr: String,
}

fn run_tool(program: &str, args: &[&str], device: &Path) -> ToolOutput {
    let command = format!("{} {} {}", program, args.join(" "), device.display());
    let started = Instant::now();
    let output = Command::new(program).args(args).arg(device).output();
    let duration_ms = started.elapsed().as_millis() as u64;
    match output {
        Ok(output) => ToolOutput {
            run: CheckRun {
                command,
                exit_code: output.status.code().unwrap_or(-1),
                duration_ms,
            },
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        },
        Err(err) => ToolOutput {
            run: CheckRun {
                command,
                exit_code: -1,
                duration_ms,
            },
            stdout: String::new(),
            stderr: format!("cannot run {program}: {err}"),
        },
    }
}

/// e2fsck's summary line: the last line naming files and blocks (`LABEL: 11/65536 files
/// (0.0% non-contiguous), 8859/262144 blocks`), else its last non-empty line.
pub fn summary_line(output: &str) -> String {
    let lines = || output.lines().map(str::trim).filter(|l| !l.is_empty());
    lines()
        .rfind(|l| l.contains(" files") && l.contains(" blocks"))
        .or_else(|| lines().next_back())
        .unwrap_or_default()
        .to_owned()
}

/// Runs e2fsck on an unmounted ext filesystem: `-p` (preen: replays the journal, fixes what
/// is safe to fix unattended), then `-fy` if preening gave up (exit code 4). The check is
/// [`CheckResult::Failed`] if errors remain; callers MUST NOT mount the disk then.
pub fn check(device: &Path, reasons: &[CheckReason]) -> DiskCheck {
    let time = chrono::Utc::now();
    let mut runs = Vec::new();
    let preen = run_tool(E2FSCK, &["-p"], device);
    log_output(&preen);
    let mut last = preen;
    if last.run.exit_code & 4 != 0 {
        tracing::warn!("disk: preening gave up; running e2fsck -fy");
        runs.push(last.run);
        last = run_tool(E2FSCK, &["-fy"], device);
        log_output(&last);
    }
    let result = CheckResult::from_exit_code(last.run.exit_code);
    let summary = summary_line(&last.stdout);
    let summary = if summary.is_empty() {
        summary_line(&last.stderr)
    } else {
        summary
    };
    runs.push(last.run);
    DiskCheck {
        time,
        reason: reasons
            .iter()
            .map(|r| r.describe())
            .collect::<Vec<_>>()
            .join(", "),
        runs,
        result,
        summary,
    }
}

fn log_output(out: &ToolOutput) {
    tracing::info!(
        "disk: `{}` exited {} in {} ms",
        out.run.command,
        out.run.exit_code,
        out.run.duration_ms
    );
    // e2fsck's own words matter when it found something; a clean preen prints one line.
    for line in out.stdout.lines().chain(out.stderr.lines()) {
        if !line.trim().is_empty() {
            tracing::info!("disk: e2fsck: {line}");
        }
    }
}

/// Adds a journal to an ext2 filesystem made by an older guest (`tune2fs -j`); the disk MUST
/// be unmounted and clean.
pub fn add_journal(device: &Path) -> Result<(), DiskError> {
    let out = run_tool(TUNE2FS, &["-j"], device);
    if out.run.exit_code != 0 {
        return Err(DiskError::AddJournal {
            device: device.to_owned(),
            detail: format!("exit {}: {}", out.run.exit_code, out.stderr.trim()),
        });
    }
    Ok(())
}

/// Reads the superblock of `device`.
pub fn read_superblock(device: &Path) -> Result<Superblock, DiskError> {
    Superblock::parse(&read_head(device)?).ok_or_else(|| DiskError::NotExt {
        device: device.to_owned(),
    })
}

/// Writes the last check under the data disk's mount point (temp file, fsync, rename).
pub fn save_last_check(mount: &Path, check: &DiskCheck) -> Result<(), DiskError> {
    use std::io::Write;
    let path = mount.join(LAST_CHECK_FILE);
    let record_err = |source| DiskError::Record {
        path: path.clone(),
        source,
    };
    let temp = mount.join(format!(".{LAST_CHECK_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(check)
        .map_err(io::Error::from)
        .map_err(record_err)?;
    let mut file = File::create(&temp).map_err(record_err)?;
    file.write_all(&json).map_err(record_err)?;
    file.sync_all().map_err(record_err)?;
    std::fs::rename(&temp, &path).map_err(record_err)?;
    File::open(mount)
        .and_then(|dir| dir.sync_all())
        .map_err(record_err)
}

/// The last check saved on the data disk, if any and readable.
pub fn load_last_check(mount: &Path) -> Option<DiskCheck> {
    let text = std::fs::read(mount.join(LAST_CHECK_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
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

/// What a disk is taken to hold when the kernel may still cache another machine's blocks of
/// it (a boot snapshot's, see [`crate::boot_snapshot`]): neither formatted nor used this boot.
pub const UNVERIFIED: DiskContent = DiskContent::Other("unverified after a boot snapshot");

/// Which disks' contents init may believe this boot (see [`distrust`]).
///
/// A positive list, so that every failure on the way to it (a directory that cannot be
/// listed, a disk the cache dropping did not know of, a task that panicked) leaves a disk
/// out of it, unused, rather than believed with another machine's cached blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskTrust {
    /// Every disk: the kernel command line did not ask for a boot snapshot's point, so the
    /// kernel's cache holds only this boot's reads.
    All,
    /// Only the disks of these kernel names, whose cached blocks were dropped after the boot
    /// snapshot's point. Any other disk MUST NOT be formatted, mounted or read this boot.
    Only(BTreeSet<String>),
}

impl DiskTrust {
    /// Whether the disk of kernel name `name` may be believed.
    pub fn trusts(&self, name: &str) -> bool {
        match self {
            DiskTrust::All => true,
            DiskTrust::Only(names) => names.contains(name),
        }
    }
}

/// Classifies every disk that `trust` does not trust as [`UNVERIFIED`], whatever its first
/// bytes said, and logs each as an error. Those bytes may have come from a page cache filled
/// by another machine's boot: all zeroes there would make a user's disk look blank (and get
/// it formatted), and a stale configuration drive would hand this machine another one's keys,
/// so no content of such a disk is believed, not only `Blank`.
pub fn distrust(disks: &mut [Disk], trust: &DiskTrust) {
    for disk in disks.iter_mut().filter(|d| !trust.trusts(&d.name)) {
        tracing::error!(
            "disk: {}: its cached blocks were not dropped after the boot snapshot point and \
             may be another machine's; it is neither formatted nor used this boot",
            disk.name
        );
        disk.content = UNVERIFIED;
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

/// Formats a blank disk as ext4 with a journal.
///
/// Inode tables and the journal are left to be initialised lazily (by the kernel's
/// `ext4lazyinit` thread after mounting, and as the journal is used): writing them up front
/// took ~8 s on a 20 GB disk under TCG. `nodiscard`: a blank disk has nothing to discard.
/// No `resize_inode`: its reserved group descriptor blocks (for growing the filesystem
/// online up to 1024 times its size, with `resize2fs`, which the image does not ship) are
/// most of what mke2fs writes — 4.1 MB of 4.4 MB on 20 GB (a host's mke2fs 1.47 on a sparse
/// file); without them, an online grow that needs new descriptor blocks makes the kernel
/// convert the filesystem to `meta_bg`.
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
    let output = Command::new(MKE2FS)
        .args(["-F", "-q", "-t", "ext4", "-L", DATA_LABEL, "-m", "0"])
        .args(["-O", "^resize_inode", "-E"])
        .arg("lazy_itable_init=1,lazy_journal_init=1,nodiscard")
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

/// Mounts an ext2/3/4 disk (the ext4 driver serves all three) with [`MOUNT_OPTIONS`].
pub fn mount_ext(device: &Path, target: &Path) -> Result<(), DiskError> {
    std::fs::create_dir_all(target).ok();
    nix::mount::mount(
        Some(device),
        target,
        Some("ext4"),
        nix::mount::MsFlags::MS_NOATIME,
        Some(MOUNT_OPTIONS),
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
            shares: Vec::new(),
            network: None,
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

    fn only(names: &[&str]) -> DiskTrust {
        DiskTrust::Only(names.iter().map(|n| n.to_string()).collect())
    }

    #[test]
    fn an_untrusted_blank_disk_is_chosen_but_not_as_blank() {
        let mut disks = [
            disk("vda", DiskContent::ConfigDrive, true),
            disk("vdb", DiskContent::Blank, false),
            disk("vdc", DiskContent::Blank, false),
        ];
        // vdb's cache was not dropped (its drop failed, or the drop never saw it).
        distrust(&mut disks, &only(&["vda", "vdc"]));
        let choice = choose(&disks);
        // Still the data disk (a later disk must not take its place and be formatted), but
        // with content that the mount step refuses to format or mount.
        let data = choice.data.expect("a data disk");
        assert_eq!(data.name, "vdb");
        assert_eq!(data.content, UNVERIFIED);
        assert_ne!(data.content, DiskContent::Blank);
        assert_eq!(choice.config.map(|d| d.name), Some("vda".into()));
        assert_eq!(
            disks[2].content,
            DiskContent::Blank,
            "a trusted disk is believed"
        );
    }

    #[test]
    fn an_untrusted_configuration_drive_is_not_read() {
        let mut disks = [disk("vda", DiskContent::ConfigDrive, true)];
        distrust(&mut disks, &only(&["vdb"]));
        assert_eq!(choose(&disks), DiskChoice::default());
    }

    #[test]
    fn an_empty_trust_list_believes_no_disk() {
        // What a failed listing of /sys/block, or a panic, leaves after a snapshot point.
        let mut disks = [
            disk("vda", DiskContent::ConfigDrive, true),
            disk("vdb", DiskContent::Blank, false),
            disk("vdc", DiskContent::Ext, false),
        ];
        distrust(&mut disks, &only(&[]));
        assert!(disks.iter().all(|d| d.content == UNVERIFIED), "{disks:?}");
        let choice = choose(&disks);
        assert_eq!(choice.config, None);
        assert_eq!(
            choice.data.map(|d| (d.name, d.content)),
            Some(("vdb".into(), UNVERIFIED))
        );
    }

    #[test]
    fn without_a_snapshot_point_every_disk_is_believed() {
        let mut disks = [
            disk("vda", DiskContent::ConfigDrive, true),
            disk("vdb", DiskContent::Blank, false),
        ];
        let before = disks.clone();
        distrust(&mut disks, &DiskTrust::All);
        assert_eq!(disks, before);
        assert!(DiskTrust::All.trusts("anything"));
        assert!(!only(&["vda"]).trusts("vdb"));
    }

    /// A sparse, all-zero image file of `mb` MiB, as a new qcow2 reads to the guest.
    fn blank_image(dir: &Path, mb: u64) -> PathBuf {
        let path = dir.join("disk.img");
        File::create(&path)
            .and_then(|f| f.set_len(mb << 20))
            .expect("temp image");
        path
    }

    /// Runs a host tool the tests use to build and damage filesystems (Debian's e2fsprogs and
    /// busybox-static, installed by .ci/setup).
    fn tool(program: &str, args: &[&str], image: &Path) {
        let status = Command::new(program)
            .args(args)
            .arg(image)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap_or_else(|err| panic!("{program}: {err}"));
        assert!(status.success(), "{program} {args:?} failed: {status}");
    }

    fn superblock_bytes(image: &Path) -> Vec<u8> {
        read_head(image).expect("read image")
    }

    #[test]
    fn a_blank_disk_becomes_clean_ext4_with_a_journal_and_the_label() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = blank_image(dir.path(), 256);
        format_blank(&image).expect("format");
        let sb = read_superblock(&image).expect("superblock");
        assert!(sb.has_journal(), "{sb:?}");
        // `s_feature_compat` RESIZE_INODE (0x10): its reserved blocks are left out, being most
        // of the format's writes under TCG.
        assert_eq!(sb.feature_compat & 0x10, 0, "resize_inode: {sb:?}");
        assert_eq!(sb.label, DATA_LABEL);
        assert!(sb.is_rmachine_data());
        assert_eq!(sb.check_reasons(), [], "a fresh filesystem needs no check");
        // Formatting is refused once there is a filesystem.
        assert!(matches!(
            format_blank(&image),
            Err(DiskError::Format { .. })
        ));
    }

    #[test]
    fn a_disk_with_another_label_is_not_ours() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = blank_image(dir.path(), 64);
        tool(
            "mke2fs",
            &["-F", "-q", "-t", "ext4", "-L", "photos"],
            &image,
        );
        let sb = read_superblock(&image).expect("superblock");
        assert!(!sb.is_rmachine_data(), "{sb:?}");
        let image = blank_image(dir.path(), 64);
        tool("mke2fs", &["-F", "-q", "-t", "ext2"], &image);
        assert!(!read_superblock(&image)
            .expect("superblock")
            .is_rmachine_data());
    }

    #[test]
    fn marks_of_a_lost_machine_are_reasons_to_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = blank_image(dir.path(), 64);
        format_blank(&image).expect("format");
        let clean = superblock_bytes(&image);
        let edit = |off: usize, value: &[u8]| {
            let mut head = clean.clone();
            let at = SUPERBLOCK_OFFSET + off;
            head[at..at + value.len()].copy_from_slice(value);
            Superblock::parse(&head).expect("still ext").check_reasons()
        };
        assert_eq!(
            edit(0x3A, &0u16.to_le_bytes()),
            [CheckReason::NotCleanlyUnmounted]
        );
        assert_eq!(
            edit(0x3A, &3u16.to_le_bytes()),
            [CheckReason::ErrorsFlagged]
        );
        assert_eq!(
            edit(0x3A, &5u16.to_le_bytes()),
            [CheckReason::OrphansPending]
        );
        assert_eq!(
            edit(0x194, &2u32.to_le_bytes()),
            [CheckReason::ErrorsFlagged]
        );
        let incompat = Superblock::parse(&clean).expect("ext").feature_incompat | INCOMPAT_RECOVER;
        assert_eq!(
            edit(0x60, &incompat.to_le_bytes()),
            [CheckReason::JournalNeedsRecovery]
        );
        let mut not_ext = clean.clone();
        not_ext[1080] = 0;
        assert_eq!(Superblock::parse(&not_ext), None);
        assert_eq!(Superblock::parse(&clean[..1500]), None, "short read");
    }

    #[test]
    fn an_ext2_disk_from_older_guests_gets_a_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = blank_image(dir.path(), 64);
        tool(
            "busybox",
            &["mke2fs", "-F", "-L", DATA_LABEL, "-m", "0"],
            &image,
        );
        let before = read_superblock(&image).expect("superblock");
        assert!(!before.has_journal());
        assert_eq!(before.check_reasons(), []);
        add_journal(&image).expect("tune2fs -j");
        assert!(read_superblock(&image).expect("superblock").has_journal());
    }

    #[test]
    fn flagged_errors_are_preened_and_the_next_boot_sees_a_clean_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = blank_image(dir.path(), 64);
        format_blank(&image).expect("format");
        tool("debugfs", &["-w", "-R", "sif <2> links_count 7"], &image);
        tool("tune2fs", &["-E", "force_fsck"], &image);
        let reasons = read_superblock(&image).expect("sb").check_reasons();
        assert_eq!(reasons, [CheckReason::ErrorsFlagged]);
        let check = check(&image, &reasons);
        assert_eq!(check.result, CheckResult::Repaired, "{check:?}");
        assert_eq!(check.runs.len(), 1, "preen was enough: {check:?}");
        assert_eq!(check.runs[0].exit_code, 1);
        assert_eq!(check.reason, "errors flagged");
        assert!(
            check.summary.starts_with("rmachine-data: 11/") && check.summary.contains("blocks"),
            "{check:?}"
        );
        assert_eq!(read_superblock(&image).expect("sb").check_reasons(), []);
    }

    #[test]
    fn damage_preening_refuses_is_repaired_by_a_full_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = blank_image(dir.path(), 64);
        format_blank(&image).expect("format");
        tool("debugfs", &["-w", "-R", "sif <2> mode 0100644"], &image);
        tool("tune2fs", &["-E", "force_fsck"], &image);
        let check = check(&image, &[CheckReason::ErrorsFlagged]);
        let codes: Vec<i32> = check.runs.iter().map(|r| r.exit_code).collect();
        assert_eq!(codes, [4, 1], "{check:?}");
        assert!(check.runs[1].command.starts_with("/sbin/e2fsck -fy "));
        assert_eq!(check.result, CheckResult::Repaired);
        let again = super::check(&image, &[]);
        assert_eq!(again.result, CheckResult::Clean, "{again:?}");
    }

    #[test]
    fn a_disk_e2fsck_cannot_open_fails_the_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let check = check(
            &dir.path().join("missing"),
            &[CheckReason::NotCleanlyUnmounted],
        );
        assert_eq!(check.result, CheckResult::Failed, "{check:?}");
    }

    #[test]
    fn the_last_check_survives_on_the_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load_last_check(dir.path()), None);
        let check = DiskCheck {
            time: chrono::Utc::now(),
            reason: "journal needs recovery".into(),
            runs: vec![],
            result: CheckResult::Clean,
            summary: "x".into(),
        };
        save_last_check(dir.path(), &check).expect("save");
        assert_eq!(load_last_check(dir.path()), Some(check));
    }

    #[test]
    fn summary_is_the_files_and_blocks_line() {
        let preen = "rmachine-data: Inode 2 ref count is 7, should be 3.  FIXED.\n\
                     rmachine-data: 11/16384 files (0.0% non-contiguous), 9513/65536 blocks\n";
        assert_eq!(
            summary_line(preen),
            "rmachine-data: 11/16384 files (0.0% non-contiguous), 9513/65536 blocks"
        );
        assert_eq!(summary_line("one\ntwo\n\n"), "two");
        assert_eq!(summary_line(""), "");
    }

    #[test]
    fn kernel_order_sorts_by_length_first() {
        let mut names = vec!["vdaa", "vdb", "vda"];
        names.sort_by_key(|n| order_key(n));
        assert_eq!(names, ["vda", "vdb", "vdaa"]);
    }
}
