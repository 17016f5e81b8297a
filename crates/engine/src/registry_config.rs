//! `--registry-mirror` and `--insecure-registry`, checked and normalized as dockerd does
//! (moby daemon/pkg/registry/config.go `newServiceConfig`), and shaped for `docker info`'s
//! `RegistryConfig`. Pulls do not exist yet; the settings are kept so that nothing given to the
//! engine is dropped, and so that `docker info` tells what pulls will use.

use std::net::IpAddr;

use serde_json::{json, Value};

/// A registry option dockerd would refuse at start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryConfigError {
    /// A mirror without `http://` or `https://`.
    #[error("invalid mirror: no scheme specified for {mirror:?}: must use either 'https://' or 'http://'")]
    MirrorScheme {
        /// The mirror as given.
        mirror: String,
    },
    /// A mirror with a scheme other than http or https.
    #[error("invalid mirror: unsupported scheme {scheme:?} in {mirror:?}: must use either 'https://' or 'http://'")]
    MirrorUnsupportedScheme {
        /// The scheme.
        scheme: String,
        /// The mirror as given.
        mirror: String,
    },
    /// A mirror with a query, fragment or credentials.
    #[error("invalid mirror: {reason} in {mirror:?}")]
    MirrorUri {
        /// What is wrong.
        reason: &'static str,
        /// The mirror as given.
        mirror: String,
    },
    /// An insecure registry with a scheme other than http or https.
    #[error("insecure registry {registry} should not contain '://'")]
    InsecureScheme {
        /// The registry as given.
        registry: String,
    },
    /// An insecure registry that is neither a CIDR nor a `host[:port]`.
    #[error("insecure registry {registry} is not valid: invalid host {host:?}")]
    InsecureHost {
        /// The registry as given.
        registry: String,
        /// Its host part.
        host: String,
    },
}

/// The registry settings of the engine, normalized.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Docker Hub mirrors, `scheme://host[/path]/`, without duplicates.
    pub mirrors: Vec<String>,
    /// Networks whose registries are reached insecurely, user's first, then loopback.
    pub insecure_cidrs: Vec<String>,
    /// Registries (`host[:port]`) reached insecurely.
    pub insecure_hosts: Vec<String>,
}

impl RegistryConfig {
    /// Checks and normalizes the command line's `--registry-mirror` and `--insecure-registry`.
    pub fn new(mirrors: &[String], insecure: &[String]) -> Result<Self, RegistryConfigError> {
        let mut config = RegistryConfig::default();
        for mirror in mirrors {
            let normalized = validate_mirror(mirror)?;
            if !config.mirrors.contains(&normalized) {
                config.mirrors.push(normalized);
            }
        }
        // As dockerd: loopback registries are always insecure.
        let defaults = ["::1/128".to_string(), "127.0.0.0/8".to_string()];
        for registry in insecure.iter().chain(defaults.iter()) {
            let mut r = registry.as_str();
            if let Some((scheme, host)) = r.split_once("://") {
                if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
                    return Err(RegistryConfigError::InsecureScheme {
                        registry: registry.clone(),
                    });
                }
                tracing::warn!(
                    "insecure registry {registry} should not contain '{scheme}' and '{scheme}s' has been removed from the insecure registry config"
                );
                r = host;
            }
            if let Some(cidr) = parse_cidr(r) {
                if !config.insecure_cidrs.contains(&cidr) {
                    config.insecure_cidrs.push(cidr);
                }
            } else {
                validate_host_port(r).map_err(|host| RegistryConfigError::InsecureHost {
                    registry: registry.clone(),
                    host,
                })?;
                let name = if r == "index.docker.io" {
                    "docker.io"
                } else {
                    r
                };
                if !config.insecure_hosts.iter().any(|h| h == name) {
                    config.insecure_hosts.push(name.to_string());
                }
            }
        }
        Ok(config)
    }

    /// `docker info`'s `RegistryConfig`, shaped as dockerd's `registry.ServiceConfig`.
    pub fn info(&self) -> Value {
        let mut index = serde_json::Map::new();
        for host in &self.insecure_hosts {
            index.insert(
                host.clone(),
                json!({"Name": host, "Mirrors": [], "Secure": false, "Official": false}),
            );
        }
        index.insert(
            "docker.io".into(),
            json!({"Name": "docker.io", "Mirrors": self.mirrors, "Secure": true, "Official": true}),
        );
        json!({
            "InsecureRegistryCIDRs": self.insecure_cidrs,
            "IndexConfigs": index,
            // dockerd copies the list with append(nil, ...): null when there is none.
            "Mirrors": if self.mirrors.is_empty() { Value::Null } else { json!(self.mirrors) },
        })
    }
}

