//! Faster R-CNN (`detect.head: faster_rcnn`) end to end on generated scenes: the shared engine trains it from scratch
//! on CPU to a real mAP with the same data, evaluation and run directory as FCOS.

mod common;

use kiln_models::faster_rcnn::AnchorConfig;
use kiln_train::config::TaskKind;
use kiln_train::detect::settings::DetectHead;
use kiln_train::detect::synthetic::{generate_scenes, ScenesSpec};
use kiln_train::detect::DetectSettings;
use kiln_train::engine::read_results;
use kiln_train::TrainConfig;

/// The budget: 192 training images of 128 × 96 (up to 3 shapes each, 12-45 % of the short side), batch 16,
/// `KILN_DETECT_EPOCHS` epochs (default 6: 72 steps), lr 1e-3, no mosaic, scale 0.8-1.2, anchors 16-256 for
/// 128-pixel inputs (torchvision's 32-512 are sized for 800), and a CPU-sized second stage: 128 sampled proposals
/// per image (torchvision's 512) into a box head 256 wide (its 1024).
fn config(data: &std::path::Path, project: std::path::PathBuf) -> TrainConfig {
    let epochs: usize = std::env::var("KILN_DETECT_EPOCHS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let mut config = TrainConfig {
        task: TaskKind::Detect,
        data: data.to_path_buf(),
        model: "convnext_atto".into(),
        epochs,
        batch: 16,
        lr: 1e-3,
        warmup_epochs: 1.0,
        drop_path_rate: 0.0,
        img_size: 128,
        workers: 2,
        device: "cpu".into(),
        project,
        ..TrainConfig::default()
    };
    let mut settings = DetectSettings { head: DetectHead::FasterRcnn, ..DetectSettings::default() };
    settings.anchors =
        AnchorConfig { sizes: [16.0, 32.0, 64.0, 128.0, 256.0].map(|s| vec![s]).to_vec(), ..AnchorConfig::default() };
    (settings.augment.mosaic, settings.augment.scale) = (0.0, [0.8, 1.2]);
    (settings.roi_heads.batch_size_per_image, settings.roi_heads.representation_size) = (128, 256);
    config.set_task_settings(&settings);
    config
}

#[test]
fn a_generated_set_trains_faster_rcnn_to_a_useful_map() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("scenes");
    let spec = ScenesSpec { classes: 2, images: (192, 48, 32), size: (128, 96), max_objects: 3, ..Default::default() };
    generate_scenes(&data, &spec).unwrap();
    let config = config(&data, dir.path().join("runs"));
    let epochs = config.epochs;
    let outcome = kiln_train::detect::train(&config).unwrap();
    let rows = read_results(&outcome.run.results()).unwrap();
    assert_eq!(rows.len(), epochs);
    for part in ["rpn_obj", "rpn_box", "cls", "box"] {
        assert!(rows[0].train_part(part).is_some(), "results.csv has train_{part}");
    }
    assert!(rows[0].train_part("ctr").is_none(), "no FCOS centerness column");
    assert!(rows.last().unwrap().train_loss() < rows[0].train_loss(), "the loss goes down");
    let best = outcome.best_val.as_ref().expect("validation metrics");
    eprintln!("best val: {:?}", best.coco);
    for (i, row) in rows.iter().enumerate() {
        eprintln!("epoch {}: loss {:.4} val map50 {:?}", i + 1, row.train_loss(), row.val("map_50"));
    }
    assert!(best.coco.map_50 >= 0.5, "val mAP@.5 {} after {epochs} epochs", best.coco.map_50);
    let test = outcome.test.as_ref().expect("a test split");
    assert!(test.metrics.coco.map_50 > 0.3, "test mAP@.5 {}", test.metrics.coco.map_50);
}

