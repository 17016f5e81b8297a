//! The Hyper-V driver: a Generation 2 VM driven through PowerShell's Hyper-V module.
//!
//! Every operation is one `powershell.exe -NoProfile -NonInteractive -Command SCRIPT` call
//! (scripts start with `$ErrorActionPreference = 'Stop'`, so any failing cmdlet fails the
//! call). `create` makes the data disk `disk.vhdx` (dynamic), copies the configuration drive
//! into the fixed VHD `config.vhd` (Hyper-V attaches no raw image), and defines a Generation 2
//! VM on the chosen switch ("Default Switch" unless `--hyperv-virtual-switch`) that boots the
//! guest ISO by UEFI with Secure Boot off (the guest kernel and boot loader are not signed for
//! Microsoft's UEFI CA). A machine name Hyper-V already has a VM of is refused (Hyper-V
//! allows two VMs of one name); the new VM's Id, saved at once, names it in every later cmdlet
//! (`-VM (Get-VM -Id …)`). `start` swaps the DVD's ISO when the spec names another (`upgrade`).
//! The guest sees SCSI disks (`hv_storvsc`) and a synthetic NIC
//! (`hv_netvsc`); Hyper-V's "shut down" integration service (`hv_utils`) powers it off.
//!
//! The VM's address: the guest runs no KVP daemon, so `Get-VMNetworkAdapter`'s `IPAddresses`
//! stays empty. Instead `start` waits for the VM's MAC address to appear in the host's IPv4
//! neighbour table (`Get-NetNeighbor`), filled when the switch's DHCP server answers the
//! guest, and records that address; the host reaches the guest's SSH and engine ports there.
//!
//! Files in the machine directory: `hyperv.json`, `disk.vhdx`, `config.vhd` and Hyper-V's
//! own folder `NAME/`.
//!
//! How it is verified: VirtualBox and Hyper-V do not run on the development host. The tests
//! (`src/tests.rs`) drive this driver through a recording runner that checks the exact
//! PowerShell command of every step and answers with fixtures shaped like the real tool's output
//! (its documentation, docker-machine's parsers). No test has run it against the real
//! hypervisor.
#![warn(missing_docs)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmachine_driver::runner::{CommandOutput, CommandRunner, CommandSpec, TokioRunner};
use rmachine_driver::{
    vhd, Capabilities, Driver, DriverError, DriverInfo, Endpoints, GuestPorts, MachineDir,
    StopMode, VmSpec, VmState,
};
use serde::{Deserialize, Serialize};

const DRIVER: &str = "hyperv";
const SAVED: &str = "hyperv.json";
const DISK: &str = "disk.vhdx";
const CONFIG_VHD: &str = "config.vhd";
const DEFAULT_SWITCH: &str = "Default Switch";
const INSTALL_HINT: &str = "PowerShell ships with Windows; pass --hyperv-program for another path";
/// How long `start` waits for the guest's address.
const ADDRESS_TIMEOUT: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_secs(1);

/// The `--hyperv-*` options of `rmachine create -d hyperv`, stored with the machine.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct HyperVOptions {
    /// PowerShell program [default: powershell.exe]
    #[arg(
        id = "hyperv_program",
        long = "hyperv-program",
        env = "HYPERV_PROGRAM",
        value_name = "PROGRAM"
    )]
    #[serde(rename = "hypervProgram", skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,

    /// Virtual switch the VM's network card joins [default: Default Switch]
    #[arg(
        id = "hyperv_virtual_switch",
        long = "hyperv-virtual-switch",
        env = "HYPERV_VIRTUAL_SWITCH",
        value_name = "NAME"
    )]
    #[serde(
        rename = "hypervVirtualSwitch",
        skip_serializing_if = "Option::is_none"
    )]
    pub virtual_switch: Option<String>,

    /// Number of CPUs for the machine [default: --cpus]
    #[arg(
        id = "hyperv_cpu_count",
        long = "hyperv-cpu-count",
        env = "HYPERV_CPU_COUNT",
        value_name = "N"
    )]
    #[serde(rename = "hypervCpuCount", skip_serializing_if = "Option::is_none")]
    pub cpu_count: Option<u32>,

    /// Memory of the machine in MB [default: --memory]
    #[arg(
        id = "hyperv_memory",
        long = "hyperv-memory",
        env = "HYPERV_MEMORY",
        value_name = "MB"
    )]
    #[serde(rename = "hypervMemory", skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,

    /// Size of the data disk in MB [default: --disk-size]
    #[arg(
        id = "hyperv_disk_size",
        long = "hyperv-disk-size",
        env = "HYPERV_DISK_SIZE",
        value_name = "MB"
    )]
    #[serde(rename = "hypervDiskSize", skip_serializing_if = "Option::is_none")]
    pub disk_size: Option<u64>,

    /// Give the VM its memory as a fixed amount rather than Hyper-V dynamic memory
    #[arg(
        id = "hyperv_disable_dynamic_memory",
        long = "hyperv-disable-dynamic-memory",
        env = "HYPERV_DISABLE_DYNAMIC_MEMORY"
    )]
    #[serde(rename = "hypervDisableDynamicMemory")]
    pub disable_dynamic_memory: bool,
}

