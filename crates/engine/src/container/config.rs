//! Turning a create request and an image into what the container runs: Docker's config merge,
//! user resolution from the image's `/etc/passwd`, names and console size.

use std::path::{Component, Path, PathBuf};

use crate::core::EngineError;
use crate::image::ImageRecord;
use crate::state::{ContainerConfig, HostConfig};

/// Applies the image's config where the request left things unset, as dockerd's `merge`.
pub fn merge_image_config(config: &mut ContainerConfig, image: &ImageRecord) {
    let ic = &image.config;
    if config.user.is_empty() {
        config.user = ic.user.clone();
    }
    for port in &ic.exposed_ports {
        config
            .exposed_ports
            .entry(port.clone())
            .or_insert_with(|| serde_json::json!({}));
    }
    if config.env.is_empty() {
        config.env = ic.env.clone();
    } else {
        for var in &ic.env {
            let key = var.split('=').next().unwrap_or("");
            if !config
                .env
                .iter()
                .any(|v| v.split('=').next().unwrap_or("") == key)
            {
                config.env.push(var.clone());
            }
        }
    }
    for (k, v) in &ic.labels {
        config.labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    if config.entrypoint.as_ref().is_none_or(Vec::is_empty) {
        if config.cmd.as_ref().is_none_or(Vec::is_empty) {
            config.cmd = ic.cmd.clone();
        }
        if config.entrypoint.is_none() {
            config.entrypoint = ic.entrypoint.clone();
        }
    }
    // `--entrypoint ""` arrives as `[""]`: it resets the entrypoint, and, not being empty,
    // kept the image's Cmd out above (dockerd's mergeAndVerifyConfig).
    if config
        .entrypoint
        .as_deref()
        .is_some_and(|e| matches!(e, [only] if only.is_empty()))
    {
        config.entrypoint = None;
    }
    if config.working_dir.is_empty() {
        config.working_dir = ic.working_dir.clone();
    }
    // The image's volumes join the request's (moby's `merge`), they do not give way to them.
    for volume in &ic.volumes {
        config
            .volumes
            .entry(volume.clone())
            .or_insert_with(|| serde_json::json!({}));
    }
    if config.stop_signal.as_deref().is_none_or(str::is_empty) {
        config.stop_signal = ic.stop_signal.clone();
    }
    super::health::merge_image(config, ic.healthcheck.as_ref());
}

/// `HostConfig.ConsoleSize` (`[height, width]`), which the CLI sends for `-t` so the PTY has
/// its size before the process starts.
pub fn console_size(host_config: &HostConfig) -> Option<(u16, u16)> {
    let size = host_config.console_size;
    let dim = |i: usize| u16::try_from(size[i]).ok();
    Some((dim(0)?, dim(1)?)).filter(|(h, w)| *h > 0 && *w > 0)
}

/// dockerd's checks of a create request's `Config` (daemon/container.go
/// `validateContainerConfig`): an absolute working directory (kept cleaned, as
/// `filepath.Clean` does) and environment entries with a name.
pub fn validate_config(config: &mut ContainerConfig) -> Result<(), EngineError> {
    if !config.working_dir.is_empty() {
        if !config.working_dir.starts_with('/') {
            return Err(EngineError::InvalidParameter {
                reason: format!(
                    "the working directory '{}' is invalid, it needs to be an absolute path",
                    config.working_dir
                ),
            });
        }
        config.working_dir = clean_path(&config.working_dir);
    }
    if let Some(bad) = config.env.iter().find(|e| e.split('=').next() == Some("")) {
        return Err(EngineError::InvalidParameter {
            reason: format!("invalid environment variable: {bad}"),
        });
    }
    super::health::validate_config(config)
        .map_err(|reason| EngineError::InvalidParameter { reason })?;
    Ok(())
}

/// Go's `filepath.Clean` for an absolute path.
fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Checks a container name against Docker's rule `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn validate_name(name: &str) -> Result<(), EngineError> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let mut chars = bare.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && bare.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if valid {
        Ok(())
    } else {
        Err(EngineError::InvalidParameter {
            reason: format!(
                "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            ),
        })
    }
}

