//! Docker image references: parsing and normalisation the way `distribution/reference` does it.
//!
//! A user may write `busybox`, `busybox:1.36`, `library/busybox`, `docker.io/library/busybox:latest`
//! or `localhost:5000/team/app:v1@sha256:…`. They all normalise to a [`Reference`] whose
//! [`Reference::full`] form names the registry (`docker.io/library/busybox:latest`) and whose
//! [`Reference::familiar`] form is what Docker prints (`busybox:latest`).

use std::fmt;

/// The registry that names without a domain belong to.
const DEFAULT_DOMAIN: &str = "docker.io";
/// The repository prefix of official images on the default registry.
const OFFICIAL_PREFIX: &str = "library/";
/// Docker's limit on the length of a repository name (domain included).
const NAME_MAX: usize = 255;

/// What went wrong while parsing a reference; the text is Docker's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceParseError {
    /// Docker's wording, e.g. `invalid reference format`.
    pub reason: String,
}

impl ReferenceParseError {
    fn format() -> Self {
        ReferenceParseError {
            reason: "invalid reference format".to_string(),
        }
    }
}

/// A parsed and normalised image name with an optional tag and digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// Registry host (and port), `docker.io` by default.
    pub domain: String,
    /// Repository path inside the registry, `library/busybox` for official images.
    pub path: String,
    /// Tag, if the user gave one.
    pub tag: Option<String>,
    /// Digest (`sha256:<hex>`), if the user gave one.
    pub digest: Option<String>,
}

/// What a user's image argument denotes, following `reference.ParseAnyReference`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyReference {
    /// A full image id: 64 hex digits, with or without `sha256:`; holds `sha256:<hex>`.
    Id(String),
    /// A repository name, possibly with a tag and/or digest.
    Named(Reference),
}

impl AnyReference {
    /// Parses a user's reference: a full id first, then a name.
    pub fn parse(s: &str) -> Result<AnyReference, ReferenceParseError> {
        if is_full_hex(s) {
            return Ok(AnyReference::Id(format!("sha256:{s}")));
        }
        if s.strip_prefix("sha256:").is_some_and(is_full_hex) {
            return Ok(AnyReference::Id(s.to_string()));
        }
        // Anything else, even `sha256:0123` (repository `sha256`, tag `0123`), is a name; the
        // store then falls back to an id-prefix search, as Docker does.
        Reference::parse_normalized(s).map(AnyReference::Named)
    }
}

impl Reference {
    /// Parses and normalises a name like `busybox`, `org/app:tag` or `host:5000/app@sha256:…`.
    pub fn parse_normalized(s: &str) -> Result<Reference, ReferenceParseError> {
        if is_full_hex(s) {
            return Err(ReferenceParseError {
                reason: format!(
                    "invalid repository name ({s}), cannot specify 64-byte hexadecimal strings"
                ),
            });
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => {
                let hex = digest
                    .strip_prefix("sha256:")
                    .ok_or_else(ReferenceParseError::format)?;
                if !is_full_hex(hex) {
                    return Err(ReferenceParseError::format());
                }
                (rest, Some(digest.to_string()))
            }
            None => (s, None),
        };
        // A colon after the last slash separates the tag; one before it is a registry port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if !is_valid_tag(tag) {
                    return Err(ReferenceParseError::format());
                }
                (&rest[..last_slash + i], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(ReferenceParseError::format());
        }
        let (domain, path) = split_domain(name);
        if !is_valid_domain(&domain) {
            return Err(ReferenceParseError::format());
        }
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(ReferenceParseError {
                reason: format!(
                    "invalid reference format: repository name ({path}) must be lowercase"
                ),
            });
        }
        if !path.split('/').all(is_valid_path_component) {
            return Err(ReferenceParseError::format());
        }
        if domain.len() + 1 + path.len() > NAME_MAX {
            return Err(ReferenceParseError {
                reason:
                    "invalid reference format: repository name must not be more than 255 characters"
                        .to_string(),
            });
        }
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// The same reference with `latest` as tag when it has neither tag nor digest
    /// (`reference.TagNameOnly`).
    pub fn with_default_tag(mut self) -> Reference {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some("latest".to_string());
        }
        self
    }

    /// `domain/path`, e.g. `docker.io/library/busybox`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The name as Docker prints it: `busybox`, `org/app`, `localhost:5000/app`.
    pub fn familiar_name(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            self.path
                .strip_prefix(OFFICIAL_PREFIX)
                .filter(|rest| !rest.contains('/'))
                .unwrap_or(&self.path)
                .to_string()
        } else {
            self.full_name()
        }
    }

    /// The whole reference as Docker prints it: `busybox:latest`.
    pub fn familiar(&self) -> String {
        self.render(self.familiar_name())
    }

    /// The whole reference with its registry: `docker.io/library/busybox:latest`.
    pub fn full(&self) -> String {
        self.render(self.full_name())
    }

    fn render(&self, mut name: String) -> String {
        if let Some(tag) = &self.tag {
            name.push(':');
            name.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            name.push('@');
            name.push_str(digest);
        }
        name
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.familiar())
    }
}

