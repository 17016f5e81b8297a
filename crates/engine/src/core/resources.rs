//! A running container's resources: `docker update`, `docker top`, `docker stats`, and the
//! checks of cgroup limits and cpusets shared with create.

use rmachine_runtime::spec::Resources;

use super::error::EngineError;
use super::{cgroup_err, cgroup_of, conflict, non_empty, Engine};
use crate::state::{HostConfig, Status};

/// Docker's smallest `--memory`.
const MIN_MEMORY: i64 = 6 * 1024 * 1024;

/// The cgroup limits in a `HostConfig`.
pub(super) fn resources_of(host: &HostConfig) -> Option<Resources> {
    let positive = |v: i64| (v > 0).then_some(v);
    let mut r = Resources {
        memory_bytes: positive(host.memory),
        memory_swap_bytes: (host.memory_swap != 0).then_some(host.memory_swap),
        cpu_shares: positive(host.cpu_shares).and_then(|v| u64::try_from(v).ok()),
        pids_limit: host.pids_limit.filter(|v| *v != 0),
        cpuset_cpus: non_empty(&host.cpuset_cpus),
        cpuset_mems: non_empty(&host.cpuset_mems),
        ..Resources::default()
    };
    if let Some(nano) = positive(host.nano_cpus) {
        r.cpu_period = Some(100_000);
        r.cpu_quota = Some(nano / 10_000);
    } else {
        r.cpu_quota = positive(host.cpu_quota);
        r.cpu_period = positive(host.cpu_period).and_then(|v| u64::try_from(v).ok());
    }
    (r != Resources::default()).then_some(r)
}

/// dockerd's checks of the limits in a create or update request (daemon/daemon_unix.go
/// `verifyPlatformContainerResources`), with its texts.
pub(super) fn verify_resources(host: &HostConfig) -> Result<(), EngineError> {
    let invalid = |reason: String| EngineError::InvalidParameter { reason };
    let memory = host.memory;
    if memory != 0 && memory < MIN_MEMORY {
        return Err(invalid("Minimum memory limit allowed is 6MB".into()));
    }
    let swap = host.memory_swap;
    if memory > 0 && swap > 0 && swap < memory {
        return Err(invalid(
            "Minimum memoryswap limit should be larger than memory limit, see usage".into(),
        ));
    }
    let nano = host.nano_cpus;
    if nano > 0 && host.cpu_period > 0 {
        return Err(invalid(
            "Conflicting options: Nano CPUs and CPU Period cannot both be set".into(),
        ));
    }
    if nano > 0 && host.cpu_quota > 0 {
        return Err(invalid(
            "Conflicting options: Nano CPUs and CPU Quota cannot both be set".into(),
        ));
    }
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let cpus = i64::try_from(cpus).unwrap_or(i64::MAX);
    if nano != 0 && (nano < 0 || nano > cpus.saturating_mul(1_000_000_000)) {
        return Err(invalid(format!(
            "range of CPUs is from 0.01 to {cpus}.00, as there are only {cpus} CPUs available"
        )));
    }
    // The CLI sends -1 for "not set" (daemon.go `fixMemorySwappiness`).
    let swappiness = host.memory_swappiness.filter(|v| *v != -1);
    if let Some(v) = swappiness.filter(|v| !(0..=100).contains(v)) {
        return Err(invalid(format!(
            "Invalid value: {v}, valid memory swappiness range is 0-100"
        )));
    }
    if host.cpu_period != 0 && !(1000..=1_000_000).contains(&host.cpu_period) {
        return Err(invalid(
            "CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s (i.e. 1000000)"
                .into(),
        ));
    }
    if host.cpu_quota > 0 && host.cpu_quota < 1000 {
        return Err(invalid(
            "CPU cfs quota can not be less than 1ms (i.e. 1000)".into(),
        ));
    }
    verify_cpuset(&host.cpuset_cpus, "cpus", "CPUs", "cpuset.cpus")?;
    verify_cpuset(&host.cpuset_mems, "mems", "memory nodes", "cpuset.mems")?;
    Ok(())
}

