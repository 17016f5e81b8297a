//! Options rmachine-engine does not implement are refused at create (and at `update`) with a
//! message naming the docker flag, `docker run` exits 125 and no container is left behind;
//! the options a plain `docker run` and common flags send still work (issue 14).

use rmachine_tests_engine::Engine;

/// `docker run` arguments (before the image) and the daemon's answer.
const REFUSED: &[(&[&str], &str)] = &[
    (&["--volume-driver", "nfs"], "rmachine-engine does not support volume drivers (--volume-driver) yet"),
    (&["--storage-opt", "size=1G"], "rmachine-engine does not support storage driver options (--storage-opt) yet"),
    (&["-p", "80/sctp"], "rmachine-engine does not support sctp ports yet (80/sctp)"),
    (&["--network", "none", "-p", "80"], "published ports are not supported with --network none"),
    (&["--ip6", "fd00::9"], "rmachine-engine does not support network endpoint settings"),
    (&["--ip", "10.0.0.9"], "invalid config for network default: invalid endpoint settings:\nuser specified IP address is supported on user defined networks only"),
    (&["--link-local-ip", "169.254.7.7"], "rmachine-engine does not support network endpoint settings"),
    (&["--gpus", "all"], "rmachine-engine does not support device requests (--gpus) yet"),
    (&["--oom-kill-disable"], "rmachine-engine does not support disabling the OOM killer (--oom-kill-disable) yet"),
    (&["--annotation", "a=b"], "rmachine-engine does not support annotations (--annotation) yet"),
    (&["--security-opt", "systempaths=unconfined"], "rmachine-engine does not support custom masked or read-only paths (--security-opt systempaths=unconfined) yet"),
    (&["--memory-swappiness", "60"], "rmachine-engine does not support memory swappiness (--memory-swappiness) yet"),
    (&["--memory-reservation", "64m"], "rmachine-engine does not support memory reservations (--memory-reservation) yet"),
    (&["--blkio-weight", "300"], "rmachine-engine does not support block IO weights (--blkio-weight) yet"),
    (&["--blkio-weight-device", "/dev/null:300"], "rmachine-engine does not support block IO device weights (--blkio-weight-device) yet"),
    (&["--device-read-bps", "/dev/null:1mb"], "rmachine-engine does not support device read rate limits (--device-read-bps) yet"),
    (&["--device-write-iops", "/dev/null:100"], "rmachine-engine does not support device write IO limits (--device-write-iops) yet"),
    (&["--cpu-rt-runtime", "1000"], "rmachine-engine does not support real-time CPU runtimes (--cpu-rt-runtime) yet"),
    (&["--security-opt", "apparmor=docker-default"], "rmachine-engine does not support AppArmor profiles (--security-opt apparmor=docker-default): its kernel has no AppArmor"),
    (&["--security-opt", "label=type:svirt_apache_t"], "rmachine-engine does not support SELinux labels (--security-opt label=type:svirt_apache_t): its kernel has no SELinux"),
    (&["--runtime", "crun"], "unknown or invalid runtime name: crun"),
    (&["--isolation", "hyperv"], "invalid isolation (hyperv): linux only supports 'default'"),
    (&["--log-driver", "syslog"], "logger: no log driver named 'syslog' is registered"),
];

#[test]
fn each_refused_option_names_its_flag_exits_125_and_leaves_no_container() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    for (options, message) in REFUSED {
        let mut args = vec!["run", "-d"];
        args.extend_from_slice(options);
        args.extend_from_slice(&["busybox", "true"]);
        let run = engine.docker(&args)?;
        assert_eq!(run.code, 125, "{options:?}: {run:?}");
        assert!(
            run.stderr
                .contains(&format!("Error response from daemon: {message}")),
            "{options:?}: {}",
            run.stderr
        );
        let left = engine.docker(&["ps", "-a", "-q"])?.ok()?;
        assert_eq!(left.stdout.trim(), "", "{options:?} left a container");
    }
    Ok(())
}

