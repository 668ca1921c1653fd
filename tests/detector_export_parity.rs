//! The FCOS detector's ONNX export against libtorch: the graph (backbone, FPN, head and decoding), run by ONNX
//! Runtime (CPU, full graph optimisation) and by tract (`into_optimized`), gives the boxes and scores
//! `ObjectDetector::decode` gives, at fixed batch 1 and dynamic batch 2, at opsets 13, 17 and 21, using only a
//! small set of operators; an fp16 graph stays within 2 pixels and 1e-2 on scores. Every box activation (ReLU,
//! Softplus, exp) exports to the function libtorch computes.
//!
//! Tolerances: scores within 1e-4 absolute; boxes, in pixels up to 128, within 1e-4 · max(1, |value|) (fp32
//! carries about 7 digits, so 1e-4 absolute on values near 100 would test rounding, not the graph).

mod common;

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};

use kiln_export::{Attr, Dim, ElemType, Graph};
use kiln_models::{BoxActivation, DetectorConfig, ObjectDetector};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use tch::nn;
use tch::{Device, Kind, Tensor};
use tract_onnx::prelude::*;

const SIZE: i64 = 128;
const CLASSES: i64 = 3;
/// ONNX's element type codes, for Cast.
const ONNX_FLOAT: i64 = 1;
const ONNX_FLOAT16: i64 = 10;

/// The operators a detector graph may contain (MatMul: the linear blocks of convnext_tiny and larger).
const ALLOWED_OPS: [&str; 24] = [
    "Add",
    "Cast",
    "Concat",
    "Conv",
    "Div",
    "Erf",
    "Exp",
    "Identity",
    "LayerNormalization",
    "MatMul",
    "Max",
    "Min",
    "Mul",
    "ReduceMean",
    "Relu",
    "Reshape",
    "Resize",
    "Shape",
    "Sigmoid",
    "Softplus",
    "Sqrt",
    "Sub",
    "Transpose",
    "Unsqueeze",
];

/// Boxes and scores of one run, flattened.
struct Decoded {
    boxes: Vec<f32>,
    scores: Vec<f32>,
}

fn ort_env() -> &'static ort::environment::Environment {
    static ENV: OnceLock<ort::environment::Environment> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = std::env::var("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH (set by make) points at ONNX Runtime");
        ort::init_from(path).unwrap().build().unwrap()
    })
}

fn run_ort(bytes: &[u8], input: &[f32], shape: [usize; 4]) -> Decoded {
    let mut session = Session::builder(ort_env())
        .unwrap()
        .with_optimization_level(GraphOptimizationLevel::All)
        .unwrap()
        .commit_from_memory(bytes)
        .unwrap();
    let tensor = ort::value::Tensor::from_array((shape, input.to_vec())).unwrap();
    let outputs = session.run(ort::inputs!["images" => tensor]).unwrap();
    let get = |name: &str| outputs[name].try_extract_tensor::<f32>().unwrap().1.to_vec();
    Decoded { boxes: get("boxes"), scores: get("scores") }
}

fn run_tract(bytes: &[u8], input: &[f32], shape: [usize; 4]) -> Decoded {
    let model = tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(bytes))
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let tensor = tract_onnx::prelude::Tensor::from_shape(&shape, input).unwrap();
    let out = model.run(tvec!(tensor.into())).unwrap();
    let get = |i: usize| out[i].to_plain_array_view::<f32>().unwrap().iter().copied().collect();
    Decoded { boxes: get(0), scores: get(1) }
}

/// libtorch's generator is global and tests run on parallel threads: seeding and drawing hold this lock, so
/// every test sees the same weights and inputs.
static RNG: Mutex<()> = Mutex::new(());

/// A random convnext_atto detector whose every layer matters: layer scales at 0.5 and the head's weights
/// re-drawn wider than FCOS's std-0.01 init, so that boxes and scores vary across locations.
fn detector(vs: &nn::VarStore) -> ObjectDetector {
    detector_with(vs, BoxActivation::Relu)
}

