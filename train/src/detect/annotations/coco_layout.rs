//! The COCO JSON layout, in two arrangements recognised from the folder, or any other named:
//!
//! - Roboflow: `ROOT/{train,valid,test}/_annotations.coco.json` with the images beside it (`val/` is accepted
//!   for `valid/`, not both).
//! - Classic: `ROOT/annotations/instances_{train,val,test}[YEAR].json` (`instances_val2017.json`), with the images
//!   in the first folder that exists of `ROOT/<tag>/`, `ROOT/images/<tag>/`, `ROOT/<split>/`,
//!   `ROOT/images/<split>/`, where `<tag>` is the part after `instances_` (`val2017`).
//! - Any other, named split by split in `detect.coco: {train: {images: DIR, annotations: FILE}, ...}`.
//!
//! `file_name` is relative to the image folder. `bbox` is `[x, y, width, height]` in pixels. The image's recorded
//! `width`/`height` are held against its header read under `detect.exif` (in both orientations, so that a set
//! annotated on the stored pixels is named as such); a mismatch is reported and the image's own size used. An image
//! whose file is missing is skipped and reported. `iscrowd` (0/1 or a bool) becomes [`BoxAnnotation::crowd`](super::BoxAnnotation).
//! Categories: see [`DetectionDataset::class_names`](super::DetectionDataset::class_names).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kiln_infer::Exif;
use serde::{Deserialize, Deserializer};

use super::boxes::{self, Origin};
use super::paths::{checked_relative, shown};
use super::{
    AnnotationError, AnnotationReport, CocoPaths, DetectionSample, Loaded, Location, MissingImage, SizeMismatch, Split,
};

pub(super) const LOOKED_FOR: &str = "{train,valid,val,test}/_annotations.coco.json or \
     annotations/instances_{train,val,test}[YEAR].json (any other arrangement: name the files in detect.coco)";

const ROBOFLOW_FILE: &str = "_annotations.coco.json";
const ROBOFLOW_DIRS: [(Split, &str); 4] =
    [(Split::Train, "train"), (Split::Val, "valid"), (Split::Val, "val"), (Split::Test, "test")];

/// One split's annotation file and the folder its `file_name`s are relative to.
struct Source {
    split: Split,
    json: PathBuf,
    images: PathBuf,
}

fn roboflow_files(root: &Path) -> Vec<(Split, PathBuf)> {
    ROBOFLOW_DIRS
        .iter()
        .map(|(split, dir)| (*split, root.join(dir).join(ROBOFLOW_FILE)))
        .filter(|(_, json)| json.is_file())
        .collect()
}

/// `instances_val2017.json` -> (Val, "val2017").
fn classic_split(name: &str) -> Option<(Split, &str)> {
    let tag = name.strip_prefix("instances_")?.strip_suffix(".json")?;
    let split = match tag.trim_end_matches(|c: char| c.is_ascii_digit()) {
        "train" => Split::Train,
        "val" | "valid" => Split::Val,
        "test" => Split::Test,
        _ => return None,
    };
    Some((split, tag))
}

/// `(split, tag, json)` for each `annotations/instances_*.json`, sorted by file name.
fn classic_files(root: &Path) -> Result<Vec<(Split, String, PathBuf)>, AnnotationError> {
    let dir = root.join("annotations");
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| AnnotationError::io(&dir, e))? {
        let entry = entry.map_err(|e| AnnotationError::io(&dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((split, tag)) = classic_split(&name) {
            if entry.path().is_file() {
                out.push((split, tag.to_string(), entry.path()));
            }
        }
    }
    out.sort_by(|a, b| a.2.cmp(&b.2));
    Ok(out)
}

/// The COCO annotation files present in `root`.
pub(super) fn evidence(root: &Path) -> Result<Vec<PathBuf>, AnnotationError> {
    let mut found: Vec<PathBuf> = roboflow_files(root).into_iter().map(|(_, p)| p).collect();
    found.extend(classic_files(root)?.into_iter().map(|(_, _, p)| p));
    Ok(found)
}

/// Fails when two files claim the same split.
fn one_per_split<'a>(root: &Path, files: impl Iterator<Item = (Split, &'a Path)>) -> Result<(), AnnotationError> {
    let mut seen: BTreeMap<Split, &Path> = BTreeMap::new();
    for (split, file) in files {
        if let Some(first) = seen.insert(split, file) {
            return Err(AnnotationError::layout(
                root,
                format!(
                    "coco layout: both {} and {} hold the {split} split; keep one",
                    shown(first, root).display(),
                    shown(file, root).display()
                ),
            ));
        }
    }
    Ok(())
}

