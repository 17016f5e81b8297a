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

    /// Use rmachine's own SSH client (russh) instead of the system's `ssh` for `rmachine ssh`.
    #[arg(long = "native-ssh", env = "MACHINE_NATIVE_SSH", global = true)]
    native_ssh: bool,

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

/// Writes the completion script for `shell` to stdout.
fn print_completion(shell: cmd::CompletionShell) -> ExitCode {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let shell = match shell {
        cmd::CompletionShell::Bash => Shell::Bash,
        cmd::CompletionShell::Zsh => Shell::Zsh,
        cmd::CompletionShell::Fish => Shell::Fish,
        cmd::CompletionShell::Powershell => Shell::PowerShell,
    };
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "rmachine", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// Parses the command line. An unknown command gets docker-machine's message and exit status
/// (`cmdNotFound` in docker/machine's cmd/docker-machine/machine.go); every other usage error
/// keeps clap's text and exit status 2.
fn parse() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(err) if err.kind() == clap::error::ErrorKind::InvalidSubcommand => {
            let invoked = std::env::args().next().unwrap_or_else(|| "rmachine".into());
            let command = err
                .get(clap::error::ContextKind::InvalidSubcommand)
                .map(|v| v.to_string())
                .unwrap_or_default();
            eprintln!("rmachine: '{command}' is not a rmachine command. See '{invoked} --help'.");
            Err(ExitCode::from(1))
        }
        Err(err) => err.exit(),
    }
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if let cmd::Command::Completion(args) = &cli.command {
        return print_completion(args.shell);
    }
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
    let result = runtime.block_on(cmd::run(cli.storage_path, cli.native_ssh, cli.command));
    // Do not wait for blocked stdin readers (ssh) to notice the end.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // docker-machine prints the message alone (scripts match on it); the messages
            // that start with "Error" carry it in their own text, as docker-machine's do.
            eprintln!("{err:#}");
            ExitCode::from(cmd::exit_code(&err))
        }
    }
}
