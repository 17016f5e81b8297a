//! Engine operations on running containers beyond the lifecycle: exec, pause/unpause, update,
//! top and stats, plus the runtime features (limits, capabilities, `--privileged`, `--init`)
//! taken from a container's `HostConfig`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use rmachine_runtime::cgroup::{Cgroup, CgroupError};
use rmachine_runtime::spec::{
    self, CapabilitySpec, ExecFile, ExecSpec, Features, Resources, SpecFile,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{io_err, new_id, AttachSession, Engine, EngineError, DRAIN_TIMEOUT};
use crate::container::exec::{self as exec_io, ExecConfig, ExecInstance};
use crate::container::launch::{self, LaunchError, LaunchIo, StdioOptions};
use crate::container::{config, io, Container, Output, StdinEvent, StreamKind};
use crate::state::{ContainerRecord, HostConfig, Status};

/// Docker's smallest `--memory`.
const MIN_MEMORY: i64 = 6 * 1024 * 1024;
/// dockerd's default `/dev/shm` size (64 MiB), shown as `HostConfig.ShmSize`.
const DEFAULT_SHM_SIZE: i64 = 64 * 1024 * 1024;
/// The runtime name `HostConfig.Runtime` gets, the default runtime `/info` reports: clients
/// (docker-py, compose) expect dockerd's `runc`, and rmachine-runtime stands in for it.
pub const DEFAULT_RUNTIME: &str = "runc";

/// State of the features this module adds, kept beside the container table.
#[derive(Debug, Default)]
pub(super) struct Extras {
    execs: Mutex<HashMap<String, Arc<ExecInstance>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn conflict(reason: String) -> EngineError {
    EngineError::Conflict { reason }
}

fn cgroup_err(id: &str) -> impl FnOnce(CgroupError) -> EngineError + '_ {
    move |source| EngineError::Cgroup {
        id: id.to_string(),
        source,
    }
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_string())
}

