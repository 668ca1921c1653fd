//! ONNX export against libtorch: the exported graph, run by ONNX Runtime (CPU, full graph optimisation) and by
//! tract (`into_optimized`), computes what the libtorch model computes: logits within 1e-4 in fp32 and 1e-2 in
//! fp16, same argmax; static and dynamic batch; deterministic bytes; metadata round trip; bad input.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln_export::ModelMetadata;
use kiln_infer::preprocess::decode_rgb;
use kiln_models::convnext::ConvNextConfig;
use kiln_models::weights::{load_safetensors, HeadPolicy};
use kiln_models::{ClassifierConfig, ImageClassifier};
use kiln_train::classify::transform::{transform_into, Transform};
use kiln_train::classify::{self, classifier_onnx, ExportOptions, GraphSpec};
use kiln_train::data::Normalize;
use kiln_train::tasks::export_run;
use kiln_train::{checkpoint, RunDir, Which};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};
use tract_onnx::prelude::*;

/// Logits and probabilities of one run, flattened.
struct Outputs {
    logits: Vec<f32>,
    probs: Vec<f32>,
}

fn ort_env() -> &'static ort::environment::Environment {
    static ENV: OnceLock<ort::environment::Environment> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = std::env::var("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH (set by make) points at ONNX Runtime");
        ort::init_from(path).unwrap().build().unwrap()
    })
}

fn run_ort(bytes: &[u8], input: &[f32], shape: [usize; 4]) -> Outputs {
    let mut session = Session::builder(ort_env())
        .unwrap()
        .with_optimization_level(GraphOptimizationLevel::All)
        .unwrap()
        .commit_from_memory(bytes)
        .unwrap();
    let tensor = ort::value::Tensor::from_array((shape, input.to_vec())).unwrap();
    let outputs = session.run(ort::inputs!["images" => tensor]).unwrap();
    let get = |name: &str| outputs[name].try_extract_tensor::<f32>().unwrap().1.to_vec();
    Outputs { logits: get("logits"), probs: get("probs") }
}

fn run_tract(bytes: &[u8], input: &[f32], shape: [usize; 4]) -> Outputs {
    let model = tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(bytes))
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let tensor = tract_onnx::prelude::Tensor::from_shape(&shape, input).unwrap();
    let out = model.run(tvec!(tensor.into())).unwrap();
    let get = |i: usize| out[i].to_plain_array_view::<f32>().unwrap().iter().copied().collect();
    Outputs { logits: get(0), probs: get(1) }
}

fn libtorch_logits(model: &ImageClassifier, input: &[f32], shape: [usize; 4]) -> Vec<f32> {
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let xs = Tensor::from_slice(input).view(dims.as_slice());
    let logits = tch::no_grad(|| model.forward_t(&xs, false));
    Vec::try_from(logits.flatten(0, -1)).unwrap()
}

fn argmax(rows: &[f32], classes: usize) -> Vec<usize> {
    rows.chunks(classes).map(|r| r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0).collect()
}

/// Compares libtorch with ORT and tract on `input`.
fn check(label: &str, model: &ImageClassifier, bytes: &[u8], input: &[f32], shape: [usize; 4], tolerance: f32) {
    let expected = libtorch_logits(model, input, shape);
    let classes = expected.len() / shape[0];
    for (runtime, out) in [("ort", run_ort(bytes, input, shape)), ("tract", run_tract(bytes, input, shape))] {
        let diff = common::max_abs_diff(&expected, &out.logits);
        eprintln!("{label} on {runtime}: max |logits diff| {diff:.2e}");
        assert!(diff <= tolerance, "{label} on {runtime}: logits differ by {diff:e} (tolerance {tolerance:e})");
        assert_eq!(argmax(&expected, classes), argmax(&out.logits, classes), "{label} on {runtime}: argmax");
        for row in out.probs.chunks(classes) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-2, "{label} on {runtime}: probabilities sum to 1");
        }
    }
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/convnext_parity")
}

