//! Weighted boxes fusion (WBF): ensembling several detectors' outputs for one image (Solovyev, Wang and Gabruseva,
//! "Weighted boxes fusion: ensembling boxes from different object detection models"), with the rules of the
//! `ensemble_boxes` package's `weighted_boxes_fusion`. Where NMS keeps the best box of a group of overlapping boxes
//! and drops the others, WBF averages the group into one box. [`weighted_boxes_fusion`]:
//!
//! 1. takes every detection of every model whose score is at least [`WbfConfig::skip_score_threshold`], and
//!    multiplies its score by its model's weight; NaN and infinite scores, and boxes that cannot be a detection (a NaN
//!    or infinite coordinate, `x2 <= x1` or `y2 <= y1`, zero area), are dropped;
//! 2. per class, visits them by weighted score, highest first, ties in input order (model 0's detections in order,
//!    then model 1's, ...). Each joins the cluster whose *fused* box has the highest [`iou`] with it, if that IoU is
//!    strictly greater than [`WbfConfig::iou_threshold`] (ties: the older cluster), else it starts a cluster. A
//!    cluster's fused box is recomputed at each join, so later boxes are matched against the running average;
//! 3. gives each cluster one detection: its fused box is the mean of its boxes' corners weighted by their weighted
//!    scores (a plain mean if those are all 0), its score is set by [`ConfType`].
//!
//! The result is sorted by score, highest first, ties in the input order of the clusters' first boxes, and is
//! deterministic. One model with weight 1 whose detections have no same-class pair with IoU above the threshold
//! (the output of [`crate::nms::nms`] with that IoU threshold) comes back unchanged, in score order.
//!
//! Differences from `ensemble_boxes`: coordinates are pixels, neither normalised nor clipped to `[0, 1]`; inverted
//! boxes are dropped rather than having their corners swapped; NaN scores are dropped; ties keep input order (its
//! reversed `argsort` reverses them); bad weights panic rather than warn (see [`weighted_boxes_fusion`]); there is no
//! `allows_overflow` (it behaves as with its default, false). For n boxes of a class fused into k clusters the cost
//! is O(n log n) to sort and O(n·k) IoUs.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::nms::{iou, Detection};

/// How a cluster's score is computed. Below, the cluster has n boxes; box i has weighted score `sᵢ` (its score times
/// its model's weight) and model weight `wᵢ`; there are M models whose weights sum to W; `W_in` is the sum of the
/// weights of the distinct models with a box in the cluster and `W_out = W − W_in` that of the others. Serialized
/// with `ensemble_boxes`' `conf_type` names: `avg`, `max`, `box_and_model_avg`, `absent_model_aware_avg`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfType {
    /// `mean(sᵢ) · min(M, n) / W`: the mean, scaled down when fewer boxes than models were found (with unit weights,
    /// a box found by one model of two gets half its score). The default.
    #[default]
    Avg,
    /// `max(sᵢ) / max(w)`: the best weighted score, over the largest model weight.
    Max,
    /// `Σsᵢ / Σwᵢ · W_in / W`: the weight-averaged score, times the share of the ensemble's weight that found it.
    BoxAndModelAvg,
    /// `Σsᵢ / (Σwᵢ + W_out)`: the weight-averaged score, with each model that missed the box counted as a score of 0.
    #[serde(rename = "absent_model_aware_avg")]
    AbsentModelAware,
}

/// Settings of [`weighted_boxes_fusion`]. Fields missing when deserializing take their [`Default`] values; unknown
/// fields are an error.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WbfConfig {
    /// A box joins a cluster whose fused box has an IoU with it strictly greater than this. Default 0.55.
    pub iou_threshold: f32,
    /// Detections scoring below this (before weighting) are dropped; a score equal to it is kept. Default 0.0.
    pub skip_score_threshold: f32,
    /// How fused scores are computed. Default [`ConfType::Avg`].
    pub conf_type: ConfType,
}

impl Default for WbfConfig {
    fn default() -> Self {
        Self { iou_threshold: 0.55, skip_score_threshold: 0.0, conf_type: ConfType::Avg }
    }
}

