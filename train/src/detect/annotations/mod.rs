//! Object-detection annotations read from three on-disk layouts into one representation, [`DetectionDataset`].
//!
//! - [`Layout::Csv`]: `ROOT/images/` with `ROOT/train.csv`, `val.csv`, `test.csv`; one row per box, xyxy pixels
//!   (see `csv_layout.rs`).
//! - [`Layout::Coco`]: Roboflow's `ROOT/{train,valid,test}/_annotations.coco.json` beside the images, or the classic
//!   `ROOT/annotations/instances_{train,val,test}[YEAR].json` with images in `ROOT/{split}[YEAR]/` or
//!   `ROOT/images/{split}[YEAR]/`; `[x, y, w, h]` pixels (see `coco_layout.rs`).
//! - [`Layout::Yolo`]: `ROOT/data.yaml` (or `data.yml`), `ROOT/images/{train,val,test}/` (or the yaml's
//!   `train:`/`val:`/`test:` folders) and `labels/.../<stem>.txt` with `class cx cy w h` normalised to [0, 1]
//!   (see `yolo_layout.rs`).
//!
//! Rules common to all layouts:
//! - Splits are `train`, `val` and `test` ([`Split`]); Roboflow's `valid` folder is `val`. A split without
//!   annotations is empty (at least one split must exist).
//! - Boxes are xyxy pixels in the image's own size ([`BoxAnnotation::bbox`]). A box with non-positive area, or
//!   lying wholly outside its image, is dropped; a box reaching outside is clipped to the image. Both are listed
//!   in [`AnnotationReport`] with their annotation file and line or annotation id.
//! - Images without boxes are negatives and are kept.
//! - An image named by an annotation file but missing from disk is skipped and listed, not an error.
//! - A path in an annotation file that is absolute or contains `..` is an error naming the file and line.
//! - Unknown classes (a COCO `category_id` missing from `categories`, a YOLO class id beyond `names`) are errors.
//! - Samples are sorted by path within each split; class lists are fixed by the rules of each layout (see
//!   [`DetectionDataset::class_names`]), so reading the same folder twice gives the same result.

mod boxes;
mod coco_layout;
mod csv_layout;
mod error;
mod paths;
mod report;
mod yolo_layout;

#[cfg(test)]
mod exif_tests;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use kiln_infer::Exif;

pub use error::{AnnotationError, Location, ParseLayoutError};
use paths::shown;
pub use paths::IMAGE_EXTENSIONS;
pub use report::{AnnotationReport, BoxIssue, MissingImage, SizeMismatch, UnreadableImage, CLIP_TOLERANCE_PX};

/// A dataset split: the same `train` / `val` / `test` as classification's.
pub use crate::data::Split;

pub use crate::detect::settings::{CocoPaths, CocoSplitPaths, Layout};

/// One object box.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoxAnnotation {
    /// `[xmin, ymin, xmax, ymax]` in pixels of the image's own size, within `[0, width] x [0, height]`, with
    /// `xmin < xmax` and `ymin < ymax`.
    pub bbox: [f32; 4],
    /// Index into [`DetectionDataset::class_names`].
    pub class: usize,
    /// COCO `iscrowd`: a region of many objects. Evaluators ignore detections matched to it and do not count it as
    /// a missed object; training usually skips it. Always false for CSV and YOLO.
    pub crowd: bool,
}

/// One image and its boxes. An empty `boxes` is a negative.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectionSample {
    /// The image file: the data root joined with the image's place in the layout.
    pub path: PathBuf,
    /// The image size in pixels: read from the file (CSV, YOLO) or taken from the json (COCO).
    pub width: u32,
    pub height: u32,
    /// In the order of the annotation file.
    pub boxes: Vec<BoxAnnotation>,
}

impl DetectionSample {
    /// The image has no boxes.
    pub fn is_negative(&self) -> bool {
        self.boxes.is_empty()
    }
}

/// A read annotation set. Only paths and boxes are held; images are decoded later by the loader.
#[derive(Clone, Debug)]
pub struct DetectionDataset {
    pub root: PathBuf,
    pub layout: Layout,
    /// The EXIF convention the image sizes (and so the boxes' frame) were read with; images are decoded the same way.
    pub exif: Exif,
    /// The class names; a box's `class` indexes this list.
    ///
    /// - CSV: the sorted (byte-wise, case-sensitive) set of labels over all splits' CSVs, including labels whose
    ///   boxes were dropped or whose images are missing, so the list depends on the CSVs only.
    /// - COCO: categories ordered by category id, the union over the splits' files (a category id must name the
    ///   same class in every file), without grouping categories: a category that is the `supercategory` of another
    ///   category and that no annotation in any split uses is dropped. This removes the placeholder Roboflow puts
    ///   first (`{"id": 0, "name": <project>, "supercategory": "none"}`, parent of every real class), and keeps an
    ///   annotated parent.
    /// - YOLO: `names` from data.yaml, in id order.
    pub class_names: Vec<String>,
    pub train: Vec<DetectionSample>,
    pub val: Vec<DetectionSample>,
    pub test: Vec<DetectionSample>,
    pub report: AnnotationReport,
}

