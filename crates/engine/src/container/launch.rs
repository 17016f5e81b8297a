//! Starting a container: preparing its directory and spawning `rmachine-runtime run DIR`.
//!
//! The runtime is a separate process (see `rmachine_runtime::spec`). Its stdin, stdout and stderr
//! become the container's: pipes, or the slave side of a PTY when the container has a TTY. File
//! descriptor 3 is the write end of the sync pipe; the runtime writes one `SyncMessage` line to
//! it and then stays alive as the container's monitor, exiting with the container's status.
//!
//! The runtime is forked by one thread that lives as long as the engine ([`spawn_on_engine_thread`]).
//! That matters: the runtime sets `PR_SET_PDEATHSIG`, which fires when the *thread* that forked
//! it exits. A task's own thread is not safe: `block_in_place` (the durable writes) hands the
//! worker's core to a new thread, and the old one can end up in tokio's blocking pool, which
//! reaps threads after 10 s idle — killing the container forked there with SIGKILL (137).

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::ffi::OsString;

use rmachine_runtime::spec::{
    Failed, Features, RuntimeSpec, SpecFile, SyncMessage, PARENT_PID_ENV, SPEC_FILE, SYNC_FD,
};

use super::console::{ConsoleError, ConsoleSocket};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

/// How long the runtime may take to report that the container started.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors while starting a container process.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Preparing the container directory or a pipe failed.
    #[error("cannot prepare {path}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The runtime binary could not be started.
    #[error("cannot run the container runtime {runtime}")]
    Spawn {
        /// The runtime binary.
        runtime: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The runtime reported that the container could not start.
    #[error("{}", .0.message)]
    Failed(Failed),
    /// The runtime ended or stalled without reporting.
    #[error("container runtime for {id} did not report a start: {reason}")]
    NoReport {
        /// The container id.
        id: String,
        /// What happened instead.
        reason: String,
    },
}

/// How the container's stdio is wired.
#[derive(Debug)]
pub enum LaunchIo {
    /// Separate pipes; `stdin` only when the container keeps stdin open.
    Pipes {
        /// Write end of the container's stdin.
        stdin: Option<ChildStdin>,
        /// Read end of its stdout.
        stdout: ChildStdout,
        /// Read end of its stderr.
        stderr: ChildStderr,
    },
    /// The master side of the container's PTY (output and input).
    Pty {
        /// The PTY master.
        master: OwnedFd,
    },
}

/// A container whose process runs.
#[derive(Debug)]
pub struct Launched {
    /// The runtime (the container's monitor); its exit status is the container's.
    pub child: Child,
    /// Host PID of the container's PID 1.
    pub pid: i32,
    /// Its stdio.
    pub io: LaunchIo,
}

/// How the container's stdio is set up.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdioOptions {
    /// Give the container a stdin pipe (otherwise /dev/null); ignored with a TTY.
    pub open_stdin: bool,
    /// Initial TTY size, rows and columns.
    pub console_size: Option<(u16, u16)>,
}

/// Writes `content` to `path` through a temp file and rename.
pub fn write_atomic(path: &Path, content: &[u8]) -> Result<(), LaunchError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|source| LaunchError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// As [`write_atomic`], readable by the engine only (mode 0600): an exec spec carries the
/// exec's environment (`docker exec -e`), which may hold secrets.
pub fn write_private(path: &Path, content: &[u8]) -> Result<(), LaunchError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| file.write_all(content))
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|source| {
            let _ = fs::remove_file(&tmp);
            LaunchError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
}

