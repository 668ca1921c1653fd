//! kiln-tune: hyperparameter tuning, Optuna-style, without libtorch. Search spaces, samplers (TPE, random, grid),
//! pruners (median, successive halving), fANOVA importances, study storage in Optuna's own RDB schema (SQLite
//! for one machine, PostgreSQL for many), heartbeats, and the study loop, which trains through an injected
//! [`Trainer`] (kiln-train gives one for its runs).

pub mod direction;
pub mod error;
pub mod fsutil;
pub mod heartbeat;
pub mod importance;
#[cfg(test)]
mod optuna_parity_tests;
pub mod parzen;
pub mod pruner;
pub mod sampler;
pub mod space;
pub mod startup;
pub mod storage;
pub mod study;

pub use direction::Direction;
pub use error::{Error, Result};
pub use heartbeat::{heartbeat_interval, Heartbeat};
pub use importance::{fanova_importances, FanovaConfig};
pub use pruner::{Curve, MedianPruner, NoPruner, Pruner, SuccessiveHalvingPruner};
pub use sampler::{GridSampler, Observation, Outcome, Params, RandomSampler, Sampler, TpeConfig, TpeSampler};
pub use space::{Distribution, SearchSpace};
pub use startup::{default_storage, fail_trial_on_interrupt, worker_id};
pub use storage::{
    migrate, Migration, PostgresStorage, SqliteStorage, Storage, StorageUrl, TrialRecord, TrialState, ALEMBIC_VERSION,
    LIBRARY_VERSION, RUN_DIR_ATTR, SCHEMA_VERSION,
};
pub use study::{
    best_trial, importances, record_interrupted, run_study, trials_csv, Objective, PrunerKind, RunningEntry,
    RunningTrial, SamplerKind, StudyOptions, StudyOutcome, Trainer, TrialError, TrialOutcome, TrialRun,
};
