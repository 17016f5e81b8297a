//! The QEMU process behind a machine: its pidfile, whether it still runs, killing it.
//!
//! A pidfile can outlive its process (host reboot, QEMU killed), and the pid can then belong
//! to an unrelated process. On Linux the process is only taken for the VM if its command line
//! names this machine's pidfile, so `stop` never kills a stranger; elsewhere the pid alone
//! decides.

use std::path::Path;

use rmachine_driver::runner::CommandRunner;
#[cfg(windows)]
use rmachine_driver::runner::CommandSpec;

/// The pid in `pidfile`, or `None` if there is no usable pidfile.
pub fn read_pidfile(pidfile: &Path) -> std::io::Result<Option<u32>> {
    match std::fs::read_to_string(pidfile) {
        Ok(text) => Ok(text.trim().parse().ok().filter(|pid| *pid > 0)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Whether `pid` is the live QEMU process that wrote `pidfile`.
pub async fn is_alive(runner: &dyn CommandRunner, pid: u32, pidfile: &Path) -> bool {
    platform::is_alive(runner, pid, pidfile).await
}

/// Kills `pid` at once (SIGKILL; `taskkill /F` on Windows).
pub async fn kill(runner: &dyn CommandRunner, pid: u32) -> std::io::Result<()> {
    platform::kill(runner, pid).await
}

/// The resident memory, in bytes, of the live QEMU process that wrote `pidfile` (Linux: from
/// `/proc/PID/status`); `None` when it does not run or the platform does not say.
pub fn resident_bytes(pidfile: &Path) -> Option<u64> {
    let pid = read_pidfile(pidfile).ok().flatten()?;
    if !cfg!(target_os = "linux") {
        return None;
    }
    let proc = Path::new("/proc").join(pid.to_string());
    // Same test as is_alive: the pid must still be this machine's QEMU.
    let cmdline = std::fs::read(proc.join("cmdline")).ok()?;
    let marker = pidfile.to_string_lossy();
    if !cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == marker.as_bytes())
    {
        return None;
    }
    vm_rss_bytes(&std::fs::read_to_string(proc.join("status")).ok()?)
}

/// `VmRSS:` of a `/proc/PID/status` text, in bytes.
pub fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

#[cfg(target_os = "linux")]
mod platform {
    use super::*;

    pub(super) async fn is_alive(_runner: &dyn CommandRunner, pid: u32, pidfile: &Path) -> bool {
        let proc = Path::new("/proc").join(pid.to_string());
        let Ok(stat) = std::fs::read_to_string(proc.join("stat")) else {
            return false;
        };
        // The state follows the command name, which is in parentheses and may hold spaces.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if matches!(state, Some("Z") | Some("X") | None) {
            return false;
        }
        match std::fs::read(proc.join("cmdline")) {
            Ok(cmdline) => {
                let marker = pidfile.to_string_lossy();
                cmdline
                    .split(|b| *b == 0)
                    .any(|arg| arg == marker.as_bytes())
            }
            // Not ours to read: it exists, and it is not provably someone else.
            Err(_) => true,
        }
    }

    pub(super) async fn kill(_runner: &dyn CommandRunner, pid: u32) -> std::io::Result<()> {
        super::unix_kill(pid)
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
mod platform {
    use super::*;

    pub(super) async fn is_alive(_runner: &dyn CommandRunner, pid: u32, _pidfile: &Path) -> bool {
        use nix::errno::Errno;
        let Ok(pid) = i32::try_from(pid) else {
            return false;
        };
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
            Ok(()) | Err(Errno::EPERM) => true,
            Err(_) => false,
        }
    }

    pub(super) async fn kill(_runner: &dyn CommandRunner, pid: u32) -> std::io::Result<()> {
        super::unix_kill(pid)
    }
}

#[cfg(unix)]
fn unix_kill(pid: u32) -> std::io::Result<()> {
    use nix::errno::Errno;
    let raw = i32::try_from(pid)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "pid out of range"))?;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(errno) => Err(std::io::Error::from(errno)),
    }
}

#[cfg(windows)]
mod platform {
    use super::*;

    pub(super) async fn is_alive(runner: &dyn CommandRunner, pid: u32, _pidfile: &Path) -> bool {
        let cmd = CommandSpec::new("tasklist").args([
            "/FI".to_owned(),
            format!("PID eq {pid}"),
            "/NH".to_owned(),
            "/FO".to_owned(),
            "CSV".to_owned(),
        ]);
        match runner.run(&cmd).await {
            // A match is a CSV line whose second field is the pid; no match is an INFO line.
            Ok(out) => out
                .stdout_text()
                .lines()
                .any(|line| line.split(',').nth(1) == Some(&format!("\"{pid}\""))),
            Err(_) => false,
        }
    }

    pub(super) async fn kill(runner: &dyn CommandRunner, pid: u32) -> std::io::Result<()> {
        let cmd = CommandSpec::new("taskkill").args([
            "/F".to_owned(),
            "/PID".to_owned(),
            pid.to_string(),
        ]);
        runner
            .run(&cmd)
            .await
            .map(drop)
            .map_err(|err| std::io::Error::other(err.to_string()))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use rmachine_driver::runner::TokioRunner;

    use super::*;

    #[test]
    fn pidfile_parsing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pidfile = dir.path().join("qemu.pid");
        assert_eq!(read_pidfile(&pidfile).expect("read"), None);
        std::fs::write(&pidfile, "1234\n").expect("write");
        assert_eq!(read_pidfile(&pidfile).expect("read"), Some(1234));
        std::fs::write(&pidfile, "garbage").expect("write");
        assert_eq!(read_pidfile(&pidfile).expect("read"), None);
    }

    #[tokio::test]
    async fn only_the_process_naming_the_pidfile_counts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pidfile = dir.path().join("qemu.pid");
        let marker = pidfile.to_string_lossy().into_owned();
        // `sh -c 'sleep 30' PIDFILE`: a live process whose argv names the pidfile.
        let mut ours = std::process::Command::new("sh")
            .args(["-c", "sleep 30", &marker])
            .spawn()
            .expect("spawn sh");
        let mut stranger = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        // `spawn` returns once the child's execve has switched address spaces, before the
        // kernel has set up its arguments: until then /proc/PID/cmdline reads empty.
        for child in [ours.id(), stranger.id()] {
            let cmdline = Path::new("/proc").join(child.to_string()).join("cmdline");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::fs::read(&cmdline).is_ok_and(|c| c.is_empty())
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        assert!(is_alive(&TokioRunner, ours.id(), &pidfile).await);
        assert!(!is_alive(&TokioRunner, stranger.id(), &pidfile).await);
        kill(&TokioRunner, ours.id()).await.expect("kill");
        let _ = ours.wait();
        assert!(!is_alive(&TokioRunner, ours.id(), &pidfile).await);
        // Killing a process that is gone is not an error.
        kill(&TokioRunner, ours.id()).await.expect("kill again");
        let _ = stranger.kill();
        let _ = stranger.wait();
    }
}

#[cfg(test)]
mod rss_tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status =
            "Name:\tqemu-system-x86\nVmPeak:\t 3000 kB\nVmRSS:\t  183412 kB\nThreads:\t5\n";
        assert_eq!(vm_rss_bytes(status), Some(183_412 * 1024));
        assert_eq!(vm_rss_bytes("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn no_pidfile_means_no_rss() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resident_bytes(&dir.path().join("qemu.pid")), None);
    }
}
