//! `stop --save` / `start`: a running container keeps running across a save and a resume
//! (same container start, uptime continued, its published port answers again), the guest's
//! clock is the host's right after the resume (set through the clock port, not over SSH), a
//! folder shared over SFTP stays mounted in a running container's bind mount and sees files
//! the host writes after the resume, the spent state is gone, and a damaged state
//! file falls back at once to a cold boot that keeps the data disk, including writes made
//! just before the save and never synced by the test. One machine: create, save, resume,
//! save, cold boot (about 1.5 min under load here).
#![cfg(rmachine_e2e)]

use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// A free TCP port on the host's loopback.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The body of `GET /` on 127.0.0.1:`port`, if it answers.
fn http_get(port: u16) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

/// Waits up to `limit` for the published port to serve the page.
fn page_served(port: u16, limit: Duration) -> bool {
    let began = Instant::now();
    while began.elapsed() < limit {
        if http_get(port).as_deref() == Some("published\n") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
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
    let shared = machine.store().join("shared");
    std::fs::create_dir_all(&shared)?;
    std::fs::write(shared.join("before.txt"), "written before the save\n")?;
    let share = format!("{}:/share", shared.display());
    machine
        .create(&[
            "--qemu-share-transport",
            "sftp",
            "--share",
            &share,
            "--memory",
            "512",
            "--save-on-stop",
        ])?
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
    machine
        .docker(&[
            "run",
            "-d",
            "--name",
            "reader",
            "-v",
            "/share:/data",
            "busybox",
            "sleep",
            "100000",
        ])?
        .success()?;
    let before = machine
        .docker(&["exec", "reader", "cat", "/data/before.txt"])?
        .success()?;
    assert_eq!(before.stdout, "written before the save\n");
    let port = free_port()?;
    machine
        .docker(&[
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            &format!("{port}:80"),
            "busybox",
            "sh",
            "-c",
            "mkdir -p /www && echo published > /www/index.html && exec httpd -f -p 80 -h /www",
        ])?
        .success()?;
    assert!(
        page_served(port, Duration::from_secs(10)),
        "the published port answers"
    );
    // Something on the data disk the cold boot must keep (not synced: `stop --save` must
    // flush it).
    machine
        .rmachine(&["ssh", &machine.name, "echo kept > /mnt/data/resume-marker"])?
        .success()?;

    // The machine was made with --save-on-stop: plain `stop` saves.
    let saved = machine.rmachine(&["stop", &machine.name])?.success()?;
    eprintln!("stop (save) took {:.2}s", saved.elapsed.as_secs_f64());
    assert!(saved.stdout.contains("state was saved"), "{}", saved.stdout);
    let state = machine.rmachine(&["status", &machine.name])?.success()?;
    assert_eq!(state.stdout.trim(), "Saved");
    // Time passes while the machine is saved: the guest's clock must catch up.
    std::thread::sleep(Duration::from_secs(3));
    let resumed = machine
        .rmachine(&["start", "--no-progress", "--timings", &machine.name])?
        .success()?;
    eprintln!("start (resume) took {:.2}s", resumed.elapsed.as_secs_f64());
    // The resume's own timeline, not the cold boot's before it.
    assert!(
        resumed
            .stdout
            .contains("guest: no boot stages (resumed from a saved state")
            && resumed.stdout.contains("Ready")
            && !resumed.stdout.contains("InitStarted"),
        "{}",
        resumed.stdout
    );
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
    assert!(lag.abs() <= 1, "guest clock off by {lag}s after the resume");
    let machine_dir = machine.store().join("machines").join(&machine.name);
    let console = std::fs::read_to_string(machine_dir.join("console.log"))?;
    assert!(
        console.contains("clock set from the host"),
        "the clock was set through the clock port: {}",
        console
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The share: the container's bind mount of it sees what the host writes now.
    std::fs::write(shared.join("after.txt"), "written after the resume\n")?;
    let after = machine
        .docker(&[
            "exec",
            "reader",
            "cat",
            "/data/after.txt",
            "/data/before.txt",
        ])?
        .success()?;
    assert_eq!(
        after.stdout,
        "written after the resume\nwritten before the save\n"
    );
    machine
        .docker(&[
            "exec",
            "reader",
            "sh",
            "-c",
            "echo from the container > /data/from-guest.txt",
        ])?
        .success()?;
    assert_eq!(
        std::fs::read_to_string(shared.join("from-guest.txt"))?,
        "from the container\n"
    );
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
    for spent in ["vmstate.bin", "vmstate.json", "vmstate.bin.spent"] {
        assert!(
            !machine_dir.join(spent).exists(),
            "{spent} is gone after the resume"
        );
    }
    assert!(
        page_served(port, Duration::from_secs(10)),
        "the published port answers again after the resume"
    );

    // Written right before the save, never synced by the test.
    machine
        .rmachine(&[
            "ssh",
            &machine.name,
            "echo kept-too > /mnt/data/resume-marker2",
        ])?
        .success()?;

    // A damaged state (a truncated one is refused before QEMU runs: unit-tested in the
    // driver): QEMU rejects it, `start` says so, boots afresh, and the disk is intact.
    machine
        .rmachine(&["stop", "--save", &machine.name])?
        .success()?;
    let state_file = machine_dir.join("vmstate.bin");
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
    let marker = machine
        .rmachine(&["ssh", &machine.name, "cat /mnt/data/resume-marker2"])?
        .success()?;
    assert_eq!(marker.stdout.trim(), "kept-too");
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
