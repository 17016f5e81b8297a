//! Restart policies, read-only roots, tmpfs mounts, signal validation and references.

use std::time::Duration;

use rmachine_tests_engine::Engine;

#[test]
fn on_failure_restarts_up_to_its_limit() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "flaky",
            "--restart",
            "on-failure:2",
            "busybox",
            "sh",
            "-c",
            "echo run; exit 3",
        ])?
        .ok()?;
    engine.wait_for(
        &[
            "inspect",
            "-f",
            "{{.RestartCount}} {{.State.Status}}",
            "flaky",
        ],
        Duration::from_secs(10),
        |r| r.stdout.trim() == "2 exited",
    )?;
    // No third restart: the count stays and the log holds three runs.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        engine.inspect("flaky", "{{.RestartCount}} {{.State.ExitCode}}")?,
        "2 3"
    );
    let logs = engine.docker(&["logs", "flaky"])?.ok()?;
    assert_eq!(logs.stdout, "run\nrun\nrun\n");
    assert_eq!(
        engine.inspect("flaky", "{{.HostConfig.RestartPolicy.Name}}")?,
        "on-failure"
    );

    // A success is not restarted by on-failure.
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "fine",
            "--restart",
            "on-failure",
            "busybox",
            "true",
        ])?
        .ok()?;
    engine.docker(&["wait", "fine"])?.ok()?;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        engine.inspect("fine", "{{.RestartCount}} {{.State.Status}}")?,
        "0 exited"
    );
    Ok(())
}

#[test]
fn always_restarts_after_exit_and_after_an_engine_crash_but_not_after_stop() -> anyhow::Result<()> {
    let Some(mut engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "forever",
            "--restart",
            "always",
            "busybox",
            "sleep",
            "1000",
        ])?
        .ok()?;
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "stopped",
            "--restart",
            "unless-stopped",
            "busybox",
            "sleep",
            "1000",
        ])?
        .ok()?;
    engine.docker(&["stop", "-t", "0", "stopped"])?.ok()?;

    // The process dies on its own: restarted.
    let pid = engine.inspect("forever", "{{.State.Pid}}")?;
    std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()?;
    engine.wait_for(
        &[
            "inspect",
            "-f",
            "{{.RestartCount}} {{.State.Running}}",
            "forever",
        ],
        Duration::from_secs(10),
        |r| r.stdout.trim() == "1 true",
    )?;

    // docker stop turns restarting off for that run.
    engine.docker(&["stop", "-t", "0", "forever"])?.ok()?;
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(engine.inspect("forever", "{{.State.Status}}")?, "exited");
    engine.docker(&["start", "forever"])?.ok()?;
    assert_eq!(engine.inspect("forever", "{{.RestartCount}}")?, "0");

    // The engine dies: `always` comes back, a user-stopped `unless-stopped` does not.
    engine.crash()?;
    engine.restart()?;
    engine.wait_for(
        &["ps", "--format", "{{.Names}}"],
        Duration::from_secs(10),
        |r| r.stdout == "forever\n",
    )?;
    assert_eq!(engine.inspect("stopped", "{{.State.Status}}")?, "exited");
    Ok(())
}

#[test]
fn invalid_policies_signals_and_references_get_dockers_messages() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let policy = engine.docker(&["create", "--restart", "sometimes", "busybox"])?;
    assert_ne!(policy.code, 0);
    assert!(
        policy.stderr.contains(
            "invalid restart policy: unknown policy 'sometimes'; use one of 'no', 'always', 'on-failure', or 'unless-stopped'"
        ),
        "{}",
        policy.stderr
    );
    let count = engine.docker(&["create", "--restart", "always:2", "busybox"])?;
    assert!(
        count.stderr.contains(
            "invalid restart policy: maximum retry count can only be used with 'on-failure'"
        ),
        "{}",
        count.stderr
    );
    let stop_signal = engine.docker(&["create", "--stop-signal", "FOO", "busybox"])?;
    assert!(
        stop_signal.stderr.contains("invalid signal: FOO"),
        "{}",
        stop_signal.stderr
    );

    engine
        .docker(&["run", "-d", "--name", "target", "busybox", "sleep", "1000"])?
        .ok()?;
    let kill = engine.docker(&["kill", "-s", "FOO", "target"])?;
    assert_ne!(kill.code, 0);
    assert!(
        kill.stderr.contains("invalid signal: FOO"),
        "{}",
        kill.stderr
    );
    // A rejected signal leaves the container running.
    assert_eq!(engine.inspect("target", "{{.State.Running}}")?, "true");
    engine.docker(&["kill", "-s", "USR1", "target"])?.ok()?;

    let missing = engine.docker(&["inspect", "nosuch"])?;
    assert!(
        missing.stderr.contains("No such container: nosuch")
            || missing.stderr.contains("No such object: nosuch"),
        "{}",
        missing.stderr
    );

    // Find two ids sharing a first hex digit and use it as an ambiguous prefix.
    let mut ids = vec![engine.inspect("target", "{{.Id}}")?];
    let prefix = loop {
        let id = engine
            .docker(&["create", "busybox"])?
            .ok()?
            .stdout
            .trim()
            .to_string();
        if let Some(other) = ids.iter().find(|i| i[..1] == id[..1]) {
            break other[..1].to_string();
        }
        ids.push(id);
    };
    let ambiguous = engine.docker(&["rm", &prefix])?;
    assert!(
        ambiguous.stderr.contains(&format!(
            "multiple IDs found with provided prefix: {prefix}"
        )),
        "{}",
        ambiguous.stderr
    );
    Ok(())
}

