//! `-t` containers and execs driven through a real pseudo-terminal (`script` holds the
//! terminal the docker CLI runs in).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use rmachine_tests_engine::{feed, Engine, Run};

/// Runs `docker ARGS` inside a PTY made by `script`, typing `input` into it.
fn in_pty(engine: &Engine, args: &[&str], input: &[u8]) -> anyhow::Result<Run> {
    feed(pty_command(engine, args), input)
}

/// `docker ARGS` inside a PTY made by `script` (its stdin is what is typed).
fn pty_command(engine: &Engine, args: &[&str]) -> Command {
    let template = engine.docker_command(&[]);
    let mut cmd = Command::new("script");
    cmd.args(["-qfec", &format!("docker {}", args.join(" ")), "/dev/null"]);
    for (key, value) in template.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

#[test]
fn run_t_gets_its_own_pts_and_exec_it_runs_an_interactive_shell() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let tty = engine
        .docker(&["run", "--rm", "-t", "busybox", "tty"])?
        .ok()?;
    assert_eq!(tty.stdout, "/dev/pts/0\r\n");

    engine
        .docker(&["run", "-d", "--name", "shell", "busybox", "sleep", "1000"])?
        .ok()?;
    let session = in_pty(
        &engine,
        &["exec", "-it", "shell", "sh"],
        b"tty; echo \"[$((6*7))]\"; exit 5\n",
    )?;
    // The shell echoes what was typed and answers through the terminal.
    assert!(session.stdout.contains("[42]"), "{session:?}");
    assert!(session.stdout.contains("/dev/pts/"), "{session:?}");
    assert!(session.stdout.contains("/ # "), "{session:?}");
    assert_eq!(session.code, 5, "{session:?}");

    let run = in_pty(
        &engine,
        &["run", "-it", "--rm", "busybox", "sh"],
        b"tty; exit\n",
    )?;
    assert!(run.stdout.contains("/dev/pts/0"), "{run:?}");
    assert_eq!(run.code, 0, "{run:?}");
    Ok(())
}

#[test]
fn ctrl_p_ctrl_q_detaches_and_the_container_keeps_running() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let mut cmd = pty_command(
        &engine,
        &["run", "-it", "--name", "keeper", "busybox", "sh"],
    );
    let mut child = cmd.stdin(Stdio::piped()).spawn()?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    // Typed once the CLI has put the terminal in raw mode (in cooked mode ^Q is flow control).
    engine.wait_for(
        &["inspect", "-f", "{{.State.Status}}", "keeper"],
        Duration::from_secs(10),
        |r| r.stdout == "running\n",
    )?;
    std::thread::sleep(Duration::from_millis(500));
    stdin.write_all(b"echo hello\n")?;
    std::thread::sleep(Duration::from_millis(300));
    stdin.write_all(b"\x10\x11")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("docker run -it did not detach on ctrl-p ctrl-q");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    assert!(status.success(), "{status}");
    let mut out = String::new();
    child
        .stdout
        .take()
        .context("no stdout")?
        .read_to_string(&mut out)?;
    assert!(out.contains("hello"), "{out:?}");
    let state = engine
        .docker(&["inspect", "-f", "{{.State.Status}}", "keeper"])?
        .ok()?;
    assert_eq!(state.stdout, "running\n");
    engine.docker(&["rm", "-f", "keeper"])?.ok()?;
    Ok(())
}

#[test]
fn the_engine_ends_an_attach_on_the_requested_detach_keys() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&["run", "-d", "-it", "--name", "held", "busybox", "sh"])?
        .ok()?;
    // A raw client (not the CLI, which also watches for the keys itself).
    let mut conn = std::os::unix::net::UnixStream::connect(&engine.socket)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(
        b"POST /containers/held/attach?stream=1&stdin=1&stdout=1&detachKeys=ctrl-a,x HTTP/1.1\r\n\
          Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n",
    )?;
    let mut head = [0u8; 1024];
    let n = conn.read(&mut head)?;
    let head = String::from_utf8_lossy(&head[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    conn.write_all(b"echo still\n")?;
    std::thread::sleep(Duration::from_millis(300));
    conn.write_all(b"\x01x")?;
    // The engine closes the stream; what the shell echoed came before.
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)?;
    assert!(String::from_utf8_lossy(&rest).contains("still"), "{rest:?}");
    let state = engine
        .docker(&["inspect", "-f", "{{.State.Status}}", "held"])?
        .ok()?;
    assert_eq!(state.stdout, "running\n");
    engine.docker(&["rm", "-f", "held"])?.ok()?;
    Ok(())
}
