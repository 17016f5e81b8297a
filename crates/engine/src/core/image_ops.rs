//! Local image commands beyond load/list/inspect/rm: tag, history, save, commit, import,
//! image prune and the image side of `system df`.

use std::collections::BTreeMap;
use std::io::{Seek, Write};
use std::path::PathBuf;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::archive::ChannelWriter;
use super::error::{io_err, EngineError};
use super::{cgroup_err, cgroup_of, lock, Engine};
use crate::image::changes::{apply_changes, merge_commit_config};
use crate::image::host_architecture;
use crate::image::layer_export::write_layer_tar;
use crate::image::reference::Reference;
use crate::image::{DeleteItem, HistoryEntry, HistoryItem, ImageSummary, NewImage, NewStep};
use crate::state::Status;

fn task_failed(e: impl std::fmt::Display) -> EngineError {
    EngineError::Task {
        reason: e.to_string(),
    }
}

fn invalid(reason: impl Into<String>) -> EngineError {
    EngineError::InvalidParameter {
        reason: reason.into(),
    }
}

/// `repo` and `tag` query parameters as one reference (moby's `RepoTagReference`); `None`
/// when `repo` is empty.
pub fn repo_tag(repo: &str, tag: &str) -> Result<Option<String>, EngineError> {
    if repo.is_empty() {
        return Ok(None);
    }
    let named = Reference::parse_normalized(repo).map_err(|e| invalid(e.reason))?;
    if named.digest.is_some() {
        return Err(invalid("cannot import digest reference"));
    }
    if tag.is_empty() {
        return Ok(Some(repo.to_string()));
    }
    let with_tag = format!("{}:{tag}", named.familiar_name());
    Reference::parse_normalized(&with_tag).map_err(|e| invalid(e.reason))?;
    Ok(Some(with_tag))
}

/// What `POST /commit` asks for.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// The container (name or id).
    pub container: String,
    /// `repo[:tag]` to tag the new image with.
    pub reference: Option<String>,
    /// `-m`.
    pub comment: String,
    /// `-a`.
    pub author: String,
    /// Freeze the container while its changes are read (default true).
    pub pause: bool,
    /// `--change` lines.
    pub changes: Vec<String>,
    /// The request body: a container config over the container's own.
    pub config: Option<Value>,
}

/// What `POST /images/create?fromSrc=` asks for.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// `-` (the request body) or the URL the tar was fetched from.
    pub source: String,
    /// `repo[:tag]` to tag the new image with.
    pub reference: Option<String>,
    /// `-m`; dockerd's default is `Imported from SOURCE`.
    pub message: String,
    /// `--change` lines.
    pub changes: Vec<String>,
}

/// `POST /images/prune`'s answer.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImagePruneReport {
    /// What was untagged and deleted.
    pub images_deleted: Vec<DeleteItem>,
    /// Bytes of layers removed.
    pub space_reclaimed: u64,
}

/// The filters of `POST /images/prune` (dockerd's `ImagesPrune`).
#[derive(Debug, Clone)]
pub struct ImagePruneFilters {
    dangling_only: bool,
    until: Option<i64>,
    labels: Vec<String>,
    not_labels: Vec<String>,
}

impl ImagePruneFilters {
    /// Checks the decoded `filters` query with dockerd's texts.
    pub fn parse(
        filters: &BTreeMap<String, Vec<String>>,
    ) -> Result<ImagePruneFilters, EngineError> {
        if let Some(key) = filters
            .keys()
            .find(|k| !matches!(k.as_str(), "dangling" | "label" | "label!" | "until"))
        {
            return Err(invalid(format!("invalid filter '{key}'")));
        }
        let dangling_only = match filters.get("dangling").map(Vec::as_slice) {
            None | Some([]) => true,
            Some([v]) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(invalid(format!("invalid filter 'dangling={v}'"))),
            },
            Some(_) => return Err(invalid("invalid filter 'dangling': more than one value")),
        };
        let until = match filters.get("until").map(Vec::as_slice) {
            None | Some([]) => None,
            Some([value]) => Some(
                super::remove::parse_until(value, chrono::Utc::now())
                    .map_err(invalid)?
                    .timestamp(),
            ),
            Some(_) => return Err(invalid("more than one until filter specified")),
        };
        let get = |k: &str| filters.get(k).cloned().unwrap_or_default();
        Ok(ImagePruneFilters {
            dangling_only,
            until,
            labels: get("label"),
            not_labels: get("label!"),
        })
    }
}

