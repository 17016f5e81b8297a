//! Host folders shared into the machine at the same path (`create --share`, `--no-share`).
//!
//! By default the user's home folder is shared, so that `docker run -v "$PWD":/src` typed in a
//! shell on the host names a folder the guest has at that very path, as docker-machine did
//! with VirtualBox's `/Users` share. A Windows path `C:\Users\me` is mounted at `/c/Users/me`,
//! docker-machine's (and Docker Toolbox's) convention. The list ends up in the machine's
//! [`VmSpec::shares`](rmachine_driver::VmSpec) and, from there, on the configuration drive at
//! every start.

use std::path::{Path, PathBuf};

use rmachine_driver::{Capabilities, DriverShare, Share, ShareTransport};

/// Guest folders a share may neither be nor lie under: the guest's own files, the kernel's
/// filesystems, the data disk and the engine's state.
const GUEST_SYSTEM_TREES: [&str; 12] = [
    "/bin",
    "/dev",
    "/etc",
    "/lib",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/init",
    "/mnt/data",
    "/var/lib/rmachine-engine",
];
/// Guest folders a share may lie under but not be (mounting over them hides what they hold).
const GUEST_SYSTEM_DIRS: [&str; 5] = ["/", "/mnt", "/tmp", "/var", "/var/lib"];

/// One `--share` value, parsed but not yet checked against the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    /// The host folder as given.
    pub host: String,
    /// The guest path given, if any.
    pub guest: Option<String>,
    /// `:ro` was given.
    pub read_only: bool,
}

/// Parses `HOST[:GUEST][:ro|rw]`; a Windows drive letter (`C:\…`) belongs to HOST.
pub fn parse_spec(value: &str) -> Result<ShareSpec, String> {
    let bytes = value.as_bytes();
    let drive = bytes.len() >= 2
        && bytes[0].is_ascii_alphabetic()
        && bytes[1] == b':'
        && (bytes.len() == 2 || bytes[2] == b'\\' || bytes[2] == b'/');
    let (prefix, rest) = value.split_at(if drive { 2 } else { 0 });
    let mut parts: Vec<&str> = rest.split(':').collect();
    let mut read_only = false;
    if parts.len() > 1 {
        match parts.last().copied() {
            Some("ro") => {
                read_only = true;
                parts.pop();
            }
            Some("rw") => {
                parts.pop();
            }
            _ => {}
        }
    }
    let host = format!("{prefix}{}", parts[0]);
    let guest = match parts.len() {
        1 => None,
        2 => Some(parts[1].to_owned()),
        _ => {
            return Err(format!(
                "--share {value:?} is not HOST[:GUEST][:ro] (too many ':')"
            ))
        }
    };
    if host.is_empty() {
        return Err(format!("--share {value:?} names no host folder"));
    }
    if let Some(guest) = &guest {
        if !guest.starts_with('/') {
            return Err(format!(
                "--share {value:?}: the guest path {guest:?} must be absolute"
            ));
        }
    }
    Ok(ShareSpec {
        host,
        guest,
        read_only,
    })
}

/// The guest path a host folder gets by default: the same path, with a Windows drive letter
/// turned into a first folder (`C:\Users\me` → `/c/Users/me`).
pub fn default_guest_path(host: &Path) -> String {
    let text = host.to_string_lossy();
    let bytes = text.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        let rest = text[2..].replace('\\', "/");
        let rest = rest.trim_end_matches('/');
        let drive = (bytes[0] as char).to_ascii_lowercase();
        return if rest.is_empty() {
            format!("/{drive}")
        } else if rest.starts_with('/') {
            format!("/{drive}{rest}")
        } else {
            format!("/{drive}/{rest}")
        };
    }
    let trimmed = text.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Whether a guest path would hide part of the guest's own system (or the data disk).
fn hides_guest_system(guest: &str) -> bool {
    let trimmed = guest.trim_end_matches('/');
    let normal = if trimmed.is_empty() { "/" } else { trimmed };
    if normal.split('/').any(|c| c == ".." || c == ".") {
        return true;
    }
    GUEST_SYSTEM_DIRS.contains(&normal)
        || GUEST_SYSTEM_TREES
            .iter()
            .any(|tree| normal == *tree || normal.starts_with(&format!("{tree}/")))
}

