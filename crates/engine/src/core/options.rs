//! The small options that belong to one container alone (issue 14): its namespaces (`--pid`,
//! `--ipc`, `--uts`, `--cgroupns`), `--ulimit`, `--sysctl`, `--domainname`, `--device`,
//! `--device-cgroup-rule`, `--oom-score-adj` and `--dns`/`--dns-search`/`--dns-option`.
//!
//! [`validate`] runs at create with dockerd's texts (runc's where dockerd leaves the check to
//! it), so a bad value leaves no container behind; it also rewrites `container:NAME` targets
//! to `container:ID`, as dockerd does. [`apply`] runs at each start: it turns the options
//! into runtime [`Features`] and resolves `container:ID` targets to the namespaces of their
//! running PID 1 (`/proc/PID/ns/KIND`), which is why those checks happen again there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rmachine_runtime::spec::{
    self, DevShm, Device, DeviceAllow, Features, Namespace, Namespaces, Rlimit,
};

use super::EngineError;
use crate::state::{ContainerConfig, ContainerRecord, HostConfig, Status};

/// `CAP_SYS_RESOURCE`: without it no hard rlimit can be raised.
const CAP_SYS_RESOURCE: u32 = 24;

fn invalid(reason: impl Into<String>) -> EngineError {
    EngineError::InvalidParameter {
        reason: reason.into(),
    }
}

/// moby's `container:NAME` form: the name, when the mode has one.
fn container_target(mode: &str) -> Option<&str> {
    mode.strip_prefix("container:")
        .filter(|name| !name.is_empty())
}

/// The kinds of shared namespace a `container:` mode can name, with dockerd's words.
#[derive(Clone, Copy)]
enum Shared {
    Pid,
    Ipc,
}

impl Shared {
    fn mode(self, host: &mut HostConfig) -> &mut String {
        match self {
            Self::Pid => &mut host.pid_mode,
            Self::Ipc => &mut host.ipc_mode,
        }
    }

    fn join_error(self, reason: impl std::fmt::Display) -> EngineError {
        let kind = match self {
            Self::Pid => "PID",
            Self::Ipc => "IPC",
        };
        invalid(format!("failed to join {kind} namespace: {reason}"))
    }
}

/// Looks a container up by id, id prefix or name: its record and its state directory.
pub(super) type Find<'a> = &'a dyn Fn(&str) -> Option<(ContainerRecord, PathBuf)>;

/// The name of the directory, in a `shareable` container's state directory, where the engine
/// mounts its `/dev/shm` tmpfs (dockerd's `mounts/shm`).
const SHM_DIR: &str = "shm";

/// dockerd's default `/dev/shm` size.
const DEFAULT_SHM_SIZE: u64 = 64 * 1024 * 1024;

