//! Applying the host's configuration: hostname, TLS files for the engine, SSH keys.
//!
//! The configuration comes from the configuration drive on every boot (the host rewrites it
//! before each start). A copy is kept on the data disk so that a guest booted without the
//! drive (e.g. by hand) still has its certificates and keys.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rmachine_guest_config::{GuestConfig, TlsFiles};
use russh::keys::PublicKey;

/// Directory of the engine's TLS files (internals.md, "Guest filesystem").
pub const TLS_DIR: &str = "/run/rmachine/tls";

/// What can go wrong applying the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// TLS files handed over by the host are not usable.
    #[error("the {file} given is not usable: {reason}")]
    BadTls {
        /// Which file.
        file: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The host's TLS files could not be read from stdin.
    #[error("cannot read the TLS files from stdin")]
    ReadTls {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the hostname.
    #[error("cannot set hostname {hostname:?}")]
    Hostname {
        /// The name.
        hostname: String,
        /// The errno.
        #[source]
        source: nix::errno::Errno,
    },
}

/// Writes `contents` to `path` with `mode`, atomically (temp file + rename).
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), ConfigError> {
    let write_err = |source| ConfigError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(write_err)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(write_err)?;
    // The mode given to open() is filtered by the umask; set it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(write_err)?;
    file.write_all(contents).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    fs::rename(&tmp, path).map_err(write_err)
}

/// `/etc/hosts` for a machine name.
pub fn hosts_file(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )
}

/// Whether a name is acceptable as a hostname (RFC 1123 labels, at most 64 bytes for uname).
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Sets the hostname and writes `/etc/hostname` and `/etc/hosts`.
pub fn apply_hostname(hostname: &str, etc: &Path) -> Result<(), ConfigError> {
    nix::unistd::sethostname(hostname).map_err(|source| ConfigError::Hostname {
        hostname: hostname.to_owned(),
        source,
    })?;
    write_file(
        &etc.join("hostname"),
        format!("{hostname}\n").as_bytes(),
        0o644,
    )?;
    write_file(&etc.join("hosts"), hosts_file(hostname).as_bytes(), 0o644)
}

/// Writes the engine's TLS files: `ca.pem`, `server.pem` (0644) and `server-key.pem` (0600).
pub fn write_tls(config: &GuestConfig, dir: &Path) -> Result<(), ConfigError> {
    write_file(&dir.join("ca.pem"), config.ca_pem.as_bytes(), 0o644)?;
    write_file(
        &dir.join("server.pem"),
        config.server_cert_pem.as_bytes(),
        0o644,
    )?;
    write_file(
        &dir.join("server-key.pem"),
        config.server_key_pem.as_bytes(),
        0o600,
    )
}

/// Checks that the host's TLS files are PEM of the right kind and that the server key is the
/// one its certificate names (compared by public key; a key whose public key cannot be worked
/// out is refused too), so a pair the engine would refuse is never written.
pub fn check_tls(files: &TlsFiles) -> Result<(), ConfigError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |file, reason: String| ConfigError::BadTls { file, reason };
    for (file, pem) in [
        ("CA certificate", &files.ca_pem),
        ("server certificate", &files.server_cert_pem),
    ] {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(file, e.to_string()))?;
        if certs.is_empty() {
            return Err(bad(file, "no certificate in it".to_string()));
        }
    }
    let key = PrivateKeyDer::from_pem_slice(files.server_key_pem.as_bytes())
        .map_err(|e| bad("server key", e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(files.server_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("server certificate", e.to_string()))?;
    let signer = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad("server key", e.to_string()))?;
    rustls::sign::CertifiedKey::new(chain, signer)
        .keys_match()
        .map_err(|e| {
            bad(
                "server key",
                format!("it does not go with the server certificate: {e}"),
            )
        })
}

