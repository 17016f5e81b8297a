//! Guest images: finding one, checking it, and importing it into the store's cache.
//!
//! A guest image is a directory with `manifest.json`, a kernel and an initramfs (see
//! `docs/internals.md`). The host looks, in order, at `--guest-image DIR` (or
//! `RMACHINE_GUEST_IMAGE`), at the newest image in `cache/guest/`, then at `guest/out` of the
//! workspace a development build runs from. Every file the manifest lists is checked against its
//! sha256 before use; `create` copies the image into `cache/guest/<version>/` so machines keep
//! booting when the source directory changes.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use rmachine_driver::BootImage;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The name of the manifest inside an image directory.
pub const MANIFEST: &str = "manifest.json";

/// What can go wrong finding or checking a guest image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No image anywhere rmachine looks.
    #[error("no guest image found (looked in {}); run guest/build.sh or pass --guest-image DIR", looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound {
        /// Every place searched.
        looked: Vec<PathBuf>,
    },
    /// The given directory holds no manifest.
    #[error(
        "guest image {dir}: no {MANIFEST} there; run guest/build.sh or pass --guest-image DIR"
    )]
    NoManifest {
        /// The directory.
        dir: PathBuf,
    },
    /// A file could not be read or written.
    #[error("guest image: cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The manifest does not parse.
    #[error("guest image manifest {path} is invalid")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A file's sha256 does not match the manifest.
    #[error("guest image file {path} is corrupt: sha256 {actual}, manifest says {expected}")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The manifest's sum.
        expected: String,
        /// The file's sum.
        actual: String,
    },
    /// The manifest lists no checksum for a file the VM boots, or names a path outside the
    /// image directory.
    #[error("guest image manifest {path}: {problem}")]
    Incomplete {
        /// The manifest.
        path: PathBuf,
        /// What is missing.
        problem: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `manifest.json`, as `guest/build.sh` writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestManifest {
    /// Image version; the cache directory's name.
    pub version: String,
    /// Guest architecture (`x86_64`, `aarch64`).
    #[serde(default)]
    pub arch: String,
    /// Kernel file name.
    pub kernel: String,
    /// Initramfs file name.
    pub initrd: String,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// Bootable ISO file name (BIOS and UEFI), for drivers that boot no bare kernel; absent
    /// from images built before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iso: Option<String>,
    /// sha256 of each file, by name.
    pub sha256: BTreeMap<String, String>,
}

/// A checked guest image directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// The directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: GuestManifest,
}

impl GuestImage {
    /// The paths and command line a driver boots.
    pub fn boot_image(&self) -> BootImage {
        BootImage {
            kernel: self.dir.join(&self.manifest.kernel),
            initrd: self.dir.join(&self.manifest.initrd),
            cmdline: self.manifest.cmdline.clone(),
            arch: self.manifest.arch.clone(),
            iso: self.manifest.iso.as_ref().map(|iso| self.dir.join(iso)),
        }
    }
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\'])
}

fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut file = fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Reads `dir/manifest.json` and checks every listed file's sha256.
pub fn open(dir: &Path) -> Result<GuestImage, ImageError> {
    let path = dir.join(MANIFEST);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ImageError::NoManifest {
                dir: dir.to_path_buf(),
            })
        }
        Err(e) => return Err(io_err(&path)(e)),
    };
    let manifest: GuestManifest =
        serde_json::from_slice(&bytes).map_err(|source| ImageError::Manifest {
            path: path.clone(),
            source,
        })?;
    let incomplete = |problem: String| ImageError::Incomplete {
        path: path.clone(),
        problem,
    };
    if !is_plain_name(&manifest.version) {
        return Err(incomplete(format!("bad version {:?}", manifest.version)));
    }
    for file in [&manifest.kernel, &manifest.initrd]
        .into_iter()
        .chain(manifest.iso.as_ref())
    {
        if !manifest.sha256.contains_key(file) {
            return Err(incomplete(format!("no sha256 for {file}")));
        }
    }
    for (name, expected) in &manifest.sha256 {
        if !is_plain_name(name) {
            return Err(incomplete(format!("bad file name {name:?}")));
        }
        let file = dir.join(name);
        let actual = sha256_file(&file)?;
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(ImageError::Checksum {
                path: file,
                expected: expected.clone(),
                actual,
            });
        }
    }
    Ok(GuestImage {
        dir: dir.to_path_buf(),
        manifest,
    })
}

