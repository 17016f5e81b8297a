//! Published ports: what a container asks for (`HostConfig.PortBindings`, `-P` over
//! `Config.ExposedPorts`), the host sockets bound for it, and the userland proxy (as dockerd's
//! `docker-proxy`) that carries each connection or datagram to the container's address.
//!
//! The proxy runs as tasks of the engine: a listener bound before the container starts (so a
//! port taken is an error and the container does not start), aborted when the container stops.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{AbortHandle, JoinSet};

use super::NetworkError;
use crate::state::PortBinding;

/// dockerd's ephemeral range for ports published without a host port (portallocator).
pub const EPHEMERAL: (u16, u16) = (32768, 60999);

/// How long a UDP flow without traffic keeps its socket (docker-proxy's 90 s).
const UDP_IDLE: Duration = Duration::from_secs(90);

/// A transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// Docker's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A container port key, `80/tcp`, as Docker writes it.
pub fn parse_key(key: &str) -> Result<(u16, Proto), NetworkError> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" | "" => Proto::Tcp,
        "udp" => Proto::Udp,
        other => {
            return Err(NetworkError::InvalidPort {
                reason: format!("rmachine-engine does not support {other} ports yet ({key})"),
            })
        }
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| NetworkError::InvalidPort {
            reason: format!("invalid containerPort: {port}"),
        })?;
    Ok((port, proto))
}

/// One port to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Container port.
    pub port: u16,
    /// Protocol.
    pub proto: Proto,
    /// Host address; `None` is every address (0.0.0.0 and ::).
    pub host_ip: Option<IpAddr>,
    /// Host ports to choose from, inclusive; `None` is the ephemeral range.
    pub host_ports: Option<(u16, u16)>,
}

fn parse_host_port(text: &str) -> Result<Option<(u16, u16)>, NetworkError> {
    if text.is_empty() {
        return Ok(None);
    }
    let bad = || NetworkError::InvalidPort {
        reason: format!("invalid hostPort: {text}"),
    };
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    if hi < lo {
        return Err(bad());
    }
    // Port 0 is "any", as an empty host port.
    Ok((lo != 0).then_some((lo, hi)))
}

/// What a container asks to publish: every binding of `bindings`, and with `publish_all` every
/// exposed port without one (on a random port of every address).
pub fn requests(
    bindings: &BTreeMap<String, Option<Vec<PortBinding>>>,
    publish_all: bool,
    exposed: &BTreeMap<String, serde_json::Value>,
) -> Result<Vec<Request>, NetworkError> {
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for (key, list) in bindings {
        let (port, proto) = parse_key(key)?;
        seen.push((port, proto));
        let list = list.clone().unwrap_or_default();
        let list = if list.is_empty() {
            // A key without bindings publishes on a random port (the API allows it).
            vec![PortBinding::default()]
        } else {
            list
        };
        for binding in list {
            let host_ip = if binding.host_ip.is_empty() {
                None
            } else {
                let ip = binding
                    .host_ip
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .map_err(|_| NetworkError::InvalidPort {
                        reason: format!("invalid host IP address: {}", binding.host_ip),
                    })?;
                Some(ip)
            };
            out.push(Request {
                port,
                proto,
                host_ip,
                host_ports: parse_host_port(&binding.host_port)?,
            });
        }
    }
    if publish_all {
        for key in exposed.keys() {
            let (port, proto) = parse_key(key)?;
            if !seen.contains(&(port, proto)) {
                seen.push((port, proto));
                out.push(Request {
                    port,
                    proto,
                    host_ip: None,
                    host_ports: None,
                });
            }
        }
    }
    Ok(out)
}

/// One published port: what `NetworkSettings.Ports` and the `Ports` of `docker ps` show.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Published {
    /// Container port.
    pub port: u16,
    /// Protocol.
    pub proto: Proto,
    /// Host address as dockerd writes it (`0.0.0.0`, `::`, `127.0.0.1`).
    pub host_ip: String,
    /// Host port.
    pub host_port: u16,
}

/// Host sockets bound for a container, not yet proxying.
pub struct Bound {
    /// What they publish.
    pub published: Vec<Published>,
    sockets: Vec<(BoundSocket, SocketAddr)>,
}

