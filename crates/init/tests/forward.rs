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
    let (addr, key_path) = guest_sshd_at(dir).await;
    Arc::new(
        SshSession::connect(addr, &key_path)
            .await
            .expect("ssh login"),
    )
}

/// Starts the guest's SSH server as `guest_sshd` does; returns its address and the client key.
async fn guest_sshd_at(dir: &Path) -> (SocketAddr, std::path::PathBuf) {
    let key_path = dir.join("id_ed25519");
    let line = generate_key(&key_path, "test").expect("write the client key");
    let authorized = russh::keys::PublicKey::from_openssh(&line).expect("our own public key");
    let host_key = rmachine_init::sshd::load_or_create_host_key(dir).expect("write the host key");
    let port = free_port();
    rmachine_init::sshd::start(host_key, vec![authorized], port)
        .await
        .expect("sshd listens");
    (([127, 0, 0, 1], port).into(), key_path)
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

/// Detaches a FUSE mount the test made, whatever happened to its daemon.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Mounts `host` at `guest` the way the port agent does (`sftpshare::serve_share` through the
/// guest's sshd and `rmachine-init sftp-mount`); returns once the guest reports it mounted.
async fn sftp_share(
    ssh: &Arc<SshSession>,
    host: &Path,
    guest: &Path,
    read_only: bool,
) -> (Unmount, tokio::task::JoinHandle<()>) {
    let control = guest.with_extension("control");
    (
        Unmount(guest.to_path_buf()),
        serve_sftp_share(ssh, host, guest, read_only, &control, 600).await,
    )
}

/// Starts serving `host` at `guest` through `ssh`; the guest's daemon listens in `control` and
/// exits after `idle_exit` seconds without a channel. Returns once the guest reports it mounted.
async fn serve_sftp_share(
    ssh: &Arc<SshSession>,
    host: &Path,
    guest: &Path,
    read_only: bool,
    control: &Path,
    idle_exit: u64,
) -> tokio::task::JoinHandle<()> {
    use rmachine_host::sftpshare::serve_share;
    let share = rmachine_driver::Share {
        tag: "rmshare0".into(),
        host_path: host.to_path_buf(),
        guest_path: guest.to_string_lossy().into_owned(),
        read_only,
        transport: rmachine_driver::ShareTransport::Sftp,
    };
    let (states, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let program = format!(
        "{} sftp-mount --control '{}' --idle-exit {idle_exit}",
        env!("CARGO_BIN_EXE_rmachine-init"),
        control.display()
    );
    let task = tokio::spawn(serve_share(ssh.clone(), share, program, states));
    let state = tokio::time::timeout(Duration::from_secs(20), heard.recv())
        .await
        .expect("the guest reports within 20 s")
        .expect("a state");
    assert!(state.mounted, "{state:?}");
    task
}

/// File operations on the mount, off the runtime: the FUSE daemon's answers need the server
/// task that runs on it.
async fn on_mount<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::time::timeout(Duration::from_secs(30), tokio::task::spawn_blocking(work))
        .await
        .expect("the mount answers within 30 s")
        .expect("no panic")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_folder_is_mounted_in_the_guest_over_the_ssh_connection() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().expect("temp dir");
    let ssh = guest_sshd(tmp.path()).await;
    let host = tmp.path().join("host");
    std::fs::create_dir(&host).expect("host folder");
    std::fs::write(host.join("hello"), "from the host").expect("host file");
    std::os::unix::fs::chown(host.join("hello"), Some(1234), Some(2345)).expect("chown");
    let guest = tmp.path().join("guest");
    let (_mount, task) = sftp_share(&ssh, &host, &guest, false).await;

    let g = guest.clone();
    on_mount(move || {
        assert_eq!(
            std::fs::read_to_string(g.join("hello")).expect("read"),
            "from the host"
        );
        let meta = std::fs::metadata(g.join("hello")).expect("stat");
        assert_eq!((meta.uid(), meta.gid()), (1234, 2345), "the host's owner");
        std::fs::create_dir(g.join("dir")).expect("mkdir");
        std::fs::write(g.join("dir/new"), "from the guest").expect("write");
        std::fs::rename(g.join("dir/new"), g.join("dir/renamed")).expect("rename");
        let err = std::fs::remove_dir(g.join("dir")).expect_err("not empty");
        assert_eq!(err.kind(), std::io::ErrorKind::DirectoryNotEmpty, "{err}");
        let mut names: Vec<String> = std::fs::read_dir(g.join("dir"))
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["renamed"]);
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(host.join("dir/renamed")).expect("on the host"),
        "from the guest"
    );
    let created = std::fs::metadata(host.join("dir/renamed")).expect("stat on the host");
    assert_eq!(
        created.uid(),
        nix::unistd::geteuid().as_raw(),
        "created by the serving user"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_share_refuses_writes_in_the_guest() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let ssh = guest_sshd(tmp.path()).await;
    let host = tmp.path().join("host");
    std::fs::create_dir(&host).expect("host folder");
    std::fs::write(host.join("keep"), "host").expect("host file");
    let guest = tmp.path().join("guest");
    let (_mount, task) = sftp_share(&ssh, &host, &guest, true).await;
    let g = guest.clone();
    on_mount(move || {
        assert_eq!(
            std::fs::read_to_string(g.join("keep")).expect("read"),
            "host"
        );
        let err = std::fs::write(g.join("new"), "x").expect_err("write refused");
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        let err = std::fs::remove_file(g.join("keep")).expect_err("remove refused");
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    })
    .await;
    assert!(!host.join("new").exists());
    assert_eq!(
        std::fs::read_to_string(host.join("keep")).expect("kept"),
        "host"
    );
    task.abort();
}

/// A TCP relay to `to` whose connections all drop at once when it is dropped: the machine's
/// SSH connection cut as a network failure or a sleeping host would.
struct Cuttable {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Cuttable {
    async fn to(to: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Cuttable { addr, task }
    }
}

impl Drop for Cuttable {
    fn drop(&mut self) {
        // Aborting the accept loop drops the JoinSet, which aborts every connection.
        self.task.abort();
    }
}

/// Processes whose command line holds `needle` (other than the test itself).
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && cmdline.contains("sftp-mount") {
            found.push(cmdline);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_share_survives_its_ssh_connection_dropping() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (sshd, key) = guest_sshd_at(tmp.path()).await;
    let host = tmp.path().join("host");
    std::fs::create_dir(&host).expect("host folder");
    std::fs::write(host.join("hello"), "before").expect("host file");
    let guest = tmp.path().join("guest");
    let control = tmp.path().join("control");
    let _mount = Unmount(guest.clone());
    let relay = Cuttable::to(sshd).await;
    let ssh = Arc::new(SshSession::connect(relay.addr, &key).await.expect("login"));
    // Idle time well above what this test does between two channels on a loaded machine: a
    // daemon that gave up meanwhile would make the old bind answer ENOTCONN.
    let task = serve_sftp_share(&ssh, &host, &guest, false, &control, 15).await;

    // A container's bind of the share, and a file it holds open for writing.
    let bind = tmp.path().join("container-bind");
    std::fs::create_dir(&bind).expect("bind point");
    let _bind = Unmount(bind.clone());
    nix::mount::mount(
        Some(&guest),
        &bind,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind mount");
    let b = bind.clone();
    let mut held = on_mount(move || {
        let mut file = std::fs::File::create(b.join("log")).expect("create");
        std::io::Write::write_all(&mut file, b"one\n").expect("write");
        file
    })
    .await;

    // The connection dies: the guest answers EIO at once, not a hang.
    drop(relay);
    let _ = task.await;
    let b = bind.clone();
    let err = on_mount(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::read_dir(&b) {
                Err(err) => return err,
                Ok(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Ok(_) => panic!("the share still answers without a connection"),
            }
        }
    })
    .await;
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // The daemon says so in its log.
    let log = rmachine_init::sftpfs::daemon_log(&control, &guest);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        if logged.contains("the host's channel ended") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{logged:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The channel's own `sftp-mount` has exited; only the daemon holding the mount is left.
    let needle = control.to_string_lossy().into_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_with(&needle);
        if left.iter().all(|p| p.contains("--serve")) && left.len() == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A new connection: the same mount, the same bind, the same open file work again.
    let relay = Cuttable::to(sshd).await;
    let ssh = Arc::new(SshSession::connect(relay.addr, &key).await.expect("login"));
    std::fs::write(host.join("hello"), "after").expect("host file");
    let task = serve_sftp_share(&ssh, &host, &guest, false, &control, 15).await;
    let b = bind.clone();
    held = on_mount(move || {
        assert_eq!(
            std::fs::read_to_string(b.join("hello")).expect("read through the old bind"),
            "after"
        );
        std::io::Write::write_all(&mut held, b"two\n").expect("write to the held file");
        held
    })
    .await;
    drop(held);
    assert_eq!(
        std::fs::read_to_string(host.join("log")).expect("on the host"),
        "one\ntwo\n"
    );

    // The idle exit is sftp_mount_exits_when_its_input_ends's, with a short idle time.
    task.abort();
    drop(relay);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve_daemon_pid(&needle)),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// The pid of the `sftp-mount --serve` daemon whose command line holds `needle`.
fn serve_daemon_pid(needle: &str) -> i32 {
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && cmdline.contains("sftp-mount") && cmdline.contains("--serve")
        {
            if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                return pid;
            }
        }
    }
    panic!("no sftp-mount --serve daemon for {needle}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_share_mounts_again_after_its_daemon_was_killed() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let ssh = guest_sshd(tmp.path()).await;
    let host = tmp.path().join("host");
    std::fs::create_dir(&host).expect("host folder");
    std::fs::write(host.join("hello"), "from the host").expect("host file");
    let guest = tmp.path().join("guest");
    let control = tmp.path().join("control");
    let _mount = Unmount(guest.clone());
    let task = serve_sftp_share(&ssh, &host, &guest, false, &control, 600).await;

    // The daemon dies without cleaning up: its FUSE mount is left dead (ENOTCONN).
    let pid = serve_daemon_pid(&control.to_string_lossy());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the daemon");
    let _ = task.await;
    let g = guest.clone();
    let err = on_mount(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::read_dir(&g) {
                Err(err) => return err,
                Ok(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Ok(_) => panic!("the mount still answers with its daemon killed"),
            }
        }
    })
    .await;
    // ECONNABORTED for a request the kernel had in flight when the daemon died.
    assert!(
        matches!(
            err.raw_os_error(),
            Some(libc::ENOTCONN | libc::ECONNABORTED)
        ),
        "{err}"
    );

    // The next channel's daemon detaches the dead mount and mounts the share again.
    let task = serve_sftp_share(&ssh, &host, &guest, false, &control, 600).await;
    let g = guest.clone();
    let read = on_mount(move || std::fs::read_to_string(g.join("hello"))).await;
    assert_eq!(read.expect("read through the new mount"), "from the host");
    task.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn sftp_mount_exits_when_its_input_ends() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let host = tmp.path().join("host");
    std::fs::create_dir(&host).expect("host folder");
    let guest = tmp.path().join("guest");
    let control = tmp.path().join("control");
    let _mount = Unmount(guest.clone());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rmachine-init"))
        .arg("sftp-mount")
        .arg("--control")
        .arg(&control)
        .arg("--idle-exit")
        .arg("2")
        .arg(&guest)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sftp-mount");
    // The server's stream is a pipe pair we can end: the server runs in its own task.
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    tokio::spawn(rmachine_host::sftpshare::serve(theirs, host.clone(), false));
    let (mut from_server, mut to_server) = tokio::io::split(ours);
    let mut to_guest = child.stdin.take().expect("stdin");
    let mut from_guest = child.stdout.take().expect("stdout");
    let server = tokio::spawn(async move {
        let _ = tokio::join!(
            tokio::io::copy(&mut from_server, &mut to_guest),
            tokio::io::copy(&mut from_guest, &mut to_server),
        );
    });
    let mut stderr = child.stderr.take().expect("stderr");
    let mut line = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(20), stderr.read(&mut line))
        .await
        .expect("mounted within 20 s")
        .expect("stderr");
    assert!(
        String::from_utf8_lossy(&line[..n]).contains("rmachine-sftp: mounted"),
        "{}",
        String::from_utf8_lossy(&line[..n])
    );
    // The host side goes away: the process's stdin reaches EOF.
    server.abort();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("sftp-mount exits at EOF")
        .expect("wait");
    assert!(status.success(), "{status}");

    // With no channel for its idle time, the daemon unmounts and exits: no orphan.
    let needle = control.to_string_lossy().into_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !processes_with(&needle).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            processes_with(&needle)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&format!(" {} ", guest.display())),
        "still mounted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_whose_starter_is_gone_keeps_its_mount() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let guest = tmp.path().join("guest");
    let control = tmp.path().join("control");
    let _mount = Unmount(guest.clone());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rmachine-init"))
        .arg("sftp-mount")
        .arg("--serve")
        .arg("--control")
        .arg(&control)
        .arg("--idle-exit")
        .arg("1")
        .arg(&guest)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sftp-mount --serve");
    // The channel that started it went away before it said it was ready.
    drop(child.stdout.take());
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the daemon exits after its idle time")
        .expect("wait");
    // It served until its idle time ran out and cleaned up, rather than dying on EPIPE with
    // its mount left dead.
    assert!(
        output.status.success(),
        "{}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&format!(" {} ", guest.display())),
        "still mounted"
    );
}

