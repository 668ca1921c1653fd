//! What kiln knows of Optuna's RDB schema, shared by both backends: the schema version it reads and writes, the
//! names stored for states, directions and value types, each parameter's distribution as `distribution_json`, the
//! internal number Optuna stores a parameter as (`param_value`: the choice index for a categorical), and the
//! attributes kiln keeps beside a trial or a study.
//!
//! Facts from Optuna 5.0.0 (`optuna/storages/_rdb/models.py`, `optuna/distributions.py`): schema version 12, alembic
//! revision `v3.2.0.a`; distributions serialise as `{"name": "FloatDistribution", "attributes": {...}}`, with the
//! pre-3.0 names (`UniformDistribution`, `IntUniformDistribution`, ...) still read.

use serde_json::{json, Value};

use super::Direction;
use crate::space::Distribution;

/// `version_info.schema_version` of the schema kiln reads and writes.
pub const SCHEMA_VERSION: i64 = 12;
/// `version_info.library_version` kiln writes into a database it creates.
pub const LIBRARY_VERSION: &str = "5.0.0";
/// `alembic_version.version_num` of that schema (Optuna's migrations name their revisions so).
pub const ALEMBIC_VERSION: &str = "v3.2.0.a";

/// The study system attribute holding kiln's search space (the JSON kiln samples from).
pub const SEARCH_SPACE_ATTR: &str = "kiln:search_space";
/// The trial system attribute holding why a trial failed (the key Optuna 2 wrote, which its tools still show).
pub const FAIL_REASON_ATTR: &str = "fail_reason";
/// The trial user attribute naming the worker (`host:pid`) that ran the trial.
pub const WORKER_ATTR: &str = "worker";
/// The trial user attribute holding the trial's run directory.
pub const RUN_DIR_ATTR: &str = "run_dir";
/// The trial system attribute in which `study.enqueue_trial` leaves a WAITING trial's fixed parameters.
pub const FIXED_PARAMS_ATTR: &str = "fixed_params";

/// The refusal for a database of another schema version; `None` when kiln knows it.
pub fn version_refusal(schema_version: Option<i64>, alembic: Option<&str>) -> Option<String> {
    if schema_version == Some(SCHEMA_VERSION) && alembic == Some(ALEMBIC_VERSION) {
        return None;
    }
    let found = format!(
        "schema version {} (alembic revision {})",
        schema_version.map_or("none".to_string(), |v| v.to_string()),
        alembic.unwrap_or("none")
    );
    let hint = match schema_version {
        Some(v) if v < SCHEMA_VERSION => "; upgrade it with `optuna storage upgrade --storage URL` first",
        _ => "",
    };
    Some(format!(
        "the database holds Optuna's {found}, and kiln reads and writes schema version {SCHEMA_VERSION} (Optuna \
         {LIBRARY_VERSION}, alembic revision {ALEMBIC_VERSION}){hint}"
    ))
}

/// `study_directions.direction` for a direction.
pub fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Minimize => "MINIMIZE",
        Direction::Maximize => "MAXIMIZE",
    }
}

/// A stored direction; `None` for `NOT_SET` or anything else.
pub fn direction_from(name: &str) -> Option<Direction> {
    match name {
        "MINIMIZE" => Some(Direction::Minimize),
        "MAXIMIZE" => Some(Direction::Maximize),
        _ => None,
    }
}

/// `trial_values`: the stored number and its `value_type` (`FINITE`, `INF_POS`, `INF_NEG`); NaN is not a value.
pub fn objective_value(value: f64) -> Option<(Option<f64>, &'static str)> {
    if value.is_nan() {
        None
    } else if value == f64::INFINITY {
        Some((None, "INF_POS"))
    } else if value == f64::NEG_INFINITY {
        Some((None, "INF_NEG"))
    } else {
        Some((Some(value), "FINITE"))
    }
}

/// `trial_intermediate_values`: as [`objective_value`], and NaN as `NAN`.
pub fn intermediate_value(value: f64) -> (Option<f64>, &'static str) {
    objective_value(value).unwrap_or((None, "NAN"))
}

/// A stored value back from its number and type.
pub fn stored_value(value: Option<f64>, kind: &str) -> f64 {
    match kind {
        "INF_POS" => f64::INFINITY,
        "INF_NEG" => f64::NEG_INFINITY,
        "NAN" => f64::NAN,
        _ => value.unwrap_or(f64::NAN),
    }
}