impl DetectionDataset {
    pub fn split(&self, split: Split) -> &[DetectionSample] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Boxes kept over all splits.
    pub fn num_boxes(&self) -> usize {
        Split::ALL.iter().flat_map(|s| self.split(*s)).map(|s| s.boxes.len()).sum()
    }
}

/// What a layout reader hands back.
struct Loaded {
    class_names: Vec<String>,
    /// Indexed by [`Split::index`].
    splits: [Vec<DetectionSample>; 3],
}

/// Recognises the layout of `root` from the files in it. Fails when none matches (the message lists what was
/// looked for) or when several do (name the layout explicitly then).
pub fn detect_layout(root: &Path) -> Result<Layout, AnnotationError> {
    ensure_dir(root)?;
    let mut found: Vec<(Layout, Vec<PathBuf>)> = Vec::new();
    for layout in Layout::ALL {
        let evidence = match layout {
            Layout::Csv => csv_layout::evidence(root),
            Layout::Coco => coco_layout::evidence(root)?,
            Layout::Yolo => yolo_layout::evidence(root),
        };
        if !evidence.is_empty() {
            found.push((layout, evidence));
        }
    }
    match found.len() {
        1 => Ok(found[0].0),
        0 => Err(AnnotationError::layout(
            root,
            format!(
                "no annotation layout recognised; looked for {} (csv), {} (coco), {} (yolo)",
                csv_layout::LOOKED_FOR,
                coco_layout::LOOKED_FOR,
                yolo_layout::LOOKED_FOR
            ),
        )),
        _ => {
            let listed: Vec<String> = found
                .iter()
                .map(|(layout, files)| {
                    let names: Vec<String> = files.iter().map(|f| shown(f, root).display().to_string()).collect();
                    format!("{layout} ({})", names.join(", "))
                })
                .collect();
            Err(AnnotationError::layout(
                root,
                format!("several annotation layouts found: {}; name the layout explicitly", listed.join("; ")),
            ))
        }
    }
}

/// How an annotation set is read: its layout (`None`: recognised), the EXIF convention of its boxes, and COCO files
/// named explicitly.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    pub layout: Option<Layout>,
    pub exif: Exif,
    /// `detect.coco`: implies the COCO layout; relative paths are relative to the root.
    pub coco: Option<CocoPaths>,
}

/// Reads the annotation set at `root`, in `layout` or, when `None`, the layout [`detect_layout`] recognises, with
/// images read as displayed (EXIF orientation applied).
pub fn open(root: &Path, layout: Option<Layout>) -> Result<DetectionDataset, AnnotationError> {
    open_with(root, &OpenOptions { layout, ..Default::default() })
}

/// [`open`] as `options` say: image sizes read under their EXIF convention (the boxes' frame), COCO files named.
pub fn open_with(root: &Path, options: &OpenOptions) -> Result<DetectionDataset, AnnotationError> {
    ensure_dir(root)?;
    let exif = options.exif;
    let layout = match (options.layout, &options.coco) {
        (_, Some(_)) => Layout::Coco,
        (Some(layout), None) => layout,
        (None, None) => detect_layout(root)?,
    };
    let mut report = AnnotationReport::default();
    let loaded = match layout {
        Layout::Csv => csv_layout::read(root, exif, &mut report)?,
        Layout::Coco => coco_layout::read(root, options.coco.as_ref(), exif, &mut report)?,
        Layout::Yolo => yolo_layout::read(root, exif, &mut report)?,
    };
    let [mut train, mut val, mut test] = loaded.splits;
    for split in [&mut train, &mut val, &mut test] {
        split.sort_by(|a, b| a.path.cmp(&b.path));
    }
    let class_names = loaded.class_names;
    Ok(DetectionDataset { root: root.to_path_buf(), layout, exif, class_names, train, val, test, report })
}

fn ensure_dir(root: &Path) -> Result<(), AnnotationError> {
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(AnnotationError::layout(root, "not a directory")),
        Err(e) => Err(AnnotationError::io(root, e)),
    }
}

/// Fails when two classes share a name: a box's class would be ambiguous once written out by name.
fn check_unique_names(names: &[String], file: &Path, at: Location) -> Result<(), AnnotationError> {
    let mut seen = std::collections::BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        if let Some(first) = seen.insert(name.as_str(), i) {
            return Err(AnnotationError::malformed(
                file,
                at,
                format!("class name '{name}' is used twice (classes {first} and {i})"),
            ));
        }
    }
    Ok(())
}
