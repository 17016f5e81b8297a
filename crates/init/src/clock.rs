//! The clock port: a virtio-serial port named [`PORT_NAME`] on which the host sends the time
//! right after it resumed the VM from a saved state (the guest's clock stands where it was at
//! the save; under emulation nothing else tells the kernel time went by). A line
//! `set SECONDS NANOSECONDS` (the host's UTC clock when it wrote the line) sets
//! `CLOCK_REALTIME` and is answered `ok SECONDS NANOSECONDS` with the guest's clock just after;
//! anything else is answered `error TEXT`. The thread blocks in `read` between lines: no polling.
//!
//! Before the thread starts, the same port carries a boot snapshot's handshake, when the host
//! asks for one ([`crate::boot_snapshot`]); the helpers it shares are public for that.
//!
//! The host side keeps its end of the port open for as long as QEMU runs (a pipe, not a
//! socket), so the port never reads as hung up and a read waits for data.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// The port's name (`-device virtserialport,name=…` on the host).
pub const PORT_NAME: &str = "org.rmachine.clock";

/// The device node of the virtio-serial port named `name`, from `class_dir`
/// (`/sys/class/virtio-ports`: one `vportNpM` directory per port, each with a `name` file).
pub fn find_port(class_dir: &Path, name: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(class_dir).ok()?;
    entries
        .filter_map(Result::ok)
        .find(|e| std::fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim() == name))
        .map(|e| Path::new("/dev").join(e.file_name()))
}

/// How long [`watch`] looks for the port: virtio-serial ports (and their `name`) appear after
/// the module has loaded, through the driver's work queue and the host's control messages.
pub const FIND_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// [`find_port`], retried with a growing pause (10 ms doubling up to 1 s) until `total` has
/// gone by; `None` if the port did not appear.
pub fn wait_for_port(class_dir: &Path, name: &str, total: std::time::Duration) -> Option<PathBuf> {
    let began = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(10);
    loop {
        if let Some(device) = find_port(class_dir, name) {
            return Some(device);
        }
        let left = total.checked_sub(began.elapsed())?;
        if left.is_zero() {
            return None;
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(std::time::Duration::from_secs(1));
    }
}

/// A request read from the port.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Set the clock to this UTC time.
    Set {
        /// Seconds since the Unix epoch.
        secs: i64,
        /// Nanoseconds within that second.
        nanos: i64,
    },
}

/// Parses one line of the port; the reason if it is not a request.
pub fn parse(line: &str) -> Result<Request, String> {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("set"), Some(secs), Some(nanos), None) => {
            let (secs, nanos) = parse_time(secs, nanos)?;
            Ok(Request::Set { secs, nanos })
        }
        _ => Err(format!("unknown request {:?}", line.trim())),
    }
}

/// The two words of a UTC time as the host writes it (seconds since the Unix epoch, positive;
/// nanoseconds within that second); the reason if they are not one.
pub fn parse_time(secs: &str, nanos: &str) -> Result<(i64, i64), String> {
    let secs = secs
        .parse::<i64>()
        .map_err(|_| format!("bad seconds {secs:?}"))?;
    let nanos = nanos
        .parse::<i64>()
        .ok()
        .filter(|n| (0..1_000_000_000).contains(n))
        .ok_or_else(|| format!("bad nanoseconds {nanos:?}"))?;
    if secs <= 0 {
        return Err(format!("bad seconds {secs}"));
    }
    Ok((secs, nanos))
}

/// Sets `CLOCK_REALTIME` to `secs`.`nanos`; the clock just after (seconds, nanoseconds), or
/// why it could not be set.
pub fn set_realtime(secs: i64, nanos: i64) -> Result<(i64, i64), String> {
    let to = nix::sys::time::TimeSpec::new(secs, nanos);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, to)
        .map_err(|err| format!("clock_settime: {err}"))?;
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME).unwrap_or(to);
    Ok((now.tv_sec(), now.tv_nsec()))
}

/// The longest line read from the port; the rest of a longer one is read as lines of its own
/// (each answered `error`).
const MAX_LINE: u64 = 256;

/// Answers the requests of the port at `device` until it cannot be read.
fn serve(device: &Path) -> std::io::Result<()> {
    let port = open_port(device, false)?;
    let answers = port.try_clone()?;
    let mut hung_up = 0;
    serve_lines(
        BufReader::new(port),
        answers,
        |secs, nanos| {
            let now = set_realtime(secs, nanos)?;
            tracing::info!("clock set from the host to {secs}.{nanos:09} (resume)");
            Ok(now)
        },
        || {
            // A port whose host end is not open reads as end of file at once (and polls as
            // hung up): QEMU opens its end before the guest runs, so this is only the
            // moment before the port's open event arrives, or a host without the pipe.
            hung_up += 1;
            if hung_up > 5 {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(200 << hung_up));
            true
        },
    )
}

