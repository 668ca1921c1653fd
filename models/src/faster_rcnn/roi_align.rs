//! RoIAlign (He et al., "Mask R-CNN") from libtorch tensor ops, differentiable with respect to the features, and
//! torchvision's `MultiScaleRoIAlign`, which pools each box from the pyramid level its size maps to.
//!
//! libtorch has no RoIAlign (it is a torchvision op). This one computes what torchvision's CPU kernel computes: a
//! box `(x1, y1, x2, y2)` is scaled by the level's `spatial_scale` (and shifted by half a pixel when `aligned`);
//! each of the `output × output` bins averages `sampling_ratio²` bilinear samples at the centres of a regular
//! grid inside the bin; a sample beyond `[-1, size]` on either axis counts as zero, and one inside is clamped to
//! the map. Unaligned boxes are at least one pixel wide and high. The ONNX equivalent is `RoiAlign` (opset 16)
//! with `coordinate_transformation_mode` `output_half_pixel` (unaligned) or `half_pixel` (aligned).
//!
//! Bilinear sampling is separable, so a box's bins are two small matrix products: an `output × H` matrix (each
//! row the weights of the feature rows a bin's samples touch) times the map, then times a `W × output` matrix.
//! Per image that is one `[K·output, H] × [H, C·W]` product and a batched `[output·C, W] × [W, output]` one, with
//! `K · output · C · W` floats in between, not `K · C · H · W`; the backward pass is matrix products too.

use kiln_export::{Attr, Graph, Value};
use tch::{Kind, Tensor};

use crate::Result;

/// RoIAlign's settings: torchvision's Faster R-CNN pools 7 × 7 bins with 2 × 2 samples each, unaligned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoiAlign {
    pub output: i64,
    pub sampling_ratio: i64,
    pub aligned: bool,
}

impl RoiAlign {
    /// Pools `rois` `[K, 5]` (image index, x1, y1, x2, y2 in input pixels) from `features` `[N, C, H, W]` whose
    /// pixels are `1 / spatial_scale` input pixels apart: `[K, C, output, output]`.
    ///
    /// # Panics
    /// If `sampling_ratio < 1` (torchvision's adaptive ratio is not implemented).
    pub fn forward(&self, features: &Tensor, rois: &Tensor, spatial_scale: f64) -> Tensor {
        assert!(self.sampling_ratio >= 1, "RoIAlign needs a fixed sampling ratio of at least 1");
        let size = features.size();
        let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
        let k = rois.size()[0];
        let out = self.output;
        if k == 0 {
            return Tensor::zeros([0, c, out, out], (features.kind(), features.device()));
        }
        let rois = rois.detach().to_kind(Kind::Float);
        let offset = if self.aligned { 0.5 } else { 0.0 };
        let batch = rois.select(1, 0).to_kind(Kind::Int64);
        let coordinate = |i: i64| rois.select(1, i) * spatial_scale - offset;
        let (start_x, start_y, end_x, end_y) = (coordinate(1), coordinate(2), coordinate(3), coordinate(4));
        let (mut width, mut height) = (&end_x - &start_x, &end_y - &start_y);
        if !self.aligned {
            width = width.clamp_min(1.0);
            height = height.clamp_min(1.0);
        }
        let kind = features.kind();
        let device = features.device();
        // Dense interpolation matrices: row_mix [K, out, H] and col_mix [K, out, W], each row a bin's weights.
        let mix = |start: &Tensor, length: &Tensor, size: i64| {
            let (index, weight) = self.taps(start, length, size);
            Tensor::zeros([k, out, size], (Kind::Float, device)).scatter_add(2, &index, &weight).to_kind(kind)
        };
        let row_mix = mix(&start_y, &height, h);
        let col_mix = mix(&start_x, &width, w);
        let batch: Vec<i64> = Vec::try_from(batch.to_device(tch::Device::Cpu)).expect("int64 image indices");
        let mut parts = Vec::new();
        let mut order = Vec::with_capacity(k as usize);
        for image in 0..n {
            let mine: Vec<i64> = (0..k).filter(|&i| batch[i as usize] == image).collect();
            if mine.is_empty() {
                continue;
            }
            let index = Tensor::from_slice(&mine).to_device(device);
            let kb = mine.len() as i64;
            // Rows: [Kb·out, H] @ [H, C·W] → [Kb, out, C, W].
            let map = features.get(image).permute([1, 0, 2]).reshape([h, c * w]);
            let rows = row_mix.index_select(0, &index).reshape([kb * out, h]).matmul(&map);
            // Columns: [Kb, out·C, W] @ [Kb, W, out] → [Kb, out, C, out].
            let cols = col_mix.index_select(0, &index).transpose(1, 2);
            parts.push(rows.view([kb, out * c, w]).bmm(&cols).view([kb, out, c, out]));
            order.extend(mine);
        }
        restore_order(Tensor::cat(&parts, 0), &order).permute([0, 2, 1, 3])
    }

