//! Boot snapshots: QEMU's saved state of a guest whose kernel has booted and whose device
//! drivers are loaded, taken where the guest's init stops before it reads anything of one
//! machine (its configuration drive, data disk, network); `rmachine.boot_snapshot=1` on the
//! kernel command line asks init to stop there. Every later start of a machine whose QEMU
//! command line is the same (its own paths, name and host ports aside), with the same QEMU,
//! guest image and disk sizes, loads that state instead of booting the kernel: under software
//! emulation the kernel and the device drivers are ~2.7 s of a ~3.7 s boot
//! (docs/boot-timings.md).
//!
//! The handshake runs on the clock port ([`crate::clock`]): at the point the guest writes
//! `snapshot-point MS`; the host saves the state if it keeps none for this command line yet,
//! then answers `go SECONDS NANOSECONDS SEED` (its UTC clock and 32 random bytes). The guest
//! sets its clock, adds the seed to its entropy pool and reseeds (every machine started from
//! one snapshot shares that kernel's random state until then), drops what its kernel cached of
//! the disks, and answers `ok …`. A machine started from a snapshot gets its own `go` right
//! after QEMU has loaded the state.
//!
//! Files: `STORE/cache/qemu-boot-snapshots/ID.state` (QEMU's migration stream) and `ID.json`
//! ([`SnapshotRecord`], written last: a record means the state is whole), ID the sha256 of the
//! [`SnapshotKey`]; at most [`KEEP`] snapshots are kept.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rmachine_driver::DriverError;
#[cfg(unix)]
use rmachine_driver::StopMode;
use rmachine_driver::{MachineDir, ShareTransport, VmSpec};
use serde::{Deserialize, Serialize};

use crate::args;
#[cfg(unix)]
use crate::resume;
use crate::resume::{BinaryStamp, FileStamp};
use crate::{QemuDriver, QemuState};

/// The cache folder's name, beside `qemu-accel-probe.json`.
pub const CACHE_DIR: &str = "qemu-boot-snapshots";
/// How many snapshots a store keeps (one per command line: memory, CPUs, disk size, shares).
pub const KEEP: usize = 3;
/// What the handshake and the snapshot point are; raise it when either changes, so that no
/// snapshot taken by an older rmachine is loaded.
pub const FORMAT: u32 = 1;
/// The kernel command line option that makes init stop at the snapshot point.
pub const KERNEL_OPTION: &str = "rmachine.boot_snapshot=1";
/// The first line a booting guest reads at the point when the host wants the snapshot taken:
/// it then writes the point's line and waits for `go`.
pub const WANTED_LINE: &str = "snapshot-wanted\n";
/// The first line a booting guest reads at the point when the host does not: it goes on at
/// once. (Nothing at all, as after a reboot from inside the guest, lets it go on after a
/// few seconds.)
pub const SKIP_LINE: &str = "skip\n";
/// What a guest writes when it will not stop at the point although its kernel line asks it to
/// (init's `NO_POINT`: it read no first word in time, or not one it knows): the host stops
/// waiting for the point.
pub const NO_POINT: &str = "no-point";
/// How long a guest at the point has to answer the `go` line (its init answers at once).
pub const GO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the host waits for a booting guest to reach the point; a guest whose init does
/// not know it never does, and the wait ends with the command anyway.
pub const POINT_TIMEOUT: Duration = Duration::from_secs(600);
/// A lock older than this was left by a process that died while saving.
const STALE_LOCK: Duration = Duration::from_secs(600);

/// Why a boot snapshot cannot be made or used; each names the file or program at fault.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The machine's directory is not under a store's `machines/`.
    #[error("the machine is not in a store (no cache to keep a snapshot in)")]
    NotInStore,
    /// The QEMU program is not on `PATH`.
    #[error("{program} is not found")]
    QemuNotFound {
        /// The program.
        program: String,
    },
    /// A file the key is made of, or a snapshot's file, cannot be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A snapshot's record does not parse.
    #[error("the record {} does not parse: {source}", path.display())]
    RecordParse {
        /// The record.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A snapshot's record names another key.
    #[error("the record {} names another command line", path.display())]
    OtherKey {
        /// The record.
        path: PathBuf,
    },
    /// A snapshot's state is not as long as its record says.
    #[error("the state {} is {found} bytes where {saved} were saved", path.display())]
    StateLength {
        /// The state.
        path: PathBuf,
        /// Its length now.
        found: u64,
        /// Its length when saved.
        saved: u64,
    },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Everything a snapshot's state depends on: two machines with equal keys can start from
/// the same state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotKey {
    /// [`FORMAT`].
    pub format: u32,
    /// QEMU's arguments with the machine's own paths, name and host ports replaced by fixed
    /// ones (none of them is part of the guest's state).
    pub argv: Vec<String>,
    /// The QEMU executable.
    pub qemu: BinaryStamp,
    /// The guest image's files.
    pub boot_files: Vec<FileStamp>,
    /// The data disk's size as the guest sees it: its kernel read it when it probed the disk.
    pub data_disk_bytes: u64,
    /// The configuration drive's size, likewise.
    pub config_drive_bytes: u64,
    /// Under a hypervisor (not under TCG, which emulates the CPU the command line names):
    /// the host's CPU model, features, microcode and kernel release, which the guest's kernel
    /// chose its code paths for (`-cpu host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cpu: Option<String>,
}

impl SnapshotKey {
    /// The snapshot's file name stem: the sha256 of the key.
    pub fn id(&self) -> String {
        use sha2::Digest;
        // Serializing strings and numbers cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(sha2::Sha256::digest(json))
    }
}

/// `ID.json`: what `ID.state` holds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRecord {
    /// What it was taken for.
    pub key: SnapshotKey,
    /// The first line of `--version` of the QEMU that saved it.
    pub qemu_version: String,
    /// The state's length in bytes.
    pub state_len: u64,
    /// The state's sha256 (hex), checked while QEMU loads it, before the guest runs.
    pub state_sha256: String,
    /// The guest's `CLOCK_BOOTTIME` at the point, in milliseconds.
    pub point_ms: u64,
}

/// Where a store keeps its snapshots, from a machine directory (`STORE/machines/NAME` →
/// `STORE/cache/qemu-boot-snapshots`); `None` outside a store's `machines/`.
pub fn cache_dir(machine_dir: &Path) -> Option<PathBuf> {
    let machines = machine_dir.parent()?;
    if machines.file_name()? != "machines" {
        return None;
    }
    Some(machines.parent()?.join("cache").join(CACHE_DIR))
}

/// One snapshot's files.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    /// The cache folder.
    pub dir: PathBuf,
    /// The key's id.
    pub id: String,
}

impl SnapshotFiles {
    /// The migration stream.
    pub fn state(&self) -> PathBuf {
        self.dir.join(format!("{}.state", self.id))
    }