/// moby's `parsers.ParseUintList`: `0-2,5` style lists; `None` when malformed.
/// The largest CPU or memory-node number a cpuset list may name: the kernel's NR_CPUS limit.
/// Checked before expanding a range, so `0-4294967295` is refused instead of filling memory
/// (moby's `ParseUintListMaximum` exists for the same reason).
const MAX_CPUSET_INDEX: u32 = 8191;

fn parse_cpuset(list: &str) -> Option<std::collections::BTreeSet<u32>> {
    let mut set = std::collections::BTreeSet::new();
    if list.is_empty() {
        return Some(set);
    }
    for part in list.split(',') {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (lo.parse::<u32>().ok()?, hi.parse::<u32>().ok()?);
                if hi < lo || hi > MAX_CPUSET_INDEX {
                    return None;
                }
                set.extend(lo..=hi);
            }
            None => {
                set.insert(
                    part.parse::<u32>()
                        .ok()
                        .filter(|n| *n <= MAX_CPUSET_INDEX)?,
                );
            }
        }
    }
    Some(set)
}

/// What the host's cpuset offers (`cpuset.cpus` / `cpuset.mems` of the root cpuset cgroup),
/// as dockerd's sysinfo reads it; `None` when there is no cpuset controller to ask.
fn available_cpuset(file: &str) -> Option<String> {
    let candidates = [
        format!("/sys/fs/cgroup/cpuset/{file}"),
        format!("/sys/fs/cgroup/{file}.effective"),
    ];
    candidates
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .or_else(|| {
            (file == "cpuset.cpus")
                .then(|| std::fs::read_to_string("/sys/devices/system/cpu/online").ok())
                .flatten()
        })
        .map(|s| s.trim().to_string())
}

/// dockerd's cpuset checks (sysinfo `IsCpusetCpusAvailable` / `IsCpusetMemsAvailable`), with
/// its texts.
fn verify_cpuset(requested: &str, short: &str, long: &str, file: &str) -> Result<(), EngineError> {
    if requested.is_empty() {
        return Ok(());
    }
    let Some(wanted) = parse_cpuset(requested) else {
        return Err(EngineError::InvalidParameter {
            reason: format!(
                "Invalid value {requested} for cpuset {short}: invalid format: {requested}"
            ),
        });
    };
    let Some(available) = available_cpuset(file) else {
        return Ok(());
    };
    let have = parse_cpuset(&available).unwrap_or_default();
    if !wanted.is_subset(&have) {
        return Err(EngineError::InvalidParameter {
            reason: format!(
                "Requested {long} are not available - requested {requested}, available: {available}"
            ),
        });
    }
    Ok(())
}

/// Merges an update request into a container's host config as dockerd's
/// `Container.UpdateContainer` does: non-zero limits replace the old ones, some combinations
/// are refused (their texts), a restart policy with a name replaces the old one.
pub(super) fn merge_update(
    current: &HostConfig,
    update: &HostConfig,
) -> Result<HostConfig, String> {
    let (new, old) = (update, current);
    if new.nano_cpus > 0 && old.cpu_period > 0 {
        return Err(
            "Conflicting options: Nano CPUs cannot be updated as CPU Period has already been set"
                .into(),
        );
    }
    if new.nano_cpus > 0 && old.cpu_quota > 0 {
        return Err(
            "Conflicting options: Nano CPUs cannot be updated as CPU Quota has already been set"
                .into(),
        );
    }
    if new.cpu_period > 0 && old.nano_cpus > 0 {
        return Err(
            "Conflicting options: CPU Period cannot be updated as NanoCPUs has already been set"
                .into(),
        );
    }
    if new.cpu_quota > 0 && old.nano_cpus > 0 {
        return Err(
            "Conflicting options: CPU Quota cannot be updated as NanoCPUs has already been set"
                .into(),
        );
    }
    if new.memory != 0 && new.memory > old.memory_swap && new.memory_swap == 0 {
        return Err("Memory limit should be smaller than already set memoryswap limit, update the memoryswap at the same time".into());
    }
    let mut host = current.clone();
    let replace = |target: &mut i64, value: i64| {
        if value != 0 {
            *target = value;
        }
    };
    replace(&mut host.cpu_shares, new.cpu_shares);
    replace(&mut host.nano_cpus, new.nano_cpus);
    replace(&mut host.cpu_period, new.cpu_period);
    replace(&mut host.cpu_quota, new.cpu_quota);
    replace(&mut host.memory, new.memory);
    replace(&mut host.memory_swap, new.memory_swap);
    // As dockerd's UpdateContainer: a non-empty cpuset replaces the container's.
    if !new.cpuset_cpus.is_empty() {
        host.cpuset_cpus = new.cpuset_cpus.clone();
    }
    if !new.cpuset_mems.is_empty() {
        host.cpuset_mems = new.cpuset_mems.clone();
    }
    if let Some(pids) = new.pids_limit {
        // Any value up to 0 means "unlimited" and is stored as 0 (container_routes.go
        // `postContainerUpdate`).
        host.pids_limit = Some(pids.max(0));
    }
    let policy = &new.restart_policy;
    if !policy.name.is_empty() {
        if current.auto_remove && policy.name != "no" {
            return Err(
                "Restart policy cannot be updated because AutoRemove is enabled for the container"
                    .into(),
            );
        }
        host.restart_policy = policy.clone();
    }
    Ok(host)
}

