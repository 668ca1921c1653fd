//! Study storage on a PostgreSQL server, shared by workers on several machines, in Optuna's own schema (so
//! Python workers, `optuna.load_study` and optuna-dashboard share a study with kiln). Trial numbers are claimed in a
//! transaction that first locks the study's row (`SELECT … FOR UPDATE`), as Optuna's own `create_new_trial` does, so
//! claims of one study — kiln's and Optuna's — are serialised while other studies go on. Start, completion and
//! heartbeat times are the server's clock in the session's time zone (`TIMESTAMP WITHOUT TIME ZONE`, as Optuna
//! stores `now()`), so the heartbeat timeout does not depend on the workers' clocks agreeing. The schema is created
//! on first connection under an advisory lock, so that workers starting together do not race. Connections are plain
//! TCP or Unix sockets (no TLS).

use std::str::FromStr;
use std::time::Duration;

use postgres::{Client, GenericClient, NoTls};
use serde_json::Value;

use super::optuna::{self, FAIL_REASON_ATTR, FIXED_PARAMS_ATTR, RUN_DIR_ATTR, SEARCH_SPACE_ATTR, WORKER_ATTR};
use super::{legacy, redact, Direction, Storage, TrialRecord, TrialState};
use crate::sampler::Params;
use crate::space::SearchSpace;
use crate::{Error, Result};

/// A connection to a study database.
pub struct PostgresStorage {
    url: String,
    client: Client,
}

/// Any constant shared by every kiln worker: serialises schema creation.
const SCHEMA_LOCK: i64 = 0x6b696c6e; // "kiln"

