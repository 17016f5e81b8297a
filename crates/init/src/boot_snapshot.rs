//! Boot snapshots, the guest's side: the supervisor stops at a fixed point of the boot, tells
//! the host, and waits for its go-ahead. The host saves the VM there once, and starts later
//! machines with the same QEMU command line from that state instead of booting their kernel.
//!
//! The point comes after the device modules are loaded ([`Stage::ModulesLoaded`]) and, when
//! the host wants a snapshot ([`ask_host`]), after the later module phases too (the supervisor
//! loads them in between, so that the snapshot holds every module); always before anything of
//! one machine is read (its configuration drive, its data disk, its network) and before the
//! power button watch and the clock port's thread start.
//! Only the kernel has touched the disks by then: probing them, it read their first blocks
//! (partition tables) into its page cache.
//!
//! The host asks for it with [`CMDLINE_FLAG`] on the kernel command line; without it nothing
//! here runs. The exchange uses the clock port ([`clock::PORT_NAME`]) before the clock thread
//! serves it, one line each way:
//!
//! - host → guest, written as QEMU starts and read when the guest opens the port:
//!   `snapshot-wanted` (the host saves this boot: go on below) or `skip` (it does not: boot
//!   on at once). Nothing within [`ASKED_FOR`] (a reboot from inside the guest, whose QEMU
//!   nobody watches; an old host) also boots on;
//! - guest → host: `snapshot-point MS` (`CLOCK_BOOTTIME` in milliseconds);
//! - host → guest: `go SECS NANOS SEED`: the host's UTC time, as for the clock port's `set`,
//!   and 32 random bytes as 64 hex digits;
//! - guest → host: `ok SECS NANOS` (its clock just after setting it), or `error TEXT` for a line
//!   that is not a good `go`, after which it waits for another.
//!
//! The guest waits [`clock::FIND_FOR`] for the port and [`GO_FOR`] for the `go`. Without either
//! it warns and boots on as usual (the host gave up, or is an old one).
//!
//! After a `go` it trusts nothing the boot before the point learnt, since that may have been
//! another machine's boot. It sets the clock, mixes the seed into the kernel's random pool and
//! reseeds it (every machine started from one snapshot has the same pool), and drops the cached
//! blocks of every disk and rereads its partition table ([`drop_disk_caches`]). Then it answers
//! `ok`, closes the port, and prints again the stage lines printed before the point: a restored
//! machine's console does not have them.
//!
//! Which disks are believed afterwards is a positive list, [`disk::DiskTrust::Only`] the disks
//! whose caches were dropped; the disk scan classifies every other disk it finds
//! [`disk::UNVERIFIED`], so it is neither formatted nor used this boot. Whatever goes wrong on
//! the way fails closed: a disk whose cache could not be dropped, one the drop did not list,
//! `/sys/block` that could not be listed (no disk is believed), a blocking task that panicked
//! (likewise). Only a kernel command line without [`CMDLINE_FLAG`] gives
//! [`disk::DiskTrust::All`]. [`snapshot_disks`] lists at least every name the scan considers
//! ([`disk::is_candidate`]), so that in a good boot every disk the scan finds was dropped.
//!
//! The guest cannot tell a restored boot from the boot the snapshot was taken of (whose host
//! says `go` once the state is saved), so it does all of this in both. When no `go` came (no
//! port, the host said nothing or `skip`, the wait timed out) but the kernel command line asked
//! for the point, the guest still reseeds the CRNG, with [`HWRNG`]'s bytes mixed in when it has
//! them ([`reseed_without_go`]), and drops the disk caches: a restored machine whose host went
//! away must not keep the snapshot's CRNG key nor believe the caches either, and in any other
//! boot this costs a few reads.
//!
//! [`Stage::ModulesLoaded`]: rmachine_guest_config::timeline::Stage::ModulesLoaded

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use rmachine_guest_config::timeline::GuestStage;

use crate::disk::{self, DiskTrust};
use crate::{clock, error_chain, logging};

/// The kernel command line word by which the host asks for the snapshot point.
pub const CMDLINE_FLAG: &str = "rmachine.boot_snapshot=1";

/// How long the guest waits for the host's `go` once the port is open.
pub const GO_FOR: Duration = Duration::from_secs(60);

/// How many random bytes a `go` carries (as twice as many hex digits).
pub const SEED_LEN: usize = 32;

/// How long the guest waits for the host's first word (already in the port when the host
/// started this QEMU).
pub const ASKED_FOR: Duration = Duration::from_secs(3);

/// The host's first word when it saves this boot.
const WANTED: &str = "snapshot-wanted";
/// The host's first word when it does not.
const SKIP: &str = "skip";
/// What the guest writes when no first word came in time and it boots on: a host that wanted
/// the snapshot stops waiting for the point (and plugs in what it kept back for after it).
const NO_POINT: &str = "no-point";

/// How long the `ok` answer may take to be written: the `go` has been carried out by then, so
/// the wait for the `go` no longer bounds it.
const ANSWER_FOR: Duration = Duration::from_secs(5);

/// The longest line read from the port; the rest of a longer one is read as lines of its own
/// (each answered `error`), as on the clock port.
const MAX_LINE: usize = 256;

/// Where the virtio-serial ports are listed.
const VIRTIO_PORTS: &str = "/sys/class/virtio-ports";

/// The kernel's random pool, for the entropy ioctls.
const URANDOM: &str = "/dev/urandom";

/// The kernel's hardware random device: virtio-rng's, which every QEMU machine has.
pub const HWRNG: &str = "/dev/hwrng";

/// How long the guest waits for [`SEED_LEN`] bytes of [`HWRNG`] when no `go` came. virtio-rng
/// answers a non-blocking read with EAGAIN until the host has filled the request it queued,
/// which takes milliseconds; a device that gives nothing must not hold the boot up.
const HWRNG_FOR: Duration = Duration::from_millis(500);

/// Bits of entropy credited for [`HWRNG`]'s bytes: none. They are real entropy (QEMU's
/// virtio-rng reads the host's getrandom or /dev/urandom), but the guest cannot see what backs
/// the device, so it does not claim them. Nothing needs the credit: since Linux 5.18 (the
/// guest runs Debian 12's 6.1) RNDRESEEDCRNG hashes the whole input pool into the new key
/// whatever its count, and the kernel's own hwrng thread already credits virtio-rng's output
/// at the driver's quality.
pub const HWRNG_CREDIT_BITS: u32 = 0;

