//! The store's side of `docker pull`: layers are extracted into `tmp/layer-*` while they
//! download ([`ImageStore::stage_layer`]), and only once every layer and the config have been
//! verified does [`ImageStore::commit_pull`] rename them into `layers/` and write the image
//! record and tag. A pull interrupted at any point (error, engine killed) leaves nothing but
//! `tmp/` entries, which the next [`ImageStore::open`] removes.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::Digest;

use super::archive::{config_diff_ids, digest_hex};
use super::layer;
use super::reference::Reference;
use super::{io_err, read_json, write_atomic, ImageError, ImageMeta, ImageStore, LayerMeta};
use super::{now_rfc3339, StoredImage, TAR_SPLIT};

/// A layer extracted into the store's staging area, not yet part of the store. Dropping it
/// removes the directory.
#[derive(Debug)]
pub struct StagedLayer {
    dir: Option<PathBuf>,
    /// `sha256:<hex>` of the uncompressed stream.
    pub diff_id: String,
    /// Bytes of content.
    pub size: u64,
}

impl Drop for StagedLayer {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            if let Err(e) = fs::remove_dir_all(&dir) {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove staged layer");
            }
        }
    }
}

/// A foreign (non-distributable) layer's descriptor, kept beside the layer in `foreign.json`:
/// a push puts it in the manifest as it is instead of uploading the layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForeignLayer {
    /// The manifest's media type for it.
    pub media_type: String,
    /// `sha256:…` of the blob at the URLs.
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// Where it is downloaded from.
    pub urls: Vec<String>,
}

/// The file beside a layer's `diff/` holding its [`ForeignLayer`] descriptor.
const FOREIGN: &str = "foreign.json";

impl StagedLayer {
    /// Records that this layer came from a foreign descriptor (published with the layer).
    pub fn set_foreign(&self, foreign: &ForeignLayer) -> Result<(), ImageError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let path = dir.join(FOREIGN);
        let bytes = serde_json::to_vec(foreign).map_err(|source| ImageError::Corrupt {
            path: path.clone(),
            source,
        })?;
        fs::write(&path, bytes).map_err(io_err(&path))
    }
}

/// What committing a pulled image changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullCommit {
    /// The image id.
    pub id: String,
    /// Whether the tag (or, for a pull by digest, the digest) now names an image it did not
    /// name before: Docker's "Downloaded newer image" rather than "Image is up to date".
    pub updated: bool,
}

impl ImageStore {
    /// Whether a layer with this diff id is in the store.
    pub fn has_layer(&self, diff_id: &str) -> bool {
        digest_hex(diff_id).is_some_and(|hex| self.layer_dir(hex).join("layer.json").exists())
    }

