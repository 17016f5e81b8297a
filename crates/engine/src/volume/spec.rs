//! Mount specifications as dockerd parses them on Linux (moby volume/mounts/linux_parser.go):
//! `-v` strings (`HostConfig.Binds`), `--mount` (`HostConfig.Mounts`) and `--volumes-from`
//! modes. Each becomes a [`MountPoint`], the form the container record keeps (moby's
//! `MountPoints` in config.v2.json) and `inspect` shows under `Mounts`.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::state::Mount;

/// The label dockerd puts on the anonymous volumes it creates (Docker 23+), which `volume
/// prune` removes by default.
pub const ANONYMOUS_LABEL: &str = "com.docker.volume.anonymous";

/// Linux's default propagation of a bind mount.
pub const DEFAULT_PROPAGATION: &str = "rprivate";

const PROPAGATIONS: &[&str] = &[
    "private", "rprivate", "slave", "rslave", "shared", "rshared",
];

/// A mount of a container, decided at create and made at each start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct MountPoint {
    /// `bind`, `volume` or `tmpfs`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// The volume's name (volumes only).
    pub name: String,
    /// Host path: the bind's source, or the volume's mount point.
    pub source: String,
    /// Path in the container (cleaned).
    pub destination: String,
    /// The volume's driver (volumes only).
    pub driver: String,
    /// The mode string of a `-v` spec, as given (`ro,z`).
    pub mode: String,
    /// Writable.
    #[serde(rename = "RW")]
    pub rw: bool,
    /// Bind propagation (binds only).
    pub propagation: String,
    /// Fill an empty volume with the image's content at the destination (`nocopy` clears it).
    pub copy_data: bool,
    /// Create a missing bind source directory (`-v`; `--mount` refuses a missing one).
    pub create_source: bool,
    /// tmpfs options (`--mount type=tmpfs`), in mount(8) syntax.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tmpfs_options: String,
}

impl MountPoint {
    /// Whether this is a volume of the given name.
    pub fn uses_volume(&self, name: &str) -> bool {
        self.kind == "volume" && self.name == name
    }

    /// The entry of `inspect`'s `Mounts` (moby api/types `MountPoint`, omitempty kept).
    pub fn to_api(&self) -> serde_json::Value {
        let mut m = serde_json::json!({
            "Type": self.kind,
            "Source": self.source,
            "Destination": self.destination,
            "Mode": self.mode,
            "RW": self.rw,
            "Propagation": self.propagation,
        });
        if !self.name.is_empty() {
            m["Name"] = self.name.clone().into();
        }
        if !self.driver.is_empty() {
            m["Driver"] = self.driver.clone().into();
        }
        m
    }
}

/// A refused mount specification; the messages are dockerd's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A `-v` string of the wrong shape.
    #[error("invalid volume specification: '{raw}'")]
    InvalidSpec {
        /// The string.
        raw: String,
    },
    /// A `-v` string whose parts are wrong.
    #[error("invalid volume specification: '{raw}': {cause}")]
    InvalidSpecBecause {
        /// The string.
        raw: String,
        /// What is wrong with it.
        cause: Box<SpecError>,
    },
    /// A mode that is not a valid combination of options.
    #[error("invalid mode: {mode}")]
    InvalidMode {
        /// The mode.
        mode: String,
    },
    /// A `--mount` (or a part of a `-v` string) that is not valid for its type.
    #[error("invalid mount config for type \"{kind}\": {reason}")]
    MountConfig {
        /// `bind`, `volume`, `tmpfs`...
        kind: String,
        /// What is wrong.
        reason: String,
    },
    /// Two mounts on one destination.
    #[error("Duplicate mount point: {destination}")]
    Duplicate {
        /// The destination.
        destination: String,
    },
    /// `--volumes-from ""`.
    #[error("volumes-from specification cannot be an empty string")]
    EmptyVolumesFrom,
    /// A mount option this engine does not implement.
    #[error("rmachine-engine does not support {what} yet")]
    Unsupported {
        /// The option.
        what: String,
    },
}

