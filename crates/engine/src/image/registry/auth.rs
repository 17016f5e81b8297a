//! Credentials: the `X-Registry-Auth` header of pull/push, and `POST /auth` (`docker login`),
//! which checks them against the registry the way dockerd's `loginV2` does: a `GET /v2/`,
//! then, when the registry challenges, either basic auth on `/v2/` or a token request to the
//! bearer realm with the credentials.

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::{endpoints, http_client, RegistryError, DOCKER_HUB};
use crate::registry_config::RegistryConfig;

/// Docker's `registry.AuthConfig`, as the CLI sends it. Its `Debug` hides the secrets, so a
/// log line with it never carries a password or token.
#[derive(Clone, Default, Deserialize)]
pub struct AuthConfig {
    /// User name.
    #[serde(default, alias = "Username")]
    pub username: String,
    /// Password or access token.
    #[serde(default, alias = "Password")]
    pub password: String,
    /// Legacy `user:password` in base64, as old config files hold it.
    #[serde(default, alias = "Auth")]
    pub auth: String,
    /// The registry (`https://index.docker.io/v1/` for Docker Hub).
    #[serde(default, alias = "ServerAddress")]
    pub serveraddress: String,
    /// An OAuth refresh token from an earlier login.
    #[serde(default, alias = "IdentityToken")]
    pub identitytoken: String,
    /// A bearer token for the registry.
    #[serde(default, alias = "RegistryToken")]
    pub registrytoken: String,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |secret: &str| if secret.is_empty() { "" } else { "<hidden>" };
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("auth", &hidden(&self.auth))
            .field("serveraddress", &self.serveraddress)
            .field("identitytoken", &hidden(&self.identitytoken))
            .field("registrytoken", &hidden(&self.registrytoken))
            .finish()
    }
}

impl AuthConfig {
    /// Decodes an `X-Registry-Auth` header: base64url (padded or not) JSON. An absent or
    /// empty header means anonymous.
    pub fn from_header(header: Option<&str>) -> Result<AuthConfig, RegistryError> {
        let Some(header) = header.map(str::trim).filter(|h| !h.is_empty()) else {
            return Ok(AuthConfig::default());
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .or_else(|_| base64::engine::general_purpose::STANDARD.decode(header))
            .map_err(|_| RegistryError::InvalidParameter {
                message: "invalid X-Registry-Auth header: not base64".to_string(),
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) || bytes == b"{}" {
            return Ok(AuthConfig::default());
        }
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::InvalidParameter {
            message: format!("invalid X-Registry-Auth header: {e}"),
        })
    }

    /// The credentials as the registry client takes them.
    pub fn registry_auth(&self) -> Result<RegistryAuth, RegistryError> {
        if !self.registrytoken.is_empty() {
            return Ok(RegistryAuth::Bearer(self.registrytoken.clone()));
        }
        if !self.identitytoken.is_empty() {
            // Pulls and pushes trade it for an access token first ([`credentials`]).
            return Err(RegistryError::InvalidParameter {
                message: "an identity token (IdentityToken) can only be used for pull, push and login with rmachine-engine".to_string(),
            });
        }
        let (user, password) = if self.username.is_empty() && !self.auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(&self.auth)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| RegistryError::InvalidParameter {
                    message: "invalid auth configuration: bad base64 in auth".to_string(),
                })?;
            match decoded.split_once(':') {
                Some((u, p)) => (u.to_string(), p.to_string()),
                None => (decoded, String::new()),
            }
        } else {
            (self.username.clone(), self.password.clone())
        };
        if user.is_empty() {
            Ok(RegistryAuth::Anonymous)
        } else {
            Ok(RegistryAuth::Basic(user, password))
        }
    }
}

/// The registry host of a `serveraddress` (`https://host:port/v1/` → `host:port`), Docker Hub
/// when empty.
pub fn server_host(address: &str) -> String {
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    let host = rest.split('/').next().unwrap_or_default();
    match host {
        "" | "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB.to_string(),
        h => h.to_string(),
    }
}

/// A `WWW-Authenticate` challenge: its scheme and parameters.
#[derive(Debug, Default, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn parse(header: &str) -> Challenge {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        let mut params = Vec::new();
        let mut rest = rest.trim();
        while !rest.is_empty() {
            let Some((key, after)) = rest.split_once('=') else {
                break;
            };
            let key = key
                .trim()
                .trim_start_matches(',')
                .trim()
                .to_ascii_lowercase();
            let after = after.trim_start();
            let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
                match quoted.find('"') {
                    Some(end) => (&quoted[..end], &quoted[end + 1..]),
                    None => (quoted, ""),
                }
            } else {
                match after.find(',') {
                    Some(end) => (&after[..end], &after[end..]),
                    None => (after, ""),
                }
            };
            params.push((key, value.to_string()));
            rest = remaining.trim_start().trim_start_matches(',').trim_start();
        }
        Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        }
    }

    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What `POST /auth` learned from the registry.
