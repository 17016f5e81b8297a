//! The engine's own crash: kill -9 during 20 concurrent `docker run`s, then a restart on the
//! same data root; and engines that must not share a data root or a socket.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rmachine_tests_engine::{engine_command, require_root, Engine};

/// PIDs of the containers' `sleep ARG` processes (not the `docker run … sleep ARG` clients).
fn processes_with_arg(arg: &str) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                let words: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                words.first() == Some(&&b"sleep"[..]) && words.get(1) == Some(&arg.as_bytes())
            })
        })
        .collect()
}

/// The cgroup directories of container `id` that exist on this host (v1 and v2 layouts).
fn cgroups_of(id: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join("rmachine").join(id)];
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten() {
            dirs.push(entry.path().join("rmachine").join(id));
        }
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// A number no other test's process carries on its command line.
fn unique_marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("7{}{:06}", std::process::id(), nanos % 1_000_000)
}

/// Waits for `child` at most `limit`, killing it after that.
fn output_within(mut child: Child, limit: Duration) -> Result<Output> {
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("process did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child.wait_with_output()?)
}

fn all_ids(engine: &Engine) -> Result<Vec<String>> {
    Ok(engine
        .docker(&["ps", "-aq", "--no-trunc"])?
        .ok()?
        .stdout
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

#[test]
fn kill_9_during_20_runs_leaves_no_survivor_no_second_copy_and_nothing_behind() -> Result<()> {
    let Some(mut engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let marker = unique_marker();
    let mut clients = Vec::new();
    for i in 0..20 {
        let name = format!("crash{i}");
        clients.push(
            engine
                .docker_command(&["run", "-d", "--name", &name, "busybox", "sleep", &marker])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
    }
    // Kill the engine while runs are in flight: some running, some being started or created.
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes_with_arg(&marker).len() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    engine.crash()?;
    for mut client in clients {
        let _ = client.wait();
    }
    // What a killed `docker load` or `docker cp` leaves, and a directory made by a create
    // whose record was never written.
    let data = engine.data_root();
    fs::create_dir_all(data.join("tmp"))?;
    fs::write(
        data.join("tmp/load-0123456789abcdef.tar"),
        vec![0u8; 1 << 20],
    )?;
    fs::write(data.join("tmp/cp-0123456789abcdef.tar"), vec![0u8; 1 << 20])?;
    let orphan = data.join("containers").join("e".repeat(64));
    fs::create_dir_all(orphan.join("upper"))?;

    engine.spawn()?;
    let survivors = processes_with_arg(&marker);
    assert!(
        survivors.is_empty(),
        "container processes outlived the engine's restart: {survivors:?}\n{}",
        engine.log()
    );
    let ids = all_ids(&engine)?;
    assert!(!ids.is_empty(), "no container was created before the kill");
    let running = engine.docker(&["ps", "-q"])?.ok()?.stdout;
    assert!(
        running.trim().is_empty(),
        "running after restart: {running}"
    );
    for id in &ids {
        assert_eq!(cgroups_of(id), Vec::<PathBuf>::new(), "cgroup of {id} left");
    }
    assert!(
        !orphan.exists(),
        "container directory without a record left"
    );
    let spools: Vec<_> = fs::read_dir(data.join("tmp"))?.flatten().collect();
    assert!(spools.is_empty(), "spools left: {spools:?}");
    for entry in fs::read_dir(data.join("containers"))?.flatten() {
        assert!(
            entry.path().join("config.v2.json").exists(),
            "container directory without a record: {}",
            entry.path().display()
        );
    }

    // Starting them again runs exactly one copy of each.
    for id in &ids {
        engine.docker(&["start", id])?.ok()?;
    }
    let copies = processes_with_arg(&marker);
    assert_eq!(
        copies.len(),
        ids.len(),
        "one process per container: {copies:?}"
    );
    let mut rm = vec!["rm", "-f"];
    rm.extend(ids.iter().map(String::as_str));
    engine.docker(&rm)?.ok()?;
    assert_eq!(processes_with_arg(&marker), Vec::<i32>::new());
    for id in &ids {
        assert_eq!(
            cgroups_of(id),
            Vec::<PathBuf>::new(),
            "cgroup of {id} kept by rm"
        );
    }
    Ok(())
}

#[test]
fn rm_removes_the_cgroup_a_killed_monitor_left() -> Result<()> {
    let Some(mut engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let id = engine
        .docker(&["create", "--name", "left", "busybox", "true"])?
        .ok()?
        .stdout
        .trim()
        .to_string();
    engine.docker(&["start", "-a", "left"])?.ok()?;
    // As after a monitor killed with the engine: the cgroup is there, the container is not.
    engine.terminate()?;
    let cgroup = Path::new("/sys/fs/cgroup/pids/rmachine").join(&id);
    let cgroup = if Path::new("/sys/fs/cgroup/pids").is_dir() {
        cgroup
    } else {
        Path::new("/sys/fs/cgroup/rmachine").join(&id)
    };
    fs::create_dir_all(&cgroup).context("cannot make a stand-in cgroup")?;
    engine.spawn()?;
    // The restart already cleaned it; make one again, as a kill during the run would.
    fs::create_dir_all(&cgroup)?;
    engine.docker(&["rm", "left"])?.ok()?;
    assert!(!cgroup.exists(), "docker rm kept {}", cgroup.display());
    Ok(())
}

#[test]
fn a_container_process_posing_as_a_monitor_gets_no_other_container_stopped() -> Result<()> {
    let Some(mut engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let victim = engine
        .docker(&["create", "--name", "victim", "busybox", "true"])?
        .ok()?
        .stdout
        .trim()
        .to_string();
    let dir = engine
        .data_root()
        .canonicalize()?
        .join("containers")
        .join(&victim);
    let marker = unique_marker();
    // `sh run DIR` reads like a monitor's `RUNTIME run DIR`; in the host's PID namespace and
    // detached from the container's PID 1, it outlives the engine as a monitor would.
    let script = format!(
        "cd / && echo 'sleep {marker}' > run && (setsid sh run {} &) && exec sleep 1000",
        dir.display()
    );
    engine
        .docker(&["run", "-d", "--pid", "host", "busybox", "sh", "-c", &script])?
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with_arg(&marker).is_empty() {
        if Instant::now() > deadline {
            bail!("the posing process did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    engine.crash()?;
    engine.spawn()?;
    assert_eq!(engine.inspect("victim", "{{.State.Status}}")?, "created");
    assert_eq!(
        engine.inspect("victim", "{{.State.FinishedAt}}")?,
        "0001-01-01T00:00:00Z"
    );
    Ok(())
}

#[test]
fn a_second_engine_on_the_same_data_root_refuses_naming_the_first() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&["run", "-d", "--name", "kept", "busybox", "sleep", "1000"])?
        .ok()?;
    let other_socket = engine.dir().join("other.sock");
    let second = engine_command(&engine.data_root(), &other_socket)?
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = output_within(second, Duration::from_secs(20))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second engine started: {stderr}");
    let pid = engine.pid().context("engine not running")?;
    assert!(
        stderr.contains(&format!("is in use by another engine (pid {pid})")),
        "{stderr}"
    );
    assert!(!other_socket.exists(), "the second engine bound its socket");
    assert_eq!(engine.inspect("kept", "{{.State.Running}}")?, "true");
    engine.ping()?;
    Ok(())
}

/// Two engines with their own data roots and one exec root (the default `/var/run/
/// rmachine-engine` for both): the second would empty the first's exec specs at start.
#[test]
fn a_second_engine_on_the_same_exec_root_refuses_and_the_first_s_execs_work() -> Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&["run", "-d", "--name", "kept", "busybox", "sleep", "1000"])?
        .ok()?;
    let other_socket = engine.dir().join("other.sock");
    let exec_root = engine.dir().join("exec-root");
    let second = Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(rmachine_tests_engine::binary("rmachine-engine")?)
        .arg("--data-root")
        .arg(engine.dir().join("other-data"))
        .arg("--exec-root")
        .arg(&exec_root)
        .arg("-H")
        .arg(format!("unix://{}", other_socket.display()))
        .arg("--runtime")
        .arg(rmachine_tests_engine::binary("rmachine-runtime")?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = output_within(second, Duration::from_secs(20))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second engine started: {stderr}");
    let pid = engine.pid().context("engine not running")?;
    assert!(
        stderr.contains(&format!(
            "exec root {} is in use by another engine (pid {pid})",
            exec_root.display()
        )),
        "{stderr}"
    );
    let run = engine.docker(&["exec", "kept", "echo", "still"])?;
    assert_eq!(run.ok()?.stdout.trim(), "still");
    Ok(())
}

#[test]
fn a_socket_another_engine_serves_is_not_taken_over() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let engine = Engine::start()?;
    let other_root = tempfile::tempdir()?;
    let second = engine_command(&other_root.path().join("data"), &engine.socket)?
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = output_within(second, Duration::from_secs(20))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second engine started: {stderr}");
    assert!(
        stderr.contains(&format!(
            "socket {} is in use by another engine",
            engine.socket.display()
        )),
        "{stderr}"
    );
    engine.ping()?;
    engine.docker(&["ps"])?.ok()?;

    // A socket left by an engine that died is replaced.
    let stale = other_root.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale)?);
    let mut third = engine_command(&other_root.path().join("data"), &stale)?
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let served = loop {
        if std::os::unix::net::UnixStream::connect(&stale).is_ok() {
            break true;
        }
        if Instant::now() > deadline || third.try_wait()?.is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Command::new("kill")
        .arg("-TERM")
        .arg(third.id().to_string())
        .status()?;
    let _ = third.wait();
    assert!(served, "a stale socket was not replaced");
    Ok(())
}

/// CPU time (user + system, clock ticks) process `pid` has used.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

#[test]
fn out_of_descriptors_the_accept_loop_waits_instead_of_spinning() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("docker.sock");
    let engine = engine_command(&dir.path().join("data"), &socket)?;
    let mut limited = Command::new("prlimit");
    limited
        .arg("--nofile=96:96")
        .arg("--")
        .arg(engine.get_program())
        .args(engine.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = limited.spawn()?;
    let pid = child.id();
    let result = (|| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if Instant::now() > deadline {
                bail!("engine did not listen");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Idle connections: each accepted one holds a descriptor of the engine; the rest wait
        // in the backlog, so the listener stays ready while accept fails with EMFILE.
        let mut held = Vec::new();
        for _ in 0..300 {
            held.push(std::os::unix::net::UnixStream::connect(&socket)?);
        }
        std::thread::sleep(Duration::from_millis(500));
        let before = cpu_ticks(pid)?;
        std::thread::sleep(Duration::from_secs(2));
        let used = cpu_ticks(pid)? - before;
        // A spinning accept loop burns a core (up to 200 ticks in 2 s; 59 measured on this
        // busy machine before the fix, 0 after).
        assert!(
            used < 20,
            "the engine used {used} ticks in 2 s while out of descriptors"
        );
        drop(held);
        // Descriptors freed: the engine serves again.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut stream = std::os::unix::net::UnixStream::connect(&socket)?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            use std::io::{Read, Write};
            stream.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")?;
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if answer.ends_with("OK") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("engine does not answer after descriptors were freed: {answer:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = output_within(child, Duration::from_secs(20));
    result
}