impl Engine {
    /// `docker update`: stores the new limits and applies them to a running container.
    pub async fn update_resources(
        &self,
        reference: &str,
        update: HostConfig,
    ) -> Result<Vec<String>, EngineError> {
        // As dockerd: the request is checked on its own first (verifyContainerSettings), then
        // against the container.
        super::unsupported::check_update(&update)?;
        super::options::check_update(&update)?;
        verify_resources(&update)?;
        super::restart::validate_policy(&update.restart_policy)?;
        let c = self.container(reference)?;
        let _op = c.op.lock().await;
        let host = merge_update(&c.record().host_config, &update)
            .map_err(|reason| conflict(format!("Cannot update container {}: {reason}", c.id)))?;
        let record = c.record();
        if record.state.status == Status::Running {
            let mut resources = resources_of(&host);
            if let Some(pids) = update.pids_limit {
                // `resources_of` leaves out an unlimited (0) count, which must lift the limit.
                resources.get_or_insert_with(Resources::default).pids_limit = Some(pids.max(0));
            }
            if let Some(resources) = resources {
                cgroup_of(&record)?
                    .update(&resources)
                    .map_err(cgroup_err(&c.id))?;
            }
        }
        c.update(|r| r.host_config = host);
        self.inner.state.save(&c.record())?;
        self.emit(&c.record(), "update", &[]);
        Ok(Vec::new())
    }

    /// `docker top`: the container's processes as `ps` shows them.
    pub fn top(
        &self,
        reference: &str,
        ps_args: &str,
    ) -> Result<crate::container::top::Top, EngineError> {
        let c = self.container(reference)?;
        let record = c.record();
        if record.state.status != Status::Running {
            return Err(EngineError::NotRunning { id: c.id.clone() });
        }
        let pids = match cgroup_of(&record).and_then(|g| g.pids().map_err(cgroup_err(&c.id))) {
            Ok(pids) if !pids.is_empty() => pids,
            _ => crate::container::top::namespace_pids(record.state.pid),
        };
        crate::container::top::render(&pids, ps_args).map_err(|reason| EngineError::Top {
            id: c.id.clone(),
            reason,
        })
    }

