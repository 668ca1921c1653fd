//! Detection metrics beyond COCO's: precision, recall and F1 at a score threshold, the F1-optimal threshold, and
//! the mean IoU of matched boxes (the seeds' "mean IoU").
//!
//! Matching, per image and class, as COCO's at one IoU threshold: detections in descending score order each take
//! the unmatched ground-truth box of their class with the highest IoU ≥ the threshold; crowd boxes are left out
//! (neither matched nor counted as missed). A false positive whose best same-class overlap ≥ the threshold is with
//! a box another detection already took is a duplicate: a second detection of one object.

use serde::{Deserialize, Serialize};

use kiln_infer::nms::{iou, Detection};

/// A ground-truth box in the same coordinates as the detections.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TruthBox {
    pub bbox: [f32; 4],
    pub class: usize,
    pub crowd: bool,
}

/// One detection after matching: its score, the IoU with its match (`None`: a false positive), and whether that
/// false positive is a duplicate (it overlaps an already-matched box of its class at the threshold).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Matched {
    pub score: f32,
    pub iou: Option<f32>,
    pub duplicate: bool,
}

/// Matches one image's detections to its ground truth at `iou_threshold`.
pub fn match_image(detections: &[Detection], truths: &[TruthBox], iou_threshold: f32) -> Vec<Matched> {
    let mut order: Vec<usize> = (0..detections.len()).collect();
    order.sort_by(|&a, &b| detections[b].score.total_cmp(&detections[a].score));
    let mut taken = vec![false; truths.len()];
    order
        .into_iter()
        .map(|d| {
            let det = &detections[d];
            let mut best: Option<(usize, f32)> = None;
            let mut overlaps_taken = false;
            for (g, truth) in truths.iter().enumerate() {
                if truth.crowd || truth.class != det.class {
                    continue;
                }
                let overlap = iou(&det.bbox, &truth.bbox);
                if overlap < iou_threshold {
                    continue;
                }
                if taken[g] {
                    overlaps_taken = true;
                } else if best.is_none_or(|(_, b)| overlap > b) {
                    best = Some((g, overlap));
                }
            }
            if let Some((g, _)) = best {
                taken[g] = true;
            }
            Matched { score: det.score, iou: best.map(|(_, o)| o), duplicate: best.is_none() && overlaps_taken }
        })
        .collect()
}

/// Precision, recall and F1 at one threshold, the F1-optimal threshold, and the mean IoU of matches.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThresholdMetrics {
    pub score_threshold: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Mean IoU of the true positives at `score_threshold` (0 when there are none).
    pub mean_iou: f64,
    /// Detections at `score_threshold` that are a second (third, …) detection of an object already detected.
    #[serde(default)]
    pub duplicates: usize,
    /// The score threshold with the highest F1 (ties: the highest threshold), and that F1.
    pub best_f1_threshold: f64,
    pub best_f1: f64,
}

