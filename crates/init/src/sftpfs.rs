//! `rmachine-init sftp-mount`: the guest side of a share over SSH (transport `sftp`).
//!
//! The host's port agent opens an exec channel running this command; its stdin and stdout are
//! that channel, and the host answers SFTP on the other end, rooted at the shared folder
//! (`rmachine_host::sftpshare`). This side mounts a FUSE filesystem at the share's guest path
//! (as root, straight through `/dev/fuse` and mount(2): no libfuse, no fusermount) and turns
//! each kernel request into SFTP requests, so containers see the host folder as with the
//! other transports. Files are read and created by the host's agent, so they belong to the
//! user on the host; the ids the host reports are shown as they are.
//!
//! The mount follows the machine's SSH connection rather than one channel of it: the first
//! `sftp-mount` for a path starts a daemon (`sftp-mount --serve`, its own process group) that
//! holds the FUSE mount and listens on a root-only socket in `CONTROL_DIR`; every
//! `sftp-mount` (the first included) relays its stdin/stdout to that daemon and exits when
//! stdin reaches EOF or the daemon drops it. Between two channels (the SSH connection dropped,
//! the agent restarted) requests fail with `EIO` at once; the next channel's session replaces
//! the old one, files held open are opened again by name, and a container's bind of the share
//! works again without a restart. A daemon that no channel reaches for `IDLE_EXIT` unmounts
//! and exits; a channel for the same path in the other mode (`--ro`) replaces it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{ErrorKind, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request,
    SessionACL, TimeOrNow, WriteFlags,
};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags as SftpOpen, StatusCode};
use tokio::runtime::Handle as Runtime;

/// How long the kernel may keep names and attributes: short, since the host changes files
/// behind the guest's back.
const TTL: Duration = Duration::from_secs(1);

/// The largest write the kernel sends at once; one SFTP packet carries it (the server takes
/// packets of up to 256 KiB).
const MAX_WRITE: u32 = 128 * 1024;

/// How long one SFTP request may take before the kernel gets `EIO` (a large write under
/// emulation is slow).
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// The line the host's agent waits for on stderr (`rmachine_host::sftpshare::MOUNTED_LINE`).
pub const MOUNTED_LINE: &str = "rmachine-sftp: mounted";

/// Kernel request threads: SFTP round trips are the cost, so a few run at once.
const THREADS: usize = 4;

