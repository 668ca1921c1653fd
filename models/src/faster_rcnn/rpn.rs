//! The region proposal network, as torchvision's `RegionProposalNetwork` with its `RPNHead`: a 3×3 convolution
//! and ReLU shared by the pyramid levels, then 1×1 convolutions to one objectness logit and four box deltas per
//! anchor; proposals decoded from the anchors, the best `pre_nms_top_n` per level, clipped to the image, tiny and
//! low-scoring ones removed, NMS within each level, and the best `post_nms_top_n` of the image kept. Its losses:
//! binary cross-entropy on the objectness and smooth L1 (β = 1/9) on the positive anchors' deltas, over a balanced
//! sample of anchors matched at IoU 0.7 / 0.3 with low-quality matches.
//!
//! Parameters under `rpn.head.`: `conv.0.0` (torchvision's `Conv2dNormActivation` without a norm), `cls_logits`,
//! `bbox_pred`; every weight drawn from N(0, 0.01²), biases 0.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Reduction, Tensor};

use kiln_infer::nms::{nms, Detection, NmsConfig};

use super::box_coder::{box_iou, clip_boxes, large_enough, smooth_l1_sum, BoxCoder};
use super::matcher::{Matcher, Sampler, SplitMix64};

/// The RPN's settings, torchvision's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpnSettings {
    pub pre_nms_top_n_train: i64,
    pub post_nms_top_n_train: i64,
    pub pre_nms_top_n_test: i64,
    pub post_nms_top_n_test: i64,
    pub nms_thresh: f64,
    pub fg_iou_thresh: f64,
    pub bg_iou_thresh: f64,
    pub batch_size_per_image: usize,
    pub positive_fraction: f64,
    pub score_thresh: f64,
    pub min_size: f64,
}

impl Default for RpnSettings {
    fn default() -> Self {
        Self {
            pre_nms_top_n_train: 2000,
            post_nms_top_n_train: 2000,
            pre_nms_top_n_test: 1000,
            post_nms_top_n_test: 1000,
            nms_thresh: 0.7,
            fg_iou_thresh: 0.7,
            bg_iou_thresh: 0.3,
            batch_size_per_image: 256,
            positive_fraction: 0.5,
            score_thresh: 0.0,
            min_size: 1e-3,
        }
    }
}

/// The RPN's raw outputs over every anchor of the batch.
pub struct RpnOutputs {
    /// `[N, A]` logits.
    pub objectness: Tensor,
    /// `[N, A, 4]` deltas ([`BoxCoder::RPN`]).
    pub deltas: Tensor,
    /// Anchors of each level, in order.
    pub anchors_per_level: Vec<i64>,
}

/// The RPN's two losses.
pub struct RpnLosses {
    pub objectness: Tensor,
    pub box_regression: Tensor,
}

#[derive(Debug)]
pub struct Rpn {
    conv: nn::Conv2D,
    cls_logits: nn::Conv2D,
    bbox_pred: nn::Conv2D,
    pub anchors_per_cell: i64,
    pub settings: RpnSettings,
    pub(crate) name: String,
}

fn normal_conv(padding: i64) -> nn::ConvConfig {
    nn::ConvConfig {
        padding,
        ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.01 },
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    }
}

impl Rpn {
    /// The RPN under `p` (its head under `p / "head"`) for `channels`-wide levels and `anchors_per_cell` anchors.
    pub fn new(p: &nn::Path, channels: i64, anchors_per_cell: i64, settings: RpnSettings) -> Self {
        let head = p / "head";
        Self {
            conv: nn::conv2d(&head / "conv" / 0 / 0, channels, channels, 3, normal_conv(1)),
            cls_logits: nn::conv2d(&head / "cls_logits", channels, anchors_per_cell, 1, normal_conv(0)),
            bbox_pred: nn::conv2d(&head / "bbox_pred", channels, 4 * anchors_per_cell, 1, normal_conv(0)),
            anchors_per_cell,
            settings,
            name: crate::onnx::path_of(&head),
        }
    }

    pub(crate) fn convs(&self) -> (&nn::Conv2D, &nn::Conv2D, &nn::Conv2D) {
        (&self.conv, &self.cls_logits, &self.bbox_pred)
    }

    /// The head on every level, flattened as torchvision's `concat_box_prediction_layers` (cell-major, the
    /// cell's anchors innermost: the order of [`super::anchors::AnchorConfig::grid_anchors`]).
    pub fn forward(&self, levels: &[Tensor]) -> RpnOutputs {
        let a = self.anchors_per_cell;
        let mut objectness = Vec::new();
        let mut deltas = Vec::new();
        let mut anchors_per_level = Vec::new();
        for x in levels {
            let t = x.apply(&self.conv).relu();
            let size = x.size();
            let (n, h, w) = (size[0], size[2], size[3]);
            objectness.push(t.apply(&self.cls_logits).view([n, a, 1, h, w]).permute([0, 3, 4, 1, 2]).reshape([n, -1]));
            deltas.push(t.apply(&self.bbox_pred).view([n, a, 4, h, w]).permute([0, 3, 4, 1, 2]).reshape([n, -1, 4]));
            anchors_per_level.push(h * w * a);
        }
        RpnOutputs { objectness: Tensor::cat(&objectness, 1), deltas: Tensor::cat(&deltas, 1), anchors_per_level }
    }

