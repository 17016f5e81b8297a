//! Docker API JSON shapes: requests the engine decodes and the documents it answers with.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use super::gojson::{self, GoJsonError};
use crate::core::{Counts, EngineConfig};
use crate::state::{ContainerConfig, ContainerRecord, HostConfig, NetworkingConfig, Status};
use crate::sysinfo;

/// The API version the engine advertises.
pub const API_VERSION: &str = "1.45";
/// The oldest API version accepted.
pub const MIN_API_VERSION: &str = "1.24";
/// The engine version (`Server: Docker/<version>`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Body of `POST /containers/create`: `Config` fields at the top level, plus `HostConfig` and
/// `NetworkingConfig` (moby's `container.CreateRequest`).
#[derive(Debug, Default)]
pub struct CreateBody {
    /// The container config.
    pub config: ContainerConfig,
    /// The host config.
    pub host_config: HostConfig,
    /// The networks to join.
    pub networking_config: NetworkingConfig,
}

impl CreateBody {
    /// Decodes a body as dockerd does (see [`gojson`]). The parts are decoded apart rather
    /// than through `#[serde(flatten)]`, which would buffer the `Config` fields and lose the
    /// decoder's field matching inside them.
    pub fn decode(bytes: &[u8]) -> Result<CreateBody, GoJsonError> {
        let mut object = gojson::parse_object(bytes)?;
        let host = gojson::take_field(&mut object, "HostConfig");
        let networking = gojson::take_field(&mut object, "NetworkingConfig");
        Ok(CreateBody {
            config: gojson::from_object(&object, "CreateRequest", &[])?,
            host_config: gojson::from_field(host, "HostConfig", "container.HostConfig")?
                .unwrap_or_default(),
            networking_config: gojson::from_field(
                networking,
                "NetworkingConfig",
                "network.NetworkingConfig",
            )?
            .unwrap_or_default(),
        })
    }
}

/// Answer of `POST /containers/create`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateResponse {
    /// The new container's id.
    pub id: String,
    /// Warnings the CLI prints (`WARNING: ...`).
    pub warnings: Vec<String>,
}

/// Answer of `POST /containers/{id}/wait`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WaitResponse {
    /// The exit code.
    pub status_code: i64,
    /// Always null: errors are HTTP errors.
    pub error: Option<Value>,
}

/// Go's zero time, which Docker shows for "never".
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

fn time(t: Option<&DateTime<Utc>>) -> String {
    t.map_or_else(
        || ZERO_TIME.to_string(),
        |t| t.to_rfc3339_opts(SecondsFormat::Nanos, true),
    )
}

/// go-units' `HumanDuration`, which `docker ps` statuses use.
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    let hours = s / 3600;
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        _ if s / 60 < 60 => format!("{} minutes", s / 60),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", hours / 24 / 365),
    }
}

/// The `Status` column of `docker ps`.
pub fn status_text(record: &ContainerRecord, now: DateTime<Utc>) -> String {
    let since = |t: Option<DateTime<Utc>>| t.map_or(0, |t| (now - t).num_seconds());
    match record.state.status {
        Status::Running => {
            let up = format!("Up {}", human_duration(since(record.state.started_at)));
            // A paused container shows `(Paused)` instead (moby's `State.String`).
            match &record.state.health {
                Some(health) if !record.state.paused => format!("{up} ({})", health.describe()),
                _ => up,
            }
        }
        Status::Exited => format!(
            "Exited ({}) {} ago",
            record.state.exit_code,
            human_duration(since(record.state.finished_at))
        ),
        Status::Created => "Created".into(),
        Status::Removing => "Removal In Progress".into(),
        Status::Dead => "Dead".into(),
    }
}

fn network_settings() -> Value {
    json!({
        "Bridge": "", "SandboxID": "", "SandboxKey": "", "HairpinMode": false,
        "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0, "Ports": {},
        "SecondaryIPAddresses": null, "SecondaryIPv6Addresses": null,
        "EndpointID": "", "Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
        "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "MacAddress": "",
        "Networks": {}
    })
}

/// A container's `Mounts` (inspect and list): its mount points, by destination.
fn mounts(record: &ContainerRecord) -> Value {
    Value::Array(record.mount_points.values().map(|m| m.to_api()).collect())
}

