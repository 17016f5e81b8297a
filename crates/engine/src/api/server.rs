//! Listeners: unix sockets (mode 0660) and TCP with mutual TLS.
//!
//! A TCP listener without client-certificate verification is refused at configuration time:
//! the engine has exactly one way in over the network, mutual TLS.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::Api;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Errors setting up listeners.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// `-H` names an address the engine cannot serve.
    #[error("invalid listen address {address}: {reason}")]
    BadAddress {
        /// The address.
        address: String,
        /// Why.
        reason: String,
    },
    /// A TCP listener was asked for without mutual TLS.
    #[error("refusing to listen on {address} without mutual TLS: {missing} is required")]
    TlsRequired {
        /// The address.
        address: String,
        /// The missing flag.
        missing: &'static str,
    },
    /// A TLS file could not be read or used.
    #[error("cannot use TLS file {path}: {reason}")]
    Tls {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another process serves the unix socket already.
    #[error("socket {path} is in use by another engine")]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// Binding failed.
    #[error("cannot listen on {address}")]
    Bind {
        /// The address.
        address: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// TLS settings from `--tlsverify --tlscacert --tlscert --tlskey`.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// `--tlsverify`.
    pub verify: bool,
    /// `--tlscacert`.
    pub ca: Option<PathBuf>,
    /// `--tlscert`.
    pub cert: Option<PathBuf>,
    /// `--tlskey`.
    pub key: Option<PathBuf>,
}

/// A bound listener.
pub enum Listener {
    /// A unix socket.
    Unix {
        /// The bound socket.
        listener: UnixListener,
        /// Its path (removed at shutdown).
        path: PathBuf,
    },
    /// A TCP port with mutual TLS.
    Tls {
        /// The bound port.
        listener: TcpListener,
        /// The TLS acceptor, following its files.
        tls: Arc<ReloadingTls>,
    },
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listener::Unix { path, .. } => f.debug_struct("Unix").field("path", path).finish(),
            Listener::Tls { listener, .. } => f
                .debug_struct("Tls")
                .field("addr", &listener.local_addr().ok())
                .finish(),
        }
    }
}

