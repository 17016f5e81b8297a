//! `docker build` with what comes from elsewhere: contexts compressed with bzip2, xz and zstd,
//! remote contexts (`remote=`: a tar URL, a Dockerfile URL, a git repository over HTTP) and
//! `ADD <url>`, against servers of the test's own network namespace; `--cache-from` images.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use rmachine_tests_engine::registry::{require_registry, Auth, Registry};
use rmachine_tests_engine::{require_root, share_network_with_engines, Engine, Run};

/// `Last-Modified` of everything the test server serves, and the same instant in seconds.
const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
const LAST_MODIFIED_EPOCH: &str = "1445412480";
/// The file name the test server gives a directory's `index` in `Content-Disposition`.
const DISPOSITION: &str = "named by header.txt";

/// Serves the files under `root` over HTTP/1.0 on 127.0.0.1 (GET and HEAD, a query string
/// ignored, 404 for what is missing), for as long as the test runs; returns its base URL.
fn serve(root: PathBuf) -> anyhow::Result<String> {
    serve_on("127.0.0.1:0", root).map(|port| format!("http://127.0.0.1:{port}"))
}

/// [`serve`] on `addr`; returns the port.
fn serve_on(addr: &str, root: PathBuf) -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(addr)?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = String::new();
            let mut reader = BufReader::new(&mut stream);
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            loop {
                let mut header = String::new();
                match reader.read_line(&mut header) {
                    Ok(n) if n > 2 => {}
                    _ => break,
                }
            }
            let mut words = request.split_whitespace();
            let method = words.next().unwrap_or_default().to_string();
            let target = words.next().unwrap_or_default();
            let path = target
                .split('?')
                .next()
                .unwrap_or_default()
                .replace("%20", " ");
            // A directory's `index` comes with a Content-Disposition naming it (the
            // directory's `disposition` file, else DISPOSITION).
            let (file, disposition) = if path.ends_with('/') {
                let dir = root.join(path.trim_start_matches('/'));
                let name = fs::read_to_string(dir.join("disposition"))
                    .unwrap_or_else(|_| DISPOSITION.to_string());
                (
                    dir.join("index"),
                    format!("Content-Disposition: attachment; filename=\"{name}\"\r\n"),
                )
            } else {
                (root.join(path.trim_start_matches('/')), String::new())
            };
            let (head, body) = match fs::read(&file) {
                Ok(body) if file.is_file() => {
                    let content_type = if path.ends_with(".tar") {
                        "application/x-tar"
                    } else if path.ends_with("Dockerfile") {
                        "text/plain; charset=utf-8"
                    } else {
                        "application/octet-stream"
                    };
                    (
                        format!(
                            "HTTP/1.0 200 OK\r\nContent-Type: {content_type}\r\n\
                             Last-Modified: {LAST_MODIFIED}\r\n{disposition}\
                             Content-Length: {}\r\n\r\n",
                            body.len()
                        ),
                        body,
                    )
                }
                _ => (
                    "HTTP/1.0 404 Not Found\r\nContent-Length: 10\r\n\r\n".to_string(),
                    b"not here\r\n".to_vec(),
                ),
            };
            let _ = stream.write_all(head.as_bytes());
            if method != "HEAD" {
                let _ = stream.write_all(&body);
            }
        }
    });
    Ok(port)
}

/// Writes `files` (path, content) under `dir`.
fn write_files(dir: &Path, files: &[(&str, &str)]) -> anyhow::Result<()> {
    for (path, content) in files {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(p, content)?;
    }
    Ok(())
}

fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A tar of the directory `dir`'s contents.
fn tar_of(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["-cf", "-", "."])
        .output()?;
    anyhow::ensure!(out.status.success(), "tar failed");
    Ok(out.stdout)
}

/// `POST /build?QUERY` with an empty body; the status and the streamed lines.
fn build_api(engine: &Engine, query: &str) -> anyhow::Result<(u16, String)> {
    engine.request("POST", &format!("/build?{query}"), "")
}

