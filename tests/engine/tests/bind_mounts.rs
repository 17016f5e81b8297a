//! Bind mounts (`-v /host:/ctr[:opts]`, `--mount type=bind`) as dockerd makes them: files
//! cross both ways, `:ro` is read-only, a missing `-v` source is created and a missing
//! `--mount` source refused with moby's text, propagation follows the mode (`rshared` reaches
//! the host), `z`/`Z` are accepted, a file cannot cover a directory, `--mount
//! …,volume-nocopy` leaves a new volume unfilled, and `inspect` shows the mounts as dockerd
//! does (issue 17).

use std::process::Command;

use rmachine_tests_engine::Engine;

fn host_dir(engine: &Engine, name: &str) -> anyhow::Result<String> {
    let dir = engine.dir().join(name);
    std::fs::create_dir_all(&dir)?;
    Ok(dir.to_string_lossy().into_owned())
}

#[test]
fn files_cross_a_bind_both_ways_and_ro_refuses_writes() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let dir = host_dir(&engine, "shared")?;
    std::fs::write(format!("{dir}/from-host"), "written on the host\n")?;
    let rw = format!("{dir}:/data");
    let run = engine
        .docker(&[
            "run",
            "--rm",
            "-v",
            &rw,
            "busybox",
            "sh",
            "-c",
            "cat /data/from-host && echo written in the container > /data/from-ctr",
        ])?
        .ok()?;
    assert_eq!(run.stdout, "written on the host\n");
    assert_eq!(
        std::fs::read_to_string(format!("{dir}/from-ctr"))?,
        "written in the container\n"
    );
    let ro = format!("{dir}:/data:ro");
    let run = engine.docker(&[
        "run",
        "--rm",
        "-v",
        &ro,
        "busybox",
        "sh",
        "-c",
        "cat /data/from-host; touch /data/nope",
    ])?;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stdout, "written on the host\n");
    assert!(
        run.stderr.contains("Read-only file system"),
        "{}",
        run.stderr
    );
    assert!(!std::path::Path::new(&format!("{dir}/nope")).exists());
    // --mount with readonly, and the same file seen through it.
    let mount = format!("type=bind,source={dir},target=/m,readonly");
    let run = engine.docker(&[
        "run",
        "--rm",
        "--mount",
        &mount,
        "busybox",
        "sh",
        "-c",
        "cat /m/from-ctr; rm /m/from-ctr",
    ])?;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stdout, "written in the container\n");
    assert!(std::path::Path::new(&format!("{dir}/from-ctr")).exists());
    Ok(())
}

#[test]
fn a_bind_on_an_etc_file_replaces_the_engines() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let hosts = engine.dir().join("my-hosts");
    std::fs::write(&hosts, "10.1.2.3 mine\n")?;
    let spec = format!("{}:/etc/hosts:ro", hosts.display());
    let run = engine
        .docker(&[
            "run",
            "--rm",
            "-v",
            &spec,
            "busybox",
            "sh",
            "-c",
            "cat /etc/hosts; grep -c ' /etc/hosts ' /proc/mounts",
        ])?
        .ok()?;
    // The user's file, mounted once: the engine's is not mounted under it.
    assert_eq!(run.stdout, "10.1.2.3 mine\n1\n");
    Ok(())
}

#[test]
fn a_missing_source_is_created_for_v_and_refused_for_mount() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let missing = engine.dir().join("made/by/v");
    let spec = format!("{}:/x", missing.display());
    engine
        .docker(&["run", "--rm", "-v", &spec, "busybox", "touch", "/x/f"])?
        .ok()?;
    assert!(missing.join("f").is_file());
    let absent = engine.dir().join("absent").to_string_lossy().into_owned();
    let mount = format!("type=bind,src={absent},dst=/x");
    let run = engine.docker(&["run", "--rm", "--mount", &mount, "busybox", "true"])?;
    assert_eq!(run.code, 125, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "Error response from daemon: invalid mount config for type \"bind\": bind source \
             path does not exist: {absent}"
        )),
        "{}",
        run.stderr
    );
    assert!(!std::path::Path::new(&absent).exists());
    assert_eq!(engine.docker(&["ps", "-aq"])?.ok()?.stdout, "");
    Ok(())
}

