//! Detection end to end on generated scenes: the shared engine trains the FCOS detector from scratch on CPU to a
//! real mAP, writes the run directory, and tests the best checkpoint.

mod common;

use kiln_train::config::TaskKind;
use kiln_train::detect::synthetic::{generate_scenes, ScenesSpec};
use kiln_train::detect::DetectSettings;
use kiln_train::engine::read_results;
use kiln_train::TrainConfig;

/// The scene tests' budget: 192 training images, batch 16, 6 epochs (72 steps; `KILN_DETECT_EPOCHS` changes the
/// epochs), lr 3e-3, no mosaic, scale 0.8-1.2, no drop-path; everything else kiln's default.
const TRAIN_IMAGES: usize = 192;
const BATCH: usize = 16;

fn scene_budget_config(data: &std::path::Path, project: std::path::PathBuf) -> TrainConfig {
    let epochs: usize = std::env::var("KILN_DETECT_EPOCHS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let mut config = TrainConfig {
        task: TaskKind::Detect,
        data: data.to_path_buf(),
        model: "convnext_atto".into(),
        epochs,
        batch: BATCH,
        lr: 3e-3,
        warmup_epochs: 1.0,
        drop_path_rate: 0.0,
        img_size: 128,
        workers: 2,
        device: "cpu".into(),
        save_top_k: 2,
        project,
        ..TrainConfig::default()
    };
    let mut settings = DetectSettings::default();
    (settings.augment.mosaic, settings.augment.scale) = (0.0, [0.8, 1.2]);
    config.set_task_settings(&settings);
    config
}

#[test]
fn a_generated_set_trains_to_a_useful_map() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("scenes");
    let spec = ScenesSpec {
        classes: 2,
        images: (TRAIN_IMAGES, 48, 32),
        size: (128, 96),
        max_objects: 3,
        ..Default::default()
    };
    generate_scenes(&data, &spec).unwrap();
    let config = scene_budget_config(&data, dir.path().join("runs"));
    let epochs = config.epochs;
    let outcome = kiln_train::detect::train(&config).unwrap();
    let run = &outcome.run;
    let rows = read_results(&run.results()).unwrap();
    assert_eq!(rows.len(), epochs);
    assert!(rows.last().unwrap().train_loss() < rows[0].train_loss(), "the loss goes down");
    assert!(rows[0].train_part("box").is_some() && rows[0].val("map_50").is_some());
    let best = outcome.best_val.as_ref().expect("validation metrics");
    eprintln!("best val: {:?}", best.coco);
    assert!(best.coco.map_50 >= 0.5, "val mAP@.5 {} after {epochs} epochs", best.coco.map_50);
    let test = outcome.test.as_ref().expect("a test split");
    assert!(test.metrics.coco.map_50 > 0.3, "test mAP@.5 {}", test.metrics.coco.map_50);
    for file in ["test_pr_curves.png", "test_predictions.png", "val_predictions.png", "curves.png", "dataset.json"] {
        assert!(run.path.join(file).is_file(), "{file}");
    }
    assert!(run.metrics("test").is_file());
    let kept: Vec<_> = std::fs::read_dir(run.weights_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("epoch_"))
        .collect();
    assert_eq!(kept.len(), 2, "save_top_k keeps two epochs: {kept:?}");
}

/// Small objects, many per image (the case the real microscopy set is): 12-32 px shapes, up to 10 an
/// image, on the scene test's budget of 72 steps (6 epochs of 192 images at batch 16).
#[test]
fn small_objects_train_to_a_useful_map_on_the_same_budget() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("small_objects");
    let spec = ScenesSpec {
        classes: 2,
        images: (TRAIN_IMAGES, 48, 0),
        size: (128, 128),
        max_objects: 10,
        scale: (0.1, 0.25),
        seed: 7,
    };
    let summary = generate_scenes(&data, &spec).unwrap();
    assert!(summary.boxes > 5 * summary.images / 2, "{} boxes on {} images", summary.boxes, summary.images);
    let config = scene_budget_config(&data, dir.path().join("runs"));
    let steps = config.epochs * TRAIN_IMAGES.div_ceil(BATCH);
    let outcome = kiln_train::detect::train(&config).unwrap();
    let best = outcome.best_val.as_ref().expect("validation metrics");
    eprintln!("small objects, best val after {steps} steps: {:?}", best.coco);
    assert!(best.coco.map_50 >= 0.5, "val mAP@.5 {} after {steps} steps", best.coco.map_50);
}

