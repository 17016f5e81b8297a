//! `rmachine`: docker-machine's command line for rmachine machines.
//!
//! This binary parses arguments and formats output; every decision is made by `rmachine-host`.

mod cmd;
mod output;
mod progress;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Create and manage machines running Docker.
#[derive(Parser, Debug)]
#[command(
    name = "rmachine",
    version,
    about = "Create and manage machines running Docker."
)]
struct Cli {
    /// Where machines, certificates and guest images are stored.
    #[arg(short = 's', long, env = "RMACHINE_STORAGE_PATH", global = true)]
    storage_path: Option<PathBuf>,

    /// Debug logging (same as -vv).
    #[arg(short = 'D', long, env = "RMACHINE_DEBUG", global = true)]
    debug: bool,

    /// More logging on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: cmd::Command,
}

fn init_tracing(debug: bool, verbose: u8, agent: bool) {
    let level = match (debug, verbose) {
        (_, 3..) => "trace",
        (true, _) | (_, 2) => "debug",
        (_, 1) => "info",
        // The port agent's log (its stderr) records every port it opens and closes.
        _ if agent => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RMACHINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let agent = matches!(cli.command, cmd::Command::PortAgent(_));
    init_tracing(cli.debug, cli.verbose, agent);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(cmd::run(cli.storage_path, cli.command));
    // Do not wait for blocked stdin readers (ssh) to notice the end.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            let message = format!("{err:#}");
            // docker-machine's own messages sometimes start with "Error" already
            // ("Error creating machine: ...", "Error with pre-create check: ...").
            if message.starts_with("Error") {
                eprintln!("{message}");
            } else {
                eprintln!("Error: {message}");
            }
            ExitCode::from(cmd::exit_code(&err))
        }
    }
}
