//! `docker version`, `info`, `load`, `images` and `run` against the engine.

use std::time::Duration;

use rmachine_tests_engine::{require_root, Engine};

#[test]
fn version_and_info_describe_the_engine() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let engine = Engine::start()?;
    let version = engine.docker(&["version"])?.ok()?;
    assert!(
        version.stdout.contains("Server: rmachine-engine"),
        "{}",
        version.stdout
    );
    assert!(
        version
            .stdout
            .contains("API version:      1.45 (minimum version 1.24)"),
        "{}",
        version.stdout
    );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let info = engine.docker(&["info"])?.ok()?;
    assert!(
        info.stdout
            .contains(&format!("Kernel Version: {}", kernel.trim())),
        "{}",
        info.stdout
    );
    assert!(
        info.stdout.contains("Storage Driver: overlay2"),
        "{}",
        info.stdout
    );
    let root = engine.data_root();
    assert!(
        info.stdout
            .contains(&format!("Docker Root Dir: {}", root.display())),
        "{}",
        info.stdout
    );
    assert!(info.stdout.contains("purpose=test"), "{}", info.stdout);
    assert!(!info.stderr.contains("ERROR"), "{}", info.stderr);
    Ok(())
}

#[test]
fn load_then_images_lists_busybox() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let images = engine
        .docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"])?
        .ok()?;
    assert_eq!(images.stdout.trim(), "busybox:latest");
    Ok(())
}

#[test]
fn run_prints_output_and_passes_exit_codes_through() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let run = engine
        .docker(&["run", "--rm", "busybox", "echo", "hello"])?
        .ok()?;
    assert_eq!(run.stdout, "hello\n");
    let run = engine.docker(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo oops >&2; exit 3",
    ])?;
    assert_eq!(run.code, 3);
    assert_eq!(run.stderr, "oops\n");
    // --rm removed both containers.
    let ps = engine.docker(&["ps", "-aq"])?.ok()?;
    assert_eq!(ps.stdout, "");
    Ok(())
}

#[test]
fn run_of_a_missing_command_fails_like_docker() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let run = engine.docker(&["run", "--name", "bad", "busybox", "nope"])?;
    assert_eq!(run.code, 127, "{run:?}");
    assert!(
        run.stderr
            .contains("exec: \"nope\": executable file not found in $PATH: unknown"),
        "{}",
        run.stderr
    );
    let state = engine
        .docker(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            "bad",
        ])?
        .ok()?;
    assert_eq!(state.stdout.trim(), "created 127");
    Ok(())
}

#[test]
fn missing_image_and_container_are_404s_with_docker_messages() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let engine = Engine::start()?;
    let run = engine.docker(&["create", "--pull", "never", "busybox", "true"])?;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("No such image: busybox:latest"),
        "{}",
        run.stderr
    );
    let run = engine.docker(&["inspect", "nosuch"])?;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("No such object: nosuch")
            || run.stderr.contains("No such container: nosuch"),
        "{}",
        run.stderr
    );
    Ok(())
}

#[test]
fn stdin_is_forwarded_to_the_container() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let run = engine
        .docker_with_input(
            &["run", "-i", "--rm", "busybox", "cat"],
            b"piped text\nsecond line\n",
        )?
        .ok()?;
    assert_eq!(run.stdout, "piped text\nsecond line\n");
    Ok(())
}

#[test]
fn tty_containers_stream_raw_output() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let run = engine
        .docker(&[
            "run",
            "-t",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "test -t 1 && echo tty",
        ])?
        .ok()?;
    // The PTY turns "\n" into "\r\n".
    assert_eq!(run.stdout, "tty\r\n");
    Ok(())
}

