//! Published ports (`-p`, `-P`, `docker port`, the PORTS column): reached from the engine's
//! host (its network namespace here) through the engine's proxy, released at stop, taken back
//! at start; a port already taken is dockerd's error and the container does not start.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rmachine_tests_engine::Engine;

const HTTPD: &str =
    "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 80 -h /www";

/// `GET /` on 127.0.0.1:`port` from inside the engine's namespace, retried for a few seconds
/// while the server in the container starts.
fn http_get(engine: &Engine, port: u16) -> Result<String> {
    engine.netns.run(move || -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let attempt = (|| -> Result<String> {
                let mut s = TcpStream::connect(("127.0.0.1", port))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                if out.is_empty() {
                    bail!("empty answer");
                }
                Ok(out)
            })();
            match attempt {
                Ok(out) => return Ok(out),
                Err(err) if Instant::now() > deadline => return Err(err),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })?
}

fn refused(engine: &Engine, port: u16) -> Result<bool> {
    engine
        .netns
        .run(move || TcpStream::connect(("127.0.0.1", port)).is_err())
}

#[test]
fn a_published_port_reaches_the_container_and_closes_at_stop() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run", "-d", "--name", "web", "-p", "8080:80", "busybox", "sh", "-c", HTTPD,
        ])?
        .ok()?;
    let answer = http_get(&engine, 8080)?;
    assert!(
        answer.starts_with("HTTP/1.") && answer.contains("hello from"),
        "{answer}"
    );

    let port = engine.docker(&["port", "web"])?.ok()?.stdout;
    assert_eq!(port, "80/tcp -> 0.0.0.0:8080\n80/tcp -> [::]:8080\n");
    let ps = engine
        .docker(&["ps", "--format", "{{.Ports}}"])?
        .ok()?
        .stdout;
    assert_eq!(ps.trim(), "0.0.0.0:8080->80/tcp, [::]:8080->80/tcp");
    let ports = engine.inspect("web", "{{json .NetworkSettings.Ports}}")?;
    assert_eq!(
        ports,
        r#"{"80/tcp":[{"HostIp":"0.0.0.0","HostPort":"8080"},{"HostIp":"::","HostPort":"8080"}]}"#
    );
    let bindings = engine.inspect("web", "{{json .HostConfig.PortBindings}}")?;
    assert_eq!(bindings, r#"{"80/tcp":[{"HostIp":"","HostPort":"8080"}]}"#);

    engine.docker(&["stop", "-t", "1", "web"])?.ok()?;
    assert!(refused(&engine, 8080)?, "port 8080 still open after stop");
    assert_eq!(
        engine.inspect("web", "{{json .NetworkSettings.Ports}}")?,
        "{}"
    );

    engine.docker(&["start", "web"])?.ok()?;
    let answer = http_get(&engine, 8080)?;
    assert!(answer.contains("hello from"), "{answer}");
    engine.docker(&["rm", "-f", "web"])?.ok()?;
    assert!(refused(&engine, 8080)?, "port 8080 still open after rm -f");
    Ok(())
}

#[test]
fn publish_all_maps_every_exposed_port_to_an_ephemeral_one() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run", "-d", "--name", "web", "-P", "--expose", "80", "--expose", "81/udp", "busybox",
            "sh", "-c", HTTPD,
        ])?
        .ok()?;
    let line = engine.docker(&["port", "web", "80"])?.ok()?.stdout;
    let port: u16 = line
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("0.0.0.0:"))
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("docker port web 80: {line:?}"))?;
    assert!((32768..=60999).contains(&port), "{port}");
    assert!(http_get(&engine, port)?.contains("hello from"));
    let udp = engine.docker(&["port", "web", "81/udp"])?.ok()?.stdout;
    assert!(udp.starts_with("0.0.0.0:"), "{udp}");

    // Ranges: one to one, and a host range for one port takes its first free port.
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "ranged",
            "-p",
            "18110-18111:80-81",
            "busybox",
            "sh",
            "-c",
            HTTPD,
        ])?
        .ok()?;
    for (port, host) in [("80", "0.0.0.0:18110"), ("81", "0.0.0.0:18111")] {
        let line = engine.docker(&["port", "ranged", port])?.ok()?.stdout;
        assert_eq!(line.lines().next(), Some(host), "{line}");
    }
    assert!(http_get(&engine, 18110)?.contains("hello from"));
    let holder = engine.netns.run(|| TcpListener::bind("0.0.0.0:18120"))??;
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "first-free",
            "-p",
            "18120-18122:80",
            "busybox",
            "sh",
            "-c",
            HTTPD,
        ])?
        .ok()?;
    let line = engine.docker(&["port", "first-free", "80"])?.ok()?.stdout;
    assert_eq!(line.lines().next(), Some("0.0.0.0:18121"), "{line}");
    drop(holder);
    Ok(())
}

