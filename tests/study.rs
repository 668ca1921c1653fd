//! Studies end to end on SQLite: trials train, a failing trial is recorded FAIL and the study goes on, rerunning
//! resumes to the new total, and the outputs are written.

mod common;

use kiln_train::tune::{run_study, Distribution, PrunerKind, SamplerKind, SearchSpace, StudyOptions, TrialState};

/// `kiln train` arguments for a small random-sampler study without pruning.
fn study_args(
    data: &std::path::Path,
    url: &str,
    study: &str,
    trials: usize,
    epochs: usize,
    img_size: u32,
) -> Vec<String> {
    let data = data.display().to_string();
    let (trials, epochs, img_size) = (trials.to_string(), epochs.to_string(), img_size.to_string());
    [
        "train",
        "--data",
        &data,
        "--model",
        "convnext_atto",
        "--img-size",
        &img_size,
        "--epochs",
        &epochs,
        "--trials",
        &trials,
        "--storage",
        url,
        "--study",
        study,
        "--sampler",
        "random",
        "--pruner",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn a_study_runs_records_failures_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (6, 3, 0), 3);
    let mut base = common::quick_config(&data, &dir.path().join("runs"), 2);
    base.img_size = 32;
    let space = SearchSpace::from([
        // 100 px is not a multiple of 32: the trial that draws it fails, the study goes on.
        ("img_size".to_string(), Distribution::Categorical { choices: vec![100.into(), 32.into()] }),
        ("lr".to_string(), Distribution::Float { low: 1e-3, high: 3e-3, log: true, step: None }),
    ]);
    let mut options = StudyOptions {
        trials: 3,
        storage: dir.path().join("study.db"),
        name: "shapes".into(),
        sampler: SamplerKind::Grid,
        pruner: PrunerKind::None,
        space: Some(space),
        heartbeat_timeout: std::time::Duration::from_secs(600),
        worker: "test".into(),
        running: None,
    };
    let first = run_study(&base, &options).unwrap();
    assert_eq!(first.ran, 3);
    let states: Vec<TrialState> = first.trials.iter().map(|t| t.state).collect();
    assert_eq!(states, [TrialState::Fail, TrialState::Complete, TrialState::Fail]);
    assert!(first.trials[0].reason.as_deref().unwrap().contains("img_size"), "{:?}", first.trials[0].reason);
    assert_eq!(first.trials[1].intermediate.len(), 2, "validation accuracy reported every epoch");
    assert!(dir.path().join("runs/classify/shapes/trial_1/weights/best.safetensors").is_file());

    options.trials = 5;
    let second = run_study(&base, &options).unwrap();
    assert_eq!(second.ran, 2, "only the missing trials run");
    assert_eq!(second.trials.iter().map(|t| t.number).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    let best = second.best.as_ref().unwrap();
    assert_eq!(best.params["img_size"], 32);
    let best_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(second.dir.join("best_params.json")).unwrap()).unwrap();
    assert_eq!(best_json["trial"], best.number);
    for file in ["best.safetensors", "history.png", "study.db"] {
        let path = if file == "study.db" { dir.path().join(file) } else { second.dir.join(file) };
        assert!(path.is_file(), "{} is missing", path.display());
    }
    let csv = std::fs::read_to_string(second.dir.join("trials.csv")).unwrap();
    assert_eq!(csv.lines().count(), 6);
    assert!(csv.starts_with("number,state,value,params,intermediate,duration_s,reason"));

    options.space = Some(SearchSpace::from([(
        "learning_rate".to_string(),
        Distribution::Float { low: 0.1, high: 1.0, log: false, step: None },
    )]));
    let err = run_study(&base, &options).unwrap_err().to_string();
    assert!(err.contains("learning_rate") && err.contains("not a config key"), "{err}");
}

#[test]
fn the_cli_runs_and_shows_a_study() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (5, 2, 0), 4);
    let db = dir.path().join("s.db");
    let url = format!("sqlite:///{}", db.display());
    let kiln = |args: &[&str]| common::kiln(args, dir.path());
    let args = study_args(&data, &url, "cli", 2, 1, 32);
    let out = kiln(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("best trial") && stdout.contains("| 1 | COMPLETE |"), "{stdout}");
    let out = kiln(&["study", "show", "--storage", &url, "--study", "cli"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.lines().filter(|l| l.contains("COMPLETE")).count() == 2, "{stdout}");
    let out =
        kiln(&["train", "--data", data.to_str().unwrap(), "--trials", "2", "--storage", "postgres://u@localhost/db"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("PostgreSQL storage is not available yet"));
}

#[test]
fn two_processes_share_one_sqlite_study() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (4, 2, 0), 5);
    let url = format!("sqlite:///{}", dir.path().join("shared.db").display());
    let args = study_args(&data, &url, "shared", 5, 1, 32);
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(&args)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let storage = kiln_train::tune::SqliteStorage::open(&dir.path().join("shared.db")).unwrap();
    let study = storage.study("shared", kiln_train::tune::Direction::Maximize).unwrap();
    let trials = storage.trials(study).unwrap();
    assert_eq!(trials.iter().map(|t| t.number).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4], "exactly 5, numbers unique");
    assert!(trials.iter().all(|t| t.state == TrialState::Complete), "{trials:?}");
    let workers: std::collections::BTreeSet<&str> = trials.iter().map(|t| t.worker.as_str()).collect();
    assert_eq!(workers.len(), 2, "both processes ran trials: {workers:?}");
}

#[test]
fn ctrl_c_marks_the_running_trial_failed() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (6, 2, 0), 6);
    let db = dir.path().join("int.db");
    let url = format!("sqlite:///{}", db.display());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(study_args(&data, &url, "int", 3, 50, 64))
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the first trial is running and has reported an epoch.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        assert!(std::time::Instant::now() < deadline, "the first trial never reported");
        std::thread::sleep(std::time::Duration::from_millis(200));
        let Ok(storage) = kiln_train::tune::SqliteStorage::open(&db) else { continue };
        let Ok(true) = storage.has_study("int") else { continue };
        let study = storage.study("int", kiln_train::tune::Direction::Maximize).unwrap();
        if storage.trials(study).unwrap().first().is_some_and(|t| !t.intermediate.is_empty()) {
            break;
        }
    }
    let status = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let storage = kiln_train::tune::SqliteStorage::open(&db).unwrap();
    let study = storage.study("int", kiln_train::tune::Direction::Maximize).unwrap();
    let trials = storage.trials(study).unwrap();
    assert_eq!(trials.len(), 1);
    assert_eq!(trials[0].state, TrialState::Fail);
    assert_eq!(trials[0].reason.as_deref(), Some("interrupted (Ctrl-C)"));
}