    /// The feature indices `[K, output, 2 · ratio]` (int64) and weights (each divided by `ratio`) that one axis's
    /// samples read, for boxes starting at `start` and `length` long on a map `size` long.
    fn taps(&self, start: &Tensor, length: &Tensor, size: i64) -> (Tensor, Tensor) {
        let (out, ratio) = (self.output, self.sampling_ratio);
        let device = start.device();
        let bin = length / out as f64; // [K]
        let cells = Tensor::arange(out, (Kind::Float, device)).view([1, out, 1]);
        let samples = (Tensor::arange(ratio, (Kind::Float, device)) + 0.5).view([1, 1, ratio]) / ratio as f64;
        let bin = bin.view([-1, 1, 1]);
        let position = start.view([-1, 1, 1]) + (cells + samples) * &bin; // [K, out, ratio]
        let inside = position.ge(-1.0).logical_and(&position.le(size as f64)).to_kind(Kind::Float);
        let clamped = position.clamp_min(0.0);
        let low = clamped.floor();
        let at_edge = low.ge((size - 1) as f64);
        let last = (size - 1) as f64;
        let low = low.clamp_max(last);
        let high = (&low + 1.0).clamp_max(last);
        let clamped = clamped.where_self(&at_edge.logical_not(), &low);
        let frac = &clamped - &low;
        let scale = &inside / ratio as f64;
        let low_weight = (-&frac + 1.0) * &scale;
        let high_weight = frac * scale;
        let index = Tensor::cat(&[low, high], 2).to_kind(Kind::Int64);
        let weight = Tensor::cat(&[low_weight, high_weight], 2);
        (index, weight)
    }

    /// ONNX `RoiAlign` (opset 16) on `features` with `rois` `[K, 4]` and `batch_indices` `[K]` (int64).
    pub fn emit(
        &self,
        g: &mut Graph,
        features: &Value,
        rois: &Value,
        batch_indices: &Value,
        spatial_scale: f64,
    ) -> Result<Value> {
        let mode = if self.aligned { "half_pixel" } else { "output_half_pixel" };
        Ok(g.op(
            "RoiAlign",
            &[features, rois, batch_indices],
            vec![
                Attr::Str("coordinate_transformation_mode", mode),
                Attr::Str("mode", "avg"),
                Attr::Int("output_height", self.output),
                Attr::Int("output_width", self.output),
                Attr::Int("sampling_ratio", self.sampling_ratio),
                Attr::Float("spatial_scale", spatial_scale as f32),
            ],
        )?)
    }
}

/// `rows` (the items at positions `order` of some list, in that order) put back in list order.
fn restore_order(rows: Tensor, order: &[i64]) -> Tensor {
    if order.windows(2).all(|w| w[0] < w[1]) {
        return rows;
    }
    let mut inverse = vec![0i64; order.len()];
    for (position, &item) in order.iter().enumerate() {
        inverse[item as usize] = position as i64;
    }
    rows.index_select(0, &Tensor::from_slice(&inverse).to_device(rows.device()))
}

/// torchvision's `LevelMapper`: a box of area `a` pools from level `⌊4 + log2(√a / 224) + 1e-6⌋` clamped to
/// `[k_min, k_max]`, returned as an index from `k_min`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LevelMapper {
    pub k_min: i64,
    pub k_max: i64,
}

