//! The one error type of kiln-export.

use std::path::PathBuf;

/// Everything that can go wrong while building, serialising or reading an ONNX model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opset {requested} is not supported (kiln writes opsets {min} to {max})")]
    UnsupportedOpset { requested: i64, min: i64, max: i64 },

    #[error("graph: {0}")]
    Graph(String),

    #[error("ONNX serialisation: {0}")]
    Protobuf(#[from] protobuf::Error),

    #[error("malformed ONNX protobuf: {0}")]
    MalformedProtobuf(String),

    #[error("model metadata: {0}")]
    Metadata(String),

    #[error("model metadata schema version {found} is newer than this kiln understands ({supported}); upgrade kiln")]
    NewerSchema { found: u32, supported: u32 },

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// kiln-export's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
