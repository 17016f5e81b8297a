//! External drivers: `rmachine-driver-NAME` programs on PATH, driven with the protocol of
//! [`rmachine_driver::protocol`] (described in `docs/driver-protocol.md`).
//!
//! Every operation is one short session: the plugin is started, shakes hands, answers one
//! request and sees its stdin close. A plugin thus keeps no state between operations except
//! what it writes to the machine directory, exactly as a built-in driver does.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rmachine_driver::protocol::{
    Call, ErrorKind, Flag, FlagsResult, HandshakeResult, MachineRef, Options, Reply, Request,
    StopRequest, PROGRAM_PREFIX, PROTOCOL_VERSION,
};
use rmachine_driver::{
    Driver, DriverError, DriverInfo, Endpoints, MachineDir, StopMode, VmSpec, VmState,
};

/// The most of a plugin's stderr kept for error messages.
const STDERR_KEEP: usize = 4096;

/// The most of a garbage reply quoted in an error.
const QUOTE_MAX: usize = 80;

/// The longest reply line read from a plugin (no reply of the protocol comes near it); a
/// longer one ends the plugin rather than fill the host's memory.
pub const MAX_LINE: usize = 1 << 20;

/// How long rmachine waits for a plugin's reply to `call` (documented in
/// `docs/driver-protocol.md`): generous where a VM is made or booted, short for questions.
pub fn reply_timeout(call: &Call) -> Duration {
    let seconds = match call {
        Call::Handshake { .. } | Call::Flags {} => 30,
        Call::State { .. } | Call::Endpoints { .. } => 60,
        Call::Precheck { .. } => 120,
        Call::Create { .. } | Call::Start { .. } => 1200,
        Call::Remove { .. } => 600,
        Call::Stop {
            mode: StopRequest::Graceful { timeout_seconds },
            ..
        } => timeout_seconds.saturating_add(120),
        Call::Stop { .. } => 120,
    };
    Duration::from_secs(seconds)
}

/// Chooses the reply timeout of each request.
pub type Timeouts = fn(&Call) -> Duration;

/// How often a session waiting for a reply checks whether its caller gave up.
const ABANDON_POLL: Duration = Duration::from_millis(100);

/// The longest a caller that gave up on a request waits for its plugin to be ended and reaped.
const ABANDON_WAIT: Duration = Duration::from_secs(15);

/// A request running on a blocking thread, shared with the async caller: a caller that gives
/// up (its future dropped, e.g. `create` interrupted by a signal) marks it abandoned, and the
/// session ends its plugin and says when it is gone. A request made inside a
/// [`PluginScope`] is also abandoned with its scope.
#[derive(Default)]
struct Flight {
    state: Mutex<FlightState>,
    changed: Condvar,
    scope: Option<Arc<PluginScope>>,
}

tokio::task_local! {
    static SCOPE: Arc<PluginScope>;
}

/// The plugins started on behalf of one caller that may give up on all of them at once,
/// e.g. `ls`'s query of one machine when its `--timeout` passes: the query's thread may stay
/// blocked in a plugin's handshake, and the process must not exit leaving that plugin running.
#[derive(Default)]
pub struct PluginScope {
    state: Mutex<ScopeState>,
    changed: Condvar,
}

#[derive(Default)]
struct ScopeState {
    abandoned: bool,
    /// Plugins started in the scope and not yet ended.
    live: usize,
}

impl PluginScope {
    /// Runs `fut` with every plugin it starts (also from blocking threads it spawns for
    /// requests) belonging to this scope.
    pub async fn run<F: std::future::Future>(self: &Arc<Self>, fut: F) -> F::Output {
        SCOPE.scope(Arc::clone(self), fut).await
    }

    /// Gives up on the scope: no plugin starts in it any more, those running are ended (their
    /// whole process group) by the threads that talk to them, and this waits (bounded) until
    /// they are reaped.
    pub fn abandon(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.abandoned = true;
        let deadline = Instant::now() + ABANDON_WAIT;
        while state.live > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!("driver plugin still running after its caller gave up");
                return;
            }
            state = match self.changed.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(_) => return,
            };
        }
    }

    fn abandoned(&self) -> bool {
        self.state.lock().map(|s| s.abandoned).unwrap_or(true)
    }

    /// Counts a plugin about to start, unless the scope is abandoned already.
    fn enter(self: &Arc<Self>) -> Option<InScope> {
        let mut state = self.state.lock().ok()?;
        if state.abandoned {
            return None;
        }
        state.live += 1;
        Some(InScope(Arc::clone(self)))
    }
}

