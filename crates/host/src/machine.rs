//! The machine API: what `rmachine`'s commands do, for any front end.
//!
//! `create` validates every option first, runs the driver's precheck before writing anything,
//! then makes certificates, the SSH key and the configuration drive, has the driver build and
//! boot the VM, and waits until the engine answers over mutual TLS. If anything fails once the
//! machine directory exists, the half-made machine is removed (driver `remove`, then the
//! directory), so the store never keeps a machine that cannot work. Every command that changes
//! a machine holds its lock.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmachine_driver::{
    BootImage, Driver, DriverError, GuestClock, GuestPorts, MachineDir, Resume, ShareTransport,
    StopMode, VmSpec, VmState,
};
use rmachine_guest_config::report;
use rmachine_guest_config::timeline::{self, BootTimeline, HostMark, HostStage, Stage};
use rmachine_guest_config::{
    EngineConfig, GuestConfig, GuestConfigError, ShareFilesystem, ShareMount, StaticNetwork,
    TlsFiles, FORMAT_VERSION, INSTALL_TLS_COMMAND, INSTALL_TLS_UNKNOWN,
};
use serde_json::Value;

use crate::certs::{self, CertError, CertEvent};
use crate::context;
use crate::drivers::{AnyDriver, DriverChoice, DriverOptions, DriversError};
use crate::engine_check::{EngineCheckError, EngineClient};
use crate::env::{self, Shell};
use crate::external::PluginScope;
use crate::image::{self, DownloadEvent, ImageError, ImageSource};
use crate::portagent;
use crate::sftpshare::SftpShareState;
use crate::shares;
use crate::ssh::{self, SshError, SshSession};
use crate::store::{
    self, AuthOptions, DriverRecord, EngineOptions, HostOptions, MachineConfig, Store, StoreError,
    CONFIG_VERSION,
};
use crate::template::{self, TemplateError};

/// How long `create`, `start` and `restart` wait for the engine (TCG boots are slow).
pub const DEFAULT_ENGINE_TIMEOUT: Duration = Duration::from_secs(180);
/// How long `stop` waits for the guest to power off.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// The engine's port inside the guest.
pub const ENGINE_PORT: u16 = 2376;

/// What can go wrong in a machine command. Messages users see follow docker-machine's.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The store failed or the machine does not exist.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Unknown driver, or unreadable driver options.
    #[error(transparent)]
    Drivers(#[from] DriversError),
    /// `create` options are invalid; every problem is listed.
    #[error("{}", problems.join("\n"))]
    InvalidOptions {
        /// Each problem.
        problems: Vec<String>,
    },
    /// The machine's `create` is still running or was interrupted: only `rm`, `ls` and
    /// `inspect` act on it (the VM may be half made).
    #[error("machine {machine:?}: {}", unfinished_text(.machine, .running))]
    Unfinished {
        /// The machine.
        machine: String,
        /// Whether its `create` still runs (else it was interrupted).
        running: bool,
    },
    /// The driver's precheck failed; nothing was written (exit code 3).
    #[error("Error with pre-create check: \"{reason}\"")]
    Precheck {
        /// The driver's reason (quoted in the message, as docker-machine does).
        reason: DriverError,
    },
    /// A driver operation failed.
    #[error("machine {machine:?}: driver failed to {op}")]
    Driver {
        /// The machine.
        machine: String,
        /// What was asked.
        op: &'static str,
        /// The cause.
        #[source]
        source: DriverError,
    },
    /// Certificates could not be made or read.
    #[error("machine {machine:?}: certificates")]
    Certs {
        /// The machine.
        machine: String,
        /// The cause.
        #[source]
        source: CertError,
    },
    /// The store's CA or client certificate could not be made.
    #[error("cannot create the store's certificates")]
    Bootstrap(#[source] CertError),
    /// The SSH key or session failed.
    #[error("machine {machine:?}: ssh")]
    Ssh {
        /// The machine.
        machine: String,
        /// The cause.
        #[source]
        source: Box<SshError>,
    },
    /// No usable guest image.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The configuration drive could not be written.
    #[error("machine {machine:?}: cannot write the configuration drive {path}")]
    ConfigDrive {
        /// The machine.
        machine: String,
        /// The drive image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: GuestConfigError,
    },
    /// The machine must be running for this.
    #[error("Host is not running")]
    NotRunning {
        /// The machine.
        machine: String,
    },
    /// `ssh` on a machine that is not running.
    #[error("Error: Cannot run SSH command: Host \"{machine}\" is not running")]
    SshNotRunning {
        /// The machine.
        machine: String,
    },
    /// `start` on a running machine, `stop` on a stopped one.
    #[error("Machine \"{machine}\" is already {state}.")]
    AlreadyInState {
        /// The machine.
        machine: String,
        /// Its state, lowercased.
        state: String,
    },
    /// `stop --save` (or a machine made with `--save-on-stop`) of a machine whose state
    /// cannot be saved.
    #[error("machine \"{machine}\": cannot save its state: {reason}")]
    CannotSave {
        /// The machine.
        machine: String,
        /// Why not.
        reason: String,
    },
    /// The guest did not power off in time.
    #[error("machine \"{machine}\" did not stop within {seconds}s; run \"rmachine kill {machine}\" to force it off")]
    StopTimeout {
        /// The machine.
        machine: String,
        /// How long we waited.
        seconds: u64,
    },
    /// The engine did not answer after boot.
    #[error("the engine of machine \"{machine}\" did not answer{}: {}{}", last_stage_note(.last_stage, *.console_captured), error_chain(.cause.as_ref()), console_tail(.console))]
    EngineNotReady {
        /// The machine.
        machine: String,
        /// The last boot stage the guest reported on its console, if any.
        last_stage: Option<String>,
        /// Whether the driver captures the console (then no stage means the init never ran).
        console_captured: bool,
        /// The last lines of the guest console, when the driver captures it.
        console: Option<String>,
        /// The cause (in the message, before the console lines).
        cause: Box<EngineCheckError>,
    },
    /// The TLS check before `env`/`config` failed.
    #[error("Error checking TLS connection: {cause}")]
    TlsCheck {
        /// The machine.
        machine: String,
        /// The cause (in the message, as docker-machine prints it).
        cause: Box<MachineError>,
    },
    /// The guest at the machine's address shows an SSH host key other than the pinned one:
    /// the engine's new certificate and key were not sent to it.
    #[error(
        "machine \"{machine}\": the guest at its address is not the one whose SSH host key was \
         pinned, so its new engine certificate was not sent there; \
         if {machine}'s data disk was replaced on purpose, delete the pinned key and run the \
         command again, otherwise check what answers at its address"
    )]
    HostKeyChanged {
        /// The machine.
        machine: String,
        /// The SSH check that failed (the pin file, both fingerprints).
        #[source]
        source: Box<SshError>,
    },
    /// A new engine certificate could not be put in service in the running machine.
    #[error("machine \"{machine}\": the new engine certificate was not put in service: {reason}")]
    CertInstall {
        /// The machine.
        machine: String,
        /// Why not.
        reason: String,
    },
    /// The engine answered the TLS check with a failure. (docker-machine's text, less its
    /// warning that regenerating restarts docker: here a running machine takes the new
    /// certificate without a restart.)
    #[error("There was an error validating certificates for host \"{addr}\": {cause}\nYou can attempt to regenerate them using 'rmachine regenerate-certs [name]'.")]
    CertValidation {
        /// The engine address.
        addr: SocketAddr,
        /// The cause (in the message, as docker-machine prints it).
        cause: Box<EngineCheckError>,
    },
    /// A `--format` template failed.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The shell could not be determined.
    #[error(transparent)]
    Env(#[from] env::EnvError),
    /// No running machine matches `$DOCKER_HOST`.
    #[error("No active host found")]
    NoActiveHost,
    /// Interrupted by the user (Ctrl-C) during `create`.
    #[error("interrupted")]
    Interrupted,
    /// The port agent could not be started or stopped.
    #[error(transparent)]
    PortAgent(#[from] crate::portagent::PortAgentError),
}

/// `error: cause: cause…`, for errors whose message must end with something else.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn last_stage_note(stage: &Option<String>, console_captured: bool) -> String {
    match stage {
        Some(stage) => format!(" (the guest's last boot stage: {stage})"),
        None if console_captured => {
            " (the guest reported no boot stage: its init never started)".to_string()
        }
        None => String::new(),
    }
}

fn console_tail(console: &Option<String>) -> String {
    match console {
        Some(tail) if !tail.is_empty() => format!("; last lines of the guest console:\n{tail}"),
        _ => String::new(),
    }
}

impl MachineError {
    /// The process exit code docker-machine uses for this error (3 for a precheck failure).
    pub fn exit_code(&self) -> i32 {
        match self {
            MachineError::Precheck { .. } => 3,
            _ => 1,
        }
    }
}

/// One step of a long command, for the front end to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Making the store's CA.
    CreatingCa(PathBuf),
    /// Making the store's client certificate.
    CreatingClientCert(PathBuf),
    /// Running the driver's precheck.
    PreCreateChecks,
    /// Downloading the guest image into the cache.
    Download(DownloadEvent),
    /// Copying the guest image into the cache.
    ImportingImage {
        /// Image version.
        version: String,
        /// Where it comes from.
        from: PathBuf,
    },
    /// Making the machine directory and its files.
    CreatingMachine,
    /// Writing the machine's certificates.
    CopyingCerts,
    /// Handing a new engine certificate to the running machine (no restart).
    InstallingCertsLive,
    /// Making the SSH key.
    CreatingSshKey,
    /// Writing the configuration drive.
    WritingConfigDrive,
    /// The driver builds the VM (disk, definition).
    CreatingVm,
    /// The driver boots the VM.
    StartingVm,
    /// Waiting for the engine to answer over TLS.
    WaitingForEngine,
    /// The engine answered.
    EngineReady,
    /// A half-made machine is being removed after a failure.
    CleaningUp,
    /// `upgrade` stops the running machine.
    StoppingForUpgrade,
    /// `upgrade` swaps the guest image.
    Upgrading {
        /// The machine.
        machine: String,
        /// The guest image version it will boot.
        version: String,
    },
    /// `upgrade` boots the machine on the new image.
    StartingAfterUpgrade,
    /// `start` loads the state `stop --save` wrote.
    ResumingVm,
    /// `start` found a saved state it cannot use and boots afresh.
    ColdBoot {
        /// Why the saved state was not used.
        reason: String,
    },
    /// After a resume the guest's clock could not be set: it stands where it was at the save.
    ClockNotSet {
        /// Why.
        reason: String,
    },
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Progress::CreatingCa(path) => write!(f, "Creating CA: {}", path.display()),
            Progress::CreatingClientCert(path) => {
                write!(f, "Creating client certificate: {}", path.display())
            }
            Progress::PreCreateChecks => f.write_str("Running pre-create checks..."),
            Progress::Download(DownloadEvent::Started { url, .. }) => {
                write!(f, "Downloading {url}...")
            }
            Progress::Download(DownloadEvent::Advanced { done }) => {
                write!(f, "{done} bytes received")
            }
            Progress::Download(DownloadEvent::Finished) => f.write_str("Download checked"),
            Progress::ImportingImage { version, from } => write!(
                f,
                "Copying guest image {version} from {} to the cache...",
                from.display()
            ),
            Progress::CreatingMachine => f.write_str("Creating machine..."),
            Progress::CopyingCerts => {
                f.write_str("Copying certs to the local machine directory...")
            }
            Progress::InstallingCertsLive => f.write_str(
                "Installing the new certificate in the running machine (its containers keep running)...",
            ),
            Progress::CreatingSshKey => f.write_str("Creating SSH key..."),
            Progress::WritingConfigDrive => f.write_str("Writing the configuration drive..."),
            Progress::CreatingVm => f.write_str("Creating the VM..."),
            Progress::StartingVm => f.write_str("Starting the VM..."),
            Progress::WaitingForEngine => f.write_str("Waiting for the engine..."),
            Progress::EngineReady => f.write_str("Docker is up and running!"),
            Progress::CleaningUp => f.write_str("Removing the half-created machine..."),
            Progress::StoppingForUpgrade => f.write_str("Stopping machine to do the upgrade..."),
            Progress::Upgrading { machine, version } => {
                write!(
                    f,
                    "Upgrading machine \"{machine}\" to guest image {version}..."
                )
            }
            Progress::StartingAfterUpgrade => f.write_str("Starting machine back up..."),
            Progress::ResumingVm => f.write_str("Resuming the VM from its saved state..."),
            Progress::ColdBoot { reason } => write!(
                f,
                "The saved state was not used ({reason}); it was removed and the machine boots \
                 afresh (the data disk is as it was when the state was saved)"
            ),
            Progress::ClockNotSet { reason } => write!(
                f,
                "Warning: the guest's clock was not set after the resume ({reason}); it is \
                 behind by the time the machine was saved"
            ),
        }
    }
}

/// Options of `create`.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Which driver.
    pub driver: DriverChoice,
    /// Its options.
    pub driver_options: DriverOptions,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Data disk in MB.
    pub disk_size_mb: u64,
    /// `--guest-image PATH|URL`.
    pub guest_image: Option<ImageSource>,
    /// Where release guest images are downloaded from when no local one is found
    /// (`RMACHINE_GUEST_IMAGE_URL`, `{version}`/`{arch}` not yet expanded).
    pub guest_image_url: String,
    /// `--engine-label K=V`.
    pub engine_labels: Vec<String>,
    /// `--engine-insecure-registry`.
    pub engine_insecure_registries: Vec<String>,
    /// `--engine-registry-mirror`.
    pub engine_registry_mirrors: Vec<String>,
    /// `--engine-env K=V`.
    pub engine_env: Vec<String>,
    /// `--tls-san`.
    pub tls_san: Vec<String>,
    /// How long to wait for the engine after boot.
    pub engine_timeout: Duration,
    /// `--published-bind-address`: where published ports appear on the host (default:
    /// 127.0.0.1 and ::1).
    pub published_bind_address: Option<std::net::IpAddr>,
    /// `--share HOST[:GUEST][:ro]` values; none means the user's home folder.
    pub shares: Vec<String>,
    /// `--no-share`: no folder is shared, not even the home folder.
    pub no_share: bool,
    /// `--save-on-stop`: `stop` saves the running guest's state and `start` resumes it.
    pub save_on_stop: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            driver: DriverChoice::default(),
            driver_options: DriverOptions::default(),
            cpus: 1,
            memory_mb: 1024,
            disk_size_mb: 20000,
            guest_image: None,
            guest_image_url: image::DEFAULT_DOWNLOAD_URL.to_string(),
            engine_labels: Vec::new(),
            engine_insecure_registries: Vec::new(),
            engine_registry_mirrors: Vec::new(),
            engine_env: Vec::new(),
            tls_san: Vec::new(),
            engine_timeout: DEFAULT_ENGINE_TIMEOUT,
            published_bind_address: None,
            shares: Vec::new(),
            no_share: false,
            save_on_stop: false,
        }
    }
}

impl CreateOptions {
    /// Every problem with these options and `name`.
    fn problems(&self, name: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if store::validate_name(name).is_err() {
            problems.push(store::INVALID_NAME_MESSAGE.to_string());
        }
        if self.cpus == 0 {
            problems.push("--cpus must be at least 1".to_string());
        }
        if self.memory_mb < 128 {
            problems.push(format!(
                "--memory {} is too small: at least 128 MB",
                self.memory_mb
            ));
        }
        if self.disk_size_mb < 100 {
            problems.push(format!(
                "--disk-size {} is too small: at least 100 MB",
                self.disk_size_mb
            ));
        }
        for (flag, values) in [
            ("--engine-label", &self.engine_labels),
            ("--engine-env", &self.engine_env),
        ] {
            for value in values {
                if value.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
                    problems.push(format!("{flag} {value:?} is not KEY=VALUE"));
                } else if value.chars().any(char::is_control) {
                    // They end up in a config drive, a unit file or a shell script: a newline
                    // would start a new line there.
                    problems.push(format!("{flag} {value:?} holds a control character"));
                }
            }
        }
        for value in &self.engine_env {
            let key = value.split_once('=').map_or("", |(k, _)| k);
            let identifier = key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !key.is_empty() && !identifier {
                problems.push(format!(
                    "--engine-env {value:?}: {key:?} is not an environment variable name"
                ));
            }
        }
        for san in &self.tls_san {
            if san.is_empty() || san.contains(char::is_whitespace) {
                problems.push(format!(
                    "--tls-san {san:?} is not a host name or IP address"
                ));
            }
        }
        for registry in self
            .engine_insecure_registries
            .iter()
            .chain(&self.engine_registry_mirrors)
        {
            if registry.is_empty() || registry.contains(char::is_whitespace) {
                problems.push(format!("registry {registry:?} is not a valid address"));
            }
        }
        problems
    }
}

/// One row of `ls`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListEntry {
    /// Machine name.
    pub name: String,
    /// `*` when running and its URL is `$DOCKER_HOST`, else `-`.
    pub active: String,
    /// Driver name (`not found` when the record is unreadable).
    pub driver_name: String,
    /// State (`Running`, `Stopped`, `Error`, `Timeout`…).
    pub state: String,
    /// `tcp://127.0.0.1:PORT` when running.
    #[serde(rename = "URL")]
    pub url: String,
    /// Always empty: rmachine has no swarm mode.
    pub swarm: String,
    /// `vX` from the engine, or `Unknown`.
    pub docker_version: String,
    /// Why the row is incomplete.
    pub error: String,
    /// How long the query took.
    pub response_time: String,
}

fn driver_err<'a>(
    machine: &'a str,
    op: &'static str,
) -> impl FnOnce(DriverError) -> MachineError + 'a {
    move |source| MachineError::Driver {
        machine: machine.to_string(),
        op,
        source,
    }
}

/// The driver a machine record names, configured from its stored options.
pub fn driver_for(config: &MachineConfig) -> Result<AnyDriver, MachineError> {
    let choice = DriverChoice::from_name(&config.driver_name)?;
    let options = DriverOptions::from_map(choice.name(), &config.name, &config.driver.options)?;
    AnyDriver::choose(&choice, &options).map_err(driver_err(&config.name, "start its driver"))
}

/// `create` with the driver `options` selects.
pub async fn create(
    store: &Store,
    name: &str,
    options: &CreateOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<MachineConfig, MachineError> {
    let driver = AnyDriver::choose(
        &options.driver,
        &options.driver_options.only_for(&options.driver),
    )
    .map_err(|reason| MachineError::Precheck { reason })?;
    create_with(store, &driver, name, options, progress).await
}

/// `create` with a given driver (tests pass a fake).
#[tracing::instrument(skip_all, fields(machine = name))]
pub async fn create_with<D: Driver>(
    store: &Store,
    driver: &D,
    name: &str,
    options: &CreateOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<MachineConfig, MachineError> {
    let began = Instant::now();
    let mut problems = options.problems(name);
    let capabilities = driver.info().capabilities;
    let can_share = capabilities.shares || capabilities.sftp_shares;
    if !options.shares.is_empty() && !can_share {
        problems.push(format!(
            "--share: driver {} cannot share host folders",
            driver.info().name
        ));
    }
    if driver.info().capabilities.existing_host {
        // Options that size or wire a VM mean nothing on an existing host: refused, not dropped.
        let defaults = CreateOptions::default();
        for (flag, changed) in [
            ("--cpus", options.cpus != defaults.cpus),
            ("--memory", options.memory_mb != defaults.memory_mb),
            ("--disk-size", options.disk_size_mb != defaults.disk_size_mb),
            (
                "--published-bind-address",
                options.published_bind_address.is_some(),
            ),
        ] {
            if changed {
                problems.push(format!(
                    "{flag}: driver {} uses an existing host as it is",
                    driver.info().name
                ));
            }
        }
        // It gets the engine's own binaries, never a guest image.
        for (flag, changed) in [
            ("--guest-image", options.guest_image.is_some()),
            (
                "--guest-image-url",
                options.guest_image_url != defaults.guest_image_url,
            ),
        ] {
            if changed {
                problems.push(format!(
                    "{flag}: driver {} boots no guest image",
                    driver.info().name
                ));
            }
        }
    }
    // The home folder is shared by default only where the driver can share.
    let home = can_share.then(shares::home_dir).flatten();
    let cwd = std::env::current_dir().unwrap_or_default();
    let driver_share = match driver.driver_share() {
        Ok(share) => share,
        Err(DriverError::InvalidOptions { problems: more, .. }) => {
            problems.extend(more);
            None
        }
        Err(err) => {
            problems.push(err.to_string());
            None
        }
    };
    // A driver's folder takes the home folder's place only where the driver can share at all.
    let driver_share = driver_share.filter(|share| {
        if !can_share {
            problems.push(format!(
                "{}: driver {} cannot share host folders",
                share.flag,
                driver.info().name
            ));
        }
        can_share
    });
    let vm_shares = match shares::resolve(
        &options.shares,
        options.no_share,
        home.as_deref(),
        driver_share.as_ref(),
        &cwd,
    ) {
        Ok(mut list) => {
            shares::choose_transports(&mut list, &capabilities);
            list
        }
        Err(more) => {
            problems.extend(more);
            Vec::new()
        }
    };
    if options.save_on_stop {
        if let Some(reason) = save_refusal(&capabilities, &driver.info().name, &vm_shares, true) {
            problems.push(format!("--save-on-stop: {reason}"));
        }
    }
    if !problems.is_empty() {
        return Err(MachineError::InvalidOptions { problems });
    }
    if store.machine_path(name).exists() {
        return Err(StoreError::AlreadyExists {
            name: name.to_string(),
        }
        .into());
    }

    // An existing host boots no guest image: it gets the engine's own binaries instead.
    let existing_host = driver.info().capabilities.existing_host;
    let found = if existing_host {
        None
    } else {
        let arch = driver.guest_arch().unwrap_or(std::env::consts::ARCH);
        let dev_out = image::workspace_guest_out(arch);
        Some(
            image::find(
                options.guest_image.as_ref(),
                &image::expand_download_url(&options.guest_image_url, arch),
                &store.cache_dir(),
                dev_out.as_deref(),
                arch,
                &|event| progress(Progress::Download(event)),
            )
            .await?,
        )
    };
    let dir = store.machine_dir(name);
    let mut spec = VmSpec {
        cpus: options.cpus,
        memory_mb: options.memory_mb,
        disk_size_mb: options.disk_size_mb,
        boot: found.as_ref().map(|f| f.boot_image()).unwrap_or(BootImage {
            kernel: PathBuf::new(),
            initrd: PathBuf::new(),
            cmdline: String::new(),
            arch: String::new(),
            iso: None,
            kernel_elf: None,
            initrd_uncompressed: None,
            features: Vec::new(),
        }),
        config_drive: dir.file("config.img"),
        guest_ports: GuestPorts::default(),
        shares: vm_shares,
    };

    progress(Progress::PreCreateChecks);
    driver
        .precheck(&driver_spec(&spec))
        .await
        .map_err(|reason| MachineError::Precheck { reason })?;

    if let Some(found) = &found {
        if found.dir.parent() != Some(store.cache_dir().join("guest").as_path()) {
            progress(Progress::ImportingImage {
                version: found.manifest.version.clone(),
                from: found.dir.clone(),
            });
        }
        let cached = image::import(found, &store.cache_dir())?;
        spec.boot = boot_files(driver, &dir, &cached).await;
    }

    let certs_dir = store.certs_dir();
    let paths = certs::CertPaths::in_dir(&certs_dir);
    certs::bootstrap(&certs_dir, &mut |event| match event {
        CertEvent::CreatingCa => progress(Progress::CreatingCa(paths.ca.clone())),
        CertEvent::CreatingClient => progress(Progress::CreatingClientCert(paths.cert.clone())),
    })
    .map_err(MachineError::Bootstrap)?;

    progress(Progress::CreatingMachine);
    let dir = store.create_machine_dir(name)?;
    let lock = store.lock(name)?;
    let provisioned = tokio::select! {
        result = provision(store, driver, &dir, &spec, options, began, progress) => result,
        () = interrupted() => Err(MachineError::Interrupted),
    };
    match provisioned.and_then(|config| {
        store.finish_creating(name)?;
        Ok(config)
    }) {
        Ok(config) => Ok(config),
        Err(error) => {
            tracing::info!(%error, "create failed; removing the half-created machine");
            progress(Progress::CleaningUp);
            // A second signal during the undo means "stop now": the machine is left with its
            // creating marker, which `ls` reports and `rm` finishes.
            let removed = tokio::select! {
                removed = driver.remove(&dir) => removed,
                () = interrupted() => {
                    tracing::warn!("interrupted again while undoing create; leaving the machine for rm");
                    return Err(error);
                }
            };
            if let Err(e) = removed {
                tracing::warn!(error = %e, "driver could not remove the half-created VM");
            }
            drop(lock);
            if let Err(e) = store.remove_machine_dir(name) {
                tracing::warn!(error = %e, "could not delete the half-created machine directory");
            }
            Err(error)
        }
    }
}

/// The files the machine in `dir` boots from a cached image: the fast-boot forms are derived
/// (once per image) only for a machine that loads them (the driver's answer for that machine:
/// an existing one keeps the machine type it was created with); deriving costs a first
/// `create` about a second.
async fn boot_files<D: Driver>(
    driver: &D,
    dir: &MachineDir,
    cached: &image::GuestImage,
) -> BootImage {
    if driver.machine_boots_fast_boot_files(dir) {
        cached.boot_files().await
    } else {
        cached.boot_image()
    }
}

/// Resolves when the user or the system asks this process to end: Ctrl-C (SIGINT), on Unix
/// SIGTERM and SIGHUP (a closed terminal), on Windows Ctrl-Break and a closed console, so that
/// `create` can undo what it made.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut hup = signal(SignalKind::hangup()).ok();
        tokio::select! {
            result = tokio::signal::ctrl_c() => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "cannot watch for Ctrl-C");
                    std::future::pending::<()>().await;
                }
            }
            Some(()) = async { match term.as_mut() { Some(s) => s.recv().await, None => None } } => {}
            Some(()) = async { match hup.as_mut() { Some(s) => s.recv().await, None => None } } => {}
        }
    }
    #[cfg(windows)]
    {
        use tokio::signal::windows::{ctrl_break, ctrl_close};
        // Ctrl-Break and a closed console window end the process as Ctrl-C does.
        let mut brk = ctrl_break().ok();
        let mut close = ctrl_close().ok();
        tokio::select! {
            result = tokio::signal::ctrl_c() => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "cannot watch for Ctrl-C");
                    std::future::pending::<()>().await;
                }
            }
            Some(()) = async { match brk.as_mut() { Some(s) => s.recv().await, None => None } } => {}
            Some(()) = async { match close.as_mut() { Some(s) => s.recv().await, None => None } } => {}
        }
    }
    #[cfg(not(any(unix, windows)))]
    {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot watch for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}

