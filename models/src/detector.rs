//! Anchor-free one-stage object detection: a ConvNeXt backbone, an [`Fpn`] over its last three stages and an
//! [`FcosHead`] shared by every level (Tian et al., "FCOS", <https://arxiv.org/abs/1904.01355>).
//!
//! Parameters: the backbone at the root with timm's names (`stem.*`, `stages.*`, so a timm ConvNeXt classifier
//! checkpoint loads into it with [`crate::weights::HeadPolicy::Backbone`]), the pyramid under `fpn.` and the head
//! under `head.` with torchvision's names.
//!
//! Training (target assignment, losses) works on [`HeadOutputs`] and [`Locations`]; inference decodes them into
//! boxes and scores, in libtorch with [`ObjectDetector::decode`] and inside the exported graph with
//! [`ObjectDetector::emit`].

use kiln_export::{Graph, Value};
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;

use crate::convnext::{ConvNext, ConvNextConfig};
use crate::fcos_decode::{self, Locations};
use crate::fcos_head::{BoxActivation, FcosHead, HeadOutputs};
use crate::fpn::Fpn;
use crate::{Error, Result};

/// Input heights and widths must be multiples of this (the backbone's output stride), so that each pyramid
/// level is exactly twice the next.
pub const SIZE_DIVISOR: i64 = 32;

fn default_fpn_channels() -> i64 {
    128
}
fn default_head_convs() -> usize {
    2
}
fn default_num_levels() -> usize {
    3
}
/// What a config written before `location_offset` existed means: the cell centres those detectors trained with
/// (the serde default of both [`DetectorConfig`] and the training config's detection settings).
pub fn legacy_location_offset() -> f64 {
    0.5
}

/// An error unless `height` and `width` are positive multiples of [`SIZE_DIVISOR`]: the inputs both detectors take.
pub fn check_input_size(height: i64, width: i64) -> Result<()> {
    if height < SIZE_DIVISOR || width < SIZE_DIVISOR || height % SIZE_DIVISOR != 0 || width % SIZE_DIVISOR != 0 {
        return Err(Error::InvalidSetting {
            key: "input size".into(),
            reason: format!("{height}×{width} (height and width must be multiples of {SIZE_DIVISOR})"),
        });
    }
    Ok(())
}

/// torchvision's FCOS: locations at its anchors' centres, the cells' top-left corners.
pub const TORCHVISION_LOCATION_OFFSET: f64 = 0.0;

/// What a detector is. Only `architecture` and `num_classes` are required when deserialising.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorConfig {
    /// The backbone, by timm name: `convnext_atto` … `convnext_base`.
    pub architecture: String,
    pub num_classes: i64,
    /// Channels of every pyramid level and of the head (default 128; FCOS uses 256).
    #[serde(default = "default_fpn_channels")]
    pub fpn_channels: i64,
    /// Convolutions per head tower (default 2; FCOS uses 4).
    #[serde(default = "default_head_convs")]
    pub head_convs: usize,
    /// Pyramid levels: 3 (P3–P5, default, the CPU-friendly choice), 4 (P3–P6) or 5 (P3–P7, as FCOS).
    #[serde(default = "default_num_levels")]
    pub num_levels: usize,
    /// Stochastic depth rate of the backbone's last block.
    #[serde(default)]
    pub drop_path_rate: f64,
    /// Where a location sits in its cell, in strides from the top-left corner on both axes: 0 (torchvision's
    /// FCOS, the default of [`DetectorConfig::new`]) or 0.5 (the cell's centre). See [`crate::fcos_decode`].
    /// Absent from a config, it is 0.5: what detectors trained before the option existed use.
    #[serde(default = "legacy_location_offset")]
    pub location_offset: f64,
    /// The box regression's activation (default ReLU, torchvision's; absent from a config, ReLU too).
    #[serde(default)]
    pub box_activation: BoxActivation,
}

