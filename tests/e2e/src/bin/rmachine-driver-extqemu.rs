//! `rmachine-driver-extqemu`: an external driver for the e2e tests. It serves the driver
//! protocol on stdin/stdout by wrapping the QEMU driver crate, so a real VM is driven through
//! the protocol exactly as a third-party driver would drive one.

use rmachine_driver::protocol::{self, Flag, FlagKind, Options, Plugin};
use rmachine_driver::{Driver, DriverError, DriverInfo};
use rmachine_driver_qemu::{QemuDriver, QemuOptions};

const NAME: &str = "extqemu";

struct ExtQemu;

impl Plugin for ExtQemu {
    type Driver = QemuDriver;

    fn flags(&self) -> Vec<Flag> {
        vec![
            Flag {
                name: format!("{NAME}-accel"),
                help: "Accelerator: auto, kvm, hvf, whpx or tcg".to_string(),
                kind: FlagKind::String,
                default: Some("auto".to_string()),
            },
            Flag {
                name: format!("{NAME}-program"),
                help: "QEMU system emulator to run".to_string(),
                kind: FlagKind::String,
                default: None,
            },
        ]
    }

    fn driver(&self, options: &Options) -> Result<QemuDriver, DriverError> {
        let mut qemu = serde_json::Map::new();
        for (key, value) in options {
            let field = match key.strip_prefix(NAME) {
                Some("-accel") => "qemuAccel",
                Some("-program") => "qemuProgram",
                _ => {
                    return Err(DriverError::InvalidOptions {
                        driver: NAME.to_string(),
                        problems: vec![format!("unknown flag --{key}")],
                    })
                }
            };
            qemu.insert(field.to_string(), value.clone());
        }
        let options: QemuOptions = serde_json::from_value(serde_json::Value::Object(qemu))
            .map_err(|e| DriverError::InvalidOptions {
                driver: NAME.to_string(),
                problems: vec![e.to_string()],
            })?;
        Ok(QemuDriver::new(options))
    }

    fn info(&self) -> DriverInfo {
        let mut info = QemuDriver::new(QemuOptions::default()).info();
        info.name = NAME.to_string();
        info
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match protocol::serve_stdio(&ExtQemu).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rmachine-driver-{NAME}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
