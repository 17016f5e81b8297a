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
    engine.docker(&["network", "create", "spare"])?.ok()?;
    let pruned = engine.docker(&["network", "prune", "-f"])?.ok()?.stdout;
    assert!(pruned.contains("spare"), "{pruned}");
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

#[test]
fn containers_on_a_user_network_reach_each_other_by_name() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine.docker(&["network", "create", "app"])?.ok()?;
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "app",
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
            "app",
            "--network-alias",
            "front",
            "--network-alias",
            "ui",
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
    // Each container's /etc/hosts names the other, whichever started first.
    let hosts = engine
        .docker(&["exec", "client", "cat", "/etc/hosts"])?
        .ok()?
        .stdout;
    assert!(hosts.contains(&format!("{web_ip}\tweb\n")), "{hosts}");
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
    let web_hosts = engine
        .docker(&["exec", "web", "cat", "/etc/hosts"])?
        .ok()?
        .stdout;
    assert!(web_hosts.contains("\tclient front ui\n"), "{web_hosts}");
    engine
        .docker(&["exec", "web", "ping", "-c", "1", "-W", "5", "front"])?
        .ok()?;
    // A container on the default bridge does not see them.
    let outsider = engine
        .docker(&["run", "--rm", "busybox", "cat", "/etc/hosts"])?
        .ok()?
        .stdout;
    assert!(!outsider.contains("\tweb\n"), "{outsider}");
    // A stopped container's name goes away.
    engine.docker(&["stop", "-t", "1", "web"])?.ok()?;
    let hosts = engine
        .docker(&["exec", "client", "cat", "/etc/hosts"])?
        .ok()?
        .stdout;
    assert!(!hosts.contains("\tweb\n"), "{hosts}");
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
