//! Where studies live: their trials (number, state, parameters, value, reason, heartbeat) and intermediate values,
//! in Optuna's own RDB schema, so that `optuna.load_study`, optuna-dashboard and Python workers share a study with
//! kiln. [`SqliteStorage`] is one file for workers on one machine; [`PostgresStorage`] is a server for workers on
//! many. Both hand out trial numbers inside a transaction that serialises the claims of one study (and Optuna's
//! own), so no number is given twice and a study never exceeds its total, and both move a trial out of RUNNING
//! exactly once. Study files of kiln's own earlier tables are refused until `kiln study migrate` converts them.

mod legacy;
mod optuna;
pub mod password;
mod postgres;
mod rows;
mod sqlite;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::sampler::Params;
use super::space::SearchSpace;
use crate::{Error, Result};

pub use legacy::{migrate, Migration};
pub use optuna::{ALEMBIC_VERSION, LIBRARY_VERSION, RUN_DIR_ATTR, SCHEMA_VERSION};
pub use postgres::{patience_from_environment, PostgresStorage, DEFAULT_PATIENCE};
pub(crate) use rows::TrialRows;
pub use sqlite::SqliteStorage;

/// Where a trial stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TrialState {
    Running,
    Complete,
    Pruned,
    Fail,
    /// Enqueued (by `study.enqueue_trial` in Python) and not yet claimed; the next claim runs it.
    Waiting,
}

impl TrialState {
    pub fn name(self) -> &'static str {
        match self {
            TrialState::Running => "RUNNING",
            TrialState::Complete => "COMPLETE",
            TrialState::Pruned => "PRUNED",
            TrialState::Fail => "FAIL",
            TrialState::Waiting => "WAITING",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "COMPLETE" => TrialState::Complete,
            "PRUNED" => TrialState::Pruned,
            "FAIL" => TrialState::Fail,
            "WAITING" => TrialState::Waiting,
            _ => TrialState::Running,
        }
    }
}

/// Whether the study's objective is minimised or maximised (the task's objective direction).
pub use crate::direction::Direction;

/// One trial as stored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrialRecord {
    pub number: u32,
    pub state: TrialState,
    pub params: Params,
    pub value: Option<f64>,
    /// Reported values by step.
    pub intermediate: BTreeMap<usize, f64>,
    /// Why a trial failed (the `fail_reason` system attribute).
    pub reason: Option<String>,
    /// The kiln worker (`host:pid`) that claimed the trial; empty for trials other clients ran.
    pub worker: String,
    /// The trial's run directory (the `run_dir` user attribute), once training has started.
    pub run_dir: Option<PathBuf>,
    /// Parameters fixed by `study.enqueue_trial` (the `fixed_params` system attribute); the sampler draws the rest.
    pub fixed_params: Params,
    /// Seconds since the epoch; `None` for a WAITING trial.
    pub started: Option<f64>,
    pub finished: Option<f64>,
}

/// A study store. Every method is one short transaction, so any number of connections (threads, processes,
/// machines) may work on one study.
pub trait Storage: Send {
    /// The study's id, creating it; an existing study with the other direction is an error.
    fn study(&mut self, name: &str, direction: Direction) -> Result<i64>;
    /// Stores the study's search space (JSON) unless one is stored already; returns the stored one, so that every
    /// worker can check it samples the same space.
    fn set_space(&mut self, study: i64, space: &str) -> Result<String>;
    /// The study's search space (JSON), if one was stored.
    fn space(&mut self, study: i64) -> Result<Option<String>>;
    /// Claims a trial as RUNNING: the oldest WAITING one if any, else a new one if the study has fewer than `total`
    /// trials (failed ones count too); `None` when it is full.
    fn claim_trial(&mut self, study: i64, total: usize, worker: &str) -> Result<Option<u32>>;
    /// Stores the trial's parameters with their distributions from `space` (a parameter outside it is an error).
    fn set_params(&mut self, study: i64, number: u32, params: &Params, space: &SearchSpace) -> Result<()>;
    /// Sets a user attribute of the trial (shown by optuna-dashboard, `trial.user_attrs` in Python).
    fn set_user_attr(&mut self, study: i64, number: u32, key: &str, value: &Value) -> Result<()>;
    /// Records an intermediate value and refreshes the heartbeat.
    fn report(&mut self, study: i64, number: u32, step: usize, value: f64) -> Result<()>;
    /// Refreshes a RUNNING trial's heartbeat.
    fn heartbeat(&mut self, study: i64, number: u32) -> Result<()>;
    /// Ends a RUNNING trial; `false` when it was no longer RUNNING (another worker or an interrupt handler ended it
    /// first), in which case nothing changes.
    fn finish(
        &mut self,
        study: i64,
        number: u32,
        state: TrialState,
        value: Option<f64>,
        reason: Option<&str>,
    ) -> Result<bool>;
    /// Marks RUNNING trials whose heartbeat is older than `timeout` as FAIL (their worker died); returns how many.
    fn fail_stale(&mut self, study: i64, timeout: Duration) -> Result<usize>;
    /// Every trial of the study, by number.
    fn trials(&mut self, study: i64) -> Result<Vec<TrialRecord>>;
    /// The names of the stored studies.
    fn studies(&mut self) -> Result<Vec<String>>;
    /// The direction a study was created with; `None` when there is no such study.
    fn study_direction(&mut self, name: &str) -> Result<Option<Direction>>;
    /// Whether the study exists.
    fn has_study(&mut self, name: &str) -> Result<bool> {
        Ok(self.study_direction(name)?.is_some())
    }
}

