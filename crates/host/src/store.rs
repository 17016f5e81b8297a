//! The machine store: where machine records, certificates and cached guest images live.
//!
//! Layout (see `docs/internals.md`): `certs/` holds the CA and the client certificate,
//! `cache/guest/<version>/` the imported guest images, and `machines/NAME/` everything one
//! machine owns, starting with its record `config.json`. Records are written atomically (a
//! temporary file renamed over the old one), so a crash never leaves a torn record, and a
//! command that changes a machine holds `machines/NAME/.lock` for as long as it does.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rmachine_driver::{MachineDir, VmSpec};
use rmachine_guest_config::report::{DataDiskReport, SharesReport};
use rmachine_guest_config::timeline::BootTimeline;
use serde::{Deserialize, Serialize};

/// Version of the machine record format this build writes.
pub const CONFIG_VERSION: u32 = 1;

/// docker-machine's message for a name that breaks `^[a-zA-Z0-9][a-zA-Z0-9\-\.]*$`.
pub const INVALID_NAME_MESSAGE: &str =
    "Invalid hostname specified. Allowed hostname chars are: 0-9a-zA-Z . -";

/// What can go wrong in the store. Messages users act on follow docker-machine's wording.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No record for this machine.
    #[error("Docker machine \"{name}\" does not exist. Use \"rmachine ls\" to list machines. Use \"rmachine create\" to add a new one.")]
    NotFound {
        /// The machine asked for.
        name: String,
    },
    /// A machine of this name already exists.
    #[error("Docker machine \"{name}\" already exists")]
    AlreadyExists {
        /// The machine's name.
        name: String,
    },
    /// The name breaks docker-machine's hostname rule.
    #[error("{INVALID_NAME_MESSAGE}")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// No storage path was given and the platform has no data directory.
    #[error("cannot determine a storage path: no home directory; pass --storage-path")]
    NoDefaultPath,
    /// A file or directory of the store could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A machine record does not parse.
    #[error("machine record {path} is invalid")]
    Corrupt {
        /// The record.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A machine record was written by a newer rmachine.
    #[error("machine record {path} has version {found}, newer than this rmachine supports ({supported})")]
    TooNew {
        /// The record.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks a machine name against docker-machine's rule `^[a-zA-Z0-9][a-zA-Z0-9\-\.]*$`.
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName {
            name: name.to_string(),
        })
    }
}

/// The machine record, `machines/NAME/config.json`.
///
/// Field names follow docker-machine's `config.json` (ConfigVersion, Driver, DriverName,
/// HostOptions, Name) so `inspect --format '{{.Driver.IPAddress}}'` keeps working for its users;
/// rmachine adds the VM spec and the creation time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MachineConfig {
    /// Record format version, [`CONFIG_VERSION`] when written by this build.
    pub config_version: u32,
    /// Addresses and the driver's own options (stored opaquely).
    pub driver: DriverRecord,
    /// The driver's name (`qemu`).
    pub driver_name: String,
    /// Engine and TLS options.
    pub host_options: HostOptions,
    /// The machine's name.
    pub name: String,
    /// What the driver builds and boots.
    pub vm: VmSpec,
    /// When `create` made the machine.
    pub created: DateTime<Utc>,
    /// The data disk as the guest reported it at the last boot (format, check, mount);
    /// absent until a guest that reports it has booted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_disk: Option<DataDiskReport>,
    /// When each stage of the last boot was reached (guest and host side); absent until a
    /// machine has booted with a build that records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<BootTimeline>,
    /// How the guest mounted each share at the last boot; absent until a guest that reports
    /// it has booted with shares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_mounts: Option<SharesReport>,
    /// `create --published-bind-address`: the one host address the port agent binds published
    /// ports on; absent means 127.0.0.1 and ::1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_bind_address: Option<std::net::IpAddr>,
    /// `create --save-on-stop`: `stop` saves the running guest's state (as `stop --save`)
    /// and `start` resumes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub save_on_stop: bool,
}

/// docker-machine's `BaseDriver` fields plus the driver options, flattened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DriverRecord {
    /// Where the host reaches the guest (`127.0.0.1` with user-mode networking).
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    /// The machine's name.
    pub machine_name: String,
    /// The guest user SSH logs in as.
    #[serde(rename = "SSHUser")]
    pub ssh_user: String,
    /// Host port forwarded to the guest's SSH server (0 until the VM first starts).
    #[serde(rename = "SSHPort")]
    pub ssh_port: u16,
    /// Host port forwarded to the engine (0 until the VM first starts).
    pub engine_port: u16,
    /// The SSH private key.
    #[serde(rename = "SSHKeyPath")]
    pub ssh_key_path: PathBuf,
    /// The store's root.
    pub store_path: PathBuf,
    /// The driver's own options (`DriverOptions`), opaque to the store.
    #[serde(flatten)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// docker-machine's `HostOptions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostOptions {
    /// Engine options passed to the guest.
    pub engine_options: EngineOptions,
    /// Certificate paths.
    pub auth_options: AuthOptions,
}

