//! `docker push`: per tag, each layer is found in the registry (HEAD, by the blob digests
//! remembered for its diff id), mounted from another repository of the same registry, or
//! exported from the store (`write_layer`, the original tar rebuilt), gzip-compressed into a
//! scratch file under `image/tmp` and uploaded; then the config and a Docker schema-2
//! manifest.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, Semaphore};

use super::cache::{self, BlobSource};
use super::{
    chain, client_for, endpoints, envelope_error, Detail, Endpoint, Progress, RegistryError,
};
use crate::image::reference::Reference;
use crate::image::{short_id, ImageStore};
use crate::registry_config::RegistryConfig;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Layers uploaded at once.
const CONCURRENT_UPLOADS: usize = 3;
/// Bytes per upload chunk (and between two `Pushing` lines).
const CHUNK: usize = 1 << 20;

/// What `POST /images/{name}/push?tag=` asks for.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// The repository, with the tag to push (none: every tag of the repository).
    pub reference: Reference,
    /// Credentials from `X-Registry-Auth`.
    pub auth: RegistryAuth,
}

struct Target {
    client: oci_client::Client,
    endpoint: Endpoint,
    auth: RegistryAuth,
    repository: Reference,
}

impl Target {
    fn oci_ref(&self, tag: &str) -> oci_client::Reference {
        oci_client::Reference::with_tag(
            self.endpoint.host.clone(),
            self.repository.path.clone(),
            tag.to_string(),
        )
    }

    fn translate(&self, err: OciDistributionError) -> RegistryError {
        let reference = self.repository.familiar();
        if let Some((_, text)) = envelope_error(&err) {
            return RegistryError::Registry {
                reference,
                message: text,
            };
        }
        match err {
            OciDistributionError::RequestError(e)
                if e.status() == Some(reqwest::StatusCode::UNAUTHORIZED) =>
            {
                RegistryError::Registry {
                    reference,
                    message: "unauthorized: authentication required".to_string(),
                }
            }
            OciDistributionError::UnauthorizedError { .. } => RegistryError::Registry {
                reference,
                message: "unauthorized: authentication required".to_string(),
            },
            OciDistributionError::AuthenticationFailure(reason) => RegistryError::Registry {
                reference,
                message: format!("unauthorized: {}", reason.trim()),
            },
            e if super::is_transient(&e) => RegistryError::Unreachable {
                reference,
                registry: self.endpoint.host.clone(),
                message: chain(&e),
            },
            e => RegistryError::Registry {
                reference,
                message: chain(&e),
            },
        }
    }
}

