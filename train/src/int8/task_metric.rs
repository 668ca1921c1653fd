//! The task's own metric of an exported model on the run's val split, through kiln-infer as an application would
//! run it: detection mAP@[.5:.95] (COCO's definition, kiln's evaluator that matches pycocotools) after the NMS
//! the metadata records, text recognition CER (greedy decoding). Classification's top-1 comes from the
//! comparison's own outputs.

use std::path::Path;

use kiln_infer::text_metrics::TextScores;
use kiln_infer::{Detector, Model, TextRecognizer};

use crate::config::{TaskKind, TrainConfig};
use crate::data::Split;
use crate::detect::coco_eval::{evaluate, CocoParams, GroundTruth, Prediction};
use crate::{Error, Result};

/// The metric's name for a task, as the comparison prints it.
pub fn metric_name(task: TaskKind) -> &'static str {
    match task {
        TaskKind::Classify => "top-1 accuracy",
        TaskKind::Detect => "mAP@[.5:.95]",
        TaskKind::Ocr => "CER",
    }
}

fn infer_err(path: &Path) -> impl Fn(kiln_infer::Error) -> Error + '_ {
    move |e| Error::Int8 { path: path.to_path_buf(), reason: e.to_string() }
}

/// Detection and OCR: the metric of the model at `path` on the val split (`None` for classification, or without
/// val images). Images that do not decode are left out.
pub fn measure(config: &TrainConfig, path: &Path) -> Result<Option<f64>> {
    let err = infer_err(path);
    match config.task {
        TaskKind::Classify => Ok(None),
        TaskKind::Detect => {
            let dataset = crate::detect::task::open_dataset(config)?;
            let samples = dataset.split(Split::Val);
            if samples.is_empty() {
                return Ok(None);
            }
            let detector = Detector::new(Model::builder().open(path).map_err(&err)?).map_err(&err)?;
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
        TaskKind::Ocr => {
            let recognizer = TextRecognizer::new(Model::builder().open(path).map_err(&err)?).map_err(&err)?;
            let charset = recognizer.charset().to_vec();
            let dataset = crate::ocr::task::open_dataset(config, Some(&charset))?;
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
    }
}