fn fixture_model(vs: &nn::VarStore, case: &str, conv_mlp: bool) -> ImageClassifier {
    let backbone =
        ConvNextConfig { depths: vec![1, 1, 2, 1], dims: vec![8, 16, 24, 32], conv_mlp, ..ConvNextConfig::atto() };
    let model = ImageClassifier::with_backbone(&vs.root(), &ClassifierConfig::new("custom", 5), &backbone).unwrap();
    load_safetensors(vs, &fixture().join(case).join("model.safetensors"), HeadPolicy::Strict).unwrap();
    model
}

fn spec(img_size: u32, classes: usize, variant: &str) -> GraphSpec {
    GraphSpec {
        img_size,
        normalize: Normalize::default(),
        eval_crop_pct: None,
        class_names: (0..classes).map(|i| format!("c{i}")).collect(),
        variant: variant.into(),
        training: Default::default(),
        temperature: None,
    }
}

fn random_input(batch: usize, size: usize, seed: i64) -> Vec<f32> {
    tch::manual_seed(seed);
    Vec::try_from(Tensor::randn([(batch * 3 * size * size) as i64], (Kind::Float, Device::Cpu))).unwrap()
}

#[test]
fn both_block_types_match_libtorch_at_every_opset_and_in_fp16() {
    for (case, conv_mlp) in [("conv_mlp", true), ("linear_mlp", false)] {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = fixture_model(&vs, case, conv_mlp);
        let input = random_input(2, 64, 1);
        for opset in [13, 16, 17, 18, 19, 20, 21] {
            let options = ExportOptions { opset, dynamic_batch: true, ..Default::default() };
            let (bytes, _, _) = classifier_onnx(&model, &spec(64, 5, "custom"), &options).unwrap();
            check(&format!("{case} opset {opset}"), &model, &bytes, &input, [2, 3, 64, 64], 1e-4);
        }
        let half = ExportOptions { half: true, dynamic_batch: true, ..Default::default() };
        let (bytes, meta, _) = classifier_onnx(&model, &spec(64, 5, "custom"), &half).unwrap();
        assert_eq!((meta.precision.as_str(), meta.input.dtype.as_str()), ("fp16", "float32"));
        check(&format!("{case} fp16"), &model, &bytes, &input, [2, 3, 64, 64], 1e-2);
    }
}

#[test]
fn convnext_tiny_matches_libtorch() {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ImageClassifier::new(&vs.root(), &ClassifierConfig::new("convnext_tiny", 7)).unwrap();
    // Layer scales start at 1e-6, which would hide the blocks: give them weight.
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.ends_with("gamma") {
                let _ = t.fill_(0.5);
            }
        }
    });
    let input = random_input(1, 64, 2);
    let (bytes, _, _) = classifier_onnx(&model, &spec(64, 7, "convnext_tiny"), &ExportOptions::default()).unwrap();
    check("convnext_tiny", &model, &bytes, &input, [1, 3, 64, 64], 1e-4);
}

