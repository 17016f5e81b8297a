//! Guest images: finding one, checking it, and importing it into the store's cache.
//!
//! A guest image is a directory with `manifest.json`, a kernel and an initramfs (see
//! `docs/internals.md`), on disk or published at a URL. Images are looked up by version and
//! architecture (the guest's: `--qemu-arch`, else the host's). The host looks, in order, at
//! `--guest-image PATH|URL` (or `RMACHINE_GUEST_IMAGE`), at a development build's `guest/out`
//! (`guest/out-aarch64`) whose version the cache lacks, at an image of that architecture in
//! `cache/guest/` downloaded from the configured download URL, at the newest one there from a
//! local build, at the build directory, and downloads from the configured URL last. Every file
//! the manifest lists is checked against its sha256 before use; `create` copies the image into
//! `cache/guest/<version>-<arch>/` so machines keep booting when the source changes, and
//! downloads go straight into that cache. A cache entry is never replaced by other content: an
//! image whose version and architecture are cached with other sums is refused.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rmachine_driver::BootImage;

pub(crate) mod derive;
pub use derive::DERIVED_DIR;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The name of the manifest inside an image directory.
pub const MANIFEST: &str = "manifest.json";

/// Inside a cached image downloaded from a URL: that URL, so the next `create` with the same
/// URL uses the cache without the network.
pub const SOURCE_URL: &str = "source-url";
/// A cache entry's record of its files as last verified (length, mtime, change time, inode,
/// sum): an unchanged file is not hashed again at every `create` ([`open_cached`]).
const VERIFIED: &str = ".verified.json";

/// Where release guest images are published: one GitHub release per image version and
/// architecture, with the assets `manifest.json`, `vmlinuz` and `initrd.img` (and
/// `rmachine.iso` for x86_64), as `guest/publish.sh` lays them out. `{version}` is this
/// rmachine's version and `{arch}` the guest's architecture (`x86_64`, `aarch64`).
pub const DEFAULT_DOWNLOAD_URL: &str =
    "https://github.com/rmachine/rmachine/releases/download/guest-v{version}-{arch}/";

/// The largest manifest accepted from a server (a real one is a few hundred bytes).
const MAX_MANIFEST_BYTES: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What can go wrong finding or checking a guest image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No local image, and the download from the configured URL failed.
    #[error("no guest image found (looked in {}) and the download failed; run guest/build.sh, pass --guest-image PATH|URL or set RMACHINE_GUEST_IMAGE_URL", looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound {
        /// Every place searched.
        looked: Vec<PathBuf>,
        /// Why the download failed.
        #[source]
        download: Box<ImageError>,
    },
    /// A URL could not be fetched (no connection, DNS, TLS, a broken transfer).
    #[error("cannot download {url}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The HTTP client could not be set up (TLS roots, proxy settings).
    #[error("cannot set up the HTTP client for guest image downloads")]
    Client {
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("cannot download {url}: the server answered {status}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// A URL that is not a valid http(s) URL.
    #[error("guest image URL {url:?} is invalid: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A downloaded file's sha256 does not match the manifest; the file was discarded.
    #[error("downloaded guest image file {url} is corrupt: sha256 {actual}, manifest says {expected}; it was discarded and nothing was cached")]
    DownloadChecksum {
        /// Where it came from.
        url: String,
        /// The manifest's sum.
        expected: String,
        /// The downloaded file's sum.
        actual: String,
    },
    /// An image whose version and architecture are cached already, with other content: the
    /// cached files are what existing machines boot, so they are never replaced.
    #[error("{0}")]
    VersionConflict(Box<VersionConflict>),
    /// A downloaded file could not be written into the cache (a full disk, permissions).
    #[error("cannot write the downloaded guest image to {path}; nothing was cached")]
    CacheWrite {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The given directory holds no manifest.
    #[error(
        "guest image {dir}: no {MANIFEST} there; run guest/build.sh or pass --guest-image PATH|URL"
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
    /// A fast-boot file cannot be derived from an image's file.
    #[error("guest image {version}: cannot {action} {}; nothing was cached", path.display())]
    Derive {
        /// The image's version.
        version: String,
        /// What failed (`unpack`, `write`...).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An image's file is not what a fast-boot file can be derived from.
    #[error("guest image {version}: {}: {problem}; nothing was cached", path.display())]
    DeriveInvalid {
        /// The image's version.
        version: String,
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
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

/// Another image under a cached version and architecture (see [`ImageError::VersionConflict`]).
#[derive(Debug)]
pub struct VersionConflict {
    /// The image version.
    pub version: String,
    /// Its architecture.
    pub arch: String,
    /// Where the new image comes from (a directory or a manifest URL).
    pub from: String,
    /// The cache entry.
    pub cached: PathBuf,
    /// The first file whose sums differ.
    pub file: String,
    /// Its sha256 in the new image (`none`: not listed).
    pub new: String,
    /// Its sha256 in the cached image (`none`: not listed).
    pub old: String,
}

impl std::fmt::Display for VersionConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "guest image {version} ({arch}) from {from} differs from the cached image {version} \
             in {cached}: {file} has sha256 {new}, the cached one {old}; a cached image is never \
             replaced (machines boot from it): publish the changed image under a new version, \
             or remove the machines using it and then that directory",
            version = self.version,
            arch = self.arch,
            from = self.from,
            cached = self.cached.display(),
            file = self.file,
            new = self.new,
            old = self.old,
        )
    }
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
    /// The uncompressed ELF kernel (x86_64, PVH entry) for machines that boot one faster
    /// (QEMU's microvm); absent from images built before it existed and from arm64 images.
    #[serde(rename = "kernelElf", default, skip_serializing_if = "Option::is_none")]
    pub kernel_elf: Option<String>,
    /// sha256 of each file, by name.
    pub sha256: BTreeMap<String, String>,
    /// What the image's init can do that drivers check before relying on it
    /// ([`BootImage::features`]); absent from older images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
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
            kernel_elf: self.manifest.kernel_elf.as_ref().map(|k| self.dir.join(k)),
            initrd_uncompressed: None,
            features: self.manifest.features.clone(),
        }
    }

    /// [`Self::boot_image`] plus the fast-boot files of an x86_64 image (the kernel ELF and
    /// the uncompressed initramfs, which QEMU's microvm loads), derived into
    /// `<dir>/derived/` on first use and reused after. Call it on the cached image.
    pub fn fast_boot_image(&self) -> Result<BootImage, ImageError> {
        let mut boot = self.boot_image();
        if self.manifest.guest_arch() == "x86_64" {
            // Threads and processes deriving one cached image take turns.
            let _lock = self
                .dir
                .parent()
                .filter(|p| p.file_name().is_some_and(|n| n == "guest"))
                .map(lock_cache)
                .transpose()?;
            let derived = derive::derive(self)?;
            if derived.kernel_elf.is_some() {
                boot.kernel_elf = derived.kernel_elf;
            }
            boot.initrd_uncompressed = derived.initrd;
        }
        Ok(boot)
    }
}

