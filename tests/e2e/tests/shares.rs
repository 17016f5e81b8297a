//! Host folders shared into the machine at the same path, over virtio-fs (chosen by default
//! where a virtiofsd is installed, as in CI) and over virtio-9p (`--qemu-share-transport 9p`),
//! with the same assertions: a file written on the host is read in the guest, a file written
//! in the guest appears on the host owned by the user running QEMU, a `:ro` share refuses
//! writes, `inspect` lists the shares and their transport, `docker run -v HOSTPATH:/src`
//! in the machine binds the host's folder, and a share the guest cannot mount (its mount point
//! would lie inside the read-only share) is named by `create`, `ls` and `inspect`. The same
//! again over SFTP on the machine's SSH connection (`--qemu-share-transport sftp`, the
//! fallback where the hypervisor has no sharing device), whose files belong to the user who
//! runs `rmachine`, whose shares are served again when the guest's end of their channel is
//! killed, and come back after `rmachine stop` and `start`.
#![cfg(rmachine_e2e)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use anyhow::{ensure, Context};
use rmachine_e2e::Machine;
use rmachine_fixtures::{busybox_image, ArchiveFormat};

#[test]
fn host_folders_are_shared_at_the_same_path_over_virtio_fs() -> anyhow::Result<()> {
    shared_at_the_same_path("vfs", &[], "virtiofs")
}

#[test]
fn host_folders_are_shared_at_the_same_path_over_9p() -> anyhow::Result<()> {
    shared_at_the_same_path("ninep", &["--qemu-share-transport", "9p"], "9p")
}

#[test]
fn host_folders_are_shared_at_the_same_path_over_sftp() -> anyhow::Result<()> {
    shared_at_the_same_path("sftp", &["--qemu-share-transport", "sftp"], "sftp")
}

