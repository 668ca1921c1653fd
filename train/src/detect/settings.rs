//! Detection's own section of the training config (`detect:`, its `Task::Settings`): the data layout, the
//! detector's size, its augmentation, the NMS that validation applies (and the export records), and the score
//! threshold of the precision / recall / F1 metrics.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use kiln_infer::nms::NmsConfig;
use kiln_infer::Exif;
use kiln_models::BoxActivation;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::config::TaskSettings;
use crate::data::Split;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectSettings {
    /// `csv`, `coco` or `yolo`; unset: recognised from the folder.
    pub layout: Option<Layout>,
    /// COCO files and image folders named split by split, for any COCO arrangement (as torchvision's
    /// `CocoDetection` and Ultralytics' data YAML take them); relative paths are relative to the data root.
    /// Implies the COCO layout.
    pub coco: Option<CocoPaths>,
    /// The frame the boxes are in: `apply` (the default; images as displayed, their EXIF orientation applied, as
    /// Ultralytics reads them) or `ignore` (the pixels as stored, as torchvision's `CocoDetection` reads them).
    /// Training, validation, the exported `Detector`, drawn boxes and COCO results all read images this way.
    pub exif: Exif,
    /// FPN width.
    pub fpn_channels: i64,
    /// Convolutions in each head tower (4, torchvision's FCOS).
    pub head_convs: usize,
    /// Pyramid levels from P3 (3: P3–P5, up to 5: P3–P7).
    pub num_levels: usize,
    /// Where each location sits in its feature-map cell, in strides from the top-left corner: 0 as torchvision's
    /// FCOS (the default), 0.5 the cell's centre. A run config written before this key existed means 0.5, what
    /// that run trained with ([`TaskSettings::added_later`]).
    pub location_offset: f64,
    /// The box regression's activation: `exp` (the default, the FCOS paper's), `relu` (torchvision's) or
    /// `softplus`. ReLU's regression can die for good on small sets (see [`BoxActivation`]); exp trained best side
    /// by side with torchvision (README). A run config written before this key existed means `relu`, what that
    /// run trained with.
    pub box_activation: BoxActivation,
    pub augment: AugmentConfig,
    pub nms: NmsConfig,
    /// The score above which a detection counts for precision, recall, F1 and mean IoU.
    pub score_threshold: f64,
    /// Draw each training epoch's images with replacement, weighted so that rare classes are seen as often as
    /// common ones (an image weighs the mean of its boxes' inverse class frequencies; negatives the mean weight).
    pub balanced_sampling: bool,
}

impl Default for DetectSettings {
    fn default() -> Self {
        Self {
            layout: None,
            coco: None,
            exif: Exif::Apply,
            fpn_channels: 96,
            head_convs: 4,
            num_levels: 3,
            location_offset: kiln_models::detector::TORCHVISION_LOCATION_OFFSET,
            box_activation: BoxActivation::Exp,
            augment: AugmentConfig::default(),
            nms: NmsConfig::default(),
            score_threshold: 0.3,
            balanced_sampling: false,
        }
    }
}

impl TaskSettings for DetectSettings {
    fn added_later() -> Vec<(&'static str, Value)> {
        vec![
            ("location_offset", Value::from(kiln_models::detector::legacy_location_offset())),
            ("box_activation", serde_json::to_value(BoxActivation::Relu).expect("serialises")),
        ]
    }

    /// Checks the values; the error names the key.
    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: String| Err((format!("detect.{key}"), reason));
        if self.fpn_channels < 8 {
            return bad("fpn_channels", format!("{} is below 8", self.fpn_channels));
        }
        if !(1..=8).contains(&self.head_convs) {
            return bad("head_convs", format!("{} is not in 1..=8", self.head_convs));
        }
        if !(3..=5).contains(&self.num_levels) {
            return bad("num_levels", format!("{} is not in 3..=5", self.num_levels));
        }
        if !(0.0..1.0).contains(&self.location_offset) {
            return bad("location_offset", format!("{} is not in [0, 1)", self.location_offset));
        }
        if !(0.0..=1.0).contains(&self.score_threshold) {
            return bad("score_threshold", format!("{} is not in [0, 1]", self.score_threshold));
        }
        let nms = &self.nms;
        if !(0.0..=1.0).contains(&nms.iou_threshold) || !(0.0..=1.0).contains(&nms.score_threshold) {
            return bad("nms", "iou_threshold and score_threshold must be in [0, 1]".into());
        }
        if nms.max_detections == 0 {
            return bad("nms.max_detections", "must be at least 1".into());
        }
        if let Some(coco) = &self.coco {
            if let Some(layout) = self.layout.filter(|l| *l != Layout::Coco) {
                return bad("coco", format!("names COCO files, but detect.layout is {layout}"));
            }
            if coco.splits().next().is_none() {
                return bad(
                    "coco",
                    "names no split: give train, val or test, each {images: DIR, annotations: FILE}".into(),
                );
            }
        }
        self.augment.validate().or_else(|reason| bad("augment", reason))
    }
}

