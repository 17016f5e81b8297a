//! Detached containers: ps, logs, stop, rm, and the engine's own restart and shutdown.

use std::time::Duration;

use rmachine_tests_engine::Engine;

#[test]
fn detached_container_runs_logs_stops_and_is_removed() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let id = engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "sleeper",
            "busybox",
            "sh",
            "-c",
            "echo ready; echo warn >&2; exec sleep 1000",
        ])?
        .ok()?
        .stdout
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "{id}");
    engine.wait_for(
        &["ps", "--format", "{{.Names}} {{.Status}}"],
        Duration::from_secs(5),
        |r| r.stdout.starts_with("sleeper Up "),
    )?;
    let logs = engine.wait_for(&["logs", "sleeper"], Duration::from_secs(5), |r| {
        r.stdout == "ready\n" && r.stderr == "warn\n"
    })?;
    assert_eq!(logs.code, 0);

    let rm = engine.docker(&["rm", "sleeper"])?;
    assert_ne!(rm.code, 0);
    assert!(
        rm.stderr.contains("cannot remove container \"sleeper\": container is running: stop the container before removing or force remove"),
        "{}",
        rm.stderr
    );

    // sleep as PID 1 ignores SIGTERM, so stop escalates to SIGKILL after the timeout: 137.
    engine.docker(&["stop", "-t", "1", "sleeper"])?.ok()?;
    let ps = engine
        .docker(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"])?
        .ok()?;
    assert!(
        ps.stdout.starts_with("sleeper Exited (137) "),
        "{}",
        ps.stdout
    );
    let kill = engine.docker(&["kill", "sleeper"])?;
    assert!(
        kill.stderr
            .contains(&format!("container {id} is not running")),
        "{}",
        kill.stderr
    );

    engine.docker(&["rm", &id[..12]])?.ok()?;
    let ps = engine.docker(&["ps", "-aq"])?.ok()?;
    assert_eq!(ps.stdout, "");
    assert!(!engine.data_root().join("containers").join(&id).exists());
    Ok(())
}

#[test]
fn stop_with_a_handled_signal_records_its_exit_code() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "trap",
            "busybox",
            "sh",
            "-c",
            "trap 'exit 143' TERM; echo up; while true; do sleep 0.1; done",
        ])?
        .ok()?;
    engine.wait_for(&["logs", "trap"], Duration::from_secs(5), |r| {
        r.stdout == "up\n"
    })?;
    engine.docker(&["stop", "trap"])?.ok()?;
    let state = engine
        .docker(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            "trap",
        ])?
        .ok()?;
    assert_eq!(state.stdout.trim(), "exited 143");
    Ok(())
}

#[test]
fn logs_follow_until_the_container_exits() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "counter",
            "busybox",
            "sh",
            "-c",
            "for i in 1 2 3; do echo $i; sleep 0.2; done",
        ])?
        .ok()?;
    let logs = engine.docker(&["logs", "-f", "counter"])?.ok()?;
    assert_eq!(logs.stdout, "1\n2\n3\n");
    let tail = engine.docker(&["logs", "--tail", "1", "counter"])?.ok()?;
    assert_eq!(tail.stdout, "3\n");
    Ok(())
}