    /// One `docker stats` sample (without `precpu_stats`).
    pub fn stats_sample(
        &self,
        reference: &str,
    ) -> Result<crate::container::stats::StatsSample, EngineError> {
        let c = self.container(reference)?;
        let record = c.record();
        let running = record.state.status == Status::Running;
        let stats = if running {
            cgroup_of(&record)?.stats().map_err(cgroup_err(&c.id))?
        } else {
            Default::default()
        };
        let pids_limit = record.host_config.pids_limit.filter(|v| *v > 0);
        Ok(crate::container::stats::sample(
            &record, running, &stats, pids_limit,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::host_config::{features_of, normalize_host_config};
    use super::super::remove::go_duration;
    use super::*;
    use serde_json::{json, Value};

    fn host(json: Value) -> HostConfig {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn host_config_limits_become_runtime_resources() {
        let mut h = host(
            json!({"Memory": 67108864, "NanoCpus": 1500000000i64, "PidsLimit": 50,
            "CapDrop": ["ALL"], "Init": true}),
        );
        normalize_host_config(&mut h).unwrap();
        assert_eq!(h.memory_swap, 134217728);
        let f = features_of(&h);
        let r = f.resources.unwrap();
        assert_eq!(r.memory_bytes, Some(67108864));
        assert_eq!(r.memory_swap_bytes, Some(134217728));
        assert_eq!((r.cpu_quota, r.cpu_period), (Some(150000), Some(100000)));
        assert_eq!(r.pids_limit, Some(50));
        assert_eq!(f.capabilities.unwrap().drop, vec!["ALL".to_string()]);
        assert!(f.init);
        assert!(!f.privileged);
    }

    #[test]
    fn updates_merge_and_refuse_as_dockerd_does() {
        let current =
            host(json!({"Memory": 67108864, "MemorySwap": 134217728, "NanoCpus": 1000000000i64}));
        let update = host(json!({"Memory": 100000000, "MemorySwap": 0, "CpuShares": 0,
            "RestartPolicy": {"Name": "always"}}));
        let merged = merge_update(&current, &update).unwrap();
        assert_eq!(merged.memory, 100000000);
        // The swap limit stays; no default is applied on update.
        assert_eq!(merged.memory_swap, 134217728);
        assert_eq!(super::super::restart::policy_of(&merged).name, "always");
        let too_big = host(json!({"Memory": 200000000}));
        assert_eq!(
            merge_update(&current, &too_big).unwrap_err(),
            "Memory limit should be smaller than already set memoryswap limit, update the memoryswap at the same time"
        );
        let period = host(json!({"CpuPeriod": 50000}));
        assert_eq!(
            merge_update(&current, &period).unwrap_err(),
            "Conflicting options: CPU Period cannot be updated as NanoCPUs has already been set"
        );
        let auto_remove = HostConfig {
            auto_remove: true,
            ..HostConfig::default()
        };
        assert_eq!(
            merge_update(
                &auto_remove,
                &host(json!({"RestartPolicy": {"Name": "always"}}))
            )
            .unwrap_err(),
            "Restart policy cannot be updated because AutoRemove is enabled for the container"
        );
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(
            verify_resources(&host(json!({"NanoCpus": 1000i64 * 1000000000})))
                .unwrap_err()
                .to_string(),
            format!(
                "range of CPUs is from 0.01 to {cpus}.00, as there are only {cpus} CPUs available"
            )
        );
        let mut relative = host(json!({"Tmpfs": {"run": ""}}));
        assert_eq!(
            normalize_host_config(&mut relative)
                .unwrap_err()
                .to_string(),
            "invalid mount path: 'run' mount path must be absolute"
        );
        let mut root = host(json!({"Tmpfs": {"/": ""}}));
        assert_eq!(
            normalize_host_config(&mut root).unwrap_err().to_string(),
            "invalid specification: destination can't be '/'"
        );
    }

    #[test]
    fn go_durations_and_cpusets_parse_like_go() {
        assert_eq!(go_duration("1h30m"), Some(chrono::Duration::minutes(90)));
        assert_eq!(go_duration("1.5h"), Some(chrono::Duration::minutes(90)));
        assert_eq!(
            go_duration("300ms"),
            Some(chrono::Duration::milliseconds(300))
        );
        assert_eq!(go_duration("-2s"), Some(chrono::Duration::seconds(-2)));
        assert_eq!(go_duration("10"), None);
        assert_eq!(go_duration("soon"), None);
        assert_eq!(
            parse_cpuset("0-2,5"),
            Some([0, 1, 2, 5].into_iter().collect())
        );
        assert_eq!(parse_cpuset("2-1"), None);
        assert_eq!(
            parse_cpuset("0-4294967295"),
            None,
            "refused before expanding"
        );
        assert_eq!(parse_cpuset("9000"), None);
        assert_eq!(parse_cpuset("a"), None);
        let mut h = host(json!({"CpusetCpus": "0-x"}));
        assert_eq!(
            normalize_host_config(&mut h).unwrap_err().to_string(),
            "Invalid value 0-x for cpuset cpus: invalid format: 0-x"
        );
    }
}