#[test]
fn inspect_shows_binds_as_dockerd() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let dir = host_dir(&engine, "shown")?;
    let spec = format!("{dir}:/b:ro");
    engine
        .docker(&["create", "--name", "binds", "-v", &spec, "busybox"])?
        .ok()?;
    assert_eq!(
        engine.inspect("binds", "{{json .Mounts}}")?,
        format!(
            r#"[{{"Type":"bind","Source":"{dir}","Destination":"/b","Mode":"ro","RW":false,"Propagation":"rprivate"}}]"#
        )
    );
    assert_eq!(
        engine.inspect("binds", "{{json .HostConfig.Binds}}")?,
        format!(r#"["{spec}"]"#)
    );
    // `docker ps --filter volume=` matches a bind by its source or destination.
    for filter in [format!("volume={dir}"), "volume=/b".to_string()] {
        let ps = engine
            .docker(&["ps", "-a", "--format", "{{.Names}}", "--filter", &filter])?
            .ok()?;
        assert_eq!(ps.stdout, "binds\n", "{filter}");
    }
    Ok(())
}

/// A host directory made a shared mount for the test, unmounted when dropped.
struct SharedMount(String);

impl SharedMount {
    fn new(dir: &str) -> anyhow::Result<SharedMount> {
        for args in [&["--bind", dir, dir][..], &["--make-shared", dir][..]] {
            anyhow::ensure!(Command::new("mount").args(args).status()?.success());
        }
        Ok(SharedMount(dir.to_string()))
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").args(["-R", "-l", &self.0]).status();
    }
}

#[test]
fn propagation_follows_the_mode_and_shared_needs_a_shared_source() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let dir = host_dir(&engine, "prop")?;
    // `/` is private on this host: a shared bind of a directory on it is refused.
    let spec = format!("{dir}:/p:rshared");
    let mount_shared = format!("type=bind,source={dir},target=/p,bind-propagation=rshared");
    for flag in [["-v", &spec], ["--mount", &mount_shared]] {
        let run = engine.docker(&["run", "--rm", flag[0], flag[1], "busybox", "true"])?;
        assert_eq!(run.code, 125, "{run:?}");
        assert!(
            run.stderr.contains(&format!(
                "path {dir} is mounted on / but it is not a shared mount"
            )),
            "{}",
            run.stderr
        );
    }
    let _shared = SharedMount::new(&dir)?;
    std::fs::create_dir_all(format!("{dir}/sub"))?;
    let slave = format!("{dir}:/p:rslave");
    let private = format!("{dir}:/p");
    let mount_slave = format!("type=bind,source={dir},target=/p,bind-propagation=rslave");
    for (name, flag, spec) in [
        ("slave", "-v", &slave),
        ("private", "-v", &private),
        ("mslave", "--mount", &mount_slave),
    ] {
        engine
            .docker(&[
                "run", "-d", "--name", name, flag, spec, "busybox", "sleep", "1000",
            ])?
            .ok()?;
    }
    let sub = format!("{dir}/sub");
    anyhow::ensure!(Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs", &sub])
        .status()?
        .success());
    std::fs::write(format!("{sub}/late"), "")?;
    // A mount made on the host after the start reaches the rslave bind, not the rprivate one.
    let seen = |name: &str| -> anyhow::Result<String> {
        Ok(engine.docker(&["exec", name, "ls", "/p/sub"])?.ok()?.stdout)
    };
    assert_eq!(seen("slave")?, "late\n");
    assert_eq!(seen("mslave")?, "late\n");
    assert_eq!(seen("private")?, "");
    for name in ["slave", "mslave"] {
        assert_eq!(
            engine.inspect(name, "{{(index .Mounts 0).Propagation}}")?,
            "rslave",
            "{name}"
        );
    }
    engine
        .docker(&["rm", "-f", "slave", "private", "mslave"])?
        .ok()?;
    // rshared: what the container mounts there reaches the host, and nothing else does (the
    // container's root, /proc, /dev... stay in its namespace).
    let shared = format!("{dir}:/p:rshared");
    engine
        .docker(&[
            "run",
            "--rm",
            "--privileged",
            "-v",
            &shared,
            "busybox",
            "sh",
            "-c",
            "mkdir -p /p/fromctr && mount -t tmpfs tmpfs /p/fromctr && touch /p/fromctr/made",
        ])?
        .ok()?;
    assert!(std::path::Path::new(&format!("{dir}/fromctr/made")).exists());
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let containers = engine.data_root().join("containers");
    assert!(
        !table.contains(&*containers.to_string_lossy()),
        "a container mount reached the host: {table}"
    );
    Ok(())
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(String);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").args(["-l", &self.0]).status();
    }
}

