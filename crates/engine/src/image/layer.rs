//! Safe extraction of one layer tar into a directory usable as an overlayfs lower dir.
//!
//! The tar comes from whoever built the image, so every entry is treated as hostile:
//! - paths are split into components; absolute paths and `..` are refused outright;
//! - every parent directory is checked with `symlink_metadata` from the layer root down, so a
//!   symlink planted by an earlier entry (`link -> /etc`) is never followed when a later entry
//!   (`link/passwd`) is written: such an entry is refused;
//! - hard links must name an existing non-directory inside the layer, found the same way;
//! - files are created with `O_CREAT | O_EXCL | O_NOFOLLOW`.
//!
//! The layer root is a private temporary directory that only this extraction writes, so checking
//! then creating is not racy. While extracting, the whole uncompressed stream is hashed (trailing
//! padding included) so the caller can compare it with the diff id the image config promises.
//!
//! One thread reads the stream (decompressing, hashing, parsing, recording the tar-split) and
//! makes every entry in stream order except small regular files, which it hands to a few
//! writer threads ([`writers`]); it waits for them (a barrier) before any entry that could
//! touch a file they have not finished, which keeps the checks above true for them too.
//!
//! AUFS-style whiteouts become overlayfs ones: `.wh.NAME` is a 0:0 character device `NAME`, and
//! `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, futimens, makedev, mknod, Mode, SFlag};
use nix::sys::time::{TimeSpec, TimeVal};
use sha2::{Digest, Sha256};
use tar::EntryType;

use super::ImageError;
use writers::{FileJob, Pool, Tuning};

mod writers;

/// Prefix of AUFS whiteout file names.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the AUFS marker that makes its directory opaque.
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to treat a lower directory as opaque.
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What extracting a layer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// `sha256:<hex>` of the uncompressed tar stream: the layer's diff id.
    pub diff_id: String,
    /// Bytes of content (regular files, symlink targets), Docker's layer "size".
    pub size: u64,
}

/// Wraps a layer blob in the decompressor its first bytes call for (gzip, zstd or none).
pub fn decompress<'a>(
    reader: impl Read + 'a,
    layer: &str,
) -> Result<Box<dyn Read + 'a>, ImageError> {
    let mut reader = BufReader::new(reader);
    let head = reader.fill_buf().map_err(|source| ImageError::Io {
        path: PathBuf::from(layer),
        source,
    })?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(reader)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder = ruzstd::decoding::StreamingDecoder::new(reader).map_err(|e| {
            ImageError::InvalidLayer {
                layer: layer.to_string(),
                reason: format!("zstd: {e}"),
            }
        })?;
        Ok(Box::new(decoder))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) || head.starts_with(b"BZh") {
        // Said plainly rather than failing later as a corrupt tar.
        Err(ImageError::InvalidLayer {
            layer: layer.to_string(),
            reason: "xz- and bzip2-compressed archives are not supported (use gzip or none)"
                .to_string(),
        })
    } else {
        Ok(Box::new(reader))
    }
}

/// Hashes everything read through it and, while `split` is set and no file content is being
/// read, keeps the bytes (headers, padding) for the layer's tar-split.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    raw: Rc<RefCell<RawBytes>>,
}

/// The tar bytes read since the last file content, shared with the extraction loop.
#[derive(Default)]
struct RawBytes {
    recording: bool,
    in_content: bool,
    bytes: Vec<u8>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        let mut raw = self.raw.borrow_mut();
        if raw.recording && !raw.in_content {
            raw.bytes.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

/// Record tags of the tar-split format (see [`reassemble`]).
const SPLIT_RAW: u8 = b'R';
const SPLIT_FILE: u8 = b'F';

fn write_raw_record(split: &mut dyn Write, raw: &mut RawBytes) -> io::Result<()> {
    if raw.bytes.is_empty() {
        return Ok(());
    }
    let len = u32::try_from(raw.bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "tar header run over 4 GiB"))?;
    split.write_all(&[SPLIT_RAW])?;
    split.write_all(&len.to_le_bytes())?;
    split.write_all(&raw.bytes)?;
    raw.bytes.clear();
    Ok(())
}

/// Rebuilds, byte for byte, the tar a layer was extracted from: the recorded non-content bytes
/// of `split` in order, with each file's content read back from the extracted tree at `root`.
/// The caller checks the result against the diff id (a tree changed since would not match).
pub fn reassemble(split: impl Read, root: &Path, mut out: impl Write) -> Result<(), ImageError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io { path, source }
    };
    let split_err = |reason: &str| ImageError::InvalidLayer {
        layer: root.display().to_string(),
        reason: format!("tar-split: {reason}"),
    };
    let mut split = BufReader::new(split);
    loop {
        let mut tag = [0u8; 1];
        match split.read_exact(&mut tag) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(io_err(root)(e)),
        }
        let mut len = [0u8; 4];
        split.read_exact(&mut len).map_err(io_err(root))?;
        let len = u32::from_le_bytes(len) as u64;
        match tag[0] {
            SPLIT_RAW => {
                let copied =
                    io::copy(&mut (&mut split).take(len), &mut out).map_err(io_err(root))?;
                if copied != len {
                    return Err(split_err("truncated"));
                }
            }
            SPLIT_FILE => {
                let mut name = Vec::new();
                (&mut split)
                    .take(len)
                    .read_to_end(&mut name)
                    .map_err(io_err(root))?;
                let mut size = [0u8; 8];
                split.read_exact(&mut size).map_err(io_err(root))?;
                let size = u64::from_le_bytes(size);
                let parts = split_path(&name).map_err(|r| split_err(&r))?;
                let relative: PathBuf = parts.iter().collect();
                let path = root.join(&relative);
                let file = fs::File::from(
                    open_beneath(root, &relative, OFlag::O_RDONLY).map_err(io_err(&path))?,
                );
                let copied = io::copy(&mut file.take(size), &mut out).map_err(io_err(&path))?;
                if copied != size {
                    return Err(split_err("a file shrank since extraction"));
                }
            }
            _ => return Err(split_err("unknown record")),
        }
    }
}

