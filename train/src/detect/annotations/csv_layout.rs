//! The CSV layout: `ROOT/images/` and `ROOT/{train,val,test}.csv` with one row per box.
//!
//! The header is required; the columns `filename, xmin, ymin, xmax, ymax, label` may come in any order and in any
//! case, other columns are ignored, fields are trimmed. `filename` is relative to `ROOT/images/`; rows sharing a
//! filename are boxes of one image. A row whose five box fields are all empty marks an image without boxes (a
//! negative); a row with only some of them empty is an error. Coordinates are xyxy pixels.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kiln_infer::Exif;

use super::boxes::{self, Origin};
use super::paths::{checked_relative, probe_image, Probe};
use super::{
    AnnotationError, AnnotationReport, DetectionSample, Loaded, Location, MissingImage, Split, UnreadableImage,
};

pub(super) const LOOKED_FOR: &str = "train.csv, val.csv or test.csv beside images/";

const COLUMNS: [&str; 6] = ["filename", "xmin", "ymin", "xmax", "ymax", "label"];

fn split_file(root: &Path, split: Split) -> PathBuf {
    root.join(format!("{}.csv", split.name()))
}

/// The split CSVs present in `root`.
pub(super) fn evidence(root: &Path) -> Vec<PathBuf> {
    Split::ALL.iter().map(|s| split_file(root, *s)).filter(|p| p.is_file()).collect()
}

/// One data row.
struct Row {
    line: u64,
    /// Relative to `ROOT/images/`, normalised.
    filename: PathBuf,
    /// `None` for a negative row.
    object: Option<([f64; 4], String)>,
}

pub(super) fn read(root: &Path, exif: Exif, report: &mut AnnotationReport) -> Result<Loaded, AnnotationError> {
    let images = root.join("images");
    let mut parsed: Vec<(Split, PathBuf, Vec<Row>)> = Vec::new();
    for split in Split::ALL {
        let file = split_file(root, split);
        if file.is_file() {
            let rows = parse_file(&file)?;
            parsed.push((split, file, rows));
        }
    }
    if parsed.is_empty() {
        return Err(AnnotationError::layout(root, format!("csv layout: found none of {LOOKED_FOR}")));
    }
    if !images.is_dir() {
        return Err(AnnotationError::layout(
            root,
            "csv layout: the images/ folder is missing (CSV filenames are relative to it)",
        ));
    }

    let labels: BTreeSet<&str> =
        parsed.iter().flat_map(|(_, _, rows)| rows).filter_map(|r| r.object.as_ref().map(|o| o.1.as_str())).collect();
    let class_names: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
    let class_of: BTreeMap<&str, usize> = labels.iter().enumerate().map(|(i, l)| (*l, i)).collect();

    let mut splits: [Vec<DetectionSample>; 3] = Default::default();
    for (split, file, rows) in &parsed {
        let mut by_image: BTreeMap<&Path, Vec<&Row>> = BTreeMap::new();
        for row in rows {
            by_image.entry(row.filename.as_path()).or_default().push(row);
        }
        for (relative, rows) in by_image {
            let path = images.join(relative);
            let n_boxes = rows.iter().filter(|r| r.object.is_some()).count();
            let (width, height) = match probe_image(&path, exif) {
                Probe::Size(w, h) => (w, h),
                Probe::Missing => {
                    report.missing_images.push(MissingImage {
                        split: *split,
                        image: path,
                        referenced_by: file.clone(),
                        boxes: n_boxes,
                    });
                    continue;
                }
                Probe::Unreadable(reason) => {
                    report.unreadable_images.push(UnreadableImage { split: *split, image: path, reason });
                    continue;
                }
            };
            let mut sample = DetectionSample { path, width, height, boxes: Vec::with_capacity(n_boxes) };
            for row in rows {
                if let Some((xyxy, label)) = &row.object {
                    let origin = Origin { split: *split, file, at: Location::Line(row.line), image: &sample.path };
                    boxes::place(
                        *xyxy,
                        class_of[label.as_str()],
                        false,
                        (width, height),
                        origin,
                        &mut sample.boxes,
                        report,
                    );
                }
            }
            splits[*split as usize].push(sample);
        }
    }
    Ok(Loaded { class_names, splits })
}

