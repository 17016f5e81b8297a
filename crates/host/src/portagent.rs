//! The port agent: every port a container publishes inside a machine, on the user's loopback.
//!
//! On macOS and Windows the guest sits behind QEMU user networking and has no address the host
//! can route to, so a port the engine publishes in the guest is out of the user's reach. Each
//! running machine therefore has one detached host process, `rmachine port-agent NAME`
//! (started by `create`/`start`, stopped by `stop`/`kill`/`rm`), that
//!
//! 1. follows the engine's container events over its mutual-TLS API (`GET /events`), after
//!    listing what already runs (`GET /containers/json`), and reads each started container's
//!    `NetworkSettings.Ports` from `GET /containers/ID/json`;
//! 2. binds `127.0.0.1:HOSTPORT` and `[::1]:HOSTPORT` (or only the address given to `create
//!    --published-bind-address`) for each published port, and closes them when the container
//!    dies;
//! 3. carries each TCP connection to the guest's `127.0.0.1:HOSTPORT`, where the engine's
//!    userland proxy listens, in a `direct-tcpip` channel of the machine's SSH connection, and
//!    UDP datagrams through one `rmachine-init udp-relay HOSTPORT` exec channel per port
//!    ([`rmachine_guest_config::udp_frame`]);
//! 4. mounts each share whose transport is SFTP (no hypervisor device for it) with one
//!    `rmachine-init sftp-mount` exec channel per share and serves the folder on it
//!    ([`crate::sftpshare`]). The shares follow the SSH connection, not the engine: a restart
//!    of the engine leaves them served; a connection that drops is made again (the pause
//!    doubling from 1 s to 8 s while attempts fail) and each share's channel with it, and the
//!    guest's mount, held by a daemon that outlives the channel, serves again without a
//!    remount (containers keep their binds).
//!
//! SSH rather than the hypervisor's own forwarding: it works the same with every driver (QEMU,
//! VirtualBox, Hyper-V, external ones), needs no VM reconfiguration while it runs, and is
//! already authenticated by the machine's key.
//!
//! A host port that cannot be bound (in use on the user's computer) does not stop the
//! container; the agent records it in `port-agent.json`, which `rmachine ls` (ERRORS) and
//! `rmachine inspect` (`PortAgent`) read, and logs it in `port-agent.log`.
//!
//! Files in `machines/NAME/`: `port-agent.pid` names the one agent that should run (an agent
//! that finds another pid there exits; `stop` removes it), `port-agent.lock` is held by the
//! running agent (so `stop` can wait for its listeners to close, and `inspect` can tell whether
//! it runs on any platform), `port-agent.json` its status, `port-agent.log` its log.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use rmachine_driver::{Driver, Share, ShareTransport};
use rmachine_guest_config::report::DiskUsage;
use rmachine_guest_config::udp_frame::{self, FrameDecoder};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::engine_check::{EngineCheckError, EngineClient};
use crate::sftpshare::{self, SftpShareState};
use crate::ssh::{SshError, SshSession};
use crate::store::{write_atomic, Store, StoreError};

/// `machines/NAME/port-agent.pid`: the pid of the agent that should run.
pub const PID_FILE: &str = "port-agent.pid";
/// `machines/NAME/port-agent.lock`: held by the running agent.
pub const LOCK_FILE: &str = "port-agent.lock";
/// `machines/NAME/port-agent.json`: the agent's [`AgentStatus`].
pub const STATUS_FILE: &str = "port-agent.json";
/// `machines/NAME/port-agent.log`: the agent's log.
pub const LOG_FILE: &str = "port-agent.log";

/// How often the agent checks that it is still the one `port-agent.pid` names.
const PID_POLL: Duration = Duration::from_millis(200);
/// How long `stop` waits for the agent to close its listeners and exit.
const STOP_WAIT: Duration = Duration::from_secs(5);
/// First pause between attempts to reach a machine that is booting or gone; it doubles up
/// to `MAX_RETRY` while attempts keep failing at once.
const RETRY: Duration = Duration::from_secs(1);
/// The longest pause between attempts: short enough that a share or port is back soon after
/// the machine is.
const MAX_RETRY: Duration = Duration::from_secs(8);
/// A connection that lasted this long was working: the next attempt starts at `RETRY` again.
const STABLE: Duration = Duration::from_secs(10);
/// `GET /events` for the container events that change published ports.
const EVENTS_PATH: &str =
    "/events?filters=%7B%22type%22%3A%5B%22container%22%5D%2C%22event%22%3A%5B%22start%22%2C%22die%22%5D%7D";

