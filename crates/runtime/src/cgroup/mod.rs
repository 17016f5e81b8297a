//! Control groups: one per container, on cgroup v2 (unified) or v1 (legacy and hybrid) hosts.
//!
//! The monitor ([`crate::run`]) creates the container's cgroup and writes its limits before the
//! container's first process runs, moves that process in before it execs, and removes the
//! cgroup once the container has exited. The engine uses the same [`Cgroup`] in-process, without
//! namespaces, to act on a running container: [`Cgroup::freeze`]/[`Cgroup::thaw`] (`docker
//! pause`), [`Cgroup::update`] (`docker update`), [`Cgroup::stats`] (`docker stats`),
//! [`Cgroup::pids`] (`docker top`).
//!
//! Layout: on v2 `ROOT/PARENT/ID` (the controllers enabled in every ancestor's
//! `cgroup.subtree_control`); on v1 `ROOT/CONTROLLER/PARENT/ID` for each controller in
//! [`V1_CONTROLLERS`] the host mounts. A hybrid host (v1 controllers plus an empty v2 tree at
//! `ROOT/unified`) is treated as v1, since its v2 tree has no controllers to offer.
//!
//! Every path is built under a root given to [`Cgroup::under`], so unit tests run against a
//! directory of plain files standing in for cgroupfs.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use crate::spec::{Resources, DEFAULT_CGROUP_PARENT};
use crate::syscall::{io_errno, SysError};

pub mod devices;

/// Where cgroupfs is mounted on Linux hosts and in the guest.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The v1 hierarchies a container's cgroup lives in, by directory under the root (those the
/// host lacks are skipped): runc's set, `systemd` being the named `name=systemd` hierarchy.
pub const V1_CONTROLLERS: [&str; 9] = [
    "memory", "cpu", "cpuacct", "pids", "freezer", "devices", "cpuset", "blkio", "systemd",
];

/// The v2 controllers enabled for containers (those the kernel lacks are skipped).
const V2_CONTROLLERS: [&str; 4] = ["cpu", "cpuset", "memory", "pids"];

/// How long [`Cgroup::freeze`] and [`Cgroup::thaw`] wait for the kernel to reach the state.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Cgroup::remove`] keeps killing stragglers and retrying.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// v1 reports "no limit" as the largest page-aligned `i64`; anything this large is unlimited.
const V1_UNLIMITED: u64 = 1 << 62;

/// Which cgroup hierarchy the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Unified hierarchy (`cgroup2` mounted on the root).
    V2,
    /// Legacy or hybrid: one hierarchy per controller under the root.
    V1,
}

/// A failure on a container's cgroup; each names the file or directory it concerns.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Neither a cgroup2 mount nor v1 controllers under the root.
    #[error("no cgroup filesystem at {}", root.display())]
    NotMounted {
        /// The cgroup root.
        root: PathBuf,
    },
    /// The cgroup parent is not a relative path inside the hierarchy.
    #[error("invalid cgroup parent {parent:?}")]
    BadParent {
        /// The parent as given.
        parent: String,
    },
    /// Creating a cgroup directory failed.
    #[error("create cgroup {}", path.display())]
    Create {
        /// The directory.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// Writing an interface file failed.
    #[error("write {value:?} to {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// Reading an interface file failed.
    #[error("read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
    /// An interface file held something unexpected.
    #[error("unexpected content in {}: {content:?}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it held.
        content: String,
    },
    /// The freezer did not reach the state in time.
    #[error("cgroup {} did not become {state} in time", path.display())]
    FreezeTimeout {
        /// The cgroup directory.
        path: PathBuf,
        /// The state waited for (`frozen` or `thawed`).
        state: &'static str,
    },
    /// The freezer is not available (no v1 freezer controller, or a v2 kernel before 5.2).
    #[error("cgroup freezer not available for {}", path.display())]
    NoFreezer {
        /// The cgroup directory.
        path: PathBuf,
    },
    /// The v2 device program could not be installed.
    #[error(transparent)]
    DeviceProgram(#[from] devices::DeviceProgramError),
    /// Removing the cgroup failed (processes still in it).
    #[error("remove cgroup {}", path.display())]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: SysError,
    },
}