/// What the driver remembers about a machine.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HyperVState {
    /// The Hyper-V VM's name.
    pub vm_name: String,
    /// The VM's Id (`New-VM`'s answer); every later cmdlet finds the VM by it, since Hyper-V
    /// lets two VMs share a name. Without it (records made before it existed, or a create
    /// interrupted right after `New-VM`) the VM is the one of that name whose files lie in
    /// the machine directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
    /// The ISO in the VM's DVD drive; `start` swaps in the spec's when they differ (`upgrade`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iso: Option<PathBuf>,
    /// The configuration drive's VHD disk id.
    pub config_disk_id: [u8; 16],
    /// The guest ports the endpoints name.
    pub guest_ports: GuestPorts,
    /// The guest's address found at the last start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
}

/// The Hyper-V driver.
pub struct HyperVDriver {
    options: HyperVOptions,
    program: String,
    runner: Arc<dyn CommandRunner>,
    poll: Duration,
    address_timeout: Duration,
}

impl std::fmt::Debug for HyperVDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HyperVDriver")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A PowerShell single-quoted string literal. PowerShell also takes the typographic single
/// quotes U+2018–U+201B as quotes, so each of them is doubled like `'` (a path such as
/// `C:\Users\O’Brien` would otherwise end the literal).
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        out.push(c);
        if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

fn path_q(path: &Path) -> String {
    quote(&path.to_string_lossy())
}

impl HyperVDriver {
    /// A driver running the real PowerShell.
    pub fn new(options: HyperVOptions) -> Self {
        Self::with_runner(options, Arc::new(TokioRunner))
    }

    /// A driver running PowerShell through `runner`.
    pub fn with_runner(options: HyperVOptions, runner: Arc<dyn CommandRunner>) -> Self {
        let program = options
            .program
            .clone()
            .unwrap_or_else(|| "powershell.exe".to_owned());
        Self {
            options,
            program,
            runner,
            poll: POLL,
            address_timeout: ADDRESS_TIMEOUT,
        }
    }

    /// Replaces the address wait's poll interval and limit (tests).
    pub fn with_address_wait(mut self, poll: Duration, timeout: Duration) -> Self {
        self.poll = poll;
        self.address_timeout = timeout;
        self
    }

