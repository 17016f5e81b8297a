//! The host's end of the guest's clock port ([`crate::args::clock_port_args`]): two named pipes
//! in the machine directory, `clock.in` (QEMU reads it, the guest receives it) and `clock.out`
//! (what the guest answers). Right after a resume the driver writes `set SECONDS NANOSECONDS`
//! (the host's UTC clock at the write) and waits briefly for the guest's `ok` line: the guest's
//! clock is right the moment the VM runs again, without an SSH connection.

#[cfg(unix)]
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

/// The pipes' common name (`-chardev pipe,path=…` adds `.in` and `.out`).
pub const PIPE: &str = "clock";
/// Host to guest.
pub const PIPE_IN: &str = "clock.in";
/// Guest to host.
pub const PIPE_OUT: &str = "clock.out";

/// How long a guest that has its clock port open has to answer (its init answers at once; a
/// loaded host may delay it). The request stays queued if it is late, so the host does not
/// set the clock another way after this.
pub const OPEN_PORT_TIMEOUT: Duration = Duration::from_secs(60);

/// The chardev of the clock port (`-chardev pipe,id=…`).
pub const CHARDEV: &str = "rmclock";

/// Whether QMP `query-chardev`'s `answer` says the guest has the clock port open.
pub fn frontend_open(answer: &serde_json::Value) -> bool {
    answer.as_array().is_some_and(|devices| {
        devices.iter().any(|d| {
            d.get("label").and_then(|l| l.as_str()) == Some(CHARDEV)
                && d.get("frontend-open").and_then(|o| o.as_bool()) == Some(true)
        })
    })
}

