//! Object detection, one task of the shared engine: datasets in the CSV, COCO and YOLO layouts, box-aware
//! augmentation, FCOS target assignment and losses, COCO evaluation equal to pycocotools, reports and export.

pub mod anchor_fit;
pub mod annotations;
pub mod augment;
pub mod coco_eval;
pub mod deployed;
pub mod loss;
pub mod matching;
pub mod model;
pub mod synthetic;
pub mod targets;

pub mod settings;
pub mod setup;
pub use settings::DetectSettings;
pub mod evaluate;
pub mod export;
pub mod loader;
pub mod report;
pub mod task;

pub use task::{resume, train, train_observed, Detection, TrainOutcome};
pub mod drawing;
pub mod predict;
