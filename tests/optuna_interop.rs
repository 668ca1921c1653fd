//! Real Optuna (5.0.0 from PyPI, in a throwaway environment) and optuna-dashboard as second clients of kiln's study
//! storage, on SQLite and on a PostgreSQL server the test starts: kiln creates the schema Optuna creates; Python reads
//! a study kiln ran (trials, states, values, parameters with their distributions, intermediate values, the best
//! parameters, importances); Python adds and enqueues trials that kiln then counts and samples from; the dashboard
//! serves kiln's study. Skipped with a printed reason where the environment cannot be built (or no PostgreSQL
//! server starts); `KILN_REQUIRE_PYTHON=1` and `KILN_REQUIRE_POSTGRES=1` (`.ci/run`) make that a failure.

mod common;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_testkit::{PostgresServer, PythonEnv};
use kiln_train::tune::{
    run_study, Direction, Distribution, Observation, Outcome, Sampler, SamplerKind, SearchSpace, StorageUrl,
    StudyOptions, TpeConfig, TpeSampler, TrialRecord, TrialState,
};
use serde_json::{json, Value};

const OPTUNA: [&str; 6] = [
    "optuna==5.0.0",
    "optuna-dashboard==0.21.0",
    "SQLAlchemy==2.1.9",
    "alembic==1.20.1",
    "psycopg[binary]==3.3.9",
    "numpy==2.4.6",
];

fn client(python: &PythonEnv, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/optuna_client.py");
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    String::from_utf8(python.run(&script, &args).unwrap().stdout).unwrap()
}

fn read(python: &PythonEnv, url: &str, study: &str) -> Value {
    serde_json::from_str(&client(python, &["read", url, study])).unwrap()
}

fn space() -> SearchSpace {
    SearchSpace::from([
        ("lr".to_string(), Distribution::Float { low: 1e-3, high: 3e-3, log: true, step: None }),
        ("label_smoothing".to_string(), Distribution::Categorical { choices: vec![json!(0.0), json!(0.1)] }),
        ("batch".to_string(), Distribution::Int { low: 4, high: 8, step: 4, log: false }),
    ])
}

/// Equal numbers, read back through JSON text (serde_json's default float parsing may miss the last bit).
fn same(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-15 * b.abs().max(1.0)
}

/// Optuna's view of a kiln trial equals kiln's.
fn assert_same_trial(kiln: &TrialRecord, optuna: &Value) {
    let n = kiln.number;
    assert_eq!(optuna["number"], n);
    assert_eq!(optuna["state"], kiln.state.name(), "trial {n}");
    match (optuna["value"].as_f64(), kiln.value) {
        (Some(a), Some(b)) => assert!(same(a, b), "trial {n}: {a} vs {b}"),
        (a, b) => assert_eq!(a, b, "trial {n}"),
    }
    for (key, value) in &kiln.params {
        let theirs = &optuna["params"][key];
        let numbers = theirs.as_f64().zip(value.as_f64()).is_some_and(|(a, b)| same(a, b));
        assert!(theirs == value || numbers, "trial {n} {key}: {theirs} vs {value}");
    }
    assert_eq!(optuna["params"].as_object().unwrap().len(), kiln.params.len(), "trial {n}");
    let theirs = optuna["intermediate"].as_object().unwrap();
    assert_eq!(theirs.len(), kiln.intermediate.len(), "trial {n}");
    for (step, value) in &kiln.intermediate {
        assert!(same(theirs[&step.to_string()].as_f64().unwrap(), *value), "trial {n} step {step}");
    }
    if !kiln.worker.is_empty() {
        assert_eq!(optuna["user_attrs"]["worker"], kiln.worker.as_str(), "trial {n}");
    }
}

/// The distributions Optuna reads for kiln's parameters are the search space's.
fn assert_distributions(optuna: &Value) {
    let d = &optuna["distributions"];
    assert_eq!(
        d["lr"],
        json!({"name": "FloatDistribution", "attributes": {"low": 0.001, "high": 0.003, "log": true, "step": null}})
    );
    assert_eq!(d["label_smoothing"], json!({"name": "CategoricalDistribution", "attributes": {"choices": [0.0, 0.1]}}));
    assert_eq!(
        d["batch"],
        json!({"name": "IntDistribution", "attributes": {"low": 4, "high": 8, "log": false, "step": 4}})
    );
}

