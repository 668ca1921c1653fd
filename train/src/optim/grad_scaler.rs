//! Dynamic loss scaling for fp16 mixed precision (as `torch.amp.GradScaler`): the loss is multiplied by a scale
//! before backward; a step whose gradients overflowed is skipped and the scale halved; after `growth_interval`
//! clean steps the scale doubles.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::optimizer::Optimizer;

pub struct GradScaler {
    pub scale: f64,
    pub enabled: bool,
    growth_interval: usize,
    clean_steps: usize,
    /// Steps skipped in a row for a non-finite loss or gradients; reset by a clean step.
    consecutive_skips: usize,
    /// Steps skipped since the start, for the epoch summary.
    pub skipped_steps: usize,
}

/// The scaler's step counters, saved in checkpoints so that a resumed run grows and skips as the uninterrupted
/// one would (`torch.amp.GradScaler.state_dict()` keeps its growth tracker for the same reason).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalerCounters {
    pub clean_steps: usize,
    pub consecutive_skips: usize,
    pub skipped_steps: usize,
}

/// After this many skipped steps in a row the scale has gone from 65536 to 1: the run has diverged, not overflowed.
pub const MAX_CONSECUTIVE_SKIPS: usize = 17;

impl GradScaler {
    pub fn new(enabled: bool) -> Self {
        Self { scale: 65536.0, enabled, growth_interval: 2000, clean_steps: 0, consecutive_skips: 0, skipped_steps: 0 }
    }

    pub fn counters(&self) -> ScalerCounters {
        ScalerCounters {
            clean_steps: self.clean_steps,
            consecutive_skips: self.consecutive_skips,
            skipped_steps: self.skipped_steps,
        }
    }

    /// Continues from a checkpoint's scale and counters.
    pub fn restore(&mut self, scale: f64, counters: ScalerCounters) {
        self.scale = scale;
        self.clean_steps = counters.clean_steps;
        self.consecutive_skips = counters.consecutive_skips;
        self.skipped_steps = counters.skipped_steps;
    }

    /// A step whose forward loss is inf or NaN. Under fp16 loss scaling it is skipped like an overflowing backward
    /// (the scale halves) and training goes on: returns true. Without scaling, or once skips have persisted
    /// [`MAX_CONSECUTIVE_SKIPS`] steps, it returns false: the run has diverged.
    pub fn skip_non_finite_loss(&mut self) -> bool {
        if !self.enabled {
            return false;
        }
        self.overflowed();
        self.consecutive_skips <= MAX_CONSECUTIVE_SKIPS
    }

    fn overflowed(&mut self) {
        self.scale = (self.scale * 0.5).max(1.0);
        self.clean_steps = 0;
        self.consecutive_skips += 1;
        self.skipped_steps += 1;
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
            self.consecutive_skips = 0;
            if self.clean_steps >= self.growth_interval {
                self.scale *= 2.0;
                self.clean_steps = 0;
            }
        } else {
            self.overflowed();
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

    /// One scalar weight `w` under plain SGD.
    fn one_weight() -> (Tensor, Optimizer) {
        let w = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let cfg = OptimizerConfig {
            kind: OptimizerKind::Sgd,
            weight_decay: 0.0,
            momentum: 0.0,
            betas: (0.9, 0.999),
            eps: 1e-8,
        };
        let opt = Optimizer::new(vec![Param::new("w".into(), w.shallow_clone())], cfg);
        (w, opt)
    }

    #[test]
    fn overflow_halves_the_scale_and_clean_grads_are_unscaled() {
        let (w, mut opt) = one_weight();
        let mut scaler = GradScaler::new(true);
        scaler.scale_loss(&(&w * 3.0).sum(Kind::Float)).backward();
        assert!(scaler.unscale(&mut opt));
        assert!((w.grad().double_value(&[0]) - 3.0).abs() < 1e-6);

        opt.zero_grad();
        scaler.scale_loss(&(&w * f64::INFINITY).sum(Kind::Float)).backward();
        assert!(!scaler.unscale(&mut opt));
        assert_eq!(scaler.scale, 32768.0);
    }

    #[test]
    fn a_non_finite_fp16_loss_is_skipped_until_it_persists() {
        let mut scaler = GradScaler::new(true);
        for i in 1..=MAX_CONSECUTIVE_SKIPS {
            assert!(scaler.skip_non_finite_loss(), "skip {i}");
        }
        assert_eq!(scaler.scale, 1.0, "65536 halved 16 times, then held at 1");
        assert!(!scaler.skip_non_finite_loss(), "persisting: diverged");
        assert_eq!(scaler.skipped_steps, MAX_CONSECUTIVE_SKIPS + 1);
        // A clean step in between resets the count.
        let mut scaler = GradScaler::new(true);
        let (w, mut opt) = one_weight();
        for _ in 0..MAX_CONSECUTIVE_SKIPS {
            assert!(scaler.skip_non_finite_loss());
        }
        scaler.scale_loss(&(&w * 3.0).sum(Kind::Float)).backward();
        assert!(scaler.unscale(&mut opt));
        assert!(scaler.skip_non_finite_loss(), "the count started again");
        // Without loss scaling (fp32, bf16) a non-finite loss is divergence at once.
        assert!(!GradScaler::new(false).skip_non_finite_loss());
    }

    #[test]
    fn a_restored_scaler_grows_when_the_uninterrupted_one_would() {
        let (w, mut opt) = one_weight();
        let mut original = GradScaler::new(true);
        for _ in 0..1999 {
            opt.zero_grad();
            original.scale_loss(&(&w * 3.0).sum(Kind::Float)).backward();
            assert!(original.unscale(&mut opt));
        }
        assert_eq!(original.scale, 65536.0, "one clean step short of growth");
        let mut restored = GradScaler::new(true);
        restored.restore(original.scale, original.counters());
        for scaler in [&mut original, &mut restored] {
            opt.zero_grad();
            scaler.scale_loss(&(&w * 3.0).sum(Kind::Float)).backward();
            assert!(scaler.unscale(&mut opt));
            assert_eq!(scaler.scale, 131072.0, "the 2000th clean step doubles the scale");
        }
    }
}
