//! Health checks as dockerd runs them (moby daemon/health.go, daemon/container/health.go).
//!
//! A container's `Config.Healthcheck` (the image's, with the fields the client set on top)
//! says what to run and when. While the container runs and is not paused, a monitor task
//! (`core/health.rs`) runs the test as an exec on a schedule, feeds each result to
//! [`Health::record`], which keeps the last five results and moves the status between
//! `starting`, `healthy` and `unhealthy`, and emits `health_status: STATUS` on every change.
//! This module holds the data and the rules; it runs nothing.
//!
//! [`Health`] is part of the container record (`State.Health`). As dockerd, the engine does
//! not write the record for each probe: the health state reaches the disk with the next write
//! of the record (start, pause, unpause, exit), so that after an engine restart `inspect`
//! shows what was last written.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::watch;

use crate::state::ContainerConfig;
pub use crate::state::HealthConfig;

/// Longest probe output kept; longer output is cut and ends with `...`.
pub const MAX_OUTPUT_LEN: usize = 4096;
/// Results kept in `State.Health.Log`.
pub const MAX_LOG_ENTRIES: usize = 5;
/// The shortest non-zero duration a healthcheck may set (Docker's `MinimumDuration`).
pub const MIN_DURATION_NS: i64 = 1_000_000;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_RETRIES: i64 = 3;

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A configured duration: zero means `default`. Create refuses a client's negative or
/// sub-millisecond values; an image's are not checked, so they are made harmless here
/// (negative: the default; below 1 ms: 1 ms) rather than probing in a tight loop.
fn ns(value: i64, default: Duration) -> Duration {
    match u64::try_from(value) {
        Ok(0) | Err(_) => default,
        Ok(n) => Duration::from_nanos(n.max(MIN_DURATION_NS.unsigned_abs())),
    }
}

impl HealthConfig {
    /// The `Test` words (`[]` when unset).
    pub fn test_words(&self) -> &[String] {
        self.test.as_deref().unwrap_or_default()
    }

    /// dockerd's `validateHealthCheck`, with its texts.
    pub fn validate(&self) -> Result<(), String> {
        let min = go_duration(Duration::from_nanos(MIN_DURATION_NS.unsigned_abs()));
        let short = |v: i64| v != 0 && v < MIN_DURATION_NS;
        if short(self.interval) {
            return Err(format!("Interval in Healthcheck cannot be less than {min}"));
        }
        if short(self.timeout) {
            return Err(format!("Timeout in Healthcheck cannot be less than {min}"));
        }
        if self.retries < 0 {
            return Err("Retries in Healthcheck cannot be negative".into());
        }
        if short(self.start_period) {
            return Err(format!(
                "StartPeriod in Healthcheck cannot be less than {min}"
            ));
        }
        if short(self.start_interval) {
            return Err(format!(
                "StartInterval in Healthcheck cannot be less than {min}"
            ));
        }
        // dockerd accepts any other test type and then never probes (a warning in its log);
        // refused here, since an accepted healthcheck that never runs would be dropped.
        let test = self.test_words();
        match test.first().map(String::as_str) {
            None | Some("NONE") => Ok(()),
            Some("CMD" | "CMD-SHELL") if test.len() > 1 => Ok(()),
            Some(kind @ ("CMD" | "CMD-SHELL")) => {
                Err(format!("healthcheck type '{kind}' needs a command"))
            }
            Some(other) => Err(format!(
                "unknown healthcheck type '{other}' (expected 'CMD', 'CMD-SHELL' or 'NONE')"
            )),
        }
    }

    /// dockerd's merge of the image's healthcheck under the container's (daemon/commit.go
    /// `merge`): without one of its own the container takes the image's; otherwise each zero
    /// field of the container's takes the image's value.
    pub fn merge(user: Option<HealthConfig>, image: Option<&HealthConfig>) -> Option<HealthConfig> {
        let Some(image) = image else {
            return user;
        };
        let Some(mut user) = user else {
            return Some(image.clone());
        };
        if user.test_words().is_empty() {
            user.test = image.test.clone();
        }
        for (mine, theirs) in [
            (&mut user.interval, image.interval),
            (&mut user.timeout, image.timeout),
            (&mut user.start_period, image.start_period),
            (&mut user.start_interval, image.start_interval),
            (&mut user.retries, image.retries),
        ] {
            if *mine == 0 {
                *mine = theirs;
            }
        }
        Some(user)
    }

