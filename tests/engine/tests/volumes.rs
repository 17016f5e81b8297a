//! Named and anonymous volumes through the docker CLI: `docker volume create|ls|inspect|rm|
//! prune`, a volume made by `-v name:/path` and filled from the image, data kept across
//! container removal and an engine killed with SIGKILL, the image's `VOLUME`s, `rm -v`,
//! `--rm`, `--volumes-from`, and a volume in use that cannot be removed (issue 17).

use anyhow::Result;
use rmachine_fixtures::{ArchiveFormat, LayerBuilder};
use rmachine_tests_engine::Engine;
use serde_json::{json, Value};

/// Loads `vol-image`: busybox plus `/data/seed` and `VOLUME /data`.
fn load_volume_image(engine: &Engine) -> Result<()> {
    let mut image = rmachine_fixtures::busybox()?;
    image.layers.push(
        LayerBuilder::new()
            .dir("data", 0o750)
            .file("data/seed", b"from the image\n", 0o644)
            .build()?,
    );
    image.config["config"]["Volumes"] = json!({"/data": {}});
    let tar = engine.dir().join("vol-image.tar");
    rmachine_fixtures::write_archive(
        &tar,
        &image,
        Some("vol-image:latest"),
        ArchiveFormat::DockerSave,
    )?;
    engine
        .docker(&["load", "-i", &tar.to_string_lossy()])?
        .ok()?;
    Ok(())
}

fn volume_names(engine: &Engine) -> Result<Vec<String>> {
    Ok(engine
        .docker(&["volume", "ls", "-q"])?
        .ok()?
        .stdout
        .lines()
        .map(str::to_string)
        .collect())
}

#[test]
fn volume_commands_create_list_inspect_and_remove() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let created = engine
        .docker(&["volume", "create", "--label", "team=web", "data"])?
        .ok()?;
    assert_eq!(created.stdout, "data\n");
    let inspect: Value =
        serde_json::from_str(&engine.docker(&["volume", "inspect", "data"])?.ok()?.stdout)?;
    let v = &inspect[0];
    assert_eq!(v["Name"], "data");
    assert_eq!(v["Driver"], "local");
    assert_eq!(v["Scope"], "local");
    assert_eq!(v["Labels"], json!({"team": "web"}));
    let mountpoint = engine.data_root().join("volumes/data/_data");
    assert_eq!(v["Mountpoint"], mountpoint.to_string_lossy().as_ref());
    assert!(mountpoint.is_dir());
    assert!(
        v["CreatedAt"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{v}"
    );
    engine.docker(&["volume", "create", "other"])?.ok()?;
    assert_eq!(volume_names(&engine)?, ["data", "other"]);
    let ls = engine
        .docker(&[
            "volume",
            "ls",
            "--filter",
            "label=team=web",
            "--format",
            "{{.Driver}} {{.Name}}",
        ])?
        .ok()?;
    assert_eq!(ls.stdout, "local data\n");
    let bad = engine.docker(&["volume", "create", "-o", "bogus=1", "x1"])?;
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains("create x1: invalid option: \"bogus\""),
        "{}",
        bad.stderr
    );
    let bad = engine.docker(&["volume", "create", "a/b"])?;
    assert!(
        bad.stderr
            .contains("includes invalid characters for a local volume name"),
        "{}",
        bad.stderr
    );
    engine.docker(&["volume", "rm", "other"])?.ok()?;
    let missing = engine.docker(&["volume", "inspect", "other"])?;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("get other: no such volume"),
        "{}",
        missing.stderr
    );
    assert!(!engine.data_root().join("volumes/other").exists());
    // `docker inspect NAME` finds volumes too.
    assert_eq!(
        engine.inspect("data", "{{.Name}} {{.Driver}}")?,
        "data local"
    );
    // dockerd's volume events.
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 1;
    let events = engine
        .docker(&[
            "events",
            "--since",
            "0",
            "--until",
            &until.to_string(),
            "--filter",
            "type=volume",
            "--format",
            "{{.Action}} {{.Actor.ID}} {{.Actor.Attributes.driver}}",
        ])?
        .ok()?;
    assert_eq!(
        events.stdout,
        "create data local\ncreate other local\ndestroy other local\n"
    );
    Ok(())
}

