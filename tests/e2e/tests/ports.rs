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

/// Whether `pid` runs (a zombie waiting for PID 1 to reap it has exited).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Whether `pid` has exited within a second (it lets go of its lock just before it exits).
fn exits(pid: u32) -> bool {
    within(Duration::from_secs(1), "the agent exits", || !alive(pid)).is_ok()
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
    assert!(exits(first), "the agent outlived stop");
    machine.rmachine(&["start", NAME])?.success()?;
    let second = wait_agent(&machine, "true true", Duration::from_secs(20))?;
    assert_ne!(second, first);
    machine.rmachine(&["kill", NAME])?.success()?;
    assert!(exits(second), "the agent outlived kill");
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
    assert!(exits(third), "the agent outlived rm");
    Ok(())
}

/// A static UDP echo server on port 7 for a container (busybox has none).
fn udp_echo_binary(dir: &Path) -> Result<std::path::PathBuf> {
    let src = dir.join("echo.c");
    std::fs::write(
        &src,
        r#"#include <netinet/in.h>
#include <sys/socket.h>
int main(void) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET; a.sin_port = htons(7);
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) return 1;
    char buf[2048];
    for (;;) {
        struct sockaddr_in from; socklen_t len = sizeof from;
        long n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
        if (n > 0) sendto(s, buf, n, 0, (struct sockaddr *)&from, len);
    }
}
"#,
    )?;
    let out = dir.join("udp-echo");
    let status = Command::new("musl-gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()?;
    if !status.success() {
        bail!("musl-gcc failed");
    }
    Ok(out)
}

/// A port free for TCP and UDP on both host loopbacks.
fn free_port() -> Result<u16> {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("::1", port)).is_ok()
        {
            return Ok(port);
        }
    }
}

/// Polls `check` every 50 ms until it holds; returns how long that took.
fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Result<Duration> {
    let started = Instant::now();
    while !check() {
        if started.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(started.elapsed())
}

fn http_answers(addr: &str, body: &str) -> bool {
    curl(&format!("http://{addr}/")).is_ok_and(|b| b == body)
}

fn udp_echo(port: u16) -> Option<String> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let mut buf = [0u8; 64];
    socket.send_to(b"ping", ("127.0.0.1", port)).ok()?;
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn published_ports_are_on_host_loopback_while_their_container_runs() -> Result<()> {
    let machine = Machine::new("published")?;
    machine.create(&[])?.success()?;
    let tar = machine.store().join("busybox.tar");
    rmachine_fixtures::busybox_image(
        &tar,
        "busybox:latest",
        rmachine_fixtures::ArchiveFormat::DockerSave,
    )?;
    machine
        .docker(&["load", "-i", &tar.to_string_lossy()])?
        .success()?;

    let web = free_port()?;
    let publish = format!("{web}:80");
    machine
        .docker(&[
            "run", "-d", "--name", "web", "--restart", "always", "-p", &publish, "busybox", "sh",
            "-c",
            "mkdir -p /www && echo hello-from-container > /www/index.html && exec httpd -f -p 80 -h /www",
        ])?
        .success()?;
    // `rmachine ip` names an address the host can use: the published port answers there.
    let ip = machine.rmachine(&["ip", "published"])?.success()?.stdout;
    assert_eq!(ip.trim(), "127.0.0.1", "{ip}");
    let v4 = format!("{}:{web}", ip.trim());
    let v6 = format!("[::1]:{web}");
    let took = within(Duration::from_secs(5), "the published port answers", || {
        http_answers(&v4, "hello-from-container\n")
    })?;
    eprintln!(
        "published port answered {:.2}s after docker run returned",
        took.as_secs_f64()
    );
    assert!(
        http_answers(&v6, "hello-from-container\n"),
        "::1 answers too"
    );

    // UDP.
    let udp = free_port()?;
    let echo = udp_echo_binary(machine.store())?;
    let publish_udp = format!("{udp}:7/udp");
    machine
        .docker(&[
            "create",
            "--name",
            "echo",
            "-p",
            &publish_udp,
            "busybox",
            "/udp-echo",
        ])?
        .success()?;
    machine
        .docker(&["cp", &echo.to_string_lossy(), "echo:/udp-echo"])?
        .success()?;
    machine.docker(&["start", "echo"])?.success()?;
    within(Duration::from_secs(5), "the udp echo answers", || {
        udp_echo(udp).as_deref() == Some("ping")
    })?;

    // A container that stops takes its port with it.
    machine.docker(&["stop", "-t", "1", "web"])?.success()?;
    within(Duration::from_secs(2), "the port closes", || {
        std::net::TcpStream::connect(&v4).is_err()
    })?;
    machine.docker(&["start", "web"])?.success()?;
    within(Duration::from_secs(5), "the port reopens", || {
        http_answers(&v4, "hello-from-container\n")
    })?;

    // A host port already in use: the container runs, the failure shows in ls.
    let taken = free_port()?;
    let _holder = std::net::TcpListener::bind(("127.0.0.1", taken))?;
    let publish_taken = format!("{taken}:80");
    machine
        .docker(&[
            "run",
            "-d",
            "--name",
            "clash",
            "-p",
            &publish_taken,
            "busybox",
            "sleep",
            "1000",
        ])?
        .success()?;
    let expected = format!("cannot publish 127.0.0.1:{taken}/tcp of container");
    within(Duration::from_secs(5), "ls reports the clash", || {
        machine
            .rmachine(&["ls"])
            .is_ok_and(|r| r.stdout.contains(&expected))
    })?;
    // The agent's log in the machine's directory says it too.
    let log = std::fs::read_to_string(
        machine
            .store()
            .join("machines")
            .join("published")
            .join("port-agent.log"),
    )?;
    assert!(log.contains(&expected), "{log}");
    let ps = machine
        .docker(&["ps", "--filter", "name=clash", "--format", "{{.Status}}"])?
        .success()?;
    assert!(ps.stdout.starts_with("Up"), "{}", ps.stdout);
    machine.docker(&["rm", "-f", "clash"])?.success()?;

    // The machine restarts: the port closes with it and comes back with the container.
    machine.rmachine(&["stop", "published"])?.success()?;
    assert!(
        std::net::TcpStream::connect(&v4).is_err(),
        "port open on a stopped machine"
    );
    machine.rmachine(&["start", "published"])?.success()?;
    within(
        Duration::from_secs(30),
        "the port is back after start",
        || http_answers(&v4, "hello-from-container\n"),
    )?;
    Ok(())
}
