//! `rmachine stop`.

use rmachine_host::machine;
use rmachine_host::store::Store;

use crate::output::outln;

/// Stop one or more machines.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine names (default: "default")
    names: Vec<String>,
}

pub async fn run(store: &Store, args: Args) -> anyhow::Result<u8> {
    let names = super::names(store, args.names)?;
    super::for_each(&names, |name| async move {
        outln(&format!("Stopping \"{name}\"..."))?;
        machine::stop(store, &name).await?;
        outln(&format!("Machine \"{name}\" was stopped."))
    })
    .await
}
