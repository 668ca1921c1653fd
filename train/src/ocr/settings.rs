//! The OCR section of the training config (`ocr:`): the input line's size, the charset, the recognizer's size and
//! the text augmentation.

use serde::{Deserialize, Serialize};

use super::augment::TextAugment;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OcrSettings {
    /// Input height (`--ocr-h`): lines are resized to it keeping their aspect ratio. A multiple of 32.
    pub height: u32,
    /// Input width (`--ocr-w`): lines are padded on the right to it; wider lines are squeezed to it. A multiple
    /// of 4 (one output frame per 4 pixels).
    pub width: u32,
    /// The characters the model reads (`--charset`): a string with ranges (`0-9A-Za-z`, the default), a file
    /// whose characters (newlines aside) are the charset, or `auto` (every character of the training labels).
    /// A run saves the resolved charset as its class names.
    pub charset: String,
    /// Channels per backbone stage, replacing the `model` preset's (e.g. `[32, 64, 96, 128]` for a fast CPU
    /// model).
    pub dims: Option<Vec<i64>>,
    /// Blocks per backbone stage, replacing the preset's.
    pub depths: Option<Vec<usize>>,
    /// LSTM units per direction.
    pub lstm_hidden: i64,
    pub lstm_layers: usize,
    /// The backbone blocks' initial layer scale (`gamma`). 1.0 by default: from scratch on 1,600 rendered digit
    /// lines (batch 32, lr 1e-3, 12 epochs) the validation CER reached 4.7 % with 1.0, 14 % with 0.1 and 85 % with
    /// timm's 1e-6, whose blocks start as the identity and leave CTC's all-blank plateau last.
    pub layer_scale_init: f64,
    pub augment: TextAugment,
}

impl Default for OcrSettings {
    fn default() -> Self {
        Self {
            height: 32,
            width: 256,
            charset: super::charset::DEFAULT_CHARSET.into(),
            dims: None,
            depths: None,
            lstm_hidden: 128,
            lstm_layers: 2,
            layer_scale_init: 1.0,
            augment: TextAugment::default(),
        }
    }
}

impl OcrSettings {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: String| Err((format!("ocr.{key}"), reason));
        if self.height < 32 || self.height % 32 != 0 {
            return bad("height", format!("{} is not a multiple of 32 (the backbone's height stride)", self.height));
        }
        if self.width < 4 || self.width % 4 != 0 {
            return bad("width", format!("{} is not a multiple of 4 (one frame per 4 pixels)", self.width));
        }
        if self.charset.is_empty() {
            return bad("charset", "is empty".into());
        }
        if let (Some(dims), Some(depths)) = (&self.dims, &self.depths) {
            if dims.len() != depths.len() {
                return bad("dims", format!("{} stages of dims but {} of depths", dims.len(), depths.len()));
            }
        }
        for (key, len) in [("dims", self.dims.as_ref().map(Vec::len)), ("depths", self.depths.as_ref().map(Vec::len))] {
            if len.is_some_and(|n| n != 4) {
                return bad(key, "needs 4 stages (the height collapses from 32 over 3 downsamplings)".into());
            }
        }
        if self.lstm_hidden < 1 || self.lstm_layers < 1 {
            return bad("lstm_hidden", "lstm_hidden and lstm_layers must be at least 1".into());
        }
        self.augment.validate().or_else(|reason| bad("augment", reason))
    }

    /// Output frames of a full-width line.
    pub fn frames(&self) -> usize {
        self.width as usize / 4
    }
}
