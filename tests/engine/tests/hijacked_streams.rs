//! Hijacked exec streams read the way docker-py reads them: the `101` response headers through
//! a buffered reader, then the raw socket. Output that arrived in the same read as the headers
//! would be lost to such a client, so it must never come before the headers were sent; and
//! the framing follows the `Tty` of the start request, as dockerd's.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rmachine_tests_engine::Engine;

/// A started hijack: the response head, what a buffered client read past it, and the socket.
struct Hijacked {
    head: String,
    past_head: Vec<u8>,
    conn: UnixStream,
}

fn post(engine: &Engine, path: &str, body: &str) -> anyhow::Result<Hijacked> {
    let mut conn = UnixStream::connect(&engine.socket)?;
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        conn,
        "POST {path} HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    // As a buffered reader does: big reads until the end of the headers is in the buffer.
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 65536];
    let end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "connection closed in the headers: {buffer:?}");
        buffer.extend_from_slice(&chunk[..n]);
    };
    Ok(Hijacked {
        head: String::from_utf8_lossy(&buffer[..end]).into_owned(),
        past_head: buffer[end..].to_vec(),
        conn,
    })
}

fn exec_create(engine: &Engine, container: &str, body: &str) -> anyhow::Result<String> {
    let (status, created) =
        engine.request("POST", &format!("/v1.45/containers/{container}/exec"), body)?;
    anyhow::ensure!(status == 201, "exec create: {status} {created}");
    let created: serde_json::Value = serde_json::from_str(&created)?;
    Ok(created["Id"].as_str().unwrap_or_default().to_string())
}

fn start_exec(engine: &Engine, id: &str, tty: bool) -> anyhow::Result<(String, Vec<u8>)> {
    let mut hijacked = post(
        engine,
        &format!("/v1.45/exec/{id}/start"),
        &format!(r#"{{"Detach":false,"Tty":{tty}}}"#),
    )?;
    anyhow::ensure!(
        hijacked.past_head.is_empty(),
        "output arrived with the 101 headers, a buffered client loses it: {:?}",
        hijacked.past_head
    );
    let mut rest = Vec::new();
    hijacked.conn.read_to_end(&mut rest)?;
    Ok((hijacked.head, rest))
}

/// Makes this thread a real-time one while the guard lives, so that it reads as soon as data
/// arrives: on a busy machine an ordinary thread can be scheduled so late that the headers and
/// the output are both waiting, which says nothing about the order the engine sent them in.
struct Prompt;

fn set_policy(policy: libc::c_int, priority: libc::c_int) -> libc::c_int {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pthread_self() is the calling thread, and `param` outlives the call.
    unsafe { libc::pthread_setschedparam(libc::pthread_self(), policy, &param) }
}

fn read_promptly() -> anyhow::Result<Prompt> {
    let rc = set_policy(libc::SCHED_FIFO, 10);
    anyhow::ensure!(rc == 0, "cannot make the test thread real-time: error {rc}");
    Ok(Prompt)
}

impl Drop for Prompt {
    fn drop(&mut self) {
        // Back to normal before the engine is stopped (its helpers would inherit the policy).
        set_policy(libc::SCHED_OTHER, 0);
    }
}

#[test]
fn exec_output_never_shares_a_read_with_the_upgrade_response() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&["run", "-d", "--name", "box", "busybox", "sleep", "1000"])?
        .ok()?;
    let create = r#"{"Cmd":["echo","hi"],"AttachStdout":true,"AttachStderr":true}"#;
    let prompt = read_promptly()?;
    for run in 0..500 {
        let id = exec_create(&engine, "box", create)?;
        let (head, rest) =
            start_exec(&engine, &id, false).map_err(|e| e.context(format!("run {run}")))?;
        assert!(head.starts_with("HTTP/1.1 101"), "run {run}: {head}");
        assert_eq!(rest, b"\x01\0\0\0\0\0\0\x03hi\n", "run {run}");
    }
    drop(prompt);
    Ok(())
}

#[test]
fn exec_framing_follows_the_tty_of_the_start_request() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&["run", "-d", "--name", "box", "busybox", "sleep", "1000"])?
        .ok()?;
    // A TTY exec started without Tty: multiplexed, as dockerd frames it (the terminal's
    // output, with its \r\n, on stdout).
    let id = exec_create(
        &engine,
        "box",
        r#"{"Cmd":["echo","hi"],"Tty":true,"AttachStdout":true}"#,
    )?;
    let (head, rest) = start_exec(&engine, &id, false)?;
    assert!(
        head.contains("application/vnd.docker.multiplexed-stream"),
        "{head}"
    );
    assert_eq!(rest, b"\x01\0\0\0\0\0\0\x04hi\r\n");
    // A plain exec started with Tty: raw bytes.
    let id = exec_create(
        &engine,
        "box",
        r#"{"Cmd":["echo","hi"],"AttachStdout":true}"#,
    )?;
    let (head, rest) = start_exec(&engine, &id, true)?;
    assert!(head.contains("application/vnd.docker.raw-stream"), "{head}");
    assert_eq!(rest, b"hi\n");
    Ok(())
}
