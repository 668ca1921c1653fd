//! Study storage in one SQLite file, shared by processes on one machine, in Optuna's own schema (so
//! `optuna.load_study`, `optuna-dashboard sqlite:///FILE` and Python workers share the file with kiln): WAL journal,
//! a busy timeout, and trial numbers claimed inside `BEGIN IMMEDIATE` transactions (one writer at a time, which
//! also serialises kiln's claims with Optuna's). Times are stored as Optuna stores them: start and completion in the
//! local time of the writer, heartbeats in UTC (SQLite's `CURRENT_TIMESTAMP`, which Optuna compares them with).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::Value;

use super::optuna::{self, FAIL_REASON_ATTR, FIXED_PARAMS_ATTR, RUN_DIR_ATTR, SEARCH_SPACE_ATTR, WORKER_ATTR};
use super::{legacy, Direction, Storage, TrialRecord, TrialState};
use crate::sampler::Params;
use crate::space::SearchSpace;
use crate::{Error, Result};

/// A study database file.
pub struct SqliteStorage {
    path: PathBuf,
    conn: Connection,
    /// Trial ids by (study, number): Optuna's schema indexes trials by study only, and a trial's id never changes.
    ids: HashMap<(i64, u32), i64>,
}

/// The statements with which Optuna 5.0.0 (SQLAlchemy) creates an empty database, verbatim, in its order.
pub(crate) const OPTUNA_DDL: &[&str] = &[
    "CREATE TABLE studies (\n\tstudy_id INTEGER NOT NULL, \n\tstudy_name VARCHAR(512) NOT NULL, \n\tPRIMARY KEY (study_id)\n)",
    "CREATE UNIQUE INDEX ix_studies_study_name ON studies (study_name)",
    "CREATE TABLE version_info (\n\tversion_info_id INTEGER NOT NULL, \n\tschema_version INTEGER, \n\tlibrary_version VARCHAR(256), \n\tPRIMARY KEY (version_info_id), \n\tCHECK (version_info_id=1)\n)",
    "CREATE TABLE study_directions (\n\tstudy_direction_id INTEGER NOT NULL, \n\tdirection VARCHAR(8) NOT NULL, \n\tstudy_id INTEGER NOT NULL, \n\tobjective INTEGER NOT NULL, \n\tPRIMARY KEY (study_direction_id), \n\tUNIQUE (study_id, objective), \n\tFOREIGN KEY(study_id) REFERENCES studies (study_id)\n)",
    "CREATE TABLE study_user_attributes (\n\tstudy_user_attribute_id INTEGER NOT NULL, \n\tstudy_id INTEGER, \n\t\"key\" VARCHAR(512), \n\tvalue_json TEXT, \n\tPRIMARY KEY (study_user_attribute_id), \n\tUNIQUE (study_id, \"key\"), \n\tFOREIGN KEY(study_id) REFERENCES studies (study_id)\n)",
    "CREATE TABLE study_system_attributes (\n\tstudy_system_attribute_id INTEGER NOT NULL, \n\tstudy_id INTEGER, \n\t\"key\" VARCHAR(512), \n\tvalue_json TEXT, \n\tPRIMARY KEY (study_system_attribute_id), \n\tUNIQUE (study_id, \"key\"), \n\tFOREIGN KEY(study_id) REFERENCES studies (study_id)\n)",
    "CREATE TABLE trials (\n\ttrial_id INTEGER NOT NULL, \n\tnumber INTEGER, \n\tstudy_id INTEGER, \n\tstate VARCHAR(8) NOT NULL, \n\tdatetime_start DATETIME, \n\tdatetime_complete DATETIME, \n\tPRIMARY KEY (trial_id), \n\tFOREIGN KEY(study_id) REFERENCES studies (study_id)\n)",
    "CREATE INDEX ix_trials_study_id ON trials (study_id)",
    "CREATE TABLE trial_user_attributes (\n\ttrial_user_attribute_id INTEGER NOT NULL, \n\ttrial_id INTEGER, \n\t\"key\" VARCHAR(512), \n\tvalue_json TEXT, \n\tPRIMARY KEY (trial_user_attribute_id), \n\tUNIQUE (trial_id, \"key\"), \n\tFOREIGN KEY(trial_id) REFERENCES trials (trial_id)\n)",
    "CREATE TABLE trial_system_attributes (\n\ttrial_system_attribute_id INTEGER NOT NULL, \n\ttrial_id INTEGER, \n\t\"key\" VARCHAR(512), \n\tvalue_json TEXT, \n\tPRIMARY KEY (trial_system_attribute_id), \n\tUNIQUE (trial_id, \"key\"), \n\tFOREIGN KEY(trial_id) REFERENCES trials (trial_id)\n)",
    "CREATE TABLE trial_params (\n\tparam_id INTEGER NOT NULL, \n\ttrial_id INTEGER, \n\tparam_name VARCHAR(512), \n\tparam_value FLOAT, \n\tdistribution_json TEXT, \n\tPRIMARY KEY (param_id), \n\tUNIQUE (trial_id, param_name), \n\tFOREIGN KEY(trial_id) REFERENCES trials (trial_id)\n)",
    "CREATE TABLE trial_values (\n\ttrial_value_id INTEGER NOT NULL, \n\ttrial_id INTEGER NOT NULL, \n\tobjective INTEGER NOT NULL, \n\tvalue FLOAT, \n\tvalue_type VARCHAR(7) NOT NULL, \n\tPRIMARY KEY (trial_value_id), \n\tUNIQUE (trial_id, objective), \n\tFOREIGN KEY(trial_id) REFERENCES trials (trial_id)\n)",
    "CREATE TABLE trial_intermediate_values (\n\ttrial_intermediate_value_id INTEGER NOT NULL, \n\ttrial_id INTEGER NOT NULL, \n\tstep INTEGER NOT NULL, \n\tintermediate_value FLOAT, \n\tintermediate_value_type VARCHAR(7) NOT NULL, \n\tPRIMARY KEY (trial_intermediate_value_id), \n\tUNIQUE (trial_id, step), \n\tFOREIGN KEY(trial_id) REFERENCES trials (trial_id)\n)",
    "CREATE TABLE trial_heartbeats (\n\ttrial_heartbeat_id INTEGER NOT NULL, \n\ttrial_id INTEGER NOT NULL, \n\theartbeat DATETIME NOT NULL, \n\tPRIMARY KEY (trial_heartbeat_id), \n\tUNIQUE (trial_id), \n\tFOREIGN KEY(trial_id) REFERENCES trials (trial_id)\n)",
    "CREATE TABLE alembic_version (\n\tversion_num VARCHAR(32) NOT NULL, \n\tCONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)\n)",
];

