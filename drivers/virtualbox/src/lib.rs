//! The VirtualBox driver: a VM defined and run through `VBoxManage`.
//!
//! `create` refuses a machine name VirtualBox already has a VM of, then registers a VM named
//! after the machine with a UUID it chose and saved first (`createvm --uuid`) and its files under
//! the machine directory (`createvm --basefolder`); every later command names the VM by that
//! UUID, never by its name (records made before UUIDs keep the name). It sets CPUs, memory and a virtio NAT card whose two port forwards
//! (127.0.0.1 only) reach the guest's SSH and engine ports, and attaches to one SATA (AHCI)
//! controller the guest ISO (DVD, port 0), the data disk `disk.vdi` (port 1) and the
//! configuration drive as a fixed VHD `config.vhd` (port 2; VirtualBox attaches no raw image).
//! The serial port writes the guest console to `console.log`. `start` re-copies the
//! configuration drive (the host rewrites `config.img` before every start) and runs the VM
//! headless, first putting the spec's ISO in the DVD drive if the VM holds another one (after
//! `upgrade`); `state` reads `VMState` from `showvminfo --machinereadable`.
//!
//! Host folder shares are refused: VirtualBox shares need the guest's `vboxsf` and
//! `vboxguest` modules and Guest Additions services, which the guest does not carry.
//!
//! Files in the machine directory: `virtualbox.json` (the VM's UUID, port forwards and the
//! configuration drive's disk id), `disk.vdi`, `config.vhd`, `console.log`, and VirtualBox's
//! own folder `NAME/` (the `.vbox` file and logs).
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
    vhd, Capabilities, Driver, DriverError, DriverInfo, DriverShare, Endpoints, MachineDir,
    StopMode, VmSpec, VmState,
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

    /// Add a host-only network card on this network, given by the host's address on it (e.g.
    /// 192.168.59.1/24); the guest gets an address there by DHCP, reachable from this host
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

    /// Share no host folder (by default the home folder is shared over SFTP)
    #[arg(
        id = "virtualbox_no_share",
        long = "virtualbox-no-share",
        env = "VIRTUALBOX_NO_SHARE"
    )]
    #[serde(rename = "virtualboxNoShare")]
    pub no_share: bool,

    /// Share this host folder instead of the home folder, DIR:NAME; the guest mounts it at /NAME
    /// (at DIR's own path if NAME is empty), over SFTP
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
    /// The VM's UUID, chosen by the driver and given to `createvm`; every later command
    /// names the VM by it, so that another VM of the same name is never touched. Records
    /// made before it existed name the VM by `vm_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_uuid: Option<String>,
    /// Host port on 127.0.0.1 forwarded to the guest's SSH port.
    pub ssh_port: u16,
    /// Host port on 127.0.0.1 forwarded to the guest's engine port.
    pub engine_port: u16,
    /// The configuration drive's VHD disk id, kept across rewrites.
    pub config_disk_id: [u8; 16],
}

impl VBoxState {
    /// How VBoxManage commands name the VM: its UUID, or its name in older records.
    pub fn target(&self) -> &str {
        self.vm_uuid.as_deref().unwrap_or(&self.vm_name)
    }
}

/// A random (version 4) UUID in VirtualBox's textual form.
pub fn random_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
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

/// Chooses a new VM's UUID.
pub type UuidSource = fn() -> String;

/// The VirtualBox driver.
pub struct VirtualBoxDriver {
    options: VirtualBoxOptions,
    vbm: VBoxManage,
    host_check: HostCheck,
    pick_ports: PortPicker,
    new_uuid: UuidSource,
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
            new_uuid: random_uuid,
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

