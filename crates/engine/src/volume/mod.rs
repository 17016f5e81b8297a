//! Named and anonymous volumes of the `local` driver, and the mount specifications that use
//! them and bind mounts ([`spec`]).
//!
//! A volume is a directory `<data-root>/volumes/<name>/_data` with a record
//! `<data-root>/volumes/<name>/volume.json` beside it (written durably, last, so a volume
//! exists iff its record does: a crash while creating leaves a directory without a record,
//! which [`VolumeStore::open`] deletes). A volume created with `-o type=/device=/o=` (moby's
//! `volume/local` options) is a mount of that device on `_data`, made when a container first
//! uses it and undone when the volume is removed.
//!
//! Which containers use a volume is not stored: the core asks its container table (every
//! container's mount points name their volumes), so the answer survives restarts and crashes.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::state::durable;

pub mod spec;

/// The one driver.
pub const LOCAL_DRIVER: &str = "local";

const RECORD: &str = "volume.json";
const DATA: &str = "_data";

/// Errors of volume operations; the messages are dockerd's.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// No volume of that name.
    #[error("get {name}: no such volume")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// Containers use the volume.
    #[error("remove {name}: volume is in use - [{}]", containers.join(", "))]
    InUse {
        /// The volume.
        name: String,
        /// The ids of the containers using it.
        containers: Vec<String>,
    },
    /// A name or option the local driver refuses.
    #[error("create {name}: {reason}")]
    Invalid {
        /// The volume.
        name: String,
        /// Why.
        reason: String,
    },
    /// A driver other than `local`.
    #[error("error looking up volume plugin {driver}: plugin \"{driver}\" not found")]
    NoSuchDriver {
        /// The driver asked for.
        driver: String,
    },
    /// The volume's device could not be mounted.
    #[error("error while mounting volume '{path}'")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The volume's device could not be unmounted, or something is still mounted on its
    /// content: it is kept, since removing it would walk into the mounted filesystem.
    #[error("error while removing volume {name}: {path} is still mounted")]
    StillMounted {
        /// The volume.
        name: String,
        /// The mount point.
        path: PathBuf,
        /// The unmount's error, when it failed.
        #[source]
        source: Option<nix::Error>,
    },
    /// A file of the volume store could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One volume's record (`volume.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Volume {
    /// Its name (64 hex characters for an anonymous one).
    pub name: String,
    /// Always `local`.
    pub driver: String,
    /// `--label`.
    pub labels: Option<BTreeMap<String, String>>,
    /// `-o` (the local driver's `type`, `device`, `o`).
    pub options: Option<BTreeMap<String, String>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Where its content is, on the host.
    #[serde(skip)]
    pub mountpoint: PathBuf,
}

impl Volume {
    /// Whether dockerd would call it anonymous (`volume prune` removes those by default).
    pub fn is_anonymous(&self) -> bool {
        self.labels
            .as_ref()
            .is_some_and(|l| l.contains_key(spec::ANONYMOUS_LABEL))
    }

    /// `GET /volumes/{name}` (moby api/types/volume `Volume`).
    pub fn to_api(&self) -> serde_json::Value {
        serde_json::json!({
            "CreatedAt": self.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "Driver": self.driver,
            "Labels": self.labels,
            "Mountpoint": self.mountpoint,
            "Name": self.name,
            "Options": self.options,
            "Scope": "local",
        })
    }

    fn has_device(&self) -> bool {
        self.options
            .as_ref()
            .is_some_and(|o| o.get("device").is_some_and(|d| !d.is_empty()))
    }
}

/// What `create` asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// The name; empty: a random one (an anonymous volume).
    pub name: String,
    /// The driver; empty means `local`.
    pub driver: String,
    /// Labels.
    pub labels: Option<BTreeMap<String, String>>,
    /// Driver options.
    pub options: Option<BTreeMap<String, String>>,
}

/// The volumes of one data root.
#[derive(Debug)]
pub struct VolumeStore {
    root: PathBuf,
    volumes: Mutex<BTreeMap<String, Volume>>,
    /// Held while a volume is created, so two requests for one new name make one volume.
    creating: Mutex<()>,
}

fn valid_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if name.len() == 1 {
        return Err(
            "volume name is too short, names should be at least two alphanumeric characters".into(),
        );
    }
    if !first_ok || !rest_ok {
        return Err(format!(
            "{name:?} includes invalid characters for a local volume name, only \
             \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host \
             directory, use absolute path"
        ));
    }
    Ok(())
}

