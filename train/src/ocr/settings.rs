//! Text recognition's own section of the training config (`ocr:`, its `Task::Settings`): the input line's size,
//! the charset, the recognizer's size and the text augmentation.

use kiln_models::TextBackbone;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::TaskSettings;

/// Digits and ASCII letters, as the seeds read.
pub const DEFAULT_CHARSET: &str = "0-9A-Za-z";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OcrSettings {
    /// Input height (`--ocr-h`): lines are resized to it keeping their aspect ratio. A multiple of the body's
    /// height stride (32 for ConvNeXt, 16 for VGG-BN).
    pub height: u32,
    /// Input width (`--ocr-w`): lines are padded on the right to it; wider lines are squeezed to it. A multiple
    /// of 4 (one output frame per 4 pixels).
    pub width: u32,
    /// The characters the model reads (`--charset`): a string with ranges (`0-9A-Za-z`, the default), a file
    /// whose characters (newlines aside) are the charset, or `auto` (every character of the training labels).
    /// A run saves the resolved charset as its class names.
    pub charset: String,
    /// The convolutional body (`convnext | vgg_bn`). `vgg_bn` by default: from scratch it trains to a lower CER
    /// in fewer epochs (the README's OCR table); `convnext` is the seeds' CRNN, sized by `model`, and takes timm
    /// ConvNeXt weights (`--weights`).
    pub backbone: TextBackbone,
    /// Channels per backbone stage, replacing the `model` preset's (e.g. `[32, 64, 96, 128]` for a fast CPU
    /// model).
    pub dims: Option<Vec<i64>>,
    /// Blocks per backbone stage, replacing the preset's.
    pub depths: Option<Vec<usize>>,
    /// LSTM units per direction.
    pub lstm_hidden: i64,
    pub lstm_layers: usize,
    /// Whether the frame classifier reads the frame features beside the LSTM's output (kiln's head) or the LSTM's
    /// output alone (the classic CRNN head).
    pub frame_shortcut: bool,
    /// The ConvNeXt blocks' initial layer scale (`gamma`). 1.0 by default: from scratch on 1,600 rendered digit
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
            charset: DEFAULT_CHARSET.into(),
            backbone: TextBackbone::VggBn,
            dims: None,
            depths: None,
            lstm_hidden: 128,
            lstm_layers: 2,
            frame_shortcut: true,
            layer_scale_init: 1.0,
            augment: TextAugment::default(),
        }
    }
}

impl TaskSettings for OcrSettings {
    fn added_later() -> Vec<(&'static str, Value)> {
        vec![
            ("backbone", serde_json::to_value(TextBackbone::Convnext).expect("serialises")),
            ("frame_shortcut", Value::Bool(true)),
            ("augment.enabled", Value::Bool(true)),
        ]
    }

    /// Checks the values; the error names the key.
    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: String| Err((format!("ocr.{key}"), reason));
        let stride = self.height_stride();
        if self.height < stride || self.height % stride != 0 {
            return bad(
                "height",
                format!(
                    "{} is not a multiple of {stride} (the {} body's height stride)",
                    self.height,
                    self.backbone.name()
                ),
            );
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
                return bad(key, "needs 4 stages".into());
            }
        }
        if self.lstm_hidden < 1 || self.lstm_layers < 1 {
            return bad("lstm_hidden", "lstm_hidden and lstm_layers must be at least 1".into());
        }
        self.augment.validate().or_else(|reason| bad("augment", reason))
    }
}

impl OcrSettings {
    /// The model's name as logs and exports show it: the body's when it is not a ConvNeXt preset (`vgg_bn`), else
    /// the config's `model`.
    pub fn model_name(&self, model: &str) -> String {
        match self.backbone {
            TextBackbone::VggBn => self.backbone.name().into(),
            TextBackbone::Convnext => model.into(),
        }
    }

    /// Input rows per output row of the body (`TextBackbone::height_stride`).
    pub fn height_stride(&self) -> u32 {
        self.backbone.height_stride() as u32
    }

    /// Output frames of a full-width line.
    pub fn frames(&self) -> usize {
        self.width as usize / 4
    }
}

