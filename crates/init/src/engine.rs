//! Supervising `rmachine-engine`: start it with the documented flags, prefix its output on the
//! console, restart it with backoff if it dies, stop it on shutdown.
//!
//! Readiness ("engine ready" on the console) is a `GET /_ping` answered on the engine's unix
//! socket; it is for humans and boot-time measurements only, the host checks `/_ping` over TLS.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rmachine_guest_config::timeline::Stage;
use rmachine_guest_config::EngineConfig;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::config::TLS_DIR;

/// The engine binary in the image.
pub const ENGINE_BIN: &str = "/usr/bin/rmachine-engine";
/// The engine's data root (bind-mounted from the data disk).
pub const DATA_ROOT: &str = "/var/lib/rmachine-engine";
/// The engine's exec root: on the /run tmpfs, so an exec starts on a full data disk.
pub const EXEC_ROOT: &str = "/run/rmachine-engine";
/// The engine's local unix socket.
pub const SOCKET: &str = "/var/run/docker.sock";
/// How long the engine gets to stop after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The engine's arguments (internals.md, "Engine command line"), without argv0.
pub fn engine_args(config: &EngineConfig) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--data-root".into(),
        DATA_ROOT.into(),
        "--exec-root".into(),
        EXEC_ROOT.into(),
        "-H".into(),
        format!("unix://{SOCKET}"),
        "-H".into(),
        format!("tcp://0.0.0.0:{}", config.port),
        "--tlsverify".into(),
        "--tlscacert".into(),
        format!("{TLS_DIR}/ca.pem"),
        "--tlscert".into(),
        format!("{TLS_DIR}/server.pem"),
        "--tlskey".into(),
        format!("{TLS_DIR}/server-key.pem"),
    ];
    for label in &config.labels {
        args.extend(["--label".into(), label.clone()]);
    }
    for registry in &config.insecure_registries {
        args.extend(["--insecure-registry".into(), registry.clone()]);
    }
    for mirror in &config.registry_mirrors {
        args.extend(["--registry-mirror".into(), mirror.clone()]);
    }
    args
}

/// The engine's extra environment from `K=V` strings; malformed entries are skipped.
pub fn engine_env(config: &EngineConfig) -> Vec<(String, String)> {
    config
        .env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Delay before restart number `attempt` (1-based): 1, 2, 4, ... seconds, at most 30.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

/// A run at least this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Copies lines from the engine's stdout or stderr to the console with a prefix.
fn forward_lines(stream: impl AsyncRead + Unpin + Send + 'static) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!(
                "{} engine: {line}",
                crate::logging::stamp(crate::logging::since_boot())
            );
        }
    });
}

/// The engine's option that holds its containers until `gate`, a pipe's read end, reaches end
/// of file (the supervisor closes the write end once modules and shares are in place).
pub fn gate_args(gate: &OwnedFd) -> [String; 2] {
    [
        "--containers-wait-fd".to_owned(),
        gate.as_raw_fd().to_string(),
    ]
}

fn spawn(config: &EngineConfig, gate: Option<&OwnedFd>) -> std::io::Result<Child> {
    let mut cmd = Command::new(ENGINE_BIN);
    cmd.args(engine_args(config));
    if let Some(gate) = gate {
        cmd.args(gate_args(gate));
        let fd = gate.as_raw_fd();
        // SAFETY: fcntl is async-signal-safe, as pre_exec requires. The descriptor is
        // close-on-exec in init (no other child gets it); the engine alone keeps it.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
        // Plain lines on the serial console; the configuration may still override it.
        .env("NO_COLOR", "1")
        .envs(engine_env(config))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C on the console must not reach it.
        .process_group(0);
    let mut child = cmd.spawn()?;
    if let Some(out) = child.stdout.take() {
        forward_lines(out);
    }
    if let Some(err) = child.stderr.take() {
        forward_lines(err);
    }
    Ok(child)
}

/// Answers whether the engine serves `GET /_ping` on its unix socket.
pub async fn ping(socket: &Path) -> bool {
    let attempt = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await.ok()?;
        stream
            .write_all(b"GET /_ping HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.ok()?;
        Some(is_ok_status(&buf[..n]))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Whether an HTTP response starts with a 200 status line.
pub fn is_ok_status(response: &[u8]) -> bool {
    response.starts_with(b"HTTP/1.1 200") || response.starts_with(b"HTTP/1.0 200")
}

/// How often the boot asks the engine whether it answers yet: the engine comes up within a
/// second or two, and every poll period is latency added to the machine's readiness.
const READY_POLL: Duration = Duration::from_millis(20);

async fn wait_ready(started: Instant, port: u16) {
    let deadline = started + Duration::from_secs(300);
    while Instant::now() < deadline {
        if ping(Path::new(SOCKET)).await {
            tracing::info!(
                "engine ready ({:.2}s after start)",
                started.elapsed().as_secs_f64()
            );
            crate::logging::stage(Stage::EngineUp);
            wait_tcp(port, deadline).await;
            return;
        }
        tokio::time::sleep(READY_POLL).await;
    }
    tracing::warn!("engine: no answer on {SOCKET} after 300s");
}

/// Marks [`Stage::TlsListening`] once the engine accepts connections on its TLS port (the
/// engine opens its listeners together, so this is normally at once).
async fn wait_tcp(port: u16, deadline: Instant) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            crate::logging::stage(Stage::TlsListening);
            return;
        }
        tokio::time::sleep(READY_POLL).await;
    }
    tracing::warn!("engine: nothing listens on {addr}");
}

