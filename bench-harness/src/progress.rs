//! A one-line progress bar on stderr for long runs; silent when stderr is not a terminal (CI
//! logs get one summary line per run instead).

use std::io::{IsTerminal, Write};
use std::time::Duration;

/// Progress of one load run.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: Duration,
    enabled: bool,
    drawn: bool,
    last_completed: u64,
    last_elapsed: Duration,
}

impl Progress {
    /// A bar for a run of `total` (warm-up included); drawn only when `wanted` and stderr is a
    /// terminal.
    pub fn new(label: &str, total: Duration, wanted: bool) -> Self {
        Self {
            label: label.to_owned(),
            total,
            enabled: wanted && std::io::stderr().is_terminal(),
            drawn: false,
            last_completed: 0,
            last_elapsed: Duration::ZERO,
        }
    }

    /// Redraws the bar: `elapsed` of the run, `completed` responses and `errors` so far.
    pub fn update(&mut self, elapsed: Duration, completed: u64, errors: u64) {
        if !self.enabled {
            return;
        }
        let dt = elapsed.saturating_sub(self.last_elapsed).as_secs_f64();
        let rate = if dt > 0.0 {
            completed.saturating_sub(self.last_completed) as f64 / dt
        } else {
            0.0
        };
        self.last_completed = completed;
        self.last_elapsed = elapsed;
        let frac = (elapsed.as_secs_f64() / self.total.as_secs_f64().max(1e-9)).clamp(0.0, 1.0);
        const WIDTH: usize = 24;
        let filled = (frac * WIDTH as f64) as usize;
        let bar: String = (0..WIDTH)
            .map(|i| if i < filled { '#' } else { '.' })
            .collect();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K  {} [{bar}] {:>5.1}/{:.1} s {:>9.0} req/s {errors} err",
            self.label,
            elapsed.as_secs_f64().min(self.total.as_secs_f64()),
            self.total.as_secs_f64(),
            rate
        );
        let _ = err.flush();
        self.drawn = true;
    }

    /// Clears the bar.
    pub fn finish(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            self.drawn = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
