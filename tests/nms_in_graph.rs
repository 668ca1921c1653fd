//! kiln-export's in-graph NMS (ONNX NonMaxSuppression between two TopKs) against kiln-infer's `nms_per_image`,
//! on ONNX Runtime and tract: random dense detector outputs with degenerate boxes, near-duplicates, scores on the
//! threshold, a pre-NMS top-k that truncates, class-aware and class-agnostic, a batch whose images keep 0 to
//! `max_detections` boxes.

use kiln_export::{emit_nms, Dim, ElemType, Graph, NmsSettings, NMS_OUTPUTS};
use kiln_infer::nms::{nms_per_image, Detection, NmsConfig};
use kiln_infer::{Backend, Ep, Model};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const LOCATIONS: usize = 120;
const CLASSES: usize = 3;
const BATCH: usize = 3;

/// A graph whose one input `[N, 1, A, 4 + C]` holds each image's boxes and scores side by side, ending in NMS.
fn nms_graph(path: &std::path::Path, settings: &NmsSettings, dynamic_batch: bool) {
    let mut g = Graph::new(17, ElemType::F32).unwrap();
    let batch = if dynamic_batch { Dim::Symbolic("batch".into()) } else { Dim::Fixed(BATCH as i64) };
    let (a, c) = (LOCATIONS as i64, CLASSES as i64);
    let input =
        g.input("images", ElemType::F32, &[batch.clone(), Dim::Fixed(1), Dim::Fixed(a), Dim::Fixed(4 + c)]).unwrap();
    let shape = g.constant_i64("shape", &[0, a, 4 + c]).unwrap();
    let rows = g.op("Reshape", &[&input, &shape], vec![]).unwrap();
    let part = |g: &mut Graph, start: i64, end: i64| {
        let (s, e, axis) = (
            g.constant_i64("s", &[start]).unwrap(),
            g.constant_i64("e", &[end]).unwrap(),
            g.constant_i64("axis", &[2]).unwrap(),
        );
        g.op("Slice", &[&rows, &s, &e, &axis], vec![]).unwrap()
    };
    let boxes = part(&mut g, 0, 4);
    let scores = part(&mut g, 4, 4 + c);
    let out = emit_nms(&mut g, &boxes, &scores, a, c, settings).unwrap();
    let m = Dim::Fixed(settings.max_detections as i64);
    g.output(&out.num_detections, NMS_OUTPUTS[0], ElemType::I64, std::slice::from_ref(&batch)).unwrap();
    g.output(&out.boxes, NMS_OUTPUTS[1], ElemType::F32, &[batch.clone(), m.clone(), Dim::Fixed(4)]).unwrap();
    g.output(&out.scores, NMS_OUTPUTS[2], ElemType::F32, &[batch.clone(), m.clone()]).unwrap();
    g.output(&out.classes, NMS_OUTPUTS[3], ElemType::I64, &[batch, m]).unwrap();
    let bytes = kiln_export::to_bytes(&g.into_model("nms", &[])).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Boxes clustered around a few objects (so suppression has work), some degenerate; scores with a few exactly on
/// the threshold, image 2 entirely below it.
fn random_outputs(rng: &mut StdRng, threshold: f32) -> Vec<(Vec<[f32; 4]>, Vec<f32>)> {
    (0..BATCH)
        .map(|image| {
            let centres: Vec<(f32, f32)> =
                (0..6).map(|_| (rng.random_range(10.0..90.0), rng.random_range(10.0..90.0))).collect();
            let boxes = (0..LOCATIONS)
                .map(|i| {
                    let (cx, cy) = centres[i % centres.len()];
                    let (w, h) = (rng.random_range(4.0..30.0f32), rng.random_range(4.0..30.0f32));
                    let (x, y) = (cx + rng.random_range(-4.0..4.0), cy + rng.random_range(-4.0..4.0));
                    match i % 17 {
                        0 => [x, y, x, y + h],     // zero width
                        1 => [x + w, y, x, y + h], // inverted
                        _ => [x - w / 2.0, y - h / 2.0, x + w / 2.0, y + h / 2.0],
                    }
                })
                .collect();
            let scores = (0..LOCATIONS * CLASSES)
                .map(|j| match (image, j % 41) {
                    (2, _) => rng.random_range(0.0..threshold * 0.99),
                    (_, 0) => threshold,
                    _ => rng.random_range(0.0f32..1.0),
                })
                .collect();
            (boxes, scores)
        })
        .collect()
}

fn graph_detections(outputs: &[kiln_infer::Output], image: usize, max: usize) -> Vec<Detection> {
    let count = outputs[0].data[image] as usize;
    (0..count)
        .map(|j| {
            let slot = image * max + j;
            let b = &outputs[1].data[slot * 4..slot * 4 + 4];
            Detection {
                bbox: [b[0], b[1], b[2], b[3]],
                score: outputs[2].data[slot],
                class: outputs[3].data[slot] as usize,
            }
        })
        .collect()
}

#[test]
fn in_graph_nms_keeps_what_nms_per_image_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let mut compared = 0;
    for (case, (class_agnostic, pre_nms_top_k, max_detections)) in
        [(false, 1000, 100), (false, 40, 100), (true, 1000, 100), (false, 1000, 5), (true, 30, 8)]
            .into_iter()
            .enumerate()
    {
        let config =
            NmsConfig { iou_threshold: 0.5, score_threshold: 0.3, max_detections, class_agnostic, pre_nms_top_k };
        let settings = NmsSettings {
            iou_threshold: config.iou_threshold,
            score_threshold: config.score_threshold,
            max_detections,
            class_agnostic,
            pre_nms_top_k,
            in_graph: true,
        };
        let images = random_outputs(&mut rng, config.score_threshold);
        let mut input = Vec::new();
        for (boxes, scores) in &images {
            for (b, s) in boxes.iter().zip(scores.chunks_exact(CLASSES)) {
                input.extend_from_slice(b);
                input.extend_from_slice(s);
            }
        }
        for dynamic_batch in [false, true] {
            let path = dir.path().join(format!("nms-{case}-{dynamic_batch}.onnx"));
            nms_graph(&path, &settings, dynamic_batch);
            for backend in [Backend::Ort(Ep::Cpu), Backend::Tract] {
                let model = Model::builder().backend(backend.clone()).threads(1).open(&path).unwrap();
                let outputs = model.run(&input, BATCH).unwrap();
                let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
                assert_eq!(names, NMS_OUTPUTS);
                assert_eq!(outputs[1].shape, [BATCH, max_detections, 4]);
                for (image, (boxes, scores)) in images.iter().enumerate() {
                    let expected = nms_per_image(scores, boxes, CLASSES, &config);
                    let got = graph_detections(&outputs, image, max_detections);
                    let what = format!("case {case} ({config:?}), {backend}, dynamic {dynamic_batch}, image {image}");
                    assert_eq!(got, expected, "{what}");
                    if image == 2 {
                        assert!(got.is_empty(), "{what}: every score is below the threshold");
                    } else {
                        assert!(!got.is_empty(), "{what}");
                    }
                    // Padding: zeros and class -1.
                    for slot in got.len()..max_detections {
                        let at = image * max_detections + slot;
                        assert_eq!((outputs[2].data[at], outputs[3].data[at]), (0.0, -1.0), "{what}");
                    }
                    compared += got.len();
                }
            }
        }
        if max_detections == 5 {
            assert!(images[..2].iter().all(|(b, s)| nms_per_image(s, b, CLASSES, &config).len() == 5), "max reached");
        }
    }
    assert!(compared > 200, "{compared} detections compared");
}