fn encode(url: &str) -> String {
    url.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn contexts_compressed_with_bzip2_xz_and_zstd_build() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let ctx = tempfile::tempdir()?;
    write_files(
        ctx.path(),
        &[
            (
                "Dockerfile",
                "FROM busybox\nCOPY data /data\nCMD [\"cat\", \"/data\"]\n",
            ),
            ("data", "compressed context\n"),
        ],
    )?;
    let tar = tar_of(ctx.path())?;
    for (tool, tag) in [("bzip2", "ctx:bz2"), ("xz", "ctx:xz"), ("zstd", "ctx:zst")] {
        let mut child = Command::new(tool)
            .args(["-c", "-q"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("stdin"))?;
        let input = tar.clone();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output()?;
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        anyhow::ensure!(out.status.success(), "{tool} failed");
        // `docker build -` sends a compressed archive on its stdin as it is.
        let mut cmd = engine.docker_command(&["build", "-t", tag, "-"]);
        cmd.env("DOCKER_BUILDKIT", "0");
        let run: Run = rmachine_tests_engine::feed(cmd, &out.stdout)?;
        let run = run.ok()?;
        assert!(
            run.stdout.contains(&format!("Successfully tagged {tag}\n")),
            "{tool}: {}",
            run.stdout
        );
    }
    let ran = engine.docker(&["run", "--rm", "ctx:xz"])?.ok()?;
    assert_eq!(ran.stdout, "compressed context\n");
    Ok(())
}

#[test]
fn remote_contexts_tar_dockerfile_and_git_and_add_urls() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    // The test's HTTP server and the engine share one network namespace.
    share_network_with_engines()?;
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let site = tempfile::tempdir()?;
    let base = serve(site.path().to_path_buf())?;

    // A tar archive as the context, its Dockerfile chosen with `dockerfile=`.
    let ctx = tempfile::tempdir()?;
    write_files(
        ctx.path(),
        &[
            ("build.df", "FROM busybox\nCOPY hello /hello\n"),
            ("hello", "from a remote tar\n"),
        ],
    )?;
    fs::write(site.path().join("ctx.tar"), tar_of(ctx.path())?)?;
    let (status, out) = build_api(
        &engine,
        &format!(
            "t=remote%3Atar&dockerfile=build.df&remote={}",
            encode(&format!("{base}/ctx.tar"))
        ),
    )?;
    assert_eq!(status, 200, "{out}");
    assert!(out.contains("Successfully tagged remote:tar"), "{out}");
    let ran = engine
        .docker(&["run", "--rm", "remote:tar", "cat", "/hello"])?
        .ok()?;
    assert_eq!(ran.stdout, "from a remote tar\n");

    // A Dockerfile alone: an empty context.
    write_files(
        site.path(),
        &[("df/Dockerfile", "FROM busybox\nLABEL from=url\n")],
    )?;
    let (status, out) = build_api(
        &engine,
        &format!(
            "t=remote%3Adf&remote={}",
            encode(&format!("{base}/df/Dockerfile"))
        ),
    )?;
    assert_eq!(status, 200, "{out}");
    assert!(out.contains("Step 2/2 : LABEL from=url"), "{out}");
    assert_eq!(
        engine.inspect("remote:df", "{{.Config.Labels.from}}")?,
        "url"
    );

    // A missing file is moby's error.
    let (status, out) = build_api(
        &engine,
        &format!("remote={}", encode(&format!("{base}/nothing.tar"))),
    )?;
    assert_ne!(status, 200, "{out}");
    assert!(
        out.contains(&format!(
            "error downloading remote context {base}/nothing.tar: failed to GET {base}/nothing.tar with status 404 Not Found: not here"
        )),
        "{out}"
    );

    // A git repository over (dumb) HTTP, with `#ref:subdir`.
    let work = tempfile::tempdir()?;
    write_files(
        work.path(),
        &[
            ("app/Dockerfile", "FROM busybox\nCOPY note /note\n"),
            ("app/note", "from git\n"),
        ],
    )?;
    let git = |dir: &Path, args: &[&str]| {
        sh(Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args))
    };
    git(work.path(), &["init", "-q", "-b", "main"])?;
    git(work.path(), &["add", "."])?;
    git(work.path(), &["commit", "-q", "-m", "one"])?;
    let bare = site.path().join("repo.git");
    sh(Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(work.path())
        .arg(&bare))?;
    git(&bare, &["update-server-info"])?;
    let (status, out) = build_api(
        &engine,
        &format!(
            "t=remote%3Agit&remote={}",
            encode(&format!("{base}/repo.git#main:app"))
        ),
    )?;
    assert_eq!(status, 200, "{out}");
    assert!(out.contains("Successfully tagged remote:git"), "{out}");
    let ran = engine
        .docker(&["run", "--rm", "remote:git", "cat", "/note"])?
        .ok()?;
    assert_eq!(ran.stdout, "from git\n");
    let leftovers: Vec<_> = fs::read_dir(engine.data_root().join("tmp"))?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // ADD of a URL: named after it, 0600, mtime from Last-Modified, never extracted; the
    // cache holds while the content does.
    let data = tempfile::tempdir()?;
    write_files(data.path(), &[("inner", "x")])?;
    fs::write(site.path().join("data.tar"), tar_of(data.path())?)?;
    let add = tempfile::tempdir()?;
    write_files(
        add.path(),
        &[(
            "Dockerfile",
            &format!("FROM busybox\nADD {base}/data.tar /got/\n"),
        )],
    )?;
    let build = |args: &[&str]| cli_build(&engine, add.path(), args);
    build(&["-t", "added"])?.ok()?;
    let ran = engine
        .docker(&[
            "run",
            "--rm",
            "added",
            "stat",
            "-c",
            "%a %Y %F",
            "/got/data.tar",
        ])?
        .ok()?;
    assert_eq!(
        ran.stdout,
        format!("600 {LAST_MODIFIED_EPOCH} regular file\n")
    );
    let again = build(&["-t", "added"])?.ok()?;
    assert!(
        again.stdout.contains(" ---> Using cache"),
        "{}",
        again.stdout
    );
    write_files(data.path(), &[("inner", "changed")])?;
    fs::write(site.path().join("data.tar"), tar_of(data.path())?)?;
    let changed = build(&["-t", "added"])?.ok()?;
    assert!(
        !changed.stdout.contains(" ---> Using cache"),
        "{}",
        changed.stdout
    );
    Ok(())
}

