//! Evaluating a finished run's checkpoint on a split (`kiln val`, `kiln test`, and the test pass after training):
//! `<split>_metrics.json` and `<split>_confusion_matrix.png` in the run directory.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use kiln_models::ImageClassifier;

use super::energy::{plot_energy, EnergySummary};
use super::evaluate::{evaluate, EvalSettings, Evaluation};
use super::image_folder::ImageFolder;
use super::setup::make_loader;
use super::transform::Transform;
use super::tta::Tta;
use crate::data::{SkipLog, Split};
use crate::engine::{check_classes, LoadedRun};
use crate::fsutil::write_atomic;
use crate::metrics::ClassificationMetrics;
use crate::plots::plot_confusion_matrix;
use crate::run_dir::RunDir;
use crate::{Error, Result};

/// The metrics of one checkpoint on one split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitReport {
    pub split: Split,
    pub checkpoint: PathBuf,
    /// The epoch the checkpoint was saved at.
    pub epoch: usize,
    pub images: usize,
    pub loss: f64,
    pub metrics: ClassificationMetrics,
    pub class_names: Vec<String>,
    /// Rows are true classes, columns predicted classes.
    pub confusion_matrix: Vec<Vec<u64>>,
    /// Files skipped as unreadable, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// The energy scores' distribution (out-of-distribution detection; `<split>_energy.png` is its histogram).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy: Option<EnergySummary>,
    /// The test-time augmentation averaged, when there was any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tta: Option<Tta>,
}

/// One split's evaluation and the files its loader skipped.
pub(crate) struct SplitEvaluation {
    pub eval: Evaluation,
    pub skips: Arc<SkipLog>,
}

/// Evaluates the loaded checkpoint on `split` of `dataset`: an error when the dataset's classes are not the
/// checkpoint's, the split has no images, or none of them could be read.
pub(crate) fn evaluate_loaded(
    dataset: &ImageFolder,
    loaded: &LoadedRun<ImageClassifier>,
    split: Split,
    settings: &EvalSettings,
) -> Result<SplitEvaluation> {
    let config = &loaded.config;
    check_classes(&config.data, split.name(), &loaded.ckpt.state.class_names, &dataset.class_names)?;
    let samples = dataset.split(split);
    if samples.is_empty() {
        let reason = format!("split '{split}' has no images");
        return Err(Error::Dataset { root: config.data.clone(), reason });
    }
    let skips = Arc::new(SkipLog::default());
    let loader = make_loader(config, samples, Transform::eval(config.eval_crop_pct), &skips)?;
    let eval = evaluate(&loaded.model, &loader, &loaded.precision, dataset.class_names.len(), settings)?;
    if eval.images == 0 {
        return Err(Error::NoReadableImages {
            root: config.data.clone(),
            split: split.name().into(),
            skipped: skips.count(),
        });
    }
    Ok(SplitEvaluation { eval, skips })
}

/// Evaluates the loaded checkpoint on `split` with test-time augmentation `tta`, writing the report files into
/// the run: `<split>_metrics.json`, `<split>_confusion_matrix.png`, `<split>_reliability.png` and
/// `<split>_energy.png`, or with test-time augmentation the same under `<split>_tta_*`.
pub(crate) fn report_split(
    dataset: &ImageFolder,
    loaded: &LoadedRun<ImageClassifier>,
    run: &RunDir,
    split: Split,
    tta: &Tta,
) -> Result<SplitReport> {
    tta.validate()?;
    let settings = EvalSettings { tta: tta.clone(), keep_scores: false };
    let SplitEvaluation { eval, skips } = evaluate_loaded(dataset, loaded, split, &settings)?;
    let tta = (!tta.is_identity()).then(|| tta.clone());
    let report = SplitReport {
        split,
        checkpoint: loaded.ckpt.path.clone(),
        epoch: loaded.ckpt.state.epoch,
        images: eval.images,
        loss: eval.loss,
        metrics: eval.metrics,
        class_names: dataset.class_names.clone(),
        confusion_matrix: eval.confusion.rows(),
        skipped: skips.entries(),
        energy: EnergySummary::of(&eval.energies),
        tta,
    };
    let stem = if report.tta.is_some() { format!("{}_tta", split.name()) } else { split.name().to_string() };
    write_report_files(&report, &eval.confusion, &run.metrics(&stem), &run.confusion_matrix(&stem))?;
    let reliability = run.path.join(format!("{stem}_reliability.png"));
    if let Err(e) = eval.reliability.plot(&stem, &reliability) {
        eprintln!("warning: no reliability diagram: {e}");
    }
    if let Err(e) = plot_energy(&eval.energies, &stem, &run.path.join(format!("{stem}_energy.png"))) {
        eprintln!("warning: no energy histogram: {e}");
    }
    Ok(report)
}

/// Writes the split's metrics JSON, then its confusion-matrix PNG. The plot is best-effort: when it cannot be
/// drawn (more classes than fit, a font or disk problem) a warning names why and the metrics stay written.
/// Returns that warning.
pub fn write_report_files(
    report: &SplitReport,
    confusion: &crate::metrics::ConfusionMatrix,
    metrics_path: &std::path::Path,
    plot_path: &std::path::Path,
) -> Result<Option<String>> {
    let json = serde_json::to_vec_pretty(report).expect("the report serialises");
    write_atomic(metrics_path, &json)?;
    Ok(plot_confusion_matrix(confusion, &report.class_names, plot_path).err().map(|e| {
        let warning = format!("no confusion-matrix plot: {e} (the metrics are in {})", metrics_path.display());
        eprintln!("warning: {warning}");
        warning
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ConfusionMatrix;

    #[test]
    fn too_many_classes_to_plot_still_writes_the_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let n = 2001;
        let mut cm = ConfusionMatrix::new(n);
        cm.add(0, 0);
        let report = SplitReport {
            split: Split::Test,
            checkpoint: "best.safetensors".into(),
            epoch: 1,
            images: 1,
            loss: 0.5,
            metrics: cm.metrics(),
            class_names: (0..n).map(|i| format!("c{i}")).collect(),
            confusion_matrix: Vec::new(),
            skipped: Vec::new(),
            energy: None,
            tta: None,
        };
        let (json, png) = (dir.path().join("test_metrics.json"), dir.path().join("cm.png"));
        let warning = write_report_files(&report, &cm, &json, &png).unwrap().expect("the plot is refused");
        assert!(warning.contains("2001 classes") && warning.contains("test_metrics.json"), "{warning}");
        assert!(json.is_file() && !png.exists());
        let back: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(back["class_names"].as_array().unwrap().len(), n);
    }
}
