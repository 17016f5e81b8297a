//! The external-driver protocol: how `rmachine` talks to an `rmachine-driver-NAME` program.
//!
//! JSON, one message per line, over the plugin's stdin (requests) and stdout (replies); the
//! plugin's stderr is free text for diagnostics. The first request is always a handshake that
//! names [`PROTOCOL_VERSION`]; every later request is one [`Driver`] method or the flag
//! discovery call. `docs/driver-protocol.md` is the normative description; this module is its
//! Rust form, with a server ([`serve`]) that turns any [`Driver`] into a plugin.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use crate::{Driver, DriverError, DriverInfo, Endpoints, MachineDir, StopMode, VmSpec};

/// The protocol version this crate speaks; a plugin answering another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Executables named `rmachine-driver-NAME` on PATH provide the driver `NAME`.
pub const PROGRAM_PREFIX: &str = "rmachine-driver-";

/// The values of a plugin's `create` flags, by flag name without the leading dashes: a string,
/// or `true` for a switch given on the command line. Flags not given are absent.
pub type Options = BTreeMap<String, serde_json::Value>;

/// One request line: an id the reply echoes, the method and its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the host; the reply carries the same id.
    pub id: u64,
    /// The method and its parameters.
    #[serde(flatten)]
    pub call: Call,
}

/// The methods, as `{"method": NAME, "params": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "params", rename_all = "camelCase")]
pub enum Call {
    /// First request of every session: the host's protocol version.
    Handshake {
        /// [`PROTOCOL_VERSION`] of the host.
        version: u32,
    },
    /// The plugin's `create` flags.
    Flags {},
    /// [`Driver::precheck`].
    Precheck {
        /// Flag values given at create.
        options: Options,
        /// What will be created.
        spec: VmSpec,
    },
    /// [`Driver::create`].
    Create {
        /// Flag values given at create.
        options: Options,
        /// The machine.
        machine: MachineRef,
        /// What to create.
        spec: VmSpec,
    },
    /// [`Driver::start`].
    Start {
        /// Flag values given at create.
        options: Options,
        /// The machine.
        machine: MachineRef,
        /// The machine's spec.
        spec: VmSpec,
    },
    /// [`Driver::stop`].
    Stop {
        /// Flag values given at create.
        options: Options,
        /// The machine.
        machine: MachineRef,
        /// How to stop.
        mode: StopRequest,
    },
    /// [`Driver::remove`].
    Remove {
        /// Flag values given at create.
        options: Options,
        /// The machine.
        machine: MachineRef,
    },
    /// [`Driver::state`].
    State {
        /// Flag values given at create.
        options: Options,
        /// The machine.
        machine: MachineRef,
    },
    /// [`Driver::endpoints`].
    Endpoints {
        /// Flag values given at create.
        options: Options,
        /// The machine.
        machine: MachineRef,
    },
}

impl Call {
    /// The method name, for messages.
    pub fn method(&self) -> &'static str {
        match self {
            Call::Handshake { .. } => "handshake",
            Call::Flags {} => "flags",
            Call::Precheck { .. } => "precheck",
            Call::Create { .. } => "create",
            Call::Start { .. } => "start",
            Call::Stop { .. } => "stop",
            Call::Remove { .. } => "remove",
            Call::State { .. } => "state",
            Call::Endpoints { .. } => "endpoints",
        }
    }
}

/// The machine a request is about: its name and its directory in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRef {
    /// The machine's name.
    pub name: String,
    /// Absolute path of its directory; the plugin keeps its files there.
    pub path: PathBuf,
}

impl From<&MachineDir> for MachineRef {
    fn from(dir: &MachineDir) -> Self {
        MachineRef {
            name: dir.name.clone(),
            path: dir.path.clone(),
        }
    }
}

impl From<MachineRef> for MachineDir {
    fn from(m: MachineRef) -> Self {
        MachineDir::new(m.name, m.path)
    }
}

/// [`StopMode`] on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum StopRequest {
    /// Ask the guest to power off, waiting at most this long.
    Graceful {
        /// Seconds to wait.
        #[serde(rename = "timeoutSeconds")]
        timeout_seconds: u64,
    },
    /// Pull the plug.
    Kill,
}

