//! Object detection as a [`Task`] of the shared engine: a CSV / COCO / YOLO dataset, the ConvNeXt + FPN + FCOS
//! detector or Faster R-CNN on the same backbone (`detect.head`), their losses, COCO mAP@[.5:.95] as the
//! objective, and the test report.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::nn;

use kiln_models::weights::{load_into, read_safetensors, HeadPolicy};
use kiln_models::FasterRcnn;

use super::annotations::{self, DetectionDataset, Split};
use super::augment::TargetBox;
use super::evaluate::{draw_first_images, evaluate, DetectionEvaluation, DetectionMetrics, DetectionShare};
use super::export::{detector_onnx, DetectorGraphSpec};
use super::loader::{with_balanced_sampling, DetectBatch, DetectLoader, DetectTransform, ImageTargets};
use super::loss::{batch_losses, faster_rcnn_batch_losses};
use super::model::DetectorModel;
use super::report::{report_split, DetectionReport};
use super::settings::{DetectHead, DetectSettings};
pub use super::setup::{detector_config, make_loader, open_dataset};
use super::targets::locations_on;
use crate::checkpoint::{Checkpoint, TRAINING_PREFIXES};
use crate::config::{TaskKind, TrainConfig};
use crate::data::SkipLog;
use crate::engine::{self, Built, Direction, EpochCallback, LoadedRun, Losses, Objective, Task};
use crate::export::ExportOptions;
use crate::optim::Param;
use crate::precision::Precision;
use crate::run_dir::RunDir;
use crate::Result;
use kiln_tune::{Distribution, SearchSpace};

/// What a finished detection run reports.
pub type TrainOutcome = engine::Outcome<Detection>;

/// Starts a new detection run.
pub fn train(config: &TrainConfig) -> Result<TrainOutcome> {
    train_observed(config, &mut |_| ControlFlow::Continue(()))
}

/// [`train`] with a callback after every epoch.
pub fn train_observed(config: &TrainConfig, on_epoch: EpochCallback) -> Result<TrainOutcome> {
    engine::train::<Detection>(config, on_epoch)
}

/// Continues a detection run from its `last` checkpoint.
pub fn resume(run: RunDir) -> Result<TrainOutcome> {
    engine::resume::<Detection>(run, &mut |_| ControlFlow::Continue(()))
}

/// The loss parts of a Faster R-CNN run (`results.csv`'s `train_*`): the total, the RPN's objectness and box
/// losses, the RoI heads' classification and box losses.
pub const FASTER_RCNN_LOSSES: &[&str] = &["loss", "rpn_obj", "rpn_box", "cls", "box"];

/// The detection task over one dataset.
pub struct Detection {
    dataset: DetectionDataset,
    settings: DetectSettings,
    img_size: u32,
    /// The input's locations (points, strides) on the training device, made at the first step.
    locations: std::cell::OnceCell<(tch::Tensor, tch::Tensor)>,
}

impl engine::Evaluation for DetectionEvaluation {
    fn values(&self) -> Vec<Option<f64>> {
        let c = &self.metrics.coco;
        let t = &self.metrics.at_threshold;
        // COCO's -1 (no ground truth in a size range) is not a value.
        let coco = |v: f64| (v >= 0.0).then_some(v);
        vec![
            Some(self.loss),
            coco(c.map),
            coco(c.map_50),
            coco(c.map_75),
            coco(c.map_small),
            coco(c.map_medium),
            coco(c.map_large),
            coco(c.mar_100),
            Some(t.precision),
            Some(t.recall),
            Some(t.f1),
            Some(t.mean_iou),
            Some(t.best_f1_threshold),
            coco(c.map_50).map(|m| 0.5 * m + 0.5 * t.f1),
        ]
    }
    fn images(&self) -> usize {
        self.images
    }
}

