//! `docker network connect|disconnect` against the container's own life: racing stop and
//! kill, its hostname in `/etc/hosts`, `disconnect -f` of a removed network, a stopped
//! container connected again, and a corrupt record of its networks.

use std::time::Duration;

use anyhow::Result;
use rmachine_tests_engine::Engine;

fn veths(engine: &Engine) -> Result<Vec<String>> {
    let out = engine.netns.command("ip").args(["-o", "link"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .filter(|n| n.starts_with("veth"))
        .collect())
}

fn now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

#[test]
fn connects_racing_stop_and_kill_leave_no_endpoint_behind() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    for (name, subnet) in [("home", "10.234.1.0/24"), ("side", "10.234.2.0/24")] {
        engine
            .docker(&["network", "create", "--subnet", subnet, name])?
            .ok()?;
    }
    // Keeps the bridge of `side` up and asks its DNS.
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "asker",
            "--network",
            "side",
            "busybox",
            "sleep",
            "300",
        ])?
        .ok()?;
    let baseline = veths(&engine)?;
    for round in 0..6 {
        let name = format!("racer{round}");
        engine
            .docker(&[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                "home",
                "busybox",
                "sleep",
                "300",
            ])?
            .ok()?;
        let ender = if round % 2 == 0 { "kill" } else { "stop" };
        std::thread::scope(|s| -> Result<()> {
            let connect = s.spawn(|| {
                engine.docker(&[
                    "network",
                    "connect",
                    "--ip",
                    "10.234.2.50",
                    "--alias",
                    "racing",
                    "side",
                    &name,
                ])
            });
            let other = s.spawn(|| engine.docker(&["network", "disconnect", "home", &name]));
            std::thread::sleep(Duration::from_millis(5 * round));
            let end = if ender == "kill" {
                engine.docker(&["kill", &name])
            } else {
                engine.docker(&["stop", "-t", "0", &name])
            };
            // Either order is fine: what is left after them is checked below.
            let _ = connect.join();
            let _ = other.join();
            end?.ok()?;
            Ok(())
        })?;
        engine.wait_for(
            &["inspect", "-f", "{{.State.Running}}", &name],
            Duration::from_secs(10),
            |r| r.stdout.trim() == "false",
        )?;
        assert_eq!(veths(&engine)?, baseline, "round {round}");
        for gone in ["racing", name.as_str()] {
            let asked = engine.docker(&["exec", "asker", "nslookup", gone])?;
            assert!(
                asked.code != 0 || !asked.stdout.contains("10.234.2.50"),
                "round {round}: {gone} still resolves: {asked:?}"
            );
        }
        // The address is free again.
        engine
            .docker(&[
                "run",
                "--rm",
                "--network",
                "side",
                "--ip",
                "10.234.2.50",
                "busybox",
                "true",
            ])?
            .ok()?;
        engine.docker(&["rm", "-f", &name])?.ok()?;
    }
    Ok(())
}

#[test]
fn hosts_lines_name_the_short_id_without_a_hostname() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    for (name, subnet) in [("one", "10.234.3.0/24"), ("two", "10.234.4.0/24")] {
        engine
            .docker(&["network", "create", "--subnet", subnet, name])?
            .ok()?;
    }
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "plain",
            "--network",
            "one",
            "busybox",
            "sleep",
            "300",
        ])?
        .ok()?;
    let short = engine.inspect("plain", "{{.Id}}")?[..12].to_string();
    engine
        .docker(&["network", "connect", "--ip", "10.234.4.9", "two", "plain"])?
        .ok()?;
    let hosts = engine
        .docker(&["exec", "plain", "cat", "/etc/hosts"])?
        .ok()?
        .stdout;
    assert!(
        hosts.contains(&format!("10.234.3.2\t{short}\n"))
            && hosts.contains(&format!("10.234.4.9\t{short}\n")),
        "{hosts}"
    );
    assert!(!hosts.contains("\t\n"), "{hosts}");
    engine
        .docker(&["network", "disconnect", "one", "plain"])?
        .ok()?;
    let hosts = engine
        .docker(&["exec", "plain", "cat", "/etc/hosts"])?
        .ok()?
        .stdout;
    assert!(!hosts.contains("10.234.3.2"), "{hosts}");
    assert!(hosts.contains(&format!("10.234.4.9\t{short}\n")), "{hosts}");
    Ok(())
}

