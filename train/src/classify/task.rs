//! Classification as a [`Task`] of the shared engine: an ImageFolder dataset, the ConvNeXt classifier,
//! label-smoothed cross-entropy (soft targets under MixUp / CutMix), accuracy / macro precision, recall and F1 (the objective: accuracy), and the test
//! report with its confusion matrix. [`train`], [`resume`] and their `_observed` forms are the entry points.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tch::{nn, Reduction, Tensor};

use kiln_models::ImageClassifier;

use super::distill::{distillation_term, Teacher};
use super::evaluate::{evaluate, EvalSettings, Evaluation, EvaluationShare};
use super::export::{classifier_onnx, GraphSpec};
use super::image_folder::{ImageFolder, SplitSource};
use super::loader::{Batch, ClassifyLoader};
use super::loss::{classification_loss, soft_cross_entropy, training_logits};
use super::model::{build_classifier, classifier_config, trainable_params};
use super::predict::{predict_loaded, PredictOptions, PredictSettings, Prediction};
use super::report::{report_split, SplitReport};
use super::setup::{apply_cache, make_loader, open_dataset};
use super::transform::Transform;
use super::tta::Tta;
use crate::checkpoint::Checkpoint;
use crate::config::{TaskKind, TrainConfig};
use crate::data::{SkipLog, Split};
use crate::engine::{self, Built, Direction, EpochCallback, LoadedRun, Losses, Objective, Task};
use crate::export::ExportOptions;
use crate::metrics::ClassificationMetrics;
use crate::optim::Param;
use crate::precision::Precision;
use crate::run_dir::RunDir;
use crate::Result;
use kiln_tune::{Distribution, SearchSpace};

/// What a finished classification run reports.
pub type TrainOutcome = engine::Outcome<Classification>;

/// Starts a new classification run: creates its directory, saves the resolved config, trains, tests.
pub fn train(config: &TrainConfig) -> Result<TrainOutcome> {
    train_observed(config, &mut |_| ControlFlow::Continue(()))
}

/// [`train`] with a callback after every epoch.
pub fn train_observed(config: &TrainConfig, on_epoch: EpochCallback) -> Result<TrainOutcome> {
    engine::train::<Classification>(config, on_epoch)
}

/// Classifies every image under `inputs` with the run's checkpoint. Unreadable images get an error entry and the
/// rest go on.
pub fn predict(run: &RunDir, inputs: &[PathBuf], options: &PredictOptions) -> Result<Vec<Prediction>> {
    let run_options =
        engine::PredictOptions { which: options.which, device: options.device.clone(), batch: options.batch };
    let settings = PredictSettings { top_k: options.top_k, tta: options.tta.clone() };
    Ok(engine::predict_run::<Classification>(run, inputs, &run_options, &settings)?.1)
}

/// Fits the temperature of the run's checkpoint on its validation split (`kiln val --calibrate`; see
/// [`super::calibration`]) and writes `calibration.json`.
pub fn calibrate_run(run: &RunDir, options: &engine::EvalOptions) -> Result<super::calibration::Calibration> {
    let _lock = crate::run_lock::RunLock::acquire(run, "kiln val --calibrate")?;
    super::calibration::calibrate_run::<Classification>(run, options)
}

/// Continues a run from its `last` checkpoint: weights, optimiser state, EMA, schedule position and epoch.
pub fn resume(run: RunDir) -> Result<TrainOutcome> {
    resume_observed(run, &mut |_| ControlFlow::Continue(()))
}

/// [`resume`] with a callback after every epoch.
pub fn resume_observed(run: RunDir, on_epoch: EpochCallback) -> Result<TrainOutcome> {
    engine::resume::<Classification>(run, on_epoch)
}

/// The classification task over one ImageFolder dataset, with its distillation teacher when it has one.
pub struct Classification {
    dataset: ImageFolder,
    teacher: Option<Teacher>,
}

#[derive(Serialize)]
struct DatasetSummary<'a> {
    root: &'a std::path::Path,
    class_names: &'a [String],
    images: BTreeMap<&'static str, usize>,
    sources: &'a BTreeMap<String, SplitSource>,
}

impl engine::Evaluation for Evaluation {
    fn values(&self) -> Vec<Option<f64>> {
        let m = &self.metrics;
        vec![
            Some(self.loss),
            Some(m.accuracy),
            m.top5_accuracy,
            Some(m.precision_macro),
            Some(m.recall_macro),
            Some(m.f1_macro),
            m.ece,
        ]
    }
    fn images(&self) -> usize {
        self.images
    }
}

