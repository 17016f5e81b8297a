//! The registry client: `docker pull` and `docker login` against Docker/OCI registries (the
//! distribution v2 API), through the `oci-client` crate.
//!
//! # Data flow of a pull
//!
//! 1. [`endpoints`] lists where a name may be fetched from: for `docker.io` names the
//!    `--registry-mirror`s first, then Docker Hub; otherwise the name's own registry, over
//!    plain HTTP when it is an `--insecure-registry` (loopback always is, as in dockerd).
//! 2. [`pull::pull`] fetches the manifest (a manifest list or OCI index is resolved to the
//!    engine's platform, or the one asked for), then the config blob, verified by digest.
//! 3. Layers whose diff id the store lacks are downloaded three at a time; each blob is
//!    streamed through a sha256 check into the store's staging area, decompressed and
//!    extracted on the way ([`ImageStore::stage_layer`](super::ImageStore::stage_layer)).
//! 4. Only when every layer matches its digest and diff id is the image committed
//!    ([`ImageStore::commit_pull`](super::ImageStore::commit_pull)), with the manifest digest
//!    recorded among its RepoDigests.
//!
//! Progress is reported as Docker's JSON progress messages ([`Progress`]).

pub mod auth;
pub mod cache;
pub mod pull;
pub mod push;
pub mod search;

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use sha2::{Digest, Sha256};

use super::ImageError;
use crate::registry_config::RegistryConfig;

/// Docker Hub's name in references.
const DOCKER_HUB: &str = "docker.io";
/// How long to wait for a registry to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a registry may stay silent in the middle of an answer.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of registry operations. Texts the docker CLI shows are dockerd's.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry has no such repository, tag or digest (dockerd's `notFoundError`).
    #[error("{message}")]
    NotFound {
        /// The reference asked for.
        reference: String,
        /// dockerd's text, e.g. `manifest for x:y not found: manifest unknown: manifest unknown`.
        message: String,
    },
    /// A manifest list or index has no entry for the platform.
    #[error("no matching manifest for {platform} in the manifest list entries")]
    NoMatchingPlatform {
        /// The reference asked for.
        reference: String,
        /// `os/arch[/variant]`.
        platform: String,
    },
    /// The registry refused the credentials (or their absence).
    #[error("{message}")]
    Unauthorized {
        /// The registry concerned.
        registry: String,
        /// What the user sees.
        message: String,
    },
    /// The registry could not be reached (after retries).
    #[error("error pulling {reference}: cannot reach registry {registry}: {message}")]
    Unreachable {
        /// The reference asked for.
        reference: String,
        /// The registry host.
        registry: String,
        /// The last network error.
        message: String,
    },
    /// A blob's content does not hash to the digest that names it.
    #[error("filesystem layer verification failed for digest {digest}")]
    DigestMismatch {
        /// The digest asked for.
        digest: String,
        /// What the content hashes to.
        actual: String,
    },
    /// The registry answered something the engine cannot use.
    #[error("{message}")]
    Registry {
        /// The reference asked for.
        reference: String,
        /// What went wrong.
        message: String,
    },
    /// The request itself is wrong (bad auth header, bad platform, unsupported option).
    #[error("{message}")]
    InvalidParameter {
        /// What is wrong.
        message: String,
    },
    /// Writing a pulled image into the store failed (a full disk, a read-only data root):
    /// named after the image, the store's error (the file, the cause) follows.
    #[error("cannot store {reference}")]
    Storing {
        /// The reference pulled.
        reference: String,
        /// The store's failure.
        #[source]
        source: ImageError,
    },
    /// Storing the image failed.
    #[error(transparent)]
    Store(#[from] ImageError),
}

/// One line of Docker's JSON progress stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Layer (12 hex digits) or tag the line is about; `None` for whole-pull lines.
    pub id: Option<String>,
    /// `Pulling fs layer`, `Downloading`, `Digest: sha256:…`...
    pub status: String,
    /// What the line carries besides its status.
    pub detail: Detail,
}

