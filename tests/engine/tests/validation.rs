//! What dockerd refuses or fills in on its own: resource validation, create warnings, inspect
//! defaults, `State.OOMKilled`, prune filters and the details of `docker cp`.

use std::os::unix::fs::chown;
use std::time::Duration;

use rmachine_tests_engine::Engine;

#[test]
fn a_container_killed_for_memory_is_marked_oom_killed() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let run = engine.docker_within(
        Duration::from_secs(120),
        &[
            "run",
            "--name",
            "oom",
            "--memory",
            "8m",
            "busybox",
            "sh",
            "-c",
            "x=a; while :; do x=$x$x; done",
        ],
    )?;
    assert_eq!(run.code, 137, "{run:?}");
    assert_eq!(
        engine.inspect("oom", "{{.State.OOMKilled}} {{.State.ExitCode}}")?,
        "true 137"
    );
    // A container that merely exits is not.
    engine
        .docker(&["run", "--name", "fine", "--memory", "8m", "busybox", "true"])?
        .ok()?;
    assert_eq!(engine.inspect("fine", "{{.State.OOMKilled}}")?, "false");
    Ok(())
}

#[test]
fn resource_requests_dockerd_refuses_are_refused() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let cpuset = engine.docker(&["run", "--rm", "--cpuset-cpus", "99", "busybox", "true"])?;
    assert_eq!(cpuset.code, 125, "{cpuset:?}");
    assert!(
        cpuset
            .stderr
            .contains("Requested CPUs are not available - requested 99, available: 0"),
        "{}",
        cpuset.stderr
    );
    let malformed = engine.docker(&["create", "--cpuset-cpus", "1-x", "busybox"])?;
    assert!(
        malformed
            .stderr
            .contains("Invalid value 1-x for cpuset cpus"),
        "{}",
        malformed.stderr
    );
    // CPU 0 always exists.
    engine
        .docker(&["run", "--rm", "--cpuset-cpus", "0", "busybox", "true"])?
        .ok()?;
    let swap = engine.docker(&["create", "--memory-swap", "10m", "busybox"])?;
    assert_ne!(swap.code, 0);
    assert!(
        swap.stderr.contains(
            "You should always set the Memory limit when using Memoryswap limit, see usage"
        ),
        "{}",
        swap.stderr
    );
    // Nothing was created by the refused requests.
    let all = engine.docker(&["ps", "-aq"])?.ok()?;
    assert_eq!(all.stdout, "");
    // A swappiness is not applied by the runtime, so it is refused rather than kept unused
    // (the CLI's -1, "not set", still passes: see inspect_shows_the_defaults_dockerd_fills_in).
    let swappy = engine.docker(&["create", "--memory-swappiness", "60", "busybox"])?;
    assert_ne!(swappy.code, 0);
    assert!(
        swappy.stderr.contains("(--memory-swappiness)"),
        "{}",
        swappy.stderr
    );
    Ok(())
}

#[test]
fn pids_limits_up_to_zero_mean_unlimited() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    for (name, value) in [("pidsneg", "-5"), ("pidszero", "0")] {
        engine
            .docker(&["create", "--name", name, "--pids-limit", value, "busybox"])?
            .ok()?;
        assert_eq!(engine.inspect(name, "{{.HostConfig.PidsLimit}}")?, "<nil>");
    }
    let id = engine
        .docker(&["run", "-d", "--name", "upr", "busybox", "sleep", "1000"])?
        .ok()?
        .stdout
        .trim()
        .to_string();
    engine
        .docker(&["update", "--pids-limit", "7", "upr"])?
        .ok()?;
    assert_eq!(engine.inspect("upr", "{{.HostConfig.PidsLimit}}")?, "7");
    let v1 = format!("/sys/fs/cgroup/pids/rmachine/{id}/pids.max");
    let v2 = format!("/sys/fs/cgroup/rmachine/{id}/pids.max");
    let pids_max = || {
        std::fs::read_to_string(&v1)
            .or_else(|_| std::fs::read_to_string(&v2))
            .map(|s| s.trim().to_string())
    };
    assert_eq!(pids_max()?, "7");
    engine
        .docker(&["update", "--pids-limit", "-1", "upr"])?
        .ok()?;
    assert_eq!(engine.inspect("upr", "{{.HostConfig.PidsLimit}}")?, "0");
    assert_eq!(pids_max()?, "max");
    engine.docker(&["rm", "-f", "upr"])?.ok()?;
    Ok(())
}

