//! `rmachine status`.

use rmachine_host::machine;
use rmachine_host::store::Store;

use crate::output::outln;

/// Get the status of a machine.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine name (default: "default")
    name: Option<String>,
}

pub async fn run(store: &Store, args: Args) -> anyhow::Result<u8> {
    let name = super::one_name(store, args.name)?;
    outln(&machine::state(store, &name).await?.to_string())?;
    Ok(0)
}
