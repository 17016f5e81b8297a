//! `rmachine-engine`: the Docker Engine API daemon (dockerd-style flags).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rmachine_engine::api::server::TlsOptions;
use rmachine_engine::core::EngineConfig;
use rmachine_engine::daemon::{self, DaemonOptions};

/// The rmachine container engine: serves the Docker Engine API.
#[derive(Debug, Parser)]
#[command(name = "rmachine-engine", version)]
struct Cli {
    /// Where the engine keeps images, containers and logs.
    #[arg(long, default_value = "/var/lib/rmachine-engine")]
    data_root: PathBuf,
    /// Address to listen on: unix:///path or tcp://host:port (repeatable).
    #[arg(short = 'H', long = "host")]
    hosts: Vec<String>,
    /// Require and verify client certificates (mandatory for tcp:// listeners).
    #[arg(long)]
    tlsverify: bool,
    /// CA that signs client certificates.
    #[arg(long)]
    tlscacert: Option<PathBuf>,
    /// Server certificate.
    #[arg(long)]
    tlscert: Option<PathBuf>,
    /// Server key.
    #[arg(long)]
    tlskey: Option<PathBuf>,
    /// The container runtime binary (default: rmachine-runtime beside this binary, else PATH).
    #[arg(long)]
    runtime: Option<PathBuf>,
    /// Engine label K=V (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Registry to reach over plain HTTP (repeatable).
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Debug logging.
    #[arg(short = 'D', long)]
    debug: bool,
    /// Log level: debug, info, warn, error.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = if cli.debug {
        "debug"
    } else {
        cli.log_level.as_str()
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rmachine-engine: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let options = DaemonOptions {
        engine: EngineConfig {
            data_root: cli.data_root,
            runtime: cli.runtime.unwrap_or_else(daemon::default_runtime),
            labels: cli.labels,
            insecure_registries: cli.insecure_registries,
            debug: cli.debug,
        },
        hosts: cli.hosts,
        tls: TlsOptions {
            verify: cli.tlsverify,
            ca: cli.tlscacert,
            cert: cli.tlscert,
            key: cli.tlskey,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(daemon::run(options))?;
    Ok(())
}
