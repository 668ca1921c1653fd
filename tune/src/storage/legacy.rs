//! Study databases in kiln's own earlier tables (before kiln wrote Optuna's schema): SQLite files with `studies`,
//! `trials` and `intermediate` (whose `studies` clashes with Optuna's table of that name), and PostgreSQL databases
//! with `kiln_studies`, `kiln_trials` and `kiln_intermediate`. Opening one is refused with the command that converts
//! it; [`migrate`] converts it in place, keeping a copy first, and loses nothing: numbers, states, times, values,
//! intermediate values, parameters (with the distributions of the study's stored space), fail reasons and workers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, TransactionBehavior};
use serde_json::Value;

use super::{postgres, sqlite, Direction, StorageUrl, TrialRecord, TrialState};
use crate::space::{Distribution, SearchSpace};
use crate::{Error, Result};

/// The table whose presence marks kiln's earlier PostgreSQL tables.
pub(crate) const POSTGRES_MARKER: &str = "kiln_studies";

/// What [`migrate`] converted, and where the copy of the old data is.
#[derive(Clone, Debug, PartialEq)]
pub struct Migration {
    pub studies: usize,
    pub trials: usize,
    /// A copy of the SQLite file as it was, or (PostgreSQL) the renamed old tables.
    pub backup: String,
}

/// The message for a database in the earlier tables.
pub(crate) fn refusal(url: &str) -> String {
    format!(
        "{url} holds studies in kiln's earlier tables, from before kiln stored studies in Optuna's schema; convert it \
         with `kiln study migrate {url}` (it keeps a copy of the old data first)"
    )
}

/// Whether a SQLite file has kiln's earlier tables (its `studies` has a `name` column; Optuna's has `study_name`).
pub(crate) fn is_legacy_sqlite(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare("SELECT 1 FROM pragma_table_info('studies') WHERE name = 'name'")?.exists([])
}

/// One study as the earlier tables hold it.
struct LegacyStudy {
    name: String,
    direction: Direction,
    space: Option<String>,
    trials: Vec<(TrialRecord, f64)>,
}

/// The earlier tables' rows: (study id, name, direction, space), trials by study id with their heartbeats, and
/// intermediate values by (study id, number).
type LegacyRows = (Vec<(i64, String, String, Option<String>)>, Vec<(i64, TrialRecord, f64)>, Vec<(i64, u32, i64, f64)>);

fn assemble((studies, trials, steps): LegacyRows) -> Vec<LegacyStudy> {
    let mut by_id: BTreeMap<i64, LegacyStudy> = studies
        .into_iter()
        .map(|(id, name, direction, space)| {
            let direction = if direction == "minimize" { Direction::Minimize } else { Direction::Maximize };
            (id, LegacyStudy { name, direction, space, trials: Vec::new() })
        })
        .collect();
    for (study, trial, heartbeat) in trials {
        if let Some(s) = by_id.get_mut(&study) {
            s.trials.push((trial, heartbeat));
        }
    }
    for (study, number, step, value) in steps {
        if let Some(s) = by_id.get_mut(&study) {
            if let Some((t, _)) = s.trials.iter_mut().find(|(t, _)| t.number == number) {
                t.intermediate.insert(step.max(0) as usize, value);
            }
        }
    }
    by_id.into_values().collect()
}

/// The distributions for a study's parameters: its stored space, and for a parameter outside it (studies from
/// before the space was stored) a categorical of the values its trials took, so every value is kept.
fn space_of(study: &LegacyStudy) -> Result<SearchSpace, String> {
    let mut space: SearchSpace = match &study.space {
        Some(json) => serde_json::from_str(json).map_err(|e| format!("study '{}': stored space: {e}", study.name))?,
        None => SearchSpace::new(),
    };
    for (trial, _) in &study.trials {
        for (name, value) in &trial.params {
            let fits = space.get(name).is_some_and(|d| super::optuna::param_value(d, value).is_some());
            if !fits {
                let entry = space.entry(name.clone()).or_insert(Distribution::Categorical { choices: Vec::new() });
                match entry {
                    Distribution::Categorical { choices } if !choices.contains(value) => choices.push(value.clone()),
                    Distribution::Categorical { .. } => {}
                    other => {
                        return Err(format!(
                            "study '{}': trial {} has {name} = {value}, outside its distribution {other:?}",
                            study.name, trial.number
                        ))
                    }
                }
            }
        }
    }
    Ok(space)
}

