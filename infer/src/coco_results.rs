//! A detector's results as COCO results JSON (`kiln infer --format coco`, and applications that score with
//! pycocotools): `[{image_id, category_id, bbox: [x, y, w, h], score}]`. With a ground truth (`--coco-gt`), image
//! ids come from its `images` (matched by file name) and category ids from its `categories` (matched by class
//! name); without one each result carries `file_name` and `category` (the class name) instead, and `image_id`
//! numbers the images in input order.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::nms::Detection;

#[derive(Deserialize)]
struct GtImage {
    id: i64,
    file_name: String,
}

#[derive(Deserialize)]
struct GtCategory {
    id: i64,
    name: String,
}

#[derive(Deserialize)]
struct GtFile {
    images: Vec<GtImage>,
    categories: Vec<GtCategory>,
}

/// The ids a COCO ground-truth file gives images (by file name, and by base name) and classes (by name).
pub struct CocoGroundTruth {
    path: std::path::PathBuf,
    images: HashMap<String, i64>,
    categories: HashMap<String, i64>,
}

impl CocoGroundTruth {
    /// Reads a COCO instances file (its `images` and `categories`).
    pub fn read(path: &Path) -> Result<Self> {
        let err = |reason: String| Error::CocoGroundTruth { path: path.to_path_buf(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: GtFile = serde_json::from_str(&text).map_err(|e| err(format!("not COCO instances ({e})")))?;
        let mut images = HashMap::new();
        for image in &file.images {
            images.insert(image.file_name.clone(), image.id);
            if let Some(base) = Path::new(&image.file_name).file_name() {
                images.entry(base.to_string_lossy().into_owned()).or_insert(image.id);
            }
        }
        let categories = file.categories.iter().map(|c| (c.name.clone(), c.id)).collect();
        Ok(Self { path: path.to_path_buf(), images, categories })
    }
}

/// Results collected over a run.
pub struct CocoResults<'a> {
    gt: Option<&'a CocoGroundTruth>,
    names: Vec<String>,
    /// Category id of each class (with ground truth).
    category_ids: Vec<Option<i64>>,
    next_image: i64,
    pub results: Vec<Value>,
}

impl<'a> CocoResults<'a> {
    /// Every class must be a ground-truth category when a ground truth is given.
    pub fn new(names: &[String], gt: Option<&'a CocoGroundTruth>) -> Result<Self> {
        let category_ids: Vec<Option<i64>> =
            names.iter().map(|n| gt.and_then(|g| g.categories.get(n).copied())).collect();
        if let Some(g) = gt {
            let missing: Vec<&String> =
                names.iter().zip(&category_ids).filter(|(_, id)| id.is_none()).map(|(n, _)| n).collect();
            if !missing.is_empty() {
                return Err(Error::CocoGroundTruth {
                    path: g.path.clone(),
                    reason: format!("the model's classes {missing:?} are not categories there"),
                });
            }
        }
        Ok(Self { gt, names: names.to_vec(), category_ids, next_image: 0, results: Vec::new() })
    }

    /// Adds one image's detections; an image the ground truth does not list is an error (the others go on).
    pub fn add(&mut self, path: &Path, detections: &[Detection]) -> Result<(), String> {
        let file_name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let image_id = match self.gt {
            Some(gt) => {
                *gt.images.get(&file_name).ok_or_else(|| format!("not an image of --coco-gt {}", gt.path.display()))?
            }
            None => {
                self.next_image += 1;
                self.next_image
            }
        };
        for d in detections {
            let [x1, y1, x2, y2] = d.bbox.map(f64::from);
            let bbox = [x1, y1, x2 - x1, y2 - y1].map(|v| (v * 100.0).round() / 100.0);
            let score = (d.score as f64 * 1e5).round() / 1e5;
            self.results.push(match self.category_ids[d.class] {
                Some(category_id) => {
                    json!({"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score})
                }
                None => json!({"image_id": image_id, "file_name": file_name, "category": self.names[d.class],
                    "category_id": d.class, "bbox": bbox, "score": score}),
            });
        }
        Ok(())
    }
}
