//! Two-stage object detection: Faster R-CNN (Ren et al., <https://arxiv.org/abs/1506.01497>) with an FPN, as
//! torchvision's `fasterrcnn_resnet50_fpn` (v1) defines it, on a ConvNeXt backbone.
//!
//! - the backbone's four stages (C2–C5, strides 4–32) feed an [`Fpn::with_max_pool`]: P2–P5 and a max-pooled P6,
//!   as torchvision's `BackboneWithFPN` with `LastLevelMaxPool`;
//! - the [`Rpn`] proposes boxes from anchors on every level ([`AnchorConfig`]);
//! - the [`RoiHeads`] pool each proposal from P2–P5 ([`roi_align`]) and classify and refine it.
//!
//! Parameters: the backbone at the root with timm's names (`stem.*`, `stages.*`), the pyramid under `fpn.`, and
//! torchvision's names under `rpn.` and `roi_heads.`.
//!
//! Inference ([`FasterRcnn::detect`]) gives what FCOS's decoding gives, boxes `[N, M, 4]` and per-class scores
//! `[N, M, C]`, so the same NMS, `Detector`, WBF and metrics apply to both heads.

pub mod anchors;
pub mod box_coder;
pub mod emit;
pub mod matcher;
pub mod roi_align;
pub mod roi_heads;
pub mod rpn;

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::convnext::{ConvNext, ConvNextConfig};
use crate::fpn::Fpn;
use crate::{Error, Result};

pub use anchors::AnchorConfig;
pub use matcher::SplitMix64;
pub use roi_heads::{RoiHeads, RoiSettings};
pub use rpn::{Rpn, RpnSettings};

fn default_fpn_channels() -> i64 {
    256
}

/// What a Faster R-CNN is. Only `architecture` and `num_classes` are required when deserialising.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FasterRcnnConfig {
    /// The backbone, by timm name: `convnext_atto` … `convnext_base`.
    pub architecture: String,
    /// Object classes, without the background.
    pub num_classes: i64,
    /// Channels of every pyramid level (torchvision's 256).
    #[serde(default = "default_fpn_channels")]
    pub fpn_channels: i64,
    #[serde(default)]
    pub drop_path_rate: f64,
    #[serde(default)]
    pub anchors: AnchorConfig,
    #[serde(default)]
    pub rpn: RpnSettings,
    #[serde(default)]
    pub roi_heads: RoiSettings,
}

impl FasterRcnnConfig {
    pub fn new(architecture: &str, num_classes: i64) -> Self {
        Self {
            architecture: architecture.into(),
            num_classes,
            fpn_channels: default_fpn_channels(),
            drop_path_rate: 0.0,
            anchors: AnchorConfig::default(),
            rpn: RpnSettings::default(),
            roi_heads: RoiSettings::default(),
        }
    }

    pub fn backbone(&self) -> Result<ConvNextConfig> {
        Ok(ConvNextConfig::from_name(&self.architecture)?.with_drop_path_rate(self.drop_path_rate))
    }
}

/// The losses of one batch: the RPN's and the RoI heads'; their sum is what torchvision trains on.
pub struct FasterRcnnLosses {
    pub objectness: Tensor,
    pub rpn_box_regression: Tensor,
    pub classifier: Tensor,
    pub box_regression: Tensor,
}

impl FasterRcnnLosses {
    pub fn total(&self) -> Tensor {
        &self.objectness + &self.rpn_box_regression + &self.classifier + &self.box_regression
    }
}

/// ConvNeXt + FPN (P2–P6) + RPN + RoI heads.
#[derive(Debug)]
pub struct FasterRcnn {
    pub backbone: ConvNext,
    pub fpn: Fpn,
    pub rpn: Rpn,
    pub roi_heads: RoiHeads,
    pub config: FasterRcnnConfig,
}

impl FasterRcnn {
    /// Builds the model under `p`; pass the VarStore root to get timm's backbone key names.
    pub fn new(p: &nn::Path, config: &FasterRcnnConfig) -> Result<Self> {
        Self::with_backbone(p, config, &config.backbone()?)
    }

    /// Builds the model with a custom four-stage backbone (`config.architecture` is then only a label).
    pub fn with_backbone(p: &nn::Path, config: &FasterRcnnConfig, backbone: &ConvNextConfig) -> Result<Self> {
        let invalid = |key: &str, reason: String| Error::InvalidSetting { key: key.into(), reason };
        if backbone.dims.len() != 4 {
            return Err(invalid(
                "depths",
                format!("{} backbone stages (Faster R-CNN needs 4: C2–C5)", backbone.dims.len()),
            ));
        }
        if config.num_classes < 1 {
            return Err(invalid("num_classes", format!("{} (need at least 1)", config.num_classes)));
        }
        let backbone = ConvNext::new(p, backbone)?;
        let fpn = Fpn::with_max_pool(&(p / "fpn"), &backbone.config.dims, config.fpn_channels)?;
        config.anchors.check(fpn.num_levels).map_err(|reason| invalid("anchors", reason))?;
        let rpn = Rpn::new(&(p / "rpn"), config.fpn_channels, config.anchors.per_cell(0), config.rpn.clone());
        let pooled = fpn.strides()[..4].to_vec();
        let roi_heads = RoiHeads::new(
            &(p / "roi_heads"),
            config.fpn_channels,
            pooled,
            config.num_classes,
            config.roi_heads.clone(),
        );
        Ok(Self { backbone, fpn, rpn, roi_heads, config: config.clone() })
    }