#[test]
fn the_cli_trains_and_tests_a_detector() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("scenes");
    let spec = ScenesSpec { classes: 2, images: (16, 8, 8), size: (64, 64), ..Default::default() };
    generate_scenes(&data, &spec).unwrap();
    let data_arg = data.to_string_lossy().into_owned();
    let args = [
        "train",
        "--task",
        "detect",
        "--data",
        &data_arg,
        "--model",
        "convnext_atto",
        "--epochs",
        "1",
        "--batch",
        "8",
        "--img-size",
        "64",
        "--device",
        "cpu",
        "--name",
        "cli",
        // After one epoch few scores reach the default 0.3: a low threshold, recorded in the export's metadata, so
        // that predict and infer below compare detections rather than two empty lists.
        "--set",
        "detect.nms.score_threshold=0.02",
    ];
    let out = common::kiln(&args, dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("mAP@[.5:.95]") && stdout.contains("test (8 images)"), "{stdout}");
    let run = dir.path().join("runs/detect/cli");
    assert!(run.join("results.csv").is_file() && run.join("test_metrics.json").is_file());
    let out = common::kiln(&["val", "--run", &run.to_string_lossy()], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("val (8 images"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let onnx = dir.path().join("det.onnx");
    let out = common::kiln(
        &["export", "onnx", "--run", &run.to_string_lossy(), "--out", &onnx.to_string_lossy()],
        dir.path(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("exported detect convnext_atto"));
    std::fs::write(data.join("images/broken.png"), b"not a png").unwrap();
    let images =
        [data.join("images/test_00000.png"), data.join("images/broken.png"), data.join("images/test_00001.png")];
    let mut args =
        vec!["infer".to_string(), "--model".into(), onnx.to_string_lossy().into(), "--format".into(), "json".into()];
    args.extend(["--score".into(), "0.01".into(), "--max-det".into(), "5".into()]);
    args.extend(images.iter().map(|p| p.to_string_lossy().into_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = common::kiln(&args, dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "one line per image, the broken one included: {stdout}");
    assert!(lines[1]["error"].is_string(), "{}", lines[1]);
    for line in [&lines[0], &lines[2]] {
        let detections = line["detections"].as_array().unwrap();
        assert!(!detections.is_empty() && detections.len() <= 5, "--max-det 5: {line}");
        let bbox = detections[0]["bbox"].as_array().unwrap();
        assert!(bbox.iter().all(|v| (0.0..=64.0).contains(&v.as_f64().unwrap())), "original pixels: {line}");
    }

    // kiln predict (libtorch, from the run) gives the detections kiln infer gives on the exported model.
    let json_lines = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = common::kiln(args, dir.path());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let image_args: Vec<String> = images.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let run_arg = run.to_string_lossy().into_owned();
    let onnx_path = onnx.to_string_lossy().into_owned();
    let mut predict_args = vec!["predict", "--run", run_arg.as_str(), "--format", "json"];
    predict_args.extend(image_args.iter().map(String::as_str));
    let mut infer_args = vec!["infer", "--model", onnx_path.as_str(), "--format", "json"];
    infer_args.extend(image_args.iter().map(String::as_str));
    let (predicted, inferred) = (json_lines(&predict_args), json_lines(&infer_args));
    assert_eq!((predicted.len(), inferred.len()), (3, 3));
    assert!(predicted[1]["error"].is_string(), "the broken image is reported: {}", predicted[1]);
    assert!(inferred[1]["error"].is_string(), "the broken image is reported: {}", inferred[1]);
    let mut compared = 0;
    for (p, i) in predicted.iter().zip(&inferred).filter(|(p, _)| p["error"].is_null()) {
        let (p, i) = (p["detections"].as_array().unwrap(), i["detections"].as_array().unwrap());
        assert_eq!(p.len(), i.len(), "{p:?} vs {i:?}");
        compared += p.len();
        for (a, b) in p.iter().zip(i) {
            assert_eq!(a["class"], b["class"]);
            assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-3);
            for (x, y) in a["bbox"].as_array().unwrap().iter().zip(b["bbox"].as_array().unwrap()) {
                assert!((x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 0.05, "{a} vs {b}");
            }
        }
    }
    assert!(compared > 0, "neither side detected anything: the comparison compared nothing");

    // The same model exported with NMS in its graph (and a lower score threshold baked in) detects the same
    // objects as the plain export given that threshold on the command line; a looser IoU is refused.
    let fused = dir.path().join("det-nms.onnx");
    let fused_arg = fused.to_string_lossy().into_owned();
    let export = ["export", "onnx", "--run", &run_arg, "--out", &fused_arg, "--nms-in-graph", "--score", "0.1"];
    let out = common::kiln(&export, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut plain_args = vec!["infer", "--model", onnx_path.as_str(), "--format", "json", "--score", "0.1"];
    plain_args.extend(image_args.iter().map(String::as_str));
    let mut fused_args = vec!["infer", "--model", fused_arg.as_str(), "--format", "json"];
    fused_args.extend(image_args.iter().map(String::as_str));
    let (plain, in_graph) = (json_lines(&plain_args), json_lines(&fused_args));
    assert!(plain[0]["detections"].as_array().is_some_and(|d| !d.is_empty()), "{}", plain[0]);
    for (p, f) in plain.iter().zip(&in_graph).filter(|(p, _)| p["error"].is_null()) {
        let (p, f) = (p["detections"].as_array().unwrap(), f["detections"].as_array().unwrap());
        assert_eq!(p.len(), f.len(), "{p:?} vs {f:?}");
        for (a, b) in p.iter().zip(f) {
            assert_eq!(a["class"], b["class"]);
            assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-4, "{a} vs {b}");
        }
    }
    let out = common::kiln(&["infer", "--model", &fused_arg, "--iou", "0.3", &image_args[0]], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("inside this model's graph"), "{stderr}");

    // COCO results; a model fused with itself by WBF gives that model's results.
    let onnx_arg = onnx.to_string_lossy().into_owned();
    let test_images: Vec<String> =
        [0, 1].iter().map(|i| data.join(format!("images/test_0000{i}.png")).to_string_lossy().into_owned()).collect();
    let coco = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["infer", "--model", &onnx_arg, "--format", "coco", "--score", "0.05"];
        args.extend_from_slice(extra);
        args.extend(test_images.iter().map(String::as_str));
        let out = common::kiln(&args, dir.path());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let single = coco(&[]);
    assert!(!single.as_array().unwrap().is_empty());
    assert!(single[0]["file_name"].is_string() && single[0]["category"].is_string(), "{}", single[0]);
    // WBF merges boxes overlapping by more than --wbf-iou; at the model's NMS IoU (0.6, which already suppressed
    // every overlap above it) a model fused with itself has nothing of its own left to merge.
    assert_eq!(coco(&["--model", &onnx_arg, "--wbf-iou", "0.6"]), single, "WBF of one model with itself");
    let vis = dir.path().join("vis");
    coco(&["--save-vis", vis.to_str().unwrap()]);
    for i in [0, 1] {
        let drawn = image::open(vis.join(format!("test_0000{i}.png"))).unwrap();
        assert_eq!((drawn.width(), drawn.height()), (64, 64), "one copy per input at its own size");
    }
    let gt = dir.path().join("gt.json");
    let gt_json = serde_json::json!({
        "images": [{"id": 7, "file_name": "test_00000.png", "width": 64, "height": 64}],
        "categories": [{"id": 3, "name": "circle"}, {"id": 5, "name": "square"}],
        "annotations": []
    });
    std::fs::write(&gt, gt_json.to_string()).unwrap();
    let mut args = vec!["infer", "--model", &onnx_arg, "--format", "coco", "--coco-gt", gt.to_str().unwrap()];
    args.extend(test_images.iter().map(String::as_str));
    let out = common::kiln(&args, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("test_00001.png: not an image of --coco-gt"),
        "the image outside the ground truth: {stderr}"
    );
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for r in results.as_array().unwrap() {
        assert_eq!(r["image_id"], 7);
        assert!([3, 5].contains(&r["category_id"].as_i64().unwrap()), "{r}");
    }
}

#[test]
fn a_detection_study_optimises_map_with_the_default_space() {
    let _serial = common::one_training_at_a_time();
    use kiln_train::tune::{run_study, TrialState};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("scenes");
    generate_scenes(&data, &ScenesSpec { classes: 2, images: (16, 8, 0), size: (64, 64), ..Default::default() })
        .unwrap();
    let base = TrainConfig {
        task: TaskKind::Detect,
        data,
        model: "convnext_atto".into(),
        epochs: 1,
        img_size: 64,
        workers: 2,
        device: "cpu".into(),
        project: dir.path().join("runs"),
        ..TrainConfig::default()
    };
    let options = common::sqlite_study(dir.path(), "det", 2);
    let outcome = run_study(&base, &options).unwrap();
    assert_eq!(outcome.trials.len(), 2);
    for trial in &outcome.trials {
        assert_eq!(trial.state, TrialState::Complete, "{:?}", trial.reason);
        assert!(trial.params.contains_key("detect.augment.mosaic"), "the detection space: {:?}", trial.params);
        // The trial's value is its run's validation mAP@[.5:.95].
        let run = dir.path().join(format!("runs/detect/det/trial_{}", trial.number));
        let rows = read_results(&run.join("results.csv")).unwrap();
        assert_eq!(trial.value, rows[0].val("map"), "trial {}", trial.number);
    }
    assert!(outcome.dir.join("best_params.json").is_file());
}

#[test]
fn an_interrupted_detection_run_resumes_to_the_end() {
    let _serial = common::one_training_at_a_time();
    use std::ops::ControlFlow;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("scenes");
    generate_scenes(&data, &ScenesSpec { classes: 2, images: (16, 8, 4), size: (64, 64), ..Default::default() })
        .unwrap();
    let config = TrainConfig {
        task: TaskKind::Detect,
        data,
        model: "convnext_atto".into(),
        epochs: 3,
        batch: 8,
        img_size: 64,
        workers: 2,
        device: "cpu".into(),
        project: dir.path().join("runs"),
        ..TrainConfig::default()
    };
    let interrupted = kiln_train::detect::train_observed(&config, &mut |record| {
        if record.epoch == 1 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert!(interrupted.interrupted && interrupted.test.is_none());
    let run = kiln_train::RunDir::open(&interrupted.run.path).unwrap();
    let resumed = kiln_train::detect::resume(run.clone()).unwrap();
    assert_eq!(resumed.epochs, 3);
    assert!(resumed.test.is_some(), "the finished run is tested");
    let rows = read_results(&run.results()).unwrap();
    assert_eq!(rows.iter().map(|r| r.epoch).collect::<Vec<_>>(), [1, 2, 3]);
    // Classification-only commands refuse a detection run by name.
    let err = kiln_train::classify::predict(&run, &[], &Default::default()).unwrap_err().to_string();
    assert!(err.contains("detect run"), "{err}");
}
