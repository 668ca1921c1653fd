//! kiln-export: writes trained kiln models as ONNX.
//!
//! The graph builder, metadata and precision passes land with the export issue; until then this crate holds
//! no API, and `kiln export` is not a command yet.