/// Local time with microseconds, as Optuna's `datetime.now()` is stored (SQLite's clock has milliseconds).
const LOCAL_NOW: &str = "strftime('%Y-%m-%d %H:%M:%f000', 'now', 'localtime')";
/// UTC with microseconds: the heartbeat's clock.
const UTC_NOW: &str = "strftime('%Y-%m-%d %H:%M:%f000', 'now')";
/// A stored local time as seconds since the epoch.
fn epoch(column: &str) -> String {
    format!("(julianday({column}, 'utc') - 2440587.5) * 86400.0")
}

fn storage_error(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::Storage { url: format!("sqlite:///{}", path.display()), reason: e.to_string() }
}

/// Runs `sql` (with the study id as `?1`) and hands each row to `f`.
fn each_row(
    conn: &Connection,
    sql: &str,
    study: i64,
    mut f: impl FnMut(&rusqlite::Row) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params![study])?;
    while let Some(row) = rows.next()? {
        f(row)?;
    }
    Ok(())
}

/// A text column, borrowed.
fn text<'r>(row: &'r rusqlite::Row, i: usize) -> rusqlite::Result<&'r str> {
    Ok(row.get_ref(i)?.as_str()?)
}

/// Whether the file has a table `name`.
fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?.exists(params![name])
}

/// Creates Optuna's schema in an empty database (the caller holds a write transaction).
pub(crate) fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    for statement in OPTUNA_DDL {
        conn.execute(statement, [])?;
    }
    conn.execute(
        "INSERT INTO version_info (version_info_id, schema_version, library_version) VALUES (1, ?1, ?2)",
        params![optuna::SCHEMA_VERSION, optuna::LIBRARY_VERSION],
    )?;
    conn.execute("INSERT INTO alembic_version (version_num) VALUES (?1)", params![optuna::ALEMBIC_VERSION])?;
    Ok(())
}