/// One entry of `GET /containers/json`.
pub fn container_summary(record: &ContainerRecord, now: DateTime<Utc>) -> Value {
    let network_mode = if record.host_config.network_mode == "default" {
        "none"
    } else {
        record.host_config.network_mode.as_str()
    };
    json!({
        "Id": record.id,
        "Names": [record.name],
        "Image": record.config.image,
        "ImageID": record.image_id,
        "Command": record.command_line(),
        "Created": record.created.timestamp(),
        "Ports": [],
        "Labels": record.config.labels,
        "State": record.state.status.as_str(),
        "Status": status_text(record, now),
        "HostConfig": {"NetworkMode": network_mode},
        "NetworkSettings": {"Networks": {}},
        "Mounts": mounts(record),
    })
}

/// `GET /containers/{id}/json`.
pub fn container_inspect(record: &ContainerRecord, dir: &std::path::Path) -> Value {
    let state = &record.state;
    let running = state.status == Status::Running;
    let mut host = record.host_config.clone();
    // Records made before create filled in the log driver.
    if host.log_config.kind.is_empty() {
        host.log_config.kind = "json-file".into();
    }
    // Records made before the runtime took runc's name call it by its own.
    if host.runtime == "rmachine" {
        host.runtime = crate::core::DEFAULT_RUNTIME.into();
    }
    // Records made before create cleared the CLI's "not set" -1 (`fixMemorySwappiness`).
    if host.memory_swappiness == Some(-1) {
        host.memory_swappiness = None;
    }
    let host_config = serde_json::to_value(&host).unwrap_or(Value::Null);
    let mut config = serde_json::to_value(&record.config).unwrap_or(Value::Null);
    if let Some(obj) = config.as_object_mut() {
        // Docker's `Config.Volumes` is a map that stays null when no volume is declared.
        if obj
            .get("Volumes")
            .is_none_or(|v| v.as_object().is_some_and(|m| m.is_empty()))
        {
            obj.insert("Volumes".into(), Value::Null);
        }
    }
    // The runtime's monitor leaves this file when the kernel's OOM killer struck during the
    // last run; `start` removes it.
    let oom_killed = dir.join(rmachine_runtime::spec::OOM_KILLED_FILE).exists();
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let mut inspect = json!({
        "Id": record.id,
        "Created": time(Some(&record.created)),
        "Path": record.path,
        "Args": record.args,
        "State": {
            "Status": state.status.as_str(),
            "Running": running,
            "Paused": false,
            "Restarting": false,
            "OOMKilled": oom_killed,
            "Dead": state.status == Status::Dead,
            "Pid": state.pid,
            "ExitCode": state.exit_code,
            "Error": state.error,
            "StartedAt": time(state.started_at.as_ref()),
            "FinishedAt": time(state.finished_at.as_ref()),
        },
        "Image": record.image_id,
        "ResolvConfPath": path("resolv.conf"),
        "HostnamePath": path("hostname"),
        "HostsPath": path("hosts"),
        "LogPath": path(&format!("{}-json.log", record.id)),
        "Name": record.name,
        "RestartCount": record.restart_count,
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": null,
        "HostConfig": host_config,
        "GraphDriver": {
            "Name": "overlay2",
            "Data": {
                "MergedDir": path("merged"),
                "UpperDir": path("upper"),
                "WorkDir": path("work"),
            }
        },
        "Mounts": mounts(record),
        "Config": config,
        "NetworkSettings": network_settings(),
    });
    if let Some(health) = &state.health {
        inspect["State"]["Health"] = serde_json::to_value(health).unwrap_or(Value::Null);
    }
    inspect
}

/// `GET /version`.
pub fn version() -> Value {
    let build_time = option_env!("RMACHINE_BUILD_TIME").unwrap_or("n/a");
    let git_commit = option_env!("RMACHINE_GIT_COMMIT").unwrap_or("unknown");
    json!({
        "Platform": {"Name": "rmachine-engine"},
        "Components": [{
            "Name": "Engine",
            "Version": VERSION,
            "Details": {
                "ApiVersion": API_VERSION,
                "MinAPIVersion": MIN_API_VERSION,
                "GitCommit": git_commit,
                "GoVersion": "n/a",
                "Os": "linux",
                "Arch": sysinfo::go_arch(),
                "KernelVersion": sysinfo::kernel_version(),
                "BuildTime": build_time,
                "Experimental": "false",
            }
        }],
        "Version": VERSION,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": git_commit,
        "GoVersion": "n/a",
        "Os": "linux",
        "Arch": sysinfo::go_arch(),
        "KernelVersion": sysinfo::kernel_version(),
        "BuildTime": build_time,
    })
}

