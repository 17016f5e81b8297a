//! Bad input to signals, removals, create, update, exec and stop: refused with the texts of
//! dockerd 28.

use std::time::{Duration, Instant};

use rmachine_tests_engine::Engine;

#[test]
fn bad_signals_and_removals_get_the_texts_of_dockerd_28() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let id = engine
        .docker(&["run", "-d", "--name", "target", "busybox", "sleep", "1000"])?
        .ok()?
        .stdout
        .trim()
        .to_string();
    // A number Linux has no signal for (daemon/kill.go ValidSignalForPlatform), and 0.
    let unsupported = engine.docker(&["kill", "-s", "99", "target"])?;
    assert_eq!(unsupported.code, 1);
    assert_eq!(
        unsupported.stderr.trim_end(),
        "Error response from daemon: cannot kill container: target: the linux daemon does not support signal 99"
    );
    let zero = engine.docker(&["kill", "-s", "0", "target"])?;
    assert_eq!(
        zero.stderr.trim_end(),
        "Error response from daemon: cannot kill container: target: invalid signal: 0"
    );
    // Real-time signals are signals too; PID 1 ignores one it has no handler for.
    engine
        .docker(&["kill", "-s", "SIGRTMIN+3", "target"])?
        .ok()?;
    assert_eq!(engine.inspect("target", "{{.State.Running}}")?, "true");

    // A paused container is not removed without force, with dockerd 28.2's text naming it as
    // the user did.
    engine.docker(&["pause", "target"])?.ok()?;
    let rm = engine.docker(&["rm", &id[..12]])?;
    assert_eq!(rm.code, 1);
    assert_eq!(
        rm.stderr.trim_end(),
        format!(
            "Error response from daemon: cannot remove container \"{}\": container is paused and must be unpaused first",
            &id[..12]
        )
    );
    engine.docker(&["rm", "-f", "target"])?.ok()?;

    // Stopped containers are "not running", in lowercase since moby 25.
    engine
        .docker(&["create", "--name", "idle", "busybox", "true"])?
        .ok()?;
    let idle = engine.inspect("idle", "{{.Id}}")?;
    // kill wraps it as moby's postContainersKill does.
    for (args, prefix) in [
        (&["kill", "idle"][..], "cannot kill container: idle: "),
        (&["pause", "idle"], ""),
        (&["top", "idle"], ""),
    ] {
        let run = engine.docker(args)?;
        assert_eq!(run.code, 1, "{args:?}");
        assert_eq!(
            run.stderr.trim_end(),
            format!("Error response from daemon: {prefix}container {idle} is not running"),
            "{args:?}"
        );
    }
    Ok(())
}

#[test]
fn bad_create_update_exec_and_stop_input_behaves_as_dockerd_28() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let refused = |args: &[&str], message: &str| -> anyhow::Result<()> {
        let run = engine.docker(args)?;
        assert_ne!(run.code, 0, "{args:?}");
        assert!(
            run.stderr
                .contains(&format!("Error response from daemon: {message}")),
            "{args:?}: {}",
            run.stderr
        );
        Ok(())
    };
    // Create-time checks (daemon/container.go, daemon/daemon_unix.go).
    refused(
        &["create", "-w", "relative", "busybox"],
        "the working directory 'relative' is invalid, it needs to be an absolute path",
    )?;
    refused(
        &["create", "--tmpfs", "run", "busybox"],
        "invalid mount path: 'run' mount path must be absolute",
    )?;
    let cpus = std::thread::available_parallelism()?.get();
    refused(
        &["create", "--cpus", "1000", "busybox"],
        &format!(
            "range of CPUs is from 0.01 to {cpus}.00, as there are only {cpus} CPUs available"
        ),
    )?;
    engine
        .docker(&[
            "create",
            "-w",
            "/srv/../tmp/",
            "--name",
            "cleaned",
            "busybox",
        ])?
        .ok()?;
    assert_eq!(engine.inspect("cleaned", "{{.Config.WorkingDir}}")?, "/tmp");

    // Updates: checked alone, then against the container (container/container_unix.go).
    let id = engine
        .docker(&[
            "run", "-d", "--name", "limited", "-m", "64m", "--cpus", "1", "busybox", "sleep",
            "1000",
        ])?
        .ok()?
        .stdout
        .trim()
        .to_string();
    refused(
        &["update", "--restart", "sometimes", "limited"],
        "invalid restart policy: unknown policy 'sometimes'; use one of 'no', 'always', 'on-failure', or 'unless-stopped'",
    )?;
    refused(
        &["update", "-m", "200m", "limited"],
        &format!("Cannot update container {id}: Memory limit should be smaller than already set memoryswap limit, update the memoryswap at the same time"),
    )?;
    refused(
        &["update", "--cpu-period", "50000", "limited"],
        &format!("Cannot update container {id}: Conflicting options: CPU Period cannot be updated as NanoCPUs has already been set"),
    )?;
    engine.docker(&["update", "-m", "100m", "limited"])?.ok()?;
    assert_eq!(
        engine.inspect(
            "limited",
            "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}}"
        )?,
        "104857600 134217728"
    );

    // An unknown exec user: since moby 28.2 (daemon/exec.go ContainerExecCreate) the create
    // is refused, before any connection is hijacked.
    let exec = engine.docker(&["exec", "-u", "nosuch", "limited", "true"])?;
    assert_eq!((exec.code, exec.stdout.as_str()), (1, ""), "{exec:?}");
    assert!(
        exec.stderr.contains(
            "Error response from daemon: unable to find user nosuch: no matching entries in passwd file"
        ),
        "{exec:?}"
    );
    // Detached, it is the API's error.
    let detached = engine.docker(&["exec", "-d", "-u", "nosuch", "limited", "true"])?;
    assert_eq!(detached.code, 1);
    assert!(detached
        .stderr
        .contains("Error response from daemon: unable to find user nosuch"));

    // A stop signal the kernel refuses leaves two seconds before SIGKILL (daemon/stop.go).
    let started = Instant::now();
    engine.docker(&["stop", "-s", "99", "limited"])?.ok()?;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "took {took:?}"
    );
    assert_eq!(engine.inspect("limited", "{{.State.ExitCode}}")?, "137");
    Ok(())
}
