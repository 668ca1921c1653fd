//! Faster R-CNN's second stage, as torchvision's `RoIHeads` with `TwoMLPHead` and `FastRCNNPredictor`: each
//! proposal pooled 7×7 from its pyramid level ([`MultiScaleRoiAlign`] over P2–P5), two fully connected layers
//! with ReLU (`fc6`, `fc7`), then class logits (background first) and per-class box deltas
//! ([`BoxCoder::ROI_HEADS`]). Training adds the ground-truth boxes to the proposals, matches them at IoU 0.5,
//! samples 512 per image with a quarter positive, and takes cross-entropy plus smooth L1 (β = 1/9) on the true
//! class's deltas, divided by the sampled count.
//!
//! Parameters under `roi_heads.`: `box_head.fc6`, `box_head.fc7`, `box_predictor.cls_score`,
//! `box_predictor.bbox_pred` (PyTorch's default `Linear` initialisation).

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use super::box_coder::{box_iou, clip_boxes, smooth_l1_sum, BoxCoder};
use super::matcher::{Matcher, Sampler, SplitMix64, BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS};
use super::roi_align::{MultiScaleRoiAlign, RoiAlign};

/// The RoI heads' settings: torchvision's defaults, plus how many (box, class) candidates an image passes on to
/// NMS at inference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoiSettings {
    pub fg_iou_thresh: f64,
    pub bg_iou_thresh: f64,
    pub batch_size_per_image: usize,
    pub positive_fraction: f64,
    /// Width of `fc6` and `fc7`.
    pub representation_size: i64,
    pub pool_size: i64,
    pub sampling_ratio: i64,
    /// RoIAlign's half-pixel shift; torchvision's `MultiScaleRoIAlign` leaves it off.
    pub aligned: bool,
    /// Boxes narrower or lower than this are no detections (torchvision's 1e-2).
    pub min_size: f64,
    /// The (box, class) candidates of an image with the best scores that inference outputs for NMS. torchvision
    /// keeps every candidate above its score threshold; with 100 detections kept after NMS, the 1000 best are the
    /// same detections unless more than 900 of them are suppressed.
    pub candidates: i64,
}

impl Default for RoiSettings {
    fn default() -> Self {
        Self {
            fg_iou_thresh: 0.5,
            bg_iou_thresh: 0.5,
            batch_size_per_image: 512,
            positive_fraction: 0.25,
            representation_size: 1024,
            pool_size: 7,
            sampling_ratio: 2,
            aligned: false,
            min_size: 1e-2,
            candidates: 1000,
        }
    }
}

/// The RoI heads' two losses.
pub struct RoiLosses {
    pub classifier: Tensor,
    pub box_regression: Tensor,
}

#[derive(Debug)]
pub struct RoiHeads {
    pub fc6: nn::Linear,
    pub(crate) fc7: nn::Linear,
    pub(crate) cls_score: nn::Linear,
    pub(crate) bbox_pred: nn::Linear,
    pub pool: MultiScaleRoiAlign,
    /// Classes without the background.
    pub num_classes: i64,
    pub settings: RoiSettings,
}

impl RoiHeads {
    /// The heads under `p` for `channels`-wide maps with `strides` (the pooled levels), `num_classes` classes.
    pub fn new(p: &nn::Path, channels: i64, strides: Vec<i64>, num_classes: i64, settings: RoiSettings) -> Self {
        let (size, repr) = (settings.pool_size, settings.representation_size);
        let head = p / "box_head";
        let predictor = p / "box_predictor";
        let config = Default::default();
        Self {
            fc6: nn::linear(&head / "fc6", channels * size * size, repr, config),
            fc7: nn::linear(&head / "fc7", repr, repr, config),
            cls_score: nn::linear(&predictor / "cls_score", repr, num_classes + 1, config),
            bbox_pred: nn::linear(&predictor / "bbox_pred", repr, 4 * (num_classes + 1), config),
            pool: MultiScaleRoiAlign {
                align: RoiAlign { output: size, sampling_ratio: settings.sampling_ratio, aligned: settings.aligned },
                strides,
            },
            num_classes,
            settings,
        }
    }

    /// Class logits `[K, C + 1]` and box deltas `[K, 4 (C + 1)]` of `rois` `[K, 5]`.
    pub fn forward(&self, features: &[Tensor], rois: &Tensor) -> (Tensor, Tensor) {
        let pooled = self.pool.forward(features, rois).flatten(1, -1);
        let x = pooled.apply(&self.fc6).relu().apply(&self.fc7).relu();
        (x.apply(&self.cls_score), x.apply(&self.bbox_pred))
    }