    /// The record.
    pub fn record(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.id))
    }

    /// Held while one process saves the snapshot, so that two machines booting the same
    /// command line at once do not both write it.
    pub fn lock(&self) -> PathBuf {
        self.dir.join(format!("{}.lock", self.id))
    }

    /// Where this process streams the state before it is whole.
    pub fn state_tmp(&self) -> PathBuf {
        self.dir
            .join(format!("{}.state.{}.tmp", self.id, std::process::id()))
    }

    /// [`Self::state_tmp`] once the writer has finished (see `resume::save_uri`).
    pub fn state_written(&self) -> PathBuf {
        self.dir
            .join(format!("{}.state.{}.written", self.id, std::process::id()))
    }

    /// The record if there is a whole snapshot for `key`: its record reads, names this key,
    /// and its state has the recorded length. `Err` says why a snapshot that is there cannot
    /// be used; `Ok(None)` means there is none.
    pub fn usable(&self, key: &SnapshotKey) -> Result<Option<SnapshotRecord>, SnapshotError> {
        let path = self.record();
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_at(&path)(e)),
        };
        let record: SnapshotRecord =
            serde_json::from_slice(&text).map_err(|source| SnapshotError::RecordParse {
                path: path.clone(),
                source,
            })?;
        if record.key != *key {
            return Err(SnapshotError::OtherKey { path });
        }
        let state = self.state();
        let meta = std::fs::metadata(&state).map_err(io_at(&state))?;
        if meta.len() != record.state_len {
            return Err(SnapshotError::StateLength {
                path: state,
                found: meta.len(),
                saved: record.state_len,
            });
        }
        Ok(Some(record))
    }

    /// Takes the save lock; `None` if another process holds it (a lock left by a dead one
    /// is taken over once it is [`STALE_LOCK`] old). Released when the guard is dropped,
    /// also when the command ends early.
    pub fn try_lock(&self) -> std::io::Result<Option<SaveLock>> {
        make_private_dir(&self.dir)?;
        let create = || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.lock())
        };
        let guard = || SaveLock { path: self.lock() };
        match create() {
            Ok(_) => Ok(Some(guard())),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let age = std::fs::metadata(self.lock())
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|at| at.elapsed().ok());
                if age.is_some_and(|age| age > STALE_LOCK) {
                    let _ = std::fs::remove_file(self.lock());
                    return Ok(create().is_ok().then(guard));
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Moves the written state into place and writes its record after it (an older record
    /// goes first: no loader may pair it with the new state).
    pub fn publish(&self, written: &Path, record: &SnapshotRecord) -> std::io::Result<()> {
        match std::fs::remove_file(self.record()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::rename(written, self.state())?;
        let tmp = self
            .dir
            .join(format!("{}.json.{}.tmp", self.id, std::process::id()));
        let mut text = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        text.push(b'\n');
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, self.record())
    }

    /// Removes the snapshot (record first: without it the state is never loaded).
    pub fn remove(&self) {
        for path in [self.record(), self.state()] {
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove boot snapshot {}: {e}", path.display());
                }
            }
        }
    }
}

/// The save lock of one snapshot (see [`SnapshotFiles::try_lock`]).
#[derive(Debug)]
pub struct SaveLock {
    path: PathBuf,
}

impl Drop for SaveLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Makes `dir` (and what is missing above it) readable by its owner only: a snapshot holds
/// a guest's memory.
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    builder.create(dir)
}

/// Removes all but the `keep` most recently used snapshots in `dir` (a record's modification
/// time; a start from a snapshot touches it), and what a process that died left there once it
/// is older than a stale lock: temporary files, locks, states without a record.
pub fn evict(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut records = Vec::new();
    let mut states = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let modified = entry.metadata().and_then(|m| m.modified()).ok();
        let old = modified
            .and_then(|at| at.elapsed().ok())
            .is_some_and(|age| age > STALE_LOCK);
        if let Some(id) = name.strip_suffix(".json") {
            records.push((modified, id.to_owned()));
        } else if let Some(id) = name.strip_suffix(".state") {
            if old {
                states.push(id.to_owned());
            }
        } else if old
            && (name.ends_with(".tmp") || name.ends_with(".written") || name.ends_with(".lock"))
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for id in states {
        if !records.iter().any(|(_, r)| *r == id) {
            let _ = std::fs::remove_file(dir.join(format!("{id}.state")));
        }
    }
    records.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (_, id) in records.into_iter().skip(keep) {
        SnapshotFiles {
            dir: dir.to_owned(),
            id,
        }
        .remove();
    }
}

/// Marks a snapshot as just used, so that [`evict`] keeps it.
pub fn touch(files: &SnapshotFiles) {
    let _ = std::fs::File::options()
        .append(true)
        .open(files.record())
        .and_then(|f| f.set_modified(SystemTime::now()));
}

/// The guest's ms at the point, if `line` is the point's line (`snapshot-point MS`).
pub fn parse_point(line: &str) -> Option<u64> {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("snapshot-point"), Some(ms), None) => ms.parse().ok(),
        _ => None,
    }
}

/// The line that lets a guest at the point go on: the host's UTC time `now` and `seed`.
pub fn go_line(now: SystemTime, seed: &[u8; 32]) -> String {
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "go {} {} {}\n",
        since.as_secs(),
        since.subsec_nanos(),
        hex::encode(seed)
    )
}

/// The virtual size of the qcow2 image at `path` (its header's `size`, bytes 24..32, big
/// endian): what the guest's kernel reads as the disk's capacity.
pub fn qcow2_virtual_size(path: &Path) -> std::io::Result<u64> {
    use std::io::Read;
    let mut header = [0u8; 32];
    std::fs::File::open(path)?.read_exact(&mut header)?;
    if &header[..4] != b"QFI\xfb" {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a qcow2 image",
        ));
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&header[24..32]);
    Ok(u64::from_be_bytes(size))
}

/// Waits on the clock port for the guest's `snapshot-point MS` line; its MS. A `no-point`
/// line ends the wait ([`crate::clock::ClockPortError::NoPoint`]); other lines (answers to
/// nothing) are skipped.
#[cfg(unix)]
pub async fn wait_for_point(
    port: &mut crate::clock::Port,
    timeout: Duration,
) -> Result<u64, crate::clock::ClockPortError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let line = port.read_line(left).await?;
        if let Some(ms) = parse_point(&line) {
            return Ok(ms);
        }
        if line.trim() == NO_POINT {
            return Err(crate::clock::ClockPortError::NoPoint);
        }
        tracing::debug!(
            "clock port: skipped {:?} while waiting for the point",
            line.trim()
        );
    }
}

