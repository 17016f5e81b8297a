//! User-defined networks: `docker network create|ls|inspect|rm|prune`, containers on one
//! reaching each other by name, `--internal`, dockerd's errors and network events.

use std::time::Duration;

use anyhow::Result;
use rmachine_tests_engine::Engine;

#[test]
fn networks_are_created_listed_inspected_and_removed_as_dockerd() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let id = engine
        .docker(&[
            "network",
            "create",
            "--subnet",
            "10.77.0.0/24",
            "--label",
            "team=a",
            "mynet",
        ])?
        .ok()?
        .stdout
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "{id}");
    let ls = engine
        .docker(&[
            "network",
            "ls",
            "--format",
            "{{.Name}} {{.Driver}} {{.Scope}}",
        ])?
        .ok()?
        .stdout;
    let mut names: Vec<&str> = ls.lines().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bridge bridge local",
            "host host local",
            "mynet bridge local",
            "none null local"
        ]
    );
    assert_eq!(
        engine
            .docker(&["network", "ls", "-q", "--filter", "label=team=a"])?
            .ok()?
            .stdout
            .trim(),
        &id[..12]
    );
    let inspect = engine
        .docker(&[
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}} {{.Internal}} {{.Labels.team}}",
            "mynet",
        ])?
        .ok()?
        .stdout;
    assert_eq!(inspect.trim(), "10.77.0.0/24 10.77.0.1 false a");

    // dockerd's errors.
    let overlap = engine.docker(&["network", "create", "--subnet", "10.77.0.128/25", "other"])?;
    assert!(
        overlap
            .stderr
            .contains("invalid pool request: Pool overlaps with other one on this address space"),
        "{}",
        overlap.stderr
    );
    let dup = engine.docker(&["network", "create", "mynet"])?;
    assert!(
        dup.stderr
            .contains("network with name mynet already exists"),
        "{}",
        dup.stderr
    );
    let missing = engine.docker(&["network", "inspect", "nosuch"])?;
    assert!(
        missing.stderr.contains("network nosuch not found"),
        "{}",
        missing.stderr
    );
    let predefined = engine.docker(&["network", "rm", "bridge"])?;
    assert!(
        predefined
            .stderr
            .contains("bridge is a pre-defined network and cannot be removed"),
        "{}",
        predefined.stderr
    );
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "member",
            "--network",
            "mynet",
            "busybox",
            "sleep",
            "100",
        ])?
        .ok()?;
    let busy = engine.docker(&["network", "rm", "mynet"])?;
    assert!(
        busy.stderr.contains(&format!(
            "error while removing network: network mynet id {id} has active endpoints"
        )),
        "{}",
        busy.stderr
    );
    let members = engine
        .docker(&[
            "network",
            "inspect",
            "-f",
            "{{range .Containers}}{{.Name}} {{.IPv4Address}}{{end}}",
            "mynet",
        ])?
        .ok()?
        .stdout;
    assert_eq!(members.trim(), "member 10.77.0.2/24");
    engine.docker(&["rm", "-f", "member"])?.ok()?;
    engine.docker(&["network", "rm", "mynet"])?.ok()?;
    let veths = engine.netns.command("ip").args(["-o", "link"]).output()?;
    let links = String::from_utf8_lossy(&veths.stdout);
    assert!(!links.contains(&format!("br-{}", &id[..12])), "{links}");

    // Prune removes the unused ones, and they stay gone after an engine restart.
    // Its filters are dockerd's: `until` on the creation time, `label`, `label!`.
    engine.docker(&["network", "create", "spare"])?.ok()?;
    engine
        .docker(&["network", "create", "--label", "keep=1", "labelled"])?
        .ok()?;
    let young = engine
        .docker(&["network", "prune", "-f", "--filter", "until=1h"])?
        .ok()?
        .stdout;
    assert!(
        !young.contains("spare") && !young.contains("labelled"),
        "{young}"
    );
    let pruned = engine
        .docker(&["network", "prune", "-f", "--filter", "label!=keep"])?
        .ok()?
        .stdout;
    assert!(
        pruned.contains("spare") && !pruned.contains("labelled"),
        "{pruned}"
    );
    let bad = engine.docker(&["network", "prune", "-f", "--filter", "driver=bridge"])?;
    assert!(
        bad.stderr.contains("invalid filter 'driver'"),
        "{}",
        bad.stderr
    );
    let pruned = engine
        .docker(&["network", "prune", "-f", "--filter", "label=keep=1"])?
        .ok()?
        .stdout;
    assert!(pruned.contains("labelled"), "{pruned}");
    engine.docker(&["network", "create", "kept"])?.ok()?;
    let mut engine = engine;
    engine.restart()?;
    let ls = engine
        .docker(&["network", "ls", "--format", "{{.Name}}"])?
        .ok()?
        .stdout;
    assert!(ls.contains("kept") && !ls.contains("spare"), "{ls}");
    Ok(())
}

