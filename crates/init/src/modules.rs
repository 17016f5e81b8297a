//! Kernel modules: every module the image ships is loaded at boot, dependencies first.
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

/// Outcome of [`load_all`].
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
}

/// Reads `dir/modules.dep` and returns the two load phases (see [`split_phases`]).
pub fn phases(dir: &Path) -> Result<(Vec<String>, Vec<String>), ModuleError> {
    let dep_path = dir.join("modules.dep");
    let text = std::fs::read_to_string(&dep_path).map_err(|source| ModuleError::ReadDep {
        path: dep_path.clone(),
        source,
    })?;
    let entries = parse_modules_dep(&text);
    let order = load_order(&entries);
    Ok(split_phases(&entries, &order, is_device_driver))
}

/// Loads modules (paths relative to `dir`) in the given order.
pub fn load_all(dir: &Path, paths: &[String]) -> LoadReport {
    load_all_with(dir, paths, load_one)
}

/// [`load_all`] with the loader of one module file given (tests).
fn load_all_with(
    dir: &Path,
    paths: &[String],
    mut load: impl FnMut(&Path) -> Result<bool, ModuleError>,
) -> LoadReport {
    // Dependencies, to skip the modules that need an absent one; without modules.dep nothing
    // is skipped and such modules fail as before.
    let deps: HashMap<String, Vec<String>> = std::fs::read_to_string(dir.join("modules.dep"))
        .map(|text| {
            parse_modules_dep(&text)
                .into_iter()
                .map(|e| (e.path, e.deps))
                .collect()
        })
        .unwrap_or_default();
    let mut absent: HashSet<&str> = HashSet::new();
    let mut report = LoadReport::default();
    for rel in paths {
        if deps
            .get(rel)
            .is_some_and(|needs| needs.iter().any(|d| absent.contains(d.as_str())))
        {
            absent.insert(rel);
            report.absent += 1;
            continue;
        }
        let path = dir.join(rel);
        match load(&path) {
            Ok(true) => report.loaded += 1,
            Ok(false) => report.already += 1,
            Err(ModuleError::Load {
                source: Errno::ENODEV,
                ..
            }) => {
                absent.insert(rel);
                report.absent += 1;
            }
            Err(err) => report.failed.push(err),
        }
    }
    report
}

/// Loads one module file; `Ok(false)` if it was already loaded.
fn load_one(path: &Path) -> Result<bool, ModuleError> {
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

    #[test]
    fn a_cycle_does_not_hang() {
        let entries = parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n");
        let order = load_order(&entries);
        assert_eq!(order.len(), 2);
    }
}
