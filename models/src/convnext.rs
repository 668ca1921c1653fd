//! ConvNeXt (Liu et al., "A ConvNet for the 2020s", <https://arxiv.org/abs/2201.03545>), as timm implements it.
//!
//! Parameter paths equal timm's `convnext_*` state-dict keys (`stem.0.weight`, `stages.1.blocks.0.conv_dw.weight`,
//! `stages.1.blocks.0.mlp.fc1.weight`, `stages.1.blocks.0.gamma`, …), so a timm checkpoint saved as safetensors
//! loads without a renaming table. The small variants (atto … nano) use timm's `conv_mlp` blocks: channels-first
//! LayerNorm and 1×1 convolutions; tiny, small and base use channels-last LayerNorm and linear layers.

use kiln_export::{Graph, Value};
use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::Tensor;

use crate::drop_path::{block_rates, drop_path};
use crate::layer_norm::{LayerNorm2d, LayerNormLast, CONVNEXT_EPS};
use crate::onnx::{self, join, path_of};
use crate::{Error, Result};

/// The named ConvNeXt variants, smallest first.
pub const VARIANTS: [&str; 7] = [
    "convnext_atto",
    "convnext_femto",
    "convnext_pico",
    "convnext_nano",
    "convnext_tiny",
    "convnext_small",
    "convnext_base",
];

/// A ConvNeXt backbone's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvNextConfig {
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Channels per stage.
    pub dims: Vec<i64>,
    /// Blocks with 1×1 convolutions and channels-first LayerNorm (timm's `conv_mlp`), instead of linear layers.
    pub conv_mlp: bool,
    /// Depthwise convolution kernel size.
    pub kernel_size: i64,
    /// Initial value of the per-channel layer scale (`gamma`).
    pub layer_scale_init: f64,
    /// Stochastic depth rate of the last block; earlier blocks ramp up linearly from 0.
    pub drop_path_rate: f64,
    /// Downsampling layers halve only the height (2×3 kernels padded to keep the width, stride 2×1), so that the
    /// width keeps the stem's stride 4: the backbone of a text-line recognizer, whose width becomes its frames.
    /// The kernels' width of 3 lets each downsampling widen every frame's view by two frames, so that a frame
    /// sees whole characters even before the blocks' layer scales have grown from their tiny initial values.
    #[serde(default)]
    pub height_only_downsample: bool,
}

impl ConvNextConfig {
    fn preset(depths: [usize; 4], dims: [i64; 4], conv_mlp: bool) -> Self {
        Self {
            depths: depths.to_vec(),
            dims: dims.to_vec(),
            conv_mlp,
            kernel_size: 7,
            layer_scale_init: 1e-6,
            drop_path_rate: 0.0,
            height_only_downsample: false,
        }
    }
    pub fn atto() -> Self {
        Self::preset([2, 2, 6, 2], [40, 80, 160, 320], true)
    }
    pub fn femto() -> Self {
        Self::preset([2, 2, 6, 2], [48, 96, 192, 384], true)
    }
    pub fn pico() -> Self {
        Self::preset([2, 2, 6, 2], [64, 128, 256, 512], true)
    }
    pub fn nano() -> Self {
        Self::preset([2, 2, 8, 2], [80, 160, 320, 640], true)
    }
    pub fn tiny() -> Self {
        Self::preset([3, 3, 9, 3], [96, 192, 384, 768], false)
    }
    pub fn small() -> Self {
        Self::preset([3, 3, 27, 3], [96, 192, 384, 768], false)
    }
    pub fn base() -> Self {
        Self::preset([3, 3, 27, 3], [128, 256, 512, 1024], false)
    }

