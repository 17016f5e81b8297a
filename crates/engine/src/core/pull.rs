//! Registry operations: `docker pull`, `docker push`, `docker search` and `docker login`.

use std::collections::BTreeMap;

use tokio::sync::mpsc;

use super::error::EngineError;
use super::Engine;
use crate::image::reference::Reference;
use crate::image::registry::auth::{self, AuthConfig};
use crate::image::registry::pull::{self, PullOptions};
use crate::image::registry::push::{self, PushOptions};
use crate::image::registry::search::{self, SearchFilters, SearchResult};
use crate::image::registry::Progress;

impl Engine {
    /// `POST /images/create?fromImage=`: pulls into the store, reporting on `progress`; one
    /// `pull` event per reference pulled, as dockerd.
    pub async fn pull_image(
        &self,
        options: PullOptions,
        progress: mpsc::UnboundedSender<Progress>,
    ) -> Result<(), EngineError> {
        let pulled = pull::pull(
            self.inner.images.clone(),
            &self.config().registry,
            options,
            &progress,
        )
        .await?;
        for reference in pulled.references {
            let attrs = BTreeMap::from([("name".to_string(), reference.clone())]);
            self.inner.events.emit("image", "pull", &reference, attrs);
        }
        Ok(())
    }

    /// `POST /images/{name}/push`: uploads the tag (or every tag of the repository); one
    /// `push` event per tag, as dockerd.
    pub async fn push_image(
        &self,
        options: PushOptions,
        progress: mpsc::UnboundedSender<Progress>,
    ) -> Result<(), EngineError> {
        let pushed = push::push(
            self.inner.images.clone(),
            &self.config().registry,
            options,
            &progress,
        )
        .await?;
        for reference in pushed {
            let attrs = BTreeMap::from([("name".to_string(), reference.clone())]);
            self.inner.events.emit("image", "push", &reference, attrs);
        }
        Ok(())
    }

    /// `GET /images/search`.
    pub async fn search_images(
        &self,
        term: &str,
        limit: Option<usize>,
        filters: &SearchFilters,
        auth: &AuthConfig,
    ) -> Result<Vec<SearchResult>, EngineError> {
        Ok(search::search(&self.config().registry, term, limit, filters, auth).await?)
    }

    /// `POST /auth`: checks credentials against the registry.
    pub async fn login(&self, auth: &AuthConfig) -> Result<auth::LoginOutcome, EngineError> {
        Ok(auth::login(&self.config().registry, auth).await?)
    }

    /// The credentials a pull (or a push, `push`) of `reference` hands the registry client:
    /// an identity token is traded for an access token first.
    pub async fn registry_credentials(
        &self,
        auth: &AuthConfig,
        reference: &Reference,
        push: bool,
    ) -> Result<oci_client::secrets::RegistryAuth, EngineError> {
        Ok(auth::credentials(
            &self.config().registry,
            auth,
            &reference.domain,
            &reference.path,
            push,
        )
        .await?)
    }
}
