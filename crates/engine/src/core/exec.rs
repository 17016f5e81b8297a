//! `docker exec`: exec instances of running containers, their creation, start and resize.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::sync::{Arc, Mutex, MutexGuard};

use rmachine_runtime::spec::{self, ExecFile, ExecSpec};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::attach::AttachSession;
use super::error::EngineError;
use super::{conflict, new_id, read_spec, Engine, DRAIN_TIMEOUT};
use crate::container::exec::{self as exec_io, ExecConfig, ExecInstance};
use crate::container::launch::{self, LaunchError, LaunchIo, StdioOptions};
use crate::container::{config, io, Container, Output, StdinEvent, StreamKind};
use crate::state::{ContainerRecord, Status};

/// The exec instances by id, kept beside the container table.
#[derive(Debug, Default)]
pub(super) struct ExecTable {
    by_id: Mutex<HashMap<String, Arc<ExecInstance>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Engine {
    /// `POST /containers/{id}/exec`: registers an exec instance.
    pub fn exec_create(&self, reference: &str, config: ExecConfig) -> Result<String, EngineError> {
        let c = self.container(reference)?;
        if c.record().state.status != Status::Running {
            return Err(EngineError::NotRunning { id: c.id.clone() });
        }
        if self.is_paused(&c.id) {
            // moby's getActiveContainer names the container as the client did.
            return Err(conflict(format!(
                "Container {reference} is paused, unpause the container before exec"
            )));
        }
        if config.cmd.is_empty() {
            return Err(EngineError::InvalidParameter {
                reason: "No exec command specified".into(),
            });
        }
        if !config.user.is_empty() {
            // As dockerd since v25: an unknown `-u` fails the create, not the start.
            let spec = read_spec(&c)?;
            let mut layers = vec![spec.spec.rootfs.upper_dir.clone()];
            layers.extend(spec.spec.rootfs.lower_dirs.iter().cloned());
            let group_add = config::group_add(&c.record().host_config);
            config::resolve_user_with(&config.user, &layers, &group_add)?;
        }
        let id = new_id();
        let instance = ExecInstance::new(id.clone(), c.id.clone(), config);
        let command = crate::events::exec_command(&instance.config.cmd);
        let known: HashSet<String> = self.list().into_iter().map(|r| r.id).collect();
        let mut execs = lock(&self.inner.execs.by_id);
        // Instances live as long as their container, as with dockerd.
        execs.retain(|_, e| known.contains(&e.container_id));
        execs.insert(id.clone(), instance);
        drop(execs);
        self.emit(
            &c.record(),
            &format!("exec_create: {command}"),
            &[("execID", id.clone())],
        );
        Ok(id)
    }

    /// An exec instance by id.
    pub fn exec(&self, id: &str) -> Result<Arc<ExecInstance>, EngineError> {
        lock(&self.inner.execs.by_id)
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::NoSuchExec { id: id.to_string() })
    }

    /// Drops a finished exec instance (a health probe's).
    pub(super) fn forget_exec(&self, id: &str) {
        lock(&self.inner.execs.by_id).remove(id);
    }

