//! The default bridge network and the `--network` modes: a container gets `eth0` with an
//! address on docker0 and a default route, reaches other containers and (masqueraded) the
//! world; `none`, `host` and `container:` behave as dockerd's; nothing is left on this host,
//! and what a killed engine left is removed at its restart.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};
use rmachine_tests_engine::{Engine, NetNs};

fn out(cmd: &mut Command) -> Result<String> {
    let o = cmd.output()?;
    if !o.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn ip_in(ns: &NetNs, args: &[&str]) -> Result<String> {
    out(Command::new("ip").arg("-n").arg(&ns.name).args(args))
}

#[test]
fn a_bridged_container_has_eth0_an_address_and_dockers_network_settings() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&["run", "-d", "--name", "ca", "busybox", "sleep", "100"])?
        .ok()?;
    engine
        .docker(&["run", "-d", "--name", "cb", "busybox", "sleep", "100"])?
        .ok()?;
    let ip = engine.inspect("ca", "{{.NetworkSettings.IPAddress}}")?;
    assert!(ip.starts_with("172.17.0."), "{ip}");
    assert_eq!(
        engine.inspect(
            "ca",
            "{{.NetworkSettings.Gateway}} {{.NetworkSettings.IPPrefixLen}} \
             {{.NetworkSettings.Networks.bridge.IPAddress}} {{.NetworkSettings.Networks.bridge.Gateway}}"
        )?,
        format!("172.17.0.1 16 {ip} 172.17.0.1")
    );
    let mac = engine.inspect("ca", "{{.NetworkSettings.MacAddress}}")?;
    assert!(mac.starts_with("02:42:ac:11:00:"), "{mac}");
    let network_id = engine.inspect("ca", "{{.NetworkSettings.Networks.bridge.NetworkID}}")?;
    assert_eq!(network_id.len(), 64, "{network_id}");

    let addr = engine
        .docker(&["exec", "ca", "ip", "-4", "-o", "addr", "show", "eth0"])?
        .ok()?;
    assert!(
        addr.stdout.contains(&format!("inet {ip}/16")),
        "{}",
        addr.stdout
    );
    let link = engine
        .docker(&["exec", "ca", "cat", "/sys/class/net/eth0/address"])?
        .ok()?;
    assert_eq!(link.stdout.trim(), mac);
    let route = engine.docker(&["exec", "ca", "ip", "route"])?.ok()?;
    assert!(
        route.stdout.contains("default via 172.17.0.1 dev eth0"),
        "{}",
        route.stdout
    );
    // Containers reach each other on the bridge, by name through --link.
    engine
        .docker(&["exec", "cb", "ping", "-c", "1", "-W", "5", &ip])?
        .ok()?;
    let linked = engine
        .docker(&[
            "run",
            "--rm",
            "--link",
            "ca:db",
            "busybox",
            "sh",
            "-c",
            "tail -n 2 /etc/hosts; ping -c 1 -W 5 db >/dev/null && echo reached",
        ])?
        .ok()?
        .stdout;
    assert!(linked.contains(&format!("{ip}\tdb ca\n")), "{linked}");
    assert!(linked.ends_with("reached\n"), "{linked}");
    let dead = engine.docker(&["run", "--rm", "--link", "gone:db", "busybox", "true"])?;
    assert_ne!(dead.code, 0);
    assert_eq!(
        engine
            .docker(&["ps", "--filter", "name=ca", "--format", "{{.Networks}}"])?
            .ok()?
            .stdout,
        "bridge\n"
    );

    // At stop the address goes back and the veth goes away.
    engine.docker(&["stop", "-t", "1", "ca", "cb"])?.ok()?;
    assert_eq!(engine.inspect("ca", "{{.NetworkSettings.IPAddress}}")?, "");
    let veths = ip_in(&engine.netns, &["-o", "link", "show", "type", "veth"])?;
    assert_eq!(veths, "", "veths left after stop");
    Ok(())
}