/// Checks the options of a create request and completes them as dockerd does (see the module
/// docs). `find` looks up the targets of `container:` modes.
pub(super) fn validate(
    host: &mut HostConfig,
    config: &ContainerConfig,
    find: Find<'_>,
) -> Result<(), EngineError> {
    let pid = host.pid_mode.as_str();
    if !(pid.is_empty() || pid == "host" || container_target(pid).is_some()) {
        return Err(invalid(format!("invalid PID mode: {pid}")));
    }
    let ipc = host.ipc_mode.as_str();
    let ipc_valid = matches!(ipc, "" | "none" | "private" | "shareable" | "host")
        || container_target(ipc).is_some();
    if !ipc_valid {
        return Err(invalid(format!("invalid IPC mode: {ipc}")));
    }
    let uts = host.uts_mode.as_str();
    if !matches!(uts, "" | "host") {
        return Err(invalid(format!("invalid UTS mode: {uts}")));
    }
    if uts == "host" && !config.hostname.is_empty() {
        return Err(invalid("conflicting options: hostname and the UTS mode"));
    }
    let cgroupns = host.cgroupns_mode.as_str();
    if !matches!(cgroupns, "" | "host" | "private") {
        return Err(invalid(format!(
            "invalid cgroup namespace mode: {cgroupns}"
        )));
    }
    // dockerd leaves an unknown target to the start; refusing it here leaves nothing behind.
    // The name becomes the id (daemon_unix.go `adaptSharedNamespaceContainer`), so a rename of
    // the target keeps the link.
    let mut donor_ipc_is_host = false;
    for shared in [Shared::Pid, Shared::Ipc] {
        let Some(target) = container_target(shared.mode(host)).map(str::to_string) else {
            continue;
        };
        let (record, _) = find(&target).ok_or_else(|| {
            shared.join_error(EngineError::NoSuchContainer {
                reference: target.clone(),
            })
        })?;
        if let Shared::Ipc = shared {
            check_shareable(&record, &target)?;
            donor_ipc_is_host = shares_host_ipc(&record, find);
        }
        *shared.mode(host) = format!("container:{}", record.id);
    }
    let oom = host.oom_score_adj;
    if !(-1000..=1000).contains(&oom) {
        return Err(invalid(format!(
            "Invalid value {oom}, range for oom score adj is [-1000, 1000]"
        )));
    }
    // The kernel refuses a value below 0 (the inherited minimum) without CAP_SYS_RESOURCE:
    // the start would fail, so say it now.
    if oom < 0 && !has_sys_resource() {
        // Worded without "permission denied", which the CLI turns into exit code 126.
        return Err(invalid(format!(
            "--oom-score-adj {oom}: a negative value needs CAP_SYS_RESOURCE, which this \
             engine does not have"
        )));
    }
    let limits = rlimits(host)?;
    check_rlimits_reachable(&limits)?;
    let mut namespaces = static_namespaces(host);
    // The IPC namespace joined is the host's when the donor runs with `--ipc host`.
    if donor_ipc_is_host {
        namespaces.ipc = Namespace::Host;
    }
    let sysctls = sysctls(host, config);
    let private_net = host.network_mode != "host";
    if let Some(refused) = spec::check_sysctls(sysctls.keys(), &namespaces, private_net)
        .into_iter()
        .next()
    {
        return Err(invalid(refused.to_string()));
    }
    devices(host)?;
    device_rules(host)?;
    Ok(())
}

/// `docker update` bodies carry Docker's whole `Resources`, which holds `Ulimits`, `Devices`
/// and `DeviceCgroupRules`; dockerd ignores them there, this engine refuses rather than drop
/// them.
pub(super) fn check_update(update: &HostConfig) -> Result<(), EngineError> {
    let set = |list: Option<usize>| list.is_some_and(|n| n > 0);
    for (asked, what) in [
        (
            set(update.ulimits.as_ref().map(Vec::len)),
            "ulimits (--ulimit)",
        ),
        (
            set(update.devices.as_ref().map(Vec::len)),
            "devices (--device)",
        ),
        (
            set(update.device_cgroup_rules.as_ref().map(Vec::len)),
            "device cgroup rules (--device-cgroup-rule)",
        ),
    ] {
        if asked {
            return Err(invalid(format!(
                "rmachine-engine does not change {what} of a created container: recreate it"
            )));
        }
    }
    Ok(())
}

/// dockerd's test of a donor container's IPC: only `shareable` (and `host`, or a container
/// that itself joined one) leaves something to join.
fn check_shareable(donor: &ContainerRecord, target: &str) -> Result<(), EngineError> {
    let mode = donor.host_config.ipc_mode.as_str();
    if mode == "shareable" || mode == "host" || container_target(mode).is_some() {
        return Ok(());
    }
    Err(Shared::Ipc.join_error(format!(
        "container {target}: non-shareable IPC (hint: use IpcMode:shareable for the donor container)"
    )))
}

/// Whether `donor`'s IPC namespace is the host's: `--ipc host`, directly or through a chain
/// of `container:` donors (bounded, as a record may name one that is gone or a loop).
fn shares_host_ipc(donor: &ContainerRecord, find: Find<'_>) -> bool {
    let mut mode = donor.host_config.ipc_mode.clone();
    for _ in 0..16 {
        match container_target(&mode) {
            Some(next) => match find(next) {
                Some((record, _)) => mode = record.host_config.ipc_mode,
                None => return false,
            },
            None => return mode == "host",
        }
    }
    false
}

/// The namespaces as far as create can know them (targets not resolved).
fn static_namespaces(host: &HostConfig) -> Namespaces {
    let mode = |value: &str| {
        if value == "host" {
            Namespace::Host
        } else {
            Namespace::Private
        }
    };
    Namespaces {
        pid: mode(&host.pid_mode),
        ipc: mode(&host.ipc_mode),
        uts: mode(&host.uts_mode),
        cgroup: None,
    }
}

