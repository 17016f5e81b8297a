//! virtio-fs shares: finding a virtiofsd on the host and its command line.
//!
//! QEMU does not serve virtio-fs itself: one virtiofsd per share serves the folder over a
//! vhost-user socket in the machine directory, and QEMU's `vhost-user-fs` device connects to
//! it. The daemon exits by itself when QEMU closes the connection (the VM stops); the driver
//! kills one left behind by a QEMU that failed to start. Two daemons exist: the C one QEMU
//! shipped up to 7.2 (Debian 12: `/usr/lib/qemu/virtiofsd`, in `qemu-system-common`), which
//! sandboxes itself in namespaces and needs root, and the Rust one that replaced it (Debian
//! 13, Fedora: `/usr/libexec/virtiofsd`), which runs as a user with `--sandbox=none`.
//!
//! Ownership: virtiofsd runs with the credentials of whoever runs `rmachine`. As root it
//! switches to the guest caller's uid/gid for each request, so a file a container's root
//! creates is owned by root on the host, exactly as QEMU's 9p (`security_model=none`) does
//! when QEMU runs as root. As a user (Rust daemon), it cannot switch, so every file the guest
//! creates belongs to that user, again as 9p does then.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rmachine_driver::runner::Spawned;
use rmachine_driver::{MachineDir, Share};

/// Which virtiofsd implementation a program is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// The C daemon of QEMU ≤ 7.2 (`-o source=`), root only.
    Qemu,
    /// The Rust daemon (`--shared-dir`), root or user.
    Rust,
}

/// A virtiofsd the driver can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Virtiofsd {
    /// Its path.
    pub program: PathBuf,
    /// Its implementation.
    pub flavour: Flavour,
}

/// Where distributions install virtiofsd, preferred first.
pub const CANDIDATES: [(&str, Flavour); 3] = [
    ("/usr/libexec/virtiofsd", Flavour::Rust),
    ("/usr/lib/virtiofsd", Flavour::Rust),
    ("/usr/lib/qemu/virtiofsd", Flavour::Qemu),
];

/// The first candidate that exists and can run for this user (`root`: the effective user is
/// root), or `None`: shares then go over 9p.
pub fn find(root: bool, exists: impl Fn(&Path) -> bool) -> Option<Virtiofsd> {
    CANDIDATES
        .iter()
        .filter(|(_, flavour)| root || *flavour == Flavour::Rust)
        .map(|(path, flavour)| (Path::new(path), *flavour))
        .find(|(path, _)| exists(path))
        .map(|(path, flavour)| Virtiofsd {
            program: path.to_owned(),
            flavour,
        })
}

