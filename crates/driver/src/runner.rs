//! The seam between drivers and the programs they run (`qemu-img`, `qemu-system-*`,
//! `VBoxManage`, `powershell.exe`…).
//!
//! Drivers never call `tokio::process` themselves: they describe a command as a
//! [`CommandSpec`] and hand it to a [`CommandRunner`]. In production that is [`TokioRunner`];
//! in unit tests it is a [`RecordingRunner`] that checks the exact argv of every call against a
//! list of expectations and answers with canned output, so a driver's tests need no hypervisor.
//!
//! Every run is logged at `debug`: argv, then exit status, stdout and stderr.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::DriverError;

/// A command to run: program, arguments and the environment it runs in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandSpec {
    /// The program, as a name looked up on `PATH` or a path.
    pub program: String,
    /// Arguments, without the program.
    pub args: Vec<String>,
    /// Bytes written to the program's stdin (stdin is closed after them; null if `None`).
    pub stdin: Option<Vec<u8>>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Working directory; the caller's if `None`.
    pub current_dir: Option<PathBuf>,
    /// Kill the program after this long; the output then has `timed_out` set.
    pub timeout: Option<Duration>,
    /// What to install when the program is missing, for [`DriverError::MissingProgram`].
    pub install_hint: String,
}

impl CommandSpec {
    /// A command running `program` with no arguments.
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            ..Self::default()
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Feeds `bytes` to the program's stdin.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Sets an environment variable for the program.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs the program in `dir`.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Kills the program if it runs longer than `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// What the user should install if the program is missing.
    pub fn install_hint(mut self, hint: impl Into<String>) -> Self {
        self.install_hint = hint.into();
        self
    }

    /// The program followed by its arguments, as [`RecordingRunner`] compares them.
    pub fn argv(&self) -> Vec<String> {
        std::iter::once(self.program.clone())
            .chain(self.args.iter().cloned())
            .collect()
    }

    fn missing(&self) -> DriverError {
        DriverError::MissingProgram {
            program: self.program.clone(),
            hint: if self.install_hint.is_empty() {
                "install it or put it on PATH".to_owned()
            } else {
                self.install_hint.clone()
            },
        }
    }
}

/// What a finished command produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit status; -1 if the program was killed by a signal or by the timeout.
    pub status: i32,
    /// Everything it wrote on stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote on stderr.
    pub stderr: Vec<u8>,
    /// The program ran past [`CommandSpec::timeout`] and was killed.
    pub timed_out: bool,
}

impl CommandOutput {
    /// A canned successful output with `stdout`.
    pub fn success(stdout: impl Into<Vec<u8>>) -> Self {
        Self {
            stdout: stdout.into(),
            ..Self::default()
        }
    }

    /// A canned failed output with exit `status` and `stderr`.
    pub fn failure(status: i32, stderr: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            stderr: stderr.into(),
            ..Self::default()
        }
    }

    /// A canned output of a program killed by the timeout, after printing `stdout`.
    pub fn timeout(stdout: impl Into<Vec<u8>>) -> Self {
        Self {
            status: -1,
            stdout: stdout.into(),
            timed_out: true,
            ..Self::default()
        }
    }

    /// Whether the program exited with status 0 in time.
    pub fn is_success(&self) -> bool {
        self.status == 0 && !self.timed_out
    }

    /// Stdout as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as text (lossy).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// `Ok(self)` if the program succeeded, else [`DriverError::CommandFailed`] carrying its
    /// trimmed stderr (or a note that it timed out).
    pub fn check(self, program: &str) -> Result<Self, DriverError> {
        if self.is_success() {
            return Ok(self);
        }
        Err(self.failed(program))
    }

    /// The [`DriverError::CommandFailed`] describing this output.
    pub fn failed(&self, program: &str) -> DriverError {
        let mut stderr = self.stderr_text().trim().to_owned();
        if self.timed_out {
            if !stderr.is_empty() {
                stderr.push_str("; ");
            }
            stderr.push_str("killed after timing out");
        }
        DriverError::CommandFailed {
            program: program.to_owned(),
            status: self.status,
            stderr,
        }
    }
}