/// The `progressDetail` of a progress line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detail {
    /// No `progressDetail` at all (whole-pull messages).
    None,
    /// `"progressDetail": {}` (a layer's status change).
    Empty,
    /// `{"current": N, "total": M}` with a rendered bar.
    Bytes {
        /// Bytes done.
        current: u64,
        /// Bytes expected (0 when unknown).
        total: u64,
    },
    /// The end of a tag's push: dockerd's `aux` message (`types.PushResult`), which clients
    /// such as docker-py read the pushed digest from; the line has no status.
    PushResult {
        /// The tag pushed.
        tag: String,
        /// The manifest's digest.
        digest: String,
        /// The manifest's size in bytes.
        size: usize,
    },
}

impl Progress {
    /// A whole-pull message, optionally about a tag.
    pub fn message(id: Option<&str>, status: impl Into<String>) -> Progress {
        Progress {
            id: id.map(str::to_string),
            status: status.into(),
            detail: Detail::None,
        }
    }

    /// A layer's status change.
    pub fn layer(id: &str, status: impl Into<String>) -> Progress {
        Progress {
            id: Some(id.to_string()),
            status: status.into(),
            detail: Detail::Empty,
        }
    }

    /// Docker's JSON for this line (`jsonmessage.JSONMessage`).
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        if !matches!(self.detail, Detail::PushResult { .. }) {
            out.insert("status".into(), self.status.clone().into());
        }
        match &self.detail {
            Detail::None => {}
            Detail::Empty => {
                out.insert("progressDetail".into(), serde_json::json!({}));
            }
            Detail::PushResult { tag, digest, size } => {
                out.insert("progressDetail".into(), serde_json::json!({}));
                out.insert(
                    "aux".into(),
                    serde_json::json!({"Tag": tag, "Digest": digest, "Size": size}),
                );
            }
            &Detail::Bytes { current, total } => {
                out.insert(
                    "progressDetail".into(),
                    serde_json::json!({"current": current, "total": total}),
                );
                out.insert("progress".into(), progress_bar(current, total).into());
            }
        }
        if let Some(id) = &self.id {
            out.insert("id".into(), id.clone().into());
        }
        serde_json::Value::Object(out)
    }
}

/// moby's `JSONProgress.String` for a terminal over 110 columns wide: a bar of 50 cells
/// and a `>` head, then the sizes (only the current one once it passes the total).
pub(crate) fn progress_bar(current: u64, total: u64) -> String {
    if total == 0 {
        return format!("{:>8}", human_size(current));
    }
    let filled = ((current as f64 / total as f64 * 100.0) as u64 / 2).min(50) as usize;
    let bar = format!("[{}>{}] ", "=".repeat(filled), " ".repeat(50 - filled));
    if current > total {
        return format!("{bar}{:>8}", human_size(current));
    }
    format!("{bar}{:>8}/{}", human_size(current), human_size(total))
}

/// go-units' `HumanSize`: decimal units, four significant digits.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit < UNITS.len() - 1 {
        size /= 1000.0;
        unit += 1;
    }
    let text = format!("{size:.4}");
    // "%.4g": four significant digits, trailing zeros dropped.
    let digits_before = text.split('.').next().map_or(1, str::len);
    let precision = 4usize.saturating_sub(digits_before);
    let mut text = format!("{size:.precision$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text}{}", UNITS[unit])
}

/// Where a repository may be fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` as the registry client addresses it.
    pub host: String,
    /// Plain HTTP rather than HTTPS.
    pub plain_http: bool,
    /// An insecure registry: HTTPS without certificate checks if it speaks TLS (see
    /// [`settle`]), else plain HTTP.
    pub insecure: bool,
    /// A mirror (errors fall through to the next endpoint).
    pub mirror: bool,
}

/// The endpoints to try for a name on `domain`, in order (moby's `lookupV2Endpoints`).
pub fn endpoints(config: &RegistryConfig, domain: &str) -> Vec<Endpoint> {
    let mut out = Vec::new();
    if domain == DOCKER_HUB {
        for mirror in &config.mirrors {
            let (scheme, rest) = mirror.split_once("://").unwrap_or(("https", mirror));
            let host = rest.split('/').next().unwrap_or_default();
            if rest.trim_end_matches('/') != host {
                tracing::warn!(
                    mirror,
                    "registry mirror with a path: the path is not used, only its host"
                );
            }
            out.push(Endpoint {
                host: host.to_string(),
                plain_http: scheme == "http",
                insecure: false,
                mirror: true,
            });
        }
        out.push(Endpoint {
            host: "registry-1.docker.io".to_string(),
            plain_http: false,
            insecure: false,
            mirror: false,
        });
    } else {
        let insecure = is_insecure(config, domain);
        out.push(Endpoint {
            host: domain.to_string(),
            plain_http: insecure,
            insecure,
            mirror: false,
        });
    }
    out
}

