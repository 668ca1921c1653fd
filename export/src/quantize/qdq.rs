//! Static int8 in QDQ form: `QuantizeLinear → DequantizeLinear` pairs around the quantized nodes, with int8
//! weights stored once, so that ONNX Runtime fuses each group into one int8 kernel and any other ONNX runtime
//! can still run the graph as written (in float, through the explicit dequantization).
//!
//! - **Linear** (`MatMul` on an activation of rank ≥ 3): `DQ(Q(x))` and `DQ(W int8, per output column)` feed
//!   the MatMul, which ONNX Runtime turns into `MatMulIntegerToFloat` (int8 GEMM, float out). Its bias `Add` gets
//!   the bias reshaped to the activation's rank (`[1, 1, 1, N]`): with a 1-D bias ONNX Runtime first fuses
//!   MatMul + Add into a float `Gemm`, leaving the DequantizeLinear nodes to run in float every time (measured
//!   1.5× slower than fp32 on convnext_tiny). Rank-2 MatMuls (classifier heads) stay float for the same reason.
//! - **Conv / Depthwise**: `DQ(Q(x))`, `DQ(W int8, per output channel)`, an int32 bias on the accumulator's scale,
//!   and `Q → DQ` on the output: ONNX Runtime's `QLinearConv`.
//!
//! An activation quantized for several consumers gets one pair; a convolution's output pair also serves as the
//! next quantized node's input. A convolution whose output reaches a graph output without another weighted layer
//! (a detector's class, box and centerness predictions) stays float: its result would be rounded to 8 bits.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use onnx_protobuf::{GraphProto, ModelProto, NodeProto, TensorProto};
use serde::Serialize;

use super::calibrate::{CalibMethod, TensorStats};
use super::graph_edit::{check_order, f32_tensor, i32_tensor, i8_tensor, node, prune, u8_tensor, Names};
use super::params::{quantize_bias, QParams};
use super::plan::{candidates, int8_weight, weight_values, Candidate, Int8Weight, OpFamily};
use crate::{Error, Result};

/// How to quantize.
#[derive(Clone, Debug, PartialEq)]
pub struct StaticOptions {
    pub families: BTreeSet<OpFamily>,
    pub method: CalibMethod,
    /// One weight scale per output channel (else one per tensor).
    pub per_channel: bool,
}

/// What a pass changed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct QuantSummary {
    /// Quantized nodes per family (`linear`, `conv`, `depthwise`).
    pub quantized: BTreeMap<String, usize>,
    /// Nodes that could have been quantized but stayed float, with the reason.
    pub kept_float: Vec<(String, String)>,
}

