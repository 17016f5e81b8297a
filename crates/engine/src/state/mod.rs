//! Persisted container records: `<data-root>/containers/<id>/config.v2.json`.
//!
//! The record is the engine's memory of a container across restarts. It is written atomically
//! (temp file + rename) after every state change, so a crash leaves either the old or the new
//! record, never half of one. The Docker-shaped `Config` and `HostConfig` are stored as the
//! client sent them (merged with the image config), unknown fields included, so `inspect`
//! returns what the client asked for.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

pub mod durable;
pub mod modes;

/// File name of the record inside a container's directory.
pub const RECORD_FILE: &str = "config.v2.json";

/// Errors reading or writing container records.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file or directory could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A record is not valid JSON of the expected shape.
    #[error("corrupt container record {path}")]
    Corrupt {
        /// The record file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Accepts Docker's `StrSlice`: a JSON string, an array of strings, or null.
fn str_slice<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => None,
        Some(OneOrMany::One(s)) => Some(vec![s]),
        Some(OneOrMany::Many(v)) => Some(v),
    })
}

/// Accepts null where Docker's Go types accept it for a slice or map.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Docker's container `Config` (the part of a create request describing the process), typed
/// after moby's api/types/container/config.go with its JSON names. `omitempty` fields of the Go
/// struct are left out of the JSON when empty, as dockerd's inspect does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerConfig {
    /// Hostname inside the container; empty means the short id.
    pub hostname: String,
    /// Domain name.
    pub domainname: String,
    /// `user`, `uid`, `user:group` or `uid:gid`.
    pub user: String,
    /// Whether the client attaches stdin.
    pub attach_stdin: bool,
    /// Whether the client attaches stdout.
    pub attach_stdout: bool,
    /// Whether the client attaches stderr.
    pub attach_stderr: bool,
    /// Exposed ports, `{"80/tcp": {}}`.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    /// Allocate a PTY.
    pub tty: bool,
    /// Keep stdin open.
    pub open_stdin: bool,
    /// Close stdin after the first attached client detaches.
    pub stdin_once: bool,
    /// `KEY=value` pairs.
    #[serde(deserialize_with = "null_default")]
    pub env: Vec<String>,
    /// Command (arguments to the entrypoint).
    #[serde(deserialize_with = "str_slice")]
    pub cmd: Option<Vec<String>>,
    /// How to check that the container is healthy (`--health-*`, the image's HEALTHCHECK).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    /// Windows only: the command line is already escaped.
    #[serde(skip_serializing_if = "is_false")]
    pub args_escaped: bool,
    /// The image reference the client gave.
    pub image: String,
    /// Volumes, `{"/data": {}}`.
    #[serde(deserialize_with = "null_default")]
    pub volumes: BTreeMap<String, serde_json::Value>,
    /// Working directory.
    pub working_dir: String,
    /// Entrypoint; `Some([])` resets the image's.
    #[serde(deserialize_with = "str_slice")]
    pub entrypoint: Option<Vec<String>>,
    /// No network at all (`--network none` from old clients).
    #[serde(skip_serializing_if = "is_false")]
    pub network_disabled: bool,
    /// Deprecated place of `--mac-address` (API < 1.44).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mac_address: String,
    /// The image's ONBUILD triggers.
    #[serde(
        deserialize_with = "str_slice",
        skip_serializing_if = "Option::is_none"
    )]
    pub on_build: Option<Vec<String>>,
    /// Labels.
    #[serde(deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
    /// Signal that stops the container (`SIGTERM` when empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Seconds between the stop signal and SIGKILL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<i64>,
    /// The image's SHELL, for shell-form commands.
    #[serde(
        deserialize_with = "str_slice",
        skip_serializing_if = "Option::is_none"
    )]
    pub shell: Option<Vec<String>>,
    /// Fields this engine does not know (newer API versions), kept for `inspect`.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl ContainerConfig {
    /// The JSON names of the typed fields, for decoders that match names case-insensitively
    /// (the struct flattens `extra`, so serde does not list them).
    pub const FIELDS: &'static [&'static str] = &[
        "Hostname",
        "Domainname",
        "User",
        "AttachStdin",
        "AttachStdout",
        "AttachStderr",
        "ExposedPorts",
        "Tty",
        "OpenStdin",
        "StdinOnce",
        "Env",
        "Cmd",
        "Healthcheck",
        "ArgsEscaped",
        "Image",
        "Volumes",
        "WorkingDir",
        "Entrypoint",
        "NetworkDisabled",
        "MacAddress",
        "OnBuild",
        "Labels",
        "StopSignal",
        "StopTimeout",
        "Shell",
    ];
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn none_or_empty<K, V>(map: &Option<BTreeMap<K, V>>) -> bool {
    map.as_ref().is_none_or(BTreeMap::is_empty)
}