impl From<StopMode> for StopRequest {
    fn from(mode: StopMode) -> Self {
        match mode {
            StopMode::Graceful { timeout } => StopRequest::Graceful {
                timeout_seconds: timeout.as_secs(),
            },
            StopMode::Kill => StopRequest::Kill,
        }
    }
}

impl From<StopRequest> for StopMode {
    fn from(req: StopRequest) -> Self {
        match req {
            StopRequest::Graceful { timeout_seconds } => StopMode::Graceful {
                timeout: std::time::Duration::from_secs(timeout_seconds),
            },
            StopRequest::Kill => StopMode::Kill,
        }
    }
}

/// One reply line: the request's id and either a result or an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The id of the request answered.
    pub id: u64,
    /// What the method returned (absent on error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Why the method failed (absent on success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReply>,
}

/// A failed method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// One line for the user, naming what failed.
    pub message: String,
}

/// Kinds of failure a plugin reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ErrorKind {
    /// The handshake named a version the plugin does not speak.
    UnsupportedVersion,
    /// The method is not known or not the handshake when one is due.
    BadRequest,
    /// The driver cannot do this.
    Unsupported,
    /// The flag values are invalid.
    InvalidOptions,
    /// Anything else.
    Failed,
}

/// The handshake's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeResult {
    /// The plugin's protocol version; MUST equal the host's.
    pub version: u32,
    /// The driver's name and capabilities.
    pub info: DriverInfo,
}

/// The result of `flags`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagsResult {
    /// Every `create` flag of the driver.
    pub flags: Vec<Flag>,
}

/// One `create` flag of a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Flag {
    /// Long name without dashes; MUST start with `DRIVERNAME-`.
    pub name: String,
    /// One line of help.
    pub help: String,
    /// Whether it takes a value or is a switch.
    pub kind: FlagKind,
    /// Shown as the default in help (the plugin applies its defaults itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// A flag's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FlagKind {
    /// `--NAME VALUE`, sent as a JSON string.
    String,
    /// `--NAME`, sent as `true`.
    Bool,
}

/// What a plugin program provides to [`serve`].
pub trait Plugin {
    /// The driver behind the plugin.
    type Driver: Driver;

    /// The plugin's `create` flags.
    fn flags(&self) -> Vec<Flag>;

    /// The driver configured with the flag values given at create.
    fn driver(&self, options: &Options) -> Result<Self::Driver, DriverError>;

    /// Name and capabilities (reported in the handshake).
    fn info(&self) -> DriverInfo;
}

fn error_reply(err: &DriverError) -> ErrorReply {
    let kind = match err {
        DriverError::Unsupported { .. } => ErrorKind::Unsupported,
        DriverError::InvalidOptions { .. } => ErrorKind::InvalidOptions,
        _ => ErrorKind::Failed,
    };
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    ErrorReply { kind, message }
}

fn to_value<T: Serialize>(value: &T) -> Result<serde_json::Value, ErrorReply> {
    serde_json::to_value(value).map_err(|e| ErrorReply {
        kind: ErrorKind::Failed,
        message: format!("cannot encode the result: {e}"),
    })
}