    /// `[K, 5]` rois from each image's boxes.
    pub fn rois(boxes: &[Tensor]) -> Tensor {
        let parts: Vec<Tensor> = boxes
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let index = Tensor::full([b.size()[0], 1], i as f64, (Kind::Float, b.device()));
                Tensor::cat(&[index, b.to_kind(Kind::Float)], 1)
            })
            .collect();
        Tensor::cat(&parts, 0)
    }

    /// The training losses on `proposals` (per image, detached) and each image's truths: boxes `[G, 4]` and
    /// classes `[G]` (int64, from 0).
    pub fn losses(
        &self,
        features: &[Tensor],
        proposals: &[Tensor],
        truths: &[(Tensor, Tensor)],
        rng: &mut SplitMix64,
    ) -> RoiLosses {
        let s = &self.settings;
        let device = features[0].device();
        let matcher = Matcher { high: s.fg_iou_thresh, low: s.bg_iou_thresh, allow_low_quality_matches: false };
        let sampler = Sampler { batch_size: s.batch_size_per_image, positive_fraction: s.positive_fraction };
        let mut sampled_boxes = Vec::new();
        let mut labels = Vec::new();
        let mut targets = Vec::new();
        for (proposal, (truth, classes)) in proposals.iter().zip(truths) {
            let truth = truth.to_device(device).to_kind(Kind::Float);
            let classes = classes.to_device(device);
            let boxes = Tensor::cat(&[proposal.to_device(device), truth.shallow_clone()], 0);
            let (image_labels, matched) = if truth.size()[0] == 0 {
                (Tensor::zeros([boxes.size()[0]], (Kind::Int64, device)), Tensor::zeros_like(&boxes))
            } else {
                let matches = matcher.matches(&box_iou(&truth, &boxes));
                let clamped = matches.clamp_min(0);
                let image_labels = (classes.index_select(0, &clamped) + 1)
                    .masked_fill(&matches.eq(BELOW_LOW_THRESHOLD), 0)
                    .masked_fill(&matches.eq(BETWEEN_THRESHOLDS), -1);
                (image_labels, truth.index_select(0, &clamped))
            };
            let list: Vec<i64> = Vec::try_from(image_labels.to_device(tch::Device::Cpu)).expect("int64");
            let index = Tensor::from_slice(&sampler.sample(&list, rng).all()).to_device(device);
            let chosen = boxes.index_select(0, &index);
            targets.push(BoxCoder::ROI_HEADS.encode(&matched.index_select(0, &index), &chosen));
            labels.push(image_labels.index_select(0, &index));
            sampled_boxes.push(chosen);
        }
        let (class_logits, deltas) = self.forward(features, &Self::rois(&sampled_boxes));
        let labels = Tensor::cat(&labels, 0);
        let targets = Tensor::cat(&targets, 0);
        let class_logits = class_logits.to_kind(Kind::Float);
        let classifier = class_logits.cross_entropy_loss::<Tensor>(&labels, None, tch::Reduction::Mean, -100, 0.0);
        let positive = labels.gt(0).nonzero().squeeze_dim(1);
        let k = deltas.size()[0];
        let per_class = deltas.to_kind(Kind::Float).view([k, -1, 4]);
        let picked = per_class.index_select(0, &positive); // [P, C + 1, 4]
        let classes = labels.index_select(0, &positive).view([-1, 1, 1]).expand([-1, 1, 4], false);
        let picked = picked.gather(1, &classes, false).squeeze_dim(1);
        let box_regression =
            smooth_l1_sum(&picked, &targets.index_select(0, &positive), 1.0 / 9.0) / labels.size()[0].max(1) as f64;
        RoiLosses { classifier, box_regression }
    }

    /// Inference on `proposals` of an `height × width` input: per image, the best `m` (box, class) pairs as boxes
    /// `[N, m, 4]` and scores `[N, m, C]` (each row's score in its class's column, zeros elsewhere and in padding),
    /// the form FCOS's decoding gives, for the same NMS.
    pub fn detect(
        &self,
        features: &[Tensor],
        proposals: &[Tensor],
        height: i64,
        width: i64,
        m: i64,
    ) -> (Tensor, Tensor) {
        let c = self.num_classes;
        let device = features[0].device();
        let (class_logits, deltas) = self.forward(features, &Self::rois(proposals));
        let k = deltas.size()[0];
        let starts: Vec<i64> = proposals
            .iter()
            .scan(0, |acc, p| {
                let start = *acc;
                *acc += p.size()[0];
                Some(start)
            })
            .collect();
        let all_proposals = Tensor::cat(proposals, 0).to_kind(Kind::Float);
        let boxes =
            BoxCoder::ROI_HEADS.decode(&deltas.to_kind(Kind::Float).view([k, -1, 4]), &all_proposals.unsqueeze(1));
        let boxes = clip_boxes(&boxes, height, width).narrow(1, 1, c); // [K, C, 4]
        let scores = class_logits.to_kind(Kind::Float).softmax(-1, Kind::Float).narrow(1, 1, c); // [K, C]
        let w = boxes.select(2, 2) - boxes.select(2, 0);
        let h = boxes.select(2, 3) - boxes.select(2, 1);
        let big = w.ge(self.settings.min_size).logical_and(&h.ge(self.settings.min_size));
        let scores = scores * big.to_kind(Kind::Float);
        let mut out_boxes = Vec::new();
        let mut out_scores = Vec::new();
        for (&start, p) in starts.iter().zip(proposals) {
            let take = m.min(p.size()[0] * c);
            let (chosen, one_hot) = if take == 0 {
                (Tensor::zeros([0, 4], (Kind::Float, device)), Tensor::zeros([0, c], (Kind::Float, device)))
            } else {
                let count = p.size()[0];
                let flat_scores = scores.narrow(0, start, count).reshape([-1]);
                let (best, index) = flat_scores.topk(take, 0, true, true);
                let chosen = boxes.narrow(0, start, count).reshape([-1, 4]).index_select(0, &index);
                let one_hot = index.remainder(c).one_hot(c).to_kind(Kind::Float) * best.unsqueeze(1);
                (chosen, one_hot)
            };
            out_boxes.push(chosen.constant_pad_nd([0, 0, 0, m - take]));
            out_scores.push(one_hot.constant_pad_nd([0, 0, 0, m - take]));
        }
        (Tensor::stack(&out_boxes, 0), Tensor::stack(&out_scores, 0))
    }
}
