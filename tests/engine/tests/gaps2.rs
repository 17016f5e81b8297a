//! More Docker behaviours that are easy to miss, each decided by a moby source file: a paused
//! container across an engine crash (daemon/daemon.go `restore`), which signals cancel a restart
//! policy (daemon/kill.go), `docker cp` into a `--read-only` root (daemon/archive_unix.go) and
//! out of a running one's `/` (daemon/containerfs_linux.go), `ps --filter id=` (daemon/list.go),
//! `logs --details` (daemon/server/httputils/logstream) and `top`'s STAT column (procps).

use std::time::{Duration, Instant};

use anyhow::Context;
use rmachine_tests_engine::Engine;

fn alive(pid: &str) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_paused_container_is_recorded_and_not_left_frozen_by_an_engine_crash() -> anyhow::Result<()> {
    let Some(mut engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let id = engine
        .docker(&["run", "-d", "--name", "frozen", "busybox", "sleep", "1000"])?
        .ok()?
        .stdout
        .trim()
        .to_string();
    let pid = engine.inspect("frozen", "{{.State.Pid}}")?;
    engine.docker(&["pause", "frozen"])?.ok()?;

    // The record on disk says paused, and so do ps and its status filter.
    let record = std::fs::read_to_string(
        engine
            .data_root()
            .join("containers")
            .join(&id)
            .join("config.v2.json"),
    )?;
    let record: serde_json::Value = serde_json::from_str(&record)?;
    assert_eq!(record["State"]["Paused"], true, "{record}");
    let ps = engine
        .docker(&[
            "ps",
            "--filter",
            "status=paused",
            "--format",
            "{{.Names}} {{.Status}}",
        ])?
        .ok()?;
    assert!(
        ps.stdout.starts_with("frozen Up ") && ps.stdout.trim_end().ends_with("(Paused)"),
        "{}",
        ps.stdout
    );
    let running = engine
        .docker(&["ps", "-q", "--filter", "status=running"])?
        .ok()?;
    assert_eq!(running.stdout, "");

    // The engine dies; the frozen process cannot act on the SIGKILL it was sent meanwhile.
    engine.crash()?;
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(&pid), "a frozen process should outlive its monitor");

    // As dockerd without live-restore: stopped at restart, thawed and gone, and shown so.
    engine.restart()?;
    assert_eq!(
        engine.inspect(
            "frozen",
            "{{.State.Status}} {{.State.Paused}} {{.State.ExitCode}}"
        )?,
        "exited false 255"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(&pid) {
        anyhow::ensure!(Instant::now() < deadline, "pid {pid} still alive");
        std::thread::sleep(Duration::from_millis(50));
    }
    let unpause = engine.docker(&["unpause", "frozen"])?;
    assert_eq!(unpause.code, 1);
    assert!(
        unpause
            .stderr
            .contains(&format!("Container {id} is not paused")),
        "{}",
        unpause.stderr
    );
    // It starts again normally.
    engine.docker(&["start", "frozen"])?.ok()?;
    assert_eq!(engine.inspect("frozen", "{{.State.Status}}")?, "running");
    Ok(())
}

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
fn cp_into_a_read_only_root_is_refused_with_dockers_message() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let file = engine.dir().join("note.txt");
    std::fs::write(&file, "hello\n")?;
    let file = file.to_string_lossy().into_owned();
    engine
        .docker(&[
            "run",
            "-d",
            "--read-only",
            "--tmpfs",
            "/run",
            "--name",
            "ro",
            "busybox",
            "sleep",
            "1000",
        ])?
        .ok()?;
    engine
        .docker(&["create", "--read-only", "--name", "ro-stopped", "busybox"])?
        .ok()?;
    for target in ["ro:/tmp", "ro:/", "ro-stopped:/tmp", "ro:/run"] {
        let cp = engine.docker(&["cp", &file, target])?;
        assert_eq!(cp.code, 1, "{target}: {cp:?}");
        assert_eq!(
            cp.stderr.trim_end(),
            "Error response from daemon: container rootfs is marked read-only",
            "{target}"
        );
    }
    // Nothing was written.
    let ls = engine.docker(&["exec", "ro", "ls", "/tmp"])?.ok()?;
    assert_eq!(ls.stdout, "");
    // Reading is still allowed.
    let out = engine
        .docker_command(&["cp", "ro:/etc/passwd", "-"])
        .output()?;
    assert!(out.status.success(), "{out:?}");
    Ok(())
}

