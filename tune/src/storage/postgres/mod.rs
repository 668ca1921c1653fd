//! Study storage on a PostgreSQL server, shared by workers on several machines, in Optuna's own schema (so
//! Python workers, `optuna.load_study` and optuna-dashboard share a study with kiln).
//!
//! - **Claims.** Trial numbers are claimed in a transaction that first locks the study's row (`SELECT … FOR
//!   UPDATE`), as Optuna's own `create_new_trial` does, so that claims of one study, kiln's and Optuna's, are
//!   serialised while other studies go on. A WAITING trial (enqueued from Python) is taken with `FOR UPDATE SKIP
//!   LOCKED` and its state checked again as it is updated: an Optuna worker popping the same trial locks only the
//!   trial's row, so without both it could flip the trial to RUNNING under kiln's claim and both would run it.
//! - **Time.** Start, completion and heartbeat times are the server's clock in the session's time zone (`TIMESTAMP
//!   WITHOUT TIME ZONE`, as Optuna stores `now()`), so the heartbeat timeout does not depend on the workers' clocks
//!   agreeing.
//! - **Schema.** Created on first connection under an advisory lock, so that workers starting together do not race
//!   ([`schema`]).
//! - **Outages.** Every call survives a lost connection ([`session`]): it reconnects with bounded backoff and runs
//!   again. Reads and upserts repeat as they are; a claim and a finish leave a mark in the same transaction
//!   (`kiln:claim`, `kiln:finish` system attributes) and, when repeated, first look for it, so a commit that
//!   happened before the connection broke is neither repeated nor mistaken for another worker's.
//! - **TLS** as libpq's `sslmode` says ([`tls`]).

mod schema;
pub(crate) mod session;
#[cfg(test)]
mod tests;
mod tls;

use std::time::Duration;

use postgres::Client;
use serde_json::Value;

use super::optuna::{self, FAIL_REASON_ATTR, FIXED_PARAMS_ATTR, RUN_DIR_ATTR, SEARCH_SPACE_ATTR, WORKER_ATTR};
use super::{legacy, redact, Direction, Storage, TrialRecord, TrialState};
use crate::sampler::Params;
use crate::space::SearchSpace;
use crate::{Error, Result};
pub(crate) use schema::{create_schema, insert_study, insert_trial, lock_schema, table_names};
use schema::{epoch, number, upsert_attribute, NOW, TRIAL};
pub(crate) use session::{connect, reason};
pub use session::{patience_from_environment, DEFAULT_PATIENCE};
use session::{Attempt, Session};

/// The system attribute a claim leaves on its trial: which call of which worker claimed it.
const CLAIM_ATTR: &str = "kiln:claim";
/// The system attribute a finish leaves on its trial: which call ended it.
const FINISH_ATTR: &str = "kiln:finish";

/// A connection to a study database, reconnecting when it is lost.
pub struct PostgresStorage {
    session: Session,
}

/// A mark no other call leaves: the worker and 64 random bits.
fn mark(worker: &str) -> Value {
    Value::from(format!("{worker}/{:016x}", rand::random::<u64>()))
}

impl PostgresStorage {
    /// Connects and creates Optuna's schema if the database has none; kiln's old tables or an Optuna schema version
    /// kiln does not know are refused, saying what to do. A lost connection is retried for
    /// `KILN_STORAGE_PATIENCE` seconds ([`DEFAULT_PATIENCE`] unless set).
    pub fn connect(url: &str) -> Result<Self> {
        Self::connect_with_patience(url, patience_from_environment()?)
    }

