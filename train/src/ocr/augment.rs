//! Augmentation of text-line images for training: random padding around the line, a small rotation and shear,
//! contrast and brightness, blur and noise. Geometry is applied before the line is fitted to the input height
//! (so the fitted line keeps the whole text), photometry on the fitted line.

use image::RgbImage;
use rand::Rng;

pub use super::settings::TextAugment;

/// The mean colour of the image's outermost pixels (the background of a typical line).
pub fn border_colour(image: &RgbImage) -> [u8; 3] {
    let (w, h) = image.dimensions();
    let mut sum = [0u64; 3];
    let mut n = 0u64;
    let mut add = |x: u32, y: u32| {
        let p = image.get_pixel(x, y).0;
        for c in 0..3 {
            sum[c] += p[c] as u64;
        }
        n += 1;
    };
    for x in 0..w {
        add(x, 0);
        add(x, h - 1);
    }
    for y in 0..h {
        add(0, y);
        add(w - 1, y);
    }
    let n = n.max(1);
    [(sum[0] / n) as u8, (sum[1] / n) as u8, (sum[2] / n) as u8]
}

/// The geometric part: random padding, then rotation and shear about the centre, on the original image. The
/// canvas widens by the shear but keeps the padded height: a rotated long line is not shrunk to fit its rotated
/// bounding box (at 2° a line eight times as wide as high would need a box 28 % higher, and fitting that box to
/// the input height would shrink every glyph by as much, so training would read smaller text than evaluation);
/// the line's ends may lose the corners that leave the canvas.
pub fn augment_geometry(image: &RgbImage, config: &TextAugment, rng: &mut impl Rng) -> RgbImage {
    let (w, h) = image.dimensions();
    let fill = border_colour(image);
    let side = |rng: &mut dyn rand::RngCore, max: f64| -> u32 {
        if max <= 0.0 {
            0
        } else {
            (rng.random_range(0.0..=max) * h as f64).round() as u32
        }
    };
    let (left, right) = (side(rng, config.pad), side(rng, config.pad));
    let (top, bottom) = (side(rng, config.pad / 2.0), side(rng, config.pad / 2.0));
    let angle = if config.rotate > 0.0 { rng.random_range(-config.rotate..=config.rotate).to_radians() } else { 0.0 };
    let shear = if config.shear > 0.0 { rng.random_range(-config.shear..=config.shear) } else { 0.0 };
    let (pw, ph) = (w + left + right, h + top + bottom);
    let (cos, sin) = (angle.cos(), angle.sin());
    let (hw, hh) = (pw as f64 / 2.0, ph as f64 / 2.0);
    let (ow, oh) = ((pw as f64 + shear.abs() * ph as f64).ceil().max(1.0) as u32, ph);
    let mut out = RgbImage::from_pixel(ow, oh, image::Rgb(fill));
    let (ocx, ocy) = (ow as f64 / 2.0, oh as f64 / 2.0);
    for oy in 0..oh {
        for ox in 0..ow {
            // Inverse mapping: undo the rotation, then the shear, then find the source pixel.
            let (u, v) = (ox as f64 + 0.5 - ocx, oy as f64 + 0.5 - ocy);
            let (xs, y) = (u * cos + v * sin, -u * sin + v * cos);
            let x = xs - shear * y;
            let (sx, sy) = (x + hw - left as f64 - 0.5, y + hh - top as f64 - 0.5);
            if let Some(p) = bilinear(image, sx, sy) {
                out.put_pixel(ox, oy, image::Rgb(p));
            }
        }
    }
    out
}

/// The image sampled at `(x, y)` (pixel centres at integers), `None` outside it.
fn bilinear(image: &RgbImage, x: f64, y: f64) -> Option<[u8; 3]> {
    let (w, h) = image.dimensions();
    if x < -0.5 || y < -0.5 || x > w as f64 - 0.5 || y > h as f64 - 0.5 {
        return None;
    }
    let (x, y) = (x.clamp(0.0, (w - 1) as f64), y.clamp(0.0, (h - 1) as f64));
    let (x0, y0) = (x.floor() as u32, y.floor() as u32);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f64, y - y0 as f64);
    let mut out = [0u8; 3];
    for (c, o) in out.iter_mut().enumerate() {
        let p = |xx: u32, yy: u32| image.get_pixel(xx, yy).0[c] as f64;
        let top = p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx;
        let bottom = p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx;
        *o = (top * (1.0 - fy) + bottom * fy).round() as u8;
    }
    Some(out)
}

