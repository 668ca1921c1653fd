//! The YOLO txt layout: `ROOT/data.yaml` (or `data.yml`), images in `ROOT/images/{train,val,test}/` and labels in
//! `ROOT/labels/{train,val,test}/<stem>.txt`.
//!
//! data.yaml keys:
//! - `names` (required): a list, or a map `id: name` with ids 0..n-1 without gaps. `nc`, when present, must equal
//!   the number of names.
//! - `path` (optional): the folder the split paths are relative to, itself relative to ROOT. An absolute path or
//!   one with `..` is accepted only when it names ROOT itself (as `path: /data/set` often does); otherwise it is
//!   refused as escaping the root.
//! - `train`, `val`, `test` (optional): a folder of images, or a list of them, relative to `path` (or ROOT). They
//!   must stay inside it (no absolute paths, no `..`) and must exist. Image list files (`train.txt`) are not
//!   supported. A split without its key defaults to `images/<split>` when that folder exists, and is empty
//!   otherwise.
//!
//! Image folders are walked recursively. As in Ultralytics, an image's label file is found by replacing the last
//! `images` component of its folder with `labels` and the extension with `.txt`; with no `images` component the
//! label file sits next to the image. A missing or empty label file makes the image a negative. Label lines are
//! `class cx cy w h`, the last four normalised to the image's width and height (read from the image file);
//! blank lines are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use kiln_infer::Exif;
use serde_yaml::Value;

use super::boxes::{self, Origin};
use super::paths::{escaping, is_image_file, probe_image, safe_relative, walk_files, PathProblem, Probe};
use super::{
    check_unique_names, AnnotationError, AnnotationReport, DetectionSample, Loaded, Location, MissingImage, Split,
    UnreadableImage,
};

pub(super) const LOOKED_FOR: &str = "data.yaml or data.yml";

const YAML_FILES: [&str; 2] = ["data.yaml", "data.yml"];

/// The data.yaml files present in `root`.
pub(super) fn evidence(root: &Path) -> Vec<PathBuf> {
    YAML_FILES.iter().map(|f| root.join(f)).filter(|p| p.is_file()).collect()
}

pub(super) fn read(root: &Path, exif: Exif, report: &mut AnnotationReport) -> Result<Loaded, AnnotationError> {
    // data.yaml wins when both are present.
    let Some(yaml) = evidence(root).into_iter().next() else {
        return Err(AnnotationError::layout(root, format!("yolo layout: found none of {LOOKED_FOR}")));
    };
    let text = std::fs::read_to_string(&yaml).map_err(|e| AnnotationError::io(&yaml, e))?;
    let doc: Value = serde_yaml::from_str(&text)
        .map_err(|e| AnnotationError::malformed(&yaml, Location::File, format!("invalid YAML: {e}")))?;
    let Value::Mapping(map) = doc else {
        return Err(AnnotationError::malformed(&yaml, Location::File, "expected a mapping with `names`, `train`, ..."));
    };

    let class_names = parse_names(&yaml, map.get("names"))?;
    check_unique_names(&class_names, &yaml, Location::Key("names".into()))?;
    if let Some(nc) = map.get("nc").filter(|v| !v.is_null()) {
        if nc.as_u64() != Some(class_names.len() as u64) {
            let reason = format!("nc is {} but `names` has {} entries", show_value(nc), class_names.len());
            return Err(AnnotationError::malformed(&yaml, Location::Key("nc".into()), reason));
        }
    }
    let base = resolve_base(root, &yaml, map.get("path"))?;

    let mut folders = Vec::new();
    for split in Split::ALL {
        folders.push(split_folders(&base, &yaml, split, map.get(split.name()))?);
    }
    if folders.iter().all(Vec::is_empty) {
        return Err(AnnotationError::layout(
            root,
            format!(
                "yolo layout: {} names no train/val/test image folder and none of images/train, images/val, \
                 images/test exists",
                yaml.display()
            ),
        ));
    }

    let mut splits: [Vec<DetectionSample>; 3] = Default::default();
    for (split, folders) in Split::ALL.into_iter().zip(folders) {
        let mut seen_images = BTreeSet::new();
        for (relative, dir) in folders {
            let label_root = labels_folder(&relative).map_or_else(|| dir.clone(), |l| base.join(l));
            let mut used_labels = BTreeSet::new();
            for image in walk_files(&dir, is_image_file)? {
                if !seen_images.insert(image.clone()) {
                    continue;
                }
                let inner = image.strip_prefix(&dir).unwrap_or(&image);
                let label = label_root.join(inner).with_extension("txt");
                used_labels.insert(label.clone());
                let (width, height) = match probe_image(&image, exif) {
                    Probe::Size(w, h) => (w, h),
                    Probe::Missing => {
                        // Listed a moment ago: removed while reading.
                        report.missing_images.push(MissingImage { split, image, referenced_by: label, boxes: 0 });
                        continue;
                    }
                    Probe::Unreadable(reason) => {
                        report.unreadable_images.push(UnreadableImage { split, image, reason });
                        continue;
                    }
                };
                let mut sample = DetectionSample { path: image, width, height, boxes: Vec::new() };
                match std::fs::read_to_string(&label) {
                    Ok(text) => parse_labels(&label, &text, class_names.len(), split, &mut sample, report)?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(AnnotationError::io(&label, e)),
                }
                splits[split as usize].push(sample);
            }
            if label_root.is_dir() {
                let is_txt = |p: &Path| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("txt"));
                for txt in walk_files(&label_root, is_txt)? {
                    if !used_labels.contains(&txt) && !report.orphan_labels.contains(&txt) {
                        report.orphan_labels.push(txt);
                    }
                }
            }
        }
    }
    Ok(Loaded { class_names, splits })
}

