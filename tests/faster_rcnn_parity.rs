//! kiln's Faster R-CNN against torchvision's `FasterRCNN`, record by record, on the fixture made by
//! `tests/fixtures/faster_rcnn_parity/make_fixture.py` (torchvision 0.26, timm, torch 2.11: a reduced timm ConvNeXt
//! with `features_only` over all four stages, torchvision's FPN of 32 channels with `LastLevelMaxPool`, anchors
//! 16–256 with three ratios, `MultiScaleRoIAlign` 7×7 / 2, a `TwoMLPHead` of 64 and 3 classes; every parameter
//! re-drawn; two 96×128 images, one without boxes), and its building blocks on tables.
//!
//! kiln loads the same weights under the same names and must give, to 1e-5 (relative to the record's largest
//! magnitude when that is above 1): RoIAlign (both alignments) and its gradient, the matchers, the box coder, the
//! level mapper, the pyramid, the anchors, the RPN's outputs, the proposals of training and of inference, the four
//! losses and every parameter's gradient (both samplers take every item, so the draw does not matter), and the
//! detections after NMS (score 0.05, IoU 0.5, 100 per image).

use std::collections::HashMap;
use std::path::PathBuf;

use kiln_infer::nms::{nms_per_image, NmsConfig};
use kiln_models::convnext::ConvNextConfig;
use kiln_models::faster_rcnn::box_coder::BoxCoder;
use kiln_models::faster_rcnn::matcher::Matcher;
use kiln_models::faster_rcnn::roi_align::{LevelMapper, RoiAlign};
use kiln_models::faster_rcnn::{AnchorConfig, SplitMix64};
use kiln_models::weights::{load_safetensors, HeadPolicy};
use kiln_models::{FasterRcnn, FasterRcnnConfig};
use tch::nn;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-5;
const HEIGHT: i64 = 96;
const WIDTH: i64 = 128;
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

mod common;

fn fixture() -> PathBuf {
    common::fixture_dir("faster_rcnn_parity")
}

fn read(file: &str) -> HashMap<String, Tensor> {
    common::read_fixture(&fixture(), file)
}

fn assert_close(what: &str, ours: &Tensor, theirs: &Tensor) {
    common::assert_close(what, ours, theirs, TOLERANCE);
}

/// `tensor`'s rows split by `counts`.
fn split(tensor: &Tensor, counts: &Tensor) -> Vec<Tensor> {
    let counts: Vec<i64> = Vec::try_from(counts).unwrap();
    let mut start = 0;
    counts
        .iter()
        .map(|&n| {
            let part = tensor.narrow(0, start, n);
            start += n;
            part
        })
        .collect()
}

/// `boxes` `[K, 4]` with their rows in lexicographic order.
fn sorted_rows(boxes: &Tensor) -> Tensor {
    let flat: Vec<f32> = Vec::try_from(boxes.flatten(0, -1)).unwrap();
    let mut rows: Vec<[f32; 4]> = flat.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
    rows.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    Tensor::from_slice(&rows.concat()).view([-1, 4])
}

struct Setup {
    vs: nn::VarStore,
    model: FasterRcnn,
    images: Tensor,
    truths: Vec<(Tensor, Tensor)>,
    records: HashMap<String, Tensor>,
}

