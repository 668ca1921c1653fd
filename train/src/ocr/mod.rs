//! Text-line recognition (OCR), one task of the shared engine: `labels.txt` / `gt.txt` datasets, a charset over
//! graphemes, fit-height batching with per-line lengths, text augmentation, the CTC loss, CER / WER / exact match,
//! reports, ONNX export and rendered text lines.

pub mod augment;
pub mod charset;
pub mod dataset;
pub mod deployed;
pub mod evaluate;
pub mod export;
pub mod loader;
pub mod loss;
pub mod predict;
pub mod report;
pub mod synthetic;
pub mod task;

pub mod settings;
pub mod setup;
pub use settings::OcrSettings;
pub use task::{resume, train, train_observed, TextRecognition, TrainOutcome};
