//! `rmachine ip`.

use rmachine_host::machine;
use rmachine_host::store::Store;

use crate::output::outln;

/// Get the IP address of one or more machines.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine names (default: "default")
    names: Vec<String>,
}

pub async fn run(store: &Store, args: Args) -> anyhow::Result<u8> {
    let names = super::names(store, args.names)?;
    super::in_turn(&names, |name| async move {
        outln(&machine::ip(store, &name).await?)
    })
    .await
}