/// Opens the port's device node for reading and writing (`O_NONBLOCK` if `nonblocking`),
/// waiting up to half a second for the node: it is made just after the port's sysfs entry.
pub fn open_port(device: &Path, nonblocking: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(if nonblocking { libc::O_NONBLOCK } else { 0 })
            .open(device)
    };
    let mut port = open();
    for _ in 0..10 {
        match &port {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::thread::sleep(std::time::Duration::from_millis(50));
                port = open();
            }
            _ => break,
        }
    }
    port
}

/// Reads lines from `lines` (at most [`MAX_LINE`] bytes each, any bytes) and writes each one's
/// answer to `answers`, setting the clock through `set` (seconds, nanoseconds → the clock just
/// after, or why not). At end of file asks `again` whether to read on. A bad line is answered
/// `error …` and serving goes on.
fn serve_lines(
    mut lines: impl BufRead,
    mut answers: impl Write,
    mut set: impl FnMut(i64, i64) -> Result<(i64, i64), String>,
    mut again: impl FnMut() -> bool,
) -> std::io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if std::io::Read::take(lines.by_ref(), MAX_LINE).read_until(b'\n', &mut line)? == 0 {
            if again() {
                continue;
            }
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let answer = match parse(&text) {
            Ok(Request::Set { secs, nanos }) => match set(secs, nanos) {
                Ok((s, n)) => format!("ok {s} {n}\n"),
                Err(why) => format!("error {why}\n"),
            },
            Err(why) => {
                tracing::warn!("clock port: {why}");
                format!("error {why}\n")
            }
        };
        answers.write_all(answer.as_bytes())?;
    }
}

/// Serves the clock port on a thread of its own, if the VM has one (looked for during
/// [`FIND_FOR`]: the port shows up a moment after its module loaded).
pub fn watch() {
    let spawned = std::thread::Builder::new()
        .name("clock-port".to_owned())
        .spawn(move || {
            let Some(device) =
                wait_for_port(Path::new("/sys/class/virtio-ports"), PORT_NAME, FIND_FOR)
            else {
                tracing::debug!(
                    "clock port: none (the host sets the clock over SSH after a resume)"
                );
                return;
            };
            tracing::info!("clock port: serving {}", device.display());
            if let Err(err) = serve(&device) {
                tracing::warn!("clock port {}: {err}", device.display());
            }
        });
    if let Err(err) = spawned {
        tracing::warn!("clock port: cannot start its thread: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_lines_parse_and_others_are_refused() {
        assert_eq!(
            parse("set 1765000000 123456789\n"),
            Ok(Request::Set {
                secs: 1_765_000_000,
                nanos: 123_456_789
            })
        );
        for bad in [
            "set 1765000000\n",
            "set 1765000000 1000000000\n",
            "set -5 0\n",
            "set x 0\n",
            "get\n",
            "set 1 2 3\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_port_is_found_by_its_name() {
        let tmp = tempfile::tempdir().unwrap();
        for (dir, name) in [("vport0p0", "other"), ("vport1p1", PORT_NAME)] {
            std::fs::create_dir(tmp.path().join(dir)).unwrap();
            std::fs::write(tmp.path().join(dir).join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(
            find_port(tmp.path(), PORT_NAME),
            Some(PathBuf::from("/dev/vport1p1"))
        );
        assert_eq!(find_port(tmp.path(), "missing"), None);
    }

    #[test]
    fn bad_bytes_and_long_lines_are_answered_and_serving_goes_on() {
        let (mut host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
        let answers = guest.try_clone().unwrap();
        let mut input = b"set \xff\xfe 0\n".to_vec();
        input.extend([b'x'; 300]);
        input.extend(b"\nset 1765000000 5\n");
        host.write_all(&input).unwrap();
        host.shutdown(std::net::Shutdown::Write).unwrap();
        let mut set = Vec::new();
        serve_lines(
            BufReader::new(guest),
            answers,
            |s, n| {
                set.push((s, n));
                Ok((s, n + 1))
            },
            || false,
        )
        .unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut host, &mut out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[..3].iter().all(|l| l.starts_with("error ")), "{out}");
        assert_eq!(lines[3], "ok 1765000000 6");
        assert_eq!(set, [(1_765_000_000, 5)]);
    }

    #[test]
    fn a_port_named_after_the_first_look_is_still_found() {
        let tmp = tempfile::tempdir().unwrap();
        let port = tmp.path().join("vport2p1");
        std::fs::create_dir(&port).unwrap();
        // The port exists before its name arrives from the host (an empty `name`).
        std::fs::write(port.join("name"), "").unwrap();
        let named = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            std::fs::write(port.join("name"), format!("{PORT_NAME}\n")).unwrap();
        });
        let found = wait_for_port(tmp.path(), PORT_NAME, std::time::Duration::from_secs(5));
        named.join().unwrap();
        assert_eq!(found, Some(PathBuf::from("/dev/vport2p1")));
        let began = std::time::Instant::now();
        assert_eq!(
            wait_for_port(tmp.path(), "missing", std::time::Duration::from_millis(200)),
            None
        );
        assert!(began.elapsed() < std::time::Duration::from_secs(2));
    }
}