#[test]
fn add_urls_are_named_as_moby_names_them_and_show_their_download() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    share_network_with_engines()?;
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let site = tempfile::tempdir()?;
    let base = serve(site.path().to_path_buf())?;
    let big = vec![7u8; 3_000_000];
    fs::write(site.path().join("big file.bin"), &big)?;
    write_files(
        site.path(),
        &[
            ("dir/index", "from a directory\n"),
            ("evil/index", "escaped?\n"),
            ("evil/disposition", "../escape"),
        ],
    )?;
    write_files(
        site.path(),
        &[(
            "add/Dockerfile",
            &format!(
                "FROM busybox\nADD {base}/big%20file.bin /got/\nADD {base}/dir/ /got/\n\
                 ADD {base}/evil/ /got/sub/\n"
            ),
        )],
    )?;
    let (status, out) = build_api(
        &engine,
        &format!(
            "t=added%3Anames&remote={}",
            encode(&format!("{base}/add/Dockerfile"))
        ),
    )?;
    assert_eq!(status, 200, "{out}");
    // The percent-decoded last path element, else the Content-Disposition filename.
    let ran = engine
        .docker(&["run", "--rm", "added:names", "ls", "/got"])?
        .ok()?;
    assert_eq!(ran.stdout, format!("big file.bin\n{DISPOSITION}\nsub\n"));
    // A server's `filename="../escape"` names `escape`, inside the destination.
    let evil = engine
        .docker(&["run", "--rm", "added:names", "ls", "/got/sub"])?
        .ok()?;
    assert_eq!(evil.stdout, "escape\n");
    let size = engine
        .docker(&[
            "run",
            "--rm",
            "added:names",
            "stat",
            "-c",
            "%s",
            "/got/big file.bin",
        ])?
        .ok()?;
    assert_eq!(size.stdout, "3000000\n");

    // moby's JSON progress: `Downloading` lines, the last one complete, then an empty status.
    let lines: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let last_download = lines
        .iter()
        .rposition(|l| l["status"] == "Downloading" && l["progressDetail"]["total"] == 3_000_000)
        .ok_or_else(|| anyhow::anyhow!("no download progress in {out}"))?;
    let done = &lines[last_download];
    assert_eq!(done["progressDetail"]["current"], 3_000_000, "{out}");
    assert_eq!(
        done["progress"],
        format!("[{}>]      3MB/3MB", "=".repeat(50)),
        "{out}"
    );
    assert_eq!(lines[last_download + 1], serde_json::json!({}), "{out}");

    // (docker CLI 28 wraps the build's output in a stream that is never a terminal, so it
    // hides these bars as it hides dockerd's; API clients such as docker-py get them.)
    Ok(())
}

