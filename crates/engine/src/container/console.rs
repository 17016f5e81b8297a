//! The runtime's console socket (runc's protocol, see `rmachine_runtime::spec::Features`): the
//! engine listens on a unix socket, the runtime makes the PTY inside the container's own
//! `/dev/pts` and sends the master back with `SCM_RIGHTS`.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::net::UnixListener;

/// Errors of the console socket.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// Binding, accepting or receiving failed.
    #[error("console socket {path}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The runtime closed the connection without sending a descriptor.
    #[error("console socket {path}: no terminal received")]
    NoTerminal {
        /// The socket path.
        path: PathBuf,
    },
}

/// A listening console socket, removed from the filesystem on drop.
#[derive(Debug)]
pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// Binds a fresh socket in the temporary directory (short paths: `sun_path` has 108 bytes,
    /// too few for a socket under a deep data root).
    pub fn bind() -> Result<ConsoleSocket, ConsoleError> {
        let dir = std::env::temp_dir();
        // The guest's initramfs root may lack /tmp.
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!(
            "rmachine-console-{}.sock",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let listener = UnixListener::bind(&path).map_err(|source| ConsoleError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(ConsoleSocket { path, listener })
    }

    /// Where the runtime connects.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the runtime's connection and receives the PTY master.
    pub async fn receive(self) -> Result<OwnedFd, ConsoleError> {
        let io = |source| ConsoleError::Io {
            path: self.path.clone(),
            source,
        };
        let (stream, _) = self.listener.accept().await.map_err(io)?;
        loop {
            stream.readable().await.map_err(io)?;
            let received = stream.try_io(tokio::io::Interest::READABLE, || {
                let mut data = [0u8; 4096];
                let mut iov = [IoSliceMut::new(&mut data)];
                let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
                let msg = recvmsg::<()>(
                    stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)?;
                let mut fds = Vec::new();
                for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        fds.extend(received);
                    }
                }
                Ok((msg.bytes, fds))
            });
            match received {
                Ok((_, fds)) if !fds.is_empty() => {
                    let mut owned: Vec<OwnedFd> = fds
                        .into_iter()
                        // SAFETY: SCM_RIGHTS installed these descriptors in this process just
                        // now; nothing else owns them.
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                        .collect();
                    return Ok(owned.swap_remove(0));
                }
                Ok((0, _)) => {
                    return Err(ConsoleError::NoTerminal {
                        path: self.path.clone(),
                    })
                }
                Ok(_) => continue,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(io(err)),
            }
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sets a PTY's window size (`TIOCSWINSZ` on the master).
pub fn set_size(master: &impl AsRawFd, rows: u16, cols: u16) -> std::io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, valid for the call; the
    // descriptor is open for the borrow's duration.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
