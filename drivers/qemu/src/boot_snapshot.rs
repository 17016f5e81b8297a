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

#[cfg(unix)]
use rmachine_driver::{DriverError, StopMode};
use rmachine_driver::{MachineDir, ShareTransport, VmSpec};
use serde::{Deserialize, Serialize};

use crate::resume::{BinaryStamp, FileStamp};
#[cfg(unix)]
use crate::{args, resume};
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
/// How long a guest at the point has to answer the `go` line (its init answers at once).
pub const GO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the host waits for a booting guest to reach the point; a guest whose init does
/// not know it never does, and the wait ends with the command anyway.
pub const POINT_TIMEOUT: Duration = Duration::from_secs(600);
/// A lock older than this was left by a process that died while saving.
const STALE_LOCK: Duration = Duration::from_secs(600);

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
    pub fn usable(&self, key: &SnapshotKey) -> Result<Option<SnapshotRecord>, String> {
        let text = match std::fs::read(self.record()) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("its record is unreadable: {e}")),
        };
        let record: SnapshotRecord =
            serde_json::from_slice(&text).map_err(|e| format!("its record does not parse: {e}"))?;
        if record.key != *key {
            return Err("its record names another command line".to_owned());
        }
        match std::fs::metadata(self.state()) {
            Ok(meta) if meta.len() == record.state_len => Ok(Some(record)),
            Ok(meta) => Err(format!(
                "the state is {} bytes where {} were saved",
                meta.len(),
                record.state_len
            )),
            Err(e) => Err(format!("the state is unreadable: {e}")),
        }
    }

    /// Takes the save lock; false if another process holds it (a lock left by a dead one
    /// is taken over once it is [`STALE_LOCK`] old).
    pub fn try_lock(&self) -> std::io::Result<bool> {
        std::fs::create_dir_all(&self.dir)?;
        let create = || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.lock())
        };
        match create() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let age = std::fs::metadata(self.lock())
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|at| at.elapsed().ok());
                if age.is_some_and(|age| age > STALE_LOCK) {
                    let _ = std::fs::remove_file(self.lock());
                    return Ok(create().is_ok());
                }
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Releases the save lock.
    pub fn unlock(&self) {
        let _ = std::fs::remove_file(self.lock());
    }

    /// Moves the written state into place and writes its record after it.
    pub fn publish(&self, written: &Path, record: &SnapshotRecord) -> std::io::Result<()> {
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

/// Removes all but the `keep` most recently used snapshots in `dir` (a record's modification
/// time; a start from a snapshot touches it), and temporary files older than a stale lock.
pub fn evict(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut records = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let modified = entry.metadata().and_then(|m| m.modified()).ok();
        if let Some(id) = name.strip_suffix(".json") {
            records.push((modified, id.to_owned()));
        } else if name.ends_with(".tmp") || name.ends_with(".written") {
            let old = modified
                .and_then(|at| at.elapsed().ok())
                .is_some_and(|age| age > STALE_LOCK);
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
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

/// Waits on the clock port for the guest's `snapshot-point MS` line; its MS. Other lines
/// (answers to nothing) are skipped.
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
        tracing::debug!(
            "clock port: skipped {:?} while waiting for the point",
            line.trim()
        );
    }
}

/// Writes the `go` line (the host's clock now, a fresh random seed) on the clock port and
/// returns the guest's `ok …` answer.
#[cfg(unix)]
pub async fn send_go(
    port: &mut crate::clock::Port,
    timeout: Duration,
) -> Result<String, crate::clock::ClockPortError> {
    let seed: [u8; 32] = rand::random();
    port.send(&go_line(SystemTime::now(), &seed)).await?;
    let answer = port.read_line(timeout).await?;
    if answer.starts_with("ok ") {
        Ok(answer.trim().to_owned())
    } else {
        Err(crate::clock::ClockPortError::Refused {
            answer: answer.trim().to_owned(),
        })
    }
}

/// Where the placeholder paths of a snapshot's command line point (nothing is there).
#[cfg(unix)]
const PLACEHOLDER: &str = "/rmachine-boot-snapshot";

impl QemuDriver {
    /// Whether this machine's guest stops at the snapshot point: the option is on, the host
    /// has the clock port, the kernel is booted directly, no share is virtio-fs (QEMU cannot
    /// save a vhost-user device at all) and the machine lives in a store (which keeps the
    /// snapshots).
    pub(crate) fn boot_snapshot_on(&self, dir: &MachineDir, spec: &VmSpec) -> bool {
        self.options.boot_snapshot == crate::BootSnapshotOption::On
            && self.has_clock_port()
            && !self.options.boot_iso
            && !spec
                .shares
                .iter()
                .any(|s| s.transport == ShareTransport::VirtioFs)
            && cache_dir(dir.path()).is_some()
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
    ) -> Result<(SnapshotKey, SnapshotFiles), String> {
        let cache = cache_dir(dir.path()).ok_or("the machine is not in a store")?;
        let program = self.program();
        let qemu = resume::find_program(&program)
            .ok_or_else(|| format!("{program} is not found"))
            .and_then(|p| BinaryStamp::of(&p).map_err(|e| format!("{}: {e}", p.display())))?;
        let boot_files = resume::boot_stamps(spec).map_err(|e| format!("the guest image: {e}"))?;
        let disk = dir.file(crate::DISK);
        let data_disk_bytes =
            qcow2_virtual_size(&disk).map_err(|e| format!("{}: {e}", disk.display()))?;
        let config_drive_bytes = std::fs::metadata(&spec.config_drive)
            .map_err(|e| format!("{}: {e}", spec.config_drive.display()))?
            .len();
        let placeholder = Path::new(PLACEHOLDER);
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
            shares: &spec.shares,
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
        if !self.boot_snapshot_on(dir, spec) {
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
        _dir: &MachineDir,
        _spec: &VmSpec,
        _state: &QemuState,
        _tsc_khz: Option<u64>,
    ) -> bool {
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
        match self.launch(dir, spec, state, tsc_khz, Some(&path)).await {
            Ok(()) => {}
            Err(DriverError::CommandFailed { stderr, .. })
                if stderr.starts_with(crate::REJECTED) =>
            {
                self.clean_runtime_files(dir)?;
                return Ok(Some(stderr));
            }
            Err(err) => return Err(err),
        }
        let mut qmp = match self.wait_loaded(dir, "the boot snapshot").await? {
            Ok(qmp) => qmp,
            Err(rejected) => return Ok(Some(rejected)),
        };
        if let Some(why) = damage
            .await
            .unwrap_or_else(|e| Some(format!("its check failed: {e}")))
        {
            return Ok(Some(why));
        }
        let mut port =
            crate::clock::Port::open(dir.path()).map_err(|e| Self::clock_port_error(dir, e))?;
        qmp.execute("cont", None)
            .await
            .map_err(|e| Self::qmp_error(dir, e))?;
        let answer = send_go(&mut port, GO_TIMEOUT)
            .await
            .map_err(|e| Self::clock_port_error(dir, e))?;
        tracing::debug!(machine = %dir.name, "the guest went on from the snapshot point: {answer}");
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
    #[cfg(unix)]
    pub(crate) fn meet_guest_at_point(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
        state: &QemuState,
        tsc_khz: Option<u64>,
    ) {
        let wanted = match self.snapshot_key(dir, spec, state, tsc_khz) {
            Ok((key, files)) => match files.usable(&key) {
                Ok(Some(_)) => None,
                _ => match files.try_lock() {
                    Ok(true) => Some((key, files)),
                    Ok(false) => None,
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
                if let Some((_, files)) = wanted {
                    files.unlock();
                }
                return;
            }
        };
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
            let Some((key, files)) = wanted else {
                return;
            };
            match wait_for_point(&mut port, POINT_TIMEOUT).await {
                Ok(point_ms) => {
                    driver
                        .take_snapshot(&dir, &key, &files, point_ms, &mut port)
                        .await
                }
                Err(err) => {
                    tracing::info!(machine = %dir.name, "the guest did not reach the boot snapshot's point: {}", crate::error_chain(&err));
                }
            }
            files.unlock();
        });
    }

    /// See the unix version.
    #[cfg(not(unix))]
    pub(crate) fn meet_guest_at_point(
        &self,
        _dir: &MachineDir,
        _spec: &VmSpec,
        _state: &QemuState,
        _tsc_khz: Option<u64>,
    ) {
    }

    /// With the guest waiting at the point: stops it, saves its state as the snapshot, lets
    /// it run, sums and publishes the saved state, and sends the guest its `go`. Failures are
    /// logged: the machine boots on without a snapshot.
    #[cfg(unix)]
    async fn take_snapshot(
        &self,
        dir: &MachineDir,
        key: &SnapshotKey,
        files: &SnapshotFiles,
        point_ms: u64,
        port: &mut crate::clock::Port,
    ) {
        let began = std::time::Instant::now();
        let written = files.state_written();
        let saved = self.save_at_point(dir, files).await;
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
                tracing::warn!(machine = %dir.name, "boot snapshot not taken: {}", crate::error_chain(&err));
            }
        }
        files.unlock();
        // Only now: a command that ends once the guest is ready (and with it this task) has
        // published the snapshot and released its lock by then.
        match send_go(port, GO_TIMEOUT).await {
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
        let qemu_version = self.version_then_stop(dir, &mut qmp).await?;
        let migrated = self.migrate_to(dir, &mut qmp, &uri, &written).await;
        let resumed = qmp.execute("cont", None).await.map_err(qmp_err);
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
        let ids: std::collections::HashSet<String> =
            [&base, &memory, &disk, &qemu].map(|k| k.id()).into();
        assert_eq!(ids.len(), 4);
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
        assert_eq!(files.usable(&key()), Ok(None));
        std::fs::write(files.state_written(), b"state").unwrap();
        let record = SnapshotRecord {
            key: key(),
            qemu_version: "QEMU emulator version 7.2.0".into(),
            state_len: 5,
            state_sha256: "x".into(),
            point_ms: 2000,
        };
        files.publish(&files.state_written(), &record).unwrap();
        assert_eq!(files.usable(&key()), Ok(Some(record.clone())));
        let mut other = key();
        other.data_disk_bytes = 1;
        assert!(files
            .usable(&other)
            .unwrap_err()
            .contains("another command line"));
        std::fs::write(files.state(), b"stat").unwrap();
        assert!(files
            .usable(&key())
            .unwrap_err()
            .contains("4 bytes where 5"));
        std::fs::write(files.record(), b"{").unwrap();
        assert!(files.usable(&key()).unwrap_err().contains("does not parse"));
        files.remove();
        assert_eq!(files.usable(&key()), Ok(None));
        assert!(!files.state().exists());
    }

    #[test]
    fn one_process_saves_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let files = SnapshotFiles {
            dir: tmp.path().join("cache"),
            id: "a".into(),
        };
        assert!(files.try_lock().unwrap());
        assert!(!files.try_lock().unwrap());
        files.unlock();
        assert!(files.try_lock().unwrap());
        // A lock left by a process that died long ago is taken over.
        let old = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(files.lock())
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(files.try_lock().unwrap());
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
            std::fs::File::options()
                .write(true)
                .open(files.record())
                .unwrap()
                .set_modified(at)
                .unwrap();
        }
        let old_tmp = tmp.path().join("x.state.1.tmp");
        std::fs::write(&old_tmp, b"t").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&old_tmp)
            .unwrap()
            .set_modified(now - Duration::from_secs(3600))
            .unwrap();
        let fresh_tmp = tmp.path().join("y.state.2.tmp");
        std::fs::write(&fresh_tmp, b"t").unwrap();
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

    #[test]
    fn the_cache_is_the_stores() {
        assert_eq!(
            cache_dir(Path::new("/s/machines/intro")),
            Some(PathBuf::from("/s/cache/qemu-boot-snapshots"))
        );
        assert_eq!(cache_dir(Path::new("/tmp/intro")), None);
    }

    /// A stand-in for QEMU and the guest's init: holds both pipes open, writes the point's
    /// line, then answers the `go` line.
    #[cfg(unix)]
    #[tokio::test]
    async fn the_guest_at_the_point_is_let_go() {
        let tmp = tempfile::tempdir().unwrap();
        crate::clock::make_pipes(tmp.path()).unwrap();
        let dir = tmp.path().to_owned();
        let (held, holding) = std::sync::mpsc::channel();
        let guest = std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let rw = |name| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(dir.join(name))
                    .unwrap()
            };
            let (input, mut output) = (rw(crate::clock::PIPE_IN), rw(crate::clock::PIPE_OUT));
            held.send(()).unwrap();
            output.write_all(b"stray\nsnapshot-point 2650\n").unwrap();
            let mut line = String::new();
            std::io::BufReader::new(input).read_line(&mut line).unwrap();
            output.write_all(b"ok 1765000000 0\n").unwrap();
            std::thread::sleep(Duration::from_millis(300));
            line
        });
        holding.recv().unwrap();
        let mut port = crate::clock::Port::open(tmp.path()).unwrap();
        assert_eq!(
            wait_for_point(&mut port, Duration::from_secs(5))
                .await
                .unwrap(),
            2650
        );
        assert_eq!(
            send_go(&mut port, Duration::from_secs(5)).await.unwrap(),
            "ok 1765000000 0"
        );
        let go = guest.join().unwrap();
        let words: Vec<&str> = go.split_whitespace().collect();
        assert_eq!(words[0], "go");
        assert_eq!(words[3].len(), 64);
    }
}
