//! What the builder fetches from elsewhere: remote contexts (`remote=` of `POST /build`: a git
//! repository cloned with the `git` binary, a tar archive or a plain Dockerfile over http(s))
//! and `ADD <url>` sources, with moby's rules (`builder/remotecontext`) and texts.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tokio::io::AsyncWriteExt;

use super::{io_err, BuildError};

/// What a `remote=` value names, as moby's `remotecontext.Detect` tells them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// A git repository: `git://…`, `git@…`, `github.com/…`, or an http(s) URL whose path
    /// ends in `.git` (`#ref:subdir` may follow).
    Git(String),
    /// Any other http(s) URL: a tar archive or a Dockerfile.
    Url(String),
}

impl Remote {
    /// Classifies `remote`; anything else is moby's error.
    pub fn parse(remote: &str) -> Result<Remote, BuildError> {
        // The BuildKit session a v1 client may still name (moby's `ClientSessionRemote`).
        if remote == "client-session" {
            return Err(invalid(
                "experimental session with v1 builder is no longer supported, use builder \
                 version v2 (BuildKit) instead"
                    .to_string(),
            ));
        }
        if is_git_url(remote) {
            Ok(Remote::Git(remote.to_string()))
        } else if is_url(remote) {
            Ok(Remote::Url(remote.to_string()))
        } else {
            Err(BuildError::UnrecognizedRemote {
                remote: remote.to_string(),
            })
        }
    }
}

fn invalid(reason: String) -> BuildError {
    BuildError::Invalid { reason }
}

fn fetch(url: &str, reason: String, missing: bool) -> BuildError {
    BuildError::Fetch {
        url: url.to_string(),
        reason,
        missing,
    }
}

/// Moby's `urlutil.IsURL`.
pub fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// Moby's `urlutil.IsGitURL`.
fn is_git_url(s: &str) -> bool {
    let path = s.split_once('#').map_or(s, |(p, _)| p);
    (is_url(s) && path.ends_with(".git"))
        || ["git://", "github.com/", "git@"]
            .iter()
            .any(|p| s.starts_with(p))
}

/// A file fetched over http(s).
#[derive(Debug)]
pub struct Download {
    /// The response's `Content-Type`, as sent (may be empty).
    pub content_type: String,
    /// The response's `Last-Modified`, when it has a valid one.
    pub last_modified: Option<SystemTime>,
}

/// An answered GET whose body is still to be read.
#[derive(Debug)]
pub struct Fetching {
    url: String,
    response: reqwest::Response,
    /// What the headers say of the body.
    pub download: Download,
    /// The `filename` of a `Content-Disposition` header, as moby's `mime.ParseMediaType`
    /// reads it.
    pub disposition_name: Option<String>,
    /// The body's length when the server gave one.
    pub length: Option<u64>,
}

/// GETs `url`, following redirects; a 4xx or 5xx answer is moby's `failed to GET URL with
/// status …: BODY`.
pub async fn get(url: &str) -> Result<Fetching, BuildError> {
    let client = crate::image::registry::http_client(false).map_err(|e| invalid(e.to_string()))?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| fetch(url, format!("Get \"{url}\": {}", chain(&e)), false))?;
    let status = response.status();
    if status.as_u16() >= 400 {
        let body = response.text().await.unwrap_or_default();
        return Err(fetch(
            url,
            format!("failed to GET {url} with status {status}: {}", body.trim()),
            status == reqwest::StatusCode::NOT_FOUND,
        ));
    }
    let header = |name: reqwest::header::HeaderName| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header(reqwest::header::CONTENT_TYPE).unwrap_or_default();
    let last_modified = header(reqwest::header::LAST_MODIFIED)
        .and_then(|v| chrono::DateTime::parse_from_rfc2822(&v).ok())
        .map(SystemTime::from);
    let disposition_name =
        header(reqwest::header::CONTENT_DISPOSITION).and_then(|v| disposition_filename(&v));
    Ok(Fetching {
        url: url.to_string(),
        length: response.content_length(),
        response,
        download: Download {
            content_type,
            last_modified,
        },
        disposition_name,
    })
}

