//! The one place that names every task: a config's `task` dispatched to that task's run of the shared engine,
//! for callers that work with any task (the study runner).

use crate::classify::Classification;
use crate::config::{TaskKind, TrainConfig};
use crate::detect::Detection;
use crate::engine::{self, EpochCallback, Objective, Outcome, Task};
use crate::export::{ExportOptions, ExportReport};
use crate::ocr::TextRecognition;
use crate::run_dir::RunDir;
use crate::step_timer::{StepBenchConfig, StepBenchResult};
use crate::tune::SearchSpace;
use crate::Result;

/// What any task's run reports, without the task's own metric types.
#[derive(Clone, Debug)]
pub struct RunSummary {
    pub run: RunDir,
    /// The epoch callback stopped the run before its last epoch.
    pub interrupted: bool,
    /// The objective's validation value at the best checkpoint (`None` without validation data).
    pub best_objective: Option<f64>,
}

fn summary<T: Task>(outcome: Outcome<T>) -> RunSummary {
    RunSummary { run: outcome.run, interrupted: outcome.interrupted, best_objective: outcome.best_objective }
}

/// The validation metric that task `kind` optimises.
pub fn objective(kind: TaskKind) -> Objective {
    match kind {
        TaskKind::Classify => Classification::OBJECTIVE,
        TaskKind::Detect => Detection::OBJECTIVE,
        TaskKind::Ocr => TextRecognition::OBJECTIVE,
    }
}

/// The search space a study of task `kind` uses by default.
pub fn default_space(kind: TaskKind) -> SearchSpace {
    match kind {
        TaskKind::Classify => Classification::default_space(),
        TaskKind::Detect => Detection::default_space(),
        TaskKind::Ocr => TextRecognition::default_space(),
    }
}

/// Trains a new run of the config's task, calling `on_epoch` after every epoch.
pub fn train_observed(config: &TrainConfig, on_epoch: EpochCallback) -> Result<RunSummary> {
    match config.task {
        TaskKind::Classify => engine::train::<Classification>(config, on_epoch).map(summary::<Classification>),
        TaskKind::Detect => engine::train::<Detection>(config, on_epoch).map(summary::<Detection>),
        TaskKind::Ocr => engine::train::<TextRecognition>(config, on_epoch).map(summary::<TextRecognition>),
    }
}

/// A `fast_dev_run` of the config's task: `config.fast_dev_run` batches (at least one) of train, val and test,
/// and only its report written.
pub fn fast_dev_run(config: &TrainConfig) -> Result<engine::FastDevRunReport> {
    match config.task {
        TaskKind::Classify => engine::fast_dev_run::<Classification>(config),
        TaskKind::Detect => engine::fast_dev_run::<Detection>(config),
        TaskKind::Ocr => engine::fast_dev_run::<TextRecognition>(config),
    }
}

/// Times the isolated training step of the config's task (`kiln bench train`).
pub fn bench_train_step(config: &StepBenchConfig) -> Result<StepBenchResult> {
    match config.task {
        TaskKind::Classify => crate::classify::bench_train_step(config),
        TaskKind::Detect => crate::detect::step_bench::bench_detect_step(config),
        TaskKind::Ocr => crate::ocr::step_bench::bench_ocr_step(config),
    }
}

/// Exports a run of any task to ONNX (`kiln export onnx`), by the task its saved config names.
pub fn export_run(run: &RunDir, options: &ExportOptions) -> Result<ExportReport> {
    match TrainConfig::load(&run.config())?.task {
        TaskKind::Classify => crate::classify::export_run(run, options),
        TaskKind::Detect => crate::detect::export::export_run(run, options),
        TaskKind::Ocr => crate::ocr::export::export_run(run, options),
    }
}

/// The images of a split of the run's dataset, with their class index where the task has one (classification),
/// for calibrating and comparing exported models.
pub fn split_images(
    config: &TrainConfig,
    split: crate::data::Split,
) -> Result<Vec<(std::path::PathBuf, Option<usize>)>> {
    Ok(match config.task {
        TaskKind::Classify => crate::classify::setup::open_dataset(config)?
            .split(split)
            .iter()
            .map(|s| (s.path.clone(), Some(s.label)))
            .collect(),
        TaskKind::Detect => {
            crate::detect::task::open_dataset(config)?.split(split).iter().map(|s| (s.path.clone(), None)).collect()
        }
        TaskKind::Ocr => crate::ocr::task::open_dataset(config, None)?
            .split(split.name())
            .iter()
            .map(|s| (s.path.clone(), None))
            .collect(),
    })
}
