//! `--pid`, `--ipc`, `--uts` and `--cgroupns`, seen from inside the container against the
//! host's (this test process's) namespaces.

use rmachine_tests_engine::Engine;

/// The namespace of `kind` this test process (the host side) is in.
fn host_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .expect("read own namespace")
        .to_string_lossy()
        .into_owned()
}

fn container_ns(engine: &Engine, args: &[&str], kind: &str) -> anyhow::Result<String> {
    let path = format!("/proc/self/ns/{kind}");
    let mut argv = vec!["run", "--rm"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["busybox", "readlink", &path]);
    Ok(engine.docker(&argv)?.ok()?.stdout.trim().to_string())
}

/// No container was left behind by a refused `docker run`.
fn assert_none_left(engine: &Engine) -> anyhow::Result<()> {
    let all = engine.docker(&["ps", "-aq"])?.ok()?;
    assert_eq!(all.stdout, "", "a container was left behind");
    Ok(())
}

#[test]
fn host_modes_share_the_hosts_namespaces_and_defaults_do_not() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    for (flag, kind) in [
        ("--pid", "pid"),
        ("--ipc", "ipc"),
        ("--uts", "uts"),
        ("--cgroupns", "cgroup"),
    ] {
        assert_eq!(
            container_ns(&engine, &[flag, "host"], kind)?,
            host_ns(kind),
            "{flag} host"
        );
    }
    for kind in ["pid", "ipc", "uts"] {
        assert_ne!(container_ns(&engine, &[], kind)?, host_ns(kind), "{kind}");
    }
    // This host runs cgroup v1: Docker's default there is the host's cgroup namespace.
    assert_ne!(
        container_ns(&engine, &["--cgroupns", "private"], "cgroup")?,
        host_ns("cgroup")
    );
    engine
        .docker(&["create", "--name", "hostpid", "--pid", "host", "busybox"])?
        .ok()?;
    assert_eq!(
        engine.inspect("hostpid", "{{.HostConfig.PidMode}}")?,
        "host"
    );

    // With the host's PID namespace the host's processes are visible, this test among them.
    let ps = engine
        .docker(&["run", "--rm", "--pid", "host", "busybox", "ps", "-o", "pid"])?
        .ok()?;
    let me = std::process::id().to_string();
    assert!(ps.stdout.lines().any(|l| l.trim() == me), "{ps:?}");

    // With the host's UTS namespace the name is the host's; /etc/hostname keeps the short id
    // (dockerd names the container so unless its network is the host's).
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string();
    let uts = engine
        .docker(&[
            "run",
            "--name",
            "utshost",
            "--uts",
            "host",
            "busybox",
            "sh",
            "-c",
            "hostname; cat /etc/hostname",
        ])?
        .ok()?;
    let id = engine.inspect("utshost", "{{.Id}}")?;
    assert_eq!(uts.stdout, format!("{host_name}\n{}\n", &id[..12]));
    Ok(())
}

#[test]
fn container_modes_join_a_running_donor() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "donor",
            "--ipc",
            "shareable",
            "busybox",
            "sh",
            "-c",
            "echo shared > /dev/shm/token; exec sleep 1000",
        ])?
        .ok()?;
    let donor = |kind: &str| -> anyhow::Result<String> {
        let path = format!("/proc/self/ns/{kind}");
        Ok(engine
            .docker(&["exec", "donor", "readlink", &path])?
            .ok()?
            .stdout
            .trim()
            .to_string())
    };
    engine.wait_for(
        &["exec", "donor", "cat", "/dev/shm/token"],
        std::time::Duration::from_secs(10),
        |run| run.code == 0,
    )?;
    assert_eq!(
        container_ns(&engine, &["--pid", "container:donor"], "pid")?,
        donor("pid")?
    );
    assert_eq!(
        container_ns(&engine, &["--ipc", "container:donor"], "ipc")?,
        donor("ipc")?
    );
    // The donor's processes and its /dev/shm are the joiner's too.
    let joined = engine
        .docker(&[
            "run",
            "--rm",
            "--pid",
            "container:donor",
            "--ipc",
            "container:donor",
            "busybox",
            "sh",
            "-c",
            "ps -o args | grep -c '^sleep 1000'; cat /dev/shm/token",
        ])?
        .ok()?;
    assert_eq!(joined.stdout, "1\nshared\n");
    // The name is kept as the donor's id, as dockerd does.
    engine
        .docker(&[
            "create",
            "--name",
            "joiner",
            "--pid",
            "container:donor",
            "busybox",
        ])?
        .ok()?;
    let id = engine.inspect("donor", "{{.Id}}")?;
    assert_eq!(
        engine.inspect("joiner", "{{.HostConfig.PidMode}}")?,
        format!("container:{id}")
    );
    Ok(())
}

#[test]
fn ipc_none_has_no_dev_shm_and_private_is_the_default() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let none = engine.docker(&["run", "--rm", "--ipc", "none", "busybox", "ls", "/dev/shm"])?;
    assert_eq!(none.code, 1, "{none:?}");
    assert!(
        none.stderr.contains("No such file or directory"),
        "{none:?}"
    );
    engine
        .docker(&["create", "--name", "plain", "busybox"])?
        .ok()?;
    assert_eq!(
        engine.inspect("plain", "{{.HostConfig.IpcMode}}")?,
        "private"
    );
    Ok(())
}

#[test]
fn bad_targets_are_refused_with_125_and_leave_nothing() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let unknown = engine.docker(&["run", "--pid", "container:nope", "busybox", "true"])?;
    assert_eq!(unknown.code, 125, "{unknown:?}");
    assert!(
        unknown
            .stderr
            .contains("failed to join PID namespace: No such container: nope"),
        "{unknown:?}"
    );
    let unknown = engine.docker(&["run", "--ipc", "container:nope", "busybox", "true"])?;
    assert_eq!(unknown.code, 125, "{unknown:?}");
    assert!(
        unknown
            .stderr
            .contains("failed to join IPC namespace: No such container: nope"),
        "{unknown:?}"
    );
    assert_none_left(&engine)?;

    // A private (default) IPC cannot be joined: dockerd's hint.
    engine
        .docker(&["run", "-d", "--name", "private", "busybox", "sleep", "1000"])?
        .ok()?;
    let refused = engine.docker(&["run", "--ipc", "container:private", "busybox", "true"])?;
    assert_eq!(refused.code, 125, "{refused:?}");
    assert!(
        refused.stderr.contains(
            "container private: non-shareable IPC (hint: use IpcMode:shareable for the donor container)"
        ),
        "{refused:?}"
    );
    let all = engine.docker(&["ps", "-aq"])?.ok()?;
    assert_eq!(all.stdout.lines().count(), 1, "only the donor: {all:?}");

    // A stopped target fails the start, as with dockerd (which names it by id by then).
    engine.docker(&["kill", "private"])?.ok()?;
    engine.docker(&["wait", "private"])?.ok()?;
    let id = engine.inspect("private", "{{.Id}}")?;
    let stopped = engine.docker(&["run", "--pid", "container:private", "busybox", "true"])?;
    assert_eq!(stopped.code, 125, "{stopped:?}");
    assert!(
        stopped.stderr.contains(&format!(
            "failed to join PID namespace: container {id} is not running"
        )),
        "{stopped:?}"
    );
    Ok(())
}