/// Builds `/etc/resolv.conf` for a container from the host's: loopback name servers cannot be
/// reached from the container's network namespace, so they are dropped, and with none left
/// Docker's defaults (Google's public DNS) are used.
pub fn resolv_conf(host: &str) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            let addr = words.next().unwrap_or("");
            if addr.starts_with("127.") || addr == "::1" {
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers == 0 {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}

/// `/etc/hosts` for a container on the loopback-only network: moby's default content
/// (libnetwork/etchosts, IPv6 assumed enabled). Without a network interface dockerd adds no
/// line for the container's own hostname.
pub fn hosts_file(extra_hosts: &[String]) -> String {
    let mut hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
     fe00::\tip6-localnet\nff00::\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
     ff02::2\tip6-allrouters\n"
        .to_string();
    // `--add-host NAME:IP` (the CLI has checked the form; host-gateway was mapped or refused).
    for entry in extra_hosts {
        if let Some((name, ip)) = entry.split_once(':') {
            hosts.push_str(&format!("{ip}\t{name}\n"));
        }
    }
    hosts
}

/// Name of the container's init layer directory inside its state directory.
pub const INIT_LAYER: &str = "init";

/// What dockerd's init layer holds (daemon/initlayer): mount points and `/.dockerenv` as empty
/// `0755` entries, `/etc/mtab` a symlink to `/proc/mounts`. `None` is a directory.
const INIT_ENTRIES: &[(&str, Option<InitEntry>)] = &[
    ("dev/pts", None),
    ("dev/shm", None),
    ("proc", None),
    ("sys", None),
    (".dockerenv", Some(InitEntry::File)),
    ("etc/resolv.conf", Some(InitEntry::File)),
    ("etc/hosts", Some(InitEntry::File)),
    ("etc/hostname", Some(InitEntry::File)),
    ("dev/console", Some(InitEntry::File)),
    ("etc/mtab", Some(InitEntry::Symlink("/proc/mounts"))),
];

#[derive(Clone, Copy)]
enum InitEntry {
    File,
    Symlink(&'static str),
}

/// Makes (once) the container's init layer, `DIR/init`, and returns the container's lower
/// directories: the init layer on top of the image's `layers`. As with dockerd, the files
/// every container has (`/.dockerenv`, `/etc/mtab`, the mount points) are thus part of its
/// root file system (export, cp) without being changes of its own (diff).
pub fn with_init_layer(dir: &Path, layers: Vec<PathBuf>) -> Result<Vec<PathBuf>, LaunchError> {
    let init = dir.join(INIT_LAYER);
    if !init.is_dir() {
        // Built aside and renamed, so a half-made layer is never used. A start and a `docker
        // cp` may build it at once: each gets its own scratch directory, and the one whose
        // rename loses uses the winner's layer.
        static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let build = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{INIT_LAYER}.tmp{}-{build}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        build_init_layer(&tmp)?;
        if let Err(err) = fs::rename(&tmp, &init) {
            let _ = fs::remove_dir_all(&tmp);
            if !init.is_dir() {
                return Err(io_err(&init)(err));
            }
        }
    }
    let mut lower = vec![init];
    lower.extend(layers);
    Ok(lower)
}

fn build_init_layer(root: &Path) -> Result<(), LaunchError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let mkdir = |path: &Path| {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path)
            .map_err(io_err(path))
    };
    mkdir(root)?;
    for (rel, kind) in INIT_ENTRIES {
        let path = root.join(rel);
        match kind {
            None => mkdir(&path)?,
            Some(kind) => {
                if let Some(parent) = path.parent() {
                    mkdir(parent)?;
                }
                match kind {
                    InitEntry::File => {
                        fs::OpenOptions::new()
                            .write(true)
                            .create(true)
                            .truncate(false)
                            .mode(0o755)
                            .open(&path)
                            .map_err(io_err(&path))?;
                    }
                    InitEntry::Symlink(target) => {
                        std::os::unix::fs::symlink(target, &path).map_err(io_err(&path))?
                    }
                }
            }
        }
    }
    // The umask may have cut the modes above; dockerd's entries are 0755.
    for (rel, kind) in INIT_ENTRIES {
        if !matches!(kind, Some(InitEntry::Symlink(_))) {
            let path = root.join(rel);
            set_mode(&path, 0o755)?;
        }
    }
    for dir in ["dev", "etc"] {
        set_mode(&root.join(dir), 0o755)?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), LaunchError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

/// dockerd's `setExitCodeFromError` for a process that could not start: the exit code it
/// records (126 permission denied or a directory, 127 not found or not a directory, else 128)
/// and the message it returns (with its hints for `EISDIR` and `ENOTDIR`).
pub fn exit_code_from_error(message: &str) -> (i64, String) {
    let lower = message.to_lowercase();
    if lower.contains("permission denied") {
        return (126, message.to_string());
    }
    if lower.contains("is a directory") {
        return (126, format!("{message}: permission denied"));
    }
    if lower.contains("not a directory") {
        return (
            127,
            format!(
                "{message}: Are you trying to mount a directory onto a file (or vice-versa)? \
                 Check if the specified host path exists and is the expected type"
            ),
        );
    }
    let invalid_command = [
        "executable file not found",
        "no such file or directory",
        "system cannot find the file specified",
    ];
    if invalid_command.iter().any(|m| lower.contains(m)) {
        return (127, message.to_string());
    }
    (128, message.to_string())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LaunchError + '_ {
    move |source| LaunchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the spec and spawns the runtime, then waits for its sync message.
pub async fn launch(
    runtime: &Path,
    dir: &Path,
    spec: &RuntimeSpec,
    stdio: StdioOptions,
) -> Result<Launched, LaunchError> {
    launch_with(runtime, dir, spec, Features::default(), stdio).await
}

/// [`launch`] with the optional runtime features (limits, capabilities…). A TTY container
/// gets its terminal through a console socket, so it is the container's own `/dev/pts/0`.
pub async fn launch_with(
    runtime: &Path,
    dir: &Path,
    spec: &RuntimeSpec,
    mut features: Features,
    stdio: StdioOptions,
) -> Result<Launched, LaunchError> {
    let console = if spec.process.terminal {
        let socket = ConsoleSocket::bind().map_err(console_err)?;
        features.console_socket = Some(socket.path().to_path_buf());
        Some(socket)
    } else {
        features.console_socket = None;
        None
    };
    let file = SpecFile {
        spec: spec.clone(),
        features,
    };
    let spec_path = dir.join(SPEC_FILE);
    let json = serde_json::to_vec_pretty(&file).map_err(|e| LaunchError::Io {
        path: spec_path.clone(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(&spec_path, &json)?;
    // It holds the container's environment: as private as its record.
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(
            &spec_path,
            fs::Permissions::from_mode(crate::state::modes::CONFIG_FILE),
        )
        .map_err(io_err(&spec_path))?;
    }
    let args = [OsString::from("run"), dir.as_os_str().to_os_string()];
    spawn_runtime(
        runtime,
        &args,
        &spec.id,
        spec.process.terminal,
        console,
        stdio,
    )
    .await
}

fn console_err(err: ConsoleError) -> LaunchError {
    LaunchError::Io {
        path: PathBuf::from("/dev/ptmx"),
        source: std::io::Error::other(err.to_string()),
    }
}

/// The runtime through one read-only overlay view per engine
/// (`rmachine_runtime::exeseal::overlay_view`): a runtime started from it is sealed already,
/// which spares every run and exec the runtime's own overlay mount and re-exec (2–4 ms each
/// here). `None` when no view can be made: the runtime then seals itself. The view holds the
/// binary the engine first started: a runtime replaced on disk takes effect at the engine's
/// restart.
fn sealed_runtime(runtime: &Path, scratch: &Path) -> Option<Arc<OwnedFd>> {
    static VIEWS: Mutex<Vec<(PathBuf, Option<Arc<OwnedFd>>)>> = Mutex::new(Vec::new());
    let mut views = VIEWS.lock().ok()?;
    if let Some((_, view)) = views.iter().find(|(path, _)| path == runtime) {
        return view.clone();
    }
    let view = match rmachine_runtime::exeseal::overlay_view(runtime, scratch) {
        Ok(fd) => Some(Arc::new(fd)),
        Err(err) => {
            tracing::debug!(runtime = %runtime.display(), error = %err, "no sealed view of the runtime; it will seal itself");
            None
        }
    };
    views.push((runtime.to_path_buf(), view.clone()));
    view
}

/// Spawns `runtime ARGS…` with the sync pipe and the stdio of a container process (`run` or
/// `exec`), then waits for its sync message. With `console`, the terminal comes back over the
/// console socket and the runtime's own stdio is /dev/null; with `terminal` and no `console`,
/// the engine opens the PTY itself.
pub async fn spawn_runtime(
    runtime: &Path,
    args: &[OsString],
    id: &str,
    terminal: bool,
    console: Option<ConsoleSocket>,
    stdio: StdioOptions,
) -> Result<Launched, LaunchError> {
    let (sync_read, sync_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| LaunchError::Io {
            path: runtime.to_path_buf(),
            source: e.into(),
        })?;

    // `args` are `run DIR` or `exec DIR FILE`: DIR's parent, the engine's containers directory,
    // lasts as long as the engine, as the view's second layer must.
    let view = args
        .get(1)
        .and_then(|dir| Path::new(dir).parent())
        .and_then(|containers| sealed_runtime(runtime, containers))
        // The child's stdio and sync pipe are dup'ed onto 0–3 before the exec resolves the path.
        .filter(|view| view.as_raw_fd() > SYNC_FD);
    let mut cmd = match &view {
        Some(view) => {
            // The kernel resolves the path before it closes the close-on-exec descriptor.
            let mut cmd = Command::new(format!("/proc/self/fd/{}", view.as_raw_fd()));
            cmd.arg0(runtime);
            cmd
        }
        None => Command::new(runtime),
    };
    cmd.args(args)
        .env(PARENT_PID_ENV, std::process::id().to_string())
        .kill_on_drop(false);
    let mut pty_master = None;
    if console.is_some() {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    } else if terminal {
        let size = stdio.console_size.map(|(rows, cols)| nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        });
        let pty = nix::pty::openpty(size.as_ref(), None).map_err(|e| LaunchError::Io {
            path: PathBuf::from("/dev/ptmx"),
            source: e.into(),
        })?;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(io_err(Path::new("/dev/ptmx")));
        cmd.stdin(Stdio::from(dup(&pty.slave)?))
            .stdout(Stdio::from(dup(&pty.slave)?))
            .stderr(Stdio::from(pty.slave));
        pty_master = Some(pty.master);
    } else {
        cmd.stdin(if stdio.open_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    }
    let raw = sync_write.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only calls the
    // async-signal-safe functions dup2 and fcntl on a descriptor that is open in the child.
    unsafe {
        cmd.pre_exec(move || {
            if raw == SYNC_FD {
                // dup2 onto itself would keep FD_CLOEXEC set.
                if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, SYNC_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The command holds copies of the PTY slave and the sync pipe's write end: both are closed
    // with it on the spawner thread, or the engine would never see end-of-file on them.
    let spawned = spawn_on_engine_thread(cmd).await;
    drop(sync_write);
    let mut child = spawned.map_err(|source| LaunchError::Spawn {
        runtime: runtime.to_path_buf(),
        source,
    })?;
    // Accepted while the sync pipe is read: the runtime blocks until the master is taken.
    let console_size = stdio.console_size;
    let mut console = console.map(|socket| {
        AbortOnDrop(tokio::spawn(async move {
            let master = socket.receive().await?;
            if let Some((rows, cols)) = console_size {
                let _ = super::console::set_size(&master, rows, cols);
            }
            Ok::<_, ConsoleError>(master)
        }))
    });

    let message = match tokio::time::timeout(SYNC_TIMEOUT, read_sync(sync_read)).await {
        Ok(Ok(Some(message))) => message,
        Ok(Ok(None)) => {
            let status = child.wait().await.ok();
            return Err(LaunchError::NoReport {
                id: id.to_string(),
                reason: format!(
                    "it exited with {}",
                    status.map_or_else(|| "unknown status".into(), |s| s.to_string())
                ),
            });
        }
        Ok(Err(reason)) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(LaunchError::NoReport {
                id: id.to_string(),
                reason,
            });
        }
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(LaunchError::NoReport {
                id: id.to_string(),
                reason: format!("no answer within {}s", SYNC_TIMEOUT.as_secs()),
            });
        }
    };
    match message {
        SyncMessage::Started { pid } => {
            if let Some(task) = console.as_mut() {
                let master = match tokio::time::timeout(SYNC_TIMEOUT, &mut task.0).await {
                    Ok(Ok(Ok(master))) => master,
                    Ok(Ok(Err(err))) => {
                        let _ = child.start_kill();
                        return Err(console_err(err));
                    }
                    _ => {
                        let _ = child.start_kill();
                        return Err(LaunchError::NoReport {
                            id: id.to_string(),
                            reason: "no terminal on the console socket".into(),
                        });
                    }
                };
                pty_master = Some(master);
            }
            let io = match pty_master {
                Some(master) => LaunchIo::Pty { master },
                None => {
                    let stdout = child.stdout.take();
                    let stderr = child.stderr.take();
                    match (stdout, stderr) {
                        (Some(stdout), Some(stderr)) => LaunchIo::Pipes {
                            stdin: child.stdin.take(),
                            stdout,
                            stderr,
                        },
                        _ => {
                            return Err(LaunchError::NoReport {
                                id: id.to_string(),
                                reason: "its output pipes are missing".into(),
                            })
                        }
                    }
                }
            };
            Ok(Launched { child, pid, io })
        }
        SyncMessage::Failed(failed) => {
            // The runtime exits right after reporting; reap it so no zombie is left.
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
            Err(LaunchError::Failed(failed))
        }
    }
}

/// A job for the spawner thread.
type SpawnJob = Box<dyn FnOnce() + Send>;

/// Spawns `cmd` on a thread that never exits (see the module doc: the runtime's parent-death
/// signal follows the forking thread), within the caller's tokio runtime so the child is reaped
/// by it, and drops `cmd` there.
async fn spawn_on_engine_thread(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<SpawnJob>>> =
        std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (jobs, queue) = std::sync::mpsc::channel::<SpawnJob>();
        let started = std::thread::Builder::new()
            .name("runtime-spawner".into())
            .spawn(move || {
                for job in queue {
                    job();
                }
            });
        if let Err(err) = started {
            tracing::error!(error = %err, "cannot start the runtime spawner thread");
        }
        Mutex::new(jobs)
    });
    let handle = tokio::runtime::Handle::current();
    let (done, spawned) = tokio::sync::oneshot::channel();
    let job: SpawnJob = Box::new(move || {
        let _runtime = handle.enter();
        let mut cmd = cmd;
        let child = cmd.spawn();
        drop(cmd);
        let _ = done.send(child);
    });
    let sent = spawner
        .lock()
        .map_err(|_| std::io::Error::other("the runtime spawner's queue is poisoned"))?
        .send(job);
    if sent.is_err() {
        return Err(std::io::Error::other("the runtime spawner thread is gone"));
    }
    spawned
        .await
        .map_err(|_| std::io::Error::other("the runtime spawner thread dropped a spawn"))?
}

/// Aborts the console-socket task when the start fails before the terminal arrived.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads one JSON line from the sync pipe; `Ok(None)` when it closed without one.
async fn read_sync(fd: OwnedFd) -> Result<Option<SyncMessage>, String> {
    let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
        .map_err(|e| format!("sync pipe: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = pipe
            .read(&mut chunk)
            .await
            .map_err(|e| format!("sync pipe: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.contains(&b'\n') || buf.len() > 64 * 1024 {
            break;
        }
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(line)
        .map(Some)
        .map_err(|e| format!("bad sync message {:?}: {e}", String::from_utf8_lossy(line)))
}

/// Docker's exit code for a finished process: its code, or 128 + the signal that killed it.
pub fn exit_code(status: ExitStatus) -> i64 {
    match (status.code(), status.signal()) {
        (Some(code), _) => i64::from(code),
        (None, Some(signal)) => 128 + i64::from(signal),
        (None, None) => 255,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exec specs carry `docker exec -e` values: 0600 whatever the umask, also over a stale
    /// temp file of a more open mode.
    #[test]
    fn private_writes_are_for_the_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exec-1.json");
        fs::write(path.with_extension("tmp"), b"stale").unwrap();
        fs::set_permissions(
            path.with_extension("tmp"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        write_private(&path, b"{\"env\":[\"TOKEN=x\"]}").unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"{\"env\":[\"TOKEN=x\"]}");
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn the_init_layer_holds_dockers_files_and_goes_on_top() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let lower = with_init_layer(dir.path(), vec!["/image".into()]).unwrap();
        let init = dir.path().join(INIT_LAYER);
        assert_eq!(lower, vec![init.clone(), PathBuf::from("/image")]);
        let meta = fs::metadata(init.join(".dockerenv")).unwrap();
        assert!(meta.is_file());
        assert_eq!((meta.len(), meta.permissions().mode() & 0o7777), (0, 0o755));
        assert_eq!(
            fs::read_link(init.join("etc/mtab")).unwrap(),
            PathBuf::from("/proc/mounts")
        );
        for d in ["dev/pts", "dev/shm", "proc", "sys"] {
            assert!(init.join(d).is_dir(), "{d}");
        }
        // Made once: a second start keeps it.
        fs::write(init.join("marker"), "").unwrap();
        with_init_layer(dir.path(), vec![]).unwrap();
        assert!(init.join("marker").exists());
    }

    #[test]
    fn hosts_is_mobys_default_without_a_hostname_line() {
        assert_eq!(
            hosts_file(&[]),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::\tip6-localnet\nff00::\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
             ff02::2\tip6-allrouters\n"
        );
    }

    #[test]
    fn added_hosts_follow_the_defaults() {
        let hosts = hosts_file(&["db:10.0.0.5".into(), "v6:fd00::1".into()]);
        assert!(
            hosts.ends_with("ff02::2\tip6-allrouters\n10.0.0.5\tdb\nfd00::1\tv6\n"),
            "{hosts}"
        );
    }

    #[test]
    fn exit_codes_follow_the_message_as_in_dockerd() {
        let code = |m: &str| exit_code_from_error(m).0;
        assert_eq!(code("exec: \"/etc\": permission denied"), 126);
        assert_eq!(
            exit_code_from_error("exec: \"/etc\": is a directory"),
            (
                126,
                "exec: \"/etc\": is a directory: permission denied".into()
            )
        );
        assert_eq!(
            code("chdir to cwd (\"/x\") set in config.json failed: no such file or directory"),
            127
        );
        assert_eq!(code("exec: \"x\": executable file not found in $PATH"), 127);
        let (code, message) = exit_code_from_error("chdir: not a directory: unknown");
        assert_eq!(code, 127);
        assert!(
            message.ends_with("Check if the specified host path exists and is the expected type")
        );
        assert_eq!(
            exit_code_from_error("set hostname: invalid argument").0,
            128
        );
    }

    #[test]
    fn resolv_conf_drops_loopback_servers_and_falls_back_to_public_dns() {
        let host = "search lan\nnameserver 127.0.0.53\noptions edns0\n";
        assert_eq!(
            resolv_conf(host),
            "search lan\noptions edns0\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
        let host = "nameserver 10.0.2.3\nnameserver ::1\n";
        assert_eq!(resolv_conf(host), "nameserver 10.0.2.3\n");
    }

    #[test]
    fn signals_map_to_128_plus_n() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }
}
