//! `rmachine config`.

use rmachine_host::machine;
use rmachine_host::store::Store;

use crate::output::out;

/// Print the connection config for machine.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine name (default: "default")
    name: Option<String>,
}

pub async fn run(store: &Store, args: Args) -> anyhow::Result<u8> {
    let name = super::one_name(store, args.name)?;
    let setup = machine::client_flags(store, &name).await?;
    // A restart for a new certificate ended the port agent: start it (and wait for the SFTP
    // shares) as `start` does, before the flags are used.
    if setup.restarted {
        super::start_port_agent_if_running(store, &name).await?;
    }
    out(&setup.text)?;
    Ok(0)
}