/// What can go wrong at the snapshot point.
#[derive(Debug, thiserror::Error)]
pub enum BootSnapshotError {
    /// The kernel command line could not be read.
    #[error("cannot read {path}")]
    Cmdline {
        /// `/proc/cmdline`.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The clock port did not appear.
    #[error("no virtio-serial port {name} after {} s", waited.as_secs())]
    NoPort {
        /// The port's name.
        name: &'static str,
        /// How long it was looked for.
        waited: Duration,
    },
    /// The port's device node could not be opened.
    #[error("cannot open {device}")]
    Open {
        /// The device node.
        device: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The host said it takes no snapshot of this boot.
    #[error("the host takes no snapshot of this boot")]
    Skipped,
    /// The host said nothing at the point: no host watches this QEMU's start.
    #[error("no word from the host on {device} within {} s (a reboot from inside the machine, or an older rmachine)", waited.as_secs())]
    NotAsked {
        /// The port's device node.
        device: PathBuf,
        /// How long the guest waited.
        waited: Duration,
    },
    /// The host's first word was neither `snapshot-wanted` nor `skip`.
    #[error("unknown first word {line:?} from the host")]
    UnknownWord {
        /// The line, without surrounding whitespace.
        line: String,
    },
    /// No good `go` came in time (or the point's line could not be written in time).
    #[error("no go from the host on {device} within {} s", waited.as_secs())]
    Timeout {
        /// The port's device node.
        device: PathBuf,
        /// How long the guest waited.
        waited: Duration,
    },
    /// Reading or writing the port failed.
    #[error("cannot read or write {device}")]
    Port {
        /// The port's device node.
        device: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A line that is not a `go` request.
    #[error("unknown request {line:?}")]
    UnknownRequest {
        /// The line, without surrounding whitespace.
        line: String,
    },
    /// The time of a `go` is not one (the clock port's rules, [`clock::parse_time`]).
    #[error("{reason}")]
    BadTime {
        /// Which word and why.
        reason: String,
    },
    /// The seed of a `go` has the wrong length (it is not echoed: it is meant to be secret).
    #[error("bad seed: {chars} characters, not {} hex digits", SEED_LEN * 2)]
    SeedLength {
        /// How many characters it has.
        chars: usize,
    },
    /// The seed of a `go` holds a character that is not a hex digit.
    #[error("bad seed: not hexadecimal")]
    SeedNotHex,
    /// A random device could not be opened.
    #[error("cannot open {path}")]
    OpenRandom {
        /// The device node.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A random device could not be read.
    #[error("cannot read {path}")]
    ReadRandom {
        /// The device node.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A random device gave fewer bytes than asked for in time.
    #[error("{path} gave {got} of {} bytes", SEED_LEN)]
    ShortRandom {
        /// The device node.
        path: PathBuf,
        /// How many bytes it gave.
        got: usize,
    },
    /// A block device could not be opened.
    #[error("cannot open {device}")]
    OpenDisk {
        /// The device node.
        device: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An ioctl failed.
    #[error("{request} on {path} failed")]
    Ioctl {
        /// The request's name, e.g. `BLKFLSBUF`.
        request: &'static str,
        /// The device node.
        path: PathBuf,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// `/sys/block` could not be listed.
    #[error("cannot list {path}")]
    ListDisks {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Whether the kernel command line `cmdline` asks for the snapshot point.
pub fn requested(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|word| word == CMDLINE_FLAG)
}

/// The host's go-ahead.
#[derive(Clone, PartialEq, Eq)]
pub struct Go {
    /// The host's UTC time: seconds since the Unix epoch.
    pub secs: i64,
    /// Nanoseconds within that second.
    pub nanos: i64,
    /// Random bytes for the kernel's pool.
    pub seed: [u8; SEED_LEN],
}

impl fmt::Debug for Go {
    // The seed stays out of logs and panic messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Go")
            .field("secs", &self.secs)
            .field("nanos", &self.nanos)
            .field("seed", &format_args!("[{SEED_LEN} bytes]"))
            .finish()
    }
}

/// Parses one line of the port: `go SECS NANOS SEED`, nothing more.
pub fn parse_go(line: &str) -> Result<Go, BootSnapshotError> {
    let mut words = line.split_whitespace();
    let (secs, nanos, seed) = match (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) {
        (Some("go"), Some(secs), Some(nanos), Some(seed), None) => (secs, nanos, seed),
        _ => {
            return Err(BootSnapshotError::UnknownRequest {
                line: line.trim().to_owned(),
            })
        }
    };
    let (secs, nanos) =
        clock::parse_time(secs, nanos).map_err(|reason| BootSnapshotError::BadTime { reason })?;
    if seed.len() != SEED_LEN * 2 {
        return Err(BootSnapshotError::SeedLength {
            chars: seed.chars().count(),
        });
    }
    let mut bytes = [0; SEED_LEN];
    hex::decode_to_slice(seed, &mut bytes).map_err(|_| BootSnapshotError::SeedNotHex)?;
    Ok(Go {
        secs,
        nanos,
        seed: bytes,
    })
}

/// What the go-ahead did, for the console.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Continued {
    /// When the point was reached (`CLOCK_BOOTTIME` milliseconds, as sent to the host).
    pub point_ms: u64,
    /// Whether the seed went into the kernel's random pool and the pool was reseeded.
    pub entropy_added: bool,
    /// What became of the disks' caches.
    pub disks: DiskCaches,
}

/// The disks whose cached blocks were dropped, and those whose could not be.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DiskCaches {
    /// Kernel names of the disks whose caches were dropped, in kernel order: the only disks
    /// believed this boot ([`DiskCaches::trust`]).
    pub dropped: Vec<String>,
    /// Kernel names of the disks whose caches could not be dropped, for the console. Not the
    /// list the scan goes by: a disk missing from both lists is no more believed than these.
    pub unverified: BTreeSet<String>,
}

impl DiskCaches {
    /// The disks believed this boot: those whose caches were dropped, and no other.
    pub fn trust(&self) -> DiskTrust {
        DiskTrust::Only(self.dropped.iter().cloned().collect())
    }
}

/// The console line that follows the stage lines printed again after a `go`.
pub fn summary(continued: &Continued) -> String {
    let mut done = vec!["clock set".to_owned()];
    done.push(if continued.entropy_added {
        "entropy added".to_owned()
    } else {
        "entropy NOT added".to_owned()
    });
    let dropped = &continued.disks.dropped;
    done.push(if dropped.is_empty() {
        "no disk caches dropped, so no disk used".to_owned()
    } else {
        format!("caches of {} dropped", dropped.join(", "))
    });
    let unverified = &continued.disks.unverified;
    if !unverified.is_empty() {
        let names: Vec<&str> = unverified.iter().map(String::as_str).collect();
        done.push(format!(
            "{} unverified, not formatted or used",
            names.join(", ")
        ));
    }
    format!(
        "boot snapshot: this boot continues from a snapshot taken at {} ms ({})",
        continued.point_ms,
        done.join(", ")
    )
}

/// What the host said when the guest opened the port at the start of the snapshot point.
pub enum Asked {
    /// The kernel command line does not ask for the point: boot as before.
    NotRequested,
    /// The host takes no snapshot of this boot (or said nothing): boot on. The disks that
    /// may be believed this boot (for [`disk::distrust`]): only those whose caches were
    /// dropped.
    BootOn(DiskTrust),
    /// The host takes a snapshot: [`at_point`] next.
    Wanted(Wanted),
}

/// The open port of a boot the host takes a snapshot of.
pub struct Wanted {
    port: std::fs::File,
    device: PathBuf,
}

/// The start of the snapshot point, if the kernel command line asks for it: opens the port
/// and reads the host's first word (on a blocking thread). Without a snapshot the disk caches
/// are dropped all the same (see the module docs).
pub async fn ask_host() -> Asked {
    if !requested_by_kernel() {
        return Asked::NotRequested;
    }
    match tokio::task::spawn_blocking(find_port_and_ask).await {
        Ok(Ok(wanted)) => Asked::Wanted(wanted),
        Ok(Err(err)) => {
            if matches!(
                err,
                BootSnapshotError::Skipped | BootSnapshotError::NotAsked { .. }
            ) {
                tracing::info!("boot snapshot: {}; booting on", error_chain(&err));
            } else {
                tracing::warn!(
                    "boot snapshot: {}; booting on as usual (the host gave up, or is an old one)",
                    error_chain(&err)
                );
            }
            Asked::BootOn(boot_on_without_go().await)
        }
        Err(err) => {
            tracing::error!("boot snapshot: asking the host panicked: {err}");
            Asked::BootOn(boot_on_without_go().await)
        }
    }
}

/// The snapshot point of a boot the host takes a snapshot of: sends the point, waits for the
/// host's `go` and carries it out (see the module docs), on a blocking thread. `init_started`
/// and `modules_loaded` are the stage marks printed before the point, printed again after a
/// `go`. Returns the disks that may be believed this boot (for [`disk::distrust`]): only
/// those whose caches were dropped.
pub async fn at_point(
    wanted: Wanted,
    init_started: GuestStage,
    modules_loaded: GuestStage,
) -> DiskTrust {
    let outcome = tokio::task::spawn_blocking(move || wait_for_go(&wanted)).await;
    match outcome {
        Ok(Ok(continued)) => {
            // Nothing may come between these two (the host's timeline parser restarts at
            // `InitStarted`); the port is closed by now and nothing else has started yet.
            logging::print_stage(&init_started);
            logging::print_stage(&modules_loaded);
            tracing::info!("{}", summary(&continued));
            continued.disks.trust()
        }
        Ok(Err(err)) => {
            tracing::warn!(
                "boot snapshot: {}; booting on as usual (the host gave up)",
                error_chain(&err)
            );
            boot_on_without_go().await
        }
        Err(err) => {
            tracing::error!("boot snapshot: the wait for the host's go panicked: {err}");
            // What the panic left undone is unknown: the disks are not believed.
            boot_on_without_go().await
        }
    }
}

/// [`without_go`] on a blocking thread; the disks that may be believed.
async fn boot_on_without_go() -> DiskTrust {
    trust_after(tokio::task::spawn_blocking(without_go).await)
}

/// The disks believed after a blocking task that dropped caches: those it dropped, or none if
/// it panicked (how far it got is unknown, and an empty default would not fail closed).
fn trust_after(joined: Result<DiskCaches, tokio::task::JoinError>) -> DiskTrust {
    match joined {
        Ok(disks) => disks.trust(),
        Err(err) => {
            tracing::error!(
                "boot snapshot: dropping the disks' caches panicked: {err}; no disk is \
                 formatted or used this boot"
            );
            DiskTrust::Only(BTreeSet::new())
        }
    }
}

/// Whether `/proc/cmdline` asks for the snapshot point (no, if it cannot be read).
fn requested_by_kernel() -> bool {
    let path = Path::new("/proc/cmdline");
    match std::fs::read_to_string(path) {
        Ok(cmdline) => requested(&cmdline),
        Err(source) => {
            let err = BootSnapshotError::Cmdline {
                path: path.to_owned(),
                source,
            };
            tracing::warn!("boot snapshot: {}; booting as usual", error_chain(&err));
            false
        }
    }
}

/// Finds and opens the port and reads the host's first word.
fn find_port_and_ask() -> Result<Wanted, BootSnapshotError> {
    let Some(device) =
        clock::wait_for_port(Path::new(VIRTIO_PORTS), clock::PORT_NAME, clock::FIND_FOR)
    else {
        return Err(BootSnapshotError::NoPort {
            name: clock::PORT_NAME,
            waited: clock::FIND_FOR,
        });
    };
    // Non-blocking: a write to a port whose host end is not open would block for good, and
    // every wait here must end by its deadline.
    let port = clock::open_port(&device, true).map_err(|source| BootSnapshotError::Open {
        device: device.clone(),
        source,
    })?;
    ask(&port, &device, ASKED_FOR)?;
    Ok(Wanted { port, device })
}

/// [`first_word`], and when the boot will not stop at the point for a reason other than the
/// host's `skip` (no word in time, one it does not know, a port that fails), `no-point` on
/// the port: a host that wanted the snapshot stops waiting for the point.
fn ask<P>(mut port: P, device: &Path, wait: Duration) -> Result<(), BootSnapshotError>
where
    P: AsFd + Read + Write,
{
    let asked = first_word(&mut port, device, wait);
    if matches!(&asked, Err(err) if !matches!(err, BootSnapshotError::Skipped)) {
        // Best effort, on a non-blocking port: a host that is not listening needs none.
        let _ = port.write_all(format!("{NO_POINT}\n").as_bytes());
    }
    asked
}

/// Sends the point, waits for a good `go` and carries it out.
fn wait_for_go(wanted: &Wanted) -> Result<Continued, BootSnapshotError> {
    let point_ms = u64::try_from(logging::since_boot().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(
        "boot snapshot: at the snapshot point ({point_ms} ms); waiting up to {} s for the \
         host's go on {}",
        GO_FOR.as_secs(),
        wanted.device.display()
    );
    handshake(&wanted.port, &wanted.device, point_ms, GO_FOR, |go| {
        carry_out(go, point_ms)
    })
}

/// The host's first line on `port` within `wait`: `Ok` if it wants the snapshot taken, else
/// why the boot goes on at once.
fn first_word<P>(mut port: P, device: &Path, wait: Duration) -> Result<(), BootSnapshotError>
where
    P: AsFd + Read,
{
    let deadline = Instant::now() + wait;
    let port_err = |source| BootSnapshotError::Port {
        device: device.to_owned(),
        source,
    };
    let mut pending = Vec::new();
    let mut backoff = Backoff::new();
    loop {
        if let Some(line) = take_line(&mut pending) {
            let text = String::from_utf8_lossy(&line);
            return match text.trim() {
                WANTED => Ok(()),
                SKIP => Err(BootSnapshotError::Skipped),
                other => Err(BootSnapshotError::UnknownWord {
                    line: other.to_owned(),
                }),
            };
        }
        let not_asked = || BootSnapshotError::NotAsked {
            device: device.to_owned(),
            waited: wait,
        };
        // Only one line comes before the guest's point: a byte read past it cannot be one.
        let limit = MAX_LINE - pending.len();
        if !read_some(&mut port, &mut pending, limit, deadline, &mut backoff).map_err(port_err)? {
            return Err(not_asked());
        }
    }
}

/// Steps 1 to 3 of a `go`: clock, entropy, disk caches; the clock just after it was set.
fn carry_out(go: &Go, point_ms: u64) -> Result<((i64, i64), Continued), String> {
    // A clock that cannot be set means the time was not one the kernel takes: that `go` is
    // answered `error` and the next one awaited, with nothing else done.
    let now = clock::set_realtime(go.secs, go.nanos)?;
    let entropy_added = match add_entropy(&go.seed) {
        Ok(()) => true,
        Err(err) => {
            tracing::error!(
                "boot snapshot: {}; the kernel's random pool is the snapshot's, shared with \
                 every machine started from it",
                error_chain(&err)
            );
            false
        }
    };
    let disks = drop_disk_caches(Path::new("/sys/block"), Path::new("/dev"));
    Ok((
        now,
        Continued {
            point_ms,
            entropy_added,
            disks,
        },
    ))
}

/// What the guest does when no `go` came but the kernel command line asked for the point
/// (this may be a restored machine whose host went away): [`reseed_without_go`], then
/// [`drop_disk_caches`] with a line saying what it dropped.
fn without_go() -> DiskCaches {
    reseed_without_go();
    let disks = drop_disk_caches(Path::new("/sys/block"), Path::new("/dev"));
    if !disks.dropped.is_empty() {
        tracing::info!(
            "boot snapshot: caches of {} dropped all the same (this may be a restored machine)",
            disks.dropped.join(", ")
        );
    }
    disks
}

/// Sends `snapshot-point POINT_MS` on `port` (named `device` in errors), then answers the lines
/// that come back until one is a `go` that `go` carries out (returning the clock just after it
/// was set, and what it did), or `wait` has gone by. `port` MUST be non-blocking; the waits are
/// poll(2)s. A line that is not a good `go`, or a `go` that `go` refuses (the reason), is
/// answered `error …`; the good one `ok SECS NANOS`.
pub fn handshake<P, T>(
    mut port: P,
    device: &Path,
    point_ms: u64,
    wait: Duration,
    mut go: impl FnMut(&Go) -> Result<((i64, i64), T), String>,
) -> Result<T, BootSnapshotError>
where
    P: AsFd + Read + Write,
{
    let deadline = Instant::now() + wait;
    let port_err = |source| BootSnapshotError::Port {
        device: device.to_owned(),
        source,
    };
    let timeout = || BootSnapshotError::Timeout {
        device: device.to_owned(),
        waited: wait,
    };
    let point = format!("snapshot-point {point_ms}\n");
    if !write_by(&mut port, point.as_bytes(), deadline).map_err(port_err)? {
        return Err(timeout());
    }
    let mut pending = Vec::new();
    let mut backoff = Backoff::new();
    loop {
        while let Some(line) = take_line(&mut pending) {
            let text = String::from_utf8_lossy(&line);
            let why = match parse_go(&text) {
                Ok(request) => match go(&request) {
                    Ok(((secs, nanos), done)) => {
                        let answer = format!("ok {secs} {nanos}\n");
                        // The go is carried out: the boot goes on from here whatever the host
                        // hears of it.
                        match write_by(&mut port, answer.as_bytes(), Instant::now() + ANSWER_FOR) {
                            Ok(true) => {}
                            Ok(false) => tracing::warn!(
                                "boot snapshot: the ok answer on {} was not taken within {} s",
                                device.display(),
                                ANSWER_FOR.as_secs()
                            ),
                            Err(err) => tracing::warn!(
                                "boot snapshot: cannot answer ok on {}: {err}",
                                device.display()
                            ),
                        }
                        return Ok(done);
                    }
                    Err(why) => why,
                },
                Err(err) => err.to_string(),
            };
            tracing::warn!("boot snapshot: {}: {why}", device.display());
            let answer = format!("error {why}\n");
            if !write_by(&mut port, answer.as_bytes(), deadline).map_err(port_err)? {
                return Err(timeout());
            }
        }
        if !read_some(&mut port, &mut pending, MAX_LINE, deadline, &mut backoff)
            .map_err(port_err)?
        {
            return Err(timeout());
        }
    }
}

/// Reads at most `limit` more bytes of `port` (non-blocking) into `pending`, waiting for them
/// until `deadline`; false if the deadline came first. A virtio-serial port whose host end is
/// not open reads as end of file at once and polls as hung up: those wait in `backoff`'s
/// growing pauses, not in a loop; data starts its pauses over.
fn read_some<P: AsFd + Read>(
    port: &mut P,
    pending: &mut Vec<u8>,
    limit: usize,
    deadline: Instant,
    backoff: &mut Backoff,
) -> io::Result<bool> {
    let mut chunk = [0; MAX_LINE];
    let limit = limit.min(MAX_LINE);
    loop {
        match port.read(&mut chunk[..limit]) {
            Ok(0) => return Ok(backoff.sleep(deadline)),
            Ok(n) => {
                pending.extend_from_slice(&chunk[..n]);
                *backoff = Backoff::new();
                return Ok(true);
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                return match poll_by(port.as_fd(), PollFlags::POLLIN, deadline)? {
                    None => Ok(false),
                    // Hung up or an error, and yet nothing to read: do not spin on it.
                    Some(ready) if !ready.contains(PollFlags::POLLIN) => {
                        Ok(backoff.sleep(deadline))
                    }
                    Some(_) => Ok(true),
                };
            }
            Err(err) => return Err(err),
        }
    }
}

/// The first line of `pending` (through its newline, or its first [`MAX_LINE`] bytes), taken
/// out of it; `None` if no whole line is there yet.
fn take_line(pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    let end = match pending.iter().position(|&b| b == b'\n') {
        Some(newline) if newline < MAX_LINE => newline + 1,
        _ if pending.len() >= MAX_LINE => MAX_LINE,
        _ => return None,
    };
    Some(pending.drain(..end).collect())
}

/// Writes all of `bytes` to the non-blocking `port` by `deadline`; `false` if it came first.
fn write_by<P: AsFd + Write>(
    port: &mut P,
    mut bytes: &[u8],
    deadline: Instant,
) -> io::Result<bool> {
    let mut backoff = Backoff::new();
    while !bytes.is_empty() {
        match port.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                match poll_by(port.as_fd(), PollFlags::POLLOUT, deadline)? {
                    None => return Ok(false),
                    // A port whose host end is not open polls as hung up, never writable.
                    Some(ready) if !ready.contains(PollFlags::POLLOUT) => {
                        if !backoff.sleep(deadline) {
                            return Ok(false);
                        }
                    }
                    Some(_) => {}
                }
            }
            Err(err) => return Err(err),
        }
    }
    Ok(true)
}

/// poll(2) for `events` on `fd` until `deadline`: what happened, or `None` at the deadline.
fn poll_by(
    fd: std::os::fd::BorrowedFd<'_>,
    events: PollFlags,
    deadline: Instant,
) -> io::Result<Option<PollFlags>> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        // Rounded up: a timeout of 0 ms would make poll(2) return at once, again and again.
        let ms = left.as_millis().saturating_add(1);
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd, events)];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(fds[0].revents().unwrap_or(PollFlags::empty()))),
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// Growing pauses (10 ms doubling up to 1 s), for a port with nothing to wait on.
struct Backoff {
    pause: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            pause: Duration::from_millis(10),
        }
    }

    /// Sleeps the next pause, cut short at `deadline`; `false` if the deadline has come.
    fn sleep(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(self.pause.min(left));
        self.pause = (self.pause * 2).min(Duration::from_secs(1));
        true
    }
}

