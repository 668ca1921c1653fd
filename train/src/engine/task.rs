//! The task layer: what the shared training loop ([`super::train`]) asks of a task. A task owns its dataset and
//! batch type, its model, its loss (in named parts), its evaluation (named metrics, one of them the objective),
//! its test report and its validation plot; the loop owns epochs, the schedule, the optimiser, EMA, precision,
//! early stopping, checkpoints, `results.csv`, curves and resume.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tch::{nn, Tensor};

use std::path::{Path, PathBuf};

use kiln_export::ModelMetadata;

use crate::checkpoint::Checkpoint;
use crate::config::{TaskKind, TaskSettings, TrainConfig};
pub use crate::data::Batches;
use crate::data::{SkipLog, Split};
use crate::export::ExportOptions;
use crate::optim::Param;
use crate::precision::Precision;
use crate::run_dir::RunDir;
use crate::Result;

pub use kiln_tune::Direction;

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
    /// Set when the loss is a sum over the batch divided by a count that depends on the batch (the detector's
    /// positive locations): under data-parallel training every rank's loss is rescaled to divide by the count over
    /// all ranks' batches, so that the ranks train as one process on the combined batch.
    pub normaliser: Option<Normaliser>,
}

/// What a count-normalised loss was divided by: `divisor = max(count, floor)` of this batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normaliser {
    pub count: f64,
    pub divisor: f64,
    pub floor: f64,
}

impl Losses {
    /// A loss with no separately reported parts.
    pub fn single(total: Tensor) -> Self {
        Self { parts: vec![total.shallow_clone()], total, normaliser: None }
    }
}

/// One evaluation pass of a task: its named metric values (in the task's [`Task::METRICS`] order; `None` where a
/// value is undefined) and how many images it saw.
pub trait Evaluation {
    fn values(&self) -> Vec<Option<f64>>;
    fn images(&self) -> usize;
}

/// A model built by a task, and what loading weights into it did.
pub struct Built<M> {
    pub model: M,
    /// A line for the log about weights loaded from `config.weights`, if any.
    pub loaded: Option<String>,
}

