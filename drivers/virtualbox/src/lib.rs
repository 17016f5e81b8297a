//! The VirtualBox driver: a VM defined and run through `VBoxManage`.
//!
//! `create` registers a VM named after the machine with its files under the machine directory
//! (`createvm --basefolder`), sets CPUs, memory and a virtio NAT card whose two port forwards
//! (127.0.0.1 only) reach the guest's SSH and engine ports, and attaches to one SATA (AHCI)
//! controller the guest ISO (DVD, port 0), the data disk `disk.vdi` (port 1) and the
//! configuration drive as a fixed VHD `config.vhd` (port 2; VirtualBox attaches no raw image).
//! The serial port writes the guest console to `console.log`. `start` re-copies the
//! configuration drive (the host rewrites `config.img` before every start) and runs the VM
//! headless; `state` reads `VMState` from `showvminfo --machinereadable`.
//!
//! Host folder shares are refused: VirtualBox shares need the guest's `vboxsf` and
//! `vboxguest` modules and Guest Additions services, which the guest does not carry.
//!
//! Files in the machine directory: `virtualbox.json` (port forwards and the configuration
//! drive's disk id), `disk.vdi`, `config.vhd`, `console.log`, and VirtualBox's own folder
//! `NAME/` (the `.vbox` file and logs).
//!
//! How it is verified: VirtualBox and Hyper-V do not run on the development host. The tests
//! (`src/tests.rs`) drive this driver through a recording runner that checks the exact
//! VBoxManage command of every step and answers with fixtures shaped like the real tool's output
//! (its documentation, docker-machine's parsers). No test has run it against the real
//! hypervisor.
#![warn(missing_docs)]

pub mod vbm;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmachine_driver::runner::{CommandRunner, CommandSpec, TokioRunner};
use rmachine_driver::{
    vhd, Capabilities, Driver, DriverError, DriverInfo, Endpoints, MachineDir, StopMode, VmSpec,
    VmState,
};
use serde::{Deserialize, Serialize};

use crate::vbm::{Outcome, VBoxManage};

const DRIVER: &str = "virtualbox";
const SAVED: &str = "virtualbox.json";
const DISK: &str = "disk.vdi";
const CONFIG_VHD: &str = "config.vhd";
const CONSOLE_LOG: &str = "console.log";
/// The storage controller holding the DVD, the data disk and the configuration drive.
const CONTROLLER: &str = "SATA";
const ISO_PORT: &str = "0";
const DISK_PORT: &str = "1";
const CONFIG_PORT: &str = "2";
/// Names of the NAT port-forwarding rules.
const SSH_RULE: &str = "ssh";
const ENGINE_RULE: &str = "engine";
/// The oldest VirtualBox with every `modifyvm` setting used here.
const MIN_MAJOR: u32 = 6;
const POLL: Duration = Duration::from_millis(500);

