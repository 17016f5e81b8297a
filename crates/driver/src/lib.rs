//! The hypervisor driver contract: the Driver trait, VM spec, states, errors and the
//! CommandRunner seam.
//!
//! A driver turns a [`VmSpec`] into a running VM and reports its state and endpoints. It knows
//! nothing of certificates, SSH or the engine: `rmachine-host` prepares every file the VM needs
//! (guest kernel and initrd, configuration drive) and hands the driver their paths.
#![warn(missing_docs)]

pub mod protocol;
pub mod runner;
pub mod state_file;
pub mod vhd;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The directory of one machine in the store (`machines/NAME`); drivers keep their files here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineDir {
    /// The machine's name.
    pub name: String,
    /// Absolute path of `machines/NAME`.
    pub path: PathBuf,
}

impl MachineDir {
    /// A machine directory for `name` at `path`.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
        }
    }

    /// Path of a file inside the machine directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The machine directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The guest image a VM boots: a kernel and an initramfs with the kernel command line the guest
/// build recorded in its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootImage {
    /// Kernel image (bzImage / vmlinuz, or an uncompressed ELF vmlinux).
    pub kernel: PathBuf,
    /// Initramfs holding rmachine-init, the engine and busybox.
    pub initrd: PathBuf,
    /// Kernel command line from the guest manifest; drivers may append to it.
    pub cmdline: String,
    /// The guest's CPU architecture from its manifest (`x86_64`, `aarch64`); empty where it
    /// is unknown (machines recorded before it was). Drivers refuse to boot it on a VM of
    /// another architecture.
    #[serde(default)]
    pub arch: String,
    /// Bootable ISO holding the same kernel, initramfs and command line (BIOS and UEFI), for
    /// hypervisors that cannot boot a kernel directly (VirtualBox, Hyper-V); `None` for guest
    /// images built before the ISO existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iso: Option<PathBuf>,
    /// The same kernel uncompressed (ELF with a PVH entry point, x86_64; the host extracts it
    /// from the bzImage once per image), which QEMU's `microvm` boots without the guest
    /// unpacking it; `None` for images without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_elf: Option<PathBuf>,
    /// The initramfs uncompressed (the host unpacks it once per image), which QEMU's x86_64
    /// `microvm` loads so the guest does not spend seconds unpacking it; `None` for machines
    /// recorded before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_uncompressed: Option<PathBuf>,
    /// What the image's init can do that a driver checks before relying on it (the
    /// manifest's `features`, e.g. [`FEATURE_VIRTIO_FS_HOTPLUG`]); empty for older images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

/// A guest image feature: its init loads `virtio_pci` when the machine has a PCI hot-plug slot
/// and waits for virtio-fs devices plugged in after boot before it mounts the shares.
pub const FEATURE_VIRTIO_FS_HOTPLUG: &str = "virtio-fs-hotplug";

/// What the host asks a driver to build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmSpec {
    /// Number of virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Size of the data disk in MB (docker-machine's `--*-disk-size` unit).
    pub disk_size_mb: u64,
    /// The guest to boot.
    pub boot: BootImage,
    /// The configuration drive image (`rmachine-guest-config`), attached read-only. The host
    /// rewrites it before every start.
    pub config_drive: PathBuf,
    /// Guest TCP ports the host must reach (SSH 22, engine 2376).
    pub guest_ports: GuestPorts,
    /// Host folders to export to the guest (absent in records made before shares existed).
    #[serde(default)]
    pub shares: Vec<Share>,
}

/// A folder a driver's own option shares in place of the home folder (VirtualBox's
/// `--virtualbox-share-folder DIR:NAME`); the host checks it like a `--share`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverShare {
    /// The option, as the user wrote it, for messages (`--virtualbox-share-folder /a:b`).
    pub flag: String,
    /// The host folder, as given (a relative one is taken from the current directory).
    pub host_path: PathBuf,
    /// Where the guest mounts it; `None`: at the host folder's own path, as `--share HOST`.
    pub guest_path: Option<String>,
}

/// A host folder the VM exports to the guest, which mounts it (the configuration drive lists
/// the same tags with their guest paths).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Share {
    /// The export's name on the hypervisor (virtio-9p `mount_tag`, at most 31 bytes).
    pub tag: String,
    /// The folder on the host, absolute.
    pub host_path: PathBuf,
    /// Where the guest mounts it, absolute.
    pub guest_path: String,
    /// Exported read-only.
    #[serde(default)]
    pub read_only: bool,
    /// The device that carries it, chosen at `create` (absent in records made before
    /// virtio-fs existed: 9p).
    #[serde(default)]
    pub transport: ShareTransport,
}