/// What can go wrong setting up a share over SFTP.
#[derive(Debug, thiserror::Error)]
pub enum SftpMountError {
    /// The mount point could not be made.
    #[error("cannot create the mount point {path}")]
    MountPoint {
        /// The guest path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The daemon holding the mount could not be reached or spoken to.
    #[error("cannot reach the daemon of the share on {path} (control socket {})", socket.display())]
    Control {
        /// The guest path.
        path: PathBuf,
        /// Its control socket (the starter lock sits beside it).
        socket: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The daemon could not listen for channels on its control socket.
    #[error("the daemon of the share on {path} cannot listen on {socket}")]
    Listen {
        /// The guest path.
        path: PathBuf,
        /// The control socket (or the directory made for it).
        socket: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The daemon holding the mount could not be started.
    #[error("cannot start the daemon of the share on {path}")]
    Daemon {
        /// The guest path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// FUSE refused the mount or its session failed.
    #[error("FUSE mount on {path} failed")]
    Fuse {
        /// The guest path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Where the daemons of the shares listen: only root reaches it (containers never see the
/// guest's `/run`).
pub const CONTROL_DIR: &str = "/run/rmachine/sftp";

/// How long a daemon keeps its mount with no host connection before it unmounts and exits.
pub const IDLE_EXIT: Duration = Duration::from_secs(600);

/// The daemon's answer to a channel it takes on.
const ACCEPTED: u8 = b'+';
/// The daemon's answer to a channel for the same path in the other mode: it unmounts and
/// exits, and the channel starts a new one.
const REFUSED: u8 = b'-';
/// The daemon's answer to a channel naming another path: it goes on serving its own (only a
/// hash collision of two paths, or a caller that is not ours, sends one).
const OTHER_PATH: u8 = b'!';

/// The control socket of the daemon serving `path`: named by a hash of the path (a socket
/// path has at most 107 bytes); the daemon checks the path itself on every connection.
pub fn control_socket(dir: &Path, path: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    // FNV-1a: stable across builds, unlike std's hasher.
    let hash = path
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    dir.join(format!("{hash:016x}.sock"))
}

/// The log of the daemon serving `path`, next to its control socket: once it is mounted
/// nobody reads its stdout or stderr any more.
pub fn daemon_log(dir: &Path, path: &Path) -> PathBuf {
    control_socket(dir, path).with_extension("log")
}

/// `rmachine-init sftp-mount`: carries the SFTP session on stdin/stdout to the daemon that
/// holds the FUSE mount at `path` (started first if none runs), until stdin reaches EOF or
/// the daemon drops the session. The mount outlives this process: when the SSH connection
/// drops, the daemon answers `EIO` until the host's next channel reaches it, and a
/// container's bind of the share works again without a restart.
pub fn run(
    path: &Path,
    read_only: bool,
    control: &Path,
    idle_exit: Duration,
) -> Result<(), SftpMountError> {
    run_waiting(path, read_only, control, idle_exit, CONTROL_WAIT)
}

/// How long a starter waits for the starter lock, for the daemon's answer on the control
/// socket and for a daemon it started to mount: a hung starter or daemon must not keep the
/// share's channel (and every later one) waiting forever.
pub const CONTROL_WAIT: Duration = Duration::from_secs(30);

/// [`run`], waiting at most `wait` for each step before the relay.
#[doc(hidden)]
pub fn run_waiting(
    path: &Path,
    read_only: bool,
    control: &Path,
    idle_exit: Duration,
    wait: Duration,
) -> Result<(), SftpMountError> {
    let socket = control_socket(control, path);
    let control_error = |source| SftpMountError::Control {
        path: path.to_owned(),
        socket: socket.clone(),
        source,
    };
    // One starter at a time per path: two channels racing here would start two daemons, the
    // second detaching the first's mount. Held until the daemon answers this channel.
    let starting = lock_starter(control, path, wait).map_err(control_error)?;
    let mut attempts = 0;
    let conn = loop {
        attempts += 1;
        let mut conn = match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(conn) => conn,
            Err(_) if attempts <= 2 => {
                start_daemon(path, read_only, control, idle_exit, wait)?;
                continue;
            }
            Err(source) => return Err(control_error(source)),
        };
        let mode = if read_only { "ro" } else { "rw" };
        let header = format!("{mode} {}\n", path.display());
        conn.set_read_timeout(Some(wait)).map_err(control_error)?;
        conn.write_all(header.as_bytes()).map_err(control_error)?;
        let mut answer = [0u8; 1];
        conn.read_exact(&mut answer).map_err(|err| {
            control_error(
                if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                    std::io::Error::new(
                        ErrorKind::TimedOut,
                        format!("the daemon did not answer within {} s", wait.as_secs_f32()),
                    )
                } else {
                    err
                },
            )
        })?;
        match answer[0] {
            ACCEPTED => {
                // The relay waits on the daemon as long as the session lasts.
                conn.set_read_timeout(None).map_err(control_error)?;
                break conn;
            }
            OTHER_PATH => {
                return Err(control_error(std::io::Error::other(format!(
                    "the daemon listening on {} serves another path",
                    socket.display()
                ))))
            }
            REFUSED if attempts <= 2 => {
                // The daemon unmounts and exits; wait for it to close the connection.
                let _ = conn.read(&mut answer);
            }
            _ => {
                return Err(control_error(std::io::Error::other(
                    "the share's daemon refused the channel",
                )))
            }
        }
    };
    drop(starting);
    // The host's agent waits for this line to report the share mounted.
    eprintln!("{MOUNTED_LINE}");
    relay(conn).map_err(control_error)
}

/// Takes the exclusive lock that lets one `sftp-mount` at a time find or start the daemon of
/// `path` (`<control>/<hash>.lock`, beside its socket), waiting up to `wait` for a starter
/// before us.
#[doc(hidden)]
pub fn lock_starter(
    control: &Path,
    path: &Path,
    wait: Duration,
) -> std::io::Result<nix::fcntl::Flock<std::fs::File>> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(control)?;
    let lock_path = control_socket(control, path).with_extension("lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|err| {
            std::io::Error::new(err.kind(), format!("{}: {err}", lock_path.display()))
        })?;
    let deadline = std::time::Instant::now() + wait;
    loop {
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((back, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                file = back;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(std::io::Error::new(
                    ErrorKind::TimedOut,
                    format!(
                        "another sftp-mount held the starter lock {} for {} s",
                        lock_path.display(),
                        wait.as_secs_f32()
                    ),
                ))
            }
            Err((_, errno)) => {
                return Err(std::io::Error::new(
                    std::io::Error::from(errno).kind(),
                    format!("cannot lock {}: {errno}", lock_path.display()),
                ))
            }
        }
    }
}

/// Copies stdin to `conn` and `conn` to stdout until either ends; returns once stdin has
/// reached EOF (the daemon then sees the session end) or the daemon has closed `conn`.
fn relay(conn: std::os::unix::net::UnixStream) -> std::io::Result<()> {
    use std::os::fd::AsFd as _;
    // Our own descriptor rather than std's `Stdout`, which is line-buffered and would hold
    // binary SFTP packets until a newline.
    let mut stdout = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let mut stdin = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut from_daemon = conn.try_clone()?;
    let mut to_daemon = conn;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let up = done_tx.clone();
    std::thread::spawn(move || {
        let _ = pump(&mut stdin, &mut to_daemon);
        let _ = to_daemon.shutdown(std::net::Shutdown::Write);
        let _ = up.send(());
    });
    std::thread::spawn(move || {
        let _ = pump(&mut from_daemon, &mut stdout);
        let _ = done_tx.send(());
    });
    // Whichever way ends first ends the session: the other thread may stay blocked on a
    // pipe that only our exit closes.
    let _ = done_rx.recv();
    Ok(())
}

/// Copies `from` to `to` until EOF with plain reads and writes: `std::io::copy` would splice
/// from the socket into the channel's pipe, and the guest's sshd (tokio, edge-triggered
/// epoll) was then never woken for those bytes.
fn pump(from: &mut impl std::io::Read, to: &mut impl std::io::Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
    }
}

/// Starts the daemon for `path` in its own process group (so the end of the SSH channel,
/// which kills this process's group, leaves it) and waits until it has mounted the share.
fn start_daemon(
    path: &Path,
    read_only: bool,
    control: &Path,
    idle_exit: Duration,
    wait: Duration,
) -> Result<(), SftpMountError> {
    use std::os::unix::process::CommandExt;
    let daemon_error = |source| SftpMountError::Daemon {
        path: path.to_owned(),
        source,
    };
    let exe = std::env::current_exe().map_err(daemon_error)?;
    let mut command = std::process::Command::new(exe);
    command.arg("sftp-mount").arg("--serve");
    if read_only {
        command.arg("--ro");
    }
    command
        .arg("--control")
        .arg(control)
        .arg("--idle-exit")
        .arg(idle_exit.as_secs().to_string())
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        // Its errors before it is ready reach the host as ours.
        .stderr(std::process::Stdio::inherit())
        .process_group(0);
    let mut child = command.spawn().map_err(daemon_error)?;
    // Its stdout ends once it has mounted (or died); a mount that hangs must not keep this
    // channel forever: the reader runs on a thread and is given up on after `wait`.
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(mut out) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut ready = String::new();
            let _ = out.read_to_string(&mut ready);
            let _ = tx.send(ready);
        });
    }
    let ready = match rx.recv_timeout(wait) {
        Ok(ready) => ready,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => String::new(),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            // Its own group (process_group(0) above): it and whatever it started.
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait();
            return Err(daemon_error(std::io::Error::new(
                ErrorKind::TimedOut,
                format!(
                    "the share's daemon did not mount within {} s (control socket {})",
                    wait.as_secs_f32(),
                    control_socket(control, path).display()
                ),
            )));
        }
    };
    if ready.trim() == DAEMON_READY {
        // It lives on alone; init (PID 1) reaps it.
        return Ok(());
    }
    let status = child.wait().map_err(daemon_error)?;
    Err(daemon_error(std::io::Error::other(format!(
        "the share's daemon exited ({status}) before mounting"
    ))))
}