fn detector_with(vs: &nn::VarStore, activation: BoxActivation) -> ObjectDetector {
    let _rng = RNG.lock().unwrap();
    tch::manual_seed(11);
    let config = DetectorConfig::new("convnext_atto", CLASSES).with_box_activation(activation);
    let model = ObjectDetector::new(&vs.root(), &config).unwrap();
    tch::no_grad(|| {
        let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut t) in variables {
            if name.ends_with("gamma") {
                let _ = t.fill_(0.5);
            } else if name.starts_with("head.") {
                let noise = t.randn_like();
                match (name.ends_with("weight"), t.dim()) {
                    (true, 1) => t.copy_(&(noise * 0.2 + 1.0)),
                    (true, _) => t.copy_(&(noise * 0.05)),
                    (false, _) => t.copy_(&(&t + noise * 0.1)),
                }
            }
        }
    });
    model
}

/// The model's graph with float32 inputs and outputs, computing in `compute` (fp16 through Cast nodes, as the
/// classifier's export does).
fn onnx_bytes_in(model: &ObjectDetector, opset: i64, batch: Dim, compute: ElemType) -> Vec<u8> {
    let mut g = Graph::new(opset, compute).unwrap();
    let dims = [batch.clone(), Dim::Fixed(3), Dim::Fixed(SIZE), Dim::Fixed(SIZE)];
    let images = g.input("images", ElemType::F32, &dims).unwrap();
    let half = compute == ElemType::F16;
    let cast = |g: &mut Graph, x: &kiln_export::Value, to: i64| g.op("Cast", &[x], vec![Attr::Int("to", to)]).unwrap();
    let images = if half { cast(&mut g, &images, ONNX_FLOAT16) } else { images };
    let (boxes, scores) = model.emit(&mut g, &images, SIZE, SIZE).unwrap();
    let (boxes, scores) =
        if half { (cast(&mut g, &boxes, ONNX_FLOAT), cast(&mut g, &scores, ONNX_FLOAT)) } else { (boxes, scores) };
    let a = model.num_locations(SIZE, SIZE);
    g.output(&boxes, "boxes", ElemType::F32, &[batch.clone(), Dim::Fixed(a), Dim::Fixed(4)]).unwrap();
    g.output(&scores, "scores", ElemType::F32, &[batch, Dim::Fixed(a), Dim::Fixed(CLASSES)]).unwrap();
    kiln_export::to_bytes(&g.into_model("fcos_convnext_atto", &[])).unwrap()
}

fn onnx_bytes(model: &ObjectDetector, opset: i64, batch: Dim) -> Vec<u8> {
    onnx_bytes_in(model, opset, batch, ElemType::F32)
}

fn libtorch(model: &ObjectDetector, input: &[f32], batch: usize) -> Decoded {
    let xs = Tensor::from_slice(input).view([batch as i64, 3, SIZE, SIZE]);
    let (boxes, scores) = tch::no_grad(|| {
        let outputs = model.forward_t(&xs, false);
        model.decode(&outputs, &model.locations(SIZE, SIZE))
    });
    let flat = |t: Tensor| Vec::try_from(t.flatten(0, -1)).unwrap();
    Decoded { boxes: flat(boxes), scores: flat(scores) }
}

/// (max |a − b|, max |a − b| / max(1, |a|)), failing on NaN and on a length mismatch.
fn diffs(expected: &[f32], got: &[f32]) -> (f32, f32) {
    (common::max_abs_diff(expected, got), common::max_rel_diff(expected, got))
}

fn random_input(batch: usize, seed: i64) -> Vec<f32> {
    let _rng = RNG.lock().unwrap();
    tch::manual_seed(seed);
    Vec::try_from(Tensor::randn([batch as i64 * 3 * SIZE * SIZE], (Kind::Float, Device::Cpu))).unwrap()
}

/// How close boxes must be.
#[derive(Clone, Copy)]
enum BoxTolerance {
    /// |diff| ≤ this · max(1, |value|).
    Relative(f32),
    /// |diff| ≤ this many pixels.
    Pixels(f32),
}