fn tls_err(path: &Path, reason: impl ToString) -> ServerError {
    ServerError::Tls {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The TLS files of a listener, as given by the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TlsPaths {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TlsPaths {
    /// The three files' identities now (a file that cannot be read has none).
    fn stamps(&self) -> [Option<FileStamp>; 3] {
        [&self.ca, &self.cert, &self.key].map(|path| FileStamp::of(path))
    }
}

/// What tells one version of a file from the next without reading it: a replacement by
/// rename changes the inode, an in-place write the size, mtime or ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

/// The TLS acceptor of a listener, rebuilt when its files change.
///
/// Each new connection stats the three files (three `stat`s on a tmpfs, no read) before its
/// handshake; when any of them changed since the acceptor in service was built, the files
/// are read again. New files that cannot be used (unreadable, not PEM, a key that does not
/// match the certificate: as while a key and its certificate are replaced one after the
/// other) leave the acceptor in service as it is and are logged once; they are tried again
/// when they change again. Connections already established keep the session they have. This
/// is how the host hands a running machine a certificate for a new address without
/// restarting the engine (internals.md, "Engine certificates").
pub struct ReloadingTls {
    paths: TlsPaths,
    state: std::sync::Mutex<TlsState>,
}

struct TlsState {
    /// The stamps of the files the acceptor in service was built from.
    loaded: [Option<FileStamp>; 3],
    acceptor: TlsAcceptor,
    /// The stamps of the last files that could not be used, so they are reported once.
    refused: Option<[Option<FileStamp>; 3]>,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("paths", &self.paths)
            .finish()
    }
}

impl ReloadingTls {
    /// Builds the acceptor from the flags' files; any problem with them is an error here
    /// (the engine does not start without a usable certificate).
    pub fn new(address: &str, tls: &TlsOptions) -> Result<Self, ServerError> {
        let paths = tls_paths(address, tls)?;
        let loaded = paths.stamps();
        let acceptor = tls_acceptor_from(&paths)?;
        Ok(ReloadingTls {
            paths,
            state: std::sync::Mutex::new(TlsState {
                loaded,
                acceptor,
                refused: None,
            }),
        })
    }

    /// The acceptor for a new connection: rebuilt first if the files changed and the new ones
    /// can be used.
    pub fn acceptor(&self) -> TlsAcceptor {
        // Stamped before reading: a file replaced while it is read is seen as changed at the
        // next connection and read again.
        let now = self.paths.stamps();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now == state.loaded || state.refused == Some(now) {
            return state.acceptor.clone();
        }
        match tls_acceptor_from(&self.paths) {
            Ok(acceptor) => {
                info!(cert = %self.paths.cert.display(), "TLS files changed: serving the new certificate");
                state.acceptor = acceptor;
                state.loaded = now;
                state.refused = None;
            }
            Err(err) => {
                warn!(
                    error = %err,
                    "TLS files changed but cannot be used: the previous certificate stays in service"
                );
                state.refused = Some(now);
            }
        }
        state.acceptor.clone()
    }
}

/// The TLS files a TCP listener at `address` needs, or which flag is missing.
fn tls_paths(address: &str, tls: &TlsOptions) -> Result<TlsPaths, ServerError> {
    let require = |value: &Option<PathBuf>, missing| {
        value.clone().ok_or(ServerError::TlsRequired {
            address: address.to_string(),
            missing,
        })
    };
    if !tls.verify {
        return Err(ServerError::TlsRequired {
            address: address.to_string(),
            missing: "--tlsverify",
        });
    }
    Ok(TlsPaths {
        ca: require(&tls.ca, "--tlscacert")?,
        cert: require(&tls.cert, "--tlscert")?,
        key: require(&tls.key, "--tlskey")?,
    })
}

/// Builds the rustls server config: server cert and key, and client certificates required and
/// verified against the CA.
fn tls_acceptor_from(paths: &TlsPaths) -> Result<TlsAcceptor, ServerError> {
    let TlsPaths { ca, cert, key } = paths;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(ca).map_err(|e| tls_err(ca, e))? {
        roots
            .add(der.map_err(|e| tls_err(ca, e))?)
            .map_err(|e| tls_err(ca, e))?;
    }
    if roots.is_empty() {
        return Err(tls_err(ca, "no certificate in file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls_err(ca, e))?;
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(cert, e))?;
    if chain.is_empty() {
        return Err(tls_err(cert, "no certificate in file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, e))?;
    // Also refuses a key that does not match the certificate.
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(cert, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(|e| tls_err(cert, e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Binds one `-H` address.
pub async fn bind(address: &str, tls: &TlsOptions) -> Result<Listener, ServerError> {
    let bad = |reason: &str| ServerError::BadAddress {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    let bind_err = |source| ServerError::Bind {
        address: address.to_string(),
        source,
    };
    if let Some(path) = address.strip_prefix("unix://") {
        let path = PathBuf::from(path);
        if path.as_os_str().is_empty() {
            return Err(bad("empty socket path"));
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(bind_err)?;
        }
        // A socket someone answers on belongs to a live engine: taking it over would cut
        // that engine's clients off. One left by an engine that died is replaced.
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(ServerError::InUse { path });
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        let listener = UnixListener::bind(&path).map_err(bind_err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
            .map_err(bind_err)?;
        // As dockerd: members of the `docker` group, when there is one, may use the socket.
        if let Ok(Some(group)) = nix::unistd::Group::from_name("docker") {
            if let Err(err) = nix::unistd::chown(&path, None, Some(group.gid)) {
                debug!(error = %err, "cannot give the socket to group docker");
            }
        }
        info!(socket = %path.display(), "listening");
        Ok(Listener::Unix { listener, path })
    } else if let Some(addr) = address.strip_prefix("tcp://") {
        let tls = Arc::new(ReloadingTls::new(address, tls)?);
        // dockerd's forms: `tcp://host:port`, `tcp://:port` (all interfaces), `tcp://host`.
        let addr = if addr.starts_with(':') {
            format!("0.0.0.0{addr}")
        } else if addr.contains(':') {
            addr.to_string()
        } else {
            format!("{addr}:2376")
        };
        let listener = TcpListener::bind(&addr).await.map_err(bind_err)?;
        info!(%addr, "listening with mutual TLS");
        Ok(Listener::Tls { listener, tls })
    } else {
        Err(bad("expected unix:///path or tcp://host:port"))
    }
}

/// Pacing of the accept loop when the engine is out of file descriptors.
///
/// An `accept` that fails with EMFILE/ENFILE leaves the connection queued, so the listener is
/// ready again at once: without a pause the loop would spin a core until a descriptor is
/// freed. It sleeps 100 ms, doubling up to 1 s, and logs once per episode.
#[derive(Debug, Default)]
struct AcceptBackoff {
    delay: Option<std::time::Duration>,
}

impl AcceptBackoff {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(100);
    const MAX: std::time::Duration = std::time::Duration::from_secs(1);

    /// An accept succeeded: the episode is over.
    fn reset(&mut self) {
        if self.delay.take().is_some() {
            info!("accepting connections again");
        }
    }

    /// How long to pause after `err`, if it is descriptor exhaustion.
    fn after(&mut self, err: &std::io::Error) -> Option<std::time::Duration> {
        if !matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
            debug!(error = %err, "accept failed");
            return None;
        }
        let delay = match self.delay {
            None => {
                warn!(error = %err, "out of file descriptors: pausing accepts");
                Self::FIRST
            }
            Some(delay) => (delay * 2).min(Self::MAX),
        };
        self.delay = Some(delay);
        Some(delay)
    }
}

/// Serves a listener until `shutdown` turns true.
pub async fn serve(listener: Listener, api: Api, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = AcceptBackoff::default();
    loop {
        let mut pause = None;
        match &listener {
            Listener::Unix { listener, .. } => tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        backoff.reset();
                        spawn_connection(stream, api.clone());
                    }
                    Err(err) => pause = backoff.after(&err),
                },
                _ = shutdown.wait_for(|s| *s) => break,
            },
            Listener::Tls { listener, tls } => tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        backoff.reset();
                        let tls = tls.clone();
                        let api = api.clone();
                        tokio::spawn(async move {
                            let acceptor = tls.acceptor();
                            // A peer that never finishes its handshake must not hold a task.
                            let handshake = tokio::time::timeout(
                                HANDSHAKE_TIMEOUT,
                                acceptor.accept(stream),
                            );
                            match handshake.await {
                                Ok(Ok(tls)) => spawn_connection(tls, api),
                                Ok(Err(err)) => info!(%peer, error = %err, "TLS handshake refused"),
                                Err(_) => info!(%peer, "TLS handshake timed out"),
                            }
                        });
                    }
                    Err(err) => pause = backoff.after(&err),
                },
                _ = shutdown.wait_for(|s| *s) => break,
            },
        }
        if let Some(pause) = pause {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
    }
    if let Listener::Unix { path, .. } = &listener {
        let _ = std::fs::remove_file(path);
    }
}

fn spawn_connection<S>(stream: S, api: Api)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = service_fn(move |req| {
            let api = api.clone();
            async move { api.handle(req).await }
        });
        if let Err(err) = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades()
            .await
        {
            debug!(error = %err, "connection ended with an error");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_exhaustion_backs_off_up_to_a_second_and_resets() {
        let mut backoff = AcceptBackoff::default();
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        let delays: Vec<_> = (0..6).filter_map(|_| backoff.after(&emfile)).collect();
        let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.after(&emfile).map(|d| d.as_millis()), Some(100));
        let reset = std::io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert_eq!(backoff.after(&reset), None);
    }

    /// A CA, a client certificate it signed, and server certificates it signs on demand.
    struct Pki {
        ca: rcgen::Certificate,
        ca_params: rcgen::CertificateParams,
        ca_key: rcgen::KeyPair,
        client_chain: Vec<CertificateDer<'static>>,
        client_key: PrivateKeyDer<'static>,
    }

    impl Pki {
        fn new() -> Self {
            let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let ca = params.self_signed(&ca_key).unwrap();
            let ca_params = params;
            let client_key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
            let client = params.signed_by(&client_key, &issuer).unwrap();
            Pki {
                client_chain: vec![client.der().clone()],
                client_key: PrivateKeyDer::try_from(client_key.serialize_der()).unwrap(),
                ca,
                ca_params,
                ca_key,
            }
        }

        /// A server certificate for `127.0.0.1` (PEM), its key (PEM) and the certificate's DER.
        fn server(&self) -> (String, String, Vec<u8>) {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
            let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem(), cert.der().to_vec())
        }

        fn connector(&self) -> tokio_rustls::TlsConnector {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca.der().clone()).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(self.client_chain.clone(), self.client_key.clone_key())
                .unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(config))
        }
    }

    /// Replaces `path` as the host's installer does (a new file renamed over it).
    fn replace(path: &Path, contents: &str) {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// A TLS echo server on the listener's reloading acceptor: one line in, the line out.
    async fn echo_server(tls: Arc<ReloadingTls>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = tls.acceptor();
                tokio::spawn(async move {
                    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut stream = tokio::io::BufReader::new(stream);
                    let mut line = String::new();
                    while stream.read_line(&mut line).await.is_ok_and(|n| n > 0) {
                        if stream.get_mut().write_all(line.as_bytes()).await.is_err() {
                            return;
                        }
                        line.clear();
                    }
                });
            }
        });
        addr
    }

    type Client = tokio::io::BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

    /// Connects, and returns the stream and the certificate the server presented (DER).
    async fn connect(pki: &Pki, addr: std::net::SocketAddr) -> (Client, Vec<u8>) {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let stream = pki.connector().connect(name, tcp).await.unwrap();
        let served = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        (tokio::io::BufReader::new(stream), served)
    }

    /// One line through an established connection.
    async fn echo(stream: &mut Client, line: &str) -> String {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        stream.get_mut().write_all(line.as_bytes()).await.unwrap();
        let mut back = String::new();
        stream.read_line(&mut back).await.unwrap();
        back
    }

    #[tokio::test]
    async fn new_connections_get_a_replaced_certificate_and_garbage_keeps_the_old_one() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let options = TlsOptions {
            verify: true,
            ca: Some(tmp.path().join("ca.pem")),
            cert: Some(tmp.path().join("server.pem")),
            key: Some(tmp.path().join("server-key.pem")),
        };
        std::fs::write(tmp.path().join("ca.pem"), pki.ca.pem()).unwrap();
        let (first, first_key, first_der) = pki.server();
        std::fs::write(tmp.path().join("server.pem"), &first).unwrap();
        std::fs::write(tmp.path().join("server-key.pem"), &first_key).unwrap();
        let tls = Arc::new(ReloadingTls::new("tcp://127.0.0.1:0", &options).unwrap());
        let addr = echo_server(tls).await;
        let (mut old, served) = connect(&pki, addr).await;
        assert_eq!(served, first_der);
        assert_eq!(echo(&mut old, "one\n").await, "one\n");

        // Replaced as the installer does: the key first, then the certificate.
        let (second, second_key, second_der) = pki.server();
        replace(&tmp.path().join("server-key.pem"), &second_key);
        let (_, served) = connect(&pki, addr).await;
        assert_eq!(
            served, first_der,
            "a key without its certificate is not used: the old pair serves"
        );
        replace(&tmp.path().join("server.pem"), &second);
        let (mut new, served) = connect(&pki, addr).await;
        assert_eq!(
            served, second_der,
            "a new connection gets the new certificate"
        );
        assert_eq!(echo(&mut new, "two\n").await, "two\n");
        assert_eq!(
            echo(&mut old, "still\n").await,
            "still\n",
            "a connection made before keeps working"
        );

        // Garbage over both files: the last good pair stays in service.
        replace(&tmp.path().join("server.pem"), "not a certificate\n");
        replace(&tmp.path().join("server-key.pem"), "not a key\n");
        let (_, served) = connect(&pki, addr).await;
        assert_eq!(served, second_der);
        std::fs::remove_file(tmp.path().join("server.pem")).unwrap();
        let (_, served) = connect(&pki, addr).await;
        assert_eq!(served, second_der, "a missing file keeps the old one too");

        // Usable files again: taken.
        let (third, third_key, third_der) = pki.server();
        replace(&tmp.path().join("server-key.pem"), &third_key);
        replace(&tmp.path().join("server.pem"), &third);
        let (_, served) = connect(&pki, addr).await;
        assert_eq!(served, third_der);
    }

    #[tokio::test]
    async fn tcp_without_tls_is_refused_naming_the_flag() {
        let err = bind("tcp://127.0.0.1:0", &TlsOptions::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--tlsverify"), "{err}");
        let tls = TlsOptions {
            verify: true,
            ..Default::default()
        };
        let err = bind("tcp://127.0.0.1:0", &tls).await.unwrap_err();
        assert!(err.to_string().contains("--tlscacert"), "{err}");
    }
}
