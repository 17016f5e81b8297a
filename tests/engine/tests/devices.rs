//! `--device` and `--device-cgroup-rule`: a node that works inside, limited by its cgroup
//! permissions.

use rmachine_tests_engine::Engine;

/// `/dev/fuse` is outside Docker's default device list, so only `--device` makes it usable.
const FUSE: &str = "/dev/fuse";

#[test]
fn a_device_is_usable_at_its_container_path_with_its_permissions() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    assert!(std::path::Path::new(FUSE).exists(), "this host has {FUSE}");
    // Opening /dev/fuse read-write succeeds (reading it would wait for a mount).
    let open_rw = "exec 3<>/dev/myfuse && echo opened";
    let run = engine
        .docker(&[
            "run",
            "--rm",
            "--device",
            "/dev/fuse:/dev/myfuse",
            "busybox",
            "sh",
            "-c",
            open_rw,
        ])?
        .ok()?;
    assert_eq!(run.stdout, "opened\n");

    // Read-only cgroup permission: opening for writing is refused by the device cgroup.
    let run = engine.docker(&[
        "run",
        "--rm",
        "--device",
        "/dev/fuse:/dev/myfuse:r",
        "busybox",
        "sh",
        "-c",
        open_rw,
    ])?;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("Operation not permitted"), "{run:?}");
    let run = engine
        .docker(&[
            "run",
            "--rm",
            "--device",
            "/dev/fuse:/dev/myfuse:r",
            "busybox",
            "sh",
            "-c",
            "exec 3</dev/myfuse && echo read",
        ])?
        .ok()?;
    assert_eq!(run.stdout, "read\n");

    // A cgroup rule adds the write permission back.
    let run = engine
        .docker(&[
            "run",
            "--rm",
            "--device",
            "/dev/fuse:/dev/myfuse:r",
            "--device-cgroup-rule",
            "c 10:229 w",
            "busybox",
            "sh",
            "-c",
            open_rw,
        ])?
        .ok()?;
    assert_eq!(run.stdout, "opened\n");

    // Without --device the node is not there, and one made with mknod cannot be opened.
    let run = engine.docker(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "mknod /tmp/fuse c 10 229 && exec 3<>/tmp/fuse",
    ])?;
    assert_ne!(run.code, 0, "{run:?}");
    Ok(())
}

#[test]
fn a_missing_device_is_refused_and_leaves_nothing() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let run = engine.docker(&["run", "--device", "/dev/nope", "busybox", "true"])?;
    // The CLI, not the engine, picks the code from the text: "no such file or directory" in a
    // daemon error is 127 (cli/command/container/run.go `toStatusError`), as with dockerd.
    assert_eq!(run.code, 127, "{run:?}");
    assert!(
        run.stderr.contains(
            "error gathering device information while adding custom device \"/dev/nope\": no such file or directory"
        ),
        "{run:?}"
    );
    let all = engine.docker(&["ps", "-aq"])?.ok()?;
    assert_eq!(all.stdout, "", "a container was left behind");
    Ok(())
}

#[test]
fn a_bad_cgroup_rule_is_refused_with_125_and_leaves_nothing() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    // Through the API, as the CLI checks the rule's format itself.
    let run = engine.docker(&[
        "run",
        "--device-cgroup-rule",
        "c 1:3 rwm",
        "--device-cgroup-rule",
        "c 4294967296:1 r",
        "busybox",
        "true",
    ])?;
    assert_eq!(run.code, 125, "{run:?}");
    assert!(
        run.stderr
            .contains("invalid major value in device cgroup rule format: 'c 4294967296:1 r'"),
        "{run:?}"
    );
    let all = engine.docker(&["ps", "-aq"])?.ok()?;
    assert_eq!(all.stdout, "", "a container was left behind");
    Ok(())
}

#[test]
fn a_directory_of_devices_brings_every_node_under_it() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "this host has /dev/net/tun"
    );
    let run = engine
        .docker(&[
            "run",
            "--rm",
            "--device",
            "/dev/net:/dev/mynet",
            "busybox",
            "sh",
            "-c",
            "stat -c '%F %t:%T' /dev/mynet/tun && exec 3<>/dev/mynet/tun && echo opened",
        ])?
        .ok()?;
    assert_eq!(run.stdout, "character special file a:c8\nopened\n");
    Ok(())
}
