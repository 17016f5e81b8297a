//! The host side of a share over SSH (transport `sftp`): an SFTP server rooted at the shared
//! folder, spoken over a channel of the machine's SSH connection.
//!
//! Where the hypervisor has no folder-sharing device (QEMU on Windows, VirtualBox and Hyper-V
//! with our guest, or `--qemu-share-transport sftp`), the port agent opens one exec channel per
//! share running `rmachine-init sftp-mount` in the guest. That command mounts a FUSE filesystem
//! at the share's guest path and speaks SFTP (as the client) over its stdin and stdout; this
//! module answers on the host's end of the same channel. So, as lima's "reverse sshfs", no
//! sshd and no listening port are needed on the host, and the files are read and created by
//! the agent's process: owned by the user who runs `rmachine`.
//!
//! Paths the guest sends are taken inside the share: `/` is the shared folder and `..` never
//! climbs above it (clamped as a chroot would). Every operation goes through a `cap_std` handle
//! on the shared folder, so a symlink in the share (which the guest can create, pointing
//! anywhere) is followed only as long as it stays inside the folder: nothing outside the share
//! is ever read, written or stat'ed. A read-only share refuses every request that would change
//! something, whatever the guest's mount flags say.

use std::collections::HashMap;
use std::fs::File as StdFile;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use cap_fs_ext::{DirExt, SystemTimeSpec};
use cap_std::fs::{Dir, Metadata, OpenOptions};
use rmachine_driver::Share;
use rmachine_sftp::{
    attributes, errno_status, ok, write_all_at, Handles, Open, ENTRIES_PER_READDIR,
};
use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode, Version,
};
use russh_sftp::server::StatusReply;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::ssh::SshSession;

/// The largest read answered at once: a full DATA reply must fit the guest client's 256 KiB
/// packet limit with room for the header.
const MAX_READ: u32 = 128 * 1024;

/// The mode bits the guest may set: setuid and setgid are never granted through a share.
const MODE_MASK: u32 = 0o1777;

/// Serves SFTP for the folder `root` on `stream` until the guest closes it.
pub async fn serve<S>(stream: S, root: PathBuf, read_only: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let root = match Dir::open_ambient_dir(&root, cap_std::ambient_authority()) {
        Ok(dir) => Arc::new(dir),
        Err(e) => {
            tracing::warn!(root = %root.display(), "cannot open the shared folder: {e}");
            return;
        }
    };
    let server = ShareServer {
        root,
        read_only,
        handles: Handles::default(),
    };
    russh_sftp::server::run(stream, server).await;
}

/// Handles one share may hold open at once, so a guest cannot exhaust the host's descriptors.
const MAX_HANDLES: usize = 1024;

/// A directory listing, read lazily, a READDIR's worth at a time: a huge directory is never
/// held in memory.
type Listing = Arc<std::sync::Mutex<cap_std::fs::ReadDir>>;

/// One share's SFTP session: its folder, its mode and its open handles.
struct ShareServer {
    root: Arc<Dir>,
    read_only: bool,
    handles: Handles<Listing>,
}

fn read_only_refusal() -> StatusReply {
    StatusCode::PermissionDenied.with_message("EROFS: the share is read-only")
}

/// Whether `meta` is something the share serves content of: reading a FIFO or a device node
/// would block the server or touch hardware on the host.
fn servable(meta: &Metadata) -> bool {
    let kind = meta.file_type();
    kind.is_file() || kind.is_dir()
}

fn not_servable() -> std::io::Error {
    std::io::Error::other("ENXIO: not a regular file or directory")
}

