//! `rmachine scp`: copies files between the host and machines, or between two machines.
//!
//! docker-machine ran the system `scp -3` (or `rsync` for `--delta`). rmachine speaks SFTP
//! itself, over the same russh connection as `rmachine ssh`, to the guest's `sftp` subsystem:
//! it needs no `scp` or `rsync` on the host (Windows has neither by default) and none in the
//! guest. A machine-to-machine copy streams through the host, as `scp -3` does.
//!
//! Arguments are `[[user@]machine:]path` as in docker-machine: no colon is a local path, and
//! `localhost:path` is local too. `--delta` copies only files whose size or modification time
//! differ, and stamps each copied file with its source's modification time so that the next
//! delta copy can skip it (rsync's quick check; the guest has no rsync). With `--delta` a
//! directory lands as rsync puts it: `dir` inside the destination (made if missing), `dir/`'s
//! contents into it.

use std::path::Path;

use rmachine_driver::{Driver, VmState};
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::machine::{self, MachineError};
use crate::ssh::{SshError, SshSession};
use crate::store::Store;

/// What can go wrong copying.
#[derive(Debug, thiserror::Error)]
pub enum ScpError {
    /// The machine is unknown, or its record or driver failed.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// The machine is not running.
    #[error("Error: Cannot run SCP command: Host \"{machine}\" is not running")]
    NotRunning {
        /// The machine.
        machine: String,
    },
    /// The SSH connection or the SFTP session failed.
    #[error("machine {machine:?}: scp")]
    Ssh {
        /// The machine.
        machine: String,
        /// The cause.
        #[source]
        source: SshError,
    },
    /// A user other than the guest's only one.
    #[error("scp: user {user:?}: the guest has only the user \"root\"")]
    User {
        /// The user asked for.
        user: String,
    },
    /// The source does not exist.
    #[error("scp: {path}: No such file or directory")]
    Missing {
        /// The path, as given or joined.
        path: String,
    },
    /// A directory without `-r`, or something that is neither a file nor a directory.
    #[error("scp: {path}: not a regular file{}", if *.dir { " (pass -r to copy a directory)" } else { "" })]
    NotAFile {
        /// The path.
        path: String,
        /// Whether it is a directory.
        dir: bool,
    },
    /// A directory listing named an entry that is not a plain name (`/`, `..`, NUL): a
    /// misbehaving server trying to write outside the destination (the scp CVE-2019-6111 class).
    #[error("scp: {path}: refusing the entry {name:?} listed by the server: not a file name")]
    BadEntryName {
        /// The directory listed.
        path: String,
        /// The entry's name as sent.
        name: String,
    },
    /// A directory would replace a file.
    #[error("scp: {path}: Not a directory")]
    NotADirectory {
        /// The path.
        path: String,
    },
    /// A local file operation failed.
    #[error("scp: {path}")]
    Local {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file operation in a machine failed.
    #[error("scp: {machine}:{path}")]
    Remote {
        /// The machine.
        machine: String,
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: russh_sftp::client::error::Error,
    },
    /// Copying the bytes of a file failed.
    #[error("scp: {from} -> {to}")]
    Transfer {
        /// The source, as `[machine:]path`.
        from: String,
        /// The destination, as `[machine:]path`.
        to: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// One side of a copy, as parsed from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A path on this host.
    Local(String),
    /// A path in a machine (relative paths start at root's home).
    Machine {
        /// The machine.
        name: String,
        /// The user before `@`, if one was given.
        user: Option<String>,
        /// The path after `:` (empty: the home directory).
        path: String,
    },
}

impl Location {
    /// Parses `[[user@]machine:]path` as docker-machine does (`commands/scp.go`).
    pub fn parse(arg: &str) -> Self {
        let Some((host, path)) = arg.split_once(':') else {
            return Self::Local(arg.to_owned());
        };
        // `C:\dir` on Windows is a local path, not a machine named C.
        if cfg!(windows) && host.len() == 1 && host.chars().all(|c| c.is_ascii_alphabetic()) {
            return Self::Local(arg.to_owned());
        }
        let (user, name) = match host.split_once('@') {
            Some((user, name)) => (Some(user.to_owned()), name),
            None => (None, host),
        };
        if name == "localhost" {
            return Self::Local(path.to_owned());
        }
        Self::Machine {
            name: name.to_owned(),
            user,
            path: path.to_owned(),
        }
    }
}

/// How to copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScpOptions {
    /// Copy directories and their contents (`-r`).
    pub recursive: bool,
    /// Copy only files whose size or modification time differ (`-d`).
    pub delta: bool,
}

/// One file `copy` handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// The destination path.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// `--delta` found it up to date and did not copy it.
    pub skipped: bool,
}