impl GuestImage {
    /// [`Self::fast_boot_image`] off the async runtime (it unpacks up to hundreds of MiB),
    /// falling back to the image's own files with a warning when deriving fails: the fast
    /// forms only save boot time, and a failure there must not stop a create or upgrade.
    pub async fn boot_files(&self) -> BootImage {
        let image = self.clone();
        match tokio::task::spawn_blocking(move || image.fast_boot_image()).await {
            Ok(Ok(boot)) => boot,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot derive the fast-boot files; booting the image's own kernel and initramfs");
                self.boot_image()
            }
            Err(e) => {
                tracing::warn!(error = %e, "deriving the fast-boot files failed; booting the image's own kernel and initramfs");
                self.boot_image()
            }
        }
    }
}

impl GuestManifest {
    /// The guest architecture, with Debian's and Docker's names (`amd64`, `arm64`) read as
    /// ours; images from before the manifest named one were all x86_64.
    pub fn guest_arch(&self) -> &str {
        match self.arch.as_str() {
            "" | "amd64" => "x86_64",
            "arm64" => "aarch64",
            other => other,
        }
    }
}

/// The cache directory name of an image: `<version>-<arch>`, so both architectures of one
/// release live side by side.
pub fn cache_entry_name(manifest: &GuestManifest) -> String {
    format!("{}-{}", manifest.version, manifest.guest_arch())
}

/// The first file whose sha256 differs between two manifests: (name, sum in `new`, sum in
/// `old`), `none` for a file one of them does not list.
fn first_difference(new: &GuestManifest, old: &GuestManifest) -> Option<(String, String, String)> {
    let none = || "none".to_string();
    new.sha256
        .keys()
        .chain(old.sha256.keys())
        .find(|name| {
            let (a, b) = (new.sha256.get(*name), old.sha256.get(*name));
            !matches!((a, b), (Some(a), Some(b)) if a.eq_ignore_ascii_case(b))
        })
        .map(|name| {
            (
                name.clone(),
                new.sha256.get(name).cloned().unwrap_or_else(none),
                old.sha256.get(name).cloned().unwrap_or_else(none),
            )
        })
}

/// The cache entry already holding `manifest`'s version and architecture, if any: its own
/// `<version>-<arch>` directory, or one from before the architecture was in the name
/// (`<version>/`).
fn cached_entry(cache_guest: &Path, manifest: &GuestManifest) -> Option<(PathBuf, GuestManifest)> {
    let named = cache_guest.join(cache_entry_name(manifest));
    std::iter::once(named)
        .chain(
            cached_images(cache_guest, Some(manifest.guest_arch()))
                .into_iter()
                .map(|entry| entry.0),
        )
        .find_map(|dir| {
            let found = read_manifest(&dir)?;
            (found.version == manifest.version && found.guest_arch() == manifest.guest_arch())
                .then_some((dir, found))
        })
}

