//! `docker attach --logs`: the container's log so far, then the live stream, on one
//! hijacked connection.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rmachine_tests_engine::Engine;

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