/// What the daemon prints on its stdout once the share is mounted.
const DAEMON_READY: &str = "ready";

/// Ends with the wrapped stream: `ended` is notified when a read reaches EOF or fails, or
/// when the stream is dropped.
struct EndNotify<R> {
    inner: R,
    ended: Arc<tokio::sync::Notify>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for EndNotify<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        match &poll {
            std::task::Poll::Ready(Ok(())) if buf.filled().len() == before => {
                self.ended.notify_one()
            }
            std::task::Poll::Ready(Err(_)) => self.ended.notify_one(),
            _ => {}
        }
        poll
    }
}

// The SFTP session's task can end on a failed write (the relay gone: EPIPE) before it reads
// EOF; it drops the stream then, and that ends the session as surely as an EOF does.
impl<R> Drop for EndNotify<R> {
    fn drop(&mut self) {
        self.ended.notify_one()
    }
}

/// `rmachine-init sftp-mount --serve`: mounts `path` and serves it over whichever channel
/// reached it last, until nothing has reached it for `idle_exit` or it is unmounted.
pub fn serve(
    path: &Path,
    read_only: bool,
    control: &Path,
    idle_exit: Duration,
) -> Result<(), SftpMountError> {
    use std::os::unix::fs::DirBuilderExt;
    // The host mounts its shares as soon as the machine answers, which can be before the
    // boot's share phase has loaded FUSE.
    if let Err(err) = crate::modules::ensure_loaded("fuse") {
        tracing::warn!("share on {}: {}", path.display(), crate::error_chain(&err));
    }
    // A mount left by a daemon that is gone answers nothing but ENOTCONN (even to the
    // mkdir below, which then fails EEXIST): detach it first.
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    std::fs::create_dir_all(path).map_err(|source| SftpMountError::MountPoint {
        path: path.to_owned(),
        source,
    })?;
    let socket = control_socket(control, path);
    let listen_error = |source| SftpMountError::Listen {
        path: path.to_owned(),
        socket: socket.clone(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(control)
        .map_err(listen_error)?;
    // Only a dead daemon leaves it: a live one answered the connection that started us.
    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket).map_err(listen_error)?;
    listener.set_nonblocking(true).map_err(listen_error)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| SftpMountError::Fuse {
            path: path.to_owned(),
            source,
        })?;
    let link = Arc::new((Mutex::new(Link::default()), Condvar::new()));
    let fs = SftpFs::new(link.clone(), runtime.handle().clone(), read_only);
    let mut options = vec![
        MountOption::FSName("rmachine-sftp".to_owned()),
        MountOption::Subtype("sftp".to_owned()),
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    options.push(if read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    let mut config = Config::default();
    config.mount_options = options;
    // Containers run as any user; access is the host's to decide (as with 9p and virtio-fs).
    config.acl = SessionACL::All;
    config.n_threads = Some(THREADS);
    config.clone_fd = true;
    let fuse_error = |source| SftpMountError::Fuse {
        path: path.to_owned(),
        source,
    };
    let session = fuser::Session::new(fs, path, &config)
        .and_then(fuser::Session::spawn)
        .map_err(fuse_error)?;
    {
        use std::io::Write as _;
        // The channel that started us may be gone already: its closed pipe is no reason to
        // drop a working mount (println! would panic on EPIPE).
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{DAEMON_READY}").and_then(|()| out.flush());
    }
    // From here on nobody reads our stdout or stderr: the channel that started us may be
    // gone, and a write to its closed pipe would kill us.
    detach_output(&daemon_log(control, path));
    // Only now: before, the channel's stderr carries our errors to the host, and log lines
    // there would come before its `rmachine-sftp: mounted`.
    crate::logging::init();
    let outcome = runtime.block_on(serve_channels(
        path,
        read_only,
        listener,
        &socket,
        link.clone(),
        idle_exit,
        &session,
    ));
    if outcome.as_ref().ok() != Some(&Exit::Replaced) {
        let _ = std::fs::remove_file(&socket);
        set_link(&link, Link::default());
        let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    }
    // Not joined: a container's bind still holds the mount, and the kernel ends the FUSE
    // connection (its users get ENOTCONN) only when this process exits and closes it.
    std::mem::forget(session);
    outcome.map(|_| ())
}

/// Replaces the session and wakes the requests waiting for one.
fn set_link(link: &(Mutex<Link>, Condvar), new: Link) {
    *lock(&link.0) = new;
    link.1.notify_all();
}

/// Points stdout at `/dev/null` and stderr (our log's) at `log`.
fn detach_output(log: &Path) {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null");
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(log);
    let targets = [
        (libc::STDOUT_FILENO, null.as_ref().ok()),
        (
            libc::STDERR_FILENO,
            log.as_ref().ok().or(null.as_ref().ok()),
        ),
    ];
    for (fd, target) in targets {
        if let Some(target) = target {
            // SAFETY: dup2 on descriptors we own; `target` stays open for the call.
            unsafe { libc::dup2(target.as_raw_fd(), fd) };
        }
    }
}

/// Why a daemon stops serving.
#[derive(Debug, PartialEq, Eq)]
enum Exit {
    /// No channel for the idle time, or the mount went away: the caller cleans up.
    Done,
    /// A channel wants the path in the other mode: the mount and the socket are already
    /// gone, so the new daemon that channel starts is never undone by this one.
    Replaced,
}

/// Takes each channel that connects to `listener` as the session to serve (the newest wins),
/// until no channel has been there for `idle_exit`, the mount is gone, or a channel for the
/// other mode arrives.
async fn serve_channels(
    path: &Path,
    read_only: bool,
    listener: std::os::unix::net::UnixListener,
    socket: &Path,
    link: Arc<(Mutex<Link>, Condvar)>,
    idle_exit: Duration,
    fuse: &fuser::BackgroundSession,
) -> Result<Exit, SftpMountError> {
    use tokio::io::AsyncWriteExt as _;
    let listener =
        tokio::net::UnixListener::from_std(listener).map_err(|source| SftpMountError::Listen {
            path: path.to_owned(),
            socket: socket.to_owned(),
            source,
        })?;
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let mut idle_since = Some(tokio::time::Instant::now());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut conn, _)) = accepted else { continue };
                let header = match read_header(&mut conn).await {
                    Ok(header) => header,
                    Err(e) => {
                        tracing::warn!("sftp share: a bad control connection: {e}");
                        continue;
                    }
                };
                let (wanted_mode, named) = match header.split_once(' ') {
                    Some((mode @ ("ro" | "rw"), named)) => (mode, named),
                    _ => {
                        tracing::warn!("sftp share: a bad control header: {header:?}");
                        continue;
                    }
                };
                if named != path.to_string_lossy() {
                    tracing::warn!("sftp share: refused a channel for another path: {header:?}");
                    let _ = conn.write_all(&[OTHER_PATH]).await;
                    continue;
                }
                if wanted_mode != if read_only { "ro" } else { "rw" } {
                    let _ = std::fs::remove_file(socket);
                    set_link(&link, Link::default());
                    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
                    let _ = conn.write_all(&[REFUSED]).await;
                    return Ok(Exit::Replaced);
                }
                // Requests wait for this channel from now on, until its handshake ends.
                {
                    let mut current = lock(&link.0);
                    current.sftp = None;
                    current.connecting = true;
                }
                let not_connecting = || {
                    lock(&link.0).connecting = false;
                    link.1.notify_all();
                };
                if conn.write_all(&[ACCEPTED]).await.is_err() {
                    not_connecting();
                    continue;
                }
                let (read, write) = conn.into_split();
                let this_end = Arc::new(tokio::sync::Notify::new());
                let stream = tokio::io::join(
                    EndNotify { inner: read, ended: this_end.clone() },
                    write,
                );
                let sftp = RawSftpSession::new(stream);
                sftp.set_timeout(REQUEST_TIMEOUT_SECS);
                let handshake = tokio::time::timeout(Duration::from_secs(30), sftp.init()).await;
                if !matches!(handshake, Ok(Ok(_))) {
                    tracing::warn!("sftp share: the host did not answer the handshake");
                    not_connecting();
                    idle_since.get_or_insert_with(tokio::time::Instant::now);
                    continue;
                }
                let generation = {
                    let mut current = lock(&link.0);
                    current.generation += 1;
                    current.connecting = false;
                    // Dropping the previous session closes its channel's relay.
                    current.sftp = Some(Arc::new(sftp));
                    current.generation
                };
                link.1.notify_all();
                idle_since = None;
                let ended_tx = ended_tx.clone();
                tokio::spawn(async move {
                    this_end.notified().await;
                    let _ = ended_tx.send(generation);
                });
            }
            Some(generation) = ended_rx.recv() => {
                // Only the newest session counts: an older one ending changes nothing.
                let mut current = lock(&link.0);
                if current.generation == generation && current.sftp.is_some() {
                    tracing::info!("sftp share: the host's channel ended; waiting for the next");
                    current.sftp = None;
                    idle_since = Some(tokio::time::Instant::now());
                }
            }
            _ = tick.tick() => {
                if fuse.guard.is_finished() {
                    return Ok(Exit::Done);
                }
                if idle_since.is_some_and(|since| since.elapsed() >= idle_exit) {
                    tracing::info!("sftp share: no channel for {idle_exit:?}; unmounting");
                    return Ok(Exit::Done);
                }
            }
        }
    }
}

