//! `docker top`: a container's processes rendered like `ps -ef` from `/proc` (the guest has no
//! `ps`), or, for other `ps_args`, the host's `ps` filtered by the container's PIDs as dockerd
//! does.

use std::collections::HashMap;
use std::fs;

use serde_json::{json, Value};

/// Host PIDs of the processes in the PID namespace of `pid1` (when the container has no
/// cgroup to ask).
pub fn namespace_pids(pid1: i32) -> Vec<i32> {
    let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let Some(target) = ns(&pid1.to_string()) else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| ns(&pid.to_string()).as_ref() == Some(&target))
        .collect();
    pids.sort_unstable();
    pids
}

struct Proc {
    uid: u32,
    pid: i32,
    ppid: i32,
    start_ticks: u64,
    cpu_ticks: u64,
    tty: String,
    cmd: String,
}

fn read_proc(pid: i32) -> Option<Proc> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let close = stat.rfind(')')?;
    let comm = &stat[stat.find('(')? + 1..close];
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let num = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    // Field numbers of proc(5) minus 3 (pid and comm come first, state is index 0).
    let ppid = fields.get(1)?.parse().ok()?;
    let tty_nr = num(4)?;
    let cpu_ticks = num(11)? + num(12)?;
    let start_ticks = num(19)?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let cmd = if args.is_empty() {
        format!("[{comm}]")
    } else {
        args.join(" ")
    };
    Some(Proc {
        uid,
        pid,
        ppid,
        start_ticks,
        cpu_ticks,
        tty: tty_name(tty_nr),
        cmd,
    })
}

/// `pts/0`, `tty1` or `?` from a `tty_nr` (major in bits 8-15, minor in 0-7 and 20-31).
fn tty_name(tty_nr: u64) -> String {
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    match major {
        0 => "?".into(),
        136..=143 => format!("pts/{}", (major - 136) * 256 + minor),
        4 => format!("tty{minor}"),
        _ => "?".into(),
    }
}

fn user_names() -> HashMap<u32, String> {
    fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.get(2)?.parse().ok()?, (*f.first()?).to_string()))
        })
        .collect()
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|h| *h > 0).unwrap_or(100)
}

fn boot_time() -> i64 {
    fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn uptime_seconds() -> f64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// `Titles` and `Processes` for `pids` (host PIDs), as `ps ps_args` would print them.
pub fn render(pids: &[i32], ps_args: &str) -> Result<Value, String> {
    if !ps_args.trim().is_empty() && ps_args.trim() != "-ef" {
        return host_ps(pids, ps_args);
    }
    let hz = ticks_per_second();
    let names = user_names();
    let boot = boot_time();
    let uptime = uptime_seconds();
    let now = chrono::Local::now();
    let mut procs: Vec<Proc> = pids.iter().filter_map(|p| read_proc(*p)).collect();
    procs.sort_by_key(|p| p.pid);
    let rows: Vec<Vec<String>> = procs
        .iter()
        .map(|p| {
            let started_secs = p.start_ticks / hz;
            let elapsed = (uptime - started_secs as f64).max(1.0);
            let cpu_secs = p.cpu_ticks / hz;
            let c = ((p.cpu_ticks as f64 / hz as f64) * 100.0 / elapsed) as u64;
            let start = chrono::DateTime::from_timestamp(
                boot + i64::try_from(started_secs).unwrap_or(0),
                0,
            )
            .map(|t| t.with_timezone(&chrono::Local));
            let stime = match start {
                Some(t) if t.date_naive() == now.date_naive() => t.format("%H:%M").to_string(),
                Some(t) => t.format("%b%d").to_string(),
                None => "?".into(),
            };
            let time = format!(
                "{:02}:{:02}:{:02}",
                cpu_secs / 3600,
                (cpu_secs / 60) % 60,
                cpu_secs % 60
            );
            vec![
                names
                    .get(&p.uid)
                    .cloned()
                    .unwrap_or_else(|| p.uid.to_string()),
                p.pid.to_string(),
                p.ppid.to_string(),
                c.to_string(),
                stime,
                p.tty.clone(),
                time,
                p.cmd.clone(),
            ]
        })
        .collect();
    Ok(json!({
        "Titles": ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
        "Processes": rows,
    }))
}

/// dockerd's way: run the host's `ps`, find its PID column, keep the container's rows.
fn host_ps(pids: &[i32], ps_args: &str) -> Result<Value, String> {
    let out = std::process::Command::new("ps")
        .args(ps_args.split_whitespace())
        .output()
        .map_err(|e| format!("exec: \"ps\": {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let titles: Vec<&str> = header.split_whitespace().collect();
    let Some(pid_col) = titles.iter().position(|t| *t == "PID") else {
        return Err("Couldn't find PID field in ps output".into());
    };
    let mut rows = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(pid) = fields.get(pid_col).and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if !pids.contains(&pid) {
            continue;
        }
        // The last column (the command) may hold spaces.
        let mut row: Vec<String> = fields
            .iter()
            .take(titles.len() - 1)
            .map(|s| s.to_string())
            .collect();
        row.push(fields[titles.len().min(fields.len()) - 1..].join(" "));
        rows.push(row);
    }
    Ok(json!({ "Titles": titles, "Processes": rows }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_renders_like_ps_ef() {
        let me = i32::try_from(std::process::id()).unwrap();
        let top = render(&[me], "").unwrap();
        assert_eq!(top["Titles"][1], "PID");
        let row = &top["Processes"][0];
        assert_eq!(row[1], me.to_string());
        assert!(
            row[7].as_str().unwrap().contains("rmachine_engine"),
            "{row}"
        );
        assert_eq!(tty_name(0), "?");
        assert_eq!(tty_name(136 << 8), "pts/0");
    }
}
