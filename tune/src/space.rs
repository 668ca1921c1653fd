//! Search spaces: a distribution per config key (float uniform or log, int with step or log, categorical), and
//! the mapping between a parameter's value and the internal number the samplers work on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::parzen::Grid;

/// Where one hyperparameter's values come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Distribution {
    /// `low..=high`; `log` samples uniformly in log space; `step` discretises.
    Float {
        low: f64,
        high: f64,
        #[serde(default)]
        log: bool,
        #[serde(default)]
        step: Option<f64>,
    },
    /// `low..=high` in steps of `step` (default 1); `log` samples uniformly in log space.
    Int {
        low: i64,
        high: i64,
        #[serde(default = "one")]
        step: i64,
        #[serde(default)]
        log: bool,
    },
    /// One of `choices` (any JSON values).
    Categorical { choices: Vec<Value> },
}

fn one() -> i64 {
    1
}

impl Distribution {
    /// Checks the bounds; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Distribution::Float { low, high, log, step } => {
                if !low.is_finite() || !high.is_finite() || low > high {
                    return Err(format!("float range [{low}, {high}] is empty"));
                }
                if *log && *low <= 0.0 {
                    return Err(format!("log range must be positive, got low = {low}"));
                }
                if step.is_some_and(|s| s <= 0.0) || (step.is_some() && *log) {
                    return Err("step must be positive and cannot be combined with log".into());
                }
            }
            Distribution::Int { low, high, step, log } => {
                if low > high || *step < 1 {
                    return Err(format!("int range [{low}, {high}] with step {step} is empty"));
                }
                if *log && (*low < 1 || *step != 1) {
                    return Err("a log int range needs low >= 1 and step 1".into());
                }
            }
            Distribution::Categorical { choices } => {
                if choices.is_empty() {
                    return Err("no choices".into());
                }
            }
        }
        Ok(())
    }

    /// A stepped float's largest value on its grid, `low + floor((high - low) / step) · step` (Optuna moves `high`
    /// there too); `high` otherwise.
    fn grid_high(low: f64, high: f64, step: Option<f64>) -> f64 {
        match step {
            Some(s) => {
                // A small tolerance keeps `high` itself when it lies on the grid up to rounding (0.1 steps to 1.0).
                let k = ((high - low) / s + 1e-9).floor();
                (low + k * s).min(high)
            }
            None => high,
        }
    }

    /// The same distribution with a stepped float's `high` moved onto its grid (`low 0, high 1, step 0.3` becomes
    /// `high 0.9`), as Optuna's `FloatDistribution` does; `None` when nothing changes.
    pub fn on_grid(&self) -> Option<Self> {
        match *self {
            Distribution::Float { low, high, log, step: Some(s) } => {
                let adjusted = Self::grid_high(low, high, Some(s));
                (adjusted != high).then_some(Distribution::Float { low, high: adjusted, log, step: Some(s) })
            }
            _ => None,
        }
    }

    /// Numerical distributions as (low, high) in the internal space (log-transformed where `log`); for ints and
    /// stepped floats the range is widened by half a step so that every value gets an equal share.
    pub fn internal_range(&self) -> Option<(f64, f64)> {
        match self {
            Distribution::Float { low, high, log: true, .. } => Some((low.ln(), high.ln())),
            Distribution::Float { low, high, step: Some(s), .. } => {
                Some((low - s / 2.0, Self::grid_high(*low, *high, Some(*s)) + s / 2.0))
            }
            Distribution::Float { low, high, .. } => Some((*low, *high)),
            Distribution::Int { low, high, log: true, .. } => {
                Some(((*low as f64 - 0.5).ln(), (*high as f64 + 0.5).ln()))
            }
            Distribution::Int { low, high, step, .. } => {
                Some((*low as f64 - *step as f64 / 2.0, *high as f64 + *step as f64 / 2.0))
            }
            Distribution::Categorical { .. } => None,
        }
    }

    /// The grid of an int or stepped float (in the parameter's units, `high` on the grid): TPE's kernels for it are
    /// discrete. `None` for continuous floats and categoricals.
    pub fn grid(&self) -> Option<Grid> {
        match self {
            Distribution::Float { low, high, step: Some(s), log } => {
                Some(Grid { low: *low, high: Self::grid_high(*low, *high, Some(*s)), step: *s, log: *log })
            }
            Distribution::Int { low, high, step, log } => Some(Grid {
                low: *low as f64,
                high: (*high - (*high - *low) % step) as f64,
                step: *step as f64,
                log: *log,
            }),
            _ => None,
        }
    }

    /// The parameter value for an internal number (rounded to the grid, clamped to the range).
    pub fn to_value(&self, internal: f64) -> Value {
        match self {
            Distribution::Float { low, high, log, step } => {
                let mut v = if *log { internal.exp() } else { internal };
                if let Some(s) = step {
                    v = low + ((v - low) / s).round() * s;
                }
                Value::from(v.clamp(*low, Self::grid_high(*low, *high, *step)))
            }
            Distribution::Int { low, high, step, log } => {
                let v = if *log { internal.exp() } else { internal };
                let k = ((v - *low as f64) / *step as f64).round() as i64;
                Value::from((low + k * step).clamp(*low, *high - (*high - *low) % step))
            }
            Distribution::Categorical { choices } => choices[(internal as usize).min(choices.len() - 1)].clone(),
        }
    }

    /// The internal number of a parameter value (the choice index for categoricals); `None` if it does not fit.
    pub fn to_internal(&self, value: &Value) -> Option<f64> {
        match self {
            Distribution::Float { log, .. } | Distribution::Int { log, .. } => {
                let v = value.as_f64()?;
                Some(if *log { v.ln() } else { v })
            }
            Distribution::Categorical { choices } => choices.iter().position(|c| c == value).map(|i| i as f64),
        }
    }
}

