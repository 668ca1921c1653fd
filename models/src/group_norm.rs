//! Group normalisation (Wu & He, "Group Normalization", <https://arxiv.org/abs/1803.08494>) on NCHW tensors, as
//! `torch.nn.GroupNorm`: statistics over each group of channels and all positions, then a per-channel affine.

use kiln_export::{Graph, Value};
use tch::{nn, Tensor};

use crate::onnx::{self, join, path_of};
use crate::{Error, Result};

/// PyTorch's default GroupNorm epsilon.
pub const GROUP_NORM_EPS: f64 = 1e-5;

/// The number of groups for `channels`: the largest divisor of `channels` that is at most `max_groups`.
///
/// FCOS uses 32 groups on 256 channels. With fewer channels, or a count 32 does not divide, this keeps as many
/// groups as evenly fit: 128 → 32 (4 channels each), 48 → 24, 20 → 20 (one channel per group, i.e.
/// InstanceNorm), 7 → 7.
pub fn groups_for(channels: i64, max_groups: i64) -> i64 {
    (1..=max_groups.min(channels)).rev().find(|g| channels % g == 0).unwrap_or(1)
}

/// GroupNorm with parameters `weight` (init 1) and `bias` (init 0), `[C]`.
#[derive(Debug)]
pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub num_groups: i64,
    pub eps: f64,
    channels: i64,
    name: String,
}

/// A [`GroupNorm`]'s weights added once to a graph, for a layer applied to several inputs.
#[derive(Clone, Debug)]
pub struct GroupNormParams {
    weight: Value,
    bias: Value,
}

impl GroupNorm {
    /// `num_groups` must divide `channels` (see [`groups_for`]).
    pub fn new(p: nn::Path, channels: i64, num_groups: i64, eps: f64) -> Result<Self> {
        if num_groups < 1 || channels < 1 || channels % num_groups != 0 {
            return Err(Error::InvalidSetting {
                key: format!("{}.num_groups", path_of(&p)),
                reason: format!("{num_groups} groups do not divide {channels} channels"),
            });
        }
        let weight = p.var("weight", &[channels], nn::Init::Const(1.0));
        let bias = p.var("bias", &[channels], nn::Init::Const(0.0));
        Ok(Self { weight, bias, num_groups, eps, channels, name: path_of(&p) })
    }

    /// Adds the weight and bias as initializers `name.weight` and `name.bias`, shaped `[C, 1, 1]`.
    pub fn emit_params(&self, g: &mut Graph) -> Result<GroupNormParams> {
        let c = self.channels;
        let weight = onnx::weight(g, &join(&self.name, "weight"), &self.weight, Some(&[c, 1, 1]))?;
        let bias = onnx::weight(g, &join(&self.name, "bias"), &self.bias, Some(&[c, 1, 1]))?;
        Ok(GroupNormParams { weight, bias })
    }

    /// ONNX of [`GroupNorm::forward`] with weights from [`GroupNorm::emit_params`]: Reshape to `[N, G, -1]`,
    /// standardise over the last axis with ReduceMean, Reshape back to the input's shape, then the affine.
    /// (ONNX's `GroupNormalization` exists only from opset 18, with per-group affine until 21.)
    pub fn emit_with(&self, g: &mut Graph, params: &GroupNormParams, x: &Value) -> Result<Value> {
        g.scoped(&self.name, |g| {
            let shape = g.op("Shape", &[x], vec![])?;
            let grouped_shape = g.constant_i64("grouped_shape", &[0, self.num_groups, -1])?;
            let grouped = g.op("Reshape", &[x, &grouped_shape], vec![])?;
            let normed = onnx::standardize(g, &grouped, self.eps, 2)?;
            let normed = g.op("Reshape", &[&normed, &shape], vec![])?;
            let scaled = g.op("Mul", &[&normed, &params.weight], vec![])?;
            Ok(g.op("Add", &[&scaled, &params.bias], vec![])?)
        })
    }

    /// ONNX of [`GroupNorm::forward`], for a layer applied once.
    pub fn emit(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        let params = self.emit_params(g)?;
        self.emit_with(g, &params, x)
    }

    /// # Shapes
    /// `[N, C, H, W]` → `[N, C, H, W]`
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        xs.group_norm(self.num_groups, Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// GroupNorm written out as the ONNX emission computes it: group, standardise, ungroup, affine.
    fn reference(xs: &Tensor, norm: &GroupNorm) -> Tensor {
        let size = xs.size();
        let grouped = xs.reshape([size[0], norm.num_groups, -1]);
        let mean = grouped.mean_dim(2, true, Kind::Float);
        let var = grouped.var_dim(2, false, true);
        let normed = ((grouped - mean) / (var + norm.eps).sqrt()).reshape(size.as_slice());
        normed * norm.weight.reshape([-1, 1, 1]) + norm.bias.reshape([-1, 1, 1])
    }

    #[test]
    fn forward_equals_the_written_out_reference() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let norm = GroupNorm::new(vs.root() / "gn", 12, 4, GROUP_NORM_EPS).unwrap();
        tch::no_grad(|| {
            norm.weight.shallow_clone().copy_(&Tensor::randn([12], (Kind::Float, Device::Cpu)));
            norm.bias.shallow_clone().copy_(&Tensor::randn([12], (Kind::Float, Device::Cpu)));
        });
        let xs = Tensor::randn([2, 12, 5, 7], (Kind::Float, Device::Cpu)) * 3.0 + 2.0;
        let (got, want) = tch::no_grad(|| (norm.forward(&xs), reference(&xs, &norm)));
        let diff = (&got - &want).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "GroupNorm differs from the reference by {diff:e}");
        // And each group of a unit-affine GroupNorm is standardised.
        let plain = GroupNorm::new(vs.root() / "plain", 12, 4, GROUP_NORM_EPS).unwrap();
        let ys = tch::no_grad(|| plain.forward(&xs)).reshape([2, 4, -1]);
        let mean = ys.mean_dim(2, false, Kind::Float).abs().max().double_value(&[]);
        let var = ys.var_dim(2, false, false);
        assert!(mean < 1e-5 && (var - 1.0).abs().max().double_value(&[]) < 1e-3);
    }

    #[test]
    fn groups_divide_the_channels() {
        let cases = [(256, 32), (128, 32), (48, 24), (20, 20), (7, 7), (1, 1)];
        for (channels, groups) in cases {
            assert_eq!(groups_for(channels, 32), groups, "{channels} channels");
        }
        let vs = nn::VarStore::new(Device::Cpu);
        let err = GroupNorm::new(vs.root() / "head", 10, 4, GROUP_NORM_EPS).unwrap_err().to_string();
        assert!(err.contains("head.num_groups") && err.contains("10 channels"), "{err}");
    }
}