/// Why kiln cannot use the file's schema, if it cannot: an old kiln study file, or another Optuna schema version.
fn refusal(conn: &Connection, path: &Path) -> rusqlite::Result<Option<String>> {
    if legacy::is_legacy_sqlite(conn)? {
        return Ok(Some(legacy::refusal(&format!("sqlite:///{}", path.display()))));
    }
    let version: Option<i64> =
        conn.query_row("SELECT schema_version FROM version_info", [], |r| r.get(0)).optional()?.flatten();
    let alembic: Option<String> =
        conn.query_row("SELECT version_num FROM alembic_version", [], |r| r.get(0)).optional()?;
    Ok(optuna::version_refusal(version, alembic.as_deref()))
}

/// Opens the file with kiln's connection settings.
pub(crate) fn connect(path: &Path) -> Result<Connection> {
    let err = storage_error(path);
    let conn = Connection::open(path).map_err(&err)?;
    conn.busy_timeout(Duration::from_secs(60)).map_err(&err)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(&err)?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(&err)?;
    Ok(conn)
}

impl SqliteStorage {
    /// Opens (creating if needed) a study database; a file in kiln's old format or in an Optuna schema version kiln
    /// does not know is refused, saying what to do.
    pub fn open(path: &Path) -> Result<Self> {
        let err = storage_error(path);
        let mut conn = connect(path)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(&err)?;
        if !has_table(&tx, "studies").map_err(&err)? {
            create_schema(&tx).map_err(&err)?;
        } else if let Some(reason) = refusal(&tx, path).map_err(&err)? {
            return Err(Error::Storage { url: format!("sqlite:///{}", path.display()), reason });
        }
        tx.commit().map_err(&err)?;
        Ok(Self { path: path.to_path_buf(), conn, ids: HashMap::new() })
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        storage_error(&self.path)(e)
    }

    /// The id of trial `number` of `study`; `None` when there is no such trial.
    fn trial_id(&mut self, study: i64, number: u32) -> Result<Option<i64>> {
        if let Some(id) = self.ids.get(&(study, number)) {
            return Ok(Some(*id));
        }
        let id: Option<i64> = self
            .conn
            .prepare_cached("SELECT trial_id FROM trials WHERE study_id = ?1 AND number = ?2")
            .and_then(|mut s| s.query_row(params![study, number], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))?;
        if let Some(id) = id {
            self.ids.insert((study, number), id);
        }
        Ok(id)
    }
}

/// Writes a whole trial as it is (number, state, times, parameters, values, attributes) into study `study` and,
/// when given, its last heartbeat (seconds since the epoch).
pub(crate) fn insert_trial(
    conn: &Connection,
    study: i64,
    trial: &TrialRecord,
    space: &SearchSpace,
    heartbeat: Option<f64>,
) -> std::result::Result<(), String> {
    let sql = |e: rusqlite::Error| e.to_string();
    conn.execute(
        "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) VALUES (?1, ?2, ?3,
             strftime('%Y-%m-%d %H:%M:%f000', ?4, 'unixepoch', 'localtime'),
             strftime('%Y-%m-%d %H:%M:%f000', ?5, 'unixepoch', 'localtime'))",
        params![trial.number, study, trial.state.name(), trial.started, trial.finished],
    )
    .map_err(sql)?;
    let id = conn.last_insert_rowid();
    for (name, value) in &trial.params {
        let (stored, json) = super::stored_param(space, name, value)?;
        conn.execute(
            "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) VALUES (?1, ?2, ?3, ?4)",
            params![id, name, stored, json],
        )
        .map_err(sql)?;
    }
    if let Some((value, kind)) = trial.value.and_then(optuna::objective_value) {
        conn.execute(
            "INSERT INTO trial_values (trial_id, objective, value, value_type) VALUES (?1, 0, ?2, ?3)",
            params![id, value, kind],
        )
        .map_err(sql)?;
    }
    for (step, value) in &trial.intermediate {
        let (value, kind) = optuna::intermediate_value(*value);
        conn.execute(
            "INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, intermediate_value_type)
             VALUES (?1, ?2, ?3, ?4)",
            params![id, *step as i64, value, kind],
        )
        .map_err(sql)?;
    }
    for (table, key, value) in super::trial_attributes(trial) {
        conn.execute(
            &format!("INSERT INTO {table} (trial_id, key, value_json) VALUES (?1, ?2, ?3)"),
            params![id, key, value.to_string()],
        )
        .map_err(sql)?;
    }
    if let Some(beat) = heartbeat {
        conn.execute(
            "INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (?1, strftime('%Y-%m-%d %H:%M:%f000', ?2, 'unixepoch'))",
            params![id, beat],
        )
        .map_err(sql)?;
    }
    Ok(())
}

