//! A live container: its record, its lifecycle notifications and its I/O fan-out.
//!
//! Output of a running container flows from the runtime's pipes (or PTY master) through one pump
//! per stream, which appends to the json-file log and copies each chunk to every attached
//! client. Attach subscribes *before* start (the CLI attaches, then starts), so a subscriber
//! sees all output from the first byte. When a run ends the subscribers' channels are closed,
//! which ends their attach streams. Stdin from attached clients goes through one channel per
//! container that the run's stdin writer drains; input sent before start waits in it.

pub mod archive;
pub mod config;
pub mod console;
pub mod exec;
pub mod health;
pub mod io;
pub mod launch;
pub mod logs;
pub mod names;
pub mod stats;
pub mod top;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::state::ContainerRecord;

/// Which output stream a chunk came from; the values are Docker's stream-type bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Standard output (1).
    Stdout = 1,
    /// Standard error (2).
    Stderr = 2,
}

impl StreamKind {
    /// `stdout` or `stderr`.
    pub fn name(self) -> &'static str {
        match self {
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        }
    }
}

/// A chunk of container output.
#[derive(Debug, Clone)]
pub struct Output {
    /// Its stream.
    pub stream: StreamKind,
    /// The bytes, as read.
    pub data: Bytes,
}

/// Input for the container's stdin.
#[derive(Debug)]
pub enum StdinEvent {
    /// Bytes to write.
    Data(Bytes),
    /// Close the container's stdin (an attached client with `StdinOnce` reached end of input).
    Close,
}

/// What waiters observe about a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifecycle {
    /// Its process runs.
    pub running: bool,
    /// How many runs have ended (including failed starts).
    pub exits: u64,
    /// The last exit code.
    pub exit_code: i64,
    /// It was removed.
    pub removed: bool,
}

/// Chunks an attached client may lag behind before the container's output waits for it.
const SUBSCRIBER_BACKLOG: usize = 64;

struct Subscriber {
    stdout: bool,
    stderr: bool,
    tx: mpsc::Sender<Output>,
}

struct IoHub {
    subscribers: Vec<Subscriber>,
    stdin_tx: mpsc::UnboundedSender<StdinEvent>,
    stdin_rx: Option<mpsc::UnboundedReceiver<StdinEvent>>,
    pty_master: Option<Arc<OwnedFd>>,
}

/// One container known to the engine.
pub struct Container {
    /// The full id.
    pub id: String,
    /// `<data-root>/containers/<id>`.
    pub dir: PathBuf,
    record: Mutex<ContainerRecord>,
    lifecycle: watch::Sender<Lifecycle>,
    io: Mutex<IoHub>,
    /// Serialises start, stop, kill and remove of this container.
    pub(crate) op: tokio::sync::Mutex<()>,
    /// Held while its endpoints change: `network connect`/`disconnect` (under `op` too) and
    /// the monitor's teardown at exit (which cannot take `op`: stop holds it while waiting).
    pub(crate) net: tokio::sync::Mutex<()>,
    /// Its health-check monitor, while one runs.
    pub(crate) health: health::MonitorSlot,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container").field("id", &self.id).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these short locks leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Container {
    /// Wraps a record loaded or created by the engine.
    pub fn new(record: ContainerRecord, dir: PathBuf) -> Arc<Container> {
        let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
        let lifecycle = Lifecycle {
            running: false,
            exits: 0,
            exit_code: record.state.exit_code,
            removed: false,
        };
        Arc::new(Container {
            id: record.id.clone(),
            dir,
            record: Mutex::new(record),
            lifecycle: watch::Sender::new(lifecycle),
            io: Mutex::new(IoHub {
                subscribers: Vec::new(),
                stdin_tx,
                stdin_rx: Some(stdin_rx),
                pty_master: None,
            }),
            op: tokio::sync::Mutex::new(()),
            net: tokio::sync::Mutex::new(()),
            health: health::MonitorSlot::default(),
        })
    }

    /// A copy of the record.
    pub fn record(&self) -> ContainerRecord {
        lock(&self.record).clone()
    }

    /// Changes the record (the caller persists it).
    pub fn update<R>(&self, f: impl FnOnce(&mut ContainerRecord) -> R) -> R {
        f(&mut lock(&self.record))
    }

    /// The container's json-file log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}-json.log", self.id))
    }

    /// Watches the lifecycle.
    pub fn lifecycle(&self) -> watch::Receiver<Lifecycle> {
        self.lifecycle.subscribe()
    }

    /// Changes the lifecycle and wakes waiters.
    pub fn notify(&self, f: impl FnOnce(&mut Lifecycle)) {
        self.lifecycle.send_modify(f);
    }

    /// Subscribes to the output of the current or next run.
    pub fn subscribe(&self, stdout: bool, stderr: bool) -> mpsc::Receiver<Output> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BACKLOG);
        lock(&self.io)
            .subscribers
            .push(Subscriber { stdout, stderr, tx });
        rx
    }

    /// Sends a chunk of output to every subscriber that wants its stream. A subscriber that
    /// falls behind holds the sender up, and through it the container's output pipe, as
    /// Docker's attach does; one that went away is dropped.
    pub async fn publish(&self, output: &Output) {
        let targets: Vec<mpsc::Sender<Output>> = lock(&self.io)
            .subscribers
            .iter()
            .filter(|s| match output.stream {
                StreamKind::Stdout => s.stdout,
                StreamKind::Stderr => s.stderr,
            })
            .map(|s| s.tx.clone())
            .collect();
        let mut gone = false;
        for tx in targets {
            gone |= tx.send(output.clone()).await.is_err();
        }
        if gone {
            lock(&self.io).subscribers.retain(|s| !s.tx.is_closed());
        }
    }

    /// Ends every subscriber's stream (the run is over).
    pub fn close_subscribers(&self) {
        lock(&self.io).subscribers.clear();
    }

    /// A sender into the container's stdin.
    pub fn stdin(&self) -> mpsc::UnboundedSender<StdinEvent> {
        lock(&self.io).stdin_tx.clone()
    }

    /// Takes the stdin receiver for a new run; input sent before start is in it.
    pub fn take_stdin(&self) -> Option<mpsc::UnboundedReceiver<StdinEvent>> {
        lock(&self.io).stdin_rx.take()
    }

    /// After a run: a fresh stdin channel for the next one.
    pub fn reset_stdin(&self) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut io = lock(&self.io);
        io.stdin_tx = tx;
        io.stdin_rx = Some(rx);
        io.pty_master = None;
    }

    /// Remembers the PTY master for resizing.
    pub fn set_pty(&self, master: Option<Arc<OwnedFd>>) {
        lock(&self.io).pty_master = master;
    }

    /// The PTY master, when a TTY container runs.
    pub fn pty(&self) -> Option<Arc<OwnedFd>> {
        lock(&self.io).pty_master.clone()
    }
}
