//! kiln-models: the models kiln trains, on libtorch (`tch`).
//!
//! 1. Pick a backbone preset: [`ConvNextConfig::atto`] … [`ConvNextConfig::base`], or by timm name.
//! 2. Build a task model under a `tch::nn::VarStore` root: [`ImageClassifier::new`].
//! 3. Optionally load timm weights saved as safetensors: [`weights::load_safetensors`].
//! 4. Emit the inference graph as ONNX: [`ImageClassifier::emit`] into a `kiln_export::Graph`; every layer's
//!    `emit` sits beside its `forward`.
//!
//! Parameter names equal timm's state-dict keys, so checkpoints move between kiln and timm unchanged.

pub mod classifier;
pub mod convnext;
pub mod drop_path;
pub mod error;
pub mod layer_norm;
pub mod onnx;
pub mod weights;

pub use classifier::{ClassifierConfig, ImageClassifier};
pub use convnext::{ConvNext, ConvNextConfig, VARIANTS};
pub use error::{Error, Mismatch, Result};
