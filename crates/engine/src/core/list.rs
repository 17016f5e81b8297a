//! `docker ps`: which containers a listing shows, by dockerd's rules (daemon/list.go): running
//! ones unless `all`, the `before`/`since` window, the filters, the limit.

use std::collections::BTreeMap;

use super::error::EngineError;
use super::{lookup, Engine};
use crate::state::ContainerRecord;

/// The filter keys `docker ps` accepts (daemon/list.go `acceptedPsFilterTags`).
const PS_FILTERS: [&str; 15] = [
    "ancestor",
    "before",
    "exited",
    "id",
    "isolation",
    "label",
    "name",
    "status",
    "health",
    "since",
    "volume",
    "network",
    "is-task",
    "publish",
    "expose",
];

/// The container states a `status` filter may name.
const STATES: [&str; 7] = [
    "created",
    "running",
    "paused",
    "restarting",
    "removing",
    "exited",
    "dead",
];

/// What a `GET /containers/json` asks for, checked as dockerd checks it.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    all: bool,
    limit: Option<usize>,
    filters: BTreeMap<String, Vec<String>>,
}

impl ListOptions {
    /// `all`, `limit` (none or not positive: no limit; any limit implies `all`, as with
    /// dockerd) and `filters`, refused with dockerd's texts when a filter is unknown or has a
    /// bad value.
    pub fn new(
        all: bool,
        limit: Option<i64>,
        filters: BTreeMap<String, Vec<String>>,
    ) -> Result<ListOptions, EngineError> {
        validate_ps_filters(&filters).map_err(|reason| EngineError::InvalidParameter { reason })?;
        let limit = limit
            .filter(|l| *l > 0)
            .map(|l| usize::try_from(l).unwrap_or(usize::MAX));
        Ok(ListOptions {
            all: all || limit.is_some(),
            limit,
            filters,
        })
    }

    /// The filters, for the ones judged on the listing as rendered (`volume`, `network`).
    pub fn filters(&self) -> &BTreeMap<String, Vec<String>> {
        &self.filters
    }
}

/// One container a listing shows.
#[derive(Debug, Clone)]
pub struct ListedContainer {
    /// Its record.
    pub record: ContainerRecord,
    /// The state Docker shows: the record's, or `restarting`/`paused`.
    pub state: &'static str,
}

impl Engine {
    /// `docker ps`: the containers `options` selects, newest first.
    pub fn list_containers(
        &self,
        options: &ListOptions,
    ) -> Result<Vec<ListedContainer>, EngineError> {
        let filters = &options.filters;
        let records = self.list();
        let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
        // As moby's foldFilter, the last `before`/`since` value counts.
        let boundary = |key: &str| {
            filters
                .get(key)
                .and_then(|values| values.last())
                .map(|value| lookup::id_or_name(&records, value))
                .transpose()
        };
        let mut before = boundary("before")?;
        let since = boundary("since")?;
        let mut out = Vec::new();
        for record in &records {
            // The list is newest first: skip down to the `before` container, stop at `since`.
            if let Some(id) = before {
                if record.id == id {
                    before = None;
                }
                continue;
            }
            if since == Some(record.id.as_str()) {
                break;
            }
            let status = if self.is_restarting(&record.id) {
                "restarting"
            } else if self.is_paused(&record.id) {
                "paused"
            } else {
                record.state.status.as_str()
            };
            if !options.all
                && !matches!(status, "running" | "restarting" | "paused")
                && !filters.contains_key("status")
            {
                continue;
            }
            if let Some(values) = filters.get("id") {
                if !id_filter_matches(values, &ids, &record.id) {
                    continue;
                }
            }
            let matches = filters.iter().all(|(key, values)| {
                // Every label filter must hold (moby's MatchKVList); other keys need one value.
                if key == "label" {
                    return lookup::labels_match(&record.config.labels, values);
                }
                values.iter().any(|v| match key.as_str() {
                    "status" => status == v,
                    "id" => true,
                    // dockerd matches a regular expression against the name with and without
                    // its `/` (daemon/list.go); an invalid expression matches nothing.
                    "name" => regex::Regex::new(v).is_ok_and(|re| {
                        re.is_match(&record.name)
                            || re.is_match(record.name.trim_start_matches('/'))
                    }),
                    "exited" => status == "exited" && record.state.exit_code.to_string() == *v,
                    "ancestor" => self.ancestor_matches(record, v),
                    "health" => {
                        record
                            .state
                            .health
                            .as_ref()
                            .map_or("none", |h| h.status.as_str())
                            == v
                    }
                    _ => true,
                })
            });
            if matches {
                out.push(ListedContainer {
                    record: record.clone(),
                    state: status,
                });
            }
        }
        if let Some(limit) = options.limit {
            out.truncate(limit);
        }
        Ok(out)
    }
}

