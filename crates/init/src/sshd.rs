//! The guest's SSH server (russh): public-key authentication against the host's authorized
//! keys, `exec` and interactive shells as root, with a real PTY when asked for one, and the
//! `sftp` subsystem (see [`crate::sftp`]).
//!
//! Each session channel is driven by one task that owns the russh [`Channel`]: russh delivers
//! every request and data packet to the channel (the [`Handler`] callbacks only answer
//! `want_reply`), so the task sees `env` and `pty-req` before `exec`/`shell`, starts the
//! process, then pumps data both ways until the process exits and reports `exit-status`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelMsg, MethodKind, MethodSet, Sig};
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Name of the persisted host key file.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

/// Environment of every session before the client's `env` requests.
fn base_env(user: &str) -> Vec<(String, String)> {
    [
        ("HOME", "/root"),
        ("USER", "root"),
        ("LOGNAME", "root"),
        ("SHELL", "/bin/sh"),
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain(std::iter::once(("SSH_USER".to_string(), user.to_string())))
    .collect()
}

/// The argv (after `/bin/sh`) for an `exec` command or a login shell.
pub fn shell_args(command: Option<&str>) -> Vec<String> {
    match command {
        Some(command) => vec!["-c".into(), command.into()],
        None => vec!["-l".into()],
    }
}

/// The SSH `exit-status` for a finished process: its code, or 128 + signal like a shell.
pub fn exit_code(status: std::process::ExitStatus) -> u32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u32,
        (None, Some(signal)) => 128 + signal as u32,
        (None, None) => 255,
    }
}

fn signal_of(sig: &Sig) -> Option<nix::sys::signal::Signal> {
    use nix::sys::signal::Signal::*;
    Some(match sig {
        Sig::ABRT => SIGABRT,
        Sig::ALRM => SIGALRM,
        Sig::FPE => SIGFPE,
        Sig::HUP => SIGHUP,
        Sig::ILL => SIGILL,
        Sig::INT => SIGINT,
        Sig::KILL => SIGKILL,
        Sig::PIPE => SIGPIPE,
        Sig::QUIT => SIGQUIT,
        Sig::SEGV => SIGSEGV,
        Sig::TERM => SIGTERM,
        Sig::USR1 => SIGUSR1,
        Sig::Custom(_) => return None,
    })
}

/// What can go wrong with the host key.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    /// Reading, writing or encoding the key failed.
    #[error("host key {path}: {detail}")]
    Key {
        /// The key file.
        path: std::path::PathBuf,
        /// What failed.
        detail: String,
    },
}

/// Loads the ed25519 host key from `dir`, creating (and saving) one on first boot.
pub fn load_or_create_host_key(dir: &Path) -> Result<PrivateKey, HostKeyError> {
    let path = dir.join(HOST_KEY_FILE);
    let err = |detail: String| HostKeyError::Key {
        path: path.clone(),
        detail,
    };
    if let Ok(text) = std::fs::read_to_string(&path) {
        match PrivateKey::from_openssh(text) {
            Ok(key) => return Ok(key),
            Err(e) => tracing::warn!(
                "sshd: {} unreadable ({e}); making a new one",
                path.display()
            ),
        }
    }
    let seed: [u8; 32] = rand::random();
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| err(e.to_string()))?;
    crate::config::write_file(&path, pem.as_bytes(), 0o600).map_err(|e| err(e.to_string()))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| err(e.to_string()))?;
    crate::config::write_file(
        &dir.join(format!("{HOST_KEY_FILE}.pub")),
        format!("{public}\n").as_bytes(),
        0o644,
    )
    .map_err(|e| err(e.to_string()))?;
    Ok(key)
}

/// Starts the SSH server on `0.0.0.0:port`; runs until the process ends.
pub async fn start(
    host_key: PrivateKey,
    authorized: Vec<PublicKey>,
    port: u16,
) -> std::io::Result<()> {
    let config = russh::server::Config {
        keys: vec![host_key],
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        // OpenSSH probes with "none" first; answering it at once saves a second per login.
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(60)),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
    let mut server = Server {
        authorized: Arc::new(authorized),
    };
    tokio::spawn(async move {
        use russh::server::Server as _;
        if let Err(err) = server.run_on_socket(Arc::new(config), &listener).await {
            tracing::error!("sshd: stopped: {err}");
        }
    });
    Ok(())
}

