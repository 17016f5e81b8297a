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
        /// The TLS acceptor.
        acceptor: TlsAcceptor,
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

/// Builds the rustls server config: server cert and key, and client certificates required and
/// verified against the CA.
pub fn tls_acceptor(address: &str, tls: &TlsOptions) -> Result<TlsAcceptor, ServerError> {
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
    let ca = require(&tls.ca, "--tlscacert")?;
    let cert = require(&tls.cert, "--tlscert")?;
    let key = require(&tls.key, "--tlskey")?;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(&ca).map_err(|e| tls_err(&ca, e))? {
        roots
            .add(der.map_err(|e| tls_err(&ca, e))?)
            .map_err(|e| tls_err(&ca, e))?;
    }
    if roots.is_empty() {
        return Err(tls_err(&ca, "no certificate in file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls_err(&ca, e))?;
    let chain = CertificateDer::pem_file_iter(&cert)
        .map_err(|e| tls_err(&cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(&cert, e))?;
    let key_der = PrivateKeyDer::from_pem_file(&key).map_err(|e| tls_err(&key, e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(&cert, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(|e| tls_err(&cert, e))?;
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
        let acceptor = tls_acceptor(address, tls)?;
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
        Ok(Listener::Tls { listener, acceptor })
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
            Listener::Tls { listener, acceptor } => tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        backoff.reset();
                        let acceptor = acceptor.clone();
                        let api = api.clone();
                        tokio::spawn(async move {
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
