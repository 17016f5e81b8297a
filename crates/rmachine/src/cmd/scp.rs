//! `rmachine scp`.

use std::io::IsTerminal;

use rmachine_host::scp::{self, ScpOptions};
use rmachine_host::store::Store;

use crate::output::outln;

/// Copy files between machines (and this host)
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Copy directories recursively
    #[arg(short = 'r', long)]
    recursive: bool,

    /// Copy only files whose size or modification time differ (and keep modification times)
    #[arg(short = 'd', long)]
    delta: bool,

    /// Print nothing (without it, each file copied is listed when stdout is a terminal)
    #[arg(short = 'q', long)]
    quiet: bool,

    /// Source: [[user@]machine:]path
    src: String,

    /// Destination: [[user@]machine:]path
    dst: String,
}

pub async fn run(store: &Store, args: Args) -> anyhow::Result<u8> {
    let options = ScpOptions {
        recursive: args.recursive,
        delta: args.delta,
    };
    let copied = scp::copy(store, &args.src, &args.dst, options).await?;
    // scp draws its progress meter only on a terminal; its final lines are what remains.
    if !args.quiet && std::io::stdout().is_terminal() {
        for file in copied {
            let note = if file.skipped { " (up to date)" } else { "" };
            outln(&format!("{}  {} bytes{note}", file.path, file.bytes))?;
        }
    }
    Ok(0)
}
