//! Evaluating a finished detection run's checkpoint on a split (`kiln val` / `kiln test` and the test pass after
//! training): `<split>_metrics.json` and `<split>_pr_curves.png` (per class, IoU 0.5) in the run directory.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::nn;

use kiln_models::weights::{load_into, HeadPolicy};
use kiln_models::ObjectDetector;

use super::annotations::Split;
use super::evaluate::{draw_first_images, evaluate, DetectionMetrics};
use super::loader::DetectTransform;
use super::task::{detector_config, make_loader, open_dataset};
use crate::checkpoint;
use crate::config::TrainConfig;
use crate::data::SkipLog;
use crate::engine::prepare_runtime;
use crate::fsutil::write_atomic;
use crate::plots::{plot_panels, Panel, Series};
use crate::precision::Precision;
use crate::run_dir::{RunDir, Which};
use crate::{Error, Result};

/// The detection metrics of one checkpoint on one split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectionReport {
    pub split: Split,
    pub checkpoint: PathBuf,
    pub epoch: usize,
    pub images: usize,
    pub loss: f64,
    pub metrics: DetectionMetrics,
    pub class_names: Vec<String>,
    /// Files skipped as unreadable, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Options of [`evaluate_run`].
#[derive(Clone, Debug, Default)]
pub struct EvalOptions {
    pub which: Which,
    /// Another dataset root with the same classes.
    pub data: Option<PathBuf>,
    pub device: Option<String>,
}

/// Loads the run's checkpoint and evaluates it on `split`, writing the report files into the run.
pub fn evaluate_run(run: &RunDir, split: Split, options: &EvalOptions) -> Result<DetectionReport> {
    let mut config = TrainConfig::load(&run.config())?;
    if let Some(data) = &options.data {
        config.data = data.clone();
    }
    config.weights = None;
    let device = prepare_runtime(&config, options.device.as_deref())?;
    let ckpt = checkpoint::load(&run.checkpoint(options.which))?;
    let dataset = open_dataset(&config)?;
    if dataset.class_names != ckpt.state.class_names {
        return Err(Error::ClassMismatch {
            root: config.data.clone(),
            split: split.name().into(),
            expected: ckpt.state.class_names.clone(),
            found: dataset.class_names.clone(),
        });
    }
    if dataset.split(split).is_empty() {
        return Err(Error::Dataset { root: config.data.clone(), reason: format!("split '{split}' has no images") });
    }
    let vs = nn::VarStore::new(device);
    let model = ObjectDetector::new(&vs.root(), &detector_config(&config, dataset.num_classes()))?;
    load_into(&vs, ckpt.weights(), &ckpt.path, HeadPolicy::Strict, &[])?;
    let skips = Arc::new(SkipLog::default());
    let loader = make_loader(&config, &dataset, split, DetectTransform::Eval, &skips)?;
    let precision = Precision::resolve(config.amp, config.channels_last, device)?;
    precision.prepare_params(&vs)?;
    let eval = evaluate(&model, &loader, &precision, &config.detect, dataset.num_classes(), config.img_size)?;
    if eval.images == 0 {
        return Err(Error::NoReadableImages {
            root: config.data.clone(),
            split: split.name().into(),
            skipped: skips.count(),
        });
    }
    let report = DetectionReport {
        split,
        checkpoint: ckpt.path.clone(),
        epoch: ckpt.state.epoch,
        images: eval.images,
        loss: eval.loss,
        metrics: eval.metrics.clone(),
        class_names: dataset.class_names.clone(),
        skipped: skips.entries(),
    };
    write_atomic(&run.metrics(split.name()), &serde_json::to_vec_pretty(&report).expect("the report serialises"))?;
    let series = dataset
        .class_names
        .iter()
        .zip(&eval.pr_curves)
        .map(|(name, curve)| Series { name: name.clone(), points: curve.clone() })
        .collect();
    let panel = Panel {
        title: format!("precision-recall at IoU 0.5 ({split})"),
        x_label: "recall".into(),
        y_label: "precision".into(),
        series,
        log_y: false,
    };
    plot_panels(&[panel], &run.path.join(format!("{}_pr_curves.png", split.name())))?;
    let drawn = run.path.join(format!("{}_predictions.png", split.name()));
    draw_first_images(&drawn, dataset.split(split), &eval, &dataset.class_names, config.detect.score_threshold)?;
    Ok(report)
}
