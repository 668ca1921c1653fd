//! Training-time augmentation for object detection that moves the boxes with the pixels: letterbox (the same
//! geometry as kiln-infer's evaluation letterbox), random scale + translate + crop, YOLO-style 4-image mosaic,
//! horizontal flip and HSV colour jitter. Every output is a square `size`×`size` canvas padded with grey
//! [`FILL`], and its boxes in canvas pixels.
//!
//! Coordinates are pixel edges: a box `[0, 0, w, h]` covers a whole `w`×`h` image and pixel `(i, j)` covers
//! `[i, i + 1) × [j, j + 1)`. Boxes are `[x1, y1, x2, y2]`.
//!
//! Each source image is resampled exactly once per sample: the letterbox, the random scale and the crop (and for
//! a mosaic its placement on the `2·size` canvas) are folded into one rectangle per source image, and only the
//! part of it that lands on the canvas is resized, with the caller's resizer (see [`Crop`]). A box follows the
//! same rectangle its image's pixels were resized into, so the two agree to the resizer's precision.

use image::RgbImage;
use rand::Rng;

/// The grey the canvas is padded with (kiln-infer's `LETTERBOX_FILL`, YOLO's 114).
pub const FILL: u8 = 114;

/// Boxes narrower or shorter than this (canvas pixels, after transforming and clipping) are dropped by the
/// random transforms.
pub const MIN_BOX_PX: f64 = 2.0;

/// The rectangle of source pixels handed to the resizer (kiln-infer's). The crops this module asks for always lie
/// inside the image and are never empty.
pub use kiln_infer::preprocess::Crop;

/// The resizer: `resize(image, crop, width, height)` returns `crop` of `image` resampled to `width`×`height`,
/// RGB8 row-major (`3·width·height` bytes). kiln-infer's `resize_region` has this signature.
pub type ResizeFn<'a> = dyn Fn(&RgbImage, Crop, u32, u32) -> Vec<u8> + 'a;

/// One ground-truth box: `[x1, y1, x2, y2]` in pixels and its class index.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TargetBox {
    pub bbox: [f32; 4],
    pub class: usize,
}

/// Where a letterboxed image lands on the `size`×`size` canvas.
///
/// `scale` is kiln-infer's `min(size / w, size / h)` (f32); the pixels, however, are resized to exactly
/// `resized_w`×`resized_h` (`round(w·scale)`, `round(h·scale)`), so boxes map with the per-axis ratios
/// `resized_w / w` and `resized_h / h` (see [`letterbox_box`]), which can differ from `scale` by up to half a
/// pixel over the image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    pub scale: f32,
    pub offset_x: u32,
    pub offset_y: u32,
    pub resized_w: u32,
    pub resized_h: u32,
}

/// The letterbox of a `src_w`×`src_h` image on a `size`×`size` canvas, computed exactly as kiln-infer's
/// evaluation letterbox: `scale = min(size/w, size/h)` in f32, `resized = round(w·scale)` (and `h`) clamped to
/// `1..=size`, `offset = (size - resized) / 2` with integer division.
///
/// Panics when a dimension is zero.
pub fn letterbox_geometry(src_w: u32, src_h: u32, size: u32) -> Placement {
    assert!(src_w > 0 && src_h > 0 && size > 0, "letterbox of a {src_w}x{src_h} image onto {size}x{size}");
    let scale = (size as f32 / src_w as f32).min(size as f32 / src_h as f32);
    let resized_w = ((src_w as f32 * scale).round() as u32).clamp(1, size);
    let resized_h = ((src_h as f32 * scale).round() as u32).clamp(1, size);
    Placement { scale, offset_x: (size - resized_w) / 2, offset_y: (size - resized_h) / 2, resized_w, resized_h }
}

