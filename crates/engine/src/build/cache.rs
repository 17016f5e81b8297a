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

    /// Forgets every entry (`docker builder prune`); returns how many there were.
    pub fn clear(&self) -> Result<usize, BuildError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut n = 0;
        for entry in entries {
            let path = entry.map_err(io_err(&self.dir))?.path();
            fs::remove_file(&path).map_err(io_err(&path))?;
            n += 1;
        }
        Ok(n)
    }
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
        assert_eq!(cache.clear().expect("clear"), 1);
        assert_eq!(cache.get("sha256:a", &cfg), None);
    }
}
