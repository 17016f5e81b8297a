//! `rmachine port-agent NAME` (hidden): the machine's port agent, run detached by
//! `create`/`start`/`restart`; see `rmachine_host::portagent`.

use rmachine_host::portagent;
use rmachine_host::store::Store;

/// Run a machine's port agent.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine name
    name: String,
}

pub async fn run(store: &Store, args: Args) -> anyhow::Result<u8> {
    store.require(&args.name)?;
    portagent::run(store, &args.name).await?;
    Ok(0)
}