    /// The stride of each pyramid level: 4, 8, 16, 32, 64.
    pub fn strides(&self) -> Vec<i64> {
        self.fpn.strides()
    }

    /// An error unless `height` and `width` are positive multiples of [`crate::detector::SIZE_DIVISOR`].
    pub fn check_input_size(&self, height: i64, width: i64) -> Result<()> {
        crate::detector::check_input_size(height, width)
    }

    /// `(height, width)` of P2–P6 for a `height × width` input.
    pub fn level_sizes(&self, height: i64, width: i64) -> Vec<(i64, i64)> {
        let mut sizes: Vec<(i64, i64)> = [4, 8, 16, 32].iter().map(|s| (height / s, width / s)).collect();
        let (h, w) = sizes[3];
        sizes.push(((h + 1) / 2, (w + 1) / 2));
        sizes
    }

    /// Every anchor of a `height × width` input, `[A, 4]` on the CPU.
    pub fn anchors(&self, height: i64, width: i64) -> Tensor {
        self.config.anchors.grid_anchors(height, width, &self.level_sizes(height, width))
    }

    /// The pyramid P2–P6 of `images` `[N, 3, H, W]`.
    ///
    /// # Panics
    /// If H or W is not a multiple of [`crate::detector::SIZE_DIVISOR`].
    pub fn features(&self, images: &Tensor, train: bool) -> Vec<Tensor> {
        let size = images.size();
        if let Err(e) = self.check_input_size(size[2], size[3]) {
            panic!("{e}");
        }
        let features = self.backbone.forward_features_t(images, train);
        self.fpn.forward(&features)
    }

    /// The training losses of `images` with each image's truths (boxes `[G, 4]` in input pixels, classes `[G]`
    /// int64 from 0), with the proposals and samples of training; `anchors` from [`FasterRcnn::anchors`]. The
    /// samplers draw from `rng`. `train` is the backbone's training mode (stochastic depth).
    pub fn losses(
        &self,
        images: &Tensor,
        anchors: &Tensor,
        truths: &[(Tensor, Tensor)],
        rng: &mut SplitMix64,
        train: bool,
    ) -> FasterRcnnLosses {
        let features = self.features(images, train);
        let outputs = self.rpn.forward(&features);
        self.losses_of(&features, &outputs, images, anchors, truths, rng)
    }

    /// The losses of features and RPN outputs already computed for `images`.
    fn losses_of(
        &self,
        features: &[Tensor],
        outputs: &rpn::RpnOutputs,
        images: &Tensor,
        anchors: &Tensor,
        truths: &[(Tensor, Tensor)],
        rng: &mut SplitMix64,
    ) -> FasterRcnnLosses {
        let size = images.size();
        let proposals = self.rpn.proposals(outputs, anchors, size[2], size[3], true);
        let boxes: Vec<Tensor> = truths.iter().map(|(b, _)| b.shallow_clone()).collect();
        let rpn = self.rpn.losses(outputs, anchors, &boxes, rng);
        let roi = self.roi_heads.losses(&features[..4], &proposals, truths, rng);
        FasterRcnnLosses {
            objectness: rpn.objectness,
            rpn_box_regression: rpn.box_regression,
            classifier: roi.classifier,
            box_regression: roi.box_regression,
        }
    }

    /// Boxes `[N, M, 4]` (input pixels, clipped) and per-class scores `[N, M, C]` of `images`, before NMS: each
    /// image's best (proposal, class) pairs, see [`RoiHeads::detect`].
    pub fn detect(&self, images: &Tensor, anchors: &Tensor) -> (Tensor, Tensor) {
        let size = images.size();
        let features = self.features(images, false);
        let outputs = self.rpn.forward(&features);
        let proposals = self.rpn.proposals(&outputs, anchors, size[2], size[3], false);
        self.roi_heads.detect(&features[..4], &proposals, size[2], size[3], self.num_candidates())
    }