#[test]
fn the_issues_examples_no_longer_pass_silently() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let run = engine.docker(&["run", "--storage-opt", "size=1G", "busybox", "true"])?;
    assert_eq!(run.code, 125);
    assert!(run.stderr.contains("(--storage-opt)"), "{}", run.stderr);
    assert_eq!(engine.docker(&["ps", "-a", "-q"])?.ok()?.stdout.trim(), "");
    // Bind mounts, refused until issue 17, are honoured.
    let dir = engine.dir().join("shown");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("note"), "")?;
    let bind = format!("{}:/h", dir.display());
    let run = engine
        .docker(&["run", "--rm", "-v", &bind, "busybox", "ls", "/h"])?
        .ok()?;
    assert_eq!(run.stdout, "note\n");
    Ok(())
}

#[test]
fn update_refuses_the_limits_it_cannot_apply() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&["create", "--name", "upd", "-m", "64m", "busybox", "true"])?
        .ok()?;
    let run = engine.docker(&["update", "--blkio-weight", "300", "upd"])?;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains("rmachine-engine does not support block IO weights (--blkio-weight) yet"),
        "{}",
        run.stderr
    );
    assert_eq!(engine.inspect("upd", "{{.HostConfig.BlkioWeight}}")?, "0");
    engine
        .docker(&["update", "-m", "100m", "--memory-swap", "200m", "upd"])?
        .ok()?;
    assert_eq!(
        engine.inspect("upd", "{{.HostConfig.Memory}}")?,
        (100 * 1024 * 1024).to_string()
    );
    Ok(())
}

#[test]
fn plain_runs_and_common_flags_still_work() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let run = engine
        .docker(&["run", "--rm", "busybox", "echo", "hello"])?
        .ok()?;
    assert_eq!(run.stdout, "hello\n");
    engine
        .docker(&[
            "create",
            "--name",
            "common",
            "-e",
            "A=1",
            "-l",
            "k=v",
            "-w",
            "/tmp",
            "-u",
            "0:0",
            "-h",
            "box",
            "--restart",
            "on-failure:2",
            "-m",
            "64m",
            "--cpus",
            "0.5",
            "--pids-limit",
            "50",
            "--cap-drop",
            "NET_RAW",
            "--read-only",
            "--tmpfs",
            "/run",
            "--init",
            "--add-host",
            "db:192.0.2.7",
            "--shm-size",
            "32m",
            "--network",
            "none",
            "--ipc",
            "private",
            "--userns",
            "host",
            "--runtime",
            "runc",
            "--expose",
            "80",
            "--no-healthcheck",
            "--stop-signal",
            "SIGINT",
            "--stop-timeout",
            "3",
            "--log-opt",
            "max-size=1m",
            "--security-opt",
            "no-new-privileges",
            "--security-opt",
            "apparmor=unconfined",
            "--security-opt",
            "label=disable",
            "--group-add",
            "10",
            "-t",
            "-i",
            "busybox",
            "sh",
            "-c",
            "echo $A; hostname; cat /etc/hosts | grep db",
        ])?
        .ok()?;
    let out = engine.docker(&["start", "-a", "common"])?.ok()?;
    assert!(out.stdout.contains('1'), "{}", out.stdout);
    assert!(out.stdout.contains("box"), "{}", out.stdout);
    assert!(out.stdout.contains("192.0.2.7"), "{}", out.stdout);
    assert_eq!(
        engine.inspect(
            "common",
            "{{.HostConfig.Runtime}} {{.HostConfig.NetworkMode}} {{.HostConfig.RestartPolicy.Name}} \
             {{.HostConfig.Memory}} {{json .HostConfig.PortBindings}} {{json .HostConfig.Binds}}"
        )?,
        "runc none on-failure 67108864 {} null"
    );
    assert_eq!(
        engine
            .docker(&["info", "-f", "{{.DefaultRuntime}}"])?
            .ok()?
            .stdout
            .trim(),
        "runc"
    );
    Ok(())
}