/// Resource usage of a container, as `docker stats` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Memory in use, page cache included, in bytes.
    pub memory_usage: u64,
    /// The memory limit in bytes; `None` when unlimited (Docker then shows the host's memory).
    pub memory_limit: Option<u64>,
    /// Inactive file cache in bytes, which `docker stats` subtracts from the usage.
    pub memory_inactive_file: u64,
    /// CPU time used, in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Number of tasks in the cgroup.
    pub pids_current: u64,
}

/// One container's cgroup (see the module docs). Creating the value touches nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    mode: CgroupMode,
    /// v2: the cgroup root; v1: the root holding one directory per controller.
    root: PathBuf,
    /// `PARENT/ID`, relative.
    relative: PathBuf,
    /// v1 only: the controllers this host mounts.
    controllers: Vec<&'static str>,
}

/// Finds the hierarchy mounted at `root`.
pub fn detect(root: &Path) -> Result<CgroupMode, CgroupError> {
    if let Ok(fs) = nix::sys::statfs::statfs(root) {
        if fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC {
            return Ok(CgroupMode::V2);
        }
    }
    if V1_CONTROLLERS.iter().any(|c| root.join(c).is_dir()) {
        return Ok(CgroupMode::V1);
    }
    Err(CgroupError::NotMounted {
        root: root.to_path_buf(),
    })
}

impl Cgroup {
    /// The cgroup of container `id` under `parent` (`None`: [`DEFAULT_CGROUP_PARENT`]) on this
    /// host, at [`CGROUP_ROOT`]. Only detects the hierarchy; creates nothing.
    pub fn for_container(id: &str, parent: Option<&str>) -> Result<Self, CgroupError> {
        let root = Path::new(CGROUP_ROOT);
        Self::under(root, detect(root)?, id, parent)
    }

