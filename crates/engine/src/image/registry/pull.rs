//! `docker pull`: manifest, platform choice, config, layers (three at a time, streamed through
//! the digest check into the extractor), then one commit. See the module docs of
//! [`super`] for the data flow.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Semaphore};

use super::{
    chain, client_for, endpoints, envelope_error, forget_client, is_transient, is_unauthorized,
    Detail, Endpoint, Progress, RegistryError,
};
use crate::image::pulled::StagedLayer;
use crate::image::reference::Reference;
use crate::image::{short_id, ImageStore};
use crate::registry_config::RegistryConfig;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Docker's foreign layer (pulled from the registry by digest on Linux, never pushed).
pub(super) const DOCKER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// OCI's non-distributable layers (`…tar`, `…tar+gzip`, `…tar+zstd`).
const OCI_NONDISTRIBUTABLE: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
/// Layers downloaded at once, as dockerd's default `max-concurrent-downloads`.
const CONCURRENT_DOWNLOADS: usize = 3;
/// Attempts at a request that fails for network reasons (dockerd retries 5 times).
const ATTEMPTS: u32 = 5;
/// Largest manifest or config accepted.
const JSON_LIMIT: usize = 16 << 20;
/// Bytes between two `Downloading` lines.
const PROGRESS_STEP: u64 = 512 << 10;

/// A platform: `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`...
    pub architecture: String,
    /// `v8`, `v7`...
    pub variant: Option<String>,
}

impl Platform {
    /// The engine's own platform.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            other => (other, None),
        };
        Platform {
            os: "linux".to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Parses the `platform` query parameter (`linux/arm64/v8`, `linux/amd64`).
    pub fn parse(text: &str) -> Result<Platform, RegistryError> {
        let parts: Vec<&str> = text.split('/').collect();
        let invalid = || RegistryError::InvalidParameter {
            message: format!("invalid platform: {text:?}: expected os/arch[/variant]"),
        };
        let (os, arch, variant) = match parts.as_slice() {
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] => (*os, *arch, Some(variant.to_string())),
            _ => return Err(invalid()),
        };
        if os.is_empty() || arch.is_empty() {
            return Err(invalid());
        }
        let (architecture, variant) = match (arch, variant) {
            ("x86_64" | "x86-64", v) => ("amd64".to_string(), v),
            ("aarch64", None) | ("arm64", None) => ("arm64".to_string(), None),
            (a, v) => (a.to_string(), v),
        };
        Ok(Platform {
            os: os.to_ascii_lowercase(),
            architecture,
            variant,
        })
    }

    fn matches(&self, other: &IndexPlatform) -> bool {
        if self.os != other.os || self.architecture != other.architecture {
            return false;
        }
        match (&self.variant, &other.variant) {
            (Some(want), Some(have)) => want == have,
            // arm64 images often omit "v8".
            _ => true,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What `POST /images/create?fromImage=` asks for.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The image: with a tag, a digest, or neither (with `all_tags`).
    pub reference: Reference,
    /// `pull -a`: every tag of the repository.
    pub all_tags: bool,
    /// Credentials from `X-Registry-Auth`.
    pub auth: RegistryAuth,
    /// `--platform`, else the engine's.
    pub platform: Option<Platform>,
}

/// The result of a pull, for events.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// Familiar references pulled (`busybox:latest`, `busybox@sha256:…`).
    pub references: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: i64,
    /// Where a foreign (non-distributable) layer may be found; kept for a push, never fetched.
    #[serde(default)]
    urls: Vec<String>,
}

impl Descriptor {
    /// Docker's foreign layers (Windows base layers) and OCI's non-distributable ones: pulled
    /// from the registry by digest like any layer (dockerd on Linux), their descriptor kept so
    /// a push refers to it instead of uploading the layer.
    fn is_foreign(&self) -> bool {
        !self.urls.is_empty()
            && (self.media_type == DOCKER_FOREIGN
                || self.media_type.starts_with(OCI_NONDISTRIBUTABLE))
    }
}

#[derive(Debug, Deserialize)]
struct IndexPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IndexEntry {
    digest: String,
    #[serde(default)]
    platform: Option<IndexPlatform>,
}

#[derive(Debug, Deserialize)]
struct RawManifest {
    #[serde(rename = "schemaVersion", default)]
    schema_version: i64,
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<IndexEntry>>,
}