/// moby's local driver `validateOpts` (volume/local/local_unix.go).
fn valid_options(options: &BTreeMap<String, String>) -> Result<(), String> {
    for key in options.keys() {
        if !matches!(key.as_str(), "type" | "device" | "o" | "size") {
            return Err(format!("invalid option: {key:?}"));
        }
    }
    if options.contains_key("size") {
        return Err("quota size requested but no quota support".into());
    }
    for (option, required) in [
        ("device", &["type"][..]),
        ("type", &["device"][..]),
        ("o", &["device", "type"][..]),
    ] {
        if options.contains_key(option) {
            if let Some(missing) = required.iter().find(|r| !options.contains_key(**r)) {
                return Err(format!("missing required option: {missing:?}"));
            }
        }
    }
    Ok(())
}

fn lock(
    m: &Mutex<BTreeMap<String, Volume>>,
) -> std::sync::MutexGuard<'_, BTreeMap<String, Volume>> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl VolumeStore {
    /// Opens (creating) `<data-root>/volumes`, loading every volume and deleting what a crash
    /// left half-created.
    pub fn open(data_root: &Path) -> Result<VolumeStore, VolumeError> {
        let root = data_root.join("volumes");
        std::fs::create_dir_all(&root).map_err(io_err(&root))?;
        use std::os::unix::fs::PermissionsExt;
        // dockerd's: others may reach a volume's content by its path, not list the volumes.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o701))
            .map_err(io_err(&root))?;
        let mut volumes = BTreeMap::new();
        for entry in std::fs::read_dir(&root).map_err(io_err(&root))? {
            let entry = entry.map_err(io_err(&root))?;
            let dir = entry.path();
            let record = dir.join(RECORD);
            match std::fs::read(&record) {
                Ok(bytes) => match serde_json::from_slice::<Volume>(&bytes) {
                    Ok(mut volume) => {
                        volume.mountpoint = dir.join(DATA);
                        volumes.insert(volume.name.clone(), volume);
                    }
                    Err(err) => {
                        warn!(path = %record.display(), error = %err, "corrupt volume record kept aside");
                    }
                },
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    if dir.is_dir() {
                        remove_half_created(&dir);
                    }
                }
                Err(err) => return Err(io_err(&record)(err)),
            }
        }
        Ok(VolumeStore {
            root,
            volumes: Mutex::new(volumes),
            creating: Mutex::new(()),
        })
    }

    /// Every volume, by name (for `volume ls`, `system df`, `info`).
    pub fn list(&self) -> Vec<Volume> {
        lock(&self.volumes).values().cloned().collect()
    }

    /// The volume of that name.
    pub fn get(&self, name: &str) -> Result<Volume, VolumeError> {
        lock(&self.volumes)
            .get(name)
            .cloned()
            .ok_or_else(|| VolumeError::NotFound {
                name: name.to_string(),
            })
    }

    /// Creates a volume, or returns the existing one of that name (as dockerd does).
    pub fn create(&self, options: CreateOptions) -> Result<Volume, VolumeError> {
        if !matches!(options.driver.as_str(), "" | LOCAL_DRIVER) {
            return Err(VolumeError::NoSuchDriver {
                driver: options.driver,
            });
        }
        let name = if options.name.is_empty() {
            hex::encode(rand::random::<[u8; 32]>())
        } else {
            options.name
        };
        let invalid = |reason| VolumeError::Invalid {
            name: name.clone(),
            reason,
        };
        valid_name(&name).map_err(invalid)?;
        let _creating = self
            .creating
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = lock(&self.volumes).get(&name) {
            return Ok(existing.clone());
        }
        if let Some(opts) = &options.options {
            valid_options(opts).map_err(invalid)?;
        }
        let dir = self.root.join(&name);
        let data = dir.join(DATA);
        std::fs::create_dir_all(&data).map_err(io_err(&data))?;
        let volume = Volume {
            name: name.clone(),
            driver: LOCAL_DRIVER.into(),
            labels: options.labels,
            options: options.options,
            created_at: Utc::now(),
            mountpoint: data,
        };
        let bytes = serde_json::to_vec(&volume).map_err(|e| io_err(&dir)(e.into()))?;
        let record = dir.join(RECORD);
        durable::write_atomic(&record, &bytes, 0o600).map_err(io_err(&record))?;
        durable::sync_parent(&dir).map_err(io_err(&dir))?;
        info!(volume = %name, "volume created");
        lock(&self.volumes).insert(name, volume.clone());
        Ok(volume)
    }

    /// Removes a volume the caller checked no container uses: unmounts its device (a failure,
    /// or anything still mounted on its content, keeps the volume: removing it would delete
    /// the mounted filesystem's files), then its record (so a crash half-way leaves a
    /// directory [`Self::open`] deletes), then its content: a device volume's `_data` is only
    /// the empty mount point, removed without recursing.
    pub fn remove(&self, name: &str) -> Result<(), VolumeError> {
        let volume = self.get(name)?;
        if volume.has_device() {
            self.unmount(&volume)?;
        }
        let still_mounted = |source| VolumeError::StillMounted {
            name: name.to_string(),
            path: volume.mountpoint.clone(),
            source,
        };
        match is_mount_point(&volume.mountpoint) {
            Ok(false) => {}
            Ok(true) => return Err(still_mounted(None)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err(&volume.mountpoint)(err)),
        }
        let dir = self.root.join(name);
        if volume.has_device() {
            match std::fs::remove_dir(&volume.mountpoint) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err(&volume.mountpoint)(err));
                }
                _ => {}
            }
        }
        let record = dir.join(RECORD);
        std::fs::remove_file(&record).map_err(io_err(&record))?;
        durable::sync_dir(&dir).map_err(io_err(&dir))?;
        lock(&self.volumes).remove(name);
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        info!(volume = %name, "volume removed");
        Ok(())
    }

    /// Makes the volume's content reachable at its mount point before a container uses it:
    /// mounts its device (`-o type=... device=...`) unless already mounted.
    pub fn mount(&self, volume: &Volume) -> Result<(), VolumeError> {
        let Some(options) = volume.options.as_ref().filter(|_| volume.has_device()) else {
            return Ok(());
        };
        std::fs::create_dir_all(&volume.mountpoint).map_err(io_err(&volume.mountpoint))?;
        if is_mount_point(&volume.mountpoint).map_err(io_err(&volume.mountpoint))? {
            return Ok(());
        }
        let device = options
            .get("device")
            .map(String::as_str)
            .unwrap_or_default();
        let fstype = options.get("type").map(String::as_str).unwrap_or_default();
        let (set, clear, mut data) =
            rmachine_runtime::rootfs::parse_mount_options(options.get("o").map_or("", |o| o));
        let mut flags = set - clear;
        if fstype == "bind" || data.split(',').any(|d| d == "bind" || d == "rbind") {
            flags |= nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC;
            data = data
                .split(',')
                .filter(|d| !matches!(*d, "bind" | "rbind"))
                .collect::<Vec<_>>()
                .join(",");
        }
        nix::mount::mount(
            Some(device),
            &volume.mountpoint,
            (fstype != "bind").then_some(fstype),
            flags,
            (!data.is_empty()).then_some(data.as_str()),
        )
        .map_err(|source| VolumeError::Mount {
            path: volume.mountpoint.clone(),
            source,
        })
    }

    /// Unmounts the volume's device; an error (moby returns the unmount's) when that fails.
    fn unmount(&self, volume: &Volume) -> Result<(), VolumeError> {
        match is_mount_point(&volume.mountpoint) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(io_err(&volume.mountpoint)(err)),
        }
        nix::mount::umount2(&volume.mountpoint, nix::mount::MntFlags::MNT_DETACH).map_err(
            |source| {
                warn!(volume = %volume.name, error = %source, "cannot unmount the volume");
                VolumeError::StillMounted {
                    name: volume.name.clone(),
                    path: volume.mountpoint.clone(),
                    source: Some(source),
                }
            },
        )
    }
}

