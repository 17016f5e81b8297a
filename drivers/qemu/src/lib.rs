//! The QEMU driver: accelerator choice, command line, qcow2 disks, QMP control.
//!
//! Data flow: `create` chooses two loopback ports and the accelerator (probing it, see
//! [`accel`]) and saves them in `qemu.json` ([`saved`]), then makes `disk.qcow2` ([`disk`]).
//! `start` builds the command line from the spec and those decisions ([`args`]), runs QEMU
//! through the [`CommandRunner`] (it daemonizes once the VM runs; on Windows it is spawned
//! detached) and waits for its QMP socket ([`qmp`]). `state` and `stop` go through the pidfile
//! ([`process`]) and QMP. Files in the machine directory: `qemu.json`, `disk.qcow2`,
//! `qemu.pid`, `qmp.sock`, `console.log` (serial console), `qemu.log` (QEMU's own output at
//! start).
#![warn(missing_docs)]

pub mod accel;
pub mod args;
pub mod boot_snapshot;
pub mod clock;
pub mod disk;
pub mod platform;
pub mod process;
pub mod qmp;
pub mod resume;
pub mod saved;
pub mod virtiofs;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmachine_driver::runner::{CommandRunner, CommandSpec, TokioRunner};
use rmachine_driver::{
    Capabilities, Driver, DriverError, DriverInfo, Endpoints, GuestClock, GuestNetwork, MachineDir,
    Resume, Share, ShareTransport, StopMode, VmSpec, VmState,
};
use serde::{Deserialize, Serialize};

pub use accel::{Accel, AccelChoice, AccelOption};
pub use platform::{HostArch, HostOs, HostPlatform};
pub use saved::QemuState;

use crate::accel::QemuProbe;
use crate::qmp::{QmpClient, QmpEndpoint};
use crate::resume::SavedVm;

const DRIVER: &str = "qemu";
const PIDFILE: &str = "qemu.pid";
const QMP_SOCKET: &str = "qmp.sock";
const CONSOLE_LOG: &str = "console.log";
const QEMU_LOG: &str = "qemu.log";
const DISK: &str = "disk.qcow2";
/// Everything the driver may create in a machine directory; `remove` deletes these and
/// nothing else.
const OWN_FILES: &[&str] = &[
    DISK,
    "disk.qcow2.tmp",
    saved::FILE,
    "qemu.json.tmp",
    PIDFILE,
    QMP_SOCKET,
    CONSOLE_LOG,
    QEMU_LOG,
    resume::STATE,
    resume::STATE_TMP,
    resume::META,
    resume::META_TMP,
    resume::STATE_SPENT,
    clock::PIPE_IN,
    clock::PIPE_OUT,
    boot_snapshot::SAVING_MARKER,
];

/// How long one QMP exchange may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long QEMU may take, once started, to answer on QMP.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long QEMU gets to exit after QMP `quit` before it is killed.
const QUIT_GRACE: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(100);
/// How long a virtiofsd may take to create its socket.
const VIRTIOFSD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long saving or loading a VM's state may take.
const SAVE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the `cat` of a save may take to finish once QEMU says the migration completed.
const WRITTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How the reason begins when QEMU exited while loading a saved state (it rejected it).
const REJECTED: &str = "QEMU rejected the saved state";
/// How often a save or load in progress is looked at.
const STATE_POLL: Duration = Duration::from_millis(20);
/// How often `stop` presses the power button again while the guest does not react.
const REPRESS: Duration = Duration::from_secs(5);

/// The `--qemu-*` options of `rmachine create -d qemu` (environment `QEMU_*`), stored with the
/// machine.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct QemuOptions {
    /// QEMU system emulator to run [default: qemu-system-x86_64, or qemu-system-aarch64 for
    /// an aarch64 guest]
    #[arg(
        id = "qemu_program",
        long = "qemu-program",
        env = "QEMU_PROGRAM",
        value_name = "PROGRAM"
    )]
    #[serde(rename = "qemuProgram", skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,

    /// Accelerator: auto picks the best one that boots the guest (kvm, hvf, whpx), else tcg
    #[arg(
        id = "qemu_accel",
        long = "qemu-accel",
        env = "QEMU_ACCEL",
        value_enum,
        default_value = "auto"
    )]
    #[serde(rename = "qemuAccel")]
    pub accel: AccelOption,

    /// Guest CPU architecture: another than the host's runs under software emulation (tcg);
    /// the guest image must be built for it [default: the host's]
    #[arg(
        id = "qemu_arch",
        long = "qemu-arch",
        env = "QEMU_ARCH",
        value_enum,
        value_name = "ARCH"
    )]
    #[serde(rename = "qemuArch", skip_serializing_if = "Option::is_none")]
    pub arch: Option<HostArch>,

    /// QEMU machine type [default: microvm for x86_64 guests on Linux, q35 for x86_64
    /// elsewhere, virt for aarch64]
    #[arg(
        id = "qemu_machine",
        long = "qemu-machine",
        env = "QEMU_MACHINE",
        value_name = "TYPE"
    )]
    #[serde(rename = "qemuMachine", skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,

    /// How host folders are shared: auto uses virtio-fs where a virtiofsd is installed (9p for
    /// read-only shares and elsewhere; SFTP over SSH on Windows), 9p always uses virtio-9p, sftp
    /// always uses SFTP over the machine's SSH connection
    #[arg(
        id = "qemu_share_transport",
        long = "qemu-share-transport",
        env = "QEMU_SHARE_TRANSPORT",
        value_enum,
        default_value = "auto"
    )]
    #[serde(rename = "qemuShareTransport")]
    pub share_transport: ShareTransportOption,

    /// qemu-img program, for the data disk [default: qemu-img]
    #[arg(
        id = "qemu_img",
        long = "qemu-img",
        env = "QEMU_IMG",
        value_name = "PROGRAM"
    )]
    #[serde(rename = "qemuImg", skip_serializing_if = "Option::is_none")]
    pub img: Option<String>,

    /// Boot the guest ISO from a CD drive, as VirtualBox and Hyper-V do, instead of the kernel
    /// directly (needs a pc or q35 machine; the machine type then defaults to q35)
    #[arg(id = "qemu_boot_iso", long = "qemu-boot-iso", env = "QEMU_BOOT_ISO")]
    #[serde(rename = "qemuBootIso", skip_serializing_if = "std::ops::Not::not")]
    pub boot_iso: bool,

    /// Firmware image for -bios, e.g. /usr/share/ovmf/OVMF.fd to boot the ISO by UEFI
    /// [default: QEMU's own BIOS]
    #[arg(
        id = "qemu_firmware",
        long = "qemu-firmware",
        env = "QEMU_FIRMWARE",
        value_name = "FILE"
    )]
    #[serde(rename = "qemuFirmware", skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,

    /// Start from a boot snapshot: the saved state of a guest whose kernel and device drivers
    /// are up, taken at the first boot of each command line and kept in the store's cache
    /// (machines with --qemu-boot-iso, with virtio-fs shares on a machine type other than
    /// microvm, and Windows hosts always boot their kernel)
    #[arg(
        id = "qemu_boot_snapshot",
        long = "qemu-boot-snapshot",
        env = "QEMU_BOOT_SNAPSHOT",
        value_enum,
        default_value = "on"
    )]
    #[serde(rename = "qemuBootSnapshot")]
    pub boot_snapshot: BootSnapshotOption,
}

/// The `--qemu-boot-snapshot` choices.
#[derive(clap::ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootSnapshotOption {
    /// Start from the snapshot of the machine's command line if there is one, else boot and
    /// take it.
    #[default]
    #[serde(rename = "on")]
    On,
    /// Always boot the kernel.
    #[serde(rename = "off")]
    Off,
}

/// The `--qemu-share-transport` choices.
#[derive(clap::ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShareTransportOption {
    /// virtio-fs where a virtiofsd is installed, else virtio-9p.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// virtio-9p for every share.
    #[value(name = "9p")]
    #[serde(rename = "9p")]
    NineP,
    /// SFTP over the machine's SSH connection for every share (the fallback where QEMU has no
    /// sharing device, as on Windows).
    #[value(name = "sftp")]
    #[serde(rename = "sftp")]
    Sftp,
}

/// The QEMU driver.
#[derive(Clone)]
pub struct QemuDriver {
    options: QemuOptions,
    runner: Arc<dyn CommandRunner>,
    host: HostPlatform,
    probe_timeout: Duration,
}

