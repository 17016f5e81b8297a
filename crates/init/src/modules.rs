//! Kernel modules: what the machine needs is loaded at boot, dependencies first.
//!
//! `guest/build.sh` copies the modules and runs `depmod`, so the image's `modules.dep` is the
//! single source of truth for what exists and what depends on what. Each line reads
//! `path.ko: dep1.ko dep2.ko ...` with the *full* (transitive) dependency list; we order them
//! with a depth-first walk and load each file with `finit_module(2)`, skipping the fork of a
//! `modprobe` per module (boot time matters under TCG).

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

/// What can go wrong loading modules.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// `modules.dep` could not be read.
    #[error("cannot read {path}")]
    ReadDep {
        /// The `modules.dep` path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A module file could not be opened.
    #[error("cannot open module {path}")]
    Open {
        /// The module file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a module.
    #[error("kernel refused module {path}")]
    Load {
        /// The module file.
        path: PathBuf,
        /// The errno.
        #[source]
        source: Errno,
    },
}

/// One `modules.dep` line: a module path and its dependencies (relative to the modules dir).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepEntry {
    /// The module's path, e.g. `kernel/drivers/block/virtio_blk.ko`.
    pub path: String,
    /// Paths of the modules it needs.
    pub deps: Vec<String>,
}

/// Parses `modules.dep`; blank and malformed lines are skipped.
pub fn parse_modules_dep(text: &str) -> Vec<DepEntry> {
    text.lines()
        .filter_map(|line| {
            let (path, deps) = line.split_once(':')?;
            let path = path.trim();
            if path.is_empty() {
                return None;
            }
            Some(DepEntry {
                path: path.to_owned(),
                deps: deps.split_whitespace().map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// Orders every module so that each comes after all its dependencies; each appears once.
///
/// Modules keep their `modules.dep` order where dependencies allow, so the result is stable.
/// A dependency missing from the file is still listed (loading it will then fail loudly).
pub fn load_order(entries: &[DepEntry]) -> Vec<String> {
    let deps: HashMap<&str, &[String]> = entries
        .iter()
        .map(|e| (e.path.as_str(), e.deps.as_slice()))
        .collect();
    let mut done: HashSet<&str> = HashSet::new();
    let mut order = Vec::new();
    for entry in entries {
        // Iterative DFS: a module's dependency list is transitive, so visiting its
        // dependencies (in reverse, as modprobe does) before it yields a valid order; the
        // `visiting` set guards against a malformed file with cycles.
        let mut stack: Vec<(&str, bool)> = vec![(entry.path.as_str(), false)];
        let mut visiting: HashSet<&str> = HashSet::new();
        while let Some((path, expanded)) = stack.pop() {
            if done.contains(path) {
                continue;
            }
            if expanded {
                done.insert(path);
                order.push(path.to_owned());
                continue;
            }
            if !visiting.insert(path) {
                continue;
            }
            stack.push((path, true));
            for dep in deps.get(path).copied().unwrap_or_default() {
                if !done.contains(dep.as_str()) {
                    stack.push((dep.as_str(), false));
                }
            }
        }
    }
    order
}

/// Splits a load order in two: modules for which `early` holds plus everything they depend
/// on, then the rest; both keep the order of `order`.
///
/// Boot loads the device drivers (disks, NIC, power button) first and the container modules
/// (netfilter, bridge, overlay: most of the time under TCG) in the background.
pub fn split_phases(
    entries: &[DepEntry],
    order: &[String],
    early: impl Fn(&str) -> bool,
) -> (Vec<String>, Vec<String>) {
    let mut wanted: HashSet<&str> = HashSet::new();
    for entry in entries.iter().filter(|e| early(&e.path)) {
        wanted.insert(&entry.path);
        wanted.extend(entry.deps.iter().map(String::as_str));
    }
    order
        .iter()
        .cloned()
        .partition(|path| wanted.contains(path.as_str()))
}

/// Whether a module path is one that boot needs before disks and network: a device driver, or
/// the data disk's filesystem. Debian's generic kernel builds ext4 as a module, and ext4's
/// metadata checksums need the `crc32c` algorithm, which nothing names as a symbol dependency
/// (it is looked up by name at mount time), so its generic implementation is listed here.
pub fn is_device_driver(path: &str) -> bool {
    (path.starts_with("kernel/drivers/") && !is_container_device(path))
        || path.starts_with("kernel/fs/ext4/")
        || path.starts_with("kernel/crypto/crc32c_generic.")
}

/// Virtual network devices only containers use (veth pairs, tun for the engine's user-space
/// networking): they live under `drivers/` but nothing before the engine needs them, so they
/// load in the background with netfilter and bridge.
fn is_container_device(path: &str) -> bool {
    ["kernel/drivers/net/veth.", "kernel/drivers/net/tun."]
        .iter()
        .any(|prefix| path.starts_with(prefix))
}

/// Whether a container-phase module can wait until containers may start: the boot-time host
/// folder share filesystems ([`is_share_module`]), and the legacy iptables matches and targets
/// (`xt_*`) and `nft_compat`, which the engine does not use (its NAT is an nftables ruleset)
/// and which the kernel loads on demand through `modprobe_path` when a container's `iptables`
/// asks for them (`ipt_*`/`xt_*` and `nft-expr-match`/`nft-expr-target` requests, resolved by
/// the image's busybox modprobe through `modules.alias`).
///
/// `x_tables`, `ip_tables` and `iptable_*` are not deferrable: `iptables-legacy` talks to
/// `ip_tables` through a socket option that only exists once it is loaded and the kernel
/// never autoloads it (iptables' own `modprobe` inside a container fails), so a container
/// started right after "ready" (dind, kind, VPN images, restart policies at `start`) needs
/// them loaded before the engine lets containers start. They also register per-namespace state
/// (`register_pernet_subsys`), whose lock a deferred low-priority loader would hold against
/// the first `docker run`'s network namespace; the deferrable ones register none.
pub fn is_deferrable(path: &str) -> bool {
    is_share_module(path)
        || [
            "kernel/net/netfilter/xt_",
            "kernel/net/netfilter/nft_compat.",
        ]
        .iter()
        .any(|prefix| path.starts_with(prefix))
}

/// Whether a module serves host folder shares (9p with its netfs/fscache layer, virtio-fs and
/// FUSE, which virtio-fs and the SFTP shares mounted over SSH build on): a machine with
/// boot-time shares loads them first and mounts its shares before the engine starts.
pub fn is_share_module(path: &str) -> bool {
    [
        "kernel/fs/9p/",
        "kernel/net/9p/",
        "kernel/fs/fuse/virtiofs.",
        "kernel/fs/fuse/fuse.",
        "kernel/fs/netfs/",
        "kernel/fs/fscache/",
    ]
    .iter()
    .any(|prefix| path.starts_with(prefix))
}

/// The load phases of a boot, each in load order (dependencies first).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Phases {
    /// Device drivers and the data disk's filesystem, before disks and network.
    pub devices: Vec<String>,
    /// What containers need before they start (bridge, netfilter for the engine's nftables
    /// NAT, overlay, veth, tun) and the legacy iptables tables (see [`is_deferrable`]), loaded
    /// while disks, network and the engine come up.
    pub engine: Vec<String>,
    /// The share filesystems ([`is_share_module`]): first, on a machine with boot-time shares
    /// (their mounting waits for them), else after the engine phase.
    pub shares: Vec<String>,
    /// The rest ([`is_deferrable`]), loaded last; nothing waits for them.
    pub deferred: Vec<String>,
}

/// Reads `dir/modules.dep` and returns the boot's load phases: [`split_phases`] by
/// [`is_device_driver`], then the container modules split by [`is_deferrable`] (a deferrable
/// module that an engine-phase module depends on stays in the engine phase), then the
/// deferrable ones by [`is_share_module`].
pub fn boot_phases(dir: &Path) -> Result<Phases, ModuleError> {
    let entries = read_modules_dep(dir)?;
    let order = load_order(&entries);
    let (devices, containers) = split_phases(&entries, &order, is_device_driver);
    let (engine, later) = split_phases(&entries, &containers, |path| !is_deferrable(path));
    let (shares, deferred) = split_phases(&entries, &later, is_share_module);
    Ok(Phases {
        devices,
        engine,
        shares,
        deferred,
    })
}

fn read_modules_dep(dir: &Path) -> Result<Vec<DepEntry>, ModuleError> {
    let dep_path = dir.join("modules.dep");
    let text = std::fs::read_to_string(&dep_path).map_err(|source| ModuleError::ReadDep {
        path: dep_path.clone(),
        source,
    })?;
    Ok(parse_modules_dep(&text))
}

/// Outcome of [`load_all_after`] and [`load_for_devices`].
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Modules the kernel accepted.
    pub loaded: usize,
    /// Modules that were already loaded.
    pub already: usize,
    /// Modules for hardware this machine lacks (the kernel answered ENODEV, as Hyper-V's VMBus
    /// does outside Hyper-V) and the modules that need one of them: not failures, since one
    /// image serves every hypervisor.
    pub absent: usize,
    /// Modules that failed, with the reason (boot goes on without them).
    pub failed: Vec<ModuleError>,
    /// Modules not loaded on purpose: those no device needed and those for absent hardware. A
    /// later phase skips the modules that need one of them ([`load_all_after`]) instead of
    /// failing on their missing symbols.
    pub left_out: HashSet<String>,
}

/// Loads modules (paths relative to `dir`) in the given order, except those that need one of
/// `left_out` (an earlier phase's [`LoadReport::left_out`]): on a machine without virtio
/// devices, `9pnet_virtio` and `virtiofs` need the virtio core that was rightly not loaded, and
/// count as not for this hardware rather than failing on unknown symbols.
pub fn load_all_after(dir: &Path, paths: &[String], left_out: &HashSet<String>) -> LoadReport {
    load_all_after_with(dir, paths, left_out, load_one)
}

/// Loads `paths` in order, with the loader of one module file given.
fn load_all_with(
    dir: &Path,
    paths: &[String],
    load: impl FnMut(&Path) -> Result<bool, ModuleError>,
) -> LoadReport {
    load_all_after_with(dir, paths, &HashSet::new(), load)
}

/// [`load_all_after`] with the loader of one module file given (tests).
fn load_all_after_with(
    dir: &Path,
    paths: &[String],
    left_out: &HashSet<String>,
    mut load: impl FnMut(&Path) -> Result<bool, ModuleError>,
) -> LoadReport {
    let mut loader = Loader::new(dir);
    loader.absent.extend(left_out.iter().cloned());
    loader.load(paths, &mut load);
    loader.finish()
}

/// Loads modules one batch after another, remembering which hardware is absent.
struct Loader<'a> {
    dir: &'a Path,
    /// Dependencies, to skip the modules that need an absent one; without modules.dep nothing
    /// is skipped and such modules fail as before.
    deps: HashMap<String, Vec<String>>,
    absent: HashSet<String>,
    /// Modules the kernel has (loaded now or before).
    ok: HashSet<String>,
    report: LoadReport,
}

impl<'a> Loader<'a> {
    fn new(dir: &'a Path) -> Self {
        let deps = std::fs::read_to_string(dir.join("modules.dep"))
            .map(|text| {
                parse_modules_dep(&text)
                    .into_iter()
                    .map(|e| (e.path, e.deps))
                    .collect()
            })
            .unwrap_or_default();
        Loader {
            dir,
            deps,
            absent: HashSet::new(),
            ok: HashSet::new(),
            report: LoadReport::default(),
        }
    }

    /// The report, with the modules for absent hardware among those left out.
    fn finish(mut self) -> LoadReport {
        self.report.left_out.extend(self.absent);
        self.report
    }

    fn load(
        &mut self,
        paths: &[String],
        load: &mut impl FnMut(&Path) -> Result<bool, ModuleError>,
    ) {
        for rel in paths {
            if self
                .deps
                .get(rel)
                .is_some_and(|needs| needs.iter().any(|d| self.absent.contains(d)))
            {
                self.absent.insert(rel.clone());
                self.report.absent += 1;
                continue;
            }
            let path = self.dir.join(rel);
            match load(&path) {
                Ok(true) => {
                    self.ok.insert(rel.clone());
                    self.report.loaded += 1;
                }
                Ok(false) => {
                    self.ok.insert(rel.clone());
                    self.report.already += 1;
                }
                Err(ModuleError::Load {
                    source: Errno::ENODEV,
                    ..
                }) => {
                    self.absent.insert(rel.clone());
                    self.report.absent += 1;
                }
                Err(err) => self.report.failed.push(err),
            }
        }
    }
}

/// One `modules.alias` line: a device pattern (`fnmatch(3)` syntax) and the module that
/// drives the devices it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// The pattern, e.g. `virtio:d00000002v*`.
    pub pattern: String,
    /// The module's name (underscores, as the kernel names it), e.g. `virtio_blk`.
    pub module: String,
}

/// Parses `modules.alias` (`alias PATTERN MODULE` lines); other lines are skipped.
pub fn parse_modules_alias(text: &str) -> Vec<Alias> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "alias" {
                return None;
            }
            let pattern = words.next()?;
            let module = words.next()?;
            Some(Alias {
                pattern: pattern.to_owned(),
                module: module_name(module),
            })
        })
        .collect()
}

