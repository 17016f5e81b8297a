//! `docker start`: preparing a container's bundle, launching the runtime, and the monitor task
//! that pumps a running container's output and records its exit.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use rmachine_runtime::spec::{self, RuntimeSpec};
use tracing::{debug, info, warn};

use super::create::{log_options, log_type};
use super::error::{io_err, EngineError};
use super::{host_config, options, restart, Engine, DRAIN_TIMEOUT};
use crate::container::launch::{self, LaunchError, LaunchIo, Launched};
use crate::container::logs::LogWriter;
use crate::container::{config, io, Container, StreamKind};
use crate::state::{ContainerRecord, Status};

impl Engine {
    /// Starts a created or exited container.
    pub async fn start(&self, reference: &str) -> Result<(), EngineError> {
        let c = self.container(reference)?;
        self.host_ready().await;
        let _op = c.op.lock().await;
        if c.lifecycle().borrow().removed {
            return Err(EngineError::NoSuchContainer {
                reference: reference.to_string(),
            });
        }
        let record = c.record();
        // Paused first: a paused container also runs (daemon/start.go `validateState`).
        if record.state.paused && record.state.status == Status::Running {
            return Err(EngineError::Conflict {
                reason: "cannot start a paused container, try unpause instead".into(),
            });
        }
        if record.state.status == Status::Running {
            return Err(EngineError::NotModified {
                id: c.id.clone(),
                state: "started",
            });
        }
        // `State.OOMKilled` describes the last run only.
        let _ = std::fs::remove_file(c.dir.join(spec::OOM_KILLED_FILE));
        // A start that fails before the runtime runs (e.g. an unknown `-u` user) ends like one
        // the runtime refused: the error is recorded, waiters are told, `--rm` removes it.
        let prepared = match self.network_up(&record).await {
            Ok(net) => self.prepare(&c, &record, &net).await,
            Err(err) => Err(err),
        }
        .and_then(|spec| {
            let mut features = host_config::features_of(&record.host_config);
            options::apply(&record, &c.dir, &mut features, &|r| {
                self.container(r).ok().map(|c| (c.record(), c.dir.clone()))
            })?;
            Ok((spec, features))
        });
        let launched = match prepared {
            Ok((spec, features)) => {
                let stdio = launch::StdioOptions {
                    open_stdin: record.config.open_stdin,
                    console_size: config::console_size(&record.host_config),
                };
                let runtime = &self.inner.config.runtime;
                launch::launch_with(runtime, &c.dir, &spec, features, stdio)
                    .await
                    .map_err(|err| match err {
                        LaunchError::Failed(failed) => {
                            // dockerd's setExitCodeFromError: the code follows the message.
                            let (exit_code, message) =
                                launch::exit_code_from_error(&failed.message);
                            EngineError::StartFailed { message, exit_code }
                        }
                        err => EngineError::Launch {
                            id: c.id.clone(),
                            source: err,
                        },
                    })
            }
            Err(err) => Err(err),
        };
        match launched {
            Ok(launched) => {
                let pid = launched.pid;
                c.update(|r| {
                    r.state.status = Status::Running;
                    r.state.paused = false;
                    r.state.pid = pid;
                    r.state.error.clear();
                    r.state.exit_code = 0;
                    r.state.started_at = Some(Utc::now());
                    r.state.finished_at = None;
                });
                self.health_on_start(&c);
                c.notify(|l| l.running = true);
                if let Err(err) = self.inner.state.save(&c.record()) {
                    warn!(container = %c.id, error = %err, "cannot persist container state");
                }
                info!(container = %c.id, pid, "started");
                self.emit(&c.record(), "start", &[]);
                // Known before start returns: the CLI resizes the TTY right after start.
                if let LaunchIo::Pty { master } = &launched.io {
                    c.set_pty(master.try_clone().ok().map(Arc::new));
                }
                self.spawn_monitor(c.clone(), launched);
                Ok(())
            }
            Err(error) => {
                self.network_down(&c.id).await;
                let exit_code = match &error {
                    EngineError::StartFailed { exit_code, .. } => *exit_code,
                    _ => 128,
                };
                warn!(container = %c.id, error = %error, "start failed");
                let message = error.to_string();
                c.update(|r| {
                    r.state.exit_code = exit_code;
                    r.state.error = message;
                });
                self.inner.state.save(&c.record())?;
                c.close_subscribers();
                c.reset_stdin();
                c.notify(|l| {
                    l.exits += 1;
                    l.exit_code = exit_code;
                });
                if record.host_config.auto_remove {
                    self.remove_locked(&c)?;
                    self.remove_anonymous_volumes(&record.mount_points);
                }
                Err(error)
            }
        }
    }

