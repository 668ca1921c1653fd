//! Feature Pyramid Network (Lin et al., "Feature Pyramid Networks for Object Detection",
//! <https://arxiv.org/abs/1612.03144>) with RetinaNet/FCOS's extra levels P6 and P7 ([`Fpn::new`], over C3–C5), or
//! Faster R-CNN's P2–P5 plus a max-pooled P6 ([`Fpn::with_max_pool`], over C2–C5).
//!
//! Parameter paths follow torchvision's `FeaturePyramidNetwork` and `LastLevelP6P7` under `fpn.`:
//! `fpn.inner_blocks.{i}.0` (the 1×1 laterals), `fpn.layer_blocks.{i}.0` (the 3×3 outputs),
//! `fpn.extra_blocks.p6`, `fpn.extra_blocks.p7`. `LastLevelMaxPool` has no parameters.

use kiln_export::{Attr, Graph, Value};
use tch::nn;
use tch::Tensor;

use crate::onnx::{self, join, path_of};
use crate::{Error, Result};

/// torchvision's FPN initialisation: `kaiming_uniform_(a=1)` (a gain of 1) on fan-in, bias 0.
fn conv_config(padding: i64, stride: i64) -> nn::ConvConfig {
    nn::ConvConfig {
        padding,
        stride,
        ws_init: nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Uniform,
            fan: nn::init::FanInOut::FanIn,
            non_linearity: nn::init::NonLinearity::Linear,
        },
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    }
}

/// The pyramid: `[C3, C4, C5]` (strides 8, 16, 32) → `[P3, …]` (strides 8, 16, 32 and, with `num_levels` 4 or 5,
/// 64 and 128), every level with `channels` channels.
///
/// Top-down: `P5' = lateral(C5)`, `P4' = lateral(C4) + up2(P5')`, `P3' = lateral(C3) + up2(P4')` with `up2` a ×2
/// nearest-neighbour upsampling; `Pi = output_i(Pi')` (3×3). `P6 = conv3x3/2(P5)`, `P7 = conv3x3/2(relu(P6))`.
#[derive(Debug)]
pub struct Fpn {
    inner_blocks: Vec<nn::Conv2D>,
    layer_blocks: Vec<nn::Conv2D>,
    p6: Option<nn::Conv2D>,
    p7: Option<nn::Conv2D>,
    /// Faster R-CNN's extra level: `max_pool2d(P5, kernel 1, stride 2)` (torchvision's `LastLevelMaxPool`).
    max_pool: bool,
    /// The stride of the first level: 8 over C3–C5, 4 over C2–C5.
    first_stride: i64,
    pub channels: i64,
    pub num_levels: usize,
    name: String,
}

/// The levels an [`Fpn`] can have: P3–P5, P3–P6 or P3–P7.
pub const FPN_LEVELS: std::ops::RangeInclusive<usize> = 3..=5;

impl Fpn {
    /// An FPN under `p` over backbone features with `in_channels` (C3, C4, C5), `channels` wide, with
    /// `num_levels` outputs (3, 4 or 5).
    pub fn new(p: &nn::Path, in_channels: &[i64], channels: i64, num_levels: usize) -> Result<Self> {
        let invalid = |key: &str, reason: String| Err(Error::InvalidSetting { key: key.into(), reason });
        if in_channels.len() != 3 {
            return invalid("fpn.in_channels", format!("{} inputs (need C3, C4, C5)", in_channels.len()));
        }
        if channels < 1 {
            return invalid("fpn_channels", format!("{channels} (need at least 1)"));
        }
        if !FPN_LEVELS.contains(&num_levels) {
            return invalid("num_levels", format!("{num_levels} is not 3, 4 or 5 (P3–P5, P3–P6, P3–P7)"));
        }
        let inner_blocks = Self::laterals(p, in_channels, channels);
        let layer_blocks = Self::outputs(p, in_channels.len(), channels);
        let extra = |name: &str| nn::conv2d(p / "extra_blocks" / name, channels, channels, 3, conv_config(1, 2));
        let p6 = (num_levels >= 4).then(|| extra("p6"));
        let p7 = (num_levels >= 5).then(|| extra("p7"));
        Ok(Self {
            inner_blocks,
            layer_blocks,
            p6,
            p7,
            max_pool: false,
            first_stride: 8,
            channels,
            num_levels,
            name: path_of(p),
        })
    }