/// Copies `src` to `dst` (each `[[user@]machine:]path`); returns the files handled, in order.
pub async fn copy(
    store: &Store,
    src: &str,
    dst: &str,
    options: ScpOptions,
) -> Result<Vec<Copied>, ScpError> {
    let (src, dst) = (Location::parse(src), Location::parse(dst));
    // Check both ends before connecting to either, so a typo fails fast.
    for location in [&src, &dst] {
        if let Location::Machine { name, user, .. } = location {
            let config = machine::load_finished(store, name)?;
            if let Some(user) = user.as_deref().filter(|u| *u != config.driver.ssh_user) {
                return Err(ScpError::User {
                    user: user.to_owned(),
                });
            }
        }
    }
    let (src_side, src_path) = open_side(store, &src).await?;
    let (dst_side, dst_path) = open_side(store, &dst).await?;
    copy_between(&src_side, &src_path, &dst_side, &dst_path, options).await
}

async fn open_side(store: &Store, location: &Location) -> Result<(Side, String), ScpError> {
    match location {
        Location::Local(path) => Ok((Side::Local, path.clone())),
        Location::Machine { name, path, .. } => {
            let sftp = connect(store, name).await?;
            Ok((
                Side::Remote {
                    machine: name.clone(),
                    sftp,
                },
                path.clone(),
            ))
        }
    }
}

async fn connect(store: &Store, name: &str) -> Result<SftpSession, ScpError> {
    let config = machine::load_finished(store, name)?;
    let driver = machine::driver_for(&config)?;
    let dir = store.machine_dir(name);
    let driver_err = |op: &'static str| {
        let name = name.to_owned();
        move |source| {
            ScpError::Machine(MachineError::Driver {
                machine: name,
                op,
                source,
            })
        }
    };
    if driver
        .state(&dir)
        .await
        .map_err(driver_err("report the state"))?
        != VmState::Running
    {
        return Err(ScpError::NotRunning {
            machine: name.to_owned(),
        });
    }
    let endpoints = driver
        .endpoints(&dir)
        .await
        .map_err(driver_err("report the VM's endpoints"))?;
    let ssh_err = |source| ScpError::Ssh {
        machine: name.to_owned(),
        source,
    };
    let session = SshSession::connect_as(
        endpoints.ssh,
        &config.driver.ssh_user,
        &config.driver.ssh_key_path,
    )
    .await
    .map_err(ssh_err)?;
    // The SFTP channel keeps the connection alive; the session handle may go.
    session.sftp().await.map_err(ssh_err)
}

/// Where files are read or written: this host, or a machine through SFTP.
pub enum Side {
    /// The local file system.
    Local,
    /// A machine's file system.
    Remote {
        /// The machine, for messages.
        machine: String,
        /// Its SFTP session.
        sftp: SftpSession,
    },
}

/// What `copy` needs to know of a file.
#[derive(Debug, Clone, Copy)]
struct Meta {
    dir: bool,
    regular: bool,
    size: u64,
    mtime: Option<u32>,
    mode: u32,
}

impl Meta {
    fn from_local(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
        #[cfg(not(unix))]
        let mode = if meta.permissions().readonly() {
            0o444
        } else {
            0o644
        };
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| u32::try_from(d.as_secs()).ok());
        Self {
            dir: meta.is_dir(),
            regular: meta.is_file(),
            size: meta.len(),
            mtime,
            mode,
        }
    }

    fn from_remote(attrs: &FileAttributes) -> Self {
        Self {
            dir: attrs.is_dir(),
            regular: attrs.is_regular(),
            size: attrs.size.unwrap_or(0),
            mtime: attrs.mtime,
            mode: attrs.permissions.unwrap_or(0o644) & 0o7777,
        }
    }
}

