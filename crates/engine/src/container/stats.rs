//! `docker stats`: Docker's stats JSON from a container's cgroup figures.
//!
//! The CLI computes CPU % as `(Δ total_usage / Δ system_cpu_usage) × online_cpus × 100`
//! between `precpu_stats` and `cpu_stats`, and MEM USAGE as `usage − inactive_file`; the
//! limit shown is `memory_stats.limit` (the host's memory when the container has none).

use rmachine_runtime::cgroup::CgroupStats;
use serde::Serialize;

use crate::state::ContainerRecord;

/// Nanoseconds of CPU time the whole host has spent since boot (`/proc/stat`).
pub fn system_cpu_usage() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|h| *h > 0)
        .unwrap_or(100);
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(7)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    ticks.saturating_mul(1_000_000_000 / hz)
}

fn online_cpus() -> u64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1)
}

fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// One `docker stats` sample (moby's `container.StatsResponse`, the fields we fill).
#[derive(Debug, Clone, Serialize)]
pub struct StatsSample {
    /// When the sample was taken (RFC 3339, nanoseconds), Go's zero time when not running.
    pub read: String,
    /// `read` of the previous sample.
    pub preread: String,
    /// Task counts.
    pub pids_stats: PidsStats,
    /// Block I/O: not measured, every list `null` as dockerd shows without data.
    pub blkio_stats: BlkioStats,
    /// Always 0 on Linux.
    pub num_procs: u32,
    /// Windows only: always empty.
    pub storage_stats: StorageStats,
    /// CPU use now.
    pub cpu_stats: CpuStats,
    /// CPU use at the previous sample.
    pub precpu_stats: CpuStats,
    /// Memory use.
    pub memory_stats: MemoryStats,
    /// The container's name (`/name`).
    pub name: String,
    /// The container's id.
    pub id: String,
}

/// `pids_stats`: empty when the container is not running.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PidsStats {
    /// Tasks in the cgroup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<u64>,
    /// The pids limit, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// One entry of a `blkio_stats` list.
#[derive(Debug, Clone, Serialize)]
pub struct BlkioStatEntry {
    /// Device major number.
    pub major: u64,
    /// Device minor number.
    pub minor: u64,
    /// Operation (`read`, `write`...).
    pub op: String,
    /// The figure.
    pub value: u64,
}

/// `blkio_stats`: every list `None` (rendered `null`), block I/O is not measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BlkioStats {
    /// Bytes per device and operation.
    pub io_service_bytes_recursive: Option<Vec<BlkioStatEntry>>,
    /// Operations per device.
    pub io_serviced_recursive: Option<Vec<BlkioStatEntry>>,
    /// Queued operations.
    pub io_queue_recursive: Option<Vec<BlkioStatEntry>>,
    /// Service time.
    pub io_service_time_recursive: Option<Vec<BlkioStatEntry>>,
    /// Wait time.
    pub io_wait_time_recursive: Option<Vec<BlkioStatEntry>>,
    /// Merged operations.
    pub io_merged_recursive: Option<Vec<BlkioStatEntry>>,
    /// Time spent.
    pub io_time_recursive: Option<Vec<BlkioStatEntry>>,
    /// Sectors.
    pub sectors_recursive: Option<Vec<BlkioStatEntry>>,
}

/// `storage_stats`: Windows only, an empty object here.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StorageStats {}

/// `cpu_stats` / `precpu_stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuStats {
    /// The container's CPU time.
    pub cpu_usage: CpuUsage,
    /// The host's CPU time in nanoseconds; absent when not running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_cpu_usage: Option<u64>,
    /// Online CPUs; absent when not running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online_cpus: Option<u64>,
    /// CFS throttling: not measured, zeros.
    pub throttling_data: ThrottlingData,
}

/// `cpu_usage` in nanoseconds; only the total is measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuUsage {
    /// Total CPU time.
    pub total_usage: u64,
    /// Kernel-mode time (0: not measured).
    pub usage_in_kernelmode: u64,
    /// User-mode time (0: not measured).
    pub usage_in_usermode: u64,
}

/// `throttling_data`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ThrottlingData {
    /// Enforcement periods.
    pub periods: u64,
    /// Periods throttled.
    pub throttled_periods: u64,
    /// Time throttled, in nanoseconds.
    pub throttled_time: u64,
}