    /// The preset named as timm names it (`convnext_atto` … `convnext_base`).
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "convnext_atto" => Self::atto(),
            "convnext_femto" => Self::femto(),
            "convnext_pico" => Self::pico(),
            "convnext_nano" => Self::nano(),
            "convnext_tiny" => Self::tiny(),
            "convnext_small" => Self::small(),
            "convnext_base" => Self::base(),
            _ => {
                return Err(Error::UnknownArchitecture {
                    name: name.to_string(),
                    known: VARIANTS.iter().map(|v| v.to_string()).collect(),
                })
            }
        })
    }

    pub fn with_drop_path_rate(mut self, rate: f64) -> Self {
        self.drop_path_rate = rate;
        self
    }

    /// The same stages with [`ConvNextConfig::height_only_downsample`] set.
    pub fn for_text_lines(mut self) -> Self {
        self.height_only_downsample = true;
        self
    }

    /// The stride each downsampling layer applies, `[height, width]`.
    pub fn downsample_stride(&self) -> [i64; 2] {
        if self.height_only_downsample {
            [2, 1]
        } else {
            [2, 2]
        }
    }

    /// The kernel and padding of each downsampling layer, `[height, width]` each.
    pub fn downsample_kernel(&self) -> ([i64; 2], [i64; 2]) {
        if self.height_only_downsample {
            ([2, 3], [0, 1])
        } else {
            ([2, 2], [0, 0])
        }
    }

    /// The output stride of the last stage, `[height, width]`.
    pub fn output_stride(&self) -> [i64; 2] {
        let [sh, sw] = self.downsample_stride();
        let n = self.dims.len().saturating_sub(1) as u32;
        [4 * sh.pow(n), 4 * sw.pow(n)]
    }

    /// Channels of the last stage, i.e. of the features the head sees.
    pub fn num_features(&self) -> i64 {
        *self.dims.last().unwrap_or(&0)
    }

    fn validate(&self) -> Result<()> {
        let invalid = |key: &str, reason: String| Err(Error::InvalidSetting { key: key.into(), reason });
        if self.depths.is_empty() || self.depths.len() != self.dims.len() {
            return invalid(
                "depths",
                format!("{} stages of depths but {} of dims", self.depths.len(), self.dims.len()),
            );
        }
        if !(0.0..1.0).contains(&self.drop_path_rate) {
            return invalid("drop_path_rate", format!("{} is not in [0, 1)", self.drop_path_rate));
        }
        if self.kernel_size % 2 == 0 {
            return invalid("kernel_size", format!("{} is not odd", self.kernel_size));
        }
        Ok(())
    }
}

fn conv_config(padding: i64, stride: i64, groups: i64) -> nn::ConvConfig {
    nn::ConvConfig {
        padding,
        stride,
        groups,
        ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 },
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    }
}

/// `config` for kernels given per dimension.
fn conv_config_nd(config: &nn::ConvConfig) -> nn::ConvConfigND<[i64; 2]> {
    nn::ConvConfigND {
        stride: [config.stride; 2],
        padding: [config.padding; 2],
        dilation: [config.dilation; 2],
        groups: config.groups,
        bias: config.bias,
        ws_init: config.ws_init,
        bs_init: config.bs_init,
        padding_mode: config.padding_mode,
    }
}

fn linear_config() -> nn::LinearConfig {
    nn::LinearConfig {
        ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 },
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    }
}

/// The inverted-bottleneck MLP of a block, on channels-first or channels-last tensors. A few hundred bytes of
/// handles per block either way, so the size difference between variants does not matter.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Mlp {
    /// 1×1 convolutions on NCHW (timm `ConvMlp`).
    Conv { fc1: nn::Conv2D, fc2: nn::Conv2D },
    /// Linear layers on NHWC (timm `Mlp`).
    Linear { fc1: nn::Linear, fc2: nn::Linear },
}

#[derive(Debug)]
enum BlockNorm {
    ChannelsFirst(LayerNorm2d),
    ChannelsLast(LayerNormLast),
}

