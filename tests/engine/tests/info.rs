//! `docker info` tells the truth: the limits it claims are the ones the runtime enforces on
//! this host's cgroups, its warnings are dockerd's, and the registry settings are the ones the
//! engine was given.

use std::path::Path;

use rmachine_tests_engine::{require_root, Engine};
use serde_json::{json, Value};

fn info(engine: &Engine) -> anyhow::Result<Value> {
    let run = engine.docker(&["info", "--format", "{{json .}}"])?.ok()?;
    Ok(serde_json::from_str(&run.stdout)?)
}

#[test]
fn limits_and_warnings_match_this_hosts_cgroups() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let engine = Engine::start()?;
    let info = info(&engine)?;
    let warnings: Vec<&str> = info["Warnings"]
        .as_array()
        .map(|w| w.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let cgroup = Path::new("/sys/fs/cgroup");
    if info["CgroupVersion"] == "1" {
        // This host: cgroup v1 controllers (hybrid).
        assert_eq!(info["MemoryLimit"], json!(true));
        assert_eq!(
            info["SwapLimit"],
            json!(cgroup.join("memory/memory.memsw.limit_in_bytes").exists())
        );
        assert_eq!(
            info["CpuCfsQuota"],
            json!(cgroup.join("cpu/cpu.cfs_quota_us").exists())
        );
        assert_eq!(
            info["CPUShares"],
            json!(cgroup.join("cpu/cpu.shares").exists())
        );
        assert_eq!(
            info["CPUSet"],
            json!(cgroup.join("cpuset/cpuset.cpus").exists())
        );
        assert_eq!(info["PidsLimit"], json!(cgroup.join("pids").exists()));
        // The runtime never disables the OOM killer nor limits kernel TCP memory.
        assert!(
            warnings.contains(&"WARNING: No oom kill disable support"),
            "{warnings:?}"
        );
        assert!(warnings.contains(&"WARNING: No kernel memory TCP limit support"));
        assert!(warnings.contains(&"WARNING: No blkio throttle.read_bps_device support"));
    } else {
        let controllers = std::fs::read_to_string(cgroup.join("cgroup.controllers"))?;
        let has = |c: &str| json!(controllers.split_whitespace().any(|x| x == c));
        assert_eq!(info["MemoryLimit"], has("memory"));
        assert_eq!(info["CPUSet"], has("cpuset"));
        assert_eq!(info["PidsLimit"], has("pids"));
        assert!(
            warnings.contains(&"WARNING: No io.max (rbps) support"),
            "{warnings:?}"
        );
    }
    assert_eq!(info["OomKillDisable"], json!(false));
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?.trim() == "1";
    assert_eq!(info["IPv4Forwarding"], json!(forwarding));
    assert_eq!(
        warnings.contains(&"WARNING: IPv4 forwarding is disabled"),
        !forwarding
    );
    assert_eq!(info["Plugins"]["Volume"], json!([]));
    assert_eq!(info["Swarm"]["LocalNodeState"], json!("inactive"));
    Ok(())
}

#[test]
fn registry_settings_are_reported_as_dockerd_shapes_them() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let engine = Engine::start_with_args(&[
        "--registry-mirror",
        "https://mirror.example",
        "--insecure-registry",
        "10.0.2.2:5000",
        "--insecure-registry",
        "192.168.7.9/24",
    ])?;
    let registry = &info(&engine)?["RegistryConfig"];
    assert_eq!(registry["Mirrors"], json!(["https://mirror.example/"]));
    assert_eq!(
        registry["InsecureRegistryCIDRs"],
        json!(["192.168.7.0/24", "::1/128", "127.0.0.0/8"])
    );
    assert_eq!(
        registry["IndexConfigs"]["10.0.2.2:5000"],
        json!({"Name": "10.0.2.2:5000", "Mirrors": [], "Secure": false, "Official": false})
    );
    assert_eq!(
        registry["IndexConfigs"]["docker.io"]["Mirrors"],
        json!(["https://mirror.example/"])
    );
    // The human form too.
    let text = engine.docker(&["info"])?.ok()?.stdout;
    assert!(
        text.contains("Registry Mirrors:\n  https://mirror.example/"),
        "{text}"
    );
    Ok(())
}

#[test]
fn a_bad_mirror_stops_the_engine_with_dockerds_words() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let err = Engine::start_with_args(&["--registry-mirror", "mirror.example"])
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(
        err.contains("invalid mirror: no scheme specified for \"mirror.example\""),
        "{err}"
    );
    Ok(())
}