/// Writes the `go` line (the host's clock now, a fresh random seed) on the clock port.
#[cfg(unix)]
pub async fn send_go(port: &mut crate::clock::Port) -> Result<(), crate::clock::ClockPortError> {
    let seed: [u8; 32] = rand::random();
    port.send(&go_line(SystemTime::now(), &seed)).await
}

/// The guest's `ok …` answer to its `go`.
#[cfg(unix)]
pub async fn go_answer(
    port: &mut crate::clock::Port,
    timeout: Duration,
) -> Result<String, crate::clock::ClockPortError> {
    let answer = port.read_line(timeout).await?;
    if answer.starts_with("ok ") {
        Ok(answer.trim().to_owned())
    } else {
        Err(crate::clock::ClockPortError::Refused {
            answer: answer.trim().to_owned(),
        })
    }
}

/// Whether QEMU's words on a failed load (`rejected`, its log's end) say it could not load
/// the stream itself, rather than failing for a reason a cold boot would meet as well.
pub fn stream_refused(rejected: &str) -> bool {
    [
        "load of migration failed",
        "error while loading state",
        "Unknown savevm section",
        "Missing section footer",
        "Length mismatch",
    ]
    .iter()
    .any(|said| rejected.contains(said))
}

/// The host's CPU as a guest's kernel under a hypervisor sees it through `-cpu host`: its
/// model, feature flags and microcode (Linux's `/proc/cpuinfo`, first CPU) and the host
/// kernel's release (which decides what KVM passes on); elsewhere the release alone.
#[cfg(unix)]
fn host_cpu_identity() -> String {
    let mut identity = String::new();
    if let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") {
        for field in [
            "vendor_id",
            "model name",
            "flags",
            "microcode",
            "Features",
            "CPU part",
        ] {
            if let Some(line) = cpuinfo
                .lines()
                .find(|l| l.split(':').next().is_some_and(|k| k.trim() == field))
            {
                identity.push_str(line.trim());
                identity.push('\n');
            }
        }
    }
    identity.push_str(&crate::accel::host_kernel_release().unwrap_or_default());
    identity
}

/// Where the placeholder paths of a snapshot's command line point (nothing is there).
#[cfg(unix)]
const PLACEHOLDER: &str = "/rmachine-boot-snapshot";

/// In the machine directory while a snapshot's save holds the guest stopped at the point: a
/// command killed then leaves QEMU paused (or migrating, then `postmigrate`), and the next
/// `start` stops that QEMU and starts the machine afresh (nothing of it was read yet).
pub const SAVING_MARKER: &str = "boot-snapshot-saving";

/// Whether a machine's virtio-fs devices can be plugged in after QEMU starts: its machine
/// type takes them that way ([`args::plugs_virtio_fs_later`]) and its guest image's init waits
/// for them ([`rmachine_driver::FEATURE_VIRTIO_FS_HOTPLUG`]; an older image would never see
/// its shares).
fn virtio_fs_can_come_later(spec: &VmSpec, machine: &str) -> bool {
    args::plugs_virtio_fs_later(machine, true)
        && spec
            .boot
            .features
            .iter()
            .any(|f| f == rmachine_driver::FEATURE_VIRTIO_FS_HOTPLUG)
}

/// A machine's virtio-fs shares, in order.
fn virtio_fs_shares(spec: &VmSpec) -> impl Iterator<Item = &rmachine_driver::Share> {
    spec.shares
        .iter()
        .filter(|s| s.transport == ShareTransport::VirtioFs)
}

/// A share error naming `shares` (`share TAG (FOLDER)`, comma-separated).
fn share_error(
    dir: &MachineDir,
    shares: &[&rmachine_driver::Share],
    message: String,
) -> DriverError {
    let named: Vec<String> = shares
        .iter()
        .map(|s| format!("share {} ({})", s.tag, s.host_path.display()))
        .collect();
    DriverError::ShareDaemon {
        machine: dir.name.clone(),
        share: named.join(", "),
        message: message.into(),
    }
}

/// Whether a machine shares a folder over virtio-fs.
fn has_virtio_fs(spec: &VmSpec) -> bool {
    virtio_fs_shares(spec).next().is_some()
}

impl QemuDriver {
    /// Whether this machine's guest stops at the snapshot point: the option is on, the host
    /// has the clock port, the kernel is booted directly, the machine lives in a store (which
    /// keeps the snapshots), and it has no virtio-fs share unless its machine type can have
    /// those plugged in after the snapshot ([`args::plugs_virtio_fs_later`]: QEMU cannot save
    /// a vhost-user device at all).
    pub(crate) fn boot_snapshot_on(&self, dir: &MachineDir, spec: &VmSpec, machine: &str) -> bool {
        self.options.boot_snapshot == crate::BootSnapshotOption::On
            && self.has_clock_port()
            && !self.options.boot_iso
            && (!has_virtio_fs(spec) || virtio_fs_can_come_later(spec, machine))
            && cache_dir(dir.path()).is_some()
    }

    /// Whether this launch leaves the virtio-fs devices off QEMU's command line, for
    /// [`Self::plug_virtio_fs`] to plug in.
    pub(crate) fn plugs_virtio_fs_later(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
        machine: &str,
    ) -> bool {
        has_virtio_fs(spec) && self.boot_snapshot_on(dir, spec, machine)
    }

    /// Plugs the virtio-fs devices into a QEMU launched without them
    /// ([`args::plugs_virtio_fs_later`]), each connected to its share's running virtiofsd;
    /// one error for each share whose device QEMU did not take (the others are plugged in
    /// all the same).
    async fn plug_virtio_fs(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
        qmp: &mut crate::qmp::QmpClient,
    ) -> Vec<DriverError> {
        let began = std::time::Instant::now();
        let mut failed = Vec::new();
        for (index, share) in virtio_fs_shares(spec).enumerate() {
            let socket = crate::virtiofs::socket(dir, share);
            let [chardev, device] = args::virtio_fs_plug_commands(index, share, &socket);
            let plugged = match qmp.execute(chardev.0, Some(chardev.1)).await {
                Err(err) => Err((chardev.0, err)),
                Ok(_) => match qmp.execute(device.0, Some(device.1)).await {
                    Ok(_) => Ok(()),
                    Err(err) => {
                        // A chardev left without its device would hold virtiofsd's only
                        // connection.
                        let remove = serde_json::json!({ "id": args::virtio_fs_chardev(share) });
                        if let Err(e) = qmp.execute("chardev-remove", Some(remove)).await {
                            tracing::debug!(machine = %dir.name, "chardev-remove: {}", crate::error_chain(&e));
                        }
                        Err((device.0, err))
                    }
                },
            };
            if let Err((command, err)) = plugged {
                failed.push(share_error(
                    dir,
                    &[share],
                    format!(
                        "QEMU did not take its virtio-fs device ({command}): {}",
                        crate::error_chain(&err)
                    ),
                ));
            }
        }
        tracing::debug!(machine = %dir.name, ms = began.elapsed().as_millis() as u64, failed = failed.len(), "virtio-fs devices plugged in");
        failed
    }

