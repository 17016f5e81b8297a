//! `--ulimit`, `--sysctl`, `--domainname` and `--oom-score-adj`, read back from `/proc` inside
//! the container.

use rmachine_tests_engine::{cap_eff, Engine};

fn assert_none_left(engine: &Engine) -> anyhow::Result<()> {
    let all = engine.docker(&["ps", "-aq"])?.ok()?;
    assert_eq!(all.stdout, "", "a container was left behind");
    Ok(())
}

/// The soft and hard columns of one `/proc/PID/limits` row.
fn limits_row(table: &str, title: &str) -> Option<(String, String)> {
    let line = table.lines().find(|l| l.starts_with(title))?;
    let mut words = line[title.len()..].split_whitespace();
    Some((words.next()?.to_string(), words.next()?.to_string()))
}

#[test]
fn ulimits_show_in_proc_self_limits() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let run = engine
        .docker(&[
            "run",
            "--rm",
            "--ulimit",
            "nofile=1000:2000",
            "--ulimit",
            "nproc=300",
            "busybox",
            "cat",
            "/proc/self/limits",
        ])?
        .ok()?;
    assert_eq!(
        limits_row(&run.stdout, "Max open files"),
        Some(("1000".into(), "2000".into())),
        "{}",
        run.stdout
    );
    assert_eq!(
        limits_row(&run.stdout, "Max processes"),
        Some(("300".into(), "300".into()))
    );
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "limited",
            "--ulimit",
            "nofile=500:600",
            "busybox",
            "sleep",
            "1000",
        ])?
        .ok()?;
    let inspect = engine.inspect(
        "limited",
        "{{range .HostConfig.Ulimits}}{{.Name}}={{.Soft}}:{{.Hard}}{{end}}",
    )?;
    assert_eq!(inspect, "nofile=500:600");
    // `docker exec` processes get them too (runc's behaviour).
    let exec = engine
        .docker(&["exec", "limited", "cat", "/proc/self/limits"])?
        .ok()?;
    assert_eq!(
        limits_row(&exec.stdout, "Max open files"),
        Some(("500".into(), "600".into()))
    );
    Ok(())
}

#[test]
fn a_hard_limit_above_the_engines_is_refused_at_create() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let own = std::fs::read_to_string("/proc/self/limits")?;
    let cap_eff = own_cap_eff()?;
    let (_, hard) = limits_row(&own, "Max open files").expect("nofile row");
    let above = hard.parse::<u64>()? + 1;
    let flag = format!("nofile=100:{above}");
    let run = engine.docker(&[
        "run",
        "--rm",
        "--ulimit",
        &flag,
        "busybox",
        "cat",
        "/proc/self/limits",
    ])?;
    if cap_eff & (1 << 24) != 0 {
        // With CAP_SYS_RESOURCE (the guest) the engine can raise it.
        let run = run.ok()?;
        assert_eq!(
            limits_row(&run.stdout, "Max open files"),
            Some(("100".into(), above.to_string()))
        );
    } else {
        assert_eq!(run.code, 125, "{run:?}");
        assert!(
            run.stderr
                .contains("error setting rlimit type 7: operation not permitted"),
            "{run:?}"
        );
        assert_none_left(&engine)?;
    }
    Ok(())
}

#[test]
fn namespaced_sysctls_and_the_domainname_apply_inside_only() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let host_shmmax = std::fs::read_to_string("/proc/sys/kernel/shmmax")?;
    let host_domain = std::fs::read_to_string("/proc/sys/kernel/domainname")?;
    let run = engine
        .docker(&[
            "run",
            "--rm",
            "--sysctl",
            "kernel.shmmax=123456789",
            "--sysctl",
            "net.ipv4.ip_forward=1",
            "--sysctl",
            "fs.mqueue.msg_max=20",
            "--domainname",
            "example.org",
            "busybox",
            "cat",
            "/proc/sys/kernel/shmmax",
            "/proc/sys/net/ipv4/ip_forward",
            "/proc/sys/fs/mqueue/msg_max",
            "/proc/sys/kernel/domainname",
        ])?
        .ok()?;
    assert_eq!(run.stdout, "123456789\n1\n20\nexample.org\n");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/shmmax")?,
        host_shmmax
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/domainname")?,
        host_domain
    );
    Ok(())
}

