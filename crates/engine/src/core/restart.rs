//! Restart policies (`--restart`), the create-time checks that go with them (`--stop-signal`),
//! and the host options that become runtime mounts (`--tmpfs`, `--read-only`).
//!
//! As dockerd's restart manager: after an exit the policy decides; restarts wait 100 ms, doubling
//! up to a minute, and the delay starts over once a run lasted 10 s.
//!
//! dockerd keeps two separate facts about a user's signal (daemon/kill.go `killWithSignal`):
//! - every `stop` and `kill` (any signal) sets `HasBeenManuallyStopped`, persisted: here the
//!   file `<container-dir>/stopped-by-user`. Only `unless-stopped` reads it, at the next exit
//!   and at engine start.
//! - `ExitOnNext` cancels the restart manager, in memory, until the user starts the container
//!   again: for `stop`, for SIGKILL, and for any other signal only when it is the container's
//!   `StopSignal` or the container has none. A canceled container is not restarted whatever
//!   its policy.
//!
//! At engine start (a fresh restart manager), containers that ran before are started again:
//! `always` ones, `unless-stopped` ones not stopped by their user, `on-failure` ones whose last
//! exit failed and that are under their retry limit (daemon/daemon.go `restore`,
//! `Container.ShouldRestart`).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rmachine_runtime::spec;
use tracing::{info, warn};

use super::signal::{parse_kill_signal, parse_signal, SIGKILL};
use super::{Engine, EngineError};
use crate::container::Container;
use crate::state::{ContainerConfig, HostConfig, Status};

/// Marker file: the user stopped this container.
const STOPPED_BY_USER: &str = "stopped-by-user";
/// First restart delay.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Longest restart delay.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// A run this long resets the delay.
const RESET_AFTER: Duration = Duration::from_secs(10);

/// The restart manager's state (dockerd keeps one per daemon): owned by the engine's shared
/// state, so two engines in one process (unit tests) keep theirs apart.
#[derive(Debug, Default)]
pub(super) struct RestartManager {
    /// Set once the engine shuts down: exits then are not restarts.
    shutting_down: AtomicBool,
    /// The containers' restart bookkeeping, under one lock.
    pending: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    /// The next delay of each container that is being restarted.
    delays: HashMap<String, Duration>,
    /// Containers waiting for a restart by policy (Docker's `restarting` state).
    restarting: HashSet<String>,
    /// Containers whose restart manager a user's signal canceled (dockerd's `ExitOnNext`).
    canceled: HashSet<String>,
}

impl RestartManager {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_canceled(&self, id: &str, on: bool) {
        let mut pending = self.pending();
        if on {
            pending.canceled.insert(id.to_string());
        } else {
            pending.canceled.remove(id);
        }
    }

    fn is_canceled(&self, id: &str) -> bool {
        self.pending().canceled.contains(id)
    }

    fn set_restarting(&self, id: &str, on: bool) {
        let mut pending = self.pending();
        if on {
            pending.restarting.insert(id.to_string());
        } else {
            pending.restarting.remove(id);
        }
    }

    fn is_restarting(&self, id: &str) -> bool {
        self.pending().restarting.contains(id)
    }

    /// The delay before the next restart: doubled while runs stay short, reset by a long one.
    fn next_delay(&self, id: &str, ran: Duration) -> Duration {
        let mut pending = self.pending();
        let delay = match pending.delays.get(id) {
            Some(previous) if ran < RESET_AFTER => (*previous * 2).min(MAX_DELAY),
            _ => FIRST_DELAY,
        };
        pending.delays.insert(id.to_string(), delay);
        delay
    }