fn vec_none_or_empty<T>(list: &Option<Vec<T>>) -> bool {
    list.as_ref().is_none_or(Vec::is_empty)
}

/// Docker's `HealthConfig` (`Config.Healthcheck`); durations in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthConfig {
    /// `[]` inherit, `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`.
    #[serde(
        deserialize_with = "str_slice",
        skip_serializing_if = "Option::is_none"
    )]
    pub test: Option<Vec<String>>,
    /// Time between checks.
    #[serde(skip_serializing_if = "is_zero")]
    pub interval: i64,
    /// Time a check may take.
    #[serde(skip_serializing_if = "is_zero")]
    pub timeout: i64,
    /// Failures in a row that make the container unhealthy.
    #[serde(skip_serializing_if = "is_zero")]
    pub retries: i64,
    /// Grace period after start.
    #[serde(skip_serializing_if = "is_zero")]
    pub start_period: i64,
    /// Time between checks during the start period.
    #[serde(skip_serializing_if = "is_zero")]
    pub start_interval: i64,
}

/// `HostConfig.LogConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct LogConfig {
    /// The logging driver; empty means the daemon's default.
    #[serde(rename = "Type")]
    pub kind: String,
    /// `--log-opt` pairs.
    #[serde(deserialize_with = "null_default")]
    pub config: BTreeMap<String, String>,
}

/// `HostConfig.RestartPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RestartPolicy {
    /// `""`, `no`, `always`, `unless-stopped` or `on-failure`.
    pub name: String,
    /// For `on-failure`: at most this many restarts (0: no limit).
    pub maximum_retry_count: i64,
}

/// One host address of a published port (`HostConfig.PortBindings`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortBinding {
    /// Host IP; empty means all.
    pub host_ip: String,
    /// Host port or range; empty means any.
    pub host_port: String,
}

/// `--blkio-weight-device`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct WeightDevice {
    /// Device path.
    pub path: String,
    /// Relative weight.
    pub weight: u16,
}

/// `--device-read-bps` and the other throttles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ThrottleDevice {
    /// Device path.
    pub path: String,
    /// Bytes or operations per second.
    pub rate: u64,
}

/// `--device`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeviceMapping {
    /// Device on the host.
    pub path_on_host: String,
    /// Path inside the container.
    pub path_in_container: String,
    /// `rwm` subset.
    pub cgroup_permissions: String,
}

/// `--gpus` and other device-driver requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeviceRequest {
    /// Device driver.
    pub driver: String,
    /// Number of devices (-1: all).
    pub count: i64,
    /// Device ids.
    #[serde(rename = "DeviceIDs")]
    pub device_ids: Option<Vec<String>>,
    /// OR list of AND lists of capabilities.
    pub capabilities: Option<Vec<Vec<String>>>,
    /// Driver options.
    pub options: Option<BTreeMap<String, String>>,
}

/// `--ulimit`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Ulimit {
    /// Resource name (`nofile`).
    pub name: String,
    /// Hard limit.
    pub hard: i64,
    /// Soft limit.
    pub soft: i64,
}

/// `--mount` (`HostConfig.Mounts`); the per-type options are kept as sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Mount {
    /// `bind`, `volume`, `tmpfs`, `npipe`, `cluster` or `image`.
    #[serde(rename = "Type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Host path or volume name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Path in the container.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// Mounted read-only.
    #[serde(skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// macOS consistency hint.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub consistency: String,
    /// Options of a bind mount.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind_options: Option<serde_json::Value>,
    /// Options of a volume mount.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_options: Option<serde_json::Value>,
    /// Options of a tmpfs mount.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmpfs_options: Option<serde_json::Value>,
    /// Options of an image mount.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_options: Option<serde_json::Value>,
}

