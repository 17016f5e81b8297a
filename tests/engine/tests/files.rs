//! A container's files: `docker cp` both ways on running and stopped containers, hostile
//! uploads through the raw API, `docker export` and `docker diff`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::Context;
use rmachine_tests_engine::Engine;

/// Sends one raw HTTP request over the engine's socket; returns the status line and body.
fn raw_request(engine: &Engine, head: &str, body: &[u8]) -> anyhow::Result<(String, String)> {
    let mut stream = UnixStream::connect(&engine.socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let request = format!(
        "{head} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/x-tar\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.lines().next().unwrap_or("").to_string();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A tar whose entry names and link targets are written raw (the tar crate refuses `..`).
fn hostile_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        let old = header.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_cksum();
        builder.append(&header, *data)?;
    }
    Ok(builder.into_inner()?)
}

fn tar_names(data: &[u8]) -> anyhow::Result<Vec<String>> {
    let mut archive = tar::Archive::new(data);
    let mut names = Vec::new();
    for entry in archive.entries()? {
        names.push(entry?.path()?.to_string_lossy().into_owned());
    }
    Ok(names)
}

#[test]
fn cp_copies_both_ways_on_running_and_stopped_containers() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let id = engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "files",
            "busybox",
            "sh",
            "-c",
            "echo made inside > /inside.txt; exec sleep 1000",
        ])?
        .ok()?
        .stdout
        .trim()
        .to_string();
    engine.wait_for(
        &["exec", "files", "cat", "/inside.txt"],
        Duration::from_secs(5),
        |r| r.stdout == "made inside\n",
    )?;

    // Container → stdout as a tar named by the base name.
    let out = engine
        .docker_command(&["cp", "files:/etc/hostname", "-"])
        .output()?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(tar_names(&out.stdout)?, vec!["hostname".to_string()]);
    let mut archive = tar::Archive::new(&out.stdout[..]);
    let mut content = String::new();
    archive
        .entries()?
        .next()
        .context("empty archive")??
        .read_to_string(&mut content)?;
    assert_eq!(content, format!("{}\n", &id[..12]));

    // Host → running container, and back to a host file.
    let local = engine.dir().join("local.txt");
    std::fs::write(&local, "from the host\n")?;
    let local_s = local.to_string_lossy().into_owned();
    engine.docker(&["cp", &local_s, "files:/tmp/"])?.ok()?;
    let cat = engine
        .docker(&["exec", "files", "cat", "/tmp/local.txt"])?
        .ok()?;
    assert_eq!(cat.stdout, "from the host\n");
    let back = engine.dir().join("back.txt");
    let back_s = back.to_string_lossy().into_owned();
    engine.docker(&["cp", "files:/inside.txt", &back_s])?.ok()?;
    assert_eq!(std::fs::read_to_string(&back)?, "made inside\n");

    // A directory comes back as a directory.
    let etc = engine.dir().join("etc-copy");
    let etc_s = etc.to_string_lossy().into_owned();
    engine.docker(&["cp", "files:/etc", &etc_s])?.ok()?;
    assert!(etc.join("passwd").is_file());

    let missing = engine.docker(&["cp", "files:/nope", "-"])?;
    assert_ne!(missing.code, 0);
    assert!(
        missing
            .stderr
            .contains("Could not find the file /nope in container files"),
        "{}",
        missing.stderr
    );

    // Stopped: both directions still work, through the container's layers.
    engine.docker(&["stop", "-t", "0", "files"])?.ok()?;
    engine
        .docker(&["cp", &local_s, "files:/stopped.txt"])?
        .ok()?;
    let from_stopped = engine.dir().join("from-stopped.txt");
    let from_stopped_s = from_stopped.to_string_lossy().into_owned();
    engine
        .docker(&["cp", "files:/stopped.txt", &from_stopped_s])?
        .ok()?;
    assert_eq!(std::fs::read_to_string(&from_stopped)?, "from the host\n");
    engine.docker(&["cp", "files:/inside.txt", &back_s])?.ok()?;
    assert_eq!(std::fs::read_to_string(&back)?, "made inside\n");

    // What was copied into the stopped container is there when it runs again.
    engine.docker(&["start", "files"])?.ok()?;
    let cat = engine
        .docker(&["exec", "files", "cat", "/stopped.txt"])?
        .ok()?;
    assert_eq!(cat.stdout, "from the host\n");
    Ok(())
}

