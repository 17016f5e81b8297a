//! The boot timeline: `create --timings` and `start --timings` print it, `inspect` holds it,
//! every guest stage is there in boot order, and the host's marks are in order too; only the
//! modules of the machine's devices are loaded. One machine: create, stop, start. The machine
//! is created without `--qemu-machine`, and the `/proc/modules` checks assume the QEMU
//! driver's default for an x86_64 guest, `microvm` (virtio-mmio devices, no PCI): another
//! machine type loads other drivers (the unit tests in `crates/init/src/modules.rs` cover q35,
//! VirtualBox and Hyper-V).
#![cfg(rmachine_e2e)]

use rmachine_e2e::Machine;

const GUEST_STAGES: [&str; 8] = [
    "InitStarted",
    "ModulesLoaded",
    "DataDiskMounted",
    "NetworkUp",
    "SshUp",
    "EngineStarted",
    "EngineUp",
    "TlsListening",
];

/// `(stage, ms)` pairs from `inspect --format` output `Stage=Ms Stage=Ms …`.
fn pairs(text: &str) -> anyhow::Result<Vec<(String, u64)>> {
    text.split_whitespace()
        .map(|item| {
            let (stage, ms) = item
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("not STAGE=MS: {item:?}"))?;
            Ok((stage.to_owned(), ms.parse()?))
        })
        .collect()
}

fn check_timeline(machine: &Machine, when: &str) -> anyhow::Result<()> {
    let guest = machine
        .rmachine(&[
            "inspect",
            "--format",
            "{{range .Timeline.Guest}}{{.Stage}}={{.Ms}} {{end}}",
            &machine.name,
        ])?
        .success()?;
    let guest = pairs(&guest.stdout)?;
    eprintln!("{when}: guest timeline {guest:?}");
    for stage in GUEST_STAGES {
        assert!(
            guest.iter().any(|(s, _)| s == stage),
            "{when}: guest stage {stage} missing from {guest:?}"
        );
    }
    assert_eq!(guest.first().map(|(s, _)| s.as_str()), Some("InitStarted"));
    assert!(
        guest.windows(2).all(|w| w[0].1 <= w[1].1),
        "{when}: guest timeline not monotonic: {guest:?}"
    );

    let host = machine
        .rmachine(&[
            "inspect",
            "--format",
            "{{range .Timeline.Host}}{{.Stage}}={{.Ms}} {{end}}",
            &machine.name,
        ])?
        .success()?;
    let host = pairs(&host.stdout)?;
    eprintln!("{when}: host timeline {host:?}");
    let names: Vec<&str> = host.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        names.first().copied(),
        Some("VmStarting"),
        "{when}: {names:?}"
    );
    assert_eq!(names.last().copied(), Some("Ready"), "{when}: {names:?}");
    // FirstProbe may come before the signal: a guest that printed no stage line 5 s after
    // the start (a slow, loaded host) is probed as an old image would be.
    for stage in ["VmRunning", "GuestSignalled", "FirstProbe"] {
        assert!(names.contains(&stage), "{when}: {stage} missing: {names:?}");
    }
    assert!(
        host.windows(2).all(|w| w[0].1 <= w[1].1),
        "{when}: host timeline not monotonic: {host:?}"
    );
    // The host's delay after the guest's line: QEMU running → the guest clock's zero, plus
    // the host's reading of the console (console.log followed with an inotify watch, on
    // Linux).
    let at = |list: &[(String, u64)], stage: &str| {
        list.iter()
            .rev()
            .find(|(s, _)| s == stage)
            .map(|(_, ms)| *ms)
    };
    if let (Some(signalled), Some(running), Some(tls)) = (
        at(&host, "GuestSignalled"),
        at(&host, "VmRunning"),
        at(&guest, "TlsListening"),
    ) {
        eprintln!(
            "{when}: GuestSignalled - VmRunning - TlsListening = {} ms",
            signalled as i64 - running as i64 - tls as i64
        );
    }

    let rss = machine
        .rmachine(&[
            "inspect",
            "--format",
            "{{.HypervisorRssBytes}}",
            &machine.name,
        ])?
        .success()?;
    let rss: u64 = rss.stdout.trim().parse()?;
    eprintln!("{when}: QEMU RSS {} MiB", rss / (1024 * 1024));
    assert!(rss > 16 * 1024 * 1024, "{when}: QEMU RSS {rss} B");
    Ok(())
}