impl DetectorConfig {
    /// `architecture` with `num_classes` and the defaults above.
    pub fn new(architecture: &str, num_classes: i64) -> Self {
        Self {
            architecture: architecture.to_string(),
            num_classes,
            fpn_channels: default_fpn_channels(),
            head_convs: default_head_convs(),
            num_levels: default_num_levels(),
            drop_path_rate: 0.0,
            location_offset: TORCHVISION_LOCATION_OFFSET,
            box_activation: BoxActivation::Relu,
        }
    }

    pub fn with_fpn_channels(mut self, channels: i64) -> Self {
        self.fpn_channels = channels;
        self
    }

    pub fn with_head_convs(mut self, convs: usize) -> Self {
        self.head_convs = convs;
        self
    }

    pub fn with_num_levels(mut self, levels: usize) -> Self {
        self.num_levels = levels;
        self
    }

    pub fn with_drop_path_rate(mut self, rate: f64) -> Self {
        self.drop_path_rate = rate;
        self
    }

    pub fn with_location_offset(mut self, offset: f64) -> Self {
        self.location_offset = offset;
        self
    }

    pub fn with_box_activation(mut self, activation: BoxActivation) -> Self {
        self.box_activation = activation;
        self
    }

    pub fn backbone(&self) -> Result<ConvNextConfig> {
        Ok(ConvNextConfig::from_name(&self.architecture)?.with_drop_path_rate(self.drop_path_rate))
    }
}

/// A ConvNeXt + FPN + FCOS detector.
#[derive(Debug)]
pub struct ObjectDetector {
    pub backbone: ConvNext,
    pub fpn: Fpn,
    pub head: FcosHead,
    pub config: DetectorConfig,
}

impl ObjectDetector {
    /// Builds the model under `p`; pass the VarStore root to get timm's backbone key names.
    pub fn new(p: &nn::Path, config: &DetectorConfig) -> Result<Self> {
        Self::with_backbone(p, config, &config.backbone()?)
    }

    /// Builds the model with a custom four-stage backbone (`config.architecture` is then only a label).
    pub fn with_backbone(p: &nn::Path, config: &DetectorConfig, backbone: &ConvNextConfig) -> Result<Self> {
        if backbone.dims.len() != 4 {
            return Err(Error::InvalidSetting {
                key: "depths".into(),
                reason: format!("{} backbone stages (the detector needs 4: C3–C5 feed the FPN)", backbone.dims.len()),
            });
        }
        let backbone = ConvNext::new(p, backbone)?;
        let fpn = Fpn::new(&(p / "fpn"), &backbone.config.dims[1..], config.fpn_channels, config.num_levels)?;
        let head = FcosHead::new(&(p / "head"), config.fpn_channels, config.num_classes, config.head_convs)?
            .with_box_activation(config.box_activation);
        Ok(Self { backbone, fpn, head, config: config.clone() })
    }

    /// The stride of each pyramid level: 8, 16, 32 (, 64 (, 128)).
    pub fn strides(&self) -> Vec<i64> {
        self.fpn.strides()
    }

    /// An error unless `height` and `width` are positive multiples of [`SIZE_DIVISOR`].
    pub fn check_input_size(&self, height: i64, width: i64) -> Result<()> {
        check_input_size(height, width)
    }

    /// `(height, width)` of each level's feature map for a `height × width` input: `H/s × W/s` for P3–P5,
    /// then halved rounding up (a 3×3 stride-2 convolution with padding 1) for P6 and P7.
    pub fn level_sizes(&self, height: i64, width: i64) -> Vec<(i64, i64)> {
        let mut sizes: Vec<(i64, i64)> = [8, 16, 32].iter().map(|s| (height / s, width / s)).collect();
        while sizes.len() < self.config.num_levels {
            let (h, w) = sizes[sizes.len() - 1];
            sizes.push(((h + 1) / 2, (w + 1) / 2));
        }
        sizes
    }

