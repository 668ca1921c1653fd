//! Inference: preprocessing a 640×480 JPEG to a 224 px tensor, and convnext_atto at 224 px on ONNX Runtime (CPU)
//! (one intra-op thread) and tract: the bare session run at batch 1 against `Classifier::predict` on a decoded
//! image (pre- and post-processing overhead) and on a file (decoding included).
//!
//! `cargo bench --bench infer` (`make bench`); ORT_DYLIB_PATH must point at ONNX Runtime (the Makefile sets it).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::SeedableRng;
use tch::{nn, Device};

use kiln_infer::preprocess::decode_rgb;
use kiln_infer::{Backend, Classifier, Ep, Model};
use kiln_models::{ClassifierConfig, ImageClassifier};
use kiln_train::classify::{classifier_onnx, ExportOptions, GraphSpec};
use kiln_train::data::Normalize;
use kiln_train::synthetic::{draw_shape, Palette};

struct Setup {
    _dir: tempfile::TempDir,
    jpeg: std::path::PathBuf,
    onnx: std::path::PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let scene = draw_shape(2, 160, Palette::Random, &mut rng);
    let image = image::imageops::resize(&scene, 640, 480, image::imageops::FilterType::Triangle);
    let jpeg = dir.path().join("photo.jpg");
    image::codecs::jpeg::JpegEncoder::new_with_quality(std::fs::File::create(&jpeg).unwrap(), 90)
        .encode_image(&image)
        .unwrap();

    let vs = nn::VarStore::new(Device::Cpu);
    let model = ImageClassifier::new(&vs.root(), &ClassifierConfig::new("convnext_atto", 10)).unwrap();
    let spec = GraphSpec {
        img_size: 224,
        normalize: Normalize::default(),
        eval_crop_pct: None,
        class_names: (0..10).map(|i| format!("class{i}")).collect(),
        variant: "convnext_atto".into(),
        training: Default::default(),
        temperature: None,
    };
    let (bytes, _, _) = tch::no_grad(|| classifier_onnx(&model, &spec, &ExportOptions::default())).unwrap();
    let onnx = dir.path().join("atto.onnx");
    std::fs::write(&onnx, bytes).unwrap();
    Setup { _dir: dir, jpeg, onnx }
}

fn benches(c: &mut Criterion) {
    let s = setup();
    let decoded = decode_rgb(&s.jpeg).unwrap();

    let mut group = c.benchmark_group("preprocess");
    group.throughput(Throughput::Elements(1));
    let model = Model::builder().backend(Backend::Tract).open(&s.onnx).unwrap();
    let pre = model.preprocess().unwrap().clone();
    let mut tensor = vec![0f32; pre.tensor_len()];
    group.bench_function("jpeg_640x480_to_224_tensor", |b| {
        b.iter(|| {
            let image = decode_rgb(&s.jpeg).unwrap();
            pre.apply(&image, &mut tensor);
        })
    });
    group.bench_function("decoded_640x480_to_224_tensor", |b| b.iter(|| pre.apply(&decoded, &mut tensor)));
    group.finish();

    for (name, backend) in [("ort_cpu", Backend::Ort(Ep::Cpu)), ("tract", Backend::Tract)] {
        // One intra-op thread: on a small shared machine a multi-threaded session's run-to-run noise is larger
        // than the overhead being measured.
        let classifier = Classifier::new(Model::builder().backend(backend).threads(1).open(&s.onnx).unwrap()).unwrap();
        pre.apply(&decoded, &mut tensor);
        let mut group = c.benchmark_group(format!("convnext_atto_224_{name}"));
        group.throughput(Throughput::Elements(1));
        group.sample_size(30);
        group.bench_function("session_run_batch1", |b| b.iter(|| classifier.model().run(&tensor, 1).unwrap()));
        group.bench_function("classifier_predict_decoded", |b| b.iter(|| classifier.predict(&decoded, 5).unwrap()));
        group.bench_function("classifier_predict_jpeg", |b| b.iter(|| classifier.predict_path(&s.jpeg, 5).unwrap()));
        group.finish();
    }
}

criterion_group!(infer, benches);
criterion_main!(infer);
