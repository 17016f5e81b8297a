//! Showing `create`/`start` progress: a spinner with elapsed times on a terminal, plain lines
//! otherwise.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rmachine_host::image::DownloadEvent;
use rmachine_host::machine::Progress;

/// Renders [`Progress`] steps.
pub struct Renderer {
    fancy: bool,
    /// `(NAME) ` before each plain line when several machines report at once.
    prefix: String,
    started: Instant,
    current: Mutex<Option<(ProgressBar, String, Instant)>>,
}

impl Renderer {
    /// A spinner on a terminal unless `plain`; plain lines otherwise.
    pub fn new(plain: bool) -> Self {
        Self {
            fancy: !plain && std::io::stdout().is_terminal(),
            prefix: String::new(),
            started: Instant::now(),
            current: Mutex::new(None),
        }
    }

    /// For machine `name` of `names`, which a command runs on at once: with several, plain
    /// lines prefixed `(NAME) ` as docker-machine prefixes its drivers' lines (spinners of
    /// several machines would overwrite each other).
    pub fn for_machine(plain: bool, name: &str, names: &[String]) -> Self {
        if names.len() > 1 {
            let mut renderer = Self::new(true);
            renderer.prefix = format!("({name}) ");
            renderer
        } else {
            Self::new(plain)
        }
    }

    fn finish_current(&self, current: &mut Option<(ProgressBar, String, Instant)>) {
        if let Some((bar, message, started)) = current.take() {
            bar.finish_and_clear();
            bar.println(format!("{message} ({})", human(started.elapsed())));
        }
    }

    /// Shows a download's progress: a byte bar on a terminal, one line per file otherwise.
    fn download(&self, event: DownloadEvent) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            DownloadEvent::Started { url, total } => {
                let message = format!("Downloading {url}...");
                if !self.fancy {
                    say(&format!("{}{message}", self.prefix));
                    return;
                }
                self.finish_current(&mut current);
                let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stdout());
                let template = if total.is_some() {
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}"
                } else {
                    "{spinner} {msg} {bytes} {bytes_per_sec}"
                };
                if let Ok(style) = ProgressStyle::with_template(template) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_message(message.clone());
                *current = Some((bar, message, Instant::now()));
            }
            DownloadEvent::Advanced { done } => {
                if let Some((bar, _, _)) = current.as_ref() {
                    bar.set_position(done);
                }
            }
            DownloadEvent::Finished => self.finish_current(&mut current),
        }
    }

    /// Shows one step.
    pub fn step(&self, step: Progress) {
        if let Progress::Download(event) = step {
            return self.download(event);
        }
        let message = step.to_string();
        if !self.fancy {
            say(&format!("{}{message}", self.prefix));
            return;
        }
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        self.finish_current(&mut current);
        if step == Progress::EngineReady {
            // The last step: nothing to wait for, so no spinner; say how long it all took.
            say(&format!(
                "{message} ({} in total)",
                human(self.started.elapsed())
            ));
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

/// Prints one line on stdout, ignoring failures: progress is not worth dying for, and once the
/// terminal is gone (SIGHUP, a closed pipe) `create` must still get to undo what it made.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

fn human(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