/// `GET /info`.
pub fn info(config: &EngineConfig, engine_id: &str, counts: Counts, images: usize) -> Value {
    let cgroup_version = sysinfo::cgroup_version();
    let limits = sysinfo::cgroup_features();
    let forwarding = sysinfo::ipv4_forwarding();
    let warnings = sysinfo::info_warnings(limits, cgroup_version, forwarding);
    json!({
        "ID": engine_id,
        "Containers": counts.total,
        "ContainersRunning": counts.running,
        "ContainersPaused": counts.paused,
        "ContainersStopped": counts.stopped,
        "Images": images,
        "Driver": "overlay2",
        "DriverStatus": [
            ["Backing Filesystem", "extfs"],
            ["Supports d_type", "true"],
            ["Using metacopy", "false"],
            ["Native Overlay Diff", "true"],
            ["userxattr", "false"]
        ],
        "Plugins": {
            // Named volumes are not served yet (501): no volume driver works.
            "Volume": [],
            "Network": ["host", "null"],
            "Authorization": null,
            "Log": ["json-file"]
        },
        "MemoryLimit": limits.memory,
        "SwapLimit": limits.swap,
        // The runtime sets no kernel TCP memory limit and never disables the OOM killer.
        "KernelMemoryTCP": false,
        "CpuCfsPeriod": limits.cfs_period,
        "CpuCfsQuota": limits.cfs_quota,
        "CPUShares": limits.cpu_shares,
        "CPUSet": limits.cpuset,
        "PidsLimit": limits.pids,
        "IPv4Forwarding": forwarding,
        // As dockerd 28 (API 1.48): obsolete, always false, no warning (netfilter modules
        // load on demand).
        "BridgeNfIptables": false,
        "BridgeNfIp6tables": false,
        "Debug": config.debug,
        "NFd": count_fds(),
        "OomKillDisable": false,
        "NGoroutines": 0,
        "SystemTime": Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true),
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": cgroup_version,
        "NEventsListener": 0,
        "KernelVersion": sysinfo::kernel_version(),
        "OperatingSystem": sysinfo::operating_system(),
        "OSVersion": sysinfo::os_version(),
        "OSType": "linux",
        "Architecture": sysinfo::architecture(),
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": config.registry.info(),
        "NCPU": sysinfo::ncpu(),
        "MemTotal": sysinfo::mem_total(),
        "GenericResources": null,
        "DockerRootDir": config.data_root,
        "HttpProxy": "",
        "HttpsProxy": "",
        "NoProxy": "",
        "Name": sysinfo::hostname(),
        "Labels": config.labels,
        "ExperimentalBuild": false,
        "ServerVersion": VERSION,
        "Runtimes": {crate::core::DEFAULT_RUNTIME: {"path": config.runtime}},
        "DefaultRuntime": crate::core::DEFAULT_RUNTIME,
        "Swarm": {
            "NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive",
            "ControlAvailable": false, "Error": "", "RemoteManagers": null
        },
        "LiveRestoreEnabled": false,
        "Isolation": "",
        "InitBinary": "",
        "ContainerdCommit": {"ID": ""},
        "RuncCommit": {"ID": ""},
        "InitCommit": {"ID": ""},
        "SecurityOptions": ["name=seccomp,profile=builtin"],
        "CDISpecDirs": [],
        "Warnings": warnings
    })
}