/// Creates study `name` with `direction` and, when given, its search space (the caller holds a write transaction);
/// returns its id.
pub(crate) fn insert_study(
    conn: &Connection,
    name: &str,
    direction: Direction,
    space: Option<&str>,
) -> rusqlite::Result<i64> {
    conn.execute("INSERT INTO studies (study_name) VALUES (?1)", params![name])?;
    let id = conn.last_insert_rowid();
    conn.execute(
        "INSERT INTO study_directions (direction, study_id, objective) VALUES (?1, ?2, 0)",
        params![optuna::direction_name(direction), id],
    )?;
    if let Some(space) = space {
        conn.execute(
            "INSERT INTO study_system_attributes (study_id, key, value_json) VALUES (?1, ?2, ?3)",
            params![id, SEARCH_SPACE_ATTR, space],
        )?;
    }
    Ok(id)
}

impl Storage for SqliteStorage {
    fn study(&mut self, name: &str, direction: Direction) -> Result<i64> {
        let path = self.path.clone();
        let err = storage_error(&path);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(&err)?;
        let id: Option<i64> = tx
            .query_row("SELECT study_id FROM studies WHERE study_name = ?1", params![name], |r| r.get(0))
            .optional()
            .map_err(&err)?;
        let id = match id {
            Some(id) => id,
            None => insert_study(&tx, name, direction, None).map_err(&err)?,
        };
        let directions: Vec<String> = {
            let mut stmt = tx
                .prepare("SELECT direction FROM study_directions WHERE study_id = ?1 ORDER BY objective")
                .map_err(&err)?;
            let rows = stmt.query_map(params![id], |r| r.get(0)).map_err(&err)?;
            rows.collect::<rusqlite::Result<_>>().map_err(&err)?
        };
        tx.commit().map_err(&err)?;
        super::check_direction(&format!("sqlite:///{}", path.display()), name, &directions, direction)?;
        Ok(id)
    }

