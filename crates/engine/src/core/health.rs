//! The health-check monitor (moby daemon/health.go `monitor`, `cmdProbe.run`): one task per
//! running, unpaused container with a healthcheck, probing through the engine's exec
//! machinery (`exec_create` + attached `exec_start`, so the probes show up as `exec_create`,
//! `exec_start` and `exec_die` events as with dockerd).
//!
//! Lifecycle hooks, called by the container's state changes with its record already updated:
//! start → [`Engine::health_on_start`] (status `starting`, monitor started); pause and unpause
//! → [`Engine::health_follow_pause`] (monitor stopped, status `unhealthy`, as dockerd's
//! `CloseMonitorChannel`; restarted on unpause); exit → [`Engine::health_stop`]. A probe
//! result that arrives after the monitor was told to stop is dropped, checked under the
//! record's lock, so a stopped container never turns healthy again.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{send_signal, signal, Engine};
use crate::container::exec::ExecConfig;
use crate::container::health::{
    self, go_duration, Health, HealthConfig, HealthStatus, HealthcheckResult, OutputBuffer,
};
use crate::container::Container;
use crate::state::Status;

/// dockerd waits this long for the exec of a probe to start.
const EXEC_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a killed probe may take to end before its result is given up on.
const KILLED_PROBE_GRACE: Duration = Duration::from_secs(10);

fn failure(start: chrono::DateTime<Utc>, output: String) -> HealthcheckResult {
    HealthcheckResult {
        start,
        end: Utc::now(),
        exit_code: -1,
        output,
    }
}

impl Engine {
    /// After a start (by the user, a restart policy or at engine start): resets the health
    /// state to `starting`, keeping the log, and starts the monitor (dockerd's
    /// `initHealthMonitor`). The caller persists the record.
    pub(super) fn health_on_start(&self, c: &Arc<Container>) {
        let record = c.record();
        if health::probe_of(&record.config).is_none() {
            if let Some(kind) = record.config.healthcheck.as_ref().and_then(|h| {
                h.test_words()
                    .first()
                    .filter(|k| !matches!(k.as_str(), "CMD" | "CMD-SHELL" | "NONE"))
                    .cloned()
            }) {
                // Only an image can bring one: create refuses it from a client.
                warn!(container = %c.id, kind, "unknown healthcheck type; no health checks");
            }
            return;
        }
        c.health.close();
        c.update(|r| {
            let h = r.state.health.get_or_insert_with(Health::default);
            h.status = HealthStatus::Starting;
            h.failing_streak = 0;
        });
        self.health_update_monitor(c);
    }

    /// After a pause or unpause: the monitor runs only while the container runs unpaused
    /// (dockerd's `updateHealthMonitor`).
    pub(super) fn health_follow_pause(&self, c: &Container) {
        if let Ok(c) = self.container(&c.id) {
            self.health_update_monitor(&c);
        }
    }

    /// Stops the monitor, if one runs; the status becomes `unhealthy` then, as dockerd does
    /// "for compatibility reasons" when its monitor stops.
    pub(super) fn health_stop(&self, c: &Container) {
        if c.health.close() {
            c.update(|r| {
                if let Some(h) = &mut r.state.health {
                    h.status = HealthStatus::Unhealthy;
                }
            });
        }
    }

    fn health_update_monitor(&self, c: &Arc<Container>) {
        let record = c.record();
        if record.state.health.is_none() {
            return;
        }
        let probe = health::probe_of(&record.config);
        let wanted = record.state.status == Status::Running && !record.state.paused;
        match probe {
            Some((config, argv)) if wanted => {
                if let Some(stop) = c.health.open() {
                    tokio::spawn(monitor(self.clone(), c.clone(), stop, config, argv));
                }
            }
            _ => self.health_stop(c),
        }
    }

