//! Boot snapshots (QEMU): the first machine of a command line boots its kernel and the driver
//! saves the guest at the snapshot point; the next machine with the same settings in the
//! same store starts from that state. Checked as a user sees it: the second machine is its
//! own (name, certificates: `docker` works against it), its clock is the host's and its
//! random pool was reseeded, its data disk survives a stop and a start from the snapshot
//! (nothing formatted twice), its timeline is complete, a damaged snapshot falls back to a
//! kernel boot that keeps the data and takes a new snapshot, and a new machine started from
//! that one (taken over a disk with data) gets a blank disk of its own. Three machines in one
//! store (about 30 s here). Two more machines check the same for a folder shared over virtio-fs.
#![cfg(rmachine_e2e)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rmachine_e2e::Machine;

/// The settings every machine of the test shares (so they share one snapshot).
const SETTINGS: [&str; 3] = ["--memory", "512", "--no-share"];

const TOOK: &str = "took the boot snapshot";
const STARTED_FROM: &str = "started from the boot snapshot";

fn snapshot_dir(machine: &Machine) -> PathBuf {
    machine.store().join("cache").join("qemu-boot-snapshots")
}

/// The snapshots' records in the store, once at least one is there (the driver publishes
/// a snapshot right after the guest went on, while the engine starts).
fn records(machine: &Machine, limit: Duration) -> anyhow::Result<Vec<PathBuf>> {
    let began = Instant::now();
    loop {
        let found: Vec<PathBuf> = match std::fs::read_dir(snapshot_dir(machine)) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect(),
            Err(_) => Vec::new(),
        };
        if !found.is_empty() || began.elapsed() > limit {
            return Ok(found);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ssh(machine: &Machine, command: &str) -> anyhow::Result<String> {
    Ok(machine
        .rmachine(&["ssh", &machine.name, command])?
        .success()?
        .stdout)
}

/// Seconds between the guest's clock and the host's (0 when within the command's span).
fn clock_lag(machine: &Machine) -> anyhow::Result<i64> {
    let now = || -> anyhow::Result<i64> {
        Ok(i64::try_from(
            SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
        )?)
    };
    let before = now()?;
    let guest: i64 = ssh(machine, "date +%s")?.trim().parse()?;
    let after = now()?;
    Ok(if guest < before {
        before - guest
    } else if guest > after {
        after - guest
    } else {
        0
    })
}

fn flip_bytes_in_the_middle(path: &Path) -> anyhow::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let middle = file.metadata()?.len() / 2;
    let mut bytes = [0u8; 64];
    file.seek(SeekFrom::Start(middle))?;
    file.read_exact(&mut bytes)?;
    for b in &mut bytes {
        *b ^= 0x5a;
    }
    file.seek(SeekFrom::Start(middle))?;
    file.write_all(&bytes)?;
    Ok(())
}

/// Creates `machine` with `args` (`-v` among them) and checks that it started from the boot
/// snapshot.
fn create_from_the_snapshot(machine: &Machine, args: &[&str]) -> anyhow::Result<()> {
    let created = machine.create(args)?.success()?;
    eprintln!(
        "create of {} from the snapshot took {:.2}s",
        machine.name,
        created.elapsed.as_secs_f64()
    );
    assert!(
        created.stderr.contains(STARTED_FROM),
        "{} starts from the snapshot: {}",
        machine.name,
        created.stderr
    );
    Ok(())
}

#[test]
fn machines_start_from_the_boot_snapshot_of_their_settings() -> anyhow::Result<()> {
    let first = Machine::new("snapfirst")?;
    let mut args = vec!["-v"];
    args.extend(SETTINGS);
    let created = first.create(&args)?.success()?;
    assert!(
        created.stderr.contains(TOOK) && !created.stderr.contains(STARTED_FROM),
        "the first machine boots its kernel and takes the snapshot: {}",
        created.stderr
    );
    let taken = records(&first, Duration::from_secs(60))?;
    assert_eq!(taken.len(), 1, "one snapshot: {taken:?}");

    let second = first.sibling("snapsecond");
    create_from_the_snapshot(&second, &args)?;
    // Its own machine: the engine answers with its name and its certificates.
    let name = second
        .docker(&["info", "--format", "{{.Name}}"])?
        .success()?;
    assert_eq!(name.stdout.trim(), "snapsecond");
    assert_eq!(ssh(&second, "hostname")?.trim(), "snapsecond");
    let lag = clock_lag(&second)?;
    assert!(
        lag.abs() <= 1,
        "clock off by {lag}s after the start from the snapshot"
    );
    second.checked_guest_timeline("create from the snapshot")?;
    let console = second.console_when(&second.name, Duration::from_secs(5), |c| {
        c.contains("boot snapshot:")
    })?;
    let summary = console
        .lines()
        .find(|l| l.contains("boot snapshot: this boot continues"))
        .unwrap_or_default();
    // The snapshot's random pool is every such machine's until the host's seed reseeds it.
    assert!(
        summary.contains("clock set")
            && summary.contains("entropy added")
            && !summary.contains("NOT"),
        "init went on with the clock set and its random pool reseeded: {console}"
    );

    // The data disk stays the machine's own across a stop and a start from the snapshot
    // (the snapshot's kernel had seen a blank disk).
    ssh(&second, "echo kept > /mnt/data/snapshot-marker && sync")?;
    second.rmachine(&["stop", &second.name])?.success()?;
    let started = second
        .rmachine(&["start", "-v", "--no-progress", &second.name])?
        .success()?;
    assert!(started.stderr.contains(STARTED_FROM), "{}", started.stderr);
    assert_eq!(
        ssh(&second, "cat /mnt/data/snapshot-marker")?.trim(),
        "kept"
    );
    second.checked_guest_timeline("start from the snapshot")?;

    // A damaged snapshot: the start boots the kernel, keeps the data and takes a new one.
    let state = taken[0].with_extension("state");
    flip_bytes_in_the_middle(&state)?;
    second.rmachine(&["stop", &second.name])?.success()?;
    let started = second
        .rmachine(&["start", "-v", "--no-progress", &second.name])?
        .success()?;
    assert!(
        started.stderr.contains("not used and removed") && started.stderr.contains(TOOK),
        "the damaged snapshot is replaced: {}",
        started.stderr
    );
    assert_eq!(
        ssh(&second, "cat /mnt/data/snapshot-marker")?.trim(),
        "kept"
    );
    let name = second
        .docker(&["info", "--format", "{{.Name}}"])?
        .success()?;
    assert_eq!(name.stdout.trim(), "snapsecond");
    let retaken = records(&first, Duration::from_secs(60))?;
    assert_eq!(retaken.len(), 1, "{retaken:?}");

    // That snapshot was taken by a machine whose disk holds data: a new machine started from
    // it still gets a blank disk of its own, formatted, and none of that data.
    let third = first.sibling("snapthird");
    let created = third.create(&args)?.success()?;
    assert!(created.stderr.contains(STARTED_FROM), "{}", created.stderr);
    let console = third.console_when(&third.name, Duration::from_secs(5), |c| {
        c.contains("formatted")
    })?;
    assert!(
        console.contains("is blank; formatting"),
        "the new machine's disk is formatted: {console}"
    );
    let marker = third.rmachine(&["ssh", &third.name, "cat /mnt/data/snapshot-marker"])?;
    assert!(
        marker.code != 0 && !marker.stdout.contains("kept"),
        "another machine's data on a new machine's disk: {}",
        marker.stdout
    );
    let name = third
        .docker(&["info", "--format", "{{.Name}}"])?
        .success()?;
    assert_eq!(name.stdout.trim(), "snapthird");
    Ok(())
}

/// The mount of `folder` in the guest's /proc/mounts, and what the guest reads of `file` in it.
fn shared_in_guest(
    machine: &Machine,
    folder: &Path,
    file: &str,
) -> anyhow::Result<(String, String)> {
    let folder = folder.to_string_lossy();
    let mount = ssh(machine, &format!("grep ' {folder} ' /proc/mounts"))?;
    let content = ssh(machine, &format!("cat '{folder}/{file}'"))?;
    Ok((mount, content))
}

/// A folder shared over virtio-fs (the default where a virtiofsd is installed, as here) does
/// not keep a machine from its snapshot: QEMU can save no vhost-user device, so the driver
/// takes and loads the snapshot without them and plugs each share's device in afterwards. Two
/// machines sharing different folders: the first takes the snapshot and still gets its folder,
/// the second starts from it with its own folder, readable and writable, also after a stop
/// and a start.
#[test]
fn machines_sharing_over_virtio_fs_start_from_a_snapshot_with_their_folders() -> anyhow::Result<()>
{
    let folders = [
        tempfile::Builder::new()
            .prefix("rmachine-snap-a-")
            .tempdir()?,
        tempfile::Builder::new()
            .prefix("rmachine-snap-b-")
            .tempdir()?,
    ];
    for (folder, text) in folders.iter().zip(["first folder\n", "second folder\n"]) {
        std::fs::write(folder.path().join("host.txt"), text)?;
    }
    let first = Machine::new("vfsfirst")?;
    let second = first.sibling("vfssecond");
    let first_folder = folders[0].path().to_string_lossy().into_owned();
    let second_folder = folders[1].path().to_string_lossy().into_owned();

    let created = first
        .create(&["-v", "--memory", "512", "--share", &first_folder])?
        .success()?;
    assert!(
        created.stderr.contains(TOOK) && !created.stderr.contains(STARTED_FROM),
        "the first machine boots its kernel and takes the snapshot: {}",
        created.stderr
    );
    let (mount, content) = shared_in_guest(&first, folders[0].path(), "host.txt")?;
    assert!(mount.contains(" virtiofs "), "{mount}");
    assert_eq!(content, "first folder\n");

    create_from_the_snapshot(
        &second,
        &["-v", "--memory", "512", "--share", &second_folder],
    )?;
    let (mount, content) = shared_in_guest(&second, folders[1].path(), "host.txt")?;
    assert!(mount.contains(" virtiofs "), "{mount}");
    assert_eq!(
        content, "second folder\n",
        "the second machine sees its own folder"
    );
    ssh(
        &second,
        &format!("echo from the guest > '{second_folder}/guest.txt'"),
    )?;
    assert_eq!(
        std::fs::read_to_string(folders[1].path().join("guest.txt"))?,
        "from the guest\n"
    );
    second.checked_guest_timeline("create from the snapshot with a virtio-fs share")?;

    second.rmachine(&["stop", &second.name])?.success()?;
    std::fs::write(
        folders[1].path().join("host.txt"),
        "changed while stopped\n",
    )?;
    let started = second
        .rmachine(&["start", "-v", "--no-progress", &second.name])?
        .success()?;
    assert!(started.stderr.contains(STARTED_FROM), "{}", started.stderr);
    let (_, content) = shared_in_guest(&second, folders[1].path(), "host.txt")?;
    assert_eq!(content, "changed while stopped\n");
    let name = second
        .docker(&["info", "--format", "{{.Name}}"])?
        .success()?;
    assert_eq!(name.stdout.trim(), "vfssecond");
    Ok(())
}