/// The identity a container process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups, as dockerd's `getUser` gives them: the primary group first, then
    /// the user's `/etc/group` memberships (only when no group was named), then `--group-add`.
    pub additional_gids: Vec<u32>,
    /// Home directory, for `HOME` when the config does not set it.
    pub home: String,
}

/// The largest uid or gid dockerd accepts (moby/sys/user's `maxID`).
const MAX_ID: i64 = (1 << 31) - 1;

fn id_range_error() -> EngineError {
    EngineError::InvalidParameter {
        reason: format!("uids and gids must be in range 0-{MAX_ID}"),
    }
}

/// Go's `strconv.Atoi` as moby/sys/user's `parseNumeric` uses it: `None` for a name, an error
/// for a number outside `0..=MAX_ID`.
fn parse_numeric(value: &str) -> Result<Option<u32>, EngineError> {
    if value.is_empty() {
        return Ok(None);
    }
    match value.parse::<i64>() {
        Ok(id) => u32::try_from(id)
            .ok()
            .filter(|id| i64::from(*id) <= MAX_ID)
            .map(Some)
            .ok_or_else(id_range_error),
        Err(err)
            if matches!(
                err.kind(),
                std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow
            ) =>
        {
            Err(id_range_error())
        }
        Err(_) => Ok(None),
    }
}

/// A numeric passwd/group field as Go's `parseLine` reads it: anything unparsable is 0.
fn field_id(field: Option<&str>) -> i64 {
    field.and_then(|f| f.parse().ok()).unwrap_or(0)
}

struct PasswdEntry {
    name: String,
    uid: i64,
    gid: i64,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: i64,
    members: Vec<String>,
}

fn parse_passwd(content: &str) -> Vec<PasswdEntry> {
    content
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            PasswdEntry {
                name: fields[0].to_string(),
                uid: field_id(fields.get(2).copied()),
                gid: field_id(fields.get(3).copied()),
                home: fields.get(5).copied().unwrap_or("").to_string(),
            }
        })
        .collect()
}

/// A group named by number or name, as moby/sys/user does for `-u user:group` and
/// `--group-add`: a number found in the group file, a number it lacks, or a name it has.
fn find_gid(groups: &[GroupEntry], wanted: &str) -> Result<u32, EngineError> {
    let numeric = parse_numeric(wanted)?;
    let found = groups.iter().find(|g| match numeric {
        Some(gid) => g.gid == i64::from(gid),
        None => g.name == wanted,
    });
    match (found, numeric) {
        (Some(group), _) => checked_id(group.gid),
        (None, Some(gid)) => Ok(gid),
        (None, None) => Err(EngineError::InvalidParameter {
            reason: format!("unable to find group {wanted}: no matching entries in group file"),
        }),
    }
}

fn parse_group(content: &str) -> Vec<GroupEntry> {
    content
        .lines()
        .map(str::trim)
        // As glibc (and moby/sys/user): comments are allowed in /etc/group.
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            GroupEntry {
                name: fields[0].to_string(),
                gid: field_id(fields.get(2).copied()),
                members: fields
                    .get(3)
                    .filter(|m| !m.is_empty())
                    .map(|m| m.split(',').map(str::to_string).collect())
                    .unwrap_or_default(),
            }
        })
        .collect()
}

fn checked_id(id: i64) -> Result<u32, EngineError> {
    u32::try_from(id)
        .ok()
        .filter(|id| i64::from(*id) <= MAX_ID)
        .ok_or_else(id_range_error)
}

/// The groups of `HostConfig.GroupAdd` (`--group-add`), names or numbers.
pub fn group_add(host_config: &HostConfig) -> Vec<String> {
    host_config.group_add.clone().unwrap_or_default()
}

/// Resolves `user[:group]` (names or numbers) against `/etc/passwd` and `/etc/group` of the
/// container's layers, searched top down, without `--group-add`.
pub fn resolve_user(user: &str, layers: &[PathBuf]) -> Result<ResolvedUser, EngineError> {
    resolve_user_with(user, layers, &[])
}

