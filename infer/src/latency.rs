//! A model's latency as deployed, measured the way `kiln bench` measures it and applications can repeat on their
//! own machine: per batch size a first run (where TensorRT builds its engine and ONNX Runtime allocates),
//! untimed warm-up runs, then timed runs (a count, or as many as fit a duration), summarised as the mean, the
//! median, p90, p99 and images per second. The input is a smooth pattern, so no runtime can shortcut it.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::Backend;
use crate::model::Model;

/// How many timed runs a row takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TimedRuns {
    /// This many (at least one).
    Count(usize),
    /// As many as fit this long (at least one).
    For(Duration),
}

/// How to measure.
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyOptions {
    /// Batch sizes, one row each (a model with a fixed batch runs only its own; the others get a row saying why).
    pub batches: Vec<usize>,
    /// Untimed runs after the first.
    pub warmup: usize,
    pub runs: TimedRuns,
}

impl Default for LatencyOptions {
    fn default() -> Self {
        Self { batches: vec![1], warmup: 5, runs: TimedRuns::Count(50) }
    }
}

/// One row: a backend at one batch size, or why it could not run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyRow {
    pub backend: String,
    pub batch: usize,
    /// The execution provider in use, or why the row could not run.
    pub status: String,
    pub load_ms: Option<f64>,
    /// The first run (TensorRT builds its engine here; ONNX Runtime allocates).
    pub first_run_ms: Option<f64>,
    pub runs: usize,
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub images_per_second: Option<f64>,
    /// The model's precision from its metadata (`fp32`, `fp16`, `int8 static (…)`); empty when it did not load.
    pub precision: String,
}

impl LatencyRow {
    /// A row for `backend` at `batch` that could not run, with the reason.
    pub fn unavailable(backend: &Backend, batch: usize, reason: impl std::fmt::Display) -> Self {
        Self {
            backend: backend.to_string(),
            batch,
            status: format!("unavailable: {reason}"),
            load_ms: None,
            first_run_ms: None,
            runs: 0,
            mean_ms: None,
            p50_ms: None,
            p90_ms: None,
            p99_ms: None,
            images_per_second: None,
            precision: String::new(),
        }
    }
}

/// The value at quantile `q` of `sorted` (nearest rank; `sorted` must not be empty).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Measures `model`, opened on `backend`, at each of `options.batches`. A model without kiln metadata (or raw
/// preprocessing) cannot say its input size, and gets rows saying so; any failing run makes its whole row
/// unavailable, never half a row.
pub fn measure(model: &Model, backend: &Backend, options: &LatencyOptions) -> Vec<LatencyRow> {
    let Some(per) = model.preprocess().map(|p| p.tensor_len()) else {
        let reason = "no kiln metadata: the input size is unknown";
        return options.batches.iter().map(|&b| LatencyRow::unavailable(backend, b, reason)).collect();
    };
    let status = match backend {
        Backend::Ort(ep) => ep.provider_name().to_string(),
        Backend::Tract => "tract".to_string(),
    };
    let mut rows = Vec::new();
    for &batch in &options.batches {
        if let Some(fixed) = model.fixed_batch().filter(|&f| f != batch) {
            let reason = format!("the model has a fixed batch of {fixed} (export with --dynamic-batch)");
            rows.push(LatencyRow::unavailable(backend, batch, reason));
            continue;
        }
        let input: Vec<f32> = (0..batch * per).map(|i| ((i % 97) as f32 / 48.5) - 1.0).collect();
        let measured = (|| -> crate::Result<(f64, Vec<f64>)> {
            let started = Instant::now();
            model.run(&input, batch)?;
            let first = ms(started.elapsed());
            for _ in 0..options.warmup {
                model.run(&input, batch)?;
            }
            let mut times = Vec::new();
            let begin = Instant::now();
            loop {
                let t = Instant::now();
                model.run(&input, batch)?;
                times.push(ms(t.elapsed()));
                let done = match options.runs {
                    TimedRuns::For(d) => begin.elapsed() >= d,
                    TimedRuns::Count(n) => times.len() >= n.max(1),
                };
                if done {
                    return Ok((first, times));
                }
            }
        })();
        let (first, mut times) = match measured {
            Ok(m) => m,
            Err(e) => {
                rows.push(LatencyRow::unavailable(backend, batch, e));
                continue;
            }
        };
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        times.sort_by(f64::total_cmp);
        rows.push(LatencyRow {
            backend: backend.to_string(),
            batch,
            status: status.clone(),
            load_ms: Some(ms(model.load_time())),
            first_run_ms: Some(first),
            runs: times.len(),
            mean_ms: Some(mean),
            p50_ms: Some(percentile(&times, 0.5)),
            p90_ms: Some(percentile(&times, 0.9)),
            p99_ms: Some(percentile(&times, 0.99)),
            images_per_second: Some(batch as f64 * 1e3 / mean),
            precision: model.precision(),
        });
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let sorted: Vec<f64> = (1..=101).map(f64::from).collect();
        assert_eq!(
            (percentile(&sorted, 0.5), percentile(&sorted, 0.9), percentile(&sorted, 0.99)),
            (51.0, 91.0, 100.0)
        );
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        let row = LatencyRow::unavailable(&Backend::Tract, 8, "no such thing");
        assert_eq!((row.status.as_str(), row.runs, row.mean_ms), ("unavailable: no such thing", 0, None));
    }
}
