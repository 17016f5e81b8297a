//! The supervisor: everything PID 1 delegates, on a tokio runtime in a child process.
//!
//! Boot: device modules → boot snapshot point (only when the kernel command line asks for it
//! and the host's first word on the clock port wants a snapshot of this boot: the later
//! modules, then wait for the host's go, then set the clock, reseed the random pool and drop
//! the disks' cached blocks; see [`boot_snapshot`]) → later modules in the background (each one
//! already loaded is skipped), power button, clock port → configuration drive → (data disk + configuration ∥ network) → SSH server → shares →
//! engine. Then it waits for a shutdown request (signal forwarded by PID 1, or the
//! ACPI power button), stops the engine, ends every other process, unmounts the data disk and
//! exits with the [`Action`] PID 1 must carry out.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rmachine_guest_config::report::{BootAction, CheckResult, DataDiskReport};
use rmachine_guest_config::GuestConfig;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{self, TLS_DIR};
use crate::disk::{self, DiskContent};
use rmachine_guest_config::timeline::{GuestStage, Stage};

use crate::{
    boot_snapshot, clock, engine, error_chain, logging, modules, mounts, net, power, shares, sshd,
    Action,
};

/// Where the data disk is mounted.
pub const DATA_MOUNT: &str = "/mnt/data";
/// Mounts to take down at shutdown, bind mounts of the data disk first.
pub const DATA_MOUNTS: [&str; 2] = [engine::DATA_ROOT, DATA_MOUNT];

/// What the boot found, for the shutdown and the log.
struct Boot {
    config: Option<GuestConfig>,
    /// Directory for persistent SSH state (the data disk, else a tmpfs).
    ssh_dir: PathBuf,
}