/// A writer that hashes and counts what goes through it.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Pushes `options.reference` (or every tag of its repository) from `store`.
pub async fn push(
    store: Arc<ImageStore>,
    config: &RegistryConfig,
    options: PushOptions,
    progress: &mpsc::UnboundedSender<Progress>,
) -> Result<Vec<String>, RegistryError> {
    let repository = Reference {
        tag: None,
        digest: None,
        ..options.reference.clone()
    };
    let tags = match &options.reference.tag {
        Some(_) => vec![options.reference.clone()],
        None => store.repository_tags(&repository),
    };
    if tags.is_empty() {
        return Err(RegistryError::NotFound {
            reference: repository.familiar(),
            message: format!(
                "An image does not exist locally with the tag: {}",
                repository.familiar()
            ),
        });
    }
    let endpoint = endpoints(config, &repository.domain)
        .into_iter()
        .find(|e| !e.mirror)
        .ok_or_else(|| RegistryError::InvalidParameter {
            message: format!("no endpoint for registry {}", repository.domain),
        })?;
    let endpoint = super::settle(endpoint).await;
    let target = Target {
        client: client_for(&endpoint)?,
        endpoint,
        auth: options.auth.clone(),
        repository,
    };
    let _ = progress.send(Progress::message(
        None,
        format!(
            "The push refers to repository [{}]",
            target.repository.full_name()
        ),
    ));
    let first = target.oci_ref("latest");
    target
        .client
        .auth(&first, &target.auth, oci_client::RegistryOperation::Push)
        .await
        .map_err(|e| target.translate(e))?;
    let mut pushed = Vec::new();
    for tag in tags {
        let source = store
            .push_source(&tag)
            .map_err(|_| RegistryError::NotFound {
                reference: tag.familiar(),
                message: format!(
                    "An image does not exist locally with the tag: {}",
                    tag.familiar_name()
                ),
            })?;
        let tag_name = tag.tag.clone().unwrap_or_else(|| "latest".to_string());
        let oref = target.oci_ref(&tag_name);
        let mut unique: Vec<&String> = Vec::new();
        for d in source.diff_ids.iter().rev() {
            if !unique.contains(&d) {
                unique.push(d);
            }
        }
        for d in &unique {
            let _ = progress.send(Progress::layer(short_id(d), "Preparing"));
        }
        for d in unique.iter().skip(CONCURRENT_UPLOADS) {
            let _ = progress.send(Progress::layer(short_id(d), "Waiting"));
        }
        let slots = Arc::new(Semaphore::new(CONCURRENT_UPLOADS));
        let uploads = unique.iter().map(|diff_id| {
            let slots = slots.clone();
            let store = store.clone();
            let target = &target;
            let oref = &oref;
            async move {
                let _slot = slots.acquire().await.map_err(|_| RegistryError::Registry {
                    reference: target.repository.familiar(),
                    message: "upload queue closed".to_string(),
                })?;
                let blob = push_layer(&store, target, oref, diff_id, progress).await?;
                Ok::<_, RegistryError>(((*diff_id).clone(), blob))
            }
        });
        let blobs: Vec<(String, BlobSource)> = futures_util::future::try_join_all(uploads).await?;
        let layers: Vec<serde_json::Value> = source
            .diff_ids
            .iter()
            .filter_map(|d| blobs.iter().find(|(id, _)| id == d))
            .map(|(_, b)| {
                serde_json::json!({"mediaType": DOCKER_LAYER, "size": b.size, "digest": b.digest})
            })
            .collect();

        if !target
            .client
            .blob_exists(&oref, &source.id)
            .await
            .map_err(|e| target.translate(e))?
        {
            target
                .client
                .push_blob(&oref, source.config.clone(), &source.id)
                .await
                .map_err(|e| target.translate(e))?;
        }
        let manifest = serde_json::to_vec_pretty(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": source.config.len(), "digest": source.id},
            "layers": layers,
        }))
        .map_err(|e| RegistryError::Registry {
            reference: tag.familiar(),
            message: format!("cannot encode the manifest: {e}"),
        })?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
        let size = manifest.len();
        target
            .client
            .push_manifest_raw(
                &oref,
                manifest,
                reqwest::header::HeaderValue::from_static(DOCKER_MANIFEST),
            )
            .await
            .map_err(|e| target.translate(e))?;
        let _ = progress.send(Progress::message(
            None,
            format!("{tag_name}: digest: {digest} size: {size}"),
        ));
        let repo_digest = format!("{}@{digest}", tag.familiar_name());
        let store2 = store.clone();
        let id = source.id.clone();
        tokio::task::spawn_blocking(move || store2.add_repo_digest(&id, &repo_digest))
            .await
            .map_err(|e| RegistryError::Registry {
                reference: tag.familiar(),
                message: format!("internal task failed: {e}"),
            })??;
        pushed.push(tag.familiar());
    }
    Ok(pushed)
}

