//! The recognizer's metric of an exported model, for int8's comparison: CER (greedy decoding) on the run's val
//! split, through kiln-infer's `TextRecognizer` as an application runs it. Lines that do not decode are left out.

use std::path::Path;

use kiln_infer::text_metrics::TextScores;
use kiln_infer::{Model, TextRecognizer};

use crate::config::TrainConfig;
use crate::data::Split;
use crate::{Error, Result};

/// CER of the model at `path` on the val split (read within the model's charset); `None` without val lines.
pub fn deployed_cer(config: &TrainConfig, path: &Path) -> Result<Option<f64>> {
    let err = |e: kiln_infer::Error| Error::Int8 { path: path.to_path_buf(), reason: e.to_string() };
    let recognizer = TextRecognizer::new(Model::builder().open(path).map_err(err)?).map_err(err)?;
    let charset = recognizer.charset().to_vec();
    let dataset = super::setup::open_dataset(config, Some(&charset))?;
    let lines = dataset.split(Split::Val.name());
    if lines.is_empty() {
        return Ok(None);
    }
    let mut scores = TextScores::default();
    for line in lines {
        if let Ok(reading) = recognizer.predict_path(&line.path) {
            scores.add(&line.text, &reading.text);
        }
    }
    Ok(Some(scores.cer()))
}
