//! The self-describing metadata kiln stores in an ONNX model's `metadata_props` under the key `kiln`, as JSON.
//! The inference side reads only this, never the training config.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The `metadata_props` key holding [`ModelMetadata`] as JSON.
pub const METADATA_KEY: &str = "kiln";
/// The schema version this kiln writes and the newest it reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Everything needed to run the model: what it is, what it takes, what it returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub schema_version: u32,
    pub kiln_version: String,
    /// `classify`, `detect` or `ocr`.
    pub task: String,
    /// Architecture family (`convnext`) and variant (`convnext_atto`).
    pub architecture: String,
    pub variant: String,
    pub class_names: Vec<String>,
    pub input: InputSpec,
    pub outputs: Vec<OutputSpec>,
    /// `fp32`, `fp16` (weights and compute) or `int8` (see `quantization`).
    pub precision: String,
    pub opset: i64,
    /// Where the weights came from: the checkpoint's epoch and validation metrics.
    pub training: TrainingInfo,
    /// Detection: the non-maximum suppression the model was validated with (absent for other tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nms: Option<NmsSettings>,
    /// Text recognition: how the per-frame scores are decoded (absent for other tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctc: Option<CtcSettings>,
    /// int8 models: how they were quantized (absent for float models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantizationInfo>,
    /// Classification: the temperature the exported logits are divided by before the softmax (absent when the
    /// model is not calibrated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_scaling: Option<TemperatureScaling>,
}

/// Temperature scaling folded into a classifier: `logits = z / temperature`, `probs = softmax(logits)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TemperatureScaling {
    pub temperature: f64,
    /// The split it was fitted on, and how many images that had.
    pub fitted_on: String,
    pub images: usize,
    /// Negative log-likelihood and expected calibration error (15 bins) on that split, before and after.
    pub nll_before: f64,
    pub nll_after: f64,
    pub ece_before: f64,
    pub ece_after: f64,
}

/// How an int8 model was made from its float export.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizationInfo {
    /// `static` (activation ranges calibrated ahead of time) or `dynamic` (measured at run time).
    pub mode: String,
    /// The op families computed in int8 (`linear`, `conv`, `depthwise`); everything else is float32.
    pub families: Vec<String>,
    /// One weight scale per output channel (else one per tensor).
    pub per_channel: bool,
    /// Static models: how the activation ranges were chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationInfo>,
}

/// The calibration behind a static int8 model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationInfo {
    /// `minmax`, `percentile:P` or `entropy`.
    pub method: String,
    pub images: usize,
    /// Where the images came from (a folder, or a split of the run's dataset).
    pub source: String,
}

/// How a text recognizer's output is read: per-frame probabilities over `blank` and the characters, where
/// output class `c` is `class_names[c - 1]` for `c > blank` (kiln's blank is 0), and a line `w` pixels wide
/// after the input's resize occupies the first `ceil(w / width_stride)` frames (the rest is padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtcSettings {
    pub blank: usize,
    pub width_stride: u32,
}

/// Non-maximum suppression settings: keep a box unless a kept box of the same class (any class when
/// `class_agnostic`) overlaps it with IoU above `iou_threshold`; boxes scoring under `score_threshold` are dropped
/// first, at most `pre_nms_top_k` candidates enter and `max_detections` leave.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NmsSettings {
    pub iou_threshold: f32,
    pub score_threshold: f32,
    pub max_detections: usize,
    pub class_agnostic: bool,
    pub pre_nms_top_k: usize,
    /// The graph applies these settings itself (outputs `num_detections`, `det_boxes`, `det_scores`,
    /// `det_classes`) instead of returning every candidate (`boxes`, `scores`).
    #[serde(default)]
    pub in_graph: bool,
}

/// The image input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub name: String,
    /// `[N, C, H, W]`; `null` marks a dimension chosen at run time (a dynamic batch).
    pub shape: Vec<Option<i64>>,
    /// `NCHW`.
    pub layout: String,
    /// `float32` or `float16`.
    pub dtype: String,
    /// Channel order: `RGB`.
    pub color: String,
    /// How an image is brought to `size`: `stretch` (resize to exactly height × width, ignoring aspect ratio),
    /// `letterbox`, `fit_height` (text lines: resize to the height keeping the aspect ratio, at most the width,
    /// padded on the right with grey 114), or `center_crop` (timm's evaluation resize: the shorter side to
    /// `floor(size / crop_pct)`, then the centre crop).
    pub resize: String,
    /// With `center_crop`: the fraction of the resized image the crop keeps (absent: 0.875, timm's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop_pct: Option<f32>,
    /// `[height, width]`.
    pub size: [u32; 2],
    /// The EXIF convention the model was trained with: `ignore` (images read as stored); absent means `apply`
    /// (images read as displayed, their EXIF orientation applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exif: Option<String>,
    /// Pixel values are divided by 255, then normalised per channel: `(x / 255 - mean) / std`.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// One output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputSpec {
    pub name: String,
    pub shape: Vec<Option<i64>>,
    pub dtype: String,
    /// What the values mean (e.g. "softmax probabilities over class_names").
    pub meaning: String,
}