/// `--sysctl`, with `--domainname` as `kernel.domainname` unless a sysctl sets it (dockerd's
/// `setLinuxDomainname`, then `WithSysctls` over it).
fn sysctls(host: &HostConfig, config: &ContainerConfig) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if !config.domainname.is_empty() {
        out.insert("kernel.domainname".to_string(), config.domainname.clone());
    }
    out.extend(
        host.sysctls
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    out
}

/// `--ulimit` entries (`{"Name":"nofile","Soft":1024,"Hard":2048}`); -1 is unlimited.
fn rlimits(host: &HostConfig) -> Result<Vec<Rlimit>, EngineError> {
    // -1 (or any negative) is unlimited: the kernel's RLIM_INFINITY.
    let limit = |n: i64| u64::try_from(n).unwrap_or(u64::MAX);
    host.ulimits
        .iter()
        .flatten()
        .map(|entry| {
            let name = entry.name.clone();
            if spec::rlimit_resource(&name).is_none() {
                return Err(invalid(format!("invalid ulimit type: {name}")));
            }
            let (soft, hard) = (limit(entry.soft), limit(entry.hard));
            if soft > hard {
                return Err(invalid(format!(
                    "ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
                )));
            }
            Ok(Rlimit { name, soft, hard })
        })
        .collect()
}

/// Without `CAP_SYS_RESOURCE` a hard limit can only be lowered: the runtime (which runs with
/// the engine's limits) would fail at start with runc's text; say it at create instead.
fn check_rlimits_reachable(limits: &[Rlimit]) -> Result<(), EngineError> {
    if limits.is_empty() || has_sys_resource() {
        return Ok(());
    }
    let Ok(table) = std::fs::read_to_string("/proc/self/limits") else {
        return Ok(());
    };
    for limit in limits {
        let Some(current) = current_hard_limit(&table, &limit.name) else {
            continue;
        };
        if limit.hard > current {
            let resource = spec::rlimit_resource(&limit.name).unwrap_or_default();
            return Err(invalid(format!(
                "error setting rlimit type {resource}: operation not permitted (the hard limit \
                 {} of --ulimit {} is above the engine's own, {current}, and raising it needs \
                 CAP_SYS_RESOURCE)",
                limit.hard, limit.name
            )));
        }
    }
    Ok(())
}

fn has_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// The hard limit of a Docker ulimit name in a `/proc/PID/limits` table.
fn current_hard_limit(table: &str, name: &str) -> Option<u64> {
    let title = match name {
        "cpu" => "Max cpu time",
        "fsize" => "Max file size",
        "data" => "Max data size",
        "stack" => "Max stack size",
        "core" => "Max core file size",
        "rss" => "Max resident set",
        "nproc" => "Max processes",
        "nofile" => "Max open files",
        "memlock" => "Max locked memory",
        "as" => "Max address space",
        "locks" => "Max file locks",
        "sigpending" => "Max pending signals",
        "msgqueue" => "Max msgqueue size",
        "nice" => "Max nice priority",
        "rtprio" => "Max realtime priority",
        "rttime" => "Max realtime timeout",
        _ => return None,
    };
    let line = table.lines().find(|l| {
        l.strip_prefix(title)
            .is_some_and(|rest| rest.starts_with("  "))
    })?;
    let hard = line[title.len()..].split_whitespace().nth(1)?;
    if hard == "unlimited" {
        Some(u64::MAX)
    } else {
        hard.parse().ok()
    }
}

