//! The cgroup logic against a directory of plain files standing in for cgroupfs.

use std::fs;

use super::*;

fn put(path: &Path, content: &str) {
    fs::create_dir_all(path.parent().expect("test paths have a parent")).expect("mkdir");
    fs::write(path, content).expect("write fake cgroup file");
}

fn get(path: &Path) -> String {
    fs::read_to_string(path).expect("read fake cgroup file")
}

/// A v2 root offering cpu, memory, io and pids, with nothing delegated yet.
fn fake_v2() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    put(
        &root.path().join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    );
    put(&root.path().join("cgroup.subtree_control"), "");
    root
}

/// Interface files the kernel would create in a new v2 cgroup.
fn populate_v2(dir: &Path) {
    put(&dir.join("cgroup.controllers"), "cpu cpuset memory pids\n");
    put(&dir.join("cgroup.subtree_control"), "");
    for file in [
        "memory.max",
        "memory.swap.max",
        "cpu.max",
        "cpu.weight",
        "pids.max",
        "cpuset.cpus",
        "cpuset.mems",
        "cgroup.procs",
        "cgroup.freeze",
    ] {
        put(&dir.join(file), "");
    }
}

#[test]
fn v2_creates_the_cgroup_and_delegates_controllers_to_it() {
    let root = fake_v2();
    let cg = Cgroup::under(root.path(), CgroupMode::V2, "abc", None).expect("cgroup");
    // The kernel populates the parent's files as soon as it is created.
    populate_v2(&root.path().join("rmachine"));
    cg.create().expect("create");
    assert!(root.path().join("rmachine/abc").is_dir());
    assert_eq!(
        get(&root.path().join("cgroup.subtree_control")),
        "+cpu +cpuset +memory +pids"
    );
    assert_eq!(
        get(&root.path().join("rmachine/cgroup.subtree_control")),
        "+cpu +cpuset +memory +pids"
    );
    assert_eq!(cg.path("memory"), Some(root.path().join("rmachine/abc")));
    // v1's cpuset levels have no place in a v2 tree.
    assert!(!root.path().join("cpuset").exists());
}

#[test]
fn v2_controllers_already_delegated_are_not_written_again() {
    let root = fake_v2();
    put(
        &root.path().join("cgroup.subtree_control"),
        "cpu cpuset memory pids\n",
    );
    populate_v2(&root.path().join("rmachine"));
    put(
        &root.path().join("rmachine/cgroup.subtree_control"),
        "cpu cpuset memory pids\n",
    );
    let cg = Cgroup::under(root.path(), CgroupMode::V2, "abc", None).expect("cgroup");
    cg.create().expect("create");
    assert_eq!(
        get(&root.path().join("cgroup.subtree_control")),
        "cpu cpuset memory pids\n"
    );
}

#[test]
fn v2_limits_use_the_unified_files() {
    let root = fake_v2();
    let cg = Cgroup::under(root.path(), CgroupMode::V2, "abc", Some("/docker")).expect("cgroup");
    let dir = root.path().join("docker/abc");
    populate_v2(&dir);
    cg.update(&Resources {
        memory_bytes: Some(64 << 20),
        memory_swap_bytes: Some(128 << 20),
        cpu_quota: Some(150_000),
        cpu_period: Some(100_000),
        cpu_shares: Some(512),
        pids_limit: Some(100),
        cpuset_cpus: Some("0-1".into()),
        cpuset_mems: Some("0".into()),
    })
    .expect("update");
    assert_eq!(get(&dir.join("cpuset.cpus")), "0-1");
    assert_eq!(get(&dir.join("cpuset.mems")), "0");
    assert_eq!(get(&dir.join("memory.max")), "67108864");
    assert_eq!(get(&dir.join("memory.swap.max")), "67108864");
    assert_eq!(get(&dir.join("cpu.max")), "150000 100000");
    assert_eq!(get(&dir.join("cpu.weight")), "20");
    assert_eq!(get(&dir.join("pids.max")), "100");

    cg.update(&Resources {
        memory_swap_bytes: Some(-1),
        cpu_quota: Some(-1),
        pids_limit: Some(0),
        ..Resources::default()
    })
    .expect("update to unlimited");
    assert_eq!(get(&dir.join("memory.max")), "67108864", "left alone");
    assert_eq!(get(&dir.join("memory.swap.max")), "max");
    assert_eq!(get(&dir.join("cpu.max")), "max 100000");
    assert_eq!(get(&dir.join("pids.max")), "max");
}

