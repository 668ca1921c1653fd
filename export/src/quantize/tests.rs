//! The passes on a small graph shaped like kiln's: a dense conv, a depthwise conv, a channels-last linear layer
//! with a transposed weight and a bias, and a rank-2 head. (Numerics on real runtimes: tests/int8.rs.)

use std::collections::{BTreeSet, HashMap};

use onnx_protobuf::{tensor_proto::DataType, ModelProto};

use super::*;
use crate::graph::{Attr, Dim, ElemType, Graph};

fn conv(g: &mut Graph, x: &crate::Value, name: &str, cin: i64, cout: i64, group: i64) -> crate::Value {
    let w = g
        .weight(&format!("{name}.weight"), &[cout, cin / group, 3, 3], &vec![0.1; (cout * cin / group * 9) as usize])
        .unwrap();
    let b = g.weight(&format!("{name}.bias"), &[cout], &vec![0.01; cout as usize]).unwrap();
    g.scoped(name, |g| {
        g.op(
            "Conv",
            &[x, &w, &b],
            vec![
                Attr::Ints("kernel_shape", vec![3, 3]),
                Attr::Ints("pads", vec![1, 1, 1, 1]),
                Attr::Int("group", group),
            ],
        )
    })
    .unwrap()
}

fn linear(g: &mut Graph, x: &crate::Value, name: &str, cin: i64, cout: i64) -> crate::Value {
    let values: Vec<f32> = (0..cin * cout).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
    let w = g.weight(&format!("{name}.weight"), &[cout, cin], &values).unwrap();
    let b = g.weight(&format!("{name}.bias"), &[cout], &vec![0.5; cout as usize]).unwrap();
    g.scoped(name, |g| {
        let wt = g.op("Transpose", &[&w], vec![Attr::Ints("perm", vec![1, 0])])?;
        let y = g.op("MatMul", &[x, &wt], vec![])?;
        g.op("Add", &[&y, &b], vec![])
    })
    .unwrap()
}

/// `[1, 3, 8, 8]` → conv 3→8 → depthwise 8 → NHWC → linear 8→16 → mean over H, W → linear head 16→4.
fn small_model() -> ModelProto {
    let mut g = Graph::new(17, ElemType::F32).unwrap();
    let x = g.input("images", ElemType::F32, &[Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(8), Dim::Fixed(8)]).unwrap();
    let y = conv(&mut g, &x, "stem", 3, 8, 1);
    let y = conv(&mut g, &y, "dw", 8, 8, 8);
    let y = g.op("Transpose", &[&y], vec![Attr::Ints("perm", vec![0, 2, 3, 1])]).unwrap();
    let y = linear(&mut g, &y, "fc", 8, 16);
    let y = g.op("ReduceMean", &[&y], vec![Attr::Ints("axes", vec![1, 2]), Attr::Int("keepdims", 0)]).unwrap();
    let y = linear(&mut g, &y, "head", 16, 4);
    g.output(&y, "logits", ElemType::F32, &[Dim::Fixed(1), Dim::Fixed(4)]).unwrap();
    g.into_model("small", &[])
}

fn all() -> BTreeSet<OpFamily> {
    OpFamily::ALL.into_iter().collect()
}

/// Statistics as calibration would record them: a range and each tensor's rank.
fn stats_for(model: &ModelProto) -> HashMap<String, TensorStats> {
    let ranks: HashMap<&str, usize> =
        [("images", 4), ("stem/Conv", 4), ("dw/Conv", 4), ("Transpose", 4), ("ReduceMean", 2)].into_iter().collect();
    observation_points(model, &all())
        .into_iter()
        .map(|name| {
            let mut s = TensorStats::default();
            s.observe(&[-1.0, 0.5, 2.0], ranks[name.as_str()]);
            (name, s)
        })
        .collect()
}

fn count(model: &ModelProto, op: &str) -> usize {
    model.graph.node.iter().filter(|n| n.op_type == op).count()
}

#[test]
fn candidates_by_family_and_what_calibration_observes() {
    let m = small_model();
    let found: Vec<(OpFamily, String)> =
        candidates(&m, &all()).into_iter().map(|c| (c.family, c.weight.initializer)).collect();
    assert_eq!(
        found,
        [
            (OpFamily::Conv, "stem.weight".to_string()),
            (OpFamily::Depthwise, "dw.weight".into()),
            (OpFamily::Linear, "fc.weight".into()),
            (OpFamily::Linear, "head.weight".into()),
        ]
    );
    assert!(candidates(&m, &[OpFamily::Linear].into()).iter().all(|c| c.family == OpFamily::Linear));
    assert_eq!(observation_points(&m, &all()), ["ReduceMean", "Transpose", "dw/Conv", "images", "stem/Conv"]);
    let observed = with_observed_outputs(&m, &observation_points(&m, &all()));
    assert_eq!(observed.graph.output.len(), 6, "logits and the five observed tensors");
}

