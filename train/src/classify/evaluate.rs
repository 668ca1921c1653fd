//! Evaluating a classifier on a loader: mean cross-entropy and the confusion matrix.

use tch::nn::ModuleT;
use tch::{Device, Kind, Reduction, Tensor};

use crate::precision::Precision;

use kiln_models::ImageClassifier;

use crate::data::Loader;
use crate::metrics::{ClassificationMetrics, ConfusionMatrix};
use crate::Result;

/// The outcome of one evaluation pass.
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub loss: f64,
    pub confusion: ConfusionMatrix,
    pub metrics: ClassificationMetrics,
    pub images: usize,
}

/// Runs the model in inference mode over every batch of `loader`.
pub fn evaluate(
    model: &ImageClassifier,
    loader: &Loader,
    precision: &Precision,
    num_classes: usize,
) -> Result<Evaluation> {
    let device = precision.device;
    let mut confusion = ConfusionMatrix::new(num_classes);
    let (mut loss_sum, mut images) = (0.0, 0usize);
    tch::no_grad(|| -> Result<()> {
        for batch in loader.epoch(0, false) {
            let batch = batch?;
            let xs = precision.prepare_batch(&batch.images.to_device(device))?;
            let labels = batch.labels.to_device(device);
            let logits = precision.autocast(|| model.forward_t(&xs, false)).to_kind(Kind::Float);
            let loss = logits.f_cross_entropy_loss::<Tensor>(&labels, None, Reduction::Sum, -100, 0.0)?;
            loss_sum += loss.double_value(&[]);
            let predicted: Vec<i64> = Vec::try_from(logits.argmax(-1, false).to_device(Device::Cpu))?;
            let truths: Vec<i64> = Vec::try_from(batch.labels)?;
            confusion.add_batch(&truths, &predicted);
            images += truths.len();
        }
        Ok(())
    })?;
    let metrics = confusion.metrics();
    Ok(Evaluation { loss: if images > 0 { loss_sum / images as f64 } else { f64::NAN }, confusion, metrics, images })
}
