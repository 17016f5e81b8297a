//! `docker search`: the registry's v1 search (`/v1/search`, Docker Hub's) where it answers,
//! else its v2 catalog (`/v2/_catalog`) filtered by the term, as a private registry has no
//! search of its own.

use serde::{Deserialize, Serialize};

use super::auth::AuthConfig;
use super::{endpoints, http_client, RegistryError, DOCKER_HUB};
use crate::registry_config::RegistryConfig;

/// dockerd's default and largest `limit`.
const DEFAULT_LIMIT: usize = 25;
const MAX_LIMIT: usize = 100;

/// One search result, with Docker's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchResult {
    /// Repository name.
    #[serde(default)]
    pub name: String,
    /// Description (empty from a catalog).
    #[serde(default)]
    pub description: String,
    /// Stars (0 from a catalog).
    #[serde(default)]
    pub star_count: u64,
    /// Official image.
    #[serde(default)]
    pub is_official: bool,
    /// Deprecated, always false.
    #[serde(default)]
    pub is_automated: bool,
}

/// The `filters` of a search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchFilters {
    /// `stars=N`: at least N stars.
    pub stars: Option<u64>,
    /// `is-official=true|false`.
    pub is_official: Option<bool>,
    /// `is-automated=true|false` (no image is automated any more).
    pub is_automated: Option<bool>,
}

impl SearchFilters {
    /// Reads Docker's filter map (`{"stars": ["3"]}`); unknown filters are refused by name.
    pub fn parse(filters: &[(String, Vec<String>)]) -> Result<SearchFilters, RegistryError> {
        let mut out = SearchFilters::default();
        for (key, values) in filters {
            for value in values {
                let boolean = || match value.as_str() {
                    "true" | "1" => Ok(true),
                    "false" | "0" => Ok(false),
                    _ => Err(RegistryError::InvalidParameter {
                        message: format!("invalid filter '{key}={value}'"),
                    }),
                };
                match key.as_str() {
                    "stars" => {
                        out.stars =
                            Some(value.parse().map_err(|_| RegistryError::InvalidParameter {
                                message: format!("invalid filter 'stars={value}'"),
                            })?)
                    }
                    "is-official" => out.is_official = Some(boolean()?),
                    "is-automated" => out.is_automated = Some(boolean()?),
                    other => {
                        return Err(RegistryError::InvalidParameter {
                            message: format!("invalid filter '{other}'"),
                        })
                    }
                }
            }
        }
        Ok(out)
    }

    fn keeps(&self, r: &SearchResult) -> bool {
        self.stars.is_none_or(|s| r.star_count >= s)
            && self.is_official.is_none_or(|o| r.is_official == o)
            && self.is_automated.is_none_or(|a| r.is_automated == a)
    }
}

/// moby's `splitReposSearchTerm`: `host:5000/name` searches `name` on `host:5000`.
fn split_term(term: &str) -> (String, String) {
    match term.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), term.to_string()),
    }
}

#[derive(Deserialize)]
struct V1Answer {
    #[serde(default)]
    results: Vec<SearchResult>,
}

#[derive(Deserialize)]
struct Catalog {
    #[serde(default)]
    repositories: Vec<String>,
}

/// Searches `term` (optionally `registry/term`), at most `limit` results after `filters`.
pub async fn search(
    config: &RegistryConfig,
    term: &str,
    limit: Option<usize>,
    filters: &SearchFilters,
    auth: &AuthConfig,
) -> Result<Vec<SearchResult>, RegistryError> {
    let limit = limit.filter(|l| *l != 0).unwrap_or(DEFAULT_LIMIT);
    if limit > MAX_LIMIT {
        return Err(RegistryError::InvalidParameter {
            message: format!("limit {limit} is outside the range of [1, {MAX_LIMIT}]"),
        });
    }
    let (host, wanted) = split_term(term);
    let endpoint = if host == DOCKER_HUB {
        super::Endpoint {
            host: "index.docker.io".to_string(),
            plain_http: false,
            insecure: false,
            mirror: false,
        }
    } else {
        endpoints(config, &host)
            .into_iter()
            .find(|e| !e.mirror)
            .ok_or_else(|| RegistryError::InvalidParameter {
                message: format!("no endpoint for registry {host}"),
            })?
    };
    let endpoint = super::settle(endpoint).await;
    let scheme = if endpoint.plain_http { "http" } else { "https" };
    let client = http_client(endpoint.insecure)?;
    let credentials = match auth.registry_auth()? {
        oci_client::secrets::RegistryAuth::Basic(u, p) => Some((u, p)),
        _ => None,
    };
    let get = |url: String| {
        let request = client.get(url);
        match &credentials {
            Some((u, p)) => request.basic_auth(u, Some(p)),
            None => request,
        }
    };
    let unreachable = |e: reqwest::Error| RegistryError::Unreachable {
        reference: term.to_string(),
        registry: endpoint.host.clone(),
        message: super::chain(&e),
    };
    let v1 = get(format!(
        "{scheme}://{}/v1/search?q={}&n={limit}",
        endpoint.host,
        super::auth::percent_encode(&wanted)
    ))
    .send()
    .await
    .map_err(unreachable)?;
    let mut results = if v1.status().is_success() {
        v1.json::<V1Answer>()
            .await
            .map_err(|e| RegistryError::Registry {
                reference: term.to_string(),
                message: format!("invalid search answer from {}: {e}", endpoint.host),
            })?
            .results
    } else {
        let catalog = get(format!("{scheme}://{}/v2/_catalog", endpoint.host))
            .send()
            .await
            .map_err(unreachable)?;
        if !catalog.status().is_success() {
            return Err(RegistryError::Registry {
                reference: term.to_string(),
                message: format!(
                    "registry {} has no search and its catalog answered {}",
                    endpoint.host,
                    catalog.status()
                ),
            });
        }
        let catalog: Catalog = catalog.json().await.map_err(|e| RegistryError::Registry {
            reference: term.to_string(),
            message: format!("invalid catalog from {}: {e}", endpoint.host),
        })?;
        catalog
            .repositories
            .into_iter()
            .filter(|r| r.contains(&wanted))
            .map(|r| SearchResult {
                name: format!("{host}/{r}"),
                description: String::new(),
                star_count: 0,
                is_official: false,
                is_automated: false,
            })
            .collect()
    };
    results.retain(|r| filters.keeps(r));
    results.truncate(limit);
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_name_their_registry() {
        assert_eq!(
            split_term("127.0.0.1:5000/busy"),
            ("127.0.0.1:5000".to_string(), "busy".to_string())
        );
        assert_eq!(
            split_term("busybox"),
            ("docker.io".to_string(), "busybox".to_string())
        );
    }

    #[test]
    fn filters_parse_and_apply() {
        let f = SearchFilters::parse(&[
            ("stars".to_string(), vec!["3".to_string()]),
            ("is-official".to_string(), vec!["true".to_string()]),
        ])
        .unwrap();
        let r = SearchResult {
            name: "x".into(),
            description: String::new(),
            star_count: 5,
            is_official: true,
            is_automated: false,
        };
        assert!(f.keeps(&r));
        assert!(!f.keeps(&SearchResult {
            star_count: 1,
            ..r.clone()
        }));
        assert!(SearchFilters::parse(&[("color".to_string(), vec!["red".to_string()])]).is_err());
    }
}
