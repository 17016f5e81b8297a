//! A small QMP (QEMU Machine Protocol) client: JSON objects, one per line, over the socket
//! QEMU opens with `-qmp` (a unix socket on Linux and macOS, TCP on 127.0.0.1 on Windows).
//!
//! A session is: QEMU sends a greeting (`{"QMP": {...}}`), the client sends
//! `qmp_capabilities` to leave negotiation mode, then each command gets exactly one `return`
//! or `error` reply, with asynchronous `event` messages possibly in between (they are
//! skipped). QEMU serves one QMP client at a time; a second one waits without a greeting, which
//! the connect timeout turns into [`QmpError::Timeout`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// Where QEMU listens for QMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpEndpoint {
    /// A unix socket (Linux, macOS).
    Unix(PathBuf),
    /// A TCP socket on the loopback address (Windows, where QEMU has no unix sockets).
    Tcp(SocketAddr),
}

impl QmpEndpoint {
    /// The `-qmp` argument that makes QEMU listen here without waiting for a client.
    pub fn qemu_arg(&self) -> String {
        match self {
            QmpEndpoint::Unix(path) => format!(
                "unix:{},server=on,wait=off",
                crate::args::escape_opt(&path.to_string_lossy())
            ),
            QmpEndpoint::Tcp(addr) => format!("tcp:{addr},server=on,wait=off"),
        }
    }
}

impl std::fmt::Display for QmpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QmpEndpoint::Unix(path) => write!(f, "qmp socket {}", path.display()),
            QmpEndpoint::Tcp(addr) => write!(f, "qmp socket tcp:{addr}"),
        }
    }
}

/// What can go wrong talking QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Nothing listens at the endpoint.
    #[error("cannot connect to {endpoint}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// QEMU did not answer in time.
    #[error("{endpoint}: no answer within {}ms while waiting for {what}", timeout.as_millis())]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// What was awaited.
        what: String,
        /// How long.
        timeout: Duration,
    },
    /// QEMU closed the connection.
    #[error("{endpoint}: connection closed while waiting for {what}")]
    Closed {
        /// The endpoint.
        endpoint: String,
        /// What was awaited.
        what: String,
    },
    /// Reading or writing the socket failed.
    #[error("{endpoint}: i/o error")]
    Io {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// QEMU sent something that is not a QMP message.
    #[error("{endpoint}: malformed message {line:?}")]
    Malformed {
        /// The endpoint.
        endpoint: String,
        /// The line received.
        line: String,
        /// Why it did not parse.
        #[source]
        source: Option<serde_json::Error>,
    },
    /// QEMU refused a command.
    #[error("{endpoint}: {command} failed: {class}: {desc}")]
    Command {
        /// The endpoint.
        endpoint: String,
        /// The command.
        command: String,
        /// QMP's error class.
        class: String,
        /// QMP's description.
        desc: String,
    },
}

trait QmpStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> QmpStream for T {}

/// A negotiated QMP session.
pub struct QmpClient {
    stream: BufReader<Box<dyn QmpStream>>,
    endpoint: String,
    timeout: Duration,
}

