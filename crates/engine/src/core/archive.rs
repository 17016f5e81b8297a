//! `docker cp`, `export`, `diff` and container sizes: the engine side of
//! [`crate::container::archive`].
//!
//! Every file system operation runs on a dedicated thread: for a stopped container that thread
//! mounts the container's overlay in a mount namespace of its own, which vanishes with it.

use std::io::Write;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{Engine, EngineError};
use crate::container::archive::{self, ArchiveError, Change, ExtractOptions, PathStat, RootSource};
use crate::container::Container;
use crate::state::{ContainerRecord, Status};

/// Chunk size of archive streams.
const CHUNK: usize = 64 * 1024;

/// A `Write` that sends its bytes as chunks into a response body channel.
pub(super) struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    /// A writer feeding `tx`.
    pub(super) fn new(tx: mpsc::Sender<Bytes>) -> ChannelWriter {
        ChannelWriter {
            tx,
            buf: Vec::new(),
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

fn task_failed(e: impl std::fmt::Display) -> EngineError {
    EngineError::Task {
        reason: e.to_string(),
    }
}

/// Runs `f` on a new thread (its mount namespace may change) and returns its result.
pub(super) async fn on_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ArchiveError> + Send + 'static,
) -> Result<T, EngineError> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("container-fs".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(task_failed)?;
    Ok(rx.await.map_err(task_failed)??)
}

impl Engine {
    /// How to reach a container's root: its live root while it runs, else its layers.
    pub(super) async fn root_source(
        &self,
        c: &Container,
        record: &ContainerRecord,
        writable: bool,
        live: bool,
    ) -> Result<RootSource, EngineError> {
        if live && record.state.status == Status::Running && record.state.pid > 0 {
            return Ok(RootSource::Running {
                pid: record.state.pid,
            });
        }
        // Mounted with overlay, which a booting machine may not have loaded yet.
        self.host_ready().await;
        let images = self.inner.images.clone();
        let image_id = record.image_id.clone();
        let lower = tokio::task::spawn_blocking(move || images.rootfs_layers(&image_id))
            .await
            .map_err(task_failed)??;
        for sub in ["upper", "work", "merged"] {
            let path = c.dir.join(sub);
            std::fs::create_dir_all(&path).map_err(super::io_err(&path))?;
        }
        // The init layer (`/.dockerenv`, `/etc/mtab`, mount points) is part of the root.
        let lower = crate::container::launch::with_init_layer(&c.dir, lower).map_err(|e| {
            EngineError::Launch {
                id: c.id.clone(),
                source: e,
            }
        })?;
        // `docker cp` sees the binds and volumes (`live`); export and a volume's prefill
        // read the image and the container's layer alone.
        let mounts = if live {
            self.archive_mounts(record)
        } else {
            Vec::new()
        };
        Ok(RootSource::Layers {
            id: c.id.clone(),
            lower,
            upper: c.dir.join("upper"),
            work: c.dir.join("work"),
            mountpoint: c.dir.join("merged"),
            writable,
            mounts,
        })
    }

    /// `HEAD /containers/{id}/archive`.
    pub async fn archive_stat(&self, reference: &str, path: &str) -> Result<PathStat, EngineError> {
        let c = self.container(reference)?;
        let source = self.root_source(&c, &c.record(), false, true).await?;
        let (path, reference) = (path.to_string(), reference.to_string());
        on_thread(move || {
            archive::with_root(&source, |root| archive::stat_path(root, &path, &reference))
        })
        .await
    }

    /// `GET /containers/{id}/archive`: the path's stat and a stream of its tar.
    pub async fn archive_get(
        &self,
        reference: &str,
        path: &str,
    ) -> Result<(PathStat, mpsc::Receiver<Bytes>), EngineError> {
        let c = self.container(reference)?;
        let source = self.root_source(&c, &c.record(), false, true).await?;
        let (path, reference) = (path.to_string(), reference.to_string());
        let (stat_tx, stat_rx) = oneshot::channel::<Result<PathStat, ArchiveError>>();
        let (tx, rx) = mpsc::channel(8);
        std::thread::Builder::new()
            .name("container-cp".into())
            .spawn(move || {
                let mut stat_tx = Some(stat_tx);
                let result = archive::with_root(&source, |root| {
                    let stat = archive::stat_path(root, &path, &reference)?;
                    if let Some(stat_tx) = stat_tx.take() {
                        let _ = stat_tx.send(Ok(stat));
                    }
                    let mut out = ChannelWriter {
                        tx,
                        buf: Vec::new(),
                    };
                    archive::write_archive(root, &path, &reference, &mut out)?;
                    out.flush().map_err(|source| ArchiveError::Io {
                        path: path.clone(),
                        source,
                    })
                });
                match (result, stat_tx) {
                    // Before the stat the client gets the error; after it, the stream ends short.
                    (Err(err), Some(stat_tx)) => {
                        let _ = stat_tx.send(Err(err));
                    }
                    (Err(err), None) => tracing::debug!(error = %err, "archive stream ended"),
                    (Ok(()), _) => {}
                }
            })
            .map_err(task_failed)?;
        let stat = stat_rx.await.map_err(task_failed)??;
        Ok((stat, rx))
    }

    /// `PUT /containers/{id}/archive`: extracts the tar at `tar_path` into the directory `path`.
    pub async fn archive_put(
        &self,
        reference: &str,
        path: &str,
        tar_path: std::path::PathBuf,
        mut options: ExtractOptions,
    ) -> Result<(), EngineError> {
        let c = self.container(reference)?;
        // dockerd's `checkIfPathIsInAVolume`: a `--read-only` root takes uploads into a
        // writable volume or bind only.
        options.read_only_root = super::restart::readonly_rootfs(&c.record().host_config)
            && !super::volumes::in_writable_mount(&c.record(), path);
        options.owner = self.copy_owner(&c.record(), options.copy_uid_gid).await?;
        // A stopped container's overlay is mounted writable here: it must not start meanwhile.
        let _op = c.op.lock().await;
        // A `--read-only` root that takes the upload (into a volume) stays read-only
        // underneath: a symlink in the volume leading out of it meets a read-only layer.
        let writable = !super::restart::readonly_rootfs(&c.record().host_config);
        let source = self.root_source(&c, &c.record(), writable, true).await?;
        let (path, reference) = (path.to_string(), reference.to_string());
        on_thread(move || {
            let file = std::fs::File::open(&tar_path).map_err(|source| ArchiveError::Io {
                path: tar_path.display().to_string(),
                source,
            })?;
            archive::with_root(&source, |root| {
                archive::extract(
                    root,
                    &path,
                    &reference,
                    std::io::BufReader::new(file),
                    options,
                )
            })
        })
        .await
    }

    /// `GET /containers/{id}/export`: a tar of the container's file system (without the
    /// mounts of a running container).
    pub async fn export(&self, reference: &str) -> Result<mpsc::Receiver<Bytes>, EngineError> {
        let c = self.container(reference)?;
        let source = self.root_source(&c, &c.record(), false, false).await?;
        let (tx, rx) = mpsc::channel(8);
        let (ready_tx, ready_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("container-export".into())
            .spawn(move || {
                let result = archive::with_root(&source, |root| {
                    let _ = ready_tx.send(Ok(()));
                    let mut out = ChannelWriter {
                        tx,
                        buf: Vec::new(),
                    };
                    archive::export(root, &mut out)?;
                    out.flush().map_err(|source| ArchiveError::Io {
                        path: "/".into(),
                        source,
                    })
                });
                if let Err(err) = result {
                    tracing::warn!(error = %err, "export failed");
                }
            })
            .map_err(task_failed)?;
        match ready_rx.await {
            Ok(Ok(())) => Ok(rx),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(EngineError::Task {
                reason: format!("cannot mount the file system of container {}", c.id),
            }),
        }
    }

    /// `GET /containers/{id}/changes`.
    pub async fn changes(&self, reference: &str) -> Result<Vec<Change>, EngineError> {
        let c = self.container(reference)?;
        let images = self.inner.images.clone();
        let image_id = c.record().image_id;
        let upper = c.dir.join("upper");
        let dir = c.dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut lower = images.rootfs_layers(&image_id)?;
            if !upper.exists() {
                return Ok(Vec::new());
            }
            // Entries of the init layer are not changes (`/etc` of an image without one).
            lower.insert(0, dir.join(crate::container::launch::INIT_LAYER));
            Ok(archive::changes(&upper, &lower)?)
        })
        .await
        .map_err(task_failed)?
    }

    /// A container's sizes for `ps -s` and `inspect -s`: `SizeRw` (bytes in the upper dir)
    /// and `SizeRootFs` (that plus the image).
    pub fn container_sizes(&self, record: &ContainerRecord) -> ContainerSizes {
        let upper = self.inner.state.dir(&record.id).join("upper");
        let rw = i64::try_from(archive::dir_size(&upper)).unwrap_or(i64::MAX);
        let image = self
            .inner
            .images
            .resolve(&record.image_id)
            .map(|i| i64::try_from(i.size).unwrap_or(i64::MAX))
            .unwrap_or(0);
        ContainerSizes {
            size_rw: rw,
            size_root_fs: rw.saturating_add(image),
        }
    }

    /// The owner `docker cp -a` gives what it copies in: the container's `Config.User`,
    /// looked up in the container's `/etc/passwd` and `/etc/group` (daemon/
    /// archive_tarcopyoptions_unix.go). Without `-a`, or for a container without a user, the
    /// archive's own ids are kept.
    async fn copy_owner(
        &self,
        record: &ContainerRecord,
        copy_uid_gid: bool,
    ) -> Result<Option<(u32, u32)>, EngineError> {
        let user = record.config.user.clone();
        if !copy_uid_gid || user.is_empty() {
            return Ok(None);
        }
        let images = self.inner.images.clone();
        let image_id = record.image_id.clone();
        let mut layers = vec![self.inner.state.dir(&record.id).join("upper")];
        layers.extend(
            tokio::task::spawn_blocking(move || images.rootfs_layers(&image_id))
                .await
                .map_err(task_failed)??,
        );
        let resolved = crate::container::config::resolve_user(&user, &layers)?;
        Ok(Some((resolved.uid, resolved.gid)))
    }

    /// A container's `GraphDriver.Data.LowerDir`: its image's layer directories, topmost
    /// first and `:`-separated as in the overlay mount; `None` when they cannot be listed.
    pub fn lower_dir(&self, record: &ContainerRecord) -> Option<String> {
        let layers = self.inner.images.rootfs_layers(&record.image_id).ok()?;
        Some(
            layers
                .iter()
                .map(|p| p.to_string_lossy())
                .collect::<Vec<_>>()
                .join(":"),
        )
    }
}

/// A container's disk use (`SizeRw`, `SizeRootFs` of `ps -s` and `inspect -s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ContainerSizes {
    /// Bytes written in the container's upper dir.
    #[serde(rename = "SizeRw")]
    pub size_rw: i64,
    /// `size_rw` plus the image's size.
    #[serde(rename = "SizeRootFs")]
    pub size_root_fs: i64,
}