/// Summarises matched detections of a whole split; `num_truths` counts the non-crowd ground-truth boxes.
pub fn threshold_metrics(matched: &[Matched], num_truths: usize, score_threshold: f64) -> ThresholdMetrics {
    let f1 = |p: f64, r: f64| if p + r > 0.0 { 2.0 * p * r / (p + r) } else { 0.0 };
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let kept: Vec<&Matched> = matched.iter().filter(|m| m.score as f64 >= score_threshold).collect();
    let tp = kept.iter().filter(|m| m.iou.is_some()).count() as f64;
    let precision = ratio(tp, kept.len() as f64);
    let recall = ratio(tp, num_truths as f64);
    let iou_sum: f64 = kept.iter().filter_map(|m| m.iou).map(f64::from).sum();
    // The F1 of every threshold equal to a detection's score: prefixes of the score-sorted detections.
    let mut sorted: Vec<&Matched> = matched.iter().collect();
    sorted.sort_by(|a, b| b.score.total_cmp(&a.score));
    let (mut best_f1, mut best_threshold, mut tp_so_far) = (0.0, 1.0, 0.0);
    for (i, m) in sorted.iter().enumerate() {
        tp_so_far += m.iou.is_some() as u8 as f64;
        // Only the last of equal scores is a threshold.
        if sorted.get(i + 1).is_some_and(|next| next.score == m.score) {
            continue;
        }
        let value = f1(tp_so_far / (i + 1) as f64, ratio(tp_so_far, num_truths as f64));
        if value > best_f1 {
            (best_f1, best_threshold) = (value, m.score as f64);
        }
    }
    ThresholdMetrics {
        score_threshold,
        precision,
        recall,
        f1: f1(precision, recall),
        mean_iou: ratio(iou_sum, tp),
        duplicates: kept.iter().filter(|m| m.duplicate).count(),
        best_f1_threshold: best_threshold,
        best_f1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(bbox: [f32; 4], score: f32, class: usize) -> Detection {
        Detection { bbox, score, class }
    }

    fn truth(bbox: [f32; 4], class: usize) -> TruthBox {
        TruthBox { bbox, class, crowd: false }
    }

    #[test]
    fn matching_is_greedy_by_score_and_per_class() {
        let truths = [truth([0.0, 0.0, 10.0, 10.0], 0), truth([20.0, 0.0, 30.0, 10.0], 1)];
        let detections = [
            det([0.0, 0.0, 10.0, 10.0], 0.5, 0), // exact, but the lower score: a duplicate after the next
            det([1.0, 0.0, 10.0, 10.0], 0.9, 0), // IoU 0.9, matched first
            det([20.0, 0.0, 30.0, 10.0], 0.8, 0), // right place, wrong class
        ];
        let matched = match_image(&detections, &truths, 0.5);
        assert_eq!(matched.len(), 3);
        assert_eq!(matched[0], Matched { score: 0.9, iou: Some(0.9), duplicate: false });
        assert_eq!(matched[1], Matched { score: 0.8, iou: None, duplicate: false }, "a wrong class, not a duplicate");
        assert_eq!(matched[2], Matched { score: 0.5, iou: None, duplicate: true }, "the box was taken");
        let at = threshold_metrics(&matched, 2, 0.5);
        assert_eq!(at.duplicates, 1);
        assert_eq!(threshold_metrics(&matched, 2, 0.6).duplicates, 0, "below the threshold it does not count");
    }

    #[test]
    fn a_detection_beside_a_taken_box_takes_a_free_one_and_is_no_duplicate() {
        let truths = [truth([0.0, 0.0, 10.0, 10.0], 0), truth([2.0, 0.0, 12.0, 10.0], 0)];
        let detections = [det([0.0, 0.0, 10.0, 10.0], 0.9, 0), det([1.0, 0.0, 11.0, 10.0], 0.8, 0)];
        let matched = match_image(&detections, &truths, 0.5);
        assert!(matched.iter().all(|m| m.iou.is_some() && !m.duplicate), "{matched:?}");
        let far = match_image(&[det([50.0, 50.0, 60.0, 60.0], 0.9, 0)], &truths, 0.5);
        assert!(far[0].iou.is_none() && !far[0].duplicate, "a detection on nothing is a plain false positive");
    }

    #[test]
    fn crowd_boxes_are_neither_matched_nor_missed() {
        let truths = [TruthBox { bbox: [0.0, 0.0, 10.0, 10.0], class: 0, crowd: true }];
        let matched = match_image(&[det([0.0, 0.0, 10.0, 10.0], 0.9, 0)], &truths, 0.5);
        assert_eq!(matched[0].iou, None);
    }

    #[test]
    fn threshold_metrics_count_and_find_the_best_f1() {
        // Scores 0.9 TP, 0.8 FP, 0.7 TP, 0.3 FP; 3 truths.
        let m = |score, iou| Matched { score, iou, duplicate: false };
        let matched = [m(0.9, Some(0.8)), m(0.8, None), m(0.7, Some(0.6)), m(0.3, None)];
        let at = threshold_metrics(&matched, 3, 0.5);
        assert!((at.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((at.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((at.f1 - 2.0 / 3.0).abs() < 1e-12);
        assert!((at.mean_iou - 0.7).abs() < 1e-6);
        // F1 by threshold: 0.9 → 0.5, 0.8 → 0.4, 0.7 → 0.667, 0.3 → 0.571.
        assert!((at.best_f1 - 2.0 / 3.0).abs() < 1e-12);
        assert!((at.best_f1_threshold - 0.7).abs() < 1e-6);
        let none = threshold_metrics(&[], 0, 0.5);
        assert_eq!((none.precision, none.recall, none.f1, none.best_f1), (0.0, 0.0, 0.0, 0.0));
    }
}