fn setup() -> Setup {
    let vs = nn::VarStore::new(Device::Cpu);
    let backbone = ConvNextConfig { depths: vec![1, 1, 1, 1], dims: vec![8, 16, 24, 32], ..ConvNextConfig::atto() };
    let mut config = FasterRcnnConfig::new("custom", 3);
    config.fpn_channels = 32;
    config.roi_heads.representation_size = 64;
    config.anchors = AnchorConfig {
        sizes: vec![vec![16.0], vec![32.0], vec![64.0], vec![128.0], vec![256.0]],
        aspect_ratios: vec![0.5, 1.0, 2.0],
    };
    config.rpn.batch_size_per_image = 100_000;
    config.roi_heads.batch_size_per_image = 100_000;
    let model = FasterRcnn::with_backbone(&vs.root(), &config, &backbone).unwrap();
    let report = load_safetensors(&vs, &fixture().join("model.safetensors"), HeadPolicy::Strict).unwrap();
    assert_eq!(report.loaded, vs.variables().len(), "every parameter comes from the fixture");
    let batch = read("batch.safetensors");
    let mean = Tensor::from_slice(&MEAN).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&STD).view([1, 3, 1, 1]);
    let images = (batch["images"].to_kind(Kind::Float) / 255.0 - mean) / std;
    let truths =
        split(&batch["boxes"], &batch["counts"]).into_iter().zip(split(&batch["labels"], &batch["counts"])).collect();
    Setup { vs, model, images, truths, records: read("records.safetensors") }
}

#[test]
fn roi_align_matcher_box_coder_and_level_mapper_match_torchvision_on_tables() {
    let t = read("tables.safetensors");
    let features = t["roi_align.features"].set_requires_grad(true);
    let rois = &t["roi_align.rois"];
    let unaligned = RoiAlign { output: 7, sampling_ratio: 2, aligned: false };
    let out = unaligned.forward(&features, rois, 0.25);
    assert_close("RoIAlign, unaligned", &out, &t["roi_align.out_unaligned"]);
    (&out * &t["roi_align.weights"]).sum(Kind::Float).backward();
    assert_close("RoIAlign's gradient", &features.grad(), &t["roi_align.grad_unaligned"]);
    let aligned = RoiAlign { aligned: true, ..unaligned };
    let out = tch::no_grad(|| aligned.forward(&features, rois, 0.25));
    assert_close("RoIAlign, aligned", &out, &t["roi_align.out_aligned"]);
    assert!(
        (&out - &t["roi_align.out_unaligned"]).abs().max().double_value(&[]) > 1e-3,
        "the table tells the alignments apart"
    );

    let quality = &t["matcher.quality"];
    for (name, matcher) in [
        ("rpn", Matcher { high: 0.7, low: 0.3, allow_low_quality_matches: true }),
        ("roi", Matcher { high: 0.5, low: 0.5, allow_low_quality_matches: false }),
    ] {
        let ours: Vec<i64> = Vec::try_from(matcher.matches(quality)).unwrap();
        let theirs: Vec<i64> = Vec::try_from(&t[&format!("matcher.{name}")]).unwrap();
        assert_eq!(ours, theirs, "{name} matcher");
    }

    let coder = BoxCoder::ROI_HEADS;
    let deltas = coder.encode(&t["coder.targets"], &t["coder.references"]);
    assert_close("encoded deltas", &deltas, &t["coder.deltas"]);
    let decoded = coder.decode(&(&t["coder.deltas"] * 1.5), &t["coder.references"]);
    assert_close("decoded boxes", &decoded, &t["coder.decoded"]);

    let levels = LevelMapper::for_strides(&[4, 8, 16, 32]).levels(&t["mapper.boxes"]);
    let ours: Vec<i64> = Vec::try_from(levels).unwrap();
    let theirs: Vec<i64> = Vec::try_from(&t["mapper.levels"]).unwrap();
    assert_eq!(ours, theirs, "level mapper");
    assert!((0..4).all(|l| theirs.contains(&l)), "the table reaches every level");
}

