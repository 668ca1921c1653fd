//! kiln-models: the models kiln trains, on libtorch (`tch`).
//!
//! 1. Pick a backbone preset: [`ConvNextConfig::atto`] … [`ConvNextConfig::base`], or by timm name.
//! 2. Build a task model under a `tch::nn::VarStore` root: [`ImageClassifier::new`], [`ObjectDetector::new`]
//!    (ConvNeXt + [`Fpn`] + [`FcosHead`], anchor-free), or [`TextLineRecognizer::new`] (CRNN: a ConvNeXt that
//!    downsamples only the height, a bidirectional LSTM, per-frame scores for CTC).
//! 3. Optionally load timm weights saved as safetensors: [`weights::load_safetensors`] (a classifier checkpoint
//!    into a detector's backbone with [`weights::HeadPolicy::Backbone`]).
//! 4. Emit the inference graph as ONNX: [`ImageClassifier::emit`], [`ObjectDetector::emit`] (boxes and
//!    scores, decoded in the graph) or [`TextLineRecognizer::emit`] (per-frame probabilities; the LSTM as ONNX
//!    `LSTM`) into a `kiln_export::Graph`; every layer's
//!    `emit` sits beside its `forward`.
//!
//! Parameter names equal timm's state-dict keys, so checkpoints move between kiln and timm unchanged; the
//! detector's pyramid (`fpn.`) and head (`head.`) follow torchvision's FCOS names.

pub mod bilstm;
pub mod classifier;
pub mod convnext;
pub mod detector;
pub mod drop_path;
pub mod error;
pub mod faster_rcnn;
pub mod fcos_decode;
pub mod fcos_head;
pub mod fpn;
pub mod group_norm;
pub mod layer_norm;
pub mod onnx;
pub mod text_line;
pub mod vgg_bn;
pub mod weights;

pub use classifier::{ClassifierConfig, ImageClassifier};
pub use convnext::{ConvNext, ConvNextConfig, VARIANTS};
pub use detector::{DetectorConfig, ObjectDetector};
pub use error::{Error, Mismatch, Result};
pub use faster_rcnn::{FasterRcnn, FasterRcnnConfig};
pub use fcos_decode::Locations;
pub use fcos_head::{BoxActivation, FcosHead, HeadOutputs};
pub use fpn::Fpn;
pub use group_norm::GroupNorm;
pub use text_line::{RecognizerConfig, TextBackbone, TextLineRecognizer};
pub use vgg_bn::{VggBn, VggBnConfig};