#[test]
fn create_and_start_record_a_complete_monotonic_timeline() -> anyhow::Result<()> {
    let machine = Machine::new("boot")?;
    let created = machine
        .create(&["--no-share", "--timings", "--memory", "1024"])?
        .success()?;
    eprintln!("create took {:.2}s", created.elapsed.as_secs_f64());
    assert!(
        created.stdout.contains("guest (ms since kernel start):")
            && created.stdout.contains("EngineUp"),
        "create --timings prints the timeline: {}",
        created.stdout
    );
    check_timeline(&machine, "create")?;
    // The image ships only the compressed kernel and initramfs; the host derived the forms
    // the microvm boots into the cached image's derived/ directory, named after their input's
    // sum (`vmlinux-<sum>`, `initrd-<sum>.cpio`).
    let record = machine.rmachine(&["inspect", &machine.name])?.success()?;
    for derived in ["derived/vmlinux-", "derived/initrd-"] {
        assert!(
            record.stdout.contains(derived),
            "the machine boots {derived}: {}",
            record.stdout
        );
    }

    let stopped = machine.rmachine(&["stop", &machine.name])?.success()?;
    eprintln!("stop took {:.2}s", stopped.elapsed.as_secs_f64());
    let started = machine
        .rmachine(&["start", "--timings", "--no-progress", &machine.name])?
        .success()?;
    eprintln!("start took {:.2}s", started.elapsed.as_secs_f64());
    assert!(
        started
            .stdout
            .contains("host (ms since the command began):"),
        "start --timings prints the timeline: {}",
        started.stdout
    );
    check_timeline(&machine, "start")?;
    machine
        .docker(&["version", "--format", "{{.Server.Version}}"])?
        .success()?;

    // What made the boot shorter stays in place: no crypto self-tests, the TSC kept as the
    // clocksource under TCG (the watchdog otherwise swaps it for jiffies that lag real time),
    // and `/` a bind mount of rootfs (nothing copied), which the runtime can still pivot from
    // (machine.rs runs containers).
    let guest = machine
        .rmachine(&[
            "ssh",
            &machine.name,
            "cat /proc/cmdline /sys/devices/system/clocksource/clocksource0/current_clocksource; \
             grep ' / / ' /proc/self/mountinfo",
        ])?
        .success()?;
    let lines: Vec<&str> = guest.stdout.lines().collect();
    let [cmdline, clocksource, root, ..] = lines[..] else {
        anyhow::bail!("unexpected guest answer: {}", guest.stdout);
    };
    let has = |option: &str| cmdline.split(' ').any(|o| o == option);
    // Under TCG on an x86 host (the driver then passes the host's TSC rate and skips the
    // crypto self-tests).
    if cmdline.contains("tsc_early_khz=") {
        assert!(has("tsc=reliable"), "kernel command line: {cmdline}");
        assert!(has("cryptomgr.notests"), "kernel command line: {cmdline}");
        assert_eq!(clocksource, "tsc", "the guest's clocksource");
    }
    assert!(
        root.contains(" - rootfs rootfs "),
        "`/` is a bind mount of rootfs: {root}"
    );

    // Only the drivers of this microvm's devices were loaded (matched by modalias; the default
    // machine type, see the file's comment): its
    // virtio-mmio disks, NIC and RNG, the power button; nothing for PCI, SCSI, ATA or Hyper-V.
    let modules = machine
        .rmachine(&["ssh", &machine.name, "cut -d' ' -f1 /proc/modules"])?
        .success()?;
    let loaded: Vec<&str> = modules.stdout.lines().collect();
    for needed in [
        "virtio_mmio",
        "virtio_blk",
        "virtio_net",
        "virtio_rng",
        "button",
        "evdev",
        "ext4",
    ] {
        assert!(loaded.contains(&needed), "{needed} not loaded: {loaded:?}");
    }
    for absent in [
        "virtio_pci",
        "scsi_mod",
        "sd_mod",
        "crc_t10dif",
        "libata",
        "ahci",
        "hv_vmbus",
    ] {
        assert!(
            !loaded.contains(&absent),
            "{absent} loaded on a microvm: {loaded:?}"
        );
    }
    Ok(())
}
