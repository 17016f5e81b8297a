//! `-v` and `--mount` specifications as dockerd reads them: its errors for invalid ones
//! (nothing created), `--mount type=tmpfs` with its size and mode, and `--mount
//! type=volume` with driver options and labels for the volume it creates (issue 17).

use anyhow::Result;
use rmachine_tests_engine::Engine;

#[test]
fn invalid_specs_get_dockerds_errors_and_leave_nothing() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let cases: &[(&[&str], &str)] = &[
        (&["-v", "/a:/b:rx"], "invalid mode: rx"),
        (&["-v", "/a:/b:ro,rw"], "invalid mode: ro,rw"),
        (
            &["-v", "/a:b"],
            "invalid volume specification: '/a:b': invalid mount config for type \"bind\": \
             invalid mount path: 'b' mount path must be absolute",
        ),
        (
            &["-v", "data:/d:shared"],
            "invalid volume specification: 'data:/d:shared': invalid mount config for type \
             \"volume\": field BindOptions must not be specified",
        ),
        (
            &["-v", "/tmp:/x", "-v", "/srv:/x"],
            "Duplicate mount point: /x",
        ),
        (
            &["-v", "named:/x", "-v", "/anon", "-v", "/srv:/x"],
            "Duplicate mount point: /x",
        ),
        (
            &["--mount", "type=volume,dst=/x,readonly"],
            "invalid mount config for type \"volume\": must not set ReadOnly mode when using \
             anonymous volumes",
        ),
        (
            &["--mount", "type=bind,src=relative,dst=/x"],
            "invalid mount config for type \"bind\": invalid mount path: 'relative' mount path \
             must be absolute",
        ),
        (
            &["--mount", "type=tmpfs,dst=/"],
            "invalid mount config for type \"tmpfs\": invalid specification: destination can't \
             be '/'",
        ),
        (
            &["-v", "x:/x", "--volume-driver", "nfs"],
            "rmachine-engine does not support volume drivers (--volume-driver) yet",
        ),
    ];
    for (options, message) in cases {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(options);
        args.extend_from_slice(&["busybox", "true"]);
        let run = engine.docker(&args)?;
        assert_eq!(run.code, 125, "{options:?}: {run:?}");
        assert!(
            run.stderr
                .contains(&format!("Error response from daemon: {message}")),
            "{options:?}: {}",
            run.stderr
        );
    }
    // A missing `--volumes-from` container is a 404 (on which the CLI goes on to pull the
    // image, as with dockerd).
    let (status, body) = engine.request(
        "POST",
        "/v1.45/containers/create",
        r#"{"Image":"busybox","HostConfig":{"VolumesFrom":["nosuch"]}}"#,
    )?;
    assert_eq!(
        (status, body.trim()),
        (404, r#"{"message":"No such container: nosuch"}"#)
    );
    assert_eq!(engine.docker(&["ps", "-aq"])?.ok()?.stdout, "");
    assert_eq!(engine.docker(&["volume", "ls", "-q"])?.ok()?.stdout, "");
    // A create refused for its name leaves no anonymous volume behind.
    engine
        .docker(&["create", "--name", "dup", "busybox"])?
        .ok()?;
    let run = engine.docker(&["create", "--name", "dup", "-v", "/anon", "busybox"])?;
    assert!(run.stderr.contains("is already in use"), "{run:?}");
    assert_eq!(engine.docker(&["volume", "ls", "-q"])?.ok()?.stdout, "");
    Ok(())
}

#[test]
fn tmpfs_mounts_get_their_size_and_mode() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let run = engine
        .docker(&[
            "run",
            "--rm",
            "--mount",
            "type=tmpfs,dst=/t,tmpfs-size=1m,tmpfs-mode=0700",
            "busybox",
            "sh",
            "-c",
            "stat -c %a /t; grep ' /t ' /proc/mounts",
        ])?
        .ok()?;
    let mut lines = run.stdout.lines();
    assert_eq!(lines.next(), Some("700"));
    let mount = lines.next().unwrap_or_default();
    assert!(mount.starts_with("tmpfs /t tmpfs rw,"), "{mount}");
    for option in ["nosuid", "nodev", "noexec", "size=1024k", "mode=700"] {
        assert!(mount.contains(option), "{option}: {mount}");
    }
    Ok(())
}

#[test]
fn a_mount_creates_its_volume_with_labels_and_local_driver_options() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let run = engine
        .docker(&[
            "run",
            "--rm",
            "--mount",
            "type=volume,src=ram,dst=/r,volume-label=kind=ram,volume-opt=type=tmpfs,\
             volume-opt=device=tmpfs,volume-opt=o=size=2m",
            "busybox",
            "sh",
            "-c",
            "echo kept > /r/f; grep ' /r ' /proc/mounts",
        ])?
        .ok()?;
    assert!(run.stdout.starts_with("tmpfs /r tmpfs "), "{}", run.stdout);
    assert!(run.stdout.contains("size=2048k"), "{}", run.stdout);
    let inspect = engine
        .docker(&[
            "volume",
            "inspect",
            "-f",
            "{{json .Labels}} {{json .Options}}",
            "ram",
        ])?
        .ok()?;
    assert_eq!(
        inspect.stdout.trim(),
        r#"{"kind":"ram"} {"device":"tmpfs","o":"size=2m","type":"tmpfs"}"#
    );
    // The device stays mounted while the volume exists: the next container sees the file.
    let run = engine
        .docker(&["run", "--rm", "-v", "ram:/r", "busybox", "cat", "/r/f"])?
        .ok()?;
    assert_eq!(run.stdout, "kept\n");
    let mountpoint = engine.data_root().join("volumes/ram/_data");
    engine.docker(&["volume", "rm", "ram"])?.ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert!(
        !mounts.contains(&*mountpoint.to_string_lossy()),
        "the volume's device is still mounted"
    );
    Ok(())
}