/// A plugin counted in its scope; dropped once the plugin has ended (or was never started).
struct InScope(Arc<PluginScope>);

impl Drop for InScope {
    fn drop(&mut self) {
        if let Ok(mut state) = self.0.state.lock() {
            state.live = state.live.saturating_sub(1);
        }
        self.0.changed.notify_all();
    }
}

#[derive(Default)]
struct FlightState {
    abandoned: bool,
    finished: bool,
}

impl Flight {
    /// A flight in the caller's [`PluginScope`], if it runs in one.
    fn in_callers_scope() -> Self {
        Self {
            scope: SCOPE.try_with(Arc::clone).ok(),
            ..Self::default()
        }
    }

    fn abandoned(&self) -> bool {
        self.state.lock().map(|s| s.abandoned).unwrap_or(true)
            || self.scope.as_ref().is_some_and(|scope| scope.abandoned())
    }

    fn finish(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.finished = true;
        }
        self.changed.notify_all();
    }

    /// Marks the request abandoned and waits (bounded) until its plugin is ended and reaped, so
    /// that nothing the caller does next (e.g. `remove`) runs beside it.
    fn abandon(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.abandoned = true;
        let deadline = Instant::now() + ABANDON_WAIT;
        while !state.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!("driver plugin still running after its request was abandoned");
                return;
            }
            state = match self.changed.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(_) => return,
            };
        }
    }
}

