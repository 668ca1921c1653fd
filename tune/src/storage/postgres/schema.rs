//! Optuna's schema on PostgreSQL as kiln writes it: the DDL Optuna 5.0 creates, the lock that serialises its
//! creation, and the row writers that the storage and the migration of kiln's old tables share.

use postgres::GenericClient;
use serde_json::Value;

use super::super::optuna::{self, SEARCH_SPACE_ATTR};
use super::super::{Direction, TrialRecord};
use super::session::reason;
use crate::space::SearchSpace;

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
pub(crate) const NOW: &str = "clock_timestamp()::timestamp";

/// A stored local timestamp as seconds since the epoch.
pub(crate) fn epoch(column: &str) -> String {
    format!("EXTRACT(EPOCH FROM ({column} AT TIME ZONE current_setting('TimeZone')))::float8")
}

/// The row of trial `$2` of study `$1`.
pub(crate) const TRIAL: &str = "(SELECT trial_id FROM trials WHERE study_id = $1::int8 AND number = $2::int4)";

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

pub(crate) fn number(n: u32) -> i32 {
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
        let (stored, json) = super::super::stored_param(space, name, value)?;
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
    for (table, key, value) in super::super::trial_attributes(trial) {
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
pub(crate) fn upsert_attribute(
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