/// The schema as Optuna 5.0.0 (SQLAlchemy's PostgreSQL dialect) creates it on an empty database: the same types,
/// columns, defaults and (server-named) constraints.
pub(crate) const OPTUNA_DDL: &str = "
CREATE TYPE studydirection AS ENUM ('NOT_SET', 'MINIMIZE', 'MAXIMIZE');
CREATE TYPE trialstate AS ENUM ('RUNNING', 'COMPLETE', 'PRUNED', 'FAIL', 'WAITING');
CREATE TYPE trialvaluetype AS ENUM ('FINITE', 'INF_POS', 'INF_NEG');
CREATE TYPE trialintermediatevaluetype AS ENUM ('FINITE', 'INF_POS', 'INF_NEG', 'NAN');
CREATE TABLE studies (
    study_id SERIAL NOT NULL,
    study_name VARCHAR(512) NOT NULL,
    PRIMARY KEY (study_id)
);
CREATE UNIQUE INDEX ix_studies_study_name ON studies (study_name);
CREATE TABLE version_info (
    version_info_id INTEGER NOT NULL,
    schema_version INTEGER,
    library_version VARCHAR(256),
    PRIMARY KEY (version_info_id),
    CHECK (version_info_id=1)
);
CREATE TABLE study_directions (
    study_direction_id SERIAL NOT NULL,
    direction studydirection NOT NULL,
    study_id INTEGER NOT NULL,
    objective INTEGER NOT NULL,
    PRIMARY KEY (study_direction_id),
    UNIQUE (study_id, objective),
    FOREIGN KEY(study_id) REFERENCES studies (study_id)
);
CREATE TABLE study_system_attributes (
    study_system_attribute_id SERIAL NOT NULL,
    study_id INTEGER,
    key VARCHAR(512),
    value_json TEXT,
    PRIMARY KEY (study_system_attribute_id),
    UNIQUE (study_id, key),
    FOREIGN KEY(study_id) REFERENCES studies (study_id)
);
CREATE TABLE study_user_attributes (
    study_user_attribute_id SERIAL NOT NULL,
    study_id INTEGER,
    key VARCHAR(512),
    value_json TEXT,
    PRIMARY KEY (study_user_attribute_id),
    UNIQUE (study_id, key),
    FOREIGN KEY(study_id) REFERENCES studies (study_id)
);
CREATE TABLE trials (
    trial_id SERIAL NOT NULL,
    number INTEGER,
    study_id INTEGER,
    state trialstate NOT NULL,
    datetime_start TIMESTAMP WITHOUT TIME ZONE,
    datetime_complete TIMESTAMP WITHOUT TIME ZONE,
    PRIMARY KEY (trial_id),
    FOREIGN KEY(study_id) REFERENCES studies (study_id)
);
CREATE INDEX ix_trials_study_id ON trials (study_id);
CREATE TABLE trial_heartbeats (
    trial_heartbeat_id SERIAL NOT NULL,
    trial_id INTEGER NOT NULL,
    heartbeat TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    PRIMARY KEY (trial_heartbeat_id),
    UNIQUE (trial_id),
    FOREIGN KEY(trial_id) REFERENCES trials (trial_id)
);
CREATE TABLE trial_intermediate_values (
    trial_intermediate_value_id SERIAL NOT NULL,
    trial_id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    intermediate_value FLOAT(53),
    intermediate_value_type trialintermediatevaluetype NOT NULL,
    PRIMARY KEY (trial_intermediate_value_id),
    UNIQUE (trial_id, step),
    FOREIGN KEY(trial_id) REFERENCES trials (trial_id)
);
CREATE TABLE trial_params (
    param_id SERIAL NOT NULL,
    trial_id INTEGER,
    param_name VARCHAR(512),
    param_value FLOAT(53),
    distribution_json TEXT,
    PRIMARY KEY (param_id),
    UNIQUE (trial_id, param_name),
    FOREIGN KEY(trial_id) REFERENCES trials (trial_id)
);
CREATE TABLE trial_system_attributes (
    trial_system_attribute_id SERIAL NOT NULL,
    trial_id INTEGER,
    key VARCHAR(512),
    value_json TEXT,
    PRIMARY KEY (trial_system_attribute_id),
    UNIQUE (trial_id, key),
    FOREIGN KEY(trial_id) REFERENCES trials (trial_id)
);
CREATE TABLE trial_user_attributes (
    trial_user_attribute_id SERIAL NOT NULL,
    trial_id INTEGER,
    key VARCHAR(512),
    value_json TEXT,
    PRIMARY KEY (trial_user_attribute_id),
    UNIQUE (trial_id, key),
    FOREIGN KEY(trial_id) REFERENCES trials (trial_id)
);
CREATE TABLE trial_values (
    trial_value_id SERIAL NOT NULL,
    trial_id INTEGER NOT NULL,
    objective INTEGER NOT NULL,
    value FLOAT(53),
    value_type trialvaluetype NOT NULL,
    PRIMARY KEY (trial_value_id),
    UNIQUE (trial_id, objective),
    FOREIGN KEY(trial_id) REFERENCES trials (trial_id)
);
CREATE TABLE alembic_version (
    version_num VARCHAR(32) NOT NULL,
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
";

/// The server's clock as the schema's local timestamps.
const NOW: &str = "clock_timestamp()::timestamp";

/// A stored local timestamp as seconds since the epoch.
fn epoch(column: &str) -> String {
    format!("EXTRACT(EPOCH FROM ({column} AT TIME ZONE current_setting('TimeZone')))::float8")
}

/// The row of trial `$2` of study `$1`.
const TRIAL: &str = "(SELECT trial_id FROM trials WHERE study_id = $1::int8 AND number = $2::int4)";

pub(crate) fn reason(e: &postgres::Error) -> String {
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

/// Connects (10 s connect timeout unless the URL sets `connect_timeout`); without a password in the URL, with
/// `PGPASSWORD`'s or the password file's ([`super::password`]).
pub(crate) fn connect(url: &str) -> Result<Client> {
    let err = |reason: String| Error::Storage { url: redact(url), reason };
    let mut config = postgres::Config::from_str(url).map_err(|e| err(reason(&e)))?;
    if config.get_password().is_none() {
        if let Some(password) = super::password::Target::of(&config).and_then(|t| super::password::from_environment(&t))
        {
            config.password(password);
        }
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("kiln");
    }
    config.connect(NoTls).map_err(|e| err(reason(&e)))
}

/// The tables of the connection's current schema.
pub(crate) fn table_names(client: &mut impl GenericClient) -> std::result::Result<Vec<String>, postgres::Error> {
    let rows = client
        .query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()", &[])?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Creates Optuna's schema (the caller holds the schema lock in a transaction).
pub(crate) fn create_schema(client: &mut impl GenericClient) -> std::result::Result<(), postgres::Error> {
    client.batch_execute(OPTUNA_DDL)?;
    client.execute(
        "INSERT INTO version_info (version_info_id, schema_version, library_version) VALUES (1, $1::int4, $2)",
        &[&(optuna::SCHEMA_VERSION as i32), &optuna::LIBRARY_VERSION],
    )?;
    client.execute("INSERT INTO alembic_version (version_num) VALUES ($1)", &[&optuna::ALEMBIC_VERSION])?;
    Ok(())
}

/// Takes the lock that serialises schema changes among kiln workers (until the transaction ends).
pub(crate) fn lock_schema(client: &mut impl GenericClient) -> std::result::Result<(), postgres::Error> {
    client.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]).map(|_| ())
}

impl PostgresStorage {
    /// Connects and creates Optuna's schema if the database has none; kiln's old tables or an Optuna schema version
    /// kiln does not know are refused, saying what to do.
    pub fn connect(url: &str) -> Result<Self> {
        let err = |e: postgres::Error| Error::Storage { url: redact(url), reason: reason(&e) };
        let mut client = connect(url)?;
        let mut tx = client.transaction().map_err(err)?;
        lock_schema(&mut tx).map_err(err)?;
        let tables = table_names(&mut tx).map_err(err)?;
        if tables.iter().any(|t| t == legacy::POSTGRES_MARKER) {
            return Err(Error::Storage { url: redact(url), reason: legacy::refusal(&redact(url)) });
        }
        if !tables.iter().any(|t| t == "studies") {
            create_schema(&mut tx).map_err(err)?;
        } else {
            let version: Option<i32> =
                tx.query_opt("SELECT schema_version FROM version_info", &[]).map_err(err)?.and_then(|r| r.get(0));
            let alembic: Option<String> =
                tx.query_opt("SELECT version_num::text FROM alembic_version", &[]).map_err(err)?.map(|r| r.get(0));
            if let Some(reason) = optuna::version_refusal(version.map(i64::from), alembic.as_deref()) {
                return Err(Error::Storage { url: redact(url), reason });
            }
        }
        tx.commit().map_err(err)?;
        Ok(Self { url: url.to_string(), client })
    }

    fn err(&self, e: postgres::Error) -> Error {
        Error::Storage { url: redact(&self.url), reason: reason(&e) }
    }
}

fn number(n: u32) -> i32 {
    n as i32
}

/// Creates study `name` with `direction` and, when given, its search space; returns its id.
pub(crate) fn insert_study(
    client: &mut impl GenericClient,
    name: &str,
    direction: Direction,
    space: Option<&str>,
) -> std::result::Result<i64, postgres::Error> {
    let id: i32 = client.query_one("INSERT INTO studies (study_name) VALUES ($1) RETURNING study_id", &[&name])?.get(0);
    client.execute(
        "INSERT INTO study_directions (direction, study_id, objective) VALUES ($1::text::studydirection, $2, 0)",
        &[&optuna::direction_name(direction), &id],
    )?;
    if let Some(space) = space {
        client.execute(
            "INSERT INTO study_system_attributes (study_id, key, value_json) VALUES ($1, $2, $3)",
            &[&id, &SEARCH_SPACE_ATTR, &space],
        )?;
    }
    Ok(i64::from(id))
}

/// Writes a whole trial as it is (number, state, times, parameters, values, attributes) into study `study` and,
/// when given, its last heartbeat (seconds since the epoch).
pub(crate) fn insert_trial(
    client: &mut impl GenericClient,
    study: i64,
    trial: &TrialRecord,
    space: &SearchSpace,
    heartbeat: Option<f64>,
) -> std::result::Result<(), String> {
    let sql = |e: postgres::Error| reason(&e);
    let id: i32 = client
        .query_one(
            "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete)
             VALUES ($1, $2::int8, $3::text::trialstate, to_timestamp($4)::timestamp, to_timestamp($5)::timestamp)
             RETURNING trial_id",
            &[&number(trial.number), &study, &trial.state.name(), &trial.started, &trial.finished],
        )
        .map_err(sql)?
        .get(0);
    for (name, value) in &trial.params {
        let (stored, json) = super::stored_param(space, name, value)?;
        client
            .execute(
                "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) VALUES ($1, $2, $3, $4)",
                &[&id, name, &stored, &json],
            )
            .map_err(sql)?;
    }
    if let Some((value, kind)) = trial.value.and_then(optuna::objective_value) {
        client
            .execute(
                "INSERT INTO trial_values (trial_id, objective, value, value_type) VALUES ($1, 0, $2, $3::text::trialvaluetype)",
                &[&id, &value, &kind],
            )
            .map_err(sql)?;
    }
    for (step, value) in &trial.intermediate {
        let (value, kind) = optuna::intermediate_value(*value);
        client
            .execute(
                "INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, intermediate_value_type)
                 VALUES ($1, $2, $3, $4::text::trialintermediatevaluetype)",
                &[&id, &(*step as i32), &value, &kind],
            )
            .map_err(sql)?;
    }
    for (table, key, value) in super::trial_attributes(trial) {
        client
            .execute(
                &format!("INSERT INTO {table} (trial_id, key, value_json) VALUES ($1, $2, $3)"),
                &[&id, &key, &value.to_string()],
            )
            .map_err(sql)?;
    }
    if let Some(beat) = heartbeat {
        client
            .execute(
                "INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES ($1, to_timestamp($2)::timestamp)",
                &[&id, &beat],
            )
            .map_err(sql)?;
    }
    Ok(())
}

/// Sets an attribute row (`table` is a trial attribute table) of trial `id`.
fn upsert_attribute(
    client: &mut impl GenericClient,
    table: &str,
    id: i32,
    key: &str,
    value: &Value,
) -> std::result::Result<(), postgres::Error> {
    client
        .execute(
            &format!(
                "INSERT INTO {table} (trial_id, key, value_json) VALUES ($1, $2, $3)
                 ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json"
            ),
            &[&id, &key, &value.to_string()],
        )
        .map(|_| ())
}

impl Storage for PostgresStorage {
    fn study(&mut self, name: &str, direction: Direction) -> Result<i64> {
        let url = redact(&self.url);
        let err = |e: postgres::Error| Error::Storage { url: url.clone(), reason: reason(&e) };
        let mut tx = self.client.transaction().map_err(err)?;
        // Creation races with other workers: the schema lock serialises it (the name is unique anyway).
        lock_schema(&mut tx).map_err(err)?;
        let id = match tx.query_opt("SELECT study_id FROM studies WHERE study_name = $1", &[&name]).map_err(err)? {
            Some(row) => i64::from(row.get::<_, i32>(0)),
            None => insert_study(&mut tx, name, direction, None).map_err(err)?,
        };
        let directions: Vec<String> = tx
            .query("SELECT direction::text FROM study_directions WHERE study_id = $1::int8 ORDER BY objective", &[&id])
            .map_err(err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.commit().map_err(err)?;
        super::check_direction(&url, name, &directions, direction)?;
        Ok(id)
    }

    fn set_space(&mut self, study: i64, space: &str) -> Result<String> {
        self.client
            .execute(
                "INSERT INTO study_system_attributes (study_id, key, value_json) VALUES ($1::int8, $2, $3)
                 ON CONFLICT (study_id, key) DO NOTHING",
                &[&study, &SEARCH_SPACE_ATTR, &space],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.space(study)?.unwrap_or_default())
    }

    fn space(&mut self, study: i64) -> Result<Option<String>> {
        let row = self
            .client
            .query_opt(
                "SELECT value_json FROM study_system_attributes WHERE study_id = $1::int8 AND key = $2",
                &[&study, &SEARCH_SPACE_ATTR],
            )
            .map_err(|e| self.err(e))?;
        Ok(row.and_then(|r| r.get(0)))
    }

    fn claim_trial(&mut self, study: i64, total: usize, worker: &str) -> Result<Option<u32>> {
        let url = redact(&self.url);
        let err = |e: postgres::Error| Error::Storage { url: url.clone(), reason: reason(&e) };
        let mut tx = self.client.transaction().map_err(err)?;
        // Serialises the claims of this study, kiln's and Optuna's alike (Optuna locks the same row).
        tx.execute("SELECT 1 FROM studies WHERE study_id = $1::int8 FOR UPDATE", &[&study]).map_err(err)?;
        // A trial that a Python worker enqueued (`study.enqueue_trial`) runs first, as in Optuna.
        let waiting = tx
            .query_opt(
                &format!(
                    "UPDATE trials SET state = 'RUNNING', datetime_start = {NOW} WHERE trial_id = (
                         SELECT trial_id FROM trials WHERE study_id = $1::int8 AND state = 'WAITING'
                         ORDER BY trial_id LIMIT 1)
                     RETURNING trial_id, number"
                ),
                &[&study],
            )
            .map_err(err)?;
        let (id, number): (i32, i32) = match waiting {
            Some(row) => (row.get(0), row.get(1)),
            None => {
                let count: i64 = tx
                    .query_one("SELECT COUNT(*) FROM trials WHERE study_id = $1::int8", &[&study])
                    .map_err(err)?
                    .get(0);
                if count as usize >= total {
                    return Ok(None);
                }
                // Optuna numbers a trial by the trials created before it.
                let row = tx
                    .query_one(
                        &format!(
                            "INSERT INTO trials (number, study_id, state, datetime_start)
                             VALUES ($1::int8, $2::int8, 'RUNNING', {NOW}) RETURNING trial_id, number"
                        ),
                        &[&count, &study],
                    )
                    .map_err(err)?;
                (row.get(0), row.get(1))
            }
        };
        tx.execute(
            &format!(
                "INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES ($1, {NOW})
                 ON CONFLICT (trial_id) DO UPDATE SET heartbeat = excluded.heartbeat"
            ),
            &[&id],
        )
        .map_err(err)?;
        upsert_attribute(&mut tx, "trial_user_attributes", id, WORKER_ATTR, &Value::from(worker)).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Some(number as u32))
    }

    fn set_params(&mut self, study: i64, n: u32, params: &Params, space: &SearchSpace) -> Result<()> {
        let url = redact(&self.url);
        let err = |e: postgres::Error| Error::Storage { url: url.clone(), reason: reason(&e) };
        let mut tx = self.client.transaction().map_err(err)?;
        for (name, value) in params {
            let (stored, json) = super::stored_param(space, name, value)
                .map_err(|reason| Error::Storage { url: url.clone(), reason })?;
            tx.execute(
                &format!(
                    "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json)
                     VALUES ({TRIAL}, $3, $4, $5)
                     ON CONFLICT (trial_id, param_name) DO UPDATE
                     SET param_value = excluded.param_value, distribution_json = excluded.distribution_json"
                ),
                &[&study, &number(n), name, &stored, &json],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(())
    }

    fn set_user_attr(&mut self, study: i64, n: u32, key: &str, value: &Value) -> Result<()> {
        self.client
            .execute(
                &format!(
                    "INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES ({TRIAL}, $3, $4)
                     ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json"
                ),
                &[&study, &number(n), &key, &value.to_string()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn report(&mut self, study: i64, n: u32, step: usize, value: f64) -> Result<()> {
        let (value, kind) = optuna::intermediate_value(value);
        // One round trip: the value (only while RUNNING) and the heartbeat.
        self.client
            .execute(
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
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn heartbeat(&mut self, study: i64, n: u32) -> Result<()> {
        self.client
            .execute(
                &format!(
                    "UPDATE trial_heartbeats SET heartbeat = {NOW} WHERE trial_id = (
                         SELECT trial_id FROM trials WHERE study_id = $1::int8 AND number = $2::int4 AND state = 'RUNNING')"
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
        reason_text: Option<&str>,
    ) -> Result<bool> {
        let url = redact(&self.url);
        let err = |e: postgres::Error| Error::Storage { url: url.clone(), reason: reason(&e) };
        let mut tx = self.client.transaction().map_err(err)?;
        let Some(row) = tx
            .query_opt(
                &format!(
                    "UPDATE trials SET state = $3::text::trialstate, datetime_complete = {NOW}
                     WHERE study_id = $1::int8 AND number = $2::int4 AND state = 'RUNNING' RETURNING trial_id"
                ),
                &[&study, &number(n), &state.name()],
            )
            .map_err(err)?
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
            )
            .map_err(err)?;
        }
        if let Some(text) = reason_text {
            upsert_attribute(&mut tx, "trial_system_attributes", id, FAIL_REASON_ATTR, &Value::from(text))
                .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(true)
    }

    fn fail_stale(&mut self, study: i64, timeout: Duration) -> Result<usize> {
        let url = redact(&self.url);
        let err = |e: postgres::Error| Error::Storage { url: url.clone(), reason: reason(&e) };
        let mut tx = self.client.transaction().map_err(err)?;
        let rows = tx
            .query(
                &format!(
                    "UPDATE trials t SET state = 'FAIL', datetime_complete = {NOW}
                     FROM trial_heartbeats h
                     WHERE h.trial_id = t.trial_id AND t.study_id = $1::int8 AND t.state = 'RUNNING'
                       AND h.heartbeat < {NOW} - make_interval(secs => $2)
                     RETURNING t.trial_id"
                ),
                &[&study, &timeout.as_secs_f64()],
            )
            .map_err(err)?;
        let reason_value = Value::from(super::stale_reason(timeout));
        for row in &rows {
            upsert_attribute(&mut tx, "trial_system_attributes", row.get(0), FAIL_REASON_ATTR, &reason_value)
                .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(rows.len())
    }

    fn trials(&mut self, study: i64) -> Result<Vec<TrialRecord>> {
        let url = redact(&self.url);
        let err = |e: postgres::Error| Error::Storage { url: url.clone(), reason: reason(&e) };
        // One snapshot for the trials and their rows.
        let mut tx = self
            .client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(err)?;
        let of_study = "JOIN trials t ON t.trial_id = x.trial_id WHERE t.study_id = $1::int8";
        let mut rows = super::TrialRows::default();
        let trials = tx
            .query(
                &format!(
                    "SELECT trial_id, number, state::text, {}, {} FROM trials WHERE study_id = $1::int8",
                    epoch("datetime_start"),
                    epoch("datetime_complete")
                ),
                &[&study],
            )
            .map_err(err)?;
        for r in &trials {
            rows.trial(i64::from(r.get::<_, i32>(0)), i64::from(r.get::<_, i32>(1)), r.get(2), r.get(3), r.get(4));
        }
        let params = tx
            .query(
                &format!(
                    "SELECT x.trial_id, x.param_name, x.param_value, x.distribution_json FROM trial_params x {of_study}"
                ),
                &[&study],
            )
            .map_err(err)?;
        for r in &params {
            rows.param(i64::from(r.get::<_, i32>(0)), r.get(1), r.get(2), r.get::<_, Option<&str>>(3).unwrap_or(""));
        }
        let values = tx
            .query(
                &format!(
                    "SELECT x.trial_id, x.value, x.value_type::text FROM trial_values x {of_study} AND x.objective = 0"
                ),
                &[&study],
            )
            .map_err(err)?;
        for r in &values {
            rows.value(i64::from(r.get::<_, i32>(0)), r.get(1), r.get(2));
        }
        let steps = tx
            .query(
                &format!(
                    "SELECT x.trial_id, x.step, x.intermediate_value, x.intermediate_value_type::text
                     FROM trial_intermediate_values x {of_study}"
                ),
                &[&study],
            )
            .map_err(err)?;
        for r in &steps {
            rows.intermediate(i64::from(r.get::<_, i32>(0)), i64::from(r.get::<_, i32>(1)), r.get(2), r.get(3));
        }
        for table in ["trial_user_attributes", "trial_system_attributes"] {
            let attrs = tx
                .query(
                    &format!(
                        "SELECT x.trial_id, x.key, x.value_json FROM {table} x {of_study}
                         AND x.key IN ('{WORKER_ATTR}', '{RUN_DIR_ATTR}', '{FAIL_REASON_ATTR}', '{FIXED_PARAMS_ATTR}')"
                    ),
                    &[&study],
                )
                .map_err(err)?;
            for r in &attrs {
                rows.attribute(i64::from(r.get::<_, i32>(0)), r.get(1), r.get(2));
            }
        }
        tx.commit().map_err(err)?;
        Ok(rows.into_records())
    }

    fn studies(&mut self) -> Result<Vec<String>> {
        let rows = self
            .client
            .query("SELECT study_name::text FROM studies ORDER BY study_id", &[])
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn study_direction(&mut self, name: &str) -> Result<Option<Direction>> {
        let row = self
            .client
            .query_opt(
                "SELECT d.direction::text FROM study_directions d JOIN studies s ON s.study_id = d.study_id
                 WHERE s.study_name = $1 AND d.objective = 0",
                &[&name],
            )
            .map_err(|e| self.err(e))?;
        Ok(row.and_then(|r| optuna::direction_from(r.get(0))))
    }
}