/// How often a download reports its progress, as moby's `progress.Reader`: every 1 % of a
/// known size or 512 KiB, whichever is less, at most every 100 ms, and always at the end.
struct Reporter<'a> {
    total: Option<u64>,
    every: u64,
    last_bytes: u64,
    last_sent: Option<std::time::Instant>,
    report: &'a mut (dyn FnMut(u64, Option<u64>, bool) + Send),
}

impl Reporter<'_> {
    fn advance(&mut self, current: u64, done: bool) {
        if current - self.last_bytes <= self.every && !done {
            return;
        }
        self.last_bytes = current;
        let due = self
            .last_sent
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(100));
        if done || Some(current) == self.total || due {
            self.last_sent = Some(std::time::Instant::now());
            (self.report)(current, self.total, done);
        }
    }
}

/// Resolves when `cancel` turns true; never when it is absent or its sender is gone (a
/// dropped sender is no cancellation).
pub(crate) async fn cancelled(cancel: Option<&mut tokio::sync::watch::Receiver<bool>>) {
    if let Some(c) = cancel {
        if c.wait_for(|c| *c).await.is_ok() {
            return;
        }
    }
    std::future::pending::<()>().await;
}

impl Fetching {
    /// Writes the body into the new file `dest`, calling `report(bytes so far, total, finished)` as
    /// moby's progress reader would report it. When `cancel` turns true (the build's client
    /// went away) the download stops, `dest` is removed and the error is `Cancelled`.
    pub async fn save(
        mut self,
        dest: &Path,
        report: &mut (dyn FnMut(u64, Option<u64>, bool) + Send),
        mut cancel: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Result<Download, BuildError> {
        let url = self.url;
        let fail = |e: reqwest::Error| fetch(&url, format!("Get \"{url}\": {}", chain(&e)), false);
        let mut reporter = Reporter {
            total: self.length,
            every: self
                .length
                .map_or(512 * 1024, |n| (n / 100).min(512 * 1024)),
            last_bytes: 0,
            last_sent: None,
            report,
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(io_err(dest))?;
        let mut current = 0u64;
        loop {
            let chunk = tokio::select! {
                chunk = self.response.chunk() => chunk.map_err(fail)?,
                () = cancelled(cancel.as_mut()) => {
                    drop(file);
                    if let Err(e) = tokio::fs::remove_file(dest).await {
                        tracing::warn!(path = %dest.display(), error = %e, "cannot remove a cancelled download");
                    }
                    return Err(BuildError::Cancelled);
                }
            };
            let Some(chunk) = chunk else { break };
            file.write_all(&chunk).await.map_err(io_err(dest))?;
            current += chunk.len() as u64;
            reporter.advance(current, false);
        }
        file.flush().await.map_err(io_err(dest))?;
        reporter.advance(current, true);
        Ok(self.download)
    }
}

/// GETs `url` into the new file `dest` (no progress shown).
pub async fn download(url: &str, dest: &Path) -> Result<Download, BuildError> {
    get(url).await?.save(dest, &mut |_, _, _| {}, None).await
}

/// The name of an `ADD` URL's file, as moby's `getFilenameForDownload`: the last element
/// of the URL's percent-decoded path, else a `Content-Disposition` filename; `None` when
/// neither names one.
pub fn download_name(url: &str, disposition_name: Option<&str>) -> Option<std::ffi::OsString> {
    use std::os::unix::ffi::OsStringExt;
    let path = reqwest::Url::parse(url)
        .map(|u| percent_encoding::percent_decode_str(u.path()).collect::<Vec<u8>>())
        .unwrap_or_default();
    let base = |p: &[u8]| -> Option<Vec<u8>> {
        if p.is_empty() || p.ends_with(b"/") {
            return None;
        }
        p.rsplit(|b| *b == b'/')
            .next()
            .filter(|n| !n.is_empty())
            .map(<[u8]>::to_vec)
    };
    base(&path)
        .or_else(|| disposition_name.and_then(|n| base(n.as_bytes())))
        .map(std::ffi::OsString::from_vec)
}

/// The `filename` parameter of a `Content-Disposition` value, as moby reads it through Go's
/// `mime.ParseMediaType`: a malformed value names nothing.
fn disposition_filename(value: &str) -> Option<String> {
    media_params(value)?
        .remove("filename")
        .filter(|p| !p.is_empty())
}

/// Go's `mime` tspecials.
fn is_tspecial(c: char) -> bool {
    "()<>@,;:\\\"/[]?=".contains(c)
}

fn is_token_char(c: char) -> bool {
    c > ' ' && c < '\x7f' && !is_tspecial(c)
}

/// The leading token of `s` and what follows it.
fn token(s: &str) -> (&str, &str) {
    let end = s.find(|c| !is_token_char(c)).unwrap_or(s.len());
    s.split_at(end)
}

/// A token or a quoted-string (a backslash escapes a tspecial; before anything else it is
/// kept, as Go does for MSIE's unescaped paths); `None` when malformed.
fn param_value(s: &str) -> Option<(String, &str)> {
    let Some(quoted) = s.strip_prefix('"') else {
        let (t, rest) = token(s);
        return (!t.is_empty()).then(|| (t.to_string(), rest));
    };
    let mut out = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &quoted[i + 1..])),
            '\\' if quoted[i + 1..].starts_with(is_tspecial) => {
                if let Some((_, escaped)) = chars.next() {
                    out.push(escaped);
                }
            }
            '\r' | '\n' => return None,
            c => out.push(c),
        }
    }
    None
}