/// Why the guest's clock was not set through the port.
#[derive(Debug, thiserror::Error)]
pub enum ClockPortError {
    /// The pipe could not be opened, written or read.
    #[error("clock port pipe {path}: {source}")]
    Io {
        /// The pipe.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The guest did not answer in time.
    #[error("the guest did not answer on its clock port within {} s", .0.as_secs())]
    NoAnswer(Duration),
    /// The guest boots on without stopping at the boot snapshot's point: it read no first word
    /// from the host in time (`no-point`).
    #[error("the guest boots on without stopping at the boot snapshot's point")]
    NoPoint,
    /// The guest answered with an error.
    #[error("the guest refused the time: {answer}")]
    Refused {
        /// Its answer.
        answer: String,
    },
}

/// Makes the two pipes in `dir` (anew: a pipe left by an earlier QEMU holds nothing).
#[cfg(unix)]
pub fn make_pipes(dir: &Path) -> std::io::Result<()> {
    for name in [PIPE_IN, PIPE_OUT] {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        nix::unistd::mkfifo(
            &path,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// The line that sets the guest's clock to `now`.
pub fn set_line(now: std::time::SystemTime) -> String {
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("set {} {}\n", since.as_secs(), since.subsec_nanos())
}

/// The host's end of the clock port: both pipes in a machine directory, opened (QEMU holds
/// them open for reading and writing, so neither open waits).
#[cfg(unix)]
pub struct Port {
    answers: tokio::io::BufReader<tokio::net::unix::pipe::Receiver>,
    requests: tokio::net::unix::pipe::Sender,
    dir: PathBuf,
}

#[cfg(unix)]
impl Port {
    /// Opens the pipes in `dir`, the answers' end first, so that no answer is missed.
    pub fn open(dir: &Path) -> Result<Self, ClockPortError> {
        use tokio::net::unix::pipe;
        let out_path = dir.join(PIPE_OUT);
        let in_path = dir.join(PIPE_IN);
        let answers = pipe::OpenOptions::new()
            .open_receiver(&out_path)
            .map_err(|source| ClockPortError::Io {
                path: out_path.clone(),
                source,
            })?;
        let requests = pipe::OpenOptions::new()
            .open_sender(&in_path)
            .map_err(|source| ClockPortError::Io {
                path: in_path.clone(),
                source,
            })?;
        Ok(Port {
            answers: tokio::io::BufReader::new(answers),
            requests,
            dir: dir.to_owned(),
        })
    }

    /// Writes `line` (with its newline) to the guest.
    pub async fn send(&mut self, line: &str) -> Result<(), ClockPortError> {
        use tokio::io::AsyncWriteExt;
        self.requests
            .write_all(line.as_bytes())
            .await
            .map_err(|source| ClockPortError::Io {
                path: self.dir.join(PIPE_IN),
                source,
            })
    }

    /// The guest's next line, waited for as long as `timeout`.
    pub async fn read_line(&mut self, timeout: Duration) -> Result<String, ClockPortError> {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        match tokio::time::timeout(timeout, self.answers.read_line(&mut line)).await {
            Err(_) => Err(ClockPortError::NoAnswer(timeout)),
            Ok(Err(source)) => Err(ClockPortError::Io {
                path: self.dir.join(PIPE_OUT),
                source,
            }),
            Ok(Ok(0)) => Err(ClockPortError::Io {
                path: self.dir.join(PIPE_OUT),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            }),
            Ok(Ok(_)) => Ok(line),
        }
    }
}

/// Sets the guest's clock to the host's through the pipes in `dir` (QEMU runs with them);
/// returns the guest's answer (`ok SECONDS NANOSECONDS`).
#[cfg(unix)]
pub async fn set_guest_clock(dir: &Path, timeout: Duration) -> Result<String, ClockPortError> {
    let mut port = Port::open(dir)?;
    port.send(&set_line(std::time::SystemTime::now())).await?;
    let line = port.read_line(timeout).await?;
    if line.starts_with("ok ") {
        Ok(line.trim().to_owned())
    } else {
        Err(ClockPortError::Refused {
            answer: line.trim().to_owned(),
        })
    }
}

/// Both pipes in `dir` opened for reading and writing, as QEMU holds them: (what the guest
/// receives, what it answers). For tests that stand in for QEMU and the guest.
#[cfg(all(test, unix))]
pub(crate) fn hold_pipes_as_qemu(dir: &Path) -> (std::fs::File, std::fs::File) {
    let rw = |name| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(name))
            .expect("a pipe made by make_pipes")
    };
    (rw(PIPE_IN), rw(PIPE_OUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_open_clock_chardev_counts_as_open() {
        // QMP query-chardev's answer, trimmed.
        let answer = |open| {
            serde_json::json!([
                {"frontend-open": true, "filename": "unix:/m/qmp.sock,server=on", "label": "qmp"},
                {"frontend-open": open, "filename": "pipe", "label": CHARDEV}
            ])
        };
        assert!(frontend_open(&answer(true)));
        assert!(!frontend_open(&answer(false)));
        assert!(!frontend_open(&serde_json::json!([
            {"frontend-open": true, "filename": "pipe", "label": "other"}
        ])));
        assert!(!frontend_open(&serde_json::json!({})));
    }

    #[test]
    fn the_set_line_carries_seconds_and_nanoseconds() {
        let at = std::time::UNIX_EPOCH + Duration::new(1_765_000_000, 5_000_000);
        assert_eq!(set_line(at), "set 1765000000 5000000\n");
    }

    /// A stand-in for QEMU and the guest: holds both pipes open as QEMU does and answers
    /// the first line as the guest's init does.
    #[cfg(unix)]
    #[tokio::test]
    async fn the_time_goes_out_and_the_answer_comes_back() {
        let tmp = tempfile::tempdir().unwrap();
        make_pipes(tmp.path()).unwrap();
        let dir = tmp.path().to_owned();
        let (held, holding) = std::sync::mpsc::channel();
        let guest = std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let (input, mut output) = hold_pipes_as_qemu(&dir);
            held.send(()).unwrap();
            let mut line = String::new();
            std::io::BufReader::new(input).read_line(&mut line).unwrap();
            let secs = line.split_whitespace().nth(1).unwrap().to_owned();
            output
                .write_all(format!("ok {secs} 0\n").as_bytes())
                .unwrap();
            // Keep the pipes open until the host has read, as QEMU would.
            std::thread::sleep(Duration::from_millis(500));
            secs
        });
        // The stand-in holds the pipes, as QEMU does before the host writes.
        holding.recv().unwrap();
        let answer = set_guest_clock(tmp.path(), OPEN_PORT_TIMEOUT)
            .await
            .unwrap();
        let secs = guest.join().unwrap();
        assert_eq!(answer, format!("ok {secs} 0"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(secs.parse().unwrap()) <= 1);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_guest_that_never_answers_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        make_pipes(tmp.path()).unwrap();
        // QEMU's side, with no guest behind it.
        let _held = hold_pipes_as_qemu(tmp.path());
        let err = set_guest_clock(tmp.path(), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, ClockPortError::NoAnswer(_)), "{err}");
    }
}