/// A module's name from its file path or name: `kernel/drivers/char/hw_random/virtio-rng.ko`
/// → `virtio_rng` (module names treat `-` and `_` alike; the kernel writes `_`).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.strip_suffix(".ko").unwrap_or(file).replace('-', "_")
}

/// Whether a device's `modalias` matches a `modules.alias` pattern, as modprobe decides it
/// (`fnmatch(3)` without flags: `*` also matches `/`).
fn alias_matches(pattern: &str, modalias: &str) -> bool {
    // Cheap test first: the pattern's literal head must start the modalias (most patterns
    // name another bus), so fnmatch runs for a few candidates only; that matters under TCG.
    let head = pattern
        .find(['*', '?', '[', '\\'])
        .map_or(pattern, |end| &pattern[..end]);
    if !modalias.starts_with(head) {
        return false;
    }
    let (Ok(pattern), Ok(name)) = (
        std::ffi::CString::new(pattern),
        std::ffi::CString::new(modalias),
    ) else {
        return false;
    };
    // SAFETY: both pointers are NUL-terminated strings that outlive the call; fnmatch only
    // reads them.
    unsafe { libc::fnmatch(pattern.as_ptr(), name.as_ptr(), 0) == 0 }
}

/// The `modalias` of every device the kernel knows, read from `sys_bus/*/devices/*/modalias`
/// (`/sys/bus`); a device without one (or unreadable) is left out.
pub fn device_modaliases(sys_bus: &Path) -> HashSet<String> {
    let mut found = HashSet::new();
    let Ok(buses) = std::fs::read_dir(sys_bus) else {
        return found;
    };
    for bus in buses.flatten() {
        let Ok(devices) = std::fs::read_dir(bus.path().join("devices")) else {
            continue;
        };
        for device in devices.flatten() {
            if let Ok(alias) = std::fs::read_to_string(device.path().join("modalias")) {
                let alias = alias.trim();
                if !alias.is_empty() {
                    found.insert(alias.to_owned());
                }
            }
        }
    }
    found
}

