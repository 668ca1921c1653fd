//! Tests of `coco_eval`: parity with pycocotools on the committed fixtures (made by
//! `scripts/make_coco_eval_fixture.py`) and small hand-made cases.

use super::*;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Parity fixtures; `tiny/` holds the hand-made case.
const FIXTURE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/coco_eval");

/// Largest allowed difference to pycocotools. The implementation reproduces pycocotools'
/// floating-point operations (IoU, precision, numpy's pairwise mean) and agrees bit for bit;
/// the margin only absorbs JSON parsing: without its `float_roundtrip` feature serde_json may
/// read a 17-digit number one ulp off (e.g. `0.41000000000000003` as `0.41`).
const TOLERANCE: f64 = 1e-12;

/// pycocotools' precision is `tp / (tp + fp + eps)`, so a perfect single-object result scores
/// `1 / (1 + eps) = 0.9999999999999998`, not 1.
fn assert_one(what: &str, v: f64) {
    assert!((v - 1.0).abs() < 1e-12, "{what}: {v}");
}

#[derive(Deserialize)]
struct GtFile {
    images: Vec<IdJson>,
    annotations: Vec<AnnJson>,
    categories: Vec<IdJson>,
}

#[derive(Deserialize)]
struct IdJson {
    id: u64,
}

#[derive(Deserialize)]
struct AnnJson {
    image_id: u64,
    category_id: u64,
    bbox: [f64; 4],
    area: f64,
    iscrowd: u8,
}

#[derive(Deserialize)]
struct PredJson {
    image_id: u64,
    category_id: u64,
    bbox: [f64; 4],
    score: f64,
}

#[derive(Deserialize)]
struct Expected {
    stats: BTreeMap<String, f64>,
    per_category: Vec<ExpectedCategory>,
    iou_thresholds: Vec<f64>,
    recall_thresholds: Vec<f64>,
}

#[derive(Deserialize)]
struct ExpectedCategory {
    category: u64,
    ap: f64,
    ap_50: f64,
    ap_75: f64,
    ar_100: f64,
    precision_iou50: Vec<f64>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &str) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

/// Evaluates a fixture directory and compares everything in its `expected.json`; returns the
/// largest absolute difference seen.
fn check_fixture(dir: &str) -> f64 {
    let gt: GtFile = read_json(&format!("{dir}/ground_truth.json"));
    let preds: Vec<PredJson> = read_json(&format!("{dir}/predictions.json"));
    let expected: Expected = read_json(&format!("{dir}/expected.json"));
    let images: Vec<u64> = gt.images.iter().map(|i| i.id).collect();
    let categories: Vec<u64> = gt.categories.iter().map(|c| c.id).collect();
    let gts: Vec<GroundTruth> = gt
        .annotations
        .iter()
        .map(|a| GroundTruth {
            image: a.image_id,
            category: a.category_id,
            bbox_xywh: a.bbox,
            area: a.area,
            iscrowd: a.iscrowd != 0,
        })
        .collect();
    let preds: Vec<Prediction> = preds
        .iter()
        .map(|p| Prediction { image: p.image_id, category: p.category_id, bbox_xywh: p.bbox, score: p.score })
        .collect();
    let params = CocoParams::default();
    // The thresholds are numpy's floats (bit-exactness is checked in `linspace_matches_numpy`).
    let (ious, recs) = (&expected.iou_thresholds, &expected.recall_thresholds);
    assert!(params.iou_thresholds.len() == ious.len() && params.recall_thresholds.len() == recs.len());
    for (a, b) in params.iou_thresholds.iter().chain(&params.recall_thresholds).zip(ious.iter().chain(recs)) {
        assert!((a - b).abs() < 1e-15, "threshold {a} vs numpy {b}");
    }

    let eval = evaluate(&images, &categories, &gts, &preds, &params);
    let stats = eval.stats();
    let mut max_diff = 0.0f64;
    let mut compare = |what: &str, got: f64, want: f64| {
        let diff = (got - want).abs();
        assert!(diff <= TOLERANCE, "{dir}: {what}: got {got}, pycocotools {want} (diff {diff:e})");
        max_diff = max_diff.max(diff);
    };
    assert_eq!(expected.stats.len(), 12);
    for (name, got) in CocoStats::NAMES.iter().zip(stats.values()) {
        compare(name, got, expected.stats[*name]);
    }
    assert_eq!(stats.per_category_ap.len(), expected.per_category.len());
    let (nt, nr, _, _, _) = eval.dims();
    let t50 = params.iou_thresholds.iter().position(|&t| t == 0.5).unwrap();
    let t75 = params.iou_thresholds.iter().position(|&t| t == 0.75).unwrap();
    for (got, want) in stats.per_category_ap.iter().zip(&expected.per_category) {
        assert_eq!(got.category, want.category);
        let c = want.category;
        compare(&format!("AP of category {c}"), got.ap, want.ap);
        let k = eval.category_index(c).unwrap();
        let at = |t: usize| mean_valid((0..nr).map(|r| eval.precision(t, r, k, 0, 2)));
        compare(&format!("AP50 of category {c}"), at(t50), want.ap_50);
        compare(&format!("AP75 of category {c}"), at(t75), want.ap_75);
        let ar100 = mean_valid((0..nt).map(|t| eval.recall(t, k, 0, 2)));
        compare(&format!("AR100 of category {c}"), ar100, want.ar_100);
        let curve = eval.pr_curve(c, t50);
        if want.ap < 0.0 {
            assert!(curve.is_empty(), "{dir}: category {c} has no ground truth but a PR curve");
            assert!(want.precision_iou50.iter().all(|&p| p == -1.0));
        } else {
            assert_eq!(curve.len(), want.precision_iou50.len());
            for (r, (&(rec, p), &want_p)) in curve.iter().zip(&want.precision_iou50).enumerate() {
                assert_eq!(rec, params.recall_thresholds[r]);
                assert_eq!(p, eval.precision(t50, r, k, 0, 2));
                compare(&format!("precision of category {c} at IoU .5, recall {rec}"), p, want_p);
            }
        }
    }
    max_diff
}