#[test]
fn cp_of_a_running_containers_root_leaves_the_kernel_views_empty() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "-d",
            "--tmpfs",
            "/scratch",
            "--name",
            "live",
            "busybox",
            "sh",
            "-c",
            "echo kept > /kept; echo gone > /scratch/x; sleep 1000",
        ])?
        .ok()?;
    engine.wait_for(
        &["exec", "live", "cat", "/kept"],
        Duration::from_secs(5),
        |r| r.stdout == "kept\n",
    )?;
    let started = Instant::now();
    let out = engine.docker_command(&["cp", "live:/", "-"]).output()?;
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let mut archive = tar::Archive::new(&out.stdout[..]);
    let mut names = Vec::new();
    for entry in archive.entries()? {
        let entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        // The archive is rooted at the base name of `/`; compare paths inside it.
        let inside = name
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_string();
        names.push(inside);
    }
    let has = |n: &str| names.iter().any(|x| x.trim_end_matches('/') == n);
    for expected in [
        "bin/busybox",
        "kept",
        "etc/hostname",
        "proc",
        "sys",
        "dev",
        "scratch",
    ] {
        assert!(has(expected), "{expected} missing from {names:?}");
    }
    for mount in ["proc/", "sys/", "dev/", "scratch/"] {
        let inside: Vec<&String> = names
            .iter()
            .filter(|n| n.starts_with(mount) && n.len() > mount.len())
            .collect();
        assert!(inside.is_empty(), "{mount} has {inside:?}");
    }
    // Asking for a kernel view itself gives its empty directory.
    let proc = engine.docker_command(&["cp", "live:/proc", "-"]).output()?;
    assert!(proc.status.success(), "{proc:?}");
    let mut archive = tar::Archive::new(&proc.stdout[..]);
    let count = archive.entries()?.count();
    assert_eq!(count, 1);
    // What is inside those mounts is not part of that view.
    for inside in [
        "/proc/1/status",
        "/proc/self/",
        "/sys/kernel",
        "/dev/null",
        "/scratch/x",
    ] {
        let cp = engine.docker(&["cp", &format!("live:{inside}"), "-"])?;
        assert_eq!(cp.code, 1, "{inside}");
        assert!(
            cp.stderr.contains(&format!(
                "Could not find the file {inside} in container live"
            )) || cp
                .stderr
                .contains(&format!("No such container:path: live:{inside}")),
            "{inside}: {}",
            cp.stderr
        );
    }
    Ok(())
}

#[test]
fn id_filters_take_unique_prefixes_as_dockerd_does() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    // Create containers until two share a first hex digit: an ambiguous prefix.
    let mut ids: Vec<String> = Vec::new();
    let (shared, pair) = loop {
        let id = engine
            .docker(&["create", "busybox", "true"])?
            .ok()?
            .stdout
            .trim()
            .to_string();
        if let Some(other) = ids.iter().find(|i| i[..1] == id[..1]) {
            break (id[..1].to_string(), [other.clone(), id]);
        }
        ids.push(id);
    };
    let filter = |value: &str| -> anyhow::Result<Vec<String>> {
        let run = engine
            .docker(&[
                "ps",
                "-a",
                "--no-trunc",
                "-q",
                "--filter",
                &format!("id={value}"),
            ])?
            .ok()?;
        let mut out: Vec<String> = run.stdout.lines().map(str::to_string).collect();
        out.sort();
        Ok(out)
    };
    let one = &pair[0];
    // A unique prefix, or the whole id: that container.
    let unique = (2..=64)
        .map(|n| &one[..n])
        .find(|p| !pair[1].starts_with(p))
        .context("no unique prefix")?;
    assert_eq!(filter(unique)?, std::slice::from_ref(one));
    assert_eq!(filter(one)?, std::slice::from_ref(one));
    // An ambiguous prefix picks nothing, nor does a piece from the middle of an id.
    assert!(filter(&shared)?.is_empty());
    assert!(filter(&one[10..20])?.is_empty());
    // Several values add up.
    let mut both = pair.to_vec();
    both.sort();
    let run = engine
        .docker(&[
            "ps",
            "-a",
            "--no-trunc",
            "-q",
            "--filter",
            &format!("id={}", pair[0]),
            "--filter",
            &format!("id={}", pair[1]),
        ])?
        .ok()?;
    let mut got: Vec<String> = run.stdout.lines().map(str::to_string).collect();
    got.sort();
    assert_eq!(got, both);
    Ok(())
}

