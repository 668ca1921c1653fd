//! `kiln predict` on a detection run: the checkpoint on libtorch over image files, through the very steps
//! validation and `kiln-infer`'s `Detector` take (letterbox, decode, the run's NMS, original pixels), so it gives the
//! detections the exported model gives.

use std::path::PathBuf;
use std::sync::Arc;

use kiln_infer::nms::Detection;
use kiln_infer::ListingFormat;
use kiln_models::ObjectDetector;

use super::annotations::DetectionSample;
use super::evaluate::evaluate;
use super::loader::{DetectLoader, DetectTransform};
use crate::data::SkipLog;
use crate::engine::{LoadedRun, PredictionListing};
use crate::{Error, Result};

/// One input's detections, or why it could not be read.
#[derive(Clone, Debug)]
pub struct DetectionPrediction {
    pub path: PathBuf,
    pub detections: Option<Vec<Detection>>,
    pub error: Option<String>,
}

/// Detects on `files` with a loaded checkpoint; unreadable files are reported and the rest go on.
pub(crate) fn predict_loaded(
    loaded: &LoadedRun<ObjectDetector>,
    files: &[PathBuf],
) -> Result<Vec<DetectionPrediction>> {
    let (config, model, precision) = (&loaded.config, &loaded.model, &loaded.precision);
    let class_names = &loaded.ckpt.state.class_names;
    let mut results: Vec<DetectionPrediction> =
        files.iter().map(|p| DetectionPrediction { path: p.clone(), detections: None, error: None }).collect();
    let mut samples = Vec::new();
    let mut sample_input = Vec::new();
    for (i, path) in files.iter().enumerate() {
        match image::image_dimensions(path) {
            Ok((width, height)) => {
                samples.push(DetectionSample { path: path.clone(), width, height, boxes: Vec::new() });
                sample_input.push(i);
            }
            Err(e) => results[i].error = Some(e.to_string()),
        }
    }
    let skips = Arc::new(SkipLog::default());
    let loader = DetectLoader::new(
        samples,
        DetectTransform::Eval,
        config.normalize,
        config.img_size,
        config.batch,
        config.workers,
        config.seed,
        Arc::clone(&skips),
    )
    .map_err(|e| Error::InvalidSetting { key: "workers".into(), reason: e.to_string() })?;
    let eval = evaluate(model, &loader, precision, &config.detect, class_names.len(), config.img_size)?;
    for (index, detections) in eval.detections {
        results[sample_input[index]].detections = Some(detections);
    }
    for (path, reason) in skips.entries() {
        if let Some(r) = results.iter_mut().find(|r| r.path == path) {
            r.error = Some(reason);
        }
    }
    Ok(results)
}

impl PredictionListing for DetectionPrediction {
    fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// kiln-infer's detection listing, as `kiln infer` writes it for the exported model.
    fn write_listing(
        predictions: &[Self],
        format: ListingFormat,
        names: &[String],
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        let rows = predictions.iter().map(|p| {
            let result = p.detections.as_ref().ok_or_else(|| p.error.as_deref().unwrap_or("not read"));
            (p.path.as_path(), result)
        });
        kiln_infer::write_listing(out, format, rows, names).map(|_| ())
    }
}
