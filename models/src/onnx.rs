//! Shared pieces of ONNX emission: weights from tch tensors, convolutions (also with weights shared between
//! several applications), linear layers, exact GELU, LayerNorm and standardisation over one axis.
//! Layers call these from their `emit` methods, next to their `forward`.

use kiln_export::{Attr, Graph, Value};
use tch::{nn, Kind, Tensor};

use crate::Result;

/// The dotted parameter path of `p` (`stages.1.blocks.0`), as tch and timm name it.
pub fn path_of(p: &nn::Path) -> String {
    p.components().collect::<Vec<_>>().join(".")
}

/// `prefix.name`, or `name` at the root.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Adds `tensor` as the initializer `name` (in the graph's precision), with `shape` if given (same values).
pub fn weight(g: &mut Graph, name: &str, tensor: &Tensor, shape: Option<&[i64]>) -> Result<Value> {
    let values: Vec<f32> =
        Vec::try_from(tensor.detach().to_kind(Kind::Float).to_device(tch::Device::Cpu).flatten(0, -1))?;
    let dims = shape.map(<[i64]>::to_vec).unwrap_or_else(|| tensor.size());
    Ok(g.weight(name, &dims, &values)?)
}

/// A 2-D convolution with tch's weights (`[out, in/groups, k, k]`) and bias.
pub fn conv2d(
    g: &mut Graph,
    name: &str,
    conv: &nn::Conv2D,
    stride: i64,
    padding: i64,
    groups: i64,
    x: &Value,
) -> Result<Value> {
    let params = conv_params(g, name, conv)?;
    conv_apply(g, name, &params, stride, padding, groups, x)
}

/// A 2-D convolution with per-dimension stride and padding (`[height, width]`, padding on both sides).
pub fn conv2d_hw(
    g: &mut Graph,
    name: &str,
    conv: &nn::Conv2D,
    stride: [i64; 2],
    padding: [i64; 2],
    groups: i64,
    x: &Value,
) -> Result<Value> {
    let params = conv_params(g, name, conv)?;
    conv_apply_hw(g, name, &params, stride, padding, groups, x)
}

/// A convolution's weights added once as initializers, for a layer applied to several inputs (a head shared
/// across pyramid levels): [`conv_params`] once, then [`conv_apply`] per input.
#[derive(Clone, Debug)]
pub struct ConvParams {
    pub weight: Value,
    pub bias: Option<Value>,
    kernel: Vec<i64>,
}

/// Adds `conv`'s weight and bias as the initializers `name.weight` and `name.bias`.
pub fn conv_params(g: &mut Graph, name: &str, conv: &nn::Conv2D) -> Result<ConvParams> {
    let w = weight(g, &join(name, "weight"), &conv.ws, None)?;
    let bias = conv.bs.as_ref().map(|bs| weight(g, &join(name, "bias"), bs, None)).transpose()?;
    Ok(ConvParams { weight: w, bias, kernel: conv.ws.size()[2..].to_vec() })
}

/// A `Conv` node on `x` with weights from [`conv_params`], named under `scope`.
pub fn conv_apply(
    g: &mut Graph,
    scope: &str,
    params: &ConvParams,
    stride: i64,
    padding: i64,
    groups: i64,
    x: &Value,
) -> Result<Value> {
    conv_apply_hw(g, scope, params, [stride; 2], [padding; 2], groups, x)
}

/// [`conv_apply`] with per-dimension stride and padding, `[height, width]`.
pub fn conv_apply_hw(
    g: &mut Graph,
    scope: &str,
    params: &ConvParams,
    stride: [i64; 2],
    [pad_h, pad_w]: [i64; 2],
    groups: i64,
    x: &Value,
) -> Result<Value> {
    let mut inputs = vec![x, &params.weight];
    if let Some(b) = &params.bias {
        inputs.push(b);
    }
    Ok(g.scoped(scope, |g| -> kiln_export::Result<Value> {
        g.op(
            "Conv",
            &inputs,
            vec![
                Attr::Ints("kernel_shape", params.kernel.clone()),
                Attr::Ints("strides", stride.to_vec()),
                Attr::Ints("pads", vec![pad_h, pad_w, pad_h, pad_w]),
                Attr::Ints("dilations", vec![1, 1]),
                Attr::Int("group", groups),
            ],
        )
    })?)
}

