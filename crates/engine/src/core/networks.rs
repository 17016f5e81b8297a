//! How a container gets its network at start (`--network` mode, published ports) and gives it
//! back at exit; see [`crate::network`].

use std::path::PathBuf;

use rmachine_runtime::spec::NetworkNamespace;

use super::{Engine, EngineError};
use crate::container::launch;
use crate::network::{ports, Endpoint, Join, NetworkError};
use crate::state::{ContainerRecord, HostConfig, Status};

/// The `--network` modes this engine serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `bridge` (and `default`, the CLI's value when none is given).
    Bridge,
    /// `none`: loopback only.
    None,
    /// `host`: the engine's own namespace.
    Host,
    /// `container:REF`: another running container's namespace.
    Container(String),
    /// A user-defined network, by name or id.
    Named(String),
}

impl Mode {
    /// The mode of `host`, or dockerd's error for a network that does not exist.
    pub fn of(host: &HostConfig) -> Result<Mode, EngineError> {
        match host.network_mode.as_str() {
            "" | "default" | "bridge" => Ok(Mode::Bridge),
            "none" => Ok(Mode::None),
            "host" => Ok(Mode::Host),
            other => match other.strip_prefix("container:") {
                Some(reference) if !reference.is_empty() => {
                    Ok(Mode::Container(reference.to_string()))
                }
                Some(_) => Err(EngineError::NoSuchNetwork {
                    name: other.to_string(),
                }),
                None => Ok(Mode::Named(other.to_string())),
            },
        }
    }

    /// The key of `NetworkSettings.Networks` (none for `container:`).
    pub fn network_name(&self) -> Option<&str> {
        match self {
            Mode::Bridge => Some("bridge"),
            Mode::None => Some("none"),
            Mode::Host => Some("host"),
            Mode::Container(_) => None,
            Mode::Named(name) => Some(name),
        }
    }
}

/// What a container got at start.
#[derive(Debug)]
pub(super) enum Setup {
    /// Loopback only.
    Loopback,
    /// The engine's namespace; `/etc/hosts` is the host's.
    Host,
    /// Another container's namespace and its `/etc/hosts`.
    Joined {
        /// `/proc/PID/ns/net` of that container.
        path: PathBuf,
        /// Its hosts file.
        hosts: PathBuf,
    },
    /// Its endpoints on bridge networks (the first holds the default route and the published
    /// ports), the `/etc/hosts` lines of its `--link`s (default bridge), and the `resolv.conf`
    /// naming the embedded DNS server (user-defined networks).
    Bridge(Vec<Endpoint>, String, Option<String>),
}

impl Setup {
    /// The runtime's view.
    pub(super) fn namespace(&self) -> NetworkNamespace {
        match self {
            Setup::Loopback => NetworkNamespace::Loopback,
            Setup::Host => NetworkNamespace::Host,
            Setup::Joined { path, .. } => NetworkNamespace::Path { path: path.clone() },
            Setup::Bridge(endpoints, ..) => match endpoints.first() {
                Some(first) => NetworkNamespace::Path {
                    path: first.netns.clone(),
                },
                None => NetworkNamespace::Loopback,
            },
        }
    }

    /// The container's `/etc/resolv.conf` when the engine writes one of its own (the embedded
    /// DNS server's), `None` for the host's.
    pub(super) fn resolv_conf(&self) -> Option<&str> {
        match self {
            Setup::Bridge(_, _, resolv) => resolv.as_deref(),
            _ => None,
        }
    }

    /// The container's `/etc/hosts`: moby's defaults, `--add-host` entries, then its own
    /// address and hostname on a bridge; the host's or the joined container's otherwise.
    pub(super) fn hosts(&self, extra_hosts: &[String], hostname: &str) -> String {
        match self {
            Setup::Loopback => launch::hosts_file(extra_hosts),
            Setup::Host => std::fs::read_to_string("/etc/hosts")
                .unwrap_or_else(|_| launch::hosts_file(extra_hosts)),
            Setup::Joined { hosts, .. } => {
                std::fs::read_to_string(hosts).unwrap_or_else(|_| launch::hosts_file(extra_hosts))
            }
            Setup::Bridge(endpoints, peers, _) => {
                let Some(first) = endpoints.first() else {
                    return launch::hosts_file(extra_hosts);
                };
                let extra = with_host_gateway(extra_hosts, first);
                let mut hosts = launch::hosts_file(&extra);
                for endpoint in endpoints {
                    hosts.push_str(&hosts_line(hostname, endpoint));
                }
                format!("{hosts}{peers}")
            }
        }
    }
}

/// `--add-host NAME:host-gateway` entries with the container's gateway as the address.
fn with_host_gateway(extra_hosts: &[String], endpoint: &Endpoint) -> Vec<String> {
    extra_hosts
        .iter()
        .map(|e| match e.strip_suffix(":host-gateway") {
            Some(name) => format!("{name}:{}", endpoint.gateway),
            None => e.clone(),
        })
        .collect()
}

/// The `/etc/hosts` line naming the container at its address on one network (one per
/// network, as dockerd's `updateHostsFile`).
fn hosts_line(hostname: &str, endpoint: &Endpoint) -> String {
    format!("{}\t{hostname}\n", endpoint.ip)
}

