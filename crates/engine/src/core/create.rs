//! `docker create`: a `CreateRequest` checked and normalised as dockerd does, then
//! recorded as a new container.

use std::collections::BTreeMap;

use chrono::Utc;
use tracing::info;

use super::error::EngineError;
use super::host_config::create_warnings;
use super::{host_config, lock, new_id, options, restart, unsupported, Engine};
use crate::container::{config, names, Container};
use crate::image::ImageRecord;
use crate::state::{
    ContainerConfig, ContainerRecord, ContainerState, HostConfig, NetworkingConfig, Status,
};

/// A create request, as the API decoded it.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// `?name=`, without or with a leading slash.
    pub name: Option<String>,
    /// `Config` (the top-level fields of the body).
    pub config: ContainerConfig,
    /// `HostConfig`.
    pub host_config: HostConfig,
    /// `NetworkingConfig`.
    pub networking_config: NetworkingConfig,
}

/// `HostConfig.LogConfig.Config`: the `--log-opt` pairs.
pub(super) fn log_options(host: &HostConfig) -> BTreeMap<String, String> {
    host.log_config.config.clone()
}

/// `HostConfig.LogConfig.Type`; `json-file` when unset, as dockerd stores it.
pub(super) fn log_type(host: &HostConfig) -> &str {
    match host.log_config.kind.as_str() {
        "" => "json-file",
        kind => kind,
    }
}

/// dockerd's create-time handling of `LogConfig` (daemon/logs.go `mergeAndVerifyLogConfig`,
/// daemon/logger/factory.go `ValidateLogOpts`): the default driver filled in, then the options
/// checked. The drivers here are `json-file` and `none`; any other is one this engine was not
/// built with, as dockerd says of a driver it lacks.
fn validate_log_config(host: &mut HostConfig) -> Result<(), EngineError> {
    let kind = log_type(host).to_string();
    let options = log_options(host);
    host.log_config.kind.clone_from(&kind);
    crate::container::logs::validate_driver(&kind, &options).map_err(|err| {
        EngineError::InvalidParameter {
            reason: err.to_string(),
        }
    })
}

/// A container `create` made.
#[derive(Debug, Clone)]
pub struct Created {
    /// Its id.
    pub id: String,
    /// Docker's warnings about its options.
    pub warnings: Vec<String>,
}

impl Engine {
    /// Creates a container from an image.
    pub async fn create(&self, request: CreateRequest) -> Result<Created, EngineError> {
        let CreateRequest {
            name,
            mut config,
            mut host_config,
            networking_config,
        } = request;
        // Judged on the request as sent, before create fills in dockerd's defaults.
        let warnings = create_warnings(&host_config);
        unsupported::check_create(&unsupported::Request {
            config: &config,
            host: &host_config,
            networking: &networking_config,
        })?;
        // The first network's settings; the others are joined after it at start.
        let (networking_config, more_networks) =
            super::networks::split_networks(&host_config, &networking_config);
        super::networks::check_create(&config, &host_config, &networking_config)?;
        let more_networks =
            super::networks::check_more_networks(&host_config, &more_networks, |n| {
                self.find_network(n)
            })?;
        let requested_ip =
            super::networks::check_requested_ip(&networking_config, |n| self.find_network(n))?;
        let requested_mac =
            super::networks::requested_mac(&config, &host_config, &networking_config)?;
        host_config::normalize_host_config(&mut host_config)?;
        validate_log_config(&mut host_config)?;
        if let Some(name) = &name {
            config::validate_name(name)?;
        }
        if config.image.is_empty() {
            return Err(EngineError::InvalidParameter {
                reason: "config cannot be empty in order to create a container".into(),
            });
        }
        config::validate_config(&mut config)?;
        restart::validate_create(&config, &host_config)?;
        options::validate(&mut host_config, &config, &|r| {
            self.container(r).ok().map(|c| (c.record(), c.dir.clone()))
        })?;
        let image = self.resolve_image(&config.image).await?;
        config::merge_image_config(&mut config, &image);
        config::check_working_dir(
            &config.working_dir,
            &self.inner.images.rootfs_layers(&image.id)?,
        )?;
        // From choosing the volumes until the container is in the table, so that no
        // `volume rm`/`prune` deletes one under it.
        let uses = self.volume_uses_lock();
        let (mount_points, created) = self.mount_points_for(&config, &host_config)?;
        let mut argv = config.entrypoint.clone().unwrap_or_default();
        argv.extend(config.cmd.clone().unwrap_or_default());
        let Some((path, args)) = argv.split_first() else {
            self.remove_unused_anonymous_locked(created);
            return Err(EngineError::InvalidParameter {
                reason: "no command specified".into(),
            });
        };
        let id = new_id();
        let dir = self.inner.state.dir(&id);
        let container = (|| {
            let mut table = lock(&self.inner.table);
            let name = match name {
                Some(name) => {
                    let name = name.trim_start_matches('/').to_string();
                    if let Some(holder) = table.names.get(&name) {
                        return Err(EngineError::NameConflict {
                            name,
                            id: holder.clone(),
                        });
                    }
                    name
                }
                None => names::generate(|n| table.names.contains_key(n)),
            };
            let record = ContainerRecord {
                id: id.clone(),
                name: format!("/{name}"),
                created: Utc::now(),
                path: path.clone(),
                args: args.to_vec(),
                image_id: image.id.clone(),
                config,
                host_config,
                state: ContainerState {
                    status: Status::Created,
                    paused: false,
                    pid: 0,
                    exit_code: 0,
                    error: String::new(),
                    started_at: None,
                    finished_at: None,
                    health: None,
                },
                restart_count: 0,
                mount_points,
            };
            let container = Container::new(record, dir.clone());
            table.names.insert(name, id.clone());
            table.by_id.insert(id.clone(), container.clone());
            Ok(container)
        })();
        let container = match container {
            Ok(container) => container,
            Err(err) => {
                self.remove_unused_anonymous_locked(created);
                return Err(err);
            }
        };
        drop(uses);
        let saved = self
            .inner
            .state
            .create_dir(&id)
            .and_then(|()| self.inner.state.save(&container.record()))
            .map_err(EngineError::from)
            .and_then(|()| super::networks::save_aliases(&dir, &networking_config))
            .and_then(|()| super::networks::save_requested_ip(&dir, requested_ip))
            .and_then(|()| super::networks::save_mac(&dir, requested_mac))
            .and_then(|()| super::networks::save_extras(&dir, &more_networks));
        if let Err(err) = saved {
            self.forget(&container);
            let _ = self.inner.state.remove(&id);
            let _uses = self.volume_uses_lock();
            self.remove_unused_anonymous_locked(created);
            return Err(err);
        }
        info!(container = %id, "created");
        self.emit(&container.record(), "create", &[]);
        Ok(Created { id, warnings })
    }

    pub(super) async fn resolve_image(&self, reference: &str) -> Result<ImageRecord, EngineError> {
        let images = self.inner.images.clone();
        let reference = reference.to_string();
        tokio::task::spawn_blocking(move || images.resolve(&reference))
            .await
            .map_err(|e| EngineError::Task {
                reason: e.to_string(),
            })?
            .map_err(EngineError::from)
    }
}
