//! `docker top`: a container's processes rendered from `/proc` the way procps `ps` prints them
//! for the common argument forms (`-ef`, `aux`, `-o FIELDS`): the guest has only busybox, whose
//! `ps` knows none of them.

use std::collections::HashMap;
use std::fs;

use serde::Serialize;

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
    pgid: i32,
    sid: i32,
    tpgid: i32,
    state: char,
    nice: i64,
    threads: u64,
    start_ticks: u64,
    cpu_ticks: u64,
    vsize_kib: u64,
    rss_kib: u64,
    /// Locked memory (`VmLck` of /proc/PID/status).
    locked_kib: u64,
    tty: String,
    comm: String,
    cmd: String,
}

fn read_proc(pid: i32) -> Option<Proc> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut proc = parse_stat(pid, &stat)?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name));
    proc.uid = field("Uid:")
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())?;
    proc.locked_kib = field("VmLck:")
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if !args.is_empty() {
        proc.cmd = args.join(" ");
    }
    Some(proc)
}

/// The fields of a `/proc/PID/stat` line (uid and locked memory come from `status`).
fn parse_stat(pid: i32, stat: &str) -> Option<Proc> {
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let close = stat.rfind(')')?;
    let comm = &stat[stat.find('(')? + 1..close];
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let num = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    // Field numbers of proc(5) minus 3 (pid and comm come first, state is index 0).
    let ppid = fields.get(1)?.parse().ok()?;
    let int = |i: usize| fields.get(i).and_then(|v| v.parse::<i64>().ok());
    let state = fields.first()?.chars().next()?;
    let tty_nr = num(4)?;
    let cpu_ticks = num(11)? + num(12)?;
    let start_ticks = num(19)?;
    // tpgid is -1 without a controlling terminal: keep the sign.
    let as_pid = |v: Option<i64>| v.and_then(|v| i32::try_from(v).ok()).unwrap_or(0);
    Some(Proc {
        uid: 0,
        pid,
        ppid,
        pgid: as_pid(int(2)),
        sid: as_pid(int(3)),
        tpgid: as_pid(int(5)),
        state,
        nice: int(16).unwrap_or(0),
        threads: num(17).unwrap_or(1),
        start_ticks,
        cpu_ticks,
        vsize_kib: num(20).unwrap_or(0) / 1024,
        rss_kib: num(21).unwrap_or(0) * page_kib(),
        locked_kib: 0,
        tty: tty_name(tty_nr),
        comm: comm.to_string(),
        cmd: format!("[{comm}]"),
    })
}

/// procps' `STAT` column (ps/output.c `pr_stat`): the state letter, then `<` (negative nice)
/// or `N` (positive), `L` (locked pages), `s` (session leader), `l` (multi-threaded), `+` (in
/// its terminal's foreground process group).
fn stat_column(p: &Proc) -> String {
    let mut stat = p.state.to_string();
    if p.nice < 0 {
        stat.push('<');
    }
    if p.nice > 0 {
        stat.push('N');
    }
    if p.locked_kib > 0 {
        stat.push('L');
    }
    if p.sid == p.pid {
        stat.push('s');
    }
    if p.threads > 1 {
        stat.push('l');
    }
    if p.pgid == p.tpgid {
        stat.push('+');
    }
    stat
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

fn page_kib() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096) / 1024
}