/// Abandons its request when dropped before the request finished.
struct AbandonOnDrop(Arc<Flight>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// Marks its request finished when dropped (also when the blocking thread panics).
struct FinishOnDrop(Arc<Flight>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// What the stdout reader thread hands over: one reply line, or why there is none.
enum Line {
    Text(String),
    TooLong,
    Unreadable(std::io::Error),
}

/// Whether `name` can name a plugin (no path separators or oddities in a program name).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}

fn program_file(name: &str) -> String {
    let file = format!("{PROGRAM_PREFIX}{name}");
    if cfg!(windows) {
        format!("{file}.exe")
    } else {
        file
    }
}

/// The program providing driver `name`, the first `rmachine-driver-NAME` on PATH.
pub fn find(name: &str) -> Option<PathBuf> {
    if !valid_name(name) {
        return None;
    }
    let file = program_file(name);
    path_dirs()
        .into_iter()
        .map(|dir| dir.join(&file))
        .find(|path| is_executable(path))
}

/// Names of the drivers provided by programs on PATH, sorted.
pub fn available() -> Vec<String> {
    let mut names: Vec<String> = path_dirs()
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let file = entry.file_name().into_string().ok()?;
            let file = if cfg!(windows) {
                file.strip_suffix(".exe")?.to_string()
            } else {
                file
            };
            let name = file.strip_prefix(PROGRAM_PREFIX)?;
            (valid_name(name) && is_executable(&entry.path())).then(|| name.to_string())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A driver served by an `rmachine-driver-NAME` program.
#[derive(Debug, Clone)]
pub struct ExternalDriver {
    name: String,
    program: PathBuf,
    options: Options,
    info: DriverInfo,
    timeouts: Timeouts,
}

impl ExternalDriver {
    /// Starts the plugin for driver `name` at `program` once to check that it speaks our
    /// protocol and to learn its capabilities; `options` go with every later request.
    pub fn open(name: &str, program: &Path, options: Options) -> Result<Self, DriverError> {
        let (session, info) = Session::open(name, program, reply_timeout)?;
        session.close();
        Ok(Self {
            name: name.to_string(),
            program: program.to_path_buf(),
            options,
            info,
            timeouts: reply_timeout,
        })
    }

    /// Replaces the reply timeouts (tests).
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// The plugin's `create` flags, each checked to start with `NAME-`.
    pub fn flags(name: &str, program: &Path) -> Result<Vec<Flag>, DriverError> {
        let (mut session, _) = Session::open(name, program, reply_timeout)?;
        let value = session.request(Call::Flags {})?;
        session.close();
        let result: FlagsResult = serde_json::from_value(value).map_err(|e| {
            plugin_error(
                name,
                format!(
                    "{} sent a flags result that does not parse: {e}",
                    program.display()
                ),
            )
        })?;
        let prefix = format!("{name}-");
        if let Some(bad) = result
            .flags
            .iter()
            .find(|f| !f.name.starts_with(&prefix) || f.name.len() == prefix.len())
        {
            return Err(plugin_error(
                name,
                format!(
                    "{} declares the flag --{}, but its flags must start with --{prefix}",
                    program.display(),
                    bad.name
                ),
            ));
        }
        Ok(result.flags)
    }

    fn machine(dir: &MachineDir) -> MachineRef {
        MachineRef::from(dir)
    }

    /// One request in a session of its own, off the async runtime's threads. Dropping the
    /// future before it resolves ends the plugin (its whole process group on Unix) and waits
    /// for it to be reaped: an interrupted `create` must not leave a plugin creating beside
    /// the `remove` that undoes it.
    async fn call(&self, call: Call) -> Result<serde_json::Value, DriverError> {
        let name = self.name.clone();
        let program = self.program.clone();
        let method = call.method();
        let timeouts = self.timeouts;
        let flight = Arc::new(Flight::in_callers_scope());
        let in_thread = Arc::clone(&flight);
        let abandon = AbandonOnDrop(flight);
        let result = tokio::task::spawn_blocking(move || {
            let _finished = FinishOnDrop(Arc::clone(&in_thread));
            let (mut session, _) = Session::open_in(&name, &program, timeouts, in_thread)?;
            let value = session.request(call)?;
            session.close();
            Ok(value)
        })
        .await;
        // The request finished: dropping the guard now returns at once.
        drop(abandon);
        result
            .map_err(|e| plugin_error(&self.name, format!("the {method} request was lost: {e}")))?
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        value: serde_json::Value,
    ) -> Result<T, DriverError> {
        serde_json::from_value(value).map_err(|e| {
            plugin_error(
                &self.name,
                format!(
                    "{} answered {method} with a result that does not parse: {e}",
                    self.program.display()
                ),
            )
        })
    }
}

fn plugin_error(name: &str, message: String) -> DriverError {
    DriverError::Plugin {
        driver: name.to_string(),
        message,
    }
}

fn quote(line: &str) -> String {
    let mut quoted: String = line.chars().take(QUOTE_MAX).collect();
    if quoted.len() < line.len() {
        quoted.push('…');
    }
    format!("{quoted:?}")
}

/// One running plugin process.
struct Session {
    name: String,
    program: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
    /// Reply lines, read by a thread of their own so that a silent plugin can time out.
    stdout: Receiver<Line>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    next_id: u64,
    timeouts: Timeouts,
    /// Whether the caller still waits for this session.
    flight: Arc<Flight>,
    /// Counts the plugin in its caller's scope until the session ends; declared last, so it
    /// drops after the fields above.
    _in_scope: Option<InScope>,
}

impl Session {
    /// Starts the plugin and shakes hands.
    fn open(
        name: &str,
        program: &Path,
        timeouts: Timeouts,
    ) -> Result<(Self, DriverInfo), DriverError> {
        Self::open_in(
            name,
            program,
            timeouts,
            Arc::new(Flight::in_callers_scope()),
        )
    }

    /// Starts the plugin and shakes hands, for a caller that may abandon `flight`.
    fn open_in(
        name: &str,
        program: &Path,
        timeouts: Timeouts,
        flight: Arc<Flight>,
    ) -> Result<(Self, DriverInfo), DriverError> {
        let in_scope = match &flight.scope {
            Some(scope) => scope.enter(),
            None => None,
        };
        if flight.abandoned() || (flight.scope.is_some() && in_scope.is_none()) {
            return Err(plugin_error(
                name,
                format!("{} was not started: request abandoned", program.display()),
            ));
        }
        let mut command = Command::new(program);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A group of its own: ending the plugin also ends what it started (a hypervisor's
        // CLI), and a Ctrl-C at the terminal reaches rmachine only, which then ends it.
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let mut child = command
            .spawn()
            .map_err(|e| plugin_error(name, format!("cannot run {}: {e}", program.display())))?;
        let (Some(stdin), Some(stdout), Some(mut stderr_pipe)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            // Unreachable with three piped streams; reap the child rather than leak it.
            kill_group(&child);
            let _ = child.kill();
            let _ = child.wait();
            return Err(plugin_error(
                name,
                format!("cannot talk to {}: no pipes", program.display()),
            ));
        };
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr);
        // The plugin's stderr is drained all along so that a chatty plugin never blocks on a
        // full pipe; the tail is kept for error messages.
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stderr_pipe.read(&mut buf) {
                if let Ok(mut kept) = sink.lock() {
                    kept.extend_from_slice(&buf[..n]);
                    let excess = kept.len().saturating_sub(STDERR_KEEP);
                    kept.drain(..excess);
                }
            }
        });
        let (lines, stdout_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut line = Vec::new();
                // MAX_LINE bytes, the newline, and one byte more to tell a line of exactly
                // MAX_LINE from a longer one. Bytes, not text: a cut may fall inside a UTF-8
                // character, which must read as too long, not as unreadable.
                let cap = u64::try_from(MAX_LINE)
                    .unwrap_or(u64::MAX)
                    .saturating_add(2);
                let item = match (&mut reader).take(cap).read_until(b'\n', &mut line) {
                    Ok(0) => return,
                    Ok(_) if line.strip_suffix(b"\n").unwrap_or(&line).len() > MAX_LINE => {
                        Line::TooLong
                    }
                    Ok(_) => match String::from_utf8(line) {
                        Ok(text) => Line::Text(text),
                        Err(e) => Line::Unreadable(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            e,
                        )),
                    },
                    Err(e) => Line::Unreadable(e),
                };
                let last = !matches!(item, Line::Text(_));
                if lines.send(item).is_err() || last {
                    return;
                }
            }
        });
        let mut session = Session {
            name: name.to_string(),
            program: program.to_path_buf(),
            child,
            stdin: Some(stdin),
            stdout: stdout_rx,
            stderr,
            stderr_reader: Some(stderr_reader),
            next_id: 1,
            timeouts,
            flight,
            _in_scope: in_scope,
        };
        let value = session.request(Call::Handshake {
            version: PROTOCOL_VERSION,
        })?;
        // The version is checked first: another version may shape the rest differently.
        let version = value.get("version").and_then(serde_json::Value::as_u64);
        if let Some(version) = version.filter(|v| *v != u64::from(PROTOCOL_VERSION)) {
            return Err(session.fail(format!(
                "{} speaks driver protocol version {version}, rmachine speaks version {PROTOCOL_VERSION}",
                program.display()
            )));
        }
        let handshake: HandshakeResult = match serde_json::from_value(value) {
            Ok(h) => h,
            Err(e) => {
                return Err(session.fail(format!(
                    "{} answered the handshake with something that does not parse: {e}",
                    program.display()
                )))
            }
        };
        if handshake.info.name != name {
            return Err(session.fail(format!(
                "{} calls its driver {:?}, not {name:?}",
                program.display(),
                handshake.info.name
            )));
        }
        Ok((session, handshake.info))
    }

    /// Sends `call` and returns its result, or the error the plugin replied, or what went
    /// wrong with the plugin.
    fn request(&mut self, call: Call) -> Result<serde_json::Value, DriverError> {
        let method = call.method();
        let limit = (self.timeouts)(&call);
        let id = self.next_id;
        self.next_id += 1;
        let mut line = match serde_json::to_vec(&Request { id, call }) {
            Ok(line) => line,
            Err(e) => return Err(self.fail(format!("cannot encode the {method} request: {e}"))),
        };
        line.push(b'\n');
        let written = match self.stdin.as_mut() {
            Some(stdin) => stdin.write_all(&line).and_then(|()| stdin.flush()),
            None => Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
        };
        if written.is_err() {
            // The plugin is gone or not reading: say how it ended.
            return Err(self.ended(method));
        }
        let reply_line = match self.receive(limit) {
            Ok(Line::Text(line)) => line,
            Err(RecvTimeoutError::Disconnected) => return Err(self.ended(method)),
            Err(RecvTimeoutError::Timeout) if self.flight.abandoned() => {
                return Err(self.fail(format!(
                    "{} was stopped during {method}: request abandoned",
                    self.program.display()
                )))
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err(self.fail(format!(
                    "{} did not answer {method} within {} s (stopped)",
                    self.program.display(),
                    limit.as_secs_f32()
                )))
            }
            Ok(Line::TooLong) => {
                return Err(self.fail(format!(
                    "{} answered {method} with a line longer than {MAX_LINE} bytes, which is not driver protocol {PROTOCOL_VERSION}",
                    self.program.display()
                )))
            }
            Ok(Line::Unreadable(e)) => {
                return Err(self.fail(format!(
                    "cannot read {}'s reply to {method}: {e}",
                    self.program.display()
                )))
            }
        };
        let reply: Reply = match serde_json::from_str(reply_line.trim_end()) {
            Ok(reply) => reply,
            Err(_) => {
                return Err(self.fail(format!(
                    "{} answered {method} with {}, which is not driver protocol {PROTOCOL_VERSION}",
                    self.program.display(),
                    quote(reply_line.trim_end())
                )))
            }
        };
        if reply.id != id {
            return Err(self.fail(format!(
                "{} answered request {} when {id} ({method}) was asked",
                self.program.display(),
                reply.id
            )));
        }
        match reply.error {
            None => Ok(reply.result.unwrap_or(serde_json::Value::Null)),
            Some(error) => {
                let message = match error.kind {
                    ErrorKind::UnsupportedVersion => format!(
                        "{} does not speak driver protocol version {PROTOCOL_VERSION}: {}",
                        self.program.display(),
                        error.message
                    ),
                    _ => error.message,
                };
                let err = plugin_error(&self.name, message);
                // The plugin answered properly: let it end on its own (it exits on EOF).
                self.stdin = None;
                if self.wait_bounded(Duration::from_secs(2)).is_none() {
                    self.kill();
                }
                Err(err)
            }
        }
    }

    /// The next reply line, waiting at most `limit` and less if the caller gives up.
    fn receive(&self, limit: Duration) -> Result<Line, RecvTimeoutError> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left.min(ABANDON_POLL)) {
                Err(RecvTimeoutError::Timeout) if !left.is_zero() && !self.flight.abandoned() => {}
                other => return other,
            }
        }
    }

    /// The error for a plugin that stopped talking during `method`.
    fn ended(&mut self, method: &str) -> DriverError {
        self.stdin = None;
        let status = self.wait_bounded(Duration::from_secs(5));
        let how = match status {
            Some(status) => describe(status),
            None => {
                self.kill();
                "closed its output but did not exit".to_string()
            }
        };
        let tail = self.stderr_tail();
        let mut message = format!("{} {how} before answering {method}", self.program.display());
        if !tail.is_empty() {
            message.push_str(": ");
            message.push_str(&tail);
        }
        plugin_error(&self.name, message)
    }

    /// Ends a misbehaving plugin and returns the error `message`.
    fn fail(&mut self, message: String) -> DriverError {
        self.kill();
        plugin_error(&self.name, message)
    }

    fn kill(&mut self) {
        self.stdin = None;
        // The child is not reaped yet, so its group id cannot have been reused.
        kill_group(&self.child);
        if let Err(e) = self.child.kill() {
            tracing::debug!(error = %e, "plugin already ended");
        }
        if let Err(e) = self.child.wait() {
            tracing::debug!(error = %e, "plugin not reaped");
        }
    }

    /// The plugin's exit status if it exits within `limit`; `None` sooner when the caller gives
    /// up meanwhile (e.g. `ls`'s `--timeout` passes), so the plugin is killed at once rather
    /// than after the whole wait.
    fn wait_bounded(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline && !self.flight.abandoned() => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }

    /// The last line the plugin wrote on stderr.
    fn stderr_tail(&mut self) -> String {
        // The reader ends when the plugin's stderr closes; a grandchild holding it open must
        // not hold us up.
        if let Some(reader) = self.stderr_reader.take() {
            let deadline = Instant::now() + Duration::from_millis(500);
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
        let kept = self.stderr.lock().map(|k| k.clone()).unwrap_or_default();
        String::from_utf8_lossy(&kept)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_string())
            .unwrap_or_default()
    }

    /// Closes the plugin's stdin (its signal to exit) and reaps it.
    fn close(mut self) {
        self.stdin = None;
        match self.wait_bounded(Duration::from_secs(10)) {
            Some(status) if !status.success() => {
                tracing::warn!(program = %self.program.display(), "driver plugin {}", describe(status));
            }
            Some(_) => {}
            None => {
                tracing::warn!(program = %self.program.display(), "driver plugin did not exit when its input closed");
                self.kill();
            }
        }
        let tail = self.stderr_tail();
        if !tail.is_empty() {
            tracing::debug!(program = %self.program.display(), stderr = %tail, "driver plugin said");
        }
    }
}

