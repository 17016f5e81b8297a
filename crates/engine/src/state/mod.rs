//! Persisted container records: `<data-root>/containers/<id>/config.v2.json`.
//!
//! The record is the engine's memory of a container across restarts. It is written atomically
//! (temp file + rename) after every state change, so a crash leaves either the old or the new
//! record, never half of one. The Docker-shaped `Config` and `HostConfig` are stored as the
//! client sent them (merged with the image config), unknown fields included, so `inspect`
//! returns what the client asked for.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

pub mod durable;
pub mod modes;

/// File name of the record inside a container's directory.
pub const RECORD_FILE: &str = "config.v2.json";

/// Errors reading or writing container records.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file or directory could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A record is not valid JSON of the expected shape.
    #[error("corrupt container record {path}")]
    Corrupt {
        /// The record file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Accepts Docker's `StrSlice`: a JSON string, an array of strings, or null.
fn str_slice<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => None,
        Some(OneOrMany::One(s)) => Some(vec![s]),
        Some(OneOrMany::Many(v)) => Some(v),
    })
}

/// Accepts null where Docker's Go types accept it for a slice or map.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Docker's container `Config` (the part of a create request describing the process).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerConfig {
    /// Hostname inside the container; empty means the short id.
    pub hostname: String,
    /// Domain name.
    pub domainname: String,
    /// `user`, `uid`, `user:group` or `uid:gid`.
    pub user: String,
    /// Whether the client attaches stdin.
    pub attach_stdin: bool,
    /// Whether the client attaches stdout.
    pub attach_stdout: bool,
    /// Whether the client attaches stderr.
    pub attach_stderr: bool,
    /// Allocate a PTY.
    pub tty: bool,
    /// Keep stdin open.
    pub open_stdin: bool,
    /// Close stdin after the first attached client detaches.
    pub stdin_once: bool,
    /// `KEY=value` pairs.
    #[serde(deserialize_with = "null_default")]
    pub env: Vec<String>,
    /// Command (arguments to the entrypoint).
    #[serde(deserialize_with = "str_slice")]
    pub cmd: Option<Vec<String>>,
    /// Entrypoint; `Some([])` resets the image's.
    #[serde(deserialize_with = "str_slice")]
    pub entrypoint: Option<Vec<String>>,
    /// The image reference the client gave.
    pub image: String,
    /// Working directory.
    pub working_dir: String,
    /// Labels.
    #[serde(deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
    /// Signal that stops the container (`SIGTERM` when empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Seconds between the stop signal and SIGKILL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<i64>,
    /// Exposed ports, `{"80/tcp": {}}`.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    /// Volumes, `{"/data": {}}`.
    #[serde(deserialize_with = "null_default")]
    pub volumes: BTreeMap<String, serde_json::Value>,
    /// Fields this engine does not interpret, kept for `inspect`.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Docker's `HostConfig` (the part of a create request describing the host side).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HostConfig {
    /// Remove the container when it exits (`--rm`).
    pub auto_remove: bool,
    /// Network mode; `default` when the client sent none.
    pub network_mode: String,
    /// Fields this engine does not interpret, kept for `inspect`.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            auto_remove: false,
            network_mode: "default".into(),
            extra: BTreeMap::new(),
        }
    }
}

/// Lifecycle status as Docker names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created, never started (or its start failed).
    Created,
    /// Its process runs.
    Running,
    /// It ran and stopped.
    Exited,
    /// Being removed.
    Removing,
    /// Could not be cleaned up.
    Dead,
}

impl Status {
    /// Docker's lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
            Status::Removing => "removing",
            Status::Dead => "dead",
        }
    }
}

/// The changing part of a container record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerState {
    /// Lifecycle status.
    pub status: Status,
    /// Its processes are frozen (`docker pause`); only while `status` is running. Kept on
    /// disk so the record never says "running" of a frozen container.
    #[serde(default)]
    pub paused: bool,
    /// Host PID of the container's PID 1 while running, else 0.
    pub pid: i32,
    /// Last exit code (127/126 after a failed start).
    pub exit_code: i64,
    /// Why the last start failed, else empty.
    pub error: String,
    /// When the container last started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the container last stopped.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Everything the engine keeps about one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerRecord {
    /// 64 hex characters.
    pub id: String,
    /// Name with its leading slash, as Docker stores it.
    pub name: String,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// The process path (first word of entrypoint + cmd).
    pub path: String,
    /// The process arguments after `path`.
    pub args: Vec<String>,
    /// Image id (`sha256:…`).
    pub image_id: String,
    /// Merged config.
    pub config: ContainerConfig,
    /// Host config.
    pub host_config: HostConfig,
    /// Current state.
    pub state: ContainerState,
    /// How often it was restarted by a restart policy.
    pub restart_count: u64,
}

impl ContainerRecord {
    /// The first 12 characters of the id.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }

