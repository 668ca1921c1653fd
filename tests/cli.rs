//! The `kiln` binary, as a user runs it: doctor, config errors, train → val / test / predict, bad input.

mod common;

use std::process::Output;

use common::kiln;

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn doctor_reports_libtorch_and_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let out = kiln(&["doctor"], dir.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("libtorch 2.11.0"), "{stdout}");
    assert!(stdout.contains("CUDA: "), "{stdout}");
    if std::env::var_os("ORT_DYLIB_PATH").is_some() {
        assert!(stdout.contains("ONNX Runtime 1.31.1"), "{stdout}");
    }
}

#[test]
fn config_errors_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (3, 0, 0), 1);
    let cfg = dir.path().join("train.yaml");
    std::fs::write(&cfg, "model: convnext_atto\nlearning_rate: 0.1\n").unwrap();
    let out = kiln(&["train", "--data", data.to_str().unwrap(), "--config", cfg.to_str().unwrap()], dir.path());
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("train.yaml") && stderr.contains("learning_rate"), "{stderr}");
    assert!(!dir.path().join("runs").exists(), "no run directory for a config that does not parse");

    let out = kiln(&["train", "--data", "/nonexistent/data", "--epochs", "1"], dir.path());
    assert!(text(&out).1.contains("/nonexistent/data: no such directory"), "{}", text(&out).1);

    // A device no machine has, so that the refusal is tested with or without a GPU (with one, `cuda:0` trained a
    // whole run and asserted nothing).
    let out = kiln(&["train", "--data", data.to_str().unwrap(), "--device", "cuda:99"], dir.path());
    let (_, stderr) = text(&out);
    assert!(!out.status.success() && stderr.contains("cuda:99"), "{stderr}");
    let why = if tch::Cuda::is_available() { "numbered from 0" } else { "CUDA is not available" };
    assert!(stderr.contains(why), "{stderr}");
    assert!(!dir.path().join("runs").exists(), "no run directory for a device that does not exist");

    let bad = dir.path().join("bad.safetensors");
    tch::Tensor::write_safetensors(&[("stem.0.weight", tch::Tensor::zeros([2, 2], tch::kind::FLOAT_CPU))], &bad)
        .unwrap();
    let out = kiln(
        &["train", "--data", data.to_str().unwrap(), "--model", "convnext_atto", "--weights", bad.to_str().unwrap()],
        dir.path(),
    );
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("bad.safetensors") && stderr.contains("stem.0.weight (model [40, 3, 4, 4], file [2, 2])"),
        "{stderr}"
    );
    assert!(stderr.contains("missing from the file"), "{stderr}");
}

