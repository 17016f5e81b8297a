//! The volume API (`docker volume create|ls|inspect|rm|prune`) and a container's mounts:
//! decided at create from `-v`, `--mount`, `--volumes-from` and the image's `VOLUME`s (moby
//! daemon/volumes.go `registerMountPoints`, then the anonymous volumes of `Config.Volumes`),
//! kept in the record as `MountPoints`, and made at each start: bind sources checked (or
//! created for `-v`), volumes mounted and filled from the image when empty, then handed to the
//! runtime as [`spec::Mount`]s.

use std::collections::BTreeMap;
use std::path::Path;

use rmachine_runtime::spec;
use tracing::{info, warn};

use super::{Engine, EngineError};
use crate::container::archive::{self, ArchiveError, ExtractOptions};
use crate::container::Container;
use crate::state::{ContainerConfig, ContainerRecord, HostConfig};
use crate::volume::spec::{self as mounts, MountPoint, SpecError, ANONYMOUS_LABEL};
use crate::volume::{CreateOptions, Volume, VolumeError};

impl From<SpecError> for EngineError {
    fn from(err: SpecError) -> Self {
        EngineError::InvalidParameter {
            reason: err.to_string(),
        }
    }
}

/// The filters of `GET /volumes` and `POST /volumes/prune` (moby volume/service/convert.go):
/// `name` (substring), `driver`, `label`, `label!`, `dangling`, and prune's `all`.
#[derive(Debug, Clone, Default)]
pub struct VolumeFilters {
    names: Vec<String>,
    drivers: Vec<String>,
    labels: Vec<String>,
    not_labels: Vec<String>,
    dangling: Option<bool>,
    all: bool,
}

fn filter_bool(key: &str, value: &str) -> Result<bool, EngineError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(EngineError::InvalidParameter {
            reason: format!("invalid filter '{key}={value}'"),
        }),
    }
}

impl VolumeFilters {
    /// The filters of `volume ls`.
    pub fn for_list(filters: &BTreeMap<String, Vec<String>>) -> Result<Self, EngineError> {
        Self::parse(filters, &["name", "driver", "label", "dangling"])
    }

    /// The filters of `volume prune`.
    pub fn for_prune(filters: &BTreeMap<String, Vec<String>>) -> Result<Self, EngineError> {
        Self::parse(filters, &["label", "label!", "all"])
    }

    fn parse(
        filters: &BTreeMap<String, Vec<String>>,
        accepted: &[&str],
    ) -> Result<Self, EngineError> {
        if let Some(key) = filters.keys().find(|k| !accepted.contains(&k.as_str())) {
            return Err(EngineError::InvalidParameter {
                reason: format!("invalid filter '{key}'"),
            });
        }
        let get = |key: &str| filters.get(key).cloned().unwrap_or_default();
        let single = |key: &str| -> Result<Option<bool>, EngineError> {
            get(key).first().map(|v| filter_bool(key, v)).transpose()
        };
        Ok(VolumeFilters {
            names: get("name"),
            drivers: get("driver"),
            labels: get("label"),
            not_labels: get("label!"),
            dangling: single("dangling")?,
            all: single("all")?.unwrap_or(false),
        })
    }

    fn matches(&self, volume: &Volume, in_use: bool) -> bool {
        let labels = volume.labels.clone().unwrap_or_default();
        (self.names.is_empty() || self.names.iter().any(|n| volume.name.contains(n.as_str())))
            && (self.drivers.is_empty() || self.drivers.contains(&volume.driver))
            && (self.labels.is_empty() || super::lookup::labels_match(&labels, &self.labels))
            && (self.not_labels.is_empty()
                || !super::lookup::labels_match(&labels, &self.not_labels))
            && self.dangling.is_none_or(|dangling| dangling != in_use)
    }
}

/// Whether the container path `path` lies in one of the container's writable binds or
/// volumes (a `--read-only` container takes `docker cp` uploads there).
pub(super) fn in_writable_mount(record: &ContainerRecord, path: &str) -> bool {
    let path = mounts::clean(&format!("/{path}"));
    let path = Path::new(&path);
    record
        .mount_points
        .values()
        .any(|m| m.rw && m.kind != "tmpfs" && path.starts_with(&m.destination))
}

