//! `docker push`: per tag, each layer is found in the registry (HEAD, by the blob digests
//! remembered for its diff id), mounted from another repository of the same registry, or
//! exported from the store (`write_layer`, the original tar rebuilt) and gzip-compressed
//! while it uploads (the digest computed on the way); three layers at a time. Then the config
//! and a Docker schema-2 manifest.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use sha2::{Digest, Sha256};
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
/// Bytes per upload PATCH: oci-client's own largest chunk, so no message is split.
const CHUNK: usize = 4 << 20;
/// Chunks compressed ahead of the upload, per layer.
const PIPE_CHUNKS: usize = 2;
/// Uncompressed bytes between two `Pushing` lines.
const PROGRESS_STEP: u64 = 1 << 20;

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
    /// The registry answered 401 to one of its requests.
    unauthorized: AtomicBool,
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
        if super::is_unauthorized(&err) {
            self.unauthorized.store(true, Ordering::Relaxed);
        }
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
            // A refused upload session (the first request of a streamed push) comes back as
            // a plain 401.
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::ServerError { code: 401, .. } => RegistryError::Registry {
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
    let leased = client_for(&endpoint, &options.auth)?;
    let target = Target {
        client: leased.client,
        endpoint,
        auth: options.auth.clone(),
        repository,
        unauthorized: AtomicBool::new(false),
    };
    let _ = progress.send(Progress::message(
        None,
        format!(
            "The push refers to repository [{}]",
            target.repository.full_name()
        ),
    ));
    let result = push_to(&store, &target, &tags, progress).await;
    if result.is_err() && leased.kept && target.unauthorized.load(Ordering::Relaxed) {
        // The kept client's tokens were refused (revoked, or signed by a rotated key): once
        // more with a new client.
        super::forget_client(&target.endpoint, &target.auth);
        let target = Target {
            client: client_for(&target.endpoint, &target.auth)?.client,
            unauthorized: AtomicBool::new(false),
            ..target
        };
        return push_to(&store, &target, &tags, progress).await;
    }
    result
}

/// Pushes `tags` to `target`.
async fn push_to(
    store: &Arc<ImageStore>,
    target: &Target,
    tags: &[Reference],
    progress: &mpsc::UnboundedSender<Progress>,
) -> Result<Vec<String>, RegistryError> {
    let first = target.oci_ref("latest");
    target
        .client
        .auth(&first, &target.auth, oci_client::RegistryOperation::Push)
        .await
        .map_err(|e| target.translate(e))?;
    let mut pushed = Vec::new();
    for tag in tags.iter().cloned() {
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
                let descriptor = match store.foreign_layer(diff_id)? {
                    // As dockerd (without --allow-nondistributable-artifacts): the manifest
                    // refers to the layer's URLs, the blob is not uploaded.
                    Some(foreign) => {
                        let media_type = foreign_media_type(diff_id, &foreign.media_type)?;
                        let _ = progress.send(Progress::layer(
                            short_id(diff_id),
                            "Skipped foreign layer",
                        ));
                        serde_json::json!({
                            "mediaType": media_type,
                            "size": foreign.size,
                            "digest": foreign.digest,
                            "urls": foreign.urls,
                        })
                    }
                    None => {
                        let b = push_layer(&store, target, oref, diff_id, progress).await?;
                        serde_json::json!({"mediaType": DOCKER_LAYER, "size": b.size, "digest": b.digest})
                    }
                };
                Ok::<_, RegistryError>(((*diff_id).clone(), descriptor))
            }
        });
        let blobs: Vec<(String, serde_json::Value)> =
            futures_util::future::try_join_all(uploads).await?;
        let layers: Vec<serde_json::Value> = source
            .diff_ids
            .iter()
            .filter_map(|d| blobs.iter().find(|(id, _)| id == d))
            .map(|(_, descriptor)| descriptor.clone())
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
        let _ = progress.send(Progress {
            id: None,
            status: String::new(),
            detail: Detail::PushResult {
                tag: tag_name.clone(),
                digest: digest.clone(),
                size,
            },
        });
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