#[derive(Debug, Default)]
pub struct LoginOutcome {
    /// The registry host the credentials were checked against.
    pub registry: String,
    /// A refresh token the registry issued for offline use (Docker's `IdentityToken`), which
    /// the CLI then stores instead of the password.
    pub identity_token: Option<String>,
}

/// The client id dockerd gives token servers (`registry.AuthClientID`).
const CLIENT_ID: &str = "docker";

/// The registry's answer to an anonymous `GET /v2/`, with a client set up to talk to it.
struct Probe {
    client: reqwest::Client,
    url: String,
    status: reqwest::StatusCode,
    challenge: Challenge,
}

async fn probe(config: &RegistryConfig, host: &str) -> Result<Probe, RegistryError> {
    // Mirrors are for pulls only: credentials are checked against the registry itself.
    let endpoint = endpoints(config, host)
        .into_iter()
        .find(|e| !e.mirror)
        .ok_or_else(|| RegistryError::InvalidParameter {
            message: format!("no endpoint for registry {host}"),
        })?;
    let endpoint = super::settle(endpoint).await;
    let scheme = if endpoint.plain_http { "http" } else { "https" };
    let url = format!("{scheme}://{}/v2/", endpoint.host);
    let client = http_client(endpoint.insecure)?;
    let ping = client
        .get(&url)
        .send()
        .await
        .map_err(|e| unreachable(host, &endpoint.host, &e))?;
    let challenge = ping
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(Challenge::parse)
        .unwrap_or_default();
    Ok(Probe {
        client,
        url,
        status: ping.status(),
        challenge,
    })
}

fn unreachable(host: &str, endpoint: &str, e: &reqwest::Error) -> RegistryError {
    RegistryError::Unreachable {
        reference: host.to_string(),
        registry: endpoint.to_string(),
        message: super::chain(e),
    }
}

/// The token endpoint's answer (docker/distribution's `postTokenResponse`/`getTokenResponse`).
#[derive(Deserialize, Default)]
struct TokenAnswer {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    refresh_token: String,
}

/// `POST /auth`: checks the credentials against the registry the way dockerd's `loginV2`
/// does, asking a token server for an offline (refresh) token as dockerd does.
pub async fn login(
    config: &RegistryConfig,
    auth: &AuthConfig,
) -> Result<LoginOutcome, RegistryError> {
    let host = server_host(&auth.serveraddress);
    let probe = probe(config, &host).await?;
    let failed = |status: reqwest::StatusCode| RegistryError::Unauthorized {
        registry: host.clone(),
        message: format!(
            "login attempt to {} failed with status: {status}",
            probe.url
        ),
    };
    if probe.status.is_success() {
        // An open registry takes any credentials.
        return Ok(LoginOutcome {
            registry: host,
            identity_token: None,
        });
    }
    if probe.status != reqwest::StatusCode::UNAUTHORIZED {
        return Err(failed(probe.status));
    }
    if !auth.identitytoken.is_empty() {
        // A login with a stored identity token: the token server must still take it.
        exchange_identity_token(&probe, &host, &auth.identitytoken, &[]).await?;
        return Ok(LoginOutcome {
            registry: host,
            identity_token: Some(auth.identitytoken.clone()),
        });
    }
    let RegistryAuth::Basic(user, password) = auth.registry_auth()? else {
        return Err(RegistryError::InvalidParameter {
            message: "login needs a user name and a password".to_string(),
        });
    };
    let answer = match probe.challenge.scheme.as_str() {
        "bearer" => {
            let realm = realm(&probe.challenge, &host)?;
            let mut query = vec![
                ("account", user.as_str()),
                ("client_id", CLIENT_ID),
                ("offline_token", "true"),
            ];
            if let Some(service) = probe.challenge.param("service") {
                query.push(("service", service));
            }
            let sep = if realm.contains('?') { '&' } else { '?' };
            probe
                .client
                .get(format!("{realm}{sep}{}", form(&query)))
                .basic_auth(&user, Some(&password))
                .send()
                .await
                .map_err(|e| unreachable(&host, realm, &e))?
        }
        _ => probe
            .client
            .get(&probe.url)
            .basic_auth(&user, Some(&password))
            .send()
            .await
            .map_err(|e| unreachable(&host, &probe.url, &e))?,
    };
    if !answer.status().is_success() {
        return Err(failed(answer.status()));
    }
    let identity_token = if probe.challenge.scheme == "bearer" {
        let body = answer.bytes().await.unwrap_or_default();
        serde_json::from_slice::<TokenAnswer>(&body)
            .ok()
            .map(|t| t.refresh_token)
            .filter(|t| !t.is_empty())
    } else {
        None
    };
    Ok(LoginOutcome {
        registry: host,
        identity_token,
    })
}