/// The container path `dest` made relative for the archive code (`/data` → `/data/.`).
fn contents_of(dest: &str) -> String {
    format!("{}/.", dest.trim_end_matches('/'))
}

impl Engine {
    /// Every volume (`VolumeStore::list`), for `volume ls`, `system df` and `info`.
    pub fn volumes(&self) -> Vec<Volume> {
        self.inner.volumes.list()
    }

    /// `system df`'s volumes: each as `volume inspect` shows it, with `UsageData` (the bytes
    /// under its mountpoint and how many containers mount it), as dockerd's disk-usage walk.
    pub fn volume_disk_usage(&self) -> Vec<serde_json::Value> {
        self.volumes()
            .into_iter()
            .map(|volume| {
                let mut api = volume.to_api();
                let size = archive::dir_size(&volume.mountpoint);
                let refs = self.volume_users(&volume.name).len();
                if let Some(object) = api.as_object_mut() {
                    object.insert(
                        "UsageData".into(),
                        serde_json::json!({ "Size": size, "RefCount": refs }),
                    );
                }
                api
            })
            .collect()
    }

    /// The ids of the containers whose mounts use the volume.
    fn volume_users(&self, name: &str) -> Vec<String> {
        self.list()
            .into_iter()
            .filter(|r| r.mount_points.values().any(|m| m.uses_volume(name)))
            .map(|r| r.id)
            .collect()
    }

    /// A stopped container's binds and volumes as `docker cp` mounts them, parents first.
    pub(super) fn archive_mounts(&self, record: &ContainerRecord) -> Vec<archive::ContainerMount> {
        let mut points: Vec<&MountPoint> = record
            .mount_points
            .values()
            .filter(|m| m.kind != "tmpfs")
            .collect();
        points.sort_by_key(|m| Path::new(&m.destination).components().count());
        points
            .into_iter()
            .map(|m| archive::ContainerMount {
                source: m.source.clone().into(),
                destination: m.destination.clone(),
                writable: m.rw,
            })
            .collect()
    }

    /// Creates a volume (or finds it), emitting dockerd's `volume create` event for a new one.
    fn create_volume(&self, options: CreateOptions) -> Result<Volume, EngineError> {
        let existed = !options.name.is_empty() && self.inner.volumes.get(&options.name).is_ok();
        let volume = self.inner.volumes.create(options)?;
        if !existed {
            self.volume_event(&volume, "create");
        }
        Ok(volume)
    }

    /// The lock between deciding a volume is unused and deleting it (see `Inner`).
    pub(super) fn volume_uses_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .volume_uses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Removes a volume no container uses, emitting `volume destroy`.
    fn destroy_volume(&self, name: &str) -> Result<(), EngineError> {
        let volume = self.inner.volumes.get(name)?;
        self.inner.volumes.remove(name)?;
        self.volume_event(&volume, "destroy");
        Ok(())
    }

    fn volume_event(&self, volume: &Volume, action: &str) {
        let attributes = [("driver".to_string(), volume.driver.clone())].into();
        self.inner
            .events
            .emit("volume", action, &volume.name, attributes);
    }

    /// `POST /volumes/create`.
    pub fn volume_create(&self, options: CreateOptions) -> Result<Volume, EngineError> {
        self.create_volume(options)
    }

    /// `GET /volumes/{name}`.
    pub fn volume_inspect(&self, name: &str) -> Result<Volume, EngineError> {
        Ok(self.inner.volumes.get(name)?)
    }

    /// `GET /volumes`.
    pub fn volume_list(&self, filters: &VolumeFilters) -> Vec<Volume> {
        self.inner
            .volumes
            .list()
            .into_iter()
            .filter(|v| filters.matches(v, !self.volume_users(&v.name).is_empty()))
            .collect()
    }

    /// `DELETE /volumes/{name}`: refused while a container uses it, even with `force`, which
    /// only makes a missing volume no error (as dockerd).
    pub fn volume_remove(&self, name: &str, force: bool) -> Result<(), EngineError> {
        match self.inner.volumes.get(name) {
            Err(VolumeError::NotFound { .. }) if force => return Ok(()),
            Err(err) => return Err(err.into()),
            Ok(_) => {}
        }
        let _uses = self.volume_uses_lock();
        let users = self.volume_users(name);
        if !users.is_empty() {
            return Err(VolumeError::InUse {
                name: name.to_string(),
                containers: users,
            }
            .into());
        }
        self.destroy_volume(name)
    }