/// `--device` entries resolved on the host as moby's `DevicesFromPath` does: a node (through
/// a symlink), or every node under a directory.
fn devices(host: &HostConfig) -> Result<Vec<Device>, EngineError> {
    let mut out = Vec::new();
    for entry in host.devices.iter().flatten() {
        let on_host = entry.path_on_host.clone();
        let mut in_container = entry.path_in_container.clone();
        if in_container.is_empty() {
            in_container.clone_from(&on_host);
        }
        let mut access = entry.cgroup_permissions.clone();
        if access.is_empty() {
            access = "rwm".into();
        }
        if access.len() > 3 || !access.chars().all(|c| "rwm".contains(c)) {
            return Err(invalid(format!("invalid device mode: {access}")));
        }
        let gathering = |reason: String| {
            invalid(format!(
                "error gathering device information while adding custom device {on_host:?}: {reason}"
            ))
        };
        let resolved = std::fs::canonicalize(&on_host).unwrap_or_else(|_| PathBuf::from(&on_host));
        match device_at(&resolved, &in_container, &access) {
            Ok(device) => out.push(device),
            Err(NotDevice::Io(err)) => return Err(gathering(io_reason(&err))),
            Err(NotDevice::Other) => {
                let mut found = Vec::new();
                if resolved.is_dir() {
                    walk_devices(&resolved, &resolved, &in_container, &access, &mut found);
                }
                if found.is_empty() {
                    return Err(gathering("not a device node".into()));
                }
                out.extend(found);
            }
        }
    }
    Ok(out)
}

/// Go's spelling of an I/O error (`no such file or directory`).
fn io_reason(err: &std::io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => {
            rmachine_runtime::syscall::SysError(nix::errno::Errno::from_raw(code)).to_string()
        }
        None => err.to_string(),
    }
}

enum NotDevice {
    Io(std::io::Error),
    Other,
}

fn device_at(path: &Path, destination: &str, access: &str) -> Result<Device, NotDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(path).map_err(NotDevice::Io)?;
    let kind = if meta.file_type().is_char_device() {
        'c'
    } else if meta.file_type().is_block_device() {
        'b'
    } else {
        return Err(NotDevice::Other);
    };
    let rdev = meta.rdev();
    Ok(Device {
        source: path.to_path_buf(),
        destination: destination.to_string(),
        allow: DeviceAllow {
            kind,
            major: Some(nix::sys::stat::major(rdev) as u32),
            minor: Some(nix::sys::stat::minor(rdev) as u32),
            access: access.to_string(),
        },
    })
}

fn walk_devices(base: &Path, dir: &Path, destination: &str, access: &str, out: &mut Vec<Device>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk_devices(base, &path, destination, access, out);
            continue;
        }
        let Ok(relative) = path.strip_prefix(base) else {
            continue;
        };
        let target = Path::new(destination).join(relative);
        if let Ok(device) = device_at(&path, &target.to_string_lossy(), access) {
            out.push(device);
        }
    }
}

fn device_rules(host: &HostConfig) -> Result<Vec<DeviceAllow>, EngineError> {
    host.device_cgroup_rules
        .iter()
        .flatten()
        .map(|rule| {
            rule.parse()
                .map_err(|e: spec::DeviceRuleError| invalid(e.to_string()))
        })
        .collect()
}

/// The namespace file of a `container:` target's PID 1, which must be running.
fn target_namespace(
    shared: Shared,
    target: &str,
    find: Find<'_>,
) -> Result<(ContainerRecord, PathBuf), EngineError> {
    let (record, dir) = find(target).ok_or_else(|| {
        shared.join_error(EngineError::NoSuchContainer {
            reference: target.to_string(),
        })
    })?;
    if record.state.status != Status::Running || record.state.pid <= 0 {
        return Err(shared.join_error(format!("container {target} is not running")));
    }
    Ok((record, dir))
}

/// The host directory holding the `/dev/shm` others join: a `shareable` container's tmpfs
/// the engine mounted, the host's for `host`, the donor's donor's for `container:`.
fn shared_shm(record: &ContainerRecord, dir: &Path, find: Find<'_>) -> Option<PathBuf> {
    match record.host_config.ipc_mode.as_str() {
        "shareable" => Some(dir.join(SHM_DIR)),
        "host" => Some(PathBuf::from("/dev/shm")),
        mode => {
            let (donor, donor_dir) = find(container_target(mode)?)?;
            (donor.host_config.ipc_mode != mode)
                .then(|| shared_shm(&donor, &donor_dir, find))
                .flatten()
        }
    }
}