fn mount_config(kind: &str, reason: impl Into<String>) -> SpecError {
    SpecError::MountConfig {
        kind: kind.to_string(),
        reason: reason.into(),
    }
}

/// moby's `linuxValidMountMode`: each option known, at most one of each group.
pub fn valid_mode(mode: &str) -> bool {
    if mode.is_empty() {
        return true;
    }
    let mut counts = [0u8; 5];
    for option in mode.split(',') {
        let group = match option {
            "rw" | "ro" => 0,
            "z" | "Z" => 1,
            o if PROPAGATIONS.contains(&o) => 2,
            "nocopy" => 3,
            "consistent" | "cached" | "delegated" => 4,
            _ => return false,
        };
        counts[group] += 1;
    }
    counts.iter().all(|&c| c <= 1)
}

fn read_write(mode: &str) -> bool {
    valid_mode(mode) && !mode.split(',').any(|o| o == "ro")
}

fn propagation_of(mode: &str) -> Option<&str> {
    mode.split(',').find(|o| PROPAGATIONS.contains(o))
}

/// Go's `path.Clean` for an absolute path.
pub fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => parts.push(n.to_str().unwrap_or_default()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    if path.starts_with('/') {
        format!("/{}", parts.join("/"))
    } else {
        parts.join("/")
    }
}

fn check_target(kind: &str, target: &str) -> Result<(), SpecError> {
    if target.is_empty() {
        return Err(mount_config(kind, "field Target must not be empty"));
    }
    if clean(target) == "/" {
        return Err(mount_config(
            kind,
            "invalid specification: destination can't be '/'",
        ));
    }
    absolute(kind, target)
}

fn absolute(kind: &str, path: &str) -> Result<(), SpecError> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(mount_config(
            kind,
            format!("invalid mount path: '{path}' mount path must be absolute"),
        ))
    }
}

/// Parses a `-v` string of `HostConfig.Binds` (moby `ParseMountRaw`).
pub fn parse_bind(raw: &str) -> Result<MountPoint, SpecError> {
    let invalid = || SpecError::InvalidSpec {
        raw: raw.to_string(),
    };
    let parts: Vec<&str> = raw.splitn(4, ':').collect();
    if parts[0].is_empty() {
        return Err(invalid());
    }
    let (source, target, mode) = match parts.as_slice() {
        [target] => ("", *target, ""),
        [source, target] => {
            // A destination and a mode is not a volume (`/foo:rw`).
            if valid_mode(target) {
                return Err(invalid());
            }
            (*source, *target, "")
        }
        [source, target, mode] => (*source, *target, *mode),
        _ => return Err(invalid()),
    };
    if !valid_mode(mode) {
        return Err(SpecError::InvalidMode {
            mode: mode.to_string(),
        });
    }
    let kind = if source.starts_with('/') {
        "bind"
    } else {
        "volume"
    };
    let because = |cause| SpecError::InvalidSpecBecause {
        raw: raw.to_string(),
        cause: Box::new(cause),
    };
    check_target(kind, target).map_err(because)?;
    let nocopy = mode.split(',').any(|o| o == "nocopy");
    let mut mp = MountPoint {
        kind: kind.into(),
        destination: clean(target),
        mode: mode.to_string(),
        rw: read_write(mode),
        ..MountPoint::default()
    };
    if kind == "bind" {
        if nocopy {
            return Err(because(mount_config(
                kind,
                "field VolumeOptions must not be specified",
            )));
        }
        mp.source = clean(source);
        mp.propagation = propagation_of(mode)
            .unwrap_or(DEFAULT_PROPAGATION)
            .to_string();
        mp.create_source = true;
    } else {
        if propagation_of(mode).is_some() {
            return Err(because(mount_config(
                kind,
                "field BindOptions must not be specified",
            )));
        }
        mp.name = source.to_string();
        mp.copy_data = !nocopy;
    }
    Ok(mp)
}