/// Opens `relative` below `root` without following a symlink anywhere on the way, the last
/// component included (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): a path whose
/// directory a later entry replaced by a symlink fails instead of leading outside the root.
fn open_beneath(root: &Path, relative: &Path, flags: OFlag) -> io::Result<OwnedFd> {
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let how = OpenHow::new()
        .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    Ok(openat2(&root_fd, relative, how)?)
}

/// Metadata applied to a directory once all its children exist: a read-only mode or a
/// restored mtime would otherwise get in the way of (or be clobbered by) later entries.
struct DirFixup {
    path: PathBuf,
    mode: u32,
    mtime: i64,
}

/// Extracts the uncompressed layer tar `reader` into the existing, empty directory `root`.
///
/// `layer` names the layer in errors. Nothing is ever written outside `root`; a hostile entry
/// fails the whole extraction (the caller discards `root`).
#[cfg(test)]
pub fn extract(reader: impl Read, root: &Path, layer: &str) -> Result<Extracted, ImageError> {
    extract_with_split(reader, root, layer, None)
}

/// [`extract`], also writing to `split` what [`reassemble`] needs to rebuild the exact tar
/// from the extracted tree: every byte that is not file content, and for each file its name
/// and length (Docker keeps the same "tar-split" beside its layers).
pub fn extract_with_split(
    reader: impl Read,
    root: &Path,
    layer: &str,
    split: Option<&mut dyn Write>,
) -> Result<Extracted, ImageError> {
    extract_tuned(reader, root, layer, split, &Tuning::default())
}

/// [`extract_with_split`] with the writer pool set up as `tuning` says.
fn extract_tuned(
    reader: impl Read,
    root: &Path,
    layer: &str,
    split: Option<&mut dyn Write>,
    tuning: &Tuning,
) -> Result<Extracted, ImageError> {
    let shared = writers::Shared::new();
    // Scoped: every writer is joined before this returns, whatever the outcome (the pool,
    // dropped on the way out or while unwinding, tells them to stop).
    std::thread::scope(|scope| {
        let mut pool = Pool::start(scope, &shared, tuning).map_err(|source| ImageError::Io {
            path: PathBuf::from(format!("{layer} writer threads")),
            source,
        })?;
        extract_entries(reader, root, layer, split, &mut pool, tuning)
    })
}