impl Task for Classification {
    const KIND: TaskKind = TaskKind::Classify;
    const LOSSES: &'static [&'static str] = &["loss"];
    const METRICS: &'static [&'static str] = &["loss", "accuracy", "top5", "precision", "recall", "f1", "ece"];
    const OBJECTIVE: Objective = Objective { metric: "accuracy", direction: Direction::Maximize };
    const PLOTTED: &'static [(&'static str, &'static str)] = &[("accuracy", "accuracy"), ("f1", "macro F1")];
    const LOSS_LABEL: &'static str = "cross-entropy";

    type Settings = ();
    type Model = ImageClassifier;
    type Loader = ClassifyLoader;
    type Evaluation = Evaluation;
    type Metrics = ClassificationMetrics;
    type Report = SplitReport;
    type EvalSettings = Tta;
    type PredictSettings = PredictSettings;
    type Prediction = Prediction;
    type GraphSpec = GraphSpec;
    const DEPLOYED_METRIC: &'static str = "top-1 accuracy";

    fn open(config: &TrainConfig) -> Result<Self> {
        let dataset = open_dataset(config)?;
        let teacher = match &config.distill.teacher {
            Some(dir) => {
                let device = crate::device::select_device(&config.device)?;
                let teacher = Teacher::open(dir, config, &dataset.class_names, device)?;
                eprintln!(
                    "distilling from {} ({}), T = {}, weight {}",
                    teacher.checkpoint.display(),
                    teacher.variant,
                    config.distill.temperature,
                    config.distill.weight
                );
                Some(teacher)
            }
            None => None,
        };
        Ok(Self { dataset, teacher })
    }

    fn open_eval(config: &TrainConfig, _classes: &[String]) -> Result<Self> {
        Ok(Self { dataset: open_dataset(config)?, teacher: None })
    }

    fn synthetic(_config: &TrainConfig, class_names: Vec<String>) -> Result<Self> {
        let dataset = ImageFolder {
            root: PathBuf::new(),
            class_names,
            train: Vec::new(),
            val: Vec::new(),
            test: Vec::new(),
            sources: BTreeMap::new(),
        };
        Ok(Self { dataset, teacher: None })
    }

    fn class_names(&self) -> &[String] {
        &self.dataset.class_names
    }

    fn dataset_summary(&self) -> serde_json::Value {
        let d = &self.dataset;
        serde_json::to_value(DatasetSummary {
            root: &d.root,
            class_names: &d.class_names,
            images: Split::ALL.iter().map(|s| (s.name(), d.split(*s).len())).collect(),
            sources: &d.sources,
        })
        .expect("serialises")
    }

    fn describe(&self) -> String {
        let d = &self.dataset;
        format!(
            "{} classes; {} train / {} val / {} test images",
            d.num_classes(),
            d.train.len(),
            d.val.len(),
            d.test.len()
        )
    }

    fn has_test(&self) -> bool {
        !self.dataset.test.is_empty()
    }

    fn check_resume(&self, config: &TrainConfig, ckpt: &Checkpoint) -> Result<()> {
        engine::check_classes(&config.data, "train", &ckpt.state.class_names, &self.dataset.class_names)
    }

    fn new_model(vs: &nn::VarStore, config: &TrainConfig, class_names: &[String]) -> Result<ImageClassifier> {
        Ok(ImageClassifier::new(&vs.root(), &classifier_config(config, class_names.len()))?)
    }

    fn build_model(&self, vs: &nn::VarStore, config: &TrainConfig) -> Result<Built<ImageClassifier>> {
        let num_classes = self.dataset.num_classes();
        let (model, report) = build_classifier(vs, config, num_classes)?;
        let loaded = match (&report, &config.weights) {
            (Some(report), Some(path)) => Some(format!(
                "loaded {} tensors from {}{}",
                report.loaded,
                path.display(),
                if report.reinitialised.is_empty() {
                    String::new()
                } else {
                    format!(" (new head for {num_classes} classes: {})", report.reinitialised.join(", "))
                }
            )),
            _ => None,
        };
        Ok(Built { model, loaded })
    }

    fn trainable_params(&self, vs: &nn::VarStore, model: &ImageClassifier, config: &TrainConfig) -> Vec<Param> {
        trainable_params(vs, model, config.freeze.0)
    }

    fn loaders(&self, config: &TrainConfig, skips: &Arc<SkipLog>) -> Result<(ClassifyLoader, Option<ClassifyLoader>)> {
        let d = &self.dataset;
        let mut train = make_loader(config, &d.train, Transform::Train(config.augment.clone()), skips)?;
        let mut val = if d.val.is_empty() {
            None
        } else {
            Some(make_loader(config, &d.val, Transform::eval(config.eval_crop_pct), skips)?)
        };
        let mut cached: Vec<(&str, &mut ClassifyLoader)> = vec![("train", &mut train)];
        if let Some(val) = val.as_mut() {
            cached.push(("val", val));
        }
        apply_cache(config, &mut cached)?;
        Ok((train, val))
    }

    fn test_loader(&self, config: &TrainConfig, skips: &Arc<SkipLog>) -> Result<Option<ClassifyLoader>> {
        let test = &self.dataset.test;
        (!test.is_empty()).then(|| make_loader(config, test, Transform::eval(config.eval_crop_pct), skips)).transpose()
    }

    fn losses(
        &self,
        model: &ImageClassifier,
        batch: &Batch,
        precision: &Precision,
        config: &TrainConfig,
    ) -> Result<Losses> {
        let device = precision.device;
        let images = batch.images.to_device(device);
        let labels = batch.labels.to_device(device);
        if !config.mixup.enabled() && self.teacher.is_none() {
            let loss = classification_loss(model, &images, &labels, precision, config.label_smoothing)?;
            return Ok(Losses::single(loss));
        }
        let classes = self.dataset.num_classes() as i64;
        let (images, soft_targets) = if config.mixup.enabled() {
            let mixed = config.mixup.mix(&images, &labels, classes, config.label_smoothing)?;
            (mixed.images, Some(mixed.targets))
        } else {
            (images, None)
        };
        let (logits, xs) = training_logits(model, &images, precision)?;
        let mut loss = match &soft_targets {
            Some(targets) => soft_cross_entropy(&logits, targets),
            None => {
                logits.f_cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, config.label_smoothing)?
            }
        };
        if let Some(teacher) = &self.teacher {
            let d = &config.distill;
            loss += distillation_term(&logits, &teacher.logits(&xs), d.temperature) * d.weight;
        }
        Ok(Losses::single(loss))
    }

    fn synthetic_batch(&self, config: &TrainConfig, device: tch::Device) -> Result<Batch> {
        let (n, s) = (config.batch as i64, config.img_size as i64);
        Ok(Batch {
            images: Tensor::randn([n, 3, s, s], (tch::Kind::Float, device)),
            labels: Tensor::randint(self.dataset.num_classes() as i64, [n], (tch::Kind::Int64, device)),
            paths: Vec::new(),
        })
    }

    fn evaluate(&self, model: &ImageClassifier, loader: &ClassifyLoader, precision: &Precision) -> Result<Evaluation> {
        evaluate(model, loader, precision, self.dataset.num_classes(), &EvalSettings::default())
    }

    fn metrics(evaluation: &Evaluation) -> ClassificationMetrics {
        evaluation.metrics.clone()
    }

    const MERGES_EVALUATIONS: bool = true;

    fn evaluation_share(evaluation: &Evaluation) -> Result<Vec<u8>> {
        engine::task::encode_share(&EvaluationShare::of(evaluation))
    }

    fn merge_evaluation_shares(&self, shares: Vec<Vec<u8>>) -> Result<Evaluation> {
        EvaluationShare::merge(engine::task::decode_shares(&shares)?)
    }

    fn default_space() -> SearchSpace {
        SearchSpace::from([
            ("lr".to_string(), Distribution::Float { low: 1e-4, high: 1e-2, log: true, step: None }),
            ("weight_decay".to_string(), Distribution::Float { low: 1e-4, high: 1e-1, log: true, step: None }),
            ("batch".to_string(), Distribution::Categorical { choices: vec![16.into(), 32.into(), 64.into()] }),
            ("drop_path_rate".to_string(), Distribution::Float { low: 0.0, high: 0.3, log: false, step: None }),
            ("augment.color_jitter".to_string(), Distribution::Float { low: 0.0, high: 0.4, log: false, step: None }),
        ])
    }

    fn evaluate_split(
        &self,
        loaded: &LoadedRun<ImageClassifier>,
        run: &RunDir,
        split: Split,
        tta: &Tta,
    ) -> Result<SplitReport> {
        report_split(&self.dataset, loaded, run, split, tta)
    }

    fn predict(
        loaded: &LoadedRun<ImageClassifier>,
        files: &[PathBuf],
        settings: &PredictSettings,
    ) -> Result<Vec<Prediction>> {
        predict_loaded(loaded, files, settings)
    }

    fn graph_spec(run: &RunDir, ckpt: &Checkpoint, options: &ExportOptions) -> Result<GraphSpec> {
        super::export::graph_spec::<Self>(run, ckpt, options)
    }

    fn onnx(
        model: &ImageClassifier,
        spec: &GraphSpec,
        options: &ExportOptions,
    ) -> Result<(Vec<u8>, kiln_export::ModelMetadata, usize)> {
        classifier_onnx(model, spec, options)
    }

    fn split_images(config: &TrainConfig, split: Split) -> Result<crate::data::LabelledImages> {
        Ok(open_dataset(config)?.split(split).iter().map(|s| (s.path.clone(), Some(s.label))).collect())
    }

    /// `None`: the comparison measures top-1 from the models' outputs and the images' labels.
    fn deployed_metric(_config: &TrainConfig, _path: &Path) -> Result<Option<f64>> {
        Ok(None)
    }
}