/// Whether a listed entry is one name in its directory: joined to a destination, it stays there.
fn is_plain_name(name: &str) -> bool {
    // On Windows `\` and `:` (drive or stream) also leave the directory a name is joined to.
    let separators: &[char] = if cfg!(windows) {
        &['/', '\0', '\\', ':']
    } else {
        &['/', '\0']
    };
    !name.is_empty() && name != "." && name != ".." && !name.contains(separators)
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

impl Side {
    fn name(&self, path: &str) -> String {
        match self {
            Side::Local => path.to_owned(),
            Side::Remote { machine, .. } => format!("{machine}:{path}"),
        }
    }

    fn join(&self, base: &str, name: &str) -> String {
        match self {
            Side::Local => Path::new(base).join(name).to_string_lossy().into_owned(),
            Side::Remote { .. } if base.is_empty() => name.to_owned(),
            Side::Remote { .. } if base.ends_with('/') => format!("{base}{name}"),
            Side::Remote { .. } => format!("{base}/{name}"),
        }
    }

    fn remote_err(&self, path: &str, source: russh_sftp::client::error::Error) -> ScpError {
        match self {
            Side::Remote { machine, .. } => ScpError::Remote {
                machine: machine.clone(),
                path: path.to_owned(),
                source,
            },
            Side::Local => ScpError::Local {
                path: path.to_owned(),
                source: std::io::Error::other(source.to_string()),
            },
        }
    }

    fn local_err(path: &str) -> impl FnOnce(std::io::Error) -> ScpError + '_ {
        move |source| ScpError::Local {
            path: path.to_owned(),
            source,
        }
    }

    async fn stat(&self, path: &str) -> Result<Option<Meta>, ScpError> {
        match self {
            Side::Local => {
                // An empty path is the current directory, as for scp.
                let local = if path.is_empty() { "." } else { path };
                match std::fs::metadata(local) {
                    Ok(meta) => Ok(Some(Meta::from_local(&meta))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Self::local_err(path)(e)),
                }
            }
            Side::Remote { sftp, .. } => {
                let target = if path.is_empty() { "." } else { path };
                match sftp.metadata(target).await {
                    Ok(attrs) => Ok(Some(Meta::from_remote(&attrs))),
                    Err(russh_sftp::client::error::Error::Status(status))
                        if status.status_code == StatusCode::NoSuchFile =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(self.remote_err(path, e)),
                }
            }
        }
    }

    async fn list(&self, path: &str) -> Result<Vec<String>, ScpError> {
        let mut names = match self {
            Side::Local => {
                let mut names = Vec::new();
                for entry in std::fs::read_dir(path).map_err(Self::local_err(path))? {
                    let entry = entry.map_err(Self::local_err(path))?;
                    names.push(entry.file_name().to_string_lossy().into_owned());
                }
                names
            }
            Side::Remote { sftp, .. } => sftp
                .read_dir(path)
                .await
                .map_err(|e| self.remote_err(path, e))?
                .map(|entry| entry.file_name())
                .filter(|name| name != "." && name != "..")
                .collect(),
        };
        if let Some(bad) = names.iter().find(|name| !is_plain_name(name)) {
            return Err(ScpError::BadEntryName {
                path: self.name(path),
                name: bad.clone(),
            });
        }
        names.sort();
        Ok(names)
    }

    async fn reader(&self, path: &str) -> Result<Reader, ScpError> {
        match self {
            Side::Local => Ok(Box::new(
                tokio::fs::File::open(path)
                    .await
                    .map_err(Self::local_err(path))?,
            )),
            Side::Remote { sftp, .. } => Ok(Box::new(
                sftp.open(path)
                    .await
                    .map_err(|e| self.remote_err(path, e))?,
            )),
        }
    }

    async fn writer(&self, path: &str, mode: u32) -> Result<Writer, ScpError> {
        match self {
            Side::Local => {
                let mut options = tokio::fs::OpenOptions::new();
                options.write(true).create(true).truncate(true);
                #[cfg(unix)]
                options.mode(mode);
                // Windows files have no mode bits to set.
                #[cfg(not(unix))]
                let _ = mode;
                Ok(Box::new(
                    options.open(path).await.map_err(Self::local_err(path))?,
                ))
            }
            Side::Remote { sftp, .. } => {
                let attrs = FileAttributes {
                    permissions: Some(mode),
                    ..FileAttributes::empty()
                };
                let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
                Ok(Box::new(
                    sftp.open_with_flags_and_attributes(path, flags, attrs)
                        .await
                        .map_err(|e| self.remote_err(path, e))?,
                ))
            }
        }
    }

    async fn mkdir(&self, path: &str, mode: u32) -> Result<(), ScpError> {
        match self {
            Side::Local => {
                #[cfg(unix)]
                let builder = {
                    let mut builder = std::fs::DirBuilder::new();
                    std::os::unix::fs::DirBuilderExt::mode(&mut builder, mode);
                    builder
                };
                #[cfg(not(unix))]
                let builder = {
                    // Windows has no permission bits to set.
                    let _ = mode;
                    std::fs::DirBuilder::new()
                };
                builder.create(path).map_err(Self::local_err(path))
            }
            Side::Remote { sftp, .. } => {
                let attrs = FileAttributes {
                    permissions: Some(mode),
                    ..FileAttributes::empty()
                };
                sftp.create_dir(path)
                    .await
                    .map_err(|e| self.remote_err(path, e))?;
                sftp.set_metadata(path, attrs)
                    .await
                    .map_err(|e| self.remote_err(path, e))
            }
        }
    }

    async fn set_mtime(&self, path: &str, mtime: u32) -> Result<(), ScpError> {
        match self {
            Side::Local => {
                let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime.into());
                let times = std::fs::FileTimes::new()
                    .set_modified(when)
                    .set_accessed(when);
                // Unix lets the owner set times through a read-only descriptor (the copy may be
                // read-only); Windows needs write access for them.
                std::fs::File::options()
                    .read(true)
                    .write(cfg!(windows))
                    .open(path)
                    .and_then(|file| file.set_times(times))
                    .map_err(Self::local_err(path))
            }
            Side::Remote { sftp, .. } => {
                let attrs = FileAttributes {
                    mtime: Some(mtime),
                    atime: Some(mtime),
                    ..FileAttributes::empty()
                };
                sftp.set_metadata(path, attrs)
                    .await
                    .map_err(|e| self.remote_err(path, e))
            }
        }
    }
}

