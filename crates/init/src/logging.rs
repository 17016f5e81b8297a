//! Console logging: one line per event, stamped with the time since the kernel started.
//!
//! Every line reads `[   1.234] rmachine-init: message`, so `console.log` on the host doubles
//! as a boot-time breakdown (the stamps use the same clock as the kernel's own messages).

use std::fmt;
use std::time::Duration;

use rmachine_guest_config::timeline::GuestStage;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Time since boot (`CLOCK_BOOTTIME`), zero if the clock cannot be read.
pub fn since_boot() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(Duration::from)
        .unwrap_or_default()
}

/// Prints the console line that marks a boot stage (see [`rmachine_guest_config::timeline`]):
/// the host reads these lines for the boot timeline, and [`Stage::EngineUp`]'s as the signal
/// that the engine is ready.
///
/// Returns the mark printed, for [`print_stage`] to print again.
///
/// [`Stage::EngineUp`]: rmachine_guest_config::timeline::Stage::EngineUp
pub fn stage(stage: rmachine_guest_config::timeline::Stage) -> GuestStage {
    let mark = GuestStage {
        stage,
        ms: u64::try_from(since_boot().as_millis()).unwrap_or(u64::MAX),
    };
    print_stage(&mark);
    mark
}

/// Prints the console line of a stage mark as it is, with its own milliseconds (a boot
/// snapshot's restored guest repeats the lines its console lost, see
/// [`crate::boot_snapshot`]).
pub fn print_stage(mark: &GuestStage) {
    tracing::info!("{}", mark.console_line());
}

/// Renders the uptime stamp that opens every console line.
pub fn stamp(uptime: Duration) -> String {
    format!("[{:4}.{:03}]", uptime.as_secs(), uptime.subsec_millis())
}

/// The console line format: uptime stamp, program name, level when not `INFO`, fields.
struct ConsoleFormat;

impl<S, N> FormatEvent<S, N> for ConsoleFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "{} rmachine-init: ", stamp(since_boot()))?;
        let level = *event.metadata().level();
        if level != Level::INFO {
            write!(writer, "{}: ", level.as_str().to_lowercase())?;
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, "{}: ", span.name())?;
            }
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Installs the console subscriber (stderr, which PID 1 points at `/dev/console`).
///
/// `RMACHINE_INIT_LOG` (e.g. `debug`) raises verbosity; the default is `info`.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RMACHINE_INIT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second call (the supervisor after fork inherits the subscriber) is harmless.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .event_format(ConsoleFormat)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_has_millisecond_resolution() {
        assert_eq!(stamp(Duration::from_millis(1234)), "[   1.234]");
        assert_eq!(stamp(Duration::from_millis(98_007)), "[  98.007]");
    }
}
