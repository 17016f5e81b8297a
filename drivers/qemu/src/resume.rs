//! `rmachine stop --save` and the `start` that follows: the running guest's state (memory and
//! devices) goes to `vmstate.bin` through QEMU migration (`exec:cat`, the only file-like URI
//! of QEMU 7.2: `file:` came in 8.2), and `vmstate.json` records what it was saved against (QEMU's
//! version, the command line, the boot files' stamps, the state's length). A restore runs the
//! same command line with `-S -incoming`, then `cont`.
//!
//! The state and the data disk are a pair: the state is deleted as soon as QEMU has loaded it
//! (the guest writes the disk again from then on) and by every cold boot of this driver, and
//! the record stamps the disk (length, modification time) so that a disk written by anything
//! else since the save discards the state rather than loading stale memory over it.

use std::path::{Path, PathBuf};

use rmachine_driver::{DriverError, MachineDir, VmSpec};
use serde::{Deserialize, Serialize};

/// The saved memory and device state (QEMU's migration stream).
pub const STATE: &str = "vmstate.bin";
/// What the state was saved against ([`SavedVm`]).
pub const META: &str = "vmstate.json";
/// The state while QEMU writes it.
pub const STATE_TMP: &str = "vmstate.bin.tmp";
/// [`META`] while it is written.
pub const META_TMP: &str = "vmstate.json.tmp";
/// The state once the `cat` QEMU writes it through has finished: QEMU reports the migration
/// completed before it has reaped that `cat`, so only this name says the file is whole.
pub const STATE_WRITTEN: &str = "vmstate.bin.written";
/// [`STATE`] once QEMU has loaded it, until it is deleted.
pub const STATE_SPENT: &str = "vmstate.bin.spent";

/// A state whose sha256 differed from its record, kept aside (never loaded, never deleted by
/// this driver) for the user to look at.
pub const STATE_DAMAGED: &str = "vmstate.bin.damaged";

/// The sha256 of the file at `path`, in hex.
pub fn sha256_of(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Why the state at `path` is not the one recorded with sha256 `want`; `None` if it is.
pub fn state_damage(path: &Path, want: &str) -> Option<String> {
    match sha256_of(path) {
        Ok(sum) if sum == want => None,
        Ok(_) => Some(format!(
            "the state file's sha256 differs from the one recorded at the save: it is \
             damaged; moved aside to {STATE_DAMAGED}"
        )),
        Err(err) => Some(format!("the state file is unreadable: {err}")),
    }
}

/// A boot file as it was when the state was saved: a guest image replaced under the same path
/// changes its length or modification time.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FileStamp {
    /// The file.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: u64,
    /// Its modification time, in nanoseconds since the Unix epoch.
    pub modified_ns: u128,
}

impl FileStamp {
    /// The stamp of `path` now.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        let modified_ns = meta
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(FileStamp {
            path: path.to_owned(),
            len: meta.len(),
            modified_ns,
        })
    }
}

/// `vmstate.json`: what [`STATE`] was saved against.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SavedVm {
    /// The first line of `qemu-system-* --version` of the QEMU that saved it.
    pub qemu_version: String,
    /// That QEMU's executable: while it is unchanged, a restore need not run `--version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_binary: Option<BinaryStamp>,
    /// QEMU's arguments as the saved VM ran with them (ports of that run).
    pub argv: Vec<String>,
    /// The `tsc_early_khz=` that argv was built with, so a restore builds the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsc_khz: Option<u64>,
    /// The guest image's files.
    pub boot_files: Vec<FileStamp>,
    /// The length of [`STATE`] as QEMU wrote it: a shorter file was truncated.
    pub state_len: u64,
    /// The sha256 of [`STATE`] as QEMU wrote it (hex), checked while QEMU loads it, before
    /// the guest runs; records from before it was kept have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_sha256: Option<String>,
    /// The data disk's image after the saving QEMU exited: any other length or modification
    /// time means something wrote the disk since (an older rmachine's cold boot, a
    /// `qemu-img check -r`, a restored backup), and the state's memory no longer fits it.
    pub data_disk: FileStamp,
}

