//! Random erasing as timm's `RandomErasing` defines it: with probability `prob`, `count` rectangles of random
//! area (a fraction of the image, split between the rectangles) and log-uniform aspect ratio, up to 10 tries
//! each to fit one strictly inside, filled on the *normalised* image with zeros (`const`, the dataset mean),
//! one normal value per channel (`rand`) or one per value (`pixel`).

use rand::Rng;

pub use crate::config::{EraseFill, RandomErasing};

/// A rectangle of an image, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

impl RandomErasing {
    /// The rectangles to erase in a `height × width` image (none when the coin says so or nothing fits). Draws
    /// nothing when `prob` is 0, so that switching erasing off leaves every other draw as it was.
    pub fn rects(&self, height: usize, width: usize, rng: &mut impl Rng) -> Vec<Rect> {
        if self.prob <= 0.0 || rng.random::<f64>() > self.prob {
            return Vec::new();
        }
        let [lo, hi] = self.count;
        let count = if lo == hi { lo } else { rng.random_range(lo..=hi) };
        let area = (height * width) as f64;
        let (log_lo, log_hi) = (self.aspect[0].ln(), self.aspect[1].ln());
        let mut rects = Vec::with_capacity(count);
        for _ in 0..count {
            for _ in 0..10 {
                let target = rng.random_range(self.area[0]..=self.area[1]) * area / count as f64;
                let aspect = if log_hi > log_lo { rng.random_range(log_lo..=log_hi).exp() } else { self.aspect[0] };
                let h = (target * aspect).sqrt().round() as usize;
                let w = (target / aspect).sqrt().round() as usize;
                if w < width && h < height {
                    let top = rng.random_range(0..=height - h);
                    let left = rng.random_range(0..=width - w);
                    rects.push(Rect { top, left, height: h, width: w });
                    break;
                }
            }
        }
        rects
    }

    /// Erases rectangles of the normalised CHW image `chw` (`3 × size × size`).
    pub fn apply(&self, chw: &mut [f32], size: usize, rng: &mut impl Rng) {
        let plane = size * size;
        assert_eq!(chw.len(), 3 * plane, "a 3 x size x size image");
        for rect in self.rects(size, size, rng) {
            let per_channel: [f32; 3] = match self.fill {
                EraseFill::Const => [0.0; 3],
                EraseFill::Rand => std::array::from_fn(|_| standard_normal(rng)),
                EraseFill::Pixel => [0.0; 3],
            };
            for (c, channel) in chw.chunks_exact_mut(plane).enumerate() {
                for y in rect.top..rect.top + rect.height {
                    for v in &mut channel[y * size + rect.left..y * size + rect.left + rect.width] {
                        *v = if self.fill == EraseFill::Pixel { standard_normal(rng) } else { per_channel[c] };
                    }
                }
            }
        }
    }
}

/// A standard normal value (Box–Muller).
pub fn standard_normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // in (0, 1]
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn rectangles_fit_and_follow_the_area_and_aspect_ranges() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let erasing = RandomErasing { prob: 1.0, ..Default::default() };
        let (mut areas, mut aspects) = (Vec::new(), Vec::new());
        for _ in 0..3000 {
            let rects = erasing.rects(200, 200, &mut rng);
            assert!(rects.len() <= 1);
            for r in rects {
                assert!(r.top + r.height <= 200 && r.left + r.width <= 200, "{r:?}");
                assert!(r.height < 200 && r.width < 200, "strictly smaller than the image, as timm: {r:?}");
                areas.push((r.height * r.width) as f64 / 40000.0);
                aspects.push(r.height as f64 / r.width as f64);
            }
        }
        assert!(areas.len() > 2500, "most draws fit on the first tries: {}", areas.len());
        let (amin, amax) = (areas.iter().cloned().fold(1.0, f64::min), areas.iter().cloned().fold(0.0, f64::max));
        assert!(amin >= 0.02 * 0.9 && amax <= 1.0 / 3.0 * 1.1, "area {amin}..{amax}");
        assert!(amin < 0.03 && amax > 0.3, "the range is covered: {amin}..{amax}");
        let mean_log_aspect = aspects.iter().map(|a| a.ln()).sum::<f64>() / aspects.len() as f64;
        assert!(mean_log_aspect.abs() < 0.1, "log-uniform aspect centred on 1: {mean_log_aspect}");
        let mut hits = 0;
        let half = RandomErasing { prob: 0.5, ..Default::default() };
        for _ in 0..4000 {
            hits += (!half.rects(64, 64, &mut rng).is_empty()) as usize;
        }
        assert!((1800..2200).contains(&hits), "erased about half the time: {hits}");
    }

    #[test]
    fn erasing_fills_only_its_rectangle_and_a_zero_probability_draws_nothing() {
        let size = 32;
        let mut chw: Vec<f32> = (0..3 * size * size).map(|i| 10.0 + i as f32).collect();
        let original = chw.clone();
        let erasing = RandomErasing { prob: 1.0, fill: EraseFill::Const, ..Default::default() };
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let rects = erasing.rects(size, size, &mut rand::rngs::StdRng::seed_from_u64(2));
        erasing.apply(&mut chw, size, &mut rng);
        let r = rects[0];
        for c in 0..3 {
            for y in 0..size {
                for x in 0..size {
                    let i = c * size * size + y * size + x;
                    let inside = (r.top..r.top + r.height).contains(&y) && (r.left..r.left + r.width).contains(&x);
                    assert_eq!(chw[i], if inside { 0.0 } else { original[i] }, "({c}, {y}, {x}) in {r:?}");
                }
            }
        }
        // Pixel fill: normal values, about N(0, 1).
        let mut noise = vec![5.0f32; 3 * 64 * 64];
        let full = RandomErasing { prob: 1.0, area: [0.5, 0.5], aspect: [1.0, 1.0], ..Default::default() };
        full.apply(&mut noise, 64, &mut rng);
        let erased: Vec<f32> = noise.iter().copied().filter(|v| *v != 5.0).collect();
        let mean = erased.iter().sum::<f32>() / erased.len() as f32;
        let var = erased.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / erased.len() as f32;
        assert!(erased.len() > 5000 && mean.abs() < 0.05 && (var - 1.0).abs() < 0.1, "{} {mean} {var}", erased.len());

        let mut a = rand::rngs::StdRng::seed_from_u64(3);
        RandomErasing::default().apply(&mut chw, size, &mut a);
        assert_eq!(a.random::<u64>(), rand::rngs::StdRng::seed_from_u64(3).random::<u64>(), "no draw when off");
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = RandomErasing { prob: 1.5, ..Default::default() }.validate().unwrap_err();
        assert_eq!(bad.0, "augment.random_erasing.prob");
        let bad = RandomErasing { area: [0.5, 0.1], ..Default::default() }.validate().unwrap_err();
        assert_eq!(bad.0, "augment.random_erasing.area");
        let bad = RandomErasing { count: [0, 2], ..Default::default() }.validate().unwrap_err();
        assert_eq!(bad.0, "augment.random_erasing.count");
        assert!(RandomErasing::default().validate().is_ok());
    }
}