#[test]
fn disconnect_force_forgets_a_removed_network_of_a_stopped_container() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    for name in ["alpha", "beta"] {
        engine.docker(&["network", "create", name])?.ok()?;
    }
    engine
        .docker(&[
            "create",
            "--name",
            "keeper",
            "--network",
            "alpha",
            "busybox",
            "sleep",
            "300",
        ])?
        .ok()?;
    engine
        .docker(&["network", "connect", "beta", "keeper"])?
        .ok()?;
    // Connecting a stopped container again only replaces its settings, as dockerd.
    engine
        .docker(&["network", "connect", "beta", "keeper"])?
        .ok()?;
    engine.docker(&["network", "rm", "beta"])?.ok()?;
    let failed = engine.docker(&["start", "keeper"])?;
    assert!(
        failed.code != 0 && failed.stderr.contains("network beta not found"),
        "{failed:?}"
    );
    engine
        .docker(&["network", "disconnect", "-f", "beta", "keeper"])?
        .ok()?;
    let again = engine.docker(&["network", "disconnect", "beta", "keeper"])?;
    assert!(again.code != 0, "{again:?}");
    engine.docker(&["start", "keeper"])?.ok()?;
    assert_eq!(
        engine.inspect(
            "keeper",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}"
        )?,
        "alpha"
    );
    // A stopped container's disconnect is an event too.
    engine.docker(&["stop", "-t", "0", "keeper"])?.ok()?;
    let since_stop = now();
    engine
        .docker(&["network", "disconnect", "alpha", "keeper"])?
        .ok()?;
    let not_on = engine.docker(&["network", "disconnect", "alpha", "keeper"])?;
    let id = engine.inspect("keeper", "{{.Id}}")?;
    assert!(
        not_on.stderr.contains(&format!(
            "container {id} is not connected to the network alpha"
        )),
        "{not_on:?}"
    );
    let events = engine
        .docker(&[
            "events",
            "--since",
            &since_stop,
            "--until",
            &now(),
            "--filter",
            "type=network",
            "--format",
            "{{.Action}} {{.Actor.Attributes.name}}",
        ])?
        .ok()?
        .stdout;
    assert_eq!(events, "disconnect alpha\n");
    Ok(())
}

#[test]
fn a_corrupt_record_of_later_networks_fails_the_start_naming_it() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine.docker(&["network", "create", "gamma"])?.ok()?;
    engine
        .docker(&["create", "--name", "broken", "busybox", "sleep", "300"])?
        .ok()?;
    engine
        .docker(&["network", "connect", "gamma", "broken"])?
        .ok()?;
    let id = engine.inspect("broken", "{{.Id}}")?;
    let file = engine
        .data_root()
        .join("containers")
        .join(&id)
        .join("network-extra.json");
    assert!(file.exists(), "{}", file.display());
    std::fs::write(&file, b"{not json")?;
    let failed = engine.docker(&["start", "broken"])?;
    assert!(
        failed.code != 0 && failed.stderr.contains("network-extra.json is corrupt"),
        "{failed:?}"
    );
    Ok(())
}

#[test]
fn ports_do_not_move_to_an_internal_network() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&["network", "create", "--subnet", "10.234.5.0/24", "outside"])?
        .ok()?;
    engine
        .docker(&[
            "network",
            "create",
            "--internal",
            "--subnet",
            "10.234.6.0/24",
            "sealed",
        ])?
        .ok()?;
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "pub",
            "--network",
            "outside",
            "-p",
            "18093:80",
            "busybox",
            "sleep",
            "300",
        ])?
        .ok()?;
    let port = engine.docker(&["port", "pub"])?.ok()?.stdout;
    assert!(port.contains("18093"), "{port}");
    engine
        .docker(&["network", "connect", "sealed", "pub"])?
        .ok()?;
    engine
        .docker(&["network", "disconnect", "outside", "pub"])?
        .ok()?;
    let port = engine.docker(&["port", "pub"])?.ok()?.stdout;
    assert!(!port.contains("18093"), "{port}");
    let addr = engine
        .docker(&["exec", "pub", "ip", "-4", "-o", "addr"])?
        .ok()?
        .stdout;
    assert!(addr.contains("10.234.6."), "{addr}");
    Ok(())
}

/// Takes the immutable flag off a directory again, whatever the test's end.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(dir: std::path::PathBuf) -> Result<Immutable> {
        let status = std::process::Command::new("chattr")
            .arg("+i")
            .arg(&dir)
            .status()?;
        anyhow::ensure!(status.success(), "chattr +i {}", dir.display());
        Ok(Immutable(dir))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_connect_that_cannot_be_saved_leaves_no_endpoint() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    for (name, subnet) in [("first", "10.234.7.0/24"), ("second", "10.234.8.0/24")] {
        engine
            .docker(&["network", "create", "--subnet", subnet, name])?
            .ok()?;
    }
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "stuck",
            "--network",
            "first",
            "busybox",
            "sleep",
            "300",
        ])?
        .ok()?;
    let baseline = veths(&engine)?;
    let id = engine.inspect("stuck", "{{.Id}}")?;
    let dir = engine.data_root().join("containers").join(&id);
    {
        // No new file can be made there: network-extra.json cannot be written.
        let _guard = Immutable::set(dir)?;
        let failed = engine.docker(&[
            "network",
            "connect",
            "--ip",
            "10.234.8.7",
            "second",
            "stuck",
        ])?;
        assert!(failed.code != 0, "{failed:?}");
    }
    assert_eq!(veths(&engine)?, baseline);
    assert_eq!(
        engine.inspect(
            "stuck",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}"
        )?,
        "first"
    );
    let hosts = engine
        .docker(&["exec", "stuck", "cat", "/etc/hosts"])?
        .ok()?
        .stdout;
    assert!(!hosts.contains("10.234.8.7"), "{hosts}");
    engine
        .docker(&[
            "run",
            "--rm",
            "--network",
            "second",
            "--ip",
            "10.234.8.7",
            "busybox",
            "true",
        ])?
        .ok()?;
    Ok(())
}
