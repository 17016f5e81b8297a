//! `rmachine ssh`.

use rmachine_host::machine;
use rmachine_host::store::Store;

/// Log into or run a command on a machine with SSH.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine name (default: "default")
    name: Option<String>,

    /// Command to run (joined with spaces); none opens an interactive shell
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub async fn run(store: &Store, args: Args) -> anyhow::Result<u8> {
    let mut command = args.command;
    // `rmachine ssh NAME -- ls` as docker-machine accepts it.
    if command.first().is_some_and(|a| a == "--") {
        command.remove(0);
    }
    let command = (!command.is_empty()).then(|| command.join(" "));
    let name = super::one_name(store, args.name)?;
    let status = machine::ssh(store, &name, command.as_deref()).await?;
    // Exit statuses above 255 cannot be passed on; report them as a generic failure.
    Ok(u8::try_from(status).unwrap_or(255))
}
