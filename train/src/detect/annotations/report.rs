//! [`AnnotationReport`]: what was skipped, dropped or changed while reading an annotation set.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use kiln_infer::Exif;

use super::{Location, Split};

/// Everything the readers skipped or changed instead of failing. Entries are in reading order: split by split
/// (train, val, test), and within a split in the order of the annotation files and their lines / ids, so the
/// report is the same on every run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AnnotationReport {
    /// Images that annotations refer to but that are not on disk; the image and its boxes are left out.
    pub missing_images: Vec<MissingImage>,
    /// Images that exist but whose size could not be read (CSV and YOLO read it from the file); left out.
    pub unreadable_images: Vec<UnreadableImage>,
    /// Boxes left out because they have no area (`xmax <= xmin` or `ymax <= ymin`, a COCO `w` or `h <= 0`) or lie
    /// wholly outside their image.
    pub dropped_boxes: Vec<BoxIssue>,
    /// Boxes that reached outside their image and were cut to it (by more than [`CLIP_TOLERANCE_PX`]).
    pub clipped_boxes: Vec<BoxIssue>,
    /// YOLO label files with no image of the same stem (such as a stray `classes.txt`); ignored.
    pub orphan_labels: Vec<PathBuf>,
    /// COCO images whose recorded `width`/`height` is not their size as read under `detect.exif`; the image's
    /// real size is used.
    pub size_mismatches: Vec<SizeMismatch>,
}

/// A COCO image whose recorded size disagrees with the image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SizeMismatch {
    pub split: Split,
    pub image: PathBuf,
    /// The annotation file that records the size.
    pub file: PathBuf,
    /// `(width, height)` as the file records it.
    pub recorded: (u32, u32),
    /// `(width, height)` as the image is read under the EXIF convention in use.
    pub read: (u32, u32),
    /// The convention in use (`apply` or `ignore`).
    pub exif: Exif,
    /// The recorded size is the image's size under the other convention: its boxes were most likely drawn on
    /// the image read that other way.
    pub other_convention: bool,
}

/// How far (in pixels) a box may reach outside its image before the clipping is reported. Such boxes are still
/// clamped to the image; the tolerance only keeps rounding noise (YOLO's normalised values) out of the report.
pub const CLIP_TOLERANCE_PX: f64 = 0.01;

/// An image named by an annotation file but absent from disk.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MissingImage {
    pub split: Split,
    /// Where the image was expected.
    pub image: PathBuf,
    /// The annotation file that names it.
    pub referenced_by: PathBuf,
    /// How many boxes were left out with it.
    pub boxes: usize,
}

/// An image file whose size could not be read.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UnreadableImage {
    pub split: Split,
    pub image: PathBuf,
    pub reason: String,
}

/// One dropped or clipped box.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BoxIssue {
    pub split: Split,
    /// The annotation file the box comes from.
    pub file: PathBuf,
    /// Where in it: a line (CSV, YOLO) or an annotation id (COCO).
    pub at: Location,
    /// The image the box belongs to.
    pub image: PathBuf,
    /// What happened, with the box's coordinates (xyxy pixels) before and, when clipped, after.
    pub reason: String,
}

impl AnnotationReport {
    /// Nothing was skipped, dropped or clipped.
    pub fn is_clean(&self) -> bool {
        self.missing_images.is_empty()
            && self.unreadable_images.is_empty()
            && self.dropped_boxes.is_empty()
            && self.clipped_boxes.is_empty()
            && self.orphan_labels.is_empty()
            && self.size_mismatches.is_empty()
    }

    /// One line of counts, such as `2 missing images, 1 dropped box, 3 clipped boxes`; `no issues` when clean.
    pub fn summary(&self) -> String {
        let counts = [
            (self.missing_images.len(), "missing image", "missing images"),
            (self.unreadable_images.len(), "unreadable image", "unreadable images"),
            (self.dropped_boxes.len(), "dropped box", "dropped boxes"),
            (self.clipped_boxes.len(), "clipped box", "clipped boxes"),
            (self.orphan_labels.len(), "label file without image", "label files without image"),
            (self.size_mismatches.len(), "image size unlike its record", "image sizes unlike their records"),
        ];
        let parts: Vec<String> = counts
            .iter()
            .filter(|(n, _, _)| *n > 0)
            .map(|(n, one, many)| format!("{n} {}", if *n == 1 { one } else { many }))
            .collect();
        if parts.is_empty() {
            "no issues".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// The summary line, then one line per entry.
impl fmt::Display for AnnotationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "annotations: {}", self.summary())?;
        for m in &self.missing_images {
            writeln!(
                f,
                "  [{}] missing image {} (named in {}, {} left out)",
                m.split,
                m.image.display(),
                m.referenced_by.display(),
                if m.boxes == 1 { "1 box".to_string() } else { format!("{} boxes", m.boxes) }
            )?;
        }
        for u in &self.unreadable_images {
            writeln!(f, "  [{}] unreadable image {}: {}", u.split, u.image.display(), u.reason)?;
        }
        for (kind, list) in [("dropped", &self.dropped_boxes), ("clipped", &self.clipped_boxes)] {
            for b in list {
                writeln!(
                    f,
                    "  [{}] {kind} box {}{} ({}): {}",
                    b.split,
                    b.file.display(),
                    b.at,
                    b.image.display(),
                    b.reason
                )?;
            }
        }
        for o in &self.orphan_labels {
            writeln!(f, "  label file without image {}", o.display())?;
        }
        for m in &self.size_mismatches {
            let (rw, rh) = m.recorded;
            let (w, h) = m.read;
            let hint = match (m.other_convention, m.exif) {
                (false, _) => "",
                (true, Exif::Apply) => {
                    "; that is its size as stored, EXIF orientation ignored: if its boxes were drawn on the stored \
                     pixels (as torchvision reads COCO), set detect.exif: ignore"
                }
                (true, Exif::Ignore) => {
                    "; that is its size as displayed, EXIF orientation applied: if its boxes were drawn on the \
                     displayed image, set detect.exif: apply"
                }
            };
            writeln!(
                f,
                "  [{}] {} records {} as {rw}x{rh}, but read with detect.exif: {} it is {w}x{h}{hint}",
                m.split,
                m.file.display(),
                m.image.display(),
                m.exif
            )?;
        }
        Ok(())
    }
}