/// What to do with an image about to enter the cache, given what the cache holds for its
/// version and architecture: `Ok(Some(image))` reuse the cached one, `Ok(None)` write it (not
/// cached, or cached with the same sums but damaged files), `Err` another image of that
/// version is cached.
fn check_cached(
    cache_guest: &Path,
    manifest: &GuestManifest,
    from: &str,
) -> Result<Option<GuestImage>, ImageError> {
    let Some((dir, cached)) = cached_entry(cache_guest, manifest) else {
        return Ok(None);
    };
    if let Some((file, new, old)) = first_difference(manifest, &cached) {
        return Err(ImageError::VersionConflict(Box::new(VersionConflict {
            version: manifest.version.clone(),
            arch: manifest.guest_arch().to_string(),
            from: from.to_string(),
            cached: dir,
            file,
            new,
            old,
        })));
    }
    match open_cached(&dir) {
        Ok(image)
            if image.manifest.kernel == manifest.kernel
                && image.manifest.initrd == manifest.initrd
                && image.manifest.iso == manifest.iso =>
        {
            Ok(Some(image))
        }
        Ok(_) | Err(_) => {
            tracing::warn!(dir = %dir.display(), "cached guest image is damaged or differs in layout; writing it again");
            Ok(None)
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

/// Parses a manifest and checks what it names: a plain version, plain file names, a sum for
/// the kernel and the initramfs. `path` names it in errors.
fn parse_manifest(bytes: &[u8], path: &Path) -> Result<GuestManifest, ImageError> {
    let manifest: GuestManifest =
        serde_json::from_slice(bytes).map_err(|source| ImageError::Manifest {
            path: path.to_path_buf(),
            source,
        })?;
    let incomplete = |problem: String| ImageError::Incomplete {
        path: path.to_path_buf(),
        problem,
    };
    if !is_plain_name(&manifest.version) {
        return Err(incomplete(format!("bad version {:?}", manifest.version)));
    }
    for file in [&manifest.kernel, &manifest.initrd]
        .into_iter()
        .chain(manifest.iso.as_ref())
        .chain(manifest.kernel_elf.as_ref())
    {
        if !manifest.sha256.contains_key(file) {
            return Err(incomplete(format!("no sha256 for {file}")));
        }
    }
    for name in manifest.sha256.keys() {
        if !is_plain_name(name) || name == MANIFEST || name == SOURCE_URL {
            return Err(incomplete(format!("bad file name {name:?}")));
        }
    }
    Ok(manifest)
}

/// One file of a cache entry as it was when its sum was checked.
#[derive(Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct VerifiedFile {
    stamp: FileStamp,
    sha256: String,
}

/// What [`VerifiedFile`] compares: length and mtime, and on Unix the inode and the change
/// time, which userspace cannot set (an mtime put back by `touch -r`, `cp -p`, a restore
/// from backup or `File::set_modified` still moves it, so the file is hashed again).
#[derive(Serialize, Deserialize, PartialEq, Eq, Clone, Debug)]
#[serde(rename_all = "camelCase")]
struct FileStamp {
    len: u64,
    mtime_ns: u128,
    ctime_ns: i128,
    ino: u64,
}

/// The [`FileStamp`] of `path`; `None` when unreadable.
fn file_stamp(path: &Path) -> Option<FileStamp> {
    let meta = fs::metadata(path).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    #[cfg(unix)]
    let (ctime_ns, ino) = {
        use std::os::unix::fs::MetadataExt;
        (
            i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            meta.ino(),
        )
    };
    #[cfg(not(unix))]
    let (ctime_ns, ino) = (0, 0);
    Some(FileStamp {
        len: meta.len(),
        mtime_ns: mtime.as_nanos(),
        ctime_ns,
        ino,
    })
}

/// Whether `path` is still the file recorded as `seen` with the `expected` sum.
fn still_verified(seen: &VerifiedFile, path: &Path, expected: &str) -> bool {
    seen.sha256.eq_ignore_ascii_case(expected) && file_stamp(path).as_ref() == Some(&seen.stamp)
}

/// [`open`] for an entry of the image cache: a file whose stamp ([`FileStamp`]) is the one
/// recorded when its sum last matched (`.verified.json`) is not hashed again, so the 40 MB
/// image is hashed once per cached image rather than at every `create`. A changed file is
/// hashed (and refused if its sum is wrong) as by [`open`]. The stamp is taken before the
/// hash and recorded only if the file still has it after (a file written meanwhile is not
/// recorded as verified).
fn open_cached(dir: &Path) -> Result<GuestImage, ImageError> {
    let record_path = dir.join(VERIFIED);
    let record: BTreeMap<String, VerifiedFile> = fs::read(&record_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let before: std::cell::RefCell<BTreeMap<String, FileStamp>> = Default::default();
    let image = open_with(dir, &|name, path, expected| {
        if let Some(stamp) = file_stamp(path) {
            before.borrow_mut().insert(name.to_owned(), stamp);
        }
        record
            .get(name)
            .is_some_and(|seen| still_verified(seen, path, expected))
    })?;
    let before = before.into_inner();
    let now: BTreeMap<String, VerifiedFile> = image
        .manifest
        .sha256
        .iter()
        .filter_map(|(name, sum)| {
            let stamp = file_stamp(&dir.join(name))?;
            (before.get(name) == Some(&stamp)).then(|| {
                (
                    name.clone(),
                    VerifiedFile {
                        stamp,
                        sha256: sum.clone(),
                    },
                )
            })
        })
        .collect();
    if now != record {
        // Only a saving: an entry without a record is hashed again next time.
        let written = serde_json::to_vec(&now)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
                tmp.write_all(&bytes)?;
                tmp.persist(&record_path).map_err(|e| e.error)?;
                Ok(())
            });
        if let Err(error) = written {
            tracing::debug!(%error, path = %record_path.display(), "verification record not written");
        }
    }
    Ok(image)
}

/// Reads `dir/manifest.json` and checks every listed file's sha256.
pub fn open(dir: &Path) -> Result<GuestImage, ImageError> {
    open_with(dir, &|_, _, _| false)
}

/// [`open`], skipping the files for which `known_good(name, path, expected sum)` holds.
fn open_with(
    dir: &Path,
    known_good: &dyn Fn(&str, &Path, &str) -> bool,
) -> Result<GuestImage, ImageError> {
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
    let manifest = parse_manifest(&bytes, &path)?;
    for (name, expected) in &manifest.sha256 {
        let file = dir.join(name);
        if known_good(name, &file, expected) {
            continue;
        }
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

/// The build directory of `arch`'s guest in the workspace this executable was built in, for
/// development builds (`target/<profile>/rmachine` or `target/<triple>/<profile>/rmachine`):
/// `guest/out` for x86_64, `guest/out-<arch>` for the others, as `guest/build.sh` writes them.
pub fn workspace_guest_out(arch: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    // Test binaries live one level deeper, in target/<profile>/deps.
    for _ in 0..4 {
        if dir.file_name().is_some_and(|n| n == "target") {
            let workspace = dir.parent()?;
            let out = match arch {
                "x86_64" => "out".to_string(),
                other => format!("out-{other}"),
            };
            return Some(workspace.join("guest").join(out));
        }
        dir = dir.parent()?;
    }
    None
}

/// Cached image directories of `arch` (every architecture: `None`) (`cache/guest/<version>-<arch>/`, or `<version>/` from
/// before the name held the architecture), newest first, with the URL each was downloaded from
/// (`None`: imported from a local build). Staging directories (`.import-*`, `.download-*`) are
/// never candidates.
fn cached_images(cache_guest: &Path, arch: Option<&str>) -> Vec<(PathBuf, Option<String>)> {
    let Ok(entries) = fs::read_dir(cache_guest) else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| read_manifest(p).is_some_and(|m| arch.is_none_or(|a| m.guest_arch() == a)))
        .filter_map(|p| {
            let modified = fs::metadata(p.join(MANIFEST)).ok()?.modified().ok()?;
            let source = fs::read_to_string(p.join(SOURCE_URL))
                .ok()
                .map(|s| s.trim().to_string());
            Some((modified, p, source))
        })
        .collect();
    found.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    found.into_iter().map(|(_, p, s)| (p, s)).collect()
}

/// `dir`'s manifest when it reads and parses (its files unchecked): for choosing among
/// candidates, which [`open`] then checks.
fn read_manifest(dir: &Path) -> Option<GuestManifest> {
    let path = dir.join(MANIFEST);
    parse_manifest(&fs::read(&path).ok()?, &path).ok()
}

/// Where `--guest-image` points: a directory on disk or an image published at a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A directory holding `manifest.json` and its files.
    Dir(PathBuf),
    /// An `http://` or `https://` URL of a manifest (`…/manifest.json`, or any `….json`) or of
    /// the directory holding it.
    Url(String),
}

impl std::str::FromStr for ImageSource {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        Ok(
            if lower.starts_with("http://") || lower.starts_with("https://") {
                ImageSource::Url(s.to_string())
            } else {
                ImageSource::Dir(PathBuf::from(s))
            },
        )
    }
}

