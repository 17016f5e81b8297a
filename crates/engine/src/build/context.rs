//! The build context: the request body or a downloaded archive (a tar, plain or compressed
//! with gzip, bzip2, xz or zstd) unpacked into a private directory under `<data-root>/tmp/`,
//! with the image store's safe extractor (no absolute paths, no `..`, no link leading out), or
//! a git checkout; then filtered by the context's `.dockerignore` (the docker CLI filters
//! already; other clients may not), and the Dockerfile found in it.

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use super::dockerignore::Matcher;
use super::{io_err, BuildError};

/// An unpacked context; the directory it owns is deleted on drop.
#[derive(Debug)]
pub struct Context {
    root: PathBuf,
    /// What to delete on drop: the root, or the git checkout holding it.
    owned: Option<PathBuf>,
}

impl Drop for Context {
    fn drop(&mut self) {
        if let Some(owned) = &self.owned {
            if let Err(e) = fs::remove_dir_all(owned) {
                tracing::warn!(path = %owned.display(), error = %e, "cannot remove a build context");
            }
        }
    }
}

fn invalid(reason: impl Into<String>) -> BuildError {
    BuildError::Invalid {
        reason: reason.into(),
    }
}

impl Context {
    /// Unpacks `input` into a new directory `dir` (which must not exist yet).
    pub fn unpack(input: impl Read, dir: &Path) -> Result<Context, BuildError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let context = Context::owning(dir.to_path_buf(), dir.to_path_buf());
        let mut reader = BufReader::new(input);
        let head = reader.fill_buf().map_err(io_err(dir))?.to_vec();
        // Moby's DetectCompression: the format is told by its magic bytes, never by a name.
        let stream: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::bufread::MultiGzDecoder::new(reader))
        } else if head.starts_with(b"BZh") {
            Box::new(bzip2::bufread::MultiBzDecoder::new(reader))
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Box::new(lzma_rust2::XzReader::new(reader, true))
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            let decoder = ruzstd::decoding::StreamingDecoder::new(reader)
                .map_err(|e| invalid(format!("invalid build context: zstd: {e}")))?;
            Box::new(decoder)
        } else {
            Box::new(reader)
        };
        if !head.is_empty() {
            let stream = ZeroTail {
                inner: stream,
                read: 0,
                tail: None,
            };
            crate::image::layer::extract_with_split(stream, dir, "build context", None)
                .map_err(|e| invalid(format!("invalid build context: {}", chain(&e))))?;
        }
        Ok(context)
    }

    /// A context rooted at `root` inside the directory `owned`, which goes on drop.
    pub fn owning(owned: PathBuf, root: PathBuf) -> Context {
        Context {
            root,
            owned: Some(owned),
        }
    }

    /// The same owned directory with `root` (inside it) as the context's root.
    pub fn rooted_at(mut self, root: PathBuf) -> Context {
        self.root = root;
        self
    }

    /// A view of the directory `root` as a context, to resolve paths in it; nothing is
    /// deleted on drop.
    pub fn scope(root: &Path) -> Context {
        Context {
            root: root.to_path_buf(),
            owned: None,
        }
    }

    /// The context's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Removes what the context's `.dockerignore` excludes; call it after reading the
    /// Dockerfile, which goes too when excluded (as the `.dockerignore` itself).
    pub fn apply_dockerignore(&self, dockerfile: &str) -> Result<Option<Matcher>, BuildError> {
        let path = self.root.join(".dockerignore");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let matcher = Matcher::parse(&text)?;
        prune(&self.root, "", &matcher, dockerfile)?;
        // Read by now; like moby's removeDockerfile, they leave the context when excluded.
        for name in [dockerfile, ".dockerignore"] {
            if matcher.excludes(name) {
                if let Some(rel) = relative(name) {
                    // Resolved inside the context: a symlinked directory on the way (git
                    // checkouts keep links that lead out) must not make this delete a file
                    // outside it.
                    let path = self.resolve(&rel)?;
                    if path.starts_with(&self.root)
                        && fs::symlink_metadata(&path).is_ok_and(|m| m.is_file())
                    {
                        fs::remove_file(&path).map_err(io_err(&path))?;
                    }
                }
            }
        }
        Ok(Some(matcher))
    }

    /// Reads the Dockerfile: `name` relative to the context (moby also tries `dockerfile` when
    /// the default `Dockerfile` is missing).
    pub fn read_dockerfile(&self, name: &str) -> Result<String, BuildError> {
        let requested = if name.is_empty() { "Dockerfile" } else { name };
        let rel = relative(requested).ok_or_else(|| {
            invalid(format!(
                "Cannot locate specified Dockerfile: {requested} (it must be inside the build context)"
            ))
        })?;
        let mut candidates = vec![rel.clone()];
        if name.is_empty() || name == "Dockerfile" {
            candidates.push(PathBuf::from("dockerfile"));
        }
        for candidate in candidates {
            let path = self.resolve(&candidate)?;
            match fs::read(&path) {
                Ok(bytes) => {
                    return String::from_utf8(bytes)
                        .map_err(|_| invalid(format!("{requested} is not valid UTF-8")))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Err(invalid(format!(
            "Cannot locate specified Dockerfile: {requested}"
        )))
    }

    /// A context path with its symlinks followed inside the context, as moby's
    /// FollowSymlinkInScope: an absolute target starts again at the context's root and `..`
    /// stops there, so no link leads out; a loop ends with an error after 40 links.
    pub fn resolve(&self, rel: &Path) -> Result<PathBuf, BuildError> {
        let mut pending: Vec<OsString> = Vec::new();
        push_components(&mut pending, rel);
        let mut resolved: Vec<OsString> = Vec::new();
        let mut links = 0;
        while let Some(part) = pending.pop() {
            if part == ".." {
                resolved.pop();
                continue;
            }
            let next: PathBuf = std::iter::once(self.root.as_os_str())
                .chain(resolved.iter().map(OsString::as_os_str))
                .chain(std::iter::once(part.as_os_str()))
                .collect();
            match fs::symlink_metadata(&next) {
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(invalid(format!(
                            "too many levels of symbolic links: {}",
                            rel.display()
                        )));
                    }
                    let target = fs::read_link(&next).map_err(io_err(&next))?;
                    if target.is_absolute() {
                        resolved.clear();
                    }
                    push_components(&mut pending, &target);
                }
                _ => resolved.push(part),
            }
        }
        Ok(std::iter::once(self.root.as_os_str())
            .chain(resolved.iter().map(OsString::as_os_str))
            .collect())
    }
}

