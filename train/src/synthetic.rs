//! Procedural image sets in the ImageFolder layout: coloured shapes (circle, square, triangle, cross, ring) on
//! noisy gradient backgrounds, with random size, position, rotation and colours. Used by `kiln demo`, the tests
//! and the benchmarks, so that nothing needs a download.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::{Error, Result};

/// The shapes, in class order.
pub const SHAPES: [&str; 5] = ["circle", "square", "triangle", "cross", "ring"];

/// How shapes are coloured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Palette {
    /// Each class has its own hue (jittered) on a greyish background: learnable in a few epochs from scratch, for
    /// demos and tests of the training machinery.
    #[default]
    ByClass,
    /// Any colour on any background: only the shape tells the class (a from-scratch ConvNeXt needs far more data
    /// and epochs).
    Random,
}

/// Base hue of each class's shapes under [`Palette::ByClass`] (RGB).
pub const CLASS_COLOURS: [[f32; 3]; 5] =
    [[220.0, 50.0, 40.0], [40.0, 190.0, 60.0], [40.0, 80.0, 230.0], [230.0, 200.0, 30.0], [200.0, 50.0, 200.0]];

/// What to generate.
#[derive(Clone, Debug)]
pub struct ShapesSpec {
    /// How many of [`SHAPES`] to use as classes (1..=5).
    pub classes: usize,
    /// Images per class in each split: (train, val, test). A split with 0 gets no folder.
    pub per_class: (usize, usize, usize),
    /// Side of the square images in pixels.
    pub size: u32,
    pub seed: u64,
    /// `png` or `jpg`.
    pub format: &'static str,
    pub palette: Palette,
}

impl Default for ShapesSpec {
    fn default() -> Self {
        Self { classes: 4, per_class: (60, 15, 15), size: 64, seed: 0, format: "png", palette: Palette::ByClass }
    }
}

/// What was written.
#[derive(Clone, Debug, Serialize)]
pub struct ShapesSummary {
    pub root: PathBuf,
    pub class_names: Vec<String>,
    pub images: usize,
}

/// Whether `p` lies inside `shape` centred at the origin with radius 1 (coordinates already rotated and scaled).
fn inside(shape: &str, x: f32, y: f32) -> bool {
    match shape {
        "circle" => x * x + y * y <= 1.0,
        "square" => x.abs() <= 0.8 && y.abs() <= 0.8,
        "triangle" => y <= 0.7 && y >= -0.9 + 2.0 * x.abs() * 0.95,
        "cross" => (x.abs() <= 0.3 && y.abs() <= 1.0) || (y.abs() <= 0.3 && x.abs() <= 1.0),
        "ring" => {
            let r2 = x * x + y * y;
            (0.45..=1.0).contains(&r2)
        }
        _ => false,
    }
}

