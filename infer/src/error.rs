//! The one error type of kiln-infer.

use std::path::PathBuf;

/// Everything that can go wrong while loading a runtime or a model, or running it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ONNX Runtime library not found (looked at: {}); set ORT_DYLIB_PATH or run `make deps`", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    RuntimeNotFound { searched: Vec<PathBuf> },

    #[error("ONNX Runtime library {path}: {reason}")]
    RuntimeLoad { path: PathBuf, reason: String },

    #[error("model {path}: {reason}")]
    ModelFile { path: PathBuf, reason: String },

    #[error("model {path}: {source}")]
    Metadata { path: PathBuf, source: kiln_export::Error },

    #[error("model {path}: metadata {field}: {reason}")]
    MetadataField { path: PathBuf, field: String, reason: String },

    #[error("model {path}: output '{output}': {reason}")]
    ModelOutput { path: PathBuf, output: String, reason: String },

    #[error("model {path} has no kiln metadata: open it in raw mode with the input size, mean and std")]
    NoMetadata { path: PathBuf },

    #[error("model {path} is a '{found}' model, not '{expected}'")]
    WrongTask { path: PathBuf, expected: String, found: String },

    #[error("execution provider {ep} is not available: {reason} (it needs {needs})")]
    EpUnavailable { ep: String, reason: String, needs: String },

    #[error("input: {0}")]
    InvalidInput(String),

    #[error("image {path}: {reason}")]
    Image { path: PathBuf, reason: String },

    #[error("--coco-gt {path}: {reason}")]
    CocoGroundTruth { path: PathBuf, reason: String },

    #[error("not supported: {0}")]
    Unsupported(String),

    #[error("ONNX Runtime: {0}")]
    Ort(String),

    #[error("tract: {0}")]
    Tract(String),
}

impl From<ort::Error> for Error {
    fn from(e: ort::Error) -> Self {
        Error::Ort(e.to_string())
    }
}

/// kiln-infer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