/// Runs the supervisor; returns what PID 1 must do once it has exited.
///
/// `init_started` is the [`Stage::InitStarted`] mark PID 1 printed (printed again after a boot
/// snapshot's go).
pub async fn run(init_started: GuestStage) -> Action {
    let t0 = Instant::now();
    // Signal streams first: a request that arrives during boot must not be lost.
    let mut sigterm = signal(SignalKind::terminate()).ok();
    let mut sigusr2 = signal(SignalKind::user_defined2()).ok();

    let dir = modules::running_kernel_dir();
    let phases = match modules::boot_phases(&dir) {
        Ok(phases) => phases,
        Err(err) => {
            tracing::warn!("modules: {}", error_chain(&err));
            Default::default()
        }
    };
    let mut left_out = load_device_modules(dir.clone(), phases.devices).await;
    let modules_loaded = logging::stage(Stage::ModulesLoaded);
    // Nothing of this machine has been read yet: the host may save the VM here (and start
    // other machines from it). After the point only the disks whose cached blocks were
    // dropped are believed; without one, all are.
    let trust = match boot_snapshot::ask_host().await {
        boot_snapshot::Asked::NotRequested => disk::DiskTrust::All,
        boot_snapshot::Asked::BootOn(trust) => trust,
        boot_snapshot::Asked::Wanted(wanted) => {
            // Every later module goes into the snapshot, at full speed while nothing else
            // runs: the machines started from it begin with all of them (their later phases
            // find each one loaded), and their first container does not wait for them.
            for (what, paths) in [
                ("share modules", &phases.shares),
                ("container modules", &phases.engine),
                ("deferred modules", &phases.deferred),
            ] {
                left_out = load_modules(what, None, dir.clone(), paths.clone(), left_out).await;
            }
            boot_snapshot::at_point(wanted, init_started, modules_loaded).await
        }
    };
    // The rest load while disks, network and the engine come up, at a lower CPU priority so
    // that on a single vCPU they take what the path to a serving engine leaves. On a machine
    // with boot-time shares the share filesystems come first: the shares are mounted before
    // the engine starts (`create` reports a share that failed once the engine answers). Then
    // the container modules (netfilter, bridge, overlay, the legacy iptables tables), which
    // only containers wait for (the engine's `--containers-wait-fd`), then the share modules
    // if not loaded yet, and last those the kernel would load on demand anyway (`xt_*`,
    // `nft_compat`). Those that need a device module this machine has no use for (9p and
    // virtiofs without virtio devices) are skipped.
    let (engine_modules_tx, engine_modules_rx) = oneshot::channel();
    let (share_modules_tx, share_modules_rx) = oneshot::channel();
    let (shares_first_tx, shares_first_rx) = oneshot::channel::<bool>();
    tokio::spawn(async move {
        let load = |what, paths, left_out| {
            load_modules(what, Some(LATER_MODULES_NICE), dir.clone(), paths, left_out)
        };
        let shares_first = shares_first_rx.await.unwrap_or(false);
        let mut left_out = left_out;
        let mut share_phase = Some((phases.shares, share_modules_tx));
        if shares_first {
            if let Some((paths, done)) = share_phase.take() {
                left_out = load("share modules", paths, left_out).await;
                let _ = done.send(());
            }
        }
        left_out = load("container modules", phases.engine, left_out).await;
        let _ = engine_modules_tx.send(());
        if let Some((paths, done)) = share_phase.take() {
            left_out = load("share modules", paths, left_out).await;
            let _ = done.send(());
        }
        load("deferred modules", phases.deferred, left_out).await;
    });

    let (press_tx, mut press_rx) = mpsc::channel(4);
    power::watch(press_tx);
    clock::watch();

    // The configuration drive is read first (one small read): it may hold the network's
    // static address, which then comes up while the data disk is checked and mounted.
    let (choice, drive_config) =
        match tokio::task::spawn_blocking(move || find_disks_and_config(&trust)).await {
            Ok(found) => found,
            Err(err) => {
                tracing::error!("disk scan panicked: {err}");
                (disk::DiskChoice::default(), None)
            }
        };
    let _ = shares_first_tx.send(drive_config.as_ref().is_some_and(|c| !c.shares.is_empty()));
    let fixed_network = drive_config.as_ref().and_then(|c| c.network.clone());
    let (boot, ()) = tokio::join!(
        async {
            let boot =
                tokio::task::spawn_blocking(move || setup_storage_and_config(choice, drive_config))
                    .await;
            logging::stage(Stage::DataDiskMounted);
            boot
        },
        async {
            net::setup(fixed_network).await;
            logging::stage(Stage::NetworkUp);
        },
    );
    let boot = match boot {
        Ok(boot) => boot,
        Err(err) => {
            tracing::error!("storage setup panicked: {err}");
            Boot {
                config: None,
                ssh_dir: PathBuf::from("/run/rmachine/ssh"),
            }
        }
    };

    start_sshd(&boot).await;

    let (stop_tx, stop_rx) = watch::channel(false);
    // The engine serves as soon as its data root, network and certificates are there; its
    // containers wait until this pipe's write end is closed, below.
    let (gate_read, gate_write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok((read, write)) => (Some(read), Some(write)),
        Err(err) => {
            tracing::warn!("engine: no pipe to hold containers ({err}); it starts after them");
            (None, None)
        }
    };
    // Shares mount before the engine starts, so that its first answer comes after their
    // report on the console and a container started at once can bind a shared folder; they
    // wait for the share modules only. An error from a channel means the loading task
    // panicked (its panic is logged); boot goes on.
    if let Some(config) = &boot.config {
        if !config.shares.is_empty() {
            let _ = share_modules_rx.await;
            let list = config.shares.clone();
            match tokio::task::spawn_blocking(move || shares::mount_all(&list)).await {
                Ok(report) => tracing::info!("{}", report.console_line()),
                Err(err) => tracing::error!("share: mounting panicked: {err}"),
            }
        }
    }
    let mut engine_task = None;
    let mut start_engine = |gate: Option<std::os::fd::OwnedFd>| match &boot.config {
        Some(config) => {
            let engine_config = config.engine.clone();
            engine_task = Some(tokio::spawn(engine::supervise(
                engine_config,
                gate,
                stop_rx.clone(),
            )));
        }
        None => {
            tracing::warn!("engine: not started (no configuration, so no TLS certificates)")
        }
    };
    if gate_read.is_some() {
        start_engine(gate_read);
    }
    let _ = engine_modules_rx.await;
    match gate_write {
        Some(write) => drop(write),
        None => start_engine(None),
    }
    tracing::info!("boot complete in {} ms", t0.elapsed().as_millis());

    let action = tokio::select! {
        Some(()) = recv(&mut sigusr2) => { tracing::info!("shutdown: power-off requested"); Action::PowerOff }
        Some(()) = recv(&mut sigterm) => { tracing::info!("shutdown: reboot requested"); Action::Reboot }
        Some(device) = press_rx.recv() => {
            tracing::info!("shutdown: power button pressed ({})", device.display());
            Action::PowerOff
        }
    };
    let _ = stop_tx.send(true);
    if let Some(task) = engine_task {
        let _ = task.await;
    }
    end_other_processes().await;
    nix::unistd::sync();
    mounts::unmount_all(&DATA_MOUNTS);
    nix::unistd::sync();
    action
}

