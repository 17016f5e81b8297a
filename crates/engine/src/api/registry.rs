//! Registry routes: `POST /images/create?fromImage=` (pull) and `POST /auth` (login).

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use tracing::warn;

use super::error::{message_of, ApiError};
use super::query::Query;
use super::stream::{self, ChannelBody};
use super::{json, streaming, Api, ApiResult};
use crate::image::reference::Reference;
use crate::image::registry::auth::AuthConfig;
use crate::image::registry::pull::{Platform, PullOptions};
use crate::image::registry::push::PushOptions;
use crate::image::registry::search::SearchFilters;
use crate::image::registry::{Progress, RegistryError};

/// moby's `postImagesCreate` reading of `fromImage` and `tag`: `tag` may be a tag or a digest;
/// a name with neither (and no `tag`) means every tag (`pull -a`).
fn pull_reference(from_image: &str, tag: Option<&str>) -> Result<(Reference, bool), ApiError> {
    let mut reference =
        Reference::parse_normalized(from_image).map_err(|e| ApiError::BadRequest(e.reason))?;
    if let Some(tag) = tag.filter(|t| !t.is_empty()) {
        if tag.starts_with("sha256:") {
            let full = format!("{}@{tag}", reference.full_name());
            reference =
                Reference::parse_normalized(&full).map_err(|e| ApiError::BadRequest(e.reason))?;
        } else {
            let full = format!("{}:{tag}", reference.full_name());
            reference =
                Reference::parse_normalized(&full).map_err(|e| ApiError::BadRequest(e.reason))?;
        }
    }
    let all_tags = reference.tag.is_none() && reference.digest.is_none();
    Ok((reference, all_tags))
}

