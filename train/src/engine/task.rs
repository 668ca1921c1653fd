//! The task layer: what the shared training loop ([`super::train`]) asks of a task. A task owns its dataset and
//! batch type, its model, its loss (in named parts), its evaluation (named metrics, one of them the objective),
//! its test report and its validation plot; the loop owns epochs, the schedule, the optimiser, EMA, precision,
//! early stopping, checkpoints, `results.csv`, curves and resume.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::checkpoint::Checkpoint;
use crate::config::{TaskKind, TrainConfig};
use crate::data::SkipLog;
use crate::optim::Param;
use crate::precision::Precision;
use crate::run_dir::RunDir;
use crate::Result;

/// Whether a metric is better high or low.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Also read as `min` (Lightning's `mode`).
    #[serde(alias = "min")]
    Minimize,
    /// Also read as `max`.
    #[serde(alias = "max")]
    Maximize,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Minimize => "minimize",
            Direction::Maximize => "maximize",
        }
    }

    /// `value` turned so that higher is better.
    pub fn score(self, value: f64) -> f64 {
        match self {
            Direction::Maximize => value,
            Direction::Minimize => -value,
        }
    }
}

/// The validation metric that picks the best checkpoint, drives early stopping and is the study's objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Objective {
    /// A name among the task's [`Task::METRICS`].
    pub metric: &'static str,
    pub direction: Direction,
}

/// A training step's loss: `total` is what is backpropagated; `parts` are reported (named as the task's
/// [`Task::LOSSES`], the first being the total).
pub struct Losses {
    pub total: Tensor,
    pub parts: Vec<Tensor>,
}

impl Losses {
    /// A loss with no separately reported parts.
    pub fn single(total: Tensor) -> Self {
        Self { parts: vec![total.shallow_clone()], total }
    }
}

/// One evaluation pass of a task: its named metric values (in the task's [`Task::METRICS`] order; `None` where a
/// value is undefined) and how many images it saw.
pub trait Evaluation {
    fn values(&self) -> Vec<Option<f64>>;
    fn images(&self) -> usize;
}

/// Batches of one split, one pass per [`Batches::epoch`] call.
pub trait Batches {
    type Batch;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn num_batches(&self) -> usize;
    fn epoch(&self, epoch: usize, shuffle: bool) -> Box<dyn Iterator<Item = Result<Self::Batch>> + '_>;
    /// Images in a batch.
    fn batch_len(batch: &Self::Batch) -> usize;
    /// A loader like this one over `batches` batches' worth of its samples, spread evenly over them and read
    /// from their files (`fast_dev_run`).
    fn sample_batches(&self, batches: usize) -> Self
    where
        Self: Sized;
}

/// A model built by a task, and what loading weights into it did.
pub struct Built<M> {
    pub model: M,
    /// A line for the log about weights loaded from `config.weights`, if any.
    pub loaded: Option<String>,
}

/// What a task gives the training loop.
pub trait Task: Sized {
    const KIND: TaskKind;
    /// Names of the loss parts a step reports, the total first (`results.csv`: `train_<name>`).
    const LOSSES: &'static [&'static str];
    /// Names of the validation metrics (`results.csv`: `val_<name>`); `loss` first when the task has one.
    const METRICS: &'static [&'static str];
    const OBJECTIVE: Objective;
    /// The metrics drawn in the curves' validation panel, with their legend names.
    const PLOTTED: &'static [(&'static str, &'static str)];
    /// The y-axis label of the loss panel.
    const LOSS_LABEL: &'static str;

    type Model;
    type Loader: Batches;
    type Evaluation: Evaluation;
    /// The validation metrics saved in checkpoints and returned by training.
    type Metrics: Clone + std::fmt::Debug + Serialize + DeserializeOwned;
    /// What the test pass after training reports.
    type Report;

    /// Opens the dataset the config names.
    fn open(config: &TrainConfig) -> Result<Self>;
    /// The class names (saved in every checkpoint; a resumed run must see the same).
    fn class_names(&self) -> &[String];
    /// `dataset.json` of a new run.
    fn dataset_summary(&self) -> serde_json::Value;
    /// One line about the data for the start of training, e.g. "3 classes; 80 train / 10 val / 10 test images".
    fn describe(&self) -> String;
    /// Whether there is a test split to evaluate after training.
    fn has_test(&self) -> bool;
    /// Checks that a checkpoint fits this dataset before a resume.
    fn check_resume(&self, config: &TrainConfig, ckpt: &Checkpoint) -> Result<()>;

    /// Builds the model under the VarStore's root; loads `config.weights` when given.
    fn build_model(&self, vs: &nn::VarStore, config: &TrainConfig) -> Result<Built<Self::Model>>;
    /// The parameters to train (after `config.freeze`), by name.
    fn trainable_params(&self, vs: &nn::VarStore, model: &Self::Model, config: &TrainConfig) -> Vec<Param>;
    /// The train loader and, when there is validation data, the val loader (with the config's cache applied).
    fn loaders(&self, config: &TrainConfig, skips: &Arc<SkipLog>) -> Result<(Self::Loader, Option<Self::Loader>)>;
    /// A loader over the test split with the evaluation transform and no cache, `None` when the split is empty
    /// (`fast_dev_run`'s test batches; the full test pass is [`Task::test`]).
    fn test_loader(&self, config: &TrainConfig, skips: &Arc<SkipLog>) -> Result<Option<Self::Loader>>;

    /// The training loss of a batch (forward in training mode, under `precision`).
    fn losses(
        &self,
        model: &Self::Model,
        batch: &<Self::Loader as Batches>::Batch,
        precision: &Precision,
        config: &TrainConfig,
    ) -> Result<Losses>;
    /// Evaluates the model (in inference mode) over a loader.
    fn evaluate(&self, model: &Self::Model, loader: &Self::Loader, precision: &Precision) -> Result<Self::Evaluation>;
    fn metrics(evaluation: &Self::Evaluation) -> Self::Metrics;
    /// Draws the task's validation plots into the run (called when an epoch gives a new best checkpoint).
    fn plot_validation(&self, _run: &RunDir, _evaluation: &Self::Evaluation) -> Result<()> {
        Ok(())
    }
    /// The search space a study uses when neither the options nor the config give one.
    fn default_space() -> crate::tune::SearchSpace;
    /// Evaluates the run's best checkpoint on the test split, writing the task's report files into the run.
    fn test(run: &RunDir, device: &str) -> Result<Self::Report>;
}
