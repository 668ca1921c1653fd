//! Hyperparameter tuning, Optuna-style: search spaces, samplers (TPE, random, grid), pruners (median, successive
//! halving), study storage (SQLite for one machine, PostgreSQL for many), heartbeats, and the study loop.

pub mod heartbeat;
pub mod importance;
#[cfg(test)]
mod optuna_parity_tests;
pub mod parzen;
pub mod pruner;
pub mod sampler;
pub mod space;
pub mod storage;
pub mod study;

pub use heartbeat::{heartbeat_interval, Heartbeat};
pub use importance::{fanova_importances, plot_importances, FanovaConfig};
pub use pruner::{Curve, MedianPruner, NoPruner, Pruner, SuccessiveHalvingPruner};
pub use sampler::{GridSampler, Observation, Outcome, Params, RandomSampler, Sampler, TpeConfig, TpeSampler};
pub use space::{Distribution, SearchSpace};
pub use storage::{
    migrate, Direction, Migration, PostgresStorage, SqliteStorage, Storage, StorageUrl, TrialRecord, TrialState,
    ALEMBIC_VERSION, LIBRARY_VERSION, SCHEMA_VERSION,
};
pub use study::{
    best_trial, default_space, fail_running, importances, run_study, trials_csv, PrunerKind, RunningTrial, SamplerKind,
    StudyOptions, StudyOutcome,
};