/// A search space: config keys (dotted for nested ones, e.g. `augment.hflip`) and their distributions.
pub type SearchSpace = BTreeMap<String, Distribution>;

/// Whether the JSON `stored` (a study's recorded space) describes `space`: compared as spaces, so key order,
/// whitespace and omitted defaults (`log: false`, `step: 1`) do not matter.
pub fn same_space(stored: &str, space: &SearchSpace) -> bool {
    serde_json::from_str::<SearchSpace>(stored).is_ok_and(|s| &s == space)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spaces_compare_as_spaces_not_strings() {
        let space: SearchSpace = [
            ("lr".to_string(), Distribution::Float { low: 1e-4, high: 1e-2, log: true, step: None }),
            ("batch".to_string(), Distribution::Int { low: 16, high: 64, step: 16, log: false }),
        ]
        .into();
        let other_writer = r#"{ "lr": {"high": 0.01, "low": 0.0001, "type": "float", "log": true},
                                "batch": {"type": "int", "low": 16, "high": 64, "step": 16} }"#;
        assert_ne!(other_writer, serde_json::to_string(&space).unwrap());
        assert!(same_space(other_writer, &space));
        assert!(!same_space(&other_writer.replace("64", "128"), &space));
        assert!(!same_space("not json", &space));
    }

    #[test]
    fn a_stepped_float_never_returns_an_off_grid_high() {
        let d = Distribution::Float { low: 0.0, high: 1.0, log: false, step: Some(0.3) };
        let (lo, hi) = d.internal_range().unwrap();
        assert!((hi - 1.05).abs() < 1e-12, "0.9 + half a step: {hi}");
        for i in 0..=100 {
            let v = d.to_value(lo + (hi - lo) * i as f64 / 100.0).as_f64().unwrap();
            let k = v / 0.3;
            assert!((k - k.round()).abs() < 1e-9 && v <= 0.9 + 1e-12, "{v} is off the grid");
        }
        assert_eq!(d.to_value(1e9), json!(0.3 * 3.0));
        assert_eq!(d.on_grid(), Some(Distribution::Float { low: 0.0, high: 0.3 * 3.0, log: false, step: Some(0.3) }));
        // On the grid already (up to rounding): unchanged.
        assert_eq!(Distribution::Float { low: 0.0, high: 1.0, log: false, step: Some(0.1) }.on_grid(), None);
        assert_eq!(Distribution::Float { low: 0.0, high: 1.0, log: false, step: None }.on_grid(), None);
    }

    #[test]
    fn values_round_to_the_grid_and_stay_in_range() {
        let int = Distribution::Int { low: 8, high: 64, step: 8, log: false };
        assert_eq!(int.to_value(11.9), json!(8));
        assert_eq!(int.to_value(12.1), json!(16));
        assert_eq!(int.to_value(1000.0), json!(64));
        let lr = Distribution::Float { low: 1e-5, high: 1e-1, log: true, step: None };
        let (lo, hi) = lr.internal_range().unwrap();
        assert!((lr.to_value(lo).as_f64().unwrap() - 1e-5).abs() < 1e-12);
        assert!((lr.to_value(hi + 1.0).as_f64().unwrap() - 1e-1).abs() < 1e-12);
        assert_eq!(lr.to_internal(&json!(1e-3)).unwrap(), (1e-3f64).ln());
        let cat = Distribution::Categorical { choices: vec![json!("adamw"), json!("sgd")] };
        assert_eq!(cat.to_value(1.0), json!("sgd"));
        assert_eq!(cat.to_internal(&json!("adamw")), Some(0.0));
        assert_eq!(cat.to_internal(&json!("lion")), None);
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert!(Distribution::Float { low: 0.0, high: 1.0, log: true, step: None }.validate().is_err());
        assert!(Distribution::Int { low: 5, high: 4, step: 1, log: false }.validate().is_err());
        assert!(Distribution::Categorical { choices: vec![] }.validate().is_err());
        let parsed: Distribution = serde_yaml::from_str("type: float\nlow: 0.0001\nhigh: 0.1\nlog: true").unwrap();
        assert_eq!(parsed, Distribution::Float { low: 1e-4, high: 0.1, log: true, step: None });
    }
}
