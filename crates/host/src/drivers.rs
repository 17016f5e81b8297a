//! THE place drivers register: one closed enum of driver kinds, one enum of driver values.
//!
//! Adding a driver means a crate in `drivers/`, a variant in [`DriverKind`] and [`AnyDriver`],
//! and its options flattened into [`DriverOptions`]; the compiler then points at every `match`
//! that needs an arm. Names that are not built in are external drivers: `rmachine-driver-NAME`
//! programs on PATH ([`crate::external`]).

use rmachine_driver::{
    Driver, DriverError, DriverInfo, DriverShare, Endpoints, GuestClock, GuestNetwork, MachineDir,
    Resume, StopMode, VmSpec, VmState,
};
use rmachine_driver_generic::{GenericDriver, GenericOptions};
use rmachine_driver_hyperv::{HyperVDriver, HyperVOptions};
use rmachine_driver_qemu::{QemuDriver, QemuOptions};
use rmachine_driver_virtualbox::{VirtualBoxDriver, VirtualBoxOptions};
use serde::{Deserialize, Serialize};

use crate::external::{self, ExternalDriver};

/// What can go wrong choosing a driver.
#[derive(Debug, thiserror::Error)]
pub enum DriversError {
    /// No driver of this name.
    #[error("Driver \"{name}\" not found. Available drivers: {}", available.join(", "))]
    NotFound {
        /// The name asked for.
        name: String,
        /// The drivers built in, then those on PATH.
        available: Vec<String>,
    },
    /// A machine record's driver options do not parse.
    #[error("the {driver} driver options of machine {machine:?} are invalid")]
    BadOptions {
        /// The driver.
        driver: String,
        /// The machine.
        machine: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// The drivers built into rmachine.
#[derive(clap::ValueEnum, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// QEMU (KVM, HVF, WHPX or TCG).
    #[default]
    Qemu,
    /// VirtualBox, through VBoxManage.
    Virtualbox,
    /// Hyper-V, through PowerShell.
    Hyperv,
    /// An existing Linux host reached over SSH.
    Generic,
}

impl DriverKind {
    /// The name users pass to `create -d`.
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Qemu => "qemu",
            DriverKind::Virtualbox => "virtualbox",
            DriverKind::Hyperv => "hyperv",
            DriverKind::Generic => "generic",
        }
    }

    /// The driver called `name`.
    pub fn from_name(name: &str) -> Result<Self, DriversError> {
        <Self as clap::ValueEnum>::value_variants()
            .iter()
            .copied()
            .find(|k| k.name() == name)
            .ok_or_else(|| DriversError::NotFound {
                name: name.to_string(),
                available: available(),
            })
    }
}

/// Every driver name `create -d` accepts now: the built-in ones, then the external ones on
/// PATH that do not shadow a built-in one.
pub fn available() -> Vec<String> {
    let builtin: Vec<String> = <DriverKind as clap::ValueEnum>::value_variants()
        .iter()
        .map(|k| k.name().to_string())
        .collect();
    let plugins = external::available()
        .into_iter()
        .filter(|name| !builtin.contains(name));
    builtin.iter().cloned().chain(plugins).collect()
}

/// A driver chosen by name: built in, or an external program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverChoice {
    /// A driver compiled into rmachine.
    BuiltIn(DriverKind),
    /// `rmachine-driver-NAME` on PATH.
    External {
        /// The driver's name.
        name: String,
        /// The program.
        program: std::path::PathBuf,
    },
}

impl Default for DriverChoice {
    fn default() -> Self {
        DriverChoice::BuiltIn(DriverKind::default())
    }
}

impl DriverChoice {
    /// The driver called `name`: a built-in one first, else a program on PATH.
    pub fn from_name(name: &str) -> Result<Self, DriversError> {
        match DriverKind::from_name(name) {
            Ok(kind) => Ok(DriverChoice::BuiltIn(kind)),
            Err(not_found) => match external::find(name) {
                Some(program) => Ok(DriverChoice::External {
                    name: name.to_string(),
                    program,
                }),
                None => Err(not_found),
            },
        }
    }

    /// The driver's name.
    pub fn name(&self) -> &str {
        match self {
            DriverChoice::BuiltIn(kind) => kind.name(),
            DriverChoice::External { name, .. } => name,
        }
    }
}

/// Every driver's `create` flags, flattened; stored opaquely under `"Driver"` in
/// `config.json`.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone, Default)]
pub struct DriverOptions {
    /// `--qemu-*`.
    #[command(flatten)]
    #[serde(flatten)]
    pub qemu: QemuOptions,
    /// `--virtualbox-*`.
    #[command(flatten)]
    #[serde(flatten)]
    pub virtualbox: VirtualBoxOptions,
    /// `--hyperv-*`.
    #[command(flatten)]
    #[serde(flatten)]
    pub hyperv: HyperVOptions,
    /// `--generic-*`.
    #[command(flatten)]
    #[serde(flatten)]
    pub generic: GenericOptions,
    /// An external driver's flag values (its flags are discovered at run time).
    #[arg(skip)]
    #[serde(
        rename = "PluginOptions",
        default,
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub plugin: rmachine_driver::protocol::Options,
}