impl std::fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpClient")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl QmpClient {
    /// Connects, reads the greeting and negotiates capabilities; each step may take up to
    /// `timeout`, and so may each later command.
    pub async fn connect(endpoint: &QmpEndpoint, timeout: Duration) -> Result<Self, QmpError> {
        let name = endpoint.to_string();
        let connect_error = |source| QmpError::Connect {
            endpoint: name.clone(),
            source,
        };
        let timed_out = || QmpError::Timeout {
            endpoint: name.clone(),
            what: "the connection".to_owned(),
            timeout,
        };
        let stream: Box<dyn QmpStream> = match endpoint {
            #[cfg(unix)]
            QmpEndpoint::Unix(path) => Box::new(
                tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(connect_error)?,
            ),
            #[cfg(not(unix))]
            QmpEndpoint::Unix(_) => {
                return Err(connect_error(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "unix sockets are not available on this host",
                )))
            }
            QmpEndpoint::Tcp(addr) => Box::new(
                tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(connect_error)?,
            ),
        };
        let mut client = Self {
            stream: BufReader::new(stream),
            endpoint: name,
            timeout,
        };
        let greeting = client.read_message("the greeting").await?;
        if greeting.get("QMP").is_none() {
            return Err(client.malformed(greeting.to_string()));
        }
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    /// Runs `command` and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        tracing::debug!(endpoint = %self.endpoint, %command, "qmp request");
        let write = async {
            self.stream.write_all(line.as_bytes()).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(self.timeout, write)
            .await
            .map_err(|_| self.timed_out(command))?
            .map_err(|source| QmpError::Io {
                endpoint: self.endpoint.clone(),
                source,
            })?;
        loop {
            let message = self.read_message(command).await?;
            if let Some(value) = message.get("return") {
                tracing::debug!(endpoint = %self.endpoint, %command, reply = %value, "qmp reply");
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                let text = |key: &str| {
                    error
                        .get(key)
                        .and_then(Value::as_str)
                        .unwrap_or("unknown")
                        .to_owned()
                };
                return Err(QmpError::Command {
                    endpoint: self.endpoint.clone(),
                    command: command.to_owned(),
                    class: text("class"),
                    desc: text("desc"),
                });
            }
            // Events (`{"event": ...}`) arrive whenever QEMU likes; they are not replies.
            tracing::debug!(endpoint = %self.endpoint, %message, "qmp event");
        }
    }

    /// The VM's run state as QMP names it (`running`, `paused`, `shutdown`, `prelaunch`…).
    pub async fn query_status(&mut self) -> Result<String, QmpError> {
        let reply = self.execute("query-status", None).await?;
        match reply.get("status").and_then(Value::as_str) {
            Some(status) => Ok(status.to_owned()),
            None => Err(self.malformed(reply.to_string())),
        }
    }

    /// Presses the ACPI power button; the guest decides whether to power off.
    pub async fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// Makes QEMU exit at once. QEMU may close the socket before its reply arrives, which
    /// counts as success.
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(QmpError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionReset =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    async fn read_message(&mut self, what: &str) -> Result<Value, QmpError> {
        let mut line = String::new();
        let read = tokio::time::timeout(self.timeout, self.stream.read_line(&mut line))
            .await
            .map_err(|_| self.timed_out(what))?
            .map_err(|source| QmpError::Io {
                endpoint: self.endpoint.clone(),
                source,
            })?;
        if read == 0 {
            return Err(QmpError::Closed {
                endpoint: self.endpoint.clone(),
                what: what.to_owned(),
            });
        }
        serde_json::from_str(line.trim_end()).map_err(|source| QmpError::Malformed {
            endpoint: self.endpoint.clone(),
            line: line.trim_end().to_owned(),
            source: Some(source),
        })
    }

    fn timed_out(&self, what: &str) -> QmpError {
        QmpError::Timeout {
            endpoint: self.endpoint.clone(),
            what: what.to_owned(),
            timeout: self.timeout,
        }
    }

    fn malformed(&self, line: String) -> QmpError {
        QmpError::Malformed {
            endpoint: self.endpoint.clone(),
            line,
            source: None,
        }
    }
}

/// A fake QMP server for tests: greets, accepts `qmp_capabilities`, answers each command from
/// a script and records what it was asked.
#[cfg(all(test, unix))]
pub(crate) mod fake {
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    /// Commands received, in order.
    pub(crate) type Log = Arc<Mutex<Vec<String>>>;