/// Whether this process runs as root (virtiofsd's C flavour needs it).
pub fn running_as_root() -> bool {
    #[cfg(unix)]
    {
        nix::unistd::geteuid().is_root()
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// The vhost-user socket of a share's daemon.
pub fn socket(dir: &MachineDir, share: &Share) -> PathBuf {
    dir.file(&format!("virtiofsd-{}.sock", share.tag))
}

/// The file holding a share's daemon's pid.
pub fn pidfile(dir: &MachineDir, share: &Share) -> PathBuf {
    dir.file(&format!("virtiofsd-{}.pid", share.tag))
}

/// Where a share's daemon writes its messages.
pub fn log(dir: &MachineDir, share: &Share) -> PathBuf {
    dir.file(&format!("virtiofsd-{}.log", share.tag))
}

/// Whether a machine-directory file name is one of the daemons' files.
pub fn is_own_file(name: &str) -> bool {
    name.starts_with("virtiofsd-")
        && [".sock", ".pid", ".log"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// The `--socket-path=` argument, which also identifies the daemon among processes.
pub fn socket_arg(socket: &Path) -> String {
    format!("--socket-path={}", socket.to_string_lossy())
}

/// The daemon's arguments for one share. `cache=auto` lets the guest cache for a second and
/// revalidate, as 9p's `cache=mmap` keeps the guest close to what the host changes.
pub fn daemon_args(daemon: &Virtiofsd, share: &Share, socket: &Path, root: bool) -> Vec<String> {
    let mut args = vec![socket_arg(socket)];
    match daemon.flavour {
        Flavour::Qemu => {
            // fuse_opt syntax: a comma in the path is escaped with a backslash.
            let source = share
                .host_path
                .to_string_lossy()
                .replace('\\', "\\\\")
                .replace(',', "\\,");
            args.extend([
                "-o".to_owned(),
                format!("source={source}"),
                "-o".to_owned(),
                "cache=auto".to_owned(),
            ]);
        }
        Flavour::Rust => {
            args.push(format!(
                "--shared-dir={}",
                share.host_path.to_string_lossy()
            ));
            args.push("--cache=auto".to_owned());
            if !root {
                // Its namespace sandbox needs privileges a user may lack; the folder is the
                // user's own anyway.
                args.push("--sandbox=none".to_owned());
            }
        }
    }
    args
}

/// Why a daemon just started did not come up.
#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdStartError {
    /// Its process handle could not say whether it still runs.
    #[error("cannot tell whether {program} runs")]
    Status {
        /// The daemon's program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It exited; `said` is what it wrote to its log (empty: nothing).
    #[error("{program} exited ({}){}", exit_words(status), said_words(said, log))]
    Exited {
        /// The daemon's program.
        program: String,
        /// How it ended; `None`: unknown, something else reaped it.
        status: Option<std::process::ExitStatus>,
        /// Its log.
        log: PathBuf,
        /// What it wrote there, trimmed.
        said: String,
    },
    /// It ran without creating its socket in time.
    #[error("{program} did not create {} within {} s", socket.display(), timeout.as_secs())]
    Timeout {
        /// The daemon's program.
        program: String,
        /// The socket it should have created.
        socket: PathBuf,
        /// How long it was given.
        timeout: Duration,
    },
}

fn exit_words(status: &Option<std::process::ExitStatus>) -> String {
    status.map_or_else(|| "status unknown".to_owned(), |s| s.to_string())
}

fn said_words(said: &str, log: &Path) -> String {
    if said.is_empty() {
        format!(" and wrote nothing to {}", log.display())
    } else {
        format!(": {said}")
    }
}

/// Whether the process `pid` exists, for a child the handle cannot wait for.
#[cfg(unix)]
fn pid_exists(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Waits until a daemon just started creates its socket. Whether it still runs comes from its
/// process handle, never from `/proc/PID/cmdline`, which reads empty while the kernel is still
/// loading the program (a daemon not in the page cache, on a busy host): that check once took a
/// starting daemon for an exited one. The error says how it ended and what it wrote; a daemon
/// given up on is killed and reaped through the handle, so none is left running or a zombie.
pub async fn wait_for_socket(
    spawned: &mut Spawned,
    program: &str,
    socket: &Path,
    log: &Path,
    timeout: Duration,
) -> Result<(), VirtiofsdStartError> {
    let deadline = Instant::now() + timeout;
    loop {
        // Read before the status: the C daemon creates its socket before it sandboxes itself,
        // so a socket is a start only if the daemon still runs after it appeared.
        let socket_made = socket.exists();
        let status = match spawned.exit_status() {
            Ok(status) => status.map(Some),
            // Something reaped it behind the handle (rmachine started with SIGCHLD ignored:
            // the kernel reaps every child): whether its pid still exists is all there is.
            #[cfg(unix)]
            Err(err) if err.raw_os_error() == Some(nix::errno::Errno::ECHILD as i32) => {
                (!pid_exists(spawned.pid())).then_some(None)
            }
            Err(source) => {
                spawned.kill_and_reap();
                return Err(VirtiofsdStartError::Status {
                    program: program.to_owned(),
                    source,
                });
            }
        };
        if let Some(status) = status {
            let said = std::fs::read_to_string(log).unwrap_or_default();
            return Err(VirtiofsdStartError::Exited {
                program: program.to_owned(),
                status,
                log: log.to_owned(),
                said: said.trim().to_owned(),
            });
        }
        if socket_made {
            return Ok(());
        }
        if Instant::now() >= deadline {
            spawned.kill_and_reap();
            return Err(VirtiofsdStartError::Timeout {
                program: program.to_owned(),
                socket: socket.to_owned(),
                timeout,
            });
        }
        tokio::time::sleep(SOCKET_POLL).await;
    }
}

/// How often [`wait_for_socket`] looks: the daemon makes its socket within milliseconds, and
/// a start waits for it before QEMU runs.
const SOCKET_POLL: Duration = Duration::from_millis(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn share(path: &str) -> Share {
        Share {
            tag: "rmshare0".into(),
            host_path: path.into(),
            guest_path: "/home/me".into(),
            read_only: false,
            transport: rmachine_driver::ShareTransport::VirtioFs,
        }
    }

    #[test]
    fn the_c_daemon_is_used_only_as_root_and_the_rust_one_is_preferred() {
        let only_c = |p: &Path| p == Path::new("/usr/lib/qemu/virtiofsd");
        assert_eq!(find(false, only_c), None);
        assert_eq!(find(true, only_c).map(|d| d.flavour), Some(Flavour::Qemu));
        let both = |p: &Path| p != Path::new("/usr/lib/virtiofsd");
        assert_eq!(
            find(true, both),
            Some(Virtiofsd {
                program: "/usr/libexec/virtiofsd".into(),
                flavour: Flavour::Rust
            })
        );
        assert_eq!(find(true, |_| false), None);
    }

    #[test]
    fn command_lines_per_flavour() {
        let socket = Path::new("/m/dev/virtiofsd-rmshare0.sock");
        let c = Virtiofsd {
            program: "/usr/lib/qemu/virtiofsd".into(),
            flavour: Flavour::Qemu,
        };
        assert_eq!(
            daemon_args(&c, &share("/home/a,b"), socket, true),
            [
                "--socket-path=/m/dev/virtiofsd-rmshare0.sock",
                "-o",
                "source=/home/a\\,b",
                "-o",
                "cache=auto"
            ]
        );
        let rust = Virtiofsd {
            program: "/usr/libexec/virtiofsd".into(),
            flavour: Flavour::Rust,
        };
        assert_eq!(
            daemon_args(&rust, &share("/home/me"), socket, false),
            [
                "--socket-path=/m/dev/virtiofsd-rmshare0.sock",
                "--shared-dir=/home/me",
                "--cache=auto",
                "--sandbox=none"
            ]
        );
        assert_eq!(
            daemon_args(&rust, &share("/home/me"), socket, true).len(),
            3
        );
    }

    /// Starts `sh -c SCRIPT` as virtiofsd would be started (detached, output to `log`).
    #[cfg(unix)]
    async fn start(script: &str, log: &Path) -> Spawned {
        use rmachine_driver::runner::{CommandRunner, CommandSpec, TokioRunner};
        TokioRunner
            .spawn_detached(&CommandSpec::new("sh").args(["-c", script]), log)
            .await
            .expect("sh starts")
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_running_daemon_is_waited_for_even_if_proc_does_not_name_its_socket() {
        // The command line holds no `--socket-path=`, as /proc shows it while the kernel still
        // loads the program: the wait must go on until the socket appears.
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("d.sock");
        let log = dir.path().join("d.log");
        let script = format!("sleep 0.3; : > '{}'; exec sleep 30", socket.display());
        let mut spawned = start(&script, &log).await;
        let waited = wait_for_socket(
            &mut spawned,
            "virtiofsd",
            &socket,
            &log,
            Duration::from_secs(10),
        )
        .await;
        let _ = crate::process::kill(&rmachine_driver::runner::TokioRunner, spawned.pid()).await;
        assert!(waited.is_ok(), "{waited:?}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_daemon_that_dies_is_reported_with_its_status_and_words() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("d.sock");
        let log = dir.path().join("d.log");
        let mut spawned = start("echo 'no such dir' >&2; exit 1", &log).await;
        let err = wait_for_socket(&mut spawned, "vfsd", &socket, &log, Duration::from_secs(10))
            .await
            .expect_err("it exited");
        assert_eq!(err.to_string(), "vfsd exited (exit status: 1): no such dir");

        let _ = std::fs::remove_file(&log);
        let mut spawned = start("kill -9 $$", &log).await;
        let err = wait_for_socket(&mut spawned, "vfsd", &socket, &log, Duration::from_secs(10))
            .await
            .expect_err("it was killed");
        assert_eq!(
            err.to_string(),
            format!(
                "vfsd exited (signal: 9 (SIGKILL)) and wrote nothing to {}",
                log.display()
            )
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_daemon_that_dies_after_making_its_socket_is_not_ready() {
        // As the C daemon whose sandbox fails after it created its socket.
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("d.sock");
        let log = dir.path().join("d.log");
        let script = format!(
            ": > '{}'; echo 'sandbox failed' >&2; exit 1",
            socket.display()
        );
        let mut spawned = start(&script, &log).await;
        // It has made its socket and exited by the time the wait looks.
        let status = loop {
            if let Some(status) = spawned.exit_status().expect("status") {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(!status.success());
        let err = wait_for_socket(&mut spawned, "vfsd", &socket, &log, Duration::from_secs(10))
            .await
            .expect_err("it exited");
        assert_eq!(
            err.to_string(),
            "vfsd exited (exit status: 1): sandbox failed"
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_daemon_reaped_behind_its_handle_is_reported_gone() {
        // As when rmachine runs with SIGCHLD ignored and the kernel reaps the daemon.
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("d.sock");
        let log = dir.path().join("d.log");
        let mut spawned = start("exit 3", &log).await;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(spawned.pid()).expect("pid"));
        nix::sys::wait::waitpid(pid, None).expect("reaped here");
        let err = wait_for_socket(&mut spawned, "vfsd", &socket, &log, Duration::from_secs(10))
            .await
            .expect_err("it is gone");
        assert_eq!(
            err.to_string(),
            format!(
                "vfsd exited (status unknown) and wrote nothing to {}",
                log.display()
            )
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_daemon_that_never_makes_its_socket_times_out() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("d.sock");
        let log = dir.path().join("d.log");
        let mut spawned = start("exec sleep 30", &log).await;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(spawned.pid()).expect("pid"));
        let err = wait_for_socket(&mut spawned, "vfsd", &socket, &log, Duration::from_secs(1))
            .await
            .expect_err("no socket");
        // Gone, not a zombie: the pid no longer exists at all.
        let gone = nix::sys::signal::kill(pid, None);
        if gone.is_ok() {
            spawned.kill_and_reap();
        }
        assert_eq!(
            gone,
            Err(nix::errno::Errno::ESRCH),
            "the daemon outlived the error"
        );
        assert_eq!(
            err.to_string(),
            format!("vfsd did not create {} within 1 s", socket.display())
        );
    }

    #[test]
    fn daemon_files_are_recognised() {
        let dir = MachineDir::new("dev", "/m/dev");
        let s = share("/home/me");
        for path in [socket(&dir, &s), pidfile(&dir, &s), log(&dir, &s)] {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            assert!(is_own_file(name), "{name}");
        }
        assert!(!is_own_file("qemu.pid"));
        assert!(!is_own_file("virtiofsd-notes.txt"));
    }
}