fn mem_total_kib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// What `ps` is asked to print: the columns, by procps format specifier.
fn parse_args(ps_args: &str) -> Result<Vec<(String, String)>, String> {
    let mut custom: Vec<String> = Vec::new();
    let mut full = false;
    let mut bsd_user = false;
    let mut tokens = ps_args.split_whitespace();
    while let Some(token) = tokens.next() {
        if token.starts_with("--") {
            return Err("error: unknown gnu long option".into());
        }
        if let Some(flags) = token.strip_prefix('-') {
            for (i, flag) in flags.char_indices() {
                match flag {
                    'e' | 'A' | 'a' | 'x' | 'w' => {}
                    'f' => full = true,
                    'o' => {
                        let rest = &flags[i + 1..];
                        let spec = if rest.is_empty() {
                            tokens
                                .next()
                                .ok_or("error: format specification must follow -o")?
                        } else {
                            rest
                        };
                        custom.push(spec.to_string());
                        break;
                    }
                    _ => return Err("error: unsupported SysV option".into()),
                }
            }
            continue;
        }
        for flag in token.chars() {
            match flag {
                'a' | 'x' | 'w' | 'e' => {}
                'u' => bsd_user = true,
                _ => return Err("error: unsupported option (BSD syntax)".into()),
            }
        }
    }
    let preset = |columns: &[(&str, &str)]| {
        columns
            .iter()
            .map(|(name, header)| (name.to_string(), header.to_string()))
            .collect()
    };
    if custom.is_empty() {
        return Ok(if bsd_user {
            preset(&[
                ("user", "USER"),
                ("pid", "PID"),
                ("%cpu", "%CPU"),
                ("%mem", "%MEM"),
                ("vsz", "VSZ"),
                ("rss", "RSS"),
                ("tty", "TTY"),
                ("stat", "STAT"),
                ("start", "START"),
                ("bsdtime", "TIME"),
                ("args", "COMMAND"),
            ])
        } else if full || ps_args.trim().is_empty() {
            // `-f` shows the user's name in its `UID` column.
            preset(&[
                ("user", "UID"),
                ("pid", "PID"),
                ("ppid", "PPID"),
                ("c", "C"),
                ("stime", "STIME"),
                ("tty", "TTY"),
                ("time", "TIME"),
                ("args", "CMD"),
            ])
        } else {
            preset(&[
                ("pid", "PID"),
                ("tty", "TTY"),
                ("time", "TIME"),
                ("comm", "CMD"),
            ])
        });
    }
    custom
        .iter()
        .flat_map(|c| c.split([',', ' ']))
        .filter(|f| !f.is_empty())
        .map(|spec| {
            let (name, header) = match spec.split_once('=') {
                Some((name, header)) => (name, Some(header)),
                None => (spec, None),
            };
            let default = default_header(name).ok_or_else(|| {
                format!("error: unknown user-defined format specifier \"{name}\"")
            })?;
            Ok((name.to_string(), header.unwrap_or(default).to_string()))
        })
        .collect()
}

/// procps' column title of a format specifier.
fn default_header(name: &str) -> Option<&'static str> {
    Some(match name {
        "pid" => "PID",
        "ppid" => "PPID",
        "pgid" | "pgrp" => "PGID",
        "sid" | "sess" => "SID",
        "uid" | "euid" => "UID",
        "user" | "euser" | "uname" => "USER",
        "c" => "C",
        "stime" => "STIME",
        "start" => "START",
        "tty" | "tname" | "tt" => "TT",
        "time" | "cputime" => "TIME",
        "bsdtime" => "TIME",
        "etime" => "ELAPSED",
        "stat" => "STAT",
        "s" | "state" => "S",
        "vsz" | "vsize" => "VSZ",
        "rss" | "rssize" => "RSS",
        "%cpu" | "pcpu" => "%CPU",
        "%mem" | "pmem" => "%MEM",
        "ni" | "nice" => "NI",
        "nlwp" | "thcount" => "NLWP",
        "comm" | "ucmd" | "ucomm" => "COMMAND",
        "args" | "command" => "COMMAND",
        "cmd" => "CMD",
        _ => return None,
    })
}

fn clock(secs: u64) -> String {
    let days = secs / 86_400;
    let hms = format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    );
    if days > 0 {
        format!("{days}-{hms}")
    } else {
        hms
    }
}

/// The `docker top` answer (`ContainerTopOKBody`): `ps` column headers and one row per process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Top {
    /// The column headers.
    pub titles: Vec<String>,
    /// One row of column values per process, in `titles` order.
    pub processes: Vec<Vec<String>>,
}