/// The cgroup limits in a `HostConfig`.
fn resources_of(host: &HostConfig) -> Option<Resources> {
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
fn verify_resources(host: &HostConfig) -> Result<(), EngineError> {
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

/// The warnings dockerd returns with a created container (daemon/daemon_unix.go
/// `verifyPlatformContainerResources`); the CLI prints each as `WARNING: ...`.
pub fn create_warnings(host: &HostConfig) -> Vec<String> {
    let mut warnings = Vec::new();
    if host.oom_kill_disable == Some(true) && host.memory == 0 {
        warnings.push("OOM killer is disabled for the container, but no memory limit is set, this can result in the system running out of resources.".to_string());
    }
    warnings
}

/// Fills the `HostConfig` fields dockerd sets at create when the client leaves them empty
/// (daemon/create.go, daemon_unix.go `adaptContainerSettings`), so that `inspect` shows what
/// the container gets.
/// The cgroup namespace a container gets: its own on cgroup v2, the host's on v1 (dockerd's
/// defaults, which the runtime follows).
pub(super) fn default_cgroupns_mode() -> &'static str {
    if crate::sysinfo::cgroup_version() == "2" {
        "private"
    } else {
        "host"
    }
}

fn fill_defaults(host: &mut HostConfig) {
    if host.ipc_mode.is_empty() {
        host.ipc_mode = "private".into();
    }
    if host.shm_size == 0 {
        host.shm_size = DEFAULT_SHM_SIZE;
    }
    if host.runtime.is_empty() {
        host.runtime = DEFAULT_RUNTIME.into();
    }
    if host.cgroupns_mode.is_empty() {
        host.cgroupns_mode = default_cgroupns_mode().into();
    }
    // A privileged container gets no masks, and dockerd leaves the lists null for it.
    if !host.privileged {
        if host.masked_paths.as_ref().is_none_or(Vec::is_empty) {
            host.masked_paths = Some(
                rmachine_runtime::rootfs::MASKED_PATHS
                    .iter()
                    .map(|p| p.to_string())
                    .collect(),
            );
        }
        if host.readonly_paths.as_ref().is_none_or(Vec::is_empty) {
            host.readonly_paths = Some(
                rmachine_runtime::rootfs::READONLY_PATHS
                    .iter()
                    .map(|p| p.to_string())
                    .collect(),
            );
        }
    }
    // The CLI sends -1 for "not set" (daemon.go `fixMemorySwappiness`).
    if host.memory_swappiness == Some(-1) {
        host.memory_swappiness = None;
    }
    // 0 and negative limits mean "unlimited", stored as no limit (container_routes.go).
    if host.pids_limit.is_some_and(|v| v <= 0) {
        host.pids_limit = None;
    }
}

/// Checks and completes a create request's limits as dockerd does.
/// `--add-host` entries (`NAME:IP`).
pub(super) fn extra_hosts(host: &HostConfig) -> Vec<String> {
    host.extra_hosts.clone().unwrap_or_default()
}

pub(super) fn normalize_host_config(host: &mut HostConfig) -> Result<(), EngineError> {
    verify_resources(host)?;
    // daemon/daemon_unix.go verifyPlatformContainerSettings.
    if host.shm_size < 0 {
        return Err(EngineError::InvalidParameter {
            reason: "SHM size can not be less than 0".into(),
        });
    }
    // dockerd maps `host-gateway` to its bridge's address; this engine has no bridge network.
    if let Some(entry) = extra_hosts(host)
        .into_iter()
        .find(|e| e.ends_with(":host-gateway"))
    {
        return Err(EngineError::InvalidParameter {
            reason: format!(
                "invalid --add-host {entry:?}: host-gateway needs a bridge network, which this \
                 engine does not have yet"
            ),
        });
    }
    security_options(host)?;
    if let Some(tmpfs) = &host.tmpfs {
        // volume/mounts/linux_parser.go `ValidateTmpfsMountDestination`.
        for dest in tmpfs.keys() {
            let reason =
                if dest.split('/').all(|p| p.is_empty() || p == ".") && dest.starts_with('/') {
                    "invalid specification: destination can't be '/'".to_string()
                } else if !dest.starts_with('/') {
                    format!("invalid mount path: '{dest}' mount path must be absolute")
                } else {
                    continue;
                };
            return Err(EngineError::InvalidParameter { reason });
        }
    }
    let memory = host.memory;
    if memory == 0 && host.memory_swap > 0 {
        return Err(EngineError::InvalidParameter {
            reason: "You should always set the Memory limit when using Memoryswap limit, see usage"
                .into(),
        });
    }
    fill_defaults(host);
    if memory > 0 && host.memory_swap == 0 {
        // dockerd's default: as much swap as memory.
        host.memory_swap = memory.saturating_mul(2);
    }
    let caps = capabilities_of(host);
    if let Err(err) = rmachine_runtime::caps::capability_mask(caps.as_ref(), host.privileged) {
        return Err(EngineError::InvalidParameter {
            reason: err.to_string(),
        });
    }
    Ok(())
}

/// Merges an update request into a container's host config as dockerd's
/// `Container.UpdateContainer` does: non-zero limits replace the old ones, some combinations
/// are refused (their texts), a restart policy with a name replaces the old one.
fn merge_update(current: &HostConfig, update: &HostConfig) -> Result<HostConfig, String> {
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
        if self.until.is_some_and(|until| record.created > until) {
            return false;
        }
        let all = |list: &[String]| super::lookup::labels_match(&record.config.labels, list);
        if !self.labels.is_empty() && !all(&self.labels) {
            return false;
        }
        self.not_labels.is_empty() || !all(&self.not_labels)
    }
}

