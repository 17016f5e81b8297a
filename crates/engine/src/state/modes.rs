//! File modes of the data root, as dockerd sets them.
//!
//! Containers' records hold their environment (secrets), their logs what they print, and
//! their upper directories whatever they wrote, setuid binaries included: no other user of
//! the host may read or run any of it. dockerd's modes: the root and `containers/` 0710
//! (daemon/daemon.go `NewDaemon`, daemon/daemon_unix.go `setupDaemonRoot`), each container's
//! directory 0710 (daemon/create.go `newContainer`), `config.v2.json` 0600
//! (container/container.go `toDisk`), json-file logs 0640 (daemon/logger/jsonfilelog), the
//! image store 0700 (image/fs.go `newFSStore`), `tmp/` 0700 (daemon/daemon.go
//! `prepareTempDir`). The group is root's, so 0710 gives no one else anything.
//!
//! [`secure`] applies them at every start, so a data root made by an older engine (0755 with
//! 0644 files) is fixed: the top levels and each container's own files, not the layers.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tracing::warn;

use super::RECORD_FILE;

/// The data root.
pub const DATA_ROOT: u32 = 0o710;
/// `containers/`.
pub const CONTAINERS_DIR: u32 = 0o710;
/// `containers/<id>/`.
pub const CONTAINER_DIR: u32 = 0o710;
/// Records, runtime specs, the engine id and lock.
pub const CONFIG_FILE: u32 = 0o600;
/// json-file logs.
pub const LOG_FILE: u32 = 0o640;
/// `image/` and `tmp/`.
pub const PRIVATE_DIR: u32 = 0o700;

/// Sets dockerd's modes on the data root's top levels and on every container's directory,
/// record, spec and log (creating `image/` and `tmp/` if missing). Failures are logged: a
/// mode that cannot be set must not keep the engine from starting.
pub fn secure(data_root: &Path) {
    for (path, mode) in [
        (data_root.to_path_buf(), DATA_ROOT),
        (data_root.join("containers"), CONTAINERS_DIR),
        (data_root.join("image"), PRIVATE_DIR),
        (data_root.join("tmp"), PRIVATE_DIR),
        (data_root.join("engine-id"), CONFIG_FILE),
    ] {
        chmod(&path, mode);
    }
    let Ok(entries) = fs::read_dir(data_root.join("containers")) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if !dir.is_dir() {
            continue;
        }
        chmod(&dir, CONTAINER_DIR);
        let Ok(files) = fs::read_dir(&dir) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name();
            let name = name.to_string_lossy();
            if name == RECORD_FILE || name == rmachine_runtime::spec::SPEC_FILE {
                chmod(&file.path(), CONFIG_FILE);
            } else if name.ends_with("-json.log") || name.contains("-json.log.") {
                chmod(&file.path(), LOG_FILE);
            }
        }
    }
}

/// Creates `dir` (mode `mode`) if missing, else sets the mode.
pub fn ensure_dir(dir: &Path, mode: u32) {
    if !dir.exists() {
        if let Err(err) = fs::create_dir_all(dir) {
            warn!(path = %dir.display(), error = %err, "cannot create directory");
            return;
        }
    }
    chmod(dir, mode);
}

fn chmod(path: &Path, mode: u32) {
    match fs::metadata(path) {
        Ok(meta) if meta.permissions().mode() & 0o7777 == mode => {}
        Ok(_) => {
            if let Err(err) = fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
                warn!(path = %path.display(), error = %err, "cannot set the mode");
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => warn!(path = %path.display(), error = %err, "cannot read the mode"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn an_old_world_readable_data_root_is_locked_down() {
        let root = tempfile::tempdir().unwrap();
        let container = root.path().join("containers").join("c".repeat(64));
        fs::create_dir_all(container.join("upper/bin")).unwrap();
        fs::create_dir_all(root.path().join("image/layers")).unwrap();
        let log = container.join(format!("{}-json.log", "c".repeat(64)));
        for file in [container.join(RECORD_FILE), log.clone()] {
            fs::write(&file, b"{}").unwrap();
            fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        }
        for dir in [root.path(), &root.path().join("containers"), &container] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
        secure(root.path());
        assert_eq!(mode(root.path()), 0o710);
        assert_eq!(mode(&root.path().join("containers")), 0o710);
        assert_eq!(mode(&container), 0o710);
        assert_eq!(mode(&container.join(RECORD_FILE)), 0o600);
        assert_eq!(mode(&log), 0o640);
        assert_eq!(mode(&root.path().join("image")), 0o700);
        // Layers and upper directories keep theirs: the parents already shut others out.
        assert_eq!(mode(&container.join("upper/bin")), 0o755);
    }
}
