//! What the guest reports back about its data disk and its shares, on the serial console.
//!
//! At every boot rmachine-init prints one line holding [`DATA_DISK_MARKER`] followed by a
//! [`DataDiskReport`] as JSON, after it has formatted, checked and mounted the data disk and
//! before the engine starts. The host keeps the console as `machines/NAME/console.log`; once
//! the engine answers, `create`/`start` read the last such line ([`last_report`]) and store it
//! in the machine's record, where `rmachine inspect` shows it. Field names are PascalCase
//! because the host shows this structure as is, among docker-machine's fields.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Opens the JSON on the console line that carries a [`DataDiskReport`].
pub const DATA_DISK_MARKER: &str = "rmachine-data-disk: ";

/// Opens the JSON on the console line that carries a [`SharesReport`].
pub const SHARES_MARKER: &str = "rmachine-shares: ";

/// How each share of the configuration drive fared at one boot, printed after the shares were
/// mounted and before the engine starts, like the [`DataDiskReport`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SharesReport {
    /// One entry per share, in the drive's order.
    pub shares: Vec<ShareStatus>,
}

/// One share's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ShareStatus {
    /// The share's tag.
    pub tag: String,
    /// Where the guest mounts it.
    pub guest_path: String,
    /// Whether it is mounted.
    pub mounted: bool,
    /// Why not, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SharesReport {
    /// The console line for this report (without the newline).
    pub fn console_line(&self) -> String {
        // Serializing plain structs of strings and booleans cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("{SHARES_MARKER}{json}")
    }

    /// The shares that are not mounted.
    pub fn failures(&self) -> impl Iterator<Item = &ShareStatus> {
        self.shares.iter().filter(|s| !s.mounted)
    }
}

/// The shares report on the last console line that carries one and parses.
pub fn last_shares_report(console: &str) -> Option<SharesReport> {
    console.lines().rev().find_map(|line| {
        let (_, json) = line.split_once(SHARES_MARKER)?;
        serde_json::from_str(json.trim_end()).ok()
    })
}

/// The data disk's filesystem usage as the guest sees it (`statvfs` of its mount point),
/// printed as JSON by `rmachine-init disk-usage` for the host's port agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DiskUsage {
    /// The filesystem's size.
    pub total_bytes: u64,
    /// What is in use (size less free blocks, reserved ones included).
    pub used_bytes: u64,
    /// What an unprivileged writer could still use.
    pub available_bytes: u64,
}

impl DiskUsage {
    /// Usage from `statvfs` figures: fragment size, total, free and available blocks.
    pub fn from_blocks(fragment: u64, blocks: u64, free: u64, available: u64) -> Self {
        DiskUsage {
            total_bytes: blocks.saturating_mul(fragment),
            used_bytes: blocks.saturating_sub(free).saturating_mul(fragment),
            available_bytes: available.saturating_mul(fragment),
        }
    }
}

/// The data disk as one boot found and left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DataDiskReport {
    /// Device node in the guest, e.g. `/dev/vda`.
    pub device: String,
    /// Filesystem type as mounted (`ext4`).
    pub filesystem: String,
    /// Whether the filesystem has a journal (after this boot's conversion, if any).
    pub journal: bool,
    /// What this boot did before mounting.
    pub boot_action: BootAction,
    /// Whether the disk is mounted (false: nothing the engine writes persists).
    pub mounted: bool,
    /// The last check ever run on this disk (kept on the disk), if any.
    pub last_check: Option<DiskCheck>,
}

/// What a boot did to the data disk before mounting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BootAction {
    /// The disk was blank and was formatted.
    Formatted,
    /// The filesystem was cleanly unmounted: mounted without a check.
    None,
    /// The filesystem needed a check, which ran (see [`DataDiskReport::last_check`]).
    Checked,
    /// An ext2 disk from an older guest got a journal.
    JournalAdded,
    /// A check ran and an ext2 disk from an older guest got a journal.
    CheckedAndJournalAdded,
}

/// One check of the data disk by e2fsck.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DiskCheck {
    /// When it started (guest clock, UTC).
    pub time: DateTime<Utc>,
    /// Why it ran, e.g. `journal needs recovery`.
    pub reason: String,
    /// Each e2fsck run, in order (a preen that gives up is followed by `e2fsck -fy`).
    pub runs: Vec<CheckRun>,
    /// The outcome, from the last run's exit code.
    pub result: CheckResult,
    /// e2fsck's summary line (`LABEL: N/M files (…), N/M blocks`) of the last run.
    pub summary: String,
}