/// Opens `path` inside `root`, refusing anything but regular files and directories without
/// ever blocking on a FIFO (checked before the open, and again on what was opened).
fn open_servable(root: &Dir, path: &Path, options: &mut OpenOptions) -> std::io::Result<StdFile> {
    match root.metadata(path) {
        Ok(meta) if !servable(&meta) => return Err(not_servable()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    #[cfg(unix)]
    {
        use cap_std::fs::OpenOptionsExt;
        // A FIFO swapped in after the check above must not block the open either.
        options.custom_flags(libc::O_NONBLOCK);
    }
    // O_NONBLOCK stays set: it changes nothing for regular files and directories.
    let file = root.open_with(path, options)?.into_std();
    if !servable(&Metadata::from_file(&file)?) {
        return Err(not_servable());
    }
    Ok(file)
}

fn open_options(flags: OpenFlags) -> OpenOptions {
    let mut options = OpenOptions::new();
    options
        .read(flags.contains(OpenFlags::READ))
        .write(flags.contains(OpenFlags::WRITE))
        .append(flags.contains(OpenFlags::APPEND));
    if flags.contains(OpenFlags::CREATE) {
        if flags.contains(OpenFlags::EXCLUDE) {
            options.create_new(true);
        } else {
            options.create(true);
        }
    }
    options.truncate(flags.contains(OpenFlags::TRUNCATE));
    options
}

/// Sets what SETSTAT may change on `path` without opening it (a FIFO would block the open) and
/// without following a symlink at `path` (times and permissions of the link itself).
fn apply_path(root: &Dir, path: &Path, attrs: &FileAttributes) -> std::io::Result<()> {
    let meta = root.symlink_metadata(path)?;
    if let Some(size) = attrs.size {
        if !meta.is_file() {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        open_servable(root, path, OpenOptions::new().write(true))?.set_len(size)?;
    }
    if let Some(mode) = attrs.permissions {
        if !meta.file_type().is_symlink() {
            #[cfg(unix)]
            let permissions = {
                use std::os::unix::fs::PermissionsExt;
                cap_std::fs::Permissions::from_std(std::fs::Permissions::from_mode(
                    mode & MODE_MASK,
                ))
            };
            #[cfg(not(unix))]
            let permissions = {
                let mut permissions = meta.permissions();
                permissions.set_readonly(mode & 0o222 == 0);
                permissions
            };
            root.set_permissions(path, permissions)?;
        }
    }
    let spec = |secs: Option<u32>| {
        secs.map(|s| {
            SystemTimeSpec::Absolute(cap_std::time::SystemTime::from_std(
                UNIX_EPOCH + Duration::from_secs(s.into()),
            ))
        })
    };
    if attrs.atime.is_some() || attrs.mtime.is_some() {
        root.set_symlink_times(path, spec(attrs.atime), spec(attrs.mtime))?;
    }
    Ok(())
}

/// Whether `name` can be one component of a path in the share on a host whose file names are
/// Windows' (`windows`) or Unix's: on Windows `C:`, `D:foo` or `a\b` would name a drive or a
/// subfolder, and `CON`, `NUL`... a device.
fn name_allowed(name: &str, windows: bool) -> bool {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return false;
    }
    if !windows {
        return true;
    }
    if name.contains([':', '\\']) || name.chars().any(|c| c < ' ') {
        return false;
    }
    let stem = name.split('.').next().unwrap_or(name).trim_end();
    let upper = stem.to_ascii_uppercase();
    let reserved = matches!(
        upper.as_str(),
        "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$"
    ) || ((upper.starts_with("COM") || upper.starts_with("LPT"))
        && upper.len() == 4
        && upper.as_bytes()[3].is_ascii_digit());
    !reserved
}

fn invalid_name(name: &str) -> StatusReply {
    StatusCode::Failure.with_message(format!("EINVAL: {name:?} cannot name a file in the share"))
}

/// `path` (as the guest names it, `/` being the share) resolved inside the share without
/// touching the file system, relative to the share's top: `.` is dropped and `..` stops at
/// the share's top; a name the host cannot hold as one file name is refused.
fn inside(path: &str) -> Result<PathBuf, StatusReply> {
    let mut out = PathBuf::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            name if name_allowed(name, cfg!(windows)) => out.push(name),
            name => return Err(invalid_name(name)),
        }
    }
    // Guard for whatever the checks above missed: only plain names, nothing that could
    // replace the share's folder when joined to it.
    if !out.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(invalid_name(path));
    }
    Ok(out)
}

