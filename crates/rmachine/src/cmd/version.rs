//! `rmachine version`.

use rmachine_host::machine;
use rmachine_host::store::Store;

use crate::output::outln;

/// Show the rmachine version or a machine's engine version.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine whose engine version to print
    name: Option<String>,
}

pub async fn run(store: &Store, args: Args) -> anyhow::Result<u8> {
    match args.name {
        None => outln(&format!("rmachine version {}", env!("CARGO_PKG_VERSION")))?,
        Some(name) => outln(&machine::engine_version(store, &name).await?)?,
    }
    Ok(0)
}
