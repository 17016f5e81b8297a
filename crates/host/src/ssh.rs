//! SSH: each machine's key pair and a client for `rmachine ssh`.
//!
//! `create` makes an ed25519 key (`machines/NAME/id_ed25519`, OpenSSH format, 0600) whose
//! public half reaches the guest through the configuration drive. The client (russh) runs one
//! command with the remote stdout/stderr streamed to ours, or an interactive shell on a PTY with
//! the local terminal in raw mode; both return the remote exit status.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::ChannelMsg;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::store::{write_atomic, StoreError};

/// The user rmachine logs in as (the guest has no other).
pub const SSH_USER: &str = "root";

/// What can go wrong with keys or an SSH session.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// A key could not be encoded or decoded.
    #[error("ssh key {path} is invalid")]
    Key {
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: russh::keys::Error,
    },
    /// A key could not be encoded.
    #[error("cannot encode ssh key {path}")]
    Encode {
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: russh::keys::ssh_key::Error,
    },
    /// Writing a key failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The guest showed a host key other than the pinned one.
    #[error("ssh to {addr}: the guest's host key changed: it shows {shown}, but {path} pins {pinned}. If the machine's data disk was replaced on purpose, delete {path} to trust the new key; otherwise something else answers on this address")]
    HostKeyChanged {
        /// The server.
        addr: SocketAddr,
        /// The pin file.
        path: PathBuf,
        /// Fingerprint of the pinned key.
        pinned: String,
        /// Fingerprint of the key the server showed.
        shown: String,
    },
    /// The pin file is not an OpenSSH public key.
    #[error("pinned ssh host key {path} is invalid; delete it to pin the guest's current key")]
    PinnedKey {
        /// The pin file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: russh::keys::ssh_key::Error,
    },
    /// The SSH connection or protocol failed.
    #[error("ssh to {addr} failed")]
    Protocol {
        /// The server.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: russh::Error,
    },
    /// The server refused the machine's key.
    #[error("ssh to {addr}: the guest refused key {key}")]
    AuthRejected {
        /// The server.
        addr: SocketAddr,
        /// The key offered.
        key: PathBuf,
    },
    /// The session ended without an exit status.
    #[error("ssh to {addr}: the session closed without an exit status")]
    NoExitStatus {
        /// The server.
        addr: SocketAddr,
    },
    /// The guest's SSH server has no `sftp` subsystem (a guest image older than it).
    #[error("ssh to {addr}: the guest has no sftp subsystem")]
    NoSftp {
        /// The server.
        addr: SocketAddr,
    },
    /// The SFTP handshake failed.
    #[error("ssh to {addr}: the sftp handshake failed")]
    SftpHandshake {
        /// The server.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: russh_sftp::client::error::Error,
    },
    /// Local terminal or stdio failure.
    #[error("ssh to {addr}: local terminal i/o failed")]
    Terminal {
        /// The server.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Makes `machines/NAME/id_ed25519` and `id_ed25519.pub`; returns the `authorized_keys` line.
pub fn generate_key(path: &Path, comment: &str) -> Result<String, SshError> {
    let seed: [u8; 32] = rand::random();
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    let private = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|source| SshError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|source| SshError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
    write_atomic(path, private.as_bytes(), true)?;
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    write_atomic(
        Path::new(&pub_path),
        format!("{public}\n").as_bytes(),
        false,
    )?;
    Ok(public)
}

/// Reads the `authorized_keys` line of an existing key pair.
pub fn public_key_line(path: &Path) -> Result<String, SshError> {
    let key = load_key(path)?;
    key.public_key()
        .to_openssh()
        .map_err(|source| SshError::Encode {
            path: path.to_path_buf(),
            source,
        })
}

fn load_key(path: &Path) -> Result<PrivateKey, SshError> {
    russh::keys::load_secret_key(path, None).map_err(|source| SshError::Key {
        path: path.to_path_buf(),
        source,
    })
}

/// The file beside a machine's SSH key that pins its guest's host key (an OpenSSH public-key
/// line), written on first contact (at `create`) and checked on every connection after.
pub const PINNED_HOST_KEY_FILE: &str = "guest_host_key.pub";

/// Where the host key of the guest reached with `key_path` is pinned.
pub fn pinned_host_key_path(key_path: &Path) -> PathBuf {
    key_path.with_file_name(PINNED_HOST_KEY_FILE)
}

/// The file, beside a machine's SSH key, that the system `ssh` checks the guest's host key
/// against (one `known_hosts` line for [`host_key_alias`], made from the pin).
pub const KNOWN_HOSTS_FILE: &str = "known_hosts";

/// The name the system `ssh` files the guest's host key under (ports change between starts).
pub fn host_key_alias(machine: &str) -> String {
    format!("rmachine-{machine}")
}

/// Writes the `known_hosts` file for the system `ssh` from the pinned host key beside
/// `key_path`; fails if nothing is pinned yet.
pub fn write_known_hosts(key_path: &Path, machine: &str) -> Result<PathBuf, SshError> {
    let pin = pinned_host_key_path(key_path);
    let line = std::fs::read_to_string(&pin).map_err(|source| StoreError::Io {
        path: pin.clone(),
        source,
    })?;
    let path = key_path.with_file_name(KNOWN_HOSTS_FILE);
    write_atomic(
        &path,
        format!("{} {}\n", host_key_alias(machine), line.trim()).as_bytes(),
        false,
    )?;
    Ok(path)
}

/// The argv of the system `ssh` logging into a machine, as docker-machine's external client
/// built it (`libmachine/ssh/client.go`): its base options, the destination, the key and the
/// port, then `extra` — further ssh options, then the command — which OpenSSH still parses
/// after the destination. Unlike docker-machine, the host key is checked, against the pin.
pub fn system_ssh_argv(
    addr: SocketAddr,
    user: &str,
    key_path: &Path,
    known_hosts: &Path,
    machine: &str,
    extra: &[String],
) -> Vec<String> {
    let no_config = if cfg!(windows) { "NUL" } else { "/dev/null" };
    let mut argv: Vec<String> = vec!["ssh".into(), "-F".into(), no_config.into()];
    for option in [
        "ConnectionAttempts=3".to_owned(),
        "ConnectTimeout=10".to_owned(),
        "ControlMaster=no".to_owned(),
        "ControlPath=none".to_owned(),
        // docker-machine used "quiet", which would also hide a changed host key.
        "LogLevel=error".to_owned(),
        "PasswordAuthentication=no".to_owned(),
        "ServerAliveInterval=60".to_owned(),
        "StrictHostKeyChecking=yes".to_owned(),
        format!("UserKnownHostsFile=\"{}\"", known_hosts.display()),
        format!("HostKeyAlias={}", host_key_alias(machine)),
    ] {
        argv.push("-o".into());
        argv.push(option);
    }
    argv.push(format!("{user}@{}", addr.ip()));
    argv.extend([
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-i".into(),
        key_path.display().to_string(),
        "-p".into(),
        addr.port().to_string(),
    ]);
    argv.extend(extra.iter().cloned());
    argv
}

/// The argv of `sshfs` mounting `path` of a machine on `mountpoint`, as docker-machine's
/// `mount` built it (`commands/mount.go`), with the host key checked against the pin as for
/// [`system_ssh_argv`]. sshfs speaks SFTP to the guest's `sftp` subsystem.
pub fn sshfs_argv(
    addr: SocketAddr,
    user: &str,
    key_path: &Path,
    known_hosts: &Path,
    machine: &str,
    path: &str,
    mountpoint: &str,
) -> Vec<String> {
    let mut argv = vec!["sshfs".to_owned()];
    for option in [
        "StrictHostKeyChecking=yes".to_owned(),
        format!("UserKnownHostsFile=\"{}\"", known_hosts.display()),
        format!("HostKeyAlias={}", host_key_alias(machine)),
        "LogLevel=error".to_owned(),
        "IdentitiesOnly=yes".to_owned(),
        format!("Port={}", addr.port()),
        format!("IdentityFile=\"{}\"", key_path.display()),
    ] {
        argv.push("-o".into());
        argv.push(option);
    }
    argv.push(format!("{user}@{}:{path}", addr.ip()));
    argv.push(mountpoint.to_owned());
    argv
}

/// Accepts the pinned host key only (any key when none is pinned yet), and remembers the key
/// the server showed so that the caller can pin it or name it in an error.
struct PinnedHostKey {
    pinned: Option<PublicKey>,
    seen: Arc<std::sync::Mutex<Option<PublicKey>>>,
}

impl russh::client::Handler for PinnedHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // The guest presents a plain ed25519 key, never a certificate.
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = offered else {
            return Ok(false);
        };
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(key.clone());
        }
        Ok(match &self.pinned {
            Some(pinned) => pinned.key_data() == key.key_data(),
            None => true,
        })
    }
}

fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(russh::keys::HashAlg::Sha256).to_string()
}

fn read_pinned(path: &Path) -> Result<Option<PublicKey>, SshError> {
    match std::fs::read_to_string(path) {
        Ok(text) => PublicKey::from_openssh(text.trim())
            .map(Some)
            .map_err(|source| SshError::PinnedKey {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SshError::Store(StoreError::Io {
            path: path.to_path_buf(),
            source,
        })),
    }
}

/// An authenticated SSH session to one machine.
pub struct SshSession {
    addr: SocketAddr,
    handle: russh::client::Handle<PinnedHostKey>,
}

impl SshSession {
    /// Connects to `addr` and logs in as [`SSH_USER`] with the key at `key_path`. The guest's
    /// host key must be the one pinned beside that key ([`pinned_host_key_path`]); the first
    /// connection pins it.
    pub async fn connect(addr: SocketAddr, key_path: &Path) -> Result<Self, SshError> {
        Self::connect_as(addr, SSH_USER, key_path).await
    }

    /// [`SshSession::connect`] logging in as `user` (a generic machine's chosen user).
    pub async fn connect_as(
        addr: SocketAddr,
        user: &str,
        key_path: &Path,
    ) -> Result<Self, SshError> {
        let key = load_key(key_path)?;
        let pin_path = pinned_host_key_path(key_path);
        let pinned = read_pinned(&pin_path)?;
        let seen = Arc::new(std::sync::Mutex::new(None));
        let checker = PinnedHostKey {
            pinned: pinned.clone(),
            seen: seen.clone(),
        };
        let config = Arc::new(russh::client::Config {
            keepalive_interval: Some(Duration::from_secs(30)),
            nodelay: true,
            ..Default::default()
        });
        let proto = |source| SshError::Protocol { addr, source };
        let shown = || seen.lock().ok().and_then(|mut s| s.take());
        let mut handle = match russh::client::connect(config, addr, checker).await {
            Ok(handle) => handle,
            Err(russh::Error::UnknownKey) => {
                return Err(SshError::HostKeyChanged {
                    addr,
                    path: pin_path,
                    pinned: pinned.as_ref().map(fingerprint).unwrap_or_default(),
                    shown: shown().as_ref().map(fingerprint).unwrap_or_default(),
                })
            }
            Err(source) => return Err(proto(source)),
        };
        if pinned.is_none() {
            if let Some(key) = shown() {
                let line = key.to_openssh().map_err(|source| SshError::Encode {
                    path: pin_path.clone(),
                    source,
                })?;
                write_atomic(&pin_path, format!("{line}\n").as_bytes(), false)?;
                tracing::info!(path = %pin_path.display(), fingerprint = %fingerprint(&key), "pinned the guest's ssh host key");
            }
        }
        let auth = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), None))
            .await
            .map_err(proto)?;
        if !auth.success() {
            return Err(SshError::AuthRejected {
                addr,
                key: key_path.to_path_buf(),
            });
        }
        Ok(Self { addr, handle })
    }

    /// Runs `command`, streaming its stdout and stderr to ours and our stdin to it (when
    /// `forward_stdin`); returns its exit status (128+N for a signal, like a shell).
    pub async fn run(&self, command: &str, forward_stdin: bool) -> Result<u32, SshError> {
        let stdin = forward_stdin.then(tokio::io::stdin);
        self.run_with(command, stdin, tokio::io::stdout(), tokio::io::stderr())
            .await
    }

    /// [`run`](Self::run) with explicit streams: `stdin` (if any) is sent to the command,
    /// its stdout and stderr are written to `stdout` and `stderr`.
    pub async fn run_with<I, O, E>(
        &self,
        command: &str,
        mut stdin: Option<I>,
        mut stdout: O,
        mut stderr: E,
    ) -> Result<u32, SshError>
    where
        I: AsyncRead + Unpin,
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let addr = self.addr;
        let proto = |source| SshError::Protocol { addr, source };
        let term = |source| SshError::Terminal { addr, source };
        let mut channel = self.handle.channel_open_session().await.map_err(proto)?;
        channel.exec(true, command).await.map_err(proto)?;
        let mut buf = vec![0u8; 16 * 1024];
        if stdin.is_none() {
            channel.eof().await.map_err(proto)?;
        }
        let mut status = None;
        loop {
            let read = async {
                match stdin.as_mut() {
                    Some(input) => input.read(&mut buf).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                read = read => {
                    match read.map_err(term)? {
                        0 => {
                            stdin = None;
                            channel.eof().await.map_err(proto)?;
                        }
                        n => channel.data_bytes(buf[..n].to_vec()).await.map_err(proto)?,
                    }
                }
                msg = channel.wait() => match msg {
                    Some(ChannelMsg::Data { data }) => {
                        stdout.write_all(&data).await.map_err(term)?;
                        stdout.flush().await.map_err(term)?;
                    }
                    Some(ChannelMsg::ExtendedData { data, .. }) => {
                        stderr.write_all(&data).await.map_err(term)?;
                        stderr.flush().await.map_err(term)?;
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(exit_status),
                    Some(ChannelMsg::ExitSignal { .. }) => status = status.or(Some(128 + 15)),
                    Some(_) => {}
                    None => break,
                }
            }
        }
        status.ok_or(SshError::NoExitStatus { addr })
    }

    /// Opens an interactive shell on a PTY sized like our terminal, with our terminal in raw
    /// mode (restored on every exit path); returns the shell's exit status.
    pub async fn shell(&self) -> Result<u32, SshError> {
        let addr = self.addr;
        let proto = |source| SshError::Protocol { addr, source };
        let term = |source| SshError::Terminal { addr, source };
        // Like OpenSSH: no PTY and no raw mode when our stdin is not a terminal (`echo ls |
        // rmachine ssh NAME`), so the remote shell reads commands line by line.
        let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
        let mut channel = self.handle.channel_open_session().await.map_err(proto)?;
        if interactive {
            let (cols, rows) = crossterm::terminal::size().unwrap_or((80, 24));
            let term_name = std::env::var("TERM").unwrap_or_else(|_| "xterm".to_string());
            channel
                .request_pty(
                    true,
                    &term_name,
                    u32::from(cols),
                    u32::from(rows),
                    0,
                    0,
                    &[],
                )
                .await
                .map_err(proto)?;
        }
        channel.request_shell(true).await.map_err(proto)?;

        let _raw = if interactive {
            Some(RawMode::enable().map_err(term)?)
        } else {
            None
        };
        let mut stdout = tokio::io::stdout();
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 4096];
        let mut stdin_open = true;
        let mut status = None;
        #[cfg(unix)]
        let mut winch =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                .map_err(term)?;
        loop {
            #[cfg(unix)]
            let resized = winch.recv();
            #[cfg(not(unix))]
            let resized = std::future::pending::<Option<()>>();
            tokio::select! {
                read = stdin.read(&mut buf), if stdin_open => {
                    match read.map_err(term)? {
                        0 => {
                            stdin_open = false;
                            channel.eof().await.map_err(proto)?;
                        }
                        n => channel.data_bytes(buf[..n].to_vec()).await.map_err(proto)?,
                    }
                }
                _ = resized => {
                    if let Ok((cols, rows)) = crossterm::terminal::size() {
                        channel
                            .window_change(u32::from(cols), u32::from(rows), 0, 0)
                            .await
                            .map_err(proto)?;
                    }
                }
                msg = channel.wait() => match msg {
                    Some(ChannelMsg::Data { data }) | Some(ChannelMsg::ExtendedData { data, .. }) => {
                        stdout.write_all(&data).await.map_err(term)?;
                        stdout.flush().await.map_err(term)?;
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(exit_status),
                    Some(ChannelMsg::ExitSignal { .. }) => status = status.or(Some(128 + 15)),
                    Some(_) => {}
                    None => break,
                }
            }
        }
        status.ok_or(SshError::NoExitStatus { addr })
    }

    /// Opens an SFTP session on a new channel (the guest's `sftp` subsystem).
    pub async fn sftp(&self) -> Result<russh_sftp::client::SftpSession, SshError> {
        let addr = self.addr;
        let proto = |source| SshError::Protocol { addr, source };
        let mut channel = self.handle.channel_open_session().await.map_err(proto)?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(proto)?;
        // Wait for the answer: a guest image older than the subsystem refuses it, and SFTP's
        // handshake would otherwise fail with a less useful message.
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Success) => break,
                Some(ChannelMsg::Failure) | Some(ChannelMsg::Close) | None => {
                    return Err(SshError::NoSftp { addr })
                }
                Some(_) => {}
            }
        }
        russh_sftp::client::SftpSession::new(channel.into_stream())
            .await
            .map_err(|source| SshError::SftpHandshake { addr, source })
    }

    /// Opens a `direct-tcpip` channel to the guest's `127.0.0.1:port` (RFC 4254 §7.2), as a
    /// byte stream; `originator` is the client the connection comes from, for the guest's logs.
    pub async fn direct_tcpip(
        &self,
        port: u16,
        originator: SocketAddr,
    ) -> Result<russh::ChannelStream<russh::client::Msg>, SshError> {
        let addr = self.addr;
        let channel = self
            .handle
            .channel_open_direct_tcpip(
                "127.0.0.1",
                u32::from(port),
                originator.ip().to_string(),
                u32::from(originator.port()),
            )
            .await
            .map_err(|source| SshError::Protocol { addr, source })?;
        Ok(channel.into_stream())
    }

    /// Starts `command` on a session channel and hands the channel over (its data is the
    /// command's stdin and stdout), for long-lived protocol streams such as the UDP relay.
    pub async fn exec_channel(
        &self,
        command: &str,
    ) -> Result<russh::Channel<russh::client::Msg>, SshError> {
        let addr = self.addr;
        let proto = |source| SshError::Protocol { addr, source };
        let channel = self.handle.channel_open_session().await.map_err(proto)?;
        channel.exec(true, command).await.map_err(proto)?;
        Ok(channel)
    }

    /// Whether the connection has ended (the guest went away or the transport failed).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Closes the session politely.
    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// The local terminal in raw mode; dropping it (also on error paths and panics) restores it.