/// `guest/out` of the workspace this executable was built in, for development builds
/// (`target/<profile>/rmachine` or `target/<triple>/<profile>/rmachine`).
pub fn workspace_guest_out() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    // Test binaries live one level deeper, in target/<profile>/deps.
    for _ in 0..4 {
        if dir.file_name().is_some_and(|n| n == "target") {
            let workspace = dir.parent()?;
            return Some(workspace.join("guest").join("out"));
        }
        dir = dir.parent()?;
    }
    None
}

fn newest_cached(cache_guest: &Path) -> Option<PathBuf> {
    let entries = fs::read_dir(cache_guest).ok()?;
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join(MANIFEST).is_file())
        .filter_map(|p| {
            let modified = fs::metadata(p.join(MANIFEST)).ok()?.modified().ok()?;
            Some((modified, p))
        })
        .max()
        .map(|(_, p)| p)
}

fn manifest_version(dir: &Path) -> Option<String> {
    let bytes = fs::read(dir.join(MANIFEST)).ok()?;
    let manifest: GuestManifest = serde_json::from_slice(&bytes).ok()?;
    is_plain_name(&manifest.version).then_some(manifest.version)
}

/// Finds and checks the guest image to use. `explicit` is `--guest-image`; `cache_dir` is the
/// store's `cache/`; `dev_out` is the development build's `guest/out`, if any.
pub fn locate(
    explicit: Option<&Path>,
    cache_dir: &Path,
    dev_out: Option<&Path>,
) -> Result<GuestImage, ImageError> {
    if let Some(dir) = explicit {
        return open(dir);
    }
    let cache_guest = cache_dir.join("guest");
    // A development build whose guest/out holds a version the cache lacks was just rebuilt:
    // it wins over older cached images, so a developer never boots a stale guest.
    if let Some(out) = dev_out {
        if let Some(version) = manifest_version(out) {
            if !cache_guest.join(&version).join(MANIFEST).is_file() {
                return open(out);
            }
        }
    }
    if let Some(dir) = newest_cached(&cache_guest) {
        return open(&dir);
    }
    let mut looked = vec![cache_guest];
    if let Some(out) = dev_out {
        if out.join(MANIFEST).is_file() {
            return open(out);
        }
        looked.push(out.to_path_buf());
    }
    Err(ImageError::NotFound { looked })
}