#[test]
fn pyramid_anchors_rpn_outputs_and_proposals_match_torchvision() {
    let s = setup();
    tch::no_grad(|| {
        let features = s.model.features(&s.images, true);
        for (level, p) in features.iter().enumerate() {
            let name = format!("p{}", level + 2);
            assert_close(&name, p, &s.records[&name]);
        }
        let anchors = s.model.anchors(HEIGHT, WIDTH);
        assert_close("anchors", &anchors, &s.records["anchors"]);
        let outputs = s.model.rpn.forward(&features);
        assert_close("objectness", &outputs.objectness, &s.records["objectness"]);
        assert_close("deltas", &outputs.deltas, &s.records["deltas"]);
        for (mode, train) in [("train", true), ("test", false)] {
            let ours = s.model.rpn.proposals(&outputs, &anchors, HEIGHT, WIDTH, train);
            let key = format!("proposals_{mode}");
            let theirs = split(&s.records[&key], &s.records[&format!("{key}_counts")]);
            assert_eq!(ours.len(), theirs.len());
            for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
                // Saturated objectness ties at a probability of exactly 1, and the two sorts order ties apart:
                // the proposals are compared as sets.
                let (o, t) = (sorted_rows(o), sorted_rows(t));
                assert_close(&format!("{mode} proposals of image {i}"), &o, &t);
            }
        }
    });
}

#[test]
fn losses_and_gradients_match_torchvision() {
    let s = setup();
    let anchors = s.model.anchors(HEIGHT, WIDTH);
    let losses = s.model.losses(&s.images, &anchors, &s.truths, &mut SplitMix64::new(5), true);
    assert_close("RPN objectness loss", &losses.objectness, &s.records["rpn_objectness"]);
    assert_close("RPN box loss", &losses.rpn_box_regression, &s.records["rpn_box"]);
    assert_close("classifier loss", &losses.classifier, &s.records["roi_classifier"]);
    assert_close("box loss", &losses.box_regression, &s.records["roi_box"]);
    losses.total().backward();
    let mut compared = 0;
    for (name, var) in s.vs.variables() {
        let theirs = s.records.get(&format!("grad.{name}")).unwrap_or_else(|| panic!("no gradient of {name}"));
        assert_close(&format!("gradient of {name}"), &var.grad(), theirs);
        compared += 1;
    }
    let recorded = s.records.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(compared, recorded, "every recorded gradient has a parameter");
}

#[test]
fn detections_after_nms_match_torchvision() {
    let s = setup();
    let anchors = s.model.anchors(HEIGHT, WIDTH);
    let (boxes, scores) = tch::no_grad(|| s.model.detect(&s.images, &anchors));
    let config = NmsConfig {
        iou_threshold: 0.5,
        score_threshold: 0.05,
        max_detections: 100,
        class_agnostic: false,
        pre_nms_top_k: usize::MAX,
    };
    let counts = &s.records["det_counts"];
    let theirs_boxes = split(&s.records["det_boxes"], counts);
    let theirs_scores = split(&s.records["det_scores"], counts);
    let theirs_labels = split(&s.records["det_labels"], counts);
    for i in 0..2 {
        let b: Vec<f32> = Vec::try_from(boxes.get(i).flatten(0, -1)).unwrap();
        let sc: Vec<f32> = Vec::try_from(scores.get(i).flatten(0, -1)).unwrap();
        let b: Vec<[f32; 4]> = b.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
        let ours = nms_per_image(&sc, &b, 3, &config);
        let tb: Vec<f32> = Vec::try_from(theirs_boxes[i as usize].flatten(0, -1)).unwrap();
        let ts: Vec<f32> = Vec::try_from(&theirs_scores[i as usize]).unwrap();
        let tl: Vec<i64> = Vec::try_from(&theirs_labels[i as usize]).unwrap();
        assert_eq!(ours.len(), ts.len(), "image {i}: detections");
        assert!(!ours.is_empty());
        for (k, d) in ours.iter().enumerate() {
            assert_eq!(d.class as i64, tl[k], "image {i}, detection {k}: class");
            assert!((d.score - ts[k]).abs() < 1e-5, "image {i}, detection {k}: score {} vs {}", d.score, ts[k]);
            let diff = common::max_rel_diff(&tb[4 * k..4 * k + 4], &d.bbox);
            assert!(diff < 1e-4, "image {i}, detection {k}: box {:?} vs {:?}", d.bbox, &tb[4 * k..4 * k + 4]);
        }
    }
}
