//! The one place that names every task. [`with_task!`] turns a [`TaskKind`] into the task's type, and every
//! task-free entry point below (the study runner's training, `kiln train|val|test|export|bench train`, int8's
//! calibration data) is written once through it. A new task adds its variant to [`TaskKind`] and one arm here.

use std::path::PathBuf;

use crate::config::{TaskKind, TrainConfig};
use crate::data::Split;
use crate::engine::{self, EpochCallback, EvalOptions, Objective, Outcome, Task};
use crate::export::{ExportOptions, ExportReport};
use crate::run_dir::RunDir;
use crate::step_timer::{StepBenchConfig, StepBenchResult};
use crate::{Error, Result};
use kiln_tune::SearchSpace;

/// Runs `$body`, a `Result`, with `$task` naming the type of the task `$kind` names:
/// `with_task!(kind, T => Ok(T::OBJECTIVE))`. A task kiln does not know (an application's own) is an error.
#[macro_export]
macro_rules! with_task {
    ($kind:expr, $task:ident => $body:expr) => {
        match $kind {
            $crate::TaskKind::Classify => {
                type $task = $crate::classify::Classification;
                $body
            }
            $crate::TaskKind::Detect => {
                type $task = $crate::detect::Detection;
                $body
            }
            $crate::TaskKind::Ocr => {
                type $task = $crate::ocr::TextRecognition;
                $body
            }
            other => Err($crate::tasks::unknown_task(other)),
        }
    };
}

/// The error for a task kiln's registry does not name.
pub fn unknown_task(kind: TaskKind) -> Error {
    let names: Vec<&str> = TaskKind::ALL.iter().map(|t| t.name()).collect();
    Error::InvalidSetting {
        key: "task".into(),
        reason: format!(
            "'{kind}' is not one of kiln's tasks ({}); an application's own task runs through kiln_train::engine \
             with its type",
            names.join(", ")
        ),
    }
}

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

/// The validation metric that a run of `config` optimises (its task's, or the one its settings choose).
pub fn objective(config: &TrainConfig) -> Result<Objective> {
    with_task!(config.task, T => T::objective_of(config))
}

/// The search space a study of task `kind` uses by default.
pub fn default_space(kind: TaskKind) -> Result<SearchSpace> {
    with_task!(kind, T => Ok(T::default_space()))
}

/// The name of task `kind`'s metric of an exported model (int8's comparison).
pub fn deployed_metric_name(kind: TaskKind) -> Result<&'static str> {
    with_task!(kind, T => Ok(T::DEPLOYED_METRIC))
}

/// Trains a new run of the config's task, calling `on_epoch` after every epoch.
pub fn train_observed(config: &TrainConfig, on_epoch: EpochCallback) -> Result<RunSummary> {
    with_task!(config.task, T => engine::train::<T>(config, on_epoch).map(summary::<T>))
}

/// A finished run of any task, as it reads (`kiln train`): epochs, the best validation and the test report, the
/// skipped files, the run directory.
pub type Described = Box<dyn std::fmt::Display>;

/// Trains a new run of the config's task (`kiln train`).
pub fn train(config: &TrainConfig) -> Result<Described> {
    let never = &mut |_: &engine::EpochRecord| std::ops::ControlFlow::Continue(());
    with_task!(config.task, T => Ok(Box::new(engine::train::<T>(config, never)?) as Described))
}

/// Continues a run of any task from its `last` checkpoint (`kiln train --resume`).
pub fn resume(run: RunDir) -> Result<Described> {
    let never = &mut |_: &engine::EpochRecord| std::ops::ControlFlow::Continue(());
    let task = TrainConfig::load(&run.config())?.task;
    with_task!(task, T => Ok(Box::new(engine::resume::<T>(run, never)?) as Described))
}

/// A `fast_dev_run` of the config's task: `config.fast_dev_run` batches (at least one) of train, val and test,
/// and only its report written.
pub fn fast_dev_run(config: &TrainConfig) -> Result<engine::FastDevRunReport> {
    with_task!(config.task, T => engine::fast_dev_run::<T>(config))
}

/// Times the isolated training step of the bench's task (`kiln bench train`).
pub fn bench_train_step(config: &StepBenchConfig) -> Result<StepBenchResult> {
    with_task!(config.task, T => engine::bench_step::<T>(config))
}