impl Engine {
    /// `docker tag SOURCE TARGET`.
    pub async fn tag_image(&self, source: &str, target: &str) -> Result<(), EngineError> {
        let images = self.inner.images.clone();
        let (source, target) = (source.to_string(), target.to_string());
        let wanted = target.clone();
        let image = tokio::task::spawn_blocking(move || {
            images.tag(&source, &wanted)?;
            images.resolve(&wanted)
        })
        .await
        .map_err(task_failed)??;
        // dockerd's tag event names the new tag.
        let name = Reference::parse_normalized(&target)
            .map(|r| r.with_default_tag().familiar())
            .unwrap_or_default();
        self.inner.events.emit(
            "image",
            "tag",
            &image.id,
            BTreeMap::from([("name".to_string(), name)]),
        );
        Ok(())
    }

    /// `docker history`.
    pub async fn image_history(&self, name: &str) -> Result<Vec<HistoryItem>, EngineError> {
        let images = self.inner.images.clone();
        let name = name.to_string();
        Ok(tokio::task::spawn_blocking(move || images.history(&name))
            .await
            .map_err(task_failed)??)
    }

    /// `docker save`: checks every name, then streams the archive.
    pub async fn save_images(
        &self,
        names: Vec<String>,
    ) -> Result<mpsc::Receiver<Bytes>, EngineError> {
        if names.is_empty() {
            return Err(invalid("no images specified"));
        }
        let images = self.inner.images.clone();
        let selection = {
            let images = images.clone();
            let names = names.clone();
            tokio::task::spawn_blocking(move || images.save_selection(&names))
                .await
                .map_err(task_failed)??
        };
        let (tx, rx) = mpsc::channel(8);
        let selected = selection.clone();
        std::thread::Builder::new()
            .name("image-save".into())
            .spawn(move || {
                let mut out = ChannelWriter::new(tx);
                if let Err(err) = images.save_selected(&selected, &mut out).and_then(|()| {
                    out.flush().map_err(|source| crate::image::ImageError::Io {
                        path: "docker save output".into(),
                        source,
                    })
                }) {
                    tracing::warn!(error = %err, "image save failed");
                }
            })
            .map_err(task_failed)?;
        for (id, _) in selection {
            self.inner.events.emit(
                "image",
                "save",
                &id,
                BTreeMap::from([("name".to_string(), id.clone())]),
            );
        }
        Ok(rx)
    }

