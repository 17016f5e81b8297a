//! A created container's lifecycle after start: stop, kill, restart, wait, pause/unpause and
//! rename.

use std::time::Duration;

use tracing::{info, warn};

use super::error::EngineError;
use super::{
    cgroup_err, cgroup_of, conflict, lock, parse_kill_signal, parse_signal, restart, send_signal,
    signal, Engine,
};
use crate::container::{config, Container, Lifecycle};
use crate::state::{ContainerRecord, Status};

/// What `wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCondition {
    /// Returns at once if the container does not run, else at its exit.
    NotRunning,
    /// The next exit.
    NextExit,
    /// Removal.
    Removed,
}

/// Signals the container and waits for its exit, escalating to SIGKILL after `timeout`
/// seconds (negative: no escalation).
///
/// Each signal delivered is a `kill` event, as moby's killWithSignal logs one for the stop
/// signal and again for the SIGKILL that follows a timeout (daemon/stop.go, kill.go).
pub(super) async fn stop_process(
    engine: &Engine,
    c: &Container,
    record: &ContainerRecord,
    signal: i32,
    timeout: i64,
) {
    let pid = record.state.pid;
    let mut lifecycle = c.lifecycle();
    let exits = lifecycle.borrow().exits;
    if lifecycle.borrow().exits > exits || !lifecycle.borrow().running {
        return;
    }
    let signal_event = |signal: i32| {
        engine.emit(record, "kill", &[("signal", signal.to_string())]);
    };
    let delivered = send_signal(pid, signal);
    if delivered {
        signal_event(signal);
    }
    let exited = |l: &Lifecycle| l.exits > exits;
    if timeout < 0 && delivered {
        let _ = lifecycle.wait_for(exited).await;
        return;
    }
    // As dockerd's containerStop: a stop signal that could not be sent leaves 2 s.
    let grace = if delivered {
        Duration::from_secs(u64::try_from(timeout).unwrap_or(0))
    } else {
        Duration::from_secs(2)
    };
    if signal != signal::SIGKILL
        && tokio::time::timeout(grace, lifecycle.wait_for(exited))
            .await
            .is_ok()
    {
        return;
    }
    // A SIGKILL already delivered needs no second one (nor a second event).
    if !(signal == signal::SIGKILL && delivered) {
        info!(container = %c.id, "did not stop in time; killing it");
        if send_signal(pid, signal::SIGKILL) {
            signal_event(signal::SIGKILL);
        }
    }
    if tokio::time::timeout(Duration::from_secs(30), lifecycle.wait_for(exited))
        .await
        .is_err()
    {
        warn!(container = %c.id, "still running 30s after SIGKILL");
    }
}

impl Engine {
    /// Stops a running container: its stop signal, then SIGKILL after `timeout` seconds
    /// (`None`: the container's StopTimeout, else 10; negative: wait forever).
    pub async fn stop(
        &self,
        reference: &str,
        timeout: Option<i64>,
        signal: Option<&str>,
    ) -> Result<(), EngineError> {
        let c = self.container(reference)?;
        let _op = c.op.lock().await;
        let record = c.record();
        if record.state.status != Status::Running {
            return Err(EngineError::NotModified {
                id: c.id.clone(),
                state: "stopped",
            });
        }
        let signal = parse_signal(
            signal
                .or(record.config.stop_signal.as_deref())
                .unwrap_or("SIGTERM"),
        )?;
        let timeout = timeout.or(record.config.stop_timeout).unwrap_or(10);
        self.thaw_for_signal(&c);
        stop_process(self, &c, &record, signal, timeout).await;
        self.emit(&record, "stop", &[]);
        Ok(())
    }

    /// Restarts a container (stop if running, then start).
    pub async fn restart(&self, reference: &str, timeout: Option<i64>) -> Result<(), EngineError> {
        match self.stop(reference, timeout, None).await {
            Ok(()) | Err(EngineError::NotModified { .. }) => {}
            Err(err) => return Err(err),
        }
        self.start(reference).await
    }