/// Exports a run of any task to ONNX (`kiln export onnx`), by the task its saved config names.
pub fn export_run(run: &RunDir, options: &ExportOptions) -> Result<ExportReport> {
    with_task!(TrainConfig::load(&run.config())?.task, T => engine::export_run::<T>(run, options))
}

/// Evaluates a run of any task on `split` (`kiln val`, `kiln test`), writing its report files into the run, and
/// returns the report as it reads. `settings` are the task's evaluation settings as a JSON object (e.g.
/// classification's `{"tta": {"flip": true, "scales": [1.0]}}`; empty for plain evaluation); a task refuses
/// settings it does not have.
// A task whose settings are `()` makes the settings binding below a unit in its arm of `with_task!`.
#[allow(clippy::let_unit_value)]
pub fn evaluate_run(
    run: &RunDir,
    split: Split,
    options: &EvalOptions,
    settings: &serde_json::Value,
) -> Result<Described> {
    let task = TrainConfig::load(&run.config())?.task;
    with_task!(task, T => {
        let settings: <T as Task>::EvalSettings = command_settings(settings, task, "evaluation")?;
        Ok(Box::new(engine::evaluate_run::<T>(run, split, options, &settings)?) as Described)
    })
}

/// Checks the config's task section as its task reads it (`Task::Settings`): a bad or unknown key is refused,
/// named, before anything runs.
pub fn check_settings(config: &TrainConfig) -> Result<()> {
    with_settings_spelt_out(config).map(|_| ())
}

/// The config with its task's section checked and spelt out in full (every key, defaults included), as a run
/// saves it.
// A task whose settings are `()` makes the binding below a unit in its arm of `with_task!`.
#[allow(clippy::let_unit_value)]
pub fn with_settings_spelt_out(config: &TrainConfig) -> Result<TrainConfig> {
    with_task!(config.task, T => {
        let settings = config.task_settings::<<T as Task>::Settings>()?;
        let mut config = config.clone();
        config.set_task_settings(&settings);
        Ok(config)
    })
}

/// The images of a split of the config's dataset, with their class index where the task labels whole images.
pub fn split_images(config: &TrainConfig, split: Split) -> Result<crate::data::LabelledImages> {
    with_task!(config.task, T => T::split_images(config, split))
}

/// What `kiln predict` listed.
#[derive(Clone, Debug, Default)]
pub struct PredictSummary {
    /// The image files the inputs expanded into.
    pub files: usize,
    /// Those that could not be read.
    pub failed: usize,
    /// Those that were read, in order.
    pub read: Vec<PathBuf>,
}

/// Predicts with a run of any task on every image under `inputs` and writes the task's listing to `out`.
/// `settings` are the task's prediction settings as a JSON object (e.g. classification's `{"top_k": 3}`; `null`
/// for the defaults); a task refuses settings it does not have.
#[allow(clippy::let_unit_value)]
pub fn predict(
    run: &RunDir,
    inputs: &[PathBuf],
    options: &engine::PredictOptions,
    settings: &serde_json::Value,
    format: kiln_infer::ListingFormat,
    out: &mut dyn std::io::Write,
) -> Result<PredictSummary> {
    use engine::PredictionListing;
    let task = TrainConfig::load(&run.config())?.task;
    with_task!(task, T => {
        let settings: <T as Task>::PredictSettings = command_settings(settings, task, "prediction")?;
        let (names, predictions) = engine::predict_run::<T>(run, inputs, options, &settings)?;
        let written = |source| Error::Io { path: PathBuf::from("<output>"), source };
        <T as Task>::Prediction::write_listing(&predictions, format, &names, out).map_err(written)?;
        out.flush().map_err(written)?;
        let mut summary = PredictSummary { files: predictions.len(), ..Default::default() };
        for p in &predictions {
            match p.error() {
                Some(_) => summary.failed += 1,
                None => summary.read.push(p.path().to_path_buf()),
            }
        }
        Ok(summary)
    })
}

/// A task's settings from their JSON form (`null`: the defaults), refused with the task named when they are not
/// its settings.
fn command_settings<S: serde::de::DeserializeOwned + Default>(
    settings: &serde_json::Value,
    task: TaskKind,
    what: &str,
) -> Result<S> {
    if settings.is_null() {
        return Ok(S::default());
    }
    serde_json::from_value(settings.clone()).map_err(|e| Error::InvalidSetting {
        key: format!("{what} settings"),
        reason: format!("{settings} are not settings of a {} run ({e})", task.name()),
    })
}