/// The future a [`CommandRunner`] returns; boxed so that drivers can hold an
/// `Arc<dyn CommandRunner>`.
pub type RunFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, DriverError>> + Send + 'a>>;

/// Runs external programs for a driver.
pub trait CommandRunner: Send + Sync {
    /// Runs `cmd` to completion (or to its timeout) and returns what it printed.
    ///
    /// A non-zero exit is not an error here (callers decide; see [`CommandOutput::check`]);
    /// a missing program is [`DriverError::MissingProgram`] with the spec's install hint.
    fn run<'a>(&'a self, cmd: &'a CommandSpec) -> RunFuture<'a, CommandOutput>;

    /// Starts a long-running program detached from the caller (its own process group, stdin
    /// null, stdout and stderr appended to `log`) and returns its process id without waiting.
    ///
    /// For hypervisors that cannot daemonize themselves (QEMU on Windows has no `-daemonize`)
    /// and helper daemons (virtiofsd).
    fn spawn_detached<'a>(&'a self, cmd: &'a CommandSpec, log: &'a Path) -> RunFuture<'a, Spawned>;
}

/// A program started by [`CommandRunner::spawn_detached`]: its pid and, for a real process,
/// the handle that says whether it has exited.
///
/// Ask [`Spawned::exit_status`], not `/proc`, whether a program just started still runs: for
/// a moment after `spawn` returns the kernel is still loading the program (longer when its
/// file is not in the page cache) and `/proc/PID/cmdline` reads empty, so a check that looks
/// for an argument there takes a live program for a stranger. The handle also cannot mistake
/// a reused pid: an exited child keeps its pid until it is reaped. Dropping it neither kills
/// nor reaps the program (it outlives this process). Nothing may reap the program behind the
/// handle (a `waitpid(-1)`, SIGCHLD ignored): the handle then reports `ECHILD`, and a caller
/// can only fall back to whether the pid exists.
#[derive(Debug)]
pub struct Spawned {
    pid: u32,
    child: Option<std::process::Child>,
    /// A recorded spawn's canned end.
    exited: Option<std::process::ExitStatus>,
}

impl Spawned {
    /// A spawn without a process behind it (a [`RecordingRunner`]'s): it counts as running.
    pub fn recorded(pid: u32) -> Self {
        Self {
            pid,
            child: None,
            exited: None,
        }
    }

    /// A spawn without a process behind it that has already ended with `status`.
    pub fn recorded_exited(pid: u32, status: std::process::ExitStatus) -> Self {
        Self {
            pid,
            child: None,
            exited: Some(status),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How the program ended, or `None` while it runs (a recorded spawn: its canned end).
    pub fn exit_status(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        match &mut self.child {
            Some(child) => child.try_wait(),
            None => Ok(self.exited),
        }
    }

    /// Kills the program and reaps it, for a caller giving up on a program it just started
    /// (so it neither keeps running unrecorded nor lingers as a zombie). A program that has
    /// already exited is only reaped; a recorded spawn has nothing to kill.
    pub fn kill_and_reap(&mut self) {
        if let Some(child) = &mut self.child {
            if let Err(err) = child.kill() {
                tracing::debug!(pid = self.pid, %err, "kill of a spawned program failed");
            }
            if let Err(err) = child.wait() {
                tracing::debug!(pid = self.pid, %err, "reaping a spawned program failed");
            }
        }
    }
}

fn log_output(argv: &[String], out: &CommandOutput) {
    tracing::debug!(
        ?argv,
        status = out.status,
        timed_out = out.timed_out,
        stdout = %String::from_utf8_lossy(&out.stdout),
        stderr = %String::from_utf8_lossy(&out.stderr),
        "command finished"
    );
}

/// The real runner, on `tokio::process`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioRunner;

impl TokioRunner {
    fn command(cmd: &CommandSpec) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&cmd.program);
        command.args(&cmd.args);
        for (key, value) in &cmd.env {
            command.env(key, value);
        }
        if let Some(dir) = &cmd.current_dir {
            command.current_dir(dir);
        }
        only_standard_descriptors(command.as_std_mut());
        command
    }

