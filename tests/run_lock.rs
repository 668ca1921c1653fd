//! One writer per run: while a process holds a run (a training, a resume, a calibration, an export into it),
//! another writer is refused with the holder's pid, host and command, from this process or from the `kiln` binary;
//! read-only work and exports elsewhere go on.

mod common;

use kiln_train::export::ExportOptions;
use kiln_train::{RunDir, RunLock};

#[test]
fn a_held_run_refuses_a_second_writer_and_admits_readers() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (8, 4, 0), 3);
    let config = common::quick_config(&data, &dir.path().join("runs"), 1);
    let run = {
        let _serial = common::one_training_at_a_time();
        kiln_train::classify::train(&config).unwrap().run
    };
    assert!(
        !std::fs::read_to_string(run.path.join(kiln_train::run_lock::LOCK_FILE)).unwrap().contains("pid"),
        "released"
    );

    let held = RunLock::acquire(&run, "a test holding the run").unwrap();
    let holder = format!("pid {}", std::process::id());
    let refused = |result: kiln_train::Result<()>, what: &str| {
        let err = result.expect_err(what).to_string();
        assert!(err.contains(&holder) && err.contains("a test holding the run"), "{what}: {err}");
    };
    refused(kiln_train::tasks::resume(RunDir::open(&run.path).unwrap()).map(|_| ()), "a resume");
    refused(kiln_train::classify::calibrate_run(&run, &Default::default()).map(|_| ()), "a calibration");
    refused(kiln_train::tasks::export_run(&run, &ExportOptions::default()).map(|_| ()), "an export into the run");
    let elsewhere = dir.path().join("model.onnx");
    let export = ExportOptions { out: Some(elsewhere.clone()), ..Default::default() };
    kiln_train::tasks::export_run(&run, &export).expect("an export elsewhere only reads the run");
    assert!(elsewhere.is_file());

    // Another process: the binary, as a user would resume.
    let out = common::kiln(&["train", "--resume", run.path.to_str().unwrap()], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(&holder), "{stderr}");

    drop(held);
    kiln_train::tasks::export_run(&run, &ExportOptions::default()).expect("the run is free again");
}