/// Chooses the scheme of an insecure endpoint as dockerd does: HTTPS (certificates not
/// checked) when the registry speaks TLS, plain HTTP otherwise.
pub async fn settle(mut endpoint: Endpoint) -> Endpoint {
    if !endpoint.insecure {
        return endpoint;
    }
    let probe = match http_client(true) {
        Ok(client) => client
            .get(format!("https://{}/v2/", endpoint.host))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .is_ok(),
        Err(_) => false,
    };
    endpoint.plain_http = !probe;
    tracing::debug!(registry = %endpoint.host, https = probe, "insecure registry scheme chosen");
    endpoint
}

/// Whether `host[:port]` is an insecure registry: listed by name, or an address in one of the
/// insecure networks (loopback always is).
pub fn is_insecure(config: &RegistryConfig, registry: &str) -> bool {
    if config.insecure_hosts.iter().any(|h| h == registry) {
        return true;
    }
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if config.insecure_hosts.iter().any(|h| h == host) {
        return true;
    }
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        // dockerd resolves the name and checks its addresses; "localhost" is the one name
        // worth resolving without a lookup here.
        Err(_) if host == "localhost" => vec![IpAddr::from([127, 0, 0, 1])],
        Err(_) => return false,
    };
    addrs.iter().any(|ip| {
        config
            .insecure_cidrs
            .iter()
            .any(|cidr| cidr_contains(cidr, *ip))
    })
}

fn cidr_contains(cidr: &str, ip: IpAddr) -> bool {
    let Some((net, bits)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u32>()) else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Installs ring as rustls' process-wide provider (reqwest is built without one, so that no
/// aws-lc is linked); harmless when one is already installed.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Registry clients kept between pulls and pushes, newest last: building one reads the host's
/// CA bundle (tens of milliseconds, most of a pull that finds its image up to date), and a kept
/// one reuses its connections and bearer tokens.
static CLIENTS: Mutex<Vec<(ClientKey, oci_client::Client)>> = Mutex::new(Vec::new());
/// Clients kept at most (the oldest goes first).
const KEPT_CLIENTS: usize = 16;
/// The plain clients (login, search, the scheme probe): with and without certificate checks.
static HTTP_CLIENTS: Mutex<[Option<reqwest::Client>; 2]> = Mutex::new([None, None]);

/// What a kept client was made for. A client caches the credentials it was first given and the
/// tokens they bought, so it only ever serves those same credentials (kept as a digest).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClientKey {
    host: String,
    plain_http: bool,
    insecure: bool,
    credentials: [u8; 32],
}

impl ClientKey {
    fn new(endpoint: &Endpoint, auth: &RegistryAuth) -> ClientKey {
        let mut hasher = Sha256::new();
        match auth {
            RegistryAuth::Anonymous => hasher.update(b"anonymous"),
            RegistryAuth::Basic(user, password) => {
                hasher.update(b"basic\0");
                hasher.update(user.as_bytes());
                hasher.update(b"\0");
                hasher.update(password.as_bytes());
            }
            RegistryAuth::Bearer(token) => {
                hasher.update(b"bearer\0");
                hasher.update(token.as_bytes());
            }
        }
        ClientKey {
            host: endpoint.host.clone(),
            plain_http: endpoint.plain_http,
            insecure: endpoint.insecure,
            credentials: hasher.finalize().into(),
        }
    }
}

/// A registry client and whether an earlier operation made it (then its cached bearer tokens
/// may no longer be accepted).
pub struct Leased {
    /// The client.
    pub client: oci_client::Client,
    /// Taken from the kept clients rather than made now.
    pub kept: bool,
}

