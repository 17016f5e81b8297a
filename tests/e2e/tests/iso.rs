//! The bootable ISO (what the VirtualBox and Hyper-V drivers boot) boots here under QEMU, by
//! BIOS (isolinux) and by UEFI (OVMF + the ISO's GRUB), to an engine the docker CLI reaches.
#![cfg(rmachine_e2e)]

use std::time::Instant;

use anyhow::ensure;
use rmachine_e2e::Machine;

/// OVMF as one image for `-bios` (Debian's `ovmf` package).
const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

fn boots_to_the_engine(name: &str, firmware: &str, extra: &[&str]) -> anyhow::Result<()> {
    let machine = Machine::new(name)?;
    let started = Instant::now();
    let mut args = vec!["--no-share", "--qemu-boot-iso"];
    args.extend_from_slice(extra);
    machine.create(&args)?.success()?;
    eprintln!(
        "{name}: created in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let version = machine
        .docker(&["version", "--format", "{{.Server.Os}}"])?
        .success()?;
    ensure!(version.stdout.trim() == "linux", "{}", version.stdout);
    // The kernel came from the ISO's boot loader (isolinux and GRUB name the image they load;
    // QEMU's direct kernel boot does not), by the firmware asked for.
    let cmdline = machine
        .rmachine(&["ssh", name, "cat /proc/cmdline"])?
        .success()?;
    ensure!(
        cmdline.stdout.contains("BOOT_IMAGE=/boot/vmlinuz"),
        "not booted from the ISO: {}",
        cmdline.stdout
    );
    let efi = machine
        .rmachine(&[
            "ssh",
            name,
            "test -d /sys/firmware/efi && echo uefi || echo bios",
        ])?
        .success()?;
    ensure!(
        efi.stdout.trim() == firmware,
        "booted by {}, not {firmware}",
        efi.stdout.trim()
    );
    Ok(())
}

#[test]
fn the_iso_boots_by_bios() -> anyhow::Result<()> {
    boots_to_the_engine("isobios", "bios", &[])
}

#[test]
fn the_iso_boots_by_uefi() -> anyhow::Result<()> {
    boots_to_the_engine("isouefi", "uefi", &["--qemu-firmware", OVMF])
}