/// A volume's creation options from `--mount type=volume` (`volume-label`, `volume-opt`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeCreate {
    /// Labels for a volume the mount creates.
    pub labels: BTreeMap<String, String>,
    /// Driver options for a volume the mount creates.
    pub options: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct BindOptions {
    propagation: String,
    non_recursive: bool,
    create_mountpoint: bool,
    read_only_non_recursive: bool,
    read_only_force_recursive: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct VolumeOptions {
    no_copy: bool,
    labels: Option<BTreeMap<String, String>>,
    driver_config: Option<DriverConfig>,
    subpath: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct DriverConfig {
    name: String,
    options: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct TmpfsOptions {
    size_bytes: i64,
    mode: u32,
    options: Option<Vec<Vec<String>>>,
}

fn options<T: for<'de> Deserialize<'de> + Default>(
    kind: &str,
    value: &Option<serde_json::Value>,
) -> Result<Option<T>, SpecError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| mount_config(kind, e.to_string())),
    }
}

/// moby's `ConvertTmpfsOptions`: mount(8) options of a `--mount type=tmpfs`.
fn tmpfs_options(opts: Option<TmpfsOptions>, read_only: bool) -> Result<String, SpecError> {
    let mut raw = Vec::new();
    if read_only {
        raw.push("ro".to_string());
    }
    let opts = opts.unwrap_or_default();
    if opts.mode != 0 {
        raw.push(format!("mode={:o}", opts.mode));
    }
    if opts.size_bytes != 0 {
        let mut size = opts.size_bytes;
        let mut suffix = "";
        for (s, divisor) in [("g", 1i64 << 30), ("m", 1 << 20), ("k", 1 << 10)] {
            if size % divisor == 0 {
                size /= divisor;
                suffix = s;
                break;
            }
        }
        raw.push(format!("size={size}{suffix}"));
    }
    for option in opts.options.unwrap_or_default() {
        match option.as_slice() {
            [name] if matches!(name.as_str(), "exec" | "noexec") => raw.push(name.clone()),
            [name, value] if matches!(name.as_str(), "exec" | "noexec") => {
                raw.push(format!("{name}={value}"))
            }
            [name] | [name, _] => {
                return Err(mount_config("tmpfs", format!("invalid option: {name}")))
            }
            _ => return Err(mount_config("tmpfs", "invalid option array length")),
        }
    }
    Ok(raw.join(","))
}

