//! Which nodes of a float graph can be quantized, by op family, and what calibration must observe for them.

use std::collections::{BTreeSet, HashMap};

use onnx_protobuf::{GraphProto, ModelProto};
use serde::{Deserialize, Serialize};

use super::graph_edit::{dims_usize, float_values, int_attr, ints_attr, producers};

/// The op families kiln quantizes. Everything else (LayerNorm, GELU, softmax, residual additions, box decoding,
/// the LSTM, per-frame scores) stays in float.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpFamily {
    /// `MatMul` with a constant weight on activations of rank ≥ 3 (ConvNeXt's pointwise MLPs in channels-last).
    Linear,
    /// Dense `Conv` (group 1) with a constant weight: stems, downsampling, FPN and head convolutions.
    Conv,
    /// Depthwise `Conv` (one group per channel).
    Depthwise,
}

impl OpFamily {
    pub const ALL: [OpFamily; 3] = [OpFamily::Linear, OpFamily::Conv, OpFamily::Depthwise];

    pub fn name(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::Conv => "conv",
            Self::Depthwise => "depthwise",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("'{s}': expected linear, conv or depthwise"))
    }

    /// `linear,conv` style lists.
    pub fn parse_list(s: &str) -> Result<BTreeSet<Self>, String> {
        s.split(',').map(|p| Self::parse(p.trim())).collect()
    }
}

/// A node's constant weight: the initializer and whether the graph transposes it first (`Transpose(W)` then
/// `MatMul`, as kiln writes linear layers with PyTorch's `[out, in]` weights).
#[derive(Clone, Debug, PartialEq)]
pub struct WeightSource {
    pub initializer: String,
    pub transposed: bool,
}

/// One quantizable node.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub node: usize,
    pub family: OpFamily,
    pub weight: WeightSource,
    /// The activation input to quantize.
    pub input: String,
    /// For convolutions, the output too (QLinearConv writes int8).
    pub output: Option<String>,
}

/// The quantizable nodes of `families`, in graph order. Linear layers are listed whatever the rank of their input;
/// the static pass keeps those on rank-2 inputs in float (see `qdq`).
pub fn candidates(model: &ModelProto, families: &BTreeSet<OpFamily>) -> Vec<Candidate> {
    let graph = &model.graph;
    let inits: HashMap<&str, usize> = graph.initializer.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
    let made_by = producers(graph);
    let mut out = Vec::new();
    for (i, n) in graph.node.iter().enumerate() {
        let is_const = |name: &str| inits.contains_key(name);
        match n.op_type.as_str() {
            "MatMul" if families.contains(&OpFamily::Linear) && n.input.len() == 2 && !is_const(&n.input[0]) => {
                if let Some(weight) = matmul_weight(graph, &inits, &made_by, &n.input[1]) {
                    out.push(Candidate {
                        node: i,
                        family: OpFamily::Linear,
                        weight,
                        input: n.input[0].clone(),
                        output: None,
                    });
                }
            }
            "Conv" if n.input.len() >= 2 && is_const(&n.input[1]) && !is_const(&n.input[0]) => {
                let w = &graph.initializer[inits[n.input[1].as_str()]];
                if w.dims.len() != 4 || float_values(w).is_none() {
                    continue;
                }
                if n.input.len() == 3 && !is_const(&n.input[2]) {
                    continue;
                }
                let group = int_attr(n, "group", 1);
                let family = if group == 1 {
                    OpFamily::Conv
                } else if group == w.dims[0] && w.dims[1] == 1 {
                    OpFamily::Depthwise
                } else {
                    continue;
                };
                if families.contains(&family) {
                    out.push(Candidate {
                        node: i,
                        family,
                        weight: WeightSource { initializer: n.input[1].clone(), transposed: false },
                        input: n.input[0].clone(),
                        output: Some(n.output[0].clone()),
                    });
                }
            }
            _ => {}
        }
    }
    out
}

fn matmul_weight(
    graph: &GraphProto,
    inits: &HashMap<&str, usize>,
    made_by: &HashMap<String, usize>,
    b: &str,
) -> Option<WeightSource> {
    let two_d_float = |name: &str| {
        inits
            .get(name)
            .map(|&i| &graph.initializer[i])
            .filter(|t| t.dims.len() == 2 && float_values(t).is_some())
            .is_some()
    };
    if two_d_float(b) {
        return Some(WeightSource { initializer: b.into(), transposed: false });
    }
    let t = &graph.node[*made_by.get(b)?];
    let swaps = ints_attr(t, "perm").is_none_or(|p| p == [1, 0]);
    (t.op_type == "Transpose" && swaps && two_d_float(&t.input[0]))
        .then(|| WeightSource { initializer: t.input[0].clone(), transposed: true })
}