/// The reading thread's side of the extraction: everything but the content of small regular
/// files, which goes to `pool`, in stream order.
fn extract_entries(
    reader: impl Read,
    root: &Path,
    layer: &str,
    mut split: Option<&mut dyn Write>,
    pool: &mut Pool<'_>,
    tuning: &Tuning,
) -> Result<Extracted, ImageError> {
    let invalid = |reason: String| ImageError::InvalidLayer {
        layer: layer.to_string(),
        reason,
    };
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io { path, source }
    };
    let raw = Rc::new(RefCell::new(RawBytes {
        recording: split.is_some(),
        ..RawBytes::default()
    }));
    let split_err = |source| ImageError::Io {
        path: PathBuf::from(format!("{layer} tar-split")),
        source,
    };
    let mut archive = tar::Archive::new(HashingReader {
        inner: reader,
        hasher: Sha256::new(),
        raw: Rc::clone(&raw),
    });
    let mut size = 0u64;
    let mut dirs: Vec<DirFixup> = Vec::new();
    let mut known_dirs = KnownDirs::default();
    let entries = archive
        .entries()
        .map_err(|e| invalid(format!("reading tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("reading tar: {e}")))?;
        let raw_path = entry.path_bytes().into_owned();
        let entry_name = String::from_utf8_lossy(&raw_path).into_owned();
        let components =
            split_path(&raw_path).map_err(|reason| invalid(format!("{entry_name}: {reason}")))?;
        let Some((name, parents)) = components.split_last() else {
            // "./" itself: the layer root's own metadata is not ours to change.
            continue;
        };
        let meta =
            EntryMeta::read(&mut entry).map_err(|e| invalid(format!("{entry_name}: {e}")))?;
        let kind = entry.header().entry_type();
        let name_str = name.to_string_lossy();
        // The barrier (see `writers`): before anything that could touch a file a writer has
        // not finished. Replacing an existing path waits too, in `make_room`.
        if kind == EntryType::Link
            || name_str.starts_with(WHITEOUT_PREFIX)
            || pool.conflicts(&components)
        {
            pool.drain()?;
        }
        let parent = known_dirs
            .ensure_parents(root, parents)
            .map_err(|e| e.into_image_error(layer, &entry_name))?;

        if name_str == OPAQUE_MARKER {
            set_xattr(&parent, OVERLAY_OPAQUE_XATTR, b"y").map_err(io_err(&parent))?;
            continue;
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(invalid(format!("{entry_name}: invalid whiteout")));
            }
            let target = parent.join(hidden);
            make_room(&target, true, pool, &mut known_dirs, &mut dirs)?;
            mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                .map_err(|e| io_err(&target)(io::Error::from(e)))?;
            lchown(&target, meta.uid, meta.gid).map_err(io_err(&target))?;
            continue;
        }

        let target = parent.join(name);
        match kind {
            EntryType::Directory => {
                if make_room(&target, false, pool, &mut known_dirs, &mut dirs)? == Room::Vacant {
                    fs::create_dir(&target).map_err(io_err(&target))?;
                }
                known_dirs.insert(target.clone());
                lchown(&target, meta.uid, meta.gid).map_err(io_err(&target))?;
                apply_xattrs(&target, &meta.xattrs);
                dirs.push(DirFixup {
                    path: target,
                    mode: meta.mode,
                    mtime: meta.mtime,
                });
            }
            EntryType::Regular | EntryType::Continuous => {
                make_room(&target, true, pool, &mut known_dirs, &mut dirs)?;
                let content_len = entry.size();
                if let Some(split) = split.as_deref_mut() {
                    if content_len > 0 {
                        write_raw_record(split, &mut raw.borrow_mut()).map_err(split_err)?;
                        let name_len = u32::try_from(raw_path.len())
                            .map_err(|_| invalid(format!("{entry_name}: name too long")))?;
                        split.write_all(&[SPLIT_FILE]).map_err(split_err)?;
                        split
                            .write_all(&name_len.to_le_bytes())
                            .map_err(split_err)?;
                        split.write_all(&raw_path).map_err(split_err)?;
                        split
                            .write_all(&content_len.to_le_bytes())
                            .map_err(split_err)?;
                        raw.borrow_mut().in_content = true;
                    }
                }
                if content_len <= tuning.pooled_up_to {
                    // Bounded by `pooled_up_to`, so a header's claim cannot make this huge.
                    let mut content = Vec::with_capacity(content_len as usize);
                    let read = entry.read_to_end(&mut content);
                    raw.borrow_mut().in_content = false;
                    read.map_err(io_err(&target))?;
                    size += content.len() as u64;
                    let relative = components.iter().collect();
                    pool.submit(
                        relative,
                        FileJob {
                            path: target,
                            content,
                            meta,
                        },
                    )?;
                } else {
                    let mut file = writers::create_new(&target).map_err(io_err(&target))?;
                    let copied = io::copy(&mut entry, &mut file);
                    raw.borrow_mut().in_content = false;
                    size += copied.map_err(io_err(&target))?;
                    writers::finish_file(&file, &target, &meta).map_err(io_err(&target))?;
                }
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| invalid(format!("{entry_name}: symlink without a target")))?;
                make_room(&target, true, pool, &mut known_dirs, &mut dirs)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target)
                    .map_err(io_err(&target))?;
                size += link.len() as u64;
                finish(&target, &meta, false).map_err(io_err(&target))?;
            }
            EntryType::Link => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| invalid(format!("{entry_name}: hard link without a target")))?;
                let link_display = String::from_utf8_lossy(&link).into_owned();
                let source = resolve_existing(root, &link).map_err(|reason| {
                    invalid(format!(
                        "{entry_name}: hard link to {link_display}: {reason}"
                    ))
                })?;
                if source == target {
                    continue;
                }
                make_room(&target, true, pool, &mut known_dirs, &mut dirs)?;
                // link(2) does not follow a symlink source, so this links the entry itself.
                fs::hard_link(&source, &target).map_err(io_err(&target))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                make_room(&target, true, pool, &mut known_dirs, &mut dirs)?;
                let (flag, dev) = match kind {
                    EntryType::Char => (SFlag::S_IFCHR, meta.device),
                    EntryType::Block => (SFlag::S_IFBLK, meta.device),
                    _ => (SFlag::S_IFIFO, 0),
                };
                let mode = Mode::from_bits_truncate((meta.mode & 0o7777) as libc::mode_t);
                match mknod(&target, flag, mode, dev) {
                    Ok(()) => finish(&target, &meta, true).map_err(io_err(&target))?,
                    // Without CAP_MKNOD (a rootless engine) Docker skips device nodes too.
                    Err(nix::errno::Errno::EPERM) if kind != EntryType::Fifo => {
                        tracing::warn!(layer, path = %entry_name, "no permission to create device node, skipped");
                    }
                    Err(e) => return Err(io_err(&target)(io::Error::from(e))),
                }
            }
            EntryType::XGlobalHeader | EntryType::XHeader => {}
            other => {
                return Err(invalid(format!(
                    "{entry_name}: unsupported tar entry type {other:?}"
                )));
            }
        }
    }
    // Every file written before directories get their final modes (a read-only one would stop
    // a writer) and times (a file created in one would change it).
    pool.drain()?;

    // Deepest first, so setting a parent's mtime is not undone by touching a child.
    dirs.sort_by(|a, b| {
        b.path
            .components()
            .count()
            .cmp(&a.path.components().count())
    });
    for dir in &dirs {
        let relative = dir.path.strip_prefix(root).unwrap_or(&dir.path);
        let fd = open_beneath(root, relative, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .map_err(io_err(&dir.path))?;
        fchmod(
            &fd,
            Mode::from_bits_truncate((dir.mode & 0o7777) as libc::mode_t),
        )
        .map_err(|e| io_err(&dir.path)(io::Error::from(e)))?;
        let time = TimeSpec::new(dir.mtime, 0);
        futimens(&fd, &time, &time).map_err(|e| io_err(&dir.path)(io::Error::from(e)))?;
    }

    let mut hashing = archive.into_inner();
    // The diff id covers the whole stream, including the end-of-archive blocks and padding.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| invalid(format!("reading tar: {e}")))?;
    if let Some(split) = split {
        write_raw_record(split, &mut raw.borrow_mut()).map_err(split_err)?;
        split.flush().map_err(split_err)?;
    }
    let diff_id = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
    Ok(Extracted { diff_id, size })
}