/// Docker's `HostConfig` (the part of a create request describing the host side), typed after
/// moby's api/types/container/hostconfig.go (its `Resources` inlined) with its JSON names.
/// Slices and maps are `Option` because Go shows a nil one as `null` and an empty one as `[]`;
/// `Option` scalars are Go's pointers (unset differs from zero).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HostConfig {
    /// `-v SRC:DST[:OPTS]`.
    pub binds: Option<Vec<String>>,
    /// `--cidfile` (written by the CLI; the daemon only stores it).
    #[serde(rename = "ContainerIDFile")]
    pub container_id_file: String,
    /// `--log-driver`, `--log-opt`.
    #[serde(deserialize_with = "null_default")]
    pub log_config: LogConfig,
    /// `--network`; `default` when the client sent none.
    pub network_mode: String,
    /// `-p`: `{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}`; dockerd shows `{}` for none.
    #[serde(deserialize_with = "null_default")]
    pub port_bindings: BTreeMap<String, Option<Vec<PortBinding>>>,
    /// `--restart`.
    #[serde(deserialize_with = "null_default")]
    pub restart_policy: RestartPolicy,
    /// `--rm`.
    pub auto_remove: bool,
    /// `--volume-driver`.
    pub volume_driver: String,
    /// `--volumes-from`.
    pub volumes_from: Option<Vec<String>>,
    /// `[height, width]` of the PTY at start.
    #[serde(deserialize_with = "null_default")]
    pub console_size: [u64; 2],
    /// `--annotation`.
    #[serde(skip_serializing_if = "none_or_empty")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// `--cap-add`.
    pub cap_add: Option<Vec<String>>,
    /// `--cap-drop`.
    pub cap_drop: Option<Vec<String>>,
    /// `--cgroupns`.
    pub cgroupns_mode: String,
    /// `--dns`.
    pub dns: Option<Vec<String>>,
    /// `--dns-option`.
    pub dns_options: Option<Vec<String>>,
    /// `--dns-search`.
    pub dns_search: Option<Vec<String>>,
    /// `--add-host NAME:IP`.
    pub extra_hosts: Option<Vec<String>>,
    /// `--group-add`.
    pub group_add: Option<Vec<String>>,
    /// `--ipc`.
    pub ipc_mode: String,
    /// `--cgroup` (`container:<id>` / `host`).
    pub cgroup: String,
    /// `--link`.
    pub links: Option<Vec<String>>,
    /// `--oom-score-adj`.
    pub oom_score_adj: i64,
    /// `--pid`.
    pub pid_mode: String,
    /// `--privileged`.
    pub privileged: bool,
    /// `-P`.
    pub publish_all_ports: bool,
    /// `--read-only`.
    pub readonly_rootfs: bool,
    /// `--security-opt`.
    pub security_opt: Option<Vec<String>>,
    /// `--storage-opt`.
    #[serde(skip_serializing_if = "none_or_empty")]
    pub storage_opt: Option<BTreeMap<String, String>>,
    /// `--tmpfs DST[:OPTS]`.
    #[serde(skip_serializing_if = "none_or_empty")]
    pub tmpfs: Option<BTreeMap<String, String>>,
    /// `--uts`.
    #[serde(rename = "UTSMode")]
    pub uts_mode: String,
    /// `--userns`.
    pub userns_mode: String,
    /// `--shm-size` in bytes.
    pub shm_size: i64,
    /// `--sysctl`.
    #[serde(skip_serializing_if = "none_or_empty")]
    pub sysctls: Option<BTreeMap<String, String>>,
    /// `--runtime`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub runtime: String,
    /// Windows only: `--isolation`.
    pub isolation: String,
    /// `--cpu-shares`.
    pub cpu_shares: i64,
    /// `--memory` in bytes.
    pub memory: i64,
    /// `--cpus` in billionths of a CPU.
    pub nano_cpus: i64,
    /// `--cgroup-parent`.
    pub cgroup_parent: String,
    /// `--blkio-weight`.
    pub blkio_weight: u16,
    /// `--blkio-weight-device`.
    pub blkio_weight_device: Option<Vec<WeightDevice>>,
    /// `--device-read-bps`.
    pub blkio_device_read_bps: Option<Vec<ThrottleDevice>>,
    /// `--device-write-bps`.
    pub blkio_device_write_bps: Option<Vec<ThrottleDevice>>,
    /// `--device-read-iops`.
    #[serde(rename = "BlkioDeviceReadIOps")]
    pub blkio_device_read_iops: Option<Vec<ThrottleDevice>>,
    /// `--device-write-iops`.
    #[serde(rename = "BlkioDeviceWriteIOps")]
    pub blkio_device_write_iops: Option<Vec<ThrottleDevice>>,
    /// `--cpu-period`.
    pub cpu_period: i64,
    /// `--cpu-quota`.
    pub cpu_quota: i64,
    /// `--cpu-rt-period`.
    pub cpu_realtime_period: i64,
    /// `--cpu-rt-runtime`.
    pub cpu_realtime_runtime: i64,
    /// `--cpuset-cpus`.
    pub cpuset_cpus: String,
    /// `--cpuset-mems`.
    pub cpuset_mems: String,
    /// `--device`.
    pub devices: Option<Vec<DeviceMapping>>,
    /// `--device-cgroup-rule`.
    pub device_cgroup_rules: Option<Vec<String>>,
    /// `--gpus`.
    pub device_requests: Option<Vec<DeviceRequest>>,
    /// `--kernel-memory-tcp` (removed from the CLI).
    #[serde(rename = "KernelMemoryTCP", skip_serializing_if = "is_zero")]
    pub kernel_memory_tcp: i64,
    /// `--memory-reservation`.
    pub memory_reservation: i64,
    /// `--memory-swap` in bytes (memory + swap; -1 unlimited).
    pub memory_swap: i64,
    /// `--memory-swappiness`; the CLI sends -1 for "not set".
    pub memory_swappiness: Option<i64>,
    /// `--oom-kill-disable`.
    pub oom_kill_disable: Option<bool>,
    /// `--pids-limit`; `None` unset, 0 unlimited.
    pub pids_limit: Option<i64>,
    /// `--ulimit`.
    pub ulimits: Option<Vec<Ulimit>>,
    /// Windows only: `--cpu-count`.
    pub cpu_count: i64,
    /// Windows only: `--cpu-percent`.
    pub cpu_percent: i64,
    /// Windows only: `--io-maxiops`.
    #[serde(rename = "IOMaximumIOps")]
    pub io_maximum_iops: u64,
    /// Windows only: `--io-maxbandwidth`.
    #[serde(rename = "IOMaximumBandwidth")]
    pub io_maximum_bandwidth: u64,
    /// `--mount`.
    #[serde(skip_serializing_if = "vec_none_or_empty")]
    pub mounts: Option<Vec<Mount>>,
    /// Paths masked in the container; `None` means the defaults (filled at create).
    pub masked_paths: Option<Vec<String>>,
    /// Paths made read-only in the container; `None` means the defaults.
    pub readonly_paths: Option<Vec<String>>,
    /// `--init`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    /// Fields this engine does not know (newer API versions), kept for `inspect`.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl HostConfig {
    /// The JSON names of the typed fields, for decoders that match names case-insensitively
    /// (the struct flattens `extra`, so serde does not list them).
    pub const FIELDS: &'static [&'static str] = &[
        "Binds",
        "ContainerIDFile",
        "LogConfig",
        "NetworkMode",
        "PortBindings",
        "RestartPolicy",
        "AutoRemove",
        "VolumeDriver",
        "VolumesFrom",
        "ConsoleSize",
        "Annotations",
        "CapAdd",
        "CapDrop",
        "CgroupnsMode",
        "Dns",
        "DnsOptions",
        "DnsSearch",
        "ExtraHosts",
        "GroupAdd",
        "IpcMode",
        "Cgroup",
        "Links",
        "OomScoreAdj",
        "PidMode",
        "Privileged",
        "PublishAllPorts",
        "ReadonlyRootfs",
        "SecurityOpt",
        "StorageOpt",
        "Tmpfs",
        "UTSMode",
        "UsernsMode",
        "ShmSize",
        "Sysctls",
        "Runtime",
        "Isolation",
        "CpuShares",
        "Memory",
        "NanoCpus",
        "CgroupParent",
        "BlkioWeight",
        "BlkioWeightDevice",
        "BlkioDeviceReadBps",
        "BlkioDeviceWriteBps",
        "BlkioDeviceReadIOps",
        "BlkioDeviceWriteIOps",
        "CpuPeriod",
        "CpuQuota",
        "CpuRealtimePeriod",
        "CpuRealtimeRuntime",
        "CpusetCpus",
        "CpusetMems",
        "Devices",
        "DeviceCgroupRules",
        "DeviceRequests",
        "KernelMemoryTCP",
        "MemoryReservation",
        "MemorySwap",
        "MemorySwappiness",
        "OomKillDisable",
        "PidsLimit",
        "Ulimits",
        "CpuCount",
        "CpuPercent",
        "IOMaximumIOps",
        "IOMaximumBandwidth",
        "Mounts",
        "MaskedPaths",
        "ReadonlyPaths",
        "Init",
    ];
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            binds: None,
            container_id_file: String::new(),
            log_config: LogConfig::default(),
            network_mode: "default".into(),
            port_bindings: BTreeMap::new(),
            restart_policy: RestartPolicy::default(),
            auto_remove: false,
            volume_driver: String::new(),
            volumes_from: None,
            console_size: [0, 0],
            annotations: None,
            cap_add: None,
            cap_drop: None,
            cgroupns_mode: String::new(),
            dns: None,
            dns_options: None,
            dns_search: None,
            extra_hosts: None,
            group_add: None,
            ipc_mode: String::new(),
            cgroup: String::new(),
            links: None,
            oom_score_adj: 0,
            pid_mode: String::new(),
            privileged: false,
            publish_all_ports: false,
            readonly_rootfs: false,
            security_opt: None,
            storage_opt: None,
            tmpfs: None,
            uts_mode: String::new(),
            userns_mode: String::new(),
            shm_size: 0,
            sysctls: None,
            runtime: String::new(),
            isolation: String::new(),
            cpu_shares: 0,
            memory: 0,
            nano_cpus: 0,
            cgroup_parent: String::new(),
            blkio_weight: 0,
            blkio_weight_device: None,
            blkio_device_read_bps: None,
            blkio_device_write_bps: None,
            blkio_device_read_iops: None,
            blkio_device_write_iops: None,
            cpu_period: 0,
            cpu_quota: 0,
            cpu_realtime_period: 0,
            cpu_realtime_runtime: 0,
            cpuset_cpus: String::new(),
            cpuset_mems: String::new(),
            devices: None,
            device_cgroup_rules: None,
            device_requests: None,
            kernel_memory_tcp: 0,
            memory_reservation: 0,
            memory_swap: 0,
            memory_swappiness: None,
            oom_kill_disable: None,
            pids_limit: None,
            ulimits: None,
            cpu_count: 0,
            cpu_percent: 0,
            io_maximum_iops: 0,
            io_maximum_bandwidth: 0,
            mounts: None,
            masked_paths: None,
            readonly_paths: None,
            init: None,
            extra: BTreeMap::new(),
        }
    }
}