async fn provision<D: Driver>(
    store: &Store,
    driver: &D,
    dir: &MachineDir,
    spec: &VmSpec,
    options: &CreateOptions,
    began: Instant,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<MachineConfig, MachineError> {
    let name = dir.name.as_str();
    let certs_err = |source| MachineError::Certs {
        machine: name.to_string(),
        source,
    };
    progress(Progress::CopyingCerts);
    let server =
        certs::server_cert(&store.certs_dir(), name, &options.tls_san).map_err(certs_err)?;
    certs::install_machine_certs(&store.certs_dir(), dir.path(), &server).map_err(certs_err)?;

    progress(Progress::CreatingSshKey);
    let key_path = dir.file("id_ed25519");
    ssh::generate_key(&key_path, &format!("rmachine-{name}")).map_err(|source| {
        MachineError::Ssh {
            machine: name.to_string(),
            source: Box::new(source),
        }
    })?;

    let mut labels = options.engine_labels.clone();
    let provider = format!("provider={}", driver.info().name);
    if !labels.contains(&provider) {
        labels.push(provider);
    }
    let mut config = MachineConfig {
        config_version: CONFIG_VERSION,
        driver: DriverRecord {
            ip_address: String::new(),
            machine_name: name.to_string(),
            ssh_user: ssh::SSH_USER.to_string(),
            ssh_port: 0,
            engine_port: 0,
            ssh_key_path: key_path,
            store_path: store.root().to_path_buf(),
            options: options.driver_options.record_map(&options.driver),
        },
        driver_name: driver.info().name,
        host_options: HostOptions {
            engine_options: EngineOptions {
                env: options.engine_env.clone(),
                insecure_registry: options.engine_insecure_registries.clone(),
                labels,
                registry_mirror: options.engine_registry_mirrors.clone(),
                tls_verify: true,
            },
            auth_options: auth_options(store, name, &options.tls_san),
        },
        name: name.to_string(),
        vm: spec.clone(),
        created: chrono::Utc::now(),
        data_disk: None,
        timeline: None,
        share_mounts: None,
        published_bind_address: options.published_bind_address,
        save_on_stop: options.save_on_stop,
    };

    progress(Progress::WritingConfigDrive);
    write_config_drive(&config, dir, driver)?;

    // The record goes to disk before the driver makes anything, so that whatever ends this
    // process from here on (SIGKILL, a crash, a power cut), `rm` finds the driver and its
    // options and can ask it to remove what it made.
    store.save(&config)?;
    progress(Progress::CreatingVm);
    driver
        .create(dir, &driver_spec(spec))
        .await
        .map_err(driver_err(name, "create the VM"))?;
    if let Some(login) = driver.ssh_login(dir) {
        config.driver.ssh_user = login.user;
        config.driver.ssh_key_path = login.key;
    }
    store.save(&config)?;

    boot(
        store,
        driver,
        dir,
        &mut config,
        options.engine_timeout,
        began,
        BootOf::Created,
        progress,
    )
    .await?;
    pin_host_key(driver, dir, &config).await;
    Ok(config)
}

/// Pins the guest's SSH host key on the first connection, made now, while the VM is surely
/// the one just created; `ssh` and `scp` then refuse any other key. The guest starts its SSH
/// server before the engine, so it listens by now. A failure is not fatal: the machine works,
/// and the first `ssh` pins the key instead.
async fn pin_host_key<D: Driver>(driver: &D, dir: &MachineDir, config: &MachineConfig) {
    let pinned = async {
        let endpoints = driver.endpoints(dir).await.map_err(|e| e.to_string())?;
        let session = SshSession::connect_as(
            endpoints.ssh,
            &config.driver.ssh_user,
            &config.driver.ssh_key_path,
        )
        .await
        .map_err(|e| error_chain(&e))?;
        session.close().await;
        Ok::<(), String>(())
    };
    if let Err(error) = pinned.await {
        tracing::warn!(%error, "could not pin the guest's ssh host key at create");
    }
}

fn auth_options(store: &Store, name: &str, sans: &[String]) -> AuthOptions {
    let certs_dir = store.certs_dir();
    let machine = store.machine_path(name);
    AuthOptions {
        ca_cert_path: certs_dir.join("ca.pem"),
        ca_private_key_path: certs_dir.join("ca-key.pem"),
        client_cert_path: certs_dir.join("cert.pem"),
        client_key_path: certs_dir.join("key.pem"),
        cert_dir: certs_dir,
        server_cert_path: machine.join("server.pem"),
        server_key_path: machine.join("server-key.pem"),
        server_cert_sans: sans.to_vec(),
        store_path: machine,
    }
}

/// The configuration drive's size is a multiple of this.
const CONFIG_DRIVE_UNIT: usize = 64 << 10;

/// Renders `config.img` from the machine's current certificate and key files.
fn write_config_drive<D: Driver>(
    config: &MachineConfig,
    dir: &MachineDir,
    driver: &D,
) -> Result<(), MachineError> {
    let name = config.name.as_str();
    let certs_err = |source| MachineError::Certs {
        machine: name.to_string(),
        source,
    };
    let authorized =
        ssh::public_key_line(&dir.file("id_ed25519")).map_err(|source| MachineError::Ssh {
            machine: name.to_string(),
            source: Box::new(source),
        })?;
    let engine = &config.host_options.engine_options;
    let guest = GuestConfig {
        format_version: FORMAT_VERSION,
        hostname: name.to_string(),
        ca_pem: certs::read_pem(&dir.file("ca.pem")).map_err(certs_err)?,
        server_cert_pem: certs::read_pem(&dir.file("server.pem")).map_err(certs_err)?,
        server_key_pem: certs::read_pem(&dir.file("server-key.pem")).map_err(certs_err)?,
        authorized_keys: vec![authorized],
        engine: EngineConfig {
            port: ENGINE_PORT,
            labels: engine.labels.clone(),
            insecure_registries: engine.insecure_registry.clone(),
            registry_mirrors: engine.registry_mirror.clone(),
            env: engine.env.clone(),
        },
        shares: config
            .vm
            .shares
            .iter()
            .filter_map(|share| {
                let filesystem = match share.transport {
                    ShareTransport::NineP => ShareFilesystem::NineP,
                    ShareTransport::VirtioFs => ShareFilesystem::Virtiofs,
                    // Not the hypervisor's: the port agent mounts those over SSH.
                    ShareTransport::Sftp => return None,
                };
                Some(ShareMount {
                    tag: share.tag.clone(),
                    guest_path: share.guest_path.clone(),
                    read_only: share.read_only,
                    filesystem,
                })
            })
            .collect(),
        network: driver.guest_network().map(|n| StaticNetwork {
            address: n.address,
            gateway: n.gateway,
            dns: n.dns,
        }),
    };
    let path = config.vm.config_drive.clone();
    let drive_err = |source| MachineError::ConfigDrive {
        machine: name.to_string(),
        path: path.clone(),
        source,
    };
    let mut image = Vec::new();
    guest.write_drive(&mut image).map_err(drive_err)?;
    // Machines whose drives are the same size can start from one QEMU boot snapshot (the
    // snapshot's kernel read the drive's size when it probed it); a tar archive ends in zero
    // blocks, so the padding reads as more of its end.
    image.resize(
        image.len().div_ceil(CONFIG_DRIVE_UNIT) * CONFIG_DRIVE_UNIT,
        0,
    );
    // The drive holds the engine's private key.
    store::write_atomic(&path, &image, true)?;
    Ok(())
}

fn read_console_tail(dir: &MachineDir, lines: usize) -> Option<String> {
    let text = std::fs::read(dir.file("console.log")).ok()?;
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    Some(all[start..].join("\n"))
}

/// Host-side stages of one boot, in milliseconds since the command began.
struct HostClock {
    began: Instant,
    marks: Vec<HostMark>,
}

impl HostClock {
    fn new(began: Instant) -> Self {
        HostClock {
            began,
            marks: Vec::new(),
        }
    }

    fn mark(&mut self, stage: HostStage) {
        let ms = u64::try_from(self.began.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.marks.push(HostMark { stage, ms });
    }
}

/// Whose boot [`boot`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BootOf {
    /// The first boot of a machine `create` just made: its guest's SSH host key is not pinned
    /// yet (see [`pin_host_key`]), so no key goes to it over SSH.
    Created,
    /// A boot of a machine that existed before (`start`, `restart`, `upgrade`).
    Existing,
}

/// Boots the VM, records its endpoints and waits for the engine. A machine that existed before
/// and came up at an address its certificate does not name (a bridged VM's new lease) is
/// waited for until its engine presents the machine's certificate, then given one that names
/// the address while it runs ([`certificate_for_the_boot_address`]): one boot, not two. At
/// create, or for a certificate that does not name the machine, it is rebooted with one.
#[allow(clippy::too_many_arguments)]
async fn boot<D: Driver>(
    store: &Store,
    driver: &D,
    dir: &MachineDir,
    config: &mut MachineConfig,
    timeout: Duration,
    began: Instant,
    of: BootOf,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), MachineError> {
    let name = dir.name.clone();
    let mut clock = HostClock::new(began);
    progress(Progress::StartingVm);
    clock.mark(HostStage::VmStarting);
    driver
        .start(dir, &driver_spec(&config.vm))
        .await
        .map_err(driver_err(&name, "start the VM"))?;
    clock.mark(HostStage::VmRunning);
    let endpoints = driver
        .endpoints(dir)
        .await
        .map_err(driver_err(&name, "report the VM's endpoints"))?;
    let certs_err = |source| MachineError::Certs {
        machine: name.clone(),
        source,
    };
    let client = engine_client(store, &name)?;
    let covered =
        certs::covers(&dir.file("server.pem"), endpoints.engine.ip()).map_err(certs_err)?;
    // An engine at the new address that presents exactly the host's `server.pem` (the CA's,
    // under the machine's name, which it carries) holds this machine's key, whatever address
    // the certificate names. Not at create: the first boot's guest gets the certificate by a
    // reboot, so that its engine key never goes over SSH to a host key pinned on that very
    // first contact; a later `start` sends it only to the key pinned before.
    let own_name = if covered || of == BootOf::Created {
        None
    } else if certs::names_host(&dir.file("server.pem"), &name).map_err(certs_err)? {
        rustls::pki_types::ServerName::try_from(name.clone()).ok()
    } else {
        None
    };
    let moved = own_name.is_some();
    let (mut endpoints, probe) = match own_name {
        Some(own) => {
            tracing::info!(
                address = %endpoints.engine.ip(),
                "the engine certificate does not name the machine's address: waiting for the \
                 engine presenting the machine's certificate, then putting one that names the \
                 address in service"
            );
            let probe = client
                .presenting(own, &dir.file("server.pem"))
                .map_err(|source| MachineError::EngineNotReady {
                    machine: name.clone(),
                    last_stage: None,
                    console_captured: false,
                    console: None,
                    cause: Box::new(source),
                })?;
            (endpoints, probe)
        }
        None if covered => (endpoints, client.clone()),
        None => (
            reissue_for_new_address(
                store,
                driver,
                dir,
                config,
                endpoints.engine.ip(),
                &mut clock,
            )
            .await?,
            client.clone(),
        ),
    };
    record_endpoints(store, config, &name, &endpoints)?;

    progress(Progress::WaitingForEngine);
    let console = driver
        .info()
        .capabilities
        .console_log
        .then(|| dir.file("console.log"));
    engine_ready(
        &probe,
        dir,
        endpoints.engine,
        timeout,
        console.as_deref(),
        &mut clock,
    )
    .await?;
    if moved {
        if let Some(rebooted) =
            certificate_for_the_boot_address(store, driver, dir, config, &endpoints, &mut clock)
                .await?
        {
            endpoints = rebooted;
            record_endpoints(store, config, &name, &endpoints)?;
            engine_ready(
                &client,
                dir,
                endpoints.engine,
                timeout,
                console.as_deref(),
                &mut clock,
            )
            .await?;
        }
    }
    clock.mark(HostStage::Ready);
    let guest = match &console {
        Some(path) => std::fs::read(path)
            .map(|c| timeline::last_boot_stages(&String::from_utf8_lossy(&c)))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    config.timeline = Some(BootTimeline {
        guest,
        host: clock.marks,
    });
    if console.is_some() {
        record_data_disk(store, dir, config)?;
    } else {
        store.save(config)?;
    }
    progress(Progress::EngineReady);
    Ok(())
}

/// Records the endpoints of this boot in the machine's record and its docker context.
fn record_endpoints(
    store: &Store,
    config: &mut MachineConfig,
    name: &str,
    endpoints: &rmachine_driver::Endpoints,
) -> Result<(), MachineError> {
    config.driver.ip_address = endpoints.engine.ip().to_string();
    config.driver.ssh_port = endpoints.ssh.port();
    config.driver.engine_port = endpoints.engine.port();
    store.save(config)?;
    update_docker_context(store, name, &endpoints.engine);
    Ok(())
}

/// [`wait_for_engine`], its failure told with the console's last lines and boot stage.
async fn engine_ready(
    client: &EngineClient,
    dir: &MachineDir,
    addr: SocketAddr,
    timeout: Duration,
    console: Option<&std::path::Path>,
    clock: &mut HostClock,
) -> Result<(), MachineError> {
    let follower = console.map(|log| ConsoleFollower::open(log.to_path_buf()));
    let Err(source) = wait_for_engine(client, addr, timeout, follower, clock).await else {
        return Ok(());
    };
    let (console, last_stage) = match console {
        Some(path) => (
            read_console_tail(dir, 15),
            std::fs::read(path)
                .ok()
                .and_then(|c| timeline::last_stage_reached(&String::from_utf8_lossy(&c))),
        ),
        None => (None, None),
    };
    Err(MachineError::EngineNotReady {
        machine: dir.name.clone(),
        last_stage: last_stage.map(|s| format!("{s:?}")),
        console_captured: console.is_some(),
        console,
        cause: Box::new(source),
    })
}

/// After a `start` at an address the certificate does not name, once the engine presented the
/// machine's certificate: a certificate naming the address too is put in service in the
/// running guest ([`install_live`]), as `env` does for a lease that changed while the machine
/// ran. Where that cannot be done (a guest image without `install-tls`, no pinned host key, a
/// failed or timed-out install) the machine is rebooted with the certificate instead, as
/// before `install-tls` existed; returns the endpoints of that boot (`None`: no reboot). A
/// guest whose SSH host key is not the pinned one is an error: something else may answer at
/// the address, and nothing is sent to it, not even by a reboot.
async fn certificate_for_the_boot_address<D: Driver>(
    store: &Store,
    driver: &D,
    dir: &MachineDir,
    config: &mut MachineConfig,
    endpoints: &rmachine_driver::Endpoints,
    clock: &mut HostClock,
) -> Result<Option<rmachine_driver::Endpoints>, MachineError> {
    let ip = endpoints.engine.ip();
    let mut sans = config.host_options.auth_options.server_cert_sans.clone();
    if !sans.contains(&ip.to_string()) {
        sans.push(ip.to_string());
    }
    let why = match install_live(
        store,
        driver,
        dir,
        config,
        endpoints,
        sans,
        LIVE_INSTALL_TIMEOUT,
    )
    .await
    {
        Ok(LiveInstall::Installed) => return Ok(None),
        Ok(not) => not.why_not().to_string(),
        Err(err @ MachineError::HostKeyChanged { .. }) => return Err(err),
        Err(err) => error_chain(&err),
    };
    tracing::warn!(
        machine = %dir.name,
        "the certificate for the address {ip} cannot be put in service while the machine runs \
         ({why}): restarting it with the certificate"
    );
    reissue_for_new_address(store, driver, dir, config, ip, clock)
        .await
        .map(Some)
}

/// How often the console is read for the guest's readiness line where nothing tells the host
/// it changed.
const CONSOLE_POLL: Duration = Duration::from_millis(20);
/// Where the host is told of each change, the longest it waits for one before it reads the log
/// anyway (a probe time or the deadline coming sooner ends the wait sooner).
#[cfg(target_os = "linux")]
const WATCHED_LOG_READ: Duration = Duration::from_millis(250);

/// What the guest's console lines showed, for [`wait_for_engine`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct ConsoleScan {
    /// A stage line of the last boot.
    stage: bool,
    /// The last boot reached [`Stage::EngineUp`].
    engine_up: bool,
    /// An init line that carries no stage (an image from before the boot timeline).
    legacy_line: bool,
}

impl ConsoleScan {
    /// Takes in one complete line.
    fn line(&mut self, line: &str) {
        for stage in timeline::last_boot_stages(line) {
            if stage.stage == Stage::InitStarted {
                self.engine_up = false;
            }
            self.stage = true;
            self.engine_up |= stage.stage == Stage::EngineUp;
        }
        if line.contains(INIT_LINE) && !line.contains(timeline::STAGE_MARKER) {
            self.legacy_line = true;
        }
    }

    /// What the complete lines of `text` show.
    #[cfg(test)]
    fn of(text: &str) -> Self {
        let mut scan = Self::default();
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        for line in complete.lines() {
            scan.line(line);
        }
        scan
    }
}

/// Follows the guest console during a boot: `console.log`, read from where the last read
/// stopped each time it changes (the UART writes the guest's bytes one `write(2)` each, so
/// reading the whole log at each change would cost as much as the log squared). On Linux an
/// inotify watch wakes the host at each write, so the guest's line is seen when it is written
/// rather than at the next tick of a timer; elsewhere, or if the watch cannot be set up, or
/// the file it watched is gone, the log is read every [`CONSOLE_POLL`].
struct ConsoleFollower {
    log: PathBuf,
    /// Bytes of the log already read.
    offset: u64,
    /// The file read, to start over when the path names another one.
    #[cfg(unix)]
    inode: Option<u64>,
    /// The end of the log after its last newline: a line still being written.
    partial: Vec<u8>,
    /// What the complete lines read so far showed.
    seen: ConsoleScan,
    #[cfg(target_os = "linux")]
    watch: Option<file_watch::FileWatch>,
}

impl ConsoleFollower {
    fn open(log: PathBuf) -> Self {
        #[cfg(target_os = "linux")]
        let watch = match file_watch::FileWatch::new(&log) {
            Ok(watch) => Some(watch),
            Err(err) => {
                tracing::debug!(log = %log.display(), error = %err, "cannot watch the console log: reading it on a timer");
                None
            }
        };
        ConsoleFollower {
            log,
            offset: 0,
            #[cfg(unix)]
            inode: None,
            partial: Vec::new(),
            seen: ConsoleScan::default(),
            #[cfg(target_os = "linux")]
            watch,
        }
    }

    /// What the console shows now: the lines completed since the last call are taken in. A
    /// log shorter than what was read (QEMU truncates it at each start) or another file is
    /// read from its start again.
    fn scan(&mut self) -> ConsoleScan {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut file) = std::fs::File::open(&self.log) else {
            return self.seen;
        };
        let Ok(meta) = file.metadata() else {
            return self.seen;
        };
        #[cfg(unix)]
        let replaced = {
            use std::os::unix::fs::MetadataExt;
            self.inode
                .replace(meta.ino())
                .is_some_and(|ino| ino != meta.ino())
        };
        #[cfg(not(unix))]
        let replaced = false;
        if replaced || meta.len() < self.offset {
            self.offset = 0;
            self.partial.clear();
            self.seen = ConsoleScan::default();
        }
        let mut new = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut new).is_err() {
            return self.seen;
        }
        self.offset += new.len() as u64;
        self.partial.extend_from_slice(&new);
        // Only whole lines: the UART writes byte by byte, so a read can catch a stage line
        // before its JSON is complete (it would look like an init line without a stage).
        if let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') {
            let rest = self.partial.split_off(end + 1);
            for line in String::from_utf8_lossy(&self.partial).lines() {
                self.seen.line(line);
            }
            self.partial = rest;
        }
        self.seen
    }

    /// Waits until the log changes or `until`, whichever comes first: with a watch at most
    /// [`WATCHED_LOG_READ`], without one at most [`CONSOLE_POLL`].
    async fn wait(&mut self, until: Instant) {
        #[cfg(target_os = "linux")]
        if let Some(watch) = &self.watch {
            let cap = until.min(Instant::now() + WATCHED_LOG_READ);
            match tokio::time::timeout_at(cap.into(), watch.changed()).await {
                Err(_) | Ok(Ok(file_watch::Change::Written)) => {}
                Ok(Ok(file_watch::Change::Gone)) => {
                    tracing::debug!(log = %self.log.display(), "the watched console log was removed, moved or changed: reading it on a timer");
                    self.watch = None;
                }
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "the console log's watch failed: reading it on a timer");
                    self.watch = None;
                }
            }
            return;
        }
        tokio::time::sleep_until(until.min(Instant::now() + CONSOLE_POLL).into()).await;
    }
}