/// A linear layer on the last dimension of any-rank input: `x · Wᵀ + b` (MatMul with the transposed weight).
pub fn linear(g: &mut Graph, name: &str, linear: &nn::Linear, x: &Value) -> Result<Value> {
    let w = weight(g, &join(name, "weight"), &linear.ws, None)?;
    let b = linear.bs.as_ref().map(|bs| weight(g, &join(name, "bias"), bs, None)).transpose()?;
    Ok(g.scoped(name, |g| -> kiln_export::Result<Value> {
        let wt = g.op("Transpose", &[&w], vec![Attr::Ints("perm", vec![1, 0])])?;
        let y = g.op("MatMul", &[x, &wt], vec![])?;
        match &b {
            Some(b) => g.op("Add", &[&y, b], vec![]),
            None => Ok(y),
        }
    })?)
}

/// Exact (erf) GELU: `0.5 · x · (1 + erf(x / √2))`.
pub fn gelu(g: &mut Graph, x: &Value) -> Result<Value> {
    let sqrt2 = g.constant("sqrt2", &[], &[std::f32::consts::SQRT_2])?;
    let one = g.constant("one", &[], &[1.0])?;
    let half = g.constant("half", &[], &[0.5])?;
    let scaled = g.op("Div", &[x, &sqrt2], vec![])?;
    let erf = g.op("Erf", &[&scaled], vec![])?;
    let shifted = g.op("Add", &[&erf, &one], vec![])?;
    let product = g.op("Mul", &[x, &shifted], vec![])?;
    Ok(g.op("Mul", &[&product, &half], vec![])?)
}

/// LayerNorm over `axis` (a single axis): `LayerNormalization` from opset 17 when `axis` is the last one, else
/// the decomposition `(x - mean) / sqrt(var + eps) · weight + bias` with ReduceMean (axes as an attribute below
/// opset 18, as an input from 18).
pub fn layer_norm(
    g: &mut Graph,
    x: &Value,
    weight: &Value,
    bias: &Value,
    eps: f64,
    axis: i64,
    last: bool,
) -> Result<Value> {
    if g.opset() >= 17 && last {
        return Ok(g.op(
            "LayerNormalization",
            &[x, weight, bias],
            vec![Attr::Int("axis", -1), Attr::Float("epsilon", eps as f32)],
        )?);
    }
    let normed = standardize(g, x, eps, axis)?;
    let scaled = g.op("Mul", &[&normed, weight], vec![])?;
    Ok(g.op("Add", &[&scaled, bias], vec![])?)
}

/// `(x - mean) / sqrt(var + eps)` over `axis` (biased variance, as PyTorch's norms), with ReduceMean.
pub fn standardize(g: &mut Graph, x: &Value, eps: f64, axis: i64) -> Result<Value> {
    let mean = reduce_mean(g, x, axis)?;
    let centred = g.op("Sub", &[x, &mean], vec![])?;
    let squared = g.op("Mul", &[&centred, &centred], vec![])?;
    let var = reduce_mean(g, &squared, axis)?;
    let eps = g.constant("eps", &[], &[eps as f32])?;
    let var_eps = g.op("Add", &[&var, &eps], vec![])?;
    let std = g.op("Sqrt", &[&var_eps], vec![])?;
    Ok(g.op("Div", &[&centred, &std], vec![])?)
}

fn reduce_mean(g: &mut Graph, x: &Value, axis: i64) -> Result<Value> {
    mean_over(g, x, axis, true)
}

/// The mean over one axis, kept as size 1 or removed (ReduceMean; axes as an attribute below opset 18, as an
/// input from 18).
pub fn mean_over(g: &mut Graph, x: &Value, axis: i64, keep: bool) -> Result<Value> {
    let keepdims = Attr::Int("keepdims", keep as i64);
    if g.opset() >= 18 {
        let axes = g.constant_i64("axes", &[axis])?;
        Ok(g.op("ReduceMean", &[x, &axes], vec![keepdims])?)
    } else {
        Ok(g.op("ReduceMean", &[x], vec![Attr::Ints("axes", vec![axis]), keepdims])?)
    }
}

/// NCHW → NHWC.
pub fn to_channels_last(g: &mut Graph, x: &Value) -> Result<Value> {
    Ok(g.op("Transpose", &[x], vec![Attr::Ints("perm", vec![0, 2, 3, 1])])?)
}

/// NHWC → NCHW.
pub fn to_channels_first(g: &mut Graph, x: &Value) -> Result<Value> {
    Ok(g.op("Transpose", &[x], vec![Attr::Ints("perm", vec![0, 3, 1, 2])])?)
}
