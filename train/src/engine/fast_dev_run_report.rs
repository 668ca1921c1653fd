//! What a fast dev run reports (`fast_dev_run.json`), filled in by the trainer's passes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The report's file name in the run directory.
pub const REPORT_FILE: &str = "fast_dev_run.json";

/// The training steps of a fast dev run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainPass {
    pub batches: usize,
    pub images: usize,
    /// Mean of each loss part over the steps, by the task's loss names (`loss` first).
    pub losses: BTreeMap<String, f64>,
    /// The learning rate of the last step.
    pub lr: f64,
    pub seconds: f64,
}

/// The evaluation batches of one split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalPass {
    pub batches: usize,
    pub images: usize,
    /// The task's validation metrics on these batches (`None` where undefined), by name.
    pub metrics: BTreeMap<String, Option<f64>>,
    pub seconds: f64,
}

/// What `fast_dev_run.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FastDevRunReport {
    pub task: String,
    pub model: String,
    pub device: String,
    /// The batches asked for per split (a split with fewer runs them all).
    pub batches: usize,
    pub train: TrainPass,
    /// `None` when the dataset has no val split.
    pub val: Option<EvalPass>,
    /// `None` when the dataset has no test split.
    pub test: Option<EvalPass>,
    /// Images that could not be read in these batches.
    pub skipped_images: usize,
    /// Where the report was written.
    pub report: std::path::PathBuf,
}
