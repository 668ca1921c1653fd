//! What a study's storage costs a worker, on SQLite and on a local PostgreSQL server (skipped, with a message, when
//! none can be started): claiming and finishing a trial, one epoch's report, and the per-epoch read of the whole
//! study that the pruner and sampler need, with 1,000 trials of 20 reported epochs each.
//! `cargo bench -p kiln-tune --bench study_storage`.

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;

use kiln_testkit::PostgresServer;
use kiln_tune::{Direction, Distribution, Params, SearchSpace, Storage, StorageUrl, TrialState};

const TRIALS: u32 = 1000;
const EPOCHS: usize = 20;

/// A study of `TRIALS` complete trials with `EPOCHS` intermediate values each, and one RUNNING trial.
fn filled(url: &StorageUrl) -> (Box<dyn Storage>, i64, u32) {
    let mut storage = url.open().unwrap();
    let study = storage.study("bench", Direction::Maximize).unwrap();
    let space = SearchSpace::from([
        ("lr".to_string(), Distribution::Float { low: 0.0, high: 10.0, log: false, step: None }),
        ("batch".to_string(), Distribution::Int { low: 8, high: 256, step: 8, log: false }),
    ]);
    for _ in 0..TRIALS {
        let n = storage.claim_trial(study, usize::MAX, "w").unwrap().unwrap();
        let params = Params::from([("lr".to_string(), json!(1e-3 * n as f64)), ("batch".to_string(), json!(32))]);
        storage.set_params(study, n, &params, &space).unwrap();
        for step in 1..=EPOCHS {
            storage.report(study, n, step, step as f64 / EPOCHS as f64).unwrap();
        }
        storage.finish(study, n, TrialState::Complete, Some(0.5), None).unwrap();
    }
    let running = storage.claim_trial(study, usize::MAX, "w").unwrap().unwrap();
    (storage, study, running)
}

fn bench_backend(c: &mut Criterion, name: &str, url: &StorageUrl) {
    let (mut storage, study, running) = filled(url);
    c.bench_function(&format!("{name}_read_study_1000_trials_x_20_epochs"), |b| {
        b.iter(|| assert_eq!(storage.trials(study).unwrap().len(), TRIALS as usize + 1))
    });
    let mut step = EPOCHS;
    c.bench_function(&format!("{name}_report_epoch"), |b| {
        b.iter(|| {
            step += 1;
            storage.report(study, running, step, 0.5).unwrap()
        })
    });
    c.bench_function(&format!("{name}_claim_and_finish_trial"), |b| {
        b.iter(|| {
            let n = storage.claim_trial(study, usize::MAX, "w").unwrap().unwrap();
            storage.finish(study, n, TrialState::Complete, Some(0.5), None).unwrap()
        })
    });
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    bench_backend(c, "sqlite", &StorageUrl::Sqlite(dir.path().join("bench.db")));
    if let Some(server) = PostgresServer::start_or_skip("study_storage bench (postgres)") {
        bench_backend(c, "postgres", &StorageUrl::parse(&server.url()).unwrap());
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
