//! kiln-infer end to end: a trained run exported to ONNX, classified on ONNX Runtime and tract as libtorch
//! classifies it; raw mode; bad input; sharing a model between threads; the `kiln infer` and `kiln bench` CLI.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_infer::preprocess::decode_rgb;
use kiln_infer::{Backend, ChannelOrder, Classifier, Ep, Error, Model, Preprocess, Resize};
use kiln_train::classify::{self, predict, ExportOptions, PredictOptions};
use kiln_train::tasks::export_run;
use kiln_train::RunDir;

struct Trained {
    _dir: tempfile::TempDir,
    data: PathBuf,
    run: RunDir,
    onnx: PathBuf,
}

fn trained(dynamic_batch: bool) -> Trained {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (10, 3, 4), 21);
    let config = common::quick_config(&data, &dir.path().join("runs"), 2);
    let run = classify::train(&config).unwrap().run;
    let onnx = dir.path().join("model.onnx");
    export_run(&run, &ExportOptions { dynamic_batch, out: Some(onnx.clone()), ..Default::default() }).unwrap();
    Trained { _dir: dir, data, run, onnx }
}

fn test_images(data: &Path) -> Vec<PathBuf> {
    kiln_train::data::expand_inputs(&[data.join("test")]).unwrap()
}

#[test]
fn ort_and_tract_classify_as_libtorch_does() {
    let t = trained(true);
    let files = test_images(&t.data);
    let reference = predict(&t.run, &files, &PredictOptions { top_k: 3, ..Default::default() }).unwrap();
    let images: Vec<_> = files.iter().map(|f| decode_rgb(f).unwrap()).collect();
    for backend in [Backend::Ort(Ep::Cpu), Backend::Tract] {
        let classifier =
            Classifier::new(Model::builder().backend(backend.clone()).threads(1).open(&t.onnx).unwrap()).unwrap();
        assert_eq!(classifier.class_names(), ["circle", "square", "triangle"]);
        let batched = classifier.predict_batch(&images, 3).unwrap();
        for ((file, expected), got) in files.iter().zip(&reference).zip(&batched) {
            let expected = expected.top.as_ref().unwrap();
            let single = classifier.predict_path(file, 3).unwrap();
            for scores in [got, &single] {
                assert_eq!(scores.len(), 3);
                assert_eq!(scores[0].class, expected[0].class, "{backend} on {}", file.display());
                for (a, b) in scores.iter().zip(expected) {
                    assert_eq!(a.index, b.index);
                    assert!((a.probability as f64 - b.probability).abs() < 1e-4, "{backend}: {a:?} vs {b:?}");
                }
            }
        }
    }
}

#[test]
fn a_centre_crop_run_exports_its_eval_resize_and_deploys_as_it_evaluates() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (10, 3, 4), 23);
    let mut config = common::quick_config(&data, &dir.path().join("runs"), 1);
    config.eval_crop_pct = Some(0.9);
    let run = classify::train(&config).unwrap().run;
    let onnx = dir.path().join("crop.onnx");
    export_run(&run, &ExportOptions { out: Some(onnx.clone()), ..Default::default() }).unwrap();
    let model = Model::builder().threads(1).open(&onnx).unwrap();
    let input = &model.metadata().unwrap().input;
    assert_eq!((input.resize.as_str(), input.crop_pct), ("center_crop", Some(0.9)));
    assert_eq!(model.preprocess().unwrap().resize, Resize::CenterCrop { crop_pct: 0.9 });
    // Wide and tall copies of test images: the crop keeps the centre, where stretch would squash.
    let mut files = Vec::new();
    for (i, file) in test_images(&data).iter().take(4).enumerate() {
        let image = decode_rgb(file).unwrap();
        let (w, h) = if i % 2 == 0 { (112, 64) } else { (64, 100) };
        let path = dir.path().join(format!("odd{i}.png"));
        image::imageops::resize(&image, w, h, image::imageops::FilterType::Triangle).save(&path).unwrap();
        files.push(path);
    }
    let reference = predict(&run, &files, &PredictOptions { top_k: 3, ..Default::default() }).unwrap();
    let classifier = Classifier::new(model).unwrap();
    for (file, expected) in files.iter().zip(&reference) {
        let expected = expected.top.as_ref().unwrap();
        let got = classifier.predict_path(file, 3).unwrap();
        for (a, b) in got.iter().zip(expected) {
            assert_eq!(a.index, b.index, "{}", file.display());
            assert!((a.probability as f64 - b.probability).abs() < 1e-4, "{}: {a:?} vs {b:?}", file.display());
        }
    }
}

