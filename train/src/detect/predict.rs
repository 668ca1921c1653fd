//! `kiln predict` on a detection run: the checkpoint on libtorch over image files, through the very steps
//! validation and `kiln-infer`'s `Detector` take (letterbox, decode, the run's NMS, original pixels), so it gives the
//! detections the exported model gives.

use std::path::PathBuf;
use std::sync::Arc;

use tch::nn;

use kiln_infer::nms::Detection;
use kiln_models::weights::{load_into, HeadPolicy};
use kiln_models::ObjectDetector;

use super::annotations::DetectionSample;
use super::evaluate::evaluate;
use super::loader::{DetectLoader, DetectTransform};
use super::task::detector_config;
use crate::checkpoint;
use crate::config::{TaskKind, TrainConfig};
use crate::data::SkipLog;
use crate::engine::prepare_runtime;
use crate::precision::Precision;
use crate::run_dir::{RunDir, Which};
use crate::{Error, Result};

/// One input's detections, or why it could not be read.
#[derive(Clone, Debug)]
pub struct DetectionPrediction {
    pub path: PathBuf,
    pub detections: Option<Vec<Detection>>,
    pub error: Option<String>,
}

/// Detects on `files` with the run's `which` checkpoint; unreadable files are reported and the rest go on.
pub fn predict_detections(
    run: &RunDir,
    files: &[PathBuf],
    which: Which,
    device: Option<&str>,
) -> Result<(Vec<String>, Vec<DetectionPrediction>)> {
    let config = TrainConfig::load(&run.config())?;
    if config.task != TaskKind::Detect {
        return Err(Error::InvalidSetting {
            key: "run".into(),
            reason: format!("{} is a {} run, not detect", run.path.display(), config.task.name()),
        });
    }
    let device = prepare_runtime(&config, device)?;
    let ckpt = checkpoint::load(&run.checkpoint(which))?;
    let class_names = ckpt.state.class_names.clone();
    let vs = nn::VarStore::new(device);
    let model = ObjectDetector::new(&vs.root(), &detector_config(&config, class_names.len()))?;
    load_into(&vs, ckpt.weights(), &ckpt.path, HeadPolicy::Strict, &[])?;
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
    let precision = Precision::resolve(config.amp, config.channels_last, device)?;
    precision.prepare_params(&vs)?;
    let eval = evaluate(&model, &loader, &precision, &config.detect, class_names.len(), config.img_size)?;
    for (index, detections) in eval.detections {
        results[sample_input[index]].detections = Some(detections);
    }
    for (path, reason) in skips.entries() {
        if let Some(r) = results.iter_mut().find(|r| r.path == path) {
            r.error = Some(reason);
        }
    }
    Ok((class_names, results))
}