/// The first line a channel sends: `ro|rw PATH`.
async fn read_header(conn: &mut tokio::net::UnixStream) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt as _;
    let mut line = Vec::new();
    // Byte by byte: what follows the line is SFTP, which must stay in the socket.
    let read = async {
        loop {
            let byte = conn.read_u8().await?;
            if byte == b'\n' {
                return Ok::<_, std::io::Error>(());
            }
            if line.len() >= 4096 {
                return Err(std::io::Error::other("control header too long"));
            }
            line.push(byte);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    String::from_utf8(line).map_err(|_| std::io::Error::other("control header not UTF-8"))
}

/// The Linux errno for a failed SFTP request. SFTP v3 has few status codes; our host server
/// puts the errno's name first in the message (`ENOTEMPTY: …`), which is read when present.
fn errno(err: &SftpError) -> Errno {
    match err {
        SftpError::Status(status) => {
            let tag = status.error_message.split(':').next().unwrap_or_default();
            if let Some(errno) = errno_named(tag) {
                return errno;
            }
            match status.status_code {
                StatusCode::NoSuchFile => Errno::ENOENT,
                StatusCode::PermissionDenied => Errno::EACCES,
                StatusCode::OpUnsupported => Errno::ENOSYS,
                StatusCode::NoConnection | StatusCode::ConnectionLost => Errno::ENOTCONN,
                _ => Errno::EIO,
            }
        }
        SftpError::IO(_) => Errno::ENOTCONN,
        _ => Errno::EIO,
    }
}

/// The errno a name written by the host's server stands for.
pub fn errno_named(name: &str) -> Option<Errno> {
    Some(match name {
        "ENOENT" => Errno::ENOENT,
        "EACCES" => Errno::EACCES,
        "EEXIST" => Errno::EEXIST,
        "ENOTEMPTY" => Errno::ENOTEMPTY,
        "ENOTDIR" => Errno::ENOTDIR,
        "EISDIR" => Errno::EISDIR,
        "EINVAL" => Errno::EINVAL,
        "ENOSPC" => Errno::ENOSPC,
        "EROFS" => Errno::EROFS,
        "EXDEV" => Errno::EXDEV,
        "EFBIG" => Errno::EFBIG,
        "ENAMETOOLONG" => Errno::ENAMETOOLONG,
        "EBUSY" => Errno::EBUSY,
        _ => return None,
    })
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn system_time(secs: Option<u32>) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.unwrap_or(0).into())
}