/// The Linux ioctls used here, with their request numbers from the kernel's uapi headers
/// (neither libc nor nix has them).
mod ioctl {
    /// `struct rand_pool_info` with room for a seed: RNDADDENTROPY reads `buf_size` bytes of
    /// `buf` after the two counts (declared `__u32 buf[0]` in the header: same offset, 8).
    #[repr(C)]
    pub struct RandPoolInfo {
        /// Bits of entropy credited.
        pub entropy_count: libc::c_int,
        /// Bytes in `buf`.
        pub buf_size: libc::c_int,
        /// The bytes mixed in.
        pub buf: [u8; super::SEED_LEN],
    }

    // RNDADDENTROPY = _IOW('R', 0x03, int[2]): the size in the number is that of the two
    // counts, not of the whole struct.
    nix::ioctl_write_ptr_bad!(
        rnd_add_entropy,
        nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[libc::c_int; 2]>()),
        RandPoolInfo
    );
    // RNDRESEEDCRNG = _IO('R', 0x07)
    nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);
    // BLKFLSBUF = _IO(0x12, 97)
    nix::ioctl_none!(blk_flsbuf, 0x12, 97);
    // BLKRRPART = _IO(0x12, 95)
    nix::ioctl_none!(blk_rrpart, 0x12, 95);
}