#[test]
fn egress_is_masqueraded_to_a_server_in_another_namespace() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    // "outside": a namespace wired to the engine's by a veth pair, 10.99.0.2 behind 10.99.0.1;
    // it has no route back to 172.17.0.0/16, so only masqueraded packets get an answer.
    let outside = NetNs::new()?;
    ip_in(
        &engine.netns,
        &[
            "link",
            "add",
            "vext",
            "type",
            "veth",
            "peer",
            "name",
            "vout",
            "netns",
            &outside.name,
        ],
    )?;
    ip_in(
        &engine.netns,
        &["addr", "add", "10.99.0.1/24", "dev", "vext"],
    )?;
    ip_in(&engine.netns, &["link", "set", "vext", "up"])?;
    ip_in(&outside, &["addr", "add", "10.99.0.2/24", "dev", "vout"])?;
    ip_in(&outside, &["link", "set", "vout", "up"])?;

    let listener = outside.run(|| TcpListener::bind("10.99.0.2:8000"))??;
    let server = std::thread::spawn(move || -> Result<String> {
        let (mut conn, peer) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf)?;
        conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 8\r\n\r\noutside\n")?;
        Ok(peer.ip().to_string())
    });
    let got = engine
        .docker(&[
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            // Debian's static busybox wget crashes; nc speaks the request.
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 10.99.0.2 8000",
        ])?
        .ok()?;
    assert!(got.stdout.ends_with("\r\n\r\noutside\n"), "{got:?}");
    let peer = server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;
    assert_eq!(
        peer, "10.99.0.1",
        "the container's address was not masqueraded"
    );

    // A published port reached from "outside" at the engine's address is forwarded by the
    // kernel (DNAT), not the userland proxy: the server sees the client's own address (busybox
    // httpd writes it IPv4-mapped).
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "seen",
            "-p",
            "18080:80",
            "busybox",
            "sh",
            "-c",
            "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho peer=$REMOTE_ADDR\\n' > /www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && exec httpd -f -p 80 -h /www",
        ])?
        .ok()?;
    let ask = |ns: &NetNs, addr: &'static str| -> Result<String> {
        ns.run(move || -> Result<String> {
            let mut last = String::new();
            for _ in 0..50 {
                if let Ok(mut conn) = std::net::TcpStream::connect(addr) {
                    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
                    conn.write_all(b"GET /cgi-bin/ip HTTP/1.0\r\n\r\n")?;
                    last.clear();
                    let _ = conn.read_to_string(&mut last);
                    if last.contains("peer=") {
                        return Ok(last);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(last)
        })?
    };
    let got = ask(&outside, "10.99.0.1:18080")?;
    assert!(got.contains("peer=[::ffff:10.99.0.2]\n"), "{got}");
    // From the engine's namespace on loopback: the proxy, as dockerd without route_localnet.
    let got = ask(&engine.netns, "127.0.0.1:18080")?;
    assert!(got.contains("peer=[::ffff:172.17.0.1]\n"), "{got}");
    // Another container through the engine's address (hairpin): masqueraded, answered.
    let got = engine
        .docker(&[
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "printf 'GET /cgi-bin/ip HTTP/1.0\\r\\n\\r\\n' | nc -w 10 10.99.0.1 18080",
        ])?
        .ok()?;
    assert!(got.stdout.contains("peer=[::ffff:172.17.0.1]\n"), "{got:?}");
    engine.docker(&["rm", "-f", "seen"])?.ok()?;
    let rules = out(Command::new("ip").args([
        "netns",
        "exec",
        &engine.netns.name,
        "nft",
        "list",
        "table",
        "ip",
        "rmachine-engine",
    ]))?;
    assert!(!rules.contains("dnat"), "{rules}");
    Ok(())
}

#[test]
fn none_host_and_container_modes_are_dockers() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let links = engine
        .docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "busybox",
            "ls",
            "/sys/class/net",
        ])?
        .ok()?;
    assert_eq!(links.stdout, "lo\n");

    // host with -p: dockerd's warning, and the container runs with the host's network.
    let run = engine
        .docker(&[
            "run",
            "--rm",
            "--network",
            "host",
            "-p",
            "8089:80",
            "busybox",
            "true",
        ])?
        .ok()?;
    assert!(
        run.stderr
            .contains("WARNING: Published ports are discarded when using host network mode"),
        "{run:?}"
    );

    // host: the engine's own namespace; a server there is reached on its 127.0.0.1.
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "hostweb",
            "--network",
            "host",
            "busybox",
            "httpd",
            "-f",
            "-p",
            "127.0.0.1:8090",
            "-h",
            "/",
        ])?
        .ok()?;
    let reached = engine.netns.run(|| {
        (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            std::net::TcpStream::connect("127.0.0.1:8090").is_ok()
        })
    })?;
    assert!(reached, "httpd on the host network not reachable");
    assert_eq!(
        engine.inspect("hostweb", "{{.NetworkSettings.IPAddress}}")?,
        ""
    );

    // container:ID shares that container's eth0.
    engine
        .docker(&["run", "-d", "--name", "ca", "busybox", "sleep", "100"])?
        .ok()?;
    let ip = engine.inspect("ca", "{{.NetworkSettings.IPAddress}}")?;
    let shared = engine
        .docker(&[
            "run",
            "--rm",
            "--network",
            "container:ca",
            "busybox",
            "ip",
            "-4",
            "-o",
            "addr",
            "show",
            "eth0",
        ])?
        .ok()?;
    assert!(
        shared.stdout.contains(&format!("inet {ip}/16")),
        "{}",
        shared.stdout
    );

    engine.docker(&["stop", "-t", "1", "ca"])?.ok()?;
    let id = engine.inspect("ca", "{{.Id}}")?;
    let stopped = engine.docker(&[
        "run",
        "--rm",
        "--network",
        "container:ca",
        "busybox",
        "true",
    ])?;
    assert_ne!(stopped.code, 0);
    assert!(
        stopped.stderr.contains(&format!(
            "cannot join network of a non running container: {id}"
        )),
        "{}",
        stopped.stderr
    );
    let unknown = engine.docker(&[
        "run",
        "--name",
        "unknown",
        "--network",
        "nosuch",
        "busybox",
        "true",
    ])?;
    assert_ne!(unknown.code, 0);
    assert!(
        unknown.stderr.contains("network nosuch not found"),
        "{}",
        unknown.stderr
    );
    let published = engine.docker(&[
        "run",
        "--network",
        "container:hostweb",
        "-p",
        "80",
        "busybox",
        "true",
    ])?;
    assert!(
        published
            .stderr
            .contains("conflicting options: port publishing and the container type network mode"),
        "{}",
        published.stderr
    );
    Ok(())
}

