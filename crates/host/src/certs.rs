//! TLS certificates: the store's CA and client certificate, and each machine's engine cert.
//!
//! The CA (`certs/ca.pem`, `certs/ca-key.pem`) and the client certificate (`certs/cert.pem`,
//! `certs/key.pem`) are made once per store, as docker-machine does; every machine gets a server
//! certificate signed by that CA whose SANs cover every address a client may use to reach the
//! engine (`127.0.0.1`, `localhost`, the guest's user-network address `10.0.2.15`, the machine
//! name, and `--tls-san` extras). Copies of the CA and client files go into the machine
//! directory, which is what `DOCKER_CERT_PATH` points at. Keys are ECDSA P-256: docker's Go TLS
//! stack and rustls both accept it, and it is fast to generate.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};

use crate::store::{set_mode, write_atomic, StoreError};

/// SANs every engine certificate carries besides the machine name.
pub const DEFAULT_SANS: [&str; 3] = ["127.0.0.1", "localhost", "10.0.2.15"];

/// How long certificates are valid, counted from `notBefore` (docker-machine: 1080 days).
const VALIDITY_DAYS: i64 = 1080;

/// What can go wrong making or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or failed to sign.
    #[error("cannot generate the {what} certificate")]
    Generate {
        /// Which certificate.
        what: &'static str,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A certificate or key file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key file is not valid PEM of the expected kind.
    #[error("{path} is not a valid certificate or key")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A certificate file does not parse as X.509 in PEM.
    #[error("{path} is not a valid PEM certificate: {detail}")]
    X509 {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    /// The CA key exists without its certificate: refuse to make a new CA over it.
    #[error("{key} exists but {cert} does not; move the key away or restore the certificate")]
    OrphanCaKey {
        /// The CA key.
        key: PathBuf,
        /// The missing certificate.
        cert: PathBuf,
    },
    /// Writing a certificate or key failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The four files of `certs/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// `ca.pem`.
    pub ca: PathBuf,
    /// `ca-key.pem`.
    pub ca_key: PathBuf,
    /// `cert.pem` (client).
    pub cert: PathBuf,
    /// `key.pem` (client).
    pub key: PathBuf,
}

impl CertPaths {
    /// The files inside `certs_dir`.
    pub fn in_dir(certs_dir: &Path) -> Self {
        Self {
            ca: certs_dir.join("ca.pem"),
            ca_key: certs_dir.join("ca-key.pem"),
            cert: certs_dir.join("cert.pem"),
            key: certs_dir.join("key.pem"),
        }
    }
}

/// What [`bootstrap`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertEvent {
    /// About to create the CA at this path.
    CreatingCa,
    /// About to create the client certificate.
    CreatingClient,
}

/// A server certificate and its key, in PEM.
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
    /// The certificate in DER, as a TLS handshake presents it.
    pub cert_der: Vec<u8>,
}

fn subject(org: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, org);
    dn
}

fn user_name() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "rmachine".to_string())
}

fn base_params(org: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(org);
    // Five minutes of slack: a freshly booted VM's clock may lag the host's.
    let not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
    params.not_before = not_before;
    params.not_after = not_before + time::Duration::days(VALIDITY_DAYS);
    let serial: [u8; 16] = rand::random();
    // A positive serial: clear the top bit so DER does not read it as negative.
    let mut serial = serial.to_vec();
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params
}

fn generate_key(what: &'static str) -> Result<KeyPair, CertError> {
    KeyPair::generate().map_err(|source| CertError::Generate { what, source })
}

fn write_pem(path: &Path, pem: &str, private: bool) -> Result<(), CertError> {
    write_atomic(path, pem.as_bytes(), private)?;
    Ok(())
}

fn read(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Makes the CA and the client certificate in `certs_dir` if they are missing; `event` is
/// called before each is made so a front end can say so.
pub fn bootstrap(certs_dir: &Path, event: &mut dyn FnMut(CertEvent)) -> Result<(), CertError> {
    let paths = CertPaths::in_dir(certs_dir);
    fs::create_dir_all(certs_dir).map_err(|source| StoreError::Io {
        path: certs_dir.to_path_buf(),
        source,
    })?;
    set_mode(certs_dir, 0o700)?;
    // Two `create`s on a new store at once: the second must wait for the first's CA, not see
    // its key without the certificate (the orphan error below) or make a second CA.
    let _lock = lock_certs(certs_dir)?;
    if !paths.ca.exists() {
        if paths.ca_key.exists() {
            return Err(CertError::OrphanCaKey {
                key: paths.ca_key,
                cert: paths.ca,
            });
        }
        event(CertEvent::CreatingCa);
        let key = generate_key("CA")?;
        let mut params = base_params(&user_name());
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::CrlSign,
        ];
        let cert = params
            .self_signed(&key)
            .map_err(|source| CertError::Generate { what: "CA", source })?;
        write_pem(&paths.ca_key, &key.serialize_pem(), true)?;
        write_pem(&paths.ca, &cert.pem(), false)?;
    }
    if !paths.cert.exists() || !paths.key.exists() {
        event(CertEvent::CreatingClient);
        let issuer = load_issuer(&paths)?;
        let key = generate_key("client")?;
        let mut params = base_params(&format!("{}.<bootstrap>", user_name()));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|source| CertError::Generate {
                what: "client",
                source,
            })?;
        write_pem(&paths.key, &key.serialize_pem(), true)?;
        write_pem(&paths.cert, &cert.pem(), false)?;
    }
    Ok(())
}

