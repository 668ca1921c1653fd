//! Study storage on a PostgreSQL server, shared by workers on several machines. Trial numbers are claimed in a
//! transaction that first locks the study's row (`SELECT … FOR UPDATE`), so claims of one study are serialised while
//! other studies go on. Every timestamp (start, finish, heartbeat) is the server's clock, so the heartbeat timeout
//! does not depend on the workers' clocks agreeing. Tables are prefixed `kiln_` so that a shared database stays
//! tidy; they are created on first connection, under an advisory lock so that workers starting together do not race.
//! Connections are plain TCP or Unix sockets (no TLS).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use postgres::{Client, NoTls};

use super::{redact, Direction, Storage, TrialRecord, TrialState};
use crate::tune::sampler::Params;
use crate::{Error, Result};

/// A connection to a study database.
pub struct PostgresStorage {
    url: String,
    client: Client,
}

/// The server's clock, in seconds since the epoch.
const NOW: &str = "EXTRACT(EPOCH FROM clock_timestamp())::float8";

/// Any constant shared by every kiln worker: serialises schema creation.
const SCHEMA_LOCK: i64 = 0x6b696c6e; // "kiln"

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kiln_studies (
    id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE, direction TEXT NOT NULL, created DOUBLE PRECISION NOT NULL,
    space TEXT);
CREATE TABLE IF NOT EXISTS kiln_trials (
    id BIGSERIAL PRIMARY KEY, study_id BIGINT NOT NULL REFERENCES kiln_studies(id), number INTEGER NOT NULL,
    state TEXT NOT NULL, params TEXT NOT NULL DEFAULT '{}', value DOUBLE PRECISION, reason TEXT,
    worker TEXT NOT NULL, started DOUBLE PRECISION NOT NULL, finished DOUBLE PRECISION,
    heartbeat DOUBLE PRECISION NOT NULL, UNIQUE (study_id, number));
CREATE TABLE IF NOT EXISTS kiln_intermediate (
    trial_id BIGINT NOT NULL REFERENCES kiln_trials(id), step INTEGER NOT NULL, value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (trial_id, step));
ALTER TABLE kiln_studies ADD COLUMN IF NOT EXISTS space TEXT;
";

fn reason(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        }
    }
}

impl PostgresStorage {
    /// Connects (10 s connect timeout unless the URL sets `connect_timeout`) and creates the tables if missing.
    pub fn connect(url: &str) -> Result<Self> {
        let err = |reason: String| Error::Storage { url: redact(url), reason };
        let mut config = postgres::Config::from_str(url).map_err(|e| err(reason(&e)))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("kiln");
        }
        let mut client = config.connect(NoTls).map_err(|e| err(reason(&e)))?;
        let mut tx = client.transaction().map_err(|e| err(reason(&e)))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]).map_err(|e| err(reason(&e)))?;
        tx.batch_execute(SCHEMA).map_err(|e| err(reason(&e)))?;
        tx.commit().map_err(|e| err(reason(&e)))?;
        Ok(Self { url: url.to_string(), client })
    }

    fn err(&self, e: postgres::Error) -> Error {
        Error::Storage { url: redact(&self.url), reason: reason(&e) }
    }
}

fn number(n: u32) -> i32 {
    n as i32
}

impl Storage for PostgresStorage {
    fn study(&mut self, name: &str, direction: Direction) -> Result<i64> {
        self.client
            .execute(
                &format!(
                    "INSERT INTO kiln_studies (name, direction, created) VALUES ($1, $2, {NOW})
                     ON CONFLICT (name) DO NOTHING"
                ),
                &[&name, &direction.name()],
            )
            .map_err(|e| self.err(e))?;
        let row = self
            .client
            .query_one("SELECT id, direction FROM kiln_studies WHERE name = $1", &[&name])
            .map_err(|e| self.err(e))?;
        let (id, stored): (i64, String) = (row.get(0), row.get(1));
        if stored != direction.name() {
            return Err(Error::Storage {
                url: redact(&self.url),
                reason: format!("study '{name}' was created to {stored}, not to {}", direction.name()),
            });
        }
        Ok(id)
    }

    fn set_space(&mut self, study: i64, space: &str) -> Result<String> {
        self.client
            .execute("UPDATE kiln_studies SET space = $2 WHERE id = $1 AND space IS NULL", &[&study, &space])
            .map_err(|e| self.err(e))?;
        Ok(self.space(study)?.unwrap_or_default())
    }

