//! An engine whose data root's filesystem is full still starts and lets users free space
//! through the API: reads, `rm`, `prune`, `rmi`.

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
    engine
        .docker(&["run", "-d", "--name", "running", "busybox", "sleep", "1000"])?
        .ok()?;
    // A container fills the disk through its upper directory.
    let fill = engine.docker(&[
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
        fill.stderr.contains("No space left on device"),
        "the disk did not fill: {fill:?}"
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
    engine.docker(&["rm", "filler"])?.ok()?;
    // Space is back: the engine writes again.
    engine
        .docker_within(
            Duration::from_secs(30),
            &["run", "--name", "after", "busybox", "true"],
        )?
        .ok()?;
    engine.docker(&["container", "prune", "-f"])?.ok()?;
    engine.docker(&["rmi", "busybox"])?.ok()?;
    assert_eq!(engine.docker(&["ps", "-aq"])?.ok()?.stdout.trim(), "");
    Ok(())
}
