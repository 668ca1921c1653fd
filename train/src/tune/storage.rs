//! Study storage in SQLite: studies, trials (number, state, parameters, value, reason, heartbeat) and their
//! intermediate values. Several processes share one file safely: WAL journal, a busy timeout, and trial numbers
//! claimed inside `BEGIN IMMEDIATE` transactions, so no number is given twice and a study never exceeds its total.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use super::sampler::Params;
use crate::{Error, Result};

/// Where a trial stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TrialState {
    Running,
    Complete,
    Pruned,
    Fail,
}

impl TrialState {
    pub fn name(self) -> &'static str {
        match self {
            TrialState::Running => "RUNNING",
            TrialState::Complete => "COMPLETE",
            TrialState::Pruned => "PRUNED",
            TrialState::Fail => "FAIL",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "COMPLETE" => TrialState::Complete,
            "PRUNED" => TrialState::Pruned,
            "FAIL" => TrialState::Fail,
            _ => TrialState::Running,
        }
    }
}

/// Whether the study's objective is minimised or maximised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Minimize,
    Maximize,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Minimize => "minimize",
            Direction::Maximize => "maximize",
        }
    }
}

/// One trial as stored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrialRecord {
    pub number: u32,
    pub state: TrialState,
    pub params: Params,
    pub value: Option<f64>,
    /// Reported values by step.
    pub intermediate: BTreeMap<usize, f64>,
    /// Why a trial failed.
    pub reason: Option<String>,
    pub worker: String,
    /// Seconds since the epoch.
    pub started: f64,
    pub finished: Option<f64>,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A study database file.
pub struct SqliteStorage {
    path: PathBuf,
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, direction TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY, study_id INTEGER NOT NULL REFERENCES studies(id), number INTEGER NOT NULL,
    state TEXT NOT NULL, params TEXT NOT NULL DEFAULT '{}', value REAL, reason TEXT, worker TEXT NOT NULL,
    started REAL NOT NULL, finished REAL, heartbeat REAL NOT NULL, UNIQUE (study_id, number));
CREATE TABLE IF NOT EXISTS intermediate (
    trial_id INTEGER NOT NULL REFERENCES trials(id), step INTEGER NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (trial_id, step));
";