/// One ConvNeXt block: depthwise 7×7 conv → LayerNorm → Linear(4C) → GELU → Linear(C) → layer scale → residual.
#[derive(Debug)]
pub struct Block {
    conv_dw: nn::Conv2D,
    norm: BlockNorm,
    mlp: Mlp,
    gamma: Tensor,
    drop_path_rate: f64,
    dim: i64,
    kernel_size: i64,
    name: String,
}

impl Block {
    fn new(p: nn::Path, dim: i64, cfg: &ConvNextConfig, drop_path_rate: f64) -> Self {
        let k = cfg.kernel_size;
        let conv_dw = nn::conv2d(&p / "conv_dw", dim, dim, k, conv_config(k / 2, 1, dim));
        let hidden = 4 * dim;
        let (norm, mlp) = if cfg.conv_mlp {
            let norm = BlockNorm::ChannelsFirst(LayerNorm2d::new(&p / "norm", dim, CONVNEXT_EPS));
            let mlp = Mlp::Conv {
                fc1: nn::conv2d(&p / "mlp" / "fc1", dim, hidden, 1, conv_config(0, 1, 1)),
                fc2: nn::conv2d(&p / "mlp" / "fc2", hidden, dim, 1, conv_config(0, 1, 1)),
            };
            (norm, mlp)
        } else {
            let norm = BlockNorm::ChannelsLast(LayerNormLast::new(&p / "norm", dim, CONVNEXT_EPS));
            let mlp = Mlp::Linear {
                fc1: nn::linear(&p / "mlp" / "fc1", dim, hidden, linear_config()),
                fc2: nn::linear(&p / "mlp" / "fc2", hidden, dim, linear_config()),
            };
            (norm, mlp)
        };
        let gamma = p.var("gamma", &[dim], nn::Init::Const(cfg.layer_scale_init));
        Self { conv_dw, norm, mlp, gamma, drop_path_rate, dim, kernel_size: k, name: path_of(&p) }
    }

    /// ONNX of [`Block::forward_t`] at inference (stochastic depth is the identity).
    pub fn emit(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        let name = &self.name;
        let k = self.kernel_size;
        let y = onnx::conv2d(g, &join(name, "conv_dw"), &self.conv_dw, 1, k / 2, self.dim, x)?;
        let y = match (&self.norm, &self.mlp) {
            (BlockNorm::ChannelsFirst(norm), Mlp::Conv { fc1, fc2 }) => {
                let y = norm.emit(g, &y)?;
                let y = onnx::conv2d(g, &join(name, "mlp.fc1"), fc1, 1, 0, 1, &y)?;
                let y = g.scoped(name, |g| onnx::gelu(g, &y))?;
                let y = onnx::conv2d(g, &join(name, "mlp.fc2"), fc2, 1, 0, 1, &y)?;
                let gamma = onnx::weight(g, &join(name, "gamma"), &self.gamma, Some(&[self.dim, 1, 1]))?;
                g.scoped(name, |g| g.op("Mul", &[&y, &gamma], vec![]))?
            }
            (BlockNorm::ChannelsLast(norm), Mlp::Linear { fc1, fc2 }) => {
                let y = g.scoped(name, |g| onnx::to_channels_last(g, &y))?;
                let y = norm.emit(g, &y)?;
                let y = onnx::linear(g, &join(name, "mlp.fc1"), fc1, &y)?;
                let y = g.scoped(name, |g| onnx::gelu(g, &y))?;
                let y = onnx::linear(g, &join(name, "mlp.fc2"), fc2, &y)?;
                let gamma = onnx::weight(g, &join(name, "gamma"), &self.gamma, None)?;
                g.scoped(name, |g| -> Result<Value> {
                    let y = g.op("Mul", &[&y, &gamma], vec![])?;
                    onnx::to_channels_first(g, &y)
                })?
            }
            _ => unreachable!("Block::new pairs channels-first norms with conv MLPs"),
        };
        Ok(g.scoped(name, |g| g.op("Add", &[&y, x], vec![]))?)
    }
}

