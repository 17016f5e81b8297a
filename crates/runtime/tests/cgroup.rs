//! The cgroup code against the real kernel, outside any container: on this kind of hybrid host
//! the v2 tree (`/sys/fs/cgroup/unified`) has no controllers but does freeze, so both the v1
//! controllers and the v2 freezer are exercised; on a pure v2 host the v2 tree is the root.
//!
//! They need root; without it (or without the hierarchy) each test says so and returns, or
//! fails under `RMACHINE_TESTS_REQUIRED=1` (tests/run.sh).

use std::fs;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rmachine_runtime::cgroup::{detect, Cgroup, CgroupMode, CGROUP_ROOT};
use rmachine_runtime::spec::Resources;

mod common;
use common::cannot_run;

fn unique_id(tag: &str) -> String {
    format!("test-{tag}-{}", std::process::id())
}

/// A busy loop on the host; killed when dropped.
struct Spinner(Child);

impl Spinner {
    fn start() -> Self {
        Self(
            Command::new("/usr/bin/busybox")
                .args(["sh", "-c", "while :; do :; done"])
                .spawn()
                .expect("spawn busybox"),
        )
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).expect("pids fit i32")
    }

    /// User plus system CPU ticks, from /proc/PID/stat.
    fn cpu_ticks(&self) -> u64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        let rest = stat.rsplit_once(") ").expect("stat format").1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 11 and 12 after `state`.
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The v2 tree of this host: the root on a v2 host, `unified` on a hybrid one.
fn v2_root() -> Option<&'static Path> {
    [CGROUP_ROOT, "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(Path::new)
        .find(|root| detect(root).ok() == Some(CgroupMode::V2))
}

fn assert_freezes(cgroup: &Cgroup) {
    let spinner = Spinner::start();
    cgroup.add_process(spinner.pid()).expect("add process");
    assert_eq!(cgroup.pids().expect("pids"), vec![spinner.pid()]);
    cgroup.freeze().expect("freeze");
    assert!(cgroup.is_frozen().expect("state"));
    let frozen = spinner.cpu_ticks();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(spinner.cpu_ticks(), frozen, "it ran while frozen");
    cgroup.thaw().expect("thaw");
    assert!(!cgroup.is_frozen().expect("state"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while spinner.cpu_ticks() == frozen && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(spinner.cpu_ticks() > frozen, "it did not resume");
    drop(spinner);
    cgroup.remove().expect("remove");
}

#[test]
fn the_v2_freezer_stops_and_resumes_a_busy_process() {
    if !nix::unistd::geteuid().is_root() {
        cannot_run("this test needs root");
        return;
    }
    let Some(root) = v2_root() else {
        cannot_run("no cgroup v2 tree on this host");
        return;
    };
    let cgroup = Cgroup::under(
        root,
        CgroupMode::V2,
        &unique_id("v2"),
        Some("rmachine-test"),
    )
    .expect("cgroup");
    let dir = cgroup.path("any").expect("v2 has one directory");
    cgroup.create().expect("create");
    assert!(dir.is_dir());
    if !dir.join("cgroup.freeze").exists() {
        cannot_run("this kernel has no cgroup v2 freezer");
        cgroup.remove().expect("remove");
        return;
    }
    assert_freezes(&cgroup);
    assert!(!dir.exists(), "removed");
    let _ = fs::remove_dir(root.join("rmachine-test"));
}

#[test]
fn v1_controllers_limit_freeze_count_and_are_removed() {
    if !nix::unistd::geteuid().is_root() {
        cannot_run("this test needs root");
        return;
    }
    let root = Path::new(CGROUP_ROOT);
    if detect(root).ok() != Some(CgroupMode::V1) {
        cannot_run("this host is not cgroup v1");
        return;
    }
    let cgroup = Cgroup::under(
        root,
        CgroupMode::V1,
        &unique_id("v1"),
        Some("rmachine-test"),
    )
    .expect("cgroup");
    cgroup.create().expect("create");
    cgroup
        .update(&Resources {
            memory_bytes: Some(64 << 20),
            memory_swap_bytes: Some(128 << 20),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpu_shares: Some(512),
            pids_limit: Some(5),
            ..Resources::default()
        })
        .expect("update");
    if let Some(memory) = cgroup.path("memory") {
        let limit = fs::read_to_string(memory.join("memory.limit_in_bytes")).expect("read");
        assert_eq!(limit.trim(), "67108864");
        assert_eq!(cgroup.stats().expect("stats").memory_limit, Some(64 << 20));
    }
    // Raising memory above the old memory+swap needs the other write order.
    cgroup
        .update(&Resources {
            memory_bytes: Some(256 << 20),
            memory_swap_bytes: Some(512 << 20),
            ..Resources::default()
        })
        .expect("update upwards");
    if let Some(memory) = cgroup.path("memory") {
        let limit = fs::read_to_string(memory.join("memory.limit_in_bytes")).expect("read");
        assert_eq!(limit.trim(), "268435456");
    }
    if let Some(cpu) = cgroup.path("cpu") {
        let quota = fs::read_to_string(cpu.join("cpu.cfs_quota_us")).expect("read");
        assert_eq!(quota.trim(), "50000");
    }
    if cgroup.path("freezer").is_some() {
        let spinner = Spinner::start();
        cgroup.add_process(spinner.pid()).expect("add");
        std::thread::sleep(Duration::from_millis(300));
        let stats = cgroup.stats().expect("stats");
        if cgroup.path("cpuacct").is_some() {
            assert!(stats.cpu_usage_ns > 0, "{stats:?}");
        }
        if cgroup.path("pids").is_some() {
            assert_eq!(stats.pids_current, 1, "{stats:?}");
        }
        drop(spinner);
        assert_freezes(&cgroup);
    } else {
        cannot_run("no freezer controller on this host");
        cgroup.remove().expect("remove");
    }
    for controller in ["memory", "cpu", "pids", "freezer"] {
        if let Some(dir) = cgroup.path(controller) {
            assert!(!dir.exists(), "{} left behind", dir.display());
            let _ = fs::remove_dir(root.join(controller).join("rmachine-test"));
        }
    }
}
