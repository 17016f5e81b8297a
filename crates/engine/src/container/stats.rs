//! `docker stats`: Docker's stats JSON from a container's cgroup figures.
//!
//! The CLI computes CPU % as `(Δ total_usage / Δ system_cpu_usage) × online_cpus × 100`
//! between `precpu_stats` and `cpu_stats`, and MEM USAGE as `usage − inactive_file`; the
//! limit shown is `memory_stats.limit` (the host's memory when the container has none).

use rmachine_runtime::cgroup::CgroupStats;
use serde_json::{json, Value};

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

/// One sample, `precpu_stats` empty (the caller fills it from the previous sample).
pub fn sample(
    record: &ContainerRecord,
    running: bool,
    stats: &CgroupStats,
    pids_limit: Option<i64>,
) -> Value {
    let read = if running {
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    } else {
        "0001-01-01T00:00:00Z".into()
    };
    let cpu = if running {
        json!({
            "cpu_usage": {
                "total_usage": stats.cpu_usage_ns,
                "usage_in_kernelmode": 0,
                "usage_in_usermode": 0,
            },
            "system_cpu_usage": system_cpu_usage(),
            "online_cpus": online_cpus(),
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        })
    } else {
        json!({
            "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        })
    };
    let memory = if running {
        json!({
            "usage": stats.memory_usage,
            "stats": {"inactive_file": stats.memory_inactive_file},
            "limit": stats.memory_limit.unwrap_or_else(host_memory),
        })
    } else {
        json!({})
    };
    let mut pids = json!({});
    if running {
        pids["current"] = json!(stats.pids_current);
        if let Some(limit) = pids_limit {
            pids["limit"] = json!(limit);
        }
    }
    json!({
        "read": read,
        "preread": "0001-01-01T00:00:00Z",
        "pids_stats": pids,
        "blkio_stats": {
            "io_service_bytes_recursive": null,
            "io_serviced_recursive": null,
            "io_queue_recursive": null,
            "io_service_time_recursive": null,
            "io_wait_time_recursive": null,
            "io_merged_recursive": null,
            "io_time_recursive": null,
            "sectors_recursive": null,
        },
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": cpu,
        "precpu_stats": {
            "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        },
        "memory_stats": memory,
        "name": record.name,
        "id": record.id,
    })
}

/// Fills `current`'s `precpu_stats` and `preread` from `previous`.
pub fn chain(current: &mut Value, previous: &Value) {
    current["precpu_stats"] = previous["cpu_stats"].clone();
    current["preread"] = previous["read"].clone();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_cpu_time_grows_and_samples_chain() {
        let a = system_cpu_usage();
        assert!(a > 0);
        let mut first = json!({"cpu_stats": {"x": 1}, "read": "t"});
        let prev = first.clone();
        chain(&mut first, &prev);
        assert_eq!(first["precpu_stats"]["x"], 1);
        assert_eq!(first["preread"], "t");
    }
}
