//! Routes of the volume API (`docker volume create|ls|inspect|rm|prune`), shaped as dockerd's
//! (api/server/router/volume).

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;

use super::error::ApiError;
use super::query::Query;
use super::{empty, json, parse_filters, Api, ApiResult};
use crate::core::VolumeFilters;
use crate::volume::CreateOptions;

/// The body of `POST /volumes/create` (moby api/types/volume `CreateOptions`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CreateBody {
    name: String,
    driver: String,
    driver_opts: Option<BTreeMap<String, String>>,
    labels: Option<BTreeMap<String, String>>,
    cluster_volume_spec: Option<serde_json::Value>,
}

impl Api {
    /// `/volumes…`; what is not served here is answered by [`super::unsupported::answer`].
    pub(super) async fn route_volumes(
        &self,
        req: Request<Incoming>,
        method: &Method,
        segments: &[&str],
        query: &Query,
    ) -> ApiResult {
        match (method, segments) {
            (&Method::GET, ["volumes"]) => {
                let filters = VolumeFilters::for_list(&parse_filters(query.get("filters"))?)?;
                let volumes: Vec<_> = self
                    .engine
                    .volume_list(&filters)
                    .iter()
                    .map(crate::volume::Volume::to_api)
                    .collect();
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "Volumes": volumes, "Warnings": null }),
                )
            }
            (&Method::POST, ["volumes", "create"]) => {
                let bytes = super::exec::body_bytes(req).await?;
                let body: CreateBody = super::exec::parse(&bytes, "CreateOptions")?;
                if body.cluster_volume_spec.is_some() {
                    return Err(ApiError::Unavailable(
                        super::unsupported::NOT_SWARM_MANAGER.into(),
                    ));
                }
                let volume = self.engine.volume_create(CreateOptions {
                    name: body.name,
                    driver: body.driver,
                    labels: body.labels,
                    options: body.driver_opts,
                })?;
                json(StatusCode::CREATED, &volume.to_api())
            }
            (&Method::POST, ["volumes", "prune"]) => {
                let filters = VolumeFilters::for_prune(&parse_filters(query.get("filters"))?)?;
                let (deleted, space) = self.engine.volume_prune(&filters)?;
                json(
                    StatusCode::OK,
                    &serde_json::json!({
                        // dockerd appends to a nil slice: null when nothing was removed.
                        "VolumesDeleted": (!deleted.is_empty()).then_some(deleted),
                        "SpaceReclaimed": space,
                    }),
                )
            }
            (&Method::GET, ["volumes", name]) => {
                json(StatusCode::OK, &self.engine.volume_inspect(name)?.to_api())
            }
            (&Method::DELETE, ["volumes", name]) => {
                self.engine.volume_remove(name, query.bool("force"))?;
                empty(StatusCode::NO_CONTENT)
            }
            _ => {
                super::archive::drain(req.into_body(), super::archive::DRAIN_LIMIT).await;
                Err(super::unsupported::answer(method, segments, query))
            }
        }
    }
}
