//! `rmachine start`.

use std::time::Duration;

use rmachine_host::machine;
use rmachine_host::store::Store;

use crate::output::outln;
use crate::progress::Renderer;

/// Start one or more machines.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds to wait for the engine after the VM boots
    #[arg(long = "engine-timeout", default_value_t = machine::DEFAULT_ENGINE_TIMEOUT.as_secs())]
    pub engine_timeout: u64,

    /// Print plain step lines instead of a spinner
    #[arg(long = "no-progress")]
    pub no_progress: bool,

    /// Print when each boot stage was reached (guest and host), once the machine is ready
    #[arg(long = "timings")]
    pub timings: bool,

    /// Machine names (default: "default")
    pub names: Vec<String>,
}

pub async fn run(store: &Store, args: Args) -> anyhow::Result<u8> {
    let names = super::names(store, args.names)?;
    let timeout = Duration::from_secs(args.engine_timeout);
    let plain = args.no_progress;
    let timings = args.timings;
    let names = &names[..];
    let code = super::for_each(names, |name| async move {
        outln(&format!("Starting \"{name}\"..."))?;
        let renderer = Renderer::for_machine(plain, &name, names);
        machine::start(store, &name, timeout, &|p| renderer.step(p)).await?;
        super::start_port_agent(store, &name).await?;
        renderer.finish();
        outln(&format!("Machine \"{name}\" was started."))?;
        if timings {
            super::print_timings(&store.load(&name)?)?;
        }
        Ok(())
    })
    .await?;
    outln("Started machines may have new IP addresses. You may need to re-run the `rmachine env` command.")?;
    Ok(code)
}
