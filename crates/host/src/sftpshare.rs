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
//! climbs above it (clamped as a chroot would). A read-only share refuses every request that
//! would change something, whatever the guest's mount flags say.

use std::collections::HashMap;
use std::fs::{File as StdFile, FileTimes, Metadata};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rmachine_driver::Share;
use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode, Version,
};
use russh_sftp::server::StatusReply;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::ssh::SshSession;

/// Directory entries sent per `READDIR` answer, to stay well under the packet size limit.
const ENTRIES_PER_READDIR: usize = 128;

/// The largest read answered at once.
const MAX_READ: u32 = 256 * 1024;

/// Serves SFTP for the folder `root` on `stream` until the guest closes it.
pub async fn serve<S>(stream: S, root: PathBuf, read_only: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let server = ShareServer {
        root,
        read_only,
        handles: HashMap::new(),
        next_handle: 0,
    };
    russh_sftp::server::run(stream, server).await;
}

enum Open {
    File(Arc<StdFile>),
    Dir(Vec<File>),
}

/// One share's SFTP session: its folder, its mode and its open handles.
struct ShareServer {
    root: PathBuf,
    read_only: bool,
    handles: HashMap<String, Open>,
    next_handle: u64,
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".to_owned(),
        language_tag: "en-US".to_owned(),
    }
}

/// The Linux errno name for what went wrong, which the guest's filesystem returns: SFTP v3's
/// few status codes would turn "directory not empty" or "file exists" into `EIO`.
fn errno_name(kind: std::io::ErrorKind) -> Option<&'static str> {
    use std::io::ErrorKind as K;
    Some(match kind {
        K::NotFound => "ENOENT",
        K::PermissionDenied => "EACCES",
        K::AlreadyExists => "EEXIST",
        K::DirectoryNotEmpty => "ENOTEMPTY",
        K::NotADirectory => "ENOTDIR",
        K::IsADirectory => "EISDIR",
        K::InvalidInput => "EINVAL",
        K::StorageFull => "ENOSPC",
        K::ReadOnlyFilesystem => "EROFS",
        K::CrossesDevices => "EXDEV",
        K::FileTooLarge => "EFBIG",
        K::InvalidFilename => "ENAMETOOLONG",
        K::ResourceBusy => "EBUSY",
        _ => return None,
    })
}

/// The SFTP status for a failed file operation: the errno's name, then the system's message.
fn io_status(err: &std::io::Error) -> StatusReply {
    let code = match err.kind() {
        std::io::ErrorKind::NotFound => StatusCode::NoSuchFile,
        std::io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    match errno_name(err.kind()) {
        Some(name) => code.with_message(format!("{name}: {err}")),
        None => code.with_message(err.to_string()),
    }
}

fn read_only_refusal() -> StatusReply {
    StatusCode::PermissionDenied.with_message("EROFS: the share is read-only")
}

fn attributes(meta: &Metadata) -> FileAttributes {
    #[allow(unused_mut)]
    let mut attrs = FileAttributes::from(meta);
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // `From<&Metadata>` marks everything that is not a directory as a regular file; the
        // mode's type bits tell symlinks apart, which the guest's filesystem needs.
        attrs.permissions = Some(meta.mode());
    }
    #[cfg(not(unix))]
    if meta.file_type().is_symlink() {
        attrs.permissions = Some(0o120_777);
    }
    attrs
}

fn times(attrs: &FileAttributes) -> Option<FileTimes> {
    let at = |secs: u32| UNIX_EPOCH + Duration::from_secs(secs.into());
    match (attrs.atime, attrs.mtime) {
        (None, None) => None,
        (atime, mtime) => {
            let mut times = FileTimes::new();
            if let Some(atime) = atime {
                times = times.set_accessed(at(atime));
            }
            if let Some(mtime) = mtime {
                times = times.set_modified(at(mtime));
            }
            Some(times)
        }
    }
}

/// Applies what SETSTAT/FSETSTAT may change (size, mode, times). Owners are left alone: the
/// files belong to the user who runs the agent, and the guest's ids mean nothing here.
fn apply(file: &StdFile, attrs: &FileAttributes) -> std::io::Result<()> {
    if let Some(size) = attrs.size {
        file.set_len(size)?;
    }
    if let Some(mode) = attrs.permissions {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
        }
        #[cfg(not(unix))]
        {
            let mut permissions = file.metadata()?.permissions();
            permissions.set_readonly(mode & 0o222 == 0);
            file.set_permissions(permissions)?;
        }
    }
    if let Some(times) = times(attrs) {
        file.set_times(times)?;
    }
    Ok(())
}

/// `path` (as the guest names it, `/` being the share) resolved inside the share without
/// touching the file system: `.` is dropped and `..` stops at the share's top.
fn inside(path: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for part in Path::new(path).components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn read_at(file: &StdFile, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        std::os::windows::fs::FileExt::seek_read(file, buf, offset)
    }
}

