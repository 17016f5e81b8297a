//! Facts about the host the engine runs on, for `/version` and `/info`.

use std::path::Path;

/// The kernel release (`uname -r`).
pub fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// `PRETTY_NAME` of `/etc/os-release`, else `rmachine`.
pub fn operating_system() -> String {
    os_release_field(
        &std::fs::read_to_string("/etc/os-release").unwrap_or_default(),
        "PRETTY_NAME",
    )
    .unwrap_or_else(|| "rmachine".into())
}

/// `VERSION_ID` of `/etc/os-release`, else empty.
pub fn os_version() -> String {
    os_release_field(
        &std::fs::read_to_string("/etc/os-release").unwrap_or_default(),
        "VERSION_ID",
    )
    .unwrap_or_default()
}

fn os_release_field(content: &str, key: &str) -> Option<String> {
    content.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Total memory in bytes from `/proc/meminfo`.
pub fn mem_total() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix("MemTotal:")?;
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(0)
}

/// Number of CPUs the engine may use.
pub fn ncpu() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The host name.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// `2` on a unified cgroup hierarchy, else `1` (hybrid hosts count as v1, as dockerd does).
pub fn cgroup_version() -> &'static str {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "2"
    } else {
        "1"
    }
}

/// The resource limits containers get here, as `docker info` reports them: what the kernel's
/// cgroups offer *and* the runtime writes (it writes memory, swap, CFS quota and period, shares
/// or weight, cpuset and pids; never `oom_control`, kernel TCP memory or blkio/io limits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupFeatures {
    /// `--memory`.
    pub memory: bool,
    /// `--memory-swap`.
    pub swap: bool,
    /// `--cpu-period`.
    pub cfs_period: bool,
    /// `--cpu-quota`, `--cpus`.
    pub cfs_quota: bool,
    /// `--cpu-shares`.
    pub cpu_shares: bool,
    /// `--cpuset-cpus`, `--cpuset-mems`.
    pub cpuset: bool,
    /// `--pids-limit`.
    pub pids: bool,
}

/// The [`CgroupFeatures`] of the cgroup tree mounted at `root` (`/sys/fs/cgroup`).
pub fn cgroup_features_at(root: &Path) -> CgroupFeatures {
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers"));
    if let Ok(controllers) = controllers {
        let has = |name: &str| controllers.split_whitespace().any(|c| c == name);
        let cpu = has("cpu");
        // The root has no memory.swap.max: a child with the memory controller tells whether
        // the kernel accounts swap (the runtime skips the file when it is absent).
        let swap = has("memory")
            && std::fs::read_dir(root).is_ok_and(|entries| {
                entries
                    .filter_map(Result::ok)
                    .any(|e| e.path().join("memory.swap.max").exists())
            });
        return CgroupFeatures {
            memory: has("memory"),
            swap,
            cfs_period: cpu,
            cfs_quota: cpu,
            cpu_shares: cpu,
            cpuset: has("cpuset"),
            pids: has("pids"),
        };
    }
    let file = |controller: &str, name: &str| root.join(controller).join(name).exists();
    CgroupFeatures {
        memory: file("memory", "memory.limit_in_bytes"),
        swap: file("memory", "memory.memsw.limit_in_bytes"),
        cfs_period: file("cpu", "cpu.cfs_period_us"),
        cfs_quota: file("cpu", "cpu.cfs_quota_us"),
        cpu_shares: file("cpu", "cpu.shares"),
        cpuset: file("cpuset", "cpuset.cpus"),
        // The root of the pids hierarchy has no pids.max; the hierarchy is the controller.
        pids: root.join("pids").join("cgroup.procs").exists(),
    }
}

/// [`cgroup_features_at`] `/sys/fs/cgroup`.
pub fn cgroup_features() -> CgroupFeatures {
    cgroup_features_at(Path::new("/sys/fs/cgroup"))
}

/// Whether the kernel forwards IPv4 (`/proc/sys/net/ipv4/ip_forward`).
pub fn ipv4_forwarding() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "1")
}

/// `docker info`'s `Warnings`, with dockerd's texts and rules (daemon/info_unix.go
/// `fillPlatformInfo`): what cannot be enforced; on cgroup v2 no warning for what v2 has no
/// such knob for (kernel TCP memory, OOM-kill disable).
pub fn info_warnings(
    features: CgroupFeatures,
    cgroup_version: &str,
    forwarding: bool,
) -> Vec<String> {
    let v1 = cgroup_version == "1";
    let mut out = Vec::new();
    let mut warn = |missing: bool, text: &str| {
        if missing {
            out.push(format!("WARNING: {text}"));
        }
    };
    warn(!features.memory, "No memory limit support");
    warn(!features.swap, "No swap limit support");
    warn(v1, "No kernel memory TCP limit support");
    warn(v1, "No oom kill disable support");
    warn(!features.cfs_quota, "No cpu cfs quota support");
    warn(!features.cfs_period, "No cpu cfs period support");
    warn(!features.cpu_shares, "No cpu shares support");
    warn(!features.cpuset, "No cpuset support");
    // The runtime writes no blkio/io limits.
    if v1 {
        for what in ["read_bps", "write_bps", "read_iops", "write_iops"] {
            warn(true, &format!("No blkio throttle.{what}_device support"));
        }
    } else {
        warn(true, "No io.weight support");
        warn(true, "No io.weight (per device) support");
        for what in ["rbps", "wbps", "riops", "wiops"] {
            warn(true, &format!("No io.max ({what}) support"));
        }
    }
    warn(!forwarding, "IPv4 forwarding is disabled");
    out
}

/// Docker's architecture names: `x86_64` style for `/info`.
pub fn architecture() -> &'static str {
    std::env::consts::ARCH
}

/// Go's architecture names (`amd64`, `arm64`) for `/version`.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_v2_features_come_from_the_enabled_controllers() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        std::fs::create_dir(root.path().join("init.scope")).unwrap();
        let without_swap = cgroup_features_at(root.path());
        assert!(without_swap.memory && without_swap.cpuset && without_swap.pids);
        assert!(!without_swap.swap);
        std::fs::write(root.path().join("init.scope/memory.swap.max"), "max\n").unwrap();
        assert!(cgroup_features_at(root.path()).swap);
        std::fs::write(root.path().join("cgroup.controllers"), "memory\n").unwrap();
        let no_cpu = cgroup_features_at(root.path());
        assert!(!no_cpu.cfs_quota && !no_cpu.cpu_shares && !no_cpu.cpuset && !no_cpu.pids);
    }

    #[test]
    fn warnings_follow_dockerds_rules() {
        let all = CgroupFeatures {
            memory: true,
            swap: true,
            cfs_period: true,
            cfs_quota: true,
            cpu_shares: true,
            cpuset: true,
            pids: true,
        };
        let v2 = info_warnings(all, "2", true);
        assert!(!v2
            .iter()
            .any(|w| w.contains("oom kill") || w.contains("TCP")));
        assert!(v2.contains(&"WARNING: No io.max (rbps) support".to_string()));
        let v1 = info_warnings(CgroupFeatures { swap: false, ..all }, "1", false);
        assert_eq!(
            v1[..3],
            [
                "WARNING: No swap limit support",
                "WARNING: No kernel memory TCP limit support",
                "WARNING: No oom kill disable support"
            ]
        );
        assert_eq!(v1.last().unwrap(), "WARNING: IPv4 forwarding is disabled");
    }

    #[test]
    fn os_release_values_lose_their_quotes() {
        let content = "NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            os_release_field(content, "PRETTY_NAME").as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(os_release_field(content, "VERSION_ID"), None);
    }
}
