//! Fixed-size VHD images: the raw bytes followed by a 512-byte footer (Microsoft's Virtual
//! Hard Disk Image Format Specification). VirtualBox and Hyper-V attach no raw `.img` file as
//! a disk, but both attach a fixed VHD; the configuration drive is handed to them this way.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

/// VHD sizes are rounded up to whole MiB: Hyper-V refuses virtual sizes that are not.
const ALIGN: u64 = 1 << 20;
const SECTOR: u64 = 512;

/// Writes `raw` as a fixed VHD at `out` (through `out.tmp` and a rename, so a reader never sees
/// half a disk). The data is zero-padded to a whole MiB; `id` is the disk's unique id, which
/// VirtualBox uses to recognise a medium across rewrites. Returns the virtual size in bytes.
pub fn write_fixed(raw: &Path, out: &Path, id: [u8; 16]) -> std::io::Result<u64> {
    let mut data = Vec::new();
    File::open(raw)?.read_to_end(&mut data)?;
    let size = (data.len() as u64).div_ceil(ALIGN).max(1) * ALIGN;
    data.resize(size as usize, 0);
    data.extend_from_slice(&footer(size, id));
    let tmp = out.with_extension("vhd.tmp");
    // A leftover would keep its mode; the disk holds the engine's TLS key: owner only.
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(&data)?;
    file.sync_all()?;
    std::fs::rename(&tmp, out)?;
    Ok(size)
}

/// The footer of a fixed disk of `size` bytes.
pub fn footer(size: u64, id: [u8; 16]) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: "reserved", always set
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // format version 1.0
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: none for fixed disks
                                                        // Timestamp 0 (2000-01-01) keeps the file reproducible.
                                                        // Creator "win " (Hyper-V's): readers such as QEMU then take the size from the size field
                                                        // rather than from the CHS geometry, which rounds it down.
    f[28..32].copy_from_slice(b"win ");
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    let (cylinders, heads, sectors) = geometry(size / SECTOR);
    f[56..58].copy_from_slice(&cylinders.to_be_bytes());
    f[58] = heads;
    f[59] = sectors;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // disk type: fixed
    f[68..84].copy_from_slice(&id);
    let sum = f
        .iter()
        .fold(0u32, |acc, b| acc.wrapping_add(u32::from(*b)));
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    f
}

/// CHS geometry, by the algorithm of the VHD specification's appendix.
fn geometry(total: u64) -> (u16, u8, u8) {
    let total = total.min(65535 * 16 * 255);
    let (sectors, heads, cyl_times_heads) = if total >= 65535 * 16 * 63 {
        (255, 16, total / 255)
    } else {
        let mut sectors = 17;
        let mut cth = total / sectors;
        let mut heads = cth.div_ceil(1024).max(4);
        if cth >= heads * 1024 || heads > 16 {
            sectors = 31;
            heads = 16;
            cth = total / sectors;
        }
        if cth >= heads * 1024 {
            sectors = 63;
            heads = 16;
            cth = total / sectors;
        }
        (sectors, heads, cth)
    };
    // Every value fits by construction: total is clamped above.
    ((cyl_times_heads / heads) as u16, heads as u8, sectors as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_vhd_is_the_padded_data_and_a_checksummed_footer() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let raw = tmp.path().join("config.img");
        std::fs::write(&raw, vec![7u8; 1536]).expect("write raw");
        let out = tmp.path().join("config.vhd");
        let size = write_fixed(&raw, &out, [9; 16]).expect("write vhd");
        assert_eq!(size, 1 << 20);
        let bytes = std::fs::read(&out).expect("read vhd");
        assert_eq!(bytes.len() as u64, size + 512);
        assert!(bytes[..1536].iter().all(|b| *b == 7));
        assert!(bytes[1536..size as usize].iter().all(|b| *b == 0));
        let f = &bytes[size as usize..];
        assert_eq!(&f[0..8], b"conectix");
        assert_eq!(u64::from_be_bytes(f[48..56].try_into().expect("8")), size);
        let mut zeroed = f.to_vec();
        zeroed[64..68].fill(0);
        let sum = zeroed
            .iter()
            .fold(0u32, |a, b| a.wrapping_add(u32::from(*b)));
        assert_eq!(u32::from_be_bytes(f[64..68].try_into().expect("4")), !sum);
        // 2048 sectors: the spec's algorithm gives 17 sectors, 4 heads, 30 cylinders.
        assert_eq!(geometry(2048), (30, 4, 17));
        assert!(!tmp.path().join("config.vhd.tmp").exists());
        // It carries the engine's TLS key: owner only.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&out).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    /// qemu-img (which the QEMU driver needs anyway) reads the file as a VHD ("vpc") of the
    /// size written: an independent reader of the format.
    #[test]
    fn qemu_img_reads_it_as_a_vhd() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let raw = tmp.path().join("config.img");
        std::fs::write(&raw, vec![1u8; 3 << 20]).expect("write raw");
        let out = tmp.path().join("config.vhd");
        write_fixed(&raw, &out, [1; 16]).expect("write vhd");
        let info = std::process::Command::new("qemu-img")
            .args(["info", "-f", "vpc", "--output=json"])
            .arg(&out)
            .output()
            .expect("qemu-img runs");
        assert!(info.status.success(), "{info:?}");
        let text = String::from_utf8_lossy(&info.stdout);
        assert!(text.contains("\"format\": \"vpc\""), "{text}");
        assert!(text.contains("\"virtual-size\": 3145728"), "{text}");
    }
}
