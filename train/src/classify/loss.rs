//! The classifier's training loss: forward under the run's precision, label-smoothed cross-entropy (or, for a
//! MixUp / CutMix batch, cross-entropy against soft targets). Shared by the
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

/// The classifier's logits (float32) on `images`, forward in training mode under `precision`, and the prepared
/// batch (for a distillation teacher).
pub fn training_logits(model: &ImageClassifier, images: &Tensor, precision: &Precision) -> Result<(Tensor, Tensor)> {
    let xs = precision.prepare_batch(images)?;
    let logits = precision.autocast(|| model.forward_t(&xs, true)).to_kind(Kind::Float);
    Ok((logits, xs))
}

/// The soft-target cross-entropy `mean_n(−Σ_c targets[n, c] · log_softmax(logits)[n, c])` (timm's
/// `SoftTargetCrossEntropy`).
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    (-(targets * logits.log_softmax(-1, Kind::Float)))
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
        .mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn soft_targets_of_smoothed_one_hots_give_label_smoothed_cross_entropy() {
        let logits = Tensor::from_slice(&[2.0f32, -1.0, 0.5, 0.0, 3.0, -2.0]).reshape([2, 3]);
        let labels = Tensor::from_slice(&[0i64, 1]);
        for smoothing in [0.0, 0.1] {
            let mixed = super::super::mixup::apply(
                &Tensor::zeros([2, 3, 4, 4], (Kind::Float, Device::Cpu)),
                &labels,
                3,
                smoothing,
                super::super::mixup::Mixing::None,
            );
            let soft = soft_cross_entropy(&logits, &mixed.targets).double_value(&[]);
            let hard = logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, smoothing);
            assert!((soft - hard.double_value(&[])).abs() < 1e-6, "smoothing {smoothing}: {soft} vs {hard:?}");
        }
    }
}
