//! The embedded DNS server of user-defined networks, as dockerd's (`libnetwork/resolver.go`).
//!
//! Data flow: at a container's start on a user-defined network, [`serve`] binds 127.0.0.11:53
//! (UDP and TCP) on a short-lived thread that joined the container's network namespace (a
//! socket stays in the namespace it was made in), then serves both sockets from the engine's
//! tokio runtime. An A or AAAA question for a name the engine knows on the container's network
//! (see [`Lookup`]) is answered here (A records, AAAA empty with NOERROR); every other question
//! goes to the upstream servers in turn, from the engine's own namespace for the host's loopback
//! servers and from the container's namespace for the others, as dockerd does. The tasks end
//! when the engine aborts them at the container's exit, together with its namespace.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{rdata, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::AbortHandle;

use super::{netns, NetworkError};

/// The address the embedded server listens on in every container's namespace.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// The TTL of the answers for containers (dockerd's `respTTL`).
const TTL: u32 = 600;

/// How long an upstream server gets for one query (dockerd's `extIOTimeout`).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(4);

/// How long an idle TCP client is kept.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// An upstream (external) name server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    /// Its address; queries go to port 53.
    pub addr: IpAddr,
    /// A loopback server of the host's own `resolv.conf`: reached from the engine's namespace.
    pub host_loopback: bool,
}

impl std::fmt::Display for Upstream {
    /// As dockerd's `ExtDNSEntry` in the `# ExtServers:` comment.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host_loopback {
            write!(f, "host({})", self.addr)
        } else {
            write!(f, "{}", self.addr)
        }
    }
}

/// Answers a lowercased name without its trailing dot: the addresses of the containers it
/// names on the asking container's networks, `None` if it names none.
pub type Lookup = Arc<dyn Fn(&str) -> Option<Vec<Ipv4Addr>> + Send + Sync>;

/// What one container's server knows.
struct Server {
    netns: PathBuf,
    lookup: Lookup,
    upstream: Vec<Upstream>,
    /// Whether questions for other names go upstream (not from an `--internal` network,
    /// whose containers have no way out).
    forward: bool,
}

/// Starts the embedded server in the namespace at `netns`; the returned tasks serve until
/// aborted.
pub fn serve(
    netns: &Path,
    lookup: Lookup,
    upstream: Vec<Upstream>,
    forward: bool,
) -> Result<Vec<AbortHandle>, NetworkError> {
    let address = SocketAddr::from((ADDRESS, 53));
    let bound = netns::run_in(netns, move || -> std::io::Result<_> {
        let udp = std::net::UdpSocket::bind(address)?;
        let tcp = std::net::TcpListener::bind(address)?;
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        Ok((udp, tcp))
    })?;
    let in_netns = |source| NetworkError::Io {
        path: netns.join("127.0.0.11:53"),
        source,
    };
    let (udp, tcp) = bound.map_err(in_netns)?;
    let udp = Arc::new(tokio::net::UdpSocket::from_std(udp).map_err(in_netns)?);
    let tcp = tokio::net::TcpListener::from_std(tcp).map_err(in_netns)?;
    let server = Arc::new(Server {
        netns: netns.to_path_buf(),
        lookup,
        upstream,
        forward,
    });
    let udp_task = tokio::spawn(serve_udp(udp, server.clone()));
    let tcp_task = tokio::spawn(serve_tcp(tcp, server));
    Ok(vec![udp_task.abort_handle(), tcp_task.abort_handle()])
}

async fn serve_udp(socket: Arc<tokio::net::UdpSocket>, server: Arc<Server>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(err) => {
                tracing::debug!(error = %err, "dns: udp receive failed");
                continue;
            }
        };
        let query = buf[..len].to_vec();
        let socket = socket.clone();
        let server = server.clone();
        tokio::spawn(async move {
            if let Some(reply) = server.answer(&query, false).await {
                if let Err(err) = socket.send_to(&reply, peer).await {
                    tracing::debug!(error = %err, "dns: udp reply failed");
                }
            }
        });
    }
}

async fn serve_tcp(listener: tokio::net::TcpListener, server: Arc<Server>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::debug!(error = %err, "dns: tcp accept failed");
                continue;
            }
        };
        let server = server.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            // RFC 7766: several length-prefixed queries may come on one connection.
            while let Ok(Ok(query)) = tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await
            {
                let Some(reply) = server.answer(&query, true).await else {
                    continue;
                };
                if write_framed(&mut stream, &reply).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn read_framed(stream: &mut tokio::net::TcpStream) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut msg = vec![0u8; usize::from(len)];
    stream.read_exact(&mut msg).await?;
    Ok(msg)
}

async fn write_framed(stream: &mut tokio::net::TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(std::io::Error::other)?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    stream.write_all(&framed).await
}

/// A reply to `query` with the header dockerd's `createRespMsg` sets.
fn reply_to(query: &Message) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_queries(query.queries().iter().cloned());
    reply
}