/// Ends the process group a plugin leads (Unix; elsewhere only the plugin itself is ended).
fn kill_group(child: &Child) {
    #[cfg(unix)]
    {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        let Ok(pid) = i32::try_from(child.id()) else {
            return;
        };
        if let Err(e) = killpg(Pid::from_raw(pid), Signal::SIGKILL) {
            tracing::debug!(error = %e, "plugin's process group already ended");
        }
    }
    #[cfg(not(unix))]
    let _ = child;
}

fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("was killed by signal {signal}");
        }
    }
    "ended".to_string()
}

impl Driver for ExternalDriver {
    fn info(&self) -> DriverInfo {
        self.info.clone()
    }

    async fn precheck(&self, spec: &VmSpec) -> Result<(), DriverError> {
        self.call(Call::Precheck {
            options: self.options.clone(),
            spec: spec.clone(),
        })
        .await
        .map(drop)
    }

    async fn create(&self, dir: &MachineDir, spec: &VmSpec) -> Result<(), DriverError> {
        self.call(Call::Create {
            options: self.options.clone(),
            machine: Self::machine(dir),
            spec: spec.clone(),
        })
        .await
        .map(drop)
    }

    async fn start(&self, dir: &MachineDir, spec: &VmSpec) -> Result<(), DriverError> {
        self.call(Call::Start {
            options: self.options.clone(),
            machine: Self::machine(dir),
            spec: spec.clone(),
        })
        .await
        .map(drop)
    }