#[test]
fn a_port_taken_is_dockers_error_and_the_container_does_not_start() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "first",
            "-p",
            "127.0.0.1:8081:80",
            "busybox",
            "sh",
            "-c",
            HTTPD,
        ])?
        .ok()?;
    let second = engine.docker(&[
        "run",
        "-d",
        "--name",
        "second",
        "-p",
        "127.0.0.1:8081:80",
        "busybox",
        "sleep",
        "100",
    ])?;
    assert_ne!(second.code, 0);
    assert!(
        second.stderr.contains("failed to set up container networking: driver failed programming external connectivity on endpoint second (")
            && second.stderr.contains("Bind for 127.0.0.1:8081 failed: port is already allocated"),
        "{}",
        second.stderr
    );
    assert_eq!(engine.inspect("second", "{{.State.Running}}")?, "false");

    // A port held by something else on the host.
    let holder = engine.netns.run(|| TcpListener::bind("0.0.0.0:8082"))??;
    let third = engine.docker(&[
        "run", "-d", "--name", "third", "-p", "8082:80", "busybox", "sleep", "100",
    ])?;
    assert_ne!(third.code, 0);
    assert!(
        third
            .stderr
            .contains("failed to bind host port for 0.0.0.0:8082:172.17.0.")
            && third.stderr.contains(":80/tcp: address already in use"),
        "{}",
        third.stderr
    );
    drop(holder);
    // Nothing of the failed starts is left: no veth but the first container's.
    let links = engine
        .netns
        .command("ip")
        .args(["-o", "link", "show", "type", "veth"])
        .output()?;
    let links = String::from_utf8_lossy(&links.stdout);
    assert_eq!(links.lines().count(), 1, "{links}");
    // The first still serves.
    assert!(http_get(&engine, 8081)?.contains("hello from"));
    Ok(())
}

/// A static UDP echo server for the container (busybox has none).
fn udp_echo_binary(dir: &std::path::Path) -> Result<std::path::PathBuf> {
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
    let status = std::process::Command::new("musl-gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()?;
    if !status.success() {
        bail!("gcc failed");
    }
    Ok(out)
}

#[test]
fn udp_datagrams_go_through_a_published_port_and_back() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let echo = udp_echo_binary(engine.dir())?;
    engine
        .docker(&[
            "create",
            "--name",
            "echo",
            "-p",
            "5005:7/udp",
            "busybox",
            "/udp-echo",
        ])?
        .ok()?;
    engine
        .docker(&["cp", &echo.to_string_lossy(), "echo:/udp-echo"])?
        .ok()?;
    engine.docker(&["start", "echo"])?.ok()?;
    let reply = engine.netns.run(|| -> Result<String> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(300)))?;
        let mut buf = [0u8; 64];
        for _ in 0..30 {
            socket.send_to(b"ping", "127.0.0.1:5005")?;
            if let Ok((n, _)) = socket.recv_from(&mut buf) {
                return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        bail!("no echo")
    })??;
    assert_eq!(reply, "ping");
    assert_eq!(
        engine.docker(&["port", "echo"])?.ok()?.stdout,
        "7/udp -> 0.0.0.0:5005\n7/udp -> [::]:5005\n"
    );
    Ok(())
}

#[test]
fn a_restart_policy_restart_publishes_the_ports_again() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "web",
            "--restart",
            "always",
            "-p",
            "8086:80",
            "busybox",
            "sh",
            "-c",
            "mkdir -p /www && echo hello from $(hostname) > /www/index.html && httpd -f -p 80 -h /www; exit 3",
        ])?
        .ok()?;
    let first = http_get(&engine, 8086)?;
    // The server (not PID 1, so a signal reaches it) exits, and with it the container; the
    // policy restarts it, and it gets its port back.
    engine.docker(&["exec", "web", "killall", "httpd"])?;
    engine.wait_for(
        &[
            "inspect",
            "-f",
            "{{.RestartCount}} {{.State.Running}}",
            "web",
        ],
        Duration::from_secs(20),
        |r| r.stdout.trim() == "1 true",
    )?;
    let second = http_get(&engine, 8086)?;
    assert!(
        first.contains("hello from") && second.contains("hello from"),
        "{second}"
    );
    assert_eq!(
        engine.docker(&["port", "web", "80/tcp"])?.ok()?.stdout,
        "0.0.0.0:8086\n[::]:8086\n"
    );
    Ok(())
}