/// A trial of the earlier `trials` table, from its columns `number, state, params, value, reason, worker, started,
/// finished` in that order.
fn legacy_trial(
    (number, state, params): (u32, &str, &str),
    (value, reason, worker): (Option<f64>, Option<String>, String),
    (started, finished): (f64, Option<f64>),
) -> TrialRecord {
    TrialRecord {
        number,
        state: TrialState::parse(state),
        params: serde_json::from_str::<BTreeMap<String, Value>>(params).unwrap_or_default(),
        value,
        intermediate: BTreeMap::new(),
        reason,
        worker,
        run_dir: None,
        fixed_params: Default::default(),
        started: Some(started),
        finished,
    }
}

/// Where a migration writes: Optuna's schema on one backend, inside the migration's transaction.
trait Target {
    fn study(&mut self, study: &LegacyStudy) -> Result<i64, String>;
    fn trial(
        &mut self,
        study: i64,
        trial: &TrialRecord,
        space: &SearchSpace,
        heartbeat: Option<f64>,
    ) -> Result<(), String>;
}

struct SqliteTarget<'a>(&'a Connection);

impl Target for SqliteTarget<'_> {
    fn study(&mut self, study: &LegacyStudy) -> Result<i64, String> {
        sqlite::insert_study(self.0, &study.name, study.direction, study.space.as_deref()).map_err(|e| e.to_string())
    }

    fn trial(
        &mut self,
        study: i64,
        trial: &TrialRecord,
        space: &SearchSpace,
        heartbeat: Option<f64>,
    ) -> Result<(), String> {
        sqlite::insert_trial(self.0, study, trial, space, heartbeat)
    }
}

impl Target for ::postgres::Transaction<'_> {
    fn study(&mut self, study: &LegacyStudy) -> Result<i64, String> {
        postgres::insert_study(self, &study.name, study.direction, study.space.as_deref())
            .map_err(|e| postgres::reason(&e))
    }

    fn trial(
        &mut self,
        study: i64,
        trial: &TrialRecord,
        space: &SearchSpace,
        heartbeat: Option<f64>,
    ) -> Result<(), String> {
        postgres::insert_trial(self, study, trial, space, heartbeat)
    }
}

/// Writes the studies with their trials; a RUNNING trial keeps its last heartbeat, so the heartbeat timeout of a
/// live worker fails it if its worker is gone.
fn write(studies: &[LegacyStudy], target: &mut impl Target) -> Result<(), String> {
    for study in studies {
        let space = space_of(study)?;
        let id = target.study(study)?;
        for (trial, heartbeat) in &study.trials {
            let beat = (trial.state == TrialState::Running).then_some(*heartbeat);
            target
                .trial(id, trial, &space, beat)
                .map_err(|e| format!("study '{}' trial {}: {e}", study.name, trial.number))?;
        }
    }
    Ok(())
}

fn trial_count(studies: &[LegacyStudy]) -> usize {
    studies.iter().map(|s| s.trials.len()).sum()
}

/// Converts a database in kiln's earlier tables to Optuna's schema, in place, after keeping a copy of the old data:
/// a SQLite file is first copied (consistently, `VACUUM INTO`) to `FILE.pre-optuna.bak`; PostgreSQL's old tables are
/// renamed with the suffix `_pre_optuna` in the same transaction that writes the new ones.
pub fn migrate(url: &StorageUrl) -> Result<Migration> {
    match url {
        StorageUrl::Sqlite(path) => migrate_sqlite(path),
        StorageUrl::Postgres(address) => migrate_postgres(address),
    }
}

