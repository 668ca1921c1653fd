//! A trained detection run exported to ONNX: the file carries its task, classes, letterbox preprocessing and the
//! NMS settings validation used, and ONNX Runtime and tract give the boxes and scores libtorch gives on the same
//! letterboxed image (fixed and dynamic batch); after NMS they detect the same objects.

mod common;

use kiln_infer::nms::{nms_per_image, NmsConfig};
use kiln_infer::preprocess::decode_rgb;
use kiln_infer::{Backend, Ep, Model};
use kiln_models::weights::{load_into, HeadPolicy};
use kiln_models::ObjectDetector;
use kiln_train::config::TaskKind;
use kiln_train::detect::synthetic::{generate_scenes, ScenesSpec};
use kiln_train::detect::task::detector_config;
use kiln_train::detect::DetectSettings;
use kiln_train::export::ExportOptions;
use kiln_train::TrainConfig;
use tch::{nn, Device, Kind, Tensor};

#[test]
fn exported_detector_matches_libtorch_on_ort_and_tract() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("scenes");
    generate_scenes(&data, &ScenesSpec { classes: 3, images: (16, 4, 4), size: (96, 64), ..Default::default() })
        .unwrap();
    let config = TrainConfig {
        task: TaskKind::Detect,
        data: data.clone(),
        model: "convnext_atto".into(),
        epochs: 1,
        batch: 8,
        img_size: 96,
        workers: 2,
        device: "cpu".into(),
        project: dir.path().join("runs"),
        ..TrainConfig::default()
    };
    let run = kiln_train::detect::train(&config).unwrap().run;
    let ckpt = kiln_train::checkpoint::load(&run.checkpoint(kiln_train::Which::Best)).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ObjectDetector::new(&vs.root(), &detector_config(&ckpt.state.config, 3).unwrap()).unwrap();
    load_into(&vs, ckpt.weights(), &ckpt.path, HeadPolicy::Strict, &[]).unwrap();
    let image = decode_rgb(&data.join("images/test_00000.png")).unwrap();

    for dynamic_batch in [false, true] {
        let out = dir.path().join(format!("model-{dynamic_batch}.onnx"));
        let options = ExportOptions { dynamic_batch, out: Some(out.clone()), ..Default::default() };
        let report = kiln_train::tasks::export_run(&run, &options).unwrap();
        let m = &report.metadata;
        assert_eq!((m.task.as_str(), m.input.resize.as_str(), m.input.size), ("detect", "letterbox", [96, 96]));
        assert_eq!(m.class_names, ["circle", "square", "triangle"]);
        let nms = m.nms.expect("NMS settings in the metadata");
        assert_eq!((nms.iou_threshold, nms.max_detections), (DetectSettings::default().nms.iou_threshold, 100));
        assert_eq!(m.outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["boxes", "scores"]);

        let batch = if dynamic_batch { 2 } else { 1 };
        for backend in [Backend::Ort(Ep::Cpu), Backend::Tract] {
            let onnx = Model::builder().backend(backend.clone()).threads(1).open(&out).unwrap();
            let preprocess = onnx.preprocess().expect("preprocessing from metadata").clone();
            let mut input = vec![0f32; preprocess.tensor_len() * batch];
            for chunk in input.chunks_mut(preprocess.tensor_len()) {
                preprocess.apply(&image, chunk);
            }
            let outputs = onnx.run(&input, batch).unwrap();
            let (boxes, scores) = (&outputs[0], &outputs[1]);
            assert_eq!((boxes.name.as_str(), scores.name.as_str()), ("boxes", "scores"));
            let reference = tch::no_grad(|| {
                let xs = Tensor::from_slice(&input).view([batch as i64, 3, 96, 96]);
                let head = model.forward_t(&xs, false);
                model.decode(&head, &model.locations(96, 96))
            });
            let flat = |t: &Tensor| Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap();
            let (ref_boxes, ref_scores) = (flat(&reference.0), flat(&reference.1));
            assert_eq!((boxes.data.len(), scores.data.len()), (ref_boxes.len(), ref_scores.len()));
            let box_diff = common::max_rel_diff(&ref_boxes, &boxes.data);
            let score_diff = common::max_abs_diff(&ref_scores, &scores.data);
            assert!(
                box_diff <= 1e-4 && score_diff <= 1e-4,
                "{backend} batch {batch}: boxes {box_diff}, scores {score_diff}"
            );
            // After the metadata's NMS, the same detections.
            let a = boxes.data.len() / 4 / batch;
            let as_boxes = |d: &[f32]| d[..a * 4].chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect::<Vec<_>>();
            let config = NmsConfig { score_threshold: 0.01, ..NmsConfig::default() };
            let ours = nms_per_image(&scores.data[..a * 3], &as_boxes(&boxes.data), 3, &config);
            let theirs = nms_per_image(&ref_scores[..a * 3], &as_boxes(&ref_boxes), 3, &config);
            assert!(!theirs.is_empty(), "the comparison covers some detections");
            assert_eq!(ours.len(), theirs.len(), "{backend}");
            for (x, y) in ours.iter().zip(&theirs) {
                assert_eq!(x.class, y.class);
                assert!((x.score - y.score).abs() < 1e-4);
            }
        }
    }
}