/// Parses one `--mount` (`HostConfig.Mounts` entry; moby `ParseMountSpec`), checking that a
/// bind's source exists.
pub fn parse_mount(mount: &Mount) -> Result<(MountPoint, VolumeCreate), SpecError> {
    let kind = mount.kind.as_str();
    check_target(kind, &mount.target)?;
    let mut mp = MountPoint {
        kind: kind.to_string(),
        destination: clean(&mount.target),
        rw: !mount.read_only,
        ..MountPoint::default()
    };
    let mut create = VolumeCreate::default();
    match kind {
        "bind" => {
            if mount.source.is_empty() {
                return Err(mount_config(kind, "field Source must not be empty"));
            }
            let bind: Option<BindOptions> = options(kind, &mount.bind_options)?;
            if let Some(b) = &bind {
                if !b.propagation.is_empty() && !PROPAGATIONS.contains(&b.propagation.as_str()) {
                    return Err(mount_config(
                        kind,
                        format!("invalid propagation mode: {}", b.propagation),
                    ));
                }
                if b.non_recursive {
                    return Err(SpecError::Unsupported {
                        what: "non-recursive bind mounts (bind-recursive)".into(),
                    });
                }
                if b.read_only_non_recursive || b.read_only_force_recursive {
                    return Err(SpecError::Unsupported {
                        what: "recursive read-only options (bind-recursive=readonly)".into(),
                    });
                }
            }
            if mount.volume_options.is_some() {
                return Err(mount_config(
                    kind,
                    "field VolumeOptions must not be specified",
                ));
            }
            absolute(kind, &mount.source)?;
            let create_mountpoint = bind.as_ref().is_some_and(|b| b.create_mountpoint);
            if !create_mountpoint && std::fs::symlink_metadata(&mount.source).is_err() {
                return Err(mount_config(
                    kind,
                    format!("bind source path does not exist: {}", mount.source),
                ));
            }
            mp.source = clean(&mount.source);
            mp.create_source = create_mountpoint;
            mp.propagation = bind
                .map(|b| b.propagation)
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| DEFAULT_PROPAGATION.to_string());
        }
        "volume" => {
            if mount.bind_options.is_some() {
                return Err(mount_config(
                    kind,
                    "field BindOptions must not be specified",
                ));
            }
            let anonymous = mount.source.is_empty();
            let volume: Option<VolumeOptions> = options(kind, &mount.volume_options)?;
            if let Some(v) = &volume {
                if !v.subpath.is_empty() {
                    if anonymous {
                        return Err(mount_config(
                            kind,
                            "must not set Subpath when using anonymous volumes",
                        ));
                    }
                    return Err(SpecError::Unsupported {
                        what: "volume subpaths (volume-subpath)".into(),
                    });
                }
            }
            if mount.read_only && anonymous {
                return Err(mount_config(
                    kind,
                    "must not set ReadOnly mode when using anonymous volumes",
                ));
            }
            mp.name = mount.source.clone();
            mp.copy_data = true;
            if let Some(v) = volume {
                mp.copy_data = !v.no_copy;
                create.labels = v.labels.unwrap_or_default();
                if let Some(driver) = v.driver_config {
                    if !matches!(driver.name.as_str(), "" | "local") {
                        return Err(SpecError::Unsupported {
                            what: format!("the volume driver {}", driver.name),
                        });
                    }
                    create.options = driver.options.unwrap_or_default();
                }
            }
        }
        "tmpfs" => {
            if mount.bind_options.is_some() {
                return Err(mount_config(
                    kind,
                    "field BindOptions must not be specified",
                ));
            }
            if !mount.source.is_empty() {
                return Err(mount_config(kind, "field Source must not be specified"));
            }
            let tmpfs: Option<TmpfsOptions> = options(kind, &mount.tmpfs_options)?;
            mp.tmpfs_options = tmpfs_options(tmpfs, mount.read_only)?;
        }
        "image" | "npipe" | "cluster" => {
            return Err(SpecError::Unsupported {
                what: format!("mounts of type {kind} (--mount type={kind})"),
            })
        }
        _ => return Err(mount_config(kind, "mount type unknown")),
    }
    Ok((mp, create))
}

/// Parses a `--volumes-from` entry into the container and its mode (`rw` by default; moby
/// `ParseVolumesFrom`).
pub fn parse_volumes_from(spec: &str) -> Result<(String, String), SpecError> {
    if spec.is_empty() {
        return Err(SpecError::EmptyVolumesFrom);
    }
    let (id, mode) = spec.split_once(':').unwrap_or((spec, ""));
    if mode.is_empty() {
        return Ok((id.to_string(), "rw".into()));
    }
    let invalid = || SpecError::InvalidMode {
        mode: mode.to_string(),
    };
    if !valid_mode(mode) || propagation_of(mode).is_some() || mode.split(',').any(|o| o == "nocopy")
    {
        return Err(invalid());
    }
    Ok((id.to_string(), mode.to_string()))
}