fn migrate_sqlite(path: &Path) -> Result<Migration> {
    let url = format!("sqlite:///{}", path.display());
    let fail = |reason: String| Error::Storage { url: url.clone(), reason };
    let err = |e: rusqlite::Error| fail(e.to_string());
    if !path.is_file() {
        return Err(fail("no such file".into()));
    }
    let mut conn = sqlite::connect(path)?;
    if !is_legacy_sqlite(&conn).map_err(err)? {
        return Err(fail("not in kiln's earlier tables (nothing to migrate)".into()));
    }
    let backup = PathBuf::from(format!("{}.pre-optuna.bak", path.display()));
    if backup.exists() {
        return Err(fail(format!("{} exists; move it away to migrate again", backup.display())));
    }
    conn.execute("VACUUM INTO ?1", params![backup.to_string_lossy()]).map_err(err)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(err)?;
    let studies = {
        let mut stmt = tx.prepare("SELECT id, name, direction, space FROM studies ORDER BY id").map_err(err)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).map_err(err)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(err)?
    };
    let trials = {
        let mut stmt = tx
            .prepare(
                "SELECT study_id, number, state, params, value, reason, worker, started, finished, heartbeat
                 FROM trials ORDER BY study_id, number",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                let trial = legacy_trial(
                    (r.get(1)?, &r.get::<_, String>(2)?, &r.get::<_, String>(3)?),
                    (r.get(4)?, r.get(5)?, r.get(6)?),
                    (r.get(7)?, r.get(8)?),
                );
                Ok((r.get(0)?, trial, r.get(9)?))
            })
            .map_err(err)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(err)?
    };
    let steps = {
        let mut stmt = tx
            .prepare(
                "SELECT t.study_id, t.number, i.step, i.value FROM intermediate i JOIN trials t ON t.id = i.trial_id",
            )
            .map_err(err)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).map_err(err)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(err)?
    };
    let studies = assemble((studies, trials, steps));
    tx.execute_batch("DROP TABLE intermediate; DROP TABLE trials; DROP TABLE studies;").map_err(err)?;
    sqlite::create_schema(&tx).map_err(err)?;
    write(&studies, &mut SqliteTarget(&tx)).map_err(fail)?;
    tx.commit().map_err(err)?;
    Ok(Migration { studies: studies.len(), trials: trial_count(&studies), backup: backup.display().to_string() })
}

