//! The build cache: which image a step produced from a given parent and container config.
//!
//! dockerd's classic builder finds a cached step by looking for a child of the parent image
//! whose `container_config` equals the step's (the `Cmd` carries the instruction, `#(nop)`
//! comments for config-only steps, and the content checksum of COPY/ADD sources). Here each
//! such pair is one small file, `<data-root>/builder/cache/<sha256(parent NUL config)>`,
//! holding the image id, so the cache survives engine restarts; an entry whose image is gone
//! is a miss.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{io_err, BuildError};

/// The cache directory of a data root.
#[derive(Debug, Clone)]
pub struct BuildCache {
    dir: PathBuf,
}

impl BuildCache {
    /// The cache under `<data_root>/builder/cache`.
    pub fn new(data_root: &Path) -> BuildCache {
        BuildCache {
            dir: data_root.join("builder").join("cache"),
        }
    }

    fn key(parent: &str, container_config: &serde_json::Value) -> String {
        let mut h = Sha256::new();
        h.update(parent.as_bytes());
        h.update([0]);
        h.update(container_config.to_string().as_bytes());
        hex::encode(h.finalize())
    }

    /// The image a step with this parent and container config made before, if recorded.
    pub fn get(&self, parent: &str, container_config: &serde_json::Value) -> Option<String> {
        let path = self.dir.join(Self::key(parent, container_config));
        fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| s.starts_with("sha256:"))
    }

    /// Records the image a step made.
    pub fn put(
        &self,
        parent: &str,
        container_config: &serde_json::Value,
        image: &str,
    ) -> Result<(), BuildError> {
        if !self.dir.is_dir() {
            fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
            // Like image/ and tmp/: no other user may look (dockerd's 0700).
            if let Some(builder) = self.dir.parent() {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(builder, fs::Permissions::from_mode(0o700))
                    .map_err(io_err(builder))?;
            }
        }
        let path = self.dir.join(Self::key(parent, container_config));
        crate::state::durable::write_atomic(&path, image.as_bytes(), 0o600).map_err(io_err(&path))
    }

    /// Every entry whose image `exists` still (the others are misses, not cache), oldest
    /// first.
    pub fn entries(&self, exists: impl Fn(&str) -> bool) -> Result<Vec<CacheEntry>, BuildError> {
        let dir = match fs::read_dir(&self.dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in dir {
            let entry = entry.map_err(io_err(&self.dir))?;
            let path = entry.path();
            let Ok(image) = fs::read_to_string(&path) else {
                continue;
            };
            let image = image.trim().to_string();
            if !image.starts_with("sha256:") || !exists(&image) {
                continue;
            }
            let created = entry
                .metadata()
                .and_then(|m| m.modified())
                .map_err(io_err(&path))?;
            out.push(CacheEntry {
                key: entry.file_name().to_string_lossy().into_owned(),
                image,
                created,
            });
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.key.cmp(&b.key)));
        Ok(out)
    }

    /// Forgets every entry (`docker builder prune`); returns the keys removed.
    pub fn clear(&self) -> Result<Vec<String>, BuildError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut removed = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&self.dir))?;
            let path = entry.path();
            fs::remove_file(&path).map_err(io_err(&path))?;
            removed.push(entry.file_name().to_string_lossy().into_owned());
        }
        removed.sort();
        Ok(removed)
    }
}

/// One cached step: its key, the image it made and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// The entry's file name (hex sha256 of parent and config).
    pub key: String,
    /// The image the step made.
    pub image: String,
    /// When the step was recorded.
    pub created: std::time::SystemTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_by_parent_and_config_and_persisted() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = BuildCache::new(tmp.path());
        let cfg = serde_json::json!({"Cmd": ["/bin/sh", "-c", "echo hi"]});
        assert_eq!(cache.get("sha256:a", &cfg), None);
        cache.put("sha256:a", &cfg, "sha256:b").expect("put");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(tmp.path().join("builder"))
                .expect("stat")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(
            BuildCache::new(tmp.path()).get("sha256:a", &cfg).as_deref(),
            Some("sha256:b")
        );
        assert_eq!(cache.get("sha256:c", &cfg), None);
        let other = serde_json::json!({"Cmd": ["/bin/sh", "-c", "echo ho"]});
        assert_eq!(cache.get("sha256:a", &other), None);
        let listed = cache.entries(|id| id == "sha256:b").expect("entries");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].image, "sha256:b");
        // An entry whose image is gone is not cache.
        assert!(cache.entries(|_| false).expect("entries").is_empty());
        assert_eq!(cache.clear().expect("clear"), vec![listed[0].key.clone()]);
        assert_eq!(cache.get("sha256:a", &cfg), None);
    }
}