/// Real images, preprocessed as training evaluates them.
fn real_batch(dir: &Path, n: usize, size: u32) -> Vec<f32> {
    let mut files: Vec<PathBuf> = walk(dir);
    files.sort();
    let mut out = vec![0f32; n * 3 * (size * size) as usize];
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    for (file, chunk) in files.iter().cycle().zip(out.chunks_mut(3 * (size * size) as usize)) {
        let image = decode_rgb(file).unwrap();
        transform_into(&image, size, &Transform::Eval, &Normalize::default(), &mut rng, chunk);
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn an_exported_run_matches_its_checkpoint_on_real_images() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (10, 3, 3), 4);
    let config = common::quick_config(&data, &dir.path().join("runs"), 1);
    let outcome = classify::train(&config).unwrap();
    let run = &outcome.run;

    let ckpt = checkpoint::load(&run.checkpoint(Which::Best)).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ImageClassifier::new(&vs.root(), &ClassifierConfig::new("convnext_atto", 3)).unwrap();
    kiln_models::weights::load_into(&vs, ckpt.weights(), &ckpt.path, HeadPolicy::Strict, &[]).unwrap();

    let fixed = export_run(run, &ExportOptions::default()).unwrap();
    assert_eq!(fixed.path, run.path.join("weights/best.onnx"));
    let bytes = std::fs::read(&fixed.path).unwrap();
    check("atto batch 1", &model, &bytes, &real_batch(&data.join("test"), 1, 64), [1, 3, 64, 64], 1e-4);

    let dynamic = ExportOptions { dynamic_batch: true, out: Some(dir.path().join("dyn.onnx")), ..Default::default() };
    export_run(run, &dynamic).unwrap();
    let bytes = std::fs::read(dir.path().join("dyn.onnx")).unwrap();
    for batch in [1, 7] {
        let input = real_batch(&data.join("test"), batch, 64);
        check(&format!("atto dynamic batch {batch}"), &model, &bytes, &input, [batch, 3, 64, 64], 1e-4);
    }

    let half = export_run(run, &ExportOptions { half: true, ..Default::default() }).unwrap();
    assert!(half.path.ends_with("weights/best-fp16.onnx"));
    let bytes = std::fs::read(&half.path).unwrap();
    check("atto fp16", &model, &bytes, &real_batch(&data.join("test"), 1, 64), [1, 3, 64, 64], 1e-2);
}

#[test]
fn export_is_deterministic_and_its_metadata_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (6, 2, 2), 8);
    let config = common::quick_config(&data, &dir.path().join("runs"), 1);
    let run = classify::train(&config).unwrap().run;
    let a = dir.path().join("a.onnx");
    let b = dir.path().join("b.onnx");
    let report = export_run(&run, &ExportOptions { out: Some(a.clone()), ..Default::default() }).unwrap();
    export_run(&run, &ExportOptions { out: Some(b.clone()), ..Default::default() }).unwrap();
    let bytes = std::fs::read(&a).unwrap();
    assert_eq!(bytes, std::fs::read(&b).unwrap(), "the same checkpoint gives byte-identical files");

    let model = kiln_export::from_bytes(&bytes).unwrap();
    let meta = ModelMetadata::from_model(&model).unwrap().expect("kiln metadata");
    assert_eq!(meta, report.metadata);
    assert_eq!(meta.class_names, ["circle", "square", "triangle"]);
    assert_eq!((meta.input.size, meta.input.shape.clone()), ([64, 64], vec![Some(1), Some(3), Some(64), Some(64)]));
    assert_eq!(meta.training.epoch, 1);
    assert!(meta.training.metrics.as_ref().unwrap()["accuracy"].is_number());
    assert_eq!(model.graph.input[0].name, "images");
    assert_eq!(model.graph.output.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["logits", "probs"]);
    assert!(model.graph.initializer.iter().any(|t| t.name == "stages.2.blocks.5.mlp.fc1.weight"));
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn bad_exports_are_clear_errors_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (6, 2, 2), 6);
    let config = common::quick_config(&data, &dir.path().join("runs"), 1);
    let run = classify::train(&config).unwrap().run;
    let weights = run.weights_dir();
    let before = files_in(&weights);

    let err = export_run(&run, &ExportOptions { opset: 11, ..Default::default() }).unwrap_err().to_string();
    assert!(err.contains("opset 11") && err.contains("13 to 21"), "{err}");
    let out = dir.path().join("missing/dir/m.onnx");
    let err = export_run(&run, &ExportOptions { out: Some(out), ..Default::default() }).unwrap_err().to_string();
    assert!(err.contains("missing/dir/m.onnx") && err.contains("does not exist"), "{err}");
    let err = export_run(&run, &ExportOptions { nms_in_graph: true, ..Default::default() }).unwrap_err().to_string();
    assert!(err.contains("NMS settings are for detection runs"), "{err}");

    let mut ckpt = checkpoint::load(&run.checkpoint(Which::Best)).unwrap();
    ckpt.state.config.model = "resnet50".into();
    let tensors: Vec<(String, Tensor)> = ckpt.tensors.into_iter().collect();
    checkpoint::save(&run.checkpoint(Which::Last), &tensors, &ckpt.state).unwrap();
    let err = export_run(&run, &ExportOptions { which: Which::Last, ..Default::default() }).unwrap_err().to_string();
    assert!(err.contains("resnet50") && err.contains("convnext_tiny"), "{err}");
    assert_eq!(files_in(&weights), before, "no partial or temp file");

    std::fs::remove_file(run.checkpoint(Which::Best)).unwrap();
    let err = export_run(&RunDir::open(&run.path).unwrap(), &ExportOptions::default()).unwrap_err().to_string();
    assert!(err.contains("best.safetensors") && err.contains("no such checkpoint"), "{err}");
    assert!(!weights.join("best.onnx").exists());
}