/// How a hypervisor exports a host folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareTransport {
    /// virtio-9p, served by the hypervisor itself.
    #[default]
    #[serde(rename = "9p")]
    NineP,
    /// virtio-fs, served by a virtiofsd daemon per share.
    #[serde(rename = "virtiofs")]
    VirtioFs,
    /// SFTP over the machine's SSH connection, served by the host's port agent and mounted by
    /// the guest with FUSE: no hypervisor device, so the driver has nothing to export.
    #[serde(rename = "sftp")]
    Sftp,
}

impl std::fmt::Display for ShareTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ShareTransport::NineP => "9p",
            ShareTransport::VirtioFs => "virtiofs",
            ShareTransport::Sftp => "sftp",
        })
    }
}

impl Share {
    /// The tag of the share at `index` in [`VmSpec::shares`].
    pub fn tag_for(index: usize) -> String {
        format!("rmshare{index}")
    }
}

/// Guest TCP ports that must be reachable from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestPorts {
    /// The guest's SSH server.
    pub ssh: u16,
    /// The engine's TLS port.
    pub engine: u16,
}

impl Default for GuestPorts {
    fn default() -> Self {
        Self {
            ssh: 22,
            engine: 2376,
        }
    }
}

/// Machine states, as docker-machine names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// The VM exists and runs.
    Running,
    /// Paused by the hypervisor.
    Paused,
    /// Saved to disk by the hypervisor.
    Saved,
    /// Not running.
    Stopped,
    /// Shutting down.
    Stopping,
    /// Booting.
    Starting,
    /// The hypervisor reports a failure.
    Error,
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            VmState::Running => "Running",
            VmState::Paused => "Paused",
            VmState::Saved => "Saved",
            VmState::Stopped => "Stopped",
            VmState::Stopping => "Stopping",
            VmState::Starting => "Starting",
            VmState::Error => "Error",
        };
        f.write_str(name)
    }
}

/// How to stop a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Ask the guest to power off (ACPI power button); wait up to the timeout, then fail.
    Graceful {
        /// How long to wait for the guest to power off.
        timeout: std::time::Duration,
    },
    /// Pull the plug.
    Kill,
}

/// Host-reachable addresses of the guest's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// Where the host reaches guest TCP 22.
    pub ssh: SocketAddr,
    /// Where the host reaches the engine's TLS port.
    pub engine: SocketAddr,
}

/// Optional abilities; the host adapts to these, never to driver names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// `stop(Graceful)` works (the hypervisor can press the ACPI power button).
    pub graceful_stop: bool,
    /// The VM can be paused and resumed.
    pub pause: bool,
    /// The guest console is captured to `console.log` in the machine directory.
    pub console_log: bool,
    /// Host folders can be exported to the guest ([`VmSpec::shares`]); a driver without this
    /// MUST refuse a spec with shares.
    #[serde(default)]
    pub shares: bool,
    /// The guest runs rmachine's own init and SSH server, so the host can share folders over
    /// the SSH connection ([`ShareTransport::Sftp`]) where the driver has no device for them
    /// ([`Capabilities::shares`] false) or the user chose it. The driver never sees those
    /// shares: they are left out of the [`VmSpec`] it is given.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sftp_shares: bool,
    /// Shares that are not read-only are exported over virtio-fs
    /// ([`ShareTransport::VirtioFs`]): the driver found a virtiofsd that can serve them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub virtio_fs: bool,
    /// The machine is an existing host, not a VM: no guest image is booted, the engine's
    /// certificates are installed from the configuration drive by the driver itself,
    /// published ports appear on that host (no port agent), and SSH logs in as
    /// [`Driver::ssh_login`] says.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub existing_host: bool,
    /// [`Driver::save`] writes the running VM's state beside its disk and [`Driver::resume`]
    /// continues from it (`rmachine stop --save`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub save_state: bool,
    /// The driver boots the fast-boot forms of the guest image ([`BootImage::kernel_elf`],
    /// [`BootImage::initrd_uncompressed`]), so the host derives them at `create`/`upgrade`;
    /// without it the host spends no time deriving files the VM never loads.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fast_boot_files: bool,
}

/// What [`Driver::resume`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// The VM runs again from its saved state (its clock still stands where it was: see
    /// [`Driver::set_clock_after_resume`]).
    Resumed,
    /// There is no saved state: the host boots the VM.
    NoSavedState,
    /// A saved state existed but could not be used (the reason says why); it is gone, the data
    /// disk is as the save left it, and the host boots the VM.
    Discarded {
        /// Why the state was not used, for the user.
        reason: String,
    },
}