pub(super) fn publish_err(err: NetworkError) -> EngineError {
    match err {
        NetworkError::InvalidPort { reason } => EngineError::InvalidParameter { reason },
        NetworkError::Overlap => EngineError::Forbidden {
            reason: err.to_string(),
        },
        NetworkError::NameTaken { .. } => EngineError::Conflict {
            reason: err.to_string(),
        },
        other => {
            // The whole chain: the API shows this message only.
            let mut reason = other.to_string();
            let mut source = std::error::Error::source(&other);
            while let Some(cause) = source {
                reason.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            EngineError::NetworkSetup { reason }
        }
    }
}

/// The file beside a container's record holding its `--network-alias`es (the record does not
/// keep the create request's `NetworkingConfig`).
const ALIASES_FILE: &str = "network-aliases.json";

/// Present while a stopped container is disconnected from its network (`docker network
/// disconnect`): it then starts with loopback only, until `docker network connect`.
const DISCONNECTED_FILE: &str = "network-disconnected";

/// `settings` without its aliases: what is left must be empty (not implemented yet).
pub(super) fn without_aliases(
    settings: &crate::state::EndpointSettings,
) -> crate::state::EndpointSettings {
    crate::state::EndpointSettings {
        aliases: None,
        ..settings.clone()
    }
}

/// `settings` without what create serves: its aliases, and its links when `HostConfig.Links`
/// holds them too (the CLI copies `--link` there for a user-defined network).
pub(super) fn without_served(
    settings: &crate::state::EndpointSettings,
    host_links: Option<&Vec<String>>,
) -> crate::state::EndpointSettings {
    let links = settings.links.clone().unwrap_or_default();
    let served = links
        .iter()
        .all(|l| host_links.is_some_and(|h| h.contains(l)));
    let ipam_config = match requested_ip(settings) {
        Ok(Some(_)) => None,
        _ => settings.ipam_config.clone(),
    };
    crate::state::EndpointSettings {
        links: if served { None } else { settings.links.clone() },
        ipam_config,
        // Served, or refused by its own text (see `requested_mac`, `check_more_networks`).
        mac_address: String::new(),
        ..without_aliases(settings)
    }
}

/// The `--ip` of `settings` when that is all its `IPAMConfig` asks (no `--ip6`, no
/// `--link-local-ip`); dockerd's `invalid IPv4 address: X` for one that is not an address.
fn requested_ip(
    settings: &crate::state::EndpointSettings,
) -> Result<Option<std::net::Ipv4Addr>, String> {
    let Some(serde_json::Value::Object(map)) = &settings.ipam_config else {
        return Ok(None);
    };
    let mut ip = None;
    for (key, value) in map {
        match (key.as_str(), value) {
            ("IPv4Address", serde_json::Value::String(v)) if !v.is_empty() => {
                match v.parse::<std::net::Ipv4Addr>() {
                    Ok(addr) if !addr.is_unspecified() => ip = Some(addr),
                    _ => return Err(format!("invalid IPv4 address: {v}")),
                }
            }
            (_, serde_json::Value::Null) => {}
            (_, serde_json::Value::String(v)) if v.is_empty() => {}
            (_, serde_json::Value::Array(v)) if v.is_empty() => {}
            _ => return Ok(None),
        }
    }
    Ok(ip)
}

/// The file beside a container's record holding its `--ip` (the record does not keep the
/// create request's `NetworkingConfig`).
const IP_FILE: &str = "network-ip";

/// Checks the `--ip` of a create request as dockerd's `validateEndpointSettings` (user-defined
/// networks with a subnet of the user's only, inside it) and keeps it beside the record.
pub(super) fn check_requested_ip(
    networking: &crate::state::NetworkingConfig,
    find: impl Fn(&str) -> Option<crate::network::NetworkDef>,
) -> Result<Option<std::net::Ipv4Addr>, EngineError> {
    for (name, settings) in &networking.endpoints_config {
        let Some(settings) = settings else {
            continue;
        };
        let invalid = |reason: String| EngineError::InvalidParameter {
            reason: format!(
                "invalid config for network {name}: invalid endpoint settings:\n{reason}"
            ),
        };
        let Some(ip) = requested_ip(settings).map_err(invalid)? else {
            continue;
        };
        if matches!(name.as_str(), "bridge" | "default" | "host" | "none") {
            return Err(invalid(
                "user specified IP address is supported on user defined networks only".into(),
            ));
        }
        // An unknown network is dockerd's 404 at start.
        let Some(def) = find(name) else {
            return Ok(Some(ip));
        };
        match def.subnet {
            Some(pool) if def.user_subnet => {
                if !pool.contains(ip) {
                    return Err(invalid(format!(
                        "no configured subnet or ip-range contain the IP address {ip}"
                    )));
                }
            }
            _ => {
                return Err(invalid(
                    "user specified IP address is supported only when connecting to networks with user configured subnets".into(),
                ));
            }
        }
        return Ok(Some(ip));
    }
    Ok(None)
}

/// Keeps a container's `--ip` beside its record.
pub(super) fn save_requested_ip(
    dir: &std::path::Path,
    ip: Option<std::net::Ipv4Addr>,
) -> Result<(), EngineError> {
    let Some(ip) = ip else {
        return Ok(());
    };
    launch::write_atomic(&dir.join(IP_FILE), ip.to_string().as_bytes()).map_err(|source| {
        EngineError::Launch {
            id: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            source,
        }
    })
}

/// The `--ip` of the container in `dir`.
fn load_requested_ip(dir: &std::path::Path) -> Option<std::net::Ipv4Addr> {
    std::fs::read_to_string(dir.join(IP_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The file beside a container's record holding its `--mac-address` on its first network.
const MAC_FILE: &str = "network-mac";

/// The file beside a container's record listing the networks it is connected to besides
/// its `--network` (`docker network connect`, or a create with several networks).
const EXTRA_FILE: &str = "network-extra.json";

/// A network a container is connected to besides its `--network`, with its endpoint settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct Extra {
    /// The network's id (its name finds it if it was remade).
    id: String,
    /// The network's name.
    name: String,
    /// `--alias`.
    #[serde(default)]
    aliases: Vec<String>,
    /// `--ip`.
    #[serde(default)]
    ip: Option<std::net::Ipv4Addr>,
    /// `--mac-address` (API >= 1.44).
    #[serde(default)]
    mac: Option<String>,
}

fn launch_err(dir: &std::path::Path) -> impl FnOnce(launch::LaunchError) -> EngineError + '_ {
    move |source| EngineError::Launch {
        id: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        source,
    }
}

/// The networks a container joins after its first; none without the file, an error naming
/// it if it is unreadable or corrupt.
fn load_extras(dir: &std::path::Path) -> Result<Vec<Extra>, EngineError> {
    let path = dir.join(EXTRA_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(super::error::io_err(&path)(e)),
    };
    serde_json::from_slice(&bytes).map_err(|source| EngineError::CorruptFile { path, source })
}

/// The files keeping a container's networks, as they were before a change, to put back when
/// the change fails.
struct NetworkFiles(Vec<(PathBuf, Option<Vec<u8>>)>);

impl NetworkFiles {
    fn read(dir: &std::path::Path) -> NetworkFiles {
        NetworkFiles(
            [
                ALIASES_FILE,
                IP_FILE,
                MAC_FILE,
                DISCONNECTED_FILE,
                EXTRA_FILE,
            ]
            .iter()
            .map(|f| {
                let path = dir.join(f);
                let bytes = std::fs::read(&path).ok();
                (path, bytes)
            })
            .collect(),
        )
    }

    fn restore(&self, dir: &std::path::Path, id: &str) {
        for (path, bytes) in &self.0 {
            let done = match bytes {
                Some(bytes) => launch::write_atomic(path, bytes).map_err(|e| e.to_string()),
                None => match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                    _ => Ok(()),
                },
            };
            if let Err(error) = done {
                tracing::warn!(container = %id, dir = %dir.display(), file = %path.display(), %error, "cannot restore the network settings");
            }
        }
    }
}

/// Keeps the networks a container joins after its first beside its record.
pub(super) fn save_extras(dir: &std::path::Path, extras: &[Extra]) -> Result<(), EngineError> {
    let path = dir.join(EXTRA_FILE);
    if extras.is_empty() {
        let _ = std::fs::remove_file(&path);
        return Ok(());
    }
    let json = serde_json::to_vec(extras).unwrap_or_default();
    launch::write_atomic(&path, &json).map_err(launch_err(dir))
}

/// The `--mac-address` of a create request: the first network's `MacAddress` (API >= 1.44)
/// or the deprecated `Config.MacAddress`; dockerd's texts for a bad one or a network mode
/// without an interface of the container's own.
pub(super) fn requested_mac(
    config: &crate::state::ContainerConfig,
    host: &HostConfig,
    networking: &crate::state::NetworkingConfig,
) -> Result<Option<[u8; 6]>, EngineError> {
    let wanted = Mode::of(host)
        .ok()
        .and_then(|m| m.network_name().map(str::to_string));
    let from_endpoint = networking
        .endpoints_config
        .iter()
        .filter(|(name, _)| {
            wanted.as_deref() == Some(name.as_str())
                || (wanted.as_deref() == Some("bridge") && name.as_str() == "default")
        })
        .filter_map(|(name, e)| e.as_ref().map(|e| (name.clone(), e.mac_address.clone())))
        .find(|(_, m)| !m.is_empty());
    let endpoint_name = from_endpoint.as_ref().map(|(name, _)| name.clone());
    let Some(text) = from_endpoint
        .map(|(_, m)| m)
        .or_else(|| (!config.mac_address.is_empty()).then(|| config.mac_address.clone()))
    else {
        return Ok(None);
    };
    if matches!(
        Mode::of(host),
        Ok(Mode::Host | Mode::None | Mode::Container(_))
    ) {
        return Err(EngineError::InvalidParameter {
            reason: "conflicting options: mac-address and the network mode".into(),
        });
    }
    crate::network::parse_mac(&text)
        .map(Some)
        .map_err(|e| EngineError::InvalidParameter {
            reason: match &endpoint_name {
                Some(name) => format!("invalid config for network {name}: {e}"),
                None => e.to_string(),
            },
        })
}

/// Keeps a container's `--mac-address` beside its record.
pub(super) fn save_mac(dir: &std::path::Path, mac: Option<[u8; 6]>) -> Result<(), EngineError> {
    let path = dir.join(MAC_FILE);
    match mac {
        Some(mac) => launch::write_atomic(&path, crate::network::format_mac(&mac).as_bytes())
            .map_err(launch_err(dir)),
        None => {
            let _ = std::fs::remove_file(&path);
            Ok(())
        }
    }
}

fn load_mac(dir: &std::path::Path) -> Option<[u8; 6]> {
    std::fs::read_to_string(dir.join(MAC_FILE))
        .ok()
        .and_then(|s| crate::network::parse_mac(s.trim()).ok())
}

/// A create request's networks split in two: its `--network` (the entry of that name, or of
/// `default`, or the only one) and the others, which it joins after it (API >= 1.44 `docker run
/// --network a --network b`).
pub(super) fn split_networks(
    host: &HostConfig,
    networking: &crate::state::NetworkingConfig,
) -> (
    crate::state::NetworkingConfig,
    Vec<(String, crate::state::EndpointSettings)>,
) {
    let mode = Mode::of(host).ok();
    let wanted = mode.as_ref().and_then(Mode::network_name);
    let all = &networking.endpoints_config;
    let primary = if all.len() == 1 {
        all.keys().next().cloned()
    } else {
        all.keys()
            .find(|k| {
                Some(k.as_str()) == wanted
                    || (k.as_str() == "default" && mode == Some(Mode::Bridge))
            })
            .cloned()
    };
    let mut first = crate::state::NetworkingConfig::default();
    let mut rest = Vec::new();
    for (name, settings) in all {
        if Some(name) == primary.as_ref() {
            first
                .endpoints_config
                .insert(name.clone(), settings.clone());
        } else {
            rest.push((name.clone(), settings.clone().unwrap_or_default()));
        }
    }
    (first, rest)
}

/// Checks the networks of a create request after its first as `docker network connect` would;
/// [`save_extras`] keeps them beside the record (joined at each start, after the first).
pub(super) fn check_more_networks(
    host: &HostConfig,
    more: &[(String, crate::state::EndpointSettings)],
    find: impl Fn(&str) -> Option<crate::network::NetworkDef>,
) -> Result<Vec<Extra>, EngineError> {
    if more.is_empty() {
        return Ok(Vec::new());
    }
    if !matches!(Mode::of(host), Ok(Mode::Bridge | Mode::Named(_))) {
        let mode = Mode::of(host).ok();
        let mut names: Vec<&str> = more.iter().map(|(n, _)| n.as_str()).collect();
        names.extend(mode.as_ref().and_then(Mode::network_name));
        names.sort_unstable();
        return Err(EngineError::InvalidParameter {
            reason: format!(
                "Container cannot be connected to network endpoints: {}",
                names.join(", ")
            ),
        });
    }
    let mut extras = Vec::new();
    for (name, settings) in more {
        let aliases = settings.aliases.clone().unwrap_or_default();
        if !aliases.is_empty() && matches!(name.as_str(), "bridge" | "default") {
            return Err(EngineError::InvalidParameter {
                reason:
                    "network-scoped alias is supported only for containers in user defined networks"
                        .into(),
            });
        }
        let mut one = crate::state::NetworkingConfig::default();
        one.endpoints_config
            .insert(name.clone(), Some(settings.clone()));
        let ip = check_requested_ip(&one, &find)?;
        let mac = match settings.mac_address.as_str() {
            "" => None,
            text => Some(crate::network::parse_mac(text).map_err(|e| {
                EngineError::InvalidParameter {
                    reason: format!("invalid config for network {name}: {e}"),
                }
            })?),
        };
        // An unknown network is dockerd's 404 at start (see `check_create`): kept by name.
        let def = find(name);
        extras.push(Extra {
            id: def.as_ref().map(|d| d.id.clone()).unwrap_or_default(),
            name: def.map_or_else(|| name.clone(), |d| d.name),
            aliases,
            ip,
            mac: mac.map(|m| crate::network::format_mac(&m)),
        });
    }
    Ok(extras)
}

fn aliases_of(networking: &crate::state::NetworkingConfig) -> Vec<String> {
    networking
        .endpoints_config
        .values()
        .flatten()
        .flat_map(|e| e.aliases.clone().unwrap_or_default())
        .collect()
}

/// Keeps the aliases of a create request beside the container's record.
pub(super) fn save_aliases(
    dir: &std::path::Path,
    networking: &crate::state::NetworkingConfig,
) -> Result<(), EngineError> {
    let aliases = aliases_of(networking);
    if aliases.is_empty() {
        return Ok(());
    }
    let path = dir.join(ALIASES_FILE);
    let json = serde_json::to_vec(&aliases).unwrap_or_default();
    launch::write_atomic(&path, &json).map_err(|source| EngineError::Launch {
        id: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        source,
    })
}

/// The `--network-alias`es of the container in `dir`.
pub(super) fn load_aliases(dir: &std::path::Path) -> Vec<String> {
    std::fs::read(dir.join(ALIASES_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Checks at create what start would refuse: the mode, the port specs, aliases off user
/// networks.
pub(super) fn check_create(
    config: &crate::state::ContainerConfig,
    host: &HostConfig,
    networking: &crate::state::NetworkingConfig,
) -> Result<(), EngineError> {
    let user_network = matches!(Mode::of(host), Ok(Mode::Named(_)));
    let links = host.links.as_ref().is_some_and(|l| !l.is_empty());
    // dockerd's texts (`verifyNetworkingConfig` / `validateHostConfig`).
    match Mode::of(host) {
        Ok(Mode::Host) if links => {
            return Err(EngineError::InvalidParameter {
                reason: "conflicting options: host type networking can't be used with links. This would result in undefined behavior".into(),
            });
        }
        Ok(Mode::Container(_)) if links => {
            return Err(EngineError::InvalidParameter {
                reason: "conflicting options: container type network can't be used with links. This would result in undefined behavior".into(),
            });
        }
        Ok(Mode::None) if links => {
            return Err(EngineError::InvalidParameter {
                reason: "rmachine-engine does not support --link with --network none".into(),
            });
        }
        _ => {}
    }
    if !aliases_of(networking).is_empty() && !user_network {
        return Err(EngineError::InvalidParameter {
            reason:
                "network-scoped alias is supported only for containers in user defined networks"
                    .into(),
        });
    }
    // An unknown network is dockerd's 404 at start: at create the CLI would read a 404 as a
    // missing image and try to pull it.
    let Ok(mode) = Mode::of(host) else {
        return Ok(());
    };
    let requests = ports::requests(
        &host.port_bindings,
        host.publish_all_ports,
        &config.exposed_ports,
    )
    .map_err(publish_err)?;
    if !requests.is_empty() && matches!(mode, Mode::Container(_)) {
        return Err(EngineError::InvalidParameter {
            reason: "conflicting options: port publishing and the container type network mode"
                .into(),
        });
    }
    // `--network host` with `-p`: dockerd runs it and says, in the create warnings, that the
    // ports are discarded (see `host_config::create_warnings`).
    if !requests.is_empty() && mode == Mode::None {
        return Err(EngineError::InvalidParameter {
            reason: format!(
                "published ports are not supported with --network {}",
                host.network_mode
            ),
        });
    }
    Ok(())
}

/// One network of a container as inspect shows it: its settings, and its endpoint while the
/// container runs.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// The key of `NetworkSettings.Networks`.
    pub name: String,
    /// The network's id (`host`/`none` for those).
    pub network_id: String,
    /// The endpoint while the container runs.
    pub endpoint: Option<Endpoint>,
    /// `--network-alias` / `--alias`.
    pub aliases: Vec<String>,
    /// `--ip`.
    pub ip: Option<std::net::Ipv4Addr>,
    /// `--mac-address`.
    pub mac: Option<String>,
    /// `DNSNames` (API 1.44): what the embedded DNS server answers for it on this network
    /// (user-defined networks only).
    pub dns_names: Option<Vec<String>>,
}

/// dockerd's `buildEndpointDNSNames`: the name, the aliases, the short id and the hostname,
/// each once.
fn dns_names(record: &ContainerRecord, network: &str, aliases: &[String]) -> Option<Vec<String>> {
    if matches!(network, "bridge" | "host" | "none") {
        return None;
    }
    let mut names = vec![record.name.trim_start_matches('/').to_string()];
    names.extend(aliases.iter().cloned());
    names.push(record.short_id().to_string());
    names.push(record.config.hostname.clone());
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| !n.is_empty() && seen.insert(n.clone()));
    Some(names)
}

/// A network a container joins at start, with its endpoint settings.
struct Wanted {
    def: crate::network::NetworkDef,
    aliases: Vec<String>,
    ip: Option<std::net::Ipv4Addr>,
    mac: Option<[u8; 6]>,
}

impl Engine {
    /// The first bridge endpoint of a running container (its default route and published
    /// ports).
    pub fn endpoint(&self, id: &str) -> Option<Endpoint> {
        self.endpoints_of(id).into_iter().next()
    }

    /// Every bridge endpoint of a running container, the first first.
    pub fn endpoints_of(&self, id: &str) -> Vec<Endpoint> {
        self.inner
            .network
            .endpoints
            .lock()
            .ok()
            .and_then(|e| e.get(id).cloned())
            .unwrap_or_default()
    }

    /// The networks of `record`'s container as `NetworkSettings.Networks` lists them: its
    /// `--network` unless disconnected, then those connected later.
    pub fn attachments(&self, record: &ContainerRecord) -> Vec<Attachment> {
        let dir = self.inner.state.dir(&record.id);
        let endpoints = self.endpoints_of(&record.id);
        let live = |id: &str| endpoints.iter().find(|e| e.network_id == id).cloned();
        let mut out = Vec::new();
        let Ok(mode) = Mode::of(&record.host_config) else {
            return out;
        };
        match &mode {
            Mode::None | Mode::Host => out.push(Attachment {
                name: mode.network_name().unwrap_or_default().to_string(),
                network_id: mode.network_name().unwrap_or_default().to_string(),
                endpoint: None,
                aliases: Vec::new(),
                ip: None,
                mac: None,
                dns_names: None,
            }),
            Mode::Container(_) => {}
            Mode::Bridge | Mode::Named(_) => {
                if !dir.join(DISCONNECTED_FILE).exists() {
                    let name = mode.network_name().unwrap_or("bridge").to_string();
                    let network_id = self.find_network(&name).map(|d| d.id).unwrap_or_default();
                    let aliases = load_aliases(&dir);
                    out.push(Attachment {
                        endpoint: live(&network_id),
                        dns_names: dns_names(record, &name, &aliases),
                        name,
                        network_id,
                        aliases,
                        ip: load_requested_ip(&dir),
                        mac: load_mac(&dir).map(|m| crate::network::format_mac(&m)),
                    });
                }
                let extras = load_extras(&dir).unwrap_or_else(|err| {
                    tracing::warn!(container = %record.id, error = %err, "cannot list the networks connected later");
                    Vec::new()
                });
                for extra in extras {
                    out.push(Attachment {
                        endpoint: live(&extra.id),
                        dns_names: dns_names(record, &extra.name, &extra.aliases),
                        name: extra.name,
                        network_id: extra.id,
                        aliases: extra.aliases,
                        ip: extra.ip,
                        mac: extra.mac,
                    });
                }
            }
        }
        out
    }

    /// Removes the bridges and namespaces a killed engine left (its containers were stopped by
    /// the reconcile of [`Engine::open`]); the first bridged start remakes them.
    pub async fn reconcile_network(&self) {
        self.inner.network.net.reconcile().await;
    }

    /// Removes a previous engine's NAT table; NAT changes wait for it (the daemon runs it
    /// beside serving, not before). It waits for the host's modules itself: `nft` would make
    /// the kernel load nf_tables while the guest's init is loading it.
    pub async fn remove_stale_nat(&self) {
        self.host_ready().await;
        self.inner.network.net.remove_stale_nat().await;
    }

    /// The networks `record`'s container joins at start, first its `--network`.
    fn wanted_networks(&self, record: &ContainerRecord) -> Result<Vec<Wanted>, EngineError> {
        let dir = self.inner.state.dir(&record.id);
        let mut wanted = Vec::new();
        if !dir.join(DISCONNECTED_FILE).exists() {
            let mode = Mode::of(&record.host_config)?;
            let name = mode.network_name().unwrap_or("bridge");
            let def = self
                .find_network(name)
                .ok_or_else(|| EngineError::NoSuchNetwork {
                    name: name.to_string(),
                })?;
            wanted.push(Wanted {
                def,
                aliases: load_aliases(&dir),
                ip: load_requested_ip(&dir),
                mac: load_mac(&dir),
            });
        }
        for extra in load_extras(&dir)? {
            let def = (!extra.id.is_empty())
                .then(|| self.find_network(&extra.id))
                .flatten()
                .or_else(|| self.find_network(&extra.name))
                .ok_or_else(|| EngineError::NoSuchNetwork {
                    name: extra.name.clone(),
                })?;
            wanted.push(Wanted {
                def,
                aliases: extra.aliases,
                ip: extra.ip,
                mac: extra
                    .mac
                    .as_deref()
                    .and_then(|m| crate::network::parse_mac(m).ok()),
            });
        }
        Ok(wanted)
    }

    /// Sets up the network of `record`'s container before its process starts.
    pub(super) async fn network_up(&self, record: &ContainerRecord) -> Result<Setup, EngineError> {
        match Mode::of(&record.host_config)? {
            Mode::None => Ok(Setup::Loopback),
            Mode::Host => Ok(Setup::Host),
            Mode::Container(reference) => {
                let other = self.container(&reference)?;
                let other_record = other.record();
                if other_record.state.status != Status::Running || other_record.state.pid <= 0 {
                    return Err(EngineError::Conflict {
                        reason: format!(
                            "cannot join network of a non running container: {}",
                            other.id
                        ),
                    });
                }
                Ok(Setup::Joined {
                    path: PathBuf::from(format!("/proc/{}/ns/net", other_record.state.pid)),
                    hosts: other.dir.join("hosts"),
                })
            }
            Mode::Bridge | Mode::Named(_) => {
                let wanted = self.wanted_networks(record)?;
                let Some((first, rest)) = wanted.split_first() else {
                    return Ok(Setup::Loopback);
                };
                let host = &record.host_config;
                let requests = ports::requests(
                    &host.port_bindings,
                    host.publish_all_ports,
                    &record.config.exposed_ports,
                )
                .map_err(publish_err)?;
                let name = record.name.trim_start_matches('/');
                let net = &self.inner.network.net;
                let endpoint = net
                    .connect(Join {
                        def: &first.def,
                        id: &record.id,
                        name,
                        requests: &requests,
                        ip: first.ip,
                        mac: first.mac,
                    })
                    .await
                    .map_err(publish_err)?;
                let netns = endpoint.netns.clone();
                self.add_endpoint(&record.id, endpoint);
                for (i, more) in rest.iter().enumerate() {
                    let join = Join {
                        def: &more.def,
                        id: &record.id,
                        name,
                        requests: &[],
                        ip: more.ip,
                        mac: more.mac,
                    };
                    let attached = net
                        .attach(join, &netns, &format!("eth{}", i + 1), false)
                        .await;
                    match attached {
                        Ok(endpoint) => self.add_endpoint(&record.id, endpoint),
                        Err(err) => {
                            self.network_down(&record.id).await;
                            return Err(publish_err(err));
                        }
                    }
                }
                let links = if first.def.name == "bridge" {
                    match self.link_lines(record) {
                        Ok(lines) => lines,
                        Err(err) => {
                            self.network_down(&record.id).await;
                            return Err(err);
                        }
                    }
                } else {
                    String::new()
                };
                let endpoints = self.endpoints_of(&record.id);
                let mut resolv = None;
                for (want, endpoint) in wanted.iter().zip(&endpoints) {
                    if want.def.name == "bridge" {
                        continue;
                    }
                    match self.embedded_dns(record, &want.def, endpoint, &want.aliases) {
                        Ok(Some(own)) => resolv = Some(own),
                        Ok(None) => {}
                        Err(err) => {
                            self.network_down(&record.id).await;
                            return Err(err);
                        }
                    }
                }
                Ok(Setup::Bridge(endpoints, links, resolv))
            }
        }
    }

    /// Records `endpoint` of running container `id` and tells the network's listeners.
    fn add_endpoint(&self, id: &str, endpoint: Endpoint) {
        self.emit_network(
            "connect",
            &endpoint.network_id,
            &endpoint.network,
            &[("container", id.to_string())],
        );
        if let Ok(mut endpoints) = self.inner.network.endpoints.lock() {
            endpoints.entry(id.to_string()).or_default().push(endpoint);
        }
    }

    /// Names container `record` on network `def` (its name, short id, `aliases` and `--link`
    /// aliases) to the embedded DNS server, and starts that server in its namespace if it has
    /// none yet; returns the container's `resolv.conf` when the server was started.
    fn embedded_dns(
        &self,
        record: &ContainerRecord,
        def: &crate::network::NetworkDef,
        endpoint: &Endpoint,
        aliases: &[String],
    ) -> Result<Option<String>, EngineError> {
        let mut names: Vec<String> = vec![
            record.name.trim_start_matches('/').to_string(),
            record.short_id().to_string(),
        ];
        names.extend(aliases.iter().cloned());
        let links = record
            .host_config
            .links
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|link| {
                let (target, alias) = link.split_once(':').unwrap_or((link, link));
                let alias = alias.rsplit('/').next().unwrap_or(alias);
                (
                    alias.to_ascii_lowercase(),
                    target.trim_start_matches('/').to_ascii_lowercase(),
                )
            })
            .collect();
        let entry = DnsNames {
            network_id: def.id.clone(),
            network: def.name.to_ascii_lowercase(),
            ip: endpoint.ip,
            names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
            links,
        };
        let table = self.inner.network.names.clone();
        if let Ok(mut t) = table.lock() {
            let mine = t.entry(record.id.clone()).or_default();
            mine.retain(|e| e.network_id != def.id);
            mine.push(entry);
        }
        if self.inner.network.net.serves_dns(&record.id) {
            return Ok(None);
        }
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let (resolv, upstream) =
            match super::options::resolv_conf_internal(&record.host_config, &host_resolv) {
                Ok(found) => found,
                Err(err) => {
                    self.forget_names(&record.id, &def.id);
                    return Err(err);
                }
            };
        let id = record.id.clone();
        let lookup: crate::network::dns::Lookup = std::sync::Arc::new(move |name: &str| {
            table.lock().ok().and_then(|t| resolve(&t, &id, name))
        });
        // Forwarding follows the first network the server starts for: an `--internal` one
        // answers SERVFAIL for outside names, as dockerd's resolver in such a sandbox.
        let tasks =
            match crate::network::dns::serve(&endpoint.netns, lookup, upstream, !def.internal) {
                Ok(tasks) => tasks,
                Err(err) => {
                    self.forget_names(&record.id, &def.id);
                    return Err(publish_err(err));
                }
            };
        self.inner.network.net.track(&record.id, tasks);
        Ok(Some(resolv))
    }

    /// Takes the names of container `id` on network `network_id` out of the embedded DNS.
    fn forget_names(&self, id: &str, network_id: &str) {
        if let Ok(mut names) = self.inner.network.names.lock() {
            if let Some(mine) = names.get_mut(id) {
                mine.retain(|e| e.network_id != network_id);
            }
        }
    }

    /// `--link NAME:ALIAS` lines of `/etc/hosts` on the default bridge: `IP\tALIAS NAME`.
    fn link_lines(&self, record: &ContainerRecord) -> Result<String, EngineError> {
        let mut lines = String::new();
        let me = record.name.trim_start_matches('/');
        for link in record.host_config.links.clone().unwrap_or_default() {
            let (target, alias) = link.split_once(':').unwrap_or((&link, &link));
            let target = target.trim_start_matches('/');
            let alias = alias.rsplit('/').next().unwrap_or(alias);
            let other = self
                .container(target)
                .map_err(|_| EngineError::InvalidParameter {
                    reason: format!("could not get container for {target}"),
                })?;
            let endpoint = self
                .endpoint(&other.id)
                .ok_or_else(|| EngineError::Conflict {
                    reason: format!(
                        "Cannot link to a non running container: /{target} AS /{me}/{alias}"
                    ),
                })?;
            if alias == target {
                lines.push_str(&format!("{}\t{target}\n", endpoint.ip));
            } else {
                lines.push_str(&format!("{}\t{alias} {target}\n", endpoint.ip));
            }
        }
        Ok(lines)
    }

    /// `docker network connect NETWORK CONTAINER`: a stopped container joins the network at
    /// its next start (connecting it again replaces its settings, as dockerd); a running one
    /// gets an endpoint now (a veth into its namespace, its names in the embedded DNS server,
    /// a line in its `/etc/hosts`). `--alias`, `--ip` and `--mac-address` are kept for every
    /// later start. On any error nothing of it is left.
    pub async fn connect_network(
        &self,
        network: &str,
        container: &str,
        settings: &crate::state::EndpointSettings,
    ) -> Result<(), EngineError> {
        let c = self.container(container)?;
        // As start, stop and rm: none of them runs meanwhile.
        let _op = c.op.lock().await;
        if c.lifecycle().borrow().removed {
            return Err(EngineError::NoSuchContainer {
                reference: container.to_string(),
            });
        }
        // The monitor's teardown at exit takes it too: the record read under it says whether
        // the container still runs until this connect is done.
        let _net = c.net.lock().await;
        let record = c.record();
        let mode = Mode::of(&record.host_config)?;
        let def = self.connectable(network, &mode)?;
        let invalid = |reason: &str| EngineError::InvalidParameter {
            reason: reason.to_string(),
        };
        let rest = crate::state::EndpointSettings {
            mac_address: String::new(),
            ..without_served(settings, None)
        };
        if !rest.is_empty() {
            return Err(invalid(
                "rmachine-engine does not support endpoint settings other than --alias, --ip and --mac-address (--link, --ip6, --link-local-ip, --driver-opt, --gw-priority) on network connect yet",
            ));
        }
        let aliases = settings.aliases.clone().unwrap_or_default();
        if !aliases.is_empty() && def.name == "bridge" {
            return Err(invalid(
                "network-scoped alias is supported only for containers in user defined networks",
            ));
        }
        let mut config = crate::state::NetworkingConfig::default();
        config
            .endpoints_config
            .insert(def.name.clone(), Some(settings.clone()));
        let ip = check_requested_ip(&config, |n| self.find_network(n))?;
        let mac = match settings.mac_address.as_str() {
            "" => None,
            text => Some(crate::network::parse_mac(text).map_err(|e| invalid(&e.to_string()))?),
        };
        let name = record.name.trim_start_matches('/');
        let running = record.state.status == Status::Running && record.state.pid > 0;
        let already = self
            .attachments(&record)
            .iter()
            .any(|a| a.network_id == def.id);
        // A stopped container's settings are only replaced (dockerd's updateNetworkConfig).
        if already && running {
            return Err(EngineError::Forbidden {
                reason: format!(
                    "endpoint with name {name} already exists in network {}",
                    def.name
                ),
            });
        }
        let own = mode
            .network_name()
            .is_some_and(|n| n == def.name || n == def.id);
        let before = NetworkFiles::read(&c.dir);
        let saved = if own {
            let _ = std::fs::remove_file(c.dir.join(ALIASES_FILE));
            let _ = std::fs::remove_file(c.dir.join(IP_FILE));
            save_aliases(&c.dir, &config)
                .and_then(|()| save_requested_ip(&c.dir, ip))
                .and_then(|()| save_mac(&c.dir, mac))
                .and_then(|()| {
                    let marker = c.dir.join(DISCONNECTED_FILE);
                    match std::fs::remove_file(&marker) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            Err(super::error::io_err(&marker)(e))
                        }
                        _ => Ok(()),
                    }
                })
        } else {
            load_extras(&c.dir).and_then(|mut extras| {
                extras.retain(|e| e.id != def.id);
                extras.push(Extra {
                    id: def.id.clone(),
                    name: def.name.clone(),
                    aliases: aliases.clone(),
                    ip,
                    mac: mac.map(|m| crate::network::format_mac(&m)),
                });
                save_extras(&c.dir, &extras)
            })
        };
        // Saved before the live endpoint is made: what fails after it leaves nothing.
        let connected = match saved {
            Ok(()) if running => {
                self.connect_running(&c, &record, &def, &aliases, ip, mac)
                    .await
            }
            other => other,
        };
        if let Err(err) = connected {
            before.restore(&c.dir, &record.id);
            return Err(err);
        }
        Ok(())
    }

    /// The network `reference` if container mode `mode` may join it; dockerd's refusals for
    /// `host`, `none` and `container:` otherwise.
    fn connectable(
        &self,
        reference: &str,
        mode: &Mode,
    ) -> Result<crate::network::NetworkDef, EngineError> {
        let forbidden = |reason: &str| EngineError::Forbidden {
            reason: reason.to_string(),
        };
        if reference == "host" || *mode == Mode::Host {
            return Err(forbidden(
                "container cannot be disconnected from host network or connected to host network",
            ));
        }
        if reference == "none" || *mode == Mode::None {
            return Err(forbidden(
                "container cannot be connected to multiple networks with one of the networks in private (none) mode",
            ));
        }
        if matches!(mode, Mode::Container(_)) {
            return Err(forbidden(
                "container sharing network namespace with another container or host cannot be connected to any other network",
            ));
        }
        self.find_network(reference)
            .ok_or_else(|| EngineError::NoSuchNetwork {
                name: reference.to_string(),
            })
    }

    /// The namespace of running container `record`: that of its endpoints, or (started
    /// without a network) the runtime's, bind-mounted once on the container's namespace file
    /// so that later connects do not look its PID up again.
    fn running_namespace(
        &self,
        record: &ContainerRecord,
        current: &[Endpoint],
    ) -> Result<PathBuf, EngineError> {
        if let Some(e) = current.first() {
            return Ok(e.netns.clone());
        }
        let path = self.inner.network.net.netns_path(&record.id);
        if path.exists() {
            return Ok(path);
        }
        crate::network::netns::adopt(record.state.pid, &path).map_err(publish_err)?;
        Ok(path)
    }

    /// The endpoint of `docker network connect` for running container `c`; on any error
    /// nothing of it is left.
    async fn connect_running(
        &self,
        c: &crate::container::Container,
        record: &ContainerRecord,
        def: &crate::network::NetworkDef,
        aliases: &[String],
        ip: Option<std::net::Ipv4Addr>,
        mac: Option<[u8; 6]>,
    ) -> Result<(), EngineError> {
        let net = &self.inner.network.net;
        let current = self.endpoints_of(&record.id);
        let ns = self.running_namespace(record, &current)?;
        let ifname = (0..)
            .map(|i| format!("eth{i}"))
            .find(|n| current.iter().all(|e| &e.ifname != n))
            .unwrap_or_else(|| "eth0".into());
        // The first network of a running container takes the default route and the ports,
        // as at start.
        let requests = if current.is_empty() {
            let host = &record.host_config;
            ports::requests(
                &host.port_bindings,
                host.publish_all_ports,
                &record.config.exposed_ports,
            )
            .map_err(publish_err)?
        } else {
            Vec::new()
        };
        let join = Join {
            def,
            id: &record.id,
            name: record.name.trim_start_matches('/'),
            requests: &requests,
            ip,
            mac,
        };
        let endpoint = net
            .attach(join, &ns, &ifname, current.is_empty())
            .await
            .map_err(publish_err)?;
        if def.name != "bridge" {
            match self.embedded_dns(record, def, &endpoint, aliases) {
                Ok(Some(resolv)) => {
                    // The container ran without the embedded server (default bridge or no
                    // network): it now asks it, as dockerd rewrites resolv.conf on connect.
                    let path = c.dir.join("resolv.conf");
                    if let Err(err) = std::fs::write(&path, resolv) {
                        tracing::warn!(container = %record.id, error = %err, "cannot update resolv.conf");
                    }
                }
                Ok(None) => {}
                Err(err) => {
                    net.detach(&record.id, &endpoint).await;
                    return Err(err);
                }
            }
        }
        // Last: nothing after it fails.
        let hosts = c.dir.join("hosts");
        if let Ok(mut text) = std::fs::read_to_string(&hosts) {
            text.push_str(&hosts_line(
                &super::start::effective_hostname(record),
                &endpoint,
            ));
            // In place: the container's /etc/hosts is a bind mount of this very file.
            if let Err(err) = std::fs::write(&hosts, text) {
                tracing::warn!(container = %record.id, error = %err, "cannot update /etc/hosts");
            }
        }
        self.add_endpoint(&record.id, endpoint);
        Ok(())
    }

    /// Takes `endpoint` (on network `def`) of running container `c` away: its veth, address,
    /// DNS names, `/etc/hosts` line and ports; tells the network's listeners.
    async fn remove_endpoint(
        &self,
        c: &crate::container::Container,
        record: &ContainerRecord,
        def: &crate::network::NetworkDef,
        endpoint: &Endpoint,
    ) {
        if let Ok(mut endpoints) = self.inner.network.endpoints.lock() {
            if let Some(list) = endpoints.get_mut(&record.id) {
                list.retain(|e| e.endpoint_id != endpoint.endpoint_id);
            }
        }
        self.forget_names(&record.id, &def.id);
        self.inner.network.net.detach(&record.id, endpoint).await;
        let hosts = c.dir.join("hosts");
        if let Ok(text) = std::fs::read_to_string(&hosts) {
            let line = hosts_line(&super::start::effective_hostname(record), endpoint);
            let kept: String = text.split_inclusive('\n').filter(|l| *l != line).collect();
            if let Err(err) = std::fs::write(&hosts, kept) {
                tracing::warn!(container = %record.id, error = %err, "cannot update /etc/hosts");
            }
        }
    }

    /// Forgets the network `reference` (its name or id, or `def`'s) in the saved settings of
    /// container `c`, so that its next start does not join it; false if it had no such
    /// network.
    fn forget_network(
        &self,
        c: &crate::container::Container,
        mode: &Mode,
        reference: &str,
        def: Option<&crate::network::NetworkDef>,
    ) -> Result<bool, EngineError> {
        let names = |name: &str, id: &str| {
            name == reference
                || (!id.is_empty() && id == reference)
                || def.is_some_and(|d| d.id == id || d.name == name)
        };
        let mut found = false;
        let own = mode.network_name().is_some_and(|n| {
            let id = self.find_network(n).map(|d| d.id).unwrap_or_default();
            names(n, &id)
        }) && !c.dir.join(DISCONNECTED_FILE).exists();
        if own {
            for file in [ALIASES_FILE, IP_FILE, MAC_FILE] {
                let _ = std::fs::remove_file(c.dir.join(file));
            }
            let marker = c.dir.join(DISCONNECTED_FILE);
            std::fs::write(&marker, b"").map_err(super::error::io_err(&marker))?;
            found = true;
        }
        let mut extras = load_extras(&c.dir)?;
        let count = extras.len();
        extras.retain(|e| !names(&e.name, &e.id));
        if extras.len() != count {
            save_extras(&c.dir, &extras)?;
            found = true;
        }
        Ok(found)
    }

    /// `docker network disconnect [-f] NETWORK CONTAINER`, as dockerd's
    /// `DisconnectFromNetwork`: a running container loses its endpoint now (veth, address, DNS
    /// names, `/etc/hosts` line, and the published ports if it held them: the next endpoint
    /// takes them); a stopped one, or with `force` one whose network no longer exists, only
    /// forgets the network by that name, so that its next start does not join it.
    pub async fn disconnect_network(
        &self,
        network: &str,
        container: &str,
        force: bool,
    ) -> Result<(), EngineError> {
        let c = self.container(container)?;
        let _op = c.op.lock().await;
        if c.lifecycle().borrow().removed {
            return Err(EngineError::NoSuchContainer {
                reference: container.to_string(),
            });
        }
        let _net = c.net.lock().await;
        let record = c.record();
        let mode = Mode::of(&record.host_config)?;
        if network == "host" || mode == Mode::Host {
            return Err(EngineError::Forbidden {
                reason: "container cannot be disconnected from host network or connected to host network".into(),
            });
        }
        let def = self.find_network(network);
        let running = record.state.status == Status::Running && record.state.pid > 0;
        if !running || (def.is_none() && force) {
            if !self.forget_network(&c, &mode, network, def.as_ref())? {
                return Err(EngineError::Forbidden {
                    reason: format!(
                        "container {} is not connected to the network {network}",
                        record.id
                    ),
                });
            }
            if let Some(def) = &def {
                if let Some(endpoint) = self
                    .endpoints_of(&record.id)
                    .iter()
                    .find(|e| e.network_id == def.id)
                {
                    self.remove_endpoint(&c, &record, def, endpoint).await;
                }
                self.emit_network(
                    "disconnect",
                    &def.id,
                    &def.name,
                    &[("container", record.id.clone())],
                );
            }
            return Ok(());
        }
        let def = def.ok_or_else(|| EngineError::NoSuchNetwork {
            name: network.to_string(),
        })?;
        let attached = self
            .attachments(&record)
            .iter()
            .any(|a| a.network_id == def.id);
        if !attached {
            return Err(EngineError::Forbidden {
                reason: format!(
                    "container {} is not connected to network {}",
                    record.id, def.name
                ),
            });
        }
        // Saved first: a failure leaves the container as it was.
        self.forget_network(&c, &mode, &def.id, Some(&def))?;
        let live = self.endpoints_of(&record.id);
        // The endpoint with the default route and the ports leaves: the next one takes them.
        let mut promote = false;
        if let Some(endpoint) = live.iter().find(|e| e.network_id == def.id) {
            promote = live
                .first()
                .is_some_and(|f| f.endpoint_id == endpoint.endpoint_id);
            self.remove_endpoint(&c, &record, &def, endpoint).await;
        }
        self.emit_network(
            "disconnect",
            &def.id,
            &def.name,
            &[("container", record.id.clone())],
        );
        if promote {
            self.promote_next(&record).await;
        }
        Ok(())
    }

    /// Gives the default route and the published ports to the first endpoint left of
    /// `record`'s container after the one holding them left. A failure is logged only: the
    /// disconnect is done (dockerd logs its gateway update failures too).
    async fn promote_next(&self, record: &ContainerRecord) {
        let Some(next) = self.endpoints_of(&record.id).first().cloned() else {
            return;
        };
        let internal = self
            .find_network(&next.network_id)
            .is_some_and(|d| d.internal);
        let host = &record.host_config;
        // An `--internal` network publishes nothing (dockerd).
        let requests = if internal {
            Ok(Vec::new())
        } else {
            ports::requests(
                &host.port_bindings,
                host.publish_all_ports,
                &record.config.exposed_ports,
            )
        };
        let name = record.name.trim_start_matches('/');
        let promoted = match requests {
            Ok(requests) => {
                self.inner
                    .network
                    .net
                    .promote(&record.id, name, &next, &requests)
                    .await
            }
            Err(err) => Err(err),
        };
        match promoted {
            Ok(promoted) => {
                if let Ok(mut endpoints) = self.inner.network.endpoints.lock() {
                    if let Some(first) = endpoints.get_mut(&record.id).and_then(|l| l.first_mut()) {
                        *first = promoted;
                    }
                }
            }
            Err(err) => {
                tracing::warn!(container = %record.id, network = %next.network, error = %err, "cannot move the default route and ports to the next network");
            }
        }
    }

    /// Gives back what [`Engine::network_up`] took for container `id` (nothing if none).
    pub(super) async fn network_down(&self, id: &str) {
        let endpoints = self
            .inner
            .network
            .endpoints
            .lock()
            .ok()
            .and_then(|mut e| e.remove(id))
            .unwrap_or_default();
        if let Ok(mut names) = self.inner.network.names.lock() {
            names.remove(id);
        }
        // Also when no endpoint is left: a container disconnected while running keeps its
        // namespace file and maybe its DNS server.
        self.inner.network.net.disconnect(id, &endpoints).await;
        for endpoint in endpoints {
            self.emit_network(
                "disconnect",
                &endpoint.network_id,
                &endpoint.network,
                &[("container", id.to_string())],
            );
        }
    }
}