    fn forget_delay(&self, id: &str) {
        self.pending().delays.remove(id);
    }

    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// Whether a user's `signal` cancels the restart manager (dockerd's `ExitOnNext`): SIGKILL
/// always; another signal when the container has no `StopSignal` or it is that signal.
pub(super) fn signal_cancels_restart(signal: i32, stop_signal: Option<&str>) -> bool {
    match stop_signal.filter(|s| !s.is_empty()) {
        Some(stop) if signal != SIGKILL => parse_signal(stop).is_ok_and(|s| s == signal),
        _ => true,
    }
}

pub use crate::state::RestartPolicy;

/// Reads the policy from a host config.
pub fn policy_of(host: &HostConfig) -> RestartPolicy {
    host.restart_policy.clone()
}

/// dockerd's check of a restart policy (`ValidateRestartPolicy`), with its texts.
pub fn validate_policy(policy: &RestartPolicy) -> Result<(), EngineError> {
    let invalid = |reason: String| EngineError::InvalidParameter { reason };
    match policy.name.as_str() {
        "" | "no" | "always" | "unless-stopped" => {
            if policy.maximum_retry_count != 0 {
                return Err(invalid(
                    "invalid restart policy: maximum retry count can only be used with 'on-failure'"
                        .into(),
                ));
            }
        }
        "on-failure" => {
            if policy.maximum_retry_count < 0 {
                return Err(invalid(
                    "invalid restart policy: maximum retry count cannot be negative".into(),
                ));
            }
        }
        other => {
            return Err(invalid(format!(
                "invalid restart policy: unknown policy '{other}'; use one of 'no', 'always', 'on-failure', or 'unless-stopped'"
            )))
        }
    }
    Ok(())
}

/// Docker's checks of a create request's restart policy and stop signal, with its texts.
pub fn validate_create(config: &ContainerConfig, host: &HostConfig) -> Result<(), EngineError> {
    let invalid = |reason: String| EngineError::InvalidParameter { reason };
    let policy = policy_of(host);
    validate_policy(&policy)?;
    if !policy.name.is_empty() && policy.name != "no" && host.auto_remove {
        return Err(invalid(
            "can't create 'AutoRemove' container with restart policy".into(),
        ));
    }
    if let Some(signal) = config.stop_signal.as_deref().filter(|s| !s.is_empty()) {
        parse_signal(signal)?;
    }
    Ok(())
}

/// `HostConfig.Tmpfs` (`{"/run": "size=64m"}`) as runtime mounts.
pub fn tmpfs_mounts(host: &HostConfig) -> Vec<spec::Mount> {
    let Some(map) = &host.tmpfs else {
        return Vec::new();
    };
    let mut mounts: Vec<spec::Mount> = map
        .iter()
        .map(|(destination, options)| {
            let options = options.as_str();
            let readonly = options.split(',').any(|o| o == "ro");
            // Docker's tmpfs defaults: no suid, no devices, no exec unless asked,
            // world-writable sticky root.
            let mut opts = vec!["nosuid".to_string(), "nodev".to_string()];
            if !options.split(',').any(|o| o == "exec") {
                opts.push("noexec".into());
            }
            if !options.split(',').any(|o| o.starts_with("mode=")) {
                opts.push("mode=1777".into());
            }
            opts.extend(
                options
                    .split(',')
                    .filter(|o| !o.is_empty() && !matches!(*o, "ro" | "rw" | "exec"))
                    .map(str::to_string),
            );
            spec::Mount {
                destination: destination.clone(),
                kind: spec::MountKind::Tmpfs {
                    options: opts.join(","),
                },
                readonly,
                propagation: String::new(),
            }
        })
        .collect();
    mounts.sort_by(|a, b| a.destination.cmp(&b.destination));
    mounts
}

/// `HostConfig.ReadonlyRootfs`.
pub fn readonly_rootfs(host: &HostConfig) -> bool {
    host.readonly_rootfs
}

fn marker(dir: &Path) -> std::path::PathBuf {
    dir.join(STOPPED_BY_USER)
}

impl Engine {
    /// Records that the user stopped the container (`docker stop`, `restart`, or a kill of a
    /// container waiting to restart): manually stopped, and no restart until the user starts it.
    pub fn mark_stopped_by_user(&self, reference: &str) -> Result<(), EngineError> {
        let c = self.container(reference)?;
        self.mark_manually_stopped(&c)?;
        self.inner.restarts.set_canceled(&c.id, true);
        self.inner.restarts.forget_delay(&c.id);
        Ok(())
    }

