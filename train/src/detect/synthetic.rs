//! Procedural detection scenes in the CSV layout (`images/` + `train.csv`, `val.csv`, `test.csv`): coloured shapes
//! (circle, square, triangle, cross, ring) at several scales on cluttered, noisy gradient canvases, with exact
//! boxes — the tight box of the pixels each shape painted. Some images have no object (negatives). Used by
//! `kiln demo`, the tests and the benchmarks, so that nothing needs a download.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::fsutil::write_atomic;
use crate::synthetic::SHAPES;
use crate::{Error, Result};

/// Base hue of each class (RGB), as in classification's shapes.
const CLASS_COLOURS: [[f32; 3]; 5] =
    [[220.0, 50.0, 40.0], [40.0, 190.0, 60.0], [40.0, 80.0, 230.0], [230.0, 200.0, 30.0], [200.0, 50.0, 200.0]];

/// What to generate.
#[derive(Clone, Debug)]
pub struct ScenesSpec {
    /// How many of [`SHAPES`] to use as classes (1..=5).
    pub classes: usize,
    /// Images in each split: (train, val, test).
    pub images: (usize, usize, usize),
    /// Canvas width and height in pixels.
    pub size: (u32, u32),
    /// Objects per image, at most (at least 0: some images are negatives).
    pub max_objects: usize,
    /// Object sizes as a fraction of the canvas's shorter side.
    pub scale: (f32, f32),
    pub seed: u64,
}

impl Default for ScenesSpec {
    fn default() -> Self {
        Self { classes: 3, images: (96, 24, 24), size: (128, 128), max_objects: 3, scale: (0.12, 0.45), seed: 0 }
    }
}

/// What was written.
#[derive(Clone, Debug, Serialize)]
pub struct ScenesSummary {
    pub root: PathBuf,
    pub class_names: Vec<String>,
    pub images: usize,
    pub boxes: usize,
}

/// Whether `(x, y)` (rotated and scaled to the unit shape) is inside `shape`.
fn inside(shape: &str, x: f32, y: f32) -> bool {
    match shape {
        "circle" => x * x + y * y <= 1.0,
        "square" => x.abs() <= 0.8 && y.abs() <= 0.8,
        "triangle" => y <= 0.7 && y >= -0.9 + 2.0 * x.abs() * 0.95,
        "cross" => (x.abs() <= 0.3 && y.abs() <= 1.0) || (y.abs() <= 0.3 && x.abs() <= 1.0),
        "ring" => (0.45..=1.0).contains(&(x * x + y * y)),
        _ => false,
    }
}

/// One scene and its boxes `(class, [x1, y1, x2, y2])` in pixels (x2/y2 exclusive: the painted pixels span
/// `x1..x2`).
pub fn draw_scene(spec: &ScenesSpec, rng: &mut impl Rng) -> (RgbImage, Vec<(usize, [u32; 4])>) {
    let (w, h) = spec.size;
    let grey = |rng: &mut dyn rand::RngCore| -> [f32; 3] {
        let g: f32 = rng.random_range(60.0..200.0);
        std::array::from_fn(|_| g + rng.random_range(-15.0..15.0))
    };
    let (c0, c1) = (grey(rng), grey(rng));
    let noise = rng.random_range(4.0..16.0);
    let vertical = rng.random_bool(0.5);
    let mut image = RgbImage::from_fn(w, h, |px, py| {
        let t = if vertical { py as f32 / h as f32 } else { px as f32 / w as f32 };
        Rgb(std::array::from_fn(|i| (c0[i] * (1.0 - t) + c1[i] * t) as u8))
    });
    // Clutter: grey strokes that are not objects.
    for _ in 0..rng.random_range(2..6) {
        let (x0, y0) = (rng.random_range(0..w) as i64, rng.random_range(0..h) as i64);
        let (dx, dy) = (rng.random_range(-1.0f32..1.0), rng.random_range(-1.0f32..1.0));
        let len = rng.random_range(10..(w.min(h) as i64 / 2).max(11));
        let shade = rng.random_range(30.0f32..230.0);
        for step in 0..len {
            let (x, y) = (x0 + (dx * step as f32) as i64, y0 + (dy * step as f32) as i64);
            if (0..w as i64).contains(&x) && (0..h as i64).contains(&y) {
                image.put_pixel(x as u32, y as u32, Rgb([shade as u8; 3]));
            }
        }
    }
    let side = w.min(h) as f32;
    let mut boxes = Vec::new();
    for _ in 0..rng.random_range(0..=spec.max_objects) {
        let class = rng.random_range(0..spec.classes);
        let shape = SHAPES[class];
        let radius = rng.random_range(spec.scale.0..spec.scale.1) * side / 2.0;
        let cx = rng.random_range(radius..(w as f32 - radius).max(radius + 1.0));
        let cy = rng.random_range(radius..(h as f32 - radius).max(radius + 1.0));
        let angle: f32 = if shape == "circle" || shape == "ring" { 0.0 } else { rng.random_range(-0.5..0.5) };
        let (sin, cos) = angle.sin_cos();
        let fg = CLASS_COLOURS[class].map(|v| (v + rng.random_range(-30.0..30.0)).clamp(0.0, 255.0));
        let (mut x1, mut y1, mut x2, mut y2) = (u32::MAX, u32::MAX, 0, 0);
        let (lo_x, hi_x) = ((cx - radius - 1.0).max(0.0) as u32, ((cx + radius + 1.0) as u32).min(w));
        let (lo_y, hi_y) = ((cy - radius - 1.0).max(0.0) as u32, ((cy + radius + 1.0) as u32).min(h));
        for py in lo_y..hi_y {
            for px in lo_x..hi_x {
                let (dx, dy) = ((px as f32 + 0.5 - cx) / radius, (py as f32 + 0.5 - cy) / radius);
                if inside(shape, dx * cos + dy * sin, -dx * sin + dy * cos) {
                    image.put_pixel(px, py, Rgb(fg.map(|v| v as u8)));
                    (x1, y1, x2, y2) = (x1.min(px), y1.min(py), x2.max(px + 1), y2.max(py + 1));
                }
            }
        }
        if x2 > x1 && y2 > y1 {
            boxes.push((class, [x1, y1, x2, y2]));
        }
    }
    // Pixel noise over everything, objects included.
    for p in image.pixels_mut() {
        let n = rng.random_range(-noise..noise);
        p.0 = p.0.map(|v| (v as f32 + n).clamp(0.0, 255.0) as u8);
    }
    // Objects may overlap, as in real scenes: a later one may partly cover an earlier one's box.
    (image, boxes)
}