    /// `docker commit`: the container's changes as a new layer over its image, with its
    /// config merged as dockerd does; the container is frozen meanwhile unless `pause` is off.
    pub async fn commit(&self, options: CommitOptions) -> Result<String, EngineError> {
        let c = self.container(&options.container)?;
        let _op = c.op.lock().await;
        let record = c.record();
        let container_config = match serde_json::to_value(&record.config) {
            Ok(Value::Object(m)) => m,
            Ok(_) => Map::new(),
            Err(e) => return Err(invalid(e.to_string())),
        };
        // As dockerd: without a body config the changes apply to the container's own.
        let mut user = match options.config.clone() {
            None | Some(Value::Null) => container_config.clone(),
            Some(Value::Object(m)) => m,
            Some(_) => return Err(invalid("invalid container config")),
        };
        apply_changes(&mut user, &options.changes).map_err(|e| invalid(e.to_string()))?;
        merge_commit_config(&mut user, &container_config);
        let (parent_id, parent_config) = {
            let images = self.inner.images.clone();
            let id = record.image_id.clone();
            tokio::task::spawn_blocking(move || images.config_json(&id))
                .await
                .map_err(task_failed)??
        };

        let freeze =
            options.pause && record.state.status == Status::Running && !self.is_paused(&c.id);
        let cgroup = if freeze {
            let cg = cgroup_of(&record)?;
            cg.freeze().map_err(cgroup_err(&c.id))?;
            Some(cg)
        } else {
            None
        };
        let upper = c.dir.join("upper");
        let tmp_dir = self.inner.config.data_root.join("tmp");
        let exported =
            tokio::task::spawn_blocking(move || -> Result<std::fs::File, EngineError> {
                std::fs::create_dir_all(&tmp_dir).map_err(io_err(&tmp_dir))?;
                let mut file = crate::image::tempfile_in(&tmp_dir)?;
                if upper.exists() {
                    write_layer_tar(&upper, &mut file)?;
                } else {
                    // Never started: no changes, Docker's empty layer tar.
                    file.write_all(&[0u8; 1024]).map_err(io_err(&tmp_dir))?;
                }
                file.rewind().map_err(io_err(&tmp_dir))?;
                Ok(file)
            })
            .await
            .map_err(task_failed);
        if let Some(cg) = cgroup {
            cg.thaw().map_err(cgroup_err(&c.id))?;
        }
        let layer = exported??;

        let now = crate::image::now();
        let mut config = json!({
            "architecture": parent_config.get("architecture").and_then(Value::as_str).unwrap_or(host_architecture()),
            "os": "linux",
            "created": now,
            "docker_version": env!("CARGO_PKG_VERSION"),
            "config": Value::Object(user),
        });
        if let Some(v) = parent_config.get("variant") {
            config["variant"] = v.clone();
        }
        if !options.author.is_empty() {
            config["author"] = json!(options.author);
        }
        if !options.comment.is_empty() {
            config["comment"] = json!(options.comment);
        }
        let history = HistoryEntry {
            created: now,
            created_by: record.config.cmd.clone().unwrap_or_default().join(" "),
            author: options.author.clone(),
            comment: options.comment.clone(),
            empty_layer: false,
        };
        let images = self.inner.images.clone();
        let reference = options.reference.clone();
        let id = tokio::task::spawn_blocking(move || {
            images.create_image(NewImage {
                parent: Some(parent_id),
                config,
                steps: vec![NewStep {
                    layer: Some(Box::new(layer)),
                    history,
                }],
                tag: reference,
            })
        })
        .await
        .map_err(task_failed)??;
        let image_ref = options
            .reference
            .as_deref()
            .and_then(|r| Reference::parse_normalized(r).ok())
            .map(|r| r.with_default_tag().familiar())
            .unwrap_or_default();
        self.emit(
            &record,
            "commit",
            &[
                ("comment", options.comment.clone()),
                ("imageID", id.clone()),
                ("imageRef", image_ref),
            ],
        );
        Ok(id)
    }