fn sources(root: &Path) -> Result<Vec<Source>, AnnotationError> {
    let roboflow = roboflow_files(root);
    let classic = classic_files(root)?;
    if !roboflow.is_empty() && !classic.is_empty() {
        return Err(AnnotationError::layout(
            root,
            format!(
                "coco layout: both Roboflow files ({}) and classic files ({}) are present; keep one arrangement",
                shown(&roboflow[0].1, root).display(),
                shown(&classic[0].2, root).display()
            ),
        ));
    }
    let mut out = Vec::new();
    if !roboflow.is_empty() {
        one_per_split(root, roboflow.iter().map(|(s, p)| (*s, p.as_path())))?;
        for (split, json) in roboflow {
            let images = json.parent().map_or_else(|| root.to_path_buf(), Path::to_path_buf);
            out.push(Source { split, json, images });
        }
    } else if !classic.is_empty() {
        one_per_split(root, classic.iter().map(|(s, _, p)| (*s, p.as_path())))?;
        for (split, tag, json) in classic {
            let mut candidates = vec![root.join(&tag), root.join("images").join(&tag)];
            if tag != split.name() {
                candidates.push(root.join(split.name()));
                candidates.push(root.join("images").join(split.name()));
            }
            let Some(images) = candidates.iter().find(|c| c.is_dir()).cloned() else {
                let listed: Vec<String> = candidates.iter().map(|c| shown(c, root).display().to_string()).collect();
                return Err(AnnotationError::layout(
                    root,
                    format!(
                        "coco layout: no image folder for {}; looked for {}",
                        shown(&json, root).display(),
                        listed.join(", ")
                    ),
                ));
            };
            out.push(Source { split, json, images });
        }
    } else {
        return Err(AnnotationError::layout(root, format!("coco layout: found none of {LOOKED_FOR}")));
    }
    out.sort_by_key(|s| s.split);
    Ok(out)
}

/// The sources `detect.coco` names, relative to `root` unless absolute; each file and folder must exist.
fn named_sources(root: &Path, paths: &CocoPaths) -> Result<Vec<Source>, AnnotationError> {
    let mut out = Vec::new();
    for (split, named) in paths.splits() {
        let json = root.join(&named.annotations);
        let images = root.join(&named.images);
        let missing = |key: &str, path: &Path, kind: &str| {
            AnnotationError::layout(
                root,
                format!("detect.coco.{}.{key}: {} is not {kind}", split.name(), path.display()),
            )
        };
        if !json.is_file() {
            return Err(missing("annotations", &json, "a file"));
        }
        if !images.is_dir() {
            return Err(missing("images", &images, "a folder"));
        }
        out.push(Source { split, json, images });
    }
    if out.is_empty() {
        return Err(AnnotationError::layout(root, "detect.coco names no split (train, val or test)"));
    }
    Ok(out)
}

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnnotation>,
    #[serde(default)]
    categories: Vec<CocoCategory>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: i64,
    file_name: String,
    width: f64,
    height: f64,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    id: i64,
    image_id: i64,
    category_id: i64,
    bbox: Vec<f64>,
    #[serde(default, deserialize_with = "crowd_flag")]
    iscrowd: bool,
}

#[derive(Deserialize)]
struct CocoCategory {
    id: i64,
    name: String,
    #[serde(default)]
    supercategory: Option<String>,
}

/// `iscrowd` as 0/1 (the COCO convention), a bool, or null.
fn crowd_flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Null => Ok(false),
        serde_json::Value::Bool(b) => Ok(b),
        serde_json::Value::Number(n) if n.as_f64() == Some(0.0) => Ok(false),
        serde_json::Value::Number(n) if n.as_f64() == Some(1.0) => Ok(true),
        other => Err(D::Error::custom(format!("iscrowd must be 0, 1, true or false, found {other}"))),
    }
}

