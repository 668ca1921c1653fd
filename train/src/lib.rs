//! kiln-train: everything that trains, on libtorch.
//!
//! 1. Resolve a [`TrainConfig`] from defaults, a YAML/TOML file and overrides ([`TrainConfig::resolve`]).
//! 2. Train: [`classify::train`] creates `runs/classify/<name>/`, saves the config, trains with validation each
//!    epoch, writes `results.csv`, `weights/{best,last}.safetensors`, curves, and tests the best checkpoint.
//!    Every task runs the same loop, [`engine::train`], driving the task's [`engine::Task`] implementation.
//! 3. Later, for any task: [`engine::evaluate_run`] (`kiln val` / `kiln test`), [`engine::predict_run`],
//!    [`engine::export_run`], [`engine::bench_step`]; [`tasks`] dispatches each by the run's task.

pub mod allocator;
pub mod checkpoint;
pub mod classify;
pub mod config;
pub mod data;
pub mod detect;
pub mod device;
pub mod distributed;
pub mod engine;
pub mod error;
pub mod export;
pub mod fsutil;
pub mod metrics;
pub mod native;
pub mod ocr;
pub mod optim;
pub mod plots;
pub mod precision;
pub mod progress;
pub mod run_dir;
pub mod run_lock;
pub mod step_timer;
pub mod study;
pub mod synthetic;
pub mod tasks;
pub mod tune;

pub use config::{TaskKind, TrainConfig};
pub use error::{Error, Result};
/// int8 exports, also at the crate root as before ([`export::int8`]).
pub use export::int8;
pub use run_dir::{RunDir, Which};
pub use run_lock::RunLock;

/// The README's Rust examples, compiled as doctests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