    async fn stop(&self, dir: &MachineDir, mode: StopMode) -> Result<(), DriverError> {
        self.call(Call::Stop {
            options: self.options.clone(),
            machine: Self::machine(dir),
            mode: mode.into(),
        })
        .await
        .map(drop)
    }

    async fn remove(&self, dir: &MachineDir) -> Result<(), DriverError> {
        self.call(Call::Remove {
            options: self.options.clone(),
            machine: Self::machine(dir),
        })
        .await
        .map(drop)
    }

    async fn state(&self, dir: &MachineDir) -> Result<VmState, DriverError> {
        let value = self
            .call(Call::State {
                options: self.options.clone(),
                machine: Self::machine(dir),
            })
            .await?;
        self.decode("state", value)
    }

    async fn endpoints(&self, dir: &MachineDir) -> Result<Endpoints, DriverError> {
        let value = self
            .call(Call::Endpoints {
                options: self.options.clone(),
                machine: Self::machine(dir),
            })
            .await?;
        self.decode("endpoints", value)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// Writes an executable plugin script `rmachine-driver-NAME` into `dir`.
    fn plugin(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(format!("{PROGRAM_PREFIX}{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("plugin");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    const HANDSHAKE: &str = r#"read -r line
echo '{"id":1,"result":{"version":1,"info":{"name":"slow","capabilities":{"gracefulStop":false,"pause":false,"consoleLog":false,"shares":false}}}}'
"#;

    fn short(_: &Call) -> Duration {
        Duration::from_millis(300)
    }

    #[test]
    fn a_plugin_that_never_answers_is_stopped_at_the_timeout() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let program = plugin(tmp.path(), "slow", "exec sleep 60\n");
        let began = Instant::now();
        let err = Session::open("slow", &program, short)
            .err()
            .expect("times out");
        assert!(began.elapsed() < Duration::from_secs(10));
        assert_eq!(
            err.to_string(),
            format!(
                "driver slow: {} did not answer handshake within 0.3 s (stopped)",
                program.display()
            )
        );
    }

    #[tokio::test]
    async fn each_request_has_its_own_timeout() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // Answers the handshake, then sits on the next request (and exits when none comes).
        let program = plugin(
            tmp.path(),
            "slow",
            &format!("{HANDSHAKE}read -r line || exit 0\nexec sleep 60\n"),
        );
        let driver = ExternalDriver::open("slow", &program, Options::new())
            .expect("handshake")
            .with_timeouts(short);
        let dir = MachineDir::new("m", tmp.path().join("m"));
        let err = driver.state(&dir).await.expect_err("times out");
        assert_eq!(
            err.to_string(),
            format!(
                "driver slow: {} did not answer state within 0.3 s (stopped)",
                program.display()
            )
        );
    }

    #[tokio::test]
    async fn an_abandoned_request_ends_the_plugin_and_its_children_before_returning() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pids = tmp.path().join("pids");
        // Answers the handshake, then starts a child and sits on the request.
        let program = plugin(
            tmp.path(),
            "slow",
            &format!(
                "{HANDSHAKE}read -r line || exit 0\nsleep 60 &\necho \"$$ $!\" > {p}.tmp && mv {p}.tmp {p}\nwait\n",
                p = pids.display()
            ),
        );
        let driver = ExternalDriver::open("slow", &program, Options::new()).expect("handshake");
        let dir = MachineDir::new("m", tmp.path().join("m"));
        let request = driver.state(&dir);
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::pin!(request);
            tokio::select! {
                _ = &mut request => panic!("the plugin answered"),
                () = async {
                    while !pids.exists() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                } => {}
            }
            // Leaving this block drops the request.
        })
        .await;
        assert!(waited.is_ok(), "the plugin never got the request");
        let pids = std::fs::read_to_string(&pids).expect("pids");
        for pid in pids.split_whitespace() {
            let pid = nix::unistd::Pid::from_raw(pid.parse().expect("pid"));
            // Gone, not even a zombie: the plugin was reaped, its child (reparented) killed. A
            // SIGKILLed process still needs the scheduler to die, which takes a moment on a
            // loaded machine: a few seconds' grace, far below the child's 60 s sleep.
            let alive = || {
                nix::sys::signal::kill(pid, None).is_ok()
                    && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .is_ok_and(|stat| !stat.contains(") Z "))
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while alive() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(!alive(), "process {pid} outlived the abandoned request");
        }
    }