/// An image entry, checked.
struct Image {
    relative: PathBuf,
    width: u32,
    height: u32,
    /// (annotation id, xyxy pixels, category id, crowd), in file order.
    boxes: Vec<(i64, [f64; 4], i64, bool)>,
}

/// One split's file, parsed and checked.
struct Checked {
    source: Source,
    images: Vec<Image>,
    categories: Vec<CocoCategory>,
}

pub(super) fn read(
    root: &Path,
    named: Option<&CocoPaths>,
    exif: Exif,
    report: &mut AnnotationReport,
) -> Result<Loaded, AnnotationError> {
    let mut checked = Vec::new();
    let sources = match named {
        Some(paths) => named_sources(root, paths)?,
        None => sources(root)?,
    };
    for source in sources {
        let text = std::fs::read_to_string(&source.json).map_err(|e| AnnotationError::io(&source.json, e))?;
        let file: CocoFile = serde_json::from_str(&text)
            .map_err(|e| AnnotationError::malformed(&source.json, Location::File, format!("invalid COCO JSON: {e}")))?;
        checked.push(check(source, file)?);
    }
    let (class_names, class_of) = merge_categories(&checked)?;

    let mut splits: [Vec<DetectionSample>; 3] = Default::default();
    for part in &checked {
        let Source { split, json, images: dir } = &part.source;
        for image in &part.images {
            let path = dir.join(&image.relative);
            if !path.is_file() {
                report.missing_images.push(MissingImage {
                    split: *split,
                    image: path,
                    referenced_by: json.clone(),
                    boxes: image.boxes.len(),
                });
                continue;
            }
            let size = checked_size(image, &path, json, *split, exif, report);
            let mut sample =
                DetectionSample { path, width: size.0, height: size.1, boxes: Vec::with_capacity(image.boxes.len()) };
            for (id, xyxy, category, crowd) in &image.boxes {
                let origin = Origin { split: *split, file: json, at: Location::Annotation(*id), image: &sample.path };
                boxes::place(*xyxy, class_of[category], *crowd, size, origin, &mut sample.boxes, report);
            }
            splits[*split as usize].push(sample);
        }
    }
    Ok(Loaded { class_names, splits })
}

/// The image's size as read under `exif`, held against the size the file records: a disagreement is reported
/// (naming the other convention when the record is the image's size under it) and the image's own size is used.
/// An image whose header cannot be read keeps the recorded size (the loader skips and counts it).
fn checked_size(
    image: &Image,
    path: &Path,
    json: &Path,
    split: Split,
    exif: Exif,
    report: &mut AnnotationReport,
) -> (u32, u32) {
    let recorded = (image.width, image.height);
    let Ok(header) = kiln_infer::read_header(path) else { return recorded };
    let read = header.size(exif);
    if read != recorded {
        let other = header.size(if exif == Exif::Apply { Exif::Ignore } else { Exif::Apply });
        report.size_mismatches.push(SizeMismatch {
            split,
            image: path.to_path_buf(),
            file: json.to_path_buf(),
            recorded,
            read,
            exif,
            other_convention: other == recorded,
        });
    }
    read
}