    fn switch(&self) -> &str {
        self.options
            .virtual_switch
            .as_deref()
            .unwrap_or(DEFAULT_SWITCH)
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

    /// The full argv of a PowerShell call running `script`.
    pub fn argv(&self, script: &str) -> Vec<String> {
        vec![
            self.program.clone(),
            "-NoProfile".to_owned(),
            "-NonInteractive".to_owned(),
            "-Command".to_owned(),
            format!("$ErrorActionPreference = 'Stop'; {script}"),
        ]
    }

    async fn ps_output(
        &self,
        script: &str,
        timeout: Option<Duration>,
    ) -> Result<CommandOutput, DriverError> {
        let argv = self.argv(script);
        let mut spec = CommandSpec::new(self.program.clone())
            .args(argv.into_iter().skip(1))
            .install_hint(INSTALL_HINT);
        if let Some(timeout) = timeout {
            spec = spec.timeout(timeout);
        }
        self.runner.run(&spec).await
    }

    /// Runs `script`; fails unless it succeeds. Returns its stdout.
    async fn ps(&self, script: &str) -> Result<String, DriverError> {
        Ok(self
            .ps_output(script, Some(Duration::from_secs(300)))
            .await?
            .check(&self.program)?
            .stdout_text())
    }

    async fn precheck_inner(&self, spec: &VmSpec) -> Result<(), DriverError> {
        let mut problems = Vec::new();
        if self.cpus(spec) == 0 {
            problems.push("--hyperv-cpu-count must be at least 1".to_owned());
        }
        if self.memory(spec) < 256 {
            problems.push("--hyperv-memory must be at least 256 MB".to_owned());
        }
        if self.disk_size(spec) == 0 {
            problems.push("--hyperv-disk-size must be at least 1 MB".to_owned());
        }
        if !problems.is_empty() {
            return Err(DriverError::InvalidOptions {
                driver: DRIVER.to_owned(),
                problems,
            });
        }
        if !spec.shares.is_empty() {
            return Err(DriverError::Unsupported {
                driver: DRIVER.to_owned(),
                op: "host folder shares".to_owned(),
            });
        }
        iso_of(spec)?;
        let module = self
            .ps("@(Get-Module -ListAvailable hyper-v).Name | Get-Unique")
            .await?;
        if module.lines().next().map(str::trim) != Some("Hyper-V") {
            return Err(DriverError::Unsupported {
                driver: DRIVER.to_owned(),
                op: "this host: the Hyper-V PowerShell module is not available (enable the Hyper-V feature)".to_owned(),
            });
        }
        let admin = self
            .ps("$p = [Security.Principal.WindowsPrincipal][Security.Principal.WindowsIdentity]::GetCurrent(); $p.IsInRole([Security.Principal.SecurityIdentifier]::new('S-1-5-32-578')) -or $p.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)")
            .await?;
        if !is_true(&admin) {
            return Err(DriverError::Unsupported {
                driver: DRIVER.to_owned(),
                op: "this user: Hyper-V needs a member of \"Hyper-V Administrators\" or an elevated (Administrator) shell".to_owned(),
            });
        }
        let running = self
            .ps("(Get-CimInstance -ClassName Win32_ComputerSystem).HypervisorPresent")
            .await?;
        if !is_true(&running) {
            return Err(DriverError::Unsupported {
                driver: DRIVER.to_owned(),
                op: "this host: the Hyper-V hypervisor is not running (virtualization disabled in the firmware, or hypervisorlaunchtype off)".to_owned(),
            });
        }
        let switches = self
            .ps("Hyper-V\\Get-VMSwitch | ForEach-Object { $_.Name }")
            .await?;
        let switches: Vec<&str> = switches
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if !switches.contains(&self.switch()) {
            return Err(DriverError::InvalidOptions {
                driver: DRIVER.to_owned(),
                problems: vec![format!(
                    "no virtual switch named {:?} (Hyper-V has: {}); choose one with --hyperv-virtual-switch",
                    self.switch(),
                    if switches.is_empty() {
                        "none".to_owned()
                    } else {
                        switches.join(", ")
                    }
                )],
            });
        }
        Ok(())
    }

    /// The VM's state as Hyper-V names it; `None` if there is no such VM.
    async fn vm_state(
        &self,
        dir: &MachineDir,
        state: &HyperVState,
    ) -> Result<Option<String>, DriverError> {
        let out = self
            .ps(&format!(
                "$vm = {}; if ($vm.Count -gt 1) {{ throw 'more than one VM matches' }} elseif ($vm.Count -eq 1) {{ $vm[0].State }} else {{ 'NotFound' }}",
                find_vm(dir, state)
            ))
            .await?;
        let state = out.trim().to_owned();
        Ok((state != "NotFound").then_some(state))
    }

    async fn require_state(
        &self,
        dir: &MachineDir,
        state: &HyperVState,
    ) -> Result<VmState, DriverError> {
        self.vm_state(dir, state)
            .await?
            .map(|s| state_from_hyperv(&s))
            .ok_or_else(|| gone(state))
    }

    async fn create_inner(&self, dir: &MachineDir, spec: &VmSpec) -> Result<(), DriverError> {
        if let Some(saved) = load(dir)? {
            if self.vm_state(dir, &saved).await?.is_some() {
                return Ok(());
            }
        }
        // Hyper-V allows a second VM of a name; refusing one keeps every VM this machine
        // did not make out of its way, and the user out of a confusing pair.
        let taken = self
            .ps(&format!(
                "@(Hyper-V\\Get-VM -Name {} -ErrorAction SilentlyContinue).Count",
                quote(&dir.name)
            ))
            .await?;
        if taken.trim() != "0" {
            return Err(name_taken(&dir.name));
        }
        let iso = iso_of(spec)?;
        let mut state = HyperVState {
            vm_name: dir.name.clone(),
            vm_id: None,
            iso: Some(iso.clone()),
            config_disk_id: rand::random(),
            guest_ports: spec.guest_ports,
            address: None,
        };
        save(dir, &state)?;
        let result = self.build(dir, spec, &mut state, &iso).await;
        if let Err(error) = result {
            tracing::info!(%error, "Hyper-V VM creation failed; undoing it");
            // Without an Id (New-VM failed, timed out or answered oddly) the VM, if New-VM made
            // one, is the one of this name in the machine folder. Piped, so that no VM at all
            // is not an error.
            if let Err(e) = self
                .ps(&format!(
                    "{} | Hyper-V\\Remove-VM -Force",
                    find_vm(dir, &state)
                ))
                .await
            {
                tracing::warn!(error = %e, "could not remove the half-made VM");
            }
            if let Err(e) = remove_own_files(dir, &state.vm_name) {
                tracing::warn!(error = %e, "could not delete the driver's files");
            }
            return Err(error);
        }
        Ok(())
    }

    async fn build(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
        state: &mut HyperVState,
        iso: &Path,
    ) -> Result<(), DriverError> {
        let disk = path_q(&dir.file(DISK));
        self.ps(&format!(
            "Hyper-V\\New-VHD -Path {disk} -SizeBytes {}MB -Dynamic | Out-Null",
            self.disk_size(spec)
        ))
        .await?;
        self.write_config_drive(dir, spec, state)?;
        // Warnings (e.g. about the switch) would come first on stdout; the Id is the line that
        // reads as one anyway.
        let answer = self
            .ps(&format!(
                "(Hyper-V\\New-VM -Name {} -Path {} -Generation 2 -MemoryStartupBytes {}MB -SwitchName {} -WarningAction SilentlyContinue).Id.Guid",
                quote(&state.vm_name),
                path_q(dir.path()),
                self.memory(spec),
                quote(self.switch())
            ))
            .await?;
        let Some(id) = answer.lines().map(str::trim).find(|line| is_guid(line)) else {
            // The VM exists but its Id is unknown: the undo removes it by name and folder.
            return Err(DriverError::Protocol {
                machine: dir.name.clone(),
                channel: "Hyper-V",
                message: format!("New-VM answered {:?}, not the new VM's Id", answer.trim()),
            });
        };
        state.vm_id = Some(id.to_owned());
        save(dir, state)?;
        let vm = find_vm(dir, state);
        self.ps(&format!(
            "Hyper-V\\Set-VMProcessor -VM {vm} -Count {}",
            self.cpus(spec)
        ))
        .await?;
        self.ps(&format!(
            "Hyper-V\\Set-VMMemory -VM {vm} -DynamicMemoryEnabled ${}",
            !self.options.disable_dynamic_memory
        ))
        .await?;
        self.ps(&format!(
            "Hyper-V\\Add-VMDvdDrive -VM {vm} -Path {}",
            path_q(iso)
        ))
        .await?;
        self.ps(&format!(
            "Hyper-V\\Add-VMHardDiskDrive -VM {vm} -Path {disk}"
        ))
        .await?;
        self.ps(&format!(
            "Hyper-V\\Add-VMHardDiskDrive -VM {vm} -Path {}",
            path_q(&dir.file(CONFIG_VHD))
        ))
        .await?;
        self.ps(&format!(
            "Hyper-V\\Set-VMFirmware -VM {vm} -EnableSecureBoot Off -FirstBootDevice (Hyper-V\\Get-VMDvdDrive -VM {vm})"
        ))
        .await
        .map(drop)
    }

    /// Copies `config.img` into `config.vhd`; Hyper-V opens the file only when the VM starts.
    fn write_config_drive(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
        state: &HyperVState,
    ) -> Result<(), DriverError> {
        if !spec.config_drive.exists() {
            return Err(DriverError::MissingFile {
                what: "configuration drive",
                path: spec.config_drive.clone(),
            });
        }
        let path = dir.file(CONFIG_VHD);
        vhd::write_fixed(&spec.config_drive, &path, state.config_disk_id)
            .map(drop)
            .map_err(|e| io(dir, &path, e))
    }

    async fn start_inner(&self, dir: &MachineDir, spec: &VmSpec) -> Result<(), DriverError> {
        let mut state = load_required(dir)?;
        let vm = find_vm(dir, &state);
        match self.require_state(dir, &state).await? {
            VmState::Running | VmState::Starting => {}
            _ => {
                // `upgrade` hands over a new guest image: the DVD drive follows the spec.
                let iso = iso_of(spec)?;
                if state.iso.as_deref() != Some(iso.as_path()) {
                    self.ps(&format!(
                        "Hyper-V\\Get-VMDvdDrive -VM {vm} | Hyper-V\\Set-VMDvdDrive -Path {}",
                        path_q(&iso)
                    ))
                    .await?;
                    state.iso = Some(iso);
                    save(dir, &state)?;
                }
                self.write_config_drive(dir, spec, &state)?;
                self.ps(&format!("Hyper-V\\Start-VM -VM {vm}")).await?;
            }
        }
        let deadline = Instant::now() + self.address_timeout;
        let script = format!(
            "$mac = (Hyper-V\\Get-VMNetworkAdapter -VM {vm} | Select-Object -First 1).MacAddress; $dashed = $mac -replace '(..)(?!$)', '$1-'; Get-NetNeighbor -AddressFamily IPv4 -LinkLayerAddress $dashed -ErrorAction SilentlyContinue | Where-Object {{ $_.State -ne 'Unreachable' }} | ForEach-Object {{ $_.IPAddress }}"
        );
        loop {
            let out = self.ps(&script).await?;
            if let Some(address) = first_ipv4(&out) {
                state.address = Some(address);
                return save(dir, &state);
            }
            if Instant::now() >= deadline {
                return Err(DriverError::Timeout {
                    machine: dir.name.clone(),
                    what: "the VM's MAC address in the host's neighbour table (its DHCP lease)"
                        .to_owned(),
                    seconds: self.address_timeout.as_secs(),
                });
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    async fn stop_inner(&self, dir: &MachineDir, mode: StopMode) -> Result<(), DriverError> {
        let state = load_required(dir)?;
        let vm = find_vm(dir, &state);
        if matches!(
            self.require_state(dir, &state).await?,
            VmState::Stopped | VmState::Saved
        ) {
            return Ok(());
        }
        match mode {
            StopMode::Kill => self
                .ps(&format!("Hyper-V\\Stop-VM -VM {vm} -TurnOff -Force"))
                .await
                .map(drop),
            StopMode::Graceful { timeout } => {
                // Stop-VM asks the guest's shutdown integration service and returns once the
                // VM is off.
                let out = self
                    .ps_output(&format!("Hyper-V\\Stop-VM -VM {vm} -Force"), Some(timeout))
                    .await?;
                if out.timed_out {
                    return Err(DriverError::Timeout {
                        machine: dir.name.clone(),
                        what: "the guest to shut down (Stop-VM)".to_owned(),
                        seconds: timeout.as_secs(),
                    });
                }
                out.check(&self.program).map(drop)
            }
        }
    }

    async fn remove_inner(&self, dir: &MachineDir) -> Result<(), DriverError> {
        let Some(state) = load(dir)? else {
            return remove_own_files(dir, &dir.name);
        };
        let vm = find_vm(dir, &state);
        if let Some(hv_state) = self.vm_state(dir, &state).await? {
            if state_from_hyperv(&hv_state) != VmState::Stopped {
                self.ps(&format!("Hyper-V\\Stop-VM -VM {vm} -TurnOff -Force"))
                    .await?;
            }
            self.ps(&format!("Hyper-V\\Remove-VM -VM {vm} -Force"))
                .await?;
        }
        remove_own_files(dir, &state.vm_name)
    }
}

/// The machine state of a Hyper-V `VMState` name.
pub fn state_from_hyperv(value: &str) -> VmState {
    match value {
        "Running" => VmState::Running,
        "Off" => VmState::Stopped,
        "Paused" => VmState::Paused,
        "Saved" => VmState::Saved,
        "Starting" | "Resuming" | "Reset" => VmState::Starting,
        "Stopping" | "Saving" | "Pausing" => VmState::Stopping,
        _ => VmState::Error,
    }
}

fn is_true(out: &str) -> bool {
    out.lines().next().map(str::trim) == Some("True")
}

/// The first IPv4 address among `Get-NetNeighbor`'s output lines.
fn first_ipv4(out: &str) -> Option<Ipv4Addr> {
    out.lines().find_map(|l| match l.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if !ip.is_unspecified() && !ip.is_broadcast() => Some(ip),
        _ => None,
    })
}

/// A PowerShell expression for this machine's VM as an array (empty if there is none): by
/// its Id, else the VM of its name whose files lie in the machine directory.
fn find_vm(dir: &MachineDir, state: &HyperVState) -> String {
    match &state.vm_id {
        Some(id) => format!(
            "@(Hyper-V\\Get-VM -Id {} -ErrorAction SilentlyContinue)",
            quote(id)
        ),
        None => {
            let mut folder = dir.path().to_string_lossy().into_owned();
            folder.push(std::path::MAIN_SEPARATOR);
            // Both paths made full (no `..`, no short names) and compared case-insensitively,
            // as Windows does; the VM's own folder ends with a separator so that it counts too.
            format!(
                "@(Hyper-V\\Get-VM -Name {} -ErrorAction SilentlyContinue | Where-Object {{ ([IO.Path]::GetFullPath($_.Path).TrimEnd([IO.Path]::DirectorySeparatorChar) + [IO.Path]::DirectorySeparatorChar).StartsWith([IO.Path]::GetFullPath({}), [StringComparison]::OrdinalIgnoreCase) }})",
                quote(&state.vm_name),
                quote(&folder)
            )
        }
    }
}

/// Whether `text` is a GUID in its usual 8-4-4-4-12 form.
fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

fn gone(state: &HyperVState) -> DriverError {
    let vm = &state.vm_name;
    let which = match &state.vm_id {
        Some(id) => format!("VM {vm:?} (Id {id})"),
        None => format!("VM named {vm:?}"),
    };
    DriverError::Protocol {
        machine: vm.clone(),
        channel: "Hyper-V",
        message: format!(
            "Hyper-V has no {which} (removed outside rmachine?); `rmachine rm` removes the machine"
        ),
    }
}

fn name_taken(vm: &str) -> DriverError {
    DriverError::Protocol {
        machine: vm.to_owned(),
        channel: "Hyper-V",
        message: format!(
            "Hyper-V already has a VM named {vm:?} that this machine did not create; remove or rename that VM, or choose another machine name"
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

fn io(dir: &MachineDir, path: &Path, source: std::io::Error) -> DriverError {
    DriverError::Io {
        machine: dir.name.clone(),
        path: path.to_path_buf(),
        source,
    }
}

fn load(dir: &MachineDir) -> Result<Option<HyperVState>, DriverError> {
    rmachine_driver::state_file::load(dir, SAVED)
}

fn load_required(dir: &MachineDir) -> Result<HyperVState, DriverError> {
    rmachine_driver::state_file::load_required(dir, SAVED, "hyperv")
}

fn save(dir: &MachineDir, state: &HyperVState) -> Result<(), DriverError> {
    rmachine_driver::state_file::save(dir, SAVED, state)
}

/// Deletes what this driver may have made in the machine directory, and nothing else.
fn remove_own_files(dir: &MachineDir, vm: &str) -> Result<(), DriverError> {
    for name in [DISK, CONFIG_VHD, "config.vhd.tmp", SAVED, "hyperv.json.tmp"] {
        let path = dir.file(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(dir, &path, e)),
        }
    }
    // Hyper-V's folder for the VM (`New-VM -Path`); only a plain name is ever joined.
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

impl Driver for HyperVDriver {
    fn info(&self) -> DriverInfo {
        DriverInfo {
            name: DRIVER.to_owned(),
            capabilities: Capabilities {
                graceful_stop: true,
                pause: false,
                console_log: false,
                shares: false,
                // Our guest's init and SSH server: the host shares folders over SFTP.
                sftp_shares: true,
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
        let state = load_required(dir)?;
        self.require_state(dir, &state).await
    }

    async fn endpoints(&self, dir: &MachineDir) -> Result<Endpoints, DriverError> {
        let state = load_required(dir)?;
        let address = state.address.ok_or_else(|| DriverError::Protocol {
            machine: dir.name.clone(),
            channel: "Hyper-V",
            message: "the VM's address is not known yet (start the machine)".to_owned(),
        })?;
        Ok(Endpoints {
            ssh: SocketAddr::from((address, state.guest_ports.ssh)),
            engine: SocketAddr::from((address, state.guest_ports.engine)),
        })
    }
}

#[cfg(test)]
mod tests;
