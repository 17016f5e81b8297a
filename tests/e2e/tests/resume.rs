//! `stop --save` / `start`: a running container keeps running across a save and a resume
//! (same container start, uptime continued), the guest's clock is the host's right after the
//! resume, and a damaged state file falls back at once to a cold boot that keeps the data
//! disk. One machine: create, save, resume, save, cold boot (about 1.5 min under load here).
#![cfg(rmachine_e2e)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rmachine_e2e::Machine;
use rmachine_fixtures::{busybox_image, ArchiveFormat};

fn host_secs() -> anyhow::Result<i64> {
    Ok(i64::try_from(
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
    )?)
}

/// Seconds between the guest's clock and the host's (positive: the guest is behind).
fn guest_clock_lag(machine: &Machine) -> anyhow::Result<i64> {
    let before = host_secs()?;
    let out = machine
        .rmachine(&["ssh", &machine.name, "date +%s"])?
        .success()?;
    let after = host_secs()?;
    let guest: i64 = out.stdout.trim().parse()?;
    // The guest read its clock somewhere between `before` and `after`.
    Ok(if guest < before {
        before - guest
    } else if guest > after {
        after - guest
    } else {
        0
    })
}

fn started_at(machine: &Machine) -> anyhow::Result<String> {
    Ok(machine
        .docker(&["inspect", "--format", "{{.State.StartedAt}}", "sleeper"])?
        .success()?
        .stdout
        .trim()
        .to_owned())
}

#[test]
fn stop_save_and_start_resume_running_containers_with_the_right_clock() -> anyhow::Result<()> {
    let machine = Machine::new("resume")?;
    machine
        .create(&["--no-share", "--memory", "512", "--save-on-stop"])?
        .success()?;
    let tar = machine.store().join("busybox.tar");
    busybox_image(&tar, "busybox:latest", ArchiveFormat::DockerSave)?;
    machine
        .docker_with_stdin(&["load"], Some(&tar))?
        .success()?;
    machine
        .docker(&[
            "run", "-d", "--name", "sleeper", "busybox", "sleep", "100000",
        ])?
        .success()?;
    let started = started_at(&machine)?;
    // Something on the data disk the cold boot must keep.
    machine
        .rmachine(&[
            "ssh",
            &machine.name,
            "echo kept > /mnt/data/resume-marker && sync",
        ])?
        .success()?;

    // The machine was made with --save-on-stop: plain `stop` saves.
    let saved = machine.rmachine(&["stop", &machine.name])?.success()?;
    eprintln!("stop (save) took {:.2}s", saved.elapsed.as_secs_f64());
    assert!(saved.stdout.contains("state was saved"), "{}", saved.stdout);
    let state = machine.rmachine(&["status", &machine.name])?.success()?;
    assert_eq!(state.stdout.trim(), "Saved");
    // Time passes while the machine is saved: the guest's clock must catch up.
    std::thread::sleep(Duration::from_secs(5));
    let resumed = machine
        .rmachine(&["start", "--no-progress", &machine.name])?
        .success()?;
    eprintln!("start (resume) took {:.2}s", resumed.elapsed.as_secs_f64());
    assert!(
        resumed
            .stdout
            .contains("Resuming the VM from its saved state"),
        "{}",
        resumed.stdout
    );
    assert!(
        !resumed.stdout.contains("Writing the configuration drive"),
        "a resume boots nothing: {}",
        resumed.stdout
    );
    let lag = guest_clock_lag(&machine)?;
    assert!(lag.abs() <= 2, "guest clock off by {lag}s after the resume");
    let ps = machine
        .docker(&["ps", "--format", "{{.Names}} {{.Status}}"])?
        .success()?;
    assert!(
        ps.stdout
            .lines()
            .any(|l| l.starts_with("sleeper Up") && !l.contains("Less than a second")),
        "the container runs on: {}",
        ps.stdout
    );
    assert_eq!(
        started_at(&machine)?,
        started,
        "the same run of the container"
    );
    let running = machine
        .docker(&["inspect", "--format", "{{.State.Running}}", "sleeper"])?
        .success()?;
    assert_eq!(running.stdout.trim(), "true");

    // A damaged state (a truncated one is refused before QEMU runs: unit-tested in the
    // driver): QEMU rejects it, `start` says so, boots afresh, and the disk is intact.
    machine
        .rmachine(&["stop", "--save", &machine.name])?
        .success()?;
    let state_file = machine
        .store()
        .join("machines")
        .join(&machine.name)
        .join("vmstate.bin");
    let mut bytes = std::fs::read(&state_file)?;
    let len = bytes.len();
    bytes[..len.min(4096)].fill(0xa5);
    std::fs::write(&state_file, &bytes)?;
    let cold = machine
        .rmachine(&["start", "--no-progress", &machine.name])?
        .success()?;
    eprintln!(
        "start (state damaged inside) took {:.2}s",
        cold.elapsed.as_secs_f64()
    );
    // QEMU rejects the stream at once; the driver sees it go rather than waiting for QMP.
    assert!(
        cold.stdout.contains("The saved state was not used")
            && cold.stdout.contains("rejected the saved state")
            && !cold.stdout.contains("timed out"),
        "{}",
        cold.stdout
    );
    assert!(!state_file.exists(), "the damaged state is removed");
    let marker = machine
        .rmachine(&["ssh", &machine.name, "cat /mnt/data/resume-marker"])?
        .success()?;
    assert_eq!(marker.stdout.trim(), "kept");
    machine
        .docker(&["image", "inspect", "busybox"])?
        .success()?;
    // The guest's clock after a cold boot is the boot path's business (it read 4 s behind
    // once under load 15): printed, not asserted here.
    eprintln!(
        "guest clock after the cold boot: {}s behind",
        guest_clock_lag(&machine)?
    );
    Ok(())
}