    /// [`connect`](Self::connect), retrying a lost connection for `patience`.
    pub fn connect_with_patience(url: &str, patience: Duration) -> Result<Self> {
        let mut session = Session::open(url, patience)?;
        let refusal = session.call("opening the study database", |client, _| {
            let mut tx = client.transaction()?;
            lock_schema(&mut tx)?;
            let tables = table_names(&mut tx)?;
            if tables.iter().any(|t| t == legacy::POSTGRES_MARKER) {
                return Ok(Some(legacy::refusal(&redact(url))));
            }
            if !tables.iter().any(|t| t == "studies") {
                create_schema(&mut tx)?;
            } else {
                let version: Option<i32> =
                    tx.query_opt("SELECT schema_version FROM version_info", &[])?.and_then(|r| r.get(0));
                let alembic: Option<String> =
                    tx.query_opt("SELECT version_num::text FROM alembic_version", &[])?.map(|r| r.get(0));
                if let Some(reason) = optuna::version_refusal(version.map(i64::from), alembic.as_deref()) {
                    return Ok(Some(reason));
                }
            }
            tx.commit()?;
            Ok(None)
        })?;
        match refusal {
            Some(reason) => Err(Error::Storage { url: redact(url), reason }),
            None => Ok(Self { session }),
        }
    }
}

/// Claims the oldest WAITING trial, else a new one below `total`, leaving `mark` on it.
fn claim(
    client: &mut Client,
    study: i64,
    total: usize,
    worker: &str,
    mark: &Value,
) -> std::result::Result<Option<u32>, postgres::Error> {
    let mut tx = client.transaction()?;
    // Serialises the claims of this study, kiln's and Optuna's alike (Optuna's create_new_trial locks this row).
    tx.execute("SELECT 1 FROM studies WHERE study_id = $1::int8 FOR UPDATE", &[&study])?;
    // A trial that a Python worker enqueued (`study.enqueue_trial`) runs first, as in Optuna. Optuna pops it
    // locking only the trial's row: one it has locked is skipped, and one it flipped meanwhile fails the re-check.
    let waiting = tx.query_opt(
        &format!(
            "UPDATE trials SET state = 'RUNNING', datetime_start = {NOW}
             WHERE state = 'WAITING' AND trial_id = (
                 SELECT trial_id FROM trials WHERE study_id = $1::int8 AND state = 'WAITING'
                 ORDER BY trial_id LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING trial_id, number"
        ),
        &[&study],
    )?;
    let (id, number): (i32, i32) = match waiting {
        Some(row) => (row.get(0), row.get(1)),
        None => {
            let count: i64 = tx.query_one("SELECT COUNT(*) FROM trials WHERE study_id = $1::int8", &[&study])?.get(0);
            if count as usize >= total {
                return Ok(None);
            }
            // Optuna numbers a trial by the trials created before it.
            let row = tx.query_one(
                &format!(
                    "INSERT INTO trials (number, study_id, state, datetime_start)
                     VALUES ($1::int8, $2::int8, 'RUNNING', {NOW}) RETURNING trial_id, number"
                ),
                &[&count, &study],
            )?;
            (row.get(0), row.get(1))
        }
    };
    tx.execute(
        &format!(
            "INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES ($1, {NOW})
             ON CONFLICT (trial_id) DO UPDATE SET heartbeat = excluded.heartbeat"
        ),
        &[&id],
    )?;
    upsert_attribute(&mut tx, "trial_user_attributes", id, WORKER_ATTR, &Value::from(worker))?;
    upsert_attribute(&mut tx, "trial_system_attributes", id, CLAIM_ATTR, mark)?;
    tx.commit()?;
    Ok(Some(number as u32))
}

/// The trial of `study` that carries `mark` in system attribute `key`, if any.
fn marked(
    client: &mut Client,
    study: i64,
    key: &str,
    mark: &Value,
) -> std::result::Result<Option<u32>, postgres::Error> {
    let row = client.query_opt(
        "SELECT t.number FROM trials t JOIN trial_system_attributes a ON a.trial_id = t.trial_id
         WHERE t.study_id = $1::int8 AND a.key = $2 AND a.value_json = $3",
        &[&study, &key, &mark.to_string()],
    )?;
    Ok(row.map(|r| r.get::<_, i32>(0) as u32))
}

/// The repeatable body of [`Storage::claim_trial`]: a repeat returns the trial its first run claimed, if that
/// committed.
fn claim_call<'a>(
    study: i64,
    total: usize,
    worker: &'a str,
    mark: &'a Value,
) -> impl FnMut(&mut Client, Attempt) -> std::result::Result<Option<u32>, postgres::Error> + 'a {
    move |client, attempt| {
        if attempt == Attempt::AfterLostConnection {
            if let Some(number) = marked(client, study, CLAIM_ATTR, mark)? {
                return Ok(Some(number));
            }
        }
        claim(client, study, total, worker, mark)
    }
}