#[test]
fn a_calibrated_export_divides_the_logits_by_the_temperature_fitted_on_val() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (10, 6, 3), 6);
    let mut config = common::quick_config(&data, &dir.path().join("runs"), 2);
    config.img_size = 32;
    let outcome = classify::train(&config).unwrap();
    let run = &outcome.run;
    let ckpt = checkpoint::load(&run.checkpoint(Which::Best)).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ImageClassifier::new(&vs.root(), &ClassifierConfig::new("convnext_atto", 3)).unwrap();
    kiln_models::weights::load_into(&vs, ckpt.weights(), &ckpt.path, HeadPolicy::Strict, &[]).unwrap();

    // No calibration.json yet: the export fits the temperature on the val split and saves it.
    let options = ExportOptions { calibrated: true, dynamic_batch: true, ..Default::default() };
    let report = export_run(run, &options).unwrap();
    let saved = classify::calibration::read_calibration(run).unwrap().expect("calibration.json written");
    let scaling = report.metadata.temperature_scaling.clone().expect("the metadata records the temperature");
    assert_eq!((scaling.temperature, scaling.images, scaling.fitted_on.as_str()), (saved.temperature, 18, "val"));
    assert!(scaling.nll_after <= scaling.nll_before + 1e-12, "{scaling:?}");
    assert!(saved.temperature != 1.0);

    let bytes = std::fs::read(&report.path).unwrap();
    let back = ModelMetadata::from_model(&kiln_export::from_bytes(&bytes).unwrap()).unwrap().expect("kiln metadata");
    assert_eq!(back.temperature_scaling, Some(scaling.clone()));
    let input = real_batch(&data.join("test"), 5, 32);
    let shape = [5, 3, 32, 32];
    let t = saved.temperature as f32;
    let logits: Vec<f32> = libtorch_logits(&model, &input, shape).iter().map(|z| z / t).collect();
    let probs: Vec<f32> = {
        let scaled = Tensor::from_slice(&logits).view([5, 3]);
        Vec::try_from(scaled.softmax(-1, Kind::Float).flatten(0, -1)).unwrap()
    };
    for (name, out) in [("ort", run_ort(&bytes, &input, shape)), ("tract", run_tract(&bytes, &input, shape))] {
        assert!(
            common::max_abs_diff(&out.probs, &probs) < 1e-5,
            "{name}: probs differ by {}",
            common::max_abs_diff(&out.probs, &probs)
        );
        assert!(
            common::max_abs_diff(&out.logits, &logits) < 1e-4,
            "{name}: logits differ by {}",
            common::max_abs_diff(&out.logits, &logits)
        );
    }

    // A saved calibration for this checkpoint is reused, not refitted.
    let mut edited = saved.clone();
    edited.temperature = 2.5;
    std::fs::write(classify::calibration::calibration_path(run), serde_json::to_vec(&edited).unwrap()).unwrap();
    let again = export_run(run, &ExportOptions { out: Some(dir.path().join("t.onnx")), ..options.clone() }).unwrap();
    assert_eq!(again.metadata.temperature_scaling.unwrap().temperature, 2.5);
    // An uncalibrated export records none.
    let plain = export_run(run, &ExportOptions { out: Some(dir.path().join("p.onnx")), ..Default::default() }).unwrap();
    assert_eq!(plain.metadata.temperature_scaling, None);
}