    /// Plugs the virtio-fs devices in ([`Self::plug_virtio_fs`]) when this launch left them
    /// off QEMU's command line. A device QEMU does not take is logged, naming its share, and
    /// the machine runs on without it: the guest reports that share unmounted (`create` and
    /// `start` warn, `ls` shows it), as any share that could not be mounted.
    pub(crate) async fn plug_virtio_fs_if_left_out(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
        machine: &str,
        qmp: Option<&mut crate::qmp::QmpClient>,
    ) {
        if !self.plugs_virtio_fs_later(dir, spec, machine) {
            return;
        }
        let failed = match qmp {
            Some(qmp) => self.plug_virtio_fs(dir, spec, qmp).await,
            None => match self.qmp(dir).await {
                Ok(mut qmp) => self.plug_virtio_fs(dir, spec, &mut qmp).await,
                Err(err) => {
                    let shares: Vec<&rmachine_driver::Share> = virtio_fs_shares(spec).collect();
                    vec![share_error(
                        dir,
                        &shares,
                        format!(
                            "their virtio-fs devices were not plugged in: {}",
                            crate::error_chain(&err)
                        ),
                    )]
                }
            },
        };
        for err in failed {
            tracing::warn!(machine = %dir.name, "{}", crate::error_chain(&err));
        }
    }

    /// Why [`Self::boot_snapshot_on`] is false although the option is on.
    fn why_no_boot_snapshot(&self, dir: &MachineDir, spec: &VmSpec, machine: &str) -> String {
        if !self.has_clock_port() {
            "this host has no clock port for the guest (Windows)".to_owned()
        } else if self.options.boot_iso {
            "the machine boots the ISO (--qemu-boot-iso)".to_owned()
        } else if let Some(share) = spec
            .shares
            .iter()
            .find(|s| s.transport == ShareTransport::VirtioFs)
            .filter(|_| !virtio_fs_can_come_later(spec, machine))
        {
            let why_not_later = if !args::plugs_virtio_fs_later(machine, true) {
                if args::machine_arg(machine)
                    .split(',')
                    .any(|o| o.starts_with("pcie="))
                {
                    format!("--qemu-machine {machine} sets pcie= itself")
                } else {
                    format!("machine type {machine} cannot have it plugged in afterwards (microvm with ACPI can)")
                }
            } else {
                "the machine's guest image predates virtio-fs devices plugged in after boot"
                    .to_owned()
            };
            format!(
                "{} is shared over virtio-fs, which QEMU cannot save, and {why_not_later}; 9p \
                 and sftp shares can be saved",
                share.host_path.display()
            )
        } else if cache_dir(dir.path()).is_none() {
            SnapshotError::NotInStore.to_string()
        } else {
            "--qemu-boot-snapshot off".to_owned()
        }
    }

    /// The key of this machine's snapshot and its files; why not if a part of it cannot be
    /// read.
    #[cfg(unix)]
    fn snapshot_key(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
        state: &QemuState,
        tsc_khz: Option<u64>,
    ) -> Result<(SnapshotKey, SnapshotFiles), SnapshotError> {
        let cache = cache_dir(dir.path()).ok_or(SnapshotError::NotInStore)?;
        let program = self.program();
        let binary = resume::find_program(&program).ok_or_else(|| SnapshotError::QemuNotFound {
            program: program.clone(),
        })?;
        let qemu = BinaryStamp::of(&binary).map_err(io_at(&binary))?;
        let boot_files = resume::boot_stamps(spec).map_err(io_at(&spec.boot.kernel))?;
        let disk = dir.file(crate::DISK);
        let data_disk_bytes = qcow2_virtual_size(&disk).map_err(io_at(&disk))?;
        let config_drive_bytes = std::fs::metadata(&spec.config_drive)
            .map_err(io_at(&spec.config_drive))?
            .len();
        let host_cpu = match state.accel.accel {
            crate::Accel::Tcg => None,
            _ => Some(host_cpu_identity()),
        };
        let placeholder = Path::new(PLACEHOLDER);
        // A 9p share's folder is not part of the guest's state (only its tag is, and nothing
        // is mounted at the point): machines sharing other folders share a snapshot.
        let shares: Vec<rmachine_driver::Share> = spec
            .shares
            .iter()
            .map(|share| rmachine_driver::Share {
                host_path: placeholder.join("share"),
                ..share.clone()
            })
            .collect();
        let argv = args::vm_args(&args::VmLaunch {
            host: self.host,
            guest: self.guest_arch(),
            name: "boot-snapshot",
            accel: state.accel.accel,
            machine: &state.machine,
            cpus: spec.cpus,
            memory_mb: spec.memory_mb,
            boot: &spec.boot,
            iso: None,
            firmware: self.options.firmware.as_deref(),
            tsc_khz,
            disk: &placeholder.join(crate::DISK),
            config_drive: &placeholder.join("config.img"),
            ssh_port: 0,
            engine_port: 0,
            guest_ports: spec.guest_ports,
            shares: &shares,
            virtiofs_sockets: &[],
            clock_pipe: Some(&placeholder.join(crate::clock::PIPE)),
            console_log: &placeholder.join(crate::CONSOLE_LOG),
            pidfile: &placeholder.join(crate::PIDFILE),
            qmp: &crate::qmp::QmpEndpoint::Unix(placeholder.join(crate::QMP_SOCKET)),
            boot_snapshot: true,
        });
        let key = SnapshotKey {
            format: FORMAT,
            argv,
            qemu,
            boot_files,
            data_disk_bytes,
            config_drive_bytes,
            host_cpu,
        };
        let files = SnapshotFiles {
            dir: cache,
            id: key.id(),
        };
        Ok((key, files))
    }

