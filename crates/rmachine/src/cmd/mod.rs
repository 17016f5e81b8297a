//! The subcommands, one module each, and what they share.

mod active;
mod config;
pub(crate) mod create;
mod env;
mod inspect;
mod ip;
mod kill;
mod ls;
mod mount;
mod port_agent;
mod provision;
mod regenerate_certs;
mod restart;
mod rm;
mod scp;
mod ssh;
mod start;
mod status;
mod stop;
mod upgrade;
mod url;
mod version;

use std::path::PathBuf;

use anyhow::{bail, Context};
use rmachine_host::machine::MachineError;
use rmachine_host::store::Store;

/// docker-machine's commands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Print which machine is active
    Active(active::Args),
    /// Print the connection config for machine
    Config(config::Args),
    /// Print a shell completion script (bash, zsh, fish, powershell)
    Completion(CompletionArgs),
    /// Create a machine
    Create(Box<create::Args>),
    /// Display the commands to set up the environment for the Docker client
    Env(env::Args),
    /// Inspect information about a machine
    Inspect(inspect::Args),
    /// Get the IP address of a machine
    Ip(ip::Args),
    /// Kill a machine
    Kill(kill::Args),
    /// List machines
    Ls(ls::Args),
    /// Mount or unmount a directory from a machine with SSHFS.
    Mount(mount::Args),
    /// Re-provision existing machines
    Provision(provision::Args),
    /// Regenerate TLS Certificates for a machine
    RegenerateCerts(regenerate_certs::Args),
    /// Restart a machine
    Restart(restart::Args),
    /// Remove a machine
    Rm(rm::Args),
    /// Copy files between machines
    Scp(scp::Args),
    /// Log into or run a command on a machine with SSH.
    Ssh(ssh::Args),
    /// Start a machine
    Start(start::Args),
    /// Get the status of a machine
    Status(status::Args),
    /// Stop a machine
    Stop(stop::Args),
    /// Upgrade a machine to the current guest image (its data disk is kept)
    Upgrade(upgrade::Args),
    /// Get the URL of a machine
    Url(url::Args),
    /// Show the rmachine version or a machine's engine version
    Version(version::Args),
    /// Run a machine's port agent (started by create/start; not for users)
    #[command(hide = true)]
    PortAgent(port_agent::Args),
}

/// `rmachine completion SHELL`.
#[derive(clap::Args, Debug)]
pub struct CompletionArgs {
    /// The shell
    pub shell: CompletionShell,
}

/// The shells completion scripts are made for.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum CompletionShell {
    /// GNU bash
    Bash,
    /// Z shell
    Zsh,
    /// fish
    Fish,
    /// PowerShell
    Powershell,
}

/// Runs `command` against the store at `storage_path`; returns the exit code.
pub async fn run(
    storage_path: Option<PathBuf>,
    native_ssh: bool,
    command: Command,
) -> anyhow::Result<u8> {
    let mut store = Store::open(storage_path)?;
    match rmachine_host::context::docker_config_dir() {
        Ok(dir) => store = store.with_docker_contexts(dir),
        Err(error) => tracing::warn!(%error, "no docker contexts for machines"),
    }
    match command {
        Command::Active(args) => active::run(&store, args).await,
        Command::Config(args) => config::run(&store, args).await,
        // main prints completion scripts before a store is opened.
        Command::Completion(_) => Ok(0),
        Command::Create(args) => create::run(&store, *args).await,
        Command::Env(args) => env::run(&store, args).await,
        Command::Inspect(args) => inspect::run(&store, args),
        Command::Ip(args) => ip::run(&store, args).await,
        Command::Kill(args) => kill::run(&store, args).await,
        Command::Ls(args) => ls::run(&store, args).await,
        Command::Mount(args) => mount::run(&store, args).await,
        Command::Provision(args) => provision::run(&store, args).await,
        Command::RegenerateCerts(args) => regenerate_certs::run(&store, args).await,
        Command::Restart(args) => restart::run(&store, args).await,
        Command::Rm(args) => rm::run(&store, args).await,
        Command::Scp(args) => scp::run(&store, args).await,
        Command::Ssh(args) => ssh::run(&store, args, native_ssh).await,
        Command::Start(args) => start::run(&store, args).await,
        Command::Status(args) => status::run(&store, args).await,
        Command::Stop(args) => stop::run(&store, args).await,
        Command::Upgrade(args) => upgrade::run(&store, args).await,
        Command::Url(args) => url::run(&store, args).await,
        Command::Version(args) => version::run(&store, args).await,
        Command::PortAgent(args) => port_agent::run(&store, args).await,
    }
}

