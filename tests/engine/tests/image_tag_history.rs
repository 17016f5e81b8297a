//! `docker tag`, `docker rmi` of tags and `docker history` through the real CLI.

use rmachine_tests_engine::Engine;

#[test]
fn tag_then_rmi_untags_and_deletes_as_dockerd() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let id = engine.inspect("busybox", "{{.Id}}")?;
    engine.docker(&["tag", "busybox", "mybox:1"])?.ok()?;
    engine
        .docker(&["tag", "busybox:latest", "example.com/team/box"])?
        .ok()?;
    assert_eq!(engine.inspect("mybox:1", "{{.Id}}")?, id);
    let until = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?
        + std::time::Duration::from_secs(1))
    .as_secs()
    .to_string();
    let events = engine
        .docker(&[
            "events",
            "--since",
            "0",
            "--until",
            &until,
            "--filter",
            "type=image",
            "--format",
            "{{.Action}} {{.Actor.Attributes.name}}",
        ])?
        .ok()?;
    assert!(events.stdout.contains("tag mybox:1\n"), "{}", events.stdout);
    assert_eq!(
        engine.inspect("busybox", "{{json .RepoTags}}")?,
        r#"["busybox:latest","example.com/team/box:latest","mybox:1"]"#
    );

    let missing = engine.docker(&["tag", "nosuch", "x"])?;
    assert_eq!(missing.code, 1);
    assert_eq!(
        missing.stderr.trim(),
        "Error response from daemon: No such image: nosuch:latest"
    );
    let bad = engine.docker(&["tag", "busybox", "Bad:Name"])?;
    assert_eq!(bad.code, 1, "{bad:?}");

    // An id with several tags needs -f.
    let by_id = engine.docker(&["rmi", &id[7..19]])?;
    assert_eq!(by_id.code, 1);
    assert!(
        by_id.stderr.contains(&format!(
            "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
            &id[7..19]
        )),
        "{}",
        by_id.stderr
    );
    let untag = engine.docker(&["rmi", "mybox:1"])?.ok()?;
    assert_eq!(untag.stdout.trim(), "Untagged: mybox:1");

    // A running container's image, named by id, cannot be deleted even with -f.
    engine
        .docker(&["run", "-d", "--name", "runner", "busybox", "sleep", "600"])?
        .ok()?;
    let running = engine.docker(&["rmi", "-f", &id[7..]])?;
    assert_eq!(running.code, 1);
    assert!(
        running
            .stderr
            .contains("image is being used by running container"),
        "{}",
        running.stderr
    );
    // By tag: one of several tags goes; the last one needs -f while a container uses it.
    let other = engine.docker(&["rmi", "example.com/team/box"])?.ok()?;
    assert_eq!(other.stdout.trim(), "Untagged: example.com/team/box:latest");
    let runner = engine.inspect("runner", "{{.Id}}")?;
    let last = engine.docker(&["rmi", "busybox"])?;
    assert_eq!(last.code, 1);
    assert_eq!(
        last.stderr.trim(),
        format!(
            "Error response from daemon: conflict: unable to remove repository reference \"busybox\" (must force) - container {} is using its referenced image {}",
            &runner[..12],
            &id[7..19]
        )
    );
    engine
        .docker(&["tag", "busybox", "example.com/team/box"])?
        .ok()?;
    engine.docker(&["rm", "-f", "runner"])?.ok()?;

    let all = engine.docker(&["rmi", "-f", &id[7..]])?.ok()?;
    let lines: Vec<&str> = all.stdout.lines().collect();
    assert_eq!(lines[0], "Untagged: busybox:latest", "{lines:?}");
    assert_eq!(lines[1], "Untagged: example.com/team/box:latest");
    assert_eq!(lines[2], format!("Deleted: {id}"));
    assert!(engine
        .docker(&["images", "-q"])?
        .ok()?
        .stdout
        .trim()
        .is_empty());
    Ok(())
}

#[test]
fn history_lists_the_config_history_newest_first() -> anyhow::Result<()> {
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
            "echo data > /data",
        ])?
        .ok()?;
    engine
        .docker(&["commit", "-m", "add data", "c1", "withdata:1"])?
        .ok()?;
    let id = engine.inspect("withdata:1", "{{.Id}}")?;
    let base = engine.inspect("busybox", "{{.Id}}")?;
    let history = engine
        .docker(&[
            "history",
            "--no-trunc",
            "--format",
            "{{.ID}}|{{.CreatedBy}}|{{.Size}}|{{.Comment}}",
            "withdata:1",
        ])?
        .ok()?;
    let lines: Vec<&str> = history.stdout.lines().collect();
    let base_steps = engine
        .docker(&["history", "-q", "busybox"])?
        .ok()?
        .stdout
        .lines()
        .count();
    assert_eq!(lines.len(), base_steps + 1, "{lines:?}");
    assert_eq!(
        lines[0],
        format!("{id}|sh -c echo data > /data|5B|add data")
    );
    // The parent's top entry carries the parent's id, as dockerd shows a local parent.
    assert!(lines[1].starts_with(&format!("{base}|")), "{lines:?}");
    let quiet = engine.docker(&["history", "-q", "withdata:1"])?.ok()?;
    assert_eq!(quiet.stdout.lines().next(), Some(&id[7..19]));

    let missing = engine.docker(&["history", "nosuch"])?;
    assert_eq!(
        missing.stderr.trim(),
        "Error response from daemon: No such image: nosuch:latest"
    );
    Ok(())
}