/// What a task gives the generic code, from training to deployment: the training loop ([`super::train`]), the
/// evaluation of a finished run ([`super::evaluate_run`]), its ONNX export ([`super::export_run`]), the
/// isolated-step benchmark ([`super::bench_step`]) and int8's comparison of exported models.
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

    /// The task's own settings: the config's section under the task's name (`()`: none).
    type Settings: TaskSettings;
    type Model;
    type Loader: Batches;
    type Evaluation: Evaluation;
    /// The validation metrics saved in checkpoints and returned by training.
    type Metrics: Clone + std::fmt::Debug + std::fmt::Display + Serialize + DeserializeOwned;
    /// What evaluating a checkpoint on a split reports (the test pass after training, `kiln val|test`); also
    /// written into the run as `<split>_metrics.json` and printed by the CLI.
    type Report: Serialize + std::fmt::Display;
    /// Evaluation settings beyond the checkpoint, the data and the device (classification: test-time
    /// augmentation); the default is plain evaluation.
    type EvalSettings: Clone + Default + DeserializeOwned;
    /// What the task's ONNX graph needs besides the model, read from the run and the checkpoint.
    type GraphSpec;
    /// Prediction settings beyond the checkpoint, device and batch (classification: top-k and test-time
    /// augmentation); the default is plain prediction.
    type PredictSettings: Clone + Default + DeserializeOwned;
    /// One input's prediction (or why it was not read), as `kiln predict` lists it.
    type Prediction: super::PredictionListing;
    /// The name of the task's metric of an exported model, as int8's comparison prints it.
    const DEPLOYED_METRIC: &'static str;

    /// The model's name as logs, results and exports show it (by default the config's `model`).
    fn model_name(config: &TrainConfig) -> String {
        config.model.clone()
    }
    /// Opens the dataset the config names.
    fn open(config: &TrainConfig) -> Result<Self>;
    /// Opens the dataset the config names to evaluate a checkpoint trained on `classes` (read with them where the
    /// labels are text), without what only training needs (a distillation teacher).
    fn open_eval(config: &TrainConfig, classes: &[String]) -> Result<Self>;
    /// The task over no data, with `class_names`, for the isolated-step benchmark.
    fn synthetic(config: &TrainConfig, class_names: Vec<String>) -> Result<Self>;
    /// The class names (saved in every checkpoint; a resumed run must see the same).
    fn class_names(&self) -> &[String];
    /// `dataset.json` of a new run.
    fn dataset_summary(&self) -> serde_json::Value;
    /// One line about the data for the start of training, e.g. "3 classes; 80 train / 10 val / 10 test images".
    fn describe(&self) -> String;
    /// Whether there is a test split to evaluate after training.
    fn has_test(&self) -> bool;
    /// The objective a run of `config` optimises (best checkpoint, early stopping, studies): [`Task::OBJECTIVE`]
    /// unless the task's settings choose another of its metrics (detection's `detect.objective`).
    fn objective_of(config: &TrainConfig) -> Result<Objective> {
        let _ = config;
        Ok(Self::OBJECTIVE)
    }
    /// The loss parts this task's steps report, the total first: [`Task::LOSSES`] unless its settings pick a model
    /// with other parts (detection's Faster R-CNN head).
    fn loss_names(&self) -> &'static [&'static str] {
        Self::LOSSES
    }
    /// The loss panel's y-axis label, to go with [`Task::loss_names`].
    fn loss_label(&self) -> &'static str {
        Self::LOSS_LABEL
    }
    /// Checks that a checkpoint fits this dataset before a resume.
    fn check_resume(&self, config: &TrainConfig, ckpt: &Checkpoint) -> Result<()>;

    /// The model the config describes for `class_names`, freshly initialised under the VarStore's root (what a
    /// checkpoint is loaded into).
    fn new_model(vs: &nn::VarStore, config: &TrainConfig, class_names: &[String]) -> Result<Self::Model>;
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
    /// A fixed random training batch of `config.batch` items at the config's input size on `device` (the
    /// isolated-step benchmark).
    fn synthetic_batch(&self, config: &TrainConfig, device: tch::Device) -> Result<<Self::Loader as Batches>::Batch>;
    /// Evaluates the model (in inference mode) over a loader.
    fn evaluate(&self, model: &Self::Model, loader: &Self::Loader, precision: &Precision) -> Result<Self::Evaluation>;
    fn metrics(evaluation: &Self::Evaluation) -> Self::Metrics;
    /// Whether validation under data-parallel training is sharded: each rank evaluates its share of the split,
    /// and every rank merges all the shares ([`Task::evaluation_share`], [`Task::merge_evaluation_shares`]).
    /// Without it every rank evaluates the whole split.
    const MERGES_EVALUATIONS: bool = false;
    /// What the evaluation of one rank's share contributes to the split's, as bytes for the other ranks.
    fn evaluation_share(_evaluation: &Self::Evaluation) -> Result<Vec<u8>> {
        Err(no_merge::<Self>())
    }
    /// The split's evaluation from every rank's [`Task::evaluation_share`] (by rank; disjoint shares that together
    /// are the split), as one process evaluating the whole split computes it.
    fn merge_evaluation_shares(&self, _shares: Vec<Vec<u8>>) -> Result<Self::Evaluation> {
        Err(no_merge::<Self>())
    }
    /// Draws the task's validation plots into the run (called when an epoch gives a new best checkpoint).
    fn plot_validation(&self, _run: &RunDir, _evaluation: &Self::Evaluation) -> Result<()> {
        Ok(())
    }
    /// The search space a study uses when neither the options nor the config give one.
    fn default_space() -> kiln_tune::SearchSpace;
    /// Evaluates a loaded checkpoint on `split` of this dataset (checking that its classes are the checkpoint's),
    /// writing the report files into the run.
    fn evaluate_split(
        &self,
        loaded: &super::LoadedRun<Self::Model>,
        run: &RunDir,
        split: Split,
        settings: &Self::EvalSettings,
    ) -> Result<Self::Report>;
    /// Evaluates the run's best checkpoint on the test split, writing the task's report files into the run.
    fn test(run: &RunDir, device: &str) -> Result<Self::Report> {
        let options = super::EvalOptions { device: Some(device.to_string()), ..Default::default() };
        super::evaluate_run::<Self>(run, Split::Test, &options, &Self::EvalSettings::default())
    }

    /// Predicts on image `files` with a loaded checkpoint, one entry per file in order; a file that cannot be
    /// read gets an entry saying why and the rest go on.
    fn predict(
        loaded: &super::LoadedRun<Self::Model>,
        files: &[PathBuf],
        settings: &Self::PredictSettings,
    ) -> Result<Vec<Self::Prediction>>;

    /// What the export graph needs besides the model; refuses options that are not for this task.
    fn graph_spec(run: &RunDir, ckpt: &Checkpoint, options: &ExportOptions) -> Result<Self::GraphSpec>;
    /// The ONNX model of `model` with its metadata: the bytes, the metadata and the node count.
    fn onnx(
        model: &Self::Model,
        spec: &Self::GraphSpec,
        options: &ExportOptions,
    ) -> Result<(Vec<u8>, ModelMetadata, usize)>;
    /// The images of a split of the config's dataset, with their class index where the task labels whole images
    /// (calibrating and comparing exported models).
    fn split_images(config: &TrainConfig, split: Split) -> Result<crate::data::LabelledImages>;
    /// The task's metric ([`Task::DEPLOYED_METRIC`]) of the exported model at `path` on the val split, run as an
    /// application runs it; `None` without val data, or where the comparison computes it from the images' class
    /// labels (classification's top-1).
    fn deployed_metric(config: &TrainConfig, path: &Path) -> Result<Option<f64>>;
}

fn no_merge<T: Task>() -> crate::Error {
    crate::Error::Distributed {
        call: "merging the ranks' validation shares".into(),
        reason: format!("the {} task does not merge evaluations (MERGES_EVALUATIONS is false)", T::KIND.name()),
    }
}

/// A rank's share of something every rank gathers (e.g. [`Task::evaluation_share`]), as bytes.
pub fn encode_share(share: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(share)
        .map_err(|e| crate::Error::Distributed { call: "encoding a validation share".into(), reason: e.to_string() })
}

/// The shares [`encode_share`] made, by rank.
pub fn decode_shares<S: DeserializeOwned>(shares: &[Vec<u8>]) -> Result<Vec<S>> {
    shares
        .iter()
        .enumerate()
        .map(|(rank, bytes)| {
            serde_json::from_slice(bytes).map_err(|e| crate::Error::Distributed {
                call: format!("decoding rank {rank}'s share"),
                reason: e.to_string(),
            })
        })
        .collect()
}