    /// The locations of a `height × width` input (a pure function of the size; CPU, cheap).
    pub fn locations(&self, height: i64, width: i64) -> Locations {
        Locations::new(height, width, self.level_sizes(height, width), self.strides(), self.config.location_offset)
    }

    /// `A`, the number of locations of a `height × width` input: `Σ (H/s)·(W/s)` over the levels.
    pub fn num_locations(&self, height: i64, width: i64) -> i64 {
        self.level_sizes(height, width).iter().map(|(h, w)| h * w).sum()
    }

    /// The raw predictions at every location.
    ///
    /// # Shapes
    /// `[N, 3, H, W]` → [`HeadOutputs`]: `[N, A, num_classes]`, `[N, A, 4]`, `[N, A]` with
    /// `A = num_locations(H, W)`, in the order of [`ObjectDetector::locations`]
    ///
    /// # Panics
    /// If H or W is not a multiple of [`SIZE_DIVISOR`].
    pub fn forward_t(&self, images: &Tensor, train: bool) -> HeadOutputs {
        let size = images.size();
        if let Err(e) = self.check_input_size(size[2], size[3]) {
            panic!("{e}");
        }
        let features = self.backbone.forward_features_t(images, train);
        let pyramid = self.fpn.forward(&features[1..]);
        self.head.forward(&pyramid, &self.strides())
    }

    /// Boxes `[N, A, 4]` (x1, y1, x2, y2 in input pixels, clamped to the image) and per-class scores `[N, A, C]`
    /// (`sqrt(sigmoid(cls) · sigmoid(centerness))`), before any threshold or NMS.
    pub fn decode(&self, outputs: &HeadOutputs, locations: &Locations) -> (Tensor, Tensor) {
        fcos_decode::decode(outputs, locations)
    }

    /// Appends the inference graph for a fixed `height × width` input to `g`: `images` `[N, 3, H, W]` →
    /// (boxes `[N, A, 4]`, scores `[N, A, C]`), what [`ObjectDetector::decode`] returns. The locations are constant
    /// initializers; the batch may be dynamic.
    pub fn emit(&self, g: &mut Graph, images: &Value, height: i64, width: i64) -> Result<(Value, Value)> {
        self.check_input_size(height, width)?;
        let features = self.backbone.emit_features(g, images)?;
        let pyramid = self.fpn.emit(g, &features[1..])?;
        let head = self.head.emit(g, &pyramid, &self.strides())?;
        fcos_decode::emit_decode(g, &head, &self.locations(height, width))
    }

