//! Containers wait for the host; the API does not.
//!
//! In a machine the engine starts while its guest's init is still loading the kernel modules
//! containers need (overlay, bridge, netfilter): the API answers at once (`docker version`,
//! `ps`, `images`, pulls need none of them) and only what would fail without them waits:
//! starting a container (and so `run`, `restart`, a build's `RUN`, restart policies at boot),
//! mounting a stopped container's filesystem (`cp`, `export`, a volume's prefill), removing a
//! previous engine's NAT table. (Connecting a running container to a network needs them too,
//! but a container only runs once they are in.) The guest's init hands the engine the read end
//! of a pipe (`--containers-wait-fd`) and closes the write end once they are loaded; end of
//! file also comes if init dies, so nothing can wait for ever. Without the option nothing
//! waits.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::time::Instant;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::Engine;

/// Whether what containers need of the host is in place (true unless the engine was told to
/// wait for it).
#[derive(Debug)]
pub(super) struct HostReady(watch::Sender<bool>);

impl Default for HostReady {
    fn default() -> HostReady {
        HostReady(watch::Sender::new(true))
    }
}

impl Engine {
    /// Holds container starts and container filesystem mounts (see the module docs) until
    /// `fd`, the read end of a pipe, reaches end of file. Call it before serving.
    pub fn wait_for_host(&self, fd: OwnedFd) {
        let ready = self.inner.host_ready.0.clone();
        ready.send_replace(false);
        let watcher = ready.clone();
        let spawned = std::thread::Builder::new()
            .name("host-ready".into())
            .spawn(move || {
                let began = Instant::now();
                let mut pipe = std::fs::File::from(fd);
                let mut sink = [0u8; 64];
                loop {
                    match pipe.read(&mut sink) {
                        Ok(0) => break,
                        Ok(_) => continue,
                        Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(err) => {
                            warn!(error = %err, "cannot read the host's readiness pipe; containers start now");
                            break;
                        }
                    }
                }
                info!(
                    waited_ms = began.elapsed().as_millis() as u64,
                    "the host is ready for containers"
                );
                watcher.send_replace(true);
            });
        if let Err(err) = spawned {
            warn!(error = %err, "cannot wait for the host's readiness; containers start now");
            ready.send_replace(true);
        }
    }

    /// Returns once containers can start (see the module docs).
    pub(super) async fn host_ready(&self) {
        let mut ready = self.inner.host_ready.0.subscribe();
        if *ready.borrow() {
            return;
        }
        debug!("waiting for the host's kernel modules");
        // The sender lives in `self`: `wait_for` ends with the value, never with an error.
        let _ = ready.wait_for(|ready| *ready).await;
    }
}