/// Stops the engine: SIGTERM, up to [`STOP_TIMEOUT`], then SIGKILL.
async fn stop(child: &mut Child) {
    let Some(pid) = child.id() else { return };
    tracing::info!("shutdown: stopping engine (pid {pid}, SIGTERM)");
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
        Ok(status) => tracing::info!("shutdown: engine stopped ({})", describe(status)),
        Err(_) => {
            tracing::warn!(
                "shutdown: engine still running after {}s, SIGKILL",
                STOP_TIMEOUT.as_secs()
            );
            let _ = child.kill().await;
        }
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(err) => format!("wait failed: {err}"),
    }
}

/// Runs the engine until `shutdown` turns true, restarting it when it dies.
///
/// Returns once the engine has stopped (or was never there).
///
/// `gate` is the read end of the pipe that holds the engine's containers while the boot goes
/// on (see [`gate_args`]); every engine started gets it, a restarted one too (it then reads end
/// of file at once).
pub async fn supervise(
    config: EngineConfig,
    gate: Option<OwnedFd>,
    mut shutdown: watch::Receiver<bool>,
) {
    if !Path::new(ENGINE_BIN).exists() {
        tracing::warn!("engine: {ENGINE_BIN} is not in this image; not starting it");
        return;
    }
    let mut attempt = 0u32;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = Instant::now();
        let mut child = match spawn(&config, gate.as_ref()) {
            Ok(child) => child,
            Err(err) => {
                tracing::error!("engine: cannot start {ENGINE_BIN}: {err}");
                attempt += 1;
                if sleep_or_shutdown(backoff(attempt), &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        tracing::info!(
            "engine started (pid {})",
            child.id().map(|p| p.to_string()).unwrap_or_default()
        );
        crate::logging::stage(Stage::EngineStarted);
        let ready = tokio::spawn(wait_ready(started, config.port));
        let status = tokio::select! {
            status = child.wait() => Some(status),
            _ = shutdown.wait_for(|stop| *stop) => None,
        };
        ready.abort();
        let Some(status) = status else {
            stop(&mut child).await;
            return;
        };
        if started.elapsed() >= HEALTHY_RUN {
            attempt = 0;
        }
        attempt += 1;
        let delay = backoff(attempt);
        tracing::error!(
            "engine exited ({}) after {:.1}s; restart #{attempt} in {}s",
            describe(status),
            started.elapsed().as_secs_f64(),
            delay.as_secs()
        );
        if sleep_or_shutdown(delay, &mut shutdown).await {
            return;
        }
    }
}

/// Sleeps; returns true if shutdown was requested meanwhile.
async fn sleep_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = shutdown.wait_for(|stop| *stop) => true,
    };
    stopped || *shutdown.borrow()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_follows_internals_md() {
        let config = EngineConfig {
            port: 2376,
            labels: vec!["provider=qemu".into()],
            insecure_registries: vec!["10.0.2.2:5000".into()],
            ..Default::default()
        };
        assert_eq!(
            engine_args(&config).join(" "),
            "--data-root /var/lib/rmachine-engine --exec-root /run/rmachine-engine \
             -H unix:///var/run/docker.sock \
             -H tcp://0.0.0.0:2376 --tlsverify --tlscacert /run/rmachine/tls/ca.pem \
             --tlscert /run/rmachine/tls/server.pem --tlskey /run/rmachine/tls/server-key.pem \
             --label provider=qemu --insecure-registry 10.0.2.2:5000"
        );
    }

    /// The engine's own parser takes every flag init passes, with the values init meant: the
    /// two cannot drift apart again (a `--registry-mirror` the engine did not know once kept
    /// it from starting in the guest).
    #[test]
    fn the_engine_accepts_the_command_line_init_builds() {
        let config = EngineConfig {
            port: 2376,
            labels: vec!["provider=qemu".into(), "team=x".into()],
            insecure_registries: vec!["10.0.2.2:5000".into(), "10.1.0.0/16".into()],
            registry_mirrors: vec!["https://mirror.example".into()],
            ..Default::default()
        };
        let (gate, _write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let mut args = engine_args(&config);
        args.extend(gate_args(&gate));
        let parsed = rmachine_engine::cli::EngineArgs::try_parse_args(args)
            .unwrap_or_else(|e| panic!("rmachine-engine refuses init's command line: {e}"));
        assert_eq!(parsed.containers_wait_fd, Some(gate.as_raw_fd()));
        assert_eq!(parsed.data_root, std::path::Path::new(DATA_ROOT));
        assert_eq!(
            parsed.hosts,
            [format!("unix://{SOCKET}"), "tcp://0.0.0.0:2376".to_string()]
        );
        assert!(parsed.tlsverify);
        assert_eq!(parsed.labels, config.labels);
        assert_eq!(parsed.insecure_registries, config.insecure_registries);
        assert_eq!(parsed.registry_mirrors, config.registry_mirrors);
        let options = parsed
            .into_options()
            .unwrap_or_else(|e| panic!("rmachine-engine refuses init's registry settings: {e}"));
        assert_eq!(options.engine.registry.mirrors, ["https://mirror.example/"]);
    }

    #[test]
    fn env_entries_without_equals_are_skipped() {
        let config = EngineConfig {
            env: vec!["A=1".into(), "broken".into(), "B=x=y".into(), "=v".into()],
            ..Default::default()
        };
        assert_eq!(
            engine_env(&config),
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
    }

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        let secs: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn ping_status_line() {
        assert!(is_ok_status(b"HTTP/1.1 200 OK\r\nApi-Version: 1.45\r\n"));
        assert!(!is_ok_status(b"HTTP/1.1 500 Internal Server Error\r\n"));
        assert!(!is_ok_status(b""));
    }
}