/// Mounts a `shareable` container's `/dev/shm` tmpfs in the engine's mount namespace, under
/// its state directory: a joiner's runtime can only bind a mount of its own (copied) mount
/// namespace, never one reached through another container's `/proc/PID/root`.
fn mount_shareable_shm(host: &HostConfig, dir: &Path) -> Result<PathBuf, EngineError> {
    let shm = dir.join(SHM_DIR);
    std::fs::create_dir_all(&shm).map_err(super::io_err(&shm))?;
    // Still mounted from a previous run (an engine killed before the exit was seen).
    unmount_shm(dir);
    let size = u64::try_from(host.shm_size)
        .ok()
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_SHM_SIZE);
    use nix::mount::MsFlags;
    nix::mount::mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(format!("mode=1777,size={size}").as_str()),
    )
    .map_err(|errno| EngineError::Io {
        path: shm.clone(),
        source: std::io::Error::from(errno),
    })?;
    Ok(shm)
}

/// Unmounts a `shareable` container's `/dev/shm` once it exited (joiners keep their binds).
pub(super) fn unmount_shm(dir: &Path) {
    // Nothing mounted (the usual case) answers EINVAL: nothing to do.
    let _ = nix::mount::umount2(&dir.join(SHM_DIR), nix::mount::MntFlags::MNT_DETACH);
}

/// Adds the options to the runtime features of a container about to start (see the module
/// docs).
pub(super) fn apply(
    record: &ContainerRecord,
    dir: &Path,
    features: &mut Features,
    find: Find<'_>,
) -> Result<(), EngineError> {
    let host = &record.host_config;
    let mut namespaces = Namespaces::default();
    match host.pid_mode.as_str() {
        "host" => namespaces.pid = Namespace::Host,
        mode => {
            if let Some(target) = container_target(mode) {
                let (donor, _) = target_namespace(Shared::Pid, target, find)?;
                namespaces.pid = Namespace::Path {
                    path: format!("/proc/{}/ns/pid", donor.state.pid).into(),
                };
            }
        }
    }
    match host.ipc_mode.as_str() {
        "host" => {
            let shm = Path::new("/dev/shm");
            if !shm.is_dir() {
                return Err(invalid(
                    "/dev/shm is not mounted, but must be for --ipc=host",
                ));
            }
            namespaces.ipc = Namespace::Host;
            features.dev_shm = DevShm::Bind {
                source: shm.to_path_buf(),
            };
        }
        "none" => features.dev_shm = DevShm::None,
        "shareable" => {
            features.dev_shm = DevShm::Bind {
                source: mount_shareable_shm(host, dir)?,
            };
        }
        mode => {
            if let Some(target) = container_target(mode) {
                let (donor, donor_dir) = target_namespace(Shared::Ipc, target, find)?;
                check_shareable(&donor, target)?;
                namespaces.ipc = Namespace::Path {
                    path: format!("/proc/{}/ns/ipc", donor.state.pid).into(),
                };
                let source = shared_shm(&donor, &donor_dir, find).ok_or_else(|| {
                    Shared::Ipc.join_error(format!("container {target}: no shared /dev/shm"))
                })?;
                features.dev_shm = DevShm::Bind { source };
            }
        }
    }
    if host.uts_mode == "host" {
        namespaces.uts = Namespace::Host;
    }
    namespaces.cgroup = match host.cgroupns_mode.as_str() {
        "host" => Some(Namespace::Host),
        "private" => Some(Namespace::Private),
        _ => None,
    };
    // dockerd adds its init only in a PID namespace of the container's own.
    if namespaces.pid != Namespace::Private {
        features.init = false;
    }
    features.namespaces = namespaces;
    features.rlimits = rlimits(host)?;
    features.sysctls = sysctls(host, &record.config);
    features.devices = devices(host)?;
    features.device_rules = device_rules(host)?;
    features.oom_score_adj = Some(host.oom_score_adj)
        .filter(|v| *v != 0)
        .and_then(|v| i32::try_from(v).ok());
    Ok(())
}