/// Whether a `--volumes-from` mode lets the copied mounts be written.
pub fn volumes_from_rw(mode: &str) -> bool {
    read_write(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_parse_as_moby_does() {
        let b = parse_bind("/srv:/data:ro,rshared").unwrap();
        assert_eq!(
            (b.kind.as_str(), b.source.as_str(), b.destination.as_str()),
            ("bind", "/srv", "/data")
        );
        assert!(!b.rw);
        assert_eq!(b.propagation, "rshared");
        assert_eq!(b.mode, "ro,rshared");
        let b = parse_bind("/srv/../tmp/:/data/").unwrap();
        assert_eq!(
            (b.source.as_str(), b.destination.as_str()),
            ("/tmp", "/data")
        );
        assert_eq!(b.propagation, "rprivate");
        assert!(b.rw && b.create_source);
        let v = parse_bind("cache:/cache:nocopy").unwrap();
        assert_eq!((v.kind.as_str(), v.name.as_str()), ("volume", "cache"));
        assert!(!v.copy_data);
        let a = parse_bind("/anon").unwrap();
        assert_eq!((a.kind.as_str(), a.name.as_str()), ("volume", ""));
    }

    #[test]
    fn bad_binds_get_mobys_texts() {
        let err = |raw: &str| parse_bind(raw).unwrap_err().to_string();
        assert_eq!(err("/a:rw"), "invalid volume specification: '/a:rw'");
        assert_eq!(err(":/a"), "invalid volume specification: ':/a'");
        assert_eq!(
            err("/a:/b:/c:/d"),
            "invalid volume specification: '/a:/b:/c:/d'"
        );
        assert_eq!(err("/a:/b:rx"), "invalid mode: rx");
        assert_eq!(err("/a:/b:ro,rw"), "invalid mode: ro,rw");
        assert_eq!(
            err("/a:b"),
            "invalid volume specification: '/a:b': invalid mount config for type \"bind\": \
             invalid mount path: 'b' mount path must be absolute"
        );
        assert_eq!(
            err("/a:/"),
            "invalid volume specification: '/a:/': invalid mount config for type \"bind\": \
             invalid specification: destination can't be '/'"
        );
    }

    #[test]
    fn mounts_parse_with_their_options() {
        let m: Mount = serde_json::from_str(
            r#"{"Type":"tmpfs","Target":"/t","TmpfsOptions":{"SizeBytes":1048576,"Mode":448}}"#,
        )
        .unwrap();
        let (mp, _) = parse_mount(&m).unwrap();
        assert_eq!(mp.tmpfs_options, "mode=700,size=1m");
        let m: Mount = serde_json::from_str(
            r#"{"Type":"bind","Source":"/does-not-exist-here","Target":"/x"}"#,
        )
        .unwrap();
        assert_eq!(
            parse_mount(&m).unwrap_err().to_string(),
            "invalid mount config for type \"bind\": bind source path does not exist: \
             /does-not-exist-here"
        );
        let m: Mount = serde_json::from_str(
            r#"{"Type":"volume","Source":"v","Target":"/x","VolumeOptions":{"NoCopy":true,
            "Labels":{"a":"b"},"DriverConfig":{"Name":"local","Options":{"type":"tmpfs"}}}}"#,
        )
        .unwrap();
        let (mp, create) = parse_mount(&m).unwrap();
        assert!(!mp.copy_data);
        assert_eq!(create.labels["a"], "b");
        assert_eq!(create.options["type"], "tmpfs");
        let m: Mount =
            serde_json::from_str(r#"{"Type":"volume","Target":"/x","ReadOnly":true}"#).unwrap();
        assert_eq!(
            parse_mount(&m).unwrap_err().to_string(),
            "invalid mount config for type \"volume\": must not set ReadOnly mode when using \
             anonymous volumes"
        );
    }

    #[test]
    fn volumes_from_modes() {
        assert_eq!(
            parse_volumes_from("c").unwrap(),
            ("c".to_string(), "rw".to_string())
        );
        assert_eq!(parse_volumes_from("c:ro").unwrap().1, "ro");
        assert!(!volumes_from_rw("ro"));
        assert_eq!(
            parse_volumes_from("c:shared").unwrap_err().to_string(),
            "invalid mode: shared"
        );
    }
}