/// kiln runs a study; Optuna reads it; Optuna adds 12 trials and enqueues one; kiln resumes, runs the enqueued trial
/// with its parameters and samples the next from all 15 trials before it.
fn kiln_and_optuna_share_a_study(python: &PythonEnv, url: &str, dir: &Path, name: &str) {
    let data = common::shapes(dir, (6, 3, 0), 3);
    let mut base = common::quick_config(&data, &dir.join("runs"), 2);
    base.img_size = 32;
    let mut options = StudyOptions {
        storage: StorageUrl::parse(url).unwrap(),
        sampler: SamplerKind::Tpe,
        space: Some(space()),
        ..common::sqlite_study(dir, name, 2)
    };
    let first = {
        let _turn = common::one_training_at_a_time();
        run_study(&base, &options).unwrap()
    };
    assert_eq!(first.ran, 2);
    let seen = read(python, url, name);
    assert_eq!(seen["direction"], "MAXIMIZE");
    let trials = seen["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 2);
    for (kiln, optuna) in first.trials.iter().zip(trials) {
        assert_same_trial(kiln, optuna);
        assert_distributions(optuna);
        assert_eq!(optuna["user_attrs"]["run_dir"], json!(kiln.run_dir.as_ref().unwrap().display().to_string()));
        assert!(kiln.run_dir.as_ref().unwrap().join("weights/best.safetensors").is_file());
    }
    let best: Value = serde_json::from_slice(&std::fs::read(first.dir.join("best_params.json")).unwrap()).unwrap();
    assert_eq!(seen["best_number"], best["trial"]);
    assert_eq!(seen["best_params"], best["params"], "study.best_params is kiln's best_params.json");
    assert!(first.dir.join("best.safetensors").is_file(), "kiln's best trial's checkpoint is copied");
    let stored_space: SearchSpace = serde_json::from_value(seen["study_attrs"]["kiln:search_space"].clone()).unwrap();
    assert_eq!(stored_space, space(), "the search space is a study attribute");

    let space_json = serde_json::to_string(&space()).unwrap();
    client(python, &["add", url, name, "12", "7", &space_json]);
    client(python, &["enqueue", url, name, r#"{"lr": 0.002, "label_smoothing": 0.1, "batch": 4}"#]);
    options.trials = 16;
    let second = {
        let _turn = common::one_training_at_a_time();
        run_study(&base, &options).unwrap()
    };
    assert_eq!(second.ran, 2, "Optuna's 12 trials and the enqueued one count toward --trials");
    let numbers: Vec<u32> = second.trials.iter().map(|t| t.number).collect();
    assert_eq!(numbers, (0..16).collect::<Vec<u32>>());
    assert!(second.trials[2..14].iter().all(|t| t.state == TrialState::Complete && t.worker.is_empty()));
    let enqueued = &second.trials[14];
    assert_eq!((enqueued.state, enqueued.worker.as_str()), (TrialState::Complete, "test"));
    assert_eq!(enqueued.params["lr"], json!(0.002), "the enqueued trial ran with its parameters");
    assert_eq!(enqueued.params["label_smoothing"], json!(0.1));
    // Trial 15 is TPE's proposal from the 15 trials before it (past its 10 startup trials), Optuna's included.
    let history: Vec<Observation> = second.trials[..15]
        .iter()
        .map(|t| Observation { params: t.params.clone(), value: -t.value.unwrap(), outcome: Outcome::Complete })
        .collect();
    let proposal = |history: &[Observation]| {
        TpeSampler::new(TpeConfig { seed: base.seed + 15, ..Default::default() }).sample(&space(), history)
    };
    assert_eq!(second.trials[15].params, proposal(&history));
    assert_ne!(second.trials[15].params, proposal(&history[..2]), "without Optuna's trials it would sample randomly");

    // Optuna's trials score above any accuracy, so the best trial ran in Python: no run directory, no checkpoint.
    let best = second.best.as_ref().unwrap();
    assert!((2..14).contains(&best.number), "{}", best.number);
    let best_json: Value =
        serde_json::from_slice(&std::fs::read(second.dir.join("best_params.json")).unwrap()).unwrap();
    assert_eq!((best_json["trial"].clone(), best_json["run"].clone()), (json!(best.number), Value::Null));
    assert!(!second.dir.join("best.safetensors").exists(), "the first run's best checkpoint is not left as this one's");
    let seen = read(python, url, name);
    assert_eq!(seen["best_number"], best.number);
    let trials = seen["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 16);
    for (kiln, optuna) in second.trials.iter().zip(trials) {
        assert_same_trial(kiln, optuna);
    }
    assert_eq!(seen["importances"].as_object().unwrap().len(), 3, "get_param_importances reads every parameter");
    optunas_stale_trial_check_agrees(python, url);
}

/// Optuna's `fail_stale_trials` reads kiln's heartbeats as kiln does: a silent trial fails, a beating one does not.
fn optunas_stale_trial_check_agrees(python: &PythonEnv, url: &str) {
    let url_parsed = StorageUrl::parse(url).unwrap();
    let mut storage = url_parsed.open().unwrap();
    let study = storage.study("stale", Direction::Minimize).unwrap();
    let silent = storage.claim_trial(study, 2, "w").unwrap().unwrap();
    let beating = storage.claim_trial(study, 2, "w").unwrap().unwrap();
    // Seven silent seconds against a grace of four (SQLite's clock, which Optuna reads, has whole seconds), and a
    // fresh beat that stays within the grace if Python starts within four seconds.
    std::thread::sleep(Duration::from_secs(7));
    storage.heartbeat(study, beating).unwrap();
    let failed: Vec<u32> = serde_json::from_str(&client(python, &["fail-stale", url, "stale", "4"])).unwrap();
    assert_eq!(failed, vec![silent], "Optuna fails the trial without a heartbeat, and only that one");
    let trials = storage.trials(study).unwrap();
    assert_eq!((trials[0].state, trials[1].state), (TrialState::Fail, TrialState::Running));
}

#[test]
fn optuna_reads_kiln_studies_and_kiln_resumes_optunas_trials_on_sqlite_and_postgres() {
    let test = "optuna_reads_kiln_studies_and_kiln_resumes_optunas_trials_on_sqlite_and_postgres";
    let Some(python) = PythonEnv::create_or_skip(test, "optuna", &OPTUNA) else { return };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:///{}", dir.path().join("study.db").display());
    kiln_and_optuna_share_a_study(&python, &url, dir.path(), "shared");
    dashboard_serves(&python, &url, "shared", 16);
    if let Some(server) = PostgresServer::start_or_skip(test) {
        let dir = tempfile::tempdir().unwrap();
        kiln_and_optuna_share_a_study(&python, &server.url(), dir.path(), "shared");
    }
}

/// optuna-dashboard, on a free loopback port, lists the study and serves its trials.
fn dashboard_serves(python: &PythonEnv, url: &str, name: &str, trials: usize) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // Its console script's shebang names the directory the environment was built in, so run the module's main.
    let mut server = Command::new(python.python())
        .args(["-c", "import sys; from optuna_dashboard._cli import main; sys.exit(main())"])
        .args([url, "--host", "127.0.0.1", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let get = |path: &str| -> Option<Value> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        Some(serde_json::from_str(body).unwrap())
    };
    let start = Instant::now();
    let list = loop {
        if let Some(list) = get("/api/studies") {
            break list;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "optuna-dashboard did not answer on port {port}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let summary = list["study_summaries"].as_array().unwrap().iter().find(|s| s["study_name"] == name).cloned();
    let summary = summary.unwrap_or_else(|| panic!("{name} not in {list}"));
    assert_eq!(summary["directions"], json!(["maximize"]));
    let study = get(&format!("/api/studies/{}?after=0", summary["study_id"])).unwrap();
    let served = study["trials"].as_array().unwrap();
    assert_eq!(served.len(), trials);
    assert!(served.iter().all(|t| t["state"] == "Complete" && t["params"].as_array().unwrap().len() == 3), "{study}");
    let _ = server.kill();
    let mut stderr = String::new();
    server.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let _ = server.wait();
    assert!(!stderr.contains("Traceback"), "optuna-dashboard failed: {stderr}");
}

#[test]
fn kiln_creates_the_schema_optuna_creates() {
    let test = "kiln_creates_the_schema_optuna_creates";
    let Some(python) = PythonEnv::create_or_skip(test, "optuna", &OPTUNA) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (optunas, kilns) = (dir.path().join("optuna.db"), dir.path().join("kiln.db"));
    client(&python, &["create", &format!("sqlite:///{}", optunas.display())]);
    drop(StorageUrl::Sqlite(kilns.clone()).open().unwrap());
    let schema = |path: &Path| {
        let out = Command::new("python3").args(["-c", SQLITE_SCHEMA, path.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let optuna_schema = schema(&optunas);
    assert!(optuna_schema.contains("trial_heartbeats") && optuna_schema.contains("v3.2.0.a"), "{optuna_schema}");
    assert_eq!(schema(&kilns), optuna_schema, "SQLite: the same statements, versions and no other tables");

    let Some(server) = PostgresServer::start_or_skip(test) else { return };
    let mut admin = postgres::Client::connect(&server.url(), postgres::NoTls).unwrap();
    admin.batch_execute("CREATE DATABASE optuna_made").unwrap();
    admin.batch_execute("CREATE DATABASE kiln_made").unwrap();
    let url = |db: &str| format!("{}/{db}", server.url().rsplit_once('/').unwrap().0);
    client(&python, &["create", &url("optuna_made")]);
    drop(StorageUrl::parse(&url("kiln_made")).unwrap().open().unwrap());
    let catalog = |db: &str| -> Vec<String> {
        let mut c = postgres::Client::connect(&url(db), postgres::NoTls).unwrap();
        let mut rows = Vec::new();
        for query in PG_CATALOG {
            for row in c.query(*query, &[]).unwrap() {
                rows.push(
                    (0..row.len())
                        .map(|i| row.get::<_, Option<String>>(i).unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join("|"),
                );
            }
        }
        rows
    };
    let optuna_catalog = catalog("optuna_made");
    assert!(optuna_catalog.len() > 60, "{optuna_catalog:?}");
    assert_eq!(catalog("kiln_made"), optuna_catalog, "PostgreSQL: the same types, columns, constraints and indexes");
}

/// Prints a SQLite file's schema statements and version rows.
const SQLITE_SCHEMA: &str = "
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
for row in c.execute(\"SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid\"):
    print(row)
print(list(c.execute('SELECT * FROM version_info')), list(c.execute('SELECT * FROM alembic_version')))
";

/// What a PostgreSQL database's schema is made of, as text rows.
const PG_CATALOG: &[&str] = &[
    "SELECT t.typname::text, e.enumlabel::text, e.enumsortorder::text FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid
     ORDER BY 1, 3",
    "SELECT table_name::text, column_name::text, ordinal_position::text, data_type::text, udt_name::text,
            is_nullable::text, column_default::text, character_maximum_length::text
     FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 3",
    "SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid) FROM pg_constraint
     WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
    "SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
    "SELECT sequencename::text, data_type::text, start_value::text, increment_by::text FROM pg_sequences
     WHERE schemaname = 'public' ORDER BY 1",
    "SELECT schema_version::text, library_version::text FROM version_info",
    "SELECT version_num::text FROM alembic_version",
];

/// An Optuna worker (`study.ask()` pops the oldest WAITING trial, locking only its row) and three kiln workers claim
/// the same queue of enqueued trials at once, 200 times over: every trial is run exactly once. (Before kiln's claim
/// re-checked the state, this run gave several trials to two workers.)
#[test]
fn python_and_kiln_workers_run_each_enqueued_trial_once_on_postgres() {
    let test = "python_and_kiln_workers_run_each_enqueued_trial_once_on_postgres";
    let Some(python) = PythonEnv::create_or_skip(test, "optuna", &OPTUNA) else { return };
    let Some(server) = PostgresServer::start_or_skip(test) else { return };
    const TRIALS: usize = 200;
    let url = server.url();
    let storage_url = StorageUrl::parse(&url).unwrap();
    let study = storage_url.open().unwrap().study("queue", Direction::Minimize).unwrap();
    client(&python, &["enqueue", &url, "queue", "{}", &TRIALS.to_string()]);
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("python-ready");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/optuna_client.py");
    let python_worker = Command::new(python.python())
        .arg(&script)
        .args(["pop-waiting", &url, "queue", &TRIALS.to_string(), ready.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let kiln_workers: Vec<_> = (0..3)
        .map(|w| {
            let (storage_url, ready) = (storage_url.clone(), ready.clone());
            std::thread::spawn(move || {
                let mut storage = storage_url.open().unwrap();
                let start = Instant::now();
                while !ready.exists() {
                    assert!(start.elapsed() < Duration::from_secs(120), "the Optuna worker never started");
                    std::thread::sleep(Duration::from_millis(5));
                }
                let mut ran = Vec::new();
                while let Some(number) = storage.claim_trial(study, TRIALS, &format!("kiln-{w}")).unwrap() {
                    ran.push(number);
                    // A trial takes a moment, so that the slower Optuna worker gets its share of the queue.
                    std::thread::sleep(Duration::from_millis(50));
                    storage.finish(study, number, TrialState::Complete, Some(1.0), None).unwrap();
                }
                ran
            })
        })
        .collect();
    let mut ran: Vec<u32> = kiln_workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let kilns = ran.len();
    let output = python_worker.wait_with_output().unwrap();
    assert!(output.status.success(), "Optuna worker: {}", String::from_utf8_lossy(&output.stderr));
    let pythons: Vec<u32> = serde_json::from_slice(&output.stdout).unwrap();
    eprintln!("kiln ran {kilns} trials, Optuna {}", pythons.len());
    ran.extend(&pythons);
    ran.sort_unstable();
    let twice: Vec<u32> = ran.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
    assert!(twice.is_empty(), "trials run by two workers: {twice:?} (kiln ran {kilns}, Optuna {})", pythons.len());
    assert_eq!(ran, (0..TRIALS as u32).collect::<Vec<_>>(), "every enqueued trial ran");
    assert!(
        kilns > 0 && !pythons.is_empty(),
        "both kinds of worker claimed trials (kiln {kilns}, Optuna {})",
        pythons.len()
    );
}
