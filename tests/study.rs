//! Studies end to end: trials train, a failing trial is recorded FAIL and the study goes on, rerunning resumes to
//! the new total, the outputs are written; two processes share one study, a killed worker's trial times out, and
//! Ctrl-C marks the running trial FAIL. The process tests run on SQLite and on a PostgreSQL server the test starts
//! (they print SKIPPED where none can be started; `KILN_REQUIRE_POSTGRES=1` makes that a failure).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_testkit::PostgresServer;
use kiln_train::tune::{
    run_study, Direction, Distribution, SamplerKind, SearchSpace, StorageUrl, StudyOptions, TrialRecord, TrialState,
};

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
        // Label smoothing 1.5 is not in [0, 1): the trial that draws it fails, the study goes on.
        ("label_smoothing".to_string(), Distribution::Categorical { choices: vec![1.5.into(), 0.1.into()] }),
        ("lr".to_string(), Distribution::Float { low: 1e-3, high: 3e-3, log: true, step: None }),
    ]);
    let mut options = StudyOptions {
        sampler: SamplerKind::Grid,
        space: Some(space),
        heartbeat_timeout: std::time::Duration::from_secs(600),
        ..common::sqlite_study(dir.path(), "shapes", 3)
    };
    let first = run_study(&base, &options).unwrap();
    assert_eq!(first.ran, 3);
    let states: Vec<TrialState> = first.trials.iter().map(|t| t.state).collect();
    assert_eq!(states, [TrialState::Fail, TrialState::Complete, TrialState::Fail]);
    assert!(first.trials[0].reason.as_deref().unwrap().contains("label_smoothing"), "{:?}", first.trials[0].reason);
    assert_eq!(first.trials[1].intermediate.len(), 2, "validation accuracy reported every epoch");
    assert!(dir.path().join("runs/classify/shapes/trial_1/weights/best.safetensors").is_file());

    options.trials = 5;
    let second = run_study(&base, &options).unwrap();
    assert_eq!(second.ran, 2, "only the missing trials run");
    assert_eq!(second.trials.iter().map(|t| t.number).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    let best = second.best.as_ref().unwrap();
    assert_eq!(best.params["label_smoothing"], 0.1);
    let best_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(second.dir.join("best_params.json")).unwrap()).unwrap();
    assert_eq!(best_json["trial"], best.number);
    for file in ["best.safetensors", "history.png", "importance.png", "study.db"] {
        let path = if file == "study.db" { dir.path().join(file) } else { second.dir.join(file) };
        assert!(path.is_file(), "{} is missing", path.display());
    }
    let csv = std::fs::read_to_string(second.dir.join("trials.csv")).unwrap();
    assert_eq!(csv.lines().count(), 6);
    assert!(csv.starts_with("number,state,value,params,intermediate,duration_s,reason"));

    options.space = Some(SearchSpace::from([(
        "lr".to_string(),
        Distribution::Float { low: 1e-3, high: 1e-2, log: true, step: None },
    )]));
    let err = run_study(&base, &options).unwrap_err().to_string();
    assert!(err.contains("samples the search space") && err.contains("--study"), "{err}");
    let importances: serde_json::Value =
        serde_json::from_slice(&std::fs::read(second.dir.join("importances.json")).unwrap()).unwrap();
    let shares: Vec<f64> = ["label_smoothing", "lr"].iter().map(|k| importances[k].as_f64().unwrap()).collect();
    // Importances are read from the finished trials: where their values differ, the shares sum to one and lr (the
    // only parameter that varies among them: every finished trial drew label smoothing 0.1) takes it all; only
    // where every finished trial scored the same may all be zero (the old test took all zeros whatever happened).
    assert!(shares.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)), "{importances}");
    let finished: Vec<f64> =
        second.trials.iter().filter(|t| t.state == TrialState::Complete).filter_map(|t| t.value).collect();
    assert!(finished.len() >= 2, "{finished:?}");
    if finished.iter().any(|v| *v != finished[0]) {
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-9 && shares[1] > 0.99, "{importances} for {finished:?}");
    } else {
        assert!(shares.iter().all(|v| *v == 0.0), "equal values explain nothing: {importances}");
    }

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
    // The default space's five parameters, with their importances.
    assert!(stdout.contains("| parameter | importance |") && stdout.contains("| weight_decay | "), "{stdout}");
    // Nothing listens on port 1: the error names the storage (without its password) and the reason.
    let out = kiln(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--trials",
        "2",
        "--storage",
        "postgres://kiln:secret@127.0.0.1:1/studies",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("postgres://kiln:***@127.0.0.1:1/studies"), "{stderr}");
    assert!(stderr.contains("refused") && !stderr.contains("secret"), "{stderr}");
    // Study flags without --trials, and settings beside --resume, would be ignored: they are refused.
    let out = kiln(&["train", "--data", data.to_str().unwrap(), "--storage", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--trials"), "{stderr}");
    let out = kiln(&["train", "--resume", "runs/classify/x", "--epochs", "5"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("takes no other settings (given: epochs)"), "{stderr}");
    let out = kiln(&["study", "show", "--storage", &url, "--study", "nope"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no study named 'nope' (studies: cli)"), "{stderr}");
}

/// The study's trials, read through a new connection.
fn stored_trials(url: &str, study: &str) -> Vec<TrialRecord> {
    let mut storage = StorageUrl::parse(url).unwrap().open().unwrap();
    if !storage.has_study(study).unwrap() {
        return Vec::new();
    }
    let id = storage.study(study, Direction::Maximize).unwrap();
    storage.trials(id).unwrap()
}

fn spawn_kiln(args: &[String], cwd: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Polls the study until `ready` holds (two minutes at most).
fn wait_for(url: &str, study: &str, what: &str, ready: impl Fn(&[TrialRecord]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready(&stored_trials(url, study)) {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn two_processes_share_one_study(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (4, 2, 0), 5);
    let args = study_args(&data, url, "shared", 5, 1, 32);
    let (a, b) = (spawn_kiln(&args, dir.path()), spawn_kiln(&args, dir.path()));
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let trials = stored_trials(url, "shared");
    assert_eq!(trials.iter().map(|t| t.number).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4], "exactly 5, numbers unique");
    assert!(trials.iter().all(|t| t.state == TrialState::Complete), "{trials:?}");
    let workers: std::collections::BTreeSet<&str> = trials.iter().map(|t| t.worker.as_str()).collect();
    assert_eq!(workers.len(), 2, "both processes ran trials: {workers:?}");
    let named = |w: &str| w.rsplit_once('-').is_some_and(|(host, pid)| !host.is_empty() && pid.parse::<u32>().is_ok());
    assert!(workers.iter().all(|w| named(w)), "workers are HOST-PID: {workers:?}");
}

/// A worker killed with -9 during its fourth of 6 trials: the trial stays RUNNING, and rerunning the command marks it
/// FAIL (heartbeat timeout) and finishes the study to 6 trials.
fn a_killed_study_resumes_to_its_total(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (4, 2, 0), 7);
    let mut args = study_args(&data, url, "resume", 6, 1, 32);
    let mut child = spawn_kiln(&args, dir.path());
    let complete = |trials: &[TrialRecord]| trials.iter().filter(|t| t.state == TrialState::Complete).count();
    let running = |trials: &[TrialRecord]| trials.iter().any(|t| t.state == TrialState::Running);
    wait_for(url, "resume", "3 trials are complete and a fourth runs", |t| complete(t) >= 3 && running(t));
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = stored_trials(url, "resume");
    assert!(killed.len() < 6, "killed before the study finished: {killed:?}");
    let orphans: Vec<u32> = killed.iter().filter(|t| t.state == TrialState::Running).map(|t| t.number).collect();
    assert_eq!(orphans.len(), 1, "{killed:?}");

    std::thread::sleep(Duration::from_millis(1500));
    args.extend(["--heartbeat-timeout".to_string(), "1".to_string()]);
    let out = spawn_kiln(&args, dir.path()).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let trials = stored_trials(url, "resume");
    assert_eq!(trials.iter().map(|t| t.number).collect::<Vec<_>>(), (0..6).collect::<Vec<_>>(), "{trials:?}");
    for t in &trials {
        if orphans.contains(&t.number) {
            assert_eq!(t.state, TrialState::Fail);
            assert!(t.reason.as_deref().unwrap_or("").contains("no heartbeat"), "{t:?}");
        } else {
            assert_eq!(t.state, TrialState::Complete, "{t:?}");
        }
    }
    assert!(stderr.contains("marked 1 trial(s) without a heartbeat as FAIL"), "{stderr}");
}

#[test]
fn two_processes_share_one_sqlite_study() {
    let dir = tempfile::tempdir().unwrap();
    two_processes_share_one_study(&format!("sqlite:///{}", dir.path().join("shared.db").display()));
}

#[test]
fn two_processes_share_one_postgres_study() {
    let Some(server) = PostgresServer::start_or_skip("two_processes_share_one_postgres_study") else { return };
    two_processes_share_one_study(&server.url());
}

#[test]
fn a_killed_sqlite_study_resumes_to_its_total() {
    let dir = tempfile::tempdir().unwrap();
    a_killed_study_resumes_to_its_total(&format!("sqlite:///{}", dir.path().join("resume.db").display()));
}

#[test]
fn a_killed_postgres_study_resumes_to_its_total() {
    let Some(server) = PostgresServer::start_or_skip("a_killed_postgres_study_resumes_to_its_total") else { return };
    a_killed_study_resumes_to_its_total(&server.url());
}

fn ctrl_c_marks_the_running_trial_failed(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (6, 2, 0), 6);
    let child = spawn_kiln(&study_args(&data, url, "int", 3, 50, 64), dir.path());
    wait_for(url, "int", "the first trial reported an epoch", |t| {
        t.first().is_some_and(|t| !t.intermediate.is_empty())
    });
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let trials = stored_trials(url, "int");
    assert_eq!(trials.len(), 1);
    assert_eq!(trials[0].state, TrialState::Fail);
    assert_eq!(trials[0].reason.as_deref(), Some("interrupted (Ctrl-C)"));
}

#[test]
fn ctrl_c_marks_the_running_sqlite_trial_failed() {
    let dir = tempfile::tempdir().unwrap();
    ctrl_c_marks_the_running_trial_failed(&format!("sqlite:///{}", dir.path().join("int.db").display()));
}

#[test]
fn ctrl_c_marks_the_running_postgres_trial_failed() {
    let Some(server) = PostgresServer::start_or_skip("ctrl_c_marks_the_running_postgres_trial_failed") else { return };
    ctrl_c_marks_the_running_trial_failed(&server.url());
}