    async fn run_inner(cmd: &CommandSpec) -> Result<CommandOutput, DriverError> {
        let argv = cmd.argv();
        tracing::debug!(?argv, "running command");
        let mut command = Self::command(cmd);
        command
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Dropping the wait future on timeout must not leave the program running.
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| spawn_error(cmd, source))?;

        let stdin = child.stdin.take();
        let input = cmd.stdin.clone();
        let feed = async move {
            if let (Some(mut pipe), Some(bytes)) = (stdin, input) {
                // A program that exits without reading its stdin closes the pipe: that is its
                // business, and its exit status tells the story.
                let _ = pipe.write_all(&bytes).await;
            }
        };
        let wait = async {
            let (_, output) = tokio::join!(feed, child.wait_with_output());
            output
        };
        let output = match cmd.timeout {
            None => Some(wait.await),
            Some(limit) => tokio::time::timeout(limit, wait).await.ok(),
        };
        let out = match output {
            Some(Ok(output)) => CommandOutput {
                status: output.status.code().unwrap_or(-1),
                stdout: output.stdout,
                stderr: output.stderr,
                timed_out: false,
            },
            Some(Err(source)) => {
                return Err(DriverError::CommandFailed {
                    program: cmd.program.clone(),
                    status: -1,
                    stderr: format!("cannot collect its output: {source}"),
                })
            }
            // The child was dropped with the future, and `kill_on_drop` killed it; what it
            // printed so far is lost with the pipes.
            None => CommandOutput::timeout(Vec::new()),
        };
        log_output(&argv, &out);
        Ok(out)
    }

    async fn spawn_inner(cmd: &CommandSpec, log: &Path) -> Result<Spawned, DriverError> {
        let argv = cmd.argv();
        tracing::debug!(?argv, log = %log.display(), "spawning detached command");
        let open_log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
        };
        let io_error = |source| DriverError::CommandFailed {
            program: cmd.program.clone(),
            status: -1,
            stderr: format!("cannot open log {}: {source}", log.display()),
        };
        let stdout = open_log().map_err(io_error)?;
        let stderr = open_log().map_err(io_error)?;
        let mut command = std::process::Command::new(&cmd.program);
        command.args(&cmd.args);
        for (key, value) in &cmd.env {
            command.env(key, value);
        }
        if let Some(dir) = &cmd.current_dir {
            command.current_dir(dir);
        }
        command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        only_standard_descriptors(&mut command);
        detach(&mut command);
        // std, not tokio: the child must outlive this process, and tokio would reap it.
        let child = command.spawn().map_err(|source| spawn_error(cmd, source))?;
        let pid = child.id();
        tracing::debug!(?argv, pid, "spawned");
        Ok(Spawned {
            pid,
            child: Some(child),
            exited: None,
        })
    }
}

/// Makes the program start with stdin, stdout and stderr only (for every program that outlives
/// the `rmachine` command that starts it: QEMU, the port agent, sshfs).
///
/// Rust opens its own descriptors close-on-exec, but a caller can hand `rmachine` descriptors
/// that are not (a test runner's pipe, cargo's jobserver, a shell's `3>&1`). QEMU daemonizes and
/// runs for as long as the machine does, so a descriptor it inherits keeps the caller's pipe
/// open and `$(rmachine create x)` waits until the machine stops.
#[cfg(unix)]
pub fn only_standard_descriptors(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls the
    // async-signal-safe `close_range`/`sysconf`/`fcntl`; it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(|| {
            cloexec_from(3);
            Ok(())
        });
    }
}

/// Makes the program start with stdin, stdout and stderr only: nothing to do on Windows.
#[cfg(not(unix))]
pub fn only_standard_descriptors(_command: &mut std::process::Command) {
    // Windows handles are inherited only when marked inheritable, and Rust marks none but the
    // standard ones it passes.
}