impl std::fmt::Debug for QemuDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuDriver")
            .field("options", &self.options)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl QemuDriver {
    /// A driver running real programs.
    pub fn new(options: QemuOptions) -> Self {
        Self::with_runner(options, Arc::new(TokioRunner))
    }

    /// A driver running its programs through `runner`.
    pub fn with_runner(options: QemuOptions, runner: Arc<dyn CommandRunner>) -> Self {
        Self {
            options,
            runner,
            host: HostPlatform::current(),
            probe_timeout: accel::PROBE_TIMEOUT,
        }
    }

    /// The same driver, acting as if on `host` (tests of other platforms' behaviour).
    pub fn for_host(mut self, host: HostPlatform) -> Self {
        self.host = host;
        self
    }

    /// The options it was made with.
    pub fn options(&self) -> &QemuOptions {
        &self.options
    }

    /// The guest's CPU architecture: `--qemu-arch`, else the host's.
    pub fn guest_arch(&self) -> HostArch {
        self.options.arch.unwrap_or(self.host.arch)
    }

    /// The QEMU system emulator it runs.
    pub fn program(&self) -> String {
        self.options
            .program
            .clone()
            .unwrap_or_else(|| self.guest_arch().qemu_program().to_owned())
    }

    /// The `qemu-img` it runs.
    pub fn qemu_img(&self) -> String {
        self.options
            .img
            .clone()
            .unwrap_or_else(|| "qemu-img".to_owned())
    }

    /// The machine type a new machine gets.
    pub fn machine_type(&self) -> String {
        self.options.machine.clone().unwrap_or_else(|| {
            if self.options.boot_iso {
                "q35".to_owned()
            } else {
                self.host.default_machine(self.guest_arch()).to_owned()
            }
        })
    }

    /// Whether a new machine boots the host-derived kernel ELF and uncompressed initramfs
    /// ([`args::kernel_file`]): an x86_64 guest on `microvm`, without `--qemu-boot-iso`.
    pub fn boots_fast_boot_files(&self) -> bool {
        self.boots_fast_boot_files_on(&self.machine_type())
    }

    /// [`Self::boots_fast_boot_files`] for a machine of type `machine`.
    fn boots_fast_boot_files_on(&self, machine: &str) -> bool {
        !self.options.boot_iso
            && self.guest_arch() == HostArch::X86_64
            && args::MachineFamily::of(machine) == args::MachineFamily::Microvm
    }

    /// The accelerator a created machine runs with, and why (for the CLI to print).
    pub fn accel_choice(&self, dir: &MachineDir) -> Result<AccelChoice, DriverError> {
        Ok(QemuState::load_required(dir)?.accel)
    }

    fn qmp_endpoint(&self, dir: &MachineDir, saved: Option<&QemuState>) -> Option<QmpEndpoint> {
        match self.host.os {
            HostOs::Windows => saved
                .and_then(|s| s.qmp_port)
                .map(|port| QmpEndpoint::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))),
            HostOs::Linux | HostOs::MacOs => Some(QmpEndpoint::Unix(dir.file(QMP_SOCKET))),
        }
    }

    fn io_error(dir: &MachineDir, path: &Path, source: std::io::Error) -> DriverError {
        DriverError::Io {
            machine: dir.name.clone(),
            path: path.to_owned(),
            source,
        }
    }

    fn qmp_error(dir: &MachineDir, err: qmp::QmpError) -> DriverError {
        DriverError::Protocol {
            machine: dir.name.clone(),
            channel: "qmp",
            message: error_chain(&err),
        }
    }

    /// The running QEMU's pid, or `None` (after removing stale runtime files) if it is gone.
    async fn live_pid(&self, dir: &MachineDir) -> Result<Option<u32>, DriverError> {
        let pidfile = dir.file(PIDFILE);
        let pid = process::read_pidfile(&pidfile).map_err(|e| Self::io_error(dir, &pidfile, e))?;
        if let Some(pid) = pid {
            if process::is_alive(self.runner.as_ref(), pid, &pidfile).await {
                return Ok(Some(pid));
            }
            tracing::debug!(machine = %dir.name, pid, "stale pidfile: QEMU is gone");
        }
        self.clean_runtime_files(dir)?;
        Ok(None)
    }

    /// Whether this machine's QEMU is the one a snapshot's save stopped at the point and that
    /// no command let run again: the save's marker names its pid and QEMU is still stopped
    /// by it (`paused`, or `finish-migrate`/`postmigrate` once QEMU's own writer went on). A
    /// marker that names no live QEMU, or one that runs, is stale and removed.
    async fn left_stopped_by_a_snapshot_save(&self, dir: &MachineDir) -> Result<bool, DriverError> {
        let marker = dir.file(boot_snapshot::SAVING_MARKER);
        let Ok(text) = std::fs::read_to_string(&marker) else {
            return Ok(false);
        };
        let saving_pid: Option<u32> = text.trim().parse().ok();
        let stopped_by_the_save = match self.live_pid(dir).await? {
            Some(pid) if Some(pid) == saving_pid => {
                let answer = match self.qmp(dir).await {
                    Ok(mut qmp) => qmp.execute("query-status", None).await.ok(),
                    Err(_) => None,
                };
                let status = answer
                    .as_ref()
                    .and_then(|a| a.get("status"))
                    .and_then(|s| s.as_str());
                matches!(status, Some("paused" | "finish-migrate" | "postmigrate"))
            }
            _ => false,
        };
        if !stopped_by_the_save {
            remove_if_present(dir, boot_snapshot::SAVING_MARKER)?;
        }
        Ok(stopped_by_the_save)
    }

    /// Whether the VM gets the guest's clock port ([`clock`]): named pipes, which QEMU for
    /// Windows does not offer (and Windows hosts cannot save a VM anyway).
    fn has_clock_port(&self) -> bool {
        self.host.os != HostOs::Windows
    }

    fn clean_runtime_files(&self, dir: &MachineDir) -> Result<(), DriverError> {
        for name in [PIDFILE, QMP_SOCKET, boot_snapshot::SAVING_MARKER] {
            remove_if_present(dir, name)?;
        }
        Ok(())
    }

    /// The virtiofsd this driver runs, if virtio-fs is enabled and one is installed.
    fn virtiofsd(&self) -> Option<virtiofs::Virtiofsd> {
        if self.options.share_transport != ShareTransportOption::Auto
            || self.host.os != HostOs::Linux
        {
            return None;
        }
        virtiofs::find(virtiofs::running_as_root(), |p| p.is_file())
    }

    /// Kills every virtiofsd of this machine that a stopped or failed QEMU left running (one
    /// that QEMU connected to exits with it), and removes their sockets and pid files.
    async fn stop_virtiofsd(&self, dir: &MachineDir) {
        let Ok(entries) = std::fs::read_dir(dir.path()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name
                .strip_suffix(".pid")
                .filter(|_| virtiofs::is_own_file(&name))
            else {
                continue;
            };
            let pidfile = entry.path();
            let socket = dir.file(&format!("{stem}.sock"));
            if let Ok(Some(pid)) = process::read_pidfile(&pidfile) {
                let marker = PathBuf::from(virtiofs::socket_arg(&socket));
                if process::is_alive(self.runner.as_ref(), pid, &marker).await {
                    if let Err(err) = process::kill(self.runner.as_ref(), pid).await {
                        tracing::warn!(machine = %dir.name, pid, "cannot kill virtiofsd: {err}");
                    }
                }
            }
            let _ = std::fs::remove_file(&pidfile);
            let _ = std::fs::remove_file(&socket);
        }
    }

    /// Starts one virtiofsd per virtio-fs share and waits for its socket; returns the sockets
    /// by tag for QEMU's command line.
    async fn start_virtiofsd(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
    ) -> Result<Vec<(String, PathBuf)>, DriverError> {
        let shares: Vec<&Share> = spec
            .shares
            .iter()
            .filter(|s| s.transport == ShareTransport::VirtioFs)
            .collect();
        if shares.is_empty() {
            return Ok(Vec::new());
        }
        let fail = |share: &Share, message: String| DriverError::ShareDaemon {
            machine: dir.name.clone(),
            share: format!("share {} ({})", share.tag, share.host_path.display()),
            message: message.into(),
        };
        let Some(daemon) = self.virtiofsd() else {
            let share = shares[0];
            return Err(fail(
                share,
                format!(
                    "the machine shares it over virtio-fs, and no usable virtiofsd is installed \
                     (looked for {}; QEMU's own one runs only as root)",
                    virtiofs::CANDIDATES.map(|(p, _)| p).join(", ")
                ),
            ));
        };
        let root = virtiofs::running_as_root();
        let program = daemon.program.to_string_lossy().into_owned();
        let mut sockets = Vec::new();
        for share in shares {
            let socket = virtiofs::socket(dir, share);
            let _ = std::fs::remove_file(&socket);
            let log = virtiofs::log(dir, share);
            let _ = std::fs::remove_file(&log);
            let cmd = CommandSpec::new(&program)
                .args(virtiofs::daemon_args(&daemon, share, &socket, root))
                .install_hint(
                    "install virtiofsd, or create the machine with --qemu-share-transport 9p",
                );
            let mut spawned = self.runner.spawn_detached(&cmd, &log).await?;
            let pid = spawned.pid();
            let pidfile = virtiofs::pidfile(dir, share);
            // On any error from here the daemon is killed and reaped through its handle
            // (wait_for_socket does so itself): one left running without a pidfile would never
            // be stopped, and one killed later by pid would stay a zombie of this process.
            if let Err(e) = std::fs::write(&pidfile, format!("{pid}\n")) {
                spawned.kill_and_reap();
                return Err(Self::io_error(dir, &pidfile, e));
            }
            if let Err(err) =
                virtiofs::wait_for_socket(&mut spawned, &program, &socket, &log, VIRTIOFSD_TIMEOUT)
                    .await
            {
                let _ = std::fs::remove_file(&pidfile);
                return Err(fail(share, error_chain(&err)));
            }
            tracing::info!(machine = %dir.name, tag = %share.tag, pid, "virtiofsd serves {}", share.host_path.display());
            sockets.push((share.tag.clone(), socket));
        }
        Ok(sockets)
    }

    async fn qmp(&self, dir: &MachineDir) -> Result<QmpClient, DriverError> {
        let saved = QemuState::load(dir)?;
        let endpoint =
            self.qmp_endpoint(dir, saved.as_ref())
                .ok_or_else(|| DriverError::Protocol {
                    machine: dir.name.clone(),
                    channel: "qmp",
                    message: "no QMP port saved in qemu.json".to_owned(),
                })?;
        QmpClient::connect(&endpoint, QMP_TIMEOUT)
            .await
            .map_err(|e| Self::qmp_error(dir, e))
    }

    /// Waits until `pid` is gone; false if it still runs after `timeout`.
    async fn wait_gone(&self, dir: &MachineDir, pid: u32, timeout: Duration) -> bool {
        let pidfile = dir.file(PIDFILE);
        let deadline = Instant::now() + timeout;
        loop {
            if !process::is_alive(self.runner.as_ref(), pid, &pidfile).await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The host's TSC frequency in kHz, for `tsc_early_khz=` under TCG.
    async fn host_tsc_khz(&self) -> Option<u64> {
        if self.host.arch != HostArch::X86_64 {
            return None;
        }
        match self.host.os {
            // "cpu MHz" is the TSC rate only when the kernel got it from the CPU or the
            // hypervisor (flag `tsc_known_freq`); on bare metal with cpufreq it is the current
            // core frequency, and a wrong rate makes a microvm guest (no HPET, no PM timer)
            // keep time at the wrong speed: then no hint at all.
            HostOs::Linux => {
                let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
                cpuinfo_tsc_mhz(&cpuinfo).map(|mhz| (mhz * 1000.0).round() as u64)
            }
            HostOs::MacOs => {
                let cmd = CommandSpec::new("sysctl").args(["-n", "machdep.tsc.frequency"]);
                let out = self.runner.run(&cmd).await.ok()?;
                let hz: u64 = out.stdout_text().trim().parse().ok()?;
                Some(hz / 1000)
            }
            HostOs::Windows => None,
        }
    }

    async fn create_inner(&self, dir: &MachineDir, spec: &VmSpec) -> Result<(), DriverError> {
        std::fs::create_dir_all(dir.path()).map_err(|e| Self::io_error(dir, dir.path(), e))?;
        if QemuState::load(dir)?.is_none() {
            let machine = self.machine_type();
            let program = self.program();
            let probe = QemuProbe {
                runner: self.runner.as_ref(),
                host: self.host,
                guest: self.guest_arch(),
                program: &program,
                machine: &machine,
                kernel: &spec.boot.kernel,
                timeout: self.probe_timeout,
            };
            let cache_file = accel::probe_cache_file(dir.path());
            let cached = accel::CachedProbe {
                inner: &probe,
                host: self.host,
                key: cache_file.as_ref().and_then(|_| {
                    accel::CachedProbe::<QemuProbe>::key_for(&program, &spec.boot.kernel, &machine)
                }),
                file: cache_file.unwrap_or_default(),
            };
            let accel =
                accel::choose(self.options.accel, self.host, self.guest_arch(), &cached).await;
            let windows = self.host.os == HostOs::Windows;
            let ports = saved::free_ports(if windows { 3 } else { 2 })
                .map_err(|e| Self::io_error(dir, dir.path(), e))?;
            let state = QemuState {
                ssh_port: ports[0],
                engine_port: ports[1],
                qmp_port: ports.get(2).copied(),
                accel,
                machine,
            };
            state.save(dir)?;
            tracing::info!(
                machine = %dir.name,
                accel = %state.accel.accel,
                ssh_port = state.ssh_port,
                engine_port = state.engine_port,
                "created QEMU machine definition"
            );
        }
        disk::ensure_disk(
            self.runner.as_ref(),
            &self.qemu_img(),
            self.host.qemu_img_hint(),
            &dir.name,
            &dir.file(DISK),
            spec.disk_size_mb,
        )
        .await?;
        Ok(())
    }

    /// Re-picks saved ports another program took since; true if any changed.
    fn refresh_ports(state: &mut QemuState) -> std::io::Result<bool> {
        let mut changed = false;
        let mut slots: Vec<&mut u16> = vec![&mut state.ssh_port, &mut state.engine_port];
        if let Some(port) = state.qmp_port.as_mut() {
            slots.push(port);
        }
        for slot in slots {
            if !saved::port_is_free(*slot) {
                let new = saved::free_ports(1)?[0];
                tracing::info!(old = *slot, new, "port taken, forwarding from another one");
                *slot = new;
                changed = true;
            }
        }
        Ok(changed)
    }

    async fn start_inner(&self, dir: &MachineDir, spec: &VmSpec) -> Result<(), DriverError> {
        if self.left_stopped_by_a_snapshot_save(dir).await? {
            // Stopped at the snapshot's point by a command that did not live to let it run
            // again (its save may still be running): the guest has read nothing of this
            // machine yet, so that QEMU goes and the machine starts as if it were stopped.
            tracing::warn!(machine = %dir.name, "QEMU was left stopped by an interrupted boot snapshot save: it is stopped and the machine starts afresh");
            self.stop_inner(dir, StopMode::Kill).await?;
            remove_if_present(dir, boot_snapshot::SAVING_MARKER)?;
        }
        match self.state_inner(dir).await? {
            VmState::Running | VmState::Paused | VmState::Starting | VmState::Stopping => {
                tracing::debug!(machine = %dir.name, "already running");
                return Ok(());
            }
            VmState::Stopped => {}
            // A state saved to disk by `stop --save`, and no QEMU.
            VmState::Saved if self.live_pid(dir).await?.is_none() => {}
            // QEMU still runs (a failed or saved guest): a second one would fight it for the
            // disk and the ports.
            state @ (VmState::Saved | VmState::Error) => {
                return Err(DriverError::WrongState {
                    machine: dir.name.clone(),
                    state,
                    op: "start",
                    wanted: "stopped (`rmachine kill` stops it)",
                })
            }
        }
        self.iso_problem(spec)?;
        for (what, path) in [
            ("guest kernel", &spec.boot.kernel),
            ("guest initrd", &spec.boot.initrd),
            ("configuration drive", &spec.config_drive),
        ] {
            if !path.exists() {
                return Err(DriverError::MissingFile {
                    what,
                    path: path.clone(),
                });
            }
        }
        self.check_image_arch(spec)?;
        // The guest boots afresh and writes the disk: a saved state would no longer fit it.
        if resume::discard(dir).map_err(|e| Self::io_error(dir, &dir.file(resume::STATE), e))? {
            tracing::warn!(machine = %dir.name, "the saved state was discarded: the machine boots afresh");
        }
        let mut state = QemuState::load_required(dir)?;
        let mut changed =
            Self::refresh_ports(&mut state).map_err(|e| Self::io_error(dir, dir.path(), e))?;
        let tsc_khz = self.host_tsc_khz().await;
        if self
            .start_from_boot_snapshot(dir, spec, &state, tsc_khz)
            .await
        {
            if changed {
                state.save(dir)?;
            }
            return Ok(());
        }
        let chosen = state.accel.clone();
        loop {
            match self.launch(dir, spec, &state, tsc_khz, None).await {
                Ok(()) => break,
                Err(err) => {
                    let failed = state.accel.accel;
                    let next = failed.fallback(self.host, self.guest_arch());
                    // Only failures of QEMU itself may be the accelerator's fault; a missing
                    // program or file fails the same way under every accelerator.
                    let accel_may_be_at_fault = matches!(
                        err,
                        DriverError::CommandFailed { .. } | DriverError::Timeout { .. }
                    );
                    match next {
                        Some(next)
                            if self.options.accel == AccelOption::Auto && accel_may_be_at_fault =>
                        {
                            tracing::warn!(
                                machine = %dir.name,
                                "QEMU failed to start with {failed}, falling back to {next}: {}",
                                error_chain(&err)
                            );
                            state.accel = AccelChoice {
                                accel: next,
                                reason: format!(
                                    "software emulation, because QEMU failed to start with \
                                     {failed}: {}",
                                    error_chain(&err)
                                ),
                            };
                            changed = true;
                        }
                        _ => {
                            // The fallback did not help either: keep the original choice, the
                            // problem lies elsewhere.
                            state.accel = chosen;
                            if changed {
                                state.save(dir)?;
                            }
                            return Err(err);
                        }
                    }
                }
            }
        }
        if changed {
            state.save(dir)?;
        }
        Ok(())
    }

    /// Runs QEMU once with the saved accelerator and waits for QMP.
    async fn launch(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
        state: &QemuState,
        tsc_khz: Option<u64>,
        incoming: Option<&Path>,
    ) -> Result<(), DriverError> {
        self.clean_runtime_files(dir)?;
        #[cfg(unix)]
        if self.has_clock_port() {
            clock::make_pipes(dir.path())
                .map_err(|e| Self::io_error(dir, &dir.file(clock::PIPE_IN), e))?;
        }
        let program = self.program();
        let pidfile = dir.file(PIDFILE);
        let qmp = self.launch_qmp(dir, state)?;
        // A daemon whose device was never plugged in has no QEMU to exit with.
        self.stop_virtiofsd(dir).await;
        let virtiofs_sockets = match self.start_virtiofsd(dir, spec).await {
            Ok(sockets) => sockets,
            Err(err) => {
                self.stop_virtiofsd(dir).await;
                return Err(err);
            }
        };
        let mut argv = self.vm_argv(dir, spec, state, tsc_khz, &virtiofs_sockets, &qmp);
        let cmd = match incoming {
            None => CommandSpec::new(&program).args(argv),
            Some(saved) => {
                argv.extend(resume::incoming_args());
                CommandSpec::new("sh")
                    .arg("-c")
                    .arg(resume::incoming_script())
                    .arg(&program)
                    .args(argv)
                    .env(resume::STATE_ENV, saved.to_string_lossy())
            }
        }
        .install_hint(self.host.install_hint(self.guest_arch()));
        let log = dir.file(QEMU_LOG);
        let started = Instant::now();
        tracing::info!(machine = %dir.name, accel = %state.accel.accel, machine_type = %state.machine, "starting QEMU");
        let spawned = match self.spawn_qemu(dir, &cmd, &program, &log).await {
            Ok(spawned) => spawned,
            Err(err) => {
                // virtiofsd waits for a QEMU that will not come.
                self.stop_virtiofsd(dir).await;
                return Err(err);
            }
        };
        let ready = self
            .wait_ready(dir, &qmp, &program, started, spawned, incoming.is_some())
            .await;
        // The task that meets the guest at the point plugs the virtio-fs devices in after its
        // save; without one they are plugged in now.
        if ready.is_ok()
            && incoming.is_none()
            && self.boot_snapshot_on(dir, spec, &state.machine)
            && !self.meet_guest_at_point(dir, spec, state, tsc_khz)
        {
            self.plug_virtio_fs_if_left_out(dir, spec, &state.machine, None)
                .await;
        }
        if ready.is_err() {
            self.stop_virtiofsd(dir).await;
            // A half-started QEMU must not linger and hold the ports for the retry.
            let pid = process::read_pidfile(&pidfile).ok().flatten().or(spawned);
            if let Some(pid) = pid {
                if process::is_alive(self.runner.as_ref(), pid, &pidfile).await {
                    let _ = process::kill(self.runner.as_ref(), pid).await;
                }
            }
        }
        ready
    }

    /// The QMP endpoint QEMU is started with, its socket path checked against the OS's limit.
    fn launch_qmp(&self, dir: &MachineDir, state: &QemuState) -> Result<QmpEndpoint, DriverError> {
        let qmp = self
            .qmp_endpoint(dir, Some(state))
            .ok_or_else(|| DriverError::Protocol {
                machine: dir.name.clone(),
                channel: "qmp",
                message: "no QMP port saved in qemu.json".to_owned(),
            })?;
        if let QmpEndpoint::Unix(socket) = &qmp {
            // sun_path holds 108 bytes on Linux and 104 on macOS, terminating NUL included;
            // QEMU's own error for a longer path does not say what to do about it.
            let limit = if self.host.os == HostOs::MacOs {
                103
            } else {
                107
            };
            if socket.as_os_str().len() > limit {
                return Err(Self::io_error(
                    dir,
                    socket,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!(
                            "path longer than the {limit} bytes a unix socket allows: use a \
                             shorter --storage-path"
                        ),
                    ),
                ));
            }
        }
        Ok(qmp)
    }

    /// QEMU's arguments for this machine (a restore must use the very same ones).
    fn vm_argv(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
        state: &QemuState,
        tsc_khz: Option<u64>,
        virtiofs_sockets: &[(String, PathBuf)],
        qmp: &QmpEndpoint,
    ) -> Vec<String> {
        let iso = if self.options.boot_iso {
            spec.boot.iso.clone()
        } else {
            None
        };
        let disk = dir.file(DISK);
        let console = dir.file(CONSOLE_LOG);
        let pidfile = dir.file(PIDFILE);
        let clock_pipe = self.has_clock_port().then(|| dir.file(clock::PIPE));
        args::vm_args(&args::VmLaunch {
            host: self.host,
            guest: self.guest_arch(),
            name: &dir.name,
            accel: state.accel.accel,
            machine: &state.machine,
            cpus: spec.cpus,
            memory_mb: spec.memory_mb,
            boot: &spec.boot,
            iso: iso.as_deref(),
            firmware: self.options.firmware.as_deref(),
            tsc_khz,
            disk: &disk,
            config_drive: &spec.config_drive,
            ssh_port: state.ssh_port,
            engine_port: state.engine_port,
            guest_ports: spec.guest_ports,
            shares: &spec.shares,
            virtiofs_sockets,
            clock_pipe: clock_pipe.as_deref(),
            console_log: &console,
            pidfile: &pidfile,
            qmp,
            boot_snapshot: self.boot_snapshot_on(dir, spec, &state.machine),
        })
    }

    /// Starts QEMU: daemonized on Linux and macOS (`None`), detached on Windows (its pid).
    async fn spawn_qemu(
        &self,
        dir: &MachineDir,
        cmd: &CommandSpec,
        program: &str,
        log: &Path,
    ) -> Result<Option<u32>, DriverError> {
        if self.host.os == HostOs::Windows {
            let _ = std::fs::remove_file(log);
            // QEMU writes the pidfile itself, a little later; until then the spawned pid
            // tells whether it is still alive.
            Ok(Some(self.runner.spawn_detached(cmd, log).await?.pid()))
        } else {
            let out = self.runner.run(cmd).await?;
            let mut text = out.stdout.clone();
            text.extend_from_slice(&out.stderr);
            std::fs::write(log, &text).map_err(|e| Self::io_error(dir, log, e))?;
            out.check(program)?;
            Ok(None)
        }
    }

    /// Waits until QEMU answers on QMP; fails early, with QEMU's output, if it exits.
    async fn wait_ready(
        &self,
        dir: &MachineDir,
        qmp: &QmpEndpoint,
        program: &str,
        started: Instant,
        spawned: Option<u32>,
        restoring: bool,
    ) -> Result<(), DriverError> {
        let pidfile = dir.file(PIDFILE);
        // QEMU loading a state answers QMP only once it has read all of it.
        let timeout = if restoring {
            SAVE_TIMEOUT
        } else {
            READY_TIMEOUT
        };
        let deadline = Instant::now() + timeout;
        loop {
            let pid = process::read_pidfile(&pidfile).ok().flatten().or(spawned);
            // A daemonized QEMU writes its pidfile before its parent returns and deletes it
            // when it exits: one that rejected the saved state at once is gone already.
            if pid.is_none() && restoring && self.host.os != HostOs::Windows {
                return Err(DriverError::CommandFailed {
                    program: program.to_owned(),
                    status: -1,
                    stderr: self.rejected_message(dir),
                });
            }
            if let Some(pid) = pid {
                if !process::is_alive(self.runner.as_ref(), pid, &pidfile).await {
                    // Started (daemonized, or spawned on Windows) and gone while loading:
                    // the state was rejected.
                    if restoring {
                        return Err(DriverError::CommandFailed {
                            program: program.to_owned(),
                            status: -1,
                            stderr: self.rejected_message(dir),
                        });
                    }
                    let log = std::fs::read_to_string(dir.file(QEMU_LOG)).unwrap_or_default();
                    return Err(DriverError::CommandFailed {
                        program: program.to_owned(),
                        status: -1,
                        stderr: if log.trim().is_empty() {
                            "QEMU exited right after starting".to_owned()
                        } else {
                            log.trim().to_owned()
                        },
                    });
                }
            }
            if let Ok(mut client) = QmpClient::connect(qmp, QMP_TIMEOUT).await {
                let status = match client.query_status().await {
                    Ok(status) => status,
                    // Still reading the state: asked again until the deadline.
                    Err(_) if restoring && Instant::now() < deadline => continue,
                    Err(e) => return Err(Self::qmp_error(dir, e)),
                };
                tracing::info!(
                    machine = %dir.name,
                    status = %status,
                    ready_ms = started.elapsed().as_millis() as u64,
                    "QEMU is up and answering QMP"
                );
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(DriverError::Timeout {
                    machine: dir.name.clone(),
                    what: format!("QEMU to answer on its {qmp}"),
                    seconds: timeout.as_secs(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn stop_inner(&self, dir: &MachineDir, mode: StopMode) -> Result<(), DriverError> {
        let Some(pid) = self.live_pid(dir).await? else {
            return Ok(());
        };
        match mode {
            StopMode::Graceful { timeout } => {
                let deadline = Instant::now() + timeout;
                let mut first = true;
                loop {
                    // A press is an edge, not a state: one that arrives before the guest's
                    // PID 1 watches the button (a stop during boot) is lost, so it is pressed
                    // again every few seconds until the guest goes or time runs out.
                    match self.qmp(dir).await {
                        Ok(mut client) => {
                            let pressed = client.system_powerdown().await;
                            match pressed {
                                Ok(()) => tracing::info!(
                                    machine = %dir.name,
                                    "pressed the ACPI power button"
                                ),
                                Err(err) if first => return Err(Self::qmp_error(dir, err)),
                                Err(err) => tracing::debug!(
                                    machine = %dir.name,
                                    "pressing the power button again failed: {}",
                                    error_chain(&err)
                                ),
                            }
                        }
                        Err(err) if first => return Err(err),
                        // QEMU is exiting and has closed its socket.
                        Err(_) => {}
                    }
                    first = false;
                    let left = deadline.saturating_duration_since(Instant::now());
                    if self.wait_gone(dir, pid, left.min(REPRESS)).await {
                        break;
                    }
                    if Instant::now() >= deadline {
                        return Err(DriverError::Timeout {
                            machine: dir.name.clone(),
                            what: "the guest to power off".to_owned(),
                            seconds: timeout.as_secs(),
                        });
                    }
                }
            }
            StopMode::Kill => {
                // QMP `quit` lets QEMU flush the qcow2 metadata; SIGKILL is the fallback
                // when QMP does not answer.
                let quit = match self.qmp(dir).await {
                    Ok(mut client) => client.quit().await.map_err(|e| Self::qmp_error(dir, e)),
                    Err(err) => Err(err),
                };
                let gone = match quit {
                    Ok(()) => self.wait_gone(dir, pid, QUIT_GRACE).await,
                    Err(err) => {
                        tracing::debug!(machine = %dir.name, "QMP quit failed: {}", error_chain(&err));
                        false
                    }
                };
                if !gone {
                    process::kill(self.runner.as_ref(), pid)
                        .await
                        .map_err(|e| Self::io_error(dir, &dir.file(PIDFILE), e))?;
                    if !self.wait_gone(dir, pid, QUIT_GRACE).await {
                        return Err(DriverError::Timeout {
                            machine: dir.name.clone(),
                            what: format!("QEMU (pid {pid}) to die"),
                            seconds: QUIT_GRACE.as_secs(),
                        });
                    }
                }
            }
        }
        tracing::info!(machine = %dir.name, "VM stopped");
        self.stop_virtiofsd(dir).await;
        self.clean_runtime_files(dir)
    }

    async fn state_inner(&self, dir: &MachineDir) -> Result<VmState, DriverError> {
        if self.live_pid(dir).await?.is_none() {
            return Ok(if dir.file(resume::META).exists() {
                VmState::Saved
            } else {
                VmState::Stopped
            });
        }
        let mut client = match self.qmp(dir).await {
            Ok(client) => client,
            Err(err) => {
                tracing::debug!(machine = %dir.name, "QMP not answering yet: {}", error_chain(&err));
                return Ok(VmState::Starting);
            }
        };
        let status = client
            .query_status()
            .await
            .map_err(|e| Self::qmp_error(dir, e))?;
        Ok(state_from_qmp(&status))
    }

    /// The first line of `PROGRAM --version`.
    async fn qemu_version(&self) -> Result<String, DriverError> {
        let program = self.program();
        let cmd = CommandSpec::new(&program)
            .arg("--version")
            .install_hint(self.host.install_hint(self.guest_arch()));
        let out = self.runner.run(&cmd).await?.check(&program)?;
        Ok(out
            .stdout_text()
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned())
    }

    /// `stop --save`: stops the guest's CPUs, streams its state into `vmstate.bin` (QMP
    /// `migrate`), records what it was saved against, then ends QEMU. On a failure the guest
    /// runs on and nothing is left behind.
    async fn save_inner(&self, dir: &MachineDir, spec: &VmSpec) -> Result<(), DriverError> {
        if let Some(share) = spec.shares.first() {
            return Err(DriverError::Unsupported {
                driver: DRIVER.to_owned(),
                op: format!(
                    "saving the state of machine {} while it shares {} over {} (QEMU cannot \
                     save a guest with a mounted 9p or virtio-fs export); stop it without \
                     --save",
                    dir.name,
                    share.host_path.display(),
                    share.transport
                ),
            });
        }
        let Some(pid) = self.live_pid(dir).await? else {
            return Err(DriverError::WrongState {
                machine: dir.name.clone(),
                state: VmState::Stopped,
                op: "save",
                wanted: "running",
            });
        };
        let state = QemuState::load_required(dir)?;
        let tsc_khz = self.host_tsc_khz().await;
        let qmp_endpoint = self.launch_qmp(dir, &state)?;
        let argv = self.vm_argv(dir, spec, &state, tsc_khz, &[], &qmp_endpoint);
        let boot_files =
            resume::boot_stamps(spec).map_err(|e| Self::io_error(dir, &spec.boot.kernel, e))?;
        let tmp = dir.file(resume::STATE_TMP);
        let written = dir.file(resume::STATE_WRITTEN);
        let uri = resume::save_uri(&tmp, &written).map_err(|e| Self::io_error(dir, &tmp, e))?;
        let mut qmp = self.qmp(dir).await?;
        // Taken while that QEMU runs (its /proc entry and pidfile are gone after `quit`).
        let qemu_binary = resume::binary_of_running_qemu(&self.program(), pid, &dir.file(PIDFILE));
        // A boot snapshot's marker left by an earlier command must not make a later `start`
        // take this stop for that save's.
        remove_if_present(dir, boot_snapshot::SAVING_MARKER)?;
        let qemu_version = self.version_then_stop(dir, &mut qmp).await?;
        let began = Instant::now();
        let saved_to = match self.migrate_to(dir, &mut qmp, &uri, &written).await {
            Ok(()) => std::fs::File::open(&written)
                .and_then(|f| {
                    f.sync_all()?;
                    f.metadata()
                })
                .map_err(|e| Self::io_error(dir, &written, e))
                .and_then(|meta| {
                    std::fs::rename(&written, dir.file(resume::STATE))
                        .map(|()| meta.len())
                        .map_err(|e| Self::io_error(dir, &written, e))
                }),
            Err(err) => Err(err),
        };
        let saved_to = match saved_to {
            Ok(len) => {
                let state = dir.file(resume::STATE);
                let summed = {
                    let state = state.clone();
                    tokio::task::spawn_blocking(move || resume::sha256_of(&state)).await
                };
                match summed {
                    Ok(Ok(sum)) => Ok((len, sum)),
                    Ok(Err(e)) => Err(Self::io_error(dir, &state, e)),
                    Err(e) => Err(Self::io_error(dir, &state, std::io::Error::other(e))),
                }
            }
            Err(err) => Err(err),
        };
        let (state_len, state_sha256) = match saved_to {
            Ok(saved) => saved,
            Err(err) => {
                let _ = resume::discard(dir);
                if let Err(cont) = qmp.execute("cont", None).await {
                    tracing::warn!(machine = %dir.name, "the guest stays paused: {}", error_chain(&cont));
                }
                return Err(err);
            }
        };
        tracing::info!(
            machine = %dir.name,
            bytes = state_len,
            ms = began.elapsed().as_millis() as u64,
            "saved the VM's state"
        );
        match qmp.quit().await {
            Ok(()) if self.wait_gone(dir, pid, QUIT_GRACE).await => {}
            _ => {
                process::kill(self.runner.as_ref(), pid)
                    .await
                    .map_err(|e| Self::io_error(dir, &dir.file(PIDFILE), e))?;
                self.wait_gone(dir, pid, QUIT_GRACE).await;
            }
        }
        self.clean_runtime_files(dir)?;
        // Stamped once QEMU is gone: nothing writes the disk after this but a later run.
        let disk = dir.file(DISK);
        let recorded = resume::FileStamp::of(&disk)
            .map_err(|e| Self::io_error(dir, &disk, e))
            .and_then(|data_disk| {
                SavedVm {
                    qemu_version,
                    qemu_binary,
                    argv,
                    tsc_khz,
                    boot_files,
                    state_len,
                    state_sha256: Some(state_sha256),
                    data_disk,
                }
                .save(dir)
            });
        if let Err(err) = recorded {
            // Without its record the state is never loaded: the next start boots afresh
            // (the guest's writes reached the disk before the save).
            let _ = resume::discard(dir);
            return Err(err);
        }
        Ok(())
    }

    /// Before a save: the running QEMU's version, as the first line of its `--version` (that
    /// of the QEMU that writes the state, not of whatever binary is installed now: it may have
    /// been upgraded while the VM ran); then QEMU's migration cap lifted (32 MiB/s by default,
    /// meant for a network link) and the guest's CPUs stopped, so that the state is written
    /// once, not chased page by page.
    async fn version_then_stop(
        &self,
        dir: &MachineDir,
        qmp: &mut QmpClient,
    ) -> Result<String, DriverError> {
        let qmp_err = |e| Self::qmp_error(dir, e);
        let answer = qmp.execute("query-version", None).await.map_err(qmp_err)?;
        let qemu_version = resume::version_line(&answer).ok_or_else(|| DriverError::Protocol {
            machine: dir.name.clone(),
            channel: "qmp",
            message: format!("query-version answered {answer}"),
        })?;
        qmp.execute(
            "migrate-set-parameters",
            Some(serde_json::json!({ "max-bandwidth": 1u64 << 40 })),
        )
        .await
        .map_err(qmp_err)?;
        qmp.execute("stop", None).await.map_err(qmp_err)?;
        Ok(qemu_version)
    }

    /// Runs QMP `migrate` to `uri` and waits until QEMU reports it completed and the state
    /// file has its final name `written` (QEMU says completed before its `cat` has finished).
    async fn migrate_to(
        &self,
        dir: &MachineDir,
        qmp: &mut QmpClient,
        uri: &str,
        written: &Path,
    ) -> Result<(), DriverError> {
        let qmp_err = |e| Self::qmp_error(dir, e);
        qmp.execute("migrate", Some(serde_json::json!({ "uri": uri })))
            .await
            .map_err(qmp_err)?;
        let mut deadline = Instant::now() + SAVE_TIMEOUT;
        let mut completed = false;
        loop {
            if completed {
                if written.exists() {
                    return Ok(());
                }
            } else {
                let info = qmp.execute("query-migrate", None).await.map_err(qmp_err)?;
                let status = info.get("status").and_then(|s| s.as_str()).unwrap_or("");
                match status {
                    "completed" => {
                        completed = true;
                        // Only what the pipe still holds is left to write; a `cat` that
                        // failed (a full disk) never renames the file.
                        deadline = deadline.min(Instant::now() + WRITTEN_TIMEOUT);
                        continue;
                    }
                    "failed" | "cancelled" => {
                        let desc = info
                            .get("error-desc")
                            .and_then(|s| s.as_str())
                            .unwrap_or("no reason given");
                        return Err(DriverError::Protocol {
                            machine: dir.name.clone(),
                            channel: "qmp",
                            message: format!("QEMU could not save the VM's state: {desc}"),
                        });
                    }
                    _ => {}
                }
            }
            if Instant::now() >= deadline {
                if !completed {
                    let _ = qmp.execute("migrate_cancel", None).await;
                    // The caller lets the guest run on: not before the migration has ended.
                    let cancel_deadline = Instant::now() + QUIT_GRACE;
                    while Instant::now() < cancel_deadline {
                        let ended = qmp.execute("query-migrate", None).await.is_ok_and(|info| {
                            matches!(
                                info.get("status").and_then(|s| s.as_str()),
                                Some("cancelled" | "failed" | "completed")
                            )
                        });
                        if ended {
                            break;
                        }
                        tokio::time::sleep(STATE_POLL).await;
                    }
                }
                return Err(DriverError::Timeout {
                    machine: dir.name.clone(),
                    what: if completed {
                        format!("the state file to be written whole ({})", written.display())
                    } else {
                        "QEMU to save the VM's state".to_owned()
                    },
                    seconds: if completed {
                        WRITTEN_TIMEOUT.as_secs()
                    } else {
                        SAVE_TIMEOUT.as_secs()
                    },
                });
            }
            tokio::time::sleep(STATE_POLL).await;
        }
    }

    /// `start` of a machine saved by `stop --save`: checks the state against this QEMU, guest
    /// image and command line, loads it into a paused QEMU and lets the guest run on. A
    /// state that does not fit or does not load is removed (the disk is as the save left it).
    async fn resume_inner(&self, dir: &MachineDir, spec: &VmSpec) -> Result<Resume, DriverError> {
        if !resume::exists(dir) {
            return Ok(Resume::NoSavedState);
        }
        if self.live_pid(dir).await?.is_some() {
            return Err(DriverError::WrongState {
                machine: dir.name.clone(),
                state: VmState::Running,
                op: "resume",
                wanted: "stopped",
            });
        }
        let why = match self.resume_problem(dir, spec).await? {
            Some(why) => Some(why),
            None => self.load_saved(dir, spec).await?,
        };
        Ok(match why {
            None => Resume::Resumed,
            Some(reason) => {
                resume::discard(dir)
                    .map_err(|e| Self::io_error(dir, &dir.file(resume::STATE), e))?;
                tracing::info!(machine = %dir.name, "saved state not used: {reason}");
                Resume::Discarded { reason }
            }
        })
    }

    /// Why the saved state cannot be loaded into this machine as it is now; `None` if it can.
    async fn resume_problem(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
    ) -> Result<Option<String>, DriverError> {
        let saved = match SavedVm::load(dir) {
            Ok(Some(saved)) => saved,
            Ok(None) => return Ok(Some("its record (vmstate.json) is missing".to_owned())),
            Err(err) => {
                return Ok(Some(format!(
                    "its record is unreadable: {}",
                    error_chain(&err)
                )))
            }
        };
        let len = std::fs::metadata(dir.file(resume::STATE)).map(|m| m.len());
        match len {
            Ok(len) if len == saved.state_len => {}
            Ok(len) => {
                return Ok(Some(format!(
                    "the state file is {len} bytes where {} were saved (truncated or replaced)",
                    saved.state_len
                )))
            }
            Err(err) => return Ok(Some(format!("the state file is unreadable: {err}"))),
        }
        let state = QemuState::load_required(dir)?;
        let qmp = self.launch_qmp(dir, &state)?;
        let argv = self.vm_argv(dir, spec, &state, saved.tsc_khz, &[], &qmp);
        let boot_files = match resume::boot_stamps(spec) {
            Ok(files) => files,
            Err(err) => return Ok(Some(format!("the guest image is unreadable: {err}"))),
        };
        let binary =
            resume::find_program(&self.program()).and_then(|p| resume::BinaryStamp::of(&p).ok());
        let qemu_version = match &saved.qemu_binary {
            Some(stamp) if binary.as_ref() == Some(stamp) => saved.qemu_version.clone(),
            _ => self.qemu_version().await?,
        };
        let data_disk = match resume::FileStamp::of(&dir.file(DISK)) {
            Ok(stamp) => stamp,
            Err(err) => return Ok(Some(format!("the data disk is unreadable: {err}"))),
        };
        Ok(saved.mismatch(&qemu_version, &argv, &boot_files, &data_disk))
    }

    /// Starts QEMU on the saved state, waits for it to load and lets the guest run; the reason
    /// if QEMU rejected the state. A failure that is not the state's fault (QEMU could not
    /// start, a timeout) is an error and keeps the state for the next try.
    async fn load_saved(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
    ) -> Result<Option<String>, DriverError> {
        let saved = SavedVm::load(dir)?.ok_or_else(|| DriverError::Protocol {
            machine: dir.name.clone(),
            channel: "qmp",
            message: "vmstate.json vanished".to_owned(),
        })?;
        let mut state = QemuState::load_required(dir)?;
        if Self::refresh_ports(&mut state).map_err(|e| Self::io_error(dir, dir.path(), e))? {
            state.save(dir)?;
        }
        let began = Instant::now();
        let path = dir.file(resume::STATE);
        // Summed while QEMU loads the same file (both read it from the page cache): the
        // guest runs only once the sum matched.
        let damage = saved.state_sha256.clone().map(|want| {
            let path = path.clone();
            tokio::task::spawn_blocking(move || resume::state_damage(&path, &want))
        });
        match self
            .launch(dir, spec, &state, saved.tsc_khz, Some(&path))
            .await
        {
            Ok(()) => {}
            Err(DriverError::CommandFailed { stderr, .. }) if stderr.starts_with(REJECTED) => {
                self.clean_runtime_files(dir)?;
                return Ok(Some(stderr));
            }
            Err(err) => return Err(err),
        }
        // Until `cont`, any failure leaves a paused QEMU the host would take for a running
        // machine: it is killed, and the state kept.
        match self.continue_loaded(dir, &path, damage).await {
            Ok(rejected) => {
                if rejected.is_none() {
                    tracing::info!(
                        machine = %dir.name,
                        ms = began.elapsed().as_millis() as u64,
                        "resumed the VM from its saved state"
                    );
                }
                Ok(rejected)
            }
            Err(err) => {
                if let Err(kill) = self.stop_inner(dir, StopMode::Kill).await {
                    tracing::warn!(machine = %dir.name, "QEMU not stopped after a failed resume: {}", error_chain(&kill));
                }
                Err(err)
            }
        }
    }

    /// Waits until a QEMU started with `-S -incoming` has loaded its state; the paused QEMU's
    /// QMP client, or why it rejected the state. `loading` names the state in the timeout's
    /// error.
    async fn wait_loaded(
        &self,
        dir: &MachineDir,
        loading: &str,
    ) -> Result<Result<QmpClient, String>, DriverError> {
        let deadline = Instant::now() + SAVE_TIMEOUT;
        let mut client = None;
        loop {
            if self.live_pid(dir).await?.is_none() {
                self.clean_runtime_files(dir)?;
                return Ok(Err(self.rejected_message(dir)));
            }
            if client.is_none() {
                client = self.qmp(dir).await.ok();
            }
            // QEMU reading a big state answers QMP only once it is done: a slow or failed
            // answer is asked again until the deadline.
            let status = match client.as_mut() {
                Some(qmp) => qmp.query_status().await.ok(),
                None => None,
            };
            match status.as_deref() {
                Some("paused" | "postmigrate") => {
                    if let Some(qmp) = client.take() {
                        return Ok(Ok(qmp));
                    }
                }
                None => client = None,
                Some("inmigrate") => {}
                Some(other) => {
                    let _ = self.stop_inner(dir, StopMode::Kill).await;
                    return Ok(Err(format!("QEMU ended in state {other} while loading it")));
                }
            }
            if Instant::now() >= deadline {
                return Err(DriverError::Timeout {
                    machine: dir.name.clone(),
                    what: format!("QEMU to load {loading}"),
                    seconds: SAVE_TIMEOUT.as_secs(),
                });
            }
            tokio::time::sleep(STATE_POLL).await;
        }
    }

    /// After [`Self::load_saved`] launched QEMU on the state at `path`: waits until it has
    /// loaded it and lets the guest run; the reason if QEMU rejected it.
    async fn continue_loaded(
        &self,
        dir: &MachineDir,
        path: &Path,
        damage: Option<tokio::task::JoinHandle<Option<String>>>,
    ) -> Result<Option<String>, DriverError> {
        let mut qmp = match self
            .wait_loaded(dir, "the saved state (kept for the next start)")
            .await?
        {
            Ok(qmp) => qmp,
            Err(rejected) => return Ok(Some(rejected)),
        };
        let damage = match damage {
            Some(check) => check
                .await
                .unwrap_or_else(|e| Some(format!("its check failed: {e}"))),
            None => None,
        };
        if let Some(why) = damage {
            // Loaded but not run: nothing was written; the damaged file is kept aside.
            self.stop_inner(dir, StopMode::Kill).await?;
            let aside = dir.file(resume::STATE_DAMAGED);
            std::fs::rename(path, &aside).map_err(|e| Self::io_error(dir, path, e))?;
            return Ok(Some(why));
        }
        // Loaded: from here on the guest writes the disk, so the state is spent. A rename and
        // a small unlink are quick; the big file is deleted by `finish_resume`.
        let spent = dir.file(resume::STATE_SPENT);
        std::fs::rename(path, &spent).map_err(|e| Self::io_error(dir, path, e))?;
        resume::discard_record(dir).map_err(|e| Self::io_error(dir, path, e))?;
        qmp.execute("cont", None)
            .await
            .map_err(|e| Self::qmp_error(dir, e))?;
        Ok(None)
    }

    /// Right after `cont`: sets the guest's clock through its clock port if the guest has the
    /// port open (QMP `query-chardev`'s `frontend-open`), waiting for its answer as long as
    /// [`clock::OPEN_PORT_TIMEOUT`]; left to the host (SSH) only if the port is not open, as
    /// then no request is written that the guest could apply late.
    #[cfg_attr(not(unix), allow(unused_variables))]
    async fn set_clock_after_resume_inner(&self, dir: &MachineDir) -> GuestClock {
        if !self.has_clock_port() {
            return GuestClock::LeftToHost;
        }
        #[cfg(unix)]
        {
            let began = Instant::now();
            match self.clock_port_open(dir).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(machine = %dir.name, "the guest has not opened its clock port: the host sets the clock over SSH");
                    return GuestClock::LeftToHost;
                }
                Err(err) => {
                    tracing::info!(machine = %dir.name, "clock port state unknown ({}): the host sets the clock over SSH", error_chain(&err));
                    return GuestClock::LeftToHost;
                }
            }
            return match clock::set_guest_clock(dir.path(), clock::OPEN_PORT_TIMEOUT).await {
                Ok(answer) => {
                    tracing::debug!(machine = %dir.name, ms = began.elapsed().as_millis() as u64, "guest clock set through the clock port ({answer})");
                    GuestClock::Set
                }
                Err(err) => {
                    tracing::warn!(machine = %dir.name, "guest clock not set through the clock port: {}", error_chain(&err));
                    GuestClock::NotSet {
                        reason: error_chain(&err),
                    }
                }
            };
        }
        #[cfg(not(unix))]
        GuestClock::LeftToHost
    }

    /// Whether the guest has its clock port open. Right after `cont` QEMU may not have told
    /// the chardev yet (virtio-serial replays the guest's open from a timer once the VM
    /// runs), so a closed port is asked about again for a moment.
    #[cfg(unix)]
    async fn clock_port_open(&self, dir: &MachineDir) -> Result<bool, DriverError> {
        let mut qmp = self.qmp(dir).await?;
        for attempt in 0..5 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let answer = qmp
                .execute("query-chardev", None)
                .await
                .map_err(|e| Self::qmp_error(dir, e))?;
            if clock::frontend_open(&answer) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The reason given when QEMU exited while loading the state, with the end of its log.
    fn rejected_message(&self, dir: &MachineDir) -> String {
        let log = std::fs::read_to_string(dir.file(QEMU_LOG)).unwrap_or_default();
        let tail: Vec<&str> = log.trim().lines().rev().take(5).collect();
        if tail.is_empty() {
            format!("{REJECTED} (the stream is damaged or does not fit this VM)")
        } else {
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{REJECTED}: {}", tail.join(" / "))
        }
    }

    /// Deletes the state a resume loaded (as big as the guest's memory: it takes a while).
    async fn finish_resume_inner(&self, dir: &MachineDir) -> Result<(), DriverError> {
        let spent = dir.file(resume::STATE_SPENT);
        let removed = {
            let spent = spent.clone();
            tokio::task::spawn_blocking(move || std::fs::remove_file(spent)).await
        };
        match removed {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Ok(Err(e)) => Err(Self::io_error(dir, &spent, e)),
            Err(join) => Err(Self::io_error(dir, &spent, std::io::Error::other(join))),
        }
    }

    async fn remove_inner(&self, dir: &MachineDir) -> Result<(), DriverError> {
        if dir.path().exists() {
            self.stop_inner(dir, StopMode::Kill).await?;
        }
        for name in OWN_FILES {
            remove_if_present(dir, name)?;
        }
        if let Ok(entries) = std::fs::read_dir(dir.path()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if virtiofs::is_own_file(&name) {
                    remove_if_present(dir, &name)?;
                }
            }
        }
        Ok(())
    }

    /// Refuses a guest image built for another architecture than the VM's: QEMU would start
    /// it and the kernel would never print a line.
    fn check_image_arch(&self, spec: &VmSpec) -> Result<(), DriverError> {
        let guest = self.guest_arch();
        let recorded = spec.boot.arch.as_str();
        // Images from before the manifest named an architecture were all x86_64 images
        // booted by x86_64 hosts; nothing to compare.
        if recorded.is_empty() {
            return Ok(());
        }
        let dir = spec
            .boot
            .kernel
            .parent()
            .unwrap_or(&spec.boot.kernel)
            .display();
        let problem = match HostArch::from_name(recorded) {
            Some(image) if image == guest => return Ok(()),
            Some(image) => {
                let vm = match self.options.arch {
                    Some(_) => format!("--qemu-arch {guest}"),
                    None => format!("{guest}, the host's architecture"),
                };
                let emulated = if image == self.host.arch {
                    String::new()
                } else {
                    format!(" (software emulation on this {} host)", self.host.arch)
                };
                format!(
                    "the guest image {dir} is built for {image} but the VM is {vm}: pass \
                     --qemu-arch {image}{emulated} or a {guest} image with --guest-image"
                )
            }
            None => format!(
                "the guest image {dir} is built for {recorded:?}, which the qemu driver does \
                 not run (x86_64 or aarch64)"
            ),
        };
        Err(DriverError::InvalidOptions {
            driver: DRIVER.to_owned(),
            problems: vec![problem],
        })
    }

    /// With `--qemu-boot-iso`: a machine type with a CD drive and firmware (pc, q35), an ISO
    /// in the guest image, and the `--qemu-firmware` file.
    fn iso_problem(&self, spec: &VmSpec) -> Result<(), DriverError> {
        if let Some(firmware) = &self.options.firmware {
            if !Path::new(firmware).is_file() {
                return Err(DriverError::MissingFile {
                    what: "firmware image (--qemu-firmware)",
                    path: firmware.into(),
                });
            }
        }
        if !self.options.boot_iso {
            return Ok(());
        }
        if self.guest_arch() != HostArch::X86_64 {
            return Err(DriverError::InvalidOptions {
                driver: DRIVER.to_owned(),
                problems: vec![format!(
                    "--qemu-boot-iso: the guest ISO exists for x86_64 guests only; a {} guest \
                     boots its kernel directly",
                    self.guest_arch()
                )],
            });
        }
        let machine = self.machine_type();
        if args::MachineFamily::of(&machine) != args::MachineFamily::Pci {
            return Err(DriverError::InvalidOptions {
                driver: DRIVER.to_owned(),
                problems: vec![format!(
                    "--qemu-boot-iso needs a pc or q35 machine, not --qemu-machine {machine}"
                )],
            });
        }
        match &spec.boot.iso {
            Some(iso) if iso.is_file() => Ok(()),
            Some(iso) => Err(DriverError::MissingFile {
                what: "bootable guest ISO",
                path: iso.clone(),
            }),
            None => Err(DriverError::MissingFile {
                what:
                    "bootable guest ISO (this guest image has none; rebuild it with guest/build.sh)",
                path: spec.boot.initrd.with_file_name("rmachine.iso"),
            }),
        }
    }

    async fn precheck_inner(&self, spec: &VmSpec) -> Result<(), DriverError> {
        if let Some(problem) = self.options.accel.problem_on(self.host, self.guest_arch()) {
            return Err(DriverError::InvalidOptions {
                driver: DRIVER.to_owned(),
                problems: vec![problem],
            });
        }
        self.check_image_arch(spec)?;
        let program = self.program();
        let version = CommandSpec::new(&program)
            .arg("--version")
            .install_hint(self.host.install_hint(self.guest_arch()));
        let out = self.runner.run(&version).await?.check(&program)?;
        tracing::debug!(version = %out.stdout_text().lines().next().unwrap_or(""), "found QEMU");
        let img = self.qemu_img();
        let version = CommandSpec::new(&img)
            .arg("--version")
            .install_hint(self.host.qemu_img_hint());
        self.runner.run(&version).await?.check(&img)?;
        if !spec.shares.is_empty() && self.host.os == HostOs::Windows {
            return Err(DriverError::Unsupported {
                driver: DRIVER.to_owned(),
                op: "folder shares on Windows (QEMU for Windows has neither virtio-9p nor \
                     virtio-fs); create the machine with --no-share"
                    .to_owned(),
            });
        }
        self.iso_problem(spec)?;
        for (what, path) in [
            ("guest kernel", &spec.boot.kernel),
            ("guest initrd", &spec.boot.initrd),
        ] {
            if !path.is_file() {
                return Err(DriverError::MissingFile {
                    what,
                    path: path.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Maps QMP's run state to the machine state users see.
pub fn state_from_qmp(status: &str) -> VmState {
    match status {
        "running" | "colo" => VmState::Running,
        "paused" | "suspended" | "debug" => VmState::Paused,
        "prelaunch" | "inmigrate" | "restore-vm" => VmState::Starting,
        "postmigrate" | "finish-migrate" | "save-vm" => VmState::Saved,
        "shutdown" => VmState::Stopped,
        // guest-panicked, internal-error, io-error, watchdog, and states newer QEMUs add.
        _ => VmState::Error,
    }
}

fn endpoints_of(dir: &MachineDir) -> Result<Endpoints, DriverError> {
    let state = QemuState::load_required(dir)?;
    Ok(Endpoints {
        ssh: SocketAddr::from((Ipv4Addr::LOCALHOST, state.ssh_port)),
        engine: SocketAddr::from((Ipv4Addr::LOCALHOST, state.engine_port)),
    })
}

/// The TSC rate from /proc/cpuinfo: "cpu MHz" of the first CPU, if its flags say the TSC
/// frequency is known (`tsc_known_freq`), else `None`.
fn cpuinfo_tsc_mhz(cpuinfo: &str) -> Option<f64> {
    let known = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split(':').nth(1))
        .is_some_and(|flags| flags.split_whitespace().any(|f| f == "tsc_known_freq"));
    if !known {
        return None;
    }
    cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
}

fn remove_if_present(dir: &MachineDir, name: &str) -> Result<(), DriverError> {
    let path = dir.file(name);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DriverError::Io {
            machine: dir.name.clone(),
            path,
            source,
        }),
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Driver for QemuDriver {
    fn guest_arch(&self) -> Option<&'static str> {
        Some(QemuDriver::guest_arch(self).as_str())
    }

    /// QEMU's user network always hands out the same plan (slirp's defaults, which the
    /// command line does not change).
    fn guest_network(&self) -> Option<GuestNetwork> {
        Some(GuestNetwork {
            address: "10.0.2.15/24".to_owned(),
            gateway: "10.0.2.2".to_owned(),
            dns: "10.0.2.3".to_owned(),
        })
    }

    fn resident_bytes(&self, dir: &MachineDir) -> Option<u64> {
        process::resident_bytes(&dir.file(PIDFILE))
    }

    fn machine_boots_fast_boot_files(&self, dir: &MachineDir) -> bool {
        match QemuState::load(dir) {
            Ok(Some(state)) => self.boots_fast_boot_files_on(&state.machine),
            // Not created yet: the type the options give a new machine.
            Ok(None) => self.boots_fast_boot_files(),
            Err(err) => {
                tracing::warn!(machine = %dir.name, file = %dir.file(saved::FILE).display(), error = %err, "cannot read the machine type; deriving the fast-boot files as for a new machine");
                self.boots_fast_boot_files()
            }
        }
    }

    fn data_disk_image(&self, dir: &MachineDir) -> Option<PathBuf> {
        Some(dir.file(DISK))
    }

    fn info(&self) -> DriverInfo {
        DriverInfo {
            name: DRIVER.to_owned(),
            capabilities: Capabilities {
                graceful_stop: true,
                pause: true,
                console_log: true,
                // QEMU for Windows has neither virtio-9p nor virtio-fs: the host then shares
                // over SFTP, as it does when told to.
                shares: self.host.os != HostOs::Windows
                    && self.options.share_transport != ShareTransportOption::Sftp,
                sftp_shares: true,
                existing_host: false,
                virtio_fs: self.virtiofsd().is_some(),
                // Windows QEMU runs no `sh` for `exec:` migration URIs.
                save_state: self.host.os != HostOs::Windows,
                fast_boot_files: self.boots_fast_boot_files(),
            },
        }
    }

    fn precheck(
        &self,
        spec: &VmSpec,
    ) -> impl std::future::Future<Output = Result<(), DriverError>> + Send {
        self.precheck_inner(spec)
    }

    fn create(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
    ) -> impl std::future::Future<Output = Result<(), DriverError>> + Send {
        self.create_inner(dir, spec)
    }

    fn start(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
    ) -> impl std::future::Future<Output = Result<(), DriverError>> + Send {
        self.start_inner(dir, spec)
    }

    fn stop(
        &self,
        dir: &MachineDir,
        mode: StopMode,
    ) -> impl std::future::Future<Output = Result<(), DriverError>> + Send {
        self.stop_inner(dir, mode)
    }

    fn remove(
        &self,
        dir: &MachineDir,
    ) -> impl std::future::Future<Output = Result<(), DriverError>> + Send {
        self.remove_inner(dir)
    }

    fn save(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
    ) -> impl std::future::Future<Output = Result<(), DriverError>> + Send {
        self.save_inner(dir, spec)
    }

    fn resume(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
    ) -> impl std::future::Future<Output = Result<Resume, DriverError>> + Send {
        self.resume_inner(dir, spec)
    }

    fn finish_resume(
        &self,
        dir: &MachineDir,
    ) -> impl std::future::Future<Output = Result<(), DriverError>> + Send {
        self.finish_resume_inner(dir)
    }

    fn set_clock_after_resume(
        &self,
        dir: &MachineDir,
    ) -> impl std::future::Future<Output = GuestClock> + Send {
        self.set_clock_after_resume_inner(dir)
    }

    fn state(
        &self,
        dir: &MachineDir,
    ) -> impl std::future::Future<Output = Result<VmState, DriverError>> + Send {
        self.state_inner(dir)
    }

    fn endpoints(
        &self,
        dir: &MachineDir,
    ) -> impl std::future::Future<Output = Result<Endpoints, DriverError>> + Send {
        std::future::ready(endpoints_of(dir))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::path::PathBuf;
    use std::sync::Mutex;

    use rmachine_driver::runner::{CommandOutput, RecordingRunner, RunFuture, Spawned};
    use rmachine_driver::{BootImage, GuestPorts};

    use super::*;
    use crate::qmp::fake;

    const LINUX: HostPlatform = HostPlatform {
        os: HostOs::Linux,
        arch: HostArch::X86_64,
    };

    fn spec(dir: &Path) -> VmSpec {
        VmSpec {
            cpus: 2,
            memory_mb: 1024,
            disk_size_mb: 20000,
            boot: BootImage {
                kernel: dir.join("vmlinuz"),
                initrd: dir.join("initrd.img"),
                cmdline: "console=ttyS0".into(),
                arch: "x86_64".into(),
                iso: None,
                kernel_elf: None,
                initrd_uncompressed: None,
                features: Vec::new(),
            },
            config_drive: dir.join("config.img"),
            guest_ports: GuestPorts::default(),
            shares: Vec::new(),
        }
    }

    fn tcg_options() -> QemuOptions {
        QemuOptions {
            accel: AccelOption::Tcg,
            ..QemuOptions::default()
        }
    }

    /// A live process whose command line names the machine's pidfile, standing in for QEMU.
    struct FakeVm(std::process::Child);

    impl FakeVm {
        fn start(dir: &MachineDir) -> Self {
            let pidfile = dir.file(PIDFILE);
            let child = std::process::Command::new("sh")
                .args(["-c", "sleep 60", &pidfile.to_string_lossy()])
                .spawn()
                .expect("spawn stand-in");
            // Until the child has exec'd, its command line is the test binary's.
            let cmdline = PathBuf::from(format!("/proc/{}/cmdline", child.id()));
            let marker = pidfile.to_string_lossy().into_owned();
            for _ in 0..500 {
                let text = std::fs::read(&cmdline).unwrap_or_default();
                if String::from_utf8_lossy(&text).contains(&marker) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            std::fs::write(&pidfile, format!("{}\n", child.id())).expect("pidfile");
            Self(child)
        }
        fn pid(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for FakeVm {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn kill_and_reap(pid: u32) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }

    fn qmp_status(status: &'static str) -> impl Fn(&str) -> Vec<String> + Send + Sync {
        move |command| match command {
            "query-status" => vec![format!(
                "{{\"return\": {{\"status\": \"{status}\", \"running\": false}}}}"
            )],
            _ => vec!["{\"return\": {}}".to_owned()],
        }
    }

    #[test]
    fn qmp_states_map_to_machine_states() {
        assert_eq!(state_from_qmp("running"), VmState::Running);
        assert_eq!(state_from_qmp("paused"), VmState::Paused);
        assert_eq!(state_from_qmp("suspended"), VmState::Paused);
        assert_eq!(state_from_qmp("shutdown"), VmState::Stopped);
        assert_eq!(state_from_qmp("prelaunch"), VmState::Starting);
        assert_eq!(state_from_qmp("save-vm"), VmState::Saved);
        assert_eq!(state_from_qmp("guest-panicked"), VmState::Error);
        assert_eq!(state_from_qmp("something-new"), VmState::Error);
    }

    #[tokio::test]
    async fn state_reads_qmp_when_the_process_lives() {
        for (status, expected) in [
            ("running", VmState::Running),
            ("paused", VmState::Paused),
            ("shutdown", VmState::Stopped),
            ("internal-error", VmState::Error),
        ] {
            let tmp = tempfile::tempdir().expect("temp dir");
            let dir = MachineDir::new("dev", tmp.path());
            let _vm = FakeVm::start(&dir);
            fake::serve(&dir.file(QMP_SOCKET), qmp_status(status));
            let driver = QemuDriver::new(tcg_options()).for_host(LINUX);
            assert_eq!(
                driver.state(&dir).await.expect("state"),
                expected,
                "{status}"
            );
        }
    }

    #[tokio::test]
    async fn start_replaces_a_qemu_left_stopped_by_an_interrupted_snapshot_save() {
        // Paused mid-save, or `postmigrate` once QEMU's own writer finished, the marker naming
        // this QEMU: it goes (then this start fails on the missing kernel, after it).
        for status in ["paused", "postmigrate"] {
            let tmp = tempfile::tempdir().expect("temp dir");
            let dir = MachineDir::new("dev", tmp.path());
            let vm = FakeVm::start(&dir);
            std::fs::write(
                dir.file(boot_snapshot::SAVING_MARKER),
                format!("{}\n", vm.pid()),
            )
            .expect("marker");
            let log = fake::serve(&dir.file(QMP_SOCKET), qmp_status(status));
            let driver = QemuDriver::new(tcg_options()).for_host(LINUX);
            let err = driver
                .start(&dir, &spec(tmp.path()))
                .await
                .expect_err("no kernel to boot");
            assert!(
                matches!(err, DriverError::MissingFile { .. }),
                "{status}: {err}"
            );
            let seen = log.lock().expect("log").clone();
            assert!(seen.iter().any(|c| c == "quit"), "{status}: {seen:?}");
            assert!(!seen.iter().any(|c| c == "cont"), "{status}: {seen:?}");
            assert!(!dir.file(boot_snapshot::SAVING_MARKER).exists(), "{status}");
        }
        // Left alone, a stale marker removed: a QEMU paused without a marker, one suspended
        // or running with a marker naming it, and one paused while the marker names another
        // process.
        for (status, marker) in [
            ("paused", None),
            ("suspended", Some("own")),
            ("running", Some("own")),
            ("paused", Some("1")),
        ] {
            let tmp = tempfile::tempdir().expect("temp dir");
            let dir = MachineDir::new("dev", tmp.path());
            let vm = FakeVm::start(&dir);
            if let Some(marker) = marker {
                let pid = if marker == "own" {
                    vm.pid().to_string()
                } else {
                    marker.to_owned()
                };
                std::fs::write(dir.file(boot_snapshot::SAVING_MARKER), pid).expect("marker");
            }
            let log = fake::serve(&dir.file(QMP_SOCKET), qmp_status(status));
            let driver = QemuDriver::new(tcg_options()).for_host(LINUX);
            let started = driver.start(&dir, &spec(tmp.path())).await;
            let seen = log.lock().expect("log").clone();
            assert!(
                !seen.iter().any(|c| c == "quit" || c == "cont"),
                "{status} {marker:?}: {seen:?} {started:?}"
            );
            assert!(!dir.file(boot_snapshot::SAVING_MARKER).exists());
        }
    }

    #[tokio::test]
    async fn state_is_starting_while_qmp_is_not_up() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = MachineDir::new("dev", tmp.path());
        let _vm = FakeVm::start(&dir);
        let driver = QemuDriver::new(tcg_options()).for_host(LINUX);
        assert_eq!(driver.state(&dir).await.expect("state"), VmState::Starting);
    }

    #[tokio::test]
    async fn a_stale_pidfile_means_stopped_and_is_removed() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = MachineDir::new("dev", tmp.path());
        let vm = FakeVm::start(&dir);
        let pid = vm.pid();
        drop(vm);
        std::fs::write(dir.file(PIDFILE), format!("{pid}\n")).expect("stale pidfile");
        std::fs::write(dir.file(QMP_SOCKET), "").expect("stale socket");
        let driver = QemuDriver::new(tcg_options()).for_host(LINUX);
        assert_eq!(driver.state(&dir).await.expect("state"), VmState::Stopped);
        assert!(!dir.file(PIDFILE).exists());
        assert!(!dir.file(QMP_SOCKET).exists());
        // A pid now owned by an unrelated process is stale too: never report (or kill) it.
        let mut stranger = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn");
        std::fs::write(dir.file(PIDFILE), format!("{}\n", stranger.id())).expect("pidfile");
        driver.stop(&dir, StopMode::Kill).await.expect("stop");
        assert!(
            stranger.try_wait().expect("try_wait").is_none(),
            "stranger survived"
        );
        let _ = stranger.kill();
        let _ = stranger.wait();
    }

    /// QMP `query-chardev` answered with the clock port open or not.
    fn chardevs(open: bool) -> impl Fn(&str) -> Vec<String> + Send + Sync + 'static {
        move |command| {
            match command {
            "query-chardev" => vec![format!(
                "{{\"return\": [{{\"frontend-open\": {open}, \"filename\": \"pipe\", \"label\": \"{}\"}}]}}",
                clock::CHARDEV
            )],
            _ => vec!["{\"return\": {}}".to_owned()],
        }
        }
    }

    #[tokio::test]
    async fn the_clock_is_left_to_ssh_only_while_the_guest_has_not_opened_its_port() {
        use std::io::{BufRead, Read, Write};
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = MachineDir::new("dev", tmp.path());
        let _vm = FakeVm::start(&dir);
        clock::make_pipes(dir.path()).expect("pipes");
        // QEMU's ends of the pipes.
        let held = |name| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
                .open(dir.file(name))
                .expect("pipe")
        };
        use std::os::unix::fs::OpenOptionsExt;
        let (mut requests, mut answers) = (held(clock::PIPE_IN), held(clock::PIPE_OUT));
        let driver = QemuDriver::new(tcg_options()).for_host(LINUX);

        let closed = fake::serve(&dir.file(QMP_SOCKET), chardevs(false));
        assert_eq!(
            driver.set_clock_after_resume(&dir).await,
            GuestClock::LeftToHost
        );
        assert!(closed.lock().unwrap().iter().all(|c| c == "query-chardev"));
        // Nothing was written that the guest could apply late.
        let mut pending = [0u8; 64];
        let read = requests.read(&mut pending);
        assert!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{read:?}"
        );

        std::fs::remove_file(dir.file(QMP_SOCKET)).expect("socket");
        fake::serve(&dir.file(QMP_SOCKET), chardevs(true));
        // The guest refuses: reported, not left to SSH.
        answers
            .write_all(b"error clock_settime: EPERM\n")
            .expect("answer");
        let outcome = driver.set_clock_after_resume(&dir).await;
        assert!(
            matches!(&outcome, GuestClock::NotSet { reason } if reason.contains("EPERM")),
            "{outcome:?}"
        );
        let mut line = String::new();
        std::io::BufReader::new(&mut requests)
            .read_line(&mut line)
            .expect("request");
        assert!(line.starts_with("set "), "{line}");
    }

    #[tokio::test]
    async fn graceful_stop_presses_the_power_button_and_waits() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = MachineDir::new("dev", tmp.path());
        let vm = FakeVm::start(&dir);
        let pid = vm.pid();
        // The "guest" powers off when the button is pressed.
        let log = fake::serve(&dir.file(QMP_SOCKET), move |command| {
            if command == "system_powerdown" {
                kill_and_reap(pid);
            }
            vec!["{\"return\": {}}".to_owned()]
        });
        let driver = QemuDriver::new(tcg_options()).for_host(LINUX);
        let stop = driver.stop(
            &dir,
            StopMode::Graceful {
                timeout: Duration::from_secs(5),
            },
        );
        // `vm` still owns the child: reap it concurrently so it does not linger as a zombie.
        let reaper = tokio::task::spawn_blocking(move || drop(vm));
        stop.await.expect("graceful stop");
        reaper.await.expect("reaper");
        assert_eq!(log.lock().expect("log").clone(), vec!["system_powerdown"]);
        assert!(!dir.file(PIDFILE).exists());
        assert_eq!(driver.state(&dir).await.expect("state"), VmState::Stopped);
        // Stopping a stopped machine is fine.
        driver
            .stop(&dir, StopMode::Kill)
            .await
            .expect("idempotent stop");
    }

    #[tokio::test]
    async fn graceful_stop_times_out_when_the_guest_ignores_the_button() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = MachineDir::new("dev", tmp.path());
        let _vm = FakeVm::start(&dir);
        fake::serve(&dir.file(QMP_SOCKET), qmp_status("running"));
        let driver = QemuDriver::new(tcg_options()).for_host(LINUX);
        let err = driver
            .stop(
                &dir,
                StopMode::Graceful {
                    timeout: Duration::from_millis(300),
                },
            )
            .await
            .expect_err("guest ignores ACPI");
        assert_eq!(
            err.to_string(),
            "machine \"dev\": timed out after 0s waiting for the guest to power off"
        );
        assert_eq!(driver.state(&dir).await.expect("state"), VmState::Running);
    }

    #[tokio::test]
    async fn kill_falls_back_to_sigkill_when_qmp_is_dead() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = MachineDir::new("dev", tmp.path());
        let vm = FakeVm::start(&dir);
        let driver = QemuDriver::new(tcg_options()).for_host(LINUX);
        let reaper = tokio::task::spawn_blocking(move || {
            let mut vm = vm;
            let _ = vm.0.wait();
        });
        driver.stop(&dir, StopMode::Kill).await.expect("kill");
        reaper.await.expect("reaper");
        assert_eq!(driver.state(&dir).await.expect("state"), VmState::Stopped);
    }

    fn create_argv(dir: &Path, size: &str) -> Vec<String> {
        vec![
            "qemu-img".into(),
            "create".into(),
            "-f".into(),
            "qcow2".into(),
            dir.join("disk.qcow2.tmp").to_string_lossy().into_owned(),
            size.into(),
        ]
    }

    #[tokio::test]
    async fn create_saves_ports_and_accel_then_is_idempotent() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = MachineDir::new("dev", tmp.path().join("dev"));
        let runner = Arc::new(RecordingRunner::new([(
            create_argv(dir.path(), "20000M"),
            CommandOutput::success(""),
        )]));
        let driver = QemuDriver::with_runner(tcg_options(), runner.clone()).for_host(LINUX);
        let spec = spec(tmp.path());
        // qemu-img is canned; the rename needs the file it would have written.
        std::fs::create_dir_all(dir.path()).expect("dir");
        std::fs::write(dir.file("disk.qcow2.tmp"), "qcow2").expect("disk");
        driver.create(&dir, &spec).await.expect("create");
        runner.assert_done();
        let state = QemuState::load_required(&dir).expect("qemu.json");
        assert_eq!(state.accel.accel, Accel::Tcg);
        assert_eq!(state.machine, "microvm");
        assert_ne!(state.ssh_port, state.engine_port);
        let endpoints = driver.endpoints(&dir).await.expect("endpoints");
        assert_eq!(
            endpoints.ssh.to_string(),
            format!("127.0.0.1:{}", state.ssh_port)
        );
        assert_eq!(
            endpoints.engine.to_string(),
            format!("127.0.0.1:{}", state.engine_port)
        );
        // Again: nothing runs, nothing changes.
        driver.create(&dir, &spec).await.expect("create again");
        runner.assert_done();
        assert_eq!(QemuState::load_required(&dir).expect("qemu.json"), state);
        assert_eq!(std::fs::read(dir.file(DISK)).expect("disk"), b"qcow2");
    }

    #[tokio::test]
    async fn auto_create_probes_kvm_and_records_why_it_fell_back() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = MachineDir::new("dev", tmp.path());
        let spec = spec(tmp.path());
        let runner = Arc::new(RecordingRunner::default());
        let kvm_usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if kvm_usable {
            let mut probe = vec!["qemu-system-x86_64".to_owned()];
            probe.extend(args::probe_args(
                HostArch::X86_64,
                Accel::Kvm,
                "microvm",
                &spec.boot.kernel,
            ));
            runner.expect(
                probe,
                rmachine_driver::runner::CannedReply::Output(CommandOutput::timeout("")),
            );
        }
        runner.expect(
            create_argv(dir.path(), "20000M"),
            rmachine_driver::runner::CannedReply::Output(CommandOutput::success("")),
        );
        std::fs::write(dir.file("disk.qcow2.tmp"), "qcow2").expect("disk");
        let driver =
            QemuDriver::with_runner(QemuOptions::default(), runner.clone()).for_host(LINUX);
        driver.create(&dir, &spec).await.expect("create");
        runner.assert_done();
        let choice = driver.accel_choice(&dir).expect("choice");
        assert_eq!(choice.accel, Accel::Tcg);
        assert!(
            choice
                .reason
                .starts_with("software emulation, because kvm: "),
            "{choice}"
        );
    }

    /// Runs canned commands, and when a canned `qemu-system-*` run succeeds, does what QEMU
    /// would: writes the pidfile (of a stand-in process) and serves QMP.
    struct FakeQemuRunner {
        recording: RecordingRunner,
        dir: MachineDir,
        vms: Mutex<Vec<FakeVm>>,
        /// What `query-status` answers.
        status: &'static str,
    }

    impl CommandRunner for FakeQemuRunner {
        fn run<'a>(&'a self, cmd: &'a CommandSpec) -> RunFuture<'a, CommandOutput> {
            Box::pin(async move {
                let out = self.recording.run(cmd).await?;
                // `sh` runs QEMU on a saved state.
                let qemu = cmd.program.starts_with("qemu-system") || cmd.program == "sh";
                if qemu && out.is_success() {
                    let vm = FakeVm::start(&self.dir);
                    fake::serve(&self.dir.file(QMP_SOCKET), qmp_status(self.status));
                    self.vms.lock().expect("vms").push(vm);
                }
                Ok(out)
            })
        }

        fn spawn_detached<'a>(
            &'a self,
            cmd: &'a CommandSpec,
            log: &'a Path,
        ) -> RunFuture<'a, Spawned> {
            self.recording.spawn_detached(cmd, log)
        }
    }

    fn vm_argv(dir: &MachineDir, spec: &VmSpec, state: &QemuState, accel: Accel) -> Vec<String> {
        let mut argv = vec!["qemu-system-x86_64".to_owned()];
        let tsc = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| cpuinfo_tsc_mhz(&c))
            .map(|mhz| (mhz * 1000.0).round() as u64);
        argv.extend(args::vm_args(&args::VmLaunch {
            host: LINUX,
            guest: HostArch::X86_64,
            name: "dev",
            accel,
            machine: "q35",
            cpus: 2,
            memory_mb: 1024,
            boot: &spec.boot,
            iso: None,
            firmware: None,
            tsc_khz: tsc,
            disk: &dir.file(DISK),
            config_drive: &spec.config_drive,
            ssh_port: state.ssh_port,
            engine_port: state.engine_port,
            guest_ports: GuestPorts::default(),
            shares: &spec.shares,
            virtiofs_sockets: &[],
            clock_pipe: Some(&dir.file(clock::PIPE)),
            console_log: &dir.file(CONSOLE_LOG),
            pidfile: &dir.file(PIDFILE),
            qmp: &QmpEndpoint::Unix(dir.file(QMP_SOCKET)),
            // Outside a store: no boot snapshots.
            boot_snapshot: false,
        }));
        argv
    }

    fn created_machine(tmp: &Path, accel: Accel) -> (MachineDir, VmSpec, QemuState) {
        let dir = MachineDir::new("dev", tmp.join("dev"));
        std::fs::create_dir_all(dir.path()).expect("dir");
        let spec = spec(tmp);
        for file in [&spec.boot.kernel, &spec.boot.initrd, &spec.config_drive] {
            std::fs::write(file, "x").expect("boot file");
        }
        let ports = saved::free_ports(2).expect("ports");
        let state = QemuState {
            ssh_port: ports[0],
            engine_port: ports[1],
            qmp_port: None,
            accel: AccelChoice {
                accel,
                reason: "test".into(),
            },
            machine: "q35".into(),
        };
        state.save(&dir).expect("save");
        (dir, spec, state)
    }

    #[tokio::test]
    async fn start_falls_back_to_tcg_when_kvm_makes_qemu_fail() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (dir, spec, state) = created_machine(tmp.path(), Accel::Kvm);
        let abort = "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n";
        let runner = Arc::new(FakeQemuRunner {
            recording: RecordingRunner::new([
                (
                    vm_argv(&dir, &spec, &state, Accel::Kvm),
                    CommandOutput::failure(1, abort),
                ),
                (
                    vm_argv(&dir, &spec, &state, Accel::Tcg),
                    CommandOutput::success(""),
                ),
            ]),
            dir: dir.clone(),
            vms: Mutex::default(),
            status: "running",
        });
        let driver =
            QemuDriver::with_runner(QemuOptions::default(), runner.clone()).for_host(LINUX);
        driver.start(&dir, &spec).await.expect("start");
        runner.recording.assert_done();
        let choice = driver.accel_choice(&dir).expect("choice");
        assert_eq!(choice.accel, Accel::Tcg);
        assert_eq!(
            choice.reason,
            "software emulation, because QEMU failed to start with kvm: qemu-system-x86_64 \
             failed (exit status 1): qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69"
        );
        assert_eq!(driver.state(&dir).await.expect("state"), VmState::Running);
        // Already running: start does nothing.
        driver.start(&dir, &spec).await.expect("start again");
        runner.recording.assert_done();
    }

    #[tokio::test]
    async fn a_fixed_accelerator_does_not_fall_back() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (dir, spec, state) = created_machine(tmp.path(), Accel::Kvm);
        let runner = Arc::new(FakeQemuRunner {
            recording: RecordingRunner::new([(
                vm_argv(&dir, &spec, &state, Accel::Kvm),
                CommandOutput::failure(1, "kvm broken\n"),
            )]),
            dir: dir.clone(),
            vms: Mutex::default(),
            status: "running",
        });
        let options = QemuOptions {
            accel: AccelOption::Kvm,
            ..QemuOptions::default()
        };
        let driver = QemuDriver::with_runner(options, runner.clone()).for_host(LINUX);
        let err = driver.start(&dir, &spec).await.expect_err("kvm fails");
        assert_eq!(
            err.to_string(),
            "qemu-system-x86_64 failed (exit status 1): kvm broken"
        );
        assert_eq!(
            std::fs::read_to_string(dir.file(QEMU_LOG)).expect("qemu.log"),
            "kvm broken\n"
        );
        runner.recording.assert_done();
        assert_eq!(driver.accel_choice(&dir).expect("choice").accel, Accel::Kvm);
    }

    #[tokio::test]
    async fn start_refuses_a_failed_vm_that_still_runs() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (dir, spec, _) = created_machine(tmp.path(), Accel::Tcg);
        let _vm = FakeVm::start(&dir);
        fake::serve(&dir.file(QMP_SOCKET), qmp_status("guest-panicked"));
        let driver = QemuDriver::with_runner(tcg_options(), Arc::new(RecordingRunner::default()))
            .for_host(LINUX);
        let err = driver.start(&dir, &spec).await.expect_err("still running");
        assert_eq!(
            err.to_string(),
            "machine \"dev\" is Error, start needs it stopped (`rmachine kill` stops it)"
        );
        assert!(dir.file(PIDFILE).exists());
    }

    #[tokio::test]
    async fn start_moves_a_forward_whose_port_was_taken() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (dir, spec, state) = created_machine(tmp.path(), Accel::Tcg);
        let _squatter =
            std::net::TcpListener::bind(("127.0.0.1", state.ssh_port)).expect("take port");
        // The new port is unknown in advance: check the saved state after the run instead.
        let driver = QemuDriver::with_runner(tcg_options(), Arc::new(RecordingRunner::default()))
            .for_host(LINUX);
        let err = driver.start(&dir, &spec).await.expect_err("nothing canned");
        assert!(err.to_string().contains("recording runner"), "{err}");
        let saved = QemuState::load_required(&dir).expect("qemu.json");
        assert_ne!(saved.ssh_port, state.ssh_port);
        assert_eq!(saved.engine_port, state.engine_port);
    }

    fn write_saved_state(dir: &MachineDir, len: usize, recorded_len: u64) {
        std::fs::write(dir.file(resume::STATE), vec![0u8; len]).expect("state");
        SavedVm {
            qemu_version: QEMU_7_2.into(),
            qemu_binary: None,
            argv: Vec::new(),
            tsc_khz: None,
            boot_files: Vec::new(),
            state_len: recorded_len,
            state_sha256: None,
            data_disk: resume::FileStamp {
                path: dir.file(DISK),
                len: 0,
                modified_ns: 0,
            },
        }
        .save(dir)
        .expect("record");
    }

    const QEMU_7_2: &str = "QEMU emulator version 7.2.0";

    /// The canned answer to `qemu-system-x86_64 --version`: QEMU 7.2.0.
    fn qemu_7_2_version() -> (Vec<String>, CommandOutput) {
        (
            vec!["qemu-system-x86_64".to_owned(), "--version".to_owned()],
            CommandOutput::success(format!("{QEMU_7_2}\n")),
        )
    }

    /// Records a saved state of 20 bytes that QEMU 7.2.0 made running `argv`, with the
    /// machine's boot files and data disk as they are now (it fits, unless `argv` differs).
    fn record_fitting_state(dir: &MachineDir, spec: &VmSpec, argv: Vec<String>) {
        std::fs::write(dir.file(resume::STATE), vec![0u8; 20]).expect("state");
        SavedVm {
            qemu_version: QEMU_7_2.into(),
            qemu_binary: None,
            argv,
            tsc_khz: None,
            boot_files: resume::boot_stamps(spec).expect("stamps"),
            state_len: 20,
            state_sha256: None,
            data_disk: resume::FileStamp::of(&dir.file(DISK)).expect("stamp"),
        }
        .save(dir)
        .expect("record");
    }

    /// A created TCG machine with a data disk, a driver whose runner answers only `--version`
    /// (QEMU 7.2.0), and the command line that driver starts the machine with.
    fn machine_and_its_argv(tmp: &Path) -> (MachineDir, VmSpec, QemuDriver, Vec<String>) {
        let (dir, spec, state) = created_machine(tmp, Accel::Tcg);
        std::fs::write(dir.file(DISK), "qcow2").expect("disk");
        let driver = QemuDriver::with_runner(
            tcg_options(),
            Arc::new(RecordingRunner::new([qemu_7_2_version()])),
        )
        .for_host(LINUX);
        let qmp = driver.launch_qmp(&dir, &state).expect("qmp");
        let argv = driver.vm_argv(&dir, &spec, &state, None, &[], &qmp);
        (dir, spec, driver, argv)
    }

    #[tokio::test]
    async fn a_state_that_fits_is_kept_when_qemu_cannot_start_on_it() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (dir, spec, driver, argv) = machine_and_its_argv(tmp.path());
        record_fitting_state(&dir, &spec, argv);
        // QEMU does not start (nothing canned for it): not the state's fault.
        let err = driver.resume(&dir, &spec).await.expect_err("no QEMU");
        assert!(err.to_string().contains("recording runner"), "{err}");
        assert!(dir.file(resume::STATE).exists() && dir.file(resume::META).exists());
        assert_eq!(driver.state(&dir).await.expect("state"), VmState::Saved);
    }

    #[tokio::test]
    async fn a_resume_that_fails_after_qemu_started_kills_it_and_keeps_the_state() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (dir, spec, state) = created_machine(tmp.path(), Accel::Tcg);
        std::fs::write(dir.file(DISK), "qcow2").expect("disk");
        // The spent name is taken by a directory: the rename after the load fails.
        std::fs::create_dir(dir.file(resume::STATE_SPENT)).expect("dir");
        std::fs::write(dir.file(resume::STATE_SPENT).join("x"), "x").expect("file");
        let probe = QemuDriver::with_runner(tcg_options(), Arc::new(RecordingRunner::default()))
            .for_host(LINUX);
        let qmp = probe.launch_qmp(&dir, &state).expect("qmp");
        let argv = probe.vm_argv(&dir, &spec, &state, None, &[], &qmp);
        let mut restore = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            resume::incoming_script(),
            "qemu-system-x86_64".to_owned(),
        ];
        restore.extend(argv.iter().cloned());
        restore.extend(resume::incoming_args());
        let runner = Arc::new(FakeQemuRunner {
            recording: RecordingRunner::new([
                qemu_7_2_version(),
                (restore, CommandOutput::success("")),
            ]),
            dir: dir.clone(),
            vms: Mutex::default(),
            status: "paused",
        });
        let driver = QemuDriver::with_runner(tcg_options(), runner.clone()).for_host(LINUX);
        record_fitting_state(&dir, &spec, argv);
        let err = driver.resume(&dir, &spec).await.expect_err("rename fails");
        assert!(err.to_string().contains("vmstate.bin"), "{err}");
        // The last stand-in is the restore's (`--version` started one too).
        let pid = runner
            .vms
            .lock()
            .expect("vms")
            .last()
            .map(FakeVm::pid)
            .expect("a stand-in");
        assert!(
            !process::is_alive(runner.as_ref(), pid, &dir.file(PIDFILE)).await,
            "the paused QEMU is killed"
        );
        assert!(dir.file(resume::STATE).exists() && dir.file(resume::META).exists());
        assert_eq!(driver.state(&dir).await.expect("state"), VmState::Saved);
    }

    #[tokio::test]
    async fn a_state_is_discarded_when_the_data_disk_was_written_after_it() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (dir, spec, _) = created_machine(tmp.path(), Accel::Tcg);
        std::fs::write(dir.file(DISK), "qcow2 written by a cold boot").expect("disk");
        write_saved_state(&dir, 20, 20);
        let driver = QemuDriver::with_runner(
            tcg_options(),
            Arc::new(RecordingRunner::new([qemu_7_2_version()])),
        )
        .for_host(LINUX);
        match driver.resume(&dir, &spec).await.expect("resume") {
            Resume::Discarded { reason } => {
                assert!(
                    reason.contains("data disk") && reason.contains("written since"),
                    "{reason}"
                )
            }
            other => panic!("a state older than the disk was used: {other:?}"),
        }
        assert!(!resume::exists(&dir));
    }

    /// A state saved by an rmachine from before the free page reporting balloon (its command
    /// line ends its devices with the entropy source) does not fit the device set QEMU now
    /// gets: the resume is refused with the first difference and the machine boots afresh.
    #[tokio::test]
    async fn a_state_saved_without_the_balloon_is_discarded_naming_it() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (dir, spec, driver, mut before) = machine_and_its_argv(tmp.path());
        let balloon = before
            .iter()
            .position(|a| a.starts_with("virtio-balloon"))
            .expect("the balloon is on the command line");
        before.drain(balloon - 1..=balloon);
        record_fitting_state(&dir, &spec, before);
        match driver.resume(&dir, &spec).await.expect("resume") {
            Resume::Discarded { reason } => assert!(
                reason.contains("command line the machine runs changed")
                    && reason.contains("→ `-device virtio-balloon-pci,free-page-reporting=on`"),
                "{reason}"
            ),
            other => panic!("a state without the balloon was used: {other:?}"),
        }
        assert!(!resume::exists(&dir), "the unfit state is removed");
        assert_eq!(driver.state(&dir).await.expect("state"), VmState::Stopped);
    }

    #[tokio::test]
    async fn a_truncated_saved_state_is_removed_and_the_machine_boots_afresh() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (dir, spec, _) = created_machine(tmp.path(), Accel::Tcg);
        let driver = QemuDriver::with_runner(tcg_options(), Arc::new(RecordingRunner::default()))
            .for_host(LINUX);
        assert_eq!(
            driver.resume(&dir, &spec).await.expect("resume"),
            Resume::NoSavedState
        );
        write_saved_state(&dir, 10, 20);
        assert_eq!(driver.state(&dir).await.expect("state"), VmState::Saved);
        match driver.resume(&dir, &spec).await.expect("resume") {
            Resume::Discarded { reason } => {
                assert!(reason.contains("10 bytes where 20"), "{reason}")
            }
            other => panic!("a truncated state was used: {other:?}"),
        }
        assert!(!resume::exists(&dir), "the bad state is removed");
        assert_eq!(driver.state(&dir).await.expect("state"), VmState::Stopped);
    }

    #[tokio::test]
    async fn a_cold_start_discards_a_saved_state() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (dir, spec, _) = created_machine(tmp.path(), Accel::Tcg);
        write_saved_state(&dir, 20, 20);
        let driver = QemuDriver::with_runner(tcg_options(), Arc::new(RecordingRunner::default()))
            .for_host(LINUX);
        // The recording runner runs no QEMU; the state must be gone before QEMU is asked to.
        let err = driver.start(&dir, &spec).await.expect_err("nothing canned");
        assert!(err.to_string().contains("recording runner"), "{err}");
        assert!(!resume::exists(&dir), "a boot without the state removes it");
    }

    #[tokio::test]
    async fn save_refuses_a_machine_with_shares_naming_the_share() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (dir, mut spec, _) = created_machine(tmp.path(), Accel::Tcg);
        spec.shares.push(rmachine_driver::Share {
            tag: "share0".into(),
            host_path: "/home/me".into(),
            guest_path: "/home/me".into(),
            read_only: false,
            transport: ShareTransport::NineP,
        });
        let driver = QemuDriver::with_runner(tcg_options(), Arc::new(RecordingRunner::default()))
            .for_host(LINUX);
        let err = driver.save(&dir, &spec).await.expect_err("refused");
        assert!(err.to_string().contains("/home/me"), "{err}");
        assert!(!resume::exists(&dir));
    }

    #[tokio::test]
    async fn start_needs_the_boot_files() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (dir, spec, _) = created_machine(tmp.path(), Accel::Tcg);
        std::fs::remove_file(&spec.config_drive).expect("rm");
        let driver = QemuDriver::with_runner(tcg_options(), Arc::new(RecordingRunner::default()))
            .for_host(LINUX);
        let err = driver.start(&dir, &spec).await.expect_err("missing");
        assert_eq!(
            err.to_string(),
            format!(
                "configuration drive {} does not exist",
                spec.config_drive.display()
            )
        );
    }

    #[tokio::test]
    async fn a_socket_path_too_long_is_refused_with_advice() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let deep = tmp.path().join("d".repeat(100));
        std::fs::create_dir_all(&deep).expect("deep dir");
        let (dir, spec, _) = created_machine(&deep, Accel::Tcg);
        let driver = QemuDriver::with_runner(tcg_options(), Arc::new(RecordingRunner::default()))
            .for_host(LINUX);
        let err = driver.start(&dir, &spec).await.expect_err("too long");
        assert_eq!(
            error_chain(&err),
            format!(
                "machine \"dev\": cannot access {}: path longer than the 107 bytes a unix \
                 socket allows: use a shorter --storage-path",
                dir.file(QMP_SOCKET).display()
            )
        );
    }

    #[tokio::test]
    async fn iso_boot_needs_a_pc_machine_and_an_iso() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut spec = spec(tmp.path());
        let versions = || {
            Arc::new(RecordingRunner::new([
                (
                    vec!["qemu-system-x86_64", "--version"],
                    CommandOutput::success("QEMU emulator version 7.2.22\n"),
                ),
                (
                    vec!["qemu-img", "--version"],
                    CommandOutput::success("qemu-img version 7.2.22\n"),
                ),
            ]))
        };
        let iso_options = |machine: Option<&str>| QemuOptions {
            boot_iso: true,
            machine: machine.map(str::to_owned),
            ..QemuOptions::default()
        };
        let err = QemuDriver::with_runner(iso_options(Some("microvm")), versions())
            .for_host(LINUX)
            .precheck(&spec)
            .await
            .expect_err("microvm has no CD drive");
        assert_eq!(
            err.to_string(),
            "invalid qemu options: --qemu-boot-iso needs a pc or q35 machine, not --qemu-machine microvm"
        );
        let driver = QemuDriver::with_runner(iso_options(None), versions()).for_host(LINUX);
        assert_eq!(driver.machine_type(), "q35");
        let err = driver.precheck(&spec).await.expect_err("no iso");
        assert!(
            err.to_string().contains("rebuild it with guest/build.sh"),
            "{err}"
        );
        spec.boot.iso = Some(tmp.path().join("rmachine.iso"));
        let err = QemuDriver::with_runner(iso_options(None), versions())
            .for_host(LINUX)
            .precheck(&spec)
            .await
            .expect_err("iso missing");
        assert!(err.to_string().starts_with("bootable guest ISO"), "{err}");
    }

    #[tokio::test]
    async fn precheck_names_what_to_install() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let spec = spec(tmp.path());
        let runner = Arc::new(RecordingRunner::default());
        runner.expect(
            ["qemu-system-x86_64", "--version"],
            rmachine_driver::runner::CannedReply::Missing,
        );
        let driver =
            QemuDriver::with_runner(QemuOptions::default(), runner.clone()).for_host(LINUX);
        let err = driver.precheck(&spec).await.expect_err("missing qemu");
        assert_eq!(
            err.to_string(),
            "qemu-system-x86_64 not found: install qemu-system-x86 (Debian/Ubuntu: `apt-get \
             install qemu-system-x86`), `brew install qemu` (macOS), or pass --qemu-program"
        );
        let runner = Arc::new(RecordingRunner::new([
            (
                vec!["qemu-system-x86_64", "--version"],
                CommandOutput::success("QEMU emulator version 7.2.22\n"),
            ),
            (
                vec!["qemu-img", "--version"],
                CommandOutput::success("qemu-img version 7.2.22\n"),
            ),
        ]));
        let driver =
            QemuDriver::with_runner(QemuOptions::default(), runner.clone()).for_host(LINUX);
        let err = driver.precheck(&spec).await.expect_err("no kernel");
        assert_eq!(
            err.to_string(),
            format!("guest kernel {} does not exist", spec.boot.kernel.display())
        );
        runner.assert_done();
        let options = QemuOptions {
            accel: AccelOption::Whpx,
            ..QemuOptions::default()
        };
        let err = QemuDriver::with_runner(options, Arc::new(RecordingRunner::default()))
            .for_host(LINUX)
            .precheck(&spec)
            .await
            .expect_err("whpx on linux");
        assert_eq!(
            err.to_string(),
            "invalid qemu options: --qemu-accel whpx is not available on this host (choose \
             auto, kvm or tcg)"
        );
    }

    #[tokio::test]
    async fn an_aarch64_guest_on_an_x86_64_host_runs_qemu_system_aarch64_under_tcg() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = MachineDir::new("arm", tmp.path().join("arm"));
        let options = QemuOptions {
            arch: Some(HostArch::Aarch64),
            ..QemuOptions::default()
        };
        // No probe may run: kvm cannot run an aarch64 guest here.
        let runner = Arc::new(RecordingRunner::new([(
            create_argv(dir.path(), "20000M"),
            CommandOutput::success(""),
        )]));
        let driver = QemuDriver::with_runner(options, runner.clone()).for_host(LINUX);
        assert_eq!(driver.program(), "qemu-system-aarch64");
        assert_eq!(driver.machine_type(), "virt");
        let mut spec = spec(tmp.path());
        spec.boot.arch = "aarch64".into();
        std::fs::create_dir_all(dir.path()).expect("dir");
        std::fs::write(dir.file("disk.qcow2.tmp"), "qcow2").expect("disk");
        driver.create(&dir, &spec).await.expect("create");
        runner.assert_done();
        let state = QemuState::load_required(&dir).expect("qemu.json");
        assert_eq!(
            state.accel.to_string(),
            "tcg (software emulation: the guest is aarch64, the host x86_64)"
        );
        assert_eq!(state.machine, "virt");
    }

    #[tokio::test]
    async fn a_guest_image_of_another_architecture_is_refused() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut spec = spec(tmp.path());
        spec.boot.arch = "aarch64".into();
        let driver =
            QemuDriver::with_runner(QemuOptions::default(), Arc::new(RecordingRunner::default()))
                .for_host(LINUX);
        let err = driver.precheck(&spec).await.expect_err("arm image, x86 vm");
        assert_eq!(
            err.to_string(),
            format!(
                "invalid qemu options: the guest image {} is built for aarch64 but the VM is \
                 x86_64, the host's architecture: pass --qemu-arch aarch64 (software emulation \
                 on this x86_64 host) or a x86_64 image with --guest-image",
                tmp.path().display()
            )
        );
        // start checks too: `upgrade` may have switched the image of a created machine.
        for file in ["vmlinuz", "initrd.img", "config.img"] {
            std::fs::write(tmp.path().join(file), "x").expect("boot file");
        }
        let dir = MachineDir::new("dev", tmp.path().join("dev"));
        let err = driver.start(&dir, &spec).await.expect_err("start");
        assert!(matches!(err, DriverError::InvalidOptions { .. }), "{err}");

        spec.boot.arch = "riscv64".into();
        let options = QemuOptions {
            arch: Some(HostArch::Aarch64),
            accel: AccelOption::Kvm,
            ..QemuOptions::default()
        };
        let driver =
            QemuDriver::with_runner(options, Arc::new(RecordingRunner::default())).for_host(LINUX);
        let err = driver.precheck(&spec).await.expect_err("kvm for arm");
        assert_eq!(
            err.to_string(),
            "invalid qemu options: --qemu-accel kvm cannot run this aarch64 guest: a \
             hypervisor runs guests of the host's architecture (x86_64) only; use auto or tcg"
        );
        let options = QemuOptions {
            arch: Some(HostArch::Aarch64),
            ..QemuOptions::default()
        };
        let driver =
            QemuDriver::with_runner(options, Arc::new(RecordingRunner::default())).for_host(LINUX);
        let err = driver.precheck(&spec).await.expect_err("riscv image");
        assert_eq!(
            err.to_string(),
            format!(
                "invalid qemu options: the guest image {} is built for \"riscv64\", which the \
                 qemu driver does not run (x86_64 or aarch64)",
                tmp.path().display()
            )
        );
    }

    #[tokio::test]
    async fn remove_deletes_only_driver_files_and_is_idempotent() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = MachineDir::new("dev", tmp.path());
        for name in OWN_FILES {
            std::fs::write(dir.file(name), "x").expect("file");
        }
        for name in ["config.json", "config.img", "key.pem", "id_ed25519"] {
            std::fs::write(dir.file(name), "keep").expect("host file");
        }
        let driver = QemuDriver::with_runner(tcg_options(), Arc::new(RecordingRunner::default()))
            .for_host(LINUX);
        driver.remove(&dir).await.expect("remove");
        driver.remove(&dir).await.expect("remove again");
        let mut left: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec!["config.img", "config.json", "id_ed25519", "key.pem"]
        );
        // A directory that never existed is already removed.
        let gone = MachineDir::new("gone", tmp.path().join("gone"));
        driver.remove(&gone).await.expect("remove missing");
    }

    #[test]
    fn options_parse_from_flags_and_serialize_with_prefixed_keys() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            qemu: QemuOptions,
        }
        let cli = Cli::parse_from([
            "x",
            "--qemu-accel",
            "tcg",
            "--qemu-machine",
            "microvm",
            "--qemu-arch",
            "arm64",
            "--qemu-share-transport",
            "9p",
            "--qemu-boot-snapshot",
            "off",
        ]);
        assert_eq!(cli.qemu.accel, AccelOption::Tcg);
        assert_eq!(cli.qemu.boot_snapshot, BootSnapshotOption::Off);
        assert_eq!(cli.qemu.machine.as_deref(), Some("microvm"));
        assert_eq!(cli.qemu.arch, Some(HostArch::Aarch64));
        assert_eq!(cli.qemu.share_transport, ShareTransportOption::NineP);
        let json = serde_json::to_value(&cli.qemu).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "qemuAccel": "tcg",
                "qemuMachine": "microvm",
                "qemuArch": "aarch64",
                "qemuShareTransport": "9p",
                "qemuBootSnapshot": "off"
            })
        );
        // Machines created before the option start from snapshots.
        let older: QemuOptions =
            serde_json::from_value(serde_json::json!({ "qemuAccel": "tcg" })).expect("older");
        assert_eq!(older.boot_snapshot, BootSnapshotOption::On);
        let amd64 = Cli::parse_from(["x", "--qemu-arch", "amd64"]);
        assert_eq!(amd64.qemu.arch, Some(HostArch::X86_64));
        assert!(Cli::try_parse_from(["x", "--qemu-arch", "riscv64"]).is_err());
        // 9p turns virtio-fs off whatever the host has installed.
        let driver =
            QemuDriver::with_runner(cli.qemu.clone(), Arc::new(RecordingRunner::default()))
                .for_host(LINUX);
        assert!(!driver.info().capabilities.virtio_fs);
        assert!(driver.info().capabilities.shares);
        // sftp: no device at all, the host serves every share over SSH.
        let sftp = Cli::parse_from(["x", "--qemu-share-transport", "sftp"]);
        let driver = QemuDriver::with_runner(sftp.qemu, Arc::new(RecordingRunner::default()))
            .for_host(LINUX);
        let caps = driver.info().capabilities;
        assert!(
            !caps.shares && !caps.virtio_fs && caps.sftp_shares,
            "{caps:?}"
        );
        let back: QemuOptions = serde_json::from_value(json).expect("back");
        assert_eq!(back, cli.qemu);
        let empty: QemuOptions = serde_json::from_str("{}").expect("defaults");
        assert_eq!(empty, QemuOptions::default());
    }

    #[test]
    fn only_an_x86_64_microvm_boots_the_fast_boot_files() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            qemu: QemuOptions,
        }
        let fast = |args: &[&str], host: HostPlatform| {
            let cli = Cli::parse_from([&["x"], args].concat());
            QemuDriver::with_runner(cli.qemu, Arc::new(RecordingRunner::default()))
                .for_host(host)
                .info()
                .capabilities
                .fast_boot_files
        };
        assert!(fast(&[], LINUX));
        assert!(fast(&["--qemu-machine", "microvm,pit=off"], LINUX));
        assert!(!fast(&["--qemu-machine", "q35"], LINUX));
        assert!(!fast(&["--qemu-boot-iso"], LINUX));
        assert!(!fast(&["--qemu-arch", "aarch64"], LINUX));
        let mac = HostPlatform {
            os: HostOs::MacOs,
            arch: HostArch::X86_64,
        };
        assert!(!fast(&[], mac), "q35 is the default there");
    }

    #[test]
    fn a_created_machine_boots_the_fast_boot_files_by_its_recorded_machine_type() {
        let tmp = tempfile::tempdir().expect("temp dir");
        // created_machine records q35.
        let (dir, _, mut state) = created_machine(tmp.path(), Accel::Tcg);
        let driver = QemuDriver::with_runner(tcg_options(), Arc::new(RecordingRunner::default()))
            .for_host(LINUX);
        assert!(
            driver.info().capabilities.fast_boot_files,
            "a new machine: microvm"
        );
        assert!(!driver.machine_boots_fast_boot_files(&dir));
        state.machine = "microvm".into();
        state.save(&dir).expect("save");
        let q35 = QemuDriver::with_runner(
            QemuOptions {
                machine: Some("q35".into()),
                ..tcg_options()
            },
            Arc::new(RecordingRunner::default()),
        )
        .for_host(LINUX);
        assert!(q35.machine_boots_fast_boot_files(&dir));
        let new = MachineDir::new("new", tmp.path().join("new"));
        assert!(
            !q35.machine_boots_fast_boot_files(&new),
            "not created: the options decide"
        );
    }

    #[test]
    fn cpuinfo_mhz_is_the_tsc_rate_only_with_tsc_known_freq() {
        assert_eq!(
            cpuinfo_tsc_mhz(
                "processor\t: 0\ncpu MHz\t\t: 2445.432\nflags\t\t: fpu tsc constant_tsc tsc_known_freq\n"
            ),
            Some(2445.432)
        );
        // Bare metal with cpufreq: "cpu MHz" is the current core frequency.
        assert_eq!(
            cpuinfo_tsc_mhz(
                "processor\t: 0\ncpu MHz\t\t: 1197.000\nflags\t\t: fpu tsc constant_tsc\n"
            ),
            None
        );
        assert_eq!(cpuinfo_tsc_mhz("nothing"), None);
    }

    /// Whether `program` runs here; VM tests skip (saying so) when it does not.
    fn have(program: &str) -> bool {
        std::process::Command::new(program)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn real_qemu_state_and_kill() {
        if !have("qemu-system-x86_64") {
            eprintln!("skipping: qemu-system-x86_64 is not installed");
            return;
        }
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = MachineDir::new("real", tmp.path());
        let driver = QemuDriver::new(tcg_options()).for_host(LINUX);
        // No kernel: the VM sits in its firmware, which is enough for pidfile, QMP and stop.
        let qmp = QmpEndpoint::Unix(dir.file(QMP_SOCKET));
        let started = Instant::now();
        let out = std::process::Command::new("qemu-system-x86_64")
            .args([
                "-name",
                "real",
                "-machine",
                "q35",
                "-accel",
                "tcg",
                "-nodefaults",
            ])
            .args([
                "-no-user-config",
                "-display",
                "none",
                "-qmp",
                &qmp.qemu_arg(),
            ])
            .arg("-pidfile")
            .arg(dir.file(PIDFILE))
            .arg("-daemonize")
            .output()
            .expect("run qemu");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut state = driver.state(&dir).await.expect("state");
        while state == VmState::Starting && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(POLL).await;
            state = driver.state(&dir).await.expect("state");
        }
        eprintln!(
            "QEMU daemonized and answered QMP in {:?}",
            started.elapsed()
        );
        assert_eq!(state, VmState::Running);
        let pid = process::read_pidfile(&dir.file(PIDFILE))
            .expect("pidfile")
            .expect("pid");
        driver.stop(&dir, StopMode::Kill).await.expect("kill");
        assert_eq!(driver.state(&dir).await.expect("state"), VmState::Stopped);
        assert!(!process::is_alive(&TokioRunner, pid, &dir.file(PIDFILE)).await);
        driver.remove(&dir).await.expect("remove");
        let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("dir").collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    /// The whole driver against real QEMU and a real kernel (about 4 s). Unit tests boot no
    /// VM unless asked: set `RMACHINE_TEST_KERNEL` to any bootable x86-64 kernel, e.g.
    /// `guest/out/vmlinuz`.
    #[tokio::test]
    async fn real_qemu_full_lifecycle() {
        let Some(kernel) = std::env::var_os("RMACHINE_TEST_KERNEL").map(PathBuf::from) else {
            eprintln!("skipping: set RMACHINE_TEST_KERNEL to a kernel to boot a VM");
            return;
        };
        if !have("qemu-system-x86_64") || !have("qemu-img") {
            eprintln!("skipping: qemu-system-x86_64 or qemu-img is not installed");
            return;
        }
        for machine in ["q35", "microvm"] {
            lifecycle(&kernel, machine).await;
        }
    }

    async fn lifecycle(kernel: &Path, machine: &str) {
        eprintln!("machine type {machine}:");
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = MachineDir::new("life", tmp.path().join("life"));
        let initrd = tmp.path().join("initrd.img");
        let config = tmp.path().join("config.img");
        std::fs::write(&initrd, b"").expect("initrd");
        std::fs::write(&config, vec![0u8; 1 << 20]).expect("config drive");
        let spec = VmSpec {
            cpus: 1,
            memory_mb: 256,
            disk_size_mb: 64,
            boot: BootImage {
                kernel: kernel.to_owned(),
                initrd,
                cmdline: "console=ttyS0".into(),
                arch: "x86_64".into(),
                iso: None,
                kernel_elf: None,
                initrd_uncompressed: None,
                features: Vec::new(),
            },
            config_drive: config,
            guest_ports: GuestPorts::default(),
            shares: Vec::new(),
        };
        let driver = QemuDriver::new(QemuOptions {
            machine: Some(machine.to_owned()),
            ..QemuOptions::default()
        });
        driver.precheck(&spec).await.expect("precheck");
        let created = Instant::now();
        driver.create(&dir, &spec).await.expect("create");
        let choice = driver.accel_choice(&dir).expect("choice");
        eprintln!("create took {:?}; accelerator: {choice}", created.elapsed());
        let started = Instant::now();
        driver.start(&dir, &spec).await.expect("start");
        eprintln!(
            "start (QEMU up, QMP answering) took {:?}",
            started.elapsed()
        );
        assert_eq!(driver.state(&dir).await.expect("state"), VmState::Running);
        let endpoints = driver.endpoints(&dir).await.expect("endpoints");
        assert!(endpoints.ssh.ip().is_loopback());
        // QEMU listens on the forwarded ports, on loopback only.
        assert!(std::net::TcpStream::connect(endpoints.engine).is_ok());
        // Wait for the kernel to write to the serial console.
        let console = dir.file(CONSOLE_LOG);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&console)
            .unwrap_or_default()
            .contains("Linux version")
        {
            assert!(Instant::now() < deadline, "no kernel output on console.log");
            tokio::time::sleep(POLL).await;
        }
        eprintln!(
            "kernel banner on console.log {:?} after start",
            started.elapsed()
        );
        driver.stop(&dir, StopMode::Kill).await.expect("kill");
        assert_eq!(driver.state(&dir).await.expect("state"), VmState::Stopped);
        driver.start(&dir, &spec).await.expect("restart");
        assert_eq!(driver.state(&dir).await.expect("state"), VmState::Running);
        driver.remove(&dir).await.expect("remove");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

/// Experiments against the real guest image (`guest/out/`), run by hand:
/// `cargo test -p rmachine-driver-qemu guest_image -- --ignored --nocapture`. Ignored by default
/// because their outcome depends on the guest's PID 1, not on this driver.
#[cfg(all(test, target_os = "linux"))]
mod guest_image_tests {
    use std::path::PathBuf;

    use rmachine_driver::{BootImage, GuestPorts};

    use super::*;

    async fn graceful_stop_of_the_real_guest(machine: &str) {
        let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../guest/out");
        let manifest: serde_json::Value = match std::fs::read(out.join("manifest.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).expect("manifest json"),
            Err(_) => {
                eprintln!("skipping: no guest/out/manifest.json");
                return;
            }
        };
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = MachineDir::new("guest", tmp.path().join("guest"));
        let config = tmp.path().join("config.img");
        std::fs::write(&config, vec![0u8; 1 << 20]).expect("config drive");
        let spec = VmSpec {
            cpus: 2,
            memory_mb: 1024,
            disk_size_mb: 1024,
            boot: BootImage {
                kernel: out.join(manifest["kernel"].as_str().expect("kernel")),
                initrd: out.join(manifest["initrd"].as_str().expect("initrd")),
                cmdline: manifest["cmdline"].as_str().expect("cmdline").to_owned(),
                arch: manifest["arch"].as_str().unwrap_or_default().to_owned(),
                iso: None,
                kernel_elf: None,
                initrd_uncompressed: None,
                features: Vec::new(),
            },
            config_drive: config,
            guest_ports: GuestPorts::default(),
            shares: Vec::new(),
        };
        let driver = QemuDriver::new(QemuOptions {
            machine: Some(machine.to_owned()),
            ..QemuOptions::default()
        });
        driver.create(&dir, &spec).await.expect("create");
        let started = Instant::now();
        driver.start(&dir, &spec).await.expect("start");
        eprintln!("{machine}: start returned after {:?}", started.elapsed());
        // Let the guest's PID 1 come up before pressing the button.
        tokio::time::sleep(Duration::from_secs(8)).await;
        let pressed = Instant::now();
        let result = driver
            .stop(
                &dir,
                StopMode::Graceful {
                    timeout: Duration::from_secs(30),
                },
            )
            .await;
        eprintln!(
            "{machine}: graceful stop: {result:?} after {:?}",
            pressed.elapsed()
        );
        let console = std::fs::read_to_string(dir.file(CONSOLE_LOG)).unwrap_or_default();
        eprintln!("--- console.log (last 40 lines) ---");
        for line in console
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            eprintln!("{line}");
        }
        driver.remove(&dir).await.expect("remove");
        result.expect("graceful stop");
    }

    #[tokio::test]
    #[ignore = "depends on the guest image's PID 1; run by hand"]
    async fn guest_image_graceful_stop_q35() {
        graceful_stop_of_the_real_guest("q35").await;
    }

    #[tokio::test]
    #[ignore = "depends on the guest image's PID 1; run by hand"]
    async fn guest_image_graceful_stop_microvm() {
        graceful_stop_of_the_real_guest("microvm").await;
    }
}
