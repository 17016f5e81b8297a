//! The json-file log driver: `<container-dir>/<id>-json.log`.
//!
//! Each line of container output becomes one JSON object
//! `{"log":"hello\n","stream":"stdout","time":"2024-01-01T00:00:00.000000000Z"}`, as Docker's
//! json-file driver writes it. A line longer than [`MAX_LINE`] is split, and a partial last line
//! is written when its stream ends. With `--log-opt labels=…`/`env=…`/`labels-regex=…`/
//! `env-regex=…`/`tag=…` each entry also carries those attributes (`"attrs":{…}`), which
//! `docker logs --details` shows before each line.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::StreamKind;

/// Longest line kept in one log entry (Docker's buffer size).
pub const MAX_LINE: usize = 16 * 1024;

/// The `--log-opt` keys the json-file driver accepts (moby `jsonfilelog.ValidateLogOpt`).
const JSON_FILE_OPTS: [&str; 8] = [
    "env",
    "env-regex",
    "labels",
    "labels-regex",
    "tag",
    "max-file",
    "max-size",
    "compress",
];

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
    /// A `--log-opt` the json-file driver does not know (moby's text).
    #[error("unknown log opt '{key}' for json-file log driver")]
    UnknownOption {
        /// The option's key.
        key: String,
    },
    /// A log driver this engine does not have (moby's text).
    #[error("logger: no log driver named '{name}' is registered")]
    UnknownDriver {
        /// The driver asked for.
        name: String,
    },
    /// A `mode` option other than `blocking` or `non-blocking` (moby's text).
    #[error("logger: logging mode not supported: {mode}")]
    UnknownMode {
        /// The mode asked for.
        mode: String,
    },
    /// `max-buffer-size` without `mode=non-blocking` (moby's text).
    #[error("logger: max-buffer-size option is only supported with 'mode=non-blocking'")]
    BufferWithoutNonBlocking,
    /// A `labels-regex`/`env-regex` option is not a valid regular expression.
    #[error("error parsing regexp: {pattern}")]
    BadRegex {
        /// The expression.
        pattern: String,
        /// The cause.
        #[source]
        source: regex::Error,
    },
}

/// Checks a `LogConfig` as dockerd's `logger.ValidateLogOpts` does at create: the options every
/// driver takes (`mode`, `max-buffer-size`), that the driver exists (`json-file` or `none`
/// here), then the driver's own options.
pub fn validate_driver(driver: &str, options: &BTreeMap<String, String>) -> Result<(), LogError> {
    if driver == "none" {
        return Ok(());
    }
    let mode = options.get("mode").map_or("", String::as_str);
    if !matches!(mode, "" | "blocking" | "non-blocking") {
        return Err(LogError::UnknownMode {
            mode: mode.to_string(),
        });
    }
    if options.contains_key("max-buffer-size") && mode != "non-blocking" {
        return Err(LogError::BufferWithoutNonBlocking);
    }
    if driver != "json-file" {
        return Err(LogError::UnknownDriver {
            name: driver.to_string(),
        });
    }
    let own: BTreeMap<String, String> = options
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "mode" | "max-buffer-size"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    validate_options(&own)
}