struct RawMode;

impl RawMode {
    fn enable() -> std::io::Result<Self> {
        crossterm::terminal::enable_raw_mode()?;
        Ok(Self)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::server::{Auth, Msg, Session, VerifiedPublicKey};
    use russh::{Channel, ChannelId};

    /// A tiny SSH server: accepts one public key; `exit N` exits with N after printing to
    /// stdout and stderr; `cat` echoes its input until EOF.
    #[derive(Clone)]
    struct TestServer {
        key: russh::keys::PublicKey,
        cat: Option<ChannelId>,
    }

    impl russh::server::Handler for TestServer {
        type Error = russh::Error;

        async fn auth_publickey(
            &mut self,
            _user: &str,
            key: VerifiedPublicKey<'_>,
        ) -> Result<Auth, Self::Error> {
            Ok(if key.public_key.key_data() == self.key.key_data() {
                Auth::Accept
            } else {
                Auth::reject()
            })
        }

        async fn channel_open_session(
            &mut self,
            _channel: Channel<Msg>,
            reply: russh::server::ChannelOpenHandle,
            _session: &mut Session,
        ) -> Result<(), Self::Error> {
            reply.accept().await;
            Ok(())
        }

        async fn exec_request(
            &mut self,
            channel: ChannelId,
            data: &[u8],
            session: &mut Session,
        ) -> Result<(), Self::Error> {
            session.channel_success(channel)?;
            let command = String::from_utf8_lossy(data).into_owned();
            if command == "cat" {
                self.cat = Some(channel);
                return Ok(());
            }
            let code = command
                .strip_prefix("exit ")
                .and_then(|n| n.parse().ok())
                .unwrap_or(127);
            session.data(channel, format!("ran {command}\n").into_bytes())?;
            session.extended_data(channel, 1, b"to stderr\n".to_vec())?;
            session.exit_status_request(channel, code)?;
            session.eof(channel)?;
            session.close(channel)
        }

        async fn data(
            &mut self,
            channel: ChannelId,
            data: &[u8],
            session: &mut Session,
        ) -> Result<(), Self::Error> {
            if self.cat == Some(channel) {
                session.data(channel, data.to_vec())?;
            }
            Ok(())
        }

        async fn channel_eof(
            &mut self,
            channel: ChannelId,
            session: &mut Session,
        ) -> Result<(), Self::Error> {
            if self.cat == Some(channel) {
                session.exit_status_request(channel, 0)?;
                session.eof(channel)?;
                session.close(channel)?;
            }
            Ok(())
        }
    }

    async fn serve(authorized: &Path) -> SocketAddr {
        serve_as(authorized, 7).await
    }

    /// A server whose host key is made from `seed`.
    async fn serve_as(authorized: &Path, seed: u8) -> SocketAddr {
        let line = std::fs::read_to_string(authorized).unwrap();
        let key = russh::keys::PublicKey::from_openssh(line.trim()).unwrap();
        let host_key = PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]));
        let config = Arc::new(russh::server::Config {
            keys: vec![host_key],
            auth_rejection_time: Duration::from_millis(10),
            ..Default::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let handler = TestServer {
                    key: key.clone(),
                    cat: None,
                };
                let config = config.clone();
                tokio::spawn(async move {
                    if let Ok(session) = russh::server::run_stream(config, tcp, handler).await {
                        let _ = session.await;
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn run_streams_output_and_returns_the_exit_status() {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("id_ed25519");
        generate_key(&key, "t").unwrap();
        let addr = serve(&tmp.path().join("id_ed25519.pub")).await;
        let session = SshSession::connect(addr, &key).await.unwrap();

        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = session
            .run_with("exit 7", None::<&[u8]>, &mut out, &mut err)
            .await
            .unwrap();
        assert_eq!(code, 7);
        assert_eq!(out, b"ran exit 7\n");
        assert_eq!(err, b"to stderr\n");

        let mut out = Vec::new();
        let input: &[u8] = b"hello through stdin\n";
        let code = session
            .run_with("cat", Some(input), &mut out, Vec::new())
            .await
            .unwrap();
        assert_eq!((code, out.as_slice()), (0, input));
        session.close().await;

        // Another key is refused.
        let other = tmp.path().join("other");
        generate_key(&other, "o").unwrap();
        let err = SshSession::connect(addr, &other).await.err().unwrap();
        assert!(matches!(err, SshError::AuthRejected { .. }), "{err}");
    }

    #[tokio::test]
    async fn the_first_host_key_is_pinned_and_a_changed_one_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("id_ed25519");
        generate_key(&key, "t").unwrap();
        let authorized = tmp.path().join("id_ed25519.pub");
        let pin = tmp.path().join(PINNED_HOST_KEY_FILE);

        let first = serve_as(&authorized, 7).await;
        SshSession::connect(first, &key)
            .await
            .unwrap()
            .close()
            .await;
        let pinned = std::fs::read_to_string(&pin).expect("pinned at first contact");
        assert!(pinned.starts_with("ssh-ed25519 "), "{pinned}");
        SshSession::connect(first, &key)
            .await
            .unwrap()
            .close()
            .await;

        let impostor = serve_as(&authorized, 8).await;
        let err = SshSession::connect(impostor, &key).await.err().unwrap();
        let text = err.to_string();
        assert!(matches!(err, SshError::HostKeyChanged { .. }), "{text}");
        assert!(
            text.contains("the guest's host key changed: it shows SHA256:")
                && text.contains(&format!("delete {}", pin.display())),
            "{text}"
        );
        assert_eq!(
            std::fs::read_to_string(&pin).unwrap(),
            pinned,
            "the pin stays"
        );

        std::fs::remove_file(&pin).unwrap();
        SshSession::connect(impostor, &key)
            .await
            .unwrap()
            .close()
            .await;
        assert_ne!(std::fs::read_to_string(&pin).unwrap(), pinned);
    }

    /// The system `ssh`, with the argv rmachine builds, logs in, checks the pinned key, and
    /// takes ssh options after the destination as docker-machine's external client did.
    #[tokio::test]
    async fn system_ssh_argv_works_with_openssh() {
        if std::process::Command::new("ssh")
            .arg("-V")
            .output()
            .is_err()
        {
            panic!("this test needs OpenSSH's ssh on PATH");
        }
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("id_ed25519");
        generate_key(&key, "t").unwrap();
        let addr = serve(&tmp.path().join("id_ed25519.pub")).await;
        SshSession::connect(addr, &key).await.unwrap().close().await;
        let known_hosts = write_known_hosts(&key, "m1").unwrap();
        // The server runs on this runtime: the blocking ssh goes to another thread.
        let run = |extra: &[&str]| {
            let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            let argv = system_ssh_argv(addr, SSH_USER, &key, &known_hosts, "m1", &extra);
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .stdin(std::process::Stdio::null())
                    .output()
                    .unwrap()
            })
        };
        let out = run(&["-C", "exit", "3"]).await.unwrap();
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ran exit 3\n");

        // A different pinned key: OpenSSH refuses.
        let other = PrivateKey::from(Ed25519Keypair::from_seed(&[9u8; 32]));
        std::fs::write(
            &known_hosts,
            format!("rmachine-m1 {}\n", other.public_key().to_openssh().unwrap()),
        )
        .unwrap();
        let out = run(&["exit", "0"]).await.unwrap();
        assert_eq!(out.status.code(), Some(255));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Host key verification failed"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// sshfs, with the argv rmachine builds, mounts a directory through the guest's real SSH
    /// server and its sftp subsystem.
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread")]
    async fn sshfs_mounts_through_the_guests_sftp_server() {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("id_ed25519");
        let line = generate_key(&key, "t").unwrap();
        let authorized = PublicKey::from_openssh(&line).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host_key = PrivateKey::from(Ed25519Keypair::from_seed(&[5u8; 32]));
        rmachine_init::sshd::start(host_key, vec![authorized], port)
            .await
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        SshSession::connect(addr, &key).await.unwrap().close().await;
        let known_hosts = write_known_hosts(&key, "m1").unwrap();

        let shared = tmp.path().join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::write(shared.join("hello.txt"), "hi from the guest\n").unwrap();
        let mountpoint = tmp.path().join("mnt");
        std::fs::create_dir_all(&mountpoint).unwrap();
        let argv = sshfs_argv(
            addr,
            SSH_USER,
            &key,
            &known_hosts,
            "m1",
            &shared.to_string_lossy(),
            &mountpoint.to_string_lossy(),
        );
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .output()
                .expect("sshfs runs (apt-get install sshfs)")
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read = std::fs::read_to_string(mountpoint.join("hello.txt"));
        let mnt = mountpoint.clone();
        let _ = tokio::task::spawn_blocking(move || {
            std::process::Command::new("fusermount")
                .arg("-u")
                .arg(&mnt)
                .status()
        })
        .await;
        assert_eq!(read.unwrap(), "hi from the guest\n");
    }

    #[test]
    fn generated_key_is_openssh_ed25519_and_private() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("id_ed25519");
        let line = generate_key(&path, "rmachine-intro").unwrap();
        assert!(line.starts_with("ssh-ed25519 AAAA"), "{line}");
        assert!(line.ends_with(" rmachine-intro"), "{line}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
        assert_eq!(public_key_line(&path).unwrap(), line);
        let pub_text = std::fs::read_to_string(tmp.path().join("id_ed25519.pub")).unwrap();
        assert_eq!(pub_text, format!("{line}\n"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