    /// The foreign descriptor a layer was pulled from, if it was one.
    pub fn foreign_layer(&self, diff_id: &str) -> Result<Option<ForeignLayer>, ImageError> {
        let Some(hex) = digest_hex(diff_id) else {
            return Ok(None);
        };
        let path = self.layer_dir(hex).join(FOREIGN);
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    /// Extracts a (possibly compressed) layer stream into a new staging directory. `name`
    /// names the layer in errors. The caller checks the returned diff id.
    pub fn stage_layer(&self, reader: impl Read, name: &str) -> Result<StagedLayer, ImageError> {
        let tmp = self.temp_dir("layer")?;
        let mut staged = StagedLayer {
            dir: Some(tmp.clone()),
            diff_id: String::new(),
            size: 0,
        };
        let diff = tmp.join("diff");
        fs::create_dir(&diff).map_err(io_err(&diff))?;
        let reader = layer::decompress(reader, name)?;
        // The tar-split lets `write_layer` rebuild the exact tar (push, save).
        let split_path = tmp.join(TAR_SPLIT);
        let split_file = fs::File::create(&split_path).map_err(io_err(&split_path))?;
        let mut split = flate2::write::GzEncoder::new(split_file, flate2::Compression::fast());
        let extracted = layer::extract_with_split(reader, &diff, name, Some(&mut split))?;
        split.finish().map_err(io_err(&split_path))?;
        staged.diff_id = extracted.diff_id;
        staged.size = extracted.size;
        Ok(staged)
    }

    /// Publishes a pulled image: its staged layers (checked against the config's diff ids;
    /// layers already in the store may be absent from `staged`), its config, its record with
    /// `repo_digest` among its RepoDigests, and `tag` if given.
    pub fn commit_pull(
        &self,
        config: &[u8],
        mut staged: Vec<StagedLayer>,
        tag: Option<&Reference>,
        repo_digest: &str,
    ) -> Result<PullCommit, ImageError> {
        let _write = self.write_guard();
        let diff_ids = config_diff_ids(config)?;
        let mut size = 0;
        // Layers to publish: their metadata written first, then one syncfs for all of them
        // (not one per layer), then the renames.
        let mut publish = Vec::new();
        for diff_id in &diff_ids {
            let hex = digest_hex(diff_id).ok_or_else(|| ImageError::InvalidArchive {
                reason: format!("invalid diff id {diff_id}"),
            })?;
            let dir = self.layer_dir(hex);
            if dir.join("layer.json").exists() {
                let meta: LayerMeta = read_json(&dir.join("layer.json"))?;
                size += meta.size;
                continue;
            }
            let Some(layer) = staged.iter_mut().find(|l| &l.diff_id == diff_id) else {
                return Err(ImageError::InvalidArchive {
                    reason: format!("layer {diff_id} was not downloaded"),
                });
            };
            let Some(tmp) = layer.dir.take() else {
                // Listed twice in the config: already published above.
                continue;
            };
            let meta = LayerMeta {
                diff_id: diff_id.clone(),
                size: layer.size,
            };
            let bytes = serde_json::to_vec(&meta).map_err(|source| ImageError::Corrupt {
                path: tmp.join("layer.json"),
                source,
            })?;
            let meta_path = tmp.join("layer.json");
            // The staging directory goes if anything fails before its rename.
            let staged_dir = StagedLayer {
                dir: Some(tmp.clone()),
                diff_id: diff_id.clone(),
                size: layer.size,
            };
            fs::write(&meta_path, &bytes).map_err(io_err(&meta_path))?;
            size += layer.size;
            publish.push((staged_dir, dir));
        }
        if let Some((first, _)) = publish.first() {
            if let Some(tmp) = &first.dir {
                crate::state::durable::sync_filesystem(tmp).map_err(io_err(tmp))?;
            }
        }
        // The directory holding the renamed layers, synced once before the image record
        // names them (a crash must not leave a record whose layers' renames were lost).
        let mut renamed_into = None;
        for (mut staged_dir, dir) in publish {
            let Some(tmp) = staged_dir.dir.take() else {
                continue;
            };
            renamed_into = dir.parent().map(Path::to_path_buf);
            if let Err(e) = fs::rename(&tmp, &dir) {
                // A concurrent pull may have published the same layer first.
                let _ = fs::remove_dir_all(&tmp);
                if !dir.join("layer.json").exists() {
                    return Err(ImageError::Io {
                        path: dir,
                        source: e,
                    });
                }
            }
        }
        if let Some(layers) = &renamed_into {
            crate::state::durable::sync_dir(layers).map_err(io_err(layers))?;
        }
        drop(staged);

        let id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(config)));
        let hex = digest_hex(&id).unwrap_or_default().to_string();
        let config_json: serde_json::Value =
            serde_json::from_slice(config).map_err(|e| ImageError::InvalidArchive {
                reason: format!("image config: {e}"),
            })?;
        let blob = self.blob_path(&hex);
        if !blob.exists() {
            write_atomic(&blob, config)?;
        }
        let mut state = self.lock();
        let mut stored = match state.images.get(&id) {
            Some(existing) => existing.clone(),
            None => StoredImage {
                meta: ImageMeta {
                    id: id.clone(),
                    size,
                    last_tag_time: None,
                    parent: None,
                    repo_digests: Vec::new(),
                },
                config: config_json,
                diff_ids,
            },
        };
        let mut updated = false;
        if !stored.meta.repo_digests.iter().any(|d| d == repo_digest) {
            stored.meta.repo_digests.push(repo_digest.to_string());
            stored.meta.repo_digests.sort();
            updated = tag.is_none();
        }
        if let Some(tag) = tag {
            updated = state.tags.get(tag) != Some(&id);
            if updated {
                stored.meta.last_tag_time = Some(now_rfc3339());
            }
        }
        let meta_bytes =
            serde_json::to_vec(&stored.meta).map_err(|source| ImageError::Corrupt {
                path: self.image_meta_path(&hex),
                source,
            })?;
        write_atomic(&self.image_meta_path(&hex), &meta_bytes)?;
        state.images.insert(id.clone(), stored);
        if let Some(tag) = tag {
            state.tags.insert(tag.clone(), id.clone());
            self.write_repositories(&state)?;
        }
        tracing::info!(image = %id, digest = repo_digest, "image pulled");
        Ok(PullCommit { id, updated })
    }

    /// The image a pull would end at, if it is already here: the one whose RepoDigests hold
    /// `repo_digest` and, for a pull by tag, that `tag` names, with every layer present.
    /// Returns its id and its config (the caller checks the platform, variant included).
    pub fn already_pulled(
        &self,
        tag: Option<&Reference>,
        repo_digest: &str,
    ) -> Option<(String, serde_json::Value)> {
        let state = self.lock();
        let (id, image) = match tag {
            Some(tag) => {
                let id = state.tags.get(tag)?;
                (id, state.images.get(id)?)
            }
            None => state
                .images
                .iter()
                .find(|(_, img)| img.meta.repo_digests.iter().any(|d| d == repo_digest))?,
        };
        if !image.meta.repo_digests.iter().any(|d| d == repo_digest)
            || !image.diff_ids.iter().all(|d| self.has_layer(d))
        {
            return None;
        }
        Some((id.clone(), image.config.clone()))
    }

    /// What a push sends for one tag: the image id, its config bytes as stored (so the id
    /// stays the same in the registry) and its diff ids, bottom first.
    pub fn push_source(&self, tag: &Reference) -> Result<PushSource, ImageError> {
        let state = self.lock();
        let id = state
            .tags
            .get(tag)
            .cloned()
            .ok_or_else(|| ImageError::NotFound {
                reference: tag.familiar(),
            })?;
        let img = state.images.get(&id).ok_or_else(|| ImageError::NotFound {
            reference: tag.familiar(),
        })?;
        let hex = digest_hex(&id).unwrap_or_default();
        let path = self.blob_path(hex);
        let config = fs::read(&path).map_err(io_err(&path))?;
        Ok(PushSource {
            id: id.clone(),
            config,
            diff_ids: img.diff_ids.clone(),
        })
    }

    /// The tags (with the repository) of every image named `repository` (`pull -a`'s push
    /// counterpart), sorted.
    pub fn repository_tags(&self, repository: &Reference) -> Vec<Reference> {
        let state = self.lock();
        state
            .tags
            .keys()
            .filter(|r| r.domain == repository.domain && r.path == repository.path)
            .cloned()
            .collect()
    }

    /// Adds `repo_digest` to the image's RepoDigests (a push does, as dockerd).
    pub fn add_repo_digest(&self, id: &str, repo_digest: &str) -> Result<(), ImageError> {
        let mut state = self.lock();
        let Some(img) = state.images.get_mut(id) else {
            return Ok(());
        };
        if img.meta.repo_digests.iter().any(|d| d == repo_digest) {
            return Ok(());
        }
        img.meta.repo_digests.push(repo_digest.to_string());
        img.meta.repo_digests.sort();
        let hex = digest_hex(id).unwrap_or_default().to_string();
        let bytes = serde_json::to_vec(&img.meta).map_err(|source| ImageError::Corrupt {
            path: self.image_meta_path(&hex),
            source,
        })?;
        write_atomic(&self.image_meta_path(&hex), &bytes)
    }

    /// Where the registry client remembers which compressed blob each layer was pulled from
    /// or pushed as (`distribution.json`).
    pub fn distribution_cache_path(&self) -> PathBuf {
        self.root.join("distribution.json")
    }

    /// A scratch file path under `tmp/` (emptied when the store opens).
    pub fn scratch_path(&self, kind: &str) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{kind}-{:016x}", rand::random::<u64>()))
    }
}

