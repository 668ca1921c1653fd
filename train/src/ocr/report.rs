//! Evaluating a finished OCR run's checkpoint on a split (`kiln val` / `kiln test` and the test pass after
//! training): `<split>_metrics.json` and `<split>_predictions.csv` (every line: file, label, reading, confidence,
//! exact match, character edit distance) in the run directory.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::nn;

use kiln_infer::text_metrics::edit_distance;
use kiln_models::weights::{load_into, HeadPolicy};
use kiln_models::TextLineRecognizer;

use super::evaluate::{evaluate, TextMetrics};
use super::loader::TextTransform;
use super::task::{make_loader, open_dataset, recognizer_config};
use crate::checkpoint;
use crate::config::TrainConfig;
use crate::data::{SkipLog, Split};
use crate::engine::prepare_runtime;
use crate::fsutil::write_atomic;
use crate::precision::Precision;
use crate::run_dir::{RunDir, Which};
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

/// Options of [`evaluate_run`].
#[derive(Clone, Debug, Default)]
pub struct EvalOptions {
    pub which: Which,
    /// Another dataset root (its labels must be within the run's charset).
    pub data: Option<PathBuf>,
    pub device: Option<String>,
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Loads the run's checkpoint and evaluates it on `split`, writing the report files into the run.
pub fn evaluate_run(run: &RunDir, split: Split, options: &EvalOptions) -> Result<TextReport> {
    let mut config = TrainConfig::load(&run.config())?;
    if let Some(data) = &options.data {
        config.data = data.clone();
    }
    config.weights = None;
    let device = prepare_runtime(&config, options.device.as_deref())?;
    let ckpt = checkpoint::load(&run.checkpoint(options.which))?;
    let dataset = open_dataset(&config, Some(&ckpt.state.class_names))?;
    let samples = dataset.split(split.name());
    if samples.is_empty() {
        return Err(Error::Dataset { root: config.data.clone(), reason: format!("split '{split}' has no lines") });
    }
    let vs = nn::VarStore::new(device);
    let model = TextLineRecognizer::new(&vs.root(), &recognizer_config(&config, dataset.charset.len()))?;
    load_into(&vs, ckpt.weights(), &ckpt.path, HeadPolicy::Strict, &[])?;
    let skips = Arc::new(SkipLog::default());
    let loader = make_loader(&config, &dataset, split, TextTransform::Eval, &skips)?;
    let precision = Precision::resolve(config.amp, config.channels_last, device)?;
    precision.prepare_params(&vs)?;
    let eval = evaluate(&model, &loader, &dataset.charset, &precision)?;
    if eval.images == 0 {
        return Err(Error::NoReadableImages {
            root: config.data.clone(),
            split: split.name().into(),
            skipped: skips.count(),
        });
    }
    let report = TextReport {
        split,
        checkpoint: ckpt.path.clone(),
        epoch: ckpt.state.epoch,
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