#[test]
fn logs_details_prints_the_chosen_attributes_before_each_line() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "--name",
            "detailed",
            "--label",
            "team=blue green",
            "--label",
            "other=x",
            "-e",
            "APP=1",
            "--log-opt",
            "labels=team",
            "--log-opt",
            "env=APP,MISSING",
            "busybox",
            "sh",
            "-c",
            "echo out; echo err >&2",
        ])?
        .ok()?;
    let details = engine.docker(&["logs", "--details", "detailed"])?.ok()?;
    assert_eq!(details.stdout, "APP=1,team=blue+green out\n");
    assert_eq!(details.stderr, "APP=1,team=blue+green err\n");
    let stamped = engine
        .docker(&["logs", "--details", "-t", "detailed"])?
        .ok()?;
    let (time, rest) = stamped.stdout.split_once(' ').context("no timestamp")?;
    assert!(time.ends_with('Z'), "{}", stamped.stdout);
    assert_eq!(rest, "APP=1,team=blue+green out\n");
    // Without --details nothing changes.
    let plain = engine.docker(&["logs", "detailed"])?.ok()?;
    assert_eq!(plain.stdout, "out\n");

    // Without attributes, --details still puts a space before each line.
    engine
        .docker(&["run", "--name", "bare", "busybox", "echo", "hi"])?
        .ok()?;
    let bare = engine.docker(&["logs", "--details", "bare"])?.ok()?;
    assert_eq!(bare.stdout, " hi\n");

    // An option the json-file driver does not know is refused at create.
    let bad = engine.docker(&["create", "--log-opt", "colour=red", "busybox"])?;
    assert_eq!(bad.code, 1);
    assert_eq!(
        bad.stderr.trim_end(),
        "Error response from daemon: unknown log opt 'colour' for json-file log driver"
    );

    // The `none` driver keeps nothing; drivers this engine lacks are refused as dockerd refuses
    // one it was built without (daemon/logger/factory.go).
    let quiet = engine
        .docker(&[
            "run",
            "--name",
            "quiet",
            "--log-driver",
            "none",
            "busybox",
            "echo",
            "hi",
        ])?
        .ok()?;
    assert_eq!(quiet.stdout, "hi\n");
    let logs = engine.docker(&["logs", "quiet"])?;
    assert_eq!(logs.code, 1);
    assert_eq!(
        logs.stderr.trim_end(),
        "Error response from daemon: configured logging driver does not support reading"
    );
    let syslog = engine.docker(&["create", "--log-driver", "syslog", "busybox"])?;
    assert_eq!(
        syslog.stderr.trim_end(),
        "Error response from daemon: logger: no log driver named 'syslog' is registered"
    );
    assert_eq!(
        engine.inspect("bare", "{{json .HostConfig.LogConfig}}")?,
        r#"{"Type":"json-file","Config":{}}"#
    );
    Ok(())
}

#[test]
fn top_stat_marks_the_foreground_group_of_a_tty_container() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&["run", "-dit", "--name", "term", "busybox", "sh"])?
        .ok()?;
    engine
        .docker(&["run", "-d", "--name", "plain", "busybox", "sleep", "1000"])?
        .ok()?;
    let stat_of = |name: &str| -> anyhow::Result<String> {
        let top = engine.docker(&["top", name, "-o", "pid,stat,comm"])?.ok()?;
        let row = top.stdout.lines().nth(1).context("no process")?.to_string();
        Ok(row.split_whitespace().nth(1).unwrap_or("").to_string())
    };
    // The shell leads its session and its group owns the terminal: procps prints `Ss+`.
    assert_eq!(stat_of("term")?, "Ss+");
    // Without a terminal: a session leader, never in a foreground group.
    assert_eq!(stat_of("plain")?, "Ss");
    Ok(())
}

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

/// moby daemon/start.go: a start that fails before the process runs still removes a `--rm`
/// container, so `docker run --rm` (which waits for the removal) ends with the error.
#[test]
fn a_rm_container_whose_start_fails_early_is_removed_and_run_ends() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let run = engine.docker_within(
        Duration::from_secs(30),
        &[
            "run",
            "--rm",
            "--name",
            "nouser",
            "-u",
            "nosuchuser",
            "busybox",
            "id",
        ],
    )?;
    assert_eq!(run.code, 125, "{run:?}");
    assert!(
        run.stderr
            .contains("unable to find user nosuchuser: no matching entries in passwd file"),
        "{}",
        run.stderr
    );
    let left = engine
        .docker(&["ps", "-a", "-q", "--filter", "name=nouser"])?
        .ok()?;
    assert_eq!(left.stdout, "", "the --rm container is gone");
    Ok(())
}

/// `docker events --since 0` replays the events the engine kept, as dockerd does.
#[test]
fn events_since_zero_replays_the_backlog() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine.docker(&["run", "--name", "gone", "busybox", "sh", "-c", "exit 3"])?;
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 1;
    let events = engine.docker_within(
        Duration::from_secs(20),
        &[
            "events",
            "--since",
            "0",
            "--until",
            &until.to_string(),
            "--filter",
            "event=die",
            "--format",
            "{{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}",
        ],
    )?;
    assert_eq!(events.stdout, "gone 3\n", "{events:?}");
    Ok(())
}
