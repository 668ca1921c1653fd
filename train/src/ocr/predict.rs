//! `kiln predict` on an OCR run: the checkpoint on libtorch over image files, through the steps validation and
//! kiln-infer's `TextRecognizer` take (fit-height preprocessing, greedy CTC over the line's frames), so it reads
//! what the exported model reads.

use std::path::PathBuf;
use std::sync::Arc;

use kiln_infer::Reading;
use kiln_models::TextLineRecognizer;

use super::charset::Charset;
use super::dataset::TextSample;
use super::evaluate::evaluate;
use super::loader::{TextItems, TextLoader, TextTransform};
use super::setup::line_input;
use crate::data::SkipLog;
use crate::engine::{LoadedRun, Predicted};
use crate::Result;

/// One input's reading, or why it could not be read.
pub type LinePrediction = Predicted<Reading>;

/// Reads `files` with a loaded checkpoint in batches of the config's size; unreadable files are reported and the
/// rest go on.
pub(crate) fn predict_loaded(loaded: &LoadedRun<TextLineRecognizer>, files: &[PathBuf]) -> Result<Vec<LinePrediction>> {
    let (config, model, precision) = (&loaded.config, &loaded.model, &loaded.precision);
    let charset = Charset::new(loaded.ckpt.state.class_names.iter().cloned());
    let samples: Vec<TextSample> = files.iter().map(|p| TextSample { path: p.clone(), text: String::new() }).collect();
    let skips = Arc::new(SkipLog::default());
    let items = TextItems::new(samples, charset.clone(), TextTransform::Eval, line_input(config)?, Arc::clone(&skips));
    let loader = TextLoader::new(items, config.loader_settings())?;
    let eval = evaluate(model, &loader, &charset, precision)?;
    let mut results = LinePrediction::unread(files);
    for reading in eval.readings {
        let value = Reading { text: reading.text, confidence: reading.confidence, chars: reading.chars };
        results[reading.index].value = Some(value);
    }
    Predicted::fill_errors(&mut results, &skips.entries());
    Ok(results)
}