#[test]
fn a_named_volume_is_filled_from_the_image_and_outlives_containers_and_a_crash() -> Result<()> {
    let Some(mut engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    load_volume_image(&engine)?;
    // Created on first use, filled with the image's /data.
    let run = engine
        .docker(&[
            "run",
            "--name",
            "writer",
            "-v",
            "keep:/data",
            "vol-image",
            "sh",
            "-c",
            "cat /data/seed; stat -c %a /data; echo mine > /data/mine",
        ])?
        .ok()?;
    // Its content and the directory's mode come from the image.
    assert_eq!(run.stdout, "from the image\n750\n");
    assert_eq!(
        engine.inspect("writer", "{{json .Mounts}}")?,
        format!(
            r#"[{{"Type":"volume","Name":"keep","Source":"{}","Destination":"/data","Driver":"local","Mode":"z","RW":true,"Propagation":""}}]"#,
            engine.data_root().join("volumes/keep/_data").display()
        )
    );
    let ps = engine
        .docker(&[
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            "volume=keep",
        ])?
        .ok()?;
    assert_eq!(ps.stdout, "writer\n");
    // In use: refused, with dockerd's text, even with -f.
    let id = engine.inspect("writer", "{{.Id}}")?;
    for args in [
        &["volume", "rm", "keep"][..],
        &["volume", "rm", "-f", "keep"][..],
    ] {
        let rm = engine.docker(args)?;
        assert_eq!(rm.code, 1, "{rm:?}");
        assert!(
            rm.stderr
                .contains(&format!("remove keep: volume is in use - [{id}]")),
            "{}",
            rm.stderr
        );
    }
    engine.docker(&["rm", "-v", "writer"])?.ok()?;
    // A named volume outlives `rm -v` and a SIGKILLed engine.
    engine.restart()?;
    let run = engine
        .docker(&[
            "run",
            "--rm",
            "-v",
            "keep:/data",
            "vol-image",
            "cat",
            "/data/mine",
            "/data/seed",
        ])?
        .ok()?;
    assert_eq!(run.stdout, "mine\nfrom the image\n");
    // A non-empty volume is not filled again, and nocopy leaves an empty one empty.
    let run = engine
        .docker(&[
            "run",
            "--rm",
            "-v",
            "bare:/data:nocopy",
            "vol-image",
            "ls",
            "-A",
            "/data",
        ])?
        .ok()?;
    assert_eq!(run.stdout, "");
    engine.docker(&["volume", "rm", "keep", "bare"])?.ok()?;
    assert!(volume_names(&engine)?.is_empty());
    Ok(())
}

#[test]
fn anonymous_volumes_come_from_the_image_and_v_path_and_go_with_rm_v() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    load_volume_image(&engine)?;
    engine
        .docker(&[
            "run",
            "--name",
            "anon",
            "-v",
            "/scratch",
            "vol-image",
            "sh",
            "-c",
            "cat /data/seed; echo s > /scratch/s",
        ])?
        .ok()?;
    let names = volume_names(&engine)?;
    assert_eq!(names.len(), 2, "{names:?}");
    for name in &names {
        assert_eq!(name.len(), 64, "{name}");
        let labels = engine
            .docker(&["volume", "inspect", "-f", "{{json .Labels}}", name])?
            .ok()?;
        assert_eq!(
            labels.stdout.trim(),
            r#"{"com.docker.volume.anonymous":""}"#
        );
    }
    assert_eq!(
        engine.inspect(
            "anon",
            "{{range .Mounts}}{{.Destination}} {{.Type}} {{.Mode}};{{end}}"
        )?,
        "/data volume ;/scratch volume ;"
    );
    // `--volumes-from` shares them, read-only when asked.
    let run = engine.docker(&[
        "run",
        "--rm",
        "--volumes-from",
        "anon:ro",
        "busybox",
        "sh",
        "-c",
        "cat /scratch/s; touch /data/x",
    ])?;
    assert_eq!(run.stdout, "s\n", "{run:?}");
    assert!(
        run.stderr.contains("Read-only file system"),
        "{}",
        run.stderr
    );
    engine.docker(&["rm", "-v", "anon"])?.ok()?;
    assert!(volume_names(&engine)?.is_empty());
    // `--rm` takes its anonymous volumes along; named ones stay.
    engine
        .docker(&["run", "--rm", "-v", "named:/n", "vol-image", "true"])?
        .ok()?;
    assert_eq!(volume_names(&engine)?, ["named"]);
    Ok(())
}

