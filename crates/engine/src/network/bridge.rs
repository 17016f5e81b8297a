//! Links through netlink (`rtnetlink`): the bridge, the veth pair of each container and the
//! configuration of the container's side inside its namespace.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::{netns, NetworkError};

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}

/// A netlink connection in the engine's own network namespace.
pub fn connect() -> Result<Handle, NetworkError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|source| NetworkError::Io {
            path: "netlink".into(),
            source,
        })?;
    tokio::spawn(connection);
    Ok(handle)
}

/// A netlink connection inside the namespace at `path`.
pub fn connect_in(path: &Path) -> Result<Handle, NetworkError> {
    let runtime = tokio::runtime::Handle::current();
    let made = netns::run_in(path, move || {
        // The socket is registered with the engine's reactor but made in the namespace.
        let _guard = runtime.enter();
        rtnetlink::new_connection()
    })?;
    let (connection, handle, _) = made.map_err(|source| NetworkError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    tokio::spawn(connection);
    Ok(handle)
}

/// The index of link `name`, if it exists.
pub async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, NetworkError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl(format!("find link {name}"))(e)),
    }
}

/// Every IPv4 network with an address in the engine's namespace, as (address, prefix length).
pub async fn ipv4_networks(handle: &Handle) -> Result<Vec<(Ipv4Addr, u8)>, NetworkError> {
    let mut out = Vec::new();
    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await.map_err(nl("list addresses"))? {
        for attr in &msg.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                out.push((*ip, msg.header.prefix_len));
            }
        }
    }
    Ok(out)
}

/// Creates the bridge `name` with `gateway/prefix` and brings it up; returns its index.
pub async fn create_bridge(
    handle: &Handle,
    name: &str,
    gateway: Ipv4Addr,
    prefix: u8,
) -> Result<u32, NetworkError> {
    handle
        .link()
        .add(LinkBridge::new(name).build())
        .execute()
        .await
        .map_err(nl(format!("create bridge {name}")))?;
    let index = index_of(handle, name)
        .await?
        .ok_or_else(|| NetworkError::Missing {
            link: name.to_string(),
        })?;
    handle
        .address()
        .add(index, IpAddr::V4(gateway), prefix)
        .execute()
        .await
        .map_err(nl(format!("address {gateway}/{prefix} on {name}")))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl(format!("bring {name} up")))?;
    Ok(index)
}

/// Deletes link `name` if it exists.
pub async fn delete(handle: &Handle, name: &str) -> Result<(), NetworkError> {
    if let Some(index) = index_of(handle, name).await? {
        let mut links = handle.link();
        match links.del(index).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
            Err(e) => return Err(nl(format!("delete {name}"))(e)),
        }
    }
    Ok(())
}

/// Deletes every link plugged into the bridge with index `bridge`, returning their names.
/// A killed engine's veths otherwise outlive it until the kernel gets round to destroying
/// their containers' namespaces, which it does in the background, some time after the last
/// process in them died.
pub async fn delete_ports(handle: &Handle, bridge: u32) -> Result<Vec<String>, NetworkError> {
    let mut ports = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await.map_err(nl("list links"))? {
        let plugged = link
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::Controller(master) if *master == bridge));
        if plugged {
            let name = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            });
            ports.push((link.header.index, name.unwrap_or_default()));
        }
    }
    let mut deleted = Vec::new();
    for (index, name) in ports {
        match handle.link().del(index).execute().await {
            Ok(()) => deleted.push(name),
            // Gone with its peer meanwhile.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
            Err(e) => return Err(nl(format!("delete {name}"))(e)),
        }
    }
    Ok(deleted)
}

/// What the container's side of a veth pair gets.
#[derive(Debug, Clone)]
pub struct VethConfig {
    /// Host-side name, a port of the bridge.
    pub host: String,
    /// Temporary name of the container side before it becomes [`VethConfig::ifname`].
    pub peer: String,
    /// The container side's name in its namespace: `eth0` for its first network, `eth1`…
    /// for those connected later.
    pub ifname: String,
    /// Bridge index.
    pub bridge: u32,
    /// The container's address.
    pub ip: Ipv4Addr,
    /// Prefix length of the subnet.
    pub prefix: u8,
    /// Default gateway; none on an internal network or a network connected later (the first
    /// network keeps the default route).
    pub gateway: Option<Ipv4Addr>,
    /// MAC address of the container side.
    pub mac: [u8; 6],
}

/// Makes the veth pair, plugs the host side into the bridge and moves the other side into the
/// namespace at `ns` as [`VethConfig::ifname`] with its address and default route (and `lo`
/// up).
pub async fn plug(handle: &Handle, ns: &Path, cfg: &VethConfig) -> Result<(), NetworkError> {
    handle
        .link()
        .add(LinkVeth::new(&cfg.host, &cfg.peer).build())
        .execute()
        .await
        .map_err(nl(format!("create veth {}", cfg.host)))?;
    let host = index_of(handle, &cfg.host)
        .await?
        .ok_or_else(|| NetworkError::Missing {
            link: cfg.host.clone(),
        })?;
    let peer = index_of(handle, &cfg.peer)
        .await?
        .ok_or_else(|| NetworkError::Missing {
            link: cfg.peer.clone(),
        })?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(host)
                .controller(cfg.bridge)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("plug {} into the bridge", cfg.host)))?;
    let file = std::fs::File::open(ns).map_err(|source| NetworkError::Io {
        path: ns.to_path_buf(),
        source,
    })?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(peer)
                .setns_by_fd(file.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("move {} into the container", cfg.peer)))?;
    drop(file);

    let inner = connect_in(ns)?;
    let lo = index_of(&inner, "lo")
        .await?
        .ok_or_else(|| NetworkError::Missing { link: "lo".into() })?;
    inner
        .link()
        .set(LinkUnspec::new_with_index(lo).up().build())
        .execute()
        .await
        .map_err(nl("bring lo up"))?;
    let eth = index_of(&inner, &cfg.peer)
        .await?
        .ok_or_else(|| NetworkError::Missing {
            link: cfg.peer.clone(),
        })?;
    inner
        .link()
        .set(
            LinkUnspec::new_with_index(eth)
                .name(cfg.ifname.clone())
                .address(cfg.mac.to_vec())
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!(
            "rename the container's interface to {}",
            cfg.ifname
        )))?;
    inner
        .address()
        .add(eth, IpAddr::V4(cfg.ip), cfg.prefix)
        .execute()
        .await
        .map_err(nl(format!(
            "address {}/{} on {}",
            cfg.ip, cfg.prefix, cfg.ifname
        )))?;
    inner
        .link()
        .set(LinkUnspec::new_with_index(eth).up().build())
        .execute()
        .await
        .map_err(nl(format!("bring {} up", cfg.ifname)))?;
    if let Some(gateway) = cfg.gateway {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(eth)
            .build();
        inner
            .route()
            .add(route)
            .execute()
            .await
            .map_err(nl(format!("default route via {gateway}")))?;
    }
    Ok(())
}

/// Adds the default route via `gateway` on `ifname` inside the namespace at `ns`.
pub async fn default_route(ns: &Path, ifname: &str, gateway: Ipv4Addr) -> Result<(), NetworkError> {
    let inner = connect_in(ns)?;
    let index = index_of(&inner, ifname)
        .await?
        .ok_or_else(|| NetworkError::Missing {
            link: ifname.to_string(),
        })?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(index)
        .build();
    inner
        .route()
        .add(route)
        .execute()
        .await
        .map_err(nl(format!("default route via {gateway}")))
}
