//! The built binary finds ONNX Runtime the one way kiln decides it (`ORT_DYLIB_PATH`, `KILN_DEPS`, then the deps
//! directory it was built with), for every command that opens a model: with neither variable set, as a user runs
//! `target/release/kiln` outside `make`. int8 export's calibration and comparison used to find no library there
//! ("ONNX Runtime library not found (looked at: )").

mod common;

use std::process::{Command, Output};

/// The binary with neither variable that names ONNX Runtime.
fn kiln_outside_make(args: &[&str], cwd: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(cwd)
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("KILN_DEPS")
        .output()
        .expect("kiln runs")
}

#[test]
fn every_command_that_opens_a_model_finds_onnx_runtime_without_the_variables() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (6, 3, 0), 5);
    let run = {
        let _serial = common::one_training_at_a_time();
        kiln_train::classify::train(&common::quick_config(&data, &dir.path().join("runs"), 1)).unwrap().run
    };
    let run_arg = run.path.to_string_lossy().into_owned();
    let (fp32, int8) = (dir.path().join("m.onnx"), dir.path().join("m-int8.onnx"));
    let (fp32_arg, int8_arg) = (fp32.to_string_lossy().into_owned(), int8.to_string_lossy().into_owned());
    let image = std::fs::read_dir(data.join("val/circle")).unwrap().next().unwrap().unwrap().path();
    let image_arg = image.to_string_lossy().into_owned();
    let commands: Vec<Vec<&str>> = vec![
        vec!["export", "onnx", "--run", &run_arg, "--out", &fp32_arg],
        // Calibration and the fp32 / fp16 / int8 comparison both open models in ONNX Runtime.
        vec!["export", "onnx", "--run", &run_arg, "--out", &int8_arg, "--int8", "static", "--calib-images", "4"],
        vec!["infer", "--model", &fp32_arg, &image_arg],
        vec!["bench", "--model", &fp32_arg, "--backends", "ort-cpu", "--iters", "2", "--warmup", "1"],
    ];
    for args in commands {
        let out = kiln_outside_make(&args, dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !stderr.contains("not found"), "kiln {}: {stderr}", args.join(" "));
    }
    assert!(int8.is_file() && int8.with_extension("comparison.json").is_file());
}