impl SavedVm {
    /// Reads `vmstate.json`; `None` if there is none.
    pub fn load(dir: &MachineDir) -> Result<Option<Self>, DriverError> {
        rmachine_driver::state_file::load(dir, META)
    }

    /// Writes `vmstate.json` atomically.
    pub fn save(&self, dir: &MachineDir) -> Result<(), DriverError> {
        rmachine_driver::state_file::save(dir, META, self)
    }

    /// Why this state cannot be loaded into a VM that would run `argv` with `qemu_version`
    /// and `boot_files`; `None` if it can.
    pub fn mismatch(
        &self,
        qemu_version: &str,
        argv: &[String],
        boot_files: &[FileStamp],
        data_disk: &FileStamp,
    ) -> Option<String> {
        if self.data_disk != *data_disk {
            return Some(format!(
                "the data disk {} was written since the state was saved",
                data_disk.path.display()
            ));
        }
        if self.qemu_version != qemu_version {
            return Some(format!(
                "QEMU changed since the state was saved (saved by \"{}\", now \"{qemu_version}\")",
                self.qemu_version
            ));
        }
        if self.boot_files != boot_files {
            return Some("the guest image changed since the state was saved".to_owned());
        }
        if self.argv != argv {
            return Some(format!(
                "the QEMU command line the machine runs changed since the state was saved \
                 ({}: a changed machine setting, or another rmachine version)",
                first_difference(&self.argv, argv)
            ));
        }
        None
    }
}

/// The first place where `saved` and `now` differ, shown as "`-cpu max` → `-cpu max,-erms`"
/// (a value with its option, an option with its value), so that a user sees what moved rather
/// than only that something did: a device added after the others reads "`-serial file:…` →
/// `-device virtio-balloon-pci,…`".
fn first_difference(saved: &[String], now: &[String]) -> String {
    let at = saved.iter().zip(now).take_while(|(a, b)| a == b).count();
    let option = at
        .checked_sub(1)
        .and_then(|i| saved.get(i))
        .filter(|option| option.starts_with('-'));
    let shown = |args: &[String]| match (option, args.get(at)) {
        (_, None) => "nothing".to_owned(),
        (Some(option), Some(arg)) if !arg.starts_with('-') => format!("`{option} {arg}`"),
        (_, Some(arg)) => match args.get(at + 1).filter(|value| !value.starts_with('-')) {
            Some(value) => format!("`{arg} {value}`"),
            None => format!("`{arg}`"),
        },
    };
    format!("{} → {}", shown(saved), shown(now))
}

/// The first line `--version` prints, built from QMP `query-version`'s answer (QEMU prints
/// `QEMU emulator version MAJOR.MINOR.MICRO (PACKAGE)`, without the parenthesis when the
/// package is empty); `None` if the answer lacks the numbers.
pub fn version_line(answer: &serde_json::Value) -> Option<String> {
    let qemu = answer.get("qemu")?;
    let number = |name: &str| qemu.get(name).and_then(serde_json::Value::as_u64);
    let mut line = format!(
        "QEMU emulator version {}.{}.{}",
        number("major")?,
        number("minor")?,
        number("micro")?
    );
    match answer.get("package").and_then(|p| p.as_str()).map(|p| {
        // Some builds' package string already carries the parentheses.
        let p = p.trim();
        p.strip_prefix('(')
            .and_then(|p| p.strip_suffix(')'))
            .unwrap_or(p)
            .trim()
    }) {
        Some(package) if !package.is_empty() => line.push_str(&format!(" ({package})")),
        _ => {}
    }
    Some(line)
}