#[test]
fn a_model_serves_concurrent_callers() {
    let t = trained(false);
    let files = test_images(&t.data);
    for backend in [Backend::Ort(Ep::Cpu), Backend::Tract] {
        let classifier = Arc::new(Classifier::new(Model::builder().backend(backend).open(&t.onnx).unwrap()).unwrap());
        assert_eq!(classifier.model().fixed_batch(), Some(1));
        let serial: Vec<_> = files.iter().map(|f| classifier.predict_path(f, 1).unwrap()).collect();
        let parallel: Vec<Vec<_>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let c = Arc::clone(&classifier);
                    let files = &files;
                    s.spawn(move || files.iter().map(|f| c.predict_path(f, 1).unwrap()).collect::<Vec<_>>())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for results in parallel {
            assert_eq!(results, serial);
        }
        // A fixed-batch model still classifies batches, one run per image.
        let images: Vec<_> = files.iter().take(5).map(|f| decode_rgb(f).unwrap()).collect();
        assert_eq!(classifier.predict_batch(&images, 1).unwrap(), serial[..5].to_vec());
    }
}

fn rewrite_metadata(src: &Path, dst: &Path, edit: impl Fn(&mut onnx_protobuf::ModelProto)) {
    let mut model = kiln_export::from_bytes(&std::fs::read(src).unwrap()).unwrap();
    edit(&mut model);
    std::fs::write(dst, kiln_export::to_bytes(&model).unwrap()).unwrap();
}

