//! `rmachine-init`: the guest's PID 1, and a multi-call binary (see the library docs).
//!
//! - as PID 1 (`/init`): boots the guest;
//! - `rmachine-init shutdown [-r]`: asks PID 1 to power off (or reboot);
//! - `rmachine-init udhcpc-script`: prints the DHCP event script the image installs;
//! - `rmachine-init udp-relay PORT`: the host port agent's UDP relay (see `forward`);
//! - `rmachine-init sftp-mount [--ro] PATH`: a host share over the SSH channel (see `sftpfs`);
//! - `rmachine-init disk-usage`: the data disk's usage as JSON, for the host's port agent;
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
            let read_only = args.get(2).is_some_and(|a| a == "--ro");
            let path = args
                .get(if read_only { 3 } else { 2 })
                .context("usage: rmachine-init sftp-mount [--ro] GUEST_PATH")?;
            rmachine_init::sftpfs::run(std::path::Path::new(path), read_only)
                .with_context(|| format!("share on {path}"))?;
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
        Some("--version") => {
            println!("rmachine-init {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!(
                "usage: rmachine-init shutdown [-r] | udhcpc-script | udp-relay PORT | \
                 sftp-mount [--ro] PATH | disk-usage | --version\n\
                 (as PID 1 it boots the guest; as rmachine-runtime it runs containers)"
            );
            Ok(ExitCode::from(2))
        }
    }
}
