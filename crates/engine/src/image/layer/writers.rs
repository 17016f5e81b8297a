//! The threads that create a layer's small regular files while the reading thread goes on.
//!
//! Extracting a distribution layer is mostly kernel time spent creating thousands of small
//! files (open, write, chown, chmod, utimes, close), while decompressing, hashing and parsing
//! the tar stream must happen in order on one thread. So the reading thread reads each small
//! file's content into memory and hands it, with its metadata, to a few writer threads
//! ([`Pool`]); it does everything else itself, in stream order.
//!
//! What keeps this exact and safe is in the reading thread's hands (see `extract_with_split`):
//! it remembers every path handed over since the pool last drained ([`Pool::conflicts`]) and
//! waits for the pool to drain ([`Pool::drain`]) before any entry that could touch a file still
//! being written: one naming that path or a path below it, one replacing something that exists
//! (a removed directory might hold a pending file, and a symlink put in its place would redirect
//! the writer out of the layer: `O_NOFOLLOW` guards only the last component), hard links (their
//! source may be pending), whiteouts and opaque markers. So when a writer opens its path, every
//! parent is still the real directory the reading thread checked, and the path is free.
//!
//! Memory is bounded: the content in flight never exceeds the budget (one file larger than the
//! budget is never handed over: the reading thread writes large files itself). A writer's
//! failure (or panic) stops the pool; the reading thread reports it, with the file's path, at
//! its next hand-over or drain. The threads are scoped to the extraction: none outlives it,
//! whether it ends in success, an error or a panic.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::Scope;

use nix::sys::time::TimeSpec;

use super::super::ImageError;
use super::EntryMeta;

/// How extraction shares its work; [`Tuning::default`] is what the engine uses.
#[derive(Debug, Clone)]
pub(super) struct Tuning {
    /// Writer threads. The machines this runs on may have 2 cores, one of them busy with
    /// decompressing; file creation also waits (the directory's lock, the journal), and 3
    /// writers beat 2 in `docs/benchmarks.md` (ninth session) even there.
    pub writers: usize,
    /// Bytes of file content (plus [`JOB_OVERHEAD`] per file) in flight at most.
    pub budget: u64,
    /// Files up to this size go to the writers; larger ones are written by the reading thread
    /// (streamed, never held in memory whole).
    pub pooled_up_to: u64,
    /// Faults the tests inject into the writers (a delay, an error, a panic).
    #[cfg(test)]
    pub hooks: TestHooks,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            writers: 3,
            budget: 32 << 20,
            pooled_up_to: 1 << 20,
            #[cfg(test)]
            hooks: TestHooks::default(),
        }
    }
}

/// Faults injected into the writers by tests, to make hazards deterministic.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub(super) struct TestHooks {
    /// Every writer sleeps this long before each file: files stay pending while the reading
    /// thread goes on, so a missing barrier shows.
    pub delay: std::time::Duration,
    /// A writer fails on the file of this name.
    pub fail_on: Option<&'static str>,
    /// A writer panics on the file of this name.
    pub panic_on: Option<&'static str>,
}

/// What a queued file costs the budget beyond its content (path, metadata, allocation).
const JOB_OVERHEAD: u64 = 512;

/// One small regular file to create: its path (checked free, parents checked real
/// directories), its content and its metadata.
pub(super) struct FileJob {
    pub path: PathBuf,
    pub content: Vec<u8>,
    pub meta: EntryMeta,
}

impl FileJob {
    fn cost(&self) -> u64 {
        self.content.len() as u64 + JOB_OVERHEAD
    }
}

/// The state the reading thread and the writers share.
pub(super) struct Shared {
    state: Mutex<State>,
    /// Writers wait here for work.
    work: Condvar,
    /// The reading thread waits here for room in the budget or for the pool to drain.
    done: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<FileJob>,
    /// Jobs handed over and not finished (queued or being written).
    jobs_in_flight: usize,
    bytes_in_flight: u64,
    /// The first failure, until the reading thread takes it.
    failure: Option<ImageError>,
    /// Set on a failure or when the reading thread gives up: queued jobs are dropped unwritten.
    stopped: bool,
    /// No more jobs will come: writers exit once the queue is empty.
    closed: bool,
    idle_writers: usize,
    reader_waiting: bool,
}

