//! The json-file log driver: `<container-dir>/<id>-json.log`.
//!
//! Each line of container output becomes one JSON object
//! `{"log":"hello\n","stream":"stdout","time":"2024-01-01T00:00:00.000000000Z"}`, as Docker's
//! json-file driver writes it. A line longer than [`MAX_LINE`] is split, and a partial last line
//! is written when its stream ends.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::StreamKind;

/// Longest line kept in one log entry (Docker's buffer size).
pub const MAX_LINE: usize = 16 * 1024;

/// Errors of the log writer and reader.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log file could not be opened, read or written.
    #[error("cannot access log {path}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// One log line as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The output, with its newline.
    pub log: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// When the engine read it.
    pub time: DateTime<Utc>,
}

impl LogEntry {
    /// Which stream the entry came from.
    pub fn kind(&self) -> StreamKind {
        if self.stream == "stderr" {
            StreamKind::Stderr
        } else {
            StreamKind::Stdout
        }
    }
}

/// Go's `RFC3339Nano` with a fixed nine-digit fraction, as `docker logs -t` prints it.
pub fn timestamp(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Appends container output to the json-file log, line by line.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: File,
    partial: [Vec<u8>; 2],
}

impl LogWriter {
    /// Opens the log for appending (a restarted container appends to the same log).
    pub fn open(path: &Path) -> Result<LogWriter, LogError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| LogError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            partial: [Vec::new(), Vec::new()],
        })
    }

    /// Records a chunk of output; complete lines are written at once.
    pub fn write(&mut self, stream: StreamKind, data: &[u8]) -> Result<(), LogError> {
        let idx = stream as usize - 1;
        let mut out = Vec::new();
        let buf = &mut self.partial[idx];
        buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
            encode(&mut out, stream, &buf[start..start + pos + 1]);
            start += pos + 1;
        }
        while buf.len() - start >= MAX_LINE {
            encode(&mut out, stream, &buf[start..start + MAX_LINE]);
            start += MAX_LINE;
        }
        buf.drain(..start);
        self.flush_bytes(&out)
    }

    /// Writes what is left of a stream's last line.
    pub fn finish(&mut self, stream: StreamKind) -> Result<(), LogError> {
        let idx = stream as usize - 1;
        if self.partial[idx].is_empty() {
            return Ok(());
        }
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.partial[idx]);
        encode(&mut out, stream, &rest);
        self.flush_bytes(&out)
    }

    fn flush_bytes(&mut self, out: &[u8]) -> Result<(), LogError> {
        if out.is_empty() {
            return Ok(());
        }
        self.file.write_all(out).map_err(|source| LogError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

fn encode(out: &mut Vec<u8>, stream: StreamKind, line: &[u8]) {
    let entry = LogEntry {
        log: String::from_utf8_lossy(line).into_owned(),
        stream: stream.name().to_string(),
        time: Utc::now(),
    };
    // Serializing a struct of strings cannot fail.
    if let Ok(mut json) = serde_json::to_vec(&EntryOut {
        log: &entry.log,
        stream: &entry.stream,
        time: timestamp(&entry.time),
    }) {
        json.push(b'\n');
        out.extend_from_slice(&json);
    }
}

#[derive(Serialize)]
struct EntryOut<'a> {
    log: &'a str,
    stream: &'a str,
    time: String,
}

/// Parses complete lines of a log file; `partial` keeps an unfinished last line for the next
/// call (the writer may be half-way through a line while a follower reads).
pub fn parse_lines(partial: &mut Vec<u8>, data: &[u8]) -> Vec<LogEntry> {
    partial.extend_from_slice(data);
    let mut entries = Vec::new();
    let mut start = 0;
    while let Some(pos) = partial[start..].iter().position(|b| *b == b'\n') {
        let line = &partial[start..start + pos];
        start += pos + 1;
        match serde_json::from_slice::<LogEntry>(line) {
            Ok(entry) => entries.push(entry),
            Err(err) => tracing::debug!(error = %err, "skipping malformed log line"),
        }
    }
    partial.drain(..start);
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_partial_lines_flushed_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let mut writer = LogWriter::open(&path).unwrap();
        writer.write(StreamKind::Stdout, b"hel").unwrap();
        writer.write(StreamKind::Stderr, b"oops\n").unwrap();
        writer.write(StreamKind::Stdout, b"lo\nwor").unwrap();
        writer.finish(StreamKind::Stdout).unwrap();
        let data = std::fs::read(&path).unwrap();
        let mut partial = Vec::new();
        let entries = parse_lines(&mut partial, &data);
        let got: Vec<_> = entries
            .iter()
            .map(|e| (e.stream.as_str(), e.log.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("stderr", "oops\n"),
                ("stdout", "hello\n"),
                ("stdout", "wor")
            ]
        );
        assert!(partial.is_empty());
    }
}
