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
pub mod dns;
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
    /// Every address of the network's subnet is taken.
    #[error("no available IPv4 addresses on this network's address pools: {network}")]
    NoAddress {
        /// The network's name.
        network: String,
    },
    /// The address asked for with `--ip` is another's (dockerd's text).
    #[error("Address already in use")]
    AddressInUse {
        /// The address.
        ip: Ipv4Addr,
    },
    /// `--subnet` overlaps another network's (dockerd's text).
    #[error("invalid pool request: Pool overlaps with other one on this address space")]
    Overlap,
    /// A network of that name exists (dockerd's text).
    #[error("network with name {name} already exists")]
    NameTaken {
        /// The name.
        name: String,
    },
    /// A MAC address that is not one (dockerd's text).
    #[error("invalid MAC address {mac}")]
    InvalidMac {
        /// The text given.
        mac: String,
    },
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

/// What a container asks of one network it joins.
#[derive(Debug, Clone, Copy)]
pub struct Join<'a> {
    /// The network.
    pub def: &'a NetworkDef,
    /// The container's id.
    pub id: &'a str,
    /// The container's name (in the error of a port taken).
    pub name: &'a str,
    /// The ports to publish on this endpoint.
    pub requests: &'a [ports::Request],
    /// `--ip`.
    pub ip: Option<Ipv4Addr>,
    /// `--mac-address`.
    pub mac: Option<[u8; 6]>,
}

/// What a running container holds on the default bridge: shown by inspect and `docker ps`,
/// released at its exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Endpoint {
    /// The network's name.
    pub network: String,
    /// The network's id.
    pub network_id: String,
    /// This endpoint's id (64 hex).
    pub endpoint_id: String,
    /// The container's address.
    pub ip: Ipv4Addr,
    /// Subnet prefix length.
    pub prefix: u8,
    /// Gateway (the bridge's address; 0.0.0.0 on an internal network: no default route).
    pub gateway: Ipv4Addr,
    /// MAC address of `eth0`, `02:42:…`.
    pub mac: String,
    /// Host side of the veth pair.
    pub veth: String,
    /// The container side's name: `eth0` for the first network, `eth1`… for later ones.
    #[serde(default = "eth0")]
    pub ifname: String,
    /// The namespace file.
    pub netns: PathBuf,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<Published>,
}

fn eth0() -> String {
    "eth0".into()
}

/// A network's definition: the default bridge's is made at startup, user-defined ones are
/// kept in `DATA_ROOT/networks/ID.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkDef {
    /// 64 hex.
    pub id: String,
    /// Its name.
    pub name: String,
    /// When it was made.
    pub created: chrono::DateTime<chrono::Utc>,
    /// Its subnet; `None` for the default bridge until its first use picks one.
    pub subnet: Option<ipam::Pool>,
    /// Whether the subnet is the user's (`--subnet`), not picked from the default pools: only
    /// then may a container ask for its address (`--ip`), as dockerd's static subnets.
    #[serde(default)]
    pub user_subnet: bool,
    /// Its gateway (the bridge's address); the subnet's first address if not given.
    pub gateway: Option<Ipv4Addr>,
    /// `--internal`: no route out, no NAT.
    pub internal: bool,
    /// `--attachable` (kept and shown; it only matters to swarm).
    #[serde(default)]
    pub attachable: bool,
    /// `--label`.
    pub labels: BTreeMap<String, String>,
    /// `--opt`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl NetworkDef {
    /// The bridge device: `docker0`, or `br-` and 12 characters of the id, as dockerd.
    pub fn device(&self) -> String {
        if self.name == "bridge" {
            BRIDGE.to_string()
        } else {
            format!("br-{}", &self.id[..self.id.len().min(12)])
        }
    }
}

struct Live {
    index: u32,
    pool: ipam::Pool,
    gateway: Ipv4Addr,
    used: BTreeSet<Ipv4Addr>,
}

#[derive(Default)]
struct State {
    /// Live bridges by network id.
    live: HashMap<String, Live>,
    published: Vec<Published>,
    /// The kernel forwards of the published ports, by container id.
    forwards: HashMap<String, Vec<nat::Forward>>,
    next_port: u16,
}

