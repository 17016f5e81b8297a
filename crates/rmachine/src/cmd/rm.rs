//! `rmachine rm`.

use std::io::{BufRead, IsTerminal};

use anyhow::bail;
use rmachine_host::machine;
use rmachine_host::store::Store;

use crate::output::{out, outln};

/// Remove one or more machines.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Remove local configuration even if the machine cannot be removed (implies -y)
    #[arg(short, long)]
    force: bool,

    /// Assumes automatic yes to the confirmation prompt
    #[arg(short = 'y')]
    yes: bool,

    /// Machine names
    #[arg(required = true)]
    names: Vec<String>,
}

fn confirm(names: &[String]) -> anyhow::Result<bool> {
    outln(&format!("About to remove {}", names.join(", ")))?;
    outln("WARNING: This action will delete both local reference and remote instance.")?;
    if !std::io::stdin().is_terminal() {
        bail!("stdin is not a terminal, so removal cannot be confirmed; pass -y to remove without asking");
    }
    out("Are you sure? (y/n): ")?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

pub async fn run(store: &Store, args: Args) -> anyhow::Result<u8> {
    if !(args.yes || args.force || confirm(&args.names)?) {
        return Ok(1);
    }
    let force = args.force;
    super::in_turn(&args.names, |name| async move {
        match machine::remove(store, &name, force).await {
            Ok(()) => outln(&format!("Successfully removed {name}")),
            // With its causes: the driver's own reason is what tells the user to pass -f.
            Err(e) => bail!(
                "Error removing host \"{name}\": {:#}",
                anyhow::Error::new(e)
            ),
        }
    })
    .await
}