/// `NetworkingConfig` of a create request (not stored: the engine has no networks to join).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkingConfig {
    /// The networks to join, by name, with the endpoint settings asked for.
    #[serde(deserialize_with = "null_default")]
    pub endpoints_config: BTreeMap<String, Option<EndpointSettings>>,
}

/// One network's `EndpointSettings` in a create request.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointSettings {
    /// `--ip`, `--ip6`, `--link-local-ip`.
    #[serde(rename = "IPAMConfig")]
    pub ipam_config: Option<serde_json::Value>,
    /// `--link` on a user network.
    pub links: Option<Vec<String>>,
    /// `--network-alias`.
    pub aliases: Option<Vec<String>>,
    /// `--mac-address`.
    pub mac_address: String,
    /// `--network name=...,driver-opt=...`.
    pub driver_opts: Option<BTreeMap<String, String>>,
    /// `--network name=...,gw-priority=...`.
    pub gw_priority: i64,
    /// Operational data a client may echo back.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Operational data a client may echo back.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// Operational data a client may echo back.
    pub gateway: String,
    /// Operational data a client may echo back.
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    /// Operational data a client may echo back.
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: i64,
    /// Operational data a client may echo back.
    #[serde(rename = "IPv6Gateway")]
    pub ipv6_gateway: String,
    /// Operational data a client may echo back.
    #[serde(rename = "GlobalIPv6Address")]
    pub global_ipv6_address: String,
    /// Operational data a client may echo back.
    #[serde(rename = "GlobalIPv6PrefixLen")]
    pub global_ipv6_prefix_len: i64,
    /// Operational data a client may echo back.
    #[serde(rename = "DNSNames")]
    pub dns_names: Option<Vec<String>>,
}

