//! The FCOS head (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection",
//! <https://arxiv.org/abs/1904.01355>), shared by every pyramid level.
//!
//! Two towers of `num_convs` × [3×3 conv, GroupNorm, ReLU]; on the classification tower a 3×3 conv to per-class
//! logits, on the regression tower a 3×3 conv to the four ltrb distances and one to the centerness logit
//! (centerness on the regression branch, as in torchvision and the FCOS follow-ups). Distances are
//! `relu(bbox_reg(x)) · stride`, in input pixels (FCOS's `norm_reg_targets` variant, torchvision's decoding).
//!
//! Parameter paths follow torchvision's `FCOSHead` under `head.`: `head.classification_head.conv.{3k}` (conv k)
//! and `.conv.{3k+1}` (its GroupNorm), `head.classification_head.cls_logits`, `head.regression_head.conv.*`,
//! `head.regression_head.bbox_reg`, `head.regression_head.bbox_ctrness`.

use kiln_export::{Attr, Graph, Value};
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;

use crate::group_norm::{groups_for, GroupNorm, GroupNormParams, GROUP_NORM_EPS};
use crate::onnx::{self, join, path_of, ConvParams};
use crate::{Error, Result};

/// The prior probability of foreground the classification bias starts at (RetinaNet's π).
pub const PRIOR_PROBABILITY: f64 = 0.01;

/// The most GroupNorm groups a tower uses (FCOS's 32; fewer when the channels need it, see [`groups_for`]).
pub const MAX_GROUPS: i64 = 32;

/// What turns the box-regression conv's output into non-negative distances (in strides).
///
/// `relu` is torchvision's FCOS. Its gradient is zero wherever the output is negative: when an early update
/// (AdamW's first, sign-like steps) pushes the output below zero at every positive location, the box loss
/// never recovers (GIoU pinned at 1.0 for the rest of the run). `softplus` (`ln(1 + eˣ)`) and `exp` (the FCOS
/// paper's) are positive with a gradient everywhere, so a regression pushed down comes back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BoxActivation {
    #[default]
    Relu,
    Softplus,
    Exp,
}

impl BoxActivation {
    fn apply(self, xs: &Tensor) -> Tensor {
        match self {
            BoxActivation::Relu => xs.relu(),
            BoxActivation::Softplus => xs.softplus(),
            BoxActivation::Exp => xs.exp(),
        }
    }

    /// The ONNX operator of the same function.
    fn onnx_op(self) -> &'static str {
        match self {
            BoxActivation::Relu => "Relu",
            BoxActivation::Softplus => "Softplus",
            BoxActivation::Exp => "Exp",
        }
    }
}

/// What the head predicts at every location of every level, concatenated level by level (P3 first) and
/// row-major within a level (y, then x): the order of [`crate::Locations`].
#[derive(Debug)]
pub struct HeadOutputs {
    /// `[N, A, num_classes]`: per-class logits (sigmoid, not softmax).
    pub cls_logits: Tensor,
    /// `[N, A, 4]`: distances from the location to the box's left, top, right and bottom edges, in input
    /// pixels (≥ 0).
    pub box_ltrb: Tensor,
    /// `[N, A]`: centerness logits.
    pub centerness_logits: Tensor,
}

/// The graph values of [`HeadOutputs`], from [`FcosHead::emit`].
#[derive(Clone, Debug)]
pub struct HeadValues {
    pub cls_logits: Value,
    pub box_ltrb: Value,
    pub centerness_logits: Value,
}

fn conv_config(bias: f64) -> nn::ConvConfig {
    nn::ConvConfig {
        padding: 1,
        ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.01 },
        bs_init: nn::Init::Const(bias),
        ..Default::default()
    }
}

/// `num_convs` × [3×3 conv, GroupNorm, ReLU] at constant width.
#[derive(Debug)]
struct Tower {
    layers: Vec<(nn::Conv2D, GroupNorm)>,
    name: String,
}

impl Tower {
    fn new(p: &nn::Path, channels: i64, num_convs: usize) -> Result<Self> {
        let groups = groups_for(channels, MAX_GROUPS);
        let layers = (0..num_convs)
            .map(|k| -> Result<_> {
                let conv = nn::conv2d(p / (3 * k), channels, channels, 3, conv_config(0.0));
                let norm = GroupNorm::new(p / (3 * k + 1), channels, groups, GROUP_NORM_EPS)?;
                Ok((conv, norm))
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers, name: path_of(p) })
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        self.layers.iter().fold(xs.shallow_clone(), |ys, (conv, norm)| norm.forward(&ys.apply(conv)).relu())
    }

