//! The host-to-guest configuration drive: written by rmachine-host, read by rmachine-init.
//!
//! The host renders a [`GuestConfig`] into a small raw disk image (`config.img` in the machine
//! directory) and attaches it to the VM as a read-only disk on every start. The image is a plain
//! ustar archive whose first entry is [`CONFIG_ENTRY`], a JSON document behind [`CONFIG_LEAD`]
//! spaces (so that the secrets in it lie past what a kernel reads when it probes the disk). A
//! tar was chosen because every hypervisor can attach a raw file as a disk (QEMU directly,
//! VirtualBox after `convertfromraw`, Hyper-V after appending a fixed-VHD footer) and the guest
//! can recognise it by content, whatever the disk order. Because the host rewrites it before
//! each start, new certificates (`regenerate-certs`) reach the guest with a restart and no SSH
//! round-trip.
//!
//! The guest's answer travels the other way, on the serial console: see [`report`].
#![warn(missing_docs)]

pub mod report;
pub mod timeline;
pub mod udp_frame;

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Name of the JSON entry that opens every configuration drive.
pub const CONFIG_ENTRY: &str = "rmachine-guest-config.json";

/// Version of the format; the guest refuses a newer one than it knows.
pub const FORMAT_VERSION: u32 = 1;

/// How many ASCII spaces open the [`CONFIG_ENTRY`] entry, before the JSON document.
///
/// The document holds the engine's TLS private key. When the guest's kernel finds the drive
/// it reads its first sectors into its page cache to look for a partition table (the parsers
/// read up to ~16 KiB from the start: amiga's 16 sectors, ultrix's sector 31), before init
/// runs; the QEMU driver's boot snapshot saves that RAM to a file in the store, shared by every
/// machine started from it. With this lead the bytes the kernel reads are the tar header and
/// spaces, and the key starts well past them. JSON allows leading whitespace (serde_json
/// skips it), so a guest that predates the lead reads a drive that has it.
pub const CONFIG_LEAD: usize = 64 * 1024;

/// Everything the guest needs at boot, rendered by the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestConfig {
    /// Format version, [`FORMAT_VERSION`] when written by this crate.
    pub format_version: u32,
    /// The machine name; the guest's hostname.
    pub hostname: String,
    /// PEM of the CA that signed the client certificates the engine must accept.
    pub ca_pem: String,
    /// PEM of the engine's server certificate.
    pub server_cert_pem: String,
    /// PEM of the engine's server key.
    pub server_key_pem: String,
    /// OpenSSH `authorized_keys` lines accepted by the guest's SSH server.
    pub authorized_keys: Vec<String>,
    /// Options for the engine inside the guest.
    #[serde(default)]
    pub engine: EngineConfig,
    /// Host folders the hypervisor exports, to mount in the guest (absent before shares existed).
    #[serde(default)]
    pub shares: Vec<ShareMount>,
    /// The first NIC's address when the driver knows it (QEMU user networking): the guest
    /// applies it at once instead of asking DHCP. Absent: DHCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<StaticNetwork>,
}

/// The command the host runs over SSH to hand a running guest new engine TLS files: it reads
/// a [`TlsFiles`] as JSON on stdin, replaces the engine's files (which the engine picks up at
/// its next connection, without a restart) and the saved copy of the configuration. A guest
/// from before it exits with status [`INSTALL_TLS_UNKNOWN`] (its usage text).
pub const INSTALL_TLS_COMMAND: &str = "rmachine-init install-tls";

/// The exit status of an `rmachine-init` that does not know a subcommand.
pub const INSTALL_TLS_UNKNOWN: u32 = 2;

/// The engine's TLS files, as [`INSTALL_TLS_COMMAND`] reads them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsFiles {
    /// PEM of the CA that signed the client certificates the engine must accept.
    pub ca_pem: String,
    /// PEM of the engine's server certificate.
    pub server_cert_pem: String,
    /// PEM of the engine's server key.
    pub server_key_pem: String,
}

/// A static IPv4 configuration for the guest's first NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StaticNetwork {
    /// Address with prefix length, e.g. `10.0.2.15/24`.
    pub address: String,
    /// Default gateway.
    pub gateway: String,
    /// DNS server.
    pub dns: String,
}

/// One host folder shared into the guest: the hypervisor exports it under `tag` (virtio-9p's
/// `mount_tag`, virtio-fs's `tag`) and rmachine-init mounts it on `guest_path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShareMount {
    /// The export's tag, as the driver named it on the hypervisor's command line.
    pub tag: String,
    /// Absolute path in the guest, created if missing.
    pub guest_path: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
    /// The device that carries it (absent before virtio-fs existed: 9p).
    #[serde(default)]
    pub filesystem: ShareFilesystem,
}