/// Go's `time.ParseDuration` (`1h30m`, `1.5h`, `300ms`); `None` when it is not one.
fn go_duration(value: &str) -> Option<chrono::Duration> {
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
fn parse_until(value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
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

fn capabilities_of(host: &HostConfig) -> Option<CapabilitySpec> {
    let add = host.cap_add.clone().unwrap_or_default();
    let drop = host.cap_drop.clone().unwrap_or_default();
    (!add.is_empty() || !drop.is_empty()).then_some(CapabilitySpec { add, drop })
}

/// What `--security-opt` asks for; the texts are moby's `parseSecurityOpt`
/// (daemon/daemon_unix.go). AppArmor and SELinux labels are accepted and have no effect: the
/// guest kernel has neither.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct SecurityOptions {
    /// `seccomp=unconfined`.
    pub seccomp_unconfined: bool,
    /// `no-new-privileges`.
    pub no_new_privileges: bool,
}

pub(super) fn security_options(host: &HostConfig) -> Result<SecurityOptions, EngineError> {
    let invalid = |reason: String| EngineError::InvalidParameter { reason };
    let mut options = SecurityOptions::default();
    for opt in host.security_opt.iter().flatten().cloned() {
        if opt == "no-new-privileges" {
            options.no_new_privileges = true;
            continue;
        }
        if opt == "disable" {
            continue;
        }
        let Some((key, value)) = opt.split_once('=').or_else(|| opt.split_once(':')) else {
            return Err(invalid(format!("invalid --security-opt 1: {opt:?}")));
        };
        match key {
            "label" | "apparmor" => {}
            "seccomp" => match value {
                "unconfined" => options.seccomp_unconfined = true,
                "" | "builtin" => options.seccomp_unconfined = false,
                // The CLI sends a profile file's content here.
                _ => {
                    return Err(invalid(
                        "custom seccomp profiles are not supported: use the built-in default \
                         or --security-opt seccomp=unconfined"
                            .into(),
                    ))
                }
            },
            "no-new-privileges" => {
                options.no_new_privileges = value
                    .parse()
                    .map_err(|_| invalid(format!("invalid --security-opt 2: {opt:?}")))?;
            }
            _ => return Err(invalid(format!("invalid --security-opt 2: {opt:?}"))),
        }
    }
    Ok(options)
}

/// The runtime features a container's `HostConfig` asks for.
pub(super) fn features_of(host: &HostConfig) -> Features {
    // Checked at create; a record from before the check counts as the default.
    let security = security_options(host).unwrap_or_default();
    Features {
        resources: resources_of(host),
        cgroup_parent: non_empty(&host.cgroup_parent),
        capabilities: capabilities_of(host),
        privileged: host.privileged,
        init: host.init == Some(true),
        console_socket: None,
        // As dockerd: a privileged container runs without a seccomp filter.
        seccomp_unconfined: security.seccomp_unconfined || host.privileged,
        no_new_privileges: security.no_new_privileges,
        // 0 (an old record, or none asked) is the runtime's default of 64 MiB.
        shm_size: u64::try_from(host.shm_size).ok().filter(|size| *size > 0),
        // Namespaces, limits and devices: `options::apply`, which needs the container table.
        ..Features::default()
    }
}

/// Removes the cgroup a container's monitor left behind when it was killed together with the
/// previous engine (a SIGKILLed monitor cannot clean up), killing any straggler in it.
fn cgroup_of(record: &ContainerRecord) -> Result<Cgroup, EngineError> {
    let features = features_of(&record.host_config);
    Cgroup::for_container(&record.id, features.cgroup_parent.as_deref())
        .map_err(cgroup_err(&record.id))
}

fn read_spec(c: &Container) -> Result<SpecFile, EngineError> {
    let path = c.dir.join(spec::SPEC_FILE);
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    serde_json::from_slice(&bytes).map_err(|e| EngineError::Io {
        path,
        source: std::io::Error::other(e),
    })
}

impl Engine {
    /// Whether a container is paused (its record says so while it runs).
    pub fn is_paused(&self, id: &str) -> bool {
        self.container(id).is_ok_and(|c| {
            let record = c.record();
            record.state.paused && record.state.status == Status::Running
        })
    }

    /// Records the paused state, on disk too: a record must not call a frozen container
    /// running.
    fn set_paused(&self, c: &Container, paused: bool) {
        c.update(|r| r.state.paused = paused);
        self.health_follow_pause(c);
        if let Err(err) = self.inner.state.save(&c.record()) {
            warn!(container = %c.id, error = %err, "cannot persist container state");
        }
    }

    /// Marks an inspect or list JSON of a paused container as Docker shows it.
    pub fn decorate(&self, id: &str, value: &mut Value) {
        if !self.is_paused(id) {
            return;
        }
        if let Some(state) = value.get_mut("State") {
            if state.is_object() {
                state["Status"] = json!("paused");
                state["Paused"] = json!(true);
            } else {
                *state = json!("paused");
            }
        }
        if let Some(Value::String(status)) = value.get_mut("Status") {
            if !status.ends_with("(Paused)") {
                status.push_str(" (Paused)");
            }
        }
    }

    /// Thaws a paused container about to be signalled, so the signal is acted on (the
    /// caller holds its operation lock).
    pub(super) fn thaw_for_signal(&self, c: &Container) {
        if !c.record().state.paused {
            return;
        }
        match cgroup_of(&c.record()).and_then(|g| g.thaw().map_err(cgroup_err(&c.id))) {
            Ok(()) => {
                self.set_paused(c, false);
                self.emit(&c.record(), "unpause", &[]);
            }
            Err(err) => warn!(container = %c.id, error = %err, "cannot thaw container"),
        }
    }

    /// `docker pause`.
    pub async fn pause(&self, reference: &str) -> Result<(), EngineError> {
        let c = self.container(reference)?;
        let _op = c.op.lock().await;
        let record = c.record();
        if record.state.status != Status::Running {
            return Err(EngineError::NotRunning { id: c.id.clone() });
        }
        if self.is_paused(&c.id) {
            return Err(conflict(format!("Container {} is already paused", c.id)));
        }
        cgroup_of(&record)?.freeze().map_err(cgroup_err(&c.id))?;
        self.set_paused(&c, true);
        info!(container = %c.id, "paused");
        self.emit(&record, "pause", &[]);
        Ok(())
    }

    /// `docker unpause`.
    pub async fn unpause(&self, reference: &str) -> Result<(), EngineError> {
        let c = self.container(reference)?;
        let _op = c.op.lock().await;
        let record = c.record();
        if !self.is_paused(&c.id) {
            return Err(conflict(format!("Container {} is not paused", c.id)));
        }
        cgroup_of(&record)?.thaw().map_err(cgroup_err(&c.id))?;
        self.set_paused(&c, false);
        info!(container = %c.id, "unpaused");
        self.emit(&record, "unpause", &[]);
        Ok(())
    }

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
    pub fn top(&self, reference: &str, ps_args: &str) -> Result<Value, EngineError> {
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
    pub fn stats_sample(&self, reference: &str) -> Result<Value, EngineError> {
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

    /// `POST /containers/{id}/exec`: registers an exec instance.
    pub fn exec_create(&self, reference: &str, config: ExecConfig) -> Result<String, EngineError> {
        let c = self.container(reference)?;
        if c.record().state.status != Status::Running {
            return Err(EngineError::NotRunning { id: c.id.clone() });
        }
        if self.is_paused(&c.id) {
            // moby's getActiveContainer names the container as the client did.
            return Err(conflict(format!(
                "Container {reference} is paused, unpause the container before exec"
            )));
        }
        if config.cmd.is_empty() {
            return Err(EngineError::InvalidParameter {
                reason: "No exec command specified".into(),
            });
        }
        if !config.user.is_empty() {
            // As dockerd since v25: an unknown `-u` fails the create, not the start.
            let spec = read_spec(&c)?;
            let mut layers = vec![spec.spec.rootfs.upper_dir.clone()];
            layers.extend(spec.spec.rootfs.lower_dirs.iter().cloned());
            let group_add = config::group_add(&c.record().host_config);
            config::resolve_user_with(&config.user, &layers, &group_add)?;
        }
        let id = new_id();
        let instance = ExecInstance::new(id.clone(), c.id.clone(), config);
        let command = crate::events::exec_command(&instance.config.cmd);
        let known: HashSet<String> = self.list().into_iter().map(|r| r.id).collect();
        let mut execs = lock(&self.inner.ext.execs);
        // Instances live as long as their container, as with dockerd.
        execs.retain(|_, e| known.contains(&e.container_id));
        execs.insert(id.clone(), instance);
        drop(execs);
        self.emit(
            &c.record(),
            &format!("exec_create: {command}"),
            &[("execID", id.clone())],
        );
        Ok(id)
    }

    /// An exec instance by id.
    pub fn exec(&self, id: &str) -> Result<Arc<ExecInstance>, EngineError> {
        lock(&self.inner.ext.execs)
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::NoSuchExec { id: id.to_string() })
    }

    /// Drops a finished exec instance (a health probe's).
    pub(super) fn forget_exec(&self, id: &str) {
        lock(&self.inner.ext.execs).remove(id);
    }

    /// Resizes an exec's terminal.
    pub fn exec_resize(&self, id: &str, height: u16, width: u16) -> Result<(), EngineError> {
        let exec = self.exec(id)?;
        if let Some(master) = exec.pty() {
            crate::container::console::set_size(&master, height, width).map_err(|source| {
                EngineError::Io {
                    path: "/dev/ptmx".into(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// `POST /exec/{id}/start`: runs the instance. Returns the streams to serve, or `None`
    /// when detached. A command that cannot be run is reported in the output stream (as
    /// dockerd writes it after hijacking) with exit code 126 or 127.
    pub async fn exec_start(
        &self,
        id: &str,
        detach: bool,
        console_size: Option<(u16, u16)>,
    ) -> Result<Option<AttachSession>, EngineError> {
        let exec = self.exec(id)?;
        match self.exec_launch(&exec, detach, console_size).await {
            // As dockerd's route, which hijacks the connection before starting the exec: the
            // error is the attached client's output.
            Err(err) if !detach => {
                warn!(exec = %id, error = %err, "exec failed to start");
                let (tx, rx) = mpsc::channel::<Output>(1);
                let _ = tx.try_send(Output {
                    stream: StreamKind::Stdout,
                    data: bytes::Bytes::from(format!("{err}\r\n")),
                });
                Ok(Some(AttachSession {
                    tty: exec.config.tty,
                    output: rx,
                    stdin: None,
                    stdin_once: true,
                }))
            }
            other => other,
        }
    }

    /// Checks and starts an exec instance (daemon/exec.go `ContainerExecStart`).
    async fn exec_launch(
        &self,
        exec: &Arc<ExecInstance>,
        detach: bool,
        console_size: Option<(u16, u16)>,
    ) -> Result<Option<AttachSession>, EngineError> {
        let id = exec.id.as_str();
        let c = self.container(&exec.container_id)?;
        let record = c.record();
        if record.state.status != Status::Running {
            return Err(EngineError::NotRunning { id: c.id.clone() });
        }
        if record.state.paused {
            return Err(conflict(format!(
                "Container {} is paused, unpause the container before exec",
                c.id
            )));
        }
        let (already, finished) = exec.update(|s| {
            (
                std::mem::replace(&mut s.started, true),
                s.exit_code.is_some(),
            )
        });
        if already {
            return Err(conflict(if finished {
                format!("exec command {id} has already run")
            } else {
                format!("exec command {id} is already running")
            }));
        }
        let started = self
            .exec_spawn(exec, &c, &record, detach, console_size)
            .await;
        if started.is_err() {
            // dockerd's default exit code for an exec that could not start (EACCES).
            exec.update(|s| {
                s.exit_code.get_or_insert(126);
            });
        }
        started
    }

    async fn exec_spawn(
        &self,
        exec: &Arc<ExecInstance>,
        c: &Arc<Container>,
        record: &ContainerRecord,
        detach: bool,
        console_size: Option<(u16, u16)>,
    ) -> Result<Option<AttachSession>, EngineError> {
        let id = exec.id.as_str();
        let file = self.exec_file(c, record, exec)?;
        let path = c.dir.join(format!("exec-{id}.json"));
        let config = &exec.config;
        let console = if config.tty {
            Some(
                crate::container::console::ConsoleSocket::bind().map_err(|e| EngineError::Io {
                    path: "/dev/ptmx".into(),
                    source: std::io::Error::other(e.to_string()),
                })?,
            )
        } else {
            None
        };
        let mut file = file;
        file.console_socket = console.as_ref().map(|s| s.path().to_path_buf());
        let bytes = serde_json::to_vec(&file).map_err(|e| EngineError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        launch::write_atomic(&path, &bytes).map_err(|source| EngineError::Launch {
            id: c.id.clone(),
            source,
        })?;
        let args = [
            OsString::from("exec"),
            c.dir.as_os_str().to_os_string(),
            path.as_os_str().to_os_string(),
        ];
        let stdio = StdioOptions {
            open_stdin: config.attach_stdin && !detach,
            console_size: console_size.or(config.console_size),
        };
        let attached = !detach;
        let (tx, rx) = mpsc::channel::<Output>(64);
        let launched = launch::spawn_runtime(
            &self.inner.config.runtime,
            &args,
            &c.id,
            config.tty,
            console,
            stdio,
        )
        .await;
        let _ = std::fs::remove_file(&path);
        let launched = match launched {
            Ok(launched) => launched,
            Err(LaunchError::Failed(failed)) => {
                // dockerd (setExitCodeFromError) reads the code off the runtime's message.
                let (code, message) = launch::exit_code_from_error(&format!(
                    "OCI runtime exec failed: exec failed: unable to start container process: {}: unknown",
                    failed.message
                ));
                exec.update(|s| s.exit_code = Some(code));
                if detach {
                    return Err(EngineError::Task { reason: message });
                }
                let _ = tx.try_send(Output {
                    stream: StreamKind::Stdout,
                    data: bytes::Bytes::from(format!("{message}\r\n")),
                });
                drop(tx);
                return Ok(Some(AttachSession {
                    tty: config.tty,
                    output: rx,
                    stdin: None,
                    stdin_once: true,
                }));
            }
            Err(source) => {
                exec.update(|s| s.exit_code = Some(126));
                return Err(EngineError::Launch {
                    id: c.id.clone(),
                    source,
                });
            }
        };
        exec.update(|s| {
            s.running = true;
            s.launched = true;
            s.pid = launched.pid;
        });
        info!(container = %c.id, exec = %id, pid = launched.pid, "exec started");
        self.emit(
            record,
            &format!("exec_start: {}", crate::events::exec_command(&config.cmd)),
            &[("execID", id.to_string())],
        );
        let (stdin_tx, stdin_rx) = mpsc::unbounded_channel::<StdinEvent>();
        let out = attached.then_some(tx);
        let launch::Launched { mut child, io, .. } = launched;
        let mut pumps = Vec::new();
        match io {
            LaunchIo::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                let stdout_tx = out.clone().filter(|_| config.attach_stdout);
                let stderr_tx = out.clone().filter(|_| config.attach_stderr);
                pumps.push(tokio::spawn(exec_io::pump(
                    stdout,
                    StreamKind::Stdout,
                    stdout_tx,
                )));
                pumps.push(tokio::spawn(exec_io::pump(
                    stderr,
                    StreamKind::Stderr,
                    stderr_tx,
                )));
                if let Some(stdin) = stdin {
                    tokio::spawn(io::write_stdin(stdin, stdin_rx));
                }
            }
            LaunchIo::Pty { master } => {
                exec.set_pty(master.try_clone().ok().map(Arc::new));
                match io::pty_io(master) {
                    Ok(pty) => {
                        let pty = Arc::new(pty);
                        let tx = out.clone().filter(|_| config.attach_stdout);
                        pumps.push(tokio::spawn(exec_io::pump_pty(pty.clone(), tx)));
                        tokio::spawn(io::write_pty(pty, stdin_rx));
                    }
                    Err(err) => warn!(exec = %id, error = %err, "cannot use the PTY"),
                }
            }
        }
        // Held until the exit code is recorded: the end of the stream tells the CLI to inspect.
        let hold = out;
        let engine = self.clone();
        let monitored = exec.clone();
        let record_for_event = record.clone();
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(status) => launch::exit_code(status),
                Err(err) => {
                    warn!(exec = %monitored.id, error = %err, "cannot wait for the runtime");
                    255
                }
            };
            for pump in pumps {
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, pump).await;
            }
            // Recorded before the stream ends: the CLI inspects the exec right after.
            monitored.update(|s| {
                s.running = false;
                s.pid = 0;
                s.exit_code = Some(code);
            });
            monitored.set_pty(None);
            drop(hold);
            info!(exec = %monitored.id, exit_code = code, "exec exited");
            engine.emit(
                &record_for_event,
                "exec_die",
                &[
                    ("execID", monitored.id.clone()),
                    ("exitCode", code.to_string()),
                ],
            );
        });
        if detach {
            return Ok(None);
        }
        Ok(Some(AttachSession {
            tty: config.tty,
            output: rx,
            stdin: config.attach_stdin.then_some(stdin_tx),
            stdin_once: true,
        }))
    }

    /// The exec spec: the container's environment with the exec's on top, its user and
    /// working directory unless the exec sets them.
    fn exec_file(
        &self,
        c: &Container,
        record: &ContainerRecord,
        exec: &ExecInstance,
    ) -> Result<ExecFile, EngineError> {
        let spec = read_spec(c)?;
        let config = &exec.config;
        let user = if config.user.is_empty() {
            record.config.user.clone()
        } else {
            config.user.clone()
        };
        let mut layers = vec![spec.spec.rootfs.upper_dir.clone()];
        layers.extend(spec.spec.rootfs.lower_dirs.iter().cloned());
        let group_add = config::group_add(&record.host_config);
        let resolved = config::resolve_user_with(&user, &layers, &group_add)?;
        // dockerd: the container's environment rebuilt for the exec's TTY, the exec's on top;
        // runc then adds the exec user's HOME if still unset.
        let env = config::with_home(
            config::replace_or_append_env(
                config::daemon_environment(&record.config.env, config.tty, &spec.spec.hostname),
                &config.env,
            ),
            &resolved.home,
        );
        let cwd = if config.working_dir.is_empty() {
            spec.spec.process.cwd.clone()
        } else {
            config.working_dir.clone()
        };
        Ok(ExecFile {
            exec: ExecSpec {
                pid: record.state.pid,
                process: spec::Process {
                    args: config.cmd.clone(),
                    env,
                    cwd,
                    uid: resolved.uid,
                    gid: resolved.gid,
                    additional_gids: resolved.additional_gids,
                    terminal: config.tty,
                },
            },
            console_socket: None,
            privileged: config.privileged,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn create_fills_dockerds_defaults_and_normalises_limits() {
        let mut h = host(json!({"MemorySwappiness": -1, "PidsLimit": -5}));
        normalize_host_config(&mut h).unwrap();
        assert_eq!(h.ipc_mode, "private");
        assert_eq!(h.shm_size, 67108864);
        assert_eq!(h.runtime, DEFAULT_RUNTIME);
        assert_eq!(h.memory_swappiness, None);
        assert_eq!(h.pids_limit, None);
        assert!(h.masked_paths.is_some_and(|p| !p.is_empty()));
        let mut h = host(json!({"Privileged": true, "IpcMode": "host"}));
        normalize_host_config(&mut h).unwrap();
        assert_eq!(h.ipc_mode, "host");
        assert_eq!(h.masked_paths, None);
        let mut h = host(json!({"MemorySwap": 10485760}));
        assert_eq!(
            normalize_host_config(&mut h).unwrap_err().to_string(),
            "You should always set the Memory limit when using Memoryswap limit, see usage"
        );
        assert_eq!(
            create_warnings(&host(json!({"OomKillDisable": true}))).len(),
            1
        );
        assert!(
            create_warnings(&host(json!({"OomKillDisable": true, "Memory": 67108864}))).is_empty()
        );
        let current = host(json!({"PidsLimit": 7}));
        let merged = merge_update(&current, &host(json!({"PidsLimit": -1}))).unwrap();
        assert_eq!(merged.pids_limit, Some(0));
        // An update's cpuset replaces the container's; an empty one leaves it.
        let current = host(json!({"CpusetCpus": "0"}));
        let merged = merge_update(&current, &host(json!({"CpusetCpus": "1"}))).unwrap();
        assert_eq!(merged.cpuset_cpus, "1");
        let merged = merge_update(&current, &host(json!({"CpusetCpus": ""}))).unwrap();
        assert_eq!(merged.cpuset_cpus, "0");
    }

    #[test]
    fn too_little_memory_and_unknown_capabilities_are_refused() {
        let mut h = host(json!({"Memory": 1024}));
        assert_eq!(
            normalize_host_config(&mut h).unwrap_err().to_string(),
            "Minimum memory limit allowed is 6MB"
        );
        let mut h = host(json!({"CapAdd": ["FOO"]}));
        assert!(normalize_host_config(&mut h)
            .unwrap_err()
            .to_string()
            .contains("CAP_FOO"));
        assert_eq!(features_of(&HostConfig::default()), Features::default());
    }
}