/// `Titles` and `Processes` for `pids` (host PIDs), as `ps ps_args` would print them.
pub fn render(pids: &[i32], ps_args: &str) -> Result<Top, String> {
    // dockerd refuses renaming another column to PID: rows are matched by that column.
    let padded = format!(" {ps_args}");
    for spec in padded.split_whitespace().flat_map(|t| t.split(',')) {
        if let Some((name, header)) = spec.split_once('=') {
            if header.starts_with("PID") && name != "pid" {
                return Err(format!("specifying \"{name}={header}\" is not allowed"));
            }
        }
    }
    // dockerd wraps what its `ps` wrote on stderr with `ps: ` (daemon/top_unix.go).
    let columns = parse_args(ps_args).map_err(|e| format!("ps: {e}"))?;
    // As dockerd's parsePSOutput: rows are matched to the container by their PID column.
    if !columns.iter().any(|(_, header)| header == "PID") {
        return Err("Couldn't find PID field in ps output".into());
    }
    let hz = ticks_per_second();
    let names = user_names();
    let boot = boot_time();
    let uptime = uptime_seconds();
    let mem_total = mem_total_kib();
    let now = chrono::Local::now();
    let mut procs: Vec<Proc> = pids.iter().filter_map(|p| read_proc(*p)).collect();
    procs.sort_by_key(|p| p.pid);
    let rows: Vec<Vec<String>> = procs
        .iter()
        .map(|p| {
            let started_secs = p.start_ticks / hz;
            let elapsed = (uptime - started_secs as f64).max(1.0);
            let cpu_secs = p.cpu_ticks / hz;
            let cpu_share = (p.cpu_ticks as f64 / hz as f64) * 100.0 / elapsed;
            let start = chrono::DateTime::from_timestamp(
                boot + i64::try_from(started_secs).unwrap_or(0),
                0,
            )
            .map(|t| t.with_timezone(&chrono::Local));
            let same_day = |t: &chrono::DateTime<chrono::Local>| t.date_naive() == now.date_naive();
            let user = names
                .get(&p.uid)
                .cloned()
                .unwrap_or_else(|| p.uid.to_string());
            columns
                .iter()
                .map(|(name, _)| match name.as_str() {
                    "pid" => p.pid.to_string(),
                    "ppid" => p.ppid.to_string(),
                    "pgid" | "pgrp" => p.pgid.to_string(),
                    "sid" | "sess" => p.sid.to_string(),
                    "uid" | "euid" => p.uid.to_string(),
                    "user" | "euser" | "uname" => user.clone(),
                    "c" => (cpu_share as u64).to_string(),
                    "stime" | "start" => match &start {
                        Some(t) if same_day(t) => t.format("%H:%M").to_string(),
                        Some(t) if name == "start" => t.format("%b %d").to_string(),
                        Some(t) => t.format("%b%d").to_string(),
                        None => "?".into(),
                    },
                    "tty" | "tname" | "tt" => p.tty.clone(),
                    "time" | "cputime" => clock(cpu_secs),
                    "bsdtime" => format!("{}:{:02}", cpu_secs / 60, cpu_secs % 60),
                    "etime" => {
                        let secs = elapsed as u64;
                        let (d, h, m, s) = (
                            secs / 86_400,
                            (secs / 3600) % 24,
                            (secs / 60) % 60,
                            secs % 60,
                        );
                        match (d, h) {
                            (0, 0) => format!("{m:02}:{s:02}"),
                            (0, h) => format!("{h:02}:{m:02}:{s:02}"),
                            (d, h) => format!("{d}-{h:02}:{m:02}:{s:02}"),
                        }
                    }
                    "stat" => stat_column(p),
                    "s" | "state" => p.state.to_string(),
                    "vsz" | "vsize" => p.vsize_kib.to_string(),
                    "rss" | "rssize" => p.rss_kib.to_string(),
                    "%cpu" | "pcpu" => format!("{cpu_share:.1}"),
                    "%mem" | "pmem" => {
                        let share = if mem_total == 0 {
                            0.0
                        } else {
                            p.rss_kib as f64 * 100.0 / mem_total as f64
                        };
                        format!("{share:.1}")
                    }
                    "ni" | "nice" => p.nice.to_string(),
                    "nlwp" | "thcount" => p.threads.to_string(),
                    "comm" | "ucmd" | "ucomm" => p.comm.clone(),
                    _ => p.cmd.clone(),
                })
                .collect()
        })
        .collect();
    let titles = columns.into_iter().map(|(_, header)| header).collect();
    Ok(Top {
        titles,
        processes: rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_renders_like_ps_ef() {
        let me = i32::try_from(std::process::id()).unwrap();
        let top = render(&[me], "").unwrap();
        assert_eq!(top.titles[1], "PID");
        let row = &top.processes[0];
        assert_eq!(row[1], me.to_string());
        assert!(row[7].contains("rmachine_engine"), "{row:?}");
        assert_eq!(tty_name(0), "?");
        assert_eq!(tty_name(136 << 8), "pts/0");
    }

    #[test]
    fn stat_flags_follow_procps() {
        // `sh` in a container with a TTY: session leader, its group in the foreground.
        let line = "4242 (sh) S 4200 4242 4242 34816 4242 4194560 1029 0 0 0 1 2 0 0 20 0 1 0 \
                    863211 4575232 241 18446744073709551615 1 1 0 0 0 0 0 0 65538 0 0 0 17 1 0 \
                    0 0 0 0 0 0 0 0 0 0 0 0";
        let sh = parse_stat(4242, line).unwrap();
        assert_eq!(
            (sh.ppid, sh.pgid, sh.sid, sh.tpgid, sh.state),
            (4200, 4242, 4242, 4242, 'S')
        );
        assert_eq!(sh.tty, "pts/0");
        assert_eq!(stat_column(&sh), "Ss+");
        // A background child of it, niced, multi-threaded, with locked memory.
        let line = "4250 (my (odd) app) R 4242 4250 4242 34816 4242 0 0 0 0 0 0 0 0 0 30 10 3 0 \
                    863300 0 0 0";
        let mut app = parse_stat(4250, line).unwrap();
        app.locked_kib = 8;
        assert_eq!(app.comm, "my (odd) app");
        assert_eq!((app.nice, app.threads), (10, 3));
        assert_eq!(stat_column(&app), "RNLl");
        // No controlling terminal: tpgid is -1, never a process group.
        let line = "7 (sleep) S 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 0 -5 1 0 100 0 0 0";
        let daemon = parse_stat(7, line).unwrap();
        assert_eq!(daemon.tty, "?");
        assert_eq!(stat_column(&daemon), "S<s");
    }

    #[test]
    fn aux_and_custom_formats_render_without_a_ps_binary() {
        let me = i32::try_from(std::process::id()).unwrap();
        let aux = render(&[me], "aux").unwrap();
        assert_eq!(aux.titles[0], "USER");
        assert_eq!(aux.titles[10], "COMMAND");
        assert_eq!(aux.processes[0][1], me.to_string());
        let custom = render(&[me], "-o pid,comm").unwrap();
        // The wire shape docker's CLI decodes (`ContainerTopOKBody`).
        let wire = serde_json::to_value(&custom).unwrap();
        assert_eq!(wire["Titles"], serde_json::json!(["PID", "COMMAND"]));
        assert_eq!(wire["Processes"][0][0], me.to_string());
        assert!(custom.processes[0][1].starts_with("rmachine_engine"));
        assert_eq!(
            render(&[me], "-o comm").unwrap_err(),
            "Couldn't find PID field in ps output"
        );
        assert_eq!(
            render(&[me], "-Z").unwrap_err(),
            "ps: error: unsupported SysV option"
        );
        assert_eq!(
            render(&[me], "-o pid,bogus").unwrap_err(),
            "ps: error: unknown user-defined format specifier \"bogus\""
        );
        assert_eq!(
            render(&[me], "--bogus-option").unwrap_err(),
            "ps: error: unknown gnu long option"
        );
    }
}