/// The most passwd or group text the engine reads from a container.
const ACCOUNT_FILE_LIMIT: u64 = 1 << 20;

/// What a layer holds at a path.
enum LayerEntry {
    /// Nothing: a lower layer may have it.
    Absent,
    /// The overlay whiteout (a 0:0 character device): deleted for every lower layer too.
    Deleted,
    /// Something the engine will not read (a FIFO, a device, a directory…).
    Unreadable,
    /// A regular file's text, up to [`ACCOUNT_FILE_LIMIT`].
    Text(String),
}

/// Reads `rel` (e.g. `etc/passwd`) as the container sees it through its overlay `layers`
/// (topmost first). The files are the container's to change while it runs, so each lookup is
/// confined to its layer (`RESOLVE_IN_ROOT`: no symlink or `..` reaches the host) and only a
/// regular file is opened for reading (`O_PATH` first, then reopened): a FIFO, a device node or
/// a huge file a container planted cannot hang the engine, read the host's devices or fill its
/// memory.
pub fn read_layered(layers: &[PathBuf], rel: &str) -> Option<String> {
    for layer in layers {
        match read_in_layer(layer, rel) {
            LayerEntry::Absent => continue,
            LayerEntry::Text(text) => return Some(text),
            LayerEntry::Deleted | LayerEntry::Unreadable => return None,
        }
    }
    None
}

fn read_in_layer(layer: &Path, rel: &str) -> LayerEntry {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

    let Ok(dir) = std::fs::File::open(layer) else {
        return LayerEntry::Absent;
    };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let found = match openat2(&dir, rel, how) {
        Ok(fd) => std::fs::File::from(fd),
        Err(nix::errno::Errno::ENOENT) => return LayerEntry::Absent,
        Err(_) => return LayerEntry::Unreadable,
    };
    let Ok(meta) = found.metadata() else {
        return LayerEntry::Unreadable;
    };
    let kind = meta.file_type();
    if kind.is_char_device() && meta.rdev() == 0 {
        return LayerEntry::Deleted;
    }
    if !kind.is_file() {
        return LayerEntry::Unreadable;
    }
    // Reopening the O_PATH descriptor reads exactly the inode checked above.
    let reopened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", found.as_raw_fd()));
    let mut text = String::new();
    match reopened.map(|f| f.take(ACCOUNT_FILE_LIMIT).read_to_string(&mut text)) {
        Ok(Ok(_)) => LayerEntry::Text(text),
        _ => LayerEntry::Unreadable,
    }
}

/// Resolves `user[:group]` as dockerd's `getUser` (moby/sys/user `GetExecUser`): an empty user
/// is uid 0; a number is a uid even without a passwd entry (gid 0 then, no memberships); a
/// user found in passwd brings its gid and home, and its `/etc/group` memberships unless a
/// group is given; `group_add` (`--group-add`) is appended to the supplementary groups.
pub fn resolve_user_with(
    user: &str,
    layers: &[PathBuf],
    group_add: &[String],
) -> Result<ResolvedUser, EngineError> {
    let read = |file: &str| read_layered(layers, file);
    let mut parts = user.split(':');
    let user_arg = parts.next().unwrap_or("");
    let group_arg = parts.next().unwrap_or("");
    let uid_arg = parse_numeric(user_arg)?;
    // Checked before any lookup, so an out-of-range gid is the error even for an unknown user.
    parse_numeric(group_arg)?;

    let passwd = read("etc/passwd")
        .map(|p| parse_passwd(&p))
        .unwrap_or_default();
    let matched = passwd.into_iter().find(|u| {
        if user_arg.is_empty() {
            u.uid == 0
        } else if let Some(uid) = uid_arg {
            u.uid == i64::from(uid)
        } else {
            u.name == user_arg
        }
    });
    let (uid, mut gid, home, name) = match matched {
        Some(entry) => (
            checked_id(entry.uid)?,
            checked_id(entry.gid)?,
            entry.home,
            Some(entry.name),
        ),
        None if user_arg.is_empty() => (0, 0, String::new(), None),
        // Only a number may name a user passwd does not know.
        None => match uid_arg {
            Some(uid) => (uid, 0, String::new(), None),
            None => {
                return Err(EngineError::InvalidParameter {
                    reason: format!(
                        "unable to find user {user_arg}: no matching entries in passwd file"
                    ),
                })
            }
        },
    };

    let groups = read("etc/group")
        .map(|g| parse_group(&g))
        .unwrap_or_default();
    let mut sgids = Vec::new();
    if !group_arg.is_empty() {
        gid = find_gid(&groups, group_arg)?;
    } else if let Some(name) = &name {
        for group in groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == name))
        {
            sgids.push(checked_id(group.gid)?);
        }
    }

    let mut additional_gids = vec![gid];
    additional_gids.extend(sgids);
    let mut added: Vec<u32> = Vec::new();
    for wanted in group_add {
        let gid = find_gid(&groups, wanted)?;
        if !added.contains(&gid) {
            added.push(gid);
        }
    }
    additional_gids.extend(added);
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        // As runc: the passwd entry's home, else `/`.
        home: if home.is_empty() { "/".into() } else { home },
    })
}

