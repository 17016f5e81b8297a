//! `docker exec` instances: what was asked at create time, and the state of the run.
//!
//! An instance is created by `POST /containers/{id}/exec`, run once by `POST /exec/{id}/start`
//! (`rmachine-runtime exec DIR EXEC_JSON`, the same sync-pipe protocol as `run`), and inspected
//! by `GET /exec/{id}/json`, which the CLI reads after the stream ends to learn the exit code.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::{Output, StreamKind};

/// What the client asked for in `POST /containers/{id}/exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecConfig {
    /// argv.
    pub cmd: Vec<String>,
    /// `KEY=value` pairs added to the container's environment.
    pub env: Vec<String>,
    /// Working directory; empty: the container's.
    pub working_dir: String,
    /// `user[:group]`; empty: the container's.
    pub user: String,
    /// Allocate a terminal.
    pub tty: bool,
    /// Attach stdin.
    pub attach_stdin: bool,
    /// Attach stdout.
    pub attach_stdout: bool,
    /// Attach stderr.
    pub attach_stderr: bool,
    /// `--privileged` (every capability).
    pub privileged: bool,
    /// Detach key sequence (empty: the default).
    pub detach_keys: String,
    /// Initial terminal size, rows and columns.
    pub console_size: Option<(u16, u16)>,
}

/// The run of an exec instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecState {
    /// It has been started (an instance runs at most once).
    pub started: bool,
    /// Its process runs.
    pub running: bool,
    /// Host PID while running, else 0.
    pub pid: i32,
    /// Its process was started (stays false when the start failed).
    pub launched: bool,
    /// Exit code once it ended.
    pub exit_code: Option<i64>,
}

/// One exec instance.
#[derive(Debug)]
pub struct ExecInstance {
    /// Its id (64 hex characters).
    pub id: String,
    /// The container it runs in.
    pub container_id: String,
    /// The request.
    pub config: ExecConfig,
    state: Mutex<ExecState>,
    pty: Mutex<Option<Arc<OwnedFd>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ExecInstance {
    /// A new, not yet started instance.
    pub fn new(id: String, container_id: String, config: ExecConfig) -> Arc<ExecInstance> {
        Arc::new(ExecInstance {
            id,
            container_id,
            config,
            state: Mutex::new(ExecState::default()),
            pty: Mutex::new(None),
        })
    }

    /// A copy of the state.
    pub fn state(&self) -> ExecState {
        *lock(&self.state)
    }

    /// Changes the state.
    pub fn update<R>(&self, f: impl FnOnce(&mut ExecState) -> R) -> R {
        f(&mut lock(&self.state))
    }

    /// Remembers the terminal for resizing.
    pub fn set_pty(&self, master: Option<Arc<OwnedFd>>) {
        *lock(&self.pty) = master;
    }

    /// The terminal, while a TTY exec runs.
    pub fn pty(&self) -> Option<Arc<OwnedFd>> {
        lock(&self.pty).clone()
    }

    /// `GET /exec/{id}/json`.
    pub fn inspect(&self) -> serde_json::Value {
        let state = self.state();
        let (entrypoint, arguments) = match self.config.cmd.split_first() {
            Some((first, rest)) => (first.clone(), rest.to_vec()),
            None => (String::new(), Vec::new()),
        };
        serde_json::json!({
            "ID": self.id,
            "Running": state.running,
            "ExitCode": state.exit_code,
            "ProcessConfig": {
                "tty": self.config.tty,
                "entrypoint": entrypoint,
                "arguments": arguments,
                "privileged": self.config.privileged,
                "user": self.config.user,
            },
            "OpenStdin": self.config.attach_stdin,
            "OpenStderr": self.config.attach_stderr,
            "OpenStdout": self.config.attach_stdout,
            "CanRemove": false,
            "ContainerID": self.container_id,
            "DetachKeys": self.config.detach_keys,
            "Pid": state.pid,
        })
    }
}

/// Copies one output stream of an exec into `tx` (when attached) until end-of-file.
pub async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    stream: StreamKind,
    tx: Option<mpsc::Sender<Output>>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(tx) = &tx {
                    let chunk = Output {
                        stream,
                        data: bytes::Bytes::copy_from_slice(&buf[..n]),
                    };
                    // A client that went away no longer reads; keep draining the pipe.
                    let _ = tx.send(chunk).await;
                }
            }
        }
    }
}

/// Copies a PTY's output into `tx` until every slave descriptor is closed.
pub async fn pump_pty(
    pty: Arc<tokio::io::unix::AsyncFd<OwnedFd>>,
    tx: Option<mpsc::Sender<Output>>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let Ok(mut guard) = pty.readable().await else {
            break;
        };
        match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf).map_err(Into::into)) {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                if let Some(tx) = &tx {
                    let chunk = Output {
                        stream: StreamKind::Stdout,
                        data: bytes::Bytes::copy_from_slice(&buf[..n]),
                    };
                    let _ = tx.send(chunk).await;
                }
            }
            Err(_would_block) => continue,
        }
    }
}