/// The engine's networking and the endpoints of its running containers.
#[derive(Debug)]
pub(super) struct NetworkState {
    pub(super) net: crate::network::Networking,
    /// The endpoints of each running container, the first first.
    pub(super) endpoints: std::sync::Mutex<std::collections::HashMap<String, Vec<Endpoint>>>,
    /// What the embedded DNS server answers, by running container id (user-defined networks).
    pub(super) names: std::sync::Arc<std::sync::Mutex<NameTable>>,
}

/// The embedded DNS server's names: by container id, one entry per user-defined network.
pub(super) type NameTable = std::collections::HashMap<String, Vec<DnsNames>>;

/// What a running container on one user-defined network is known by (all lowercase).
#[derive(Debug)]
pub(super) struct DnsNames {
    network_id: String,
    network: String,
    ip: std::net::Ipv4Addr,
    /// Its name, short id and `--network-alias`es on this network.
    names: Vec<String>,
    /// Its `--link`s as `(alias, target name)`: names only this container resolves.
    links: Vec<(String, String)>,
}

/// What container `asking` gets for `name` from the embedded DNS server: the addresses of the
/// containers on its networks that `name` names (directly, through one of its links, or as
/// `NAME.NETWORK`), sorted; `None` if there are none.
pub(super) fn resolve(
    table: &NameTable,
    asking: &str,
    name: &str,
) -> Option<Vec<std::net::Ipv4Addr>> {
    let mine = table.get(asking)?;
    let find = |me: &DnsNames, wanted: &str| -> Vec<std::net::Ipv4Addr> {
        let wanted = me
            .links
            .iter()
            .find(|(alias, _)| alias == wanted)
            .map_or(wanted, |(_, target)| target.as_str());
        table
            .values()
            .flatten()
            .filter(|e| e.network_id == me.network_id && e.names.iter().any(|n| n == wanted))
            .map(|e| e.ip)
            .collect()
    };
    let mut ips: Vec<std::net::Ipv4Addr> = mine.iter().flat_map(|me| find(me, name)).collect();
    if ips.is_empty() {
        if let Some((prefix, network)) = name.rsplit_once('.') {
            ips = mine
                .iter()
                .filter(|me| me.network == network)
                .flat_map(|me| find(me, prefix))
                .collect();
        }
    }
    ips.sort();
    ips.dedup();
    (!ips.is_empty()).then_some(ips)
}

