//! RandAugment and TrivialAugment (wide), the operations of the config's [`AutoAugment`] policy, as torchvision defines them (`torchvision.transforms.RandAugment`,
//! `TrivialAugmentWide`, on PIL images): the same fourteen operations, the same magnitude tables, the same
//! sampling, and each operation with PIL's pixel arithmetic (nearest-neighbour affine sampling at pixel centres
//! with black fill, `ImageEnhance`'s truncating blends, `ImageOps`' look-up tables). Runs on the training crop
//! (an RGB8 image at the input size), after the flip and before normalisation, as timm's transforms order them.
//! `scripts/make_auto_augment_fixture.py` records torchvision's output of every operation for the tests.

use image::RgbImage;
use rand::Rng;

pub use crate::config::AutoAugment;

impl AutoAugment {
    /// Draws this policy's operations for an image of `width × height`.
    pub fn sample(&self, width: u32, height: u32, rng: &mut impl Rng) -> Vec<Op> {
        match *self {
            AutoAugment::RandAugment { num_ops, magnitude, num_magnitude_bins } => (0..num_ops)
                .map(|_| {
                    let kind = OpKind::ALL[rng.random_range(0..OpKind::ALL.len())];
                    kind.at(Table::Rand { width, height }, magnitude, num_magnitude_bins, rng)
                })
                .collect(),
            AutoAugment::TrivialAugment { num_magnitude_bins } => {
                let kind = OpKind::ALL[rng.random_range(0..OpKind::ALL.len())];
                let bin = if kind.has_magnitude() { rng.random_range(0..num_magnitude_bins) } else { 0 };
                vec![kind.at(Table::Wide, bin, num_magnitude_bins, rng)]
            }
        }
    }

    /// Draws and applies this policy's operations to `image`.
    pub fn apply(&self, image: &RgbImage, rng: &mut impl Rng) -> RgbImage {
        let ops = self.sample(image.width(), image.height(), rng);
        let mut out = image.clone();
        for op in ops {
            out = op.apply(&out);
        }
        out
    }
}

/// The fourteen operations, in torchvision's order (the order a uniform draw indexes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Identity,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    Brightness,
    Color,
    Contrast,
    Sharpness,
    Posterize,
    Solarize,
    AutoContrast,
    Equalize,
}

/// Which magnitude tables: RandAugment's (translation scaled to the image) or TrivialAugment's wide ones.
#[derive(Clone, Copy, Debug)]
enum Table {
    Rand { width: u32, height: u32 },
    Wide,
}

/// `torch.linspace(0, end, bins)[bin]`, computed in f32 as torch does.
fn linspace(end: f32, bin: usize, bins: usize) -> f64 {
    let step = end / (bins - 1) as f32;
    if bin == bins - 1 {
        end as f64
    } else {
        (step * bin as f32) as f64
    }
}

impl OpKind {
    pub const ALL: [OpKind; 14] = [
        OpKind::Identity,
        OpKind::ShearX,
        OpKind::ShearY,
        OpKind::TranslateX,
        OpKind::TranslateY,
        OpKind::Rotate,
        OpKind::Brightness,
        OpKind::Color,
        OpKind::Contrast,
        OpKind::Sharpness,
        OpKind::Posterize,
        OpKind::Solarize,
        OpKind::AutoContrast,
        OpKind::Equalize,
    ];

    fn has_magnitude(self) -> bool {
        !matches!(self, OpKind::Identity | OpKind::AutoContrast | OpKind::Equalize)
    }

    fn signed(self) -> bool {
        use OpKind::*;
        matches!(self, ShearX | ShearY | TranslateX | TranslateY | Rotate | Brightness | Color | Contrast | Sharpness)
    }

    /// The operation at magnitude bin `bin` of `bins`, its sign drawn when it has one.
    fn at(self, table: Table, bin: usize, bins: usize, rng: &mut impl Rng) -> Op {
        let wide = matches!(table, Table::Wide);
        let enhance = if wide { 0.99 } else { 0.9 };
        let mut magnitude = match self {
            OpKind::Identity | OpKind::AutoContrast | OpKind::Equalize => 0.0,
            OpKind::ShearX | OpKind::ShearY => linspace(if wide { 0.99 } else { 0.3 }, bin, bins),
            OpKind::TranslateX | OpKind::TranslateY => match table {
                Table::Wide => linspace(32.0, bin, bins),
                Table::Rand { width, height } => {
                    let side = if self == OpKind::TranslateX { width } else { height };
                    linspace(150.0 / 331.0 * side as f32, bin, bins)
                }
            },
            OpKind::Rotate => linspace(if wide { 135.0 } else { 30.0 }, bin, bins),
            OpKind::Brightness | OpKind::Color | OpKind::Contrast | OpKind::Sharpness => linspace(enhance, bin, bins),
            OpKind::Posterize => {
                let per_bit = (bins - 1) as f32 / if wide { 6.0 } else { 4.0 };
                8.0 - (bin as f32 / per_bit).round_ties_even() as f64
            }
            OpKind::Solarize => 255.0 - linspace(255.0, bin, bins),
        };
        if self.signed() && rng.random_range(0..2) == 1 {
            magnitude = -magnitude;
        }
        Op { kind: self, magnitude }
    }
}