/// The photometric part, on a fitted line's row-major RGB8 pixels (`width` wide): contrast and brightness, blur,
/// noise.
pub fn augment_pixels(pixels: &mut [u8], width: usize, config: &TextAugment, rng: &mut impl Rng) {
    if pixels.is_empty() {
        return;
    }
    let height = pixels.len() / (3 * width.max(1));
    let mut values: Vec<f32> = pixels.iter().map(|&p| p as f32).collect();
    if config.contrast > 0.0 {
        let factor = rng.random_range(1.0 - config.contrast..=1.0 + config.contrast) as f32;
        let shift = rng.random_range(-config.contrast..=config.contrast) as f32 * 64.0;
        let mean = values.iter().sum::<f32>() / values.len() as f32;
        for v in &mut values {
            *v = (*v - mean) * factor + mean + shift;
        }
    }
    if config.blur > 0.0 && rng.random_bool(config.blur) {
        values = blur3(&values, width, height);
    }
    if config.noise > 0.0 {
        let sigma = rng.random_range(0.0..=config.noise) as f32 * 255.0;
        if sigma > 0.0 {
            for v in &mut values {
                // Box-Muller.
                let (u1, u2): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
                *v += sigma * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
            }
        }
    }
    for (p, v) in pixels.iter_mut().zip(values) {
        *p = v.round().clamp(0.0, 255.0) as u8;
    }
}

/// A 3×3 Gaussian blur (weights 1-2-1 per axis), edges clamped.
fn blur3(values: &[f32], width: usize, height: usize) -> Vec<f32> {
    let at = |x: isize, y: isize, c: usize| {
        let x = x.clamp(0, width as isize - 1) as usize;
        let y = y.clamp(0, height as isize - 1) as usize;
        values[(y * width + x) * 3 + c]
    };
    let mut out = vec![0f32; values.len()];
    for y in 0..height as isize {
        for x in 0..width as isize {
            for c in 0..3 {
                let mut sum = 0.0;
                for (dy, wy) in [(-1, 1.0), (0, 2.0), (1, 1.0)] {
                    for (dx, wx) in [(-1, 1.0), (0, 2.0), (1, 1.0)] {
                        sum += wx * wy * at(x + dx, y + dy, c);
                    }
                }
                out[(y as usize * width + x as usize) * 3 + c] = sum / 16.0;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn line() -> RgbImage {
        // A dark bar on a light background.
        RgbImage::from_fn(60, 20, |x, y| {
            if (20..40).contains(&x) && (5..15).contains(&y) {
                image::Rgb([10; 3])
            } else {
                image::Rgb([230; 3])
            }
        })
    }

    #[test]
    fn no_augmentation_keeps_the_image() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let image = line();
        assert_eq!(augment_geometry(&image, &TextAugment::none(), &mut rng), image);
        let mut pixels = image.as_raw().clone();
        augment_pixels(&mut pixels, 60, &TextAugment::none(), &mut rng);
        assert_eq!(&pixels, image.as_raw());
    }

    #[test]
    fn geometry_keeps_the_ink_and_pads_with_the_background() {
        let config = TextAugment { contrast: 0.0, blur: 0.0, noise: 0.0, ..TextAugment::recommended() };
        let image = line();
        let dark = |img: &RgbImage| img.pixels().filter(|p| p.0[0] < 120).count();
        for seed in 0..20 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let out = augment_geometry(&image, &config, &mut rng);
            assert!(out.width() >= 60 && out.height() >= 20, "{seed}: {:?}", out.dimensions());
            assert!(out.height() <= 20 + 2 * 3, "{seed}: only the padding adds height: {:?}", out.dimensions());
            let ratio = dark(&out) as f64 / dark(&image) as f64;
            assert!((0.85..1.15).contains(&ratio), "seed {seed}: the bar's area changed by {ratio}");
            assert_eq!(out.get_pixel(0, 0).0, border_colour(&image), "corners are background");
        }
    }

    #[test]
    fn photometry_changes_values_within_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let image = line();
        let mut pixels = image.as_raw().clone();
        let config = TextAugment { blur: 1.0, ..TextAugment::recommended() };
        augment_pixels(&mut pixels, 60, &config, &mut rng);
        assert_ne!(&pixels, image.as_raw());
        let mean = |p: &[u8]| p.iter().map(|&v| v as f64).sum::<f64>() / p.len() as f64;
        assert!((mean(&pixels) - mean(image.as_raw())).abs() < 40.0);
    }
}
