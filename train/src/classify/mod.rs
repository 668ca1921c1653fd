//! Image classification, one task of the shared engine: its dataset set-up, model, loss, evaluation, reports,
//! export and prediction.

pub mod calibration;
pub mod distill;
pub mod energy;
pub mod evaluate;
pub mod export;
pub mod gradcam;
pub mod loss;
pub mod mixup;
pub mod model;
pub mod predict;
pub mod reliability;
pub mod report;
pub mod report_display;
pub mod setup;
pub mod task;
pub mod tta;

pub use export::{classifier_onnx, ExportOptions, ExportReport, GraphSpec};
pub use predict::{predict, PredictOptions, Prediction};
pub use report::SplitReport;
pub use task::{resume, resume_observed, train, train_observed, Classification, TrainOutcome};