    /// Records a user's `docker kill -s SIGNAL` of a running container as dockerd's
    /// `killWithSignal` does: manually stopped always, restart canceled only for SIGKILL or the
    /// container's stop signal. `signal` must have been checked with [`parse_signal`].
    pub fn mark_killed_by_user(
        &self,
        reference: &str,
        signal: Option<&str>,
    ) -> Result<(), EngineError> {
        let c = self.container(reference)?;
        let signal = parse_signal(signal.unwrap_or("SIGKILL"))?;
        self.mark_manually_stopped(&c)?;
        if signal_cancels_restart(signal, c.record().config.stop_signal.as_deref()) {
            self.inner.restarts.set_canceled(&c.id, true);
            self.inner.restarts.forget_delay(&c.id);
        }
        Ok(())
    }

    fn mark_manually_stopped(&self, c: &Container) -> Result<(), EngineError> {
        let path = marker(&c.dir);
        std::fs::write(&path, b"").map_err(super::io_err(&path))
    }

    /// A start by the user: restarting is on again and the restart count starts over.
    pub async fn start_by_user(&self, reference: &str) -> Result<(), EngineError> {
        let c = self.container(reference)?;
        self.clear_user_stop(&c);
        self.start(reference).await
    }

    /// `docker stop`: the signal (if given) checked first, then the container marked stopped by
    /// its user (no restart by policy) and stopped.
    pub async fn stop_by_user(
        &self,
        reference: &str,
        timeout: Option<i64>,
        signal: Option<&str>,
    ) -> Result<(), EngineError> {
        let signal = signal.filter(|s| !s.is_empty());
        if let Some(signal) = signal {
            parse_signal(signal)?;
        }
        self.mark_stopped_by_user(reference)?;
        self.stop(reference, timeout, signal).await
    }

    /// `docker kill`, with dockerd's restart semantics (daemon/kill.go `killWithSignal`): a
    /// running container is marked killed by its user; killing a container waiting for its
    /// restart only cancels that restart.
    pub async fn kill_by_user(
        &self,
        reference: &str,
        signal: Option<&str>,
    ) -> Result<(), EngineError> {
        let signal = signal.filter(|s| !s.is_empty());
        if let Some(signal) = signal {
            parse_kill_signal(signal)?;
        }
        let c = self.container(reference)?;
        if c.record().state.status == Status::Running {
            self.mark_killed_by_user(reference, signal)?;
        } else if self.is_restarting(&c.id) {
            self.mark_stopped_by_user(reference)?;
            return Ok(());
        }
        self.kill(reference, signal).await
    }

    /// `docker restart`: stop (no policy restart meanwhile), then start as the user.
    pub async fn restart_by_user(
        &self,
        reference: &str,
        timeout: Option<i64>,
    ) -> Result<(), EngineError> {
        self.mark_stopped_by_user(reference)?;
        match self.stop(reference, timeout, None).await {
            Ok(()) | Err(EngineError::NotModified { .. }) => {}
            Err(err) => return Err(err),
        }
        self.start_by_user(reference).await?;
        // After the start, as moby's containerRestart (daemon/restart.go).
        let c = self.container(reference)?;
        self.emit(&c.record(), "restart", &[]);
        Ok(())
    }

    fn clear_user_stop(&self, c: &Container) {
        let _ = std::fs::remove_file(marker(&c.dir));
        self.inner.restarts.set_canceled(&c.id, false);
        self.inner.restarts.forget_delay(&c.id);
        if c.record().restart_count != 0 {
            c.update(|r| r.restart_count = 0);
            if let Err(err) = self.inner.state.save(&c.record()) {
                warn!(container = %c.id, error = %err, "cannot persist container state");
            }
        }
    }

    /// The container is waiting for a restart by its policy.
    pub fn is_restarting(&self, id: &str) -> bool {
        self.inner.restarts.is_restarting(id)
    }