/// A name server for the test on every address of the engines' namespace, port 53: it answers
/// `outside.test` with 192.0.2.77 and NXDOMAIN (authoritative) for anything else.
fn upstream_dns() -> Result<()> {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::{rdata, RData, Record, RecordType};
    let socket = std::net::UdpSocket::bind("0.0.0.0:53")?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((len, peer)) = socket.recv_from(&mut buf) {
            let Ok(query) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            let mut reply = Message::new();
            reply
                .set_id(query.id())
                .set_message_type(MessageType::Response)
                .set_authoritative(true)
                .add_queries(query.queries().iter().cloned());
            match query.queries().first() {
                Some(q) if q.name().to_ascii() == "outside.test." => {
                    if q.query_type() == RecordType::A {
                        reply.add_answer(Record::from_rdata(
                            q.name().clone(),
                            60,
                            RData::A(rdata::A::new(192, 0, 2, 77)),
                        ));
                    }
                }
                _ => {
                    reply.set_response_code(ResponseCode::NXDomain);
                }
            }
            if let Ok(bytes) = reply.to_vec() {
                let _ = socket.send_to(&bytes, peer);
            }
        }
    });
    Ok(())
}

#[test]
fn containers_on_a_user_network_reach_each_other_by_name() -> Result<()> {
    // The test's upstream name server must be in the engine's namespace.
    rmachine_tests_engine::share_network_with_engines()?;
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    upstream_dns()?;
    // The upstream server is reached from the containers at the network's gateway, which is
    // the engine namespace's own address.
    engine
        .docker(&[
            "network",
            "create",
            "--subnet",
            "10.231.77.0/24",
            "--gateway",
            "10.231.77.1",
            "app",
        ])?
        .ok()?;
    engine.docker(&["network", "create", "other"])?.ok()?;
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "app",
            "--dns",
            "10.231.77.1",
            "busybox",
            "sh",
            "-c",
            "mkdir -p /www && echo served by web > /www/index.html && exec httpd -f -p 80 -h /www",
        ])?
        .ok()?;
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "far",
            "--network",
            "other",
            "busybox",
            "sleep",
            "100",
        ])?
        .ok()?;
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "client",
            "--network",
            "app",
            "--network-alias",
            "front",
            "--network-alias",
            "ui",
            "--link",
            "web:backend",
            "--dns",
            "10.231.77.1",
            "busybox",
            "sleep",
            "100",
        ])?
        .ok()?;
    assert_eq!(
        engine.inspect("client", "{{json .NetworkSettings.Networks.app.Aliases}}")?,
        r#"["front","ui"]"#
    );
    let web_ip = engine.inspect("web", "{{.NetworkSettings.Networks.app.IPAddress}}")?;
    let client_ip = engine.inspect("client", "{{.NetworkSettings.Networks.app.IPAddress}}")?;
    let resolv = engine
        .docker(&["exec", "client", "cat", "/etc/resolv.conf"])?
        .ok()?
        .stdout;
    assert!(
        resolv.contains("\nnameserver 127.0.0.11\n")
            && resolv.contains("\noptions ndots:0\n")
            && resolv.contains("\n# ExtServers: [10.231.77.1]\n# Overrides: [nameservers]\n"),
        "{resolv}"
    );
    // Names are the embedded server's, not /etc/hosts lines (as dockerd).
    let hosts = engine
        .docker(&["exec", "client", "cat", "/etc/hosts"])?
        .ok()?
        .stdout;
    assert!(!hosts.contains("\tweb"), "{hosts}");
    let lookup = |from: &str, name: &str| -> Result<String> {
        let run = engine.docker(&["exec", from, "nslookup", "-type=a", name])?;
        Ok(format!("{}{}", run.stdout, run.stderr))
    };
    let web_id = engine.inspect("web", "{{.Id}}")?;
    for name in ["web", "WEB", "web.app", "backend", &web_id[..12]] {
        let got = lookup("client", name)?;
        assert!(
            got.contains("Server:\t\t127.0.0.11") && got.contains(&format!("Address: {web_ip}\n")),
            "{name}: {got}"
        );
    }
    for name in ["front", "ui", "client"] {
        let got = lookup("web", name)?;
        assert!(
            got.contains(&format!("Address: {client_ip}\n")),
            "{name}: {got}"
        );
    }
    // A link alias is the linking container's alone; another network's names are not served
    // (the upstream server says NXDOMAIN).
    let other = lookup("web", "backend")?;
    assert!(other.contains("NXDOMAIN"), "{other}");
    let far = lookup("client", "far")?;
    assert!(
        far.contains("NXDOMAIN") && !far.contains("Address: 10."),
        "{far}"
    );
    // Other names go upstream.
    let outside = lookup("client", "outside.test")?;
    assert!(outside.contains("Address: 192.0.2.77\n"), "{outside}");
    let got = engine.wait_for(
        &[
            "exec",
            "client",
            "sh",
            "-c",
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 web 80",
        ],
        Duration::from_secs(10),
        |r| r.stdout.contains("served by web"),
    )?;
    assert!(got.stdout.contains("served by web"));
    engine
        .docker(&["exec", "web", "ping", "-c", "1", "-W", "5", "front"])?
        .ok()?;
    // --ip: on a network with a subnet of the user's, inside it, an address nobody has.
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "pinned",
            "--network",
            "app",
            "--ip",
            "10.231.77.50",
            "busybox",
            "sleep",
            "100",
        ])?
        .ok()?;
    assert_eq!(
        engine.inspect("pinned", "{{.NetworkSettings.Networks.app.IPAddress}}")?,
        "10.231.77.50"
    );
    let addr = engine
        .docker(&["exec", "pinned", "ip", "-4", "-o", "addr", "show", "eth0"])?
        .ok()?
        .stdout;
    assert!(addr.contains("inet 10.231.77.50/24"), "{addr}");
    assert!(lookup("client", "pinned")?.contains("Address: 10.231.77.50\n"));
    let refused = |args: &[&str], text: &str| -> Result<()> {
        let mut full = vec!["run", "--rm"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["busybox", "true"]);
        let run = engine.docker(&full)?;
        assert!(
            run.code != 0 && run.stderr.contains(text),
            "{args:?}: {run:?}"
        );
        Ok(())
    };
    refused(
        &["--network", "app", "--ip", "10.231.77.50"],
        "Address already in use",
    )?;
    refused(
        &["--network", "app", "--ip", "10.9.9.9"],
        "invalid config for network app: invalid endpoint settings:\nno configured subnet or ip-range contain the IP address 10.9.9.9",
    )?;
    refused(
        &["--network", "other", "--ip", "10.9.9.9"],
        "user specified IP address is supported only when connecting to networks with user configured subnets",
    )?;
    refused(
        &["--ip", "172.17.0.50"],
        "user specified IP address is supported on user defined networks only",
    )?;
    // The default bridge keeps the host's name servers.
    let outsider = engine
        .docker(&["run", "--rm", "busybox", "cat", "/etc/resolv.conf"])?
        .ok()?
        .stdout;
    assert!(!outsider.contains("127.0.0.11"), "{outsider}");
    // A stopped container's name goes away.
    engine.docker(&["stop", "-t", "1", "web"])?.ok()?;
    let gone = lookup("client", "web")?;
    assert!(!gone.contains(&format!("Address: {web_ip}")), "{gone}");
    Ok(())
}

