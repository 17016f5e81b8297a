//! Reading image archives: `docker save` (manifest.json) and OCI image layouts (index.json).
//!
//! The outer tar is first unpacked into a private staging directory, because neither format
//! promises an order (a layer may come before the manifest that names it). Only regular files
//! and directories are written there; symlinks (old `docker save` archives link duplicate
//! layers) are remembered and resolved by name, never created. The parsed result is a list of
//! [`PendingImage`]s whose blobs still live in the staging directory.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::reference::{is_full_hex, Reference};
use super::ImageError;

/// Largest JSON document (manifest, index, config) read into memory.
const JSON_LIMIT: u64 = 16 << 20;
/// How many symlink hops a staged name may take before it is refused.
const MAX_LINK_HOPS: usize = 16;
/// How deep OCI indexes may nest.
const MAX_INDEX_DEPTH: usize = 4;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The annotation containerd (and Docker ≥ 25) put the full image name in.
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation: a tag, or (as skopeo writes it) a whole reference.
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

fn invalid(reason: impl Into<String>) -> ImageError {
    ImageError::InvalidArchive {
        reason: reason.into(),
    }
}

/// The outer archive, unpacked into a directory.
pub struct Staging {
    root: PathBuf,
    /// Staged name → link target, both relative to the archive root.
    symlinks: HashMap<PathBuf, PathBuf>,
}

impl Staging {
    /// Unpacks `input` (a tar, possibly gzip-compressed) into the empty directory `root`.
    pub fn unpack(input: &mut dyn Read, root: &Path) -> Result<Staging, ImageError> {
        let mut reader = BufReader::new(input);
        let head = reader
            .fill_buf()
            .map_err(|e| invalid(format!("reading archive: {e}")))?;
        if head.is_empty() {
            return Err(invalid("the archive is empty"));
        }
        let gzip = head.starts_with(&[0x1f, 0x8b]);
        let inner: Box<dyn Read + '_> = if gzip {
            Box::new(flate2::bufread::MultiGzDecoder::new(reader))
        } else {
            Box::new(reader)
        };
        let mut archive = tar::Archive::new(inner);
        let mut symlinks = HashMap::new();
        let entries = archive
            .entries()
            .map_err(|e| invalid(format!("reading archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| invalid(format!("reading archive: {e}")))?;
            let raw = entry.path_bytes().into_owned();
            let rel = normalize(Path::new(&*String::from_utf8_lossy(&raw)))
                .ok_or_else(|| invalid(format!("unsafe path {}", String::from_utf8_lossy(&raw))))?;
            if rel.as_os_str().is_empty() {
                continue;
            }
            let dest = root.join(&rel);
            match entry.header().entry_type() {
                tar::EntryType::Directory => {
                    fs::create_dir_all(&dest).map_err(|source| ImageError::Io {
                        path: dest.clone(),
                        source,
                    })?;
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    if let Some(parent) = dest.parent() {
                        fs::create_dir_all(parent).map_err(|source| ImageError::Io {
                            path: parent.to_path_buf(),
                            source,
                        })?;
                    }
                    let mut file = File::create(&dest).map_err(|source| ImageError::Io {
                        path: dest.clone(),
                        source,
                    })?;
                    io::copy(&mut entry, &mut file)
                        .map_err(|e| invalid(format!("reading {}: {e}", rel.display())))?;
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name()
                        .map_err(|e| invalid(format!("reading archive: {e}")))?
                        .ok_or_else(|| {
                            invalid(format!("symlink {} has no target", rel.display()))
                        })?;
                    symlinks.insert(rel, target.into_owned());
                }
                // Nothing else (hard links, devices) belongs in an image archive; skip it.
                other => {
                    tracing::debug!(path = %rel.display(), kind = ?other, "skipping archive entry");
                }
            }
        }
        Ok(Staging {
            root: root.to_path_buf(),
            symlinks,
        })
    }

    /// The on-disk path of the staged file `name` (relative to the archive root), following
    /// archive symlinks by name; `None` if there is no such file.
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        let mut rel = normalize(Path::new(name))?;
        for _ in 0..MAX_LINK_HOPS {
            match self.symlinks.get(&rel) {
                Some(target) => {
                    let base = rel.parent().map(Path::to_path_buf).unwrap_or_default();
                    rel = normalize(&base.join(target))?;
                }
                None => {
                    let path = self.root.join(&rel);
                    return path.is_file().then_some(path);
                }
            }
        }
        None
    }

    /// Opens a staged file, or fails naming it as missing from the archive.
    pub fn open(&self, name: &str) -> Result<File, ImageError> {
        let path = self
            .path(name)
            .ok_or_else(|| invalid(format!("{name} is missing from the archive")))?;
        File::open(&path).map_err(|source| ImageError::Io { path, source })
    }