    /// Resizes an exec's terminal.
    pub fn exec_resize(&self, id: &str, height: u16, width: u16) -> Result<(), EngineError> {
        let exec = self.exec(id)?;
        if let Some(master) = exec.pty() {
            crate::container::console::set_size(&master, height, width).map_err(|source| {
                EngineError::Io {
                    path: "/dev/ptmx".into(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// `POST /exec/{id}/start`: runs the instance. Returns the streams to serve, or `None`
    /// when detached. A command that cannot be run is reported in the output stream (as
    /// dockerd writes it after hijacking) with exit code 126 or 127.
    pub async fn exec_start(
        &self,
        id: &str,
        detach: bool,
        console_size: Option<(u16, u16)>,
    ) -> Result<Option<AttachSession>, EngineError> {
        let exec = self.exec(id)?;
        match self.exec_launch(&exec, detach, console_size).await {
            // As dockerd's route, which hijacks the connection before starting the exec: the
            // error is the attached client's output.
            Err(err) if !detach => {
                warn!(exec = %id, error = %err, "exec failed to start");
                let (tx, rx) = mpsc::channel::<Output>(1);
                let _ = tx.try_send(Output {
                    stream: StreamKind::Stdout,
                    data: bytes::Bytes::from(format!("{err}\r\n")),
                });
                Ok(Some(AttachSession {
                    tty: exec.config.tty,
                    output: rx,
                    stdin: None,
                    stdin_once: true,
                }))
            }
            other => other,
        }
    }

    /// Checks and starts an exec instance (daemon/exec.go `ContainerExecStart`).
    async fn exec_launch(
        &self,
        exec: &Arc<ExecInstance>,
        detach: bool,
        console_size: Option<(u16, u16)>,
    ) -> Result<Option<AttachSession>, EngineError> {
        let id = exec.id.as_str();
        let c = self.container(&exec.container_id)?;
        let record = c.record();
        if record.state.status != Status::Running {
            return Err(EngineError::NotRunning { id: c.id.clone() });
        }
        if record.state.paused {
            return Err(conflict(format!(
                "Container {} is paused, unpause the container before exec",
                c.id
            )));
        }
        let (already, finished) = exec.update(|s| {
            (
                std::mem::replace(&mut s.started, true),
                s.exit_code.is_some(),
            )
        });
        if already {
            return Err(conflict(if finished {
                format!("exec command {id} has already run")
            } else {
                format!("exec command {id} is already running")
            }));
        }
        let started = self
            .exec_spawn(exec, &c, &record, detach, console_size)
            .await;
        if started.is_err() {
            // dockerd's default exit code for an exec that could not start (EACCES).
            exec.update(|s| {
                s.exit_code.get_or_insert(126);
            });
        }
        started
    }

    async fn exec_spawn(
        &self,
        exec: &Arc<ExecInstance>,
        c: &Arc<Container>,
        record: &ContainerRecord,
        detach: bool,
        console_size: Option<(u16, u16)>,
    ) -> Result<Option<AttachSession>, EngineError> {
        let id = exec.id.as_str();
        let file = self.exec_file(c, record, exec)?;
        let path = super::exec_dir(&self.inner.config.exec_root).join(format!("exec-{id}.json"));
        let config = &exec.config;
        let console = if config.tty {
            Some(
                crate::container::console::ConsoleSocket::bind().map_err(|e| EngineError::Io {
                    path: "/dev/ptmx".into(),
                    source: std::io::Error::other(e.to_string()),
                })?,
            )
        } else {
            None
        };
        let mut file = file;
        file.console_socket = console.as_ref().map(|s| s.path().to_path_buf());
        let bytes = serde_json::to_vec(&file).map_err(|e| EngineError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        launch::write_private(&path, &bytes).map_err(|source| EngineError::Launch {
            id: c.id.clone(),
            source,
        })?;
        let args = [
            OsString::from("exec"),
            c.dir.as_os_str().to_os_string(),
            path.as_os_str().to_os_string(),
        ];
        let stdio = StdioOptions {
            open_stdin: config.attach_stdin && !detach,
            console_size: console_size.or(config.console_size),
        };
        let attached = !detach;
        let (tx, rx) = mpsc::channel::<Output>(64);
        let launched = launch::spawn_runtime(
            &self.inner.config.runtime,
            &args,
            &c.id,
            config.tty,
            console,
            stdio,
        )
        .await;
        let _ = std::fs::remove_file(&path);
        let launched = match launched {
            Ok(launched) => launched,
            Err(LaunchError::Failed(failed)) => {
                // dockerd (setExitCodeFromError) reads the code off the runtime's message.
                let (code, message) = launch::exit_code_from_error(&format!(
                    "OCI runtime exec failed: exec failed: unable to start container process: {}: unknown",
                    failed.message
                ));
                exec.update(|s| s.exit_code = Some(code));
                if detach {
                    return Err(EngineError::Task { reason: message });
                }
                let _ = tx.try_send(Output {
                    stream: StreamKind::Stdout,
                    data: bytes::Bytes::from(format!("{message}\r\n")),
                });
                drop(tx);
                return Ok(Some(AttachSession {
                    tty: config.tty,
                    output: rx,
                    stdin: None,
                    stdin_once: true,
                }));
            }
            Err(source) => {
                exec.update(|s| s.exit_code = Some(126));
                return Err(EngineError::Launch {
                    id: c.id.clone(),
                    source,
                });
            }
        };
        exec.update(|s| {
            s.running = true;
            s.launched = true;
            s.pid = launched.pid;
        });
        info!(container = %c.id, exec = %id, pid = launched.pid, "exec started");
        self.emit(
            record,
            &format!("exec_start: {}", crate::events::exec_command(&config.cmd)),
            &[("execID", id.to_string())],
        );
        let (stdin_tx, stdin_rx) = mpsc::unbounded_channel::<StdinEvent>();
        let out = attached.then_some(tx);
        let launch::Launched { mut child, io, .. } = launched;
        let mut pumps = Vec::new();
        match io {
            LaunchIo::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                let stdout_tx = out.clone().filter(|_| config.attach_stdout);
                let stderr_tx = out.clone().filter(|_| config.attach_stderr);
                pumps.push(tokio::spawn(exec_io::pump(
                    stdout,
                    StreamKind::Stdout,
                    stdout_tx,
                )));
                pumps.push(tokio::spawn(exec_io::pump(
                    stderr,
                    StreamKind::Stderr,
                    stderr_tx,
                )));
                if let Some(stdin) = stdin {
                    tokio::spawn(io::write_stdin(stdin, stdin_rx));
                }
            }
            LaunchIo::Pty { master } => {
                exec.set_pty(master.try_clone().ok().map(Arc::new));
                match io::pty_io(master) {
                    Ok(pty) => {
                        let pty = Arc::new(pty);
                        let tx = out.clone().filter(|_| config.attach_stdout);
                        pumps.push(tokio::spawn(exec_io::pump_pty(pty.clone(), tx)));
                        tokio::spawn(io::write_pty(pty, stdin_rx));
                    }
                    Err(err) => warn!(exec = %id, error = %err, "cannot use the PTY"),
                }
            }
        }
        // Held until the exit code is recorded: the end of the stream tells the CLI to inspect.
        let hold = out;
        let engine = self.clone();
        let monitored = exec.clone();
        let record_for_event = record.clone();
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(status) => launch::exit_code(status),
                Err(err) => {
                    warn!(exec = %monitored.id, error = %err, "cannot wait for the runtime");
                    255
                }
            };
            for pump in pumps {
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, pump).await;
            }
            // Recorded before the stream ends: the CLI inspects the exec right after.
            monitored.update(|s| {
                s.running = false;
                s.pid = 0;
                s.exit_code = Some(code);
            });
            monitored.set_pty(None);
            drop(hold);
            info!(exec = %monitored.id, exit_code = code, "exec exited");
            engine.emit(
                &record_for_event,
                "exec_die",
                &[
                    ("execID", monitored.id.clone()),
                    ("exitCode", code.to_string()),
                ],
            );
        });
        if detach {
            return Ok(None);
        }
        Ok(Some(AttachSession {
            tty: config.tty,
            output: rx,
            stdin: config.attach_stdin.then_some(stdin_tx),
            stdin_once: true,
        }))
    }

    /// The exec spec: the container's environment with the exec's on top, its user and
    /// working directory unless the exec sets them.
    fn exec_file(
        &self,
        c: &Container,
        record: &ContainerRecord,
        exec: &ExecInstance,
    ) -> Result<ExecFile, EngineError> {
        let spec = read_spec(c)?;
        let config = &exec.config;
        let user = if config.user.is_empty() {
            record.config.user.clone()
        } else {
            config.user.clone()
        };
        let mut layers = vec![spec.spec.rootfs.upper_dir.clone()];
        layers.extend(spec.spec.rootfs.lower_dirs.iter().cloned());
        let group_add = config::group_add(&record.host_config);
        let resolved = config::resolve_user_with(&user, &layers, &group_add)?;
        // dockerd: the container's environment rebuilt for the exec's TTY, the exec's on top;
        // runc then adds the exec user's HOME if still unset.
        let env = config::with_home(
            config::replace_or_append_env(
                config::daemon_environment(&record.config.env, config.tty, &spec.spec.hostname),
                &config.env,
            ),
            &resolved.home,
        );
        let cwd = if config.working_dir.is_empty() {
            spec.spec.process.cwd.clone()
        } else {
            config.working_dir.clone()
        };
        Ok(ExecFile {
            exec: ExecSpec {
                pid: record.state.pid,
                process: spec::Process {
                    args: config.cmd.clone(),
                    env,
                    cwd,
                    uid: resolved.uid,
                    gid: resolved.gid,
                    additional_gids: resolved.additional_gids,
                    terminal: config.tty,
                },
            },
            console_socket: None,
            privileged: config.privileged,
        })
    }
}
