//! The `rmachine-engine` command line (dockerd-style flags), in the library so that the guest's
//! init can check in a test that every flag it passes is one the engine accepts.

use std::path::PathBuf;

use clap::Parser;

use crate::api::server::TlsOptions;
use crate::core::EngineConfig;
use crate::daemon::{self, DaemonOptions};
use crate::registry_config::{RegistryConfig, RegistryConfigError};

/// The rmachine container engine: serves the Docker Engine API.
#[derive(Debug, Parser)]
#[command(name = "rmachine-engine", version)]
pub struct EngineArgs {
    /// Where the engine keeps images, containers and logs.
    #[arg(long, default_value = "/var/lib/rmachine-engine")]
    pub data_root: PathBuf,
    /// Where the engine keeps state that need not survive a reboot (exec specs): a tmpfs,
    /// as dockerd's `--exec-root`, so that `docker exec` works on a full data disk. Each
    /// engine on one host needs its own.
    #[arg(long, default_value = "/var/run/rmachine-engine")]
    pub exec_root: PathBuf,
    /// Address to listen on: unix:///path or tcp://host:port (repeatable).
    #[arg(short = 'H', long = "host")]
    pub hosts: Vec<String>,
    /// Require and verify client certificates (mandatory for tcp:// listeners).
    #[arg(long)]
    pub tlsverify: bool,
    /// CA that signs client certificates.
    #[arg(long)]
    pub tlscacert: Option<PathBuf>,
    /// Server certificate.
    #[arg(long)]
    pub tlscert: Option<PathBuf>,
    /// Server key.
    #[arg(long)]
    pub tlskey: Option<PathBuf>,
    /// The container runtime binary (default: rmachine-runtime beside this binary, else PATH).
    #[arg(long)]
    pub runtime: Option<PathBuf>,
    /// Engine label K=V (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Registry to reach over plain HTTP or unverified TLS: host[:port] or a CIDR (repeatable).
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Docker Hub mirror, http(s)://host[:port] (repeatable).
    #[arg(long = "registry-mirror")]
    pub registry_mirrors: Vec<String>,
    /// Serve at once, but start no container and mount no container filesystem until this
    /// file descriptor (a pipe's read end) reaches end of file: a machine's init closes it
    /// once the kernel modules containers need are loaded.
    #[arg(long, value_name = "FD")]
    pub containers_wait_fd: Option<i32>,
    /// Debug logging.
    #[arg(short = 'D', long)]
    pub debug: bool,
    /// Log level: debug, info, warn, error.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

impl EngineArgs {
    /// Parses a command line without the program name, as the binary would.
    pub fn try_parse_args<I, T>(args: I) -> Result<EngineArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let argv0 = std::iter::once(std::ffi::OsString::from("rmachine-engine"));
        EngineArgs::try_parse_from(argv0.chain(args.into_iter().map(Into::into)))
    }

    /// The daemon's options; refuses registry settings dockerd would refuse.
    pub fn into_options(self) -> Result<DaemonOptions, RegistryConfigError> {
        let registry = RegistryConfig::new(&self.registry_mirrors, &self.insecure_registries)?;
        Ok(DaemonOptions {
            engine: EngineConfig {
                data_root: self.data_root,
                exec_root: self.exec_root,
                runtime: self.runtime.unwrap_or_else(daemon::default_runtime),
                labels: self.labels,
                registry,
                debug: self.debug,
            },
            hosts: self.hosts,
            containers_wait_fd: self.containers_wait_fd,
            tls: TlsOptions {
                verify: self.tlsverify,
                ca: self.tlscacert,
                cert: self.tlscert,
                key: self.tlskey,
            },
        })
    }
}
