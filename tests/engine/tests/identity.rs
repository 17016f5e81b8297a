//! Process identity and the container's file system as Docker gives them: supplementary
//! groups, entrypoint reset, bare `-e VAR`, working-directory errors, the init layer's files
//! and `/etc/hosts`.

use std::time::Duration;

use rmachine_tests_engine::{cannot_run, Engine, Run};

const LIMIT: Duration = Duration::from_secs(60);

fn run(engine: &Engine, args: &[&str]) -> anyhow::Result<Run> {
    engine.docker_within(LIMIT, args)
}

fn stdout_of(engine: &Engine, args: &[&str]) -> anyhow::Result<String> {
    Ok(run(engine, args)?.ok()?.stdout)
}

#[test]
fn supplementary_groups_follow_dockers_get_user() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let id = |user: &[&str]| {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(user);
        args.extend(["busybox", "id"]);
        stdout_of(&engine, &args)
    };
    // The primary group always comes first; numeric ids need no passwd entry.
    assert_eq!(id(&["-u", "1000:1000"])?, "uid=1000 gid=1000 groups=1000\n");
    assert_eq!(
        id(&["-u", "1000"])?,
        "uid=1000 gid=0(root) groups=0(root)\n"
    );
    assert_eq!(
        id(&["-u", "root:root"])?,
        "uid=0(root) gid=0(root) groups=0(root)\n"
    );
    // No user: root from passwd, with root's memberships from /etc/group.
    assert_eq!(
        id(&[])?,
        "uid=0(root) gid=0(root) groups=0(root),10(wheel)\n"
    );
    assert_eq!(
        id(&[
            "-u",
            "1000:1000",
            "--group-add",
            "users",
            "--group-add",
            "4242"
        ])?,
        // The kernel keeps supplementary groups sorted.
        "uid=1000 gid=1000 groups=100(users),1000,4242\n"
    );
    let unknown = run(
        &engine,
        &[
            "run",
            "--rm",
            "-u",
            "1000",
            "--group-add",
            "nosuch",
            "busybox",
            "id",
        ],
    )?;
    assert!(
        unknown
            .stderr
            .contains("unable to find group nosuch: no matching entries in group file"),
        "{unknown:?}"
    );

    // Memberships only when no group is named (the audit's alice case).
    let dir = tempfile::tempdir()?;
    let passwd = dir.path().join("passwd");
    let group = dir.path().join("group");
    std::fs::write(
        &passwd,
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1001:1002:Alice:/home/alice:/bin/sh\n",
    )?;
    std::fs::write(&group, "root:x:0:\nstaff:x:1002:\nextra:x:1003:alice\n")?;
    let (passwd, group) = (passwd.to_string_lossy(), group.to_string_lossy());
    for (name, user) in [("upw", "alice"), ("upw2", "alice:staff")] {
        run(
            &engine,
            &[
                "create",
                "--name",
                name,
                "-u",
                user,
                "busybox",
                "sh",
                "-c",
                "id; echo $HOME",
            ],
        )?
        .ok()?;
        run(&engine, &["cp", &passwd, &format!("{name}:/etc/passwd")])?.ok()?;
        run(&engine, &["cp", &group, &format!("{name}:/etc/group")])?.ok()?;
    }
    assert_eq!(
        stdout_of(&engine, &["start", "-a", "upw"])?,
        "uid=1001(alice) gid=1002(staff) groups=1002(staff),1003(extra)\n/home/alice\n"
    );
    assert_eq!(
        stdout_of(&engine, &["start", "-a", "upw2"])?,
        "uid=1001(alice) gid=1002(staff) groups=1002(staff)\n/home/alice\n"
    );

    // exec: inherited from the container, or its own -u, with the container's --group-add.
    run(
        &engine,
        &[
            "run",
            "-d",
            "--name",
            "ex",
            "-u",
            "1000:1000",
            "--group-add",
            "users",
            "busybox",
            "sleep",
            "1000",
        ],
    )?
    .ok()?;
    assert_eq!(
        stdout_of(&engine, &["exec", "ex", "id"])?,
        "uid=1000 gid=1000 groups=100(users),1000\n"
    );
    assert_eq!(
        stdout_of(&engine, &["exec", "-u", "0", "ex", "id"])?,
        "uid=0(root) gid=0(root) groups=0(root),10(wheel),100(users)\n"
    );
    assert_eq!(
        stdout_of(&engine, &["exec", "-u", "nobody:2", "ex", "id"])?,
        "uid=65534(nobody) gid=2(bin) groups=2(bin),100(users)\n"
    );
    // An unknown exec user is refused when the exec is created (moby since v25).
    let bad = run(&engine, &["exec", "-u", "nobody2", "ex", "id"])?;
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr
            .contains("unable to find user nobody2: no matching entries in passwd file"),
        "{bad:?}"
    );
    run(&engine, &["rm", "-f", "ex", "upw", "upw2"])?.ok()?;
    Ok(())
}