#[test]
fn sftp_mount_refuses_an_idle_time_of_zero() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rmachine-init"))
        .args(["sftp-mount", "--serve", "--idle-exit", "0"])
        .arg(tmp.path().join("guest"))
        .output()
        .expect("run sftp-mount");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--idle-exit 0: the idle time must be at least 1 second"),
        "{stderr}"
    );
    assert!(!tmp.path().join("guest").exists(), "nothing mounted");
}

/// The pid of the channel's own `sftp-mount` (the relay, not the daemon) for `needle`.
fn relay_pid(needle: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle)
            && cmdline.contains("sftp-mount")
            && !cmdline.contains("--serve")
            && !cmdline.starts_with("/bin/sh")
        {
            if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                return Some(pid);
            }
        }
    }
    None
}

/// The next state the share's server reports, within 30 s.
async fn next_state(
    heard: &mut tokio::sync::mpsc::UnboundedReceiver<rmachine_host::sftpshare::SftpShareState>,
) -> rmachine_host::sftpshare::SftpShareState {
    tokio::time::timeout(Duration::from_secs(30), heard.recv())
        .await
        .expect("a state within 30 s")
        .expect("a state")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_share_is_served_again_after_its_channel_command_was_killed() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let ssh = guest_sshd(tmp.path()).await;
    let host = tmp.path().join("host");
    std::fs::create_dir(&host).expect("host folder");
    std::fs::write(host.join("hello"), "first").expect("host file");
    let guest = tmp.path().join("guest");
    let control = tmp.path().join("control");
    let _mount = Unmount(guest.clone());
    let share = rmachine_driver::Share {
        tag: "rmshare0".into(),
        host_path: host.clone(),
        guest_path: guest.to_string_lossy().into_owned(),
        read_only: false,
        transport: rmachine_driver::ShareTransport::Sftp,
    };
    let program = format!(
        "{} sftp-mount --control '{}' --idle-exit 600",
        env!("CARGO_BIN_EXE_rmachine-init"),
        control.display()
    );
    let (states, mut heard) = tokio::sync::mpsc::unbounded_channel();
    // What the port agent runs for each share while its SSH connection is up.
    let task = tokio::spawn(rmachine_host::sftpshare::serve_share_while_connected(
        ssh.clone(),
        share,
        program,
        states,
    ));
    let state = next_state(&mut heard).await;
    assert!(state.mounted, "{state:?}");
    let g = guest.clone();
    let read = on_mount(move || std::fs::read_to_string(g.join("hello"))).await;
    assert_eq!(read.expect("read"), "first");

    // The guest's end of the channel dies; the connection and the daemon stay.
    let needle = control.to_string_lossy().into_owned();
    let daemon = serve_daemon_pid(&needle);
    let relay = relay_pid(&needle).expect("the channel's sftp-mount runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(relay),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the channel's sftp-mount");
    let state = next_state(&mut heard).await;
    assert!(!state.mounted, "{state:?}");
    let state = next_state(&mut heard).await;
    assert!(state.mounted, "served again: {state:?}");
    assert_eq!(serve_daemon_pid(&needle), daemon, "the same daemon");
    std::fs::write(host.join("hello"), "second").expect("host file");
    let g = guest.clone();
    let read = on_mount(move || std::fs::read_to_string(g.join("hello"))).await;
    assert_eq!(read.expect("read through the same mount"), "second");
    task.abort();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_channels_background_job_is_hung_up_then_killed() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let ssh = guest_sshd(tmp.path()).await;
    let (saved, pid_file) = (tmp.path().join("saved"), tmp.path().join("pid"));
    // The command exits at once; its job keeps the channel's output pipes, saves its work on
    // SIGHUP and carries on.
    let command = format!(
        "(trap 'echo saved > {}' HUP; while :; do sleep 0.2; done) & echo $! > {}",
        saved.display(),
        pid_file.display()
    );
    let channel = ssh.exec_channel(&command).await.expect("exec");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
        {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    channel.close().await.expect("close the channel");
    let closed = std::time::Instant::now();
    // Hung up first (a SIGKILL would leave nothing saved)...
    while std::fs::read_to_string(&saved).unwrap_or_default() != "saved\n" {
        assert!(
            closed.elapsed() < Duration::from_secs(10),
            "the job got no SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z "))
    };
    assert!(
        alive(pid),
        "killed at once rather than after a grace period"
    );
    // ...then killed once the grace period is over.
    while alive(pid) {
        assert!(
            closed.elapsed() < Duration::from_secs(20),
            "the job outlived the grace period"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `sftp-mount --serve` daemons whose command line holds `needle`.
fn serve_daemons(needle: &str) -> usize {
    processes_with(needle)
        .iter()
        .filter(|p| p.contains("--serve"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_channels_racing_for_one_path_share_one_daemon() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let ssh = guest_sshd(tmp.path()).await;
    let host = tmp.path().join("host");
    std::fs::create_dir(&host).expect("host folder");
    std::fs::write(host.join("hello"), "once").expect("host file");
    let guest = tmp.path().join("guest");
    let control = tmp.path().join("control");
    let _mount = Unmount(guest.clone());
    let needle = control.to_string_lossy().into_owned();
    // The test holds the starter lock until both starters wait on it, so that both find no
    // daemon and would each start one (without the lock they did, every time).
    let held = rmachine_init::sftpfs::lock_starter(&control, &guest, Duration::ZERO)
        .expect("the starter lock");
    let release = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while processes_with(&needle).len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the starters never ran: {:?}",
                processes_with(&needle)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Both are at (or a few instructions from) the lock.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(serve_daemons(&needle), 0, "a daemon started under the lock");
        drop(held);
    };
    let (a, b, ()) = tokio::join!(
        serve_sftp_share(&ssh, &host, &guest, false, &control, 600),
        serve_sftp_share(&ssh, &host, &guest, false, &control, 600),
        release,
    );
    assert_eq!(serve_daemons(&needle), 1, "{:?}", processes_with(&needle));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let ours = format!(" {} ", guest.display());
    assert_eq!(mounts.matches(&ours).count(), 1, "one mount: {mounts}");
    let g = guest.clone();
    let read = on_mount(move || std::fs::read_to_string(g.join("hello"))).await;
    assert_eq!(read.expect("read"), "once");
    a.abort();
    b.abort();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve_daemon_pid(&needle)),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_control_header_naming_another_path_is_refused_and_the_share_kept() {
    use std::io::{Read as _, Write as _};
    let tmp = tempfile::tempdir().expect("temp dir");
    let ssh = guest_sshd(tmp.path()).await;
    let host = tmp.path().join("host");
    std::fs::create_dir(&host).expect("host folder");
    std::fs::write(host.join("hello"), "kept").expect("host file");
    let guest = tmp.path().join("guest");
    let control = tmp.path().join("control");
    let _mount = Unmount(guest.clone());
    let task = serve_sftp_share(&ssh, &host, &guest, false, &control, 600).await;
    let socket = rmachine_init::sftpfs::control_socket(&control, &guest);
    for header in ["rw /somewhere/else\n", "ro /somewhere/else\n"] {
        let socket = socket.clone();
        let answer = tokio::task::spawn_blocking(move || {
            let mut conn = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            conn.write_all(header.as_bytes()).expect("header");
            let mut answer = [0u8; 1];
            conn.read_exact(&mut answer).expect("an answer");
            answer[0]
        })
        .await
        .expect("no panic");
        assert_eq!(answer, b'!', "{header:?}");
    }
    // Neither replaced the daemon nor touched its mount.
    let g = guest.clone();
    let read = on_mount(move || std::fs::read_to_string(g.join("hello"))).await;
    assert_eq!(read.expect("read"), "kept");
    let needle = control.to_string_lossy().into_owned();
    assert_eq!(serve_daemons(&needle), 1);
    task.abort();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve_daemon_pid(&needle)),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_connection_ends_the_share_loop_and_a_new_one_serves_the_same_mount() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (sshd, key) = guest_sshd_at(tmp.path()).await;
    let host = tmp.path().join("host");
    std::fs::create_dir(&host).expect("host folder");
    std::fs::write(host.join("hello"), "before").expect("host file");
    let guest = tmp.path().join("guest");
    let control = tmp.path().join("control");
    let _mount = Unmount(guest.clone());
    let share = rmachine_driver::Share {
        tag: "rmshare0".into(),
        host_path: host.clone(),
        guest_path: guest.to_string_lossy().into_owned(),
        read_only: false,
        transport: rmachine_driver::ShareTransport::Sftp,
    };
    let program = format!(
        "{} sftp-mount --control '{}' --idle-exit 600",
        env!("CARGO_BIN_EXE_rmachine-init"),
        control.display()
    );
    // What the port agent does on each new SSH connection.
    let serve = |ssh: Arc<SshSession>| {
        let (states, heard) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(rmachine_host::sftpshare::serve_share_while_connected(
            ssh,
            share.clone(),
            program.clone(),
            states,
        ));
        (task, heard)
    };
    let relay = Cuttable::to(sshd).await;
    let ssh = Arc::new(SshSession::connect(relay.addr, &key).await.expect("login"));
    let (task, mut heard) = serve(ssh);
    assert!(next_state(&mut heard).await.mounted);
    let needle = control.to_string_lossy().into_owned();
    let daemon = serve_daemon_pid(&needle);

    // The connection is cut: the loop reports the share down and ends (no retry on a dead
    // connection), the daemon keeps the mount.
    drop(relay);
    let state = next_state(&mut heard).await;
    assert!(!state.mounted, "{state:?}");
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the loop ends with its connection")
        .expect("no panic");

    // The agent's next connection serves the same mount again.
    let relay = Cuttable::to(sshd).await;
    let ssh = Arc::new(SshSession::connect(relay.addr, &key).await.expect("login"));
    std::fs::write(host.join("hello"), "after").expect("host file");
    let (task, mut heard) = serve(ssh);
    assert!(next_state(&mut heard).await.mounted);
    assert_eq!(serve_daemon_pid(&needle), daemon, "the same daemon");
    let g = guest.clone();
    let read = on_mount(move || std::fs::read_to_string(g.join("hello"))).await;
    assert_eq!(read.expect("read through the same mount"), "after");
    task.abort();
    drop(relay);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon),
        nix::sys::signal::Signal::SIGKILL,
    );
}