struct Server {
    authorized: Arc<Vec<PublicKey>>,
}

impl russh::server::Server for Server {
    type Handler = Connection;

    fn new_client(&mut self, peer: Option<std::net::SocketAddr>) -> Connection {
        Connection {
            authorized: self.authorized.clone(),
            peer: peer.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
            user: String::new(),
        }
    }

    fn handle_session_error(&mut self, error: russh::Error) {
        tracing::debug!("sshd: session error: {error}");
    }
}

struct Connection {
    authorized: Arc<Vec<PublicKey>>,
    peer: String,
    user: String,
}

impl Connection {
    fn is_authorized(&self, key: &PublicKey) -> bool {
        self.authorized
            .iter()
            .any(|k| k.key_data() == key.key_data())
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.is_authorized(offer.public_key) {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.is_authorized(key.public_key) {
            tracing::info!("sshd: {user}@{} logged in", self.peer);
            self.user = user.to_owned();
            Ok(Auth::Accept)
        } else {
            tracing::warn!("sshd: key refused for {user}@{}", self.peer);
            Ok(Auth::reject())
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        let user = self.user.clone();
        tokio::spawn(run_channel(channel, user));
        Ok(())
    }

    // Separate from the session handlers: the host's port agent opens one channel per
    // forwarded connection (see `forward`).
    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        tokio::spawn(crate::forward::direct_tcpip(
            channel,
            host_to_connect.to_owned(),
            port_to_connect,
            reply,
        ));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pix_w: u32,
        _pix_h: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The channel's task serves the subsystem (see `run_channel`); this only answers.
        if name == "sftp" {
            return session.channel_success(channel);
        }
        tracing::info!("sshd: subsystem {name:?} is not supported");
        session.channel_failure(channel)?;
        session.close(channel)
    }
}

struct PtyRequest {
    term: String,
    cols: u16,
    rows: u16,
}

fn winsize(cols: u32, rows: u32) -> nix::pty::Winsize {
    nix::pty::Winsize {
        ws_row: rows.min(u16::MAX as u32) as u16,
        ws_col: cols.min(u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Drives one session channel from its first request to its close.
async fn run_channel(mut channel: Channel<Msg>, user: String) {
    let mut env = base_env(&user);
    let mut pty: Option<PtyRequest> = None;
    let command = loop {
        match channel.wait().await {
            None | Some(ChannelMsg::Close) => return,
            Some(ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            }) => env.push((variable_name, variable_value)),
            Some(ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                ..
            }) => {
                let size = winsize(col_width, row_height);
                pty = Some(PtyRequest {
                    term,
                    cols: size.ws_col,
                    rows: size.ws_row,
                })
            }
            Some(ChannelMsg::Exec { command, .. }) => {
                break Some(String::from_utf8_lossy(&command).into_owned())
            }
            Some(ChannelMsg::RequestShell { .. }) => break None,
            Some(ChannelMsg::RequestSubsystem { name, .. }) if name == "sftp" => {
                crate::sftp::serve(channel.into_stream(), "/root".into()).await;
                return;
            }
            Some(_) => {}
        }
    };
    let (mut rx, tx) = channel.split();
    let status = match pty {
        Some(pty) => run_pty(command.as_deref(), env, pty, &mut rx, &tx).await,
        None => run_piped(command.as_deref(), env, &mut rx, &tx).await,
    };
    let code = match status {
        Ok(code) => code,
        Err(err) => {
            tracing::warn!("sshd: cannot run session command: {err}");
            let _ = tx
                .extended_data(1, format!("rmachine-init: {err}\r\n").as_bytes())
                .await;
            127
        }
    };
    let _ = tx.exit_status(code).await;
    let _ = tx.eof().await;
    let _ = tx.close().await;
}

type WriteHalf = russh::ChannelWriteHalf<Msg>;

/// Runs a command with pipes (no PTY): stdout as data, stderr as extended data.
async fn run_piped(
    command: Option<&str>,
    env: Vec<(String, String)>,
    rx: &mut russh::ChannelReadHalf,
    tx: &WriteHalf,
) -> std::io::Result<u32> {
    let mut child = Command::new("/bin/sh")
        .args(shell_args(command))
        .env_clear()
        .envs(env)
        .current_dir("/root")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    // Its own group (pid = pgid), kept while the child may already be reaped.
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(nix::unistd::Pid::from_raw);
    let mut stdin = child.stdin.take();
    let mut pumps = tokio::task::JoinSet::new();
    if let Some(mut out) = child.stdout.take() {
        let mut writer = tx.make_writer();
        pumps.spawn(async move {
            let _ = tokio::io::copy(&mut out, &mut writer).await;
        });
    }
    if let Some(mut err) = child.stderr.take() {
        let mut writer = tx.make_writer_ext(Some(1));
        pumps.spawn(async move {
            let _ = tokio::io::copy(&mut err, &mut writer).await;
        });
    }
    // The channel ends when the command has exited and its output pipes are closed; a job it
    // left in the background that keeps them open holds the channel until the client closes
    // it, and is then hung up with the rest of the group.
    let mut exited = None;
    let status = loop {
        if pumps.is_empty() {
            if let Some(status) = exited {
                break status;
            }
        }
        tokio::select! {
            status = child.wait(), if exited.is_none() => exited = Some(status?),
            Some(_) = pumps.join_next(), if !pumps.is_empty() => {}
            msg = rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(pipe) = stdin.as_mut() {
                        if pipe.write_all(&data).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Some(ChannelMsg::Eof) => stdin = None,
                Some(ChannelMsg::Signal { signal }) => signal_group(child.id(), &signal),
                None | Some(ChannelMsg::Close) => {
                    drop(stdin.take());
                    break hang_up(&mut child, group, exited, &mut pumps, HANGUP_GRACE).await?;
                }
                Some(_) => {}
            },
        }
    };
    Ok(exit_code(status))
}

/// How long the processes of a closed channel get between SIGHUP and SIGKILL: shells and
/// editors save their work on SIGHUP.
const HANGUP_GRACE: Duration = Duration::from_secs(5);

/// Ends what a closed channel started as a hung-up terminal would: SIGHUP to its whole
/// process `group`, then, after `grace`, SIGKILL to whatever of the group is still there (a
/// job that ignores SIGHUP and keeps the output pipes open would otherwise hold the channel
/// for ever). Returns the command's status (`exited` if it was already reaped) once the
/// output pumps are done, or [`KILLED_DRAIN`] after the SIGKILL: a process outside the group
/// (one that called `setsid`) may hold the pipes for ever.
async fn hang_up(
    child: &mut tokio::process::Child,
    group: Option<nix::unistd::Pid>,
    exited: Option<std::process::ExitStatus>,
    pumps: &mut tokio::task::JoinSet<()>,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    use nix::sys::signal::Signal;
    let leader_start = group.and_then(start_time);
    if let Some(group) = group {
        signal_own_group(child, group, leader_start, Signal::SIGHUP);
    }
    let ended = tokio::time::timeout(grace, async {
        let status = match exited {
            Some(status) => status,
            None => child.wait().await?,
        };
        while pumps.join_next().await.is_some() {}
        Ok::<_, std::io::Error>(status)
    })
    .await;
    if let Ok(status) = ended {
        return status;
    }
    // Checked again: the leader may have been reaped during the grace period.
    if let Some(group) = group {
        signal_own_group(child, group, leader_start, Signal::SIGKILL);
    }
    let _ = child.start_kill();
    let status = match exited {
        Some(status) => status,
        None => child.wait().await?,
    };
    if tokio::time::timeout(KILLED_DRAIN, async {
        while pumps.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        pumps.abort_all();
    }
    Ok(status)
}

/// How long the output pumps may go on after the SIGKILL of a closed channel's group.
const KILLED_DRAIN: Duration = Duration::from_secs(1);

/// Sends `signal` to the process group the channel's command leads (pid = pgid), never to
/// another's. While `child` is not reaped its pid, hence the group's number, cannot be reused,
/// so the whole group is signalled. Once it is reaped, the number stays reserved while any
/// member lives, but an emptied group's number may have gone to a new process (another
/// channel's shell): then a process with pid == `group` exists, and is not ours (ours was
/// reaped), so nothing is signalled; otherwise only the members found in /proc with that
/// group and started no earlier than our leader (`leader_start`) are.
fn signal_own_group(
    child: &mut tokio::process::Child,
    group: nix::unistd::Pid,
    leader_start: Option<u64>,
    signal: nix::sys::signal::Signal,
) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = nix::sys::signal::killpg(group, signal);
        return;
    }
    for pid in reaped_group_members(group, leader_start) {
        let _ = nix::sys::signal::kill(pid, signal);
    }
}

/// The members of the group `group` whose leader has been reaped, by /proc: none if a
/// process with pid == `group` exists (a new process took the number), else those whose
/// process group is `group` and that started at or after `leader_start` (clock ticks since
/// boot, as /proc/PID/stat's field 22).
fn reaped_group_members(
    group: nix::unistd::Pid,
    leader_start: Option<u64>,
) -> Vec<nix::unistd::Pid> {
    if std::path::Path::new(&format!("/proc/{group}")).exists() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut members = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let pid = nix::unistd::Pid::from_raw(pid);
        let Some((pgrp, start)) = stat_fields(pid) else {
            continue;
        };
        if pgrp == group.as_raw() && leader_start.is_none_or(|ours| start >= ours) {
            members.push(pid);
        }
    }
    members
}