#[test]
fn static_quantization_writes_qdq_around_the_chosen_nodes() {
    let m = small_model();
    let options = StaticOptions { families: all(), method: CalibMethod::MinMax, per_channel: true };
    let (q, summary) = quantize_static(&m, &stats_for(&m), &options).unwrap();
    assert_eq!(summary.quantized, [("conv".into(), 1), ("depthwise".into(), 1), ("linear".into(), 1)].into());
    assert_eq!(summary.kept_float.len(), 1);
    assert!(summary.kept_float[0].0.starts_with("head") && summary.kept_float[0].1.contains("rank-2"), "{summary:?}");
    // Inputs: images, stem out (shared by the dw conv's input), dw out, the NHWC activation.
    // Q: images, stem out, dw out, Transpose (fc input) = 4; DQ: those 4 + 3 weights + 2 conv biases = 9.
    assert_eq!(count(&q, "QuantizeLinear"), 4);
    assert_eq!(count(&q, "DequantizeLinear"), 9);
    let init = |name: &str| q.graph.initializer.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("{name}"));
    assert_eq!(init("stem.weight/int8").data_type, DataType::INT8 as i32);
    assert_eq!(init("stem.weight/scale").dims, [8], "per output channel");
    assert_eq!(init("fc.weight/int8").dims, [8, 16], "stored as MatMul's [in, out]");
    assert_eq!(init("stem.bias/int32").data_type, DataType::INT32 as i32);
    assert_eq!(init("fc.bias/rank4").dims, [1, 1, 1, 16], "the bias keeps ONNX Runtime from a float Gemm");
    // The float weights of quantized nodes are gone; the head's stay.
    assert!(q.graph.initializer.iter().all(|t| t.name != "fc.weight" && t.name != "stem.weight"));
    assert!(q.graph.initializer.iter().any(|t| t.name == "head.weight"));
    assert_eq!(count(&q, "Transpose"), 2, "the activation's and the head's weight transposes remain");
    graph_edit::check_order(&q.graph).unwrap();
}

#[test]
fn a_convolution_that_makes_an_output_stays_float() {
    // images -> conv -> conv -> scores: the second conv's result is the output.
    let mut g = Graph::new(17, ElemType::F32).unwrap();
    let x = g.input("images", ElemType::F32, &[Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(8), Dim::Fixed(8)]).unwrap();
    let y = conv(&mut g, &x, "stem", 3, 8, 1);
    let y = conv(&mut g, &y, "pred", 8, 4, 1);
    let y = g.op("Sigmoid", &[&y], vec![]).unwrap();
    g.output(&y, "scores", ElemType::F32, &[Dim::Fixed(1), Dim::Fixed(4), Dim::Fixed(8), Dim::Fixed(8)]).unwrap();
    let m = g.into_model("det", &[]);
    assert_eq!(plan::last_layers(&m).into_values().collect::<Vec<_>>(), ["scores"]);
    let stats: HashMap<String, TensorStats> = observation_points(&m, &all())
        .into_iter()
        .map(|n| {
            let mut s = TensorStats::default();
            s.observe(&[-1.0, 2.0], 4);
            (n, s)
        })
        .collect();
    let options = StaticOptions { families: all(), method: CalibMethod::MinMax, per_channel: true };
    let (_, summary) = quantize_static(&m, &stats, &options).unwrap();
    assert_eq!(summary.quantized, [("conv".into(), 1)].into());
    assert_eq!(summary.kept_float.len(), 1);
    assert!(summary.kept_float[0].0.starts_with("pred") && summary.kept_float[0].1.contains("'scores'"));
}

#[test]
fn per_tensor_weights_have_scalar_scales() {
    let m = small_model();
    let options = StaticOptions { families: [OpFamily::Conv].into(), method: CalibMethod::MinMax, per_channel: false };
    let (q, summary) = quantize_static(&m, &stats_for(&m), &options).unwrap();
    assert_eq!(summary.quantized, [("conv".into(), 1)].into());
    let scale = q.graph.initializer.iter().find(|t| t.name == "stem.weight/scale").unwrap();
    assert!(scale.dims.is_empty());
    let dq = q.graph.node.iter().find(|n| n.input[0] == "stem.weight/int8").unwrap();
    assert!(dq.attribute.is_empty(), "no axis for a per-tensor scale");
}

#[test]
fn a_tensor_without_statistics_is_named() {
    let m = small_model();
    let mut stats = stats_for(&m);
    stats.remove("dw/Conv");
    let options = StaticOptions { families: all(), method: CalibMethod::MinMax, per_channel: true };
    let err = quantize_static(&m, &stats, &options).unwrap_err().to_string();
    assert!(err.contains("dw/Conv"), "{err}");
}

#[test]
fn dynamic_quantization_rewrites_every_linear_layer() {
    let m = small_model();
    let (q, summary) = quantize_dynamic(&m, true).unwrap();
    assert_eq!(summary.quantized, [("linear".into(), 2)].into());
    assert_eq!(count(&q, "DynamicQuantizeLinear"), 2);
    assert_eq!(count(&q, "MatMulInteger"), 2);
    assert_eq!(count(&q, "MatMul"), 0);
    assert_eq!(count(&q, "Conv"), 2, "convolutions stay float");
    assert!(q
        .graph
        .node
        .iter()
        .any(|n| n.output.contains(&"logits".to_string()) || n.input.contains(&"head/Add".to_string())));
    graph_edit::check_order(&q.graph).unwrap();
}