    fn emit_params(&self, g: &mut Graph) -> Result<Vec<(ConvParams, GroupNormParams)>> {
        self.layers
            .iter()
            .enumerate()
            .map(|(k, (conv, norm))| {
                Ok((onnx::conv_params(g, &join(&self.name, &(3 * k).to_string()), conv)?, norm.emit_params(g)?))
            })
            .collect()
    }

    fn emit_with(&self, g: &mut Graph, params: &[(ConvParams, GroupNormParams)], x: &Value) -> Result<Value> {
        let mut y = x.clone();
        for (k, ((_, norm), (conv_params, norm_params))) in self.layers.iter().zip(params).enumerate() {
            let scope = join(&self.name, &(3 * k).to_string());
            y = onnx::conv_apply(g, &scope, conv_params, 1, 1, 1, &y)?;
            y = norm.emit_with(g, norm_params, &y)?;
            y = g.scoped(&scope, |g| g.op("Relu", &[&y], vec![]))?;
        }
        Ok(y)
    }
}

/// The FCOS head, applied with the same weights to every level.
#[derive(Debug)]
pub struct FcosHead {
    cls_tower: Tower,
    cls_logits: nn::Conv2D,
    reg_tower: Tower,
    bbox_reg: nn::Conv2D,
    bbox_ctrness: nn::Conv2D,
    pub num_classes: i64,
    pub box_activation: BoxActivation,
    name: String,
}

