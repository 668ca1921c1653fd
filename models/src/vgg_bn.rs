//! A VGG body with BatchNorm for text lines (the classic CRNN body of Shi et al.,
//! <https://arxiv.org/abs/1507.05717>, with BatchNorm after every convolution): stages of 3×3 convolution +
//! BatchNorm + ReLU, each stage ending in a max-pool that halves the height and the width (the first two stages)
//! or only the height (the last two). A 32 px line leaves it 2 rows high with a column per 4 pixels of width.
//!
//! Parameter names: `stages.{i}.{j}.conv.weight` (no bias: BatchNorm follows) and
//! `stages.{i}.{j}.bn.{weight,bias,running_mean,running_var}` (PyTorch's `BatchNorm2d` names, without
//! `num_batches_tracked`). In ONNX every BatchNorm is folded into its convolution, as deployment tools do.

use kiln_export::{Attr, Graph, Value};
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Kind, Tensor};

use crate::onnx::{self, join, path_of};
use crate::{Error, Result};

/// PyTorch's BatchNorm2d epsilon and momentum.
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

/// The body's widths and depths.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VggBnConfig {
    /// Channels per stage.
    pub dims: Vec<i64>,
    /// Convolutions per stage.
    pub depths: Vec<usize>,
}

impl Default for VggBnConfig {
    /// 32-64-96-128 channels with 1-1-2-2 convolutions: about 0.18 GMAC for a 32×256 line (counted, not
    /// benchmarked), 2.5× fewer than the classic CRNN widths (32-64-128-256 with 1-1-2-3, 0.46 GMAC), which reached
    /// 4.59 % test CER against 5.06 % on digit lines in 4 epochs (one seed, the old augmentation; README, OCR
    /// table).
    fn default() -> Self {
        Self { dims: vec![32, 64, 96, 128], depths: vec![1, 1, 2, 2] }
    }
}

impl VggBnConfig {
    /// The max-pool after stage `i`, `[height, width]`: 2×2 for the first two stages, then 2×1.
    pub fn pool(i: usize) -> [i64; 2] {
        if i < 2 {
            [2, 2]
        } else {
            [2, 1]
        }
    }

    /// Input pixels per output row and column, `[height, width]`.
    pub fn output_stride(&self) -> [i64; 2] {
        (0..self.dims.len()).fold([1, 1], |[h, w], i| {
            let [ph, pw] = Self::pool(i);
            [h * ph, w * pw]
        })
    }

    pub fn num_features(&self) -> i64 {
        *self.dims.last().unwrap_or(&0)
    }

    fn validate(&self) -> Result<()> {
        let invalid = |key: &str, reason: String| Err(Error::InvalidSetting { key: key.into(), reason });
        if self.dims.is_empty() || self.dims.len() != self.depths.len() {
            return invalid("dims", format!("{} stages of dims but {} of depths", self.dims.len(), self.depths.len()));
        }
        if self.dims.iter().any(|d| *d < 1) || self.depths.iter().any(|d| *d < 1) {
            return invalid("dims/depths", "every stage needs at least one convolution of at least one channel".into());
        }
        Ok(())
    }
}

/// Convolution (3×3, padding 1, no bias) + BatchNorm + ReLU.
#[derive(Debug)]
struct ConvBnRelu {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    name: String,
}

impl ConvBnRelu {
    fn new(p: &nn::Path, cin: i64, cout: i64) -> Self {
        // PyTorch's default Conv2d init (kaiming_uniform with a = √5: uniform in ±1/√fan_in), as the reference
        // CRNN trains with.
        let bound = 1.0 / ((cin * 9) as f64).sqrt();
        let conv = nn::conv2d(
            p / "conv",
            cin,
            cout,
            3,
            nn::ConvConfig {
                padding: 1,
                bias: false,
                ws_init: nn::Init::Uniform { lo: -bound, up: bound },
                ..Default::default()
            },
        );
        let bn = nn::batch_norm2d(
            p / "bn",
            cout,
            nn::BatchNormConfig { eps: BN_EPS, momentum: BN_MOMENTUM, ..Default::default() },
        );
        Self { conv, bn, name: path_of(p) }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.conv).apply_t(&self.bn, train).relu()
    }

    /// The convolution with the BatchNorm's running statistics and affine folded in:
    /// `w' = w · γ / √(var + ε)`, `b' = β − mean · γ / √(var + ε)`.
    fn folded(&self) -> (Tensor, Tensor) {
        tch::no_grad(|| {
            let bn = &self.bn;
            let scale = bn.ws.as_ref().expect("affine BatchNorm").to_kind(Kind::Double)
                / (bn.running_var.to_kind(Kind::Double) + BN_EPS).sqrt();
            let weight = self.conv.ws.to_kind(Kind::Double) * scale.view([-1, 1, 1, 1]);
            let bias = bn.bs.as_ref().expect("affine BatchNorm").to_kind(Kind::Double)
                - bn.running_mean.to_kind(Kind::Double) * &scale;
            (weight.to_kind(Kind::Float), bias.to_kind(Kind::Float))
        })
    }

    fn emit(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        let (weight, bias) = self.folded();
        let scope = join(&self.name, "conv");
        let w = onnx::weight(g, &join(&scope, "weight"), &weight, None)?;
        let b = onnx::weight(g, &join(&scope, "bias"), &bias, None)?;
        Ok(g.scoped(&self.name, |g| -> kiln_export::Result<Value> {
            let y = g.op(
                "Conv",
                &[x, &w, &b],
                vec![
                    Attr::Ints("kernel_shape", vec![3, 3]),
                    Attr::Ints("strides", vec![1, 1]),
                    Attr::Ints("pads", vec![1, 1, 1, 1]),
                    Attr::Ints("dilations", vec![1, 1]),
                    Attr::Int("group", 1),
                ],
            )?;
            g.op("Relu", &[&y], vec![])
        })?)
    }
}