/// One operation at a signed magnitude, in torchvision's units: shear as the factor whose arctangent is the
/// angle, translation in pixels (truncated to an integer), rotation in degrees counter-clockwise, enhancement as
/// `1 + magnitude`, posterize as bits kept, solarize as the threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Op {
    pub kind: OpKind,
    pub magnitude: f64,
}

impl Op {
    pub fn apply(&self, image: &RgbImage) -> RgbImage {
        let (w, h) = image.dimensions();
        let m = self.magnitude;
        match self.kind {
            OpKind::Identity => image.clone(),
            OpKind::ShearX => affine_nearest(image, inverse_affine([0.0, 0.0], 0.0, [0.0, 0.0], [m.atan(), 0.0])),
            OpKind::ShearY => affine_nearest(image, inverse_affine([0.0, 0.0], 0.0, [0.0, 0.0], [0.0, m.atan()])),
            OpKind::TranslateX | OpKind::TranslateY => {
                let t = m.trunc();
                let translate = if self.kind == OpKind::TranslateX { [t, 0.0] } else { [0.0, t] };
                let centre = [w as f64 * 0.5, h as f64 * 0.5];
                affine_nearest(image, inverse_affine(centre, 0.0, translate, [0.0, 0.0]))
            }
            OpKind::Rotate => rotate(image, m),
            OpKind::Brightness => blend_with(image, 1.0 + m, |_| [0.0; 3]),
            OpKind::Color => blend_with(image, 1.0 + m, |p| [luma(p) as f32; 3]),
            OpKind::Contrast => {
                let sum: u64 = image.pixels().map(|p| luma(&p.0) as u64).sum();
                let mean = ((sum as f64 / (w as u64 * h as u64).max(1) as f64) + 0.5).floor() as f32;
                blend_with(image, 1.0 + m, |_| [mean; 3])
            }
            OpKind::Sharpness => sharpness(image, 1.0 + m),
            OpKind::Posterize => {
                let mask = !((1u16 << (8 - (m as u16).min(8))) - 1) as u8;
                map_channels(image, |_, v| v & mask)
            }
            OpKind::Solarize => map_channels(image, |_, v| if (v as f64) < m { v } else { 255 - v }),
            OpKind::AutoContrast => {
                let luts = histograms(image).map(|h| autocontrast_lut(&h));
                map_channels(image, |c, v| luts[c][v as usize])
            }
            OpKind::Equalize => {
                let luts = histograms(image).map(|h| equalize_lut(&h));
                map_channels(image, |c, v| luts[c][v as usize])
            }
        }
    }
}

/// The matrix taking an output pixel's position to the input position it samples, for a rotation by `angle`
/// (radians) and shear `shear` (radians, x then y) about `centre`, then a translation (torchvision's
/// `_get_inverse_affine_matrix` with scale 1).
fn inverse_affine(centre: [f64; 2], angle: f64, translate: [f64; 2], shear: [f64; 2]) -> [f64; 6] {
    let [sx, sy] = shear;
    let [cx, cy] = centre;
    let [tx, ty] = translate;
    let a = (angle - sy).cos() / sy.cos();
    let b = -(angle - sy).cos() * sx.tan() / sy.cos() - angle.sin();
    let c = (angle - sy).sin() / sy.cos();
    let d = -(angle - sy).sin() * sx.tan() / sy.cos() + angle.cos();
    let mut m = [d, -b, 0.0, -c, a, 0.0];
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx;
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy;
    m
}

/// PIL's `Image.rotate(degrees)` without expansion: counter-clockwise about the image centre, black outside.
fn rotate(image: &RgbImage, degrees: f64) -> RgbImage {
    if degrees == 0.0 {
        return image.clone();
    }
    let (w, h) = image.dimensions();
    let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
    let angle = -degrees.to_radians();
    let round15 = |v: f64| (v * 1e15).round() / 1e15;
    let (cos, sin) = (round15(angle.cos()), round15(angle.sin()));
    let mut m = [cos, sin, 0.0, -sin, cos, 0.0];
    m[2] = m[0] * -cx + m[1] * -cy + cx;
    m[5] = m[3] * -cx + m[4] * -cy + cy;
    affine_nearest(image, m)
}

