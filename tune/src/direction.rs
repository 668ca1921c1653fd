//! Which way an objective is better.

use serde::{Deserialize, Serialize};

/// Whether a metric is better high or low.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Also read as `min` (Lightning's `mode`).
    #[serde(alias = "min")]
    Minimize,
    /// Also read as `max`.
    #[serde(alias = "max")]
    Maximize,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Minimize => "minimize",
            Direction::Maximize => "maximize",
        }
    }

    /// `value` turned so that higher is better.
    pub fn score(self, value: f64) -> f64 {
        match self {
            Direction::Maximize => value,
            Direction::Minimize => -value,
        }
    }
}
