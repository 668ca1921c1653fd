//! `augment`: the image augmentation settings of tasks that see whole images (classification today, the
//! embedding task next), checked here; the operations that read them live with the task
//! (`classify::transform`, `classify::auto_augment`, `classify::erasing`).

use serde::{Deserialize, Serialize};

/// Training-time augmentation settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Range of the crop's area as a fraction of the image's.
    pub scale: [f64; 2],
    /// Range of the crop's aspect ratio (width / height), sampled log-uniformly.
    pub ratio: [f64; 2],
    /// Probability of a horizontal flip.
    pub hflip: f64,
    /// Strength of brightness, contrast and saturation jitter: each factor is drawn from [1 - s, 1 + s].
    pub color_jitter: f64,
    /// RandAugment or TrivialAugment on the crop, after the flip (none by default).
    pub auto_augment: Option<AutoAugment>,
    /// Random erasing after normalisation (off by default).
    pub random_erasing: RandomErasing,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            scale: [0.08, 1.0],
            ratio: [3.0 / 4.0, 4.0 / 3.0],
            hflip: 0.5,
            color_jitter: 0.4,
            auto_augment: None,
            random_erasing: RandomErasing::default(),
        }
    }
}

/// An automatic augmentation policy (`augment.auto_augment`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case", deny_unknown_fields)]
pub enum AutoAugment {
    /// `num_ops` operations drawn uniformly (with replacement), each at bin `magnitude` of its table, the sign of
    /// a signed operation drawn with probability 1/2.
    RandAugment {
        #[serde(default = "default_num_ops")]
        num_ops: usize,
        #[serde(default = "default_magnitude")]
        magnitude: usize,
        #[serde(default = "default_bins")]
        num_magnitude_bins: usize,
    },
    /// One operation drawn uniformly at a magnitude bin drawn uniformly, from the wide tables.
    TrivialAugment {
        #[serde(default = "default_bins")]
        num_magnitude_bins: usize,
    },
}

fn default_num_ops() -> usize {
    2
}
fn default_magnitude() -> usize {
    9
}
fn default_bins() -> usize {
    31
}

impl AutoAugment {
    /// torchvision's defaults: two operations at magnitude 9 of 31 bins.
    pub const RAND_AUGMENT: AutoAugment = AutoAugment::RandAugment { num_ops: 2, magnitude: 9, num_magnitude_bins: 31 };

    /// Checks the settings, as `(key, reason)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bins = match *self {
            AutoAugment::RandAugment { magnitude, num_magnitude_bins, .. } => {
                if magnitude >= num_magnitude_bins {
                    return Err((
                        "augment.auto_augment.magnitude".into(),
                        format!("{magnitude} is not a bin of 0..{num_magnitude_bins}"),
                    ));
                }
                num_magnitude_bins
            }
            AutoAugment::TrivialAugment { num_magnitude_bins } => num_magnitude_bins,
        };
        if bins < 2 {
            return Err(("augment.auto_augment.num_magnitude_bins".into(), format!("{bins} is fewer than 2")));
        }
        Ok(())
    }
}

/// What an erased rectangle is filled with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EraseFill {
    /// Zero after normalisation: the dataset mean.
    Const,
    /// A standard normal value per channel.
    Rand,
    /// A standard normal value per channel and pixel (timm's `--remode pixel`).
    #[default]
    Pixel,
}

/// `augment.random_erasing`: off while `prob` is 0.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RandomErasing {
    /// Probability of erasing an image at all.
    pub prob: f64,
    /// Range of the erased area as a fraction of the image (shared by the rectangles).
    pub area: [f64; 2],
    /// Range of a rectangle's aspect ratio (height / width), sampled log-uniformly.
    pub aspect: [f64; 2],
    pub fill: EraseFill,
    /// Range of the number of rectangles, drawn uniformly.
    pub count: [usize; 2],
}

impl Default for RandomErasing {
    /// timm's defaults, switched off.
    fn default() -> Self {
        Self { prob: 0.0, area: [0.02, 1.0 / 3.0], aspect: [0.3, 1.0 / 0.3], fill: EraseFill::Pixel, count: [1, 1] }
    }
}

impl RandomErasing {
    /// Checks the settings, as `(key, reason)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let key = |k: &str| format!("augment.random_erasing.{k}");
        if !(0.0..=1.0).contains(&self.prob) {
            return Err((key("prob"), format!("{} is not a probability", self.prob)));
        }
        let [lo, hi] = self.area;
        if !(0.0 < lo && lo <= hi && hi <= 1.0) {
            return Err((key("area"), format!("[{lo}, {hi}] is not a range within (0, 1]")));
        }
        let [lo, hi] = self.aspect;
        if !(0.0 < lo && lo <= hi && hi.is_finite()) {
            return Err((key("aspect"), format!("[{lo}, {hi}] is not a positive range")));
        }
        let [lo, hi] = self.count;
        if !(1 <= lo && lo <= hi) {
            return Err((key("count"), format!("[{lo}, {hi}] is not a range of at least 1")));
        }
        Ok(())
    }
}
