//! Evaluating a detector on a loader as production will run it: kiln-infer's letterbox, the decoded boxes and
//! scores, kiln-infer's NMS with the run's settings, boxes mapped back to original pixels; then COCO mAP
//! (pycocotools' definition), precision / recall / F1 at the score threshold, the F1-optimal threshold and the
//! mean IoU of matched boxes, plus the validation loss on the letterboxed boxes.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use kiln_infer::nms::{nms_per_image, Detection};
use kiln_infer::unletterbox;
use kiln_models::faster_rcnn::SplitMix64;

use super::coco_eval::{self, CocoParams, CocoStats, GroundTruth, Prediction};
use super::loader::DetectLoader;
use super::loss::fcos_losses;
use super::matching::{match_image, threshold_metrics, Matched, ThresholdMetrics, TruthBox};
use super::model::DetectorModel;
use super::settings::DetectSettings;
use super::targets::{assign, locations_on};
use crate::engine::Batches;
use crate::precision::Precision;
use crate::Result;

impl std::fmt::Display for DetectionMetrics {
    /// COCO's mAPs, mean IoU and P/R/F1 at the score threshold, on one line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (c, t) = (&self.coco, &self.at_threshold);
        write!(
            f,
            "mAP@[.5:.95] {:.4}  mAP@.5 {:.4}  mAP@.75 {:.4}  small/medium/large {:.4}/{:.4}/{:.4}  mean IoU {:.4}  \
             P/R/F1 {:.3}/{:.3}/{:.3} at score {:.2} with {} duplicate(s) (best F1 {:.3} at {:.2})",
            c.map,
            c.map_50,
            c.map_75,
            c.map_small,
            c.map_medium,
            c.map_large,
            t.mean_iou,
            t.precision,
            t.recall,
            t.f1,
            t.score_threshold,
            t.duplicates,
            t.best_f1,
            t.best_f1_threshold
        )
    }
}

/// The metrics of one evaluation pass (what checkpoints and reports keep).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectionMetrics {
    pub coco: CocoStats,
    pub at_threshold: ThresholdMetrics,
}

/// One evaluation pass.
#[derive(Clone, Debug)]
pub struct DetectionEvaluation {
    /// The split's loss summed over its images, divided by all its positive locations.
    pub loss: f64,
    pub positives: i64,
    pub metrics: DetectionMetrics,
    pub images: usize,
    /// Per class: the precision–recall curve at IoU 0.5 (COCO's 101 recall points; empty without ground truth).
    pub pr_curves: Vec<Vec<(f64, f64)>>,
    /// Each image's detections in original pixels, by sample index.
    pub detections: Vec<(usize, Vec<Detection>)>,
}

/// Draws the first images of `samples` with their boxes and their detections (`evaluation.detections`) into
/// `path`; unreadable images are left out.
pub fn draw_first_images(
    path: &std::path::Path,
    samples: &[super::annotations::DetectionSample],
    exif: kiln_infer::Exif,
    evaluation: &DetectionEvaluation,
    class_names: &[String],
    score_threshold: f64,
) -> Result<()> {
    let drawn: Vec<super::drawing::DrawnImage> = evaluation
        .detections
        .iter()
        .filter_map(|(index, detections)| {
            let sample = samples.get(*index)?;
            let image = kiln_infer::preprocess::decode_rgb_with(&sample.path, exif).ok()?;
            let truths =
                sample.boxes.iter().map(|b| TruthBox { bbox: b.bbox, class: b.class, crowd: b.crowd }).collect();
            Some(super::drawing::DrawnImage { image, truths, detections: detections.clone() })
        })
        .take(6)
        .collect();
    super::drawing::draw_predictions(path, &drawn, class_names, score_threshold as f32)
}

