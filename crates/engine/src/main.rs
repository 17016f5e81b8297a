//! `rmachine-engine`: the Docker Engine API daemon (dockerd-style flags).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rmachine_engine::cli::EngineArgs;
use rmachine_engine::daemon;

fn main() -> ExitCode {
    let cli = EngineArgs::parse();
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

fn run(cli: EngineArgs) -> anyhow::Result<()> {
    let options = cli.into_options()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(daemon::run(options))?;
    Ok(())
}