/// One e2fsck invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckRun {
    /// The command line.
    pub command: String,
    /// Its exit code (e2fsck's bit mask; -1 if it could not run or was killed).
    pub exit_code: i32,
    /// How long it took.
    pub duration_ms: u64,
}

/// What e2fsck's exit code says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckResult {
    /// Exit 0: no errors.
    Clean,
    /// Exit 1–3: errors found and corrected.
    Repaired,
    /// Exit 4 or more: errors left, or e2fsck failed; the disk was not mounted.
    Failed,
}

impl CheckResult {
    /// Classifies an e2fsck exit code (see e2fsck(8), "EXIT CODE").
    pub fn from_exit_code(code: i32) -> CheckResult {
        match code {
            0 => CheckResult::Clean,
            1..=3 => CheckResult::Repaired,
            _ => CheckResult::Failed,
        }
    }
}

impl DataDiskReport {
    /// The console line for this report (without the newline).
    pub fn console_line(&self) -> String {
        // Serializing plain structs of strings and numbers cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("{DATA_DISK_MARKER}{json}")
    }
}

/// The report on the last console line that carries one and parses; `None` if there is none.
pub fn last_report(console: &str) -> Option<DataDiskReport> {
    console.lines().rev().find_map(|line| {
        let (_, json) = line.split_once(DATA_DISK_MARKER)?;
        serde_json::from_str(json.trim_end()).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(device: &str) -> DataDiskReport {
        DataDiskReport {
            device: device.into(),
            filesystem: "ext4".into(),
            journal: true,
            boot_action: BootAction::Checked,
            mounted: true,
            last_check: Some(DiskCheck {
                time: DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
                reason: "journal needs recovery".into(),
                runs: vec![CheckRun {
                    command: "e2fsck -p /dev/vda".into(),
                    exit_code: 1,
                    duration_ms: 120,
                }],
                result: CheckResult::Repaired,
                summary: "rmachine-data: 11/65536 files (0.0% non-contiguous)".into(),
            }),
        }
    }

    #[test]
    fn the_last_report_on_the_console_wins() {
        let console = format!(
            "[   0.100] rmachine-init: {}\n\
             [   0.200] some kernel line\n\
             [   5.000] rmachine-init: {}\n\
             [   6.000] rmachine-init: engine ready\n",
            report("/dev/vdb").console_line(),
            report("/dev/vda").console_line(),
        );
        assert_eq!(last_report(&console), Some(report("/dev/vda")));
    }

    #[test]
    fn a_garbled_line_falls_back_to_an_earlier_report_and_none_without_any() {
        let console = format!(
            "[   0.100] rmachine-init: {}\n[   1.000] rmachine-init: {DATA_DISK_MARKER}{{\"Dev\n",
            report("/dev/vdb").console_line(),
        );
        assert_eq!(last_report(&console), Some(report("/dev/vdb")));
        assert_eq!(last_report("[   0.1] rmachine-init: boot complete\n"), None);
    }

    #[test]
    fn the_last_shares_report_wins_and_lists_failures() {
        let ok = SharesReport {
            shares: vec![ShareStatus {
                tag: "rmshare0".into(),
                guest_path: "/home/me".into(),
                mounted: true,
                error: None,
            }],
        };
        let mut failed = ok.clone();
        failed.shares.push(ShareStatus {
            tag: "rmshare1".into(),
            guest_path: "/srv/x".into(),
            mounted: false,
            error: Some("cannot mount on /srv/x: ENOENT".into()),
        });
        let console = format!(
            "[ 1.0] rmachine-init: {}\n[ 2.0] rmachine-init: {}\n[ 3.0] other\n",
            ok.console_line(),
            failed.console_line()
        );
        let last = last_shares_report(&console);
        assert_eq!(last.as_ref(), Some(&failed));
        let tags: Vec<&str> = failed.failures().map(|s| s.tag.as_str()).collect();
        assert_eq!(tags, ["rmshare1"]);
        assert_eq!(last_shares_report("no report\n"), None);
    }

    #[test]
    fn exit_codes_map_to_results() {
        assert_eq!(CheckResult::from_exit_code(0), CheckResult::Clean);
        assert_eq!(CheckResult::from_exit_code(1), CheckResult::Repaired);
        assert_eq!(CheckResult::from_exit_code(2), CheckResult::Repaired);
        assert_eq!(CheckResult::from_exit_code(4), CheckResult::Failed);
        assert_eq!(CheckResult::from_exit_code(8), CheckResult::Failed);
        assert_eq!(CheckResult::from_exit_code(-1), CheckResult::Failed);
    }
}
