//! Dynamic int8: weights int8 ahead of time, each activation quantized at run time from its own range
//! (`DynamicQuantizeLinear`), no calibration. Only linear layers are rewritten, as
//! `DynamicQuantizeLinear → MatMulInteger → Cast → Mul(x_scale · w_scale)`, the pattern ONNX Runtime fuses into
//! `DynamicQuantizeMatMul`; all of these are standard ONNX operators. Convolutions and the LSTM stay float.

use std::collections::{BTreeSet, HashMap};

use onnx_protobuf::{GraphProto, ModelProto, NodeProto, TensorProto};

use super::graph_edit::{check_order, f32_tensor, i8_tensor, int_node, node, prune, Names};
use super::plan::{candidates, int8_weight, Int8Weight, OpFamily};
use super::qdq::QuantSummary;
use crate::Result;

/// ONNX's data type number for float32 (Cast's `to`).
const FLOAT: i64 = 1;

/// Rewrites every linear layer of `model` (a `MatMul` with a constant weight) for dynamic int8.
pub fn quantize_dynamic(model: &ModelProto, per_channel: bool) -> Result<(ModelProto, QuantSummary)> {
    let mut graph: GraphProto = (*model.graph).clone();
    let mut names = Names::of(&model.graph);
    let mut inits: Vec<TensorProto> = Vec::new();
    let mut replace: HashMap<usize, Vec<NodeProto>> = HashMap::new();
    let mut summary = QuantSummary::default();
    for c in candidates(model, &BTreeSet::from([OpFamily::Linear])) {
        let n = &model.graph.node[c.node];
        let Int8Weight { values: q, dims, scales, .. } = int8_weight(&model.graph, &c, per_channel)?;
        let scale_dims: Vec<usize> = if per_channel { vec![scales.len()] } else { vec![] };
        let fresh = |names: &mut Names, what: &str| names.fresh(&format!("{}/{what}", n.name));
        let (wq, ws, wz) = (
            fresh(&mut names, "weight_int8"),
            fresh(&mut names, "weight_scale"),
            fresh(&mut names, "weight_zero_point"),
        );
        inits.push(i8_tensor(&wq, &dims, &q));
        inits.push(f32_tensor(&ws, &scale_dims, &scales));
        inits.push(i8_tensor(&wz, &scale_dims, &vec![0; scales.len()]));
        let (xq, xs, xz) =
            (fresh(&mut names, "x_int8"), fresh(&mut names, "x_scale"), fresh(&mut names, "x_zero_point"));
        let (acc, accf, mult) =
            (fresh(&mut names, "acc_int32"), fresh(&mut names, "acc_float"), fresh(&mut names, "scale"));
        let nodes = vec![
            node(
                "DynamicQuantizeLinear",
                fresh(&mut names, "DynamicQuantizeLinear"),
                vec![c.input.clone()],
                vec![xq.clone(), xs.clone(), xz.clone()],
                None,
            ),
            node("MatMulInteger", fresh(&mut names, "MatMulInteger"), vec![xq, wq, xz, wz], vec![acc.clone()], None),
            int_node("Cast", fresh(&mut names, "Cast"), vec![acc], vec![accf.clone()], ("to", FLOAT)),
            node("Mul", fresh(&mut names, "ScaleProduct"), vec![xs, ws], vec![mult.clone()], None),
            node("Mul", fresh(&mut names, "Rescale"), vec![accf, mult], vec![n.output[0].clone()], None),
        ];
        replace.insert(c.node, nodes);
        *summary.quantized.entry(OpFamily::Linear.name().to_string()).or_default() += 1;
    }
    let mut nodes = Vec::new();
    for (i, n) in std::mem::take(&mut graph.node).into_iter().enumerate() {
        match replace.remove(&i) {
            Some(r) => nodes.extend(r),
            None => nodes.push(n),
        }
    }
    graph.node = nodes;
    graph.initializer.extend(inits);
    prune(&mut graph);
    check_order(&graph)?;
    let mut out = ModelProto::new();
    out.clone_from(model);
    out.graph = Some(graph).into();
    Ok((out, summary))
}