enum BoundSocket {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

fn bind_one(addr: SocketAddr, proto: Proto) -> std::io::Result<BoundSocket> {
    let domain = Domain::for_address(addr);
    let (ty, protocol) = match proto {
        Proto::Tcp => (Type::STREAM, Protocol::TCP),
        Proto::Udp => (Type::DGRAM, Protocol::UDP),
    };
    let socket = Socket::new(domain, ty, Some(protocol))?;
    if addr.is_ipv6() {
        // `::` here means IPv6 only: 0.0.0.0 has a socket of its own.
        socket.set_only_v6(true)?;
    }
    if proto == Proto::Tcp {
        socket.set_reuse_address(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(match proto {
        Proto::Tcp => {
            socket.listen(1024)?;
            BoundSocket::Tcp(socket.into())
        }
        Proto::Udp => BoundSocket::Udp(socket.into()),
    })
}

fn show_ip(ip: IpAddr) -> String {
    ip.to_string()
}

/// Binds every request for a container at `target` (its address): a host port given is taken
/// or the whole bind fails; a range or the ephemeral range yields its first free port.
/// `allocated` holds the ports this engine already publishes (dockerd's "port is already
/// allocated" against its own containers); `next` is the ephemeral cursor. `endpoint` names
/// the container in dockerd's error texts: `NAME (ENDPOINT_ID)`.
pub fn bind_all(
    requests: &[Request],
    target: Ipv4Addr,
    allocated: &[Published],
    next: &mut u16,
    endpoint: &str,
) -> Result<Bound, NetworkError> {
    let mut bound = Bound {
        published: Vec::new(),
        sockets: Vec::new(),
    };
    for req in requests {
        let addrs: Vec<IpAddr> = match req.host_ip {
            Some(ip) => vec![ip],
            None => vec![
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            ],
        };
        let taken = |port: u16| {
            allocated
                .iter()
                .chain(bound.published.iter())
                .any(|p| p.proto == req.proto && p.host_port == port)
        };
        let explicit = req.host_ports.is_some_and(|(lo, hi)| lo == hi);
        let candidates: Vec<u16> = match req.host_ports {
            Some((lo, hi)) => (lo..=hi).collect(),
            None => {
                let (lo, hi) = EPHEMERAL;
                let start = (*next).clamp(lo, hi);
                (start..=hi).chain(lo..start).collect()
            }
        };
        let mut done = false;
        let mut last_err = None;
        for port in candidates {
            if taken(port) {
                if explicit {
                    let ip = addrs.first().copied().map(show_ip).unwrap_or_default();
                    return Err(NetworkError::Publish {
                        endpoint: endpoint.to_string(),
                        reason: format!("Bind for {ip}:{port} failed: port is already allocated"),
                    });
                }
                continue;
            }
            let mut sockets = Vec::new();
            let mut failed = None;
            for ip in &addrs {
                let addr = SocketAddr::new(*ip, port);
                match bind_one(addr, req.proto) {
                    Ok(s) => sockets.push((s, *ip)),
                    // No IPv6 in this namespace: 0.0.0.0 alone, as dockerd on such a host.
                    Err(e)
                        if req.host_ip.is_none()
                            && ip.is_ipv6()
                            && matches!(
                                e.raw_os_error(),
                                Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
                            ) => {}
                    Err(e) => {
                        failed = Some((*ip, e));
                        break;
                    }
                }
            }
            match failed {
                None => {
                    for (socket, ip) in sockets {
                        bound.published.push(Published {
                            port: req.port,
                            proto: req.proto,
                            host_ip: show_ip(ip),
                            host_port: port,
                        });
                        bound
                            .sockets
                            .push((socket, SocketAddr::new(IpAddr::V4(target), req.port)));
                    }
                    if req.host_ports.is_none() {
                        *next = if port >= EPHEMERAL.1 {
                            EPHEMERAL.0
                        } else {
                            port + 1
                        };
                    }
                    done = true;
                    break;
                }
                Some((ip, err)) => {
                    last_err = Some((ip, port, err));
                    if explicit {
                        break;
                    }
                }
            }
        }
        if !done {
            let reason = match last_err {
                Some((ip, port, err)) => format!(
                    "failed to bind host port for {}:{port}:{target}:{}/{}: {}",
                    show_ip(ip),
                    req.port,
                    req.proto.as_str(),
                    io_text(&err)
                ),
                None => format!("no free host port for {}/{}", req.port, req.proto.as_str()),
            };
            return Err(NetworkError::Publish {
                endpoint: endpoint.to_string(),
                reason,
            });
        }
    }
    Ok(bound)
}

/// Go's text for an errno (`address already in use`), which dockerd's messages carry.
fn io_text(err: &std::io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_lowercase(),
        None => err.to_string(),
    }
}

impl Bound {
    /// Starts the proxy of every socket; the handles stop them.
    pub fn start(self) -> Result<Vec<AbortHandle>, NetworkError> {
        let mut handles = Vec::new();
        for (socket, target) in self.sockets {
            let handle = match socket {
                BoundSocket::Tcp(listener) => {
                    let listener =
                        TcpListener::from_std(listener).map_err(|source| NetworkError::Io {
                            path: "tcp listener".into(),
                            source,
                        })?;
                    tokio::spawn(tcp_proxy(listener, target)).abort_handle()
                }
                BoundSocket::Udp(socket) => {
                    let socket =
                        UdpSocket::from_std(socket).map_err(|source| NetworkError::Io {
                            path: "udp socket".into(),
                            source,
                        })?;
                    tokio::spawn(udp_proxy(Arc::new(socket), target)).abort_handle()
                }
            };
            handles.push(handle);
        }
        Ok(handles)
    }
}

/// Accepts on `listener` and splices each connection with one to `target`. Aborting it drops
/// the listener and, with the join set, every connection it carries.
async fn tcp_proxy(listener: TcpListener, target: SocketAddr) {
    let mut conns = JoinSet::new();
    loop {
        let (mut inbound, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::debug!(error = %err, "published port: accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        conns.spawn(async move {
            let _ = inbound.set_nodelay(true);
            match TcpStream::connect(target).await {
                Ok(mut outbound) => {
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(err) => tracing::debug!(%target, error = %err, "published port: cannot reach the container"),
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

/// Relays datagrams: each client address gets a socket connected to `target`, whose replies go
/// back to that client, until the flow is idle for [`UDP_IDLE`].
async fn udp_proxy(socket: Arc<UdpSocket>, target: SocketAddr) {
    let flows: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut replies = JoinSet::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(err) => {
                tracing::debug!(error = %err, "published port: udp receive failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let existing = flows.lock().ok().and_then(|f| f.get(&client).cloned());
        let flow = match existing {
            Some(flow) => flow,
            None => {
                let Ok(flow) =
                    UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)).await
                else {
                    continue;
                };
                if flow.connect(target).await.is_err() {
                    continue;
                }
                let flow = Arc::new(flow);
                if let Ok(mut map) = flows.lock() {
                    map.insert(client, flow.clone());
                }
                let (back, reply, map) = (socket.clone(), flow.clone(), flows.clone());
                replies.spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, reply.recv(&mut buf)).await
                    {
                        let _ = back.send_to(&buf[..n], client).await;
                    }
                    if let Ok(mut map) = map.lock() {
                        map.remove(&client);
                    }
                });
                flow
            }
        };
        let _ = flow.send(&buf[..n]).await;
        while replies.try_join_next().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(ip: &str, port: &str) -> PortBinding {
        PortBinding {
            host_ip: ip.into(),
            host_port: port.into(),
        }
    }

    #[test]
    fn keys_default_to_tcp_and_refuse_sctp() {
        assert_eq!(parse_key("80").unwrap(), (80, Proto::Tcp));
        assert_eq!(parse_key("53/udp").unwrap(), (53, Proto::Udp));
        assert!(parse_key("1/sctp").is_err());
        assert!(parse_key("x/tcp").is_err());
    }

    #[test]
    fn publish_all_adds_exposed_ports_without_a_binding() {
        let mut bindings = BTreeMap::new();
        bindings.insert(
            "80/tcp".to_string(),
            Some(vec![binding("127.0.0.1", "8080")]),
        );
        let mut exposed = BTreeMap::new();
        exposed.insert("80/tcp".to_string(), serde_json::json!({}));
        exposed.insert("53/udp".to_string(), serde_json::json!({}));
        let reqs = requests(&bindings, true, &exposed).unwrap();
        assert_eq!(
            reqs,
            vec![
                Request {
                    port: 80,
                    proto: Proto::Tcp,
                    host_ip: Some("127.0.0.1".parse().unwrap()),
                    host_ports: Some((8080, 8080)),
                },
                Request {
                    port: 53,
                    proto: Proto::Udp,
                    host_ip: None,
                    host_ports: None,
                },
            ]
        );
        assert_eq!(requests(&bindings, false, &exposed).unwrap().len(), 1);
    }

    #[test]
    fn host_port_ranges_parse() {
        assert_eq!(parse_host_port("8000-8010").unwrap(), Some((8000, 8010)));
        assert_eq!(parse_host_port("").unwrap(), None);
        assert_eq!(parse_host_port("0").unwrap(), None);
        assert!(parse_host_port("9-8").is_err());
    }
}
