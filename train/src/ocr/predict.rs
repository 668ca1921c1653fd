//! `kiln predict` on an OCR run: the checkpoint on libtorch over image files, through the steps validation and
//! kiln-infer's `TextRecognizer` take (fit-height preprocessing, greedy CTC over the line's frames), so it reads
//! what the exported model reads.

use std::path::PathBuf;
use std::sync::Arc;

use kiln_infer::{ListingFormat, Reading};
use kiln_models::TextLineRecognizer;

use super::charset::Charset;
use super::dataset::TextSample;
use super::evaluate::evaluate;
use super::loader::{TextLoader, TextTransform};
use super::task::line_input;
use crate::data::SkipLog;
use crate::engine::{LoadedRun, PredictionListing};
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

/// Reads `files` with a loaded checkpoint in batches of the config's size; unreadable files are reported and the
/// rest go on.
pub(crate) fn predict_loaded(loaded: &LoadedRun<TextLineRecognizer>, files: &[PathBuf]) -> Result<Vec<LinePrediction>> {
    let (config, model, precision) = (&loaded.config, &loaded.model, &loaded.precision);
    let charset = Charset::new(loaded.ckpt.state.class_names.iter().cloned());
    let samples: Vec<TextSample> = files.iter().map(|p| TextSample { path: p.clone(), text: String::new() }).collect();
    let skips = Arc::new(SkipLog::default());
    let loader = TextLoader::new(
        samples,
        charset.clone(),
        TextTransform::Eval,
        line_input(config),
        config.batch,
        config.workers,
        0,
        Arc::clone(&skips),
    )
    .map_err(|e| Error::InvalidSetting { key: "workers".into(), reason: e.to_string() })?;
    let eval = evaluate(model, &loader, &charset, precision)?;
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

impl PredictionListing for LinePrediction {
    fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// kiln-infer's reading listing, as `kiln infer` writes it for the exported model.
    fn write_listing(
        predictions: &[Self],
        format: ListingFormat,
        names: &[String],
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        let readings: Vec<Option<Reading>> = predictions
            .iter()
            .map(|p| {
                p.text.as_ref().map(|text| Reading {
                    text: text.clone(),
                    confidence: p.confidence,
                    chars: p.chars.clone(),
                })
            })
            .collect();
        let rows = predictions.iter().zip(&readings).map(|(p, reading)| {
            let result = reading.as_ref().ok_or_else(|| p.error.as_deref().unwrap_or("not read"));
            (p.path.as_path(), result)
        });
        kiln_infer::write_listing(out, format, rows, names).map(|_| ())
    }
}
