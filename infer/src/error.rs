//! The one error type of kiln-infer.

use std::path::PathBuf;

/// Everything that can go wrong while loading a runtime or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ONNX Runtime library not found (looked at: {}); set ORT_DYLIB_PATH or run `make deps`", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    RuntimeNotFound { searched: Vec<PathBuf> },

    #[error("ONNX Runtime library {path}: {reason}")]
    RuntimeLoad { path: PathBuf, reason: String },
}

/// kiln-infer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
