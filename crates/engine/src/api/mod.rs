//! The Docker Engine API over HTTP/1.1 (hyper 1, with upgrades for hijacked streams).
//!
//! A request flows: [`server`] accepts a connection (unix socket or mutual TLS) → [`Api::handle`]
//! strips the optional `/v1.NN` prefix and routes by method and path → the route parses its
//! query and body into typed arguments and calls [`Engine`] → the result becomes JSON, a
//! stream ([`stream`]) or an error whose status code comes from [`error::status_of`].

mod archive;
mod build;
mod detach;
pub mod error;
mod exec;
pub mod gojson;
mod images;
pub mod networks;
pub mod query;
mod registry;
pub mod server;
pub mod stream;
pub mod types;
mod unsupported;
mod volumes;

use std::convert::Infallible;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, PRAGMA, SERVER, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};

use crate::core::{CreateRequest, Engine, ListOptions, WaitCondition};
use error::{message_of, status_of, ApiError};
use query::Query;
use stream::ChannelBody;
use types::{API_VERSION, MIN_API_VERSION, VERSION};

/// The body type of every response.
pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

type ApiResult = Result<Response<ResponseBody>, ApiError>;

/// The request handler shared by all connections.
#[derive(Debug, Clone)]
pub struct Api {
    engine: Engine,
}

fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut resp = Response::new(Full::new(body.into()).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> ApiResult {
    let mut body = serde_json::to_vec(value)
        .map_err(|e| ApiError::BadRequest(format!("cannot encode response: {e}")))?;
    body.push(b'\n');
    Ok(full(status, "application/json", body))
}

fn empty(status: StatusCode) -> ApiResult {
    let mut resp = Response::new(Empty::new().boxed_unsync());
    *resp.status_mut() = status;
    Ok(resp)
}

fn streaming(content_type: &'static str, body: ChannelBody) -> Response<ResponseBody> {
    let mut resp = Response::new(body.boxed_unsync());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Splits `/v1.45/containers/json` into the version check and the bare path.
fn strip_version(path: &str) -> Result<&str, ApiError> {
    let Some(rest) = path.strip_prefix("/v") else {
        return Ok(path);
    };
    let (version, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Some((major, minor)) = version.split_once('.') else {
        return Ok(path);
    };
    let (Ok(major), Ok(minor)) = (major.parse::<u32>(), minor.parse::<u32>()) else {
        return Ok(path);
    };
    let parse = |v: &str| {
        v.split_once('.')
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
            .unwrap_or((1, 0))
    };
    if (major, minor) > parse(API_VERSION) {
        return Err(ApiError::BadRequest(format!(
            "client version {version} is too new. Maximum supported API version is {API_VERSION}"
        )));
    }
    if (major, minor) < parse(MIN_API_VERSION) {
        return Err(ApiError::BadRequest(format!(
            "client version {version} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
        )));
    }
    Ok(tail)
}

impl Api {
    /// A handler for `engine`.
    pub fn new(engine: Engine) -> Api {
        Api { engine }
    }

    /// Answers one request; never fails (errors become `{"message": ...}` responses).
    pub async fn handle(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let method = req.method().clone();
        let uri = req.uri().clone();
        let mut resp = match self.route(req).await {
            Ok(resp) => resp,
            Err(err) => {
                let status = status_of(&err);
                let message = message_of(&err);
                if status.is_server_error() {
                    warn!(%method, %uri, %status, error = %message, "request failed");
                } else {
                    debug!(%method, %uri, %status, error = %message, "request refused");
                }
                if status == StatusCode::NOT_MODIFIED {
                    // 304 has no body.
                    let mut resp = Response::new(Empty::new().boxed_unsync());
                    *resp.status_mut() = status;
                    resp
                } else {
                    let body = serde_json::json!({ "message": message });
                    let mut bytes = body.to_string().into_bytes();
                    bytes.push(b'\n');
                    full(status, "application/json", bytes)
                }
            }
        };
        debug!(%method, %uri, status = %resp.status(), "request");
        let headers = resp.headers_mut();
        if let Ok(server) = HeaderValue::from_str(&format!("Docker/{VERSION} (linux)")) {
            headers.insert(SERVER, server);
        }
        headers.insert("Api-Version", HeaderValue::from_static(API_VERSION));
        headers.insert("Docker-Experimental", HeaderValue::from_static("false"));
        headers.insert("Ostype", HeaderValue::from_static("linux"));
        Ok(resp)
    }

    async fn route(&self, req: Request<Incoming>) -> ApiResult {
        let path = strip_version(req.uri().path())?.to_string();
        let query = Query::parse(req.uri().query());
        let method = req.method().clone();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        if segments.first() == Some(&"networks") {
            return self.network_route(&method, &segments, &query, req).await;
        }
        match (&method, segments.as_slice()) {
            (&Method::GET | &Method::HEAD, ["_ping"]) => Ok(ping(method == Method::HEAD)),
            (&Method::GET, ["version"]) => json(StatusCode::OK, &types::version()),
            (&Method::GET, ["info"]) => {
                let images = self.engine.image_count().await;
                let info = types::info(
                    self.engine.config(),
                    self.engine.engine_id(),
                    self.engine.counts(),
                    images,
                );
                json(StatusCode::OK, &info)
            }
            (&Method::GET, ["events"]) => self.events(&query),
            (&Method::POST, ["images", "load"]) => self.load_images(req).await,
            (&Method::POST, ["images", "create"]) if query.get("fromSrc").is_none() => {
                self.pull_image(&req, &query).await
            }
            (&Method::POST, ["auth"]) => self.login(req).await,
            (&Method::GET, ["images", "search"]) => self.search_images(&req, &query).await,
            (&Method::POST, ["images", .., "push"]) if segments.len() > 2 => {
                let name = segments[1..segments.len() - 1].join("/");
                self.push_image(&req, &name, &query).await
            }
            (&Method::POST, ["build"]) => self.build(req).await,
            (&Method::POST, ["build", "prune"]) => self.build_prune(&query).await,
            (&Method::GET, ["images", "json"]) => json(
                StatusCode::OK,
                &self.engine.list_images(query.bool("all")).await?,
            ),
            (&Method::GET, ["images", .., "json"]) if segments.len() > 2 => {
                let name = segments[1..segments.len() - 1].join("/");
                json(StatusCode::OK, &self.engine.inspect_image(&name).await?)
            }
            (&Method::POST, ["images", "create"]) if query.get("fromSrc").is_some() => {
                self.import_image(req, &query).await
            }
            (&Method::POST, ["images", "prune"]) => self.prune_images(&query).await,
            (&Method::GET, ["images", "get"]) => self.save_images(query.all("names")).await,
            (&Method::GET, ["images", .., "get"]) if segments.len() > 2 => {
                let name = segments[1..segments.len() - 1].join("/");
                self.save_images(vec![name]).await
            }
            (&Method::GET, ["images", .., "history"]) if segments.len() > 2 => {
                let name = segments[1..segments.len() - 1].join("/");
                self.image_history(&name).await
            }
            (&Method::POST, ["images", .., "tag"]) if segments.len() > 2 => {
                let name = segments[1..segments.len() - 1].join("/");
                self.tag_image(&name, &query).await
            }
            (&Method::POST, ["commit"]) => self.commit(req, &query).await,
            (&Method::GET, ["system", "df"]) => self.system_df().await,
            (&Method::DELETE, ["images", ..]) if segments.len() > 1 => {
                let name = segments[1..].join("/");
                let items = self.engine.remove_image(&name, query.bool("force")).await?;
                json(StatusCode::OK, &items)
            }
            (&Method::POST, ["containers", "create"]) => self.create(req, &query).await,
            (&Method::GET, ["containers", "json"]) => self.list_containers(&query),
            (&Method::POST, ["containers", "prune"]) => {
                let filters = parse_filters(query.get("filters"))?;
                let filters = crate::core::PruneFilters::parse(&filters)?;
                let report = self.engine.prune(&filters).await?;
                json(
                    StatusCode::OK,
                    &serde_json::json!({
                        // dockerd appends to a nil slice: null when nothing was removed.
                        "ContainersDeleted": (!report.deleted.is_empty()).then_some(report.deleted),
                        "SpaceReclaimed": report.space_reclaimed,
                    }),
                )
            }
            (&Method::GET, ["containers", id, "json"]) => {
                let c = self.engine.container(id)?;
                let mut inspect = types::container_inspect(&c.record(), &c.dir);
                networks::show_network(
                    &mut inspect,
                    &c.record(),
                    self.engine.endpoint(&c.id).as_ref(),
                    &self.engine.attachments(&c.record()),
                );
                if self.engine.is_paused(&c.id) {
                    types::show_paused(&mut inspect);
                }
                if self.engine.is_restarting(&c.id) {
                    types::show_restarting(&mut inspect);
                }
                if let Some(lower) = self.engine.lower_dir(&c.record()) {
                    types::show_lower_dir(&mut inspect, lower);
                }
                if query.bool("size") {
                    types::show_sizes(&mut inspect, self.engine.container_sizes(&c.record()));
                }
                json(StatusCode::OK, &inspect)
            }
            (&Method::POST, ["containers", id, "start"]) => {
                self.engine.start_by_user(id).await?;
                empty(StatusCode::NO_CONTENT)
            }
            (&Method::POST, ["containers", id, "stop"]) => {
                let timeout = query.int("t").map_err(ApiError::BadRequest)?;
                self.engine
                    .stop_by_user(id, timeout, query.get("signal"))
                    .await?;
                empty(StatusCode::NO_CONTENT)
            }
            (&Method::POST, ["containers", id, "restart"]) => {
                let timeout = query.int("t").map_err(ApiError::BadRequest)?;
                self.engine.restart_by_user(id, timeout).await?;
                empty(StatusCode::NO_CONTENT)
            }
            (&Method::POST, ["containers", id, "kill"]) => self
                .kill(id, &query)
                .await
                // As moby's postContainersKill (container_routes.go) wraps every failure.
                .map_err(|err| err.context(format!("cannot kill container: {id}"))),
            (&Method::POST, ["containers", id, "wait"]) => self.wait(id, &query),
            (&Method::POST, ["containers", id, "attach"]) => {
                let id = id.to_string();
                self.attach(req, &id, &query)
            }
            (&Method::POST, ["containers", id, "resize"]) => {
                let h = query.int("h").map_err(ApiError::BadRequest)?.unwrap_or(0);
                let w = query.int("w").map_err(ApiError::BadRequest)?.unwrap_or(0);
                let dim = |v: i64| {
                    u16::try_from(v).map_err(|_| ApiError::BadRequest(format!("invalid size: {v}")))
                };
                self.engine.resize(id, dim(h)?, dim(w)?)?;
                empty(StatusCode::OK)
            }
            (&Method::POST, ["containers", id, "rename"]) => {
                let name = query.get("name").unwrap_or("");
                self.engine.rename(id, name).await?;
                empty(StatusCode::NO_CONTENT)
            }
            (&Method::GET, ["containers", id, "logs"]) => self.logs(id, &query),
            (&Method::DELETE, ["containers", id]) => {
                self.engine
                    .remove_with_volumes(id, query.bool("force"), query.bool("v"))
                    .await?;
                empty(StatusCode::NO_CONTENT)
            }
            (&Method::HEAD, ["containers", id, "archive"]) => self.archive_head(id, &query).await,
            (&Method::GET, ["containers", id, "archive"]) => self.archive_get(id, &query).await,
            (&Method::PUT, ["containers", id, "archive"]) => {
                let id = id.to_string();
                self.archive_put(req, &id, &query).await
            }
            (&Method::GET, ["containers", id, "export"]) => self.export(id).await,
            (&Method::GET, ["containers", id, "changes"]) => self.changes(id).await,
            _ => self.route_ext(req, &method, &segments, &query).await,
        }
    }

    async fn create(&self, req: Request<Incoming>, query: &Query) -> ApiResult {
        let body = req
            .into_body()
            .collect()
            .await
            .map_err(|e| ApiError::BadRequest(format!("cannot read request body: {e}")))?
            .to_bytes();
        let parsed =
            types::CreateBody::decode(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let name = query
            .get("name")
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        let created = self
            .engine
            .create(CreateRequest {
                name,
                config: parsed.config,
                host_config: parsed.host_config,
                networking_config: parsed.networking_config,
            })
            .await?;
        let response = types::CreateResponse {
            id: created.id,
            warnings: created.warnings,
        };
        json(StatusCode::CREATED, &response)
    }

    fn list_containers(&self, query: &Query) -> ApiResult {
        let filters = parse_filters(query.get("filters"))?;
        let limit = query.int("limit").map_err(ApiError::BadRequest)?;
        let options = ListOptions::new(query.bool("all"), limit, filters)?;
        let now = chrono::Utc::now();
        let mut out = Vec::new();
        for listed in self.engine.list_containers(&options)? {
            let record = &listed.record;
            let mut summary = types::container_summary(record, now);
            networks::show_network_summary(
                &mut summary,
                record,
                self.engine.endpoint(&record.id).as_ref(),
                &self.engine.attachments(record),
            );
            if self.engine.is_paused(&record.id) {
                types::show_paused(&mut summary);
            }
            if self.engine.is_restarting(&record.id) {
                types::show_restarting(&mut summary);
            }
            // Judged on what the listing reports, so the filters agree with the output.
            if !crate::core::lookup::summary_matches(&summary, options.filters()) {
                continue;
            }
            if query.bool("size") {
                types::show_sizes(&mut summary, self.engine.container_sizes(record));
            }
            out.push(summary);
        }
        json(StatusCode::OK, &out)
    }

    async fn kill(&self, id: &str, query: &Query) -> ApiResult {
        self.engine.kill_by_user(id, query.get("signal")).await?;
        empty(StatusCode::NO_CONTENT)
    }

    fn wait(&self, id: &str, query: &Query) -> ApiResult {
        let condition = match query.get("condition").unwrap_or("") {
            "" | "not-running" => WaitCondition::NotRunning,
            "next-exit" => WaitCondition::NextExit,
            "removed" => WaitCondition::Removed,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "invalid condition: \"{other}\""
                )))
            }
        };
        let done = self.engine.wait(id, condition)?;
        // The CLI waits for the headers before it starts the container: send them now and
        // the result when it is known.
        let (tx, body) = ChannelBody::new();
        tokio::spawn(async move {
            tokio::select! {
                code = done => {
                    let response = types::WaitResponse { status_code: code, error: None };
                    if let Ok(mut bytes) = serde_json::to_vec(&response) {
                        bytes.push(b'\n');
                        let _ = tx.send(Bytes::from(bytes)).await;
                    }
                }
                () = tx.closed() => {}
            }
        });
        Ok(streaming("application/json", body))
    }

    fn attach(&self, mut req: Request<Incoming>, id: &str, query: &Query) -> ApiResult {
        let stream = query.bool("stream");
        let logs = query.bool("logs");
        let detach_keys = detach::keys(query.get("detachKeys")).map_err(ApiError::BadRequest)?;
        let (stdout, stderr) = (query.bool("stdout"), query.bool("stderr"));
        let session = self
            .engine
            .attach(id, query.bool("stdin"), stdout, stderr)?;
        if !stream && !logs {
            return empty(StatusCode::OK);
        }
        let content_type = if session.tty {
            "application/vnd.docker.raw-stream"
        } else {
            "application/vnd.docker.multiplexed-stream"
        };
        // As dockerd: subscribed before the log is read, so nothing falls between the two.
        let source = logs.then(|| self.engine.log_source(id)).transpose()?;
        let session = stream.then_some(session);
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            // The log is read once the 101 is written, as dockerd does: nothing of it may
            // share a read with the response headers.
            let upgraded = match upgrade.await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    debug!(error = %err, "attach upgrade failed");
                    return;
                }
            };
            let replay = match source {
                Some(source) => stream::log_replay(source, stdout, stderr).await,
                None => Vec::new(),
            };
            stream::serve_attach_after_replay(upgraded, session, detach_keys, replay).await
        });
        let mut resp = Response::new(Empty::new().boxed_unsync());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(b"UPGRADED"));
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("tcp"));
        Ok(resp)
    }

    fn logs(&self, id: &str, query: &Query) -> ApiResult {
        let tail = stream::parse_tail(query.get("tail"));
        let options = stream::LogOptions {
            stdout: query.bool("stdout"),
            stderr: query.bool("stderr"),
            follow: query.bool("follow"),
            timestamps: query.bool("timestamps"),
            details: query.bool("details"),
            tail,
            since: stream::parse_time(query.get("since")).map_err(ApiError::BadRequest)?,
            until: stream::parse_time(query.get("until")).map_err(ApiError::BadRequest)?,
        };
        if !options.stdout && !options.stderr {
            return Err(ApiError::BadRequest(
                "Bad parameters: you must choose at least one stream".into(),
            ));
        }
        let source = self.engine.log_source(id)?;
        let content_type = if source.tty {
            "application/vnd.docker.raw-stream"
        } else {
            "application/vnd.docker.multiplexed-stream"
        };
        let (tx, body) = ChannelBody::new();
        tokio::spawn(stream::stream_logs(source, options, tx));
        Ok(streaming(content_type, body))
    }

    fn events(&self, query: &Query) -> ApiResult {
        // `--since 0` replays everything kept: unlike for logs, a given 0 is not "no since".
        let since = match query.get("since").filter(|v| !v.is_empty()) {
            Some(value) => Some(
                stream::parse_time(Some(value))
                    .map_err(ApiError::BadRequest)?
                    .unwrap_or(chrono::DateTime::UNIX_EPOCH),
            ),
            None => None,
        };
        let until = stream::parse_time(query.get("until")).map_err(ApiError::BadRequest)?;
        let filters = parse_filters(query.get("filters"))?;
        // moby's loadBufferedEvents: an `until` alone also replays what is kept before it.
        let replay_from = since.or(until.map(|_| chrono::DateTime::UNIX_EPOCH));
        let (past, mut live) = self.engine.events().subscribe(replay_from);
        let (tx, body) = ChannelBody::new();
        tokio::spawn(async move {
            let encode = |event: &crate::events::Event| {
                crate::events::to_json_line(event).ok().map(Bytes::from)
            };
            let before_until = |event: &crate::events::Event| until.is_none_or(|u| event.at() <= u);
            for event in past.iter().filter(|e| before_until(e)) {
                if crate::events::matches(event, &filters) {
                    if let Some(line) = encode(event) {
                        if tx.send(line).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let deadline = async {
                match until {
                    Some(until) => {
                        let left = (until - chrono::Utc::now()).to_std().unwrap_or_default();
                        tokio::time::sleep(left).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    event = live.recv() => match event {
                        Ok(event) => {
                            if !crate::events::matches(&event, &filters) {
                                continue;
                            }
                            if let Some(line) = encode(&event) {
                                if tx.send(line).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    () = &mut deadline => return,
                    () = tx.closed() => return,
                }
            }
        });
        Ok(streaming("application/json", body))
    }

    async fn load_images(&self, req: Request<Incoming>) -> ApiResult {
        let tmp_dir = self.engine.config().data_root.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir)
            .await
            .map_err(|source| {
                ApiError::Engine(crate::core::EngineError::Io {
                    path: tmp_dir.clone(),
                    source,
                })
            })?;
        let path = tmp_dir.join(format!(
            "load-{}.tar",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        if let Err(err) = spool(req.into_body(), &path).await {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(err);
        }
        let (tx, body) = ChannelBody::new();
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            let load = engine.load_images(path.clone(), progress_tx);
            tokio::pin!(load);
            let result = loop {
                tokio::select! {
                    Some(line) = progress_rx.recv() => {
                        let _ = tx.send(stream::progress_stream(&line)).await;
                    }
                    result = &mut load => break result,
                }
            };
            while let Ok(line) = progress_rx.try_recv() {
                let _ = tx.send(stream::progress_stream(&line)).await;
            }
            if let Err(err) = result {
                let message = message_of(&ApiError::Engine(err));
                warn!(error = %message, "image load failed");
                let _ = tx.send(stream::progress_error(&message)).await;
            }
            let _ = tokio::fs::remove_file(&path).await;
        });
        Ok(streaming("application/json", body))
    }
}

/// Writes a request body to a file.
async fn spool(mut body: Incoming, path: &PathBuf) -> Result<(), ApiError> {
    let io = |source| {
        ApiError::Engine(crate::core::EngineError::Io {
            path: path.clone(),
            source,
        })
    };
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::BadRequest(format!("cannot read request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            file.write_all(&data).await.map_err(io)?;
        }
    }
    file.flush().await.map_err(io)?;
    Ok(())
}

fn ping(head: bool) -> Response<ResponseBody> {
    let mut resp = full(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        if head {
            Bytes::new()
        } else {
            Bytes::from_static(b"OK")
        },
    );
    let headers = resp.headers_mut();
    headers.insert("Builder-Version", HeaderValue::from_static("1"));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// Docker's `filters` JSON: `{"status":["exited"]}`, or the older `{"status":{"exited":true}}`.
fn parse_filters(
    raw: Option<&str>,
) -> Result<std::collections::BTreeMap<String, Vec<String>>, ApiError> {
    let mut out = std::collections::BTreeMap::new();
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(out);
    };
    let value: serde_json::Value = serde_json::from_str(raw)
        .map_err(|e| ApiError::BadRequest(format!("invalid filter: {e}")))?;
    let Some(map) = value.as_object() else {
        return Err(ApiError::BadRequest("invalid filter: not an object".into()));
    };
    for (key, values) in map {
        let list: Vec<String> = match values {
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            serde_json::Value::Object(o) => o
                .iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k.clone())
                .collect(),
            _ => return Err(ApiError::BadRequest(format!("invalid filter {key}"))),
        };
        out.insert(key.clone(), list);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prefixes_are_stripped_and_checked() {
        assert_eq!(
            strip_version("/v1.45/containers/json").unwrap(),
            "/containers/json"
        );
        assert_eq!(strip_version("/v1.24/_ping").unwrap(), "/_ping");
        assert_eq!(
            strip_version("/containers/json").unwrap(),
            "/containers/json"
        );
        assert!(strip_version("/v1.99/info").is_err());
        assert!(strip_version("/v1.12/info").is_err());
        assert_eq!(strip_version("/volumes").unwrap(), "/volumes");
    }

    #[test]
    fn filters_accept_both_encodings() {
        let new = parse_filters(Some(r#"{"status":["exited"]}"#)).unwrap();
        let old = parse_filters(Some(r#"{"status":{"exited":true}}"#)).unwrap();
        assert_eq!(new, old);
        assert_eq!(new["status"], vec!["exited".to_string()]);
    }
}