#[test]
fn a_paused_container_cannot_be_started() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&["run", "-d", "--name", "rp", "busybox", "sleep", "1000"])?
        .ok()?;
    engine.docker(&["pause", "rp"])?.ok()?;
    let start = engine.docker_within(Duration::from_secs(30), &["start", "rp"])?;
    assert_eq!(start.code, 1, "{start:?}");
    assert!(
        start
            .stderr
            .contains("cannot start a paused container, try unpause instead"),
        "{}",
        start.stderr
    );
    assert_eq!(engine.inspect("rp", "{{.State.Status}}")?, "paused");
    engine.docker(&["unpause", "rp"])?.ok()?;
    assert_eq!(engine.inspect("rp", "{{.State.Status}}")?, "running");
    engine.docker(&["rm", "-f", "rp"])?.ok()?;
    Ok(())
}

#[test]
fn container_prune_honours_label_and_until_filters() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let names = |engine: &Engine| -> anyhow::Result<String> {
        let ps = engine
            .docker(&["ps", "-a", "--format", "{{.Names}}"])?
            .ok()?;
        let mut names: Vec<&str> = ps.stdout.lines().collect();
        names.sort_unstable();
        Ok(names.join(" "))
    };
    engine
        .docker(&["create", "--name", "keep", "--label", "keep=1", "busybox"])?
        .ok()?;
    engine
        .docker(&["create", "--name", "other", "--label", "keep=2", "busybox"])?
        .ok()?;
    engine
        .docker(&["create", "--name", "plain", "busybox"])?
        .ok()?;
    let bogus = engine.docker(&["container", "prune", "-f", "--filter", "bogus=1"])?;
    assert_eq!(bogus.code, 1);
    assert!(
        bogus.stderr.contains("invalid filter 'bogus'"),
        "{}",
        bogus.stderr
    );
    // Nothing is older than an hour.
    engine
        .docker(&["container", "prune", "-f", "--filter", "until=1h"])?
        .ok()?;
    assert_eq!(names(&engine)?, "keep other plain");
    // `label!=keep` spares every container with a `keep` label.
    let pruned = engine
        .docker(&["container", "prune", "-f", "--filter", "label!=keep"])?
        .ok()?;
    assert_eq!(pruned.stdout.lines().filter(|l| l.len() == 64).count(), 1);
    assert_eq!(names(&engine)?, "keep other");
    // `label=keep=2` takes only the container whose value matches.
    engine
        .docker(&["container", "prune", "-f", "--filter", "label=keep=2"])?
        .ok()?;
    assert_eq!(names(&engine)?, "keep");
    let bad_until = engine.docker(&["container", "prune", "-f", "--filter", "until=soon"])?;
    assert_eq!(bad_until.code, 1, "{bad_until:?}");
    assert_eq!(names(&engine)?, "keep");
    std::thread::sleep(Duration::from_millis(1100));
    engine
        .docker(&["container", "prune", "-f", "--filter", "until=1s"])?
        .ok()?;
    assert_eq!(names(&engine)?, "");
    Ok(())
}