/// One split's COCO annotation file and the folder its `file_name`s are relative to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CocoSplitPaths {
    pub images: PathBuf,
    pub annotations: PathBuf,
}

/// `detect.coco`: the splits' COCO files and image folders.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CocoPaths {
    pub train: Option<CocoSplitPaths>,
    pub val: Option<CocoSplitPaths>,
    pub test: Option<CocoSplitPaths>,
}

impl CocoPaths {
    /// The splits named, in train, val, test order.
    pub fn splits(&self) -> impl Iterator<Item = (Split, &CocoSplitPaths)> {
        [(Split::Train, &self.train), (Split::Val, &self.val), (Split::Test, &self.test)]
            .into_iter()
            .filter_map(|(split, paths)| Some((split, paths.as_ref()?)))
    }
}

/// An annotation layout on disk. Parses from `csv`, `coco` or `yolo` (any case); displays as those names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `ROOT/images/` and `ROOT/{train,val,test}.csv` with columns `filename,xmin,ymin,xmax,ymax,label`.
    Csv,
    /// COCO JSON, as Roboflow exports it or in the classic `annotations/instances_*.json` arrangement.
    Coco,
    /// YOLO txt labels with `ROOT/data.yaml`.
    Yolo,
}

impl Layout {
    pub const ALL: [Layout; 3] = [Layout::Csv, Layout::Coco, Layout::Yolo];

    pub fn name(self) -> &'static str {
        match self {
            Layout::Csv => "csv",
            Layout::Coco => "coco",
            Layout::Yolo => "yolo",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Layout {
    type Err = ParseLayoutError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        Layout::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| ParseLayoutError { name: s.to_string() })
    }
}

/// The error of `"…".parse::<Layout>()`.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("unknown annotation layout '{name}' (expected csv, coco or yolo)")]
pub struct ParseLayoutError {
    pub name: String,
}

/// What to randomise; the defaults are YOLO's. In a config file every field may be left out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Probability of a horizontal flip.
    pub hflip: f64,
    /// Range of the random scale factor applied to the letterboxed (or mosaic) image, `[low, high]`.
    pub scale: [f64; 2],
    /// Largest random shift, as a fraction of `size`, in each direction and on each axis.
    pub translate: f64,
    /// Hue jitter amplitude, a fraction of the hue circle: the hue shifts by up to `±hsv_h`.
    pub hsv_h: f64,
    /// Saturation jitter amplitude: saturation is multiplied by a gain in `1 ± hsv_s`.
    pub hsv_s: f64,
    /// Value (brightness) jitter amplitude: value is multiplied by a gain in `1 ± hsv_v`.
    pub hsv_v: f64,
    /// Probability of building a 4-image mosaic instead of using the sample alone.
    pub mosaic: f64,
    /// A box cut by the crop is kept only if at least this fraction of its area (before cutting) stays visible.
    pub min_visible: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            hflip: 0.5,
            scale: [0.5, 1.5],
            translate: 0.1,
            hsv_h: 0.015,
            // Half Ultralytics' 0.7 / 0.4: on both small real-object sets of `scripts/make_detection_sets.py`
            // (60 epochs, 3 seeds) halving raised test mAP@[.5:.95] (0.105 -> 0.133 and 0.116 -> 0.121); the
            // full strength cost 0.037 against none on grey digits. See the README's detection recipe table.
            hsv_s: 0.35,
            hsv_v: 0.2,
            mosaic: 0.5,
            min_visible: 0.25,
        }
    }
}