impl State {
    /// Stops the pool: queued jobs are dropped unwritten (no longer in flight); the ones being
    /// written finish.
    fn stop(&mut self) {
        self.stopped = true;
        for job in self.queue.drain(..) {
            self.jobs_in_flight -= 1;
            self.bytes_in_flight -= job.cost();
        }
    }
}

impl Shared {
    pub(super) fn new() -> Shared {
        Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
        }
    }

    /// The state, even if a thread panicked while holding it: every update to it is a few
    /// plain assignments that cannot leave it half-done, and the panic is reported anyway.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fail(&self, error: ImageError) {
        let mut state = self.lock();
        state.failure.get_or_insert(error);
        state.stop();
        self.done.notify_all();
        self.work.notify_all();
    }
}

/// How many handed-over paths the pool remembers before it drains anyway.
const MAX_PENDING_PATHS: usize = 65_536;

/// The reading thread's handle on the writers. Dropping it (at the end, on an error or while
/// unwinding from a panic) stops them; the enclosing `thread::scope` then joins them.
pub(super) struct Pool<'a> {
    shared: &'a Shared,
    budget: u64,
    /// Paths handed over since the pool last drained, relative to the layer root.
    pending: HashSet<PathBuf>,
}

impl<'a> Pool<'a> {
    /// Starts the writer threads in `scope`.
    pub(super) fn start<'scope>(
        scope: &'scope Scope<'scope, '_>,
        shared: &'a Shared,
        tuning: &Tuning,
    ) -> io::Result<Pool<'a>>
    where
        'a: 'scope,
    {
        let pool = Pool {
            shared,
            budget: tuning.budget,
            pending: HashSet::new(),
        };
        for _ in 0..tuning.writers.max(1) {
            let tuning = tuning.clone();
            // On an error, dropping `pool` stops the writers already started.
            std::thread::Builder::new()
                .name("layer-writer".to_string())
                .spawn_scoped(scope, move || writer(shared, &tuning))?;
        }
        Ok(pool)
    }

    /// Whether `components` (an entry's path below the layer root), or a path above it, was
    /// handed over since the last drain.
    pub(super) fn conflicts(&self, components: &[&OsStr]) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let mut prefix = PathBuf::new();
        components.iter().any(|part| {
            prefix.push(part);
            self.pending.contains(&prefix)
        })
    }

    /// Hands a file to the writers once the budget has room for it; `relative` is its path
    /// below the layer root. Fails with a writer's earlier failure, if any.
    pub(super) fn submit(&mut self, relative: PathBuf, job: FileJob) -> Result<(), ImageError> {
        // The paths are memory the byte budget does not count: a layer of millions of empty
        // files would otherwise keep every name until the end.
        if self.pending.len() >= MAX_PENDING_PATHS {
            self.drain()?;
        }
        let cost = job.cost();
        let mut state = self.shared.lock();
        loop {
            if let Some(failure) = state.failure.take() {
                return Err(failure);
            }
            // An empty pool takes any file, so one larger than the budget cannot wait forever.
            if state.jobs_in_flight == 0 || state.bytes_in_flight + cost <= self.budget {
                break;
            }
            state = self.wait_done(state);
        }
        state.jobs_in_flight += 1;
        state.bytes_in_flight += cost;
        state.queue.push_back(job);
        if state.idle_writers > 0 {
            self.shared.work.notify_one();
        }
        drop(state);
        self.pending.insert(relative);
        Ok(())
    }

    /// Waits until every file handed over is written: the barrier before anything that could
    /// touch one. Fails with the first writer's failure.
    pub(super) fn drain(&mut self) -> Result<(), ImageError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut state = self.shared.lock();
        while state.jobs_in_flight > 0 && state.failure.is_none() {
            state = self.wait_done(state);
        }
        if let Some(failure) = state.failure.take() {
            return Err(failure);
        }
        drop(state);
        self.pending.clear();
        Ok(())
    }

    fn wait_done<'g>(&self, mut state: MutexGuard<'g, State>) -> MutexGuard<'g, State> {
        state.reader_waiting = true;
        let mut state = self
            .shared
            .done
            .wait(state)
            .unwrap_or_else(PoisonError::into_inner);
        state.reader_waiting = false;
        state
    }
}

