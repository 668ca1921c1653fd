//! Rendered text lines in the `labels.txt` layout (`<split>/images/*.png` + `<split>/labels.txt`): random strings
//! over an alphabet drawn with the embedded DejaVu Sans at varied sizes and letter spacing, dark on a light
//! gradient (some inverted), with blur and noise. Used by `kiln demo`, the tests and the benchmarks, so that
//! nothing needs a download.

use std::fmt::Write as _;
use std::path::Path;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};

use super::charset::Charset;
use crate::fsutil::write_atomic;
use crate::{Error, Result};

/// What to generate.
#[derive(Clone, Debug)]
pub struct TextLinesSpec {
    /// Lines in each split: (train, val, test).
    pub lines: (usize, usize, usize),
    /// The characters to draw from, as a charset string (`0-9`, `0-9A-Za-z`).
    pub alphabet: String,
    /// Characters per line, inclusive.
    pub length: (usize, usize),
    /// Font size in pixels, inclusive.
    pub font_px: (f32, f32),
    pub seed: u64,
}

impl Default for TextLinesSpec {
    fn default() -> Self {
        Self { lines: (2000, 200, 200), alphabet: "0-9".into(), length: (4, 10), font_px: (20.0, 30.0), seed: 0 }
    }
}

/// Draws `text` as a line image: returns the image.
pub fn render_line(font: &FontRef<'_>, text: &str, px: f32, spacing: f32, rng: &mut impl Rng) -> RgbImage {
    let scaled = font.as_scaled(PxScale::from(px));
    let chars: Vec<char> = text.chars().collect();
    let mut width = 0f32;
    for (i, &c) in chars.iter().enumerate() {
        let id = font.glyph_id(c);
        width += scaled.h_advance(id) + if i + 1 < chars.len() { spacing } else { 0.0 };
        if let Some(&next) = chars.get(i + 1) {
            width += scaled.kern(id, font.glyph_id(next));
        }
    }
    let margin_x = rng.random_range(2.0..px * 0.6);
    let margin_y = rng.random_range(1.0..px * 0.25);
    let (w, h) =
        ((width + 2.0 * margin_x).ceil() as u32, (scaled.ascent() - scaled.descent() + 2.0 * margin_y).ceil() as u32);
    let inverted = rng.random_bool(0.15);
    let light = [rng.random_range(170.0..255.0f32), rng.random_range(170.0..255.0), rng.random_range(170.0..255.0)];
    let dark = [rng.random_range(0.0..90.0f32), rng.random_range(0.0..90.0), rng.random_range(0.0..90.0)];
    let (bg, fg) = if inverted { (dark, light) } else { (light, dark) };
    let gradient = rng.random_range(-40.0..40.0f32);
    let mut canvas: Vec<[f32; 3]> = (0..w * h)
        .map(|i| {
            let t = (i % w) as f32 / w.max(1) as f32 - 0.5;
            bg.map(|v| v + gradient * t)
        })
        .collect();
    let mut x = margin_x;
    let baseline = margin_y + scaled.ascent();
    for (i, &c) in chars.iter().enumerate() {
        let id = font.glyph_id(c);
        let glyph = id.with_scale_and_position(px, ab_glyph::point(x, baseline));
        if let Some(outline) = font.outline_glyph(glyph) {
            let bounds = outline.px_bounds();
            outline.draw(|gx, gy, coverage| {
                let (px_x, px_y) = (bounds.min.x as i32 + gx as i32, bounds.min.y as i32 + gy as i32);
                if px_x >= 0 && px_y >= 0 && (px_x as u32) < w && (px_y as u32) < h {
                    let p = &mut canvas[(px_y as u32 * w + px_x as u32) as usize];
                    for ch in 0..3 {
                        p[ch] = p[ch] * (1.0 - coverage) + fg[ch] * coverage;
                    }
                }
            });
        }
        x += scaled.h_advance(id) + spacing;
        if let Some(&next) = chars.get(i + 1) {
            x += scaled.kern(id, font.glyph_id(next));
        }
    }
    let noise = rng.random_range(0.0..12.0f32);
    RgbImage::from_fn(w, h, |x, y| {
        let p = canvas[(y * w + x) as usize];
        Rgb(p.map(|v| (v + noise * (rng.random::<f32>() - 0.5) * 2.0).round().clamp(0.0, 255.0) as u8))
    })
}

/// A random string of `length` characters of `alphabet`.
fn random_text(alphabet: &[String], length: (usize, usize), rng: &mut impl Rng) -> String {
    let n = rng.random_range(length.0..=length.1);
    (0..n).map(|_| alphabet[rng.random_range(0..alphabet.len())].as_str()).collect()
}

/// Writes the lines under `root` (which is created); returns the number of images.
pub fn write_text_lines(root: &Path, spec: &TextLinesSpec) -> Result<usize> {
    let font = FontRef::try_from_slice(crate::plots::FONT_BYTES).expect("the embedded font parses");
    let alphabet = Charset::parse(&spec.alphabet);
    if alphabet.is_empty() || spec.length.0 == 0 || spec.length.0 > spec.length.1 {
        return Err(Error::InvalidSetting {
            key: "text lines".into(),
            reason: format!("alphabet {:?} and lengths {:?}", spec.alphabet, spec.length),
        });
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let mut total = 0;
    for (split, n) in [("train", spec.lines.0), ("val", spec.lines.1), ("test", spec.lines.2)] {
        if n == 0 {
            continue;
        }
        let dir = root.join(split).join("images");
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
        let mut labels = String::new();
        for i in 0..n {
            let text = random_text(alphabet.chars(), spec.length, &mut rng);
            let px = rng.random_range(spec.font_px.0..=spec.font_px.1);
            let spacing = rng.random_range(-0.05..0.25) * px;
            let mut image = render_line(&font, &text, px, spacing, &mut rng);
            if rng.random_bool(0.3) {
                image = image::imageops::blur(&image, rng.random_range(0.3..1.0));
            }
            let name = format!("{i:05}.png");
            let path = dir.join(&name);
            image.save(&path).map_err(|e| Error::Io { path: path.clone(), source: std::io::Error::other(e) })?;
            writeln!(labels, "{name}\t{text}").expect("writing to a String");
            total += 1;
        }
        write_atomic(&root.join(split).join("labels.txt"), labels.as_bytes())?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_written_with_their_labels_and_ink() {
        let dir = tempfile::tempdir().unwrap();
        let spec = TextLinesSpec { lines: (5, 2, 0), length: (3, 6), ..TextLinesSpec::default() };
        assert_eq!(write_text_lines(dir.path(), &spec).unwrap(), 7);
        let labels = std::fs::read_to_string(dir.path().join("train/labels.txt")).unwrap();
        let rows: Vec<(&str, &str)> = labels.lines().map(|l| l.split_once('\t').unwrap()).collect();
        assert_eq!(rows.len(), 5);
        for (name, text) in rows {
            assert!((3..=6).contains(&text.len()) && text.chars().all(|c| c.is_ascii_digit()), "{text}");
            let image = image::open(dir.path().join("train/images").join(name)).unwrap().to_rgb8();
            // Wider for longer text, and with ink: a spread of grey levels.
            assert!(image.width() as usize >= text.len() * 8, "{name}: {:?}", image.dimensions());
            let grey: Vec<u8> = image.pixels().map(|p| p.0[1]).collect();
            let (lo, hi) = (grey.iter().min().unwrap(), grey.iter().max().unwrap());
            assert!(hi - lo > 60, "{name}: no ink ({lo}..{hi})");
        }
        assert!(!dir.path().join("test").exists());
    }
}
