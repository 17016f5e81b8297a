//! Signal names and numbers as dockerd accepts them (moby/sys/signal `ParseSignal`,
//! `ValidSignalForPlatform` and its Linux `SignalMap`): any non-zero number, the classic names
//! with or without `SIG`, in any case, and the real-time ones `RTMIN`, `RTMIN+n`, `RTMAX-n`,
//! `RTMAX`. nix's `Signal` has no real-time signals, hence plain numbers here.

use super::EngineError;

/// SIGKILL's number.
pub const SIGKILL: i32 = libc::SIGKILL;

/// Linux's highest signal as moby counts it.
const SIGRTMAX: i32 = 64;
/// Linux's lowest real-time signal as moby counts it (glibc reserves 32 and 33).
const SIGRTMIN: i32 = 34;

/// The classic names of moby's Linux `SignalMap`.
const NAMES: [(&str, i32); 34] = [
    ("ABRT", libc::SIGABRT),
    ("ALRM", libc::SIGALRM),
    ("BUS", libc::SIGBUS),
    ("CHLD", libc::SIGCHLD),
    ("CLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("FPE", libc::SIGFPE),
    ("HUP", libc::SIGHUP),
    ("ILL", libc::SIGILL),
    ("INT", libc::SIGINT),
    ("IO", libc::SIGIO),
    ("IOT", libc::SIGIOT),
    ("KILL", libc::SIGKILL),
    ("PIPE", libc::SIGPIPE),
    ("POLL", libc::SIGPOLL),
    ("PROF", libc::SIGPROF),
    ("PWR", libc::SIGPWR),
    ("QUIT", libc::SIGQUIT),
    ("SEGV", libc::SIGSEGV),
    ("STKFLT", libc::SIGSTKFLT),
    ("STOP", libc::SIGSTOP),
    ("SYS", libc::SIGSYS),
    ("TERM", libc::SIGTERM),
    ("TRAP", libc::SIGTRAP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("VTALRM", libc::SIGVTALRM),
    ("WINCH", libc::SIGWINCH),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
];

fn by_name(name: &str) -> Option<i32> {
    if let Some((_, n)) = NAMES.iter().find(|(n, _)| *n == name) {
        return Some(*n);
    }
    match name {
        "RTMIN" => return Some(SIGRTMIN),
        "RTMAX" => return Some(SIGRTMAX),
        _ => {}
    }
    if let Some(k) = name.strip_prefix("RTMIN+") {
        return k
            .parse::<i32>()
            .ok()
            .filter(|k| (1..=15).contains(k))
            .map(|k| SIGRTMIN + k);
    }
    let k = name.strip_prefix("RTMAX-")?;
    k.parse::<i32>()
        .ok()
        .filter(|k| (1..=14).contains(k))
        .map(|k| SIGRTMAX - k)
}

/// Parses `SIGTERM`, `TERM`, `term`, `15` or `RTMIN+3` (moby `ParseSignal`: a number is taken
/// as it is, unless 0).
pub fn parse_signal(s: &str) -> Result<i32, EngineError> {
    let invalid = || EngineError::InvalidParameter {
        reason: format!("invalid signal: {s}"),
    };
    if let Ok(n) = s.parse::<i32>() {
        return if n == 0 { Err(invalid()) } else { Ok(n) };
    }
    let upper = s.to_ascii_uppercase();
    by_name(upper.strip_prefix("SIG").unwrap_or(&upper)).ok_or_else(invalid)
}

/// A signal `docker kill -s` may send: parsed, and one Linux has (moby's
/// `ValidSignalForPlatform` check in `ContainerKill`, with its text).
pub fn parse_kill_signal(s: &str) -> Result<i32, EngineError> {
    let n = parse_signal(s)?;
    let known = NAMES.iter().any(|(_, v)| *v == n) || (SIGRTMIN..=SIGRTMAX).contains(&n);
    if !known {
        return Err(EngineError::InvalidParameter {
            reason: format!("the linux daemon does not support signal {n}"),
        });
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_in_every_docker_spelling() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("kill").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("Sigusr1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse_signal("15").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("RTMIN").unwrap(), 34);
        assert_eq!(parse_signal("SIGRTMIN+3").unwrap(), 37);
        assert_eq!(parse_signal("rtmax-1").unwrap(), 63);
        assert_eq!(parse_signal("99").unwrap(), 99);
        for bad in ["NOPE", "0", "RTMIN+16", "RTMAX-0", "SIG", ""] {
            assert_eq!(
                parse_signal(bad).unwrap_err().to_string(),
                format!("invalid signal: {bad}")
            );
        }
    }

    #[test]
    fn kill_accepts_only_the_signals_linux_has() {
        assert_eq!(parse_kill_signal("HUP").unwrap(), libc::SIGHUP);
        assert_eq!(parse_kill_signal("64").unwrap(), 64);
        for (bad, n) in [("99", 99), ("32", 32), ("-1", -1)] {
            assert_eq!(
                parse_kill_signal(bad).unwrap_err().to_string(),
                format!("the linux daemon does not support signal {n}")
            );
        }
        assert_eq!(
            parse_kill_signal("FOO").unwrap_err().to_string(),
            "invalid signal: FOO"
        );
    }
}