impl ModuleT for Block {
    /// # Shapes
    /// `[N, C, H, W]` → `[N, C, H, W]`
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs.apply(&self.conv_dw);
        let ys = match (&self.norm, &self.mlp) {
            (BlockNorm::ChannelsFirst(norm), Mlp::Conv { fc1, fc2 }) => {
                norm.forward(&ys).apply(fc1).gelu("none").apply(fc2) * self.gamma.reshape([1, -1, 1, 1])
            }
            (BlockNorm::ChannelsLast(norm), Mlp::Linear { fc1, fc2 }) => {
                let ys = norm.forward(&ys.permute([0, 2, 3, 1])).apply(fc1).gelu("none").apply(fc2);
                (ys * &self.gamma).permute([0, 3, 1, 2])
            }
            _ => unreachable!("Block::new pairs channels-first norms with conv MLPs"),
        };
        drop_path(&ys, self.drop_path_rate, train) + xs
    }
}

/// A stage: an optional downsampling layer (LayerNorm + 2×2 stride-2 conv) and its blocks.
#[derive(Debug)]
pub struct Stage {
    downsample: Option<(LayerNorm2d, nn::Conv2D)>,
    /// The downsampling convolution's stride and padding, `[height, width]`.
    downsample_stride: [i64; 2],
    downsample_padding: [i64; 2],
    pub blocks: Vec<Block>,
    name: String,
}

impl Stage {
    /// ONNX of [`Stage::forward_t`] at inference.
    pub fn emit(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        let mut y = match &self.downsample {
            Some((norm, conv)) => {
                let y = norm.emit(g, x)?;
                onnx::conv2d_hw(
                    g,
                    &join(&self.name, "downsample.1"),
                    conv,
                    self.downsample_stride,
                    self.downsample_padding,
                    1,
                    &y,
                )?
            }
            None => x.clone(),
        };
        for block in &self.blocks {
            y = block.emit(g, &y)?;
        }
        Ok(y)
    }
}

impl ModuleT for Stage {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = match &self.downsample {
            Some((norm, conv)) => norm.forward(xs).apply(conv),
            None => xs.shallow_clone(),
        };
        for block in &self.blocks {
            ys = block.forward_t(&ys, train);
        }
        ys
    }
}

/// The ConvNeXt backbone: a 4×4 stride-4 patchify stem and four stages. Output stride 32.
#[derive(Debug)]
pub struct ConvNext {
    stem_conv: nn::Conv2D,
    stem_norm: LayerNorm2d,
    pub stages: Vec<Stage>,
    pub config: ConvNextConfig,
    name: String,
}

impl ConvNext {
    /// Builds the backbone under `p` (use the VarStore root for timm's key names).
    pub fn new(p: &nn::Path, config: &ConvNextConfig) -> Result<Self> {
        config.validate()?;
        let dims = &config.dims;
        let stem_conv = nn::conv2d(p / "stem" / "0", 3, dims[0], 4, conv_config(0, 4, 1));
        let stem_norm = LayerNorm2d::new(p / "stem" / "1", dims[0], CONVNEXT_EPS);
        let rates = block_rates(&config.depths, config.drop_path_rate);
        let stride = config.downsample_stride();
        let (kernel, padding) = config.downsample_kernel();
        let stages = (0..dims.len())
            .map(|i| {
                let sp = p / "stages" / i;
                let downsample = (i > 0).then(|| {
                    let ds = &sp / "downsample";
                    (
                        LayerNorm2d::new(&ds / "0", dims[i - 1], CONVNEXT_EPS),
                        nn::conv(
                            &ds / "1",
                            dims[i - 1],
                            dims[i],
                            kernel,
                            nn::ConvConfigND { stride, padding, ..conv_config_nd(&conv_config(0, 1, 1)) },
                        ),
                    )
                });
                let blocks = (0..config.depths[i])
                    .map(|j| Block::new(&sp / "blocks" / j, dims[i], config, rates[i][j]))
                    .collect();
                Stage { downsample, downsample_stride: stride, downsample_padding: padding, blocks, name: path_of(&sp) }
            })
            .collect();
        Ok(Self { stem_conv, stem_norm, stages, config: config.clone(), name: path_of(p) })
    }

