//! The image store: loaded images, their layers and their tags, under `<data-root>/image`.
//!
//! # Layout
//!
//! ```text
//! image/
//!   blobs/sha256/<hex>        image configs, byte for byte as loaded; the image id is the
//!                             sha256 of these bytes (as in Docker), so ids survive save/load
//!   images/<hex>.json         one record per image ({"Id", "Size", "LastTagTime", "Parent"}); an image
//!                             exists exactly when its record does (written last, removed first)
//!   layers/<diffid-hex>/diff  a layer's extracted root, used as an overlayfs lower dir; AUFS
//!                             whiteouts are already overlayfs ones (0:0 char devices, the
//!                             `trusted.overlay.opaque=y` xattr)
//!   layers/<diffid-hex>/layer.json   {"DiffID", "Size"}
//!   layers/<diffid-hex>/tar-split.gz what rebuilds the original layer tar from diff/
//!                             ([`layer::reassemble`])
//!   repositories.json         {"Repositories": {"busybox": {"busybox:latest": "sha256:…"}}}
//!   tmp/                      staging for loads and half-made layers; emptied on open
//! ```
//!
//! # Data flow of a load
//!
//! 1. The archive (tar, optionally gzip) is unpacked into `tmp/load-*` ([`archive::Staging`]).
//! 2. `manifest.json` (docker save) or `index.json` (OCI layout) is parsed into pending images:
//!    config bytes, layer blobs with the diff ids the config promises, tags.
//! 3. Each layer not yet in `layers/` is extracted ([`layer::extract`]) into `tmp/layer-*`, its
//!    uncompressed stream hashed on the way; a diff id mismatch fails the load. The finished
//!    directory is renamed into `layers/`, so a failed load never leaves half a layer.
//! 4. Under the state lock, the config blob and image record are written and the tags moved;
//!    `repositories.json` is rewritten atomically (temp file + rename).
//!
//! Layers are shared between images by diff id and deleted with the last image using them.
//! All methods are synchronous; the engine calls them from `spawn_blocking`. One mutex guards
//! the in-memory index (quick), a second serialises loads with removals so that a layer a load
//! is reusing is never collected under it.

mod archive;
pub mod changes;
pub(crate) mod layer;
pub mod layer_export;
mod local;
mod pulled;
pub mod reference;
pub mod registry;
#[cfg(test)]
mod testutil;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub use archive::host_architecture;
use archive::{digest_hex, PendingImage, Staging};
pub use local::{now, tempfile_in, HistoryEntry, HistoryItem, ImageUsage, NewImage, NewStep};
use reference::{is_lower_hex, AnyReference, Reference};

/// Errors of the image store. Messages the docker CLI shows are Docker's own wording, which is
/// why `No such image` is capitalised.
/// The API's error mapping (`api::error`) turns each into dockerd's HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No image matches the reference; `reference` is Docker's familiar form (`busybox:latest`).
    #[error("No such image: {reference}")]
    NotFound {
        /// The reference as Docker prints it.
        reference: String,
    },
    /// The image is used by a container; `reference` is set when the user named a tag.
    #[error("{}", in_use_message(image, container, reference.as_deref()))]
    InUse {
        /// Full image id.
        image: String,
        /// Id of a container using it.
        container: String,
        /// The tag the user asked to remove, if they gave one.
        reference: Option<String>,
    },
    /// A soft conflict that `force` overrides (e.g. several tags, deleted by id).
    #[error(
        "conflict: unable to delete {} (must be forced) - {reason}",
        short_id(image)
    )]
    Conflict {
        /// Full image id.
        image: String,
        /// Docker's wording of the conflict.
        reason: String,
    },
    /// The image is the parent of another (made by `docker commit` from it): never deleted.
    #[error(
        "conflict: unable to delete {} (cannot be forced) - image has dependent child images",
        short_id(image)
    )]
    HasChildren {
        /// Full image id.
        image: String,
    },
    /// The reference does not parse; `reason` is Docker's message.
    #[error("{reason}")]
    InvalidReference {
        /// What the user wrote.
        reference: String,
        /// Docker's message, e.g. `invalid reference format`.
        reason: String,
    },
    /// The archive given to `load` is not a docker-save or OCI-layout tar.
    #[error("invalid image archive: {reason}")]
    InvalidArchive {
        /// What is wrong with it.
        reason: String,
    },
    /// A layer tar is malformed or hostile (path escape, symlink traversal, bad link).
    #[error("invalid layer {layer}: {reason}")]
    InvalidLayer {
        /// The layer's blob name or diff id.
        layer: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A layer's uncompressed content does not hash to the diff id its config promises.
    #[error("layer content does not match diff id {expected} (got {actual})")]
    DiffIdMismatch {
        /// Diff id from the image config.
        expected: String,
        /// sha256 of the uncompressed tar stream.
        actual: String,
    },
    /// A blob does not hash to the digest it is named by.
    #[error("blob does not match digest {digest} (got {actual})")]
    DigestMismatch {
        /// The digest the archive names it by.
        digest: String,
        /// What its content hashes to.
        actual: String,
    },
    /// A filesystem operation in the store failed.
    #[error("image store i/o on {path}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A store file does not parse.
    #[error("corrupt image store file {path}")]
    Corrupt {
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

fn in_use_message(image: &str, container: &str, reference: Option<&str>) -> String {
    match reference {
        Some(reference) => format!(
            "conflict: unable to remove repository reference \"{reference}\" (must force) - container {} is using its referenced image {}",
            short_id(container),
            short_id(image)
        ),
        None => format!(
            "conflict: unable to delete {} (must be forced) - image is being used by stopped container {}",
            short_id(image),
            short_id(container)
        ),
    }
}

/// The repository of a RepoDigest (`name@sha256:…` → `name`).
fn repository_of_digest(repo_digest: &str) -> &str {
    repo_digest
        .split_once('@')
        .map_or(repo_digest, |(name, _)| name)
}

/// moby's `isSingleReference`: at most one tag, and every digest reference in that tag's
/// repository (or, without a tag, all in one repository). False when there is none.
fn is_single_reference(tags: &[Reference], digests: &[String]) -> bool {
    match tags.len() + digests.len() {
        0 => return false,
        1 => return true,
        _ => {}
    }
    if tags.len() > 1 {
        return false;
    }
    let repositories: BTreeSet<&str> = digests.iter().map(|d| repository_of_digest(d)).collect();
    let single = match tags.first() {
        Some(tag) => tag.familiar_name(),
        None => digests
            .first()
            .map(|d| repository_of_digest(d).to_string())
            .unwrap_or_default(),
    };
    repositories.len() == 1 && repositories.contains(single.as_str())
}

/// Docker's `isImageIDPrefix`: whether the user named the image `image_id` by (a prefix of) its
/// id rather than by a tag. Only then does Docker refuse to delete an image a running container
/// uses ("cannot be forced"); a tag is untagged regardless.
pub fn is_id_reference(reference: &str, image_id: &str) -> bool {
    let hex = image_id.strip_prefix("sha256:").unwrap_or(image_id);
    let wanted = reference.strip_prefix("sha256:").unwrap_or(reference);
    !wanted.is_empty() && hex.starts_with(wanted)
}

/// Docker's `stringid.TruncateID`: the first 12 hex digits, without `sha256:`.
pub fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.get(..12).unwrap_or(hex)
}

/// An image as the engine uses it to create containers.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    /// `sha256:<64 hex>`.
    pub id: String,
    /// Tags in familiar form (`busybox:latest`), sorted.
    pub repo_tags: Vec<String>,
    /// The container defaults from the image config.
    pub config: ImageConfig,
    /// Creation time from the config, RFC 3339 (empty when the config has none).
    pub created: String,
    /// Sum of the layers' content sizes, in bytes.
    pub size: u64,
}