    /// The command line `docker ps` shows: an argument holding a space is single-quoted, the
    /// path never is (moby daemon/container/view.go `transform`).
    pub fn command_line(&self) -> String {
        std::iter::once(self.path.clone())
            .chain(self.args.iter().map(|arg| {
                if arg.contains(' ') {
                    format!("'{arg}'")
                } else {
                    arg.clone()
                }
            }))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The directory holding every container's directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    root: PathBuf,
}

impl StateStore {
    /// Opens (creating) `<data-root>/containers`.
    pub fn open(data_root: &Path) -> Result<StateStore, StateError> {
        let root = data_root.join("containers");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(modes::CONTAINERS_DIR)
            .create(&root)
            .map_err(|source| StateError::Io {
                path: root.clone(),
                source,
            })?;
        Ok(StateStore { root })
    }

    /// Creates a new container's directory (dockerd's mode), durably: the record written
    /// next is then found at the next start.
    pub fn create_dir(&self, id: &str) -> Result<(), StateError> {
        let dir = self.dir(id);
        let io = |source| StateError::Io {
            path: dir.clone(),
            source,
        };
        fs::DirBuilder::new()
            .mode(modes::CONTAINER_DIR)
            .create(&dir)
            .map_err(io)?;
        // The umask may have taken bits off; the mode is the engine's decision.
        fs::set_permissions(&dir, fs::Permissions::from_mode(modes::CONTAINER_DIR)).map_err(io)?;
        durable::sync_dir(&self.root).map_err(io)
    }

    /// The directory of one container.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Reads every record; unreadable ones are logged and skipped, since one corrupt record
    /// must not keep the engine from starting.
    pub fn load_all(&self) -> Result<Vec<ContainerRecord>, StateError> {
        let entries = fs::read_dir(&self.root).map_err(|source| StateError::Io {
            path: self.root.clone(),
            source,
        })?;
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path().join(RECORD_FILE);
            if !path.exists() {
                continue;
            }
            match read_record(&path) {
                Ok(record) => records.push(record),
                Err(err) => tracing::warn!(error = %err, "skipping container record"),
            }
        }
        records.sort_by_key(|r| r.created);
        Ok(records)
    }

    /// Writes a record atomically.
    pub fn save(&self, record: &ContainerRecord) -> Result<(), StateError> {
        self.write_record(record, true)
    }

    /// Writes a record atomically without waiting for the disk: for a container's exit, which
    /// a crash cannot lose in effect (a record still saying "running" is marked exited when
    /// the engine starts) and which `docker stop` and `docker wait` are waiting on. The
    /// rename still replaces the old record whole (ext4 flushes a file renamed over another).
    pub fn save_unsynced(&self, record: &ContainerRecord) -> Result<(), StateError> {
        self.write_record(record, false)
    }

    fn write_record(&self, record: &ContainerRecord, sync: bool) -> Result<(), StateError> {
        let dir = self.dir(&record.id);
        let path = dir.join(RECORD_FILE);
        let tmp = dir.join(format!(".{RECORD_FILE}.tmp"));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        let json = serde_json::to_vec(record).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        if sync {
            return durable::write_atomic(&path, &json, modes::CONFIG_FILE).map_err(io(&path));
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(modes::CONFIG_FILE)
            .open(&tmp)
            .map_err(io(&tmp))?;
        file.write_all(&json).map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(())
    }

    /// Deletes a container's directory (record, log, writable layer), durably: a removed
    /// container does not come back after a power cut.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let dir = self.dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(StateError::Io { path: dir, source }),
        }
        // The removal happened; a directory that cannot be flushed is only logged.
        if let Err(err) = durable::sync_dir(&self.root) {
            tracing::warn!(path = %self.root.display(), error = %err, "cannot flush the containers directory");
        }
        Ok(())
    }
}

fn read_record(path: &Path) -> Result<ContainerRecord, StateError> {
    let bytes = fs::read(path).map_err(|source| StateError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_accepts_docker_cli_shapes() {
        let json = r#"{"Hostname":"","Env":null,"Cmd":"echo hi","Entrypoint":null,
            "Image":"busybox","Labels":null,"OnBuild":null,"Tty":false}"#;
        let config: ContainerConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.cmd, Some(vec!["echo hi".to_string()]));
        assert_eq!(config.entrypoint, None);
        assert!(config.env.is_empty());
        assert!(config.extra.contains_key("OnBuild"));
    }

    #[test]
    fn records_written_before_the_paused_flag_still_load() {
        let json = r#"{"Status":"running","Pid":7,"ExitCode":0,"Error":"",
            "StartedAt":null,"FinishedAt":null}"#;
        let state: ContainerState = serde_json::from_str(json).unwrap();
        assert!(!state.paused);
        assert_eq!(state.status, Status::Running);
    }

    #[test]
    fn records_round_trip_through_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let id = "a".repeat(64);
        fs::create_dir_all(store.dir(&id)).unwrap();
        let record = ContainerRecord {
            id: id.clone(),
            name: "/x".into(),
            created: Utc::now(),
            path: "echo".into(),
            args: vec!["hi".into()],
            image_id: "sha256:00".into(),
            config: ContainerConfig::default(),
            host_config: HostConfig::default(),
            state: ContainerState {
                status: Status::Created,
                paused: false,
                pid: 0,
                exit_code: 0,
                error: String::new(),
                started_at: None,
                finished_at: None,
            },
            restart_count: 0,
        };
        store.save(&record).unwrap();
        assert_eq!(store.load_all().unwrap(), vec![record]);
        store.remove(&id).unwrap();
        assert!(store.load_all().unwrap().is_empty());
    }
}
