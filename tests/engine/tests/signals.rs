//! Which signals cancel a restart policy (daemon/kill.go), and how a paused container is
//! resumed for a signal; with the `ps` filters dockerd checks on the way.

use std::time::Duration;

use rmachine_tests_engine::Engine;

/// A container whose PID 1 exits 3 on SIGHUP.
fn run_hup_exits(engine: &Engine, name: &str, extra: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["run", "-d", "--name", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "busybox",
        "sh",
        "-c",
        "trap 'exit 3' HUP; sleep 1000 & wait",
    ]);
    engine.docker(&args)?.ok()?;
    Ok(())
}

#[test]
fn kill_with_a_signal_cancels_restarting_only_as_dockerd_does() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    // A stop signal other than the one sent: `always` restarts after the exit.
    run_hup_exits(
        &engine,
        "other-stop-signal",
        &["--restart", "always", "--stop-signal", "USR1"],
    )?;
    // No stop signal: any signal from the user cancels the restart (ExitOnNext).
    run_hup_exits(&engine, "no-stop-signal", &["--restart", "always"])?;
    // The stop signal itself cancels it too.
    run_hup_exits(
        &engine,
        "hup-stop-signal",
        &["--restart", "always", "--stop-signal", "HUP"],
    )?;
    // `unless-stopped` counts any kill as a manual stop, whatever the stop signal.
    run_hup_exits(
        &engine,
        "unless",
        &["--restart", "unless-stopped", "--stop-signal", "USR1"],
    )?;
    for name in [
        "other-stop-signal",
        "no-stop-signal",
        "hup-stop-signal",
        "unless",
    ] {
        // Let the shell install its trap before it is signalled.
        engine.wait_for(
            &["top", name, "-o", "pid,comm"],
            Duration::from_secs(5),
            |r| r.stdout.contains("sleep"),
        )?;
        engine.docker(&["kill", "-s", "HUP", name])?.ok()?;
    }
    engine.wait_for(
        &[
            "inspect",
            "--format",
            "{{.RestartCount}} {{.State.Status}}",
            "other-stop-signal",
        ],
        Duration::from_secs(10),
        |r| r.stdout.trim() == "1 running",
    )?;
    for name in ["no-stop-signal", "hup-stop-signal", "unless"] {
        engine.wait_for(
            &["inspect", "--format", "{{.State.ExitCode}}", name],
            Duration::from_secs(10),
            |r| r.stdout.trim() == "3",
        )?;
    }
    std::thread::sleep(Duration::from_millis(800));
    for name in ["no-stop-signal", "hup-stop-signal", "unless"] {
        assert_eq!(
            engine.inspect(name, "{{.RestartCount}} {{.State.Status}}")?,
            "0 exited",
            "{name}"
        );
    }
    // A start by the user arms the policy again: a crash of the process is restarted.
    engine.docker(&["start", "no-stop-signal"])?.ok()?;
    let pid = engine.inspect("no-stop-signal", "{{.State.Pid}}")?;
    std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()?;
    engine.wait_for(
        &[
            "inspect",
            "--format",
            "{{.RestartCount}} {{.State.Status}}",
            "no-stop-signal",
        ],
        Duration::from_secs(10),
        |r| r.stdout.trim() == "1 running",
    )?;
    Ok(())
}

#[test]
fn ps_filters_are_checked_and_a_paused_container_is_resumed_only_as_dockerd_does(
) -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    for (filter, message) in [
        ("colour=red", "invalid filter 'colour'".to_string()),
        (
            "status=up",
            "invalid filter 'status=up': invalid value for state (up): must be one of created, running, paused, restarting, removing, exited, dead".to_string(),
        ),
        (
            "exited=x",
            r#"invalid filter 'exited=x': strconv.Atoi: parsing "x": invalid syntax"#.to_string(),
        ),
    ] {
        let ps = engine.docker(&["ps", "--filter", filter])?;
        assert_eq!(ps.code, 1, "{filter}");
        assert_eq!(
            ps.stderr.trim_end(),
            format!("Error response from daemon: {message}")
        );
    }

    run_hup_exits(&engine, "held", &["--stop-signal", "USR1"])?;
    engine.wait_for(
        &["top", "held", "-o", "pid,comm"],
        Duration::from_secs(5),
        |r| r.stdout.contains("sleep"),
    )?;
    engine.docker(&["pause", "held"])?.ok()?;
    // Not its stop signal: delivered, but the container stays frozen until unpaused.
    engine.docker(&["kill", "-s", "HUP", "held"])?.ok()?;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(engine.inspect("held", "{{.State.Status}}")?, "paused");
    engine.docker(&["unpause", "held"])?.ok()?;
    engine.wait_for(
        &[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            "held",
        ],
        Duration::from_secs(10),
        |r| r.stdout.trim() == "exited 3",
    )?;
    // SIGKILL resumes it so that it dies.
    engine
        .docker(&["run", "-d", "--name", "frozen", "busybox", "sleep", "1000"])?
        .ok()?;
    engine.docker(&["pause", "frozen"])?.ok()?;
    engine.docker(&["kill", "frozen"])?.ok()?;
    assert_eq!(
        engine.inspect("frozen", "{{.State.Status}} {{.State.ExitCode}}")?,
        "exited 137"
    );
    Ok(())
}
