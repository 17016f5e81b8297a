//! Engine operations on running containers beyond the lifecycle: exec, pause/unpause, update,
//! top and stats, plus the runtime features (limits, capabilities, `--privileged`, `--init`)
//! taken from a container's `HostConfig`.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::sync::{Arc, Mutex, MutexGuard};

use rmachine_runtime::cgroup::{Cgroup, CgroupError};
use rmachine_runtime::spec::{
    self, CapabilitySpec, ExecFile, ExecSpec, Features, Resources, SpecFile,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{io_err, new_id, AttachSession, Engine, EngineError, DRAIN_TIMEOUT};
use crate::container::exec::{self as exec_io, ExecConfig, ExecInstance};
use crate::container::launch::{self, LaunchError, LaunchIo, StdioOptions};
use crate::container::{config, io, Container, Output, StdinEvent, StreamKind};
use crate::state::{ContainerRecord, HostConfig, Status};

/// Docker's smallest `--memory`.
const MIN_MEMORY: i64 = 6 * 1024 * 1024;

/// State of the features this module adds, kept beside the container table.
#[derive(Debug, Default)]
pub(super) struct Extras {
    execs: Mutex<HashMap<String, Arc<ExecInstance>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn conflict(reason: String) -> EngineError {
    EngineError::Conflict { reason }
}

fn cgroup_err(id: &str) -> impl FnOnce(CgroupError) -> EngineError + '_ {
    move |source| EngineError::Cgroup {
        id: id.to_string(),
        source,
    }
}

fn int(host: &HostConfig, key: &str) -> Option<i64> {
    host.extra.get(key).and_then(Value::as_i64)
}

fn flag(host: &HostConfig, key: &str) -> bool {
    host.extra
        .get(key)
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn strings(host: &HostConfig, key: &str) -> Vec<String> {
    host.extra
        .get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The cgroup limits in a `HostConfig` (or an update body of the same keys).
fn resources_of(host: &HostConfig) -> Option<Resources> {
    let positive = |key: &str| int(host, key).filter(|v| *v > 0);
    let mut r = Resources {
        memory_bytes: positive("Memory"),
        memory_swap_bytes: int(host, "MemorySwap").filter(|v| *v != 0),
        cpu_shares: positive("CpuShares").and_then(|v| u64::try_from(v).ok()),
        pids_limit: int(host, "PidsLimit").filter(|v| *v != 0),
        ..Resources::default()
    };
    if let Some(nano) = positive("NanoCpus") {
        r.cpu_period = Some(100_000);
        r.cpu_quota = Some(nano / 10_000);
    } else {
        r.cpu_quota = positive("CpuQuota");
        r.cpu_period = positive("CpuPeriod").and_then(|v| u64::try_from(v).ok());
    }
    (r != Resources::default()).then_some(r)
}

/// dockerd's checks of the limits in a create or update request (daemon/daemon_unix.go
/// `verifyPlatformContainerResources`), with its texts.
fn verify_resources(host: &HostConfig) -> Result<(), EngineError> {
    let invalid = |reason: String| EngineError::InvalidParameter { reason };
    let memory = int(host, "Memory").unwrap_or(0);
    if memory > 0 && memory < MIN_MEMORY {
        return Err(invalid("Minimum memory limit allowed is 6MB".into()));
    }
    let swap = int(host, "MemorySwap").unwrap_or(0);
    if memory > 0 && swap > 0 && swap < memory {
        return Err(invalid(
            "Minimum memoryswap limit should be larger than memory limit, see usage".into(),
        ));
    }
    let nano = int(host, "NanoCpus").unwrap_or(0);
    if nano > 0 && int(host, "CpuPeriod").unwrap_or(0) > 0 {
        return Err(invalid(
            "Conflicting options: Nano CPUs and CPU Period cannot both be set".into(),
        ));
    }
    if nano > 0 && int(host, "CpuQuota").unwrap_or(0) > 0 {
        return Err(invalid(
            "Conflicting options: Nano CPUs and CPU Quota cannot both be set".into(),
        ));
    }
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let cpus = i64::try_from(cpus).unwrap_or(i64::MAX);
    if nano < 0 || nano > cpus.saturating_mul(1_000_000_000) {
        return Err(invalid(format!(
            "range of CPUs is from 0.01 to {cpus}.00, as there are only {cpus} CPUs available"
        )));
    }
    Ok(())
}

/// Checks and completes a create request's limits as dockerd does.
pub(super) fn normalize_host_config(host: &mut HostConfig) -> Result<(), EngineError> {
    verify_resources(host)?;
    if let Some(tmpfs) = host.extra.get("Tmpfs").and_then(Value::as_object) {
        // volume/mounts/linux_parser.go `ValidateTmpfsMountDestination`.
        for dest in tmpfs.keys() {
            let reason =
                if dest.split('/').all(|p| p.is_empty() || p == ".") && dest.starts_with('/') {
                    "invalid specification: destination can't be '/'".to_string()
                } else if !dest.starts_with('/') {
                    format!("invalid mount path: '{dest}' mount path must be absolute")
                } else {
                    continue;
                };
            return Err(EngineError::InvalidParameter { reason });
        }
    }
    let memory = int(host, "Memory").unwrap_or(0);
    if memory > 0 && int(host, "MemorySwap").unwrap_or(0) == 0 {
        // dockerd's default: as much swap as memory.
        host.extra
            .insert("MemorySwap".into(), Value::from(memory.saturating_mul(2)));
    }
    let caps = capabilities_of(host);
    if let Err(err) =
        rmachine_runtime::caps::capability_mask(caps.as_ref(), flag(host, "Privileged"))
    {
        return Err(EngineError::InvalidParameter {
            reason: err.to_string(),
        });
    }
    Ok(())
}

/// Merges an update request into a container's host config as dockerd's
/// `Container.UpdateContainer` does: non-zero limits replace the old ones, some combinations
/// are refused (their texts), a restart policy with a name replaces the old one.
fn merge_update(current: &HostConfig, update: &HostConfig) -> Result<HostConfig, String> {
    let new = |key: &str| int(update, key).unwrap_or(0);
    let old = |key: &str| int(current, key).unwrap_or(0);
    if new("NanoCpus") > 0 && old("CpuPeriod") > 0 {
        return Err(
            "Conflicting options: Nano CPUs cannot be updated as CPU Period has already been set"
                .into(),
        );
    }
    if new("NanoCpus") > 0 && old("CpuQuota") > 0 {
        return Err(
            "Conflicting options: Nano CPUs cannot be updated as CPU Quota has already been set"
                .into(),
        );
    }
    if new("CpuPeriod") > 0 && old("NanoCpus") > 0 {
        return Err(
            "Conflicting options: CPU Period cannot be updated as NanoCPUs has already been set"
                .into(),
        );
    }
    if new("CpuQuota") > 0 && old("NanoCpus") > 0 {
        return Err(
            "Conflicting options: CPU Quota cannot be updated as NanoCPUs has already been set"
                .into(),
        );
    }
    if new("Memory") != 0 && new("Memory") > old("MemorySwap") && new("MemorySwap") == 0 {
        return Err("Memory limit should be smaller than already set memoryswap limit, update the memoryswap at the same time".into());
    }
    let mut host = current.clone();
    for key in [
        "CpuShares",
        "NanoCpus",
        "CpuPeriod",
        "CpuQuota",
        "Memory",
        "MemorySwap",
    ] {
        if new(key) != 0 {
            host.extra.insert(key.to_string(), Value::from(new(key)));
        }
    }
    if let Some(pids) = update.extra.get("PidsLimit").filter(|v| !v.is_null()) {
        host.extra.insert("PidsLimit".into(), pids.clone());
    }
    let policy = super::restart::policy_of(update);
    if !policy.name.is_empty() {
        if current.auto_remove && policy.name != "no" {
            return Err(
                "Restart policy cannot be updated because AutoRemove is enabled for the container"
                    .into(),
            );
        }
        if let Some(value) = update.extra.get("RestartPolicy") {
            host.extra.insert("RestartPolicy".into(), value.clone());
        }
    }
    Ok(host)
}

fn capabilities_of(host: &HostConfig) -> Option<CapabilitySpec> {
    let add = strings(host, "CapAdd");
    let drop = strings(host, "CapDrop");
    (!add.is_empty() || !drop.is_empty()).then_some(CapabilitySpec { add, drop })
}

/// The runtime features a container's `HostConfig` asks for.
pub(super) fn features_of(host: &HostConfig) -> Features {
    Features {
        resources: resources_of(host),
        cgroup_parent: host
            .extra
            .get("CgroupParent")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .map(str::to_string),
        capabilities: capabilities_of(host),
        privileged: flag(host, "Privileged"),
        init: flag(host, "Init"),
        console_socket: None,
    }
}

/// Removes the cgroup a container's monitor left behind when it was killed together with the
/// previous engine (a SIGKILLed monitor cannot clean up), killing any straggler in it.
pub(super) fn remove_leftover_cgroup(record: &ContainerRecord) {
    match cgroup_of(record).and_then(|cgroup| cgroup.remove().map_err(cgroup_err(&record.id))) {
        Ok(()) => {}
        Err(err) => tracing::warn!(container = %record.id, "leftover cgroup not removed: {err}"),
    }
}

fn cgroup_of(record: &ContainerRecord) -> Result<Cgroup, EngineError> {
    let features = features_of(&record.host_config);
    Cgroup::for_container(&record.id, features.cgroup_parent.as_deref())
        .map_err(cgroup_err(&record.id))
}

fn read_spec(c: &Container) -> Result<SpecFile, EngineError> {
    let path = c.dir.join(spec::SPEC_FILE);
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    serde_json::from_slice(&bytes).map_err(|e| EngineError::Io {
        path,
        source: std::io::Error::other(e),
    })
}

impl Engine {
    /// Whether a container is paused (its record says so while it runs).
    pub fn is_paused(&self, id: &str) -> bool {
        self.container(id).is_ok_and(|c| {
            let record = c.record();
            record.state.paused && record.state.status == Status::Running
        })
    }

    /// Records the paused state, on disk too: a record must not call a frozen container
    /// running.
    fn set_paused(&self, c: &Container, paused: bool) {
        c.update(|r| r.state.paused = paused);
        if let Err(err) = self.inner.state.save(&c.record()) {
            warn!(container = %c.id, error = %err, "cannot persist container state");
        }
    }

    /// Marks an inspect or list JSON of a paused container as Docker shows it.
    pub fn decorate(&self, id: &str, value: &mut Value) {
        if !self.is_paused(id) {
            return;
        }
        if let Some(state) = value.get_mut("State") {
            if state.is_object() {
                state["Status"] = json!("paused");
                state["Paused"] = json!(true);
            } else {
                *state = json!("paused");
            }
        }
        if let Some(Value::String(status)) = value.get_mut("Status") {
            if !status.ends_with("(Paused)") {
                status.push_str(" (Paused)");
            }
        }
    }

    /// Thaws a paused container about to be signalled, so the signal is acted on (the
    /// caller holds its operation lock).
    pub(super) fn thaw_for_signal(&self, c: &Container) {
        if !c.record().state.paused {
            return;
        }
        match cgroup_of(&c.record()).and_then(|g| g.thaw().map_err(cgroup_err(&c.id))) {
            Ok(()) => {
                self.set_paused(c, false);
                self.emit(&c.record(), "unpause", &[]);
            }
            Err(err) => warn!(container = %c.id, error = %err, "cannot thaw container"),
        }
    }

    /// `docker pause`.
    pub async fn pause(&self, reference: &str) -> Result<(), EngineError> {
        let c = self.container(reference)?;
        let _op = c.op.lock().await;
        let record = c.record();
        if record.state.status != Status::Running {
            return Err(EngineError::NotRunning { id: c.id.clone() });
        }
        if self.is_paused(&c.id) {
            return Err(conflict(format!("Container {} is already paused", c.id)));
        }
        cgroup_of(&record)?.freeze().map_err(cgroup_err(&c.id))?;
        self.set_paused(&c, true);
        info!(container = %c.id, "paused");
        self.emit(&record, "pause", &[]);
        Ok(())
    }

    /// `docker unpause`.
    pub async fn unpause(&self, reference: &str) -> Result<(), EngineError> {
        let c = self.container(reference)?;
        let _op = c.op.lock().await;
        let record = c.record();
        if !self.is_paused(&c.id) {
            return Err(conflict(format!("Container {} is not paused", c.id)));
        }
        cgroup_of(&record)?.thaw().map_err(cgroup_err(&c.id))?;
        self.set_paused(&c, false);
        info!(container = %c.id, "unpaused");
        self.emit(&record, "unpause", &[]);
        Ok(())
    }

    /// `docker update`: stores the new limits and applies them to a running container.
    pub async fn update_resources(
        &self,
        reference: &str,
        body: serde_json::Map<String, Value>,
    ) -> Result<Vec<String>, EngineError> {
        let update = HostConfig {
            extra: body
                .into_iter()
                .filter(|(_, v)| !v.is_null())
                .collect::<std::collections::BTreeMap<_, _>>(),
            ..HostConfig::default()
        };
        // As dockerd: the request is checked on its own first (verifyContainerSettings), then
        // against the container.
        verify_resources(&update)?;
        super::restart::validate_policy(&super::restart::policy_of(&update))?;
        let c = self.container(reference)?;
        let _op = c.op.lock().await;
        let host = merge_update(&c.record().host_config, &update)
            .map_err(|reason| conflict(format!("Cannot update container {}: {reason}", c.id)))?;
        let record = c.record();
        if record.state.status == Status::Running {
            if let Some(resources) = resources_of(&host) {
                cgroup_of(&record)?
                    .update(&resources)
                    .map_err(cgroup_err(&c.id))?;
            }
        }
        c.update(|r| r.host_config = host);
        self.inner.state.save(&c.record())?;
        self.emit(&c.record(), "update", &[]);
        Ok(Vec::new())
    }

    /// `docker top`: the container's processes as `ps` shows them.
    pub fn top(&self, reference: &str, ps_args: &str) -> Result<Value, EngineError> {
        let c = self.container(reference)?;
        let record = c.record();
        if record.state.status != Status::Running {
            return Err(EngineError::NotRunning { id: c.id.clone() });
        }
        let pids = match cgroup_of(&record).and_then(|g| g.pids().map_err(cgroup_err(&c.id))) {
            Ok(pids) if !pids.is_empty() => pids,
            _ => crate::container::top::namespace_pids(record.state.pid),
        };
        crate::container::top::render(&pids, ps_args).map_err(|reason| EngineError::Top {
            id: c.id.clone(),
            reason,
        })
    }

    /// One `docker stats` sample (without `precpu_stats`).
    pub fn stats_sample(&self, reference: &str) -> Result<Value, EngineError> {
        let c = self.container(reference)?;
        let record = c.record();
        let running = record.state.status == Status::Running;
        let stats = if running {
            cgroup_of(&record)?.stats().map_err(cgroup_err(&c.id))?
        } else {
            Default::default()
        };
        let pids_limit = int(&record.host_config, "PidsLimit").filter(|v| *v > 0);
        Ok(crate::container::stats::sample(
            &record, running, &stats, pids_limit,
        ))
    }

    /// `POST /containers/{id}/exec`: registers an exec instance.
    pub fn exec_create(&self, reference: &str, config: ExecConfig) -> Result<String, EngineError> {
        let c = self.container(reference)?;
        if c.record().state.status != Status::Running {
            return Err(EngineError::NotRunning { id: c.id.clone() });
        }
        if self.is_paused(&c.id) {
            return Err(conflict(format!(
                "Container {} is paused, unpause the container before exec",
                c.id
            )));
        }
        if config.cmd.is_empty() {
            return Err(EngineError::InvalidParameter {
                reason: "No exec command specified".into(),
            });
        }
        let id = new_id();
        let instance = ExecInstance::new(id.clone(), c.id.clone(), config);
        let command = instance.config.cmd.join(" ");
        let known: HashSet<String> = self.list().into_iter().map(|r| r.id).collect();
        let mut execs = lock(&self.inner.ext.execs);
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
        lock(&self.inner.ext.execs)
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::NoSuchExec { id: id.to_string() })
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
        let path = c.dir.join(format!("exec-{id}.json"));
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
        launch::write_atomic(&path, &bytes).map_err(|source| EngineError::Launch {
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
                let code = i64::from(failed.exit_code);
                let message = format!(
                    "OCI runtime exec failed: exec failed: unable to start container process: {}: unknown",
                    failed.message
                );
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
            s.pid = launched.pid;
        });
        info!(container = %c.id, exec = %id, pid = launched.pid, "exec started");
        self.emit(
            record,
            &format!("exec_start: {}", config.cmd.join(" ")),
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
        let mut env: Vec<String> = spec
            .spec
            .process
            .env
            .iter()
            .filter(|v| !v.starts_with("TERM="))
            .cloned()
            .collect();
        if config.tty {
            env.push("TERM=xterm".into());
        }
        for var in &config.env {
            config::replace_or_append(&mut env, var);
        }
        let user = if config.user.is_empty() {
            record.config.user.clone()
        } else {
            config.user.clone()
        };
        let mut layers = vec![spec.spec.rootfs.upper_dir.clone()];
        layers.extend(spec.spec.rootfs.lower_dirs.iter().cloned());
        let resolved = config::resolve_user(&user, &layers)?;
        if !config.user.is_empty() {
            let home = format!("HOME={}", resolved.home);
            config::replace_or_append(&mut env, &home);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn host(json: Value) -> HostConfig {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn host_config_limits_become_runtime_resources() {
        let mut h = host(
            json!({"Memory": 67108864, "NanoCpus": 1500000000i64, "PidsLimit": 50,
            "CapDrop": ["ALL"], "Init": true}),
        );
        normalize_host_config(&mut h).unwrap();
        assert_eq!(int(&h, "MemorySwap"), Some(134217728));
        let f = features_of(&h);
        let r = f.resources.unwrap();
        assert_eq!(r.memory_bytes, Some(67108864));
        assert_eq!(r.memory_swap_bytes, Some(134217728));
        assert_eq!((r.cpu_quota, r.cpu_period), (Some(150000), Some(100000)));
        assert_eq!(r.pids_limit, Some(50));
        assert_eq!(f.capabilities.unwrap().drop, vec!["ALL".to_string()]);
        assert!(f.init);
        assert!(!f.privileged);
    }

    #[test]
    fn updates_merge_and_refuse_as_dockerd_does() {
        let current =
            host(json!({"Memory": 67108864, "MemorySwap": 134217728, "NanoCpus": 1000000000i64}));
        let update = host(json!({"Memory": 100000000, "MemorySwap": 0, "CpuShares": 0,
            "RestartPolicy": {"Name": "always"}}));
        let merged = merge_update(&current, &update).unwrap();
        assert_eq!(int(&merged, "Memory"), Some(100000000));
        // The swap limit stays; no default is applied on update.
        assert_eq!(int(&merged, "MemorySwap"), Some(134217728));
        assert_eq!(super::super::restart::policy_of(&merged).name, "always");
        let too_big = host(json!({"Memory": 200000000}));
        assert_eq!(
            merge_update(&current, &too_big).unwrap_err(),
            "Memory limit should be smaller than already set memoryswap limit, update the memoryswap at the same time"
        );
        let period = host(json!({"CpuPeriod": 50000}));
        assert_eq!(
            merge_update(&current, &period).unwrap_err(),
            "Conflicting options: CPU Period cannot be updated as NanoCPUs has already been set"
        );
        let auto_remove = HostConfig {
            auto_remove: true,
            ..HostConfig::default()
        };
        assert_eq!(
            merge_update(
                &auto_remove,
                &host(json!({"RestartPolicy": {"Name": "always"}}))
            )
            .unwrap_err(),
            "Restart policy cannot be updated because AutoRemove is enabled for the container"
        );
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(
            verify_resources(&host(json!({"NanoCpus": 1000i64 * 1000000000})))
                .unwrap_err()
                .to_string(),
            format!(
                "range of CPUs is from 0.01 to {cpus}.00, as there are only {cpus} CPUs available"
            )
        );
        let mut relative = host(json!({"Tmpfs": {"run": ""}}));
        assert_eq!(
            normalize_host_config(&mut relative)
                .unwrap_err()
                .to_string(),
            "invalid mount path: 'run' mount path must be absolute"
        );
        let mut root = host(json!({"Tmpfs": {"/": ""}}));
        assert_eq!(
            normalize_host_config(&mut root).unwrap_err().to_string(),
            "invalid specification: destination can't be '/'"
        );
    }

    #[test]
    fn too_little_memory_and_unknown_capabilities_are_refused() {
        let mut h = host(json!({"Memory": 1024}));
        assert_eq!(
            normalize_host_config(&mut h).unwrap_err().to_string(),
            "Minimum memory limit allowed is 6MB"
        );
        let mut h = host(json!({"CapAdd": ["FOO"]}));
        assert!(normalize_host_config(&mut h)
            .unwrap_err()
            .to_string()
            .contains("CAP_FOO"));
        assert_eq!(features_of(&HostConfig::default()), Features::default());
    }
}