    /// Runs one probe; `None` when told to stop meanwhile (the probe is killed).
    async fn probe(
        &self,
        c: &Container,
        argv: &[String],
        timeout: Duration,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<HealthcheckResult> {
        let start = Utc::now();
        let exec = ExecConfig {
            cmd: argv.to_vec(),
            attach_stdout: true,
            attach_stderr: true,
            ..ExecConfig::default()
        };
        let id = match self.exec_create(&c.id, exec) {
            Ok(id) => id,
            Err(err) => return Some(failure(start, err.to_string())),
        };
        let result = self.probe_exec(c, &id, timeout, stop).await;
        // dockerd keeps finished execs for a while; probes run every few seconds for the
        // container's life, so this engine drops each one as soon as it is done.
        self.forget_exec(&id);
        result.map(|mut r| {
            r.start = start;
            r
        })
    }

    async fn probe_exec(
        &self,
        c: &Container,
        id: &str,
        timeout: Duration,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<HealthcheckResult> {
        let start = Utc::now();
        let started = tokio::time::timeout(EXEC_START_TIMEOUT, self.exec_start(id, false, None));
        let session = match started.await {
            Ok(Ok(Some(session))) => session,
            Ok(Ok(None)) => return Some(failure(start, "probe not attached".into())),
            Ok(Err(err)) => return Some(failure(start, err.to_string())),
            Err(_) => {
                return Some(failure(
                    start,
                    format!("timed out starting health check for container {}", c.id),
                ))
            }
        };
        let exec = match self.exec(id) {
            Ok(exec) => exec,
            Err(err) => return Some(failure(start, err.to_string())),
        };
        let mut output = session.output;
        if !exec.state().launched {
            // The exec could not start; its stream holds dockerd's error text.
            let mut text = OutputBuffer::default();
            while let Some(chunk) = output.recv().await {
                text.push(&chunk.data);
            }
            return Some(failure(start, text.text().trim_end().to_string()));
        }
        let mut buf = OutputBuffer::default();
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = loop {
            tokio::select! {
                _ = stop.changed() => {
                    send_signal(exec.state().pid, signal::SIGKILL);
                    return None;
                }
                next = tokio::time::timeout_at(deadline, output.recv()) => match next {
                    Ok(Some(chunk)) => buf.push(&chunk.data),
                    Ok(None) => break false,
                    Err(_) => break true,
                },
            }
        };
        if timed_out {
            debug!(container = %c.id, "health check taking too long");
            send_signal(exec.state().pid, signal::SIGKILL);
            // As dockerd: wait for the killed probe, so that dying probes do not pile up.
            let _ = tokio::time::timeout(KILLED_PROBE_GRACE, async {
                while output.recv().await.is_some() {}
            })
            .await;
            let out = buf.text();
            let limit = go_duration(timeout);
            let message = if out.is_empty() {
                format!("Health check exceeded timeout ({limit})")
            } else {
                format!("Health check exceeded timeout ({limit}): {out}")
            };
            return Some(failure(start, message));
        }
        Some(match exec.state().exit_code {
            Some(exit_code) => HealthcheckResult {
                start,
                end: Utc::now(),
                exit_code,
                output: buf.text(),
            },
            None => failure(
                start,
                format!("healthcheck for container {} has no exit code", c.id),
            ),
        })
    }
}

/// The monitor loop: wait, probe, record, until told to stop.
async fn monitor(
    engine: Engine,
    c: Arc<Container>,
    mut stop: watch::Receiver<bool>,
    config: HealthConfig,
    argv: Vec<String>,
) {
    let started = c.record().state.started_at.unwrap_or_else(Utc::now);
    loop {
        let status = c
            .record()
            .state
            .health
            .map_or(HealthStatus::Starting, |h| h.status);
        let elapsed = (Utc::now() - started).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(config.next_wait(elapsed, status)) => {}
        }
        debug!(container = %c.id, "running health check");
        let Some(result) = engine.probe(&c, &argv, config.timeout(), &mut stop).await else {
            return;
        };
        debug!(container = %c.id, exit_code = result.exit_code, "health check done");
        let changed = c.update(|r| {
            if *stop.borrow() {
                return None;
            }
            let started_at = r.state.started_at;
            r.state
                .health
                .get_or_insert_with(Health::default)
                .record(result, &config, started_at)
        });
        if let Some(status) = changed {
            engine.emit(
                &c.record(),
                &format!("health_status: {}", status.as_str()),
                &[],
            );
        }
    }
}