    /// Parameter-path prefixes of the backbone's units in forward order (see [`ConvNext::unit_prefixes`]).
    pub fn encoder_units(&self) -> Vec<String> {
        self.backbone.unit_prefixes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn detector(vs: &nn::VarStore, config: &DetectorConfig) -> ObjectDetector {
        ObjectDetector::new(&vs.root(), config).unwrap()
    }

    #[test]
    fn outputs_cover_every_location_for_two_variants_and_two_sizes() {
        for (variant, levels) in [("convnext_atto", 3), ("convnext_tiny", 5)] {
            let vs = nn::VarStore::new(Device::Cpu);
            let model = detector(&vs, &DetectorConfig::new(variant, 3).with_num_levels(levels));
            for (h, w) in [(128, 128), (192, 256)] {
                let xs = Tensor::randn([2, 3, h, w], (Kind::Float, Device::Cpu));
                let out = tch::no_grad(|| model.forward_t(&xs, false));
                let a = model.num_locations(h, w);
                let expected: i64 = model.strides().iter().map(|s| (h + s - 1) / s * ((w + s - 1) / s)).sum();
                assert_eq!(a, expected, "{variant} {h}×{w}");
                assert_eq!(out.cls_logits.size(), [2, a, 3], "{variant} {h}×{w}");
                assert_eq!(out.box_ltrb.size(), [2, a, 4]);
                assert_eq!(out.centerness_logits.size(), [2, a]);
                let locations = model.locations(h, w);
                assert_eq!((locations.points.size(), locations.len()), (vec![a, 2], a));
                let (boxes, scores) = model.decode(&out, &locations);
                assert_eq!((boxes.size(), scores.size()), (vec![2, a, 4], vec![2, a, 3]));
            }
        }
    }

    #[test]
    fn level_sizes_and_locations_of_a_small_input() {
        let vs = nn::VarStore::new(Device::Cpu);
        let config = DetectorConfig::new("convnext_atto", 2).with_num_levels(5).with_location_offset(0.5);
        let model = detector(&vs, &config);
        assert_eq!(model.level_sizes(64, 96), [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]);
        assert_eq!(model.num_locations(64, 96), 96 + 24 + 6 + 2 + 1);
        let locations = model.locations(64, 96);
        assert_eq!(locations.strides_per_level, [8, 16, 32, 64, 128]);
        let point =
            |i: i64| -> (f64, f64) { (locations.points.double_value(&[i, 0]), locations.points.double_value(&[i, 1])) };
        assert_eq!(point(0), (4.0, 4.0));
        assert_eq!(point(13), (12.0, 12.0), "second row, second column of P3");
        assert_eq!(point(96), (8.0, 8.0), "first location of P4");
        assert_eq!(point(96 + 24 + 6 + 2), (64.0, 64.0), "the single P7 location");
        assert_eq!(locations.strides.double_value(&[96 + 24 + 6]), 64.0);
    }

    #[test]
    fn parameters_live_under_the_backbone_fpn_and_head() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = detector(&vs, &DetectorConfig::new("convnext_atto", 4).with_num_levels(5));
        let names: Vec<String> = vs.variables().into_keys().collect();
        for name in &names {
            assert!(["stem.", "stages.", "fpn.", "head."].iter().any(|p| name.starts_with(p)), "{name}");
        }
        for name in
            ["stem.0.weight", "stages.3.blocks.1.gamma", "fpn.inner_blocks.0.0.weight", "fpn.extra_blocks.p7.bias"]
        {
            assert!(names.contains(&name.to_string()), "{name}");
        }
        assert_eq!(vs.variables()["fpn.inner_blocks.0.0.weight"].size(), [128, 80, 1, 1], "C3 is stage 1");
        assert_eq!(model.encoder_units().first().map(String::as_str), Some("stem."));
    }

    #[test]
    fn config_defaults_and_bad_settings() {
        let config: DetectorConfig =
            serde_json::from_str(r#"{"architecture": "convnext_atto", "num_classes": 2}"#).unwrap();
        assert_eq!(
            config,
            DetectorConfig::new("convnext_atto", 2).with_location_offset(0.5),
            "a config from before the offset"
        );
        assert_eq!((config.fpn_channels, config.head_convs, config.num_levels), (128, 2, 3));
        assert_eq!(DetectorConfig::new("convnext_atto", 2).location_offset, 0.0, "torchvision's by default");
        let vs = nn::VarStore::new(Device::Cpu);
        let err = ObjectDetector::new(&vs.root(), &config.clone().with_num_levels(6)).unwrap_err().to_string();
        assert!(err.contains("num_levels"), "{err}");
        let err = ObjectDetector::new(&vs.root(), &DetectorConfig::new("resnet50", 2)).unwrap_err().to_string();
        assert!(err.contains("resnet50"), "{err}");
        let model = detector(&nn::VarStore::new(Device::Cpu), &config);
        let err = model.check_input_size(100, 128).unwrap_err().to_string();
        assert!(err.contains("100×128") && err.contains("32"), "{err}");
        let mut g = Graph::new(17, kiln_export::ElemType::F32).unwrap();
        let images = g.input("images", kiln_export::ElemType::F32, &[]).unwrap();
        assert!(model.emit(&mut g, &images, 96, 100).is_err());
    }
}
