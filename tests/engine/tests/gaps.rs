//! Docker behaviours that are easy to miss: attach's log replay, regular-expression name
//! filters, `logs --until`, removing a restarting container, `exec --privileged`, `top` with
//! ps arguments and generated names.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rmachine_tests_engine::{cap_eff, Engine};

/// `POST /containers/{name}/attach?QUERY` over the socket, read to the end; returns the raw
/// stream after the `101` response head.
fn raw_attach(engine: &Engine, name: &str, query: &str) -> anyhow::Result<Vec<u8>> {
    let mut stream = UnixStream::connect(&engine.socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        stream,
        "POST /v1.45/containers/{name}/attach?{query} HTTP/1.1\r\nHost: docker\r\n\
         Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no response head: {response:?}"))?;
    let head = String::from_utf8_lossy(&response[..head_end]).into_owned();
    anyhow::ensure!(head.starts_with("HTTP/1.1 101"), "{head}");
    Ok(response[head_end + 4..].to_vec())
}

/// Splits a multiplexed stream into (stream type, payload) frames.
fn frames(mut data: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    while data.len() >= 8 {
        let len = u32::from_be_bytes([data[4], data[5], data[6], data[7]]) as usize;
        let end = (8 + len).min(data.len());
        out.push((data[0], String::from_utf8_lossy(&data[8..end]).into_owned()));
        data = &data[end..];
    }
    out
}

#[test]
fn attach_with_logs_replays_the_log_before_streaming() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "--name",
            "done",
            "busybox",
            "sh",
            "-c",
            "echo out; echo err >&2",
        ])?
        .ok()?;
    // A stopped container, logs only: the whole log, with its streams, then the end. The two
    // pipes race, so their relative order is not fixed.
    let mut replay = frames(&raw_attach(
        &engine,
        "done",
        "logs=1&stream=0&stdout=1&stderr=1",
    )?);
    replay.sort();
    assert_eq!(
        replay,
        vec![(1, "out\n".to_string()), (2, "err\n".to_string())]
    );
    let only_stdout = frames(&raw_attach(&engine, "done", "logs=1&stream=0&stdout=1")?);
    assert_eq!(only_stdout, vec![(1, "out\n".to_string())]);

    // A running container: what it printed so far, then what it prints next, once each.
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "live",
            "busybox",
            "sh",
            "-c",
            "echo first; sleep 2; echo second",
        ])?
        .ok()?;
    engine.wait_for(&["logs", "live"], Duration::from_secs(5), |r| {
        r.stdout == "first\n"
    })?;
    let both = frames(&raw_attach(
        &engine,
        "live",
        "logs=1&stream=1&stdout=1&stderr=1",
    )?);
    let text: String = both.iter().map(|(_, payload)| payload.as_str()).collect();
    assert_eq!(text, "first\nsecond\n");

    // The docker CLI's attach does not ask for the log: nothing old is replayed.
    let attach = engine.docker(&["start", "-a", "done"])?.ok()?;
    assert_eq!(attach.stdout, "out\n");
    Ok(())
}

#[test]
fn name_filters_are_regular_expressions_with_or_without_the_slash() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    for name in ["web", "web2", "myweb"] {
        engine
            .docker(&["create", "--name", name, "busybox", "true"])?
            .ok()?;
    }
    let names = |filter: &str| -> anyhow::Result<Vec<String>> {
        let run = engine
            .docker(&["ps", "-a", "--filter", filter, "--format", "{{.Names}}"])?
            .ok()?;
        let mut names: Vec<String> = run.stdout.lines().map(str::to_string).collect();
        names.sort();
        Ok(names)
    };
    assert_eq!(names("name=^/web$")?, ["web"]);
    assert_eq!(names("name=web")?, ["myweb", "web", "web2"]);
    assert_eq!(names("name=^/web")?, ["web", "web2"]);
    assert_eq!(names("name=web[0-9]")?, ["web2"]);
    // dockerd matches the name with and without its slash (daemon/list.go, since 18.09).
    assert_eq!(names("name=^web")?, ["web", "web2"]);
    assert!(names("name=^eb")?.is_empty());
    Ok(())
}

#[test]
fn logs_until_includes_a_line_stamped_exactly_then() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "--name",
            "stamped",
            "busybox",
            "sh",
            "-c",
            "echo one; sleep 1; echo two",
        ])?
        .ok()?;
    let stamped = engine.docker(&["logs", "-t", "stamped"])?.ok()?;
    let first = stamped.stdout.lines().next().unwrap_or("");
    let (time, line) = first
        .split_once(' ')
        .ok_or_else(|| anyhow::anyhow!("no timestamp: {}", stamped.stdout))?;
    assert_eq!(line, "one");
    let until = engine.docker(&["logs", "--until", time, "stamped"])?.ok()?;
    assert_eq!(until.stdout, "one\n");
    Ok(())
}