#[test]
fn matches_pycocotools_on_random_fixture() {
    let diff = check_fixture(FIXTURE_DIR);
    eprintln!("random fixture: max |rust - pycocotools| = {diff:e}");
}

#[test]
fn matches_pycocotools_on_tiny_fixture() {
    let diff = check_fixture(&format!("{FIXTURE_DIR}/tiny"));
    eprintln!("tiny fixture: max |rust - pycocotools| = {diff:e}");
}

fn gt(image: u64, category: u64, bbox_xywh: [f64; 4]) -> GroundTruth {
    GroundTruth { image, category, bbox_xywh, area: bbox_xywh[2] * bbox_xywh[3], iscrowd: false }
}

fn pred(image: u64, category: u64, bbox_xywh: [f64; 4], score: f64) -> Prediction {
    Prediction { image, category, bbox_xywh, score }
}

fn run(images: &[u64], categories: &[u64], gts: &[GroundTruth], preds: &[Prediction]) -> CocoEvaluation {
    evaluate(images, categories, gts, preds, &CocoParams::default())
}

#[test]
fn linspace_matches_numpy() {
    let v = linspace(0.5, 0.95, 10);
    assert_eq!(v.len(), 10);
    assert_eq!(v[0], 0.5);
    assert_eq!(v[5], 0.75);
    assert_eq!(v[9], 0.95);
    // numpy.linspace(.5, .95, 10)[1] is 0x1.199999999999ap-1
    assert_eq!(v[1], f64::from_bits(0x3FE199999999999A));
    let r = linspace(0.0, 1.0, 101);
    assert_eq!((r[0], r[1], r[100]), (0.0, 0.01, 1.0));
    // numpy.linspace(0, 1, 101)[41] is 0.41000000000000003 (41 * 0.01), not 0.41
    assert_eq!(r[41], f64::from_bits(0x3FDA3D70A3D70A3E));
    assert_ne!(r[41], 0.41);
    assert!(linspace(1.0, 2.0, 0).is_empty());
    assert_eq!(linspace(3.0, 4.0, 1), vec![3.0]);
}