impl NetworkState {
    pub(super) fn new(data_root: &std::path::Path) -> NetworkState {
        crate::network::reconcile_files(data_root);
        NetworkState {
            net: crate::network::Networking::new(data_root),
            endpoints: std::sync::Mutex::default(),
            names: std::sync::Arc::default(),
        }
    }
}

/// What `docker network create` asks for.
#[derive(Debug, Clone, Default)]
pub struct NetworkCreate {
    /// Its name.
    pub name: String,
    /// `--driver`: only `bridge` (or empty).
    pub driver: String,
    /// `--subnet`.
    pub subnet: Option<String>,
    /// `--gateway`.
    pub gateway: Option<String>,
    /// `--internal`.
    pub internal: bool,
    /// `--attachable`.
    pub attachable: bool,
    /// `--label`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// `--opt`.
    pub options: std::collections::BTreeMap<String, String>,
}

/// The predefined networks besides `bridge`, as dockerd lists them.
pub const PREDEFINED: &[&str] = &["host", "none"];

impl Engine {
    /// `docker network create`.
    pub async fn create_network(
        &self,
        request: NetworkCreate,
    ) -> Result<crate::network::NetworkDef, EngineError> {
        let invalid = |reason: String| EngineError::InvalidParameter { reason };
        if !matches!(request.driver.as_str(), "" | "bridge") {
            return Err(EngineError::InvalidParameter {
                reason: format!(
                    "rmachine-engine does not support network driver {} yet",
                    request.driver
                ),
            });
        }
        if let Some(key) = request.options.keys().next() {
            return Err(invalid(format!(
                "rmachine-engine does not support network option {key} (--opt) yet"
            )));
        }
        if PREDEFINED.contains(&request.name.as_str()) || request.name == "bridge" {
            return Err(EngineError::Forbidden {
                reason: format!(
                    "{} is a pre-defined network and cannot be created",
                    request.name
                ),
            });
        }
        if self
            .inner
            .network
            .net
            .find(&request.name)
            .is_some_and(|d| d.name == request.name)
        {
            return Err(EngineError::Conflict {
                reason: format!("network with name {} already exists", request.name),
            });
        }
        let subnet = request
            .subnet
            .as_deref()
            .map(str::parse::<crate::network::ipam::Pool>)
            .transpose()
            .map_err(invalid)?;
        let gateway = request
            .gateway
            .as_deref()
            .map(|g| {
                g.parse::<std::net::Ipv4Addr>()
                    .map_err(|_| invalid(format!("invalid gateway address {g}")))
            })
            .transpose()?;
        if gateway.is_some() && subnet.is_none() {
            return Err(invalid(
                "rmachine-engine needs --subnet with --gateway".to_string(),
            ));
        }
        let def = self
            .inner
            .network
            .net
            .create(crate::network::NetworkDef {
                id: String::new(),
                name: request.name,
                created: chrono::Utc::now(),
                subnet,
                // Set by the create from whether `subnet` is given.
                user_subnet: false,
                gateway,
                internal: request.internal,
                attachable: request.attachable,
                labels: request.labels,
                options: request.options,
            })
            .await
            .map_err(publish_err)?;
        self.emit_network("create", &def.id, &def.name, &[]);
        Ok(def)
    }