fn count_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Adds `SizeRw` and `SizeRootFs` (the core's `container_sizes`) to an inspect or list JSON.
pub fn show_sizes(value: &mut Value, sizes: crate::core::ContainerSizes) {
    if let Some(object) = value.as_object_mut() {
        object.insert("SizeRw".into(), sizes.size_rw.into());
        object.insert("SizeRootFs".into(), sizes.size_root_fs.into());
    }
}

/// Adds `GraphDriver.Data.LowerDir` (the core's `lower_dir`) to a container's inspect JSON.
pub fn show_lower_dir(value: &mut Value, lower: String) {
    if let Some(data) = value
        .get_mut("GraphDriver")
        .and_then(|g| g.get_mut("Data"))
        .and_then(Value::as_object_mut)
    {
        data.insert("LowerDir".into(), lower.into());
    }
}

/// Shows a paused container (the core's `is_paused`) in an inspect or list JSON as Docker does.
pub fn show_paused(value: &mut Value) {
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

/// Shows a container waiting for its restart (the core's `is_restarting`) as Docker does:
/// `State.Restarting` and status `restarting` in inspect, `Restarting (code) … ago` in `ps`.
pub fn show_restarting(value: &mut Value) {
    match value.get_mut("State") {
        Some(Value::Object(state)) => {
            // dockerd counts a restarting container as running (State.Running true).
            state.insert("Restarting".into(), true.into());
            state.insert("Running".into(), true.into());
            state.insert("Status".into(), "restarting".into());
        }
        Some(state) => {
            *state = "restarting".into();
            if let Some(status) = value.get_mut("Status") {
                if let Some(rest) = status.as_str().and_then(|s| s.strip_prefix("Exited")) {
                    *status = format!("Restarting{rest}").into();
                }
            }
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_docker_ps() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(3), "3 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(600), "10 minutes");
        assert_eq!(human_duration(3700), "About an hour");
        assert_eq!(human_duration(5 * 3600), "5 hours");
        assert_eq!(human_duration(3 * 86400), "3 days");
    }

    #[test]
    fn create_body_splits_config_and_host_config() {
        let body = br#"{"Image":"busybox","Cmd":["true"],"HostConfig":{"AutoRemove":true,
            "NetworkMode":"default","Binds":null},"NetworkingConfig":{}}"#;
        let parsed = CreateBody::decode(body).unwrap();
        assert!(parsed.host_config.auto_remove);
        assert_eq!(parsed.config.image, "busybox");
        assert!(parsed.config.extra.is_empty());
        // docker-py's lowercase spellings, down to nested structs.
        let body = br#"{"image":"busybox","hostConfig":{"restartPolicy":{"name":"always"}},
            "healthcheck":{"test":["NONE"]},
            "networkingConfig":{"endpointsConfig":{"default":{"aliases":["a"]}}}}"#;
        let parsed = CreateBody::decode(body).unwrap();
        assert_eq!(parsed.config.image, "busybox");
        assert_eq!(parsed.host_config.restart_policy.name, "always");
        assert_eq!(
            parsed.config.healthcheck.unwrap().test,
            Some(vec!["NONE".to_string()])
        );
        let endpoint = parsed.networking_config.endpoints_config["default"].clone();
        assert_eq!(endpoint.unwrap().aliases, Some(vec!["a".to_string()]));
        assert_eq!(
            CreateBody::decode(br#"{"Image":"busybox","HostConfig":{"Memory":"lots"}}"#)
                .unwrap_err()
                .to_string(),
            "invalid JSON: json: cannot unmarshal string into Go struct field \
             HostConfig.HostConfig.Memory of type int64"
        );
        assert_eq!(
            CreateBody::decode(br#"{"Image":"busybox","HostConfig":"x"}"#)
                .unwrap_err()
                .to_string(),
            "invalid JSON: json: cannot unmarshal string into Go struct field \
             CreateRequest.HostConfig of type container.HostConfig"
        );
    }

    #[test]
    fn paused_and_restarting_containers_show_as_docker_shows_them() {
        let mut summary = json!({"State": "running", "Status": "Up 5 seconds"});
        show_paused(&mut summary);
        assert_eq!(summary["State"], "paused");
        assert_eq!(summary["Status"], "Up 5 seconds (Paused)");
        let mut inspect = json!({"State": {"Status": "running", "Paused": false}});
        show_paused(&mut inspect);
        assert_eq!(inspect["State"]["Status"], "paused");
        assert_eq!(inspect["State"]["Paused"], true);
        let mut summary = json!({"State": "exited", "Status": "Exited (1) 2 seconds ago"});
        show_restarting(&mut summary);
        assert_eq!(summary["State"], "restarting");
        assert_eq!(summary["Status"], "Restarting (1) 2 seconds ago");
        let mut inspect = json!({"State": {"Status": "exited", "Running": false}});
        show_restarting(&mut inspect);
        assert_eq!(inspect["State"]["Status"], "restarting");
        assert_eq!(inspect["State"]["Running"], true);
        assert_eq!(inspect["State"]["Restarting"], true);
    }
}
