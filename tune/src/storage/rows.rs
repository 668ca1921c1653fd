//! Puts trials back together from the rows of Optuna's tables (trials, their parameters, values, intermediate values
//! and attributes), the same for every backend. A parameter is read with the distribution stored beside it, so trials
//! that another client (a Python Optuna worker) wrote read as well as kiln's own.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::optuna::{self, FAIL_REASON_ATTR, FIXED_PARAMS_ATTR, RUN_DIR_ATTR, WORKER_ATTR};
use super::{TrialRecord, TrialState};
use crate::space::Distribution;

/// Rows in, trials out.
#[derive(Default)]
pub(crate) struct TrialRows {
    records: Vec<TrialRecord>,
    index: HashMap<i64, usize>,
    /// Each distinct `distribution_json` parsed once: a study's trials share a handful.
    distributions: HashMap<String, Option<Distribution>>,
}

impl TrialRows {
    /// A row of `trials`: start and completion in seconds since the epoch.
    pub fn trial(&mut self, id: i64, number: i64, state: &str, started: Option<f64>, finished: Option<f64>) {
        self.index.insert(id, self.records.len());
        self.records.push(TrialRecord {
            number: number as u32,
            state: TrialState::parse(state),
            params: Default::default(),
            value: None,
            intermediate: BTreeMap::new(),
            reason: None,
            worker: String::new(),
            run_dir: None,
            fixed_params: Default::default(),
            started,
            finished,
        });
    }

    fn record(&mut self, id: i64) -> Option<&mut TrialRecord> {
        self.index.get(&id).map(|&i| &mut self.records[i])
    }

    /// A row of `trial_params`; one whose distribution kiln cannot read is left out.
    pub fn param(&mut self, id: i64, name: String, stored: Option<f64>, distribution_json: &str) {
        if !self.distributions.contains_key(distribution_json) {
            let parsed = optuna::parse_distribution(distribution_json).ok();
            self.distributions.insert(distribution_json.to_string(), parsed);
        }
        let distribution = self.distributions[distribution_json].as_ref();
        let value = distribution.zip(stored).and_then(|(d, stored)| optuna::param_from_stored(d, stored));
        if let (Some(value), Some(record)) = (value, self.record(id)) {
            record.params.insert(name, value);
        }
    }

    /// A row of `trial_values` (objective 0).
    pub fn value(&mut self, id: i64, value: Option<f64>, kind: &str) {
        if let Some(record) = self.record(id) {
            record.value = Some(optuna::stored_value(value, kind));
        }
    }

    /// A row of `trial_intermediate_values`.
    pub fn intermediate(&mut self, id: i64, step: i64, value: Option<f64>, kind: &str) {
        if let Some(record) = self.record(id) {
            record.intermediate.insert(step.max(0) as usize, optuna::stored_value(value, kind));
        }
    }

    /// A row of `trial_user_attributes` or `trial_system_attributes` (`value_json` as stored).
    pub fn attribute(&mut self, id: i64, key: &str, value_json: Option<&str>) {
        let value: Value = value_json.and_then(|v| serde_json::from_str(v).ok()).unwrap_or(Value::Null);
        let Some(record) = self.record(id) else { return };
        let text = || value.as_str().map(str::to_string);
        match key {
            WORKER_ATTR => record.worker = text().unwrap_or_default(),
            RUN_DIR_ATTR => record.run_dir = text().map(Into::into),
            FAIL_REASON_ATTR => record.reason = text(),
            FIXED_PARAMS_ATTR => {
                if let Value::Object(fixed) = value {
                    record.fixed_params = fixed.into_iter().collect();
                }
            }
            _ => {}
        }
    }

    /// The trials, by number.
    pub fn into_records(mut self) -> Vec<TrialRecord> {
        self.records.sort_by_key(|t| t.number);
        self.records
    }
}