    /// Reads a small staged file (a JSON document) whole.
    pub fn read(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let mut buf = Vec::new();
        self.open(name)?
            .take(JSON_LIMIT)
            .read_to_end(&mut buf)
            .map_err(|e| invalid(format!("reading {name}: {e}")))?;
        Ok(buf)
    }

    fn has(&self, name: &str) -> bool {
        self.path(name).is_some()
    }
}

/// Lexically normalises a relative archive path; `None` if it is absolute or climbs out.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::Normal(part) => out.push(part),
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            std::path::Component::RootDir | std::path::Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// One layer of a pending image: where its blob is staged, and what it must hash to.
#[derive(Debug, Clone)]
pub struct PendingLayer {
    /// Name of the blob inside the archive.
    pub blob: String,
    /// Digest of the blob as stored (OCI descriptors give one; `docker save` does not).
    pub digest: Option<String>,
    /// The diff id the config promises for this layer.
    pub diff_id: String,
}

/// An image found in an archive, ready to be committed to the store.
#[derive(Debug, Clone)]
pub struct PendingImage {
    /// The config JSON, byte for byte; its sha256 is the image id.
    pub config: Vec<u8>,
    /// Bottom layer first.
    pub layers: Vec<PendingLayer>,
    /// Tags to point at it (empty: untagged).
    pub tags: Vec<Reference>,
}

impl PendingImage {
    /// `sha256:<hex>` of the config bytes.
    pub fn id(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(&self.config)))
    }
}

/// The part of an image config the store needs while loading.
#[derive(Deserialize)]
struct ConfigRootfs {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// Returns the diff ids an image config lists, checking their form.
pub fn config_diff_ids(config: &[u8]) -> Result<Vec<String>, ImageError> {
    let parsed: ConfigRootfs =
        serde_json::from_slice(config).map_err(|e| invalid(format!("image config: {e}")))?;
    for d in &parsed.rootfs.diff_ids {
        if digest_hex(d).is_none() {
            return Err(invalid(format!("image config: invalid diff id {d}")));
        }
    }
    Ok(parsed.rootfs.diff_ids)
}

/// The hex part of a `sha256:<64 hex>` digest.
pub fn digest_hex(digest: &str) -> Option<&str> {
    digest.strip_prefix("sha256:").filter(|h| is_full_hex(h))
}

/// One entry of `docker save`'s manifest.json.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// An OCI content descriptor.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct OciIndex {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// Finds the images in a staged archive: `manifest.json` wins when both formats are present
/// (Docker ≥ 25 writes both, and the classic one carries the tags Docker printed).
pub fn parse(staging: &Staging) -> Result<Vec<PendingImage>, ImageError> {
    if staging.has("manifest.json") {
        parse_docker(staging)
    } else if staging.has("index.json") {
        parse_oci(staging)
    } else {
        Err(invalid(
            "neither manifest.json (docker save) nor index.json (OCI layout) found",
        ))
    }
}

fn parse_docker(staging: &Staging) -> Result<Vec<PendingImage>, ImageError> {
    let manifest: Vec<DockerManifestEntry> =
        serde_json::from_slice(&staging.read("manifest.json")?)
            .map_err(|e| invalid(format!("manifest.json: {e}")))?;
    let mut images = Vec::new();
    for entry in manifest {
        let config = staging.read(&entry.config)?;
        let diff_ids = config_diff_ids(&config)?;
        if diff_ids.len() != entry.layers.len() {
            return Err(invalid(format!(
                "{} lists {} layers but its config has {} diff ids",
                entry.config,
                entry.layers.len(),
                diff_ids.len()
            )));
        }
        let layers = entry
            .layers
            .into_iter()
            .zip(diff_ids)
            .map(|(blob, diff_id)| PendingLayer {
                blob,
                digest: None,
                diff_id,
            })
            .collect();
        let mut tags = Vec::new();
        for tag in entry.repo_tags.unwrap_or_default() {
            let reference = Reference::parse_normalized(&tag)
                .map_err(|e| invalid(format!("invalid tag {tag:?}: {}", e.reason)))?;
            if reference.digest.is_some() {
                return Err(invalid(format!("invalid tag {tag:?}: has a digest")));
            }
            tags.push(reference.with_default_tag());
        }
        images.push(PendingImage {
            config,
            layers,
            tags,
        });
    }
    Ok(images)
}

fn parse_oci(staging: &Staging) -> Result<Vec<PendingImage>, ImageError> {
    let index: OciIndex = serde_json::from_slice(&staging.read("index.json")?)
        .map_err(|e| invalid(format!("index.json: {e}")))?;
    let mut images = Vec::new();
    for desc in &index.manifests {
        let tags = oci_tags(&desc.annotations);
        let manifest = resolve_manifest(staging, desc, 0)?;
        let config = read_blob(staging, &manifest.config.digest)?;
        let diff_ids = config_diff_ids(&config)?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(invalid(format!(
                "manifest {} lists {} layers but its config has {} diff ids",
                desc.digest,
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for (layer, diff_id) in manifest.layers.into_iter().zip(diff_ids) {
            let hex = digest_hex(&layer.digest)
                .ok_or_else(|| invalid(format!("invalid layer digest {}", layer.digest)))?;
            layers.push(PendingLayer {
                blob: format!("blobs/sha256/{hex}"),
                digest: Some(layer.digest.clone()),
                diff_id,
            });
        }
        images.push(PendingImage {
            config,
            layers,
            tags,
        });
    }
    Ok(images)
}

/// The tag an index entry's annotations give: containerd's full name, else a ref.name that is a
/// whole reference (a bare tag such as `latest` names no repository, so it is ignored).
fn oci_tags(annotations: &BTreeMap<String, String>) -> Vec<Reference> {
    let candidates = [
        annotations.get(ANNOTATION_CONTAINERD_NAME),
        annotations
            .get(ANNOTATION_REF_NAME)
            .filter(|name| name.contains(['/', ':'])),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(|name| Reference::parse_normalized(name).ok())
        .filter(|r| r.digest.is_none())
        .map(|r| vec![r.with_default_tag()])
        .unwrap_or_default()
}

/// Follows an index entry down to an image manifest for this machine's platform.
fn resolve_manifest(
    staging: &Staging,
    desc: &Descriptor,
    depth: usize,
) -> Result<OciManifest, ImageError> {
    if depth > MAX_INDEX_DEPTH {
        return Err(invalid("OCI indexes nest too deeply"));
    }
    let bytes = read_blob(staging, &desc.digest)?;
    let media_type = if desc.media_type.is_empty() {
        // Fall back to the document's own mediaType field.
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| OCI_MANIFEST.to_string())
    } else {
        desc.media_type.clone()
    };
    match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            let index: OciIndex = serde_json::from_slice(&bytes)
                .map_err(|e| invalid(format!("index {}: {e}", desc.digest)))?;
            let arch = host_architecture();
            let chosen = index
                .manifests
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == arch)
                })
                .ok_or_else(|| {
                    invalid(format!(
                        "index {} has no manifest for linux/{arch}",
                        desc.digest
                    ))
                })?;
            resolve_manifest(staging, chosen, depth + 1)
        }
        OCI_MANIFEST | DOCKER_MANIFEST => serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("manifest {}: {e}", desc.digest))),
        other => Err(invalid(format!("unsupported manifest media type {other}"))),
    }
}