/// `rmachine-init install-tls`: the host's new TLS files replace the engine's in `dir` (the key
/// first: the engine refuses a certificate whose key does not match, so it serves the old pair
/// until both are in place), and the copy of the configuration in `saved` if there is one, so
/// that a boot without the configuration drive uses them too. Nothing is written unless all
/// three files are PEM of the right kind.
pub fn install_tls(files: &TlsFiles, dir: &Path, saved: &Path) -> Result<(), ConfigError> {
    check_tls(files)?;
    write_file(
        &dir.join("server-key.pem"),
        files.server_key_pem.as_bytes(),
        0o600,
    )?;
    write_file(
        &dir.join("server.pem"),
        files.server_cert_pem.as_bytes(),
        0o644,
    )?;
    write_file(&dir.join("ca.pem"), files.ca_pem.as_bytes(), 0o644)?;
    if let Some(mut copy) = load_copy(saved) {
        copy.ca_pem = files.ca_pem.clone();
        copy.server_cert_pem = files.server_cert_pem.clone();
        copy.server_key_pem = files.server_key_pem.clone();
        save_copy(&copy, saved)?;
    }
    Ok(())
}

/// Reads a [`TlsFiles`] (JSON) from `input`.
pub fn read_tls_files(input: impl io::Read) -> Result<TlsFiles, ConfigError> {
    serde_json::from_reader(input).map_err(|e| match e.io_error_kind() {
        Some(_) => ConfigError::ReadTls {
            source: io::Error::other(e),
        },
        None => ConfigError::BadTls {
            file: "TLS files",
            reason: e.to_string(),
        },
    })
}

/// A line of `authorized_keys` that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadKey {
    /// 1-based position in the list.
    pub line: usize,
    /// Why it was rejected.
    pub reason: String,
}

/// Parses OpenSSH `authorized_keys` lines (options and comments allowed).
pub fn parse_authorized_keys(lines: &[String]) -> (Vec<PublicKey>, Vec<BadKey>) {
    let mut keys = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        for entry in russh::keys::ssh_key::AuthorizedKeys::new(line) {
            match entry {
                Ok(entry) => keys.push(entry.public_key().clone()),
                Err(err) => bad.push(BadKey {
                    line: i + 1,
                    reason: err.to_string(),
                }),
            }
        }
    }
    (keys, bad)
}

/// Saves the configuration on the data disk (`DIR/rmachine-guest-config.json`, 0600).
pub fn save_copy(config: &GuestConfig, dir: &Path) -> Result<(), ConfigError> {
    let path = dir.join(rmachine_guest_config::CONFIG_ENTRY);
    let json = serde_json::to_vec_pretty(config).map_err(|err| ConfigError::Write {
        path: path.clone(),
        source: io::Error::other(err),
    })?;
    write_file(&path, &json, 0o600)
}