/// The `--virtualbox-*` options of `rmachine create -d virtualbox`, stored with the machine.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct VirtualBoxOptions {
    /// VBoxManage program [default: VBoxManage]
    #[arg(
        id = "virtualbox_program",
        long = "virtualbox-program",
        env = "VIRTUALBOX_PROGRAM",
        value_name = "PROGRAM"
    )]
    #[serde(rename = "virtualboxProgram", skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,

    /// Number of CPUs for the machine [default: --cpus]
    #[arg(
        id = "virtualbox_cpu_count",
        long = "virtualbox-cpu-count",
        env = "VIRTUALBOX_CPU_COUNT",
        value_name = "N"
    )]
    #[serde(rename = "virtualboxCpuCount", skip_serializing_if = "Option::is_none")]
    pub cpu_count: Option<u32>,

    /// Memory of the machine in MB [default: --memory]
    #[arg(
        id = "virtualbox_memory",
        long = "virtualbox-memory",
        env = "VIRTUALBOX_MEMORY_SIZE",
        value_name = "MB"
    )]
    #[serde(rename = "virtualboxMemory", skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,

    /// Size of the data disk in MB [default: --disk-size]
    #[arg(
        id = "virtualbox_disk_size",
        long = "virtualbox-disk-size",
        env = "VIRTUALBOX_DISK_SIZE",
        value_name = "MB"
    )]
    #[serde(rename = "virtualboxDiskSize", skip_serializing_if = "Option::is_none")]
    pub disk_size: Option<u64>,

    /// Host-only network CIDR (refused: the guest configures only its NAT card)
    #[arg(
        id = "virtualbox_hostonly_cidr",
        long = "virtualbox-hostonly-cidr",
        env = "VIRTUALBOX_HOSTONLY_CIDR",
        value_name = "CIDR"
    )]
    #[serde(
        rename = "virtualboxHostonlyCidr",
        skip_serializing_if = "Option::is_none"
    )]
    pub hostonly_cidr: Option<String>,

    /// Share no host folder (VirtualBox machines never share one)
    #[arg(
        id = "virtualbox_no_share",
        long = "virtualbox-no-share",
        env = "VIRTUALBOX_NO_SHARE"
    )]
    #[serde(rename = "virtualboxNoShare")]
    pub no_share: bool,

    /// Host folder to share, DIR:NAME (refused: the guest has no vboxsf)
    #[arg(
        id = "virtualbox_share_folder",
        long = "virtualbox-share-folder",
        env = "VIRTUALBOX_SHARE_FOLDER",
        value_name = "DIR:NAME"
    )]
    #[serde(
        rename = "virtualboxShareFolder",
        skip_serializing_if = "Option::is_none"
    )]
    pub share_folder: Option<String>,
}

/// What the driver decided at `create` and must remember.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VBoxState {
    /// The VirtualBox VM's name.
    pub vm_name: String,
    /// Host port on 127.0.0.1 forwarded to the guest's SSH port.
    pub ssh_port: u16,
    /// Host port on 127.0.0.1 forwarded to the guest's engine port.
    pub engine_port: u16,
    /// The configuration drive's VHD disk id, kept across rewrites.
    pub config_disk_id: [u8; 16],
}

/// Which host checks `precheck` makes besides VBoxManage's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCheck {
    /// Linux: the CPU flags in this cpuinfo file must show VT-x or AMD-V.
    CpuInfo(PathBuf),
    /// Windows: Hyper-V must not be running (docker-machine's check), asked of this PowerShell.
    HyperV(String),
    /// No check (macOS: VirtualBox itself reports a missing VT-x).
    None,
}

impl HostCheck {
    /// The check for the host this was built for.
    pub fn for_this_host() -> Self {
        if cfg!(target_os = "linux") {
            HostCheck::CpuInfo(PathBuf::from("/proc/cpuinfo"))
        } else if cfg!(windows) {
            HostCheck::HyperV("powershell.exe".to_owned())
        } else {
            HostCheck::None
        }
    }
}

/// Chooses the two forwarded host ports.
pub type PortPicker = fn() -> std::io::Result<(u16, u16)>;

/// The VirtualBox driver.
pub struct VirtualBoxDriver {
    options: VirtualBoxOptions,
    vbm: VBoxManage,
    host_check: HostCheck,
    pick_ports: PortPicker,
}

