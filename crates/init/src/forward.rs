//! Port forwarding for the host's port agent: SSH `direct-tcpip` channels to guest loopback
//! ports, and the UDP relay (`rmachine-init udp-relay PORT`).
//!
//! The engine's userland proxy listens on the guest's `127.0.0.1:HOSTPORT` for every published
//! port; the host agent reaches it through the machine's SSH connection. TCP rides one
//! `direct-tcpip` channel per connection (RFC 4254 §7.2), which the SSH server opens only to
//! loopback: the agent needs nothing else, and a forward to any other address would make the
//! guest a relay into networks the user never published. UDP has no SSH channel type, so the
//! agent runs the relay as an exec command and frames datagrams over its stdin/stdout (see
//! [`rmachine_guest_config::udp_frame`]).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rmachine_guest_config::udp_frame::{self, FrameDecoder};
use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelOpenFailure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// How long a UDP flow with no traffic either way keeps its guest socket.
pub const UDP_FLOW_IDLE: Duration = Duration::from_secs(120);

/// The loopback address a `direct-tcpip` target names, or `None` for any other host.
pub fn loopback_target(host: &str, port: u32) -> Option<SocketAddr> {
    let port = u16::try_from(port).ok()?;
    let ip: std::net::IpAddr = match host {
        "localhost" => Ipv4Addr::LOCALHOST.into(),
        other => other.trim_matches(['[', ']']).parse().ok()?,
    };
    ip.is_loopback().then_some(SocketAddr::new(ip, port))
}

/// Answers a `direct-tcpip` open: connects to the loopback target first (so a closed port is
/// refused as "connect failed", as OpenSSH does), then pumps bytes both ways until either side
/// closes.
pub async fn direct_tcpip(
    channel: Channel<Msg>,
    host: String,
    port: u32,
    reply: ChannelOpenHandle,
) {
    let Some(target) = loopback_target(&host, port) else {
        tracing::warn!("sshd: direct-tcpip to {host}:{port} refused: only loopback ports");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        return;
    };
    let mut tcp = match TcpStream::connect(target).await {
        Ok(tcp) => tcp,
        Err(err) => {
            tracing::debug!("sshd: direct-tcpip to {target}: {err}");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    reply.accept().await;
    let mut stream = channel.into_stream();
    if let Err(err) = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await {
        tracing::debug!("sshd: direct-tcpip to {target} ended: {err}");
    }
}

/// `rmachine-init udp-relay PORT`: frames from stdin become datagrams to `127.0.0.1:PORT`, one
/// socket per flow; replies go back to stdout framed with their flow id. Ends at stdin's EOF.
pub async fn udp_relay(port: u16) -> std::io::Result<()> {
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(256);
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(frame) = out_rx.recv().await {
            if stdout.write_all(&frame).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    let mut flows: HashMap<u32, Arc<UdpSocket>> = HashMap::new();
    let (gone_tx, mut gone_rx) = mpsc::unbounded_channel::<u32>();
    let mut stdin = tokio::io::stdin();
    let mut decoder = FrameDecoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            read = stdin.read(&mut buf) => {
                let n = read?;
                if n == 0 {
                    break;
                }
                decoder.push(&buf[..n]);
                while let Some((flow, payload)) = decoder.next_frame() {
                    let socket = match flows.get(&flow) {
                        Some(socket) => socket.clone(),
                        None => {
                            let socket = Arc::new(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?);
                            socket.connect(target).await?;
                            flows.insert(flow, socket.clone());
                            tokio::spawn(pump_replies(flow, socket.clone(), out_tx.clone(), gone_tx.clone()));
                            socket
                        }
                    };
                    // A refused or dropped datagram is what UDP does; the flow stays.
                    let _ = socket.send(&payload).await;
                }
            }
            Some(flow) = gone_rx.recv() => {
                flows.remove(&flow);
            }
        }
    }
    drop(flows);
    drop(out_tx);
    let _ = writer.await;
    Ok(())
}

/// Sends a flow's replies back as frames until it has been idle for [`UDP_FLOW_IDLE`].
async fn pump_replies(
    flow: u32,
    socket: Arc<UdpSocket>,
    out: mpsc::Sender<Vec<u8>>,
    gone: mpsc::UnboundedSender<u32>,
) {
    let mut buf = vec![0u8; udp_frame::MAX_DATAGRAM];
    loop {
        match tokio::time::timeout(UDP_FLOW_IDLE, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                if out.send(udp_frame::encode(flow, &buf[..n])).await.is_err() {
                    break;
                }
            }
            // ECONNREFUSED from an earlier send (nothing listening yet): keep the flow.
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_idle) => break,
        }
    }
    let _ = gone.send(flow);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_forwarded() {
        assert_eq!(
            loopback_target("127.0.0.1", 8080),
            Some("127.0.0.1:8080".parse().expect("literal"))
        );
        assert_eq!(
            loopback_target("localhost", 80),
            Some("127.0.0.1:80".parse().expect("literal"))
        );
        assert_eq!(
            loopback_target("::1", 53),
            Some("[::1]:53".parse().expect("literal"))
        );
        assert_eq!(loopback_target("10.0.2.2", 80), None);
        assert_eq!(loopback_target("example.com", 80), None);
        assert_eq!(loopback_target("127.0.0.1", 70000), None);
    }
}
