//! Turning a create request and an image into what the container runs: Docker's config merge,
//! user resolution from the image's `/etc/passwd`, names and console size.

use std::path::PathBuf;

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
    if config.working_dir.is_empty() {
        config.working_dir = ic.working_dir.clone();
    }
    if config.volumes.is_empty() {
        for volume in &ic.volumes {
            config.volumes.insert(volume.clone(), serde_json::json!({}));
        }
    }
    if config.stop_signal.as_deref().is_none_or(str::is_empty) {
        config.stop_signal = ic.stop_signal.clone();
    }
}

/// `HostConfig.ConsoleSize` (`[height, width]`), which the CLI sends for `-t` so the PTY has
/// its size before the process starts.
pub fn console_size(host_config: &HostConfig) -> Option<(u16, u16)> {
    let size = host_config.extra.get("ConsoleSize")?.as_array()?;
    let dim = |i: usize| size.get(i)?.as_u64().and_then(|v| u16::try_from(v).ok());
    Some((dim(0)?, dim(1)?)).filter(|(h, w)| *h > 0 && *w > 0)
}

/// Sets `KEY=value` in `env`, replacing an existing `KEY`.
pub fn replace_or_append(env: &mut Vec<String>, var: &str) {
    let key = var.split('=').next().unwrap_or("");
    match env
        .iter_mut()
        .find(|v| v.split('=').next().unwrap_or("") == key)
    {
        Some(existing) => *existing = var.to_string(),
        None => env.push(var.to_string()),
    }
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
    /// Supplementary groups from `/etc/group`.
    pub additional_gids: Vec<u32>,
    /// Home directory, for `HOME` when the config does not set it.
    pub home: String,
}

/// Resolves `user[:group]` (names or numbers) against `/etc/passwd` and `/etc/group` of the
/// container's layers, searched top down.
pub fn resolve_user(user: &str, layers: &[PathBuf]) -> Result<ResolvedUser, EngineError> {
    let user = if user.is_empty() { "0" } else { user };
    let read = |file: &str| {
        layers
            .iter()
            .find_map(|layer| std::fs::read_to_string(layer.join(file)).ok())
            .unwrap_or_default()
    };
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read("etc/passwd");
    let entry = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 4 && (fields[0] == user_part || fields[2] == user_part)).then(|| {
            (
                fields[0].to_string(),
                fields[2].parse::<u32>().ok(),
                fields[3].parse::<u32>().ok(),
                fields.get(5).map(|h| h.to_string()),
            )
        })
    });
    let (name, uid, mut gid, home) = match (entry, user_part.parse::<u32>()) {
        (Some((name, Some(uid), Some(gid), home)), _) => (Some(name), uid, gid, home),
        (None, Ok(uid)) | (Some(_), Ok(uid)) => (None, uid, 0, None),
        _ => {
            return Err(EngineError::InvalidParameter {
                reason: format!(
                    "unable to find user {user_part}: no matching entries in passwd file"
                ),
            })
        }
    };
    let groups = read("etc/group");
    if let Some(group) = group_part {
        gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .lines()
                .find_map(|line| {
                    let fields: Vec<&str> = line.split(':').collect();
                    (fields.len() >= 3 && fields[0] == group)
                        .then(|| fields[2].parse::<u32>().ok())
                        .flatten()
                })
                .ok_or_else(|| EngineError::InvalidParameter {
                    reason: format!(
                        "unable to find group {group}: no matching entries in group file"
                    ),
                })?,
        };
    }
    let mut additional = Vec::new();
    if let Some(name) = name {
        for line in groups.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() >= 4 && fields[3].split(',').any(|m| m == name) {
                if let Ok(g) = fields[2].parse::<u32>() {
                    if g != gid {
                        additional.push(g);
                    }
                }
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional,
        // As runc: the passwd entry's home, else `/`.
        home: home.filter(|h| !h.is_empty()).unwrap_or_else(|| "/".into()),
    })
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
        assert_eq!(ids("www"), (33, 33, vec![50], "/var/www".to_string()));
        assert_eq!(ids(""), (0, 0, vec![], "/root".to_string()));
        assert_eq!(ids("1000:7"), (1000, 7, vec![], "/".to_string()));
        assert!(resolve_user("nobody2", &layers).is_err());
    }

    #[test]
    fn names_follow_docker_rules() {
        assert!(validate_name("web-1").is_ok());
        assert!(validate_name("/web").is_ok());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a b").is_err());
    }
}