/// Quantizes `model` with activation ranges from `stats` (keyed by tensor name, from calibrating with
/// [`super::observation_points`]). A candidate whose input (or output) was not observed is an error.
pub fn quantize_static(
    model: &ModelProto,
    stats: &HashMap<String, TensorStats>,
    options: &StaticOptions,
) -> Result<(ModelProto, QuantSummary)> {
    let mut graph: GraphProto = (*model.graph).clone();
    let cands = candidates(model, &options.families);
    let mut summary = QuantSummary::default();
    let range = |name: &str| -> Result<(QParams, usize)> {
        let s = stats.get(name).ok_or_else(|| Error::Graph(format!("no calibration statistics for '{name}'")))?;
        let (lo, hi) = s.range(options.method);
        Ok((QParams::from_range(lo, hi), s.rank))
    };
    let mut pass = Pass { names: Names::of(&model.graph), inits: Vec::new(), dq_of: HashMap::new() };
    let mut before: BTreeMap<usize, Vec<NodeProto>> = BTreeMap::new();
    let mut after: BTreeMap<usize, Vec<NodeProto>> = BTreeMap::new();
    let mut bias_reshape: HashMap<String, usize> = HashMap::new();
    let last = super::plan::last_layers(model);
    for c in &cands {
        let name = model.graph.node[c.node].name.clone();
        if let (Some(output), OpFamily::Conv | OpFamily::Depthwise) = (last.get(&c.node), c.family) {
            summary.kept_float.push((name, format!("the last layer before the output '{output}'")));
            continue;
        }
        let (input_q, rank) = range(&c.input)?;
        if c.family == OpFamily::Linear && rank < 3 {
            summary
                .kept_float
                .push((name, format!("MatMul on a rank-{rank} input (ONNX Runtime would run it as a float Gemm)")));
            continue;
        }
        let output_q = c.output.as_deref().map(range).transpose()?.map(|(q, _)| q);
        let pre = before.entry(c.node).or_default();
        let x = pass.activation(&c.input, input_q, pre);
        let (w, w_scales) = pass.weight(&model.graph, c, options.per_channel, pre)?;
        let node = &mut graph.node[c.node];
        node.input[0] = x;
        node.input[1] = w;
        if let (Some(q), Some(output)) = (output_q, &c.output) {
            if node.input.len() == 3 {
                node.input[2] = pass.bias(&model.graph, &node.input[2].clone(), input_q.scale, &w_scales, pre)?;
            }
            let raw = pass.names.fresh(&format!("{output}/float"));
            node.output[0] = raw.clone();
            let post = after.entry(c.node).or_default();
            pass.requantize(&raw, output, q, post);
        }
        if c.family == OpFamily::Linear {
            bias_reshape.insert(model.graph.node[c.node].output[0].clone(), rank);
        }
        *summary.quantized.entry(c.family.name().to_string()).or_default() += 1;
    }
    reshape_biases(&mut graph, &bias_reshape, &mut pass);
    let mut nodes = Vec::with_capacity(graph.node.len() * 2);
    for (i, n) in std::mem::take(&mut graph.node).into_iter().enumerate() {
        nodes.extend(before.remove(&i).unwrap_or_default());
        nodes.push(n);
        nodes.extend(after.remove(&i).unwrap_or_default());
    }
    graph.node = nodes;
    graph.initializer.extend(pass.inits);
    prune(&mut graph);
    check_order(&graph)?;
    let mut out = ModelProto::new();
    out.clone_from(model);
    out.graph = Some(graph).into();
    Ok((out, summary))
}

struct Pass {
    names: Names,
    inits: Vec<TensorProto>,
    /// Float tensors already available in quantize-dequantized form: original name → DQ output.
    dq_of: HashMap<String, String>,
}

impl Pass {
    fn scalar_params(&mut self, base: &str, q: QParams) -> (String, String) {
        let scale = self.names.fresh(&format!("{base}/scale"));
        let zp = self.names.fresh(&format!("{base}/zero_point"));
        self.inits.push(f32_tensor(&scale, &[], &[q.scale]));
        self.inits.push(u8_tensor(&zp, &[], &[q.zero_point]));
        (scale, zp)
    }

    /// `DQ(Q(x))` of a float activation, made once per tensor; returns the name to read instead of `x`.
    fn activation(&mut self, x: &str, q: QParams, nodes: &mut Vec<NodeProto>) -> String {
        if let Some(dq) = self.dq_of.get(x) {
            return dq.clone();
        }
        let (scale, zp) = self.scalar_params(x, q);
        let quantized = self.names.fresh(&format!("{x}/int8"));
        let dq = self.names.fresh(&format!("{x}/dequantized"));
        nodes.push(node(
            "QuantizeLinear",
            self.names.fresh(&format!("{x}/QuantizeLinear")),
            vec![x.into(), scale.clone(), zp.clone()],
            vec![quantized.clone()],
            None,
        ));
        nodes.push(node(
            "DequantizeLinear",
            self.names.fresh(&format!("{x}/DequantizeLinear")),
            vec![quantized, scale, zp],
            vec![dq.clone()],
            None,
        ));
        self.dq_of.insert(x.into(), dq.clone());
        dq
    }

    /// `raw → Q → DQ → output`: a convolution's float result requantized so that ONNX Runtime sees
    /// `DQ → Conv → Q`; `output` keeps its name for every consumer and counts as already dequantized.
    fn requantize(&mut self, raw: &str, output: &str, q: QParams, nodes: &mut Vec<NodeProto>) {
        let (scale, zp) = self.scalar_params(output, q);
        let quantized = self.names.fresh(&format!("{output}/int8"));
        nodes.push(node(
            "QuantizeLinear",
            self.names.fresh(&format!("{output}/QuantizeLinear")),
            vec![raw.into(), scale.clone(), zp.clone()],
            vec![quantized.clone()],
            None,
        ));
        nodes.push(node(
            "DequantizeLinear",
            self.names.fresh(&format!("{output}/DequantizeLinear")),
            vec![quantized, scale, zp],
            vec![output.into()],
            None,
        ));
        self.dq_of.insert(output.into(), output.into());
    }

