//! Writing a directory back out as a layer tar: the inverse of [`super::layer::extract`].
//!
//! Used for a container's upper dir (`docker commit`) and for layers that must be sent
//! somewhere (push, save). The output is deterministic, so the same tree always hashes to the
//! same diff id: entries in byte order of their names, parents before children, numeric owners
//! only (no user names), mtimes in whole seconds, no access/change times, xattrs in name order.
//!
//! Overlayfs' own markers go back to the AUFS form a layer tar carries: a 0:0 character device
//! `NAME` becomes an empty regular file `.wh.NAME` (mode 0600, as moby's overlay converter
//! writes it), and a directory with `trusted.overlay.opaque=y` gets an empty `.wh..wh..opq`
//! file right after its own entry. `trusted.overlay.*` xattrs are never written. Files with
//! several links in the tree are written once, the later names as hard links to the first.
//! Sockets are skipped, as Docker does.

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use super::ImageError;

/// Prefix of AUFS whiteout file names.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the AUFS marker that makes its directory opaque.
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Prefix of the xattrs overlayfs keeps for itself.
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
/// The xattr overlayfs sets on an opaque directory.
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The xattr of a directory renamed from a lower layer (overlayfs `redirect_dir=on`).
const OVERLAY_REDIRECT_XATTR: &str = "trusted.overlay.redirect";
/// The xattr of a file whose data is still in a lower layer (overlayfs `metacopy=on`).
const OVERLAY_METACOPY_XATTR: &str = "trusted.overlay.metacopy";

/// `sha256:` + hex of the tar of an empty layer (two zero blocks): Docker's
/// `layer.DigestSHA256EmptyTar`, the diff id of a commit that changed nothing.
pub const EMPTY_LAYER_DIFF_ID: &str =
    "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

/// What writing a layer tar produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedLayer {
    /// `sha256:<hex>` of the tar stream written: the layer's diff id.
    pub diff_id: String,
    /// Bytes of the tar stream written.
    pub size: u64,
}