/// The parameter as `trial_params` stores it: the internal number and the distribution's JSON.
fn stored_param(space: &SearchSpace, name: &str, value: &Value) -> Result<(f64, String), String> {
    let distribution = space.get(name).ok_or_else(|| format!("parameter '{name}' is not in the search space"))?;
    let stored = optuna::param_value(distribution, value)
        .ok_or_else(|| format!("parameter '{name}' = {value} does not belong to its distribution"))?;
    Ok((stored, optuna::distribution_json(distribution)))
}

/// The attribute rows kiln keeps for a trial: (table, key, value).
fn trial_attributes(trial: &TrialRecord) -> Vec<(&'static str, &'static str, Value)> {
    let mut rows = Vec::new();
    if !trial.worker.is_empty() {
        rows.push(("trial_user_attributes", optuna::WORKER_ATTR, Value::from(trial.worker.clone())));
    }
    if let Some(dir) = &trial.run_dir {
        rows.push(("trial_user_attributes", optuna::RUN_DIR_ATTR, Value::from(dir.display().to_string())));
    }
    if let Some(reason) = &trial.reason {
        rows.push(("trial_system_attributes", optuna::FAIL_REASON_ATTR, Value::from(reason.clone())));
    }
    rows
}

/// Checks a study's stored directions (by objective) against the one asked for.
fn check_direction(url: &str, name: &str, stored: &[String], direction: Direction) -> Result<()> {
    let refuse = |reason: String| Err(Error::Storage { url: url.into(), reason });
    match stored {
        [one] => match optuna::direction_from(one) {
            Some(d) if d == direction => Ok(()),
            Some(d) => refuse(format!("study '{name}' was created to {}, not to {}", d.name(), direction.name())),
            None => refuse(format!("study '{name}' has no direction ({one}); kiln needs minimize or maximize")),
        },
        _ => refuse(format!("study '{name}' has {} objectives; kiln optimises studies of one objective", stored.len())),
    }
}

/// The fail reason of a trial whose worker stopped beating.
fn stale_reason(timeout: Duration) -> String {
    format!("no heartbeat for {} s (worker gone)", timeout.as_secs_f64())
}

/// A storage address, as `--storage` takes it: `sqlite:///study.db` (relative), `sqlite:////abs/study.db`
/// (absolute), or `postgres://user[:password]@host[:port]/database` (also `postgresql://`, with libpq-style query
/// parameters such as `?sslmode=disable`).
#[derive(Clone, PartialEq, Eq)]
pub enum StorageUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl StorageUrl {
    pub fn parse(url: &str) -> Result<Self> {
        if let Some(path) = url.strip_prefix("sqlite:///") {
            if path.is_empty() {
                return Err(Error::Storage { url: url.into(), reason: "no file after sqlite:///".into() });
            }
            return Ok(StorageUrl::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StorageUrl::Postgres(url.to_string()));
        }
        Err(Error::Storage {
            url: redact(url),
            reason: "expected sqlite:///FILE or postgres://USER@HOST[:PORT]/DATABASE".into(),
        })
    }

    /// Connects (creating the file or the tables when missing).
    pub fn open(&self) -> Result<Box<dyn Storage>> {
        match self {
            StorageUrl::Sqlite(_) => self.open_with_patience(Duration::ZERO),
            StorageUrl::Postgres(_) => self.open_with_patience(patience_from_environment()?),
        }
    }