/// What is at an entry's target once [`make_room`] is done.
#[derive(Debug, PartialEq, Eq)]
enum Room {
    /// Nothing: the entry creates it.
    Vacant,
    /// A directory, kept for a directory entry.
    Directory,
}

/// Clears `target` for a new entry: removes what is there (never following a symlink), but
/// keeps a directory unless `dirs_too`. Anything removed waits for the writers to drain
/// first: a directory might hold a file still being written, and what replaces it (a
/// symlink) must never redirect that writer.
fn make_room(
    target: &Path,
    dirs_too: bool,
    pool: &mut Pool<'_>,
    known_dirs: &mut KnownDirs,
    dirs: &mut Vec<DirFixup>,
) -> Result<Room, ImageError> {
    let io_err = |source| ImageError::Io {
        path: target.to_path_buf(),
        source,
    };
    let existing = match fs::symlink_metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Room::Vacant),
        Err(e) => return Err(io_err(e)),
    };
    if existing.is_dir() && !dirs_too {
        return Ok(Room::Directory);
    }
    pool.drain()?;
    if existing.is_dir() {
        known_dirs.forget();
        // The removed directories' modes and times are not applied at the end: whatever takes
        // the path now (a file, or a symlink leading out of the root) must not get them.
        dirs.retain(|dir| !dir.path.starts_with(target));
        fs::remove_dir_all(target).map_err(io_err)?;
    } else {
        fs::remove_file(target).map_err(io_err)?;
    }
    Ok(Room::Vacant)
}

/// The metadata of one entry, with PAX overrides applied.
struct EntryMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    device: libc::dev_t,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl EntryMeta {
    fn read<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<EntryMeta> {
        let header = entry.header();
        let mode = header.mode()?;
        let mut uid = header.uid()?;
        let mut gid = header.gid()?;
        let mut mtime = i64::try_from(header.mtime()?).unwrap_or(i64::MAX);
        let major = header.device_major().ok().flatten().unwrap_or(0);
        let minor = header.device_minor().ok().flatten().unwrap_or(0);
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions()? {
            for ext in pax {
                let ext = ext?;
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                let number = || std::str::from_utf8(value).ok();
                match key {
                    "uid" => uid = number().and_then(|v| v.parse().ok()).unwrap_or(uid),
                    "gid" => gid = number().and_then(|v| v.parse().ok()).unwrap_or(gid),
                    "mtime" => {
                        mtime = number()
                            .and_then(|v| v.split('.').next())
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(mtime)
                    }
                    _ => {
                        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                            xattrs.push((name.to_string(), value.to_vec()));
                        }
                    }
                }
            }
        }
        let id = |v: u64| {
            u32::try_from(v)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "uid/gid out of range"))
        };
        Ok(EntryMeta {
            mode,
            uid: id(uid)?,
            gid: id(gid)?,
            mtime,
            device: makedev(u64::from(major), u64::from(minor)),
            xattrs,
        })
    }
}

/// Splits a tar path into normal components; refuses absolute paths and `..`.
fn split_path(raw: &[u8]) -> Result<Vec<&OsStr>, String> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path".to_string());
    }
    let mut out = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("path escapes the layer (..)".to_string()),
            _ => {
                if part.contains(&0) {
                    return Err("path contains a NUL byte".to_string());
                }
                out.push(OsStr::from_bytes(part));
            }
        }
    }
    Ok(out)
}

/// Why a parent path could not be made.
enum ParentError {
    NotADirectory(PathBuf),
    Io(PathBuf, io::Error),
}

impl ParentError {
    fn into_image_error(self, layer: &str, entry: &str) -> ImageError {
        match self {
            ParentError::NotADirectory(path) => ImageError::InvalidLayer {
                layer: layer.to_string(),
                reason: format!(
                    "{entry}: parent {} is not a directory (symlinks are not followed)",
                    path.display()
                ),
            },
            ParentError::Io(path, source) => ImageError::Io { path, source },
        }
    }
}

/// Directories below the layer root this extraction has checked (or made) real directories:
/// a file's parents are checked once, not once per file. Only this extraction changes the
/// tree, and it forgets them all whenever it removes a directory.
#[derive(Default)]
struct KnownDirs(HashSet<PathBuf>);

impl KnownDirs {
    fn insert(&mut self, dir: PathBuf) {
        // Only a cache: past this size it starts again rather than grow with the layer.
        if self.0.len() >= 65_536 {
            self.0.clear();
        }
        self.0.insert(dir);
    }

    fn forget(&mut self) {
        self.0.clear();
    }

    /// Walks `parents` below `root`, creating missing directories and refusing anything that
    /// is not a real directory (notably symlinks). Returns the innermost directory.
    fn ensure_parents(&mut self, root: &Path, parents: &[&OsStr]) -> Result<PathBuf, ParentError> {
        let mut current = root.to_path_buf();
        for part in parents {
            current.push(part);
            if self.0.contains(&current) {
                continue;
            }
            match fs::symlink_metadata(&current) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(ParentError::NotADirectory(current)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&current).map_err(|e| ParentError::Io(current.clone(), e))?;
                    fs::set_permissions(&current, fs::Permissions::from_mode(0o755))
                        .map_err(|e| ParentError::Io(current.clone(), e))?;
                }
                Err(e) => return Err(ParentError::Io(current, e)),
            }
            self.insert(current.clone());
        }
        Ok(current)
    }
}