    /// Prepares the container directory and builds the runtime spec.
    async fn prepare(
        &self,
        c: &Container,
        record: &ContainerRecord,
        net: &super::networks::Setup,
    ) -> Result<RuntimeSpec, EngineError> {
        let images = self.inner.images.clone();
        let image_id = record.image_id.clone();
        let lower_dirs = tokio::task::spawn_blocking(move || images.rootfs_layers(&image_id))
            .await
            .map_err(|e| EngineError::Task {
                reason: e.to_string(),
            })??;
        for sub in ["upper", "work", "merged"] {
            let path = c.dir.join(sub);
            std::fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        let lower_dirs =
            launch::with_init_layer(&c.dir, lower_dirs).map_err(|e| EngineError::Launch {
                id: c.id.clone(),
                source: e,
            })?;
        let config = &record.config;
        let hostname = effective_hostname(record);
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let files = [
            ("hostname", "/etc/hostname", format!("{hostname}\n")),
            (
                "hosts",
                "/etc/hosts",
                net.hosts(&host_config::extra_hosts(&record.host_config), &hostname),
            ),
            (
                "resolv.conf",
                "/etc/resolv.conf",
                match net.resolv_conf() {
                    Some(own) => own.to_string(),
                    None => options::resolv_conf(&record.host_config, &host_resolv),
                },
            ),
        ];
        let mut etc_files = Vec::new();
        for (file, destination, content) in files {
            let source = c.dir.join(file);
            launch::write_atomic(&source, content.as_bytes()).map_err(|e| EngineError::Launch {
                id: c.id.clone(),
                source: e,
            })?;
            // A mount of the user's on the path replaces the engine's file (dockerd's
            // `HasMountFor`).
            if record.mount_points.contains_key(destination) {
                continue;
            }
            etc_files.push(spec::EtcFile {
                source,
                destination: destination.to_string(),
            });
        }
        let mut search = vec![c.dir.join("upper")];
        search.extend(lower_dirs.iter().cloned());
        config::check_working_dir(&config.working_dir, &search)?;
        let group_add = config::group_add(&record.host_config);
        let user = config::resolve_user_with(&config.user, &search, &group_add)?;
        let env = config::container_env(config, &hostname, &user.home);
        let mut args = vec![record.path.clone()];
        args.extend(record.args.iter().cloned());
        let mut mounts = restart::tmpfs_mounts(&record.host_config);
        mounts.extend(self.prepare_mounts(c, record).await?);
        // Parents before children, whatever made them (moby's `sortMounts`).
        mounts.sort_by_key(|m| std::path::Path::new(&m.destination).components().count());
        Ok(RuntimeSpec {
            id: c.id.clone(),
            rootfs: spec::Rootfs {
                lower_dirs,
                upper_dir: c.dir.join("upper"),
                work_dir: c.dir.join("work"),
                merged_dir: c.dir.join("merged"),
            },
            process: spec::Process {
                args,
                env,
                cwd: if config.working_dir.is_empty() {
                    "/".into()
                } else {
                    config.working_dir.clone()
                },
                uid: user.uid,
                gid: user.gid,
                additional_gids: user.additional_gids,
                terminal: config.tty,
            },
            hostname,
            mounts,
            etc_files,
            readonly_rootfs: restart::readonly_rootfs(&record.host_config),
            network: net.namespace(),
        })
    }

    fn spawn_monitor(&self, c: Arc<Container>, launched: Launched) {
        let engine = self.clone();
        tokio::spawn(async move {
            let Launched { mut child, io, .. } = launched;
            let record = c.record();
            let tag = crate::container::logs::TagInfo {
                id: record.id.clone(),
                name: record.name.trim_start_matches('/').to_string(),
                image_id: record.image_id.clone(),
                image_name: record.config.image.clone(),
            };
            let attrs = crate::container::logs::extra_attributes(
                &log_options(&record.host_config),
                &record.config.labels,
                &record.config.env,
                &tag,
            )
            .unwrap_or_else(|err| {
                warn!(container = %c.id, error = %err, "cannot compute log attributes");
                BTreeMap::new()
            });
            // `--log-driver none`: the output goes to attached clients only.
            let log = if log_type(&record.host_config) == "none" {
                None
            } else {
                match LogWriter::open(&c.log_path()) {
                    Ok(log) => Some(log.with_attrs(attrs)),
                    Err(err) => {
                        warn!(container = %c.id, error = %err, "cannot open the container log");
                        None
                    }
                }
            };
            let log = Arc::new(std::sync::Mutex::new(log));
            let mut pumps = Vec::new();
            let stdin_rx = c.take_stdin();
            match io {
                LaunchIo::Pipes {
                    stdin,
                    stdout,
                    stderr,
                } => {
                    pumps.push(tokio::spawn(io::pump(
                        c.clone(),
                        log.clone(),
                        stdout,
                        StreamKind::Stdout,
                    )));
                    pumps.push(tokio::spawn(io::pump(
                        c.clone(),
                        log.clone(),
                        stderr,
                        StreamKind::Stderr,
                    )));
                    if let (Some(stdin), Some(rx)) = (stdin, stdin_rx) {
                        tokio::spawn(io::write_stdin(stdin, rx));
                    }
                }
                LaunchIo::Pty { master } => match io::pty_io(master) {
                    Ok(pty) => {
                        let pty = Arc::new(pty);
                        pumps.push(tokio::spawn(io::pump_pty(
                            c.clone(),
                            log.clone(),
                            pty.clone(),
                        )));
                        if let Some(rx) = stdin_rx {
                            tokio::spawn(io::write_pty(pty, rx));
                        }
                    }
                    Err(err) => warn!(container = %c.id, error = %err, "cannot use the PTY"),
                },
            }
            let code = match child.wait().await {
                Ok(status) => launch::exit_code(status),
                Err(err) => {
                    warn!(container = %c.id, error = %err, "cannot wait for the runtime");
                    255
                }
            };
            for pump in pumps {
                if tokio::time::timeout(DRAIN_TIMEOUT, pump).await.is_err() {
                    debug!(container = %c.id, "output still open after exit; closing it");
                }
            }
            engine.finish_run(&c, code).await;
        });
    }

    async fn finish_run(&self, c: &Arc<Container>, code: i64) {
        info!(container = %c.id, exit_code = code, "exited");
        // Until the record says exited, a `network connect` waiting on this lock would still
        // take the container for running and attach to a namespace being torn down.
        let net = c.net.lock().await;
        self.network_down(&c.id).await;
        options::unmount_shm(&c.dir);
        self.emit(&c.record(), "die", &[("exitCode", code.to_string())]);
        self.health_stop(c);
        c.update(|r| {
            r.state.status = Status::Exited;
            r.state.paused = false;
            r.state.pid = 0;
            r.state.exit_code = code;
            r.state.finished_at = Some(Utc::now());
        });
        drop(net);
        let auto_remove = c.record().host_config.auto_remove;
        // An auto-remove container is deleted next; persisting its exit first only costs a
        // write (after a crash, a record still saying "running" is removed at engine start).
        if !auto_remove && !c.lifecycle().borrow().removed {
            if let Err(err) = self.inner.state.save_unsynced(&c.record()) {
                warn!(container = %c.id, error = %err, "cannot persist container state");
            }
        }
        c.set_pty(None);
        c.close_subscribers();
        c.reset_stdin();
        c.notify(|l| {
            l.running = false;
            l.exits += 1;
            l.exit_code = code;
        });
        if auto_remove {
            let _op = c.op.lock().await;
            match self.remove_locked(c) {
                // `--rm` takes the container's anonymous volumes along, as dockerd's does.
                Ok(()) => self.remove_anonymous_volumes(&c.record().mount_points),
                Err(err) => warn!(container = %c.id, error = %err, "cannot auto-remove container"),
            }
        } else {
            self.after_exit(c, code);
        }
    }
}

/// The container's hostname: `-h`, or its short id as dockerd's default (also the name its
/// `/etc/hosts` lines give it).
pub(super) fn effective_hostname(record: &ContainerRecord) -> String {
    if record.config.hostname.is_empty() {
        record.short_id().to_string()
    } else {
        record.config.hostname.clone()
    }
}
