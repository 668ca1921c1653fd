//! One optimisation step of a classifier — forward under the run's precision, label-smoothed cross-entropy,
//! backward through the loss scaler, clipping, the optimiser update, EMA — shared by the training loop and the
//! step benchmark, so that the benchmark times exactly what training runs.

use tch::nn::ModuleT;
use tch::{Kind, Reduction, Tensor};

use kiln_models::ImageClassifier;

use crate::optim::{Ema, GradScaler, Optimizer};
use crate::precision::Precision;
use crate::Result;

/// What a step needs besides the batch.
pub struct StepParts<'a> {
    pub model: &'a ImageClassifier,
    pub optimizer: &'a mut Optimizer,
    pub scaler: &'a mut GradScaler,
    pub ema: Option<&'a mut Ema>,
    pub precision: &'a Precision,
    pub label_smoothing: f64,
    /// Maximum global gradient norm; 0 disables clipping.
    pub grad_clip: f64,
}

impl StepParts<'_> {
    /// Trains on `images` `[N, 3, S, S]` (on the model's device) and `labels` `[N]` with learning rate `lr`;
    /// returns the batch's mean loss. A non-finite loss is returned as it is (the caller decides), and then no
    /// update is made. An fp16 step whose gradients overflowed is skipped by the scaler.
    pub fn step(&mut self, images: &Tensor, labels: &Tensor, lr: f64) -> Result<f64> {
        let xs = self.precision.prepare_batch(images)?;
        let logits = self.precision.autocast(|| self.model.forward_t(&xs, true)).to_kind(Kind::Float);
        let loss = logits.f_cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, self.label_smoothing)?;
        let loss_value = loss.double_value(&[]);
        if !loss_value.is_finite() {
            return Ok(loss_value);
        }
        self.optimizer.zero_grad();
        self.scaler.scale_loss(&loss).f_backward()?;
        if self.scaler.unscale(self.optimizer) {
            if self.grad_clip > 0.0 {
                self.optimizer.clip_grad_norm(self.grad_clip);
            }
            self.optimizer.step(lr);
            if let Some(ema) = self.ema.as_deref_mut() {
                ema.update();
            }
        }
        Ok(loss_value)
    }
}