/// Reads one label file's lines into `sample.boxes`.
fn parse_labels(
    label: &Path,
    text: &str,
    num_classes: usize,
    split: Split,
    sample: &mut DetectionSample,
    report: &mut AnnotationReport,
) -> Result<(), AnnotationError> {
    const FIELDS: [&str; 5] = ["class", "cx", "cy", "w", "h"];
    let (width, height) = (sample.width, sample.height);
    for (i, line) in text.lines().enumerate() {
        let line_no = i as u64 + 1;
        let at = Location::Line(line_no);
        let fields: Vec<&str> = line.trim_start_matches('\u{feff}').split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() != 5 {
            let extra = if fields.len() > 5 { " (segmentation polygons and keypoints are not supported)" } else { "" };
            let reason = format!("expected 5 fields `class cx cy w h`, found {}{extra}", fields.len());
            return Err(AnnotationError::malformed(label, at, reason));
        }
        let class: u64 = fields[0].parse().map_err(|_| {
            let reason = format!("class id '{}' is not a non-negative whole number", fields[0]);
            AnnotationError::malformed(label, at.clone(), reason)
        })?;
        if class >= num_classes as u64 {
            return Err(AnnotationError::ClassOutOfRange { path: label.to_path_buf(), at, class, num_classes });
        }
        let mut values = [0.0; 4];
        for (k, value) in values.iter_mut().enumerate() {
            *value = boxes::number(fields[k + 1]).ok_or_else(|| {
                let reason = format!("{} '{}' is not a finite number", FIELDS[k + 1], fields[k + 1]);
                AnnotationError::malformed(label, at.clone(), reason)
            })?;
        }
        let [cx, cy, w, h] = values;
        let (fw, fh) = (f64::from(width), f64::from(height));
        let xyxy = [(cx - w / 2.0) * fw, (cy - h / 2.0) * fh, (cx + w / 2.0) * fw, (cy + h / 2.0) * fh];
        let origin = Origin { split, file: label, at, image: &sample.path };
        boxes::place(xyxy, class as usize, false, (width, height), origin, &mut sample.boxes, report);
    }
    Ok(())
}

/// `names` as a list, or as a map of ids 0..n-1.
fn parse_names(yaml: &Path, value: Option<&Value>) -> Result<Vec<String>, AnnotationError> {
    let at = || Location::Key("names".into());
    let bad = |reason: String| AnnotationError::malformed(yaml, at(), reason);
    let name_of = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(bad(format!("class name {} is not a string", show_value(other)))),
    };
    let names = match value {
        None | Some(Value::Null) => {
            return Err(bad("data.yaml has no `names` (a list of class names, or a map id: name)".into()))
        }
        Some(Value::Sequence(items)) => items.iter().map(name_of).collect::<Result<Vec<_>, _>>()?,
        Some(Value::Mapping(map)) => {
            let mut by_id = BTreeMap::new();
            for (key, name) in map {
                let id = key.as_u64().or_else(|| key.as_str().and_then(|s| s.trim().parse().ok()));
                let Some(id) = id else {
                    return Err(bad(format!("`names` key {} is not a class id", show_value(key))));
                };
                if by_id.insert(id, name_of(name)?).is_some() {
                    return Err(bad(format!("class id {id} appears twice in `names`")));
                }
            }
            if let Some((index, id)) = by_id.keys().enumerate().find(|(i, id)| **id != *i as u64) {
                return Err(bad(format!(
                    "`names` ids must be 0..{} without gaps; id {index} is missing (next: {id})",
                    by_id.len() - 1
                )));
            }
            by_id.into_values().collect()
        }
        Some(other) => return Err(bad(format!("`names` must be a list or a map, found {}", show_value(other)))),
    };
    if names.is_empty() {
        return Err(bad("`names` is empty".into()));
    }
    Ok(names)
}