/// The container's `/etc/resolv.conf`: the host's (see [`crate::container::launch::resolv_conf`])
/// with `--dns`, `--dns-search` and `--dns-option` replacing its name servers, search domains
/// and options, as dockerd's sandbox does (`--dns-search .` means none).
pub(super) fn resolv_conf(host_config: &HostConfig, host_resolv: &str) -> String {
    let base = crate::container::launch::resolv_conf(host_resolv);
    let dns = host_config.dns.clone().unwrap_or_default();
    let search = host_config.dns_search.clone().unwrap_or_default();
    let options = host_config.dns_options.clone().unwrap_or_default();
    if dns.is_empty() && search.is_empty() && options.is_empty() {
        return base;
    }
    let values = |key: &str| -> Vec<String> {
        base.lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some(key)).then(|| words.map(str::to_string).collect::<Vec<_>>())
            })
            .flatten()
            .collect()
    };
    let servers = if dns.is_empty() {
        values("nameserver")
    } else {
        dns
    };
    let search = match search.as_slice() {
        [] => values("search"),
        [dot] if dot == "." => Vec::new(),
        _ => search,
    };
    let options = if options.is_empty() {
        values("options")
    } else {
        options
    };
    let mut out = String::new();
    for server in servers {
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// The header dockerd writes at the top of a generated `resolv.conf`.
const RESOLV_HEADER: &str = "# Generated by Docker Engine.\n\
# This file can be edited; Docker Engine will not make further changes once it\n\
# has been modified.\n";

/// The `/etc/resolv.conf` of a container served by the embedded DNS server, and the upstream
/// servers that server forwards to: moby's `TransformForIntNS` and `Generate` (IPv4 networks).
/// The host's name servers (or `--dns`) become upstream servers, the host's loopback ones
/// reached from the engine's namespace; `ndots:0` is added unless an ndots option is set.
pub(super) fn resolv_conf_internal(
    host_config: &HostConfig,
    host_resolv: &str,
) -> Result<(String, Vec<crate::network::dns::Upstream>), EngineError> {
    use crate::network::dns::{Upstream, ADDRESS};
    let mut servers: Vec<std::net::IpAddr> = Vec::new();
    let mut invalid: Vec<String> = Vec::new();
    let mut search: Vec<String> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let mut other: Vec<String> = Vec::new();
    for line in host_resolv.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(first) = fields.first() else {
            continue;
        };
        if first.starts_with('#') || first.starts_with(';') {
            continue;
        }
        match *first {
            "nameserver" => {
                if let Some(addr) = fields.get(1) {
                    match addr.parse() {
                        Ok(ip) => servers.push(ip),
                        Err(_) => invalid.push((*addr).to_string()),
                    }
                }
            }
            "domain" | "search" if fields.len() > 1 => {
                search = fields[1..].iter().map(|s| s.to_string()).collect();
            }
            "options" => options.extend(fields[1..].iter().map(|s| s.to_string())),
            "domain" | "search" => {}
            _ => other.push(line.to_string()),
        }
    }
    let has_ndots =
        |options: &[String]| options.iter().any(|o| o.split(':').next() == Some("ndots"));
    let mut ndots_from = has_ndots(&options).then_some("host");
    let mut overrides = Vec::new();
    let dns = host_config.dns.clone().unwrap_or_default();
    let ns_override = !dns.is_empty();
    if ns_override {
        servers = dns
            .iter()
            .map(|s| {
                s.parse().map_err(|_| EngineError::InvalidParameter {
                    reason: format!("bad nameserver address {s}"),
                })
            })
            .collect::<Result<_, _>>()?;
        overrides.push("nameservers");
    }
    let dns_search = host_config.dns_search.clone().unwrap_or_default();
    if !dns_search.is_empty() {
        search = dns_search.into_iter().filter(|s| s != ".").collect();
        overrides.push("search");
    }
    let dns_options = host_config.dns_options.clone().unwrap_or_default();
    if !dns_options.is_empty() {
        options = dns_options;
        ndots_from = has_ndots(&options).then_some("override");
        overrides.push("options");
    }
    let mut upstream: Vec<Upstream> = servers
        .iter()
        .map(|&addr| Upstream {
            addr,
            // Only the host's own loopback (or, without IPv6 here, v6) servers are reached from
            // the host's namespace: `--dns 127.0.0.53` means a server in the container.
            host_loopback: !ns_override && (addr.is_loopback() || addr.is_ipv6()),
        })
        .collect();
    let used_default = upstream.is_empty();
    if used_default {
        upstream = [[8, 8, 8, 8], [8, 8, 4, 4]]
            .map(|o| Upstream {
                addr: std::net::Ipv4Addr::from(o).into(),
                host_loopback: false,
            })
            .to_vec();
    }
    // An ndots that is not a number is dropped, and the resolver's ndots:0 added.
    options.retain(|o| match o.split_once(':') {
        Some(("ndots", v)) => v.parse::<u32>().is_ok(),
        _ => true,
    });
    if !has_ndots(&options) {
        options.push("ndots:0".into());
        ndots_from = Some("internal");
    }
    let mut out = format!("{RESOLV_HEADER}\nnameserver {ADDRESS}\n");
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    out.push_str(&format!("options {}\n", options.join(" ")));
    for line in &other {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("\n# Based on host file: '/etc/resolv.conf' (internal resolver)\n");
    if used_default {
        out.push_str("# Used default nameservers.\n");
    }
    let ext: Vec<String> = upstream.iter().map(ToString::to_string).collect();
    out.push_str(&format!("# ExtServers: [{}]\n", ext.join(" ")));
    if !invalid.is_empty() {
        out.push_str(&format!("# Invalid nameservers: [{}]\n", invalid.join(" ")));
    }
    out.push_str(&format!("# Overrides: [{}]\n", overrides.join(" ")));
    if let Some(from) = ndots_from {
        out.push_str(&format!("# Option ndots from: {from}\n"));
    }
    Ok((out, upstream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn host(fields: serde_json::Value) -> HostConfig {
        serde_json::from_value(fields).expect("a host config")
    }

    fn check(extra: serde_json::Value) -> Result<HostConfig, String> {
        let mut h = host(extra);
        validate(&mut h, &ContainerConfig::default(), &|_| None)
            .map(|()| h)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn modes_are_checked_with_dockerds_texts() {
        assert_eq!(
            check(json!({"PidMode": "bogus"})).unwrap_err(),
            "invalid PID mode: bogus"
        );
        assert_eq!(
            check(json!({"IpcMode": "container:"})).unwrap_err(),
            "invalid IPC mode: container:"
        );
        assert_eq!(
            check(json!({"UTSMode": "private"})).unwrap_err(),
            "invalid UTS mode: private"
        );
        assert_eq!(
            check(json!({"CgroupnsMode": "shared"})).unwrap_err(),
            "invalid cgroup namespace mode: shared"
        );
        assert_eq!(
            check(json!({"PidMode": "container:nope"})).unwrap_err(),
            "failed to join PID namespace: No such container: nope"
        );
        assert_eq!(
            check(json!({"OomScoreAdj": 1001})).unwrap_err(),
            "Invalid value 1001, range for oom score adj is [-1000, 1000]"
        );
        for ok in ["", "none", "private", "shareable", "host"] {
            assert!(check(json!({"IpcMode": ok})).is_ok(), "{ok}");
        }
    }

    #[test]
    fn ulimits_sysctls_and_device_rules_are_checked() {
        assert_eq!(
            check(json!({"Ulimits": [{"Name": "nofiles", "Soft": 1, "Hard": 2}]})).unwrap_err(),
            "invalid ulimit type: nofiles"
        );
        assert_eq!(
            check(json!({"Ulimits": [{"Name": "nofile", "Soft": 3, "Hard": 2}]})).unwrap_err(),
            "ulimit soft limit must be less than or equal to hard limit: 3 > 2"
        );
        assert_eq!(
            check(json!({"Sysctls": {"kernel.sem": "1 2 3 4"}, "IpcMode": "host"})).unwrap_err(),
            "sysctl \"kernel.sem\" is not allowed in the hosts ipc namespace"
        );
        assert_eq!(
            check(json!({"DeviceCgroupRules": ["c 1:3 rwx"]})).unwrap_err(),
            "invalid device cgroup rule format: 'c 1:3 rwx'"
        );
        assert_eq!(
            check(json!({"Devices": [{"PathOnHost": "/dev/nope", "PathInContainer": "/dev/nope", "CgroupPermissions": "rwm"}]}))
                .unwrap_err(),
            "error gathering device information while adding custom device \"/dev/nope\": no such file or directory"
        );
        let mut config = ContainerConfig {
            domainname: "example.org".into(),
            ..ContainerConfig::default()
        };
        let mut h = host(json!({"UTSMode": "host"}));
        assert_eq!(
            validate(&mut h, &config, &|_| None)
                .unwrap_err()
                .to_string(),
            "sysctl \"kernel.domainname\" is not in a separate kernel namespace"
        );
        config.hostname = "x".into();
        assert_eq!(
            validate(&mut h, &config, &|_| None)
                .unwrap_err()
                .to_string(),
            "conflicting options: hostname and the UTS mode"
        );
    }

    #[test]
    fn updates_with_ulimits_or_devices_are_refused() {
        assert!(check_update(&host(json!({"Memory": 1}))).is_ok());
        assert_eq!(
            check_update(&host(json!({"Ulimits": [{"Name": "nofile", "Soft": 1, "Hard": 1}]})))
                .unwrap_err()
                .to_string(),
            "rmachine-engine does not change ulimits (--ulimit) of a created container: recreate it"
        );
    }

    #[test]
    fn proc_limits_rows_give_the_hard_limit() {
        let table = "Limit                     Soft Limit           Hard Limit           Units     \n\
                     Max processes             95581                95581                processes \n\
                     Max open files            1024                 20000                files     \n\
                     Max locked memory         8388608              unlimited            bytes     \n";
        assert_eq!(current_hard_limit(table, "nofile"), Some(20000));
        assert_eq!(current_hard_limit(table, "nproc"), Some(95581));
        assert_eq!(current_hard_limit(table, "memlock"), Some(u64::MAX));
        assert_eq!(current_hard_limit(table, "core"), None);
    }

    #[test]
    fn dns_options_replace_the_hosts_lines() {
        let host_resolv = "nameserver 10.0.0.1\nsearch corp\noptions edns0\n";
        assert_eq!(resolv_conf(&host(json!({})), host_resolv), host_resolv);
        let h = host(json!({"Dns": ["1.1.1.1", "9.9.9.9"], "DnsOptions": ["ndots:2"]}));
        assert_eq!(
            resolv_conf(&h, host_resolv),
            "nameserver 1.1.1.1\nnameserver 9.9.9.9\nsearch corp\noptions ndots:2\n"
        );
        let h = host(json!({"DnsSearch": ["."]}));
        assert_eq!(
            resolv_conf(&h, host_resolv),
            "nameserver 10.0.0.1\noptions edns0\n"
        );
    }

    #[test]
    fn embedded_dns_resolv_conf_is_dockerds() {
        let host_resolv =
            "nameserver 127.0.0.53\nnameserver 10.0.0.1\nsearch corp\noptions edns0\n";
        let (text, upstream) = resolv_conf_internal(&host(json!({})), host_resolv).unwrap();
        assert_eq!(
            text,
            "# Generated by Docker Engine.\n\
             # This file can be edited; Docker Engine will not make further changes once it\n\
             # has been modified.\n\
             \n\
             nameserver 127.0.0.11\n\
             search corp\n\
             options edns0 ndots:0\n\
             \n\
             # Based on host file: '/etc/resolv.conf' (internal resolver)\n\
             # ExtServers: [host(127.0.0.53) 10.0.0.1]\n\
             # Overrides: []\n\
             # Option ndots from: internal\n"
        );
        assert_eq!(upstream.len(), 2);
        assert!(upstream[0].host_loopback && !upstream[1].host_loopback);
        // --dns replaces the upstream servers, used as given (a loopback one in the container).
        let h = host(json!({"Dns": ["127.0.0.1"], "DnsOptions": ["ndots:2"]}));
        let (text, upstream) = resolv_conf_internal(&h, host_resolv).unwrap();
        assert!(text.contains("options ndots:2\n"), "{text}");
        assert!(text.contains("# ExtServers: [127.0.0.1]\n# Overrides: [nameservers options]\n# Option ndots from: override\n"), "{text}");
        assert!(!upstream[0].host_loopback);
        let (text, _) = resolv_conf_internal(&host(json!({})), "").unwrap();
        assert!(
            text.contains("# Used default nameservers.\n# ExtServers: [8.8.8.8 8.8.4.4]\n"),
            "{text}"
        );
        let h = host(json!({"Dns": ["nonsense"]}));
        assert_eq!(
            resolv_conf_internal(&h, "").unwrap_err().to_string(),
            "bad nameserver address nonsense"
        );
    }
}
