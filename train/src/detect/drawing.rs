//! `<split>_predictions.png`: a grid of a split's first images with the true boxes (green) and the detections
//! above the score threshold (orange, labelled with class and score), in original image pixels — what the
//! detector sees, next to what it should see.

use std::path::Path;

use image::RgbImage;
use plotters::prelude::*;

use kiln_infer::nms::Detection;

use super::matching::TruthBox;
use crate::plots::{render_over, DrawResult, FONT};
use crate::Result;

/// Side of one tile in pixels.
const TILE: u32 = 320;
const COLUMNS: usize = 3;
const TRUTH: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const PREDICTED: RGBColor = RGBColor(0xff, 0x7f, 0x0e);

/// One image to draw.
pub struct DrawnImage {
    pub image: RgbImage,
    pub truths: Vec<TruthBox>,
    pub detections: Vec<Detection>,
}

/// Draws up to 6 images in a grid of `TILE`-pixel tiles; detections under `score_threshold` are left out.
pub fn draw_predictions(
    path: &Path,
    images: &[DrawnImage],
    class_names: &[String],
    score_threshold: f32,
) -> Result<()> {
    let images = &images[..images.len().min(6)];
    let rows = images.len().div_ceil(COLUMNS).max(1);
    let cols = images.len().clamp(1, COLUMNS);
    let (width, height) = (TILE * cols as u32, TILE * rows as u32);
    let mut canvas = RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    // Each tile: the image scaled to fit, at the tile's top-left corner.
    let mut placements = Vec::new();
    for (i, drawn) in images.iter().enumerate() {
        let (w, h) = drawn.image.dimensions();
        let scale = (TILE as f32 / w as f32).min(TILE as f32 / h as f32);
        let (sw, sh) = (((w as f32 * scale).round() as u32).max(1), ((h as f32 * scale).round() as u32).max(1));
        let scaled = image::imageops::resize(&drawn.image, sw, sh, image::imageops::FilterType::Triangle);
        let (x0, y0) = ((i % COLUMNS) as u32 * TILE, (i / COLUMNS) as u32 * TILE);
        image::imageops::replace(&mut canvas, &scaled, x0 as i64, y0 as i64);
        placements.push((x0 as f32, y0 as f32, sw as f32 / w as f32, sh as f32 / h as f32));
    }
    let name = |c: usize| class_names.get(c).cloned().unwrap_or_else(|| c.to_string());
    render_over(path, Some(canvas.into_raw()), (width, height), |root| -> DrawResult<()> {
        for (drawn, &(x0, y0, sx, sy)) in images.iter().zip(&placements) {
            let corner = |x: f32, y: f32| ((x0 + x * sx) as i32, (y0 + y * sy) as i32);
            for t in &drawn.truths {
                let [x1, y1, x2, y2] = t.bbox;
                root.draw(&Rectangle::new([corner(x1, y1), corner(x2, y2)], TRUTH.stroke_width(2)))?;
            }
            for d in drawn.detections.iter().filter(|d| d.score >= score_threshold) {
                let [x1, y1, x2, y2] = d.bbox;
                let (a, b) = (corner(x1, y1), corner(x2, y2));
                root.draw(&Rectangle::new([a, b], PREDICTED.stroke_width(2)))?;
                let label = format!("{} {:.2}", name(d.class), d.score);
                root.draw(&Text::new(label, (a.0 + 2, a.1 + 2), (FONT, 13).into_font().color(&PREDICTED)))?;
            }
        }
        Ok(())
    })
}

/// Writes `image` at its own size with `detections` (in its pixels) drawn and labelled, as PNG (`kiln infer
/// --save-vis`).
pub fn save_detections(path: &Path, image: &RgbImage, detections: &[Detection], class_names: &[String]) -> Result<()> {
    let (width, height) = image.dimensions();
    let name = |c: usize| class_names.get(c).cloned().unwrap_or_else(|| c.to_string());
    let thick = (width.min(height) / 200).clamp(1, 4);
    render_over(path, Some(image.as_raw().clone()), (width, height), |root| -> DrawResult<()> {
        for d in detections {
            let [x1, y1, x2, y2] = d.bbox;
            let (a, b) = ((x1 as i32, y1 as i32), (x2 as i32, y2 as i32));
            root.draw(&Rectangle::new([a, b], PREDICTED.stroke_width(thick)))?;
            let label = format!("{} {:.2}", name(d.class), d.score);
            let size = (12 + thick as i32 * 2) as f64;
            root.draw(&Text::new(label, (a.0 + 2, a.1 + 2), (FONT, size).into_font().color(&PREDICTED)))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_truths_and_detections_where_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("val_predictions.png");
        let drawn = DrawnImage {
            image: RgbImage::from_pixel(160, 80, image::Rgb([0, 0, 0])),
            truths: vec![TruthBox { bbox: [10.0, 10.0, 50.0, 50.0], class: 0, crowd: false }],
            detections: vec![
                Detection { bbox: [80.0, 10.0, 150.0, 70.0], score: 0.9, class: 1 },
                Detection { bbox: [0.0, 0.0, 160.0, 80.0], score: 0.01, class: 1 },
            ],
        };
        draw_predictions(&path, &[drawn], &["a".into(), "b".into()], 0.3).unwrap();
        let png = image::open(&path).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (TILE, TILE));
        // The image is scaled by 2: the truth's left edge at x = 20, the detection's at x = 160.
        assert_eq!(png.get_pixel(20, 60).0, [TRUTH.0, TRUTH.1, TRUTH.2]);
        assert_eq!(png.get_pixel(160, 100).0, [PREDICTED.0, PREDICTED.1, PREDICTED.2]);
        // The low-score detection (the whole image) is not drawn: the image's corner stays black.
        assert_eq!(png.get_pixel(1, 150).0, [0, 0, 0]);
    }

    #[test]
    fn saved_detections_are_drawn_at_the_image_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        let image = RgbImage::from_pixel(120, 90, image::Rgb([0, 0, 0]));
        let detections = [Detection { bbox: [30.0, 20.0, 100.0, 80.0], score: 0.8, class: 0 }];
        save_detections(&path, &image, &detections, &["a".into()]).unwrap();
        let png = image::open(&path).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (120, 90));
        assert_eq!(png.get_pixel(100, 60).0, [PREDICTED.0, PREDICTED.1, PREDICTED.2], "the right edge");
        assert_eq!(png.get_pixel(10, 85).0, [0, 0, 0], "outside the box the image is untouched");
    }
}