/// Maps a box from the original `src_w`×`src_h` image onto the letterbox canvas:
/// `x' = x · resized_w / src_w + offset_x`, `y' = y · resized_h / src_h + offset_y` (computed in f64).
pub fn letterbox_box(bbox: [f32; 4], placement: &Placement, src_w: u32, src_h: u32) -> [f32; 4] {
    let map = AxisMap::letterbox(placement, src_w, src_h);
    let [x1, y1, x2, y2] = bbox.map(f64::from);
    [map.x(x1), map.y(y1), map.x(x2), map.y(y2)].map(|v| v as f32)
}

/// The inverse of [`letterbox_box`]: a box on the letterbox canvas (a prediction) back in original image pixels,
/// `x = (x' - offset_x) · src_w / resized_w`, clamped to the image `[0, src_w] × [0, src_h]`.
pub fn unletterbox_box(bbox: [f32; 4], placement: &Placement, src_w: u32, src_h: u32) -> [f32; 4] {
    let (w, h) = (src_w as f64, src_h as f64);
    let (rw, rh) = (placement.resized_w as f64, placement.resized_h as f64);
    let (ox, oy) = (placement.offset_x as f64, placement.offset_y as f64);
    let [x1, y1, x2, y2] = bbox.map(f64::from);
    let x = |v: f64| ((v - ox) * w / rw).clamp(0.0, w) as f32;
    let y = |v: f64| ((v - oy) * h / rh).clamp(0.0, h) as f32;
    [x(x1), y(y1), x(x2), y(y2)]
}

/// [`letterbox_box`] over a sample's boxes (nothing is clipped or dropped).
pub fn letterbox_boxes(boxes: &[TargetBox], placement: &Placement, src_w: u32, src_h: u32) -> Vec<TargetBox> {
    boxes.iter().map(|b| TargetBox { bbox: letterbox_box(b.bbox, placement, src_w, src_h), class: b.class }).collect()
}

/// Letterboxes `image` onto a `size`×`size` grey canvas: one resize of the whole image to
/// `resized_w`×`resized_h`, copied in at the offset. Equal to kiln-infer's letterbox when `resize` is its
/// `resize_region`.
pub fn letterbox(image: &RgbImage, size: u32, resize: &ResizeFn<'_>) -> (RgbImage, Placement) {
    let placement = letterbox_geometry(image.width(), image.height(), size);
    let layer = Layer { image, boxes: &[], rect: letterbox_rect(&placement), clip: None };
    let (canvas, _) = render(&[layer], size, 0.0, BoxRule::Train, resize);
    (canvas, placement)
}

/// Validation-time preprocessing: the letterbox, no randomness. Boxes are mapped with [`letterbox_box`] and
/// clipped to the placed image; only boxes left without area are dropped (not the [`MIN_BOX_PX`] and
/// `min_visible` rules of training).
pub fn eval_letterbox(
    image: &RgbImage,
    boxes: &[TargetBox],
    size: u32,
    resize: &ResizeFn<'_>,
) -> (RgbImage, Vec<TargetBox>, Placement) {
    let placement = letterbox_geometry(image.width(), image.height(), size);
    let layer = Layer { image, boxes, rect: letterbox_rect(&placement), clip: None };
    let (canvas, boxes) = render(&[layer], size, 0.0, BoxRule::Eval, resize);
    (canvas, boxes, placement)
}

pub use super::settings::AugmentConfig;

/// Draws whether the next sample is a mosaic; when true the caller passes 4 samples to [`augment`] (the
/// current one and 3 more drawn at random), otherwise 1.
pub fn needs_mosaic<R: Rng + ?Sized>(config: &AugmentConfig, rng: &mut R) -> bool {
    chance(rng, config.mosaic)
}