/// The FUSE attributes of an SFTP answer.
pub fn file_attr(ino: u64, attrs: &FileAttributes) -> FileAttr {
    let mode = attrs.permissions.unwrap_or(0o100_644);
    let size = attrs.size.unwrap_or(0);
    let kind = kind_of(mode);
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: system_time(attrs.atime),
        mtime: system_time(attrs.mtime),
        ctime: system_time(attrs.mtime),
        crtime: system_time(attrs.mtime),
        kind,
        // The mask keeps the permission bits (the type is in `kind`).
        perm: (mode & 0o7777) as u16,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: attrs.uid.unwrap_or(0),
        gid: attrs.gid.unwrap_or(0),
        rdev: 0,
        blksize: MAX_WRITE,
        flags: 0,
    }
}

/// `name` under the share path `parent` (`/` is the share's top). SFTP names are UTF-8: a
/// name that is not is refused with `EILSEQ` rather than converted lossily, which would make
/// two different names one file on the host.
pub fn child(parent: &str, name: &OsStr) -> Result<String, Errno> {
    name.to_str()
        .map(|name| join(parent, name))
        .ok_or(Errno::EILSEQ)
}

fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// The inode numbers handed to the kernel and the share paths they stand for.
#[derive(Default)]
struct Inodes {
    paths: HashMap<u64, String>,
    numbers: HashMap<String, u64>,
    next: u64,
}

impl Inodes {
    fn new() -> Self {
        let mut inodes = Inodes {
            next: 2,
            ..Inodes::default()
        };
        inodes.paths.insert(1, "/".to_owned());
        inodes.numbers.insert("/".to_owned(), 1);
        inodes
    }

    fn number(&mut self, path: &str) -> u64 {
        if let Some(ino) = self.numbers.get(path) {
            return *ino;
        }
        let ino = self.next;
        self.next += 1;
        self.paths.insert(ino, path.to_owned());
        self.numbers.insert(path.to_owned(), ino);
        ino
    }

    /// Moves `from` and everything under it to `to`.
    fn rename(&mut self, from: &str, to: &str) {
        self.forget_path(to);
        let prefix = format!("{from}/");
        let moved: Vec<(String, u64)> = self
            .numbers
            .iter()
            .filter(|(path, _)| *path == from || path.starts_with(&prefix))
            .map(|(path, ino)| (path.clone(), *ino))
            .collect();
        for (old, ino) in moved {
            self.numbers.remove(&old);
            let new = format!("{to}{}", &old[from.len()..]);
            self.paths.insert(ino, new.clone());
            self.numbers.insert(new, ino);
        }
    }

    fn forget_path(&mut self, path: &str) {
        if let Some(ino) = self.numbers.remove(path) {
            self.paths.remove(&ino);
        }
    }
}

/// The SFTP session the filesystem speaks over now: replaced at each reconnection of the
/// host, `None` between two (requests then fail with `EIO` at once).
#[derive(Default)]
struct Link {
    /// Counts sessions, so a handle of an earlier one is never sent on a later one (the host
    /// numbers its handles per session: an old number could name another file).
    generation: u64,
    sftp: Option<Arc<RawSftpSession>>,
    /// A channel was taken on and its handshake is under way: requests wait for it rather
    /// than fail, so a share reported mounted answers at once.
    connecting: bool,
}

/// How long a request waits for a handshake under way.
const CONNECTING_WAIT: Duration = Duration::from_secs(30);

/// A file the kernel has open: its SFTP handle in session `generation`, and what it takes
/// to open it again in a later session.
struct OpenFile {
    generation: u64,
    handle: String,
    ino: INodeNo,
    flags: SftpOpen,
}