/// One registry endpoint and the repository there, with the credentials to use.
struct Remote {
    client: oci_client::Client,
    endpoint: Endpoint,
    auth: RegistryAuth,
    /// The user's reference (for messages).
    reference: Reference,
    /// The registry answered 401 to one of its requests.
    unauthorized: AtomicBool,
}

impl Remote {
    fn oci_ref(&self, tag: Option<&str>, digest: Option<&str>) -> oci_client::Reference {
        let registry = self.endpoint.host.clone();
        let repo = self.reference.path.clone();
        match (tag, digest) {
            (_, Some(d)) => oci_client::Reference::with_digest(registry, repo, d.to_string()),
            (Some(t), None) => oci_client::Reference::with_tag(registry, repo, t.to_string()),
            (None, None) => oci_client::Reference::with_tag(registry, repo, "latest".to_string()),
        }
    }

    /// Runs `op` until it succeeds, fails for a reason other than the network, or has been
    /// tried [`ATTEMPTS`] times.
    async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if is_transient(&e) && attempt < ATTEMPTS => {
                    tracing::warn!(what, attempt, error = %chain(&e), "registry request failed, retrying");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                }
                Err(e) => return Err(self.translate(e, what)),
            }
        }
    }

    /// dockerd's `translatePullError` wording for an error about `what`.
    fn translate(&self, err: OciDistributionError, what: &str) -> RegistryError {
        if is_unauthorized(&err) {
            self.unauthorized.store(true, Ordering::Relaxed);
        }
        let reference = self.reference.familiar();
        let name = self.reference.familiar_name();
        if let Some((code, text)) = envelope_error(&err) {
            let message = match code.as_str() {
                "DENIED" => format!(
                    "pull access denied for {name}, repository does not exist or may require 'docker login': {text}"
                ),
                "MANIFEST_UNKNOWN" => format!("manifest for {what} not found: {text}"),
                "NAME_UNKNOWN" => format!("repository {name} not found: {text}"),
                _ => return RegistryError::Registry { reference, message: text },
            };
            return RegistryError::NotFound { reference, message };
        }
        match &err {
            OciDistributionError::UnauthorizedError { .. }
            // Not `Unauthorized`: dockerd answers a refused pull as not found (404), and a 401
            // would make the CLI prompt for credentials.
            | OciDistributionError::AuthenticationFailure(_) => RegistryError::NotFound {
                reference,
                message: format!(
                    "pull access denied for {name}, repository does not exist or may require 'docker login': {}",
                    match &err {
                        OciDistributionError::AuthenticationFailure(reason) =>
                            format!("unauthorized: {}", reason.trim()),
                        _ => "unauthorized: authentication required".to_string(),
                    }
                ),
            },
            e if is_transient(e) => RegistryError::Unreachable {
                reference,
                registry: self.endpoint.host.clone(),
                message: chain(e),
            },
            OciDistributionError::DigestError(_) => RegistryError::DigestMismatch {
                digest: what.to_string(),
                actual: chain(&err),
            },
            e => RegistryError::Registry {
                reference,
                message: format!("error pulling {what}: {}", chain(e)),
            },
        }
    }

    /// Fetches a manifest (or index) by tag or digest; returns its bytes and digest.
    async fn manifest(
        &self,
        tag: Option<&str>,
        digest: Option<&str>,
        what: &str,
    ) -> Result<(Bytes, String), RegistryError> {
        let oref = self.oci_ref(tag, digest);
        let accepted = [
            DOCKER_MANIFEST,
            DOCKER_LIST,
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_SCHEMA1,
        ];
        let (bytes, _) = self
            .retry(what, || {
                self.client.pull_manifest_raw(&oref, &self.auth, &accepted)
            })
            .await?;
        if bytes.len() > JSON_LIMIT {
            return Err(RegistryError::Registry {
                reference: self.reference.familiar(),
                message: format!("manifest for {what} is too large"),
            });
        }
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if let Some(digest) = digest {
            if digest != actual {
                return Err(RegistryError::DigestMismatch {
                    digest: digest.to_string(),
                    actual,
                });
            }
        }
        Ok((bytes, actual))
    }

    /// Fetches a small blob whole (the config) and checks its digest.
    async fn small_blob(&self, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let oref = self.oci_ref(None, Some(digest));
        let mut attempt = 0;
        let out = loop {
            attempt += 1;
            let mut out = Vec::new();
            match self.client.pull_blob(&oref, digest, &mut out).await {
                Ok(()) => break out,
                Err(e) if is_transient(&e) && attempt < ATTEMPTS => {
                    tracing::warn!(digest, attempt, error = %chain(&e), "registry request failed, retrying");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                }
                Err(e) => return Err(self.translate(e, digest)),
            }
        };
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&out)));
        if actual != digest {
            return Err(RegistryError::DigestMismatch {
                digest: digest.to_string(),
                actual,
            });
        }
        Ok(out)
    }
}