/// The container defaults an image config carries (its `config` object).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// Default command.
    pub cmd: Option<Vec<String>>,
    /// Default entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Default working directory (empty: `/`).
    pub working_dir: String,
    /// Default user (empty: root).
    pub user: String,
    /// Image labels.
    pub labels: BTreeMap<String, String>,
    /// Exposed ports, `80/tcp` style.
    pub exposed_ports: Vec<String>,
    /// Signal to stop containers with, if not SIGTERM.
    pub stop_signal: Option<String>,
    /// Anonymous volume paths.
    pub volumes: Vec<String>,
    /// The image's `HEALTHCHECK`.
    pub healthcheck: Option<crate::container::health::HealthConfig>,
}

impl ImageConfig {
    /// Reads the container defaults from the `config` object of an image config.
    fn from_config_json(config: &Value) -> ImageConfig {
        let c = config.get("config").or_else(|| config.get("Config"));
        let Some(c) = c.filter(|c| c.is_object()) else {
            return ImageConfig::default();
        };
        let strings = |key: &str| -> Option<Vec<String>> {
            c.get(key)?.as_array().map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
        };
        let string = |key: &str| c.get(key).and_then(Value::as_str).map(str::to_string);
        let keys = |key: &str| -> Vec<String> {
            c.get(key)
                .and_then(Value::as_object)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        };
        ImageConfig {
            env: strings("Env").unwrap_or_default(),
            cmd: strings("Cmd"),
            entrypoint: strings("Entrypoint"),
            working_dir: string("WorkingDir").unwrap_or_default(),
            user: string("User").unwrap_or_default(),
            labels: c
                .get("Labels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
            exposed_ports: keys("ExposedPorts"),
            stop_signal: string("StopSignal").filter(|s| !s.is_empty()),
            volumes: keys("Volumes"),
            healthcheck: c
                .get("Healthcheck")
                .and_then(|v| serde_json::from_value(v.clone()).ok()),
        }
    }
}

/// One item of `GET /images/json`, with Docker's field names.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageSummary {
    /// `sha256:<hex>`.
    pub id: String,
    /// The local parent (a committed image's), else empty.
    pub parent_id: String,
    /// Familiar tags; empty for a dangling image.
    pub repo_tags: Vec<String>,
    /// `name@sha256:…` of the manifests the image was pulled by.
    pub repo_digests: Vec<String>,
    /// Creation time, unix seconds.
    pub created: i64,
    /// Bytes of layer content.
    pub size: i64,
    /// Not computed, as Docker does by default: -1.
    pub shared_size: i64,
    /// Image labels.
    pub labels: BTreeMap<String, String>,
    /// Not computed, as Docker does by default: -1.
    pub containers: i64,
}

/// One line of `DELETE /images/{name}`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum DeleteItem {
    /// A tag was removed (familiar form).
    Untagged(String),
    /// An image or layer was deleted (`sha256:…`).
    Deleted(String),
}