#[test]
fn perfect_prediction_gives_ap_one() {
    let gts = [gt(1, 1, [10.0, 10.0, 50.0, 50.0]), gt(2, 1, [0.0, 0.0, 200.0, 120.0])];
    let preds = [pred(1, 1, [10.0, 10.0, 50.0, 50.0], 0.9), pred(2, 1, [0.0, 0.0, 200.0, 120.0], 0.3)];
    let eval = run(&[1, 2], &[1], &gts, &preds);
    let s = eval.stats();
    for (name, v) in [("map", s.map), ("map_50", s.map_50), ("map_75", s.map_75), ("map_medium", s.map_medium)] {
        assert_one(name, v);
    }
    assert_one("map_large", s.map_large);
    assert_eq!(s.map_small, -1.0, "no small ground truth");
    assert_eq!((s.mar_1, s.mar_10, s.mar_100), (1.0, 1.0, 1.0));
    assert_eq!(s.per_category_ap, vec![CategoryAp { category: 1, ap: 1.0 }]);
    let curve = eval.pr_curve(1, 0);
    assert_eq!(curve.len(), 101);
    assert!(curve.iter().all(|&(_, p)| p == 1.0)); // 2 / (2 + eps) rounds to 1
    assert!(eval.pr_curve(2, 0).is_empty(), "unknown category");
    assert!(eval.pr_curve(1, 10).is_empty(), "IoU index out of range");
}

#[test]
fn no_predictions_gives_zero() {
    let gts = [gt(1, 1, [10.0, 10.0, 50.0, 50.0]), gt(2, 2, [5.0, 5.0, 10.0, 10.0])];
    let s = run(&[1, 2, 3], &[1, 2], &gts, &[]).into_stats();
    assert_eq!((s.map, s.map_50, s.mar_100, s.map_small, s.map_medium), (0.0, 0.0, 0.0, 0.0, 0.0));
    assert_eq!(s.map_large, -1.0);
    assert!(s.per_category_ap.iter().all(|c| c.ap == 0.0));
    // Nothing at all: everything is -1.
    let s = run(&[1], &[1], &[], &[]).into_stats();
    assert!(s.values().iter().all(|&v| v == -1.0));
    assert_eq!(s.per_category_ap, vec![CategoryAp { category: 1, ap: -1.0 }]);
}

#[test]
fn category_without_ground_truth_is_excluded() {
    let gts = [gt(1, 1, [10.0, 10.0, 50.0, 50.0])];
    let preds = [
        pred(1, 1, [10.0, 10.0, 50.0, 50.0], 0.9),
        pred(1, 2, [100.0, 100.0, 50.0, 50.0], 0.8), // category 2 has no ground truth
        pred(2, 2, [0.0, 0.0, 20.0, 20.0], 0.95),
        pred(1, 5, [10.0, 10.0, 50.0, 50.0], 0.99), // category 5 is not evaluated at all
        pred(9, 1, [0.0, 0.0, 5.0, 5.0], 0.99),     // image 9 is not evaluated at all
    ];
    let eval = run(&[1, 2], &[2, 1, 2], &gts, &preds);
    assert_eq!(eval.categories(), &[1, 2]);
    let s = eval.stats();
    assert_one("map", s.map);
    assert_eq!(s.mar_100, 1.0);
    assert_eq!(s.per_category_ap[0].category, 1);
    assert_one("AP of category 1", s.per_category_ap[0].ap);
    assert_eq!(s.per_category_ap[1], CategoryAp { category: 2, ap: -1.0 });
    assert_eq!(eval.precision(0, 0, 1, 0, 2), -1.0);
    assert_eq!(eval.recall(0, 1, 0, 2), -1.0);
    assert!(eval.pr_curve(2, 0).is_empty());
}

#[test]
fn crowd_regions_absorb_detections() {
    let crowd =
        GroundTruth { image: 1, category: 1, bbox_xywh: [0.0, 0.0, 200.0, 200.0], area: 40000.0, iscrowd: true };
    let gts = [crowd, gt(1, 1, [300.0, 300.0, 40.0, 40.0])];
    let preds = [
        // Inside the crowd box: IoU = intersection / detection area = 1, matched to the crowd
        // (repeatedly) and therefore ignored, not false positives.
        pred(1, 1, [10.0, 10.0, 20.0, 20.0], 0.99),
        pred(1, 1, [50.0, 50.0, 30.0, 30.0], 0.98),
        pred(1, 1, [12.0, 11.0, 20.0, 20.0], 0.97),
        pred(1, 1, [300.0, 300.0, 40.0, 40.0], 0.5),
    ];
    let s = run(&[1], &[1], &gts, &preds).into_stats();
    assert_one("map", s.map);
    assert_eq!(s.mar_100, 1.0);
    // Mostly outside the crowd box (intersection / own area = 0.25 < 0.5): a false positive
    // ranked above the true positive.
    let mut preds = preds.to_vec();
    preds.push(pred(1, 1, [190.0, 190.0, 20.0, 20.0], 0.9));
    let eval = run(&[1], &[1], &gts, &preds);
    assert!((eval.stats().map_50 - 0.5).abs() < 1e-12, "{}", eval.stats().map_50);
    // A crowd-only category has nothing to find: -1.
    let s = run(&[1], &[1], &[crowd], &preds).into_stats();
    assert_eq!(s.map, -1.0);
}