/// Reads the byte chunks a download task sends, for the (blocking) extractor.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Pulls `options.reference` (or every tag of it) into `store`, reporting on `progress`.
pub async fn pull(
    store: Arc<ImageStore>,
    config: &RegistryConfig,
    options: PullOptions,
    progress: &mpsc::UnboundedSender<Progress>,
) -> Result<Pulled, RegistryError> {
    let reference = options.reference.familiar();
    pull_endpoints(store, config, options, progress)
        .await
        .map_err(|e| match e {
            // The store's own message names a staging file; the user needs the image too.
            RegistryError::Store(source @ crate::image::ImageError::Io { .. }) => {
                RegistryError::Storing { reference, source }
            }
            e => e,
        })
}

async fn pull_endpoints(
    store: Arc<ImageStore>,
    config: &RegistryConfig,
    options: PullOptions,
    progress: &mpsc::UnboundedSender<Progress>,
) -> Result<Pulled, RegistryError> {
    let endpoints = endpoints(config, &options.reference.domain);
    let mut last_err = None;
    for endpoint in endpoints {
        let endpoint = super::settle(endpoint).await;
        let leased = client_for(&endpoint, &options.auth)?;
        let remote = Remote {
            client: leased.client,
            endpoint: endpoint.clone(),
            auth: options.auth.clone(),
            reference: options.reference.clone(),
            unauthorized: AtomicBool::new(false),
        };
        let mut result = pull_from(&store, &remote, &options, progress).await;
        if result.is_err() && leased.kept && remote.unauthorized.load(Ordering::Relaxed) {
            // The kept client's tokens were refused (revoked, a rotated signing key, or
            // bought before the repository was made public): once more with a new client.
            forget_client(&endpoint, &options.auth);
            let remote = Remote {
                client: client_for(&endpoint, &options.auth)?.client,
                unauthorized: AtomicBool::new(false),
                ..remote
            };
            result = pull_from(&store, &remote, &options, progress).await;
        }
        match result {
            Ok(pulled) => return Ok(pulled),
            // A mirror that fails hands over to the next endpoint, as in dockerd.
            Err(e) if endpoint.mirror => {
                tracing::warn!(mirror = %endpoint.host, error = %e, "pull from mirror failed, trying the next endpoint");
                last_err = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| RegistryError::Registry {
        reference: options.reference.familiar(),
        message: "no registry endpoint to pull from".to_string(),
    }))
}

async fn pull_from(
    store: &Arc<ImageStore>,
    remote: &Remote,
    options: &PullOptions,
    progress: &mpsc::UnboundedSender<Progress>,
) -> Result<Pulled, RegistryError> {
    if !matches!(remote.auth, RegistryAuth::Anonymous) {
        // Surfaces refused credentials now, with the token server's answer; later requests
        // reuse the token.
        let oref = remote.oci_ref(options.reference.tag.as_deref(), None);
        remote
            .retry(&options.reference.familiar(), || {
                remote
                    .client
                    .auth(&oref, &remote.auth, oci_client::RegistryOperation::Pull)
            })
            .await?;
    }
    let platform = options.platform.clone().unwrap_or_else(Platform::host);
    let mut pulled = Vec::new();
    if options.all_tags && options.reference.tag.is_none() && options.reference.digest.is_none() {
        let oref = remote.oci_ref(None, None);
        let tags = remote
            .retry(&options.reference.familiar(), || {
                remote.client.list_tags(&oref, &remote.auth, None, None)
            })
            .await?
            .tags;
        let mut updated = false;
        for tag in tags {
            let mut r = options.reference.clone();
            r.tag = Some(tag);
            let (name, u) = pull_one(store, remote, &r, &platform, progress).await?;
            updated |= u;
            pulled.push(name);
        }
        write_status(progress, &options.reference.familiar(), updated);
    } else {
        let r = options.reference.clone().with_default_tag();
        let (name, updated) = pull_one(store, remote, &r, &platform, progress).await?;
        write_status(progress, &r.familiar(), updated);
        pulled.push(name);
    }
    Ok(Pulled { references: pulled })
}

fn write_status(progress: &mpsc::UnboundedSender<Progress>, name: &str, updated: bool) {
    let status = if updated {
        format!("Status: Downloaded newer image for {name}")
    } else {
        format!("Status: Image is up to date for {name}")
    };
    let _ = progress.send(Progress::message(None, status));
}

/// Pulls one tag or digest; returns its familiar reference and whether it changed anything.
async fn pull_one(
    store: &Arc<ImageStore>,
    remote: &Remote,
    reference: &Reference,
    platform: &Platform,
    progress: &mpsc::UnboundedSender<Progress>,
) -> Result<(String, bool), RegistryError> {
    let what = reference.familiar();
    let tag_or_digest = reference
        .digest
        .clone()
        .or_else(|| reference.tag.clone())
        .unwrap_or_else(|| "latest".to_string());
    if let Some(digest) = up_to_date(store, remote, reference, platform).await {
        // dockerd stops once it sees the config is here; a HEAD on the manifest is enough to
        // know that, without fetching manifest and config again.
        let _ = progress.send(Progress::message(
            Some(&tag_or_digest),
            format!("Pulling from {}", reference.path),
        ));
        let _ = progress.send(Progress::message(None, format!("Digest: {digest}")));
        return Ok((what, false));
    }
    let (mut bytes, manifest_digest) = remote
        .manifest(reference.tag.as_deref(), reference.digest.as_deref(), &what)
        .await?;
    let parse = |bytes: &[u8]| -> Result<RawManifest, RegistryError> {
        serde_json::from_slice(bytes).map_err(|e| RegistryError::Registry {
            reference: what.clone(),
            message: format!("invalid manifest for {what}: {e}"),
        })
    };
    let mut manifest = parse(&bytes)?;
    if manifest.schema_version == 1 || manifest.media_type == DOCKER_SCHEMA1 {
        return Err(RegistryError::Registry {
            reference: what.clone(),
            message: format!(
                "[DEPRECATION NOTICE] Docker Image Format v1 and Docker Image manifest version 2, schema 1 support is disabled by default and will be removed in an upcoming release. Suggest the author of {what} to upgrade the image to the OCI Format or Docker Image manifest v2, schema 2."
            ),
        });
    }
    if let Some(entries) = &manifest.manifests {
        let chosen = entries
            .iter()
            .find(|e| e.platform.as_ref().is_some_and(|p| platform.matches(p)))
            .ok_or_else(|| RegistryError::NoMatchingPlatform {
                reference: what.clone(),
                platform: platform.to_string(),
            })?;
        let digest = chosen.digest.clone();
        let (inner, _) = remote.manifest(None, Some(&digest), &what).await?;
        bytes = inner;
        manifest = parse(&bytes)?;
        if manifest.manifests.is_some() {
            return Err(RegistryError::Registry {
                reference: what.clone(),
                message: format!("nested manifest lists are not supported ({what})"),
            });
        }
    }
    let (Some(config_desc), Some(layers)) = (manifest.config, manifest.layers) else {
        return Err(RegistryError::Registry {
            reference: what.clone(),
            message: format!("invalid manifest for {what}: no config or layers"),
        });
    };
    if config_desc.media_type.contains("wasm") || config_desc.media_type.contains("helm") {
        return Err(RegistryError::Registry {
            reference: what.clone(),
            message: format!(
                "Encountered remote {:?}({}) when fetching",
                config_desc.media_type, config_desc.digest
            ),
        });
    }
    let _ = progress.send(Progress::message(
        Some(&tag_or_digest),
        format!("Pulling from {}", reference.path),
    ));

    let config = remote.small_blob(&config_desc.digest).await?;
    let diff_ids = crate::image::archive::config_diff_ids(&config)?;
    if diff_ids.len() != layers.len() {
        return Err(RegistryError::Registry {
            reference: what.clone(),
            message: "layers from manifest don't match image configuration".to_string(),
        });
    }

    // Layers already in the store are never fetched.
    let mut wanted = Vec::new();
    for (desc, diff_id) in layers.iter().zip(&diff_ids) {
        let id = short_id(&desc.digest).to_string();
        if store.has_layer(diff_id) {
            let _ = progress.send(Progress::layer(&id, "Already exists"));
        } else if !wanted
            .iter()
            .any(|(d, _): &(&Descriptor, &String)| d.digest == desc.digest)
        {
            let _ = progress.send(Progress::layer(&id, "Pulling fs layer"));
            wanted.push((desc, diff_id));
        }
    }
    for (desc, _) in wanted.iter().skip(CONCURRENT_DOWNLOADS) {
        let _ = progress.send(Progress::layer(short_id(&desc.digest), "Waiting"));
    }
    let slots = Arc::new(Semaphore::new(CONCURRENT_DOWNLOADS));
    let downloads = wanted.iter().map(|(desc, diff_id)| {
        let slots = slots.clone();
        async move {
            let _slot = slots.acquire().await.map_err(|_| RegistryError::Registry {
                reference: remote.reference.familiar(),
                message: "download queue closed".to_string(),
            })?;
            fetch_layer(store, remote, desc, diff_id, progress).await
        }
    });
    let staged: Vec<StagedLayer> = futures_util::future::try_join_all(downloads).await?;

    let repo_digest = format!("{}@{manifest_digest}", reference.familiar_name());
    let tag = reference.digest.is_none().then(|| reference.clone());
    let store2 = store.clone();
    let commit = tokio::task::spawn_blocking(move || {
        store2.commit_pull(&config, staged, tag.as_ref(), &repo_digest)
    })
    .await
    .map_err(|e| RegistryError::Registry {
        reference: what.clone(),
        message: format!("internal task failed: {e}"),
    })??;
    let _ = progress.send(Progress::message(
        None,
        format!("Digest: {manifest_digest}"),
    ));
    Ok((what, commit.updated))
}

/// The manifest digest of `reference` when the store already has its image, for `platform`,
/// under that tag (or digest) with every layer: a pull then has nothing to do. A tag's digest
/// comes from a HEAD request; any failure there leaves the decision to the full pull.
async fn up_to_date(
    store: &Arc<ImageStore>,
    remote: &Remote,
    reference: &Reference,
    platform: &Platform,
) -> Option<String> {
    let digest = match &reference.digest {
        Some(digest) => digest.clone(),
        None => {
            let oref = remote.oci_ref(reference.tag.as_deref(), None);
            match remote
                .client
                .fetch_manifest_digest(&oref, &remote.auth)
                .await
            {
                Ok(digest) => digest,
                Err(e) => {
                    tracing::debug!(reference = %reference.familiar(), error = %chain(&e), "manifest HEAD failed");
                    return None;
                }
            }
        }
    };
    let repo_digest = format!("{}@{digest}", reference.familiar_name());
    let tag = reference.digest.is_none().then_some(reference);
    let (_, config) = store.already_pulled(tag, &repo_digest)?;
    // An index digest names every platform: the image here must be the one asked for, its
    // variant included (linux/arm/v6 and v7 share os and architecture).
    let field = |name: &str| config[name].as_str().unwrap_or_default().to_string();
    let here = IndexPlatform {
        os: field("os"),
        architecture: field("architecture"),
        variant: config["variant"].as_str().map(str::to_string),
    };
    platform.matches(&here).then_some(digest)
}

/// Downloads one layer blob, streaming it through the digest check into the extractor;
/// retried from scratch on network errors.
async fn fetch_layer(
    store: &Arc<ImageStore>,
    remote: &Remote,
    desc: &Descriptor,
    diff_id: &str,
    progress: &mpsc::UnboundedSender<Progress>,
) -> Result<StagedLayer, RegistryError> {
    let id = short_id(&desc.digest).to_string();
    let oref = remote.oci_ref(None, Some(&desc.digest));
    let mut attempt = 0;
    loop {
        attempt += 1;
        match fetch_layer_once(store, remote, &oref, desc, &id, progress).await {
            Ok(staged) => {
                if staged.diff_id != diff_id {
                    return Err(RegistryError::Store(
                        crate::image::ImageError::DiffIdMismatch {
                            expected: diff_id.to_string(),
                            actual: staged.diff_id.clone(),
                        },
                    ));
                }
                let _ = progress.send(Progress::layer(&id, "Pull complete"));
                super::cache::remember(
                    &store.distribution_cache_path(),
                    diff_id,
                    super::cache::BlobSource {
                        digest: desc.digest.clone(),
                        size: u64::try_from(desc.size).unwrap_or(0),
                        registry: remote.endpoint.host.clone(),
                        repository: remote.reference.path.clone(),
                    },
                );
                return Ok(staged);
            }
            Err(Fetch::Network(e)) if attempt < ATTEMPTS => {
                tracing::warn!(layer = %desc.digest, attempt, error = %chain(&e), "layer download failed, retrying");
                let _ = progress.send(Progress::layer(
                    &id,
                    format!("Retrying in {} seconds", attempt),
                ));
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            }
            Err(Fetch::Network(e)) => return Err(remote.translate(e, &desc.digest)),
            Err(Fetch::Failed(e)) => return Err(e),
        }
    }
}

enum Fetch {
    Network(OciDistributionError),
    Failed(RegistryError),
}

async fn fetch_layer_once(
    store: &Arc<ImageStore>,
    remote: &Remote,
    oref: &oci_client::Reference,
    desc: &Descriptor,
    id: &str,
    progress: &mpsc::UnboundedSender<Progress>,
) -> Result<StagedLayer, Fetch> {
    // Foreign layers too come from the registry by digest, as dockerd on Linux: their URLs
    // are kept for a push, never fetched (they could name any host, the guest's own included).
    let (mut stream, content_length) = match remote
        .client
        .pull_blob_stream(oref, desc.digest.as_str())
        .await
    {
        Ok(sized) => (sized.stream, sized.content_length),
        Err(e) if is_transient(&e) => return Err(Fetch::Network(e)),
        Err(e) => return Err(Fetch::Failed(remote.translate(e, &desc.digest))),
    };
    let total = content_length
        .or_else(|| u64::try_from(desc.size).ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let store2 = store.clone();
    let name = desc.digest.clone();
    let extractor = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader {
            rx,
            current: Bytes::new(),
        };
        let result = store2.stage_layer(&mut reader, &name);
        // Whatever the extractor left (the compressor's trailer, or everything after a
        // failure) is still read, so the download completes and its digest can be checked.
        let _ = io::copy(&mut reader, &mut io::sink());
        result
    });
    let mut hasher = Sha256::new();
    let mut current = 0u64;
    let mut reported = 0u64;
    let mut network_error = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                hasher.update(&chunk);
                current += chunk.len() as u64;
                if current - reported >= PROGRESS_STEP || current == total {
                    reported = current;
                    let _ = progress.send(Progress {
                        id: Some(id.to_string()),
                        status: "Downloading".to_string(),
                        detail: Detail::Bytes { current, total },
                    });
                }
                // When the extractor has failed this send fails: the download goes on, hashed,
                // so that a corrupted blob is reported as such rather than as a bad tar.
                let _ = tx.send(chunk).await;
            }
            Err(e) => {
                network_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let staged = extractor.await.map_err(|e| {
        Fetch::Failed(RegistryError::Registry {
            reference: remote.reference.familiar(),
            message: format!("internal task failed: {e}"),
        })
    })?;
    let _ = progress.send(Progress::layer(id, "Verifying Checksum"));
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if let Some(e) = network_error {
        // oci-client's own verification reports a mismatch as an error at the stream's end.
        let verification = e
            .get_ref()
            .is_some_and(|inner| inner.is::<oci_client::errors::DigestError>());
        if verification {
            return Err(Fetch::Failed(RegistryError::DigestMismatch {
                digest: desc.digest.clone(),
                actual,
            }));
        }
        return Err(Fetch::Network(OciDistributionError::IoError(e)));
    }
    if actual != desc.digest {
        return Err(Fetch::Failed(RegistryError::DigestMismatch {
            digest: desc.digest.clone(),
            actual,
        }));
    }
    let _ = progress.send(Progress::layer(id, "Download complete"));
    let staged = staged.map_err(|e| Fetch::Failed(RegistryError::Store(e)))?;
    if desc.is_foreign() {
        // Kept with the layer, so a push refers to the URLs instead of uploading it.
        let foreign = crate::image::pulled::ForeignLayer {
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: u64::try_from(desc.size).unwrap_or(current),
            urls: desc.urls.clone(),
        };
        staged
            .set_foreign(&foreign)
            .map_err(|e| Fetch::Failed(RegistryError::Store(e)))?;
    }
    let _ = progress.send(Progress {
        id: Some(id.to_string()),
        status: "Extracting".to_string(),
        detail: Detail::Bytes {
            current,
            total: current,
        },
    });
    Ok(staged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_match() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(p.matches(&IndexPlatform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: None,
        }));
        assert!(!p.matches(&IndexPlatform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }));
        assert!(Platform::parse("linux").is_err());
        assert_eq!(
            Platform::parse("linux/x86_64").unwrap().architecture,
            "amd64"
        );
    }
}