impl std::fmt::Display for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageSource::Dir(dir) => write!(f, "{}", dir.display()),
            ImageSource::Url(url) => f.write_str(url),
        }
    }
}

/// The download URL with `{version}` (this rmachine's version) and `{arch}` (the guest's
/// architecture, `x86_64` or `aarch64`) filled in.
pub fn expand_download_url(template: &str, arch: &str) -> String {
    template
        .replace("{version}", env!("CARGO_PKG_VERSION"))
        .replace("{arch}", arch)
}

/// One step of a download, for a progress bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadEvent {
    /// A file's transfer starts.
    Started {
        /// Its URL.
        url: String,
        /// Its size, when the server says.
        total: Option<u64>,
    },
    /// Bytes of the current file arrived.
    Advanced {
        /// Bytes received so far.
        done: u64,
    },
    /// The current file arrived and its sha256 matched.
    Finished,
}

/// Finds, checks and if needed downloads the guest image to use. `source` is `--guest-image`
/// (taken as given: the driver refuses another architecture's image); `download_url` the
/// configured download URL (already expanded for `arch`); `cache_dir` the store's `cache/`;
/// `dev_out` the development build's directory for `arch`, if any; `arch` the guest's
/// architecture, the only one looked up in the cache and in `dev_out`.
pub async fn find(
    source: Option<&ImageSource>,
    download_url: &str,
    cache_dir: &Path,
    dev_out: Option<&Path>,
    arch: &str,
    progress: &(dyn Fn(DownloadEvent) + Sync),
) -> Result<GuestImage, ImageError> {
    match source {
        Some(ImageSource::Dir(dir)) => return open(dir),
        Some(ImageSource::Url(url)) => return download(url, cache_dir, progress).await,
        None => {}
    }
    let cache_guest = cache_dir.join("guest");
    // A development build whose guest/out holds a version the cache lacks was just rebuilt:
    // it wins over older cached images, so a developer never boots a stale guest.
    let dev_manifest = dev_out
        .and_then(read_manifest)
        .filter(|m| m.guest_arch() == arch);
    if let (Some(out), Some(manifest)) = (dev_out, &dev_manifest) {
        if cached_entry(&cache_guest, manifest).is_none() {
            return open(out);
        }
    }
    let cached = cached_images(&cache_guest, Some(arch));
    let manifest_url = manifest_url(download_url)?;
    if let Some((dir, _)) = cached
        .iter()
        .find(|(_, from)| from.as_deref() == Some(manifest_url.as_str()))
    {
        return open_cached(dir);
    }
    if let Some((dir, _)) = cached.iter().find(|(_, from)| from.is_none()) {
        return open_cached(dir);
    }
    let mut looked = vec![cache_guest];
    if let Some(out) = dev_out {
        if dev_manifest.is_some() {
            return open(out);
        }
        looked.push(out.to_path_buf());
    }
    download(download_url, cache_dir, progress)
        .await
        .map_err(|e| match e {
            // Only a failed transfer means "not found"; a bad image is reported as it is.
            ImageError::Unreachable { .. } | ImageError::HttpStatus { .. } => {
                ImageError::NotFound {
                    looked,
                    download: Box::new(e),
                }
            }
            other => other,
        })
}

/// The manifest's URL: `url` itself when it names a `.json` file, else `url/manifest.json`.
fn manifest_url(url: &str) -> Result<String, ImageError> {
    let bad = |reason: &str| ImageError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
        .ok_or_else(|| bad("only http:// and https:// are supported"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("no host"));
    }
    if url.contains(['?', '#']) || url.contains(char::is_whitespace) {
        return Err(bad("a query, fragment or space is not supported"));
    }
    if lower.ends_with(".json") {
        Ok(url.to_string())
    } else {
        Ok(format!("{}/{MANIFEST}", url.trim_end_matches('/')))
    }
}

fn http_client() -> Result<reqwest::Client, ImageError> {
    // reqwest is built without a rustls provider (no aws-lc); ring is the workspace's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("rmachine/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|source| ImageError::Client { source })
}

async fn get(client: &reqwest::Client, url: &str) -> Result<reqwest::Response, ImageError> {
    let unreachable = |source| ImageError::Unreachable {
        url: url.to_string(),
        source,
    };
    let response = client.get(url).send().await.map_err(unreachable)?;
    if !response.status().is_success() {
        return Err(ImageError::HttpStatus {
            url: url.to_string(),
            status: response.status().as_u16(),
        });
    }
    Ok(response)
}

