//! `docker import` through the real CLI: a tar (plain or gzip) as a one-layer image.

use std::io::Write;

use rmachine_tests_engine::Engine;

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
