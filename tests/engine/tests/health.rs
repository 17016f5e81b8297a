//! Health checks through the real docker CLI: `--health-*` flags and the image's HEALTHCHECK,
//! the status moving starting → healthy → unhealthy with `health_status` events, `docker ps`
//! statuses and `--filter health=`, `State.Health` in inspect, timeouts, and the checker
//! following stop, pause, start and an engine restart.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rmachine_tests_engine::Engine;
use serde_json::{json, Value};

const HEALTH: &str = "{{.State.Health.Status}}";

fn wait_health(engine: &Engine, name: &str, want: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = engine.inspect(name, HEALTH)?;
        if status == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name}: health stayed {status:?}, wanted {want:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn health(engine: &Engine, name: &str) -> Result<Value> {
    Ok(serde_json::from_str(
        &engine.inspect(name, "{{json .State.Health}}")?,
    )?)
}

fn ps_status(engine: &Engine, name: &str) -> Result<String> {
    Ok(engine
        .docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("name=^{name}$"),
            "--format",
            "{{.Status}}",
        ])?
        .ok()?
        .stdout
        .trim()
        .to_string())
}

/// Removes every container, so that the engine's shutdown does not wait out their stop
/// timeouts (`sleep` ignores SIGTERM as PID 1).
fn remove_all(engine: &Engine) -> Result<()> {
    let ids = engine.docker(&["ps", "-aq"])?.ok()?.stdout;
    let mut args = vec!["rm", "-f"];
    args.extend(ids.lines());
    if args.len() > 2 {
        engine.docker(&args)?.ok()?;
    }
    Ok(())
}

fn ps_names(engine: &Engine, filter: &str) -> Result<Vec<String>> {
    let out = engine
        .docker(&["ps", "-a", "--filter", filter, "--format", "{{.Names}}"])?
        .ok()?
        .stdout;
    let mut names: Vec<String> = out.lines().map(str::to_string).collect();
    names.sort();
    Ok(names)
}

#[test]
fn status_moves_starting_healthy_unhealthy_with_events_ps_and_filters() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let since = unix_now();
    // Failures in the start period do not count while starting: it stays `starting` until
    // the file exists, however many probes fail.
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "hc",
            "--health-cmd",
            "cat /tmp/ok",
            "--health-interval",
            "300ms",
            "--health-start-period",
            "60s",
            "--health-start-interval",
            "100ms",
            "--health-retries",
            "2",
            "busybox",
            "sleep",
            "1000",
        ])?
        .ok()?;
    engine
        .docker(&["run", "-d", "--name", "plain", "busybox", "sleep", "1000"])?
        .ok()?;
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(engine.inspect("hc", HEALTH)?, "starting");
    assert!(
        ps_status(&engine, "hc")?.ends_with(" (health: starting)"),
        "{}",
        ps_status(&engine, "hc")?
    );
    let h = health(&engine, "hc")?;
    assert_eq!(h["FailingStreak"], 0, "{h}");
    let log = h["Log"].as_array().cloned().unwrap_or_default();
    assert!(!log.is_empty(), "probes ran: {h}");
    assert_eq!(log[0]["ExitCode"], 1, "{h}");
    assert!(
        log[0]["Output"]
            .as_str()
            .is_some_and(|o| o.contains("/tmp/ok")),
        "cat's complaint is the output: {h}"
    );
    assert_eq!(ps_names(&engine, "health=starting")?, ["hc"]);
    assert_eq!(ps_names(&engine, "health=none")?, ["plain"]);

    engine
        .docker(&["exec", "hc", "sh", "-c", "echo fine > /tmp/ok"])?
        .ok()?;
    wait_health(&engine, "hc", "healthy")?;
    assert!(ps_status(&engine, "hc")?.ends_with(" (healthy)"));
    assert_eq!(ps_names(&engine, "health=healthy")?, ["hc"]);
    let h = health(&engine, "hc")?;
    let last = h["Log"].as_array().and_then(|l| l.last()).cloned();
    let last = last.unwrap_or_default();
    assert_eq!(
        (last["ExitCode"].clone(), last["Output"].clone()),
        (json!(0), json!("fine\n"))
    );

    // Once healthy, failures count: two in a row make it unhealthy.
    engine.docker(&["exec", "hc", "rm", "/tmp/ok"])?.ok()?;
    wait_health(&engine, "hc", "unhealthy")?;
    assert!(ps_status(&engine, "hc")?.ends_with(" (unhealthy)"));
    assert_eq!(ps_names(&engine, "health=unhealthy")?, ["hc"]);
    let h = health(&engine, "hc")?;
    assert_eq!(h["FailingStreak"], 2, "{h}");
    assert!(h["Log"].as_array().is_some_and(|l| l.len() == 5), "{h}");

    let until = unix_now();
    let events = engine
        .docker(&[
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--filter",
            "event=health_status",
            "--format",
            "{{.Actor.Attributes.name}} {{.Action}}",
        ])?
        .ok()?;
    assert_eq!(
        events.stdout,
        "hc health_status: healthy\nhc health_status: unhealthy\n"
    );

    let bad = engine.docker(&["ps", "--filter", "health=fine"])?;
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr
            .contains("Unrecognised filter value for health: fine"),
        "{}",
        bad.stderr
    );
    remove_all(&engine)
}

