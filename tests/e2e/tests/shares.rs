//! Host folders shared into the machine at the same path (virtio-9p): a file written on the
//! host is read in the guest, a file written in the guest appears on the host owned by the
//! user running QEMU, a `:ro` share refuses writes, `inspect` lists the shares, and
//! `docker run -v HOSTPATH:/src` in the machine binds the host's folder.
#![cfg(rmachine_e2e)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use anyhow::{ensure, Context};
use rmachine_e2e::Machine;
use rmachine_fixtures::{busybox_image, ArchiveFormat};

#[test]
fn host_folders_are_shared_at_the_same_path() -> anyhow::Result<()> {
    let rw = tempfile::Builder::new()
        .prefix("rmachine-share-")
        .tempdir()?;
    let ro = tempfile::Builder::new()
        .prefix("rmachine-share-ro-")
        .tempdir()?;
    let rw_path = rw.path().to_string_lossy().into_owned();
    let ro_path = ro.path().to_string_lossy().into_owned();
    std::fs::write(rw.path().join("from-host.txt"), "written on the host\n")?;
    std::fs::write(ro.path().join("ro.txt"), "read only\n")?;

    let machine = Machine::new("shares")?;
    machine
        .create(&[
            "--share",
            &rw_path,
            "--share",
            &format!("{ro_path}:/srv/ro:ro"),
        ])?
        .success()?;

    // The generic kernel has ext4 as a module: the data disk must still mount.
    let disk = machine
        .rmachine(&["inspect", "--format", "{{.DataDisk.Mounted}}", "shares"])?
        .success()?;
    assert_eq!(disk.stdout, "true\n", "data disk not mounted");

    let shares = machine
        .rmachine(&["inspect", "--format", "{{json .Vm.shares}}", "shares"])?
        .success()?;
    ensure!(
        shares
            .stdout
            .contains(&format!("\"guestPath\":\"{rw_path}\""))
            && shares.stdout.contains("\"guestPath\":\"/srv/ro\"")
            && shares.stdout.contains("\"readOnly\":true"),
        "inspect does not list the shares: {}",
        shares.stdout
    );

    // Host → guest, at the same path.
    let read = machine
        .rmachine(&["ssh", "shares", &format!("cat {rw_path}/from-host.txt")])?
        .success()?;
    assert_eq!(read.stdout, "written on the host\n");

    // Guest → host, owned by the user QEMU runs as (this test's user).
    machine
        .rmachine(&[
            "ssh",
            "shares",
            &format!("echo written in the guest > {rw_path}/from-guest.txt"),
        ])?
        .success()?;
    let written = rw.path().join("from-guest.txt");
    assert_eq!(
        std::fs::read_to_string(&written).context("the guest's file on the host")?,
        "written in the guest\n"
    );
    let uid = Command::new("id").arg("-u").output()?;
    let uid: u32 = String::from_utf8_lossy(&uid.stdout).trim().parse()?;
    assert_eq!(std::fs::metadata(&written)?.uid(), uid);

    // What a user types: `docker run -v "$PWD":/src`, with a host path under a share.
    let tar = machine.store().join("busybox.tar");
    busybox_image(&tar, "busybox:latest", ArchiveFormat::DockerSave)?;
    machine
        .docker(&["load", "-i", &tar.to_string_lossy()])?
        .success()?;
    let bind = format!("{rw_path}:/src");
    // A folder anyone may write to, so that the container's uid 1234 may create a file: the
    // question here is who owns it on the host, not the folder's permissions.
    std::fs::set_permissions(rw.path(), std::fs::Permissions::from_mode(0o777))?;
    let read = machine
        .docker(&[
            "run",
            "--rm",
            "-v",
            &bind,
            "busybox",
            "cat",
            "/src/from-host.txt",
        ])?
        .success()?;
    assert_eq!(read.stdout, "written on the host\n");
    machine
        .docker(&[
            "run",
            "--rm",
            "-u",
            "1234:1234",
            "-v",
            &bind,
            "busybox",
            "sh",
            "-c",
            "echo from a container > /src/from-container.txt",
        ])?
        .success()?;
    let written = rw.path().join("from-container.txt");
    assert_eq!(std::fs::read_to_string(&written)?, "from a container\n");
    // security_model=none: QEMU as a user creates the file as that user (the guest's chown is
    // refused and ignored); QEMU as root, as here, can honour the container's uid.
    let expected = if uid == 0 { 1234 } else { uid };
    assert_eq!(std::fs::metadata(&written)?.uid(), expected);

    // Read-only share: readable under its own guest path, writes refused.
    let read = machine
        .rmachine(&["ssh", "shares", "cat /srv/ro/ro.txt"])?
        .success()?;
    assert_eq!(read.stdout, "read only\n");
    let refused = machine.rmachine(&["ssh", "shares", "echo x > /srv/ro/new.txt"])?;
    ensure!(refused.code != 0, "a write to a :ro share succeeded");
    ensure!(
        !ro.path().join("new.txt").exists(),
        "a write to a :ro share reached the host"
    );
    Ok(())
}

#[test]
fn a_missing_host_folder_is_refused_at_create() -> anyhow::Result<()> {
    let machine = Machine::new("noshare")?;
    let missing = machine.store().join("no-such-folder");
    let run = machine.create(&["--share", &missing.to_string_lossy()])?;
    assert_eq!(run.code, 1, "{run:?}");
    ensure!(
        run.stderr
            .contains(&format!("host folder {} does not exist", missing.display())),
        "unexpected error: {}",
        run.stderr
    );
    ensure!(
        !machine.store().join("machines/noshare").exists(),
        "a machine directory was made"
    );
    Ok(())
}