#[test]
fn run_steps_reach_the_network_through_the_default_bridge() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    share_network_with_engines()?;
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    // A "mirror" on every address of the engine's host: a RUN step reaches it through its
    // gateway, as `RUN apt-get update` reaches a mirror.
    let site = tempfile::tempdir()?;
    write_files(site.path(), &[("pkg/index", "package list\n")])?;
    let port = serve_on("0.0.0.0:0", site.path().to_path_buf())?;
    let ctx = tempfile::tempdir()?;
    write_files(
        ctx.path(),
        &[(
            "Dockerfile",
            &format!(
                "FROM busybox\nRUN gw=$(ip route | awk '/^default/ {{print $3}}') && \
                 wget -q -O /index http://$gw:{port}/pkg/index\nCMD cat /index\n"
            ),
        )],
    )?;
    cli_build(&engine, ctx.path(), &["-t", "fetched"])?.ok()?;
    let ran = engine.docker(&["run", "--rm", "fetched"])?.ok()?;
    assert_eq!(ran.stdout, "package list\n");
    Ok(())
}

/// `docker build DIR ARGS` with the classic builder.
fn cli_build(engine: &Engine, dir: &Path, args: &[&str]) -> anyhow::Result<Run> {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    let d = dir.to_string_lossy().into_owned();
    all.push(&d);
    let mut cmd = engine.docker_command(&all);
    cmd.env("DOCKER_BUILDKIT", "0");
    Ok(cmd.output()?.into())
}

#[test]
fn from_a_registry_by_digest_and_with_pull() -> anyhow::Result<()> {
    if !require_root() || !require_registry() {
        return Ok(());
    }
    share_network_with_engines()?;
    let registry = Registry::start(Auth::Open)?;
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let base = format!("{}/base:1", registry.host);
    engine.docker(&["tag", "busybox", &base])?.ok()?;
    engine.docker(&["push", &base])?.ok()?;
    let digest = engine.inspect(&base, "{{index .RepoDigests 0}}")?;
    engine.docker(&["rmi", &base])?.ok()?;

    // FROM name@digest: pulled (the engine no longer has it) and built on.
    let by_digest = tempfile::tempdir()?;
    write_files(
        by_digest.path(),
        &[("Dockerfile", &format!("FROM {digest}\nRUN echo one > /v\n"))],
    )?;
    let out = cli_build(&engine, by_digest.path(), &["-t", "on-digest"])?.ok()?;
    assert!(
        out.stdout.contains(&format!("Step 1/2 : FROM {digest}\n")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("Pulling from base"), "{}", out.stdout);
    let ran = engine
        .docker(&["run", "--rm", "on-digest", "cat", "/v"])?
        .ok()?;
    assert_eq!(ran.stdout, "one\n");

    // The registry's base:1 moves on; the engine's base:1 stays the old one.
    let newer = tempfile::tempdir()?;
    write_files(
        newer.path(),
        &[("Dockerfile", "FROM busybox\nRUN echo two > /v\n")],
    )?;
    cli_build(&engine, newer.path(), &["-t", &base])?.ok()?;
    engine.docker(&["push", &base])?.ok()?;
    engine.docker(&["tag", "busybox", &base])?.ok()?;
    let user = tempfile::tempdir()?;
    write_files(
        user.path(),
        &[(
            "Dockerfile",
            &format!("FROM {base}\nCMD cat /v || echo none\n"),
        )],
    )?;
    // Without --pull the local image is the base; with it, the registry's.
    cli_build(&engine, user.path(), &["-t", "user:local"])?.ok()?;
    let ran = engine.docker(&["run", "--rm", "user:local"])?.ok()?;
    assert_eq!(ran.stdout, "none\n");
    let pulled = cli_build(&engine, user.path(), &["--pull", "-t", "user:pulled"])?.ok()?;
    assert!(
        pulled
            .stdout
            .contains(&format!("Status: Downloaded newer image for {base}")),
        "{}",
        pulled.stdout
    );
    let ran = engine.docker(&["run", "--rm", "user:pulled"])?.ok()?;
    assert_eq!(ran.stdout, "two\n");
    Ok(())
}

#[test]
fn a_remote_that_is_neither_git_nor_a_url_is_a_server_error() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    // dockerd's `remotecontext.Detect` returns a plain error: 500 with its text.
    let (status, out) = build_api(&engine, "remote=ftp%3A%2F%2Fh%2Fctx.tar")?;
    assert_eq!(status, 500, "{out}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)?["message"],
        "remoteURL (ftp://h/ctx.tar) could not be recognized as URL"
    );
    Ok(())
}

