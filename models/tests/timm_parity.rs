//! kiln's ConvNeXt against timm's, on the fixture made by `tests/fixtures/convnext_parity/make_fixture.py`
//! (timm 1.0.22, torch 2.11.0: a ConvNeXt with depths (1, 1, 2, 1), dims (8, 16, 24, 32), 5 classes and every
//! parameter re-randomised). The same timm-named weights are loaded and both forward passes must agree to 1e-4.

use std::path::{Path, PathBuf};

use kiln_models::convnext::ConvNextConfig;
use kiln_models::weights::{load_safetensors, read_safetensors, HeadPolicy};
use kiln_models::{ClassifierConfig, ImageClassifier};
use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/convnext_parity")
}

fn named(path: &Path, name: &str) -> Tensor {
    read_safetensors(path).unwrap().into_iter().find(|(n, _)| n == name).unwrap().1
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn check_case(case: &str, conv_mlp: bool) {
    let dir = fixture().join(case);
    let vs = nn::VarStore::new(Device::Cpu);
    let backbone =
        ConvNextConfig { depths: vec![1, 1, 2, 1], dims: vec![8, 16, 24, 32], conv_mlp, ..ConvNextConfig::atto() };
    let model = ImageClassifier::with_backbone(&vs.root(), &ClassifierConfig::new("custom", 5), &backbone).unwrap();
    let report = load_safetensors(&vs, &dir.join("model.safetensors"), HeadPolicy::Strict).unwrap();
    assert_eq!(report.loaded, 65);

    let input = named(&fixture().join("input.safetensors"), "input");
    let io = dir.join("io.safetensors");
    let features = tch::no_grad(|| model.backbone.forward_t(&input, false));
    let logits = tch::no_grad(|| model.forward_t(&input, false));
    let (df, dl) = (max_abs_diff(&features, &named(&io, "features")), max_abs_diff(&logits, &named(&io, "logits")));
    assert!(df <= 1e-4 && dl <= 1e-4, "{case}: features differ by {df:e}, logits by {dl:e}");
    // The tolerance must be able to fail: the fixture is sensitive well above it.
    assert!(max_abs_diff(&logits, &named(&io, "logits").zeros_like()) > 1e-2);
}

#[test]
fn conv_mlp_blocks_match_timm() {
    check_case("conv_mlp", true);
}

#[test]
fn linear_mlp_blocks_match_timm() {
    check_case("linear_mlp", false);
}
