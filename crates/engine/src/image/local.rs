//! Images made and read locally: new images from a parent and layer tars (commit, import,
//! build), layer export (save, push), history, save archives, prune and disk usage.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Seek, Write};
use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::archive::digest_hex;
use super::layer;
use super::layer_export::{self, DigestWriter, ExportedLayer, EMPTY_LAYER_DIFF_ID};
use super::reference::Reference;
use super::{
    io_err, now_rfc3339, write_atomic, ImageError, ImageMeta, ImageStore, LayerMeta, StoredImage,
    TAR_SPLIT,
};

/// One `history` entry of an image config (moby's `image.History`, its `omitempty`s kept).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    /// RFC 3339 creation time.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created: String,
    /// The command that made the step.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created_by: String,
    /// Who made it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub author: String,
    /// A free comment (`docker commit -m`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
    /// Whether the step added no layer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// One step of a new image: a layer tar (uncompressed or gzip) or none, and its history entry.
pub struct NewStep<'a> {
    /// The layer; `None` for a metadata-only step. A layer whose diff id is Docker's empty tar
    /// is recorded as an empty step, as dockerd does.
    pub layer: Option<Box<dyn Read + 'a>>,
    /// Its history entry; `empty_layer` is set by the store.
    pub history: HistoryEntry,
}

/// What [`ImageStore::create_image`] makes.
pub struct NewImage<'a> {
    /// Id of the parent image (its layers and history come first), if any.
    pub parent: Option<String>,
    /// The new image config; `rootfs` and `history` are set by the store.
    pub config: Value,
    /// New steps, bottom first.
    pub steps: Vec<NewStep<'a>>,
    /// A tag to point at the new image (`repo` or `repo:tag`).
    pub tag: Option<String>,
}

/// One item of `GET /images/{name}/history` (moby's `image.HistoryResponseItem`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HistoryItem {
    /// The image id for the entries of images present locally, `<missing>` otherwise.
    pub id: String,
    /// Unix seconds.
    pub created: i64,
    /// The command of the step.
    pub created_by: String,
    /// Tags of the image named by `id`.
    pub tags: Vec<String>,
    /// Bytes the step's layer adds.
    pub size: i64,
    /// The step's comment.
    pub comment: String,
}

/// What one image contributes to `GET /system/df` and prune decisions.
#[derive(Debug, Clone)]
pub struct ImageUsage {
    /// `sha256:<hex>`.
    pub id: String,
    /// Familiar tags.
    pub repo_tags: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    /// Bytes of its layers.
    pub size: u64,
    /// Bytes of its layers that other images share.
    pub shared_size: u64,
    /// Labels of its config.
    pub labels: BTreeMap<String, String>,
}

fn unix_seconds(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t.timestamp())
        .unwrap_or(0)
}

impl ImageStore {
    /// Creates an image from a parent, new layer tars and a config: each layer goes through
    /// the safe extractor (diff id computed on the way), the config gets `rootfs.diff_ids` and
    /// `history`, and is written durably with its record; the id is the config's sha256.
    pub fn create_image(&self, new: NewImage<'_>) -> Result<String, ImageError> {
        let _write = self.write_guard();
        let (mut diff_ids, mut history, parent_size) = match &new.parent {
            Some(parent) => {
                let state = self.lock();
                let img = state
                    .images
                    .get(parent)
                    .ok_or_else(|| ImageError::NotFound {
                        reference: parent.clone(),
                    })?;
                let history: Vec<Value> = img
                    .config
                    .get("history")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                (img.diff_ids.clone(), history, img.meta.size)
            }
            None => (Vec::new(), Vec::new(), 0),
        };
        let mut size = parent_size;
        for (n, step) in new.steps.into_iter().enumerate() {
            let mut entry = step.history;
            entry.empty_layer = true;
            if let Some(reader) = step.layer {
                let name = format!("new layer {}", n + 1);
                let reader = layer::decompress(reader, &name)?;
                let (diff_id, layer_size) = self.install_layer(reader, &name, None)?;
                if diff_id != EMPTY_LAYER_DIFF_ID {
                    entry.empty_layer = false;
                    diff_ids.push(diff_id);
                    size += layer_size;
                }
            }
            history.push(
                serde_json::to_value(&entry).map_err(|source| ImageError::Corrupt {
                    path: self.root.join("blobs"),
                    source,
                })?,
            );
        }
        let mut config = new.config;
        let Some(obj) = config.as_object_mut() else {
            return Err(ImageError::InvalidArchive {
                reason: "image config is not an object".to_string(),
            });
        };
        obj.insert(
            "rootfs".to_string(),
            json!({"type": "layers", "diff_ids": diff_ids}),
        );
        obj.insert("history".to_string(), Value::Array(history));
        let bytes = serde_json::to_vec(&config).map_err(|source| ImageError::Corrupt {
            path: self.root.join("blobs"),
            source,
        })?;
        let hex = hex::encode(Sha256::digest(&bytes));
        let id = format!("sha256:{hex}");
        let blob = self.blob_path(&hex);
        if !blob.exists() {
            write_atomic(&blob, &bytes)?;
        }
        {
            let mut state = self.lock();
            let existing = state.images.get(&id).cloned();
            let stored = existing.unwrap_or(StoredImage {
                meta: ImageMeta {
                    id: id.clone(),
                    size,
                    last_tag_time: None,
                    parent: new.parent.clone(),
                    repo_digests: Vec::new(),
                },
                config,
                diff_ids,
            });
            let meta_path = self.image_meta_path(&hex);
            let meta_bytes =
                serde_json::to_vec(&stored.meta).map_err(|source| ImageError::Corrupt {
                    path: meta_path.clone(),
                    source,
                })?;
            write_atomic(&meta_path, &meta_bytes)?;
            state.images.insert(id.clone(), stored);
        }
        tracing::info!(image = %id, "image created");
        if let Some(tag) = &new.tag {
            self.tag(&id, tag)?;
        }
        Ok(id)
    }