impl SqliteStorage {
    /// Opens (creating if needed) a study database.
    pub fn open(path: &Path) -> Result<Self> {
        let err =
            |e: rusqlite::Error| Error::Storage { url: format!("sqlite:///{}", path.display()), reason: e.to_string() };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(60)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Self { path: path.to_path_buf(), conn })
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        Error::Storage { url: format!("sqlite:///{}", self.path.display()), reason: e.to_string() }
    }

    /// The study's id, creating it; an existing study with the other direction is an error.
    pub fn study(&self, name: &str, direction: Direction) -> Result<i64> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO studies (name, direction, created) VALUES (?1, ?2, ?3)",
                params![name, direction.name(), now()],
            )
            .map_err(|e| self.err(e))?;
        let (id, stored): (i64, String) = self
            .conn
            .query_row("SELECT id, direction FROM studies WHERE name = ?1", params![name], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| self.err(e))?;
        if stored != direction.name() {
            return Err(Error::Storage {
                url: format!("sqlite:///{}", self.path.display()),
                reason: format!("study '{name}' was created to {stored}, not to {}", direction.name()),
            });
        }
        Ok(id)
    }

    /// Claims the next trial number if the study has fewer than `total` trials (failed ones count too); `None`
    /// when it is full.
    pub fn claim_trial(&mut self, study: i64, total: usize, worker: &str) -> Result<Option<u32>> {
        let path = self.path.clone();
        let err =
            |e: rusqlite::Error| Error::Storage { url: format!("sqlite:///{}", path.display()), reason: e.to_string() };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
        let (count, max): (i64, Option<i64>) = tx
            .query_row("SELECT COUNT(*), MAX(number) FROM trials WHERE study_id = ?1", params![study], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(err)?;
        if count as usize >= total {
            return Ok(None);
        }
        let number = max.map_or(0, |m| m + 1);
        let t = now();
        tx.execute(
            "INSERT INTO trials (study_id, number, state, worker, started, heartbeat) VALUES (?1, ?2, 'RUNNING', ?3, ?4, ?4)",
            params![study, number, worker, t],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Some(number as u32))
    }

    fn trial_id(&self, study: i64, number: u32) -> Result<i64> {
        self.conn
            .query_row("SELECT id FROM trials WHERE study_id = ?1 AND number = ?2", params![study, number], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e))
    }

    pub fn set_params(&self, study: i64, number: u32, params: &Params) -> Result<()> {
        let json = serde_json::to_string(params).expect("params serialise");
        self.conn
            .execute("UPDATE trials SET params = ?3 WHERE study_id = ?1 AND number = ?2", params![study, number, json])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records an intermediate value and refreshes the heartbeat.
    pub fn report(&self, study: i64, number: u32, step: usize, value: f64) -> Result<()> {
        let id = self.trial_id(study, number)?;
        self.conn
            .execute(
                "INSERT OR REPLACE INTO intermediate (trial_id, step, value) VALUES (?1, ?2, ?3)",
                params![id, step as i64, value],
            )
            .map_err(|e| self.err(e))?;
        self.heartbeat(study, number)
    }

    pub fn heartbeat(&self, study: i64, number: u32) -> Result<()> {
        self.conn
            .execute(
                "UPDATE trials SET heartbeat = ?3 WHERE study_id = ?1 AND number = ?2",
                params![study, number, now()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Ends a trial.
    pub fn finish(
        &self,
        study: i64,
        number: u32,
        state: TrialState,
        value: Option<f64>,
        reason: Option<&str>,
    ) -> Result<()> {
        self.conn
            .execute(
                "UPDATE trials SET state = ?3, value = ?4, reason = ?5, finished = ?6 WHERE study_id = ?1 AND number = ?2",
                params![study, number, state.name(), value, reason, now()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Marks RUNNING trials whose heartbeat is older than `timeout` as FAIL (their worker died); returns how many.
    pub fn fail_stale(&self, study: i64, timeout: Duration) -> Result<usize> {
        let n = self
            .conn
            .execute(
                "UPDATE trials SET state = 'FAIL', reason = 'no heartbeat for ' || ?3 || ' s (worker gone)', finished = ?2
                 WHERE study_id = ?1 AND state = 'RUNNING' AND heartbeat < ?2 - ?3",
                params![study, now(), timeout.as_secs_f64()],
            )
            .map_err(|e| self.err(e))?;
        Ok(n)
    }

    /// Every trial of the study, by number.
    pub fn trials(&self, study: i64) -> Result<Vec<TrialRecord>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, number, state, params, value, reason, worker, started, finished FROM trials
                 WHERE study_id = ?1 ORDER BY number",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![study], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    TrialRecord {
                        number: r.get(1)?,
                        state: TrialState::parse(&r.get::<_, String>(2)?),
                        params: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
                        value: r.get(4)?,
                        reason: r.get(5)?,
                        worker: r.get(6)?,
                        started: r.get(7)?,
                        finished: r.get(8)?,
                        intermediate: BTreeMap::new(),
                    },
                ))
            })
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        let mut step_stmt =
            self.conn.prepare("SELECT step, value FROM intermediate WHERE trial_id = ?1").map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|(id, mut trial)| {
                trial.intermediate = step_stmt
                    .query_map(params![id], |r| Ok((r.get::<_, i64>(0)? as usize, r.get::<_, f64>(1)?)))
                    .map_err(|e| self.err(e))?
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| self.err(e))?;
                Ok(trial)
            })
            .collect()
    }

    /// The names of the studies in the file.
    pub fn studies(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("SELECT name FROM studies ORDER BY id").map_err(|e| self.err(e))?;
        let names = stmt
            .query_map([], |r| r.get(0))
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<String>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(names)
    }

    /// Whether the study exists.
    pub fn has_study(&self, name: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM studies WHERE name = ?1", params![name], |_| Ok(()))
            .optional()
            .map_err(|e| self.err(e))?
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn concurrent_workers_get_unique_numbers_and_never_exceed_the_total() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("study.db");
        let study = SqliteStorage::open(&path).unwrap().study("s", Direction::Maximize).unwrap();
        let claimed: Vec<u32> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|w| {
                    let path = path.clone();
                    s.spawn(move || {
                        // Each worker has its own connection, as separate processes would.
                        let mut storage = SqliteStorage::open(&path).unwrap();
                        let mut mine = Vec::new();
                        while let Some(n) = storage.claim_trial(study, 23, &format!("w{w}")).unwrap() {
                            storage.set_params(study, n, &Params::from([("x".to_string(), json!(n))])).unwrap();
                            storage.report(study, n, 1, n as f64).unwrap();
                            storage.finish(study, n, TrialState::Complete, Some(n as f64), None).unwrap();
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
        assert_eq!(sorted, (0..23).collect::<Vec<u32>>(), "23 unique numbers, none lost, none twice");
        let trials = SqliteStorage::open(&path).unwrap().trials(study).unwrap();
        assert_eq!(trials.len(), 23);
        assert!(trials.iter().all(|t| t.state == TrialState::Complete && t.intermediate[&1] == t.number as f64));
        assert_eq!(trials[5].params["x"], json!(5));
    }

    #[test]
    fn reopening_resumes_and_a_larger_total_adds_trials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("study.db");
        let mut storage = SqliteStorage::open(&path).unwrap();
        let study = storage.study("s", Direction::Minimize).unwrap();
        for _ in 0..3 {
            let n = storage.claim_trial(study, 6, "a").unwrap().unwrap();
            storage.finish(study, n, TrialState::Complete, Some(1.0), None).unwrap();
        }
        drop(storage);
        let mut storage = SqliteStorage::open(&path).unwrap();
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
        assert_eq!(storage.trials(study).unwrap()[4].reason.as_deref(), Some("NaN loss"));
    }

    #[test]
    fn a_dead_workers_running_trial_fails_after_the_heartbeat_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = SqliteStorage::open(&dir.path().join("s.db")).unwrap();
        let study = storage.study("s", Direction::Minimize).unwrap();
        let n = storage.claim_trial(study, 5, "killed").unwrap().unwrap();
        assert_eq!(storage.fail_stale(study, Duration::from_secs(60)).unwrap(), 0, "fresh heartbeat");
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(storage.fail_stale(study, Duration::from_secs(1)).unwrap(), 1);
        let trial = &storage.trials(study).unwrap()[n as usize];
        assert_eq!(trial.state, TrialState::Fail);
        assert!(trial.reason.as_deref().unwrap().contains("heartbeat"));
    }
}