async fn dispatch<P: Plugin>(plugin: &P, call: Call) -> Result<serde_json::Value, ErrorReply> {
    let driver = |options: &Options| plugin.driver(options).map_err(|e| error_reply(&e));
    let done = |r: Result<(), DriverError>| {
        r.map(|()| serde_json::Value::Null)
            .map_err(|e| error_reply(&e))
    };
    match call {
        Call::Handshake { .. } => Err(ErrorReply {
            kind: ErrorKind::BadRequest,
            message: "handshake already done".to_string(),
        }),
        Call::Flags {} => to_value(&FlagsResult {
            flags: plugin.flags(),
        }),
        Call::Precheck { options, spec } => done(driver(&options)?.precheck(&spec).await),
        Call::Create {
            options,
            machine,
            spec,
        } => done(driver(&options)?.create(&machine.into(), &spec).await),
        Call::Start {
            options,
            machine,
            spec,
        } => done(driver(&options)?.start(&machine.into(), &spec).await),
        Call::Stop {
            options,
            machine,
            mode,
        } => done(driver(&options)?.stop(&machine.into(), mode.into()).await),
        Call::Remove { options, machine } => done(driver(&options)?.remove(&machine.into()).await),
        Call::State { options, machine } => match driver(&options)?.state(&machine.into()).await {
            Ok(state) => to_value(&state),
            Err(e) => Err(error_reply(&e)),
        },
        Call::Endpoints { options, machine } => {
            match driver(&options)?.endpoints(&machine.into()).await {
                Ok(endpoints) => to_value::<Endpoints>(&endpoints),
                Err(e) => Err(error_reply(&e)),
            }
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(output: &mut W, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    output.write_all(&line).await?;
    output.flush().await
}

/// Serves the protocol for `plugin` until `input` ends: answers the handshake, then one reply
/// per request line. A line that is not a request gets a `badRequest` reply (id 0 when its id
/// cannot be read); a handshake with another version gets `unsupportedVersion` and ends the
/// session.
pub async fn serve<P, R, W>(plugin: &P, input: R, mut output: W) -> std::io::Result<()>
where
    P: Plugin,
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut lines = input.lines();
    let mut shaken = false;
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let request: Request = match serde_json::from_str(&line) {
            Ok(request) => request,
            Err(e) => {
                let id = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64))
                    .unwrap_or(0);
                let error = ErrorReply {
                    kind: ErrorKind::BadRequest,
                    message: format!("not a request of driver protocol {PROTOCOL_VERSION}: {e}"),
                };
                send(
                    &mut output,
                    &Reply {
                        id,
                        result: None,
                        error: Some(error),
                    },
                )
                .await?;
                continue;
            }
        };
        let outcome = match (shaken, request.call) {
            (false, Call::Handshake { version }) if version == PROTOCOL_VERSION => {
                shaken = true;
                to_value(&HandshakeResult {
                    version: PROTOCOL_VERSION,
                    info: plugin.info(),
                })
            }
            (false, Call::Handshake { version }) => {
                let error = ErrorReply {
                    kind: ErrorKind::UnsupportedVersion,
                    message: format!(
                        "driver protocol version {version} is not supported: this plugin speaks {PROTOCOL_VERSION}"
                    ),
                };
                return send(
                    &mut output,
                    &Reply {
                        id: request.id,
                        result: None,
                        error: Some(error),
                    },
                )
                .await;
            }
            (false, call) => Err(ErrorReply {
                kind: ErrorKind::BadRequest,
                message: format!("{} before the handshake", call.method()),
            }),
            (true, call) => dispatch(plugin, call).await,
        };
        let reply = match outcome {
            Ok(result) => Reply {
                id: request.id,
                result: Some(result),
                error: None,
            },
            Err(error) => Reply {
                id: request.id,
                result: None,
                error: Some(error),
            },
        };
        send(&mut output, &reply).await?;
    }
    Ok(())
}