    /// Serves QMP on `path`, answering each command (after negotiation) with the reply lines
    /// `reply(command)` returns, for every connection until the test ends.
    pub(crate) fn serve(
        path: &Path,
        reply: impl Fn(&str) -> Vec<String> + Send + Sync + 'static,
    ) -> Log {
        let listener = UnixListener::bind(path).expect("bind fake qmp socket");
        let log: Log = Arc::default();
        let seen = log.clone();
        let reply = Arc::new(reply);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                let reply = reply.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    let greeting = "{\"QMP\": {\"version\": {}, \"capabilities\": [\"oob\"]}}\n";
                    if write.write_all(greeting.as_bytes()).await.is_err() {
                        return;
                    }
                    while let Ok(Some(line)) = lines.next_line().await {
                        let request: serde_json::Value =
                            serde_json::from_str(&line).unwrap_or_default();
                        let command = request["execute"].as_str().unwrap_or("").to_owned();
                        let answers = if command == "qmp_capabilities" {
                            vec!["{\"return\": {}}".to_owned()]
                        } else {
                            seen.lock().expect("log lock").push(command.clone());
                            reply(&command)
                        };
                        for answer in answers {
                            if answer == "CLOSE" {
                                return;
                            }
                            let line = format!("{answer}\n");
                            if write.write_all(line.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        log
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn status_reply(status: &str) -> Vec<String> {
        vec![
            // An event before the reply must be skipped.
            "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"RTC_CHANGE\", \
             \"data\": {}}"
                .to_owned(),
            format!("{{\"return\": {{\"status\": \"{status}\", \"running\": true}}}}"),
        ]
    }

    #[tokio::test]
    async fn negotiates_and_queries_status() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("qmp.sock");
        let log = fake::serve(&path, |command| match command {
            "query-status" => status_reply("running"),
            _ => vec!["{\"return\": {}}".to_owned()],
        });
        let endpoint = QmpEndpoint::Unix(path);
        let mut client = QmpClient::connect(&endpoint, Duration::from_secs(2))
            .await
            .expect("connects");
        assert_eq!(client.query_status().await.expect("status"), "running");
        client.system_powerdown().await.expect("powerdown");
        assert_eq!(
            log.lock().expect("log").clone(),
            vec!["query-status", "system_powerdown"]
        );
    }

    #[tokio::test]
    async fn reports_command_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("qmp.sock");
        fake::serve(&path, |_| {
            vec!["{\"error\": {\"class\": \"GenericError\", \"desc\": \"no ACPI\"}}".to_owned()]
        });
        let endpoint = QmpEndpoint::Unix(path.clone());
        let mut client = QmpClient::connect(&endpoint, Duration::from_secs(2))
            .await
            .expect("connects");
        let err = client.system_powerdown().await.expect_err("refused");
        assert_eq!(
            err.to_string(),
            format!(
                "qmp socket {}: system_powerdown failed: GenericError: no ACPI",
                path.display()
            )
        );
    }

    #[tokio::test]
    async fn quit_accepts_a_closed_connection() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("qmp.sock");
        fake::serve(&path, |_| vec!["CLOSE".to_owned()]);
        let endpoint = QmpEndpoint::Unix(path);
        let mut client = QmpClient::connect(&endpoint, Duration::from_secs(2))
            .await
            .expect("connects");
        client.quit().await.expect("quit tolerates EOF");
    }

    #[tokio::test]
    async fn connect_fails_without_a_listener() {
        let dir = tempfile::tempdir().expect("temp dir");
        let endpoint = QmpEndpoint::Unix(dir.path().join("absent.sock"));
        let err = QmpClient::connect(&endpoint, Duration::from_secs(1))
            .await
            .expect_err("nothing listens");
        assert!(matches!(err, QmpError::Connect { .. }), "{err:?}");
    }

    #[test]
    fn qemu_arguments_per_endpoint() {
        assert_eq!(
            QmpEndpoint::Unix("/m/a,b/qmp.sock".into()).qemu_arg(),
            "unix:/m/a,,b/qmp.sock,server=on,wait=off"
        );
        assert_eq!(
            QmpEndpoint::Tcp("127.0.0.1:4444".parse().expect("addr")).qemu_arg(),
            "tcp:127.0.0.1:4444,server=on,wait=off"
        );
    }
}