    /// `docker import`: the tar at `archive` (plain or gzip) as the one layer of a new image.
    pub async fn import_image(
        &self,
        archive: PathBuf,
        options: ImportOptions,
    ) -> Result<String, EngineError> {
        let mut cfg = Map::new();
        apply_changes(&mut cfg, &options.changes).map_err(|e| invalid(e.to_string()))?;
        let message = if options.message.is_empty() {
            format!("Imported from {}", options.source)
        } else {
            options.message.clone()
        };
        let now = crate::image::now();
        let config = json!({
            "architecture": host_architecture(),
            "os": "linux",
            "created": now,
            "docker_version": env!("CARGO_PKG_VERSION"),
            "comment": message,
            "config": Value::Object(cfg),
        });
        let history = HistoryEntry {
            created: now,
            comment: message,
            ..HistoryEntry::default()
        };
        let images = self.inner.images.clone();
        let reference = options.reference.clone();
        let id = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&archive).map_err(io_err(&archive))?;
            Ok::<_, EngineError>(images.create_image(NewImage {
                parent: None,
                config,
                steps: vec![NewStep {
                    layer: Some(Box::new(file)),
                    history,
                }],
                tag: reference,
            })?)
        })
        .await
        .map_err(task_failed)??;
        self.inner.events.emit(
            "image",
            "import",
            &id,
            BTreeMap::from([("name".to_string(), id.clone())]),
        );
        Ok(id)
    }

    /// Image ids any container (running or not) uses.
    fn images_in_use(&self) -> BTreeMap<String, String> {
        lock(&self.inner.table)
            .by_id
            .values()
            .map(|c| (c.record().image_id, c.id.clone()))
            .collect()
    }

    /// `docker image prune`: dangling images, or with `dangling=false` every image no
    /// container uses; `until` and `label` narrow the choice.
    pub async fn prune_images(
        &self,
        filters: &ImagePruneFilters,
    ) -> Result<ImagePruneReport, EngineError> {
        let used = self.images_in_use();
        let images = self.inner.images.clone();
        let filters = filters.clone();
        let report = tokio::task::spawn_blocking(move || {
            let before = images.layers_size();
            let usage = images.usage();
            let parents: std::collections::BTreeSet<String> = usage
                .iter()
                .filter_map(|u| images.inspect(&u.id).ok())
                .map(|i| i.parent)
                .filter(|p| !p.is_empty())
                .collect();
            let mut deleted = Vec::new();
            for image in usage {
                let dangling = image.repo_tags.is_empty();
                if filters.dangling_only && !dangling {
                    continue;
                }
                // An untagged parent of another image is an intermediate, not dangling.
                if dangling && parents.contains(&image.id) {
                    continue;
                }
                if used.contains_key(&image.id) {
                    continue;
                }
                if filters.until.is_some_and(|until| image.created >= until) {
                    continue;
                }
                let all = |list: &[String]| super::lookup::labels_match(&image.labels, list);
                if !filters.labels.is_empty() && !all(&filters.labels) {
                    continue;
                }
                if !filters.not_labels.is_empty() && all(&filters.not_labels) {
                    continue;
                }
                // As dockerd: a tagged image loses its tags one by one (the last one deletes
                // it unless another image was committed from it), an untagged one goes by id.
                let in_use = |id: &str| used.get(id).cloned();
                let names = if dangling {
                    vec![image.id.clone()]
                } else {
                    image.repo_tags.clone()
                };
                for name in names {
                    match images.remove(&name, false, &in_use) {
                        Ok(items) => deleted.extend(items),
                        Err(err) => {
                            tracing::warn!(image = %image.id, error = %err, "prune: cannot remove image");
                            break;
                        }
                    }
                }
            }
            let after = images.layers_size();
            ImagePruneReport {
                images_deleted: deleted,
                space_reclaimed: before.saturating_sub(after),
            }
        })
        .await
        .map_err(task_failed)?;
        for item in &report.images_deleted {
            let (action, id) = match item {
                DeleteItem::Untagged(tag) => ("untag", tag),
                DeleteItem::Deleted(id) => ("delete", id),
            };
            self.inner.events.emit(
                "image",
                action,
                id,
                BTreeMap::from([("name".to_string(), id.clone())]),
            );
        }
        self.inner.events.emit(
            "image",
            "prune",
            "",
            BTreeMap::from([("reclaimed".to_string(), report.space_reclaimed.to_string())]),
        );
        Ok(report)
    }

    /// The images of `GET /system/df` with `SharedSize` and `Containers` filled, and the
    /// layers' total size.
    pub async fn disk_usage_images(&self) -> Result<(Vec<ImageSummary>, u64), EngineError> {
        let mut counts: BTreeMap<String, i64> = BTreeMap::new();
        for c in lock(&self.inner.table).by_id.values() {
            *counts.entry(c.record().image_id).or_default() += 1;
        }
        let images = self.inner.images.clone();
        let (mut list, usage, layers) = tokio::task::spawn_blocking(move || {
            let intermediate = images.intermediate_ids();
            let list: Vec<ImageSummary> = images
                .list()?
                .into_iter()
                .filter(|i| !intermediate.contains(&i.id))
                .collect();
            Ok::<_, EngineError>((list, images.usage(), images.layers_size()))
        })
        .await
        .map_err(task_failed)??;
        let shared: BTreeMap<String, u64> =
            usage.into_iter().map(|u| (u.id, u.shared_size)).collect();
        for image in &mut list {
            image.shared_size = shared
                .get(&image.id)
                .map(|s| i64::try_from(*s).unwrap_or(i64::MAX))
                .unwrap_or(0);
            image.containers = counts.get(&image.id).copied().unwrap_or(0);
        }
        Ok((list, layers))
    }
}