#[test]
fn an_internal_network_has_no_default_route_and_events_tell_the_story() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let since = chrono_now();
    engine
        .docker(&["network", "create", "--internal", "closed"])?
        .ok()?;
    let routes = engine
        .docker(&[
            "run",
            "--rm",
            "--name",
            "inside",
            "--network",
            "closed",
            "busybox",
            "ip",
            "route",
        ])?
        .ok()?
        .stdout;
    assert!(!routes.contains("default"), "{routes}");
    assert!(routes.contains("dev eth0"), "{routes}");
    engine.docker(&["network", "rm", "closed"])?.ok()?;
    let events = engine
        .docker(&[
            "events",
            "--since",
            &since,
            "--until",
            &chrono_now(),
            "--filter",
            "type=network",
            "--format",
            "{{.Action}} {{.Actor.Attributes.name}}",
        ])?
        .ok()?
        .stdout;
    assert_eq!(
        events,
        "create closed\nconnect closed\ndisconnect closed\ndestroy closed\n"
    );
    Ok(())
}

fn chrono_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

#[test]
fn containers_on_different_networks_are_isolated_as_dockerd() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine.docker(&["network", "create", "left"])?.ok()?;
    engine.docker(&["network", "create", "right"])?.ok()?;
    for (name, net) in [("l1", "left"), ("l2", "left"), ("r1", "right")] {
        engine
            .docker(&[
                "run",
                "-d",
                "--name",
                name,
                "--network",
                net,
                "busybox",
                "sleep",
                "100",
            ])?
            .ok()?;
    }
    let l2 = engine.inspect("l2", "{{.NetworkSettings.Networks.left.IPAddress}}")?;
    let r1 = engine.inspect("r1", "{{.NetworkSettings.Networks.right.IPAddress}}")?;
    engine
        .docker(&["exec", "l1", "ping", "-c", "1", "-W", "3", &l2])?
        .ok()?;
    let across = engine.docker(&["exec", "l1", "ping", "-c", "1", "-W", "2", &r1])?;
    assert_ne!(across.code, 0, "{across:?}");
    // The bridge's own address stays reachable (published ports, host services).
    let gateway = engine.inspect("r1", "{{.NetworkSettings.Networks.right.Gateway}}")?;
    engine
        .docker(&["exec", "l1", "ping", "-c", "1", "-W", "3", &gateway])?
        .ok()?;
    Ok(())
}