/// Resamples `image` through `m` (output pixel centre → input position) with the nearest input pixel, black where
/// it falls outside, as PIL's `Image.transform(AFFINE, NEAREST)` does it: in 16.16 fixed point, the centre offset
/// folded into the constant term, each position floored (which decides the ties on rotated diagonals).
fn affine_nearest(image: &RgbImage, m: [f64; 6]) -> RgbImage {
    let (w, h) = image.dimensions();
    let fix = |v: f64| (v * 65536.0 + 0.5).floor() as i64;
    let (a0, a1, a3, a4) = (fix(m[0]), fix(m[1]), fix(m[3]), fix(m[4]));
    let a2 = fix(m[2] + m[0] * 0.5 + m[1] * 0.5);
    let a5 = fix(m[5] + m[3] * 0.5 + m[4] * 0.5);
    RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (x as i64, y as i64);
        let sx = (a2 + a0 * x + a1 * y) >> 16;
        let sy = (a5 + a3 * x + a4 * y) >> 16;
        if sx < 0 || sy < 0 || sx >= w as i64 || sy >= h as i64 {
            image::Rgb([0, 0, 0])
        } else {
            *image.get_pixel(sx as u32, sy as u32)
        }
    })
}

/// PIL's RGB → L: ITU-R 601-2 luma in 16-bit fixed point, rounded.
fn luma(p: &[u8; 3]) -> u8 {
    ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

/// PIL's `Image.blend(degenerate, image, factor)` per channel: `d + factor · (v − d)` in double precision (the
/// factor is Python's float), clipped and truncated.
fn blend(d: f32, v: u8, factor: f64) -> u8 {
    let t = (d as f64 + factor * (v as f64 - d as f64)) as f32;
    t.clamp(0.0, 255.0) as u8
}

/// `ImageEnhance`'s enhancement towards or away from a per-pixel degenerate image.
fn blend_with(image: &RgbImage, factor: f64, degenerate: impl Fn(&[u8; 3]) -> [f32; 3]) -> RgbImage {
    let mut out = image.clone();
    for p in out.pixels_mut() {
        let d = degenerate(&p.0);
        p.0 = [blend(d[0], p.0[0], factor), blend(d[1], p.0[1], factor), blend(d[2], p.0[2], factor)];
    }
    out
}

/// `ImageEnhance.Sharpness`: blends with PIL's SMOOTH filter (3×3, centre 5, others 1, over 13), whose border
/// pixels are the image's own.
fn sharpness(image: &RgbImage, factor: f64) -> RgbImage {
    let (w, h) = image.dimensions();
    let mut out = image.clone();
    if w < 3 || h < 3 {
        return out;
    }
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let mut p = [0u8; 3];
            for (c, value) in p.iter_mut().enumerate() {
                let mut sum = 0u32;
                for dy in 0..3 {
                    for dx in 0..3 {
                        let v = image.get_pixel(x + dx - 1, y + dy - 1).0[c] as u32;
                        sum += if (dx, dy) == (1, 1) { 5 * v } else { v };
                    }
                }
                let smooth = (sum as f32 / 13.0).round();
                *value = blend(smooth, image.get_pixel(x, y).0[c], factor);
            }
            out.put_pixel(x, y, image::Rgb(p));
        }
    }
    out
}

fn map_channels(image: &RgbImage, f: impl Fn(usize, u8) -> u8) -> RgbImage {
    let mut out = image.clone();
    for p in out.pixels_mut() {
        p.0 = [f(0, p.0[0]), f(1, p.0[1]), f(2, p.0[2])];
    }
    out
}

fn histograms(image: &RgbImage) -> [[u32; 256]; 3] {
    let mut h = [[0u32; 256]; 3];
    for p in image.pixels() {
        for c in 0..3 {
            h[c][p.0[c] as usize] += 1;
        }
    }
    h
}

/// `ImageOps.autocontrast` (no cutoff): the channel's darkest value to 0 and its lightest to 255, linearly.
fn autocontrast_lut(h: &[u32; 256]) -> [u8; 256] {
    let mut lut = std::array::from_fn(|i| i as u8);
    let (Some(lo), Some(hi)) = (h.iter().position(|&n| n > 0), h.iter().rposition(|&n| n > 0)) else {
        return lut;
    };
    if hi <= lo {
        return lut;
    }
    let scale = 255.0 / (hi - lo) as f64;
    let offset = -(lo as f64) * scale;
    for (i, v) in lut.iter_mut().enumerate() {
        *v = ((i as f64 * scale + offset) as i64).clamp(0, 255) as u8;
    }
    lut
}

/// `ImageOps.equalize`: the cumulative histogram, without the lightest value's count, in 255 steps.
fn equalize_lut(h: &[u32; 256]) -> [u8; 256] {
    let identity = std::array::from_fn(|i| i as u8);
    let used: Vec<u32> = h.iter().copied().filter(|&n| n > 0).collect();
    if used.len() <= 1 {
        return identity;
    }
    let step = (used.iter().sum::<u32>() - used[used.len() - 1]) / 255;
    if step == 0 {
        return identity;
    }
    let mut lut = [0u8; 256];
    let mut n = step / 2;
    for i in 0..256 {
        lut[i] = (n / step).min(255) as u8;
        n += h[i];
    }
    lut
}

#[cfg(test)]
#[path = "auto_augment_tests.rs"]
mod tests;