#[test]
fn names_conflict_like_docker() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let id = engine
        .docker(&["create", "--name", "web", "busybox", "true"])?
        .ok()?
        .stdout;
    let run = engine.docker(&["create", "--name", "web", "busybox", "true"])?;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains(&format!(
            "Conflict. The container name \"/web\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
            id.trim()
        )),
        "{}",
        run.stderr
    );
    engine.wait_for(
        &["ps", "-a", "--format", "{{.Names}} {{.Status}}"],
        Duration::from_secs(5),
        |r| r.stdout.trim() == "web Created",
    )?;
    engine.docker(&["rename", "web", "web2"])?.ok()?;
    let names = engine
        .docker(&["ps", "-a", "--format", "{{.Names}}"])?
        .ok()?;
    assert_eq!(names.stdout.trim(), "web2");
    // The old name is free again.
    engine
        .docker(&["create", "--name", "web", "busybox", "true"])?
        .ok()?;
    Ok(())
}

#[test]
fn large_output_arrives_complete_and_in_order() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let run = engine
        .docker(&["run", "--rm", "busybox", "seq", "1", "100000"])?
        .ok()?;
    let expected: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    assert!(
        run.stdout == expected,
        "output differs ({} bytes)",
        run.stdout.len()
    );
    Ok(())
}

#[test]
fn run_rm_of_a_missing_command_removes_the_container() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let run = engine.docker(&["run", "--rm", "busybox", "nope"])?;
    assert_eq!(run.code, 127, "{run:?}");
    let ps = engine.docker(&["ps", "-aq"])?.ok()?;
    assert_eq!(ps.stdout, "");
    Ok(())
}

#[test]
fn images_in_use_are_protected_and_rm_force_kills() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let id = engine
        .docker(&["run", "-d", "busybox", "sleep", "1000"])?
        .ok()?
        .stdout;
    let id = id.trim();
    // Named by its only tag: dockerd's "must force" (by id it is the hard "running
    // container" conflict, see image_tag_history.rs).
    let rmi = engine.docker(&["rmi", "busybox"])?;
    assert_ne!(rmi.code, 0);
    assert!(
        rmi.stderr.contains(&format!(
            "conflict: unable to remove repository reference \"busybox\" (must force) - container {} is using its referenced image",
            &id[..12]
        )),
        "{}",
        rmi.stderr
    );
    engine.docker(&["rm", "-f", id])?.ok()?;
    assert_eq!(engine.docker(&["ps", "-aq"])?.ok()?.stdout, "");
    let rmi = engine.docker(&["rmi", "busybox"])?.ok()?;
    assert!(
        rmi.stdout.contains("Untagged: busybox:latest"),
        "{}",
        rmi.stdout
    );
    assert_eq!(engine.docker(&["images", "-q"])?.ok()?.stdout, "");
    Ok(())
}

#[test]
fn loading_a_broken_archive_fails_with_the_reason() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let engine = Engine::start()?;
    let bad = engine.dir().join("bad.tar");
    std::fs::write(&bad, b"this is not a tar archive")?;
    let run = engine.docker(&["load", "-i", &bad.to_string_lossy()])?;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("invalid image archive"),
        "{}",
        run.stderr
    );
    Ok(())
}

#[test]
fn user_workdir_env_and_hostname_reach_the_process() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let run = engine
        .docker(&[
            "run",
            "--rm",
            "-u",
            "nobody",
            "-w",
            "/tmp/work",
            "-e",
            "FOO=bar",
            "-h",
            "myhost",
            "busybox",
            "sh",
            "-c",
            "id -u; id -g; pwd; echo $FOO $HOME; hostname",
        ])?
        .ok()?;
    assert_eq!(run.stdout, "65534\n65534\n/tmp/work\nbar /home\nmyhost\n");
    // Without -h the hostname is the short container id.
    let run = engine
        .docker(&[
            "run",
            "--name",
            "named",
            "busybox",
            "sh",
            "-c",
            "hostname; echo $HOME",
        ])?
        .ok()?;
    let id = engine
        .docker(&["inspect", "-f", "{{.Id}}", "named"])?
        .ok()?
        .stdout;
    assert_eq!(run.stdout, format!("{}\n/root\n", &id[..12]));
    Ok(())
}
