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
    fn os_release_values_lose_their_quotes() {
        let content = "NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            os_release_field(content, "PRETTY_NAME").as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(os_release_field(content, "VERSION_ID"), None);
    }
}