impl DriverOptions {
    /// The options as a JSON object, for the machine record.
    pub fn to_map(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        }
    }

    /// These options with every driver's but `driver`'s at their defaults. Another driver's
    /// values can only come from its environment variables here (a typed flag of another
    /// driver is refused where the command line is parsed), and docker-machine ignores those.
    pub fn only_for(&self, driver: &DriverChoice) -> DriverOptions {
        let own = match driver {
            DriverChoice::BuiltIn(kind) => Some(*kind),
            DriverChoice::External { .. } => None,
        };
        let keep = |kind: DriverKind| own == Some(kind);
        DriverOptions {
            qemu: if keep(DriverKind::Qemu) {
                self.qemu.clone()
            } else {
                QemuOptions::default()
            },
            virtualbox: if keep(DriverKind::Virtualbox) {
                self.virtualbox.clone()
            } else {
                VirtualBoxOptions::default()
            },
            hyperv: if keep(DriverKind::Hyperv) {
                self.hyperv.clone()
            } else {
                HyperVOptions::default()
            },
            generic: if keep(DriverKind::Generic) {
                self.generic.clone()
            } else {
                GenericOptions::default()
            },
            plugin: if own.is_none() {
                self.plugin.clone()
            } else {
                rmachine_driver::protocol::Options::new()
            },
        }
    }

    /// The options the record of a machine made with `choice` keeps: that driver's only
    /// (an external driver's flag values, not the built-in drivers' defaults).
    pub fn record_map(&self, choice: &DriverChoice) -> serde_json::Map<String, serde_json::Value> {
        let own = self.only_for(choice);
        match choice {
            // A generic machine keeps its own flags, not QEMU's defaults.
            DriverChoice::BuiltIn(DriverKind::Generic) => own
                .to_map()
                .into_iter()
                .filter(|(key, _)| key.starts_with("generic"))
                .collect(),
            DriverChoice::BuiltIn(_) => own.to_map(),
            DriverChoice::External { .. } => own
                .to_map()
                .into_iter()
                .filter(|(key, _)| key == "PluginOptions")
                .collect(),
        }
    }

    /// Options read back from a machine record (unknown keys, such as the base fields
    /// stored beside them, are ignored).
    pub fn from_map(
        driver: &str,
        machine: &str,
        map: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, DriversError> {
        serde_json::from_value(serde_json::Value::Object(map.clone())).map_err(|source| {
            DriversError::BadOptions {
                driver: driver.to_string(),
                machine: machine.to_string(),
                source,
            }
        })
    }
}

/// One driver, whichever it is.
pub enum AnyDriver {
    /// QEMU.
    Qemu(QemuDriver),
    /// VirtualBox.
    Virtualbox(VirtualBoxDriver),
    /// Hyper-V.
    Hyperv(HyperVDriver),
    /// An existing host over SSH.
    Generic(GenericDriver),
    /// An external driver.
    External(ExternalDriver),
}

impl AnyDriver {
    /// The driver of `kind` configured with `options`.
    pub fn new(kind: DriverKind, options: &DriverOptions) -> Self {
        match kind {
            DriverKind::Qemu => AnyDriver::Qemu(QemuDriver::new(options.qemu.clone())),
            DriverKind::Virtualbox => {
                AnyDriver::Virtualbox(VirtualBoxDriver::new(options.virtualbox.clone()))
            }
            DriverKind::Hyperv => AnyDriver::Hyperv(HyperVDriver::new(options.hyperv.clone())),
            DriverKind::Generic => AnyDriver::Generic(GenericDriver::new(options.generic.clone())),
        }
    }

    /// The driver `choice` configured with `options`; an external one is started once to
    /// check that it speaks the protocol.
    pub fn choose(choice: &DriverChoice, options: &DriverOptions) -> Result<Self, DriverError> {
        match choice {
            DriverChoice::BuiltIn(kind) => Ok(Self::new(*kind, options)),
            DriverChoice::External { name, program } => Ok(AnyDriver::External(
                ExternalDriver::open(name, program, options.plugin.clone())?,
            )),
        }
    }
}

impl Driver for AnyDriver {
    fn info(&self) -> DriverInfo {
        match self {
            AnyDriver::Qemu(d) => d.info(),
            AnyDriver::Virtualbox(d) => d.info(),
            AnyDriver::Hyperv(d) => d.info(),
            AnyDriver::Generic(d) => d.info(),
            AnyDriver::External(d) => d.info(),
        }
    }