/// The engine's networking: the bridges, their addresses, the published ports and their
/// proxies.
pub struct Networking {
    netns_dir: PathBuf,
    defs_dir: PathBuf,
    network_id: String,
    defs: Mutex<Vec<NetworkDef>>,
    state: tokio::sync::Mutex<State>,
    /// The published ports' proxies, by container id.
    proxies: Mutex<HashMap<String, Vec<AbortHandle>>>,
    /// The embedded DNS servers, by container id.
    dns: Mutex<HashMap<String, Vec<AbortHandle>>>,
    /// Held through a create, from the name and subnet checks to the definition's save: two
    /// concurrent creates of one name make one network, and never overlapping subnets.
    creating: tokio::sync::Mutex<()>,
    /// Set once a previous engine's NAT table is gone; every NAT change waits for it, so the
    /// removal (an `nft` run, ~0.2 s in a guest under TCG) is off the engine's start.
    stale_nat_removed: tokio::sync::OnceCell<()>,
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

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NetworkError + '_ {
    move |source| NetworkError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Networking {
    /// Networking for the engine on `data_root`, with the user-defined networks it keeps.
    pub fn new(data_root: &Path) -> Networking {
        let digest = sha2::Sha256::digest(format!("bridge:{}", data_root.display()));
        let network_id = hex::encode(digest);
        let defs_dir = data_root.join("networks");
        let mut defs = vec![NetworkDef {
            id: network_id.clone(),
            name: "bridge".into(),
            created: chrono::Utc::now(),
            subnet: None,
            user_subnet: false,
            gateway: None,
            internal: false,
            attachable: false,
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
        }];
        if let Ok(entries) = std::fs::read_dir(&defs_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                match std::fs::read(&path).map(|b| serde_json::from_slice::<NetworkDef>(&b)) {
                    Ok(Ok(def)) => defs.push(def),
                    _ => tracing::warn!(path = %path.display(), "unreadable network definition"),
                }
            }
        }
        Networking {
            netns_dir: data_root.join("netns"),
            defs_dir,
            network_id,
            defs: Mutex::new(defs),
            state: tokio::sync::Mutex::new(State {
                next_port: ports::EPHEMERAL.0,
                ..State::default()
            }),
            proxies: Mutex::new(HashMap::new()),
            dns: Mutex::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
            stale_nat_removed: tokio::sync::OnceCell::new(),
        }
    }

    /// The default bridge network's id.
    pub fn bridge_id(&self) -> &str {
        &self.network_id
    }

    /// Every bridge network (the default one first), with the subnet in use if it is live.
    pub async fn list(&self) -> Vec<NetworkDef> {
        let state = self.state.lock().await;
        let mut defs = self.defs.lock().map(|d| d.clone()).unwrap_or_default();
        for def in &mut defs {
            if let Some(live) = state.live.get(&def.id) {
                def.subnet = Some(live.pool);
                def.gateway = Some(live.gateway);
            }
        }
        defs
    }

    /// Finds a network by full id, name or unique id prefix.
    pub fn find(&self, reference: &str) -> Option<NetworkDef> {
        let defs = self.defs.lock().ok()?;
        if let Some(def) = defs
            .iter()
            .find(|d| d.id == reference || d.name == reference)
        {
            return Some(def.clone());
        }
        let mut matches = defs.iter().filter(|d| d.id.starts_with(reference));
        match (matches.next(), matches.next()) {
            (Some(def), None) if !reference.is_empty() => Some(def.clone()),
            _ => None,
        }
    }

