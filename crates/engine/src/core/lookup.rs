//! Lookups for `ps` filters (moby daemon/list.go): the image store for `ancestor`, the
//! container list for `before`/`since`, the listing itself for `volume` and `network`.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Engine, EngineError};
use crate::state::ContainerRecord;

/// moby's `idOrNameFilter`: the container whose full id, else whose name (with or without
/// its `/`), is `value`; no prefixes.
pub fn id_or_name<'a>(records: &'a [ContainerRecord], value: &str) -> Result<&'a str, EngineError> {
    let name = value.strip_prefix('/').unwrap_or(value);
    records
        .iter()
        .find(|r| r.id == value)
        .or_else(|| {
            records
                .iter()
                .find(|r| r.name.strip_prefix('/').unwrap_or(&r.name) == name)
        })
        .map(|r| r.id.as_str())
        .ok_or_else(|| EngineError::NoSuchContainer {
            reference: value.to_string(),
        })
}

/// moby's `MatchKVList`: every `key` or `key=value` holds.
pub fn labels_match(labels: &BTreeMap<String, String>, wanted: &[String]) -> bool {
    wanted.iter().all(|w| match w.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
        None => labels.contains_key(w),
    })
}

/// The `volume` and `network` filters, judged on a `GET /containers/json` entry: a volume is
/// named by its mount's name (or source, for a bind) or destination; a network by its name
/// or a prefix of its id.
pub fn summary_matches(summary: &Value, filters: &BTreeMap<String, Vec<String>>) -> bool {
    let volume_ok = filters.get("volume").is_none_or(|values| {
        let mounts = summary["Mounts"].as_array().map_or(&[][..], Vec::as_slice);
        values.iter().any(|v| {
            mounts.iter().any(|m| {
                let name = m["Name"].as_str().filter(|n| !n.is_empty());
                let key = name.or_else(|| m["Source"].as_str());
                key == Some(v.as_str()) || m["Destination"].as_str() == Some(v.as_str())
            })
        })
    });
    let network_ok = filters.get("network").is_none_or(|values| {
        let networks = summary["NetworkSettings"]["Networks"].as_object();
        values.iter().any(|v| {
            networks.is_some_and(|nets| {
                nets.contains_key(v)
                    || nets.values().any(|n| {
                        n["NetworkID"]
                            .as_str()
                            .is_some_and(|id| id.starts_with(v.as_str()))
                    })
            })
        })
    });
    volume_ok && network_ok
}

impl Engine {
    /// Docker's `ancestor` filter: the container's image is the one `reference` names (a name
    /// with or without tag, or an id or id prefix).
    pub fn ancestor_matches(&self, record: &ContainerRecord, reference: &str) -> bool {
        if record.config.image == reference {
            return true;
        }
        let bare = |s: &str| s.trim_start_matches("sha256:").to_string();
        if reference.len() >= 4
            && reference.chars().all(|c| c.is_ascii_hexdigit() || c == ':')
            && bare(&record.image_id).starts_with(&bare(reference))
        {
            return true;
        }
        self.inner
            .images
            .resolve(reference)
            .is_ok_and(|image| image.id == record.image_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_must_all_hold() {
        let labels = BTreeMap::from([
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
        ]);
        let want = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(labels_match(&labels, &want(&["a=1", "b=2"])));
        assert!(labels_match(&labels, &want(&["a", "b=2"])));
        assert!(!labels_match(&labels, &want(&["a=1", "c"])));
        assert!(!labels_match(&labels, &want(&["a=2"])));
        assert!(!labels_match(&BTreeMap::new(), &want(&["a"])));
    }

    #[test]
    fn volumes_and_networks_match_what_the_listing_shows() {
        let summary = json!({
            "Mounts": [{"Type": "bind", "Name": "", "Source": "/srv", "Destination": "/data"},
                       {"Type": "volume", "Name": "cache", "Source": "/var/lib/x",
                        "Destination": "/cache"}],
            "NetworkSettings": {"Networks": {"bridge": {"NetworkID": "abc123"}}}
        });
        let only = |k: &str, v: &str| BTreeMap::from([(k.to_string(), vec![v.to_string()])]);
        assert!(summary_matches(&summary, &BTreeMap::new()));
        assert!(summary_matches(&summary, &only("volume", "/data")));
        assert!(summary_matches(&summary, &only("volume", "/srv")));
        assert!(summary_matches(&summary, &only("volume", "cache")));
        assert!(!summary_matches(&summary, &only("volume", "/var/lib/x")));
        assert!(!summary_matches(&summary, &only("volume", "/x")));
        assert!(summary_matches(&summary, &only("network", "bridge")));
        assert!(summary_matches(&summary, &only("network", "abc")));
        assert!(!summary_matches(&summary, &only("network", "none")));
        let bare = json!({"Mounts": [], "NetworkSettings": {"Networks": {}}});
        assert!(!summary_matches(&bare, &only("volume", "/x")));
        assert!(!summary_matches(&bare, &only("network", "none")));
    }
}