    /// Starts the machine from its boot snapshot if there is a usable one; false if it must
    /// boot its kernel (no snapshot, or one that did not load: that one is removed).
    #[cfg(unix)]
    pub(crate) async fn start_from_boot_snapshot(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
        state: &QemuState,
        tsc_khz: Option<u64>,
    ) -> bool {
        if !self.boot_snapshot_on(dir, spec, &state.machine) {
            if self.options.boot_snapshot == crate::BootSnapshotOption::On {
                tracing::info!(machine = %dir.name, "no boot snapshot: {}", self.why_no_boot_snapshot(dir, spec, &state.machine));
            }
            return false;
        }
        let (key, files) = match self.snapshot_key(dir, spec, state, tsc_khz) {
            Ok(found) => found,
            Err(why) => {
                tracing::info!(machine = %dir.name, "no boot snapshot: {why}");
                return false;
            }
        };
        let record = match files.usable(&key) {
            Ok(Some(record)) => record,
            Ok(None) => return false,
            Err(why) => {
                tracing::warn!(machine = %dir.name, "boot snapshot {} removed: {why}", files.id);
                files.remove();
                return false;
            }
        };
        let began = std::time::Instant::now();
        match self
            .load_boot_snapshot(dir, spec, state, tsc_khz, &files, &record)
            .await
        {
            Ok(None) => {
                touch(&files);
                tracing::info!(
                    machine = %dir.name,
                    ms = began.elapsed().as_millis() as u64,
                    point_ms = record.point_ms,
                    "started from the boot snapshot {}", files.id
                );
                true
            }
            Ok(Some(why)) => {
                tracing::warn!(machine = %dir.name, "boot snapshot {} not used and removed ({why}): the machine boots its kernel", files.id);
                files.remove();
                let _ = self.stop_inner(dir, StopMode::Kill).await;
                false
            }
            Err(err) => {
                tracing::warn!(machine = %dir.name, "boot snapshot {} not used ({}): the machine boots its kernel", files.id, crate::error_chain(&err));
                let _ = self.stop_inner(dir, StopMode::Kill).await;
                false
            }
        }
    }

    /// See the unix version: without the clock port there are no snapshots.
    #[cfg(not(unix))]
    pub(crate) async fn start_from_boot_snapshot(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
        state: &QemuState,
        _tsc_khz: Option<u64>,
    ) -> bool {
        if self.options.boot_snapshot == crate::BootSnapshotOption::On {
            tracing::info!(machine = %dir.name, "no boot snapshot: {}", self.why_no_boot_snapshot(dir, spec, &state.machine));
        }
        false
    }

    /// Launches QEMU on the snapshot, checks the state's sum while QEMU loads it, lets the
    /// guest run and sends it its `go`. `Ok(Some(why))` if the snapshot itself is at fault.
    #[cfg(unix)]
    async fn load_boot_snapshot(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
        state: &QemuState,
        tsc_khz: Option<u64>,
        files: &SnapshotFiles,
        record: &SnapshotRecord,
    ) -> Result<Option<String>, DriverError> {
        let path = files.state();
        // Summed while QEMU reads the same file: the guest runs only once it matched.
        let damage = {
            let path = path.clone();
            let want = record.state_sha256.clone();
            tokio::task::spawn_blocking(move || match resume::sha256_of(&path) {
                Ok(sum) if sum == want => None,
                Ok(_) => Some("its sha256 differs from the one recorded".to_owned()),
                Err(e) => Some(format!("it is unreadable: {e}")),
            })
        };
        let damage = || async {
            damage
                .await
                .unwrap_or_else(|e| Some(format!("its check failed: {e}")))
        };
        // QEMU gone while loading: the snapshot's fault only if its file is damaged or QEMU
        // said it could not load the stream; a port taken or a disk locked by another QEMU
        // would stop a cold boot just the same, and a good snapshot is kept.
        let rejected = match self.launch(dir, spec, state, tsc_khz, Some(&path)).await {
            Ok(()) => match self.wait_loaded(dir, "the boot snapshot").await? {
                Ok(qmp) => Ok(qmp),
                Err(rejected) => Err(rejected),
            },
            Err(DriverError::CommandFailed { stderr, .. })
                if stderr.starts_with(crate::REJECTED) =>
            {
                self.clean_runtime_files(dir)?;
                Err(stderr)
            }
            Err(err) => return Err(err),
        };
        let mut qmp = match rejected {
            Ok(qmp) => qmp,
            Err(rejected) => {
                if let Some(why) = damage().await {
                    return Ok(Some(why));
                }
                if stream_refused(&rejected) {
                    return Ok(Some(rejected));
                }
                return Err(DriverError::CommandFailed {
                    program: self.program(),
                    status: -1,
                    stderr: rejected,
                });
            }
        };
        if let Some(why) = damage().await {
            return Ok(Some(why));
        }
        self.plug_virtio_fs_if_left_out(dir, spec, &state.machine, Some(&mut qmp))
            .await;
        // The go goes into the pipe before the guest runs: QEMU hands it over as soon as the
        // guest reads its port. From `cont` on the guest may write its disks, so nothing after
        // it stops this machine.
        let mut port =
            crate::clock::Port::open(dir.path()).map_err(|e| Self::clock_port_error(dir, e))?;
        send_go(&mut port)
            .await
            .map_err(|e| Self::clock_port_error(dir, e))?;
        qmp.execute("cont", None)
            .await
            .map_err(|e| Self::qmp_error(dir, e))?;
        match go_answer(&mut port, GO_TIMEOUT).await {
            Ok(answer) => {
                tracing::debug!(machine = %dir.name, "the guest went on from the snapshot point: {answer}")
            }
            Err(err) => {
                tracing::warn!(machine = %dir.name, "the guest did not answer its go ({}); it goes on by itself", crate::error_chain(&err))
            }
        }
        Ok(None)
    }

    #[cfg(unix)]
    fn clock_port_error(dir: &MachineDir, err: crate::clock::ClockPortError) -> DriverError {
        DriverError::Protocol {
            machine: dir.name.clone(),
            channel: "clock port",
            message: crate::error_chain(&err),
        }
    }