/// The FUSE filesystem: every request becomes SFTP requests on the current session.
struct SftpFs {
    link: Arc<(Mutex<Link>, Condvar)>,
    runtime: Runtime,
    read_only: bool,
    inodes: Mutex<Inodes>,
    /// Open files: FUSE file handle → SFTP handle.
    files: Mutex<HashMap<u64, OpenFile>>,
    /// Held while a file of an earlier session is opened again, so it is opened once.
    reopening: Mutex<()>,
    /// Open directories: FUSE handle → the entries listed at `opendir`.
    dirs: Mutex<HashMap<u64, Vec<(String, FileType)>>>,
    next_handle: Mutex<u64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking request thread must not take the whole share down with it.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn sftp_time(time: Option<TimeOrNow>) -> Option<u32> {
    let time = match time? {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => SystemTime::now(),
    };
    let secs = time.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(u32::try_from(secs).unwrap_or(u32::MAX))
}

impl SftpFs {
    fn new(link: Arc<(Mutex<Link>, Condvar)>, runtime: Runtime, read_only: bool) -> Self {
        SftpFs {
            link,
            runtime,
            read_only,
            inodes: Mutex::new(Inodes::new()),
            files: Mutex::new(HashMap::new()),
            reopening: Mutex::new(()),
            dirs: Mutex::new(HashMap::new()),
            next_handle: Mutex::new(1),
        }
    }

