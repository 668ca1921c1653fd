//! `fast_dev_run` (Lightning's): N training steps and N batches of val and of test for every task, through the
//! shared engine, writing nothing but `fast_dev_run.json`; the CLI flag, and the refusals around it.

mod common;

use std::path::Path;

use kiln_train::config::TaskKind;
use kiln_train::detect::synthetic::{generate_scenes, ScenesSpec};
use kiln_train::engine::fast_dev_run::{FastDevRunReport, REPORT_FILE};
use kiln_train::ocr::synthetic::{write_text_lines, TextLinesSpec};
use kiln_train::ocr::OcrSettings;
use kiln_train::TrainConfig;

/// The names in a run directory, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// The report names a run directory that holds only the report, and the file reads back as the report.
fn assert_only_the_report(report: &FastDevRunReport) {
    let run = report.report.parent().unwrap();
    assert_eq!(entries(run), [REPORT_FILE], "a fast dev run writes nothing else into {}", run.display());
    let saved: FastDevRunReport = serde_json::from_slice(&std::fs::read(&report.report).unwrap()).unwrap();
    let images = |r: &FastDevRunReport| {
        (r.train.images, r.val.as_ref().map(|p| p.images), r.test.as_ref().map(|p| p.images), r.skipped_images)
    };
    assert_eq!(images(&saved), images(report));
    for (name, value) in &report.train.losses {
        assert!((saved.train.losses[name] - value).abs() < 1e-12 * value.abs().max(1.0), "{name}");
    }
}

#[test]
fn a_classification_fast_dev_run_takes_n_batches_of_each_split_and_writes_only_its_report() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (16, 4, 4), 4); // 48 train, 12 val, 12 test images
    let mut config = common::quick_config(&data, &dir.path().join("runs"), 30);
    config.batch = 8;
    config.img_size = 32;
    config.ema = true;
    config.fast_dev_run = 1;
    let report = kiln_train::tasks::fast_dev_run(&config).unwrap();
    assert_eq!((report.task.as_str(), report.batches), ("classify", 1));
    assert_eq!((report.train.batches, report.train.images), (1, 8), "one step of one batch, not 30 epochs");
    let loss = report.train.losses["loss"];
    assert!(loss.is_finite() && loss > 0.0, "{loss}");
    for pass in [report.val.as_ref().unwrap(), report.test.as_ref().unwrap()] {
        assert_eq!((pass.batches, pass.images), (1, 8));
        let accuracy = pass.metrics["accuracy"].unwrap();
        assert!((0.0..=1.0).contains(&accuracy), "{accuracy}");
        assert!(pass.metrics["loss"].unwrap().is_finite());
    }
    assert_only_the_report(&report);

    // Two batches: 16 training images; val and test have 12, so two batches hold all of them.
    config.fast_dev_run = 2;
    let report = kiln_train::tasks::fast_dev_run(&config).unwrap();
    assert_eq!((report.train.batches, report.train.images), (2, 16));
    assert_eq!(report.val.as_ref().map(|p| (p.batches, p.images)), Some((2, 12)));
    assert_eq!(report.test.as_ref().map(|p| (p.batches, p.images)), Some((2, 12)));
    assert_only_the_report(&report);

    // Training refuses the key instead of ignoring it, and so does a study.
    let err = kiln_train::classify::train(&config).unwrap_err().to_string();
    assert!(err.contains("fast_dev_run"), "{err}");
    let options = common::sqlite_study(dir.path(), "fdr", 2);
    let err = kiln_train::tune::run_study(&config, &options).unwrap_err().to_string();
    assert!(err.contains("fast_dev_run"), "{err}");
}

#[test]
fn detection_and_ocr_fast_dev_runs_go_through_their_tasks() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let scenes = dir.path().join("scenes");
    generate_scenes(&scenes, &ScenesSpec { classes: 2, images: (16, 8, 4), size: (64, 64), ..Default::default() })
        .unwrap();
    let config = TrainConfig {
        task: TaskKind::Detect,
        data: scenes,
        model: "convnext_atto".into(),
        epochs: 20,
        batch: 4,
        img_size: 64,
        workers: 2,
        device: "cpu".into(),
        project: dir.path().join("runs"),
        fast_dev_run: 1,
        ..TrainConfig::default()
    };
    let report = kiln_train::tasks::fast_dev_run(&config).unwrap();
    assert_eq!((report.task.as_str(), report.train.batches, report.train.images), ("detect", 1, 4));
    assert!(report.train.losses.len() > 1, "detection reports its loss parts: {:?}", report.train.losses);
    assert!(report.train.losses.values().all(|v| v.is_finite()), "{:?}", report.train.losses);
    assert_eq!(report.val.as_ref().map(|p| p.images), Some(4));
    assert_eq!(report.test.as_ref().map(|p| p.images), Some(4));
    assert!(report.val.as_ref().unwrap().metrics.contains_key("map"));
    assert_only_the_report(&report);

    let lines = dir.path().join("lines");
    write_text_lines(&lines, &TextLinesSpec { lines: (40, 10, 0), length: (3, 6), ..TextLinesSpec::default() })
        .unwrap();
    let mut config = TrainConfig {
        task: TaskKind::Ocr,
        data: lines,
        model: "convnext_atto".into(),
        batch: 8,
        workers: 2,
        device: "cpu".into(),
        project: dir.path().join("runs"),
        fast_dev_run: 1,
        ..TrainConfig::default()
    };
    config.set_task_settings(&OcrSettings { charset: "0-9".into(), width: 128, ..OcrSettings::default() });
    let report = kiln_train::tasks::fast_dev_run(&config).unwrap();
    assert_eq!((report.task.as_str(), report.train.images), ("ocr", 8));
    assert_eq!(report.val.as_ref().map(|p| p.images), Some(8));
    assert!(report.test.is_none(), "this dataset has no test split");
    assert!(report.val.as_ref().unwrap().metrics.contains_key("cer"));
    assert_only_the_report(&report);
}

#[test]
fn the_cli_flag_runs_one_batch_and_refuses_a_study() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (8, 2, 2), 5);
    let data = data.to_str().unwrap();
    let base = ["train", "--data", data, "--model", "convnext_atto", "--img-size", "32", "--batch", "4"];
    let args: Vec<&str> = base.iter().copied().chain(["--fast-dev-run", "--project", "runs"]).collect();
    let out = common::kiln(&args, dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1 batch(es) per split") && stdout.contains("train: 1 step(s), 4 images"), "{stdout}");
    let run = dir.path().join("runs/classify/exp");
    assert_eq!(entries(&run), [REPORT_FILE]);

    let args: Vec<&str> = base.iter().copied().chain(["--fast-dev-run", "2", "--trials", "2"]).collect();
    let out = common::kiln(&args, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("does not run a study"), "{stderr}");
}