/// The QEMU executable as a restore compares it: length and mtime, and on Unix the inode and
/// the status-change time as well. Packages install files with the package's build date as
/// mtime (dpkg, Homebrew), so an upgrade can leave an older mtime; the new file still has a
/// new inode and a ctime of its install, which nothing sets back.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BinaryStamp {
    /// The file.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: u64,
    /// Its modification time, in nanoseconds since the Unix epoch.
    pub modified_ns: u128,
    /// Its device and inode numbers (0 where the host has none); a record from before these
    /// were kept reads as 0 and so never matches.
    #[serde(default)]
    pub dev: u64,
    /// See [`BinaryStamp::dev`].
    #[serde(default)]
    pub inode: u64,
    /// Its status-change time (ctime), in nanoseconds since the Unix epoch (0 where the host
    /// has none).
    #[serde(default)]
    pub changed_ns: i128,
}

impl BinaryStamp {
    /// The stamp of `path` now.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        let file = FileStamp::of(path)?;
        let (dev, inode, changed_ns) = identity(&meta);
        Ok(BinaryStamp {
            path: file.path,
            len: file.len,
            modified_ns: file.modified_ns,
            dev,
            inode,
            changed_ns,
        })
    }
}

/// Device, inode and ctime (ns) of a file.
#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> (u64, u64, i128) {
    use std::os::unix::fs::MetadataExt;
    (
        meta.dev(),
        meta.ino(),
        i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
    )
}

/// Device, inode and ctime (ns) of a file: none on this host.
#[cfg(not(unix))]
fn identity(_meta: &std::fs::Metadata) -> (u64, u64, i128) {
    (0, 0, 0)
}

/// The stamp of the QEMU executable at `program` if it is the file the QEMU with process id
/// `pid` (which wrote `pidfile` when it started) runs; `None` if it was replaced since (an
/// upgrade while the VM ran) or that cannot be told. On Linux `/proc/PID/exe` is the running
/// file itself, so its device and inode must be those at `program`; elsewhere the file's
/// ctime must predate the pidfile's (mtimes say nothing: packages set them to a build date).
pub fn binary_of_running_qemu(program: &str, pid: u32, pidfile: &Path) -> Option<BinaryStamp> {
    let binary = BinaryStamp::of(&find_program(program)?).ok()?;
    if cfg!(target_os = "linux") {
        if let Ok(running) = std::fs::metadata(format!("/proc/{pid}/exe")) {
            let (dev, inode, _) = identity(&running);
            return (dev == binary.dev && inode == binary.inode).then_some(binary);
        }
    }
    let (_, _, started) = identity(&std::fs::metadata(pidfile).ok()?);
    (binary.changed_ns != 0 && binary.changed_ns < started).then_some(binary)
}

/// Where `program` runs from: itself if it names a path, else the first match on `PATH`.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = Path::new(program);
    if path.components().count() > 1 {
        return path.is_file().then(|| path.to_owned());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The stamps of the boot files `spec` names (the compressed and the derived ones).
pub fn boot_stamps(spec: &VmSpec) -> std::io::Result<Vec<FileStamp>> {
    let boot = &spec.boot;
    [Some(&boot.kernel), Some(&boot.initrd)]
        .into_iter()
        .chain([
            boot.kernel_elf.as_ref(),
            boot.initrd_uncompressed.as_ref(),
            boot.iso.as_ref(),
        ])
        .flatten()
        .filter(|p| p.exists())
        .map(|p| FileStamp::of(p))
        .collect()
}

/// Quotes `text` for `/bin/sh` (QEMU runs `exec:` URIs with `sh -c`).
pub fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The `migrate` URI that writes the state to `tmp` and, once `cat` has written all of it,
/// renames it to `written`. Refuses a path that is not UTF-8 (QEMU takes the URI as a string).
pub fn save_uri(tmp: &Path, written: &Path) -> Result<String, std::io::Error> {
    let utf8 = |p: &Path| {
        p.to_str().map(sh_quote).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the machine's path is not valid UTF-8: QEMU cannot be told where to save",
            )
        })
    };
    Ok(format!(
        "exec:cat > {tmp} && mv {tmp} {written}",
        tmp = utf8(tmp)?,
        written = utf8(written)?
    ))
}