/// RFC 2231 percent-decoding, strict as Go's `percentHexUnescape`.
fn percent_unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let ok = b.iter().enumerate().all(|(i, c)| {
        *c != b'%'
            || (b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    ok.then(|| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    })
}

/// `charset'language'encoded` with charset UTF-8 or US-ASCII (Go's `decode2231Enc`).
fn decode_2231(v: &str) -> Option<String> {
    let mut parts = v.splitn(3, '\'');
    let (charset, _, encoded) = (parts.next()?, parts.next()?, parts.next()?);
    if !charset.eq_ignore_ascii_case("utf-8") && !charset.eq_ignore_ascii_case("us-ascii") {
        return None;
    }
    percent_unescape(encoded)
}

/// The parameters of a media type or disposition value, by Go's `mime.ParseMediaType`:
/// `type[/subtype]` then `; key=value` pairs (lowercased keys, token or quoted values),
/// RFC 2231 `key*=` extended and `key*0=` continued values; `None` when malformed.
fn media_params(value: &str) -> Option<std::collections::BTreeMap<String, String>> {
    use std::collections::BTreeMap;
    let (base, _) = value.split_once(';').unwrap_or((value, ""));
    let (kind, rest) = token(base.trim());
    if kind.is_empty() {
        return None;
    }
    if let Some(sub) = rest.strip_prefix('/') {
        let (sub, rest) = token(sub);
        if sub.is_empty() || !rest.is_empty() {
            return None;
        }
    } else if !rest.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    let mut pieces: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut v = &value[base.len()..];
    loop {
        v = v.trim_start();
        if v.is_empty() {
            break;
        }
        let parsed = v.strip_prefix(';').and_then(|r| {
            let (key, r) = token(r.trim_start());
            let r = r.trim_start().strip_prefix('=')?;
            let (val, r) = param_value(r.trim_start())?;
            (!key.is_empty()).then(|| (key.to_ascii_lowercase(), val, r))
        });
        let Some((key, val, rest)) = parsed else {
            // Trailing semicolons are ignored; anything else is malformed.
            if v.trim() == ";" {
                break;
            }
            return None;
        };
        let map = match key.split_once('*') {
            Some((name, _)) => pieces.entry(name.to_string()).or_default(),
            None => &mut params,
        };
        if map.get(&key).is_some_and(|old| *old != val) {
            return None;
        }
        map.insert(key, val);
        v = rest;
    }
    for (name, piece) in pieces {
        if let Some(extended) = piece.get(&format!("{name}*")) {
            if let Some(decoded) = decode_2231(extended) {
                params.insert(name, decoded);
            }
            continue;
        }
        let mut joined = String::new();
        let mut valid = false;
        for n in 0.. {
            if let Some(plain) = piece.get(&format!("{name}*{n}")) {
                joined.push_str(plain);
            } else if let Some(encoded) = piece.get(&format!("{name}*{n}*")) {
                let decoded = if n == 0 {
                    decode_2231(encoded)
                } else {
                    percent_unescape(encoded)
                };
                joined.push_str(&decoded.unwrap_or_default());
            } else {
                break;
            }
            valid = true;
        }
        if valid {
            params.insert(name, joined);
        }
    }
    Some(params)
}

/// An error with its causes, as Go prints a wrapped one.
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

/// What a downloaded remote context is, by moby's `inspectResponse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteContent {
    /// `text/plain`: the file is the Dockerfile and the context is empty.
    Dockerfile,
    /// A tar archive, maybe compressed.
    Archive,
}