impl std::fmt::Debug for VirtualBoxDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualBoxDriver")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl VirtualBoxDriver {
    /// A driver running the real VBoxManage.
    pub fn new(options: VirtualBoxOptions) -> Self {
        Self::with_runner(options, Arc::new(TokioRunner))
    }

    /// A driver running its programs through `runner`.
    pub fn with_runner(options: VirtualBoxOptions, runner: Arc<dyn CommandRunner>) -> Self {
        let program = options
            .program
            .clone()
            .unwrap_or_else(|| "VBoxManage".to_owned());
        Self {
            options,
            vbm: VBoxManage {
                program,
                runner,
                attempts: 5,
                retry_delay: Duration::from_secs(1),
            },
            host_check: HostCheck::for_this_host(),
            pick_ports: free_ports,
        }
    }

    /// Replaces the host checks (tests).
    pub fn with_host_check(mut self, check: HostCheck) -> Self {
        self.host_check = check;
        self
    }

    /// Replaces the port choice (tests).
    pub fn with_port_picker(mut self, pick: PortPicker) -> Self {
        self.pick_ports = pick;
        self
    }

    /// Replaces the wait between retries (tests).
    pub fn with_retry_delay(mut self, delay: Duration) -> Self {
        self.vbm.retry_delay = delay;
        self
    }

    fn cpus(&self, spec: &VmSpec) -> u32 {
        self.options.cpu_count.unwrap_or(spec.cpus)
    }

    fn memory(&self, spec: &VmSpec) -> u64 {
        self.options.memory.unwrap_or(spec.memory_mb)
    }

    fn disk_size(&self, spec: &VmSpec) -> u64 {
        self.options.disk_size.unwrap_or(spec.disk_size_mb)
    }

    fn option_problems(&self, spec: &VmSpec) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(folder) = &self.options.share_folder {
            problems.push(format!(
                "--virtualbox-share-folder {folder}: VirtualBox shared folders need the vboxsf module and Guest Additions, which the rmachine guest does not have"
            ));
        }
        if let Some(cidr) = &self.options.hostonly_cidr {
            problems.push(format!(
                "--virtualbox-hostonly-cidr {cidr}: the guest configures only its first network card (NAT, with forwarded ports); host-only networks are not supported"
            ));
        }
        if self.cpus(spec) == 0 {
            problems.push("--virtualbox-cpu-count must be at least 1".to_owned());
        }
        if self.memory(spec) < 256 {
            problems.push("--virtualbox-memory must be at least 256 MB".to_owned());
        }
        if self.disk_size(spec) == 0 {
            problems.push("--virtualbox-disk-size must be at least 1 MB".to_owned());
        }
        problems
    }

    async fn precheck_inner(&self, spec: &VmSpec) -> Result<(), DriverError> {
        let problems = self.option_problems(spec);
        if !problems.is_empty() {
            return Err(DriverError::InvalidOptions {
                driver: DRIVER.to_owned(),
                problems,
            });
        }
        if !spec.shares.is_empty() {
            return Err(DriverError::Unsupported {
                driver: DRIVER.to_owned(),
                op: "host folder shares (the guest has no vboxsf)".to_owned(),
            });
        }
        iso_of(spec)?;
        let out = self.vbm.run(&["--version"]).await?;
        let version = out.stdout_text().trim().to_owned();
        let major = version
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok());
        match major {
            Some(major) if major >= MIN_MAJOR => {}
            _ => {
                return Err(DriverError::Unsupported {
                    driver: DRIVER.to_owned(),
                    op: format!(
                        "VirtualBox {version:?} (version {MIN_MAJOR}.0 or newer is needed)"
                    ),
                })
            }
        }
        match &self.host_check {
            HostCheck::CpuInfo(path) => {
                let cpuinfo = std::fs::read_to_string(path).map_err(|source| DriverError::Io {
                    machine: String::new(),
                    path: path.clone(),
                    source,
                })?;
                if !has_virtualization(&cpuinfo) {
                    return Err(DriverError::Unsupported {
                        driver: DRIVER.to_owned(),
                        op: "this CPU: hardware virtualization (VT-x/AMD-V) is disabled or missing; enable it in the firmware settings".to_owned(),
                    });
                }
            }
            HostCheck::HyperV(powershell) => {
                let spec = CommandSpec::new(powershell.clone())
                    .args([
                        "-NoProfile",
                        "-NonInteractive",
                        "-Command",
                        "(Get-CimInstance -ClassName Win32_ComputerSystem).HypervisorPresent",
                    ])
                    .install_hint("PowerShell ships with Windows");
                let out = self.vbm.runner.run(&spec).await?.check(powershell)?;
                if out.stdout_text().trim().eq_ignore_ascii_case("true") {
                    return Err(DriverError::Unsupported {
                        driver: DRIVER.to_owned(),
                        op: "this host while Hyper-V runs: VirtualBox cannot run a 64-bit VM beside it; use -d hyperv or disable Hyper-V".to_owned(),
                    });
                }
            }
            HostCheck::None => {}
        }
        Ok(())
    }

    /// `showvminfo` of the machine's VM; `None` if VirtualBox does not know it.
    async fn vm_info(
        &self,
        vm: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, DriverError> {
        match self
            .vbm
            .call(&["showvminfo", vm, "--machinereadable"])
            .await?
        {
            Outcome::Ok(out) => Ok(Some(vbm::parse_machinereadable(&out.stdout_text()))),
            Outcome::NoSuchVm => Ok(None),
        }
    }

    async fn create_inner(&self, dir: &MachineDir, spec: &VmSpec) -> Result<(), DriverError> {
        if let Some(saved) = load(dir)? {
            if self.vm_info(&saved.vm_name).await?.is_some() {
                return Ok(());
            }
        }
        let iso = iso_of(spec)?;
        let (ssh_port, engine_port) = (self.pick_ports)().map_err(|e| io(dir, dir.path(), e))?;
        let state = VBoxState {
            vm_name: dir.name.clone(),
            ssh_port,
            engine_port,
            config_disk_id: rand::random(),
        };
        save(dir, &state)?;
        let mut made = Made::default();
        let result = self.build(dir, spec, &state, &iso, &mut made).await;
        if let Err(error) = result {
            tracing::info!(%error, "VirtualBox VM creation failed; undoing it");
            self.undo(dir, &state, &made).await;
            return Err(error);
        }
        Ok(())
    }

    async fn build(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
        state: &VBoxState,
        iso: &Path,
        made: &mut Made,
    ) -> Result<(), DriverError> {
        let vm = state.vm_name.as_str();
        let base = path_str(dir.path());
        self.vbm
            .run(&[
                "createvm",
                "--name",
                vm,
                "--basefolder",
                &base,
                "--register",
            ])
            .await?;
        made.vm = true;
        let cpus = self.cpus(spec).to_string();
        let memory = self.memory(spec).to_string();
        let console = path_str(&dir.file(CONSOLE_LOG));
        self.vbm
            .run(&[
                "modifyvm",
                vm,
                "--ostype",
                "Linux_64",
                "--firmware",
                "bios",
                "--cpus",
                &cpus,
                "--memory",
                &memory,
                "--acpi",
                "on",
                "--ioapic",
                "on",
                "--rtcuseutc",
                "on",
                "--pae",
                "on",
                "--hwvirtex",
                "on",
                "--nestedpaging",
                "on",
                "--boot1",
                "dvd",
                "--boot2",
                "none",
                "--boot3",
                "none",
                "--boot4",
                "none",
                "--audio",
                "none",
                "--usb",
                "off",
                "--uart1",
                "0x3F8",
                "4",
                "--uartmode1",
                "file",
                &console,
            ])
            .await?;
        let ssh = format!(
            "{SSH_RULE},tcp,127.0.0.1,{},,{}",
            state.ssh_port, spec.guest_ports.ssh
        );
        let engine = format!(
            "{ENGINE_RULE},tcp,127.0.0.1,{},,{}",
            state.engine_port, spec.guest_ports.engine
        );
        self.vbm
            .run(&[
                "modifyvm",
                vm,
                "--nic1",
                "nat",
                "--nictype1",
                "virtio",
                "--cableconnected1",
                "on",
                "--natpf1",
                &ssh,
                "--natpf1",
                &engine,
            ])
            .await?;
        self.vbm
            .run(&[
                "storagectl",
                vm,
                "--name",
                CONTROLLER,
                "--add",
                "sata",
                "--controller",
                "IntelAhci",
                "--portcount",
                "3",
                "--hostiocache",
                "on",
            ])
            .await?;
        let iso = path_str(iso);
        self.attach(vm, ISO_PORT, "dvddrive", &iso).await?;
        let disk = path_str(&dir.file(DISK));
        let size = self.disk_size(spec).to_string();
        self.vbm
            .run(&[
                "createmedium",
                "disk",
                "--filename",
                &disk,
                "--size",
                &size,
                "--format",
                "VDI",
            ])
            .await?;
        made.disk = true;
        self.attach(vm, DISK_PORT, "hdd", &disk).await?;
        made.disk_attached = true;
        self.attach_config_drive(dir, spec, state, false).await
    }

    async fn attach(
        &self,
        vm: &str,
        port: &str,
        kind: &str,
        medium: &str,
    ) -> Result<(), DriverError> {
        self.vbm
            .run(&[
                "storageattach",
                vm,
                "--storagectl",
                CONTROLLER,
                "--port",
                port,
                "--device",
                "0",
                "--type",
                kind,
                "--medium",
                medium,
            ])
            .await
            .map(drop)
    }

    /// Copies `config.img` into `config.vhd` and attaches it; `attached` says whether an older
    /// copy is attached (it is then detached and forgotten first, so that VirtualBox rereads
    /// the new file rather than its cached size).
    async fn attach_config_drive(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
        state: &VBoxState,
        attached: bool,
    ) -> Result<(), DriverError> {
        let vm = state.vm_name.as_str();
        let vhd_path = dir.file(CONFIG_VHD);
        let vhd_str = path_str(&vhd_path);
        if attached {
            self.vbm
                .run(&[
                    "storageattach",
                    vm,
                    "--storagectl",
                    CONTROLLER,
                    "--port",
                    CONFIG_PORT,
                    "--device",
                    "0",
                    "--medium",
                    "none",
                ])
                .await?;
            self.vbm.run(&["closemedium", "disk", &vhd_str]).await?;
        }
        if !spec.config_drive.exists() {
            return Err(DriverError::MissingFile {
                what: "configuration drive",
                path: spec.config_drive.clone(),
            });
        }
        vhd::write_fixed(&spec.config_drive, &vhd_path, state.config_disk_id)
            .map_err(|e| io(dir, &vhd_path, e))?;
        self.attach(vm, CONFIG_PORT, "hdd", &vhd_str).await
    }

    /// Undoes a `create` that failed midway.
    async fn undo(&self, dir: &MachineDir, state: &VBoxState, made: &Made) {
        if made.disk && !made.disk_attached {
            let disk = path_str(&dir.file(DISK));
            if let Err(e) = self
                .vbm
                .run(&["closemedium", "disk", &disk, "--delete"])
                .await
            {
                tracing::warn!(error = %e, "could not delete the data disk");
            }
        }
        if made.vm {
            if let Err(e) = self
                .vbm
                .run(&["unregistervm", &state.vm_name, "--delete"])
                .await
            {
                tracing::warn!(error = %e, "could not unregister the half-made VM");
            }
        }
        if let Err(e) = remove_own_files(dir, &state.vm_name) {
            tracing::warn!(error = %e, "could not delete the driver's files");
        }
    }

    async fn start_inner(&self, dir: &MachineDir, spec: &VmSpec) -> Result<(), DriverError> {
        let mut state = load_required(dir)?;
        let info = self.require_vm(&state).await?;
        match vm_state(&info) {
            VmState::Running | VmState::Starting => return Ok(()),
            VmState::Paused => {
                self.vbm
                    .run(&["controlvm", &state.vm_name, "resume"])
                    .await?;
                return Ok(());
            }
            _ => {}
        }
        // A forwarded port another program took since: move that rule to a free port.
        let (ssh_free, engine_free) = (
            port_is_free(state.ssh_port),
            port_is_free(state.engine_port),
        );
        if !ssh_free || !engine_free {
            let (ssh_port, engine_port) =
                (self.pick_ports)().map_err(|e| io(dir, dir.path(), e))?;
            let mut args = vec!["modifyvm".to_owned(), state.vm_name.clone()];
            if !ssh_free {
                state.ssh_port = ssh_port;
                args.extend([
                    "--natpf1".to_owned(),
                    "delete".to_owned(),
                    SSH_RULE.to_owned(),
                    "--natpf1".to_owned(),
                    format!(
                        "{SSH_RULE},tcp,127.0.0.1,{ssh_port},,{}",
                        spec.guest_ports.ssh
                    ),
                ]);
            }
            if !engine_free {
                state.engine_port = engine_port;
                args.extend([
                    "--natpf1".to_owned(),
                    "delete".to_owned(),
                    ENGINE_RULE.to_owned(),
                    "--natpf1".to_owned(),
                    format!(
                        "{ENGINE_RULE},tcp,127.0.0.1,{engine_port},,{}",
                        spec.guest_ports.engine
                    ),
                ]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.vbm.run(&args).await?;
            save(dir, &state)?;
        }
        let attached = info
            .get(&format!("{CONTROLLER}-{CONFIG_PORT}-0"))
            .is_some_and(|m| m != "none");
        self.attach_config_drive(dir, spec, &state, attached)
            .await?;
        self.vbm
            .run(&["startvm", &state.vm_name, "--type", "headless"])
            .await
            .map(drop)
    }

    async fn require_vm(
        &self,
        state: &VBoxState,
    ) -> Result<std::collections::BTreeMap<String, String>, DriverError> {
        self.vm_info(&state.vm_name)
            .await?
            .ok_or_else(|| gone(&state.vm_name))
    }

    async fn stop_inner(&self, dir: &MachineDir, mode: StopMode) -> Result<(), DriverError> {
        let state = load_required(dir)?;
        let vm = state.vm_name.as_str();
        let info = self.require_vm(&state).await?;
        if matches!(vm_state(&info), VmState::Stopped | VmState::Saved) {
            return Ok(());
        }
        match mode {
            StopMode::Kill => {
                self.vbm.run(&["controlvm", vm, "poweroff"]).await?;
                Ok(())
            }
            StopMode::Graceful { timeout } => {
                self.vbm.run(&["controlvm", vm, "acpipowerbutton"]).await?;
                let deadline = Instant::now() + timeout;
                loop {
                    tokio::time::sleep(POLL.min(timeout)).await;
                    let info = self.require_vm(&state).await?;
                    if matches!(vm_state(&info), VmState::Stopped) {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        return Err(DriverError::Timeout {
                            machine: dir.name.clone(),
                            what: "the guest to power off after the ACPI power button".to_owned(),
                            seconds: timeout.as_secs(),
                        });
                    }
                }
            }
        }
    }

    async fn remove_inner(&self, dir: &MachineDir) -> Result<(), DriverError> {
        let Some(state) = load(dir)? else {
            return remove_own_files(dir, &dir.name);
        };
        let vm = state.vm_name.as_str();
        if let Some(info) = self.vm_info(vm).await? {
            if matches!(
                vm_state(&info),
                VmState::Running | VmState::Paused | VmState::Starting | VmState::Stopping
            ) {
                self.vbm.run(&["controlvm", vm, "poweroff"]).await?;
            }
            match self.vbm.call(&["unregistervm", vm, "--delete"]).await? {
                Outcome::Ok(_) | Outcome::NoSuchVm => {}
            }
        }
        remove_own_files(dir, vm)
    }

    async fn state_inner(&self, dir: &MachineDir) -> Result<VmState, DriverError> {
        let state = load_required(dir)?;
        let info = self.require_vm(&state).await?;
        Ok(vm_state(&info))
    }
}

/// What a failing `create` made so far.
#[derive(Default)]
struct Made {
    vm: bool,
    disk: bool,
    disk_attached: bool,
}

/// The machine state of a `VMState` value (`showvminfo --machinereadable`).
pub fn state_from_vmstate(value: &str) -> VmState {
    match value {
        "running" => VmState::Running,
        "paused" => VmState::Paused,
        "saved" => VmState::Saved,
        "poweroff" | "aborted" => VmState::Stopped,
        "stopping" => VmState::Stopping,
        "starting" | "restoring" => VmState::Starting,
        _ => VmState::Error,
    }
}

fn vm_state(info: &std::collections::BTreeMap<String, String>) -> VmState {
    info.get("VMState")
        .map_or(VmState::Error, |s| state_from_vmstate(s))
}

/// Whether cpuinfo flags show VT-x (`vmx`) or AMD-V (`svm`).
pub fn has_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

fn gone(vm: &str) -> DriverError {
    DriverError::Protocol {
        machine: vm.to_owned(),
        channel: "VBoxManage",
        message: format!(
            "VirtualBox has no VM named {vm:?} (removed outside rmachine?); `rmachine rm` removes the machine"
        ),
    }
}

fn iso_of(spec: &VmSpec) -> Result<PathBuf, DriverError> {
    let iso = spec
        .boot
        .iso
        .clone()
        .ok_or_else(|| DriverError::MissingFile {
            what: "bootable guest ISO (this guest image has none; rebuild it with guest/build.sh)",
            path: spec.boot.initrd.with_file_name("rmachine.iso"),
        })?;
    if !iso.exists() {
        return Err(DriverError::MissingFile {
            what: "bootable guest ISO",
            path: iso,
        });
    }
    Ok(iso)
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn io(dir: &MachineDir, path: &Path, source: std::io::Error) -> DriverError {
    DriverError::Io {
        machine: dir.name.clone(),
        path: path.to_path_buf(),
        source,
    }
}

fn load(dir: &MachineDir) -> Result<Option<VBoxState>, DriverError> {
    rmachine_driver::state_file::load(dir, SAVED)
}

fn load_required(dir: &MachineDir) -> Result<VBoxState, DriverError> {
    rmachine_driver::state_file::load_required(dir, SAVED, "virtualbox")
}

fn save(dir: &MachineDir, state: &VBoxState) -> Result<(), DriverError> {
    rmachine_driver::state_file::save(dir, SAVED, state)
}

/// Deletes what this driver may have made in the machine directory, and nothing else.
fn remove_own_files(dir: &MachineDir, vm: &str) -> Result<(), DriverError> {
    for name in [
        DISK,
        CONFIG_VHD,
        "config.vhd.tmp",
        CONSOLE_LOG,
        SAVED,
        "virtualbox.json.tmp",
    ] {
        let path = dir.file(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(dir, &path, e)),
        }
    }
    // VirtualBox's own folder (`createvm --basefolder`); only a plain name is ever joined.
    if !vm.is_empty() && !vm.contains(['/', '\\']) && vm != "." && vm != ".." {
        let folder = dir.file(vm);
        match std::fs::remove_dir_all(&folder) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(dir, &folder, e)),
        }
    }
    Ok(())
}