/// Loads the device modules this machine's devices need (see [`modules::load_for_devices`]).
/// Loads the device modules this machine needs; returns those left out (see
/// [`modules::LoadReport::left_out`]).
async fn load_device_modules(dir: PathBuf, candidates: Vec<String>) -> HashSet<String> {
    let started = Instant::now();
    let loaded = tokio::task::spawn_blocking(move || {
        modules::load_for_devices(&dir, &candidates, Path::new("/sys/bus"))
    })
    .await;
    let (report, not_needed) = match loaded {
        Ok(loaded) => loaded,
        Err(err) => {
            tracing::warn!("modules: loader panicked: {err}");
            return HashSet::new();
        }
    };
    for failure in &report.failed {
        tracing::warn!("modules: {}", error_chain(failure));
    }
    tracing::info!(
        "device modules: {} loaded, {} already present, {} not for this hardware, {} failed, {} not needed by this machine's devices in {} ms",
        report.loaded,
        report.already,
        report.absent,
        report.failed.len(),
        not_needed,
        started.elapsed().as_millis()
    );
    report.left_out
}

/// Loads `paths` on a blocking thread, at the nice value `nice` if given; returns the modules
/// left out so far (`left_out` and those for absent hardware), for a later phase.
async fn load_modules(
    what: &'static str,
    nice: Option<libc::c_int>,
    dir: PathBuf,
    paths: Vec<String>,
    left_out: HashSet<String>,
) -> HashSet<String> {
    let fallback = left_out.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let _nice = nice.map(ThreadNice::set);
        load_and_log(what, &dir, &paths, &left_out)
    })
    .await;
    match loaded {
        Ok(left_out) => left_out,
        Err(err) => {
            tracing::warn!("modules: {what} loader panicked: {err}");
            fallback
        }
    }
}

fn load_and_log(
    what: &str,
    dir: &Path,
    paths: &[String],
    left_out: &HashSet<String>,
) -> HashSet<String> {
    let started = Instant::now();
    let report = modules::load_all_after(dir, paths, left_out);
    for failure in &report.failed {
        tracing::warn!("modules: {}", error_chain(failure));
    }
    tracing::info!(
        "{what}: {} loaded, {} already present, {} not for this hardware, {} failed in {} ms",
        report.loaded,
        report.already,
        report.absent,
        report.failed.len(),
        started.elapsed().as_millis()
    );
    report.left_out
}

/// The nice value of the later module phases: the kernel runs a module's loading and init in
/// the calling thread, so the engine's start keeps most of the vCPU, but not so low that a
/// lock the loader holds (module loading, nf_tables' mutex) waits long behind the engine.
const LATER_MODULES_NICE: libc::c_int = 10;

/// The calling thread's nice value while it lives; back to the previous value when dropped
/// (the thread is the blocking pool's and runs other work afterwards).
struct ThreadNice {
    tid: libc::id_t,
    /// The value to restore, if the new one was set.
    previous: Option<libc::c_int>,
}

impl ThreadNice {
    fn set(nice: libc::c_int) -> Self {
        let tid = nix::unistd::gettid().as_raw() as libc::id_t;
        let previous = match get_nice(tid) {
            Ok(previous) => set_nice(tid, nice)
                .map_err(|err| {
                    tracing::warn!(
                        "modules: cannot set the loader thread's nice value to {nice}: {err}"
                    )
                })
                .ok()
                .map(|()| previous),
            Err(err) => {
                tracing::warn!("modules: cannot read the loader thread's nice value: {err}");
                None
            }
        };
        ThreadNice { tid, previous }
    }
}