fn write_all_at(file: &StdFile, mut data: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !data.is_empty() {
        #[cfg(unix)]
        let n = std::os::unix::fs::FileExt::write_at(file, data, offset)?;
        #[cfg(windows)]
        let n = std::os::windows::fs::FileExt::seek_write(file, data, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
        offset += n as u64;
    }
    Ok(())
}

impl ShareServer {
    fn path(&self, path: &str) -> PathBuf {
        self.root.join(inside(path))
    }

    fn writable(&self) -> Result<(), StatusReply> {
        if self.read_only {
            Err(read_only_refusal())
        } else {
            Ok(())
        }
    }

    fn add(&mut self, open: Open) -> String {
        self.next_handle += 1;
        let handle = self.next_handle.to_string();
        self.handles.insert(handle.clone(), open);
        handle
    }

    fn file(&self, handle: &str) -> Result<Arc<StdFile>, StatusReply> {
        match self.handles.get(handle) {
            Some(Open::File(file)) => Ok(file.clone()),
            Some(Open::Dir(_)) => Err(StatusCode::Failure.with_message("handle is a directory")),
            None => Err(StatusCode::Failure.with_message(format!("no handle {handle}"))),
        }
    }
}

async fn blocking<T, F>(work: F) -> Result<T, StatusReply>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|e| io_status(&e)),
        Err(join) => Err(StatusCode::Failure.with_message(join.to_string())),
    }
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
        let path = self.path(&filename);
        #[allow(unused_mut)]
        let mut options = std::fs::OpenOptions::from(pflags);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(attrs.permissions.map_or(0o644, |mode| mode & 0o7777));
        }
        #[cfg(not(unix))]
        let _ = attrs;
        let file = blocking(move || options.open(path)).await?;
        let handle = self.add(Open::File(Arc::new(file)));
        Ok(Handle { id, handle })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(_) => Ok(ok(id)),
            None => Err(StatusCode::Failure.with_message(format!("no handle {handle}"))),
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let file = self.file(&handle)?;
        let data = blocking(move || {
            let mut buf = vec![0u8; len.min(MAX_READ) as usize];
            let n = read_at(&file, &mut buf, offset)?;
            buf.truncate(n);
            Ok(buf)
        })
        .await?;
        if data.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        self.writable()?;
        let file = self.file(&handle)?;
        blocking(move || write_all_at(&file, &data, offset)).await?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let path = self.path(&path);
        let meta = blocking(move || std::fs::symlink_metadata(path)).await?;
        Ok(Attrs {
            id,
            attrs: attributes(&meta),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let path = self.path(&path);
        let meta = blocking(move || std::fs::metadata(path)).await?;
        Ok(Attrs {
            id,
            attrs: attributes(&meta),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let file = self.file(&handle)?;
        let meta = blocking(move || file.metadata()).await?;
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
        let path = self.path(&path);
        blocking(move || {
            let file = if attrs.size.is_some() {
                std::fs::OpenOptions::new().write(true).open(&path)?
            } else {
                StdFile::open(&path)?
            };
            apply(&file, &attrs)
        })
        .await?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        self.writable()?;
        let file = self.file(&handle)?;
        blocking(move || apply(&file, &attrs)).await?;
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let path = self.path(&path);
        let entries = blocking(move || {
            let mut entries = Vec::new();
            for entry in std::fs::read_dir(&path)? {
                let entry = entry?;
                // An entry removed while listing is simply not listed.
                let Ok(meta) = entry.path().symlink_metadata() else {
                    continue;
                };
                let name = entry.file_name().to_string_lossy().into_owned();
                entries.push(File::new(name, attributes(&meta)));
            }
            Ok(entries)
        })
        .await?;
        let handle = self.add(Open::Dir(entries));
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        match self.handles.get_mut(&handle) {
            Some(Open::Dir(entries)) if entries.is_empty() => Err(StatusCode::Eof.into()),
            Some(Open::Dir(entries)) => {
                let take = entries.len().min(ENTRIES_PER_READDIR);
                let files = entries.drain(..take).collect();
                Ok(Name { id, files })
            }
            Some(Open::File(_)) => Err(StatusCode::Failure.with_message("handle is a file")),
            None => Err(StatusCode::Failure.with_message(format!("no handle {handle}"))),
        }
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        self.writable()?;
        let path = self.path(&filename);
        blocking(move || std::fs::remove_file(path)).await?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        self.writable()?;
        let path = self.path(&path);
        let mode = attrs.permissions.map_or(0o755, |mode| mode & 0o7777);
        blocking(move || {
            // Only Unix sets a mode on it.
            #[cfg_attr(not(unix), allow(unused_mut))]
            let mut builder = std::fs::DirBuilder::new();
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, mode);
            #[cfg(not(unix))]
            let _ = mode;
            builder.create(path)
        })
        .await?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        self.writable()?;
        let path = self.path(&path);
        blocking(move || std::fs::remove_dir(path)).await?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        // Answered in the guest's terms: the path inside the share, from its top.
        let name = format!("/{}", inside(&path).to_string_lossy().replace('\\', "/"));
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
        let (from, to) = (self.path(&oldpath), self.path(&newpath));
        blocking(move || std::fs::rename(from, to)).await?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let path = self.path(&path);
        let target = blocking(move || std::fs::read_link(path)).await?;
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
        let link = self.path(&linkpath);
        blocking(move || {
            #[cfg(unix)]
            {
                std::os::unix::fs::symlink(targetpath, link)
            }
            #[cfg(windows)]
            {
                std::os::windows::fs::symlink_file(targetpath, link)
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
    let mut stderr = String::new();
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
                        } else if !line.trim().is_empty() {
                            tracing::warn!(share = %share.guest_path, "guest: {}", line.trim());
                            stderr.push_str(line.trim());
                            stderr.push('\n');
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
    let reason = match (stderr.trim(), exit_status) {
        ("", Some(code)) => format!("the guest's sftp-mount exited with status {code}"),
        ("", None) => "the SSH channel to the machine closed".to_owned(),
        (text, _) => text.to_owned(),
    };
    let _ = states.send(state(false, Some(reason)));
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
