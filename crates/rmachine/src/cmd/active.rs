//! `rmachine active`.

use std::time::Duration;

use rmachine_host::machine;
use rmachine_host::store::Store;

use crate::output::outln;

/// Print which machine is active.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds to wait for each machine's answer
    #[arg(short, long, default_value_t = 10)]
    timeout: u64,
}

pub async fn run(store: &Store, args: Args) -> anyhow::Result<u8> {
    let docker_host = std::env::var("DOCKER_HOST").ok();
    let name = machine::active(
        store,
        Duration::from_secs(args.timeout),
        docker_host.as_deref(),
    )
    .await?;
    outln(&name)?;
    Ok(0)
}