#[test]
fn train_then_val_test_and_predict_from_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (12, 4, 4), 2);
    let out = kiln(
        &[
            "train",
            "--task",
            "classify",
            "--data",
            data.to_str().unwrap(),
            "--model",
            "convnext_atto",
            "--img-size",
            "32",
            "--epochs",
            "2",
            "--batch",
            "8",
            "--name",
            "cli",
            "--set",
            "augment.hflip=0",
        ],
        dir.path(),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("test split: 12 images"), "{stdout}");
    let run = dir.path().join("runs/classify/cli");
    let saved = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    assert!(saved.contains("img_size: 32") && saved.contains("hflip: 0"), "{saved}");

    let out = kiln(&["val", "--run", run.to_str().unwrap(), "--checkpoint", "last"], dir.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("val split: 12 images") && stdout.contains("accuracy"), "{stdout}");
    assert!(run.join("val_metrics.json").is_file() && run.join("val_confusion_matrix.png").is_file());

    let out = kiln(&["test", "--run", run.to_str().unwrap()], dir.path());
    assert!(out.status.success() && text(&out).0.contains("test split"), "{}", text(&out).1);

    std::fs::write(data.join("test/circle/broken.jpg"), b"not a jpeg").unwrap();
    let out = kiln(
        &[
            "predict",
            "--run",
            run.to_str().unwrap(),
            "--format",
            "json",
            "--top-k",
            "2",
            data.join("test").to_str().unwrap(),
        ],
        dir.path(),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let predictions: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(predictions.len(), 13);
    let broken: Vec<&serde_json::Value> = predictions.iter().filter(|p| p.get("error").is_some()).collect();
    assert_eq!(broken.len(), 1);
    assert!(broken[0]["path"].as_str().unwrap().ends_with("broken.jpg"));
    for p in predictions.iter().filter(|p| p.get("top").is_some()) {
        let top = p["top"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        let (p0, p1) = (top[0]["probability"].as_f64().unwrap(), top[1]["probability"].as_f64().unwrap());
        assert!(p0 >= p1 && p0 <= 1.0 && p1 >= 0.0);
    }
    assert!(stderr.contains("1 of 13 image(s) could not be read"), "{stderr}");

    let onnx = dir.path().join("cli.onnx");
    let out = kiln(
        &["export", "onnx", "--run", run.to_str().unwrap(), "--dynamic-batch", "--out", onnx.to_str().unwrap()],
        dir.path(),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("exported classify convnext_atto (3 classes, 32 px, fp32, opset 17") && onnx.is_file(),
        "{stdout}"
    );
    let out = kiln(&["export", "onnx", "--run", run.to_str().unwrap(), "--half-io"], dir.path());
    assert!(!out.status.success() && text(&out).1.contains("--half"), "--half-io needs --half");
    let out = kiln(&["export", "onnx", "--run", run.to_str().unwrap(), "--half", "--half-io"], dir.path());
    assert!(out.status.success() && run.join("weights/best-fp16.onnx").is_file(), "{}", text(&out).1);
    let model = kiln_export::from_bytes(&std::fs::read(run.join("weights/best-fp16.onnx")).unwrap()).unwrap();
    let input_type = match &model.graph.input[0].type_.value {
        Some(onnx_protobuf::type_proto::Value::TensorType(t)) => t.elem_type,
        other => panic!("{other:?}"),
    };
    assert_eq!(input_type, 10, "--half-io makes the input float16");

    let out = kiln(&["predict", "--run", run.to_str().unwrap(), "/nonexistent.png"], dir.path());
    assert!(!out.status.success() && text(&out).1.contains("/nonexistent.png"), "{}", text(&out).1);
    let out = kiln(&["val", "--run", dir.path().to_str().unwrap()], dir.path());
    assert!(text(&out).1.contains("not a kiln run directory"), "{}", text(&out).1);
}

#[test]
fn duration_flags_refuse_what_is_not_a_bounded_positive_number() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["--duration=-1", "--duration=nan", "--duration=0", "--duration=1e20"] {
        let out = kiln(&["bench", "--model", "none.onnx", bad], dir.path());
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(stderr.contains("--duration") && !stderr.contains("panicked"), "{bad}: {stderr}");
    }
    // 1e20 seconds panicked in Duration::from_secs_f64 before it was bounded.
    for bad in ["--heartbeat-timeout=1e20", "--heartbeat-timeout=inf", "--heartbeat-timeout=-5"] {
        let out = kiln(&["train", "--data", "none", "--trials", "2", bad], dir.path());
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(stderr.contains("--heartbeat-timeout") && !stderr.contains("panicked"), "{bad}: {stderr}");
    }
}

/// The config file's `task` holds when `--task` is not given (it used to be overwritten with the default,
/// classify), and `--task` still overrides it when given.
#[test]
fn a_config_files_task_is_kept_unless_task_is_given() {
    use kiln_train::detect::synthetic::{generate_scenes, ScenesSpec};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("scenes");
    generate_scenes(&data, &ScenesSpec { classes: 2, images: (4, 2, 2), size: (64, 64), ..Default::default() })
        .unwrap();
    let cfg = dir.path().join("c.yaml");
    let yaml = format!(
        "task: detect\ndata: {}\nimg_size: 64\nbatch: 2\ndevice: cpu\nfast_dev_run: 1\nproject: {}\nname: cfg\n",
        data.display(),
        dir.path().join("runs").display()
    );
    std::fs::write(&cfg, yaml).unwrap();
    let out = kiln(&["train", "--config", cfg.to_str().unwrap()], dir.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("(detect)"), "{stdout}");
    assert!(dir.path().join("runs/detect/cfg/fast_dev_run.json").is_file());
    assert!(!dir.path().join("runs/classify").exists(), "nothing was classified");

    // Given, --task wins over the file: a classification of scene images has no class folders to read.
    let out = kiln(&["train", "--config", cfg.to_str().unwrap(), "--task", "classify"], dir.path());
    assert!(!out.status.success() && text(&out).1.contains("scenes"), "{}", text(&out).1);
    let out = kiln(&["train", "--config", cfg.to_str().unwrap(), "--task", "segment"], dir.path());
    assert!(text(&out).1.contains("unknown task 'segment' (one of: classify, detect, ocr)"), "{}", text(&out).1);
}

/// Every task's isolated step can be benchmarked; OCR's uses its default body.
#[test]
fn bench_train_times_the_ocr_step() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["bench", "train", "--task", "ocr", "--img-size", "64", "--batch", "2", "--steps", "1", "--warmup", "0"];
    let out = kiln(&[&args[..], &["--device", "cpu", "--threads", "1"]].concat(), dir.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("| ocr | vgg_bn | 64 | 2 | cpu | fp32 |"), "{stdout}");
}