impl EndpointSettings {
    /// Whether nothing is asked of the endpoint (the CLI sends all zero values by default).
    pub fn is_empty(&self) -> bool {
        let empty = |list: &Option<Vec<String>>| list.as_ref().is_none_or(Vec::is_empty);
        self.ipam_config
            .as_ref()
            .is_none_or(|v| v.is_null() || v.as_object().is_some_and(|m| m.is_empty()))
            && empty(&self.links)
            && empty(&self.aliases)
            && empty(&self.dns_names)
            && self.mac_address.is_empty()
            && self.driver_opts.as_ref().is_none_or(BTreeMap::is_empty)
            && self.gw_priority == 0
    }
}

/// Lifecycle status as Docker names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created, never started (or its start failed).
    Created,
    /// Its process runs.
    Running,
    /// It ran and stopped.
    Exited,
    /// Being removed.
    Removing,
    /// Could not be cleaned up.
    Dead,
}

impl Status {
    /// Docker's lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
            Status::Removing => "removing",
            Status::Dead => "dead",
        }
    }
}

/// The changing part of a container record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerState {
    /// Lifecycle status.
    pub status: Status,
    /// Its processes are frozen (`docker pause`); only while `status` is running. Kept on
    /// disk so the record never says "running" of a frozen container.
    #[serde(default)]
    pub paused: bool,
    /// Host PID of the container's PID 1 while running, else 0.
    pub pid: i32,
    /// Last exit code (127/126 after a failed start).
    pub exit_code: i64,
    /// Why the last start failed, else empty.
    pub error: String,
    /// When the container last started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the container last stopped.
    pub finished_at: Option<DateTime<Utc>>,
    /// Health-check state, once a container with a healthcheck has started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<crate::container::health::Health>,
}

/// Everything the engine keeps about one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerRecord {
    /// 64 hex characters.
    pub id: String,
    /// Name with its leading slash, as Docker stores it.
    pub name: String,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// The process path (first word of entrypoint + cmd).
    pub path: String,
    /// The process arguments after `path`.
    pub args: Vec<String>,
    /// Image id (`sha256:…`).
    pub image_id: String,
    /// Merged config.
    pub config: ContainerConfig,
    /// Host config.
    pub host_config: HostConfig,
    /// Current state.
    pub state: ContainerState,
    /// How often it was restarted by a restart policy.
    pub restart_count: u64,
    /// Its binds, volumes and `--mount`s by destination (dockerd's `MountPoints`), decided
    /// at create.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mount_points: BTreeMap<String, crate::volume::spec::MountPoint>,
}

impl ContainerRecord {
    /// The first 12 characters of the id.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }

