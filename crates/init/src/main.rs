//! `rmachine-init`: the guest's PID 1, and a multi-call binary (see the library docs).
//!
//! - as PID 1 (`/init`): boots the guest;
//! - `rmachine-init shutdown [-r]`: asks PID 1 to power off (or reboot);
//! - `rmachine-init udhcpc-script`: prints the DHCP event script the image installs;
//! - `rmachine-init udp-relay PORT`: the host port agent's UDP relay (see `forward`);
//! - `rmachine-init sftp-mount [--ro] [--control DIR] [--idle-exit SECS] PATH`: a host share
//!   over the SSH channel, held by a daemon that outlives the channel (see `sftpfs`);
//! - `rmachine-init disk-usage`: the data disk's usage as JSON, for the host's port agent;
//! - `rmachine-init install-tls`: new engine TLS files from the host (JSON on stdin), used by
//!   the engine from its next connection on (see `config::install_tls`);
//! - as `rmachine-runtime` (argv0): the container runtime.
use std::process::ExitCode;

use anyhow::Context as _;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use rmachine_init::{mounts, net, pid1, Action};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_owned())
        .unwrap_or_default();
    if argv0 == "rmachine-runtime" {
        // Before anything else: the runtime must start single-threaded (it forks and
        // changes namespaces).
        let code = rmachine_runtime::main_entry(std::env::args_os().collect());
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    if nix::unistd::getpid().as_raw() == 1 {
        boot(&args);
    }
    match run_command(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("rmachine-init: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// PID 1: leave rootfs if needed, then run PID 1 proper. Never returns.
fn boot(args: &[String]) -> ! {
    match mounts::on_rootfs() {
        Ok(true) => {
            // Only returns on failure: go on from rootfs (the runtime then cannot pivot_root
            // and starts containers with move + chroot, warning about it).
            let err = mounts::switch_root(args);
            eprintln!("rmachine-init: {}", rmachine_init::error_chain(&err));
        }
        Ok(false) => {}
        Err(err) => eprintln!("rmachine-init: {}", rmachine_init::error_chain(&err)),
    }
    pid1::run()
}

fn run_command(args: &[String]) -> anyhow::Result<ExitCode> {
    match args.get(1).map(String::as_str) {
        Some("shutdown") | Some("poweroff") => {
            let action = if args.iter().skip(2).any(|a| a == "-r" || a == "--reboot") {
                Action::Reboot
            } else {
                Action::PowerOff
            };
            // Signalling PID 1 of some other system (a developer's host) would be rude.
            let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
            if !os_release.lines().any(|l| l.trim() == "ID=rmachine") {
                anyhow::bail!("not an rmachine guest (/etc/os-release has no ID=rmachine)");
            }
            kill(Pid::from_raw(1), action.supervisor_signal())
                .with_context(|| format!("cannot ask PID 1 to {}", action.verb()))?;
            Ok(ExitCode::SUCCESS)
        }
        Some("udhcpc-script") => {
            print!("{}", net::udhcpc_script());
            Ok(ExitCode::SUCCESS)
        }
        Some("udp-relay") => {
            let port: u16 = args
                .get(2)
                .and_then(|p| p.parse().ok())
                .context("usage: rmachine-init udp-relay PORT")?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the relay's runtime")?;
            runtime
                .block_on(rmachine_init::forward::udp_relay(port))
                .context("udp relay failed")?;
            Ok(ExitCode::SUCCESS)
        }
        Some("sftp-mount") => {
            let usage = "usage: rmachine-init sftp-mount [--serve] [--ro] [--control DIR] \
                         [--idle-exit SECS] GUEST_PATH";
            let mut serve = false;
            let mut read_only = false;
            let mut control = std::path::PathBuf::from(rmachine_init::sftpfs::CONTROL_DIR);
            let mut idle_exit = rmachine_init::sftpfs::IDLE_EXIT;
            let mut rest = args.iter().skip(2);
            let path = loop {
                match rest.next().map(String::as_str) {
                    Some("--serve") => serve = true,
                    Some("--ro") => read_only = true,
                    Some("--control") => control = rest.next().context(usage)?.into(),
                    Some("--idle-exit") => {
                        let secs = rest.next().context(usage)?;
                        let secs: u64 = secs
                            .parse()
                            .with_context(|| format!("--idle-exit {secs:?}: not a number"))?;
                        if secs == 0 {
                            // The daemon would unmount before any channel could reach it.
                            anyhow::bail!("--idle-exit 0: the idle time must be at least 1 second");
                        }
                        idle_exit = std::time::Duration::from_secs(secs);
                    }
                    Some(option) if option.starts_with("--") => {
                        anyhow::bail!("unknown option {option}; {usage}")
                    }
                    Some(path) => break std::path::PathBuf::from(path),
                    None => anyhow::bail!("{usage}"),
                }
            };
            if rest.next().is_some() {
                anyhow::bail!("{usage}");
            }
            if serve {
                rmachine_init::sftpfs::serve(&path, read_only, &control, idle_exit)
            } else {
                rmachine_init::sftpfs::run(&path, read_only, &control, idle_exit)
            }
            .with_context(|| format!("share on {}", path.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Some("disk-usage") => {
            // The data disk's usage for the host's port agent (`rmachine inspect`).
            let stat = nix::sys::statvfs::statvfs(rmachine_init::supervisor::DATA_MOUNT)
                .context("cannot statvfs the data disk")?;
            let usage = rmachine_guest_config::report::DiskUsage::from_blocks(
                stat.fragment_size(),
                stat.blocks(),
                stat.blocks_free(),
                stat.blocks_available(),
            );
            println!("{}", serde_json::to_string(&usage)?);
            Ok(ExitCode::SUCCESS)
        }
        Some("install-tls") => {
            if args.len() > 2 {
                anyhow::bail!("usage: rmachine-init install-tls < TLS-FILES-JSON");
            }
            use rmachine_init::config;
            let files = config::read_tls_files(std::io::stdin().lock())?;
            let saved = std::path::Path::new(rmachine_init::supervisor::DATA_MOUNT).join("config");
            if let Some(err) =
                config::install_tls(&files, std::path::Path::new(config::TLS_DIR), &saved)?
            {
                // The engine has the new files; only the next boot's copy is behind.
                eprintln!(
                    "rmachine-init install-tls: warning: the saved configuration copy was not \
                     updated: {}",
                    anyhow::Error::new(err)
                        .chain()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(": ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Some("--version") => {
            println!("rmachine-init {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!(
                "usage: rmachine-init shutdown [-r] | udhcpc-script | udp-relay PORT | \
                 sftp-mount [--ro] PATH | disk-usage | install-tls | --version\n\
                 (as PID 1 it boots the guest; as rmachine-runtime it runs containers)"
            );
            Ok(ExitCode::from(2))
        }
    }
}
