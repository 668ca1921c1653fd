//! The engine every task shares and the [`Task`] trait it drives, from training to deployment: [`train`],
//! [`resume`], [`fast_dev_run`], [`evaluate_run`], [`load_run`], [`export_run`] and [`bench_step`] are each written
//! once. Tasks live in their own folders (`classify/`, `detect/`, `ocr/`); [`crate::tasks`] is the one place that
//! names them all.

pub mod curves;
pub mod data_parallel;
pub mod export_run;
pub mod fast_dev_run;
pub mod fast_dev_run_report;
pub mod freeze;
pub mod predict;
pub mod reconcile;
pub mod records;
pub mod run_config;
pub mod run_model;
pub mod step_bench;
pub mod task;
pub mod trainer;
pub mod update;

pub use export_run::export_run;
pub use fast_dev_run::{fast_dev_run, FastDevRunReport};
pub use predict::{predict_run, PredictOptions, Predicted, PredictionListing};
pub use records::{read_results, write_results, EpochRecord};
pub use run_config::load_run_config;
pub use run_model::{check_classes, evaluate_run, load_run, EvalOptions, LoadedRun};
pub use step_bench::{bench_step, bench_train_config};
pub use task::{Batches, Built, Direction, Evaluation, Losses, Objective, Task};
pub use trainer::{prepare_runtime, resume, train, EpochCallback, Outcome, TrainOutcome};
pub use update::Update;