#[test]
fn inspect_shows_the_defaults_dockerd_fills_in() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&["create", "--name", "c1", "busybox"])?
        .ok()?;
    let cgroupns = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "private"
    } else {
        "host"
    };
    assert_eq!(
        engine.inspect(
            "c1",
            "{{.HostConfig.IpcMode}} {{.HostConfig.ShmSize}} {{.HostConfig.Runtime}} \
             {{.HostConfig.CgroupnsMode}} {{.HostConfig.MemorySwappiness}} \
             {{json .Config.Volumes}}"
        )?,
        format!("private 67108864 runc {cgroupns} <nil> null")
    );
    let masked: Vec<String> =
        serde_json::from_str(&engine.inspect("c1", "{{json .HostConfig.MaskedPaths}}")?)?;
    assert!(masked.contains(&"/proc/kcore".to_string()), "{masked:?}");
    let readonly: Vec<String> =
        serde_json::from_str(&engine.inspect("c1", "{{json .HostConfig.ReadonlyPaths}}")?)?;
    assert!(readonly.contains(&"/proc/sys".to_string()), "{readonly:?}");
    // The image's layers, as overlay lower dirs that exist.
    let lower = engine.inspect("c1", "{{.GraphDriver.Data.LowerDir}}")?;
    assert!(!lower.is_empty());
    for dir in lower.split(':') {
        assert!(std::path::Path::new(dir).join("bin").exists(), "{dir}");
    }
    // A privileged container is not masked, and dockerd leaves the lists null.
    engine
        .docker(&["create", "--name", "priv", "--privileged", "busybox"])?
        .ok()?;
    assert_eq!(
        engine.inspect(
            "priv",
            "{{json .HostConfig.MaskedPaths}} {{json .HostConfig.ReadonlyPaths}}"
        )?,
        "null null"
    );
    Ok(())
}

#[test]
fn cp_into_a_missing_container_says_no_such_container() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    // Large enough that an upload the engine does not read fills the socket buffers.
    let file = engine.dir().join("big");
    std::fs::write(&file, vec![b'x'; 4 << 20])?;
    let file = file.to_string_lossy().into_owned();
    let cp = engine.docker_within(Duration::from_secs(60), &["cp", &file, "nosuch:/tmp"])?;
    assert_eq!(cp.code, 1, "{cp:?}");
    assert_eq!(
        cp.stderr.trim(),
        "Error response from daemon: No such container: nosuch"
    );
    Ok(())
}

#[test]
fn cp_in_keeps_the_archive_owner_unless_a_names_the_container_user() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let own = engine.dir().join("own");
    std::fs::write(&own, "own\n")?;
    chown(&own, Some(1234), Some(5678))?;
    let own = own.to_string_lossy().into_owned();
    engine
        .docker(&["run", "-d", "--name", "ex", "busybox", "sleep", "1000"])?
        .ok()?;
    engine
        .docker(&[
            "run", "-d", "--name", "exu", "-u", "nobody", "busybox", "sleep", "1000",
        ])?
        .ok()?;
    engine.docker(&["cp", &own, "ex:/tmp/own"])?.ok()?;
    engine.docker(&["cp", "-a", &own, "ex:/tmp/own-a"])?.ok()?;
    engine.docker(&["cp", &own, "exu:/tmp/own"])?.ok()?;
    engine.docker(&["cp", "-a", &own, "exu:/tmp/own-a"])?.ok()?;
    let stat = |name: &str| -> anyhow::Result<String> {
        Ok(engine
            .docker(&[
                "exec",
                name,
                "stat",
                "-c",
                "%n %u %g",
                "/tmp/own",
                "/tmp/own-a",
            ])?
            .ok()?
            .stdout)
    };
    // Without a container user, `-a` keeps the archive's ids too (dockerd's default options).
    assert_eq!(stat("ex")?, "/tmp/own 1234 5678\n/tmp/own-a 1234 5678\n");
    // busybox's nobody is 65534:65534.
    assert_eq!(stat("exu")?, "/tmp/own 1234 5678\n/tmp/own-a 65534 65534\n");
    // A stopped container is written through its layers, with the same rules.
    engine.docker(&["stop", "-t", "0", "ex"])?.ok()?;
    engine.docker(&["cp", &own, "ex:/stopped"])?.ok()?;
    engine.docker(&["start", "ex"])?.ok()?;
    let stopped = engine
        .docker(&["exec", "ex", "stat", "-c", "%u %g", "/stopped"])?
        .ok()?;
    assert_eq!(stopped.stdout, "1234 5678\n");
    engine.docker(&["rm", "-f", "ex", "exu"])?.ok()?;
    Ok(())
}