    /// Gives up the pending restart by policy (a forced removal).
    pub fn cancel_restart(&self, id: &str) {
        self.inner.restarts.set_restarting(id, false);
        self.inner.restarts.forget_delay(id);
        self.inner.restarts.set_canceled(id, false);
    }

    /// Marks the engine as shutting down: exits from now on are not restarted.
    pub fn begin_shutdown(&self) {
        self.inner
            .restarts
            .shutting_down
            .store(true, Ordering::SeqCst);
    }

    /// Applies the restart policy after a run ended with `code`.
    pub(super) fn after_exit(&self, c: &Arc<Container>, code: i64) {
        let record = c.record();
        if record.host_config.auto_remove
            || c.lifecycle().borrow().removed
            || self.inner.restarts.is_shutting_down()
        {
            return;
        }
        if self.inner.restarts.is_canceled(&c.id) {
            self.inner.restarts.forget_delay(&c.id);
            return;
        }
        let policy = policy_of(&record.host_config);
        let restart = match policy.name.as_str() {
            "always" => true,
            "unless-stopped" => !marker(&c.dir).exists(),
            "on-failure" => {
                code != 0
                    && (policy.maximum_retry_count == 0
                        || i64::try_from(record.restart_count).unwrap_or(i64::MAX)
                            < policy.maximum_retry_count)
            }
            _ => false,
        };
        if !restart {
            self.inner.restarts.forget_delay(&c.id);
            return;
        }
        let ran = match (record.state.started_at, record.state.finished_at) {
            (Some(start), Some(end)) => (end - start).to_std().unwrap_or_default(),
            _ => Duration::ZERO,
        };
        let delay = self.inner.restarts.next_delay(&c.id, ran);
        let engine = self.clone();
        let id = c.id.clone();
        info!(container = %id, ?delay, "restarting by policy");
        self.inner.restarts.set_restarting(&id, true);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            engine.inner.restarts.set_restarting(&id, false);
            let Ok(c) = engine.container(&id) else {
                return;
            };
            if engine.inner.restarts.is_canceled(&id)
                || c.lifecycle().borrow().removed
                || engine.inner.restarts.is_shutting_down()
                || c.record().state.status == Status::Running
            {
                return;
            }
            c.update(|r| r.restart_count += 1);
            engine.emit(&c.record(), "restart", &[]);
            if let Err(err) = engine.start(&id).await {
                warn!(container = %id, error = %err, "restart by policy failed");
            }
        });
    }

    /// At engine start: starts the containers whose policy asks for it.
    pub async fn restart_on_boot(&self) {
        for record in self.list() {
            // dockerd restarts only containers that were started before (`HasBeenStartedBefore`).
            if record.state.status == Status::Running || record.state.started_at.is_none() {
                continue;
            }
            let Ok(c) = self.container(&record.id) else {
                continue;
            };
            let policy = policy_of(&record.host_config);
            let start = match policy.name.as_str() {
                "always" => true,
                "unless-stopped" => !marker(&c.dir).exists(),
                // As dockerd, whether the user stopped it does not matter to on-failure.
                "on-failure" => {
                    record.state.exit_code != 0
                        && (policy.maximum_retry_count == 0
                            || i64::try_from(record.restart_count).unwrap_or(i64::MAX)
                                < policy.maximum_retry_count)
                }
                _ => false,
            };
            if !start {
                continue;
            }
            info!(container = %record.id, policy = %policy.name, "starting by restart policy");
            if let Err(err) = self.start(&record.id).await {
                warn!(container = %record.id, error = %err, "cannot start container at engine start");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(policy: serde_json::Value) -> HostConfig {
        HostConfig {
            restart_policy: serde_json::from_value(policy).unwrap(),
            ..HostConfig::default()
        }
    }

    #[test]
    fn restart_policies_are_checked_with_dockers_texts() {
        let config = ContainerConfig::default();
        let check = |p: serde_json::Value| {
            validate_create(&config, &host(p))
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(check(serde_json::json!({"Name": "always"})), None);
        assert_eq!(
            check(serde_json::json!({"Name": "on-failure", "MaximumRetryCount": 3})),
            None
        );
        assert_eq!(
            check(serde_json::json!({"Name": "sometimes"})).unwrap(),
            "invalid restart policy: unknown policy 'sometimes'; use one of 'no', 'always', 'on-failure', or 'unless-stopped'"
        );
        assert_eq!(
            check(serde_json::json!({"Name": "always", "MaximumRetryCount": 2})).unwrap(),
            "invalid restart policy: maximum retry count can only be used with 'on-failure'"
        );
        let bad_signal = ContainerConfig {
            stop_signal: Some("FOO".into()),
            ..Default::default()
        };
        assert_eq!(
            validate_create(&bad_signal, &HostConfig::default())
                .unwrap_err()
                .to_string(),
            "invalid signal: FOO"
        );
    }

    #[test]
    fn tmpfs_options_get_dockers_defaults() {
        let host = HostConfig {
            tmpfs: Some([("/run".to_string(), "size=64m".to_string())].into()),
            ..HostConfig::default()
        };
        let mounts = tmpfs_mounts(&host);
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].destination, "/run");
        assert_eq!(
            mounts[0].kind,
            spec::MountKind::Tmpfs {
                options: "nosuid,nodev,noexec,mode=1777,size=64m".into()
            }
        );
    }

    #[test]
    fn only_kill_stop_signal_or_any_signal_without_one_cancels_restarting() {
        // No StopSignal configured (the CLI sends none by default): every signal cancels.
        assert!(signal_cancels_restart(libc::SIGHUP, None));
        assert!(signal_cancels_restart(libc::SIGUSR1, Some("")));
        assert!(signal_cancels_restart(libc::SIGKILL, Some("SIGUSR1")));
        assert!(signal_cancels_restart(libc::SIGUSR1, Some("usr1")));
        assert!(signal_cancels_restart(libc::SIGUSR1, Some("10")));
        assert!(!signal_cancels_restart(libc::SIGHUP, Some("SIGUSR1")));
        assert!(!signal_cancels_restart(libc::SIGTERM, Some("SIGQUIT")));
    }

    #[test]
    fn delays_double_and_reset_after_a_long_run() {
        let manager = RestartManager::default();
        let id = "delay-test";
        assert_eq!(manager.next_delay(id, Duration::ZERO), FIRST_DELAY);
        assert_eq!(manager.next_delay(id, Duration::ZERO), FIRST_DELAY * 2);
        assert_eq!(manager.next_delay(id, Duration::ZERO), FIRST_DELAY * 4);
        assert_eq!(manager.next_delay(id, Duration::from_secs(11)), FIRST_DELAY);
    }

    fn engine(dir: &Path) -> Engine {
        Engine::open(super::super::EngineConfig {
            exec_root: dir.join("exec-root"),
            data_root: dir.to_path_buf(),
            runtime: "/nonexistent/rmachine-runtime".into(),
            labels: vec![],
            registry: Default::default(),
            debug: false,
        })
        .unwrap()
    }

    /// The restart manager belongs to its engine: one engine's shutdown, pending restarts,
    /// cancellations and delays are not another's (they were process-global statics).
    #[test]
    fn two_engines_keep_their_restart_state_apart() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (engine(dir_a.path()), engine(dir_b.path()));
        let id = "shared-id";
        a.begin_shutdown();
        a.inner.restarts.set_restarting(id, true);
        a.inner.restarts.set_canceled(id, true);
        a.inner.restarts.next_delay(id, Duration::ZERO);
        assert!(a.inner.restarts.is_shutting_down() && a.is_restarting(id));
        assert!(!b.inner.restarts.is_shutting_down());
        assert!(!b.is_restarting(id));
        assert!(!b.inner.restarts.is_canceled(id));
        assert_eq!(b.inner.restarts.next_delay(id, Duration::ZERO), FIRST_DELAY);
    }
}