/// Mixes `seed` into the kernel's random pool, crediting all its bits, and reseeds the CRNG
/// from the pool at once (else the kernel would go on with the snapshot's CRNG key for up to a
/// minute). Both need CAP_SYS_ADMIN, which PID 1's child has.
fn add_entropy(seed: &[u8; SEED_LEN]) -> Result<(), BootSnapshotError> {
    let random = open_urandom()?;
    mix_in(&random, seed, (SEED_LEN * 8) as u32)?;
    reseed_crng(&random)
}

/// What the reseed without a `go` did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reseed {
    /// Whether [`SEED_LEN`] bytes of [`HWRNG`] went into the kernel's random pool.
    pub hwrng_mixed_in: bool,
    /// Whether the CRNG was reseeded from the pool.
    pub reseeded: bool,
}

/// The console line of a reseed without a `go`.
pub fn reseed_summary(reseed: &Reseed) -> String {
    let hwrng = if reseed.hwrng_mixed_in {
        format!(
            "{SEED_LEN} bytes of {HWRNG} mixed into the random pool ({HWRNG_CREDIT_BITS} bits \
             credited)"
        )
    } else {
        format!("nothing of {HWRNG} mixed in")
    };
    let crng = if reseed.reseeded {
        "CRNG reseeded"
    } else {
        "CRNG NOT reseeded"
    };
    format!("boot snapshot: no go: {hwrng}, {crng} all the same (this may be a restored machine)")
}