    /// Replaces the choice of a new VM's UUID (tests).
    pub fn with_uuid_source(mut self, source: UuidSource) -> Self {
        self.new_uuid = source;
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
            if self.options.no_share {
                problems.push(share_folder_with_no_share(folder));
            } else if let Err(why) = parse_share_folder(folder) {
                problems.push(format!("--virtualbox-share-folder {folder}: {why}"));
            }
        }
        if let Some(cidr) = &self.options.hostonly_cidr {
            if let Err(why) = HostOnlyNet::parse(cidr) {
                problems.push(format!("--virtualbox-hostonly-cidr {cidr}: {why}"));
            }
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
            if self.vm_info(saved.target()).await?.is_some() {
                return Ok(());
            }
        }
        // A VM of this name that is not ours (the user's, or one an interrupted create left
        // under another record) is refused: never reused, never removed by our undo.
        if self.vm_info(&dir.name).await?.is_some() {
            return Err(name_taken(&dir.name));
        }
        let iso = iso_of(spec)?;
        let (ssh_port, engine_port) = (self.pick_ports)().map_err(|e| io(dir, dir.path(), e))?;
        // The UUID is saved before `createvm` uses it, so that even a create killed right
        // after it leaves a record `rm` can unregister exactly this VM by.
        let state = VBoxState {
            vm_name: dir.name.clone(),
            vm_uuid: Some((self.new_uuid)()),
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
        let vm = state.target();
        let base = path_str(dir.path());
        self.vbm
            .run(&[
                "createvm",
                "--name",
                &state.vm_name,
                "--uuid",
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
        if let Some(cidr) = &self.options.hostonly_cidr {
            let net = HostOnlyNet::parse(cidr).map_err(|why| DriverError::InvalidOptions {
                driver: DRIVER.to_owned(),
                problems: vec![format!("--virtualbox-hostonly-cidr {cidr}: {why}")],
            })?;
            let adapter = self.hostonly_adapter(dir, &net, made).await?;
            self.hostonly_dhcp(dir, &net, &adapter, made).await?;
            self.vbm
                .run(&[
                    "modifyvm",
                    vm,
                    "--nic2",
                    "hostonly",
                    "--nictype2",
                    "virtio",
                    "--nicpromisc2",
                    "deny",
                    "--hostonlyadapter2",
                    &adapter,
                    "--cableconnected2",
                    "on",
                ])
                .await?;
        }
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

    /// The host-only interface holding `net`'s host address: an existing one, else a new one
    /// (`hostonlyif create`) given that address (`hostonlyif ipconfig`), as docker-machine did.
    /// A network overlapping an existing interface's with another host address is refused.
    async fn hostonly_adapter(
        &self,
        dir: &MachineDir,
        net: &HostOnlyNet,
        made: &mut Made,
    ) -> Result<String, DriverError> {
        let list = self.vbm.run(&["list", "hostonlyifs"]).await?;
        let ip = net.host.to_string();
        let mask = net.mask().to_string();
        let refuse = |message: String| DriverError::Protocol {
            machine: dir.name.clone(),
            channel: "VBoxManage",
            message,
        };
        for block in vbm::parse_blocks(&list.stdout_text()) {
            let (Some(name), Some(their_ip), Some(their_mask)) = (
                block.get("Name"),
                block
                    .get("IPAddress")
                    .and_then(|a| a.parse::<Ipv4Addr>().ok()),
                block
                    .get("NetworkMask")
                    .and_then(|m| m.parse::<Ipv4Addr>().ok()),
            ) else {
                continue;
            };
            if their_ip == net.host && their_mask == net.mask() {
                return Ok(name.clone());
            }
            if net.overlaps(their_ip, their_mask) {
                return Err(refuse(format!(
                    "--virtualbox-hostonly-cidr {}/{}: host-only interface {name} has {their_ip} (mask {their_mask}) on an overlapping network; give its address ({their_ip}) or a network outside it",
                    net.host, net.prefix
                )));
            }
        }
        let created = self.vbm.run(&["hostonlyif", "create"]).await?;
        let text = format!("{}\n{}", created.stdout_text(), created.stderr_text());
        let name = text
            .lines()
            .find_map(|l| {
                l.split_once("Interface '")
                    .and_then(|(_, rest)| rest.split_once("' was successfully created"))
                    .map(|(name, _)| name.to_owned())
            })
            .ok_or_else(|| {
                refuse(format!(
                    "hostonlyif create did not name the interface it made: {:?}",
                    text.trim()
                ))
            })?;
        made.hostonlyif = Some(name.clone());
        // Not retried: E_ACCESSDENIED here is VirtualBox's address policy, not a busy VM.
        let args = [
            "hostonlyif",
            "ipconfig",
            &name,
            "--ip",
            &ip,
            "--netmask",
            &mask,
        ];
        match self.vbm.run_once(&args).await {
            Ok(_) => Ok(name),
            Err(DriverError::CommandFailed { stderr, .. }) if stderr.contains("E_ACCESSDENIED") => {
                Err(refuse(format!(
                    "VirtualBox refused the host-only address {ip}/{} (E_ACCESSDENIED): since 6.1.28 it allows only 192.168.56.0/21 unless /etc/vbox/networks.conf lists the range (e.g. \"* {}/{}\")",
                    net.prefix,
                    net.network(),
                    net.prefix
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// The DHCP server that gives the guest its host-only address: an enabled one that fits
    /// `net` is reused as it is; other VMs may rely on one that does not fit, so it is left
    /// alone and create refused, unless the interface is the one this create just made.
    async fn hostonly_dhcp(
        &self,
        dir: &MachineDir,
        net: &HostOnlyNet,
        adapter: &str,
        made: &mut Made,
    ) -> Result<(), DriverError> {
        let netname = format!("HostInterfaceNetworking-{adapter}");
        let list = self.vbm.run(&["list", "dhcpservers"]).await?;
        let blocks = vbm::parse_blocks(&list.stdout_text());
        let existing = blocks
            .iter()
            .find(|b| b.get("NetworkName") == Some(&netname));
        let ours = made.hostonlyif.as_deref() == Some(adapter);
        if let Some(server) = existing {
            if dhcp_fits(server, net) {
                return Ok(());
            }
            if !ours {
                let field = |keys: &[&str]| {
                    keys.iter()
                        .find_map(|k| server.get(*k))
                        .map(String::as_str)
                        .unwrap_or("?")
                        .to_owned()
                };
                return Err(DriverError::Protocol {
                    machine: dir.name.clone(),
                    channel: "VBoxManage",
                    message: format!(
                        "the DHCP server of {adapter} ({netname}: server {}, mask {}, range {}-{}, enabled {}) does not fit {}/{} and other VMs may use it, so rmachine leaves it alone; change it with `VBoxManage dhcpserver modify --netname {netname}` or choose another --virtualbox-hostonly-cidr",
                        field(&["Dhcpd IP", "IP"]),
                        field(&["NetworkMask"]),
                        field(&["LowerIPAddress", "lowerIPAddress"]),
                        field(&["UpperIPAddress", "upperIPAddress"]),
                        field(&["Enabled"]),
                        net.host,
                        net.prefix
                    ),
                });
            }
        }
        let (server, lower, upper) = net.dhcp_plan();
        let (server, mask, lower, upper) = (
            server.to_string(),
            net.mask().to_string(),
            lower.to_string(),
            upper.to_string(),
        );
        self.vbm
            .run(&[
                "dhcpserver",
                if existing.is_some() { "modify" } else { "add" },
                "--netname",
                &netname,
                "--ip",
                &server,
                "--netmask",
                &mask,
                "--lowerip",
                &lower,
                "--upperip",
                &upper,
                "--enable",
            ])
            .await?;
        if existing.is_none() {
            made.dhcpserver = Some(netname);
        }
        Ok(())
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
        let vm = state.target();
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
                .run(&["unregistervm", state.target(), "--delete"])
                .await
            {
                tracing::warn!(error = %e, "could not unregister the half-made VM");
            }
        }
        // What this create added to the host-only networking, and only that.
        if let Some(netname) = &made.dhcpserver {
            if let Err(e) = self
                .vbm
                .run(&["dhcpserver", "remove", "--netname", netname])
                .await
            {
                tracing::warn!(error = %e, "could not remove the DHCP server it added");
            }
        }
        if let Some(name) = &made.hostonlyif {
            if let Err(e) = self.vbm.run(&["hostonlyif", "remove", name]).await {
                tracing::warn!(error = %e, "could not remove the host-only interface it made");
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
                    .run(&["controlvm", state.target(), "resume"])
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
            let mut args = vec!["modifyvm".to_owned(), state.target().to_owned()];
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
        // `upgrade` hands over a new guest image: the DVD follows the ISO the spec names.
        let iso = path_str(&iso_of(spec)?);
        if info.get(&format!("{CONTROLLER}-{ISO_PORT}-0")) != Some(&iso) {
            self.attach(state.target(), ISO_PORT, "dvddrive", &iso)
                .await?;
        }
        let attached = info
            .get(&format!("{CONTROLLER}-{CONFIG_PORT}-0"))
            .is_some_and(|m| m != "none");
        self.attach_config_drive(dir, spec, &state, attached)
            .await?;
        self.vbm
            .run(&["startvm", state.target(), "--type", "headless"])
            .await
            .map(drop)
    }

    async fn require_vm(
        &self,
        state: &VBoxState,
    ) -> Result<std::collections::BTreeMap<String, String>, DriverError> {
        self.vm_info(state.target())
            .await?
            .ok_or_else(|| gone(state))
    }

    async fn stop_inner(&self, dir: &MachineDir, mode: StopMode) -> Result<(), DriverError> {
        let state = load_required(dir)?;
        let vm = state.target();
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
        let Some(mut state) = load(dir)? else {
            return remove_own_files(dir, &dir.name);
        };
        if let Some(info) = self.vm_info(state.target()).await? {
            if state.vm_uuid.is_none() {
                // A record made before UUIDs names the VM, and another VM may have taken the
                // name: delete it only if its settings file lies in this machine's directory,
                // and from then on address it by its UUID.
                let cfg = info.get("CfgFile").map(String::as_str).unwrap_or_default();
                if !lies_under(Path::new(cfg), dir.path()) {
                    return Err(DriverError::Protocol {
                        machine: dir.name.clone(),
                        channel: "VBoxManage",
                        message: format!(
                            "the VM named {:?} keeps its settings in {cfg:?}, outside {}: it is not this machine's VM, so it was not deleted",
                            state.vm_name,
                            dir.path().display()
                        ),
                    });
                }
                if let Some(uuid) = info.get("UUID").filter(|u| !u.is_empty()) {
                    state.vm_uuid = Some(uuid.clone());
                    save(dir, &state)?;
                }
            }
            let vm = state.target();
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
        remove_own_files(dir, &state.vm_name)
    }

    async fn state_inner(&self, dir: &MachineDir) -> Result<VmState, DriverError> {
        let state = load_required(dir)?;
        let info = self.require_vm(&state).await?;
        Ok(vm_state(&info))
    }
}

/// A host-only network as `--virtualbox-hostonly-cidr` gives it: the host's address on it and
/// the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostOnlyNet {
    /// The host's address on the network.
    pub host: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl HostOnlyNet {
    /// Parses `A.B.C.D/N`; the address must be a host's, not the network's (docker-machine's
    /// rule), and the network must leave room for a DHCP range.
    pub fn parse(cidr: &str) -> Result<Self, String> {
        let (ip, prefix) = cidr.split_once('/').ok_or_else(|| {
            "expected an IPv4 address with a prefix length, e.g. 192.168.59.1/24".to_owned()
        })?;
        let host: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=28).contains(p))
            .ok_or_else(|| format!("the prefix length {prefix:?} must be between 8 and 28"))?;
        let net = Self { host, prefix };
        if host == net.network() {
            return Err(
                "host-only cidr must be specified with a host address, not a network address"
                    .to_owned(),
            );
        }
        if host == net.broadcast() {
            return Err("the address is the network's broadcast address".to_owned());
        }
        Ok(net)
    }

    fn mask_bits(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// The network mask.
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask_bits())
    }

    /// The network's address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.host) & self.mask_bits())
    }

    /// Whether `addr` lies in this network.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask_bits() == u32::from(self.network())
    }

    /// Whether this network and the one of `addr` with `mask` share addresses.
    pub fn overlaps(&self, addr: Ipv4Addr, mask: Ipv4Addr) -> bool {
        let common = self.mask_bits() & u32::from(mask);
        u32::from(addr) & common == u32::from(self.host) & common
    }

    /// The network's broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.host) | !self.mask_bits())
    }

    /// The DHCP server's address (the first one that is not the host's) and the range it
    /// leases: for a /24, .100 to .254 as docker-machine.
    pub fn dhcp_plan(&self) -> (Ipv4Addr, Ipv4Addr, Ipv4Addr) {
        let network = u32::from(self.network());
        let size = !self.mask_bits() + 1;
        let first = network + 1;
        let server = if first == u32::from(self.host) {
            first + 1
        } else {
            first
        };
        let mut lower = (network + size * 100 / 256).max(server + 1);
        let mut upper = u32::from(self.broadcast()) - 1;
        // The host's address is never leased: the range keeps the larger side of it.
        let host = u32::from(self.host);
        if (lower..=upper).contains(&host) {
            if host - lower >= upper - host {
                upper = host - 1;
            } else {
                lower = host + 1;
            }
        }
        (
            Ipv4Addr::from(server),
            Ipv4Addr::from(lower),
            Ipv4Addr::from(upper),
        )
    }
}

/// What a failing `create` made so far.
#[derive(Default)]
struct Made {
    vm: bool,
    disk: bool,
    disk_attached: bool,
    /// The host-only interface this create made.
    hostonlyif: Option<String>,
    /// The DHCP server (network name) this create added.
    dhcpserver: Option<String>,
}

/// Whether an existing DHCP server (a `list dhcpservers` block) serves `net` as rmachine
/// needs: enabled, same mask, server and range inside the network, the host's address out of
/// the range. Old VirtualBox names the fields `IP`, `lowerIPAddress`, `upperIPAddress`.
fn dhcp_fits(server: &std::collections::BTreeMap<String, String>, net: &HostOnlyNet) -> bool {
    let addr = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| server.get(*k))
            .and_then(|v| v.parse::<Ipv4Addr>().ok())
    };
    let (Some(ip), Some(mask), Some(lower), Some(upper)) = (
        addr(&["Dhcpd IP", "IP"]),
        addr(&["NetworkMask"]),
        addr(&["LowerIPAddress", "lowerIPAddress"]),
        addr(&["UpperIPAddress", "upperIPAddress"]),
    ) else {
        return false;
    };
    let enabled = server
        .get("Enabled")
        .is_some_and(|e| e.eq_ignore_ascii_case("yes"));
    let inside = |a: Ipv4Addr| net.contains(a);
    enabled
        && mask == net.mask()
        && inside(ip)
        && ip != net.host
        && inside(lower)
        && inside(upper)
        && u32::from(lower) <= u32::from(upper)
        && !(u32::from(lower)..=u32::from(upper)).contains(&u32::from(net.host))
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

fn gone(state: &VBoxState) -> DriverError {
    let vm = &state.vm_name;
    let which = match &state.vm_uuid {
        Some(uuid) => format!("VM {vm:?} (UUID {uuid})"),
        None => format!("VM named {vm:?}"),
    };
    DriverError::Protocol {
        machine: vm.clone(),
        channel: "VBoxManage",
        message: format!(
            "VirtualBox has no {which} (removed outside rmachine?); `rmachine rm` removes the machine"
        ),
    }
}

fn name_taken(vm: &str) -> DriverError {
    DriverError::Protocol {
        machine: vm.to_owned(),
        channel: "VBoxManage",
        message: format!(
            "VirtualBox already has a VM named {vm:?} that this machine did not create; remove or rename that VM, or choose another machine name"
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

/// Whether `path` lies inside `dir` (case-insensitively on Windows, as its file systems are).
fn lies_under(path: &Path, dir: &Path) -> bool {
    if path.as_os_str().is_empty() {
        return false;
    }
    if cfg!(windows) {
        let lower = |p: &Path| PathBuf::from(p.to_string_lossy().to_lowercase());
        lower(path).starts_with(lower(dir))
    } else {
        path.starts_with(dir)
    }
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

/// Splits `--virtualbox-share-folder DIR:NAME` as docker-machine did, at the last colon (a
/// Windows drive letter stays in DIR), into the host folder and the guest path `/NAME`: where
/// boot2docker's Guest Additions mounted share NAME, docker-machine having set their mount
/// prefix and folder to `/` (so `C:\code:c/code` is `/c/code`). An empty NAME (`DIR:`) is
/// `None`: the guest mounts DIR at its own path, as `--share DIR` does (docker-machine named
/// that share after DIR without its leading `/`, so `/home/me/code:` was `/home/me/code`).
pub fn parse_share_folder(value: &str) -> Result<(PathBuf, Option<String>), String> {
    let Some((dir, name)) = value.rsplit_once(':') else {
        return Err(
            "expected DIR:NAME (the host folder, then the name the machine mounts it \
                    under, at /NAME)"
                .to_owned(),
        );
    };
    if dir.is_empty() {
        return Err("the host folder (DIR of DIR:NAME) is empty".to_owned());
    }
    let name = name.trim_start_matches('/');
    if name.is_empty() {
        return Ok((PathBuf::from(dir), None));
    }
    if name.contains('\\')
        || name
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(format!(
            "the share name {name} must be a relative guest path (parts separated by /, no \
             . or ..)"
        ));
    }
    Ok((PathBuf::from(dir), Some(format!("/{name}"))))
}

/// The refusal of `--virtualbox-share-folder` beside `--virtualbox-no-share`, worded as the
/// host's refusal of it beside `--no-share`.
fn share_folder_with_no_share(folder: &str) -> String {
    format!("--virtualbox-no-share and --virtualbox-share-folder {folder} cannot be used together")
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
                // Our guest's init and SSH server: the host shares folders over SFTP, unless
                // the user asked for none (docker-machine's --virtualbox-no-share).
                sftp_shares: !self.options.no_share,
                existing_host: false,
                save_state: false,
                virtio_fs: false,
                // It boots the ISO, never the derived kernel and initramfs.
                fast_boot_files: false,
            },
        }
    }

    async fn precheck(&self, spec: &VmSpec) -> Result<(), DriverError> {
        self.precheck_inner(spec).await
    }

    fn driver_share(&self) -> Result<Option<DriverShare>, DriverError> {
        let Some(folder) = self.options.share_folder.as_ref() else {
            return Ok(None);
        };
        let refused = |problem: String| DriverError::InvalidOptions {
            driver: DRIVER.to_owned(),
            problems: vec![problem],
        };
        if self.options.no_share {
            return Err(refused(share_folder_with_no_share(folder)));
        }
        let (host_path, guest_path) = parse_share_folder(folder)
            .map_err(|why| refused(format!("--virtualbox-share-folder {folder}: {why}")))?;
        Ok(Some(DriverShare {
            flag: format!("--virtualbox-share-folder {folder}"),
            host_path,
            guest_path,
        }))
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