/// A process's start time (clock ticks since boot).
fn start_time(pid: nix::unistd::Pid) -> Option<u64> {
    stat_fields(pid).map(|(_, start)| start)
}

/// A process's group and start time, from /proc/PID/stat (fields 5 and 22; the command name,
/// field 2, may hold spaces and parentheses, so the fields are counted after its last `)`).
fn stat_fields(pid: nix::unistd::Pid) -> Option<(i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    Some((fields.get(2)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

fn signal_group(pid: Option<u32>, sig: &Sig) {
    if let (Some(pid), Some(signal)) = (pid, signal_of(sig)) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), signal);
    }
}

/// Runs a command or login shell on a new PTY.
async fn run_pty(
    command: Option<&str>,
    mut env: Vec<(String, String)>,
    request: PtyRequest,
    rx: &mut russh::ChannelReadHalf,
    tx: &WriteHalf,
) -> std::io::Result<u32> {
    let size = winsize(request.cols.into(), request.rows.into());
    let pty = nix::pty::openpty(Some(&size), None).map_err(std::io::Error::from)?;
    env.push(("TERM".into(), request.term));
    let mut cmd = Command::new("/bin/sh");
    cmd.args(shell_args(command))
        .env_clear()
        .envs(env)
        .current_dir("/root")
        .stdin(Stdio::from(pty.slave.try_clone()?))
        .stdout(Stdio::from(pty.slave.try_clone()?))
        .stderr(Stdio::from(pty.slave))
        .kill_on_drop(true);
    // SAFETY: setsid and ioctl are async-signal-safe, as pre_exec requires; fd 0 is the PTY
    // slave at this point, which becomes the new session's controlling terminal.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    // Drop our copies of the slave (inside `cmd`) so reads see EIO once the shell exits.
    drop(cmd);
    let master = nonblocking(pty.master)?;
    // SAFETY: an OwnedFd is a valid open descriptor that keeps returning the same fd until the
    // AsyncFd that owns it is dropped.
    let master = unsafe { AsyncFd::register(master) }.map_err(std::io::Error::from)?;
    let mut buf = vec![0u8; 16 * 1024];
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            readable = master.readable() => {
                let mut guard = readable?;
                match guard.try_io(|fd| read_fd(fd.get_ref(), &mut buf)) {
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        // EIO: every slave is closed; the shell is about to be reaped.
                        break child.wait().await?;
                    }
                    Ok(Ok(n)) => {
                        if tx.data(&buf[..n]).await.is_err() {
                            let _ = child.start_kill();
                        }
                    }
                    Err(_would_block) => {}
                }
            }
            msg = rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => write_all(&master, &data).await?,
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    let size = winsize(col_width, row_height);
                    // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which
                    // points at a live local of exactly that type.
                    unsafe {
                        libc::ioctl(master.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &size);
                    }
                }
                Some(ChannelMsg::Signal { signal }) => signal_group(child.id(), &signal),
                None | Some(ChannelMsg::Close) => {
                    // The shell leads its own session (setsid): its pid is its group's.
                    let group = child
                        .id()
                        .and_then(|pid| i32::try_from(pid).ok())
                        .map(nix::unistd::Pid::from_raw);
                    let mut no_pumps = tokio::task::JoinSet::new();
                    break hang_up(&mut child, group, None, &mut no_pumps, HANGUP_GRACE).await?;
                }
                Some(_) => {}
            },
        }
    };
    // Output written just before exit is still in the PTY buffer.
    loop {
        match read_fd(master.get_ref(), &mut buf) {
            Ok(n) if n > 0 => {
                if tx.data(&buf[..n]).await.is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
    Ok(exit_code(status))
}

fn nonblocking(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    fcntl(
        &fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(std::io::Error::from)?;
    Ok(fd)
}

fn read_fd(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    nix::unistd::read(fd, buf).map_err(std::io::Error::from)
}

async fn write_all(master: &AsyncFd<OwnedFd>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = master.writable().await?;
        match guard
            .try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from))
        {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(err)) => return Err(err),
            Err(_would_block) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed channel whose output is held by a process outside the group (it called
    /// `setsid`) ends shortly after the SIGKILL rather than never.
    #[tokio::test]
    async fn pipes_held_outside_the_group_do_not_hold_the_channel_after_the_kill() {
        let mut child = Command::new("/bin/sh")
            .args(["-c", "trap '' HUP; exec sleep 30"])
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let group = child.id().map(|pid| nix::unistd::Pid::from_raw(pid as i32));
        let mut pumps = tokio::task::JoinSet::new();
        pumps.spawn(std::future::pending::<()>());
        let started = std::time::Instant::now();
        let status = tokio::time::timeout(
            Duration::from_secs(10),
            hang_up(
                &mut child,
                group,
                None,
                &mut pumps,
                Duration::from_millis(100),
            ),
        )
        .await
        .expect("hang_up returned")
        .unwrap();
        assert!(!status.success());
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(pumps.is_empty() || pumps.join_next().await.is_some_and(|r| r.is_err()));
    }

    /// Once the leader is reaped, a process whose pid is the group's number is a new one (the
    /// number was reused): it is left alone. Members of our group still there are found.
    #[tokio::test]
    async fn a_reaped_leader_s_group_number_reused_is_left_alone() {
        use tokio::io::AsyncReadExt as _;
        // A new group leader standing for a process that took the number.
        let mut other = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let number = nix::unistd::Pid::from_raw(other.id().unwrap() as i32);
        assert!(reaped_group_members(number, None).is_empty());
        // Our leader reaped, its background job still in the group.
        let mut ours = Command::new("/bin/sh")
            .args(["-c", "sleep 30 >/dev/null 2>&1 & echo $!"])
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let group = nix::unistd::Pid::from_raw(ours.id().unwrap() as i32);
        let start = start_time(group);
        let mut out = String::new();
        ours.stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        ours.wait().await.unwrap();
        let job = nix::unistd::Pid::from_raw(out.trim().parse().unwrap());
        assert_eq!(reaped_group_members(group, start), vec![job]);
        signal_own_group(&mut ours, group, start, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(job, None);
        other.start_kill().unwrap();
        let _ = other.wait().await;
    }

    #[test]
    fn exec_runs_through_sh_c_and_shell_is_a_login_shell() {
        assert_eq!(shell_args(Some("exit 7")), ["-c", "exit 7"]);
        assert_eq!(shell_args(None), ["-l"]);
    }

    #[test]
    fn exit_codes_pass_through_and_signals_map_like_a_shell() {
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(9)), 137);
    }

    #[test]
    fn host_key_is_created_once_and_reused() {
        let dir =
            std::env::temp_dir().join(format!("rmachine-init-hostkey-{}", std::process::id()));
        let first = load_or_create_host_key(&dir).expect("temp dir is writable");
        let second = load_or_create_host_key(&dir).expect("key was just written");
        assert_eq!(first.public_key(), second.public_key());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join(HOST_KEY_FILE))
                .expect("key was just written")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert!(dir.join("ssh_host_ed25519_key.pub").exists());
        std::fs::remove_dir_all(&dir).ok();
    }
}