/// Downloads the image at `url` into `cache/guest/<version>/`, unless an image downloaded from
/// the same manifest URL is cached already (then the network is not used). Files go into a
/// staging directory and are renamed into place only when every sum matched, so an
/// interrupted, corrupt or truncated download (a full disk) never leaves a cache entry.
async fn download(
    url: &str,
    cache_dir: &Path,
    progress: &(dyn Fn(DownloadEvent) + Sync),
) -> Result<GuestImage, ImageError> {
    let manifest_url = manifest_url(url)?;
    let cache_guest = cache_dir.join("guest");
    if let Some((dir, _)) = cached_images(&cache_guest, None)
        .into_iter()
        .find(|(_, from)| from.as_deref() == Some(manifest_url.as_str()))
    {
        if let Ok(image) = open_cached(&dir) {
            return Ok(image);
        }
    }
    let client = http_client()?;
    let unreachable = |url: &str| {
        let url = url.to_string();
        move |source| ImageError::Unreachable { url, source }
    };
    let response = get(&client, &manifest_url).await?;
    if response
        .content_length()
        .is_some_and(|n| n > MAX_MANIFEST_BYTES as u64)
    {
        return Err(ImageError::BadUrl {
            url: manifest_url,
            reason: "the manifest is larger than 1 MiB".to_string(),
        });
    }
    let bytes = response.bytes().await.map_err(unreachable(&manifest_url))?;
    let manifest = parse_manifest(&bytes, Path::new(&manifest_url))?;
    let base = &manifest_url[..manifest_url.rfind('/').map_or(0, |i| i + 1)];

    // The same version and architecture downloaded from elsewhere or imported from a local
    // build: reused when the sums are equal, refused when not.
    if let Some(image) = check_cached(&cache_guest, &manifest, &manifest_url)? {
        return Ok(image);
    }
    let target = cache_guest.join(cache_entry_name(&manifest));
    fs::create_dir_all(&cache_guest).map_err(cache_write(&cache_guest))?;
    // Unique, as threads of one process download at once; removed when dropped (an error).
    let staging = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(&cache_guest)
        .map_err(cache_write(&cache_guest))?;
    for (name, expected) in &manifest.sha256 {
        let file_url = format!("{base}{name}");
        fetch_file(
            &client,
            &file_url,
            &staging.path().join(name),
            expected,
            progress,
        )
        .await?;
    }
    write_synced(&staging.path().join(MANIFEST), &bytes)?;
    write_synced(&staging.path().join(SOURCE_URL), manifest_url.as_bytes())?;
    let _lock = lock_cache(&cache_guest)?;
    // Another thread or process may have cached this version meanwhile.
    if let Some(image) = check_cached(&cache_guest, &manifest, &manifest_url)? {
        return Ok(image);
    }
    move_into_place(staging, &target, &manifest)
}

fn cache_write(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::CacheWrite {
        path: path.to_path_buf(),
        source,
    }
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    let mut file = fs::File::create(path).map_err(cache_write(path))?;
    file.write_all(data).map_err(cache_write(path))?;
    file.sync_all().map_err(cache_write(path))
}

