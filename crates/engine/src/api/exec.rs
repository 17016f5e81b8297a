//! Routes for exec, pause/unpause, update, top and stats.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use tracing::debug;

use super::error::ApiError;
use super::query::Query;
use super::stream::{self, ChannelBody};
use super::{empty, json, streaming, Api, ApiResult, ResponseBody};
use crate::container::exec::ExecConfig;
use crate::container::stats;

/// `POST /containers/{id}/exec`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ExecCreateBody {
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    tty: bool,
    attach_stdin: bool,
    attach_stdout: bool,
    attach_stderr: bool,
    privileged: bool,
    detach_keys: Option<String>,
    console_size: Option<Vec<u16>>,
}

/// `POST /exec/{id}/start`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ExecStartBody {
    detach: bool,
    tty: bool,
    console_size: Option<Vec<u16>>,
}

fn size(v: Option<&Vec<u16>>) -> Option<(u16, u16)> {
    let v = v?;
    Some((*v.first()?, *v.get(1)?)).filter(|(h, w)| *h > 0 && *w > 0)
}

pub(super) async fn body_bytes(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    Ok(req
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::BadRequest(format!("cannot read request body: {e}")))?
        .to_bytes())
}

/// Decodes a body as dockerd does (case-insensitive names, Go's type errors); an empty body
/// is the default.
pub(super) fn parse<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    go_struct: &str,
) -> Result<T, ApiError> {
    super::gojson::from_slice(bytes, go_struct).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn dims(query: &Query) -> Result<(u16, u16), ApiError> {
    let h = query.int("h").map_err(ApiError::BadRequest)?.unwrap_or(0);
    let w = query.int("w").map_err(ApiError::BadRequest)?.unwrap_or(0);
    let dim =
        |v: i64| u16::try_from(v).map_err(|_| ApiError::BadRequest(format!("invalid size: {v}")));
    Ok((dim(h)?, dim(w)?))
}

impl Api {
    /// The routes of this module; for any other request, [`super::unsupported::answer`].
    pub(super) async fn route_ext(
        &self,
        req: Request<Incoming>,
        method: &Method,
        segments: &[&str],
        query: &Query,
    ) -> ApiResult {
        match (method, segments) {
            (&Method::POST, ["containers", id, "exec"]) => {
                let body: ExecCreateBody = parse(&body_bytes(req).await?, "ExecOptions")?;
                // As dockerd's ContainerExecCreate: the container first, then the keys, so a
                // bad sequence is refused before an exec exists rather than at its start.
                self.engine.container(id)?;
                if let Some(keys) = body.detach_keys.as_deref() {
                    super::detach::keys(Some(keys)).map_err(|_| {
                        ApiError::BadRequest(format!("Invalid escape keys ({keys}) provided"))
                    })?;
                }
                let config = ExecConfig {
                    cmd: body.cmd.unwrap_or_default(),
                    env: body.env.unwrap_or_default(),
                    working_dir: body.working_dir.unwrap_or_default(),
                    user: body.user.unwrap_or_default(),
                    tty: body.tty,
                    attach_stdin: body.attach_stdin,
                    attach_stdout: body.attach_stdout,
                    attach_stderr: body.attach_stderr,
                    privileged: body.privileged,
                    detach_keys: body.detach_keys.unwrap_or_default(),
                    console_size: size(body.console_size.as_ref()),
                };
                let exec_id = self.engine.exec_create(id, config)?;
                json(StatusCode::CREATED, &serde_json::json!({ "Id": exec_id }))
            }
            (&Method::POST, ["exec", id, "start"]) => {
                let id = id.to_string();
                let (parts, body) = req.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map_err(|e| ApiError::BadRequest(format!("cannot read request body: {e}")))?
                    .to_bytes();
                let start: ExecStartBody = parse(&bytes, "ExecStartOptions")?;
                // As dockerd: no console size without a TTY in the start request.
                let console_size = size(start.console_size.as_ref()).filter(|_| start.tty);
                // As dockerd's ExecExists: an unknown exec is a 404, before any hijack.
                let keys = self.engine.exec(&id)?.config.detach_keys.clone();
                if start.detach {
                    self.engine.exec_start(&id, true, console_size).await?;
                    return empty(StatusCode::OK);
                }
                let detach = super::detach::keys(Some(&keys)).map_err(ApiError::BadRequest)?;
                let req = Request::from_parts(parts, Empty::<Bytes>::new());
                let engine = self.engine.clone();
                // dockerd writes the 101 first and starts the process after: output must not
                // share a read with the response headers, or a client that hands the raw
                // socket on after the headers (docker-py) loses it.
                Ok(hijack(req, start.tty, move |upgraded| async move {
                    match engine.exec_start(&id, false, console_size).await {
                        Ok(Some(mut session)) => {
                            // Framing follows the start request's Tty, as dockerd's route.
                            session.tty = start.tty;
                            stream::serve_attach_with(upgraded, session, detach).await;
                        }
                        Ok(None) => {}
                        Err(err) => {
                            debug!(exec = %id, error = %err, "exec start failed after hijack");
                            stream::write_error(upgraded, &format!("{err}\r\n")).await;
                        }
                    }
                }))
            }
            (&Method::GET, ["exec", id, "json"]) => {
                json(StatusCode::OK, &self.engine.exec(id)?.inspect())
            }
            (&Method::POST, ["exec", id, "resize"]) => {
                let (h, w) = dims(query)?;
                self.engine.exec_resize(id, h, w)?;
                empty(StatusCode::OK)
            }
            (&Method::POST, ["containers", id, "pause"]) => {
                self.engine.pause(id).await?;
                empty(StatusCode::NO_CONTENT)
            }
            (&Method::POST, ["containers", id, "unpause"]) => {
                self.engine.unpause(id).await?;
                empty(StatusCode::NO_CONTENT)
            }
            (&Method::POST, ["containers", id, "update"]) => {
                let id = id.to_string();
                let body: crate::state::HostConfig =
                    parse(&body_bytes(req).await?, "UpdateConfig")?;
                let warnings = self.engine.update_resources(&id, body).await?;
                json(StatusCode::OK, &serde_json::json!({ "Warnings": warnings }))
            }
            (&Method::GET, ["containers", id, "top"]) => {
                let ps_args = query.get("ps_args").unwrap_or("");
                json(StatusCode::OK, &self.engine.top(id, ps_args)?)
            }
            (&Method::GET, ["containers", id, "stats"]) => self.stats(id, query),
            (_, ["volumes", ..]) => self.route_volumes(req, method, segments, query).await,
            _ => {
                // `docker volume create`, `network create`, `build`… send a body: read it, or
                // the CLI may see a broken pipe instead of the 501.
                super::archive::drain(req.into_body(), super::archive::DRAIN_LIMIT).await;
                Err(super::unsupported::answer(method, segments, query))
            }
        }
    }

    fn stats(&self, id: &str, query: &Query) -> ApiResult {
        let stream = query.bool_or("stream", true);
        let one_shot = query.bool("one-shot");
        let first = self.engine.stats_sample(id)?;
        let engine = self.engine.clone();
        let id = id.to_string();
        let (tx, body) = ChannelBody::new();
        tokio::spawn(async move {
            let encode = |v: &stats::StatsSample| {
                // Plain structs of numbers and strings: serializing them cannot fail.
                let mut line = serde_json::to_vec(v).unwrap_or_default();
                line.push(b'\n');
                Bytes::from(line)
            };
            let mut previous = first;
            if !stream && one_shot {
                let _ = tx.send(encode(&previous)).await;
                return;
            }
            loop {
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    () = tx.closed() => return,
                }
                let Ok(mut current) = engine.stats_sample(&id) else {
                    return;
                };
                stats::chain(&mut current, &previous);
                if tx.send(encode(&current)).await.is_err() || !stream {
                    return;
                }
                previous = current;
            }
        });
        Ok(streaming("application/json", body))
    }
}

/// A 101 response; once it is written, `serve` gets the connection (the body was already
/// read). `tty` picks the content type: raw, or multiplexed stdout/stderr.
fn hijack<F, Fut>(req: Request<Empty<Bytes>>, tty: bool, serve: F) -> Response<ResponseBody>
where
    F: FnOnce(Upgraded) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let content_type = if tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    };
    let mut req = req;
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => serve(upgraded).await,
            Err(err) => debug!(error = %err, "exec upgrade failed"),
        }
    });
    let mut resp = Response::new(Empty::new().boxed_unsync());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(b"UPGRADED"));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("tcp"));
    resp
}