/// Splits `name` into registry and repository path (`splitDockerDomain`).
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    if domain == "index.docker.io" {
        domain = DEFAULT_DOMAIN.to_string();
    }
    if domain == DEFAULT_DOMAIN && !path.contains('/') {
        path = format!("{OFFICIAL_PREFIX}{path}");
    }
    (domain, path)
}

/// `true` for exactly 64 lowercase hex digits (a full image id without its algorithm).
pub fn is_full_hex(s: &str) -> bool {
    s.len() == 64 && is_lower_hex(s)
}

/// `true` for a non-empty string of lowercase hex digits.
pub fn is_lower_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `[\w][\w.-]{0,127}`.
fn is_valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            word(*first)
                && rest.len() <= 127
                && rest.iter().all(|&b| word(b) || b == b'.' || b == b'-')
        }
        None => false,
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        let sep_start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[sep_start..i];
        let dashes = sep.bytes().all(|b| b == b'-');
        if !(sep == "." || sep == "_" || sep == "__" || dashes) {
            return false;
        }
    }
}

/// A host name or `[IPv6]`, optionally with `:port`.
fn is_valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, after)) => {
                if ip.is_empty() || !ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                    return false;
                }
                match after.strip_prefix(':') {
                    Some(port) => (None, Some(port)),
                    None if after.is_empty() => (None, None),
                    None => return false,
                }
            }
            None => return false,
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(domain), None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    match host {
        Some(host) => host.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
                && bytes.first() != Some(&b'-')
                && bytes.last() != Some(&b'-')
        }),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(s: &str) -> Reference {
        Reference::parse_normalized(s).unwrap()
    }

    #[test]
    fn short_names_normalise_to_docker_hub_library() {
        let r = named("busybox");
        assert_eq!(r.full(), "docker.io/library/busybox");
        assert_eq!(r.clone().with_default_tag().familiar(), "busybox:latest");
        assert_eq!(
            named("docker.io/library/busybox:1.36").familiar(),
            "busybox:1.36"
        );
        assert_eq!(
            named("index.docker.io/library/busybox").full(),
            "docker.io/library/busybox"
        );
        assert_eq!(named("library/busybox:x").familiar(), "busybox:x");
    }

    #[test]
    fn domains_ports_and_user_repositories_are_kept() {
        let r = named("localhost:5000/team/app:v1");
        assert_eq!(r.domain, "localhost:5000");
        assert_eq!(r.path, "team/app");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.familiar(), "localhost:5000/team/app:v1");
        assert_eq!(named("user/app").familiar(), "user/app");
        assert_eq!(named("localhost/app").full_name(), "localhost/app");
        assert_eq!(named("127.0.0.1:5000/app").domain, "127.0.0.1:5000");
    }

    #[test]
    fn digests_are_parsed() {
        let hex = "a".repeat(64);
        let r = named(&format!("busybox@sha256:{hex}"));
        assert_eq!(r.digest, Some(format!("sha256:{hex}")));
        assert_eq!(r.tag, None);
        assert_eq!(r.clone().with_default_tag().tag, None);
    }

    #[test]
    fn ids_are_recognised() {
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(
            AnyReference::parse(&hex).unwrap(),
            AnyReference::Id(format!("sha256:{hex}"))
        );
        assert_eq!(
            AnyReference::parse(&format!("sha256:{hex}")).unwrap(),
            AnyReference::Id(format!("sha256:{hex}"))
        );
        // A short hex string is a valid name; the store falls back to an id-prefix search.
        assert!(matches!(
            AnyReference::parse("0123ab").unwrap(),
            AnyReference::Named(_)
        ));
        assert!(matches!(
            AnyReference::parse("sha256:0123").unwrap(),
            AnyReference::Named(_)
        ));
    }

    #[test]
    fn invalid_references_use_dockers_messages() {
        assert_eq!(
            Reference::parse_normalized("Busybox").unwrap_err().reason,
            "invalid reference format: repository name (library/Busybox) must be lowercase"
        );
        for bad in [
            "",
            "busybox:",
            "bus..box",
            ":tag",
            "a//b",
            "-a",
            "busybox:-x",
            "a b",
        ] {
            assert_eq!(
                Reference::parse_normalized(bad).unwrap_err().reason,
                "invalid reference format",
                "{bad:?}"
            );
        }
        let hex = "f".repeat(64);
        assert!(Reference::parse_normalized(&hex)
            .unwrap_err()
            .reason
            .contains("cannot specify 64-byte hexadecimal strings"));
    }

    #[test]
    fn separators_follow_the_grammar() {
        for ok in ["a_b", "a__b", "a.b", "a-b", "a---b", "a1/b2/c3"] {
            assert!(Reference::parse_normalized(ok).is_ok(), "{ok}");
        }
        for bad in ["a___b", "a_.b", "a.", "_a"] {
            assert!(Reference::parse_normalized(bad).is_err(), "{bad}");
        }
    }
}
