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
                _ => Err(EngineError::NoSuchNetwork {
                    name: other.to_string(),
                }),
            },
        }
    }

    /// The key of `NetworkSettings.Networks` (none for `container:`).
    pub fn network_name(&self) -> Option<&'static str> {
        match self {
            Mode::Bridge => Some("bridge"),
            Mode::None => Some("none"),
            Mode::Host => Some("host"),
            Mode::Container(_) => None,
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
    /// An endpoint on the default bridge.
    Bridge(Endpoint),
}

impl Setup {
    /// The runtime's view.
    pub(super) fn namespace(&self) -> NetworkNamespace {
        match self {
            Setup::Loopback => NetworkNamespace::Loopback,
            Setup::Host => NetworkNamespace::Host,
            Setup::Joined { path, .. } => NetworkNamespace::Path { path: path.clone() },
            Setup::Bridge(endpoint) => NetworkNamespace::Path {
                path: endpoint.netns.clone(),
            },
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
            Setup::Bridge(endpoint) => format!(
                "{}{}\t{hostname}\n",
                launch::hosts_file(extra_hosts),
                endpoint.ip
            ),
        }
    }
}

fn publish_err(err: NetworkError) -> EngineError {
    match err {
        NetworkError::InvalidPort { reason } => EngineError::InvalidParameter { reason },
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

/// Checks at create what start would refuse: the mode and the port specs.
pub(super) fn check_create(
    config: &crate::state::ContainerConfig,
    host: &HostConfig,
) -> Result<(), EngineError> {
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
    if !requests.is_empty() && mode != Mode::Bridge {
        // dockerd drops the bindings of a container without its own network stack with a
        // warning; refusing says it instead of accepting and dropping them.
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
            Mode::Bridge => {
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
                    .connect(&record.id, name, &requests)
                    .await
                    .map_err(publish_err)?;
                if let Ok(mut endpoints) = self.inner.network.endpoints.lock() {
                    endpoints.insert(record.id.clone(), endpoint.clone());
                }
                Ok(Setup::Bridge(endpoint))
            }
        }
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
            self.inner.network.net.disconnect(id, &endpoint).await;
        }
    }
}

/// The engine's networking and the endpoints of its running containers.
#[derive(Debug)]
pub(super) struct NetworkState {
    pub(super) net: crate::network::Networking,
    pub(super) endpoints: std::sync::Mutex<std::collections::HashMap<String, Endpoint>>,
}

impl NetworkState {
    pub(super) fn new(data_root: &std::path::Path) -> NetworkState {
        crate::network::reconcile_files(data_root);
        NetworkState {
            net: crate::network::Networking::new(data_root),
            endpoints: std::sync::Mutex::default(),
        }
    }
}
