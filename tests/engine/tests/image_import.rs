//! `docker import` through the real CLI: a tar (plain or gzip) as a one-layer image.

use std::io::Write;

use rmachine_tests_engine::{require_root, share_network_with_engines, Engine};

#[test]
fn an_exported_filesystem_imports_and_runs() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "--name",
            "c1",
            "busybox",
            "sh",
            "-c",
            "echo imported > /marker",
        ])?
        .ok()?;
    let fs_tar = engine.dir().join("fs.tar");
    let fs_tar_s = fs_tar.to_string_lossy().into_owned();
    engine.docker(&["export", "-o", &fs_tar_s, "c1"])?.ok()?;

    let import = engine
        .docker(&[
            "import",
            "-m",
            "from a file",
            "--change",
            r#"CMD ["cat", "/marker"]"#,
            &fs_tar_s,
            "imp:1",
        ])?
        .ok()?;
    let id = engine.inspect("imp:1", "{{.Id}}")?;
    assert_eq!(import.stdout.trim(), id);
    assert_eq!(engine.inspect("imp:1", "{{len .RootFS.Layers}}")?, "1");
    assert_eq!(engine.inspect("imp:1", "{{.Comment}}")?, "from a file");
    let run = engine.docker(&["run", "--rm", "imp:1"])?.ok()?;
    assert_eq!(run.stdout, "imported\n");

    // From stdin, gzip-compressed; dockerd's default message names the source.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&std::fs::read(&fs_tar)?)?;
    let gz = gz.finish()?;
    engine
        .docker_with_input(&["import", "-", "imp:gz"], &gz)?
        .ok()?;
    let history = engine
        .docker(&["history", "--format", "{{.Comment}}", "imp:gz"])?
        .ok()?;
    assert_eq!(history.stdout.trim(), "Imported from -");
    let run = engine
        .docker(&["run", "--rm", "imp:gz", "cat", "/marker"])?
        .ok()?;
    assert_eq!(run.stdout, "imported\n");
    Ok(())
}

#[test]
fn a_truncated_archive_fails_and_stores_nothing() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let before = engine.docker(&["images", "-q"])?.ok()?.stdout;
    let other = engine.docker_with_input(
        &["import", "--platform", "linux/s390x", "-", "elsewhere:1"],
        &[0u8; 1024],
    )?;
    assert_eq!(other.code, 1, "{other:?}");
    assert!(other.stderr.contains("not linux/s390x"), "{}", other.stderr);
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(100_000);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "big", &vec![7u8; 100_000][..])?;
    let full = tar.into_inner()?;
    let truncated = &full[..20_000];
    let run = engine.docker_with_input(&["import", "-", "broken:1"], truncated)?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("Error response from daemon: invalid layer"),
        "{}",
        run.stderr
    );
    assert_eq!(engine.docker(&["images", "-q"])?.ok()?.stdout, before);
    let leftovers: Vec<_> = std::fs::read_dir(engine.data_root().join("image/tmp"))?.collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    Ok(())
}

/// Serves `body` over plain HTTP at `/fs.tar`, redirecting `/old` there, for `connections`
/// requests.
fn serve(body: Vec<u8>, connections: usize) -> anyhow::Result<String> {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("clone a socket"));
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) <= 2 {
                    break;
                }
            }
            if request_line.starts_with("GET /old ") {
                let _ = stream.write_all(
                    b"HTTP/1.1 302 Found\r\nLocation: /fs.tar\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            } else {
                let _ = stream.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .as_bytes(),
                );
                let _ = stream.write_all(&body);
            }
        }
    });
    Ok(format!("http://{addr}"))
}

#[test]
fn an_archive_imports_from_an_http_url() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    // The test's HTTP server and the engine share one network namespace.
    share_network_with_engines()?;
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "--name",
            "c1",
            "busybox",
            "sh",
            "-c",
            "echo web > /marker",
        ])?
        .ok()?;
    let fs_tar = engine.dir().join("fs.tar");
    let fs_tar_s = fs_tar.to_string_lossy().into_owned();
    engine.docker(&["export", "-o", &fs_tar_s, "c1"])?.ok()?;
    let base = serve(std::fs::read(&fs_tar)?, 2)?;
    let url = format!("{base}/old");
    engine.docker(&["import", &url, "web:1"])?.ok()?;
    let run = engine
        .docker(&["run", "--rm", "web:1", "cat", "/marker"])?
        .ok()?;
    assert_eq!(run.stdout, "web\n");
    let history = engine
        .docker(&["history", "--format", "{{.Comment}}", "web:1"])?
        .ok()?;
    assert_eq!(history.stdout.trim(), format!("Imported from {url}"));

    let https = engine.docker(&["import", "https://127.0.0.1:1/x.tar", "web:2"])?;
    assert_eq!(https.code, 1);
    assert!(
        https
            .stderr
            .contains("does not support importing over https"),
        "{}",
        https.stderr
    );
    Ok(())
}
