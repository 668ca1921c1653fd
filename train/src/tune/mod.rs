//! Hyperparameter tuning, Optuna-style: search spaces, samplers (TPE, random, grid), pruners (median, successive
//! halving).
//!
//! Studies with pruning and SQLite/PostgreSQL storage build on these (the tuning issue is in progress).

pub mod parzen;
pub mod pruner;
pub mod sampler;
pub mod space;
pub mod storage;
pub mod study;

pub use pruner::{Curve, MedianPruner, NoPruner, Pruner, SuccessiveHalvingPruner};
pub use sampler::{GridSampler, Observation, Outcome, Params, RandomSampler, Sampler, TpeConfig, TpeSampler};
pub use space::{Distribution, SearchSpace};
pub use storage::{Direction, SqliteStorage, TrialRecord, TrialState};
pub use study::{
    default_space, fail_running, run_study, sqlite_path, trials_csv, PrunerKind, SamplerKind, StudyOptions,
    StudyOutcome,
};
