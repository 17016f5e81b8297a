//! Streaming responses: channel-fed bodies, the multiplexed stdout/stderr framing, hijacked
//! attach connections, log streams and JSON progress.
//!
//! Multiplexed framing (non-TTY containers) is moby's `stdcopy`: every frame is an 8-byte header
//! `[stream, 0, 0, 0, len as big-endian u32]` followed by `len` bytes, stream 1 = stdout,
//! 2 = stderr. TTY containers stream raw bytes.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use hyper::body::{Body, Frame};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::container::logs::{self, LogEntry};
use crate::container::{StdinEvent, StreamKind};
use crate::core::{AttachSession, LogSource};

/// A response body fed by a channel; the response ends when every sender is dropped, and a
/// client that goes away drops the receiver, which stops the producer's next send.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    /// A body and the sender that feeds it.
    pub fn new() -> (mpsc::Sender<Bytes>, ChannelBody) {
        let (tx, rx) = mpsc::channel(64);
        (tx, ChannelBody { rx })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// One multiplexed frame.
pub fn frame(stream: StreamKind, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(8 + payload.len());
    buf.put_u8(stream as u8);
    buf.put_bytes(0, 3);
    // Chunks come from 32 KiB reads or 16 KiB log lines, far below u32::MAX.
    buf.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    buf.put_slice(payload);
    buf.freeze()
}

/// Serves an upgraded attach connection: container output to the client, client input to the
/// container. Returns when the container's run ends (after all of its output was written) or
/// the client goes away.
pub async fn serve_attach(upgraded: Upgraded, session: AttachSession) {
    serve_attach_with(upgraded, session, None).await;
}

/// [`serve_attach_with`] after first sending `replay` (attach's `logs=1`: the container's log
/// so far); with no `session` the connection ends after the replay (`logs=1&stream=0`).
pub async fn serve_attach_after_replay(
    upgraded: Upgraded,
    session: Option<AttachSession>,
    detach: Option<Vec<u8>>,
    replay: Vec<Bytes>,
) {
    let mut io = TokioIo::new(upgraded);
    for chunk in &replay {
        if io.write_all(chunk).await.is_err() {
            return;
        }
    }
    let _ = io.flush().await;
    match session {
        Some(session) => serve_attach_with(io.into_inner(), session, detach).await,
        None => {
            let _ = io.shutdown().await;
        }
    }
}

/// Writes `text` on a hijacked connection and closes it: how dockerd reports an exec that
/// failed after the 101 was sent.
pub async fn write_error(upgraded: Upgraded, text: &str) {
    let mut io = TokioIo::new(upgraded);
    let _ = io.write_all(text.as_bytes()).await;
    let _ = io.shutdown().await;
}

/// A container's log so far, framed as [`stream_logs`] sends it.
pub async fn log_replay(source: LogSource, stdout: bool, stderr: bool) -> Vec<Bytes> {
    let options = LogOptions {
        stdout,
        stderr,
        ..LogOptions::default()
    };
    let (tx, mut rx) = mpsc::channel(64);
    let producer = tokio::spawn(stream_logs(source, options, tx));
    let mut out = Vec::new();
    while let Some(chunk) = rx.recv().await {
        out.push(chunk);
    }
    let _ = producer.await;
    out
}

/// [`serve_attach`], ending the session (the container keeps running) when the client types
/// the `detach` sequence.
pub async fn serve_attach_with(
    upgraded: Upgraded,
    session: AttachSession,
    detach: Option<Vec<u8>>,
) {
    let io = TokioIo::new(upgraded);
    let (mut reader, mut writer) = tokio::io::split(io);
    let AttachSession {
        tty,
        output,
        stdin,
        stdin_once,
    } = session;
    let detached = std::sync::Arc::new(tokio::sync::Notify::new());
    let detached_tx = detached.clone();
    let mut filter = detach.map(super::detach::Filter::new);
    let input = async move {
        let Some(stdin) = stdin else {
            // Drain so that the client's half-close is noticed and the socket stays healthy.
            let mut sink = [0u8; 4096];
            while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        };
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let (data, detached) = match filter.as_mut() {
                        Some(filter) => filter.feed(&buf[..n]),
                        None => (buf[..n].to_vec(), false),
                    };
                    if !data.is_empty() && stdin.send(StdinEvent::Data(Bytes::from(data))).is_err()
                    {
                        return;
                    }
                    if detached {
                        detached_tx.notify_one();
                        return;
                    }
                }
            }
        }
        if stdin_once {
            let _ = stdin.send(StdinEvent::Close);
        }
    };
    let output = async move {
        let mut output = output;
        loop {
            let chunk = tokio::select! {
                chunk = output.recv() => chunk,
                () = detached.notified() => None,
            };
            let Some(chunk) = chunk else {
                break;
            };
            let bytes = if tty {
                chunk.data
            } else {
                frame(chunk.stream, &chunk.data)
            };
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = writer.flush().await;
        let _ = writer.shutdown().await;
    };
    // The input side may end first (client closed its stdin); output decides the end.
    let input = tokio::spawn(input);
    output.await;
    input.abort();
}

/// Options of `GET /containers/{id}/logs`.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Include stdout.
    pub stdout: bool,
    /// Include stderr.
    pub stderr: bool,
    /// Keep streaming until the container stops.
    pub follow: bool,
    /// Prefix each line with its time.
    pub timestamps: bool,
    /// Prefix each line with its log attributes (`--details`).
    pub details: bool,
    /// Only the last N lines.
    pub tail: Option<usize>,
    /// Only lines at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only lines before this time.
    pub until: Option<DateTime<Utc>>,
}

