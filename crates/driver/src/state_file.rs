//! A driver's own record in the machine directory (`qemu.json`, `virtualbox.json`,
//! `hyperv.json`): JSON, written atomically (temporary file, then rename).

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{DriverError, MachineDir};

/// Reads `dir/file`; `None` when the driver never wrote it (the machine was never created).
pub fn load<T: DeserializeOwned>(dir: &MachineDir, file: &str) -> Result<Option<T>, DriverError> {
    let path = dir.file(file);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io(dir, &path, source)),
    };
    serde_json::from_slice(&text).map(Some).map_err(|err| {
        io(
            dir,
            &path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, err),
        )
    })
}

/// Reads `dir/file`, which must exist: `driver` created the machine.
pub fn load_required<T: DeserializeOwned>(
    dir: &MachineDir,
    file: &str,
    driver: &str,
) -> Result<T, DriverError> {
    load(dir, file)?.ok_or_else(|| {
        io(
            dir,
            &dir.file(file),
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("the {driver} driver has not created this machine"),
            ),
        )
    })
}

/// Writes `state` to `dir/file` atomically.
pub fn save<T: Serialize>(dir: &MachineDir, file: &str, state: &T) -> Result<(), DriverError> {
    let path = dir.file(file);
    let temp = dir.file(&format!("{file}.tmp"));
    let mut text = serde_json::to_vec_pretty(state).map_err(|err| {
        io(
            dir,
            &path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, err),
        )
    })?;
    text.push(b'\n');
    std::fs::write(&temp, &text).map_err(|source| io(dir, &temp, source))?;
    std::fs::rename(&temp, &path).map_err(|source| io(dir, &path, source))
}

fn io(dir: &MachineDir, path: &Path, source: std::io::Error) -> DriverError {
    DriverError::Io {
        machine: dir.name.clone(),
        path: path.to_owned(),
        source,
    }
}