/// The folder the split paths are relative to: `path` below ROOT, or ROOT.
fn resolve_base(root: &Path, yaml: &Path, value: Option<&Value>) -> Result<PathBuf, AnnotationError> {
    let at = || Location::Key("path".into());
    let text = match value {
        None | Some(Value::Null) => return Ok(root.to_path_buf()),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            let reason = format!("`path` must be a folder name, found {}", show_value(other));
            return Err(AnnotationError::malformed(yaml, at(), reason));
        }
    };
    let base = match safe_relative(text) {
        Ok(relative) => root.join(relative),
        Err(PathProblem::Empty) => return Ok(root.to_path_buf()),
        Err(problem) => {
            // Accepted when it names the root itself.
            let named = if Path::new(text).is_absolute() { PathBuf::from(text) } else { root.join(text) };
            return match (named.canonicalize(), root.canonicalize()) {
                (Ok(a), Ok(b)) if a == b => Ok(root.to_path_buf()),
                _ => Err(escaping(text, yaml, at(), problem, String::new())),
            };
        }
    };
    if !base.is_dir() {
        let reason = format!("folder '{text}' ({}) does not exist", base.display());
        return Err(AnnotationError::malformed(yaml, at(), reason));
    }
    Ok(base)
}

/// `(relative to base, full path)` of each image folder of `split`.
fn split_folders(
    base: &Path,
    yaml: &Path,
    split: Split,
    value: Option<&Value>,
) -> Result<Vec<(PathBuf, PathBuf)>, AnnotationError> {
    let key = split.name();
    let at = || Location::Key(key.into());
    let entries: Vec<&str> = match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Sequence(items)) => {
            let mut out = Vec::new();
            for item in items {
                let Some(s) = item.as_str() else {
                    let reason = format!("`{key}` entries must be folder names, found {}", show_value(item));
                    return Err(AnnotationError::malformed(yaml, at(), reason));
                };
                out.push(s);
            }
            out
        }
        Some(other) => {
            let reason = format!("`{key}` must be a folder name or a list of them, found {}", show_value(other));
            return Err(AnnotationError::malformed(yaml, at(), reason));
        }
    };
    let entries: Vec<&str> = entries.into_iter().filter(|s| !s.trim().is_empty()).collect();
    if entries.is_empty() {
        let relative = PathBuf::from("images").join(key);
        let dir = base.join(&relative);
        return Ok(if dir.is_dir() { vec![(relative, dir)] } else { Vec::new() });
    }
    let mut out = Vec::new();
    for text in entries {
        let relative = match safe_relative(text) {
            Ok(relative) => relative,
            Err(PathProblem::Empty) => {
                return Err(AnnotationError::malformed(yaml, at(), format!("`{key}` is an empty path")))
            }
            Err(problem) => match roboflow_folder(base, text) {
                // Roboflow's export: `../train/images` means `train/images` inside the root (Ultralytics reads it
                // so too); it does not leave the root.
                Some(relative) => relative,
                None => return Err(escaping(text, yaml, at(), problem, String::new())),
            },
        };
        let dir = base.join(&relative);
        if dir.is_file() {
            let reason =
                format!("'{text}' is a file; image list files are not supported, point `{key}` at a folder of images");
            return Err(AnnotationError::malformed(yaml, at(), reason));
        }
        if !dir.is_dir() {
            let reason = format!("folder '{text}' ({}) does not exist", dir.display());
            return Err(AnnotationError::malformed(yaml, at(), reason));
        }
        out.push((relative, dir));
    }
    Ok(out)
}

/// Roboflow's YOLO export writes `train: ../train/images` for the folder `train/images` beside data.yaml: the
/// rest of such a path, when it is a safe relative path to a folder inside the root.
fn roboflow_folder(base: &Path, text: &str) -> Option<PathBuf> {
    let rest = text.strip_prefix("../").or_else(|| text.strip_prefix("..\\"))?;
    safe_relative(rest).ok().filter(|relative| base.join(relative).is_dir())
}

/// The labels folder for an image folder: its last `images` component replaced by `labels`; `None` without one.
fn labels_folder(images: &Path) -> Option<PathBuf> {
    let parts: Vec<Component<'_>> = images.components().collect();
    let last = parts.iter().rposition(|c| c.as_os_str() == "images")?;
    let mut out = PathBuf::new();
    for (i, part) in parts.iter().enumerate() {
        out.push(if i == last { std::ffi::OsStr::new("labels") } else { part.as_os_str() });
    }
    Some(out)
}

/// A YAML value, short, for messages.
fn show_value(value: &Value) -> String {
    match value {
        Value::Null => "nothing".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("'{s}'"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a map".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}