#[test]
fn prune_removes_unused_anonymous_volumes_unless_all_is_asked() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    load_volume_image(&engine)?;
    engine.docker(&["volume", "create", "named"])?.ok()?;
    engine
        .docker(&["volume", "create", "--label", "keep=1", "labelled"])?
        .ok()?;
    engine
        .docker(&["create", "--name", "holder", "-v", "/held", "busybox"])?
        .ok()?;
    engine
        .docker(&["run", "--name", "gone", "vol-image", "true"])?
        .ok()?;
    engine.docker(&["rm", "gone"])?.ok()?;
    let held = engine.inspect("holder", "{{(index .Mounts 0).Name}}")?;
    let all = volume_names(&engine)?;
    assert_eq!(all.len(), 4, "{all:?}");
    let dangling = engine
        .docker(&["volume", "ls", "-q", "--filter", "dangling=true"])?
        .ok()?;
    assert!(!dangling.stdout.contains(&held), "{}", dangling.stdout);
    assert_eq!(dangling.stdout.lines().count(), 3);
    let prune = engine.docker(&["volume", "prune", "-f"])?.ok()?;
    assert!(
        prune.stdout.starts_with("Deleted Volumes:\n"),
        "{}",
        prune.stdout
    );
    assert!(
        prune.stdout.contains("Total reclaimed space: 15B"),
        "{}",
        prune.stdout
    );
    let mut left = volume_names(&engine)?;
    left.sort();
    let mut expected = vec!["labelled".to_string(), "named".to_string(), held.clone()];
    expected.sort();
    assert_eq!(left, expected);
    engine
        .docker(&["volume", "prune", "-f", "--all", "--filter", "label!=keep"])?
        .ok()?;
    let mut left = volume_names(&engine)?;
    left.sort();
    let mut expected = vec!["labelled".to_string(), held];
    expected.sort();
    assert_eq!(left, expected);
    Ok(())
}

#[test]
fn docker_cp_goes_through_volumes_and_a_read_only_root_takes_uploads_there() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let file = engine.dir().join("upload.txt");
    std::fs::write(&file, "uploaded\n")?;
    let file = file.to_string_lossy().into_owned();
    engine
        .docker(&[
            "create",
            "--name",
            "ro",
            "--read-only",
            "-v",
            "box:/box",
            "busybox",
            "sleep",
            "1000",
        ])?
        .ok()?;
    // Its first start makes the mount point; stopped, an upload there lands in the volume,
    // not in the container's layer.
    engine.docker(&["start", "ro"])?.ok()?;
    engine.docker(&["kill", "ro"])?.ok()?;
    engine.docker(&["wait", "ro"])?.ok()?;
    engine.docker(&["cp", &file, "ro:/box/"])?.ok()?;
    let in_volume = engine.data_root().join("volumes/box/_data/upload.txt");
    assert_eq!(std::fs::read_to_string(&in_volume)?, "uploaded\n");
    // Elsewhere the read-only root still refuses, `..` out of the volume included.
    for target in ["ro:/tmp", "ro:/box/../tmp"] {
        let refused = engine.docker(&["cp", &file, target])?;
        assert_eq!(refused.code, 1, "{refused:?}");
        assert!(
            refused
                .stderr
                .contains("container rootfs is marked read-only"),
            "{target}: {}",
            refused.stderr
        );
    }
    // A symlink in the volume leading out of it meets the read-only root.
    std::os::unix::fs::symlink("/tmp", engine.data_root().join("volumes/box/_data/out"))?;
    let refused = engine.docker(&["cp", &file, "ro:/box/out/"])?;
    assert_eq!(refused.code, 1, "{refused:?}");
    let ls = engine.docker_command(&["cp", "ro:/tmp", "-"]).output()?;
    assert!(!String::from_utf8_lossy(&ls.stdout).contains("upload.txt"));
    // Reading a stopped container's volume path reads the volume.
    let out = engine
        .docker_command(&["cp", "ro:/box/upload.txt", "-"])
        .output()?;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("uploaded\n"));
    // Running: the same rule.
    engine.docker(&["start", "ro"])?.ok()?;
    std::fs::write(engine.dir().join("upload.txt"), "second\n")?;
    engine.docker(&["cp", &file, "ro:/box/again.txt"])?.ok()?;
    let run = engine
        .docker(&["exec", "ro", "cat", "/box/again.txt"])?
        .ok()?;
    assert_eq!(run.stdout, "second\n");
    Ok(())
}

