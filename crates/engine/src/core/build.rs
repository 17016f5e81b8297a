//! `docker build` (classic builder): the context unpacked, the Dockerfile parsed, the build
//! run by [`crate::build::executor::Builder`] with this engine's containers and image store,
//! and the tags applied. The API streams the progress this sends.

use std::path::PathBuf;

use tokio::sync::{mpsc, watch};

use super::Engine;
use crate::build::context::Context;
use crate::build::executor::{BuildOptions, Builder, Progress};
use crate::build::instructions::{build_program, Program};
use crate::build::{dockerfile, BuildError};
use crate::image::reference::Reference;

/// A build request, as the API decoded it.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    /// `t`: the tags to apply, validated.
    pub tags: Vec<String>,
    /// `dockerfile`: its path in the context (empty: `Dockerfile`).
    pub dockerfile: String,
    /// The builder's options.
    pub options: BuildOptions,
}

/// A build ready to run: the context unpacked and the Dockerfile parsed.
#[derive(Debug)]
pub struct PreparedBuild {
    context: Context,
    program: Program,
    request: BuildRequest,
}

impl Engine {
    /// Unpacks the spooled context tar at `archive` and parses its Dockerfile; the errors
    /// here come before any output (dockerd answers them with an HTTP error).
    pub async fn prepare_build(
        &self,
        archive: PathBuf,
        request: BuildRequest,
    ) -> Result<PreparedBuild, BuildError> {
        for tag in &request.tags {
            let r = Reference::parse_normalized(tag).map_err(|_| BuildError::Invalid {
                reason: format!("invalid reference format: {tag}"),
            })?;
            if r.digest.is_some() {
                return Err(BuildError::Invalid {
                    reason: format!("invalid reference format: {tag}"),
                });
            }
        }
        let dir = self
            .inner
            .config
            .data_root
            .join("tmp")
            .join(format!("build-context-{:016x}", rand::random::<u64>()));
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&archive).map_err(crate::build::io_err(&archive))?;
            let context = Context::unpack(std::io::BufReader::new(file), &dir)?;
            let name = request.dockerfile.trim_start_matches("./").to_string();
            let text = context.read_dockerfile(&name)?;
            context.apply_dockerignore(if name.is_empty() { "Dockerfile" } else { &name })?;
            let program = build_program(&dockerfile::parse(&text)?)?;
            Ok(PreparedBuild {
                context,
                program,
                request,
            })
        })
        .await
        .map_err(|e| BuildError::Invalid {
            reason: format!("build task failed: {e}"),
        })?
    }

    /// Runs a prepared build, sending its progress to `out` (the `Successfully …` lines
    /// included); returns the image id. Setting `cancel` stops it at the next step or kills
    /// the running step's container.
    pub async fn build(
        &self,
        prepared: PreparedBuild,
        out: mpsc::UnboundedSender<Progress>,
        cancel: watch::Receiver<bool>,
    ) -> Result<String, BuildError> {
        let PreparedBuild {
            context,
            program,
            request,
        } = prepared;
        let mut builder = Builder::new(
            self,
            self.inner.images.clone(),
            &context,
            request.options.clone(),
            out.clone(),
            cancel,
        );
        let id = builder.build(&program).await?;
        drop(builder);
        drop(context);
        let _ = out.send(Progress::Stream(format!(
            "Successfully built {}\n",
            crate::image::short_id(&id)
        )));
        for tag in &request.tags {
            let images = self.inner.images.clone();
            let (i, t) = (id.clone(), tag.clone());
            tokio::task::spawn_blocking(move || images.tag(&i, &t))
                .await
                .map_err(|e| BuildError::Invalid {
                    reason: format!("tag task failed: {e}"),
                })?
                .map_err(BuildError::Image)?;
            let familiar = Reference::parse_normalized(tag)
                .map(|r| r.with_default_tag().familiar())
                .unwrap_or_else(|_| tag.clone());
            let _ = out.send(Progress::Stream(format!(
                "Successfully tagged {familiar}\n"
            )));
        }
        Ok(id)
    }

    /// Forgets the build cache (`docker builder prune`); returns how many entries went.
    pub async fn prune_build_cache(&self) -> Result<usize, BuildError> {
        let cache = crate::build::cache::BuildCache::new(&self.inner.config.data_root);
        tokio::task::spawn_blocking(move || cache.clear())
            .await
            .map_err(|e| BuildError::Invalid {
                reason: format!("prune task failed: {e}"),
            })?
    }
}
