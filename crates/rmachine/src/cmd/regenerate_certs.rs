//! `rmachine regenerate-certs`.

use std::io::{BufRead, IsTerminal};
use std::time::Duration;

use anyhow::bail;
use rmachine_host::machine;
use rmachine_host::store::Store;

use crate::output::{out, outln};
use crate::progress::Renderer;

/// Regenerate TLS Certificates for a machine
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Force rebuild and do not prompt
    #[arg(short, long)]
    force: bool,

    /// Also make the CA and client certificates if they are missing
    #[arg(long = "client-certs")]
    client_certs: bool,

    /// Seconds to wait for the engine when a running machine restarts
    #[arg(long = "engine-timeout", default_value_t = machine::DEFAULT_ENGINE_TIMEOUT.as_secs())]
    engine_timeout: u64,

    /// Print plain step lines instead of a spinner
    #[arg(long = "no-progress")]
    no_progress: bool,

    /// Machine names (default: "default")
    names: Vec<String>,
}

fn confirm() -> anyhow::Result<bool> {
    out("Regenerate TLS machine certs?  Warning: this is irreversible. (y/n): ")?;
    // Reading a pipe that never ends would wait forever: without a terminal, say what to pass.
    if !std::io::stdin().is_terminal() {
        outln("")?;
        bail!("stdin is not a terminal, so the regeneration cannot be confirmed; pass -f to regenerate without asking");
    }
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim().to_lowercase().starts_with('y'))
}

pub async fn run(store: &Store, args: Args) -> anyhow::Result<u8> {
    let names = super::names(store, args.names)?;
    // docker-machine: a "no" ends the command without an error.
    if !(args.force || confirm()?) {
        return Ok(0);
    }
    let timeout = Duration::from_secs(args.engine_timeout);
    let (plain, client_certs) = (args.no_progress, args.client_certs);
    let names = &names[..];
    super::for_each(names, |name| async move {
        outln("Regenerating TLS certificates")?;
        let renderer = Renderer::for_machine(plain, &name, names);
        let restarted =
            machine::regenerate_certs(store, &name, client_certs, timeout, &|p| renderer.step(p))
                .await?;
        renderer.finish();
        // A machine that took the certificate while running kept its port agent.
        if restarted {
            super::start_port_agent_if_running(store, &name).await?;
        }
        Ok(())
    })
    .await
}
