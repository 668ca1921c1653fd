//! Dynamic loss scaling for fp16 mixed precision (as `torch.amp.GradScaler`): the loss is multiplied by a scale
//! before backward; a step whose gradients overflowed is skipped and the scale halved; after `growth_interval`
//! clean steps the scale doubles.

use tch::Tensor;

use super::optimizer::Optimizer;

pub struct GradScaler {
    pub scale: f64,
    pub enabled: bool,
    growth_interval: usize,
    clean_steps: usize,
}

impl GradScaler {
    pub fn new(enabled: bool) -> Self {
        Self { scale: 65536.0, enabled, growth_interval: 2000, clean_steps: 0 }
    }

    /// The loss to call backward on.
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        if self.enabled {
            loss * self.scale
        } else {
            loss.shallow_clone()
        }
    }

    /// Divides the gradients by the scale; false when they hold inf or NaN (then the step must be skipped).
    pub fn unscale(&mut self, optimizer: &mut Optimizer) -> bool {
        if !self.enabled {
            return true;
        }
        optimizer.scale_grads(1.0 / self.scale);
        let finite = optimizer.grad_norm().is_finite();
        if finite {
            self.clean_steps += 1;
            if self.clean_steps >= self.growth_interval {
                self.scale *= 2.0;
                self.clean_steps = 0;
            }
        } else {
            self.scale = (self.scale * 0.5).max(1.0);
            self.clean_steps = 0;
        }
        finite
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OptimizerKind;
    use crate::optim::optimizer::{OptimizerConfig, Param};
    use tch::Kind;

    #[test]
    fn overflow_halves_the_scale_and_clean_grads_are_unscaled() {
        let w = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let cfg = OptimizerConfig {
            kind: OptimizerKind::Sgd,
            weight_decay: 0.0,
            momentum: 0.0,
            betas: (0.9, 0.999),
            eps: 1e-8,
        };
        let mut opt = Optimizer::new(vec![Param::new("w".into(), w.shallow_clone())], cfg);
        let mut scaler = GradScaler::new(true);
        scaler.scale_loss(&(&w * 3.0).sum(Kind::Float)).backward();
        assert!(scaler.unscale(&mut opt));
        assert!((w.grad().double_value(&[0]) - 3.0).abs() < 1e-6);

        opt.zero_grad();
        scaler.scale_loss(&(&w * f64::INFINITY).sum(Kind::Float)).backward();
        assert!(!scaler.unscale(&mut opt));
        assert_eq!(scaler.scale, 32768.0);
    }
}
