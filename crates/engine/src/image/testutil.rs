//! Test helpers: a temporary directory and a tar builder that can also write hostile entries.

use std::fs;
use std::path::{Path, PathBuf};

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "rmachine-image-test-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Builds a tar in memory, entry by entry, in the order given.
pub struct TarBuilder {
    builder: tar::Builder<Vec<u8>>,
}

/// The mtime of entries whose time the test does not care about.
pub const MTIME: u64 = 1_700_000_000;

impl TarBuilder {
    pub fn new() -> TarBuilder {
        TarBuilder {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_size(size);
        h
    }

    fn push(&mut self, mut h: tar::Header, path: &str, data: &[u8]) {
        // Written straight into the name field: the tar crate refuses `..` and absolute
        // paths, and these tests need exactly those.
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
    }

    pub fn dir(&mut self, path: &str, mode: u32) {
        let h = Self::header(tar::EntryType::Directory, mode, 0);
        self.push(h, path, &[]);
    }

    pub fn file(&mut self, path: &str, data: &[u8]) {
        self.file_with(path, data, 0o644, 0, 0, MTIME);
    }

    pub fn file_with(
        &mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        self.push(h, path, data);
    }

    pub fn raw_file(&mut self, path: &str, data: &[u8]) {
        let h = Self::header(tar::EntryType::Regular, 0o644, data.len() as u64);
        self.push(h, path, data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name(target).unwrap();
        self.push(h, path, &[]);
    }

    pub fn hardlink(&mut self, path: &str, target: &str) {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0);
        h.set_link_name(target).unwrap();
        self.push(h, path, &[]);
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        let mut h = Self::header(tar::EntryType::Char, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.push(h, path, &[]);
    }

    pub fn fifo(&mut self, path: &str) {
        let h = Self::header(tar::EntryType::Fifo, 0o644, 0);
        self.push(h, path, &[]);
    }

    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

/// Gzip-compresses `data` (for layers and whole archives).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}