/// Takes `certs/.lock`, waiting while another command holds it.
fn lock_certs(certs_dir: &Path) -> Result<fs::File, CertError> {
    let path = certs_dir.join(".lock");
    let io = |source| StoreError::Io {
        path: path.clone(),
        source,
    };
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    file.lock().map_err(io)?;
    Ok(file)
}

fn load_issuer(paths: &CertPaths) -> Result<Issuer<'static, KeyPair>, CertError> {
    let key_pem = read(&paths.ca_key)?;
    let key = KeyPair::from_pem(&key_pem).map_err(|source| CertError::Parse {
        path: paths.ca_key.clone(),
        source,
    })?;
    let ca_pem = read(&paths.ca)?;
    Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|source| CertError::Parse {
        path: paths.ca.clone(),
        source,
    })
}

/// The SAN list of machine `name`'s engine certificate: the defaults, the name, then extras,
/// without duplicates.
pub fn server_sans(name: &str, extra: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
    for san in std::iter::once(name.to_string()).chain(extra.iter().cloned()) {
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    sans
}

/// Makes machine `name`'s engine certificate, signed by the store's CA.
pub fn server_cert(
    certs_dir: &Path,
    name: &str,
    extra_sans: &[String],
) -> Result<ServerCert, CertError> {
    let paths = CertPaths::in_dir(certs_dir);
    let issuer = load_issuer(&paths)?;
    let key = generate_key("server")?;
    let mut params = CertificateParams::new(server_sans(name, extra_sans)).map_err(|source| {
        CertError::Generate {
            what: "server",
            source,
        }
    })?;
    let base = base_params(&format!("{}.{name}", user_name()));
    params.distinguished_name = base.distinguished_name;
    params.not_before = base.not_before;
    params.not_after = base.not_after;
    params.serial_number = base.serial_number;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| CertError::Generate {
            what: "server",
            source,
        })?;
    Ok(ServerCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
    })
}

/// Writes the machine's certificate files: copies of the CA and client files (for
/// `DOCKER_CERT_PATH`) and the engine's `server.pem` / `server-key.pem`.
pub fn install_machine_certs(
    certs_dir: &Path,
    machine_dir: &Path,
    server: &ServerCert,
) -> Result<(), CertError> {
    let paths = CertPaths::in_dir(certs_dir);
    write_pem(&machine_dir.join("ca.pem"), &read(&paths.ca)?, false)?;
    write_pem(&machine_dir.join("cert.pem"), &read(&paths.cert)?, false)?;
    write_pem(&machine_dir.join("key.pem"), &read(&paths.key)?, true)?;
    // Each file is replaced whole (temp file + rename), the key first: a command cut short
    // between the two leaves the old certificate, which the next command sees as not naming
    // the address and reissues, never a new certificate beside a key it does not go with.
    write_pem(&machine_dir.join("server-key.pem"), &server.key_pem, true)?;
    write_pem(&machine_dir.join("server.pem"), &server.cert_pem, false)?;
    Ok(())
}

/// One subject alternative name of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
enum San {
    /// A DNS name.
    Dns(String),
    /// An IP address (4 or 16 bytes).
    Ip(Vec<u8>),
}