    fn space(&mut self, study: i64) -> Result<Option<String>> {
        let row = self
            .client
            .query_one("SELECT space FROM kiln_studies WHERE id = $1", &[&study])
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    fn claim_trial(&mut self, study: i64, total: usize, worker: &str) -> Result<Option<u32>> {
        let url = redact(&self.url);
        let err = |e: postgres::Error| Error::Storage { url: url.clone(), reason: reason(&e) };
        let mut tx = self.client.transaction().map_err(err)?;
        tx.query_one("SELECT id FROM kiln_studies WHERE id = $1 FOR UPDATE", &[&study]).map_err(err)?;
        let row = tx
            .query_one("SELECT COUNT(*), MAX(number) FROM kiln_trials WHERE study_id = $1", &[&study])
            .map_err(err)?;
        let (count, max): (i64, Option<i32>) = (row.get(0), row.get(1));
        if count as usize >= total {
            return Ok(None);
        }
        let next = max.map_or(0, |m| m + 1);
        tx.execute(
            &format!(
                "INSERT INTO kiln_trials (study_id, number, state, worker, started, heartbeat)
                 VALUES ($1, $2, 'RUNNING', $3, {NOW}, {NOW})"
            ),
            &[&study, &next, &worker],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Some(next as u32))
    }

    fn set_params(&mut self, study: i64, n: u32, params: &Params) -> Result<()> {
        let json = serde_json::to_string(params).expect("params serialise");
        self.client
            .execute(
                "UPDATE kiln_trials SET params = $3 WHERE study_id = $1 AND number = $2",
                &[&study, &number(n), &json],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn report(&mut self, study: i64, n: u32, step: usize, value: f64) -> Result<()> {
        self.client
            .execute(
                "INSERT INTO kiln_intermediate (trial_id, step, value)
                 SELECT id, $3, $4 FROM kiln_trials WHERE study_id = $1 AND number = $2 AND state = 'RUNNING'
                 ON CONFLICT (trial_id, step) DO UPDATE SET value = EXCLUDED.value",
                &[&study, &number(n), &(step as i32), &value],
            )
            .map_err(|e| self.err(e))?;
        self.heartbeat(study, n)
    }

    fn heartbeat(&mut self, study: i64, n: u32) -> Result<()> {
        self.client
            .execute(
                &format!(
                    "UPDATE kiln_trials SET heartbeat = {NOW} WHERE study_id = $1 AND number = $2 AND state = 'RUNNING'"
                ),
                &[&study, &number(n)],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn finish(
        &mut self,
        study: i64,
        n: u32,
        state: TrialState,
        value: Option<f64>,
        reason: Option<&str>,
    ) -> Result<bool> {
        let changed = self
            .client
            .execute(
                &format!(
                    "UPDATE kiln_trials SET state = $3, value = $4, reason = $5, finished = {NOW}
                     WHERE study_id = $1 AND number = $2 AND state = 'RUNNING'"
                ),
                &[&study, &number(n), &state.name(), &value, &reason],
            )
            .map_err(|e| self.err(e))?;
        Ok(changed == 1)
    }

    fn fail_stale(&mut self, study: i64, timeout: Duration) -> Result<usize> {
        let changed = self
            .client
            .execute(
                &format!(
                    "UPDATE kiln_trials SET state = 'FAIL', finished = {NOW},
                         reason = 'no heartbeat for ' || $2::float8 || ' s (worker gone)'
                     WHERE study_id = $1 AND state = 'RUNNING' AND heartbeat < {NOW} - $2::float8"
                ),
                &[&study, &timeout.as_secs_f64()],
            )
            .map_err(|e| self.err(e))?;
        Ok(changed as usize)
    }

    fn trials(&mut self, study: i64) -> Result<Vec<TrialRecord>> {
        let url = redact(&self.url);
        let err = |e: postgres::Error| Error::Storage { url: url.clone(), reason: reason(&e) };
        // One snapshot for the trials and their intermediate values.
        let mut tx = self
            .client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .start()
            .map_err(err)?;
        let rows = tx
            .query(
                "SELECT number, state, params, value, reason, worker, started, finished FROM kiln_trials
                 WHERE study_id = $1 ORDER BY number",
                &[&study],
            )
            .map_err(err)?;
        let mut trials: Vec<TrialRecord> = rows
            .iter()
            .map(|r| TrialRecord {
                number: r.get::<_, i32>(0) as u32,
                state: TrialState::parse(r.get(1)),
                params: serde_json::from_str(r.get(2)).unwrap_or_default(),
                value: r.get(3),
                reason: r.get(4),
                worker: r.get(5),
                started: r.get(6),
                finished: r.get(7),
                intermediate: BTreeMap::new(),
            })
            .collect();
        let steps = tx
            .query(
                "SELECT t.number, i.step, i.value FROM kiln_intermediate i JOIN kiln_trials t ON t.id = i.trial_id
                 WHERE t.study_id = $1",
                &[&study],
            )
            .map_err(err)?;
        tx.commit().map_err(err)?;
        for row in steps {
            let (n, step, value): (i32, i32, f64) = (row.get(0), row.get(1), row.get(2));
            if let Ok(i) = trials.binary_search_by_key(&(n as u32), |t| t.number) {
                trials[i].intermediate.insert(step as usize, value);
            }
        }
        Ok(trials)
    }

    fn studies(&mut self) -> Result<Vec<String>> {
        let rows = self.client.query("SELECT name FROM kiln_studies ORDER BY id", &[]).map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn study_direction(&mut self, name: &str) -> Result<Option<Direction>> {
        let row = self
            .client
            .query_opt("SELECT direction FROM kiln_studies WHERE name = $1", &[&name])
            .map_err(|e| self.err(e))?;
        Ok(row.map(|r| super::direction_named(r.get::<_, &str>(0))))
    }
}