    /// `POST /volumes/prune`: unused volumes, anonymous ones only unless `all=true`; their
    /// names and the bytes they held.
    pub fn volume_prune(&self, filters: &VolumeFilters) -> Result<(Vec<String>, u64), EngineError> {
        let mut removed = Vec::new();
        let mut space = 0u64;
        let _uses = self.volume_uses_lock();
        for volume in self.inner.volumes.list() {
            if !filters.all && !volume.is_anonymous() {
                continue;
            }
            if !filters.matches(&volume, false) || !self.volume_users(&volume.name).is_empty() {
                continue;
            }
            let size = archive::dir_size(&volume.mountpoint);
            self.destroy_volume(&volume.name)?;
            space = space.saturating_add(size);
            removed.push(volume.name);
        }
        Ok((removed, space))
    }

    /// `docker rm -v` and `--rm`: removes the container's anonymous volumes that no other
    /// container uses (named volumes stay, as with dockerd).
    pub(super) fn remove_anonymous_volumes(&self, points: &BTreeMap<String, MountPoint>) {
        let _uses = self.volume_uses_lock();
        let names = points
            .values()
            .filter(|mp| mp.kind == "volume" && !mp.name.is_empty())
            .map(|mp| mp.name.clone());
        self.remove_unused_anonymous_locked(names);
    }

    /// Removes those of `names` that are anonymous volumes no container uses; the caller holds
    /// [`Self::volume_uses_lock`].
    pub(super) fn remove_unused_anonymous_locked(&self, names: impl IntoIterator<Item = String>) {
        for name in names {
            let Ok(volume) = self.inner.volumes.get(&name) else {
                continue;
            };
            if !volume.is_anonymous() || !self.volume_users(&name).is_empty() {
                continue;
            }
            if let Err(err) = self.destroy_volume(&name) {
                warn!(volume = %name, error = %err, "cannot remove anonymous volume");
            }
        }
    }

    /// Decides a new container's mounts (moby `registerMountPoints`, then the anonymous
    /// volumes of `Config.Volumes`), creating the volumes they name; also the names of the
    /// anonymous volumes it created, which a failed create removes (not a pre-existing one
    /// the request named). The caller holds [`Self::volume_uses_lock`] until the container
    /// is in the table.
    pub(super) fn mount_points_for(
        &self,
        config: &ContainerConfig,
        host: &HostConfig,
    ) -> Result<(BTreeMap<String, MountPoint>, Vec<String>), EngineError> {
        // Every spec is checked before any volume is created, so a refused request leaves none.
        let mut points: BTreeMap<String, MountPoint> = BTreeMap::new();
        let mut to_create: BTreeMap<String, CreateOptions> = BTreeMap::new();
        for from in host.volumes_from.iter().flatten() {
            let (reference, mode) = mounts::parse_volumes_from(from)?;
            let donor = self.container(&reference)?.record();
            for mp in donor.mount_points.values() {
                let mut copy = mp.clone();
                copy.rw = mp.rw && mounts::volumes_from_rw(&mode);
                points.insert(copy.destination.clone(), copy);
            }
        }
        let mut explicit = std::collections::BTreeSet::new();
        let binds = host.binds.iter().flatten().map(|raw| {
            let mut mp = mounts::parse_bind(raw)?;
            if mp.kind == "volume" && mp.mode.is_empty() {
                // moby's setBindModeIfNull for the local driver.
                mp.mode = "z".into();
            }
            Ok::<_, SpecError>((mp, CreateOptions::default()))
        });
        let mounts = host.mounts.iter().flatten().map(|mount| {
            let (mp, create) = mounts::parse_mount(mount)?;
            let options = CreateOptions {
                labels: Some(create.labels),
                options: Some(create.options),
                ..CreateOptions::default()
            };
            Ok::<_, SpecError>((mp, options))
        });
        for parsed in binds.chain(mounts) {
            let (mp, options): (MountPoint, CreateOptions) = parsed?;
            if !explicit.insert(mp.destination.clone()) {
                return Err(SpecError::Duplicate {
                    destination: mp.destination,
                }
                .into());
            }
            if mp.kind == "volume" {
                to_create.insert(mp.destination.clone(), options);
            }
            points.insert(mp.destination.clone(), mp);
        }
        for path in config.volumes.keys() {
            let mp = mounts::parse_bind(path)?;
            if points.contains_key(&mp.destination) {
                continue;
            }
            to_create.insert(mp.destination.clone(), CreateOptions::default());
            points.insert(mp.destination.clone(), mp);
        }
        let mut created = Vec::new();
        for (destination, options) in to_create {
            let Some(mp) = points.get_mut(&destination) else {
                continue;
            };
            let anonymous = mp.name.is_empty();
            let volume = match self.use_volume(&mp.name, anonymous, options) {
                Ok((volume, new)) => {
                    if new {
                        created.push(volume.name.clone());
                    }
                    volume
                }
                Err(err) => {
                    self.remove_unused_anonymous_locked(created);
                    return Err(err);
                }
            };
            mp.name = volume.name;
            mp.driver = volume.driver;
            mp.source = volume.mountpoint.to_string_lossy().into_owned();
        }
        Ok((points, created))
    }

