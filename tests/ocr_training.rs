//! OCR end to end on rendered text lines: the shared engine trains the CRNN recognizer on CPU; the CLI trains,
//! tests, exports and reads; the exported model read by kiln-infer's `TextRecognizer` on ONNX Runtime and tract
//! gives the texts and confidences the libtorch test pass gave.

mod common;

use std::path::{Path, PathBuf};

use kiln_infer::{Backend, Ep, Model, TextRecognizer};
use kiln_train::config::TaskKind;
use kiln_train::engine::read_results;
use kiln_train::ocr::synthetic::{write_text_lines, TextLinesSpec};
use kiln_train::ocr::OcrSettings;
use kiln_train::TrainConfig;

/// kiln's default recognizer (the VGG-BN body at its default widths) for digit lines, with a smaller LSTM.
fn digits_config(data: &Path, project: &Path, epochs: usize) -> TrainConfig {
    let mut config = TrainConfig {
        task: TaskKind::Ocr,
        data: data.to_path_buf(),
        epochs,
        batch: 16,
        lr: 1e-3,
        warmup_epochs: 1.0,
        drop_path_rate: 0.0,
        workers: 2,
        device: "cpu".into(),
        project: project.to_path_buf(),
        ..TrainConfig::default()
    };
    config.set_task_settings(&OcrSettings { charset: "0-9".into(), width: 128, lstm_hidden: 96, ..Default::default() });
    config
}

/// `test_predictions.csv`: path, label, reading, confidence (digit labels need no CSV quoting).
fn test_predictions(run: &Path) -> Vec<(PathBuf, String, String, f32)> {
    let text = std::fs::read_to_string(run.join("test_predictions.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (PathBuf::from(f[0]), f[1].to_string(), f[2].to_string(), f[3].parse().unwrap())
        })
        .collect()
}

#[test]
fn rendered_digit_lines_train_to_a_low_cer_and_read_the_same_through_libtorch_onnx_runtime_and_tract() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lines");
    let spec = TextLinesSpec { lines: (1600, 160, 160), length: (3, 8), ..TextLinesSpec::default() };
    write_text_lines(&data, &spec).unwrap();
    let epochs = 10;
    let config = digits_config(&data, &dir.path().join("runs"), epochs);
    let outcome = kiln_train::ocr::train(&config).unwrap();
    let run = &outcome.run;
    let rows = read_results(&run.results()).unwrap();
    assert_eq!(rows.len(), epochs);
    assert!(rows[epochs - 1].train_loss() < rows[0].train_loss() / 10.0, "the CTC loss falls tenfold");
    assert!(rows[0].val("cer").is_some() && rows[0].val("accuracy").is_some());
    let test = outcome.test.as_ref().expect("a test split");
    assert_eq!(test.lines, 160);
    eprintln!("test: {:?}", test.metrics);
    assert!(test.metrics.cer <= 0.05, "test CER {} after {epochs} epochs", test.metrics.cer);
    assert!(test.metrics.accuracy >= 0.8, "test exact match {}", test.metrics.accuracy);
    for file in ["test_predictions.csv", "curves.png", "dataset.json", "results.csv"] {
        assert!(run.path.join(file).is_file(), "{file}");
    }

    // The exported model on both runtimes reads what the libtorch test pass read, line by line, with the same
    // confidence (for an empty reading: the lowest per-frame maximum, so the frames each line owns must agree).
    let options = kiln_train::export::ExportOptions { dynamic_batch: true, ..Default::default() };
    let export = kiln_train::tasks::export_run(run, &options).unwrap();
    assert_eq!(export.metadata.task, "ocr");
    assert_eq!(export.metadata.class_names.len(), 10);
    let expected = test_predictions(&run.path);
    let images: Vec<image::RgbImage> =
        expected.iter().map(|(p, ..)| kiln_infer::preprocess::decode_rgb(p).unwrap()).collect();
    for backend in [Backend::Ort(Ep::Cpu), Backend::Tract] {
        let model = Model::builder().backend(backend.clone()).open(&export.path).unwrap();
        let recognizer = TextRecognizer::new(model).unwrap();
        let readings: Vec<_> = images.chunks(16).flat_map(|chunk| recognizer.predict_batch(chunk).unwrap()).collect();
        for (reading, (path, _, text, confidence)) in readings.iter().zip(&expected) {
            assert_eq!(&reading.text, text, "{backend}: {}", path.display());
            assert!(
                (reading.confidence - confidence).abs() < 2e-3,
                "{backend}: {} {} vs {confidence}",
                path.display(),
                reading.confidence
            );
        }
        // One line alone reads as it does in a batch; beam width 1 reads as greedy does.
        let alone = recognizer.predict(&images[3]).unwrap();
        assert_eq!(alone.text, readings[3].text);
        assert!((alone.confidence - readings[3].confidence).abs() < 1e-4);
        let beam1 = TextRecognizer::new(Model::builder().backend(backend.clone()).open(&export.path).unwrap())
            .unwrap()
            .with_beam_search(1);
        assert_eq!(beam1.predict(&images[0]).unwrap().text, readings[0].text);
    }
}