fn unix_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

#[test]
fn the_images_healthcheck_is_merged_under_the_flags_and_can_be_disabled() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let image = rmachine_fixtures::busybox_with_healthcheck(json!({
        "Test": ["CMD", "sh", "-c", "echo probe-out"],
        "Interval": 100_000_000,
        "Retries": 4,
    }))?;
    let tar = engine.dir().join("hc-image.tar");
    rmachine_fixtures::write_archive(
        &tar,
        &image,
        Some("hc-image:latest"),
        rmachine_fixtures::ArchiveFormat::DockerSave,
    )?;
    engine
        .docker(&["load", "-i", &tar.to_string_lossy()])?
        .ok()?;

    engine
        .docker(&["run", "-d", "--name", "img", "hc-image", "sleep", "1000"])?
        .ok()?;
    wait_health(&engine, "img", "healthy")?;
    let config: Value =
        serde_json::from_str(&engine.inspect("img", "{{json .Config.Healthcheck}}")?)?;
    assert_eq!(
        config,
        json!({"Test": ["CMD", "sh", "-c", "echo probe-out"], "Interval": 100_000_000,
               "Retries": 4})
    );
    let h = health(&engine, "img")?;
    assert_eq!(h["Log"][0]["Output"], "probe-out\n", "{h}");

    // Flags override the image's fields one by one; the rest is the image's.
    engine
        .docker(&[
            "create",
            "--name",
            "flags",
            "--health-interval",
            "2s",
            "--health-timeout",
            "1500ms",
            "hc-image",
        ])?
        .ok()?;
    let config: Value =
        serde_json::from_str(&engine.inspect("flags", "{{json .Config.Healthcheck}}")?)?;
    assert_eq!(
        config,
        json!({"Test": ["CMD", "sh", "-c", "echo probe-out"], "Interval": 2_000_000_000,
               "Timeout": 1_500_000_000, "Retries": 4})
    );
    // Not started yet: no health state.
    assert_eq!(engine.inspect("flags", "{{json .State.Health}}")?, "null");

    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "off",
            "--no-healthcheck",
            "hc-image",
            "sleep",
            "1000",
        ])?
        .ok()?;
    assert_eq!(
        engine.inspect("off", "{{json .Config.Healthcheck.Test}}")?,
        r#"["NONE"]"#
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(engine.inspect("off", "{{json .State.Health}}")?, "null");
    let status = ps_status(&engine, "off")?;
    assert!(
        status.starts_with("Up ") && !status.contains('('),
        "{status}"
    );
    assert_eq!(ps_names(&engine, "health=none")?, ["flags", "off"]);

    // A CMD probe whose program is missing fails with the runtime's message, as dockerd
    // records a probe that could not start (ExitCode -1).
    let missing = rmachine_fixtures::busybox_with_healthcheck(json!({
        "Test": ["CMD", "no-such-probe"],
        "Interval": 100_000_000,
        "Retries": 1,
    }))?;
    let tar = engine.dir().join("hc-missing.tar");
    rmachine_fixtures::write_archive(
        &tar,
        &missing,
        Some("hc-missing:latest"),
        rmachine_fixtures::ArchiveFormat::DockerSave,
    )?;
    engine
        .docker(&["load", "-i", &tar.to_string_lossy()])?
        .ok()?;
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "nocmd",
            "hc-missing",
            "sleep",
            "1000",
        ])?
        .ok()?;
    wait_health(&engine, "nocmd", "unhealthy")?;
    let h = health(&engine, "nocmd")?;
    assert_eq!(h["Log"][0]["ExitCode"], -1, "{h}");
    let output = h["Log"][0]["Output"].as_str().unwrap_or_default();
    assert!(
        output.starts_with("OCI runtime exec failed: ")
            && output.contains("\"no-such-probe\": executable file not found in $PATH")
            && !output.ends_with('\n'),
        "{h}"
    );

    let refused = engine.docker(&["run", "-d", "--health-interval", "500us", "busybox", "true"])?;
    assert_ne!(refused.code, 0);
    assert!(
        refused
            .stderr
            .contains("Interval in Healthcheck cannot be less than 1ms"),
        "{}",
        refused.stderr
    );
    remove_all(&engine)
}

