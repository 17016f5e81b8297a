//! A real registry per test: Debian's `docker-registry` (distribution 2.8) on 127.0.0.1 with
//! a generated config, filesystem storage in a temp dir, killed when dropped. Three kinds:
//! open, htpasswd basic auth, and token auth behind [`TokenServer`], a tiny HTTP server in the
//! test process that issues ES256 JWTs signed by a key whose certificate the registry trusts.

use std::fs;
use std::io::Read;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::Engine as _;

use crate::{cannot_run, free_port};

/// The registry binary Debian's `docker-registry` package installs.
pub const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
/// The user the authenticated registries accept.
pub const USER: &str = "tester";
/// Their password.
pub const PASSWORD: &str = "s3cret-pass";
/// The `service` of the token-auth registry.
const SERVICE: &str = "rmachine-test-registry";
/// The token issuer.
const ISSUER: &str = "rmachine-test-issuer";
/// The refresh token (Docker's identity token) the issuer hands out for offline use.
pub const REFRESH_TOKEN: &str = "rmachine-test-refresh-token";

/// How a registry authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Anyone may pull and push.
    Open,
    /// HTTP basic auth against an htpasswd file ([`USER`]/[`PASSWORD`]).
    Htpasswd,
    /// Bearer tokens from a [`TokenServer`] that checks [`USER`]/[`PASSWORD`].
    Token,
}

/// True when `docker-registry` (and `htpasswd`) are installed; otherwise [`cannot_run`].
pub fn require_registry() -> bool {
    if !Path::new(REGISTRY_BINARY).exists() {
        cannot_run("Debian's docker-registry is not installed (apt-get install docker-registry)");
        return false;
    }
    if Command::new("htpasswd").arg("-h").output().is_err() {
        cannot_run("htpasswd is not installed (apt-get install apache2-utils)");
        return false;
    }
    true
}

/// A running registry.
pub struct Registry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// How it authenticates.
    pub auth: Auth,
    token: Option<TokenServer>,
    /// Serves HTTPS with a self-signed certificate for 127.0.0.1.
    tls: bool,
}

impl Registry {
    /// How many access tokens the token server issued for a refresh token (OAuth2
    /// `grant_type=refresh_token`): 0 for registries without one.
    pub fn token_refreshes(&self) -> usize {
        self.token
            .as_ref()
            .map_or(0, |t| t.refreshes.load(Ordering::SeqCst))
    }

    /// Lets anonymous callers pull from a token-auth registry from now on (a repository made
    /// public); tokens issued before keep the access they had.
    pub fn make_public(&self) {
        if let Some(token) = &self.token {
            token.public.store(true, Ordering::SeqCst);
        }
    }

    /// Gives the token issuer a new signing key and restarts the registry (same address and
    /// storage) trusting only that key: every token issued before is refused from now on, as
    /// after a key rotation or a revocation.
    pub fn rotate_token_key(&mut self) -> Result<()> {
        let token = self.token.as_ref().context("not a token-auth registry")?;
        token.rotate()?;
        self.stop();
        self.spawn()
    }

    /// Starts a registry of the given kind and waits until it answers.
    pub fn start(auth: Auth) -> Result<Registry> {
        Registry::start_with(auth, false)
    }

    /// An open registry serving HTTPS with a self-signed certificate (what dockerd reaches as
    /// an insecure registry without checking the certificate).
    pub fn start_tls() -> Result<Registry> {
        Registry::start_with(Auth::Open, true)
    }