impl Api {
    /// `docker pull`. Errors before the first progress line are HTTP errors (the CLI prints
    /// "Error response from daemon: …"); later ones end the JSON stream, as dockerd does.
    pub(super) async fn pull_image(&self, req: &Request<Incoming>, query: &Query) -> ApiResult {
        for unsupported in ["repo", "message", "changes"] {
            if query
                .get(unsupported)
                .is_some_and(|v| !v.is_empty() && v != "[]")
            {
                return Err(ApiError::BadRequest(format!(
                    "rmachine-engine does not support the {unsupported:?} parameter of a pull"
                )));
            }
        }
        let from_image = query.get("fromImage").unwrap_or_default();
        let (reference, all_tags) = pull_reference(from_image, query.get("tag"))?;
        let header = req
            .headers()
            .get("X-Registry-Auth")
            .and_then(|v| v.to_str().ok());
        let auth =
            AuthConfig::from_header(header).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let auth = self
            .engine
            .registry_credentials(&auth, &reference, false)
            .await?;
        let platform = match query.get("platform").filter(|p| !p.is_empty()) {
            Some(p) => Some(Platform::parse(p).map_err(|e| ApiError::BadRequest(e.to_string()))?),
            None => None,
        };
        let options = PullOptions {
            reference,
            all_tags,
            auth,
            platform,
        };
        let (progress_tx, progress_rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
        let engine = self.engine.clone();
        let task = tokio::spawn(async move { engine.pull_image(options, progress_tx).await });
        progress_response(task, progress_rx, "image pull").await
    }

    /// `docker push`: `tag` empty pushes every tag of the repository.
    pub(super) async fn push_image(
        &self,
        req: &Request<Incoming>,
        name: &str,
        query: &Query,
    ) -> ApiResult {
        let mut reference =
            Reference::parse_normalized(name).map_err(|e| ApiError::BadRequest(e.reason))?;
        if let Some(tag) = query.get("tag").filter(|t| !t.is_empty()) {
            reference = Reference::parse_normalized(&format!("{}:{tag}", reference.full_name()))
                .map_err(|e| ApiError::BadRequest(e.reason))?;
        }
        if reference.digest.is_some() {
            return Err(ApiError::BadRequest(
                "cannot push a digest reference".to_string(),
            ));
        }
        // API 1.46's `docker push --platform` pushes one platform's manifest of an index;
        // images here are single-platform, so only the engine's own platform is honoured.
        if let Some(platform) = query
            .get("platform")
            .filter(|p| !p.is_empty() && *p != "{}")
        {
            return Err(ApiError::BadRequest(format!(
                "rmachine-engine does not support pushing one platform of an image (--platform {platform}) yet"
            )));
        }
        let header = req
            .headers()
            .get("X-Registry-Auth")
            .and_then(|v| v.to_str().ok());
        let auth =
            AuthConfig::from_header(header).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let auth = self
            .engine
            .registry_credentials(&auth, &reference, true)
            .await?;
        let options = PushOptions { reference, auth };
        let (progress_tx, progress_rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
        let engine = self.engine.clone();
        let task = tokio::spawn(async move { engine.push_image(options, progress_tx).await });
        progress_response(task, progress_rx, "image push").await
    }

    /// `docker search`.
    pub(super) async fn search_images(&self, req: &Request<Incoming>, query: &Query) -> ApiResult {
        let term = query.get("term").unwrap_or_default();
        let limit = match query.get("limit").filter(|l| !l.is_empty()) {
            Some(l) => Some(
                l.parse::<usize>()
                    .map_err(|_| ApiError::BadRequest(format!("invalid limit: {l}")))?,
            ),
            None => None,
        };
        let filters: Vec<(String, Vec<String>)> = super::parse_filters(query.get("filters"))?
            .into_iter()
            .collect();
        let filters =
            SearchFilters::parse(&filters).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let header = req
            .headers()
            .get("X-Registry-Auth")
            .and_then(|v| v.to_str().ok());
        let auth =
            AuthConfig::from_header(header).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let results = self
            .engine
            .search_images(term, limit, &filters, &auth)
            .await?;
        json(StatusCode::OK, &results)
    }

    /// `docker login`: `{"Status": "Login Succeeded"}` once the registry took the credentials.
    pub(super) async fn login(&self, req: Request<Incoming>) -> ApiResult {
        let body = req
            .into_body()
            .collect()
            .await
            .map_err(|e| ApiError::BadRequest(format!("cannot read request body: {e}")))?
            .to_bytes();
        let auth: AuthConfig = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid auth configuration: {e}")))?;
        let outcome = self.engine.login(&auth).await?;
        json(
            StatusCode::OK,
            &serde_json::json!({
                "Status": "Login Succeeded",
                "IdentityToken": outcome.identity_token.unwrap_or_default(),
            }),
        )
    }
}

/// Streams a registry task's progress as Docker's JSON lines. An error before the first line
/// is an HTTP error (the CLI prints "Error response from daemon: …"); a later one ends the
/// stream, as dockerd does.
async fn progress_response(
    mut task: tokio::task::JoinHandle<Result<(), crate::core::EngineError>>,
    mut progress_rx: tokio::sync::mpsc::UnboundedReceiver<Progress>,
    what: &'static str,
) -> ApiResult {
    // Wait for the first line or the end, to choose between an HTTP error and a stream.
    let mut finished = None;
    let first = tokio::select! {
        biased;
        line = progress_rx.recv() => line,
        result = &mut task => {
            finished = Some(result);
            None
        }
    };
    if first.is_none() {
        // The channel closes when the pull ends: its result decides the answer.
        let result = match finished.take() {
            Some(result) => result,
            None => (&mut task).await,
        };
        match result {
            Err(e) => return Err(ApiError::Unavailable(format!("{what} task failed: {e}"))),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(())) => finished = Some(Ok(Ok(()))),
        }
    }
    let (tx, body) = ChannelBody::new();
    tokio::spawn(async move {
        if let Some(line) = first {
            let _ = tx.send(progress_line(&line)).await;
        }
        let result = match finished {
            Some(result) => result,
            None => loop {
                tokio::select! {
                    Some(line) = progress_rx.recv() => {
                        if tx.send(progress_line(&line)).await.is_err() {
                            // The client went away (docker pull interrupted): as dockerd,
                            // the operation is cancelled; staged layers are cleaned up as
                            // their downloads stop.
                            tracing::info!(what, "client disconnected, cancelling");
                            task.abort();
                            return;
                        }
                    }
                    result = &mut task => break result,
                }
            },
        };
        while let Ok(line) = progress_rx.try_recv() {
            let _ = tx.send(progress_line(&line)).await;
        }
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(message_of(&ApiError::Engine(err))),
            Err(err) => Some(format!("{what} task failed: {err}")),
        };
        if let Some(message) = error {
            warn!(error = %message, what, "registry operation failed");
            let _ = tx.send(stream::progress_error(&message)).await;
        }
    });
    Ok(streaming("application/json", body))
}

fn progress_line(progress: &Progress) -> bytes::Bytes {
    let mut out = progress.to_json().to_string().into_bytes();
    out.push(b'\n');
    bytes::Bytes::from(out)
}

/// dockerd's statuses for registry failures.
pub(super) fn registry_status(err: &RegistryError) -> StatusCode {
    match err {
        RegistryError::NotFound { .. } | RegistryError::NoMatchingPlatform { .. } => {
            StatusCode::NOT_FOUND
        }
        RegistryError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
        RegistryError::InvalidParameter { .. } => StatusCode::BAD_REQUEST,
        RegistryError::Store(_)
        | RegistryError::Storing { .. }
        | RegistryError::Unreachable { .. }
        | RegistryError::DigestMismatch { .. }
        | RegistryError::Registry { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_parameter_takes_a_tag_or_a_digest() {
        let (r, all) = pull_reference("busybox", Some("1.36")).unwrap();
        assert_eq!(r.familiar(), "busybox:1.36");
        assert!(!all);
        let digest = format!("sha256:{}", "a".repeat(64));
        let (r, _) = pull_reference("127.0.0.1:5000/x", Some(&digest)).unwrap();
        assert_eq!(r.digest.as_deref(), Some(digest.as_str()));
        let (r, all) = pull_reference("busybox", Some("")).unwrap();
        assert!(all && r.tag.is_none());
        let (r, all) = pull_reference("busybox:latest", None).unwrap();
        assert!(!all && r.tag.as_deref() == Some("latest"));
    }
}