#[test]
fn raw_mode_and_bad_models_are_typed_errors() {
    let t = trained(false);
    let dir = t.onnx.parent().unwrap();

    let newer = dir.join("newer.onnx");
    rewrite_metadata(&t.onnx, &newer, |m| {
        let entry = m.metadata_props.iter_mut().find(|p| p.key == "kiln").unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&entry.value).unwrap();
        v["schema_version"] = 7.into();
        entry.value = v.to_string();
    });
    let err = Model::builder().backend(Backend::Tract).open(&newer).err().unwrap();
    assert!(matches!(err, Error::Metadata { .. }), "{err}");
    assert!(err.to_string().contains("version 7") && err.to_string().contains("(1)"), "{err}");

    let bare = dir.join("bare.onnx");
    rewrite_metadata(&t.onnx, &bare, |m| m.metadata_props.clear());
    let model = Model::builder().backend(Backend::Tract).open(&bare).unwrap();
    assert!(model.metadata().is_none());
    assert!(matches!(Classifier::new(model), Err(Error::NoMetadata { .. })));

    let imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    let raw = Preprocess {
        size: [64, 64],
        resize: Resize::Stretch,
        mean: imagenet.0,
        std: imagenet.1,
        channels: ChannelOrder::Rgb,
    };
    let model = Model::builder().backend(Backend::Ort(Ep::Cpu)).raw(raw.clone()).open(&bare).unwrap();
    let names = vec!["a".to_string(), "b".to_string(), "c".to_string()];
    let classifier = Classifier::with_classes(model, names.clone()).unwrap();
    let with_meta = Classifier::new(Model::builder().open(&t.onnx).unwrap()).unwrap();
    let file = &test_images(&t.data)[0];
    let (a, b) = (classifier.predict_path(file, 1).unwrap(), with_meta.predict_path(file, 1).unwrap());
    assert_eq!(a[0].index, b[0].index);
    assert!((a[0].probability - b[0].probability).abs() < 1e-6);

    // The CLI: a model without metadata names the --raw-* flags; with them it classifies as the original does.
    let (bare_arg, file_arg) = (bare.to_str().unwrap(), file.to_str().unwrap());
    let out = kiln(&["infer", "--model", bare_arg, file_arg]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no kiln metadata") && stderr.contains("--raw-size"), "{stderr}");
    let class_names = with_meta.model().metadata().unwrap().class_names.clone();
    let classes = dir.join("classes.txt");
    std::fs::write(&classes, class_names.join("\n")).unwrap();
    let top = |args: &[&str]| -> serde_json::Value {
        let out = kiln(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str::<serde_json::Value>(String::from_utf8_lossy(&out.stdout).trim()).unwrap()["top"].clone()
    };
    let original = top(&["infer", "--model", t.onnx.to_str().unwrap(), "--format", "json", "--top-k", "3", file_arg]);
    let (size, classes_arg) = ("64", classes.to_str().unwrap());
    let raw_cli = ["infer", "--model", bare_arg, "--raw-size", size, "--raw-classes", classes_arg, "--format", "json"];
    let from_raw = top(&[&raw_cli[..], &["--top-k", "3", file_arg]].concat());
    assert_eq!(original, from_raw, "ImageNet mean and std and stretch are the defaults, as kiln trains");
    let indexed = top(&["infer", "--model", bare_arg, "--raw-size", "64", "--format", "json", file_arg]);
    let index = class_names.iter().position(|n| *n == original[0]["class"]).unwrap();
    assert_eq!(indexed[0]["class"], index.to_string(), "without --raw-classes a class is its index");
    let out = kiln(&["infer", "--model", bare_arg, "--raw-size", "64", "--raw-mean", "0.5,0.5", file_arg]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--raw-mean 0.5,0.5"));
    let out = kiln(&["bench", "--model", bare_arg, "--raw-size", "64", "--backends", "tract", "--iters", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("tract") && !stdout.contains("unavailable"), "{stdout}");

    let wrong = Preprocess { size: [96, 96], ..raw };
    let err = Model::builder().raw(wrong).open(&bare).err().unwrap();
    assert!(matches!(err, Error::InvalidInput(_)) && err.to_string().contains("96x96"), "{err}");
    let model = Model::builder().open(&t.onnx).unwrap();
    let err = model.run(&[0.0; 10], 1).unwrap_err().to_string();
    assert!(err.contains("10 values"), "{err}");
    assert!(model.run(&vec![0.0; 2 * 3 * 64 * 64], 2).unwrap_err().to_string().contains("batches of 1"));

    let err = Classifier::new(Model::builder().open(&t.onnx).unwrap()).unwrap().predict_path(&dir.join("none.png"), 1);
    assert!(matches!(err, Err(Error::Image { .. })));
}

#[test]
fn an_execution_provider_that_cannot_load_is_an_error_not_a_cpu_fallback() {
    let t = trained(false);
    for ep in [Ep::Cuda { device: 0 }, Ep::TensorRt { device: 0, fp16: true, cache_dir: None }] {
        let name = ep.provider_name();
        let err =
            Model::builder().backend(Backend::Ort(ep)).open(&t.onnx).err().expect("no GPU provider in the CPU wheel");
        assert!(matches!(err, Error::EpUnavailable { .. }), "{err}");
        assert!(err.to_string().contains(name), "{err}");
    }
}

fn kiln(args: &[&str]) -> std::process::Output {
    common::kiln(args, Path::new("."))
}

#[test]
fn infer_and_bench_commands() {
    let t = trained(true);
    std::fs::write(t.data.join("test/square/broken.png"), b"broken").unwrap();
    let onnx = t.onnx.to_str().unwrap();
    let test_dir = t.data.join("test");
    let out = kiln(&[
        "infer",
        "--model",
        onnx,
        "--format",
        "json",
        "--batch",
        "4",
        "--top-k",
        "2",
        test_dir.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 13);
    assert_eq!(lines.iter().filter(|l| l.get("error").is_some()).count(), 1);
    assert!(lines.iter().filter_map(|l| l.get("top")).all(|top| top.as_array().unwrap().len() == 2));

    let out = kiln(&[
        "infer",
        "--model",
        onnx,
        "--backend",
        "tract",
        "--format",
        "csv",
        test_dir.join("circle").to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("path,rank,class,probability,energy,error") && stdout.lines().count() == 5, "{stdout}");

    // `kiln infer --backend` takes kiln bench's backend strings through the same parser.
    let circle = test_dir.join("circle");
    let out = kiln(&["infer", "--model", onnx, "--backend", "ort-cpu", "--format", "csv", circle.to_str().unwrap()]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).lines().count() == 5);
    let out = kiln(&[
        "infer",
        "--model",
        onnx,
        "--backend",
        "ort-tensorrt:0-fp16",
        "--trt-cache",
        "/tmp",
        circle.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("TensorrtExecutionProvider"), "{stderr}");
    let out = kiln(&["infer", "--model", onnx, "--backend", "onnx", circle.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ort-tensorrt") && stderr.contains("(or ort, with --ep and --device)"), "{stderr}");

    let out = kiln(&["infer", "--model", "/nonexistent/model.onnx", test_dir.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model.onnx"));

    let json = t.onnx.with_extension("bench.json");
    let out = kiln(&[
        "bench",
        "--model",
        onnx,
        "--backends",
        "ort-cpu,ort-cuda,tract",
        "--batch",
        "1,3",
        "--warmup",
        "1",
        "--iters",
        "3",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(rows.len(), 6, "{stdout}");
    let row = |backend: &str, batch: u64| rows.iter().find(|r| r["backend"] == backend && r["batch"] == batch).unwrap();
    assert_eq!(row("ort-cpu", 3)["status"], "CPUExecutionProvider");
    assert!(row("tract", 1)["images_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(row("tract", 3)["runs"], 3);
    assert!(row("ort-cuda:0", 1)["status"]
        .as_str()
        .unwrap()
        .starts_with("unavailable: execution provider CUDAExecutionProvider"));
    assert!(stdout.contains("| ort-cpu | 1 | CPUExecutionProvider |"), "{stdout}");
}