/// A file's changes as the kernel reports them (inotify), for [`ConsoleFollower`].
#[cfg(target_os = "linux")]
mod file_watch {
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, RawFd};
    use std::path::Path;

    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    /// What [`FileWatch::changed`] saw.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Change {
        /// The file was written to.
        Written,
        /// The file was removed, moved or its attributes changed: the watch no longer
        /// follows what the path names.
        Gone,
    }

    /// The events that end what the watch can tell.
    const GONE: AddWatchFlags = AddWatchFlags::IN_DELETE_SELF
        .union(AddWatchFlags::IN_MOVE_SELF)
        .union(AddWatchFlags::IN_ATTRIB)
        .union(AddWatchFlags::IN_IGNORED);

    /// Tokio registers what has a raw descriptor; nix's [`Inotify`] lends a borrowed one.
    struct Descriptor(Inotify);

    impl AsRawFd for Descriptor {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_fd().as_raw_fd()
        }
    }

    /// An inotify instance watching one file for writes.
    pub(super) struct FileWatch {
        fd: AsyncFd<Descriptor>,
    }

    impl FileWatch {
        /// Watches `path`, which must exist.
        pub(super) fn new(path: &Path) -> io::Result<Self> {
            let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
            inotify.add_watch(path, AddWatchFlags::IN_MODIFY | GONE)?;
            // SAFETY: the `Inotify` owns its descriptor, which stays open and the same until
            // the AsyncFd drops it (nothing here takes it out or replaces it).
            let fd =
                unsafe { AsyncFd::register_with_interest(Descriptor(inotify), Interest::READABLE) }
                    .map_err(io::Error::from)?;
            Ok(FileWatch { fd })
        }

        /// Resolves once the file was written to (or is gone) since the last call; the
        /// events queued meanwhile are read at once: one wake-up for a burst of writes.
        pub(super) async fn changed(&self) -> io::Result<Change> {
            loop {
                let mut guard = self.fd.readable().await?;
                let mut seen = None;
                loop {
                    match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from)) {
                        Ok(Ok(events)) if events.is_empty() => break,
                        Ok(Ok(events)) => {
                            for event in events {
                                if event.mask.intersects(GONE) {
                                    seen = Some(Change::Gone);
                                } else if seen.is_none() {
                                    seen = Some(Change::Written);
                                }
                            }
                        }
                        Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => {}
                        Ok(Err(err)) => return Err(err),
                        // Drained: readiness cleared, the next event wakes `readable`.
                        Err(_would_block) => break,
                    }
                }
                if let Some(change) = seen {
                    return Ok(change);
                }
            }
        }
    }
}

/// What every rmachine-init prints before its console lines. An init whose lines carry no
/// boot stage is an image from before the boot timeline: it never signals, so its engine is
/// probed over TLS every [`LEGACY_PROBE`] as it always was. (Decided by what the console
/// shows, not by a timer: a guest still in its kernel after a few seconds, as under a loaded
/// TCG, is not probed before it signals.)
const INIT_LINE: &str = "rmachine-init: ";
/// See [`INIT_LINE`].
const LEGACY_PROBE: Duration = Duration::from_millis(500);
/// A guest whose console shows no init line at all this long after it started running
/// (console captured from another UART, broken capture) is probed every [`FALLBACK_PROBE`]
/// (with a warning when that is what finds it), not only at the deadline. Long enough that a
/// current guest still in its kernel under a loaded TCG is not probed.
const NO_INIT_FALLBACK: Duration = Duration::from_secs(30);
/// See [`NO_INIT_FALLBACK`].
const FALLBACK_PROBE: Duration = Duration::from_secs(2);
/// How long one probe of a legacy guest may take (QEMU user networking can hold a
/// connection into a guest that does not listen yet).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits until the engine answers TLS `/_ping`. With a console log, the guest's
/// [`Stage::EngineUp`] line says when to probe: nothing is sent into a guest that is still
/// booting. The TLS answer stays the proof (QEMU user networking accepts connections before
/// anything in the guest listens). Without a console, or for a guest that prints no stage
/// lines, the engine is probed periodically.
async fn wait_for_engine(
    client: &EngineClient,
    addr: SocketAddr,
    timeout: Duration,
    console: Option<ConsoleFollower>,
    clock: &mut HostClock,
) -> Result<(), EngineCheckError> {
    let started = Instant::now();
    let Some(mut console) = console else {
        clock.mark(HostStage::FirstProbe);
        return client.wait_ready(addr, timeout).await;
    };
    let mut last_probe: Option<Instant> = None;
    loop {
        let scan = console.scan();
        let signalled = scan.engine_up;
        let legacy_init = !scan.stage && scan.legacy_line;
        let silent = !scan.stage && !legacy_init && started.elapsed() >= NO_INIT_FALLBACK;
        let every = if silent { FALLBACK_PROBE } else { LEGACY_PROBE };
        let probe_due = last_probe.is_none_or(|at| at.elapsed() >= every);
        if signalled || ((legacy_init || silent) && probe_due) {
            if signalled {
                clock.mark(HostStage::GuestSignalled);
            }
            if last_probe.is_none() {
                clock.mark(HostStage::FirstProbe);
            }
            if signalled {
                return client
                    .wait_ready(addr, timeout.saturating_sub(started.elapsed()))
                    .await;
            }
            last_probe = Some(Instant::now());
            if let Ok(Ok(())) = tokio::time::timeout(PROBE_TIMEOUT, client.ping(addr)).await {
                if silent {
                    warn_no_init_line(&console.log);
                }
                return Ok(());
            }
        }
        if started.elapsed() >= timeout {
            // One last probe: its error is the one the user sees.
            let last = match tokio::time::timeout(PROBE_TIMEOUT, client.ping(addr)).await {
                Ok(Ok(())) => {
                    if !scan.stage && !legacy_init {
                        warn_no_init_line(&console.log);
                    }
                    return Ok(());
                }
                Ok(Err(err)) => err,
                Err(_) => EngineCheckError::AttemptTimeout {
                    addr,
                    seconds: PROBE_TIMEOUT.as_secs(),
                },
            };
            return Err(EngineCheckError::WaitTimeout {
                addr,
                seconds: timeout.as_secs(),
                last: Box::new(last),
            });
        }
        // Woken by the next of: a console change, the next probe of a legacy or silent
        // guest, the moment a guest without init line starts being probed, the deadline.
        let deadline = started + timeout;
        let next = if legacy_init || silent {
            last_probe.map_or(deadline, |at| at + every)
        } else if !scan.stage {
            started + NO_INIT_FALLBACK
        } else {
            deadline
        };
        console.wait(next.min(deadline)).await;
    }
}

/// The engine answered although the console never showed an init line: the console capture
/// is not what the guest writes to, and the boot timeline of this machine is empty.
fn warn_no_init_line(console: &std::path::Path) {
    tracing::warn!(
        console = %console.display(),
        "the engine answered, but the guest console showed no rmachine-init line: probed without the guest's signal (is the console captured from the guest's UART?)"
    );
}

/// The guest came up at an address its engine certificate does not name (a bridged driver's
/// new DHCP lease: docker-machine's most common complaint, fixed there by hand with
/// `regenerate-certs`). Adds the address to the machine's SANs, issues a certificate that
/// names it, and reboots the guest with it; returns the endpoints after that boot.
async fn reissue_for_new_address<D: Driver>(
    store: &Store,
    driver: &D,
    dir: &MachineDir,
    config: &mut MachineConfig,
    ip: std::net::IpAddr,
    clock: &mut HostClock,
) -> Result<rmachine_driver::Endpoints, MachineError> {
    let name = dir.name.clone();
    tracing::info!(%ip, "the engine certificate does not name the machine's address; reissuing it");
    issue_for_address(store, dir, config, ip)?;
    write_config_drive(config, dir, driver)?;
    driver
        .stop(
            dir,
            StopMode::Graceful {
                timeout: STOP_TIMEOUT,
            },
        )
        .await
        .map_err(driver_err(&name, "stop the VM"))?;
    // The timeline is the boot the machine ends up running, as its guest stages (read from a
    // console QEMU empties at each start) are: the first boot's marks go with it.
    clock.marks.clear();
    clock.mark(HostStage::VmStarting);
    driver
        .start(dir, &driver_spec(&config.vm))
        .await
        .map_err(driver_err(&name, "start the VM"))?;
    clock.mark(HostStage::VmRunning);
    driver
        .endpoints(dir)
        .await
        .map_err(driver_err(&name, "report the VM's endpoints"))
}

/// Adds `ip` to the machine's SANs and installs a new engine certificate naming them all (the
/// record saved too); the guest uses it once its configuration drive is rewritten and it boots.
fn issue_for_address(
    store: &Store,
    dir: &MachineDir,
    config: &mut MachineConfig,
    ip: std::net::IpAddr,
) -> Result<(), MachineError> {
    let certs_err = |source| MachineError::Certs {
        machine: dir.name.clone(),
        source,
    };
    let sans = &mut config.host_options.auth_options.server_cert_sans;
    if !sans.contains(&ip.to_string()) {
        sans.push(ip.to_string());
    }
    let server = certs::server_cert(&store.certs_dir(), &dir.name, sans).map_err(certs_err)?;
    certs::install_machine_certs(&store.certs_dir(), dir.path(), &server).map_err(certs_err)?;
    store.save(config)?;
    Ok(())
}

/// How long a running machine may take to put a new engine certificate in service (SSH in,
/// the files written, the engine presenting it at its next connection).
const LIVE_INSTALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A POSIX shell's status for a command it cannot find (POSIX.1 "Command Search and
/// Execution"): `rmachine-init` on a host that is not rmachine's guest.
const SHELL_COMMAND_NOT_FOUND: u32 = 127;

/// What became of a certificate handed to a running machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LiveInstall {
    /// The engine presents it; the host's files and record name it too.
    Installed,
    /// The guest's image predates `rmachine-init install-tls`, or the machine is a host
    /// without `rmachine-init` at all (the generic driver's SSH host: its shell answers 127):
    /// only a boot or a provisioning puts a new certificate in service there. Nothing was
    /// changed.
    GuestTooOld,
    /// No SSH host key of the guest is pinned yet (pinning at create failed), so the guest at
    /// the machine's (changed) address cannot be told from another host: its private key is
    /// not sent there. Nothing was changed; only a boot puts the certificate in service.
    HostKeyNotPinned,
}

impl LiveInstall {
    /// Why the certificate could not go into the running guest, for a message.
    fn why_not(self) -> &'static str {
        match self {
            LiveInstall::Installed => "",
            LiveInstall::GuestTooOld => "its guest cannot take one while it runs",
            LiveInstall::HostKeyNotPinned => {
                "its SSH host key is not pinned, so the guest at that address cannot be told \
                 from another host"
            }
        }
    }
}

/// Issues machine `dir`'s engine certificate for `sans` and puts it in service in the RUNNING
/// guest without a restart (its containers keep running): the files go over SSH to
/// `rmachine-init install-tls`, which replaces the engine's (the engine rebuilds its TLS setup
/// at its next connection) and the guest's saved copy of its configuration; then the engine
/// is asked until it presents the new certificate. Only then are the host's `server.pem` and
/// `server-key.pem`, the recorded SANs and the configuration drive (what the next boot reads)
/// replaced: an install that fails or is cut short leaves the host's files on the old
/// certificate, so the next command notices again. Without a pinned SSH host key nothing is
/// sent ([`LiveInstall::HostKeyNotPinned`]): the first connection would trust whatever host
/// answers at the address, and the engine's private key must not go to another host.
async fn install_live<D: Driver>(
    store: &Store,
    driver: &D,
    dir: &MachineDir,
    config: &mut MachineConfig,
    endpoints: &rmachine_driver::Endpoints,
    sans: Vec<String>,
    within: Duration,
) -> Result<LiveInstall, MachineError> {
    let began = Instant::now();
    let name = dir.name.clone();
    if !ssh::pinned_host_key_path(&config.driver.ssh_key_path).exists() {
        return Ok(LiveInstall::HostKeyNotPinned);
    }
    let certs_err = |source| MachineError::Certs {
        machine: name.clone(),
        source,
    };
    let failed = |reason: String| MachineError::CertInstall {
        machine: name.clone(),
        reason,
    };
    let server = certs::server_cert(&store.certs_dir(), &name, &sans).map_err(certs_err)?;
    let files = TlsFiles {
        ca_pem: certs::read_pem(&store.certs_dir().join("ca.pem")).map_err(certs_err)?,
        server_cert_pem: server.cert_pem.clone(),
        server_key_pem: server.key_pem.clone(),
    };
    let json = serde_json::to_vec(&files).map_err(|e| failed(e.to_string()))?;
    let (user, key) = (&config.driver.ssh_user, &config.driver.ssh_key_path);
    let send = async {
        let session = SshSession::connect_as(endpoints.ssh, user, key)
            .await
            .map_err(|e| match e {
                // Not a failure to retry by a reboot: the guest at the address is not the one
                // whose key was pinned, and the engine's key must not go there.
                e @ SshError::HostKeyChanged { .. } => MachineError::HostKeyChanged {
                    machine: name.clone(),
                    source: Box::new(e),
                },
                e => failed(error_chain(&e)),
            })?;
        let mut err = Vec::new();
        let status = session
            .run_with(
                INSTALL_TLS_COMMAND,
                Some(json.as_slice()),
                tokio::io::sink(),
                &mut err,
            )
            .await
            .map_err(|e| failed(error_chain(&e)));
        session.close().await;
        Ok::<_, MachineError>((status?, err))
    };
    let (status, err) = tokio::time::timeout(within, send).await.map_err(|_| {
        failed(format!(
            "no answer over SSH within {} s",
            within.as_secs_f32()
        ))
    })??;
    match status {
        0 => {}
        INSTALL_TLS_UNKNOWN | SHELL_COMMAND_NOT_FOUND => return Ok(LiveInstall::GuestTooOld),
        status => {
            return Err(failed(format!(
                "`{INSTALL_TLS_COMMAND}` exited with {status}: {}",
                String::from_utf8_lossy(&err).trim()
            )))
        }
    }
    // The store's client files, those the new certificate goes with (a CA that
    // `regenerate-certs --client-certs` just made is in the guest now, not yet in the
    // machine directory).
    let client =
        EngineClient::from_cert_dir(&store.certs_dir()).map_err(|e| failed(error_chain(&e)))?;
    let late = |last: &str| {
        failed(format!(
            "the engine did not present it within {} s: {last}",
            within.as_secs_f32()
        ))
    };
    loop {
        // Each attempt only for the time left (the engine client's own limit is 2 s): `ls`
        // must answer within its timeout.
        let left = within.saturating_sub(began.elapsed());
        let last =
            match tokio::time::timeout(left, client.served_certificate(endpoints.engine)).await {
                Ok(Ok(der)) if der == server.cert_der => break,
                Ok(Ok(_)) => "it still presents the previous one".to_string(),
                Ok(Err(e)) => error_chain(&e),
                Err(_) => "no answer in the time left".to_string(),
            };
        if began.elapsed() >= within {
            return Err(late(&last));
        }
        tokio::time::sleep(Duration::from_millis(100).min(within.saturating_sub(began.elapsed())))
            .await;
    }
    // No commit once the time is up: the caller has given up waiting (the host's files stay
    // on the old certificate and the next command installs again).
    if began.elapsed() >= within {
        return Err(late("it did, but only after the time was up"));
    }
    certs::install_machine_certs(&store.certs_dir(), dir.path(), &server).map_err(certs_err)?;
    config.host_options.auth_options.server_cert_sans = sans;
    store.save(config)?;
    write_config_drive(config, dir, driver)?;
    tracing::info!(machine = %name, "the running engine serves its new certificate");
    Ok(LiveInstall::Installed)
}

/// What a command that finds a running machine at an address its certificate does not name
/// may do when the guest cannot take a new certificate while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OldGuest {
    /// Restart it with the certificate (`env`, `config`).
    Restart,
    /// Say so (`ls`, which answers within its timeout).
    Refuse,
}

/// A running machine whose engine address its certificate does not name (a bridged VM's new
/// lease while it ran): the address is added to its SANs and a certificate naming it is put in
/// service in the running guest ([`install_live`]), as `env`, `config` and `ls` need it before
/// their TLS check; all within `within`. A guest whose image cannot take it while it runs is
/// restarted with it (the guest reads it from the configuration drive at boot) or refused, as
/// `old_guest` says. Returns the endpoints to use and whether the machine was restarted (its
/// port agent ended with it).
async fn follow_new_address<D: Driver>(
    store: &Store,
    driver: &D,
    name: &str,
    endpoints: rmachine_driver::Endpoints,
    within: Duration,
    old_guest: OldGuest,
) -> Result<(rmachine_driver::Endpoints, bool), MachineError> {
    let dir = store.machine_dir(name);
    let covered = |ip| {
        certs::covers(&dir.file("server.pem"), ip).map_err(|source| MachineError::Certs {
            machine: name.to_string(),
            source,
        })
    };
    if covered(endpoints.engine.ip())? {
        return Ok((endpoints, false));
    }
    let began = Instant::now();
    // The lock is waited for off the runtime: other tasks (an engine this process serves, a
    // concurrent query) go on meanwhile.
    let locking = {
        let (store, name) = (store.clone(), name.to_string());
        tokio::task::spawn_blocking(move || store.lock(&name))
    };
    // `ls` answers within its timeout, so its wait for the lock counts; `env` waits for a
    // command that holds it (another `env` restarting the machine) as long as that takes.
    let locked = match old_guest {
        OldGuest::Refuse => tokio::time::timeout(within, locking).await,
        OldGuest::Restart => Ok(locking.await),
    };
    let _lock = match locked {
        Ok(Ok(lock)) => lock?,
        Ok(Err(join)) => std::panic::resume_unwind(join.into_panic()),
        Err(_) => {
            return Err(MachineError::CertInstall {
                machine: name.to_string(),
                reason: "another command held the machine's lock".to_string(),
            })
        }
    };
    let began = match old_guest {
        OldGuest::Refuse => began,
        OldGuest::Restart => Instant::now(),
    };
    // What was seen before the lock may be stale: another command may have put a certificate
    // naming the address in service, or `stop` stopped the machine (which must not be undone).
    let endpoints = running_endpoints_with(store, driver, name).await?;
    let ip = endpoints.engine.ip();
    if covered(ip)? {
        return Ok((endpoints, false));
    }
    let mut config = store.load(name)?;
    let mut sans = config.host_options.auth_options.server_cert_sans.clone();
    if !sans.contains(&ip.to_string()) {
        sans.push(ip.to_string());
    }
    tracing::info!(
        machine = name,
        address = %ip,
        "the engine certificate does not name the machine's address: putting one that does in \
         service"
    );
    let left = within.saturating_sub(began.elapsed());
    match install_live(store, driver, &dir, &mut config, &endpoints, sans, left).await? {
        LiveInstall::Installed => return Ok((endpoints, false)),
        LiveInstall::GuestTooOld if old_guest == OldGuest::Refuse => {
            return Err(MachineError::CertInstall {
                machine: name.to_string(),
                reason: format!(
                    "{} (`rmachine env {name}` restarts it with one; `rmachine upgrade {name}` \
                     gives it an image that can)",
                    LiveInstall::GuestTooOld.why_not()
                ),
            })
        }
        LiveInstall::HostKeyNotPinned if old_guest == OldGuest::Refuse => {
            return Err(MachineError::CertInstall {
                machine: name.to_string(),
                reason: format!(
                    "{} (`rmachine env {name}` restarts it with one)",
                    LiveInstall::HostKeyNotPinned.why_not()
                ),
            })
        }
        LiveInstall::GuestTooOld => tracing::warn!(
            machine = name,
            "the machine's guest image cannot take a certificate while it runs (`rmachine \
             upgrade` gives it one that can): restarting the machine with it"
        ),
        LiveInstall::HostKeyNotPinned => tracing::warn!(
            machine = name,
            "the guest's SSH host key is not pinned, so the engine's private key is not sent \
             over SSH to whatever answers at its address: restarting the machine with the \
             certificate"
        ),
    }
    portagent::stop(store, name)?;
    // Stopped first: were the certificate installed and the stop to fail, the host's server.pem
    // would name the address while the guest still served the old one, and nothing would
    // notice again.
    driver
        .stop(
            &dir,
            StopMode::Graceful {
                timeout: STOP_TIMEOUT,
            },
        )
        .await
        .map_err(driver_err(name, "stop the VM"))?;
    issue_for_address(store, &dir, &mut config, ip)?;
    write_config_drive(&config, &dir, driver)?;
    boot(
        store,
        driver,
        &dir,
        &mut config,
        DEFAULT_ENGINE_TIMEOUT,
        began,
        BootOf::Existing,
        &|_| {},
    )
    .await?;
    let endpoints = driver
        .endpoints(&dir)
        .await
        .map_err(driver_err(name, "report the VM's endpoints"))?;
    Ok((endpoints, true))
}

/// Points the machine's docker context at the engine's address of this boot. A failure only
/// warns: `env` still works.
fn update_docker_context(store: &Store, name: &str, engine: &SocketAddr) {
    let Some(config_dir) = store.docker_config() else {
        return;
    };
    let host = format!("tcp://{engine}");
    if let Err(error) = context::write(config_dir, name, &host, &store.machine_path(name)) {
        tracing::warn!(error = %error_chain(&error), "docker context not written");
    }
}

/// Stores the data-disk report of this boot (the guest prints it on the console before the
/// engine starts, so it is there once the engine answers). A boot that printed none (an older
/// guest image, no data disk) leaves no report: a stale one would claim a check that this boot
/// did not see.
fn record_data_disk(
    store: &Store,
    dir: &MachineDir,
    config: &mut MachineConfig,
) -> Result<(), MachineError> {
    let console = std::fs::read(dir.file("console.log")).unwrap_or_default();
    let report = report::last_report(&String::from_utf8_lossy(&console));
    match &report {
        Some(r) if !r.mounted => tracing::warn!(
            machine = %dir.name,
            "the guest could not mount its data disk {}; nothing will persist (see console.log)",
            r.device
        ),
        Some(r) => tracing::debug!(machine = %dir.name, action = ?r.boot_action, "data disk"),
        None => tracing::debug!(machine = %dir.name, "no data-disk report on the console"),
    }
    config.data_disk = report;
    let shares = report::last_shares_report(&String::from_utf8_lossy(&console))
        .filter(|_| !config.vm.shares.is_empty());
    for failed in shares.iter().flat_map(|r| r.failures()) {
        tracing::warn!(
            machine = %dir.name,
            "share {} could not be mounted in the machine: {}",
            share_label(config, &failed.tag, &failed.guest_path),
            failed.error.as_deref().unwrap_or("no reason given")
        );
    }
    config.share_mounts = shares;
    store.save(config)?;
    Ok(())
}

/// `HOST on GUEST` for a share's tag, as a user named it at `create`.
fn share_label(config: &MachineConfig, tag: &str, guest_path: &str) -> String {
    match config.vm.shares.iter().find(|s| s.tag == tag) {
        Some(share) => format!("{} on {}", share.host_path.display(), share.guest_path),
        None => format!("{tag} on {guest_path}"),
    }
}

