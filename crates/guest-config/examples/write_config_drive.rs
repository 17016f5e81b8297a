//! Writes a configuration drive for booting a guest by hand.
//!
//! ```text
//! cargo run -p rmachine-guest-config --example write_config_drive -- \
//!     OUT.img HOSTNAME CA.pem SERVER.pem SERVER-KEY.pem AUTHORIZED_KEYS [LABEL...]
//! ```
//! `AUTHORIZED_KEYS` is a file of OpenSSH public keys, one per line.
use std::error::Error;
use std::fs;

use rmachine_guest_config::{EngineConfig, GuestConfig, FORMAT_VERSION};

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, hostname, ca, cert, key, keys, labels @ ..] = args.as_slice() else {
        return Err(
            "usage: write_config_drive OUT.img HOSTNAME CA.pem SERVER.pem \
                    SERVER-KEY.pem AUTHORIZED_KEYS [LABEL...]"
                .into(),
        );
    };
    let read = |path: &String| fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"));
    let config = GuestConfig {
        format_version: FORMAT_VERSION,
        hostname: hostname.clone(),
        ca_pem: read(ca)?,
        server_cert_pem: read(cert)?,
        server_key_pem: read(key)?,
        authorized_keys: read(keys)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect(),
        engine: EngineConfig {
            port: 2376,
            labels: labels.to_vec(),
            ..Default::default()
        },
        shares: Vec::new(),
        network: None,
    };
    let file = fs::File::create(out).map_err(|e| format!("creating {out}: {e}"))?;
    config.write_drive(file)?;
    Ok(())
}
