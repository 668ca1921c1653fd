//! The PostgreSQL storage against real servers: connections lost mid-call and mid-study, a commit whose answer was
//! lost, TLS modes and password authentication.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use kiln_testkit::{PostgresServer, ServerOptions};
use postgres::NoTls;
use serde_json::{json, Value};

use super::*;
use crate::space::Distribution;
use crate::storage::StorageUrl;
use crate::study::{run_study, Objective, PrunerKind, SamplerKind, StudyOptions, Trainer, TrialError, TrialRun};

/// Ends every connection kiln has open to `server` (as a server restart or a network drop would).
fn drop_kiln_connections(server: &PostgresServer) -> u64 {
    let mut admin = postgres::Client::connect(&format!("{}?application_name=admin", server.url()), NoTls).unwrap();
    let row = admin
        .query_one(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = 'kiln' AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap();
    row.get::<_, i64>(0) as u64
}

/// `call`, whose first run ends its own connection right after it returns (its commit done, its answer lost).
fn lose_the_answer_of_the_first_run<T>(
    mut call: impl FnMut(&mut Client, Attempt) -> std::result::Result<T, postgres::Error>,
) -> impl FnMut(&mut Client, Attempt) -> std::result::Result<T, postgres::Error> {
    move |client, attempt| {
        let value = call(client, attempt)?;
        if attempt == Attempt::First {
            client.batch_execute("SELECT pg_terminate_backend(pg_backend_pid())")?;
        }
        Ok(value)
    }
}

#[test]
fn a_claim_or_finish_that_committed_before_the_connection_broke_is_not_repeated() {
    let Some(server) = PostgresServer::start_or_skip("claim/finish retries") else { return };
    let mut storage = PostgresStorage::connect_with_patience(&server.url(), Duration::from_secs(30)).unwrap();
    let study = storage.study("s", Direction::Maximize).unwrap();

    let claim_mark = mark("w");
    let claimed = storage
        .session
        .call("claim", lose_the_answer_of_the_first_run(claim_call(study, 10, "w", &claim_mark)))
        .unwrap();
    assert_eq!(claimed, Some(0), "the repeat returns the trial the lost commit claimed");
    let trials = storage.trials(study).unwrap();
    assert_eq!(trials.len(), 1, "no second trial was claimed: {trials:?}");
    assert_eq!(trials[0].state, TrialState::Running);

    let finish_mark = mark("finish");
    let finished = storage
        .session
        .call(
            "finish",
            lose_the_answer_of_the_first_run(finish_call(
                study,
                0,
                TrialState::Complete,
                Some(0.5),
                None,
                &finish_mark,
            )),
        )
        .unwrap();
    assert!(finished, "the repeat sees its own finish, not another worker's");
    let trials = storage.trials(study).unwrap();
    assert_eq!((trials[0].state, trials[0].value), (TrialState::Complete, Some(0.5)));
    // Another worker's finish is still told apart: a fresh finish of the ended trial reports false.
    assert!(!storage.finish(study, 0, TrialState::Fail, None, Some("late")).unwrap());
}

#[test]
fn every_call_goes_through_after_its_connection_is_dropped() {
    let Some(server) = PostgresServer::start_or_skip("every call reconnects") else { return };
    let mut storage = PostgresStorage::connect_with_patience(&server.url(), Duration::from_secs(30)).unwrap();
    let space = SearchSpace::from([("x".into(), Distribution::Int { low: 0, high: 9, step: 1, log: false })]);
    let space_json = serde_json::to_string(&space).unwrap();
    fn dropped<'a>(server: &PostgresServer, storage: &'a mut PostgresStorage) -> &'a mut PostgresStorage {
        assert_eq!(drop_kiln_connections(server), 1, "kiln's one connection was open");
        storage
    }
    let study = dropped(&server, &mut storage).study("s", Direction::Minimize).unwrap();
    assert_eq!(dropped(&server, &mut storage).set_space(study, &space_json).unwrap(), space_json);
    assert_eq!(dropped(&server, &mut storage).space(study).unwrap(), Some(space_json));
    let n = dropped(&server, &mut storage).claim_trial(study, 5, "w").unwrap().unwrap();
    let params = Params::from([("x".to_string(), json!(3))]);
    dropped(&server, &mut storage).set_params(study, n, &params, &space).unwrap();
    dropped(&server, &mut storage).set_user_attr(study, n, "k", &Value::from("v")).unwrap();
    dropped(&server, &mut storage).report(study, n, 1, 0.25).unwrap();
    dropped(&server, &mut storage).heartbeat(study, n).unwrap();
    assert_eq!(dropped(&server, &mut storage).fail_stale(study, Duration::from_secs(600)).unwrap(), 0);
    assert!(dropped(&server, &mut storage).finish(study, n, TrialState::Complete, Some(0.25), None).unwrap());
    let trials = dropped(&server, &mut storage).trials(study).unwrap();
    assert_eq!(trials.len(), 1);
    let t = &trials[0];
    assert_eq!(
        (t.state, t.value, &t.params, t.intermediate.get(&1)),
        (TrialState::Complete, Some(0.25), &params, Some(&0.25))
    );
    assert_eq!(dropped(&server, &mut storage).studies().unwrap(), vec!["s".to_string()]);
    assert_eq!(dropped(&server, &mut storage).study_direction("s").unwrap(), Some(Direction::Minimize));
}