/// Finds the existing non-directory a hard link names, without following any symlink on the way.
fn resolve_existing(root: &Path, raw: &[u8]) -> Result<PathBuf, String> {
    let components = split_path(raw)?;
    let Some((name, parents)) = components.split_last() else {
        return Err("empty target".to_string());
    };
    let mut current = root.to_path_buf();
    for part in parents {
        current.push(part);
        match fs::symlink_metadata(&current) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err("target goes through a non-directory".to_string()),
            Err(_) => return Err("target does not exist in the layer".to_string()),
        }
    }
    current.push(name);
    match fs::symlink_metadata(&current) {
        Ok(m) if m.is_dir() => Err("target is a directory".to_string()),
        Ok(_) => Ok(current),
        Err(_) => Err("target does not exist in the layer".to_string()),
    }
}

/// Owner, mode (not for symlinks), xattrs and mtime of a freshly created non-directory.
fn finish(path: &Path, meta: &EntryMeta, chmod: bool) -> io::Result<()> {
    lchown(path, meta.uid, meta.gid)?;
    // After chown: changing the owner clears set-id bits.
    if chmod {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode & 0o7777))?;
    }
    apply_xattrs(path, &meta.xattrs);
    set_mtime(path, meta.mtime)
}

fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    match std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
        // A rootless engine cannot give files away; keep going as Docker does in a user namespace.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            tracing::debug!(path = %path.display(), uid, gid, "lchown not permitted");
            Ok(())
        }
        other => other,
    }
}

fn set_mtime(path: &Path, mtime: i64) -> io::Result<()> {
    let tv = TimeVal::new(mtime, 0);
    nix::sys::stat::lutimes(path, &tv, &tv).map_err(io::Error::from)
}

/// Sets the xattrs a PAX header carried; overlayfs' own attributes are not the layer's to set.
fn apply_xattrs(path: &Path, xattrs: &[(String, Vec<u8>)]) {
    for (name, value) in xattrs {
        if name.starts_with("trusted.overlay.") {
            continue;
        }
        if let Err(e) = set_xattr(path, name, value) {
            tracing::warn!(path = %path.display(), xattr = %name, error = %e, "cannot set xattr, skipped");
        }
    }
}

/// Sets an xattr on `path` itself, never on what a symlink there names (`lsetxattr`).
fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    xattr::set(path, name, value)
}