    /// Makes a user-defined network (`docker network create`) from `request` (its id and
    /// creation time are ignored; no subnet means the first free default pool); the bridge
    /// device is made at its first container. A subnet must not overlap another network's.
    pub async fn create(&self, request: NetworkDef) -> Result<NetworkDef, NetworkError> {
        let NetworkDef {
            name,
            subnet,
            gateway,
            internal,
            attachable,
            labels,
            options,
            ..
        } = request;
        let _creating = self.creating.lock().await;
        let name_taken = self
            .defs
            .lock()
            .map(|defs| defs.iter().any(|d| d.name == name))
            .unwrap_or(false);
        if name_taken {
            return Err(NetworkError::NameTaken { name });
        }
        let taken: Vec<ipam::Pool> = {
            let mut taken: Vec<ipam::Pool> =
                self.list().await.iter().filter_map(|d| d.subnet).collect();
            // The default bridge takes its pool at first use: keep it free for it.
            if !taken
                .iter()
                .any(|p| p.network == Ipv4Addr::new(172, 17, 0, 0))
            {
                taken.push(ipam::Pool {
                    network: Ipv4Addr::new(172, 17, 0, 0),
                    prefix: 16,
                });
            }
            taken
        };
        let pool = match subnet {
            Some(pool) => {
                if taken.iter().any(|t| t.overlaps(&pool)) {
                    return Err(NetworkError::Overlap);
                }
                pool
            }
            None => {
                let handle = bridge::connect()?;
                let mut host = bridge::ipv4_networks(&handle).await?;
                host.extend(taken.iter().map(|p| (p.network, p.prefix)));
                ipam::choose(&host).ok_or(NetworkError::NoPool)?
            }
        };
        if let Some(gw) = gateway {
            if !pool.contains(gw) {
                return Err(NetworkError::InvalidPort {
                    reason: format!("Invalid gateway {gw}: it is not in subnet {pool}"),
                });
            }
        }
        let name = name.as_str();
        let id = hex::encode(sha2::Sha256::digest(format!(
            "{name}:{}:{}",
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default(),
            rand::random::<u64>()
        )));
        let def = NetworkDef {
            id: id.clone(),
            name: name.to_string(),
            created: chrono::Utc::now(),
            subnet: Some(pool),
            user_subnet: subnet.is_some(),
            gateway,
            internal,
            attachable,
            labels,
            options,
        };
        std::fs::create_dir_all(&self.defs_dir).map_err(io(&self.defs_dir))?;
        let path = self.defs_dir.join(format!("{id}.json"));
        let json = serde_json::to_vec_pretty(&def).map_err(|e| NetworkError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        // Durable before the network is reported created: a crash must not lose it while
        // containers already name it.
        crate::state::durable::write_atomic(&path, &json, 0o644).map_err(io(&path))?;
        if let Ok(mut defs) = self.defs.lock() {
            defs.push(def.clone());
        }
        Ok(def)
    }

    /// Removes a user-defined network without endpoints: its definition, bridge and NAT rule.
    pub async fn remove(&self, def: &NetworkDef) -> Result<(), NetworkError> {
        let mut state = self.state.lock().await;
        let path = self.defs_dir.join(format!("{}.json", def.id));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        if let Ok(mut defs) = self.defs.lock() {
            defs.retain(|d| d.id != def.id);
        }
        if state.live.remove(&def.id).is_some() {
            let handle = bridge::connect()?;
            bridge::delete(&handle, &def.device()).await?;
            self.program_nat(&state).await?;
        }
        Ok(())
    }

    /// Loads the engine's table for every live network.
    async fn program_nat(&self, state: &State) -> Result<(), NetworkError> {
        self.remove_stale_nat().await;
        let defs = self.defs.lock().map(|d| d.clone()).unwrap_or_default();
        let rules: Vec<nat::Rule> = defs
            .iter()
            .filter_map(|d| {
                state.live.get(&d.id).map(|l| nat::Rule {
                    bridge: d.device(),
                    pool: l.pool,
                    internal: d.internal,
                })
            })
            .collect();
        let forwards: Vec<nat::Forward> = state.forwards.values().flatten().cloned().collect();
        nat::install(&rules, &forwards).await
    }

    /// Removes the NAT table a previous engine left (remade at the first container start), once
    /// per engine; a later call waits for the first to finish.
    pub async fn remove_stale_nat(&self) {
        self.stale_nat_removed
            .get_or_init(|| async {
                if let Err(err) = nat::remove().await {
                    tracing::debug!(error = %err, "no stale NAT table removed");
                }
            })
            .await;
    }

    /// Removes what a previous engine left: its bridges and namespace files (its NAT table:
    /// [`Networking::remove_stale_nat`]).
    pub async fn reconcile(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.netns_dir) {
            for entry in entries.flatten() {
                netns::remove(&entry.path());
            }
        }
        let devices: Vec<String> = self
            .defs
            .lock()
            .map(|d| d.iter().map(NetworkDef::device).collect())
            .unwrap_or_default();
        match bridge::connect() {
            Ok(handle) => {
                for device in devices {
                    if let Ok(Some(index)) = bridge::index_of(&handle, &device).await {
                        tracing::info!(%device, "removing a bridge left by the previous engine");
                        match bridge::delete_ports(&handle, index).await {
                            Ok(ports) if !ports.is_empty() => {
                                tracing::info!(%device, ?ports, "removed the stale bridge's veths")
                            }
                            Ok(_) => {}
                            Err(err) => {
                                tracing::warn!(%device, error = %err, "cannot remove the stale veths")
                            }
                        }
                        if let Err(err) = bridge::delete(&handle, &device).await {
                            tracing::warn!(%device, error = %err, "cannot remove the stale bridge");
                        }
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
        def: &NetworkDef,
    ) -> Result<(u32, ipam::Pool, Ipv4Addr), NetworkError> {
        if let Some(b) = state.live.get(&def.id) {
            return Ok((b.index, b.pool, b.gateway));
        }
        let device = def.device();
        // A bridge of a killed engine: its containers are gone, remake it.
        bridge::delete(handle, &device).await?;
        let pool = match def.subnet {
            Some(pool) => pool,
            None => {
                let mut taken = bridge::ipv4_networks(handle).await?;
                let defs = self.defs.lock().map(|d| d.clone()).unwrap_or_default();
                taken.extend(
                    defs.iter()
                        .filter_map(|d| d.subnet)
                        .map(|p| (p.network, p.prefix)),
                );
                ipam::choose(&taken).ok_or(NetworkError::NoPool)?
            }
        };
        let gateway = def.gateway.unwrap_or_else(|| pool.gateway());
        let index = bridge::create_bridge(handle, &device, gateway, pool.prefix).await?;
        state.live.insert(
            def.id.clone(),
            Live {
                index,
                pool,
                gateway,
                used: BTreeSet::from([gateway]),
            },
        );
        let setup = async {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .map_err(io(Path::new("/proc/sys/net/ipv4/ip_forward")))?;
            self.program_nat(state).await
        };
        if let Err(err) = setup.await {
            state.live.remove(&def.id);
            let _ = bridge::delete(handle, &device).await;
            return Err(err);
        }
        tracing::info!(bridge = %device, subnet = %pool, "bridge ready");
        Ok((index, pool, gateway))
    }

    /// Connects container `join.id` to `join.def` as its first network: makes its namespace,
    /// `eth0` with the default route, and publishes `join.requests`; on any failure nothing is
    /// left.
    pub async fn connect(&self, join: Join<'_>) -> Result<Endpoint, NetworkError> {
        self.join(join, None, true).await
    }

    /// Connects container `join.id` to a further network through its existing namespace `ns`
    /// (`docker network connect` of a running container, or its networks after the first at
    /// start): a veth named `ifname` inside, with the default route only if `default_route`
    /// (the container has no other network); on any failure nothing is left.
    pub async fn attach(
        &self,
        join: Join<'_>,
        ns: &Path,
        ifname: &str,
        default_route: bool,
    ) -> Result<Endpoint, NetworkError> {
        self.join(join, Some((ns, ifname)), default_route).await
    }

    /// The namespace file of container `id` while it runs on a bridge network.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        self.netns_dir.join(id)
    }

    async fn join(
        &self,
        join: Join<'_>,
        existing: Option<(&Path, &str)>,
        default_route: bool,
    ) -> Result<Endpoint, NetworkError> {
        let Join {
            def,
            id,
            name,
            requests,
            ip: requested_ip,
            mac: requested_mac,
        } = join;
        let handle = bridge::connect()?;
        let mut state = self.state.lock().await;
        let (index, pool, gateway) = self.ensure_bridge(&mut state, &handle, def).await?;
        let used = state
            .live
            .get(&def.id)
            .map(|l| l.used.clone())
            .unwrap_or_default();
        let ip = match requested_ip {
            // Checked against the subnet at create; the network may have been remade since.
            Some(ip) if used.contains(&ip) || !pool.contains(ip) || ip == pool.network => {
                return Err(NetworkError::AddressInUse { ip });
            }
            Some(ip) => ip,
            None => pool
                .allocate(&used)
                .ok_or_else(|| NetworkError::NoAddress {
                    network: def.name.clone(),
                })?,
        };
        let endpoint_id = hex::encode(sha2::Sha256::digest(format!(
            "{id}:{ip}:{}",
            rand::random::<u64>()
        )));
        let o = ip.octets();
        let mac = requested_mac.unwrap_or([0x02, 0x42, o[0], o[1], o[2], o[3]]);
        // Link names are at most 15 bytes: the endpoint's id keeps a container's several
        // veths apart.
        let tag = &endpoint_id[..8];
        let (netns, ifname) = match existing {
            Some((ns, ifname)) => (ns.to_path_buf(), ifname.to_string()),
            None => (self.netns_dir.join(id), "eth0".to_string()),
        };
        let endpoint = Endpoint {
            network: def.name.clone(),
            network_id: def.id.clone(),
            endpoint_id: endpoint_id.clone(),
            ip,
            prefix: pool.prefix,
            gateway: if def.internal {
                Ipv4Addr::UNSPECIFIED
            } else {
                gateway
            },
            mac: format_mac(&mac),
            veth: format!("veth{tag}"),
            netns,
            ifname: ifname.clone(),
            ports: Vec::new(),
        };
        // Ports first: a port taken fails the start before any link is made.
        let label = format!("{name} ({endpoint_id})");
        let mut next = state.next_port;
        let bound = ports::bind_all(requests, ip, &state.published, &mut next, &label)?;
        let cfg = bridge::VethConfig {
            host: endpoint.veth.clone(),
            peer: format!("vp{tag}"),
            ifname,
            bridge: index,
            ip,
            prefix: pool.prefix,
            gateway: (!def.internal && default_route).then_some(gateway),
            mac,
        };
        let _ = bridge::delete(&handle, &cfg.host).await;
        if existing.is_none() {
            netns::remove(&endpoint.netns);
            netns::create(&endpoint.netns)?;
        }
        let undo_links = |handle: rtnetlink::Handle, cfg: bridge::VethConfig, ns: PathBuf| async move {
            let _ = bridge::delete(&handle, &cfg.host).await;
            let _ = bridge::delete(&handle, &cfg.peer).await;
            if existing.is_none() {
                netns::remove(&ns);
            }
        };
        if let Err(err) = bridge::plug(&handle, &endpoint.netns, &cfg).await {
            undo_links(handle, cfg, endpoint.netns.clone()).await;
            return Err(err);
        }
        let published = bound.published.clone();
        let handles = match bound.start() {
            Ok(handles) => handles,
            Err(err) => {
                undo_links(handle, cfg, endpoint.netns.clone()).await;
                return Err(err);
            }
        };
        state.next_port = next;
        if let Some(live) = state.live.get_mut(&def.id) {
            live.used.insert(ip);
        }
        state.published.extend(published.iter().cloned());
        let forwards = forwards_of(&published, ip);
        if !forwards.is_empty() {
            state.forwards.insert(id.to_string(), forwards);
            if let Err(err) = self.program_nat(&state).await {
                state.forwards.remove(id);
                state
                    .published
                    .retain(|p| !published.iter().any(|q| q == p));
                if let Some(live) = state.live.get_mut(&def.id) {
                    live.used.remove(&ip);
                }
                for task in handles {
                    task.abort();
                }
                undo_links(handle, cfg, endpoint.netns.clone()).await;
                return Err(err);
            }
        }
        if !handles.is_empty() {
            if let Ok(mut proxies) = self.proxies.lock() {
                proxies.insert(id.to_string(), handles);
            }
        }
        Ok(Endpoint {
            ports: published,
            ..endpoint
        })
    }

    /// Makes `endpoint` of running container `id` (named `name`) the one with the default
    /// route and the published ports `requests` after the endpoint that had them was
    /// disconnected, as dockerd moves external connectivity to the next gateway endpoint;
    /// returns it with its ports. On failure no port of it is left published.
    pub async fn promote(
        &self,
        id: &str,
        name: &str,
        endpoint: &Endpoint,
        requests: &[ports::Request],
    ) -> Result<Endpoint, NetworkError> {
        if !endpoint.gateway.is_unspecified() {
            bridge::default_route(&endpoint.netns, &endpoint.ifname, endpoint.gateway).await?;
        }
        let mut state = self.state.lock().await;
        let label = format!("{name} ({})", endpoint.endpoint_id);
        let mut next = state.next_port;
        let bound = ports::bind_all(requests, endpoint.ip, &state.published, &mut next, &label)?;
        let published = bound.published.clone();
        let handles = bound.start()?;
        state.next_port = next;
        state.published.extend(published.iter().cloned());
        let forwards = forwards_of(&published, endpoint.ip);
        if !forwards.is_empty() {
            state.forwards.insert(id.to_string(), forwards);
            if let Err(err) = self.program_nat(&state).await {
                state.forwards.remove(id);
                state
                    .published
                    .retain(|p| !published.iter().any(|q| q == p));
                for task in handles {
                    task.abort();
                }
                return Err(err);
            }
        }
        if !handles.is_empty() {
            if let Ok(mut proxies) = self.proxies.lock() {
                proxies.insert(id.to_string(), handles);
            }
        }
        Ok(Endpoint {
            ports: published,
            ..endpoint.clone()
        })
    }

    /// Keeps `tasks` serving container `id` (its embedded DNS server) until its disconnect.
    pub fn track(&self, id: &str, tasks: Vec<AbortHandle>) {
        if let Ok(mut dns) = self.dns.lock() {
            dns.entry(id.to_string()).or_default().extend(tasks);
        }
    }

    /// Whether container `id` has an embedded DNS server running.
    pub fn serves_dns(&self, id: &str) -> bool {
        self.dns
            .lock()
            .map(|d| d.get(id).is_some_and(|t| !t.is_empty()))
            .unwrap_or(false)
    }

    /// Takes one endpoint of running container `id` away (`docker network disconnect`): its
    /// veth, address, and the published ports and their forwards if it holds them; the
    /// namespace stays with the container.
    pub async fn detach(&self, id: &str, endpoint: &Endpoint) {
        if !endpoint.ports.is_empty() {
            if let Some(handles) = self.proxies.lock().ok().and_then(|mut p| p.remove(id)) {
                for handle in handles {
                    handle.abort();
                }
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
        self.release(&mut state, id, endpoint).await;
    }

    async fn release(&self, state: &mut State, id: &str, endpoint: &Endpoint) {
        if let Some(live) = state.live.get_mut(&endpoint.network_id) {
            live.used.remove(&endpoint.ip);
        }
        if endpoint.ports.is_empty() {
            return;
        }
        state
            .published
            .retain(|p| !endpoint.ports.iter().any(|q| q == p));
        if state.forwards.remove(id).is_some() {
            if let Err(err) = self.program_nat(state).await {
                tracing::warn!(container = %id, error = %err, "cannot remove the port forwards");
            }
        }
    }

    /// Undoes [`Networking::connect`] and every [`Networking::attach`] at the container's
    /// exit: proxies and DNS server stopped, veths and namespace removed, addresses and ports
    /// released.
    pub async fn disconnect(&self, id: &str, endpoints: &[Endpoint]) {
        let mut tasks = self
            .proxies
            .lock()
            .ok()
            .and_then(|mut p| p.remove(id))
            .unwrap_or_default();
        tasks.extend(
            self.dns
                .lock()
                .ok()
                .and_then(|mut d| d.remove(id))
                .unwrap_or_default(),
        );
        for task in tasks {
            task.abort();
        }
        let mut state = self.state.lock().await;
        match bridge::connect() {
            Ok(handle) => {
                for endpoint in endpoints {
                    if let Err(err) = bridge::delete(&handle, &endpoint.veth).await {
                        tracing::warn!(container = %id, error = %err, "cannot remove the veth");
                    }
                }
            }
            Err(err) => tracing::warn!(container = %id, error = %err, "no netlink"),
        }
        netns::remove(&self.netns_dir.join(id));
        for endpoint in endpoints {
            self.release(&mut state, id, endpoint).await;
        }
    }
}

/// `02:42:ac:11:00:02`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A MAC address as `docker run --mac-address` takes it: six pairs of hex digits separated
/// all by `:` or all by `-`, or three groups of four by `.` (Go's `net.ParseMAC` for 48 bits);
/// dockerd's `invalid MAC address X` otherwise.
pub fn parse_mac(text: &str) -> Result<[u8; 6], NetworkError> {
    let invalid = || NetworkError::InvalidMac {
        mac: text.to_string(),
    };
    let bytes = text.as_bytes();
    let digits: Vec<u8> = match bytes.len() {
        17 => {
            let sep = bytes[2];
            if !matches!(sep, b':' | b'-') {
                return Err(invalid());
            }
            let mut digits = Vec::with_capacity(12);
            for (i, b) in bytes.iter().enumerate() {
                if i % 3 == 2 {
                    if *b != sep {
                        return Err(invalid());
                    }
                } else {
                    digits.push(*b);
                }
            }
            digits
        }
        14 => {
            let mut digits = Vec::with_capacity(12);
            for (i, b) in bytes.iter().enumerate() {
                if i % 5 == 4 {
                    if *b != b'.' {
                        return Err(invalid());
                    }
                } else {
                    digits.push(*b);
                }
            }
            digits
        }
        _ => return Err(invalid()),
    };
    let nibble = |b: u8| (b as char).to_digit(16).ok_or_else(invalid);
    let mut mac = [0u8; 6];
    for (byte, pair) in mac.iter_mut().zip(digits.chunks(2)) {
        // Two hex digits: at most 0xff.
        *byte = u8::try_from(nibble(pair[0])? * 16 + nibble(pair[1])?).map_err(|_| invalid())?;
    }
    Ok(mac)
}

/// The kernel forwards of `published` ports of the container at `ip`: IPv4 host addresses
/// other than loopback (those stay with the userland proxy).
fn forwards_of(published: &[Published], ip: Ipv4Addr) -> Vec<nat::Forward> {
    published
        .iter()
        .filter_map(|p| {
            let host_ip: Ipv4Addr = p.host_ip.parse().ok()?;
            if host_ip.is_loopback() {
                return None;
            }
            Some(nat::Forward {
                proto: p.proto,
                host_ip: (!host_ip.is_unspecified()).then_some(host_ip),
                host_port: p.host_port,
                container_ip: ip,
                container_port: p.port,
            })
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_as_go_net_parsemac_for_48_bits() {
        let want = [0x02, 0x42, 0xac, 0x11, 0x00, 0x0a];
        for ok in ["02:42:ac:11:00:0a", "02-42-AC-11-00-0A", "0242.ac11.000a"] {
            assert_eq!(parse_mac(ok).ok(), Some(want), "{ok}");
        }
        for bad in [
            "02:42:ac:11:00:+a",
            "02:42-ac:11:00:0a",
            "02:42:ac:11:00:0g",
            "02:42:ac:11:00",
            "02:42:ac:11:00:0a:",
            "0242.ac11-000a",
            "+242.ac11.000a",
            "",
        ] {
            match parse_mac(bad) {
                Err(err @ NetworkError::InvalidMac { .. }) => {
                    assert_eq!(err.to_string(), format!("invalid MAC address {bad}"));
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    fn request(name: &str, subnet: &str) -> NetworkDef {
        NetworkDef {
            id: String::new(),
            name: name.into(),
            created: chrono::Utc::now(),
            subnet: Some(subnet.parse().unwrap()),
            user_subnet: true,
            gateway: None,
            internal: false,
            attachable: false,
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn concurrent_creates_of_one_name_make_one_network() {
        let dir = tempfile::tempdir().unwrap();
        let net = Networking::new(dir.path());
        let (a, b) = tokio::join!(
            net.create(request("dup", "10.231.1.0/24")),
            net.create(request("dup", "10.231.2.0/24")),
        );
        let errors: Vec<String> = [&a, &b]
            .iter()
            .filter_map(|r| r.as_ref().err().map(ToString::to_string))
            .collect();
        assert_eq!(errors, ["network with name dup already exists"]);
        let named: Vec<_> = net
            .list()
            .await
            .into_iter()
            .filter(|d| d.name == "dup")
            .collect();
        assert_eq!(named.len(), 1);
        // The one kept is on disk, durably: a new engine finds it.
        let again = Networking::new(dir.path());
        assert_eq!(again.find("dup").map(|d| d.id), Some(named[0].id.clone()));
    }
}