    async fn precheck(&self, spec: &VmSpec) -> Result<(), DriverError> {
        match self {
            AnyDriver::Qemu(d) => d.precheck(spec).await,
            AnyDriver::Virtualbox(d) => d.precheck(spec).await,
            AnyDriver::Hyperv(d) => d.precheck(spec).await,
            AnyDriver::Generic(d) => d.precheck(spec).await,
            AnyDriver::External(d) => d.precheck(spec).await,
        }
    }

    async fn create(&self, dir: &MachineDir, spec: &VmSpec) -> Result<(), DriverError> {
        match self {
            AnyDriver::Qemu(d) => d.create(dir, spec).await,
            AnyDriver::Virtualbox(d) => d.create(dir, spec).await,
            AnyDriver::Hyperv(d) => d.create(dir, spec).await,
            AnyDriver::Generic(d) => d.create(dir, spec).await,
            AnyDriver::External(d) => d.create(dir, spec).await,
        }
    }

    async fn start(&self, dir: &MachineDir, spec: &VmSpec) -> Result<(), DriverError> {
        match self {
            AnyDriver::Qemu(d) => d.start(dir, spec).await,
            AnyDriver::Virtualbox(d) => d.start(dir, spec).await,
            AnyDriver::Hyperv(d) => d.start(dir, spec).await,
            AnyDriver::Generic(d) => d.start(dir, spec).await,
            AnyDriver::External(d) => d.start(dir, spec).await,
        }
    }

    async fn stop(&self, dir: &MachineDir, mode: StopMode) -> Result<(), DriverError> {
        match self {
            AnyDriver::Qemu(d) => d.stop(dir, mode).await,
            AnyDriver::Virtualbox(d) => d.stop(dir, mode).await,
            AnyDriver::Hyperv(d) => d.stop(dir, mode).await,
            AnyDriver::Generic(d) => d.stop(dir, mode).await,
            AnyDriver::External(d) => d.stop(dir, mode).await,
        }
    }

    async fn remove(&self, dir: &MachineDir) -> Result<(), DriverError> {
        match self {
            AnyDriver::Qemu(d) => d.remove(dir).await,
            AnyDriver::Virtualbox(d) => d.remove(dir).await,
            AnyDriver::Hyperv(d) => d.remove(dir).await,
            AnyDriver::Generic(d) => d.remove(dir).await,
            AnyDriver::External(d) => d.remove(dir).await,
        }
    }

    async fn save(&self, dir: &MachineDir, spec: &VmSpec) -> Result<(), DriverError> {
        match self {
            AnyDriver::Qemu(d) => d.save(dir, spec).await,
            AnyDriver::Virtualbox(d) => d.save(dir, spec).await,
            AnyDriver::Hyperv(d) => d.save(dir, spec).await,
            AnyDriver::Generic(d) => d.save(dir, spec).await,
            AnyDriver::External(d) => d.save(dir, spec).await,
        }
    }

    async fn resume(&self, dir: &MachineDir, spec: &VmSpec) -> Result<Resume, DriverError> {
        match self {
            AnyDriver::Qemu(d) => d.resume(dir, spec).await,
            AnyDriver::Virtualbox(d) => d.resume(dir, spec).await,
            AnyDriver::Hyperv(d) => d.resume(dir, spec).await,
            AnyDriver::Generic(d) => d.resume(dir, spec).await,
            AnyDriver::External(d) => d.resume(dir, spec).await,
        }
    }

    async fn set_clock_after_resume(&self, dir: &MachineDir) -> GuestClock {
        match self {
            AnyDriver::Qemu(d) => d.set_clock_after_resume(dir).await,
            AnyDriver::Virtualbox(d) => d.set_clock_after_resume(dir).await,
            AnyDriver::Hyperv(d) => d.set_clock_after_resume(dir).await,
            AnyDriver::Generic(d) => d.set_clock_after_resume(dir).await,
            AnyDriver::External(d) => d.set_clock_after_resume(dir).await,
        }
    }

    async fn finish_resume(&self, dir: &MachineDir) -> Result<(), DriverError> {
        match self {
            AnyDriver::Qemu(d) => d.finish_resume(dir).await,
            AnyDriver::Virtualbox(d) => d.finish_resume(dir).await,
            AnyDriver::Hyperv(d) => d.finish_resume(dir).await,
            AnyDriver::Generic(d) => d.finish_resume(dir).await,
            AnyDriver::External(d) => d.finish_resume(dir).await,
        }
    }

