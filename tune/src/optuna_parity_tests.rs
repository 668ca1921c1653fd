//! kiln's TPE densities against Optuna 5.0's own `_ParzenEstimator` built on the same observations
//! (`tune/tests/fixtures/optuna_parzen/cases.json`, made by `scripts/make_optuna_parzen_fixture.py`): every kernel kind
//! (uniform, log and stepped floats; ints with a step and log ints; categoricals), alone and jointly, with 0 to 30
//! observations and two prior weights.

use serde_json::{json, Value};

use super::sampler::{parzen_estimator, Observation, Outcome};
use super::space::{Distribution, SearchSpace};

const CASES: &str = include_str!("../tests/fixtures/optuna_parzen/cases.json");

/// A parameter value from Optuna's representation of it (the choice's index for categoricals).
fn value_of(dist: &Distribution, x: f64) -> Value {
    match dist {
        Distribution::Categorical { choices } => choices[x as usize].clone(),
        Distribution::Int { .. } => json!(x as i64),
        Distribution::Float { .. } => json!(x),
    }
}

#[test]
fn densities_match_optunas_parzen_estimator() {
    let fixture: Value = serde_json::from_str(CASES).unwrap();
    assert_eq!(fixture["optuna"], "5.0.0");
    let cases = fixture["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 40);
    let (mut points, mut mismatches) = (0, Vec::new());
    for (name, case) in cases {
        let space: SearchSpace = serde_json::from_value(case["space"].clone()).unwrap();
        let keys: Vec<(&String, &Distribution)> = space.iter().collect();
        let observed = &case["observations"];
        let n = observed[keys[0].0].as_array().unwrap().len();
        let trials: Vec<Observation> = (0..n)
            .map(|i| Observation {
                params: keys
                    .iter()
                    .map(|(k, d)| ((*k).clone(), value_of(d, observed[*k][i].as_f64().unwrap())))
                    .collect(),
                value: 0.0,
                outcome: Outcome::Complete,
            })
            .collect();
        let trials: Vec<&Observation> = trials.iter().collect();
        let density = parzen_estimator(&keys, &trials, case["prior_weight"].as_f64().unwrap());
        for (j, expected) in case["log_pdf"].as_array().unwrap().iter().enumerate() {
            let x: Vec<f64> = keys
                .iter()
                .map(|(k, d)| d.to_internal(&value_of(d, case["points"][*k][j].as_f64().unwrap())).unwrap())
                .collect();
            let (got, expected) = (density.log_pdf(&x), expected.as_f64().unwrap());
            if (got - expected).abs() > 1e-9 * (1.0 + expected.abs()) {
                mismatches.push(format!("{name}, point {j} {x:?}: kiln {got}, Optuna {expected}"));
            }
            points += 1;
        }
    }
    assert!(mismatches.is_empty(), "{} of {points} densities differ:\n{}", mismatches.len(), mismatches.join("\n"));
    assert!(points > 500, "{points} points compared");
}