/// moby's `ValidateMirror`.
fn validate_mirror(mirror: &str) -> Result<String, RegistryConfigError> {
    let Some((scheme, rest)) = mirror.split_once("://").filter(|(s, _)| !s.is_empty()) else {
        return Err(RegistryConfigError::MirrorScheme {
            mirror: mirror.to_string(),
        });
    };
    if scheme != "http" && scheme != "https" {
        return Err(RegistryConfigError::MirrorUnsupportedScheme {
            scheme: scheme.to_string(),
            mirror: mirror.to_string(),
        });
    }
    let uri_error = |reason| RegistryConfigError::MirrorUri {
        reason,
        mirror: mirror.to_string(),
    };
    if rest.contains('?') || rest.contains('#') {
        return Err(uri_error("query or fragment at end of the URI"));
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(uri_error("username/password not allowed"));
    }
    if authority.is_empty() {
        return Err(uri_error("no host"));
    }
    Ok(format!("{}/", mirror.trim_end_matches('/')))
}

/// A CIDR in Go's `ipnet.String()` form (the network address), or `None`.
fn parse_cidr(text: &str) -> Option<String> {
    let (addr, bits) = text.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let bits: u8 = bits.parse().ok()?;
    let network = match addr {
        IpAddr::V4(v4) => {
            if bits > 32 {
                return None;
            }
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            IpAddr::from((u32::from(v4) & mask).to_be_bytes())
        }
        IpAddr::V6(v6) => {
            if bits > 128 {
                return None;
            }
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            IpAddr::from((u128::from(v6) & mask).to_be_bytes())
        }
    };
    Some(format!("{network}/{bits}"))
}

/// moby's `validateHostPort`: a domain (reference.DomainRegexp) or IP, with an optional port.
/// Returns the host part when it is not valid.
fn validate_host_port(text: &str) -> Result<(), String> {
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => (h, Some(p)),
        _ => (text, None),
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let domain_ok = host.split('.').all(label_ok);
    if !domain_ok && bare.parse::<IpAddr>().is_err() && text.parse::<IpAddr>().is_err() {
        return Err(host.to_string());
    }
    if let Some(port) = port.filter(|_| text.parse::<IpAddr>().is_err()) {
        if port.parse::<u16>().is_err() {
            return Err(host.to_string());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn settings_are_normalized_and_shaped_as_dockerd_reports_them() {
        let config = RegistryConfig::new(
            &strings(&["https://mirror.example", "https://mirror.example/"]),
            &strings(&["10.0.2.2:5000", "http://reg.local", "10.1.2.3/16"]),
        )
        .unwrap();
        assert_eq!(
            config.info(),
            json!({
                "InsecureRegistryCIDRs": ["10.1.0.0/16", "::1/128", "127.0.0.0/8"],
                "IndexConfigs": {
                    "10.0.2.2:5000": {"Name": "10.0.2.2:5000", "Mirrors": [], "Secure": false, "Official": false},
                    "reg.local": {"Name": "reg.local", "Mirrors": [], "Secure": false, "Official": false},
                    "docker.io": {"Name": "docker.io", "Mirrors": ["https://mirror.example/"], "Secure": true, "Official": true},
                },
                "Mirrors": ["https://mirror.example/"],
            })
        );
        let none = RegistryConfig::new(&[], &[]).unwrap().info();
        assert_eq!(none["Mirrors"], Value::Null);
        assert_eq!(none["IndexConfigs"]["docker.io"]["Mirrors"], json!([]));
    }

    #[test]
    fn bad_settings_are_refused_with_dockerds_words() {
        assert_eq!(
            RegistryConfig::new(&strings(&["mirror.example"]), &[]).unwrap_err().to_string(),
            "invalid mirror: no scheme specified for \"mirror.example\": must use either 'https://' or 'http://'"
        );
        assert!(RegistryConfig::new(&strings(&["ftp://m"]), &[]).is_err());
        assert!(RegistryConfig::new(&strings(&["https://u:p@m"]), &[]).is_err());
        assert_eq!(
            RegistryConfig::new(&[], &strings(&["ftp://reg"]))
                .unwrap_err()
                .to_string(),
            "insecure registry ftp://reg should not contain '://'"
        );
        assert!(RegistryConfig::new(&[], &strings(&["bad host"])).is_err());
        assert!(RegistryConfig::new(&[], &strings(&["reg:99999"])).is_err());
    }
}