/// Docker's `tail`: a count of lines; anything else (`all`, a negative number, a word) means
/// every line, without an error (moby daemon/logs.go reads it with `strconv.Atoi` and falls
/// back to -1, which the log reader takes as "all").
pub fn parse_tail(value: Option<&str>) -> Option<usize> {
    value
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|n| usize::try_from(n).ok())
}

/// Parses Docker's `since`/`until`: Unix seconds with an optional fraction; 0 means unset.
pub fn parse_time(value: Option<&str>) -> Result<Option<DateTime<Utc>>, String> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let (secs, frac) = value.split_once('.').unwrap_or((value, "0"));
    let secs: i64 = secs
        .parse()
        .map_err(|_| format!("invalid timestamp: {value}"))?;
    let frac = format!("{frac:0<9}");
    let nanos: u32 = frac[..9]
        .parse()
        .map_err(|_| format!("invalid timestamp: {value}"))?;
    if secs == 0 && nanos == 0 {
        return Ok(None);
    }
    Ok(DateTime::from_timestamp(secs, nanos))
}

fn encode_entry(entry: &LogEntry, options: &LogOptions, tty: bool) -> Option<Bytes> {
    let kind = entry.kind();
    let wanted = match kind {
        StreamKind::Stdout => options.stdout,
        StreamKind::Stderr => options.stderr,
    };
    if !wanted
        || options.since.is_some_and(|s| entry.time < s)
        || options.until.is_some_and(|u| entry.time > u)
    {
        return None;
    }
    let mut payload = Vec::new();
    if options.timestamps {
        payload.extend_from_slice(logs::timestamp(&entry.time).as_bytes());
        payload.push(b' ');
    }
    // As dockerd: the attributes and a space, even when there are none.
    if options.details {
        payload.extend_from_slice(logs::details_prefix(&entry.attrs).as_bytes());
        payload.push(b' ');
    }
    payload.extend_from_slice(entry.log.as_bytes());
    Some(if tty {
        Bytes::from(payload)
    } else {
        frame(kind, &payload)
    })
}

/// Streams a container's log into `tx`: the existing lines (or their tail), then, when
/// following, new lines until the container stops.
pub async fn stream_logs(source: LogSource, options: LogOptions, tx: mpsc::Sender<Bytes>) {
    let LogSource {
        path,
        tty,
        mut lifecycle,
    } = source;
    let mut file = tokio::fs::File::open(&path).await.ok();
    let mut partial = Vec::new();
    let mut data = Vec::new();
    if let Some(file) = file.as_mut() {
        let _ = file.read_to_end(&mut data).await;
    }
    let mut entries = logs::parse_lines(&mut partial, &data);
    if let Some(tail) = options.tail {
        let skip = entries.len().saturating_sub(tail);
        entries.drain(..skip);
    }
    for entry in &entries {
        if let Some(bytes) = encode_entry(entry, &options, tty) {
            if tx.send(bytes).await.is_err() {
                return;
            }
        }
    }
    if !options.follow {
        return;
    }
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // Decide whether this is the last round *before* reading, so lines written just
        // before the exit are still picked up.
        let running = {
            let l = *lifecycle.borrow_and_update();
            l.running && !l.removed
        };
        if file.is_none() {
            file = tokio::fs::File::open(&path).await.ok();
        }
        if let Some(f) = file.as_mut() {
            loop {
                match f.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        for entry in logs::parse_lines(&mut partial, &buf[..n]) {
                            if let Some(bytes) = encode_entry(&entry, &options, tty) {
                                if tx.send(bytes).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        }
        if !running {
            return;
        }
        tokio::select! {
            _ = lifecycle.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = tx.closed() => return,
        }
    }
}

/// A JSON progress line `{"stream": "..."}`.
pub fn progress_stream(line: &str) -> Bytes {
    let mut text = line.to_string();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    json_line(&serde_json::json!({ "stream": text }))
}

/// A JSON progress error line.
pub fn progress_error(message: &str) -> Bytes {
    json_line(&serde_json::json!({
        "errorDetail": {"message": message},
        "error": message,
    }))
}

fn json_line(value: &serde_json::Value) -> Bytes {
    let mut out = value.to_string().into_bytes();
    out.push(b'\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_takes_a_count_and_reads_anything_else_as_all() {
        assert_eq!(parse_tail(Some("3")), Some(3));
        assert_eq!(parse_tail(Some("0")), Some(0));
        assert_eq!(parse_tail(Some("all")), None);
        assert_eq!(parse_tail(Some("abc")), None);
        assert_eq!(parse_tail(Some("-2")), None);
        assert_eq!(parse_tail(Some("")), None);
        assert_eq!(parse_tail(None), None);
    }

    #[test]
    fn frames_carry_stream_type_and_big_endian_length() {
        let f = frame(StreamKind::Stderr, b"hello");
        assert_eq!(&f[..8], &[2, 0, 0, 0, 0, 0, 0, 5]);
        assert_eq!(&f[8..], b"hello");
    }

    #[test]
    fn timestamps_parse_with_fractions() {
        assert_eq!(parse_time(Some("0")).unwrap(), None);
        let t = parse_time(Some("1700000000.5")).unwrap().unwrap();
        assert_eq!(t.timestamp(), 1_700_000_000);
        assert_eq!(t.timestamp_subsec_nanos(), 500_000_000);
        assert!(parse_time(Some("x")).is_err());
    }
}