/// What a push needs of a stored image.
#[derive(Debug, Clone)]
pub struct PushSource {
    /// `sha256:…`.
    pub id: String,
    /// The config, byte for byte.
    pub config: Vec<u8>,
    /// Diff ids, bottom first.
    pub diff_ids: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::testutil::{TarBuilder, TempDir};

    fn layer_tar() -> Vec<u8> {
        let mut tar = TarBuilder::new();
        tar.dir("etc", 0o755);
        tar.file("etc/hello", b"hi\n");
        tar.finish()
    }

    #[test]
    fn zstd_and_gzip_layers_stage_to_the_same_diff_id_and_commit_once_verified() {
        let dir = TempDir::new();
        let store = ImageStore::open(dir.path()).unwrap();
        let tar = layer_tar();
        let diff_id = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&tar)));
        let zstd = ruzstd::encoding::compress_to_vec(
            &tar[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let staged = store.stage_layer(&zstd[..], "zstd layer").unwrap();
        assert_eq!(staged.diff_id, diff_id);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        let again = store.stage_layer(&gz[..], "gzip layer").unwrap();
        assert_eq!(again.diff_id, diff_id);
        // Nothing is in the store before the commit.
        assert!(!store.has_layer(&diff_id));
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }))
        .unwrap();
        let tag = Reference::parse_normalized("127.0.0.1:5000/x:1").unwrap();
        let digest = format!("sha256:{}", "a".repeat(64));
        let commit = store
            .commit_pull(
                &config,
                vec![staged, again],
                Some(&tag),
                &format!("127.0.0.1:5000/x@{digest}"),
            )
            .unwrap();
        assert!(commit.updated);
        assert!(store.has_layer(&diff_id));
        let image = store.inspect("127.0.0.1:5000/x:1").unwrap();
        assert_eq!(
            image.repo_digests,
            vec![format!("127.0.0.1:5000/x@{digest}")]
        );
        // The unused staged copy was removed with it: tmp/ is empty.
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        // The same pull again changes nothing.
        let staged = store.stage_layer(&gz[..], "gzip layer").unwrap();
        let commit = store
            .commit_pull(
                &config,
                vec![staged],
                Some(&tag),
                &format!("127.0.0.1:5000/x@{digest}"),
            )
            .unwrap();
        assert!(!commit.updated);
    }
}