#[test]
fn an_auto_remove_container_left_by_a_killed_engine_takes_its_anonymous_volume_along() -> Result<()>
{
    let Some(mut engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run", "-d", "--rm", "-v", "/scratch", "-v", "kept:/k", "busybox", "sleep", "1000",
        ])?
        .ok()?;
    assert_eq!(volume_names(&engine)?.len(), 2);
    engine.restart()?;
    assert_eq!(engine.docker(&["ps", "-aq"])?.ok()?.stdout, "");
    assert_eq!(volume_names(&engine)?, ["kept"]);
    Ok(())
}

#[test]
fn removing_a_device_volume_still_mounted_keeps_the_device_files() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let device = engine.dir().join("device");
    std::fs::create_dir(&device)?;
    std::fs::write(device.join("precious"), "keep me\n")?;
    let device_opt = format!("device={}", device.display());
    engine
        .docker(&[
            "volume",
            "create",
            "-o",
            "type=none",
            "-o",
            "o=bind",
            "-o",
            &device_opt,
            "dev",
        ])?
        .ok()?;
    let seen = engine
        .docker(&[
            "run",
            "--rm",
            "-v",
            "dev:/x",
            "busybox",
            "cat",
            "/x/precious",
        ])?
        .ok()?;
    assert_eq!(seen.stdout, "keep me\n");
    // Something else keeps the device mounted on the volume (a second mount over the
    // engine's): unmounting once does not free it.
    let data = engine.data_root().join("volumes/dev/_data");
    let status = std::process::Command::new("mount")
        .arg("--bind")
        .arg(&device)
        .arg(&data)
        .status()?;
    assert!(status.success());
    let refused = engine.docker(&["volume", "rm", "dev"])?;
    let still_there = std::fs::read_to_string(device.join("precious"));
    // Whatever happened, leave no mount behind.
    while std::process::Command::new("umount")
        .arg(&data)
        .stderr(std::process::Stdio::null())
        .status()?
        .success()
    {}
    assert_eq!(still_there?, "keep me\n");
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused.stderr.contains("dev") && refused.stderr.contains("still mounted"),
        "{}",
        refused.stderr
    );
    assert!(volume_names(&engine)?.contains(&"dev".to_string()));
    // Once nothing is mounted there, it goes, and the device's files stay.
    engine.docker(&["volume", "rm", "dev"])?.ok()?;
    assert!(!volume_names(&engine)?.contains(&"dev".to_string()));
    assert!(!engine.data_root().join("volumes/dev").exists());
    assert_eq!(
        std::fs::read_to_string(device.join("precious"))?,
        "keep me\n"
    );
    Ok(())
}

#[test]
fn a_failed_create_keeps_an_anonymous_volume_the_request_named() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    // An anonymous volume left by a container removed without -v.
    engine
        .docker(&["create", "--name", "first", "-v", "/data", "busybox"])?
        .ok()?;
    let anonymous = engine.inspect("first", "{{(index .Mounts 0).Name}}")?;
    assert_eq!(anonymous.len(), 64, "{anonymous}");
    engine.docker(&["rm", "first"])?.ok()?;
    engine
        .docker(&["create", "--name", "taken", "busybox"])?
        .ok()?;
    // Named explicitly by a create that fails (the name is taken): it stays.
    let bind = format!("{anonymous}:/x");
    let failed = engine.docker(&[
        "create", "--name", "taken", "-v", &bind, "-v", "/fresh", "busybox",
    ])?;
    assert_ne!(failed.code, 0, "{failed:?}");
    assert!(failed.stderr.contains("Conflict"), "{}", failed.stderr);
    let names = volume_names(&engine)?;
    assert!(names.contains(&anonymous), "{names:?}");
    // The one that create made for `/fresh` went with it.
    assert_eq!(names.len(), 1, "{names:?}");
    Ok(())
}