/// The most symlinks one context path may go through (Linux's own limit, ELOOP beyond).
const MAX_LINKS: usize = 40;

/// Pushes `path`'s names and `..`s onto a stack whose top is the first one to visit.
fn push_components(stack: &mut Vec<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    stack.extend(parts.into_iter().rev());
}

/// Ends a tar stream that stops right after an entry's data with the padding and the two
/// zero blocks it lacks. The docker CLI sends such a stream with `-f -` (its tar rewriter
/// closes the pipe before the tar writer), and Go's tar reader, which dockerd uses, takes an
/// end of stream at an entry's padding as the end of the archive.
struct ZeroTail<R> {
    inner: R,
    read: u64,
    /// Zero bytes still to give once `inner` ended.
    tail: Option<u64>,
}

impl<R: Read> Read for ZeroTail<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.tail.is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.read += n as u64;
                return Ok(n);
            }
            self.tail = Some((512 - self.read % 512) % 512 + 1024);
        }
        let left = self.tail.unwrap_or(0);
        let n = (buf.len() as u64).min(left) as usize;
        buf[..n].fill(0);
        self.tail = Some(left - n as u64);
        Ok(n)
    }
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// `path` cleaned to a relative path inside the context; `None` when it climbs out.
pub fn relative(path: &str) -> Option<PathBuf> {
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            p => out.push(p),
        }
    }
    Some(out.iter().collect())
}