/// What can go wrong starting, stopping or running the agent.
#[derive(Debug, thiserror::Error)]
pub enum PortAgentError {
    /// A file of the agent could not be read or written, or the process not started.
    #[error("port agent of machine {machine:?}: cannot use {path}")]
    Io {
        /// The machine.
        machine: String,
        /// The file (or the program started).
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another agent kept the lock.
    #[error("port agent of machine {machine:?}: another agent still runs (it holds {path})")]
    Busy {
        /// The machine.
        machine: String,
        /// The lock file.
        path: PathBuf,
    },
    /// The machine's record could not be used.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A transport for one published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP, carried in `direct-tcpip` channels.
    Tcp,
    /// UDP, carried by the guest's relay.
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A port the engine published on the guest, as the agent forwards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublishedPort {
    /// Its transport.
    pub proto: Proto,
    /// The engine's host port, reachable on the guest's loopback.
    pub host_port: u16,
}

/// The ports to forward for a container, from its inspect JSON (`NetworkSettings.Ports`:
/// `{"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, …], "53/udp": null}`).
///
/// Bindings to one specific guest address other than loopback are left out: the engine's proxy
/// does not listen on the guest's loopback for them, so there is nothing the agent could reach.
pub fn published_ports(inspect: &Value) -> Vec<PublishedPort> {
    let mut ports = Vec::new();
    let Some(map) = inspect
        .pointer("/NetworkSettings/Ports")
        .and_then(Value::as_object)
    else {
        return ports;
    };
    for (key, bindings) in map {
        let proto = match key.rsplit_once('/').map(|(_, p)| p) {
            Some("udp") => Proto::Udp,
            Some("tcp") | None => Proto::Tcp,
            Some(_) => continue,
        };
        for binding in bindings.as_array().into_iter().flatten() {
            let ip = binding.get("HostIp").and_then(Value::as_str).unwrap_or("");
            let reachable = ip.is_empty()
                || ip
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_unspecified() || ip.is_loopback());
            let port = binding
                .get("HostPort")
                .and_then(Value::as_str)
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p != 0);
            if let (true, Some(host_port)) = (reachable, port) {
                let port = PublishedPort { proto, host_port };
                if !ports.contains(&port) {
                    ports.push(port);
                }
            }
        }
    }
    ports.sort();
    ports
}

/// The host addresses the agent binds: the `--published-bind-address` of the machine, else
/// both loopbacks.
pub fn bind_addresses(configured: Option<IpAddr>) -> Vec<IpAddr> {
    match configured {
        Some(ip) => vec![ip],
        None => vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()],
    }
}

/// A port being forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Forward {
    /// The container that published it (short id).
    pub container: String,
    /// `tcp` or `udp`.
    pub proto: Proto,
    /// The port, the same on the host and in the guest.
    pub host_port: u16,
    /// The host addresses listening.
    pub addresses: Vec<IpAddr>,
}

/// A host address and port the agent could not bind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BindFailure {
    /// The container that published the port (short id).
    pub container: String,
    /// `tcp` or `udp`.
    pub proto: Proto,
    /// The host address.
    pub address: IpAddr,
    /// The port.
    pub host_port: u16,
    /// Why (the operating system's message).
    pub error: String,
}

impl std::fmt::Display for BindFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot publish {}/{} of container {}: {}",
            SocketAddr::new(self.address, self.host_port),
            self.proto,
            self.container,
            self.error
        )
    }
}

/// `port-agent.json`, written by the agent on every change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentStatus {
    /// The agent's pid.
    pub pid: u32,
    /// Whether it currently follows the engine over SSH and TLS.
    pub connected: bool,
    /// Why it is not connected, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The ports it forwards.
    pub forwarded: Vec<Forward>,
    /// The ports it could not bind.
    pub failures: Vec<BindFailure>,
    /// The machine's shares over SFTP, which the agent serves while it is connected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<SftpShareState>,
    /// The data disk's usage in the guest, refreshed every [`USAGE_EVERY`] while connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_disk_usage: Option<GuestDiskUsage>,
}

/// The guest's data disk usage and when the agent read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GuestDiskUsage {
    /// The figures (`statvfs` of the data disk in the guest).
    #[serde(flatten)]
    pub usage: DiskUsage,
    /// When they were read (RFC 3339).
    pub time: String,
}

/// How often the agent reads the data disk's usage in the guest.
pub const USAGE_EVERY: Duration = Duration::from_secs(30);

/// The guest command that prints the data disk's usage as JSON.
pub const DISK_USAGE_COMMAND: &str = "rmachine-init disk-usage";

/// How long a disk-usage read may take before it is given up.
const USAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most output a disk-usage read may produce (its JSON is a few hundred bytes).
const USAGE_MAX_OUTPUT: usize = 64 * 1024;

/// A writer that keeps what is written until `limit` bytes and fails past it, so a guest's
/// output cannot grow the agent's memory without end.
struct CappedBuffer {
    data: Vec<u8>,
    limit: usize,
}