/// Driver modules loaded whenever the subsystem they serve is: their devices appear only after
/// an asynchronous scan, too late for the modalias pass — SCSI disks behind AHCI, virtio-scsi
/// or Hyper-V's storvsc; VMBus devices, which Hyper-V offers to the guest from a work queue
/// after `hv_vmbus` has loaded — or they attach to every device of a class without naming one
/// (`evdev`, which the power button's watch reads). Pairs of (module, subsystem module; empty:
/// always).
const CLASS_DRIVERS: [(&str, &str); 5] = [
    ("sd_mod", "scsi_mod"),
    ("hv_storvsc", "hv_vmbus"),
    ("hv_netvsc", "hv_vmbus"),
    ("hv_utils", "hv_vmbus"),
    ("evdev", ""),
];

/// Drivers of devices the host plugs in after boot (a virtio-fs share's `vhost-user-fs-pci`,
/// on a machine that takes or starts from a QEMU boot snapshot): loaded when the machine has a
/// PCI hot-plug slot, so that the device binds as it arrives (nothing here loads a driver for
/// a device that appears later).
const HOTPLUG_DRIVERS: [&str; 1] = ["virtio_pci"];

/// Whether the machine has a PCI hot-plug slot (`sys_bus` is `/sys/bus`).
pub fn has_hotplug_slot(sys_bus: &Path) -> bool {
    std::fs::read_dir(sys_bus.join("pci/slots"))
        .map(|mut slots| slots.next().is_some())
        .unwrap_or(false)
}

/// The data disk's filesystem and the checksum it looks up by name (see [`is_device_driver`]):
/// loaded whatever the devices; the libraries they need come as their dependencies, while those
/// of drivers (`crc_t10dif` for `sd_mod`...) come only with them.
fn is_filesystem(path: &str) -> bool {
    path.starts_with("kernel/fs/ext4/") || path.starts_with("kernel/crypto/crc32c_generic.")
}

/// How many rounds of "load what the devices need, look again" at most: each round's drivers
/// reveal the devices behind them (virtio-mmio → virtio devices → …), two or three in practice.
const MAX_ROUNDS: usize = 8;

/// Loads, out of `candidates` (the device phase, in load order, paths relative to `dir`), only
/// the modules this machine's devices need: the drivers whose `modules.alias` patterns match a
/// device's `modalias` under `sys_bus`, round after round as loaded drivers reveal further
/// devices, the [`CLASS_DRIVERS`] of loaded subsystems, the data disk's filesystem, and each
/// one's dependencies. Every candidate is loaded instead where that choice cannot be made: no
/// readable or no usable `modules.alias`, or no device `modalias` at all under `sys_bus` (an
/// unreadable `/sys/bus` must not cost the machine its disks and network). Returns the report
/// and how many candidates no device needed.
pub fn load_for_devices(dir: &Path, candidates: &[String], sys_bus: &Path) -> (LoadReport, usize) {
    load_for_devices_with(dir, candidates, sys_bus, load_one)
}

/// [`load_for_devices`] with the loader of one module file given (tests).
fn load_for_devices_with(
    dir: &Path,
    candidates: &[String],
    sys_bus: &Path,
    mut load: impl FnMut(&Path) -> Result<bool, ModuleError>,
) -> (LoadReport, usize) {
    let alias_path = dir.join("modules.alias");
    let aliases = match std::fs::read_to_string(&alias_path) {
        Ok(text) => parse_modules_alias(&text),
        Err(err) => {
            tracing::warn!(
                "modules: cannot read {}: {err}; loading every device module",
                alias_path.display()
            );
            return (load_all_with(dir, candidates, load), 0);
        }
    };
    if aliases.is_empty() {
        tracing::warn!(
            "modules: {} names no device; loading every device module",
            alias_path.display()
        );
        return (load_all_with(dir, candidates, load), 0);
    }
    let mut modaliases = device_modaliases(sys_bus);
    if modaliases.is_empty() {
        tracing::warn!(
            "modules: no device modalias under {}; loading every device module",
            sys_bus.display()
        );
        return (load_all_with(dir, candidates, load), 0);
    }
    let mut loader = Loader::new(dir);
    let mut attempted: HashSet<String> = HashSet::new();
    let hotplug = has_hotplug_slot(sys_bus);
    for round in 0..MAX_ROUNDS {
        if round > 0 {
            modaliases = device_modaliases(sys_bus);
        }
        let loaded_names: HashSet<String> = loader.ok.iter().map(|p| module_name(p)).collect();
        let mut wanted: HashSet<&str> = HashSet::new();
        for rel in candidates.iter().filter(|p| !attempted.contains(*p)) {
            let name = module_name(rel);
            let needed = is_filesystem(rel)
                || (hotplug && HOTPLUG_DRIVERS.contains(&name.as_str()))
                || CLASS_DRIVERS.iter().any(|(driver, subsystem)| {
                    *driver == name && (subsystem.is_empty() || loaded_names.contains(*subsystem))
                })
                || aliases.iter().any(|a| {
                    a.module == name && modaliases.iter().any(|m| alias_matches(&a.pattern, m))
                });
            if needed {
                wanted.insert(rel);
                if let Some(deps) = loader.deps.get(rel) {
                    wanted.extend(deps.iter().map(String::as_str));
                }
            }
        }
        // The candidates' order already puts dependencies first.
        let batch: Vec<String> = candidates
            .iter()
            .filter(|p| wanted.contains(p.as_str()) && !attempted.contains(*p))
            .cloned()
            .collect();
        if batch.is_empty() {
            break;
        }
        loader.load(&batch, &mut load);
        attempted.extend(batch);
    }
    let mut report = loader.finish();
    let not_needed: Vec<&String> = candidates
        .iter()
        .filter(|p| !attempted.contains(*p))
        .collect();
    report
        .left_out
        .extend(not_needed.iter().map(|p| (*p).clone()));
    (report, not_needed.len())
}

