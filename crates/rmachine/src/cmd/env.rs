//! `rmachine env`.

use anyhow::bail;
use rmachine_host::env::{self as shellenv, EnvError, Shell};
use rmachine_host::machine::{self, EnvOptions};
use rmachine_host::store::Store;

use crate::output::out;

/// Display the commands to set up the environment for the Docker client.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Force environment to be configured for a specified shell: [fish, cmd, powershell, tcsh, emacs], default is auto-detect
    #[arg(long)]
    shell: Option<String>,

    /// Unset variables instead of setting them
    #[arg(short, long)]
    unset: bool,

    /// Add machine IP to NO_PROXY environment variable
    #[arg(long = "no-proxy")]
    no_proxy: bool,

    /// Machine name (default: "default")
    name: Option<String>,
}

pub async fn run(store: &Store, args: Args) -> anyhow::Result<u8> {
    let shell = match &args.shell {
        Some(name) => Shell::from_name(name),
        None => match Shell::detect(std::env::var("SHELL").ok().as_deref()) {
            Ok(shell) => shell,
            Err(e @ EnvError::UnknownShell) => {
                out("The default lines below are for a sh/bash shell, you can specify the shell you're using, with the --shell flag.\n\n")?;
                return Err(e.into());
            }
        },
    };
    let argv: Vec<String> = std::env::args().collect();
    if args.unset {
        if args.name.is_some() {
            bail!("Error: Expected no machine name when the -u flag is present");
        }
        let names = shellenv::unset_names(args.no_proxy, |k| std::env::var(k).ok());
        out(&shell.render_unset(&names, &argv))?;
        return Ok(0);
    }
    let name = super::one_name(store, args.name)?;
    let options = EnvOptions {
        shell,
        no_proxy: args.no_proxy,
        argv,
    };
    let setup = machine::env(store, &name, &options).await?;
    // A restart for a new certificate ended the port agent: start it (and wait for the SFTP
    // shares) as `start` does, before the shell uses the machine.
    if setup.restarted {
        super::start_port_agent_if_running(store, &name).await?;
    }
    out(&setup.text)?;
    Ok(0)
}