    /// The volume a mount names, created when missing (an anonymous one gets a random name and
    /// dockerd's anonymous label), and whether it was created.
    fn use_volume(
        &self,
        name: &str,
        anonymous: bool,
        mut options: CreateOptions,
    ) -> Result<(Volume, bool), EngineError> {
        if let Ok(volume) = self.inner.volumes.get(name) {
            return Ok((volume, false));
        }
        options.name = name.to_string();
        if anonymous {
            options
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(ANONYMOUS_LABEL.into(), String::new());
        }
        if options.labels.as_ref().is_some_and(BTreeMap::is_empty) {
            options.labels = None;
        }
        if options.options.as_ref().is_some_and(BTreeMap::is_empty) {
            options.options = None;
        }
        self.create_volume(options).map(|volume| (volume, true))
    }

    /// Makes a container's mounts ready for a start and returns them for the runtime spec,
    /// parents before children (moby's `sortMounts`).
    pub(super) async fn prepare_mounts(
        &self,
        c: &Container,
        record: &ContainerRecord,
    ) -> Result<Vec<spec::Mount>, EngineError> {
        let mut points: Vec<&MountPoint> = record.mount_points.values().collect();
        points.sort_by_key(|m| Path::new(&m.destination).components().count());
        let mut out = Vec::new();
        for mp in points {
            let kind = match mp.kind.as_str() {
                "bind" => {
                    prepare_bind(mp)?;
                    spec::MountKind::Bind {
                        source: mp.source.clone().into(),
                    }
                }
                "volume" => {
                    let volume = self.inner.volumes.get(&mp.name)?;
                    self.inner.volumes.mount(&volume)?;
                    if mp.copy_data {
                        self.prefill(c, record, &mp.destination, &volume).await?;
                    }
                    spec::MountKind::Bind {
                        source: volume.mountpoint.clone(),
                    }
                }
                // dockerd's defaults for a tmpfs (`nosuid,nodev` come from the runtime);
                // an `exec` option given clears `noexec`.
                _ => spec::MountKind::Tmpfs {
                    options: format!("noexec,{}", mp.tmpfs_options),
                },
            };
            out.push(spec::Mount {
                destination: mp.destination.clone(),
                kind,
                readonly: !mp.rw,
                // A volume is rprivate, as runc makes a mount without propagation.
                propagation: match mp.kind.as_str() {
                    "bind" => mp.propagation.clone(),
                    "volume" => crate::volume::spec::DEFAULT_PROPAGATION.into(),
                    _ => String::new(),
                },
            });
        }
        Ok(out)
    }

