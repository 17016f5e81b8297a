//! How a container gets its network at start (`--network` mode, published ports) and gives it
//! back at exit; see [`crate::network`].

use std::path::PathBuf;

use rmachine_runtime::spec::NetworkNamespace;

use super::{Engine, EngineError};
use crate::container::launch;
use crate::network::{ports, Endpoint, NetworkError};
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
    /// An endpoint on a bridge network, the `/etc/hosts` lines of its `--link`s (default
    /// bridge), and the `resolv.conf` naming the embedded DNS server (user-defined networks).
    Bridge(Endpoint, String, Option<String>),
}

impl Setup {
    /// The runtime's view.
    pub(super) fn namespace(&self) -> NetworkNamespace {
        match self {
            Setup::Loopback => NetworkNamespace::Loopback,
            Setup::Host => NetworkNamespace::Host,
            Setup::Joined { path, .. } => NetworkNamespace::Path { path: path.clone() },
            Setup::Bridge(endpoint, ..) => NetworkNamespace::Path {
                path: endpoint.netns.clone(),
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
            Setup::Bridge(endpoint, peers, _) => {
                let extra = with_host_gateway(extra_hosts, endpoint);
                format!("{}{peers}", own_hosts(&extra, hostname, endpoint))
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

/// A bridged container's own `/etc/hosts`, before the lines of its peers.
fn own_hosts(extra_hosts: &[String], hostname: &str, endpoint: &Endpoint) -> String {
    format!(
        "{}{}\t{hostname}\n",
        launch::hosts_file(extra_hosts),
        endpoint.ip
    )
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

impl Engine {
    /// The bridge endpoint of a running container.
    pub fn endpoint(&self, id: &str) -> Option<Endpoint> {
        self.inner
            .network
            .endpoints
            .lock()
            .ok()
            .and_then(|e| e.get(id).cloned())
    }

    /// The default bridge network's id.
    pub fn bridge_network_id(&self) -> &str {
        self.inner.network.net.bridge_id()
    }

    /// The id of the network `record`'s container is on (its name for `host`/`none`, empty
    /// for `container:` or a network since removed).
    pub fn network_id_of(&self, record: &ContainerRecord) -> String {
        match Mode::of(&record.host_config) {
            Ok(Mode::Bridge) => self.bridge_network_id().to_string(),
            Ok(Mode::Named(name)) => self.find_network(&name).map(|d| d.id).unwrap_or_default(),
            Ok(Mode::None) => "none".into(),
            Ok(Mode::Host) => "host".into(),
            _ => String::new(),
        }
    }

    /// Removes the bridge, NAT table and namespaces a killed engine left (its containers were
    /// stopped by the reconcile of [`Engine::open`]); the first bridged start remakes them.
    pub async fn reconcile_network(&self) {
        self.inner.network.net.reconcile().await;
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
            Mode::Bridge | Mode::Named(_)
                if self
                    .inner
                    .state
                    .dir(&record.id)
                    .join(DISCONNECTED_FILE)
                    .exists() =>
            {
                Ok(Setup::Loopback)
            }
            Mode::Bridge | Mode::Named(_) => {
                let mode = Mode::of(&record.host_config)?;
                let wanted = mode.network_name().unwrap_or("bridge");
                let def = self.inner.network.net.find(wanted).ok_or_else(|| {
                    EngineError::NoSuchNetwork {
                        name: wanted.to_string(),
                    }
                })?;
                let host = &record.host_config;
                let requests = ports::requests(
                    &host.port_bindings,
                    host.publish_all_ports,
                    &record.config.exposed_ports,
                )
                .map_err(publish_err)?;
                let name = record.name.trim_start_matches('/');
                let endpoint = self
                    .inner
                    .network
                    .net
                    .connect(
                        &def,
                        &record.id,
                        name,
                        &requests,
                        load_requested_ip(&self.inner.state.dir(&record.id)),
                    )
                    .await
                    .map_err(publish_err)?;
                if let Ok(mut endpoints) = self.inner.network.endpoints.lock() {
                    endpoints.insert(record.id.clone(), endpoint.clone());
                }
                self.emit_network(
                    "connect",
                    &def.id,
                    &def.name,
                    &[("container", record.id.clone())],
                );
                if def.name == "bridge" {
                    return match self.link_lines(record) {
                        Ok(lines) => Ok(Setup::Bridge(endpoint, lines, None)),
                        Err(err) => {
                            self.network_down(&record.id).await;
                            Err(err)
                        }
                    };
                }
                match self.embedded_dns(record, &def, &endpoint) {
                    Ok(resolv) => Ok(Setup::Bridge(endpoint, String::new(), Some(resolv))),
                    Err(err) => {
                        self.network_down(&record.id).await;
                        Err(err)
                    }
                }
            }
        }
    }

    /// Names container `record` (its name, short id, `--network-alias`es and `--link` aliases)
    /// to the embedded DNS server and starts that server in its namespace; returns the
    /// container's `resolv.conf`.
    fn embedded_dns(
        &self,
        record: &ContainerRecord,
        def: &crate::network::NetworkDef,
        endpoint: &Endpoint,
    ) -> Result<String, EngineError> {
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let (resolv, upstream) =
            super::options::resolv_conf_internal(&record.host_config, &host_resolv)?;
        let dir = self.inner.state.dir(&record.id);
        let mut names: Vec<String> = vec![
            record.name.trim_start_matches('/').to_string(),
            record.short_id().to_string(),
        ];
        names.extend(load_aliases(&dir));
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
            t.insert(record.id.clone(), entry);
        }
        let id = record.id.clone();
        let lookup: crate::network::dns::Lookup = std::sync::Arc::new(move |name: &str| {
            table.lock().ok().and_then(|t| resolve(&t, &id, name))
        });
        let tasks = crate::network::dns::serve(&endpoint.netns, lookup, upstream, !def.internal)
            .map_err(publish_err)?;
        self.inner.network.net.track(&record.id, tasks);
        Ok(resolv)
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

    /// `docker network connect NETWORK CONTAINER` for a container that does not run and whose
    /// network this is (one network per container here): sets its aliases.
    pub async fn connect_network(
        &self,
        network: &str,
        container: &str,
        settings: &crate::state::EndpointSettings,
    ) -> Result<(), EngineError> {
        let (def, c) = self.network_and_container(network, container)?;
        if !without_aliases(settings).is_empty() {
            return Err(EngineError::InvalidParameter {
                reason: "rmachine-engine does not support endpoint settings other than aliases (--alias) on network connect yet".into(),
            });
        }
        let aliases = settings.aliases.clone().unwrap_or_default();
        if !aliases.is_empty() && def.name == "bridge" {
            return Err(EngineError::InvalidParameter {
                reason:
                    "network-scoped alias is supported only for containers in user defined networks"
                        .into(),
            });
        }
        let mut config = crate::state::NetworkingConfig::default();
        config
            .endpoints_config
            .insert(def.name.clone(), Some(settings.clone()));
        let _ = std::fs::remove_file(c.dir.join(ALIASES_FILE));
        save_aliases(&c.dir, &config)?;
        let _ = std::fs::remove_file(c.dir.join(DISCONNECTED_FILE));
        Ok(())
    }

    /// `docker network disconnect NETWORK CONTAINER` for a container that does not run.
    pub async fn disconnect_network(
        &self,
        network: &str,
        container: &str,
    ) -> Result<(), EngineError> {
        let (_, c) = self.network_and_container(network, container)?;
        let _ = std::fs::remove_file(c.dir.join(ALIASES_FILE));
        let marker = c.dir.join(DISCONNECTED_FILE);
        std::fs::write(&marker, b"").map_err(super::error::io_err(&marker))?;
        Ok(())
    }

    fn network_and_container(
        &self,
        network: &str,
        container: &str,
    ) -> Result<
        (
            crate::network::NetworkDef,
            std::sync::Arc<crate::container::Container>,
        ),
        EngineError,
    > {
        let def = self
            .find_network(network)
            .ok_or_else(|| EngineError::NoSuchNetwork {
                name: network.to_string(),
            })?;
        let c = self.container(container)?;
        let record = c.record();
        let own = Mode::of(&record.host_config)
            .ok()
            .and_then(|m| m.network_name().map(str::to_string))
            .is_some_and(|n| n == def.name || n == def.id);
        if !own {
            return Err(EngineError::InvalidParameter {
                reason: format!(
                    "rmachine-engine does not support connecting a container to a second network yet ({} is on {})",
                    record.name.trim_start_matches('/'),
                    record.host_config.network_mode
                ),
            });
        }
        if record.state.status == Status::Running {
            return Err(EngineError::InvalidParameter {
                reason: "rmachine-engine does not support connecting or disconnecting a running container yet".into(),
            });
        }
        Ok((def, c))
    }

    /// The `--network-alias`es of container `id`.
    pub fn aliases(&self, id: &str) -> Vec<String> {
        load_aliases(&self.inner.state.dir(id))
    }

    /// Gives back what [`Engine::network_up`] took for container `id` (nothing if none).
    pub(super) async fn network_down(&self, id: &str) {
        let endpoint = self
            .inner
            .network
            .endpoints
            .lock()
            .ok()
            .and_then(|mut e| e.remove(id));
        if let Some(endpoint) = endpoint {
            if let Ok(mut names) = self.inner.network.names.lock() {
                names.remove(id);
            }
            self.inner.network.net.disconnect(id, &endpoint).await;
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
    pub(super) endpoints: std::sync::Mutex<std::collections::HashMap<String, Endpoint>>,
    /// What the embedded DNS server answers, by running container id (user-defined networks).
    pub(super) names: std::sync::Arc<std::sync::Mutex<NameTable>>,
}

/// The embedded DNS server's names, by container id.
pub(super) type NameTable = std::collections::HashMap<String, DnsNames>;

/// What a running container on a user-defined network is known by (all lowercase).
#[derive(Debug)]
pub(super) struct DnsNames {
    network_id: String,
    network: String,
    ip: std::net::Ipv4Addr,
    /// Its name, short id and `--network-alias`es.
    names: Vec<String>,
    /// Its `--link`s as `(alias, target name)`: names only this container resolves.
    links: Vec<(String, String)>,
}

/// What container `asking` gets for `name` from the embedded DNS server: the addresses of the
/// containers on its network that `name` names (directly, through one of its links, or as
/// `NAME.NETWORK`), sorted; `None` if there are none.
pub(super) fn resolve(
    table: &NameTable,
    asking: &str,
    name: &str,
) -> Option<Vec<std::net::Ipv4Addr>> {
    let me = table.get(asking)?;
    let find = |wanted: &str| -> Vec<std::net::Ipv4Addr> {
        let wanted = me
            .links
            .iter()
            .find(|(alias, _)| alias == wanted)
            .map_or(wanted, |(_, target)| target.as_str());
        let mut ips: Vec<_> = table
            .values()
            .filter(|e| e.network_id == me.network_id && e.names.iter().any(|n| n == wanted))
            .map(|e| e.ip)
            .collect();
        ips.sort();
        ips.dedup();
        ips
    };
    let mut ips = find(name);
    if ips.is_empty() {
        if let Some((prefix, network)) = name.rsplit_once('.') {
            if network == me.network {
                ips = find(prefix);
            }
        }
    }
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