#[test]
fn the_cli_trains_tests_exports_and_reads_text_lines() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lines");
    write_text_lines(&data, &TextLinesSpec { lines: (48, 16, 16), length: (2, 5), ..TextLinesSpec::default() })
        .unwrap();
    let data_arg = data.to_string_lossy().into_owned();
    let out = common::kiln(
        &[
            "train",
            "--task",
            "ocr",
            "--data",
            &data_arg,
            "--ocr-backbone",
            "convnext",
            "--model",
            "convnext_atto",
            "--epochs",
            "1",
            "--batch",
            "16",
            "--ocr-h",
            "32",
            "--ocr-w",
            "96",
            "--charset",
            "0-9",
            "--set",
            "ocr.dims=[16,24,32,48]",
            "--set",
            "ocr.depths=[1,1,1,1]",
            "--device",
            "cpu",
            "--name",
            "r",
        ],
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("CER") && stdout.contains("test (16 lines)"), "{stdout}");
    let run = dir.path().join("runs/ocr/r");
    let run_arg = run.to_string_lossy().into_owned();
    let out = common::kiln(&["val", "--run", &run_arg], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("val (16 lines"));
    let out = common::kiln(&["export", "onnx", "--run", &run_arg, "--dynamic-batch"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let onnx = run.join("weights/best.onnx").to_string_lossy().into_owned();
    let test_images = data.join("test/images").to_string_lossy().into_owned();
    for format in ["json", "csv", "table"] {
        let out =
            common::kiln(&["infer", "--model", &onnx, "--format", format, "--batch", "4", &test_images], dir.path());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{format}: {}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = stdout.lines().collect();
        let expected = if format == "csv" { 17 } else { 16 };
        assert_eq!(lines.len(), expected, "{format}: one reading per image\n{stdout}");
        if format == "json" {
            let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
            assert!(v["text"].is_string() && v["confidence"].is_number(), "{v}");
        }
    }
    let out =
        common::kiln(&["infer", "--model", &onnx, "--regex", "[0-9]{3}", "--format", "json", &test_images], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut matched = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = v["text"].as_str().unwrap();
        // A line on which no surviving beam matches reads as empty.
        assert!(text.is_empty() || text.len() == 3 && text.chars().all(|c| c.is_ascii_digit()), "{text:?}");
        matched += usize::from(!text.is_empty());
    }
    assert!(matched > 0, "some lines read as three digits");
    let out = common::kiln(&["predict", "--run", &run_arg, &test_images], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 16);
}

#[test]
fn a_label_outside_the_charset_is_an_error_naming_the_character_and_line() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lines");
    write_text_lines(&data, &TextLinesSpec { lines: (4, 0, 0), length: (2, 3), ..TextLinesSpec::default() }).unwrap();
    let labels = data.join("train/labels.txt");
    let text = std::fs::read_to_string(&labels).unwrap().replacen('\n', "x\n", 2);
    std::fs::write(&labels, text).unwrap();
    let config = digits_config(&data, &dir.path().join("runs"), 1);
    let err = kiln_train::ocr::train(&config).err().unwrap().to_string();
    assert!(err.contains("\"x\"") && err.contains("labels.txt:1") && err.contains("labels.txt:2"), "{err}");
}

#[test]
fn an_ocr_study_minimises_cer_with_the_default_space() {
    let _serial = common::one_training_at_a_time();
    use kiln_train::tune::{run_study, TrialState};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lines");
    write_text_lines(&data, &TextLinesSpec { lines: (32, 8, 0), length: (2, 4), ..TextLinesSpec::default() }).unwrap();
    let mut base = digits_config(&data, &dir.path().join("runs"), 1);
    let mut ocr: OcrSettings = base.task_settings().unwrap();
    (ocr.dims, ocr.depths, ocr.width) = (Some(vec![16, 24, 32, 48]), Some(vec![1, 1, 1, 1]), 96);
    base.set_task_settings(&ocr);
    let options = common::sqlite_study(dir.path(), "ocr", 3);
    let outcome = run_study(&base, &options).unwrap();
    assert_eq!(outcome.trials.len(), 3);
    let mut values = Vec::new();
    for trial in &outcome.trials {
        assert_eq!(trial.state, TrialState::Complete, "{:?}", trial.reason);
        assert!(trial.params.contains_key("ocr.lstm_hidden"), "the OCR space: {:?}", trial.params);
        // The trial's value is its run's validation CER.
        let run = dir.path().join(format!("runs/ocr/ocr/trial_{}", trial.number));
        let rows = read_results(&run.join("results.csv")).unwrap();
        assert_eq!(trial.value, rows[0].val("cer"), "trial {}", trial.number);
        values.push(trial.value.unwrap());
    }
    // CER is minimised: the best trial has the lowest value.
    let lowest = values.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(outcome.best.as_ref().and_then(|b| b.value), Some(lowest));
    assert!(outcome.dir.join("best_params.json").is_file());
}
