//! The host's port agent against the guest's real SSH server and UDP relay, on this host:
//! `rmachine_host::portagent::forward_port` binds `[::1]:PORT` (the "host" side) and carries
//! connections and datagrams through `sshd` (direct-tcpip, `rmachine-init udp-relay`) to
//! servers on `127.0.0.1:PORT` (the "guest" side, where the engine's proxy would listen).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rmachine_host::portagent::{forward_port, Proto, PublishedPort};
use rmachine_host::ssh::{generate_key, SshSession};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// A port number free for TCP and UDP on both loopbacks (probed, then released).
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = tcp.local_addr().expect("bound").port();
        let free = std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("::1", port)).is_ok()
            && std::net::UdpSocket::bind(("::1", port)).is_ok();
        if free {
            return port;
        }
    }
}

/// Starts the guest's SSH server with a fresh host key, authorizing a fresh client key;
/// returns a logged-in host session.
async fn guest_sshd(dir: &Path) -> Arc<SshSession> {
    let key_path = dir.join("id_ed25519");
    let line = generate_key(&key_path, "test").expect("write the client key");
    let authorized = russh::keys::PublicKey::from_openssh(&line).expect("our own public key");
    let host_key = rmachine_init::sshd::load_or_create_host_key(dir).expect("write the host key");
    let port = free_port();
    rmachine_init::sshd::start(host_key, vec![authorized], port)
        .await
        .expect("sshd listens");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    Arc::new(
        SshSession::connect(addr, &key_path)
            .await
            .expect("ssh login"),
    )
}

const V6: [IpAddr; 1] = [IpAddr::V6(Ipv6Addr::LOCALHOST)];

#[tokio::test]
async fn tcp_connections_reach_the_guest_loopback_port_through_ssh() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let ssh = guest_sshd(tmp.path()).await;
    let port = free_port();
    // The "guest" server: answers each connection with its request, uppercased.
    let server = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = server.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let _ = conn.write_all(&buf[..n].to_ascii_uppercase()).await;
            });
        }
    });
    let published = PublishedPort {
        proto: Proto::Tcp,
        host_port: port,
    };
    let (active, failures) = forward_port(&ssh, &V6, "c1", published, "unused").await;
    assert!(failures.is_empty(), "{failures:?}");
    let active = active.expect("[::1] was bound");
    assert_eq!(active.forward().addresses, V6.to_vec());
    for round in 0..3 {
        let mut client = TcpStream::connect(("::1", port)).await.expect("connect");
        client.write_all(b"hello").await.expect("send");
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("receive");
        assert_eq!(answer, b"HELLO", "round {round}");
    }
    // Closing the forward closes the host port.
    drop(active);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(TcpStream::connect(("::1", port)).await.is_err());
}

#[tokio::test]
async fn a_host_port_in_use_is_a_reported_failure() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let ssh = guest_sshd(tmp.path()).await;
    let port = free_port();
    let _taken = std::net::TcpListener::bind(("::1", port)).expect("bind");
    let published = PublishedPort {
        proto: Proto::Tcp,
        host_port: port,
    };
    let (active, failures) = forward_port(&ssh, &V6, "c2", published, "unused").await;
    assert!(active.is_none());
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(
        failures[0].to_string(),
        format!(
            "cannot publish [::1]:{port}/tcp of container c2: Address already in use (os error 98)"
        )
    );
}

#[tokio::test]
async fn udp_datagrams_round_trip_through_the_guest_relay() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let ssh = guest_sshd(tmp.path()).await;
    let port = free_port();
    // The "guest" server: echoes each datagram with a prefix.
    let server = UdpSocket::bind(("127.0.0.1", port)).await.expect("bind");
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = server.recv_from(&mut buf).await {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = server.send_to(&reply, peer).await;
        }
    });
    let relay = format!("{} udp-relay", env!("CARGO_BIN_EXE_rmachine-init"));
    let published = PublishedPort {
        proto: Proto::Udp,
        host_port: port,
    };
    let (active, failures) = forward_port(&ssh, &V6, "c3", published, &relay).await;
    assert!(failures.is_empty(), "{failures:?}");
    let _active = active.expect("[::1] was bound");
    // Two clients: each gets its own replies.
    let a = UdpSocket::bind("[::1]:0").await.expect("bind");
    let b = UdpSocket::bind("[::1]:0").await.expect("bind");
    for (client, text) in [(&a, "from a"), (&b, "from b"), (&a, "again a")] {
        client
            .send_to(text.as_bytes(), ("::1", port))
            .await
            .expect("send");
        let mut buf = [0u8; 1500];
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), client.recv_from(&mut buf))
            .await
            .expect("a reply within 10 s")
            .expect("receive");
        assert_eq!(&buf[..n], format!("echo:{text}").as_bytes());
    }
}

#[tokio::test]
async fn a_closed_guest_port_refuses_the_channel() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let ssh = guest_sshd(tmp.path()).await;
    let port = free_port();
    let err = ssh
        .direct_tcpip(port, "127.0.0.1:5000".parse().expect("literal"))
        .await
        .err()
        .expect("nothing listens there");
    assert!(format!("{err:?}").contains("ConnectFailed"), "{err:?}");
}
