//! kiln-infer: running kiln's ONNX models in production, on ONNX Runtime or tract. Never depends on libtorch.
//!
//! So far: locating and loading the ONNX Runtime library ([`runtime`]). Model sessions, preprocessing from
//! metadata and the task wrappers come with the inference issue.

pub mod error;
pub mod runtime;

pub use error::{Error, Result};
