//! An engine whose data root's filesystem is full still starts and lets users free space
//! through the API: reads, `rm`, `prune`, `rmi`; a volume that fills it gives its writer
//! ENOSPC and keeps what was written.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};
use rmachine_tests_engine::{require_root, Engine};

/// A small tmpfs mounted on the data root, unmounted when dropped (after the engine, which is
/// declared later and so dropped first).
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(path: PathBuf, size: &str) -> Result<SmallFs> {
        std::fs::create_dir_all(&path)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()?;
        if !status.success() {
            bail!("cannot mount a tmpfs on {}", path.display());
        }
        Ok(SmallFs(path))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn an_engine_on_a_full_disk_starts_and_frees_space_through_the_api() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut engine = Engine::prepare()?;
    let _fs = SmallFs::mount(engine.data_root(), "48m")?;
    engine.spawn()?;
    engine.load_busybox()?;
    // An image no container uses, with a layer of its own (4 MiB).
    let mut spare = rmachine_fixtures::busybox()?;
    spare.config["config"]["Cmd"] = serde_json::json!(["true"]);
    spare.layers.push(
        rmachine_fixtures::LayerBuilder::new()
            .file("spare", &vec![7u8; 4 << 20], 0o644)
            .build()?,
    );
    let spare_tar = engine.dir().join("spare.tar");
    rmachine_fixtures::write_archive(
        &spare_tar,
        &spare,
        Some("spare:latest"),
        rmachine_fixtures::ArchiveFormat::DockerSave,
    )?;
    engine
        .docker(&["load", "-i", &spare_tar.to_string_lossy()])?
        .ok()?;
    engine
        .docker(&[
            "run", "-d", "--name", "running", "-v", "vol:/v", "busybox", "sleep", "1000",
        ])?
        .ok()?;
    // A volume fills the disk while a container writes to it: the writer gets ENOSPC, what
    // was written before is kept, and the container and the engine go on.
    let filled = engine.docker(&[
        "exec",
        "running",
        "sh",
        "-c",
        "echo kept > /v/keep && dd if=/dev/zero of=/v/fill bs=1M",
    ])?;
    assert!(
        filled.stderr.contains("No space left on device"),
        "the volume did not fill the disk: {filled:?}"
    );
    // Inspect still answers on the full disk; the space is given back from the host (an exec
    // needs room for its own state).
    let mountpoint = engine
        .docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", "vol"])?
        .ok()?;
    std::fs::remove_file(PathBuf::from(mountpoint.stdout.trim()).join("fill"))?;
    let kept = engine
        .docker(&["exec", "running", "cat", "/v/keep"])?
        .ok()?;
    assert_eq!(kept.stdout, "kept\n");
    // A container fills the disk through its upper directory.
    let filled = engine.docker(&[
        "run",
        "--name",
        "filler",
        "busybox",
        "dd",
        "if=/dev/zero",
        "of=/fill",
        "bs=1M",
    ])?;
    assert!(
        filled.stderr.contains("No space left on device"),
        "the disk did not fill: {filled:?}"
    );
    // The engine dies with a running container: at start it must rewrite that record, and
    // it has no engine id to read.
    engine.crash()?;
    std::fs::remove_file(engine.data_root().join("engine-id"))?;
    engine.spawn()?;

    let listed = engine
        .docker(&["ps", "-a", "--format", "{{.Names}} {{.State}}"])?
        .ok()?;
    assert!(listed.stdout.contains("running exited"), "{listed:?}");
    assert!(listed.stdout.contains("filler exited"), "{listed:?}");
    engine.docker(&["info"])?.ok()?;
    engine.docker(&["images"])?.ok()?;
    // Each way of freeing space works on a full disk (refilled after each).
    let data = engine.data_root();
    engine.docker(&["rmi", "spare"])?.ok()?;
    let images = engine
        .docker(&["images", "--format", "{{.Repository}}"])?
        .ok()?;
    assert_eq!(images.stdout.trim(), "busybox");
    fill(&data.join("fill-1"))?;
    engine.docker(&["rm", "filler"])?.ok()?;
    fill(&data.join("fill-2"))?;
    engine.docker(&["container", "prune", "-f"])?.ok()?;
    assert_eq!(engine.docker(&["ps", "-aq"])?.ok()?.stdout.trim(), "");
    fill(&data.join("fill-3"))?;
    engine.docker(&["rmi", "busybox"])?.ok()?;
    assert_eq!(engine.docker(&["images", "-q"])?.ok()?.stdout.trim(), "");
    // After a restart the removed images stay removed (their tags were written last).
    engine.restart()?;
    assert_eq!(engine.docker(&["images", "-q"])?.ok()?.stdout.trim(), "");
    for i in 1..=3 {
        std::fs::remove_file(data.join(format!("fill-{i}")))?;
    }
    // Space is back: the engine writes again.
    engine.load_busybox()?;
    engine
        .docker_within(Duration::from_secs(30), &["run", "--rm", "busybox", "true"])?
        .ok()?;
    // The volume's file survived the full disk, the crash and the prunes.
    let kept = engine
        .docker(&["run", "--rm", "-v", "vol:/v", "busybox", "cat", "/v/keep"])?
        .ok()?;
    assert_eq!(kept.stdout, "kept\n");
    Ok(())
}

/// Fills the filesystem holding `path` by writing zeros to it until it is full.
fn fill(path: &std::path::Path) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    for chunk in [1 << 20, 4096, 1] {
        let zeros = vec![0u8; chunk];
        loop {
            match file.write_all(&zeros) {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(28) => break,
                Err(err) => return Err(err.into()),
            }
        }
    }
    Ok(())
}