/// The per-image record file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImageMeta {
    id: String,
    size: u64,
    #[serde(default)]
    last_tag_time: Option<String>,
    /// The image this one was made from locally (commit), for `history` and `Parent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent: Option<String>,
    /// `name@sha256:…` of the manifests the image was pulled by (familiar names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    repo_digests: Vec<String>,
}

/// The per-layer record file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerMeta {
    #[serde(rename = "DiffID")]
    diff_id: String,
    #[serde(rename = "Size")]
    size: u64,
}

/// `repositories.json`, Docker's shape.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Repositories {
    #[serde(rename = "Repositories", default)]
    repositories: BTreeMap<String, BTreeMap<String, String>>,
}

/// An image in memory.
#[derive(Debug, Clone)]
struct StoredImage {
    meta: ImageMeta,
    config: Value,
    diff_ids: Vec<String>,
}

impl StoredImage {
    fn created(&self) -> String {
        self.config
            .get("created")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }
}

/// The in-memory index, guarded by one mutex.
#[derive(Debug, Default)]
struct State {
    /// Tag (always with a tag, no digest) → image id.
    tags: BTreeMap<Reference, String>,
    images: BTreeMap<String, StoredImage>,
}

impl State {
    /// The image's RepoDigests (`name@sha256:…`, familiar names).
    fn repo_digests_of(&self, id: &str) -> Vec<String> {
        self.images
            .get(id)
            .map(|img| img.meta.repo_digests.clone())
            .unwrap_or_default()
    }

    fn tags_of(&self, id: &str) -> Vec<Reference> {
        self.tags
            .iter()
            .filter(|(_, v)| v.as_str() == id)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Whether another image was committed from `id`.
    fn has_children(&self, id: &str) -> bool {
        self.images
            .values()
            .any(|i| i.meta.parent.as_deref() == Some(id))
    }

    fn familiar_tags_of(&self, id: &str) -> Vec<String> {
        let mut tags: Vec<String> = self.tags_of(id).iter().map(Reference::familiar).collect();
        tags.sort();
        tags
    }
}

/// The image store. Cheap to share in an `Arc`; all methods lock internally.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    state: Mutex<State>,
    /// Held by `load` and `remove` for their whole run (see the module docs).
    write_lock: Mutex<()>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see half,
/// and durably (the directory is flushed too): what `load`, `tag` and `rmi` acknowledge
/// survives a power cut.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    crate::state::durable::write_atomic(path, bytes, 0o644).map_err(io_err(path))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ImageError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|source| ImageError::Corrupt {
        path: path.to_path_buf(),
        source,
    })
}

/// An error with its causes, `: `-separated, for logs.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// The file beside a layer's `diff/` that rebuilds its original tar (see `layer::reassemble`).
const TAR_SPLIT: &str = "tar-split.gz";

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Docker's chain ids: the first layer's diff id, then sha256 of "<parent chain> <diff id>".
fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{parent} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