/// Makes one layer present in the target repository; returns its blob.
async fn push_layer(
    store: &Arc<ImageStore>,
    target: &Target,
    oref: &oci_client::Reference,
    diff_id: &str,
    progress: &mpsc::UnboundedSender<Progress>,
) -> Result<BlobSource, RegistryError> {
    let id = short_id(diff_id).to_string();
    let cache_path = store.distribution_cache_path();
    let host = target.endpoint.host.clone();
    let repo = target.repository.path.clone();
    let known = cache::lookup(&cache_path, diff_id, &host);
    for source in known.iter().filter(|s| s.repository == repo) {
        if target
            .client
            .blob_exists(oref, &source.digest)
            .await
            .unwrap_or(false)
        {
            let _ = progress.send(Progress::layer(&id, "Layer already exists"));
            return Ok(source.clone());
        }
    }
    for source in known.iter().filter(|s| s.repository != repo) {
        let from = oci_client::Reference::with_tag(
            host.clone(),
            source.repository.clone(),
            "latest".to_string(),
        );
        if target
            .client
            .mount_blob(oref, &from, &source.digest)
            .await
            .is_ok()
        {
            let _ = progress.send(Progress::layer(
                &id,
                format!("Mounted from {}", source.repository),
            ));
            let mounted = BlobSource {
                repository: repo.clone(),
                ..source.clone()
            };
            cache::remember(&cache_path, diff_id, mounted.clone());
            return Ok(mounted);
        }
    }

    // Export and compress into a scratch file, hashing the compressed stream.
    let scratch = store.scratch_path("push");
    let store2 = store.clone();
    let path = scratch.clone();
    let layer = diff_id.to_string();
    let compressed =
        tokio::task::spawn_blocking(move || -> Result<(String, u64), RegistryError> {
            let file = std::fs::File::create(&path).map_err(|source| {
                RegistryError::Store(crate::image::ImageError::Io {
                    path: path.clone(),
                    source,
                })
            })?;
            let hashed = HashWriter {
                inner: io::BufWriter::new(file),
                hasher: Sha256::new(),
                size: 0,
            };
            let mut gz = flate2::write::GzEncoder::new(hashed, flate2::Compression::default());
            store2.write_layer(&layer, &mut gz)?;
            let mut hashed = gz.finish().map_err(|source| {
                RegistryError::Store(crate::image::ImageError::Io {
                    path: path.clone(),
                    source,
                })
            })?;
            hashed.flush().map_err(|source| {
                RegistryError::Store(crate::image::ImageError::Io {
                    path: path.clone(),
                    source,
                })
            })?;
            Ok((
                format!("sha256:{}", hex::encode(hashed.hasher.finalize())),
                hashed.size,
            ))
        })
        .await
        .map_err(|e| RegistryError::Registry {
            reference: target.repository.familiar(),
            message: format!("internal task failed: {e}"),
        });
    let result = match compressed {
        Ok(Ok((digest, size))) => upload(target, oref, &scratch, &digest, size, &id, progress)
            .await
            .map(|()| BlobSource {
                digest,
                size,
                registry: host,
                repository: repo,
            }),
        Ok(Err(e)) | Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_file(&scratch).await;
    let blob = result?;
    cache::remember(&cache_path, diff_id, blob.clone());
    Ok(blob)
}

async fn upload(
    target: &Target,
    oref: &oci_client::Reference,
    file: &PathBuf,
    digest: &str,
    size: u64,
    id: &str,
    progress: &mpsc::UnboundedSender<Progress>,
) -> Result<(), RegistryError> {
    if target
        .client
        .blob_exists(oref, digest)
        .await
        .map_err(|e| target.translate(e))?
    {
        let _ = progress.send(Progress::layer(id, "Layer already exists"));
        return Ok(());
    }
    let reader = tokio::fs::File::open(file).await.map_err(|source| {
        RegistryError::Store(crate::image::ImageError::Io {
            path: file.clone(),
            source,
        })
    })?;
    let id_owned = id.to_string();
    let progress_tx = progress.clone();
    let stream = futures_util::stream::try_unfold((reader, 0u64), move |(mut reader, sent)| {
        let id = id_owned.clone();
        let progress = progress_tx.clone();
        async move {
            let mut buf = vec![0u8; CHUNK];
            let n = reader
                .read(&mut buf)
                .await
                .map_err(OciDistributionError::IoError)?;
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
            let sent = sent + n as u64;
            let _ = progress.send(Progress {
                id: Some(id),
                status: "Pushing".to_string(),
                detail: Detail::Bytes {
                    current: sent,
                    total: size,
                },
            });
            Ok(Some((Bytes::from(buf), (reader, sent))))
        }
    });
    target
        .client
        .push_blob_stream(oref, stream, digest, Some(size))
        .await
        .map_err(|e| target.translate(e))?;
    let _ = progress.send(Progress::layer(id, "Pushed"));
    Ok(())
}
