//! The data disk gives its growth back: after a large file on it is deleted, the machine's
//! qcow2 on the host holds fewer allocated blocks (ext4 `discard` in the guest, `discard=unmap`
//! on the QEMU drive).
#![cfg(rmachine_e2e)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::ensure;
use rmachine_e2e::Machine;

/// Bytes the host has allocated for a file (not its length: a qcow2 with holes is sparse).
fn allocated(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

#[test]
fn deleting_data_shrinks_the_disk_image() -> anyhow::Result<()> {
    const MB: u64 = 1024 * 1024;
    let machine = Machine::new("discard")?;
    machine.create(&["--no-share"])?.success()?;
    let image = machine.store().join("machines/discard/disk.qcow2");

    machine
        .rmachine(&[
            "ssh",
            "discard",
            "dd if=/dev/zero of=/mnt/data/big bs=1M count=200 && sync",
        ])?
        .success()?;
    let full = allocated(&image)?;
    machine
        .rmachine(&["ssh", "discard", "rm /mnt/data/big && sync"])?
        .success()?;
    // ext4 issues the discards when the deleting transaction commits (sync forces it).
    let mut after = allocated(&image)?;
    for _ in 0..20 {
        if full.saturating_sub(after) >= 150 * MB {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
        after = allocated(&image)?;
    }
    eprintln!(
        "disk image: {} MB allocated with the file, {} MB after deleting it",
        full / MB,
        after / MB
    );
    ensure!(
        full.saturating_sub(after) >= 150 * MB,
        "the disk image did not shrink: {} MB → {} MB",
        full / MB,
        after / MB
    );
    Ok(())
}