/// The whole training augmentation of one sample: with 1 sample, letterbox + random scale/translate/crop; with
/// 4, a mosaic (see [`mosaic`]); then HSV jitter and a random horizontal flip. Output: a `size`×`size` canvas
/// and the boxes that survived, in canvas pixels.
///
/// The config should have passed [`AugmentConfig::validate`]. Panics unless `samples` holds 1 or 4 samples.
pub fn augment<R: Rng + ?Sized>(
    samples: &[(&RgbImage, &[TargetBox])],
    size: u32,
    config: &AugmentConfig,
    rng: &mut R,
    resize: &ResizeFn<'_>,
) -> (RgbImage, Vec<TargetBox>) {
    let (mut canvas, mut boxes) = match *samples {
        [(image, boxes)] => {
            let crop = AffineCrop::random(config, size, rng);
            let placement = letterbox_geometry(image.width(), image.height(), size);
            let half = size as f64 / 2.0;
            let rect = crop.map_rect(letterbox_rect(&placement), [half, half], size);
            let layer = Layer { image, boxes, rect, clip: None };
            render(&[layer], size, config.min_visible, BoxRule::Train, resize)
        }
        [a, b, c, d] => mosaic(&[a, b, c, d], size, config, rng, resize),
        _ => panic!("augment takes 1 sample or 4 (a mosaic), got {}", samples.len()),
    };
    hsv_jitter(&mut canvas, config, rng);
    if chance(rng, config.hflip) {
        hflip(&mut canvas, &mut boxes);
    }
    (canvas, boxes)
}

/// A scale about the centre plus a shift: the input's centre lands at the canvas centre moved by
/// `(shift_x, shift_y)` canvas pixels, and the input is magnified by `scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AffineCrop {
    pub scale: f64,
    pub shift_x: f64,
    pub shift_y: f64,
}

impl AffineCrop {
    /// Neither scaled nor shifted.
    pub const IDENTITY: AffineCrop = AffineCrop { scale: 1.0, shift_x: 0.0, shift_y: 0.0 };

    /// A scale drawn uniformly from `config.scale`, then shifts drawn uniformly from `±config.translate·size`
    /// (x, then y).
    pub fn random<R: Rng + ?Sized>(config: &AugmentConfig, size: u32, rng: &mut R) -> Self {
        let scale = uniform(rng, config.scale[0], config.scale[1]);
        let reach = config.translate * size as f64;
        let shift_x = uniform(rng, -reach, reach);
        let shift_y = uniform(rng, -reach, reach);
        AffineCrop { scale, shift_x, shift_y }
    }

    /// Maps a rectangle of an input whose centre is `centre` onto the `size` canvas.
    fn map_rect(&self, rect: [f64; 4], centre: [f64; 2], size: u32) -> [f64; 4] {
        let half = size as f64 / 2.0;
        let x = |v: f64| (v - centre[0]) * self.scale + half + self.shift_x;
        let y = |v: f64| (v - centre[1]) * self.scale + half + self.shift_y;
        [x(rect[0]), y(rect[1]), x(rect[2]), y(rect[3])]
    }
}

/// Random scale + translate + crop of `image` (typically a letterboxed `size`×`size` canvas, or a mosaic):
/// [`affine_crop`] with an [`AffineCrop::random`] drawn from `config`.
pub fn random_affine_crop<R: Rng + ?Sized>(
    image: &RgbImage,
    boxes: &[TargetBox],
    size: u32,
    config: &AugmentConfig,
    rng: &mut R,
    resize: &ResizeFn<'_>,
) -> (RgbImage, Vec<TargetBox>) {
    let crop = AffineCrop::random(config, size, rng);
    affine_crop(image, boxes, size, crop, config.min_visible, resize)
}

/// `image` scaled by `crop.scale` about its centre, its centre placed at the canvas centre plus the shift, on a
/// `size`×`size` grey canvas. Boxes are moved the same way and clipped to the canvas; a box keeps only if
/// the visible part is at least `min_visible` of its (transformed) area and at least [`MIN_BOX_PX`] on each side.
///
/// [`augment`] does not call this on a materialised letterbox: it folds letterbox and crop into one resize.
pub fn affine_crop(
    image: &RgbImage,
    boxes: &[TargetBox],
    size: u32,
    crop: AffineCrop,
    min_visible: f64,
    resize: &ResizeFn<'_>,
) -> (RgbImage, Vec<TargetBox>) {
    let (w, h) = (image.width() as f64, image.height() as f64);
    let rect = crop.map_rect([0.0, 0.0, w, h], [w / 2.0, h / 2.0], size);
    render(&[Layer { image, boxes, rect, clip: None }], size, min_visible, BoxRule::Train, resize)
}