    /// The command line `docker ps` shows: an argument holding a space is single-quoted, the
    /// path never is (moby daemon/container/view.go `transform`).
    pub fn command_line(&self) -> String {
        std::iter::once(self.path.clone())
            .chain(self.args.iter().map(|arg| {
                if arg.contains(' ') {
                    format!("'{arg}'")
                } else {
                    arg.clone()
                }
            }))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The directory holding every container's directory.
///
/// Record writes are serialised per record: each write takes a ticket when `save` is called
/// and holds its record's lock from serialising to the rename; a write whose ticket is older
/// than the one last written for that record is dropped. Callers hand over snapshots already
/// taken, so the state module cannot order snapshots, only calls: the later call wins (a slow
/// `save` of "running" can no longer rename over the `save_unsynced` of the exit that came
/// after it). Clones share the locks.
#[derive(Debug, Clone)]
pub struct StateStore {
    root: PathBuf,
    writes: std::sync::Arc<RecordLocks>,
}

/// The per-record write locks and the ticket counter of a [`StateStore`].
#[derive(Debug, Default)]
struct RecordLocks {
    next_ticket: std::sync::atomic::AtomicU64,
    /// Per record path: the ticket of the write last renamed into place.
    written:
        std::sync::Mutex<std::collections::HashMap<PathBuf, std::sync::Arc<std::sync::Mutex<u64>>>>,
}

/// A write's place in the order of calls, taken before anything else is done.
#[derive(Debug, Clone, Copy)]
struct Ticket(u64);

impl StateStore {
    /// Opens (creating) `<data-root>/containers`.
    pub fn open(data_root: &Path) -> Result<StateStore, StateError> {
        let root = data_root.join("containers");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(modes::CONTAINERS_DIR)
            .create(&root)
            .map_err(|source| StateError::Io {
                path: root.clone(),
                source,
            })?;
        Ok(StateStore {
            root,
            writes: Default::default(),
        })
    }

    /// Creates a new container's directory (dockerd's mode), durably: the record written
    /// next is then found at the next start.
    pub fn create_dir(&self, id: &str) -> Result<(), StateError> {
        let dir = self.dir(id);
        let io = |source| StateError::Io {
            path: dir.clone(),
            source,
        };
        fs::DirBuilder::new()
            .mode(modes::CONTAINER_DIR)
            .create(&dir)
            .map_err(io)?;
        // The umask may have taken bits off; the mode is the engine's decision.
        fs::set_permissions(&dir, fs::Permissions::from_mode(modes::CONTAINER_DIR)).map_err(io)?;
        durable::sync_dir(&self.root).map_err(io)
    }

    /// The directory of one container.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Reads every record; unreadable ones are logged and skipped, since one corrupt record
    /// must not keep the engine from starting.
    pub fn load_all(&self) -> Result<Vec<ContainerRecord>, StateError> {
        let entries = fs::read_dir(&self.root).map_err(|source| StateError::Io {
            path: self.root.clone(),
            source,
        })?;
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path().join(RECORD_FILE);
            if !path.exists() {
                continue;
            }
            match read_record(&path) {
                Ok(record) => records.push(record),
                Err(err) => tracing::warn!(error = %err, "skipping container record"),
            }
        }
        records.sort_by_key(|r| r.created);
        Ok(records)
    }

    /// Writes a record atomically.
    pub fn save(&self, record: &ContainerRecord) -> Result<(), StateError> {
        self.write_record(self.ticket(), record, true)
    }

    /// Writes a record atomically without waiting for the disk: for a container's exit, which
    /// a crash cannot lose in effect (a record still saying "running" is marked exited when
    /// the engine starts) and which `docker stop` and `docker wait` are waiting on. The
    /// rename still replaces the old record whole (ext4 flushes a file renamed over another).
    pub fn save_unsynced(&self, record: &ContainerRecord) -> Result<(), StateError> {
        self.write_record(self.ticket(), record, false)
    }

    fn ticket(&self) -> Ticket {
        // Tickets start at 1: 0 is "nothing written yet".
        Ticket(
            self.writes
                .next_ticket
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1,
        )
    }

    /// The lock of the record at `path`, holding the ticket last written there.
    fn record_lock(&self, path: &Path) -> std::sync::Arc<std::sync::Mutex<u64>> {
        let mut locks = self
            .writes
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(path.to_path_buf()).or_default().clone()
    }

    fn write_record(
        &self,
        ticket: Ticket,
        record: &ContainerRecord,
        sync: bool,
    ) -> Result<(), StateError> {
        let dir = self.dir(&record.id);
        let path = dir.join(RECORD_FILE);
        let lock = self.record_lock(&path);
        // A panicking writer left either the old record or its own, whole: go on.
        let mut last = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *last > ticket.0 {
            tracing::debug!(container = %record.id, "a later write of the record won; dropping this one");
            return Ok(());
        }
        let tmp = dir.join(format!(".{RECORD_FILE}.tmp{:016x}", ticket.0));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        let json = serde_json::to_vec(record).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        if sync {
            durable::write_atomic(&path, &json, modes::CONFIG_FILE).map_err(io(&path))?;
        } else {
            let written = (|| {
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(modes::CONFIG_FILE)
                    .open(&tmp)
                    .map_err(io(&tmp))?;
                file.write_all(&json).map_err(io(&tmp))?;
                fs::rename(&tmp, &path).map_err(io(&path))
            })();
            if written.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            written?;
        }
        *last = ticket.0;
        Ok(())
    }

    /// Deletes a container's directory (record, log, writable layer), durably: a removed
    /// container does not come back after a power cut.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let dir = self.dir(id);
        self.writes
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&dir.join(RECORD_FILE));
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(StateError::Io { path: dir, source }),
        }
        // The removal happened; a directory that cannot be flushed is only logged.
        if let Err(err) = durable::sync_dir(&self.root) {
            tracing::warn!(path = %self.root.display(), error = %err, "cannot flush the containers directory");
        }
        Ok(())
    }
}