impl tokio::io::AsyncWrite for CappedBuffer {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.data.len() + buf.len() > self.limit {
            return std::task::Poll::Ready(Err(std::io::Error::other(format!(
                "output longer than {} bytes",
                self.limit
            ))));
        }
        self.data.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Reads the guest's data disk usage over `ssh` with `command`, within `USAGE_TIMEOUT` and
/// `USAGE_MAX_OUTPUT`.
pub async fn read_disk_usage(ssh: &SshSession, command: &str) -> Option<DiskUsage> {
    let mut out = CappedBuffer {
        data: Vec::new(),
        limit: USAGE_MAX_OUTPUT,
    };
    let run = ssh.run_with(
        command,
        None::<tokio::io::Empty>,
        &mut out,
        tokio::io::sink(),
    );
    let Ok(status) = tokio::time::timeout(USAGE_TIMEOUT, run).await else {
        tracing::warn!("disk-usage took longer than {USAGE_TIMEOUT:?}");
        return None;
    };
    let out = out.data;
    match status {
        Ok(0) => serde_json::from_slice(&out).ok(),
        Ok(code) => {
            tracing::debug!(code, "disk-usage failed (an older guest image?)");
            None
        }
        Err(e) => {
            tracing::debug!(error = %crate::machine::error_chain(&e), "disk-usage");
            None
        }
    }
}

/// The agent as `rmachine inspect` shows it (`PortAgent`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentReport {
    /// Whether an agent process runs for the machine.
    pub running: bool,
    /// Its log file.
    pub log: PathBuf,
    /// What it last reported (absent if no agent ever ran).
    #[serde(flatten)]
    pub status: Option<AgentStatus>,
}

fn io_err<'a>(
    machine: &'a str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> PortAgentError + 'a {
    move |source| PortAgentError::Io {
        machine: machine.to_string(),
        path: path.to_path_buf(),
        source,
    }
}