    /// The candidate's weight as int8 + `DequantizeLinear` (per output channel: axis 0 of a Conv weight, axis 1 of
    /// a MatMul's `[in, out]`); returns the dequantized name and the scales.
    fn weight(
        &mut self,
        graph: &GraphProto,
        c: &Candidate,
        per_channel: bool,
        nodes: &mut Vec<NodeProto>,
    ) -> Result<(String, Vec<f32>)> {
        let init = &c.weight.initializer;
        let Int8Weight { values: q, dims, scales, axis } = int8_weight(graph, c, per_channel)?;
        let qname = self.names.fresh(&format!("{init}/int8"));
        let sname = self.names.fresh(&format!("{init}/scale"));
        let zname = self.names.fresh(&format!("{init}/zero_point"));
        let dq = self.names.fresh(&format!("{init}/dequantized"));
        self.inits.push(i8_tensor(&qname, &dims, &q));
        let scale_dims: Vec<usize> = if per_channel { vec![scales.len()] } else { vec![] };
        self.inits.push(f32_tensor(&sname, &scale_dims, &scales));
        self.inits.push(i8_tensor(&zname, &scale_dims, &vec![0; scales.len()]));
        let axis_attr = per_channel.then_some(axis as i64);
        nodes.push(node(
            "DequantizeLinear",
            self.names.fresh(&format!("{init}/DequantizeLinear")),
            vec![qname, sname, zname],
            vec![dq.clone()],
            axis_attr,
        ));
        Ok((dq, scales))
    }

    /// A Conv bias as int32 on scale `input_scale · weight_scale` + `DequantizeLinear`.
    fn bias(
        &mut self,
        graph: &GraphProto,
        name: &str,
        input_scale: f32,
        w_scales: &[f32],
        nodes: &mut Vec<NodeProto>,
    ) -> Result<String> {
        let (values, _) = weight_values(graph, name)
            .ok_or_else(|| Error::Graph(format!("bias '{name}' is not a float initializer")))?;
        let scales: Vec<f32> =
            if w_scales.len() == values.len() { w_scales.to_vec() } else { vec![w_scales[0]; values.len()] };
        let (q, s) = quantize_bias(&values, input_scale, &scales);
        let qname = self.names.fresh(&format!("{name}/int32"));
        let sname = self.names.fresh(&format!("{name}/scale"));
        let zname = self.names.fresh(&format!("{name}/zero_point"));
        let dq = self.names.fresh(&format!("{name}/dequantized"));
        self.inits.push(i32_tensor(&qname, &[q.len()], &q));
        self.inits.push(f32_tensor(&sname, &[s.len()], &s));
        self.inits.push(i32_tensor(&zname, &[s.len()], &vec![0; s.len()]));
        nodes.push(node(
            "DequantizeLinear",
            self.names.fresh(&format!("{name}/DequantizeLinear")),
            vec![qname, sname, zname],
            vec![dq.clone()],
            Some(0),
        ));
        Ok(dq)
    }
}

/// Gives each quantized MatMul's bias `Add` (a 1-D constant) the activation's rank.
fn reshape_biases(graph: &mut GraphProto, matmul_outputs: &HashMap<String, usize>, pass: &mut Pass) {
    let consts: HashMap<String, usize> =
        graph.initializer.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
    for n in graph.node.iter_mut().filter(|n| n.op_type == "Add" && n.input.len() == 2) {
        let (Some(&rank), Some(&bias)) = (matmul_outputs.get(&n.input[0]), consts.get(&n.input[1])) else { continue };
        let t = &graph.initializer[bias];
        if t.dims.len() != 1 {
            continue;
        }
        let mut reshaped = t.clone();
        reshaped.name = pass.names.fresh(&format!("{}/rank{rank}", t.name));
        reshaped.dims = std::iter::repeat_n(1, rank - 1).chain([t.dims[0]]).collect();
        n.input[1] = reshaped.name.clone();
        pass.inits.push(reshaped);
    }
}