    /// Validation's pass: the training losses (samplers drawing from `rng`) and [`FasterRcnn::detect`]'s candidates
    /// from one evaluation-mode pass of the backbone, the pyramid and the RPN head.
    pub fn losses_and_detect(
        &self,
        images: &Tensor,
        anchors: &Tensor,
        truths: &[(Tensor, Tensor)],
        rng: &mut SplitMix64,
    ) -> (FasterRcnnLosses, (Tensor, Tensor)) {
        let size = images.size();
        let features = self.features(images, false);
        let outputs = self.rpn.forward(&features);
        let losses = self.losses_of(&features, &outputs, images, anchors, truths, rng);
        let proposals = self.rpn.proposals(&outputs, anchors, size[2], size[3], false);
        let detections = self.roi_heads.detect(&features[..4], &proposals, size[2], size[3], self.num_candidates());
        (losses, detections)
    }

    /// Parameter-path prefixes of the backbone's units in forward order (see [`ConvNext::unit_prefixes`]).
    pub fn encoder_units(&self) -> Vec<String> {
        self.backbone.unit_prefixes()
    }

    /// Draws a sampler seed from libtorch's generator (so checkpoints that keep the generator resume exactly).
    pub fn seed_from_torch() -> SplitMix64 {
        let draw = Tensor::randint(i64::MAX, [1], (Kind::Int64, tch::Device::Cpu)).int64_value(&[0]);
        SplitMix64::new(draw as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn small(classes: i64) -> FasterRcnnConfig {
        let mut config = FasterRcnnConfig::new("convnext_atto", classes);
        config.fpn_channels = 32;
        config.roi_heads.representation_size = 64;
        config.anchors.sizes = vec![vec![16.0], vec![32.0], vec![64.0], vec![128.0], vec![256.0]];
        config
    }

    #[test]
    fn parameter_names_follow_torchvision_and_shapes_hold() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = FasterRcnn::new(&vs.root(), &small(3)).unwrap();
        let names: Vec<String> = vs.variables().into_keys().collect();
        for name in [
            "stem.0.weight",
            "fpn.inner_blocks.0.0.weight",
            "fpn.layer_blocks.3.0.bias",
            "rpn.head.conv.0.0.weight",
            "rpn.head.cls_logits.weight",
            "rpn.head.bbox_pred.bias",
            "roi_heads.box_head.fc6.weight",
            "roi_heads.box_head.fc7.bias",
            "roi_heads.box_predictor.cls_score.weight",
            "roi_heads.box_predictor.bbox_pred.weight",
        ] {
            assert!(names.contains(&name.to_string()), "{name} missing from {names:?}");
        }
        assert_eq!(vs.variables()["roi_heads.box_head.fc6.weight"].size(), [64, 32 * 49]);
        assert_eq!(vs.variables()["roi_heads.box_predictor.bbox_pred.weight"].size(), [16, 64]);
        assert_eq!(vs.variables()["rpn.head.bbox_pred.weight"].size(), [12, 32, 1, 1]);
        assert_eq!(model.level_sizes(96, 128), [(24, 32), (12, 16), (6, 8), (3, 4), (2, 2)]);
        let anchors = model.anchors(96, 128);
        assert_eq!(anchors.size(), [3 * (24 * 32 + 12 * 16 + 6 * 8 + 3 * 4 + 2 * 2), 4]);
    }

    #[test]
    fn losses_are_finite_and_every_parameter_learns_and_detect_gives_fcos_shapes() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = FasterRcnn::new(&vs.root(), &small(2)).unwrap();
        let images = Tensor::randn([2, 3, 64, 96], (Kind::Float, Device::Cpu));
        let anchors = model.anchors(64, 96);
        let truths = vec![
            (
                Tensor::from_slice(&[4f32, 6.0, 30.0, 40.0, 50.0, 10.0, 90.0, 60.0]).view([2, 4]),
                Tensor::from_slice(&[0i64, 1]),
            ),
            (Tensor::zeros([0, 4], (Kind::Float, Device::Cpu)), Tensor::zeros([0], (Kind::Int64, Device::Cpu))),
        ];
        let losses = model.losses(&images, &anchors, &truths, &mut SplitMix64::new(1), true);
        let total = losses.total();
        for (name, value) in [
            ("objectness", &losses.objectness),
            ("rpn box", &losses.rpn_box_regression),
            ("classifier", &losses.classifier),
            ("box", &losses.box_regression),
        ] {
            let v = f64::try_from(value).unwrap();
            assert!(v.is_finite() && v > 0.0, "{name}: {v}");
        }
        total.backward();
        for (name, var) in vs.variables() {
            let grad = var.grad();
            assert!(grad.defined(), "{name} got no gradient");
        }
        let (boxes, scores) = tch::no_grad(|| model.detect(&images, &anchors));
        let m = boxes.size()[1];
        assert_eq!((boxes.size(), scores.size()), (vec![2, m, 4], vec![2, m, 2]));
        assert!(m > 0 && m <= 1000);
        // One class per row: at most one nonzero score.
        let nonzero = scores.gt(0.0).sum_dim_intlist(-1, false, Kind::Int64).max().int64_value(&[]);
        assert!(nonzero <= 1);
    }
}
