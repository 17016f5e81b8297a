//! `docker rm` and `docker container prune`, with prune's filters.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tracing::info;

use super::error::EngineError;
use super::lifecycle::stop_process;
use super::{lock, options, signal, Engine};
use crate::container::Container;
use crate::state::{ContainerRecord, Status};

/// What `POST /containers/prune` removed.
#[derive(Debug, Default)]
pub struct PruneReport {
    /// Ids of the removed containers.
    pub deleted: Vec<String>,
    /// Bytes their writable layers held.
    pub space_reclaimed: u64,
}

/// The filters of `POST /containers/prune` (daemon/prune.go `ContainerPrune`): `until`,
/// `label` (every one must match) and `label!` (none may match).
#[derive(Debug, Clone, Default)]
pub struct PruneFilters {
    until: Option<DateTime<Utc>>,
    labels: Vec<String>,
    not_labels: Vec<String>,
}

impl PruneFilters {
    /// Checks the decoded `filters` query; Docker's texts for unknown filters and bad times.
    pub fn parse(filters: &BTreeMap<String, Vec<String>>) -> Result<PruneFilters, EngineError> {
        let invalid = |reason: String| EngineError::InvalidParameter { reason };
        if let Some(key) = filters
            .keys()
            .find(|k| !matches!(k.as_str(), "label" | "label!" | "until"))
        {
            return Err(invalid(format!("invalid filter '{key}'")));
        }
        let until = match filters.get("until").map(Vec::as_slice) {
            None | Some([]) => None,
            Some([value]) => Some(parse_until(value, Utc::now()).map_err(invalid)?),
            Some(_) => return Err(invalid("more than one until filter specified".into())),
        };
        let get = |key: &str| filters.get(key).cloned().unwrap_or_default();
        Ok(PruneFilters {
            until,
            labels: get("label"),
            not_labels: get("label!"),
        })
    }

    /// Whether a stopped container is to be pruned.
    pub fn matches(&self, record: &ContainerRecord) -> bool {
        self.matches_object(record.created, &record.config.labels)
    }

    /// Whether an object created then with these labels is to be pruned (networks take the
    /// same filters: daemon/prune.go `networksAcceptedFilters`).
    pub fn matches_object(
        &self,
        created: DateTime<Utc>,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        if self.until.is_some_and(|until| created > until) {
            return false;
        }
        let all = |list: &[String]| super::lookup::labels_match(labels, list);
        if !self.labels.is_empty() && !all(&self.labels) {
            return false;
        }
        self.not_labels.is_empty() || !all(&self.not_labels)
    }
}

/// Go's `time.ParseDuration` (`1h30m`, `1.5h`, `300ms`); `None` when it is not one.
pub(super) fn go_duration(value: &str) -> Option<chrono::Duration> {
    let (negative, mut rest) = match value.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, value.strip_prefix('+').unwrap_or(value)),
    };
    if rest == "0" {
        return Some(chrono::Duration::zero());
    }
    if rest.is_empty() {
        return None;
    }
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        nanos += number * scale;
    }
    // Durations beyond i64 nanoseconds are not valid Go durations either.
    if !nanos.is_finite() || nanos > 9.2e18 {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)]
    let d = chrono::Duration::nanoseconds(nanos as i64);
    Some(if negative { -d } else { d })
}

/// moby's `timestamp.Parse` for `until=`: a Go duration before `now`, an RFC 3339 time or
/// date (UTC when no zone is given: the engine's local zone), or Unix seconds.
pub(super) fn parse_until(value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if value.trim().is_empty() {
        return Err("failed to parse value as time or duration: value is empty".into());
    }
    if value != "0" {
        if let Some(d) = go_duration(value) {
            return Ok(now - d);
        }
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(value, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc());
        }
    }
    if value.contains('-') {
        return Err(format!("parsing time {value:?}: cannot parse as a time"));
    }
    crate::api::stream::parse_time(Some(value))
        .ok()
        .map(|t| t.unwrap_or(DateTime::UNIX_EPOCH))
        .ok_or_else(|| {
            format!("failed to parse value as time or duration: invalid seconds {value:?}")
        })
}

impl Engine {
    /// Removes a container; a running one only with `force` (it is killed first).
    pub async fn remove(&self, reference: &str, force: bool) -> Result<(), EngineError> {
        self.remove_with_volumes(reference, force, false).await
    }

