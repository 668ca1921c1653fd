//! Fitting a box to its image: dropping boxes without area, clipping boxes that reach outside, and recording both
//! in the report.

use std::path::Path;

use super::report::CLIP_TOLERANCE_PX;
use super::{AnnotationReport, BoxAnnotation, BoxIssue, Location, Split};

/// Where a box came from, for the report.
pub(super) struct Origin<'a> {
    pub split: Split,
    /// The annotation file.
    pub file: &'a Path,
    pub at: Location,
    pub image: &'a Path,
}

/// What [`fit`] decided.
#[derive(Debug, PartialEq)]
pub(super) enum Fit {
    /// Inside the image (up to [`CLIP_TOLERANCE_PX`], clamped).
    Kept([f32; 4]),
    /// Reached outside the image by more than the tolerance; cut to it.
    Clipped([f32; 4]),
    /// No area, before or after clipping; the reason says which.
    Dropped(String),
}

/// Fits an xyxy pixel box to a `width` x `height` image. Coordinates must be finite (the readers check).
pub(super) fn fit(xyxy: [f64; 4], width: u32, height: u32) -> Fit {
    let [x1, y1, x2, y2] = xyxy;
    if x2 <= x1 || y2 <= y1 {
        return Fit::Dropped(format!("box {} has non-positive area", show(xyxy)));
    }
    let (w, h) = (f64::from(width), f64::from(height));
    let clipped = [x1.clamp(0.0, w), y1.clamp(0.0, h), x2.clamp(0.0, w), y2.clamp(0.0, h)];
    if clipped[2] <= clipped[0] || clipped[3] <= clipped[1] {
        return Fit::Dropped(format!("box {} lies outside the {width}x{height} image", show(xyxy)));
    }
    let as_f32 = clipped.map(|v| v as f32);
    let moved = xyxy.iter().zip(&clipped).any(|(a, b)| (a - b).abs() > CLIP_TOLERANCE_PX);
    if moved {
        Fit::Clipped(as_f32)
    } else {
        Fit::Kept(as_f32)
    }
}

/// Fits the box, pushes it onto `boxes` unless dropped, and records a drop or a clip in `report`.
pub(super) fn place(
    xyxy: [f64; 4],
    class: usize,
    crowd: bool,
    (width, height): (u32, u32),
    origin: Origin<'_>,
    boxes: &mut Vec<BoxAnnotation>,
    report: &mut AnnotationReport,
) {
    let issue = |reason: String| BoxIssue {
        split: origin.split,
        file: origin.file.to_path_buf(),
        at: origin.at.clone(),
        image: origin.image.to_path_buf(),
        reason,
    };
    match fit(xyxy, width, height) {
        Fit::Kept(bbox) => boxes.push(BoxAnnotation { bbox, class, crowd }),
        Fit::Clipped(bbox) => {
            let reason = format!(
                "box {} reaches outside the {width}x{height} image; clipped to {}",
                show(xyxy),
                show(bbox.map(f64::from))
            );
            report.clipped_boxes.push(issue(reason));
            boxes.push(BoxAnnotation { bbox, class, crowd });
        }
        Fit::Dropped(reason) => report.dropped_boxes.push(issue(reason)),
    }
}

/// `[x1, y1, x2, y2]` with at most three decimals.
pub(super) fn show(xyxy: [f64; 4]) -> String {
    let parts: Vec<String> = xyxy
        .iter()
        .map(|v| {
            let s = format!("{v:.3}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            if s == "-0" {
                "0".to_string()
            } else {
                s.to_string()
            }
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Parses a coordinate: a finite decimal number.
pub(super) fn number(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}