#[test]
fn an_empty_entrypoint_resets_the_images_and_a_command_is_required() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let echo = run(
        &engine,
        &["run", "--rm", "--entrypoint", "", "busybox", "echo", "x"],
    )?;
    assert_eq!((echo.code, echo.stdout.as_str()), (0, "x\n"), "{echo:?}");

    // `[""]` keeps the image's Cmd out, so nothing is left to run.
    let none = run(&engine, &["create", "--entrypoint", "", "busybox"])?;
    assert_eq!(none.code, 1, "{none:?}");
    assert!(
        none.stderr
            .contains("Error response from daemon: no command specified"),
        "{none:?}"
    );
    assert_eq!(stdout_of(&engine, &["ps", "-aq"])?, "");
    Ok(())
}

#[test]
fn a_bare_env_name_unset_on_the_client_is_dropped_or_unsets() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let env = engine
        .docker_command(&[
            "run",
            "--rm",
            "-e",
            "RMACHINE_UNSET_VAR",
            "-e",
            "HOSTNAME",
            "-e",
            "SET=1",
            "busybox",
            "env",
        ])
        .env_remove("RMACHINE_UNSET_VAR")
        .env_remove("HOSTNAME")
        .output()?;
    let env = String::from_utf8_lossy(&env.stdout).into_owned();
    let names: Vec<&str> = env
        .lines()
        .map(|l| l.split('=').next().unwrap_or(""))
        .collect();
    assert!(!names.contains(&"RMACHINE_UNSET_VAR"), "{env}");
    // A bare name unsets a default of the daemon's (ReplaceOrAppendEnvValues).
    assert!(!names.contains(&"HOSTNAME"), "{env}");
    assert!(env.lines().any(|l| l == "SET=1"), "{env}");
    assert!(names.contains(&"PATH") && names.contains(&"HOME"), "{env}");
    Ok(())
}

#[test]
fn a_variable_given_twice_is_set_once_with_the_last_value() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let env_file = engine.dir().join("env.list");
    std::fs::write(&env_file, "TWICE=from-file\nFROMHOST\n")?;
    let env = engine
        .docker_command(&[
            "run",
            "--rm",
            "--env-file",
            &env_file.to_string_lossy(),
            "-e",
            "FROMHOST",
            "-e",
            "TWICE=from-flag",
            "busybox",
            "env",
        ])
        .env("FROMHOST", "hostval")
        .output()?;
    let env = String::from_utf8_lossy(&env.stdout).into_owned();
    let lines: Vec<&str> = env.lines().collect();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("FROMHOST=")).count(),
        1,
        "{env}"
    );
    assert!(lines.contains(&"FROMHOST=hostval"), "{env}");
    assert!(lines.contains(&"TWICE=from-flag"), "{env}");
    assert!(!lines.contains(&"TWICE=from-file"), "{env}");
    Ok(())
}