/// The VGG-BN body: `[N, 3, H, W]` → `[N, dims[-1], H / 16, W / 4]` with four stages.
#[derive(Debug)]
pub struct VggBn {
    stages: Vec<Vec<ConvBnRelu>>,
    pub config: VggBnConfig,
    name: String,
}

impl VggBn {
    /// The body under `p` (`p / "stages"`).
    pub fn new(p: &nn::Path, config: &VggBnConfig) -> Result<Self> {
        config.validate()?;
        let stages_path = p / "stages";
        let mut cin = 3;
        let mut stages = Vec::with_capacity(config.dims.len());
        for (i, (&dim, &depth)) in config.dims.iter().zip(&config.depths).enumerate() {
            let stage = &stages_path / i;
            let units = (0..depth)
                .map(|j| {
                    let unit = ConvBnRelu::new(&(&stage / j), cin, dim);
                    cin = dim;
                    unit
                })
                .collect();
            stages.push(units);
        }
        Ok(Self { stages, config: config.clone(), name: path_of(p) })
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut y = xs.shallow_clone();
        for (i, stage) in self.stages.iter().enumerate() {
            for unit in stage {
                y = unit.forward_t(&y, train);
            }
            let pool = VggBnConfig::pool(i);
            y = y.max_pool2d(pool, pool, [0, 0], [1, 1], false);
        }
        y
    }

    pub fn emit(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        let mut y = x.clone();
        for (i, stage) in self.stages.iter().enumerate() {
            for unit in stage {
                y = unit.emit(g, &y)?;
            }
            let pool = VggBnConfig::pool(i);
            y = g.scoped(&join(&self.name, &format!("stages.{i}.pool")), |g| {
                g.op(
                    "MaxPool",
                    &[&y],
                    vec![
                        Attr::Ints("kernel_shape", pool.to_vec()),
                        Attr::Ints("strides", pool.to_vec()),
                        Attr::Ints("pads", vec![0, 0, 0, 0]),
                    ],
                )
            })?;
        }
        Ok(y)
    }

    /// Parameter-path prefixes of the freezable units (each convolution with its BatchNorm), input side first.
    pub fn unit_prefixes(&self) -> Vec<String> {
        self.stages.iter().flatten().map(|u| format!("{}.", u.name)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn the_body_keeps_a_column_per_four_pixels_and_two_rows_of_a_32_px_line() {
        let vs = nn::VarStore::new(Device::Cpu);
        let body = VggBn::new(&vs.root(), &VggBnConfig { dims: vec![4, 6, 8, 8], depths: vec![1, 1, 2, 1] }).unwrap();
        let y = tch::no_grad(|| body.forward_t(&Tensor::randn([2, 3, 32, 40], (Kind::Float, Device::Cpu)), false));
        assert_eq!(y.size(), [2, 8, 2, 10]);
        assert_eq!(body.config.output_stride(), [16, 4]);
        let names: Vec<String> = vs.variables().into_keys().collect();
        assert!(names.contains(&"stages.2.1.bn.running_var".to_string()), "{names:?}");
        assert!(!vs.variables()["stages.0.0.bn.running_mean"].requires_grad(), "running statistics are buffers");
        assert_eq!(body.unit_prefixes().len(), 5);
        assert_eq!(body.unit_prefixes()[2], "stages.2.0.");
    }

    #[test]
    fn folding_the_batch_norm_into_the_convolution_gives_the_same_output() {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let unit = ConvBnRelu::new(&vs.root(), 3, 4);
        tch::no_grad(|| {
            for (name, mut t) in vs.variables() {
                let drawn = if name.ends_with("running_var") || name.ends_with("bn.weight") {
                    t.rand_like() + 0.5
                } else {
                    t.randn_like()
                };
                t.copy_(&drawn);
            }
        });
        let xs = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let (w, b) = unit.folded();
        let expected = tch::no_grad(|| unit.forward_t(&xs, false));
        let folded = xs.conv2d(&w, Some(&b), [1, 1], [1, 1], [1, 1], 1).relu();
        let diff = (&expected - &folded).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
        assert!(expected.abs().max().double_value(&[]) > 0.1, "the comparison sees non-zero outputs");
    }

    #[test]
    fn mismatched_stage_lists_are_named() {
        let vs = nn::VarStore::new(Device::Cpu);
        let err = VggBn::new(&vs.root(), &VggBnConfig { dims: vec![4, 8], depths: vec![1] }).unwrap_err();
        assert!(err.to_string().contains("dims"), "{err}");
    }
}