/// The credentials for pulling from (or pushing to, `push`) `repository` on `host`: an
/// identity token is traded for an access token at the registry's token server (OAuth2
/// `grant_type=refresh_token`, as docker/distribution's token handler does); anything else is
/// handed to the registry client as it is.
pub async fn credentials(
    config: &RegistryConfig,
    auth: &AuthConfig,
    host: &str,
    repository: &str,
    push: bool,
) -> Result<RegistryAuth, RegistryError> {
    if auth.identitytoken.is_empty() || !auth.registrytoken.is_empty() {
        return auth.registry_auth();
    }
    let probe = probe(config, host).await?;
    let actions = if push { "pull,push" } else { "pull" };
    let scope = format!("repository:{repository}:{actions}");
    let token = exchange_identity_token(&probe, host, &auth.identitytoken, &[&scope]).await?;
    Ok(RegistryAuth::Bearer(token))
}

fn realm<'a>(challenge: &'a Challenge, host: &str) -> Result<&'a str, RegistryError> {
    challenge
        .param("realm")
        .ok_or_else(|| RegistryError::Registry {
            reference: host.to_string(),
            message: format!("registry {host} sent a bearer challenge without a realm"),
        })
}

/// Trades a refresh token for an access token with the given scopes.
async fn exchange_identity_token(
    probe: &Probe,
    host: &str,
    identity_token: &str,
    scopes: &[&str],
) -> Result<String, RegistryError> {
    if probe.challenge.scheme != "bearer" {
        return Err(RegistryError::Unauthorized {
            registry: host.to_string(),
            message: format!(
                "registry {host} does not use token authentication, so it cannot take an identity token"
            ),
        });
    }
    let realm = realm(&probe.challenge, host)?;
    let mut fields = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", identity_token),
        ("client_id", CLIENT_ID),
    ];
    if let Some(service) = probe.challenge.param("service") {
        fields.push(("service", service));
    }
    let joined = scopes.join(" ");
    if !joined.is_empty() {
        fields.push(("scope", &joined));
    }
    let answer = probe
        .client
        .post(realm)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(form(&fields))
        .send()
        .await
        .map_err(|e| unreachable(host, realm, &e))?;
    let status = answer.status();
    if !status.is_success() {
        return Err(RegistryError::Unauthorized {
            registry: host.to_string(),
            message: format!("the token server {realm} refused the identity token: {status}"),
        });
    }
    let body = answer
        .bytes()
        .await
        .map_err(|e| unreachable(host, realm, &e))?;
    let token: TokenAnswer =
        serde_json::from_slice(&body).map_err(|e| RegistryError::Registry {
            reference: host.to_string(),
            message: format!("the token server {realm} sent an unreadable answer: {e}"),
        })?;
    [token.access_token, token.token]
        .into_iter()
        .find(|t| !t.is_empty())
        .ok_or_else(|| RegistryError::Registry {
            reference: host.to_string(),
            message: format!("the token server {realm} sent no access token"),
        })
}

/// `key=value&…` with the values percent-encoded.
fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
pub(super) fn percent_encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_auth_header_decodes_with_or_without_padding() {
        let json = r#"{"username":"u","password":"p","serveraddress":"127.0.0.1:5000"}"#;
        let padded = base64::engine::general_purpose::URL_SAFE.encode(json);
        let bare = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        for header in [padded, bare] {
            let auth = AuthConfig::from_header(Some(&header)).unwrap();
            assert_eq!(
                format!("{:?}", auth.registry_auth().unwrap()),
                format!("{:?}", RegistryAuth::Basic("u".into(), "p".into()))
            );
        }
        let empty = AuthConfig::from_header(Some("e30=")).unwrap();
        assert!(matches!(
            empty.registry_auth().unwrap(),
            RegistryAuth::Anonymous
        ));
        assert!(AuthConfig::from_header(Some("!!")).is_err());
    }

    #[test]
    fn identity_tokens_outside_pull_and_push_are_refused_by_name() {
        let auth = AuthConfig {
            identitytoken: "t".into(),
            ..AuthConfig::default()
        };
        let err = auth.registry_auth().unwrap_err().to_string();
        assert!(err.contains("IdentityToken"), "{err}");
    }

    #[test]
    fn server_addresses_name_their_registry() {
        assert_eq!(server_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(server_host(""), "docker.io");
        assert_eq!(server_host("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(server_host("http://reg.local:5000/v2/"), "reg.local:5000");
    }

    #[test]
    fn challenges_parse() {
        let c = Challenge::parse(
            r#"Bearer realm="http://127.0.0.1:1/token",service="registry",scope="a:b:pull,push""#,
        );
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("http://127.0.0.1:1/token"));
        assert_eq!(c.param("service"), Some("registry"));
        assert_eq!(c.param("scope"), Some("a:b:pull,push"));
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#).scheme,
            "basic"
        );
    }
}