/// Deletes excluded entries under `dir` (context path `prefix`); a directory goes when it is
/// excluded and nothing in it was kept by an exception.
fn prune(dir: &Path, prefix: &str, m: &Matcher, dockerfile: &str) -> Result<bool, BuildError> {
    let mut kept_any = false;
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        let is_dir = entry.file_type().map_err(io_err(&path))?.is_dir();
        let excluded = m.excludes(&rel) && rel != dockerfile && rel != ".dockerignore";
        if is_dir {
            if excluded && !m.has_exceptions() {
                fs::remove_dir_all(&path).map_err(io_err(&path))?;
                continue;
            }
            let kept_inside = prune(&path, &rel, m, dockerfile)?;
            if excluded && !kept_inside {
                fs::remove_dir_all(&path).map_err(io_err(&path))?;
            } else {
                kept_any = true;
            }
        } else if excluded {
            fs::remove_file(&path).map_err(io_err(&path))?;
        } else {
            kept_any = true;
        }
    }
    Ok(kept_any)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            b.append_data(&mut h, name, *data).expect("append");
        }
        b.into_inner().expect("tar")
    }

    #[test]
    fn an_excluded_dockerfile_behind_a_link_out_is_never_deleted_outside() {
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("Dockerfile"), "FROM x\n").expect("write");
        let root = tempfile::tempdir().expect("tempdir");
        // A git checkout keeps a link that leads out of the context.
        std::os::unix::fs::symlink(outside.path(), root.path().join("d")).expect("symlink");
        std::fs::write(root.path().join(".dockerignore"), "d/Dockerfile\n").expect("write");
        let context = Context::scope(root.path());
        context.apply_dockerignore("d/Dockerfile").expect("apply");
        assert!(
            outside.path().join("Dockerfile").exists(),
            "a file outside the context was deleted"
        );
    }

    #[test]
    fn unpacks_gzip_filters_and_finds_the_dockerfile() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let raw = tar_of(&[
            ("Dockerfile", b"FROM x\n"),
            (".dockerignore", b"*.log\nsub\n!sub/keep\n"),
            ("a.log", b"x"),
            ("sub/drop", b"x"),
            ("sub/keep", b"x"),
            ("src/main", b"x"),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let ctx = Context::unpack(&gz[..], &tmp.path().join("ctx")).expect("unpacks");
        ctx.apply_dockerignore("Dockerfile").expect("filters");
        let root = ctx.root().to_path_buf();
        assert!(!root.join("a.log").exists());
        assert!(!root.join("sub/drop").exists());
        assert!(root.join("sub/keep").exists());
        assert!(root.join("src/main").exists());
        assert_eq!(ctx.read_dockerfile("").expect("found"), "FROM x\n");
        let err = ctx.read_dockerfile("nope").unwrap_err().to_string();
        assert_eq!(err, "Cannot locate specified Dockerfile: nope");
        drop(ctx);
        assert!(!root.exists());
    }

    #[test]
    fn an_excluded_dockerfile_and_dockerignore_leave_the_context_after_reading() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let raw = tar_of(&[
            ("build.df", b"FROM x\n"),
            (".dockerignore", b"*.df\n.dockerignore\n"),
            ("kept", b"x"),
        ]);
        let ctx = Context::unpack(&raw[..], &tmp.path().join("ctx")).expect("unpacks");
        assert_eq!(ctx.read_dockerfile("build.df").expect("read"), "FROM x\n");
        ctx.apply_dockerignore("build.df").expect("filters");
        assert!(!ctx.root().join("build.df").exists());
        assert!(!ctx.root().join(".dockerignore").exists());
        assert!(ctx.root().join("kept").exists());
    }

    #[test]
    fn a_tar_cut_after_its_last_entrys_data_is_complete() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut data = tar_of(&[("Dockerfile", b"FROM x\n"), (".dockerignore", b"abc")]);
        // What the CLI sends with `-f -`: no padding after the last data, no end blocks.
        data.truncate(512 * 3 + 3);
        let ctx = Context::unpack(&data[..], &tmp.path().join("ctx")).expect("unpacks");
        assert_eq!(
            fs::read(ctx.root().join(".dockerignore")).expect("read"),
            b"abc"
        );
    }

    #[test]
    fn refuses_escapes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        // Written raw: the tar crate's own setters refuse `..`.
        h.as_old_mut().name[..7].copy_from_slice(b"../evil");
        h.set_cksum();
        b.append(&h, &b"x"[..]).expect("append");
        let data = b.into_inner().expect("tar");
        let err = Context::unpack(&data[..], &tmp.path().join("ctx")).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid build context"),
            "{err}"
        );
        assert!(!tmp.path().join("evil").exists());
        assert!(relative("../x").is_none());
        assert_eq!(relative("./a/../b"), Some(PathBuf::from("b")));
    }
}
