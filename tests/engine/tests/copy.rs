//! `docker cp` into a `--read-only` root (daemon/archive_unix.go) and out of a running
//! container's `/` (daemon/containerfs_linux.go).

use std::time::{Duration, Instant};

use rmachine_tests_engine::Engine;

#[test]
fn cp_into_a_read_only_root_is_refused_with_dockers_message() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let file = engine.dir().join("note.txt");
    std::fs::write(&file, "hello\n")?;
    let file = file.to_string_lossy().into_owned();
    engine
        .docker(&[
            "run",
            "-d",
            "--read-only",
            "--tmpfs",
            "/run",
            "--name",
            "ro",
            "busybox",
            "sleep",
            "1000",
        ])?
        .ok()?;
    engine
        .docker(&["create", "--read-only", "--name", "ro-stopped", "busybox"])?
        .ok()?;
    for target in ["ro:/tmp", "ro:/", "ro-stopped:/tmp", "ro:/run"] {
        let cp = engine.docker(&["cp", &file, target])?;
        assert_eq!(cp.code, 1, "{target}: {cp:?}");
        assert_eq!(
            cp.stderr.trim_end(),
            "Error response from daemon: container rootfs is marked read-only",
            "{target}"
        );
    }
    // Nothing was written.
    let ls = engine.docker(&["exec", "ro", "ls", "/tmp"])?.ok()?;
    assert_eq!(ls.stdout, "");
    // Reading is still allowed.
    let out = engine
        .docker_command(&["cp", "ro:/etc/passwd", "-"])
        .output()?;
    assert!(out.status.success(), "{out:?}");
    Ok(())
}

#[test]
fn cp_of_a_running_containers_root_leaves_the_kernel_views_empty() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    engine
        .docker(&[
            "run",
            "-d",
            "--tmpfs",
            "/scratch",
            "--name",
            "live",
            "busybox",
            "sh",
            "-c",
            "echo kept > /kept; echo gone > /scratch/x; sleep 1000",
        ])?
        .ok()?;
    engine.wait_for(
        &["exec", "live", "cat", "/kept"],
        Duration::from_secs(5),
        |r| r.stdout == "kept\n",
    )?;
    let started = Instant::now();
    let out = engine.docker_command(&["cp", "live:/", "-"]).output()?;
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let mut archive = tar::Archive::new(&out.stdout[..]);
    let mut names = Vec::new();
    for entry in archive.entries()? {
        let entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        // The archive is rooted at the base name of `/`; compare paths inside it.
        let inside = name
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_string();
        names.push(inside);
    }
    let has = |n: &str| names.iter().any(|x| x.trim_end_matches('/') == n);
    for expected in [
        "bin/busybox",
        "kept",
        "etc/hostname",
        "proc",
        "sys",
        "dev",
        "scratch",
    ] {
        assert!(has(expected), "{expected} missing from {names:?}");
    }
    for mount in ["proc/", "sys/", "dev/", "scratch/"] {
        let inside: Vec<&String> = names
            .iter()
            .filter(|n| n.starts_with(mount) && n.len() > mount.len())
            .collect();
        assert!(inside.is_empty(), "{mount} has {inside:?}");
    }
    // Asking for a kernel view itself gives its empty directory.
    let proc = engine.docker_command(&["cp", "live:/proc", "-"]).output()?;
    assert!(proc.status.success(), "{proc:?}");
    let mut archive = tar::Archive::new(&proc.stdout[..]);
    let count = archive.entries()?.count();
    assert_eq!(count, 1);
    // What is inside those mounts is not part of that view.
    for inside in [
        "/proc/1/status",
        "/proc/self/",
        "/sys/kernel",
        "/dev/null",
        "/scratch/x",
    ] {
        let cp = engine.docker(&["cp", &format!("live:{inside}"), "-"])?;
        assert_eq!(cp.code, 1, "{inside}");
        assert!(
            cp.stderr.contains(&format!(
                "Could not find the file {inside} in container live"
            )) || cp
                .stderr
                .contains(&format!("No such container:path: live:{inside}")),
            "{inside}: {}",
            cp.stderr
        );
    }
    Ok(())
}