fn parse_file(file: &Path) -> Result<Vec<Row>, AnnotationError> {
    let handle = std::fs::File::open(file).map_err(|e| AnnotationError::io(file, e))?;
    let mut reader = csv::ReaderBuilder::new().has_headers(true).trim(csv::Trim::All).from_reader(handle);
    let header = reader.headers().map_err(|e| csv_error(file, e, None))?.clone();
    let names: Vec<String> =
        header.iter().map(|h| h.trim_start_matches('\u{feff}').trim().to_ascii_lowercase()).collect();
    let mut index = [0usize; 6];
    let mut missing = Vec::new();
    for (slot, column) in COLUMNS.iter().enumerate() {
        let hits: Vec<usize> = names.iter().enumerate().filter(|(_, n)| n == column).map(|(i, _)| i).collect();
        match hits.as_slice() {
            [one] => index[slot] = *one,
            [] => missing.push(*column),
            _ => {
                return Err(AnnotationError::malformed(
                    file,
                    Location::Line(1),
                    format!("column '{column}' appears {} times in the header", hits.len()),
                ))
            }
        }
    }
    if !missing.is_empty() {
        return Err(AnnotationError::malformed(
            file,
            Location::Line(1),
            format!(
                "the header lacks column(s) {}; required: {} (header found: '{}')",
                missing.join(", "),
                COLUMNS.join(","),
                header.iter().collect::<Vec<_>>().join(",")
            ),
        ));
    }

    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(file, e, Some(header.len())))?;
        let line = record.position().map_or(0, |p| p.line());
        let at = Location::Line(line);
        let field = |slot: usize| record.get(index[slot]).unwrap_or("");
        let name = field(0);
        if name.is_empty() {
            return Err(AnnotationError::malformed(file, at, "empty filename"));
        }
        let filename = checked_relative(name, file, at.clone())?;
        let empty: Vec<&str> = (1..6).filter(|s| field(*s).is_empty()).map(|s| COLUMNS[s]).collect();
        let object = match empty.len() {
            5 => None,
            0 => {
                let mut xyxy = [0.0; 4];
                for (k, value) in xyxy.iter_mut().enumerate() {
                    let text = field(k + 1);
                    *value = boxes::number(text).ok_or_else(|| {
                        AnnotationError::malformed(
                            file,
                            at.clone(),
                            format!("{} '{text}' is not a finite number", COLUMNS[k + 1]),
                        )
                    })?;
                }
                Some((xyxy, field(5).to_string()))
            }
            _ => {
                return Err(AnnotationError::malformed(
                    file,
                    at,
                    format!(
                        "{} empty while the other box fields are set; leave all of xmin, ymin, xmax, ymax, label \
                         empty to mark an image without boxes",
                        empty.join(", ")
                    ),
                ))
            }
        };
        rows.push(Row { line, filename, object });
    }
    Ok(rows)
}

/// A csv-crate error as [`AnnotationError::Malformed`] with its line, or [`AnnotationError::Io`].
fn csv_error(file: &Path, err: csv::Error, header_len: Option<usize>) -> AnnotationError {
    let at = err.position().map_or(Location::File, |p| Location::Line(p.line()));
    let message = err.to_string();
    match err.into_kind() {
        csv::ErrorKind::Io(e) => AnnotationError::io(file, e),
        csv::ErrorKind::UnequalLengths { pos, len, .. } => {
            let at = pos.map_or(at, |p| Location::Line(p.line()));
            let expected = header_len.map_or(String::new(), |n| format!(", but the header has {n}"));
            let fields = if len == 1 { "1 field".to_string() } else { format!("{len} fields") };
            AnnotationError::malformed(file, at, format!("the row has {fields}{expected}"))
        }
        csv::ErrorKind::Utf8 { pos, err } => {
            let at = pos.map_or(at, |p| Location::Line(p.line()));
            AnnotationError::malformed(file, at, format!("not valid UTF-8: {err}"))
        }
        _ => AnnotationError::malformed(file, at, message),
    }
}