/// How the hypervisor exports a share, hence the filesystem type the guest mounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareFilesystem {
    /// virtio-9p (`mount -t 9p`).
    #[default]
    #[serde(rename = "9p")]
    NineP,
    /// virtio-fs, served on the host by virtiofsd (`mount -t virtiofs`).
    #[serde(rename = "virtiofs")]
    Virtiofs,
}

impl ShareFilesystem {
    /// The guest kernel's filesystem type name.
    pub fn fstype(self) -> &'static str {
        match self {
            ShareFilesystem::NineP => "9p",
            ShareFilesystem::Virtiofs => "virtiofs",
        }
    }
}

/// Engine options the host passes through (`--engine-*` flags of `create`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineConfig {
    /// TCP port the engine serves TLS on inside the guest.
    #[serde(default = "default_engine_port")]
    pub port: u16,
    /// Engine labels (`--engine-label`), e.g. `provider=qemu`.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Registries reached over plain HTTP (`--engine-insecure-registry`).
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// Registry mirrors (`--engine-registry-mirror`).
    #[serde(default)]
    pub registry_mirrors: Vec<String>,
    /// Extra environment for the engine (`--engine-env K=V`).
    #[serde(default)]
    pub env: Vec<String>,
}

fn default_engine_port() -> u16 {
    2376
}

