//! Docker's capability names and `--cap-add`/`--cap-drop`/`--privileged` arithmetic.

use crate::spec::CapabilitySpec;

/// Capability names by number (`CAP_` prefix omitted), as far as Linux 6.x knows them.
pub const CAPABILITY_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker's default capabilities, by number: CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID,
/// SETUID, SETPCAP, NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP.
pub const DEFAULT_CAPABILITIES: [u32; 14] = [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];

/// Every capability in [`CAPABILITY_NAMES`] (`CapEff 000001ffffffffff`).
pub const ALL_CAPABILITIES: u64 = (1 << CAPABILITY_NAMES.len()) - 1;

/// A capability name Docker would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {list}: unknown capability: {name:?}")]
pub struct CapabilityError {
    /// `CapAdd` or `CapDrop`, the `HostConfig` field it came from.
    pub list: &'static str,
    /// The name, normalized as Docker prints it (`CAP_FOO`).
    pub name: String,
}

/// [`DEFAULT_CAPABILITIES`] as a mask (`0xa80425fb`, the `CapEff` Docker users know).
pub fn default_mask() -> u64 {
    DEFAULT_CAPABILITIES
        .iter()
        .fold(0, |mask, cap| mask | (1u64 << cap))
}

/// The number of a capability given as `NET_ADMIN` or `cap_net_admin`.
pub fn capability_number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITY_NAMES
        .iter()
        .position(|known| *known == bare)
        .and_then(|n| u32::try_from(n).ok())
}

/// The container's capability mask, with Docker's rules: `--privileged` gets every
/// capability; `--cap-add ALL` every one but the dropped; `--cap-drop ALL` only the added;
/// otherwise the default set minus the dropped plus the added. Names are checked even when
/// privileged, as Docker checks them at create time.
pub fn capability_mask(
    spec: Option<&CapabilitySpec>,
    privileged: bool,
) -> Result<u64, CapabilityError> {
    let empty = CapabilitySpec::default();
    let spec = spec.unwrap_or(&empty);
    let (add, add_all) = parse_list("CapAdd", &spec.add)?;
    let (drop, drop_all) = parse_list("CapDrop", &spec.drop)?;
    Ok(if privileged {
        ALL_CAPABILITIES
    } else if add_all {
        ALL_CAPABILITIES & !drop
    } else if drop_all {
        add
    } else {
        (default_mask() & !drop) | add
    })
}

/// A list of names as a mask, and whether it holds `ALL`.
fn parse_list(list: &'static str, names: &[String]) -> Result<(u64, bool), CapabilityError> {
    let mut mask = 0;
    let mut all = false;
    for name in names {
        if name.eq_ignore_ascii_case("ALL") {
            all = true;
            continue;
        }
        let number = capability_number(name).ok_or_else(|| {
            let upper = name.to_ascii_uppercase();
            CapabilityError {
                list,
                name: if upper.starts_with("CAP_") {
                    upper
                } else {
                    format!("CAP_{upper}")
                },
            }
        })?;
        mask |= 1 << number;
    }
    Ok((mask, all))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(add: &[&str], drop: &[&str]) -> CapabilitySpec {
        CapabilitySpec {
            add: add.iter().map(|s| s.to_string()).collect(),
            drop: drop.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn names_are_accepted_with_or_without_prefix_in_any_case() {
        assert_eq!(capability_number("NET_ADMIN"), Some(12));
        assert_eq!(capability_number("cap_net_admin"), Some(12));
        assert_eq!(capability_number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(capability_number("FOO"), None);
    }

    #[test]
    fn masks_follow_dockers_rules() {
        assert_eq!(capability_mask(None, false), Ok(0xa804_25fb));
        assert_eq!(capability_mask(None, true), Ok(0x1ff_ffff_ffff));
        let net_admin = 1 << 12;
        let chown = 1;
        assert_eq!(
            capability_mask(Some(&spec(&["NET_ADMIN"], &["chown"])), false),
            Ok((0xa804_25fb | net_admin) & !chown)
        );
        assert_eq!(
            capability_mask(Some(&spec(&["ALL"], &["CAP_CHOWN"])), false),
            Ok(0x1ff_ffff_ffff & !chown)
        );
        assert_eq!(
            capability_mask(Some(&spec(&["NET_ADMIN"], &["all"])), false),
            Ok(net_admin)
        );
        // Without ALL, an added capability stays even when also dropped (drop, then add).
        assert_eq!(
            capability_mask(Some(&spec(&["NET_ADMIN"], &["NET_ADMIN"])), false),
            Ok(0xa804_25fb | net_admin)
        );
    }

    #[test]
    fn unknown_names_fail_with_dockers_message() {
        let err = capability_mask(Some(&spec(&["foo"], &[])), false).expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "invalid CapAdd: unknown capability: \"CAP_FOO\""
        );
        let err = capability_mask(Some(&spec(&[], &["CAP_BAR"])), true).expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "invalid CapDrop: unknown capability: \"CAP_BAR\""
        );
    }
}