/// Reseeds the kernel's CRNG when no `go` came (no seed from the host): mixes in [`SEED_LEN`]
/// bytes of [`HWRNG`] if it gives them within half a second (skipped with a warning if not),
/// crediting [`HWRNG_CREDIT_BITS`], then RNDRESEEDCRNG, which hashes the pool (interrupt timings
/// since the restore included) into a new key of this machine's own.
pub fn reseed_without_go() -> Reseed {
    let mut reseed = Reseed::default();
    let random = match open_urandom() {
        Ok(random) => random,
        Err(err) => {
            tracing::error!(
                "boot snapshot: {}; the CRNG is not reseeded and may be the snapshot's",
                error_chain(&err)
            );
            return reseed;
        }
    };
    match read_hwrng(Path::new(HWRNG), HWRNG_FOR) {
        Ok(bytes) => match mix_in(&random, &bytes, HWRNG_CREDIT_BITS) {
            Ok(()) => reseed.hwrng_mixed_in = true,
            Err(err) => tracing::warn!("boot snapshot: {}", error_chain(&err)),
        },
        Err(err) => tracing::warn!(
            "boot snapshot: {}; reseeding from the kernel's pool alone",
            error_chain(&err)
        ),
    }
    match reseed_crng(&random) {
        Ok(()) => reseed.reseeded = true,
        // Not initialised yet: no key to replace, and the kernel seeds it from the pool
        // once it is.
        Err(BootSnapshotError::Ioctl {
            source: Errno::ENODATA,
            ..
        }) => tracing::info!("boot snapshot: the CRNG is not initialised yet; no reseed"),
        Err(err) => tracing::error!(
            "boot snapshot: {}; the CRNG may be the snapshot's, shared with every machine \
             started from it",
            error_chain(&err)
        ),
    }
    tracing::info!("{}", reseed_summary(&reseed));
    reseed
}

/// Opens [`URANDOM`] for the entropy ioctls.
fn open_urandom() -> Result<std::fs::File, BootSnapshotError> {
    std::fs::File::open(URANDOM).map_err(|source| BootSnapshotError::OpenRandom {
        path: PathBuf::from(URANDOM),
        source,
    })
}

/// The `rand_pool_info` that mixes `bytes` in crediting `credit_bits` (at most their own
/// number of bits).
fn pool_info(bytes: &[u8; SEED_LEN], credit_bits: u32) -> ioctl::RandPoolInfo {
    let credit = credit_bits.min((SEED_LEN * 8) as u32);
    ioctl::RandPoolInfo {
        // At most 256: fits.
        entropy_count: credit as libc::c_int,
        buf_size: SEED_LEN as libc::c_int,
        buf: *bytes,
    }
}

/// RNDADDENTROPY on `random`: mixes `bytes` into the pool, crediting `credit_bits`.
fn mix_in(
    random: &std::fs::File,
    bytes: &[u8; SEED_LEN],
    credit_bits: u32,
) -> Result<(), BootSnapshotError> {
    let info = pool_info(bytes, credit_bits);
    // SAFETY: `random` is an open file descriptor for the call, and `info` a live
    // `rand_pool_info` whose `buf` holds the `buf_size` bytes the kernel reads.
    unsafe { ioctl::rnd_add_entropy(random.as_raw_fd(), &info) }.map_err(|source| {
        BootSnapshotError::Ioctl {
            request: "RNDADDENTROPY",
            path: PathBuf::from(URANDOM),
            source,
        }
    })?;
    Ok(())
}

/// RNDRESEEDCRNG on `random`: a new CRNG key from the pool at once.
fn reseed_crng(random: &std::fs::File) -> Result<(), BootSnapshotError> {
    // SAFETY: `random` is an open file descriptor; the request takes no argument.
    unsafe { ioctl::rnd_reseed_crng(random.as_raw_fd()) }.map_err(|source| {
        BootSnapshotError::Ioctl {
            request: "RNDRESEEDCRNG",
            path: PathBuf::from(URANDOM),
            source,
        }
    })?;
    Ok(())
}