/// Runs `bytes` on both runtimes against libtorch; boxes must agree within `boxes`, scores within `scores`.
fn check(label: &str, model: &ObjectDetector, bytes: &[u8], batch: usize, boxes: BoxTolerance, scores: f32) {
    let input = random_input(batch, 5);
    let shape = [batch, 3, SIZE as usize, SIZE as usize];
    let expected = libtorch(model, &input, batch);
    let spread = |v: &[f32]| v.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let (lo, hi) = spread(&expected.scores);
    assert!(hi - lo > 0.05, "{label}: scores span only [{lo}, {hi}], the test would see little");
    let inside = expected.boxes.iter().filter(|&&v| v > 0.0 && v < SIZE as f32).count();
    assert!(2 * inside > expected.boxes.len(), "{label}: most box edges are clamped, the test would see little");
    for (runtime, out) in [("ort", run_ort(bytes, &input, shape)), ("tract", run_tract(bytes, &input, shape))] {
        let (box_abs, box_rel) = diffs(&expected.boxes, &out.boxes);
        let (score_abs, _) = diffs(&expected.scores, &out.scores);
        eprintln!(
            "{label} on {runtime}: boxes max |diff| {box_abs:.2e} (relative {box_rel:.2e}), scores {score_abs:.2e}"
        );
        let within = match boxes {
            BoxTolerance::Relative(tolerance) => box_rel <= tolerance,
            BoxTolerance::Pixels(tolerance) => box_abs <= tolerance,
        };
        assert!(within, "{label} on {runtime}: boxes differ by {box_abs:e} ({box_rel:e} relative)");
        assert!(score_abs <= scores, "{label} on {runtime}: scores differ by {score_abs:e}");
    }
}

#[test]
fn the_exported_detector_matches_libtorch_on_ort_and_tract() {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = detector(&vs);
    let fixed = onnx_bytes(&model, 17, Dim::Fixed(1));
    check("opset 17 batch 1", &model, &fixed, 1, BoxTolerance::Relative(1e-4), 1e-4);
    for opset in [13, 17, 21] {
        let dynamic = onnx_bytes(&model, opset, Dim::Symbolic("batch".into()));
        let label = format!("opset {opset} dynamic batch 2");
        check(&label, &model, &dynamic, 2, BoxTolerance::Relative(1e-4), 1e-4);
    }
}

#[test]
fn softplus_and_exp_box_regressions_export_to_what_libtorch_computes() {
    for activation in [BoxActivation::Softplus, BoxActivation::Exp] {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = detector_with(&vs, activation);
        let bytes = onnx_bytes(&model, 17, Dim::Symbolic("batch".into()));
        let onnx = kiln_export::from_bytes(&bytes).unwrap();
        let op = if activation == BoxActivation::Exp { "Exp" } else { "Softplus" };
        let count = onnx.graph.node.iter().filter(|n| n.op_type == op).count();
        assert_eq!(count, 3, "{activation:?}: one {op} per pyramid level");
        // exp turns its input's absolute error (the head's convolutions, summed in another order by each
        // runtime) into a relative error of the distance: measured 1.5e-4 on ORT, so exp gets 5e-4.
        let boxes = BoxTolerance::Relative(if activation == BoxActivation::Exp { 5e-4 } else { 1e-4 });
        check(&format!("{activation:?} dynamic batch 2"), &model, &bytes, 2, boxes, 1e-4);
    }
}

#[test]
fn a_half_precision_export_stays_close() {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = detector(&vs);
    let bytes = onnx_bytes_in(&model, 17, Dim::Symbolic("batch".into()), ElemType::F16);
    // fp16 keeps 11 bits, so a box edge near 100 px moves by up to 0.06 px from its own rounding alone, and a
    // distance error is multiplied by its level's stride (32 on P5). Measured: ORT 0.08 px and 4e-4 on scores;
    // tract, which also accumulates in fp16, 0.85 px and 4e-3.
    check("fp16 dynamic batch 2", &model, &bytes, 2, BoxTolerance::Pixels(2.0), 1e-2);
}

#[test]
fn the_graph_uses_only_the_allowed_operators_and_names_its_weights_by_parameter() {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = detector(&vs);
    for opset in [13, 17, 21] {
        let onnx = kiln_export::from_bytes(&onnx_bytes(&model, opset, Dim::Symbolic("batch".into()))).unwrap();
        let ops: BTreeSet<&str> = onnx.graph.node.iter().map(|n| n.op_type.as_str()).collect();
        let extra: Vec<&&str> = ops.iter().filter(|op| !ALLOWED_OPS.contains(op)).collect();
        assert!(extra.is_empty(), "opset {opset}: unexpected operators {extra:?} (all: {ops:?})");
        let initializers: BTreeSet<&str> = onnx.graph.initializer.iter().map(|t| t.name.as_str()).collect();
        for (name, _) in vs.variables() {
            assert!(initializers.contains(name.as_str()), "opset {opset}: {name} is not an initializer");
        }
        let resizes = onnx.graph.node.iter().filter(|n| n.op_type == "Resize").count();
        assert_eq!(resizes, 2, "one upsampling per top-down step");
    }
}