/// YOLO's mosaic: the 4 samples, each resized to fit `size` (the letterbox size, without padding), meet at a
/// random centre drawn uniformly from `[size/2, 3·size/2]²` on a `2·size`×`2·size` grey canvas (sample 0 top
/// left, 1 top right, 2 bottom left, 3 bottom right, each cut at the canvas edge), then a random
/// [`AffineCrop`] (about the mosaic's centre) brings it to `size`×`size`. Boxes follow; those cut below
/// `min_visible` or [`MIN_BOX_PX`] are dropped.
///
/// The mosaic canvas is never materialised: each sample is resized once, straight to where it lands.
pub fn mosaic<R: Rng + ?Sized>(
    samples: &[(&RgbImage, &[TargetBox]); 4],
    size: u32,
    config: &AugmentConfig,
    rng: &mut R,
    resize: &ResizeFn<'_>,
) -> (RgbImage, Vec<TargetBox>) {
    let half = size / 2;
    let xc = rng.random_range(half..=size + half);
    let yc = rng.random_range(half..=size + half);
    let crop = AffineCrop::random(config, size, rng);
    mosaic_at(samples, size, [xc, yc], crop, config.min_visible, resize)
}

/// [`mosaic`] with the centre (on the `2·size` canvas) and the crop given.
pub fn mosaic_at(
    samples: &[(&RgbImage, &[TargetBox]); 4],
    size: u32,
    centre: [u32; 2],
    crop: AffineCrop,
    min_visible: f64,
    resize: &ResizeFn<'_>,
) -> (RgbImage, Vec<TargetBox>) {
    let s = size as f64;
    let (xc, yc) = (centre[0] as f64, centre[1] as f64);
    let clip = crop.map_rect([0.0, 0.0, 2.0 * s, 2.0 * s], [s, s], size);
    let mut layers = Vec::with_capacity(4);
    for (i, &(image, boxes)) in samples.iter().enumerate() {
        let p = letterbox_geometry(image.width(), image.height(), size);
        let (w, h) = (p.resized_w as f64, p.resized_h as f64);
        let rect = match i {
            0 => [xc - w, yc - h, xc, yc],
            1 => [xc, yc - h, xc + w, yc],
            2 => [xc - w, yc, xc, yc + h],
            _ => [xc, yc, xc + w, yc + h],
        };
        layers.push(Layer { image, boxes, rect: crop.map_rect(rect, [s, s], size), clip: Some(clip) });
    }
    render(&layers, size, min_visible, BoxRule::Train, resize)
}

/// Mirrors the canvas left to right, and its boxes with it (`x ↦ width - x`).
pub fn hflip(canvas: &mut RgbImage, boxes: &mut [TargetBox]) {
    let width = canvas.width() as usize;
    if width == 0 {
        return;
    }
    for row in canvas.chunks_exact_mut(width * 3) {
        // Reversing the bytes reverses the pixels and each pixel's channels; swap the channels back.
        row.reverse();
        for pixel in row.chunks_exact_mut(3) {
            pixel.swap(0, 2);
        }
    }
    let w = width as f32;
    for b in boxes {
        let [x1, y1, x2, y2] = b.bbox;
        b.bbox = [w - x2, y1, w - x1, y2];
    }
}

/// One image's colour jitter: a hue shift and saturation and value gains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HsvGains {
    /// Added to the hue, as a fraction of the hue circle.
    pub hue: f64,
    /// Saturation multiplier.
    pub saturation: f64,
    /// Value (brightness) multiplier.
    pub value: f64,
}