#[test]
fn a_restarting_container_is_removed_only_with_force() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "flappy",
            "--restart",
            "always",
            "busybox",
            "sh",
            "-c",
            "exit 3",
        ])?
        .ok()?;
    // After five quick restarts the back-off is seconds long: the state stays `restarting`.
    engine.wait_for(
        &[
            "inspect",
            "--format",
            "{{.RestartCount}} {{.State.Status}}",
            "flappy",
        ],
        Duration::from_secs(20),
        |r| {
            let mut fields = r.stdout.split_whitespace();
            let count: u32 = fields.next().and_then(|c| c.parse().ok()).unwrap_or(0);
            count >= 5 && fields.next() == Some("restarting")
        },
    )?;
    let rm = engine.docker(&["rm", "flappy"])?;
    assert_ne!(rm.code, 0);
    assert!(
        rm.stderr.contains(
            "cannot remove container \"flappy\": container is restarting: stop the container before removing or force remove"
        ),
        "{}",
        rm.stderr
    );
    engine.docker(&["rm", "-f", "flappy"])?.ok()?;
    assert_eq!(engine.docker(&["ps", "-aq"])?.ok()?.stdout, "");
    // The pending restart was cancelled: nothing comes back once its delay is over.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(engine.docker(&["ps", "-aq"])?.ok()?.stdout, "");
    assert!(!engine.log().contains("restart by policy failed"));
    Ok(())
}

#[test]
fn exec_privileged_gets_every_capability() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&["run", "-d", "--name", "capped", "busybox", "sleep", "1000"])?
        .ok()?;
    let plain = engine
        .docker(&["exec", "capped", "grep", "CapEff", "/proc/self/status"])?
        .ok()?;
    assert_eq!(cap_eff(&plain.stdout), "00000000a80425fb");
    let privileged = engine
        .docker(&[
            "exec",
            "--privileged",
            "capped",
            "grep",
            "CapEff",
            "/proc/self/status",
        ])?
        .ok()?;
    // Every capability this kernel knows: the bounding set of a root process outside.
    let host = std::fs::read_to_string("/proc/self/status")?;
    let all = host
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap_or("")
        .trim()
        .to_string();
    assert_eq!(cap_eff(&privileged.stdout), all);
    // The container itself keeps Docker's defaults.
    let after = engine
        .docker(&["exec", "capped", "grep", "CapEff", "/proc/1/status"])?
        .ok()?;
    assert_eq!(cap_eff(&after.stdout), "00000000a80425fb");
    Ok(())
}

#[test]
fn top_renders_ps_argument_forms_without_a_ps_binary() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&["run", "-d", "--name", "busy", "busybox", "sleep", "1000"])?
        .ok()?;
    let custom = engine.docker(&["top", "busy", "-o", "pid,comm"])?.ok()?;
    let mut lines = custom.stdout.lines();
    let titles: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(titles, ["PID", "COMMAND"]);
    let row: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(row.get(1), Some(&"sleep"), "{}", custom.stdout);
    assert!(row[0].parse::<u32>().is_ok(), "{}", custom.stdout);

    let aux = engine.docker(&["top", "busy", "aux"])?.ok()?;
    let titles: Vec<&str> = aux
        .stdout
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        titles,
        ["USER", "PID", "%CPU", "%MEM", "VSZ", "RSS", "TTY", "STAT", "START", "TIME", "COMMAND"]
    );
    assert!(aux.stdout.contains("sleep 1000"), "{}", aux.stdout);
    assert!(aux.stdout.lines().nth(1).unwrap_or("").starts_with("root "));

    let ef = engine.docker(&["top", "busy", "-ef"])?.ok()?;
    assert!(ef.stdout.starts_with("UID"), "{}", ef.stdout);
    assert!(ef.stdout.contains("sleep 1000"), "{}", ef.stdout);

    let no_pid = engine.docker(&["top", "busy", "-o", "comm"])?;
    assert_ne!(no_pid.code, 0);
    assert!(
        no_pid
            .stderr
            .contains("Error response from daemon: Couldn't find PID field in ps output"),
        "{}",
        no_pid.stderr
    );
    let bad = engine.docker(&["top", "busy", "-Z"])?;
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr
            .contains("Error response from daemon: ps: error: unsupported SysV option"),
        "{}",
        bad.stderr
    );
    Ok(())
}

#[test]
fn generated_names_are_adjective_underscore_surname() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let mut seen = std::collections::HashSet::new();
    for _ in 0..8 {
        engine.docker(&["create", "busybox", "true"])?.ok()?;
    }
    let ps = engine
        .docker(&["ps", "-a", "--format", "{{.Names}}"])?
        .ok()?;
    for name in ps.stdout.lines() {
        let (adjective, surname) = name
            .split_once('_')
            .ok_or_else(|| anyhow::anyhow!("not adjective_surname: {name}"))?;
        assert!(!adjective.is_empty() && adjective.chars().all(|c| c.is_ascii_lowercase()));
        assert!(surname
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .chars()
            .all(|c| c.is_ascii_lowercase()));
        assert_ne!(name, "boring_wozniak");
        assert!(seen.insert(name.to_string()), "duplicate name {name}");
    }
    assert_eq!(seen.len(), 8);
    Ok(())
}