/// Checks a json-file `LogConfig.Config` as dockerd does at create.
pub fn validate_options(options: &BTreeMap<String, String>) -> Result<(), LogError> {
    for key in options.keys() {
        if !JSON_FILE_OPTS.contains(&key.as_str()) {
            return Err(LogError::UnknownOption { key: key.clone() });
        }
    }
    for key in ["labels-regex", "env-regex"] {
        if let Some(pattern) = options.get(key).filter(|p| !p.is_empty()) {
            regex::Regex::new(pattern).map_err(|source| LogError::BadRegex {
                pattern: pattern.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// What a log tag template may refer to.
#[derive(Debug, Clone, Default)]
pub struct TagInfo {
    /// Full container id.
    pub id: String,
    /// Container name without its slash.
    pub name: String,
    /// Full image id (`sha256:…`).
    pub image_id: String,
    /// The image as the user named it.
    pub image_name: String,
}

/// The attributes each log entry carries (moby `logger.Info.ExtraAttributes` plus the `tag`):
/// the labels and environment variables the options name or match.
pub fn extra_attributes(
    options: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
    env: &[String],
    tag: &TagInfo,
) -> Result<BTreeMap<String, String>, LogError> {
    let mut extra = BTreeMap::new();
    let regex = |key: &str| -> Result<Option<regex::Regex>, LogError> {
        match options.get(key).filter(|p| !p.is_empty()) {
            None => Ok(None),
            Some(pattern) => {
                regex::Regex::new(pattern)
                    .map(Some)
                    .map_err(|source| LogError::BadRegex {
                        pattern: pattern.clone(),
                        source,
                    })
            }
        }
    };
    let listed = |key: &str| -> Vec<String> {
        options
            .get(key)
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    };
    for name in listed("labels") {
        if let Some(value) = labels.get(&name) {
            extra.insert(name, value.clone());
        }
    }
    if let Some(re) = regex("labels-regex")? {
        for (k, v) in labels.iter().filter(|(k, _)| re.is_match(k)) {
            extra.insert(k.clone(), v.clone());
        }
    }
    let env: BTreeMap<&str, &str> = env.iter().filter_map(|e| e.split_once('=')).collect();
    for name in listed("env") {
        if let Some(value) = env.get(name.as_str()) {
            extra.insert(name, (*value).to_string());
        }
    }
    if let Some(re) = regex("env-regex")? {
        for (k, v) in env.iter().filter(|(k, _)| re.is_match(k)) {
            extra.insert((*k).to_string(), (*v).to_string());
        }
    }
    if let Some(template) = options.get("tag").filter(|t| !t.is_empty()) {
        let tag = render_tag(template, tag);
        if !tag.is_empty() {
            extra.insert("tag".into(), tag);
        }
    }
    Ok(extra)
}

/// Expands the `{{.Field}}` references of a log tag that moby's `ParseLogTag` offers.
fn render_tag(template: &str, info: &TagInfo) -> String {
    let short = |id: &str| {
        let hex = id.strip_prefix("sha256:").unwrap_or(id);
        hex[..hex.len().min(12)].to_string()
    };
    [
        ("{{.ID}}", short(&info.id)),
        ("{{.FullID}}", info.id.clone()),
        ("{{.Name}}", info.name.clone()),
        ("{{.ImageID}}", short(&info.image_id)),
        ("{{.ImageFullID}}", info.image_id.clone()),
        ("{{.ImageName}}", info.image_name.clone()),
        ("{{.DaemonName}}", "docker".to_string()),
    ]
    .iter()
    .fold(template.to_string(), |t, (field, value)| {
        t.replace(field, value)
    })
}

/// `docker logs --details`' prefix: the attributes sorted by key, `k=v` with both
/// query-escaped as Go's `url.QueryEscape` does, joined by commas (moby
/// `logstream.attrsByteSlice`).
pub fn details_prefix(attrs: &BTreeMap<String, String>) -> String {
    attrs
        .iter()
        .map(|(k, v)| format!("{}={}", query_escape(k), query_escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// One log line as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The output, with its newline.
    pub log: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The `--log-opt` attributes (labels, environment, tag) recorded with the line.
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
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
    attrs: BTreeMap<String, String>,
}

impl LogWriter {
    /// Opens the log for appending (a restarted container appends to the same log).
    pub fn open(path: &Path) -> Result<LogWriter, LogError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(crate::state::modes::LOG_FILE)
            .open(path)
            .map_err(|source| LogError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            partial: [Vec::new(), Vec::new()],
            attrs: BTreeMap::new(),
        })
    }

    /// Records `attrs` with every line from now on.
    pub fn with_attrs(mut self, attrs: BTreeMap<String, String>) -> LogWriter {
        self.attrs = attrs;
        self
    }

    /// Records a chunk of output; complete lines are written at once.
    pub fn write(&mut self, stream: StreamKind, data: &[u8]) -> Result<(), LogError> {
        let idx = stream as usize - 1;
        let mut out = Vec::new();
        let buf = &mut self.partial[idx];
        buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
            encode(&mut out, &self.attrs, stream, &buf[start..start + pos + 1]);
            start += pos + 1;
        }
        while buf.len() - start >= MAX_LINE {
            encode(&mut out, &self.attrs, stream, &buf[start..start + MAX_LINE]);
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
        encode(&mut out, &self.attrs, stream, &rest);
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

fn encode(out: &mut Vec<u8>, attrs: &BTreeMap<String, String>, stream: StreamKind, line: &[u8]) {
    // Serializing a struct of strings cannot fail.
    if let Ok(mut json) = serde_json::to_vec(&EntryOut {
        log: &String::from_utf8_lossy(line),
        stream: stream.name(),
        attrs,
        time: timestamp(&Utc::now()),
    }) {
        json.push(b'\n');
        out.extend_from_slice(&json);
    }
}

#[derive(Serialize)]
struct EntryOut<'a> {
    log: &'a str,
    stream: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    attrs: &'a BTreeMap<String, String>,
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

    #[test]
    fn attributes_are_chosen_by_the_options_and_shown_escaped_and_sorted() {
        let options: BTreeMap<String, String> = [
            ("labels", "team,missing"),
            ("env-regex", "^APP_"),
            ("tag", "{{.Name}}/{{.ID}}"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let labels = BTreeMap::from([
            ("team".to_string(), "a b&c".to_string()),
            ("other".to_string(), "x".to_string()),
        ]);
        let env = ["APP_MODE=prod".to_string(), "PATH=/bin".to_string()];
        let tag = TagInfo {
            id: "0123456789abcdef".into(),
            name: "web".into(),
            ..TagInfo::default()
        };
        let attrs = extra_attributes(&options, &labels, &env, &tag).unwrap();
        assert_eq!(
            details_prefix(&attrs),
            "APP_MODE=prod,tag=web%2F0123456789ab,team=a+b%26c"
        );
        assert_eq!(details_prefix(&BTreeMap::new()), "");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let mut writer = LogWriter::open(&path).unwrap().with_attrs(attrs.clone());
        writer.write(StreamKind::Stdout, b"hi\n").unwrap();
        let data = std::fs::read_to_string(&path).unwrap();
        assert!(
            data.starts_with(r#"{"log":"hi\n","stream":"stdout","attrs":{"APP_MODE":"prod","#),
            "{data}"
        );
        let entries = parse_lines(&mut Vec::new(), data.as_bytes());
        assert_eq!(entries[0].attrs, attrs);
    }

    #[test]
    fn drivers_and_modes_are_checked_with_dockers_texts() {
        let opts = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(validate_driver("none", &opts(&[("anything", "x")])).is_ok());
        assert!(validate_driver(
            "json-file",
            &opts(&[("mode", "non-blocking"), ("max-buffer-size", "4m")])
        )
        .is_ok());
        assert_eq!(
            validate_driver("syslog", &opts(&[]))
                .unwrap_err()
                .to_string(),
            "logger: no log driver named 'syslog' is registered"
        );
        assert_eq!(
            validate_driver("json-file", &opts(&[("mode", "fast")]))
                .unwrap_err()
                .to_string(),
            "logger: logging mode not supported: fast"
        );
        assert_eq!(
            validate_driver("json-file", &opts(&[("max-buffer-size", "4m")]))
                .unwrap_err()
                .to_string(),
            "logger: max-buffer-size option is only supported with 'mode=non-blocking'"
        );
    }

    #[test]
    fn unknown_json_file_options_are_refused_with_dockers_text() {
        let ok = BTreeMap::from([("max-size".to_string(), "10m".to_string())]);
        assert!(validate_options(&ok).is_ok());
        let bad = BTreeMap::from([("foo".to_string(), "1".to_string())]);
        assert_eq!(
            validate_options(&bad).unwrap_err().to_string(),
            "unknown log opt 'foo' for json-file log driver"
        );
    }
}