#[test]
fn the_detector_in_kiln_infer_finds_what_validation_found() {
    use kiln_train::detect::annotations::Split;
    use kiln_train::detect::evaluate::evaluate;
    use kiln_train::detect::loader::DetectTransform;
    use kiln_train::detect::task::{make_loader, open_dataset};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("scenes");
    generate_scenes(&data, &ScenesSpec { classes: 2, images: (16, 6, 0), size: (128, 80), ..Default::default() })
        .unwrap();
    let config = TrainConfig {
        task: TaskKind::Detect,
        data: data.clone(),
        model: "convnext_atto".into(),
        epochs: 2,
        batch: 8,
        img_size: 64,
        workers: 1,
        device: "cpu".into(),
        project: dir.path().join("runs"),
        ..TrainConfig::default()
    };
    let run = kiln_train::detect::train(&config).unwrap().run;
    let out = dir.path().join("det.onnx");
    kiln_train::tasks::export_run(&run, &ExportOptions { out: Some(out.clone()), ..Default::default() }).unwrap();
    // Validation's own detections (libtorch), in original pixels.
    let ckpt = kiln_train::checkpoint::load(&run.checkpoint(kiln_train::Which::Best)).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = kiln_train::detect::model::DetectorModel::Fcos(
        ObjectDetector::new(&vs.root(), &detector_config(&ckpt.state.config, 2).unwrap()).unwrap(),
    );
    load_into(&vs, ckpt.weights(), &ckpt.path, HeadPolicy::Strict, &[]).unwrap();
    let saved = &ckpt.state.config;
    let dataset = open_dataset(saved).unwrap();
    let loader = make_loader(saved, &dataset, Split::Val, DetectTransform::Eval, &Default::default()).unwrap();
    let precision = kiln_train::precision::Precision::resolve(saved.amp, false, Device::Cpu).unwrap();
    let settings: DetectSettings = saved.task_settings().unwrap();
    let eval = evaluate(&model, &loader, &precision, &settings, 2, saved.img_size).unwrap();
    let bad = kiln_infer::Classifier::new(Model::builder().open(&out).unwrap()).err().unwrap().to_string();
    assert!(bad.contains("'detect' model, not 'classify'"), "{bad}");
    for backend in [Backend::Ort(Ep::Cpu), Backend::Tract] {
        let detector =
            kiln_infer::Detector::new(Model::builder().backend(backend.clone()).open(&out).unwrap()).unwrap();
        assert_eq!(detector.nms(), &settings.nms, "NMS settings from the metadata");
        let mut total = 0;
        for (index, expected) in &eval.detections {
            let sample = &dataset.val[*index];
            let threshold = settings.nms.score_threshold;
            let (got, expected) =
                (clear_of(&detector.predict_path(&sample.path).unwrap(), threshold), clear_of(expected, threshold));
            assert_eq!(got.len(), expected.len(), "{backend} on {}", sample.path.display());
            // Matched as sets: two boxes whose scores tie to within float noise may come out in either order.
            let mut unused: Vec<_> = expected.iter().collect();
            for a in &got {
                let same = |b: &&kiln_infer::Detection| {
                    a.class == b.class
                        && (a.score - b.score).abs() < 1e-4
                        && a.bbox.iter().zip(&b.bbox).all(|(x, y)| (x - y).abs() < 1e-2)
                };
                let found = unused.iter().position(same);
                assert!(found.is_some(), "{backend}: {a:?} is not among {unused:?} (original pixels)");
                unused.swap_remove(found.unwrap());
                assert!(a.bbox.iter().all(|x| *x >= 0.0 && *x <= sample.width.max(sample.height) as f32));
            }
            total += got.len();
        }
        assert!(total > 0, "some detections were compared");
    }

    // The same model with NMS in its graph (dynamic batch): the same detections, on a batch of images of different
    // sizes; a stricter threshold applies after the graph, a looser one is refused.
    let in_graph = dir.path().join("det-nms.onnx");
    let options =
        ExportOptions { out: Some(in_graph.clone()), nms_in_graph: true, dynamic_batch: true, ..Default::default() };
    let report = kiln_train::tasks::export_run(&run, &options).unwrap();
    let names: Vec<&str> = report.metadata.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, kiln_export::NMS_OUTPUTS);
    assert!(report.metadata.nms.unwrap().in_graph);
    let mut images: Vec<image::RgbImage> = dataset.val.iter().map(|s| decode_rgb(&s.path).unwrap()).collect();
    images.push(image::imageops::resize(&images[0], 200, 150, image::imageops::FilterType::Triangle));
    for backend in [Backend::Ort(Ep::Cpu), Backend::Tract] {
        let open = |path: &std::path::Path| {
            kiln_infer::Detector::new(Model::builder().backend(backend.clone()).open(path).unwrap()).unwrap()
        };
        let (plain, fused) = (open(&out), open(&in_graph));
        assert!(fused.nms_in_graph() && !plain.nms_in_graph());
        assert_eq!(fused.nms(), plain.nms());
        type Batch = [Vec<kiln_infer::nms::Detection>];
        let same = |a: &Batch, b: &Batch, threshold: f32, what: &str| {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                let (x, y) = (clear_of(x, threshold), clear_of(y, threshold));
                assert_eq!(x.len(), y.len(), "{backend} {what}: {x:?} vs {y:?}");
                for (p, q) in x.iter().zip(&y) {
                    assert_eq!(p.class, q.class, "{backend} {what}");
                    assert!((p.score - q.score).abs() < 1e-5, "{backend} {what}: {p:?} vs {q:?}");
                    assert!(p.bbox.iter().zip(&q.bbox).all(|(u, v)| (u - v).abs() < 1e-3), "{p:?} vs {q:?}");
                }
            }
        };
        let expected = plain.predict_batch(&images).unwrap();
        assert!(expected.iter().map(Vec::len).sum::<usize>() > 0);
        same(&fused.predict_batch(&images).unwrap(), &expected, fused.nms().score_threshold, "in-graph NMS");
        let stricter =
            NmsConfig { score_threshold: fused.nms().score_threshold + 0.1, max_detections: 2, ..*fused.nms() };
        let (plain, fused) = (plain.with_nms(stricter).unwrap(), fused.with_nms(stricter).unwrap());
        let (got, expected) = (fused.predict_batch(&images).unwrap(), plain.predict_batch(&images).unwrap());
        same(&got, &expected, stricter.score_threshold, "stricter");
        let looser = NmsConfig { iou_threshold: 0.3, ..stricter };
        let err = fused.with_nms(looser).err().expect("a new IoU cannot be applied after the graph").to_string();
        assert!(err.contains("det-nms.onnx") && err.contains("inside this model's graph"), "{err}");
    }
}

/// The detections scoring clearly above `threshold`. Two runtimes (or one runtime at two batch sizes) compute a
/// score to within float noise of each other, so a box scoring within that noise of the threshold may be kept by one
/// and dropped by the other; only such a box, or a box it alone suppressed (scoring lower still), is left out.
fn clear_of(detections: &[kiln_infer::nms::Detection], threshold: f32) -> Vec<kiln_infer::nms::Detection> {
    const NOISE: f32 = 1e-4;
    detections.iter().filter(|d| d.score >= threshold + NOISE).cloned().collect()
}
