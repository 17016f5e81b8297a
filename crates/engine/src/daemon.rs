//! The daemon: opens the engine, binds every listener, serves until SIGTERM or SIGINT, then
//! stops running containers (as `docker stop` does) and returns.

use std::path::PathBuf;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::api::server::{self, ServerError, TlsOptions};
use crate::api::Api;
use crate::core::{Engine, EngineConfig, EngineError};

pub mod lock;

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// No `-H` was given.
    #[error("no listen address: pass -H unix:///path or -H tcp://host:port")]
    NoListener,
    /// A listener could not be set up.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The engine could not open its data root.
    #[error("cannot open the engine data root")]
    Engine(#[source] EngineError),
    /// Another engine holds the data root, or its lock cannot be taken.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// The data root could not be created.
    #[error("cannot create the data root {path}")]
    DataRoot {
        /// The data root.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    /// `--containers-wait-fd` names no descriptor the engine can wait on.
    #[error("--containers-wait-fd {fd}: {reason}")]
    WaitFd {
        /// The descriptor given.
        fd: i32,
        /// What is wrong with it.
        reason: String,
    },
}

/// Takes the descriptor of `--containers-wait-fd`, made close-on-exec so that no runtime or
/// container inherits it (a copy held open elsewhere would keep it from ever reaching end of
/// file).
fn take_wait_fd(fd: i32) -> Result<std::os::fd::OwnedFd, DaemonError> {
    use std::os::fd::FromRawFd;
    let refuse = |reason: String| DaemonError::WaitFd { fd, reason };
    if fd <= 2 {
        return Err(refuse("that is a standard stream, not a pipe".into()));
    }
    // SAFETY: F_GETFD and F_SETFD only read and set the descriptor's flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(refuse(format!(
            "not an open descriptor ({})",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(refuse(std::io::Error::last_os_error().to_string()));
    }
    // SAFETY: the descriptor is open (checked above) and was handed to this process for this
    // purpose; this runs first in `run`, once, so nothing else in the process owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Everything the daemon needs to run.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Engine settings.
    pub engine: EngineConfig,
    /// `-H` addresses.
    pub hosts: Vec<String>,
    /// `--containers-wait-fd`: containers wait until this pipe reaches end of file.
    pub containers_wait_fd: Option<i32>,
    /// TLS settings for TCP listeners.
    pub tls: TlsOptions,
}

/// Finds `rmachine-runtime`: beside this executable, else on `PATH`.
pub fn default_runtime() -> PathBuf {
    if let Some(beside) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("rmachine-runtime")))
        .filter(|p| p.exists())
    {
        return beside;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("rmachine-runtime"))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| PathBuf::from("rmachine-runtime"))
}

/// Runs the daemon until a termination signal, then shuts down gracefully.
pub async fn run(options: DaemonOptions) -> Result<(), DaemonError> {
    if options.hosts.is_empty() {
        return Err(DaemonError::NoListener);
    }
    let wait_fd = options.containers_wait_fd.map(take_wait_fd).transpose()?;
    // The data root first: a second engine on it must not even touch the first one's socket.
    {
        use std::os::unix::fs::DirBuilderExt;
        let root = &options.engine.data_root;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(crate::state::modes::DATA_ROOT)
            .create(root)
            .map_err(|source| DaemonError::DataRoot {
                path: root.clone(),
                source,
            })?;
    }
    let _lock = lock::lock(&options.engine.data_root)?;
    // Then bind: a bad address or missing TLS file fails before anything else happens.
    let mut listeners = Vec::new();
    for host in &options.hosts {
        listeners.push(server::bind(host, &options.tls).await?);
    }
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    if !options.engine.runtime.exists() {
        warn!(
            runtime = %options.engine.runtime.display(),
            "container runtime not found: containers will not start (pass --runtime PATH)"
        );
    }
    // Timed: the engine's start is on every machine boot's path to ready.
    let opening = std::time::Instant::now();
    let engine = Engine::open(options.engine.clone()).map_err(DaemonError::Engine)?;
    if let Some(fd) = wait_fd {
        engine.wait_for_host(fd);
    }
    let open_ms = opening.elapsed().as_millis();
    let reconciling = std::time::Instant::now();
    engine.reconcile_network().await;
    let network_ms = reconciling.elapsed().as_millis();
    tokio::spawn({
        let engine = engine.clone();
        async move { engine.remove_stale_nat().await }
    });
    let api = Api::new(engine.clone());
    tokio::spawn({
        let engine = engine.clone();
        async move { engine.restart_on_boot().await }
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut servers = Vec::new();
    for listener in listeners {
        servers.push(tokio::spawn(server::serve(
            listener,
            api.clone(),
            shutdown_rx.clone(),
        )));
    }
    info!(
        data_root = %options.engine.data_root.display(),
        runtime = %options.engine.runtime.display(),
        open_ms,
        network_ms,
        "engine ready"
    );
    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM: shutting down"),
        _ = sigint.recv() => info!("SIGINT: shutting down"),
    }
    let _ = shutdown_tx.send(true);
    for server in servers {
        let _ = server.await;
    }
    engine.shutdown().await;
    info!("engine stopped");
    Ok(())
}
