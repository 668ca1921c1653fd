//! `scripts/gpu_check.sh`, the script prepared for the GPU machine, run on the CPU in small (`--device cpu
//! --steps 2`) so that it cannot rot: doctor, `kiln bench train` in every precision, demo, train with a RAM cache,
//! export and `kiln bench`.

use std::process::Command;

#[test]
fn gpu_check_runs_on_the_cpu_in_small() {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gpu_check.sh");
    let out = Command::new("bash")
        .args([script, "--kiln", env!("CARGO_BIN_EXE_kiln"), "--device", "cpu", "--steps", "2", "--out"])
        .arg(dir.path())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gpu_check failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    for expected in ["== kiln doctor", "libtorch 2.11.0", "convnext_tiny | 224 | 2 | cpu | fp32", "gpu_check: done"] {
        assert!(stdout.contains(expected), "missing {expected:?} in\n{stdout}");
    }
    // Every precision asked for ran, and on the CPU each one trained in fp32.
    for amp in ["false", "bf16", "fp16", "bf16_nchw"] {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(format!("step_{amp}.json"))).unwrap()).unwrap();
        assert_eq!(json["precision"], "fp32", "{amp}: {json}");
        assert_eq!(json["steps"], 2);
        assert!(json["images_per_second"].as_f64().unwrap() > 0.0);
    }
    let bench: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("bench.json")).unwrap()).unwrap();
    assert_eq!(bench[0]["backend"], "ort-cpu");
    assert!(bench[0]["images_per_second"].as_f64().is_some(), "{bench}");
    assert!(dir.path().join("runs/classify/tiny/weights/best.onnx").is_file());
}