/// A registry client for one endpoint and the credentials it is used with (a kept one when
/// there is), or an error naming the registry when its TLS set-up fails (a host without a CA
/// bundle). Proxies come from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`, as reqwest reads them.
pub fn client_for(endpoint: &Endpoint, auth: &RegistryAuth) -> Result<Leased, RegistryError> {
    let key = ClientKey::new(endpoint, auth);
    {
        let mut kept = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = kept.iter().position(|(k, _)| *k == key) {
            let entry = kept.remove(i);
            let client = entry.1.clone();
            kept.push(entry);
            return Ok(Leased { client, kept: true });
        }
    }
    // Made outside the lock: it reads the CA bundle, and other operations wait on the lock.
    let client = new_client(endpoint)?;
    let mut kept = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    kept.retain(|(k, _)| *k != key);
    if kept.len() >= KEPT_CLIENTS {
        kept.remove(0);
    }
    kept.push((key, client.clone()));
    Ok(Leased {
        client,
        kept: false,
    })
}

/// Drops the kept client for `endpoint` and `auth`: the registry answered it 401, so the
/// tokens it holds (revoked, signed by a rotated key, or bought before a repository was made
/// public) must not serve the next operation.
pub fn forget_client(endpoint: &Endpoint, auth: &RegistryAuth) {
    let key = ClientKey::new(endpoint, auth);
    CLIENTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(k, _)| *k != key);
}

/// True when `err` is a registry's (or token server's) 401.
fn is_unauthorized(err: &OciDistributionError) -> bool {
    match err {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::ServerError { code: 401, .. } => true,
        OciDistributionError::RequestError(e) => {
            e.status() == Some(reqwest::StatusCode::UNAUTHORIZED)
        }
        // distribution answers UNAUTHORIZED with 401 (DENIED is 403).
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| e.code == oci_client::errors::OciErrorCode::Unauthorized),
        _ => false,
    }
}