#[test]
fn read_only_roots_refuse_writes_and_tmpfs_mounts_are_writable() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let ro = engine.docker(&["run", "--rm", "--read-only", "busybox", "touch", "/x"])?;
    assert_ne!(ro.code, 0);
    assert!(ro.stderr.contains("Read-only file system"), "{}", ro.stderr);
    let tmpfs = engine
        .docker(&[
            "run",
            "--rm",
            "--read-only",
            "--tmpfs",
            "/run:size=64m",
            "busybox",
            "sh",
            "-c",
            "touch /run/ok && grep ' /run ' /proc/mounts",
        ])?
        .ok()?;
    assert!(
        tmpfs
            .stdout
            .starts_with("tmpfs /run tmpfs rw,nosuid,nodev,noexec"),
        "{}",
        tmpfs.stdout
    );
    assert!(tmpfs.stdout.contains("size=65536k"), "{}", tmpfs.stdout);
    Ok(())
}

#[test]
fn stop_timeout_rename_and_restart_behave_like_docker() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "old",
            "--stop-signal",
            "USR1",
            "--stop-timeout",
            "1",
            "busybox",
            "sleep",
            "1000",
        ])?
        .ok()?;
    assert_eq!(
        engine.inspect("old", "{{.Config.StopSignal}} {{.Config.StopTimeout}}")?,
        "USR1 1"
    );
    engine.docker(&["rename", "old", "new"])?.ok()?;
    let first = engine.inspect("new", "{{.State.StartedAt}}")?;
    // sleep ignores nothing but has no USR1 handler as PID 1: the 1 s timeout ends in SIGKILL.
    engine.docker(&["restart", "-t", "1", "new"])?.ok()?;
    let second = engine.inspect("new", "{{.State.StartedAt}} {{.State.Running}}")?;
    assert_ne!(first, second);
    assert!(second.ends_with(" true"), "{second}");
    engine.docker(&["stop", "new"])?.ok()?;
    let wait = engine.docker(&["wait", "new"])?.ok()?;
    assert_eq!(wait.stdout.trim(), "137");
    Ok(())
}

#[test]
fn a_container_waiting_to_restart_shows_as_restarting_until_stopped() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "crashy",
            "--restart",
            "always",
            "busybox",
            "false",
        ])?
        .ok()?;
    // The delay doubles from 100 ms: after four quick exits it is 1.6 s, long enough to look.
    engine.wait_for(
        &[
            "inspect",
            "-f",
            "{{.State.Restarting}} {{.RestartCount}}",
            "crashy",
        ],
        Duration::from_secs(15),
        |r| {
            let out = r.stdout.trim();
            out.strip_prefix("true ")
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n >= 4)
        },
    )?;
    // Listed without -a (dockerd counts it as running) and by its status.
    let ps = engine
        .docker(&["ps", "--format", "{{.Names}} {{.Status}}"])?
        .ok()?;
    assert!(
        ps.stdout.starts_with("crashy Restarting (1) "),
        "{}",
        ps.stdout
    );
    let filtered = engine
        .docker(&["ps", "-q", "--filter", "status=restarting"])?
        .ok()?;
    assert_eq!(filtered.stdout.lines().count(), 1, "{}", filtered.stdout);
    engine.docker(&["stop", "crashy"])?.ok()?;
    let count = engine.inspect("crashy", "{{.RestartCount}}")?;
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        engine.inspect(
            "crashy",
            "{{.State.Status}} {{.State.Restarting}} {{.RestartCount}}"
        )?,
        format!("exited false {count}")
    );
    Ok(())
}