/// Training augmentation of text lines (`ocr.augment`); `0` disables a transform.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextAugment {
    /// Whether training lines are augmented at all (with the strengths below). Off by default: from scratch on
    /// real digit lines and printed lines, 4 epochs with these strengths ended at 1.3× and 2.2× the CER of 4
    /// epochs without (README, OCR table); turn it on for small sets or long runs whose validation CER stalls
    /// while the training loss falls.
    pub enabled: bool,
    /// Largest padding added on each side, as a fraction of the line's height (left and right up to this, top
    /// and bottom up to half of it), filled with the line's border colour.
    pub pad: f64,
    /// Largest rotation, degrees either way.
    pub rotate: f64,
    /// Largest horizontal shear (x shift per row, as a fraction of the row's distance from the middle).
    pub shear: f64,
    /// Largest contrast change: contrast is scaled by a factor in `[1 - contrast, 1 + contrast]`, brightness
    /// shifted by up to `contrast × 64` grey levels.
    pub contrast: f64,
    /// Probability of a 3×3 Gaussian blur.
    pub blur: f64,
    /// Largest standard deviation of Gaussian pixel noise, as a fraction of 255.
    pub noise: f64,
}

impl Default for TextAugment {
    fn default() -> Self {
        Self { enabled: false, pad: 0.25, rotate: 2.0, shear: 0.2, contrast: 0.3, blur: 0.2, noise: 0.03 }
    }
}

impl TextAugment {
    /// No augmentation.
    pub fn none() -> Self {
        Self { enabled: false, pad: 0.0, rotate: 0.0, shear: 0.0, contrast: 0.0, blur: 0.0, noise: 0.0 }
    }

    /// The default strengths, switched on.
    pub fn recommended() -> Self {
        Self { enabled: true, ..Self::default() }
    }

    /// The transforms training applies: these when enabled, none otherwise.
    pub fn effective(&self) -> Self {
        if self.enabled {
            self.clone()
        } else {
            Self::none()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        for (name, v, max) in [
            ("pad", self.pad, 2.0),
            ("rotate", self.rotate, 45.0),
            ("shear", self.shear, 1.0),
            ("contrast", self.contrast, 1.0),
            ("blur", self.blur, 1.0),
            ("noise", self.noise, 1.0),
        ] {
            if !(0.0..=max).contains(&v) {
                return Err(format!("{name} {v} is not in [0, {max}]"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;
    use serde_json::json;

    #[test]
    fn keys_added_later_keep_what_older_runs_trained_with() {
        let new = TrainConfig::resolve(None, &json!({"data": "/d", "task": "ocr", "ocr": {"augment": {"pad": 0.1}}}))
            .unwrap();
        let ocr: OcrSettings = new.task_settings().unwrap();
        assert_eq!((ocr.backbone, ocr.frame_shortcut, ocr.augment.pad), (TextBackbone::VggBn, true, 0.1));
        assert!(!ocr.augment.enabled);
        assert_eq!(ocr.model_name("convnext_tiny"), "vgg_bn");
        let mut saved = new.clone();
        saved.set_task_settings(&ocr);
        let section = saved.sections.get_mut("ocr").unwrap();
        section.as_object_mut().unwrap().remove("backbone");
        section.as_object_mut().unwrap().remove("frame_shortcut");
        section["augment"].as_object_mut().unwrap().remove("enabled");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, saved.to_yaml()).unwrap();
        let old: OcrSettings = TrainConfig::load_saved::<OcrSettings>(&path).unwrap().task_settings().unwrap();
        assert_eq!((old.backbone, old.frame_shortcut), (TextBackbone::Convnext, true));
        assert!(old.augment.enabled, "older OCR runs trained with augmentation");
        assert_eq!(old.augment.effective(), old.augment);
        assert_eq!(ocr.augment.effective(), TextAugment::none());
        assert_eq!(old.model_name("convnext_tiny"), "convnext_tiny");
    }

    #[test]
    fn the_height_must_be_a_multiple_of_the_bodys_height_stride() {
        let vgg = OcrSettings { height: 48, ..OcrSettings::default() };
        assert_eq!(vgg.backbone, TextBackbone::VggBn);
        assert!(vgg.validate().is_ok(), "48 = 3 · 16");
        let convnext = OcrSettings { backbone: TextBackbone::Convnext, ..vgg };
        let (key, reason) = convnext.validate().unwrap_err();
        assert_eq!(key, "ocr.height");
        assert!(reason.contains("32") && reason.contains("convnext"), "{reason}");
        let (key, _) = OcrSettings { height: 24, ..OcrSettings::default() }.validate().unwrap_err();
        assert_eq!(key, "ocr.height");
    }
}
