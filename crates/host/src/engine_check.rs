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
    /// The verifier of the engine's certificate could not be built from the CA.
    #[error("cannot check engine certificates against the CA in {dir}")]
    Verifier {
        /// The directory holding the files.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: rustls::client::VerifierBuilderError,
    },
    /// The file that should hold the engine's certificate holds none.
    #[error("no certificate in {path}")]
    NoCertificate {
        /// The file.
        path: PathBuf,
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
    /// The configuration `connector` was made from (for [`EngineClient::presenting`]).
    config: Arc<rustls::ClientConfig>,
    /// The check of the engine's certificate against the store's CA and a name.
    verifier: Arc<rustls::client::WebPkiServerVerifier>,
    /// The name the engine's certificate must carry instead of the address dialed (see
    /// [`EngineClient::presenting`]).
    expected_name: Option<ServerName<'static>>,
}

/// Why a certificate that the CA signed and that names the expected host is still refused.
#[derive(thiserror::Error)]
#[error("the engine presents a certificate other than the machine's current one")]
struct NotTheMachineCertificate;

// rustls shows the cause of a refused certificate with `Debug`: the sentence, not the name.
impl std::fmt::Debug for NotTheMachineCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Accepts only an engine presenting exactly one certificate (the host's copy of the machine's
/// own), after the usual check against the CA and a name. Names alone do not identify a
/// machine: every certificate the store issues names `localhost`, and `--tls-san` can make one
/// machine's certificate name another.
#[derive(Debug)]
struct ExactCertificate {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    expected: CertificateDer<'static>,
}

impl rustls::client::danger::ServerCertVerifier for ExactCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if end_entity.as_ref() != self.expected.as_ref() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                    NotTheMachineCertificate,
                ))),
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
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
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|source| EngineCheckError::Verifier {
            dir: dir.to_path_buf(),
            source,
        })?;
        let config = Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(config_err)?
                .with_webpki_verifier(verifier.clone())
                .with_client_auth_cert(chain, key)
                .map_err(config_err)?,
        );
        Ok(Self {
            connector: TlsConnector::from(config.clone()),
            config,
            verifier,
            expected_name: None,
        })
    }

    /// This client, accepting only an engine that presents exactly the certificate in
    /// `cert_path` (the host's copy of the machine's current one), checked against the store's
    /// CA and `name` instead of the address it dials, still over mutual TLS: for a guest that
    /// booted at an address its certificate does not name yet. The handshake proves the engine
    /// holds that certificate's key, i.e. it is this machine's engine.
    pub fn presenting(
        &self,
        name: ServerName<'static>,
        cert_path: &Path,
    ) -> Result<Self, EngineCheckError> {
        let expected = load_certs(cert_path)?.into_iter().next().ok_or_else(|| {
            EngineCheckError::NoCertificate {
                path: cert_path.to_path_buf(),
            }
        })?;
        let mut config = (*self.config).clone();
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(ExactCertificate {
                inner: self.verifier.clone(),
                expected,
            }));
        let config = Arc::new(config);
        Ok(Self {
            connector: TlsConnector::from(config.clone()),
            config,
            verifier: self.verifier.clone(),
            expected_name: Some(name),
        })
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
        machine_with_sans(store, name, &[])
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

    /// Machine `name` of the store at `store`, its certificate also naming `sans`.
    fn machine_with_sans(store: &Path, name: &str, sans: &[String]) -> PathBuf {
        let certs_dir = store.join("certs");
        certs::bootstrap(&certs_dir, &mut |_| {}).unwrap();
        let dir = store.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let server = certs::server_cert(&certs_dir, name, sans).unwrap();
        certs::install_machine_certs(&certs_dir, &dir, &server).unwrap();
        dir
    }

    #[tokio::test]
    async fn presenting_accepts_only_the_machines_own_certificate_whatever_the_address() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = machine(tmp.path(), "intro");
        // An address the certificate does not name (a guest that came up at a new lease).
        let addr = serve_on(&dir, "127.0.0.2".parse().unwrap()).await;
        let client = EngineClient::from_cert_dir(&dir).unwrap();
        let err = client.ping(addr).await.unwrap_err();
        assert!(matches!(err, EngineCheckError::Handshake { .. }), "{err}");
        let named = |n: &str| ServerName::try_from(n.to_string()).unwrap();
        let own = dir.join("server.pem");
        client
            .presenting(named("intro"), &own)
            .unwrap()
            .ping(addr)
            .await
            .unwrap();
        // Its certificate under a name it does not carry is refused.
        let err = client
            .presenting(named("other"), &own)
            .unwrap()
            .ping(addr)
            .await
            .unwrap_err();
        assert!(matches!(err, EngineCheckError::Handshake { .. }), "{err}");
    }

    #[tokio::test]
    async fn presenting_refuses_another_machines_engine_that_names_this_machine_too() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = machine(tmp.path(), "intro");
        // Same store, same CA: `create --tls-san intro other` makes a certificate that names
        // `intro`, and every certificate of the store names `localhost`.
        let other = machine_with_sans(tmp.path(), "other", &["intro".to_string()]);
        let local = machine(tmp.path(), "localhost");
        let client = EngineClient::from_cert_dir(&dir).unwrap();
        let named = |n: &str| ServerName::try_from(n.to_string()).unwrap();
        for (impostor, name, own) in [
            (&other, "intro", dir.join("server.pem")),
            (&dir, "localhost", local.join("server.pem")),
        ] {
            let addr = serve_on(impostor, "127.0.0.3".parse().unwrap()).await;
            // The name alone would have let it through: the CA signed it and it carries the name.
            assert!(certs::names_host(&impostor.join("server.pem"), name).unwrap());
            let err = client
                .presenting(named(name), &own)
                .unwrap()
                .ping(addr)
                .await
                .unwrap_err();
            assert!(matches!(err, EngineCheckError::Handshake { .. }), "{err}");
            assert!(
                error_text(&err).contains("other than the machine's current one"),
                "{}",
                error_text(&err)
            );
        }
    }

    fn error_text(err: &dyn std::error::Error) -> String {
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
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
