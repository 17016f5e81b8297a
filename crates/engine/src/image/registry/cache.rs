//! Which compressed blob each layer (by diff id) was pulled from or pushed as, per registry
//! and repository (dockerd's `v2metadata`): a push skips recompressing a layer the registry
//! already has, and mounts it from another repository of the same registry. Kept in
//! `image/distribution.json`; it is only a cache, so a lost or unreadable file costs a
//! recompression, never a wrong push (blobs are checked with HEAD before being trusted).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One known blob of a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BlobSource {
    /// `sha256:…` of the compressed blob.
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// `host[:port]` of the registry.
    pub registry: String,
    /// Repository path there.
    pub repository: String,
}

/// Serialises read-modify-write cycles of the file within the engine.
static LOCK: Mutex<()> = Mutex::new(());

fn read(path: &Path) -> BTreeMap<String, Vec<BlobSource>> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The known blobs of `diff_id` on `registry`.
pub fn lookup(path: &Path, diff_id: &str, registry: &str) -> Vec<BlobSource> {
    let _guard = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    read(path)
        .remove(diff_id)
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.registry == registry)
        .collect()
}

/// Remembers that `diff_id` is `source` (best effort: a failure is logged).
pub fn remember(path: &Path, diff_id: &str, source: BlobSource) {
    let _guard = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut all = read(path);
    let known = all.entry(diff_id.to_string()).or_default();
    if known.contains(&source) {
        return;
    }
    known.push(source);
    let result = serde_json::to_vec(&all)
        .map_err(std::io::Error::other)
        .and_then(|bytes| crate::state::durable::write_atomic(path, &bytes, 0o644));
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the layer blob cache");
    }
}