/// The subject alternative names of the certificate at `path` (other kinds left out).
fn sans_of(path: &Path) -> Result<Vec<San>, CertError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let text = read(path)?;
    let bad = |detail: String| CertError::X509 {
        path: path.to_path_buf(),
        detail,
    };
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(text.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let (_, cert) = X509Certificate::from_der(&pem.contents).map_err(|e| bad(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| bad(e.to_string()))?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some(San::Dns((*dns).to_string())),
                    GeneralName::IPAddress(bytes) => Some(San::Ip(bytes.to_vec())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Whether the certificate at `path` names `ip` among its IP subject alternative names, so
/// that a client reaching the engine at that address accepts it.
pub fn covers(path: &Path, ip: std::net::IpAddr) -> Result<bool, CertError> {
    let want: Vec<u8> = match ip {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    Ok(sans_of(path)?.contains(&San::Ip(want)))
}

/// Whether the certificate at `path` names the host `dns` among its DNS subject alternative
/// names (exactly: the machine certificates this store issues carry no wildcards).
pub fn names_host(path: &Path, dns: &str) -> Result<bool, CertError> {
    Ok(sans_of(path)?.contains(&San::Dns(dns.to_string())))
}

/// Reads a PEM file for a front end that needs its text (the configuration drive).
pub fn read_pem(path: &Path) -> Result<String, CertError> {
    read(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn der_of(pem: &str) -> Vec<u8> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        pem.contents
    }

    #[test]
    fn covers_and_names_host_read_the_sans() {
        let tmp = tempfile::tempdir().unwrap();
        let certs = tmp.path().join("certs");
        bootstrap(&certs, &mut |_| {}).unwrap();
        let server = server_cert(&certs, "m", &["192.168.64.7".into()]).unwrap();
        let path = tmp.path().join("server.pem");
        std::fs::write(&path, &server.cert_pem).unwrap();
        assert!(covers(&path, "192.168.64.7".parse().unwrap()).unwrap());
        assert!(covers(&path, "127.0.0.1".parse().unwrap()).unwrap());
        assert!(!covers(&path, "192.168.64.8".parse().unwrap()).unwrap());
        // The machine's name is among its DNS names, an IP's text is not.
        assert!(names_host(&path, "m").unwrap());
        assert!(!names_host(&path, "other").unwrap());
        assert!(!names_host(&path, "192.168.64.7").unwrap());
        std::fs::write(&path, "junk").unwrap();
        assert!(covers(&path, "127.0.0.1".parse().unwrap()).is_err());
        assert!(names_host(&path, "m").is_err());
    }

    #[test]
    fn server_cert_has_sans_and_verifies_against_the_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let certs = tmp.path().join("certs");
        let mut events = Vec::new();
        bootstrap(&certs, &mut |e| events.push(e)).unwrap();
        assert_eq!(
            events,
            vec![CertEvent::CreatingCa, CertEvent::CreatingClient]
        );
        // A second bootstrap finds everything and makes nothing.
        bootstrap(&certs, &mut |e| events.push(e)).unwrap();
        assert_eq!(events.len(), 2);

        let server =
            server_cert(&certs, "intro", &["10.1.2.3".into(), "dev.example".into()]).unwrap();
        let der = der_of(&server.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(ip) => ips.push(ip.to_vec()),
                _ => {}
            }
        }
        assert_eq!(dns, vec!["localhost", "intro", "dev.example"]);
        assert_eq!(
            ips,
            vec![vec![127, 0, 0, 1], vec![10, 0, 2, 15], vec![10, 1, 2, 3]]
        );

        // notBefore is a few minutes in the past, for guests whose clock lags.
        let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
        let nb = cert.validity().not_before.timestamp();
        assert!(
            now - nb >= 290 && now - nb < 400,
            "notBefore {nb} vs now {now}"
        );

        let ca_der = der_of(&fs::read_to_string(certs.join("ca.pem")).unwrap());
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        assert!(ca.is_ca());
        cert.verify_signature(Some(ca.public_key())).unwrap();
        let client_der = der_of(&fs::read_to_string(certs.join("cert.pem")).unwrap());
        let (_, client) = X509Certificate::from_der(&client_der).unwrap();
        client.verify_signature(Some(ca.public_key())).unwrap();

        // A CA made elsewhere does not validate it.
        let other = tempfile::tempdir().unwrap();
        bootstrap(other.path(), &mut |_| {}).unwrap();
        let other_der = der_of(&fs::read_to_string(other.path().join("ca.pem")).unwrap());
        let (_, other_ca) = X509Certificate::from_der(&other_der).unwrap();
        assert!(cert.verify_signature(Some(other_ca.public_key())).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn key_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let certs = tmp.path().join("certs");
        bootstrap(&certs, &mut |_| {}).unwrap();
        let machine = tmp.path().join("m");
        fs::create_dir(&machine).unwrap();
        let server = server_cert(&certs, "m", &[]).unwrap();
        install_machine_certs(&certs, &machine, &server).unwrap();
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(certs.join("ca-key.pem")), 0o600);
        assert_eq!(mode(certs.join("key.pem")), 0o600);
        assert_eq!(mode(machine.join("key.pem")), 0o600);
        assert_eq!(mode(machine.join("server-key.pem")), 0o600);
        assert_eq!(mode(certs.clone()), 0o700);
        assert_eq!(
            fs::read(certs.join("cert.pem")).unwrap(),
            fs::read(machine.join("cert.pem")).unwrap()
        );
    }

    #[test]
    fn bootstraps_at_once_make_one_ca() {
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let certs = dir.path().join("certs");
                std::thread::spawn(move || bootstrap(&certs, &mut |_| {}))
            })
            .collect();
        for thread in threads {
            thread.join().unwrap().unwrap();
        }
        let paths = CertPaths::in_dir(&dir.path().join("certs"));
        let client = read(&paths.cert).unwrap();
        let ca = der_of(&read(&paths.ca).unwrap());
        let (_, ca) = x509_parser::parse_x509_certificate(&ca).unwrap();
        let client = der_of(&client);
        let (_, client) = x509_parser::parse_x509_certificate(&client).unwrap();
        assert_eq!(client.issuer(), ca.subject());
        client.verify_signature(Some(ca.public_key())).unwrap();
    }

    #[test]
    fn orphan_ca_key_is_not_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("ca-key.pem"), "KEY").unwrap();
        let err = bootstrap(tmp.path(), &mut |_| {}).unwrap_err();
        assert!(matches!(err, CertError::OrphanCaKey { .. }));
        assert_eq!(fs::read(tmp.path().join("ca-key.pem")).unwrap(), b"KEY");
    }
}
