//! The data disk survives power loss: load images and run writing containers, `rmachine kill`
//! (SIGKILL of QEMU), `rmachine start`, five times; every acknowledged image and container is
//! still there and usable, and after a clean stop the filesystem is clean.
#![cfg(rmachine_e2e)]

use std::process::Command;

use rmachine_e2e::Machine;
use rmachine_fixtures::{busybox_image, ArchiveFormat};

const ROUNDS: usize = 5;
/// The image the writing containers run; each round loads one more under its own tag.
const BASE: &str = "busybox:base";

#[test]
fn data_disk_survives_five_kills_under_write_load() -> anyhow::Result<()> {
    let machine = Machine::new("disk")?;
    let created = machine
        .create(&["--cpus", "2", "--memory", "1024"])?
        .success()?;
    eprintln!("create took {:.1}s", created.elapsed.as_secs_f64());
    let first = machine
        .rmachine(&[
            "inspect",
            "--format",
            "{{.DataDisk.BootAction}} {{.DataDisk.Filesystem}} {{.DataDisk.Journal}} {{.DataDisk.Mounted}}",
            "disk",
        ])?
        .success()?;
    assert_eq!(
        first.stdout, "Formatted ext4 true true\n",
        "first boot formats"
    );

    let tar = machine.store().join("busybox.tar");
    busybox_image(&tar, BASE, ArchiveFormat::DockerSave)?;
    machine
        .docker(&["load", "-i", &tar.to_string_lossy()])?
        .success()?;
    let mut images: Vec<String> = Vec::new();
    let mut kept: Vec<String> = Vec::new();
    for round in 1..=ROUNDS {
        // A container that ran to completion writing a file. It syncs: what it wrote is
        // acknowledged once it exits, as for any program that wants its data to survive a
        // crash (and its `sync` flushes everything written before, so the engine's own
        // acknowledged work comes after it).
        let done = format!("done{round}");
        machine
            .docker(&[
                "run",
                "--name",
                &done,
                BASE,
                "sh",
                "-c",
                &format!(
                    "cat /written 2>/dev/null; echo round{round} > /written; \
                     dd if=/dev/zero of=/blob bs=64k count=64 2>/dev/null; sync"
                ),
            ])?
            .success()?;
        kept.push(done.clone());
        // Unacknowledged load while the plug is pulled: a container writing as fast as it can.
        let writer = format!("writer{round}");
        machine
            .docker(&[
                "run",
                "-d",
                "--name",
                &writer,
                BASE,
                "sh",
                "-c",
                "i=0; while true; do echo $i >> /log; i=$((i+1)); done",
            ])?
            .success()?;
        kept.push(writer.clone());
        // The engine's acknowledged work, last, with the plug pulled right after: an image load
        // that printed "Loaded image" and a created container must be on disk when the CLI
        // returns (ext4 would only commit them within 5 s on its own).
        let tag = format!("busybox:r{round}");
        busybox_image(&tar, &tag, ArchiveFormat::DockerSave)?;
        let load = machine
            .docker(&["load", "-i", &tar.to_string_lossy()])?
            .success()?;
        assert!(
            load.stdout.contains(&format!("Loaded image: {tag}")),
            "{}",
            load.stdout
        );
        images.push(tag.clone());
        let keep = format!("keep{round}");
        machine
            .docker(&["create", "--name", &keep, &tag, "echo", &keep])?
            .success()?;
        kept.push(keep.clone());

        machine.rmachine(&["kill", "disk"])?.success()?;
        let started = machine.rmachine(&["start", "disk"])?.success()?;
        eprintln!(
            "round {round}: start after kill took {:.1}s",
            started.elapsed.as_secs_f64()
        );

        let disk = machine
            .rmachine(&[
                "inspect",
                "--format",
                "{{.DataDisk.Mounted}} {{.DataDisk.BootAction}} {{.DataDisk.LastCheck.Result}}",
                "disk",
            ])?
            .success()?;
        let fields: Vec<&str> = disk.stdout.split_whitespace().collect();
        assert_eq!(fields.first(), Some(&"true"), "mounted: {}", disk.stdout);
        assert_eq!(
            fields.get(1),
            Some(&"Checked"),
            "a killed machine's disk is checked at the next boot: {}",
            disk.stdout
        );
        assert!(
            matches!(fields.get(2), Some(&"Clean") | Some(&"Repaired")),
            "check result: {}",
            disk.stdout
        );

        let listed = machine
            .docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"])?
            .success()?;
        for image in &images {
            assert!(
                listed.stdout.lines().any(|l| l == image),
                "round {round}: {image} lost:\n{}",
                listed.stdout
            );
        }
        let ps = machine
            .docker(&["ps", "-a", "--format", "{{.Names}}"])?
            .success()?;
        for name in &kept {
            assert!(
                ps.stdout.lines().any(|l| l == name),
                "round {round}: container {name} lost:\n{}",
                ps.stdout
            );
        }
        // Usable: a new container runs, the kept ones start (one finds the file it wrote
        // before the kill in its own layer), the killed writer can be removed.
        let run = machine
            .docker(&["run", "--rm", &tag, "echo", "alive"])?
            .success()?;
        assert_eq!(run.stdout, "alive\n");
        let kept_run = machine.docker(&["start", "-a", &keep])?.success()?;
        assert_eq!(kept_run.stdout, format!("{keep}\n"));
        let done_run = machine.docker(&["start", "-a", &done])?.success()?;
        assert_eq!(done_run.stdout, format!("round{round}\n"));
        machine.docker(&["rm", "-f", &writer])?.success()?;
        kept.retain(|n| n != &writer);
    }

    // Every container of every round can still be removed, every image too.
    for name in &kept {
        machine.docker(&["rm", "-f", name])?.success()?;
    }
    for image in images.iter().map(String::as_str).chain([BASE]) {
        machine.docker(&["rmi", image])?.success()?;
    }

    machine.rmachine(&["stop", "disk"])?.success()?;
    let qcow2 = machine.store().join("machines/disk/disk.qcow2");
    let raw = machine.store().join("disk.raw");
    let convert = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&qcow2)
        .arg(&raw)
        .output()?;
    assert!(convert.status.success(), "qemu-img convert: {convert:?}");
    let fsck = Command::new("e2fsck").arg("-fn").arg(&raw).output()?;
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "e2fsck -fn after a clean stop finds nothing:\n{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    std::fs::remove_file(&raw)?;
    Ok(())
}