/// Whether a process holds the machine's agent lock.
pub fn is_running(dir: &Path) -> bool {
    let Ok(file) = OpenOptions::new().write(true).open(dir.join(LOCK_FILE)) else {
        return false;
    };
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

/// The agent's last status, if it ever wrote one.
pub fn read_status(dir: &Path) -> Option<AgentStatus> {
    let bytes = std::fs::read(dir.join(STATUS_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What `rmachine inspect` shows of the agent.
pub fn report(dir: &Path) -> AgentReport {
    let running = is_running(dir);
    AgentReport {
        running,
        log: dir.join(LOG_FILE),
        status: read_status(dir),
    }
}

/// The agent's problems for `rmachine ls`'s ERRORS column, on a running machine.
pub fn ls_errors(dir: &Path) -> Option<String> {
    let status = read_status(dir)?;
    if !is_running(dir) {
        return Some(format!(
            "port agent is not running (see {})",
            dir.join(LOG_FILE).display()
        ));
    }
    let unmounted = status.shares.iter().filter_map(|share| {
        share.error.as_ref().map(|error| {
            format!(
                "share {} on {} not mounted: {error}",
                share.host_path.display(),
                share.guest_path
            )
        })
    });
    let problems: Vec<String> = status
        .failures
        .iter()
        .map(ToString::to_string)
        .chain(unmounted)
        .collect();
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Starts `program port-agent NAME` detached (its own process group, stdio to the log) and
/// returns its pid. `program` is the `rmachine` executable; the caller passes it because only
/// the binary knows where it is.
pub fn launch(store: &Store, name: &str, program: &Path) -> Result<u32, PortAgentError> {
    let dir = store.machine_path(name);
    let log_path = dir.join(LOG_FILE);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_err(name, &log_path))?;
    let log_err = log.try_clone().map_err(io_err(name, &log_path))?;
    let mut command = std::process::Command::new(program);
    command
        .arg("--storage-path")
        .arg(store.root())
        .arg("port-agent")
        .arg(name)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err);
    #[cfg(unix)]
    {
        // Out of the terminal's process group: Ctrl-C in the shell that ran `rmachine start`
        // must not take the machine's ports down.
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    #[cfg(windows)]
    {
        use std::os::windows::process::CommandExt;
        const DETACHED_PROCESS: u32 = 0x0000_0008;
        const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
        command.creation_flags(DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP);
    }
    // The agent lives as long as the machine: a descriptor of our caller it inherited (a test
    // runner's pipe, `$(rmachine start x)`) would keep that caller waiting.
    rmachine_driver::runner::only_standard_descriptors(&mut command);
    let child = command.spawn().map_err(io_err(name, program))?;
    tracing::info!(machine = name, pid = child.id(), "port agent started");
    Ok(child.id())
}

/// Stops the machine's agent, if one runs: removes `port-agent.pid` (the agent exits when it
/// no longer finds its pid there) and waits until it has let go of its lock, so its listeners
/// are closed when this returns.
pub fn stop(store: &Store, name: &str) -> Result<(), PortAgentError> {
    let dir = store.machine_path(name);
    let pid_path = dir.join(PID_FILE);
    match std::fs::remove_file(&pid_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(name, &pid_path)(e)),
    }
    let started = Instant::now();
    while is_running(&dir) {
        if started.elapsed() > STOP_WAIT {
            return Err(PortAgentError::Busy {
                machine: name.to_string(),
                path: dir.join(LOCK_FILE),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn pid_file_names_us(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        == Some(std::process::id())
}

/// Takes over `port-agent.pid` (an older agent then exits) and waits for the lock.
fn claim(store: &Store, name: &str) -> Result<File, PortAgentError> {
    let dir = store.machine_path(name);
    let pid_path = dir.join(PID_FILE);
    write_atomic(
        &pid_path,
        format!("{}\n", std::process::id()).as_bytes(),
        false,
    )?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(name, &lock_path))?;
    let started = Instant::now();
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < STOP_WAIT => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(PortAgentError::Busy {
                    machine: name.to_string(),
                    path: lock_path,
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(name, &lock_path)(e)),
        }
    }
}

/// Runs the agent of machine `name` until `port-agent.pid` stops naming this process.
pub async fn run(store: &Store, name: &str) -> Result<(), PortAgentError> {
    let _lock = claim(store, name)?;
    let dir = store.machine_path(name);
    tracing::info!(
        machine = name,
        pid = std::process::id(),
        "port agent running"
    );
    let (mut agent, mut share_states) = Agent::new(dir.join(STATUS_FILE));
    agent.write_status();
    let watch = async {
        while pid_file_names_us(&dir) {
            tokio::time::sleep(PID_POLL).await;
        }
    };
    tokio::pin!(watch);
    let mut retry = RETRY;
    loop {
        let started = Instant::now();
        tokio::select! {
            _ = &mut watch => break,
            result = agent.follow(store, name, &mut share_states) => {
                let error = match result {
                    Ok(()) => "the engine's event stream ended".to_string(),
                    Err(e) => crate::machine::error_chain(&e),
                };
                tracing::info!(machine = name, %error, "disconnected; retrying");
                agent.disconnect(Some(error));
            }
        }
        retry = if started.elapsed() >= STABLE {
            RETRY
        } else {
            (retry * 2).min(MAX_RETRY)
        };
        tokio::select! {
            _ = &mut watch => break,
            _ = agent.pause(retry, &mut share_states) => {}
        }
    }
    agent.close_ssh();
    agent.disconnect(None);
    tracing::info!(machine = name, "port agent stopped");
    Ok(())
}

/// Why one connection to the machine ended.
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error(transparent)]
    Machine(#[from] Box<crate::machine::MachineError>),
    #[error("ssh")]
    Ssh(#[source] SshError),
    #[error("engine")]
    Engine(#[source] EngineCheckError),
    #[error("the ssh connection closed")]
    SshClosed,
    #[error("reading the engine's events failed")]
    Events(#[source] hyper::Error),
}

/// The listeners of one published port; dropping it closes them.
pub struct ActiveForward {
    forward: Forward,
    tasks: Vec<JoinHandle<()>>,
}

impl ActiveForward {
    /// What is forwarded.
    pub fn forward(&self) -> &Forward {
        &self.forward
    }
}

impl Drop for ActiveForward {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct Agent {
    status_path: PathBuf,
    bind: Vec<IpAddr>,
    ssh: Option<Arc<SshSession>>,
    containers: HashMap<String, Vec<ActiveForward>>,
    failures: Vec<BindFailure>,
    last_error: Option<String>,
    shares: Vec<SftpShareState>,
    /// One task per share over SFTP; aborting it closes the share's channel.
    share_tasks: Vec<JoinHandle<()>>,
    /// Where the share tasks report their states, tagged with `share_generation`. One
    /// receiver for the agent's whole life, read while it follows the engine and while it
    /// pauses between attempts: the tasks outlive a `follow` as long as the SSH connection
    /// does, and a state they report in between must still reach `port-agent.json`.
    share_sink: mpsc::UnboundedSender<(u64, SftpShareState)>,
    /// Counts the SSH connections whose shares were served: a state still queued from an
    /// earlier one is not taken for the current one's.
    share_generation: u64,
    usage: Option<GuestDiskUsage>,
}

/// The receiving end of [`Agent::share_sink`].
type ShareStates = mpsc::UnboundedReceiver<(u64, SftpShareState)>;

impl Agent {
    fn new(status_path: PathBuf) -> (Self, ShareStates) {
        let (share_sink, share_states) = mpsc::unbounded_channel();
        let agent = Agent {
            status_path,
            bind: Vec::new(),
            ssh: None,
            containers: HashMap::new(),
            failures: Vec::new(),
            last_error: None,
            shares: Vec::new(),
            share_tasks: Vec::new(),
            share_sink,
            share_generation: 0,
            usage: None,
        };
        (agent, share_states)
    }

    /// Records a state a share task reported, unless it comes from an earlier connection.
    fn share_state(&mut self, (generation, state): (u64, SftpShareState)) {
        if generation != self.share_generation {
            return;
        }
        if let Some(known) = self
            .shares
            .iter_mut()
            .find(|s| s.guest_path == state.guest_path)
        {
            *known = state;
        }
        self.write_status();
    }

    /// Waits `pause` between two attempts, recording the share states reported meanwhile.
    async fn pause(&mut self, pause: Duration, share_states: &mut ShareStates) {
        let end = tokio::time::sleep(pause);
        tokio::pin!(end);
        loop {
            tokio::select! {
                _ = &mut end => return,
                Some(state) = share_states.recv() => self.share_state(state),
            }
        }
    }

    fn write_status(&self) {
        let mut forwarded: Vec<Forward> = self
            .containers
            .values()
            .flatten()
            .map(|a| a.forward.clone())
            .collect();
        forwarded.sort_by_key(|f| (f.host_port, f.proto));
        let status = AgentStatus {
            pid: std::process::id(),
            connected: self.ssh.is_some(),
            last_error: self.last_error.clone(),
            forwarded,
            failures: self.failures.clone(),
            shares: self.shares.clone(),
            data_disk_usage: self.usage.clone(),
        };
        let json = serde_json::to_vec_pretty(&status).unwrap_or_default();
        if let Err(e) = write_atomic(&self.status_path, &json, false) {
            tracing::warn!(error = %e, "cannot write the agent's status");
        }
    }

    /// Ends what one `follow` set up. The shares follow the SSH connection rather than the
    /// engine: while it is open (the engine restarted, its event stream broke) they stay
    /// mounted and served, and only a connection that closed takes them down.
    fn disconnect(&mut self, error: Option<String>) {
        if self.ssh.as_ref().is_none_or(|ssh| ssh.is_closed()) {
            self.close_ssh();
        }
        self.containers.clear();
        self.failures.clear();
        self.last_error = error;
        self.write_status();
    }

    /// Drops the SSH connection and the shares served over it.
    fn close_ssh(&mut self) {
        for task in self.share_tasks.drain(..) {
            task.abort();
        }
        self.shares.clear();
        self.ssh = None;
    }

    /// One connection: SSH and the engine's events, until either ends.
    async fn follow(
        &mut self,
        store: &Store,
        name: &str,
        share_states: &mut ShareStates,
    ) -> Result<(), FollowError> {
        let config = store.load(name).map_err(|e| Box::new(e.into()))?;
        self.bind = bind_addresses(config.published_bind_address);
        let driver = crate::machine::driver_for(&config).map_err(Box::new)?;
        let endpoints = driver
            .endpoints(&store.machine_dir(name))
            .await
            .map_err(|source| {
                Box::new(crate::machine::MachineError::Driver {
                    machine: name.to_string(),
                    op: "report the VM's endpoints",
                    source,
                })
            })?;
        let kept = self.ssh.clone().filter(|ssh| !ssh.is_closed());
        let ssh = match kept {
            Some(ssh) => ssh,
            None => {
                let ssh = SshSession::connect(endpoints.ssh, &config.driver.ssh_key_path)
                    .await
                    .map_err(FollowError::Ssh)?;
                let ssh = Arc::new(ssh);
                self.ssh = Some(ssh.clone());
                self.serve_shares(&config.vm.shares, &ssh);
                ssh
            }
        };
        let client =
            EngineClient::from_cert_dir(&store.machine_path(name)).map_err(FollowError::Engine)?;
        let engine = endpoints.engine;
        // Subscribe before listing, so a container that starts in between is not missed.
        let mut events = client
            .stream(engine, EVENTS_PATH)
            .await
            .map_err(FollowError::Engine)?;
        self.last_error = None;
        let running = client
            .get_json(engine, "/containers/json")
            .await
            .map_err(FollowError::Engine)?;
        for id in running
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("Id").and_then(Value::as_str))
        {
            self.container_started(&client, engine, id).await;
        }
        self.write_status();
        tracing::info!(machine = name, "following the engine's events");
        let mut lines = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut usage_tick = tokio::time::interval(USAGE_EVERY);
        let (usage_tx, mut usage_rx) = mpsc::unbounded_channel();
        let mut usage_task: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            tokio::select! {
                _ = usage_tick.tick() => {
                    // One read at a time: a slow guest does not pile up reads.
                    if usage_task.as_ref().is_some_and(|task| !task.is_finished()) {
                        continue;
                    }
                    let (ssh, usage_tx) = (ssh.clone(), usage_tx.clone());
                    usage_task = Some(tokio::spawn(async move {
                        if let Some(usage) = read_disk_usage(&ssh, DISK_USAGE_COMMAND).await {
                            let _ = usage_tx.send(usage);
                        }
                    }));
                }
                Some(usage) = usage_rx.recv() => {
                    self.usage = Some(GuestDiskUsage {
                        usage,
                        time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    });
                    self.write_status();
                }
                frame = events.frame() => {
                    let Some(frame) = frame else { return Ok(()) };
                    let frame = frame.map_err(FollowError::Events)?;
                    let Ok(data) = frame.into_data() else { continue };
                    lines.extend_from_slice(&data);
                    while let Some(end) = lines.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = lines.drain(..=end).collect();
                        let Ok(event) = serde_json::from_slice::<Value>(&line) else { continue };
                        self.on_event(&client, engine, &event).await;
                    }
                }
                Some(state) = share_states.recv() => self.share_state(state),
                _ = tick.tick() => {
                    if ssh.is_closed() {
                        return Err(FollowError::SshClosed);
                    }
                }
            }
        }
    }

    /// Mounts each share over SFTP in the guest and serves it (see [`crate::sftpshare`]).
    fn serve_shares(&mut self, shares: &[Share], ssh: &Arc<SshSession>) {
        let shares: Vec<Share> = shares
            .iter()
            .filter(|s| s.transport == ShareTransport::Sftp)
            .cloned()
            .collect();
        if shares.is_empty() {
            return;
        }
        self.shares = shares
            .iter()
            .map(|share| SftpShareState {
                host_path: share.host_path.clone(),
                guest_path: share.guest_path.clone(),
                mounted: false,
                error: None,
            })
            .collect();
        let ssh = ssh.clone();
        self.share_generation += 1;
        let (sink, generation) = (self.share_sink.clone(), self.share_generation);
        let send = move |state: SftpShareState| {
            let _ = sink.send((generation, state));
        };
        // One after the other, in the order given, as the guest mounts the others: a share
        // whose guest path lies inside another must find that one mounted first.
        self.share_tasks.push(tokio::spawn(async move {
            struct AbortOnDrop(Vec<JoinHandle<()>>);
            impl Drop for AbortOnDrop {
                fn drop(&mut self) {
                    for task in &self.0 {
                        task.abort();
                    }
                }
            }
            let mut tasks = AbortOnDrop(Vec::new());
            for share in shares {
                let (one_tx, mut one_rx) = mpsc::unbounded_channel();
                tasks
                    .0
                    .push(tokio::spawn(sftpshare::serve_share_while_connected(
                        ssh.clone(),
                        share,
                        sftpshare::MOUNT_COMMAND.to_owned(),
                        one_tx,
                    )));
                if let Some(first) = one_rx.recv().await {
                    send(first);
                }
                let send = send.clone();
                tasks.0.push(tokio::spawn(async move {
                    while let Some(state) = one_rx.recv().await {
                        send(state);
                    }
                }));
            }
            // The shares live as long as this task: the agent aborts it on disconnection.
            std::future::pending::<()>().await;
            drop(tasks);
        }));
    }

    async fn on_event(&mut self, client: &EngineClient, engine: SocketAddr, event: &Value) {
        if event.get("Type").and_then(Value::as_str) != Some("container") {
            return;
        }
        let Some(id) = event
            .pointer("/Actor/ID")
            .or_else(|| event.get("id"))
            .and_then(Value::as_str)
        else {
            return;
        };
        match event.get("Action").and_then(Value::as_str) {
            Some("start") => self.container_started(client, engine, id).await,
            Some("die") | Some("destroy") => self.container_stopped(id),
            _ => return,
        }
        self.write_status();
    }

    fn container_stopped(&mut self, id: &str) {
        let short = short_id(id);
        if let Some(forwards) = self.containers.remove(&short) {
            for active in &forwards {
                tracing::info!(
                    container = %short,
                    port = active.forward.host_port,
                    proto = %active.forward.proto,
                    "closed"
                );
            }
        }
        self.failures.retain(|f| f.container != short);
    }

    async fn container_started(&mut self, client: &EngineClient, engine: SocketAddr, id: &str) {
        let short = short_id(id);
        let inspect = match client
            .get_json(engine, &format!("/containers/{id}/json"))
            .await
        {
            Ok(inspect) => inspect,
            Err(e) => {
                tracing::warn!(container = %short, error = %crate::machine::error_chain(&e), "cannot inspect");
                return;
            }
        };
        if inspect.pointer("/State/Running").and_then(Value::as_bool) == Some(false) {
            return;
        }
        let Some(ssh) = self.ssh.clone() else { return };
        // A restart event replaces what an earlier start of the same container set up.
        self.container_stopped(id);
        let mut forwards = Vec::new();
        for port in published_ports(&inspect) {
            let (active, failures) =
                forward_port(&ssh, &self.bind, &short, port, UDP_RELAY_COMMAND).await;
            for failure in &failures {
                tracing::error!("{failure}");
            }
            self.failures.extend(failures);
            if let Some(active) = active {
                tracing::info!(
                    container = %short,
                    port = port.host_port,
                    proto = %port.proto,
                    addresses = ?active.forward.addresses,
                    "forwarding"
                );
                forwards.push(active);
            }
        }
        if !forwards.is_empty() {
            self.containers.insert(short, forwards);
        }
    }
}

fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

/// Whether a bind failure is the host simply having no such address (no IPv6 loopback), which
/// is not worth reporting when the agent chose the address itself.
fn address_missing(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::AddrNotAvailable
}

/// The guest command that relays one UDP port (the port number follows).
pub const UDP_RELAY_COMMAND: &str = "rmachine-init udp-relay";

/// Binds `port` on every address of `bind` and starts carrying it to the guest's loopback
/// through `ssh` (UDP through `relay_command PORT`); returns the forward (if any address could
/// be bound) and the failures.
pub async fn forward_port(
    ssh: &Arc<SshSession>,
    bind: &[IpAddr],
    container: &str,
    port: PublishedPort,
    relay_command: &str,
) -> (Option<ActiveForward>, Vec<BindFailure>) {
    let mut failures = Vec::new();
    let mut addresses = Vec::new();
    let mut tasks = Vec::new();
    let mut udp_sockets = Vec::new();
    let chosen = bind.len() > 1;
    for &ip in bind {
        let addr = SocketAddr::new(ip, port.host_port);
        let result = match port.proto {
            Proto::Tcp => TcpListener::bind(addr).await.map(|listener| {
                tasks.push(tokio::spawn(serve_tcp(
                    listener,
                    ssh.clone(),
                    port.host_port,
                )));
            }),
            Proto::Udp => UdpSocket::bind(addr).await.map(|socket| {
                udp_sockets.push(Arc::new(socket));
            }),
        };
        match result {
            Ok(()) => addresses.push(ip),
            Err(e) if chosen && ip.is_ipv6() && address_missing(&e) => {
                tracing::debug!(%addr, "no IPv6 loopback on this host");
            }
            Err(e) => failures.push(BindFailure {
                container: container.to_string(),
                proto: port.proto,
                address: ip,
                host_port: port.host_port,
                error: e.to_string(),
            }),
        }
    }
    if !udp_sockets.is_empty() {
        let command = format!("{relay_command} {}", port.host_port);
        tasks.push(tokio::spawn(serve_udp(
            udp_sockets,
            ssh.clone(),
            port.host_port,
            command,
        )));
    }
    let active = (!addresses.is_empty()).then(|| ActiveForward {
        forward: Forward {
            container: container.to_string(),
            proto: port.proto,
            host_port: port.host_port,
            addresses,
        },
        tasks,
    });
    (active, failures)
}

/// Accepts connections and carries each in its own `direct-tcpip` channel.
async fn serve_tcp(listener: TcpListener, ssh: Arc<SshSession>, port: u16) {
    loop {
        let (mut socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(port, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let ssh = ssh.clone();
        tokio::spawn(async move {
            match ssh.direct_tcpip(port, peer).await {
                Ok(mut channel) => {
                    let _ = tokio::io::copy_bidirectional(&mut socket, &mut channel).await;
                }
                // The guest refused: nothing listens there (any more). Closing the client's
                // connection is what a refused connection looks like from here.
                Err(e) => tracing::debug!(port, %peer, error = %e, "guest refused the connection"),
            }
        });
    }
}

/// Relays datagrams of every host socket of one port through one `udp-relay` channel; each
/// client address is one flow, so replies go back to the client and socket they belong to.
async fn serve_udp(sockets: Vec<Arc<UdpSocket>>, ssh: Arc<SshSession>, port: u16, command: String) {
    let channel = match ssh.exec_channel(&command).await {
        Ok(channel) => channel,
        Err(e) => {
            tracing::error!(port, error = %crate::machine::error_chain(&e), "cannot start the guest's udp relay");
            return;
        }
    };
    let (mut rx, tx) = channel.split();
    let (in_tx, mut in_rx) = mpsc::channel::<(usize, SocketAddr, Vec<u8>)>(256);
    let mut readers = Vec::new();
    for (index, socket) in sockets.iter().enumerate() {
        let socket = socket.clone();
        let in_tx = in_tx.clone();
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; udp_frame::MAX_DATAGRAM];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                if in_tx.send((index, peer, buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        }));
    }
    // Aborted with this task, which the forward aborts when the container dies.
    struct AbortOnDrop(Vec<JoinHandle<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            for task in &self.0 {
                task.abort();
            }
        }
    }
    let _readers = AbortOnDrop(readers);
    let mut flows: HashMap<(usize, SocketAddr), u32> = HashMap::new();
    let mut clients: HashMap<u32, (usize, SocketAddr)> = HashMap::new();
    let mut decoder = FrameDecoder::default();
    loop {
        tokio::select! {
            Some((index, peer, payload)) = in_rx.recv() => {
                let next = u32::try_from(flows.len()).unwrap_or(u32::MAX);
                let flow = *flows.entry((index, peer)).or_insert(next);
                clients.insert(flow, (index, peer));
                if tx.data(&udp_frame::encode(flow, &payload)[..]).await.is_err() {
                    break;
                }
            }
            msg = rx.wait() => match msg {
                Some(russh::ChannelMsg::Data { data }) => {
                    decoder.push(&data);
                    while let Some((flow, payload)) = decoder.next_frame() {
                        if let Some((index, peer)) = clients.get(&flow) {
                            let _ = sockets[*index].send_to(&payload, peer).await;
                        }
                    }
                }
                Some(russh::ChannelMsg::ExtendedData { data, .. }) => {
                    tracing::warn!(port, "udp relay: {}", String::from_utf8_lossy(&data).trim());
                }
                Some(russh::ChannelMsg::ExitStatus { exit_status }) => {
                    tracing::warn!(port, exit_status, "the guest's udp relay exited");
                }
                Some(_) => {}
                None => break,
            },
        }
    }
}

/// Starts the agent of a machine that just booted, replacing any older one.
pub fn restart(store: &Store, name: &str, program: &Path) -> Result<u32, PortAgentError> {
    stop(store, name)?;
    launch(store, name, program)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn disk_usage_output_is_capped() {
        use tokio::io::AsyncWriteExt;
        let mut out = CappedBuffer {
            data: Vec::new(),
            limit: USAGE_MAX_OUTPUT,
        };
        out.write_all(&[b' '; USAGE_MAX_OUTPUT])
            .await
            .expect("up to the cap");
        assert!(out.write_all(b"x").await.is_err(), "written past the cap");
        assert_eq!(out.data.len(), USAGE_MAX_OUTPUT);
    }

    /// `NetworkSettings` of `docker run -p 8080:80 -p 5353:53/udp -p 127.0.0.1:9000:9000
    /// -p 10.0.2.15:9001:9001 --expose 7000` as dockerd 20.10 reports it.
    fn inspect_json() -> Value {
        serde_json::json!({
            "Id": "0123456789abcdef",
            "State": {"Running": true},
            "NetworkSettings": {
                "Ports": {
                    "80/tcp": [
                        {"HostIp": "0.0.0.0", "HostPort": "8080"},
                        {"HostIp": "::", "HostPort": "8080"}
                    ],
                    "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "5353"}],
                    "9000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "9000"}],
                    "9001/tcp": [{"HostIp": "10.0.2.15", "HostPort": "9001"}],
                    "7000/tcp": null
                }
            }
        })
    }

    #[test]
    fn published_ports_come_from_network_settings() {
        assert_eq!(
            published_ports(&inspect_json()),
            vec![
                PublishedPort {
                    proto: Proto::Tcp,
                    host_port: 8080
                },
                PublishedPort {
                    proto: Proto::Tcp,
                    host_port: 9000
                },
                PublishedPort {
                    proto: Proto::Udp,
                    host_port: 5353
                },
            ]
        );
        assert!(published_ports(&serde_json::json!({"NetworkSettings": {"Ports": {}}})).is_empty());
        assert!(published_ports(&serde_json::json!({})).is_empty());
    }

    #[tokio::test]
    async fn share_states_reported_between_two_engine_connections_reach_the_status() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (mut agent, mut share_states) = Agent::new(tmp.path().join(STATUS_FILE));
        let share = |mounted| SftpShareState {
            host_path: "/home/me".into(),
            guest_path: "/home/me".into(),
            mounted,
            error: None,
        };
        agent.shares = vec![share(false)];
        agent.share_generation = 2;
        // A share task of the current connection mounts while no `follow` runs (the engine
        // is down); one of an earlier connection reports late.
        agent.share_sink.send((2, share(true))).expect("open");
        agent.share_sink.send((1, share(false))).expect("open");
        agent
            .pause(Duration::from_millis(50), &mut share_states)
            .await;
        assert_eq!(
            read_status(tmp.path()).expect("status written").shares,
            vec![share(true)]
        );
    }

    #[test]
    fn bind_failures_reach_ls_and_inspect_while_the_agent_runs() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path();
        assert_eq!(ls_errors(dir), None, "no agent ever ran: nothing to say");
        let status = AgentStatus {
            pid: 4242,
            connected: true,
            last_error: None,
            forwarded: vec![Forward {
                container: "0123456789ab".into(),
                proto: Proto::Udp,
                host_port: 5353,
                addresses: bind_addresses(None),
            }],
            failures: vec![BindFailure {
                container: "0123456789ab".into(),
                proto: Proto::Tcp,
                address: Ipv4Addr::LOCALHOST.into(),
                host_port: 8080,
                error: "Address already in use (os error 98)".into(),
            }],
            shares: vec![
                SftpShareState {
                    host_path: "/home/me".into(),
                    guest_path: "/home/me".into(),
                    mounted: true,
                    error: None,
                },
                SftpShareState {
                    host_path: "/srv".into(),
                    guest_path: "/srv".into(),
                    mounted: false,
                    error: Some("no fuse".into()),
                },
            ],
            data_disk_usage: None,
        };
        let json = serde_json::to_vec(&status).expect("serializable");
        std::fs::write(dir.join(STATUS_FILE), json).expect("write status");
        // The agent holds its lock while it runs.
        let lock = File::create(dir.join(LOCK_FILE)).expect("lock file");
        lock.lock().expect("lock");
        assert_eq!(
            ls_errors(dir).as_deref(),
            Some("cannot publish 127.0.0.1:8080/tcp of container 0123456789ab: Address already in use (os error 98); \
                  share /srv on /srv not mounted: no fuse")
        );
        let shown = serde_json::to_value(report(dir)).expect("serializable");
        assert_eq!(shown["Running"], true);
        assert_eq!(shown["Pid"], 4242);
        assert_eq!(shown["Forwarded"][0]["HostPort"], 5353);
        assert_eq!(shown["Forwarded"][0]["Addresses"][1], "::1");
        assert_eq!(shown["Failures"][0]["Address"], "127.0.0.1");
        drop(lock);
        assert_eq!(
            ls_errors(dir),
            Some(format!(
                "port agent is not running (see {})",
                dir.join(LOG_FILE).display()
            ))
        );
        assert_eq!(
            serde_json::to_value(report(dir)).expect("serializable")["Running"],
            false
        );
    }

    #[test]
    fn only_loopback_is_bound_unless_asked() {
        assert_eq!(
            bind_addresses(None),
            vec![
                IpAddr::from(Ipv4Addr::LOCALHOST),
                IpAddr::from(Ipv6Addr::LOCALHOST)
            ]
        );
        let ip: IpAddr = "192.168.1.5".parse().expect("literal");
        assert_eq!(bind_addresses(Some(ip)), vec![ip]);
    }
}
