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
        for b in &s.boxes {
            let [x1, y1, x2, y2] = b.bbox.map(f64::from);
            gts.push(GroundTruth {
                image: i as u64,
                category: b.class as u64,
                bbox_xywh: [x1, y1, x2 - x1, y2 - y1],
                area: (x2 - x1) * (y2 - y1),
                iscrowd: b.crowd,
            });
        }
        for d in found {
            let [x1, y1, x2, y2] = d.bbox.map(f64::from);
            preds.push(Prediction {
                image: i as u64,
                category: d.class as u64,
                bbox_xywh: [x1, y1, x2 - x1, y2 - y1],
                score: d.score as f64,
            });
        }
    }
    let categories: Vec<u64> = (0..dataset.class_names.len() as u64).collect();
    Ok(Some(evaluate(&images, &categories, &gts, &preds, &CocoParams::default()).stats().map))
}
