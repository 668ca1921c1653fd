//! int8 quantization of a finished float graph, written by hand as the product's core.
//!
//! Static: [`observation_points`] names the tensors to calibrate, a runtime runs calibration images through
//! [`with_observed_outputs`]'s model and feeds each returned tensor to a [`TensorStats`], and
//! [`quantize_static`] writes the QDQ graph from those statistics. Dynamic: [`quantize_dynamic`] needs no
//! calibration. Neither runs a model: kiln-export knows no runtime (kiln-train drives calibration on kiln-infer).

pub mod calibrate;
pub mod dynamic;
pub mod graph_edit;
pub mod params;
pub mod plan;
pub mod qdq;

pub use calibrate::{CalibMethod, TensorStats};
pub use dynamic::quantize_dynamic;
pub use params::QParams;
pub use plan::{candidates, observation_points, with_observed_outputs, OpFamily};
pub use qdq::{quantize_static, QuantSummary, StaticOptions};

#[cfg(test)]
mod tests;