/// The media type of a foreign layer in the Docker schema-2 manifest a push writes: OCI's
/// gzip non-distributable type becomes Docker's foreign type (a registry accepts a layer it
/// does not hold only under that type). OCI's uncompressed and zstd ones have no Docker
/// equivalent (Docker's foreign type says gzip): refused, naming the layer.
fn foreign_media_type<'a>(diff_id: &str, media_type: &'a str) -> Result<&'a str, RegistryError> {
    match media_type {
        super::pull::DOCKER_FOREIGN => Ok(super::pull::DOCKER_FOREIGN),
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => {
            Ok(super::pull::DOCKER_FOREIGN)
        }
        other => Err(RegistryError::InvalidParameter {
            message: format!(
                "cannot push non-distributable layer {diff_id}: its media type {other} has no \
                 Docker schema 2 equivalent"
            ),
        }),
    }
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

    // Export, compress and upload at once: the blocking task writes the gzip stream into a
    // bounded pipe whose chunks are sent as they come (PATCHes of `CHUNK`), the digest is
    // computed on the way, as dockerd's `compress` pipe into one upload.
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(PIPE_CHUNKS);
    let store2 = store.clone();
    let layer = diff_id.to_string();
    let progress_tx = progress.clone();
    let id2 = id.clone();
    let upload_stopped = Arc::new(AtomicBool::new(false));
    let stopped = upload_stopped.clone();
    // The `Pushing` bar's total: the layer's size, as dockerd's progress reader of the layer.
    let layer_size = store.layer_size(diff_id)?;
    let compressor = tokio::task::spawn_blocking(move || -> Result<(), RegistryError> {
        let mut pipe = PipeWriter::new(tx, stopped);
        let counted = ProgressWriter {
            // dockerd's level (Go's gzip.DefaultCompression), on one core as dockerd: gzip
            // in 1 MiB blocks on two threads measured no faster (docs/benchmarks.md).
            inner: flate2::write::GzEncoder::new(&mut pipe, flate2::Compression::default()),
            id: id2,
            progress: progress_tx,
            done: 0,
            reported: 0,
            total: layer_size,
        };
        let result = compress_layer(&store2, &layer, counted);
        match result {
            Ok(()) => pipe.finish().map_err(|source| pipe_error(&layer, source)),
            Err(e) => {
                // The upload must not be committed with what was sent so far.
                pipe.fail(&e);
                Err(e)
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| {
            let item = item.map_err(OciDistributionError::IoError);
            (item, rx)
        })
    });
    let uploaded = target.client.push_blob_stream_chunked(oref, stream).await;
    let compressed = compressor.await.map_err(|e| RegistryError::Registry {
        reference: target.repository.familiar(),
        message: format!("internal task failed: {e}"),
    })?;
    // A failure to read the layer explains a failed upload better than the upload's error,
    // unless the compressor only stopped because the upload did.
    let uploaded = match (compressed, uploaded) {
        (Err(e), _) if !upload_stopped.load(Ordering::Relaxed) => return Err(e),
        (_, Err(e)) => return Err(target.translate(e)),
        (Err(e), Ok(_)) => return Err(e),
        (Ok(()), Ok(uploaded)) => uploaded,
    };
    let _ = progress.send(Progress::layer(&id, "Pushed"));
    let blob = BlobSource {
        digest: uploaded.blob_digest,
        size: uploaded.size,
        registry: host,
        repository: repo,
    };
    cache::remember(&cache_path, diff_id, blob.clone());
    Ok(blob)
}

/// Writes the layer's tar through `out` (the gzip encoder) and finishes the gzip stream.
fn compress_layer<W: Write>(
    store: &ImageStore,
    diff_id: &str,
    mut out: ProgressWriter<flate2::write::GzEncoder<W>>,
) -> Result<(), RegistryError> {
    store.write_layer(diff_id, &mut out)?;
    out.inner
        .try_finish()
        .map_err(|source| pipe_error(diff_id, source))
}

fn pipe_error(diff_id: &str, source: io::Error) -> RegistryError {
    RegistryError::Store(crate::image::ImageError::Io {
        path: PathBuf::from(diff_id),
        source,
    })
}

/// The writing end of the pipe between the compressor and the upload: gathers `CHUNK` bytes
/// per message, so each PATCH carries a full chunk.
struct PipeWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    /// Set when the upload has gone (its end of the pipe dropped).
    stopped: Arc<AtomicBool>,
    /// Set once the whole stream (or an error) was sent: dropped before that (a panic in the
    /// compressor), the pipe ends with an error so the upload is not committed truncated.
    ended: bool,
}

