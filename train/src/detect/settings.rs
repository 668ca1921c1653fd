//! The detection section of the training config (`detect:`): the data layout, the detector's size, its
//! augmentation, the NMS that validation applies (and the export records), and the score threshold of the
//! precision / recall / F1 metrics.

use serde::{Deserialize, Serialize};

use kiln_infer::nms::NmsConfig;
use kiln_models::BoxActivation;

use super::annotations::Layout;
use super::augment::AugmentConfig;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectSettings {
    /// `csv`, `coco` or `yolo`; unset: recognised from the folder.
    pub layout: Option<Layout>,
    /// FPN width.
    pub fpn_channels: i64,
    /// Convolutions in each head tower (4, torchvision's FCOS).
    pub head_convs: usize,
    /// Pyramid levels from P3 (3: P3–P5, up to 5: P3–P7).
    pub num_levels: usize,
    /// Where each location sits in its feature-map cell, in strides from the top-left corner: 0 as torchvision's
    /// FCOS (the default), 0.5 the cell's centre. A run config written before this key existed means 0.5, what
    /// that run trained with.
    #[serde(default = "kiln_models::detector::legacy_location_offset")]
    pub location_offset: f64,
    /// The box regression's activation: `exp` (the default, the FCOS paper's), `relu` (torchvision's) or
    /// `softplus`. ReLU's regression can die for good on small sets (see [`BoxActivation`]); exp trained best side
    /// by side with torchvision (README). A run config written before this key existed means `relu`, what that
    /// run trained with.
    #[serde(default = "legacy_box_activation")]
    pub box_activation: BoxActivation,
    pub augment: AugmentConfig,
    pub nms: NmsConfig,
    /// The score above which a detection counts for precision, recall, F1 and mean IoU.
    pub score_threshold: f64,
    /// Draw each training epoch's images with replacement, weighted so that rare classes are seen as often as
    /// common ones (an image weighs the mean of its boxes' inverse class frequencies; negatives the mean weight).
    pub balanced_sampling: bool,
}

/// What a run config saved before `detect.box_activation` existed trained with.
fn legacy_box_activation() -> BoxActivation {
    BoxActivation::Relu
}

impl Default for DetectSettings {
    fn default() -> Self {
        Self {
            layout: None,
            fpn_channels: 96,
            head_convs: 4,
            num_levels: 3,
            location_offset: kiln_models::detector::TORCHVISION_LOCATION_OFFSET,
            box_activation: BoxActivation::Exp,
            augment: AugmentConfig::default(),
            nms: NmsConfig::default(),
            score_threshold: 0.3,
            balanced_sampling: false,
        }
    }
}

impl DetectSettings {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: String| Err((format!("detect.{key}"), reason));
        if self.fpn_channels < 8 {
            return bad("fpn_channels", format!("{} is below 8", self.fpn_channels));
        }
        if !(1..=8).contains(&self.head_convs) {
            return bad("head_convs", format!("{} is not in 1..=8", self.head_convs));
        }
        if !(3..=5).contains(&self.num_levels) {
            return bad("num_levels", format!("{} is not in 3..=5", self.num_levels));
        }
        if !(0.0..1.0).contains(&self.location_offset) {
            return bad("location_offset", format!("{} is not in [0, 1)", self.location_offset));
        }
        if !(0.0..=1.0).contains(&self.score_threshold) {
            return bad("score_threshold", format!("{} is not in [0, 1]", self.score_threshold));
        }
        let nms = &self.nms;
        if !(0.0..=1.0).contains(&nms.iou_threshold) || !(0.0..=1.0).contains(&nms.score_threshold) {
            return bad("nms", "iou_threshold and score_threshold must be in [0, 1]".into());
        }
        if nms.max_detections == 0 {
            return bad("nms.max_detections", "must be at least 1".into());
        }
        self.augment.validate().or_else(|reason| bad("augment", reason))
    }
}
