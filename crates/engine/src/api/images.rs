//! Image routes beyond load/list/inspect/rm: tag, history, save, commit, import, prune and
//! `system df`.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use super::error::ApiError;
use super::query::Query;
use super::stream::ChannelBody;
use super::{empty, json, parse_filters, spool, streaming, types, Api, ApiResult};
use crate::core::{
    repo_tag, CommitOptions, EngineError, ImagePruneFilters, ImportOptions, ListOptions,
};

impl Api {
    /// `POST /images/{name}/tag?repo=&tag=`.
    pub(super) async fn tag_image(&self, name: &str, query: &Query) -> ApiResult {
        let target = repo_tag(
            query.get("repo").unwrap_or(""),
            query.get("tag").unwrap_or(""),
        )?
        .ok_or_else(|| {
            ApiError::Engine(EngineError::InvalidParameter {
                reason: "repository name must have at least one component".into(),
            })
        })?;
        let familiar = target.split_once(':').map_or(target.as_str(), |(n, _)| n);
        if familiar == "sha256" {
            return Err(ApiError::Engine(EngineError::InvalidParameter {
                reason: "refusing to create an ambiguous tag using digest algorithm as name".into(),
            }));
        }
        self.engine.tag_image(name, &target).await?;
        empty(StatusCode::CREATED)
    }

    /// `GET /images/{name}/history`.
    pub(super) async fn image_history(&self, name: &str) -> ApiResult {
        json(StatusCode::OK, &self.engine.image_history(name).await?)
    }

    /// `GET /images/get?names=…` and `GET /images/{name}/get`.
    pub(super) async fn save_images(&self, names: Vec<String>) -> ApiResult {
        let rx = self.engine.save_images(names).await?;
        let (tx, body) = ChannelBody::new();
        tokio::spawn(async move {
            let mut rx = rx;
            while let Some(chunk) = rx.recv().await {
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
        });
        Ok(streaming("application/x-tar", body))
    }

    /// `POST /commit?container=&repo=&tag=&comment=&author=&pause=&changes=`.
    pub(super) async fn commit(&self, req: Request<Incoming>, query: &Query) -> ApiResult {
        let container = query.get("container").unwrap_or("").to_string();
        let body = http_body_util::BodyExt::collect(req.into_body())
            .await
            .map_err(|e| ApiError::BadRequest(format!("cannot read request body: {e}")))?
            .to_bytes();
        let reference = repo_tag(
            query.get("repo").unwrap_or(""),
            query.get("tag").unwrap_or(""),
        )?;
        let config = if body.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(
                serde_json::from_slice(&body)
                    .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?,
            )
        };
        let options = CommitOptions {
            container,
            reference,
            comment: query.get("comment").unwrap_or("").to_string(),
            author: query.get("author").unwrap_or("").to_string(),
            pause: query.bool_or("pause", true),
            changes: query.all("changes"),
            config,
        };
        let id = self.engine.commit(options).await?;
        json(StatusCode::CREATED, &json!({ "Id": id }))
    }

    /// `POST /images/create?fromSrc=-&repo=&tag=&message=&changes=&platform=`: `docker import`.
    pub(super) async fn import_image(&self, req: Request<Incoming>, query: &Query) -> ApiResult {
        let source = query.get("fromSrc").unwrap_or("").to_string();
        let reference = match check_import(query) {
            Ok(reference) => reference,
            Err(err) => {
                // Read the body anyway: a client still sending it would see a broken pipe
                // instead of the answer.
                if source == "-" {
                    drain(req.into_body()).await;
                }
                return Err(err);
            }
        };
        let tmp_dir = self.engine.config().data_root.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir)
            .await
            .map_err(|source| {
                ApiError::Engine(EngineError::Io {
                    path: tmp_dir.clone(),
                    source,
                })
            })?;
        let path = tmp_dir.join(format!(
            "import-{}.tar",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let spooled = if source == "-" {
            spool(req.into_body(), &path).await
        } else if source.contains("://") {
            download(&source, &path).await
        } else {
            // dockerd reads a bare host/path as http.
            download(&format!("http://{source}"), &path).await
        };
        let result = match spooled {
            Ok(()) => {
                let options = ImportOptions {
                    source,
                    reference,
                    message: query.get("message").unwrap_or("").to_string(),
                    changes: query.all("changes"),
                };
                self.engine.import_image(path.clone(), options).await
            }
            Err(err) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(err);
            }
        };
        let _ = tokio::fs::remove_file(&path).await;
        let id = result?;
        let mut line = serde_json::to_vec(&json!({ "status": id }))
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        line.push(b'\n');
        let (tx, body) = ChannelBody::new();
        let _ = tx.send(Bytes::from(line)).await;
        Ok(streaming("application/json", body))
    }

