//! Debian's docker-compose 1.29 (docker-py) against the engine: a two-service project on its
//! own network, a web server on a published port that reaches the other service by name, and
//! `down` leaving no container, network or rule behind.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rmachine_tests_engine::{cannot_run, Engine};

const COMPOSE: &str = r#"version: "3"
services:
  db:
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && echo answer from db > /www/index.html && exec httpd -f -p 80 -h /www"]
  web:
    image: busybox
    ports: ["8088:80"]
    command:
      - sh
      - -c
      - |
        until printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 db 80 > /tmp/r && grep -q 'answer from db' /tmp/r; do sleep 0.2; done
        mkdir -p /www && grep 'answer from db' /tmp/r > /www/index.html
        exec httpd -f -p 80 -h /www
"#;

fn compose(engine: &Engine, dir: &std::path::Path, args: &[&str]) -> Result<String> {
    let out = Command::new("docker-compose")
        .current_dir(dir)
        .env("DOCKER_HOST", format!("unix://{}", engine.socket.display()))
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        // This machine's CA bundles would replace docker-py's own settings.
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .args(["-p", "demo"])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "docker-compose {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn compose_brings_up_two_services_on_the_project_network_and_down_removes_all() -> Result<()> {
    if Command::new("docker-compose")
        .arg("version")
        .output()
        .is_err()
    {
        cannot_run("docker-compose is not installed (apt-get install docker-compose)");
        return Ok(());
    }
    let Some(engine) = Engine::with_busybox()? else {
        return Ok(());
    };
    let dir = engine.dir().join("project");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("docker-compose.yml"), COMPOSE)?;
    compose(&engine, &dir, &["up", "-d"])?;
    let body = engine.netns.run(|| -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = (|| -> Result<String> {
                let mut s = TcpStream::connect("127.0.0.1:8088")?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            })();
            match got {
                Ok(out) if out.contains("answer from db") => return Ok(out),
                _ if Instant::now() > deadline => bail!("web never answered: {got:?}"),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    })??;
    assert!(body.contains("answer from db"), "{body}");
    let networks = engine
        .docker(&["network", "ls", "--format", "{{.Name}}"])?
        .ok()?
        .stdout;
    assert!(networks.lines().any(|n| n == "demo_default"), "{networks}");

    compose(&engine, &dir, &["down"])?;
    assert_eq!(engine.docker(&["ps", "-aq"])?.ok()?.stdout, "");
    let networks = engine
        .docker(&["network", "ls", "--format", "{{.Name}}"])?
        .ok()?
        .stdout;
    assert!(!networks.contains("demo_default"), "{networks}");
    let links = engine.netns.command("ip").args(["-o", "link"]).output()?;
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("br-") && !links.contains("veth"), "{links}");
    let rules = engine
        .netns
        .command("nft")
        .args(["list", "ruleset"])
        .output()?;
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(!rules.contains("masquerade"), "{rules}");
    Ok(())
}
