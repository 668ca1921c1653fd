//! Text recognition inference: the recognizer `kiln demo` trains (ConvNeXt dims 32-64-96-128, depths 1-1-2-1,
//! two-layer BiLSTM of 128, 37 classes) on 32×160 lines, on ONNX Runtime (CPU, one intra-op thread) and tract.
//! The bare session run at batch 1 and 16 against `TextRecognizer::predict` / `predict_batch` on decoded rendered
//! lines (fit-height resize, run, greedy CTC per line) and on the PNG file (decoding included).
//!
//! The weights are untrained: decoding cost does not depend on them (greedy reads every frame either way).
//!
//! `cargo bench --bench recognizer` (`make bench`); ORT_DYLIB_PATH must point at ONNX Runtime (the Makefile sets
//! it).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tch::{nn, Device};

use kiln_infer::preprocess::decode_rgb;
use kiln_infer::{Backend, Ep, Model, TextRecognizer};
use kiln_models::TextLineRecognizer;
use kiln_train::config::TaskKind;
use kiln_train::data::Normalize;
use kiln_train::export::ExportOptions;
use kiln_train::ocr::export::{recognizer_onnx, RecognizerGraphSpec};
use kiln_train::ocr::synthetic::{write_text_lines, TextLinesSpec};
use kiln_train::ocr::task::recognizer_config;
use kiln_train::TrainConfig;

const HEIGHT: u32 = 32;
const WIDTH: u32 = 160;

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let lines = dir.path().join("lines");
    let spec = TextLinesSpec { lines: (16, 0, 0), alphabet: "0-9A-Z".into(), length: (5, 9), ..Default::default() };
    write_text_lines(&lines, &spec).unwrap();
    let pngs: Vec<std::path::PathBuf> = (0..16).map(|i| lines.join(format!("train/images/{i:05}.png"))).collect();
    let decoded: Vec<image::RgbImage> = pngs.iter().map(|p| decode_rgb(p).unwrap()).collect();

    let mut config = TrainConfig { task: TaskKind::Ocr, model: "convnext_atto".into(), ..TrainConfig::default() };
    config.set_task_settings(&kiln_train::ocr::OcrSettings {
        dims: Some(vec![32, 64, 96, 128]),
        depths: Some(vec![1, 1, 2, 1]),
        width: WIDTH,
        ..Default::default()
    });
    let charset: Vec<String> = kiln_train::ocr::charset::Charset::parse("0-9A-Z").chars().to_vec();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = TextLineRecognizer::new(&vs.root(), &recognizer_config(&config, charset.len()).unwrap()).unwrap();
    let spec = RecognizerGraphSpec {
        height: HEIGHT,
        width: WIDTH,
        normalize: Normalize::default(),
        charset,
        variant: "convnext_atto".into(),
        training: Default::default(),
    };
    let options = ExportOptions { dynamic_batch: true, ..Default::default() };
    let (bytes, _, _) = tch::no_grad(|| recognizer_onnx(&model, &spec, &options)).unwrap();
    let path = dir.path().join("recognizer.onnx");
    std::fs::write(&path, bytes).unwrap();

    for (name, backend) in [("ort_cpu", Backend::Ort(Ep::Cpu)), ("tract", Backend::Tract)] {
        let recognizer =
            TextRecognizer::new(Model::builder().backend(backend.clone()).threads(1).open(&path).unwrap()).unwrap();
        let pre = recognizer.model().preprocess().unwrap().clone();
        let per = pre.tensor_len();
        let mut tensor = vec![0f32; per * 16];
        for (image, out) in decoded.iter().zip(tensor.chunks_mut(per)) {
            pre.apply(image, out);
        }
        let mut group = c.benchmark_group(format!("recognizer_{HEIGHT}x{WIDTH}_{name}"));
        group.sample_size(20);
        group.throughput(Throughput::Elements(1));
        group.bench_function("session_run_batch1", |b| b.iter(|| recognizer.model().run(&tensor[..per], 1).unwrap()));
        group.bench_function("recognizer_predict_decoded", |b| b.iter(|| recognizer.predict(&decoded[0]).unwrap()));
        group.bench_function("recognizer_predict_png", |b| b.iter(|| recognizer.predict_path(&pngs[0]).unwrap()));
        group.throughput(Throughput::Elements(16));
        group.bench_function("session_run_batch16", |b| b.iter(|| recognizer.model().run(&tensor, 16).unwrap()));
        group.bench_function("recognizer_predict_batch16", |b| b.iter(|| recognizer.predict_batch(&decoded).unwrap()));
        group.finish();
    }
}

criterion_group!(recognizer, benches);
criterion_main!(recognizer);
