//! The container options this engine does not implement yet, refused at create (and at
//! `update` for the limits `update` can change) so that nothing a client asks for is accepted
//! and silently dropped.
//!
//! [`REFUSED`] is the one list: each entry names a field of Docker's `Config`, `HostConfig` or
//! `NetworkingConfig`, says when a request asks for it (a zero value, as the CLI sends for
//! every option not given, is not asking), and which `docker` flags set it. The capability
//! that implements an option deletes its line.
//!
//! Fields the typed structs do not know (a newer API's, or one since removed) are kept for
//! `inspect` while zero and refused, by their API name, when set.
//!
//! Options Docker itself refuses on Linux (`Isolation`, the Windows QoS limits, unknown
//! runtimes) are checked here too, with dockerd's texts.

use super::EngineError;
use crate::state::{ContainerConfig, HostConfig, NetworkingConfig};

/// The parts of a create request an entry looks at; an update only has a `HostConfig`.
pub(super) struct Request<'a> {
    /// `Config`.
    pub config: &'a ContainerConfig,
    /// `HostConfig`.
    pub host: &'a HostConfig,
    /// `NetworkingConfig`.
    pub networking: &'a NetworkingConfig,
}

/// One option refused until it is implemented.
struct Refused {
    /// What the user asked for, for the message.
    what: &'static str,
    /// The `docker` flags (or API field) that set it.
    flags: &'static str,
    /// Whether the request asks for it.
    set: fn(&Request<'_>) -> bool,
    /// Whether `docker update` can set it (a field of Docker's `Resources`).
    update: bool,
}

fn list<T>(list: &Option<Vec<T>>) -> bool {
    list.as_ref().is_some_and(|l| !l.is_empty())
}

fn map<K, V>(map: &Option<std::collections::BTreeMap<K, V>>) -> bool {
    map.as_ref().is_some_and(|m| !m.is_empty())
}

/// The refused options, one line each: `(what, flags, set, update)`.
#[rustfmt::skip]
const REFUSED: &[Refused] = &[
    // Storage.
    Refused { what: "volume drivers", flags: "--volume-driver", set: |r| !matches!(r.host.volume_driver.as_str(), "" | crate::volume::LOCAL_DRIVER), update: false },
    Refused { what: "storage driver options", flags: "--storage-opt", set: |r| map(&r.host.storage_opt), update: false },
    // Networking: the modes and ports are served (core::networks); these not yet.
    Refused { what: "network endpoint settings", flags: "--ip6/--link-local-ip/--network NAME,OPTS", set: |r| r.networking.endpoints_config.values().flatten().any(|e| !super::networks::without_served(e, r.host.links.as_ref()).is_empty()), update: false },
    // Namespaces.
    Refused { what: "user namespaces", flags: "--userns", set: |r| !matches!(r.host.userns_mode.as_str(), "" | "host"), update: false },
    Refused { what: "sharing another container's cgroup", flags: "HostConfig.Cgroup", set: |r| !r.host.cgroup.is_empty(), update: false },
    // Kernel and devices.
    Refused { what: "device requests", flags: "--gpus", set: |r| list(&r.host.device_requests), update: true },
    Refused { what: "disabling the OOM killer", flags: "--oom-kill-disable", set: |r| r.host.oom_kill_disable == Some(true), update: true },
    Refused { what: "annotations", flags: "--annotation", set: |r| map(&r.host.annotations), update: false },
    Refused { what: "custom masked or read-only paths", flags: "--security-opt systempaths=unconfined", set: |r| !r.host.privileged && (r.host.masked_paths.as_ref().is_some_and(|p| p.as_slice() != rmachine_runtime::rootfs::MASKED_PATHS) || r.host.readonly_paths.as_ref().is_some_and(|p| p.as_slice() != rmachine_runtime::rootfs::READONLY_PATHS)), update: false },
    // Limits.
    Refused { what: "memory swappiness", flags: "--memory-swappiness", set: |r| r.host.memory_swappiness.is_some_and(|v| v != -1), update: true },
    Refused { what: "memory reservations", flags: "--memory-reservation", set: |r| r.host.memory_reservation != 0, update: true },
    Refused { what: "kernel TCP memory limits", flags: "HostConfig.KernelMemoryTCP", set: |r| r.host.kernel_memory_tcp != 0, update: true },
    Refused { what: "block IO weights", flags: "--blkio-weight", set: |r| r.host.blkio_weight != 0, update: true },
    Refused { what: "block IO device weights", flags: "--blkio-weight-device", set: |r| list(&r.host.blkio_weight_device), update: true },
    Refused { what: "device read rate limits", flags: "--device-read-bps", set: |r| list(&r.host.blkio_device_read_bps), update: true },
    Refused { what: "device write rate limits", flags: "--device-write-bps", set: |r| list(&r.host.blkio_device_write_bps), update: true },
    Refused { what: "device read IO limits", flags: "--device-read-iops", set: |r| list(&r.host.blkio_device_read_iops), update: true },
    Refused { what: "device write IO limits", flags: "--device-write-iops", set: |r| list(&r.host.blkio_device_write_iops), update: true },
    Refused { what: "real-time CPU periods", flags: "--cpu-rt-period", set: |r| r.host.cpu_realtime_period != 0, update: true },
    Refused { what: "real-time CPU runtimes", flags: "--cpu-rt-runtime", set: |r| r.host.cpu_realtime_runtime != 0, update: true },
    Refused { what: "CPU counts (Windows only)", flags: "--cpu-count", set: |r| r.host.cpu_count != 0, update: true },
    Refused { what: "CPU percentages (Windows only)", flags: "--cpu-percent", set: |r| r.host.cpu_percent != 0, update: true },
    // Process.
    Refused { what: "pre-escaped command lines (Windows only)", flags: "Config.ArgsEscaped", set: |r| r.config.args_escaped, update: false },
];

fn refuse(entry: &Refused) -> EngineError {
    EngineError::InvalidParameter {
        reason: format!(
            "rmachine-engine does not support {} ({}) yet",
            entry.what, entry.flags
        ),
    }
}

/// Refuses a create request that asks for an option this engine does not implement, or one
/// dockerd refuses on Linux.
pub(super) fn check_create(request: &Request<'_>) -> Result<(), EngineError> {
    if let Some(entry) = REFUSED.iter().find(|e| (e.set)(request)) {
        return Err(refuse(entry));
    }
    // A field of a newer API (or an old one since removed, like KernelMemory) is kept for
    // inspect when it asks for nothing, refused when it asks for something.
    let unknown = [
        ("HostConfig", &request.host.extra),
        ("Config", &request.config.extra),
    ]
    .into_iter()
    .find_map(|(part, extra)| {
        extra
            .iter()
            .find(|(_, value)| !is_zero(value))
            .map(|(field, _)| format!("{part}.{field}"))
    });
    if let Some(field) = unknown {
        return Err(EngineError::InvalidParameter {
            reason: format!("rmachine-engine does not support {field} yet"),
        });
    }
    check_host(request.host)
}

/// Go's zero values (and empty collections), which ask for nothing.
fn is_zero(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Refuses an update that asks for a limit this engine does not implement, or one dockerd
/// refuses on Linux.
pub(super) fn check_update(update: &HostConfig) -> Result<(), EngineError> {
    let request = Request {
        config: &ContainerConfig::default(),
        host: update,
        networking: &NetworkingConfig::default(),
    };
    if let Some(entry) = REFUSED.iter().find(|e| e.update && (e.set)(&request)) {
        return Err(refuse(entry));
    }
    check_qos(update)
}

/// dockerd's own refusals on Linux, with its texts (daemon/internal/runconfig/
/// hostconfig_unix.go, daemon/runtime_unix.go).
fn check_host(host: &HostConfig) -> Result<(), EngineError> {
    let invalid = |reason: String| Err(EngineError::InvalidParameter { reason });
    if !host.isolation.is_empty() && !host.isolation.eq_ignore_ascii_case("default") {
        return invalid(format!(
            "invalid isolation ({}): linux only supports 'default'",
            host.isolation
        ));
    }
    check_qos(host)?;
    // The runtime is rmachine-runtime, which clients know under runc's name.
    if !matches!(host.runtime.as_str(), "" | super::DEFAULT_RUNTIME) {
        return invalid(format!("unknown or invalid runtime name: {}", host.runtime));
    }
    Ok(())
}

fn check_qos(host: &HostConfig) -> Result<(), EngineError> {
    let invalid = |reason: &str| {
        Err(EngineError::InvalidParameter {
            reason: reason.into(),
        })
    };
    if host.io_maximum_bandwidth != 0 {
        return invalid(
            "invalid option: QoS maximum bandwidth configuration is not supported on linux",
        );
    }
    if host.io_maximum_iops != 0 {
        return invalid("invalid option: QoS maximum IOPs configuration is not supported on linux");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::CreateBody;

    fn check(body: &str) -> Result<(), String> {
        let body = CreateBody::decode(body.as_bytes()).map_err(|e| e.to_string())?;
        check_create(&Request {
            config: &body.config,
            host: &body.host_config,
            networking: &body.networking_config,
        })
        .map_err(|e| e.to_string())
    }

    /// What docker CLI 28 sends for `docker create busybox` (captured).
    const PLAIN: &str = r#"{"Hostname":"","Domainname":"","User":"","AttachStdin":false,
        "AttachStdout":true,"AttachStderr":true,"Tty":false,"OpenStdin":false,"StdinOnce":false,
        "Env":null,"Cmd":null,"Image":"busybox","Volumes":{},"WorkingDir":"","Entrypoint":null,
        "OnBuild":null,"Labels":{},"HostConfig":{"Binds":null,"ContainerIDFile":"",
        "LogConfig":{"Type":"","Config":{}},"NetworkMode":"default","PortBindings":{},
        "RestartPolicy":{"Name":"no","MaximumRetryCount":0},"AutoRemove":false,
        "VolumeDriver":"","VolumesFrom":null,"ConsoleSize":[0,0],"CapAdd":null,"CapDrop":null,
        "CgroupnsMode":"","Dns":[],"DnsOptions":[],"DnsSearch":[],"ExtraHosts":null,
        "GroupAdd":null,"IpcMode":"","Cgroup":"","Links":null,"OomScoreAdj":0,"PidMode":"",
        "Privileged":false,"PublishAllPorts":false,"ReadonlyRootfs":false,"SecurityOpt":null,
        "UTSMode":"","UsernsMode":"","ShmSize":0,"Isolation":"","CpuShares":0,"Memory":0,
        "NanoCpus":0,"CgroupParent":"","BlkioWeight":0,"BlkioWeightDevice":[],
        "BlkioDeviceReadBps":[],"BlkioDeviceWriteBps":[],"BlkioDeviceReadIOps":[],
        "BlkioDeviceWriteIOps":[],"CpuPeriod":0,"CpuQuota":0,"CpuRealtimePeriod":0,
        "CpuRealtimeRuntime":0,"CpusetCpus":"","CpusetMems":"","Devices":[],
        "DeviceCgroupRules":null,"DeviceRequests":null,"MemoryReservation":0,"MemorySwap":0,
        "MemorySwappiness":-1,"OomKillDisable":false,"PidsLimit":0,"Ulimits":[],"CpuCount":0,
        "CpuPercent":0,"IOMaximumIOps":0,"IOMaximumBandwidth":0,"MaskedPaths":null,
        "ReadonlyPaths":null},"NetworkingConfig":{"EndpointsConfig":{"default":{
        "IPAMConfig":null,"Links":null,"Aliases":null,"MacAddress":"","DriverOpts":null,
        "GwPriority":0,"NetworkID":"","EndpointID":"","Gateway":"","IPAddress":"",
        "IPPrefixLen":0,"IPv6Gateway":"","GlobalIPv6Address":"","GlobalIPv6PrefixLen":0,
        "DNSNames":null}}}}"#;

    #[test]
    fn the_clis_defaults_ask_for_nothing() {
        assert_eq!(check(PLAIN), Ok(()));
        assert_eq!(check(r#"{"Image":"busybox"}"#), Ok(()));
        assert_eq!(
            check(
                r#"{"Image":"busybox","HostConfig":{"NetworkMode":"none"},
                "NetworkingConfig":{"EndpointsConfig":{}}}"#
            ),
            Ok(())
        );
        assert_eq!(
            check(r#"{"Image":"busybox","HostConfig":{"Runtime":"runc","Isolation":"default"}}"#),
            Ok(())
        );
    }

    #[test]
    fn each_refused_option_names_its_flag() {
        let cases = [
            (
                r#"{"HostConfig":{"VolumeDriver":"nfs"}}"#,
                "rmachine-engine does not support volume drivers (--volume-driver) yet",
            ),
            (
                r#"{"NetworkingConfig":{"EndpointsConfig":{"default":{"IPAMConfig":{"IPv6Address":"fd00::9"}}}}}"#,
                "rmachine-engine does not support network endpoint settings \
              (--ip6/--link-local-ip/--network NAME,OPTS) yet",
            ),
            (
                r#"{"HostConfig":{"MemorySwappiness":60}}"#,
                "rmachine-engine does not support memory swappiness (--memory-swappiness) yet",
            ),
            (
                r#"{"HostConfig":{"MaskedPaths":[],"ReadonlyPaths":[]}}"#,
                "rmachine-engine does not support custom masked or read-only paths \
              (--security-opt systempaths=unconfined) yet",
            ),
            (
                r#"{"HostConfig":{"Runtime":"crun"}}"#,
                "unknown or invalid runtime name: crun",
            ),
            (
                r#"{"HostConfig":{"Isolation":"hyperv"}}"#,
                "invalid isolation (hyperv): linux only supports 'default'",
            ),
        ];
        for (body, message) in cases {
            assert_eq!(check(body), Err(message.to_string()), "{body}");
        }
        // Fields this engine does not know: kept when zero, refused when set.
        assert_eq!(
            check(r#"{"HostConfig":{"KernelMemory":10485760}}"#),
            Err("rmachine-engine does not support HostConfig.KernelMemory yet".into())
        );
        assert_eq!(
            check(r#"{"HostConfig":{"KernelMemory":0},"Future":{}}"#),
            Ok(())
        );
        // Networks and published ports are served (core/networks.rs).
        assert_eq!(
            check(
                r#"{"HostConfig":{"NetworkMode":"bridge","PortBindings":{"80/tcp":[{"HostPort":"8080"}]},"PublishAllPorts":true}}"#
            ),
            Ok(())
        );
        // Health checks run (core/health.rs).
        assert_eq!(check(r#"{"Healthcheck":{"Test":["CMD","true"]}}"#), Ok(()));
        assert_eq!(check(r#"{"Healthcheck":{"Test":["NONE"]}}"#), Ok(()));
        // A privileged container has no masked paths whatever the lists say.
        assert_eq!(
            check(r#"{"HostConfig":{"Privileged":true,"MaskedPaths":[]}}"#),
            Ok(())
        );
    }

    #[test]
    fn updates_are_checked_for_the_limits_update_sets() {
        let update = |json: &str| {
            check_update(&serde_json::from_str(json).unwrap()).map_err(|e| e.to_string())
        };
        assert_eq!(update(r#"{"Memory":67108864,"CpuShares":512}"#), Ok(()));
        assert_eq!(
            update(r#"{"BlkioWeight":300}"#),
            Err("rmachine-engine does not support block IO weights (--blkio-weight) yet".into())
        );
        // Not something `update` changes: left to create.
        assert_eq!(update(r#"{"Sysctls":{"a":"b"}}"#), Ok(()));
    }
}