/// Streams `url` into `to`, hashing as it goes; a sum that differs from `expected` deletes the
/// file.
async fn fetch_file(
    client: &reqwest::Client,
    url: &str,
    to: &Path,
    expected: &str,
    progress: &(dyn Fn(DownloadEvent) + Sync),
) -> Result<(), ImageError> {
    let mut response = get(client, url).await?;
    progress(DownloadEvent::Started {
        url: url.to_string(),
        total: response.content_length(),
    });
    let mut file = fs::File::create(to).map_err(cache_write(to))?;
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|source| ImageError::Unreachable {
            url: url.to_string(),
            source,
        })?
    {
        hasher.update(&chunk);
        file.write_all(&chunk).map_err(cache_write(to))?;
        done += chunk.len() as u64;
        progress(DownloadEvent::Advanced { done });
    }
    file.sync_all().map_err(cache_write(to))?;
    drop(file);
    let actual = hex::encode(hasher.finalize());
    if !actual.eq_ignore_ascii_case(expected) {
        let _ = fs::remove_file(to);
        return Err(ImageError::DownloadChecksum {
            url: url.to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    progress(DownloadEvent::Finished);
    Ok(())
}

/// Copies `image` into `cache/guest/<version>-<arch>/` unless that version and architecture
/// is cached already with the same sums (then the cached image is returned); another image of
/// the same version and architecture is refused. Returns the cached image.
pub fn import(image: &GuestImage, cache_dir: &Path) -> Result<GuestImage, ImageError> {
    let cache_guest = cache_dir.join("guest");
    if image.dir.parent() == Some(cache_guest.as_path()) {
        return Ok(image.clone());
    }
    fs::create_dir_all(&cache_guest).map_err(io_err(&cache_guest))?;
    let _lock = lock_cache(&cache_guest)?;
    if let Some(cached) = check_cached(
        &cache_guest,
        &image.manifest,
        &image.dir.display().to_string(),
    )? {
        return Ok(cached);
    }
    let target = cache_guest.join(cache_entry_name(&image.manifest));
    // Copy into a fresh directory and rename it into place, so a crash mid-copy never leaves
    // a cache entry that looks complete; the name is unique, as threads of one process
    // (`upgrade a b`) import at once.
    let staging = staging_dir(&cache_guest, ".import-")?;
    for name in image.manifest.sha256.keys() {
        let to = staging.path().join(name);
        fs::copy(image.dir.join(name), &to).map_err(io_err(&to))?;
    }
    let to = staging.path().join(MANIFEST);
    fs::copy(image.dir.join(MANIFEST), &to).map_err(io_err(&to))?;
    move_into_place(staging, &target, &image.manifest)
}

/// Takes the cache-wide lock (`cache/guest/.lock`), held while an entry is looked up,
/// written or derived, so threads and processes never write one entry at once.
fn lock_cache(cache_guest: &Path) -> Result<fs::File, ImageError> {
    let path = cache_guest.join(".lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    file.lock().map_err(io_err(&path))?;
    Ok(file)
}

/// A fresh, uniquely named staging directory in `cache/guest/`, removed when dropped.
fn staging_dir(cache_guest: &Path, prefix: &str) -> Result<tempfile::TempDir, ImageError> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(cache_guest)
        .map_err(io_err(cache_guest))
}

/// Renames a complete `staging` directory to `target`, under the cache lock. An entry already
/// there that opens with `manifest`'s sums is kept (and `staging` discarded): it may be in
/// use, with its `derived/` files named in a machine's config. Only a damaged one is replaced.
fn move_into_place(
    staging: tempfile::TempDir,
    target: &Path,
    manifest: &GuestManifest,
) -> Result<GuestImage, ImageError> {
    if target.exists() {
        match open_cached(target) {
            Ok(existing) if first_difference(manifest, &existing.manifest).is_none() => {
                return Ok(existing);
            }
            _ => fs::remove_dir_all(target).map_err(io_err(target))?,
        }
    }
    let staging = staging.keep();
    if let Err(e) = fs::rename(&staging, target) {
        let _ = fs::remove_dir_all(&staging);
        return Err(io_err(target)(e));
    }
    open_cached(target)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a small image with a correct manifest into `dir`.
    pub(crate) fn fake_image(dir: &Path, version: &str) {
        fake_image_of(dir, version, "x86_64", "kernel");
    }

    /// Writes a small image of `arch` whose kernel holds `kernel`.
    pub(crate) fn fake_image_of(dir: &Path, version: &str, arch: &str, kernel: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("vmlinuz"), kernel).unwrap();
        fs::write(dir.join("initrd.img"), format!("initrd {version}")).unwrap();
        let mut sha256 = BTreeMap::new();
        for name in ["vmlinuz", "initrd.img"] {
            sha256.insert(name.to_string(), sha256_file(&dir.join(name)).unwrap());
        }
        let manifest = GuestManifest {
            version: version.into(),
            arch: arch.into(),
            kernel: "vmlinuz".into(),
            initrd: "initrd.img".into(),
            cmdline: "console=ttyS0".into(),
            iso: None,
            kernel_elf: None,
            sha256,
            features: vec![rmachine_driver::FEATURE_VIRTIO_FS_HOTPLUG.into()],
        };
        fs::write(dir.join(MANIFEST), serde_json::to_vec(&manifest).unwrap()).unwrap();
    }

    /// A loopback HTTP server for the files of one directory (what a release page serves),
    /// counting the requests; it stops when dropped, so later requests are refused.
    pub(crate) struct FileServer {
        pub(crate) url: String,
        pub(crate) hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        addr: std::net::SocketAddr,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl FileServer {
        pub(crate) fn serve(root: &Path) -> Self {
            use std::io::{BufRead, BufReader};
            use std::sync::atomic::Ordering;
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (root, counted, stopping) = (root.to_path_buf(), hits.clone(), stop.clone());
            let thread = std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut conn) = conn else { continue };
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut request = String::new();
                    let _ = reader.read_line(&mut request);
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let path = request.split_whitespace().nth(1).unwrap_or("/");
                    let body = fs::read(root.join(path.trim_start_matches('/')));
                    let _ = match body {
                        Ok(body) => conn
                            .write_all(
                                format!(
                                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                    body.len()
                                )
                                .as_bytes(),
                            )
                            .and_then(|()| conn.write_all(&body)),
                        Err(_) => conn.write_all(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        ),
                    };
                }
            });
            Self {
                url: format!("http://{addr}/"),
                hits,
                stop,
                addr,
                thread: Some(thread),
            }
        }
    }

    impl Drop for FileServer {
        fn drop(&mut self) {
            self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = std::net::TcpStream::connect(self.addr);
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    /// An address nothing listens on (a port just freed).
    fn refused_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{addr}/")
    }

    fn no_progress(_: DownloadEvent) {}

    fn find_now(
        source: Option<&ImageSource>,
        url: &str,
        cache: &Path,
        dev: Option<&Path>,
    ) -> Result<GuestImage, ImageError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(find(source, url, cache, dev, "x86_64", &no_progress))
    }

    fn cache_entries(cache: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(cache.join("guest"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    // The cache lock stays; staging directories must not.
                    .filter(|name| name != ".lock")
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
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
    fn the_manifests_features_reach_the_driver_and_older_images_have_none() {
        let tmp = tempfile::tempdir().unwrap();
        fake_image(tmp.path(), "1.0-features");
        assert_eq!(
            open(tmp.path()).unwrap().boot_image().features,
            [rmachine_driver::FEATURE_VIRTIO_FS_HOTPLUG]
        );
        let path = tmp.path().join(MANIFEST);
        let mut json: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        json.as_object_mut().unwrap().remove("features");
        fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        assert!(open(tmp.path()).unwrap().boot_image().features.is_empty());
    }

    #[test]
    fn an_uncompressed_kernel_listed_as_kernel_elf_is_checked_and_booted() {
        let tmp = tempfile::tempdir().unwrap();
        fake_image(tmp.path(), "1.0-elf");
        let path = tmp.path().join(MANIFEST);
        let mut manifest: GuestManifest =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(open(tmp.path()).unwrap().boot_image().kernel_elf, None);
        let mut json: serde_json::Value = serde_json::to_value(&manifest).unwrap();
        json["kernelElf"] = "vmlinux".into();
        fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        let err = open(tmp.path()).unwrap_err().to_string();
        assert!(err.ends_with("no sha256 for vmlinux"), "{err}");

        fs::write(tmp.path().join("vmlinux"), b"\x7fELF").unwrap();
        manifest.kernel_elf = Some("vmlinux".into());
        manifest.sha256.insert(
            "vmlinux".into(),
            sha256_file(&tmp.path().join("vmlinux")).unwrap(),
        );
        fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        let image = open(tmp.path()).unwrap();
        assert_eq!(
            image.boot_image().kernel_elf,
            Some(tmp.path().join("vmlinux"))
        );
    }

    #[test]
    fn missing_image_names_where_it_looked_and_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let dev = tmp.path().join("ws/guest/out");
        let url = refused_url();
        let err = find_now(None, &url, &tmp.path().join("cache"), Some(&dev)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&tmp.path().join("cache/guest").display().to_string()),
            "{msg}"
        );
        assert!(msg.contains(&dev.display().to_string()), "{msg}");
        assert!(
            msg.ends_with(
                "run guest/build.sh, pass --guest-image PATH|URL or set RMACHINE_GUEST_IMAGE_URL"
            ),
            "{msg}"
        );
        let ImageError::NotFound { download, .. } = err else {
            panic!("not NotFound");
        };
        assert_eq!(
            download.to_string(),
            format!("cannot download {url}manifest.json")
        );

        let missing = ImageSource::Dir("/nonexistent".into());
        let err = find_now(Some(&missing), &url, tmp.path(), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "guest image /nonexistent: no manifest.json there; run guest/build.sh or pass --guest-image PATH|URL"
        );
    }

    #[test]
    fn sources_parse_and_urls_name_their_manifest() {
        assert_eq!(
            "https://h/x/".parse::<ImageSource>().unwrap(),
            ImageSource::Url("https://h/x/".into())
        );
        assert_eq!(
            "./guest/out".parse::<ImageSource>().unwrap(),
            ImageSource::Dir("./guest/out".into())
        );
        assert_eq!(
            manifest_url("http://h/a").unwrap(),
            "http://h/a/manifest.json"
        );
        assert_eq!(
            manifest_url("http://h/a/").unwrap(),
            "http://h/a/manifest.json"
        );
        assert_eq!(
            manifest_url("http://h/a/x64.json").unwrap(),
            "http://h/a/x64.json"
        );
        for bad in ["ftp://h/", "http://", "http:///x", "http://h/a?x=1"] {
            assert!(
                matches!(manifest_url(bad), Err(ImageError::BadUrl { .. })),
                "{bad}"
            );
        }
        let expanded = expand_download_url(DEFAULT_DOWNLOAD_URL, "aarch64");
        assert!(
            expanded.ends_with(&format!("/guest-v{}-aarch64/", env!("CARGO_PKG_VERSION"))),
            "{expanded}"
        );
    }

    #[test]
    fn downloads_verify_cache_and_work_offline() {
        let tmp = tempfile::tempdir().unwrap();
        let published = tmp.path().join("release");
        fake_image(&published, "0.1.0");
        let server = FileServer::serve(&published);
        let cache = tmp.path().join("cache");
        let events = std::sync::Mutex::new(Vec::new());
        let record = |e: DownloadEvent| events.lock().unwrap().push(e);
        let image = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(find(None, &server.url, &cache, None, "x86_64", &record))
            .unwrap();
        assert_eq!(image.dir, cache.join("guest/0.1.0-x86_64"));
        assert_eq!(
            fs::read(image.boot_image().kernel).unwrap(),
            fs::read(published.join("vmlinuz")).unwrap()
        );
        assert_eq!(
            fs::read_to_string(image.dir.join(SOURCE_URL)).unwrap(),
            format!("{}manifest.json", server.url)
        );
        let events = events.into_inner().unwrap();
        let started: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                DownloadEvent::Started { url, total } => Some((url.clone(), *total)),
                _ => None,
            })
            .collect();
        assert_eq!(
            started,
            vec![
                (format!("{}initrd.img", server.url), Some(12)),
                (format!("{}vmlinuz", server.url), Some(6)),
            ]
        );
        assert!(events.contains(&DownloadEvent::Advanced { done: 12 }));
        assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(cache_entries(&cache), ["0.1.0-x86_64"]);

        // Offline: the same URL (default or explicit) is served from the cache.
        let url = server.url.clone();
        drop(server);
        assert_eq!(find_now(None, &url, &cache, None).unwrap(), image);
        let explicit = ImageSource::Url(url.clone());
        assert_eq!(
            find_now(Some(&explicit), &url, &cache, None).unwrap(),
            image
        );
        // A cached file that was changed is caught before use.
        fs::write(image.dir.join("vmlinuz"), b"changed").unwrap();
        assert!(matches!(
            find_now(None, &url, &cache, None),
            Err(ImageError::Checksum { .. })
        ));
    }

    #[test]
    fn a_tampered_download_is_discarded_and_nothing_is_cached() {
        let tmp = tempfile::tempdir().unwrap();
        let published = tmp.path().join("release");
        fake_image(&published, "0.1.0");
        fs::write(published.join("vmlinuz"), b"evil kernel").unwrap();
        let server = FileServer::serve(&published);
        let cache = tmp.path().join("cache");
        let source = ImageSource::Url(server.url.clone());
        let err = find_now(Some(&source), "http://unused.invalid/", &cache, None).unwrap_err();
        let expected = sha256_file(&published.join("vmlinuz")).unwrap();
        assert!(matches!(err, ImageError::DownloadChecksum { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "downloaded guest image file {}vmlinuz is corrupt: sha256 {expected}, manifest says {}; it was discarded and nothing was cached",
                server.url,
                sha256_hex(b"kernel")
            )
        );
        assert!(
            cache_entries(&cache).is_empty(),
            "{:?}",
            cache_entries(&cache)
        );
    }

    fn sha256_hex(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[test]
    fn a_missing_file_or_server_is_one_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().join("empty");
        fs::create_dir_all(&empty).unwrap();
        let server = FileServer::serve(&empty);
        let source = ImageSource::Url(format!("{}v1", server.url));
        let err = find_now(Some(&source), "", tmp.path(), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot download {}v1/manifest.json: the server answered 404",
                server.url
            )
        );
        let url = refused_url();
        let source = ImageSource::Url(url.clone());
        let err = find_now(Some(&source), "", tmp.path(), None).unwrap_err();
        assert!(matches!(err, ImageError::Unreachable { .. }), "{err}");
        assert!(cache_entries(tmp.path()).is_empty());
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
        let url = refused_url();
        let found = find_now(None, &url, &cache, Some(&src)).unwrap();
        assert_eq!(found.dir, src);
        let cached = import(&found, &cache).unwrap();
        assert_eq!(cached.dir, cache.join("guest/0.1.0-x86_64"));
        assert_eq!(
            cached.boot_image().kernel,
            cache.join("guest/0.1.0-x86_64/vmlinuz")
        );
        assert_eq!(
            find_now(None, &url, &cache, Some(&src)).unwrap().dir,
            cached.dir
        );
        // Importing again is a no-op that returns the same image.
        assert_eq!(import(&found, &cache).unwrap(), cached);
        // A local image in the cache is used without the network, guest/out or not.
        assert_eq!(find_now(None, &url, &cache, None).unwrap().dir, cached.dir);

        // A rebuilt guest/out (a version the cache lacks) wins over the cache.
        fake_image(&src, "0.2.0");
        assert_eq!(find_now(None, &url, &cache, Some(&src)).unwrap().dir, src);
        let newer = import(&find_now(None, &url, &cache, Some(&src)).unwrap(), &cache).unwrap();
        assert_eq!(newer.dir, cache.join("guest/0.2.0-x86_64"));
        // An explicit --guest-image always wins.
        let other = tmp.path().join("other");
        fake_image(&other, "0.3.0");
        let explicit = ImageSource::Dir(other.clone());
        assert_eq!(
            find_now(Some(&explicit), &url, &cache, Some(&src))
                .unwrap()
                .dir,
            other
        );
    }

    #[test]
    fn a_cached_image_is_hashed_once_and_again_only_when_a_file_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let source = tmp.path().join("image");
        fake_image(&source, "1.0");
        let cached = import(&open(&source).unwrap(), &cache).unwrap();
        assert!(cached.dir.join(VERIFIED).is_file());
        let kernel = cached.boot_image().kernel;
        let mtime = fs::metadata(&kernel).unwrap().modified().unwrap();

        // Unchanged: taken as verified from its record, not read again.
        let record: BTreeMap<String, VerifiedFile> =
            serde_json::from_slice(&fs::read(cached.dir.join(VERIFIED)).unwrap()).unwrap();
        let sum = &cached.manifest.sha256["vmlinuz"];
        assert!(still_verified(&record["vmlinuz"], &kernel, sum));
        assert_eq!(open_cached(&cached.dir).unwrap(), cached);
        let found = find_now(None, "http://127.0.0.1:1/guest/", &cache, None).unwrap();
        assert_eq!(found.dir, cached.dir);

        // Same length, mtime put back (as `touch -r` or `cp -p` would): the change time moved,
        // so the file is hashed again and refused.
        let len = fs::metadata(&kernel).unwrap().len() as usize;
        fs::write(&kernel, vec![b'x'; len]).unwrap();
        fs::File::options()
            .write(true)
            .open(&kernel)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(fs::metadata(&kernel).unwrap().modified().unwrap(), mtime);
        assert!(!still_verified(&record["vmlinuz"], &kernel, sum));
        let err = open_cached(&cached.dir).unwrap_err();
        assert!(matches!(err, ImageError::Checksum { .. }), "{err}");
    }

    #[test]
    fn another_image_under_a_cached_version_is_refused_and_the_cache_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let first = tmp.path().join("first");
        fake_image(&first, "1.0");
        let cached = import(&open(&first).unwrap(), &cache).unwrap();
        let kernel = cached.boot_image().kernel;

        // A local image of the same version with another kernel: refused, nothing replaced.
        let rebuilt = tmp.path().join("rebuilt");
        fake_image_of(&rebuilt, "1.0", "x86_64", "other kernel");
        let err = import(&open(&rebuilt).unwrap(), &cache).unwrap_err();
        assert!(matches!(err, ImageError::VersionConflict(_)), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "guest image 1.0 (x86_64) from {} differs from the cached image 1.0 in {}: \
                 vmlinuz has sha256 {}, the cached one {}; a cached image is never replaced \
                 (machines boot from it): publish the changed image under a new version, or \
                 remove the machines using it and then that directory",
                rebuilt.display(),
                cached.dir.display(),
                sha256_hex(b"other kernel"),
                sha256_hex(b"kernel")
            )
        );
        assert_eq!(fs::read(&kernel).unwrap(), b"kernel");

        // The same from a server: refused after the manifest, no file downloaded.
        let server = FileServer::serve(&rebuilt);
        let source = ImageSource::Url(server.url.clone());
        let err = find_now(Some(&source), "", &cache, None).unwrap_err();
        assert!(matches!(err, ImageError::VersionConflict(_)), "{err}");
        assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(fs::read(&kernel).unwrap(), b"kernel");
        assert_eq!(cache_entries(&cache), ["1.0-x86_64"]);

        // Equal sums under the same version: the cached files are used, none downloaded.
        let same = tmp.path().join("same");
        fake_image(&same, "1.0");
        let server = FileServer::serve(&same);
        let source = ImageSource::Url(server.url.clone());
        assert_eq!(find_now(Some(&source), "", &cache, None).unwrap(), cached);
        assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(import(&open(&same).unwrap(), &cache).unwrap(), cached);

        // An entry from before the name held the architecture counts as that version too.
        let legacy_cache = tmp.path().join("legacy");
        fake_image(&legacy_cache.join("guest/1.0"), "1.0");
        let err = import(&open(&rebuilt).unwrap(), &legacy_cache).unwrap_err();
        assert!(matches!(err, ImageError::VersionConflict(_)), "{err}");
        assert_eq!(
            import(&open(&same).unwrap(), &legacy_cache).unwrap().dir,
            legacy_cache.join("guest/1.0")
        );
    }

    #[test]
    fn images_are_looked_up_by_architecture() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let url = refused_url();
        let find_arch = |dev: Option<&Path>, arch: &str| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(find(None, &url, &cache, dev, arch, &no_progress))
        };
        // One version, both architectures, side by side in the cache.
        let x86 = tmp.path().join("out");
        fake_image_of(&x86, "2.0", "x86_64", "x86 kernel");
        let arm = tmp.path().join("out-aarch64");
        fake_image_of(&arm, "2.0", "aarch64", "arm kernel");
        let x86_cached = import(&open(&x86).unwrap(), &cache).unwrap();
        let arm_cached = import(&open(&arm).unwrap(), &cache).unwrap();
        assert_eq!(cache_entries(&cache), ["2.0-aarch64", "2.0-x86_64"]);
        // The arm64 image, imported last, is the newest; it is never the x86_64 default.
        assert_eq!(find_arch(None, "x86_64").unwrap(), x86_cached);
        assert_eq!(find_arch(None, "aarch64").unwrap(), arm_cached);
        // A build directory of another architecture is not used.
        let arm_new = tmp.path().join("arm-new");
        fake_image_of(&arm_new, "3.0", "aarch64", "arm kernel 3");
        assert_eq!(find_arch(Some(&arm_new), "x86_64").unwrap(), x86_cached);
        assert_eq!(find_arch(Some(&arm_new), "aarch64").unwrap().dir, arm_new);
        // With no x86_64 image anywhere, an arm64 one is not taken.
        let only_arm = tmp.path().join("only-arm");
        import(&open(&arm).unwrap(), &only_arm).unwrap();
        let err = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(find(
                None,
                &url,
                &only_arm,
                Some(&arm_new),
                "x86_64",
                &no_progress,
            ))
            .unwrap_err();
        assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
        // Build directories per architecture, as guest/build.sh writes them.
        let out = workspace_guest_out("aarch64");
        assert!(
            out.as_deref()
                .is_some_and(|p| p.ends_with("guest/out-aarch64")),
            "{out:?}"
        );
        let out = workspace_guest_out("x86_64");
        assert!(
            out.as_deref().is_some_and(|p| p.ends_with("guest/out")),
            "{out:?}"
        );
    }
}