/// Loads one module file; `Ok(false)` if it was already loaded.
fn load_one(path: &Path) -> Result<bool, ModuleError> {
    // The kernel reads, checks and lays out a module file before it finds the module loaded
    // already; a boot that continues from a QEMU boot snapshot has them all.
    if is_live(&module_name(&path.to_string_lossy())) {
        return Ok(false);
    }
    let file = File::open(path).map_err(|source| ModuleError::Open {
        path: path.to_owned(),
        source,
    })?;
    let no_params: &CStr = c"";
    match finit_module(&file, no_params, ModuleInitFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        Err(source) => Err(ModuleError::Load {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Whether the module `name` is built in (no `initstate`) or loaded and initialised; one still
/// initialising is not (loading it again waits in the kernel until it is live).
fn is_live(name: &str) -> bool {
    let sys = Path::new("/sys/module").join(name);
    match std::fs::read_to_string(sys.join("initstate")) {
        Ok(state) => state.trim() == "live",
        Err(_) => sys.exists(),
    }
}

/// Loads the module `name` of the running kernel and what it needs, unless it is loaded: for
/// what may run before the boot's background phases reach it (an SFTP share is mounted over
/// SSH as soon as the machine answers, FUSE is in the share phase). A module the loader is
/// loading meanwhile is waited for by the kernel (`EEXIST` once it is in).
pub fn ensure_loaded(name: &str) -> Result<(), ModuleError> {
    if is_live(name) {
        return Ok(());
    }
    let dir = running_kernel_dir();
    let entries = read_modules_dep(&dir)?;
    let Some(entry) = entries.iter().find(|e| module_name(&e.path) == name) else {
        return Err(ModuleError::Open {
            path: dir.join(format!("{name}.ko")),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not in this image's modules.dep",
            ),
        });
    };
    // modules.dep lists what a module needs with the deepest dependency last.
    for path in entry.deps.iter().rev().chain(std::iter::once(&entry.path)) {
        load_one(&dir.join(path))?;
    }
    Ok(())
}

/// The running kernel's module directory, `/lib/modules/$(uname -r)`.
pub fn running_kernel_dir() -> PathBuf {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    Path::new("/lib/modules").join(release)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/overlayfs/overlay.ko:

";

    fn position(order: &[String], name: &str) -> usize {
        order
            .iter()
            .position(|p| p.ends_with(&format!("/{name}.ko")))
            .unwrap_or_else(|| panic!("{name} missing from {order:?}"))
    }

    #[test]
    fn modules_for_absent_hardware_and_their_dependents_are_not_failures() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            tmp.path().join("modules.dep"),
            "kernel/drivers/hv/hv_vmbus.ko:\nkernel/drivers/scsi/hv_storvsc.ko: kernel/drivers/hv/hv_vmbus.ko\nkernel/drivers/block/virtio_blk.ko:\nkernel/drivers/x/broken.ko:\n",
        )
        .expect("modules.dep");
        let paths: Vec<String> = [
            "kernel/drivers/hv/hv_vmbus.ko",
            "kernel/drivers/scsi/hv_storvsc.ko",
            "kernel/drivers/block/virtio_blk.ko",
            "kernel/drivers/x/broken.ko",
        ]
        .map(String::from)
        .to_vec();
        let mut tried = Vec::new();
        let report = load_all_with(tmp.path(), &paths, |path| {
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            tried.push(name.clone());
            match name.as_str() {
                "hv_vmbus.ko" => Err(ModuleError::Load {
                    path: path.to_owned(),
                    source: Errno::ENODEV,
                }),
                "broken.ko" => Err(ModuleError::Load {
                    path: path.to_owned(),
                    source: Errno::ENOEXEC,
                }),
                _ => Ok(true),
            }
        });
        assert_eq!(tried, ["hv_vmbus.ko", "virtio_blk.ko", "broken.ko"]);
        assert_eq!((report.loaded, report.absent), (1, 2));
        assert_eq!(report.failed.len(), 1);
    }

    #[test]
    fn parses_lines_with_and_without_dependencies() {
        let entries = parse_modules_dep(DEP);
        assert_eq!(entries.len(), 7);
        assert_eq!(entries[2].path, "kernel/drivers/virtio/virtio.ko");
        assert_eq!(
            entries[2].deps,
            vec!["kernel/drivers/virtio/virtio_ring.ko"]
        );
        assert!(entries[6].deps.is_empty());
    }

    #[test]
    fn dependencies_come_first_and_each_module_once() {
        let order = load_order(&parse_modules_dep(DEP));
        assert_eq!(order.len(), 7);
        assert!(position(&order, "virtio_ring") < position(&order, "virtio"));
        assert!(position(&order, "virtio") < position(&order, "virtio_pci"));
        assert!(position(&order, "virtio_pci_modern_dev") < position(&order, "virtio_pci"));
        assert!(position(&order, "virtio") < position(&order, "virtio_blk"));
    }

    #[test]
    fn device_drivers_and_their_dependencies_load_first() {
        let text = format!(
            "{DEP}kernel/net/netfilter/nf_tables.ko: kernel/lib/libcrc32c.ko\nkernel/lib/libcrc32c.ko:\n\
             kernel/drivers/net/virtio_net.ko: kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/net/core/failover.ko:\n"
        );
        let entries = parse_modules_dep(&text);
        let order = load_order(&entries);
        let (early, late) = split_phases(&entries, &order, is_device_driver);
        assert!(
            early.iter().any(|p| p.ends_with("/failover.ko")),
            "dependency of virtio_net"
        );
        assert!(early.iter().any(|p| p.ends_with("/virtio_blk.ko")));
        assert_eq!(
            late,
            [
                "kernel/fs/overlayfs/overlay.ko",
                "kernel/lib/libcrc32c.ko",
                "kernel/net/netfilter/nf_tables.ko"
            ]
        );
        assert_eq!(early.len() + late.len(), order.len());
    }

    #[test]
    fn the_data_disk_filesystem_loads_with_the_device_drivers() {
        let text = "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko\n\
             kernel/fs/jbd2/jbd2.ko:\nkernel/fs/mbcache.ko:\nkernel/lib/crc16.ko:\n\
             kernel/crypto/crc32c_generic.ko:\nkernel/fs/9p/9p.ko:\n";
        let entries = parse_modules_dep(text);
        let order = load_order(&entries);
        let (early, late) = split_phases(&entries, &order, is_device_driver);
        for module in ["ext4", "jbd2", "mbcache", "crc16", "crc32c_generic"] {
            assert!(
                early.iter().any(|p| p.ends_with(&format!("/{module}.ko"))),
                "{module} is not early: {early:?}"
            );
        }
        assert_eq!(late, ["kernel/fs/9p/9p.ko"]);
    }

    #[test]
    fn container_network_devices_load_in_the_background() {
        let text = "kernel/drivers/net/veth.ko:\nkernel/drivers/net/tun.ko:\n\
             kernel/drivers/net/virtio_net.ko: kernel/net/core/failover.ko\n\
             kernel/net/core/failover.ko:\n";
        let entries = parse_modules_dep(text);
        let order = load_order(&entries);
        let (early, late) = split_phases(&entries, &order, is_device_driver);
        assert_eq!(
            early,
            [
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/virtio_net.ko"
            ]
        );
        assert_eq!(
            late,
            ["kernel/drivers/net/veth.ko", "kernel/drivers/net/tun.ko"]
        );
    }

    /// A modules directory and a `/sys/bus` with a microvm's devices before any driver loads:
    /// two virtio-mmio slots (ACPI) and the power button's input device.
    fn microvm_tree() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().expect("tempdir");
        let modules = tmp.path().join("modules");
        std::fs::create_dir_all(&modules).expect("modules dir");
        std::fs::write(
            modules.join("modules.dep"),
            "kernel/drivers/virtio/virtio_ring.ko:\n\
             kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/scsi/scsi_mod.ko:\n\
             kernel/drivers/scsi/virtio_scsi.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/lib/crc-t10dif.ko:\n\
             kernel/drivers/scsi/sd_mod.ko: kernel/drivers/scsi/scsi_mod.ko kernel/lib/crc-t10dif.ko\n\
             kernel/drivers/ata/libata.ko: kernel/drivers/scsi/scsi_mod.ko\n\
             kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko\n\
             kernel/drivers/input/evdev.ko:\n\
             kernel/fs/jbd2/jbd2.ko:\n\
             kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko\n",
        )
        .expect("modules.dep");
        std::fs::write(
            modules.join("modules.alias"),
            "# Aliases extracted from modules themselves.\n\
             alias acpi*:LNRO0005:* virtio_mmio\n\
             alias of:N*T*Cvirtio,mmio virtio_mmio\n\
             alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n\
             alias virtio:d00000002v* virtio_blk\n\
             alias virtio:d00000004v* virtio_rng\n\
             alias virtio:d00000008v* virtio_scsi\n\
             alias scsi:t-0x00* sd_mod\n\
             alias pci:v*d*sv*sd*bc01sc06i01* ahci\n",
        )
        .expect("modules.alias");
        for (bus, device, alias) in [
            ("acpi", "LNRO0005:00", "acpi:LNRO0005:"),
            ("acpi", "LNRO0005:01", "acpi:LNRO0005:"),
            ("acpi", "PNP0C0C:00", "acpi:PNP0C0C:"),
            (
                "input",
                "input0",
                "input:b0019v0000p0001e0000-e0,1,k74,ramlsfw",
            ),
        ] {
            add_device(tmp.path(), bus, device, alias);
        }
        tmp
    }

    fn add_device(root: &Path, bus: &str, device: &str, alias: &str) {
        let dir = root.join("bus").join(bus).join("devices").join(device);
        std::fs::create_dir_all(&dir).expect("device dir");
        std::fs::write(dir.join("modalias"), format!("{alias}\n")).expect("modalias");
    }

    fn candidates(modules: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(modules.join("modules.dep")).expect("dep");
        load_order(&parse_modules_dep(&text))
    }

    fn names(paths: &[PathBuf]) -> Vec<String> {
        paths
            .iter()
            .map(|p| module_name(&p.to_string_lossy()))
            .collect()
    }

    #[test]
    fn only_the_drivers_of_present_devices_load_round_after_round() {
        let tmp = microvm_tree();
        let root = tmp.path().to_owned();
        let modules = root.join("modules");
        let mut tried = Vec::new();
        let (report, not_needed) =
            load_for_devices_with(&modules, &candidates(&modules), &root.join("bus"), |path| {
                tried.push(path.to_owned());
                // What the kernel does: the virtio-mmio driver registers the devices in its
                // slots (a disk and the entropy source) while it loads.
                if path.ends_with("virtio_mmio.ko") {
                    add_device(&root, "virtio", "virtio0", "virtio:d00000002v554D4551");
                    add_device(&root, "virtio", "virtio1", "virtio:d00000004v554D4551");
                }
                Ok(true)
            });
        assert_eq!(
            names(&tried),
            [
                "virtio_ring",
                "virtio",
                "virtio_mmio",
                "evdev",
                "jbd2",
                "ext4",
                "virtio_blk",
                "virtio_rng"
            ]
        );
        assert_eq!(report.loaded, 8);
        assert!(report.failed.is_empty());
        // virtio_pci, scsi_mod, virtio_scsi, crc-t10dif (a library only sd_mod needs), sd_mod,
        // libata, ahci: no such device here.
        assert_eq!(not_needed, 7);
    }

    #[test]
    fn a_pci_hotplug_slot_gets_the_driver_of_the_devices_plugged_in_later() {
        let tmp = microvm_tree();
        let root = tmp.path().to_owned();
        let modules = root.join("modules");
        let load = |root: &Path| {
            let mut tried = Vec::new();
            load_for_devices_with(&modules, &candidates(&modules), &root.join("bus"), |path| {
                tried.push(path.to_owned());
                Ok(true)
            });
            names(&tried)
        };
        assert!(!load(&root).contains(&"virtio_pci".to_owned()));
        // A microvm with PCIe, whose root port's slot the host plugs a virtio-fs device into.
        add_device(
            &root,
            "pci",
            "0000:00:01.0",
            "pci:v00001B36d0000000Csv00001AF4sd00001100bc06sc04i00",
        );
        assert!(
            !load(&root).contains(&"virtio_pci".to_owned()),
            "a root port alone needs no virtio_pci"
        );
        std::fs::create_dir_all(root.join("bus/pci/slots/1")).expect("slot");
        let tried = load(&root);
        let position = |name: &str| tried.iter().position(|n| n == name);
        assert!(position("virtio_pci").is_some(), "{tried:?}");
        assert!(position("virtio") < position("virtio_pci"), "{tried:?}");
    }

    #[test]
    fn scsi_disks_get_their_class_driver_once_a_scsi_host_driver_loads() {
        let tmp = microvm_tree();
        let root = tmp.path().to_owned();
        let modules = root.join("modules");
        let mut tried = Vec::new();
        let (_, not_needed) =
            load_for_devices_with(&modules, &candidates(&modules), &root.join("bus"), |path| {
                tried.push(path.to_owned());
                if path.ends_with("virtio_mmio.ko") {
                    add_device(&root, "virtio", "virtio0", "virtio:d00000008v554D4551");
                }
                Ok(true)
            });
        let tried = names(&tried);
        let position = |name: &str| {
            tried
                .iter()
                .position(|n| n == name)
                .unwrap_or_else(|| panic!("{name} not loaded: {tried:?}"))
        };
        // The disks behind virtio-scsi appear after an asynchronous scan: sd_mod is loaded
        // with the SCSI core, not because a disk was seen.
        assert!(position("scsi_mod") < position("virtio_scsi"));
        assert!(position("virtio_scsi") < position("sd_mod"));
        assert!(position("crc_t10dif") < position("sd_mod"));
        assert!(!tried.iter().any(|n| n == "virtio_blk" || n == "ahci"));
        assert_eq!(not_needed, 5, "{tried:?}");
    }

    #[test]
    fn hyper_v_drivers_load_with_the_vmbus_whose_devices_come_later() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let modules = tmp.path().join("modules");
        std::fs::create_dir_all(&modules).expect("modules dir");
        std::fs::write(
            modules.join("modules.dep"),
            "kernel/drivers/hv/hv_vmbus.ko:\n\
             kernel/drivers/scsi/scsi_mod.ko:\n\
             kernel/drivers/scsi/hv_storvsc.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/hv/hv_vmbus.ko\n\
             kernel/drivers/scsi/sd_mod.ko: kernel/drivers/scsi/scsi_mod.ko\n\
             kernel/drivers/net/hyperv/hv_netvsc.ko: kernel/drivers/hv/hv_vmbus.ko\n\
             kernel/drivers/hv/hv_utils.ko: kernel/drivers/hv/hv_vmbus.ko\n\
             kernel/drivers/virtio/virtio_mmio.ko:\n",
        )
        .expect("modules.dep");
        std::fs::write(
            modules.join("modules.alias"),
            "alias acpi*:VMBUS:* hv_vmbus\n\
             alias vmbus:d96361ba9e7fb4d4b8b1fb31ff2bd9ff hv_storvsc\n\
             alias acpi*:LNRO0005:* virtio_mmio\n",
        )
        .expect("modules.alias");
        add_device(tmp.path(), "acpi", "VMBUS:00", "acpi:VMBUS:");
        let mut tried = Vec::new();
        // The VMBus devices are not in sysfs yet when the bus driver returns.
        let (report, not_needed) = load_for_devices_with(
            &modules,
            &candidates(&modules),
            &tmp.path().join("bus"),
            |path| {
                tried.push(path.to_owned());
                Ok(true)
            },
        );
        let tried = names(&tried);
        for module in [
            "hv_vmbus",
            "hv_storvsc",
            "hv_netvsc",
            "hv_utils",
            "scsi_mod",
            "sd_mod",
        ] {
            assert!(
                tried.iter().any(|n| n == module),
                "{module} not loaded: {tried:?}"
            );
        }
        assert_eq!((report.loaded, not_needed), (6, 1), "{tried:?}");
    }

    #[test]
    fn without_modules_alias_every_device_module_loads() {
        let tmp = microvm_tree();
        let modules = tmp.path().join("modules");
        std::fs::remove_file(modules.join("modules.alias")).expect("rm alias");
        let all = candidates(&modules);
        let mut tried = 0;
        let (report, not_needed) =
            load_for_devices_with(&modules, &all, &tmp.path().join("bus"), |_| {
                tried += 1;
                Ok(true)
            });
        assert_eq!(
            (tried, report.loaded, not_needed),
            (all.len(), all.len(), 0)
        );
    }

    #[test]
    fn aliases_match_as_modprobe_matches_them() {
        let aliases = parse_modules_alias(
            "# comment\nalias acpi*:LNRO0005:* virtio_mmio\nalias virtio:d00000004v* virtio-rng\nbroken\n",
        );
        assert_eq!(aliases.len(), 2);
        assert_eq!(aliases[1].module, "virtio_rng");
        assert!(alias_matches(&aliases[0].pattern, "acpi:LNRO0005:"));
        assert!(!alias_matches(&aliases[0].pattern, "acpi:PNP0C0C:"));
        assert!(alias_matches(
            &aliases[1].pattern,
            "virtio:d00000004v554D4551"
        ));
        assert!(!alias_matches(
            &aliases[1].pattern,
            "virtio:d00000002v554D4551"
        ));
        assert!(alias_matches(
            "pci:v*d*sv*sd*bc01sc06i01*",
            "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"
        ));
        assert_eq!(
            module_name("kernel/drivers/char/hw_random/virtio-rng.ko"),
            "virtio_rng"
        );
    }

    /// The device phase and the container modules in their load order (engine phase, then
    /// the deferred one), as a boot loads them.
    fn two_phases(dir: &Path) -> Result<(Vec<String>, Vec<String>), ModuleError> {
        let phases = boot_phases(dir)?;
        Ok((
            phases.devices,
            [phases.engine, phases.shares, phases.deferred].concat(),
        ))
    }

    /// The `modules.dep` and `modules.alias` of the guest image (`guest/out/initrd.img`,
    /// kernel 6.1.0-57-amd64), copied as they are.
    fn image_modules() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/modules-6.1.0-57-amd64")
    }

    /// The kernel as far as loading goes: a module with a dependency that is not loaded fails
    /// as `finit_module` does on its unknown symbols (ENOENT).
    struct FakeKernel {
        dir: PathBuf,
        deps: HashMap<String, Vec<String>>,
        loaded: HashSet<String>,
        tried: Vec<String>,
    }

    impl FakeKernel {
        fn new(dir: &Path) -> Self {
            let text = std::fs::read_to_string(dir.join("modules.dep")).expect("modules.dep");
            FakeKernel {
                dir: dir.to_owned(),
                deps: parse_modules_dep(&text)
                    .into_iter()
                    .map(|e| (e.path, e.deps))
                    .collect(),
                loaded: HashSet::new(),
                tried: Vec::new(),
            }
        }

        fn load(&mut self, path: &Path) -> Result<bool, ModuleError> {
            let rel = path
                .strip_prefix(&self.dir)
                .expect("module under the modules dir")
                .to_string_lossy()
                .into_owned();
            self.tried.push(module_name(&rel));
            let missing = self
                .deps
                .get(&rel)
                .is_some_and(|deps| deps.iter().any(|d| !self.loaded.contains(d)));
            if missing {
                return Err(ModuleError::Load {
                    path: path.to_owned(),
                    source: Errno::ENOENT,
                });
            }
            Ok(self.loaded.insert(rel))
        }

        fn tried(&self, name: &str) -> bool {
            self.tried.iter().any(|n| n == name)
        }
    }

    /// Devices as (bus, device, modalias).
    type Devices<'a> = &'a [(&'a str, &'a str, &'a str)];

    /// Boots `devices` (bus, device, modalias) against the image's modules: the device phase,
    /// where loading a module in `reveals` adds the devices it lists, then the background
    /// phase. Returns both reports and the kernel.
    fn boot_image(
        devices: Devices,
        reveals: &[(&str, Devices)],
    ) -> (LoadReport, LoadReport, FakeKernel) {
        let sys = tempfile::tempdir().expect("tempdir");
        for (bus, device, alias) in devices {
            add_device(sys.path(), bus, device, alias);
        }
        let modules = image_modules();
        let (early, late) = two_phases(&modules).expect("phases");
        let mut kernel = FakeKernel::new(&modules);
        let (device_report, _) =
            load_for_devices_with(&modules, &early, &sys.path().join("bus"), |path| {
                let result = kernel.load(path);
                let name = module_name(&path.to_string_lossy());
                for (module, found) in reveals {
                    if result.is_ok() && name == *module {
                        for (bus, device, alias) in *found {
                            add_device(sys.path(), bus, device, alias);
                        }
                    }
                }
                result
            });
        let late_report = load_all_after_with(&modules, &late, &device_report.left_out, |path| {
            kernel.load(path)
        });
        (device_report, late_report, kernel)
    }

    fn failures(report: &LoadReport) -> Vec<String> {
        report.failed.iter().map(|e| e.to_string()).collect()
    }

    /// The engine's phase holds what its containers need (bridge, the nftables NAT
    /// expressions, overlay, veth), and loads with nothing from the other phases. This list is the
    /// kernel side of the engine's NAT ruleset (`crates/engine/src/network/nat.rs`: an `ip`
    /// table with `nat` and `filter` chains, `masquerade`, `ct status`, `dnat` and
    /// `fib daddr type local` expressions) and its bridges: a new expression there needs its
    /// module in this list.
    ///
    /// The legacy iptables family (`x_tables`, `ip_tables`, `iptable_*`) is in the engine
    /// phase too: nothing autoloads `ip_tables` for a container's `iptables-legacy`, so
    /// containers must wait for it, and it registers per-namespace state that a deferred
    /// loader must not hold against the first `docker run`. Only what the kernel loads on
    /// demand (`xt_*` matches, `nft_compat`) is deferred; the share filesystems (with FUSE) are
    /// their own phase.
    #[test]
    fn the_engine_phase_loads_without_the_deferred_modules() {
        let modules = image_modules();
        let phases = boot_phases(&modules).expect("phases");
        let names = |paths: &[String]| paths.iter().map(|p| module_name(p)).collect::<Vec<_>>();
        let engine = names(&phases.engine);
        let shares = names(&phases.shares);
        let deferred = names(&phases.deferred);
        for needed in [
            "bridge",
            "br_netfilter",
            "veth",
            "tun",
            "overlay",
            "nf_tables",
            "nft_chain_nat",
            "nft_nat",
            "nft_masq",
            "nft_ct",
            "nft_fib_ipv4",
            "nf_nat",
            "x_tables",
            "ip_tables",
            "iptable_filter",
            "iptable_nat",
            "iptable_mangle",
            "iptable_raw",
        ] {
            assert!(engine.iter().any(|m| m == needed), "{needed}: {engine:?}");
        }
        let share_family = [
            "netfs",
            "fscache",
            "9pnet",
            "9p",
            "9pnet_virtio",
            "virtiofs",
            "fuse",
        ];
        assert!(
            shares.iter().all(|m| share_family.contains(&m.as_str())),
            "only share modules in the share phase: {shares:?}"
        );
        // virtio-fs builds on FUSE: the share phase, which may load first, holds both.
        let position = |name: &str| shares.iter().position(|m| m == name);
        assert!(
            position("fuse").is_some() && position("fuse") < position("virtiofs"),
            "{shares:?}"
        );
        for share in ["9p", "9pnet_virtio", "virtiofs"] {
            assert!(shares.iter().any(|m| m == share), "{share}: {shares:?}");
        }
        for later in ["xt_MASQUERADE", "xt_conntrack", "xt_addrtype", "nft_compat"] {
            assert!(deferred.iter().any(|m| m == later), "{later}: {deferred:?}");
        }
        assert!(
            deferred
                .iter()
                .all(|m| m.starts_with("xt_") || m == "nft_compat"),
            "only on-demand modules deferred: {deferred:?}"
        );
        assert!(phases.engine.iter().all(|p| !is_deferrable(p)));
        let (_, all_late) = phases_before_split(&modules);
        let mut all = [
            phases.engine.clone(),
            phases.shares.clone(),
            phases.deferred.clone(),
        ]
        .concat();
        all.sort();
        let mut all_late = all_late;
        all_late.sort();
        assert_eq!(all, all_late, "every container module is in one phase");

        let mut kernel = FakeKernel::new(&modules);
        let devices = load_all_with(&modules, &phases.devices, |path| kernel.load(path));
        let engine = load_all_with(&modules, &phases.engine, |path| kernel.load(path));
        assert_eq!(failures(&engine), Vec::<String>::new());
        assert_eq!(engine.absent, 0, "{:?}", devices.left_out);
        // Shares and the rest load independently of each other once the engine's are in.
        let deferred = load_all_with(&modules, &phases.deferred, |path| kernel.load(path));
        assert_eq!(failures(&deferred), Vec::<String>::new());
        assert_eq!(deferred.loaded, phases.deferred.len());
        let shares = load_all_with(&modules, &phases.shares, |path| kernel.load(path));
        assert_eq!(failures(&shares), Vec::<String>::new());
        assert_eq!(shares.loaded, phases.shares.len());
    }

    /// The kernel resolves the deferred modules' on-demand requests through `modules.alias`
    /// (what busybox modprobe reads): iptables' `ipt_MASQUERADE`/`ipt_addrtype` names and
    /// nf_tables' `nft-expr-match`/`nft-expr-target` for `iptables-nft`'s compat expressions.
    #[test]
    fn the_deferred_modules_are_reachable_through_their_kernel_request_aliases() {
        let modules = image_modules();
        let text = std::fs::read_to_string(modules.join("modules.alias")).expect("modules.alias");
        let aliases = parse_modules_alias(&text);
        let resolves = |request: &str, module: &str| {
            aliases
                .iter()
                .any(|a| alias_matches(&a.pattern, request) && a.module == module)
        };
        for (request, module) in [
            ("ipt_MASQUERADE", "xt_MASQUERADE"),
            ("ipt_addrtype", "xt_addrtype"),
            ("ipt_conntrack", "xt_conntrack"),
            ("nft-expr-match", "nft_compat"),
            ("nft-expr-target", "nft_compat"),
        ] {
            assert!(resolves(request, module), "{request} -> {module}");
        }
    }

    /// The container modules as one list (the load order without the device phase).
    fn phases_before_split(dir: &Path) -> (Vec<String>, Vec<String>) {
        let entries = read_modules_dep(dir).expect("modules.dep");
        let order = load_order(&entries);
        split_phases(&entries, &order, is_device_driver)
    }

    #[test]
    fn on_a_microvm_every_background_module_loads() {
        let virtio: Devices = &[
            ("virtio", "virtio0", "virtio:d00000002v554D4551"),
            ("virtio", "virtio1", "virtio:d00000001v554D4551"),
            ("virtio", "virtio2", "virtio:d00000004v554D4551"),
            // The free page reporting balloon.
            ("virtio", "virtio3", "virtio:d00000005v554D4551"),
        ];
        let (device, late, kernel) = boot_image(
            &[
                ("acpi", "LNRO0005:00", "acpi:LNRO0005:"),
                ("acpi", "LNRO0005:01", "acpi:LNRO0005:"),
                ("acpi", "LNRO0005:02", "acpi:LNRO0005:"),
                ("acpi", "PNP0C0C:00", "acpi:PNP0C0C:"),
            ],
            &[("virtio_mmio", virtio)],
        );
        assert_eq!(failures(&device), Vec::<String>::new());
        assert_eq!(failures(&late), Vec::<String>::new());
        assert_eq!(late.absent, 0, "{:?}", kernel.tried);
        let (_, late_paths) = two_phases(&image_modules()).expect("phases");
        assert_eq!(late.loaded, late_paths.len());
        for module in [
            "virtio_blk",
            "virtio_net",
            "virtio_rng",
            "virtio_balloon",
            "button",
            "9pnet_virtio",
        ] {
            assert!(
                kernel.tried(module),
                "{module} not loaded: {:?}",
                kernel.tried
            );
        }
    }

    #[test]
    fn on_hyper_v_the_virtio_shares_modules_are_skipped_not_failed() {
        let vmbus_devices: Devices = &[
            ("vmbus", "storvsc", "vmbus:d96361baa104294db60572e2ffb1dc7f"),
            ("vmbus", "netvsc", "vmbus:635161f83edfc546913ff2d2f965ed0e"),
        ];
        let (device, late, kernel) = boot_image(
            &[("acpi", "VMBUS:00", "acpi:VMBUS:")],
            &[("hv_vmbus", vmbus_devices)],
        );
        assert_eq!(failures(&device), Vec::<String>::new());
        assert_eq!(failures(&late), Vec::<String>::new());
        for module in [
            "hv_vmbus",
            "hv_storvsc",
            "hv_netvsc",
            "sd_mod",
            "ext4",
            "overlay",
        ] {
            assert!(
                kernel.tried(module),
                "{module} not loaded: {:?}",
                kernel.tried
            );
        }
        for module in ["virtio", "9pnet_virtio", "virtiofs"] {
            assert!(!kernel.tried(module), "{module} loaded: {:?}", kernel.tried);
        }
        assert_eq!(
            late.absent, 2,
            "9pnet_virtio and virtiofs are not for this hardware"
        );

        // Without the device phase's left-out modules, the kernel refuses both.
        let modules = image_modules();
        let (_, late_paths) = two_phases(&modules).expect("phases");
        let mut kernel = FakeKernel::new(&modules);
        let unfiltered = load_all_after_with(&modules, &late_paths, &HashSet::new(), |path| {
            kernel.load(path)
        });
        assert_eq!(unfiltered.failed.len(), 2, "{:?}", failures(&unfiltered));
    }

    #[test]
    fn a_q35_machine_gets_virtio_pci_ahci_and_the_power_button() {
        let virtio: Devices = &[
            ("virtio", "virtio0", "virtio:d00000001v00001AF4"),
            ("virtio", "virtio1", "virtio:d00000002v00001AF4"),
            ("virtio", "virtio2", "virtio:d00000004v00001AF4"),
            ("virtio", "virtio3", "virtio:d00000005v00001AF4"),
        ];
        let (device, late, kernel) = boot_image(
            &[
                // Host bridge, LPC bridge and SMBus of the ICH9 chipset: no driver here.
                (
                    "pci",
                    "0000:00:00.0",
                    "pci:v00008086d000029C0sv00001AF4sd00001100bc06sc00i00",
                ),
                (
                    "pci",
                    "0000:00:1f.0",
                    "pci:v00008086d00002918sv00001AF4sd00001100bc06sc01i00",
                ),
                (
                    "pci",
                    "0000:00:1f.3",
                    "pci:v00008086d00002930sv00001AF4sd00001100bc0Csc05i00",
                ),
                // ICH9 AHCI.
                (
                    "pci",
                    "0000:00:1f.2",
                    "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01",
                ),
                // virtio-net, virtio-blk, virtio-rng, virtio-balloon (modern virtio PCI).
                (
                    "pci",
                    "0000:00:02.0",
                    "pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00",
                ),
                (
                    "pci",
                    "0000:00:03.0",
                    "pci:v00001AF4d00001042sv00001AF4sd00001100bc01sc00i00",
                ),
                (
                    "pci",
                    "0000:00:04.0",
                    "pci:v00001AF4d00001044sv00001AF4sd00001100bc00scFFi00",
                ),
                (
                    "pci",
                    "0000:00:05.0",
                    "pci:v00001AF4d00001045sv00001AF4sd00001100bc05sc00i00",
                ),
                ("acpi", "LNXPWRBN:00", "acpi:LNXPWRBN:"),
                ("acpi", "PNP0A08:00", "acpi:PNP0A08:PNP0A03:"),
            ],
            &[("virtio_pci", virtio)],
        );
        assert_eq!(failures(&device), Vec::<String>::new());
        assert_eq!(failures(&late), Vec::<String>::new());
        let position = |name: &str| {
            kernel
                .tried
                .iter()
                .position(|n| n == name)
                .unwrap_or_else(|| panic!("{name} not loaded: {:?}", kernel.tried))
        };
        for driver in ["virtio_blk", "virtio_net", "virtio_rng", "virtio_balloon"] {
            assert!(position("virtio_pci") < position(driver), "{driver}");
        }
        assert!(position("ahci") < position("sd_mod"));
        position("button");
        position("evdev");
        position("9pnet_virtio");
        position("virtiofs");
        for module in [
            "virtio_mmio",
            "virtio_scsi",
            "hv_vmbus",
            "hv_storvsc",
            "virtio_console",
        ] {
            assert!(!kernel.tried(module), "{module} loaded: {:?}", kernel.tried);
        }
    }

    #[test]
    fn a_virtualbox_machine_gets_ahci_and_its_virtio_nic() {
        let (device, late, kernel) = boot_image(
            &[
                (
                    "pci",
                    "0000:00:00.0",
                    "pci:v00008086d00001237sv00000000sd00000000bc06sc00i00",
                ),
                (
                    "pci",
                    "0000:00:02.0",
                    "pci:v000015ADd00000405sv000015ADsd00000405bc03sc00i00",
                ),
                (
                    "pci",
                    "0000:00:04.0",
                    "pci:v000080EEd0000CAFEsv00000000sd00000000bc08sc80i00",
                ),
                // virtio-net (legacy device id), ICH8M AHCI.
                (
                    "pci",
                    "0000:00:03.0",
                    "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00",
                ),
                (
                    "pci",
                    "0000:00:0d.0",
                    "pci:v00008086d00002829sv00000000sd00000000bc01sc06i01",
                ),
                ("acpi", "LNXPWRBN:00", "acpi:LNXPWRBN:"),
            ],
            &[(
                "virtio_pci",
                &[("virtio", "virtio0", "virtio:d00000001v00001AF4")],
            )],
        );
        assert_eq!(failures(&device), Vec::<String>::new());
        assert_eq!(failures(&late), Vec::<String>::new());
        for module in [
            "ahci",
            "sd_mod",
            "virtio_pci",
            "virtio_net",
            "button",
            "ext4",
        ] {
            assert!(
                kernel.tried(module),
                "{module} not loaded: {:?}",
                kernel.tried
            );
        }
        for module in [
            "virtio_blk",
            "virtio_rng",
            "virtio_balloon",
            "virtio_mmio",
            "hv_vmbus",
        ] {
            assert!(!kernel.tried(module), "{module} loaded: {:?}", kernel.tried);
        }
    }

    #[test]
    fn an_empty_modules_alias_or_sys_bus_loads_every_device_module() {
        for broken in ["alias", "sys"] {
            let tmp = microvm_tree();
            let modules = tmp.path().join("modules");
            if broken == "alias" {
                std::fs::write(
                    modules.join("modules.alias"),
                    "# Aliases extracted from modules themselves.\n",
                )
                .expect("empty alias");
            } else {
                std::fs::remove_dir_all(tmp.path().join("bus")).expect("rm bus");
            }
            let all = candidates(&modules);
            let mut tried = 0;
            let (report, not_needed) =
                load_for_devices_with(&modules, &all, &tmp.path().join("bus"), |_| {
                    tried += 1;
                    Ok(true)
                });
            assert_eq!(
                (tried, report.loaded, not_needed),
                (all.len(), all.len(), 0),
                "{broken}"
            );
        }
    }

    #[test]
    fn a_subsystem_that_failed_to_load_brings_no_class_driver() {
        let tmp = microvm_tree();
        let root = tmp.path().to_owned();
        let modules = root.join("modules");
        let mut tried = Vec::new();
        let (report, _) =
            load_for_devices_with(&modules, &candidates(&modules), &root.join("bus"), |path| {
                tried.push(path.to_owned());
                if path.ends_with("virtio_mmio.ko") {
                    add_device(&root, "virtio", "virtio0", "virtio:d00000008v554D4551");
                }
                if path.ends_with("scsi_mod.ko") {
                    return Err(ModuleError::Load {
                        path: path.to_owned(),
                        source: Errno::ENOEXEC,
                    });
                }
                Ok(true)
            });
        let tried = names(&tried);
        assert!(tried.iter().any(|n| n == "scsi_mod"), "{tried:?}");
        assert!(!tried.iter().any(|n| n == "sd_mod"), "{tried:?}");
        assert_eq!(report.failed.len(), 1);
    }

    #[test]
    fn bracket_and_question_mark_patterns_match_as_fnmatch_does() {
        let pattern = "usb:v05ACp12[9A]?d*dc*";
        assert!(alias_matches(pattern, "usb:v05ACp129Ad0100dc00"));
        assert!(alias_matches(pattern, "usb:v05ACp12A0d0100dc00"));
        assert!(
            !alias_matches(pattern, "usb:v05ACp12B0d0100dc00"),
            "not in the set"
        );
        assert!(
            !alias_matches(pattern, "usb:v05ACp129d0100dc00"),
            "? is one character"
        );
        assert!(alias_matches("pci:v0000[!8]*", "pci:v00001AF4d00001041"));
        assert!(!alias_matches("pci:v0000[!8]*", "pci:v00008086d00002922"));
        // Without FNM_PATHNAME a `*` also crosses a `/`.
        assert!(alias_matches(
            "of:N*T*Cvirtio,mmio",
            "of:Nvirtio_mmio/a000T(null)Cvirtio,mmio"
        ));
    }

    #[test]
    fn a_cycle_does_not_hang() {
        let entries = parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n");
        let order = load_order(&entries);
        assert_eq!(order.len(), 2);
    }
}