/// What [`Driver::set_clock_after_resume`] did with the guest's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestClock {
    /// The driver set it from the host's.
    Set,
    /// The driver has no way to: the host sets it (over SSH).
    LeftToHost,
    /// The driver's channel to the guest is there but setting the clock failed; the host must
    /// not set it another way (a late request on that channel could set it back).
    NotSet {
        /// Why, for the user.
        reason: String,
    },
}

/// Who SSH logs in as on a machine whose login the user chose (an existing host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshLogin {
    /// The user name.
    pub user: String,
    /// The user's private key.
    pub key: PathBuf,
}

/// A static IPv4 configuration of the guest's NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNetwork {
    /// Address with prefix length, e.g. `10.0.2.15/24`.
    pub address: String,
    /// Default gateway.
    pub gateway: String,
    /// DNS server.
    pub dns: String,
}

/// Name and capabilities of a driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriverInfo {
    /// The name users pass to `create -d`.
    pub name: String,
    /// Optional abilities.
    pub capabilities: Capabilities,
}

/// What can go wrong in a driver. Every variant names the machine or the thing that failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The hypervisor program is not installed or not runnable.
    #[error("{program} not found: {hint}")]
    MissingProgram {
        /// The program that was looked for.
        program: String,
        /// What to install.
        hint: String,
    },
    /// An external command failed.
    #[error("{program} failed (exit status {status}): {stderr}")]
    CommandFailed {
        /// The program that ran.
        program: String,
        /// Its exit status, or -1 if it was killed.
        status: i32,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// A file in the machine directory could not be read or written.
    #[error("machine {machine:?}: cannot access {path}")]
    Io {
        /// The machine.
        machine: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The operation needs the VM in another state.
    #[error("machine {machine:?} is {state}, {op} needs it {wanted}")]
    WrongState {
        /// The machine.
        machine: String,
        /// Its current state.
        state: VmState,
        /// What was asked.
        op: &'static str,
        /// The state `op` needs.
        wanted: &'static str,
    },
    /// A wait ran out of time.
    #[error("machine {machine:?}: timed out after {seconds}s waiting for {what}")]
    Timeout {
        /// The machine.
        machine: String,
        /// What was waited for.
        what: String,
        /// How long.
        seconds: u64,
    },
    /// The hypervisor's control channel (QMP, VBoxManage output…) said something unexpected.
    #[error("machine {machine:?}: {channel}: {message}")]
    Protocol {
        /// The machine.
        machine: String,
        /// Which channel.
        channel: &'static str,
        /// What was wrong.
        message: String,
    },
    /// The daemon that serves a share to the VM (virtiofsd) did not come up, or the
    /// hypervisor did not take the device that connects the VM to it.
    #[error("machine {machine:?}: {share}: {message}")]
    ShareDaemon {
        /// The machine.
        machine: String,
        /// The share: `share TAG (HOST FOLDER)`; kept to two strings so that every error
        /// that carries a `DriverError` stays small.
        share: String,
        /// What went wrong, with the daemon's own words.
        message: Box<str>,
    },
    /// This driver cannot do this, on this host or at all.
    #[error("driver {driver} does not support {op}")]
    Unsupported {
        /// The driver's name.
        driver: String,
        /// The operation.
        op: String,
    },
    /// A file the VM needs (guest kernel, initrd, configuration drive) is missing.
    #[error("{what} {path} does not exist")]
    MissingFile {
        /// What the file is for.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The driver options are invalid; every problem is listed.
    #[error("invalid {driver} options: {}", problems.join("; "))]
    InvalidOptions {
        /// The driver's name.
        driver: String,
        /// Each problem found.
        problems: Vec<String>,
    },
    /// An external driver (`rmachine-driver-NAME`) failed, crashed or broke the protocol.
    #[error("driver {driver}: {message}")]
    Plugin {
        /// The driver's name.
        driver: String,
        /// What went wrong, in one line.
        message: String,
    },
}

/// A hypervisor backend: turns a [`VmSpec`] into a running VM and reports on it.
///
/// Methods are idempotent where stated; the host serialises calls per machine (it holds the
/// machine's lock), so a driver need not guard against concurrent calls on one machine.
pub trait Driver: Send + Sync {
    /// Name and capabilities; the host adapts to `Capabilities`, never to driver names.
    fn info(&self) -> DriverInfo;

    /// Checks that this host can run the driver (binary present, accelerator usable).
    /// Runs before anything is written to the store, and writes nothing.
    fn precheck(&self, spec: &VmSpec) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Creates disks and the VM definition under `dir`. Does not start the VM.
    /// MUST succeed on a VM that already exists (and then change nothing).
    fn create(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Boots the VM. MUST succeed if it is already running. Returns once the hypervisor runs
    /// the VM; the host then waits for the engine itself.
    fn start(
        &self,
        dir: &MachineDir,
        spec: &VmSpec,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Stops the VM and returns when it no longer runs. MUST succeed if it is already stopped.
    fn stop(
        &self,
        dir: &MachineDir,
        mode: StopMode,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Saves the running VM's state (memory and devices) beside its data disk and stops it;
    /// the next [`Driver::resume`] continues from there, and any other boot discards the state
    /// (the disk moves on without it). Only for drivers with [`Capabilities::save_state`].
    fn save(
        &self,
        dir: &MachineDir,
        _spec: &VmSpec,
    ) -> impl Future<Output = Result<(), DriverError>> + Send {
        let err = DriverError::Unsupported {
            driver: self.info().name,
            op: format!("saving the state of machine {}", dir.name),
        };
        std::future::ready(Err(err))
    }

    /// Continues a stopped VM from the state [`Driver::save`] wrote, if there is one and it
    /// still fits the VM (`spec`, the hypervisor's version); otherwise removes it and says why.
    fn resume(
        &self,
        _dir: &MachineDir,
        _spec: &VmSpec,
    ) -> impl Future<Output = Result<Resume, DriverError>> + Send {
        std::future::ready(Ok(Resume::NoSavedState))
    }

    /// After [`Resume::Resumed`]: sets the guest's clock (it stands where it was at the save)
    /// from the host's, if the driver has a channel for that.
    fn set_clock_after_resume(&self, _dir: &MachineDir) -> impl Future<Output = GuestClock> + Send {
        std::future::ready(GuestClock::LeftToHost)
    }

    /// After [`Resume::Resumed`], while the host waits for the guest: removes what the resume
    /// left behind (the loaded state, as big as the guest's memory).
    fn finish_resume(
        &self,
        _dir: &MachineDir,
    ) -> impl Future<Output = Result<(), DriverError>> + Send {
        std::future::ready(Ok(()))
    }

    /// Deletes everything `create` made. MUST succeed if the VM is already gone. Never touches
    /// files it did not create (certs, keys and config belong to the host).
    fn remove(&self, dir: &MachineDir) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// The VM's current state.
    fn state(&self, dir: &MachineDir) -> impl Future<Output = Result<VmState, DriverError>> + Send;

    /// Host-reachable addresses of guest TCP 22 and 2376 (forwarded or bridged). Legal once
    /// `create` succeeded; the addresses may change on `start`.
    fn endpoints(
        &self,
        dir: &MachineDir,
    ) -> impl Future<Output = Result<Endpoints, DriverError>> + Send;

    /// The guest NIC's address when the driver fixes it (user-mode networking with a known
    /// address plan): the host writes it into the configuration drive and the guest skips
    /// DHCP. `None`: the guest asks DHCP.
    fn guest_network(&self) -> Option<GuestNetwork> {
        None
    }

    /// Whether this machine boots the fast-boot files ([`Capabilities::fast_boot_files`]),
    /// from what the driver recorded for it at `create` (its machine type, which the
    /// driver's options no longer decide once the machine exists); before `create`, and for a
    /// driver that records nothing, the capability.
    fn machine_boots_fast_boot_files(&self, _dir: &MachineDir) -> bool {
        self.info().capabilities.fast_boot_files
    }

    /// Resident memory of the hypervisor process running this VM, in bytes, when the driver
    /// can tell (`rmachine inspect` shows it); `None` when the VM does not run.
    fn resident_bytes(&self, _dir: &MachineDir) -> Option<u64> {
        None
    }

    /// The data disk's image file on the host, when the driver keeps one there (`rmachine
    /// inspect` shows its allocated size); `None` when it cannot tell.
    fn data_disk_image(&self, _dir: &MachineDir) -> Option<PathBuf> {
        None
    }

    /// The user and key SSH logs in with once `create` succeeded, when the driver's options
    /// chose them; `None` means the host's own: root with the key it generated for the machine.
    fn ssh_login(&self, _dir: &MachineDir) -> Option<SshLogin> {
        None
    }

    /// The CPU architecture of the guest this driver boots (`x86_64`, `aarch64`), so the host
    /// looks up and downloads a guest image of that architecture; `None`: the host's own.
    fn guest_arch(&self) -> Option<&'static str> {
        None
    }

    /// The folder the driver's own options share instead of the home folder; `None`: the
    /// host's default (the home folder, or the `--share` list). A malformed option is
    /// [`DriverError::InvalidOptions`], which `create` lists with its other option problems;
    /// `create` refuses a share from a driver whose capabilities share nothing.
    fn driver_share(&self) -> Result<Option<DriverShare>, DriverError> {
        Ok(None)
    }
}
