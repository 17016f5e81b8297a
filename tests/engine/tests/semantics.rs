//! Docker's semantics and texts for ps, events, rename, kill, logs, rm, top and exec, as the
//! docker CLI shows them (moby 28: daemon/list.go, daemon/rename.go, daemon/events/filter.go,
//! daemon/server/router/{container/container_routes.go,system/system_routes.go}).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rmachine_tests_engine::{Engine, Run};

const LIMIT: Duration = Duration::from_secs(60);

fn lines(run: &Run) -> Vec<String> {
    run.stdout.lines().map(str::to_string).collect()
}

fn ps(engine: &Engine, args: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut full = vec!["ps"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--format", "{{.Names}}"]);
    Ok(lines(&engine.docker(&full)?.ok()?))
}

/// `docker events --since/--until` take Unix seconds with a fraction.
fn now() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
}

#[test]
fn ps_quotes_arguments_and_applies_every_filter() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let run = |args: &[&str]| -> anyhow::Result<()> {
        engine.docker_within(LIMIT, args)?.ok()?;
        Ok(())
    };
    run(&[
        "run", "-d", "--name", "r1", "-l", "a=1", "-l", "b=2", "busybox", "sleep", "1000",
    ])?;
    run(&[
        "run",
        "-d",
        "--name",
        "r2",
        "-l",
        "a=1",
        "busybox",
        "sh",
        "-c",
        "sleep 1000",
    ])?;
    run(&["create", "--name", "cr", "busybox"])?;

    let commands = engine
        .docker(&["ps", "--no-trunc", "--format", "{{.Names}} {{.Command}}"])?
        .ok()?;
    assert_eq!(
        lines(&commands),
        ["r2 \"sh -c 'sleep 1000'\"", "r1 \"sleep 1000\""]
    );

    // Two label filters must both hold.
    assert_eq!(
        ps(&engine, &["--filter", "label=a=1", "--filter", "label=b=2"])?,
        ["r1"]
    );
    assert_eq!(ps(&engine, &["--filter", "label=a=1"])?, ["r2", "r1"]);

    // Newest first: cr, r2, r1.
    assert_eq!(ps(&engine, &["-a", "--filter", "before=r2"])?, ["r1"]);
    assert_eq!(ps(&engine, &["-a", "--filter", "since=r2"])?, ["cr"]);
    assert_eq!(ps(&engine, &["-a", "--filter", "since=r1"])?, ["cr", "r2"]);
    let missing = engine.docker(&["ps", "-a", "--filter", "before=nosuch"])?;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("No such container: nosuch"),
        "{}",
        missing.stderr
    );

    // No container has a mount at /x or joins a network named none.
    assert!(ps(&engine, &["-a", "--filter", "volume=/x"])?.is_empty());
    assert!(ps(&engine, &["-a", "--filter", "network=none"])?.is_empty());

    engine.docker(&["rm", "-f", "r1", "r2", "cr"])?.ok()?;
    Ok(())
}

#[test]
fn errors_carry_dockers_texts() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let fails = |args: &[&str]| -> anyhow::Result<String> {
        let run = engine.docker_within(LIMIT, args)?;
        assert_ne!(run.code, 0, "docker {args:?} succeeded: {run:?}");
        Ok(run.stderr)
    };
    let created = engine
        .docker(&["create", "--name", "kc", "busybox"])?
        .ok()?
        .stdout
        .trim()
        .to_string();
    engine
        .docker_within(
            LIMIT,
            &["run", "-d", "--name", "up", "busybox", "sleep", "1000"],
        )?
        .ok()?;

    // kill: every failure is wrapped as moby's postContainersKill does.
    assert_eq!(
        fails(&["kill", "nosuch"])?,
        "Error response from daemon: cannot kill container: nosuch: No such container: nosuch\n"
    );
    assert_eq!(
        fails(&["kill", "kc"])?,
        format!(
            "Error response from daemon: cannot kill container: kc: container {created} is not running\n"
        )
    );
    assert_eq!(
        fails(&["kill", "-s", "999", "up"])?,
        "Error response from daemon: cannot kill container: up: the linux daemon does not support signal 999\n"
    );

    // rename: moby's order of checks and its wrapper.
    assert!(fails(&["rename", "kc", "kc"])?.contains(
        "Error response from daemon: Renaming a container with the same name as its current name\n"
    ));
    let conflict = fails(&["rename", "kc", "up"])?;
    assert!(
        conflict.contains(
            "Error response from daemon: Error when allocating new name: Conflict. The container name \"/up\" is already in use by container \""
        ),
        "{conflict}"
    );
    assert!(fails(&["rename", "kc", "bad name"])?.contains(
        "Error response from daemon: Error when allocating new name: Invalid container name (/bad name), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed\n"
    ));
    assert!(fails(&["rename", "nosuch", "bad name"])?
        .contains("Error response from daemon: No such container: nosuch\n"));
    engine.docker(&["rename", "kc", "/kc2"])?.ok()?;
    assert_eq!(ps(&engine, &["-a", "--filter", "name=kc"])?, ["kc2"]);

    // top: what ps refused, prefixed with `ps: `.
    assert_eq!(
        fails(&["top", "up", "--bogus-option"])?,
        "Error response from daemon: ps: error: unknown gnu long option\n"
    );

    // exec into a paused container names it as the user did.
    engine.docker(&["pause", "up"])?.ok()?;
    assert_eq!(
        fails(&["exec", "up", "true"])?,
        "Error response from daemon: Container up is paused, unpause the container before exec\n"
    );
    engine.docker(&["unpause", "up"])?.ok()?;

    // rm of the same container twice in one command removes it once.
    engine
        .docker(&["create", "--name", "rm1", "busybox"])?
        .ok()?;
    let rm = engine.docker_within(LIMIT, &["rm", "rm1", "nosuch", "rm1"])?;
    assert_eq!(rm.code, 1);
    assert_eq!(lines(&rm), ["rm1"], "{rm:?}");
    assert!(rm
        .stderr
        .contains("Error response from daemon: No such container: nosuch"));
    let second = rm
        .stderr
        .lines()
        .filter(|l| !l.contains("nosuch"))
        .collect::<Vec<_>>();
    assert_eq!(second.len(), 1, "{}", rm.stderr);
    assert!(
        second[0].contains("removal of container rm1 is already in progress")
            || second[0].contains("No such container: rm1"),
        "{}",
        rm.stderr
    );

    engine.docker(&["rm", "-f", "up", "kc2"])?.ok()?;
    Ok(())
}

