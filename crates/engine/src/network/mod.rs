//! Container networking: the default `bridge` network and published ports.
//!
//! Data flow at `start`: [`Networking::connect`] makes the container's network namespace (a
//! file under `DATA_ROOT/netns/`, see [`netns`]), makes the bridge `docker0` the first time
//! (address from [`ipam`], NAT through [`nat`]), plugs a veth pair into it whose container side
//! becomes `eth0` ([`bridge`]), binds the published ports and starts their proxies
//! ([`ports`]). The runtime then joins the namespace by path. At the container's exit
//! [`Networking::disconnect`] undoes all of it. What a running container holds is kept in its
//! record as an [`Endpoint`], which inspect and `docker ps` show.

pub mod bridge;
pub mod ipam;
pub mod nat;
pub mod netns;
pub mod ports;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::task::AbortHandle;

pub use ports::{Proto, Published};

/// The default bridge's device name, as dockerd's.
pub const BRIDGE: &str = "docker0";

/// Errors of container networking.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A file or socket operation failed.
    #[error("cannot use {path}")]
    Io {
        /// The path or object concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Making or joining a network namespace failed.
    #[error("cannot set up the network namespace {path}")]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("netlink: cannot {what}")]
    Netlink {
        /// The operation.
        what: String,
        /// The cause.
        #[source]
        source: rtnetlink::Error,
    },
    /// A link just made is not there.
    #[error("link {link} is missing")]
    Missing {
        /// Its name.
        link: String,
    },
    /// `nft` failed.
    #[error("cannot program NAT with nft: {reason}")]
    Nft {
        /// What nft said.
        reason: String,
    },
    /// No private range is free for the bridge.
    #[error("could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network")]
    NoPool,
    /// Every address of the bridge's subnet is taken.
    #[error("no available IPv4 addresses on this network's address pools: bridge")]
    NoAddress,
    /// A port spec is invalid (dockerd's texts).
    #[error("{reason}")]
    InvalidPort {
        /// Why.
        reason: String,
    },
    /// A port could not be published (dockerd's text).
    #[error("driver failed programming external connectivity on endpoint {endpoint}: {reason}")]
    Publish {
        /// `NAME (ENDPOINT_ID)`.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

/// What a running container holds on the default bridge: shown by inspect and `docker ps`,
/// released at its exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Endpoint {
    /// The network's id.
    pub network_id: String,
    /// This endpoint's id (64 hex).
    pub endpoint_id: String,
    /// The container's address.
    pub ip: Ipv4Addr,
    /// Subnet prefix length.
    pub prefix: u8,
    /// Gateway (the bridge's address).
    pub gateway: Ipv4Addr,
    /// MAC address of `eth0`, `02:42:…`.
    pub mac: String,
    /// Host side of the veth pair.
    pub veth: String,
    /// The namespace file.
    pub netns: PathBuf,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<Published>,
}

struct BridgeInfo {
    index: u32,
    pool: ipam::Pool,
}

#[derive(Default)]
struct State {
    bridge: Option<BridgeInfo>,
    used: BTreeSet<Ipv4Addr>,
    published: Vec<Published>,
    next_port: u16,
}

/// The engine's networking: the bridge, its addresses, the published ports and their proxies.
pub struct Networking {
    netns_dir: PathBuf,
    network_id: String,
    state: tokio::sync::Mutex<State>,
    proxies: Mutex<HashMap<String, Vec<AbortHandle>>>,
}

impl std::fmt::Debug for Networking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Networking")
            .field("netns_dir", &self.netns_dir)
            .finish()
    }
}

/// Unmounts the namespace files a killed engine left (their containers are gone).
pub fn reconcile_files(data_root: &Path) {
    let dir = data_root.join("netns");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            tracing::info!(path = %entry.path().display(), "removing a stale network namespace");
            netns::remove(&entry.path());
        }
    }
}

impl Networking {
    /// Networking for the engine on `data_root`.
    pub fn new(data_root: &Path) -> Networking {
        let digest = sha2::Sha256::digest(format!("bridge:{}", data_root.display()));
        Networking {
            netns_dir: data_root.join("netns"),
            network_id: hex::encode(digest),
            state: tokio::sync::Mutex::new(State {
                next_port: ports::EPHEMERAL.0,
                ..State::default()
            }),
            proxies: Mutex::new(HashMap::new()),
        }
    }

    /// The default bridge network's id.
    pub fn bridge_id(&self) -> &str {
        &self.network_id
    }

    /// Removes what a previous engine left: its bridge and NAT table (remade at the first
    /// container start), and namespace files.
    pub async fn reconcile(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.netns_dir) {
            for entry in entries.flatten() {
                netns::remove(&entry.path());
            }
        }
        match bridge::connect() {
            Ok(handle) => {
                if let Ok(Some(_)) = bridge::index_of(&handle, BRIDGE).await {
                    tracing::info!("removing the bridge left by the previous engine");
                    if let Err(err) = bridge::delete(&handle, BRIDGE).await {
                        tracing::warn!(error = %err, "cannot remove the stale bridge");
                    }
                    if let Err(err) = nat::remove().await {
                        tracing::warn!(error = %err, "cannot remove the stale NAT table");
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "no netlink"),
        }
    }

    async fn ensure_bridge(
        &self,
        state: &mut State,
        handle: &rtnetlink::Handle,
    ) -> Result<(u32, ipam::Pool), NetworkError> {
        if let Some(b) = &state.bridge {
            return Ok((b.index, b.pool));
        }
        // A bridge of a killed engine: its containers are gone, remake it.
        bridge::delete(handle, BRIDGE).await?;
        let taken = bridge::ipv4_networks(handle).await?;
        let pool = ipam::choose(&taken).ok_or(NetworkError::NoPool)?;
        let index = bridge::create_bridge(handle, BRIDGE, pool.gateway(), pool.prefix).await?;
        let setup = async {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|source| {
                NetworkError::Io {
                    path: "/proc/sys/net/ipv4/ip_forward".into(),
                    source,
                }
            })?;
            nat::install(BRIDGE, pool.network, pool.prefix).await
        };
        if let Err(err) = setup.await {
            let _ = bridge::delete(handle, BRIDGE).await;
            return Err(err);
        }
        tracing::info!(bridge = BRIDGE, subnet = %pool, "default bridge ready");
        state.bridge = Some(BridgeInfo { index, pool });
        Ok((index, pool))
    }