#[test]
fn sysctls_of_a_shared_namespace_are_refused_with_runcs_text() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    // The CLI only lets namespaced keys through; with the host's IPC this one would change the
    // host.
    let run = engine.docker(&[
        "run",
        "--ipc",
        "host",
        "--sysctl",
        "kernel.shmmax=1",
        "busybox",
        "true",
    ])?;
    assert_eq!(run.code, 125, "{run:?}");
    assert!(
        run.stderr
            .contains("sysctl \"kernel.shmmax\" is not allowed in the hosts ipc namespace"),
        "{run:?}"
    );
    let run = engine.docker(&[
        "run",
        "--uts",
        "host",
        "--domainname",
        "x.org",
        "busybox",
        "true",
    ])?;
    assert_eq!(run.code, 125, "{run:?}");
    assert!(
        run.stderr
            .contains("sysctl \"kernel.domainname\" is not in a separate kernel namespace"),
        "{run:?}"
    );
    // A key that climbs out of its namespace's directory would reach a host-wide knob.
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern")?;
    let run = engine.docker(&[
        "run",
        "--sysctl",
        "net.ipv4/../../kernel/core_pattern=|/bin/false",
        "busybox",
        "true",
    ])?;
    assert_eq!(run.code, 125, "{run:?}");
    assert!(
        run.stderr
            .contains("sysctl \"net.ipv4/../../kernel/core_pattern\" is not a valid sysctl name"),
        "{run:?}"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern")?,
        core_pattern
    );
    assert_none_left(&engine)?;
    Ok(())
}

#[test]
fn ipc_sysctls_through_a_donor_in_the_hosts_ipc_namespace_are_refused() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    for (name, ipc) in [("hostipc", "host"), ("hostipc2", "container:hostipc")] {
        engine
            .docker(&[
                "run", "-d", "--name", name, "--ipc", ipc, "busybox", "sleep", "1000",
            ])?
            .ok()?;
    }
    let before = std::fs::read_to_string("/proc/sys/kernel/shmmax")?;
    let wanted = before.trim().parse::<u64>()?.saturating_sub(1).to_string();
    let sysctl = format!("kernel.shmmax={wanted}");
    // Directly, and through a donor that itself joined the host's namespace.
    for donor in ["container:hostipc", "container:hostipc2"] {
        let run = engine.docker(&[
            "run", "--ipc", donor, "--sysctl", &sysctl, "busybox", "true",
        ])?;
        let after = std::fs::read_to_string("/proc/sys/kernel/shmmax")?;
        if after != before {
            // Put the host back before failing.
            std::fs::write("/proc/sys/kernel/shmmax", before.trim())?;
        }
        assert_eq!(
            after, before,
            "the host's kernel.shmmax changed via {donor}"
        );
        assert_eq!(run.code, 125, "{run:?}");
        assert!(
            run.stderr
                .contains("sysctl \"kernel.shmmax\" is not allowed in the hosts ipc namespace"),
            "{run:?}"
        );
    }
    let all = engine.docker(&["ps", "-aq"])?.ok()?;
    assert_eq!(all.stdout.lines().count(), 2, "a container was left behind");
    Ok(())
}

#[test]
fn oom_score_adj_is_the_processs_and_out_of_range_is_refused() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let run = engine
        .docker(&[
            "run",
            "--rm",
            "--oom-score-adj",
            "500",
            "busybox",
            "cat",
            "/proc/self/oom_score_adj",
        ])?
        .ok()?;
    assert_eq!(run.stdout, "500\n");
    // docker exec processes share it.
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "scored",
            "--oom-score-adj",
            "400",
            "busybox",
            "sleep",
            "1000",
        ])?
        .ok()?;
    let exec = engine
        .docker(&["exec", "scored", "cat", "/proc/self/oom_score_adj"])?
        .ok()?;
    assert_eq!(exec.stdout, "400\n");
    engine.docker(&["rm", "-f", "scored"])?.ok()?;
    // Lowering it below 0 needs CAP_SYS_RESOURCE (the guest's engine has it, this host's not).
    let cap_eff = own_cap_eff()?;
    let run = engine.docker(&[
        "run",
        "--rm",
        "--oom-score-adj",
        "-500",
        "busybox",
        "cat",
        "/proc/self/oom_score_adj",
    ])?;
    if cap_eff & (1 << 24) != 0 {
        assert_eq!(run.ok()?.stdout, "-500\n");
    } else {
        assert_eq!(run.code, 125, "{run:?}");
        assert!(
            run.stderr
                .contains("--oom-score-adj -500: a negative value needs CAP_SYS_RESOURCE"),
            "{run:?}"
        );
    }
    let run = engine.docker(&["run", "--oom-score-adj", "1001", "busybox", "true"])?;
    assert_eq!(run.code, 125, "{run:?}");
    assert!(
        run.stderr
            .contains("Invalid value 1001, range for oom score adj is [-1000, 1000]"),
        "{run:?}"
    );
    assert_none_left(&engine)?;
    Ok(())
}

/// The test process's effective capabilities (the engine it starts has the same).
fn own_cap_eff() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    Ok(u64::from_str_radix(&cap_eff(&status), 16).unwrap_or(0))
}
