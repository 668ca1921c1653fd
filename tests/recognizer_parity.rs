//! kiln's text-line recognizer and its CTC training step against a PyTorch reference of it, record by record, on
//! the fixture made by `tests/fixtures/crnn_parity/make_fixture.py` (torch 2.11, timm: `torch.nn.Conv2d` +
//! `BatchNorm2d` stages or timm's `ConvNeXtBlock`s, `torch.nn.LSTM`, `torch.nn.Linear`, `F.ctc_loss`; every
//! parameter re-drawn; three 32×64 lines with their own frame counts and labels).
//!
//! For each body kiln offers (`vgg_bn` with the classic LSTM-only head, `convnext` with kiln's frame shortcut), kiln
//! loads the same weights under the same names and must give, to 1e-5 (relative to the record's largest magnitude
//! when that is above 1): the body's features, the frames, the LSTM's output, the logits, the CTC loss, the gradient
//! of every parameter, BatchNorm's running statistics after the training-mode forward, and the evaluation-mode
//! probabilities (the ONNX export is compared with libtorch by `tests/ocr_export_parity.rs`).

use std::collections::HashMap;
use std::path::PathBuf;

use kiln_models::weights::{load_safetensors, HeadPolicy};
use kiln_models::{RecognizerConfig, TextBackbone, TextLineRecognizer};
use kiln_train::ocr::loader::LineTarget;
use kiln_train::ocr::loss::ctc_loss;
use tch::nn;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-5;
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

mod common;

fn fixture() -> PathBuf {
    common::fixture_dir("crnn_parity")
}

fn read(file: &str) -> HashMap<String, Tensor> {
    common::read_fixture(&fixture(), file)
}

/// [`common::assert_close`] at [`TOLERANCE`].
fn assert_close(what: &str, ours: &Tensor, theirs: &Tensor) {
    common::assert_close(what, ours, theirs, TOLERANCE);
}

struct Setup {
    vs: nn::VarStore,
    model: TextLineRecognizer,
    images: Tensor,
    targets: Vec<LineTarget>,
    records: HashMap<String, Tensor>,
}

fn setup(body: TextBackbone) -> Setup {
    let vs = nn::VarStore::new(Device::Cpu);
    let (dims, depths, shortcut) = match body {
        TextBackbone::VggBn => (vec![8, 12, 16, 16], vec![1, 1, 2, 1], false),
        TextBackbone::Convnext => (vec![8, 16, 24, 32], vec![1, 1, 1, 1], true),
    };
    let config = RecognizerConfig {
        dims: Some(dims),
        depths: Some(depths),
        lstm_hidden: 12,
        lstm_layers: 2,
        backbone: body,
        frame_shortcut: shortcut,
        ..RecognizerConfig::new("convnext_atto", 6, 32)
    };
    let model = TextLineRecognizer::new(&vs.root(), &config).unwrap();
    let report =
        load_safetensors(&vs, &fixture().join(format!("{}_model.safetensors", body.name())), HeadPolicy::Strict)
            .unwrap();
    assert_eq!(report.loaded, vs.variables().len(), "every parameter and buffer comes from the fixture");

    let batch = read("batch.safetensors");
    let mean = Tensor::from_slice(&MEAN).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&STD).view([1, 3, 1, 1]);
    let images = (batch["images"].to_kind(Kind::Float) / 255.0 - mean) / std;
    let lengths: Vec<i64> = Vec::try_from(&batch["target_lengths"]).unwrap();
    let frames: Vec<i64> = Vec::try_from(&batch["input_lengths"]).unwrap();
    let flat: Vec<i64> = Vec::try_from(&batch["targets"]).unwrap();
    let mut start = 0;
    let targets = lengths
        .iter()
        .zip(&frames)
        .enumerate()
        .map(|(index, (&n, &f))| {
            let classes = flat[start..start + n as usize].to_vec();
            start += n as usize;
            LineTarget { classes, frames: f as usize, index }
        })
        .collect();
    Setup { vs, model, images, targets, records: read(&format!("{}_records.safetensors", body.name())) }
}

fn training_step_matches(body: TextBackbone) {
    let s = setup(body);
    let features = s.model.backbone.forward_t(&s.images, true);
    assert_close("features", &features, &s.records["features"]);
    // A second training-mode forward would move BatchNorm's running statistics again: reset them by reloading.
    let s = setup(body);
    let (frames, sequence) = s.model.frames_and_sequence(&s.images, true);
    assert_close("frames", &frames, &s.records["frames"]);
    assert_close("sequence", &sequence, &s.records["sequence"]);
    for (name, tensor) in s.vs.variables() {
        if let Some(after) = s.records.get(&format!("after.{name}")) {
            assert_close(&format!("{name} after the forward"), &tensor, after);
        }
    }
    let s = setup(body);
    let logits = s.model.forward_t(&s.images, true);
    assert_close("logits", &logits, &s.records["logits"]);
    let loss = ctc_loss(&logits, &s.targets);
    assert_close("CTC loss", &loss, &s.records["loss"]);
    loss.backward();
    let mut compared = 0;
    for (name, tensor) in s.vs.variables() {
        if !tensor.requires_grad() {
            continue;
        }
        let theirs = s.records.get(&format!("grad.{name}")).unwrap_or_else(|| panic!("no gradient record for {name}"));
        assert_close(&format!("gradient of {name}"), &tensor.grad(), theirs);
        compared += 1;
    }
    let recorded = s.records.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(compared, recorded, "every recorded gradient is compared");
    let buffers = s.records.keys().filter(|k| k.starts_with("after.")).count();
    match body {
        TextBackbone::VggBn => assert_eq!(buffers, 10, "5 BatchNorms' running means and variances"),
        TextBackbone::Convnext => assert_eq!(buffers, 0),
    }
}

fn evaluation_matches(body: TextBackbone) {
    let s = setup(body);
    // The reference evaluated after its training-mode forward, with BatchNorm's running statistics moved by it.
    let probs = tch::no_grad(|| {
        let _ = s.model.forward_t(&s.images, true);
        s.model.probabilities(&s.images)
    });
    assert_close("evaluation probabilities", &probs, &s.records["eval_probabilities"]);
}

#[test]
fn vgg_bn_training_step_matches_pytorch() {
    training_step_matches(TextBackbone::VggBn);
}

#[test]
fn convnext_training_step_matches_pytorch() {
    training_step_matches(TextBackbone::Convnext);
}

#[test]
fn vgg_bn_evaluation_matches_pytorch() {
    evaluation_matches(TextBackbone::VggBn);
}

#[test]
fn convnext_evaluation_matches_pytorch() {
    evaluation_matches(TextBackbone::Convnext);
}