    /// Sends a signal (default SIGKILL) to a running container.
    pub async fn kill(&self, reference: &str, signal: Option<&str>) -> Result<(), EngineError> {
        let c = self.container(reference)?;
        let _op = c.op.lock().await;
        let record = c.record();
        if record.state.status != Status::Running {
            return Err(EngineError::NotRunning { id: c.id.clone() });
        }
        let signal = parse_kill_signal(signal.unwrap_or("SIGKILL"))?;
        let mut lifecycle = c.lifecycle();
        let exits = lifecycle.borrow().exits;
        send_signal(record.state.pid, signal);
        // dockerd resumes a paused container only for a signal that also cancels its restart
        // policy (daemon/kill.go `killWithSignal`); another one waits for `unpause`.
        if restart::signal_cancels_restart(signal, record.config.stop_signal.as_deref()) {
            self.thaw_for_signal(&c);
        }
        self.emit(&record, "kill", &[("signal", signal.to_string())]);
        if signal == signal::SIGKILL {
            // As dockerd: a kill with SIGKILL returns once the container is gone.
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                lifecycle.wait_for(|l| l.exits > exits),
            )
            .await;
        }
        Ok(())
    }

    /// Renames a container.
    /// Checks in moby's order and with its texts (daemon/rename.go): empty names, the
    /// container, the same name, then the new name's validity and availability.
    pub async fn rename(&self, reference: &str, new_name: &str) -> Result<(), EngineError> {
        let (reference, new_name) = (reference.trim(), new_name.trim());
        let bare = |n: &str| n.strip_prefix('/').unwrap_or(n).to_string();
        if bare(reference).is_empty() || bare(new_name).is_empty() {
            return Err(EngineError::InvalidParameter {
                reason: "Neither old nor new names may be empty".into(),
            });
        }
        let c = self.container(reference)?;
        let _op = c.op.lock().await;
        let new_name = bare(new_name);
        if c.record().name == format!("/{new_name}") {
            return Err(EngineError::InvalidParameter {
                reason: "Renaming a container with the same name as its current name".into(),
            });
        }
        let allocation = |source| EngineError::NameAllocation {
            source: Box::new(source),
        };
        config::validate_name(&format!("/{new_name}")).map_err(allocation)?;
        {
            let mut table = lock(&self.inner.table);
            if let Some(holder) = table.names.get(&new_name) {
                return Err(allocation(EngineError::NameConflict {
                    name: new_name,
                    id: holder.clone(),
                }));
            }
            table.names.retain(|_, id| *id != c.id);
            table.names.insert(new_name.clone(), c.id.clone());
        }
        let old_name = c.record().name;
        c.update(|r| r.name = format!("/{new_name}"));
        self.emit(&c.record(), "rename", &[("oldName", old_name)]);
        self.inner.state.save(&c.record())?;
        Ok(())
    }

    /// Registers a waiter and returns the future that resolves to the exit code. The waiter is
    /// registered before this returns, so a start issued afterwards cannot be missed.
    pub fn wait(
        &self,
        reference: &str,
        condition: WaitCondition,
    ) -> Result<impl std::future::Future<Output = i64> + Send + 'static, EngineError> {
        let c = self.container(reference)?;
        let mut lifecycle = c.lifecycle();
        let start = *lifecycle.borrow();
        Ok(async move {
            let done = |l: &Lifecycle| match condition {
                WaitCondition::NotRunning => !l.running,
                WaitCondition::NextExit => l.exits > start.exits || l.removed,
                WaitCondition::Removed => l.removed,
            };
            match lifecycle.wait_for(done).await {
                Ok(l) => l.exit_code,
                // The container object is gone; its last known code is the answer.
                Err(_) => start.exit_code,
            }
        })
    }

    /// Whether a container is paused (its record says so while it runs).
    pub fn is_paused(&self, id: &str) -> bool {
        self.container(id).is_ok_and(|c| {
            let record = c.record();
            record.state.paused && record.state.status == Status::Running
        })
    }

    /// Records the paused state, on disk too: a record must not call a frozen container
    /// running.
    fn set_paused(&self, c: &Container, paused: bool) {
        c.update(|r| r.state.paused = paused);
        self.health_follow_pause(c);
        if let Err(err) = self.inner.state.save(&c.record()) {
            warn!(container = %c.id, error = %err, "cannot persist container state");
        }
    }

    /// Thaws a paused container about to be signalled, so the signal is acted on (the
    /// caller holds its operation lock).
    pub(super) fn thaw_for_signal(&self, c: &Container) {
        if !c.record().state.paused {
            return;
        }
        match cgroup_of(&c.record()).and_then(|g| g.thaw().map_err(cgroup_err(&c.id))) {
            Ok(()) => {
                self.set_paused(c, false);
                self.emit(&c.record(), "unpause", &[]);
            }
            Err(err) => warn!(container = %c.id, error = %err, "cannot thaw container"),
        }
    }

    /// `docker pause`.
    pub async fn pause(&self, reference: &str) -> Result<(), EngineError> {
        let c = self.container(reference)?;
        let _op = c.op.lock().await;
        let record = c.record();
        if record.state.status != Status::Running {
            return Err(EngineError::NotRunning { id: c.id.clone() });
        }
        if self.is_paused(&c.id) {
            return Err(conflict(format!("Container {} is already paused", c.id)));
        }
        cgroup_of(&record)?.freeze().map_err(cgroup_err(&c.id))?;
        self.set_paused(&c, true);
        info!(container = %c.id, "paused");
        self.emit(&record, "pause", &[]);
        Ok(())
    }

    /// `docker unpause`.
    pub async fn unpause(&self, reference: &str) -> Result<(), EngineError> {
        let c = self.container(reference)?;
        let _op = c.op.lock().await;
        let record = c.record();
        if !self.is_paused(&c.id) {
            return Err(conflict(format!("Container {} is not paused", c.id)));
        }
        cgroup_of(&record)?.thaw().map_err(cgroup_err(&c.id))?;
        self.set_paused(&c, false);
        info!(container = %c.id, "unpaused");
        self.emit(&record, "unpause", &[]);
        Ok(())
    }
}