    fn start_with(auth: Auth, tls: bool) -> Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("rmachine-registry-test")
            .tempdir()?;
        fs::create_dir_all(dir.path().join("storage"))?;
        let token = match auth {
            Auth::Token => Some(TokenServer::start(dir.path())?),
            _ => None,
        };
        let mut registry = Registry {
            child: None,
            host: format!("127.0.0.1:{}", free_port()?),
            dir,
            auth,
            token,
            tls,
        };
        if tls {
            let key = rcgen::KeyPair::generate()?;
            let cert =
                rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?.self_signed(&key)?;
            fs::write(registry.dir.path().join("tls.pem"), cert.pem())?;
            fs::write(registry.dir.path().join("tls-key.pem"), key.serialize_pem())?;
        }
        registry.spawn()?;
        Ok(registry)
    }

    fn config(&self, auth: Auth, host: &str, tls: bool) -> Result<String> {
        let storage = self.dir.path().join("storage");
        let auth_section = match auth {
            Auth::Open => String::new(),
            Auth::Htpasswd => {
                let file = self.dir.path().join("htpasswd");
                let out = Command::new("htpasswd")
                    .args(["-Bbn", USER, PASSWORD])
                    .output()
                    .context("running htpasswd")?;
                if !out.status.success() {
                    bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                fs::write(&file, &out.stdout)?;
                format!(
                    "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n",
                    file.display()
                )
            }
            Auth::Token => {
                let token = self.token.as_ref().context("token server missing")?;
                format!(
                    "auth:\n  token:\n    realm: http://{}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    token.host,
                    token.cert.display()
                )
            }
        };
        let tls_section = if tls {
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                self.dir.path().join("tls.pem").display(),
                self.dir.path().join("tls-key.pem").display()
            )
        } else {
            String::new()
        };
        Ok(format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nvalidation:\n  manifests:\n    urls:\n      allow:\n        - '^http://127\\.0\\.0\\.1:'\nhttp:\n  addr: {host}\n{tls_section}{auth_section}",
            storage.display()
        ))
    }

    fn spawn(&mut self) -> Result<()> {
        self.child = Some(start_process(
            self.dir.path(),
            "registry",
            &self.config(self.auth, &self.host, self.tls)?,
            &self.host,
        )?);
        Ok(())
    }

    /// Runs `seed(host)` against an open registry on the same storage (so that authenticated
    /// registries can be filled before `docker push` exists).
    pub fn seed<T>(&self, seed: impl FnOnce(&str) -> Result<T>) -> Result<T> {
        if self.auth == Auth::Open && !self.tls {
            return seed(&self.host);
        }
        let host = format!("127.0.0.1:{}", free_port()?);
        let mut child = start_process(
            self.dir.path(),
            "seeder",
            &self.config(Auth::Open, &host, false)?,
            &host,
        )?;
        let result = seed(&host);
        let _ = child.kill();
        let _ = child.wait();
        result
    }

    /// The file holding a blob in the registry's storage (to tamper with).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Stops the registry (to test an unreachable one).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The registry's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn start_process(dir: &Path, name: &str, config: &str, host: &str) -> Result<Child> {
    let config_path = dir.join(format!("{name}.yml"));
    fs::write(&config_path, config)?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))?;
    let mut child = Command::new(REGISTRY_BINARY)
        .arg("serve")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start docker-registry")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect(host).is_ok() {
            return Ok(child);
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "docker-registry exited with {status}:\n{}",
                fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("docker-registry did not listen on {host} within 20s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The token issuer of the token-auth registry: answers `GET /token?scope=…&service=…` with
/// a JWT granting the requested actions to [`USER`] when the basic credentials are right
/// (and [`REFRESH_TOKEN`] when `offline_token=true` was asked), nothing to anonymous callers,
/// and 401 to wrong credentials; `POST /token` with `grant_type=refresh_token` and
/// [`REFRESH_TOKEN`] issues a token as [`USER`].
pub struct TokenServer {
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// The certificate (PEM) the registry trusts.
    pub cert: PathBuf,
    stop: Arc<AtomicBool>,
    /// Tokens issued for the refresh token.
    refreshes: Arc<AtomicUsize>,
    /// Anonymous callers get pull access (the repositories were made public).
    public: Arc<AtomicBool>,
    /// The key tokens are signed with (replaced by [`TokenServer::rotate`]).
    key: Arc<Mutex<TokenKey>>,
}

/// A token signing key and its certificate (base64 DER, the JWT's `x5c`).
struct TokenKey {
    signer: ring::signature::EcdsaKeyPair,
    x5c: String,
}

impl TokenKey {
    /// A new key, its certificate written (PEM) to `cert_path` for the registry to trust.
    fn generate(cert_path: &Path) -> Result<TokenKey> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec!["token-issuer".to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "token-issuer");
        let cert = params.self_signed(&key)?;
        fs::write(cert_path, cert.pem())?;
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| anyhow::anyhow!("token key: {e}"))?;
        let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
        Ok(TokenKey { signer, x5c })
    }
}

impl TokenServer {
    fn start(dir: &Path) -> Result<TokenServer> {
        let cert_path = dir.join("token.pem");
        let key = Arc::new(Mutex::new(TokenKey::generate(&cert_path)?));
        let key2 = key.clone();
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let host = listener.local_addr()?.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let refreshes = Arc::new(AtomicUsize::new(0));
        let refreshes2 = refreshes.clone();
        let public = Arc::new(AtomicBool::new(false));
        let public2 = public.clone();
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = answer_token(stream, &key2, &refreshes2, &public2);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(TokenServer {
            host,
            cert: cert_path,
            stop,
            refreshes,
            public,
            key,
        })
    }