/// What can go wrong reading or writing a configuration drive.
#[derive(Debug, thiserror::Error)]
pub enum GuestConfigError {
    /// The drive could not be read or written.
    #[error("configuration drive i/o failed")]
    Io(#[source] io::Error),
    /// The drive is a tar, but its first entry is not the configuration document.
    #[error("not an rmachine configuration drive (first entry is {found:?})")]
    NotConfigDrive {
        /// The first entry's name, if any.
        found: Option<String>,
    },
    /// The JSON document does not parse.
    #[error("configuration document is invalid")]
    Json(#[source] serde_json::Error),
    /// The document was written by a newer rmachine.
    #[error("configuration format {found} is newer than this guest supports ({supported})")]
    TooNew {
        /// The version on the drive.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
}

impl GuestConfig {
    /// Writes the configuration drive image: a ustar archive padded to whole 512-byte sectors,
    /// whose one entry is [`CONFIG_LEAD`] spaces and the JSON document.
    pub fn write_drive(&self, out: impl Write) -> Result<(), GuestConfigError> {
        let json = serde_json::to_vec_pretty(self).map_err(GuestConfigError::Json)?;
        let lead = io::repeat(b' ').take(CONFIG_LEAD as u64);
        let mut builder = tar::Builder::new(out);
        let mut header = tar::Header::new_ustar();
        header.set_size((CONFIG_LEAD + json.len()) as u64);
        header.set_mode(0o600);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, CONFIG_ENTRY, lead.chain(json.as_slice()))
            .map_err(GuestConfigError::Io)?;
        // A tar archive is already a multiple of 512 bytes; disks want nothing more.
        builder.into_inner().map_err(GuestConfigError::Io)?;
        Ok(())
    }

    /// Reads a configuration drive (the raw device or the image file).
    ///
    /// Reading stops after the first entry, so trailing device bytes are never parsed. The
    /// entry's leading whitespace ([`CONFIG_LEAD`]; none on drives written before it) is
    /// skipped by the JSON parser.
    pub fn read_drive(input: impl Read) -> Result<Self, GuestConfigError> {
        let mut archive = tar::Archive::new(input);
        let mut entries = archive.entries().map_err(GuestConfigError::Io)?;
        let mut entry = match entries.next() {
            Some(entry) => entry.map_err(GuestConfigError::Io)?,
            None => return Err(GuestConfigError::NotConfigDrive { found: None }),
        };
        let name = entry
            .path()
            .map_err(GuestConfigError::Io)?
            .to_string_lossy()
            .into_owned();
        if name != CONFIG_ENTRY {
            return Err(GuestConfigError::NotConfigDrive { found: Some(name) });
        }
        let mut json = Vec::new();
        entry.read_to_end(&mut json).map_err(GuestConfigError::Io)?;
        let config: GuestConfig = serde_json::from_slice(&json).map_err(GuestConfigError::Json)?;
        if config.format_version > FORMAT_VERSION {
            return Err(GuestConfigError::TooNew {
                found: config.format_version,
                supported: FORMAT_VERSION,
            });
        }
        Ok(config)
    }

    /// Cheap check of a device's first sector: is this a configuration drive?
    pub fn is_config_drive(first_sector: &[u8]) -> bool {
        first_sector.len() >= CONFIG_ENTRY.len()
            && first_sector.starts_with(CONFIG_ENTRY.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GuestConfig {
        GuestConfig {
            format_version: FORMAT_VERSION,
            hostname: "intro".into(),
            ca_pem: "CA".into(),
            server_cert_pem: "CERT".into(),
            server_key_pem: "KEY".into(),
            authorized_keys: vec!["ssh-ed25519 AAAA test".into()],
            engine: EngineConfig {
                port: 2376,
                labels: vec!["provider=qemu".into()],
                ..Default::default()
            },
            shares: vec![ShareMount {
                tag: "rmshare0".into(),
                guest_path: "/home/me".into(),
                read_only: false,
                filesystem: ShareFilesystem::Virtiofs,
            }],
            network: Some(StaticNetwork {
                address: "10.0.2.15/24".into(),
                gateway: "10.0.2.2".into(),
                dns: "10.0.2.3".into(),
            }),
        }
    }

    #[test]
    fn a_share_without_filesystem_is_9p_and_virtiofs_is_named_so() {
        let mut value = serde_json::to_value(sample()).unwrap();
        assert_eq!(value["shares"][0]["filesystem"], "virtiofs");
        value["shares"][0]
            .as_object_mut()
            .unwrap()
            .remove("filesystem");
        let config: GuestConfig = serde_json::from_value(value).unwrap();
        assert_eq!(config.shares[0].filesystem, ShareFilesystem::NineP);
        assert_eq!(config.shares[0].filesystem.fstype(), "9p");
    }

    #[test]
    fn config_without_shares_still_reads() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value.as_object_mut().unwrap().remove("shares");
        let config: GuestConfig = serde_json::from_value(value).unwrap();
        assert!(config.shares.is_empty());
    }

    #[test]
    fn drive_round_trips_and_is_sector_aligned() {
        let mut image = Vec::new();
        sample().write_drive(&mut image).unwrap();
        assert_eq!(image.len() % 512, 0);
        assert!(GuestConfig::is_config_drive(&image[..512]));
        // A device is larger than the image: trailing zeroes must not matter.
        image.extend(std::iter::repeat_n(0u8, 4096));
        assert_eq!(GuestConfig::read_drive(image.as_slice()).unwrap(), sample());
    }

    #[test]
    fn the_document_starts_after_the_lead_and_still_reads() {
        let mut image = Vec::new();
        sample().write_drive(&mut image).unwrap();
        let lead = &image[512..512 + CONFIG_LEAD];
        assert!(lead.iter().all(|&b| b == b' '), "the lead is spaces");
        assert_eq!(image[512 + CONFIG_LEAD], b'{', "then the document");
        assert!(GuestConfig::is_config_drive(&image[..512]));
        assert_eq!(GuestConfig::read_drive(image.as_slice()).unwrap(), sample());
    }

    #[test]
    fn a_drive_without_the_lead_still_reads() {
        // As written before CONFIG_LEAD: the document right after the header.
        let json = serde_json::to_vec_pretty(&sample()).unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(json.len() as u64);
        header.set_mode(0o600);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, CONFIG_ENTRY, json.as_slice())
            .unwrap();
        let image = builder.into_inner().unwrap();
        assert_eq!(GuestConfig::read_drive(image.as_slice()).unwrap(), sample());
    }

    #[test]
    fn no_private_key_text_in_the_drives_first_64_kib() {
        let mut config = sample();
        config.server_key_pem =
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n"
                .into();
        let mut image = Vec::new();
        config.write_drive(&mut image).unwrap();
        let contains = |bytes: &[u8], text: &[u8]| bytes.windows(text.len()).any(|w| w == text);
        assert!(
            contains(&image, b"PRIVATE KEY"),
            "the key is on the drive at all"
        );
        assert!(!contains(&image[..64 * 1024], b"PRIVATE KEY"));
        assert!(!contains(&image[..64 * 1024], b"MC4CAQAw"));
    }

    #[test]
    fn other_disks_are_not_config_drives() {
        let zeroes = vec![0u8; 512];
        assert!(!GuestConfig::is_config_drive(&zeroes));
        let err = GuestConfig::read_drive(zeroes.as_slice()).unwrap_err();
        assert!(matches!(
            err,
            GuestConfigError::NotConfigDrive { found: None }
        ));
    }

    #[test]
    fn newer_format_is_refused() {
        let mut config = sample();
        config.format_version = FORMAT_VERSION + 1;
        let mut image = Vec::new();
        config.write_drive(&mut image).unwrap();
        let err = GuestConfig::read_drive(image.as_slice()).unwrap_err();
        assert!(matches!(err, GuestConfigError::TooNew { .. }));
    }
}