/// Copies `image` into `cache/guest/<version>/` unless it is already there with the same
/// sums; returns the cached image.
pub fn import(image: &GuestImage, cache_dir: &Path) -> Result<GuestImage, ImageError> {
    let target = cache_dir.join("guest").join(&image.manifest.version);
    if image.dir == target {
        return Ok(image.clone());
    }
    if let Ok(cached) = open(&target) {
        if cached.manifest == image.manifest {
            return Ok(cached);
        }
    }
    // Copy into a fresh directory and rename it into place, so a crash mid-copy never leaves
    // a cache entry that looks complete.
    let parent = cache_dir.join("guest");
    fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let staging = parent.join(format!(".import-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir(&staging).map_err(io_err(&staging))?;
    let result = (|| {
        for name in image.manifest.sha256.keys() {
            let to = staging.join(name);
            fs::copy(image.dir.join(name), &to).map_err(io_err(&to))?;
        }
        let to = staging.join(MANIFEST);
        fs::copy(image.dir.join(MANIFEST), &to).map_err(io_err(&to))?;
        if target.exists() {
            fs::remove_dir_all(&target).map_err(io_err(&target))?;
        }
        fs::rename(&staging, &target).map_err(io_err(&target))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result?;
    open(&target)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a small image with a correct manifest into `dir`.
    pub(crate) fn fake_image(dir: &Path, version: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("vmlinuz"), b"kernel").unwrap();
        fs::write(dir.join("initrd.img"), format!("initrd {version}")).unwrap();
        let mut sha256 = BTreeMap::new();
        for name in ["vmlinuz", "initrd.img"] {
            sha256.insert(name.to_string(), sha256_file(&dir.join(name)).unwrap());
        }
        let manifest = GuestManifest {
            version: version.into(),
            arch: "x86_64".into(),
            kernel: "vmlinuz".into(),
            initrd: "initrd.img".into(),
            cmdline: "console=ttyS0".into(),
            iso: None,
            sha256,
        };
        fs::write(dir.join(MANIFEST), serde_json::to_vec(&manifest).unwrap()).unwrap();
    }

    #[test]
    fn an_iso_listed_in_the_manifest_is_checked_and_booted() {
        let tmp = tempfile::tempdir().unwrap();
        fake_image(tmp.path(), "1.0-iso");
        let path = tmp.path().join(MANIFEST);
        let mut manifest: GuestManifest =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        manifest.iso = Some("rmachine.iso".into());
        fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        let err = open(tmp.path()).unwrap_err().to_string();
        assert!(err.ends_with("no sha256 for rmachine.iso"), "{err}");

        fs::write(tmp.path().join("rmachine.iso"), b"iso").unwrap();
        manifest.sha256.insert(
            "rmachine.iso".into(),
            sha256_file(&tmp.path().join("rmachine.iso")).unwrap(),
        );
        fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        let image = open(tmp.path()).unwrap();
        assert_eq!(
            image.boot_image().iso,
            Some(tmp.path().join("rmachine.iso"))
        );
    }

    #[test]
    fn missing_image_names_where_it_looked_and_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let dev = tmp.path().join("ws/guest/out");
        let err = locate(None, &tmp.path().join("cache"), Some(&dev)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&tmp.path().join("cache/guest").display().to_string()),
            "{msg}"
        );
        assert!(msg.contains(&dev.display().to_string()), "{msg}");
        assert!(
            msg.ends_with("run guest/build.sh or pass --guest-image DIR"),
            "{msg}"
        );

        let err = locate(Some(Path::new("/nonexistent")), tmp.path(), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "guest image /nonexistent: no manifest.json there; run guest/build.sh or pass --guest-image DIR"
        );
    }

    #[test]
    fn corrupt_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fake_image(tmp.path(), "1");
        fs::write(tmp.path().join("initrd.img"), b"tampered").unwrap();
        let err = open(tmp.path()).unwrap_err();
        assert!(matches!(err, ImageError::Checksum { .. }), "{err}");
    }

    #[test]
    fn import_copies_into_cache_and_cache_wins_next_time() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("out");
        fake_image(&src, "0.1.0");
        let cache = tmp.path().join("cache");
        let found = locate(None, &cache, Some(&src)).unwrap();
        assert_eq!(found.dir, src);
        let cached = import(&found, &cache).unwrap();
        assert_eq!(cached.dir, cache.join("guest/0.1.0"));
        assert_eq!(
            cached.boot_image().kernel,
            cache.join("guest/0.1.0/vmlinuz")
        );
        assert_eq!(locate(None, &cache, Some(&src)).unwrap().dir, cached.dir);
        // Importing again is a no-op that returns the same image.
        assert_eq!(import(&found, &cache).unwrap(), cached);

        // A rebuilt guest/out (a version the cache lacks) wins over the cache.
        fake_image(&src, "0.2.0");
        assert_eq!(locate(None, &cache, Some(&src)).unwrap().dir, src);
        let newer = import(&locate(None, &cache, Some(&src)).unwrap(), &cache).unwrap();
        assert_eq!(newer.dir, cache.join("guest/0.2.0"));
        // An explicit --guest-image always wins.
        let other = tmp.path().join("other");
        fake_image(&other, "0.3.0");
        assert_eq!(locate(Some(&other), &cache, Some(&src)).unwrap().dir, other);
    }
}