fn new_client(endpoint: &Endpoint) -> Result<oci_client::Client, RegistryError> {
    install_crypto_provider();
    // `Client::new` would swallow a failure and fall back to a default client that panics
    // the same way (a host without a CA bundle): the error names the registry instead.
    oci_client::Client::try_from(ClientConfig {
        protocol: if endpoint.plain_http {
            ClientProtocol::HttpsExcept(vec![endpoint.host.clone()])
        } else {
            ClientProtocol::Https
        },
        // Manifest lists are resolved here, to give dockerd's error when nothing matches.
        accept_invalid_certificates: endpoint.insecure && !endpoint.plain_http,
        platform_resolver: None,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        user_agent: concat!("rmachine-engine/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    })
    .map_err(|e| RegistryError::Registry {
        reference: endpoint.host.clone(),
        message: format!(
            "cannot set up a client for registry {}: {e} (is there a CA bundle at \
             /etc/ssl/certs/ca-certificates.crt?)",
            endpoint.host
        ),
    })
}

/// A plain HTTP client (login, search), with the same TLS and proxy settings; `insecure`
/// skips certificate checks (insecure registries). Built once per kind, then shared.
pub fn http_client(insecure: bool) -> Result<reqwest::Client, RegistryError> {
    let mut kept = HTTP_CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    let slot = &mut kept[usize::from(insecure)];
    if let Some(client) = slot {
        return Ok(client.clone());
    }
    install_crypto_provider();
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(insecure)
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("rmachine-engine/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| RegistryError::InvalidParameter {
            message: format!("cannot build the registry client: {e}"),
        })?;
    *slot = Some(client.clone());
    Ok(client)
}

/// Whether an error is worth retrying: the network, or a registry answering 5xx.
fn is_transient(err: &OciDistributionError) -> bool {
    match err {
        OciDistributionError::RequestError(e) => {
            e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
        }
        OciDistributionError::IoError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code >= 500,
        _ => false,
    }
}

/// The registry's first error as distribution's `errcode.Error` prints it:
/// `manifest unknown: manifest unknown`, and its code (`MANIFEST_UNKNOWN`).
fn envelope_error(err: &OciDistributionError) -> Option<(String, String)> {
    let OciDistributionError::RegistryError { envelope, .. } = err else {
        return None;
    };
    let first = envelope.errors.first()?;
    let code = serde_json::to_value(&first.code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "UNKNOWN".to_string());
    let text = format!(
        "{}: {}",
        code.replace('_', " ").to_lowercase(),
        first.message
    );
    Some((code, text))
}

/// An error as plain text with its causes, for messages.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_result_is_dockerds_aux_line_without_a_status() {
        let line = Progress {
            id: None,
            status: String::new(),
            detail: Detail::PushResult {
                tag: "1".to_string(),
                digest: "sha256:abc".to_string(),
                size: 527,
            },
        };
        assert_eq!(
            line.to_json(),
            serde_json::json!({
                "progressDetail": {},
                "aux": {"Tag": "1", "Digest": "sha256:abc", "Size": 527},
            })
        );
    }

    #[test]
    fn clients_are_kept_per_endpoint_and_credentials() {
        let endpoint = Endpoint {
            host: "127.0.0.1:5999".to_string(),
            plain_http: true,
            insecure: true,
            mirror: false,
        };
        let basic = |password: &str| RegistryAuth::Basic("u".to_string(), password.to_string());
        let key = ClientKey::new(&endpoint, &basic("p"));
        assert_eq!(key, ClientKey::new(&endpoint, &basic("p")));
        // Other credentials, none, or another scheme never share a client (or its tokens).
        assert_ne!(key, ClientKey::new(&endpoint, &basic("q")));
        assert_ne!(key, ClientKey::new(&endpoint, &RegistryAuth::Anonymous));
        let https = Endpoint {
            plain_http: false,
            ..endpoint.clone()
        };
        assert_ne!(key, ClientKey::new(&https, &basic("p")));
    }

    #[test]
    fn loopback_and_listed_registries_are_insecure() {
        let config = RegistryConfig::new(&[], &["reg.local:5000".to_string()]).unwrap();
        assert!(is_insecure(&config, "127.0.0.1:5000"));
        assert!(is_insecure(&config, "localhost:5000"));
        assert!(is_insecure(&config, "reg.local:5000"));
        assert!(!is_insecure(&config, "reg.local:5001"));
        assert!(!is_insecure(&config, "10.0.0.1:5000"));
        assert!(!is_insecure(&config, "example.com"));
    }

    #[test]
    fn docker_hub_names_go_to_the_mirrors_first() {
        let config = RegistryConfig::new(&["http://10.0.2.2:5000".to_string()], &[]).unwrap();
        let e = endpoints(&config, "docker.io");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].host, "10.0.2.2:5000");
        assert!(e[0].plain_http && e[0].mirror);
        assert_eq!(e[1].host, "registry-1.docker.io");
        assert!(!e[1].plain_http);
        let e = endpoints(&config, "127.0.0.1:5000");
        assert_eq!(e.len(), 1);
        assert!(e[0].plain_http && !e[0].mirror);
    }

    #[test]
    fn progress_lines_have_dockers_shape() {
        assert_eq!(
            Progress::message(Some("latest"), "Pulling from library/busybox").to_json(),
            serde_json::json!({"status": "Pulling from library/busybox", "id": "latest"})
        );
        assert_eq!(
            Progress::layer("0123456789ab", "Pull complete").to_json(),
            serde_json::json!({"status": "Pull complete", "progressDetail": {}, "id": "0123456789ab"})
        );
        let p = Progress {
            id: Some("0123456789ab".into()),
            status: "Downloading".into(),
            detail: Detail::Bytes {
                current: 1_500_000,
                total: 3_000_000,
            },
        }
        .to_json();
        assert_eq!(
            p["progressDetail"],
            serde_json::json!({"current": 1500000, "total": 3000000})
        );
        assert!(p["progress"].as_str().unwrap().ends_with("1.5MB/3MB"));
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1234567), "1.235MB");
    }

    #[test]
    fn progress_bars_are_drawn_as_moby_draws_them() {
        assert_eq!(
            progress_bar(3_000_000, 3_000_000),
            format!("[{}>] {:>8}/3MB", "=".repeat(50), "3MB")
        );
        assert_eq!(
            progress_bar(1_000, 4_000),
            format!("[{}>{}] {:>8}/4kB", "=".repeat(12), " ".repeat(38), "1kB")
        );
        assert_eq!(
            progress_bar(0, 10),
            format!("[>{}]       0B/10B", " ".repeat(50))
        );
        assert_eq!(progress_bar(1_500, 0), "   1.5kB");
    }
}