/// Deletes what a crash left of a volume without a record, unless something is mounted on
/// its content (or that cannot be told): a device's files are never deleted.
fn remove_half_created(dir: &Path) {
    let data = dir.join(DATA);
    match is_mount_point(&data) {
        Ok(false) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Ok(true) => {
            warn!(path = %data.display(), "a volume left half-created is still mounted: kept");
            return;
        }
        Err(err) => {
            warn!(path = %data.display(), error = %err, "a volume left half-created is kept");
            return;
        }
    }
    warn!(path = %dir.display(), "removing a volume left half-created");
    if let Err(err) = std::fs::remove_dir_all(dir) {
        warn!(path = %dir.display(), error = %err, "cannot remove a volume left half-created");
    }
}

/// Whether `path` (not followed if a symlink) is the root of a mount: the kernel says so
/// (`STATX_ATTR_MOUNT_ROOT`, which sees a bind of a directory of the same filesystem too),
/// or it is on another device than its parent. Not read from the mount table, whose paths
/// differ from ours through symlinks or another root.
fn is_mount_point(path: &Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: an all-zero statx is a valid value of this plain C struct.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a NUL-terminated string and stx a writable statx, both live for the
    // call.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS,
            &mut stx,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mount_root = libc::STATX_ATTR_MOUNT_ROOT as u64;
    if stx.stx_attributes_mask & mount_root != 0 {
        return Ok(stx.stx_attributes & mount_root != 0);
    }
    // An older kernel: a mount of another filesystem changes the device.
    let parent = path.parent().unwrap_or(Path::new("/"));
    let own = std::fs::symlink_metadata(path)?;
    let up = std::fs::symlink_metadata(parent)?;
    Ok(own.dev() != up.dev() || own.ino() == up.ino())
}