    /// Every network: `bridge`, `host`, `none`, then the user-defined ones.
    pub async fn list_networks(&self) -> Vec<crate::network::NetworkDef> {
        self.inner.network.net.list().await
    }

    /// A network by name, id or id prefix; the predefined `host` and `none` are `None` here
    /// (the API describes them).
    pub fn find_network(&self, reference: &str) -> Option<crate::network::NetworkDef> {
        self.inner.network.net.find(reference)
    }

    /// The running containers on network `id`, with their endpoints.
    pub fn network_members(&self, id: &str) -> Vec<(String, String, Endpoint)> {
        let endpoints = self
            .inner
            .network
            .endpoints
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        let mut out: Vec<(String, String, Endpoint)> = endpoints
            .into_iter()
            .flat_map(|(cid, list)| list.into_iter().map(move |e| (cid.clone(), e)))
            .filter(|(_, e)| e.network_id == id)
            .map(|(cid, e)| {
                let name = self
                    .container(&cid)
                    .map(|c| c.record().name.trim_start_matches('/').to_string())
                    .unwrap_or_default();
                (cid, name, e)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// `docker network rm`: refused for the predefined networks and while running containers
    /// are on it.
    pub async fn remove_network(&self, reference: &str) -> Result<(), EngineError> {
        if PREDEFINED.contains(&reference) || reference == "bridge" {
            return Err(EngineError::Forbidden {
                reason: format!("{reference} is a pre-defined network and cannot be removed"),
            });
        }
        let def = self
            .find_network(reference)
            .ok_or_else(|| EngineError::NoSuchNetwork {
                name: reference.to_string(),
            })?;
        if def.name == "bridge" {
            return Err(EngineError::Forbidden {
                reason: "bridge is a pre-defined network and cannot be removed".into(),
            });
        }
        // As dockerd: only running containers hold endpoints; a stopped one naming the network
        // gets `network NAME not found` at its next start.
        if !self.network_members(&def.id).is_empty() {
            return Err(EngineError::Forbidden {
                reason: format!(
                    "error while removing network: network {} id {} has active endpoints",
                    def.name, def.id
                ),
            });
        }
        self.inner
            .network
            .net
            .remove(&def)
            .await
            .map_err(publish_err)?;
        self.emit_network("destroy", &def.id, &def.name, &[]);
        Ok(())
    }

    /// `docker network prune`: removes the user-defined networks no container uses; returns
    /// their names.
    pub async fn prune_networks(&self, filters: &super::PruneFilters) -> Vec<String> {
        let mut removed = Vec::new();
        for def in self.list_networks().await {
            if def.name == "bridge" || !filters.matches_object(def.created, &def.labels) {
                continue;
            }
            if self.remove_network(&def.id).await.is_ok() {
                removed.push(def.name);
            }
        }
        removed
    }

    fn emit_network(&self, action: &str, id: &str, name: &str, extra: &[(&str, String)]) {
        let mut attributes = std::collections::BTreeMap::new();
        attributes.insert("name".to_string(), name.to_string());
        attributes.insert("type".to_string(), "bridge".to_string());
        for (k, v) in extra {
            attributes.insert((*k).to_string(), v.clone());
        }
        self.inner.events.emit("network", action, id, attributes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_endpoint_mac_gets_dockerds_text_not_a_refusal() {
        let settings = crate::state::EndpointSettings {
            mac_address: "02:42:ac:11:00:zz".into(),
            ..Default::default()
        };
        assert!(without_served(&settings, None).is_empty());
        let host = HostConfig {
            network_mode: "mynet".into(),
            ..Default::default()
        };
        let mut networking = crate::state::NetworkingConfig::default();
        networking
            .endpoints_config
            .insert("mynet".into(), Some(settings));
        let err = requested_mac(&Default::default(), &host, &networking)
            .expect_err("an invalid MAC address is refused");
        assert_eq!(
            err.to_string(),
            "invalid config for network mynet: invalid MAC address 02:42:ac:11:00:zz"
        );
    }
}