/// Runs [`serve`] on the process's stdin and stdout (the body of a plugin's `main`).
pub async fn serve_stdio<P: Plugin>(plugin: &P) -> std::io::Result<()> {
    let input = tokio::io::BufReader::new(tokio::io::stdin());
    serve(plugin, input, tokio::io::stdout()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Capabilities, VmState};

    /// A driver that only answers `state`, enough to drive the server.
    struct Stopped;

    impl Driver for Stopped {
        fn info(&self) -> DriverInfo {
            DriverInfo {
                name: "test".to_string(),
                capabilities: Capabilities::default(),
            }
        }
        async fn precheck(&self, _: &VmSpec) -> Result<(), DriverError> {
            Ok(())
        }
        async fn create(&self, _: &MachineDir, _: &VmSpec) -> Result<(), DriverError> {
            Ok(())
        }
        async fn start(&self, _: &MachineDir, _: &VmSpec) -> Result<(), DriverError> {
            Err(DriverError::Unsupported {
                driver: "test".to_string(),
                op: "start".to_string(),
            })
        }
        async fn stop(&self, _: &MachineDir, _: StopMode) -> Result<(), DriverError> {
            Ok(())
        }
        async fn remove(&self, _: &MachineDir) -> Result<(), DriverError> {
            Ok(())
        }
        async fn state(&self, _: &MachineDir) -> Result<VmState, DriverError> {
            Ok(VmState::Stopped)
        }
        async fn endpoints(&self, dir: &MachineDir) -> Result<Endpoints, DriverError> {
            Err(DriverError::WrongState {
                machine: dir.name.clone(),
                state: VmState::Stopped,
                op: "endpoints",
                wanted: "running",
            })
        }
    }

    struct TestPlugin;

    impl Plugin for TestPlugin {
        type Driver = Stopped;
        fn flags(&self) -> Vec<Flag> {
            vec![Flag {
                name: "test-zone".to_string(),
                help: "zone".to_string(),
                kind: FlagKind::String,
                default: None,
            }]
        }
        fn driver(&self, options: &Options) -> Result<Stopped, DriverError> {
            match options.get("test-zone") {
                Some(serde_json::Value::String(z)) if z == "nowhere" => {
                    Err(DriverError::InvalidOptions {
                        driver: "test".to_string(),
                        problems: vec!["no zone nowhere".to_string()],
                    })
                }
                _ => Ok(Stopped),
            }
        }
        fn info(&self) -> DriverInfo {
            Stopped.info()
        }
    }

    async fn session(input: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        serve(&TestPlugin, input.as_bytes(), &mut out)
            .await
            .expect("serve");
        String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("reply is JSON"))
            .collect()
    }

    #[tokio::test]
    async fn a_session_answers_each_request_by_id() {
        let machine = r#""machine":{"name":"m","path":"/s/machines/m"}"#;
        let input = format!(
            "{}\n{}\n{}\n{}\n{}\n",
            r#"{"id":1,"method":"handshake","params":{"version":1}}"#,
            r#"{"id":2,"method":"flags","params":{}}"#,
            format_args!(r#"{{"id":3,"method":"state","params":{{"options":{{}},{machine}}}}}"#),
            format_args!(
                r#"{{"id":4,"method":"state","params":{{"options":{{"test-zone":"nowhere"}},{machine}}}}}"#
            ),
            format_args!(r#"{{"id":5,"method":"remove","params":{{"options":{{}},{machine}}}}}"#),
        );
        let replies = session(&input).await;
        assert_eq!(
            replies[0],
            serde_json::json!({"id":1,"result":{"version":1,"info":{"name":"test",
                "capabilities":{"gracefulStop":false,"pause":false,"consoleLog":false,"shares":false}}}})
        );
        assert_eq!(
            replies[1],
            serde_json::json!({"id":2,"result":{"flags":[{"name":"test-zone","help":"zone","kind":"string"}]}})
        );
        assert_eq!(replies[2], serde_json::json!({"id":3,"result":"Stopped"}));
        assert_eq!(
            replies[3],
            serde_json::json!({"id":4,"error":{"kind":"invalidOptions",
                "message":"invalid test options: no zone nowhere"}})
        );
        assert_eq!(replies[4], serde_json::json!({"id":5,"result":null}));
    }

    #[tokio::test]
    async fn another_version_ends_the_session() {
        let replies = session(
            "{\"id\":7,\"method\":\"handshake\",\"params\":{\"version\":2}}\n\
             {\"id\":8,\"method\":\"flags\",\"params\":{}}\n",
        )
        .await;
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert_eq!(replies[0]["id"], 7);
        assert_eq!(replies[0]["error"]["kind"], "unsupportedVersion");
    }

    #[tokio::test]
    async fn garbage_and_early_requests_get_bad_request() {
        let replies = session(
            "hello\n\
             {\"id\":3,\"method\":\"flags\",\"params\":{}}\n\
             {\"id\":4,\"method\":\"frobnicate\",\"params\":{}}\n",
        )
        .await;
        let kinds: Vec<_> = replies
            .iter()
            .map(|r| (r["id"].clone(), r["error"]["kind"].clone()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (0.into(), "badRequest".into()),
                (3.into(), "badRequest".into()),
                (4.into(), "badRequest".into())
            ]
        );
        assert_eq!(replies[1]["error"]["message"], "flags before the handshake");
    }
}