/// Starts the machine's port agent: this very executable, as `rmachine port-agent NAME`;
/// then waits for it to mount the shares it serves over SFTP (a warning names each one that
/// could not be mounted).
pub async fn start_port_agent(store: &Store, name: &str) -> anyhow::Result<()> {
    let program = std::env::current_exe().context("cannot locate the rmachine executable")?;
    if let Some(pid) = rmachine_host::machine::start_port_agent(store, name, &program)? {
        rmachine_host::machine::wait_for_sftp_shares(
            store,
            name,
            pid,
            rmachine_host::machine::SFTP_SHARE_WAIT,
        )
        .await?;
    }
    Ok(())
}

/// `--timings`: the last boot's timeline, as the machine record holds it.
pub fn print_timings(config: &rmachine_host::store::MachineConfig) -> anyhow::Result<()> {
    match &config.timeline {
        Some(timeline) => crate::output::out(&timeline.render()),
        None => crate::output::outln("no boot timeline recorded"),
    }
}

/// Starts the port agent again after a command that restarted the machine (its stop ended the
/// agent); nothing when the machine is left stopped.
pub async fn start_port_agent_if_running(store: &Store, name: &str) -> anyhow::Result<()> {
    if rmachine_host::machine::state(store, name).await? == rmachine_driver::VmState::Running {
        start_port_agent(store, name).await?;
    }
    Ok(())
}

/// The exit code for an error: 3 for a driver precheck failure (as docker-machine), else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<MachineError>())
        .map(|e| u8::try_from(e.exit_code()).unwrap_or(1))
        .unwrap_or(1)
}

/// The one machine a command acts on: the argument, else `default` if it exists.
pub fn one_name(store: &Store, name: Option<String>) -> anyhow::Result<String> {
    match name {
        Some(name) => Ok(name),
        None => default_or_fail(store),
    }
}

/// The machines a command acts on: the arguments, else `default` if it exists.
pub fn names(store: &Store, names: Vec<String>) -> anyhow::Result<Vec<String>> {
    if names.is_empty() {
        Ok(vec![default_or_fail(store)?])
    } else {
        Ok(names)
    }
}

fn default_or_fail(store: &Store) -> anyhow::Result<String> {
    match rmachine_host::machine::default_name(store) {
        Some(name) => Ok(name.to_string()),
        None => bail!("Error: No machine name(s) specified and no \"default\" machine exists"),
    }
}

/// Runs `action` on each machine in turn, printing each failure; fails if any failed (`rm`
/// and `ip`, whose output follows the order of the names, as docker-machine's `rm` does).
pub async fn in_turn<F, Fut>(names: &[String], mut action: F) -> anyhow::Result<u8>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut results = Vec::new();
    for name in names {
        results.push(action(name.clone()).await);
    }
    failures(results)
}

/// Runs `action` on every machine at once, as docker-machine runs start, stop, restart, kill,
/// provision, upgrade and regenerate-certs (a goroutine per machine): one thread each, since
/// the machine lock and some driver calls block. Failures are printed in the order of the
/// names; fails if any failed.
pub async fn for_each<F, Fut>(names: &[String], action: F) -> anyhow::Result<u8>
where
    F: Fn(String) -> Fut + Sync,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    if let [name] = names {
        return failures(vec![action(name.clone()).await]);
    }
    let handle = tokio::runtime::Handle::current();
    let results = std::thread::scope(|scope| {
        let threads: Vec<_> = names
            .iter()
            .map(|name| {
                let (handle, action) = (handle.clone(), &action);
                scope.spawn(move || handle.block_on(action(name.clone())))
            })
            .collect();
        names
            .iter()
            .zip(threads)
            .map(|(name, thread)| {
                thread
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the command on {name:?} panicked")))
            })
            .collect()
    });
    failures(results)
}

fn failures(results: Vec<anyhow::Result<()>>) -> anyhow::Result<u8> {
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    if failures.is_empty() {
        Ok(0)
    } else {
        bail!("{}", failures.join("\n"))
    }
}
