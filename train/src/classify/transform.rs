//! Classification's image transform, augmentation and normalisation: an RGB8 image in, a normalised CHW f32
//! tensor's data out. The settings are the config's [`AugmentConfig`].
//!
//! Training: random resized crop (as torchvision's `RandomResizedCrop`), horizontal flip, RandAugment or
//! TrivialAugment ([`super::auto_augment`]), colour jitter (brightness, contrast, saturation), then random erasing
//! on the normalised image ([`super::erasing`]): timm's order. Evaluation: the whole image resized to the square input size, by the very
//! code `kiln-infer` runs in production ([`Preprocess`]), so exported models see what validation saw. Resizing is
//! antialiased (bilinear convolution); flip, jitter and normalisation run in one pass.

use image::RgbImage;
pub use kiln_infer::preprocess::Crop;
use kiln_infer::preprocess::{normalize_chw, resize_region, ChannelOrder, Preprocess, Resize};
use rand::Rng;

pub use crate::config::AugmentConfig;
pub use crate::data::Normalize;

/// What to do to an image before it becomes a tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Transform {
    Train(AugmentConfig),
    /// Evaluation: the image stretched to the input size (what kiln exports as `resize: stretch`).
    Eval,
    /// Evaluation with timm's resize: the shorter side to `floor(size / crop_pct)`, then the centre crop
    /// ([`Resize::CenterCrop`]; `eval_crop_pct` in the config).
    EvalCenterCrop(f32),
}

impl Transform {
    /// The evaluation transform of a config's `eval_crop_pct`: timm's centre crop, or the stretch without it.
    pub fn eval(crop_pct: Option<f64>) -> Self {
        match crop_pct {
            Some(pct) => Transform::EvalCenterCrop(pct as f32),
            None => Transform::Eval,
        }
    }

    /// The production resize of an evaluation transform (`None` for training's random crops).
    pub fn eval_resize(&self) -> Option<Resize> {
        match self {
            Transform::Train(_) => None,
            Transform::Eval => Some(Resize::Stretch),
            Transform::EvalCenterCrop(crop_pct) => Some(Resize::CenterCrop { crop_pct: *crop_pct }),
        }
    }
}

/// torchvision's RandomResizedCrop parameters: up to 10 tries at a crop of random area and aspect ratio that fits,
/// then a centre crop with the aspect ratio clamped to the range.
pub fn random_resized_crop(width: u32, height: u32, scale: [f64; 2], ratio: [f64; 2], rng: &mut impl Rng) -> Crop {
    let (w, h) = (width as f64, height as f64);
    let area = w * h;
    let (log_lo, log_hi) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale[0]..=scale[1]);
        let aspect = if log_hi > log_lo { rng.random_range(log_lo..=log_hi).exp() } else { ratio[0] };
        let cw = (target * aspect).sqrt().round();
        let ch = (target / aspect).sqrt().round();
        if cw >= 1.0 && ch >= 1.0 && cw <= w && ch <= h {
            // An integer offset in [0, w - cw] inclusive, as torchvision's randint(0, w - cw + 1): every position,
            // the right and bottom edges included, is equally likely.
            let left = rng.random_range(0..=(w - cw) as u32) as f64;
            let top = rng.random_range(0..=(h - ch) as u32) as f64;
            return Crop { left, top, width: cw, height: ch };
        }
    }
    let in_ratio = w / h;
    let (cw, ch) = if in_ratio < ratio[0] {
        (w, (w / ratio[0]).round())
    } else if in_ratio > ratio[1] {
        ((h * ratio[1]).round(), h)
    } else {
        (w, h)
    };
    Crop { left: ((w - cw) / 2.0).floor(), top: ((h - ch) / 2.0).floor(), width: cw, height: ch }
}

/// Brightness, contrast and saturation factors.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Jitter {
    brightness: f32,
    contrast: f32,
    saturation: f32,
}

impl Jitter {
    const NONE: Jitter = Jitter { brightness: 1.0, contrast: 1.0, saturation: 1.0 };

