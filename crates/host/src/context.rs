//! A `docker context` per machine, for users who switch with `docker context use NAME`
//! rather than `eval $(rmachine env NAME)`.
//!
//! The context is written straight into the Docker CLI's context store (no `docker` binary
//! needed): `$DOCKER_CONFIG` (default `~/.docker`) `/contexts/meta/<sha256(name)>/meta.json`
//! with the engine's `tcp://` URL, and the machine's client certificate, key and CA in
//! `contexts/tls/<sha256(name)>/docker/`. It is rewritten after every boot (the forwarded port
//! can change) and removed with the machine. A context of the same name that rmachine did not
//! write is left alone. A machine named `default` (docker-machine's conventional name) gets
//! none: the CLI reserves that context name for its local engine, so `docker context use
//! default` could never reach the machine; `rmachine env default` is the way there.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::store::{write_atomic, StoreError};

/// What can go wrong with a machine's docker context.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// A context file could not be read, written or removed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No `$DOCKER_CONFIG` and no home directory.
    #[error("cannot find the docker configuration directory: set DOCKER_CONFIG")]
    NoConfigDir,
    /// A context of this name exists and was not made by rmachine.
    #[error("docker context {name:?} exists and was not made by rmachine; left as it is")]
    NotOurs {
        /// The context.
        name: String,
    },
}

/// The Docker CLI's configuration directory: `$DOCKER_CONFIG`, else `~/.docker`.
pub fn docker_config_dir() -> Result<PathBuf, ContextError> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    directories::BaseDirs::new()
        .map(|dirs| dirs.home_dir().join(".docker"))
        .ok_or(ContextError::NoConfigDir)
}

fn description(machine: &str) -> String {
    format!("rmachine machine {machine}")
}

fn id(name: &str) -> String {
    hex::encode(Sha256::digest(name.as_bytes()))
}

fn meta_dir(config_dir: &Path, name: &str) -> PathBuf {
    config_dir.join("contexts/meta").join(id(name))
}

fn tls_dir(config_dir: &Path, name: &str) -> PathBuf {
    config_dir.join("contexts/tls").join(id(name))
}

/// Whether the context `name` does not exist or was written by rmachine for that machine.
/// The context name the docker CLI keeps for its local engine.
const RESERVED: &str = "default";

fn ours_or_absent(config_dir: &Path, name: &str) -> bool {
    let Ok(text) = std::fs::read(meta_dir(config_dir, name).join("meta.json")) else {
        return true;
    };
    let Ok(meta) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return false;
    };
    meta["Metadata"]["Description"] == description(name).as_str()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ContextError + '_ {
    move |source| {
        ContextError::Store(StoreError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Writes (or rewrites) the context `name` for the engine at `host` (`tcp://IP:PORT`), with the
/// `ca.pem`, `cert.pem` and `key.pem` of `cert_dir`.
pub fn write(
    config_dir: &Path,
    name: &str,
    host: &str,
    cert_dir: &Path,
) -> Result<(), ContextError> {
    if name == RESERVED {
        return Ok(());
    }
    if !ours_or_absent(config_dir, name) {
        return Err(ContextError::NotOurs {
            name: name.to_owned(),
        });
    }
    let tls = tls_dir(config_dir, name).join("docker");
    std::fs::create_dir_all(&tls).map_err(io(&tls))?;
    for (file, private) in [("ca.pem", false), ("cert.pem", false), ("key.pem", true)] {
        let from = cert_dir.join(file);
        let bytes = std::fs::read(&from).map_err(io(&from))?;
        write_atomic(&tls.join(file), &bytes, private)?;
    }
    let meta = serde_json::json!({
        "Name": name,
        "Metadata": { "Description": description(name) },
        "Endpoints": { "docker": { "Host": host, "SkipTLSVerify": false } },
    });
    let dir = meta_dir(config_dir, name);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    write_atomic(&dir.join("meta.json"), meta.to_string().as_bytes(), false)?;
    Ok(())
}

/// Removes the context `name` if rmachine wrote it; a missing context is not an error.
pub fn remove(config_dir: &Path, name: &str) -> Result<(), ContextError> {
    if !ours_or_absent(config_dir, name) {
        return Err(ContextError::NotOurs {
            name: name.to_owned(),
        });
    }
    for dir in [meta_dir(config_dir, name), tls_dir(config_dir, name)] {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&dir)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docker(config: &Path, args: &[&str]) -> std::process::Output {
        std::process::Command::new("docker")
            .args(args)
            .env("DOCKER_CONFIG", config)
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .output()
            .expect("the docker CLI runs")
    }

    #[test]
    fn a_machine_named_default_gets_no_context() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let config = tmp.path().join("docker");
        let certs = tmp.path().join("default");
        std::fs::create_dir_all(&certs).expect("certs");
        for file in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(certs.join(file), format!("{file}\n")).expect("pem");
        }
        write(&config, "default", "tcp://127.0.0.1:42376", &certs).expect("write");
        let out = docker(&config, &["context", "ls", "--format", "{{.Name}}"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "default\n");
        assert!(!meta_dir(&config, "default").exists());
    }

    #[test]
    fn the_docker_cli_reads_the_context_and_rm_takes_only_ours() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let config = tmp.path().join("docker");
        let certs = tmp.path().join("m1");
        std::fs::create_dir_all(&certs).expect("certs");
        for file in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(certs.join(file), format!("{file}\n")).expect("pem");
        }
        write(&config, "m1", "tcp://127.0.0.1:42376", &certs).expect("write");

        let out = docker(
            &config,
            &[
                "context",
                "ls",
                "--format",
                "{{.Name}}|{{.DockerEndpoint}}|{{.Description}}|{{.Error}}",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("\nm1|tcp://127.0.0.1:42376|rmachine machine m1|\n"),
            "{text}"
        );
        let out = docker(
            &config,
            &[
                "context",
                "inspect",
                "m1",
                "--format",
                "{{.TLSMaterial.docker}}",
            ],
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "[ca.pem cert.pem key.pem]\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tls = tls_dir(&config, "m1").join("docker");
        assert_eq!(
            std::fs::read_to_string(tls.join("key.pem")).expect("key"),
            "key.pem\n"
        );

        // A context the user made under another machine's name is not touched.
        let out = docker(
            &config,
            &[
                "context",
                "create",
                "m2",
                "--docker",
                "host=tcp://10.0.0.1:2376",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(matches!(
            remove(&config, "m2"),
            Err(ContextError::NotOurs { .. })
        ));
        remove(&config, "m1").expect("remove");
        let out = docker(&config, &["context", "ls", "--format", "{{.Name}}"]);
        let names = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(names, "default\nm2\n");
    }
}