/// dockerd's `CreateDaemonEnvironment`: `PATH`, `HOSTNAME`, `TERM` with a TTY, then the
/// container's `Env` on top (a bare `KEY` removing one).
pub fn daemon_environment(env: &[String], tty: bool, hostname: &str) -> Vec<String> {
    let mut defaults = vec![
        format!("PATH={}", rmachine_runtime::lookup::DEFAULT_PATH),
        format!("HOSTNAME={hostname}"),
    ];
    if tty {
        defaults.push("TERM=xterm".into());
    }
    replace_or_append_env(defaults, env)
}

/// Adds `HOME` when `env` has none, as runc does from the user's passwd entry.
pub fn with_home(mut env: Vec<String>, home: &str) -> Vec<String> {
    if !env.iter().any(|v| v.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    env
}

/// The environment of a container's first process: [`daemon_environment`] and `HOME`.
pub fn container_env(config: &ContainerConfig, hostname: &str, home: &str) -> Vec<String> {
    with_home(daemon_environment(&config.env, config.tty, hostname), home)
}

/// dockerd's `SetupWorkingDirectory` refusal: the working directory exists in the container's
/// layers (searched top down) as something other than a directory. A path the layers reach
/// through a symlink is left to the runtime, which resolves it inside the container.
pub fn check_working_dir(working_dir: &str, layers: &[PathBuf]) -> Result<(), EngineError> {
    let rel = working_dir.trim_start_matches('/');
    if rel.is_empty() {
        return Ok(());
    }
    let parts: Vec<_> = Path::new(rel).components().collect();
    // `..` or `.` (an image's WorkingDir is not cleaned) is left to the runtime, which resolves
    // it inside the container; joined here it could reach the host's paths.
    if !parts.iter().all(|p| matches!(p, Component::Normal(_))) {
        return Ok(());
    }
    let mut prefix = PathBuf::new();
    for (index, part) in parts.iter().enumerate() {
        prefix.push(part);
        let Some(meta) = layers
            .iter()
            .find_map(|layer| std::fs::symlink_metadata(layer.join(&prefix)).ok())
        else {
            // Missing: the runtime creates it.
            return Ok(());
        };
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            return Ok(());
        }
        if !file_type.is_dir() {
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            // An overlay whiteout (char device 0:0) hides the lower entries: missing.
            if file_type.is_char_device() && meta.rdev() == 0 {
                return Ok(());
            }
            if index + 1 == parts.len() {
                return Err(EngineError::WorkingDirNotDir {
                    path: working_dir.to_string(),
                });
            }
            return Ok(());
        }
    }
    Ok(())
}

