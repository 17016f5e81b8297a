//! `docker image prune` and `docker system df` through the real CLI.

use rmachine_tests_engine::Engine;

#[test]
fn prune_removes_dangling_images_and_all_unused_with_a() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&["run", "--name", "c1", "busybox", "sh", "-c", "echo 1 > /v"])?
        .ok()?;
    engine.docker(&["commit", "c1", "app:1"])?.ok()?;
    let old = engine.inspect("app:1", "{{.Id}}")?;
    engine
        .docker(&["run", "--name", "c2", "busybox", "sh", "-c", "echo 22 > /v"])?
        .ok()?;
    // The tag moves: the first commit is left dangling.
    engine.docker(&["commit", "c2", "app:1"])?.ok()?;

    // Made just now: not older than a day, kept by `until`.
    let recent = engine
        .docker(&["image", "prune", "-f", "--filter", "until=24h"])?
        .ok()?;
    assert!(
        recent.stdout.contains("Total reclaimed space: 0B"),
        "{}",
        recent.stdout
    );
    assert_eq!(engine.inspect(&old, "{{.Id}}")?, old);

    let prune = engine.docker(&["image", "prune", "-f"])?.ok()?;
    assert!(
        prune.stdout.contains(&format!("deleted: {old}")),
        "{}",
        prune.stdout
    );
    assert!(
        prune.stdout.contains("Total reclaimed space: 2B"),
        "{}",
        prune.stdout
    );
    assert!(engine.docker(&["image", "inspect", &old])?.code != 0);

    // -a: everything no container uses. busybox is used by c1 and c2.
    engine.docker(&["tag", "busybox", "spare:1"])?.ok()?;
    engine.docker(&["rm", "c1", "c2"])?.ok()?;
    engine
        .docker(&["run", "--name", "keep", "app:1", "true"])?
        .ok()?;
    let all = engine.docker(&["image", "prune", "-a", "-f"])?.ok()?;
    assert!(
        all.stdout.contains("untagged: busybox:latest"),
        "{}",
        all.stdout
    );
    assert!(all.stdout.contains("untagged: spare:1"), "{}", all.stdout);
    let left = engine
        .docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"])?
        .ok()?;
    assert_eq!(left.stdout.trim(), "app:1");
    // busybox lost its tags but app:1 was committed from it: an intermediate image now,
    // listed only with -a.
    let with_all = engine.docker(&["images", "-a", "-q"])?.ok()?;
    assert_eq!(with_all.stdout.lines().count(), 2, "{}", with_all.stdout);

    let bad = engine.docker(&["image", "prune", "-f", "--filter", "color=red"])?;
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains("invalid filter 'color'"),
        "{}",
        bad.stderr
    );
    Ok(())
}

#[test]
fn system_df_counts_images_and_containers() -> anyhow::Result<()> {
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
            "echo hello > /f",
        ])?
        .ok()?;
    engine.docker(&["commit", "c1", "derived"])?.ok()?;
    let df = engine
        .docker(&[
            "system",
            "df",
            "--format",
            "{{.Type}}|{{.TotalCount}}|{{.Active}}",
        ])?
        .ok()?;
    let lines: Vec<&str> = df.stdout.lines().collect();
    assert_eq!(lines[0], "Images|2|1", "{lines:?}");
    assert_eq!(lines[1], "Containers|1|0", "{lines:?}");
    assert_eq!(lines[2], "Local Volumes|0|0", "{lines:?}");
    let verbose = engine.docker(&["system", "df", "-v"])?.ok()?;
    assert!(verbose.stdout.contains("derived"), "{}", verbose.stdout);
    Ok(())
}