#[test]
fn a_git_context_without_git_on_the_engine_host_says_so() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    // The engine's PATH holds only nsenter (which starts it in its namespace) and nft (its
    // bridge network's NAT), not git.
    let bin = tempfile::tempdir()?;
    for tool in ["nsenter", "nft"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()?
            .stdout;
        let found = String::from_utf8(found)?;
        if !found.trim().is_empty() {
            std::os::unix::fs::symlink(found.trim(), bin.path().join(tool))?;
        }
    }
    let path = bin.path().to_string_lossy().into_owned();
    let engine = Engine::start_with_env(&[], &[("PATH", &path)])?;
    let (status, out) = build_api(
        &engine,
        &format!("remote={}", encode("http://127.0.0.1:9/repo.git")),
    )?;
    assert_eq!(status, 500, "{out}");
    assert!(
        out.contains("failed to init repo at ")
            && out.contains(": exec: \\\"git\\\": executable file not found in $PATH")
            && out.contains("this engine's host has no git"),
        "{out}"
    );
    Ok(())
}

#[test]
fn cache_from_reuses_a_loaded_images_steps_and_only_those() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let ctx = tempfile::tempdir()?;
    write_files(
        ctx.path(),
        &[
            (
                "Dockerfile",
                "FROM busybox\nRUN echo built > /built\nCOPY file /file\nCMD [\"cat\", \"/built\"]\n",
            ),
            ("file", "data\n"),
        ],
    )?;
    let build = |args: &[&str]| cli_build(&engine, ctx.path(), args);
    build(&["-t", "made"])?.ok()?;
    let id = engine.inspect("made", "{{.Id}}")?;
    // The image as another machine would get it: loaded, with no build cache here.
    let tar = ctx.path().join("made.tar");
    let tar = tar.to_string_lossy().into_owned();
    engine.docker(&["save", "-o", &tar, "made"])?.ok()?;
    engine.docker(&["rmi", "made"])?.ok()?;
    engine.docker(&["builder", "prune", "-af"])?.ok()?;
    engine.docker(&["load", "-i", &tar])?.ok()?;

    // Every step comes from the loaded image's history; the last one is that image.
    let from = build(&["--cache-from", "made", "-t", "again"])?.ok()?;
    assert_eq!(
        from.stdout.matches(" ---> Using cache\n").count(),
        3,
        "{}",
        from.stdout
    );
    assert!(
        !from.stdout.contains(" ---> Running in "),
        "{}",
        from.stdout
    );
    assert_eq!(engine.inspect("again", "{{.Id}}")?, id);
    assert_eq!(
        engine.docker(&["run", "--rm", "again"])?.ok()?.stdout,
        "built\n"
    );

    // With --cache-from, the local cache counts only for the listed images' ancestry.
    build(&["-t", "local"])?.ok()?;
    let other = build(&["--cache-from", "busybox"])?.ok()?;
    assert!(
        other.stdout.contains(" ---> Running in "),
        "{}",
        other.stdout
    );
    let listed = build(&["--cache-from", "local"])?.ok()?;
    assert!(
        !listed.stdout.contains(" ---> Running in "),
        "{}",
        listed.stdout
    );
    Ok(())
}