impl PipeWriter {
    fn new(tx: mpsc::Sender<io::Result<Bytes>>, stopped: Arc<AtomicBool>) -> PipeWriter {
        PipeWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
            stopped,
            ended: false,
        }
    }

    /// Sends what is left: the stream is complete.
    fn finish(&mut self) -> io::Result<()> {
        self.send()?;
        self.ended = true;
        Ok(())
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            self.stopped.store(true, Ordering::Relaxed);
            io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped")
        })
    }

    /// Ends the stream with an error, so the upload is abandoned rather than committed.
    fn fail(&mut self, error: &RegistryError) {
        self.buf.clear();
        self.ended = true;
        let _ = self
            .tx
            .blocking_send(Err(io::Error::other(error.to_string())));
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.tx.blocking_send(Err(io::Error::other(
                "the layer's compressor stopped before the end of the layer",
            )));
        }
    }
}

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Counts the uncompressed bytes going into the compressor for the `Pushing` lines (dockerd
/// reports the layer's tar read so far, not the compressed bytes).
struct ProgressWriter<W> {
    inner: W,
    id: String,
    progress: mpsc::UnboundedSender<Progress>,
    done: u64,
    reported: u64,
    /// The layer's size, the bar's total.
    total: u64,
}

impl<W: Write> Write for ProgressWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.done += n as u64;
        if self.done - self.reported >= PROGRESS_STEP {
            self.reported = self.done;
            let _ = self.progress.send(Progress {
                id: Some(self.id.clone()),
                status: "Pushing".to_string(),
                detail: Detail::Bytes {
                    current: self.done,
                    total: self.total,
                },
            });
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the upload side of a pipe receives once the writer is gone: `Ok` chunks, then
    /// whether the stream ended with an error.
    fn drain(mut rx: mpsc::Receiver<io::Result<Bytes>>) -> (usize, bool) {
        let mut bytes = 0;
        let mut failed = false;
        while let Some(item) = rx.blocking_recv() {
            match item {
                Ok(chunk) => bytes += chunk.len(),
                Err(_) => failed = true,
            }
        }
        (bytes, failed)
    }

    #[test]
    fn a_panicking_compressor_ends_the_pipe_with_an_error() {
        let (tx, rx) = mpsc::channel(PIPE_CHUNKS);
        let writer = std::thread::spawn(move || {
            let mut pipe = PipeWriter::new(tx, Arc::new(AtomicBool::new(false)));
            let _ = pipe.write_all(&vec![7u8; CHUNK + 10]);
            panic!("compressor bug");
        });
        let (bytes, failed) = drain(rx);
        assert!(writer.join().is_err());
        assert_eq!(bytes, CHUNK);
        assert!(failed, "a truncated stream would be committed");
    }

    #[test]
    fn a_finished_pipe_ends_without_an_error() {
        let (tx, rx) = mpsc::channel(PIPE_CHUNKS);
        let writer = std::thread::spawn(move || {
            let mut pipe = PipeWriter::new(tx, Arc::new(AtomicBool::new(false)));
            pipe.write_all(&vec![7u8; CHUNK + 10])?;
            pipe.finish()
        });
        let (bytes, failed) = drain(rx);
        assert!(matches!(writer.join(), Ok(Ok(()))));
        assert_eq!(bytes, CHUNK + 10);
        assert!(!failed);
    }

    #[test]
    fn pushing_progress_has_the_layers_size_as_total() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut writer = ProgressWriter {
            inner: io::sink(),
            id: "abc".to_string(),
            progress: tx,
            done: 0,
            reported: 0,
            total: 5_000_000,
        };
        writer
            .write_all(&vec![
                0u8;
                usize::try_from(PROGRESS_STEP).unwrap_or(1 << 20)
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        let sent = rx.try_recv().unwrap_or_else(|e| panic!("no progress: {e}"));
        assert_eq!(sent.status, "Pushing");
        assert!(
            matches!(
                sent.detail,
                Detail::Bytes {
                    total: 5_000_000,
                    ..
                }
            ),
            "{:?}",
            sent.detail
        );
    }

    #[test]
    fn non_distributable_layers_keep_a_docker_type_or_are_refused() {
        let gzip = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
        assert_eq!(
            foreign_media_type("sha256:1", gzip).ok(),
            Some(super::super::pull::DOCKER_FOREIGN)
        );
        for other in [
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        ] {
            let err = foreign_media_type("sha256:1", other)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("sha256:1") && err.contains(other), "{err}");
        }
    }
}