    #[test]
    fn a_line_of_exactly_the_cap_is_read_and_one_cut_inside_a_character_is_too_long() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // A handshake reply padded with spaces to exactly MAX_LINE bytes.
        let reply = r#"{"id":1,"result":{"version":1,"info":{"name":"exact","capabilities":{"gracefulStop":false,"pause":false,"consoleLog":false,"shares":false}}}}"#;
        let program = plugin(
            tmp.path(),
            "exact",
            &format!(
                "read -r line\nprintf '%s' '{reply}'\nhead -c {} /dev/zero | tr '\\0' ' '\necho\nread -r line\n",
                MAX_LINE - reply.len()
            ),
        );
        let (session, info) = Session::open("exact", &program, reply_timeout).expect("handshake");
        session.close();
        assert_eq!(info.name, "exact");
        // "é" is two bytes; a cap of MAX_LINE + 1 bytes falls between them.
        let program = plugin(
            tmp.path(),
            "wide",
            &format!(
                "read -r line\nhead -c {} /dev/zero | tr '\\0' a\nprintf 'ééé\\n'\nexec sleep 60\n",
                MAX_LINE
            ),
        );
        let err = Session::open("wide", &program, reply_timeout)
            .err()
            .expect("refused");
        assert_eq!(
            err.to_string(),
            format!(
                "driver wide: {} answered handshake with a line longer than {MAX_LINE} bytes, which is not driver protocol 1",
                program.display()
            )
        );
    }

    #[test]
    fn a_reply_line_over_the_cap_ends_the_plugin() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let program = plugin(
            tmp.path(),
            "chatty",
            &format!(
                "read -r line\nhead -c {} /dev/zero | tr '\\0' a\nexec sleep 60\n",
                MAX_LINE + 10
            ),
        );
        let err = Session::open("chatty", &program, reply_timeout)
            .err()
            .expect("refused");
        assert_eq!(
            err.to_string(),
            format!(
                "driver chatty: {} answered handshake with a line longer than {MAX_LINE} bytes, which is not driver protocol 1",
                program.display()
            )
        );
    }

    #[test]
    fn reply_timeouts_are_generous_for_booting_and_short_for_questions() {
        let machine = MachineRef {
            name: "m".into(),
            path: PathBuf::from("/m"),
        };
        let state = Call::State {
            options: Options::new(),
            machine: machine.clone(),
        };
        let stop = Call::Stop {
            options: Options::new(),
            machine,
            mode: StopRequest::Graceful {
                timeout_seconds: 300,
            },
        };
        assert_eq!(reply_timeout(&state), Duration::from_secs(60));
        assert_eq!(reply_timeout(&stop), Duration::from_secs(420));
    }
}
