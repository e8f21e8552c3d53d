//! The progress bar: drawn on stderr only when it is a terminal (and not
//! turned off), silent when piped, so captured output holds only results.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::report::group;

/// A per-step progress bar, or nothing.
pub struct Progress {
    enabled: bool,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A progress display if `wanted` and stderr is a terminal.
    pub fn new(wanted: bool) -> Progress {
        Progress {
            enabled: wanted && std::io::stderr().is_terminal(),
            bar: None,
        }
    }

    /// Whether anything is drawn.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Starts the bar of a step lasting `duration`.
    pub fn start_step(&mut self, label: String, duration: Duration) {
        if !self.enabled {
            return;
        }
        let bar = ProgressBar::with_draw_target(
            Some(duration.as_millis() as u64),
            ProgressDrawTarget::stderr_with_hz(5),
        );
        if let Ok(style) =
            ProgressStyle::with_template("{prefix} [{bar:30}] {elapsed_precise} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label);
        self.bar = Some(bar);
    }

    /// Updates the bar.
    pub fn update(&self, elapsed: Duration, sent: u64, valid: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(elapsed.as_millis() as u64);
            let share = if sent == 0 {
                0.0
            } else {
                100.0 * valid as f64 / sent as f64
            };
            bar.set_message(format!("sent {}, valid {share:.2} %", group(sent)));
        }
    }

    /// Removes the bar.
    pub fn finish_step(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_progress_draws_nothing() {
        let mut p = Progress::new(false);
        assert!(!p.enabled());
        p.start_step("x".into(), Duration::from_secs(1));
        p.update(Duration::from_millis(5), 10, 9);
        p.finish_step();
    }
}
