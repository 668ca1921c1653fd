//! Detection's own section of the training config (`detect:`, its `Task::Settings`): the data layout, the
//! detector's size, its augmentation, the NMS that validation applies (and the export records), and the score
//! threshold of the precision / recall / F1 metrics.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use kiln_infer::nms::NmsConfig;
use kiln_infer::Exif;
use kiln_models::faster_rcnn::{AnchorConfig, RoiSettings, RpnSettings};
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
    /// What the run (best checkpoint, early stopping) and a study optimise: `map` (COCO mAP@[.5:.95], the default)
    /// or `map50_f1` (the Faster R-CNN seed's score, 0.5 · mAP@.5 + 0.5 · F1 at `score_threshold`).
    pub objective: DetectObjective,
    /// The detector: `fcos` (one-stage and anchor-free, the default) or `faster_rcnn` (two-stage, torchvision's
    /// v1 on the same backbone and data).
    pub head: DetectHead,
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
    /// Faster R-CNN's anchors: sizes for each of P2–P6 and the aspect ratios (torchvision's by default).
    pub anchors: AnchorConfig,
    /// Faster R-CNN's region proposal network (torchvision's defaults).
    pub rpn: RpnSettings,
    /// Faster R-CNN's second stage (torchvision's defaults).
    pub roi_heads: RoiSettings,
}

/// `detect.objective`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectObjective {
    #[default]
    Map,
    Map50F1,
}

impl DetectObjective {
    /// The validation metric (`results.csv`'s `val_<name>`).
    pub fn metric(self) -> &'static str {
        match self {
            DetectObjective::Map => "map",
            DetectObjective::Map50F1 => "map50_f1",
        }
    }
}

/// `detect.head`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectHead {
    #[default]
    Fcos,
    FasterRcnn,
}

impl DetectHead {
    pub fn name(self) -> &'static str {
        match self {
            DetectHead::Fcos => "fcos",
            DetectHead::FasterRcnn => "faster_rcnn",
        }
    }
}

impl fmt::Display for DetectHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
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
            head: DetectHead::Fcos,
            objective: DetectObjective::Map,
            anchors: AnchorConfig::default(),
            rpn: RpnSettings::default(),
            roi_heads: RoiSettings::default(),
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
        if self.head == DetectHead::FasterRcnn {
            self.anchors.check(5).or_else(|reason| bad("anchors", reason))?;
            self.validate_two_stage().or_else(|(key, reason)| bad(&key, reason))?;
        }
        self.augment.validate().or_else(|reason| bad("augment", reason))
    }
}

impl DetectSettings {
    /// The ranges of the RPN's and the RoI heads' settings; the key is relative to `detect.`.
    fn validate_two_stage(&self) -> Result<(), (String, String)> {
        let (r, h) = (&self.rpn, &self.roi_heads);
        let fraction = |key: &str, v: f64, low_open: bool| {
            let ok = v.is_finite() && v <= 1.0 && if low_open { v > 0.0 } else { v >= 0.0 };
            if ok {
                Ok(())
            } else {
                Err((key.to_string(), format!("{v} is not in {}0, 1]", if low_open { "(" } else { "[" })))
            }
        };
        let at_least_one = |key: &str, v: i64| {
            if v >= 1 {
                Ok(())
            } else {
                Err((key.to_string(), format!("{v} (need at least 1)")))
            }
        };
        for (key, v) in [
            ("rpn.nms_thresh", r.nms_thresh),
            ("rpn.fg_iou_thresh", r.fg_iou_thresh),
            ("rpn.bg_iou_thresh", r.bg_iou_thresh),
            ("rpn.score_thresh", r.score_thresh),
            ("roi_heads.fg_iou_thresh", h.fg_iou_thresh),
            ("roi_heads.bg_iou_thresh", h.bg_iou_thresh),
        ] {
            fraction(key, v, false)?;
        }
        fraction("rpn.positive_fraction", r.positive_fraction, true)?;
        fraction("roi_heads.positive_fraction", h.positive_fraction, true)?;
        if r.bg_iou_thresh > r.fg_iou_thresh || h.bg_iou_thresh > h.fg_iou_thresh {
            return Err(("rpn".into(), "bg_iou_thresh must not be above fg_iou_thresh".into()));
        }
        for (key, v) in [
            ("rpn.pre_nms_top_n_train", r.pre_nms_top_n_train),
            ("rpn.post_nms_top_n_train", r.post_nms_top_n_train),
            ("rpn.pre_nms_top_n_test", r.pre_nms_top_n_test),
            ("rpn.post_nms_top_n_test", r.post_nms_top_n_test),
            ("rpn.batch_size_per_image", r.batch_size_per_image as i64),
            ("roi_heads.batch_size_per_image", h.batch_size_per_image as i64),
            ("roi_heads.representation_size", h.representation_size),
            ("roi_heads.pool_size", h.pool_size),
            ("roi_heads.sampling_ratio", h.sampling_ratio),
            ("roi_heads.candidates", h.candidates),
        ] {
            at_least_one(key, v)?;
        }
        if !(r.min_size.is_finite() && r.min_size >= 0.0 && h.min_size.is_finite() && h.min_size >= 0.0) {
            return Err(("rpn.min_size".into(), "sizes must be finite and not negative".into()));
        }
        Ok(())
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

    #[test]
    fn the_head_objective_and_two_stage_settings_are_read_and_checked() {
        let settings = |detect: serde_json::Value| {
            TrainConfig::resolve(None, &json!({"data": "/d", "task": "detect", "detect": detect}))
                .unwrap()
                .task_settings::<DetectSettings>()
        };
        let read = settings(json!({"head": "faster_rcnn", "objective": "map50_f1", "anchors": {"sizes": [[8], [16], [32], [64], [128]]}}))
            .unwrap();
        assert_eq!((read.head, read.objective.metric()), (DetectHead::FasterRcnn, "map50_f1"));
        assert_eq!(read.anchors.aspect_ratios, [0.5, 1.0, 2.0], "unnamed anchor keys keep torchvision's");
        assert_eq!(
            (settings(json!({})).unwrap().head, settings(json!({})).unwrap().objective),
            (DetectHead::Fcos, DetectObjective::Map)
        );
        let refused = |detect: serde_json::Value| settings(detect).unwrap_err().to_string();
        let err = refused(json!({"head": "faster_rcnn", "anchors": {"sizes": [[32], [64]]}}));
        assert!(err.contains("detect.anchors") && err.contains("2 size lists for 5"), "{err}");
        let err = refused(json!({"head": "faster_rcnn", "rpn": {"positive_fraction": 0.0}}));
        assert!(err.contains("detect.rpn.positive_fraction"), "{err}");
        let err = refused(json!({"head": "faster_rcnn", "roi_heads": {"sampling_ratio": 0}}));
        assert!(err.contains("detect.roi_heads.sampling_ratio"), "{err}");
        assert!(refused(json!({"objective": "f1"})).contains("f1"));
        assert!(refused(json!({"head": "yolo"})).contains("yolo"));
        // FCOS ignores the two-stage settings: an odd value there is no error until the head is faster_rcnn.
        assert!(settings(json!({"anchors": {"sizes": [[32]]}})).is_ok());
    }
}