/// The descriptor QEMU reads the state from on a restore.
pub const INCOMING_FD: u32 = 3;

/// The arguments appended to the VM's command line to load the state, paused, from descriptor
/// [`INCOMING_FD`]. A regular file read through a descriptor never blocks, so QEMU loads it in
/// one go; through a pipe (`exec:cat FILE`) it waits on the pipe every 32 KiB, which made a
/// 160 MB state take 3 s to load instead of a fraction of one.
pub fn incoming_args() -> [String; 3] {
    [
        "-S".to_owned(),
        "-incoming".to_owned(),
        format!("fd:{INCOMING_FD}"),
    ]
}

/// The `sh -c` script that opens the state file (in the environment variable
/// [`STATE_ENV`]) as descriptor [`INCOMING_FD`] and runs QEMU (`$0`) with its arguments
/// (`$@`): the runner lets a child inherit no descriptor but the standard ones.
pub fn incoming_script() -> String {
    format!("exec \"$0\" \"$@\" {INCOMING_FD}<\"${STATE_ENV}\"")
}

/// See [`incoming_script`].
pub const STATE_ENV: &str = "RMACHINE_VMSTATE";

/// Removes the saved state and its record; true if there was one.
pub fn discard(dir: &MachineDir) -> std::io::Result<bool> {
    let mut found = false;
    for name in [META, STATE, STATE_TMP, STATE_WRITTEN, META_TMP, STATE_SPENT] {
        match std::fs::remove_file(dir.file(name)) {
            Ok(()) => found |= name == META || name == STATE,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(found)
}

/// Removes the saved state's record only: without it the state file is never loaded.
pub fn discard_record(dir: &MachineDir) -> std::io::Result<()> {
    match std::fs::remove_file(dir.file(META)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// True if a saved state (or part of one) lies in `dir`.
pub fn exists(dir: &MachineDir) -> bool {
    dir.file(META).exists() || dir.file(STATE).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved() -> SavedVm {
        SavedVm {
            qemu_version: "QEMU emulator version 7.2.0".to_owned(),
            qemu_binary: None,
            argv: vec!["-m".to_owned(), "1024".to_owned()],
            tsc_khz: Some(2_000_000),
            boot_files: vec![FileStamp {
                path: "/cache/vmlinuz".into(),
                len: 10,
                modified_ns: 5,
            }],
            state_len: 100,
            state_sha256: None,
            data_disk: FileStamp {
                path: "/m/disk.qcow2".into(),
                len: 1000,
                modified_ns: 7,
            },
        }
    }

    #[test]
    fn a_state_fits_only_the_same_qemu_image_and_command_line() {
        let s = saved();
        let disk = &s.data_disk;
        assert_eq!(
            s.mismatch(&s.qemu_version, &s.argv, &s.boot_files, disk),
            None
        );
        let why = s
            .mismatch("QEMU emulator version 8.0.0", &s.argv, &s.boot_files, disk)
            .unwrap();
        assert!(
            why.contains("QEMU changed") && why.contains("8.0.0"),
            "{why}"
        );
        let mut files = s.boot_files.clone();
        files[0].len = 11;
        let why = s.mismatch(&s.qemu_version, &s.argv, &files, disk).unwrap();
        assert!(why.contains("guest image changed"), "{why}");
        let argv = vec!["-m".to_owned(), "2048".to_owned()];
        let why = s
            .mismatch(&s.qemu_version, &argv, &s.boot_files, disk)
            .unwrap();
        assert!(why.contains("`-m 1024` → `-m 2048`"), "{why}");
    }

    #[test]
    fn a_changed_command_line_is_named_by_its_first_difference() {
        let args = |line: &str| line.split(' ').map(str::to_owned).collect::<Vec<_>>();
        // A CPU model that changed between the save and the start.
        assert_eq!(
            first_difference(
                &args("-m 1024 -cpu max -smp 2"),
                &args("-m 1024 -cpu max,-erms -smp 2")
            ),
            "`-cpu max` → `-cpu max,-erms`"
        );
        // An option added or removed.
        assert_eq!(
            first_difference(
                &args("-m 1024 -nodefaults"),
                &args("-m 1024 -no-user-config")
            ),
            "`-nodefaults` → `-no-user-config`"
        );
        assert_eq!(
            first_difference(&args("-m 1024"), &args("-m 1024 -S")),
            "nothing → `-S`"
        );
        // A device added before the console: both options shown with their values.
        assert_eq!(
            first_difference(
                &args("-device virtio-rng-pci -serial file:/m/console.log"),
                &args(
                    "-device virtio-rng-pci -device virtio-balloon-pci,free-page-reporting=on \
                     -serial file:/m/console.log"
                )
            ),
            "`-serial file:/m/console.log` → `-device virtio-balloon-pci,free-page-reporting=on`"
        );
    }

    #[test]
    fn a_state_does_not_fit_a_data_disk_written_after_it() {
        let s = saved();
        for (len, modified_ns) in [(1000, 8), (1001, 7)] {
            let disk = FileStamp {
                len,
                modified_ns,
                ..s.data_disk.clone()
            };
            let why = s
                .mismatch(&s.qemu_version, &s.argv, &s.boot_files, &disk)
                .unwrap();
            assert!(
                why.contains("data disk /m/disk.qcow2 was written since"),
                "{why}"
            );
        }
    }

    #[test]
    fn the_running_qemus_version_reads_as_its_version_line() {
        let answer = serde_json::json!({
            "qemu": {"micro": 22, "minor": 2, "major": 7},
            "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"
        });
        // `qemu-system-x86_64 --version` of that QEMU, first line.
        assert_eq!(
            version_line(&answer).as_deref(),
            Some("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)")
        );
        let plain =
            serde_json::json!({"qemu": {"micro": 0, "minor": 2, "major": 8}, "package": ""});
        assert_eq!(
            version_line(&plain).as_deref(),
            Some("QEMU emulator version 8.2.0")
        );
        let wrapped = serde_json::json!({"qemu": {"micro": 1, "minor": 0, "major": 9}, "package": " (v9.0.1) "});
        assert_eq!(
            version_line(&wrapped).as_deref(),
            Some("QEMU emulator version 9.0.1 (v9.0.1)")
        );
        assert_eq!(version_line(&serde_json::json!({"package": "x"})), None);
    }

    /// Sets `path`'s mtime to `secs` after the epoch.
    #[cfg(unix)]
    fn set_mtime(path: &Path, secs: u64) {
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    /// Writes `path` anew (a new inode, as a package manager installs it) with an old mtime.
    #[cfg(unix)]
    fn install(path: &Path, from: &Path) {
        let tmp = path.with_extension("new");
        std::fs::copy(from, &tmp).unwrap();
        set_mtime(&tmp, 1_000);
        std::fs::rename(&tmp, path).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_qemu_binary_replaced_under_the_running_qemu_is_not_recorded_despite_an_old_mtime() {
        let tmp = tempfile::tempdir().unwrap();
        let binary = tmp.path().join("qemu-system-x86_64");
        let pidfile = tmp.path().join("qemu.pid");
        let sleep = find_program("sleep").unwrap();
        install(&binary, &sleep);
        let mut child = std::process::Command::new(&binary)
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(&pidfile, format!("{}\n", child.id())).unwrap();
        let program = binary.to_str().unwrap();
        let recorded = binary_of_running_qemu(program, child.id(), &pidfile);
        // Upgraded while the VM ran, the new file dated like a package build (long ago).
        install(&binary, &sleep);
        let after_upgrade = binary_of_running_qemu(program, child.id(), &pidfile);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            recorded.map(|s| s.len),
            Some(std::fs::metadata(&sleep).unwrap().len())
        );
        assert_eq!(after_upgrade, None);
    }

    #[cfg(unix)]
    #[test]
    fn without_the_running_file_a_qemu_binary_installed_after_the_pidfile_is_not_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let binary = tmp.path().join("qemu-system-x86_64");
        let pidfile = tmp.path().join("qemu.pid");
        std::fs::write(&binary, b"elf").unwrap();
        // ctime has the file system's tick (a few ms): let it move.
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::fs::write(&pidfile, b"1\n").unwrap();
        set_mtime(&pidfile, 2_000);
        let program = binary.to_str().unwrap();
        // No process has this id: only the ctimes can tell.
        let gone = u32::MAX;
        assert_eq!(
            binary_of_running_qemu(program, gone, &pidfile).map(|s| s.len),
            Some(3)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
        install(&binary, &binary.clone());
        assert!(
            BinaryStamp::of(&binary).unwrap().modified_ns
                < FileStamp::of(&pidfile).unwrap().modified_ns
        );
        assert_eq!(binary_of_running_qemu(program, gone, &pidfile), None);
    }

    #[cfg(unix)]
    #[test]
    fn a_reinstalled_binary_with_the_same_length_and_mtime_has_another_stamp() {
        let tmp = tempfile::tempdir().unwrap();
        let binary = tmp.path().join("qemu-system-x86_64");
        std::fs::write(&binary, b"elf").unwrap();
        set_mtime(&binary, 1_000);
        let before = BinaryStamp::of(&binary).unwrap();
        install(&binary, &binary.clone());
        let after = BinaryStamp::of(&binary).unwrap();
        assert_eq!(
            (before.len, before.modified_ns),
            (after.len, after.modified_ns)
        );
        assert_ne!(before, after);
    }

    #[test]
    fn a_state_damaged_within_its_length_fails_its_sum() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(STATE);
        std::fs::write(&path, b"QEVM state").unwrap();
        let want = sha256_of(&path).unwrap();
        assert_eq!(state_damage(&path, &want), None);
        std::fs::write(&path, b"QEVM stbte").unwrap();
        let why = state_damage(&path, &want).unwrap();
        assert!(
            why.contains("sha256") && why.contains(STATE_DAMAGED),
            "{why}"
        );
        assert!(state_damage(&tmp.path().join("gone"), &want).is_some());
    }

    #[test]
    fn uris_quote_the_path_for_the_shell() {
        assert_eq!(
            save_uri(
                Path::new("/m/it's here/vmstate.bin.tmp"),
                Path::new("/m/it's here/vmstate.bin.written")
            )
            .unwrap(),
            r"exec:cat > '/m/it'\''s here/vmstate.bin.tmp' && mv '/m/it'\''s here/vmstate.bin.tmp' '/m/it'\''s here/vmstate.bin.written'"
        );
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let bad = Path::new(std::ffi::OsStr::from_bytes(b"/m/\xff/vmstate.bin.tmp"));
            assert!(save_uri(bad, Path::new("/m/w")).is_err());
        }
        assert_eq!(incoming_args()[2], "fd:3");
        assert_eq!(incoming_script(), r#"exec "$0" "$@" 3<"$RMACHINE_VMSTATE""#);
    }

    #[test]
    fn discard_removes_every_part_and_says_whether_there_was_a_state() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = MachineDir::new("m", tmp.path());
        assert!(!discard(&dir).unwrap());
        std::fs::write(dir.file(STATE), b"x").unwrap();
        std::fs::write(dir.file(STATE_TMP), b"x").unwrap();
        assert!(exists(&dir));
        assert!(discard(&dir).unwrap());
        assert!(!exists(&dir));
        assert!(!dir.file(STATE_TMP).exists());
    }
}