/// Creates machine `name` with a writable and a `:ro` share (plus `extra` create options) and
/// checks what a user sees; the writable share must go over `transport`.
fn shared_at_the_same_path(name: &str, extra: &[&str], transport: &str) -> anyhow::Result<()> {
    let sftp = transport == "sftp";
    // The filesystem type (and for sftp the source) in the guest's /proc/mounts: fuser mounts
    // without libfuse as plain `fuse` (the subtype is a fusermount option it never passes).
    let (source, fstype) = if sftp {
        (Some("rmachine-sftp"), "fuse")
    } else {
        (None, transport)
    };
    let rw = tempfile::Builder::new()
        .prefix("rmachine-share-")
        .tempdir()?;
    let ro = tempfile::Builder::new()
        .prefix("rmachine-share-ro-")
        .tempdir()?;
    let nested = tempfile::Builder::new()
        .prefix("rmachine-share-nested-")
        .tempdir()?;
    let rw_path = rw.path().to_string_lossy().into_owned();
    let ro_path = ro.path().to_string_lossy().into_owned();
    std::fs::write(rw.path().join("from-host.txt"), "written on the host\n")?;
    std::fs::write(ro.path().join("ro.txt"), "read only\n")?;

    let machine = Machine::new(name)?;
    let ro_spec = format!("{ro_path}:/srv/ro:ro");
    // Mounted after the read-only share, whose folder has no `sub`: its mount point cannot be
    // made, a failure only the guest sees.
    let nested_spec = format!("{}:/srv/ro/sub", nested.path().display());
    let mut args = vec![
        "--share",
        &rw_path,
        "--share",
        &ro_spec,
        "--share",
        &nested_spec,
    ];
    args.extend_from_slice(extra);
    let created = machine.create(&args)?.success()?;
    let failed_share = format!("share {} on /srv/ro/sub", nested.path().display());
    ensure!(
        created.stderr.contains(&format!(
            "{failed_share} could not be mounted in the machine"
        )),
        "create did not warn about the share it could not mount: {}",
        created.stderr
    );
    let ls = machine
        .rmachine(&["ls", "--format", "{{.Name}} {{.Error}}"])?
        .success()?;
    if sftp {
        // The port agent mounts these and tells why one failed.
        ensure!(
            ls.stdout
                .starts_with(&format!("{name} {failed_share} not mounted: ")),
            "ls does not name the share: {}",
            ls.stdout
        );
    } else {
        assert_eq!(ls.stdout, format!("{name} {failed_share} not mounted\n"));
    }
    let mounts_of = if sftp {
        "{{range .PortAgent.Shares}}{{.GuestPath}}={{.Mounted}} {{end}}"
    } else {
        "{{range .ShareMounts.Shares}}{{.GuestPath}}={{.Mounted}} {{end}}"
    };
    let report = machine
        .rmachine(&["inspect", "--format", mounts_of, name])?
        .success()?;
    assert_eq!(
        report.stdout,
        format!("{rw_path}=true /srv/ro=true /srv/ro/sub=false \n")
    );

    // The generic kernel has ext4 as a module: the data disk must still mount.
    let disk = machine
        .rmachine(&["inspect", "--format", "{{.DataDisk.Mounted}}", name])?
        .success()?;
    assert_eq!(disk.stdout, "true\n", "data disk not mounted");

    let shares = machine
        .rmachine(&["inspect", "--format", "{{json .Vm.shares}}", name])?
        .success()?;
    ensure!(
        shares
            .stdout
            .contains(&format!("\"guestPath\":\"{rw_path}\""))
            && shares.stdout.contains("\"guestPath\":\"/srv/ro\"")
            && shares.stdout.contains("\"readOnly\":true")
            && shares
                .stdout
                .contains(&format!("\"transport\":\"{transport}\"")),
        "inspect does not list the shares over {fstype}: {}",
        shares.stdout
    );
    let mounts = machine
        .rmachine(&["ssh", name, "cat /proc/mounts"])?
        .success()?;
    ensure!(
        mounts
            .stdout
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(rw_path.as_str())
                && l.split(' ').nth(2) == Some(fstype)
                && source.is_none_or(|s| l.split(' ').next() == Some(s))),
        "{rw_path} is not mounted over {fstype}: {}",
        mounts.stdout
    );

    // Host → guest, at the same path.
    let read = machine
        .rmachine(&["ssh", name, &format!("cat {rw_path}/from-host.txt")])?
        .success()?;
    assert_eq!(read.stdout, "written on the host\n");

    // Guest → host, owned by the user QEMU runs as (this test's user).
    machine
        .rmachine(&[
            "ssh",
            name,
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
    // 9p's security_model=none and virtiofsd alike: run as a user, they create the file as that
    // user (the guest's owner cannot be honoured); run as root, as here, they honour the
    // container's uid.
    // Over SFTP the host's side always writes as the user running rmachine.
    let expected = if uid == 0 && !sftp { 1234 } else { uid };
    assert_eq!(std::fs::metadata(&written)?.uid(), expected);

    // Read-only share: readable under its own guest path, writes refused.
    let read = machine
        .rmachine(&["ssh", name, "cat /srv/ro/ro.txt"])?
        .success()?;
    assert_eq!(read.stdout, "read only\n");
    let refused = machine.rmachine(&["ssh", name, "echo x > /srv/ro/new.txt"])?;
    ensure!(refused.code != 0, "a write to a :ro share succeeded");
    ensure!(
        !ro.path().join("new.txt").exists(),
        "a write to a :ro share reached the host"
    );

    if sftp {
        // The channel's own `sftp-mount` dies while SSH stays up: the port agent opens a new
        // channel, which the guest's daemon (still holding the mount) takes. The guest's
        // busybox has no pgrep: `pidof` lists the rmachine-init processes (never a shell; the
        // daemon runs as `/init`, the binary `rmachine-init` links to; a process can be listed
        // under both names, hence `sort -u`).
        let sftp_mounts = |daemons: bool| {
            format!(
                "for p in $(pidof rmachine-init init); do grep -qa sftp-mount /proc/$p/cmdline || continue; \
                 if grep -qa -e --serve /proc/$p/cmdline; then [ {daemons} = true ] && echo $p; \
                 else [ {daemons} = false ] && echo $p; fi; done | sort -u"
            )
        };
        let daemons = || -> anyhow::Result<String> {
            Ok(machine
                .rmachine(&["ssh", name, &sftp_mounts(true)])?
                .success()?
                .stdout)
        };
        let before = daemons()?;
        ensure!(!before.trim().is_empty(), "no share daemon in the guest");
        machine
            .rmachine(&["ssh", name, &format!("kill -9 $({})", sftp_mounts(false))])?
            .success()
            .context("no channel's sftp-mount to kill")?;
        std::fs::write(rw.path().join("after-kill.txt"), "served again\n")?;
        let read_again = format!("cat '{rw_path}/after-kill.txt'");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let read = machine.rmachine(&["ssh", name, &read_again])?;
            if read.code == 0 && read.stdout == "served again\n" {
                break;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "the share was not served again after its channel's sftp-mount was killed: {read:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        assert_eq!(daemons()?, before, "the same daemons hold the mounts");

        // The port agent mounts the shares again after a restart of the machine.
        machine.rmachine(&["stop", name])?.success()?;
        machine.rmachine(&["start", name])?.success()?;
        let read = machine
            .docker(&[
                "run",
                "--rm",
                "-v",
                &bind,
                "busybox",
                "cat",
                "/src/from-container.txt",
            ])?
            .success()?;
        assert_eq!(read.stdout, "from a container\n", "share back after start");
    }
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