    /// torchvision's Faster R-CNN pyramid under `p`: over C2–C5 (strides 4–32, `in_channels`), `channels` wide, with
    /// P2–P5 and P6 = `max_pool2d(P5, 1, stride 2)` (`LastLevelMaxPool`): strides 4, 8, 16, 32, 64.
    pub fn with_max_pool(p: &nn::Path, in_channels: &[i64], channels: i64) -> Result<Self> {
        if in_channels.len() != 4 {
            return Err(Error::InvalidSetting {
                key: "fpn.in_channels".into(),
                reason: format!("{} inputs (need C2, C3, C4, C5)", in_channels.len()),
            });
        }
        if channels < 1 {
            return Err(Error::InvalidSetting {
                key: "fpn_channels".into(),
                reason: format!("{channels} (need at least 1)"),
            });
        }
        Ok(Self {
            inner_blocks: Self::laterals(p, in_channels, channels),
            layer_blocks: Self::outputs(p, in_channels.len(), channels),
            p6: None,
            p7: None,
            max_pool: true,
            first_stride: 4,
            channels,
            num_levels: 5,
            name: path_of(p),
        })
    }

    /// The 1×1 laterals, `inner_blocks.{i}.0`.
    fn laterals(p: &nn::Path, in_channels: &[i64], channels: i64) -> Vec<nn::Conv2D> {
        in_channels
            .iter()
            .enumerate()
            .map(|(i, &c)| nn::conv2d(p / "inner_blocks" / i / 0, c, channels, 1, conv_config(0, 1)))
            .collect()
    }

    /// The 3×3 outputs, `layer_blocks.{i}.0`.
    fn outputs(p: &nn::Path, count: usize, channels: i64) -> Vec<nn::Conv2D> {
        (0..count).map(|i| nn::conv2d(p / "layer_blocks" / i / 0, channels, channels, 3, conv_config(1, 1))).collect()
    }

    /// Output stride of each level: 8, 16, 32 (, 64 (, 128)); 4 … 64 for [`Fpn::with_max_pool`].
    pub fn strides(&self) -> Vec<i64> {
        (0..self.num_levels).map(|i| self.first_stride << i).collect()
    }

    /// # Shapes
    /// `[C3 [N, c3, H/8, W/8], C4 [N, c4, H/16, W/16], C5 [N, c5, H/32, W/32]]` →
    /// `[[N, channels, ⌈H/s⌉, ⌈W/s⌉] for s in strides()]`
    ///
    /// # Panics
    /// If a level is not exactly twice the size of the next (the input was not a multiple of 32).
    pub fn forward(&self, features: &[Tensor]) -> Vec<Tensor> {
        assert_eq!(features.len(), self.inner_blocks.len(), "the FPN takes one feature map per lateral");
        let last = features.len() - 1;
        let mut inner = features[last].apply(&self.inner_blocks[last]);
        let mut outputs = vec![inner.apply(&self.layer_blocks[last])];
        for i in (0..last).rev() {
            let lateral = features[i].apply(&self.inner_blocks[i]);
            let (coarse, fine) = (inner.size(), lateral.size());
            assert!(
                fine[2] == 2 * coarse[2] && fine[3] == 2 * coarse[3],
                "FPN level {i} is {}×{} but the next is {}×{}: the input size must be a multiple of 32",
                fine[2],
                fine[3],
                coarse[2],
                coarse[3]
            );
            inner = lateral + inner.upsample_nearest2d([fine[2], fine[3]], 2.0, 2.0);
            outputs.insert(0, inner.apply(&self.layer_blocks[i]));
        }
        if let Some(p6) = &self.p6 {
            let level6 = outputs[last].apply(p6);
            if let Some(p7) = &self.p7 {
                let level7 = level6.relu().apply(p7);
                outputs.push(level6);
                outputs.push(level7);
            } else {
                outputs.push(level6);
            }
        }
        if self.max_pool {
            let pooled = outputs[last].max_pool2d([1, 1], [2, 2], [0, 0], [1, 1], false);
            outputs.push(pooled);
        }
        outputs
    }

