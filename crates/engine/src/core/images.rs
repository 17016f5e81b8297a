//! Image operations: load, list, inspect and remove.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tokio::sync::mpsc;

use super::error::{io_err, EngineError};
use super::{lock, Engine};
use crate::image::{DeleteItem, ImageSummary};
use crate::state::Status;

impl Engine {
    /// Loads a `docker save` / OCI archive; `progress` receives each line as it happens.
    pub async fn load_images(
        &self,
        archive: PathBuf,
        progress: mpsc::UnboundedSender<String>,
    ) -> Result<Vec<String>, EngineError> {
        let images = self.inner.images.clone();
        let lines = tokio::task::spawn_blocking(move || {
            let mut file = std::fs::File::open(&archive).map_err(io_err(&archive))?;
            let mut report = |line: &str| {
                let _ = progress.send(line.to_string());
            };
            Ok::<_, EngineError>(images.load(&mut file, &mut report)?)
        })
        .await
        .map_err(|e| EngineError::Task {
            reason: e.to_string(),
        })??;
        // As moby's tarexport load: one `load` event per image, named by its id.
        let mut announced = std::collections::HashSet::new();
        for line in &lines {
            let reference = line
                .strip_prefix("Loaded image: ")
                .or_else(|| line.strip_prefix("Loaded image ID: "));
            let Some(id) = reference.and_then(|r| self.inner.images.resolve(r).ok()) else {
                continue;
            };
            if announced.insert(id.id.clone()) {
                let attrs = BTreeMap::from([("name".to_string(), id.id.clone())]);
                self.inner.events.emit("image", "load", &id.id, attrs);
            }
        }
        Ok(lines)
    }

    /// `docker images`: without `all`, untagged images other images were committed from
    /// (dockerd's intermediate images) are left out.
    pub async fn list_images(&self, all: bool) -> Result<Vec<ImageSummary>, EngineError> {
        let images = self.inner.images.clone();
        tokio::task::spawn_blocking(move || {
            let list = images.list()?;
            if all {
                return Ok::<_, crate::image::ImageError>(list);
            }
            let intermediate = images.intermediate_ids();
            Ok(list
                .into_iter()
                .filter(|i| !intermediate.contains(&i.id))
                .collect())
        })
        .await
        .map_err(|e| EngineError::Task {
            reason: e.to_string(),
        })?
        .map_err(EngineError::from)
    }

    /// `docker image inspect`.
    pub async fn inspect_image(
        &self,
        reference: &str,
    ) -> Result<crate::image::ImageInspect, EngineError> {
        let images = self.inner.images.clone();
        let reference = reference.to_string();
        tokio::task::spawn_blocking(move || images.inspect(&reference))
            .await
            .map_err(|e| EngineError::Task {
                reason: e.to_string(),
            })?
            .map_err(EngineError::from)
    }

    /// `docker rmi`; refuses images that containers use unless forced.
    pub async fn remove_image(
        &self,
        reference: &str,
        force: bool,
    ) -> Result<Vec<DeleteItem>, EngineError> {
        let users: Vec<(String, String, bool)> = lock(&self.inner.table)
            .by_id
            .values()
            .map(|c| {
                let record = c.record();
                let running = record.state.status == Status::Running;
                (record.image_id, c.id.clone(), running)
            })
            .collect();
        let image = self.resolve_image(reference).await?;
        // Only an image named by id meets dockerd's hard "running container" conflict; a tag
        // is untagged (or refused with "must force" by the store) whatever runs.
        let by_id = crate::image::is_id_reference(reference, &image.id);
        if let Some((_, container, _)) = users
            .iter()
            .find(|(image_id, _, running)| by_id && *running && *image_id == image.id)
        {
            return Err(EngineError::ImageUsedByRunning {
                image: image.id,
                container: container.clone(),
            });
        }
        let images = self.inner.images.clone();
        let reference = reference.to_string();
        let items = tokio::task::spawn_blocking(move || {
            let in_use = |image_id: &str| {
                users
                    .iter()
                    .find(|(image, _, _)| image == image_id)
                    .map(|(_, id, _)| id.clone())
            };
            images.remove(&reference, force, &in_use)
        })
        .await
        .map_err(|e| EngineError::Task {
            reason: e.to_string(),
        })??;
        for item in &items {
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
        Ok(items)
    }
}
