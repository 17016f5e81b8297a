//! Fast-boot forms of a guest image, made on the host once per image: the kernel ELF inside
//! the bzImage and the uncompressed initramfs. QEMU's x86_64 `microvm` loads them as they are,
//! so the guest does not spend seconds of emulated time unpacking either; the image itself
//! ships only the compressed files (a small download). They live in `<image>/derived/`,
//! written to a temporary name and renamed, so an existing file is complete and is reused.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::{GuestImage, ImageError};

/// The subdirectory of an image directory holding the derived files.
pub const DERIVED_DIR: &str = "derived";
/// The kernel ELF extracted from the bzImage, named `vmlinux-v<format>-<sum>` after its input.
const KERNEL_ELF: &str = "vmlinux";
/// The version of what [`extract_kernel`] writes, in the derived kernel's name: a change to
/// the bytes it writes (2: PT_LOAD zero tails trimmed) gets a new name, so a cache derived by
/// an older host is not reused. Older files are left alone: a machine's config may still name
/// one, and it keeps booting it.
const KERNEL_ELF_FORMAT: u32 = 2;
/// The initramfs, decompressed, named `initrd-<sum>.cpio` after its input.
const INITRD_CPIO: &str = "initrd";

/// The name of the file derived from the image's `input` by `kind`: it carries the start of
/// the input's manifest sum, so a derived file is only ever reused for the bytes it came
/// from (an entry written again with other content never boots a stale kernel).
fn derived_name(image: &GuestImage, kind: &str, input: &str) -> String {
    let sum = image.manifest.sha256.get(input).map_or("", |s| s.as_str());
    let sum = sum.get(..16).unwrap_or(sum).to_ascii_lowercase();
    match kind {
        INITRD_CPIO => format!("{kind}-{sum}.cpio"),
        KERNEL_ELF => format!("{kind}-v{KERNEL_ELF_FORMAT}-{sum}"),
        _ => format!("{kind}-{sum}"),
    }
}

const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point QEMU's microvm enters an ELF kernel at.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 0x12;
/// The largest kernel ELF unpacked: an image (from any `--guest-image` URL, whose manifest
/// sums come from the same place) must not fill memory with a compression bomb.
const MAX_KERNEL_ELF: u64 = 256 << 20;
/// The largest initramfs unpacked, whatever its compressed size.
const MAX_INITRD: u64 = 2 << 30;
/// The largest initramfs unpacked, as a multiple of its compressed size (cpio archives of
/// binaries unpack to 3 to 5 times their zstd size), when above [`MIN_INITRD_BOUND`].
const MAX_INITRD_RATIO: u64 = 16;
/// An initramfs may always unpack to this much, whatever its ratio.
const MIN_INITRD_BOUND: u64 = 64 << 20;

/// The derived files of one image; `None` where the image's own file is booted instead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Derived {
    /// The uncompressed kernel ELF with a PVH entry note.
    pub kernel_elf: Option<PathBuf>,
    /// The uncompressed initramfs.
    pub initrd: Option<PathBuf>,
}