fn host_state() -> Result<(String, String)> {
    let links = out(Command::new("ip").args(["-o", "link"]))?
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let tables = out(Command::new("nft").args(["list", "tables"]))?;
    Ok((links, tables))
}

#[test]
fn nothing_reaches_this_host_and_a_killed_engines_leftovers_are_removed() -> Result<()> {
    let before = host_state()?;
    let Some(mut engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run", "-d", "--name", "web", "-p", "8085:80", "busybox", "sleep", "100",
        ])?
        .ok()?;
    // The bridge, the veth and the NAT table are in the engine's namespace, not this host's.
    let inside = ip_in(&engine.netns, &["-o", "link"])?;
    assert!(
        inside.contains("docker0") && inside.contains("veth"),
        "{inside}"
    );
    let tables = out(engine.netns.command("nft").args(["list", "tables"]))?;
    assert!(tables.contains("table ip rmachine-engine"), "{tables}");
    let after = host_state()?;
    assert!(
        !after.0.contains("docker0") && !after.1.contains("rmachine-engine"),
        "{after:?}"
    );
    assert_eq!(before.1, after.1);

    engine.crash()?;
    engine.spawn()?;
    let inside = ip_in(&engine.netns, &["-o", "link"])?;
    assert!(
        !inside.contains("docker0") && !inside.contains("veth"),
        "{inside}"
    );
    // The engine removes the old table beside serving, not before: give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let tables = loop {
        let tables = out(engine.netns.command("nft").args(["list", "tables"]))?;
        if !tables.contains("rmachine-engine") || std::time::Instant::now() > deadline {
            break tables;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!tables.contains("rmachine-engine"), "{tables}");
    let netns_dir = engine.data_root().join("netns");
    let left: Vec<_> = std::fs::read_dir(&netns_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert!(
        !mounts.contains(&netns_dir.to_string_lossy().into_owned()),
        "netns mounts left"
    );
    // The port is free again.
    engine.docker(&["start", "web"])?.ok()?;
    let port = engine.docker(&["port", "web", "80"])?.ok()?.stdout;
    assert!(port.contains("0.0.0.0:8085"), "{port}");
    engine.docker(&["rm", "-f", "web"])?.ok()?;
    drop(engine);
    let end = host_state()?;
    assert_eq!(before.1, end.1);
    assert!(!end.0.contains("docker0"), "{end:?}");
    Ok(())
}