/// A writer that hashes and counts what goes through it (a layer tar's diff id, or a
/// compressed blob's digest when put after the compressor).
#[derive(Debug)]
pub struct DigestWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> DigestWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> DigestWriter<W> {
        DigestWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// `sha256:<hex>` of everything written so far, the byte count, and the inner writer.
    pub fn finish(self) -> (String, u64, W) {
        (
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.written,
            self.inner,
        )
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the tree under `diff_dir` (an overlayfs upper or lower dir) to `out` as an
/// uncompressed layer tar, and returns its diff id and size. The root directory itself is not
/// an entry. Nothing is followed: symlinks are written as symlinks.
pub fn write_layer_tar(diff_dir: &Path, out: impl Write) -> Result<ExportedLayer, ImageError> {
    let mut builder = tar::Builder::new(DigestWriter::new(out));
    let mut exporter = Exporter {
        root: diff_dir,
        links: HashMap::new(),
    };
    let out_err = |source| ImageError::Io {
        path: diff_dir.to_path_buf(),
        source,
    };
    let root_meta = fs::symlink_metadata(diff_dir).map_err(out_err)?;
    exporter.walk(&mut builder, Path::new(""), diff_dir, &root_meta)?;
    builder.finish().map_err(out_err)?;
    let writer = builder.into_inner().map_err(out_err)?;
    let (diff_id, size, mut inner) = writer.finish();
    inner.flush().map_err(out_err)?;
    Ok(ExportedLayer { diff_id, size })
}

struct Exporter<'a> {
    root: &'a Path,
    /// (dev, ino) of multiply-linked files already written → their name in the tar.
    links: HashMap<(u64, u64), PathBuf>,
}

impl Exporter<'_> {
    fn walk<W: Write>(
        &mut self,
        tar: &mut tar::Builder<W>,
        rel: &Path,
        open_path: &Path,
        dir_meta: &fs::Metadata,
    ) -> Result<(), ImageError> {
        let dir = self.root.join(rel);
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageError::Io { path, source }
        };
        // Listed through a descriptor of the very directory checked: a running container
        // may have swapped it for a symlink to elsewhere.
        let dir_file =
            open_checked(open_path, dir_meta, libc::O_DIRECTORY).map_err(io_err(&dir))?;
        // Its entries are reached through this descriptor (`/proc/self/fd/N/NAME`), never by
        // their path again, so no directory above them can be swapped for a symlink either.
        let at_dir = PathBuf::from(format!("/proc/self/fd/{}", dir_file.as_raw_fd()));
        let listed = dir_file.try_clone().map_err(io_err(&dir))?;
        let mut listing =
            nix::dir::Dir::from_fd(listed.into()).map_err(|e| io_err(&dir)(io::Error::from(e)))?;
        let mut names: Vec<OsString> = Vec::new();
        for entry in listing.iter() {
            let entry = entry.map_err(|e| io_err(&dir)(io::Error::from(e)))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name.to_vec()));
            }
        }
        // Byte order, as Go's filepath.Walk visits them: the same tree gives the same tar.
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let rel_path = rel.join(&name);
            let path = self.root.join(&rel_path);
            let at = at_dir.join(&name);
            let meta = fs::symlink_metadata(&at).map_err(io_err(&path))?;
            let kind = meta.file_type();
            if kind.is_socket() {
                continue;
            }
            if kind.is_char_device() && meta.rdev() == 0 {
                let mut wh_name = OsString::from(WHITEOUT_PREFIX);
                wh_name.push(&name);
                let mut h = header(&meta, EntryType::Regular);
                h.set_mode(0o600);
                append(tar, &mut h, &rel.join(wh_name), &[], io::empty()).map_err(io_err(&path))?;
                continue;
            }
            let xattrs = list_xattrs(&at).map_err(io_err(&path))?;
            // A renamed lower dir (redirect_dir) or a metadata-only copy-up (metacopy) keeps
            // its content below the upper dir: writing the upper dir alone would lose it.
            if let Some((name, _)) = xattrs.iter().find(|(k, _)| {
                k.as_bytes() == OVERLAY_REDIRECT_XATTR.as_bytes()
                    || k.as_bytes() == OVERLAY_METACOPY_XATTR.as_bytes()
            }) {
                return Err(ImageError::InvalidLayer {
                    layer: self.root.display().to_string(),
                    reason: format!(
                        "{}: carries {} (overlayfs redirect_dir/metacopy), which a layer tar cannot express",
                        rel_path.display(),
                        name.to_string_lossy()
                    ),
                });
            }
            if kind.is_dir() {
                let mut h = header(&meta, EntryType::Directory);
                let opaque = xattrs
                    .iter()
                    .any(|(k, v)| k.as_bytes() == OVERLAY_OPAQUE_XATTR.as_bytes() && v == b"y");
                append(tar, &mut h, &rel_path, &xattrs, io::empty()).map_err(io_err(&path))?;
                if opaque {
                    let mut h = header(&meta, EntryType::Regular);
                    h.set_mode(meta.mode() & 0o777);
                    append(tar, &mut h, &rel_path.join(OPAQUE_MARKER), &[], io::empty())
                        .map_err(io_err(&path))?;
                }
                self.walk(tar, &rel_path, &at, &meta)?;
                continue;
            }
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.links.get(&key) {
                    let mut h = header(&meta, EntryType::Link);
                    append_link(tar, &mut h, &rel_path, &xattrs, first).map_err(io_err(&path))?;
                    continue;
                }
                self.links.insert(key, rel_path.clone());
            }
            if kind.is_symlink() {
                let target = fs::read_link(&at).map_err(io_err(&path))?;
                let mut h = header(&meta, EntryType::Symlink);
                append_link(tar, &mut h, &rel_path, &xattrs, &target).map_err(io_err(&path))?;
            } else if kind.is_file() {
                let file = open_checked(&at, &meta, 0).map_err(io_err(&path))?;
                let mut h = header(&meta, EntryType::Regular);
                h.set_size(meta.len());
                // A file that changes size under us would make a corrupt tar: take exactly
                // the size in the header, and fail if it shrank.
                let mut data = io::Read::take(file, meta.len());
                append(tar, &mut h, &rel_path, &xattrs, &mut data).map_err(io_err(&path))?;
            } else {
                let kind = if kind.is_char_device() {
                    EntryType::Char
                } else if kind.is_block_device() {
                    EntryType::Block
                } else {
                    EntryType::Fifo
                };
                let mut h = header(&meta, kind);
                if kind != EntryType::Fifo {
                    let rdev = meta.rdev();
                    h.set_device_major(libc::major(rdev))
                        .map_err(io_err(&path))?;
                    h.set_device_minor(libc::minor(rdev))
                        .map_err(io_err(&path))?;
                }
                append(tar, &mut h, &rel_path, &xattrs, io::empty()).map_err(io_err(&path))?;
            }
        }
        Ok(())
    }
}