/// Draws one image of class `class` (an index into [`SHAPES`]).
pub fn draw_shape(class: usize, size: u32, palette: Palette, rng: &mut impl Rng) -> RgbImage {
    let shape = SHAPES[class % SHAPES.len()];
    let s = size as f32;
    let (c0, c1, fg): ([f32; 3], [f32; 3], [f32; 3]) = match palette {
        Palette::Random => {
            let c0: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.0..255.0));
            let c1: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.0..255.0));
            // A shape colour far enough from the background's mean to be visible.
            let bg_mean: [f32; 3] = std::array::from_fn(|i| (c0[i] + c1[i]) / 2.0);
            let fg = std::array::from_fn(|i| {
                if bg_mean[i] > 127.0 {
                    rng.random_range(0.0..70.0)
                } else {
                    rng.random_range(185.0..255.0)
                }
            });
            (c0, c1, fg)
        }
        Palette::ByClass => {
            let mut grey = || -> [f32; 3] {
                let g: f32 = rng.random_range(60.0..200.0);
                let tint: [f32; 3] = std::array::from_fn(|_| rng.random_range(-15.0..15.0));
                tint.map(|t| g + t)
            };
            let (c0, c1) = (grey(), grey());
            let fg = CLASS_COLOURS[class % SHAPES.len()].map(|v| (v + rng.random_range(-35.0..35.0)).clamp(0.0, 255.0));
            (c0, c1, fg)
        }
    };
    let radius = rng.random_range(0.2..0.4) * s;
    let cx = rng.random_range(radius..s - radius);
    let cy = rng.random_range(radius..s - radius);
    let angle: f32 = if shape == "circle" || shape == "ring" { 0.0 } else { rng.random_range(-0.5..0.5) };
    let (sin, cos) = angle.sin_cos();
    let noise = rng.random_range(4.0..20.0);
    let vertical = rng.random_bool(0.5);
    RgbImage::from_fn(size, size, |px, py| {
        let t = if vertical { py as f32 / s } else { px as f32 / s };
        let (dx, dy) = ((px as f32 + 0.5 - cx) / radius, (py as f32 + 0.5 - cy) / radius);
        let (rx, ry) = (dx * cos + dy * sin, -dx * sin + dy * cos);
        let base: [f32; 3] =
            if inside(shape, rx, ry) { fg } else { std::array::from_fn(|i| c0[i] * (1.0 - t) + c1[i] * t) };
        let n = rng.random_range(-noise..noise);
        Rgb(base.map(|v| (v + n).clamp(0.0, 255.0) as u8))
    })
}

/// Writes `root/{train,val,test}/<shape>/<i>.<format>`.
pub fn generate_shapes(root: &Path, spec: &ShapesSpec) -> Result<ShapesSummary> {
    if spec.classes == 0 || spec.classes > SHAPES.len() {
        return Err(Error::InvalidSetting {
            key: "classes".into(),
            reason: format!("{} is not in 1..=5", spec.classes),
        });
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let (train, val, test) = spec.per_class;
    let mut images = 0;
    for (split, count) in [("train", train), ("val", val), ("test", test)] {
        for (class, shape) in SHAPES[..spec.classes].iter().enumerate() {
            if count == 0 {
                continue;
            }
            let dir = root.join(split).join(shape);
            std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
            for i in 0..count {
                let path = dir.join(format!("{i:05}.{}", spec.format));
                draw_shape(class, spec.size, spec.palette, &mut rng)
                    .save(&path)
                    .map_err(|e| Error::Io { path: path.clone(), source: std::io::Error::other(e) })?;
                images += 1;
            }
        }
    }
    Ok(ShapesSummary {
        root: root.to_path_buf(),
        class_names: SHAPES[..spec.classes].iter().map(|s| s.to_string()).collect(),
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{ImageFolder, SplitRatios};

    #[test]
    fn writes_an_image_folder_with_distinct_classes() {
        let dir = tempfile::tempdir().unwrap();
        let spec =
            ShapesSpec { classes: 3, per_class: (4, 2, 0), size: 32, seed: 1, format: "jpg", ..Default::default() };
        let summary = generate_shapes(dir.path(), &spec).unwrap();
        assert_eq!(summary.images, 18);
        let ds = ImageFolder::open(dir.path(), SplitRatios { val: 0.0, test: 0.0, seed: 0 }).unwrap();
        assert_eq!(ds.class_names, ["circle", "square", "triangle"]);
        assert_eq!((ds.train.len(), ds.val.len(), ds.test.len()), (12, 6, 0));
        let img = image::open(&ds.train[0].path).unwrap();
        assert_eq!((img.width(), img.height()), (32, 32));
    }

    #[test]
    fn shapes_cover_a_plausible_area() {
        // Fraction of the unit square [-1, 1]^2 inside each shape, on a grid.
        for shape in SHAPES {
            let n = 200;
            let inside_count = (0..n * n)
                .filter(|i| {
                    let (x, y) = ((i % n) as f32 / n as f32 * 2.0 - 1.0, (i / n) as f32 / n as f32 * 2.0 - 1.0);
                    inside(shape, x, y)
                })
                .count();
            let fraction = inside_count as f32 / (n * n) as f32;
            assert!((0.1..0.8).contains(&fraction), "{shape}: {fraction}");
        }
    }
}