    async fn state(&self, dir: &MachineDir) -> Result<VmState, DriverError> {
        match self {
            AnyDriver::Qemu(d) => d.state(dir).await,
            AnyDriver::Virtualbox(d) => d.state(dir).await,
            AnyDriver::Hyperv(d) => d.state(dir).await,
            AnyDriver::Generic(d) => d.state(dir).await,
            AnyDriver::External(d) => d.state(dir).await,
        }
    }

    fn guest_network(&self) -> Option<GuestNetwork> {
        match self {
            AnyDriver::Qemu(d) => d.guest_network(),
            AnyDriver::Virtualbox(_)
            | AnyDriver::Hyperv(_)
            | AnyDriver::Generic(_)
            | AnyDriver::External(_) => None,
        }
    }

    fn guest_arch(&self) -> Option<&'static str> {
        match self {
            AnyDriver::Qemu(d) => Driver::guest_arch(d),
            AnyDriver::Virtualbox(_)
            | AnyDriver::Hyperv(_)
            | AnyDriver::Generic(_)
            | AnyDriver::External(_) => None,
        }
    }

    fn driver_share(&self) -> Result<Option<DriverShare>, DriverError> {
        match self {
            AnyDriver::Virtualbox(d) => d.driver_share(),
            AnyDriver::Qemu(_)
            | AnyDriver::Hyperv(_)
            | AnyDriver::Generic(_)
            | AnyDriver::External(_) => Ok(None),
        }
    }

    fn machine_boots_fast_boot_files(&self, dir: &MachineDir) -> bool {
        match self {
            AnyDriver::Qemu(d) => d.machine_boots_fast_boot_files(dir),
            AnyDriver::Virtualbox(d) => d.machine_boots_fast_boot_files(dir),
            AnyDriver::Hyperv(d) => d.machine_boots_fast_boot_files(dir),
            AnyDriver::Generic(d) => d.machine_boots_fast_boot_files(dir),
            AnyDriver::External(d) => d.machine_boots_fast_boot_files(dir),
        }
    }

    fn resident_bytes(&self, dir: &MachineDir) -> Option<u64> {
        match self {
            AnyDriver::Qemu(d) => d.resident_bytes(dir),
            AnyDriver::Virtualbox(_)
            | AnyDriver::Hyperv(_)
            | AnyDriver::Generic(_)
            | AnyDriver::External(_) => None,
        }
    }

    async fn endpoints(&self, dir: &MachineDir) -> Result<Endpoints, DriverError> {
        match self {
            AnyDriver::Qemu(d) => d.endpoints(dir).await,
            AnyDriver::Virtualbox(d) => d.endpoints(dir).await,
            AnyDriver::Hyperv(d) => d.endpoints(dir).await,
            AnyDriver::Generic(d) => d.endpoints(dir).await,
            AnyDriver::External(d) => d.endpoints(dir).await,
        }
    }

    fn ssh_login(&self, dir: &MachineDir) -> Option<rmachine_driver::SshLogin> {
        match self {
            AnyDriver::Generic(d) => d.ssh_login(dir),
            AnyDriver::Qemu(_)
            | AnyDriver::Virtualbox(_)
            | AnyDriver::Hyperv(_)
            | AnyDriver::External(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_and_unknown_names_say_so() {
        assert_eq!(DriverKind::from_name("qemu").unwrap(), DriverKind::Qemu);
        assert_eq!(
            DriverKind::from_name("bogus").unwrap_err().to_string(),
            "Driver \"bogus\" not found. Available drivers: qemu, virtualbox, hyperv, generic"
        );
    }

    #[test]
    fn another_drivers_options_are_ignored() {
        let mut options = DriverOptions::default();
        options.virtualbox.memory = Some(2048);
        options.qemu.program = Some("/opt/qemu".into());
        let vbox = options.only_for(&DriverChoice::BuiltIn(DriverKind::Virtualbox));
        assert_eq!(vbox.virtualbox.memory, Some(2048));
        assert_eq!(vbox.qemu, QemuOptions::default());
        let qemu = options.only_for(&DriverChoice::BuiltIn(DriverKind::Qemu));
        assert_eq!(qemu.virtualbox, VirtualBoxOptions::default());
        let map = options.record_map(&DriverChoice::BuiltIn(DriverKind::Qemu));
        assert!(!map.contains_key("virtualboxMemory"), "{map:?}");
        assert_eq!(map["qemuProgram"], "/opt/qemu");
    }

    #[test]
    fn options_round_trip_through_a_record_map() {
        let options = DriverOptions::default();
        let mut map = options.to_map();
        map.insert("IPAddress".into(), serde_json::json!("127.0.0.1"));
        let back = DriverOptions::from_map("qemu", "m", &map).unwrap();
        assert_eq!(
            serde_json::to_value(back).unwrap(),
            serde_json::to_value(options).unwrap()
        );
    }
}
