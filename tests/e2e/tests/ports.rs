//! Published ports on the host: the port agent's lifecycle with the machine, and the guest
//! SSH server's `direct-tcpip` channels that carry forwarded connections.
#![cfg(rmachine_e2e)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rmachine_e2e::Machine;

const NAME: &str = "ports";

/// `Running Connected Pid` of the machine's port agent, as `rmachine inspect` shows it.
fn agent(machine: &Machine) -> Result<String> {
    let run = machine
        .rmachine(&[
            "inspect",
            "-f",
            "{{.PortAgent.Running}} {{.PortAgent.Connected}} {{.PortAgent.Pid}}",
            NAME,
        ])?
        .success()?;
    Ok(run.stdout.trim().to_string())
}

/// Waits until the agent's `Running Connected` is `state`; returns its pid.
fn wait_agent(machine: &Machine, state: &str, timeout: Duration) -> Result<u32> {
    let started = Instant::now();
    loop {
        let shown = agent(machine)?;
        if shown.starts_with(&format!("{state} ")) {
            return shown
                .rsplit(' ')
                .next()
                .and_then(|p| p.parse().ok())
                .context("no agent pid");
        }
        if started.elapsed() > timeout {
            bail!("port agent is {shown:?}, expected {state:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl(url: &str) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", url])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_port_agent_follows_the_machine_and_ssh_carries_connections_to_guest_loopback() -> Result<()>
{
    let machine = Machine::new(NAME)?;
    machine.create(&[])?.success()?;
    let first = wait_agent(&machine, "true true", Duration::from_secs(20))?;
    assert!(alive(first));

    // A server on the guest's loopback only, where the engine's userland proxy would listen.
    machine
        .rmachine(&[
            "ssh",
            NAME,
            "mkdir -p /tmp/www && echo hello-from-guest > /tmp/www/index.html \
             && httpd -p 127.0.0.1:9000 -h /tmp/www",
        ])?
        .success()?;

    // OpenSSH's client asks the guest's SSH server for direct-tcpip channels, as the agent does.
    let ssh_port = machine
        .rmachine(&["inspect", "-f", "{{.Driver.SSHPort}}", NAME])?
        .success()?
        .stdout
        .trim()
        .to_string();
    let key = machine
        .store()
        .join("machines")
        .join(NAME)
        .join("id_ed25519");
    let local = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let forward = format!("127.0.0.1:{local}:127.0.0.1:9000");
    let _ssh = KillOnDrop(
        Command::new("ssh")
            .args(["-N", "-o", "StrictHostKeyChecking=no", "-o"])
            .arg("UserKnownHostsFile=/dev/null")
            .args(["-o", "ExitOnForwardFailure=yes", "-i"])
            .arg(&key)
            .args(["-p", &ssh_port, "-L", &forward, "root@127.0.0.1"])
            .stdin(Stdio::null())
            .spawn()
            .context("run ssh -L")?,
    );
    let url = format!("http://127.0.0.1:{local}/");
    let started = Instant::now();
    loop {
        let body = curl(&url)?;
        if body == "hello-from-guest\n" {
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("no answer through ssh -L: {body:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // The agent goes with the machine and comes back with it.
    machine.rmachine(&["stop", NAME])?.success()?;
    assert_eq!(
        wait_agent(&machine, "false false", Duration::from_secs(1))?,
        first
    );
    assert!(!alive(first), "the agent outlived stop");
    machine.rmachine(&["start", NAME])?.success()?;
    let second = wait_agent(&machine, "true true", Duration::from_secs(20))?;
    assert_ne!(second, first);
    machine.rmachine(&["kill", NAME])?.success()?;
    assert!(!alive(second), "the agent outlived kill");
    machine.rmachine(&["start", NAME])?.success()?;
    let third = wait_agent(&machine, "true true", Duration::from_secs(20))?;
    let ls = machine.rmachine(&["ls"])?.success()?;
    let row = ls
        .stdout
        .lines()
        .find(|l| l.starts_with("ports "))
        .unwrap_or_default()
        .to_string();
    assert!(
        row.contains("Running") && !row.contains("port agent") && !row.contains("cannot publish"),
        "ls shows no agent problem: {row}"
    );
    machine.rmachine(&["rm", "-y", NAME])?.success()?;
    assert!(!alive(third), "the agent outlived rm");
    Ok(())
}
