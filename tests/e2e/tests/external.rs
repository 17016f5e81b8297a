//! An external driver drives a real VM: `rmachine-driver-extqemu` (this crate's example
//! plugin, the QEMU driver behind the driver protocol) found on PATH by `create -d extqemu`.
#![cfg(rmachine_e2e)]

use rmachine_e2e::Machine;
use rmachine_fixtures::{busybox_image, ArchiveFormat};

#[test]
fn an_external_driver_creates_runs_stops_and_removes_a_machine() -> anyhow::Result<()> {
    let machine = Machine::new("ext")?;

    let help = machine
        .rmachine(&["create", "-d", "extqemu", "--help"])?
        .success()?;
    assert!(
        help.stdout.contains("--extqemu-accel") && !help.stdout.contains("--qemu-accel"),
        "create -d extqemu --help must list the plugin's flags only:\n{}",
        help.stdout
    );

    machine
        .create_with_driver("extqemu", &["--extqemu-accel", "auto", "--no-share"])?
        .success()?;

    let driver = machine
        .rmachine(&["inspect", "-f", "{{json .Driver.PluginOptions}}", "ext"])?
        .success()?;
    assert_eq!(driver.stdout.trim(), r#"{"extqemu-accel":"auto"}"#);
    let record = std::fs::read_to_string(machine.store().join("machines/ext/config.json"))?;
    assert!(
        !record.contains("qemuAccel"),
        "the record keeps the plugin's options, not the qemu driver's:\n{record}"
    );

    let ls = machine.rmachine(&["ls"])?.success()?;
    let row = ls
        .stdout
        .lines()
        .find(|l| l.starts_with("ext "))
        .unwrap_or_default()
        .to_string();
    assert!(
        row.contains("extqemu") && row.contains("Running"),
        "ls row: {row:?}"
    );

    let tar = machine.store().join("busybox.tar");
    busybox_image(&tar, "busybox:latest", ArchiveFormat::DockerSave)?;
    machine
        .docker(&["load", "-i", &tar.to_string_lossy()])?
        .success()?;
    let hi = machine
        .docker(&["run", "--rm", "busybox", "echo", "hi"])?
        .success()?;
    assert_eq!(hi.stdout, "hi\n");

    machine.rmachine(&["stop", "ext"])?.success()?;
    let status = machine.rmachine(&["status", "ext"])?.success()?;
    assert_eq!(status.stdout.trim(), "Stopped");

    machine.rmachine(&["rm", "-y", "ext"])?.success()?;
    assert!(
        !machine.store().join("machines/ext").exists(),
        "rm must remove the machine directory"
    );
    Ok(())
}