impl Drop for ThreadNice {
    fn drop(&mut self) {
        if let Some(previous) = self.previous {
            if let Err(err) = set_nice(self.tid, previous) {
                tracing::warn!(
                    "modules: cannot reset the loader thread's nice value to {previous}: {err}; \
                     the blocking pool's thread keeps a lower priority"
                );
            }
        }
    }
}

/// Thread `tid`'s nice value.
fn get_nice(tid: libc::id_t) -> io::Result<libc::c_int> {
    // getpriority returns -1 both as a value and on error: errno tells them apart.
    nix::errno::Errno::clear();
    // SAFETY: getpriority only reads its arguments; on Linux PRIO_PROCESS with a thread id
    // reads that one thread's nice value.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    if nice == -1 && nix::errno::Errno::last_raw() != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(nice)
}

/// Sets thread `tid`'s nice value.
fn set_nice(tid: libc::id_t, nice: libc::c_int) -> io::Result<()> {
    // SAFETY: setpriority only reads its arguments; on Linux PRIO_PROCESS with a thread id
    // sets that one thread's nice value.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

async fn recv(stream: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match stream {
        Some(stream) => stream.recv().await,
        None => std::future::pending().await,
    }
}

/// SIGTERM to every process but PID 1 and us, up to a second's grace, then SIGKILL.
async fn end_other_processes() {
    use nix::sys::signal::{kill, Signal};
    let everyone = nix::unistd::Pid::from_raw(-1);
    let me = std::process::id();
    if crate::pid1::user_processes(&[me]).is_empty() {
        return;
    }
    tracing::info!("shutdown: sending SIGTERM to all processes");
    let _ = kill(everyone, Signal::SIGTERM);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if crate::pid1::user_processes(&[me]).is_empty() {
            return;
        }
    }
    tracing::info!("shutdown: sending SIGKILL to remaining processes");
    let _ = kill(everyone, Signal::SIGKILL);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Finds the disks and reads the configuration drive (blocking). Only the disks `trust`
/// trusts are believed (see [`disk::distrust`]).
fn find_disks_and_config(trust: &disk::DiskTrust) -> (disk::DiskChoice, Option<GuestConfig>) {
    let mut disks = disk::scan(Path::new("/sys/block"));
    if disks.is_empty() {
        // virtio probing is synchronous with module loading, but give slow buses a moment.
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(50));
            disks = disk::scan(Path::new("/sys/block"));
            if !disks.is_empty() {
                break;
            }
        }
    }
    disk::distrust(&mut disks, trust);
    for d in &disks {
        tracing::info!(
            "disk: {} {:?}{}",
            d.name,
            d.content,
            if d.read_only { " (read-only)" } else { "" }
        );
    }
    let choice = disk::choose(&disks);
    let config =
        choice
            .config
            .as_ref()
            .and_then(|drive| match disk::read_config(&drive.device()) {
                Ok(config) => {
                    tracing::info!("config: read from {}", drive.device().display());
                    Some(config)
                }
                Err(err) => {
                    tracing::error!(
                        "config: {}: {}",
                        drive.device().display(),
                        error_chain(&err)
                    );
                    None
                }
            });
    (choice, config)
}