    /// The probe's argv (`CMD-SHELL` through `shell`, else `/bin/sh -c`), or `None` when
    /// nothing is to be probed (no test, `NONE`, an unknown type), as dockerd's `getProbe`.
    pub fn probe_command(&self, shell: &[String]) -> Option<Vec<String>> {
        let (kind, rest) = self.test_words().split_first()?;
        let mut argv = match kind.as_str() {
            "CMD" => Vec::new(),
            "CMD-SHELL" if shell.is_empty() => vec!["/bin/sh".to_string(), "-c".to_string()],
            "CMD-SHELL" => shell.to_vec(),
            _ => return None,
        };
        argv.extend(rest.iter().cloned());
        (!rest.is_empty()).then_some(argv)
    }

    /// Time between probes.
    pub fn interval(&self) -> Duration {
        ns(self.interval, DEFAULT_INTERVAL)
    }

    /// Time a probe may run.
    pub fn timeout(&self) -> Duration {
        ns(self.timeout, DEFAULT_TIMEOUT)
    }

    /// The start period (none by default).
    pub fn start_period(&self) -> Duration {
        ns(self.start_period, Duration::ZERO)
    }

    /// Time between probes in the start period.
    pub fn start_interval(&self) -> Duration {
        ns(self.start_interval, DEFAULT_START_INTERVAL)
    }

    /// Consecutive failures before `unhealthy`.
    pub fn retries(&self) -> i64 {
        if self.retries <= 0 {
            DEFAULT_RETRIES
        } else {
            self.retries
        }
    }

    /// The wait before the next probe, `elapsed` after the container started (dockerd's
    /// `getInterval`): the start interval while `starting` in the start period, never past
    /// the end of the start period.
    pub fn next_wait(&self, elapsed: Duration, status: HealthStatus) -> Duration {
        let (interval, period) = (self.interval(), self.start_period());
        if elapsed >= period {
            return interval;
        }
        let remaining = period - elapsed;
        if remaining < interval {
            return remaining;
        }
        if status == HealthStatus::Starting {
            self.start_interval()
        } else {
            interval
        }
    }
}

/// A health status (`State.Health.Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// No probe has succeeded since the start.
    Starting,
    /// The last probe succeeded.
    Healthy,
    /// `Retries` probes in a row failed, or the checks stopped.
    Unhealthy,
}

impl HealthStatus {
    /// Docker's lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// What a `docker ps --filter health=` value may be (moby's `IsValidHealthString`).
pub fn is_filter_value(value: &str) -> bool {
    matches!(value, "starting" | "healthy" | "unhealthy" | "none")
}

/// One probe's result (`State.Health.Log[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthcheckResult {
    /// When the probe began.
    pub start: DateTime<Utc>,
    /// When it ended.
    pub end: DateTime<Utc>,
    /// 0 healthy, anything else a failure; -1 when it timed out or could not run.
    pub exit_code: i64,
    /// Its output (stdout and stderr together), cut at [`MAX_OUTPUT_LEN`] bytes.
    pub output: String,
}

/// The health state of a container with a healthcheck (`State.Health`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    /// Current status.
    pub status: HealthStatus,
    /// Consecutive failures counted so far.
    pub failing_streak: i64,
    /// The last [`MAX_LOG_ENTRIES`] results, oldest first.
    #[serde(deserialize_with = "null_default")]
    pub log: Vec<HealthcheckResult>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            status: HealthStatus::Starting,
            failing_streak: 0,
            log: Vec::new(),
        }
    }
}