/// `memory_stats`: empty when the container is not running.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemoryStats {
    /// Memory in use, page cache included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<u64>,
    /// The detail the CLI subtracts from `usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<MemoryDetail>,
    /// The limit, or the host's memory without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

/// `memory_stats.stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemoryDetail {
    /// Inactive file cache.
    pub inactive_file: u64,
}

const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// One sample, `precpu_stats` empty (the caller fills it from the previous sample).
pub fn sample(
    record: &ContainerRecord,
    running: bool,
    stats: &CgroupStats,
    pids_limit: Option<i64>,
) -> StatsSample {
    let (cpu_stats, memory_stats, pids_stats) = if running {
        (
            CpuStats {
                cpu_usage: CpuUsage {
                    total_usage: stats.cpu_usage_ns,
                    ..CpuUsage::default()
                },
                system_cpu_usage: Some(system_cpu_usage()),
                online_cpus: Some(online_cpus()),
                throttling_data: ThrottlingData::default(),
            },
            MemoryStats {
                usage: Some(stats.memory_usage),
                stats: Some(MemoryDetail {
                    inactive_file: stats.memory_inactive_file,
                }),
                limit: Some(stats.memory_limit.unwrap_or_else(host_memory)),
            },
            PidsStats {
                current: Some(stats.pids_current),
                limit: pids_limit,
            },
        )
    } else {
        Default::default()
    };
    StatsSample {
        read: if running {
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
        } else {
            GO_ZERO_TIME.into()
        },
        preread: GO_ZERO_TIME.into(),
        pids_stats,
        blkio_stats: BlkioStats::default(),
        num_procs: 0,
        storage_stats: StorageStats {},
        cpu_stats,
        precpu_stats: CpuStats::default(),
        memory_stats,
        name: record.name.clone(),
        id: record.id.clone(),
    }
}

/// Fills `current`'s `precpu_stats` and `preread` from `previous`.
pub fn chain(current: &mut StatsSample, previous: &StatsSample) {
    current.precpu_stats = previous.cpu_stats.clone();
    current.preread = previous.read.clone();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn host_cpu_time_grows_and_samples_chain() {
        let a = system_cpu_usage();
        assert!(a > 0);
        let record = ContainerRecord {
            id: "c0ffee".into(),
            name: "/x".into(),
            created: chrono::Utc::now(),
            path: "true".into(),
            args: Vec::new(),
            image_id: "sha256:00".into(),
            config: Default::default(),
            host_config: Default::default(),
            state: crate::state::ContainerState {
                status: crate::state::Status::Running,
                paused: false,
                pid: 1,
                exit_code: 0,
                error: String::new(),
                started_at: None,
                finished_at: None,
                health: None,
            },
            restart_count: 0,
            mount_points: Default::default(),
        };
        let stats = CgroupStats {
            memory_usage: 10,
            memory_limit: Some(20),
            memory_inactive_file: 3,
            cpu_usage_ns: 7,
            pids_current: 2,
        };
        let stopped = serde_json::to_value(sample(&record, false, &stats, Some(5))).unwrap();
        assert_eq!(stopped["pids_stats"], json!({}));
        assert_eq!(stopped["memory_stats"], json!({}));
        assert_eq!(stopped["storage_stats"], json!({}));
        assert_eq!(stopped["blkio_stats"]["sectors_recursive"], json!(null));
        assert_eq!(
            stopped["cpu_stats"],
            json!({
                "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
                "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
            })
        );
        assert_eq!(stopped["read"], GO_ZERO_TIME);
        assert_eq!(
            (&stopped["name"], &stopped["id"]),
            (&json!("/x"), &json!("c0ffee"))
        );
        let mut running = sample(&record, true, &stats, Some(5));
        let previous = running.clone();
        chain(&mut running, &previous);
        let running = serde_json::to_value(running).unwrap();
        assert_eq!(running["pids_stats"], json!({"current": 2, "limit": 5}));
        assert_eq!(
            running["memory_stats"],
            json!({"usage": 10, "stats": {"inactive_file": 3}, "limit": 20})
        );
        assert_eq!(running["precpu_stats"], running["cpu_stats"]);
        assert_eq!(running["preread"], running["read"]);
        assert_eq!(running["cpu_stats"]["cpu_usage"]["total_usage"], 7);
    }
}
