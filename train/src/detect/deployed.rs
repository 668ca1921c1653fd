//! The detector's metric of an exported model, for int8's comparison: mAP@[.5:.95] (COCO's definition, kiln's
//! evaluator that matches pycocotools) on the run's val split, through kiln-infer's `Detector` as an application
//! runs it (after the NMS its metadata records). Images that do not decode are left out.

use std::path::Path;

use kiln_infer::{Detector, Model};

use super::coco_eval::{evaluate, CocoParams, GroundTruth, Prediction};
use crate::config::TrainConfig;
use crate::data::Split;
use crate::{Error, Result};

/// mAP@[.5:.95] of the model at `path` on the val split; `None` without val images.
pub fn deployed_map(config: &TrainConfig, path: &Path) -> Result<Option<f64>> {
    let err = |e: kiln_infer::Error| Error::Int8 { path: path.to_path_buf(), reason: e.to_string() };
    let dataset = super::setup::open_dataset(config)?;
    let samples = dataset.split(Split::Val);
    if samples.is_empty() {
        return Ok(None);
    }
    let detector = Detector::new(Model::builder().open(path).map_err(err)?).map_err(err)?;
    let (mut gts, mut preds, mut images) = (Vec::new(), Vec::new(), Vec::new());
    for (i, s) in samples.iter().enumerate() {
        let Ok(found) = detector.predict_path(&s.path) else { continue };
        images.push(i as u64);
        gts.extend(s.boxes.iter().map(|b| GroundTruth::from_corners(i as u64, b.class, b.bbox, b.crowd)));
        preds.extend(found.iter().map(|d| Prediction::from_corners(i as u64, d.class, d.bbox, d.score)));
    }
    let categories: Vec<u64> = (0..dataset.class_names.len() as u64).collect();
    Ok(Some(evaluate(&images, &categories, &gts, &preds, &CocoParams::default()).stats().map))
}
