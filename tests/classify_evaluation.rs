//! Classification's evaluation extras through the CLI: test-time augmentation in `kiln val`, temperature scaling
//! (`kiln val --calibrate`), and the energy score, equal in `kiln predict` (libtorch) and `kiln infer` (the
//! exported model); and their bad input.

mod common;

use std::path::Path;

use kiln_train::classify::{self, ExportOptions};
use kiln_train::tasks::export_run;

fn ok(out: &std::process::Output) -> String {
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kiln failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

fn failure(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "kiln should have failed: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[test]
fn tta_calibration_and_energy_through_the_cli() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (12, 6, 4), 8);
    let mut config = common::quick_config(&data, &dir.path().join("runs"), 2);
    config.img_size = 32;
    let run = classify::train(&config).unwrap().run;
    let run_arg = run.path.to_str().unwrap();
    let cwd = dir.path();

    // Plain val: top-5, ECE and the energy summary in the report, and the reliability / energy plots.
    ok(&common::kiln(&["val", "--run", run_arg], cwd));
    let plain = json(&run.metrics("val"));
    assert!(plain["metrics"]["ece"].as_f64().is_some() && plain["metrics"]["top5_accuracy"] == 1.0, "{plain}");
    let energy = &plain["energy"];
    assert!(energy["p05"].as_f64().unwrap() <= energy["p95"].as_f64().unwrap(), "{energy}");
    for file in ["val_reliability.png", "val_energy.png"] {
        assert!(run.path.join(file).is_file(), "{file}");
    }

    // TTA: its own report files, naming the views; the plain report is left as it was.
    let stdout = ok(&common::kiln(&["val", "--run", run_arg, "--tta-scales", "1,1.5"], cwd));
    assert!(stdout.contains("TTA over 4 views"), "{stdout}");
    let tta = json(&run.metrics("val_tta"));
    assert_eq!(tta["tta"], serde_json::json!({"flip": true, "scales": [1.0, 1.5]}));
    assert!(run.path.join("val_tta_confusion_matrix.png").is_file());
    assert_eq!(json(&run.metrics("val")), plain);
    // The energy is the unaugmented image's, whatever the views.
    assert_eq!(tta["energy"], plain["energy"]);

    let err = failure(&common::kiln(&["val", "--run", run_arg, "--tta-scales"], cwd));
    assert!(err.contains("empty scale set"), "{err}");
    let err = failure(&common::kiln(&["val", "--run", run_arg, "--tta-scales", "1,0"], cwd));
    assert!(err.contains("scale 0"), "{err}");

    // Calibration: on val only.
    let err = failure(&common::kiln(&["test", "--run", run_arg, "--calibrate"], cwd));
    assert!(err.contains("kiln val --calibrate"), "{err}");
    let stdout = ok(&common::kiln(&["val", "--run", run_arg, "--calibrate"], cwd));
    assert!(stdout.contains("temperature") && stdout.contains("18 val images"), "{stdout}");
    let calibration = json(&run.path.join("calibration.json"));
    assert!(calibration["nll_after"].as_f64().unwrap() <= calibration["nll_before"].as_f64().unwrap());
    assert!(run.path.join("val_reliability_calibrated.png").is_file());
    // The held-out check is the test split: its NLL before scaling is the test report's loss.
    let held_out = &calibration["held_out"];
    assert_eq!((held_out["split"].as_str(), held_out["images"].as_u64()), (Some("test"), Some(12)), "{held_out}");
    let test_loss = json(&run.metrics("test"))["loss"].as_f64().unwrap();
    assert!((held_out["nll_before"].as_f64().unwrap() - test_loss).abs() < 1e-5, "{held_out} vs {test_loss}");
    assert!(stdout.contains("on 12 test images (not used to fit)"), "{stdout}");

    // Energy: kiln predict on the checkpoint and kiln infer on its export agree.
    let image = data.join("test/circle");
    let image = std::fs::read_dir(&image).unwrap().next().unwrap().unwrap().path();
    let image_arg = image.to_str().unwrap();
    let predicted: serde_json::Value =
        serde_json::from_str(&ok(&common::kiln(&["predict", "--run", run_arg, "--format", "json", image_arg], cwd)))
            .unwrap();
    let libtorch = predicted[0]["energy"].as_f64().expect("predict gives the energy");
    let onnx = export_run(&run, &ExportOptions::default()).unwrap().path;
    let inferred = ok(&common::kiln(
        &["infer", "--model", onnx.to_str().unwrap(), "--backend", "ort-cpu", "--format", "json", image_arg],
        cwd,
    ));
    let inferred: serde_json::Value = serde_json::from_str(inferred.lines().next().unwrap()).unwrap();
    let deployed = inferred["energy"].as_f64().expect("infer gives the energy");
    assert!((libtorch - deployed).abs() < 1e-3, "predict {libtorch} vs infer {deployed}");
    // With TTA, predict still reports the unaugmented image's energy.
    let with_tta: serde_json::Value = serde_json::from_str(&ok(&common::kiln(
        &["predict", "--run", run_arg, "--format", "json", "--tta", image_arg],
        cwd,
    )))
    .unwrap();
    assert_eq!(with_tta[0]["energy"], predicted[0]["energy"]);

    // A test split with no readable image: the fit on val is still written, without a held-out check, and the
    // warning says why.
    for class in std::fs::read_dir(data.join("test")).unwrap() {
        for file in std::fs::read_dir(class.unwrap().path()).unwrap() {
            std::fs::write(file.unwrap().path(), b"not an image").unwrap();
        }
    }
    let out = common::kiln(&["val", "--run", run_arg, "--calibrate"], cwd);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not checked on held-out data") && stderr.contains("12 skipped"), "{stderr}");
    let calibration = json(&run.path.join("calibration.json"));
    assert!(calibration["held_out"].is_null() && calibration["temperature"].as_f64().is_some(), "{calibration}");
}
