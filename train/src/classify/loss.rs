//! The classifier's training loss: forward under the run's precision, label-smoothed cross-entropy. Shared by the
//! training loop (through [`super::Classification`]) and the step benchmark, so the benchmark times what
//! training runs.

use tch::nn::ModuleT;
use tch::{Kind, Reduction, Tensor};

use kiln_models::ImageClassifier;

use crate::precision::Precision;
use crate::Result;

/// The mean cross-entropy of `model` on `images` `[N, 3, S, S]` and `labels` `[N]` (both on the model's device),
/// forward in training mode.
pub fn classification_loss(
    model: &ImageClassifier,
    images: &Tensor,
    labels: &Tensor,
    precision: &Precision,
    label_smoothing: f64,
) -> Result<Tensor> {
    let xs = precision.prepare_batch(images)?;
    let logits = precision.autocast(|| model.forward_t(&xs, true)).to_kind(Kind::Float);
    Ok(logits.f_cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, label_smoothing)?)
}