impl Health {
    /// The `docker ps` suffix: `health: starting`, `healthy` or `unhealthy`.
    pub fn describe(&self) -> &'static str {
        match self.status {
            HealthStatus::Starting => "health: starting",
            other => other.as_str(),
        }
    }

    /// Takes one probe's result (dockerd's `handleProbeResult`); returns the new status when
    /// it changed. A failure while `starting` within the start period (counted from
    /// `started_at`) does not count.
    pub fn record(
        &mut self,
        result: HealthcheckResult,
        config: &HealthConfig,
        started_at: Option<DateTime<Utc>>,
    ) -> Option<HealthStatus> {
        let old = self.status;
        let in_start_period = || {
            let since_start = started_at
                .and_then(|s| (result.start - s).to_std().ok())
                .unwrap_or(Duration::ZERO);
            since_start < config.start_period()
        };
        if result.exit_code == 0 {
            self.failing_streak = 0;
            self.status = HealthStatus::Healthy;
        } else if !(self.status == HealthStatus::Starting && in_start_period()) {
            self.failing_streak += 1;
            if self.failing_streak >= config.retries() {
                self.status = HealthStatus::Unhealthy;
            }
        }
        if self.log.len() >= MAX_LOG_ENTRIES {
            self.log.drain(..=self.log.len() - MAX_LOG_ENTRIES);
        }
        self.log.push(result);
        (self.status != old).then_some(self.status)
    }
}

/// Checks the client's `Config.Healthcheck` (dockerd's `validateHealthCheck`).
pub fn validate_config(config: &ContainerConfig) -> Result<(), String> {
    config
        .healthcheck
        .as_ref()
        .map_or(Ok(()), HealthConfig::validate)
}

/// Merges the image's healthcheck under the container's (see [`HealthConfig::merge`]).
pub fn merge_image(config: &mut ContainerConfig, image: Option<&HealthConfig>) {
    config.healthcheck = HealthConfig::merge(config.healthcheck.take(), image);
}

/// The container's healthcheck and probe argv, when it has a probe to run.
pub fn probe_of(config: &ContainerConfig) -> Option<(HealthConfig, Vec<String>)> {
    let health = config.healthcheck.clone()?;
    let argv = health.probe_command(config.shell.as_deref().unwrap_or_default())?;
    Some((health, argv))
}

/// Probe output, kept up to [`MAX_OUTPUT_LEN`] bytes (dockerd's `limitedBuffer`).
#[derive(Debug, Default)]
pub struct OutputBuffer {
    buf: Vec<u8>,
    truncated: bool,
}

impl OutputBuffer {
    /// Appends what still fits; notes that the rest was lost.
    pub fn push(&mut self, data: &[u8]) {
        let keep = MAX_OUTPUT_LEN
            .saturating_sub(self.buf.len())
            .min(data.len());
        self.buf.extend_from_slice(&data[..keep]);
        self.truncated |= keep < data.len();
    }

    /// The text, ending with `...` when output was lost; invalid UTF-8 becomes U+FFFD, as Go's
    /// JSON encoding of the string does.
    pub fn text(&self) -> String {
        let mut out = String::from_utf8_lossy(&self.buf).into_owned();
        if self.truncated {
            out.push_str("...");
        }
        out
    }
}

