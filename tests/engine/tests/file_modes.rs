//! The engine's files on a shared host: dockerd's modes, so that another user can neither read
//! a container's config (its environment holds secrets) nor run what it planted in its upper
//! directory; and data roots made by an older engine are fixed at start.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use anyhow::Result;
use rmachine_tests_engine::Engine;

fn mode(path: &Path) -> Result<u32> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o7777)
}

/// Runs `args` as user and group nobody (65534) with no supplementary groups.
fn as_nobody(args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .output()?)
}

fn check_modes(engine: &Engine, id: &str) -> Result<()> {
    let data = engine.data_root();
    let dir = data.join("containers").join(id);
    assert_eq!(mode(&data)?, 0o710, "data root");
    assert_eq!(mode(&data.join("containers"))?, 0o710, "containers/");
    assert_eq!(mode(&dir)?, 0o710, "containers/<id>");
    assert_eq!(mode(&dir.join("config.v2.json"))?, 0o600, "config.v2.json");
    assert_eq!(mode(&dir.join("runtime.json"))?, 0o600, "runtime.json");
    assert_eq!(
        mode(&dir.join(format!("{id}-json.log")))?,
        0o640,
        "json log"
    );
    assert_eq!(mode(&data.join("image"))?, 0o700, "image/");
    Ok(())
}

#[test]
fn another_user_can_neither_read_a_config_nor_run_from_an_upper_dir() -> Result<()> {
    let Some(mut engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    // The test's temp dir is 0700; open it as a host's /var/lib is, so that only the data
    // root's own modes stand between another user and the engine's files.
    fs::set_permissions(engine.dir(), fs::Permissions::from_mode(0o755))?;
    let id = engine
        .docker(&[
            "run",
            "--name",
            "planter",
            "-e",
            "SECRET=hunter2",
            "busybox",
            "sh",
            "-c",
            "cp /bin/busybox /suid && chmod 4755 /suid && echo planted",
        ])?
        .ok()?;
    assert!(id.stdout.contains("planted"), "{id:?}");
    let id = engine.inspect("planter", "{{.Id}}")?;
    check_modes(&engine, &id)?;

    let dir = engine.data_root().join("containers").join(&id);
    let config = dir.join("config.v2.json");
    assert!(fs::read_to_string(&config)?.contains("hunter2"));
    let read = as_nobody(&["cat", &config.to_string_lossy()])?;
    assert!(!read.status.success(), "nobody read the config");
    assert!(!String::from_utf8_lossy(&read.stdout).contains("hunter2"));
    let planted = dir.join("upper/suid");
    assert!(
        planted.exists(),
        "the container's file is not in its upper dir"
    );
    let run = as_nobody(&[&planted.to_string_lossy(), "id", "-u"])?;
    assert!(
        !run.status.success(),
        "nobody ran the planted setuid binary: {}",
        String::from_utf8_lossy(&run.stdout)
    );

    // A data root left world-readable by an older engine is fixed at the next start.
    engine.terminate()?;
    let data = engine.data_root();
    let log = dir.join(format!("{id}-json.log"));
    for (path, old) in [
        (data.clone(), 0o755),
        (data.join("containers"), 0o755),
        (dir.clone(), 0o755),
        (config.clone(), 0o644),
        (log, 0o644),
        (data.join("image"), 0o755),
    ] {
        fs::set_permissions(&path, fs::Permissions::from_mode(old))?;
    }
    engine.spawn()?;
    check_modes(&engine, &id)?;
    assert!(!as_nobody(&["cat", &config.to_string_lossy()])?
        .status
        .success());
    Ok(())
}