/// Reads an xattr without following symlinks; `None` when it is absent.
#[cfg(test)]
pub(crate) fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    xattr::get(path, name).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::testutil::{TarBuilder, TempDir};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::panic::AssertUnwindSafe;

    /// A sandbox with the layer root inside it and a sibling "outside" the attack aims at.
    fn sandbox() -> (TempDir, PathBuf, PathBuf) {
        let tmp = TempDir::new();
        let root = tmp.path().join("layer");
        let outside = tmp.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("passwd"), b"secret\n").unwrap();
        (tmp, root, outside)
    }

    fn assert_outside_untouched(outside: &Path) {
        let mut names: Vec<_> = fs::read_dir(outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, vec![OsStr::new("passwd").to_os_string()]);
        assert_eq!(fs::read(outside.join("passwd")).unwrap(), b"secret\n");
    }

    /// The mode and mtime of `outside/passwd`, which no layer may change.
    fn outside_mode_and_mtime(outside: &Path) -> (u32, i64) {
        let m = fs::symlink_metadata(outside.join("passwd")).unwrap();
        (m.mode() & 0o7777, m.mtime())
    }

    #[test]
    fn a_directory_replaced_by_a_symlink_does_not_pass_its_mode_outside() {
        let (_tmp, root, outside) = sandbox();
        fs::set_permissions(outside.join("passwd"), fs::Permissions::from_mode(0o600)).unwrap();
        let before = outside_mode_and_mtime(&outside);
        let mut t = TarBuilder::new();
        t.dir("d", 0o6777);
        t.symlink("d", outside.join("passwd").to_str().unwrap());
        extract(&t.finish()[..], &root, "test").unwrap();
        assert_eq!(outside_mode_and_mtime(&outside), before);
        assert_outside_untouched(&outside);
    }

    #[test]
    fn a_parent_replaced_by_a_symlink_does_not_pass_a_childs_mode_outside() {
        let (_tmp, root, outside) = sandbox();
        fs::set_permissions(outside.join("passwd"), fs::Permissions::from_mode(0o600)).unwrap();
        let before = outside_mode_and_mtime(&outside);
        let mut t = TarBuilder::new();
        t.dir("a", 0o755);
        t.dir("a/passwd", 0o777);
        t.symlink("a", outside.to_str().unwrap());
        extract(&t.finish()[..], &root, "test").unwrap();
        assert_eq!(outside_mode_and_mtime(&outside), before);
        assert_outside_untouched(&outside);
    }

    #[test]
    fn a_directory_replaced_by_a_file_leaves_the_file_its_own_mode() {
        let (_tmp, root, _) = sandbox();
        let mut t = TarBuilder::new();
        t.dir("x", 0o777);
        t.file("x", b"plain");
        extract(&t.finish()[..], &root, "test").unwrap();
        let m = fs::symlink_metadata(root.join("x")).unwrap();
        assert!(m.is_file());
        assert_eq!(m.mode() & 0o7777, 0o644);
    }

    #[test]
    fn reassembling_never_reads_through_a_directory_replaced_by_a_symlink() {
        let (_tmp, root, outside) = sandbox();
        let mut t = TarBuilder::new();
        t.dir("d", 0o755);
        t.file("d/passwd", b"inside\n");
        t.symlink("d", outside.to_str().unwrap());
        let mut split = Vec::new();
        extract_with_split(&t.finish()[..], &root, "test", Some(&mut split)).unwrap();
        let mut rebuilt = Vec::new();
        let result = reassemble(&split[..], &root, &mut rebuilt);
        assert!(result.is_err(), "reassembled through the symlink");
        assert!(
            !rebuilt.windows(7).any(|w| w == b"secret\n"),
            "the outside file's content reached the tar"
        );
    }

    #[test]
    fn extended_attributes_reach_directories_and_the_writers_files() {
        let (_tmp, root, _) = sandbox();
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, mode) in [
            ("d", EntryType::Directory, 0o755),
            ("d/f", EntryType::Regular, 0o644),
        ] {
            builder
                .append_pax_extensions([("SCHILY.xattr.user.color", &b"blue"[..])])
                .unwrap();
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_size(0);
            header.set_mtime(1_600_000_000);
            header.set_uid(0);
            header.set_gid(0);
            header.set_cksum();
            builder.append_data(&mut header, path, io::empty()).unwrap();
        }
        let bytes = builder.into_inner().unwrap();
        extract(&bytes[..], &root, "test").unwrap();
        for path in ["d", "d/f"] {
            assert_eq!(
                get_xattr(&root.join(path), "user.color").as_deref(),
                Some(&b"blue"[..]),
                "{path}"
            );
        }
    }

    #[test]
    fn regular_layer_keeps_modes_owners_times_links_and_devices() {
        let (_tmp, root, _) = sandbox();
        let mut t = TarBuilder::new();
        t.dir("bin", 0o755);
        t.file_with(
            "bin/tool",
            b"#!/bin/sh\n",
            0o4755,
            1000,
            1001,
            1_600_000_000,
        );
        t.symlink("bin/sh", "tool");
        t.hardlink("bin/tool2", "bin/tool");
        t.char_device("dev/null", 1, 3);
        t.fifo("run/pipe");
        t.dir("tmp", 0o1777);
        let bytes = t.finish();
        let out = extract(&bytes[..], &root, "test").unwrap();

        assert_eq!(
            out.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
        );
        assert_eq!(out.size, 10 + 4);
        let tool = fs::symlink_metadata(root.join("bin/tool")).unwrap();
        assert_eq!(tool.mode() & 0o7777, 0o4755);
        assert_eq!((tool.uid(), tool.gid()), (1000, 1001));
        assert_eq!(tool.mtime(), 1_600_000_000);
        assert_eq!(
            fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("tool")
        );
        let tool2 = fs::symlink_metadata(root.join("bin/tool2")).unwrap();
        assert_eq!(tool2.ino(), tool.ino());
        let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), makedev(1, 3));
        assert!(fs::symlink_metadata(root.join("run/pipe"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert_eq!(
            fs::symlink_metadata(root.join("tmp")).unwrap().mode() & 0o7777,
            0o1777
        );
        assert_eq!(
            fs::symlink_metadata(root.join("bin")).unwrap().mtime(),
            1_700_000_000
        );
    }

    #[test]
    fn whiteouts_become_overlayfs_whiteouts() {
        let (_tmp, root, _) = sandbox();
        let mut t = TarBuilder::new();
        t.dir("etc", 0o755);
        t.file("etc/.wh.motd", b"");
        t.dir("var/cache", 0o755);
        t.file("var/cache/.wh..wh..opq", b"");
        let bytes = t.finish();
        extract(&bytes[..], &root, "test").unwrap();
        let motd = fs::symlink_metadata(root.join("etc/motd")).unwrap();
        assert!(motd.file_type().is_char_device());
        assert_eq!(motd.rdev(), 0);
        assert!(!root.join("etc/.wh.motd").exists());
        assert_eq!(
            get_xattr(&root.join("var/cache"), OVERLAY_OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..])
        );
        assert!(fs::read_dir(root.join("var/cache"))
            .unwrap()
            .next()
            .is_none());
    }

    #[test]
    fn dot_dot_paths_are_refused() {
        let (_tmp, root, outside) = sandbox();
        let mut t = TarBuilder::new();
        t.raw_file("../outside/evil", b"pwned");
        let err = extract(&t.finish()[..], &root, "test").unwrap_err();
        assert!(err.to_string().contains("escapes the layer"), "{err}");
        assert_outside_untouched(&outside);
    }

    #[test]
    fn absolute_paths_are_refused() {
        let (_tmp, root, outside) = sandbox();
        let evil = outside.join("evil");
        let mut t = TarBuilder::new();
        t.raw_file(evil.to_str().unwrap(), b"pwned");
        let err = extract(&t.finish()[..], &root, "test").unwrap_err();
        assert!(err.to_string().contains("absolute path"), "{err}");
        assert_outside_untouched(&outside);
    }

    #[test]
    fn writing_through_a_symlink_is_refused() {
        let (_tmp, root, outside) = sandbox();
        let mut t = TarBuilder::new();
        t.symlink("link", outside.to_str().unwrap());
        t.file("link/evil", b"pwned");
        let err = extract(&t.finish()[..], &root, "test").unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        assert_outside_untouched(&outside);

        // A relative symlink climbing out is no better.
        let (_tmp2, root2, outside2) = sandbox();
        let mut t = TarBuilder::new();
        t.symlink("up", "../outside");
        t.file("up/passwd", b"pwned");
        assert!(extract(&t.finish()[..], &root2, "test").is_err());
        assert_outside_untouched(&outside2);
    }

    #[test]
    fn replacing_a_symlink_does_not_write_through_it() {
        let (_tmp, root, outside) = sandbox();
        let mut t = TarBuilder::new();
        t.symlink("passwd", outside.join("passwd").to_str().unwrap());
        t.file("passwd", b"pwned");
        extract(&t.finish()[..], &root, "test").unwrap();
        assert_eq!(fs::read(root.join("passwd")).unwrap(), b"pwned");
        assert_outside_untouched(&outside);
    }

    #[test]
    fn hard_links_outside_the_layer_are_refused() {
        let (_tmp, root, outside) = sandbox();
        let mut t = TarBuilder::new();
        t.hardlink("passwd", "/etc/passwd");
        assert!(extract(&t.finish()[..], &root, "test").is_err());

        let mut t = TarBuilder::new();
        t.hardlink("passwd", "../outside/passwd");
        assert!(extract(&t.finish()[..], &root, "test").is_err());

        // Through a symlink planted earlier, then a write into the "linked" file.
        let mut t = TarBuilder::new();
        t.symlink("out", outside.to_str().unwrap());
        t.hardlink("passwd", "out/passwd");
        t.file("passwd", b"pwned");
        let err = extract(&t.finish()[..], &root, "test").unwrap_err();
        assert!(err.to_string().contains("hard link"), "{err}");
        assert_outside_untouched(&outside);
        assert!(!root.join("passwd").exists());
    }

    #[test]
    fn xz_and_bzip2_are_refused_by_name() {
        for head in [&b"\xfd7zXZ\x00rest"[..], &b"BZh91AY&SY"[..]] {
            let err = decompress(head, "blob").err().expect("refused");
            assert!(
                err.to_string().contains("xz- and bzip2-compressed"),
                "{err}"
            );
        }
        assert!(decompress(&b"plain tar bytes"[..], "blob").is_ok());
    }

    /// Writers that dawdle: every file stays pending while the reading thread goes on, so an
    /// entry that should wait for them and does not shows.
    fn slow_writers() -> Tuning {
        Tuning {
            hooks: writers::TestHooks {
                delay: std::time::Duration::from_millis(30),
                ..writers::TestHooks::default()
            },
            ..Tuning::default()
        }
    }

    fn extract_slowly(bytes: &[u8], root: &Path) -> Result<Extracted, ImageError> {
        extract_tuned(bytes, root, "test", None, &slow_writers())
    }

    #[test]
    fn a_symlink_replacing_a_directory_waits_for_the_files_being_written_into_it() {
        let (_tmp, root, outside) = sandbox();
        let mut t = TarBuilder::new();
        t.dir("d", 0o755);
        t.file("d/f", b"inside");
        t.file("d/passwd", b"pwned");
        // Were the directory removed before the writers are done, they would open d/f and
        // d/passwd through this symlink.
        t.symlink("d", outside.to_str().unwrap());
        extract_slowly(&t.finish(), &root).unwrap();
        assert!(fs::symlink_metadata(root.join("d"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_outside_untouched(&outside);
    }

    #[test]
    fn a_directory_replacing_a_file_being_written_waits_for_it() {
        let (_tmp, root, _) = sandbox();
        let mut t = TarBuilder::new();
        t.file("x", b"file first");
        t.dir("x", 0o750);
        t.file("x/y", b"then a file in the directory");
        extract_slowly(&t.finish(), &root).unwrap();
        let x = fs::symlink_metadata(root.join("x")).unwrap();
        assert!(x.is_dir());
        assert_eq!(x.mode() & 0o7777, 0o750);
        assert_eq!(
            fs::read(root.join("x/y")).unwrap(),
            b"then a file in the directory"
        );
    }

    #[test]
    fn an_entry_below_a_file_being_written_is_refused_as_without_writers() {
        let (_tmp, root, _) = sandbox();
        let mut t = TarBuilder::new();
        t.file("x", b"a file");
        t.file("x/y", b"cannot be below a file");
        let err = extract_slowly(&t.finish(), &root).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        assert_eq!(fs::read(root.join("x")).unwrap(), b"a file");
    }

    #[test]
    fn a_hard_link_to_a_file_written_just_before_links_the_finished_file() {
        let (_tmp, root, _) = sandbox();
        let mut t = TarBuilder::new();
        t.file_with("bin/tool", b"#!/bin/sh\n", 0o755, 1000, 1000, 1_600_000_000);
        t.hardlink("bin/alias", "bin/tool");
        extract_slowly(&t.finish(), &root).unwrap();
        let tool = fs::symlink_metadata(root.join("bin/tool")).unwrap();
        let alias = fs::symlink_metadata(root.join("bin/alias")).unwrap();
        assert_eq!(alias.ino(), tool.ino());
        assert_eq!(fs::read(root.join("bin/alias")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(alias.mode() & 0o7777, 0o755);
        assert_eq!(alias.mtime(), 1_600_000_000);
    }

    #[test]
    fn the_same_file_twice_in_a_layer_ends_as_the_second() {
        let (_tmp, root, _) = sandbox();
        let mut t = TarBuilder::new();
        t.file_with("etc/motd", b"first\n", 0o600, 0, 0, 1_500_000_000);
        t.file_with("etc/motd", b"second, longer\n", 0o644, 0, 0, 1_600_000_000);
        extract_slowly(&t.finish(), &root).unwrap();
        assert_eq!(
            fs::read(root.join("etc/motd")).unwrap(),
            b"second, longer\n"
        );
        let motd = fs::symlink_metadata(root.join("etc/motd")).unwrap();
        assert_eq!(motd.mode() & 0o7777, 0o644);
        assert_eq!(motd.mtime(), 1_600_000_000);
    }

    #[test]
    fn whiteouts_and_opaque_markers_wait_for_the_files_they_hide() {
        let (_tmp, root, _) = sandbox();
        let mut t = TarBuilder::new();
        t.file("etc/motd", b"hidden");
        t.file("etc/.wh.motd", b"");
        t.file("var/cache/a", b"a");
        t.file("var/cache/.wh..wh..opq", b"");
        extract_slowly(&t.finish(), &root).unwrap();
        let motd = fs::symlink_metadata(root.join("etc/motd")).unwrap();
        assert!(motd.file_type().is_char_device());
        assert_eq!(
            get_xattr(&root.join("var/cache"), OVERLAY_OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(fs::read(root.join("var/cache/a")).unwrap(), b"a");
    }

    #[test]
    fn a_writers_failure_names_the_file_and_fails_the_extraction() {
        let (_tmp, root, _) = sandbox();
        let mut t = TarBuilder::new();
        for i in 0..50 {
            t.file(&format!("lib/before{i}"), b"x");
        }
        t.file("lib/broken", b"cannot be written");
        for i in 0..50 {
            t.file(&format!("lib/after{i}"), b"x");
        }
        let tuning = Tuning {
            hooks: writers::TestHooks {
                fail_on: Some("broken"),
                ..writers::TestHooks::default()
            },
            ..Tuning::default()
        };
        let err = extract_tuned(&t.finish()[..], &root, "test", None, &tuning).unwrap_err();
        match err {
            ImageError::Io { path, source } => {
                assert_eq!(path, root.join("lib/broken"));
                assert!(source.to_string().contains("injected failure"), "{source}");
            }
            other => panic!("unexpected error: {other}"),
        }
    }

    #[test]
    fn a_writer_that_panics_fails_the_extraction_with_the_files_path() {
        let (_tmp, root, _) = sandbox();
        let mut t = TarBuilder::new();
        t.file("a", b"a");
        t.file("boom", b"b");
        t.file("c", b"c");
        let tuning = Tuning {
            hooks: writers::TestHooks {
                panic_on: Some("boom"),
                ..writers::TestHooks::default()
            },
            ..Tuning::default()
        };
        let err = extract_tuned(&t.finish()[..], &root, "test", None, &tuning).unwrap_err();
        assert!(
            matches!(&err, ImageError::Io { path, .. } if *path == root.join("boom")),
            "{err}"
        );
    }

    /// A stream that panics after `left` bytes, as a decompressor with a bug might.
    struct PanickingReader {
        bytes: Vec<u8>,
        at: usize,
        left: usize,
    }

    impl Read for PanickingReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            assert!(self.left > 0, "reader panics mid-stream");
            let n = buf.len().min(self.left).min(self.bytes.len() - self.at);
            buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            self.left -= n;
            Ok(n)
        }
    }

    #[test]
    fn a_panic_on_the_reading_thread_stops_the_writers_and_propagates() {
        let (_tmp, root, _) = sandbox();
        let mut t = TarBuilder::new();
        for i in 0..200 {
            t.file(&format!("f{i}"), &[b'x'; 700]);
        }
        let bytes = t.finish();
        let left = bytes.len() / 2;
        let reader = PanickingReader { bytes, at: 0, left };
        // Returning at all (no writer left waiting, none blocking the scope) is the point.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            extract_tuned(reader, &root, "test", None, &slow_writers())
        }));
        assert!(result.is_err());
    }

    #[test]
    fn any_budget_and_threshold_give_the_same_tree_diff_id_and_tar_split() {
        let mut t = TarBuilder::new();
        t.dir("usr", 0o755);
        for i in 0..40u32 {
            let len = (i as usize * 997) % 5000;
            let data: Vec<u8> = (0..len).map(|b| (b as u32 * 31 + i) as u8).collect();
            t.file_with(
                &format!("usr/lib/f{i}"),
                &data,
                0o640 + (i % 8),
                i.into(),
                0,
                1_600_000_000 + u64::from(i),
            );
        }
        t.symlink("usr/lib/link", "f1");
        t.hardlink("usr/lib/hard", "usr/lib/f2");
        let bytes = t.finish();
        let expected_id = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let tunings = [
            Tuning::default(),
            // Every file written by the reading thread.
            Tuning {
                pooled_up_to: 0,
                ..Tuning::default()
            },
            // A budget smaller than most files: one at a time.
            Tuning {
                writers: 3,
                budget: 100,
                ..Tuning::default()
            },
            Tuning {
                writers: 1,
                pooled_up_to: 2000,
                ..slow_writers()
            },
        ];
        for tuning in tunings {
            let (_tmp, root, _) = sandbox();
            let mut split = Vec::new();
            let out = extract_tuned(&bytes[..], &root, "test", Some(&mut split), &tuning).unwrap();
            assert_eq!(out.diff_id, expected_id, "{tuning:?}");
            let mut rebuilt = Vec::new();
            reassemble(&split[..], &root, &mut rebuilt).unwrap();
            assert!(rebuilt == bytes, "{tuning:?}: the tar does not rebuild");
            for i in 0..40u32 {
                let m = fs::symlink_metadata(root.join(format!("usr/lib/f{i}"))).unwrap();
                assert_eq!(m.mode() & 0o7777, 0o640 + (i % 8), "{tuning:?}");
                assert_eq!(m.mtime(), 1_600_000_000 + i64::from(i), "{tuning:?}");
                if nix::unistd::geteuid().is_root() {
                    assert_eq!(m.uid(), i, "{tuning:?}");
                }
            }
        }
    }

    #[test]
    fn parent_components_are_created_and_dot_prefixes_ignored() {
        let (_tmp, root, _) = sandbox();
        let mut t = TarBuilder::new();
        t.raw_file("./a/b/c.txt", b"x");
        extract(&t.finish()[..], &root, "test").unwrap();
        assert_eq!(fs::read(root.join("a/b/c.txt")).unwrap(), b"x");
    }
}