/// A short Faster R-CNN run exported with `kiln export onnx`'s code: the file opens as a `Detector` on ONNX Runtime
/// and finds what validation found on libtorch; tract is refused by name (it has no `RoiAlign`), never run.
#[test]
fn the_exported_two_stage_detector_finds_what_validation_found_and_tract_is_refused() {
    use kiln_infer::{Backend, Ep, Model};
    use kiln_train::detect::annotations::Split;
    use kiln_train::detect::evaluate::evaluate;
    use kiln_train::detect::loader::DetectTransform;
    use kiln_train::detect::model::DetectorModel;
    use kiln_train::detect::task::{make_loader, open_dataset};
    use kiln_train::export::ExportOptions;
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("scenes");
    generate_scenes(&data, &ScenesSpec { classes: 2, images: (16, 6, 0), size: (128, 80), ..Default::default() })
        .unwrap();
    let mut config = config(&data, dir.path().join("runs"));
    (config.epochs, config.batch, config.img_size) = (2, 8, 64);
    // The Faster R-CNN seed's objective: 0.5 · mAP@.5 + 0.5 · F1 chooses the best checkpoint.
    let mut settings: DetectSettings = config.task_settings().unwrap();
    settings.objective = kiln_train::detect::settings::DetectObjective::Map50F1;
    // Two epochs leave the scores low: a low threshold, so that both sides have detections to compare.
    settings.nms.score_threshold = 0.001;
    config.set_task_settings(&settings);
    let outcome = kiln_train::detect::train(&config).unwrap();
    let rows = read_results(&outcome.run.results()).unwrap();
    let scores: Vec<f64> = rows.iter().map(|r| r.val("map50_f1").expect("val_map50_f1")).collect();
    for r in &rows {
        let expected = 0.5 * r.val("map_50").unwrap() + 0.5 * r.val("f1").unwrap();
        assert!((r.val("map50_f1").unwrap() - expected).abs() < 1e-12);
    }
    let best = scores.iter().copied().fold(f64::MIN, f64::max);
    assert_eq!(outcome.best_objective, Some(best), "the best checkpoint is the best map50_f1 ({scores:?})");
    let run = outcome.run;
    let out = dir.path().join("frcnn.onnx");
    let half = ExportOptions { out: Some(out.clone()), half: true, ..Default::default() };
    let err = kiln_train::tasks::export_run(&run, &half).unwrap_err().to_string();
    assert!(err.contains("fp32 only"), "{err}");
    let options = ExportOptions { out: Some(out.clone()), dynamic_batch: true, ..Default::default() };
    kiln_train::tasks::export_run(&run, &options).unwrap();

    let ckpt = kiln_train::checkpoint::load(&run.checkpoint(kiln_train::Which::Best)).unwrap();
    let saved = &ckpt.state.config;
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let model = DetectorModel::new(&vs, saved, 2).unwrap();
    kiln_models::weights::load_into(&vs, ckpt.weights(), &ckpt.path, kiln_models::weights::HeadPolicy::Strict, &[])
        .unwrap();
    let dataset = open_dataset(saved).unwrap();
    let loader = make_loader(saved, &dataset, Split::Val, DetectTransform::Eval, &Default::default()).unwrap();
    let precision = kiln_train::precision::Precision::resolve(saved.amp, false, tch::Device::Cpu).unwrap();
    let settings: DetectSettings = saved.task_settings().unwrap();
    let eval = evaluate(&model, &loader, &precision, &settings, 2, saved.img_size).unwrap();

    let detector =
        kiln_infer::Detector::new(Model::builder().backend(Backend::Ort(Ep::Cpu)).open(&out).unwrap()).unwrap();
    let mut total = 0;
    for (index, expected) in &eval.detections {
        let sample = &dataset.val[*index];
        let got = detector.predict_path(&sample.path).unwrap();
        let threshold = settings.nms.score_threshold + 1e-4;
        let clear =
            |d: &Vec<kiln_infer::Detection>| d.iter().filter(|x| x.score > threshold).copied().collect::<Vec<_>>();
        let (got, expected) = (clear(&got), clear(expected));
        assert_eq!(got.len(), expected.len(), "{}", sample.path.display());
        let mut unused: Vec<_> = expected.iter().collect();
        for a in &got {
            let found = unused.iter().position(|b| {
                a.class == b.class
                    && (a.score - b.score).abs() < 1e-4
                    && a.bbox.iter().zip(&b.bbox).all(|(x, y)| (x - y).abs() < 1e-2)
            });
            assert!(found.is_some(), "{a:?} is not among {unused:?}");
            unused.swap_remove(found.unwrap());
        }
        total += got.len();
    }
    assert!(total > 0, "the run detects something to compare");
    // NMS inside the graph (`--nms-in-graph`) keeps what kiln-infer's NMS keeps on the plain export.
    let in_graph = dir.path().join("frcnn_nms.onnx");
    let options =
        ExportOptions { out: Some(in_graph.clone()), nms_in_graph: true, dynamic_batch: true, ..Default::default() };
    kiln_train::tasks::export_run(&run, &options).unwrap();
    let fused = kiln_infer::Detector::new(Model::builder().open(&in_graph).unwrap()).unwrap();
    let mut compared = 0;
    for sample in &dataset.val {
        let threshold = settings.nms.score_threshold + 1e-4;
        let clear = |d: Vec<kiln_infer::Detection>| d.into_iter().filter(|x| x.score > threshold).collect::<Vec<_>>();
        let (a, b) =
            (clear(detector.predict_path(&sample.path).unwrap()), clear(fused.predict_path(&sample.path).unwrap()));
        assert_eq!(a.len(), b.len(), "in-graph NMS on {}", sample.path.display());
        // As sets: equal scores may come out in either order.
        let mut unused: Vec<_> = b.iter().collect();
        for x in &a {
            let found = unused.iter().position(|y| {
                x.class == y.class
                    && (x.score - y.score).abs() < 1e-4
                    && x.bbox.iter().zip(&y.bbox).all(|(p, q)| (p - q).abs() < 1e-2)
            });
            assert!(found.is_some(), "in-graph NMS lost {x:?}");
            unused.swap_remove(found.unwrap());
        }
        compared += a.len();
    }
    assert!(compared > 0);
    let refused = Model::builder().backend(Backend::Tract).open(&out).err().expect("tract is refused").to_string();
    assert!(refused.contains("RoiAlign") && refused.contains("ONNX Runtime"), "{refused}");
}

