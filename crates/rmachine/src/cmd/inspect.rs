//! `rmachine inspect`.

use rmachine_host::machine;
use rmachine_host::store::Store;

use crate::output::out;

/// Inspect information about a machine.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Format the output using a template subset ({{.Field.Sub}}, {{json .X}}, {{prettyjson .X}})
    #[arg(short, long)]
    format: Option<String>,

    /// Machine name (default: "default")
    name: Option<String>,
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<u8> {
    let name = super::one_name(store, args.name)?;
    out(&machine::inspect(store, &name, args.format.as_deref())?)?;
    Ok(0)
}