#[test]
fn a_network_without_ipv4_is_refused_by_name() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let refused = engine.docker(&["network", "create", "--ipv4=false", "v6only"])?;
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused.stderr.contains(
            "rmachine-engine does not support a network without IPv4 (--ipv4=false) for networks yet"
        ),
        "{}",
        refused.stderr
    );
    let names = engine
        .docker(&["network", "ls", "--format", "{{.Name}}"])?
        .ok()?;
    assert!(
        !names.stdout.lines().any(|n| n == "v6only"),
        "{}",
        names.stdout
    );
    Ok(())
}

#[test]
fn a_running_container_joins_and_leaves_a_second_network() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    for (name, subnet) in [("front", "10.232.5.0/24"), ("back", "10.232.6.0/24")] {
        engine
            .docker(&["network", "create", "--subnet", subnet, name])?
            .ok()?;
    }
    let links_before = engine.netns.command("ip").args(["-o", "link"]).output()?;
    let links_before = String::from_utf8_lossy(&links_before.stdout)
        .lines()
        .count();
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "web",
            "--hostname",
            "webhost",
            "--network",
            "front",
            "busybox",
            "sh",
            "-c",
            "mkdir -p /www && echo served by web > /www/index.html && exec httpd -f -p 80 -h /www",
        ])?
        .ok()?;
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "client",
            "--network",
            "back",
            "busybox",
            "sleep",
            "100",
        ])?
        .ok()?;
    let fetch = |name: &str| -> Result<rmachine_tests_engine::Run> {
        engine.docker(&[
            "exec",
            "client",
            "sh",
            "-c",
            &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {name} 80"),
        ])
    };
    assert!(!fetch("api")?.stdout.contains("served by web"));

    // Connected while it runs: a second interface, its --ip and --alias, its name in the
    // other containers' DNS, a line in its /etc/hosts, and inspect shows both networks.
    engine
        .docker(&[
            "network",
            "connect",
            "--alias",
            "api",
            "--ip",
            "10.232.6.40",
            "back",
            "web",
        ])?
        .ok()?;
    let addr = engine
        .docker(&["exec", "web", "ip", "-4", "-o", "addr", "show", "eth1"])?
        .ok()?
        .stdout;
    assert!(addr.contains("inet 10.232.6.40/24"), "{addr}");
    let routes = engine.docker(&["exec", "web", "ip", "route"])?.ok()?.stdout;
    assert!(
        routes.contains("default via 10.232.5.1 dev eth0") && !routes.contains("dev eth1 metric"),
        "{routes}"
    );
    assert_eq!(
        engine.inspect(
            "web",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}"
        )?,
        "back=10.232.6.40 front=10.232.5.2"
    );
    assert_eq!(
        engine.inspect("web", "{{json .NetworkSettings.Networks.back.IPAMConfig}}")?,
        r#"{"IPv4Address":"10.232.6.40"}"#
    );
    assert_eq!(
        engine.inspect("web", "{{json .NetworkSettings.Networks.back.Aliases}}")?,
        r#"["api"]"#
    );
    let short = &engine.inspect("web", "{{.Id}}")?[..12];
    assert_eq!(
        engine.inspect("web", "{{json .NetworkSettings.Networks.back.DNSNames}}")?,
        format!(r#"["web","api","{short}","webhost"]"#)
    );
    let hosts = engine
        .docker(&["exec", "web", "cat", "/etc/hosts"])?
        .ok()?
        .stdout;
    assert!(
        hosts.contains("10.232.5.2\twebhost\n") && hosts.contains("10.232.6.40\twebhost\n"),
        "{hosts}"
    );
    for name in ["api", "web", "web.back"] {
        let got = fetch(name)?;
        assert!(got.stdout.contains("served by web"), "{name}: {got:?}");
    }
    let members = engine
        .docker(&[
            "network",
            "inspect",
            "back",
            "--format",
            "{{range .Containers}}{{.Name}}={{.IPv4Address}} {{end}}",
        ])?
        .ok()?
        .stdout;
    assert!(members.contains("web=10.232.6.40/24"), "{members}");
    let again = engine.docker(&["network", "connect", "back", "web"])?;
    assert!(
        again
            .stderr
            .contains("endpoint with name web already exists in network back"),
        "{again:?}"
    );
    let host = engine.docker(&["network", "connect", "host", "web"])?;
    assert!(
        host.stderr.contains(
            "container cannot be disconnected from host network or connected to host network"
        ),
        "{host:?}"
    );

    // Disconnected while it runs: the interface, the name, the hosts line and the entry go.
    engine
        .docker(&["network", "disconnect", "back", "web"])?
        .ok()?;
    let gone = engine.docker(&["exec", "web", "ip", "link", "show", "eth1"])?;
    assert_ne!(gone.code, 0, "{gone:?}");
    let hosts = engine
        .docker(&["exec", "web", "cat", "/etc/hosts"])?
        .ok()?
        .stdout;
    assert!(!hosts.contains("10.232.6.40"), "{hosts}");
    assert!(!fetch("api")?.stdout.contains("served by web"));
    assert_eq!(
        engine.inspect(
            "web",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}"
        )?,
        "front"
    );
    let twice = engine.docker(&["network", "disconnect", "-f", "back", "web"])?;
    assert!(
        twice.stderr.contains("is not connected to network back"),
        "{twice:?}"
    );

    // Connected while stopped: it joins at its next start, first network first.
    engine.docker(&["stop", "-t", "1", "web"])?.ok()?;
    engine
        .docker(&["network", "connect", "back", "web"])?
        .ok()?;
    engine.docker(&["start", "web"])?.ok()?;
    let addr = engine
        .docker(&["exec", "web", "ip", "-4", "-o", "addr", "show", "eth1"])?
        .ok()?
        .stdout;
    assert!(addr.contains("inet 10.232.6."), "{addr}");
    assert!(fetch("web")?.stdout.contains("served by web"));

    // Created on two networks (API 1.44): the first gets eth0, the second eth1 and its alias.
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "both",
            "--network",
            "front",
            "--network",
            "name=back,alias=b2",
            "busybox",
            "sleep",
            "100",
        ])?
        .ok()?;
    assert_eq!(
        engine.inspect(
            "both",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}:{{$v.Aliases}} {{end}}"
        )?,
        "back:[b2] front:[]"
    );
    let addr = engine
        .docker(&["exec", "both", "ip", "-4", "-o", "addr", "show", "eth1"])?
        .ok()?
        .stdout;
    assert!(addr.contains("inet 10.232.6."), "{addr}");
    let found = engine.docker(&["exec", "client", "nslookup", "b2"])?.stdout;
    assert!(found.contains("Address: 10.232.6."), "{found}");

    // The network with the default route and the published ports leaves: the next one takes
    // both, as dockerd moves external connectivity to the next gateway endpoint.
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "pub",
            "--network",
            "front",
            "-p",
            "18095:80",
            "busybox",
            "sh",
            "-c",
            "mkdir -p /www && echo served by pub > /www/index.html && exec httpd -f -p 80 -h /www",
        ])?
        .ok()?;
    engine
        .docker(&["network", "connect", "back", "pub"])?
        .ok()?;
    engine
        .docker(&["network", "disconnect", "front", "pub"])?
        .ok()?;
    let routes = engine.docker(&["exec", "pub", "ip", "route"])?.ok()?.stdout;
    assert!(
        routes.contains("default via 10.232.6.1 dev eth1"),
        "{routes}"
    );
    let got = engine.netns.run(|| -> Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("127.0.0.1:18095")?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut got = String::new();
        s.read_to_string(&mut got)?;
        Ok(got)
    })??;
    assert!(got.contains("served by pub"), "{got}");
    assert_eq!(
        engine
            .docker(&["port", "pub", "80/tcp"])?
            .ok()?
            .stdout
            .lines()
            .next(),
        Some("0.0.0.0:18095")
    );

    // A container started with no network (disconnected while stopped) gets its first one
    // while it runs: eth0 in its own namespace, the default route, its name.
    engine
        .docker(&[
            "create",
            "--name",
            "lone",
            "--network",
            "front",
            "busybox",
            "sleep",
            "100",
        ])?
        .ok()?;
    engine
        .docker(&["network", "disconnect", "front", "lone"])?
        .ok()?;
    engine.docker(&["start", "lone"])?.ok()?;
    let none = engine.docker(&["exec", "lone", "ip", "link", "show", "eth0"])?;
    assert_ne!(none.code, 0, "{none:?}");
    engine
        .docker(&["network", "connect", "back", "lone"])?
        .ok()?;
    let routes = engine
        .docker(&["exec", "lone", "ip", "route"])?
        .ok()?
        .stdout;
    assert!(
        routes.contains("default via 10.232.6.1 dev eth0"),
        "{routes}"
    );
    let found = engine
        .docker(&["exec", "client", "nslookup", "lone"])?
        .stdout;
    assert!(found.contains("Address: 10.232.6."), "{found}");

    // Nothing is left behind.
    engine
        .docker(&["rm", "-f", "web", "client", "both", "pub", "lone"])?
        .ok()?;
    let links_after = engine.netns.command("ip").args(["-o", "link"]).output()?;
    let links_after = String::from_utf8_lossy(&links_after.stdout).to_string();
    assert!(!links_after.contains("veth"), "{links_after}");
    // The two bridges made for the networks stay until the networks are removed.
    assert_eq!(
        links_after.lines().count(),
        links_before + 2,
        "{links_after}"
    );
    Ok(())
}