#[test]
fn matching_prefers_unmatched_regular_ground_truth() {
    // Two overlapping objects, two detections: the better-scored one takes its best match,
    // the second one must fall back to the remaining object.
    let gts = [gt(1, 1, [0.0, 0.0, 100.0, 100.0]), gt(1, 1, [10.0, 0.0, 100.0, 100.0])];
    let preds = [pred(1, 1, [5.0, 0.0, 100.0, 100.0], 0.9), pred(1, 1, [5.0, 0.0, 100.0, 100.0], 0.8)];
    let s = run(&[1], &[1], &gts, &preds).into_stats();
    assert_eq!(s.map_50, 1.0);
    // Duplicate detection of a single object: second one is a false positive.
    let exact = [pred(1, 1, [0.0, 0.0, 100.0, 100.0], 0.9); 2];
    let s = run(&[1], &[1], &gts[..1], &exact).into_stats();
    assert_one("map", s.map);
    assert_eq!(s.mar_1, 1.0);
    let dup = [pred(1, 1, [0.0, 0.0, 100.0, 100.0], 0.8), pred(1, 1, [0.0, 0.0, 100.0, 100.0], 0.9)];
    let s = run(&[1, 2], &[1], &[gts[0], gt(2, 1, [0.0, 0.0, 50.0, 50.0])], &dup).into_stats();
    // Precision 1 at recall 0.5, nothing further: AP = 51 / 101.
    assert!((s.map_50 - 51.0 / 101.0).abs() < 1e-15, "{}", s.map_50);
}

#[test]
fn area_ranges_use_annotated_area_inclusively() {
    // Box area 40*30 = 1200 (medium), annotated area exactly 32^2: small *and* medium.
    let g = GroundTruth { image: 1, category: 1, bbox_xywh: [0.0, 0.0, 40.0, 30.0], area: 1024.0, iscrowd: false };
    let s = run(&[1], &[1], &[g], &[pred(1, 1, [0.0, 0.0, 40.0, 30.0], 0.5)]).into_stats();
    assert_one("map_small", s.map_small);
    assert_one("map_medium", s.map_medium);
    assert_eq!(s.map_large, -1.0);
    // An unmatched large detection does not hurt the small range, but does hurt "all".
    let preds = [pred(1, 1, [0.0, 0.0, 40.0, 30.0], 0.5), pred(1, 1, [200.0, 200.0, 150.0, 150.0], 0.9)];
    let s = run(&[1], &[1], &[g], &preds).into_stats();
    assert_one("map_small", s.map_small);
    assert!(s.map < 0.6, "{}", s.map);
}

#[test]
fn max_dets_truncate_per_image_by_score() {
    let gts: Vec<GroundTruth> = (0..3).map(|i| gt(1, 1, [i as f64 * 100.0, 0.0, 50.0, 50.0])).collect();
    let preds: Vec<Prediction> =
        (0..3).map(|i| pred(1, 1, [i as f64 * 100.0, 0.0, 50.0, 50.0], 0.5 + i as f64 * 0.1)).collect();
    let s = run(&[1], &[1], &gts, &preds).into_stats();
    assert!((s.mar_1 - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!((s.mar_10, s.mar_100), (1.0, 1.0));
    // Parameters are honoured, with max_dets sorted first.
    let params = CocoParams { max_dets: [2, 1, 3], ..CocoParams::default() };
    let eval = evaluate(&[1], &[1], &gts, &preds, &params);
    assert_eq!(eval.params().max_dets, [1, 2, 3]);
    assert!((eval.stats().mar_10 - 2.0 / 3.0).abs() < 1e-12);
}

#[test]
fn stats_serialize_with_field_names() {
    let s = run(&[1], &[1], &[gt(1, 1, [0.0, 0.0, 10.0, 10.0])], &[]).into_stats();
    let json = serde_json::to_value(&s).unwrap();
    for name in CocoStats::NAMES {
        assert!(json.get(name).is_some(), "{name}");
    }
    let back: CocoStats = serde_json::from_value(json).unwrap();
    assert_eq!(back, s);
}