#[test]
fn working_directory_errors_read_as_dockers() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let file = run(
        &engine,
        &["run", "--rm", "-w", "/etc/passwd", "busybox", "pwd"],
    )?;
    assert_eq!(file.code, 125, "{file:?}");
    assert!(
        file.stderr.contains(
            "docker: Error response from daemon: Cannot mkdir: /etc/passwd is not a directory"
        ),
        "{file:?}"
    );
    // dockerd already refuses it at create.
    let create = run(&engine, &["create", "-w", "/etc/passwd", "busybox", "pwd"])?;
    assert_eq!(create.code, 1, "{create:?}");
    assert!(
        create
            .stderr
            .contains("Cannot mkdir: /etc/passwd is not a directory"),
        "{create:?}"
    );
    // A missing one is still created.
    assert_eq!(
        stdout_of(
            &engine,
            &["run", "--rm", "-w", "/srv/new", "busybox", "pwd"]
        )?,
        "/srv/new\n"
    );

    run(
        &engine,
        &["run", "-d", "--name", "wd", "busybox", "sleep", "1000"],
    )?
    .ok()?;
    let missing = run(&engine, &["exec", "-w", "/nonexistent", "wd", "pwd"])?;
    assert_eq!(missing.code, 127, "{missing:?}");
    assert!(
        missing.stdout.contains(
            "OCI runtime exec failed: exec failed: unable to start container process: chdir to \
             cwd (\"/nonexistent\") set in config.json failed: no such file or directory: unknown"
        ),
        "{missing:?}"
    );
    let not_dir = run(&engine, &["exec", "-w", "/etc/passwd", "wd", "pwd"])?;
    assert_eq!(not_dir.code, 127, "{not_dir:?}");
    assert!(
        not_dir.stdout.contains(
            "not a directory: unknown: Are you trying to mount a directory onto a file \
             (or vice-versa)? Check if the specified host path exists and is the expected type"
        ),
        "{not_dir:?}"
    );
    run(&engine, &["rm", "-f", "wd"])?.ok()?;
    Ok(())
}

#[test]
fn every_container_has_dockerenv_and_etc_mtab_and_dockers_hosts() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let ls = stdout_of(
        &engine,
        &[
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "stat -c '%A %s %U' /.dockerenv; readlink /etc/mtab; head -1 /etc/mtab",
        ],
    )?;
    let lines: Vec<&str> = ls.lines().collect();
    assert_eq!(lines[..2], ["-rwxr-xr-x 0 root", "/proc/mounts"], "{ls}");
    assert!(lines[2].starts_with("overlay / overlay"), "{ls}");

    // Part of a never-started container's file system (export)...
    run(&engine, &["create", "--name", "fresh", "busybox", "true"])?.ok()?;
    let tar = engine.docker_command(&["export", "fresh"]).output()?;
    assert!(tar.status.success());
    let mut names = Vec::new();
    for entry in tar::Archive::new(&tar.stdout[..]).entries()? {
        let entry = entry?;
        names.push(entry.path()?.to_string_lossy().into_owned());
    }
    for wanted in [
        ".dockerenv",
        "etc/mtab",
        "etc/hostname",
        "etc/hosts",
        "etc/resolv.conf",
        "dev/console",
        "dev/pts/",
        "dev/shm/",
        "proc/",
        "sys/",
    ] {
        assert!(names.iter().any(|n| n == wanted), "{wanted} in {names:?}");
    }
    // ...and of what exec sees, but not a change of the container's own.
    run(&engine, &["start", "-a", "fresh"])?.ok()?;
    assert_eq!(stdout_of(&engine, &["diff", "fresh"])?, "");
    run(
        &engine,
        &["run", "-d", "--name", "live", "busybox", "sleep", "1000"],
    )?
    .ok()?;
    assert_eq!(
        stdout_of(&engine, &["exec", "live", "ls", "-a", "/.dockerenv"])?,
        "/.dockerenv\n"
    );

    // moby's default /etc/hosts; no line for the hostname without a network interface.
    let defaults = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
                    fe00::\tip6-localnet\nff00::\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
                    ff02::2\tip6-allrouters\n";
    let hosts = |network: &str| {
        stdout_of(
            &engine,
            &[
                "run",
                "--rm",
                "--network",
                network,
                "-h",
                "myhost",
                "busybox",
                "cat",
                "/etc/hosts",
            ],
        )
    };
    assert_eq!(hosts("none")?, defaults);
    // On the bridge, the container's address and hostname follow.
    let bridged = hosts("bridge")?;
    let own = bridged.strip_prefix(defaults).unwrap_or_default();
    assert!(
        own.starts_with("172.17.0.") && own.ends_with("\tmyhost\n") && own.lines().count() == 1,
        "{bridged}"
    );
    run(&engine, &["rm", "-f", "fresh", "live"])?.ok()?;
    Ok(())
}

