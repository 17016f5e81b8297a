//! Moving bytes between a running container and the engine: output pumps (json-file log and
//! attached clients) and stdin writers, for pipes and for a PTY master.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::warn;

use super::logs::LogWriter;
use super::{Container, Output, StdinEvent, StreamKind};

/// The container's log, shared by its output pumps (absent when it could not be opened).
pub type SharedLog = Arc<Mutex<Option<LogWriter>>>;

/// Copies one output stream to the log and the subscribers until end-of-file.
pub async fn pump<R: AsyncRead + Unpin>(
    c: Arc<Container>,
    log: SharedLog,
    mut reader: R,
    stream: StreamKind,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => deliver(&c, &log, stream, &buf[..n]).await,
        }
    }
    finish_log(&c, &log, stream);
}

async fn deliver(c: &Container, log: &Mutex<Option<LogWriter>>, stream: StreamKind, data: &[u8]) {
    if let Some(writer) = log.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        if let Err(err) = writer.write(stream, data) {
            warn!(container = %c.id, error = %err, "cannot write the container log");
        }
    }
    c.publish(&Output {
        stream,
        data: Bytes::copy_from_slice(data),
    })
    .await;
}

fn finish_log(c: &Container, log: &Mutex<Option<LogWriter>>, stream: StreamKind) {
    if let Some(writer) = log.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        if let Err(err) = writer.finish(stream) {
            warn!(container = %c.id, error = %err, "cannot write the container log");
        }
    }
}

/// Feeds the container's stdin pipe; closes it on [`StdinEvent::Close`].
pub async fn write_stdin(
    mut stdin: tokio::process::ChildStdin,
    mut rx: mpsc::UnboundedReceiver<StdinEvent>,
) {
    while let Some(event) = rx.recv().await {
        match event {
            StdinEvent::Data(data) => {
                if stdin.write_all(&data).await.is_err() {
                    break;
                }
            }
            StdinEvent::Close => break,
        }
    }
}

/// Makes the PTY master non-blocking and registers it with the reactor.
pub fn pty_io(master: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    let flags = nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    // SAFETY: `master` is an open OwnedFd moved into the AsyncFd, so it stays open and refers
    // to the same PTY for the AsyncFd's whole life.
    unsafe { AsyncFd::register(master) }.map_err(std::io::Error::from)
}

/// Copies PTY output to the log and the subscribers until the PTY closes.
pub async fn pump_pty(c: Arc<Container>, log: SharedLog, pty: Arc<AsyncFd<OwnedFd>>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let Ok(mut guard) = pty.readable().await else {
            break;
        };
        match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf).map_err(Into::into)) {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => deliver(&c, &log, StreamKind::Stdout, &buf[..n]).await,
            // EIO: every slave descriptor is closed, i.e. the container is gone.
            Ok(Err(_)) => break,
            Err(_would_block) => continue,
        }
    }
    finish_log(&c, &log, StreamKind::Stdout);
}

/// Feeds input into the PTY.
pub async fn write_pty(pty: Arc<AsyncFd<OwnedFd>>, mut rx: mpsc::UnboundedReceiver<StdinEvent>) {
    while let Some(event) = rx.recv().await {
        // A PTY has no half-close: end of a client's input is not forwarded.
        let StdinEvent::Data(data) = event else {
            continue;
        };
        let mut rest = &data[..];
        while !rest.is_empty() {
            let Ok(mut guard) = pty.writable().await else {
                return;
            };
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), rest).map_err(Into::into)) {
                Ok(Ok(n)) => rest = &rest[n..],
                Ok(Err(_)) => return,
                Err(_would_block) => continue,
            }
        }
    }
}
