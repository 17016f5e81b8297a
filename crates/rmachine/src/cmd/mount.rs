//! `rmachine mount`.

use anyhow::bail;
use rmachine_host::machine;
use rmachine_host::scp::Location;
use rmachine_host::store::Store;

/// Mount or unmount a directory from a machine with SSHFS.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Unmount instead of mount
    #[arg(short, long)]
    unmount: bool,

    /// machine:path
    src: String,

    /// Local mount point (default: the machine's path)
    mountpoint: Option<String>,
}

pub async fn run(store: &Store, args: Args) -> anyhow::Result<u8> {
    let Location::Machine { name, user, path } = Location::parse(&args.src) else {
        bail!("{}: expected machine:path", args.src);
    };
    if let Some(user) = user.filter(|u| u != "root") {
        bail!("mount: user {user:?}: the guest has only the user \"root\"");
    }
    let mountpoint = args.mountpoint.unwrap_or_else(|| path.clone());
    let (argv, missing) = if args.unmount {
        store.require(&name)?;
        (
            vec!["fusermount".to_owned(), "-u".to_owned(), mountpoint],
            "You must have a copy of the fusermount binary locally to use the unmount option",
        )
    } else {
        (
            machine::sshfs_argv(store, &name, &path, Some(&mountpoint)).await?,
            "You must have a copy of the sshfs binary locally to use the mount feature",
        )
    };
    tracing::debug!(?argv, "running");
    let mut command = std::process::Command::new(&argv[0]);
    command.args(&argv[1..]);
    // sshfs daemonizes and serves the mount after this command returns.
    rmachine_driver::runner::only_standard_descriptors(&mut command);
    match command.status() {
        Ok(status) => Ok(status
            .code()
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(255)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("{missing}"),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot run {}", argv[0]))),
    }
}