/// Docker's `ReplaceOrAppendEnvValues`: each `KEY=value` of `overrides` replaces the entry of
/// `defaults` with that key or is appended; a bare `KEY` (the CLI sends `-e KEY` as is when
/// `KEY` is unset on the client) removes `KEY` from `defaults` and is otherwise dropped.
pub fn replace_or_append_env(mut defaults: Vec<String>, overrides: &[String]) -> Vec<String> {
    let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_string();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, e) in defaults.iter().enumerate() {
        index.insert(key(e), i);
    }
    for value in overrides {
        match value.split_once('=') {
            None => {
                if let Some(&i) = index.get(value.as_str()) {
                    // Emptied here, removed below, so that indexes stay valid.
                    defaults[i].clear();
                }
            }
            Some((k, _)) => match index.get(k) {
                Some(&i) => defaults[i] = value.clone(),
                None => {
                    // Indexed too: a key given twice (`-e K` and `K` in an --env-file) ends up
                    // once, the last value winning, as runc's prepareEnv leaves it.
                    index.insert(k.to_string(), defaults.len());
                    defaults.push(value.clone());
                }
            },
        }
    }
    defaults.retain(|e| !e.is_empty());
    defaults
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn working_dirs_must_be_absolute_and_are_cleaned() {
        let mut config = ContainerConfig {
            working_dir: "/srv//app/../data/".into(),
            env: vec!["A=1".into(), "B".into()],
            ..ContainerConfig::default()
        };
        validate_config(&mut config).unwrap();
        assert_eq!(config.working_dir, "/srv/data");
        config.working_dir = "relative".into();
        assert_eq!(
            validate_config(&mut config).unwrap_err().to_string(),
            "the working directory 'relative' is invalid, it needs to be an absolute path"
        );
        config.working_dir = "/".into();
        config.env.push("=x".into());
        assert_eq!(
            validate_config(&mut config).unwrap_err().to_string(),
            "invalid environment variable: =x"
        );
    }
    use crate::image::ImageConfig;

    fn image(cmd: Option<&[&str]>, entrypoint: Option<&[&str]>) -> ImageRecord {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        ImageRecord {
            id: "sha256:ab".into(),
            repo_tags: vec![],
            config: ImageConfig {
                env: vec!["PATH=/bin".into(), "A=image".into()],
                cmd: cmd.map(strings),
                entrypoint: entrypoint.map(strings),
                working_dir: "/srv".into(),
                user: String::new(),
                labels: BTreeMap::new(),
                exposed_ports: vec![],
                stop_signal: None,
                volumes: vec![],
                healthcheck: None,
            },
            created: String::new(),
            size: 0,
        }
    }

    #[test]
    fn entrypoint_given_drops_image_cmd_and_env_merges_by_key() {
        let mut config = ContainerConfig {
            entrypoint: Some(vec!["/bin/echo".into()]),
            env: vec!["A=user".into()],
            ..Default::default()
        };
        merge_image_config(&mut config, &image(Some(&["sh"]), None));
        assert_eq!(config.cmd, None);
        assert_eq!(
            config.env,
            vec!["A=user".to_string(), "PATH=/bin".to_string()]
        );
        assert_eq!(config.working_dir, "/srv");

        let mut config = ContainerConfig::default();
        merge_image_config(&mut config, &image(Some(&["sh"]), Some(&["/init"])));
        assert_eq!(config.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(config.entrypoint, Some(vec!["/init".to_string()]));
    }

    #[test]
    fn users_resolve_from_the_image_passwd() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww:x:33:33::/var/www:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "www:x:33:\nextra:x:50:www\n").unwrap();
        let layers = [dir.path().to_path_buf()];
        let ids = |u: &str| {
            let r = resolve_user(u, &layers).unwrap();
            (r.uid, r.gid, r.additional_gids, r.home)
        };
        // The primary group first, then memberships.
        assert_eq!(ids("www"), (33, 33, vec![33, 50], "/var/www".to_string()));
        assert_eq!(ids(""), (0, 0, vec![0], "/root".to_string()));
        assert_eq!(ids("1000:7"), (1000, 7, vec![7], "/".to_string()));
        // A uid found in passwd is that user; a named group drops the memberships.
        assert_eq!(ids("33:www"), (33, 33, vec![33], "/var/www".to_string()));
        assert_eq!(
            resolve_user("nobody2", &layers).unwrap_err().to_string(),
            "unable to find user nobody2: no matching entries in passwd file"
        );
        assert_eq!(
            resolve_user("www:nogroup", &layers)
                .unwrap_err()
                .to_string(),
            "unable to find group nogroup: no matching entries in group file"
        );
        assert_eq!(
            resolve_user("4294967296", &layers).unwrap_err().to_string(),
            "uids and gids must be in range 0-2147483647"
        );
        let added = resolve_user_with(
            "1000:7",
            &layers,
            &["extra".into(), "9".into(), "50".into()],
        )
        .unwrap();
        assert_eq!(added.additional_gids, vec![7, 50, 9]);
        assert!(resolve_user_with("www", &layers, &["nosuch".into()]).is_err());
    }

    #[test]
    fn account_files_are_read_only_as_regular_files_inside_their_layer() {
        let upper = tempfile::tempdir().unwrap();
        let lower = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(upper.path().join("etc")).unwrap();
        std::fs::create_dir_all(lower.path().join("etc")).unwrap();
        std::fs::write(
            lower.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\n",
        )
        .unwrap();
        let layers = vec![upper.path().to_path_buf(), lower.path().to_path_buf()];

        // A symlink to a host file resolves inside the upper layer, where nothing is: the lower
        // layer's file is read, never the host's.
        std::os::unix::fs::symlink("/etc/os-release", upper.path().join("etc/passwd")).unwrap();
        assert_eq!(
            read_layered(&layers, "etc/passwd").as_deref(),
            Some("root:x:0:0::/root:/bin/sh\n")
        );
        // A FIFO is refused at once instead of blocking the engine.
        std::fs::remove_file(upper.path().join("etc/passwd")).unwrap();
        nix::unistd::mkfifo(
            &upper.path().join("etc/passwd"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        assert_eq!(read_layered(&layers, "etc/passwd"), None);
        assert_eq!(read_layered(&layers, "etc/group"), None);
    }

    #[test]
    fn a_key_given_twice_is_kept_once_with_the_last_value() {
        let env = replace_or_append_env(
            vec!["PATH=/bin".into()],
            &["A=1".into(), "B=2".into(), "A=3".into()],
        );
        assert_eq!(env, vec!["PATH=/bin", "A=3", "B=2"]);
    }

    #[test]
    fn env_overrides_replace_append_and_bare_names_unset() {
        let env = replace_or_append_env(
            vec!["PATH=/bin".into(), "HOSTNAME=h".into(), "TERM=xterm".into()],
            &[
                "HOSTNAME".into(),
                "UNSET".into(),
                "PATH=/usr/bin".into(),
                "A=1".into(),
            ],
        );
        assert_eq!(
            env,
            vec![
                "PATH=/usr/bin".to_string(),
                "TERM=xterm".into(),
                "A=1".into()
            ]
        );
        let config = ContainerConfig {
            env: vec!["HOME".into(), "X=y".into()],
            ..ContainerConfig::default()
        };
        assert_eq!(
            container_env(&config, "abc", "/root"),
            vec![
                format!("PATH={}", rmachine_runtime::lookup::DEFAULT_PATH),
                "HOSTNAME=abc".into(),
                "X=y".into(),
                "HOME=/root".into()
            ]
        );
    }

    #[test]
    fn an_empty_entrypoint_resets_without_taking_the_images_cmd() {
        let mut config = ContainerConfig {
            entrypoint: Some(vec![String::new()]),
            ..Default::default()
        };
        merge_image_config(&mut config, &image(Some(&["sh"]), Some(&["/init"])));
        assert_eq!((config.entrypoint, config.cmd), (None, None));
    }

    #[test]
    fn a_working_dir_that_is_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "").unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        let layers = [dir.path().to_path_buf()];
        assert_eq!(
            check_working_dir("/etc/passwd", &layers)
                .unwrap_err()
                .to_string(),
            "Cannot mkdir: /etc/passwd is not a directory"
        );
        for fine in ["/etc", "/new/dir", "/", "/link/passwd", "/etc/passwd/x"] {
            assert!(check_working_dir(fine, &layers).is_ok(), "{fine}");
        }
    }

    #[test]
    fn names_follow_docker_rules() {
        assert!(validate_name("web-1").is_ok());
        assert!(validate_name("/web").is_ok());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a b").is_err());
    }
}