    /// [`open`](Self::open), with a server's lost connection retried for `patience` only (a heartbeat retries at
    /// its next beat instead of holding up the trial's end).
    pub fn open_with_patience(&self, patience: Duration) -> Result<Box<dyn Storage>> {
        Ok(match self {
            StorageUrl::Sqlite(path) => Box::new(SqliteStorage::open(path)?),
            StorageUrl::Postgres(url) => Box::new(PostgresStorage::connect_with_patience(url, patience)?),
        })
    }
}

/// The URL as it may be printed: a PostgreSQL password is replaced by `***`.
impl fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageUrl::Sqlite(path) => write!(f, "sqlite:///{}", path.display()),
            StorageUrl::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl fmt::Debug for StorageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `scheme://user:secret@host/db?password=secret` → `scheme://user:***@host/db?password=***`: the password in
/// the user information and in the query parameters the driver reads secrets from (`password`, libpq's
/// `sslpassword`).
///
/// The user information ends at an `@` anywhere before the query, `/` included: the PostgreSQL client takes the
/// credentials up to the first `@` of the whole remainder (`postgres://kiln:ab/cd@host/db` has the password
/// `ab/cd`). Everything up to the last `@` before the query is hidden, so an unencoded `@` in a password hides the
/// whole password too.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let query_start = rest.find('?').unwrap_or(rest.len());
    let rest = match rest[..query_start].rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{user}:***{}", &rest[at..]),
            None => rest.to_string(),
        },
        None => rest.to_string(),
    };
    let Some((path, query)) = rest.split_once('?') else { return format!("{scheme}://{rest}") };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if ["password", "sslpassword"].contains(&key.to_ascii_lowercase().as_str()) => {
                format!("{key}=***")
            }
            _ => pair.to_string(),
        })
        .collect();
    format!("{scheme}://{path}?{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::Distribution;
    use kiln_testkit::PostgresServer;
    use serde_json::json;

    /// Runs `check` against a fresh SQLite file and, where a server can be started, a fresh PostgreSQL database.
    fn on_every_backend(test: &str, check: impl Fn(&StorageUrl)) {
        let dir = tempfile::tempdir().unwrap();
        check(&StorageUrl::Sqlite(dir.path().join("study.db")));
        if let Some(server) = PostgresServer::start_or_skip(test) {
            check(&StorageUrl::parse(&server.url()).unwrap());
        }
    }

    fn x_space() -> SearchSpace {
        SearchSpace::from([("x".to_string(), Distribution::Int { low: 0, high: 100, step: 1, log: false })])
    }

    #[test]
    fn urls_parse_and_print_without_passwords() {
        assert_eq!(StorageUrl::parse("sqlite:///study.db").unwrap(), StorageUrl::Sqlite("study.db".into()));
        assert_eq!(StorageUrl::parse("sqlite:////tmp/s.db").unwrap(), StorageUrl::Sqlite("/tmp/s.db".into()));
        assert_eq!(StorageUrl::parse("sqlite:////tmp/s.db").unwrap().to_string(), "sqlite:////tmp/s.db");
        let pg = StorageUrl::parse("postgresql://kiln:hunter2@db.lan:5433/studies").unwrap();
        assert_eq!(pg.to_string(), "postgresql://kiln:***@db.lan:5433/studies");
        assert_eq!(StorageUrl::parse("postgres://kiln@h/db").unwrap().to_string(), "postgres://kiln@h/db");
        // The client reads `ab/cd` as the password here (its user information ends at the `@`, past the `/`).
        let client: ::postgres::Config = "postgres://kiln:ab/cd@host/db".parse().unwrap();
        assert_eq!(client.get_password(), Some(b"ab/cd".as_slice()));
        assert_eq!(
            StorageUrl::parse("postgres://kiln:ab/cd@host/db").unwrap().to_string(),
            "postgres://kiln:***@host/db"
        );
        assert_eq!(
            StorageUrl::parse("postgres://kiln:p@ss@host/db").unwrap().to_string(),
            "postgres://kiln:***@host/db"
        );
        assert_eq!(StorageUrl::parse("postgres://kiln@h/db?x=1").unwrap().to_string(), "postgres://kiln@h/db?x=1");
        let err = StorageUrl::parse("mysql://u:pw@h/db").unwrap_err().to_string();
        assert!(err.contains("mysql://u:***@h/db") && err.contains("expected sqlite"), "{err}");
        assert!(StorageUrl::parse("study.db").is_err() && StorageUrl::parse("sqlite:///").is_err());
        // A password passed as a query parameter is hidden too, whatever else the query holds.
        let pg =
            StorageUrl::parse("postgresql://kiln@db.lan/studies?sslmode=disable&password=hunter2&PASSWORD=x").unwrap();
        assert_eq!(pg.to_string(), "postgresql://kiln@db.lan/studies?sslmode=disable&password=***&PASSWORD=***");
        let both = StorageUrl::parse("postgres://u:a@h/db?sslpassword=b&application_name=kiln").unwrap();
        assert_eq!(both.to_string(), "postgres://u:***@h/db?sslpassword=***&application_name=kiln");
    }

    #[test]
    fn an_unreachable_server_is_a_clear_error() {
        // Port 1 on loopback: nothing listens there.
        let err = StorageUrl::parse("postgres://kiln:pw@127.0.0.1:1/x").unwrap().open().err().unwrap().to_string();
        assert!(err.contains("postgres://kiln:***@127.0.0.1:1/x") && !err.contains("pw@"), "{err}");
        let url = StorageUrl::parse("postgres://kiln@127.0.0.1:1/x?password=sekrit").unwrap();
        let err = url.open().err().unwrap().to_string();
        assert!(err.contains("?password=***") && !err.contains("sekrit"), "{err}");
    }

    #[test]
    fn concurrent_workers_get_unique_numbers_and_never_exceed_the_total() {
        on_every_backend("storage: concurrent workers", |url| {
            let study = url.open().unwrap().study("s", Direction::Maximize).unwrap();
            let claimed: Vec<u32> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4)
                    .map(|w| {
                        s.spawn(move || {
                            // Each worker has its own connection, as separate processes would.
                            let mut storage = url.open().unwrap();
                            let mut mine = Vec::new();
                            while let Some(n) = storage.claim_trial(study, 23, &format!("w{w}")).unwrap() {
                                let x = Params::from([("x".to_string(), json!(n))]);
                                storage.set_params(study, n, &x, &x_space()).unwrap();
                                storage.report(study, n, 1, n as f64).unwrap();
                                assert!(storage.finish(study, n, TrialState::Complete, Some(n as f64), None).unwrap());
                                mine.push(n);
                            }
                            mine
                        })
                    })
                    .collect();
                handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
            });
            let mut sorted = claimed.clone();
            sorted.sort();
            assert_eq!(sorted, (0..23).collect::<Vec<u32>>(), "{url}: 23 unique numbers, none lost, none twice");
            let trials = url.open().unwrap().trials(study).unwrap();
            assert_eq!(trials.len(), 23);
            assert!(trials.iter().all(|t| t.state == TrialState::Complete && t.intermediate[&1] == t.number as f64));
            assert_eq!(trials[5].params["x"], json!(5));
        });
    }

    #[test]
    fn reopening_resumes_and_a_larger_total_adds_trials() {
        on_every_backend("storage: resume", |url| {
            let mut storage = url.open().unwrap();
            let study = storage.study("s", Direction::Minimize).unwrap();
            assert!(storage.has_study("s").unwrap() && !storage.has_study("t").unwrap());
            assert_eq!(storage.study_direction("s").unwrap(), Some(Direction::Minimize));
            assert_eq!(storage.study_direction("t").unwrap(), None);
            for _ in 0..3 {
                let n = storage.claim_trial(study, 6, "a").unwrap().unwrap();
                storage.finish(study, n, TrialState::Complete, Some(1.0), None).unwrap();
            }
            drop(storage);
            let mut storage = url.open().unwrap();
            assert_eq!(storage.study("s", Direction::Minimize).unwrap(), study);
            let mut more = Vec::new();
            while let Some(n) = storage.claim_trial(study, 6, "b").unwrap() {
                storage.finish(study, n, TrialState::Fail, None, Some("NaN loss")).unwrap();
                more.push(n);
            }
            assert_eq!(more, vec![3, 4, 5]);
            assert_eq!(storage.claim_trial(study, 7, "b").unwrap(), Some(6));
            let err = storage.study("s", Direction::Maximize).unwrap_err().to_string();
            assert!(err.contains("created to minimize"), "{err}");
            let trials = storage.trials(study).unwrap();
            assert_eq!(trials[4].reason.as_deref(), Some("NaN loss"));
            assert!(trials[4].finished.unwrap() >= trials[4].started.unwrap());
            assert_eq!(storage.set_space(study, "{\"lr\":1}").unwrap(), "{\"lr\":1}");
            assert_eq!(storage.set_space(study, "{\"lr\":2}").unwrap(), "{\"lr\":1}", "the first space stays");
            let other = storage.study("other", Direction::Maximize).unwrap();
            assert_eq!(storage.space(other).unwrap(), None);
            assert_eq!(storage.set_space(other, "{}").unwrap(), "{}");
            assert_eq!(storage.space(study).unwrap().as_deref(), Some("{\"lr\":1}"));
            assert_ne!(other, study);
            assert_eq!(storage.studies().unwrap(), vec!["s".to_string(), "other".to_string()]);
            assert!(storage.trials(other).unwrap().is_empty());
        });
    }

    #[test]
    fn parameters_read_back_as_written_and_values_outside_the_space_are_refused() {
        on_every_backend("storage: parameters", |url| {
            let mut storage = url.open().unwrap();
            let study = storage.study("s", Direction::Maximize).unwrap();
            let space = SearchSpace::from([
                ("lr".to_string(), Distribution::Float { low: 1e-4, high: 1e-1, log: true, step: None }),
                ("batch".to_string(), Distribution::Int { low: 8, high: 64, step: 8, log: false }),
                ("optim".to_string(), Distribution::Categorical { choices: vec![json!("adamw"), json!("sgd")] }),
            ]);
            let n = storage.claim_trial(study, 2, "w").unwrap().unwrap();
            let params = Params::from([
                ("lr".into(), json!(0.0123)),
                ("batch".into(), json!(24)),
                ("optim".into(), json!("sgd")),
            ]);
            storage.set_params(study, n, &params, &space).unwrap();
            storage.set_user_attr(study, n, RUN_DIR_ATTR, &json!("runs/classify/s/trial_0")).unwrap();
            storage.report(study, n, 1, f64::NAN).unwrap();
            storage.finish(study, n, TrialState::Complete, Some(f64::NEG_INFINITY), None).unwrap();
            let trial = &storage.trials(study).unwrap()[0];
            assert_eq!(trial.params, params, "{url}");
            assert!(trial.params["batch"].is_i64(), "an int parameter reads back as an integer");
            assert_eq!(trial.run_dir.as_deref(), Some(std::path::Path::new("runs/classify/s/trial_0")));
            assert!(trial.intermediate[&1].is_nan());
            assert_eq!(trial.value, Some(f64::NEG_INFINITY));
            let m = storage.claim_trial(study, 2, "w").unwrap().unwrap();
            let lion = Params::from([("optim".to_string(), json!("lion"))]);
            let err = storage.set_params(study, m, &lion, &space).unwrap_err().to_string();
            assert!(err.contains("optim") && err.contains("does not belong"), "{err}");
            let unknown = Params::from([("momentum".to_string(), json!(0.9))]);
            let err = storage.set_params(study, m, &unknown, &space).unwrap_err().to_string();
            assert!(err.contains("momentum") && err.contains("not in the search space"), "{err}");
        });
    }

    #[test]
    fn a_trial_leaves_running_once() {
        on_every_backend("storage: finish once", |url| {
            let mut storage = url.open().unwrap();
            let study = storage.study("s", Direction::Maximize).unwrap();
            let n = storage.claim_trial(study, 2, "w").unwrap().unwrap();
            assert!(storage.finish(study, n, TrialState::Fail, None, Some("interrupted")).unwrap());
            assert!(!storage.finish(study, n, TrialState::Complete, Some(0.9), None).unwrap());
            storage.report(study, n, 3, 0.5).unwrap();
            let trial = &storage.trials(study).unwrap()[0];
            assert_eq!(
                (trial.state, trial.value, trial.reason.as_deref()),
                (TrialState::Fail, None, Some("interrupted"))
            );
            assert!(trial.intermediate.is_empty(), "a finished trial takes no more reports");
        });
    }

    #[test]
    fn a_dead_workers_running_trial_fails_after_the_heartbeat_timeout() {
        on_every_backend("storage: heartbeat timeout", |url| {
            let mut storage = url.open().unwrap();
            let study = storage.study("s", Direction::Minimize).unwrap();
            let dead = storage.claim_trial(study, 5, "killed").unwrap().unwrap();
            let alive = storage.claim_trial(study, 5, "alive").unwrap().unwrap();
            assert_eq!(storage.fail_stale(study, Duration::from_secs(60)).unwrap(), 0, "fresh heartbeats");
            std::thread::sleep(Duration::from_millis(1100));
            storage.heartbeat(study, alive).unwrap();
            assert_eq!(storage.fail_stale(study, Duration::from_secs(1)).unwrap(), 1);
            let trials = storage.trials(study).unwrap();
            assert_eq!(trials[dead as usize].state, TrialState::Fail);
            assert!(trials[dead as usize].reason.as_deref().unwrap().contains("heartbeat"));
            assert_eq!(trials[alive as usize].state, TrialState::Running);
        });
    }
}