/// Reads [`SEED_LEN`] bytes of the hardware random device `path` within `wait`.
fn read_hwrng(path: &Path, wait: Duration) -> Result<[u8; SEED_LEN], BootSnapshotError> {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking: a blocking read waits for the device for good, and this must end by its
    // deadline.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| BootSnapshotError::OpenRandom {
            path: path.to_owned(),
            source,
        })?;
    read_seed(file, path, Instant::now() + wait)
}

/// Reads [`SEED_LEN`] bytes of the non-blocking `source` (named `path` in errors), waiting in
/// growing pauses while it has none ready, until `deadline`. The hwrng device has no poll(2)
/// (it always polls readable), hence the pauses.
fn read_seed<R: Read>(
    mut source: R,
    path: &Path,
    deadline: Instant,
) -> Result<[u8; SEED_LEN], BootSnapshotError> {
    let mut seed = [0; SEED_LEN];
    let mut got = 0;
    let mut backoff = Backoff::new();
    while got < SEED_LEN {
        match source.read(&mut seed[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                if !backoff.sleep(deadline) {
                    break;
                }
            }
            Err(source) => {
                return Err(BootSnapshotError::ReadRandom {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
    if got < SEED_LEN {
        return Err(BootSnapshotError::ShortRandom {
            path: path.to_owned(),
            got,
        });
    }
    Ok(seed)
}

/// The block devices under `sys_block` whose blocks the kernel may cache from a snapshot's
/// boot, in kernel name order: every name the disk scan considers ([`disk::is_candidate`]),
/// with or without a `device` entry, since only the disks dropped here are believed
/// afterwards; and any other device-backed one (a `device` entry), not loop, RAM or zram
/// devices.
pub fn snapshot_disks(sys_block: &Path) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(sys_block)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            disk::is_candidate(name)
                || (!["loop", "ram", "zram"].iter().any(|p| name.starts_with(p))
                    && sys_block.join(name).join("device").exists())
        })
        .collect();
    names.sort_by_key(|n| disk::order_key(n));
    Ok(names)
}

/// For every disk of [`snapshot_disks`]: drops its cached blocks (BLKFLSBUF) and rereads its
/// partition table (BLKRRPART) through its node under `dev`. A disk whose cache could not be
/// dropped is logged as an error and listed in [`DiskCaches::unverified`]; if `sys_block`
/// cannot be listed, no disk is dropped, hence none believed.
pub fn drop_disk_caches(sys_block: &Path, dev: &Path) -> DiskCaches {
    let mut caches = DiskCaches::default();
    let names = match snapshot_disks(sys_block) {
        Ok(names) => names,
        Err(source) => {
            // Nothing dropped, nothing believed: should the disk scan list the directory
            // where this could not, every disk it finds is unverified.
            let err = BootSnapshotError::ListDisks {
                path: sys_block.to_owned(),
                source,
            };
            tracing::error!(
                "boot snapshot: {}; no disk is formatted or used this boot",
                error_chain(&err)
            );
            return caches;
        }
    };
    for name in names {
        match drop_cache(&dev.join(&name)) {
            Ok(()) => caches.dropped.push(name),
            Err(err) => {
                tracing::error!(
                    "boot snapshot: {}; {name} may read as another machine's disk, so it is \
                     neither formatted nor used this boot",
                    error_chain(&err)
                );
                caches.unverified.insert(name);
            }
        }
    }
    caches
}

/// BLKFLSBUF then BLKRRPART on one block device.
fn drop_cache(device: &Path) -> Result<(), BootSnapshotError> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK lets a CD-ROM drive without a disc open too.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(device)
        .map_err(|source| BootSnapshotError::OpenDisk {
            device: device.to_owned(),
            source,
        })?;
    // SAFETY: `file` is an open file descriptor; the request takes no argument.
    unsafe { ioctl::blk_flsbuf(file.as_raw_fd()) }.map_err(|source| BootSnapshotError::Ioctl {
        request: "BLKFLSBUF",
        path: device.to_owned(),
        source,
    })?;
    // SAFETY: as above.
    match unsafe { ioctl::blk_rrpart(file.as_raw_fd()) } {
        // Not partitionable, or partitions in use: the table is not what init reads anyway.
        Ok(_) | Err(Errno::EINVAL | Errno::ENOTTY | Errno::EBUSY) => {}
        Err(source) => {
            let err = BootSnapshotError::Ioctl {
                request: "BLKRRPART",
                path: device.to_owned(),
                source,
            };
            tracing::warn!("boot snapshot: {}", error_chain(&err));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    const SEED: &str = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";

    #[test]
    fn the_flag_is_a_whole_word_of_the_command_line() {
        assert!(requested("console=ttyS0 rmachine.boot_snapshot=1 quiet\n"));
        assert!(requested("rmachine.boot_snapshot=1"));
        assert!(!requested("console=ttyS0 quiet\n"));
        assert!(!requested("rmachine.boot_snapshot=0"));
        assert!(!requested("xrmachine.boot_snapshot=1"));
        assert!(!requested("rmachine.boot_snapshot=10"));
    }

    #[test]
    fn a_good_go_line_parses_with_either_case_of_hex() {
        let go = parse_go(&format!("go 1765000000 123456789 {SEED}\n")).expect("a go");
        assert_eq!(go.secs, 1_765_000_000);
        assert_eq!(go.nanos, 123_456_789);
        assert_eq!(go.seed[..2], [0x00, 0x11]);
        assert_eq!(go.seed[30..], [0xee, 0xff]);
        assert!(
            !format!("{go:?}").contains("aabb"),
            "the seed is not printed"
        );
    }

    #[test]
    fn bad_go_lines_are_refused_with_the_reason() {
        let short = &SEED[..63];
        let long = format!("{SEED}0");
        let not_hex = format!("{}g", &SEED[..63]);
        let cases: [(String, &str); 9] = [
            (format!("go 1765000000 0 {short}"), "63 characters"),
            (format!("go 1765000000 0 {long}"), "65 characters"),
            (format!("go 1765000000 0 {not_hex}"), "not hexadecimal"),
            (format!("go x 0 {SEED}"), "bad seconds"),
            (format!("go -5 0 {SEED}"), "bad seconds"),
            (
                format!("go 1765000000 1000000000 {SEED}"),
                "bad nanoseconds",
            ),
            (format!("go 1765000000 0 {SEED} extra"), "unknown request"),
            ("go 1765000000 0".to_owned(), "unknown request"),
            (format!("set 1765000000 0 {SEED}"), "unknown request"),
        ];
        for (line, reason) in cases {
            let err = parse_go(&line).expect_err(&line);
            assert!(err.to_string().contains(reason), "{line:?}: {err}");
        }
    }

    /// The guest's end of a socket pair, non-blocking as the port is opened.
    fn pair() -> (UnixStream, UnixStream) {
        let (host, guest) = UnixStream::pair().expect("socket pair");
        guest.set_nonblocking(true).expect("non-blocking");
        (host, guest)
    }

    fn answers(host: &mut UnixStream) -> Vec<String> {
        host.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut out = String::new();
        // The guest's end is dropped when the handshake returns: read to end of file.
        host.read_to_string(&mut out).expect("answers");
        out.lines().map(str::to_owned).collect()
    }

    #[test]
    fn bad_lines_are_answered_and_the_good_go_is_carried_out_once() {
        let (mut host, guest) = pair();
        let mut input = b"hello\n".to_vec();
        input.extend(format!("go 1765000000 5 {}\n", &SEED[..10]).as_bytes());
        input.extend([b'x'; 300]);
        input.extend(format!("\ngo 1765000000 5 {SEED}\n").as_bytes());
        // What follows the go is not read as a request.
        input.extend(format!("go 1765000001 5 {SEED}\n").as_bytes());
        host.write_all(&input).expect("input");
        let mut carried = Vec::new();
        let done = handshake(
            guest,
            Path::new("test-port"),
            2650,
            Duration::from_secs(5),
            |go| {
                carried.push(go.clone());
                Ok(((go.secs, go.nanos + 1), "done"))
            },
        )
        .expect("a go");
        assert_eq!(done, "done");
        assert_eq!(carried.len(), 1);
        assert_eq!(carried[0].secs, 1_765_000_000);
        let lines = answers(&mut host);
        assert_eq!(lines.len(), 6, "{lines:?}");
        assert_eq!(lines[0], "snapshot-point 2650");
        assert!(
            lines[1..5].iter().all(|l| l.starts_with("error ")),
            "{lines:?}"
        );
        assert!(lines[2].contains("seed"), "{lines:?}");
        assert_eq!(lines[5], "ok 1765000000 6");
    }

    #[test]
    fn a_go_that_cannot_be_carried_out_is_answered_error_and_another_awaited() {
        let (mut host, guest) = pair();
        let go = format!("go 1765000000 5 {SEED}\n");
        host.write_all(format!("{go}{go}").as_bytes())
            .expect("input");
        let mut tries = 0;
        handshake(
            guest,
            Path::new("test-port"),
            1,
            Duration::from_secs(5),
            |go| {
                tries += 1;
                if tries == 1 {
                    Err("clock_settime: EINVAL".to_owned())
                } else {
                    Ok(((go.secs, go.nanos), ()))
                }
            },
        )
        .expect("a go");
        assert_eq!(
            answers(&mut host),
            [
                "snapshot-point 1",
                "error clock_settime: EINVAL",
                "ok 1765000000 5"
            ]
        );
    }

    #[test]
    fn the_hosts_first_word_says_whether_to_stop_at_the_point() {
        // What `ask` returns, and what the guest wrote back.
        let word = |input: &[u8]| {
            let (mut host, guest) = pair();
            host.write_all(input).expect("input");
            let asked = ask(&guest, Path::new("test-port"), Duration::from_millis(300));
            drop(guest);
            host.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut said = String::new();
            host.read_to_string(&mut said).expect("the guest's words");
            (asked, said)
        };
        let (asked, said) = word(b"snapshot-wanted\n");
        assert!(asked.is_ok() && said.is_empty(), "{asked:?} {said:?}");
        let (asked, said) = word(b"skip\n");
        assert!(matches!(asked, Err(BootSnapshotError::Skipped)) && said.is_empty());
        // A word it does not know, nothing, or half a line: the boot goes on (once the wait
        // is over), and says so.
        let began = Instant::now();
        for (input, expected) in [
            (&b"go 1 2 3\n"[..], "unknown"),
            (b"", "not asked"),
            (b"snapshot-wan", "not asked"),
        ] {
            let (asked, said) = word(input);
            let kind = match asked {
                Err(BootSnapshotError::UnknownWord { .. }) => "unknown",
                Err(BootSnapshotError::NotAsked { .. }) => "not asked",
                _ => "other",
            };
            assert_eq!((kind, said.as_str()), (expected, "no-point\n"), "{input:?}");
        }
        assert!(began.elapsed() < Duration::from_secs(3));
    }

    /// Runs the handshake for the point 7 with a 300 ms wait on `guest`, which must end in a
    /// timeout, not earlier; when it began.
    fn handshake_times_out(guest: UnixStream) -> Instant {
        let began = Instant::now();
        let err = handshake(
            guest,
            Path::new("test-port"),
            7,
            Duration::from_millis(300),
            |_| Ok(((0, 0), ())),
        )
        .expect_err("no go");
        assert!(matches!(err, BootSnapshotError::Timeout { .. }), "{err}");
        assert!(began.elapsed() >= Duration::from_millis(300));
        began
    }

    #[test]
    fn without_a_go_the_wait_ends_at_its_timeout() {
        let (mut host, guest) = pair();
        host.write_all(b"hello\n").expect("input");
        let began = handshake_times_out(guest);
        assert!(began.elapsed() < Duration::from_secs(3));
        assert_eq!(answers(&mut host)[0], "snapshot-point 7");
    }

    #[test]
    fn a_host_end_that_reads_as_closed_is_waited_for_until_the_timeout() {
        let (host, guest) = pair();
        // The host has written nothing and will write nothing: reads return end of file at
        // once, as on a port whose host end is not open.
        host.shutdown(std::net::Shutdown::Write).expect("shutdown");
        handshake_times_out(guest);
    }

    #[test]
    fn long_lines_are_cut_and_lines_wait_for_their_newline() {
        let mut pending = b"go 1".to_vec();
        assert_eq!(take_line(&mut pending), None);
        pending.extend(b" 2\nrest");
        assert_eq!(take_line(&mut pending), Some(b"go 1 2\n".to_vec()));
        assert_eq!(pending, b"rest");
        let mut long = vec![b'x'; MAX_LINE + 10];
        long.push(b'\n');
        assert_eq!(take_line(&mut long).map(|l| l.len()), Some(MAX_LINE));
        assert_eq!(take_line(&mut long).map(|l| l.len()), Some(11));
    }

    #[test]
    fn the_summary_names_what_was_done_and_what_was_not() {
        let mut continued = Continued {
            point_ms: 2650,
            entropy_added: true,
            disks: DiskCaches {
                dropped: vec!["vda".into(), "vdb".into()],
                unverified: BTreeSet::new(),
            },
        };
        assert_eq!(
            summary(&continued),
            "boot snapshot: this boot continues from a snapshot taken at 2650 ms (clock set, \
             entropy added, caches of vda, vdb dropped)"
        );
        continued.entropy_added = false;
        continued.disks.unverified.insert("vdc".into());
        let line = summary(&continued);
        assert!(line.contains("entropy NOT added"), "{line}");
        assert!(
            line.contains("vdc unverified, not formatted or used"),
            "{line}"
        );
        continued.disks.dropped.clear();
        assert!(summary(&continued).contains("no disk caches dropped, so no disk used"));
    }

    #[test]
    fn scanned_names_and_device_backed_disks_other_than_loop_and_ram_are_flushed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for (name, has_device) in [
            ("vdb", true),
            ("vda", true),
            ("sda", true),
            ("sr0", true),
            // Names the disk scan takes, even without a `device` entry: a disk the drop
            // skipped would be found by the scan and, not dropped, never used.
            ("vdc", false),
            ("nvme0n1", false),
            ("loop0", true),
            ("ram0", true),
            ("zram0", true),
            ("dm-0", false),
        ] {
            let dir = tmp.path().join(name);
            std::fs::create_dir(&dir).expect("dir");
            if has_device {
                std::fs::create_dir(dir.join("device")).expect("device");
            }
        }
        let listed = ["sda", "sr0", "vda", "vdb", "vdc", "nvme0n1"];
        assert_eq!(snapshot_disks(tmp.path()).expect("list"), listed);
        let names: Vec<String> = std::fs::read_dir(tmp.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| disk::is_candidate(n))
            .collect();
        assert!(
            names.iter().all(|n| listed.contains(&n.as_str())),
            "every name the scan takes is dropped: {names:?}"
        );
        // Nodes that cannot be opened (none under this `dev`): every disk is unverified, and
        // none believed.
        let caches = drop_disk_caches(tmp.path(), &tmp.path().join("no-dev"));
        assert!(caches.dropped.is_empty());
        assert_eq!(caches.unverified, listed.map(String::from).into());
        assert_eq!(caches.trust(), DiskTrust::Only(BTreeSet::new()));
    }

    #[test]
    fn only_dropped_disks_are_trusted() {
        let caches = DiskCaches {
            dropped: vec!["vda".into(), "vdc".into()],
            unverified: ["vdb".to_owned()].into(),
        };
        let trust = caches.trust();
        assert!(trust.trusts("vda") && trust.trusts("vdc"));
        assert!(!trust.trusts("vdb"), "its drop failed");
        assert!(!trust.trusts("vdd"), "the drop never saw it");
    }

    #[test]
    fn a_directory_that_cannot_be_listed_trusts_no_disk() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let caches = drop_disk_caches(&tmp.path().join("no-sys-block"), tmp.path());
        assert_eq!(caches, DiskCaches::default());
        assert_eq!(caches.trust(), DiskTrust::Only(BTreeSet::new()));
    }

    #[test]
    fn a_drop_that_panicked_trusts_no_disk() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let joined = runtime.block_on(
            runtime.spawn_blocking(|| -> DiskCaches { panic!("a test's panic in the drop") }),
        );
        assert_eq!(trust_after(joined), DiskTrust::Only(BTreeSet::new()));
        let joined = runtime.block_on(runtime.spawn_blocking(|| DiskCaches {
            dropped: vec!["vda".into()],
            unverified: BTreeSet::new(),
        }));
        assert_eq!(
            trust_after(joined),
            DiskTrust::Only(["vda".to_owned()].into())
        );
    }

    /// A non-blocking reader that has nothing ready (`None`) or some bytes, in turn.
    struct Trickle(Vec<Option<Vec<u8>>>);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            match self.0.remove(0) {
                None => Err(io::ErrorKind::WouldBlock.into()),
                Some(mut bytes) => {
                    let n = bytes.len().min(buf.len());
                    buf[..n].copy_from_slice(&bytes[..n]);
                    if n < bytes.len() {
                        self.0.insert(0, Some(bytes.split_off(n)));
                    }
                    Ok(n)
                }
            }
        }
    }

    #[test]
    fn a_seed_is_read_whole_across_would_blocks() {
        let path = Path::new("test-hwrng");
        let deadline = Instant::now() + Duration::from_secs(5);
        let bytes: Vec<u8> = (0..40).collect();
        let seed = read_seed(bytes.as_slice(), path, deadline).expect("seed");
        assert_eq!(seed[..], bytes[..SEED_LEN]);
        let trickle = Trickle(vec![None, None, Some(vec![1; 20]), None, Some(vec![2; 20])]);
        let seed = read_seed(trickle, path, deadline).expect("seed");
        assert_eq!(seed[..20], [1; 20]);
        assert_eq!(seed[20..], [2; 12]);
    }

    #[test]
    fn a_short_or_silent_source_gives_no_seed() {
        let path = Path::new("test-hwrng");
        let err = read_seed(
            &[7u8; 10][..],
            path,
            Instant::now() + Duration::from_secs(5),
        )
        .expect_err("short");
        assert!(
            matches!(err, BootSnapshotError::ShortRandom { got: 10, .. }),
            "{err}"
        );
        assert_eq!(err.to_string(), "test-hwrng gave 10 of 32 bytes");
        let began = Instant::now();
        let err = read_seed(
            Trickle(Vec::new()),
            path,
            Instant::now() + Duration::from_millis(100),
        )
        .expect_err("silent");
        assert!(
            matches!(err, BootSnapshotError::ShortRandom { got: 0, .. }),
            "{err}"
        );
        assert!(began.elapsed() < Duration::from_secs(2));
        let tmp = tempfile::tempdir().expect("tempdir");
        let err =
            read_hwrng(&tmp.path().join("hwrng"), Duration::from_millis(10)).expect_err("absent");
        assert!(matches!(err, BootSnapshotError::OpenRandom { .. }), "{err}");
    }

    #[test]
    fn hwrng_bytes_are_mixed_in_without_credit_and_the_host_seed_with_all_of_it() {
        let bytes = [9; SEED_LEN];
        let info = pool_info(&bytes, HWRNG_CREDIT_BITS);
        assert_eq!(info.entropy_count, 0);
        assert_eq!(info.buf_size, 32);
        assert_eq!(info.buf, bytes);
        assert_eq!(pool_info(&bytes, 256).entropy_count, 256);
        assert_eq!(pool_info(&bytes, 10_000).entropy_count, 256, "never more");
    }

    #[test]
    fn the_reseed_line_says_what_was_done() {
        assert_eq!(
            reseed_summary(&Reseed {
                hwrng_mixed_in: true,
                reseeded: true
            }),
            "boot snapshot: no go: 32 bytes of /dev/hwrng mixed into the random pool (0 bits \
             credited), CRNG reseeded all the same (this may be a restored machine)"
        );
        let line = reseed_summary(&Reseed::default());
        assert!(
            line.contains("no go: nothing of /dev/hwrng mixed in, CRNG NOT reseeded all the same"),
            "{line}"
        );
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn ioctl_numbers_are_the_kernel_headers() {
        use nix::{request_code_none, request_code_write};
        // From <linux/random.h> and <linux/fs.h> as the C compiler expands them.
        assert_eq!(
            request_code_write!(b'R', 0x03, std::mem::size_of::<[libc::c_int; 2]>()),
            0x4008_5203
        );
        assert_eq!(request_code_none!(b'R', 0x07), 0x5207);
        assert_eq!(request_code_none!(0x12, 97), 0x1261);
        assert_eq!(request_code_none!(0x12, 95), 0x125f);
    }
}