/// The checkpoint the model was exported from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingInfo {
    pub epoch: usize,
    /// Validation metrics of the checkpoint (task-specific keys).
    pub metrics: Option<serde_json::Value>,
}

impl ModelMetadata {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("metadata serialises")
    }

    /// Parses metadata JSON; a newer schema version is an error naming both versions.
    pub fn from_json(json: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Version {
            schema_version: u32,
        }
        let version: Version = serde_json::from_str(json).map_err(|e| Error::Metadata(e.to_string()))?;
        if version.schema_version > SCHEMA_VERSION {
            return Err(Error::NewerSchema { found: version.schema_version, supported: SCHEMA_VERSION });
        }
        serde_json::from_str(json).map_err(|e| Error::Metadata(e.to_string()))
    }

    /// The precision in words: `fp32`, `fp16`, or for int8 its mode, families and calibration
    /// (`int8 static (conv, linear; minmax on 64 images)`).
    pub fn precision_description(&self) -> String {
        match &self.quantization {
            None => self.precision.clone(),
            Some(q) => {
                let calibration = q
                    .calibration
                    .as_ref()
                    .map(|c| format!("; {} on {} images", c.method, c.images))
                    .unwrap_or_default();
                format!("{} {} ({}{calibration})", self.precision, q.mode, q.families.join(", "))
            }
        }
    }

    /// Reads the metadata of a parsed model, if it has kiln's.
    pub fn from_model(model: &onnx_protobuf::ModelProto) -> Result<Option<Self>> {
        model.metadata_props.iter().find(|p| p.key == METADATA_KEY).map(|p| Self::from_json(&p.value)).transpose()
    }
}

#[cfg(test)]
pub(crate) fn example() -> ModelMetadata {
    ModelMetadata {
        schema_version: SCHEMA_VERSION,
        kiln_version: "0.1.0".into(),
        task: "classify".into(),
        architecture: "convnext".into(),
        variant: "convnext_atto".into(),
        class_names: vec!["cat".into(), "dog".into()],
        input: InputSpec {
            name: "images".into(),
            shape: vec![None, Some(3), Some(224), Some(224)],
            layout: "NCHW".into(),
            dtype: "float32".into(),
            color: "RGB".into(),
            resize: "stretch".into(),
            crop_pct: None,
            size: [224, 224],
            exif: None,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        },
        outputs: vec![OutputSpec {
            name: "logits".into(),
            shape: vec![None, Some(2)],
            dtype: "float32".into(),
            meaning: "class scores".into(),
        }],
        precision: "fp32".into(),
        opset: 17,
        training: TrainingInfo { epoch: 3, metrics: Some(serde_json::json!({"accuracy": 0.9})) },
        nms: None,
        ctc: None,
        quantization: None,
        temperature_scaling: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip() {
        let m = example();
        assert_eq!(ModelMetadata::from_json(&m.to_json()).unwrap(), m);
        assert!(!m.to_json().contains("quantization"), "absent for float models");
    }

    #[test]
    fn int8_metadata_round_trips_and_describes_itself() {
        let mut m = example();
        assert_eq!(m.precision_description(), "fp32");
        m.precision = "int8".into();
        m.quantization = Some(QuantizationInfo {
            mode: "static".into(),
            families: vec!["conv".into(), "linear".into()],
            per_channel: true,
            calibration: Some(CalibrationInfo { method: "minmax".into(), images: 64, source: "val".into() }),
        });
        assert_eq!(ModelMetadata::from_json(&m.to_json()).unwrap(), m);
        assert_eq!(m.precision_description(), "int8 static (conv, linear; minmax on 64 images)");
    }

    #[test]
    fn nms_settings_round_trip_and_are_optional() {
        let mut m = example();
        let json = m.to_json();
        assert!(!json.contains("nms"), "absent for classification: {json}");
        m.nms = Some(NmsSettings {
            iou_threshold: 0.6,
            score_threshold: 0.05,
            max_detections: 100,
            class_agnostic: false,
            pre_nms_top_k: 1000,
            in_graph: true,
        });
        assert_eq!(ModelMetadata::from_json(&m.to_json()).unwrap(), m);
        // Files written before `in_graph` existed return every candidate.
        let old = m.to_json().replace(",\"in_graph\":true", "");
        assert!(!old.contains("in_graph"), "{old}");
        assert!(!ModelMetadata::from_json(&old).unwrap().nms.unwrap().in_graph);
    }

    #[test]
    fn a_newer_schema_names_both_versions() {
        let mut v: serde_json::Value = serde_json::from_str(&example().to_json()).unwrap();
        v["schema_version"] = 2.into();
        let err = ModelMetadata::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(err.contains("version 2") && err.contains("(1)"), "{err}");
    }
}