    /// Signs tokens with a new key from now on (its certificate replacing the old one).
    fn rotate(&self) -> Result<()> {
        let new = TokenKey::generate(&self.cert)?;
        *self
            .key
            .lock()
            .map_err(|_| anyhow::anyhow!("token key lock poisoned"))? = new;
        Ok(())
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn answer_token(
    mut stream: TcpStream,
    key: &Mutex<TokenKey>,
    refreshes: &AtomicUsize,
    public: &AtomicBool,
) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_string());
            }
            if k.trim().eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut words = request_line.split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let target = words.next().unwrap_or_default();
    let query = target.split_once('?').map_or("", |(_, q)| q).to_string();
    let mut body = vec![0u8; content_length.min(64 * 1024)];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    let fields = |text: &str, key: &str| -> Vec<String> {
        text.split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| percent_decode(v))
            .collect()
    };
    let refused = |stream: &mut TcpStream| -> Result<()> {
        let body = r#"{"details":"incorrect username or password"}"#;
        write!(
            stream,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        Ok(())
    };
    let (user, scopes, offline) = if method == "POST" {
        // OAuth2 (docker/distribution's `fetchTokenWithOAuth`): only the refresh grant here.
        let grant = fields(&body, "grant_type");
        let refresh = fields(&body, "refresh_token");
        if grant != ["refresh_token"] || refresh != [REFRESH_TOKEN] {
            return refused(&mut stream);
        }
        refreshes.fetch_add(1, Ordering::SeqCst);
        let scopes = fields(&body, "scope")
            .iter()
            .flat_map(|s| s.split(' ').map(str::to_string).collect::<Vec<_>>())
            .filter(|s| !s.is_empty())
            .collect();
        (Some(USER), scopes, false)
    } else {
        let user = match authorization.as_deref() {
            None => None,
            Some(value) => {
                let decoded = value
                    .strip_prefix("Basic ")
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default();
                if decoded != format!("{USER}:{PASSWORD}") {
                    return refused(&mut stream);
                }
                Some(USER)
            }
        };
        let offline = user.is_some() && fields(&query, "offline_token") == ["true"];
        (user, fields(&query, "scope"), offline)
    };
    // Anonymous callers may only pull, and only once the repositories are public.
    let public = public.load(Ordering::SeqCst);
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            let actions: Vec<&str> = actions
                .split(',')
                .filter(|a| user.is_some() || (public && *a == "pull"))
                .collect();
            (!actions.is_empty())
                .then(|| serde_json::json!({"type": kind, "name": name, "actions": actions}))
        })
        .collect();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let key = key
        .lock()
        .map_err(|_| anyhow::anyhow!("token key lock poisoned"))?;
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [key.x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": user.unwrap_or(""),
        "aud": SERVICE,
        "exp": now + 600,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{now}-{}", std::process::id()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature = key
        .signer
        .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
        .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
    let token = format!("{signing_input}.{}", b64url(signature.as_ref()));
    let mut answer = serde_json::json!({"token": token, "access_token": token, "expires_in": 600});
    if offline {
        answer["refresh_token"] = serde_json::json!(REFRESH_TOKEN);
    }
    let body = answer.to_string();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A TCP relay to a registry that sends its answers at `bytes_per_second`, so that a test can
/// act in the middle of a pull.
pub struct SlowProxy {
    /// `127.0.0.1:PORT`.
    pub host: String,
    stop: Arc<AtomicBool>,
}

impl SlowProxy {
    /// Relays connections on a new port to `target`.
    pub fn start(target: &str, bytes_per_second: usize) -> Result<SlowProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let host = listener.local_addr()?.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let target = target.to_string();
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let (Ok(mut client_in), Ok(mut server_out)) =
                    (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut client_in, &mut server_out);
                    let _ = server_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut server_in, mut client_out) = (server, client);
                let stop3 = stop2.clone();
                std::thread::spawn(move || {
                    let chunk = (bytes_per_second / 20).max(1);
                    let mut buf = vec![0u8; chunk];
                    while !stop3.load(Ordering::Relaxed) {
                        match std::io::Read::read(&mut server_in, &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if client_out.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    }
                    let _ = client_out.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Ok(SlowProxy { host, stop })
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
