//! The TCP listener: mutual TLS only.

use rmachine_tests_engine::{require_root, Engine};

#[test]
fn docker_with_a_client_certificate_works_over_tls() -> anyhow::Result<()> {
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let run = engine
        .docker_tls(
            &engine.certs.client_dir,
            &["run", "--rm", "busybox", "echo", "over tls"],
        )?
        .ok()?;
    assert_eq!(run.stdout, "over tls\n");
    // Stdin crosses the TLS connection and its end (close_notify) reaches the container.
    let cmd = engine.docker_tls_command(
        &engine.certs.client_dir,
        &["run", "-i", "--rm", "busybox", "wc", "-l"],
    );
    let run = rmachine_tests_engine::feed(cmd, b"a\nb\nc\n")?.ok()?;
    assert_eq!(run.stdout.trim(), "3");
    Ok(())
}

#[test]
fn a_client_without_certificate_is_refused() -> anyhow::Result<()> {
    if !require_root() {
        return Ok(());
    }
    let engine = Engine::start()?;
    let url = format!("https://127.0.0.1:{}/_ping", engine.port);
    let ca = engine.certs.ca.to_string_lossy().into_owned();
    let client = engine.certs.client_dir.clone();
    let (cert, key) = (client.join("cert.pem"), client.join("key.pem"));
    // With the client certificate the same request succeeds: the refusal below is about it.
    let with_cert = engine
        .netns
        .command("curl")
        .args(["-sS", "--max-time", "10", "--cacert", &ca, "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg(&url)
        .output()?;
    assert_eq!(String::from_utf8_lossy(&with_cert.stdout), "OK");
    let without = engine
        .netns
        .command("curl")
        .args(["-sS", "--max-time", "10", "--cacert", &ca, &url])
        .output()?;
    assert!(!without.status.success(), "{without:?}");
    assert_ne!(String::from_utf8_lossy(&without.stdout), "OK");
    // The docker CLI given only the CA is refused too.
    let ca_only = engine.dir().join("ca-only");
    std::fs::create_dir_all(&ca_only)?;
    std::fs::copy(&engine.certs.ca, ca_only.join("ca.pem"))?;
    let run = engine.docker_tls(&ca_only, &["version"])?;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(!run.stdout.contains("rmachine-engine"), "{}", run.stdout);
    Ok(())
}

#[test]
fn tcp_listener_without_tlsverify_is_refused_at_start() -> anyhow::Result<()> {
    let engine = rmachine_tests_engine::target_dir()?.join("rmachine-engine");
    let dir = tempfile::tempdir()?;
    let out = std::process::Command::new(engine)
        .arg("--data-root")
        .arg(dir.path())
        .args(["-H", "tcp://127.0.0.1:0"])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--tlsverify"), "{stderr}");
    Ok(())
}