fn migrate_postgres(url: &str) -> Result<Migration> {
    let shown = super::redact(url);
    let fail = |reason: String| Error::Storage { url: shown.clone(), reason };
    let err = |e: ::postgres::Error| fail(postgres::reason(&e));
    let mut client = postgres::connect(url)?;
    let mut tx = client.transaction().map_err(err)?;
    postgres::lock_schema(&mut tx).map_err(err)?;
    let tables = postgres::table_names(&mut tx).map_err(err)?;
    if !tables.iter().any(|t| t == POSTGRES_MARKER) {
        return Err(fail("no kiln_studies table: not in kiln's earlier tables (nothing to migrate)".into()));
    }
    let studies = tx
        .query("SELECT id, name, direction, space FROM kiln_studies ORDER BY id", &[])
        .map_err(err)?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let trials = tx
        .query(
            "SELECT study_id, number, state, params, value, reason, worker, started, finished, heartbeat
             FROM kiln_trials ORDER BY study_id, number",
            &[],
        )
        .map_err(err)?
        .iter()
        .map(|r| {
            let trial = legacy_trial(
                (r.get::<_, i32>(1) as u32, r.get(2), r.get(3)),
                (r.get(4), r.get(5), r.get(6)),
                (r.get(7), r.get(8)),
            );
            (r.get(0), trial, r.get(9))
        })
        .collect();
    let steps = tx
        .query(
            "SELECT t.study_id, t.number, i.step, i.value FROM kiln_intermediate i JOIN kiln_trials t ON t.id = i.trial_id",
            &[],
        )
        .map_err(err)?
        .iter()
        .map(|r| (r.get(0), r.get::<_, i32>(1) as u32, i64::from(r.get::<_, i32>(2)), r.get(3)))
        .collect();
    let studies = assemble((studies, trials, steps));
    if !tables.iter().any(|t| t == "studies") {
        postgres::create_schema(&mut tx).map_err(err)?;
    }
    write(&studies, &mut tx).map_err(fail)?;
    tx.batch_execute(
        "ALTER TABLE kiln_intermediate RENAME TO kiln_intermediate_pre_optuna;
         ALTER TABLE kiln_trials RENAME TO kiln_trials_pre_optuna;
         ALTER TABLE kiln_studies RENAME TO kiln_studies_pre_optuna;",
    )
    .map_err(err)?;
    tx.commit().map_err(err)?;
    Ok(Migration {
        studies: studies.len(),
        trials: trial_count(&studies),
        backup: "tables kiln_studies_pre_optuna, kiln_trials_pre_optuna, kiln_intermediate_pre_optuna".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_testkit::PostgresServer;
    use serde_json::json;

    /// kiln's earlier tables as both backends created them (the PostgreSQL ones prefixed `kiln_`).
    fn legacy_schema(prefix: &str, id: &str, real: &str) -> String {
        format!(
            "CREATE TABLE {prefix}studies (id {id} PRIMARY KEY, name TEXT NOT NULL UNIQUE, direction TEXT NOT NULL,
                 created {real} NOT NULL, space TEXT);
             CREATE TABLE {prefix}trials (id {id} PRIMARY KEY, study_id BIGINT NOT NULL REFERENCES {prefix}studies(id),
                 number INTEGER NOT NULL, state TEXT NOT NULL, params TEXT NOT NULL DEFAULT '{{}}', value {real},
                 reason TEXT, worker TEXT NOT NULL, started {real} NOT NULL, finished {real}, heartbeat {real} NOT NULL,
                 UNIQUE (study_id, number));
             CREATE TABLE {prefix}intermediate (trial_id BIGINT NOT NULL REFERENCES {prefix}trials(id),
                 step INTEGER NOT NULL, value {real} NOT NULL, PRIMARY KEY (trial_id, step));
             INSERT INTO {prefix}studies (id, name, direction, created, space) VALUES
                 (1, 'cls', 'maximize', 1.0e9,
                  '{{\"lr\":{{\"type\":\"float\",\"low\":0.0001,\"high\":0.1,\"log\":true,\"step\":null}},\"optim\":{{\"type\":\"categorical\",\"choices\":[\"adamw\",\"sgd\"]}}}}'),
                 (2, 'ocr', 'minimize', 1.0e9, NULL);
             INSERT INTO {prefix}trials (id, study_id, number, state, params, value, reason, worker, started, finished, heartbeat) VALUES
                 (1, 1, 0, 'COMPLETE', '{{\"lr\":0.01,\"optim\":\"sgd\",\"width\":3}}', 0.75, NULL, 'a:1', 1700000000.25, 1700000100.5, 1700000100.5),
                 (2, 1, 1, 'FAIL', '{{\"lr\":0.001,\"optim\":\"adamw\",\"width\":5}}', NULL, 'NaN loss', '', 1700000200.0, 1700000201.0, 1700000201.0),
                 (3, 1, 2, 'RUNNING', '{{}}', NULL, NULL, 'a:1', 1700000300.0, NULL, 1700000400.0),
                 (4, 2, 0, 'PRUNED', '{{\"beam\":4}}', 0.5, NULL, 'c:3', 1700000500.0, 1700000600.0, 1700000600.0);
             INSERT INTO {prefix}intermediate (trial_id, step, value) VALUES (1, 1, 0.5), (1, 2, 0.75), (4, 1, 0.5);"
        )
    }

    fn check_migrated(url: &StorageUrl) {
        let err = url.open().err().expect("the old tables are refused").to_string();
        assert!(err.contains("kiln study migrate") && err.contains("earlier tables"), "{err}");
        let migration = migrate(url).unwrap();
        assert_eq!((migration.studies, migration.trials), (2, 4), "{url}");
        let mut storage = url.open().unwrap();
        assert_eq!(storage.studies().unwrap(), vec!["cls".to_string(), "ocr".to_string()]);
        assert_eq!(storage.study_direction("ocr").unwrap(), Some(Direction::Minimize));
        let cls = storage.study("cls", Direction::Maximize).unwrap();
        assert!(storage.space(cls).unwrap().unwrap().contains("\"optim\""), "the stored space is kept");
        let trials = storage.trials(cls).unwrap();
        assert_eq!(trials.len(), 3);
        let t = &trials[0];
        assert_eq!((t.state, t.value, t.worker.as_str()), (TrialState::Complete, Some(0.75), "a:1"));
        assert_eq!(
            t.params,
            BTreeMap::from([
                ("lr".to_string(), json!(0.01)),
                ("optim".to_string(), json!("sgd")),
                ("width".to_string(), json!(3)),
            ])
        );
        assert_eq!(t.intermediate, BTreeMap::from([(1, 0.5), (2, 0.75)]));
        assert!((t.started.unwrap() - 1700000000.25).abs() < 2e-3, "{:?}", t.started);
        assert!((t.finished.unwrap() - 1700000100.5).abs() < 2e-3, "{:?}", t.finished);
        assert_eq!((trials[1].state, trials[1].reason.as_deref()), (TrialState::Fail, Some("NaN loss")));
        assert_eq!(trials[1].params["width"], json!(5), "a parameter outside the stored space becomes a categorical");
        assert_eq!(trials[2].state, TrialState::Running);
        // The old RUNNING trial kept its (old) heartbeat, so a live worker's timeout fails it.
        assert_eq!(storage.fail_stale(cls, std::time::Duration::from_secs(60)).unwrap(), 1);
        let after = storage.trials(cls).unwrap();
        assert_eq!((after[1].state, after[2].state), (TrialState::Fail, TrialState::Fail), "the RUNNING trial's beat");
        assert_eq!(after[1].reason.as_deref(), Some("NaN loss"), "the failed trial keeps its own reason");
        assert_eq!(after[1].worker, "", "a trial without a worker stays without one");
        let ocr = storage.study("ocr", Direction::Minimize).unwrap();
        let pruned = &storage.trials(ocr).unwrap()[0];
        assert_eq!(
            (pruned.state, pruned.value, pruned.params["beam"].clone()),
            (TrialState::Pruned, Some(0.5), json!(4))
        );
        let again = migrate(url).unwrap_err().to_string();
        assert!(again.contains("nothing to migrate"), "{again}");
    }

    #[test]
    fn an_old_kiln_study_file_is_refused_then_migrated_losing_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        Connection::open(&path).unwrap().execute_batch(&legacy_schema("", "INTEGER", "REAL")).unwrap();
        check_migrated(&StorageUrl::Sqlite(path.clone()));
        let backup = Connection::open(dir.path().join("old.db.pre-optuna.bak")).unwrap();
        assert!(is_legacy_sqlite(&backup).unwrap(), "the copy holds the old tables");
        let kept: i64 = backup.query_row("SELECT COUNT(*) FROM intermediate", [], |r| r.get(0)).unwrap();
        assert_eq!(kept, 3);
        if let Some(server) = PostgresServer::start_or_skip("legacy: migrate postgres") {
            let url = StorageUrl::parse(&server.url()).unwrap();
            let mut client = ::postgres::Client::connect(&server.url(), ::postgres::NoTls).unwrap();
            client.batch_execute(&legacy_schema("kiln_", "BIGINT", "DOUBLE PRECISION")).unwrap();
            check_migrated(&url);
            let kept: i64 = client.query_one("SELECT COUNT(*) FROM kiln_trials_pre_optuna", &[]).unwrap().get(0);
            assert_eq!(kept, 4, "the old tables are kept, renamed");
        }
    }

    #[test]
    fn an_optuna_schema_of_another_version_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v11.db");
        drop(StorageUrl::Sqlite(path.clone()).open().unwrap());
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "UPDATE version_info SET schema_version = 11; UPDATE alembic_version SET version_num = 'v3.0.0.d'",
            )
            .unwrap();
        let err = StorageUrl::Sqlite(path).open().err().unwrap().to_string();
        assert!(
            err.contains("schema version 11 (alembic revision v3.0.0.d)") && err.contains("schema version 12"),
            "{err}"
        );
        if let Some(server) = PostgresServer::start_or_skip("legacy: postgres schema version") {
            let url = StorageUrl::parse(&server.url()).unwrap();
            drop(url.open().unwrap());
            let mut client = ::postgres::Client::connect(&server.url(), ::postgres::NoTls).unwrap();
            client.batch_execute("UPDATE version_info SET schema_version = 13").unwrap();
            let err = url.open().err().unwrap().to_string();
            assert!(err.contains("schema version 13") && !err.contains("upgrade"), "{err}");
        }
    }
}