/// Loads the copy [`save_copy`] wrote, if there is one.
pub fn load_copy(dir: &Path) -> Option<GuestConfig> {
    let json = fs::read(dir.join(rmachine_guest_config::CONFIG_ENTRY)).ok()?;
    serde_json::from_slice(&json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_names_the_machine() {
        let hosts = hosts_file("intro");
        assert!(hosts.contains("127.0.1.1\tintro\n"));
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"));
    }

    #[test]
    fn hostnames_are_checked() {
        assert!(valid_hostname("intro"));
        assert!(valid_hostname("dev-1.example"));
        assert!(!valid_hostname(""));
        assert!(!valid_hostname("-bad"));
        assert!(!valid_hostname("has space"));
        assert!(!valid_hostname(&"a".repeat(65)));
    }

    #[test]
    fn authorized_keys_accept_options_and_report_bad_lines() {
        let good = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm8FYAMHCpLXmIjaAXmh8lWZmeyNRHCqrTRMy3ZRbC2 me@host";
        let lines = vec![
            good.to_owned(),
            format!("no-pty,from=\"10.0.2.2\" {good}"),
            "# a comment".to_owned(),
            "ssh-ed25519 not-base64".to_owned(),
        ];
        let (keys, bad) = parse_authorized_keys(&lines);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].key_data(), keys[1].key_data());
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].line, 4);
    }

    #[test]
    fn tls_key_is_private() {
        let dir = std::env::temp_dir().join(format!("rmachine-init-tls-{}", std::process::id()));
        let config = GuestConfig {
            format_version: 1,
            hostname: "intro".into(),
            ca_pem: "CA".into(),
            server_cert_pem: "CERT".into(),
            server_key_pem: "KEY".into(),
            authorized_keys: vec![],
            engine: Default::default(),
            shares: Vec::new(),
            network: None,
        };
        write_tls(&config, &dir).expect("temp dir is writable");
        let mode = |name: &str| {
            fs::metadata(dir.join(name))
                .expect("file was just written")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("server-key.pem"), 0o600);
        assert_eq!(mode("ca.pem"), 0o644);
        assert_eq!(
            fs::read_to_string(dir.join("server.pem")).expect("file was just written"),
            "CERT"
        );
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn installed_tls_files_replace_the_engines_and_the_saved_copy() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let certs = tmp.path().join("certs");
        rmachine_host::certs::bootstrap(&certs, &mut |_| {}).expect("a CA");
        let server =
            rmachine_host::certs::server_cert(&certs, "m", &[]).expect("a server certificate");
        let other =
            rmachine_host::certs::server_cert(&certs, "m", &[]).expect("a server certificate");
        assert_ne!(other.key_pem, server.key_pem);
        let ca = fs::read_to_string(certs.join("ca.pem")).expect("the CA");
        let (dir, saved) = (tmp.path().join("tls"), tmp.path().join("config"));
        let old = GuestConfig {
            format_version: 1,
            hostname: "m".into(),
            ca_pem: "OLD CA".into(),
            server_cert_pem: "OLD CERT".into(),
            server_key_pem: "OLD KEY".into(),
            authorized_keys: vec!["ssh-ed25519 AAAA k".into()],
            engine: Default::default(),
            shares: Vec::new(),
            network: None,
        };
        write_tls(&old, &dir).expect("temp dir is writable");
        save_copy(&old, &saved).expect("temp dir is writable");
        let files = TlsFiles {
            ca_pem: ca.clone(),
            server_cert_pem: server.cert_pem.clone(),
            server_key_pem: server.key_pem.clone(),
        };
        let json = serde_json::to_vec(&files).expect("serializable");
        let read = read_tls_files(json.as_slice()).expect("JSON of TlsFiles");

        // Garbage in any file: nothing is written.
        for garbage in [
            TlsFiles {
                server_cert_pem: "not a certificate".into(),
                ..read.clone()
            },
            TlsFiles {
                server_key_pem: server.cert_pem.clone(),
                ..read.clone()
            },
            TlsFiles {
                ca_pem: String::new(),
                ..read.clone()
            },
            // A well-formed key of another certificate.
            TlsFiles {
                server_key_pem: other.key_pem.clone(),
                ..read.clone()
            },
        ] {
            let err = install_tls(&garbage, &dir, &saved).expect_err("refused");
            assert!(err.to_string().contains("is not usable"), "{err}");
            assert_eq!(
                fs::read_to_string(dir.join("server.pem")).expect("kept"),
                "OLD CERT"
            );
        }
        assert!(read_tls_files(&b"{\"caPem\": 1}"[..]).is_err());

        install_tls(&read, &dir, &saved).expect("installed");
        let file = |name: &str| fs::read_to_string(dir.join(name)).expect("written");
        assert_eq!(file("server.pem"), server.cert_pem);
        assert_eq!(file("server-key.pem"), server.key_pem);
        assert_eq!(file("ca.pem"), ca);
        let mode = fs::metadata(dir.join("server-key.pem"))
            .expect("written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let copy = load_copy(&saved).expect("the copy");
        assert_eq!(copy.server_cert_pem, server.cert_pem);
        assert_eq!(copy.server_key_pem, server.key_pem);
        assert_eq!(
            copy.authorized_keys, old.authorized_keys,
            "the rest is kept"
        );
        assert_eq!(
            fs::read_dir(&dir).expect("dir").count(),
            3,
            "no temp file left"
        );
    }
}