impl LevelMapper {
    pub const CANONICAL_SCALE: f64 = 224.0;
    pub const CANONICAL_LEVEL: f64 = 4.0;
    pub const EPS: f64 = 1e-6;

    /// `[K]` int64 level indices of boxes `[K, 4]`.
    pub fn levels(&self, boxes: &Tensor) -> Tensor {
        let s = super::box_coder::box_area(boxes).sqrt();
        let level = ((s / Self::CANONICAL_SCALE).log2() + Self::CANONICAL_LEVEL + Self::EPS).floor();
        level.clamp(self.k_min as f64, self.k_max as f64).to_kind(Kind::Int64) - self.k_min
    }

    /// The level mapper of maps with `strides` (powers of two, finest first).
    pub fn for_strides(strides: &[i64]) -> Self {
        let log2 = |s: i64| (s as f64).log2().round() as i64;
        Self { k_min: log2(strides[0]), k_max: log2(strides[strides.len() - 1]) }
    }
}

/// torchvision's `MultiScaleRoIAlign` over maps with `strides`: every box pools from its level's map.
#[derive(Clone, Debug, PartialEq)]
pub struct MultiScaleRoiAlign {
    pub align: RoiAlign,
    pub strides: Vec<i64>,
}

impl MultiScaleRoiAlign {
    /// `[K, C, output, output]` for `rois` `[K, 5]` (image index, corners) pooled from `features` (one map per
    /// stride, finest first).
    pub fn forward(&self, features: &[Tensor], rois: &Tensor) -> Tensor {
        assert_eq!(features.len(), self.strides.len(), "one feature map per stride");
        let k = rois.size()[0];
        let c = features[0].size()[1];
        let out = self.align.output;
        let levels = LevelMapper::for_strides(&self.strides).levels(&rois.narrow(1, 1, 4));
        let levels: Vec<i64> = Vec::try_from(levels.to_device(tch::Device::Cpu)).expect("int64 levels");
        let mut parts = Vec::new();
        let mut order = Vec::with_capacity(k as usize);
        for (level, (map, &stride)) in features.iter().zip(&self.strides).enumerate() {
            let mine: Vec<i64> = (0..k).filter(|&i| levels[i as usize] == level as i64).collect();
            if mine.is_empty() {
                continue;
            }
            let index = Tensor::from_slice(&mine).to_device(rois.device());
            parts.push(self.align.forward(map, &rois.index_select(0, &index), 1.0 / stride as f64));
            order.extend(mine);
        }
        if parts.is_empty() {
            return Tensor::zeros([0, c, out, out], (features[0].kind(), features[0].device()));
        }
        restore_order(Tensor::cat(&parts, 0), &order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Direct evaluation of one bin of torchvision's CPU kernel (a scalar reference).
    fn reference(map: &[Vec<f32>], roi: [f32; 4], scale: f32, out: usize, ratio: usize, aligned: bool) -> Vec<f32> {
        let (h, w) = (map.len() as f32, map[0].len() as f32);
        let offset = if aligned { 0.5 } else { 0.0 };
        let (x1, y1) = (roi[0] * scale - offset, roi[1] * scale - offset);
        let (mut rw, mut rh) = (roi[2] * scale - offset - x1, roi[3] * scale - offset - y1);
        if !aligned {
            rw = rw.max(1.0);
            rh = rh.max(1.0);
        }
        let sample = |mut y: f32, mut x: f32| -> f32 {
            if y < -1.0 || y > h || x < -1.0 || x > w {
                return 0.0;
            }
            y = y.max(0.0);
            x = x.max(0.0);
            let (mut yl, mut xl) = (y as usize, x as usize);
            let (yh, xh);
            if yl as f32 >= h - 1.0 {
                yl = h as usize - 1;
                yh = yl;
                y = yl as f32;
            } else {
                yh = yl + 1;
            }
            if xl as f32 >= w - 1.0 {
                xl = w as usize - 1;
                xh = xl;
                x = xl as f32;
            } else {
                xh = xl + 1;
            }
            let (ly, lx) = (y - yl as f32, x - xl as f32);
            (1.0 - ly) * (1.0 - lx) * map[yl][xl]
                + (1.0 - ly) * lx * map[yl][xh]
                + ly * (1.0 - lx) * map[yh][xl]
                + ly * lx * map[yh][xh]
        };
        let mut result = Vec::new();
        for py in 0..out {
            for px in 0..out {
                let mut sum = 0.0;
                for iy in 0..ratio {
                    for ix in 0..ratio {
                        let y = y1 + py as f32 * rh / out as f32 + (iy as f32 + 0.5) * rh / out as f32 / ratio as f32;
                        let x = x1 + px as f32 * rw / out as f32 + (ix as f32 + 0.5) * rw / out as f32 / ratio as f32;
                        sum += sample(y, x);
                    }
                }
                result.push(sum / (ratio * ratio) as f32);
            }
        }
        result
    }

    #[test]
    fn equals_the_kernels_definition_inside_across_and_beyond_the_edges() {
        let (h, w) = (6i64, 9i64);
        let values: Vec<f32> = (0..h * w).map(|i| ((i * 37) % 23) as f32 - 7.5).collect();
        let map: Vec<Vec<f32>> = values.chunks(w as usize).map(<[f32]>::to_vec).collect();
        let features = Tensor::from_slice(&values).view([1, 1, h, w]);
        let boxes = [[2.0, 2.0, 10.0, 8.0], [-6.0, -4.0, 5.0, 3.0], [12.0, 6.0, 21.0, 13.0], [3.0, 3.0, 3.5, 3.2]];
        for aligned in [false, true] {
            for ratio in [1, 2, 3] {
                let align = RoiAlign { output: 3, sampling_ratio: ratio, aligned };
                let rois: Vec<f32> = boxes.iter().flat_map(|b| [0.0, b[0], b[1], b[2], b[3]]).collect();
                let got = align.forward(&features, &Tensor::from_slice(&rois).view([-1, 5]), 0.5);
                for (i, b) in boxes.iter().enumerate() {
                    let expected = reference(&map, *b, 0.5, 3, ratio as usize, aligned);
                    let row: Vec<f32> = Vec::try_from(got.get(i as i64).flatten(0, -1)).unwrap();
                    assert_eq!(row.len(), expected.len());
                    for (a, e) in row.iter().zip(&expected) {
                        assert!(
                            (a - e).abs() < 1e-5,
                            "box {b:?} aligned {aligned} ratio {ratio}: {row:?} vs {expected:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn gradients_reach_the_sampled_pixels_only_and_images_are_kept_apart() {
        let features = Tensor::zeros([2, 3, 8, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let rois = Tensor::from_slice(&[1f32, 0.0, 0.0, 4.0, 4.0]).view([1, 5]);
        let align = RoiAlign { output: 2, sampling_ratio: 2, aligned: false };
        align.forward(&features, &rois, 1.0).sum(Kind::Float).backward();
        let grad = features.grad();
        assert_eq!(f64::try_from(grad.get(0).abs().sum(Kind::Float)).unwrap(), 0.0, "image 0 untouched");
        let total = f64::try_from(grad.get(1).sum(Kind::Float)).unwrap();
        assert!((total - 3.0 * 4.0).abs() < 1e-5, "each of 4 bins per channel averages to weight 1: {total}");
        assert_eq!(f64::try_from(grad.get(1).narrow(1, 5, 3).abs().sum(Kind::Float)).unwrap(), 0.0);
    }

    #[test]
    fn the_level_mapper_follows_the_fpn_paper() {
        let mapper = LevelMapper::for_strides(&[4, 8, 16, 32]);
        assert_eq!(mapper, LevelMapper { k_min: 2, k_max: 5 });
        let boxes = Tensor::from_slice(&[
            0f32, 0.0, 10.0, 10.0, 0.0, 0.0, 112.0, 112.0, 0.0, 0.0, 224.0, 224.0, 0.0, 0.0, 1000.0, 1000.0,
        ])
        .view([4, 4]);
        let levels: Vec<i64> = Vec::try_from(mapper.levels(&boxes)).unwrap();
        assert_eq!(levels, [0, 1, 2, 3], "P2 for small boxes, 112 px at P3, 224 px at P4, huge clamped to P5");
    }
}