/// The shares the guest failed to mount at its last boot, for `rmachine ls`'s ERRORS column.
pub fn share_errors(config: &MachineConfig) -> Option<String> {
    let report = config.share_mounts.as_ref()?;
    let failed: Vec<String> = report
        .failures()
        .map(|s| {
            format!(
                "share {} not mounted",
                share_label(config, &s.tag, &s.guest_path)
            )
        })
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}

fn engine_client(store: &Store, name: &str) -> Result<EngineClient, MachineError> {
    EngineClient::from_cert_dir(&store.machine_path(name)).map_err(|source| {
        MachineError::EngineNotReady {
            machine: name.to_string(),
            last_stage: None,
            console_captured: false,
            console: None,
            cause: Box::new(source),
        }
    })
}

/// What `ls` says of a machine whose `create` did not finish (its ERRORS column, or its state
/// while `create` still runs).
fn unfinished_text(name: &str, running: &bool) -> String {
    if *running {
        "create is still running (Creating)".to_string()
    } else {
        format!("create did not finish (interrupted); remove it with \"rmachine rm {name}\"")
    }
}

/// The record of `name`, refused while its `create` has not finished: the VM may be half
/// made, so only `rm`, `ls` and `inspect` touch such a machine.
pub fn load_finished(store: &Store, name: &str) -> Result<MachineConfig, MachineError> {
    if store.is_unfinished(name) {
        return Err(MachineError::Unfinished {
            machine: name.to_string(),
            running: create_running(store, name),
        });
    }
    Ok(store.load(name)?)
}

/// Whether the `create` that left `name` unfinished still runs: it holds the lock, and (on
/// Linux) the process its creating marker names is alive, since a caller holding the lock
/// itself also sees it held.
fn create_running(store: &Store, name: &str) -> bool {
    if !store.is_locked(name) {
        return false;
    }
    if cfg!(target_os = "linux") {
        let marker = store.machine_path(name).join(crate::store::CREATING_MARKER);
        let pid = std::fs::read_to_string(marker).unwrap_or_default();
        let pid = pid.trim();
        return pid != std::process::id().to_string()
            && !pid.is_empty()
            && std::path::Path::new("/proc").join(pid).exists();
    }
    true
}

async fn load_with_driver(
    store: &Store,
    name: &str,
) -> Result<(MachineConfig, AnyDriver), MachineError> {
    let config = load_finished(store, name)?;
    let driver = driver_for(&config)?;
    Ok((config, driver))
}

/// The machine's state as the driver reports it.
pub async fn state(store: &Store, name: &str) -> Result<VmState, MachineError> {
    let (_, driver) = load_with_driver(store, name).await?;
    driver
        .state(&store.machine_dir(name))
        .await
        .map_err(driver_err(name, "report the state"))
}

/// `start`: rewrite the configuration drive from the current certificates, boot, wait for the
/// engine.
#[tracing::instrument(skip_all, fields(machine = name))]
pub async fn start(
    store: &Store,
    name: &str,
    timeout: Duration,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), MachineError> {
    start_with(store, name, timeout, true, progress).await
}

/// [`start`]; with `resume`, a state saved by `stop --save` is resumed, without it discarded
/// (the machine boots afresh: `restart`).
async fn start_with(
    store: &Store,
    name: &str,
    timeout: Duration,
    resume: bool,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), MachineError> {
    let began = Instant::now();
    store.require(name)?;
    let _lock = store.lock(name)?;
    let (mut config, driver) = load_with_driver(store, name).await?;
    start_locked(
        store,
        &driver,
        name,
        &mut config,
        timeout,
        resume,
        began,
        progress,
    )
    .await
}

/// [`start_with`] once the machine's lock is held and its driver loaded.
#[allow(clippy::too_many_arguments)]
async fn start_locked<D: Driver>(
    store: &Store,
    driver: &D,
    name: &str,
    config: &mut MachineConfig,
    timeout: Duration,
    resume: bool,
    began: Instant,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), MachineError> {
    let dir = store.machine_dir(name);
    let current = driver
        .state(&dir)
        .await
        .map_err(driver_err(name, "report the state"))?;
    if current == VmState::Running {
        return Err(MachineError::AlreadyInState {
            machine: name.to_string(),
            state: "running".to_string(),
        });
    }
    if resume && current == VmState::Saved {
        progress(Progress::ResumingVm);
        let mut clock = HostClock::new(began);
        clock.mark(HostStage::VmStarting);
        let resumed = driver
            .resume(&dir, &driver_spec(&config.vm))
            .await
            .map_err(driver_err(name, "resume the VM"))?;
        match resumed {
            Resume::Resumed => {
                clock.mark(HostStage::VmRunning);
                return after_resume(
                    store,
                    driver,
                    &dir,
                    config,
                    ResumedVm { timeline: clock },
                    timeout,
                    progress,
                )
                .await;
            }
            Resume::Discarded { reason } => progress(Progress::ColdBoot { reason }),
            Resume::NoSavedState => {}
        }
    }
    progress(Progress::WritingConfigDrive);
    write_config_drive(config, &dir, driver)?;
    boot(
        store,
        driver,
        &dir,
        config,
        timeout,
        began,
        BootOf::Existing,
        progress,
    )
    .await
}

/// Why `stop --save` cannot work for a machine with these capabilities and shares; `None`
/// when it can.
fn save_refusal(
    capabilities: &rmachine_driver::Capabilities,
    driver: &str,
    shares: &[rmachine_driver::Share],
    creating: bool,
) -> Option<String> {
    if !capabilities.save_state {
        return Some(format!(
            "driver {driver} cannot save a running machine's state"
        ));
    }
    // Shares over SFTP ride the SSH connection: the guest's share daemon keeps the mount
    // (and the containers' bind mounts of it) through the save, and the port agent started
    // after the resume connects it again. A mounted 9p or virtio-fs export cannot be saved.
    let share = shares
        .iter()
        .find(|share| share.transport != ShareTransport::Sftp)?;
    let remedy = if creating {
        "create it with --no-share, or without --save-on-stop"
    } else {
        "stop it with --no-save, or create it with --no-share"
    };
    let sftp = if driver == "qemu" {
        "; shares over SFTP (--qemu-share-transport sftp) survive a save"
    } else {
        ""
    };
    Some(format!(
        "the machine shares {} over {} (QEMU cannot save a guest with a mounted {} export); \
         {remedy}{sftp}",
        share.host_path.display(),
        share.transport,
        share.transport
    ))
}

/// What [`after_resume`] is told about the resume the driver did.
struct ResumedVm {
    /// The host's stages so far.
    timeline: HostClock,
}

/// After [`Driver::resume`]: the guest runs on from where it was saved, but its clock stands
/// where it was then. Records the endpoints of this run, sets the guest's clock from the
/// host's and waits for the engine.
async fn after_resume<D: Driver>(
    store: &Store,
    driver: &D,
    dir: &MachineDir,
    config: &mut MachineConfig,
    resumed: ResumedVm,
    timeout: Duration,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), MachineError> {
    let ResumedVm { mut timeline } = resumed;
    let name = dir.name.clone();
    let endpoints = driver
        .endpoints(dir)
        .await
        .map_err(driver_err(&name, "report the VM's endpoints"))?;
    config.driver.ip_address = endpoints.engine.ip().to_string();
    config.driver.ssh_port = endpoints.ssh.port();
    config.driver.engine_port = endpoints.engine.port();
    store.save(config)?;
    update_docker_context(store, &name, &endpoints.engine);
    progress(Progress::WaitingForEngine);
    let client = engine_client(store, &name)?;
    let began = Instant::now();
    timeline.mark(HostStage::FirstProbe);
    let (clock, engine, cleaned) = tokio::join!(
        async {
            match driver.set_clock_after_resume(dir).await {
                GuestClock::Set => return Ok(()),
                GuestClock::NotSet { reason } => return Err(reason),
                GuestClock::LeftToHost => {}
            }
            let set = set_guest_clock(
                endpoints.ssh,
                &config.driver.ssh_user,
                &config.driver.ssh_key_path,
            )
            .await;
            tracing::debug!(ms = began.elapsed().as_millis() as u64, "guest clock set");
            set
        },
        async {
            let ready = client.wait_ready(endpoints.engine, timeout).await;
            tracing::debug!(ms = began.elapsed().as_millis() as u64, "engine answered");
            ready
        },
        driver.finish_resume(dir)
    );
    if let Err(reason) = clock {
        tracing::warn!(machine = %name, "the guest's clock was not set after the resume: {reason}");
        progress(Progress::ClockNotSet { reason });
    }
    if let Err(error) = cleaned {
        tracing::warn!(machine = %name, "after the resume: {}", error_chain(&error));
    }
    engine.map_err(|source| MachineError::EngineNotReady {
        machine: name.clone(),
        last_stage: None,
        // A resumed guest prints no boot stages: the note about a missing init does not apply.
        console_captured: false,
        console: read_console_tail(dir, 15),
        cause: Box::new(source),
    })?;
    timeline.mark(HostStage::Ready);
    // `--timings` and `inspect` show this run: a resume has no guest boot stages.
    config.timeline = Some(BootTimeline {
        guest: Vec::new(),
        host: timeline.marks,
    });
    // The machine runs and answers: a timeline that could not be kept does not fail `start`.
    if let Err(err) = store.save(config) {
        tracing::warn!(machine = %name, "the resume's timeline was not saved: {}", error_chain(&err));
    }
    progress(Progress::EngineReady);
    Ok(())
}

/// How long setting the guest's clock after a resume, or syncing its disks before a save,
/// may take.
const GUEST_COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// Sets the guest's clock to the host's over SSH (a resumed guest's clock stands where it was
/// when it was saved). `date -s @SECONDS` takes whole seconds: the command is sent so that it
/// runs at a whole second of the host's clock, half a measured round trip after it is sent.
async fn set_guest_clock(ssh: SocketAddr, user: &str, key: &std::path::Path) -> Result<(), String> {
    let work = async {
        let session = SshSession::connect_as(ssh, user, key)
            .await
            .map_err(|e| error_chain(&e))?;
        // One command's round trip on this session: the delay until `date` runs is about half.
        let probe = Instant::now();
        run_on(&session, "true").await?;
        let one_way = probe.elapsed() / 2;
        let now = chrono::Utc::now() + one_way;
        let next = now.timestamp() + 1;
        let wait_ms = 1000 - i64::from(now.timestamp_subsec_millis());
        tokio::time::sleep(Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0))).await;
        let set = run_on(&session, &format!("date -u -s @{next} >/dev/null")).await;
        session.close().await;
        set
    };
    within_guest_command_timeout(work).await
}