    /// `docker rm [-f] [-v]`: with `volumes`, the container's anonymous volumes go too.
    pub async fn remove_with_volumes(
        &self,
        reference: &str,
        force: bool,
        volumes: bool,
    ) -> Result<(), EngineError> {
        let c = self.container(reference)?;
        let _op = c.op.lock().await;
        if c.lifecycle().borrow().removed {
            // Another request removed it while this one waited: dockerd reports the race
            // (daemon/delete.go `SetRemovalInProgress`), so `rm a a` does not succeed twice.
            return Err(EngineError::Conflict {
                reason: format!("removal of container {reference} is already in progress"),
            });
        }
        let record = c.record();
        if record.state.status == Status::Running {
            if !force && record.state.paused {
                return Err(EngineError::RemovePaused {
                    name: reference.to_string(),
                });
            }
            if !force {
                return Err(EngineError::RemoveRunning {
                    name: reference.to_string(),
                });
            }
            self.thaw_for_signal(&c);
            stop_process(self, &c, &record, signal::SIGKILL, 0).await;
        } else if self.is_restarting(&c.id) {
            if !force {
                return Err(EngineError::RemoveRestarting {
                    name: reference.to_string(),
                });
            }
            self.cancel_restart(&c.id);
        }
        self.remove_locked(&c)?;
        if volumes {
            self.remove_anonymous_volumes(&record.mount_points);
        }
        Ok(())
    }

    /// Removes every container that is not running and that `filters` select; reports their
    /// ids and the size of their writable layers (moby's containerPrune `SpaceReclaimed`).
    pub async fn prune(&self, filters: &PruneFilters) -> Result<PruneReport, EngineError> {
        let mut report = PruneReport::default();
        for record in self.list() {
            let Ok(c) = self.container(&record.id) else {
                continue;
            };
            let _op = c.op.lock().await;
            if c.record().state.status == Status::Running || !filters.matches(&c.record()) {
                continue;
            }
            let upper = self.inner.state.dir(&c.id).join("upper");
            let size = crate::container::archive::dir_size(&upper);
            self.remove_locked(&c)?;
            report.deleted.push(c.id.clone());
            report.space_reclaimed = report.space_reclaimed.saturating_add(size);
        }
        Ok(report)
    }

    /// Removes a stopped container; the caller holds its operation lock.
    pub(super) fn remove_locked(&self, c: &Arc<Container>) -> Result<(), EngineError> {
        if c.lifecycle().borrow().removed {
            return Ok(());
        }
        // Left mounted by an engine that died before seeing the exit.
        options::unmount_shm(&c.dir);
        // A cgroup the monitor could not remove (it was killed) goes with the container.
        crate::recovery::remove_cgroup(&c.dir, &c.id);
        self.inner.state.remove(&c.id)?;
        self.forget(c);
        // Clients attached to a container that never ran would otherwise wait forever.
        c.close_subscribers();
        c.notify(|l| l.removed = true);
        info!(container = %c.id, "removed");
        self.emit(&c.record(), "destroy", &[]);
        Ok(())
    }

    pub(super) fn forget(&self, c: &Container) {
        let mut table = lock(&self.inner.table);
        table.by_id.remove(&c.id);
        table.names.retain(|_, id| *id != c.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prune_filters_follow_moby() {
        let filters = |pairs: &[(&str, &str)]| {
            let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (k, v) in pairs {
                map.entry(k.to_string()).or_default().push(v.to_string());
            }
            PruneFilters::parse(&map)
        };
        assert_eq!(
            filters(&[("bogus", "1")]).unwrap_err().to_string(),
            "invalid filter 'bogus'"
        );
        assert_eq!(
            filters(&[("until", "1h"), ("until", "2h")])
                .unwrap_err()
                .to_string(),
            "more than one until filter specified"
        );
        let mut record: ContainerRecord = serde_json::from_value(json!({
            "Id": "a", "Name": "/a", "Created": "2020-01-01T00:00:00Z", "Path": "true",
            "Args": [], "ImageId": "sha256:00", "Config": {"Labels": {"keep": "1", "x": "y"}},
            "HostConfig": {},
            "State": {"Status": "exited", "Pid": 0, "ExitCode": 0, "Error": "",
                      "StartedAt": null, "FinishedAt": null},
            "RestartCount": 0
        }))
        .unwrap();
        assert!(filters(&[]).unwrap().matches(&record));
        assert!(filters(&[("label", "keep"), ("label", "x=y")])
            .unwrap()
            .matches(&record));
        // Every `label` must match.
        assert!(!filters(&[("label", "keep"), ("label", "x=z")])
            .unwrap()
            .matches(&record));
        assert!(!filters(&[("label!", "keep")]).unwrap().matches(&record));
        assert!(filters(&[("label!", "keep=2")]).unwrap().matches(&record));
        assert!(filters(&[("until", "1h")]).unwrap().matches(&record));
        assert!(!filters(&[("until", "2019-12-31")])
            .unwrap()
            .matches(&record));
        assert!(filters(&[("until", "2020-01-01T00:00:01Z")])
            .unwrap()
            .matches(&record));
        assert!(!filters(&[("until", "1577836799")])
            .unwrap()
            .matches(&record));
        record.config.labels.clear();
        assert!(filters(&[("label!", "keep")]).unwrap().matches(&record));
        assert!(!filters(&[("label", "keep")]).unwrap().matches(&record));
    }
}