impl ShareServer {
    /// `path` relative to the share's top, and the share's handle to resolve it with.
    fn path(&self, path: &str) -> Result<(Arc<Dir>, PathBuf), StatusReply> {
        let path = inside(path)?;
        let path = if path.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            path
        };
        Ok((self.root.clone(), path))
    }

    fn writable(&self) -> Result<(), StatusReply> {
        if self.read_only {
            Err(read_only_refusal())
        } else {
            Ok(())
        }
    }

    /// Refuses a new handle once the share holds `MAX_HANDLES`.
    fn room(&self) -> Result<(), StatusReply> {
        if self.handles.len() >= MAX_HANDLES {
            Err(StatusCode::Failure
                .with_message(format!("EMFILE: the share has {MAX_HANDLES} handles open")))
        } else {
            Ok(())
        }
    }
}

/// File work on the blocking pool; a failure is answered with the errno's name first.
async fn blocking<T, F>(work: F) -> Result<T, StatusReply>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    rmachine_sftp::blocking(errno_status, work).await
}

impl russh_sftp::server::Handler for ShareServer {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported.into()
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        Ok(Version::new())
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let changes =
            OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        if pflags.intersects(changes) {
            self.writable()?;
        }
        self.room()?;
        let (root, path) = self.path(&filename)?;
        let mut options = open_options(pflags);
        #[cfg(unix)]
        {
            use cap_std::fs::OpenOptionsExt;
            options.mode(attrs.permissions.map_or(0o644, |mode| mode & MODE_MASK));
        }
        #[cfg(not(unix))]
        let _ = attrs;
        let file = blocking(move || open_servable(&root, &path, &mut options)).await?;
        let handle = self.handles.add(Open::File(Arc::new(file)));
        Ok(Handle { id, handle })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        self.handles.close(&handle)?;
        Ok(ok(id))
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let file = self.handles.file(&handle)?;
        rmachine_sftp::read_data(errno_status, file, id, offset, len, MAX_READ).await
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        self.writable()?;
        let file = self.handles.file(&handle)?;
        blocking(move || write_all_at(&file, &data, offset)).await?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let (root, path) = self.path(&path)?;
        let meta = blocking(move || root.symlink_metadata(path)).await?;
        Ok(Attrs {
            id,
            attrs: attributes(&meta),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let (root, path) = self.path(&path)?;
        let meta = blocking(move || root.metadata(path)).await?;
        Ok(Attrs {
            id,
            attrs: attributes(&meta),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let file = self.handles.file(&handle)?;
        let meta = blocking(move || Metadata::from_file(&file)).await?;
        Ok(Attrs {
            id,
            attrs: attributes(&meta),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        self.writable()?;
        let (root, path) = self.path(&path)?;
        blocking(move || apply_path(&root, &path, &attrs)).await?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        self.writable()?;
        let file = self.handles.file(&handle)?;
        blocking(move || rmachine_sftp::apply(&file, &attrs, MODE_MASK)).await?;
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        self.room()?;
        let (root, path) = self.path(&path)?;
        let entries = blocking(move || root.read_dir(&path)).await?;
        let handle = self
            .handles
            .add(Open::Dir(Arc::new(std::sync::Mutex::new(entries))));
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let entries = self.handles.dir(&handle)?.clone();
        let files = blocking(move || {
            let mut entries = entries
                .lock()
                .map_err(|_| std::io::Error::other("directory listing poisoned"))?;
            let mut files = Vec::new();
            while files.len() < ENTRIES_PER_READDIR {
                let Some(entry) = entries.next() else { break };
                let entry = entry?;
                let name = match entry.file_name().into_string() {
                    Ok(name) => name,
                    Err(name) => {
                        // The guest would see it under a lossy name that could be another
                        // file's: it is not listed at all.
                        tracing::warn!(name = ?name, "not listing a file name that is not UTF-8");
                        continue;
                    }
                };
                // An entry removed while listing is simply not listed.
                let Ok(meta) = entry.metadata() else {
                    continue;
                };
                files.push(File::new(name, attributes(&meta)));
            }
            Ok(files)
        })
        .await?;
        if files.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        self.writable()?;
        let (root, path) = self.path(&filename)?;
        blocking(move || root.remove_file(path)).await?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        self.writable()?;
        let (root, path) = self.path(&path)?;
        let mode = attrs.permissions.map_or(0o755, |mode| mode & MODE_MASK);
        blocking(move || {
            // Only Unix sets a mode on it.
            #[cfg_attr(not(unix), allow(unused_mut))]
            let mut builder = cap_std::fs::DirBuilder::new();
            #[cfg(unix)]
            cap_std::fs::DirBuilderExt::mode(&mut builder, mode);
            #[cfg(not(unix))]
            let _ = mode;
            root.create_dir_with(path, &builder)
        })
        .await?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        self.writable()?;
        let (root, path) = self.path(&path)?;
        blocking(move || root.remove_dir(path)).await?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        // Answered in the guest's terms: the path inside the share, from its top.
        let name = format!("/{}", inside(&path)?.to_string_lossy().replace('\\', "/"));
        Ok(Name {
            id,
            files: vec![File::dummy(name)],
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        self.writable()?;
        let (root, from) = self.path(&oldpath)?;
        let (_, to) = self.path(&newpath)?;
        blocking(move || root.rename(from, &root, to)).await?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let (root, path) = self.path(&path)?;
        // The link's text as it is, wherever it points: following it is what is confined.
        let target = blocking(move || {
            #[cfg(not(windows))]
            {
                root.read_link_contents(path)
            }
            #[cfg(windows)]
            {
                root.read_link(path)
            }
        })
        .await?;
        Ok(Name {
            id,
            files: vec![File::dummy(target.to_string_lossy().into_owned())],
        })
    }

    async fn symlink(
        &mut self,
        id: u32,
        linkpath: String,
        targetpath: String,
    ) -> Result<Status, Self::Error> {
        self.writable()?;
        let (root, link) = self.path(&linkpath)?;
        blocking(move || {
            // Any target text is allowed (as in the guest's own filesystems); the host
            // follows it only inside the share, through `root`.
            #[cfg(not(windows))]
            {
                root.symlink_contents(targetpath, link)
            }
            #[cfg(windows)]
            {
                root.symlink_file(targetpath, link)
            }
        })
        .await?;
        Ok(ok(id))
    }
}

/// The guest command that mounts a share over its channel (the guest path follows).
pub const MOUNT_COMMAND: &str = "rmachine-init sftp-mount";

/// The line the guest's `sftp-mount` prints on stderr once the kernel has the mount.
pub const MOUNTED_LINE: &str = "rmachine-sftp: mounted";

/// The shell command, for the guest's `/bin/sh -c`, that mounts `share` with `program`.
pub fn mount_command(program: &str, share: &Share) -> String {
    let quoted = format!("'{}'", share.guest_path.replace('\'', r"'\''"));
    if share.read_only {
        format!("{program} --ro {quoted}")
    } else {
        format!("{program} {quoted}")
    }
}

/// The most of the guest's stderr kept as the reason a share is not mounted.
const STDERR_KEPT: usize = 4096;

/// Guest stderr lines logged per `LOG_WINDOW`; the rest are counted, not logged.
const LOG_LINES_PER_WINDOW: u32 = 20;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// The tail of the guest's stderr, and the rate limit on logging it: a guest that writes
/// without end must neither grow the agent's memory nor flood its log.
struct StderrTail {
    text: String,
    window_start: std::time::Instant,
    logged: u32,
    suppressed: u64,
}

impl StderrTail {
    fn new() -> Self {
        StderrTail {
            text: String::new(),
            window_start: std::time::Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    /// Keeps `line` (dropping the oldest text past `STDERR_KEPT`) and says whether to log it.
    fn push(&mut self, line: &str, now: std::time::Instant) -> bool {
        self.text.push_str(line);
        self.text.push('\n');
        if self.text.len() > STDERR_KEPT {
            let mut cut = self.text.len() - STDERR_KEPT;
            while !self.text.is_char_boundary(cut) {
                cut += 1;
            }
            self.text.drain(..cut);
        }
        if now.duration_since(self.window_start) >= LOG_WINDOW {
            if self.suppressed > 0 {
                tracing::warn!(
                    "{} more lines from the guest were not logged",
                    self.suppressed
                );
            }
            self.window_start = now;
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged < LOG_LINES_PER_WINDOW {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// A share over SFTP as the port agent last saw it (`port-agent.json`, `inspect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SftpShareState {
    /// The folder on the host.
    pub host_path: PathBuf,
    /// Where the guest mounts it.
    pub guest_path: String,
    /// Whether the guest has it mounted now.
    pub mounted: bool,
    /// Why it is not mounted, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Mounts `share` in the guest with `program` over a new channel of `ssh` and serves it until
/// the channel closes; every change of its state is sent on `states`.
pub async fn serve_share(
    ssh: Arc<SshSession>,
    share: Share,
    program: String,
    states: mpsc::UnboundedSender<SftpShareState>,
) {
    let state = |mounted: bool, error: Option<String>| SftpShareState {
        host_path: share.host_path.clone(),
        guest_path: share.guest_path.clone(),
        mounted,
        error,
    };
    let channel = match ssh.exec_channel(&mount_command(&program, &share)).await {
        Ok(channel) => channel,
        Err(e) => {
            let _ = states.send(state(false, Some(crate::machine::error_chain(&e))));
            return;
        }
    };
    let (mut rx, tx) = channel.split();
    let (mut ours, theirs) = tokio::io::duplex(4 * MAX_READ as usize);
    let server = tokio::spawn(serve(theirs, share.host_path.clone(), share.read_only));
    let mut stderr = StderrTail::new();
    let mut exit_status = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            n = ours.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.data(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            },
            msg = rx.wait() => match msg {
                Some(russh::ChannelMsg::Data { data }) => {
                    if ours.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Some(russh::ChannelMsg::ExtendedData { data, .. }) => {
                    for line in String::from_utf8_lossy(&data).lines() {
                        if line.trim() == MOUNTED_LINE {
                            tracing::info!(share = %share.guest_path, "mounted over sftp");
                            let _ = states.send(state(true, None));
                        } else if !line.trim().is_empty()
                            && stderr.push(line.trim(), std::time::Instant::now())
                        {
                            tracing::warn!(share = %share.guest_path, "guest: {}", line.trim());
                        }
                    }
                }
                Some(russh::ChannelMsg::ExitStatus { exit_status: code }) => exit_status = Some(code),
                Some(_) => {}
                None => break,
            },
        }
    }
    server.abort();
    let reason = match (stderr.text.trim(), exit_status) {
        ("", Some(code)) => format!("the guest's sftp-mount exited with status {code}"),
        ("", None) => "the SSH channel to the machine closed".to_owned(),
        (text, _) => text.to_owned(),
    };
    let _ = states.send(state(false, Some(reason)));
}

/// First pause before opening a share's channel again; it doubles up to `MAX_CHANNEL_RETRY`
/// while channels keep ending at once.
const CHANNEL_RETRY: Duration = Duration::from_secs(1);
/// The longest pause between two channels of one share.
const MAX_CHANNEL_RETRY: Duration = Duration::from_secs(8);
/// A channel that served this long was working: the next pause starts at `CHANNEL_RETRY`.
const CHANNEL_STABLE: Duration = Duration::from_secs(10);

/// Serves `share` as [`serve_share`] does for as long as `ssh` stays open: a channel that
/// ends while the connection lives (the guest's `sftp-mount` died or was killed) is opened
/// again, and the guest's daemon, which keeps the mount meanwhile, takes the new one.
pub async fn serve_share_while_connected(
    ssh: Arc<SshSession>,
    share: Share,
    program: String,
    states: mpsc::UnboundedSender<SftpShareState>,
) {
    let mut retry = CHANNEL_RETRY;
    while !ssh.is_closed() {
        let started = std::time::Instant::now();
        serve_share(ssh.clone(), share.clone(), program.clone(), states.clone()).await;
        retry = if started.elapsed() >= CHANNEL_STABLE {
            CHANNEL_RETRY
        } else {
            (retry * 2).min(MAX_CHANNEL_RETRY)
        };
        tokio::time::sleep(retry).await;
    }
}

#[cfg(test)]
mod tests {
    use russh_sftp::client::SftpSession;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn session(root: &Path, read_only: bool) -> SftpSession {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        tokio::spawn(serve(theirs, root.to_path_buf(), read_only));
        SftpSession::new(ours).await.expect("sftp handshake")
    }

    #[tokio::test]
    async fn files_round_trip_inside_the_share_and_never_outside() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().join("share");
        std::fs::create_dir(&root).expect("share dir");
        std::fs::write(tmp.path().join("secret"), "outside").expect("outside file");
        let sftp = session(&root, false).await;

        sftp.create_dir("/sub").await.expect("mkdir");
        let mut file = sftp.create("/sub/data.bin").await.expect("create");
        file.write_all(b"from the guest").await.expect("write");
        file.shutdown().await.expect("close");
        assert_eq!(
            std::fs::read(root.join("sub/data.bin")).expect("written on the host"),
            b"from the guest"
        );

        // `..` stops at the share's top: this names share/secret, which does not exist.
        let err = sftp
            .metadata("/sub/../../secret")
            .await
            .expect_err("outside the share");
        assert!(err.to_string().contains("No such file"), "{err}");
        assert_eq!(
            sftp.canonicalize("/../../sub/./x").await.expect("realpath"),
            "/sub/x"
        );
        let mut back = String::new();
        sftp.open("/sub/data.bin")
            .await
            .expect("open")
            .read_to_string(&mut back)
            .await
            .expect("read");
        assert_eq!(back, "from the guest");
    }

    #[cfg(unix)]
    /// A share at `tmp/share` with `out -> tmp/outside` (holding `secret`) and
    /// `link-to-outside-file -> tmp/outside/secret`.
    fn share_with_links_out(tmp: &Path) -> (PathBuf, PathBuf) {
        let root = tmp.join("share");
        let outside = tmp.join("outside");
        std::fs::create_dir(&root).expect("share dir");
        std::fs::create_dir(&outside).expect("outside dir");
        std::fs::write(outside.join("secret"), "outside").expect("outside file");
        std::os::unix::fs::symlink(&outside, root.join("out")).expect("link out");
        std::os::unix::fs::symlink(outside.join("secret"), root.join("link-to-outside-file"))
            .expect("link to outside file");
        std::os::unix::fs::symlink("../outside", root.join("up")).expect("relative link out");
        (root, outside)
    }

    #[cfg(unix)]
    fn mtime(path: &Path) -> std::time::SystemTime {
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .expect("mtime")
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn symlinks_never_lead_outside_the_share() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (root, outside) = share_with_links_out(tmp.path());
        let sftp = session(&root, false).await;

        for path in ["/out/secret", "/up/secret", "/link-to-outside-file"] {
            assert!(sftp.metadata(path).await.is_err(), "stat {path} escaped");
            assert!(sftp.open(path).await.is_err(), "open {path} escaped");
        }
        assert!(sftp.create("/out/new").await.is_err(), "create escaped");
        assert!(sftp.create_dir("/out/dir").await.is_err(), "mkdir escaped");
        assert!(sftp.read_dir("/out").await.is_err(), "opendir escaped");
        assert!(
            sftp.remove_file("/out/secret").await.is_err(),
            "remove escaped"
        );
        assert!(
            sftp.rename("/out/secret", "/stolen").await.is_err(),
            "rename escaped"
        );
        // A link the guest makes may say anything, but it leads nowhere outside either.
        sftp.symlink("/root-link", "/").await.expect("symlink");
        assert_eq!(sftp.read_link("/root-link").await.expect("readlink"), "/");
        assert!(
            sftp.open("/root-link/etc/passwd").await.is_err(),
            "open / escaped"
        );
        // Links that stay inside the share work as before.
        sftp.create("/inside").await.expect("create");
        sftp.symlink("/ok", "inside").await.expect("symlink inside");
        sftp.open("/ok")
            .await
            .expect("a link inside the share is followed");
        assert!(!outside.join("new").exists() && !outside.join("dir").exists());
        assert_eq!(
            std::fs::read_to_string(outside.join("secret")).expect("still there"),
            "outside"
        );
        // The links themselves are in the share and can be listed and stat'ed as links.
        let meta = sftp.symlink_metadata("/out").await.expect("lstat");
        assert!(meta.is_symlink(), "{meta:?}");

        let before = mtime(&outside.join("secret"));
        let _ = sftp
            .set_metadata(
                "/link-to-outside-file",
                FileAttributes {
                    atime: Some(1),
                    mtime: Some(1),
                    ..FileAttributes::empty()
                },
            )
            .await;
        assert_eq!(
            mtime(&outside.join("secret")),
            before,
            "setstat followed the link"
        );
        assert!(
            sftp.set_metadata(
                "/out/secret",
                FileAttributes {
                    mtime: Some(1),
                    atime: Some(1),
                    ..FileAttributes::empty()
                },
            )
            .await
            .is_err(),
            "setstat through a link escaped"
        );
        assert_eq!(mtime(&outside.join("secret")), before);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_read_only_share_reads_nothing_outside_through_links() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (root, outside) = share_with_links_out(tmp.path());
        let sftp = session(&root, true).await;
        for path in ["/out/secret", "/up/secret", "/link-to-outside-file"] {
            assert!(sftp.metadata(path).await.is_err(), "stat {path} escaped");
            assert!(sftp.open(path).await.is_err(), "open {path} escaped");
        }
        let before = mtime(&outside.join("secret"));
        let _ = sftp
            .set_metadata(
                "/link-to-outside-file",
                FileAttributes {
                    mtime: Some(1),
                    atime: Some(1),
                    ..FileAttributes::empty()
                },
            )
            .await;
        assert_eq!(mtime(&outside.join("secret")), before);
    }

    #[test]
    fn names_that_would_leave_the_share_on_windows_are_refused() {
        for name in [
            "C:", "D:foo", "a\\b", "CON", "nul", "Com1", "lpt9.txt", "aux .c",
        ] {
            assert!(!name_allowed(name, true), "{name} allowed on Windows");
        }
        for name in ["file.txt", "CONSOLE", "com10", "a b", ".hidden", "x..y"] {
            assert!(name_allowed(name, true), "{name} refused on Windows");
        }
        // On Unix only the separator and NUL are special.
        for name in ["C:", "a\\b", "CON"] {
            assert!(name_allowed(name, false), "{name} refused on Unix");
        }
        for name in ["", ".", "..", "a\0b"] {
            assert!(!name_allowed(name, false), "{name:?} allowed");
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn fifos_are_refused_without_blocking_the_server() {
        let root = tempfile::tempdir().expect("temp dir");
        let fifo = root.path().join("fifo");
        nix_mkfifo(&fifo);
        let sftp = session(root.path(), false).await;
        let wait = Duration::from_secs(5);
        let Err(err) = tokio::time::timeout(wait, sftp.open("/fifo"))
            .await
            .expect("open blocked")
        else {
            panic!("a FIFO was opened");
        };
        assert!(err.to_string().contains("ENXIO"), "{err}");
        // Setting times or permissions does not open the node.
        tokio::time::timeout(
            wait,
            sftp.set_metadata(
                "/fifo",
                FileAttributes {
                    mtime: Some(1),
                    atime: Some(1),
                    permissions: Some(0o600),
                    ..FileAttributes::empty()
                },
            ),
        )
        .await
        .expect("setstat blocked")
        .expect("setstat on a FIFO");
        assert_eq!(mtime(&fifo), UNIX_EPOCH + Duration::from_secs(1));
        // The server still answers.
        sftp.create_dir("/alive").await.expect("mkdir after");
    }

    #[cfg(unix)]
    fn nix_mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn setuid_and_setgid_are_never_set_through_the_share() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("temp dir");
        let sftp = session(root.path(), false).await;
        sftp.create("/tool").await.expect("create");
        sftp.set_metadata(
            "/tool",
            FileAttributes {
                permissions: Some(0o6755),
                ..FileAttributes::empty()
            },
        )
        .await
        .expect("chmod");
        let mode = std::fs::metadata(root.path().join("tool"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        sftp.create_dir("/d").await.expect("mkdir");
        let file = sftp.create("/d/f").await.expect("create");
        file.set_metadata(FileAttributes {
            permissions: Some(0o4777),
            ..FileAttributes::empty()
        })
        .await
        .expect("fchmod");
        let mode = std::fs::metadata(root.path().join("d/f"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7000, 0);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn names_that_are_not_utf8_are_not_listed() {
        use std::os::unix::ffi::OsStrExt;
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            root.path().join(std::ffi::OsStr::from_bytes(b"bad\xff")),
            "x",
        )
        .expect("non-UTF-8 name");
        for i in 0..300 {
            std::fs::write(root.path().join(format!("f{i}")), "").expect("file");
        }
        let sftp = session(root.path(), false).await;
        let names: Vec<String> = sftp
            .read_dir("/")
            .await
            .expect("read_dir")
            .map(|entry| entry.file_name())
            .collect();
        assert_eq!(names.len(), 300, "{names:?}");
        assert!(names.iter().all(|name| name.starts_with('f')), "{names:?}");
    }

    #[test]
    fn guest_stderr_is_kept_short_and_logged_at_a_bounded_rate() {
        let mut tail = StderrTail::new();
        let start = std::time::Instant::now();
        let logged = (0..10_000)
            .filter(|i| tail.push(&format!("line {i} é"), start))
            .count();
        assert_eq!(logged, LOG_LINES_PER_WINDOW as usize);
        assert!(tail.text.len() <= STDERR_KEPT, "{}", tail.text.len());
        assert!(tail.text.ends_with("line 9999 é\n"), "{}", tail.text);
        assert!(
            tail.push("later", start + LOG_WINDOW),
            "a new window logs again"
        );
    }

    #[tokio::test]
    async fn open_handles_are_capped() {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::write(root.path().join("f"), "x").expect("file");
        let sftp = session(root.path(), false).await;
        let mut files = Vec::new();
        for _ in 0..MAX_HANDLES {
            files.push(sftp.open("/f").await.expect("open under the cap"));
        }
        let Err(err) = sftp.open("/f").await else {
            panic!("a handle past the cap was opened");
        };
        assert!(err.to_string().contains("EMFILE"), "{err}");
        assert!(sftp.read_dir("/").await.is_err(), "opendir past the cap");
        drop(files);
    }

    #[tokio::test]
    async fn a_read_only_share_refuses_every_change() {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::write(root.path().join("keep"), "host").expect("host file");
        let sftp = session(root.path(), true).await;
        let mut text = String::new();
        sftp.open("/keep")
            .await
            .expect("reading is allowed")
            .read_to_string(&mut text)
            .await
            .expect("read");
        assert_eq!(text, "host");
        assert!(sftp.create("/new").await.is_err(), "create allowed");
        assert!(sftp.create_dir("/dir").await.is_err(), "mkdir allowed");
        assert!(sftp.remove_file("/keep").await.is_err(), "remove allowed");
        assert!(
            sftp.rename("/keep", "/moved").await.is_err(),
            "rename allowed"
        );
        let err = sftp
            .set_metadata(
                "/keep",
                FileAttributes {
                    size: Some(0),
                    ..FileAttributes::empty()
                },
            )
            .await
            .expect_err("truncate allowed");
        assert!(err.to_string().contains("read-only"), "{err}");
        assert_eq!(
            std::fs::read_to_string(root.path().join("keep")).expect("still there"),
            "host"
        );
        assert!(!root.path().join("new").exists());
    }
}