/// Marks every descriptor from `first` up close-on-exec. Marking, not closing: the pipe through
/// which std reports a failed exec must stay open until the exec.
#[cfg(unix)]
fn cloexec_from(first: libc::c_int) {
    #[cfg(target_os = "linux")]
    {
        let Ok(first) = libc::c_uint::try_from(first) else {
            return;
        };
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
        let done = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if done == 0 {
            return;
        }
        // Older than Linux 5.11: fall through to marking them one by one.
    }
    // SAFETY: sysconf has no preconditions.
    let limit = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
    // An unlimited or absurd limit would make this loop run for minutes; descriptors that high
    // are not handed down by any caller we know of.
    let last = if (0..=1 << 20).contains(&limit) {
        libc::c_int::try_from(limit).unwrap_or(1 << 20)
    } else {
        1 << 20
    };
    for fd in first..last {
        // SAFETY: F_SETFD on a descriptor that may not be open just fails with EBADF.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

#[cfg(unix)]
fn detach(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // Its own process group: a Ctrl-C in the user's terminal must not reach the VM.
    command.process_group(0);
}

#[cfg(windows)]
fn detach(command: &mut std::process::Command) {
    use std::os::windows::process::CommandExt;
    const DETACHED_PROCESS: u32 = 0x0000_0008;
    const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
    command.creation_flags(DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP);
}

#[cfg(not(any(unix, windows)))]
fn detach(_command: &mut std::process::Command) {}

fn spawn_error(cmd: &CommandSpec, source: std::io::Error) -> DriverError {
    if source.kind() == std::io::ErrorKind::NotFound {
        return cmd.missing();
    }
    DriverError::CommandFailed {
        program: cmd.program.clone(),
        status: -1,
        stderr: format!("cannot start it: {source}"),
    }
}

impl CommandRunner for TokioRunner {
    fn run<'a>(&'a self, cmd: &'a CommandSpec) -> RunFuture<'a, CommandOutput> {
        Box::pin(Self::run_inner(cmd))
    }

    fn spawn_detached<'a>(&'a self, cmd: &'a CommandSpec, log: &'a Path) -> RunFuture<'a, Spawned> {
        Box::pin(Self::spawn_inner(cmd, log))
    }
}

/// What a [`RecordingRunner`] answers to one expected call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CannedReply {
    /// Answer a [`CommandRunner::run`] with this output.
    Output(CommandOutput),
    /// Answer a [`CommandRunner::run`] with "program not found".
    Missing,
    /// Answer a [`CommandRunner::spawn_detached`] with this process id.
    Spawned(u32),
    /// Answer a [`CommandRunner::spawn_detached`] with this process id, of a program that has
    /// already ended with this status.
    SpawnedExited(u32, std::process::ExitStatus),
}

impl CannedReply {
    fn is_spawn(&self) -> bool {
        matches!(self, Self::Spawned(_) | Self::SpawnedExited(..))
    }
}

/// One call a [`RecordingRunner`] expects, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    /// The exact argv (program first).
    pub argv: Vec<String>,
    /// What to answer.
    pub reply: CannedReply,
}

#[derive(Debug, Default)]
struct Recording {
    expected: VecDeque<Expectation>,
    calls: Vec<CommandSpec>,
    mismatches: Vec<String>,
}

/// A fake runner for unit tests: checks each call's exact argv against the next expectation,
/// records it, and answers with the canned reply. A call that does not match is an error naming
/// the expected and the actual argv, and makes [`RecordingRunner::assert_done`] panic too, so a
/// driver that swallows the error still fails its test.
#[derive(Debug, Default)]
pub struct RecordingRunner {
    inner: Mutex<Recording>,
}

