//! kiln's FCOS detector and its training step against torchvision's `FCOS`, record by record, on the fixture made
//! by `tests/fixtures/fcos_parity/make_fixture.py` (torchvision 0.26, timm, torch 2.11: a reduced timm ConvNeXt
//! with `features_only`, torchvision's FPN of 32 channels, the FCOS head with 4 convolutions per tower and
//! GroupNorm(32), 3 classes, every parameter re-drawn; three 128×128 images, one without boxes).
//!
//! kiln loads the same weights under the same names and must give, to 1e-5 (relative to the record's largest
//! magnitude when that is above 1): the FPN's levels, the head's outputs, torchvision's matched box per location
//! (exactly), the three loss parts, the gradient of every parameter, and one SGD step (Adam's first step is about
//! lr·sign(g), which would compare signs of near-zero gradients rather than the update).
//!
//! torchvision's locations are its anchors' centres, the cells' top-left corners: `location_offset: 0`.

use std::collections::HashMap;
use std::path::PathBuf;

use kiln_models::convnext::ConvNextConfig;
use kiln_models::detector::TORCHVISION_LOCATION_OFFSET;
use kiln_models::weights::{load_safetensors, HeadPolicy};
use kiln_models::{DetectorConfig, Locations, ObjectDetector};
use kiln_train::config::OptimizerKind;
use kiln_train::detect::loss::fcos_losses;
use kiln_train::detect::targets::{assign, Assignment};
use kiln_train::optim::{Optimizer, OptimizerConfig, Param};
use tch::nn;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-5;
const SIZE: i64 = 128;
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

mod common;

fn fixture() -> PathBuf {
    common::fixture_dir("fcos_parity")
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
    model: ObjectDetector,
    images: Tensor,
    /// Per image: boxes `[G, 4]` and labels `[G]`.
    targets: Vec<(Tensor, Tensor)>,
    records: HashMap<String, Tensor>,
}

fn setup() -> Setup {
    let vs = nn::VarStore::new(Device::Cpu);
    let backbone = ConvNextConfig { depths: vec![1, 1, 1, 1], dims: vec![8, 16, 24, 32], ..ConvNextConfig::atto() };
    let config = DetectorConfig::new("custom", 3)
        .with_fpn_channels(32)
        .with_head_convs(4)
        .with_num_levels(3)
        .with_location_offset(TORCHVISION_LOCATION_OFFSET);
    let model = ObjectDetector::with_backbone(&vs.root(), &config, &backbone).unwrap();
    let report = load_safetensors(&vs, &fixture().join("model.safetensors"), HeadPolicy::Strict).unwrap();
    assert_eq!(report.loaded, vs.variables().len(), "every parameter comes from the fixture");

    let batch = read("batch.safetensors");
    let mean = Tensor::from_slice(&MEAN).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&STD).view([1, 3, 1, 1]);
    let images = (batch["images"].to_kind(Kind::Float) / 255.0 - mean) / std;
    let counts: Vec<i64> = Vec::try_from(&batch["counts"]).unwrap();
    let mut start = 0;
    let targets = counts
        .iter()
        .map(|&n| {
            let t = (batch["boxes"].narrow(0, start, n), batch["labels"].narrow(0, start, n));
            start += n;
            t
        })
        .collect();
    Setup { vs, model, images, targets, records: read("records.safetensors") }
}

fn assignments(s: &Setup, locations: &Locations) -> Vec<Assignment> {
    s.targets.iter().map(|(boxes, labels)| assign(&locations.points, &locations.strides, boxes, labels)).collect()
}

#[test]
fn pyramid_and_head_outputs_match_torchvision() {
    let s = setup();
    tch::no_grad(|| {
        let features = s.model.backbone.forward_features_t(&s.images, true);
        let pyramid = s.model.fpn.forward(&features[1..]);
        for (level, p) in pyramid.iter().enumerate() {
            let name = format!("p{}", level + 3);
            assert_close(&name, p, &s.records[&name]);
        }
        let out = s.model.forward_t(&s.images, true);
        assert_close("cls_logits", &out.cls_logits, &s.records["cls_logits"]);
        assert_close("centerness", &out.centerness_logits, &s.records["bbox_ctrness"]);
        // torchvision's regression is in units of the anchor size (the stride); kiln's in pixels.
        let locations = s.model.locations(SIZE, SIZE);
        let in_strides = &out.box_ltrb / locations.strides.view([1, -1, 1]);
        assert_close("bbox_regression", &in_strides, &s.records["bbox_regression"]);
    });
}

#[test]
fn matched_boxes_per_location_match_torchvision() {
    let s = setup();
    let locations = s.model.locations(SIZE, SIZE);
    let expected = &s.records["matched"];
    for (i, a) in assignments(&s, &locations).iter().enumerate() {
        let theirs: Vec<i64> = Vec::try_from(expected.get(i as i64)).unwrap();
        let ours: Vec<i64> = Vec::try_from(&a.matched).unwrap();
        assert_eq!(ours.len(), theirs.len());
        let differ: Vec<usize> = (0..ours.len()).filter(|&k| ours[k] != theirs[k]).collect();
        assert!(differ.is_empty(), "image {i}: locations {differ:?} matched differently");
    }
    let positives = expected.ge(0).sum(Kind::Int64).int64_value(&[]);
    assert!(positives > 40, "the fixture has positives on every level ({positives})");
    // The fixture tells the location conventions apart: cell centres match other locations.
    let centres = Locations::new(SIZE, SIZE, s.model.level_sizes(SIZE, SIZE), s.model.strides(), 0.5);
    let shifted = assignments(&s, &centres);
    let same = shifted.iter().enumerate().all(|(i, a)| a.matched.equal(&expected.get(i as i64)));
    assert!(!same, "offset 0.5 must not reproduce torchvision's matching");
}

#[test]
fn losses_gradients_and_an_sgd_step_match_torchvision() {
    let s = setup();
    let locations = s.model.locations(SIZE, SIZE);
    let out = s.model.forward_t(&s.images, true);
    let losses = fcos_losses(&out.cls_logits, &out.box_ltrb, &out.centerness_logits, &assignments(&s, &locations));
    assert_close("classification loss", &losses.classification, &s.records["loss_cls"]);
    assert_close("box loss", &losses.boxes, &s.records["loss_box"]);
    assert_close("centerness loss", &losses.centerness, &s.records["loss_ctr"]);

    let params: Vec<Param> = s.vs.variables().into_iter().map(|(n, t)| Param::new(n, t)).collect();
    let before: Vec<(String, Tensor)> = params.iter().map(|p| (p.name.clone(), p.tensor.detach().copy())).collect();
    let mut optimizer = Optimizer::new(
        params,
        OptimizerConfig { kind: OptimizerKind::Sgd, weight_decay: 0.0, momentum: 0.0, betas: (0.9, 0.999), eps: 1e-8 },
    );
    optimizer.zero_grad();
    losses.total.backward();
    let mut compared = 0;
    for p in optimizer.params() {
        let theirs = s.records.get(&format!("grad.{}", p.name)).unwrap_or_else(|| panic!("no gradient of {}", p.name));
        assert_close(&format!("gradient of {}", p.name), &p.tensor.grad(), theirs);
        compared += 1;
    }
    let recorded = s.records.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(compared, recorded, "every recorded gradient has a parameter");

    let lr = 0.1;
    optimizer.step(lr);
    for (name, old) in &before {
        let expected = old - &s.records[&format!("grad.{name}")] * lr;
        let now = &s.vs.variables()[name];
        assert_close(&format!("{name} after one SGD step"), now, &expected);
    }
}