/// docker-machine's `EngineOptions` (the subset rmachine implements).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EngineOptions {
    /// `--engine-env K=V`.
    pub env: Vec<String>,
    /// `--engine-insecure-registry`.
    pub insecure_registry: Vec<String>,
    /// `--engine-label K=V`, including `provider=DRIVER`.
    pub labels: Vec<String>,
    /// `--engine-registry-mirror`.
    pub registry_mirror: Vec<String>,
    /// Always true: the engine only serves mutual TLS.
    pub tls_verify: bool,
}

/// docker-machine's `AuthOptions`: where each certificate lives.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AuthOptions {
    /// `certs/`.
    pub cert_dir: PathBuf,
    /// `certs/ca.pem`.
    pub ca_cert_path: PathBuf,
    /// `certs/ca-key.pem`.
    pub ca_private_key_path: PathBuf,
    /// `machines/NAME/server.pem`.
    pub server_cert_path: PathBuf,
    /// `machines/NAME/server-key.pem`.
    pub server_key_path: PathBuf,
    /// `certs/key.pem`.
    pub client_key_path: PathBuf,
    /// `certs/cert.pem`.
    pub client_cert_path: PathBuf,
    /// Extra server certificate SANs (`--tls-san`).
    #[serde(rename = "ServerCertSANs")]
    pub server_cert_sans: Vec<String>,
    /// `machines/NAME`: DOCKER_CERT_PATH.
    pub store_path: PathBuf,
}

/// `machines/NAME/creating`: present from the moment `create` makes the directory until the
/// machine answers; one left behind marks a create that was interrupted.
pub const CREATING_MARKER: &str = "creating";

/// The store on disk.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    docker_config: Option<PathBuf>,
}

/// A held machine lock; released on drop.
#[derive(Debug)]
pub struct MachineLock {
    _file: File,
}

impl Store {
    /// The store at `path`, or at the platform's data directory for rmachine.
    pub fn open(path: Option<PathBuf>) -> Result<Self, StoreError> {
        let root = match path {
            Some(path) => path,
            None => directories::ProjectDirs::from("", "", "rmachine")
                .ok_or(StoreError::NoDefaultPath)?
                .data_dir()
                .to_path_buf(),
        };
        // Relative storage paths would make DOCKER_CERT_PATH depend on the caller's cwd.
        let root = if root.is_relative() {
            std::env::current_dir().map_err(io_err(&root))?.join(&root)
        } else {
            root
        };
        Ok(Self {
            root,
            docker_config: None,
        })
    }

    /// Keeps a `docker context` per machine in the Docker CLI configuration directory
    /// `docker_config` (see [`crate::context`]); without it, none is written.
    pub fn with_docker_contexts(mut self, docker_config: PathBuf) -> Self {
        self.docker_config = Some(docker_config);
        self
    }

    /// Where machines' docker contexts are kept, if they are.
    pub fn docker_config(&self) -> Option<&Path> {
        self.docker_config.as_deref()
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `certs/`.
    pub fn certs_dir(&self) -> PathBuf {
        self.root.join("certs")
    }

    /// `cache/`.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// `machines/`.
    pub fn machines_dir(&self) -> PathBuf {
        self.root.join("machines")
    }

    /// `machines/NAME`.
    pub fn machine_path(&self, name: &str) -> PathBuf {
        self.machines_dir().join(name)
    }

    /// The driver's view of `machines/NAME`.
    pub fn machine_dir(&self, name: &str) -> MachineDir {
        MachineDir::new(name, self.machine_path(name))
    }

    /// Whether a record exists for `name`.
    pub fn exists(&self, name: &str) -> bool {
        self.machine_path(name).join("config.json").is_file()
    }

    /// Fails with the docker-machine "does not exist" message unless `name` has a record.
    pub fn require(&self, name: &str) -> Result<(), StoreError> {
        if validate_name(name).is_ok() && self.exists(name) {
            Ok(())
        } else {
            Err(StoreError::NotFound {
                name: name.to_string(),
            })
        }
    }

    /// Names of all machines with a directory, sorted naturally (case-insensitive).
    pub fn list(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.machines_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&dir))?;
            if !entry.path().is_dir() {
                continue;
            }
            if let Some(name) = entry.file_name().to_str() {
                if validate_name(name).is_ok() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort_by(|a, b| natural_cmp(&a.to_lowercase(), &b.to_lowercase()));
        Ok(names)
    }

