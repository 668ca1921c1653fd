//! Lightning's `fast_dev_run` for every task: N training steps and N batches of val and of test through the same
//! code as a real run (data, augmentation, loss, backward, optimiser, EMA, evaluation), to find a broken config,
//! dataset or model in seconds. It writes nothing but its report, `fast_dev_run.json` in a new run directory: no
//! config, no checkpoint, no `results.csv`, no plot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::task::Task;
use super::trainer::{prepare_runtime, Trainer};
use crate::config::CacheMode;
use crate::config::TrainConfig;
use crate::fsutil::write_atomic;
use crate::run_dir::RunDir;
use crate::Result;

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

/// Runs `config.fast_dev_run` batches (at least one) of train, val and test of task `T` and writes the report
/// into a new run directory (`PROJECT/<task>/<name>`). The cache is off: only the images used are read.
pub fn fast_dev_run<T: Task>(config: &TrainConfig) -> Result<FastDevRunReport> {
    let config = TrainConfig { cache: CacheMode::None, ..config.clone().with_img_size_rounded() };
    config.validate()?;
    let batches = config.fast_dev_run.max(1);
    let device = prepare_runtime(&config, None)?;
    let task = T::open(&config)?;
    let run = RunDir::create_bare(&config.project, config.task, config.name.as_deref())?;
    let report = Trainer::new(task, run, config, device, None)?.fast_dev_run(batches)?;
    write_atomic(&report.report, &serde_json::to_vec_pretty(&report).expect("the report serialises"))?;
    Ok(report)
}
