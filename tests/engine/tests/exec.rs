//! `docker exec`, `top`, `stats`, `pause`/`unpause` against a running container.

use std::time::Duration;

use rmachine_tests_engine::Engine;

fn sleeper(engine: &Engine, name: &str) -> anyhow::Result<String> {
    let id = engine
        .docker(&["run", "-d", "--name", name, "busybox", "sleep", "1000"])?
        .ok()?
        .stdout
        .trim()
        .to_string();
    Ok(id)
}

#[test]
fn exec_runs_commands_with_their_exit_codes_env_workdir_and_user() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let id = sleeper(&engine, "box")?;

    let out = engine.docker(&["exec", "box", "sh", "-c", "echo out; echo err >&2"])?;
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (0, "out\n", "err\n")
    );
    assert_eq!(engine.docker(&["exec", "box", "true"])?.code, 0);
    assert_eq!(
        engine.docker(&["exec", "box", "sh", "-c", "exit 3"])?.code,
        3
    );

    let env = engine
        .docker(&[
            "exec",
            "-e",
            "GREETING=hi",
            "box",
            "sh",
            "-c",
            "echo $GREETING $HOSTNAME",
        ])?
        .ok()?;
    assert_eq!(env.stdout, format!("hi {}\n", &id[..12]));
    let pwd = engine.docker(&["exec", "-w", "/etc", "box", "pwd"])?.ok()?;
    assert_eq!(pwd.stdout, "/etc\n");
    let user = engine
        .docker(&["exec", "-u", "nobody", "box", "id", "-un"])?
        .ok()?;
    assert_eq!(user.stdout, "nobody\n");

    // The exec'd process sees the container's processes, not the host's.
    let ps = engine
        .docker(&["exec", "box", "ps", "-o", "pid,comm"])?
        .ok()?;
    assert!(ps.stdout.contains("    1 sleep"), "{}", ps.stdout);

    // Input reaches the process with -i.
    let cat = engine.docker_with_input(&["exec", "-i", "box", "cat"], b"piped\n")?;
    assert_eq!(cat.stdout, "piped\n");

    let missing = engine.docker(&["exec", "box", "nope"])?;
    assert_eq!(missing.code, 127, "{missing:?}");
    assert!(
        missing
            .stdout
            .contains("exec: \"nope\": executable file not found in $PATH"),
        "{missing:?}"
    );
    let not_exec = engine.docker(&["exec", "box", "/etc/passwd"])?;
    assert_eq!(not_exec.code, 126, "{not_exec:?}");

    // -d returns at once; the process runs in the container.
    engine
        .docker(&["exec", "-d", "box", "sh", "-c", "echo bg > /tmp/bg"])?
        .ok()?;
    engine.wait_for(
        &["exec", "box", "cat", "/tmp/bg"],
        Duration::from_secs(5),
        |r| r.stdout == "bg\n",
    )?;

    engine.docker(&["stop", "-t", "0", "box"])?.ok()?;
    let stopped = engine.docker(&["exec", "box", "true"])?;
    assert_ne!(stopped.code, 0);
    assert!(
        stopped
            .stderr
            .contains(&format!("container {id} is not running")),
        "{}",
        stopped.stderr
    );
    Ok(())
}

#[test]
fn pause_freezes_and_unpause_resumes_and_paused_containers_can_be_stopped() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let id = sleeper(&engine, "frozen")?;
    engine.docker(&["pause", "frozen"])?.ok()?;
    let state = engine
        .docker(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.Paused}} {{.State.Running}}",
            "frozen",
        ])?
        .ok()?;
    assert_eq!(state.stdout, "paused true true\n");
    let ps = engine
        .docker(&["ps", "--format", "{{.Names}} {{.Status}}"])?
        .ok()?;
    assert!(
        ps.stdout.starts_with("frozen Up ") && ps.stdout.trim_end().ends_with("(Paused)"),
        "{}",
        ps.stdout
    );
    let again = engine.docker(&["pause", "frozen"])?;
    assert!(
        again
            .stderr
            .contains(&format!("Container {id} is already paused")),
        "{}",
        again.stderr
    );
    let exec = engine.docker(&["exec", "frozen", "true"])?;
    assert!(
        exec.stderr
            .contains("is paused, unpause the container before exec"),
        "{}",
        exec.stderr
    );
    // The freezer really holds the process: its state is D (frozen) or it is listed frozen.
    let freezer = format!("/sys/fs/cgroup/freezer/rmachine/{id}/freezer.state");
    if let Ok(state) = std::fs::read_to_string(&freezer) {
        assert_eq!(state.trim(), "FROZEN");
    }

    engine.docker(&["unpause", "frozen"])?.ok()?;
    let state = engine
        .docker(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.Paused}}",
            "frozen",
        ])?
        .ok()?;
    assert_eq!(state.stdout, "running false\n");
    let not_paused = engine.docker(&["unpause", "frozen"])?;
    assert!(
        not_paused
            .stderr
            .contains(&format!("Container {id} is not paused")),
        "{}",
        not_paused.stderr
    );

    // A paused container stops (sleep ignores SIGTERM as PID 1: killed after the timeout).
    engine.docker(&["pause", "frozen"])?.ok()?;
    engine.docker(&["stop", "-t", "1", "frozen"])?.ok()?;
    let state = engine
        .docker(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            "frozen",
        ])?
        .ok()?;
    assert_eq!(state.stdout, "exited 137\n");
    // And a paused container can be killed.
    sleeper(&engine, "frozen2")?;
    engine.docker(&["pause", "frozen2"])?.ok()?;
    engine.docker(&["kill", "frozen2"])?.ok()?;
    let state = engine
        .docker(&["inspect", "-f", "{{.State.Status}}", "frozen2"])?
        .ok()?;
    assert_eq!(state.stdout, "exited\n");
    Ok(())
}

#[test]
fn top_lists_the_processes_and_stats_prints_a_row() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    sleeper(&engine, "watched")?;
    let top = engine.docker(&["top", "watched"])?.ok()?;
    let mut lines = top.stdout.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        header,
        ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    );
    let row = lines.next().unwrap_or("");
    assert!(
        row.starts_with("root ") && row.ends_with("sleep 1000"),
        "{}",
        top.stdout
    );

    let stats = engine
        .docker(&[
            "stats",
            "--no-stream",
            "--format",
            "{{.Name}}|{{.CPUPerc}}|{{.MemUsage}}|{{.PIDs}}",
            "watched",
        ])?
        .ok()?;
    let fields: Vec<&str> = stats.stdout.trim().split('|').collect();
    assert_eq!(fields.len(), 4, "{}", stats.stdout);
    assert_eq!(fields[0], "watched");
    assert!(fields[1].ends_with('%'), "{}", stats.stdout);
    assert!(
        fields[2].contains(" / ") && !fields[2].starts_with("0B"),
        "{}",
        stats.stdout
    );
    assert_eq!(fields[3], "1");
    Ok(())
}