    fn sample(strength: f64, rng: &mut impl Rng) -> Self {
        if strength <= 0.0 {
            return Self::NONE;
        }
        let lo = (1.0 - strength).max(0.0);
        let mut factor = || rng.random_range(lo..=1.0 + strength) as f32;
        Jitter { brightness: factor(), contrast: factor(), saturation: factor() }
    }
}

fn gray(r: f32, g: f32, b: f32) -> f32 {
    0.299 * r + 0.587 * g + 0.114 * b
}

/// Writes `pixels` (`size`×`size` RGB8, row-major) as normalised CHW floats into `out` (length 3·size²),
/// mirrored when `flip`, with the jitter applied on 0..1 values before normalisation.
fn write_chw(pixels: &[u8], size: usize, flip: bool, jitter: Jitter, norm: &Normalize, out: &mut [f32]) {
    let plane = size * size;
    assert_eq!(out.len(), 3 * plane, "output buffer must hold 3 x size x size floats");
    let mean_gray = if jitter.contrast != 1.0 {
        let sum: f32 = pixels.chunks_exact(3).map(|p| gray(p[0] as f32, p[1] as f32, p[2] as f32)).sum();
        jitter.brightness * sum / (plane as f32 * 255.0)
    } else {
        0.0
    };
    let scale = [1.0 / (255.0 * norm.std[0]), 1.0 / (255.0 * norm.std[1]), 1.0 / (255.0 * norm.std[2])];
    let offset = [norm.mean[0] / norm.std[0], norm.mean[1] / norm.std[1], norm.mean[2] / norm.std[2]];
    let (out_r, rest) = out.split_at_mut(plane);
    let (out_g, out_b) = rest.split_at_mut(plane);
    for y in 0..size {
        let row = &pixels[y * size * 3..(y + 1) * size * 3];
        for x in 0..size {
            let sx = if flip { size - 1 - x } else { x };
            let p = &row[sx * 3..sx * 3 + 3];
            let mut rgb = [p[0] as f32, p[1] as f32, p[2] as f32];
            if jitter != Jitter::NONE {
                let b = jitter.brightness;
                let mut v = rgb.map(|c| (c * b / 255.0).clamp(0.0, 1.0));
                v = v.map(|c| ((c - mean_gray) * jitter.contrast + mean_gray).clamp(0.0, 1.0));
                let g = gray(v[0], v[1], v[2]);
                v = v.map(|c| ((c - g) * jitter.saturation + g).clamp(0.0, 1.0));
                rgb = v.map(|c| c * 255.0);
            }
            let i = y * size + x;
            out_r[i] = rgb[0] * scale[0] - offset[0];
            out_g[i] = rgb[1] * scale[1] - offset[1];
            out_b[i] = rgb[2] * scale[2] - offset[2];
        }
    }
}

