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
        let mut out: Vec<CacheEntry> = self
            .records()?
            .into_iter()
            .filter(|r| exists(&r.image))
            .collect();
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.key.cmp(&b.key)));
        Ok(out)
    }

    /// Forgets the entries `filter` selects among those whose image `exists` (the ones
    /// `entries` lists, so `docker system df` and `docker builder prune` agree); returns
    /// their keys. Entries whose image is gone are misses: they are removed too (they are
    /// never listed, and would only be found again as misses).
    pub fn clear(
        &self,
        exists: impl Fn(&str) -> bool,
        filter: &PruneFilter,
    ) -> Result<Vec<String>, BuildError> {
        let mut removed = Vec::new();
        for record in self.records()? {
            let live = exists(&record.image);
            if live && !filter.matches(&record) {
                continue;
            }
            let path = self.dir.join(&record.key);
            match fs::remove_file(&path) {
                Ok(()) => {}
                // A concurrent prune took it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            }
            if live {
                removed.push(record.key);
            }
        }
        removed.sort();
        Ok(removed)
    }

    /// Every readable record, whether or not its image exists. Only names that are keys
    /// (64 hex digits) count: `write_atomic`'s temporary files (`.<key>.tmpXXXX`) live in
    /// the same directory, and any file may vanish between listing and reading it.
    fn records(&self) -> Result<Vec<CacheEntry>, BuildError> {
        let dir = match fs::read_dir(&self.dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in dir {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            let Some(key) = name.to_str().filter(|n| is_key(n)) else {
                continue;
            };
            let path = entry.path();
            let image = match fs::read_to_string(&path) {
                Ok(image) => image.trim().to_string(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            if !image.starts_with("sha256:") {
                continue;
            }
            let created = match entry.metadata().and_then(|m| m.modified()) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            out.push(CacheEntry {
                key: key.to_string(),
                image,
                created,
            });
        }
        Ok(out)
    }
}

/// Whether a file name is a cache key: a hex sha256.
fn is_key(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The `filters` of `POST /build/prune` as they apply to the classic builder's entries
/// (BuildKit's prune: moby's builder-next `toBuildkitPruneInfo`).
#[derive(Debug, Clone, Default)]
pub struct PruneFilter {
    /// `until`/`unused-for`: only entries recorded before this go.
    pub until: Option<std::time::SystemTime>,
    /// `label=`: our entries carry no labels, so a wanted label matches none of them.
    pub wants_label: bool,
    /// The cache-record fields (`id`, `type`, ...) with their wanted value, if any.
    pub fields: Vec<(String, Option<String>)>,
}

impl PruneFilter {
    /// Parses the filters as dockerd validates them; `until` turns an `until` value into
    /// the time it stands for (moby's `timestamp.GetTimestamp` rules).
    pub fn parse(
        filters: &std::collections::BTreeMap<String, Vec<String>>,
        until: impl Fn(&str) -> Result<std::time::SystemTime, String>,
    ) -> Result<PruneFilter, BuildError> {
        let invalid = |reason: String| BuildError::Invalid { reason };
        for key in filters.keys() {
            if !matches!(
                key.as_str(),
                "until"
                    | "unused-for"
                    | "label"
                    | "label!"
                    | "id"
                    | "parent"
                    | "type"
                    | "description"
                    | "inuse"
                    | "shared"
                    | "private"
            ) {
                return Err(invalid(format!("invalid filter '{key}'")));
            }
        }
        let get = |k: &str| filters.get(k).map(Vec::as_slice).unwrap_or_default();
        let (until_values, unused_for) = (get("until"), get("unused-for"));
        if !until_values.is_empty() && !unused_for.is_empty() {
            return Err(invalid(
                "conflicting filters: \"until\" and \"unused-for\"".to_string(),
            ));
        }
        let (key, values) = if unused_for.is_empty() {
            ("until", until_values)
        } else {
            ("unused-for", unused_for)
        };
        let mut out = PruneFilter::default();
        match values {
            [] => {}
            [value] => {
                out.until = Some(until(value).map_err(|e| {
                    invalid(format!(
                        "{key:?} filter expects a duration (e.g., '24h') or a timestamp: {e}"
                    ))
                })?);
            }
            _ => return Err(invalid("filters expect only one value".to_string())),
        }
        out.wants_label = !get("label").is_empty();
        for field in [
            "id",
            "parent",
            "type",
            "description",
            "inuse",
            "shared",
            "private",
        ] {
            if !filters.contains_key(field) {
                continue;
            }
            match get(field) {
                [] => out.fields.push((field.to_string(), None)),
                [value] => out.fields.push((field.to_string(), Some(value.clone()))),
                _ => return Err(invalid("filters expect only one value".to_string())),
            }
        }
        Ok(out)
    }

    /// Whether the filter selects this entry.
    pub fn matches(&self, entry: &CacheEntry) -> bool {
        if self.until.is_some_and(|until| entry.created >= until) {
            return false;
        }
        // `label!=x` selects every entry: none carries label x.
        if self.wants_label {
            return false;
        }
        self.fields.iter().all(|(field, wanted)| {
            let actual = entry.field(field);
            match wanted {
                // BuildKit's `id~=value`: a regular expression over the id.
                Some(wanted) if field == "id" => regex::Regex::new(wanted)
                    .map(|re| re.is_match(&actual))
                    .unwrap_or(false),
                Some(wanted) => actual == *wanted,
                // A bare field name: the field is set (non-empty, not false).
                None => !actual.is_empty() && actual != "false",
            }
        })
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

impl CacheEntry {
    /// The entry's BuildKit record fields as `docker system df -v` shows them.
    pub fn description(&self) -> String {
        let image = self.image.trim_start_matches("sha256:");
        format!(
            "classic builder step: image {}",
            image.get(..12).unwrap_or(image)
        )
    }

    /// A record field by its filter name, as text (`false` for unset booleans).
    fn field(&self, name: &str) -> String {
        match name {
            "id" => self.key.clone(),
            "type" => "regular".to_string(),
            "description" => self.description(),
            // A step's layer belongs to its image: shared, never in use by a build here.
            "shared" => "true".to_string(),
            "inuse" | "private" => "false".to_string(),
            // "parent" and anything else: the classic builder records none.
            _ => String::new(),
        }
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
        let listed = cache.entries(|id| id == "sha256:b").expect("entries");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].image, "sha256:b");
        // An entry whose image is gone is not cache.
        assert!(cache.entries(|_| false).expect("entries").is_empty());
        assert_eq!(
            cache
                .clear(|id| id == "sha256:b", &PruneFilter::default())
                .expect("clear"),
            vec![listed[0].key.clone()]
        );
        assert_eq!(cache.get("sha256:a", &cfg), None);
    }

    fn filters(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut out = std::collections::BTreeMap::<String, Vec<String>>::new();
        for (k, v) in pairs {
            out.entry((*k).to_string())
                .or_default()
                .push((*v).to_string());
        }
        out
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<PruneFilter, String> {
        let cutoff = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        PruneFilter::parse(&filters(pairs), |v| match v {
            "1000" => Ok(cutoff),
            other => Err(format!("bad {other}")),
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn prune_filters_are_validated_as_dockerd_does() {
        assert_eq!(
            parse(&[("dangling", "true")]).unwrap_err(),
            "invalid filter 'dangling'"
        );
        assert_eq!(
            parse(&[("mutable", "")]).unwrap_err(),
            "invalid filter 'mutable'"
        );
        assert_eq!(
            parse(&[("until", "1000"), ("unused-for", "1000")]).unwrap_err(),
            "conflicting filters: \"until\" and \"unused-for\""
        );
        assert_eq!(
            parse(&[("until", "1000"), ("until", "1000")]).unwrap_err(),
            "filters expect only one value"
        );
        assert!(parse(&[("until", "x")])
            .unwrap_err()
            .starts_with("\"until\" filter expects a duration (e.g., '24h') or a timestamp"));
        for ok in [
            "until",
            "unused-for",
            "label",
            "label!",
            "id",
            "parent",
            "type",
        ] {
            assert!(parse(&[(ok, "1000")]).is_ok(), "{ok}");
        }
    }

    #[test]
    fn prune_filters_select_by_age_label_and_fields() {
        let at = |secs| CacheEntry {
            key: "ab".repeat(32),
            image: format!("sha256:{}", "c".repeat(64)),
            created: std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        };
        let (old, young) = (at(999), at(1000));
        let f = parse(&[("until", "1000")]).expect("until");
        assert!(f.matches(&old) && !f.matches(&young));
        let f = parse(&[("unused-for", "1000")]).expect("unused-for");
        assert!(f.matches(&old) && !f.matches(&young));
        assert!(!parse(&[("label", "a=b")]).expect("label").matches(&old));
        assert!(parse(&[("label!", "a=b")]).expect("label!").matches(&old));
        assert!(parse(&[("type", "regular")]).expect("type").matches(&old));
        assert!(!parse(&[("type", "internal")]).expect("type").matches(&old));
        assert!(parse(&[("id", "^abab")]).expect("id").matches(&old));
        assert!(!parse(&[("id", "^cd")]).expect("id").matches(&old));
        assert!(parse(&[("shared", "true")]).expect("shared").matches(&old));
        assert!(!parse(&[("inuse", "true")]).expect("inuse").matches(&old));
        assert!(!parse(&[("private", "true")])
            .expect("private")
            .matches(&old));
        assert!(!parse(&[("parent", "x")]).expect("parent").matches(&old));
        assert!(parse(&[("description", &old.description())])
            .expect("description")
            .matches(&old));
    }

    #[test]
    fn temporary_files_and_stale_entries_are_not_entries() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = BuildCache::new(tmp.path());
        let cfg = serde_json::json!({"Cmd": ["a"]});
        cache.put("sha256:a", &cfg, "sha256:live").expect("put");
        cache.put("sha256:b", &cfg, "sha256:gone").expect("put");
        let key = BuildCache::key("sha256:a", &cfg);
        // What write_atomic leaves while it writes (and a stray name).
        let dir = tmp.path().join("builder").join("cache");
        fs::write(
            dir.join(format!(".{key}.tmp0123456789abcdef")),
            "sha256:live",
        )
        .expect("tmp");
        fs::write(dir.join("README"), "sha256:live").expect("stray");
        let exists = |id: &str| id == "sha256:live";
        let listed = cache.entries(exists).expect("entries");
        assert_eq!(
            listed.iter().map(|e| &e.key).collect::<Vec<_>>(),
            vec![&key]
        );
        let removed = cache.clear(exists, &PruneFilter::default()).expect("clear");
        assert_eq!(removed, vec![key]);
        // The stale entry went too (unreported, like df never listed it); others stay.
        assert!(cache.get("sha256:b", &cfg).is_none());
        assert!(dir.join("README").exists());
        assert!(dir
            .join(format!(".{}.tmp0123456789abcdef", removed[0]))
            .exists());
    }

    #[test]
    fn description_survives_a_non_ascii_image_id() {
        let entry = CacheEntry {
            key: String::new(),
            image: "sha256:aéééééé".to_string(),
            created: std::time::UNIX_EPOCH,
        };
        assert_eq!(entry.description(), "classic builder step: image aéééééé");
    }
}