#[test]
fn logs_tail_reads_a_bad_or_negative_count_as_all() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker_within(
            LIMIT,
            &[
                "run",
                "--name",
                "lg",
                "busybox",
                "sh",
                "-c",
                "echo one; echo two",
            ],
        )?
        .ok()?;
    for tail in ["abc", "-1", "all"] {
        let run = engine.docker(&["logs", "--tail", tail, "lg"])?.ok()?;
        assert_eq!(run.stdout, "one\ntwo\n", "--tail {tail}");
    }
    let one = engine.docker(&["logs", "--tail", "1", "lg"])?.ok()?;
    assert_eq!(one.stdout, "two\n");
    let none = engine.docker(&["logs", "--tail", "0", "lg"])?.ok()?;
    assert_eq!(none.stdout, "");
    Ok(())
}

#[test]
fn events_follow_dockers_lifecycle() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let since = now();
    let run = |args: &[&str]| -> anyhow::Result<()> {
        engine.docker_within(LIMIT, args)?.ok()?;
        Ok(())
    };
    // PID 1 ignores SIGTERM: stop and restart need their SIGKILL.
    run(&["run", "-d", "--name", "ev", "busybox", "sleep", "1000"])?;
    run(&["exec", "ev", "true"])?;
    run(&["stop", "-t", "1", "ev"])?;
    run(&["rename", "ev", "ev2"])?;
    run(&["start", "ev2"])?;
    run(&["restart", "-t", "1", "ev2"])?;
    run(&["rm", "-f", "ev2"])?;
    run(&["run", "--name", "att", "busybox", "true"])?;
    run(&["rm", "att"])?;
    std::thread::sleep(Duration::from_millis(500));
    let until = now();
    let events = |filters: &[&str], format: &str| -> anyhow::Result<Vec<String>> {
        let mut args = vec!["events", "--since", &since, "--until", &until];
        for f in filters {
            args.extend_from_slice(&["--filter", f]);
        }
        args.extend_from_slice(&["--format", format]);
        Ok(lines(&engine.docker_within(LIMIT, &args)?.ok()?))
    };

    let format = "{{.Action}}|{{.Actor.Attributes.name}}|{{.Actor.Attributes.signal}}";
    let ev = events(&["container=ev"], format)?;
    let expected = [
        "create|ev|<no value>",
        "start|ev|<no value>",
        "exec_create: true |ev|<no value>",
        "exec_start: true |ev|<no value>",
        "exec_die|ev|<no value>",
        "kill|ev|15",
        "kill|ev|9",
        "die|ev|<no value>",
        "stop|ev|<no value>",
        "rename|ev2|<no value>",
        "start|ev2|<no value>",
        "kill|ev2|15",
        "kill|ev2|9",
        "die|ev2|<no value>",
        "stop|ev2|<no value>",
        "start|ev2|<no value>",
        "restart|ev2|<no value>",
        "kill|ev2|9",
        "die|ev2|<no value>",
        "destroy|ev2|<no value>",
    ];
    assert_eq!(ev, expected);

    // The exec actions keep moby's trailing space.
    assert_eq!(
        events(&["event=exec_create"], "[{{.Action}}]")?,
        ["[exec_create: true ]"]
    );

    // An attached run logs an attach between create and start.
    assert_eq!(
        events(&["container=att"], "{{.Action}}")?,
        ["create", "attach", "start", "die", "destroy"]
    );

    // API < 1.52 events keep the legacy status/id/from fields.
    let json = events(&["container=att", "event=create"], "{{json .}}")?;
    assert_eq!(json.len(), 1);
    let value: serde_json::Value = serde_json::from_str(&json[0])?;
    assert_eq!(value["status"], "create");
    assert_eq!(value["from"], "busybox");
    assert_eq!(value["id"], value["Actor"]["ID"]);

    // `docker load` logs a load event named by the image id; `--until` alone replays it.
    let id = engine
        .docker(&["image", "inspect", "-f", "{{.Id}}", "busybox"])?
        .ok()?
        .stdout
        .trim()
        .to_string();
    let loads = lines(
        &engine
            .docker_within(
                LIMIT,
                &[
                    "events",
                    "--until",
                    &until,
                    "--filter",
                    "type=image",
                    "--filter",
                    "event=load",
                    "--format",
                    "{{.Actor.ID}} {{.Actor.Attributes.name}}",
                ],
            )?
            .ok()?,
    );
    assert_eq!(loads, [format!("{id} {id}")]);
    Ok(())
}