/// Tells a remote context's kind from its `Content-Type`, sniffing the first bytes when it
/// is missing or `application/octet-stream` (some servers' default for `Dockerfile`).
pub fn inspect(content_type: &str, head: &[u8]) -> Result<RemoteContent, String> {
    if head.is_empty() {
        return Err("empty response".into());
    }
    let sniffed;
    let ct = if content_type.is_empty() || content_type == "application/octet-stream" {
        sniffed = sniff(head);
        sniffed
    } else {
        content_type
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    // Moby's acceptableRemoteMIME.
    match mime.as_str() {
        "text/plain" => Ok(RemoteContent::Dockerfile),
        "application/tar"
        | "application/x-tar"
        | "application/octet-stream"
        | "application/gzip"
        | "application/x-gzip"
        | "application/bzip"
        | "application/x-bzip"
        | "application/bzip2"
        | "application/x-bzip2"
        | "application/xz"
        | "application/x-xz" => Ok(RemoteContent::Archive),
        _ => Err(format!("unsupported Content-Type {content_type:?}")),
    }
}

/// Go's `http.DetectContentType` for what matters here: known archives' magic bytes, text,
/// or else `application/octet-stream`.
fn sniff(head: &[u8]) -> &'static str {
    if head.starts_with(&[0x1f, 0x8b]) {
        "application/x-gzip"
    } else if head.starts_with(b"BZh") || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        "application/octet-stream"
    } else if !head
        .iter()
        .any(|b| matches!(b, 0..=8 | 0x0b | 0x0e..=0x1a | 0x1c..=0x1f))
    {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

/// Clones a git remote into `root` (which must exist, empty) as moby's `gitutil.Clone`:
/// `git init`, `remote add origin`, a fetch of `ref` (shallow unless the server is a dumb
/// HTTP one), a checkout, submodules; returns the context directory (`root` or its
/// `subdir`, kept inside `root`).
pub async fn clone(remote: &str, root: &Path) -> Result<PathBuf, BuildError> {
    let repo = GitRepo::parse(remote)?;
    let shallow = supports_shallow_clone(&repo.remote).await;
    let init = git(root, &["init"]).await;
    if let Err(e) = init {
        return Err(fetch(
            remote,
            format!(
                "failed to init repo at {}: {e}{}",
                root.display(),
                if e.contains("executable file not found") {
                    " (this engine's host has no git: build from a local checkout, \
                 `docker build DIR`, or let the docker CLI clone it with `docker build URL`)"
                } else {
                    ""
                }
            ),
            false,
        ));
    }
    git(root, &["remote", "add", "origin", &repo.remote])
        .await
        .map_err(|e| {
            fetch(
                remote,
                format!("failed add origin repo at {}: {e}", repo.remote),
                false,
            )
        })?;
    let mut args = vec!["fetch"];
    if shallow {
        args.extend(["--depth", "1"]);
    }
    args.extend(["origin", "--", &repo.reference]);
    git(root, &args)
        .await
        .map_err(|e| fetch(remote, format!("error fetching: {e}"), false))?;
    if let Err(e) = git(root, &["checkout", &repo.reference]).await {
        if git(root, &["checkout", "FETCH_HEAD"]).await.is_err() {
            return Err(fetch(
                remote,
                format!("error checking out {}: {e}", repo.reference),
                false,
            ));
        }
    }
    git(
        root,
        &["submodule", "update", "--init", "--recursive", "--depth=1"],
    )
    .await
    .map_err(|e| fetch(remote, format!("error initializing submodules: {e}"), false))?;
    if repo.subdir.is_empty() {
        return Ok(root.to_path_buf());
    }
    let scope = super::context::Context::scope(root);
    let dir = scope.resolve(Path::new(&repo.subdir)).map_err(|_| {
        invalid(format!(
            "error setting git context, {:?} not within git root",
            repo.subdir
        ))
    })?;
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(dir),
        Ok(_) => Err(invalid(format!(
            "error setting git context, not a directory: {}",
            dir.display()
        ))),
        Err(e) => Err(io_err(&dir)(e)),
    }
}