/// `trial_params.distribution_json` for a distribution, as Optuna's `distribution_to_json` writes it.
pub fn distribution_json(distribution: &Distribution) -> String {
    let json = match distribution {
        Distribution::Float { low, high, log, step } => json!({
            "name": "FloatDistribution",
            "attributes": {"step": step, "low": low, "high": high, "log": log}
        }),
        Distribution::Int { low, high, step, log } => json!({
            "name": "IntDistribution",
            "attributes": {"log": log, "step": step, "low": low, "high": high}
        }),
        Distribution::Categorical { choices } => json!({
            "name": "CategoricalDistribution",
            "attributes": {"choices": choices}
        }),
    };
    json.to_string()
}

/// A distribution from `distribution_json`, in current or pre-3.0 names.
pub fn parse_distribution(text: &str) -> Result<Distribution, String> {
    let json: Value = serde_json::from_str(text).map_err(|e| format!("distribution {text}: {e}"))?;
    let name = json["name"].as_str().unwrap_or_default();
    let a = &json["attributes"];
    let float = |key: &str| a[key].as_f64().ok_or_else(|| format!("distribution {text}: no number '{key}'"));
    let int = |key: &str| {
        a[key]
            .as_i64()
            .or_else(|| a[key].as_f64().map(|f| f as i64))
            .ok_or_else(|| format!("distribution {text}: no integer '{key}'"))
    };
    let flag = |key: &str| a[key].as_bool().unwrap_or(false);
    let step_or_one = || if a["step"].is_null() { Ok(1) } else { int("step") };
    Ok(match name {
        "FloatDistribution" => {
            Distribution::Float { low: float("low")?, high: float("high")?, log: flag("log"), step: a["step"].as_f64() }
        }
        "UniformDistribution" => {
            Distribution::Float { low: float("low")?, high: float("high")?, log: false, step: None }
        }
        "LogUniformDistribution" => {
            Distribution::Float { low: float("low")?, high: float("high")?, log: true, step: None }
        }
        "DiscreteUniformDistribution" => {
            Distribution::Float { low: float("low")?, high: float("high")?, log: false, step: Some(float("q")?) }
        }
        "IntDistribution" => {
            Distribution::Int { low: int("low")?, high: int("high")?, step: step_or_one()?, log: flag("log") }
        }
        "IntUniformDistribution" => {
            Distribution::Int { low: int("low")?, high: int("high")?, step: step_or_one()?, log: false }
        }
        "IntLogUniformDistribution" => Distribution::Int { low: int("low")?, high: int("high")?, step: 1, log: true },
        "CategoricalDistribution" => Distribution::Categorical {
            choices: a["choices"].as_array().cloned().ok_or_else(|| format!("distribution {text}: no choices"))?,
        },
        other => return Err(format!("distribution {text}: unknown kind '{other}'")),
    })
}

/// `trial_params.param_value` for a value: the number itself, or the index of a categorical's choice; `None` when
/// the value does not belong to the distribution.
pub fn param_value(distribution: &Distribution, value: &Value) -> Option<f64> {
    match distribution {
        Distribution::Float { .. } | Distribution::Int { .. } => value.as_f64(),
        Distribution::Categorical { choices } => choices.iter().position(|c| same_choice(c, value)).map(|i| i as f64),
    }
}

/// A parameter's value from `param_value`: an int distribution gives an integer, a categorical its choice.
pub fn param_from_stored(distribution: &Distribution, stored: f64) -> Option<Value> {
    match distribution {
        Distribution::Float { .. } => Some(Value::from(stored)),
        Distribution::Int { .. } => Some(Value::from(stored.round() as i64)),
        Distribution::Categorical { choices } => {
            (stored >= 0.0).then(|| choices.get(stored.round() as usize).cloned()).flatten()
        }
    }
}