/// A GNU header (binary numbers when owners or times overflow octal) with the entry's
/// metadata; the size is zero until the caller sets it.
fn header(meta: &fs::Metadata, kind: EntryType) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(u64::from(meta.uid()));
    h.set_gid(u64::from(meta.gid()));
    h.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    h.set_size(0);
    h
}

/// Writes a PAX extended header carrying `xattrs` (`SCHILY.xattr.NAME`), if there are any.
fn append_pax<W: Write>(
    tar: &mut tar::Builder<W>,
    xattrs: &[(OsString, Vec<u8>)],
) -> io::Result<()> {
    let mut records = Vec::new();
    for (name, value) in xattrs {
        if name.as_bytes().starts_with(OVERLAY_XATTR_PREFIX) {
            continue;
        }
        let mut body = b"SCHILY.xattr.".to_vec();
        body.extend_from_slice(name.as_bytes());
        body.push(b'=');
        body.extend_from_slice(value);
        body.push(b'\n');
        // "LEN key=value\n", LEN counting itself and the space.
        let mut len = body.len() + 2;
        while (len.to_string().len() + 1 + body.len()) != len {
            len = len.to_string().len() + 1 + body.len();
        }
        records.extend_from_slice(format!("{len} ").as_bytes());
        records.extend_from_slice(&body);
    }
    if records.is_empty() {
        return Ok(());
    }
    let mut h = Header::new_ustar();
    h.set_entry_type(EntryType::XHeader);
    h.set_mode(0o644);
    h.set_size(records.len() as u64);
    tar.append_data(&mut h, "PaxHeaders/xattrs", &records[..])
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    h: &mut Header,
    path: &Path,
    xattrs: &[(OsString, Vec<u8>)],
    data: impl io::Read,
) -> io::Result<()> {
    append_pax(tar, xattrs)?;
    tar.append_data(h, path, data)
}

fn append_link<W: Write>(
    tar: &mut tar::Builder<W>,
    h: &mut Header,
    path: &Path,
    xattrs: &[(OsString, Vec<u8>)],
    target: &Path,
) -> io::Result<()> {
    append_pax(tar, xattrs)?;
    tar.append_link(h, path, target)
}

/// Opens `path` for reading without following a symlink (nor blocking on a fifo), and only if
/// it is still the file `expected` described: a running container may swap an entry for a
/// symlink to a host file between the `lstat` and the open.
fn open_checked(path: &Path, expected: &fs::Metadata, flags: libc::c_int) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | flags)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.dev() != expected.dev() || meta.ino() != expected.ino() {
        return Err(io::Error::other(format!(
            "{} changed while it was being read",
            path.display()
        )));
    }
    Ok(file)
}

/// The xattrs of `path` (not following symlinks), sorted by name.
fn list_xattrs(path: &Path) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let names = xattr_call(|buf, len| {
        // SAFETY: `c_path` is a valid C string; `buf` is writable for `len` bytes (or null
        // with `len` 0, which asks for the size).
        unsafe { libc::llistxattr(c_path.as_ptr(), buf.cast(), len) }
    })?;
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let c_name = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad xattr name"))?;
        let value = match xattr_call(|buf, len| {
            // SAFETY: valid C strings; `buf` is writable for `len` bytes (or null with 0).
            unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), buf.cast(), len) }
        }) {
            Ok(v) => v,
            // Removed between list and get.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        out.push((OsString::from_vec(name.to_vec()), value));
    }
    out.sort();
    Ok(out)
}