    /// ONNX of [`Fpn::forward`]; the upsampling is `Resize` (nearest, scales `[1, 1, 2, 2]`, asymmetric
    /// coordinates, floor), which picks source pixel `⌊i / 2⌋` as libtorch's nearest upsampling does.
    pub fn emit(&self, g: &mut Graph, features: &[Value]) -> Result<Vec<Value>> {
        if features.len() != self.inner_blocks.len() {
            return Err(Error::InvalidSetting {
                key: "fpn.inputs".into(),
                reason: format!("{} features (need {})", features.len(), self.inner_blocks.len()),
            });
        }
        let name = &self.name;
        let conv = |g: &mut Graph, path: String, conv: &nn::Conv2D, stride: i64, pad: i64, x: &Value| {
            onnx::conv2d(g, &join(name, &path), conv, stride, pad, 1, x)
        };
        let last = features.len() - 1;
        let mut inner = conv(g, format!("inner_blocks.{last}.0"), &self.inner_blocks[last], 1, 0, &features[last])?;
        let mut outputs = vec![conv(g, format!("layer_blocks.{last}.0"), &self.layer_blocks[last], 1, 1, &inner)?];
        for i in (0..last).rev() {
            let lateral = conv(g, format!("inner_blocks.{i}.0"), &self.inner_blocks[i], 1, 0, &features[i])?;
            inner = g.scoped(&join(name, &format!("top_down.{i}")), |g| -> Result<Value> {
                let up = upsample_nearest2x(g, &inner)?;
                Ok(g.op("Add", &[&lateral, &up], vec![])?)
            })?;
            outputs.insert(0, conv(g, format!("layer_blocks.{i}.0"), &self.layer_blocks[i], 1, 1, &inner)?);
        }
        if let Some(p6) = &self.p6 {
            let level6 = conv(g, "extra_blocks.p6".into(), p6, 2, 1, &outputs[last])?;
            if let Some(p7) = &self.p7 {
                let relu = g.scoped(&join(name, "extra_blocks"), |g| g.op("Relu", &[&level6], vec![]))?;
                let level7 = conv(g, "extra_blocks.p7".into(), p7, 2, 1, &relu)?;
                outputs.push(level6);
                outputs.push(level7);
            } else {
                outputs.push(level6);
            }
        }
        if self.max_pool {
            let pooled = g.scoped(&join(name, "extra_blocks"), |g| {
                g.op(
                    "MaxPool",
                    &[&outputs[last]],
                    vec![Attr::Ints("kernel_shape", vec![1, 1]), Attr::Ints("strides", vec![2, 2])],
                )
            })?;
            outputs.push(pooled);
        }
        Ok(outputs)
    }
}

