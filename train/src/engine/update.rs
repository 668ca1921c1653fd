//! The part of a training step every task shares: backward through the loss scaler, gradient clipping, the
//! optimiser update and the EMA update. The training loop and the step benchmarks run exactly this.

use tch::Tensor;

use crate::optim::{Ema, GradScaler, Optimizer};
use crate::Result;

/// What an update needs besides the loss.
pub struct Update<'a> {
    pub optimizer: &'a mut Optimizer,
    pub scaler: &'a mut GradScaler,
    pub ema: Option<&'a mut Ema>,
    /// Maximum global gradient norm; 0 disables clipping.
    pub grad_clip: f64,
}

impl Update<'_> {
    /// Backpropagates `loss` and updates the weights with learning rate `lr`; returns the loss's value. A
    /// non-finite loss is returned as it is (the caller decides) and no update is made. An fp16 step whose
    /// gradients overflowed is skipped by the scaler.
    pub fn apply(&mut self, loss: &Tensor, lr: f64) -> Result<f64> {
        let loss_value = loss.double_value(&[]);
        if !loss_value.is_finite() {
            return Ok(loss_value);
        }
        self.optimizer.zero_grad();
        self.scaler.scale_loss(loss).f_backward()?;
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
