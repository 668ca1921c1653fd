//! The settings of training methods classification uses today and the coming tasks will share: MixUp / CutMix
//! (`mixup:`) and distillation from a teacher run (`distill:`). What they do is in `classify::mixup` and
//! `classify::distill`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `mixup:` settings (off while both alphas are 0).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mixup {
    /// MixUp's Beta parameter (timm's `--mixup`; 0.8 in its recipes). 0 turns MixUp off.
    pub mixup_alpha: f64,
    /// CutMix's Beta parameter (timm's `--cutmix`; 1.0 in its recipes). 0 turns CutMix off.
    pub cutmix_alpha: f64,
    /// Probability of mixing a batch at all.
    pub prob: f64,
    /// Probability of CutMix rather than MixUp when both are on.
    pub switch_prob: f64,
}

impl Default for Mixup {
    fn default() -> Self {
        Self { mixup_alpha: 0.0, cutmix_alpha: 0.0, prob: 1.0, switch_prob: 0.5 }
    }
}

impl Mixup {
    pub fn enabled(&self) -> bool {
        self.prob > 0.0 && (self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0)
    }

    /// Checks the settings, as `(key, reason)`.
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        for (key, v) in [("mixup.mixup_alpha", self.mixup_alpha), ("mixup.cutmix_alpha", self.cutmix_alpha)] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err((key.into(), format!("{v} is not a non-negative number")));
            }
        }
        for (key, v) in [("mixup.prob", self.prob), ("mixup.switch_prob", self.switch_prob)] {
            if !(0.0..=1.0).contains(&v) {
                return Err((key.into(), format!("{v} is not a probability")));
            }
        }
        Ok(())
    }
}

/// The `distill:` settings (off without a teacher).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Distill {
    /// A classification run directory whose best checkpoint teaches.
    pub teacher: Option<PathBuf>,
    /// The softening temperature `T`.
    pub temperature: f64,
    /// The KL term's weight.
    pub weight: f64,
}

impl Default for Distill {
    fn default() -> Self {
        Self { teacher: None, temperature: 4.0, weight: 1.0 }
    }
}

impl Distill {
    /// Checks the settings, as `(key, reason)`.
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(("distill.temperature".into(), format!("{} is not a positive number", self.temperature)));
        }
        if !(self.weight >= 0.0 && self.weight.is_finite()) {
            return Err(("distill.weight".into(), format!("{} is not a non-negative number", self.weight)));
        }
        Ok(())
    }
}
