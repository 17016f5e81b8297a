//! `rmachine stop`.

use rmachine_host::machine;
use rmachine_host::store::Store;

use crate::output::outln;

/// Stop one or more machines.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Save the running guest's state (memory, running containers) instead of powering it
    /// off; the next `start` resumes it
    #[arg(long = "save", conflicts_with = "no_save")]
    save: bool,

    /// Power the guest off even if the machine was created with --save-on-stop
    #[arg(long = "no-save")]
    no_save: bool,

    /// Machine names (default: "default")
    names: Vec<String>,
}

pub async fn run(store: &Store, args: Args) -> anyhow::Result<u8> {
    let names = super::names(store, args.names)?;
    let save = match (args.save, args.no_save) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    super::for_each(&names, |name| async move {
        outln(&format!("Stopping \"{name}\"..."))?;
        if machine::stop_with(store, &name, save).await? {
            outln(&format!(
                "Machine \"{name}\" was stopped; its state was saved and `start` resumes it."
            ))
        } else {
            outln(&format!("Machine \"{name}\" was stopped."))
        }
    })
    .await
}