fn read_record(path: &Path) -> Result<ContainerRecord, StateError> {
    let bytes = fs::read(path).map_err(|source| StateError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let corrupt = |source| StateError::Corrupt {
        path: path.to_path_buf(),
        source,
    };
    let strict = serde_json::from_slice(&bytes);
    let Err(err) = strict else {
        return strict.map_err(corrupt);
    };
    // Engines before the typed HostConfig stored whatever a client sent, including values of
    // the wrong type (`"Memory": "lots"`); such a field is dropped rather than the container.
    let mut value: serde_json::Value = serde_json::from_slice(&bytes).map_err(corrupt)?;
    let mut dropped = Vec::new();
    if let Some(obj) = value.get_mut("HostConfig").and_then(|v| v.as_object_mut()) {
        dropped.extend(drop_mistyped::<HostConfig>(obj));
    }
    if let Some(obj) = value.get_mut("Config").and_then(|v| v.as_object_mut()) {
        dropped.extend(drop_mistyped::<ContainerConfig>(obj));
    }
    if dropped.is_empty() {
        return Err(corrupt(err));
    }
    tracing::warn!(path = %path.display(), fields = ?dropped, "dropped mistyped fields of an old record");
    serde_json::from_value(value).map_err(corrupt)
}

/// Removes the fields of `obj` that `T` cannot decode on their own; returns their names.
fn drop_mistyped<T: serde::de::DeserializeOwned>(
    obj: &mut serde_json::Map<String, serde_json::Value>,
) -> Vec<String> {
    let bad: Vec<String> = obj
        .iter()
        .filter(|(key, value)| {
            let single = serde_json::Map::from_iter([((*key).clone(), (*value).clone())]);
            serde_json::from_value::<T>(serde_json::Value::Object(single)).is_err()
        })
        .map(|(key, _)| key.clone())
        .collect();
    for key in &bad {
        obj.remove(key);
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_accepts_docker_cli_shapes() {
        let json = r#"{"Hostname":"","Env":null,"Cmd":"echo hi","Entrypoint":null,
            "Image":"busybox","Labels":null,"OnBuild":null,"Tty":false}"#;
        let config: ContainerConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.cmd, Some(vec!["echo hi".to_string()]));
        assert_eq!(config.entrypoint, None);
        assert!(config.env.is_empty());
        assert_eq!(config.on_build, None);
        assert!(config.extra.is_empty());
    }

    #[test]
    fn records_written_before_the_paused_flag_still_load() {
        let json = r#"{"Status":"running","Pid":7,"ExitCode":0,"Error":"",
            "StartedAt":null,"FinishedAt":null}"#;
        let state: ContainerState = serde_json::from_str(json).unwrap();
        assert!(!state.paused);
        assert_eq!(state.status, Status::Running);
    }

    #[test]
    fn records_of_the_untyped_engine_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let id = "b".repeat(64);
        fs::create_dir_all(store.dir(&id)).unwrap();
        // As the engine before the typed HostConfig wrote it: the client's fields as sent.
        let old = serde_json::json!({
            "Id": id, "Name": "/old", "Created": "2026-01-01T00:00:00Z", "Path": "sleep",
            "Args": ["1"], "ImageId": "sha256:00",
            "Config": {"Image": "busybox", "Env": null, "OnBuild": null, "Volumes": {},
                       "Labels": {"a": "b"}, "Cmd": ["sleep", "1"]},
            "HostConfig": {"AutoRemove": false, "NetworkMode": "default", "Memory": "lots",
                "RestartPolicy": {"Name": "always", "MaximumRetryCount": 0},
                "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m"}},
                "MemorySwappiness": null, "PidsLimit": 5, "Runtime": "rmachine",
                "ConsoleSize": [0, 0], "CapAdd": null, "Tmpfs": {"/run": ""},
                "KernelMemory": 0},
            "State": {"Status": "exited", "Pid": 0, "ExitCode": 0, "Error": "",
                      "StartedAt": null, "FinishedAt": null},
            "RestartCount": 2
        });
        fs::write(
            store.dir(&id).join(RECORD_FILE),
            serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
        let records = store.load_all().unwrap();
        let host = &records[0].host_config;
        assert_eq!(host.restart_policy.name, "always");
        assert_eq!(host.log_config.config["max-size"], "1m");
        assert_eq!(host.pids_limit, Some(5));
        assert_eq!(host.memory, 0, "the mistyped field is dropped");
        assert_eq!(host.extra["KernelMemory"], 0);
        assert_eq!(records[0].config.labels["a"], "b");
    }

    #[test]
    fn field_lists_name_every_typed_field() {
        let mut host = serde_json::to_value(HostConfig::default()).unwrap();
        let mut config = serde_json::to_value(ContainerConfig::default()).unwrap();
        for (value, fields) in [
            (&mut host, HostConfig::FIELDS),
            (&mut config, ContainerConfig::FIELDS),
        ] {
            let keys = value.as_object().unwrap();
            for key in keys.keys() {
                assert!(fields.contains(&key.as_str()), "{key} is not listed");
            }
        }
        for field in HostConfig::FIELDS {
            let single = serde_json::json!({ *field: null });
            let parsed: HostConfig = serde_json::from_value(single).unwrap_or_default();
            assert!(parsed.extra.is_empty(), "{field} is not a typed field");
        }
        for field in ContainerConfig::FIELDS {
            let single = serde_json::json!({ *field: null });
            let parsed: ContainerConfig = serde_json::from_value(single).unwrap_or_default();
            assert!(parsed.extra.is_empty(), "{field} is not a typed field");
        }
    }

    #[test]
    fn records_round_trip_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let id = "a".repeat(64);
        fs::create_dir_all(store.dir(&id)).unwrap();
        let record = ContainerRecord {
            id: id.clone(),
            name: "/x".into(),
            created: Utc::now(),
            path: "echo".into(),
            args: vec!["hi".into()],
            image_id: "sha256:00".into(),
            config: ContainerConfig::default(),
            host_config: HostConfig::default(),
            state: ContainerState {
                status: Status::Created,
                paused: false,
                pid: 0,
                exit_code: 0,
                error: String::new(),
                started_at: None,
                finished_at: None,
                health: None,
            },
            restart_count: 0,
            mount_points: BTreeMap::new(),
        };
        store.save(&record).unwrap();
        assert_eq!(store.load_all().unwrap(), vec![record]);
        store.remove(&id).unwrap();
        assert!(store.load_all().unwrap().is_empty());
    }

    fn record_of(id: &str, status: Status, pid: i32) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            name: "/x".into(),
            created: Utc::now(),
            path: "true".into(),
            args: Vec::new(),
            image_id: "sha256:00".into(),
            config: ContainerConfig::default(),
            host_config: HostConfig::default(),
            state: ContainerState {
                status,
                paused: false,
                pid,
                exit_code: 0,
                error: String::new(),
                started_at: None,
                finished_at: None,
                health: None,
            },
            restart_count: 0,
            mount_points: BTreeMap::new(),
        }
    }

    #[test]
    fn concurrent_writes_of_one_record_all_succeed_and_leave_one_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let id = "c".repeat(64);
        fs::create_dir_all(store.dir(&id)).unwrap();
        let threads: Vec<_> = (0..6)
            .map(|n| {
                let store = store.clone();
                let id = id.clone();
                std::thread::spawn(move || {
                    for i in 0..60 {
                        let record = record_of(&id, Status::Running, n * 1000 + i);
                        if i % 10 == 0 {
                            store.save(&record)?;
                        } else {
                            store.save_unsynced(&record)?;
                        }
                    }
                    Ok::<_, StateError>(())
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap().unwrap();
        }
        assert_eq!(store.load_all().unwrap().len(), 1);
        let names: Vec<_> = fs::read_dir(store.dir(&id))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [RECORD_FILE], "temp files left");
    }

    #[test]
    fn a_write_called_before_the_last_one_does_not_overwrite_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let id = "d".repeat(64);
        fs::create_dir_all(store.dir(&id)).unwrap();
        // A slow `save` of "running" reaches the disk after the exit saved by a later call.
        let running = store.ticket();
        let exited = record_of(&id, Status::Exited, 0);
        store.save_unsynced(&exited).unwrap();
        store
            .write_record(running, &record_of(&id, Status::Running, 42), true)
            .unwrap();
        assert_eq!(store.load_all().unwrap(), vec![exited.clone()]);
        // Calls after it still win.
        let again = record_of(&id, Status::Running, 43);
        store.save(&again).unwrap();
        assert_eq!(store.load_all().unwrap(), vec![again]);
    }
}
