//! Evaluating a classifier on a loader: mean cross-entropy, the confusion matrix, top-5 accuracy and the expected
//! calibration error, optionally under test-time augmentation ([`Tta`]), optionally keeping every image's scores
//! (for fitting a temperature).

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use crate::precision::Precision;

use kiln_models::ImageClassifier;

use super::loader::ClassifyLoader;
use super::reliability::Reliability;
use super::tta::Tta;
use crate::data::Batches;
use crate::metrics::{ClassificationMetrics, ConfusionMatrix};
use crate::Result;

/// The outcome of one evaluation pass.
#[derive(Debug)]
pub struct Evaluation {
    pub loss: f64,
    pub confusion: ConfusionMatrix,
    pub metrics: ClassificationMetrics,
    pub images: usize,
    /// Images whose label was among the five highest scores.
    pub top5_hits: usize,
    /// Top-1 confidence against correctness, binned (the ECE and the reliability diagram).
    pub reliability: Reliability,
    /// Every image's log-probabilities `[N, classes]` and labels `[N]` on the CPU, when asked for.
    pub scores: Option<(Tensor, Tensor)>,
    /// Every image's energy score (of the unaugmented image), in loader order.
    pub energies: Vec<f64>,
}

/// How to evaluate: the views averaged, and whether to keep the scores.
#[derive(Clone, Debug, Default)]
pub struct EvalSettings {
    pub tta: Tta,
    pub keep_scores: bool,
}

/// Runs the model in inference mode over every batch of `loader`.
pub fn evaluate(
    model: &ImageClassifier,
    loader: &ClassifyLoader,
    precision: &Precision,
    num_classes: usize,
    settings: &EvalSettings,
) -> Result<Evaluation> {
    settings.tta.validate()?;
    let device = precision.device;
    let mut confusion = ConfusionMatrix::new(num_classes);
    let mut reliability = Reliability::default();
    let (mut loss_sum, mut images, mut top5) = (0.0, 0usize, 0usize);
    let (mut kept_scores, mut kept_labels, mut energies) = (Vec::new(), Vec::new(), Vec::new());
    tch::no_grad(|| -> Result<()> {
        for batch in loader.epoch(0, false) {
            let batch = batch?;
            let labels = batch.labels.to_device(device);
            // Log-probabilities; without augmentation exactly the logits' log-softmax, so the loss is the
            // cross-entropy of the logits.
            let scores = settings.tta.scores(model, &batch.images.to_device(device), precision)?;
            let log_probs = scores.log_probs;
            energies.extend(Vec::<f64>::try_from(scores.energy.to_kind(Kind::Double).to_device(Device::Cpu))?);
            let loss = log_probs.f_nll_loss::<Tensor>(&labels, None, Reduction::Sum, -100)?;
            loss_sum += loss.double_value(&[]);
            let predicted: Vec<i64> = Vec::try_from(log_probs.argmax(-1, false).to_device(Device::Cpu))?;
            let truths: Vec<i64> = Vec::try_from(&batch.labels)?;
            confusion.add_batch(&truths, &predicted);
            reliability.add_batch(&log_probs, &labels)?;
            top5 += top_k_hits(&log_probs, &labels, 5);
            images += truths.len();
            if settings.keep_scores {
                kept_scores.push(log_probs.to_device(Device::Cpu));
                kept_labels.push(batch.labels.shallow_clone());
            }
        }
        Ok(())
    })?;
    let scores = (settings.keep_scores && !kept_scores.is_empty())
        .then(|| (Tensor::cat(&kept_scores, 0), Tensor::cat(&kept_labels, 0)));
    let share = EvaluationShare { loss_sum, images, top5_hits: top5, confusion, reliability, energies };
    Ok(share.into_evaluation(scores))
}

/// What a classifier's evaluation of part of a split contributes to the whole's: sums and counts, merged by adding
/// (data-parallel validation; energies in the order of the parts).
#[derive(Debug, Serialize, Deserialize)]
pub struct EvaluationShare {
    pub loss_sum: f64,
    pub images: usize,
    pub top5_hits: usize,
    pub confusion: ConfusionMatrix,
    pub reliability: Reliability,
    pub energies: Vec<f64>,
}

impl EvaluationShare {
    /// The share an evaluation is.
    pub fn of(evaluation: &Evaluation) -> Self {
        let images = evaluation.images;
        Self {
            loss_sum: if images > 0 { evaluation.loss * images as f64 } else { 0.0 },
            images,
            top5_hits: evaluation.top5_hits,
            confusion: evaluation.confusion.clone(),
            reliability: evaluation.reliability.clone(),
            energies: evaluation.energies.clone(),
        }
    }

    /// The evaluation of all `shares`' images together (at least one share).
    pub fn merge(shares: Vec<Self>) -> Result<Evaluation> {
        let mut shares = shares.into_iter();
        let mut whole = shares.next().ok_or_else(|| crate::Error::Distributed {
            call: "merging classification shares".into(),
            reason: "no share".into(),
        })?;
        for share in shares {
            whole.loss_sum += share.loss_sum;
            whole.images += share.images;
            whole.top5_hits += share.top5_hits;
            whole.confusion.merge(&share.confusion);
            whole.reliability.merge(&share.reliability);
            whole.energies.extend(share.energies);
        }
        Ok(whole.into_evaluation(None))
    }

    /// The evaluation these sums give.
    fn into_evaluation(self, scores: Option<(Tensor, Tensor)>) -> Evaluation {
        let images = self.images;
        let mut metrics = self.confusion.metrics();
        metrics.top5_accuracy = Some(if images > 0 { self.top5_hits as f64 / images as f64 } else { 0.0 });
        metrics.ece = Some(self.reliability.ece());
        Evaluation {
            loss: if images > 0 { self.loss_sum / images as f64 } else { f64::NAN },
            confusion: self.confusion,
            metrics,
            images,
            top5_hits: self.top5_hits,
            reliability: self.reliability,
            scores,
            energies: self.energies,
        }
    }
}

/// How many rows of `scores` `[N, classes]` rank their `labels` `[N]` among the `k` highest (all classes when
/// there are fewer than `k`). Ties with the k-th score count as a hit only as far as `topk` picks them.
pub fn top_k_hits(scores: &Tensor, labels: &Tensor, k: i64) -> usize {
    let k = k.min(scores.size()[1]);
    let (_, top) = scores.topk(k, -1, true, true);
    top.eq_tensor(&labels.unsqueeze(1)).any_dim(1, false).sum(Kind::Int64).int64_value(&[]) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_counts_labels_among_the_highest_scores() {
        // Row 0: label 2 is the top score; row 1: label 0 is 3rd; row 2: label 3 is last of 6.
        let scores = Tensor::from_slice(&[
            0.1f32, 0.2, 0.9, 0.0, 0.3, 0.4, //
            0.5, 0.9, 0.1, 0.0, 0.8, 0.2, //
            0.6, 0.5, 0.4, 0.0, 0.3, 0.2,
        ])
        .reshape([3, 6]);
        let labels = Tensor::from_slice(&[2i64, 0, 3]);
        assert_eq!(top_k_hits(&scores, &labels, 1), 1);
        assert_eq!(top_k_hits(&scores, &labels, 2), 1);
        assert_eq!(top_k_hits(&scores, &labels, 3), 2);
        assert_eq!(top_k_hits(&scores, &labels, 5), 2);
        assert_eq!(top_k_hits(&scores, &labels, 6), 3);
        // Fewer classes than k: every label is among "the top five".
        assert_eq!(top_k_hits(&scores.narrow(1, 0, 4), &labels, 5), 3);
    }
}