/// ×2 nearest-neighbour upsampling of an NCHW tensor: output pixel `(i, j)` is input pixel `(⌊i/2⌋, ⌊j/2⌋)`.
pub fn upsample_nearest2x(g: &mut Graph, x: &Value) -> Result<Value> {
    let roi = g.constant_f32("roi", &[0], &[])?;
    let scales = g.constant_f32("scales", &[4], &[1.0, 1.0, 2.0, 2.0])?;
    Ok(g.op(
        "Resize",
        &[x, &roi, &scales],
        vec![
            Attr::Str("mode", "nearest"),
            Attr::Str("coordinate_transformation_mode", "asymmetric"),
            Attr::Str("nearest_mode", "floor"),
        ],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn features(n: i64, h: i64, w: i64) -> Vec<Tensor> {
        [(8, 8), (12, 16), (16, 32)]
            .iter()
            .map(|&(c, s)| Tensor::randn([n, c, h / s, w / s], (Kind::Float, Device::Cpu)))
            .collect()
    }

    #[test]
    fn every_level_count_gives_its_shapes() {
        for (levels, expected) in [
            (3, vec![[2, 16, 8, 16], [2, 16, 4, 8], [2, 16, 2, 4]]),
            (5, vec![[2, 16, 8, 16], [2, 16, 4, 8], [2, 16, 2, 4], [2, 16, 1, 2], [2, 16, 1, 1]]),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let fpn = Fpn::new(&(vs.root() / "fpn"), &[8, 12, 16], 16, levels).unwrap();
            let out = tch::no_grad(|| fpn.forward(&features(2, 64, 128)));
            let shapes: Vec<Vec<i64>> = out.iter().map(Tensor::size).collect();
            assert_eq!(shapes, expected, "{levels} levels");
            assert_eq!(fpn.strides(), [8, 16, 32, 64, 128][..levels]);
        }
    }

    #[test]
    fn parameters_follow_torchvision() {
        let vs = nn::VarStore::new(Device::Cpu);
        Fpn::new(&(vs.root() / "fpn"), &[8, 12, 16], 16, 5).unwrap();
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(names.len(), 16);
        for name in ["fpn.inner_blocks.2.0.weight", "fpn.layer_blocks.0.0.bias", "fpn.extra_blocks.p7.weight"] {
            assert!(names.contains(&name.to_string()), "{name} in {names:?}");
        }
    }

    #[test]
    fn the_top_down_path_adds_the_nearest_upsampled_coarser_level() {
        // Identity laterals and output convs: P4 = C4 + C5 repeated over 2×2 cells, P3 = C3 + P4 repeated.
        let vs = nn::VarStore::new(Device::Cpu);
        let fpn = Fpn::new(&vs.root(), &[1, 1, 1], 1, 3).unwrap();
        tch::no_grad(|| {
            for (name, mut t) in vs.variables() {
                let _ = t.fill_(0.0);
                if name.contains("inner_blocks") && name.ends_with("weight") {
                    let _ = t.fill_(1.0);
                } else if name.ends_with("weight") {
                    let _ = t.narrow(2, 1, 1).narrow(3, 1, 1).fill_(1.0);
                }
            }
        });
        let c5 = Tensor::from_slice(&[1f32, 2.0]).view([1, 1, 1, 2]);
        let c4 = Tensor::from_slice(&[10f32, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0]).view([1, 1, 2, 4]);
        let c3 = Tensor::zeros([1, 1, 4, 8], (Kind::Float, Device::Cpu));
        let out = tch::no_grad(|| fpn.forward(&[c3, c4, c5]));
        let p4: Vec<f32> = Vec::try_from(out[1].flatten(0, -1)).unwrap();
        assert_eq!(p4, [11.0, 21.0, 32.0, 42.0, 51.0, 61.0, 72.0, 82.0]);
        let p3: Vec<f32> = Vec::try_from(out[0].narrow(2, 0, 2).flatten(0, -1)).unwrap();
        let row = [11.0, 11.0, 21.0, 21.0, 32.0, 32.0, 42.0, 42.0];
        assert_eq!(p3, [row, row].concat());
    }

    #[test]
    fn faster_rcnn_pyramid_has_p2_to_p6_with_a_max_pooled_p6() {
        let vs = nn::VarStore::new(Device::Cpu);
        let fpn = Fpn::with_max_pool(&(vs.root() / "fpn"), &[4, 8, 12, 16], 16).unwrap();
        assert_eq!(fpn.strides(), [4, 8, 16, 32, 64]);
        assert_eq!(vs.variables()["fpn.inner_blocks.0.0.weight"].size(), [16, 4, 1, 1], "C2 is lateral 0");
        assert_eq!(vs.variables().len(), 16, "4 laterals and 4 outputs, weight and bias; the pool has none");
        let features: Vec<Tensor> = [(4, 4), (8, 8), (12, 16), (16, 32)]
            .iter()
            .map(|&(c, s)| Tensor::randn([2, c, 96 / s, 160 / s], (Kind::Float, Device::Cpu)))
            .collect();
        let out = tch::no_grad(|| fpn.forward(&features));
        let shapes: Vec<Vec<i64>> = out.iter().map(Tensor::size).collect();
        assert_eq!(shapes, [[2, 16, 24, 40], [2, 16, 12, 20], [2, 16, 6, 10], [2, 16, 3, 5], [2, 16, 2, 3]]);
        // P6 picks every other P5 pixel, starting at the first.
        let picked = out[3].slice(2, 0, 3, 2).slice(3, 0, 5, 2);
        assert_eq!(f64::try_from((&out[4] - picked).abs().max()).unwrap(), 0.0);
        let err = Fpn::with_max_pool(&vs.root(), &[8, 12, 16], 16).unwrap_err().to_string();
        assert!(err.contains("3 inputs"), "{err}");
    }

    #[test]
    fn bad_settings_are_named() {
        let vs = nn::VarStore::new(Device::Cpu);
        let err = Fpn::new(&vs.root(), &[8, 12, 16], 16, 6).unwrap_err().to_string();
        assert!(err.contains("num_levels") && err.contains('6'), "{err}");
        let err = Fpn::new(&vs.root(), &[8, 12], 16, 3).unwrap_err().to_string();
        assert!(err.contains("2 inputs"), "{err}");
    }
}