    /// Connects container `id` (named `name`) to the default bridge and publishes `requests`;
    /// on any failure nothing is left.
    pub async fn connect(
        &self,
        id: &str,
        name: &str,
        requests: &[ports::Request],
    ) -> Result<Endpoint, NetworkError> {
        let handle = bridge::connect()?;
        let mut state = self.state.lock().await;
        let (index, pool) = self.ensure_bridge(&mut state, &handle).await?;
        let ip = pool.allocate(&state.used).ok_or(NetworkError::NoAddress)?;
        let endpoint_id = hex::encode(sha2::Sha256::digest(format!(
            "{id}:{ip}:{}",
            rand::random::<u64>()
        )));
        let short = &id[..id.len().min(8)];
        let o = ip.octets();
        let mac = [0x02, 0x42, o[0], o[1], o[2], o[3]];
        let endpoint = Endpoint {
            network_id: self.network_id.clone(),
            endpoint_id: endpoint_id.clone(),
            ip,
            prefix: pool.prefix,
            gateway: pool.gateway(),
            mac: mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
            veth: format!("veth{short}"),
            netns: self.netns_dir.join(id),
            ports: Vec::new(),
        };
        // Ports first: a port taken fails the start before any link is made.
        let label = format!("{name} ({endpoint_id})");
        let mut next = state.next_port;
        let bound = ports::bind_all(requests, ip, &state.published, &mut next, &label)?;
        let cfg = bridge::VethConfig {
            host: endpoint.veth.clone(),
            peer: format!("vp{short}"),
            bridge: index,
            ip,
            prefix: pool.prefix,
            gateway: pool.gateway(),
            mac,
        };
        let _ = bridge::delete(&handle, &cfg.host).await;
        netns::remove(&endpoint.netns);
        netns::create(&endpoint.netns)?;
        if let Err(err) = bridge::plug(&handle, &endpoint.netns, &cfg).await {
            let _ = bridge::delete(&handle, &cfg.host).await;
            let _ = bridge::delete(&handle, &cfg.peer).await;
            netns::remove(&endpoint.netns);
            return Err(err);
        }
        let published = bound.published.clone();
        let handles = match bound.start() {
            Ok(handles) => handles,
            Err(err) => {
                let _ = bridge::delete(&handle, &cfg.host).await;
                netns::remove(&endpoint.netns);
                return Err(err);
            }
        };
        state.next_port = next;
        state.used.insert(ip);
        state.published.extend(published.iter().cloned());
        if let Ok(mut proxies) = self.proxies.lock() {
            proxies.insert(id.to_string(), handles);
        }
        Ok(Endpoint {
            ports: published,
            ..endpoint
        })
    }

    /// Undoes [`Networking::connect`]: proxies stopped, veth and namespace removed, address
    /// and ports released.
    pub async fn disconnect(&self, id: &str, endpoint: &Endpoint) {
        if let Some(handles) = self.proxies.lock().ok().and_then(|mut p| p.remove(id)) {
            for handle in handles {
                handle.abort();
            }
        }
        let mut state = self.state.lock().await;
        match bridge::connect() {
            Ok(handle) => {
                if let Err(err) = bridge::delete(&handle, &endpoint.veth).await {
                    tracing::warn!(container = %id, error = %err, "cannot remove the veth");
                }
            }
            Err(err) => tracing::warn!(container = %id, error = %err, "no netlink"),
        }
        netns::remove(&endpoint.netns);
        state.used.remove(&endpoint.ip);
        state
            .published
            .retain(|p| !endpoint.ports.iter().any(|q| q == p));
    }
}

/// `NetworkSettings.Ports` as dockerd fills it: every exposed or published port, its host
/// bindings or null.
pub fn ports_map(
    exposed: &BTreeMap<String, serde_json::Value>,
    bindings_keys: impl Iterator<Item = String>,
    published: &[Published],
) -> serde_json::Map<String, serde_json::Value> {
    let mut map = serde_json::Map::new();
    let mut keys: Vec<String> = exposed.keys().cloned().chain(bindings_keys).collect();
    keys.extend(
        published
            .iter()
            .map(|p| format!("{}/{}", p.port, p.proto.as_str())),
    );
    for key in keys {
        let Ok((port, proto)) = ports::parse_key(&key) else {
            continue;
        };
        let key = format!("{port}/{}", proto.as_str());
        let list: Vec<serde_json::Value> = published
            .iter()
            .filter(|p| p.port == port && p.proto == proto)
            .map(|p| serde_json::json!({"HostIp": p.host_ip, "HostPort": p.host_port.to_string()}))
            .collect();
        let value = if list.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::Value::Array(list)
        };
        map.insert(key, value);
    }
    map
}
