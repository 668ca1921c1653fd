//! Learning-rate schedule: linear warm-up, then cosine decay to a floor, evaluated per optimiser step.

use std::f64::consts::PI;

/// Cosine decay with linear warm-up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CosineSchedule {
    pub peak_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl CosineSchedule {
    /// The learning rate for step `step` (0-based): rises linearly over the warm-up to `peak_lr`, then follows
    /// half a cosine down to `min_lr` at the last step.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let t = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + (PI * t).cos())
    }
}

/// The warm-up's length in steps: `warmup_epochs` of `steps_per_epoch` steps, but at least `min_steps` (Ultralytics'
/// 100-iteration floor) capped at a fifth of the run's `total_steps`. A warm-up of 0 epochs stays off.
///
/// The floor is for small sets: 15 images at batch 8 give 2 steps an epoch, and a 2-step warm-up lets AdamW's first,
/// sign-like updates move every weight of a layer by the full learning rate at once. On FCOS that pushes the ReLU'd
/// box regression below zero at every positive location for good (its loss stays at exactly 1), in torchvision's
/// FCOS as in kiln's (`scripts/detect_vs_torchvision.py`, README).
pub fn warmup_steps(warmup_epochs: f64, min_steps: usize, steps_per_epoch: usize, total_steps: usize) -> usize {
    let from_epochs = (warmup_epochs * steps_per_epoch as f64).round() as usize;
    if warmup_epochs <= 0.0 {
        return from_epochs;
    }
    from_epochs.max(min_steps.min(total_steps / 5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warm_up_has_a_floor_capped_at_a_fifth_of_the_run() {
        // Large epochs: the epochs decide.
        assert_eq!(warmup_steps(1.0, 100, 422, 4220), 422);
        // 2 steps an epoch, 60 epochs: the floor, capped at 120 / 5.
        assert_eq!(warmup_steps(1.0, 100, 2, 120), 24);
        assert_eq!(warmup_steps(1.0, 100, 20, 2000), 100);
        assert_eq!(warmup_steps(1.5, 0, 2, 120), 3, "no floor");
        assert_eq!(warmup_steps(0.0, 100, 2, 120), 0, "off stays off");
    }

    #[test]
    fn warms_up_then_decays_to_the_floor() {
        let s = CosineSchedule { peak_lr: 1.0, min_lr: 0.01, warmup_steps: 4, total_steps: 104 };
        assert_eq!([s.lr(0), s.lr(1), s.lr(3)], [0.25, 0.5, 1.0]);
        assert!((s.lr(4) - 1.0).abs() < 1e-12);
        assert!((s.lr(54) - 0.505).abs() < 1e-12, "halfway down: (1 + 0.01) / 2");
        assert!((s.lr(104) - 0.01).abs() < 1e-12);
        assert!((s.lr(500) - 0.01).abs() < 1e-12, "stays at the floor");
        let lrs: Vec<f64> = (4..104).map(|i| s.lr(i)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "monotone after warm-up");
    }

    #[test]
    fn no_warmup() {
        let s = CosineSchedule { peak_lr: 0.1, min_lr: 0.0, warmup_steps: 0, total_steps: 10 };
        assert_eq!(s.lr(0), 0.1);
    }
}