/// Data disk mount and configuration (blocking: runs on a blocking thread). `drive_config`
/// is what the configuration drive held; without a drive, the copy on the data disk is used.
fn setup_storage_and_config(choice: disk::DiskChoice, drive_config: Option<GuestConfig>) -> Boot {
    let started = Instant::now();
    let data_mounted = match &choice.data {
        Some(data) => mount_data_disk(data),
        None => {
            tracing::warn!("disk: no data disk; nothing will persist across restarts");
            false
        }
    };
    let persist = Path::new(DATA_MOUNT);
    if data_mounted {
        for sub in ["engine", "ssh", "config"] {
            let _ = std::fs::create_dir_all(persist.join(sub));
        }
        let _ = std::fs::set_permissions(
            persist.join("ssh"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        );
        bind(&persist.join("engine"), Path::new(engine::DATA_ROOT));
    } else {
        let _ = std::fs::create_dir_all(engine::DATA_ROOT);
    }

    let config = match (&choice.config, drive_config) {
        (Some(_), Some(config)) if data_mounted => {
            Some(config::boot_config(config, &persist.join("config")))
        }
        (Some(_), Some(config)) => Some(config),
        // A drive that could not be read was reported by find_disks_and_config.
        (Some(_), None) => None,
        (None, _) => {
            let copy = data_mounted
                .then(|| config::load_copy(&persist.join("config")))
                .flatten();
            match &copy {
                Some(_) => tracing::warn!("config: no configuration drive; using the saved copy"),
                None => tracing::warn!("config: no configuration drive and no saved copy"),
            }
            copy
        }
    };
    if let Some(config) = &config {
        apply_config(config);
    }
    tracing::info!("storage ready in {} ms", started.elapsed().as_millis());
    Boot {
        config,
        ssh_dir: if data_mounted {
            persist.join("ssh")
        } else {
            PathBuf::from("/run/rmachine/ssh")
        },
    }
}

/// Formats (blank), checks (when the superblock asks for it), converts (ext2 → journal) and
/// mounts the data disk; prints the [`DataDiskReport`] line on the console whatever happened.
fn mount_data_disk(data: &disk::Disk) -> bool {
    let device = data.device();
    let mut report = DataDiskReport {
        device: device.display().to_string(),
        filesystem: "ext4".into(),
        journal: false,
        boot_action: BootAction::None,
        mounted: false,
        last_check: None,
    };
    let mounted = prepare_and_mount(data, &mut report);
    report.mounted = mounted;
    if mounted {
        report.last_check = match report.last_check.take() {
            Some(check) => {
                if let Err(err) = disk::save_last_check(Path::new(DATA_MOUNT), &check) {
                    tracing::warn!("disk: {}", error_chain(&err));
                }
                Some(check)
            }
            None => disk::load_last_check(Path::new(DATA_MOUNT)),
        };
    }
    tracing::info!("{}", report.console_line());
    mounted
}

fn prepare_and_mount(data: &disk::Disk, report: &mut DataDiskReport) -> bool {
    let device = data.device();
    match data.content {
        DiskContent::Ext => {}
        DiskContent::Blank => {
            tracing::info!(
                "disk: {} is blank; formatting (ext4, label {})",
                data.name,
                disk::DATA_LABEL
            );
            let started = Instant::now();
            if let Err(err) = disk::format_blank(&device) {
                tracing::error!("disk: {}", error_chain(&err));
                return false;
            }
            report.boot_action = BootAction::Formatted;
            tracing::info!(
                "disk: formatted {} in {} ms",
                data.name,
                started.elapsed().as_millis()
            );
        }
        DiskContent::ConfigDrive | DiskContent::Other(_) => {
            tracing::error!(
                "disk: {} holds {:?}; not formatting it, not using it",
                data.name,
                data.content
            );
            return false;
        }
    }
    let superblock = match disk::read_superblock(&device) {
        Ok(superblock) => superblock,
        Err(err) => {
            tracing::error!("disk: {}", error_chain(&err));
            return false;
        }
    };
    if !superblock.is_rmachine_data() {
        tracing::error!(
            "disk: {} holds an ext filesystem labelled {:?}, not {:?}: not a data disk of this \
             machine; not checking, converting or mounting it",
            data.name,
            superblock.label,
            disk::DATA_LABEL
        );
        return false;
    }
    let reasons = superblock.check_reasons();
    let mut checked = false;
    if !reasons.is_empty() {
        let why: Vec<&str> = reasons.iter().map(|r| r.describe()).collect();
        tracing::info!("disk: {} needs a check ({})", data.name, why.join(", "));
        let check = disk::check(&device, &reasons);
        let result = check.result;
        tracing::info!("disk: check {result:?}: {}", check.summary);
        report.last_check = Some(check);
        checked = true;
        if result == CheckResult::Failed {
            tracing::error!(
                "disk: {} has errors e2fsck could not correct; not mounting it \
                 (nothing will persist until it is repaired)",
                data.name
            );
            return false;
        }
    } else {
        tracing::info!("disk: {} clean; no check needed", data.name);
    }
    report.journal = superblock.has_journal();
    if !report.journal {
        tracing::info!("disk: {} is ext2 without a journal; adding one", data.name);
        let started = Instant::now();
        match disk::add_journal(&device) {
            Ok(()) => {
                tracing::info!(
                    "disk: journal added in {} ms",
                    started.elapsed().as_millis()
                );
                report.journal = true;
                report.boot_action = if checked {
                    BootAction::CheckedAndJournalAdded
                } else {
                    BootAction::JournalAdded
                };
            }
            // An ext2 disk still mounts; it only stays as fragile as it was.
            Err(err) => tracing::warn!("disk: {}", error_chain(&err)),
        }
    } else if checked {
        report.boot_action = BootAction::Checked;
    }
    match disk::mount_ext(&device, Path::new(DATA_MOUNT)) {
        Ok(()) => {
            tracing::info!(
                "disk: {} mounted on {DATA_MOUNT} ({})",
                device.display(),
                disk::MOUNT_OPTIONS
            );
            true
        }
        Err(err) => {
            tracing::error!("disk: {}", error_chain(&err));
            false
        }
    }
}

fn bind(source: &Path, target: &Path) {
    let _ = std::fs::create_dir_all(target);
    match nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    ) {
        Ok(()) => tracing::info!("disk: {} bound on {}", source.display(), target.display()),
        Err(err) => tracing::error!(
            "disk: cannot bind {} on {}: {err}",
            source.display(),
            target.display()
        ),
    }
}