#[test]
fn a_call_gives_up_after_its_patience_naming_the_cause() {
    let Some(server) = PostgresServer::start_or_skip("bounded patience") else { return };
    let url = server.url();
    let mut storage = PostgresStorage::connect_with_patience(&url, Duration::from_millis(800)).unwrap();
    let study = storage.study("s", Direction::Minimize).unwrap();
    drop(server);
    let start = Instant::now();
    let err = storage.trials(study).unwrap_err().to_string();
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(700) && waited < Duration::from_secs(15), "{waited:?}");
    assert!(err.contains("not re-established within 1 s") && err.contains("reading the trials"), "{err}");
}

/// A trainer whose every trial reports `epochs` values, `pause` apart.
struct Steady {
    epochs: usize,
    pause: Duration,
}

impl Trainer for Steady {
    fn objective(&self) -> Objective {
        Objective { metric: "accuracy".into(), direction: Direction::Maximize }
    }
    fn settings(&self) -> Value {
        json!({ "x": 0 })
    }
    fn seed(&self) -> u64 {
        0
    }
    fn train(
        &mut self,
        params: &Params,
        _trial: &str,
        report: &mut dyn FnMut(usize, Option<f64>) -> ControlFlow<()>,
    ) -> std::result::Result<TrialRun, TrialError> {
        let x = params["x"].as_f64().unwrap();
        for epoch in 1..=self.epochs {
            std::thread::sleep(self.pause);
            if report(epoch, Some(x + epoch as f64)).is_break() {
                return Ok(TrialRun { interrupted: true, ..Default::default() });
            }
        }
        Ok(TrialRun::default())
    }
}