    /// Writes a stored layer's tar to `out`, byte for byte the tar it was extracted from (so
    /// its digest is its diff id), and returns that diff id and the tar's size.
    pub fn write_layer(&self, diff_id: &str, out: impl Write) -> Result<ExportedLayer, ImageError> {
        let hex = digest_hex(diff_id).ok_or_else(|| ImageError::InvalidLayer {
            layer: diff_id.to_string(),
            reason: "not a sha256 digest".to_string(),
        })?;
        let dir = self.layer_dir(hex);
        let diff = dir.join("diff");
        let split_path = dir.join(TAR_SPLIT);
        let mut writer = DigestWriter::new(out);
        match fs::File::open(&split_path) {
            Ok(split) => {
                layer::reassemble(flate2::read::GzDecoder::new(split), &diff, &mut writer)?;
            }
            // A layer stored before tar-splits were kept: write the tree, which matches when
            // the layer was made by this engine's exporter (commit, import of such a tar).
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                layer_export::write_layer_tar(&diff, &mut writer)?;
            }
            Err(e) => return Err(io_err(&split_path)(e)),
        }
        let (digest, size, mut inner) = writer.finish();
        inner.flush().map_err(io_err(&diff))?;
        if digest != diff_id {
            return Err(ImageError::DiffIdMismatch {
                expected: diff_id.to_string(),
                actual: digest,
            });
        }
        Ok(ExportedLayer {
            diff_id: digest,
            size,
        })
    }

    /// Docker's `GET /images/{name}/history`: the config's history, newest first; entries of
    /// images in the store (the image, then its local parents) carry their id and tags,
    /// the others `<missing>`.
    pub fn history(&self, reference: &str) -> Result<Vec<HistoryItem>, ImageError> {
        let state = self.lock();
        let id = self.resolve_id(&state, reference)?;
        let img = state.images.get(&id).ok_or_else(|| ImageError::NotFound {
            reference: reference.to_string(),
        })?;
        let entries: Vec<HistoryEntry> = img
            .config
            .get("history")
            .cloned()
            .and_then(|h| serde_json::from_value(h).ok())
            .unwrap_or_default();
        let mut layer_index = 0;
        let mut items = Vec::new();
        for entry in entries {
            let mut size = 0;
            if !entry.empty_layer {
                let Some(diff_id) = img.diff_ids.get(layer_index) else {
                    return Err(ImageError::InvalidArchive {
                        reason: "too many non-empty layers in History section".to_string(),
                    });
                };
                let meta_path = self
                    .layer_dir(digest_hex(diff_id).unwrap_or_default())
                    .join("layer.json");
                size = super::read_json::<LayerMeta>(&meta_path)
                    .map(|m| i64::try_from(m.size).unwrap_or(i64::MAX))
                    .unwrap_or(0);
                layer_index += 1;
            }
            items.push(HistoryItem {
                id: "<missing>".to_string(),
                created: unix_seconds(&entry.created),
                created_by: entry.created_by,
                tags: Vec::new(),
                size,
                comment: entry.comment,
            });
        }
        items.reverse();
        // Ids and tags down the chain of local parents, one image per entry as dockerd does.
        let mut current = Some(id);
        for item in &mut items {
            let Some(cur) = current.take() else { break };
            let Some(image) = state.images.get(&cur) else {
                break;
            };
            item.tags = state.familiar_tags_of(&cur);
            item.id = cur;
            current = image.meta.parent.clone();
        }
        Ok(items)
    }

    /// Writes a `docker save` archive of the named images to `out`: Docker 25+'s layout, an
    /// OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…` with configs, layer tars
    /// and one OCI manifest per image) that also carries the classic `manifest.json` and
    /// `repositories`. A name that is a tag saves that tag; an id saves the image untagged.
    pub fn save(&self, names: &[String], out: impl Write) -> Result<(), ImageError> {
        self.save_selected(&self.save_selection(names)?, out)
    }

    /// [`ImageStore::save`] of what [`ImageStore::save_selection`] chose.
    pub fn save_selected(
        &self,
        selection: &[(String, Vec<Reference>)],
        out: impl Write,
    ) -> Result<(), ImageError> {
        let images: Vec<(String, StoredImage)> = {
            let state = self.lock();
            selection
                .iter()
                .filter_map(|(id, _)| state.images.get(id).map(|i| (id.clone(), i.clone())))
                .collect()
        };

        let mut tar = tar::Builder::new(out);
        let out_err = |source| ImageError::Io {
            path: "docker save output".into(),
            source,
        };
        let mut written: BTreeSet<String> = BTreeSet::new();
        // Layers already in the archive (shared between the saved images), with their size.
        let mut layer_sizes: BTreeMap<String, u64> = BTreeMap::new();
        let mut manifest = Vec::new();
        let mut index = Vec::new();
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let blob = |hex: &str| format!("blobs/sha256/{hex}");
        let mtime = 0;
        let append_bytes =
            |tar: &mut tar::Builder<_>, path: &str, bytes: &[u8]| -> Result<(), ImageError> {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_mtime(mtime);
                h.set_size(bytes.len() as u64);
                tar.append_data(&mut h, path, bytes).map_err(out_err)
            };
        let mut dirs_done = false;
        for (id, img) in &images {
            if !dirs_done {
                for dir in ["blobs", "blobs/sha256"] {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_mtime(mtime);
                    h.set_size(0);
                    tar.append_data(&mut h, dir, io::empty()).map_err(out_err)?;
                }
                dirs_done = true;
            }
            let hex = digest_hex(id).unwrap_or_default().to_string();
            let config_path = self.blob_path(&hex);
            let config_bytes = fs::read(&config_path).map_err(io_err(&config_path))?;
            if written.insert(hex.clone()) {
                append_bytes(&mut tar, &blob(&hex), &config_bytes)?;
            }
            let mut layer_descs = Vec::new();
            let mut layer_paths = Vec::new();
            for diff_id in &img.diff_ids {
                let diff_hex = digest_hex(diff_id).unwrap_or_default().to_string();
                let size = match layer_sizes.get(diff_id) {
                    Some(size) => *size,
                    None => {
                        // Staged in a file first: the tar header needs the size, and a layer
                        // that does not rebuild to its diff id must fail before any of it is
                        // sent.
                        let mut staged = tempfile_in(&self.root.join("tmp"))?;
                        let exported = self.write_layer(diff_id, &mut staged)?;
                        staged.rewind().map_err(out_err)?;
                        let mut h = tar::Header::new_gnu();
                        h.set_entry_type(tar::EntryType::Regular);
                        h.set_mode(0o644);
                        h.set_mtime(mtime);
                        h.set_size(exported.size);
                        tar.append_data(&mut h, blob(&diff_hex), &mut staged)
                            .map_err(out_err)?;
                        written.insert(diff_hex.clone());
                        layer_sizes.insert(diff_id.clone(), exported.size);
                        exported.size
                    }
                };
                layer_descs.push(json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": diff_id,
                    "size": size,
                }));
                layer_paths.push(blob(&diff_hex));
            }
            let oci_manifest = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": id,
                    "size": config_bytes.len(),
                },
                "layers": layer_descs,
            }))
            .map_err(|source| ImageError::Corrupt {
                path: config_path.clone(),
                source,
            })?;
            let manifest_hex = hex::encode(Sha256::digest(&oci_manifest));
            if written.insert(manifest_hex.clone()) {
                append_bytes(&mut tar, &blob(&manifest_hex), &oci_manifest)?;
            }
            let tags = selection
                .iter()
                .find(|(i, _)| i == id)
                .map(|(_, t)| t.clone())
                .unwrap_or_default();
            let descriptor = |annotations: Option<Value>| {
                let mut d = json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": format!("sha256:{manifest_hex}"),
                    "size": oci_manifest.len(),
                });
                if let Some(a) = annotations {
                    d["annotations"] = a;
                }
                d
            };
            if tags.is_empty() {
                index.push(descriptor(None));
            }
            for tag in &tags {
                index.push(descriptor(Some(json!({
                    "io.containerd.image.name": tag.full(),
                    "org.opencontainers.image.ref.name": tag.tag.clone().unwrap_or_default(),
                }))));
                if let Some(top) = layer_paths.last() {
                    repositories.entry(tag.familiar_name()).or_default().insert(
                        tag.tag.clone().unwrap_or_default(),
                        top.trim_start_matches("blobs/sha256/").to_string(),
                    );
                }
            }
            let mut entry = json!({
                "Config": blob(&hex),
                "RepoTags": tags.iter().map(Reference::familiar).collect::<Vec<_>>(),
                "Layers": layer_paths,
            });
            if tags.is_empty() {
                entry["RepoTags"] = Value::Null;
            }
            manifest.push(entry);
        }
        let to_json = |v: &Value| {
            serde_json::to_vec(v).map_err(|source| ImageError::Corrupt {
                path: "docker save output".into(),
                source,
            })
        };
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": index,
        });
        append_bytes(&mut tar, "index.json", &to_json(&index)?)?;
        append_bytes(&mut tar, "manifest.json", &to_json(&Value::from(manifest))?)?;
        append_bytes(
            &mut tar,
            "oci-layout",
            &to_json(&json!({"imageLayoutVersion": "1.0.0"}))?,
        )?;
        if !repositories.is_empty() {
            append_bytes(&mut tar, "repositories", &to_json(&json!(repositories))?)?;
        }
        tar.finish().map_err(out_err)?;
        let mut out = tar.into_inner().map_err(out_err)?;
        out.flush().map_err(out_err)?;
        Ok(())
    }

    /// What `docker save NAMES` writes, as moby's tarexport `parseNames`: image ids in the
    /// order first named, each with the tags to record. An id saves the image untagged, a
    /// `name:tag` that tag, a bare repository name every tag of that repository (or, when it
    /// has none, the image it is an id prefix of). Fails on the first name that is not found.
    pub fn save_selection(
        &self,
        names: &[String],
    ) -> Result<Vec<(String, Vec<Reference>)>, ImageError> {
        let state = self.lock();
        let mut out: Vec<(String, Vec<Reference>)> = Vec::new();
        let mut add = |id: String, tag: Option<Reference>| {
            let pos = match out.iter().position(|(i, _)| *i == id) {
                Some(pos) => pos,
                None => {
                    out.push((id, Vec::new()));
                    out.len() - 1
                }
            };
            if let Some(tag) = tag {
                if !out[pos].1.contains(&tag) {
                    out[pos].1.push(tag);
                }
            }
        };
        for name in names {
            let named = match super::reference::AnyReference::parse(name) {
                Ok(super::reference::AnyReference::Named(named)) => named,
                _ => {
                    add(self.resolve_id(&state, name)?, None);
                    continue;
                }
            };
            if named.tag.is_none() && named.digest.is_none() {
                let full = named.full_name();
                let repo_tags: Vec<(Reference, String)> = state
                    .tags
                    .iter()
                    .filter(|(r, _)| r.full_name() == full)
                    .map(|(r, id)| (r.clone(), id.clone()))
                    .collect();
                if repo_tags.is_empty() {
                    add(self.resolve_id(&state, name)?, None);
                }
                for (r, id) in repo_tags {
                    add(id, Some(r));
                }
                continue;
            }
            let id = self.resolve_id(&state, name)?;
            let tag = named.with_default_tag();
            let tagged = state.tags.get(&tag) == Some(&id);
            add(id, tagged.then_some(tag));
        }
        let diff_ids: BTreeSet<String> = out
            .iter()
            .filter_map(|(id, _)| state.images.get(id))
            .flat_map(|img| img.diff_ids.iter().cloned())
            .collect();
        drop(state);
        for diff_id in diff_ids {
            self.check_rebuildable(&diff_id)?;
        }
        Ok(out)
    }

    /// Fails, before anything is sent, for a layer that cannot be written out as its diff id:
    /// one stored by an engine that kept no tar-split, whose tree does not rebuild to it.
    fn check_rebuildable(&self, diff_id: &str) -> Result<(), ImageError> {
        let dir = self.layer_dir(digest_hex(diff_id).unwrap_or_default());
        if dir.join(TAR_SPLIT).exists() {
            return Ok(());
        }
        let rebuilt = layer_export::write_layer_tar(&dir.join("diff"), io::sink())?;
        if rebuilt.diff_id == diff_id {
            return Ok(());
        }
        Err(ImageError::InvalidLayer {
            layer: diff_id.to_string(),
            reason: "stored by an older engine without its tar-split, it cannot be rebuilt byte for byte: remove the image and load or pull it again".to_string(),
        })
    }

    /// Every image with its sizes, for `system df` and `image prune`: `shared_size` counts the
    /// layers that at least one other image also lists.
    pub fn usage(&self) -> Vec<ImageUsage> {
        let state = self.lock();
        let mut users: BTreeMap<&String, usize> = BTreeMap::new();
        for img in state.images.values() {
            for d in img.diff_ids.iter().collect::<BTreeSet<_>>() {
                *users.entry(d).or_default() += 1;
            }
        }
        let layer_size = |d: &str| {
            let path = self
                .layer_dir(digest_hex(d).unwrap_or_default())
                .join("layer.json");
            super::read_json::<LayerMeta>(&path)
                .map(|m| m.size)
                .unwrap_or(0)
        };
        state
            .images
            .values()
            .map(|img| {
                let shared_size = img
                    .diff_ids
                    .iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|d| users.get(d).copied().unwrap_or(0) > 1)
                    .map(|d| layer_size(d))
                    .sum();
                ImageUsage {
                    id: img.meta.id.clone(),
                    repo_tags: state.familiar_tags_of(&img.meta.id),
                    created: unix_seconds(&img.created()),
                    size: img.meta.size,
                    shared_size,
                    labels: super::ImageConfig::from_config_json(&img.config).labels,
                }
            })
            .collect()
    }

    /// Ids of untagged images another image was committed from (dockerd's intermediate
    /// images, hidden by `docker images` without `-a`).
    pub fn intermediate_ids(&self) -> BTreeSet<String> {
        let state = self.lock();
        state
            .images
            .keys()
            .filter(|id| state.tags_of(id).is_empty() && state.has_children(id))
            .cloned()
            .collect()
    }

    /// A stored layer's size as recorded in its `layer.json` (dockerd's layer `Size()`).
    pub fn layer_size(&self, diff_id: &str) -> Result<u64, ImageError> {
        let hex = digest_hex(diff_id).ok_or_else(|| ImageError::InvalidLayer {
            layer: diff_id.to_string(),
            reason: "not a sha256 digest".to_string(),
        })?;
        super::read_json::<LayerMeta>(&self.layer_dir(hex).join("layer.json")).map(|m| m.size)
    }

    /// Bytes of all stored layers, each counted once (`system df`'s `LayersSize`).
    pub fn layers_size(&self) -> u64 {
        let state = self.lock();
        let all: BTreeSet<&String> = state.images.values().flat_map(|i| &i.diff_ids).collect();
        all.into_iter()
            .map(|d| {
                let path = self
                    .layer_dir(digest_hex(d).unwrap_or_default())
                    .join("layer.json");
                super::read_json::<LayerMeta>(&path)
                    .map(|m| m.size)
                    .unwrap_or(0)
            })
            .sum()
    }

    /// The image config of `id`, as stored.
    pub fn config_json(&self, reference: &str) -> Result<(String, Value), ImageError> {
        let state = self.lock();
        let id = self.resolve_id(&state, reference)?;
        let img = state.images.get(&id).ok_or_else(|| ImageError::NotFound {
            reference: reference.to_string(),
        })?;
        Ok((id.clone(), img.config.clone()))
    }
}

/// An anonymous temporary file in `dir` (unlinked at once, gone when dropped).
pub fn tempfile_in(dir: &Path) -> Result<fs::File, ImageError> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
        .map_err(io_err(dir))
}

/// Now in RFC 3339 with nanoseconds, as the `created` of configs the engine writes.
pub fn now() -> String {
    now_rfc3339()
}
