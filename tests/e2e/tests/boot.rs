//! The boot timeline: `create --timings` and `start --timings` print it, `inspect` holds it,
//! every guest stage is there in boot order, and the host's marks are in order too; only the
//! modules of the machine's devices are loaded, the legacy iptables tables before the engine
//! lets containers start, the deferred ones after the engine's; the data disk's format
//! features. One machine: create, stop, start. The machine is created without `--qemu-machine`, and the
//! `/proc/modules` checks assume the QEMU driver's default for an x86_64 guest, `microvm`
//! (virtio-mmio devices, no PCI): another machine type loads other drivers (the unit tests in
//! `crates/init/src/modules.rs` cover q35, VirtualBox and Hyper-V).
#![cfg(rmachine_e2e)]

use std::time::Duration;

use rmachine_e2e::Machine;

fn check_timeline(machine: &Machine, when: &str) -> anyhow::Result<()> {
    let guest = machine.checked_guest_timeline(when)?;

    let host = machine.timeline("Host")?;
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
    // The engine serves before the container modules are in, and holds containers until
    // init says they are (`--containers-wait-fd`). They include the legacy iptables tables:
    // nothing autoloads `ip_tables` for a container's `iptables-legacy`, so they must be loaded
    // when the engine lets containers start (deterministic: they are in that phase, not the
    // deferred one).
    const CONTAINERS_ALLOWED: &str = "the host is ready for containers";
    let console = machine.console_when(&machine.name, Duration::from_secs(30), |c| {
        c.contains(CONTAINERS_ALLOWED)
    })?;
    anyhow::ensure!(
        console.contains(CONTAINERS_ALLOWED),
        "the engine never let containers start within 30 s:\n{console}"
    );
    let modules_done = console.find("rmachine-init: container modules: ");
    let containers_allowed = console.find(CONTAINERS_ALLOWED);
    assert!(
        modules_done.is_some() && modules_done < containers_allowed,
        "containers allowed before the container modules were loaded:\n{console}"
    );
    let modules = machine
        .rmachine(&["ssh", &machine.name, "cut -d' ' -f1 /proc/modules"])?
        .success()?;
    for needed in ["x_tables", "ip_tables", "iptable_filter", "iptable_nat"] {
        assert!(
            modules.stdout.lines().any(|m| m == needed),
            "{needed} not loaded when the engine let containers start: {}",
            modules.stdout
        );
    }
    assert!(
        created.stdout.contains("guest (ms since kernel start):")
            && created.stdout.contains("EngineUp"),
        "create --timings prints the timeline: {}",
        created.stdout
    );
    check_timeline(&machine, "create")?;
    // The image ships only the compressed kernel and initramfs; the host derived the forms
    // the microvm boots into the cached image's derived/ directory, named after their input's
    // sum (`vmlinux-v2-<sum>`: the kernel ELF with its zero tails left to QEMU,
    // `initrd-<sum>.cpio`).
    let record = machine.rmachine(&["inspect", &machine.name])?.success()?;
    for derived in ["derived/vmlinux-v2-", "derived/initrd-"] {
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

    // After the engine's container modules, the share modules (9p, virtio-fs) and then the
    // deferred ones (`xt_*`, `nft_compat`) load at nice 10, without failures; nothing waits for
    // the deferred phase, so its console line is awaited (this boot's: after the last
    // `container modules:` line) before `/proc/modules` is read.
    let after_container_modules = |console: &str| {
        console
            .rfind("rmachine-init: container modules: ")
            .map(|at| console[at..].to_owned())
            .filter(|text| text.contains("rmachine-init: deferred modules: "))
    };
    let console = machine.console_when(&machine.name, Duration::from_secs(30), |c| {
        after_container_modules(c).is_some()
    })?;
    let Some(this_boot) = after_container_modules(&console) else {
        anyhow::bail!(
            "no deferred-modules line after the container modules' within 30 s:\n{console}"
        )
    };
    let line = |what: &str| {
        this_boot
            .lines()
            .find(|l| l.contains(&format!("rmachine-init: {what}: ")))
            .map(str::to_owned)
    };
    let (Some(container_line), Some(share_line), Some(deferred_line)) = (
        line("container modules"),
        line("share modules"),
        line("deferred modules"),
    ) else {
        anyhow::bail!("module phase lines missing or out of order:\n{this_boot}");
    };
    eprintln!("{container_line}\n{share_line}\n{deferred_line}");
    assert!(
        this_boot.find(&share_line) < this_boot.find(&deferred_line),
        "share modules before the deferred ones:\n{this_boot}"
    );
    for phase in [&container_line, &share_line, &deferred_line] {
        assert!(phase.contains(" 0 failed"), "{phase}");
    }
    let modules = machine
        .rmachine(&["ssh", &machine.name, "cut -d' ' -f1 /proc/modules"])?
        .success()?;
    let loaded: Vec<&str> = modules.stdout.lines().collect();
    for later in ["9pnet_virtio", "virtiofs", "xt_conntrack", "nft_compat"] {
        assert!(loaded.contains(&later), "{later} not loaded: {loaded:?}");
    }

    // The data disk was formatted with a journal and without `resize_inode`'s reserved
    // blocks (most of what mke2fs wrote under TCG).
    let features = machine
        .rmachine(&[
            "ssh",
            &machine.name,
            "tune2fs -l \"$(awk '$2 == \"/mnt/data\" {print $1}' /proc/mounts)\" \
             | grep '^Filesystem features:'",
        ])?
        .success()?;
    assert!(
        features.stdout.contains("has_journal") && !features.stdout.contains("resize_inode"),
        "data disk features: {}",
        features.stdout
    );
    Ok(())
}
