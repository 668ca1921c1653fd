//! Layer normalisation over the channel dimension, for channels-first (NCHW) and channels-last (…, C) tensors.

use kiln_export::{Graph, Value};
use tch::{nn, Tensor};

use crate::onnx;
use crate::Result;

/// The epsilon timm's ConvNeXt uses in all its LayerNorms.
pub const CONVNEXT_EPS: f64 = 1e-6;

/// LayerNorm over the channels of an NCHW tensor (timm's `LayerNorm2d`); parameters `weight` and `bias`, `[C]`.
#[derive(Debug)]
pub struct LayerNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
    channels: i64,
    name: String,
}

impl LayerNorm2d {
    pub fn new(p: nn::Path, channels: i64, eps: f64) -> Self {
        let weight = p.var("weight", &[channels], nn::Init::Const(1.0));
        let bias = p.var("bias", &[channels], nn::Init::Const(0.0));
        Self { weight, bias, eps, channels, name: onnx::path_of(&p) }
    }

    /// ONNX of [`LayerNorm2d::forward`]: transpose, `LayerNormalization`, transpose back (opset ≥ 17), or the
    /// decomposition over the channel axis.
    pub fn emit(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        let c = self.channels;
        if g.opset() >= 17 {
            let w = onnx::weight(g, &onnx::join(&self.name, "weight"), &self.weight, None)?;
            let b = onnx::weight(g, &onnx::join(&self.name, "bias"), &self.bias, None)?;
            g.scoped(&self.name, |g| {
                let nhwc = onnx::to_channels_last(g, x)?;
                let y = onnx::layer_norm(g, &nhwc, &w, &b, self.eps, -1, true)?;
                onnx::to_channels_first(g, &y)
            })
        } else {
            let w = onnx::weight(g, &onnx::join(&self.name, "weight"), &self.weight, Some(&[c, 1, 1]))?;
            let b = onnx::weight(g, &onnx::join(&self.name, "bias"), &self.bias, Some(&[c, 1, 1]))?;
            g.scoped(&self.name, |g| onnx::layer_norm(g, x, &w, &b, self.eps, 1, false))
        }
    }

    /// # Shapes
    /// `[N, C, H, W]` → `[N, C, H, W]`
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        xs.permute([0, 2, 3, 1])
            .layer_norm([self.channels], Some(&self.weight), Some(&self.bias), self.eps, true)
            .permute([0, 3, 1, 2])
    }
}

/// LayerNorm over the last dimension (timm's `nn.LayerNorm` on channels-last tensors).
#[derive(Debug)]
pub struct LayerNormLast {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
    channels: i64,
    name: String,
}

impl LayerNormLast {
    pub fn new(p: nn::Path, channels: i64, eps: f64) -> Self {
        let weight = p.var("weight", &[channels], nn::Init::Const(1.0));
        let bias = p.var("bias", &[channels], nn::Init::Const(0.0));
        Self { weight, bias, eps, channels, name: onnx::path_of(&p) }
    }

    /// ONNX of [`LayerNormLast::forward`].
    pub fn emit(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        let w = onnx::weight(g, &onnx::join(&self.name, "weight"), &self.weight, None)?;
        let b = onnx::weight(g, &onnx::join(&self.name, "bias"), &self.bias, None)?;
        g.scoped(&self.name, |g| onnx::layer_norm(g, x, &w, &b, self.eps, -1, true))
    }

    /// # Shapes
    /// `[…, C]` → `[…, C]`
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        xs.layer_norm([self.channels], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn channels_first_and_last_agree_and_normalise() {
        let vs = nn::VarStore::new(Device::Cpu);
        let first = LayerNorm2d::new(vs.root() / "a", 6, CONVNEXT_EPS);
        let last = LayerNormLast::new(vs.root() / "b", 6, CONVNEXT_EPS);
        let xs = Tensor::randn([2, 6, 3, 5], (Kind::Float, Device::Cpu)) * 3.0 + 1.0;
        let a = first.forward(&xs);
        let b = last.forward(&xs.permute([0, 2, 3, 1])).permute([0, 3, 1, 2]);
        assert!(a.allclose(&b, 1e-6, 1e-6, false));
        let mean = a.mean_dim(1, false, Kind::Float).abs().max().double_value(&[]);
        let var = a.var_dim(1, false, false).mean(Kind::Float).double_value(&[]);
        assert!(mean < 1e-5, "channel mean {mean}");
        assert!((var - 1.0).abs() < 1e-3, "channel variance {var}");
    }
}
