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
    write_tls_files(
        dir,
        &config.ca_pem,
        &config.server_cert_pem,
        &config.server_key_pem,
    )
}

/// Writes the three TLS files into `dir`, the key first: a running engine that reloads
/// between two of these writes then sees a new key with the old certificate, which it refuses
/// (keeping the pair in service), never an old key it would pair with a new certificate.
fn write_tls_files(dir: &Path, ca: &str, cert: &str, key: &str) -> Result<(), ConfigError> {
    write_file(&dir.join("server-key.pem"), key.as_bytes(), 0o600)?;
    write_file(&dir.join("server.pem"), cert.as_bytes(), 0o644)?;
    write_file(&dir.join("ca.pem"), ca.as_bytes(), 0o644)
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

/// The file beside the saved configuration copy naming (SHA-256 of its DER, hex) the
/// certificate the configuration drive held when `install-tls` put another one in service:
/// a reboot the guest starts itself reads that same drive again (the hypervisor keeps the one
/// it started with), and must not go back to its certificate ([`boot_config`]).
pub const SUPERSEDED_FILE: &str = "superseded-server-cert.sha256";

/// SHA-256 (hex) of the DER of the first certificate in `pem`, if it holds one.
pub fn cert_fingerprint(pem: &str) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    use sha2::Digest;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(hex::encode(sha2::Sha256::digest(der.as_ref())))
}

/// `rmachine-init install-tls`: the host's new TLS files replace the engine's in `dir` (the key
/// first: the engine refuses a certificate whose key does not match, so it serves the old pair
/// until both are in place), and the copy of the configuration in `saved` if there is one, so
/// that a boot uses them too: beside the copy, [`SUPERSEDED_FILE`] names the certificate they
/// replaced (the one the configuration drive of this boot holds; an earlier record is kept),
/// so that a reboot reading that drive again keeps the installed files ([`boot_config`]).
/// Nothing is written unless all three files are PEM of the right kind and the key goes with
/// the certificate.
///
/// The engine's files are what counts: once they are replaced, a failure to update the saved
/// copy or the record (a full or read-only data disk) does not fail the install, as the engine
/// serves the new certificate; it is returned as `Ok(Some(error))` for a warning (the next
/// boot then reads the drive's certificate, and the host notices the difference and reissues).
pub fn install_tls(
    files: &TlsFiles,
    dir: &Path,
    saved: &Path,
) -> Result<Option<ConfigError>, ConfigError> {
    check_tls(files)?;
    let replaced = fs::read_to_string(dir.join("server.pem"))
        .ok()
        .and_then(|pem| cert_fingerprint(&pem));
    write_tls_files(
        dir,
        &files.ca_pem,
        &files.server_cert_pem,
        &files.server_key_pem,
    )?;
    let Some(mut copy) = load_copy(saved) else {
        return Ok(None);
    };
    // The record first: a copy updated without it would be dropped at a reboot.
    let record = saved.join(SUPERSEDED_FILE);
    if !record.exists() {
        if let Some(replaced) = replaced {
            if let Err(err) = write_file(&record, format!("{replaced}\n").as_bytes(), 0o600) {
                return Ok(Some(err));
            }
        }
    }
    copy.ca_pem = files.ca_pem.clone();
    copy.server_cert_pem = files.server_cert_pem.clone();
    copy.server_key_pem = files.server_key_pem.clone();
    Ok(save_copy(&copy, saved).err())
}