/// `kiln train --anchors auto`: refused for FCOS (no anchors) and without boxes to fit; with Faster R-CNN it prints
/// the fitted anchors' mean best IoU beside the defaults' and the run's config.yaml keeps them.
#[test]
fn anchors_fitted_by_the_cli_are_the_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("scenes");
    generate_scenes(&data, &ScenesSpec { classes: 2, images: (16, 4, 0), size: (96, 64), ..Default::default() })
        .unwrap();
    let data_arg = data.to_string_lossy().into_owned();
    let base = [
        "train",
        "--task",
        "detect",
        "--data",
        &data_arg,
        "--epochs",
        "1",
        "--batch",
        "8",
        "--img-size",
        "64",
        "--device",
        "cpu",
        "--anchors",
        "auto",
        "--name",
        "fitted",
    ];
    let out = common::kiln(&base, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("FCOS has no anchors"), "{stderr}");
    let mut args = base.to_vec();
    args.extend(["--set", "detect.head=faster_rcnn", "--set", "detect.roi_heads.representation_size=64"]);
    let out = common::kiln(&args, dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find(|l| l.starts_with("anchors fitted to")).expect("the fit is reported");
    assert!(line.contains("mean best IoU") && line.contains("the anchors they replace"), "{line}");
    let saved = TrainConfig::load(&dir.path().join("runs/detect/fitted/config.yaml")).unwrap();
    let settings: DetectSettings = saved.task_settings().unwrap();
    assert_ne!(settings.anchors, AnchorConfig::default(), "the fitted anchors are the run's");
    // 64-pixel letterboxed boxes of 12-45 % of the short side: every fitted size is well under torchvision's 512.
    assert!(settings.anchors.sizes.iter().all(|s| s[0] < 128.0), "{:?}", settings.anchors);
}