/// The tensors calibration must observe for `families`: each candidate's activation input and, for convolutions,
/// its output. Sorted, without repeats.
pub fn observation_points(model: &ModelProto, families: &BTreeSet<OpFamily>) -> Vec<String> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    for c in candidates(model, families) {
        names.insert(c.input);
        names.extend(c.output);
    }
    names.into_iter().collect()
}

/// `model` with `names` added as float graph outputs (shape left free), so that a runtime returns them.
pub fn with_observed_outputs(model: &ModelProto, names: &[String]) -> ModelProto {
    use onnx_protobuf::{type_proto, TypeProto, ValueInfoProto};
    let mut m = model.clone();
    let graph = m.graph.mut_or_insert_default();
    let existing: BTreeSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    for name in names.iter().filter(|n| !existing.contains(*n)) {
        let mut tensor = type_proto::Tensor::new();
        tensor.elem_type = onnx_protobuf::tensor_proto::DataType::FLOAT as i32;
        let mut ty = TypeProto::new();
        ty.value = Some(type_proto::Value::TensorType(tensor));
        let mut info = ValueInfoProto::new();
        info.name = name.clone();
        info.type_ = Some(ty).into();
        graph.output.push(info);
    }
    m
}

/// Nodes whose output reaches a graph output without passing another weighted layer (`Conv`, `MatMul`, `Gemm`,
/// `LSTM`): the last layers, whose results are the model's predictions (class scores, box offsets,
/// centerness). Returns node index → the output it reaches.
pub fn last_layers(model: &ModelProto) -> HashMap<usize, String> {
    let graph = &model.graph;
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for input in &n.input {
            readers.entry(input.as_str()).or_default().push(i);
        }
    }
    let outputs: BTreeSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let weighted = |op: &str| matches!(op, "Conv" | "MatMul" | "Gemm" | "LSTM");
    let mut last = HashMap::new();
    for (i, n) in graph.node.iter().enumerate().filter(|(_, n)| weighted(&n.op_type)) {
        let mut stack: Vec<&str> = n.output.iter().map(String::as_str).collect();
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        while let Some(t) = stack.pop() {
            if !seen.insert(t) {
                continue;
            }
            if outputs.contains(t) {
                last.insert(i, t.to_string());
                break;
            }
            for &r in readers.get(t).map(Vec::as_slice).unwrap_or_default() {
                if !weighted(&graph.node[r].op_type) {
                    stack.extend(graph.node[r].output.iter().map(String::as_str));
                }
            }
        }
    }
    last
}

/// A candidate's weight quantized to int8 as stored in the rewritten graph: MatMul weights as `[in, out]` (kiln's
/// `Transpose(W)` folded), one symmetric scale per output channel (axis 0 of a Conv, axis 1 of a MatMul) or one per
/// tensor.
pub(crate) struct Int8Weight {
    pub values: Vec<i8>,
    pub dims: Vec<usize>,
    pub scales: Vec<f32>,
    /// The output-channel axis the scales run along.
    pub axis: usize,
}

pub(crate) fn int8_weight(graph: &GraphProto, c: &Candidate, per_channel: bool) -> crate::Result<Int8Weight> {
    let init = &c.weight.initializer;
    let (mut values, mut dims) = weight_values(graph, init)
        .ok_or_else(|| crate::Error::Graph(format!("weight '{init}' is not a float initializer")))?;
    if c.weight.transposed {
        let (rows, cols) = (dims[0], dims[1]);
        let stored = std::mem::take(&mut values);
        values = (0..cols).flat_map(|j| (0..rows).map(move |i| (i, j))).map(|(i, j)| stored[i * cols + j]).collect();
        dims = vec![cols, rows];
    }
    let axis = if c.family == OpFamily::Linear { 1 } else { 0 };
    let (q, scales) = if per_channel {
        super::params::quantize_per_channel(&values, &dims, axis)
    } else {
        super::params::quantize_per_channel(&values, &[1, values.len()], 0)
    };
    Ok(Int8Weight { values: q, dims, scales, axis })
}

/// A float initializer's values and dimensions.
pub(crate) fn weight_values(graph: &GraphProto, name: &str) -> Option<(Vec<f32>, Vec<usize>)> {
    let t = graph.initializer.iter().find(|t| t.name == name)?;
    Some((float_values(t)?, dims_usize(t)))
}
