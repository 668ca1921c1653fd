//! Evaluating a finished OCR run's checkpoint on a split (`kiln val` / `kiln test` and the test pass after
//! training): `<split>_metrics.json` and `<split>_predictions.csv` (every line: file, label, reading, confidence,
//! exact match, character edit distance) in the run directory.

use std::path::PathBuf;
use std::sync::Arc;

use kiln_infer::listing::csv_field;
use kiln_infer::text_metrics::edit_distance;
use kiln_models::TextLineRecognizer;
use serde::{Deserialize, Serialize};

use super::dataset::TextDataset;
use super::evaluate::{evaluate, TextMetrics};
use super::loader::TextTransform;
use super::setup::make_loader;
use crate::data::{SkipLog, Split};
use crate::engine::LoadedRun;
use crate::fsutil::write_atomic;
use crate::run_dir::RunDir;
use crate::{Error, Result};

/// The OCR metrics of one checkpoint on one split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextReport {
    pub split: Split,
    pub checkpoint: PathBuf,
    pub epoch: usize,
    pub lines: usize,
    pub loss: f64,
    pub metrics: TextMetrics,
    pub charset: Vec<String>,
    /// Files skipped as unreadable, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Evaluates the loaded checkpoint on `split` of `dataset`, writing the report files into the run.
pub(crate) fn report_split(
    dataset: &TextDataset,
    loaded: &LoadedRun<TextLineRecognizer>,
    run: &RunDir,
    split: Split,
) -> Result<TextReport> {
    let config = &loaded.config;
    let samples = dataset.split(split.name());
    if samples.is_empty() {
        return Err(Error::Dataset { root: config.data.clone(), reason: format!("split '{split}' has no lines") });
    }
    let skips = Arc::new(SkipLog::default());
    let loader = make_loader(config, dataset, split, TextTransform::Eval, &skips)?;
    let eval = evaluate(&loaded.model, &loader, &dataset.charset, &loaded.precision)?;
    if eval.images == 0 {
        return Err(Error::NoReadableImages {
            root: config.data.clone(),
            split: split.name().into(),
            skipped: skips.count(),
        });
    }
    let report = TextReport {
        split,
        checkpoint: loaded.ckpt.path.clone(),
        epoch: loaded.ckpt.state.epoch,
        lines: eval.images,
        loss: eval.loss,
        metrics: eval.metrics.clone(),
        charset: dataset.charset.chars().to_vec(),
        skipped: skips.entries(),
    };
    write_atomic(&run.metrics(split.name()), &serde_json::to_vec_pretty(&report).expect("the report serialises"))?;
    let mut csv = String::from("path,label,prediction,confidence,correct,edit_distance\n");
    for reading in &eval.readings {
        let sample = &samples[reading.index];
        let label: Vec<char> = sample.text.chars().collect();
        let read: Vec<char> = reading.text.chars().collect();
        csv.push_str(&format!(
            "{},{},{},{:.4},{},{}\n",
            csv_field(&sample.path.display().to_string()),
            csv_field(&sample.text),
            csv_field(&reading.text),
            reading.confidence,
            sample.text == reading.text,
            edit_distance(&label, &read)
        ));
    }
    write_atomic(&run.path.join(format!("{}_predictions.csv", split.name())), csv.as_bytes())?;
    Ok(report)
}

impl std::fmt::Display for TextReport {
    /// One line: the split, its lines and the checkpoint's epoch, then the metrics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} ({} lines) at epoch {}: {}", self.split, self.lines, self.epoch, self.metrics)
    }
}