#[test]
fn mac_addresses_are_set_and_shown_as_dockerd() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&["network", "create", "--subnet", "10.232.7.0/24", "pinned"])?
        .ok()?;
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "macd",
            "--network",
            "pinned",
            "--ip",
            "10.232.7.9",
            "--mac-address",
            "02:42:aa:bb:cc:dd",
            "busybox",
            "sleep",
            "100",
        ])?
        .ok()?;
    let link = engine
        .docker(&["exec", "macd", "ip", "link", "show", "eth0"])?
        .ok()?
        .stdout;
    assert!(link.contains("link/ether 02:42:aa:bb:cc:dd"), "{link}");
    let shown = "{{.NetworkSettings.Networks.pinned.MacAddress}} {{json .NetworkSettings.Networks.pinned.IPAMConfig}}";
    assert_eq!(
        engine.inspect("macd", shown)?,
        r#"02:42:aa:bb:cc:dd {"IPv4Address":"10.232.7.9"}"#
    );
    // Stopped, inspect still shows what was asked for.
    engine.docker(&["stop", "-t", "1", "macd"])?.ok()?;
    assert_eq!(
        engine.inspect("macd", shown)?,
        r#"02:42:aa:bb:cc:dd {"IPv4Address":"10.232.7.9"}"#
    );
    // The default bridge too.
    let out = engine
        .docker(&[
            "run",
            "--rm",
            "--mac-address",
            "02:11:22:33:44:55",
            "busybox",
            "ip",
            "link",
            "show",
            "eth0",
        ])?
        .ok()?
        .stdout;
    assert!(out.contains("link/ether 02:11:22:33:44:55"), "{out}");
    let host = engine.docker(&[
        "run",
        "--rm",
        "--network",
        "host",
        "--mac-address",
        "02:11:22:33:44:55",
        "busybox",
        "true",
    ])?;
    assert!(
        host.stderr
            .contains("conflicting options: mac-address and the network mode"),
        "{host:?}"
    );
    Ok(())
}
