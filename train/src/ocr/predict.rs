//! `kiln predict` on an OCR run: the checkpoint on libtorch over image files, through the steps validation and
//! kiln-infer's `TextRecognizer` take (fit-height preprocessing, greedy CTC over the line's frames), so it reads
//! what the exported model reads.

use std::path::PathBuf;
use std::sync::Arc;

use tch::nn;

use kiln_models::weights::{load_into, HeadPolicy};
use kiln_models::TextLineRecognizer;

use super::charset::Charset;
use super::dataset::TextSample;
use super::evaluate::evaluate;
use super::loader::{TextLoader, TextTransform};
use super::task::{line_input, recognizer_config};
use crate::checkpoint;
use crate::config::{TaskKind, TrainConfig};
use crate::data::SkipLog;
use crate::engine::prepare_runtime;
use crate::precision::Precision;
use crate::run_dir::{RunDir, Which};
use crate::{Error, Result};

/// One input's reading, or why it could not be read.
#[derive(Clone, Debug, PartialEq)]
pub struct LinePrediction {
    pub path: PathBuf,
    pub text: Option<String>,
    pub confidence: f32,
    /// Each character with its confidence.
    pub chars: Vec<(String, f32)>,
    pub error: Option<String>,
}

/// Reads `files` with the run's `which` checkpoint; unreadable files are reported and the rest go on.
pub fn predict_lines(
    run: &RunDir,
    files: &[PathBuf],
    which: Which,
    device: Option<&str>,
    batch: Option<usize>,
) -> Result<Vec<LinePrediction>> {
    let config = TrainConfig::load(&run.config())?;
    if config.task != TaskKind::Ocr {
        return Err(Error::InvalidSetting {
            key: "run".into(),
            reason: format!("{} is a {} run, not ocr", run.path.display(), config.task.name()),
        });
    }
    let device = prepare_runtime(&config, device)?;
    let ckpt = checkpoint::load(&run.checkpoint(which))?;
    let charset = Charset::new(ckpt.state.class_names.iter().cloned());
    let vs = nn::VarStore::new(device);
    let model = TextLineRecognizer::new(&vs.root(), &recognizer_config(&config, charset.len()))?;
    load_into(&vs, ckpt.weights(), &ckpt.path, HeadPolicy::Strict, &[])?;
    let samples: Vec<TextSample> = files.iter().map(|p| TextSample { path: p.clone(), text: String::new() }).collect();
    let skips = Arc::new(SkipLog::default());
    let loader = TextLoader::new(
        samples,
        charset.clone(),
        TextTransform::Eval,
        line_input(&config),
        batch.unwrap_or(config.batch),
        config.workers,
        0,
        Arc::clone(&skips),
    )
    .map_err(|e| Error::InvalidSetting { key: "workers".into(), reason: e.to_string() })?;
    let precision = Precision::resolve(config.amp, config.channels_last, device)?;
    precision.prepare_params(&vs)?;
    let eval = evaluate(&model, &loader, &charset, &precision)?;
    let mut results: Vec<LinePrediction> = files
        .iter()
        .map(|p| LinePrediction { path: p.clone(), text: None, confidence: 0.0, chars: Vec::new(), error: None })
        .collect();
    for reading in eval.readings {
        let r = &mut results[reading.index];
        r.text = Some(reading.text);
        r.confidence = reading.confidence;
        r.chars = reading.chars;
    }
    let skipped = skips.entries();
    for r in results.iter_mut().filter(|r| r.text.is_none()) {
        r.error = Some(
            skipped.iter().find(|(p, _)| *p == r.path).map(|(_, why)| why.clone()).unwrap_or_else(|| "not read".into()),
        );
    }
    Ok(results)
}
