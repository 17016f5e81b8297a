//! An engine whose data root's filesystem is full still starts and lets users free space
//! through the API: reads, `rm`, `prune`, `rmi`; a pull that fills the disk fails naming the
//! image and stores nothing; a volume that fills it gives its writer ENOSPC and keeps what was
//! written.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};
use rmachine_fixtures::registry::push_image;
use rmachine_fixtures::{busybox, LayerBuilder};
use rmachine_tests_engine::registry::{require_registry, Auth, Registry};
use rmachine_tests_engine::{require_root, share_network_with_engines, Engine};

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
    // An exec still starts on the full disk: its state lives under the exec root (a tmpfs
    // in the guest, as dockerd's /var/run/docker), not on the data disk.
    let kept = engine
        .docker(&["exec", "running", "cat", "/v/keep"])?
        .ok()?;
    assert_eq!(kept.stdout, "kept\n");
    let tty = engine
        .docker(&["exec", "-t", "running", "echo", "on a tty"])?
        .ok()?;
    assert_eq!(tty.stdout.trim(), "on a tty");
    // Inspect still answers on the full disk; the space is given back from the host.
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

/// Names of the entries of `dir` (none when it does not exist), sorted.
fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_pull_that_fills_the_disk_names_the_image_and_stores_nothing() -> Result<()> {
    if !require_root() || !require_registry() {
        return Ok(());
    }
    share_network_with_engines()?;
    let registry = Registry::start(Auth::Open)?;
    let mut engine = Engine::prepare()?;
    let _fs = SmallFs::mount(engine.data_root(), "24m")?;
    engine.spawn()?;
    engine.load_busybox()?;
    // 32 MiB that does not compress: it cannot fit once extracted.
    let mut data = Vec::with_capacity(32 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < 32 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    let mut big = busybox()?;
    big.layers
        .push(LayerBuilder::new().file("big.bin", &data, 0o644).build()?);
    registry.seed(|host| push_image(host, "big", Some("1"), &big))?;
    // A layer of its own, so that staging and extraction run again after the failure.
    let mut small_image = busybox()?;
    small_image.layers.push(
        LayerBuilder::new()
            .file("fits.txt", b"stored after the failure\n", 0o644)
            .build()?,
    );
    registry.seed(|host| push_image(host, "small", Some("1"), &small_image))?;
    let layers_before = entries(&engine.data_root().join("image/layers"));

    let name = format!("{}/big:1", registry.host);
    let failed = engine.docker_within(Duration::from_secs(120), &["pull", &name])?;
    assert_ne!(failed.code, 0, "{failed:?}");
    assert!(
        failed.stderr.contains(&format!("cannot store {name}: "))
            && failed.stderr.contains("No space left on device"),
        "the error must name the image and the cause: {failed:?}"
    );
    // Nothing half-stored: no image, no new layer, an empty staging area.
    assert_eq!(
        engine
            .docker(&["images", "--format", "{{.Repository}}"])?
            .ok()?
            .stdout
            .trim(),
        "busybox"
    );
    assert_eq!(
        entries(&engine.data_root().join("image/layers")),
        layers_before
    );
    assert_eq!(
        entries(&engine.data_root().join("image/tmp")),
        Vec::<String>::new()
    );
    // The engine keeps serving: containers run, a pull that fits completes, and the image
    // store reads back the same after a restart.
    engine
        .docker_within(Duration::from_secs(30), &["run", "--rm", "busybox", "true"])?
        .ok()?;
    let small = format!("{}/small:1", registry.host);
    engine.docker(&["pull", &small])?.ok()?;
    assert_eq!(
        entries(&engine.data_root().join("image/layers")).len(),
        layers_before.len() + 1,
        "the small image's own layer is stored"
    );
    let read = engine
        .docker(&["run", "--rm", &small, "cat", "/fits.txt"])?
        .ok()?;
    assert_eq!(read.stdout, "stored after the failure\n");
    engine.restart()?;
    let mut listed: Vec<String> = engine
        .docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"])?
        .ok()?
        .stdout
        .lines()
        .map(str::to_string)
        .collect();
    listed.sort();
    let mut expected = vec!["busybox:latest".to_string(), small];
    expected.sort();
    assert_eq!(listed, expected);
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