impl ImageStore {
    /// Opens (creating if needed) the store under `root` (= `<data-root>/image`).
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        for dir in ["blobs/sha256", "images", "layers", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        // Leftovers of loads interrupted by a crash.
        let tmp = root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let path = entry.map_err(io_err(&tmp))?.path();
            if let Err(e) = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path)) {
                tracing::warn!(path = %path.display(), error = %e, "cannot clean up image store temp entry");
            }
        }
        let store = ImageStore {
            root: root.to_path_buf(),
            state: Mutex::new(State::default()),
            write_lock: Mutex::new(()),
        };
        let state = store.read_state()?;
        *store.lock() = state;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is only ever replaced whole or edited in steps that leave it consistent,
        // so a panic elsewhere does not make it unusable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_guard(&self) -> MutexGuard<'_, ()> {
        self.write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex)
    }

    fn image_meta_path(&self, hex: &str) -> PathBuf {
        self.root.join("images").join(format!("{hex}.json"))
    }

    fn layer_dir(&self, diff_hex: &str) -> PathBuf {
        self.root.join("layers").join(diff_hex)
    }

    fn repositories_path(&self) -> PathBuf {
        self.root.join("repositories.json")
    }

    fn temp_dir(&self, kind: &str) -> Result<PathBuf, ImageError> {
        let path = self
            .root
            .join("tmp")
            .join(format!("{kind}-{:016x}", rand::random::<u64>()));
        fs::create_dir(&path).map_err(io_err(&path))?;
        Ok(path)
    }

    /// Reads one image record and its config; `None` for something that is not a record.
    fn read_image(&self, path: &Path) -> Result<Option<StoredImage>, ImageError> {
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            return Ok(None);
        }
        let meta: ImageMeta = read_json(path)?;
        let hex = digest_hex(&meta.id).ok_or_else(|| ImageError::InvalidArchive {
            reason: format!("image record {} has an invalid id", path.display()),
        })?;
        let config_path = self.blob_path(hex);
        let bytes = fs::read(&config_path).map_err(io_err(&config_path))?;
        let config: Value =
            serde_json::from_slice(&bytes).map_err(|source| ImageError::Corrupt {
                path: config_path.clone(),
                source,
            })?;
        let diff_ids = archive::config_diff_ids(&bytes)?;
        for diff_id in &diff_ids {
            let layer_meta = self
                .layer_dir(digest_hex(diff_id).unwrap_or_default())
                .join("layer.json");
            fs::metadata(&layer_meta).map_err(io_err(&layer_meta))?;
        }
        Ok(Some(StoredImage {
            meta,
            config,
            diff_ids,
        }))
    }

    /// Reads every image record and the tags from disk. An image whose files are damaged is
    /// skipped with a warning rather than keeping the whole engine from starting.
    fn read_state(&self) -> Result<State, ImageError> {
        let mut state = State::default();
        let images_dir = self.root.join("images");
        for entry in fs::read_dir(&images_dir).map_err(io_err(&images_dir))? {
            let path = entry.map_err(io_err(&images_dir))?.path();
            match self.read_image(&path) {
                Ok(Some(image)) => {
                    state.images.insert(image.meta.id.clone(), image);
                }
                Ok(None) => {}
                Err(e) => {
                    let error = error_chain(&e);
                    tracing::warn!(path = %path.display(), %error, "skipping a damaged image");
                }
            }
        }
        let repos_path = self.repositories_path();
        if repos_path.exists() {
            let repos: Repositories = read_json(&repos_path)?;
            for (tag, id) in repos.repositories.into_values().flatten() {
                match Reference::parse_normalized(&tag) {
                    Ok(r) if state.images.contains_key(&id) => {
                        state.tags.insert(r.with_default_tag(), id);
                    }
                    _ => tracing::warn!(tag, id, "dropping a tag of a missing image"),
                }
            }
        }
        Ok(state)
    }

    fn write_repositories(&self, state: &State) -> Result<(), ImageError> {
        let mut repos = Repositories::default();
        for (r, id) in &state.tags {
            repos
                .repositories
                .entry(r.familiar_name())
                .or_default()
                .insert(r.familiar(), id.clone());
        }
        let bytes = serde_json::to_vec_pretty(&repos).map_err(|source| ImageError::Corrupt {
            path: self.repositories_path(),
            source,
        })?;
        write_atomic(&self.repositories_path(), &bytes)
    }

    /// Loads a `docker save` archive or an OCI image-layout tar (either may be gzip-compressed).
    ///
    /// Calls `progress` with each line Docker prints (`Loaded image: busybox:latest`, `Loaded
    /// image ID: sha256:…`, and the notice when a tag moves) and returns them too.
    pub fn load(
        &self,
        input: &mut dyn io::Read,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Vec<String>, ImageError> {
        let _write = self.write_guard();
        let staging_dir = self.temp_dir("load")?;
        let result = self.load_staged(input, &staging_dir, progress);
        if let Err(e) = fs::remove_dir_all(&staging_dir) {
            tracing::warn!(path = %staging_dir.display(), error = %e, "cannot remove load staging directory");
        }
        result
    }

    fn load_staged(
        &self,
        input: &mut dyn io::Read,
        staging_dir: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Vec<String>, ImageError> {
        let staging = Staging::unpack(input, staging_dir)?;
        let pending = archive::parse(&staging)?;
        if pending.is_empty() {
            return Err(ImageError::InvalidArchive {
                reason: "the archive contains no image".to_string(),
            });
        }
        let mut lines = Vec::new();
        for image in &pending {
            let size = self.install_layers(&staging, image)?;
            for line in self.commit(image, size)? {
                progress(&line);
                lines.push(line);
            }
        }
        Ok(lines)
    }

    /// Extracts the layers of `image` that are not in the store yet; returns the image's size.
    fn install_layers(&self, staging: &Staging, image: &PendingImage) -> Result<u64, ImageError> {
        let mut total = 0;
        for layer in &image.layers {
            let diff_hex =
                digest_hex(&layer.diff_id).ok_or_else(|| ImageError::InvalidArchive {
                    reason: format!("invalid diff id {}", layer.diff_id),
                })?;
            let dir = self.layer_dir(diff_hex);
            let meta_path = dir.join("layer.json");
            if meta_path.exists() {
                let meta: LayerMeta = read_json(&meta_path)?;
                total += meta.size;
                continue;
            }
            let blob_path =
                staging
                    .path(&layer.blob)
                    .ok_or_else(|| ImageError::InvalidArchive {
                        reason: format!("{} is missing from the archive", layer.blob),
                    })?;
            if let Some(digest) = &layer.digest {
                archive::verify_blob_file(&blob_path, digest)?;
            }
            let file = staging.open(&layer.blob)?;
            let reader = layer::decompress(file, &layer.blob)?;
            let (_, size) = self.install_layer(reader, &layer.blob, Some(&layer.diff_id))?;
            total += size;
        }
        Ok(total)
    }

    /// Extracts one uncompressed layer stream into the store (with its tar-split), unless a
    /// layer of the same diff id is there already; returns the diff id and content size.
    /// `expected` is the diff id the image config promises: a mismatch stores nothing.
    fn install_layer(
        &self,
        reader: impl io::Read,
        name: &str,
        expected: Option<&str>,
    ) -> Result<(String, u64), ImageError> {
        let tmp = self.temp_dir("layer")?;
        let result = (|| {
            let diff = tmp.join("diff");
            fs::create_dir(&diff).map_err(io_err(&diff))?;
            let split_path = tmp.join(TAR_SPLIT);
            let split_file = fs::File::create(&split_path).map_err(io_err(&split_path))?;
            let mut split = flate2::write::GzEncoder::new(split_file, flate2::Compression::fast());
            let extracted = layer::extract_with_split(reader, &diff, name, Some(&mut split))?;
            split.finish().map_err(io_err(&split_path))?;
            if let Some(expected) = expected {
                if extracted.diff_id != expected {
                    return Err(ImageError::DiffIdMismatch {
                        expected: expected.to_string(),
                        actual: extracted.diff_id,
                    });
                }
            }
            let meta = LayerMeta {
                diff_id: extracted.diff_id.clone(),
                size: extracted.size,
            };
            let bytes = serde_json::to_vec(&meta).map_err(|source| ImageError::Corrupt {
                path: tmp.join("layer.json"),
                source,
            })?;
            // Inside the layer's scratch directory: the syncfs before the rename that
            // publishes the whole directory flushes it too.
            let meta_path = tmp.join("layer.json");
            fs::write(&meta_path, &bytes).map_err(io_err(&meta_path))?;
            Ok(extracted)
        })();
        let extracted = match result {
            Ok(extracted) => extracted,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let diff_hex = digest_hex(&extracted.diff_id)
            .unwrap_or_default()
            .to_string();
        let dir = self.layer_dir(&diff_hex);
        if dir.join("layer.json").exists() {
            // Same content already stored (a commit that produced a known layer).
            let _ = fs::remove_dir_all(&tmp);
            return Ok((extracted.diff_id, extracted.size));
        }
        // The layer's files reach the disk before the rename publishes them: one syncfs for
        // the whole tree, cheaper than an fsync per file (see state::durable).
        crate::state::durable::sync_filesystem(&tmp).map_err(io_err(&tmp))?;
        if let Err(e) = fs::rename(&tmp, &dir) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(io_err(&dir)(e));
        }
        crate::state::durable::sync_parent(&dir).map_err(io_err(&dir))?;
        tracing::debug!(diff_id = %extracted.diff_id, size = extracted.size, "layer extracted");
        Ok((extracted.diff_id, extracted.size))
    }

    /// Records a loaded image and moves its tags; returns the lines Docker prints.
    fn commit(&self, image: &PendingImage, size: u64) -> Result<Vec<String>, ImageError> {
        let id = image.id();
        let hex = digest_hex(&id).unwrap_or_default().to_string();
        let config: Value =
            serde_json::from_slice(&image.config).map_err(|e| ImageError::InvalidArchive {
                reason: format!("image config: {e}"),
            })?;
        let diff_ids = image.layers.iter().map(|l| l.diff_id.clone()).collect();
        let blob = self.blob_path(&hex);
        if !blob.exists() {
            write_atomic(&blob, &image.config)?;
        }

        let mut state = self.lock();
        let mut lines = Vec::new();
        let tag_time = (!image.tags.is_empty()).then(now_rfc3339);
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
                config,
                diff_ids,
            },
        };
        if tag_time.is_some() {
            stored.meta.last_tag_time = tag_time;
        }
        let meta_bytes =
            serde_json::to_vec(&stored.meta).map_err(|source| ImageError::Corrupt {
                path: self.image_meta_path(&hex),
                source,
            })?;
        write_atomic(&self.image_meta_path(&hex), &meta_bytes)?;
        state.images.insert(id.clone(), stored);

        for tag in &image.tags {
            if let Some(old) = state.tags.insert(tag.clone(), id.clone()) {
                if old != id {
                    lines.push(format!(
                        "The image {} already exists, renaming the old one with ID {old} to empty string",
                        tag.familiar()
                    ));
                }
            }
            lines.push(format!("Loaded image: {}", tag.familiar()));
        }
        if image.tags.is_empty() {
            lines.push(format!("Loaded image ID: {id}"));
        }
        self.write_repositories(&state)?;
        tracing::info!(image = %id, tags = ?image.tags.iter().map(Reference::familiar).collect::<Vec<_>>(), "image loaded");
        Ok(lines)
    }

    /// Docker's `GET /images/json` items, newest first.
    pub fn list(&self) -> Result<Vec<ImageSummary>, ImageError> {
        let state = self.lock();
        let mut out: Vec<ImageSummary> = state
            .images
            .values()
            .map(|img| {
                let created = chrono::DateTime::parse_from_rfc3339(&img.created())
                    .map(|t| t.timestamp())
                    .unwrap_or(0);
                ImageSummary {
                    id: img.meta.id.clone(),
                    parent_id: img.meta.parent.clone().unwrap_or_default(),
                    repo_tags: state.familiar_tags_of(&img.meta.id),
                    repo_digests: img.meta.repo_digests.clone(),
                    created,
                    size: i64::try_from(img.meta.size).unwrap_or(i64::MAX),
                    shared_size: -1,
                    labels: ImageConfig::from_config_json(&img.config).labels,
                    containers: -1,
                }
            })
            .collect();
        out.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Finds the id `reference` denotes, following Docker's `GetImage`: a full id, then a tag,
    /// then a unique id prefix.
    fn resolve_id(&self, state: &State, reference: &str) -> Result<String, ImageError> {
        let parsed = AnyReference::parse(reference).map_err(|e| ImageError::InvalidReference {
            reference: reference.to_string(),
            reason: e.reason,
        })?;
        let named = match parsed {
            AnyReference::Id(id) => {
                return if state.images.contains_key(&id) {
                    Ok(id)
                } else {
                    Err(ImageError::NotFound { reference: id })
                };
            }
            AnyReference::Named(named) => named.with_default_tag(),
        };
        if let Some(id) = state.tags.get(&named) {
            return Ok(id.clone());
        }
        if let Some(digest) = &named.digest {
            let wanted = format!("{}@{digest}", named.familiar_name());
            if let Some(img) = state
                .images
                .values()
                .find(|i| i.meta.repo_digests.contains(&wanted))
            {
                return Ok(img.meta.id.clone());
            }
        }
        let prefix = reference.strip_prefix("sha256:").unwrap_or(reference);
        if is_lower_hex(prefix) {
            let mut matches = state.images.keys().filter(|id| {
                id.strip_prefix("sha256:")
                    .is_some_and(|h| h.starts_with(prefix))
            });
            if let (Some(id), None) = (matches.next(), matches.next()) {
                return Ok(id.clone());
            }
        }
        Err(ImageError::NotFound {
            reference: named.familiar(),
        })
    }

    /// Resolves a user reference (`name`, `name:tag`, `docker.io/library/name:tag`, a full or
    /// `sha256:`-prefixed id, or a unique id prefix) to an image.
    pub fn resolve(&self, reference: &str) -> Result<ImageRecord, ImageError> {
        let state = self.lock();
        let id = self.resolve_id(&state, reference)?;
        let img = state.images.get(&id).ok_or_else(|| ImageError::NotFound {
            reference: id.clone(),
        })?;
        Ok(ImageRecord {
            id: id.clone(),
            repo_tags: state.familiar_tags_of(&id),
            config: ImageConfig::from_config_json(&img.config),
            created: img.created(),
            size: img.meta.size,
        })
    }

    /// Docker's `GET /images/{name}/json` body.
    pub fn inspect(&self, reference: &str) -> Result<ImageInspect, ImageError> {
        let state = self.lock();
        let id = self.resolve_id(&state, reference)?;
        let img = state.images.get(&id).ok_or_else(|| ImageError::NotFound {
            reference: id.clone(),
        })?;
        let c = &img.config;
        let str_field = |key: &str| {
            c.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let mut layers_top_first: Vec<String> = img
            .diff_ids
            .iter()
            .rev()
            .filter_map(|d| digest_hex(d))
            .map(|h| self.layer_dir(h).join("diff").display().to_string())
            .collect();
        let graph_data = if layers_top_first.is_empty() {
            GraphDriverData::default()
        } else {
            let upper = layers_top_first.remove(0);
            GraphDriverData {
                lower_dir: (!layers_top_first.is_empty()).then(|| layers_top_first.join(":")),
                upper_dir: Some(upper),
            }
        };
        Ok(ImageInspect {
            repo_tags: state.familiar_tags_of(&id),
            id,
            repo_digests: img.meta.repo_digests.clone(),
            parent: img.meta.parent.clone().unwrap_or_default(),
            comment: str_field("comment"),
            created: str_field("created"),
            docker_version: str_field("docker_version"),
            author: str_field("author"),
            config: inspect_config(c.get("config")),
            architecture: str_field("architecture"),
            variant: c.get("variant").and_then(Value::as_str).map(str::to_string),
            os: str_field("os"),
            size: img.meta.size,
            graph_driver: ImageGraphDriver {
                name: "overlay2",
                data: graph_data,
            },
            root_fs: ImageRootFs {
                kind: "layers",
                layers: img.diff_ids.clone(),
            },
            metadata: ImageMetadata {
                last_tag_time: img
                    .meta
                    .last_tag_time
                    .clone()
                    .unwrap_or_else(|| "0001-01-01T00:00:00Z".to_string()),
            },
        })
    }

    /// `DELETE /images/{name}`: untags, and deletes the image once no reference is left (or
    /// when named by id). References are tags and RepoDigests, as in moby's reference store.
    /// `in_use(image_id)` returns a container using the image, if any.
    ///
    /// Rules (moby's `ImageDelete`): a tag or digest given by name is removed unless it is the
    /// image's single reference and a container uses the image (then `InUse`, unless `force`);
    /// removing a repository's last tag also removes that repository's digests. An id whose
    /// references span several repositories or tags needs `force` (`Conflict`). An image a container uses is never deleted:
    /// `force` only removes its tags. The engine reports running containers itself, before
    /// calling this, with Docker's "cannot be forced" message, when [`is_id_reference`] holds.
    /// `in_use` is called with the store locked: it must not call back into the store.
    pub fn remove(
        &self,
        reference: &str,
        force: bool,
        in_use: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<DeleteItem>, ImageError> {
        let _write = self.write_guard();
        let mut state = self.lock();
        let id = self.resolve_id(&state, reference)?;
        let hex = id.strip_prefix("sha256:").unwrap_or(&id);
        let by_id = is_id_reference(reference, &id);
        let tags = state.tags_of(&id);
        let digests = state.repo_digests_of(&id);
        let single = is_single_reference(&tags, &digests);
        let mut items = Vec::new();
        // Tags whose removal could not be written yet (a full disk): written once the image's
        // files are gone (see `write_repositories_unless_full`).
        let tags_pending;

        if !by_id {
            let named = Reference::parse_normalized(reference)
                .map_err(|e| ImageError::InvalidReference {
                    reference: reference.to_string(),
                    reason: e.reason,
                })?
                .with_default_tag();
            if !force && single {
                if let Some(container) = in_use(&id) {
                    return Err(ImageError::InUse {
                        image: id,
                        container,
                        reference: Some(reference.to_string()),
                    });
                }
            }
            let repository = named.familiar_name();
            let mut dropped_digests = Vec::new();
            if let Some(digest) = &named.digest {
                // A digest reference names one of the image's RepoDigests (moby keeps them
                // in its reference store beside the tags).
                dropped_digests.push(format!("{repository}@{digest}"));
                items.push(DeleteItem::Untagged(named.familiar()));
            } else {
                state.tags.remove(&named);
                items.push(DeleteItem::Untagged(named.familiar()));
                // The repository's last tag gone: its digest references go with it, as moby's.
                let tag_left = state
                    .tags_of(&id)
                    .iter()
                    .any(|t| t.familiar_name() == repository);
                if !tag_left {
                    for digest in &digests {
                        if repository_of_digest(digest) == repository {
                            dropped_digests.push(digest.clone());
                            items.push(DeleteItem::Untagged(digest.clone()));
                        }
                    }
                }
            }
            let digests_left = digests.len()
                - digests
                    .iter()
                    .filter(|d| dropped_digests.contains(d))
                    .count();
            let deleting = state.tags_of(&id).is_empty()
                && digests_left == 0
                && in_use(&id).is_none()
                && !state.has_children(&id);
            if !deleting && !dropped_digests.is_empty() {
                self.drop_repo_digests(&mut state, &id, &dropped_digests)?;
            }
            tags_pending = self.write_repositories_unless_full(&state, deleting)?;
            if !deleting {
                return Ok(items);
            }
        } else {
            if state.has_children(&id) {
                return Err(ImageError::HasChildren { image: id });
            }
            let used = in_use(&id);
            if !force {
                let referenced = !tags.is_empty() || !digests.is_empty();
                if referenced && !single {
                    return Err(ImageError::Conflict {
                        image: id,
                        reason: "image is referenced in multiple repositories".to_string(),
                    });
                }
                if let Some(container) = used {
                    return Err(ImageError::InUse {
                        image: id,
                        container,
                        reference: None,
                    });
                }
            }
            let mut references: Vec<String> = tags
                .iter()
                .map(Reference::familiar)
                .chain(digests.iter().cloned())
                .collect();
            references.sort();
            for tag in &tags {
                state.tags.remove(tag);
            }
            items.extend(references.into_iter().map(DeleteItem::Untagged));
            if used.is_some() && !digests.is_empty() {
                self.drop_repo_digests(&mut state, &id, &digests)?;
            }
            tags_pending = self.write_repositories_unless_full(&state, used.is_none())?;
            if used.is_some() {
                return Ok(items);
            }
        }

        // Delete the image, then every layer no other image needs.
        let Some(img) = state.images.remove(&id) else {
            if tags_pending {
                self.write_repositories(&state)?;
            }
            return Ok(items);
        };
        let hex = hex.to_string();
        let meta_path = self.image_meta_path(&hex);
        fs::remove_file(&meta_path).map_err(io_err(&meta_path))?;
        // The image is gone once its record is: make that removal durable.
        crate::state::durable::sync_parent(&meta_path).map_err(io_err(&meta_path))?;
        let blob = self.blob_path(&hex);
        if let Err(e) = fs::remove_file(&blob) {
            tracing::warn!(path = %blob.display(), error = %e, "cannot remove image config blob");
        }
        items.push(DeleteItem::Deleted(id.clone()));
        let still_used: BTreeSet<&String> =
            state.images.values().flat_map(|i| &i.diff_ids).collect();
        let chains = chain_ids(&img.diff_ids);
        for (diff_id, chain) in img.diff_ids.iter().zip(chains).rev() {
            if still_used.contains(diff_id) {
                continue;
            }
            let Some(diff_hex) = digest_hex(diff_id) else {
                continue;
            };
            let dir = self.layer_dir(diff_hex);
            if !dir.exists() {
                continue;
            }
            // Renamed away first, so no half-deleted layer is ever visible under layers/.
            let doomed = self
                .root
                .join("tmp")
                .join(format!("gc-{:016x}", rand::random::<u64>()));
            fs::rename(&dir, &doomed).map_err(io_err(&dir))?;
            if let Err(e) = fs::remove_dir_all(&doomed) {
                tracing::warn!(path = %doomed.display(), error = %e, "cannot remove deleted layer");
            }
            items.push(DeleteItem::Deleted(chain));
        }
        if tags_pending {
            self.write_repositories(&state)?;
        }
        tracing::info!(image = %id, "image deleted");
        Ok(items)
    }

    /// Removes `dropped` from the image's RepoDigests and writes its record.
    fn drop_repo_digests(
        &self,
        state: &mut State,
        id: &str,
        dropped: &[String],
    ) -> Result<(), ImageError> {
        let Some(img) = state.images.get_mut(id) else {
            return Ok(());
        };
        img.meta.repo_digests.retain(|d| !dropped.contains(d));
        let hex = digest_hex(id).unwrap_or_default().to_string();
        let path = self.image_meta_path(&hex);
        let bytes = serde_json::to_vec(&img.meta).map_err(|source| ImageError::Corrupt {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes)
    }

    /// Writes the tags, except when the disk is full and the image losing them is about to be
    /// deleted (`deleting`): then returns true and the caller writes them after deleting the
    /// image's files, so that `rmi` works on a full disk. A crash in between is harmless:
    /// tags of an image without a record are dropped when the store opens.
    fn write_repositories_unless_full(
        &self,
        state: &State,
        deleting: bool,
    ) -> Result<bool, ImageError> {
        match self.write_repositories(state) {
            Ok(()) => Ok(false),
            Err(ImageError::Io { source, .. })
                if deleting && source.raw_os_error() == Some(libc::ENOSPC) =>
            {
                tracing::warn!("disk full: the tags are written after the image is deleted");
                Ok(true)
            }
            Err(err) => Err(err),
        }
    }

    /// The overlayfs lower dirs of an image's root filesystem, topmost layer first. Empty for
    /// an image without layers (the engine then needs an empty lower dir of its own).
    pub fn rootfs_layers(&self, image_id: &str) -> Result<Vec<PathBuf>, ImageError> {
        let state = self.lock();
        let id = if image_id.starts_with("sha256:") {
            image_id.to_string()
        } else {
            format!("sha256:{image_id}")
        };
        let img = state.images.get(&id).ok_or_else(|| ImageError::NotFound {
            reference: image_id.to_string(),
        })?;
        Ok(img
            .diff_ids
            .iter()
            .rev()
            .filter_map(|d| digest_hex(d))
            .map(|h| self.layer_dir(h).join("diff"))
            .collect())
    }

    /// Points `reference` (`repo` or `repo:tag`) at the image `image_id` (any form `resolve`
    /// accepts), moving the tag if it pointed elsewhere.
    pub fn tag(&self, image_id: &str, reference: &str) -> Result<(), ImageError> {
        let named =
            Reference::parse_normalized(reference).map_err(|e| ImageError::InvalidReference {
                reference: reference.to_string(),
                reason: e.reason,
            })?;
        if named.digest.is_some() {
            return Err(ImageError::InvalidReference {
                reference: reference.to_string(),
                reason: "refusing to create a tag with a digest reference".to_string(),
            });
        }
        let named = named.with_default_tag();
        let mut state = self.lock();
        let id = self.resolve_id(&state, image_id)?;
        let hex = id.strip_prefix("sha256:").unwrap_or(&id).to_string();
        state.tags.insert(named.clone(), id.clone());
        self.write_repositories(&state)?;
        if let Some(img) = state.images.get_mut(&id) {
            img.meta.last_tag_time = Some(now_rfc3339());
            let bytes = serde_json::to_vec(&img.meta).map_err(|source| ImageError::Corrupt {
                path: self.image_meta_path(&hex),
                source,
            })?;
            write_atomic(&self.image_meta_path(&hex), &bytes)?;
        }
        tracing::info!(image = %id, tag = %named.familiar(), "image tagged");
        Ok(())
    }
}

/// The `Config` object of an inspect body: Docker's container-config shape with the image's
/// values, so clients that read `Config.Hostname` and friends find them.
/// Docker's `GET /images/{name}/json` body (`image.InspectResponse`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageInspect {
    /// `sha256:<hex>`.
    pub id: String,
    /// Familiar `name:tag` references.
    pub repo_tags: Vec<String>,
    /// `name@sha256:…` of the manifests the image was pulled by.
    pub repo_digests: Vec<String>,
    /// The local parent (a committed image's), else empty.
    pub parent: String,
    /// The image config's `comment`.
    pub comment: String,
    /// The image config's `created`, as written there.
    pub created: String,
    /// The image config's `docker_version`.
    pub docker_version: String,
    /// The image config's `author`.
    pub author: String,
    /// The image's container config over Docker's defaults; it stays JSON because an image
    /// may carry any key of the config (`ExposedPorts`, `Healthcheck`...) and all are shown.
    pub config: Value,
    /// The image config's `architecture`.
    pub architecture: String,
    /// The image config's `variant`, left out when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The image config's `os`.
    pub os: String,
    /// Unpacked size in bytes.
    pub size: u64,
    /// Where the layers are unpacked.
    pub graph_driver: ImageGraphDriver,
    /// The layers' diff ids, bottom first.
    #[serde(rename = "RootFS")]
    pub root_fs: ImageRootFs,
    /// Local metadata.
    pub metadata: ImageMetadata,
}

/// `GraphDriver` of an image inspect.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageGraphDriver {
    /// Always `overlay2`.
    pub name: &'static str,
    /// The layer directories.
    pub data: GraphDriverData,
}

/// `GraphDriver.Data`: empty for an image without layers.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GraphDriverData {
    /// The layers below the top one, top first, `:`-separated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lower_dir: Option<String>,
    /// The top layer's directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upper_dir: Option<String>,
}

/// `RootFS` of an image inspect.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRootFs {
    /// Always `layers`.
    #[serde(rename = "Type")]
    pub kind: &'static str,
    /// Diff ids, bottom first.
    #[serde(rename = "Layers")]
    pub layers: Vec<String>,
}

/// `Metadata` of an image inspect.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageMetadata {
    /// When a tag was last set, or Go's zero time.
    pub last_tag_time: String,
}

fn inspect_config(config: Option<&Value>) -> Value {
    let mut out = json!({
        "Hostname": "",
        "Domainname": "",
        "User": "",
        "AttachStdin": false,
        "AttachStdout": false,
        "AttachStderr": false,
        "Tty": false,
        "OpenStdin": false,
        "StdinOnce": false,
        "Env": null,
        "Cmd": null,
        "Image": "",
        "Volumes": null,
        "WorkingDir": "",
        "Entrypoint": null,
        "OnBuild": null,
        "Labels": null,
    });
    if let (Some(Value::Object(src)), Value::Object(dst)) = (config, &mut out) {
        for (k, v) in src {
            dst.insert(k.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests;