/// Runs a size-query-then-fill xattr call, retrying if the value grew in between.
fn xattr_call(call: impl Fn(*mut u8, usize) -> libc::ssize_t) -> io::Result<Vec<u8>> {
    loop {
        let size = call(std::ptr::null_mut(), 0);
        let size = match usize::try_from(size) {
            Ok(s) => s,
            Err(_) => {
                let err = io::Error::last_os_error();
                // Filesystems without xattrs have none to list.
                if err.raw_os_error() == Some(libc::ENOTSUP) {
                    return Ok(Vec::new());
                }
                return Err(err);
            }
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        let n = call(buf.as_mut_ptr(), buf.len());
        match usize::try_from(n) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::ERANGE) {
                    return Err(err);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::layer::{extract, get_xattr};
    use crate::image::testutil::{TarBuilder, TempDir};
    use std::collections::BTreeMap;
    use std::io::Read;

    /// Entry name → (type, mode, uid, content) of a tar, for comparisons that ignore order.
    fn entries(tar_bytes: &[u8]) -> BTreeMap<String, (EntryType, u32, u64, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar_bytes);
        let mut out = BTreeMap::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let h = e.header().clone();
            let mut content = Vec::new();
            e.read_to_end(&mut content).unwrap();
            if let Some(link) = e.link_name_bytes() {
                content = link.into_owned();
            }
            out.insert(
                name,
                (h.entry_type(), h.mode().unwrap(), h.uid().unwrap(), content),
            );
        }
        out
    }

    #[test]
    fn whiteouts_round_trip_and_the_diff_id_is_stable() {
        let tmp = TempDir::new();
        let first = tmp.path().join("first");
        fs::create_dir(&first).unwrap();
        let mut t = TarBuilder::new();
        t.dir("etc", 0o755);
        t.file("etc/.wh.motd", b"");
        t.file_with("etc/passwd", b"root:x:0:0\n", 0o640, 0, 42, 1_650_000_000);
        t.hardlink("etc/passwd-link", "etc/passwd");
        t.symlink("etc/localtime", "/usr/share/zoneinfo/UTC");
        t.dir("var/cache", 0o700);
        t.file("var/cache/.wh..wh..opq", b"");
        t.file("var/cache/new", b"fresh");
        t.fifo("run-pipe");
        extract(&t.finish()[..], &first, "orig").unwrap();

        let mut exported = Vec::new();
        let out = write_layer_tar(&first, &mut exported).unwrap();
        assert_eq!(
            out.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&exported)))
        );
        assert_eq!(out.size, exported.len() as u64);

        let seen = entries(&exported);
        assert_eq!(seen["etc/.wh.motd"].0, EntryType::Regular);
        assert_eq!(seen["etc/.wh.motd"].1, 0o600);
        assert!(!seen.contains_key("etc/motd"));
        assert!(seen.contains_key("var/cache/.wh..wh..opq"));
        assert_eq!(seen["etc/passwd"].3, b"root:x:0:0\n");
        assert_eq!(seen["etc/passwd"].1, 0o640);
        assert_eq!(seen["etc/passwd-link"].0, EntryType::Link);
        assert_eq!(seen["etc/passwd-link"].3, b"etc/passwd");
        assert_eq!(seen["etc/localtime"].3, b"/usr/share/zoneinfo/UTC");
        assert_eq!(seen["run-pipe"].0, EntryType::Fifo);

        // Extracting the export gives the same tree: exporting it again gives the same bytes,
        // and the extractor computes the exporter's diff id.
        let second = tmp.path().join("second");
        fs::create_dir(&second).unwrap();
        let extracted = extract(&exported[..], &second, "export").unwrap();
        assert_eq!(extracted.diff_id, out.diff_id);
        assert_eq!(
            get_xattr(&second.join("var/cache"), OVERLAY_OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..])
        );
        let mut again = Vec::new();
        let out2 = write_layer_tar(&second, &mut again).unwrap();
        assert_eq!(out2.diff_id, out.diff_id);
        assert_eq!(again, exported);
    }

    #[test]
    fn user_xattrs_are_kept_and_overlay_ones_dropped() {
        let tmp = TempDir::new();
        let dir = tmp.path().join("d");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("f"), b"x").unwrap();
        let path = CString::new(dir.join("f").as_os_str().as_bytes()).unwrap();
        for (name, value) in [
            ("user.color", &b"blue"[..]),
            ("trusted.overlay.origin", b"o"),
        ] {
            let name = CString::new(name).unwrap();
            // SAFETY: valid C strings and a live slice.
            let rc = unsafe {
                libc::lsetxattr(
                    path.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            };
            assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        }
        let mut exported = Vec::new();
        write_layer_tar(&dir, &mut exported).unwrap();
        let mut archive = tar::Archive::new(&exported[..]);
        let mut found = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            if let Some(pax) = e.pax_extensions().unwrap() {
                for ext in pax {
                    let ext = ext.unwrap();
                    found.push((ext.key().unwrap().to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
        assert_eq!(
            found,
            vec![("SCHILY.xattr.user.color".to_string(), b"blue".to_vec())]
        );
    }

    #[test]
    fn a_redirected_directory_is_refused_rather_than_written_empty() {
        let tmp = TempDir::new();
        let dir = tmp.path().join("upper");
        fs::create_dir_all(dir.join("moved")).unwrap();
        let path = CString::new(dir.join("moved").as_os_str().as_bytes()).unwrap();
        let name = CString::new(OVERLAY_REDIRECT_XATTR).unwrap();
        // SAFETY: valid C strings and a live slice.
        let rc = unsafe {
            libc::lsetxattr(path.as_ptr(), name.as_ptr(), b"/orig".as_ptr().cast(), 5, 0)
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        let err = write_layer_tar(&dir, io::sink()).unwrap_err();
        assert!(err.to_string().contains("invalid layer"), "{err}");
    }

    #[test]
    fn an_entry_swapped_for_a_symlink_is_not_followed() {
        let tmp = TempDir::new();
        let secret = tmp.path().join("host-secret");
        fs::write(&secret, b"engine host file").unwrap();
        let entry = tmp.path().join("entry");
        fs::write(&entry, b"container file").unwrap();
        let meta = fs::symlink_metadata(&entry).unwrap();
        // The container replaces the file it showed by a symlink to a host file.
        fs::remove_file(&entry).unwrap();
        std::os::unix::fs::symlink(&secret, &entry).unwrap();
        let err = open_checked(&entry, &meta, 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        // Or by another file of the same name (the first kept alive elsewhere, so that its
        // inode number is not reused): the open is refused too.
        let other = tmp.path().join("other");
        fs::write(&other, b"container file").unwrap();
        let other_meta = fs::symlink_metadata(&other).unwrap();
        let kept = tmp.path().join("kept");
        fs::hard_link(&other, &kept).unwrap();
        fs::remove_file(&entry).unwrap();
        fs::write(&entry, b"other").unwrap();
        assert!(open_checked(&kept, &other_meta, 0).is_ok());
        let meta = other_meta;
        assert!(open_checked(&entry, &meta, 0).is_err());
        // A directory swapped for a symlink to a host directory is not listed.
        let dir = tmp.path().join("dir");
        fs::create_dir(&dir).unwrap();
        let dir_meta = fs::symlink_metadata(&dir).unwrap();
        fs::remove_dir(&dir).unwrap();
        std::os::unix::fs::symlink(tmp.path(), &dir).unwrap();
        assert!(open_checked(&dir, &dir_meta, libc::O_DIRECTORY).is_err());
    }

    #[test]
    fn an_empty_tree_is_docker_empty_layer() {
        let tmp = TempDir::new();
        let out = write_layer_tar(tmp.path(), io::sink()).unwrap();
        assert_eq!(out.diff_id, EMPTY_LAYER_DIFF_ID);
        assert_eq!(out.size, 1024);
    }
}