#[test]
fn a_study_goes_on_through_server_restarts_losing_and_repeating_no_trial() {
    let Some(server) = PostgresServer::start_or_skip("study through restarts") else { return };
    const TRIALS: usize = 10;
    const EPOCHS: usize = 4;
    let storage = StorageUrl::parse(&server.url()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let space = SearchSpace::from([("x".into(), Distribution::Int { low: 0, high: 9, step: 1, log: false })]);
    let options = |worker: &str| StudyOptions {
        trials: TRIALS,
        storage: storage.clone(),
        name: "restarts".into(),
        sampler: SamplerKind::Random,
        pruner: PrunerKind::None,
        space: None,
        heartbeat_timeout: Duration::from_secs(600),
        worker: worker.into(),
        running: None,
    };
    // Created before the workers start, so that both open an existing study.
    let study = storage.open().unwrap().study("restarts", Direction::Maximize).unwrap();
    let workers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|worker| {
            let (options, space, dir) = (options(worker), space.clone(), dir.path().join(worker));
            std::thread::spawn(move || {
                let mut trainer = Steady { epochs: EPOCHS, pause: Duration::from_millis(120) };
                run_study(&mut trainer, &space, &dir, &options)
            })
        })
        .collect();
    // Two restarts while trials train (each trial takes about half a second; the study about 2.5 s).
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(700));
        server.restart().unwrap();
    }
    let outcomes: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let ran: usize = outcomes.iter().map(|o| o.as_ref().map(|o| o.ran).unwrap_or(0)).sum();
    for outcome in &outcomes {
        assert!(outcome.is_ok(), "a worker stopped: {:?}", outcome.as_ref().err());
    }
    assert_eq!(ran, TRIALS, "each trial ran once, by one worker");
    let trials = storage.open().unwrap().trials(study).unwrap();
    assert_eq!(trials.len(), TRIALS, "{trials:?}");
    for t in &trials {
        assert_eq!(t.state, TrialState::Complete, "trial {}: {:?}", t.number, t.reason);
        assert_eq!(t.intermediate.len(), EPOCHS, "trial {}: every epoch reported once", t.number);
        let x = t.params["x"].as_f64().unwrap();
        assert_eq!(t.value, Some(x + EPOCHS as f64), "trial {}", t.number);
    }
}

/// The URL of `server`'s database with the password and `query`.
fn tls_url(server: &PostgresServer, password: &str, query: &str) -> String {
    let url = server.url().replacen("kiln@", &format!("kiln:{password}@"), 1);
    if query.is_empty() {
        url
    } else {
        format!("{url}?{query}")
    }
}

/// Whether the connection of `storage` is encrypted, as the server sees it.
fn encrypted(storage: &mut PostgresStorage) -> bool {
    storage
        .session
        .call("ssl", |client, _| {
            client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).map(|r| r.get(0))
        })
        .unwrap()
}

fn path_query(key: &str, path: &Path) -> String {
    format!("{key}={}", path.display())
}

#[test]
fn tls_modes_and_password_authentication_against_a_tls_only_server() {
    let options = ServerOptions { password: Some("s3cret-pw".into()), tls: true };
    let Some(server) = PostgresServer::start_with_or_skip("tls modes", &options) else { return };
    let files = server.tls().unwrap().clone();
    let connect =
        |query: &str| PostgresStorage::connect_with_patience(&tls_url(&server, "s3cret-pw", query), Duration::ZERO);
    for query in ["", "sslmode=prefer", "sslmode=require"] {
        let mut storage = connect(query).unwrap_or_else(|e| panic!("{query}: {e}"));
        assert!(encrypted(&mut storage), "{query}: TLS");
    }
    let ca = path_query("sslrootcert", &files.ca);
    for mode in ["require", "verify-ca", "verify-full"] {
        let mut storage = connect(&format!("sslmode={mode}&{ca}")).unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert!(encrypted(&mut storage), "{mode}");
    }
    // A certificate another CA signed is refused wherever a root certificate is given.
    let other = path_query("sslrootcert", &files.other_ca);
    for mode in ["require", "verify-ca", "verify-full"] {
        let err = connect(&format!("sslmode={mode}&{other}")).err().unwrap().to_string();
        assert!(err.to_lowercase().contains("certificate"), "{mode}: {err}");
        assert!(!err.contains("s3cret-pw"), "{err}");
    }
    // The server takes no plain connections, and says so rather than kiln connecting without TLS.
    let err = connect("sslmode=disable").err().unwrap().to_string();
    assert!(err.contains("no encryption") || err.contains("pg_hba.conf"), "{err}");
    // The password is checked (SCRAM), and a wrong one is named in no error.
    let err = PostgresStorage::connect_with_patience(&tls_url(&server, "wrong-pw", ""), Duration::ZERO)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("password authentication failed") && !err.contains("wrong-pw"), "{err}");
    let err = connect(&format!("sslmode=verify-full&sslrootcert={}", files.ca.with_extension("missing").display()))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("sslrootcert") && err.contains(".missing"), "{err}");
}