/// Applies `transform` to `image` (the loader's working image, [`super::cache::working_image`]: for
/// evaluation already at the input size) and writes the normalised `3 × size × size` CHW result into `out`.
pub fn transform_into(
    image: &RgbImage,
    size: u32,
    transform: &Transform,
    norm: &Normalize,
    rng: &mut impl Rng,
    out: &mut [f32],
) {
    let (w, h) = image.dimensions();
    match transform {
        // Already at the input size (the loader's working image for evaluation): normalise only.
        Transform::Eval | Transform::EvalCenterCrop(_) if (w, h) == (size, size) => {
            let s = size as usize;
            normalize_chw(image.as_raw(), s, s, &norm.mean, &norm.std, ChannelOrder::Rgb, out);
        }
        Transform::Eval | Transform::EvalCenterCrop(_) => {
            let eval = Preprocess {
                size: [size, size],
                resize: transform.eval_resize().expect("an evaluation transform"),
                mean: norm.mean,
                std: norm.std,
                channels: ChannelOrder::Rgb,
            };
            eval.apply(image, out);
        }
        Transform::Train(cfg) => {
            let crop = random_resized_crop(w, h, cfg.scale, cfg.ratio, rng);
            let flip = rng.random_bool(cfg.hflip.clamp(0.0, 1.0));
            let jitter = Jitter::sample(cfg.color_jitter, rng);
            let resized = resize_region(image, crop, size, size);
            match &cfg.auto_augment {
                None => write_chw(&resized, size as usize, flip, jitter, norm, out),
                Some(policy) => {
                    let mut crop = RgbImage::from_raw(size, size, resized).expect("a size x size RGB8 buffer");
                    if flip {
                        image::imageops::flip_horizontal_in_place(&mut crop);
                    }
                    let augmented = policy.apply(&crop, rng);
                    write_chw(augmented.as_raw(), size as usize, false, jitter, norm, out);
                }
            }
            cfg.random_erasing.apply(out, size as usize, rng);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn halves(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, _| if x < w / 2 { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) })
    }

    fn bounds(norm: &Normalize, c: usize) -> (f32, f32) {
        ((0.0 - norm.mean[c]) / norm.std[c], (1.0 - norm.mean[c]) / norm.std[c])
    }

    #[test]
    fn crops_fit_the_image_and_respect_the_ranges() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (scale, ratio) = ([0.08, 1.0], [0.75, 4.0 / 3.0]);
        for (w, h) in [(640, 480), (32, 500), (1, 1), (300, 300)] {
            for _ in 0..200 {
                let c = random_resized_crop(w, h, scale, ratio, &mut rng);
                assert!(c.left >= 0.0 && c.top >= 0.0 && c.width >= 1.0 && c.height >= 1.0, "{c:?}");
                assert!(c.left + c.width <= w as f64 && c.top + c.height <= h as f64, "{c:?} in {w}x{h}");
                assert_eq!((c.left.fract(), c.top.fract()), (0.0, 0.0), "whole-pixel offsets");
            }
        }
        // On a large image the first try nearly always fits: the sampled area and aspect ratio stay in their
        // ranges (up to the rounding of the crop's sides), both ends of each range are approached, and offsets
        // reach the right and bottom edges.
        let (w, h) = (1000u32, 1000u32);
        let (mut areas, mut aspects) = (Vec::new(), Vec::new());
        for _ in 0..4000 {
            let c = random_resized_crop(w, h, scale, ratio, &mut rng);
            let area = c.width * c.height / (w * h) as f64;
            let aspect = c.width / c.height;
            assert!(area >= scale[0] * 0.98 && area <= scale[1] + 1e-9, "area {area}");
            assert!(aspect >= ratio[0] * 0.98 && aspect <= ratio[1] * 1.02, "aspect {aspect}");
            areas.push(area);
            aspects.push(aspect);
        }
        let lo_hi =
            |v: &[f64]| (v.iter().cloned().fold(f64::MAX, f64::min), v.iter().cloned().fold(f64::MIN, f64::max));
        let (amin, amax) = lo_hi(&areas);
        let (rmin, rmax) = lo_hi(&aspects);
        assert!(amin < 0.1 && amax > 0.9, "areas span the range: {amin}..{amax}");
        assert!(rmin < 0.78 && rmax > 1.28, "aspects span the range: {rmin}..{rmax}");
        let mean_aspect_log = aspects.iter().map(|a| a.ln()).sum::<f64>() / aspects.len() as f64;
        assert!(mean_aspect_log.abs() < 0.02, "log-uniform aspect is centred on 1: {mean_aspect_log}");
        // A 5x5 crop of a 10x10 image has six offsets per axis, each as likely (1/6), the last one included.
        let mut lefts = [0usize; 6];
        let mut tops = [0usize; 6];
        for _ in 0..6000 {
            let c = random_resized_crop(10, 10, [0.25, 0.25], [1.0, 1.0], &mut rng);
            assert_eq!((c.width, c.height), (5.0, 5.0));
            lefts[c.left as usize] += 1;
            tops[c.top as usize] += 1;
        }
        for counts in [lefts, tops] {
            assert!(counts.iter().all(|&n| (800..1200).contains(&n)), "offsets are uniform over 0..=5: {counts:?}");
        }
    }

    #[test]
    fn training_transform_keeps_shape_and_value_range() {
        let norm = Normalize::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let image = RgbImage::from_fn(97, 61, |x, y| image::Rgb([(x * 2) as u8, (y * 4) as u8, ((x + y) % 256) as u8]));
        let strong = AugmentConfig { color_jitter: 0.9, ..Default::default() };
        for _ in 0..20 {
            let mut out = vec![f32::NAN; 3 * 40 * 40];
            transform_into(&image, 40, &Transform::Train(strong.clone()), &norm, &mut rng, &mut out);
            for c in 0..3 {
                let (lo, hi) = bounds(&norm, c);
                let plane = &out[c * 1600..(c + 1) * 1600];
                assert!(plane.iter().all(|v| v.is_finite() && *v >= lo - 1e-5 && *v <= hi + 1e-5), "channel {c}");
            }
        }
    }

    #[test]
    fn rand_augment_and_erasing_keep_the_shape_and_erase_after_normalisation() {
        use crate::config::{AutoAugment, EraseFill, RandomErasing};
        let norm = Normalize::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let image = RgbImage::from_fn(50, 40, |x, y| image::Rgb([(x * 5) as u8, (y * 6) as u8, 128]));
        let policy = AugmentConfig { auto_augment: Some(AutoAugment::RAND_AUGMENT), ..Default::default() };
        let plain = AugmentConfig::default();
        let mut differs_from_plain = 0;
        for i in 0..40 {
            let mut a = vec![f32::NAN; 3 * 32 * 32];
            let mut b = vec![f32::NAN; 3 * 32 * 32];
            transform_into(&image, 32, &Transform::Train(policy.clone()), &norm, &mut rng, &mut a);
            let mut twin = rand::rngs::StdRng::seed_from_u64(100 + i);
            transform_into(&image, 32, &Transform::Train(plain.clone()), &norm, &mut twin.clone(), &mut b);
            let mut c = vec![f32::NAN; 3 * 32 * 32];
            transform_into(&image, 32, &Transform::Train(policy.clone()), &norm, &mut twin, &mut c);
            for ch in 0..3 {
                let (lo, hi) = bounds(&norm, ch);
                assert!(a[ch * 1024..(ch + 1) * 1024].iter().all(|v| *v >= lo - 1e-5 && *v <= hi + 1e-5));
            }
            differs_from_plain += (b != c) as usize;
        }
        assert!(differs_from_plain > 30, "RandAugment changes most crops: {differs_from_plain}");

        // Erasing writes zeros (the mean, after normalisation) into a rectangle of the normalised image.
        let erase = AugmentConfig {
            color_jitter: 0.0,
            random_erasing: RandomErasing { prob: 1.0, fill: EraseFill::Const, ..Default::default() },
            ..Default::default()
        };
        let white = RgbImage::from_pixel(32, 32, image::Rgb([255, 255, 255]));
        let mut out = vec![f32::NAN; 3 * 32 * 32];
        transform_into(&white, 32, &Transform::Train(erase), &norm, &mut rng, &mut out);
        let zeros = out.iter().filter(|v| **v == 0.0).count();
        assert!(zeros >= 3 * 20 && zeros % 3 == 0, "a rectangle of zeros in every channel: {zeros}");
        assert!(out.iter().all(|v| *v == 0.0 || (*v - bounds(&norm, 0).1).abs() < 0.8), "the rest stays white");
    }

    #[test]
    fn eval_is_deterministic_and_flip_mirrors() {
        let norm = Normalize::default();
        let image = halves(64, 32);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut a = vec![0.0; 3 * 16 * 16];
        let mut b = vec![0.0; 3 * 16 * 16];
        transform_into(&image, 16, &Transform::Eval, &norm, &mut rng, &mut a);
        transform_into(&image, 16, &Transform::Eval, &norm, &mut rng, &mut b);
        assert_eq!(a, b);
        let (red_lo, red_hi) = bounds(&norm, 0);
        assert!((a[0] - red_hi).abs() < 1e-4, "left is red");
        assert!((a[15] - red_lo).abs() < 1e-4, "right has no red");

        let flip_only =
            AugmentConfig { scale: [1.0, 1.0], ratio: [2.0, 2.0], hflip: 1.0, color_jitter: 0.0, ..Default::default() };
        let mut f = vec![0.0; 3 * 16 * 16];
        transform_into(&image, 16, &Transform::Train(flip_only), &norm, &mut rng, &mut f);
        assert!((f[0] - red_lo).abs() < 1e-4 && (f[15] - red_hi).abs() < 1e-4, "flipped: red on the right");
    }
}