fn invalid(image: &GuestImage, path: &Path, problem: impl Into<String>) -> ImageError {
    ImageError::DeriveInvalid {
        version: image.manifest.version.clone(),
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn failed<'a>(
    image: &'a GuestImage,
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Derive {
        version: image.manifest.version.clone(),
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Makes (or reuses) the fast-boot files of an x86_64 `image`. Files that cannot help (a
/// kernel without a PVH entry, an initramfs that is not compressed) are left out; a payload
/// that does not unpack is an error naming the image and the file, and leaves nothing behind.
pub fn derive(image: &GuestImage) -> Result<Derived, ImageError> {
    let dir = image.dir.join(DERIVED_DIR);
    let mut derived = Derived::default();
    if image.manifest.kernel_elf.is_none() {
        let bzimage = image.dir.join(&image.manifest.kernel);
        let name = derived_name(image, KERNEL_ELF, &image.manifest.kernel);
        derived.kernel_elf = cached_or(image, &dir, &name, |out| {
            extract_kernel(image, &bzimage, out)
        })?;
    }
    let initrd = image.dir.join(&image.manifest.initrd);
    let name = derived_name(image, INITRD_CPIO, &image.manifest.initrd);
    derived.initrd = cached_or(image, &dir, &name, |out| {
        decompress_initrd(image, &initrd, out)
    })?;
    if derived == Derived::default() {
        let _ = fs::remove_dir(&dir);
    }
    Ok(derived)
}

/// `dir/name` if it exists; else runs `make` on a temporary file there and renames it into
/// place when `make` says it is useful (`Ok(true)`), removing it otherwise.
fn cached_or(
    image: &GuestImage,
    dir: &Path,
    name: &str,
    make: impl FnOnce(&mut fs::File) -> Result<bool, ImageError>,
) -> Result<Option<PathBuf>, ImageError> {
    let path = dir.join(name);
    if path.is_file() {
        return Ok(Some(path));
    }
    fs::create_dir_all(dir).map_err(failed(image, "create", dir))?;
    // A unique name: threads of one process (`upgrade a b`) derive the same image at once,
    // and a shared name let one truncate the file the other was about to rename into place.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp-"))
        .tempfile_in(dir)
        .map_err(failed(image, "write", dir))?;
    let result = (|| {
        if !make(tmp.as_file_mut())? {
            return Ok(None);
        }
        tmp.as_file()
            .sync_all()
            .map_err(failed(image, "write", tmp.path()))?;
        // Never replaces: a file another derivation renamed first holds the same bytes.
        match tmp.persist_noclobber(&path) {
            Ok(_) => {}
            Err(e) if path.is_file() => drop(e),
            Err(e) => return Err(failed(image, "write", &path)(e.error)),
        }
        // The rename itself must survive a crash, or a later boot finds no file.
        #[cfg(unix)]
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(failed(image, "write", dir))?;
        Ok(Some(path))
    })();
    if !matches!(result, Ok(Some(_))) {
        // Only removed when empty: another file already derived stays.
        let _ = fs::remove_dir(dir);
    }
    result
}

/// Unpacks a zstd initramfs into `out`; `false` for one that is not zstd (booted as it is).
fn decompress_initrd(
    image: &GuestImage,
    path: &Path,
    out: &mut fs::File,
) -> Result<bool, ImageError> {
    let mut file = fs::File::open(path).map_err(failed(image, "read", path))?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(failed(image, "read", path))?;
    if magic[..n] != *ZSTD_MAGIC {
        return Ok(false);
    }
    let file = fs::File::open(path).map_err(failed(image, "read", path))?;
    let compressed = file.metadata().map_err(failed(image, "read", path))?.len();
    let limit = MAX_INITRD.min(
        compressed
            .saturating_mul(MAX_INITRD_RATIO)
            .max(MIN_INITRD_BOUND),
    );
    let decoder = ruzstd::decoding::StreamingDecoder::new(io::BufReader::new(file))
        .map_err(|e| invalid(image, path, format!("not a zstd initramfs: {e}")))?;
    let mut out = io::BufWriter::new(out);
    let written = io::copy(&mut decoder.take(limit.saturating_add(1)), &mut out)
        .and_then(|n| out.flush().map(|()| n))
        .map_err(failed(image, "unpack", path))?;
    if written > limit {
        return Err(invalid(
            image,
            path,
            format!("the initramfs unpacks to more than {limit} bytes"),
        ));
    }
    Ok(true)
}

/// Extracts the kernel ELF from the bzImage at `path` into `out`; `false` when the bzImage
/// holds none QEMU can enter (not a bzImage, a compression other than xz, gzip or zstd, no
/// PVH entry note): the bzImage is booted then.
fn extract_kernel(image: &GuestImage, path: &Path, out: &mut fs::File) -> Result<bool, ImageError> {
    let bzimage = fs::read(path).map_err(failed(image, "read", path))?;
    let Some(payload) = payload(&bzimage) else {
        tracing::warn!(path = %path.display(), "not a bzImage with a payload; booting it as is");
        return Ok(false);
    };
    let mut elf = Vec::new();
    let limit = MAX_KERNEL_ELF + 1;
    let unpacked = if payload.starts_with(XZ_MAGIC) {
        lzma_rust2::XzReader::new(payload, false)
            .take(limit)
            .read_to_end(&mut elf)
    } else if payload.starts_with(GZIP_MAGIC) {
        flate2::read::GzDecoder::new(payload)
            .take(limit)
            .read_to_end(&mut elf)
    } else if payload.starts_with(ZSTD_MAGIC) {
        ruzstd::decoding::StreamingDecoder::new(payload)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
            .and_then(|d| d.take(limit).read_to_end(&mut elf))
    } else {
        tracing::warn!(path = %path.display(), "kernel payload compression not xz, gzip or zstd; booting the bzImage");
        return Ok(false);
    };
    unpacked.map_err(failed(image, "unpack the kernel payload of", path))?;
    if elf.len() as u64 > MAX_KERNEL_ELF {
        return Err(invalid(
            image,
            path,
            format!("the kernel payload unpacks to more than {MAX_KERNEL_ELF} bytes"),
        ));
    }
    if !has_pvh_entry(&elf) {
        tracing::warn!(path = %path.display(), "the unpacked kernel is no ELF with a PVH entry note; booting the bzImage");
        return Ok(false);
    }
    let trimmed = trim_zero_tails(&mut elf);
    tracing::debug!(path = %path.display(), ?trimmed, "zero bytes left to the loader");
    let mut out = io::BufWriter::new(out);
    out.write_all(&elf)
        .and_then(|()| out.flush())
        .map_err(failed(image, "write the kernel of", path))?;
    Ok(true)
}

/// Leaves the zero bytes that end each PT_LOAD segment to the loader: `p_filesz` shrinks to
/// the segment's last non-zero byte and `p_memsz` stays, so the loader zero-fills them as it
/// does a `.bss`. The x86_64 kernel's last segment ends with `.bss`, `.brk` and
/// `.init.scratch` stored as zeros (23 MB of Debian's 63 MB ELF); QEMU maps the ELF and keeps
/// every byte it loaded from it resident for the VM's life (to load it again at a reset), so
/// those zeros cost each running machine that much memory. Returns the bytes no longer loaded
/// from the file; `None` (and `elf` unchanged) for program headers that do not parse.
fn trim_zero_tails(elf: &mut [u8]) -> Option<u64> {
    const PT_LOAD: u32 = 1;
    let phoff = usize::try_from(u64_at(elf, 0x20)?).ok()?;
    let phentsize = usize::from(u16_at(elf, 0x36)?);
    let phnum = usize::from(u16_at(elf, 0x38)?);
    let mut changes = Vec::new();
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(elf, ph)? != PT_LOAD {
            continue;
        }
        let offset = usize::try_from(u64_at(elf, ph.checked_add(8)?)?).ok()?;
        let filesz = usize::try_from(u64_at(elf, ph.checked_add(32)?)?).ok()?;
        let memsz = usize::try_from(u64_at(elf, ph.checked_add(40)?)?).ok()?;
        if memsz < filesz {
            return None;
        }
        let data = elf.get(offset..offset.checked_add(filesz)?)?;
        // At least one byte stays: QEMU adds a segment with no file bytes as a ROM without
        // data, which its reset does not zero again (a guest rebooting after a panic would
        // find what the last boot left there).
        let kept = data
            .iter()
            .rposition(|b| *b != 0)
            .map_or(1, |last| last + 1)
            .min(filesz);
        if kept < filesz {
            changes.push((ph.checked_add(32)?, kept, filesz - kept));
        }
    }
    let mut trimmed = 0u64;
    for (at, kept, dropped) in changes {
        elf.get_mut(at..at.checked_add(8)?)?
            .copy_from_slice(&u64::try_from(kept).ok()?.to_le_bytes());
        trimmed = trimmed.saturating_add(u64::try_from(dropped).ok()?);
    }
    Some(trimmed)
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        bytes.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The compressed kernel inside a bzImage, located by its setup header (the kernel's
/// Documentation/arch/x86/boot.rst): it starts `payload_offset` bytes into the protected-mode
/// code, which follows the `setup_sects + 1` 512-byte sectors of real-mode setup.
fn payload(bzimage: &[u8]) -> Option<&[u8]> {
    if bzimage.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let setup_sects = match *bzimage.get(0x1f1)? {
        // Old kernels wrote 0 for 4.
        0 => 4,
        n => usize::from(n),
    };
    let offset = usize::try_from(u32_at(bzimage, 0x248)?).ok()?;
    let length = usize::try_from(u32_at(bzimage, 0x24c)?).ok()?;
    let start = ((setup_sects + 1) * 512).checked_add(offset)?;
    let payload = bzimage.get(start..start.checked_add(length)?)?;
    (!payload.is_empty()).then_some(payload)
}

/// Whether `elf` is a little-endian ELF64 with a `Xen` note of type PHYS32_ENTRY in one of its
/// PT_NOTE segments.
fn has_pvh_entry(elf: &[u8]) -> bool {
    pvh_entry(elf).unwrap_or(false)
}

fn pvh_entry(elf: &[u8]) -> Option<bool> {
    // ELFCLASS64, ELFDATA2LSB.
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return Some(false);
    }
    let phoff = usize::try_from(u64_at(elf, 0x20)?).ok()?;
    let phentsize = usize::from(u16_at(elf, 0x36)?);
    let phnum = usize::from(u16_at(elf, 0x38)?);
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        const PT_NOTE: u32 = 4;
        if u32_at(elf, ph)? != PT_NOTE {
            continue;
        }
        let start = usize::try_from(u64_at(elf, ph.checked_add(8)?)?).ok()?;
        let size = usize::try_from(u64_at(elf, ph.checked_add(32)?)?).ok()?;
        let notes = elf.get(start..start.checked_add(size)?)?;
        let mut at = 0;
        while at + 12 <= notes.len() {
            let namesz = usize::try_from(u32_at(notes, at)?).ok()?;
            let descsz = usize::try_from(u32_at(notes, at + 4)?).ok()?;
            let kind = u32_at(notes, at + 8)?;
            let name = notes.get(at + 12..(at + 12).checked_add(namesz)?)?;
            if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY {
                return Some(true);
            }
            at = (at + 12)
                .checked_add(namesz.checked_next_multiple_of(4)?)?
                .checked_add(descsz.checked_next_multiple_of(4)?)?;
        }
    }
    Some(false)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::image::{open, tests::fake_image, GuestManifest, MANIFEST};
    use sha2::{Digest, Sha256};

    /// A minimal ELF64 with one PT_NOTE segment holding `notes`.
    fn elf_with_notes(notes: &[u8]) -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&4u32.to_le_bytes());
        elf[64 + 8..64 + 16].copy_from_slice(&120u64.to_le_bytes());
        elf[64 + 32..64 + 40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        elf.extend_from_slice(notes);
        // Something to compress, as a kernel would have.
        elf.extend((0..50_000u32).map(|i| (i % 251) as u8));
        elf
    }

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend_from_slice(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    fn pvh_elf() -> Vec<u8> {
        let mut notes = note(b"GNU\0", 3, b"build-id");
        notes.extend(note(
            b"Xen\0",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &0x100_0000u32.to_le_bytes(),
        ));
        elf_with_notes(&notes)
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        // As the kernel's scripts/xz_wrap.sh: x86 BCJ filter, then LZMA2, CRC32 check.
        let mut options = lzma_rust2::XzOptions::with_preset(1);
        options.prepend_pre_filter(lzma_rust2::FilterType::BcjX86, 0);
        options.set_check_sum_type(lzma_rust2::CheckType::Crc32);
        let mut w = lzma_rust2::XzWriter::new(Vec::new(), options).expect("xz writer");
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    /// A bzImage as the kernel's build lays one out: 2 setup sectors plus the boot sector, a
    /// setup header, then protected-mode code whose payload (compressed kernel followed by its
    /// 4-byte size, as scripts/Makefile.lib's size_append writes it) starts 0x300 bytes in.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let setup_sects = 2u8;
        let offset = 0x300u32;
        let mut payload = payload.to_vec();
        payload.extend_from_slice(&50_000u32.to_le_bytes());
        let mut image = vec![0u8; (usize::from(setup_sects) + 1) * 512 + offset as usize];
        image[0x1f1] = setup_sects;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x248..0x24c].copy_from_slice(&offset.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(&payload);
        image.extend_from_slice(b"trailing code");
        image
    }

    /// Replaces the fake image's kernel and initramfs with `kernel` and `initrd` and fixes
    /// the manifest's sums.
    fn image_with(dir: &Path, kernel: &[u8], initrd: &[u8]) -> GuestImage {
        fake_image(dir, "1.0-derive");
        let path = dir.join(MANIFEST);
        let mut manifest: GuestManifest =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        for (name, data) in [(&manifest.kernel, kernel), (&manifest.initrd, initrd)] {
            fs::write(dir.join(name), data).unwrap();
        }
        manifest
            .sha256
            .insert(manifest.kernel.clone(), hex::encode(Sha256::digest(kernel)));
        manifest
            .sha256
            .insert(manifest.initrd.clone(), hex::encode(Sha256::digest(initrd)));
        fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        open(dir).unwrap()
    }

    /// Writes an image (version `1.0-derive`) whose kernel and initramfs derive into
    /// `dir/derived/`.
    pub(crate) fn derivable_image(dir: &Path) -> GuestImage {
        let initrd = ruzstd::encoding::compress_to_vec(
            &cpio()[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        image_with(dir, &bzimage(&xz(&pvh_elf())), &initrd)
    }

    fn cpio() -> Vec<u8> {
        let mut data = b"070701".to_vec();
        data.extend((0..100_000u32).map(|i| (i % 13) as u8));
        data
    }

    #[test]
    fn derives_the_kernel_elf_and_initramfs_once_and_reuses_them() {
        let tmp = tempfile::tempdir().unwrap();
        let elf = pvh_elf();
        let initrd = ruzstd::encoding::compress_to_vec(
            &cpio()[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let image = image_with(tmp.path(), &bzimage(&xz(&elf)), &initrd);

        let derived = derive(&image).unwrap();
        let ksum = &image.manifest.sha256[&image.manifest.kernel][..16];
        let isum = &image.manifest.sha256[&image.manifest.initrd][..16];
        let kernel = tmp.path().join(format!("derived/vmlinux-v2-{ksum}"));
        let cpio_path = tmp.path().join(format!("derived/initrd-{isum}.cpio"));
        assert_eq!(derived.kernel_elf.as_deref(), Some(kernel.as_path()));
        assert_eq!(derived.initrd.as_deref(), Some(cpio_path.as_path()));
        assert_eq!(fs::read(&kernel).unwrap(), elf);
        assert_eq!(fs::read(&cpio_path).unwrap(), cpio());
        let mut names: Vec<_> = fs::read_dir(tmp.path().join("derived"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [format!("initrd-{isum}.cpio"), format!("vmlinux-v2-{ksum}")]
        );

        // A second use reuses the files: one marked as changed is returned unchanged.
        fs::write(&kernel, b"reused").unwrap();
        assert_eq!(derive(&image).unwrap(), derived);
        assert_eq!(fs::read(&kernel).unwrap(), b"reused");

        // The entry written again with another kernel: its own ELF, not the old one.
        let mut other = elf.clone();
        other.extend_from_slice(b"another build");
        let image = image_with(tmp.path(), &bzimage(&xz(&other)), &initrd);
        let again = derive(&image).unwrap();
        assert_ne!(again.kernel_elf, derived.kernel_elf);
        assert_eq!(fs::read(again.kernel_elf.unwrap()).unwrap(), other);
        assert_eq!(again.initrd, derived.initrd);
    }

    #[test]
    fn a_kernel_derived_by_an_older_host_is_not_reused_and_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let image = derivable_image(tmp.path());
        let ksum = &image.manifest.sha256[&image.manifest.kernel][..16];
        // What a host before the zero-tail trim wrote (a machine's config may name it).
        let old = tmp.path().join(format!("derived/vmlinux-{ksum}"));
        fs::create_dir_all(old.parent().unwrap()).unwrap();
        fs::write(&old, b"untrimmed").unwrap();

        let kernel = derive(&image).unwrap().kernel_elf.unwrap();
        assert_ne!(kernel, old);
        assert_eq!(fs::read(&kernel).unwrap(), pvh_elf());
        assert_eq!(fs::read(&old).unwrap(), b"untrimmed");
    }

    #[test]
    fn the_zero_tail_of_a_load_segment_is_left_to_the_loader() {
        // ELF64 with a PT_NOTE (the PVH entry), a PT_LOAD of 5000 bytes of code (zeros
        // inside it too) then 3000 zero bytes, as the kernel's `.bss` and `.init.scratch`,
        // and a PT_LOAD of zeros only.
        let notes = note(
            b"Xen\0",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &0x100_0000u32.to_le_bytes(),
        );
        let load_ph = 64 + 56;
        let zero_ph = 64 + 2 * 56;
        let mut elf = vec![0u8; 64 + 3 * 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&3u16.to_le_bytes());
        elf[64..68].copy_from_slice(&4u32.to_le_bytes());
        let notes_at = elf.len() as u64;
        elf[64 + 8..64 + 16].copy_from_slice(&notes_at.to_le_bytes());
        elf[64 + 32..64 + 40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        elf.extend_from_slice(&notes);
        let data_at = 4096;
        elf.resize(data_at, 0);
        elf.extend((0..5000u32).map(|i| if i % 7 == 0 { 0 } else { (i % 251) as u8 + 1 }));
        elf.extend(std::iter::repeat_n(0u8, 3000));
        elf[load_ph..load_ph + 4].copy_from_slice(&1u32.to_le_bytes());
        elf[load_ph + 8..load_ph + 16].copy_from_slice(&(data_at as u64).to_le_bytes());
        elf[load_ph + 32..load_ph + 40].copy_from_slice(&8000u64.to_le_bytes());
        elf[load_ph + 40..load_ph + 48].copy_from_slice(&9000u64.to_le_bytes());
        let zeros_at = elf.len() as u64;
        elf.extend(std::iter::repeat_n(0u8, 400));
        elf[zero_ph..zero_ph + 4].copy_from_slice(&1u32.to_le_bytes());
        elf[zero_ph + 8..zero_ph + 16].copy_from_slice(&zeros_at.to_le_bytes());
        elf[zero_ph + 32..zero_ph + 40].copy_from_slice(&400u64.to_le_bytes());
        elf[zero_ph + 40..zero_ph + 48].copy_from_slice(&800u64.to_le_bytes());

        let tmp = tempfile::tempdir().unwrap();
        let image = image_with(tmp.path(), &bzimage(&xz(&elf)), &cpio());
        let derived = fs::read(derive(&image).unwrap().kernel_elf.unwrap()).unwrap();
        assert_eq!(u64_at(&derived, load_ph + 32), Some(5000), "p_filesz");
        assert_eq!(u64_at(&derived, load_ph + 40), Some(9000), "p_memsz");
        // Never down to no file bytes (QEMU would add a ROM without data, not zeroed again
        // at a reset).
        assert_eq!(u64_at(&derived, zero_ph + 32), Some(1), "p_filesz of zeros");
        assert_eq!(
            u64_at(&derived, zero_ph + 40),
            Some(800),
            "p_memsz of zeros"
        );
        // Nothing else changed: what a loader puts in memory is the same.
        let mut restored = derived.clone();
        restored[load_ph + 32..load_ph + 40].copy_from_slice(&8000u64.to_le_bytes());
        restored[zero_ph + 32..zero_ph + 40].copy_from_slice(&400u64.to_le_bytes());
        assert_eq!(restored, elf);
    }

    #[test]
    fn gzip_and_zstd_payloads_unpack_too() {
        let elf = pvh_elf();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&elf).unwrap();
        let zst = ruzstd::encoding::compress_to_vec(
            &elf[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        for payload in [gz.finish().unwrap(), zst] {
            let tmp = tempfile::tempdir().unwrap();
            let image = image_with(tmp.path(), &bzimage(&payload), &cpio());
            let derived = derive(&image).unwrap();
            assert_eq!(fs::read(derived.kernel_elf.unwrap()).unwrap(), elf);
            // An initramfs that is not compressed is booted as it is.
            assert_eq!(derived.initrd, None);
        }
    }

    #[test]
    fn a_corrupt_payload_is_a_clear_error_and_nothing_is_cached() {
        let tmp = tempfile::tempdir().unwrap();
        let mut payload = xz(&pvh_elf());
        let middle = payload.len() / 2;
        payload[middle] ^= 0xff;
        payload[middle + 1] ^= 0xff;
        let image = image_with(tmp.path(), &bzimage(&payload), &cpio());
        let err = derive(&image).unwrap_err();
        let kernel = tmp.path().join(&image.manifest.kernel);
        assert_eq!(
            err.to_string(),
            format!(
                "guest image 1.0-derive: cannot unpack the kernel payload of {}; nothing was cached",
                kernel.display()
            )
        );
        assert!(!tmp.path().join(DERIVED_DIR).exists());
    }

    #[test]
    fn a_derive_error_boots_the_images_own_files() {
        let tmp = tempfile::tempdir().unwrap();
        let mut payload = xz(&pvh_elf());
        let middle = payload.len() / 2;
        payload[middle] ^= 0xff;
        payload[middle + 1] ^= 0xff;
        // The manifest names the architecture as Debian does: still x86_64, still derived.
        let image = image_with(tmp.path(), &bzimage(&payload), &cpio());
        let mut image = image;
        image.manifest.arch = "amd64".into();
        assert!(image.fast_boot_image().is_err());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(image.boot_files()), image.boot_image());
    }

    #[test]
    fn a_kernel_without_a_pvh_entry_boots_as_the_bzimage() {
        let tmp = tempfile::tempdir().unwrap();
        let elf = elf_with_notes(&note(b"GNU\0", 3, b"build-id"));
        let image = image_with(tmp.path(), &bzimage(&xz(&elf)), &cpio());
        assert_eq!(derive(&image).unwrap(), Derived::default());
        assert!(!tmp.path().join(DERIVED_DIR).exists());
    }

    #[test]
    fn an_initramfs_unpacking_past_its_bound_is_refused_and_nothing_is_cached() {
        let tmp = tempfile::tempdir().unwrap();
        // A zstd frame of RLE blocks: 600 × 128 KiB of zeros (75 MiB, past the 64 MiB floor)
        // in under 3 KiB (far past 16 times that).
        let mut bomb = ZSTD_MAGIC.to_vec();
        // Frame header: no single segment, no checksum; a 128 KiB window.
        bomb.extend_from_slice(&[0x00, 7 << 3]);
        for i in 0..600u32 {
            let last = u32::from(i == 599);
            let header = (128 << 10) << 3 | 1 << 1 | last;
            bomb.extend_from_slice(&header.to_le_bytes()[..3]);
            bomb.push(0);
        }
        let elf = elf_with_notes(&note(b"GNU\0", 3, b"build-id"));
        let image = image_with(tmp.path(), &bzimage(&xz(&elf)), &bomb);
        let err = derive(&image).unwrap_err().to_string();
        let initrd = tmp.path().join(&image.manifest.initrd);
        assert!(
            err.contains(&initrd.display().to_string()) && err.contains("more than"),
            "{err}"
        );
        assert!(!tmp.path().join(DERIVED_DIR).exists());
    }

    #[test]
    fn two_threads_importing_and_deriving_one_image_both_get_it_whole() {
        let elf = pvh_elf();
        let initrd = ruzstd::encoding::compress_to_vec(
            &cpio()[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        for _ in 0..20 {
            let src = tempfile::tempdir().unwrap();
            let cache = tempfile::tempdir().unwrap();
            let image = image_with(src.path(), &bzimage(&xz(&elf)), &initrd);
            let barrier = std::sync::Barrier::new(2);
            let boots: Vec<_> = std::thread::scope(|s| {
                let run = || {
                    barrier.wait();
                    let cached = crate::image::import(&image, cache.path())?;
                    cached.fast_boot_image()
                };
                let a = s.spawn(run);
                let b = s.spawn(run);
                [a.join().unwrap(), b.join().unwrap()].into_iter().collect()
            });
            for boot in boots {
                let boot = boot.unwrap();
                let entry = boot.kernel.parent().unwrap();
                open(entry).unwrap();
                assert_eq!(fs::read(boot.kernel_elf.unwrap()).unwrap(), elf);
                assert_eq!(fs::read(boot.initrd_uncompressed.unwrap()).unwrap(), cpio());
            }
        }
    }
}
