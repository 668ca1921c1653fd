//! Image classification, one task of the shared engine: its dataset (the ImageFolder layout, the decoded-image
//! cache, augmentation, the loader's items), model, loss, evaluation, reports, export and prediction.

pub mod auto_augment;
pub mod cache;
pub mod calibration;
pub mod distill;
pub mod energy;
pub mod erasing;
pub mod evaluate;
pub mod export;
pub mod gradcam;
pub mod image_folder;
pub mod loader;
pub mod loss;
pub mod mixup;
pub mod model;
pub mod predict;
pub mod reliability;
pub mod report;
pub mod report_display;
pub mod setup;
pub mod task;
pub mod transform;
pub mod tta;

pub use cache::ImageSource;
pub use export::{classifier_onnx, ExportOptions, ExportReport, GraphSpec};
pub use image_folder::{ImageFolder, Sample, SplitRatios};
pub use loader::{Batch, ClassifyItems, ClassifyLoader};
pub use predict::{PredictOptions, Prediction};
pub use report::SplitReport;
pub use task::{calibrate_run, predict, resume, resume_observed, train, train_observed, Classification, TrainOutcome};
pub use transform::Transform;
