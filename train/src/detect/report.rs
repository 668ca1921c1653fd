//! Evaluating a finished detection run's checkpoint on a split (`kiln val` / `kiln test` and the test pass after
//! training): `<split>_metrics.json` and `<split>_pr_curves.png` (per class, IoU 0.5) in the run directory.

use std::path::PathBuf;
use std::sync::Arc;

use super::model::DetectorModel;
use serde::{Deserialize, Serialize};

use super::annotations::{DetectionDataset, Split};
use super::evaluate::{draw_first_images, evaluate, DetectionMetrics};
use super::loader::DetectTransform;
use super::settings::DetectSettings;
use super::setup::make_loader;
use crate::data::SkipLog;
use crate::engine::{check_classes, LoadedRun};
use crate::fsutil::write_atomic;
use crate::plots::{plot_panels, Panel, Series};
use crate::run_dir::RunDir;
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

/// Evaluates the loaded checkpoint on `split` of `dataset`, writing the report files into the run.
pub(crate) fn report_split(
    dataset: &DetectionDataset,
    loaded: &LoadedRun<DetectorModel>,
    run: &RunDir,
    split: Split,
) -> Result<DetectionReport> {
    let config = &loaded.config;
    check_classes(&config.data, split.name(), &loaded.ckpt.state.class_names, &dataset.class_names)?;
    if dataset.split(split).is_empty() {
        return Err(Error::Dataset { root: config.data.clone(), reason: format!("split '{split}' has no images") });
    }
    let skips = Arc::new(SkipLog::default());
    let loader = make_loader(config, dataset, split, DetectTransform::Eval, &skips)?;
    let settings: DetectSettings = config.task_settings()?;
    let eval = evaluate(&loaded.model, &loader, &loaded.precision, &settings, dataset.num_classes(), config.img_size)?;
    if eval.images == 0 {
        return Err(Error::NoReadableImages {
            root: config.data.clone(),
            split: split.name().into(),
            skipped: skips.count(),
        });
    }
    let report = DetectionReport {
        split,
        checkpoint: loaded.ckpt.path.clone(),
        epoch: loaded.ckpt.state.epoch,
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
    let samples = dataset.split(split);
    draw_first_images(&drawn, samples, dataset.exif, &eval, &dataset.class_names, settings.score_threshold)?;
    Ok(report)
}

impl std::fmt::Display for DetectionReport {
    /// One line: the split, its images and the checkpoint's epoch, then the metrics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} ({} images) at epoch {}: {}", self.split, self.images, self.epoch, self.metrics)
    }
}