impl Drop for Pool<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        if state.jobs_in_flight > 0 {
            // Not drained: extraction failed or is unwinding. What is queued is not written;
            // the caller discards the whole directory.
            state.stop();
        }
        self.shared.work.notify_all();
    }
}

/// A writer thread: takes jobs until the pool is closed and empty.
fn writer(shared: &Shared, tuning: &Tuning) {
    // Should anything below panic outside a job (it should not), the reading thread must not
    // wait forever for jobs this thread will never finish.
    struct Exit<'s>(&'s Shared);
    impl Drop for Exit<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.fail(ImageError::Io {
                    path: PathBuf::from("layer writer thread"),
                    source: io::Error::other("panicked"),
                });
            }
        }
    }
    let _exit = Exit(shared);
    loop {
        let job = {
            let mut state = shared.lock();
            loop {
                if let Some(job) = state.queue.pop_front() {
                    break job;
                }
                if state.closed {
                    return;
                }
                state.idle_writers += 1;
                state = shared
                    .work
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                state.idle_writers -= 1;
            }
        };
        let cost = job.cost();
        let result = panic::catch_unwind(AssertUnwindSafe(|| write_job(&job, tuning)))
            .unwrap_or_else(|_| {
                Err(io::Error::other(
                    "layer writer panicked while creating this file",
                ))
            });
        let mut state = shared.lock();
        state.jobs_in_flight -= 1;
        state.bytes_in_flight -= cost;
        if let Err(source) = result {
            if !state.stopped {
                state.failure.get_or_insert(ImageError::Io {
                    path: job.path,
                    source,
                });
                state.stop();
            }
        }
        if state.reader_waiting {
            shared.done.notify_one();
        }
    }
}

fn write_job(job: &FileJob, _tuning: &Tuning) -> io::Result<()> {
    #[cfg(test)]
    {
        let hooks = &_tuning.hooks;
        std::thread::sleep(hooks.delay);
        let name = job.path.file_name().unwrap_or_default();
        if hooks.fail_on.is_some_and(|n| name == n) {
            return Err(io::Error::other("injected failure"));
        }
        if hooks.panic_on.is_some_and(|n| name == n) {
            panic!("injected panic");
        }
    }
    let mut file = create_new(&job.path)?;
    file.write_all(&job.content)?;
    finish_file(&file, &job.path, &job.meta)
}

/// Creates a regular file that must not exist yet, never through a symlink, mode 0600 until
/// [`finish_file`] sets the entry's.
pub(super) fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Owner, mode, xattrs and times of a regular file just written, through its descriptor:
/// each path-based call would walk the path again.
pub(super) fn finish_file(file: &File, path: &Path, meta: &EntryMeta) -> io::Result<()> {
    match std::os::unix::fs::fchown(file, Some(meta.uid), Some(meta.gid)) {
        // A rootless engine cannot give files away; keep going as Docker does in a user namespace.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            tracing::debug!(path = %path.display(), uid = meta.uid, gid = meta.gid, "chown not permitted");
        }
        other => other?,
    }
    // After chown: changing the owner clears set-id bits.
    file.set_permissions(Permissions::from_mode(meta.mode & 0o7777))?;
    for (name, value) in &meta.xattrs {
        if name.starts_with("trusted.overlay.") {
            continue;
        }
        if let Err(e) = xattr::FileExt::set_xattr(file, name, value) {
            tracing::warn!(path = %path.display(), xattr = %name, error = %e, "cannot set xattr, skipped");
        }
    }
    let time = TimeSpec::new(meta.mtime, 0);
    nix::sys::stat::futimens(file, &time, &time).map_err(io::Error::from)
}