    /// `POST /images/prune`.
    pub(super) async fn prune_images(&self, query: &Query) -> ApiResult {
        let filters = parse_filters(query.get("filters"))?;
        let filters = ImagePruneFilters::parse(&filters)?;
        let report = self.engine.prune_images(&filters).await?;
        json(StatusCode::OK, &report)
    }

    /// `GET /system/df`: images, containers with their sizes, volumes with their usage, and
    /// the classic builder's cached steps as `BuildCache` records (shared, size 0: a step's
    /// layer belongs to its image, counted under `Images`).
    pub(super) async fn system_df(&self) -> ApiResult {
        let (images, layers_size) = self.engine.disk_usage_images().await?;
        let options = ListOptions::new(true, None, Default::default())?;
        let now = chrono::Utc::now();
        let mut containers = Vec::new();
        for listed in self.engine.list_containers(&options)? {
            let record = &listed.record;
            let mut summary = types::container_summary(record, now);
            if self.engine.is_paused(&record.id) {
                types::show_paused(&mut summary);
            }
            types::show_sizes(&mut summary, self.engine.container_sizes(record));
            containers.push(summary);
        }
        let build_cache: Vec<serde_json::Value> = self
            .engine
            .build_cache_entries()
            .await?
            .into_iter()
            .map(|entry| {
                let created = chrono::DateTime::<chrono::Utc>::from(entry.created)
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
                json!({
                    "ID": entry.key,
                    "Type": "regular",
                    "Description": entry.description(),
                    "InUse": false,
                    "Shared": true,
                    "Size": 0,
                    "CreatedAt": created,
                    "LastUsedAt": null,
                    "UsageCount": 0,
                })
            })
            .collect();
        json(
            StatusCode::OK,
            &json!({
                "LayersSize": layers_size,
                "Images": images,
                "Containers": containers,
                "Volumes": self.engine.volume_disk_usage(),
                "BuildCache": build_cache,
            }),
        )
    }
}

/// The `platform`, `repo` and `tag` parameters of an import: the reference to tag with.
fn check_import(query: &Query) -> Result<Option<String>, ApiError> {
    if let Some(platform) = query.get("platform").filter(|p| !p.is_empty()) {
        let here = format!("linux/{}", crate::image::host_architecture());
        if platform != here && platform != "linux" {
            return Err(ApiError::Engine(EngineError::InvalidParameter {
                reason: format!("rmachine-engine imports images for {here} only, not {platform}"),
            }));
        }
    }
    Ok(repo_tag(
        query.get("repo").unwrap_or(""),
        query.get("tag").unwrap_or(""),
    )?)
}

/// Reads a request body to its end, dropping it.
async fn drain(mut body: Incoming) {
    use http_body_util::BodyExt;
    while let Some(Ok(_)) = body.frame().await {}
}

/// Fetches an `http://` URL into `path` (`docker import URL`), following redirects as Go's
/// HTTP client does (at most 10).
async fn download(url: &str, path: &std::path::Path) -> Result<(), ApiError> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;

    let refuse = |reason: String| ApiError::Engine(EngineError::InvalidParameter { reason });
    let mut current = url.to_string();
    for _ in 0..10 {
        let uri: hyper::Uri = current
            .parse()
            .map_err(|e| refuse(format!("invalid import source {current}: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(refuse(format!(
                    "rmachine-engine does not support importing over https ({current}) yet: download the archive and run `docker import FILE`"
                )))
            }
            _ => return Err(refuse(format!("invalid import source {current}: not an http URL"))),
        }
        let host = uri
            .host()
            .ok_or_else(|| refuse(format!("invalid import source {current}: no host")))?
            .to_string();
        let port = uri.port_u16().unwrap_or(80);
        let fetch_err =
            |e: &dyn std::fmt::Display| refuse(format!("error downloading {current}: {e}"));
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| fetch_err(&e))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| fetch_err(&e))?;
        tokio::spawn(conn);
        let host_header = match uri.port_u16() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let request = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(hyper::header::HOST, host_header)
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| fetch_err(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| fetch_err(&e))?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| fetch_err(&"redirect without a location"))?;
            current = if location.starts_with('/') {
                format!(
                    "http://{}{location}",
                    uri.authority().map_or("", |a| a.as_str())
                )
            } else {
                location.to_string()
            };
            continue;
        }
        if !status.is_success() {
            return Err(fetch_err(&format!("server answered {status}")));
        }
        let io = |source| {
            ApiError::Engine(EngineError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        let mut file = tokio::fs::File::create(path).await.map_err(io)?;
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| fetch_err(&e))?;
            if let Ok(data) = frame.into_data() {
                file.write_all(&data).await.map_err(io)?;
            }
        }
        file.flush().await.map_err(io)?;
        return Ok(());
    }
    Err(refuse(format!(
        "error downloading {url}: stopped after 10 redirects"
    )))
}