/// The engine namespace's links, nftables rule set and listening sockets.
fn engine_state(engine: &Engine) -> Result<(String, String, String)> {
    let links = ip_in(&engine.netns, &["-o", "link"])?
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let rules = out(engine.netns.command("nft").args(["list", "ruleset"]))?;
    let listening = out(engine.netns.command("ss").args(["-Htuln"]))?;
    Ok((links, rules, listening))
}

#[test]
fn no_failure_leaves_a_link_a_rule_or_a_listener() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&["network", "create", "--subnet", "10.233.1.0/24", "app"])?
        .ok()?;
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "holder",
            "--network",
            "app",
            "--ip",
            "10.233.1.10",
            "-p",
            "8093:80",
            "-p",
            "8093:80/udp",
            "busybox",
            "sleep",
            "100",
        ])?
        .ok()?;
    engine
        .docker(&["create", "--name", "stopped", "busybox", "true"])?
        .ok()?;
    engine
        .docker(&["run", "-d", "--name", "idle", "busybox", "sleep", "100"])?
        .ok()?;
    let before = engine_state(&engine)?;
    assert!(before.1.contains("dport 8093"), "{}", before.1);
    let failures: &[(&[&str], &str)] = &[
        (
            &["network", "create", "--subnet", "10.233.0.0/16", "overlap"],
            "invalid pool request: Pool overlaps with other one on this address space",
        ),
        (
            &["run", "--rm", "--network", "nosuch", "busybox", "true"],
            "network nosuch not found",
        ),
        (
            &["run", "--rm", "-p", "8093:80", "busybox", "true"],
            "Bind for 0.0.0.0:8093 failed: port is already allocated",
        ),
        (
            &["run", "--rm", "-p", "8093:80/udp", "busybox", "true"],
            "Bind for 0.0.0.0:8093 failed: port is already allocated",
        ),
        (
            &["run", "--rm", "-p", "8094:80/sctp", "busybox", "true"],
            "does not support sctp ports",
        ),
        (
            &[
                "run",
                "--rm",
                "--network",
                "app",
                "--ip",
                "10.233.1.10",
                "busybox",
                "true",
            ],
            "Address already in use",
        ),
        (&["network", "rm", "app"], "has active endpoints"),
        (
            &[
                "run",
                "--rm",
                "--network",
                "container:stopped",
                "busybox",
                "true",
            ],
            "cannot join network of a non running container",
        ),
        (
            &["network", "connect", "--ip", "10.233.1.10", "app", "idle"],
            "Address already in use",
        ),
        (
            &["network", "connect", "nosuch", "idle"],
            "network nosuch not found",
        ),
    ];
    for (args, text) in failures {
        let got = engine.docker(args)?;
        assert!(
            got.code != 0 && got.stderr.contains(text),
            "{args:?}: {got:?}"
        );
        assert_eq!(engine_state(&engine)?, before, "after {args:?}");
    }
    Ok(())
}