    /// The cgroup of container `id` under `parent` in a hierarchy of `mode` at `root`.
    pub fn under(
        root: &Path,
        mode: CgroupMode,
        id: &str,
        parent: Option<&str>,
    ) -> Result<Self, CgroupError> {
        let parent = parent.unwrap_or(DEFAULT_CGROUP_PARENT);
        let relative = Path::new(parent).join(id);
        let inside = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::RootDir));
        if !inside || id.is_empty() || id.contains('/') {
            return Err(CgroupError::BadParent {
                parent: parent.to_string(),
            });
        }
        // `/docker` and `docker` name the same parent, as with Docker's --cgroup-parent.
        let relative: PathBuf = relative
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        let controllers = match mode {
            CgroupMode::V2 => Vec::new(),
            CgroupMode::V1 => V1_CONTROLLERS
                .into_iter()
                .filter(|c| root.join(c).is_dir())
                .collect(),
        };
        Ok(Self {
            mode,
            root: root.to_path_buf(),
            relative,
            controllers,
        })
    }

    /// The hierarchy this cgroup lives in.
    pub fn mode(&self) -> CgroupMode {
        self.mode
    }

    /// The cgroup's directory: the only one on v2, the `controller` one on v1 (`None` when the
    /// host lacks that controller).
    pub fn path(&self, controller: &str) -> Option<PathBuf> {
        match self.mode {
            CgroupMode::V2 => Some(self.root.join(&self.relative)),
            CgroupMode::V1 => self
                .controllers
                .contains(&controller)
                .then(|| self.root.join(controller).join(&self.relative)),
        }
    }

    /// Every directory of this cgroup (one on v2, one per controller on v1).
    fn dirs(&self) -> Vec<PathBuf> {
        match self.mode {
            CgroupMode::V2 => vec![self.root.join(&self.relative)],
            CgroupMode::V1 => self
                .controllers
                .iter()
                .map(|c| self.root.join(c).join(&self.relative))
                .collect(),
        }
    }

    /// Creates the cgroup (and its parents); on v2 also enables the controllers containers
    /// use in every ancestor, since a v2 cgroup only gets the controllers its parent delegates.
    pub fn create(&self) -> Result<(), CgroupError> {
        if self.mode == CgroupMode::V2 {
            let mut dir = self.root.clone();
            let parents: Vec<_> = self.relative.components().collect();
            for component in &parents[..parents.len().saturating_sub(1)] {
                enable_controllers(&dir)?;
                dir.push(component);
                mkdir(&dir)?;
            }
            enable_controllers(&dir)?;
        }
        // On v2 `path` names the one directory whatever the controller: cpuset levels are v1's.
        if self.mode == CgroupMode::V1 && self.path("cpuset").is_some() {
            self.create_cpuset(&self.root.join("cpuset"))?;
        }
        for dir in self.dirs() {
            mkdir(&dir)?;
        }
        Ok(())
    }

    /// A v1 cpuset cgroup starts with no CPUs and no memory nodes, and takes no process until
    /// it has some: each new level inherits its parent's (as runc does).
    fn create_cpuset(&self, base: &Path) -> Result<(), CgroupError> {
        let mut dir = base.to_path_buf();
        for component in self.relative.components() {
            let parent = dir.clone();
            dir.push(component);
            mkdir(&dir)?;
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let own = read_optional(&dir.join(file))?.unwrap_or_default();
                if !own.trim().is_empty() {
                    continue;
                }
                let inherited = read_optional(&parent.join(file))?.unwrap_or_default();
                if !inherited.trim().is_empty() {
                    write(&dir.join(file), inherited.trim())?;
                }
            }
        }
        Ok(())
    }

    /// v1: each hierarchy's name under the root and this cgroup's directory in it, which a
    /// container with the host's cgroup namespace sees at `/sys/fs/cgroup/NAME` (runc's
    /// bind mounts). Empty on v2.
    pub fn v1_dirs(&self) -> Vec<(String, PathBuf)> {
        match self.mode {
            CgroupMode::V2 => Vec::new(),
            CgroupMode::V1 => self
                .controllers
                .iter()
                .map(|c| (c.to_string(), self.root.join(c).join(&self.relative)))
                .collect(),
        }
    }

    /// Restricts the devices the container may open to Docker's default list, or allows all
    /// for `--privileged` (see [`devices`]). On v1 a host without the `devices` controller is
    /// left alone; on v2 the list is an eBPF program attached to the cgroup.
    pub fn limit_devices(&self, privileged: bool) -> Result<(), CgroupError> {
        self.limit_devices_with(privileged, &[])
    }

    /// [`Cgroup::limit_devices`] with `extra` rules allowed besides Docker's default list
    /// (`--device`, `--device-cgroup-rule`).
    pub fn limit_devices_with(
        &self,
        privileged: bool,
        extra: &[devices::DeviceRule],
    ) -> Result<(), CgroupError> {
        match self.mode {
            CgroupMode::V1 => {
                let Some(dir) = self.path("devices") else {
                    return Ok(());
                };
                for (file, value) in devices::v1_writes_with(privileged, extra) {
                    write(&dir.join(file), &value)?;
                }
                Ok(())
            }
            // No program means no restriction beyond the ancestors'.
            CgroupMode::V2 if privileged => Ok(()),
            CgroupMode::V2 => {
                let rules: Vec<devices::DeviceRule> = devices::DEFAULT_RULES
                    .iter()
                    .chain(extra)
                    .copied()
                    .collect();
                Ok(devices::attach_program(
                    &self.root.join(&self.relative),
                    &rules,
                )?)
            }
        }
    }

    /// Writes the limits `resources` sets (`docker update`); `None` fields are left alone.
    pub fn update(&self, resources: &Resources) -> Result<(), CgroupError> {
        match self.mode {
            CgroupMode::V2 => self.update_v2(resources),
            CgroupMode::V1 => self.update_v1(resources),
        }
    }

    fn update_v2(&self, r: &Resources) -> Result<(), CgroupError> {
        let dir = self.root.join(&self.relative);
        if let Some(memory) = r.memory_bytes {
            write(&dir.join("memory.max"), &limit_or_max(memory))?;
        }
        if let Some(swap) = r.memory_swap_bytes {
            // v2 limits swap alone; Docker's value is memory plus swap.
            let value = match (swap, r.memory_bytes) {
                (swap, _) if swap < 0 => Some("max".to_string()),
                (swap, Some(memory)) if memory > 0 && swap >= memory => {
                    Some((swap - memory).to_string())
                }
                _ => None,
            };
            if let Some(value) = value {
                write_optional(&dir.join("memory.swap.max"), &value)?;
            }
        }
        if r.cpu_quota.is_some() || r.cpu_period.is_some() {
            let quota = match r.cpu_quota {
                Some(quota) if quota > 0 => quota.to_string(),
                _ => "max".to_string(),
            };
            let period = r.cpu_period.unwrap_or(100_000);
            write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
        }
        if let Some(shares) = r.cpu_shares.filter(|s| *s > 0) {
            write(
                &dir.join("cpu.weight"),
                &shares_to_weight(shares).to_string(),
            )?;
        }
        if let Some(pids) = r.pids_limit {
            write(&dir.join("pids.max"), &limit_or_max(pids))?;
        }
        // Empty on v2 means "the parent's": nothing to write unless asked.
        if let Some(cpus) = r.cpuset_cpus.as_deref().filter(|c| !c.is_empty()) {
            write(&dir.join("cpuset.cpus"), cpus)?;
        }
        if let Some(mems) = r.cpuset_mems.as_deref().filter(|m| !m.is_empty()) {
            write(&dir.join("cpuset.mems"), mems)?;
        }
        Ok(())
    }

    fn update_v1(&self, r: &Resources) -> Result<(), CgroupError> {
        if let Some(dir) = self.path("memory") {
            let limit = dir.join("memory.limit_in_bytes");
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            let memory = r.memory_bytes.map(|m| if m > 0 { m } else { -1 });
            let swap = r.memory_swap_bytes.map(|s| if s > 0 { s } else { -1 });
            // memsw must never be below the memory limit: when the write in one order is
            // refused, the other order works.
            let first = memory.map(|m| write(&limit, &m.to_string())).transpose();
            if let Some(swap) = swap {
                write_optional(&memsw, &swap.to_string())?;
            }
            if first.is_err() {
                if let Some(memory) = memory {
                    write(&limit, &memory.to_string())?;
                }
            }
        }
        if let Some(dir) = self.path("cpu") {
            if let Some(period) = r.cpu_period {
                write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
            }
            if let Some(quota) = r.cpu_quota {
                let quota = if quota > 0 { quota } else { -1 };
                write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
            if let Some(shares) = r.cpu_shares.filter(|s| *s > 0) {
                write(&dir.join("cpu.shares"), &shares.to_string())?;
            }
        }
        if let Some(dir) = self.path("pids") {
            if let Some(pids) = r.pids_limit {
                write(&dir.join("pids.max"), &limit_or_max(pids))?;
            }
        }
        if let Some(dir) = self.path("cpuset") {
            if let Some(cpus) = r.cpuset_cpus.as_deref().filter(|c| !c.is_empty()) {
                write(&dir.join("cpuset.cpus"), cpus)?;
            }
            if let Some(mems) = r.cpuset_mems.as_deref().filter(|m| !m.is_empty()) {
                write(&dir.join("cpuset.mems"), mems)?;
            }
        }
        Ok(())
    }

    /// Moves process `pid` (a PID in the caller's namespace) and its future children into the
    /// cgroup.
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// v2: the cgroup's directory, opened for `clone3(CLONE_INTO_CGROUP)`. A child born into
    /// the cgroup skips the write to `cgroup.procs`, whose first use waits for an RCU grace
    /// period (8–16 ms measured), the largest part of a `docker exec`. `None` on v1, which has
    /// no such clone flag, and when the directory cannot be opened (the write path then reports
    /// what is wrong).
    pub fn open_for_clone(&self) -> Option<OwnedFd> {
        if self.mode != CgroupMode::V2 {
            return None;
        }
        let dir = self.root.join(&self.relative);
        std::fs::File::open(dir).ok().map(OwnedFd::from)
    }

    /// The PIDs of the processes in the cgroup, in the caller's PID namespace (`docker top`).
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let Some(dir) = ["pids", "memory", "freezer", "cpu", "cpuacct"]
            .iter()
            .find_map(|c| self.path(c))
        else {
            return Ok(Vec::new());
        };
        let path = dir.join("cgroup.procs");
        let content = read(&path)?;
        content
            .lines()
            .map(|line| {
                line.trim().parse().map_err(|_| CgroupError::Parse {
                    path: path.clone(),
                    content: line.to_string(),
                })
            })
            .collect()
    }

    /// Freezes every process of the cgroup (`docker pause`) and waits until they all are.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.set_frozen(true)
    }

    /// Thaws the cgroup (`docker unpause`) and waits until it is.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.set_frozen(false)
    }

    /// Whether the cgroup is frozen.
    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        match self.mode {
            CgroupMode::V2 => {
                let events = self.root.join(&self.relative).join("cgroup.events");
                let content = read(&events)?;
                key_value(&content, "frozen")
                    .map(|v| v == 1)
                    .ok_or(CgroupError::NoFreezer {
                        path: self.root.join(&self.relative),
                    })
            }
            CgroupMode::V1 => {
                let dir = self.path("freezer").ok_or_else(|| CgroupError::NoFreezer {
                    path: self.root.join("freezer").join(&self.relative),
                })?;
                Ok(read(&dir.join("freezer.state"))?.trim() == "FROZEN")
            }
        }
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let (dir, file, value) = match self.mode {
            CgroupMode::V2 => (
                self.root.join(&self.relative),
                "cgroup.freeze",
                if frozen { "1" } else { "0" },
            ),
            CgroupMode::V1 => (
                self.path("freezer").ok_or_else(|| CgroupError::NoFreezer {
                    path: self.root.join("freezer").join(&self.relative),
                })?,
                "freezer.state",
                if frozen { "FROZEN" } else { "THAWED" },
            ),
        };
        let control = dir.join(file);
        if self.mode == CgroupMode::V2 && !control.exists() {
            return Err(CgroupError::NoFreezer { path: dir });
        }
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        loop {
            // v1 may stay FREEZING when a task is busy in the kernel; writing again retries.
            write(&control, value)?;
            if self.is_frozen()? == frozen {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CgroupError::FreezeTimeout {
                    path: dir,
                    state: if frozen { "frozen" } else { "thawed" },
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Current usage (`docker stats`); figures of controllers the host lacks are zero.
    pub fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let mut stats = CgroupStats::default();
        match self.mode {
            CgroupMode::V2 => {
                let dir = self.root.join(&self.relative);
                stats.memory_usage = read_u64_optional(&dir.join("memory.current"))?.unwrap_or(0);
                stats.memory_limit = read_limit(&dir.join("memory.max"))?;
                stats.memory_inactive_file =
                    read_key_optional(&dir.join("memory.stat"), "inactive_file")?.unwrap_or(0);
                stats.cpu_usage_ns = read_key_optional(&dir.join("cpu.stat"), "usage_usec")?
                    .unwrap_or(0)
                    .saturating_mul(1000);
                stats.pids_current = read_u64_optional(&dir.join("pids.current"))?.unwrap_or(0);
            }
            CgroupMode::V1 => {
                if let Some(dir) = self.path("memory") {
                    stats.memory_usage =
                        read_u64_optional(&dir.join("memory.usage_in_bytes"))?.unwrap_or(0);
                    stats.memory_limit = read_limit(&dir.join("memory.limit_in_bytes"))?;
                    stats.memory_inactive_file =
                        read_key_optional(&dir.join("memory.stat"), "total_inactive_file")?
                            .unwrap_or(0);
                }
                if let Some(dir) = self.path("cpuacct") {
                    stats.cpu_usage_ns =
                        read_u64_optional(&dir.join("cpuacct.usage"))?.unwrap_or(0);
                }
                if let Some(dir) = self.path("pids") {
                    stats.pids_current = read_u64_optional(&dir.join("pids.current"))?.unwrap_or(0);
                }
            }
        }
        Ok(stats)
    }

    /// Whether the kernel's OOM killer killed a process of this cgroup (`State.OOMKilled`).
    pub fn oom_killed(&self) -> Result<bool, CgroupError> {
        let (file, key) = match self.mode {
            CgroupMode::V2 => (
                self.root.join(&self.relative).join("memory.events"),
                "oom_kill",
            ),
            CgroupMode::V1 => match self.path("memory") {
                Some(dir) => (dir.join("memory.oom_control"), "oom_kill"),
                None => return Ok(false),
            },
        };
        Ok(read_key_optional(&file, key)?.unwrap_or(0) > 0)
    }

    /// Removes the cgroup once the container is gone. Processes left in it (a container's
    /// stragglers, still dying after its PID 1) are killed and waited for.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        for dir in self.dirs() {
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(err) if err.kind() == ErrorKind::NotFound => break,
                    Err(err) if Instant::now() > deadline => {
                        return Err(CgroupError::Remove {
                            path: dir,
                            source: SysError(io_errno(&err)),
                        })
                    }
                    Err(_) => {
                        if let Ok(procs) = read(&dir.join("cgroup.procs")) {
                            for pid in procs.lines().filter_map(|l| l.trim().parse().ok()) {
                                let _ = nix::sys::signal::kill(
                                    nix::unistd::Pid::from_raw(pid),
                                    nix::sys::signal::Signal::SIGKILL,
                                );
                            }
                        }
                        // A frozen cgroup cannot die.
                        if self.is_frozen().unwrap_or(false) {
                            let _ = self.set_frozen(false);
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Docker's `--cpu-shares` (2..262144, default 1024) as a v2 `cpu.weight` (1..10000, default
/// 100), the conversion runc uses.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

fn limit_or_max(value: i64) -> String {
    if value > 0 {
        value.to_string()
    } else {
        "max".to_string()
    }
}

/// Delegates the container controllers `dir` offers to its children.
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let available = read(&dir.join("cgroup.controllers"))?;
    let control = dir.join("cgroup.subtree_control");
    let enabled = read(&control).unwrap_or_default();
    let wanted: Vec<String> = V2_CONTROLLERS
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    write(&control, &wanted.join(" "))
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(CgroupError::Create {
            path: dir.to_path_buf(),
            source: SysError(io_errno(&err)),
        }),
    }
}

/// Writes an interface file in one `write(2)`, as the kernel wants; never creates it.
fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    let error = |err: std::io::Error| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source: SysError(io_errno(&err)),
    };
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(error)?;
    file.write_all(value.as_bytes()).map_err(error)
}

