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
        let reference = repo_tag(
            query.get("repo").unwrap_or(""),
            query.get("tag").unwrap_or(""),
        )?;
        let body = http_body_util::BodyExt::collect(req.into_body())
            .await
            .map_err(|e| ApiError::BadRequest(format!("cannot read request body: {e}")))?
            .to_bytes();
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
        if source != "-" {
            return Err(ApiError::Engine(EngineError::InvalidParameter {
                reason: format!(
                    "rmachine-engine does not support importing from a URL ({source}) yet: pipe the archive in with `docker import - NAME < FILE`"
                ),
            }));
        }
        if let Some(platform) = query.get("platform").filter(|p| !p.is_empty()) {
            let here = format!("linux/{}", crate::core::ARCHITECTURE);
            if platform != here && platform != "linux" {
                return Err(ApiError::Engine(EngineError::InvalidParameter {
                    reason: format!(
                        "rmachine-engine imports images for {here} only, not {platform}"
                    ),
                }));
            }
        }
        let reference = repo_tag(
            query.get("repo").unwrap_or(""),
            query.get("tag").unwrap_or(""),
        )?;
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
        let spooled = spool(req.into_body(), &path).await;
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

    /// `GET /system/df`: images, containers with their sizes; volumes and the build cache
    /// are empty lists, as the engine has neither yet.
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
        json(
            StatusCode::OK,
            &json!({
                "LayersSize": layers_size,
                "Images": images,
                "Containers": containers,
                "Volumes": [],
                "BuildCache": [],
            }),
        )
    }
}
