//! `docker attach` and `docker logs`: a container's output and stdin, and its TTY size.

use std::os::fd::AsFd;
use std::path::PathBuf;

use tokio::sync::{mpsc, watch};

use super::create::log_type;
use super::error::EngineError;
use super::Engine;
use crate::container::{Lifecycle, Output, StdinEvent};
use crate::state::Status;

/// What an attached client receives and may send.
#[derive(Debug)]
pub struct AttachSession {
    /// The container has a TTY: raw stream, no multiplexing.
    pub tty: bool,
    /// Output of the current or next run (only the streams asked for); ends with the run.
    pub output: mpsc::Receiver<Output>,
    /// Where to send the client's input, when it attached stdin and the container keeps it.
    pub stdin: Option<mpsc::UnboundedSender<StdinEvent>>,
    /// Close the container's stdin when this client's input ends.
    pub stdin_once: bool,
}

/// Where `logs` reads from.
#[derive(Debug)]
pub struct LogSource {
    /// The json-file log.
    pub path: PathBuf,
    /// The container has a TTY (raw output, no multiplexing).
    pub tty: bool,
    /// Lifecycle updates, to know when following ends.
    pub lifecycle: watch::Receiver<Lifecycle>,
}

impl Engine {
    /// Attaches to a container's streams.
    pub fn attach(
        &self,
        reference: &str,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<AttachSession, EngineError> {
        let c = self.container(reference)?;
        let record = c.record();
        let tty = record.config.tty;
        // Subscribed even without stdout/stderr: the channel's end tells the client the run ended.
        let output = c.subscribe(stdout, stderr || (stdout && tty));
        let stdin = (stdin && record.config.open_stdin).then(|| c.stdin());
        // moby's containerAttach logs every attach, streaming or not (daemon/attach.go).
        self.emit(&record, "attach", &[]);
        Ok(AttachSession {
            tty,
            output,
            stdin,
            stdin_once: record.config.stdin_once,
        })
    }

    /// Where a container's logs are.
    pub fn log_source(&self, reference: &str) -> Result<LogSource, EngineError> {
        let c = self.container(reference)?;
        if log_type(&c.record().host_config) == "none" {
            return Err(EngineError::LogsNotSupported { id: c.id.clone() });
        }
        Ok(LogSource {
            path: c.log_path(),
            tty: c.record().config.tty,
            lifecycle: c.lifecycle(),
        })
    }

    /// Resizes a TTY container's terminal.
    pub fn resize(&self, reference: &str, height: u16, width: u16) -> Result<(), EngineError> {
        let c = self.container(reference)?;
        let Some(master) = c.pty() else {
            if c.record().state.status != Status::Running {
                return Err(EngineError::NotRunning { id: c.id.clone() });
            }
            return Ok(());
        };
        let size = libc::winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid for the call;
        // the descriptor is an open PTY master owned by `master`.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&master.as_fd()),
                libc::TIOCSWINSZ,
                &size,
            )
        };
        if rc < 0 {
            return Err(EngineError::Io {
                path: PathBuf::from("/dev/ptmx"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}