/// On a cgroup v1 host (this development host), containers see their own hierarchies at
/// `/sys/fs/cgroup/CONTROLLER`, read-only, as with runc, and are in the cpuset.
#[test]
fn v1_hosts_show_the_containers_own_cgroups() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    if !std::path::Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
        cannot_run("not a cgroup v1 host");
        return Ok(());
    }
    let out = stdout_of(
        &engine,
        &[
            "run",
            "--rm",
            "--memory",
            "64m",
            "--cpus",
            "0.5",
            "--pids-limit",
            "50",
            "--cpu-shares",
            "512",
            "--cpuset-cpus",
            "0",
            "busybox",
            "sh",
            "-c",
            "cd /sys/fs/cgroup; cat memory/memory.limit_in_bytes cpu/cpu.cfs_quota_us \
             pids/pids.max cpu/cpu.shares cpuset/cpuset.cpus; ls; \
             grep cpuset: /proc/self/cgroup | sed -E 's/[0-9a-f]{64}/ID/' | cut -d: -f2-; \
             grep Cpus_allowed_list /proc/self/status | tr -d '\\t'; \
             echo 1 > pids/pids.max || echo refused",
        ],
    )?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..5], ["67108864", "50000", "50", "512", "0"], "{out}");
    for hierarchy in [
        "blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids",
    ] {
        assert!(lines.contains(&hierarchy), "{hierarchy} in {out}");
    }
    if std::path::Path::new("/sys/fs/cgroup/systemd").is_dir() {
        assert!(lines.contains(&"systemd"), "{out}");
    }
    // In the container's own cpuset cgroup, which --cpuset-cpus limited.
    assert!(lines.contains(&"cpuset:/rmachine/ID"), "{out}");
    assert!(lines.contains(&"Cpus_allowed_list:0"), "{out}");
    assert!(lines.contains(&"refused"), "{out}");
    Ok(())
}

#[test]
fn add_host_entries_land_in_etc_hosts() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let hosts = stdout_of(
        &engine,
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "--add-host",
            "db:10.0.0.5",
            "busybox",
            "tail",
            "-n",
            "1",
            "/etc/hosts",
        ],
    )?;
    assert_eq!(hosts, "10.0.0.5\tdb\n");
    let gateway = engine.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--add-host",
        "host.docker.internal:host-gateway",
        "busybox",
        "true",
    ])?;
    assert_eq!(gateway.code, 125, "{gateway:?}");
    assert!(
        gateway.stderr.contains("host-gateway"),
        "{}",
        gateway.stderr
    );
    // On the bridge, host-gateway is the bridge's address.
    let hosts = stdout_of(
        &engine,
        &[
            "run",
            "--rm",
            "--add-host",
            "host.docker.internal:host-gateway",
            "busybox",
            "grep",
            "host.docker.internal",
            "/etc/hosts",
        ],
    )?;
    assert_eq!(hosts, "172.17.0.1\thost.docker.internal\n");
    Ok(())
}

#[test]
fn shm_size_sets_dev_shm() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let size = |args: &[&str]| -> anyhow::Result<String> {
        let mut all = vec!["run", "--rm"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["busybox", "sh", "-c", "df -k /dev/shm | tail -n 1"]);
        let line = stdout_of(&engine, &all)?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string())
    };
    assert_eq!(size(&[])?, "65536", "Docker's default 64 MiB");
    assert_eq!(size(&["--shm-size", "128m"])?, "131072");
    Ok(())
}