    /// Reads `machines/NAME/config.json`.
    pub fn load(&self, name: &str) -> Result<MachineConfig, StoreError> {
        self.require(name)?;
        let path = self.machine_path(name).join("config.json");
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let version: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                path: path.clone(),
                source,
            })?;
        let found = version
            .get("ConfigVersion")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        if found > u64::from(CONFIG_VERSION) {
            return Err(StoreError::TooNew {
                path,
                found: u32::try_from(found).unwrap_or(u32::MAX),
                supported: CONFIG_VERSION,
            });
        }
        serde_json::from_value(version).map_err(|source| StoreError::Corrupt { path, source })
    }

    /// Writes `machines/NAME/config.json` atomically (temporary file, then rename), mode 0600.
    pub fn save(&self, config: &MachineConfig) -> Result<(), StoreError> {
        let path = self.machine_path(&config.name).join("config.json");
        let mut json = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut json, formatter);
        config
            .serialize(&mut ser)
            .map_err(|source| StoreError::Corrupt {
                path: path.clone(),
                source,
            })?;
        write_atomic(&path, &json, true)
    }

    /// Makes `machines/NAME` (mode 0700) with its [`CREATING_MARKER`]; fails if it already
    /// exists, so two concurrent `create`s of one name cannot both proceed.
    pub fn create_machine_dir(&self, name: &str) -> Result<MachineDir, StoreError> {
        validate_name(name)?;
        let machines = self.machines_dir();
        fs::create_dir_all(&machines).map_err(io_err(&machines))?;
        let path = self.machine_path(name);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StoreError::AlreadyExists {
                    name: name.to_string(),
                })
            }
            Err(e) => return Err(io_err(&path)(e)),
        }
        set_mode(&path, 0o700)?;
        let marker = path.join(CREATING_MARKER);
        fs::write(&marker, format!("{}\n", std::process::id())).map_err(io_err(&marker))?;
        Ok(self.machine_dir(name))
    }

    /// Whether `create` of `name` has not finished: still running, or interrupted (Ctrl-C that
    /// could not clean up, SIGKILL, a crash, a power cut).
    pub fn is_unfinished(&self, name: &str) -> bool {
        validate_name(name).is_ok() && self.machine_path(name).join(CREATING_MARKER).exists()
    }

    /// Whether another process holds `name`'s lock right now (a `create` still running).
    pub fn is_locked(&self, name: &str) -> bool {
        let path = self.machine_path(name).join(".lock");
        let Ok(file) = File::open(&path) else {
            return false;
        };
        matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
    }

    /// Marks `create` of `name` as finished (removes [`CREATING_MARKER`]).
    pub fn finish_creating(&self, name: &str) -> Result<(), StoreError> {
        let marker = self.machine_path(name).join(CREATING_MARKER);
        match fs::remove_file(&marker) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&marker)(e)),
        }
    }

    /// Deletes `machines/NAME` and only that directory.
    pub fn remove_machine_dir(&self, name: &str) -> Result<(), StoreError> {
        validate_name(name)?;
        let path = self.machine_path(name);
        match fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Takes `machines/NAME/.lock`, waiting while another command holds it.
    pub fn lock(&self, name: &str) -> Result<MachineLock, StoreError> {
        let path = self.machine_path(name).join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.lock().map_err(io_err(&path))?;
        Ok(MachineLock { _file: file })
    }
}

/// Natural order, as docker-machine sorts `ls`: digit runs compare as numbers (`m2` < `m10`).
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut a, mut b) = (a, b);
    loop {
        match (a.chars().next(), b.chars().next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.len() - a.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                let db = b.len() - b.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                let (na, nb) = (
                    a[..da].trim_start_matches('0'),
                    b[..db].trim_start_matches('0'),
                );
                let order = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if order != Ordering::Equal {
                    return order;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(&y);
                }
                a = &a[x.len_utf8()..];
                b = &b[y.len_utf8()..];
            }
        }
    }
}