/// Go's `time.Duration.String()`, which Docker's messages use (`1ms`, `1.5s`, `1m30s`).
pub fn go_duration(d: Duration) -> String {
    let total = d.as_nanos();
    if total == 0 {
        return "0s".into();
    }
    let frac = |value: u128, unit: u128| -> String {
        let whole = value / unit;
        let rest = value % unit;
        if rest == 0 {
            return whole.to_string();
        }
        let width = unit.ilog10() as usize;
        let digits = format!("{rest:0width$}");
        format!("{whole}.{}", digits.trim_end_matches('0'))
    };
    if total < 1_000 {
        return format!("{total}ns");
    }
    if total < 1_000_000 {
        return format!("{}µs", frac(total, 1_000));
    }
    if total < 1_000_000_000 {
        return format!("{}ms", frac(total, 1_000_000));
    }
    let secs = total / 1_000_000_000;
    let sub = total % 1_000_000_000;
    let (hours, minutes, seconds) = (secs / 3600, secs / 60 % 60, secs % 60);
    let seconds = frac(seconds * 1_000_000_000 + sub, 1_000_000_000);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

/// The stop switch of a container's running monitor (dockerd's `Health.stop` channel): at
/// most one monitor runs per container.
#[derive(Debug, Default)]
pub struct MonitorSlot(Mutex<Option<watch::Sender<bool>>>);

impl MonitorSlot {
    fn lock(&self) -> MutexGuard<'_, Option<watch::Sender<bool>>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens the slot: a receiver that learns when to stop, or `None` when a monitor already
    /// runs.
    pub fn open(&self) -> Option<watch::Receiver<bool>> {
        let mut slot = self.lock();
        if slot.is_some() {
            return None;
        }
        let (tx, rx) = watch::channel(false);
        *slot = Some(tx);
        Some(rx)
    }

    /// Tells the running monitor, if any, to stop; returns whether there was one.
    pub fn close(&self) -> bool {
        match self.lock().take() {
            Some(tx) => {
                let _ = tx.send(true);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: i64) -> i64 {
        s * 1_000_000_000
    }

    fn result(at: DateTime<Utc>, exit_code: i64) -> HealthcheckResult {
        HealthcheckResult {
            start: at,
            end: at,
            exit_code,
            output: String::new(),
        }
    }

    #[test]
    fn validation_uses_dockers_texts() {
        let ok = HealthConfig {
            test: Some(vec!["CMD-SHELL".into(), "true".into()]),
            interval: MIN_DURATION_NS,
            ..Default::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = |c: HealthConfig| c.validate().unwrap_err();
        assert_eq!(
            bad(HealthConfig {
                interval: 500_000,
                ..Default::default()
            }),
            "Interval in Healthcheck cannot be less than 1ms"
        );
        assert_eq!(
            bad(HealthConfig {
                timeout: -1,
                ..Default::default()
            }),
            "Timeout in Healthcheck cannot be less than 1ms"
        );
        assert_eq!(
            bad(HealthConfig {
                retries: -2,
                ..Default::default()
            }),
            "Retries in Healthcheck cannot be negative"
        );
        assert_eq!(
            bad(HealthConfig {
                start_period: 1,
                ..Default::default()
            }),
            "StartPeriod in Healthcheck cannot be less than 1ms"
        );
        assert_eq!(
            bad(HealthConfig {
                start_interval: 1,
                ..Default::default()
            }),
            "StartInterval in Healthcheck cannot be less than 1ms"
        );
        assert!(bad(HealthConfig {
            test: Some(vec!["HTTP".into(), "x".into()]),
            ..Default::default()
        })
        .contains("'HTTP'"));
    }

    #[test]
    fn container_fields_override_the_images_non_zero_ones() {
        let image = HealthConfig {
            test: Some(vec!["CMD".into(), "true".into()]),
            interval: secs(5),
            retries: 7,
            ..Default::default()
        };
        assert_eq!(HealthConfig::merge(None, Some(&image)), Some(image.clone()));
        let user = HealthConfig {
            interval: secs(1),
            ..Default::default()
        };
        let merged = HealthConfig::merge(Some(user), Some(&image)).unwrap();
        assert_eq!(merged.test, image.test);
        assert_eq!((merged.interval, merged.retries), (secs(1), 7));
        let none = HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        };
        let merged = HealthConfig::merge(Some(none), Some(&image)).unwrap();
        assert_eq!(merged.probe_command(&[]), None);
    }

    #[test]
    fn probe_commands_follow_the_test_type() {
        let test = |t: &[&str]| HealthConfig {
            test: Some(t.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        assert_eq!(
            test(&["CMD", "ls", "/"]).probe_command(&[]),
            Some(vec!["ls".to_string(), "/".to_string()])
        );
        assert_eq!(
            test(&["CMD-SHELL", "exit 1"]).probe_command(&[]),
            Some(vec!["/bin/sh".into(), "-c".into(), "exit 1".into()])
        );
        let shell = vec!["/bin/ash".to_string(), "-ec".to_string()];
        assert_eq!(
            test(&["CMD-SHELL", "true"]).probe_command(&shell),
            Some(vec!["/bin/ash".into(), "-ec".into(), "true".into()])
        );
        assert_eq!(test(&["NONE"]).probe_command(&[]), None);
        assert_eq!(test(&[]).probe_command(&[]), None);
    }

    #[test]
    fn status_moves_as_dockerd_moves_it() {
        let config = HealthConfig {
            retries: 2,
            start_period: secs(10),
            ..Default::default()
        };
        let started = Utc::now();
        let mut h = Health::default();
        // Failures inside the start period while starting do not count.
        assert_eq!(h.record(result(started, 1), &config, Some(started)), None);
        assert_eq!(h.failing_streak, 0);
        let late = started + chrono::Duration::seconds(11);
        assert_eq!(h.record(result(late, 1), &config, Some(started)), None);
        assert_eq!(
            h.record(result(late, 2), &config, Some(started)),
            Some(HealthStatus::Unhealthy)
        );
        assert_eq!(
            h.record(result(late, 0), &config, Some(started)),
            Some(HealthStatus::Healthy)
        );
        assert_eq!(h.failing_streak, 0);
        // Once healthy, failures count even inside the start period.
        let mut h = Health::default();
        h.record(result(started, 0), &config, Some(started));
        h.record(result(started, 1), &config, Some(started));
        assert_eq!(h.failing_streak, 1);
        for _ in 0..7 {
            h.record(result(started, 0), &config, Some(started));
        }
        assert_eq!(h.log.len(), MAX_LOG_ENTRIES);
        assert_eq!(h.describe(), "healthy");
        assert_eq!(Health::default().describe(), "health: starting");
    }

    #[test]
    fn the_schedule_follows_the_start_period() {
        let config = HealthConfig {
            interval: secs(30),
            start_period: secs(60),
            start_interval: secs(2),
            ..Default::default()
        };
        let s = Duration::from_secs;
        assert_eq!(config.next_wait(s(0), HealthStatus::Starting), s(2));
        assert_eq!(config.next_wait(s(0), HealthStatus::Healthy), s(30));
        assert_eq!(config.next_wait(s(50), HealthStatus::Healthy), s(10));
        assert_eq!(config.next_wait(s(61), HealthStatus::Starting), s(30));
        assert_eq!(
            HealthConfig::default().next_wait(s(0), HealthStatus::Starting),
            s(30)
        );
    }

    #[test]
    fn an_images_bad_durations_cannot_make_probes_spin() {
        let config = HealthConfig {
            interval: -5,
            timeout: 1,
            ..Default::default()
        };
        assert_eq!(config.interval(), Duration::from_secs(30));
        assert_eq!(config.timeout(), Duration::from_millis(1));
    }

    #[test]
    fn output_is_capped_like_dockerds_buffer() {
        let mut out = OutputBuffer::default();
        out.push(b"hello ");
        out.push(&[b'x'; MAX_OUTPUT_LEN]);
        let text = out.text();
        assert_eq!(text.len(), MAX_OUTPUT_LEN + 3);
        assert!(text.starts_with("hello xx") && text.ends_with("x..."));
        let mut short = OutputBuffer::default();
        short.push(b"ok\n");
        assert_eq!(short.text(), "ok\n");
    }

    #[test]
    fn durations_print_as_go_prints_them() {
        let d = Duration::from_millis;
        assert_eq!(go_duration(d(1)), "1ms");
        assert_eq!(go_duration(d(500)), "500ms");
        assert_eq!(go_duration(d(1000)), "1s");
        assert_eq!(go_duration(d(1500)), "1.5s");
        assert_eq!(go_duration(d(90_000)), "1m30s");
        assert_eq!(go_duration(d(3_600_000)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn monitor_slot_holds_one_monitor() {
        let slot = MonitorSlot::default();
        let rx = slot.open().unwrap();
        assert!(slot.open().is_none());
        assert!(slot.close());
        assert!(*rx.borrow());
        assert!(!slot.close());
        assert!(slot.open().is_some());
    }
}
