//! `kiln predict` on a detection run: the checkpoint on libtorch over image files, through the very steps
//! validation and `kiln-infer`'s `Detector` take (letterbox, decode, the run's NMS, original pixels), so it gives the
//! detections the exported model gives.

use std::path::PathBuf;
use std::sync::Arc;

use super::model::DetectorModel;
use kiln_infer::nms::Detection;

use super::annotations::DetectionSample;
use super::evaluate::evaluate;
use super::loader::{DetectItems, DetectLoader, DetectTransform};
use super::settings::DetectSettings;
use crate::data::SkipLog;
use crate::engine::{LoadedRun, Predicted};
use crate::Result;

/// One input's detections (boxes in its own pixels), or why it could not be read.
pub type DetectionPrediction = Predicted<Vec<Detection>>;

/// Detects on `files` with a loaded checkpoint; unreadable files are reported and the rest go on.
pub(crate) fn predict_loaded(loaded: &LoadedRun<DetectorModel>, files: &[PathBuf]) -> Result<Vec<DetectionPrediction>> {
    let (config, model, precision) = (&loaded.config, &loaded.model, &loaded.precision);
    let class_names = &loaded.ckpt.state.class_names;
    let mut results = DetectionPrediction::unread(files);
    let mut samples = Vec::new();
    let mut sample_input = Vec::new();
    let settings: DetectSettings = config.task_settings()?;
    for (i, path) in files.iter().enumerate() {
        match kiln_infer::read_header(path) {
            Ok(header) => {
                let (width, height) = header.size(settings.exif);
                samples.push(DetectionSample { path: path.clone(), width, height, boxes: Vec::new() });
                sample_input.push(i);
            }
            Err(reason) => results[i].error = Some(reason),
        }
    }
    let skips = Arc::new(SkipLog::default());
    let items = DetectItems::new(samples, DetectTransform::Eval, config.normalize, config.img_size, Arc::clone(&skips))
        .with_exif(settings.exif);
    let loader = DetectLoader::new(items, config.loader_settings())?;
    let eval = evaluate(model, &loader, precision, &settings, class_names.len(), config.img_size)?;
    for (index, detections) in eval.detections {
        results[sample_input[index]].value = Some(detections);
    }
    Predicted::fill_errors(&mut results, &skips.entries());
    Ok(results)
}