/// The configuration a boot with a configuration drive uses: the drive's, except that the TLS
/// files `install-tls` put in service since the drive was written (the saved copy in `saved`)
/// win while the drive still holds exactly the certificate they superseded (a reboot started
/// inside the guest reads the drive the VM was started with). Any other drive certificate is
/// newer than the installed one (the host wrote the drive with it before this boot), and the
/// record is dropped. The result is saved as the new copy.
pub fn boot_config(drive: GuestConfig, saved: &Path) -> GuestConfig {
    let record = saved.join(SUPERSEDED_FILE);
    let superseded = fs::read_to_string(&record)
        .ok()
        .map(|text| text.trim().to_owned());
    let mut config = drive;
    let keep = superseded.is_some()
        && superseded == cert_fingerprint(&config.server_cert_pem)
        && match load_copy(saved) {
            Some(copy)
                if check_tls(&TlsFiles {
                    ca_pem: copy.ca_pem.clone(),
                    server_cert_pem: copy.server_cert_pem.clone(),
                    server_key_pem: copy.server_key_pem.clone(),
                })
                .is_ok() =>
            {
                config.ca_pem = copy.ca_pem;
                config.server_cert_pem = copy.server_cert_pem;
                config.server_key_pem = copy.server_key_pem;
                true
            }
            _ => false,
        };
    if keep {
        tracing::info!(
            "config: using the TLS files installed since the configuration drive was written"
        );
    } else if superseded.is_some() {
        if let Err(err) = fs::remove_file(&record) {
            tracing::warn!("config: {}: {err}", record.display());
        }
    }
    if let Err(err) = save_copy(&config, saved) {
        tracing::warn!("config: {err}");
    }
    config
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

        assert!(install_tls(&read, &dir, &saved)
            .expect("installed")
            .is_none());
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

    /// A CA in `certs` and `n` server certificates it issued.
    fn issued(certs: &Path, n: usize) -> (String, Vec<rmachine_host::certs::ServerCert>) {
        rmachine_host::certs::bootstrap(certs, &mut |_| {}).expect("a CA");
        let ca = fs::read_to_string(certs.join("ca.pem")).expect("the CA");
        let servers = (0..n)
            .map(|_| rmachine_host::certs::server_cert(certs, "m", &[]).expect("a certificate"))
            .collect();
        (ca, servers)
    }

    fn drive_with(ca: &str, server: &rmachine_host::certs::ServerCert) -> GuestConfig {
        GuestConfig {
            format_version: 1,
            hostname: "m".into(),
            ca_pem: ca.into(),
            server_cert_pem: server.cert_pem.clone(),
            server_key_pem: server.key_pem.clone(),
            authorized_keys: vec!["ssh-ed25519 AAAA k".into()],
            engine: Default::default(),
            shares: Vec::new(),
            network: None,
        }
    }

    fn files_of(ca: &str, server: &rmachine_host::certs::ServerCert) -> TlsFiles {
        TlsFiles {
            ca_pem: ca.into(),
            server_cert_pem: server.cert_pem.clone(),
            server_key_pem: server.key_pem.clone(),
        }
    }

    #[test]
    fn a_reboot_reading_the_drive_it_started_with_keeps_the_installed_certificate() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (ca, servers) = issued(&tmp.path().join("certs"), 4);
        let [a, b, c, d] = &servers[..] else {
            unreachable!()
        };
        let (dir, saved) = (tmp.path().join("tls"), tmp.path().join("config"));
        // The VM starts with a drive holding `a`.
        let drive = drive_with(&ca, a);
        let booted = boot_config(drive.clone(), &saved);
        assert_eq!(booted, drive);
        write_tls(&booted, &dir).expect("written");
        // Two live installs while it runs: the record names `a`, the drive's.
        assert!(install_tls(&files_of(&ca, b), &dir, &saved)
            .expect("installed")
            .is_none());
        assert!(install_tls(&files_of(&ca, c), &dir, &saved)
            .expect("installed")
            .is_none());
        let record = saved.join(SUPERSEDED_FILE);
        assert_eq!(
            fs::read_to_string(&record).expect("recorded").trim(),
            cert_fingerprint(&a.cert_pem).expect("a certificate")
        );
        // A reboot from inside reads the same drive: the installed files win, twice.
        for _ in 0..2 {
            let rebooted = boot_config(drive.clone(), &saved);
            assert_eq!(rebooted.server_cert_pem, c.cert_pem);
            assert_eq!(rebooted.server_key_pem, c.key_pem);
            assert_eq!(rebooted.authorized_keys, drive.authorized_keys);
        }
        // The host started it with a drive written since: the drive wins, the record goes.
        let newer = drive_with(&ca, d);
        assert_eq!(boot_config(newer.clone(), &saved), newer);
        assert!(!record.exists());
        assert_eq!(
            load_copy(&saved).expect("saved").server_cert_pem,
            d.cert_pem
        );
        // And with no record, the drive is what counts, whatever the copy says.
        assert_eq!(boot_config(drive.clone(), &saved), drive);
    }

    #[test]
    fn a_saved_copy_that_cannot_be_updated_is_a_warning_once_the_engine_has_the_files() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (ca, servers) = issued(&tmp.path().join("certs"), 2);
        let (dir, saved) = (tmp.path().join("tls"), tmp.path().join("config"));
        let drive = drive_with(&ca, &servers[0]);
        write_tls(&boot_config(drive, &saved), &dir).expect("written");
        // The copy's temporary file cannot be made (as a full or read-only disk would refuse).
        fs::create_dir(saved.join("rmachine-guest-config.tmp")).expect("a directory");
        let warning = install_tls(&files_of(&ca, &servers[1]), &dir, &saved)
            .expect("the engine's files were replaced")
            .expect("a warning");
        assert!(
            warning.to_string().contains("rmachine-guest-config"),
            "{warning}"
        );
        assert_eq!(
            fs::read_to_string(dir.join("server.pem")).expect("written"),
            servers[1].cert_pem
        );
    }
}