/// A git remote split as moby's `parseRemoteURL` does.
#[derive(Debug, PartialEq, Eq)]
struct GitRepo {
    remote: String,
    reference: String,
    subdir: String,
}

impl GitRepo {
    fn parse(url: &str) -> Result<GitRepo, BuildError> {
        let transport = ["git://", "git@", "http://", "https://", "ssh://"]
            .iter()
            .any(|p| url.starts_with(p));
        let url = if transport {
            url.to_string()
        } else {
            format!("https://{url}")
        };
        let (remote, fragment) = url.split_once('#').unwrap_or((&url, ""));
        let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
        let reference = if reference.is_empty() {
            "master"
        } else {
            reference
        };
        if reference.starts_with('-') {
            return Err(invalid(format!("invalid refspec: {reference}")));
        }
        Ok(GitRepo {
            remote: remote.to_string(),
            reference: reference.to_string(),
            subdir: subdir.to_string(),
        })
    }
}

/// Whether the remote takes `fetch --depth 1`: every transport but a dumb HTTP server, which
/// a smart one tells apart by its answer to the upload-pack advertisement.
async fn supports_shallow_clone(remote: &str) -> bool {
    if !is_url(remote) {
        return true;
    }
    let Ok(client) = crate::image::registry::http_client(false) else {
        return false;
    };
    let url = format!("{remote}/info/refs?service=git-upload-pack");
    let response = match client.head(&url).send().await {
        Ok(r) => Ok(r),
        Err(_) => client.get(&url).send().await,
    };
    response.is_ok_and(|r| {
        r.headers()
            .get(reqwest::header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/x-git-upload-pack-advertisement")
    })
}

/// Runs `git ARGS` in `dir` as moby's `gitWithinDir`: no file-protocol submodules, no
/// protocols a repository could ask for, no system or user configuration; the error is
/// `OUTPUT: CAUSE` as Go's `errors.Wrapf` shows it.
async fn git(dir: &Path, args: &[&str]) -> Result<(), String> {
    let output = tokio::process::Command::new("git")
        .arg("-c")
        .arg("protocol.file.allow=never")
        .args(args)
        .current_dir(dir)
        .env("GIT_PROTOCOL_FROM_USER", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    match output {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(": exec: \"git\": executable file not found in $PATH".into())
        }
        Err(e) => Err(format!(": exec: \"git\": {e}")),
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            Err(format!("{text}: {}", o.status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_are_told_apart_as_moby_does() {
        for git in [
            "git://h/r",
            "git@github.com:o/r.git",
            "github.com/o/r",
            "https://h/o/r.git",
            "http://h/o/r.git#v1:sub",
        ] {
            assert_eq!(
                Remote::parse(git).expect("git"),
                Remote::Git(git.into()),
                "{git}"
            );
        }
        assert_eq!(
            Remote::parse("https://h/ctx.tar").expect("url"),
            Remote::Url("https://h/ctx.tar".into())
        );
        assert_eq!(
            Remote::parse("ftp://h/x").unwrap_err().to_string(),
            "remoteURL (ftp://h/x) could not be recognized as URL"
        );
        // A 400 (Invalid), with moby's text.
        let session = Remote::parse("client-session").unwrap_err();
        assert!(matches!(session, BuildError::Invalid { .. }), "{session:?}");
        assert_eq!(
            session.to_string(),
            "experimental session with v1 builder is no longer supported, use builder version \
             v2 (BuildKit) instead"
        );
        let repo = GitRepo::parse("github.com/o/r#v1:sub/dir").expect("parses");
        assert_eq!(
            repo,
            GitRepo {
                remote: "https://github.com/o/r".into(),
                reference: "v1".into(),
                subdir: "sub/dir".into()
            }
        );
        assert_eq!(
            GitRepo::parse("git://h/r").expect("parses").reference,
            "master"
        );
        assert!(GitRepo::parse("git://h/r#--upload-pack=x").is_err());
    }

    #[test]
    fn remote_content_is_told_by_type_then_by_its_bytes() {
        assert_eq!(
            inspect("text/plain; charset=utf-8", b"FROM x"),
            Ok(RemoteContent::Dockerfile)
        );
        assert_eq!(inspect("", b"FROM x\n"), Ok(RemoteContent::Dockerfile));
        assert_eq!(
            inspect("application/octet-stream", &[0x1f, 0x8b, 8]),
            Ok(RemoteContent::Archive)
        );
        assert_eq!(inspect("", b"name\0\0\0"), Ok(RemoteContent::Archive));
        assert_eq!(
            inspect("application/x-tar", b"x"),
            Ok(RemoteContent::Archive)
        );
        assert_eq!(
            inspect("text/html", b"<html>"),
            Err("unsupported Content-Type \"text/html\"".into())
        );
        assert_eq!(inspect("text/plain", b""), Err("empty response".into()));
    }

    #[test]
    fn add_urls_are_named_by_their_decoded_path_then_their_disposition() {
        let name = |url: &str, disposition: Option<&str>| {
            download_name(url, disposition).map(|n| n.to_string_lossy().into_owned())
        };
        assert_eq!(
            name("https://h/d/a%20b.txt?x=1#f", None).as_deref(),
            Some("a b.txt")
        );
        assert_eq!(name("https://h/a%2Fb", None).as_deref(), Some("b"));
        assert_eq!(
            name("https://h/dir/", Some("given.txt")).as_deref(),
            Some("given.txt")
        );
        assert_eq!(name("https://h/", Some("a/b/")), None);
        assert_eq!(name("https://h", None), None);
        assert_eq!(
            disposition_filename(r#"attachment; filename="say \"hi\".txt""#).as_deref(),
            Some(r#"say "hi".txt"#)
        );
        assert_eq!(
            disposition_filename("attachment; FileName=plain.txt").as_deref(),
            Some("plain.txt")
        );
        assert_eq!(
            disposition_filename("attachment; filename*=UTF-8''na%C3%AFve.txt").as_deref(),
            Some("na\u{ef}ve.txt")
        );
        assert_eq!(disposition_filename("inline"), None);
        // A malformed extended value leaves the plain one.
        assert_eq!(
            disposition_filename("attachment; filename*=broken; filename=plain.txt").as_deref(),
            Some("plain.txt")
        );
        assert_eq!(
            disposition_filename("attachment; filename=plain.txt; filename*=UTF-8''%zz").as_deref(),
            Some("plain.txt")
        );
    }

    #[test]
    fn content_disposition_is_scanned_as_go_does() {
        let f = |v: &str| disposition_filename(v);
        // A `;` inside quotes is part of the name.
        assert_eq!(
            f(r#"attachment; filename="a;b.txt""#).as_deref(),
            Some("a;b.txt")
        );
        // A backslash escapes a tspecial; before another character it stays (MSIE paths).
        assert_eq!(
            f(r#"attachment; filename="a\(b\).txt""#).as_deref(),
            Some("a(b).txt")
        );
        assert_eq!(
            f(r#"attachment; filename="C:\dev\x.txt""#).as_deref(),
            Some(r"C:\dev\x.txt")
        );
        // Continuations join; a trailing semicolon is fine.
        assert_eq!(
            f("attachment; filename*0=ab; filename*1=cd.txt;").as_deref(),
            Some("abcd.txt")
        );
        assert_eq!(
            f("attachment; filename*0*=UTF-8''a%20; filename*1=b").as_deref(),
            Some("a b")
        );
        // Malformed: Go's ParseMediaType fails, moby uses no name.
        for bad in [
            r#"attachment; filename="unterminated"#,
            "attachment; filename",
            "attachment; filename=",
            "attachment; filename=a b",
            "attachment filename=a",
            "; filename=a",
            "a/b/c; filename=x",
            "attachment; filename=a; filename=b",
            "attachment;; filename=a",
        ] {
            assert_eq!(f(bad), None, "{bad}");
        }
        assert_eq!(
            f("attachment; filename=a; filename=a").as_deref(),
            Some("a")
        );
    }

    #[test]
    fn names_from_the_server_cannot_leave_the_directory() {
        let name = |url: &str, v: &str| {
            download_name(url, disposition_filename(v).as_deref())
                .map(|n| n.to_string_lossy().into_owned())
        };
        assert_eq!(
            name("http://h/d/", r#"attachment; filename="../../etc/passwd""#).as_deref(),
            Some("passwd")
        );
        // `..` alone comes through as a name: fetch_source refuses it as moby's open fails.
        assert_eq!(
            name("http://h/d/", "attachment; filename=..").as_deref(),
            Some("..")
        );
        assert_eq!(
            name("http://h/d/", "attachment; filename*=UTF-8''..%2F..%2Fx").as_deref(),
            Some("x")
        );
        assert_eq!(
            name("http://h/d/", r#"attachment; filename="../escape/""#),
            None
        );
        // The URL's path: dot segments are resolved, a decoded `/` splits the name.
        assert_eq!(name("http://h/a/%2e%2e/%2e%2e/x", "").as_deref(), Some("x"));
        assert_eq!(name("http://h/a/..%2F..%2Fy", "").as_deref(), Some("y"));
        assert_eq!(name("http://h/a/%2e%2e", ""), None);
    }

    #[tokio::test]
    async fn a_cancelled_download_stops_and_leaves_no_file() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // A server that promises 1 MB and trickles a few bytes, then stalls.
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nabc");
            std::thread::sleep(std::time::Duration::from_secs(10));
        });
        let tmp = tempfile::tempdir().expect("tempdir");
        let dest = tmp.path().join("f");
        let fetching = get(&format!("http://127.0.0.1:{port}/f"))
            .await
            .expect("headers");
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let _ = tx.send(true);
        });
        let saved = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            fetching.save(&dest, &mut |_, _, _| {}, Some(rx)),
        )
        .await
        .expect("the download stops when cancelled");
        assert!(matches!(saved, Err(BuildError::Cancelled)), "{saved:?}");
        assert!(!dest.exists());
        drop(server);
    }
}