    /// Each image's proposals `[P_i, 4]` (detached, on the outputs' device), best first, for an input of
    /// `height × width` with `anchors` `[A, 4]`.
    pub fn proposals(
        &self,
        outputs: &RpnOutputs,
        anchors: &Tensor,
        height: i64,
        width: i64,
        train: bool,
    ) -> Vec<Tensor> {
        let s = &self.settings;
        let (pre, post) = if train {
            (s.pre_nms_top_n_train, s.post_nms_top_n_train)
        } else {
            (s.pre_nms_top_n_test, s.post_nms_top_n_test)
        };
        let device = outputs.objectness.device();
        let objectness = outputs.objectness.detach().to_kind(Kind::Float);
        let deltas = outputs.deltas.detach().to_kind(Kind::Float);
        let n = objectness.size()[0];
        let boxes = BoxCoder::RPN.decode(&deltas, &anchors.to_device(device).unsqueeze(0)); // [N, A, 4]
                                                                                            // The best `pre` anchors of every level.
        let mut picked = Vec::new();
        let mut level_of = Vec::new();
        let mut offset = 0;
        for (level, &count) in outputs.anchors_per_level.iter().enumerate() {
            let k = pre.min(count);
            let (_, index) = objectness.narrow(1, offset, count).topk(k, 1, true, true);
            picked.push(index + offset);
            level_of.extend(std::iter::repeat_n(level, k as usize));
            offset += count;
        }
        let picked = Tensor::cat(&picked, 1); // [N, K]
        (0..n)
            .map(|i| {
                let index = picked.get(i);
                let scores = objectness.get(i).index_select(0, &index).sigmoid();
                let boxes = clip_boxes(&boxes.get(i).index_select(0, &index), height, width);
                let keep = large_enough(&boxes, s.min_size).logical_and(&scores.ge(s.score_thresh));
                let boxes: Vec<f32> = Vec::try_from(boxes.to_device(tch::Device::Cpu).flatten(0, -1)).expect("f32");
                let scores: Vec<f32> = Vec::try_from(scores.to_device(tch::Device::Cpu)).expect("f32");
                let keep: Vec<bool> = Vec::try_from(keep.to_device(tch::Device::Cpu)).expect("bool");
                let candidates: Vec<Detection> = (0..scores.len())
                    .filter(|&j| keep[j])
                    .map(|j| Detection {
                        bbox: [boxes[4 * j], boxes[4 * j + 1], boxes[4 * j + 2], boxes[4 * j + 3]],
                        score: scores[j],
                        class: level_of[j],
                    })
                    .collect();
                let config = NmsConfig {
                    iou_threshold: s.nms_thresh as f32,
                    score_threshold: f32::NEG_INFINITY,
                    max_detections: post as usize,
                    class_agnostic: false,
                    pre_nms_top_k: usize::MAX,
                };
                let kept: Vec<f32> = nms(&candidates, &config).iter().flat_map(|d| d.bbox).collect();
                Tensor::from_slice(&kept).view([-1, 4]).to_device(device)
            })
            .collect()
    }

    /// The RPN's losses for `outputs` over `anchors` `[A, 4]` and each image's ground-truth boxes `[G_i, 4]`.
    pub fn losses(&self, outputs: &RpnOutputs, anchors: &Tensor, truths: &[Tensor], rng: &mut SplitMix64) -> RpnLosses {
        let s = &self.settings;
        let device = outputs.objectness.device();
        let anchors = anchors.to_device(device);
        let a = anchors.size()[0];
        let matcher = Matcher { high: s.fg_iou_thresh, low: s.bg_iou_thresh, allow_low_quality_matches: true };
        let sampler = Sampler { batch_size: s.batch_size_per_image, positive_fraction: s.positive_fraction };
        let mut positives = Vec::new();
        let mut sampled = Vec::new();
        let mut labels_all = Vec::new();
        let mut targets_all = Vec::new();
        for (i, truth) in truths.iter().enumerate() {
            let truth = truth.to_device(device).to_kind(Kind::Float);
            let (labels, targets) = if truth.size()[0] == 0 {
                (vec![0i64; a as usize], Tensor::zeros([a, 4], (Kind::Float, device)))
            } else {
                let matches = matcher.matches(&box_iou(&truth, &anchors));
                let matched = truth.index_select(0, &matches.clamp_min(0));
                let labels = matches.ge(0).to_kind(Kind::Int64)
                    - matches.eq(super::matcher::BETWEEN_THRESHOLDS).to_kind(Kind::Int64);
                let labels: Vec<i64> = Vec::try_from(labels.to_device(tch::Device::Cpu)).expect("int64");
                (labels, BoxCoder::RPN.encode(&matched, &anchors))
            };
            let draw = sampler.sample(&labels, rng);
            let base = i as i64 * a;
            positives.extend(draw.positives.iter().map(|j| j + base));
            sampled.extend(draw.all().iter().map(|j| j + base));
            labels_all.extend(labels.iter().map(|&l| l.max(0) as f32));
            targets_all.push(targets);
        }
        let positives = Tensor::from_slice(&positives).to_device(device);
        let sampled = Tensor::from_slice(&sampled).to_device(device);
        let labels = Tensor::from_slice(&labels_all).to_device(device);
        let targets = Tensor::cat(&targets_all, 0);
        let deltas = outputs.deltas.to_kind(Kind::Float).reshape([-1, 4]);
        let count = sampled.size()[0].max(1) as f64;
        let box_regression =
            smooth_l1_sum(&deltas.index_select(0, &positives), &targets.index_select(0, &positives), 1.0 / 9.0) / count;
        let logits = outputs.objectness.to_kind(Kind::Float).reshape([-1]).index_select(0, &sampled);
        let objectness = logits.binary_cross_entropy_with_logits::<Tensor>(
            &labels.index_select(0, &sampled),
            None,
            None,
            Reduction::Mean,
        );
        RpnLosses { objectness, box_regression }
    }
}
