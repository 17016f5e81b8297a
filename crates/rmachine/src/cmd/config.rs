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
    out(&machine::client_flags(store, &name).await?)?;
    Ok(0)
}
