//! The TLS check: talk to a machine's engine exactly as the docker CLI will.
//!
//! The client presents the store's client certificate, trusts only the store's CA and checks
//! the engine's certificate against the host it dials, then sends `GET /_ping` and
//! `GET /version`. Readiness after a boot is a full handshake plus a `/_ping` answer, never a
//! bare TCP connect: QEMU's user networking accepts connections on a forwarded port before
//! anything in the guest listens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

/// How long one attempt (connect, handshake, request) may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one readiness probe may take before [`EngineClient::wait_ready`] starts another.
const READY_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// What can go wrong talking to an engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineCheckError {
    /// A certificate or key file could not be loaded.
    #[error("cannot load TLS file {path}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The TLS configuration was refused (a bad key, an unusable CA).
    #[error("invalid TLS configuration from {dir}")]
    Config {
        /// The directory holding the files.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// The TCP connection failed.
    #[error("cannot connect to the engine at {addr}")]
    Connect {
        /// The engine address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (wrong CA, name mismatch, engine not up yet).
    #[error("TLS handshake with the engine at {addr} failed")]
    Handshake {
        /// The engine address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// HTTP failed.
    #[error("HTTP request {path} to the engine at {addr} failed")]
    Http {
        /// The engine address.
        addr: SocketAddr,
        /// The request path.
        path: String,
        /// The cause.
        #[source]
        source: hyper::Error,
    },
    /// The engine answered with an error status or a body we cannot read.
    #[error("engine at {addr} answered {path} with {detail}")]
    BadAnswer {
        /// The engine address.
        addr: SocketAddr,
        /// The request path.
        path: String,
        /// What was wrong.
        detail: String,
    },
    /// One attempt took too long.
    #[error("engine at {addr} did not answer within {seconds}s")]
    AttemptTimeout {
        /// The engine address.
        addr: SocketAddr,
        /// The limit.
        seconds: u64,
    },
    /// The engine did not become ready in time.
    #[error("timed out after {seconds}s waiting for the engine at {addr}")]
    WaitTimeout {
        /// The engine address.
        addr: SocketAddr,
        /// How long we waited.
        seconds: u64,
        /// The last attempt's failure.
        #[source]
        last: Box<EngineCheckError>,
    },
}

/// A TLS client set up from a certificate directory (`ca.pem`, `cert.pem`, `key.pem`).
#[derive(Clone)]
pub struct EngineClient {
    connector: TlsConnector,
    /// The name the engine's certificate must carry instead of the address dialed (see
    /// [`EngineClient::expecting`]).
    expected_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for EngineClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineClient").finish_non_exhaustive()
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, EngineCheckError> {
    let pem_err = |source| EngineCheckError::Pem {
        path: path.to_path_buf(),
        source,
    };
    CertificateDer::pem_file_iter(path)
        .map_err(pem_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)
}

impl EngineClient {
    /// A client from `dir/ca.pem`, `dir/cert.pem` and `dir/key.pem` (DOCKER_CERT_PATH).
    pub fn from_cert_dir(dir: &Path) -> Result<Self, EngineCheckError> {
        let config_err = |source| EngineCheckError::Config {
            dir: dir.to_path_buf(),
            source,
        };
        let mut roots = rustls::RootCertStore::empty();
        for ca in load_certs(&dir.join("ca.pem"))? {
            roots.add(ca).map_err(config_err)?;
        }
        let chain = load_certs(&dir.join("cert.pem"))?;
        let key_path = dir.join("key.pem");
        let key =
            PrivateKeyDer::from_pem_file(&key_path).map_err(|source| EngineCheckError::Pem {
                path: key_path.clone(),
                source,
            })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(config_err)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(config_err)?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            expected_name: None,
        })
    }

    /// This client, checking the engine's certificate against `name` instead of the address it
    /// dials (still signed by the store's CA, still mutual TLS): for a guest that booted at an
    /// address its certificate does not name yet, whose engine proves it holds the machine's
    /// certificate by presenting it under the machine's own name.
    pub fn expecting(&self, name: ServerName<'static>) -> Self {
        Self {
            connector: self.connector.clone(),
            expected_name: Some(name),
        }
    }

    /// Connects to `addr` and completes the mutual-TLS handshake.
    async fn dial(
        &self,
        addr: SocketAddr,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, EngineCheckError> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| EngineCheckError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        // Verify the certificate against the address we dial, as docker does for
        // tcp://127.0.0.1:PORT.
        let name = self
            .expected_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        self.connector
            .connect(name, tcp)
            .await
            .map_err(|source| EngineCheckError::Handshake { addr, source })
    }

    /// Opens a mutual-TLS HTTP/1 connection and sends `GET path`; returns the response head
    /// with its body still streaming (the connection lives as long as the body is read).
    async fn send(
        &self,
        addr: SocketAddr,
        path: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, EngineCheckError> {
        let tls = self.dial(addr).await?;
        let http = |source| EngineCheckError::Http {
            addr,
            path: path.to_string(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(http)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| EngineCheckError::BadAnswer {
                addr,
                path: path.to_string(),
                detail: e.to_string(),
            })?;
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status();
        if !status.is_success() {
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(EngineCheckError::BadAnswer {
                addr,
                path: path.to_string(),
                detail: format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim()),
            });
        }
        Ok(response)
    }

    /// The certificate (DER) the engine at `addr` presents, after a handshake that checks it
    /// as [`EngineClient::ping`] does (the CA, the address), within the attempt timeout.
    pub async fn served_certificate(&self, addr: SocketAddr) -> Result<Vec<u8>, EngineCheckError> {
        let attempt = async {
            let tls = self.dial(addr).await?;
            tls.get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| cert.to_vec())
                .ok_or_else(|| EngineCheckError::BadAnswer {
                    addr,
                    path: "the TLS handshake".to_string(),
                    detail: "no certificate presented".to_string(),
                })
        };
        tokio::time::timeout(READY_ATTEMPT_TIMEOUT, attempt)
            .await
            .map_err(|_| EngineCheckError::AttemptTimeout {
                addr,
                seconds: READY_ATTEMPT_TIMEOUT.as_secs(),
            })?
    }

    /// `GET path` whose body streams for as long as the engine keeps it open (`/events`);
    /// only the response head is bounded by the attempt timeout.
    pub async fn stream(
        &self,
        addr: SocketAddr,
        path: &str,
    ) -> Result<hyper::body::Incoming, EngineCheckError> {
        tokio::time::timeout(ATTEMPT_TIMEOUT, self.send(addr, path))
            .await
            .map_err(|_| EngineCheckError::AttemptTimeout {
                addr,
                seconds: ATTEMPT_TIMEOUT.as_secs(),
            })?
            .map(hyper::Response::into_body)
    }

    /// `GET path`, its body parsed as JSON.
    pub async fn get_json(
        &self,
        addr: SocketAddr,
        path: &str,
    ) -> Result<serde_json::Value, EngineCheckError> {
        let body = self.get(addr, path).await?;
        serde_json::from_slice(&body).map_err(|e| EngineCheckError::BadAnswer {
            addr,
            path: path.to_string(),
            detail: e.to_string(),
        })
    }

    async fn get(&self, addr: SocketAddr, path: &str) -> Result<Bytes, EngineCheckError> {
        let attempt = async {
            let response = self.send(addr, path).await?;
            let http = |source| EngineCheckError::Http {
                addr,
                path: path.to_string(),
                source,
            };
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(http)?
                .to_bytes();
            Ok(body)
        };
        tokio::time::timeout(ATTEMPT_TIMEOUT, attempt)
            .await
            .map_err(|_| EngineCheckError::AttemptTimeout {
                addr,
                seconds: ATTEMPT_TIMEOUT.as_secs(),
            })?
    }

    /// `GET /_ping`: succeeds when the engine answers `OK` over mutual TLS.
    pub async fn ping(&self, addr: SocketAddr) -> Result<(), EngineCheckError> {
        let body = self.get(addr, "/_ping").await?;
        if body.as_ref() != b"OK" {
            return Err(EngineCheckError::BadAnswer {
                addr,
                path: "/_ping".to_string(),
                detail: format!("{:?}", String::from_utf8_lossy(&body)),
            });
        }
        Ok(())
    }

    /// `GET /version`: the engine's `Version` string (e.g. `0.1.0`).
    pub async fn version(&self, addr: SocketAddr) -> Result<String, EngineCheckError> {
        let body = self.get(addr, "/version").await?;
        let bad = |detail: String| EngineCheckError::BadAnswer {
            addr,
            path: "/version".to_string(),
            detail,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
        value
            .get("Version")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| bad("no Version field".to_string()))
    }

    /// Retries `/_ping` until it succeeds or `timeout` passes.
    pub async fn wait_ready(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<(), EngineCheckError> {
        let start = Instant::now();
        loop {
            // Each attempt gets a short deadline of its own: QEMU user networking accepts the
            // host-side connection at once but relays it into a guest whose network may not be
            // up yet, and that relay can sit in TCP SYN back-off for many seconds. A fresh
            // attempt reaches the engine as soon as it listens; a stale one would not.
            let remaining = timeout
                .saturating_sub(start.elapsed())
                .min(READY_ATTEMPT_TIMEOUT);
            let last = match tokio::time::timeout(remaining, self.ping(addr)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => EngineCheckError::AttemptTimeout {
                    addr,
                    seconds: remaining.as_secs().max(1),
                },
            };
            tracing::debug!(%addr, error = %last, "engine not ready yet");
            if start.elapsed() + Duration::from_millis(200) >= timeout {
                return Err(EngineCheckError::WaitTimeout {
                    addr,
                    seconds: timeout.as_secs(),
                    last: Box::new(last),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::certs;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    /// Serves `/_ping` and `/version` over mutual TLS with the machine's server cert.
    pub(crate) async fn serve(machine_dir: &Path) -> SocketAddr {
        serve_on(machine_dir, std::net::Ipv4Addr::LOCALHOST.into()).await
    }

    /// [`serve`] on a given (loopback) address. The files in `tls_dir` (`ca.pem`, `server.pem`,
    /// `server-key.pem`) are read for each connection, as the engine picks up replaced ones.
    pub(crate) async fn serve_on(tls_dir: &Path, ip: std::net::IpAddr) -> SocketAddr {
        let tls_dir = tls_dir.to_path_buf();
        let acceptor_now = move || {
            let chain = load_certs(&tls_dir.join("server.pem")).ok()?;
            let key = PrivateKeyDer::from_pem_file(tls_dir.join("server-key.pem")).ok()?;
            let mut roots = rustls::RootCertStore::empty();
            for ca in load_certs(&tls_dir.join("ca.pem")).ok()? {
                roots.add(ca).ok()?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .ok()?;
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .ok()?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .ok()?;
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
        };
        assert!(acceptor_now().is_some(), "usable TLS files to serve");
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Some(acceptor) = acceptor_now() else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service =
                        service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                            let body = match req.uri().path() {
                                "/_ping" => "OK".to_string(),
                                "/version" => {
                                    r#"{"Version":"0.1.0","ApiVersion":"1.45"}"#.to_string()
                                }
                                _ => String::new(),
                            };
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(Bytes::from(body)),
                            ))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        addr
    }

    fn machine(store: &Path, name: &str) -> PathBuf {
        let certs_dir = store.join("certs");
        certs::bootstrap(&certs_dir, &mut |_| {}).unwrap();
        let dir = store.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let server = certs::server_cert(&certs_dir, name, &[]).unwrap();
        certs::install_machine_certs(&certs_dir, &dir, &server).unwrap();
        dir
    }

    #[tokio::test]
    async fn ping_and_version_over_mutual_tls() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = machine(tmp.path(), "intro");
        let addr = serve(&dir).await;
        let client = EngineClient::from_cert_dir(&dir).unwrap();
        client
            .wait_ready(addr, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(client.version(addr).await.unwrap(), "0.1.0");
    }

    #[tokio::test]
    async fn a_foreign_ca_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = machine(tmp.path(), "intro");
        let addr = serve(&dir).await;
        let other = tempfile::tempdir().unwrap();
        let other_dir = machine(other.path(), "intro");
        let client = EngineClient::from_cert_dir(&other_dir).unwrap();
        let err = client.ping(addr).await.unwrap_err();
        assert!(matches!(err, EngineCheckError::Handshake { .. }), "{err}");
    }

    #[tokio::test]
    async fn expecting_a_name_checks_the_certificate_against_it_instead_of_the_address() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = machine(tmp.path(), "intro");
        // An address the certificate does not name (a guest that came up at a new lease).
        let addr = serve_on(&dir, "127.0.0.2".parse().unwrap()).await;
        let client = EngineClient::from_cert_dir(&dir).unwrap();
        let err = client.ping(addr).await.unwrap_err();
        assert!(matches!(err, EngineCheckError::Handshake { .. }), "{err}");
        let named = ServerName::try_from("intro".to_string()).unwrap();
        client.expecting(named).ping(addr).await.unwrap();
        // Another machine's name is refused: the CA alone does not do.
        let other = ServerName::try_from("other".to_string()).unwrap();
        let err = client.expecting(other).ping(addr).await.unwrap_err();
        assert!(matches!(err, EngineCheckError::Handshake { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_silent_port_times_out() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = machine(tmp.path(), "intro");
        // Accepts TCP and never speaks, like QEMU's forward before the guest listens.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let client = EngineClient::from_cert_dir(&dir).unwrap();
        let err = client
            .wait_ready(addr, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(err, EngineCheckError::WaitTimeout { .. }), "{err}");
    }
}