    /// Copies the image's content at `destination` into an empty volume (moby's
    /// `copyExistingContents`): a tar of it made from the container's layers, extracted into
    /// the volume with the archive code's safety (nothing followed out of the volume).
    async fn prefill(
        &self,
        c: &Container,
        record: &ContainerRecord,
        destination: &str,
        volume: &Volume,
    ) -> Result<(), EngineError> {
        let empty = std::fs::read_dir(&volume.mountpoint)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Ok(());
        }
        let source = self.root_source(c, record, false, false).await?;
        let spool = self.inner.config.data_root.join("tmp").join(format!(
            "prefill-{}",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let target = volume.mountpoint.clone();
        let path = destination.to_string();
        let spool_file = spool.clone();
        let shown = path.clone();
        let io = move |source| ArchiveError::Io {
            path: shown.clone(),
            source,
        };
        let result = super::archive::on_thread(move || {
            let copied = archive::with_root(&source, |root| {
                let stat = match archive::stat_path(root, &contents_of(&path), "") {
                    Ok(stat) => stat,
                    Err(ArchiveError::NotFound { .. }) => return Ok(false),
                    Err(err) => return Err(err),
                };
                // Only a directory of the image fills a volume.
                if stat.mode & (1 << 31) == 0 {
                    return Ok(false);
                }
                let file = std::fs::File::create(&spool_file).map_err(io.clone())?;
                archive::write_archive(
                    root,
                    &contents_of(&path),
                    "",
                    std::io::BufWriter::new(file),
                )?;
                Ok(true)
            })?;
            if !copied {
                return Ok(());
            }
            let file = std::fs::File::open(&spool_file).map_err(io.clone())?;
            let dir = nix::fcntl::open(
                &target,
                nix::fcntl::OFlag::O_PATH
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| io(e.into()))?;
            use std::os::fd::AsFd;
            archive::extract(
                dir.as_fd(),
                "/",
                "",
                std::io::BufReader::new(file),
                ExtractOptions::default(),
            )?;
            // The volume takes the image directory's owner and mode too (moby's
            // `copyOwnership`): the tar's first entry is that directory, `./`.
            let file = std::fs::File::open(&spool_file).map_err(io.clone())?;
            let mut tar = tar::Archive::new(std::io::BufReader::new(file));
            let mut entries = tar.entries().map_err(io.clone())?;
            if let Some(entry) = entries.next() {
                let header = entry.map_err(io.clone())?.header().clone();
                let mode = header.mode().map_err(io.clone())? & 0o7777;
                let uid = u32::try_from(header.uid().map_err(io.clone())?).unwrap_or(0);
                let gid = u32::try_from(header.gid().map_err(io.clone())?).unwrap_or(0);
                use std::os::unix::fs::PermissionsExt;
                std::os::unix::fs::chown(&target, Some(uid), Some(gid)).map_err(io.clone())?;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
                    .map_err(io.clone())?;
            }
            Ok(())
        })
        .await;
        let _ = std::fs::remove_file(&spool);
        result?;
        info!(volume = %volume.name, destination, "volume filled from the image");
        Ok(())
    }
}

/// A bind's source at start: created when `-v` named a missing directory (moby's
/// `CreateMountpoint`), else it must exist; shared and slave propagation need a source on a
/// mount that propagates (moby's `ensureShared`/`ensureSharedOrSlave`, texts kept).
fn prepare_bind(mp: &MountPoint) -> Result<(), EngineError> {
    let source = Path::new(&mp.source);
    if std::fs::symlink_metadata(source).is_err() {
        if !mp.create_source {
            return Err(SpecError::MountConfig {
                kind: "bind".into(),
                reason: format!("bind source path does not exist: {}", mp.source),
            }
            .into());
        }
        std::fs::create_dir_all(source).map_err(|e| EngineError::InvalidParameter {
            reason: format!(
                "error while creating mount source path '{}': {e}",
                mp.source
            ),
        })?;
    }
    let needs = match mp.propagation.as_str() {
        "shared" | "rshared" => Some(false),
        "slave" | "rslave" => Some(true),
        _ => None,
    };
    if let Some(slave_ok) = needs {
        let Some((mount_point, optional)) = crate::volume::mount_of(source) else {
            return Ok(());
        };
        let shared = optional.iter().any(|o| o.starts_with("shared:"));
        let slave = optional.iter().any(|o| o.starts_with("master:"));
        if !(shared || slave_ok && slave) {
            let what = if slave_ok {
                "a shared or slave mount"
            } else {
                "a shared mount"
            };
            return Err(EngineError::InvalidParameter {
                reason: format!(
                    "path {} is mounted on {mount_point} but it is not {what}",
                    mp.source
                ),
            });
        }
    }
    Ok(())
}