/// The mount table's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount (from `/proc/self/mountinfo`) holding `path`, and its propagation fields
/// (`shared:N`, `master:N`), for the propagation checks of bind mounts.
pub fn mount_of(path: &Path) -> Option<(String, Vec<String>)> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let path = path.to_string_lossy();
    table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount_point = unescape(fields.get(4)?);
            let optional: Vec<String> = fields
                .iter()
                .skip(6)
                .take_while(|f| **f != "-")
                .map(|f| f.to_string())
                .collect();
            let inside = path == mount_point
                || mount_point == "/"
                || path.starts_with(&format!("{mount_point}/"));
            inside.then_some((mount_point, optional))
        })
        // The deepest mount point holds it; of stacked ones the last line is the top.
        .max_by_key(|(mount_point, _)| mount_point.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_options_are_checked_as_the_local_driver_does() {
        assert!(valid_name("data_1.x-y").is_ok());
        assert_eq!(
            valid_name("a").unwrap_err(),
            "volume name is too short, names should be at least two alphanumeric characters"
        );
        assert!(valid_name("-x").is_err());
        assert!(valid_name("a/b").is_err());
        let opts = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(
            valid_options(&opts(&[("foo", "1")])).unwrap_err(),
            "invalid option: \"foo\""
        );
        assert_eq!(
            valid_options(&opts(&[("type", "tmpfs")])).unwrap_err(),
            "missing required option: \"device\""
        );
        assert!(valid_options(&opts(&[("type", "tmpfs"), ("device", "tmpfs")])).is_ok());
    }

    #[test]
    fn volumes_persist_and_half_created_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::open(dir.path()).unwrap();
        let v = store
            .create(CreateOptions {
                name: "data".into(),
                ..CreateOptions::default()
            })
            .unwrap();
        assert_eq!(v.mountpoint, dir.path().join("volumes/data/_data"));
        std::fs::create_dir_all(dir.path().join("volumes/half/_data")).unwrap();
        let store = VolumeStore::open(dir.path()).unwrap();
        assert_eq!(store.get("data").unwrap().created_at, v.created_at);
        assert!(!dir.path().join("volumes/half").exists());
        store.remove("data").unwrap();
        assert!(matches!(
            store.get("data"),
            Err(VolumeError::NotFound { .. })
        ));
    }

    #[test]
    fn a_mounted_volume_left_half_created_keeps_its_device_files() {
        if !nix::unistd::geteuid().is_root() {
            // Mounting needs root; the engine tests (run as root) cover removal end to end.
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("device");
        std::fs::create_dir(&device).unwrap();
        std::fs::write(device.join("precious"), b"keep").unwrap();
        let data = dir.path().join("root/volumes/half/_data");
        std::fs::create_dir_all(&data).unwrap();
        nix::mount::mount(
            Some(&device),
            &data,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        assert!(is_mount_point(&data).unwrap());
        assert!(!is_mount_point(&device).unwrap());
        let opened = VolumeStore::open(&dir.path().join("root"));
        nix::mount::umount2(&data, nix::mount::MntFlags::MNT_DETACH).unwrap();
        opened.unwrap();
        assert_eq!(std::fs::read(device.join("precious")).unwrap(), b"keep");
    }

    #[test]
    fn mountinfo_escapes_are_read() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