/// Writes `data` to `path` through a temporary file in the same directory and a rename, so
/// readers see the old or the new content, never a mix. `private` makes it mode 0600.
pub fn write_atomic(path: &Path, data: &[u8], private: bool) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(io_err(&tmp))?;
        file.write_all(data).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        if private {
            set_mode(&tmp, 0o600)?;
        }
        fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Sets Unix permission bits; a no-op elsewhere (Windows ACLs of the user's data dir apply).
pub fn set_mode(path: &Path, mode: u32) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rmachine_driver::{BootImage, GuestPorts};

    pub(crate) fn sample_config(store: &Store, name: &str) -> MachineConfig {
        let dir = store.machine_path(name);
        let mut options = serde_json::Map::new();
        options.insert("QemuAccel".into(), serde_json::json!("tcg"));
        MachineConfig {
            config_version: CONFIG_VERSION,
            driver: DriverRecord {
                ip_address: "127.0.0.1".into(),
                machine_name: name.into(),
                ssh_user: "root".into(),
                ssh_port: 40022,
                engine_port: 42376,
                ssh_key_path: dir.join("id_ed25519"),
                store_path: store.root().to_path_buf(),
                options,
            },
            driver_name: "qemu".into(),
            host_options: HostOptions::default(),
            name: name.into(),
            vm: VmSpec {
                cpus: 1,
                memory_mb: 1024,
                disk_size_mb: 20000,
                boot: BootImage {
                    kernel: "/k".into(),
                    initrd: "/i".into(),
                    cmdline: "console=ttyS0".into(),
                    arch: "x86_64".into(),
                    iso: None,
                    kernel_elf: None,
                    initrd_uncompressed: None,
                    features: Vec::new(),
                },
                config_drive: dir.join("config.img"),
                guest_ports: GuestPorts::default(),
                shares: Vec::new(),
            },
            created: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
            data_disk: None,
            timeline: None,
            share_mounts: None,
            published_bind_address: None,
            save_on_stop: false,
        }
    }

    #[test]
    fn names_follow_docker_machines_rule() {
        for good in ["a", "default", "A1", "my-vm.2", "0x"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", ".a", "bad name!", "a_b", "a/b", "é"] {
            let err = validate_name(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                "Invalid hostname specified. Allowed hostname chars are: 0-9a-zA-Z . -"
            );
        }
    }

    #[test]
    fn record_round_trips_with_docker_machine_field_names() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(Some(tmp.path().to_path_buf())).unwrap();
        store.create_machine_dir("intro").unwrap();
        let config = sample_config(&store, "intro");
        store.save(&config).unwrap();
        assert_eq!(store.load("intro").unwrap(), config);

        let text = fs::read_to_string(store.machine_path("intro").join("config.json")).unwrap();
        assert!(text.contains("\n    \"ConfigVersion\": 1,"), "{text}");
        assert!(text.contains("\"IPAddress\": \"127.0.0.1\""), "{text}");
        assert!(text.contains("\"QemuAccel\": \"tcg\""), "{text}");
        assert!(text.contains("\"DriverName\": \"qemu\""), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = store.machine_path("intro").join("config.json");
            let mode = fs::metadata(path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(store.list().unwrap(), vec!["intro".to_string()]);
    }

    #[test]
    fn machines_sort_naturally() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(Some(tmp.path().to_path_buf())).unwrap();
        for name in ["m10", "M2", "a", "m1"] {
            store.create_machine_dir(name).unwrap();
        }
        assert_eq!(store.list().unwrap(), vec!["a", "m1", "M2", "m10"]);
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f.json");
        write_atomic(&path, b"one", true).unwrap();
        write_atomic(&path, b"two", true).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.json")]);
    }

    #[test]
    fn missing_and_duplicate_machines_use_docker_machine_messages() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(Some(tmp.path().to_path_buf())).unwrap();
        assert_eq!(
            store.load("nope").unwrap_err().to_string(),
            "Docker machine \"nope\" does not exist. Use \"rmachine ls\" to list machines. \
             Use \"rmachine create\" to add a new one."
        );
        store.create_machine_dir("x").unwrap();
        assert_eq!(
            store.create_machine_dir("x").unwrap_err().to_string(),
            "Docker machine \"x\" already exists"
        );
        assert!(store.list().unwrap() == vec!["x".to_string()]);
        store.remove_machine_dir("x").unwrap();
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn newer_records_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(Some(tmp.path().to_path_buf())).unwrap();
        store.create_machine_dir("n").unwrap();
        let mut config = sample_config(&store, "n");
        config.config_version = CONFIG_VERSION + 1;
        store.save(&config).unwrap();
        assert!(matches!(
            store.load("n").unwrap_err(),
            StoreError::TooNew { .. }
        ));
    }

    #[test]
    fn lock_is_exclusive() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(Some(tmp.path().to_path_buf())).unwrap();
        store.create_machine_dir("l").unwrap();
        let held = store.lock("l").unwrap();
        let path = store.machine_path("l").join(".lock");
        let other = OpenOptions::new().write(true).open(&path).unwrap();
        assert!(other.try_lock().is_err());
        drop(held);
        assert!(other.try_lock().is_ok());
    }
}
