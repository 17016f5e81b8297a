//! Showing `create`/`start` progress: a spinner with elapsed times on a terminal, plain lines
//! otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rmachine_host::machine::Progress;

/// Renders [`Progress`] steps.
pub struct Renderer {
    fancy: bool,
    started: Instant,
    current: Mutex<Option<(ProgressBar, String, Instant)>>,
}

impl Renderer {
    /// A spinner on a terminal unless `plain`; plain lines otherwise.
    pub fn new(plain: bool) -> Self {
        Self {
            fancy: !plain && std::io::stdout().is_terminal(),
            started: Instant::now(),
            current: Mutex::new(None),
        }
    }

    fn finish_current(&self, current: &mut Option<(ProgressBar, String, Instant)>) {
        if let Some((bar, message, started)) = current.take() {
            bar.finish_and_clear();
            bar.println(format!("{message} ({})", human(started.elapsed())));
        }
    }

    /// Shows one step.
    pub fn step(&self, step: Progress) {
        let message = step.to_string();
        if !self.fancy {
            println!("{message}");
            return;
        }
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        self.finish_current(&mut current);
        if step == Progress::EngineReady {
            // The last step: nothing to wait for, so no spinner; say how long it all took.
            println!("{message} ({} in total)", human(self.started.elapsed()));
            return;
        }
        // docker-machine prints its steps on stdout; keep them there.
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            bar.set_style(style);
        }
        bar.set_message(message.clone());
        bar.enable_steady_tick(Duration::from_millis(120));
        *current = Some((bar, message, Instant::now()));
    }

    /// Ends the last step's spinner.
    pub fn finish(&self) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        self.finish_current(&mut current);
    }
}

impl Drop for Renderer {
    fn drop(&mut self) {
        self.finish();
    }
}

fn human(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
