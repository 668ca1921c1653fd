//! Per-channel normalisation of every task's input, and ImageNet's statistics (timm's defaults for ConvNeXt).

use serde::{Deserialize, Serialize};

/// ImageNet mean and standard deviation (RGB, on 0..1 values), timm's defaults for ConvNeXt.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Per-channel normalisation `(x / 255 - mean) / std`. Both keys are required and no other is accepted (a
/// misspelt `stdev:` is an error, not ImageNet's std written into the model's metadata).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Normalize {
    fn default() -> Self {
        Self { mean: IMAGENET_MEAN, std: IMAGENET_STD }
    }
}
