//! `rmachine ssh`.

use rmachine_host::machine;
use rmachine_host::store::Store;

/// Log into or run a command on a machine with SSH.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine name (default: "default")
    name: Option<String>,

    /// Command to run; with the system ssh, ssh options may come first (`-C echo hi`); none
    /// opens an interactive shell
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub async fn run(store: &Store, args: Args, native_ssh: bool) -> anyhow::Result<u8> {
    let mut command = args.command;
    // `rmachine ssh NAME -- ls` as docker-machine accepts it.
    if command.first().is_some_and(|a| a == "--") {
        command.remove(0);
    }
    let name = super::one_name(store, args.name)?;
    if !native_ssh {
        let argv = machine::system_ssh_argv(store, &name, &command).await?;
        tracing::debug!(?argv, "running the system ssh");
        match std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .status()
        {
            Ok(status) => return Ok(exit_code(status)),
            // docker-machine also falls back to its own client when there is no `ssh`.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!("no ssh on PATH; using the native client");
            }
            Err(e) => return Err(anyhow::Error::new(e).context("cannot run ssh")),
        }
    }
    let command = (!command.is_empty()).then(|| command.join(" "));
    let status = machine::ssh(store, &name, command.as_deref()).await?;
    // Exit statuses above 255 cannot be passed on; report them as a generic failure.
    Ok(u8::try_from(status).unwrap_or(255))
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    status
        .code()
        .and_then(|code| u8::try_from(code).ok())
        .unwrap_or(255)
}