#[test]
fn hostile_uploads_write_nothing_outside_the_container() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let outside = tempfile::tempdir()?;
    let outside_path = outside.path().to_string_lossy().into_owned();
    let id = engine
        .docker(&["run", "-d", "busybox", "sleep", "1000"])?
        .ok()?
        .stdout
        .trim()
        .to_string();
    // The link targets exist inside the container too: a resolver that followed them on the
    // host would write into the host directory, one scoped to the container writes here.
    engine
        .docker(&["exec", &id, "mkdir", "-p", &outside_path])?
        .ok()?;
    let up = "../".repeat(12) + outside_path.trim_start_matches('/');
    let links = hostile_tar(&[
        ("abs", tar::EntryType::Symlink, &outside_path, b""),
        ("abs/pwned-abs", tar::EntryType::Regular, "", b"x"),
        ("rel", tar::EntryType::Symlink, &up, b""),
        ("rel/pwned-rel", tar::EntryType::Regular, "", b"y"),
        ("hard", tar::EntryType::Link, "../../../../etc/shadow", b""),
    ])?;
    let (status, body) = raw_request(
        &engine,
        &format!("PUT /v1.45/containers/{id}/archive?path=/tmp"),
        &links,
    )?;
    // The hard link names a target above the destination: refused, like moby's breakout check.
    assert!(!status.contains(" 200 "), "{status} {body}");

    let climbing = hostile_tar(&[(&up, tar::EntryType::Regular, "", b"z")])?;
    let with_dots = format!("{up}/pwned-dots");
    let climbing_dir = hostile_tar(&[(&with_dots, tar::EntryType::Regular, "", b"z")])?;
    for tar in [&climbing, &climbing_dir] {
        let (status, body) = raw_request(
            &engine,
            &format!("PUT /v1.45/containers/{id}/archive?path=/tmp"),
            tar,
        )?;
        assert!(!status.contains(" 200 "), "{status} {body}");
        assert!(body.contains("is outside of"), "{body}");
    }

    // Links alone (no breakout entry): accepted, and their writes stay inside the root.
    let links_only = hostile_tar(&[
        ("abs", tar::EntryType::Symlink, &outside_path, b""),
        ("abs/pwned-abs", tar::EntryType::Regular, "", b"x"),
        ("rel", tar::EntryType::Symlink, &up, b""),
        ("rel/pwned-rel", tar::EntryType::Regular, "", b"y"),
    ])?;
    let (status, body) = raw_request(
        &engine,
        &format!("PUT /v1.45/containers/{id}/archive?path=/tmp"),
        &links_only,
    )?;
    assert!(status.contains(" 200 "), "{status} {body}");
    let host_entries: Vec<_> = std::fs::read_dir(outside.path())?.collect();
    assert!(host_entries.is_empty(), "{host_entries:?}");
    let inside = engine
        .docker(&[
            "exec",
            &id,
            "cat",
            &format!("{outside_path}/pwned-abs"),
            &format!("{outside_path}/pwned-rel"),
        ])?
        .ok()?;
    assert_eq!(inside.stdout, "xy");

    // Same on a stopped container (its overlay is mounted privately for the upload).
    engine.docker(&["stop", "-t", "0", &id])?.ok()?;
    let (status, body) = raw_request(
        &engine,
        &format!("PUT /v1.45/containers/{id}/archive?path=/"),
        &links_only,
    )?;
    assert!(status.contains(" 200 "), "{status} {body}");
    for tar in [&climbing, &climbing_dir] {
        let (status, _) = raw_request(
            &engine,
            &format!("PUT /v1.45/containers/{id}/archive?path=/"),
            tar,
        )?;
        assert!(!status.contains(" 200 "), "{status}");
    }
    let host_entries: Vec<_> = std::fs::read_dir(outside.path())?.collect();
    assert!(host_entries.is_empty(), "{host_entries:?}");
    Ok(())
}

#[test]
fn export_and_diff_show_the_container_file_system() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "--name",
            "changed",
            "busybox",
            "sh",
            "-c",
            "echo new > /new; rm /bin/ls; echo x >> /etc/passwd",
        ])?
        .ok()?;
    let diff = engine.docker(&["diff", "changed"])?.ok()?;
    let lines: Vec<&str> = diff.stdout.lines().collect();
    assert_eq!(
        lines,
        vec!["C /bin", "D /bin/ls", "C /etc", "C /etc/passwd", "A /new"],
        "{}",
        diff.stdout
    );

    let out = engine.docker_command(&["export", "changed"]).output()?;
    assert!(out.status.success(), "{out:?}");
    let names = tar_names(&out.stdout)?;
    assert!(names.iter().any(|n| n == "bin/busybox"), "{names:?}");
    assert!(names.iter().any(|n| n == "new"), "{names:?}");
    assert!(!names.iter().any(|n| n == "bin/ls"), "{names:?}");
    Ok(())
}