/// Writes `root/images/<split>_<i>.png` and `root/<split>.csv` (`filename,xmin,ymin,xmax,ymax,label`; a
/// negative image gets one row with empty box fields).
pub fn generate_scenes(root: &Path, spec: &ScenesSpec) -> Result<ScenesSummary> {
    if spec.classes == 0 || spec.classes > SHAPES.len() {
        return Err(Error::InvalidSetting {
            key: "classes".into(),
            reason: format!("{} is not in 1..=5", spec.classes),
        });
    }
    let images_dir = root.join("images");
    std::fs::create_dir_all(&images_dir).map_err(|source| Error::Io { path: images_dir.clone(), source })?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let (mut images, mut total_boxes) = (0, 0);
    for (split, count) in [("train", spec.images.0), ("val", spec.images.1), ("test", spec.images.2)] {
        if count == 0 {
            continue;
        }
        let mut csv = String::from("filename,xmin,ymin,xmax,ymax,label\n");
        for i in 0..count {
            let name = format!("{split}_{i:05}.png");
            let (image, boxes) = draw_scene(spec, &mut rng);
            let path = images_dir.join(&name);
            image.save(&path).map_err(|e| Error::Io { path: path.clone(), source: std::io::Error::other(e) })?;
            if boxes.is_empty() {
                let _ = writeln!(csv, "{name},,,,,");
            }
            for (class, [x1, y1, x2, y2]) in &boxes {
                let _ = writeln!(csv, "{name},{x1},{y1},{x2},{y2},{}", SHAPES[*class]);
            }
            images += 1;
            total_boxes += boxes.len();
        }
        write_atomic(&root.join(format!("{split}.csv")), csv.as_bytes())?;
    }
    Ok(ScenesSummary {
        root: root.to_path_buf(),
        class_names: SHAPES[..spec.classes].iter().map(|s| s.to_string()).collect(),
        images,
        boxes: total_boxes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::annotations::{open, Layout};

    #[test]
    fn boxes_are_tight_around_the_painted_pixels_and_read_back_through_the_csv_layout() {
        let spec = ScenesSpec { images: (12, 3, 0), size: (96, 64), ..Default::default() };
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (image, boxes) = draw_scene(&ScenesSpec { max_objects: 1, ..spec.clone() }, &mut rng);
        assert_eq!(image.dimensions(), (96, 64));
        for (class, [x1, y1, x2, y2]) in &boxes {
            assert!(x1 < x2 && y1 < y2 && *x2 <= 96 && *y2 <= 64, "class {class}: {x1},{y1},{x2},{y2}");
        }
        let dir = tempfile::tempdir().unwrap();
        let summary = generate_scenes(dir.path(), &spec).unwrap();
        assert_eq!(summary.images, 15);
        let dataset = open(dir.path(), None).unwrap();
        assert_eq!(dataset.layout, Layout::Csv);
        assert_eq!((dataset.train.len(), dataset.val.len(), dataset.test.len()), (12, 3, 0));
        let read: usize = dataset.train.iter().chain(&dataset.val).map(|s| s.boxes.len()).sum();
        assert_eq!(read, summary.boxes, "every box reads back");
        assert!(dataset.report.is_clean(), "{}", dataset.report);
        assert!(dataset.class_names.iter().all(|c| SHAPES.contains(&c.as_str())));
    }
}