impl Task for Detection {
    const KIND: TaskKind = TaskKind::Detect;
    const LOSSES: &'static [&'static str] = &["loss", "cls", "box", "ctr"];
    const METRICS: &'static [&'static str] = &[
        "loss",
        "map",
        "map_50",
        "map_75",
        "map_small",
        "map_medium",
        "map_large",
        "mar_100",
        "precision",
        "recall",
        "f1",
        "mean_iou",
        "best_f1_threshold",
        "map50_f1",
    ];
    const OBJECTIVE: Objective = Objective { metric: "map", direction: Direction::Maximize };
    const PLOTTED: &'static [(&'static str, &'static str)] =
        &[("map", "mAP@[.5:.95]"), ("map_50", "mAP@.5"), ("f1", "F1"), ("mean_iou", "mean IoU")];
    const LOSS_LABEL: &'static str = "focal + GIoU + centerness";

    type Settings = DetectSettings;
    type Model = DetectorModel;
    type Loader = DetectLoader;
    type Evaluation = DetectionEvaluation;
    type Metrics = DetectionMetrics;
    type Report = DetectionReport;
    type EvalSettings = ();
    type PredictSettings = ();
    type Prediction = super::predict::DetectionPrediction;
    type GraphSpec = DetectorGraphSpec;
    const DEPLOYED_METRIC: &'static str = "mAP@[.5:.95]";

    fn open(config: &TrainConfig) -> Result<Self> {
        Ok(Self {
            dataset: open_dataset(config)?,
            settings: config.task_settings()?,
            img_size: config.img_size,
            locations: std::cell::OnceCell::new(),
        })
    }

    fn open_eval(config: &TrainConfig, _classes: &[String]) -> Result<Self> {
        Self::open(config)
    }

    fn synthetic(config: &TrainConfig, class_names: Vec<String>) -> Result<Self> {
        let dataset = DetectionDataset {
            root: PathBuf::new(),
            layout: annotations::Layout::Csv,
            exif: Default::default(),
            class_names,
            train: Vec::new(),
            val: Vec::new(),
            test: Vec::new(),
            report: Default::default(),
        };
        Ok(Self {
            dataset,
            settings: config.task_settings()?,
            img_size: config.img_size,
            locations: std::cell::OnceCell::new(),
        })
    }

    fn class_names(&self) -> &[String] {
        &self.dataset.class_names
    }

    fn dataset_summary(&self) -> serde_json::Value {
        let d = &self.dataset;
        let split = |s: &[annotations::DetectionSample]| {
            serde_json::json!({"images": s.len(), "boxes": s.iter().map(|x| x.boxes.len()).sum::<usize>(),
                "negatives": s.iter().filter(|x| x.boxes.is_empty()).count()})
        };
        serde_json::json!({
            "root": d.root, "layout": d.layout, "class_names": d.class_names,
            "train": split(&d.train), "val": split(&d.val), "test": split(&d.test), "annotation_report": d.report,
        })
    }

    fn describe(&self) -> String {
        let d = &self.dataset;
        format!(
            "{} classes; {} train / {} val / {} test images, {} boxes",
            d.num_classes(),
            d.train.len(),
            d.val.len(),
            d.test.len(),
            d.num_boxes()
        )
    }

    fn objective_of(config: &TrainConfig) -> Result<Objective> {
        let settings: DetectSettings = config.task_settings()?;
        Ok(Objective { metric: settings.objective.metric(), direction: Direction::Maximize })
    }

    fn has_test(&self) -> bool {
        !self.dataset.test.is_empty()
    }

    fn loss_names(&self) -> &'static [&'static str] {
        match self.settings.head {
            DetectHead::Fcos => Self::LOSSES,
            DetectHead::FasterRcnn => FASTER_RCNN_LOSSES,
        }
    }

    fn loss_label(&self) -> &'static str {
        match self.settings.head {
            DetectHead::Fcos => Self::LOSS_LABEL,
            DetectHead::FasterRcnn => "RPN BCE + smooth L1, RoI CE + smooth L1",
        }
    }

    fn check_resume(&self, config: &TrainConfig, ckpt: &Checkpoint) -> Result<()> {
        engine::check_classes(&config.data, "train", &ckpt.state.class_names, &self.dataset.class_names)
    }

    fn new_model(vs: &nn::VarStore, config: &TrainConfig, class_names: &[String]) -> Result<DetectorModel> {
        DetectorModel::new(vs, config, class_names.len())
    }

    fn build_model(&self, vs: &nn::VarStore, config: &TrainConfig) -> Result<Built<DetectorModel>> {
        let model = DetectorModel::new(vs, config, self.dataset.num_classes())?;
        model.check_input_size(config.img_size as i64, config.img_size as i64)?;
        let loaded = match &config.weights {
            Some(path) => {
                let tensors = read_safetensors(path)?;
                let report = load_into(vs, tensors, path, HeadPolicy::Backbone, &TRAINING_PREFIXES)?;
                Some(format!(
                    "loaded {} backbone tensors from {} (FPN and heads start fresh)",
                    report.loaded,
                    path.display()
                ))
            }
            None => None,
        };
        Ok(Built { model, loaded })
    }

    fn trainable_params(&self, vs: &nn::VarStore, model: &DetectorModel, config: &TrainConfig) -> Vec<Param> {
        engine::freeze::trainable_params(vs, &model.encoder_units(), config.freeze.0)
    }

    fn loaders(&self, config: &TrainConfig, skips: &Arc<SkipLog>) -> Result<(DetectLoader, Option<DetectLoader>)> {
        let mut train = make_loader(
            config,
            &self.dataset,
            Split::Train,
            DetectTransform::Train(self.settings.augment.clone()),
            skips,
        )?;
        if self.settings.balanced_sampling {
            train = with_balanced_sampling(train);
        }
        let val = if self.dataset.val.is_empty() {
            None
        } else {
            Some(make_loader(config, &self.dataset, Split::Val, DetectTransform::Eval, skips)?)
        };
        Ok((train, val))
    }

    fn test_loader(&self, config: &TrainConfig, skips: &Arc<SkipLog>) -> Result<Option<DetectLoader>> {
        (!self.dataset.test.is_empty())
            .then(|| make_loader(config, &self.dataset, Split::Test, DetectTransform::Eval, skips))
            .transpose()
    }

    fn losses(
        &self,
        model: &DetectorModel,
        batch: &DetectBatch,
        precision: &Precision,
        _config: &TrainConfig,
    ) -> Result<Losses> {
        match model {
            DetectorModel::Fcos(model) => {
                let (points, strides) = self.locations.get_or_init(|| {
                    let (_, points, strides) = locations_on(model, self.img_size as i64, precision.device);
                    (points, strides)
                });
                batch_losses(model, batch, precision, points, strides)
            }
            DetectorModel::FasterRcnn(model) => {
                faster_rcnn_batch_losses(model, batch, precision, &mut FasterRcnn::seed_from_torch())
            }
        }
    }

    /// Two boxes per image at fixed places and sizes (a small and a large one), classes cycling.
    fn synthetic_batch(&self, config: &TrainConfig, device: tch::Device) -> Result<DetectBatch> {
        let (size, classes) = (config.img_size as f32, self.dataset.num_classes().max(1));
        let s = config.img_size as i64;
        Ok(DetectBatch {
            images: tch::Tensor::randn([config.batch as i64, 3, s, s], (tch::Kind::Float, device)),
            targets: (0..config.batch)
                .map(|i| ImageTargets {
                    boxes: vec![
                        TargetBox { bbox: [size * 0.1, size * 0.15, size * 0.35, size * 0.4], class: i % classes },
                        TargetBox { bbox: [size * 0.4, size * 0.3, size * 0.95, size * 0.9], class: (i + 1) % classes },
                    ],
                    index: i,
                    placement: None,
                })
                .collect(),
            paths: Vec::new(),
        })
    }

    fn evaluate(
        &self,
        model: &DetectorModel,
        loader: &DetectLoader,
        precision: &Precision,
    ) -> Result<DetectionEvaluation> {
        evaluate(model, loader, precision, &self.settings, self.dataset.num_classes(), self.img_size)
    }

    fn metrics(evaluation: &DetectionEvaluation) -> DetectionMetrics {
        evaluation.metrics.clone()
    }

    const MERGES_EVALUATIONS: bool = true;

    fn evaluation_share(evaluation: &DetectionEvaluation) -> Result<Vec<u8>> {
        engine::task::encode_share(&DetectionShare::of(evaluation))
    }

    fn merge_evaluation_shares(&self, shares: Vec<Vec<u8>>) -> Result<DetectionEvaluation> {
        let shares = engine::task::decode_shares(&shares)?;
        Ok(DetectionShare::merge(shares, &self.dataset.val, &self.settings, self.dataset.num_classes()))
    }

    fn plot_validation(&self, run: &RunDir, evaluation: &DetectionEvaluation) -> Result<()> {
        let path = run.path.join("val_predictions.png");
        let d = &self.dataset;
        draw_first_images(&path, &d.val, d.exif, evaluation, &d.class_names, self.settings.score_threshold)
    }

    fn default_space() -> SearchSpace {
        SearchSpace::from([
            ("lr".to_string(), Distribution::Float { low: 3e-4, high: 1e-2, log: true, step: None }),
            ("weight_decay".to_string(), Distribution::Float { low: 1e-4, high: 1e-1, log: true, step: None }),
            ("batch".to_string(), Distribution::Categorical { choices: vec![8.into(), 16.into(), 32.into()] }),
            ("detect.augment.mosaic".to_string(), Distribution::Float { low: 0.0, high: 1.0, log: false, step: None }),
            (
                "detect.nms.iou_threshold".to_string(),
                Distribution::Float { low: 0.4, high: 0.7, log: false, step: None },
            ),
            // As the detection seed tuned it; it moves precision / recall / F1, not mAP.
            ("detect.score_threshold".to_string(), Distribution::Float { low: 0.1, high: 0.6, log: false, step: None }),
        ])
    }

    fn evaluate_split(
        &self,
        loaded: &LoadedRun<DetectorModel>,
        run: &RunDir,
        split: Split,
        _settings: &(),
    ) -> Result<DetectionReport> {
        report_split(&self.dataset, loaded, run, split)
    }

    fn predict(
        loaded: &LoadedRun<DetectorModel>,
        files: &[PathBuf],
        _settings: &(),
    ) -> Result<Vec<super::predict::DetectionPrediction>> {
        super::predict::predict_loaded(loaded, files)
    }

    fn graph_spec(_run: &RunDir, ckpt: &Checkpoint, options: &ExportOptions) -> Result<DetectorGraphSpec> {
        super::export::graph_spec(ckpt, options)
    }

    fn onnx(
        model: &DetectorModel,
        spec: &DetectorGraphSpec,
        options: &ExportOptions,
    ) -> Result<(Vec<u8>, kiln_export::ModelMetadata, usize)> {
        detector_onnx(model, spec, options)
    }

    fn split_images(config: &TrainConfig, split: Split) -> Result<crate::data::LabelledImages> {
        Ok(open_dataset(config)?.split(split).iter().map(|s| (s.path.clone(), None)).collect())
    }

    fn deployed_metric(config: &TrainConfig, path: &Path) -> Result<Option<f64>> {
        super::deployed::deployed_map(config, path)
    }
}
