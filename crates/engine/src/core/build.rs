//! `docker build` (classic builder): the context unpacked, the Dockerfile parsed, the build
//! run by [`crate::build::executor::Builder`] with this engine's containers and image store,
//! and the tags applied. The API streams the progress this sends.

use std::path::PathBuf;

use tokio::sync::{mpsc, watch};

use super::Engine;
use crate::build::context::Context;
use crate::build::executor::{BuildOptions, Builder, Progress};
use crate::build::instructions::{build_program, Program};
use crate::build::remote::{self, Remote, RemoteContent};
use crate::build::{dockerfile, BuildError};
use crate::image::reference::Reference;

/// A build request, as the API decoded it.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    /// `t`: the tags to apply, validated.
    pub tags: Vec<String>,
    /// `dockerfile`: its path in the context (empty: `Dockerfile`).
    pub dockerfile: String,
    /// `remote`: a git repository or URL to build from instead of the request body.
    pub remote: Option<String>,
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
        let tmp = self.inner.config.data_root.join("tmp");
        let dir = tmp.join(format!("build-context-{:016x}", rand::random::<u64>()));
        let name = request.dockerfile.trim_start_matches("./").to_string();
        // A remote context replaces the body: a checkout, a downloaded archive, or a
        // Dockerfile alone (an empty context).
        let mut source = Source::Archive(archive);
        match request.remote.as_deref().map(Remote::parse).transpose()? {
            None => {}
            Some(Remote::Git(url)) => {
                std::fs::create_dir_all(&dir).map_err(crate::build::io_err(&dir))?;
                // Owned before cloning, so a failed clone leaves nothing behind.
                let checkout = Context::owning(dir.clone(), dir.clone());
                let root = remote::clone(&url, &dir).await?;
                source = Source::Checkout(checkout.rooted_at(root));
            }
            Some(Remote::Url(url)) => {
                let file = tmp.join(format!("build-remote-{:016x}", rand::random::<u64>()));
                let fetched = remote::download(&url, &file).await.map_err(|e| {
                    let _ = std::fs::remove_file(&file);
                    match e {
                        BuildError::Fetch {
                            url,
                            reason,
                            missing,
                        } => BuildError::Fetch {
                            reason: format!("error downloading remote context {url}: {reason}"),
                            url,
                            missing,
                        },
                        other => other,
                    }
                })?;
                source = Source::Remote {
                    file,
                    url,
                    content_type: fetched.content_type,
                };
            }
        }
        tokio::task::spawn_blocking(move || {
            let (context, text) = match source {
                Source::Archive(archive) => {
                    let file =
                        std::fs::File::open(&archive).map_err(crate::build::io_err(&archive))?;
                    let context = Context::unpack(std::io::BufReader::new(file), &dir)?;
                    let text = context.read_dockerfile(&name)?;
                    (context, text)
                }
                Source::Checkout(context) => {
                    let text = context.read_dockerfile(&name)?;
                    (context, text)
                }
                Source::Remote {
                    file,
                    url,
                    content_type,
                } => {
                    let unpacked = unpack_remote(&file, &url, &content_type, &dir, &name);
                    let _ = std::fs::remove_file(&file);
                    unpacked?
                }
            };
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

    /// Forgets the build cache entries `filters` select (`docker builder prune`, `docker
    /// system prune`); returns their keys.
    pub async fn prune_build_cache(
        &self,
        filters: &std::collections::BTreeMap<String, Vec<String>>,
    ) -> Result<Vec<String>, BuildError> {
        use crate::build::cache::{BuildCache, PruneFilter};
        let now = chrono::Utc::now();
        let filter = PruneFilter::parse(filters, |value| {
            super::remove::parse_until(value, now).map(std::time::SystemTime::from)
        })?;
        let cache = BuildCache::new(&self.inner.config.data_root);
        let images = self.inner.images.clone();
        tokio::task::spawn_blocking(move || cache.clear(|id| images.resolve(id).is_ok(), &filter))
            .await
            .map_err(|e| BuildError::Invalid {
                reason: format!("prune task failed: {e}"),
            })?
    }

    /// The build cache's entries whose images still exist (`docker system df`).
    pub async fn build_cache_entries(
        &self,
    ) -> Result<Vec<crate::build::cache::CacheEntry>, BuildError> {
        let cache = crate::build::cache::BuildCache::new(&self.inner.config.data_root);
        let images = self.inner.images.clone();
        tokio::task::spawn_blocking(move || cache.entries(|id| images.resolve(id).is_ok()))
            .await
            .map_err(|e| BuildError::Invalid {
                reason: format!("build cache task failed: {e}"),
            })?
    }
}

/// Where a build's context comes from.
enum Source {
    /// The request body, spooled to this file.
    Archive(PathBuf),
    /// A git checkout.
    Checkout(Context),
    /// A downloaded remote context, spooled to `file`.
    Remote {
        file: PathBuf,
        url: String,
        content_type: String,
    },
}

/// A downloaded remote context: the Dockerfile of an empty context when it is text, else an
/// archive unpacked as a request body is (moby's `newURLRemote`).
fn unpack_remote(
    file: &std::path::Path,
    url: &str,
    content_type: &str,
    dir: &std::path::Path,
    name: &str,
) -> Result<(Context, String), BuildError> {
    use std::io::Read;
    let mut head = Vec::with_capacity(512);
    std::fs::File::open(file)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .map_err(crate::build::io_err(file))?;
    let kind = remote::inspect(content_type, &head).map_err(|e| BuildError::Invalid {
        reason: format!("error detecting content type for remote {url}: {e}"),
    })?;
    let opened = std::fs::File::open(file).map_err(crate::build::io_err(file))?;
    match kind {
        RemoteContent::Dockerfile => {
            let context = Context::unpack(std::io::empty(), dir)?;
            let mut text = String::new();
            std::io::BufReader::new(opened)
                .read_to_string(&mut text)
                .map_err(|_| BuildError::Invalid {
                    reason: format!("the Dockerfile at {url} is not valid UTF-8"),
                })?;
            Ok((context, text))
        }
        RemoteContent::Archive => {
            let context = Context::unpack(std::io::BufReader::new(opened), dir)?;
            let text = context.read_dockerfile(name)?;
            Ok((context, text))
        }
    }
}
