//! The text recognizer's ONNX export against libtorch: the graph (ConvNeXt with height-only downsampling, or VGG-BN
//! with each BatchNorm folded into its convolution; the
//! mean over the remaining height, the two-layer bidirectional LSTM as ONNX `LSTM` nodes with the gates
//! reordered, the frame classifier and the softmax), run by ONNX Runtime (CPU, full graph optimisation) and by
//! tract (`into_optimized`), gives the per-frame probabilities `TextLineRecognizer::probabilities` gives within
//! 1e-4, at batch 1 and 2 and at several widths (the width is chosen at run time), at opsets 13, 17 and 21.

mod common;

use std::sync::{Mutex, OnceLock};

use kiln_export::{Dim, ElemType, Graph};
use kiln_models::{RecognizerConfig, TextBackbone, TextLineRecognizer};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use tch::nn;
use tch::{Device, Kind, Tensor};
use tract_onnx::prelude::*;

const HEIGHT: i64 = 32;
const CLASSES: i64 = 11;

fn ort_env() -> &'static ort::environment::Environment {
    static ENV: OnceLock<ort::environment::Environment> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = std::env::var("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH (set by make) points at ONNX Runtime");
        ort::init_from(path).unwrap().build().unwrap()
    })
}

fn run_ort(bytes: &[u8], input: &[f32], shape: [usize; 4]) -> Vec<f32> {
    let mut session = Session::builder(ort_env())
        .unwrap()
        .with_optimization_level(GraphOptimizationLevel::All)
        .unwrap()
        .commit_from_memory(bytes)
        .unwrap();
    let tensor = ort::value::Tensor::from_array((shape, input.to_vec())).unwrap();
    let outputs = session.run(ort::inputs!["images" => tensor]).unwrap();
    let (dims, data) = outputs["probs"].try_extract_tensor::<f32>().unwrap();
    assert_eq!(dims.to_vec(), [shape[0] as i64, shape[3] as i64 / 4, CLASSES]);
    data.to_vec()
}

fn run_tract(bytes: &[u8], input: &[f32], shape: [usize; 4]) -> Vec<f32> {
    let model = tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(bytes))
        .unwrap()
        .with_input_fact(0, f32::fact(shape).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let tensor = tract_onnx::prelude::Tensor::from_shape(&shape, input).unwrap();
    let out = model.run(tvec!(tensor.into())).unwrap();
    out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
}

static RNG: Mutex<()> = Mutex::new(());

/// A small random recognizer whose every layer matters: layer scales at 0.5, BatchNorm's running statistics and
/// affine drawn away from the identity (so that folding them into the convolutions is exercised), and the frame
/// classifier drawn wider than its init, so that the probabilities vary across frames.
fn recognizer(vs: &nn::VarStore, backbone: TextBackbone) -> TextLineRecognizer {
    let _rng = RNG.lock().unwrap();
    tch::manual_seed(5);
    let config = RecognizerConfig {
        dims: Some(vec![16, 24, 32, 48]),
        depths: Some(vec![1, 1, 2, 1]),
        lstm_hidden: 24,
        backbone,
        frame_shortcut: backbone == TextBackbone::Convnext,
        ..RecognizerConfig::new("convnext_atto", CLASSES, HEIGHT)
    };
    let model = TextLineRecognizer::new(&vs.root(), &config).unwrap();
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.ends_with("gamma") {
                let _ = t.fill_(0.5);
            } else if name.ends_with("running_mean") || name.ends_with("bn.bias") {
                let drawn = t.randn_like() * 0.3;
                t.copy_(&drawn);
            } else if name.ends_with("running_var") || name.ends_with("bn.weight") {
                let drawn = t.rand_like() + 0.5;
                t.copy_(&drawn);
            } else if name.starts_with("head.") {
                let wider = t.randn_like() * 2.0;
                t.copy_(&wider);
            }
        }
    });
    model
}

fn export(model: &TextLineRecognizer, opset: i64) -> Vec<u8> {
    let mut g = Graph::new(opset, ElemType::F32).unwrap();
    let dims = [Dim::Symbolic("batch".into()), Dim::Fixed(3), Dim::Fixed(HEIGHT), Dim::Symbolic("width".into())];
    let x = g.input("images", ElemType::F32, &dims).unwrap();
    let probs = tch::no_grad(|| model.emit(&mut g, &x)).unwrap();
    let out = [Dim::Symbolic("batch".into()), Dim::Symbolic("frames".into()), Dim::Fixed(CLASSES)];
    g.output(&probs, "probs", ElemType::F32, &out).unwrap();
    kiln_export::to_bytes(&g.into_model("recognizer", &[])).unwrap()
}

