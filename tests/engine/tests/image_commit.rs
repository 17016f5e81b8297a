//! `docker commit` through the real CLI: the container's changes (deletions included) as a
//! layer, `--change`, `-m`/`-a`, pausing.

use rmachine_tests_engine::Engine;

#[test]
fn committed_files_and_deletions_show_in_new_containers() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "--name",
            "c1",
            "busybox",
            "sh",
            "-c",
            "mkdir -p /d/sub && echo x > /d/sub/f && echo gone > /gone",
        ])?
        .ok()?;
    let commit = engine
        .docker(&[
            "commit",
            "-a",
            "Ann <ann@example.com>",
            "-m",
            "step one",
            "c1",
            "stage:1",
        ])?
        .ok()?;
    let id = engine.inspect("stage:1", "{{.Id}}")?;
    assert_eq!(commit.stdout.trim(), id);
    assert_eq!(
        engine.inspect("stage:1", "{{.Author}}")?,
        "Ann <ann@example.com>"
    );
    assert_eq!(engine.inspect("stage:1", "{{.Comment}}")?, "step one");
    assert_eq!(
        engine.inspect("stage:1", "{{.Parent}}")?,
        engine.inspect("busybox", "{{.Id}}")?
    );

    engine
        .docker(&[
            "run",
            "--name",
            "c2",
            "stage:1",
            "sh",
            "-c",
            "rm /gone && rm -r /d && mkdir /d && echo y > /d/new",
        ])?
        .ok()?;
    engine.docker(&["commit", "c2", "stage:2"])?.ok()?;
    // stage:1 is stage:2's parent: by id it cannot go, by tag only the tag goes.
    let parent = engine.docker(&["rmi", "-f", &id[7..]])?;
    assert_eq!(
        parent.stderr.trim(),
        format!(
            "Error response from daemon: conflict: unable to delete {} (cannot be forced) - image has dependent child images",
            &id[7..19]
        )
    );
    engine.docker(&["rm", "c1", "c2"])?.ok()?;
    let untag = engine.docker(&["rmi", "stage:1"])?.ok()?;
    assert_eq!(untag.stdout.trim(), "Untagged: stage:1");
    assert_eq!(engine.inspect(&id, "{{.Id}}")?, id);
    let run = engine
        .docker(&[
            "run",
            "--rm",
            "stage:2",
            "sh",
            "-c",
            "test ! -e /gone && test ! -e /d/sub && cat /d/new",
        ])?
        .ok()?;
    assert_eq!(run.stdout, "y\n");
    Ok(())
}

#[test]
fn changes_set_the_config_and_the_rest_comes_from_the_container() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "create",
            "--name",
            "c1",
            "-e",
            "FROM_RUN=1",
            "busybox",
            "sleep",
            "1",
        ])?
        .ok()?;
    engine
        .docker(&[
            "commit",
            "--change",
            r#"CMD ["echo", "from-cmd"]"#,
            "--change",
            "ENV A=b",
            "--change",
            "LABEL team=core",
            "--change",
            "EXPOSE 8080",
            "--change",
            "WORKDIR /srv",
            "--change",
            "HEALTHCHECK --interval=5s --retries=2 CMD true",
            "c1",
            "changed",
        ])?
        .ok()?;
    assert_eq!(
        engine.inspect("changed", "{{json .Config.Cmd}}")?,
        r#"["echo","from-cmd"]"#
    );
    let env = engine.inspect("changed", "{{json .Config.Env}}")?;
    assert!(
        env.contains("\"A=b\"") && env.contains("\"FROM_RUN=1\""),
        "{env}"
    );
    assert_eq!(
        engine.inspect("changed", "{{.Config.Labels.team}}")?,
        "core"
    );
    assert_eq!(
        engine.inspect("changed", "{{json .Config.ExposedPorts}}")?,
        r#"{"8080/tcp":{}}"#
    );
    assert_eq!(engine.inspect("changed", "{{.Config.WorkingDir}}")?, "/srv");
    assert_eq!(
        engine.inspect("changed", "{{json .Config.Healthcheck}}")?,
        r#"{"Test":["CMD-SHELL","true"],"Interval":5000000000,"Retries":2}"#
    );
    let run = engine.docker(&["run", "--rm", "changed"])?.ok()?;
    assert_eq!(run.stdout, "from-cmd\n");

    let refused = engine.docker(&["commit", "--change", "RUN rm -rf /", "c1", "bad"])?;
    assert_eq!(refused.code, 1);
    assert_eq!(
        refused.stderr.trim(),
        "Error response from daemon: run is not a valid change command"
    );
    let missing = engine.docker(&["commit", "nosuch", "x"])?;
    assert_eq!(
        missing.stderr.trim(),
        "Error response from daemon: No such container: nosuch"
    );
    Ok(())
}

#[test]
fn a_running_container_is_committed_and_keeps_running() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "live",
            "busybox",
            "sh",
            "-c",
            "echo live > /state; sleep 600",
        ])?
        .ok()?;
    engine.wait_for(
        &["exec", "live", "cat", "/state"],
        std::time::Duration::from_secs(10),
        |r| r.stdout == "live\n",
    )?;
    engine.docker(&["commit", "live", "snap"])?.ok()?;
    assert_eq!(engine.inspect("live", "{{.State.Status}}")?, "running");
    assert_eq!(engine.inspect("live", "{{.State.Paused}}")?, "false");
    let run = engine
        .docker(&["run", "--rm", "snap", "cat", "/state"])?
        .ok()?;
    assert_eq!(run.stdout, "live\n");
    engine
        .docker(&["commit", "--pause=false", "live", "snap2"])?
        .ok()?;
    engine.docker(&["rm", "-f", "live"])?.ok()?;
    Ok(())
}