    fn set_space(&mut self, study: i64, space: &str) -> Result<String> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO study_system_attributes (study_id, key, value_json) VALUES (?1, ?2, ?3)",
                params![study, SEARCH_SPACE_ATTR, space],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.space(study)?.unwrap_or_default())
    }

    fn space(&mut self, study: i64) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT value_json FROM study_system_attributes WHERE study_id = ?1 AND key = ?2",
                params![study, SEARCH_SPACE_ATTR],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    fn claim_trial(&mut self, study: i64, total: usize, worker: &str) -> Result<Option<u32>> {
        let path = self.path.clone();
        let err = storage_error(&path);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(&err)?;
        // A trial that a Python worker enqueued (`study.enqueue_trial`) runs first, as in Optuna.
        let waiting: Option<(i64, u32)> = tx
            .query_row(
                "SELECT trial_id, number FROM trials WHERE study_id = ?1 AND state = 'WAITING' ORDER BY trial_id LIMIT 1",
                params![study],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(&err)?;
        let (id, number) = match waiting {
            Some((id, number)) => {
                tx.execute(
                    &format!("UPDATE trials SET state = 'RUNNING', datetime_start = {LOCAL_NOW} WHERE trial_id = ?1"),
                    params![id],
                )
                .map_err(&err)?;
                (id, number)
            }
            None => {
                let count: i64 = tx
                    .query_row("SELECT COUNT(*) FROM trials WHERE study_id = ?1", params![study], |r| r.get(0))
                    .map_err(&err)?;
                if count as usize >= total {
                    return Ok(None);
                }
                // Optuna numbers a trial by the trials created before it.
                tx.execute(
                    &format!(
                        "INSERT INTO trials (number, study_id, state, datetime_start) VALUES (?1, ?2, 'RUNNING', {LOCAL_NOW})"
                    ),
                    params![count, study],
                )
                .map_err(&err)?;
                (tx.last_insert_rowid(), count as u32)
            }
        };
        tx.execute(
            &format!(
                "INSERT INTO trial_heartbeats (trial_id, heartbeat) VALUES (?1, {UTC_NOW})
                 ON CONFLICT (trial_id) DO UPDATE SET heartbeat = excluded.heartbeat"
            ),
            params![id],
        )
        .map_err(&err)?;
        tx.execute(
            "INSERT OR REPLACE INTO trial_user_attributes (trial_id, key, value_json) VALUES (?1, ?2, ?3)",
            params![id, WORKER_ATTR, Value::from(worker).to_string()],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        self.ids.insert((study, number), id);
        Ok(Some(number))
    }

    fn set_params(&mut self, study: i64, number: u32, params: &Params, space: &SearchSpace) -> Result<()> {
        let Some(id) = self.trial_id(study, number)? else { return Ok(()) };
        let path = self.path.clone();
        let err = storage_error(&path);
        let tx = self.conn.transaction().map_err(&err)?;
        for (name, value) in params {
            let (stored, json) = super::stored_param(space, name, value)
                .map_err(|reason| Error::Storage { url: format!("sqlite:///{}", path.display()), reason })?;
            tx.execute(
                "INSERT OR REPLACE INTO trial_params (trial_id, param_name, param_value, distribution_json)
                 VALUES (?1, ?2, ?3, ?4)",
                params![id, name, stored, json],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)?;
        Ok(())
    }

    fn set_user_attr(&mut self, study: i64, number: u32, key: &str, value: &Value) -> Result<()> {
        let Some(id) = self.trial_id(study, number)? else { return Ok(()) };
        self.conn
            .execute(
                "INSERT OR REPLACE INTO trial_user_attributes (trial_id, key, value_json) VALUES (?1, ?2, ?3)",
                params![id, key, value.to_string()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn report(&mut self, study: i64, number: u32, step: usize, value: f64) -> Result<()> {
        let Some(id) = self.trial_id(study, number)? else { return Ok(()) };
        let (value, kind) = optuna::intermediate_value(value);
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO trial_intermediate_values
                     (trial_id, step, intermediate_value, intermediate_value_type)
                 SELECT trial_id, ?2, ?3, ?4 FROM trials WHERE trial_id = ?1 AND state = 'RUNNING'",
            )
            .and_then(|mut s| s.execute(params![id, step as i64, value, kind]))
            .map_err(|e| self.err(e))?;
        self.heartbeat(study, number)
    }

    fn heartbeat(&mut self, study: i64, number: u32) -> Result<()> {
        let Some(id) = self.trial_id(study, number)? else { return Ok(()) };
        self.conn
            .prepare_cached(&format!(
                "UPDATE trial_heartbeats SET heartbeat = {UTC_NOW}
                 WHERE trial_id = ?1 AND EXISTS (SELECT 1 FROM trials WHERE trial_id = ?1 AND state = 'RUNNING')"
            ))
            .and_then(|mut s| s.execute(params![id]))
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
        let Some(id) = self.trial_id(study, number)? else { return Ok(false) };
        let path = self.path.clone();
        let err = storage_error(&path);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(&err)?;
        let changed = tx
            .execute(
                &format!(
                    "UPDATE trials SET state = ?2, datetime_complete = {LOCAL_NOW} WHERE trial_id = ?1 AND state = 'RUNNING'"
                ),
                params![id, state.name()],
            )
            .map_err(&err)?;
        if changed == 0 {
            return Ok(false);
        }
        if let Some((value, kind)) = value.and_then(optuna::objective_value) {
            tx.execute(
                "INSERT OR REPLACE INTO trial_values (trial_id, objective, value, value_type) VALUES (?1, 0, ?2, ?3)",
                params![id, value, kind],
            )
            .map_err(&err)?;
        }
        if let Some(reason) = reason {
            tx.execute(
                "INSERT OR REPLACE INTO trial_system_attributes (trial_id, key, value_json) VALUES (?1, ?2, ?3)",
                params![id, FAIL_REASON_ATTR, Value::from(reason).to_string()],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)?;
        Ok(true)
    }

    fn fail_stale(&mut self, study: i64, timeout: Duration) -> Result<usize> {
        let path = self.path.clone();
        let err = storage_error(&path);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(&err)?;
        let stale: Vec<i64> = {
            let mut stmt = tx
                .prepare(
                    "SELECT t.trial_id FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id
                     WHERE t.study_id = ?1 AND t.state = 'RUNNING'
                       AND julianday(h.heartbeat) < julianday('now') - ?2 / 86400.0",
                )
                .map_err(&err)?;
            let rows = stmt.query_map(params![study, timeout.as_secs_f64()], |r| r.get(0)).map_err(&err)?;
            rows.collect::<rusqlite::Result<_>>().map_err(&err)?
        };
        let reason = Value::from(super::stale_reason(timeout)).to_string();
        for id in &stale {
            tx.execute(
                &format!("UPDATE trials SET state = 'FAIL', datetime_complete = {LOCAL_NOW} WHERE trial_id = ?1"),
                params![id],
            )
            .map_err(&err)?;
            tx.execute(
                "INSERT OR REPLACE INTO trial_system_attributes (trial_id, key, value_json) VALUES (?1, ?2, ?3)",
                params![id, FAIL_REASON_ATTR, reason],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)?;
        Ok(stale.len())
    }

    fn trials(&mut self, study: i64) -> Result<Vec<TrialRecord>> {
        let path = self.path.clone();
        let err = storage_error(&path);
        // One read transaction, so trials and their rows are a consistent snapshot.
        let tx = self.conn.transaction().map_err(&err)?;
        let mut rows = super::TrialRows::default();
        let of_study = "JOIN trials t ON t.trial_id = x.trial_id WHERE t.study_id = ?1";
        let trials = format!(
            "SELECT trial_id, number, state, {}, {} FROM trials WHERE study_id = ?1",
            epoch("datetime_start"),
            epoch("datetime_complete")
        );
        each_row(&tx, &trials, study, |r| {
            rows.trial(r.get(0)?, r.get(1)?, text(r, 2)?, r.get(3)?, r.get(4)?);
            Ok(())
        })
        .map_err(&err)?;
        let params = format!(
            "SELECT x.trial_id, x.param_name, x.param_value, x.distribution_json FROM trial_params x {of_study}"
        );
        each_row(&tx, &params, study, |r| {
            rows.param(r.get(0)?, r.get(1)?, r.get(2)?, text(r, 3)?);
            Ok(())
        })
        .map_err(&err)?;
        let values =
            format!("SELECT x.trial_id, x.value, x.value_type FROM trial_values x {of_study} AND x.objective = 0");
        each_row(&tx, &values, study, |r| {
            rows.value(r.get(0)?, r.get(1)?, text(r, 2)?);
            Ok(())
        })
        .map_err(&err)?;
        let steps = format!(
            "SELECT x.trial_id, x.step, x.intermediate_value, x.intermediate_value_type
             FROM trial_intermediate_values x {of_study}"
        );
        each_row(&tx, &steps, study, |r| {
            rows.intermediate(r.get(0)?, r.get(1)?, r.get(2)?, text(r, 3)?);
            Ok(())
        })
        .map_err(&err)?;
        for table in ["trial_user_attributes", "trial_system_attributes"] {
            let attributes = format!(
                "SELECT x.trial_id, x.key, x.value_json FROM {table} x {of_study}
                 AND x.key IN ('{WORKER_ATTR}', '{RUN_DIR_ATTR}', '{FAIL_REASON_ATTR}', '{FIXED_PARAMS_ATTR}')"
            );
            each_row(&tx, &attributes, study, |r| {
                rows.attribute(r.get(0)?, text(r, 1)?, r.get_ref(2)?.as_str_or_null()?);
                Ok(())
            })
            .map_err(&err)?;
        }
        Ok(rows.into_records())
    }

    fn studies(&mut self) -> Result<Vec<String>> {
        let mut stmt =
            self.conn.prepare("SELECT study_name FROM studies ORDER BY study_id").map_err(|e| self.err(e))?;
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
            .query_row(
                "SELECT d.direction FROM study_directions d JOIN studies s ON s.study_id = d.study_id
                 WHERE s.study_name = ?1 AND d.objective = 0",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(stored.as_deref().and_then(optuna::direction_from))
    }
}