impl AugmentConfig {
    /// No augmentation at all: [`augment`] then returns the letterbox (minus boxes under [`MIN_BOX_PX`]).
    pub fn none() -> Self {
        AugmentConfig {
            hflip: 0.0,
            scale: [1.0, 1.0],
            translate: 0.0,
            hsv_h: 0.0,
            hsv_s: 0.0,
            hsv_v: 0.0,
            mosaic: 0.0,
            min_visible: 0.25,
        }
    }

    /// Checks every field's range; the error names the field, the allowed range and the value.
    pub fn validate(&self) -> Result<(), String> {
        let unit = |name: &str, what: &str, v: f64| {
            if v.is_finite() && (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("augment `{name}` must be {what} between 0 and 1, got {v}"))
            }
        };
        unit("hflip", "a probability", self.hflip)?;
        unit("mosaic", "a probability", self.mosaic)?;
        unit("min_visible", "a fraction", self.min_visible)?;
        unit("translate", "a fraction of the image size", self.translate)?;
        unit("hsv_h", "a fraction of the hue circle", self.hsv_h)?;
        unit("hsv_s", "a gain amplitude", self.hsv_s)?;
        unit("hsv_v", "a gain amplitude", self.hsv_v)?;
        let [low, high] = self.scale;
        if !(low.is_finite() && high.is_finite() && low > 0.0) {
            return Err(format!("augment `scale` must be two positive finite factors, got [{low}, {high}]"));
        }
        if low > high {
            return Err(format!("augment `scale` must be [low, high] with low <= high, got [{low}, {high}]"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{TaskKind, TrainConfig};
    use serde_json::json;

    #[test]
    fn keys_added_later_keep_what_older_runs_trained_with() {
        // A new config starts from today's defaults, given keys or not; a saved run config without a key reads as
        // that run trained.
        let new =
            TrainConfig::resolve(None, &json!({"data": "/d", "task": "detect", "detect": {"head_convs": 2}})).unwrap();
        let settings: DetectSettings = new.task_settings().unwrap();
        assert_eq!((settings.location_offset, settings.head_convs), (0.0, 2));
        assert_eq!(settings.box_activation, BoxActivation::Exp);
        let mut saved = new.clone();
        saved.set_task_settings(&settings);
        let section = saved.sections.get_mut("detect").unwrap().as_object_mut().unwrap();
        section.remove("location_offset");
        section.remove("box_activation");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, saved.to_yaml()).unwrap();
        let old: DetectSettings = TrainConfig::load_saved::<DetectSettings>(&path).unwrap().task_settings().unwrap();
        assert_eq!((old.location_offset, old.box_activation, old.head_convs), (0.5, BoxActivation::Relu, 2));
        let bad =
            TrainConfig::resolve(None, &json!({"data": "/d", "task": "detect", "detect": {"location_offset": 1.0}}))
                .unwrap();
        let err = bad.task_settings::<DetectSettings>().unwrap_err().to_string();
        assert!(err.contains("detect.location_offset"), "{err}");
        assert_eq!(
            TrainConfig { task: TaskKind::Detect, ..TrainConfig::default() }.task_settings::<DetectSettings>().unwrap(),
            DetectSettings::default()
        );
    }

    #[test]
    fn exif_and_named_coco_files_read_from_the_config_and_are_checked() {
        let settings = |detect: serde_json::Value| {
            TrainConfig::resolve(None, &json!({"data": "/d", "task": "detect", "detect": detect}))
                .unwrap()
                .task_settings::<DetectSettings>()
        };
        let read = settings(json!({
            "exif": "ignore",
            "coco": {"train": {"images": "train/images", "annotations": "train/instances_train.json"}}
        }))
        .unwrap();
        assert_eq!(read.exif, Exif::Ignore);
        let train = read.coco.unwrap().train.unwrap();
        assert_eq!(train.annotations, PathBuf::from("train/instances_train.json"));
        assert_eq!(settings(json!({})).unwrap().exif, Exif::Apply, "apply by default");
        let refused = |detect: serde_json::Value| settings(detect).unwrap_err().to_string();
        let err = refused(json!({"exif": "rotate"}));
        assert!(err.contains("rotate"), "{err}");
        let split = json!({"images": "i", "annotations": "a.json"});
        assert!(refused(json!({"layout": "yolo", "coco": {"val": split}})).contains("detect.layout is yolo"));
        assert!(refused(json!({"coco": {}})).contains("names no split"));
        assert!(refused(json!({"coco": {"val": {"images": "i"}}})).contains("annotations"));
    }
}
