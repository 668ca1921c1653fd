//! Detection inference: convnext_atto + FPN + FCOS (20 classes) at 320 px on ONNX Runtime (CPU, one intra-op
//! thread) and tract. The bare session run at batch 1 against `Detector::predict` on a decoded 640×480 image
//! (letterbox, run, NMS, boxes back to the image) and on the JPEG file (decoding included), for both export forms:
//! NMS in kiln-infer (candidates out of the graph) and NMS inside the graph (`--nms-in-graph`).
//!
//! The weights are untrained, so every one of the 2,100 × 20 candidates scores about 0.07, above the 0.05 score
//! threshold: NMS gets its worst case (1,000 candidates after the pre-NMS top-k), not a trained model's few.
//!
//! `cargo bench --bench detector` (`make bench`); ORT_DYLIB_PATH must point at ONNX Runtime (the Makefile sets it).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::SeedableRng;
use tch::{nn, Device};

use kiln_infer::nms::NmsConfig;
use kiln_infer::preprocess::decode_rgb;
use kiln_infer::{Backend, Detector, Ep, Model};
use kiln_models::ObjectDetector;
use kiln_train::data::Normalize;
use kiln_train::detect::export::{detector_onnx, DetectorGraphSpec};
use kiln_train::detect::model::DetectorModel;
use kiln_train::detect::synthetic::{draw_scene, ScenesSpec};
use kiln_train::detect::task::detector_config;
use kiln_train::export::ExportOptions;
use kiln_train::TrainConfig;

const SIZE: u32 = 320;
const CLASSES: usize = 20;

struct Setup {
    _dir: tempfile::TempDir,
    jpeg: std::path::PathBuf,
    plain: std::path::PathBuf,
    in_graph: std::path::PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let spec = ScenesSpec { classes: 3, size: (640, 480), ..Default::default() };
    let (scene, _) = draw_scene(&spec, &mut rng);
    let jpeg = dir.path().join("photo.jpg");
    image::codecs::jpeg::JpegEncoder::new_with_quality(std::fs::File::create(&jpeg).unwrap(), 90)
        .encode_image(&scene)
        .unwrap();

    let vs = nn::VarStore::new(Device::Cpu);
    // The detector `kiln train --task detect --model convnext_atto` builds.
    let config = TrainConfig { model: "convnext_atto".into(), ..TrainConfig::default() };
    let model =
        DetectorModel::Fcos(ObjectDetector::new(&vs.root(), &detector_config(&config, CLASSES).unwrap()).unwrap());
    let spec = DetectorGraphSpec {
        img_size: SIZE,
        normalize: Normalize::default(),
        class_names: (0..CLASSES).map(|i| format!("class{i}")).collect(),
        variant: "convnext_atto".into(),
        nms: NmsConfig::default(),
        training: Default::default(),
        exif: kiln_infer::Exif::Apply,
    };
    let write = |name: &str, nms_in_graph: bool| {
        let options = ExportOptions { nms_in_graph, ..Default::default() };
        let (bytes, _, _) = tch::no_grad(|| detector_onnx(&model, &spec, &options)).unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let (plain, in_graph) = (write("plain.onnx", false), write("nms.onnx", true));
    Setup { _dir: dir, jpeg, plain, in_graph }
}

fn benches(c: &mut Criterion) {
    let s = setup();
    let decoded = decode_rgb(&s.jpeg).unwrap();
    for (name, backend) in [("ort_cpu", Backend::Ort(Ep::Cpu)), ("tract", Backend::Tract)] {
        let open = |path: &std::path::Path| {
            Detector::new(Model::builder().backend(backend.clone()).threads(1).open(path).unwrap()).unwrap()
        };
        let (plain, in_graph) = (open(&s.plain), open(&s.in_graph));
        let detections = plain.predict(&decoded).unwrap().len();
        assert_eq!(in_graph.predict(&decoded).unwrap().len(), detections, "the two forms agree");
        let pre = plain.model().preprocess().unwrap().clone();
        let mut tensor = vec![0f32; pre.tensor_len()];
        pre.apply(&decoded, &mut tensor);
        let mut group = c.benchmark_group(format!("detector_atto_{SIZE}_{name}"));
        group.throughput(Throughput::Elements(1));
        group.sample_size(20);
        group.bench_function("session_run_batch1", |b| b.iter(|| plain.model().run(&tensor, 1).unwrap()));
        group.bench_function("detector_predict_decoded", |b| b.iter(|| plain.predict(&decoded).unwrap()));
        group.bench_function("detector_predict_jpeg", |b| b.iter(|| plain.predict_path(&s.jpeg).unwrap()));
        group.bench_function("in_graph_session_run_batch1", |b| b.iter(|| in_graph.model().run(&tensor, 1).unwrap()));
        group.bench_function("in_graph_predict_jpeg", |b| b.iter(|| in_graph.predict_path(&s.jpeg).unwrap()));
        group.finish();
    }
}

criterion_group!(detector, benches);
criterion_main!(detector);