/// Ends RUNNING trial `n` as `state`, leaving `mark`; `false` when it was not RUNNING.
fn finish(
    client: &mut Client,
    study: i64,
    n: u32,
    state: TrialState,
    value: Option<f64>,
    reason_text: Option<&str>,
    mark: &Value,
) -> std::result::Result<bool, postgres::Error> {
    let mut tx = client.transaction()?;
    let Some(row) = tx.query_opt(
        &format!(
            "UPDATE trials SET state = $3::text::trialstate, datetime_complete = {NOW}
             WHERE study_id = $1::int8 AND number = $2::int4 AND state = 'RUNNING' RETURNING trial_id"
        ),
        &[&study, &number(n), &state.name()],
    )?
    else {
        return Ok(false);
    };
    let id: i32 = row.get(0);
    if let Some((value, kind)) = value.and_then(optuna::objective_value) {
        tx.execute(
            "INSERT INTO trial_values (trial_id, objective, value, value_type)
             VALUES ($1, 0, $2, $3::text::trialvaluetype)
             ON CONFLICT (trial_id, objective) DO UPDATE SET value = excluded.value, value_type = excluded.value_type",
            &[&id, &value, &kind],
        )?;
    }
    if let Some(text) = reason_text {
        upsert_attribute(&mut tx, "trial_system_attributes", id, FAIL_REASON_ATTR, &Value::from(text))?;
    }
    upsert_attribute(&mut tx, "trial_system_attributes", id, FINISH_ATTR, mark)?;
    tx.commit()?;
    Ok(true)
}

/// The repeatable body of [`Storage::finish`]: a repeat whose first run committed reports `true`, not "ended by
/// someone else".
fn finish_call<'a>(
    study: i64,
    n: u32,
    state: TrialState,
    value: Option<f64>,
    reason_text: Option<&'a str>,
    mark: &'a Value,
) -> impl FnMut(&mut Client, Attempt) -> std::result::Result<bool, postgres::Error> + 'a {
    move |client, attempt| {
        if attempt == Attempt::AfterLostConnection && marked(client, study, FINISH_ATTR, mark)? == Some(n) {
            return Ok(true);
        }
        finish(client, study, n, state, value, reason_text, mark)
    }
}

