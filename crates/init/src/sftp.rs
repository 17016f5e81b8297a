//! The `sftp` subsystem of the guest's SSH server (SFTP version 3, through `russh-sftp`).
//!
//! `rmachine scp` and OpenSSH's `scp` (which speaks SFTP since OpenSSH 9) copy files with it.
//! The session runs as root; relative paths are taken from root's home. Each open file or
//! directory gets a numbered handle; file reads and writes are positional (`pread`/`pwrite` on
//! a blocking thread), so requests the client pipelines need no seek state.

use std::collections::HashMap;
use std::fs::File as StdFile;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rmachine_sftp::{ok, std_attributes, write_all_at, Handles, Open, ENTRIES_PER_READDIR};
use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode, Version,
};
use russh_sftp::server::StatusReply;
use tokio::io::{AsyncRead, AsyncWrite};

/// The largest read answered at once (OpenSSH asks for 32 KiB at most).
const MAX_READ: u32 = 256 * 1024;

/// Serves SFTP on `stream` (an SSH channel) until the client closes it; paths that are not
/// absolute are relative to `home`.
pub async fn serve<S>(stream: S, home: PathBuf)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    russh_sftp::server::run(stream, Sftp::new(home)).await;
}

/// One SFTP session's state: its open handles.
struct Sftp {
    home: PathBuf,
    handles: Handles<Vec<File>>,
}

/// The mode bits a client may set (the session is root).
const MODE_MASK: u32 = 0o7777;

impl Sftp {
    fn new(home: PathBuf) -> Self {
        Self {
            home,
            handles: Handles::default(),
        }
    }

    fn path(&self, path: &str) -> PathBuf {
        if path.is_empty() {
            self.home.clone()
        } else {
            self.home.join(path)
        }
    }
}

/// `path` with `.` and `..` resolved without touching the file system (for paths that do not
/// exist yet, which `realpath` must still answer).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for part in path.components() {
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

/// File work on the blocking pool; a failure is answered with the system's message.
async fn blocking<T, F>(work: F) -> Result<T, StatusReply>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    rmachine_sftp::blocking(rmachine_sftp::io_status, work).await
}

impl russh_sftp::server::Handler for Sftp {
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
        let path = self.path(&filename);
        let mut options = std::fs::OpenOptions::from(pflags);
        options.mode(attrs.permissions.map_or(0o644, |mode| mode & MODE_MASK));
        let file = blocking(move || options.open(path)).await?;
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
        rmachine_sftp::read_data(rmachine_sftp::io_status, file, id, offset, len, MAX_READ).await
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        let file = self.handles.file(&handle)?;
        blocking(move || write_all_at(&file, &data, offset)).await?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let path = self.path(&path);
        let meta = blocking(move || std::fs::symlink_metadata(path)).await?;
        Ok(Attrs {
            id,
            attrs: std_attributes(meta),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let path = self.path(&path);
        let meta = blocking(move || std::fs::metadata(path)).await?;
        Ok(Attrs {
            id,
            attrs: std_attributes(meta),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let file = self.handles.file(&handle)?;
        let meta = blocking(move || file.metadata()).await?;
        Ok(Attrs {
            id,
            attrs: std_attributes(meta),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let path = self.path(&path);
        blocking(move || {
            // Read-only is enough for futimens/fchmod as root, and opens directories too.
            let file = if attrs.size.is_some() {
                std::fs::OpenOptions::new().write(true).open(&path)?
            } else {
                StdFile::open(&path)?
            };
            rmachine_sftp::apply(&file, &attrs, MODE_MASK)
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
        let file = self.handles.file(&handle)?;
        blocking(move || rmachine_sftp::apply(&file, &attrs, MODE_MASK)).await?;
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
                entries.push(File::new(name, std_attributes(meta)));
            }
            Ok(entries)
        })
        .await?;
        let handle = self.handles.add(Open::Dir(entries));
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let entries = self.handles.dir(&handle)?;
        if entries.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        let take = entries.len().min(ENTRIES_PER_READDIR);
        let files = entries.drain(..take).collect();
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
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
        let path = self.path(&path);
        let mode = attrs.permissions.map_or(0o755, |mode| mode & MODE_MASK);
        blocking(move || std::fs::DirBuilder::new().mode(mode).create(path)).await?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        let path = self.path(&path);
        blocking(move || std::fs::remove_dir(path)).await?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let path = self.path(&path);
        let real =
            blocking(move || Ok(std::fs::canonicalize(&path).unwrap_or_else(|_| lexical(&path))))
                .await?;
        let name = real.to_string_lossy().into_owned();
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
        let link = self.path(&linkpath);
        blocking(move || std::os::unix::fs::symlink(targetpath, link)).await?;
        Ok(ok(id))
    }
}

#[cfg(test)]
mod tests {
    use russh_sftp::client::SftpSession;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn session(home: &Path) -> SftpSession {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        serve(theirs, home.to_path_buf()).await;
        SftpSession::new(ours).await.expect("sftp handshake")
    }

    #[tokio::test]
    async fn files_round_trip_with_their_mode_and_mtime() {
        let home = tempfile::tempdir().expect("temp dir");
        let sftp = session(home.path()).await;
        assert_eq!(
            sftp.canonicalize(".").await.expect("realpath"),
            home.path()
                .canonicalize()
                .expect("canonical")
                .to_string_lossy()
        );
        sftp.create_dir("sub").await.expect("mkdir");
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut file = sftp.create("sub/data.bin").await.expect("create");
        file.write_all(&payload).await.expect("write");
        file.shutdown().await.expect("close");
        let attrs = FileAttributes {
            permissions: Some(0o600),
            mtime: Some(1_000_000),
            atime: Some(1_000_000),
            ..FileAttributes::empty()
        };
        sftp.set_metadata("sub/data.bin", attrs)
            .await
            .expect("setstat");

        let on_disk = std::fs::read(home.path().join("sub/data.bin")).expect("written");
        assert_eq!(on_disk, payload);
        let meta = sftp.metadata("sub/data.bin").await.expect("stat");
        assert_eq!(meta.permissions.map(|m| m & 0o777), Some(0o600));
        assert_eq!(meta.mtime, Some(1_000_000));
        assert_eq!(meta.size, Some(payload.len() as u64));

        let mut back = Vec::new();
        sftp.open("sub/data.bin")
            .await
            .expect("open")
            .read_to_end(&mut back)
            .await
            .expect("read");
        assert_eq!(back, payload);

        let names: Vec<String> = sftp
            .read_dir("sub")
            .await
            .expect("readdir")
            .map(|entry| entry.file_name())
            .collect();
        assert_eq!(names, ["data.bin"]);
        assert!(sftp.metadata("sub").await.expect("stat dir").is_dir());
    }

    #[tokio::test]
    async fn missing_files_are_reported_as_such() {
        let home = tempfile::tempdir().expect("temp dir");
        let sftp = session(home.path()).await;
        let err = sftp.metadata("nope").await.expect_err("no such file");
        assert!(err.to_string().contains("No such file"), "{err}");
        assert_eq!(
            sftp.canonicalize("a/../b").await.expect("realpath"),
            format!(
                "{}/b",
                home.path().canonicalize().expect("canonical").display()
            )
        );
    }
}