/// Checks one file's ids, paths and boxes; keeps what the dataset needs.
fn check(source: Source, file: CocoFile) -> Result<Checked, AnnotationError> {
    let json = source.json.as_path();
    let mut category_ids = BTreeSet::new();
    for category in &file.categories {
        if !category_ids.insert(category.id) {
            let reason = format!("category id {} is defined twice in `categories`", category.id);
            return Err(AnnotationError::malformed(json, Location::File, reason));
        }
    }

    let mut images = Vec::with_capacity(file.images.len());
    let mut index_of: BTreeMap<i64, usize> = BTreeMap::new();
    let mut by_path: BTreeMap<PathBuf, i64> = BTreeMap::new();
    for image in &file.images {
        let at = Location::Image(image.id);
        if index_of.insert(image.id, images.len()).is_some() {
            return Err(AnnotationError::malformed(json, at, "image id is defined twice in `images`"));
        }
        let relative = checked_relative(&image.file_name, json, at.clone())?;
        if let Some(other) = by_path.insert(relative.clone(), image.id) {
            let reason = format!("file_name '{}' is also used by image id {other}", image.file_name);
            return Err(AnnotationError::malformed(json, at, reason));
        }
        let width = pixels(image.width).ok_or_else(|| {
            AnnotationError::malformed(
                json,
                at.clone(),
                format!("width {} is not a positive whole number", image.width),
            )
        })?;
        let height = pixels(image.height).ok_or_else(|| {
            let reason = format!("height {} is not a positive whole number", image.height);
            AnnotationError::malformed(json, at.clone(), reason)
        })?;
        images.push(Image { relative, width, height, boxes: Vec::new() });
    }

    for annotation in &file.annotations {
        let at = Location::Annotation(annotation.id);
        let Some(&index) = index_of.get(&annotation.image_id) else {
            return Err(AnnotationError::UnknownImage { path: json.to_path_buf(), at, image_id: annotation.image_id });
        };
        if !category_ids.contains(&annotation.category_id) {
            let defined: Vec<String> = category_ids.iter().map(|id| id.to_string()).collect();
            return Err(AnnotationError::UnknownCategory {
                path: json.to_path_buf(),
                at,
                category_id: annotation.category_id,
                defined: if defined.is_empty() { "none".to_string() } else { defined.join(", ") },
            });
        }
        let [x, y, w, h] = annotation.bbox[..] else {
            let reason = format!("bbox has {} numbers; expected 4 ([x, y, width, height])", annotation.bbox.len());
            return Err(AnnotationError::malformed(json, at, reason));
        };
        images[index].boxes.push((annotation.id, [x, y, x + w, y + h], annotation.category_id, annotation.iscrowd));
    }
    Ok(Checked { source, images, categories: file.categories })
}

/// COCO category id -> class index.
type ClassOf = BTreeMap<i64, usize>;

/// A json width or height as whole pixels.
fn pixels(value: f64) -> Option<u32> {
    (value.is_finite() && value >= 1.0 && value.fract() == 0.0 && value <= f64::from(u32::MAX)).then_some(value as u32)
}

/// The class list over all files and the category id -> class index map. Category ids must mean the same name in
/// every file; unannotated grouping categories are dropped (see `DetectionDataset::class_names`).
fn merge_categories(files: &[Checked]) -> Result<(Vec<String>, ClassOf), AnnotationError> {
    // id -> (name, supercategory, the file that first defined it)
    let mut merged: BTreeMap<i64, (&str, Option<&str>, &Path)> = BTreeMap::new();
    for part in files {
        for c in &part.categories {
            match merged.get(&c.id) {
                Some((name, _, first)) if *name != c.name => {
                    let reason = format!(
                        "category id {} is '{}' here but '{name}' in {}; every split must use the same categories",
                        c.id,
                        c.name,
                        first.display()
                    );
                    return Err(AnnotationError::malformed(&part.source.json, Location::File, reason));
                }
                Some(_) => {}
                None => {
                    merged.insert(c.id, (&c.name, c.supercategory.as_deref(), &part.source.json));
                }
            }
        }
    }
    let used: BTreeSet<i64> =
        files.iter().flat_map(|f| &f.images).flat_map(|i| &i.boxes).map(|(_, _, category, _)| *category).collect();
    let is_parent = |id: i64, name: &str| merged.iter().any(|(other, (_, sup, _))| *other != id && *sup == Some(name));

    let mut names = Vec::new();
    let mut class_of = BTreeMap::new();
    let mut first_with_name: BTreeMap<&str, (i64, &Path)> = BTreeMap::new();
    for (&id, &(name, _, file)) in &merged {
        if !used.contains(&id) && is_parent(id, name) {
            continue;
        }
        if let Some((other, _)) = first_with_name.insert(name, (id, file)) {
            let reason = format!("category name '{name}' is used by category ids {other} and {id}");
            return Err(AnnotationError::malformed(file, Location::File, reason));
        }
        class_of.insert(id, names.len());
        names.push(name.to_string());
    }
    Ok((names, class_of))
}