fn apply_config(config: &GuestConfig) {
    if config::valid_hostname(&config.hostname) {
        match config::apply_hostname(&config.hostname, Path::new("/etc")) {
            Ok(()) => tracing::info!("config: hostname {}", config.hostname),
            Err(err) => tracing::warn!("config: {}", error_chain(&err)),
        }
    } else {
        tracing::warn!(
            "config: invalid hostname {:?}; keeping the default",
            config.hostname
        );
    }
    match config::write_tls(config, Path::new(TLS_DIR)) {
        Ok(()) => tracing::info!("config: engine TLS files in {TLS_DIR}"),
        Err(err) => tracing::error!("config: {}", error_chain(&err)),
    }
}

async fn start_sshd(boot: &Boot) {
    let authorized = match &boot.config {
        Some(config) => {
            let (keys, bad) = config::parse_authorized_keys(&config.authorized_keys);
            for b in bad {
                tracing::warn!("sshd: authorized key #{} ignored: {}", b.line, b.reason);
            }
            keys
        }
        None => Vec::new(),
    };
    if authorized.is_empty() {
        tracing::warn!("sshd: no authorized keys; nobody can log in");
    }
    let dir = boot.ssh_dir.clone();
    let host_key =
        match tokio::task::spawn_blocking(move || sshd::load_or_create_host_key(&dir)).await {
            Ok(Ok(key)) => key,
            Ok(Err(err)) => {
                tracing::error!("sshd: not started: {err}");
                return;
            }
            Err(err) => {
                tracing::error!("sshd: not started: {err}");
                return;
            }
        };
    let count = authorized.len();
    match sshd::start(host_key, authorized, 22).await {
        Ok(()) => {
            tracing::info!("sshd: listening on :22 ({count} authorized keys)");
            logging::stage(Stage::SshUp);
        }
        Err(err) => tracing::error!("sshd: cannot listen on :22: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loader thread gets its lower priority back to the value it had, not to 0 (a
    /// blocking-pool thread may have been set otherwise by other work).
    #[test]
    fn a_thread_nice_value_is_restored_to_the_previous_one() {
        std::thread::spawn(|| {
            let tid = nix::unistd::gettid().as_raw() as libc::id_t;
            set_nice(tid, 3).expect("nice 3");
            {
                let _nice = ThreadNice::set(LATER_MODULES_NICE);
                assert_eq!(get_nice(tid).expect("nice"), LATER_MODULES_NICE);
            }
            assert_eq!(get_nice(tid).expect("nice"), 3);
        })
        .join()
        .expect("thread");
    }
}