impl Server {
    /// The reply to the wire-format `query`, or none (unparsable, or no upstream answered).
    async fn answer(&self, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let message = Message::from_vec(query).ok()?;
        if message.message_type() != MessageType::Query {
            return None;
        }
        let question = message.queries().first()?.clone();
        if message.op_code() == OpCode::Query
            && matches!(question.query_type(), RecordType::A | RecordType::AAAA)
        {
            let name = question.name().to_ascii().to_ascii_lowercase();
            let name = name.trim_end_matches('.');
            if let Some(ips) = (self.lookup)(name) {
                let mut reply = reply_to(&message);
                if question.query_type() == RecordType::A {
                    for ip in ips {
                        reply.add_answer(Record::from_rdata(
                            question.name().clone(),
                            TTL,
                            RData::A(rdata::A(ip)),
                        ));
                    }
                }
                return reply.to_vec().ok();
            }
        }
        if !self.forward {
            let mut reply = reply_to(&message);
            reply.set_response_code(ResponseCode::ServFail);
            return reply.to_vec().ok();
        }
        self.forward(query, tcp).await
    }

    /// Asks each upstream server in turn; a failure, a refusal or a non-authoritative NXDOMAIN
    /// moves on to the next (dockerd's order), the last reply read is the one given.
    async fn forward(&self, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let mut last = None;
        for upstream in &self.upstream {
            let asked = tokio::time::timeout(UPSTREAM_TIMEOUT, self.ask(upstream, query, tcp));
            let reply = match asked.await {
                Ok(Ok(reply)) => reply,
                Ok(Err(err)) => {
                    tracing::debug!(server = %upstream, error = %err, "dns: upstream failed");
                    continue;
                }
                Err(_) => {
                    tracing::debug!(server = %upstream, "dns: upstream timed out");
                    continue;
                }
            };
            let Ok(parsed) = Message::from_vec(&reply) else {
                continue;
            };
            let next = match parsed.response_code() {
                ResponseCode::NoError => false,
                ResponseCode::NXDomain => !parsed.authoritative(),
                _ => true,
            };
            last = Some(reply);
            if !next {
                break;
            }
        }
        last
    }

    /// One exchange with `upstream` over UDP or TCP, from the namespace it must be reached in.
    async fn ask(&self, upstream: &Upstream, query: &[u8], tcp: bool) -> std::io::Result<Vec<u8>> {
        let target = SocketAddr::new(upstream.addr, 53);
        if tcp {
            let mut stream = if upstream.host_loopback {
                tokio::net::TcpStream::connect(target).await?
            } else {
                let netns = self.netns.clone();
                let std_stream = tokio::task::spawn_blocking(move || {
                    netns::run_in(&netns, move || {
                        std::net::TcpStream::connect_timeout(&target, UPSTREAM_TIMEOUT)
                    })
                })
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)??;
                std_stream.set_nonblocking(true)?;
                tokio::net::TcpStream::from_std(std_stream)?
            };
            write_framed(&mut stream, query).await?;
            return read_framed(&mut stream).await;
        }
        let local: SocketAddr = if target.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = if upstream.host_loopback {
            tokio::net::UdpSocket::bind(local).await?
        } else {
            let netns = self.netns.clone();
            let std_socket = tokio::task::spawn_blocking(move || {
                netns::run_in(&netns, move || std::net::UdpSocket::bind(local))
            })
            .await
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)??;
            std_socket.set_nonblocking(true)?;
            tokio::net::UdpSocket::from_std(std_socket)?
        };
        socket.connect(target).await?;
        socket.send(query).await?;
        let id = query.get(..2);
        let mut buf = vec![0u8; 65535];
        loop {
            let len = socket.recv(&mut buf).await?;
            // A datagram with another id is not this query's reply (a late or forged one).
            if buf.get(..2) == id && len >= 2 {
                return Ok(buf[..len].to_vec());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn server(forward: bool) -> Server {
        Server {
            netns: PathBuf::from("/nonexistent"),
            lookup: Arc::new(|name: &str| {
                (name == "web")
                    .then(|| vec![Ipv4Addr::new(10, 1, 2, 3), Ipv4Addr::new(10, 1, 2, 4)])
            }),
            upstream: Vec::new(),
            forward,
        }
    }

    fn ask(name: &str, kind: RecordType) -> Vec<u8> {
        let mut query = Message::new();
        query
            .set_id(4242)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        query.to_vec().unwrap()
    }

    #[tokio::test]
    async fn known_names_are_answered_here_and_unknown_ones_fail_without_upstream() {
        let s = server(false);
        let reply = Message::from_vec(&s.answer(&ask("WEB.", RecordType::A), false).await.unwrap())
            .unwrap();
        assert_eq!(reply.id(), 4242);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        let ips: Vec<_> = reply
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        assert_eq!(
            ips,
            [Ipv4Addr::new(10, 1, 2, 3), Ipv4Addr::new(10, 1, 2, 4)]
        );
        assert!(reply.answers().iter().all(|r| r.ttl() == TTL));
        // AAAA of a container: no record, no error (no IPv6 on these networks).
        let reply = Message::from_vec(
            &s.answer(&ask("web.", RecordType::AAAA), false)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert!(reply.answers().is_empty());
        // Not forwarded from an internal network: SERVFAIL, as dockerd without proxyDNS.
        let reply = Message::from_vec(
            &s.answer(&ask("example.com.", RecordType::A), false)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(reply.response_code(), ResponseCode::ServFail);
        // Garbage gets no reply.
        assert!(s.answer(b"\x01\x02", false).await.is_none());
    }
}
