//! kiln-export: writes ONNX models.
//!
//! 1. Start a [`Graph`] for an opset and a compute precision (`F32`, or `F16` for `--half`).
//! 2. Let the model's layers emit their nodes into it (`kiln-models`: `emit` beside each `forward`).
//! 3. Declare the outputs, attach [`ModelMetadata`] and serialise with [`Graph::into_model`] and [`to_bytes`];
//!    [`write_atomic`] puts the file in place.
//! 4. Optionally make an int8 model of the finished float one ([`quantize`]: static QDQ from calibration
//!    statistics, or dynamic).

pub mod error;
pub mod graph;
pub mod metadata;
pub mod nms;
pub mod quantize;
pub mod skeleton;
pub mod write;

pub use error::{Error, Result};
pub use graph::{from_bytes, to_bytes, Attr, Dim, ElemType, Graph, Value, MAX_OPSET, MIN_OPSET};
pub use metadata::{
    CalibrationInfo, CtcSettings, InputSpec, ModelMetadata, NmsSettings, OutputSpec, QuantizationInfo,
    TemperatureScaling, TrainingInfo, METADATA_KEY, SCHEMA_VERSION,
};
pub use nms::{emit_nms, NmsValues, NMS_OUTPUTS};
/// The ONNX protobuf types kiln-export reads and writes.
pub use onnx_protobuf as proto;
pub use skeleton::skeleton;
pub use write::{sweep_stale_temps, write_atomic, TEMP_SUFFIX};