#[test]
fn the_exported_recognizer_gives_libtorchs_frame_probabilities_on_both_runtimes() {
    exported_probabilities_match(TextBackbone::Convnext);
}

#[test]
fn the_exported_vgg_bn_recognizer_with_folded_batch_norms_gives_libtorchs_probabilities_on_both_runtimes() {
    exported_probabilities_match(TextBackbone::VggBn);
}

fn exported_probabilities_match(backbone: TextBackbone) {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = recognizer(&vs, backbone);
    for opset in [13, 17, 21] {
        let bytes = export(&model, opset);
        for (batch, width) in [(1usize, 96usize), (2, 160), (1, 36)] {
            let shape = [batch, 3, HEIGHT as usize, width];
            let xs = {
                let _rng = RNG.lock().unwrap();
                tch::manual_seed(width as i64);
                Tensor::randn([batch as i64, 3, HEIGHT, width as i64], (Kind::Float, Device::Cpu))
            };
            let expected: Vec<f32> = Vec::try_from(tch::no_grad(|| model.probabilities(&xs)).flatten(0, -1)).unwrap();
            let spread = expected.iter().copied().fold(0.0, f32::max) - expected.iter().copied().fold(1.0, f32::min);
            assert!(spread > 0.2, "the probabilities vary ({spread}), so the comparison means something");
            let input: Vec<f32> = Vec::try_from(xs.flatten(0, -1)).unwrap();
            let ort = run_ort(&bytes, &input, shape);
            let tract = run_tract(&bytes, &input, shape);
            let (d_ort, d_tract) = (common::max_abs_diff(&ort, &expected), common::max_abs_diff(&tract, &expected));
            assert!(d_ort <= 1e-4, "opset {opset}, batch {batch}, width {width}: ONNX Runtime differs by {d_ort}");
            assert!(d_tract <= 1e-4, "opset {opset}, batch {batch}, width {width}: tract differs by {d_tract}");
        }
    }
}

#[test]
fn the_lstm_gates_are_reordered_for_onnx() {
    // A one-layer LSTM alone: if the gates kept PyTorch's order, ONNX Runtime would compute another function.
    let vs = nn::VarStore::new(Device::Cpu);
    let lstm = {
        let _rng = RNG.lock().unwrap();
        tch::manual_seed(9);
        kiln_models::bilstm::BiLstm::new(&vs.root(), 5, 7, 1)
    };
    let mut g = Graph::new(17, ElemType::F32).unwrap();
    let x = g.input("images", ElemType::F32, &[Dim::Fixed(6), Dim::Fixed(2), Dim::Fixed(5)]).unwrap();
    let y = tch::no_grad(|| lstm.emit(&mut g, &x)).unwrap();
    g.output(&y, "probs", ElemType::F32, &[Dim::Fixed(6), Dim::Fixed(2), Dim::Fixed(14)]).unwrap();
    let bytes = kiln_export::to_bytes(&g.into_model("lstm", &[])).unwrap();
    let xs = Tensor::randn([2, 6, 5], (Kind::Float, Device::Cpu));
    let expected = tch::no_grad(|| lstm.forward_t(&xs, false)).transpose(0, 1).contiguous();
    let expected: Vec<f32> = Vec::try_from(expected.flatten(0, -1)).unwrap();
    let input: Vec<f32> = Vec::try_from(xs.transpose(0, 1).contiguous().flatten(0, -1)).unwrap();
    let mut session = Session::builder(ort_env()).unwrap().commit_from_memory(&bytes).unwrap();
    let tensor = ort::value::Tensor::from_array(([6usize, 2, 5], input)).unwrap();
    let outputs = session.run(ort::inputs!["images" => tensor]).unwrap();
    let got = outputs["probs"].try_extract_tensor::<f32>().unwrap().1.to_vec();
    assert!(common::max_abs_diff(&got, &expected) <= 1e-5, "{}", common::max_abs_diff(&got, &expected));
}