impl Storage for PostgresStorage {
    fn study(&mut self, name: &str, direction: Direction) -> Result<i64> {
        let (id, directions) = self.session.call("opening the study", |client, _| {
            let mut tx = client.transaction()?;
            // Creation races with other workers: the schema lock serialises it (the name is unique anyway).
            lock_schema(&mut tx)?;
            let id = match tx.query_opt("SELECT study_id FROM studies WHERE study_name = $1", &[&name])? {
                Some(row) => i64::from(row.get::<_, i32>(0)),
                None => insert_study(&mut tx, name, direction, None)?,
            };
            let directions: Vec<String> = tx
                .query(
                    "SELECT direction::text FROM study_directions WHERE study_id = $1::int8 ORDER BY objective",
                    &[&id],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            tx.commit()?;
            Ok((id, directions))
        })?;
        super::check_direction(&redact(self.session.url()), name, &directions, direction)?;
        Ok(id)
    }

    fn set_space(&mut self, study: i64, space: &str) -> Result<String> {
        self.session.call("storing the search space", |client, _| {
            client.execute(
                "INSERT INTO study_system_attributes (study_id, key, value_json) VALUES ($1::int8, $2, $3)
                 ON CONFLICT (study_id, key) DO NOTHING",
                &[&study, &SEARCH_SPACE_ATTR, &space],
            )
        })?;
        Ok(self.space(study)?.unwrap_or_default())
    }

    fn space(&mut self, study: i64) -> Result<Option<String>> {
        self.session.call("reading the search space", |client, _| {
            let row = client.query_opt(
                "SELECT value_json FROM study_system_attributes WHERE study_id = $1::int8 AND key = $2",
                &[&study, &SEARCH_SPACE_ATTR],
            )?;
            Ok(row.and_then(|r| r.get(0)))
        })
    }

    fn claim_trial(&mut self, study: i64, total: usize, worker: &str) -> Result<Option<u32>> {
        let mark = mark(worker);
        self.session.call("claiming a trial", claim_call(study, total, worker, &mark))
    }

    fn set_params(&mut self, study: i64, n: u32, params: &Params, space: &SearchSpace) -> Result<()> {
        let mut rows = Vec::new();
        for (name, value) in params {
            let (stored, json) = super::stored_param(space, name, value)
                .map_err(|reason| Error::Storage { url: redact(self.session.url()), reason })?;
            rows.push((name, stored, json));
        }
        self.session.call(&format!("storing trial {n}'s parameters"), |client, _| {
            let mut tx = client.transaction()?;
            for (name, stored, json) in &rows {
                tx.execute(
                    &format!(
                        "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json)
                         VALUES ({TRIAL}, $3, $4, $5)
                         ON CONFLICT (trial_id, param_name) DO UPDATE
                         SET param_value = excluded.param_value, distribution_json = excluded.distribution_json"
                    ),
                    &[&study, &number(n), name, stored, json],
                )?;
            }
            tx.commit()
        })
    }

    fn set_user_attr(&mut self, study: i64, n: u32, key: &str, value: &Value) -> Result<()> {
        let json = value.to_string();
        self.session.call(&format!("setting trial {n}'s {key}"), |client, _| {
            client.execute(
                &format!(
                    "INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES ({TRIAL}, $3, $4)
                     ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json"
                ),
                &[&study, &number(n), &key, &json],
            )
        })?;
        Ok(())
    }

    fn report(&mut self, study: i64, n: u32, step: usize, value: f64) -> Result<()> {
        let (value, kind) = optuna::intermediate_value(value);
        // One round trip: the value (only while RUNNING) and the heartbeat; an upsert, so a repeat is harmless.
        self.session.call(&format!("reporting trial {n}'s step {step}"), |client, _| {
            client.execute(
                &format!(
                    "WITH t AS (SELECT trial_id FROM trials
                                WHERE study_id = $1::int8 AND number = $2::int4 AND state = 'RUNNING'),
                          v AS (INSERT INTO trial_intermediate_values
                                    (trial_id, step, intermediate_value, intermediate_value_type)
                                SELECT trial_id, $3, $4, $5::text::trialintermediatevaluetype FROM t
                                ON CONFLICT (trial_id, step) DO UPDATE
                                SET intermediate_value = excluded.intermediate_value,
                                    intermediate_value_type = excluded.intermediate_value_type)
                     UPDATE trial_heartbeats SET heartbeat = {NOW} WHERE trial_id IN (SELECT trial_id FROM t)"
                ),
                &[&study, &number(n), &(step as i32), &value, &kind],
            )
        })?;
        Ok(())
    }