/// `work` (SSH commands on the guest), given up after [`GUEST_COMMAND_TIMEOUT`].
async fn within_guest_command_timeout(
    work: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String> {
    tokio::time::timeout(GUEST_COMMAND_TIMEOUT, work)
        .await
        .map_err(|_| {
            format!(
                "no answer over SSH within {} s",
                GUEST_COMMAND_TIMEOUT.as_secs()
            )
        })?
}

/// Runs `command` on the guest; its stderr if it fails.
async fn run_on(session: &SshSession, command: &str) -> Result<(), String> {
    let mut err = Vec::new();
    let status = session
        .run_with(
            command,
            None::<tokio::io::Empty>,
            tokio::io::sink(),
            &mut err,
        )
        .await
        .map_err(|e| error_chain(&e))?;
    match status {
        0 => Ok(()),
        _ => Err(format!(
            "`{command}` exited with {status}: {}",
            String::from_utf8_lossy(&err).trim()
        )),
    }
}

/// Flushes the guest's page cache to its disks over SSH before a save: writes that lived only
/// in the saved memory would be lost with any state that is later discarded.
async fn sync_guest_disks(
    ssh: SocketAddr,
    user: &str,
    key: &std::path::Path,
) -> Result<(), String> {
    let work = async {
        let session = SshSession::connect_as(ssh, user, key)
            .await
            .map_err(|e| error_chain(&e))?;
        let synced = run_on(&session, "sync").await;
        session.close().await;
        synced
    };
    within_guest_command_timeout(work).await
}

/// How long `create` and `start` wait for the port agent to mount the shares over SFTP.
pub const SFTP_SHARE_WAIT: Duration = Duration::from_secs(30);

/// Waits until the port agent reports each of the machine's shares over SFTP mounted or
/// failed, so that a `docker run -v` typed right after `create`/`start` finds the host's files
/// rather than an empty folder; returns (and logs as warnings) one line per share that is not
/// mounted.
pub async fn wait_for_sftp_shares(
    store: &Store,
    name: &str,
    agent_pid: u32,
    timeout: Duration,
) -> Result<Vec<String>, MachineError> {
    let config = store.load(name)?;
    let wanted: Vec<&rmachine_driver::Share> = config
        .vm
        .shares
        .iter()
        .filter(|s| s.transport == ShareTransport::Sftp)
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let dir = store.machine_path(name);
    let deadline = Instant::now() + timeout;
    loop {
        // Only the new agent's report: the last agent's may still say mounted (after a
        // resume the guest holds the mounts, answering EIO until the new agent connects).
        let states = portagent::read_status(&dir)
            .filter(|s| s.pid == agent_pid)
            .map(|s| s.shares)
            .unwrap_or_default();
        let state_of = |share: &rmachine_driver::Share| {
            states
                .iter()
                .find(|s| s.guest_path == share.guest_path)
                .cloned()
        };
        let settled = wanted
            .iter()
            .all(|share| state_of(share).is_some_and(|s| s.mounted || s.error.is_some()));
        if settled || Instant::now() >= deadline {
            let problems: Vec<String> = wanted
                .iter()
                .filter_map(|share| {
                    let label = format!("{} on {}", share.host_path.display(), share.guest_path);
                    match state_of(share) {
                        Some(s) if s.mounted => None,
                        Some(SftpShareState {
                            error: Some(error), ..
                        }) => Some(format!(
                            "share {label} could not be mounted in the machine: {error}"
                        )),
                        _ => Some(format!(
                            "share {label} was not mounted over SFTP within {} s (see {})",
                            timeout.as_secs(),
                            dir.join(portagent::LOG_FILE).display()
                        )),
                    }
                })
                .collect();
            for problem in &problems {
                tracing::warn!(machine = name, "{problem}");
            }
            return Ok(problems);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The spec a driver is given: without the shares it does not export (those over SFTP, which
/// the port agent serves), so a driver that cannot share still boots a machine that has them.
fn driver_spec(vm: &VmSpec) -> std::borrow::Cow<'_, VmSpec> {
    if vm
        .shares
        .iter()
        .all(|s| s.transport != ShareTransport::Sftp)
    {
        return std::borrow::Cow::Borrowed(vm);
    }
    let mut spec = vm.clone();
    spec.shares.retain(|s| s.transport != ShareTransport::Sftp);
    std::borrow::Cow::Owned(spec)
}

/// Starts the port agent of a running machine (replacing an older one): `program` is the
/// `rmachine` executable, which runs it as `rmachine port-agent NAME`.
pub fn start_port_agent(
    store: &Store,
    name: &str,
    program: &std::path::Path,
) -> Result<Option<u32>, MachineError> {
    store.require(name)?;
    // Containers on an existing host publish their ports on that host itself.
    let driver = driver_for(&load_finished(store, name)?)?;
    if driver.info().capabilities.existing_host {
        return Ok(None);
    }
    Ok(Some(portagent::restart(store, name, program)?))
}

/// `stop`: ask the guest to power off; fails after [`STOP_TIMEOUT`] suggesting `kill`. A
/// machine made with `--save-on-stop` is saved instead ([`stop_with`]).
pub async fn stop(store: &Store, name: &str) -> Result<(), MachineError> {
    stop_with(store, name, None).await.map(drop)
}

/// `stop`, `stop --save` (`Some(true)`) or `stop --no-save` (`Some(false)`); `None` follows
/// the machine's `--save-on-stop`. Saving writes the running guest's state beside its disk
/// (the next `start` resumes it) instead of powering it off. True when the state was saved.
#[tracing::instrument(skip_all, fields(machine = name))]
pub async fn stop_with(
    store: &Store,
    name: &str,
    save: Option<bool>,
) -> Result<bool, MachineError> {
    store.require(name)?;
    let _lock = store.lock(name)?;
    let (config, driver) = load_with_driver(store, name).await?;
    let dir = store.machine_dir(name);
    let current = driver
        .state(&dir)
        .await
        .map_err(driver_err(name, "report the state"))?;
    if matches!(current, VmState::Stopped | VmState::Saved) {
        return Err(MachineError::AlreadyInState {
            machine: name.to_string(),
            state: if current == VmState::Saved {
                "stopped (its state is saved)".to_string()
            } else {
                "stopped".to_string()
            },
        });
    }
    if save.unwrap_or(config.save_on_stop) {
        let info = driver.info();
        if let Some(reason) = save_refusal(&info.capabilities, &info.name, &config.vm.shares, false)
        {
            return Err(MachineError::CannotSave {
                machine: name.to_string(),
                reason,
            });
        }
        let endpoints = driver
            .endpoints(&dir)
            .await
            .map_err(driver_err(name, "report the VM's endpoints"))?;
        sync_guest_disks(
            endpoints.ssh,
            &config.driver.ssh_user,
            &config.driver.ssh_key_path,
        )
        .await
        .map_err(|reason| MachineError::CannotSave {
            machine: name.to_string(),
            reason: format!(
                "the guest's writes could not be flushed to its disk ({reason}); stop it \
                 without --save"
            ),
        })?;
        driver
            .save(&dir, &driver_spec(&config.vm))
            .await
            .map_err(driver_err(name, "save the VM's state"))?;
        // Only once saved: a failed save leaves the guest running with its ports published.
        portagent::stop(store, name)?;
        return Ok(true);
    }
    portagent::stop(store, name)?;
    match driver
        .stop(
            &dir,
            StopMode::Graceful {
                timeout: STOP_TIMEOUT,
            },
        )
        .await
    {
        Ok(()) => Ok(false),
        Err(DriverError::Timeout { .. }) => Err(MachineError::StopTimeout {
            machine: name.to_string(),
            seconds: STOP_TIMEOUT.as_secs(),
        }),
        Err(e) => Err(driver_err(name, "stop the VM")(e)),
    }
}

/// `kill`: pull the plug.
#[tracing::instrument(skip_all, fields(machine = name))]
pub async fn kill(store: &Store, name: &str) -> Result<(), MachineError> {
    store.require(name)?;
    let _lock = store.lock(name)?;
    let (_, driver) = load_with_driver(store, name).await?;
    portagent::stop(store, name)?;
    driver
        .stop(&store.machine_dir(name), StopMode::Kill)
        .await
        .map_err(driver_err(name, "kill the VM"))
}

/// `restart`: stop if running, then start.
pub async fn restart(
    store: &Store,
    name: &str,
    timeout: Duration,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), MachineError> {
    if !matches!(state(store, name).await?, VmState::Stopped | VmState::Saved) {
        stop_with(store, name, Some(false)).await?;
    }
    start_with(store, name, timeout, false, progress).await
}

/// `regenerate-certs`: a new engine certificate for the machine (its SANs as at create), signed
/// by the store's CA. With `client_certs`, a missing CA or client certificate is made first
/// (docker-machine's `BootstrapCertificates`). A running machine gets it without a restart
/// ([`install_live`]; docker-machine restarted docker); one whose guest image cannot take it
/// while it runs is restarted, as a saved one is booted afresh (the guest reads its
/// certificate from the configuration drive, which `start` rewrites).
///
/// True when the machine was restarted (its port agent ended with it).
pub async fn regenerate_certs(
    store: &Store,
    name: &str,
    client_certs: bool,
    timeout: Duration,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<bool, MachineError> {
    regenerate(store, name, client_certs, true, timeout, progress).await
}

/// [`regenerate_certs`]; without `live`, a running machine is restarted with the certificate
/// (`provision`, which needs the boot to apply the rest of the configuration drive).
#[tracing::instrument(skip_all, fields(machine = name))]
async fn regenerate(
    store: &Store,
    name: &str,
    client_certs: bool,
    live: bool,
    timeout: Duration,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<bool, MachineError> {
    store.require(name)?;
    let (_, driver) = load_with_driver(store, name).await?;
    let restart_needed =
        regenerate_with(store, &driver, name, client_certs, live, progress).await?;
    // The lock is released: restart takes it for itself.
    if restart_needed {
        restart(store, name, timeout, progress).await?;
    }
    Ok(restart_needed)
}

/// The part of [`regenerate`] done under the machine's lock, with `driver`; true when the
/// machine must be restarted (or booted afresh) to use the new certificate.
async fn regenerate_with<D: Driver>(
    store: &Store,
    driver: &D,
    name: &str,
    client_certs: bool,
    live: bool,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<bool, MachineError> {
    let certs_err = |source| MachineError::Certs {
        machine: name.to_string(),
        source,
    };
    let _lock = store.lock(name)?;
    let mut config = store.load(name)?;
    if client_certs {
        let paths = certs::CertPaths::in_dir(&store.certs_dir());
        certs::bootstrap(&store.certs_dir(), &mut |event| match event {
            CertEvent::CreatingCa => progress(Progress::CreatingCa(paths.ca.clone())),
            CertEvent::CreatingClient => progress(Progress::CreatingClientCert(paths.cert.clone())),
        })
        .map_err(MachineError::Bootstrap)?;
    }
    let dir = store.machine_dir(name);
    let current = driver
        .state(&dir)
        .await
        .map_err(driver_err(name, "report the state"))?;
    let mut sans = config.host_options.auth_options.server_cert_sans.clone();
    if live && current == VmState::Running {
        let endpoints = driver
            .endpoints(&dir)
            .await
            .map_err(driver_err(name, "report the VM's endpoints"))?;
        // The address it runs at now is named too (docker-machine issued for the current
        // IP): a bridged machine's new lease is fixed by this command as by `env`.
        let ip = endpoints.engine.ip().to_string();
        if !sans.contains(&ip) {
            sans.push(ip);
        }
        progress(Progress::InstallingCertsLive);
        let installed = install_live(
            store,
            driver,
            &dir,
            &mut config,
            &endpoints,
            sans.clone(),
            LIVE_INSTALL_TIMEOUT,
        )
        .await?;
        if installed == LiveInstall::Installed {
            return Ok(false);
        }
        tracing::warn!(
            machine = name,
            "the certificate cannot be put in service while the machine runs ({}): restarting \
             the machine with it",
            installed.why_not()
        );
    }
    progress(Progress::CopyingCerts);
    let server = certs::server_cert(&store.certs_dir(), name, &sans).map_err(certs_err)?;
    certs::install_machine_certs(&store.certs_dir(), dir.path(), &server).map_err(certs_err)?;
    config.host_options.auth_options.server_cert_sans = sans;
    store.save(&config)?;
    Ok(current != VmState::Stopped)
}

/// `provision`: re-applies the machine's record to its guest: a new engine certificate, the
/// configuration drive rewritten from the record (engine options, labels, keys), and a restart
/// so the guest reads them, as docker-machine re-runs its provisioner over SSH. The machine
/// must be running (docker-machine's provisioner needs SSH).
pub async fn provision_again(
    store: &Store,
    name: &str,
    timeout: Duration,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), MachineError> {
    if state(store, name).await? != VmState::Running {
        return Err(MachineError::NotRunning {
            machine: name.to_string(),
        });
    }
    regenerate(store, name, false, false, timeout, progress)
        .await
        .map(drop)
}

/// `upgrade`: boots the machine on the current guest image (`guest_image`, else the one
/// [`image::find`] picks, downloading from `guest_image_url` last), keeping its data disk, SSH
/// host key and certificates. A running machine is stopped first; the machine ends running,
/// as docker-machine's boot2docker upgrade leaves it. Returns the image version.
pub async fn upgrade(
    store: &Store,
    name: &str,
    guest_image: Option<&ImageSource>,
    guest_image_url: &str,
    timeout: Duration,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<String, MachineError> {
    let (_, driver) = load_with_driver(store, name).await?;
    upgrade_with(
        store,
        &driver,
        name,
        guest_image,
        guest_image_url,
        timeout,
        progress,
    )
    .await
}

/// [`upgrade`] with a given driver.
#[tracing::instrument(skip_all, fields(machine = name))]
pub async fn upgrade_with<D: Driver>(
    store: &Store,
    driver: &D,
    name: &str,
    guest_image: Option<&ImageSource>,
    guest_image_url: &str,
    timeout: Duration,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<String, MachineError> {
    let began = Instant::now();
    store.require(name)?;
    if driver.info().capabilities.existing_host {
        return Err(driver_err(name, "upgrade")(DriverError::Unsupported {
            driver: driver.info().name,
            op: "upgrade (an existing host gets the engine binaries at create only)".to_string(),
        }));
    }
    if store.is_unfinished(name) {
        return Err(MachineError::Unfinished {
            machine: name.to_string(),
            running: create_running(store, name),
        });
    }
    let _lock = store.lock(name)?;
    let mut config = store.load(name)?;
    let dir = store.machine_dir(name);
    let arch = driver.guest_arch().unwrap_or(std::env::consts::ARCH);
    let dev_out = image::workspace_guest_out(arch);
    let found = image::find(
        guest_image,
        &image::expand_download_url(guest_image_url, arch),
        &store.cache_dir(),
        dev_out.as_deref(),
        arch,
        &|event| progress(Progress::Download(event)),
    )
    .await?;
    let version = found.manifest.version.clone();
    if found.dir.parent() != Some(store.cache_dir().join("guest").as_path()) {
        progress(Progress::ImportingImage {
            version: version.clone(),
            from: found.dir.clone(),
        });
    }
    let cached = image::import(&found, &store.cache_dir())?;
    let current = driver
        .state(&dir)
        .await
        .map_err(driver_err(name, "report the state"))?;
    if current != VmState::Stopped {
        progress(Progress::StoppingForUpgrade);
        match driver
            .stop(
                &dir,
                StopMode::Graceful {
                    timeout: STOP_TIMEOUT,
                },
            )
            .await
        {
            Ok(()) => {}
            Err(DriverError::Timeout { .. }) => {
                return Err(MachineError::StopTimeout {
                    machine: name.to_string(),
                    seconds: STOP_TIMEOUT.as_secs(),
                })
            }
            Err(e) => return Err(driver_err(name, "stop the VM")(e)),
        }
    }
    progress(Progress::Upgrading {
        machine: name.to_string(),
        version: version.clone(),
    });
    config.vm.boot = boot_files(driver, &dir, &cached).await;
    store.save(&config)?;
    progress(Progress::StartingAfterUpgrade);
    write_config_drive(&config, &dir, driver)?;
    boot(
        store,
        driver,
        &dir,
        &mut config,
        timeout,
        began,
        BootOf::Existing,
        progress,
    )
    .await?;
    Ok(version)
}

/// `rm`: the driver removes the VM, then the machine directory goes (only that directory).
/// With `force`, the directory goes even if the driver fails.
#[tracing::instrument(skip_all, fields(machine = name))]
pub async fn remove(store: &Store, name: &str, force: bool) -> Result<(), MachineError> {
    // An interrupted create may have stopped before writing the record.
    let unfinished = store.is_unfinished(name);
    if !unfinished {
        store.require(name)?;
    }
    let lock = store.lock(name)?;
    let dir = store.machine_dir(name);
    if let Err(e) = portagent::stop(store, name) {
        if !force {
            return Err(e.into());
        }
        tracing::warn!(error = %e, "removing the machine anyway (--force)");
    }
    let removed = match store
        .load(name)
        .map_err(MachineError::from)
        .and_then(|c| driver_for(&c))
    {
        Ok(driver) => driver
            .remove(&dir)
            .await
            .map_err(driver_err(name, "remove the VM")),
        // Without a record the driver never started a VM: the directory is all there is.
        Err(MachineError::Store(StoreError::NotFound { .. })) if unfinished => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = removed {
        if !force {
            return Err(e);
        }
        tracing::warn!(error = %e, "removing the machine directory anyway (--force)");
    }
    drop(lock);
    store.remove_machine_dir(name)?;
    if let Some(config_dir) = store.docker_config() {
        if let Err(error) = context::remove(config_dir, name) {
            tracing::warn!(error = %error_chain(&error), "docker context not removed");
        }
    }
    Ok(())
}

/// The engine's address when the machine runs.
async fn running_endpoints(
    store: &Store,
    name: &str,
) -> Result<rmachine_driver::Endpoints, MachineError> {
    let (_, driver) = load_with_driver(store, name).await?;
    running_endpoints_with(store, &driver, name).await
}

async fn running_endpoints_with<D: Driver>(
    store: &Store,
    driver: &D,
    name: &str,
) -> Result<rmachine_driver::Endpoints, MachineError> {
    let dir = store.machine_dir(name);
    let current = driver
        .state(&dir)
        .await
        .map_err(driver_err(name, "report the state"))?;
    if current != VmState::Running {
        return Err(MachineError::NotRunning {
            machine: name.to_string(),
        });
    }
    driver
        .endpoints(&dir)
        .await
        .map_err(driver_err(name, "report the VM's endpoints"))
}

/// `url`: `tcp://HOST:PORT` of the engine.
pub async fn url(store: &Store, name: &str) -> Result<String, MachineError> {
    let endpoints = running_endpoints(store, name).await?;
    Ok(format!("tcp://{}", endpoints.engine))
}

/// `ip`: the address the host reaches the guest at.
pub async fn ip(store: &Store, name: &str) -> Result<String, MachineError> {
    let endpoints = running_endpoints(store, name).await?;
    Ok(endpoints.engine.ip().to_string())
}

/// The machine's driver, for a command that runs the TLS check: only a missing or unfinished
/// machine is reported as itself.
async fn driver_for_tls_check(store: &Store, name: &str) -> Result<AnyDriver, MachineError> {
    match load_with_driver(store, name).await {
        Ok((_, driver)) => Ok(driver),
        Err(e @ (MachineError::Store(_) | MachineError::Unfinished { .. })) => Err(e),
        Err(other) => Err(MachineError::TlsCheck {
            machine: name.to_string(),
            cause: Box::new(other),
        }),
    }
}

/// docker-machine's TLS check: the engine must answer over mutual TLS with the machine's
/// certificates (issued anew first if they do not name the machine's address). Returns the
/// engine URL, its address and whether the machine was restarted for a new certificate.
async fn tls_check<D: Driver>(
    store: &Store,
    driver: &D,
    name: &str,
) -> Result<(String, SocketAddr, bool), MachineError> {
    let wrap = |e: MachineError| MachineError::TlsCheck {
        machine: name.to_string(),
        cause: Box::new(e),
    };
    let endpoints = running_endpoints_with(store, driver, name)
        .await
        .map_err(|e| match e {
            MachineError::Store(_) | MachineError::Unfinished { .. } => e,
            other => wrap(other),
        })?;
    let (endpoints, restarted) = follow_new_address(
        store,
        driver,
        name,
        endpoints,
        LIVE_INSTALL_TIMEOUT,
        OldGuest::Restart,
    )
    .await
    .map_err(wrap)?;
    let addr = endpoints.engine;
    let client = engine_client(store, name).map_err(wrap)?;
    client.ping(addr).await.map_err(|cause| {
        wrap(MachineError::CertValidation {
            addr,
            cause: Box::new(cause),
        })
    })?;
    Ok((format!("tcp://{addr}"), addr, restarted))
}

/// Options of `env`.
#[derive(Debug, Clone)]
pub struct EnvOptions {
    /// The shell dialect.
    pub shell: Shell,
    /// `--no-proxy`.
    pub no_proxy: bool,
    /// The command line, for the usage hint.
    pub argv: Vec<String>,
}

/// What `env` or `config` prints, and whether the machine was restarted to get there (a
/// certificate naming its new address): the caller then starts its port agent again.
#[derive(Debug, Clone)]
pub struct ClientSetup {
    /// The text to print.
    pub text: String,
    /// The machine was restarted (its port agent stopped with it).
    pub restarted: bool,
}

/// `env NAME`: the lines to paste into a shell (after the TLS check).
pub async fn env(
    store: &Store,
    name: &str,
    options: &EnvOptions,
) -> Result<ClientSetup, MachineError> {
    let driver = driver_for_tls_check(store, name).await?;
    env_with(store, &driver, name, options).await
}

/// [`env`] with a given driver.
async fn env_with<D: Driver>(
    store: &Store,
    driver: &D,
    name: &str,
    options: &EnvOptions,
) -> Result<ClientSetup, MachineError> {
    let (url, addr, restarted) = tls_check(store, driver, name).await?;
    let mut vars = vec![
        ("DOCKER_TLS_VERIFY".to_string(), "1".to_string()),
        ("DOCKER_HOST".to_string(), url),
        (
            "DOCKER_CERT_PATH".to_string(),
            store.machine_path(name).display().to_string(),
        ),
        ("DOCKER_MACHINE_NAME".to_string(), name.to_string()),
    ];
    if cfg!(windows) {
        vars.push(("COMPOSE_CONVERT_WINDOWS_PATHS".into(), "true".into()));
    }
    if options.no_proxy {
        vars.push(env::no_proxy(&addr.ip().to_string(), |k| {
            std::env::var(k).ok()
        }));
    }
    Ok(ClientSetup {
        text: options.shell.render_env(&vars, &options.argv),
        restarted,
    })
}

/// `config NAME`: docker CLI flags for the machine (after the TLS check).
pub async fn client_flags(store: &Store, name: &str) -> Result<ClientSetup, MachineError> {
    let driver = driver_for_tls_check(store, name).await?;
    client_flags_with(store, &driver, name).await
}

/// [`client_flags`] with a given driver.
async fn client_flags_with<D: Driver>(
    store: &Store,
    driver: &D,
    name: &str,
) -> Result<ClientSetup, MachineError> {
    let (url, _, restarted) = tls_check(store, driver, name).await?;
    let dir = store.machine_path(name);
    let file = |f: &str| dir.join(f).display().to_string();
    Ok(ClientSetup {
        text: format!(
            "--tlsverify\n--tlscacert=\"{}\"\n--tlscert=\"{}\"\n--tlskey=\"{}\"\n-H={url}\n",
            file("ca.pem"),
            file("cert.pem"),
            file("key.pem")
        ),
        restarted,
    })
}

/// The data disk image as `inspect` shows it (`DataDiskImage`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DiskImageSize {
    /// The image file.
    pub path: PathBuf,
    /// The bytes the host's file system holds for it (what discard and fstrim give back);
    /// `None` where the platform does not tell (Windows).
    pub allocated_bytes: Option<u64>,
    /// Its apparent size (a sparse image's largest offset).
    pub apparent_bytes: u64,
}

/// The sizes of a disk image, if it exists.
pub fn disk_image_size(path: &std::path::Path) -> Option<DiskImageSize> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let allocated = {
        use std::os::unix::fs::MetadataExt;
        // st_blocks counts 512-byte units whatever the file system's block size.
        Some(meta.blocks().saturating_mul(512))
    };
    #[cfg(not(unix))]
    let allocated = None;
    Some(DiskImageSize {
        path: path.to_owned(),
        allocated_bytes: allocated,
        apparent_bytes: meta.len(),
    })
}

/// `inspect NAME [-f FORMAT]`: the record as 4-space-indented JSON, or rendered by `format`.
pub fn inspect(store: &Store, name: &str, format: Option<&str>) -> Result<String, MachineError> {
    let config = store.load(name)?;
    let mut value = serde_json::to_value(&config).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        let agent = portagent::report(&store.machine_path(name));
        map.insert(
            "PortAgent".to_string(),
            serde_json::to_value(agent).unwrap_or(Value::Null),
        );
        // Live, not part of the record: what the hypervisor process holds in memory now.
        let rss = driver_for(&config)
            .ok()
            .and_then(|driver| driver.resident_bytes(&store.machine_dir(name)));
        map.insert(
            "HypervisorRssBytes".to_string(),
            rss.map(Value::from).unwrap_or(Value::Null),
        );
        // Live too: the data disk image on the host, and the guest's usage as the agent
        // last read it.
        let image = driver_for(&config)
            .ok()
            .and_then(|driver| driver.data_disk_image(&store.machine_dir(name)))
            .and_then(|path| disk_image_size(&path));
        map.insert(
            "DataDiskImage".to_string(),
            image
                .map(|i| serde_json::to_value(i).unwrap_or(Value::Null))
                .unwrap_or(Value::Null),
        );
        let usage =
            portagent::read_status(&store.machine_path(name)).and_then(|s| s.data_disk_usage);
        map.insert(
            "DataDiskUsage".to_string(),
            usage
                .map(|u| serde_json::to_value(u).unwrap_or(Value::Null))
                .unwrap_or(Value::Null),
        );
    }
    match format {
        Some(format) => Ok(format!("{}\n", template::render(format, &value)?)),
        None => Ok(format!("{}\n", template::pretty(&value))),
    }
}

/// `version NAME`: the engine's version string.
pub async fn engine_version(store: &Store, name: &str) -> Result<String, MachineError> {
    let endpoints = running_endpoints(store, name).await?;
    let client = engine_client(store, name)?;
    client
        .version(endpoints.engine)
        .await
        .map_err(|cause| MachineError::CertValidation {
            addr: endpoints.engine,
            cause: Box::new(cause),
        })
}

/// `ls`'s row for machine `name`, made by `deadline` (a certificate that must be put in service
/// first is given up in time for that).
async fn list_entry(
    store: &Store,
    name: &str,
    docker_host: Option<&str>,
    deadline: Instant,
) -> ListEntry {
    let started = Instant::now();
    let mut entry = ListEntry {
        name: name.to_string(),
        active: "-".to_string(),
        driver_name: String::new(),
        state: String::new(),
        url: String::new(),
        swarm: String::new(),
        docker_version: "Unknown".to_string(),
        error: String::new(),
        response_time: String::new(),
    };
    if store.is_unfinished(name) {
        entry.driver_name = store.load(name).map(|c| c.driver_name).unwrap_or_default();
        if store.is_locked(name) {
            entry.state = "Creating".to_string();
        } else {
            entry.state = "Error".to_string();
            entry.error = unfinished_text(name, &false);
        }
        entry.response_time = format!("{}ms", started.elapsed().as_millis());
        return entry;
    }
    let (config, driver) = match load_with_driver(store, name).await {
        Ok(pair) => pair,
        // An external driver that is found but fails to start: its name and why.
        Err(e @ MachineError::Driver { .. }) => {
            entry.driver_name = store
                .load(name)
                .map(|c| c.driver_name)
                .unwrap_or_else(|_| "not found".to_string());
            entry.state = "Error".to_string();
            entry.error = error_chain(&e);
            return entry;
        }
        Err(e) => {
            entry.driver_name = "not found".to_string();
            entry.state = "Error".to_string();
            entry.error = e.to_string();
            return entry;
        }
    };
    list_entry_from(
        store,
        &config,
        &driver,
        name,
        docker_host,
        entry,
        started,
        deadline,
    )
    .await
}

/// [`list_entry`] once the machine's record and driver are loaded.
#[allow(clippy::too_many_arguments)]
async fn list_entry_from<D: Driver>(
    store: &Store,
    config: &MachineConfig,
    driver: &D,
    name: &str,
    docker_host: Option<&str>,
    mut entry: ListEntry,
    started: Instant,
    deadline: Instant,
) -> ListEntry {
    entry.driver_name = config.driver_name.clone();
    let dir = store.machine_dir(name);
    let current = match driver.state(&dir).await {
        Ok(s) => s,
        Err(e) => {
            entry.state = "Error".to_string();
            entry.error = e.to_string();
            return entry;
        }
    };
    entry.state = current.to_string();
    if current == VmState::Running {
        match driver.endpoints(&dir).await {
            Ok(endpoints) => {
                entry.url = format!("tcp://{}", endpoints.engine);
                if docker_host == Some(entry.url.as_str()) {
                    entry.active = "*".to_string();
                }
                match engine_answer(store, driver, name, &dir, endpoints, deadline).await {
                    Ok(version) => entry.docker_version = version,
                    Err(error) => entry.error = error,
                }
                if entry.error.is_empty() {
                    let errors: Vec<String> =
                        [portagent::ls_errors(dir.path()), share_errors(config)]
                            .into_iter()
                            .flatten()
                            .collect();
                    entry.error = errors.join("; ");
                }
            }
            Err(e) => entry.error = e.to_string(),
        }
    }
    entry.response_time = format!("{}ms", started.elapsed().as_millis());
    entry
}

/// How much of `ls`'s timeout is kept for answering after putting a certificate in service.
const LS_MARGIN: Duration = Duration::from_millis(500);

/// What `ls` shows of a running machine's engine: its version, or why there is none. A
/// certificate that does not name the machine's address is replaced in the running machine
/// first, before `deadline` (as `env` does, without its restart of a guest that cannot take
/// it while it runs); if that cannot be done in time, the error says what to run.
async fn engine_answer<D: Driver>(
    store: &Store,
    driver: &D,
    name: &str,
    dir: &MachineDir,
    endpoints: rmachine_driver::Endpoints,
    deadline: Instant,
) -> Result<String, String> {
    let mut engine = endpoints.engine;
    let ip = engine.ip();
    if matches!(certs::covers(&dir.file("server.pem"), ip), Ok(false)) {
        let within = deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(LS_MARGIN);
        match follow_new_address(store, driver, name, endpoints, within, OldGuest::Refuse).await {
            Ok((now, _)) => engine = now.engine,
            Err(e) => {
                return Err(format!(
                    "the engine certificate does not name the machine's address {ip} and none \
                     that does could be put in service within ls's timeout ({}): run `rmachine \
                     regenerate-certs -f {name}`",
                    error_chain(&e)
                ))
            }
        }
    }
    let client = engine_client(store, name).map_err(|e| e.to_string())?;
    match client.version(engine).await {
        Ok(version) => Ok(format!("v{version}")),
        Err(e) => Err(e.to_string()),
    }
}

/// `ls`: every machine, queried concurrently, each within `timeout`. `docker_host` is
/// `$DOCKER_HOST`, to mark the active machine.
pub async fn list(
    store: &Store,
    timeout: Duration,
    docker_host: Option<&str>,
) -> Result<Vec<ListEntry>, MachineError> {
    let names = store.list()?;
    let deadline = Instant::now() + timeout;
    let handle = tokio::runtime::Handle::current();
    let queries = names.iter().map(|name| {
        // Each query on a thread of its own: a driver may block its thread (an external
        // plugin's handshake), and the timeout must still end the wait for it.
        let (store_copy, name_copy) = (store.clone(), name.clone());
        let docker_host = docker_host.map(str::to_owned);
        let handle = handle.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let plugins = Arc::new(PluginScope::default());
        let in_thread = Arc::clone(&plugins);
        std::thread::spawn(move || {
            let entry = handle.block_on(in_thread.run(list_entry(
                &store_copy,
                &name_copy,
                docker_host.as_deref(),
                deadline,
            )));
            let _ = tx.send(entry);
        });
        async move {
            let answer = tokio::time::timeout(timeout, rx).await;
            if answer.is_err() {
                // The query stays blocked on its thread; the plugins it started are ended
                // now, so that none outlives `ls` (which exits right after printing).
                if let Err(e) = tokio::task::spawn_blocking(move || plugins.abandon()).await {
                    tracing::warn!(error = %e, "driver plugins of a timed-out query not ended");
                }
            }
            match answer {
                Ok(Ok(entry)) => entry,
                Ok(Err(_)) => ListEntry {
                    name: name.clone(),
                    active: String::new(),
                    driver_name: String::new(),
                    state: "Error".to_string(),
                    url: String::new(),
                    swarm: String::new(),
                    docker_version: String::new(),
                    error: "the query for this machine failed".to_string(),
                    response_time: String::new(),
                },
                // Out of time: docker-machine's Timeout row, the timeout as its response time.
                Err(_) => ListEntry {
                    name: name.clone(),
                    active: String::new(),
                    driver_name: store.load(name).map(|c| c.driver_name).unwrap_or_default(),
                    state: "Timeout".to_string(),
                    url: String::new(),
                    swarm: String::new(),
                    docker_version: String::new(),
                    error: String::new(),
                    response_time: go_duration(timeout),
                },
            }
        }
    });
    Ok(join_all(queries).await)
}

/// A whole or fractional number of seconds as Go prints a `time.Duration` (`10s`, `1.5s`).
fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// Runs futures concurrently on this task and returns their outputs in order.
async fn join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (fut, out) in set.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// `active`: the running machine whose URL is `$DOCKER_HOST`.
pub async fn active(
    store: &Store,
    timeout: Duration,
    docker_host: Option<&str>,
) -> Result<String, MachineError> {
    list(store, timeout, docker_host)
        .await?
        .into_iter()
        .find(|e| e.active == "*")
        .map(|e| e.name)
        .ok_or(MachineError::NoActiveHost)
}

/// The record and endpoints of a machine that must run for an SSH connection (`ssh`, the
/// system `ssh`, `sshfs`): docker-machine's "not running" error otherwise.
async fn running_for_ssh(
    store: &Store,
    name: &str,
) -> Result<(MachineConfig, rmachine_driver::Endpoints), MachineError> {
    let (config, driver) = load_with_driver(store, name).await?;
    let dir = store.machine_dir(name);
    let current = driver
        .state(&dir)
        .await
        .map_err(driver_err(name, "report the state"))?;
    if current != VmState::Running {
        return Err(MachineError::SshNotRunning {
            machine: name.to_string(),
        });
    }
    let endpoints = driver
        .endpoints(&dir)
        .await
        .map_err(driver_err(name, "report the VM's endpoints"))?;
    Ok((config, endpoints))
}

/// `ssh NAME [CMD]`: runs `command` (or an interactive shell) and returns its exit status.
pub async fn ssh(store: &Store, name: &str, command: Option<&str>) -> Result<u32, MachineError> {
    let (config, endpoints) = running_for_ssh(store, name).await?;
    let ssh_err = |source| MachineError::Ssh {
        machine: name.to_string(),
        source: Box::new(source),
    };
    let session = SshSession::connect_as(
        endpoints.ssh,
        &config.driver.ssh_user,
        &config.driver.ssh_key_path,
    )
    .await
    .map_err(ssh_err)?;
    let status = match command {
        Some(cmd) => {
            let forward_stdin = !std::io::IsTerminal::is_terminal(&std::io::stdin());
            session.run(cmd, forward_stdin).await
        }
        None => session.shell().await,
    }
    .map_err(ssh_err)?;
    session.close().await;
    Ok(status)
}

/// `ssh` through the system's OpenSSH client (docker-machine's default "external" client):
/// checks that the machine runs, pins the guest's host key if that has not happened yet,
/// writes `machines/NAME/known_hosts` from the pin, and returns the argv to run with the
/// caller's stdio. `extra` (ssh options, then the command) goes after the destination.
pub async fn system_ssh_argv(
    store: &Store,
    name: &str,
    extra: &[String],
) -> Result<Vec<String>, MachineError> {
    let (config, ssh_addr, known_hosts) = prepare_system_ssh(store, name).await?;
    Ok(ssh::system_ssh_argv(
        ssh_addr,
        &config.driver.ssh_user,
        &config.driver.ssh_key_path,
        &known_hosts,
        name,
        extra,
    ))
}

/// What the system `ssh` and `sshfs` need: the record, the SSH address and the `known_hosts`
/// file (written from the pin, which is made first if missing). The machine must run.
async fn prepare_system_ssh(
    store: &Store,
    name: &str,
) -> Result<(MachineConfig, SocketAddr, PathBuf), MachineError> {
    let (config, endpoints) = running_for_ssh(store, name).await?;
    let ssh_err = |source| MachineError::Ssh {
        machine: name.to_string(),
        source: Box::new(source),
    };
    let key_path = &config.driver.ssh_key_path;
    if !ssh::pinned_host_key_path(key_path).exists() {
        SshSession::connect_as(endpoints.ssh, &config.driver.ssh_user, key_path)
            .await
            .map_err(ssh_err)?
            .close()
            .await;
    }
    let known_hosts = ssh::write_known_hosts(key_path, name).map_err(ssh_err)?;
    Ok((config, endpoints.ssh, known_hosts))
}

/// `mount MACHINE:PATH [MOUNTPOINT]`: the `sshfs` argv to run (the mount point defaults to
/// PATH, as in docker-machine), after the checks `ssh` makes (running, host key pinned).
pub async fn sshfs_argv(
    store: &Store,
    name: &str,
    path: &str,
    mountpoint: Option<&str>,
) -> Result<Vec<String>, MachineError> {
    let (config, ssh_addr, known_hosts) = prepare_system_ssh(store, name).await?;
    Ok(ssh::sshfs_argv(
        ssh_addr,
        &config.driver.ssh_user,
        &config.driver.ssh_key_path,
        &known_hosts,
        name,
        path,
        mountpoint.unwrap_or(path),
    ))
}

/// The default machine name when a command gets none: `default`, if it exists.
pub fn default_name(store: &Store) -> Option<&'static str> {
    store.exists("default").then_some("default")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmachine_driver::{Capabilities, DriverInfo, Endpoints};
    use std::sync::Mutex;

    /// The engine TLS files of a fake guest: what its configuration drive held at its last
    /// start, or what `rmachine-init install-tls` put there since.
    fn guest_tls(dir: &MachineDir) -> PathBuf {
        dir.file("guest-tls")
    }

    /// A guest's SSH server as far as certificates go: it accepts any key and answers
    /// [`INSTALL_TLS_COMMAND`] with `status`, installing the [`TlsFiles`] read from stdin into
    /// `tls_dir` (each file renamed over the old one, as the guest does) when it is 0, and
    /// printing the usage of an init that does not know it for [`INSTALL_TLS_UNKNOWN`].
    #[derive(Clone)]
    struct FakeGuestSsh {
        tls_dir: PathBuf,
        status: u32,
        installs: Arc<std::sync::atomic::AtomicUsize>,
        input: Vec<u8>,
        install: Option<russh::ChannelId>,
    }

    impl russh::server::Handler for FakeGuestSsh {
        type Error = russh::Error;

        async fn auth_publickey(
            &mut self,
            _user: &str,
            _key: russh::server::VerifiedPublicKey<'_>,
        ) -> Result<russh::server::Auth, Self::Error> {
            Ok(russh::server::Auth::Accept)
        }

        async fn channel_open_session(
            &mut self,
            _channel: russh::Channel<russh::server::Msg>,
            reply: russh::server::ChannelOpenHandle,
            _session: &mut russh::server::Session,
        ) -> Result<(), Self::Error> {
            reply.accept().await;
            Ok(())
        }

        async fn exec_request(
            &mut self,
            channel: russh::ChannelId,
            data: &[u8],
            session: &mut russh::server::Session,
        ) -> Result<(), Self::Error> {
            session.channel_success(channel)?;
            if data == INSTALL_TLS_COMMAND.as_bytes() {
                self.install = Some(channel);
                return Ok(());
            }
            session.exit_status_request(channel, 127)?;
            session.eof(channel)?;
            session.close(channel)
        }

        async fn data(
            &mut self,
            channel: russh::ChannelId,
            data: &[u8],
            _session: &mut russh::server::Session,
        ) -> Result<(), Self::Error> {
            if self.install == Some(channel) {
                self.input.extend_from_slice(data);
            }
            Ok(())
        }

        async fn channel_eof(
            &mut self,
            channel: russh::ChannelId,
            session: &mut russh::server::Session,
        ) -> Result<(), Self::Error> {
            if self.install != Some(channel) {
                return Ok(());
            }
            if self.status == 0 {
                let files: TlsFiles = serde_json::from_slice(&self.input).unwrap();
                for (file, text) in [
                    ("server-key.pem", &files.server_key_pem),
                    ("server.pem", &files.server_cert_pem),
                    ("ca.pem", &files.ca_pem),
                ] {
                    let tmp = self.tls_dir.join(format!("{file}.tmp"));
                    std::fs::write(&tmp, text).unwrap();
                    std::fs::rename(&tmp, self.tls_dir.join(file)).unwrap();
                }
                self.installs
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            } else {
                session.extended_data(channel, 1, b"usage: rmachine-init shutdown\n".to_vec())?;
            }
            session.exit_status_request(channel, self.status)?;
            session.eof(channel)?;
            session.close(channel)
        }
    }

    /// Starts a [`FakeGuestSsh`] on a loopback port.
    async fn serve_guest_ssh(
        tls_dir: PathBuf,
        status: u32,
        installs: Arc<std::sync::atomic::AtomicUsize>,
    ) -> SocketAddr {
        use russh::keys::ssh_key::private::Ed25519Keypair;
        let config = Arc::new(russh::server::Config {
            keys: vec![russh::keys::PrivateKey::from(Ed25519Keypair::from_seed(
                &[3u8; 32],
            ))],
            ..Default::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let handler = FakeGuestSsh {
                    tls_dir: tls_dir.clone(),
                    status,
                    installs: installs.clone(),
                    input: Vec::new(),
                    install: None,
                };
                let config = config.clone();
                tokio::spawn(async move {
                    if let Ok(session) = russh::server::run_stream(config, tcp, handler).await {
                        let _ = session.await;
                    }
                });
            }
        });
        addr
    }

    /// A driver whose steps can be made to fail; `start` serves a TLS engine from the
    /// certificates on the configuration drive, as the guest would, and a guest SSH server
    /// that installs new ones ([`FakeGuestSsh`]).
    #[derive(Default)]
    struct FakeDriver {
        /// The exit status of the guest's `rmachine-init install-tls` (0: installs).
        install_status: u32,
        /// How many certificates the guest's SSH server installed.
        installs: Arc<std::sync::atomic::AtomicUsize>,
        /// The guest's SSH server once started.
        ssh: Mutex<Option<SocketAddr>>,
        fail: Option<&'static str>,
        calls: Mutex<Vec<String>>,
        engine: Mutex<Option<SocketAddr>>,
        serve_engine: bool,
        /// When set, the driver captures the console and `start` writes this as `console.log`.
        console: Option<String>,
        /// The address the engine comes up at (default 127.0.0.1), as a bridged VM's lease.
        engine_ip: Option<std::net::IpAddr>,
        /// When set, the driver can share folders and its options share this one.
        share: Option<rmachine_driver::DriverShare>,
        /// The driver cannot share folders, even with `share` set.
        cannot_share: bool,
        /// The state `state` reports once set (else Running), as after another command.
        state_now: Mutex<Option<VmState>>,
        /// Its [`Capabilities::fast_boot_files`].
        fast_boot_files: bool,
        /// When set, the engine serves the TLS files in this directory, not the configuration
        /// drive's: another machine answering at the address.
        impostor_tls: Option<PathBuf>,
        /// Its answer to [`Driver::machine_boots_fast_boot_files`] once the machine exists
        /// (what it recorded at create), when that differs from the capability.
        created_fast_boot_files: Option<bool>,
    }

    impl FakeDriver {
        fn failing(op: &'static str) -> Self {
            Self {
                fail: Some(op),
                ..Default::default()
            }
        }

        fn step(&self, op: &'static str) -> Result<(), DriverError> {
            if let Ok(mut calls) = self.calls.lock() {
                calls.push(op.to_string());
            }
            if self.fail == Some(op) {
                return Err(DriverError::CommandFailed {
                    program: "fake".into(),
                    status: 1,
                    stderr: format!("{op} failed on purpose"),
                });
            }
            Ok(())
        }

        fn calls(&self) -> Vec<String> {
            self.calls.lock().map(|c| c.clone()).unwrap_or_default()
        }
    }

    impl Driver for FakeDriver {
        fn info(&self) -> DriverInfo {
            DriverInfo {
                name: "fake".into(),
                capabilities: Capabilities {
                    console_log: self.console.is_some(),
                    // As VirtualBox: no share device, folders go over SFTP.
                    shares: false,
                    sftp_shares: self.share.is_some() && !self.cannot_share,
                    fast_boot_files: self.fast_boot_files,
                    ..Default::default()
                },
            }
        }
        fn driver_share(&self) -> Result<Option<rmachine_driver::DriverShare>, DriverError> {
            Ok(self.share.clone())
        }
        fn machine_boots_fast_boot_files(&self, dir: &MachineDir) -> bool {
            match self.created_fast_boot_files {
                Some(recorded) if dir.file("disk.qcow2").exists() => recorded,
                _ => self.fast_boot_files,
            }
        }
        async fn precheck(&self, spec: &VmSpec) -> Result<(), DriverError> {
            self.step("precheck")?;
            // As VirtualBox's precheck: it has no device for a share it is handed.
            if !spec.shares.is_empty() {
                return Err(DriverError::Unsupported {
                    driver: "fake".into(),
                    op: "host folder shares".into(),
                });
            }
            Ok(())
        }
        async fn create(&self, dir: &MachineDir, _spec: &VmSpec) -> Result<(), DriverError> {
            self.step("create")?;
            std::fs::write(dir.file("disk.qcow2"), b"disk").map_err(|source| DriverError::Io {
                machine: dir.name.clone(),
                path: dir.file("disk.qcow2"),
                source,
            })
        }
        async fn start(&self, dir: &MachineDir, _spec: &VmSpec) -> Result<(), DriverError> {
            self.step("start")?;
            if let Some(console) = &self.console {
                std::fs::write(dir.file("console.log"), console).unwrap();
            }
            let addr = if self.serve_engine {
                let ip = self
                    .engine_ip
                    .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
                // The guest's boot: its TLS files from the configuration drive.
                let drive = std::fs::File::open(dir.file("config.img")).unwrap();
                let config = GuestConfig::read_drive(drive).unwrap();
                let tls = guest_tls(dir);
                std::fs::create_dir_all(&tls).unwrap();
                std::fs::write(tls.join("ca.pem"), &config.ca_pem).unwrap();
                std::fs::write(tls.join("server.pem"), &config.server_cert_pem).unwrap();
                std::fs::write(tls.join("server-key.pem"), &config.server_key_pem).unwrap();
                let ssh =
                    serve_guest_ssh(tls.clone(), self.install_status, self.installs.clone()).await;
                *self.ssh.lock().unwrap_or_else(|e| e.into_inner()) = Some(ssh);
                crate::engine_check::tests::serve_on(self.impostor_tls.as_ref().unwrap_or(&tls), ip)
                    .await
            } else {
                // A port nobody answers on: the wait must time out.
                "127.0.0.1:9".parse().unwrap_or_else(|_| unreachable!())
            };
            *self.engine.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
            Ok(())
        }
        async fn stop(&self, _dir: &MachineDir, _mode: StopMode) -> Result<(), DriverError> {
            self.step("stop")
        }
        async fn remove(&self, _dir: &MachineDir) -> Result<(), DriverError> {
            self.step("remove")
        }
        async fn state(&self, _dir: &MachineDir) -> Result<VmState, DriverError> {
            self.step("state")?;
            let now = *self.state_now.lock().unwrap_or_else(|e| e.into_inner());
            Ok(now.unwrap_or(VmState::Running))
        }
        async fn endpoints(&self, _dir: &MachineDir) -> Result<Endpoints, DriverError> {
            let engine = self
                .engine
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| "127.0.0.1:9".parse().unwrap_or_else(|_| unreachable!()));
            let ssh = self
                .ssh
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| "127.0.0.1:22".parse().unwrap_or_else(|_| unreachable!()));
            Ok(Endpoints { ssh, engine })
        }
    }

    fn setup() -> (tempfile::TempDir, Store, CreateOptions) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(Some(tmp.path().join("store"))).unwrap();
        let image_dir = tmp.path().join("image");
        crate::image::tests::fake_image(&image_dir, "0.1.0");
        let options = CreateOptions {
            guest_image: Some(ImageSource::Dir(image_dir)),
            engine_timeout: Duration::from_secs(3),
            engine_labels: vec!["team=a".into()],
            ..Default::default()
        };
        (tmp, store, options)
    }

    fn recorder() -> (std::sync::Arc<Mutex<Vec<String>>>, impl Fn(Progress) + Sync) {
        let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        (lines, move |p: Progress| {
            sink.lock().unwrap().push(p.to_string())
        })
    }

    #[test]
    fn save_is_refused_without_the_capability_and_with_device_shares_only() {
        let no_save = Capabilities::default();
        let why = save_refusal(&no_save, "fake", &[], false).unwrap();
        assert!(why.contains("driver fake cannot save"), "{why}");
        let can_save = Capabilities {
            save_state: true,
            ..Default::default()
        };
        assert_eq!(save_refusal(&can_save, "qemu", &[], false), None);
        let share = |host: &str, transport| rmachine_driver::Share {
            tag: "share0".into(),
            host_path: host.into(),
            guest_path: host.into(),
            read_only: false,
            transport,
        };
        // Over SFTP the share survives the save: the agent reconnects after the resume.
        let sftp = [share("/home/me", ShareTransport::Sftp)];
        assert_eq!(save_refusal(&can_save, "qemu", &sftp, false), None);
        assert_eq!(save_refusal(&can_save, "qemu", &sftp, true), None);
        for (transport, because) in [
            (
                ShareTransport::NineP,
                "over 9p (QEMU cannot save a guest with a mounted 9p export)",
            ),
            (
                ShareTransport::VirtioFs,
                "over virtiofs (QEMU cannot save a guest with a mounted virtiofs export)",
            ),
        ] {
            // The share that blocks the save is named, not the SFTP one beside it.
            let shares = [
                share("/srv/sftp", ShareTransport::Sftp),
                share("/home/me", transport),
            ];
            let why = save_refusal(&can_save, "qemu", &shares, false).unwrap();
            assert!(
                why.contains("shares /home/me")
                    && why.contains(because)
                    && why.contains("stop it with --no-save")
                    && why.contains("shares over SFTP (--qemu-share-transport sftp) survive"),
                "{why}"
            );
            let why = save_refusal(&can_save, "qemu", &shares, true).unwrap();
            assert!(
                why.contains("create it with --no-share") && !why.contains("stop it"),
                "{why}"
            );
        }
    }

    #[tokio::test]
    async fn create_refuses_save_on_stop_where_it_cannot_save() {
        let (_tmp, store, mut options) = setup();
        options.save_on_stop = true;
        options.no_share = true;
        let driver = FakeDriver::default();
        let (_lines, progress) = recorder();
        let err = create_with(&store, &driver, "nosave", &options, &progress)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("--save-on-stop: driver fake cannot save"),
            "{err}"
        );
        assert!(driver.calls().is_empty(), "{:?}", driver.calls());
    }

    #[tokio::test]
    async fn a_driver_share_is_the_machine_share_instead_of_home() {
        let (tmp, store, options) = setup();
        let code = tmp.path().join("code");
        std::fs::create_dir(&code).unwrap();
        let driver = FakeDriver {
            serve_engine: true,
            share: Some(rmachine_driver::DriverShare {
                flag: "--fake-share-folder".into(),
                host_path: code.clone(),
                guest_path: Some("/code".into()),
            }),
            ..Default::default()
        };
        let (_lines, progress) = recorder();
        let config = create_with(&store, &driver, "folder", &options, &progress)
            .await
            .unwrap();
        let shares: Vec<(PathBuf, String, ShareTransport)> = config
            .vm
            .shares
            .iter()
            .map(|s| (s.host_path.clone(), s.guest_path.clone(), s.transport))
            .collect();
        assert_eq!(shares, [(code, "/code".to_owned(), ShareTransport::Sftp)]);
    }

    #[tokio::test]
    async fn a_driver_share_of_a_driver_that_cannot_share_is_refused() {
        let (tmp, store, options) = setup();
        let code = tmp.path().join("code");
        std::fs::create_dir(&code).unwrap();
        let driver = FakeDriver {
            serve_engine: true,
            share: Some(rmachine_driver::DriverShare {
                flag: "--fake-share-folder code".into(),
                host_path: code,
                guest_path: Some("/code".into()),
            }),
            cannot_share: true,
            ..Default::default()
        };
        let (_lines, progress) = recorder();
        let err = create_with(&store, &driver, "folder", &options, &progress)
            .await
            .expect_err("refused");
        assert_eq!(
            err.to_string(),
            MachineError::InvalidOptions {
                problems: vec![
                    "--fake-share-folder code: driver fake cannot share host folders".into()
                ]
            }
            .to_string()
        );
        assert!(!store.machine_path("folder").exists());
    }

    #[tokio::test]
    async fn create_writes_a_docker_context_and_rm_removes_it() {
        let (tmp, store, options) = setup();
        let docker_config = tmp.path().join("docker");
        let store = store.with_docker_contexts(docker_config.clone());
        let driver = FakeDriver {
            serve_engine: true,
            ..Default::default()
        };
        let (_lines, progress) = recorder();
        create_with(&store, &driver, "ctx", &options, &progress)
            .await
            .unwrap();
        let engine = driver.engine.lock().unwrap().unwrap();
        let id = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"ctx"));
        let meta = docker_config
            .join("contexts/meta")
            .join(&id)
            .join("meta.json");
        let meta: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
        assert_eq!(
            meta["Endpoints"]["docker"]["Host"],
            format!("tcp://{engine}")
        );
        let key = docker_config
            .join("contexts/tls")
            .join(&id)
            .join("docker/key.pem");
        assert_eq!(
            std::fs::read(key).unwrap(),
            std::fs::read(store.certs_dir().join("key.pem")).unwrap()
        );
        remove(&store, "ctx", true).await.unwrap();
        assert!(!docker_config.join("contexts/meta").join(&id).exists());
    }

    fn env_options(name: &str) -> EnvOptions {
        EnvOptions {
            shell: Shell::Posix,
            no_proxy: false,
            argv: vec!["rmachine".into(), "env".into(), name.into()],
        }
    }

    fn installs(driver: &FakeDriver) -> usize {
        driver.installs.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The certificate the engine at `engine` presents now (the store's client connecting).
    async fn served(store: &Store, engine: SocketAddr) -> Vec<u8> {
        EngineClient::from_cert_dir(&store.certs_dir())
            .unwrap()
            .served_certificate(engine)
            .await
            .unwrap()
    }

    /// Asserts that `name`'s certificate names `ip` and that its engine (as `driver` serves it)
    /// presents exactly that certificate; returns the engine's address.
    async fn assert_serves_a_certificate_naming(
        store: &Store,
        driver: &FakeDriver,
        name: &str,
        ip: &str,
    ) -> SocketAddr {
        let server = store.machine_path(name).join("server.pem");
        assert!(certs::covers(&server, ip.parse().unwrap()).unwrap());
        let engine = driver
            .endpoints(&store.machine_dir(name))
            .await
            .unwrap()
            .engine;
        assert_eq!(served(store, engine).await, der_of(&server));
        engine
    }

    fn der_of(path: &std::path::Path) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_file(path)
            .unwrap()
            .to_vec()
    }

    #[tokio::test]
    async fn env_puts_a_certificate_for_a_running_machines_new_address_in_service_without_a_restart(
    ) {
        let (_tmp, store, options) = setup();
        let ip: std::net::IpAddr = "127.0.0.3".parse().unwrap();
        // The VM got a new lease while it ran: its engine answers at another address, still
        // with the certificate issued for the old one.
        let moved = machine_moved_to(&store, &options, "leased", "127.0.0.3", None, 0).await;
        let server = store.machine_path("leased").join("server.pem");
        assert!(!certs::covers(&server, ip).unwrap());
        let engine = moved
            .endpoints(&store.machine_dir("leased"))
            .await
            .unwrap()
            .engine;
        let client = engine_client(&store, "leased").unwrap();
        assert!(
            client.ping(engine).await.is_err(),
            "TLS fails at the new address until a certificate names it"
        );

        let out = env_with(&store, &moved, "leased", &env_options("leased"))
            .await
            .unwrap();
        assert!(
            out.text
                .contains(&format!("export DOCKER_HOST=\"tcp://{engine}\"")),
            "{}",
            out.text
        );
        assert!(!out.restarted);
        // The same engine (no stop, no new start) presents the certificate the host now has.
        assert_eq!(moved.calls().iter().filter(|c| *c == "stop").count(), 0);
        assert_eq!(moved.calls().iter().filter(|c| *c == "start").count(), 1);
        assert_eq!(installs(&moved), 1);
        assert!(certs::covers(&server, ip).unwrap());
        assert_eq!(served(&store, engine).await, der_of(&server));
        client.ping(engine).await.unwrap();
        let saved = store.load("leased").unwrap();
        assert!(saved
            .host_options
            .auth_options
            .server_cert_sans
            .contains(&ip.to_string()));
        // The next boot reads the same certificate.
        let drive = std::fs::File::open(store.machine_path("leased").join("config.img")).unwrap();
        let drive = GuestConfig::read_drive(drive).unwrap();
        assert_eq!(
            drive.server_cert_pem,
            std::fs::read_to_string(&server).unwrap()
        );
    }

    /// A created machine whose VM then came up at `ip` still holding the certificate of its
    /// old address; returns the driver serving it there, whose guest answers
    /// `rmachine-init install-tls` with `install_status`.
    async fn machine_moved_to(
        store: &Store,
        options: &CreateOptions,
        name: &str,
        ip: &str,
        fail: Option<&'static str>,
        install_status: u32,
    ) -> FakeDriver {
        let (_lines, progress) = recorder();
        let first = FakeDriver {
            serve_engine: true,
            ..Default::default()
        };
        create_with(store, &first, name, options, &progress)
            .await
            .unwrap();
        let moved = FakeDriver {
            serve_engine: true,
            engine_ip: Some(ip.parse().unwrap()),
            fail,
            install_status,
            ..Default::default()
        };
        let config = store.load(name).unwrap();
        moved
            .start(&store.machine_dir(name), &driver_spec(&config.vm))
            .await
            .unwrap();
        moved
    }

    #[tokio::test]
    async fn env_and_config_at_once_reissue_for_a_moved_machine_once() {
        let (_tmp, store, options) = setup();
        let moved = machine_moved_to(&store, &options, "raced", "127.0.0.4", None, 0).await;
        // Both see the uncovered address before either takes the lock; the second must see,
        // once it holds the lock, that the first already put a certificate in service.
        let options = env_options("raced");
        let (env, config) = tokio::join!(
            env_with(&store, &moved, "raced", &options),
            client_flags_with(&store, &moved, "raced")
        );
        let (env, config) = (env.unwrap(), config.unwrap());
        assert_eq!(installs(&moved), 1);
        assert_eq!(moved.calls().iter().filter(|c| *c == "start").count(), 1);
        assert!(!env.restarted && !config.restarted);
        assert!(env.text.contains("tcp://127.0.0.4:"), "{}", env.text);
        assert!(
            config.text.contains("-H=tcp://127.0.0.4:"),
            "{}",
            config.text
        );
        let server = store.machine_path("raced").join("server.pem");
        assert!(certs::covers(&server, "127.0.0.4".parse().unwrap()).unwrap());
    }

    #[tokio::test]
    async fn an_env_that_waited_for_a_stop_does_not_start_the_machine_again() {
        let (_tmp, store, options) = setup();
        let moved = machine_moved_to(&store, &options, "stopping", "127.0.0.6", None, 0).await;
        // `stop` holds the lock while env finds the address uncovered.
        let held = store.lock("stopping").unwrap();
        let options = env_options("stopping");
        let env = env_with(&store, &moved, "stopping", &options);
        tokio::pin!(env);
        tokio::select! {
            out = &mut env => panic!("env went past the held lock: {:?}", out.map(|s| s.text)),
            () = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        *moved.state_now.lock().unwrap() = Some(VmState::Stopped);
        drop(held);
        let err = env.await.unwrap_err();
        assert!(err.to_string().contains("Host is not running"), "{err}");
        // Only the boot at the new address: the stopped machine stays stopped.
        let starts = moved.calls().iter().filter(|c| *c == "start").count();
        assert_eq!(starts, 1, "{:?}", moved.calls());
        assert_eq!(installs(&moved), 0);
    }

    #[tokio::test]
    async fn a_failed_install_leaves_the_old_certificate_for_the_next_env_to_reissue() {
        let (_tmp, store, options) = setup();
        let moved = machine_moved_to(&store, &options, "broken", "127.0.0.7", None, 1).await;
        let err = env_with(&store, &moved, "broken", &env_options("broken"))
            .await
            .unwrap_err();
        let text = error_chain(&err);
        assert!(
            text.contains("the new engine certificate was not put in service")
                && text.contains("exited with 1"),
            "{text}"
        );
        // The guest still serves the old certificate: the host's must not claim the address,
        // or no later env would reissue it.
        let server = store.machine_path("broken").join("server.pem");
        assert!(!certs::covers(&server, "127.0.0.7".parse().unwrap()).unwrap());
        let saved = store.load("broken").unwrap();
        assert!(!saved
            .host_options
            .auth_options
            .server_cert_sans
            .contains(&"127.0.0.7".to_string()));
        assert!(!moved.calls().iter().any(|c| c == "stop"));
    }

    /// `env` for machine `name`, moved to `ip`, whose guest answers `rmachine-init install-tls`
    /// with `install_status`: asserts the machine was restarted with a certificate naming `ip`;
    /// returns the driver.
    async fn env_restarts_with_the_certificate(
        name: &str,
        ip: &str,
        install_status: u32,
    ) -> FakeDriver {
        let (_tmp, store, options) = setup();
        let moved = machine_moved_to(&store, &options, name, ip, None, install_status).await;
        let env = env_with(&store, &moved, name, &env_options(name))
            .await
            .unwrap();
        assert!(env.restarted);
        let server = store.machine_path(name).join("server.pem");
        assert!(certs::covers(&server, ip.parse().unwrap()).unwrap());
        moved
    }

    #[tokio::test]
    async fn a_guest_image_without_install_tls_is_restarted_with_the_certificate() {
        let moved =
            env_restarts_with_the_certificate("old", "127.0.0.8", INSTALL_TLS_UNKNOWN).await;
        assert_eq!(moved.calls().iter().filter(|c| *c == "start").count(), 2);
    }

    #[tokio::test]
    async fn a_host_without_rmachine_init_is_restarted_with_the_certificate() {
        // The generic driver's SSH host: its shell knows no `rmachine-init`.
        env_restarts_with_the_certificate("plain", "127.0.0.12", SHELL_COMMAND_NOT_FOUND).await;
    }

    #[tokio::test]
    async fn without_a_pinned_host_key_the_key_is_not_sent_and_the_machine_restarted_instead() {
        let (_tmp, store, options) = setup();
        let moved = machine_moved_to(&store, &options, "unpinned", "127.0.0.11", None, 0).await;
        // Pinning at create failed: whatever answers at the new address would be trusted.
        let config = store.load("unpinned").unwrap();
        let pin = ssh::pinned_host_key_path(&config.driver.ssh_key_path);
        std::fs::remove_file(&pin).unwrap();
        let entry = list_entry_with(&store, &moved, "unpinned", Duration::from_secs(10)).await;
        assert!(
            entry.error.contains("host key is not pinned"),
            "{}",
            entry.error
        );
        assert_eq!(installs(&moved), 0);
        assert!(!pin.exists(), "nothing connected over SSH");
        let env = env_with(&store, &moved, "unpinned", &env_options("unpinned"))
            .await
            .unwrap();
        assert!(env.restarted);
        assert_eq!(installs(&moved), 0);
        assert_eq!(moved.calls().iter().filter(|c| *c == "start").count(), 2);
        let server = store.machine_path("unpinned").join("server.pem");
        assert!(certs::covers(&server, "127.0.0.11".parse().unwrap()).unwrap());
    }

    #[tokio::test]
    async fn a_live_install_gives_up_within_its_time_and_commits_nothing_on_the_host() {
        let (_tmp, store, options) = setup();
        let moved = machine_moved_to(&store, &options, "slow", "127.0.0.12", None, 0).await;
        let dir = store.machine_dir("slow");
        let mut config = store.load("slow").unwrap();
        let mut endpoints = moved.endpoints(&dir).await.unwrap();
        // An engine that accepts connections and never completes a handshake: each attempt
        // would take the client's whole 2 s.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        endpoints.engine = silent.local_addr().unwrap();
        let _accepting = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = silent.accept().await {
                held.push(tcp);
            }
        });
        let before = std::fs::read(dir.file("server.pem")).unwrap();
        let began = Instant::now();
        let within = Duration::from_millis(600);
        let sans = vec!["127.0.0.12".to_string()];
        let err = install_live(&store, &moved, &dir, &mut config, &endpoints, sans, within)
            .await
            .unwrap_err();
        assert!(
            began.elapsed() < Duration::from_millis(1500),
            "{:?}",
            began.elapsed()
        );
        assert!(err.to_string().contains("not put in service"), "{err}");
        assert_eq!(std::fs::read(dir.file("server.pem")).unwrap(), before);
    }

    #[tokio::test]
    async fn a_failed_stop_of_an_old_guest_leaves_the_old_certificate_for_the_next_env() {
        let (_tmp, store, options) = setup();
        let moved = machine_moved_to(
            &store,
            &options,
            "stuck",
            "127.0.0.5",
            Some("stop"),
            INSTALL_TLS_UNKNOWN,
        )
        .await;
        let err = env_with(&store, &moved, "stuck", &env_options("stuck"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("failed to stop the VM"), "{err}");
        let server = store.machine_path("stuck").join("server.pem");
        assert!(!certs::covers(&server, "127.0.0.5".parse().unwrap()).unwrap());
        let saved = store.load("stuck").unwrap();
        assert!(!saved
            .host_options
            .auth_options
            .server_cert_sans
            .contains(&"127.0.0.5".to_string()));
    }

    #[tokio::test]
    async fn ls_puts_a_certificate_for_the_new_address_in_service_and_shows_the_machine_healthy() {
        let (_tmp, store, options) = setup();
        let moved = machine_moved_to(&store, &options, "listed", "127.0.0.9", None, 0).await;
        let entry = list_entry_with(&store, &moved, "listed", Duration::from_secs(10)).await;
        assert_eq!(entry.error, "");
        assert_eq!(entry.docker_version, "v0.1.0");
        assert_eq!(installs(&moved), 1);
        assert!(!moved.calls().iter().any(|c| c == "stop"));
        let server = store.machine_path("listed").join("server.pem");
        assert!(certs::covers(&server, "127.0.0.9".parse().unwrap()).unwrap());
    }

    #[tokio::test]
    async fn ls_names_what_to_run_when_the_certificate_cannot_be_put_in_service() {
        let (_tmp, store, options) = setup();
        let moved = machine_moved_to(
            &store,
            &options,
            "oldls",
            "127.0.0.10",
            None,
            INSTALL_TLS_UNKNOWN,
        )
        .await;
        let entry = list_entry_with(&store, &moved, "oldls", Duration::from_secs(10)).await;
        assert_eq!(entry.docker_version, "Unknown");
        assert!(
            entry
                .error
                .contains("does not name the machine's address 127.0.0.10")
                && entry.error.contains("rmachine regenerate-certs -f oldls"),
            "{}",
            entry.error
        );
        // ls restarts nothing.
        assert_eq!(moved.calls().iter().filter(|c| *c == "start").count(), 1);
        assert!(!moved.calls().iter().any(|c| c == "stop"));
        // Another command holding the lock: ls gives up within its time.
        let held = store.lock("oldls").unwrap();
        let began = Instant::now();
        let entry = list_entry_with(&store, &moved, "oldls", Duration::from_secs(1)).await;
        assert!(began.elapsed() < Duration::from_secs(3));
        assert!(
            entry.error.contains("held the machine's lock"),
            "{}",
            entry.error
        );
        drop(held);
    }

    #[tokio::test]
    async fn regenerate_certs_of_a_running_machine_keeps_it_running() {
        let (_tmp, store, options) = setup();
        let moved = machine_moved_to(&store, &options, "regen", "127.0.0.11", None, 0).await;
        let server = store.machine_path("regen").join("server.pem");
        let before = std::fs::read(&server).unwrap();
        let (lines, progress) = recorder();
        let restart = regenerate_with(&store, &moved, "regen", false, true, &progress)
            .await
            .unwrap();
        assert!(!restart);
        assert_ne!(std::fs::read(&server).unwrap(), before);
        assert_serves_a_certificate_naming(&store, &moved, "regen", "127.0.0.11").await;
        assert!(
            !moved.calls().iter().any(|c| c == "stop"),
            "{:?}",
            moved.calls()
        );
        assert_eq!(installs(&moved), 1);
        let lines = lines.lock().unwrap().join("\n");
        assert!(lines.contains("its containers keep running"), "{lines}");
    }

    /// The row `ls` shows for machine `name` run by `driver`, made within `timeout`.
    async fn list_entry_with<D: Driver>(
        store: &Store,
        driver: &D,
        name: &str,
        timeout: Duration,
    ) -> ListEntry {
        let config = store.load(name).unwrap();
        let entry = ListEntry {
            name: name.to_string(),
            active: "-".to_string(),
            driver_name: String::new(),
            state: String::new(),
            url: String::new(),
            swarm: String::new(),
            docker_version: "Unknown".to_string(),
            error: String::new(),
            response_time: String::new(),
        };
        let now = Instant::now();
        let entry = list_entry_from(
            store,
            &config,
            driver,
            name,
            None,
            entry,
            now,
            now + timeout,
        )
        .await;
        assert_eq!(entry.state, "Running");
        entry
    }

    #[tokio::test]
    async fn a_new_address_gets_a_certificate_that_names_it() {
        let (_tmp, store, options) = setup();
        let ip: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        let driver = FakeDriver {
            serve_engine: true,
            engine_ip: Some(ip),
            ..Default::default()
        };
        let (_lines, progress) = recorder();
        create_with(&store, &driver, "moved", &options, &progress)
            .await
            .unwrap();
        let server = store.machine_path("moved").join("server.pem");
        assert!(certs::covers(&server, ip).unwrap());
        let saved = store.load("moved").unwrap();
        assert_eq!(saved.driver.ip_address, "127.0.0.2");
        assert!(saved
            .host_options
            .auth_options
            .server_cert_sans
            .contains(&"127.0.0.2".to_string()));
        // The first boot's guest was rebooted with the certificate: nothing goes over SSH to a
        // host key first seen at that boot.
        assert_eq!(
            driver.calls(),
            ["precheck", "create", "start", "stop", "start"]
        );
        assert_eq!(installs(&driver), 0);
        let engine = driver
            .endpoints(&store.machine_dir("moved"))
            .await
            .unwrap()
            .engine;
        assert_eq!(served(&store, engine).await, der_of(&server));
        assert!(ssh::pinned_host_key_path(&saved.driver.ssh_key_path).exists());
    }

    /// Machine `name`, created at 127.0.0.1 and stopped, started by a driver whose VM comes up
    /// at `ip` (a bridged VM's new lease) and whose guest answers `rmachine-init install-tls`
    /// with `install_status`; returns that driver and what `start` returned.
    async fn started_at_a_new_address(
        store: &Store,
        options: &CreateOptions,
        name: &str,
        ip: &str,
        install_status: u32,
    ) -> (FakeDriver, Result<(), MachineError>) {
        let moved = FakeDriver {
            install_status,
            ..moved_to(ip)
        };
        started_after(store, options, name, moved, |_| {}).await
    }

    /// A driver whose stopped VM comes up at `ip` at its next start.
    fn moved_to(ip: &str) -> FakeDriver {
        FakeDriver {
            serve_engine: true,
            engine_ip: Some(ip.parse().unwrap()),
            state_now: Mutex::new(Some(VmState::Stopped)),
            ..Default::default()
        }
    }

    /// Machine `name`, created at 127.0.0.1 and stopped, then changed by `meanwhile` (its
    /// record as created) and started by `moved`; returns that driver and what `start`
    /// returned.
    async fn started_after(
        store: &Store,
        options: &CreateOptions,
        name: &str,
        moved: FakeDriver,
        meanwhile: impl FnOnce(&MachineConfig),
    ) -> (FakeDriver, Result<(), MachineError>) {
        let (_lines, progress) = recorder();
        let first = FakeDriver {
            serve_engine: true,
            ..Default::default()
        };
        create_with(store, &first, name, options, &progress)
            .await
            .unwrap();
        let mut config = store.load(name).unwrap();
        meanwhile(&config);
        let started = start_locked(
            store,
            &moved,
            name,
            &mut config,
            Duration::from_secs(3),
            true,
            Instant::now(),
            &progress,
        )
        .await;
        (moved, started)
    }

    #[tokio::test]
    async fn start_at_a_new_address_puts_the_certificate_in_service_without_a_second_boot() {
        let (_tmp, store, options) = setup();
        let ip: std::net::IpAddr = "127.0.0.7".parse().unwrap();
        let server = store.machine_path("leased").join("server.pem");
        let (moved, started) =
            started_at_a_new_address(&store, &options, "leased", "127.0.0.7", 0).await;
        started.unwrap();
        // One boot, no stop: the certificate went into the running guest.
        assert_eq!(moved.calls(), ["state", "start"]);
        assert_eq!(installs(&moved), 1);
        let engine =
            assert_serves_a_certificate_naming(&store, &moved, "leased", "127.0.0.7").await;
        engine_client(&store, "leased")
            .unwrap()
            .ping(engine)
            .await
            .unwrap();
        let saved = store.load("leased").unwrap();
        assert_eq!(saved.driver.ip_address, "127.0.0.7");
        assert!(saved
            .host_options
            .auth_options
            .server_cert_sans
            .contains(&ip.to_string()));
        // The next boot reads the same certificate.
        let drive = std::fs::File::open(store.machine_path("leased").join("config.img")).unwrap();
        let drive = GuestConfig::read_drive(drive).unwrap();
        assert_eq!(
            drive.server_cert_pem,
            std::fs::read_to_string(&server).unwrap()
        );
    }

    #[tokio::test]
    async fn start_at_a_new_address_reboots_a_guest_that_cannot_take_a_certificate_while_it_runs() {
        let (_tmp, store, options) = setup();
        let (moved, started) = started_at_a_new_address(
            &store,
            &options,
            "oldimage",
            "127.0.0.8",
            INSTALL_TLS_UNKNOWN,
        )
        .await;
        started.unwrap();
        // As before `install-tls` existed: stopped and booted again with the certificate.
        assert_eq!(moved.calls(), ["state", "start", "stop", "start"]);
        assert_eq!(installs(&moved), 0);
        assert_serves_a_certificate_naming(&store, &moved, "oldimage", "127.0.0.8").await;
    }

    #[tokio::test]
    async fn a_reboot_for_the_certificate_leaves_the_timeline_of_the_boot_that_runs() {
        let (_tmp, store, options) = setup();
        let moved = FakeDriver {
            install_status: INSTALL_TLS_UNKNOWN,
            console: Some(format!(
                "{}{}",
                stage_line(Stage::InitStarted, 300),
                stage_line(Stage::EngineUp, 1200)
            )),
            ..moved_to("127.0.0.12")
        };
        let (moved, started) = started_after(&store, &options, "relit", moved, |_| {}).await;
        started.unwrap();
        assert_eq!(moved.calls(), ["state", "start", "stop", "start"]);
        let host = inspect(
            &store,
            "relit",
            Some("{{range .Timeline.Host}}{{.Stage}} {{end}}"),
        )
        .unwrap();
        let host: Vec<&str> = host.split_whitespace().collect();
        // One boot's marks, in order: the first boot's were dropped with it.
        assert_eq!(host.first(), Some(&"VmStarting"), "{host:?}");
        assert_eq!(host.last(), Some(&"Ready"), "{host:?}");
        for stage in ["VmStarting", "VmRunning", "GuestSignalled", "Ready"] {
            assert_eq!(
                host.iter().filter(|s| **s == stage).count(),
                1,
                "{stage} in {host:?}"
            );
        }
        let guest = inspect(
            &store,
            "relit",
            Some("{{range .Timeline.Guest}}{{.Stage}}={{.Ms}} {{end}}"),
        )
        .unwrap();
        assert_eq!(guest.trim(), "InitStarted=300 EngineUp=1200");
        assert_serves_a_certificate_naming(&store, &moved, "relit", "127.0.0.12").await;
    }

    #[tokio::test]
    async fn start_at_a_new_address_refuses_another_machines_engine_that_names_this_one() {
        let (tmp, store, options) = setup();
        let other = tmp.path().join("other-tls");
        let moved = FakeDriver {
            impostor_tls: Some(other.clone()),
            ..moved_to("127.0.0.9")
        };
        let (moved, started) = started_after(&store, &options, "leased", moved, |_| {
            // Same store, same CA, a certificate that names `leased` too (`--tls-san leased`)
            // and, as all of them, `localhost`: another machine's engine at the new address.
            std::fs::create_dir_all(&other).unwrap();
            let cert = certs::server_cert(&store.certs_dir(), "other", &["leased".into()]).unwrap();
            certs::install_machine_certs(&store.certs_dir(), &other, &cert).unwrap();
        })
        .await;
        let err = started.unwrap_err();
        assert!(
            matches!(err, MachineError::EngineNotReady { .. }),
            "{}",
            error_chain(&err)
        );
        assert!(
            error_chain(&err).contains("other than the machine's current one"),
            "{}",
            error_chain(&err)
        );
        // Nothing was sent to it and the host's certificate is the one it had.
        assert_eq!(moved.calls(), ["state", "start"]);
        assert_eq!(installs(&moved), 0);
        let server = store.machine_path("leased").join("server.pem");
        assert!(!certs::covers(&server, "127.0.0.9".parse().unwrap()).unwrap());
    }

    #[tokio::test]
    async fn start_at_a_new_address_without_a_pinned_host_key_reboots_and_sends_nothing() {
        let (_tmp, store, options) = setup();
        let (moved, started) = started_after(
            &store,
            &options,
            "unpinned",
            moved_to("127.0.0.10"),
            |config| {
                std::fs::remove_file(ssh::pinned_host_key_path(&config.driver.ssh_key_path))
                    .unwrap()
            },
        )
        .await;
        started.unwrap();
        assert_eq!(moved.calls(), ["state", "start", "stop", "start"]);
        assert_eq!(installs(&moved), 0);
        assert_serves_a_certificate_naming(&store, &moved, "unpinned", "127.0.0.10").await;
    }

    #[tokio::test]
    async fn start_at_a_new_address_with_another_guest_host_key_is_an_error_and_sends_nothing() {
        let (_tmp, store, options) = setup();
        let (moved, started) = started_after(
            &store,
            &options,
            "rekeyed",
            moved_to("127.0.0.11"),
            |config| {
                use russh::keys::ssh_key::private::Ed25519Keypair;
                // A key other than the fake guest's.
                let key = russh::keys::PrivateKey::from(Ed25519Keypair::from_seed(&[9u8; 32]));
                let line = key.public_key().to_openssh().unwrap();
                let pin = ssh::pinned_host_key_path(&config.driver.ssh_key_path);
                std::fs::write(pin, format!("{line}\n")).unwrap();
            },
        )
        .await;
        let err = started.unwrap_err();
        let text = error_chain(&err);
        assert!(
            matches!(err, MachineError::HostKeyChanged { ref machine, .. } if machine == "rekeyed"),
            "{text}"
        );
        assert!(text.contains("delete"), "{text}");
        // No reboot, nothing installed: the host still has the certificate it had.
        assert_eq!(moved.calls(), ["state", "start"]);
        assert_eq!(installs(&moved), 0);
        let server = store.machine_path("rekeyed").join("server.pem");
        assert!(!certs::covers(&server, "127.0.0.11".parse().unwrap()).unwrap());
    }

    #[tokio::test]
    async fn two_creates_of_one_name_at_once_one_wins() {
        let (_tmp, store, options) = setup();
        let (a, b) = (
            FakeDriver {
                serve_engine: true,
                ..Default::default()
            },
            FakeDriver {
                serve_engine: true,
                ..Default::default()
            },
        );
        let (_lines, progress) = recorder();
        let (first, second) = tokio::join!(
            create_with(&store, &a, "twin", &options, &progress),
            create_with(&store, &b, "twin", &options, &progress),
        );
        let errors: Vec<String> = [first, second]
            .into_iter()
            .filter_map(|r| r.err().map(|e| e.to_string()))
            .collect();
        assert_eq!(errors, ["Docker machine \"twin\" already exists"]);
        assert!(store.load("twin").is_ok(), "the winner's machine is intact");
    }

    #[tokio::test]
    async fn upgrade_boots_the_new_image_and_keeps_the_disk() {
        let (tmp, store, options) = setup();
        let driver = FakeDriver {
            serve_engine: true,
            ..Default::default()
        };
        let (_lines, progress) = recorder();
        create_with(&store, &driver, "up", &options, &progress)
            .await
            .unwrap();
        let disk = store.machine_path("up").join("disk.qcow2");
        std::fs::write(&disk, b"data that must survive").unwrap();

        let newer = tmp.path().join("image2");
        crate::image::tests::fake_image(&newer, "0.2.0");
        let (lines, progress) = recorder();
        let version = upgrade_with(
            &store,
            &driver,
            "up",
            Some(&ImageSource::Dir(newer)),
            image::DEFAULT_DOWNLOAD_URL,
            Duration::from_secs(3),
            &progress,
        )
        .await
        .unwrap();
        assert_eq!(version, "0.2.0");
        let saved = store.load("up").unwrap();
        assert!(saved
            .vm
            .boot
            .kernel
            .starts_with(store.cache_dir().join("guest/0.2.0-x86_64")));
        assert_eq!(std::fs::read(&disk).unwrap(), b"data that must survive");
        let calls = driver.calls();
        assert_eq!(&calls[calls.len() - 3..], ["state", "stop", "start"]);
        let lines = lines.lock().unwrap().clone();
        assert!(
            lines.contains(&"Stopping machine to do the upgrade...".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"Upgrading machine \"up\" to guest image 0.2.0...".to_string()),
            "{lines:?}"
        );
        assert_eq!(
            lines.last().map(String::as_str),
            Some("Docker is up and running!")
        );
    }

    #[tokio::test]
    async fn upgrade_derives_the_fast_boot_files_by_what_the_machine_boots() {
        // Created as a machine that boots them (a microvm), by a driver whose options would
        // now give a new machine another type.
        let (tmp, store, options) = setup();
        let driver = FakeDriver {
            serve_engine: true,
            fast_boot_files: false,
            created_fast_boot_files: Some(true),
            ..Default::default()
        };
        create_with(&store, &driver, "kept", &options, &|_| {})
            .await
            .unwrap();
        let image_dir = tmp.path().join("derivable");
        crate::image::derive::tests::derivable_image(&image_dir);
        upgrade_with(
            &store,
            &driver,
            "kept",
            Some(&ImageSource::Dir(image_dir)),
            image::DEFAULT_DOWNLOAD_URL,
            Duration::from_secs(3),
            &|_| {},
        )
        .await
        .unwrap();
        let config = store.load("kept").unwrap();
        let derived = store.cache_dir().join("guest/1.0-derive-x86_64/derived");
        assert!(derived.exists());
        assert!(config.vm.boot.kernel_elf.is_some());
        assert!(config.vm.boot.initrd_uncompressed.is_some());
    }

    #[tokio::test]
    async fn only_a_driver_that_boots_them_gets_the_fast_boot_files_derived() {
        for fast in [false, true] {
            let (tmp, store, mut options) = setup();
            let image_dir = tmp.path().join("derivable");
            crate::image::derive::tests::derivable_image(&image_dir);
            options.guest_image = Some(ImageSource::Dir(image_dir));
            let driver = FakeDriver {
                serve_engine: true,
                fast_boot_files: fast,
                ..Default::default()
            };
            let config = create_with(&store, &driver, "fast", &options, &|_| {})
                .await
                .unwrap();
            let derived = store.cache_dir().join("guest/1.0-derive-x86_64/derived");
            assert_eq!(derived.exists(), fast, "fast_boot_files {fast}");
            assert_eq!(config.vm.boot.kernel_elf.is_some(), fast);
            assert_eq!(config.vm.boot.initrd_uncompressed.is_some(), fast);
            if let Some(elf) = &config.vm.boot.kernel_elf {
                assert!(elf.starts_with(&derived), "{}", elf.display());
            }
        }
    }

    #[tokio::test]
    async fn create_boots_and_records_the_machine() {
        let (_tmp, store, options) = setup();
        let driver = FakeDriver {
            serve_engine: true,
            ..Default::default()
        };
        let (lines, progress) = recorder();
        let config = create_with(&store, &driver, "intro", &options, &progress)
            .await
            .unwrap();
        assert_eq!(config.driver_name, "fake");
        assert_eq!(
            config.host_options.engine_options.labels,
            vec!["team=a".to_string(), "provider=fake".to_string()]
        );
        let lines = lines.lock().unwrap().clone();
        assert_eq!(lines[0], "Running pre-create checks...");
        assert!(lines[2].starts_with("Creating CA: "), "{lines:?}");
        assert_eq!(
            lines.last().map(String::as_str),
            Some("Docker is up and running!")
        );
        assert_eq!(driver.calls(), vec!["precheck", "create", "start"]);

        let saved = store.load("intro").unwrap();
        assert_eq!(
            saved.driver.engine_port,
            driver.engine.lock().unwrap().unwrap().port()
        );
        assert!(saved
            .vm
            .boot
            .kernel
            .starts_with(store.cache_dir().join("guest/0.1.0-x86_64")));
        let drive = std::fs::File::open(store.machine_path("intro").join("config.img")).unwrap();
        let guest = GuestConfig::read_drive(drive).unwrap();
        assert_eq!(guest.hostname, "intro");
        assert!(guest.authorized_keys[0].starts_with("ssh-ed25519 "));
        assert_eq!(guest.engine.labels, vec!["team=a", "provider=fake"]);

        let err = create_with(&store, &driver, "intro", &options, &progress)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "Docker machine \"intro\" already exists");
        // The failed second create must not have touched the first machine.
        assert!(store.load("intro").is_ok());
    }

    #[tokio::test]
    async fn failures_after_the_directory_exists_leave_nothing_behind() {
        for op in ["create", "start"] {
            let (_tmp, store, options) = setup();
            let driver = FakeDriver::failing(op);
            let (lines, progress) = recorder();
            let err = create_with(&store, &driver, "half", &options, &progress)
                .await
                .unwrap_err();
            assert!(format!("{err:#}").contains("driver failed to"), "{err}");
            assert!(
                !store.machine_path("half").exists(),
                "{op}: directory left behind"
            );
            assert_eq!(
                driver.calls().last().map(String::as_str),
                Some("remove"),
                "{op}"
            );
            assert!(lines
                .lock()
                .unwrap()
                .contains(&"Removing the half-created machine...".to_string()));
        }
    }

    #[tokio::test]
    async fn an_engine_that_never_answers_is_cleaned_up() {
        let (_tmp, store, options) = setup();
        let driver = FakeDriver::default();
        let (_, progress) = recorder();
        let err = create_with(&store, &driver, "slow", &options, &progress)
            .await
            .unwrap_err();
        assert!(matches!(err, MachineError::EngineNotReady { .. }), "{err}");
        assert!(!store.machine_path("slow").exists());
        assert!(store.list().unwrap().is_empty());
    }

    #[tokio::test]
    async fn precheck_failure_writes_nothing_and_exits_3() {
        let (_tmp, store, options) = setup();
        let driver = FakeDriver::failing("precheck");
        let (_, progress) = recorder();
        let err = create_with(&store, &driver, "p", &options, &progress)
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert_eq!(
            err.to_string(),
            "Error with pre-create check: \"fake failed (exit status 1): precheck failed on purpose\""
        );
        assert!(
            !store.root().exists(),
            "the store was written before the precheck passed"
        );
    }

    #[tokio::test]
    async fn every_invalid_option_is_reported_at_once() {
        let (_tmp, store, mut options) = setup();
        options.cpus = 0;
        options.engine_env = vec![
            "NOEQUALS".into(),
            "A;reboot=1".into(),
            "OK=line\nExecStartPre=/bin/evil".into(),
        ];
        options.engine_labels = vec!["tier=a%b".into()];
        let driver = FakeDriver::default();
        let (_, progress) = recorder();
        let err = create_with(&store, &driver, "bad name!", &options, &progress)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Invalid hostname specified. Allowed hostname chars are: 0-9a-zA-Z . -\n\
             --cpus must be at least 1\n\
             --engine-env \"NOEQUALS\" is not KEY=VALUE\n\
             --engine-env \"OK=line\\nExecStartPre=/bin/evil\" holds a control character\n\
             --engine-env \"A;reboot=1\": \"A;reboot\" is not an environment variable name"
        );
        assert!(driver.calls().is_empty());
        assert!(!store.root().exists());
    }

    #[cfg(unix)]
    #[test]
    fn a_sparse_disk_image_shows_its_allocated_bytes_beside_its_apparent_size() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("disk.qcow2");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(256 << 20).unwrap();
        let sparse = disk_image_size(&path).unwrap();
        assert_eq!(sparse.apparent_bytes, 256 << 20);
        assert!(
            sparse.allocated_bytes.unwrap() < 1 << 20,
            "a sparse file counted whole: {sparse:?}"
        );
        std::os::unix::fs::FileExt::write_all_at(&file, &vec![1u8; 4 << 20], 0).unwrap();
        file.sync_all().unwrap();
        let written = disk_image_size(&path).unwrap();
        assert!(written.allocated_bytes.unwrap() >= 4 << 20, "{written:?}");
        assert_eq!(disk_image_size(&tmp.path().join("none")), None);
    }

    #[tokio::test]
    async fn sftp_shares_are_waited_for_in_the_new_agents_report_only() {
        let (_tmp, store, options) = setup();
        let driver = FakeDriver {
            serve_engine: true,
            ..FakeDriver::default()
        };
        let (_, progress) = recorder();
        create_with(&store, &driver, "shares", &options, &progress)
            .await
            .unwrap();
        let mut config = store.load("shares").unwrap();
        config.vm.shares.push(rmachine_driver::Share {
            tag: "home".into(),
            host_path: "/home".into(),
            guest_path: "/home".into(),
            read_only: false,
            transport: ShareTransport::Sftp,
        });
        store.save(&config).unwrap();
        let report = |pid| portagent::AgentStatus {
            pid,
            connected: true,
            shares: vec![SftpShareState {
                host_path: "/home".into(),
                guest_path: "/home".into(),
                mounted: true,
                error: None,
            }],
            ..Default::default()
        };
        let status = store.machine_path("shares").join(portagent::STATUS_FILE);
        // The last agent (before the resume) said mounted; the new one has not written yet.
        std::fs::write(&status, serde_json::to_vec(&report(100)).unwrap()).unwrap();
        let problems = wait_for_sftp_shares(&store, "shares", 200, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("was not mounted over SFTP"),
            "{problems:?}"
        );
        std::fs::write(&status, serde_json::to_vec(&report(200)).unwrap()).unwrap();
        let problems = wait_for_sftp_shares(&store, "shares", 200, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[tokio::test]
    async fn inspect_shows_the_guests_disk_usage_as_the_agent_read_it() {
        let (_tmp, store, options) = setup();
        let driver = FakeDriver {
            serve_engine: true,
            ..FakeDriver::default()
        };
        let (_, progress) = recorder();
        create_with(&store, &driver, "usage", &options, &progress)
            .await
            .unwrap();
        let status = portagent::AgentStatus {
            pid: 1,
            connected: true,
            data_disk_usage: Some(portagent::GuestDiskUsage {
                usage: rmachine_guest_config::report::DiskUsage::from_blocks(4096, 1000, 250, 200),
                time: "2026-12-06T12:00:00Z".into(),
            }),
            ..Default::default()
        };
        let dir = store.machine_path("usage");
        std::fs::write(
            dir.join(portagent::STATUS_FILE),
            serde_json::to_vec(&status).unwrap(),
        )
        .unwrap();
        let shown = inspect(
            &store,
            "usage",
            Some("{{.DataDiskUsage.TotalBytes}} {{.DataDiskUsage.UsedBytes}} {{.DataDiskUsage.AvailableBytes}}"),
        )
        .unwrap();
        assert_eq!(shown, "4096000 3072000 819200\n");
        let shown = inspect(&store, "usage", Some("{{json .DataDiskImage}}")).unwrap();
        assert_eq!(shown, "null\n", "the fake driver keeps no image");
    }

    #[tokio::test]
    async fn the_data_disk_report_on_the_console_reaches_the_record_and_inspect() {
        use rmachine_guest_config::report::{
            BootAction, CheckResult, CheckRun, DataDiskReport, DiskCheck,
        };
        let (_tmp, store, options) = setup();
        let report = DataDiskReport {
            device: "/dev/vda".into(),
            filesystem: "ext4".into(),
            journal: true,
            boot_action: BootAction::Checked,
            mounted: true,
            last_check: Some(DiskCheck {
                time: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
                reason: "journal needs recovery".into(),
                runs: vec![CheckRun {
                    command: "/sbin/e2fsck -p /dev/vda".into(),
                    exit_code: 0,
                    duration_ms: 80,
                }],
                result: CheckResult::Clean,
                summary: "rmachine-data: clean, 11/1310720 files, 126322/5242880 blocks".into(),
            }),
        };
        let driver = FakeDriver {
            serve_engine: true,
            console: Some(format!(
                "{}[    0.500] rmachine-init: {}\n[    0.900] rmachine-init: boot complete\n{}",
                stage_line(Stage::InitStarted, 300),
                report.console_line(),
                stage_line(Stage::EngineUp, 1200),
            )),
            ..Default::default()
        };
        let (_, progress) = recorder();
        create_with(&store, &driver, "intro", &options, &progress)
            .await
            .unwrap();
        assert_eq!(store.load("intro").unwrap().data_disk, Some(report));
        let shown = inspect(
            &store,
            "intro",
            Some("{{.DataDisk.BootAction}} {{.DataDisk.LastCheck.Result}} {{.DataDisk.LastCheck.Time}}"),
        )
        .unwrap();
        assert_eq!(shown, "Checked Clean 2027-01-15T08:00:00Z\n");
        let full = inspect(&store, "intro", None).unwrap();
        assert!(full.contains("\"DataDisk\": {"), "{full}");
        let timeline = inspect(
            &store,
            "intro",
            Some("{{range .Timeline.Guest}}{{.Stage}}={{.Ms}} {{end}}"),
        )
        .unwrap();
        assert_eq!(timeline, "InitStarted=300 EngineUp=1200 \n");
        let host = inspect(
            &store,
            "intro",
            Some("{{range .Timeline.Host}}{{.Stage}} {{end}}"),
        )
        .unwrap();
        assert_eq!(
            host, "VmStarting VmRunning GuestSignalled FirstProbe Ready \n",
            "the guest's line, not a timer, started the probes"
        );
    }

    fn stage_line(stage: Stage, ms: u64) -> String {
        format!(
            "[    0.000] rmachine-init: {}\n",
            timeline::GuestStage { stage, ms }.console_line()
        )
    }

    #[tokio::test]
    async fn an_init_without_stage_lines_is_probed_at_once() {
        let (_tmp, store, options) = setup();
        let driver = FakeDriver {
            serve_engine: true,
            console: Some("[    0.500] rmachine-init: started as PID 1\n".into()),
            ..Default::default()
        };
        create_with(&store, &driver, "old", &options, &|_| {})
            .await
            .unwrap();
        // FirstProbe: found by a probe of the wait, not by the last one at the deadline
        // (which marks nothing), so not after a fixed wait (the mark order, not wall time).
        let host = inspect(
            &store,
            "old",
            Some("{{range .Timeline.Host}}{{.Stage}} {{end}}"),
        )
        .unwrap();
        assert_eq!(host, "VmStarting VmRunning FirstProbe Ready \n");
    }

    /// Creates a machine whose engine serves and whose console shows `console`; returns how
    /// long the create took and the host stages it recorded.
    async fn create_serving_with_console(console: &str) -> (Duration, Duration, String) {
        let (_tmp, store, options) = setup();
        let driver = FakeDriver {
            serve_engine: true,
            console: Some(console.into()),
            ..Default::default()
        };
        let began = Instant::now();
        create_with(&store, &driver, "quiet", &options, &|_| {})
            .await
            .unwrap();
        let host = inspect(
            &store,
            "quiet",
            Some("{{range .Timeline.Host}}{{.Stage}} {{end}}"),
        )
        .unwrap();
        (began.elapsed(), options.engine_timeout, host)
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_console_watch_wakes_at_a_write_and_only_then() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("console.log");
        std::fs::write(&log, "").unwrap();
        let watch = file_watch::FileWatch::new(&log).unwrap();
        // Nothing written: no wake-up.
        let idle = tokio::time::timeout(Duration::from_millis(300), watch.changed()).await;
        assert!(idle.is_err(), "woke without a write");
        // A writer appending as QEMU does, a little later: the wait ends with the write.
        let writer = {
            let log = log.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new().append(true).open(log).unwrap();
                file.write_all(stage_line(Stage::EngineUp, 900).as_bytes())
                    .unwrap();
            })
        };
        let change = tokio::time::timeout(Duration::from_secs(10), watch.changed())
            .await
            .expect("woken by the write")
            .unwrap();
        assert_eq!(change, file_watch::Change::Written);
        writer.join().unwrap();
        let mut follower = ConsoleFollower::open(log.clone());
        assert!(follower.scan().engine_up);

        // The file removed: the watch says so (the follower then reads on a timer).
        std::fs::remove_file(&log).unwrap();
        let change = tokio::time::timeout(Duration::from_secs(10), watch.changed())
            .await
            .expect("woken by the removal")
            .unwrap();
        assert_eq!(change, file_watch::Change::Gone);
        follower
            .wait(Instant::now() + Duration::from_secs(10))
            .await;
        assert!(follower.watch.is_none(), "still watching a removed file");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_console_wait_ends_at_its_time_before_the_watch_cap() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("console.log");
        std::fs::write(&log, "").unwrap();
        let mut follower = ConsoleFollower::open(log);
        assert!(follower.watch.is_some());
        let began = Instant::now();
        follower.wait(began + Duration::from_millis(40)).await;
        let took = began.elapsed();
        assert!(
            took >= Duration::from_millis(40) && took < WATCHED_LOG_READ,
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_console_log_created_after_the_follower_is_read_on_a_timer() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("console.log");
        let mut follower = ConsoleFollower::open(log.clone());
        #[cfg(target_os = "linux")]
        assert!(follower.watch.is_none(), "a watch on a missing file");
        assert_eq!(follower.scan(), ConsoleScan::default());
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::write(log, stage_line(Stage::EngineUp, 900)).unwrap();
        });
        let began = Instant::now();
        while !follower.scan().engine_up {
            assert!(began.elapsed() < Duration::from_secs(10), "never seen");
            follower
                .wait(Instant::now() + Duration::from_secs(10))
                .await;
        }
        writer.join().unwrap();
    }

    #[tokio::test]
    async fn a_console_follower_reads_new_complete_lines_and_starts_over_when_truncated() {
        use std::io::Write;
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("console.log");
        let up = stage_line(Stage::EngineUp, 900);
        let (head, tail) = up.split_at(up.len() / 2);
        std::fs::write(
            &log,
            format!("{}{head}", stage_line(Stage::InitStarted, 300)),
        )
        .unwrap();
        let mut follower = ConsoleFollower::open(log.clone());
        let scan = follower.scan();
        assert!(
            scan.stage && !scan.engine_up && !scan.legacy_line,
            "{scan:?}"
        );
        // The rest of the half-written line: now a whole stage line.
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        file.write_all(tail.as_bytes()).unwrap();
        assert!(follower.scan().engine_up);
        assert_eq!(follower.offset, std::fs::metadata(&log).unwrap().len());
        // QEMU started again truncates the log: the new boot's lines only.
        std::fs::write(&log, "[ 0.5] rmachine-init: started as PID 1\n").unwrap();
        let scan = follower.scan();
        assert!(
            !scan.stage && !scan.engine_up && scan.legacy_line,
            "{scan:?}"
        );
    }

    #[test]
    fn a_console_scan_takes_the_last_boot_only() {
        let two_boots = format!(
            "{}{}{}",
            stage_line(Stage::InitStarted, 300),
            stage_line(Stage::EngineUp, 900),
            stage_line(Stage::InitStarted, 200)
        );
        let scan = ConsoleScan::of(&two_boots);
        assert!(
            scan.stage && !scan.engine_up && !scan.legacy_line,
            "{scan:?}"
        );
        let legacy = ConsoleScan::of("[ 0.5] rmachine-init: started as PID 1\n");
        assert!(!legacy.stage && legacy.legacy_line, "{legacy:?}");
    }

    #[tokio::test]
    async fn a_stage_line_caught_half_written_does_not_start_the_probes() {
        let (took, timeout, host) =
            create_serving_with_console("[    0.3] rmachine-init: rmachine-boot-stage: {\"Sta")
                .await;
        assert_eq!(
            host, "VmStarting VmRunning Ready \n",
            "found by the last probe only"
        );
        assert!(took >= timeout, "{took:?}");
    }

    #[tokio::test]
    async fn a_console_of_kernel_lines_only_is_not_probed_early() {
        let (took, timeout, host) = create_serving_with_console(
            "[    0.000] Linux version 6.12.0\n[    0.400] Run /sbin/init as init process\n",
        )
        .await;
        assert_eq!(
            host, "VmStarting VmRunning Ready \n",
            "found by the last probe only"
        );
        assert!(took >= timeout, "{took:?}");
    }

    #[tokio::test]
    async fn a_guest_that_prints_nothing_times_out_saying_its_init_never_started() {
        let (_tmp, store, options) = setup();
        let driver = FakeDriver {
            console: Some(String::new()),
            ..Default::default()
        };
        let err = create_with(&store, &driver, "mute", &options, &|_| {})
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("(the guest reported no boot stage: its init never started)"),
            "{text}"
        );
        assert!(text.contains("timed out after"), "{text}");
    }

    #[tokio::test]
    async fn a_guest_that_never_signals_ready_names_its_last_stage() {
        let (_tmp, store, options) = setup();
        let driver = FakeDriver {
            console: Some(format!(
                "{}{}",
                stage_line(Stage::InitStarted, 300),
                stage_line(Stage::DataDiskMounted, 900)
            )),
            ..Default::default()
        };
        let (_, progress) = recorder();
        let err = create_with(&store, &driver, "stuck", &options, &progress)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("(the guest's last boot stage: DataDiskMounted)"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "timed out after {}s",
                options.engine_timeout.as_secs()
            )),
            "{text}"
        );
        assert!(
            text.contains("rmachine-boot-stage: "),
            "console tail: {text}"
        );
    }

    #[tokio::test]
    async fn a_share_the_guest_failed_to_mount_is_recorded_and_named_in_ls_errors() {
        use rmachine_guest_config::report::{ShareStatus, SharesReport};
        let (_tmp, store, options) = setup();
        let driver = FakeDriver {
            serve_engine: true,
            ..Default::default()
        };
        let (_, progress) = recorder();
        create_with(&store, &driver, "intro", &options, &progress)
            .await
            .unwrap();
        let mut config = store.load("intro").unwrap();
        assert_eq!(config.share_mounts, None);
        assert_eq!(share_errors(&config), None);
        config.vm.shares = vec![rmachine_driver::Share {
            tag: "rmshare0".into(),
            host_path: "/home/me/src".into(),
            guest_path: "/src".into(),
            read_only: false,
            transport: ShareTransport::VirtioFs,
        }];
        let report = SharesReport {
            shares: vec![ShareStatus {
                tag: "rmshare0".into(),
                guest_path: "/src".into(),
                mounted: false,
                error: Some("share rmshare0: cannot create /src: Read-only file system".into()),
            }],
        };
        let dir = store.machine_dir("intro");
        std::fs::write(
            dir.file("console.log"),
            format!("[ 1.0] rmachine-init: {}\n", report.console_line()),
        )
        .unwrap();
        record_data_disk(&store, &dir, &mut config).unwrap();
        let config = store.load("intro").unwrap();
        assert_eq!(config.share_mounts, Some(report));
        assert_eq!(
            share_errors(&config).as_deref(),
            Some("share /home/me/src on /src not mounted")
        );
        let shown = inspect(
            &store,
            "intro",
            Some("{{range .ShareMounts.Shares}}{{.Tag}} {{.Mounted}} {{.Error}}{{end}}"),
        )
        .unwrap();
        assert_eq!(
            shown,
            "rmshare0 false share rmshare0: cannot create /src: Read-only file system\n"
        );
    }

    #[tokio::test]
    async fn list_env_and_inspect_of_a_running_machine() {
        let (_tmp, store, options) = setup();
        let driver = FakeDriver {
            serve_engine: true,
            ..Default::default()
        };
        let (_, progress) = recorder();
        create_with(&store, &driver, "intro", &options, &progress)
            .await
            .unwrap();
        let text = inspect(
            &store,
            "intro",
            Some("{{.Driver.IPAddress}} {{.DriverName}}"),
        )
        .unwrap();
        assert_eq!(text, "127.0.0.1 fake\n");
        let full = inspect(&store, "intro", None).unwrap();
        assert!(full.starts_with("{\n    \"ConfigVersion\": 1,\n"), "{full}");
        // The record names the fake driver, which the registry does not know.
        let rows = list(&store, Duration::from_secs(5), None).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].driver_name, "not found");
        assert_eq!(rows[0].state, "Error");
        assert_eq!(
            rows[0].error,
            "Driver \"fake\" not found. Available drivers: qemu, virtualbox, hyperv, generic"
        );
    }
}