/// Two distinct free TCP ports on 127.0.0.1.
pub fn free_ports() -> std::io::Result<(u16, u16)> {
    let a = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    let b = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok()
}

impl Driver for VirtualBoxDriver {
    fn info(&self) -> DriverInfo {
        DriverInfo {
            name: DRIVER.to_owned(),
            capabilities: Capabilities {
                graceful_stop: true,
                pause: false,
                console_log: true,
                shares: false,
                // Our guest's init and SSH server: the host shares folders over SFTP.
                sftp_shares: true,
                existing_host: false,
                virtio_fs: false,
            },
        }
    }

    async fn precheck(&self, spec: &VmSpec) -> Result<(), DriverError> {
        self.precheck_inner(spec).await
    }

    async fn create(&self, dir: &MachineDir, spec: &VmSpec) -> Result<(), DriverError> {
        self.create_inner(dir, spec).await
    }

    async fn start(&self, dir: &MachineDir, spec: &VmSpec) -> Result<(), DriverError> {
        self.start_inner(dir, spec).await
    }

    async fn stop(&self, dir: &MachineDir, mode: StopMode) -> Result<(), DriverError> {
        self.stop_inner(dir, mode).await
    }

    async fn remove(&self, dir: &MachineDir) -> Result<(), DriverError> {
        self.remove_inner(dir).await
    }

    async fn state(&self, dir: &MachineDir) -> Result<VmState, DriverError> {
        self.state_inner(dir).await
    }

    async fn endpoints(&self, dir: &MachineDir) -> Result<Endpoints, DriverError> {
        let state = load_required(dir)?;
        Ok(Endpoints {
            ssh: SocketAddr::from((Ipv4Addr::LOCALHOST, state.ssh_port)),
            engine: SocketAddr::from((Ipv4Addr::LOCALHOST, state.engine_port)),
        })
    }
}

#[cfg(test)]
mod tests;
