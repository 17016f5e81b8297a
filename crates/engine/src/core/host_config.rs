//! A container's `HostConfig`: dockerd's create-time defaults and checks, and the runtime
//! features (capabilities, `--privileged`, `--init`, security options) it turns into at start.

use rmachine_runtime::spec::{CapabilitySpec, Features};

use super::error::EngineError;
use super::non_empty;
use super::resources::{resources_of, verify_resources};
use crate::state::HostConfig;

/// dockerd's default `/dev/shm` size (64 MiB), shown as `HostConfig.ShmSize`.
const DEFAULT_SHM_SIZE: i64 = 64 * 1024 * 1024;

/// The runtime name `HostConfig.Runtime` gets, the default runtime `/info` reports: clients
/// (docker-py, compose) expect dockerd's `runc`, and rmachine-runtime stands in for it.
pub const DEFAULT_RUNTIME: &str = "runc";

/// The warnings dockerd returns with a created container (daemon/daemon_unix.go
/// `verifyPlatformContainerResources`); the CLI prints each as `WARNING: ...`.
pub fn create_warnings(host: &HostConfig) -> Vec<String> {
    let mut warnings = Vec::new();
    if host.oom_kill_disable == Some(true) && host.memory == 0 {
        warnings.push("OOM killer is disabled for the container, but no memory limit is set, this can result in the system running out of resources.".to_string());
    }
    // dockerd's `verifyContainerSettings`: the ports of a container on the host's network are
    // the host's own, nothing is published.
    if host.network_mode == "host" && !host.port_bindings.is_empty() {
        warnings.push("Published ports are discarded when using host network mode".to_string());
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
    // dockerd maps `host-gateway` to its default bridge's address; here a bridged container's
    // gateway stands for it (core::networks), and other modes have none to give.
    let bridged = matches!(
        super::networks::Mode::of(host),
        Ok(super::networks::Mode::Bridge | super::networks::Mode::Named(_))
    );
    if let Some(entry) = extra_hosts(host)
        .into_iter()
        .find(|e| e.ends_with(":host-gateway") && !bridged)
    {
        return Err(EngineError::InvalidParameter {
            reason: format!(
                "invalid --add-host {entry:?}: rmachine-engine maps host-gateway only for a \
                 container on a bridge network"
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

fn capabilities_of(host: &HostConfig) -> Option<CapabilitySpec> {
    let add = host.cap_add.clone().unwrap_or_default();
    let drop = host.cap_drop.clone().unwrap_or_default();
    (!add.is_empty() || !drop.is_empty()).then_some(CapabilitySpec { add, drop })
}

/// What `--security-opt` asks for; the texts are moby's `parseSecurityOpt`
/// (daemon/daemon_unix.go). The engine's kernel has neither AppArmor nor SELinux: only what
/// that already is (`apparmor=unconfined`, `label=disable`) is accepted; a profile or a label
/// would be dropped, so it is refused.
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
            "apparmor" if value == "unconfined" => {}
            "apparmor" => {
                return Err(invalid(format!(
                    "rmachine-engine does not support AppArmor profiles \
                     (--security-opt apparmor={value}): its kernel has no AppArmor"
                )))
            }
            "label" if value == "disable" => {}
            "label" => {
                return Err(invalid(format!(
                    "rmachine-engine does not support SELinux labels \
                     (--security-opt label={value}): its kernel has no SELinux"
                )))
            }
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

#[cfg(test)]
mod tests {
    use super::super::resources::merge_update;
    use super::*;
    use serde_json::{json, Value};

    fn host(json: Value) -> HostConfig {
        serde_json::from_value(json).unwrap()
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