/// Fuses the detections of several models for ONE image (see the [module documentation](self) for the exact
/// rules): `models[m]` is model m's detections, `weights` the models' weights (`None`: all 1). Returns the fused
/// detections, highest score first.
///
/// # Panics
/// If `weights` has not one entry per model, if a weight is negative, NaN or infinite, or if there is a model and
/// the weights sum to 0.
pub fn weighted_boxes_fusion(models: &[Vec<Detection>], weights: Option<&[f32]>, config: &WbfConfig) -> Vec<Detection> {
    let weights: Vec<f64> = weights.map_or(vec![1.0; models.len()], |w| w.iter().map(|&x| f64::from(x)).collect());
    assert_eq!(
        weights.len(),
        models.len(),
        "weighted_boxes_fusion: {} weights for {} models",
        weights.len(),
        models.len()
    );
    assert!(
        weights.iter().all(|w| w.is_finite() && *w >= 0.0),
        "weighted_boxes_fusion: weights must be finite and non-negative, got {weights:?}"
    );
    let total_weight: f64 = weights.iter().sum();
    assert!(models.is_empty() || total_weight > 0.0, "weighted_boxes_fusion: the weights sum to 0");

    let mut candidates = Vec::new();
    for (model, detections) in models.iter().enumerate() {
        for det in detections {
            if det.score.is_finite() && det.score >= config.skip_score_threshold && is_valid_box(&det.bbox) {
                let score = f64::from(det.score) * weights[model];
                candidates.push(Candidate { det: *det, score, model, index: candidates.len() });
            }
        }
    }
    // By class, then weighted score (never NaN: scores and weights are finite), then input position: a total order.
    candidates.sort_unstable_by(|a, b| {
        a.det
            .class
            .cmp(&b.det.class)
            .then(b.score.partial_cmp(&a.score).unwrap_or(Ordering::Equal))
            .then(a.index.cmp(&b.index))
    });

    let mut fused: Vec<(Detection, usize)> = Vec::new();
    for class_candidates in candidates.chunk_by(|a, b| a.det.class == b.det.class) {
        let mut clusters: Vec<Cluster> = Vec::new();
        for candidate in class_candidates {
            let mut best: Option<(usize, f32)> = None;
            for (k, cluster) in clusters.iter().enumerate() {
                let overlap = iou(&cluster.bbox, &candidate.det.bbox);
                if overlap > config.iou_threshold && best.is_none_or(|(_, b)| overlap > b) {
                    best = Some((k, overlap));
                }
            }
            match best {
                Some((k, _)) => clusters[k].add(candidate, &weights),
                None => clusters.push(Cluster::new(candidate, &weights)),
            }
        }
        for cluster in &clusters {
            let score = cluster.score(config.conf_type, &weights, total_weight) as f32;
            fused.push((Detection { bbox: cluster.bbox, score, class: class_candidates[0].det.class }, cluster.first));
        }
    }
    fused
        .sort_unstable_by(|(a, ia), (b, ib)| b.score.partial_cmp(&a.score).unwrap_or(Ordering::Equal).then(ia.cmp(ib)));
    fused.into_iter().map(|(det, _)| det).collect()
}

/// A detection that passed the filters, with its weighted score, its model and its input position (the tie-break).
struct Candidate {
    det: Detection,
    score: f64,
    model: usize,
    index: usize,
}

/// Finite coordinates, `x1 < x2`, `y1 < y2` and a finite positive area.
fn is_valid_box(bbox: &[f32; 4]) -> bool {
    let [x1, y1, x2, y2] = *bbox;
    let area = (x2 - x1) * (y2 - y1);
    bbox.iter().all(|c| c.is_finite()) && x2 > x1 && y2 > y1 && area.is_finite() && area > 0.0
}

/// A growing cluster of same-class boxes, as running sums.
#[derive(Default)]
struct Cluster {
    /// Input position of its first (best) box.
    first: usize,
    /// The fused box.
    bbox: [f32; 4],
    len: usize,
    score_sum: f64,
    score_max: f64,
    /// Σ wᵢ over the boxes, one term per box.
    weight_sum: f64,
    /// The distinct models with a box here.
    models: Vec<usize>,
    /// Σ max(sᵢ, 0) · corner, Σ max(sᵢ, 0), and Σ corner for the plain mean when all scores are 0.
    weighted_corners: [f64; 4],
    corner_weight: f64,
    corners: [f64; 4],
}

impl Cluster {
    fn new(candidate: &Candidate, weights: &[f64]) -> Self {
        // A lone box is its own fused box, exactly.
        let mut cluster = Self { first: candidate.index, bbox: candidate.det.bbox, ..Self::default() };
        cluster.accumulate(candidate, weights);
        cluster
    }