/// The last component of `path` (`/`-separated, or `\` too on this host for local paths).
fn basename(path: &str) -> &str {
    let trimmed = path.trim_end_matches(['/', '\\']);
    trimmed
        .rsplit(['/', '\\'])
        .next()
        .filter(|name| !name.is_empty())
        .unwrap_or(trimmed)
}

/// Copies `src_path` on `src` to `dst_path` on `dst`, as `scp [-r]` would: into `dst_path` if
/// it is an existing directory, else to `dst_path` itself.
pub async fn copy_between(
    src: &Side,
    src_path: &str,
    dst: &Side,
    dst_path: &str,
    options: ScpOptions,
) -> Result<Vec<Copied>, ScpError> {
    let meta = src.stat(src_path).await?.ok_or_else(|| ScpError::Missing {
        path: src.name(src_path),
    })?;
    if meta.dir && !options.recursive {
        return Err(ScpError::NotAFile {
            path: src.name(src_path),
            dir: true,
        });
    }
    let target = match dst.stat(dst_path).await? {
        Some(existing) if existing.dir => dst.join(dst_path, basename(src_path)),
        // `--delta` follows rsync (what docker-machine ran for it): a directory without a
        // trailing slash always lands inside the destination, made if missing, so that
        // running the same command again finds what the first run copied.
        None if options.delta && meta.dir && !src_path.ends_with('/') => {
            dst.mkdir(dst_path, meta.mode).await?;
            dst.join(dst_path, basename(src_path))
        }
        _ => dst_path.to_owned(),
    };
    let mut copied = Vec::new();
    // Depth first, in name order; a stack rather than recursion (async recursion boxes).
    let mut work = vec![(src_path.to_owned(), target, meta)];
    while let Some((from, to, meta)) = work.pop() {
        if meta.dir {
            match dst.stat(&to).await? {
                None => dst.mkdir(&to, meta.mode).await?,
                Some(existing) if existing.dir => {}
                Some(_) => {
                    return Err(ScpError::NotADirectory {
                        path: dst.name(&to),
                    })
                }
            }
            for name in src.list(&from).await?.into_iter().rev() {
                let child = src.join(&from, &name);
                // An entry removed since the listing is not copied.
                if let Some(child_meta) = src.stat(&child).await? {
                    work.push((child, dst.join(&to, &name), child_meta));
                }
            }
        } else if meta.regular {
            copied.push(copy_file(src, &from, meta, dst, &to, options).await?);
        } else {
            return Err(ScpError::NotAFile {
                path: src.name(&from),
                dir: false,
            });
        }
    }
    Ok(copied)
}