/// Reads `blobs/sha256/<hex>` and checks it hashes to its name.
fn read_blob(staging: &Staging, digest: &str) -> Result<Vec<u8>, ImageError> {
    let hex = digest_hex(digest).ok_or_else(|| invalid(format!("invalid digest {digest}")))?;
    let bytes = staging.read(&format!("blobs/sha256/{hex}"))?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != hex {
        return Err(ImageError::DigestMismatch {
            digest: digest.to_string(),
            actual: format!("sha256:{actual}"),
        });
    }
    Ok(bytes)
}

/// Hashes a staged blob file and checks it against `digest`.
pub fn verify_blob_file(path: &Path, digest: &str) -> Result<(), ImageError> {
    let mut file = File::open(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != digest {
        return Err(ImageError::DigestMismatch {
            digest: digest.to_string(),
            actual,
        });
    }
    Ok(())
}

/// The OCI name of the architecture this engine runs on.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_refuses_escapes() {
        assert_eq!(normalize(Path::new("./a/b")), Some(PathBuf::from("a/b")));
        assert_eq!(normalize(Path::new("a/../b")), Some(PathBuf::from("b")));
        assert_eq!(normalize(Path::new("../b")), None);
        assert_eq!(normalize(Path::new("/etc/passwd")), None);
    }

    #[test]
    fn oci_tags_prefer_the_containerd_name() {
        let mut a = BTreeMap::new();
        a.insert(ANNOTATION_REF_NAME.to_string(), "latest".to_string());
        assert!(oci_tags(&a).is_empty());
        a.insert(
            ANNOTATION_CONTAINERD_NAME.to_string(),
            "docker.io/library/busybox:1.36".to_string(),
        );
        assert_eq!(oci_tags(&a)[0].familiar(), "busybox:1.36");
        let mut b = BTreeMap::new();
        b.insert(
            ANNOTATION_REF_NAME.to_string(),
            "example.com/app".to_string(),
        );
        assert_eq!(oci_tags(&b)[0].full(), "example.com/app:latest");
    }
}
