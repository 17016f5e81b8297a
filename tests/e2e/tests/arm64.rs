//! The arm64 guest (what Apple Silicon hosts boot, with hvf there) booted here under software
//! emulation: `qemu-system-aarch64` on the `virt` machine, an arm64 busybox image run by the
//! engine inside, and a graceful stop through virt's GPIO power button.
#![cfg(rmachine_e2e)]

use rmachine_e2e::{arm64_busybox, arm64_guest_image, Machine};
use rmachine_fixtures::{busybox_for, write_archive, ArchiveFormat};

#[test]
fn arm64_guest_runs_an_arm64_busybox_under_emulation() -> anyhow::Result<()> {
    let image = arm64_guest_image()?;
    let machine = Machine::new("arm64")?;
    // The guest's architecture defaults to the host's: on this x86_64 host an arm64 image is
    // refused before anything is written, with the way out.
    if cfg!(target_arch = "x86_64") {
        let refused = machine.create_from(&image, &[])?;
        assert_eq!(
            refused.code, 3,
            "a failed pre-create check:\n{}",
            refused.stderr
        );
        assert!(
            refused
                .stderr
                .contains("is built for aarch64 but the VM is x86_64")
                && refused.stderr.contains("pass --qemu-arch aarch64"),
            "{}",
            refused.stderr
        );
        assert!(!machine.store().join("machines/arm64").exists());
    }
    let created = machine
        .create_from(
            &image,
            &["--qemu-arch", "arm64", "--cpus", "2", "--memory", "1024"],
        )?
        .success()?;
    eprintln!(
        "arm64 guest under tcg: create (boot until the engine answers) took {:.1}s",
        created.elapsed.as_secs_f64()
    );
    let inspect = machine
        .rmachine(&["inspect", "--format", "{{.Driver.qemuArch}}", "arm64"])?
        .success()?;
    assert_eq!(inspect.stdout.trim(), "aarch64");

    let version = machine
        .docker(&["version", "--format", "{{.Server.Os}}/{{.Server.Arch}}"])?
        .success()?;
    assert_eq!(version.stdout.trim(), "linux/arm64");

    let tar = machine.store().join("busybox-arm64.tar");
    write_archive(
        &tar,
        &busybox_for("arm64", &arm64_busybox()?)?,
        Some("busybox:latest"),
        ArchiveFormat::DockerSave,
    )?;
    machine
        .docker(&["load", "-i", &tar.to_string_lossy()])?
        .success()?;
    let hi = machine
        .docker(&["run", "--rm", "busybox", "echo", "hi"])?
        .success()?;
    assert_eq!(hi.stdout, "hi\n");
    let uname = machine
        .docker(&["run", "--rm", "busybox", "uname", "-m"])?
        .success()?;
    assert_eq!(uname.stdout, "aarch64\n");

    // virt has no ACPI under direct kernel boot: the power button is a GPIO key.
    machine.rmachine(&["stop", "arm64"])?.success()?;
    let status = machine.rmachine(&["status", "arm64"])?.success()?;
    assert_eq!(status.stdout.trim(), "Stopped");
    machine.rmachine(&["rm", "-y", "arm64"])?.success()?;
    Ok(())
}