    fn add(&mut self, candidate: &Candidate, weights: &[f64]) {
        self.accumulate(candidate, weights);
        for (k, corner) in self.bbox.iter_mut().enumerate() {
            let mean = if self.corner_weight > 0.0 {
                self.weighted_corners[k] / self.corner_weight
            } else {
                self.corners[k] / self.len as f64
            };
            *corner = mean as f32;
        }
    }

    fn accumulate(&mut self, candidate: &Candidate, weights: &[f64]) {
        let s = candidate.score;
        self.len += 1;
        self.score_sum += s;
        self.score_max = if self.len == 1 { s } else { self.score_max.max(s) };
        self.weight_sum += weights[candidate.model];
        if !self.models.contains(&candidate.model) {
            self.models.push(candidate.model);
        }
        let corner_weight = s.max(0.0);
        self.corner_weight += corner_weight;
        for (k, &corner) in candidate.det.bbox.iter().enumerate() {
            self.weighted_corners[k] += corner_weight * f64::from(corner);
            self.corners[k] += f64::from(corner);
        }
    }

    fn score(&self, conf_type: ConfType, weights: &[f64], total_weight: f64) -> f64 {
        let weight_in: f64 = self.models.iter().map(|&m| weights[m]).sum();
        match conf_type {
            ConfType::Avg => self.score_sum / self.len as f64 * self.len.min(weights.len()) as f64 / total_weight,
            ConfType::Max => self.score_max / weights.iter().copied().fold(0.0, f64::max),
            // Σwᵢ = 0 only when every box comes from a model of weight 0, so every sᵢ is 0.
            ConfType::BoxAndModelAvg if self.weight_sum == 0.0 => 0.0,
            ConfType::BoxAndModelAvg => self.score_sum / self.weight_sum * weight_in / total_weight,
            ConfType::AbsentModelAware => {
                let weight_out: f64 =
                    weights.iter().enumerate().filter(|(m, _)| !self.models.contains(m)).map(|(_, w)| w).sum();
                // Positive: if Σwᵢ = 0, every model with a box has weight 0, so W_out = W > 0.
                self.score_sum / (self.weight_sum + weight_out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nms::{nms, NmsConfig};

    fn det(bbox: [f32; 4], score: f32, class: usize) -> Detection {
        Detection { bbox, score, class }
    }

    /// A class-0 box of height 1 spanning `[x1, x2]`.
    fn s(x1: f32, x2: f32, score: f32) -> Detection {
        det([x1, 0.0, x2, 1.0], score, 0)
    }

    /// `det` as class `class`.
    fn c(det: Detection, class: usize) -> Detection {
        Detection { class, ..det }
    }

    fn with(edit: impl FnOnce(&mut WbfConfig)) -> WbfConfig {
        let mut config = WbfConfig::default();
        edit(&mut config);
        config
    }

    fn assert_close(got: &[Detection], expected: &[Detection], name: &str) {
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * b.abs().max(1.0);
        let same = got.len() == expected.len()
            && got.iter().zip(expected).all(|(g, e)| {
                g.class == e.class && close(g.score, e.score) && g.bbox.iter().zip(&e.bbox).all(|(&a, &b)| close(a, b))
            });
        assert!(same, "{name}:\n got      {got:?}\n expected {expected:?}");
    }

    const NAN: f32 = f32::NAN;

    /// Two models with one detection each.
    fn two(a: Detection, b: Detection) -> Vec<Vec<Detection>> {
        vec![vec![a], vec![b]]
    }

    #[test]
    fn fusion_cases() {
        let config = |edit: fn(&mut WbfConfig)| (None, with(edit));
        let d = (None, WbfConfig::default());
        let (max, half) = (config(|c| c.conf_type = ConfType::Max), config(|c| c.iou_threshold = 0.5));
        let w21: Option<&[f32]> = Some(&[2.0, 1.0]);
        // [0, 10] and [2, 12] have IoU 8/12. With weights [2, 1], model 0 has two of them, model 1 none: Σs = 2.4,
        // Σwᵢ = 4, W_in = 2, W_out = 1, W = 3; fused [1.6 · 2 / 2.4, (16 + 0.8 · 12) / 2.4].
        let pair = || vec![vec![s(0.0, 10.0, 0.8), s(2.0, 12.0, 0.4)], vec![]];
        let pair_fused = |score| vec![s(2.0 / 3.0, 32.0 / 3.0, score)];
        // (name, models, (weights, config), expected)
        type Case<'a> = (&'a str, Vec<Vec<Detection>>, (Option<&'a [f32]>, WbfConfig), Vec<Detection>);
        let cases: Vec<Case> = vec![
            ("no models", vec![], d, vec![]),
            ("empty models", vec![vec![], vec![]], d, vec![]),
            ("two agree: weighted corners", two(s(0.0, 10.0, 0.75), s(2.0, 12.0, 0.25)), d, vec![s(0.5, 10.5, 0.5)]),
            ("one model of two: halved", vec![vec![], vec![c(s(0.0, 10.0, 0.8), 3)]], d, vec![c(s(0.0, 10.0, 0.4), 3)]),
            (
                "other classes never fuse",
                two(s(0.0, 10.0, 0.8), c(s(0.0, 10.0, 0.6), 1)),
                d,
                vec![s(0.0, 10.0, 0.4), c(s(0.0, 10.0, 0.3), 1)],
            ),
            // IoU of [0, 10] and [x, x + 10] is (10 − x) / (10 + x): 0.5504 at 2.9, 0.5492 at 2.91.
            ("IoU just above 0.55", two(s(0.0, 10.0, 0.5), s(2.9, 12.9, 0.5)), d, vec![s(1.45, 11.45, 0.5)]),
            (
                "IoU just below 0.55",
                two(s(0.0, 10.0, 0.5), s(2.91, 12.91, 0.5)),
                d,
                vec![s(0.0, 10.0, 0.25), s(2.91, 12.91, 0.25)],
            ),
            // IoU 3/5 = 0.6 exactly in f32: at the threshold does not fuse.
            (
                "IoU at the threshold",
                two(s(0.0, 4.0, 0.5), s(1.0, 5.0, 0.5)),
                config(|c| c.iou_threshold = 0.6),
                vec![s(0.0, 4.0, 0.25), s(1.0, 5.0, 0.25)],
            ),
            // Weighted scores 1.0 and 0.5: corners [0.5 · 2 / 1.5, (10 + 0.5 · 12) / 1.5], score 0.75 · 2 / 3.
            (
                "weights [2, 1]",
                two(s(0.0, 10.0, 0.5), s(2.0, 12.0, 0.5)),
                (w21, d.1),
                vec![s(2.0 / 3.0, 32.0 / 3.0, 0.5)],
            ),
            (
                "Max: best score, not rescaled",
                vec![vec![s(0.0, 10.0, 0.9), s(20.0, 30.0, 0.3)], vec![s(2.0, 12.0, 0.5)]],
                max,
                vec![s(1.0 / 1.4, 15.0 / 1.4, 0.9), s(20.0, 30.0, 0.3)],
            ),
            (
                "Max over the largest weight",
                two(s(0.0, 10.0, 0.9), s(2.0, 12.0, 0.5)),
                (w21, max.1),
                vec![s(1.0 / 2.3, 24.0 / 2.3, 0.9)],
            ),
            ("Avg, one model's two boxes", pair(), (w21, d.1), pair_fused(0.8)),
            ("Avg, more boxes than models: capped", vec![pair().remove(0)], d, pair_fused(0.6)),
            ("BoxAndModelAvg", pair(), (w21, with(|c| c.conf_type = ConfType::BoxAndModelAvg)), pair_fused(0.4)),
            ("AbsentModelAware", pair(), (w21, with(|c| c.conf_type = ConfType::AbsentModelAware)), pair_fused(0.48)),
            // [3, 13] joins [0, 10] (IoU 7/13): fused [1.5, 11.5]. [4, 14] has IoU 6/14 with [0, 10] but 7.5/12.5
            // with the fused box, so it joins too.
            (
                "matched against the fused box",
                vec![vec![s(0.0, 10.0, 0.5)], vec![s(3.0, 13.0, 0.5)], vec![s(4.0, 14.0, 0.5)]],
                half,
                vec![s(7.0 / 3.0, 37.0 / 3.0, 0.5)],
            ),
            // [3, 13] overlaps [0, 10] (IoU 7/13) and [4, 14] (IoU 9/11): it joins the best, not the first.
            (
                "joins the best-matching cluster",
                vec![vec![s(0.0, 10.0, 0.9), s(4.0, 14.0, 0.9)], vec![s(3.0, 13.0, 0.5)]],
                half,
                vec![s(5.1 / 1.4, 19.1 / 1.4, 0.7), s(0.0, 10.0, 0.45)],
            ),
            // [3, 13] has IoU 7/13 with both [0, 10] and [6, 16]: it joins the older.
            (
                "IoU ties: the older cluster",
                vec![vec![s(0.0, 10.0, 0.9), s(6.0, 16.0, 0.9)], vec![s(3.0, 13.0, 0.5)]],
                half,
                vec![s(1.5 / 1.4, 15.5 / 1.4, 0.7), s(6.0, 16.0, 0.45)],
            ),
            (
                "NaN, infinite and low scores, bad boxes dropped",
                vec![vec![
                    s(0.0, 10.0, NAN),
                    s(20.0, 30.0, f32::INFINITY),
                    s(40.0, 50.0, 0.09),
                    s(60.0, 60.0, 0.9),
                    s(75.0, 70.0, 0.9),
                    s(80.0, NAN, 0.9),
                    s(90.0, 100.0, 0.1),
                ]],
                config(|c| c.skip_score_threshold = 0.1),
                vec![s(90.0, 100.0, 0.1)],
            ),
            (
                "skip threshold before weighting; model 1 alone",
                two(s(0.0, 10.0, 0.3), s(20.0, 30.0, 0.4)),
                (Some(&[4.0, 1.0]), with(|c| c.skip_score_threshold = 0.4)),
                vec![s(20.0, 30.0, 0.08)],
            ),
            ("zero scores: plain mean", two(s(0.0, 10.0, 0.0), s(2.0, 12.0, 0.0)), d, vec![s(1.0, 11.0, 0.0)]),
            (
                "sorted by score, ties in input order",
                vec![vec![s(0.0, 1.0, 0.2), s(10.0, 11.0, 0.6), c(s(0.0, 1.0, 0.2), 1)], vec![s(20.0, 21.0, 0.2)]],
                d,
                vec![s(10.0, 11.0, 0.3), s(0.0, 1.0, 0.1), c(s(0.0, 1.0, 0.1), 1), s(20.0, 21.0, 0.1)],
            ),
        ];
        for (name, models, (weights, config), expected) in cases {
            assert_close(&weighted_boxes_fusion(&models, weights, &config), &expected, name);
        }
    }

    /// SplitMix64.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % n
        }
    }

    #[test]
    fn one_model_is_returned_unchanged() {
        let mut rng = Rng(11);
        let nms_config = NmsConfig { iou_threshold: 0.55, score_threshold: 0.0, ..NmsConfig::default() };
        for case in 0..300 {
            // Overlapping boxes on a coarse grid (ties in score and IoUs near the threshold), several classes,
            // made non-overlapping above 0.55 within each class by NMS, as a detector's output is.
            let raw: Vec<Detection> = (0..rng.below(80))
                .map(|_| {
                    let (x, y) = (rng.below(30) as f32, rng.below(30) as f32);
                    let (w, h) = (1.0 + rng.below(12) as f32, 1.0 + rng.below(12) as f32);
                    let score = rng.below(21) as f32 / 20.0;
                    det([x, y, x + w, y + h], score, rng.below(3) as usize)
                })
                .collect();
            let detections = nms(&raw, &nms_config);
            let models = vec![detections.clone()];
            let d = WbfConfig::default();
            assert_eq!(weighted_boxes_fusion(&models, None, &d), detections, "case {case}");
            assert_eq!(weighted_boxes_fusion(&models, Some(&[1.0]), &d), detections, "case {case}, weight 1");
            let max = with(|c| c.conf_type = ConfType::Max);
            assert_eq!(weighted_boxes_fusion(&models, None, &max), detections, "case {case}, Max");
        }
    }

    #[test]
    #[should_panic(expected = "1 weights for 2 models")]
    fn rejects_mismatched_weights() {
        weighted_boxes_fusion(&[vec![], vec![]], Some(&[1.0]), &WbfConfig::default());
    }

    #[test]
    #[should_panic(expected = "finite and non-negative")]
    fn rejects_negative_weights() {
        weighted_boxes_fusion(&[vec![], vec![]], Some(&[1.0, -1.0]), &WbfConfig::default());
    }

    #[test]
    #[should_panic(expected = "the weights sum to 0")]
    fn rejects_zero_weights() {
        weighted_boxes_fusion(&[vec![]], Some(&[0.0]), &WbfConfig::default());
    }
}