impl RecordingRunner {
    /// A runner expecting these `run` calls in this order.
    pub fn new<I, A, S>(expectations: I) -> Self
    where
        I: IntoIterator<Item = (A, CommandOutput)>,
        A: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let runner = Self::default();
        for (argv, output) in expectations {
            runner.expect(argv, CannedReply::Output(output));
        }
        runner
    }

    /// Appends an expected call.
    pub fn expect<A, S>(&self, argv: A, reply: CannedReply) -> &Self
    where
        A: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let argv = argv.into_iter().map(Into::into).collect();
        self.lock().expected.push_back(Expectation { argv, reply });
        self
    }

    /// Every call made so far, in order.
    pub fn calls(&self) -> Vec<CommandSpec> {
        self.lock().calls.clone()
    }

    /// Panics unless every expectation was used and no call mismatched.
    #[track_caller]
    pub fn assert_done(&self) {
        let recording = self.lock();
        assert!(
            recording.mismatches.is_empty(),
            "unexpected commands: {}",
            recording.mismatches.join("; ")
        );
        let left: Vec<_> = recording.expected.iter().map(|e| &e.argv).collect();
        assert!(left.is_empty(), "expected commands never ran: {left:?}");
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recording> {
        // A test that panicked while holding the lock already failed; the recording is
        // still worth reading.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn answer(&self, cmd: &CommandSpec, spawn: bool) -> Result<CannedReply, DriverError> {
        let argv = cmd.argv();
        let mut recording = self.lock();
        recording.calls.push(cmd.clone());
        let kind_matches = |reply: &CannedReply| reply.is_spawn() == spawn;
        let message = match recording.expected.front() {
            Some(next) if next.argv == argv && kind_matches(&next.reply) => {
                let reply = next.reply.clone();
                recording.expected.pop_front();
                tracing::debug!(?argv, ?reply, "recorded command");
                return Ok(reply);
            }
            Some(next) => format!(
                "expected {}{:?}, got {}{:?}",
                if next.reply.is_spawn() { "spawn " } else { "" },
                next.argv,
                if spawn { "spawn " } else { "" },
                argv
            ),
            None => format!("expected no more commands, got {argv:?}"),
        };
        recording.mismatches.push(message.clone());
        Err(DriverError::CommandFailed {
            program: cmd.program.clone(),
            status: -1,
            stderr: format!("recording runner: {message}"),
        })
    }
}

impl CommandRunner for RecordingRunner {
    fn run<'a>(&'a self, cmd: &'a CommandSpec) -> RunFuture<'a, CommandOutput> {
        let reply = self.answer(cmd, false);
        Box::pin(async move {
            let out = match reply? {
                CannedReply::Output(out) => out,
                CannedReply::Missing => return Err(cmd.missing()),
                CannedReply::Spawned(_) | CannedReply::SpawnedExited(..) => {
                    unreachable!("answer() matched a run with a run")
                }
            };
            log_output(&cmd.argv(), &out);
            Ok(out)
        })
    }