async fn copy_file(
    src: &Side,
    from: &str,
    meta: Meta,
    dst: &Side,
    to: &str,
    options: ScpOptions,
) -> Result<Copied, ScpError> {
    if options.delta {
        if let Some(existing) = dst.stat(to).await? {
            if !existing.dir
                && existing.size == meta.size
                && existing.mtime.is_some()
                && existing.mtime == meta.mtime
            {
                return Ok(Copied {
                    path: dst.name(to),
                    bytes: meta.size,
                    skipped: true,
                });
            }
        }
    }
    let transfer = |source| ScpError::Transfer {
        from: src.name(from),
        to: dst.name(to),
        source,
    };
    let mut reader = src.reader(from).await?;
    let mut writer = dst.writer(to, meta.mode).await?;
    let bytes = tokio::io::copy(&mut reader, &mut writer)
        .await
        .map_err(transfer)?;
    writer.shutdown().await.map_err(transfer)?;
    drop(writer);
    if options.delta {
        if let Some(mtime) = meta.mtime {
            dst.set_mtime(to, mtime).await?;
        }
    }
    Ok(Copied {
        path: dst.name(to),
        bytes,
        skipped: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_names_that_leave_the_destination_are_refused() {
        for bad in ["", ".", "..", "../x", "/etc/passwd", "a/b", "a\0b"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
        for good in ["x", ".bashrc", "..x", "a b", "ü"] {
            assert!(is_plain_name(good), "{good:?}");
        }
    }

    #[test]
    fn locations_parse_as_docker_machine_does() {
        assert_eq!(
            Location::parse("/tmp/foo"),
            Location::Local("/tmp/foo".into())
        );
        assert_eq!(
            Location::parse("dev:/etc/hostname"),
            Location::Machine {
                name: "dev".into(),
                user: None,
                path: "/etc/hostname".into()
            }
        );
        assert_eq!(
            Location::parse("root@dev:"),
            Location::Machine {
                name: "dev".into(),
                user: Some("root".into()),
                path: String::new()
            }
        );
        assert_eq!(
            Location::parse("localhost:/tmp/x"),
            Location::Local("/tmp/x".into())
        );
    }

    /// A machine side served by the guest's own SFTP server on `root` (no VM, no SSH).
    #[cfg(target_os = "linux")]
    async fn guest(machine: &str, root: &Path) -> Side {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        rmachine_init::sftp::serve(theirs, root.to_path_buf()).await;
        Side::Remote {
            machine: machine.to_owned(),
            sftp: SftpSession::new(ours).await.expect("sftp handshake"),
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn trees_go_both_ways_and_between_machines() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (host, g1, g2) = (
            tmp.path().join("host"),
            tmp.path().join("g1"),
            tmp.path().join("g2"),
        );
        for dir in [&host, &g1, &g2] {
            std::fs::create_dir_all(dir).expect("dir");
        }
        std::fs::create_dir_all(host.join("tree/sub")).expect("tree");
        std::fs::write(host.join("tree/a.txt"), "alpha\n").expect("a");
        std::fs::write(host.join("tree/sub/b.bin"), vec![7u8; 100_000]).expect("b");
        let (m1, m2) = (guest("m1", &g1).await, guest("m2", &g2).await);
        let local = host.join("tree").to_string_lossy().into_owned();
        let recursive = ScpOptions {
            recursive: true,
            delta: false,
        };

        // A directory needs -r.
        let err = copy_between(&Side::Local, &local, &m1, "", ScpOptions::default())
            .await
            .expect_err("directory without -r");
        assert_eq!(
            err.to_string(),
            format!("scp: {local}: not a regular file (pass -r to copy a directory)")
        );

        // Host to machine: into the existing home directory.
        let copied = copy_between(&Side::Local, &local, &m1, "", recursive)
            .await
            .expect("upload");
        assert_eq!(
            copied.iter().map(|c| c.path.as_str()).collect::<Vec<_>>(),
            ["m1:tree/a.txt", "m1:tree/sub/b.bin"]
        );
        assert_eq!(std::fs::read(g1.join("tree/a.txt")).expect("a"), b"alpha\n");
        assert_eq!(
            std::fs::read(g1.join("tree/sub/b.bin")).expect("b"),
            vec![7u8; 100_000]
        );

        // Machine to machine, to a new name.
        copy_between(&m1, "tree", &m2, "copy", recursive)
            .await
            .expect("machine to machine");
        assert_eq!(
            std::fs::read(g2.join("copy/sub/b.bin")).expect("b"),
            vec![7u8; 100_000]
        );

        // Machine to host, one file, to a new name.
        let back = host.join("back.txt").to_string_lossy().into_owned();
        copy_between(
            &m2,
            "copy/a.txt",
            &Side::Local,
            &back,
            ScpOptions::default(),
        )
        .await
        .expect("download");
        assert_eq!(std::fs::read(&back).expect("back"), b"alpha\n");

        let err = copy_between(&m2, "/nope", &Side::Local, &back, ScpOptions::default())
            .await
            .expect_err("missing source");
        assert_eq!(err.to_string(), "scp: m2:/nope: No such file or directory");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn delta_copies_only_what_changed() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (host, g1) = (tmp.path().join("host"), tmp.path().join("g1"));
        std::fs::create_dir_all(host.join("d")).expect("dir");
        std::fs::create_dir_all(&g1).expect("dir");
        std::fs::write(host.join("d/same"), "same").expect("same");
        std::fs::write(host.join("d/changes"), "one").expect("changes");
        let m1 = guest("m1", &g1).await;
        let local = host.join("d").to_string_lossy().into_owned();
        let delta = ScpOptions {
            recursive: true,
            delta: true,
        };
        let first = copy_between(&Side::Local, &local, &m1, "", delta)
            .await
            .expect("first");
        assert!(first.iter().all(|c| !c.skipped), "{first:?}");

        // Into a destination that does not exist yet, twice: rsync's layout, so the second run
        // finds the first run's files.
        copy_between(&Side::Local, &local, &m1, "fresh", delta)
            .await
            .expect("into a new directory");
        assert_eq!(
            std::fs::read(g1.join("fresh/d/same")).expect("same"),
            b"same"
        );
        let again = copy_between(&Side::Local, &local, &m1, "fresh", delta)
            .await
            .expect("again");
        assert!(again.iter().all(|c| c.skipped), "{again:?}");

        std::fs::write(host.join("d/changes"), "two!").expect("change");
        let second = copy_between(&Side::Local, &local, &m1, "", delta)
            .await
            .expect("second");
        let skipped: Vec<(&str, bool)> = second
            .iter()
            .map(|c| (c.path.as_str(), c.skipped))
            .collect();
        assert_eq!(skipped, [("m1:d/changes", false), ("m1:d/same", true)]);
        assert_eq!(
            std::fs::read(g1.join("d/changes")).expect("changed"),
            b"two!"
        );
    }

    #[test]
    fn basenames() {
        assert_eq!(basename("/a/b/"), "b");
        assert_eq!(basename("b"), "b");
        assert_eq!(basename("a/b.txt"), "b.txt");
    }
}
