//! Study storage in one SQLite file, shared by processes on one machine: WAL journal, a busy timeout, and trial
//! numbers claimed inside `BEGIN IMMEDIATE` transactions (one writer at a time).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{Direction, Storage, TrialRecord, TrialState};
use crate::tune::sampler::Params;
use crate::{Error, Result};

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
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, direction TEXT NOT NULL, created REAL NOT NULL, space TEXT);
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
        // Files written before studies stored their search space.
        let has_space = conn
            .prepare("SELECT 1 FROM pragma_table_info('studies') WHERE name = 'space'")
            .and_then(|mut s| s.exists([]))
            .map_err(err)?;
        if !has_space {
            conn.execute_batch("ALTER TABLE studies ADD COLUMN space TEXT").map_err(err)?;
        }
        Ok(Self { path: path.to_path_buf(), conn })
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        Error::Storage { url: format!("sqlite:///{}", self.path.display()), reason: e.to_string() }
    }
}

impl Storage for SqliteStorage {
    fn study(&mut self, name: &str, direction: Direction) -> Result<i64> {
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

    fn set_space(&mut self, study: i64, space: &str) -> Result<String> {
        self.conn
            .execute("UPDATE studies SET space = ?2 WHERE id = ?1 AND space IS NULL", params![study, space])
            .map_err(|e| self.err(e))?;
        Ok(self.space(study)?.unwrap_or_default())
    }

    fn space(&mut self, study: i64) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT space FROM studies WHERE id = ?1", params![study], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    fn claim_trial(&mut self, study: i64, total: usize, worker: &str) -> Result<Option<u32>> {
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

    fn set_params(&mut self, study: i64, number: u32, params: &Params) -> Result<()> {
        let json = serde_json::to_string(params).expect("params serialise");
        self.conn
            .execute("UPDATE trials SET params = ?3 WHERE study_id = ?1 AND number = ?2", params![study, number, json])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn report(&mut self, study: i64, number: u32, step: usize, value: f64) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO intermediate (trial_id, step, value)
                 SELECT id, ?3, ?4 FROM trials WHERE study_id = ?1 AND number = ?2 AND state = 'RUNNING'",
                params![study, number, step as i64, value],
            )
            .map_err(|e| self.err(e))?;
        self.heartbeat(study, number)
    }

    fn heartbeat(&mut self, study: i64, number: u32) -> Result<()> {
        self.conn
            .execute(
                "UPDATE trials SET heartbeat = ?3 WHERE study_id = ?1 AND number = ?2 AND state = 'RUNNING'",
                params![study, number, now()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn finish(
        &mut self,
        study: i64,
        number: u32,
        state: TrialState,
        value: Option<f64>,
        reason: Option<&str>,
    ) -> Result<bool> {
        let changed = self
            .conn
            .execute(
                "UPDATE trials SET state = ?3, value = ?4, reason = ?5, finished = ?6
                 WHERE study_id = ?1 AND number = ?2 AND state = 'RUNNING'",
                params![study, number, state.name(), value, reason, now()],
            )
            .map_err(|e| self.err(e))?;
        Ok(changed == 1)
    }

    fn fail_stale(&mut self, study: i64, timeout: Duration) -> Result<usize> {
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

    fn trials(&mut self, study: i64) -> Result<Vec<TrialRecord>> {
        // One read transaction, so trials and their intermediate values are a consistent snapshot.
        let path = self.path.clone();
        let err =
            |e: rusqlite::Error| Error::Storage { url: format!("sqlite:///{}", path.display()), reason: e.to_string() };
        let tx = self.conn.transaction().map_err(err)?;
        let mut trials = {
            let mut stmt = tx
                .prepare(
                    "SELECT number, state, params, value, reason, worker, started, finished FROM trials
                     WHERE study_id = ?1 ORDER BY number",
                )
                .map_err(err)?;
            let rows = stmt
                .query_map(params![study], |r| {
                    Ok(TrialRecord {
                        number: r.get(0)?,
                        state: TrialState::parse(&r.get::<_, String>(1)?),
                        params: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_default(),
                        value: r.get(3)?,
                        reason: r.get(4)?,
                        worker: r.get(5)?,
                        started: r.get(6)?,
                        finished: r.get(7)?,
                        intermediate: BTreeMap::new(),
                    })
                })
                .map_err(err)?;
            rows.collect::<std::result::Result<Vec<_>, _>>().map_err(err)?
        };
        let mut stmt = tx
            .prepare(
                "SELECT t.number, i.step, i.value FROM intermediate i JOIN trials t ON t.id = i.trial_id
                 WHERE t.study_id = ?1",
            )
            .map_err(err)?;
        let steps = stmt
            .query_map(params![study], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)?, r.get::<_, f64>(2)?)))
            .map_err(err)?;
        for step in steps {
            let (number, step, value) = step.map_err(err)?;
            if let Ok(i) = trials.binary_search_by_key(&number, |t| t.number) {
                trials[i].intermediate.insert(step as usize, value);
            }
        }
        Ok(trials)
    }

    fn studies(&mut self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("SELECT name FROM studies ORDER BY id").map_err(|e| self.err(e))?;
        let names = stmt
            .query_map([], |r| r.get(0))
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<Vec<String>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(names)
    }

    fn study_direction(&mut self, name: &str) -> Result<Option<Direction>> {
        let stored: Option<String> = self
            .conn
            .query_row("SELECT direction FROM studies WHERE name = ?1", params![name], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(stored.as_deref().map(super::direction_named))
    }
}