    fn path(&self, ino: INodeNo) -> Result<String, Errno> {
        lock(&self.inodes)
            .paths
            .get(&ino.0)
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    fn handle(&self) -> u64 {
        let mut next = lock(&self.next_handle);
        *next += 1;
        *next
    }

    /// The current session, or `EIO` while the host is away.
    fn sftp(&self) -> Result<Arc<RawSftpSession>, Errno> {
        self.current().map(|(_, sftp)| sftp)
    }

    fn current(&self) -> Result<(u64, Arc<RawSftpSession>), Errno> {
        let (link, changed) = &*self.link;
        let link = changed
            .wait_timeout_while(lock(link), CONNECTING_WAIT, |link| {
                link.sftp.is_none() && link.connecting
            })
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0;
        match &link.sftp {
            Some(sftp) => Ok((link.generation, sftp.clone())),
            None => Err(Errno::EIO),
        }
    }

    /// The session and the SFTP handle of open file `fh`. A file opened in an earlier session
    /// is opened again by its name (never created or truncated again), so a program that
    /// held it open across a reconnection goes on reading and writing it. Known limit (see
    /// docs/internals.md): a file the host replaced meanwhile under that name is the one used.
    fn sftp_handle(&self, fh: FileHandle) -> Result<(Arc<RawSftpSession>, String), Errno> {
        let (generation, sftp) = self.current()?;
        let stale = |files: &HashMap<u64, OpenFile>| match files.get(&fh.0) {
            None => Err(Errno::EBADF),
            Some(file) if file.generation == generation => Ok(Err(file.handle.clone())),
            Some(file) => Ok(Ok((file.ino, file.flags))),
        };
        let (ino, flags) = match stale(&lock(&self.files))? {
            Err(handle) => return Ok((sftp, handle)),
            Ok(reopen) => reopen,
        };
        let _reopening = lock(&self.reopening);
        // Another request thread may have opened it while this one waited.
        if let Err(handle) = stale(&lock(&self.files))? {
            return Ok((sftp, handle));
        }
        let path = self.path(ino)?;
        let flags = flags - (SftpOpen::CREATE | SftpOpen::TRUNCATE | SftpOpen::EXCLUDE);
        let handle = self
            .call(sftp.open(path, flags, FileAttributes::empty()))?
            .handle;
        match lock(&self.files).get_mut(&fh.0) {
            Some(file) => {
                file.generation = generation;
                file.handle = handle.clone();
            }
            None => {
                // Released meanwhile: nothing else would close this one.
                let _ = self.call(sftp.close(handle));
                return Err(Errno::EBADF);
            }
        }
        Ok((sftp, handle))
    }

    /// Records a file the kernel now has open.
    fn opened(&self, generation: u64, handle: String, ino: INodeNo, flags: SftpOpen) -> u64 {
        let fh = self.handle();
        let file = OpenFile {
            generation,
            handle,
            ino,
            flags,
        };
        lock(&self.files).insert(fh, file);
        fh
    }

    fn writable(&self) -> Result<(), Errno> {
        if self.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// Runs one SFTP request to its answer on the session's runtime.
    fn call<T, F>(&self, request: F) -> Result<T, Errno>
    where
        F: std::future::Future<Output = Result<T, SftpError>>,
    {
        self.runtime.block_on(request).map_err(|e| {
            let errno = errno(&e);
            if errno == Errno::EIO || errno == Errno::ENOTCONN {
                tracing::warn!("sftp share: {e}");
            }
            errno
        })
    }

    /// `lstat` of a share path, as an entry with its inode number.
    fn entry(&self, path: &str) -> Result<FileAttr, Errno> {
        let sftp = self.sftp()?;
        let attrs = self.call(sftp.lstat(path.to_owned()))?.attrs;
        let ino = lock(&self.inodes).number(path);
        Ok(file_attr(ino, &attrs))
    }
}

impl Filesystem for SftpFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self
            .path(parent)
            .and_then(|p| child(&p, name).and_then(|path| self.entry(&path)))
        {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        // `fstat` on an open file asks about the file itself, even if its name has gone; a
        // handle that is not an open file (a directory's) falls back to the path.
        let handle = fh.and_then(|fh| self.sftp_handle(fh).ok());
        let result = match handle {
            Some((sftp, handle)) => self
                .call(sftp.fstat(handle))
                .map(|reply| file_attr(ino.0, &reply.attrs)),
            None => self.path(ino).and_then(|p| self.entry(&p)),
        };
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = (|| {
            self.writable()?;
            let path = self.path(ino)?;
            let current = self.entry(&path)?;
            // The host's user owns every file of the share; it cannot give one away, as a
            // non-root virtiofsd could not either.
            if uid.is_some_and(|u| u != current.uid) || gid.is_some_and(|g| g != current.gid) {
                return Err(Errno::EPERM);
            }
            let mut attrs = FileAttributes::empty();
            attrs.size = size;
            attrs.permissions = mode.map(|m| m & 0o1777);
            let (atime, mtime) = (sftp_time(atime), sftp_time(mtime));
            if atime.is_some() || mtime.is_some() {
                // SFTP v3 sets both times at once.
                attrs.atime = atime.or(Some(
                    current
                        .atime
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
                ));
                attrs.mtime = mtime.or(Some(
                    current
                        .mtime
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
                ));
            }
            match fh.map(|fh| self.sftp_handle(fh)).transpose()? {
                Some((sftp, handle)) => self.call(sftp.fsetstat(handle, attrs))?,
                None => self.call(self.sftp()?.setstat(path.clone(), attrs))?,
            };
            self.entry(&path)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let result = self.path(ino).and_then(|path| {
            let sftp = self.sftp()?;
            let name = self.call(sftp.readlink(path))?;
            name.files
                .into_iter()
                .next()
                .map(|f| f.filename)
                .ok_or(Errno::EIO)
        });
        match result {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = (|| {
            self.writable()?;
            let path = child(&self.path(parent)?, name)?;
            let mut attrs = FileAttributes::empty();
            attrs.permissions = Some(mode & !umask & 0o1777);
            let sftp = self.sftp()?;
            self.call(sftp.mkdir(path.clone(), attrs))?;
            self.entry(&path)
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = (|| {
            self.writable()?;
            let path = child(&self.path(parent)?, name)?;
            let sftp = self.sftp()?;
            self.call(sftp.remove(path.clone()))?;
            lock(&self.inodes).forget_path(&path);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = (|| {
            self.writable()?;
            let path = child(&self.path(parent)?, name)?;
            let sftp = self.sftp()?;
            self.call(sftp.rmdir(path.clone()))?;
            lock(&self.inodes).forget_path(&path);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let result = (|| {
            self.writable()?;
            let path = child(&self.path(parent)?, link_name)?;
            let sftp = self.sftp()?;
            let target = target.to_str().ok_or(Errno::EILSEQ)?.to_owned();
            self.call(sftp.symlink(path.clone(), target))?;
            self.entry(&path)
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = (|| {
            self.writable()?;
            // RENAME_EXCHANGE and RENAME_NOREPLACE have no SFTP v3 request.
            if flags != RenameFlags::empty() {
                return Err(Errno::EINVAL);
            }
            let from = child(&self.path(parent)?, name)?;
            let to = child(&self.path(newparent)?, newname)?;
            let sftp = self.sftp()?;
            self.call(sftp.rename(from.clone(), to.clone()))?;
            lock(&self.inodes).rename(&from, &to);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let result = (|| {
            let mut pflags = match flags.acc_mode() {
                OpenAccMode::O_RDONLY => SftpOpen::READ,
                OpenAccMode::O_WRONLY => SftpOpen::WRITE,
                OpenAccMode::O_RDWR => SftpOpen::READ | SftpOpen::WRITE,
            };
            if flags.0 & libc::O_TRUNC != 0 {
                pflags |= SftpOpen::TRUNCATE;
            }
            if pflags.intersects(SftpOpen::WRITE | SftpOpen::TRUNCATE) {
                self.writable()?;
            }
            let path = self.path(ino)?;
            let (generation, sftp) = self.current()?;
            let handle = self
                .call(sftp.open(path, pflags, FileAttributes::empty()))?
                .handle;
            Ok(self.opened(generation, handle, ino, pflags))
        })();
        match result {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = (|| {
            self.writable()?;
            let path = child(&self.path(parent)?, name)?;
            let mut pflags = SftpOpen::CREATE | SftpOpen::WRITE | SftpOpen::READ;
            if flags & libc::O_EXCL != 0 {
                pflags |= SftpOpen::EXCLUDE;
            }
            if flags & libc::O_TRUNC != 0 {
                pflags |= SftpOpen::TRUNCATE;
            }
            let mut attrs = FileAttributes::empty();
            attrs.permissions = Some(mode & !umask & 0o1777);
            let (generation, sftp) = self.current()?;
            let handle = self.call(sftp.open(path.clone(), pflags, attrs))?.handle;
            let attr = match self.entry(&path) {
                Ok(attr) => attr,
                Err(e) => {
                    // The kernel gets no handle, so nothing would ever close the host's.
                    let _ = self.call(sftp.close(handle));
                    return Err(e);
                }
            };
            let fh = self.opened(generation, handle, attr.ino, pflags);
            Ok((attr, fh))
        })();
        match result {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let result = (|| {
            let (sftp, handle) = self.sftp_handle(fh)?;
            let mut data = Vec::with_capacity(size as usize);
            // A server may answer with less than asked; the kernel takes a short read as the
            // end of the file, so ask again until it is full or at the end.
            while data.len() < size as usize {
                let want = size - data.len() as u32;
                let at = offset + data.len() as u64;
                match self.runtime.block_on(sftp.read(handle.clone(), at, want)) {
                    Ok(chunk) if chunk.data.is_empty() => break,
                    Ok(chunk) => data.extend_from_slice(&chunk.data),
                    Err(SftpError::Status(status)) if status.status_code == StatusCode::Eof => {
                        break
                    }
                    Err(e) => return Err(errno(&e)),
                }
            }
            Ok(data)
        })();
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = (|| {
            self.writable()?;
            let (sftp, handle) = self.sftp_handle(fh)?;
            self.call(sftp.write(handle, offset, data.to_vec()))?;
            u32::try_from(data.len()).map_err(|_| Errno::EFBIG)
        })();
        match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Every write has reached the host when it was answered.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let file = lock(&self.files).remove(&fh.0);
        // A handle of an earlier session died with it; there is nothing to close.
        if let (Some(file), Ok((generation, sftp))) = (file, self.current()) {
            if file.generation == generation {
                if let Err(e) = self.call(sftp.close(file.handle)) {
                    reply.error(e);
                    return;
                }
            }
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = (|| {
            let path = self.path(ino)?;
            let sftp = self.sftp()?;
            let handle = self.call(sftp.opendir(path))?.handle;
            let mut entries = Vec::new();
            loop {
                match self.runtime.block_on(sftp.readdir(handle.clone())) {
                    Ok(name) => entries.extend(name.files.into_iter().filter_map(|f| {
                        let mode = f.attrs.permissions.unwrap_or(0o100_644);
                        (f.filename != "." && f.filename != "..")
                            .then(|| (f.filename, kind_of(mode)))
                    })),
                    Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => break,
                    Err(e) => {
                        let _ = self.runtime.block_on(sftp.close(handle));
                        return Err(errno(&e));
                    }
                }
            }
            let _ = self.runtime.block_on(sftp.close(handle));
            let fh = self.handle();
            lock(&self.dirs).insert(fh, entries);
            Ok(fh)
        })();
        match result {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Ok(dir) = self.path(ino) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let dirs = lock(&self.dirs);
        let Some(entries) = dirs.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        let parent_ino = {
            let parent = Path::new(&dir)
                .parent()
                .map_or("/".to_owned(), |p| p.to_string_lossy().into_owned());
            lock(&self.inodes).number(&parent)
        };
        let dots = [
            (ino.0, FileType::Directory, ".".to_owned()),
            (parent_ino, FileType::Directory, "..".to_owned()),
        ];
        let named = entries.iter().map(|(name, kind)| {
            let ino = lock(&self.inodes).number(&join(&dir, name));
            (ino, *kind, name.clone())
        });
        for (index, (entry_ino, kind, name)) in dots
            .into_iter()
            .chain(named)
            .enumerate()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        {
            if reply.add(INodeNo(entry_ino), index as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A starter holding the lock forever does not keep the next one waiting forever; the
    /// error names the lock.
    #[test]
    fn a_held_starter_lock_is_given_up_on_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("control");
        let path = Path::new("/mnt/share");
        let held = lock_starter(&control, path, Duration::ZERO).unwrap();
        let started = std::time::Instant::now();
        let err = lock_starter(&control, path, Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        let lock = control_socket(&control, path).with_extension("lock");
        assert!(
            err.to_string().contains(&lock.display().to_string()),
            "{err}"
        );
        drop(held);
        lock_starter(&control, path, Duration::ZERO).unwrap();
    }

    /// A daemon that accepts the connection and never answers does not keep the starter
    /// forever; the error names the control socket.
    #[test]
    fn a_daemon_that_never_answers_is_given_up_on() {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("control");
        let path = Path::new("/mnt/share");
        std::fs::create_dir(&control).unwrap();
        let socket = control_socket(&control, path);
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let mute = std::thread::spawn(move || listener.accept().map(|(conn, _)| conn));
        let err = run_waiting(
            path,
            false,
            &control,
            Duration::from_secs(60),
            Duration::from_millis(300),
        )
        .unwrap_err();
        let text = format!("{err}: {:?}", std::error::Error::source(&err));
        assert!(text.contains(&socket.display().to_string()), "{text}");
        assert!(text.contains("did not answer"), "{text}");
        drop(mute.join());
    }

    #[test]
    fn renames_move_every_inode_below() {
        let mut inodes = Inodes::new();
        let dir = inodes.number("/a");
        let file = inodes.number("/a/f");
        let other = inodes.number("/ab");
        inodes.rename("/a", "/b");
        assert_eq!(inodes.paths[&dir], "/b");
        assert_eq!(inodes.paths[&file], "/b/f");
        assert_eq!(inodes.paths[&other], "/ab");
        assert_eq!(inodes.number("/b/f"), file);
        assert_ne!(inodes.number("/a/f"), file);
    }

    #[test]
    fn attributes_keep_the_hosts_owner_and_the_type() {
        let attrs = FileAttributes {
            size: Some(1000),
            uid: Some(501),
            gid: Some(20),
            permissions: Some(0o120_777),
            ..FileAttributes::empty()
        };
        let attr = file_attr(7, &attrs);
        assert_eq!((attr.uid, attr.gid), (501, 20));
        assert_eq!(attr.kind, FileType::Symlink);
        assert_eq!(attr.perm, 0o777);
        assert_eq!(attr.blocks, 2);
        assert_eq!(child("/", OsStr::new("x")), Ok("/x".to_owned()));
        assert_eq!(child("/x", OsStr::new("y")), Ok("/x/y".to_owned()));
        {
            use std::os::unix::ffi::OsStrExt;
            // Lossily both would be "/x/a\u{fffd}": one host file for two guest names.
            assert_eq!(child("/x", OsStr::from_bytes(b"a\xff")), Err(Errno::EILSEQ));
            assert_eq!(child("/x", OsStr::from_bytes(b"a\xfe")), Err(Errno::EILSEQ));
        }
    }

    #[test]
    fn the_hosts_errno_names_are_read_first() {
        let status = |code, message: &str| {
            SftpError::Status(russh_sftp::protocol::Status {
                id: 1,
                status_code: code,
                error_message: message.to_owned(),
                language_tag: "en-US".to_owned(),
            })
        };
        assert_eq!(
            errno(&status(
                StatusCode::Failure,
                "ENOTEMPTY: Directory not empty"
            )),
            Errno::ENOTEMPTY
        );
        assert_eq!(
            errno(&status(
                StatusCode::PermissionDenied,
                "EROFS: the share is read-only"
            )),
            Errno::EROFS
        );
        assert_eq!(
            errno(&status(StatusCode::NoSuchFile, "gone")),
            Errno::ENOENT
        );
        assert_eq!(errno(&status(StatusCode::Failure, "odd")), Errno::EIO);
    }
}