#[test]
fn a_crashed_engine_restarts_with_exited_containers_and_their_logs() -> anyhow::Result<()> {
    let Some(mut engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "survivor",
            "busybox",
            "sh",
            "-c",
            "echo before crash; exec sleep 1000",
        ])?
        .ok()?;
    engine.wait_for(&["logs", "survivor"], Duration::from_secs(5), |r| {
        r.stdout == "before crash\n"
    })?;
    engine
        .docker(&[
            "run",
            "-d",
            "--rm",
            "--name",
            "ephemeral",
            "busybox",
            "sleep",
            "1000",
        ])?
        .ok()?;
    let survivor_id = engine
        .docker(&["inspect", "--format", "{{.Id}}", "survivor"])?
        .ok()?
        .stdout
        .trim()
        .to_string();
    engine.restart()?;
    // The monitor died with the engine and could not remove the container's cgroup; the new
    // engine must, or every crash leaks one per running container.
    let leftovers: Vec<_> = ["", "pids/", "memory/", "cpu/", "freezer/", "devices/"]
        .iter()
        .map(|ctrl| {
            std::path::PathBuf::from(format!("/sys/fs/cgroup/{ctrl}rmachine/{survivor_id}"))
        })
        .filter(|dir| dir.exists())
        .collect();
    assert!(leftovers.is_empty(), "cgroups left behind: {leftovers:?}");
    let ps = engine
        .docker(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"])?
        .ok()?;
    assert!(
        ps.stdout.starts_with("survivor Exited (255) "),
        "{}",
        ps.stdout
    );
    let logs = engine.docker(&["logs", "survivor"])?.ok()?;
    assert_eq!(logs.stdout, "before crash\n");
    // And it can run again.
    engine.docker(&["start", "survivor"])?.ok()?;
    engine.wait_for(
        &["ps", "--format", "{{.Names}}"],
        Duration::from_secs(5),
        |r| r.stdout.trim() == "survivor",
    )?;
    Ok(())
}

#[test]
fn sigterm_stops_running_containers_and_exits_zero() -> anyhow::Result<()> {
    let Some(mut engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "graceful",
            "--stop-timeout",
            "1",
            "busybox",
            "sleep",
            "1000",
        ])?
        .ok()?;
    assert_eq!(engine.terminate()?, Some(0));
    let record = std::fs::read_dir(engine.data_root().join("containers"))?
        .filter_map(Result::ok)
        .map(|e| e.path().join("config.v2.json"))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("no container record"))?;
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(record)?)?;
    assert_eq!(record["State"]["Status"], "exited");
    assert_eq!(record["State"]["ExitCode"], 137);
    Ok(())
}

#[test]
fn prune_removes_stopped_containers_only() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let done = engine
        .docker(&["run", "--name", "done", "busybox", "true"])?
        .ok()?;
    assert_eq!(done.stdout, "");
    engine
        .docker(&["run", "-d", "--name", "busy", "busybox", "sleep", "1000"])?
        .ok()?;
    let prune = engine.docker(&["container", "prune", "-f"])?.ok()?;
    assert!(
        prune.stdout.contains("Deleted Containers:"),
        "{}",
        prune.stdout
    );
    let names = engine
        .docker(&["ps", "-a", "--format", "{{.Names}}"])?
        .ok()?;
    assert_eq!(names.stdout.trim(), "busy");
    Ok(())
}

#[test]
fn prune_reports_the_space_the_removed_containers_held() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "--name",
            "filler",
            "busybox",
            "sh",
            "-c",
            "head -c 100000 /dev/zero > /filler",
        ])?
        .ok()?;
    let (status, body) = engine.request("POST", "/v1.45/containers/prune", "")?;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(
        report["ContainersDeleted"].as_array().map(Vec::len),
        Some(1)
    );
    // The writable layer: the file written, plus the few the engine puts there.
    let reclaimed = report["SpaceReclaimed"].as_u64().unwrap_or(0);
    assert!(
        (100_000..110_000).contains(&reclaimed),
        "SpaceReclaimed {reclaimed}"
    );
    // Nothing left to remove: dockerd's nil list and zero.
    let (_, body) = engine.request("POST", "/v1.45/containers/prune", "")?;
    assert_eq!(
        body.trim(),
        r#"{"ContainersDeleted":null,"SpaceReclaimed":0}"#
    );
    Ok(())
}

#[test]
fn events_report_the_container_lifecycle() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        .saturating_sub(1)
        .to_string();
    engine.docker(&[
        "run", "--rm", "--name", "evented", "busybox", "sh", "-c", "exit 4",
    ])?;
    let until = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 1)
    .to_string();
    let events = engine
        .docker(&[
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--filter",
            "type=container",
            "--format",
            "{{.Action}} {{.Actor.Attributes.name}}",
        ])?
        .ok()?;
    let lines: Vec<&str> = events.stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            "create evented",
            "attach evented",
            "start evented",
            "die evented",
            "destroy evented"
        ]
    );
    let die = engine
        .docker(&[
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--filter",
            "event=die",
            "--format",
            "{{.Actor.Attributes.exitCode}}",
        ])?
        .ok()?;
    assert_eq!(die.stdout, "4\n");
    Ok(())
}

