//! Routes for a container's files: `archive` (docker cp), `export` and `changes` (docker diff).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::query::Query;
use super::stream::ChannelBody;
use super::{json, streaming, Api, ApiResult};
use crate::container::archive::{ExtractOptions, PathStat};

/// The header carrying a path's stat.
const STAT_HEADER: &str = "X-Docker-Container-Path-Stat";

fn with_stat(mut resp: Response<super::ResponseBody>, stat: &PathStat) -> ApiResult {
    let value = HeaderValue::from_str(&stat.header_value())
        .map_err(|e| ApiError::BadRequest(format!("cannot encode path stat: {e}")))?;
    resp.headers_mut().insert(STAT_HEADER, value);
    Ok(resp)
}

/// A body fed from a receiver of chunks.
fn body_from(mut rx: mpsc::Receiver<Bytes>) -> ChannelBody {
    let (tx, body) = ChannelBody::new();
    tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    body
}

/// How much of a refused upload is read before the connection is dropped instead.
pub(super) const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Reads and discards a request body, up to `limit` bytes: a client still writing its body
/// when the answer comes and the connection closes gets a broken pipe instead of the answer.
pub(super) async fn drain(mut body: Incoming, limit: usize) {
    let mut read = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            read = read.saturating_add(data.len());
            if read > limit {
                return;
            }
        }
    }
}

fn path_param(query: &Query) -> Result<String, ApiError> {
    match query.get("path") {
        Some(p) if !p.is_empty() => Ok(p.to_string()),
        _ => Err(ApiError::BadRequest("path cannot be empty".into())),
    }
}

impl Api {
    /// `HEAD /containers/{id}/archive`.
    pub(super) async fn archive_head(&self, id: &str, query: &Query) -> ApiResult {
        let path = path_param(query)?;
        let stat = self.engine.archive_stat(id, &path).await?;
        let mut resp = Response::new(Empty::new().boxed_unsync());
        *resp.status_mut() = StatusCode::OK;
        with_stat(resp, &stat)
    }

    /// `GET /containers/{id}/archive`.
    pub(super) async fn archive_get(&self, id: &str, query: &Query) -> ApiResult {
        let path = path_param(query)?;
        let (stat, rx) = self.engine.archive_get(id, &path).await?;
        with_stat(streaming("application/x-tar", body_from(rx)), &stat)
    }

    /// `PUT /containers/{id}/archive`.
    pub(super) async fn archive_put(
        &self,
        req: Request<Incoming>,
        id: &str,
        query: &Query,
    ) -> ApiResult {
        let path = path_param(query)?;
        // Resolve first: an unknown container answers 404 without spooling the upload. The
        // upload is still read (up to a bound), as Go's server does after a handler: the CLI
        // only reads the answer once it has sent its archive, and would otherwise report
        // a broken pipe instead of "No such container".
        if let Err(err) = self.engine.container(id) {
            drain(req.into_body(), DRAIN_LIMIT).await;
            return Err(err.into());
        }
        let tmp_dir = self.engine.config().data_root.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir)
            .await
            .map_err(|source| {
                ApiError::Engine(crate::core::EngineError::Io {
                    path: tmp_dir.clone(),
                    source,
                })
            })?;
        let spooled = tmp_dir.join(format!("cp-{}.tar", hex::encode(rand::random::<[u8; 8]>())));
        if let Err(err) = super::spool(req.into_body(), &spooled).await {
            let _ = tokio::fs::remove_file(&spooled).await;
            return Err(err);
        }
        let options = ExtractOptions {
            no_overwrite_dir_non_dir: query.bool("noOverwriteDirNonDir"),
            copy_uid_gid: query.bool("copyUIDGID"),
            owner: None,
            read_only_root: false,
        };
        let result = self
            .engine
            .archive_put(id, &path, spooled.clone(), options)
            .await;
        let _ = tokio::fs::remove_file(&spooled).await;
        result?;
        super::empty(StatusCode::OK)
    }

    /// `GET /containers/{id}/export`.
    pub(super) async fn export(&self, id: &str) -> ApiResult {
        let rx = self.engine.export(id).await?;
        Ok(streaming("application/x-tar", body_from(rx)))
    }

    /// `GET /containers/{id}/changes`.
    pub(super) async fn changes(&self, id: &str) -> ApiResult {
        let changes = self.engine.changes(id).await?;
        json(StatusCode::OK, &changes)
    }
}