/// [`write`] for files some kernels lack (swap accounting off): a missing file is skipped.
fn write_optional(path: &Path, value: &str) -> Result<(), CgroupError> {
    if !path.exists() {
        return Ok(());
    }
    write(path, value)
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|err| CgroupError::Read {
        path: path.to_path_buf(),
        source: SysError(io_errno(&err)),
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(content) => Ok(Some(content)),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
        Err(err) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source: SysError(io_errno(&err)),
        }),
    }
}

fn parse_u64(path: &Path, content: &str) -> Result<u64, CgroupError> {
    content.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        content: content.to_string(),
    })
}

fn read_u64_optional(path: &Path) -> Result<Option<u64>, CgroupError> {
    read_optional(path)?
        .map(|content| parse_u64(path, &content))
        .transpose()
}

/// A limit file: `max` (v2) or a huge number (v1) means unlimited.
fn read_limit(path: &Path) -> Result<Option<u64>, CgroupError> {
    match read_optional(path)? {
        None => Ok(None),
        Some(content) if content.trim() == "max" => Ok(None),
        Some(content) => {
            let value = parse_u64(path, &content)?;
            Ok((value < V1_UNLIMITED).then_some(value))
        }
    }
}

/// A `key value` line of a flat-keyed file (`memory.stat`, `cpu.stat`, `memory.events`).
fn key_value(content: &str, key: &str) -> Option<u64> {
    content.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next() == Some(key))
            .then(|| parts.next()?.parse().ok())
            .flatten()
    })
}

fn read_key_optional(path: &Path, key: &str) -> Result<Option<u64>, CgroupError> {
    Ok(read_optional(path)?.and_then(|content| key_value(&content, key)))
}

#[cfg(test)]
mod tests;
