//! Limits and privileges on create, and `docker update`.

use rmachine_tests_engine::{cap_eff, Engine};

#[test]
fn memory_cpu_and_pids_limits_reach_the_cgroup_and_update_changes_them() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let id = engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "limited",
            "--memory",
            "64m",
            "--cpus",
            "0.5",
            "--pids-limit",
            "20",
            "busybox",
            "sleep",
            "1000",
        ])?
        .ok()?
        .stdout
        .trim()
        .to_string();
    let inspect = engine
        .docker(&[
            "inspect", "-f",
            "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}}",
            "limited",
        ])?
        .ok()?;
    assert_eq!(inspect.stdout, "67108864 134217728 500000000 20\n");
    let memory = format!("/sys/fs/cgroup/memory/rmachine/{id}/memory.limit_in_bytes");
    let pids = format!("/sys/fs/cgroup/pids/rmachine/{id}/pids.max");
    let quota = format!("/sys/fs/cgroup/cpu/rmachine/{id}/cpu.cfs_quota_us");
    if std::path::Path::new(&memory).exists() {
        assert_eq!(std::fs::read_to_string(&memory)?.trim(), "67108864");
        assert_eq!(std::fs::read_to_string(&pids)?.trim(), "20");
        assert_eq!(std::fs::read_to_string(&quota)?.trim(), "50000");
    } else {
        let v2 = format!("/sys/fs/cgroup/rmachine/{id}/memory.max");
        assert_eq!(std::fs::read_to_string(v2)?.trim(), "67108864");
    }
    // The pids limit is felt inside: 30 background sleeps cannot all start.
    let fork = engine.docker(&[
        "exec",
        "limited",
        "sh",
        "-c",
        "for i in $(seq 30); do sleep 2 & done; wait",
    ])?;
    assert!(fork.stderr.contains("can't fork"), "{fork:?}");

    engine
        .docker(&[
            "update",
            "--memory",
            "128m",
            "--memory-swap",
            "256m",
            "--pids-limit",
            "50",
            "limited",
        ])?
        .ok()?;
    let inspect = engine
        .docker(&[
            "inspect",
            "-f",
            "{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}}",
            "limited",
        ])?
        .ok()?;
    assert_eq!(inspect.stdout, "134217728 50\n");
    if std::path::Path::new(&memory).exists() {
        assert_eq!(std::fs::read_to_string(&memory)?.trim(), "134217728");
        assert_eq!(std::fs::read_to_string(&pids)?.trim(), "50");
    }
    let stats = engine
        .docker(&[
            "stats",
            "--no-stream",
            "--format",
            "{{.MemUsage}}",
            "limited",
        ])?
        .ok()?;
    assert!(
        stats.stdout.trim_end().ends_with("/ 128MiB"),
        "{}",
        stats.stdout
    );

    let small = engine.docker(&["run", "--memory", "1m", "busybox", "true"])?;
    assert!(
        small.stderr.contains("Minimum memory limit allowed is 6MB"),
        "{}",
        small.stderr
    );
    Ok(())
}

#[test]
fn capabilities_privileged_and_init_change_what_the_process_gets() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let default = engine
        .docker(&["run", "--rm", "busybox", "cat", "/proc/self/status"])?
        .ok()?;
    assert_eq!(cap_eff(&default.stdout), "00000000a80425fb");
    let none = engine
        .docker(&[
            "run",
            "--rm",
            "--cap-drop",
            "ALL",
            "busybox",
            "cat",
            "/proc/self/status",
        ])?
        .ok()?;
    assert_eq!(cap_eff(&none.stdout), "0000000000000000");
    let added = engine
        .docker(&[
            "run",
            "--rm",
            "--cap-add",
            "NET_ADMIN",
            "busybox",
            "cat",
            "/proc/self/status",
        ])?
        .ok()?;
    assert_eq!(cap_eff(&added.stdout), "00000000a80435fb");
    let privileged = engine
        .docker(&[
            "run",
            "--rm",
            "--privileged",
            "busybox",
            "cat",
            "/proc/self/status",
        ])?
        .ok()?;
    // Every capability the host has: a strict superset of the default set.
    let all = u64::from_str_radix(&cap_eff(&privileged.stdout), 16)?;
    assert_eq!(all & 0xa804_25fb, 0xa804_25fb, "{}", privileged.stdout);
    assert!(all.count_ones() > 30, "{}", privileged.stdout);
    let bad = engine.docker(&["run", "--rm", "--cap-add", "FOO", "busybox", "true"])?;
    assert!(bad.stderr.contains("CAP_FOO"), "{}", bad.stderr);

    let init = engine
        .docker(&["run", "--rm", "--init", "busybox", "cat", "/proc/1/cmdline"])?
        .ok()?;
    let cmdline = init.stdout.replace('\0', " ");
    assert!(
        cmdline.starts_with("/sbin/docker-init -- cat"),
        "{cmdline:?}"
    );
    let flag = engine
        .docker(&[
            "run", "-d", "--init", "--name", "inited", "busybox", "sleep", "1000",
        ])?
        .ok()?;
    assert_eq!(flag.stdout.trim().len(), 64);
    let inspect = engine
        .docker(&["inspect", "-f", "{{.HostConfig.Init}}", "inited"])?
        .ok()?;
    assert_eq!(inspect.stdout, "true\n");
    engine.docker(&["rm", "-f", "inited"])?.ok()?;
    Ok(())
}