#[test]
fn timeouts_exit_codes_and_the_checker_following_the_container() -> Result<()> {
    let Some(mut engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "slow",
            "--health-cmd",
            "echo begun; exec sleep 30",
            "--health-interval",
            "100ms",
            "--health-timeout",
            "300ms",
            "--health-retries",
            "1",
            "busybox",
            "sleep",
            "1000",
        ])?
        .ok()?;
    wait_health(&engine, "slow", "unhealthy")?;
    let h = health(&engine, "slow")?;
    assert_eq!(h["Log"][0]["ExitCode"], -1, "{h}");
    assert_eq!(
        h["Log"][0]["Output"], "Health check exceeded timeout (300ms): begun\n",
        "{h}"
    );
    // Timed-out probes are killed: after several of them, at most the current one runs.
    std::thread::sleep(Duration::from_millis(1200));
    let ps = engine.docker(&["exec", "slow", "ps", "-o", "args"])?.ok()?;
    let probes = ps.stdout.lines().filter(|l| l.contains("sleep 30")).count();
    assert!(probes <= 1, "{}", ps.stdout);

    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "box",
            "--health-cmd",
            "exit 3",
            "--health-interval",
            "100ms",
            "--health-retries",
            "2",
            "busybox",
            "sleep",
            "1000",
        ])?
        .ok()?;
    wait_health(&engine, "box", "unhealthy")?;
    assert_eq!(health(&engine, "box")?["Log"][0]["ExitCode"], 3);

    // Make it healthy, then stop: the checker stops and the status is `unhealthy`.
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "up",
            "--health-cmd",
            "true",
            "--health-interval",
            "100ms",
            "busybox",
            "sleep",
            "1000",
        ])?
        .ok()?;
    wait_health(&engine, "up", "healthy")?;
    engine.docker(&["pause", "up"])?.ok()?;
    assert_eq!(engine.inspect("up", HEALTH)?, "unhealthy");
    assert!(ps_status(&engine, "up")?.ends_with(" (Paused)"));
    engine.docker(&["unpause", "up"])?.ok()?;
    wait_health(&engine, "up", "healthy")?;

    engine.docker(&["stop", "-t", "1", "up"])?.ok()?;
    assert_eq!(engine.inspect("up", HEALTH)?, "unhealthy");
    let probes_at_stop = health(&engine, "up")?["Log"].clone();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(health(&engine, "up")?["Log"], probes_at_stop);

    // The status and log are in the record: an engine restart shows them.
    engine.restart()?;
    assert_eq!(engine.inspect("up", HEALTH)?, "unhealthy");
    assert_eq!(health(&engine, "up")?["Log"], probes_at_stop);

    // Started again, the checks restart from `starting`, keeping the log.
    engine.docker(&["start", "up"])?.ok()?;
    wait_health(&engine, "up", "healthy")?;
    remove_all(&engine)
}