#[test]
fn v1_limits_use_each_controllers_hierarchy() {
    let root = tempfile::tempdir().expect("temp dir");
    for c in ["memory", "cpu", "pids"] {
        fs::create_dir(root.path().join(c)).expect("mkdir controller");
    }
    let cg = Cgroup::under(root.path(), CgroupMode::V1, "abc", None).expect("cgroup");
    assert_eq!(cg.path("freezer"), None, "the host has no freezer");
    cg.create().expect("create");
    let memory = root.path().join("memory/rmachine/abc");
    let cpu = root.path().join("cpu/rmachine/abc");
    let pids = root.path().join("pids/rmachine/abc");
    for file in ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"] {
        put(&memory.join(file), "");
    }
    for file in ["cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.shares"] {
        put(&cpu.join(file), "");
    }
    put(&pids.join("pids.max"), "");
    cg.update(&Resources {
        memory_bytes: Some(64 << 20),
        memory_swap_bytes: Some(-1),
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        cpu_shares: Some(512),
        pids_limit: Some(-1),
        ..Resources::default()
    })
    .expect("update");
    assert_eq!(get(&memory.join("memory.limit_in_bytes")), "67108864");
    assert_eq!(get(&memory.join("memory.memsw.limit_in_bytes")), "-1");
    assert_eq!(get(&cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(get(&cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(get(&cpu.join("cpu.shares")), "512");
    assert_eq!(get(&pids.join("pids.max")), "max");
}

#[test]
fn v1_cpusets_inherit_their_parents_cpus_and_take_limits() {
    let root = tempfile::tempdir().expect("temp dir");
    let base = root.path().join("cpuset");
    put(&base.join("cpuset.cpus"), "0-1\n");
    put(&base.join("cpuset.mems"), "0\n");
    // The kernel gives each new cpuset cgroup empty files; a parent set up before keeps its.
    for dir in ["rmachine", "rmachine/abc"] {
        put(&base.join(dir).join("cpuset.cpus"), "");
        put(&base.join(dir).join("cpuset.mems"), "");
    }
    put(&base.join("rmachine/cpuset.cpus"), "1\n");
    let cg = Cgroup::under(root.path(), CgroupMode::V1, "abc", None).expect("cgroup");
    cg.create().expect("create");
    let dir = base.join("rmachine/abc");
    assert_eq!(get(&base.join("rmachine/cpuset.cpus")), "1\n");
    assert_eq!(get(&base.join("rmachine/cpuset.mems")), "0");
    assert_eq!(get(&dir.join("cpuset.cpus")), "1");
    assert_eq!(get(&dir.join("cpuset.mems")), "0");
    assert_eq!(cg.v1_dirs(), vec![("cpuset".to_string(), dir.clone())]);
    cg.update(&Resources {
        cpuset_cpus: Some("0".into()),
        cpuset_mems: Some("0".into()),
        ..Resources::default()
    })
    .expect("update");
    assert_eq!(get(&dir.join("cpuset.cpus")), "0");
}

#[test]
fn processes_are_added_to_every_hierarchy_and_listed() {
    let root = tempfile::tempdir().expect("temp dir");
    for c in ["memory", "pids", "freezer"] {
        fs::create_dir(root.path().join(c)).expect("mkdir controller");
    }
    let cg = Cgroup::under(root.path(), CgroupMode::V1, "abc", None).expect("cgroup");
    cg.create().expect("create");
    for c in ["memory", "pids", "freezer"] {
        put(&root.path().join(c).join("rmachine/abc/cgroup.procs"), "");
    }
    cg.add_process(4242).expect("add");
    assert_eq!(
        get(&root.path().join("freezer/rmachine/abc/cgroup.procs")),
        "4242"
    );
    put(
        &root.path().join("pids/rmachine/abc/cgroup.procs"),
        "4242\n4250\n",
    );
    assert_eq!(cg.pids().expect("pids"), vec![4242, 4250]);
}

#[test]
fn freezing_writes_the_state_and_checks_it() {
    let root = tempfile::tempdir().expect("temp dir");
    fs::create_dir(root.path().join("freezer")).expect("mkdir controller");
    let cg = Cgroup::under(root.path(), CgroupMode::V1, "abc", None).expect("cgroup");
    cg.create().expect("create");
    let state = root.path().join("freezer/rmachine/abc/freezer.state");
    put(&state, "THAWED\n");
    cg.freeze().expect("freeze");
    assert_eq!(get(&state), "FROZEN");
    assert!(cg.is_frozen().expect("state"));
    cg.thaw().expect("thaw");
    assert_eq!(get(&state), "THAWED");

    // v2 reports the state in cgroup.events; a kernel without cgroup.freeze has no freezer.
    let root = fake_v2();
    let cg = Cgroup::under(root.path(), CgroupMode::V2, "abc", None).expect("cgroup");
    let dir = root.path().join("rmachine/abc");
    fs::create_dir_all(&dir).expect("mkdir");
    let err = cg.freeze().expect_err("no freezer");
    assert!(matches!(err, CgroupError::NoFreezer { .. }), "{err}");
    put(&dir.join("cgroup.freeze"), "0");
    put(&dir.join("cgroup.events"), "populated 1\nfrozen 1\n");
    cg.freeze().expect("freeze");
    assert_eq!(get(&dir.join("cgroup.freeze")), "1");
}

#[test]
fn stats_read_usage_limits_and_pids() {
    let root = fake_v2();
    let cg = Cgroup::under(root.path(), CgroupMode::V2, "abc", None).expect("cgroup");
    let dir = root.path().join("rmachine/abc");
    put(&dir.join("memory.current"), "1048576\n");
    put(&dir.join("memory.max"), "max\n");
    put(&dir.join("memory.stat"), "anon 4096\ninactive_file 8192\n");
    put(&dir.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n");
    put(&dir.join("pids.current"), "3\n");
    put(&dir.join("memory.events"), "low 0\noom 1\noom_kill 1\n");
    assert_eq!(
        cg.stats().expect("stats"),
        CgroupStats {
            memory_usage: 1_048_576,
            memory_limit: None,
            memory_inactive_file: 8192,
            cpu_usage_ns: 1_500_000,
            pids_current: 3,
        }
    );
    assert!(cg.oom_killed().expect("oom"));
    put(&dir.join("memory.max"), "67108864\n");
    assert_eq!(cg.stats().expect("stats").memory_limit, Some(64 << 20));

    let root = tempfile::tempdir().expect("temp dir");
    fs::create_dir(root.path().join("memory")).expect("mkdir controller");
    let cg = Cgroup::under(root.path(), CgroupMode::V1, "abc", None).expect("cgroup");
    let dir = root.path().join("memory/rmachine/abc");
    put(&dir.join("memory.usage_in_bytes"), "4096\n");
    put(&dir.join("memory.limit_in_bytes"), "9223372036854771712\n");
    put(
        &dir.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
    );
    let stats = cg.stats().expect("stats");
    assert_eq!((stats.memory_usage, stats.memory_limit), (4096, None));
    assert_eq!(stats.cpu_usage_ns, 0, "no cpuacct controller");
    assert!(!cg.oom_killed().expect("oom"));
}

#[test]
fn parents_cannot_leave_the_hierarchy() {
    let root = tempfile::tempdir().expect("temp dir");
    for parent in ["../escape", "a/../../b"] {
        let err = Cgroup::under(root.path(), CgroupMode::V2, "abc", Some(parent))
            .expect_err("escaping parent");
        assert_eq!(err.to_string(), format!("invalid cgroup parent {parent:?}"));
    }
    let cg = Cgroup::under(root.path(), CgroupMode::V2, "abc", Some("/a/b")).expect("cgroup");
    assert_eq!(cg.path("pids"), Some(root.path().join("a/b/abc")));
}

#[test]
fn removal_deletes_every_directory_and_tolerates_missing_ones() {
    let root = tempfile::tempdir().expect("temp dir");
    for c in ["memory", "pids"] {
        fs::create_dir(root.path().join(c)).expect("mkdir controller");
    }
    let cg = Cgroup::under(root.path(), CgroupMode::V1, "abc", None).expect("cgroup");
    cg.create().expect("create");
    fs::remove_dir(root.path().join("pids/rmachine/abc")).expect("pre-remove one");
    cg.remove().expect("remove");
    assert!(!root.path().join("memory/rmachine/abc").exists());
    assert!(
        root.path().join("memory/rmachine").exists(),
        "the parent stays"
    );
}

#[test]
fn cpu_shares_map_to_weights_like_runc() {
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(1024), 39);
    assert_eq!(shares_to_weight(262_144), 10_000);
}

#[test]
fn v1_device_list_denies_all_then_allows_dockers_defaults() {
    let root = tempfile::tempdir().expect("temp dir");
    for c in ["memory", "devices"] {
        fs::create_dir(root.path().join(c)).expect("mkdir controller");
    }
    let cg = Cgroup::under(root.path(), CgroupMode::V1, "abc", None).expect("cgroup");
    cg.create().expect("create");
    let dir = root.path().join("devices/rmachine/abc");
    put(&dir.join("devices.deny"), "");
    put(&dir.join("devices.allow"), "");
    cg.limit_devices(false).expect("limit devices");
    // Plain files keep the last write of each (the kernel takes one rule per write; the whole
    // sequence is devices::v1_writes, checked there and on a real host in tests/run.rs).
    assert_eq!(get(&dir.join("devices.deny")), "a");
    assert_eq!(get(&dir.join("devices.allow")), "c 10:200 rwm");
}

#[test]
fn v1_privileged_allows_every_device() {
    let root = tempfile::tempdir().expect("temp dir");
    fs::create_dir(root.path().join("devices")).expect("mkdir controller");
    let cg = Cgroup::under(root.path(), CgroupMode::V1, "abc", None).expect("cgroup");
    cg.create().expect("create");
    let dir = root.path().join("devices/rmachine/abc");
    put(&dir.join("devices.allow"), "");
    cg.limit_devices(true).expect("limit devices");
    assert_eq!(get(&dir.join("devices.allow")), "a");
    assert!(!dir.join("devices.deny").exists(), "nothing denied");
}

#[test]
fn v1_without_the_devices_controller_writes_nothing() {
    let root = tempfile::tempdir().expect("temp dir");
    fs::create_dir(root.path().join("memory")).expect("mkdir controller");
    let cg = Cgroup::under(root.path(), CgroupMode::V1, "abc", None).expect("cgroup");
    cg.create().expect("create");
    cg.limit_devices(false).expect("nothing to do");
    assert_eq!(cg.path("devices"), None);
}