/// dockerd's checks of `docker ps` filters (daemon/list.go `Containers`, `foldFilter`), with
/// its texts.
fn validate_ps_filters(filters: &BTreeMap<String, Vec<String>>) -> Result<(), String> {
    if let Some(key) = filters.keys().find(|k| !PS_FILTERS.contains(&k.as_str())) {
        return Err(format!("invalid filter '{key}'"));
    }
    for value in filters.get("exited").into_iter().flatten() {
        if value.parse::<i64>().is_err() {
            return Err(format!(
                "invalid filter 'exited={value}': strconv.Atoi: parsing {value:?}: invalid syntax"
            ));
        }
    }
    if let Some(value) = filters
        .get("health")
        .into_iter()
        .flatten()
        .find(|v| !crate::container::health::is_filter_value(v))
    {
        return Err(format!("Unrecognised filter value for health: {value}"));
    }
    for value in filters.get("status").into_iter().flatten() {
        if !STATES.contains(&value.as_str()) {
            return Err(format!(
                "invalid filter 'status={value}': invalid value for state ({value}): must be one of {}",
                STATES.join(", ")
            ));
        }
    }
    Ok(())
}

/// dockerd's `id` filter (daemon/list.go): each value picks the container it is a unique id
/// prefix of (`GetByPrefix`; an ambiguous or unknown prefix picks none), and the id must then
/// match one value exactly or as an unanchored regular expression (`filters.Args.Match`).
fn id_filter_matches(values: &[String], ids: &[&str], id: &str) -> bool {
    let picked = values.iter().any(|v| {
        if v.is_empty() {
            return false;
        }
        let mut hits = ids.iter().filter(|i| i.starts_with(v.as_str()));
        matches!((hits.next(), hits.next()), (Some(hit), None) if *hit == id)
    });
    picked
        && values
            .iter()
            .any(|v| v == id || regex::Regex::new(v).is_ok_and(|re| re.is_match(id)))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{engine_with, record};
    use super::*;
    use crate::state::Status;

    fn filters(json: &str) -> BTreeMap<String, Vec<String>> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn id_filters_pick_unique_prefixes_then_match_like_dockerd() {
        let ids = ["abc123", "abd456", "ff0abc"];
        let pick = |values: &[&str]| -> Vec<&str> {
            let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
            ids.iter()
                .copied()
                .filter(|id| id_filter_matches(&values, &ids, id))
                .collect()
        };
        assert_eq!(pick(&["abc"]), ["abc123"]);
        assert_eq!(pick(&["abc123"]), ["abc123"]);
        // Ambiguous: `ab` starts two ids, so dockerd's GetByPrefix picks none.
        assert!(pick(&["ab"]).is_empty());
        // Not a prefix: the regular expression alone does not pick a container.
        assert!(pick(&["0abc"]).is_empty());
        assert!(pick(&["^ff"]).is_empty());
        assert_eq!(pick(&["abc", "ff0"]), ["abc123", "ff0abc"]);
        assert!(pick(&[""]).is_empty());
    }

    #[test]
    fn ps_filters_are_checked_with_dockerds_texts() {
        let check = |json: &str| {
            ListOptions::new(false, None, filters(json))
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert!(check(r#"{"status":["paused"],"exited":["3"]}"#).is_ok());
        assert_eq!(
            check(r#"{"colour":["red"]}"#).unwrap_err(),
            "invalid filter 'colour'"
        );
        assert_eq!(
            check(r#"{"exited":["x"]}"#).unwrap_err(),
            r#"invalid filter 'exited=x': strconv.Atoi: parsing "x": invalid syntax"#
        );
        assert_eq!(
            check(r#"{"status":["up"]}"#).unwrap_err(),
            "invalid filter 'status=up': invalid value for state (up): must be one of created, running, paused, restarting, removing, exited, dead"
        );
    }

    /// What `docker ps` shows, decided by the core: stopped containers only with `--all`, a
    /// limit implying it, and the filters.
    #[tokio::test]
    async fn listings_follow_all_limit_and_filters() {
        let (_dir, engine) = engine_with(&[
            record("aaa111", "old", Status::Exited, false),
            record("bbb222", "new", Status::Created, false),
        ]);
        let names = |all: bool, limit: Option<i64>, json: &str| -> Vec<String> {
            let options = ListOptions::new(all, limit, filters(json)).unwrap();
            let listed = engine.list_containers(&options).unwrap();
            listed.into_iter().map(|c| c.record.name).collect()
        };
        assert!(names(false, None, "{}").is_empty());
        assert_eq!(names(true, None, "{}").len(), 2);
        assert_eq!(names(false, Some(1), "{}").len(), 1);
        assert_eq!(names(false, None, r#"{"status":["exited"]}"#), ["/old"]);
        assert_eq!(names(true, None, r#"{"name":["^/?new$"]}"#), ["/new"]);
        assert_eq!(names(true, None, r#"{"id":["aaa"]}"#), ["/old"]);
        assert!(names(true, None, r#"{"label":["x"]}"#).is_empty());
    }
}
