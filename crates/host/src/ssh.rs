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
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};
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

struct AcceptAnyHostKey;

impl russh::client::Handler for AcceptAnyHostKey {
    type Error = russh::Error;

    // The guest makes its host key on first boot and nothing carries it to the host yet, so
    // there is nothing to check against. The forward is bound to 127.0.0.1 and the session is
    // authenticated by our key. TODO: pin the key on first contact (or have the host write it
    // to the configuration drive) and check it here.
    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// An authenticated SSH session to one machine.
pub struct SshSession {
    addr: SocketAddr,
    handle: russh::client::Handle<AcceptAnyHostKey>,
}

impl SshSession {
    /// Connects to `addr` and logs in as [`SSH_USER`] with the key at `key_path`.
    pub async fn connect(addr: SocketAddr, key_path: &Path) -> Result<Self, SshError> {
        let key = load_key(key_path)?;
        let config = Arc::new(russh::client::Config {
            keepalive_interval: Some(Duration::from_secs(30)),
            nodelay: true,
            ..Default::default()
        });
        let proto = |source| SshError::Protocol { addr, source };
        let mut handle = russh::client::connect(config, addr, AcceptAnyHostKey)
            .await
            .map_err(proto)?;
        let auth = handle
            .authenticate_publickey(SSH_USER, PrivateKeyWithHashAlg::new(Arc::new(key), None))
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
        let line = std::fs::read_to_string(authorized).unwrap();
        let key = russh::keys::PublicKey::from_openssh(line.trim()).unwrap();
        let host_key = PrivateKey::from(Ed25519Keypair::from_seed(&[7u8; 32]));
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