    fn spawn_detached<'a>(
        &'a self,
        cmd: &'a CommandSpec,
        _log: &'a Path,
    ) -> RunFuture<'a, Spawned> {
        let reply = self.answer(cmd, true);
        Box::pin(async move {
            match reply? {
                CannedReply::Spawned(pid) => Ok(Spawned::recorded(pid)),
                CannedReply::SpawnedExited(pid, status) => {
                    Ok(Spawned::recorded_exited(pid, status))
                }
                _ => unreachable!("answer() matched a spawn with a spawn"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokio_runner_captures_status_and_streams() {
        let cmd = CommandSpec::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = TokioRunner.run(&cmd).await.expect("sh runs");
        assert_eq!(out.status, 3);
        assert_eq!(out.stdout_text(), "out\n");
        assert_eq!(out.stderr_text(), "err\n");
        let err = out.check("sh").expect_err("exit 3 is a failure");
        assert_eq!(err.to_string(), "sh failed (exit status 3): err");
    }

    #[tokio::test]
    async fn tokio_runner_feeds_stdin_and_env_and_dir() {
        let dir = std::env::temp_dir();
        let cmd = CommandSpec::new("sh")
            .args(["-c", "cat; printf ' %s ' \"$GREETING\"; pwd"])
            .stdin("piped")
            .env("GREETING", "hello")
            .current_dir(&dir);
        let out = TokioRunner.run(&cmd).await.expect("sh runs");
        let canonical = dir.canonicalize().expect("temp dir exists");
        assert_eq!(
            out.stdout_text(),
            format!("piped hello {}\n", canonical.display())
        );
        assert!(out.is_success());
    }

    /// A descriptor this process holds without close-on-exec, as a caller could hand one down.
    #[cfg(target_os = "linux")]
    fn inheritable_descriptor() -> std::os::fd::OwnedFd {
        use std::os::fd::{AsRawFd, FromRawFd};
        let file = std::fs::File::open("/dev/null").expect("open /dev/null");
        // SAFETY: dup of a descriptor we own; the copy (without FD_CLOEXEC) is owned by the
        // returned OwnedFd.
        let raw = unsafe { libc::dup(file.as_raw_fd()) };
        assert!(raw >= 0, "dup failed");
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn programs_run_get_only_the_standard_descriptors() {
        use std::os::fd::AsRawFd;
        let fd = inheritable_descriptor();
        let script = format!(
            "if [ -e /proc/$$/fd/{} ]; then echo leaked; else echo clean; fi",
            fd.as_raw_fd()
        );
        let out = TokioRunner
            .run(&CommandSpec::new("sh").args(["-c", &script]))
            .await
            .expect("sh runs");
        assert_eq!(out.stdout_text(), "clean\n");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn detached_programs_get_only_the_standard_descriptors() {
        let _fd = inheritable_descriptor();
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("log");
        let pid = TokioRunner
            .spawn_detached(&CommandSpec::new("sleep").arg("30"), &log)
            .await
            .expect("sleep starts")
            .pid();
        let descriptors = || {
            let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .expect("read its descriptors")
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect();
            fds.sort();
            fds
        };
        // Right after its exec the program may hold one of its own for a moment (sleep opens
        // its locale files): looked at until that passes; one handed down would stay.
        let mut fds = descriptors();
        for _ in 0..100 {
            if fds == ["0", "1", "2"] {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            fds = descriptors();
        }
        // SAFETY: kill(2) on the pid we just spawned.
        unsafe {
            libc::kill(i32::try_from(pid).expect("pid fits"), libc::SIGKILL);
        }
        assert_eq!(fds, ["0", "1", "2"]);
    }

    #[tokio::test]
    async fn tokio_runner_reports_missing_program_with_hint() {
        let cmd = CommandSpec::new("rmachine-no-such-program").install_hint("apt-get install it");
        let err = TokioRunner.run(&cmd).await.expect_err("not installed");
        assert_eq!(
            err.to_string(),
            "rmachine-no-such-program not found: apt-get install it"
        );
    }

    #[tokio::test]
    async fn tokio_runner_kills_on_timeout() {
        let start = std::time::Instant::now();
        let cmd = CommandSpec::new("sleep")
            .arg("30")
            .timeout(Duration::from_millis(200));
        let out = TokioRunner.run(&cmd).await.expect("sleep runs");
        assert!(out.timed_out);
        assert!(!out.is_success());
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(
            out.failed("sleep").to_string(),
            "sleep failed (exit status -1): killed after timing out"
        );
    }

    #[tokio::test]
    async fn tokio_runner_spawns_detached_with_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("out.log");
        let cmd = CommandSpec::new("sh").args(["-c", "echo spawned; echo oops >&2"]);
        let pid = TokioRunner
            .spawn_detached(&cmd, &log)
            .await
            .expect("sh spawns")
            .pid();
        assert!(pid > 0);
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("oops") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(text.contains("spawned\n"), "log: {text:?}");
        assert!(text.contains("oops\n"), "log: {text:?}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_spawned_program_reports_how_it_ended() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("out.log");
        let wait = |mut spawned: Spawned| async move {
            for _ in 0..500 {
                if let Some(status) = spawned.exit_status().expect("try_wait") {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{} still runs", spawned.pid());
        };
        let mut running = TokioRunner
            .spawn_detached(&CommandSpec::new("sleep").arg("30"), &log)
            .await
            .expect("sleep starts");
        assert_eq!(running.exit_status().expect("try_wait"), None);
        // SAFETY: kill(2) on the pid we just spawned and have not reaped.
        unsafe {
            libc::kill(
                i32::try_from(running.pid()).expect("pid fits"),
                libc::SIGKILL,
            );
        }
        assert_eq!(wait(running).await.signal(), Some(libc::SIGKILL));
        let failing = TokioRunner
            .spawn_detached(&CommandSpec::new("sh").args(["-c", "exit 3"]), &log)
            .await
            .expect("sh starts");
        assert_eq!(wait(failing).await.code(), Some(3));
        let mut recorded = Spawned::recorded(7);
        assert_eq!(recorded.exit_status().expect("no process"), None);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn recording_runner_can_answer_a_spawn_that_exited() {
        use std::os::unix::process::ExitStatusExt;
        let status = std::process::ExitStatus::from_raw(3 << 8);
        let runner = RecordingRunner::default();
        runner.expect(["virtiofsd"], CannedReply::SpawnedExited(9, status));
        let mut spawned = runner
            .spawn_detached(
                &CommandSpec::new("virtiofsd"),
                Path::new("/nonexistent/log"),
            )
            .await
            .expect("spawn expected");
        assert_eq!(spawned.pid(), 9);
        assert_eq!(
            spawned.exit_status().expect("canned").map(|s| s.code()),
            Some(Some(3))
        );
        runner.assert_done();
    }

    #[tokio::test]
    async fn recording_runner_answers_in_order_and_records() {
        let runner = RecordingRunner::new([
            (
                vec!["qemu-img", "--version"],
                CommandOutput::success("qemu-img version 7.2"),
            ),
            (
                vec!["qemu-img", "create"],
                CommandOutput::failure(1, "no file"),
            ),
        ]);
        let first = CommandSpec::new("qemu-img").arg("--version");
        let out = runner.run(&first).await.expect("expected call");
        assert_eq!(out.stdout_text(), "qemu-img version 7.2");
        let second = CommandSpec::new("qemu-img").arg("create").stdin("x");
        let out = runner.run(&second).await.expect("expected call");
        assert_eq!(out.status, 1);
        assert_eq!(runner.calls(), vec![first, second]);
        runner.assert_done();
    }

    #[tokio::test]
    async fn recording_runner_rejects_unexpected_argv() {
        let runner = RecordingRunner::new([(vec!["qemu-img", "info"], CommandOutput::default())]);
        let err = runner
            .run(&CommandSpec::new("qemu-img").arg("check"))
            .await
            .expect_err("argv differs");
        assert_eq!(
            err.to_string(),
            "qemu-img failed (exit status -1): recording runner: expected [\"qemu-img\", \
             \"info\"], got [\"qemu-img\", \"check\"]"
        );
        let panic = std::panic::catch_unwind(|| runner.assert_done()).expect_err("mismatch");
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("unexpected commands"), "{message}");
    }

    #[tokio::test]
    async fn recording_runner_reports_unused_expectations() {
        let runner = RecordingRunner::new([(vec!["true"], CommandOutput::default())]);
        let panic = std::panic::catch_unwind(|| runner.assert_done()).expect_err("unused");
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert_eq!(message, "expected commands never ran: [[\"true\"]]");
    }

    #[tokio::test]
    async fn recording_runner_rejects_calls_past_the_end() {
        let runner = RecordingRunner::default();
        let err = runner
            .run(&CommandSpec::new("true"))
            .await
            .expect_err("nothing expected");
        assert!(err.to_string().contains("expected no more commands"));
    }

    #[tokio::test]
    async fn recording_runner_answers_missing_and_spawn() {
        let runner = RecordingRunner::default();
        runner
            .expect(["qemu-system-x86_64", "--version"], CannedReply::Missing)
            .expect(
                ["qemu-system-x86_64", "-name", "vm"],
                CannedReply::Spawned(42),
            );
        let err = runner
            .run(
                &CommandSpec::new("qemu-system-x86_64")
                    .arg("--version")
                    .install_hint("apt-get install qemu-system-x86"),
            )
            .await
            .expect_err("missing");
        assert!(matches!(err, DriverError::MissingProgram { .. }));
        let pid = runner
            .spawn_detached(
                &CommandSpec::new("qemu-system-x86_64").args(["-name", "vm"]),
                Path::new("/nonexistent/log"),
            )
            .await
            .expect("spawn expected")
            .pid();
        assert_eq!(pid, 42);
        runner.assert_done();
    }

    #[tokio::test]
    async fn recording_runner_does_not_confuse_run_and_spawn() {
        let runner = RecordingRunner::default();
        runner.expect(["qemu"], CannedReply::Spawned(7));
        let err = runner
            .run(&CommandSpec::new("qemu"))
            .await
            .expect_err("a run is not a spawn");
        assert!(
            err.to_string().contains("expected spawn [\"qemu\"]"),
            "{err}"
        );
    }
}