/// Choices compare as Python does: `1 == 1.0`, so a choice written as either matches.
fn same_choice(choice: &Value, value: &Value) -> bool {
    match (choice.as_f64(), value.as_f64()) {
        (Some(a), Some(b)) if !choice.is_boolean() && !value.is_boolean() => a == b,
        _ => choice == value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distributions_round_trip_through_optunas_json() {
        let cases = [
            Distribution::Float { low: 1e-4, high: 0.1, log: true, step: None },
            Distribution::Float { low: 0.0, high: 1.0, log: false, step: Some(0.25) },
            Distribution::Int { low: 1, high: 9, step: 2, log: false },
            Distribution::Int { low: 1, high: 64, step: 1, log: true },
            Distribution::Categorical {
                choices: vec![json!("adamw"), json!("sgd"), Value::Null, json!(1.5), json!(true)],
            },
        ];
        for d in cases {
            assert_eq!(parse_distribution(&distribution_json(&d)).unwrap(), d);
        }
        // Written by Optuna 5.0.0 (`distribution_to_json`), copied from a database it made.
        let optuna =
            r#"{"name": "FloatDistribution", "attributes": {"step": null, "low": 0.0001, "high": 0.1, "log": true}}"#;
        assert_eq!(
            parse_distribution(optuna).unwrap(),
            Distribution::Float { low: 1e-4, high: 0.1, log: true, step: None }
        );
        let legacy = r#"{"name": "IntUniformDistribution", "attributes": {"low": 8, "high": 64, "step": 8}}"#;
        assert_eq!(parse_distribution(legacy).unwrap(), Distribution::Int { low: 8, high: 64, step: 8, log: false });
        let q = r#"{"name": "DiscreteUniformDistribution", "attributes": {"low": 0.0, "high": 1.0, "q": 0.1}}"#;
        assert_eq!(
            parse_distribution(q).unwrap(),
            Distribution::Float { low: 0.0, high: 1.0, log: false, step: Some(0.1) }
        );
        let err = parse_distribution(r#"{"name": "BetaDistribution", "attributes": {}}"#).unwrap_err();
        assert!(err.contains("unknown kind 'BetaDistribution'"), "{err}");
    }

    #[test]
    fn params_are_stored_as_optuna_stores_them() {
        let cat = Distribution::Categorical { choices: vec![json!("adamw"), json!("sgd"), json!(2)] };
        assert_eq!(param_value(&cat, &json!("sgd")), Some(1.0));
        assert_eq!(param_value(&cat, &json!(2.0)), Some(2.0), "Python's 2 == 2.0");
        assert_eq!(param_value(&cat, &json!("lion")), None);
        assert_eq!(param_from_stored(&cat, 1.0), Some(json!("sgd")));
        assert_eq!(param_from_stored(&cat, 3.0), None);
        let int = Distribution::Int { low: 1, high: 9, step: 2, log: false };
        assert_eq!(param_from_stored(&int, 5.0), Some(json!(5)));
        assert!(param_from_stored(&int, 5.0).unwrap().is_i64());
        let lr = Distribution::Float { low: 1e-4, high: 0.1, log: true, step: None };
        assert_eq!(param_value(&lr, &json!(0.01)), Some(0.01), "stored as the value, not its log");
    }

    #[test]
    fn values_keep_infinities_and_intermediate_nans() {
        assert_eq!(objective_value(0.5), Some((Some(0.5), "FINITE")));
        assert_eq!(objective_value(f64::NEG_INFINITY), Some((None, "INF_NEG")));
        assert_eq!(objective_value(f64::NAN), None);
        assert_eq!(intermediate_value(f64::NAN), (None, "NAN"));
        assert!(stored_value(None, "NAN").is_nan());
        assert_eq!(stored_value(None, "INF_POS"), f64::INFINITY);
        assert_eq!(stored_value(Some(0.25), "FINITE"), 0.25);
    }

    #[test]
    fn other_schema_versions_are_refused_naming_both() {
        assert_eq!(version_refusal(Some(12), Some("v3.2.0.a")), None);
        let old = version_refusal(Some(11), Some("v3.0.0.d")).unwrap();
        assert!(old.contains("schema version 11 (alembic revision v3.0.0.d)") && old.contains("version 12"), "{old}");
        assert!(old.contains("optuna storage upgrade"), "{old}");
        let new = version_refusal(Some(13), Some("v6.0.0.a")).unwrap();
        assert!(new.contains("13") && new.contains("Optuna 5.0.0") && !new.contains("upgrade"), "{new}");
    }
}
