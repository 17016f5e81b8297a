//! The data disk: a qcow2 image made by `qemu-img` through the [`CommandRunner`].
//!
//! The disk holds the user's images, containers and volumes, so an existing one is never
//! recreated, resized or truncated. `qemu-img` writes to a temporary name that is renamed into
//! place only once it succeeded, so an interrupted `create` cannot leave a half-written disk
//! that a later `create` would then keep.

use std::path::{Path, PathBuf};

use rmachine_driver::runner::{CommandRunner, CommandSpec};
use rmachine_driver::DriverError;

/// What [`ensure_disk`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskOutcome {
    /// A new disk was made.
    Created,
    /// A disk was already there and was left alone.
    Kept,
}

fn temp_path(disk: &Path) -> PathBuf {
    let mut name = disk.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Makes a blank qcow2 disk of `size_mb` MB at `disk` unless one exists.
pub async fn ensure_disk(
    runner: &dyn CommandRunner,
    qemu_img: &str,
    install_hint: &str,
    machine: &str,
    disk: &Path,
    size_mb: u64,
) -> Result<DiskOutcome, DriverError> {
    let io = |path: &Path, source| DriverError::Io {
        machine: machine.to_owned(),
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(disk) {
        Ok(_) => {
            tracing::debug!(disk = %disk.display(), "data disk exists, keeping it");
            return Ok(DiskOutcome::Kept);
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(io(disk, err)),
    }
    // A temporary file left by an interrupted create is overwritten by qemu-img.
    let temp = temp_path(disk);
    let cmd = CommandSpec::new(qemu_img)
        .args(["create", "-f", "qcow2"])
        .arg(temp.to_string_lossy())
        .arg(format!("{size_mb}M"))
        .install_hint(install_hint);
    let created = runner.run(&cmd).await.and_then(|out| out.check(qemu_img));
    if let Err(err) = created {
        let _ = std::fs::remove_file(&temp);
        return Err(err);
    }
    std::fs::rename(&temp, disk).map_err(|source| io(disk, source))?;
    tracing::info!(disk = %disk.display(), size_mb, "created data disk");
    Ok(DiskOutcome::Created)
}

#[cfg(test)]
mod tests {
    use rmachine_driver::runner::{CannedReply, CommandOutput, RecordingRunner};

    use super::*;

    fn create_argv(temp: &Path, size: &str) -> Vec<String> {
        vec![
            "qemu-img".into(),
            "create".into(),
            "-f".into(),
            "qcow2".into(),
            temp.to_string_lossy().into_owned(),
            size.into(),
        ]
    }

    #[tokio::test]
    async fn creates_a_qcow2_disk_of_the_requested_size() {
        let dir = tempfile::tempdir().expect("temp dir");
        let disk = dir.path().join("disk.qcow2");
        let temp = dir.path().join("disk.qcow2.tmp");
        // The canned qemu-img cannot write a file: this one stands for what it would write.
        let runner =
            RecordingRunner::new([(create_argv(&temp, "20000M"), CommandOutput::success(""))]);
        std::fs::write(&temp, b"QFI\xfb").expect("stand-in for qemu-img's output");
        let outcome = ensure_disk(&runner, "qemu-img", "hint", "dev", &disk, 20000)
            .await
            .expect("created");
        assert_eq!(outcome, DiskOutcome::Created);
        assert_eq!(std::fs::read(&disk).expect("disk"), b"QFI\xfb");
        assert!(!temp.exists());
        runner.assert_done();
    }

    #[tokio::test]
    async fn never_touches_an_existing_disk() {
        let dir = tempfile::tempdir().expect("temp dir");
        let disk = dir.path().join("disk.qcow2");
        std::fs::write(&disk, b"user data").expect("existing disk");
        let runner = RecordingRunner::default();
        let outcome = ensure_disk(&runner, "qemu-img", "hint", "dev", &disk, 20000)
            .await
            .expect("kept");
        assert_eq!(outcome, DiskOutcome::Kept);
        assert_eq!(std::fs::read(&disk).expect("disk"), b"user data");
        runner.assert_done();
    }

    #[tokio::test]
    async fn a_failed_create_leaves_no_disk() {
        let dir = tempfile::tempdir().expect("temp dir");
        let disk = dir.path().join("disk.qcow2");
        let temp = dir.path().join("disk.qcow2.tmp");
        let runner = RecordingRunner::new([(
            create_argv(&temp, "10M"),
            CommandOutput::failure(1, "qemu-img: disk.qcow2.tmp: No space left on device\n"),
        )]);
        let err = ensure_disk(&runner, "qemu-img", "hint", "dev", &disk, 10)
            .await
            .expect_err("qemu-img failed");
        assert_eq!(
            err.to_string(),
            "qemu-img failed (exit status 1): qemu-img: disk.qcow2.tmp: No space left on device"
        );
        assert!(!disk.exists());
        runner.assert_done();
    }

    #[tokio::test]
    async fn a_missing_qemu_img_names_the_package() {
        let dir = tempfile::tempdir().expect("temp dir");
        let disk = dir.path().join("disk.qcow2");
        let runner = RecordingRunner::default();
        runner.expect(
            create_argv(&dir.path().join("disk.qcow2.tmp"), "10M"),
            CannedReply::Missing,
        );
        let err = ensure_disk(&runner, "qemu-img", "install qemu-utils", "dev", &disk, 10)
            .await
            .expect_err("missing");
        assert_eq!(err.to_string(), "qemu-img not found: install qemu-utils");
    }

    #[tokio::test]
    async fn real_qemu_img_makes_a_qcow2() {
        let runner = rmachine_driver::runner::TokioRunner;
        let probe = CommandSpec::new("qemu-img").arg("--version");
        if runner.run(&probe).await.is_err() {
            eprintln!("skipping: qemu-img is not installed");
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let disk = dir.path().join("disk.qcow2");
        ensure_disk(&runner, "qemu-img", "hint", "dev", &disk, 64)
            .await
            .expect("created");
        let header = std::fs::read(&disk).expect("disk");
        assert_eq!(&header[..4], b"QFI\xfb", "qcow2 magic");
        let info = runner
            .run(
                &CommandSpec::new("qemu-img")
                    .args(["info", "--output=json"])
                    .arg(disk.to_string_lossy()),
            )
            .await
            .expect("qemu-img info");
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
        assert_eq!(info["virtual-size"], 64 * 1024 * 1024);
        assert_eq!(info["format"], "qcow2");
    }
}