    /// ONNX of [`ConvNext::forward_t`] at inference: `[N, 3, H, W]` → `[N, dims[3], H/32, W/32]`.
    pub fn emit(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        let y = onnx::conv2d(g, &join(&self.name, "stem.0"), &self.stem_conv, 4, 0, 1, x)?;
        let mut y = self.stem_norm.emit(g, &y)?;
        for stage in &self.stages {
            y = stage.emit(g, &y)?;
        }
        Ok(y)
    }

    /// ONNX of [`ConvNext::forward_features_t`] at inference: each stage's output, strides 4, 8, 16, 32.
    pub fn emit_features(&self, g: &mut Graph, x: &Value) -> Result<Vec<Value>> {
        let y = onnx::conv2d(g, &join(&self.name, "stem.0"), &self.stem_conv, 4, 0, 1, x)?;
        let mut y = self.stem_norm.emit(g, &y)?;
        let mut features = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            y = stage.emit(g, &y)?;
            features.push(y.clone());
        }
        Ok(features)
    }

    /// Each stage's output, for dense tasks (a feature pyramid); the last is what [`ModuleT::forward_t`] returns.
    ///
    /// # Shapes
    /// `[N, 3, H, W]` → `[[N, dims[i], H / 2^(i+2), W / 2^(i+2)] for each stage i]` (strides 4, 8, 16, 32)
    pub fn forward_features_t(&self, xs: &Tensor, train: bool) -> Vec<Tensor> {
        let mut ys = self.stem_norm.forward(&xs.apply(&self.stem_conv));
        let mut features = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            ys = stage.forward_t(&ys, train);
            features.push(ys.shallow_clone());
        }
        features
    }

    /// Output stride of each stage's features: 4, 8, 16, 32 (the height's, for a text-line backbone).
    pub fn feature_strides(&self) -> Vec<i64> {
        (0..self.stages.len()).map(|i| 4 << i).collect()
    }

    /// Parameter-path prefixes of the encoder in forward order, one per freezable unit (the stem, each
    /// downsampling layer, each block): `--freeze 0.5` freezes the first half of these.
    pub fn unit_prefixes(&self) -> Vec<String> {
        let mut units = vec!["stem.".to_string()];
        for (i, stage) in self.stages.iter().enumerate() {
            if stage.downsample.is_some() {
                units.push(format!("stages.{i}.downsample."));
            }
            units.extend((0..stage.blocks.len()).map(|j| format!("stages.{i}.blocks.{j}.")));
        }
        units
    }
}

impl ModuleT for ConvNext {
    /// # Shapes
    /// `[N, 3, H, W]` → `[N, dims[3], H/32, W/32]`
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = self.stem_norm.forward(&xs.apply(&self.stem_conv));
        for stage in &self.stages {
            ys = stage.forward_t(&ys, train);
        }
        ys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn features_are_every_stage_and_the_last_is_the_forward_output() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = ConvNext::new(&vs.root(), &ConvNextConfig::atto()).unwrap();
        let xs = Tensor::randn([2, 3, 64, 96], (Kind::Float, Device::Cpu));
        let (features, out) = tch::no_grad(|| (model.forward_features_t(&xs, false), model.forward_t(&xs, false)));
        let shapes: Vec<Vec<i64>> = features.iter().map(Tensor::size).collect();
        assert_eq!(shapes, [[2, 40, 16, 24], [2, 80, 8, 12], [2, 160, 4, 6], [2, 320, 2, 3]]);
        assert!(features[3].equal(&out));
        assert_eq!(model.feature_strides(), [4, 8, 16, 32]);
    }
}