/// Turns the `create` share options into the machine's share list, or every problem found.
///
/// `home` is the default share when no `--share` is given (and `--no-share` is not); `None`
/// (no home folder, or a driver that cannot share) means no default share. A `driver_share`
/// (a driver option's folder) takes the home folder's place and joins any `--share`.
pub fn resolve(
    specs: &[String],
    no_share: bool,
    home: Option<&Path>,
    driver_share: Option<&DriverShare>,
    cwd: &Path,
) -> Result<Vec<Share>, Vec<String>> {
    let mut problems = Vec::new();
    if no_share {
        if !specs.is_empty() {
            problems.push("--no-share and --share cannot be used together".to_owned());
        }
        if let Some(driver_share) = driver_share {
            problems.push(format!(
                "--no-share and {} cannot be used together",
                driver_share.flag
            ));
        }
        return if problems.is_empty() {
            Ok(Vec::new())
        } else {
            Err(problems)
        };
    }
    // Each spec with the option it came from, for messages (a driver share's flag holds its
    // value already).
    let mut parsed: Vec<(String, ShareSpec)> = specs
        .iter()
        .filter_map(|value| parse_spec(value).map_err(|p| problems.push(p)).ok())
        .map(|spec| ("--share".to_owned(), spec))
        .collect();
    if let Some(driver_share) = driver_share {
        parsed.push((
            driver_share.flag.clone(),
            ShareSpec {
                host: driver_share.host_path.to_string_lossy().into_owned(),
                guest: driver_share.guest_path.clone(),
                read_only: false,
            },
        ));
    } else if specs.is_empty() {
        if let Some(home) = home.filter(|home| home.is_dir()) {
            let spec = ShareSpec {
                host: home.to_string_lossy().into_owned(),
                guest: None,
                read_only: false,
            };
            parsed.push(("--share".to_owned(), spec));
        }
    }
    let mut shares: Vec<Share> = Vec::new();
    for (flag, spec) in parsed {
        let from_driver = driver_share.is_some_and(|d| d.flag == flag);
        let host = PathBuf::from(&spec.host);
        let host = if host.is_absolute() {
            host
        } else {
            cwd.join(host)
        };
        if !host.is_dir() {
            problems.push(format!(
                "{flag}: host folder {} does not exist or is not a folder",
                host.display()
            ));
            continue;
        }
        let guest = spec.guest.unwrap_or_else(|| default_guest_path(&host));
        if hides_guest_system(&guest) {
            problems.push(if from_driver {
                format!(
                    "{flag}: guest path {guest} would hide the machine's own files; choose \
                     another NAME"
                )
            } else {
                format!(
                    "{flag} {}: guest path {guest} would hide the machine's own files; give \
                     another one with HOST:GUEST",
                    spec.host
                )
            });
            continue;
        }
        if let Some(other) = shares.iter().find(|s| s.guest_path == guest) {
            problems.push(format!(
                "{flag}: {} and {} would both be mounted at {guest}",
                other.host_path.display(),
                host.display()
            ));
            continue;
        }
        shares.push(Share {
            tag: Share::tag_for(shares.len()),
            host_path: host,
            guest_path: guest,
            read_only: spec.read_only,
            transport: ShareTransport::NineP,
        });
    }
    if problems.is_empty() {
        Ok(shares)
    } else {
        Err(problems)
    }
}

/// Picks each share's transport from what the driver offers: virtio-fs where it can (it is
/// several times faster than 9p on many small files), except for read-only shares, which stay
/// on 9p because QEMU enforces 9p's `readonly=on` on the host while virtiofsd (QEMU 7's) has no
/// read-only mode and a guest-side `ro` mount alone would let the guest's root remount it
/// writable; SFTP over the machine's SSH connection where the driver has no device at all
/// (its server refuses changes to a read-only share on the host side).
pub fn choose_transports(shares: &mut [Share], capabilities: &Capabilities) {
    for share in shares {
        share.transport = if !capabilities.shares && capabilities.sftp_shares {
            ShareTransport::Sftp
        } else if capabilities.virtio_fs && !share.read_only {
            ShareTransport::VirtioFs
        } else {
            ShareTransport::NineP
        };
    }
}

