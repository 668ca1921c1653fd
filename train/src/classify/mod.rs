//! Image classification: model set-up, the training loop, evaluation, reports and prediction.

pub mod evaluate;
pub mod export;
pub mod model;
pub mod predict;
pub mod report;
pub mod results;
pub mod setup;
pub mod step;
pub mod step_bench;
pub mod trainer;

pub use export::{classifier_onnx, export_run, ExportOptions, ExportReport, GraphSpec};
pub use predict::{predict, PredictOptions, Prediction};
pub use report::{evaluate_run, EvalOptions, SplitReport};
pub use results::EpochRecord;
pub use step_bench::{bench_train_step, StepBenchConfig, StepBenchResult};
pub use trainer::{resume, resume_observed, train, train_observed, EpochCallback, TrainOutcome};