impl FcosHead {
    /// A head under `p` for `channels`-wide pyramid levels with `num_convs` convolutions per tower.
    pub fn new(p: &nn::Path, channels: i64, num_classes: i64, num_convs: usize) -> Result<Self> {
        if num_classes < 1 {
            return Err(Error::InvalidSetting {
                key: "num_classes".into(),
                reason: format!("{num_classes} (need at least 1)"),
            });
        }
        let cls = p / "classification_head";
        let reg = p / "regression_head";
        let prior = -((1.0 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY).ln();
        Ok(Self {
            cls_tower: Tower::new(&(&cls / "conv"), channels, num_convs)?,
            cls_logits: nn::conv2d(&cls / "cls_logits", channels, num_classes, 3, conv_config(prior)),
            reg_tower: Tower::new(&(&reg / "conv"), channels, num_convs)?,
            bbox_reg: nn::conv2d(&reg / "bbox_reg", channels, 4, 3, conv_config(0.0)),
            bbox_ctrness: nn::conv2d(&reg / "bbox_ctrness", channels, 1, 3, conv_config(0.0)),
            num_classes,
            box_activation: BoxActivation::Relu,
            name: path_of(p),
        })
    }

    /// The same head with `activation` on its box regression (ReLU by default).
    pub fn with_box_activation(mut self, activation: BoxActivation) -> Self {
        self.box_activation = activation;
        self
    }

    /// The head on every level, flattened and concatenated.
    ///
    /// # Shapes
    /// `[[N, channels, h_l, w_l] for each level l]`, one stride per level →
    /// [`HeadOutputs`] with `A = Σ h_l · w_l`
    pub fn forward(&self, features: &[Tensor], strides: &[i64]) -> HeadOutputs {
        assert_eq!(features.len(), strides.len(), "one stride per level");
        let flat = |ys: Tensor| {
            let n = ys.size()[0];
            let k = ys.size()[1];
            ys.permute([0, 2, 3, 1]).reshape([n, -1, k])
        };
        let (mut cls, mut ltrb, mut ctr) = (Vec::new(), Vec::new(), Vec::new());
        for (xs, &stride) in features.iter().zip(strides) {
            cls.push(flat(self.cls_tower.forward(xs).apply(&self.cls_logits)));
            let reg = self.reg_tower.forward(xs);
            ltrb.push(flat(self.box_activation.apply(&reg.apply(&self.bbox_reg)) * stride as f64));
            ctr.push(flat(reg.apply(&self.bbox_ctrness)).squeeze_dim(-1));
        }
        HeadOutputs {
            cls_logits: Tensor::cat(&cls, 1),
            box_ltrb: Tensor::cat(&ltrb, 1),
            centerness_logits: Tensor::cat(&ctr, 1),
        }
    }

    /// ONNX of [`FcosHead::forward`]: the weights are added once and every level's nodes are named under
    /// `p{3 + level}/`.
    pub fn emit(&self, g: &mut Graph, features: &[Value], strides: &[i64]) -> Result<HeadValues> {
        if features.len() != strides.len() {
            return Err(Error::InvalidSetting {
                key: "head.strides".into(),
                reason: format!("{} strides for {} levels", strides.len(), features.len()),
            });
        }
        let cls_tower = self.cls_tower.emit_params(g)?;
        let cls_name = join(&self.name, "classification_head.cls_logits");
        let cls_logits = onnx::conv_params(g, &cls_name, &self.cls_logits)?;
        let reg_tower = self.reg_tower.emit_params(g)?;
        let reg_name = join(&self.name, "regression_head.bbox_reg");
        let bbox_reg = onnx::conv_params(g, &reg_name, &self.bbox_reg)?;
        let ctr_name = join(&self.name, "regression_head.bbox_ctrness");
        let bbox_ctrness = onnx::conv_params(g, &ctr_name, &self.bbox_ctrness)?;

        let (mut cls, mut ltrb, mut ctr) = (Vec::new(), Vec::new(), Vec::new());
        for (level, (x, &stride)) in features.iter().zip(strides).enumerate() {
            g.scoped(&format!("p{}", level + 3), |g| -> Result<()> {
                let y = self.cls_tower.emit_with(g, &cls_tower, x)?;
                let y = onnx::conv_apply(g, &cls_name, &cls_logits, 1, 1, 1, &y)?;
                cls.push(flatten(g, &y, Some(self.num_classes))?);
                let reg = self.reg_tower.emit_with(g, &reg_tower, x)?;
                let y = onnx::conv_apply(g, &reg_name, &bbox_reg, 1, 1, 1, &reg)?;
                let y = g.scoped(&reg_name, |g| -> Result<Value> {
                    let y = g.op(self.box_activation.onnx_op(), &[&y], vec![])?;
                    let stride = g.constant("stride", &[], &[stride as f32])?;
                    Ok(g.op("Mul", &[&y, &stride], vec![])?)
                })?;
                ltrb.push(flatten(g, &y, Some(4))?);
                let y = onnx::conv_apply(g, &ctr_name, &bbox_ctrness, 1, 1, 1, &reg)?;
                ctr.push(flatten(g, &y, None)?);
                Ok(())
            })?;
        }
        let mut concat = |parts: Vec<Value>| -> Result<Value> {
            let refs: Vec<&Value> = parts.iter().collect();
            Ok(g.scoped(&self.name, |g| g.op("Concat", &refs, vec![Attr::Int("axis", 1)]))?)
        };
        Ok(HeadValues { cls_logits: concat(cls)?, box_ltrb: concat(ltrb)?, centerness_logits: concat(ctr)? })
    }
}

/// `[N, K, h, w]` → `[N, h·w, K]` (Transpose + Reshape), or with `channels` `None` (K = 1) → `[N, h·w]`.
fn flatten(g: &mut Graph, x: &Value, channels: Option<i64>) -> Result<Value> {
    Ok(match channels {
        Some(k) => {
            let nhwc = onnx::to_channels_last(g, x)?;
            let shape = g.constant_i64("shape", &[0, -1, k])?;
            g.op("Reshape", &[&nhwc, &shape], vec![])?
        }
        None => {
            let shape = g.constant_i64("shape", &[0, -1])?;
            g.op("Reshape", &[x, &shape], vec![])?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn levels(n: i64, channels: i64) -> Vec<Tensor> {
        [(4, 6), (2, 3), (1, 2)]
            .iter()
            .map(|&(h, w)| Tensor::randn([n, channels, h, w], (Kind::Float, Device::Cpu)))
            .collect()
    }

    #[test]
    fn outputs_are_concatenated_level_by_level() {
        let vs = nn::VarStore::new(Device::Cpu);
        let head = FcosHead::new(&(vs.root() / "head"), 16, 5, 2).unwrap();
        let out = tch::no_grad(|| head.forward(&levels(2, 16), &[8, 16, 32]));
        let a = 4 * 6 + 2 * 3 + 2;
        assert_eq!(out.cls_logits.size(), [2, a, 5]);
        assert_eq!(out.box_ltrb.size(), [2, a, 4]);
        assert_eq!(out.centerness_logits.size(), [2, a]);
        assert!(out.box_ltrb.min().double_value(&[]) >= 0.0, "distances are non-negative");
    }

    #[test]
    fn the_classification_bias_starts_at_the_prior() {
        let vs = nn::VarStore::new(Device::Cpu);
        let head = FcosHead::new(&(vs.root() / "head"), 16, 3, 2).unwrap();
        let out = tch::no_grad(|| head.forward(&levels(1, 16), &[8, 16, 32]));
        // The std-0.01 weights add a little noise around the prior.
        let p = out.cls_logits.sigmoid();
        let (lo, hi, mean) =
            (p.min().double_value(&[]), p.max().double_value(&[]), p.mean(Kind::Float).double_value(&[]));
        assert!(
            (mean - PRIOR_PROBABILITY).abs() < 5e-4 && lo > 0.005 && hi < 0.02,
            "sigmoid in [{lo}, {hi}], mean {mean}"
        );
        let bias = vs.variables()["head.classification_head.cls_logits.bias"].sigmoid();
        assert!((bias - PRIOR_PROBABILITY).abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn distances_scale_with_the_stride_of_their_level() {
        // The same features at two strides: the second level's distances are twice the first's.
        let vs = nn::VarStore::new(Device::Cpu);
        let head = FcosHead::new(&vs.root(), 8, 2, 1).unwrap();
        tch::no_grad(|| {
            let _ = vs.variables()["regression_head.bbox_reg.bias"].shallow_clone().fill_(1.0);
        });
        let xs = Tensor::randn([1, 8, 2, 2], (Kind::Float, Device::Cpu));
        let out = tch::no_grad(|| head.forward(&[xs.shallow_clone(), xs], &[8, 16]));
        let (first, second) = (out.box_ltrb.narrow(1, 0, 4), out.box_ltrb.narrow(1, 4, 4));
        assert!(first.min().double_value(&[]) > 0.0);
        assert!((second - first * 2.0).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn softplus_and_exp_regressions_are_positive_and_recover_where_relu_is_dead() {
        // A regression pushed below zero everywhere: ReLU passes no gradient back, the other two do.
        for (activation, recovers) in
            [(BoxActivation::Relu, false), (BoxActivation::Softplus, true), (BoxActivation::Exp, true)]
        {
            let vs = nn::VarStore::new(Device::Cpu);
            let head = FcosHead::new(&vs.root(), 8, 2, 1).unwrap().with_box_activation(activation);
            let bias = vs.variables()["regression_head.bbox_reg.bias"].shallow_clone();
            tch::no_grad(|| {
                let _ = bias.shallow_clone().fill_(-3.0);
            });
            let xs = Tensor::randn([1, 8, 2, 2], (Kind::Float, Device::Cpu));
            let out = head.forward(&[xs], &[8]);
            let smallest = out.box_ltrb.min().double_value(&[]);
            assert!(smallest >= 0.0, "{activation:?}: distances are non-negative, got {smallest}");
            assert_eq!(recovers, smallest > 0.0, "{activation:?}: {smallest}");
            out.box_ltrb.sum(Kind::Float).backward();
            let grad = bias.grad().abs().sum(Kind::Float).double_value(&[]);
            assert_eq!(recovers, grad > 0.0, "{activation:?}: bias gradient {grad}");
        }
        let parsed: BoxActivation = serde_json::from_str(r#""softplus""#).unwrap();
        assert_eq!(parsed, BoxActivation::Softplus);
    }

    #[test]
    fn parameters_follow_torchvision() {
        let vs = nn::VarStore::new(Device::Cpu);
        FcosHead::new(&(vs.root() / "head"), 16, 3, 2).unwrap();
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        let expected = [
            "head.classification_head.cls_logits.bias",
            "head.classification_head.cls_logits.weight",
            "head.classification_head.conv.0.bias",
            "head.classification_head.conv.0.weight",
            "head.classification_head.conv.1.bias",
            "head.classification_head.conv.1.weight",
            "head.classification_head.conv.3.bias",
            "head.classification_head.conv.3.weight",
            "head.classification_head.conv.4.bias",
            "head.classification_head.conv.4.weight",
            "head.regression_head.bbox_ctrness.bias",
            "head.regression_head.bbox_ctrness.weight",
            "head.regression_head.bbox_reg.bias",
            "head.regression_head.bbox_reg.weight",
            "head.regression_head.conv.0.bias",
            "head.regression_head.conv.0.weight",
            "head.regression_head.conv.1.bias",
            "head.regression_head.conv.1.weight",
            "head.regression_head.conv.3.bias",
            "head.regression_head.conv.3.weight",
            "head.regression_head.conv.4.bias",
            "head.regression_head.conv.4.weight",
        ];
        assert_eq!(names, expected);
        let err = FcosHead::new(&vs.root(), 16, 0, 2).unwrap_err().to_string();
        assert!(err.contains("num_classes"), "{err}");
    }
}
