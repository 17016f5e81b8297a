//! `qemu.json`: what the driver decided at `create` and must remember (forwarded ports, the
//! accelerator and why, the machine type), written atomically (temporary file + rename).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use rmachine_driver::{DriverError, MachineDir};
use serde::{Deserialize, Serialize};

use crate::accel::AccelChoice;

/// The file name in the machine directory.
pub const FILE: &str = "qemu.json";

/// The driver's saved decisions for one machine.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QemuState {
    /// Host port (on 127.0.0.1) forwarded to the guest's SSH port.
    pub ssh_port: u16,
    /// Host port (on 127.0.0.1) forwarded to the guest's engine port.
    pub engine_port: u16,
    /// Host port of the QMP socket where there are no unix sockets (Windows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qmp_port: Option<u16>,
    /// The accelerator and why it was chosen.
    pub accel: AccelChoice,
    /// The `-machine` value.
    pub machine: String,
}

impl QemuState {
    /// Reads `qemu.json`; `None` if the machine was never created.
    pub fn load(dir: &MachineDir) -> Result<Option<Self>, DriverError> {
        rmachine_driver::state_file::load(dir, FILE)
    }

    /// Reads `qemu.json`, which must exist (the machine was created).
    pub fn load_required(dir: &MachineDir) -> Result<Self, DriverError> {
        rmachine_driver::state_file::load_required(dir, FILE, "qemu")
    }

    /// Writes `qemu.json` atomically.
    pub fn save(&self, dir: &MachineDir) -> Result<(), DriverError> {
        rmachine_driver::state_file::save(dir, FILE, self)
    }
}

/// `count` distinct free TCP ports on 127.0.0.1, as the kernel hands them out for port 0.
/// They are free when this returns; another program may still take one before QEMU binds it,
/// which `start` notices and repairs.
pub fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    // Hold every listener until all are chosen, so the kernel cannot hand out one port twice.
    let listeners = (0..count)
        .map(|_| TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// Whether nothing listens on 127.0.0.1:`port`.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accel::Accel;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().expect("temp dir");
        let machine = MachineDir::new("dev", dir.path());
        assert_eq!(QemuState::load(&machine).expect("load"), None);
        let state = QemuState {
            ssh_port: 40022,
            engine_port: 42376,
            qmp_port: None,
            accel: AccelChoice {
                accel: Accel::Tcg,
                reason: "software emulation".into(),
            },
            machine: "q35".into(),
        };
        state.save(&machine).expect("save");
        assert_eq!(
            QemuState::load(&machine).expect("load"),
            Some(state.clone())
        );
        let text = std::fs::read_to_string(dir.path().join(FILE)).expect("file");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(json["sshPort"], 40022);
        assert_eq!(json["accel"]["accel"], "tcg");
        assert!(json.get("qmpPort").is_none());
        assert!(!dir.path().join("qemu.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let machine = MachineDir::new("dev", dir.path());
        std::fs::write(dir.path().join(FILE), "{").expect("write");
        let err = QemuState::load(&machine).expect_err("corrupt");
        assert_eq!(
            err.to_string(),
            format!(
                "machine \"dev\": cannot access {}",
                dir.path().join(FILE).display()
            )
        );
    }

    #[test]
    fn ports_are_distinct_and_free() {
        let ports = free_ports(2).expect("ports");
        assert_ne!(ports[0], ports[1]);
        assert!(port_is_free(ports[0]));
        let _taken = TcpListener::bind(("127.0.0.1", ports[1])).expect("bind");
        assert!(!port_is_free(ports[1]));
    }
}