/// The user's home folder, the default share.
pub fn home_dir() -> Option<PathBuf> {
    directories::BaseDirs::new().map(|dirs| dirs.home_dir().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_guest_path_and_mode() {
        assert_eq!(
            parse_spec("/home/me").unwrap(),
            ShareSpec {
                host: "/home/me".into(),
                guest: None,
                read_only: false
            }
        );
        assert_eq!(
            parse_spec("/srv/code:/code:ro").unwrap(),
            ShareSpec {
                host: "/srv/code".into(),
                guest: Some("/code".into()),
                read_only: true
            }
        );
        assert_eq!(parse_spec("/srv:ro").unwrap().guest, None);
        assert!(parse_spec("/srv:ro").unwrap().read_only);
        assert_eq!(
            parse_spec(r"C:\Users\me:/work:rw").unwrap(),
            ShareSpec {
                host: r"C:\Users\me".into(),
                guest: Some("/work".into()),
                read_only: false
            }
        );
        assert!(parse_spec("/a:b").unwrap_err().contains("must be absolute"));
        assert!(parse_spec("/a:/b:/c").unwrap_err().contains("too many"));
        assert!(parse_spec(":/b").is_err());
    }

    #[test]
    fn default_guest_path_is_the_same_path_or_the_drive_folder() {
        assert_eq!(default_guest_path(Path::new("/Users/me")), "/Users/me");
        assert_eq!(default_guest_path(Path::new("/home/me/")), "/home/me");
        assert_eq!(default_guest_path(Path::new(r"C:\Users\me")), "/c/Users/me");
        assert_eq!(default_guest_path(Path::new(r"D:\")), "/d");
    }

    #[test]
    fn system_folders_cannot_be_hidden() {
        for bad in [
            "/",
            "/etc",
            "/usr/local",
            "/mnt/data/x",
            "/tmp",
            "/var/lib/rmachine-engine",
        ] {
            assert!(hides_guest_system(bad), "{bad}");
        }
        for good in [
            "/home/me",
            "/Users/me",
            "/c/Users/me",
            "/tmp/x",
            "/var/folders/x",
            "/root",
        ] {
            assert!(!hides_guest_system(good), "{good}");
        }
    }

    #[test]
    fn a_driver_share_replaces_home_and_is_checked_like_a_share() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let code = tmp.path().join("code");
        std::fs::create_dir(&home).unwrap();
        std::fs::create_dir(&code).unwrap();
        let driver_share = |host: &str, guest: &str| DriverShare {
            flag: format!("--virtualbox-share-folder {host}:x"),
            host_path: host.into(),
            guest_path: Some(guest.to_owned()),
        };
        // In the home folder's place, a relative folder taken from the current one.
        let code_share = driver_share("code", "/code");
        let shares = resolve(&[], false, Some(&home), Some(&code_share), tmp.path()).unwrap();
        assert_eq!(
            shares,
            vec![Share {
                tag: "rmshare0".into(),
                host_path: code.clone(),
                guest_path: "/code".into(),
                read_only: false,
                transport: ShareTransport::NineP,
            }]
        );
        // Without a NAME, at the folder's own path, as `--share code`.
        let unnamed = DriverShare {
            guest_path: None,
            ..code_share.clone()
        };
        let shares = resolve(&[], false, Some(&home), Some(&unnamed), tmp.path()).unwrap();
        assert_eq!(
            shares
                .iter()
                .map(|s| s.guest_path.as_str())
                .collect::<Vec<_>>(),
            [default_guest_path(&code)]
        );
        // Beside the --share list.
        let specs = vec![format!("{}:/h", home.display())];
        let shares = resolve(&specs, false, Some(&home), Some(&code_share), tmp.path()).unwrap();
        assert_eq!(
            shares
                .iter()
                .map(|s| s.guest_path.as_str())
                .collect::<Vec<_>>(),
            ["/h", "/code"]
        );
        // Refused with its option's name.
        let problems = resolve(
            &[],
            false,
            Some(&home),
            Some(&driver_share("missing", "/m")),
            tmp.path(),
        )
        .unwrap_err();
        assert_eq!(
            problems,
            [format!(
                "--virtualbox-share-folder missing:x: host folder {} does not exist or is not a \
                 folder",
                tmp.path().join("missing").display()
            )]
        );
        let problems = resolve(
            &[],
            false,
            None,
            Some(&driver_share("code", "/etc")),
            tmp.path(),
        )
        .unwrap_err();
        assert_eq!(
            problems,
            [
                "--virtualbox-share-folder code:x: guest path /etc would hide the machine's own \
              files; choose another NAME"
            ]
        );
        let specs = vec![format!("{}:/code", home.display())];
        let problems = resolve(&specs, false, None, Some(&code_share), tmp.path()).unwrap_err();
        assert!(
            problems[0].ends_with("would both be mounted at /code"),
            "{problems:?}"
        );
        let problems = resolve(&[], true, None, Some(&code_share), tmp.path()).unwrap_err();
        assert_eq!(
            problems,
            ["--no-share and --virtualbox-share-folder code:x cannot be used together"]
        );
    }

    #[test]
    fn resolve_defaults_to_home_and_checks_every_share() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        std::fs::create_dir(&home).unwrap();
        let shares = resolve(&[], false, Some(&home), None, tmp.path()).unwrap();
        assert_eq!(
            shares,
            vec![Share {
                tag: "rmshare0".into(),
                host_path: home.clone(),
                guest_path: home.to_string_lossy().into_owned(),
                read_only: false,
                transport: ShareTransport::NineP,
            }]
        );
        assert!(resolve(&[], true, Some(&home), None, tmp.path())
            .unwrap()
            .is_empty());

        let specs = vec![
            "home:/src:ro".to_owned(),
            "missing".to_owned(),
            format!("{}:/etc", home.display()),
            format!("{}:/src", home.display()),
        ];
        let problems = resolve(&specs, false, None, None, tmp.path()).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].contains("missing does not exist"),
            "{problems:?}"
        );
        assert!(problems[1].contains("hide"), "{problems:?}");
        assert!(
            problems[2].contains("both be mounted at /src"),
            "{problems:?}"
        );

        let problems = resolve(&["x".into()], true, None, None, tmp.path()).unwrap_err();
        assert_eq!(
            problems,
            vec!["--no-share and --share cannot be used together"]
        );
    }

    #[test]
    fn writable_shares_go_over_virtio_fs_when_the_driver_offers_it() {
        let tmp = tempfile::tempdir().unwrap();
        let specs = vec![
            format!("{}:/rw", tmp.path().display()),
            format!("{}:/ro:ro", tmp.path().display()),
        ];
        let mut shares = resolve(&specs, false, None, None, tmp.path()).unwrap();
        let qemu = |virtio_fs| Capabilities {
            shares: true,
            virtio_fs,
            sftp_shares: true,
            ..Capabilities::default()
        };
        let chosen = |shares: &mut Vec<Share>, caps: Capabilities| {
            choose_transports(shares, &caps);
            shares.iter().map(|s| s.transport).collect::<Vec<_>>()
        };
        assert_eq!(
            chosen(&mut shares, qemu(true)),
            [ShareTransport::VirtioFs, ShareTransport::NineP]
        );
        assert_eq!(
            chosen(&mut shares, qemu(false)),
            [ShareTransport::NineP, ShareTransport::NineP]
        );
        // No device for shares (VirtualBox, Hyper-V, QEMU on Windows or told so): SFTP.
        let no_device = Capabilities {
            sftp_shares: true,
            ..Capabilities::default()
        };
        assert_eq!(
            chosen(&mut shares, no_device),
            [ShareTransport::Sftp, ShareTransport::Sftp]
        );
    }
}