    fn heartbeat(&mut self, study: i64, n: u32) -> Result<()> {
        self.session.call(&format!("trial {n}'s heartbeat"), |client, _| {
            client.execute(
                &format!(
                    "UPDATE trial_heartbeats SET heartbeat = {NOW} WHERE trial_id = (
                         SELECT trial_id FROM trials WHERE study_id = $1::int8 AND number = $2::int4 AND state = 'RUNNING')"
                ),
                &[&study, &number(n)],
            )
        })?;
        Ok(())
    }

    fn finish(
        &mut self,
        study: i64,
        n: u32,
        state: TrialState,
        value: Option<f64>,
        reason_text: Option<&str>,
    ) -> Result<bool> {
        let mark = mark("finish");
        self.session.call(&format!("recording trial {n}"), finish_call(study, n, state, value, reason_text, &mark))
    }

    fn fail_stale(&mut self, study: i64, timeout: Duration) -> Result<usize> {
        let reason_value = Value::from(super::stale_reason(timeout));
        // A repeat fails only what is stale then: the count may miss trials a lost commit failed, nothing more.
        self.session.call("failing trials without a heartbeat", |client, _| {
            let mut tx = client.transaction()?;
            let rows = tx.query(
                &format!(
                    "UPDATE trials t SET state = 'FAIL', datetime_complete = {NOW}
                     FROM trial_heartbeats h
                     WHERE h.trial_id = t.trial_id AND t.study_id = $1::int8 AND t.state = 'RUNNING'
                       AND h.heartbeat < {NOW} - make_interval(secs => $2)
                     RETURNING t.trial_id"
                ),
                &[&study, &timeout.as_secs_f64()],
            )?;
            for row in &rows {
                upsert_attribute(&mut tx, "trial_system_attributes", row.get(0), FAIL_REASON_ATTR, &reason_value)?;
            }
            tx.commit()?;
            Ok(rows.len())
        })
    }

    fn trials(&mut self, study: i64) -> Result<Vec<TrialRecord>> {
        self.session.call("reading the trials", |client, _| read_trials(client, study))
    }

    fn studies(&mut self) -> Result<Vec<String>> {
        self.session.call("listing the studies", |client, _| {
            let rows = client.query("SELECT study_name::text FROM studies ORDER BY study_id", &[])?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn study_direction(&mut self, name: &str) -> Result<Option<Direction>> {
        self.session.call("reading the study's direction", |client, _| {
            let row = client.query_opt(
                "SELECT d.direction::text FROM study_directions d JOIN studies s ON s.study_id = d.study_id
                 WHERE s.study_name = $1 AND d.objective = 0",
                &[&name],
            )?;
            Ok(row.and_then(|r| optuna::direction_from(r.get(0))))
        })
    }
}

/// Every trial of `study`, read in one snapshot.
fn read_trials(client: &mut Client, study: i64) -> std::result::Result<Vec<TrialRecord>, postgres::Error> {
    // One snapshot for the trials and their rows.
    let mut tx =
        client.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).read_only(true).start()?;
    let of_study = "JOIN trials t ON t.trial_id = x.trial_id WHERE t.study_id = $1::int8";
    let mut rows = super::TrialRows::default();
    let trials = tx.query(
        &format!(
            "SELECT trial_id, number, state::text, {}, {} FROM trials WHERE study_id = $1::int8",
            epoch("datetime_start"),
            epoch("datetime_complete")
        ),
        &[&study],
    )?;
    for r in &trials {
        rows.trial(i64::from(r.get::<_, i32>(0)), i64::from(r.get::<_, i32>(1)), r.get(2), r.get(3), r.get(4));
    }
    let params = tx.query(
        &format!("SELECT x.trial_id, x.param_name, x.param_value, x.distribution_json FROM trial_params x {of_study}"),
        &[&study],
    )?;
    for r in &params {
        rows.param(i64::from(r.get::<_, i32>(0)), r.get(1), r.get(2), r.get::<_, Option<&str>>(3).unwrap_or(""));
    }
    let values = tx.query(
        &format!("SELECT x.trial_id, x.value, x.value_type::text FROM trial_values x {of_study} AND x.objective = 0"),
        &[&study],
    )?;
    for r in &values {
        rows.value(i64::from(r.get::<_, i32>(0)), r.get(1), r.get(2));
    }
    let steps = tx.query(
        &format!(
            "SELECT x.trial_id, x.step, x.intermediate_value, x.intermediate_value_type::text
                 FROM trial_intermediate_values x {of_study}"
        ),
        &[&study],
    )?;
    for r in &steps {
        rows.intermediate(i64::from(r.get::<_, i32>(0)), i64::from(r.get::<_, i32>(1)), r.get(2), r.get(3));
    }
    for table in ["trial_user_attributes", "trial_system_attributes"] {
        let attrs = tx.query(
            &format!(
                "SELECT x.trial_id, x.key, x.value_json FROM {table} x {of_study}
                     AND x.key IN ('{WORKER_ATTR}', '{RUN_DIR_ATTR}', '{FAIL_REASON_ATTR}', '{FIXED_PARAMS_ATTR}')"
            ),
            &[&study],
        )?;
        for r in &attrs {
            rows.attribute(i64::from(r.get::<_, i32>(0)), r.get(1), r.get(2));
        }
    }
    tx.commit()?;
    Ok(rows.into_records())
}