#[test]
fn a_read_only_bind_is_read_only_all_the_way_down() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let dir = host_dir(&engine, "deep")?;
    let sub = format!("{dir}/sub");
    std::fs::create_dir_all(&sub)?;
    anyhow::ensure!(Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs", &sub])
        .status()?
        .success());
    let _tmpfs = Tmpfs(sub.clone());
    let ro = format!("{dir}:/d:ro");
    let run = engine.docker(&[
        "run",
        "--rm",
        "-v",
        &ro,
        "busybox",
        "sh",
        "-c",
        "touch /d/sub/f; grep ' /d/sub ' /proc/mounts",
    ])?;
    assert!(run.stderr.contains("Read-only file system"), "{run:?}");
    assert!(
        run.stdout.starts_with("tmpfs /d/sub tmpfs ro,"),
        "{}",
        run.stdout
    );
    assert!(!std::path::Path::new(&format!("{sub}/f")).exists());
    // Read-write, the submount stays writable.
    let rw = format!("{dir}:/d");
    engine
        .docker(&["run", "--rm", "-v", &rw, "busybox", "touch", "/d/sub/f"])?
        .ok()?;
    assert!(std::path::Path::new(&format!("{sub}/f")).exists());
    Ok(())
}

#[test]
fn selinux_labels_are_accepted_and_a_file_cannot_cover_a_directory() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let dir = host_dir(&engine, "labelled")?;
    std::fs::write(format!("{dir}/f"), "labelled\n")?;
    // `z`/`Z` relabel for SELinux; on a host without it dockerd accepts them and mounts.
    for mode in ["z", "Z", "ro,z"] {
        let spec = format!("{dir}:/data:{mode}");
        let run = engine
            .docker(&["run", "--rm", "-v", &spec, "busybox", "cat", "/data/f"])?
            .ok()?;
        assert_eq!(run.stdout, "labelled\n", "{mode}");
    }
    // A file where the image has a directory: refused with moby's text, the container is
    // removed (--rm), and the engine keeps serving.
    let before = engine.docker(&["ps", "-aq"])?.ok()?.stdout;
    let file = format!("{dir}/f:/etc");
    let run = engine.docker(&["run", "--rm", "-v", &file, "busybox", "true"])?;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("not a directory"), "{run:?}");
    assert!(
        run.stderr.contains(
            "Are you trying to mount a directory onto a file (or vice-versa)? \
             Check if the specified host path exists and is the expected type"
        ),
        "{run:?}"
    );
    assert_eq!(engine.docker(&["ps", "-aq"])?.ok()?.stdout, before);
    Ok(())
}

#[test]
fn mount_volume_nocopy_does_not_fill_a_new_volume() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let ls = |mount: &str| -> anyhow::Result<String> {
        Ok(engine
            .docker(&[
                "run", "--rm", "--mount", mount, "busybox", "ls", "-A", "/etc",
            ])?
            .ok()?
            .stdout)
    };
    // The engine's own /etc files (hosts, resolv.conf...) are mounted over either volume; the
    // image's passwd is there only when the volume was filled from it.
    let filled = ls("type=volume,source=filled,target=/etc")?;
    assert!(filled.lines().any(|l| l == "passwd"), "{filled:?}");
    let bare = ls("type=volume,source=bare,target=/etc,volume-nocopy")?;
    assert!(!bare.lines().any(|l| l == "passwd"), "{bare:?}");
    engine.docker(&["volume", "rm", "filled", "bare"])?.ok()?;
    Ok(())
}
