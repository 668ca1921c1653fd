//! kiln-infer: running kiln's ONNX models in production, on ONNX Runtime or tract. Never depends on libtorch.
//!
//! 1. Open a model on a backend: [`Model::builder`]`().backend(Backend::Ort(Ep::Cpu)).threads(4).open(path)`.
//!    ONNX Runtime is loaded from `ORT_DYLIB_PATH` or a kiln deps directory ([`runtime`]).
//! 2. Wrap it in a task: [`Classifier::new`] reads class names and preprocessing from the model's metadata;
//!    [`Detector::new`] and [`TextRecognizer::new`] do the same for detection and OCR models.
//! 3. Predict: [`Classifier::predict`] (one decoded image), [`Classifier::predict_path`], [`Classifier::predict_batch`].
//!
//! ```no_run
//! use kiln_infer::{Backend, Classifier, Ep, Model};
//!
//! # fn main() -> kiln_infer::Result<()> {
//! let model = Model::builder().backend(Backend::Ort(Ep::Cpu)).threads(4).open("best.onnx")?;
//! let classifier = Classifier::new(model)?;
//! for score in classifier.predict_path("photo.jpg".as_ref(), 3)? {
//!     println!("{} {:.3}", score.class, score.probability);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A model without kiln metadata opens in raw mode: give the preprocessing with [`ModelBuilder::raw`] and the class
//! names with [`Classifier::with_classes`].

pub mod backend;
pub mod classifier;
pub mod coco_results;
pub mod ctc;
pub mod detector;
pub mod error;
pub mod exif;
pub mod file_batches;
pub mod latency;
pub mod listing;
pub mod metadata_check;
pub mod model;
pub mod nms;
pub mod preprocess;
pub mod recognizer;
pub mod runtime;
pub mod text_metrics;
pub mod wbf;

pub use backend::{Backend, Ep};
pub use classifier::{ClassScore, Classification, Classifier};
pub use ctc::{ctc_forward_probability, BeamSearch, Constraint, Decoded};
pub use detector::{unletterbox, Detector};
pub use error::{Error, Result};
pub use exif::{read_header, Exif, ImageHeader};
pub use file_batches::{file_batches, file_batches_with, FileBatch};
pub use latency::{LatencyOptions, LatencyRow, TimedRuns};
pub use listing::{write_listing, Listed, ListingFormat};
pub use model::{Model, ModelBuilder, Output, TensorSpec, TensorType};
pub use nms::{iou, nms, nms_per_image, Detection, NmsConfig, NmsOverrides};
pub use preprocess::{ChannelOrder, Preprocess, Resize};
pub use recognizer::{Decoding, Reading, TextRecognizer};
pub use text_metrics::{edit_distance, TextScores, TextSummary};
pub use wbf::{weighted_boxes_fusion, ConfType, WbfConfig};