    /// After a cold boot's QEMU answers: tells the guest, which will stop at the snapshot
    /// point, whether to wait there. If this command line has no snapshot yet (and no other
    /// process is taking it), a task meets the guest there, saves the state and lets it go
    /// on; the task lives as long as the command (which waits for the guest to be ready).
    /// True if that task also plugs the virtio-fs devices in (after the save), false if the
    /// caller must.
    #[cfg(unix)]
    pub(crate) fn meet_guest_at_point(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
        state: &QemuState,
        tsc_khz: Option<u64>,
    ) -> bool {
        let wanted = match self.snapshot_key(dir, spec, state, tsc_khz) {
            Ok((key, files)) => match files.usable(&key) {
                Ok(Some(_)) => None,
                _ => match files.try_lock() {
                    // Asked again under the lock: another process may have published one
                    // between the first look and the lock.
                    Ok(Some(lock)) if !matches!(files.usable(&key), Ok(Some(_))) => {
                        Some((key, files, lock))
                    }
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(machine = %dir.name, "no boot snapshot: {}: {e}", files.lock().display());
                        None
                    }
                },
            },
            Err(why) => {
                tracing::info!(machine = %dir.name, "no boot snapshot: {why}");
                None
            }
        };
        let mut port = match crate::clock::Port::open(dir.path()) {
            Ok(port) => port,
            Err(err) => {
                // The guest waits a few seconds at the point and goes on.
                tracing::warn!(machine = %dir.name, "clock port: {}", crate::error_chain(&err));
                return false;
            }
        };
        let plug = (spec.clone(), state.machine.clone());
        let saving = wanted.is_some();
        let driver = self.clone();
        let dir = dir.clone();
        tokio::spawn(async move {
            let first = if wanted.is_some() {
                WANTED_LINE
            } else {
                SKIP_LINE
            };
            if let Err(err) = port.send(first).await {
                tracing::warn!(machine = %dir.name, "clock port: {}", crate::error_chain(&err));
            }
            let Some((key, files, lock)) = wanted else {
                return;
            };
            match wait_for_point(&mut port, POINT_TIMEOUT).await {
                Ok(point_ms) => {
                    driver
                        .take_snapshot(&dir, &key, &files, lock, point_ms, &mut port, &plug)
                        .await
                }
                Err(err) => {
                    tracing::info!(machine = %dir.name, "the guest did not reach the boot snapshot's point: {}", crate::error_chain(&err));
                    driver
                        .plug_virtio_fs_if_left_out(&dir, &plug.0, &plug.1, None)
                        .await;
                }
            }
        });
        saving
    }

    /// See the unix version.
    #[cfg(not(unix))]
    pub(crate) fn meet_guest_at_point(
        &self,
        _dir: &MachineDir,
        _spec: &VmSpec,
        _state: &QemuState,
        _tsc_khz: Option<u64>,
    ) -> bool {
        false
    }

    /// With the guest waiting at the point: stops it, saves its state as the snapshot, lets
    /// it run, plugs the virtio-fs devices of `plug` (the machine's spec and machine type) in
    /// if it has them, sums and publishes the saved state, and sends the guest its `go`.
    /// Failures are logged: the machine boots on without a snapshot.
    #[cfg(unix)]
    #[allow(clippy::too_many_arguments)]
    async fn take_snapshot(
        &self,
        dir: &MachineDir,
        key: &SnapshotKey,
        files: &SnapshotFiles,
        lock: SaveLock,
        point_ms: u64,
        port: &mut crate::clock::Port,
        plug: &(VmSpec, String),
    ) {
        let began = std::time::Instant::now();
        let written = files.state_written();
        let saved = self.save_at_point(dir, files).await;
        self.plug_virtio_fs_if_left_out(dir, &plug.0, &plug.1, None)
            .await;
        let published = match saved {
            Ok(qemu_version) => {
                let summed = {
                    let written = written.clone();
                    tokio::task::spawn_blocking(move || {
                        let len = std::fs::metadata(&written)?.len();
                        Ok::<_, std::io::Error>((len, resume::sha256_of(&written)?))
                    })
                    .await
                };
                match summed {
                    Ok(Ok((state_len, state_sha256))) => files
                        .publish(
                            &written,
                            &SnapshotRecord {
                                key: key.clone(),
                                qemu_version,
                                state_len,
                                state_sha256,
                                point_ms,
                            },
                        )
                        .map(|()| state_len)
                        .map_err(|e| Self::io_error(dir, &written, e)),
                    Ok(Err(e)) => Err(Self::io_error(dir, &written, e)),
                    Err(e) => Err(Self::io_error(dir, &written, std::io::Error::other(e))),
                }
            }
            Err(err) => Err(err),
        };
        match published {
            Ok(bytes) => {
                tracing::info!(
                    machine = %dir.name,
                    bytes,
                    ms = began.elapsed().as_millis() as u64,
                    point_ms,
                    "took the boot snapshot {}", files.id
                );
                evict(&files.dir, KEEP);
            }
            Err(err) => {
                let _ = std::fs::remove_file(&written);
                let _ = std::fs::remove_file(files.state_tmp());
                // A state renamed into place whose record could not be written.
                files.remove();
                tracing::warn!(machine = %dir.name, "boot snapshot not taken: {}", crate::error_chain(&err));
            }
        }
        drop(lock);
        // Only now: a command that ends once the guest is ready (and with it this task) has
        // published the snapshot and released its lock by then.
        let answered = match send_go(port).await {
            Ok(()) => go_answer(port, GO_TIMEOUT).await,
            Err(err) => Err(err),
        };
        match answered {
            Ok(answer) => {
                tracing::debug!(machine = %dir.name, "the guest went on from the snapshot point: {answer}")
            }
            Err(err) => {
                tracing::warn!(machine = %dir.name, "the guest did not answer its go: {}", crate::error_chain(&err))
            }
        }
    }

    /// Stops the guest, streams its state to [`SnapshotFiles::state_written`] and lets it run
    /// again (also after a failure); the saving QEMU's version line.
    #[cfg(unix)]
    async fn save_at_point(
        &self,
        dir: &MachineDir,
        files: &SnapshotFiles,
    ) -> Result<String, DriverError> {
        let tmp = files.state_tmp();
        let written = files.state_written();
        let uri = resume::save_uri(&tmp, &written).map_err(|e| Self::io_error(dir, &tmp, e))?;
        let mut qmp = self.qmp(dir).await?;
        let qmp_err = |e| Self::qmp_error(dir, e);
        let marker = dir.file(SAVING_MARKER);
        let pid = self.live_pid(dir).await?.unwrap_or_default();
        std::fs::write(&marker, format!("{pid}\n")).map_err(|e| Self::io_error(dir, &marker, e))?;
        let qemu_version = match self.version_then_stop(dir, &mut qmp).await {
            Ok(version) => version,
            Err(err) => {
                // QEMU did not stop (it stops last): nothing for a later `start` to mend.
                let _ = std::fs::remove_file(&marker);
                return Err(err);
            }
        };
        let migrated = self.migrate_to(dir, &mut qmp, &uri, &written).await;
        let resumed = qmp.execute("cont", None).await.map_err(qmp_err);
        if resumed.is_ok() {
            let _ = std::fs::remove_file(&marker);
        }
        migrated?;
        resumed?;
        Ok(qemu_version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SnapshotKey {
        SnapshotKey {
            format: FORMAT,
            argv: vec!["-m".into(), "1024".into()],
            qemu: BinaryStamp {
                path: "/usr/bin/qemu-system-x86_64".into(),
                len: 1,
                modified_ns: 2,
                dev: 3,
                inode: 4,
                changed_ns: 5,
            },
            boot_files: Vec::new(),
            data_disk_bytes: 20 << 30,
            config_drive_bytes: 64 << 10,
            host_cpu: None,
        }
    }

    #[test]
    fn the_id_changes_with_anything_the_state_depends_on() {
        let base = key();
        let mut memory = key();
        memory.argv[1] = "2048".into();
        let mut disk = key();
        disk.data_disk_bytes += 1;
        let mut qemu = key();
        qemu.qemu.inode += 1;
        let mut config = key();
        config.config_drive_bytes *= 2;
        let mut image = key();
        image.boot_files.push(FileStamp {
            path: "/cache/guest/0.1.0/vmlinuz".into(),
            len: 1,
            modified_ns: 1,
        });
        let mut cpu = key();
        cpu.host_cpu = Some("flags: avx2".into());
        let ids: std::collections::HashSet<String> =
            [&base, &memory, &disk, &qemu, &config, &image, &cpu]
                .map(|k| k.id())
                .into();
        assert_eq!(ids.len(), 7);
        assert_eq!(base.id(), key().id());
        assert_eq!(base.id().len(), 64);
    }

    #[test]
    fn only_a_whole_snapshot_for_the_same_key_is_usable() {
        let tmp = tempfile::tempdir().unwrap();
        let files = SnapshotFiles {
            dir: tmp.path().to_owned(),
            id: key().id(),
        };
        assert!(matches!(files.usable(&key()), Ok(None)));
        std::fs::write(files.state_written(), b"state").unwrap();
        let record = SnapshotRecord {
            key: key(),
            qemu_version: "QEMU emulator version 7.2.0".into(),
            state_len: 5,
            state_sha256: "x".into(),
            point_ms: 2000,
        };
        files.publish(&files.state_written(), &record).unwrap();
        assert_eq!(files.usable(&key()).unwrap(), Some(record.clone()));
        let mut other = key();
        other.data_disk_bytes = 1;
        let err = files.usable(&other).unwrap_err();
        assert!(matches!(err, SnapshotError::OtherKey { .. }), "{err}");
        std::fs::write(files.state(), b"stat").unwrap();
        let err = files.usable(&key()).unwrap_err().to_string();
        assert!(err.contains("is 4 bytes where 5 were saved"), "{err}");
        std::fs::write(files.record(), b"{").unwrap();
        let err = files.usable(&key()).unwrap_err();
        assert!(matches!(err, SnapshotError::RecordParse { .. }), "{err}");
        files.remove();
        assert!(matches!(files.usable(&key()), Ok(None)));
        assert!(!files.state().exists());
    }

    #[test]
    fn only_the_streams_own_refusal_blames_the_snapshot() {
        assert!(stream_refused(
            "QEMU rejected the saved state: qemu-system-x86_64: error while loading state for \
             instance 0x0 of device 'cpu' / qemu-system-x86_64: load of migration failed: \
             Invalid argument"
        ));
        assert!(!stream_refused(
            "QEMU rejected the saved state: qemu-system-x86_64: -netdev user,id=net0,\
             hostfwd=tcp:127.0.0.1:40022-:22: Could not set up host forwarding rule"
        ));
        assert!(!stream_refused(
            "QEMU rejected the saved state: qemu-system-x86_64: Failed to get \"write\" lock"
        ));
    }

    #[test]
    fn one_process_saves_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let files = SnapshotFiles {
            dir: tmp.path().join("cache"),
            id: "a".into(),
        };
        let lock = files.try_lock().unwrap().expect("the first takes it");
        assert!(files.try_lock().unwrap().is_none());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "a snapshot holds a guest's memory");
        }
        drop(lock);
        let lock = files.try_lock().unwrap().expect("released on drop");
        // A lock left by a process that died long ago is taken over.
        std::mem::forget(lock);
        let old = SystemTime::now() - Duration::from_secs(3600);
        set_mtime(files.lock(), old);
        assert!(files.try_lock().unwrap().is_some());
    }

    /// Sets a file's modification time (the age eviction and stale locks go by).
    fn set_mtime(path: impl AsRef<Path>, at: SystemTime) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(at)
            .unwrap();
    }

    #[test]
    fn eviction_keeps_the_most_recently_used() {
        let tmp = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        for (i, id) in ["old", "mid", "new"].iter().enumerate() {
            let files = SnapshotFiles {
                dir: tmp.path().to_owned(),
                id: (*id).into(),
            };
            std::fs::write(files.state(), b"s").unwrap();
            std::fs::write(files.record(), b"{}").unwrap();
            let at = now - Duration::from_secs(100 - 10 * i as u64);
            set_mtime(files.record(), at);
        }
        let old_tmp = tmp.path().join("x.state.1.tmp");
        std::fs::write(&old_tmp, b"t").unwrap();
        set_mtime(&old_tmp, now - Duration::from_secs(3600));
        let fresh_tmp = tmp.path().join("y.state.2.tmp");
        std::fs::write(&fresh_tmp, b"t").unwrap();
        // Left by processes that died: a state whose record was never written, a lock.
        for orphan in ["orphan.state", "dead.lock"] {
            let path = tmp.path().join(orphan);
            std::fs::write(&path, b"o").unwrap();
            set_mtime(&path, now - Duration::from_secs(3600));
        }
        evict(tmp.path(), 2);
        let mut left: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "mid.json",
                "mid.state",
                "new.json",
                "new.state",
                "y.state.2.tmp"
            ]
        );
    }

    #[test]
    fn the_point_and_go_lines() {
        assert_eq!(parse_point("snapshot-point 2650\n"), Some(2650));
        assert_eq!(parse_point("snapshot-point\n"), None);
        assert_eq!(parse_point("snapshot-point x\n"), None);
        assert_eq!(parse_point("snapshot-point 1 2\n"), None);
        assert_eq!(parse_point("ok 1 2\n"), None);
        let at = std::time::UNIX_EPOCH + Duration::new(1_765_000_000, 5);
        let line = go_line(at, &[0xab; 32]);
        assert_eq!(line, format!("go 1765000000 5 {}\n", "ab".repeat(32)));
    }

    #[test]
    fn the_qcow2_size_is_read_from_its_header() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("disk.qcow2");
        let mut header = b"QFI\xfb".to_vec();
        header.extend([0u8; 20]);
        header.extend((20u64 << 30).to_be_bytes());
        std::fs::write(&path, &header).unwrap();
        assert_eq!(qcow2_virtual_size(&path).unwrap(), 20 << 30);
        std::fs::write(&path, [0u8; 32]).unwrap();
        assert!(qcow2_virtual_size(&path).is_err());
    }

    /// A machine sharing /home/me over virtio-fs, its image able to take the device later.
    fn virtio_fs_spec() -> VmSpec {
        VmSpec {
            cpus: 1,
            memory_mb: 512,
            disk_size_mb: 20000,
            boot: rmachine_driver::BootImage {
                kernel: "/img/vmlinuz".into(),
                initrd: "/img/initrd.img".into(),
                cmdline: String::new(),
                arch: "x86_64".into(),
                iso: None,
                kernel_elf: None,
                initrd_uncompressed: None,
                features: vec![rmachine_driver::FEATURE_VIRTIO_FS_HOTPLUG.into()],
            },
            config_drive: "/s/machines/dev/config.img".into(),
            guest_ports: Default::default(),
            shares: vec![rmachine_driver::Share {
                tag: "rmshare0".into(),
                host_path: "/home/me".into(),
                guest_path: "/home/me".into(),
                read_only: false,
                transport: ShareTransport::VirtioFs,
            }],
        }
    }

    fn linux_driver() -> QemuDriver {
        QemuDriver::new(crate::QemuOptions::default()).for_host(crate::platform::HostPlatform {
            os: crate::platform::HostOs::Linux,
            arch: crate::platform::HostArch::X86_64,
        })
    }

    #[test]
    fn a_virtio_fs_share_keeps_snapshots_only_where_it_can_be_plugged_in_later() {
        let dir = MachineDir::new("dev", "/s/machines/dev");
        let mut spec = virtio_fs_spec();
        let driver = linux_driver();
        assert!(driver.boot_snapshot_on(&dir, &spec, "microvm"));
        assert!(driver.plugs_virtio_fs_later(&dir, &spec, "microvm"));
        for (machine, why) in [
            ("q35", "machine type q35 cannot have it plugged in"),
            ("microvm,acpi=on,pcie=on", "sets pcie= itself"),
        ] {
            assert!(!driver.boot_snapshot_on(&dir, &spec, machine), "{machine}");
            let reason = driver.why_no_boot_snapshot(&dir, &spec, machine);
            assert!(
                reason.contains(why) && reason.contains("/home/me"),
                "{reason}"
            );
        }
        // An image whose init does not wait for devices plugged in later keeps them on the
        // command line, and so takes no snapshot.
        spec.boot.features.clear();
        assert!(!driver.boot_snapshot_on(&dir, &spec, "microvm"));
        assert!(!driver.plugs_virtio_fs_later(&dir, &spec, "microvm"));
        assert!(driver
            .why_no_boot_snapshot(&dir, &spec, "microvm")
            .contains("guest image predates"));
        // Without a virtio-fs share the image's features do not matter.
        spec.shares.clear();
        assert!(driver.boot_snapshot_on(&dir, &spec, "microvm"));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_device_qemu_does_not_take_is_reported_naming_its_share() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = MachineDir::new("dev", tmp.path());
        let socket = tmp.path().join("qmp.sock");
        // QEMU refuses the first share's device and takes the second's.
        let device_adds = std::sync::atomic::AtomicUsize::new(0);
        let log = crate::qmp::fake::serve(&socket, move |command| {
            let refused = command == "device_add"
                && device_adds.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            if refused {
                vec![
                    r#"{"error": {"class": "GenericError", "desc": "Bus 'rmfs-port0' not found"}}"#
                        .to_owned(),
                ]
            } else {
                vec![r#"{"return": {}}"#.to_owned()]
            }
        });
        let mut qmp = crate::qmp::QmpClient::connect(
            &crate::qmp::QmpEndpoint::Unix(socket),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let mut spec = virtio_fs_spec();
        let mut second = spec.shares[0].clone();
        second.tag = "rmshare1".into();
        second.host_path = "/srv/b".into();
        spec.shares.push(second);
        let failed = linux_driver().plug_virtio_fs(&dir, &spec, &mut qmp).await;
        let failed: Vec<String> = failed.iter().map(|e| e.to_string()).collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(
            failed[0].contains("share rmshare0 (/home/me)")
                && failed[0].contains("Bus 'rmfs-port0' not found"),
            "{failed:?}"
        );
        assert_eq!(
            *log.lock().unwrap(),
            [
                "chardev-add",
                "device_add",
                "chardev-remove",
                "chardev-add",
                "device_add"
            ]
        );
    }

    #[test]
    fn the_cache_is_the_stores() {
        assert_eq!(
            cache_dir(Path::new("/s/machines/intro")),
            Some(PathBuf::from("/s/cache/qemu-boot-snapshots"))
        );
        assert_eq!(cache_dir(Path::new("/tmp/intro")), None);
    }

    /// Makes the clock pipes in `dir` and runs `guest` on a thread standing in for QEMU and
    /// the guest's init (it gets the pipes as QEMU holds them: what the guest receives, what
    /// it answers); returns that thread and the host's end, opened once the pipes are held.
    #[cfg(unix)]
    fn stand_in_guest<T: Send + 'static>(
        dir: &Path,
        guest: impl FnOnce(std::fs::File, std::fs::File) -> T + Send + 'static,
    ) -> (std::thread::JoinHandle<T>, crate::clock::Port) {
        crate::clock::make_pipes(dir).unwrap();
        let pipes = dir.to_owned();
        let (held, holding) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let (input, output) = crate::clock::hold_pipes_as_qemu(&pipes);
            held.send(()).unwrap();
            guest(input, output)
        });
        holding.recv().unwrap();
        (thread, crate::clock::Port::open(dir).unwrap())
    }

    /// A stand-in for QEMU and a guest that heard no first word in time.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_guest_that_boots_on_ends_the_wait_for_the_point() {
        let tmp = tempfile::tempdir().unwrap();
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let (guest, mut port) = stand_in_guest(tmp.path(), move |_input, mut output| {
            use std::io::Write;
            output.write_all(b"no-point\n").unwrap();
            // The pipes stay open, as QEMU holds them: only the line can end the wait.
            let _ = finished.recv_timeout(Duration::from_secs(30));
        });
        let waited = wait_for_point(&mut port, Duration::from_secs(20)).await;
        assert!(
            matches!(waited, Err(crate::clock::ClockPortError::NoPoint)),
            "{waited:?}"
        );
        done.send(()).unwrap();
        guest.join().unwrap();
    }

    /// A stand-in for QEMU and the guest's init: holds both pipes open, writes the point's
    /// line, then answers the `go` line.
    #[cfg(unix)]
    #[tokio::test]
    async fn the_guest_at_the_point_is_let_go() {
        let tmp = tempfile::tempdir().unwrap();
        let (guest, mut port) = stand_in_guest(tmp.path(), |input, mut output| {
            use std::io::{BufRead, Write};
            output.write_all(b"stray\nsnapshot-point 2650\n").unwrap();
            let mut line = String::new();
            std::io::BufReader::new(input).read_line(&mut line).unwrap();
            output.write_all(b"ok 1765000000 0\n").unwrap();
            std::thread::sleep(Duration::from_millis(300));
            line
        });
        assert_eq!(
            wait_for_point(&mut port, Duration::from_secs(5))
                .await
                .unwrap(),
            2650
        );
        assert_eq!(
            {
                send_go(&mut port).await.unwrap();
                go_answer(&mut port, Duration::from_secs(5)).await.unwrap()
            },
            "ok 1765000000 0"
        );
        let go = guest.join().unwrap();
        let words: Vec<&str> = go.split_whitespace().collect();
        assert_eq!(words[0], "go");
        assert_eq!(words[3].len(), 64);
    }
}