/// The runtime dies with the thread that forked it (`PR_SET_PDEATHSIG`); tokio reaps idle
/// blocking-pool threads after 10 s, and a task's thread can become one after
/// `block_in_place`. Containers started first after the engine started used to be killed
/// (137) 10 s later.
#[test]
fn containers_outlive_the_engine_threads_that_started_them() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    for name in ["first", "second"] {
        engine
            .docker(&["run", "-d", "--name", name, "busybox", "sleep", "1000"])?
            .ok()?;
    }
    // Past tokio's 10 s keep-alive of idle blocking threads, with nothing else going on.
    std::thread::sleep(Duration::from_secs(13));
    let ps = engine
        .docker(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"])?
        .ok()?;
    let mut lines: Vec<&str> = ps.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines.len(), 2, "{}", ps.stdout);
    assert!(lines[0].starts_with("first Up "), "{}", ps.stdout);
    assert!(lines[1].starts_with("second Up "), "{}", ps.stdout);
    engine.docker(&["rm", "-f", "first", "second"])?.ok()?;
    Ok(())
}

/// In a booting machine the engine serves before the kernel modules that containers need are
/// loaded (`--containers-wait-fd`, given by the guest's init): the API
/// answers and images load, a container's start waits until the pipe's write end is closed,
/// then runs.
#[test]
fn containers_wait_for_the_host_while_the_api_answers() -> anyhow::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    if !rmachine_tests_engine::require_root() {
        return Ok(());
    }
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        anyhow::bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just made and are owned here alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The engine inherits the read end; the write end stays close-on-exec, in this process.
    // SAFETY: F_SETFD only sets the descriptor's flags.
    if unsafe { libc::fcntl(fds[0], libc::F_SETFD, 0) } != 0 {
        anyhow::bail!("fcntl: {}", std::io::Error::last_os_error());
    }
    let fd = fds[0].to_string();
    let engine = Engine::start_with_args(&["--containers-wait-fd", &fd])?;
    drop(read);
    engine.load_busybox()?;
    engine.docker(&["version"])?.ok()?;
    engine.docker(&["ps", "-a"])?.ok()?;
    engine
        .docker(&["create", "--name", "early", "busybox", "true"])?
        .ok()?;

    let mut run = engine
        .docker_command(&["run", "-d", "--name", "held", "busybox", "sleep", "60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    engine.wait_for(
        &["inspect", "-f", "{{.State.Status}}", "held"],
        Duration::from_secs(20),
        |r| r.stdout.trim() == "created",
    )?;
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        run.try_wait()?.is_none(),
        "docker run ended while the host was not ready"
    );
    assert_eq!(
        engine.inspect("held", "{{.State.Status}}")?,
        "created",
        "{}",
        engine.log()
    );

    drop(write);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = run.try_wait()? {
            break status;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "docker run still waits 30 s after the host became ready:\n{}",
            engine.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = run.wait_with_output()?;
    assert!(
        status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(engine.inspect("held", "{{.State.Status}}")?, "running");
    assert!(
        engine.log().contains("the host is ready for containers"),
        "{}",
        engine.log()
    );
    engine.docker(&["rm", "-f", "held", "early"])?.ok()?;
    Ok(())
}

/// A `--containers-wait-fd` that is no open pipe is refused by name before anything starts.
#[test]
fn a_wait_descriptor_that_is_not_open_is_refused_by_name() -> anyhow::Result<()> {
    if !rmachine_tests_engine::require_root() {
        return Ok(());
    }
    for (fd, says) in [("1", "standard stream"), ("987", "not an open descriptor")] {
        let err = Engine::start_with_args(&["--containers-wait-fd", fd])
            .err()
            .ok_or_else(|| anyhow::anyhow!("the engine started with --containers-wait-fd {fd}"))?;
        let text = format!("{err:#}");
        assert!(
            text.contains(&format!("--containers-wait-fd {fd}")) && text.contains(says),
            "{text}"
        );
    }
    Ok(())
}