/// Detects on every image of `loader` as production does and scores the detections; also the split's loss (FCOS:
/// summed over the batches and divided by all their positive locations; Faster R-CNN: the mean over images of its
/// training loss, with the samplers seeded per batch so that the value does not move between evaluations).
pub fn evaluate(
    model: &DetectorModel,
    loader: &DetectLoader,
    precision: &Precision,
    settings: &DetectSettings,
    num_classes: usize,
    img_size: u32,
) -> Result<DetectionEvaluation> {
    let device = precision.device;
    let samples = loader.items().samples();
    let mut share = DetectionShare { loss_sum: 0.0, positives: 0, images: 0, detections: Vec::new() };
    let fcos_locations = match model {
        DetectorModel::Fcos(m) => Some(locations_on(m, img_size as i64, device)),
        DetectorModel::FasterRcnn(_) => None,
    };
    tch::no_grad(|| -> Result<()> {
        for batch in loader.epoch(0, false) {
            let batch = batch?;
            let xs = precision.prepare_batch(&batch.images.to_device(device))?;
            let truths: Vec<(tch::Tensor, tch::Tensor)> = (0..batch.targets.len())
                .map(|i| {
                    let (boxes, classes) = batch.boxes_tensors(i);
                    (boxes.to_device(device), classes.to_device(device))
                })
                .collect();
            let (boxes, scores) = match (model, &fcos_locations) {
                (DetectorModel::Fcos(m), Some((locations, points, strides))) => {
                    let outputs = precision.autocast(|| m.forward_t(&xs, false));
                    let assignments: Vec<_> =
                        truths.iter().map(|(boxes, classes)| assign(points, strides, boxes, classes)).collect();
                    let losses =
                        fcos_losses(&outputs.cls_logits, &outputs.box_ltrb, &outputs.centerness_logits, &assignments);
                    // The loss over the whole split, as one batch: summed, then divided by all its positive
                    // locations (so that it does not depend on how the split is batched or shared between ranks).
                    share.loss_sum += losses.total.double_value(&[]) * losses.positives.max(1) as f64;
                    share.positives += losses.positives;
                    m.decode(&outputs, &locations.to_device(device))
                }
                (DetectorModel::FasterRcnn(m), _) => {
                    let size = xs.size();
                    let anchors = m.anchors(size[2], size[3]);
                    let mut rng = SplitMix64::new(VAL_SAMPLER_SEED ^ batch.targets[0].index as u64);
                    // One pass of the backbone for the loss and the detections.
                    let (losses, candidates) =
                        precision.autocast(|| m.losses_and_detect(&xs, &anchors, &truths, &mut rng));
                    let images = batch.targets.len() as i64;
                    share.loss_sum += losses.total().double_value(&[]) * images as f64;
                    share.positives += images;
                    candidates
                }
                (DetectorModel::Fcos(_), None) => unreachable!("FCOS's locations are made above"),
            };
            let boxes: Vec<f32> = Vec::try_from(boxes.to_kind(Kind::Float).to_device(Device::Cpu).flatten(0, -1))?;
            let scores: Vec<f32> = Vec::try_from(scores.to_kind(Kind::Float).to_device(Device::Cpu).flatten(0, -1))?;
            let a = boxes.len() / 4 / batch.targets.len().max(1);
            for (i, target) in batch.targets.iter().enumerate() {
                let image_boxes: Vec<[f32; 4]> =
                    boxes[i * a * 4..(i + 1) * a * 4].chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
                let image_scores = &scores[i * a * num_classes..(i + 1) * a * num_classes];
                let sample = &samples[target.index];
                let placement = target.placement.expect("evaluation batches carry their placement");
                let original: Vec<Detection> = nms_per_image(image_scores, &image_boxes, num_classes, &settings.nms)
                    .into_iter()
                    .map(|d| Detection { bbox: unletterbox(d.bbox, &placement, sample.width, sample.height), ..d })
                    .collect();
                share.detections.push((target.index, original));
            }
            share.images += batch.targets.len();
        }
        Ok(())
    })?;
    Ok(share.into_evaluation(samples, settings, num_classes))
}

/// The seed of Faster R-CNN's samplers in validation, mixed with each batch's first sample index.
const VAL_SAMPLER_SEED: u64 = 0x6b69_6c6e_5f76_616c;

/// What a detector's evaluation of part of a split contributes to the whole's: each image's detections (in
/// original pixels, by sample index) and the loss's sums; COCO's and the threshold's metrics are computed over all
/// of them (data-parallel validation merges the ranks' shares).
#[derive(Debug, Serialize, Deserialize)]
pub struct DetectionShare {
    pub loss_sum: f64,
    pub positives: i64,
    pub images: usize,
    pub detections: Vec<(usize, Vec<Detection>)>,
}

impl DetectionShare {
    /// The share an evaluation is.
    pub fn of(evaluation: &DetectionEvaluation) -> Self {
        Self {
            loss_sum: if evaluation.images > 0 { evaluation.loss * evaluation.positives.max(1) as f64 } else { 0.0 },
            positives: evaluation.positives,
            images: evaluation.images,
            detections: evaluation.detections.clone(),
        }
    }

    /// The evaluation of all `shares`' images together, in sample order, against `samples` (the split's).
    pub fn merge(
        shares: Vec<Self>,
        samples: &[super::annotations::DetectionSample],
        settings: &DetectSettings,
        num_classes: usize,
    ) -> DetectionEvaluation {
        let mut whole = DetectionShare { loss_sum: 0.0, positives: 0, images: 0, detections: Vec::new() };
        for share in shares {
            whole.loss_sum += share.loss_sum;
            whole.positives += share.positives;
            whole.images += share.images;
            whole.detections.extend(share.detections);
        }
        whole.detections.sort_by_key(|(index, _)| *index);
        whole.into_evaluation(samples, settings, num_classes)
    }

    /// COCO mAP, the precision-recall curves and the threshold metrics of these detections against `samples`.
    fn into_evaluation(
        self,
        samples: &[super::annotations::DetectionSample],
        settings: &DetectSettings,
        num_classes: usize,
    ) -> DetectionEvaluation {
        let (mut gts, mut preds) = (Vec::new(), Vec::new());
        let (mut matched, mut num_truths): (Vec<Matched>, usize) = (Vec::new(), 0);
        for (index, original) in &self.detections {
            let sample = &samples[*index];
            let truths: Vec<TruthBox> =
                sample.boxes.iter().map(|b| TruthBox { bbox: b.bbox, class: b.class, crowd: b.crowd }).collect();
            num_truths += truths.iter().filter(|t| !t.crowd).count();
            matched.extend(match_image(original, &truths, 0.5));
            let image_id = *index as u64;
            gts.extend(truths.iter().map(|t| GroundTruth::from_corners(image_id, t.class, t.bbox, t.crowd)));
            preds.extend(original.iter().map(|d| Prediction::from_corners(image_id, d.class, d.bbox, d.score)));
        }
        let image_ids: Vec<u64> = self.detections.iter().map(|(i, _)| *i as u64).collect();
        let categories: Vec<u64> = (0..num_classes as u64).collect();
        let coco = coco_eval::evaluate(&image_ids, &categories, &gts, &preds, &CocoParams::default());
        let pr_curves = categories.iter().map(|&c| coco.pr_curve(c, 0)).collect();
        DetectionEvaluation {
            loss: if self.images > 0 { self.loss_sum / self.positives.max(1) as f64 } else { f64::NAN },
            positives: self.positives,
            metrics: DetectionMetrics {
                coco: coco.into_stats(),
                at_threshold: threshold_metrics(&matched, num_truths, settings.score_threshold),
            },
            images: self.images,
            pr_curves,
            detections: self.detections,
        }
    }
}
