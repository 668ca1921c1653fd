//! Progress reporting: an indicatif bar on a terminal, plain log lines otherwise (CI, pipes, files).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Live numbers of a training step.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepStats {
    pub loss: f64,
    pub lr: f64,
    pub images_per_second: f64,
}

/// Progress of one epoch.
pub struct EpochProgress {
    bar: ProgressBar,
    plain: bool,
    label: String,
    started: Instant,
    last_line: Instant,
}

/// How often plain mode prints a line within an epoch.
const PLAIN_INTERVAL: Duration = Duration::from_secs(10);

impl EpochProgress {
    /// `label` is e.g. `epoch 3/30`; `steps` the number of batches.
    pub fn new(label: String, steps: usize) -> Self {
        let plain = !std::io::stderr().is_terminal();
        let bar = if plain {
            ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::hidden())
        } else {
            let bar = ProgressBar::new(steps as u64);
            bar.set_style(
                ProgressStyle::with_template("{prefix:>12} [{bar:30.cyan/blue}] {pos}/{len} {msg} ETA {eta}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar
        };
        bar.set_prefix(label.clone());
        let now = Instant::now();
        Self { bar, plain, label, started: now, last_line: now }
    }

    fn describe(stats: &StepStats) -> String {
        format!("loss {:.4} lr {:.2e} {:.1} img/s", stats.loss, stats.lr, stats.images_per_second)
    }

    /// After step `done` (1-based) of the epoch.
    pub fn step(&mut self, done: usize, stats: &StepStats) {
        self.bar.set_position(done as u64);
        self.bar.set_message(Self::describe(stats));
        if self.plain && self.last_line.elapsed() >= PLAIN_INTERVAL {
            self.last_line = Instant::now();
            let len = self.bar.length().unwrap_or(0);
            eprintln!("{} step {done}/{len} {}", self.label, Self::describe(stats));
        }
    }

    /// Ends the epoch's bar (the caller prints the epoch's summary) and returns the seconds it took.
    pub fn finish(self) -> f64 {
        self.bar.finish_and_clear();
        self.started.elapsed().as_secs_f64()
    }
}