impl HsvGains {
    /// Leaves colours as they are.
    pub const NEUTRAL: HsvGains = HsvGains { hue: 0.0, saturation: 1.0, value: 1.0 };

    /// Ultralytics' draw: hue shift uniform in `±hsv_h`, gains uniform in `1 ± hsv_s` and `1 ± hsv_v`.
    pub fn random<R: Rng + ?Sized>(config: &AugmentConfig, rng: &mut R) -> Self {
        HsvGains {
            hue: uniform(rng, -config.hsv_h, config.hsv_h),
            saturation: 1.0 + uniform(rng, -config.hsv_s, config.hsv_s),
            value: 1.0 + uniform(rng, -config.hsv_v, config.hsv_v),
        }
    }
}

/// Random HSV colour jitter of the canvas ([`HsvGains::random`], then [`apply_hsv`]).
pub fn hsv_jitter<R: Rng + ?Sized>(canvas: &mut RgbImage, config: &AugmentConfig, rng: &mut R) {
    let gains = HsvGains::random(config, rng);
    apply_hsv(canvas, gains);
}

/// Applies `gains` the way Ultralytics does: each pixel goes to 8-bit HSV (hue on the full 0..=255 circle),
/// through one 256-entry lookup table per component built for this image (hue shifted with wrap-around,
/// saturation and value multiplied and clamped), and back to RGB. When the three tables are identities (zero
/// gains) the canvas is left untouched, so no quantisation is added.
pub fn apply_hsv(canvas: &mut RgbImage, gains: HsvGains) {
    let shift = (gains.hue * 256.0).round() as i64;
    let hue: [u8; 256] = std::array::from_fn(|i| (i as i64 + shift).rem_euclid(256) as u8);
    let gain = |g: f64| -> [u8; 256] { std::array::from_fn(|i| (i as f64 * g).round().clamp(0.0, 255.0) as u8) };
    let (sat, val) = (gain(gains.saturation), gain(gains.value));
    let identity = |lut: &[u8; 256]| lut.iter().enumerate().all(|(i, &v)| v as usize == i);
    if identity(&hue) && identity(&sat) && identity(&val) {
        return;
    }
    for pixel in canvas.chunks_exact_mut(3) {
        let [h, s, v] = rgb_to_hsv([pixel[0], pixel[1], pixel[2]]);
        let rgb = hsv_to_rgb([hue[h as usize], sat[s as usize], val[v as usize]]);
        pixel.copy_from_slice(&rgb);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Internals.

const HSV_SHIFT: u32 = 12;
const HSV_HALF: i32 = 1 << (HSV_SHIFT - 1);

/// `round(255·2¹² / v)`: saturation `255·d/v` as a multiply.
const SAT_DIV: [i32; 256] = {
    let mut t = [0i32; 256];
    let mut v = 1;
    while v < 256 {
        t[v] = ((255 << HSV_SHIFT) + v as i32 / 2) / v as i32;
        v += 1;
    }
    t
};

/// `round(256·2¹² / (6·d))`: hue `(256/6)·n/d` as a multiply.
const HUE_DIV: [i32; 256] = {
    let mut t = [0i32; 256];
    let mut d = 1;
    while d < 256 {
        t[d] = ((256 << HSV_SHIFT) + 3 * d as i32) / (6 * d as i32);
        d += 1;
    }
    t
};

/// RGB8 to HSV8: hue on the full circle (256 steps), saturation and value 0..=255.
#[inline]
fn rgb_to_hsv([r, g, b]: [u8; 3]) -> [u8; 3] {
    let (r, g, b) = (r as i32, g as i32, b as i32);
    let v = r.max(g).max(b);
    let d = v - r.min(g).min(b);
    if d == 0 {
        return [0, 0, v as u8];
    }
    let s = (d * SAT_DIV[v as usize] + HSV_HALF) >> HSV_SHIFT;
    // Sixths of the circle from red: between -1 and 5, times d.
    let n = if v == r {
        g - b
    } else if v == g {
        b - r + 2 * d
    } else {
        r - g + 4 * d
    };
    let h = ((n * HUE_DIV[d as usize] + HSV_HALF) >> HSV_SHIFT) & 255;
    [h as u8, s as u8, v as u8]
}

/// HSV8 (as [`rgb_to_hsv`] makes it) back to RGB8, rounding.
#[inline]
fn hsv_to_rgb([h, s, v]: [u8; 3]) -> [u8; 3] {
    if s == 0 {
        return [v; 3];
    }
    let (s, v) = (s as u32, v as u32);
    let sixths = h as u32 * 6;
    let (sector, frac) = (sixths >> 8, sixths & 255);
    const DEN: u32 = 255 * 256;
    let p = ((v * (255 - s) + 127) / 255) as u8;
    let q = ((v * (DEN - s * frac) + DEN / 2) / DEN) as u8;
    let t = ((v * (DEN - s * (256 - frac)) + DEN / 2) / DEN) as u8;
    let v = v as u8;
    match sector {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// True with probability `p`, without panicking outside `[0, 1]`.
fn chance<R: Rng + ?Sized>(rng: &mut R, p: f64) -> bool {
    if p <= 0.0 || p.is_nan() {
        false
    } else if p >= 1.0 {
        true
    } else {
        rng.random_bool(p)
    }
}

/// Uniform in `[low, high]`; `low` (without drawing) when the range is empty or a point.
fn uniform<R: Rng + ?Sized>(rng: &mut R, low: f64, high: f64) -> f64 {
    if high > low {
        rng.random_range(low..=high)
    } else {
        low
    }
}

/// The rectangle a letterboxed image occupies on its canvas.
fn letterbox_rect(p: &Placement) -> [f64; 4] {
    let (x, y) = (p.offset_x as f64, p.offset_y as f64);
    [x, y, x + p.resized_w as f64, y + p.resized_h as f64]
}

/// One source image on the canvas.
struct Layer<'a> {
    image: &'a RgbImage,
    boxes: &'a [TargetBox],
    /// Where the whole image lands, `[x1, y1, x2, y2]` in canvas pixels (rounded to whole pixels when drawn).
    rect: [f64; 4],
    /// The part of the canvas it may paint, beside the canvas itself (a mosaic's edge).
    clip: Option<[f64; 4]>,
}

/// How boxes are kept.
#[derive(Clone, Copy, PartialEq)]
enum BoxRule {
    /// `min_visible` and [`MIN_BOX_PX`].
    Train,
    /// Any positive area.
    Eval,
}

/// Source pixels to canvas pixels along both axes: `x' = x · num_x / den_x + offset_x`.
#[derive(Clone, Copy)]
struct AxisMap {
    num: [f64; 2],
    den: [f64; 2],
    offset: [f64; 2],
}

impl AxisMap {
    fn letterbox(p: &Placement, src_w: u32, src_h: u32) -> Self {
        AxisMap {
            num: [p.resized_w as f64, p.resized_h as f64],
            den: [src_w as f64, src_h as f64],
            offset: [p.offset_x as f64, p.offset_y as f64],
        }
    }

    #[inline]
    fn x(&self, v: f64) -> f64 {
        v * self.num[0] / self.den[0] + self.offset[0]
    }

    #[inline]
    fn y(&self, v: f64) -> f64 {
        v * self.num[1] / self.den[1] + self.offset[1]
    }
}

/// Draws the layers on a grey `size`×`size` canvas (one resize each, of the visible part only) and moves their
/// boxes with them.
fn render(
    layers: &[Layer<'_>],
    size: u32,
    min_visible: f64,
    rule: BoxRule,
    resize: &ResizeFn<'_>,
) -> (RgbImage, Vec<TargetBox>) {
    let side = size as usize;
    let mut canvas = vec![FILL; side * side * 3];
    let mut out = Vec::new();
    let s = size as f64;
    for layer in layers {
        let (w, h) = layer.image.dimensions();
        if w == 0 || h == 0 {
            continue;
        }
        // Whole-pixel destination; the pixels and the boxes both use exactly this rectangle.
        let [x1, y1, x2, y2] = layer.rect.map(f64::round);
        let (dw, dh) = (x2 - x1, y2 - y1);
        if !(dw >= 1.0 && dh >= 1.0) {
            continue;
        }
        let mut visible = intersect([x1, y1, x2, y2], [0.0, 0.0, s, s]);
        if let Some(clip) = layer.clip {
            visible = intersect(visible, clip.map(f64::round));
        }
        let [vx1, vy1, vx2, vy2] = visible;
        if !(vx2 > vx1 && vy2 > vy1) {
            continue; // Nothing of it lands on the canvas, nor do its boxes.
        }
        let (fw, fh) = (w as f64, h as f64);
        // Multiply before dividing so that a whole image gives exactly 0..w.
        let left = ((vx1 - x1) * fw / dw).clamp(0.0, fw);
        let right = ((vx2 - x1) * fw / dw).clamp(left, fw);
        let top = ((vy1 - y1) * fh / dh).clamp(0.0, fh);
        let bottom = ((vy2 - y1) * fh / dh).clamp(top, fh);
        let crop = Crop { left, top, width: right - left, height: bottom - top };
        let (ow, oh) = ((vx2 - vx1) as usize, (vy2 - vy1) as usize);
        let pixels = resize(layer.image, crop, ow as u32, oh as u32);
        assert_eq!(pixels.len(), ow * oh * 3, "the resizer must return width x height RGB8 pixels");
        let (cx, cy) = (vx1 as usize, vy1 as usize);
        for (row, src) in pixels.chunks_exact(ow * 3).enumerate() {
            let at = ((cy + row) * side + cx) * 3;
            canvas[at..at + ow * 3].copy_from_slice(src);
        }
        let map = AxisMap { num: [dw, dh], den: [fw, fh], offset: [x1, y1] };
        out.extend(layer.boxes.iter().filter_map(|b| place_box(b, &map, visible, min_visible, rule)));
    }
    let canvas = RgbImage::from_raw(size, size, canvas).expect("the canvas holds size x size RGB8 pixels");
    (canvas, out)
}

/// The overlap of two `[x1, y1, x2, y2]` rectangles (empty ones come out with `x2 <= x1` or `y2 <= y1`).
fn intersect(a: [f64; 4], b: [f64; 4]) -> [f64; 4] {
    [a[0].max(b[0]), a[1].max(b[1]), a[2].min(b[2]), a[3].min(b[3])]
}

/// A box moved by `map` and clipped to `visible`, or `None` when `rule` drops it.
fn place_box(b: &TargetBox, map: &AxisMap, visible: [f64; 4], min_visible: f64, rule: BoxRule) -> Option<TargetBox> {
    let [x1, y1, x2, y2] = b.bbox.map(f64::from);
    let [x1, y1, x2, y2] = [map.x(x1), map.y(y1), map.x(x2), map.y(y2)];
    // Also false for NaN coordinates.
    if !(x2 > x1 && y2 > y1) {
        return None;
    }
    let clipped = intersect([x1, y1, x2, y2], visible);
    let (cw, ch) = (clipped[2] - clipped[0], clipped[3] - clipped[1]);
    let keep = match rule {
        BoxRule::Eval => cw > 0.0 && ch > 0.0,
        BoxRule::Train => cw >= MIN_BOX_PX && ch >= MIN_BOX_PX && cw * ch >= min_visible * (x2 - x1) * (y2 - y1),
    };
    keep.then(|| TargetBox { bbox: clipped.map(|v| v as f32), class: b.class })
}

#[cfg(test)]
#[path = "augment_tests.rs"]
mod tests;
