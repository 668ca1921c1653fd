//! FCOS's locations and its decoding at inference, in libtorch and in ONNX side by side.
//!
//! A location is a point of a feature-map cell in input pixels: cell `(i, j)` of a stride-`s` level is the point
//! `((j + o) · s, (i + o) · s)` for the detector's `location_offset` `o`. torchvision's FCOS puts its anchors'
//! centres at `j · s` (`o = 0`, kiln's default since it trains side by side with torchvision); `o = 0.5` is the
//! centre of the `s × s` input patch ConvNeXt's patchify stem and stride-2 downsamplings map onto the cell (original
//! FCOS's `j · s + ⌊s / 2⌋`, and what kiln's detectors trained before the option existed use). A box is `(x − l, y − t, x + r, y + b)` clamped to
//! `[0, W] × [0, H]`; a class's score is `sqrt(sigmoid(cls) · sigmoid(centerness))`, torchvision's inference
//! score.

use std::ops::Range;

use kiln_export::{Graph, Value};
use tch::{Device, Kind, Tensor};

use crate::fcos_head::{HeadOutputs, HeadValues};
use crate::Result;

/// Every location of every pyramid level for one input size, in the order of [`HeadOutputs`]: level by level,
/// row-major (y, then x) within a level. Computed on the CPU.
#[derive(Debug)]
pub struct Locations {
    /// `[A, 2]` float: `(x, y)` in input pixels.
    pub points: Tensor,
    /// `[A]` float: the stride of each location's level.
    pub strides: Tensor,
    /// `(height, width)` of each level's feature map.
    pub level_sizes: Vec<(i64, i64)>,
    /// The stride of each level (8, 16, 32, …).
    pub strides_per_level: Vec<i64>,
    /// `(height, width)` of the input, which boxes are clamped to.
    pub image_size: (i64, i64),
}

impl Locations {
    /// The locations of levels with `level_sizes` and `strides_per_level` on a `height × width` input, each at
    /// `offset` strides from its cell's top-left corner on both axes.
    pub fn new(
        height: i64,
        width: i64,
        level_sizes: Vec<(i64, i64)>,
        strides_per_level: Vec<i64>,
        offset: f64,
    ) -> Self {
        assert_eq!(level_sizes.len(), strides_per_level.len(), "one stride per level");
        let total: i64 = level_sizes.iter().map(|(h, w)| h * w).sum();
        let mut points = Vec::with_capacity(2 * total as usize);
        let mut strides = Vec::with_capacity(total as usize);
        for (&(h, w), &s) in level_sizes.iter().zip(&strides_per_level) {
            for i in 0..h {
                for j in 0..w {
                    points.push(((j as f64 + offset) * s as f64) as f32);
                    points.push(((i as f64 + offset) * s as f64) as f32);
                    strides.push(s as f32);
                }
            }
        }
        Self {
            points: Tensor::from_slice(&points).view([total, 2]),
            strides: Tensor::from_slice(&strides),
            level_sizes,
            strides_per_level,
            image_size: (height, width),
        }
    }

    /// The same locations with their tensors on `device`.
    pub fn to_device(&self, device: Device) -> Self {
        Self {
            points: self.points.to_device(device),
            strides: self.strides.to_device(device),
            level_sizes: self.level_sizes.clone(),
            strides_per_level: self.strides_per_level.clone(),
            image_size: self.image_size,
        }
    }

    /// The number of locations, `A`.
    pub fn len(&self) -> i64 {
        self.level_sizes.iter().map(|(h, w)| h * w).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The index range of each level's locations in `[0, A)`.
    pub fn level_ranges(&self) -> Vec<Range<i64>> {
        let mut start = 0;
        self.level_sizes
            .iter()
            .map(|(h, w)| {
                let range = start..start + h * w;
                start = range.end;
                range
            })
            .collect()
    }

    /// `[A, 4]` `(x, y, x, y)`, on `device` in `kind`.
    fn points_xyxy(&self, kind: Kind, device: Device) -> Tensor {
        Tensor::cat(&[&self.points, &self.points], 1).to_kind(kind).to_device(device)
    }

    fn limits(&self) -> [f32; 4] {
        let (h, w) = self.image_size;
        [w as f32, h as f32, w as f32, h as f32]
    }
}

/// `(x, y, x, y)` minus/plus `(l, t, r, b)`.
const LTRB_SIGNS: [f32; 4] = [-1.0, -1.0, 1.0, 1.0];

/// Boxes `[N, A, 4]` (x1, y1, x2, y2 in input pixels, clamped to the image) and scores `[N, A, C]` from the head's
/// outputs at `locations`, on the outputs' device. Computed in fp32 (fp64 for fp64 outputs), also for fp16/bf16
/// outputs of an autocast forward: bf16 cannot place a box edge near 500 px closer than 2 px.
pub fn decode(outputs: &HeadOutputs, locations: &Locations) -> (Tensor, Tensor) {
    let device = outputs.box_ltrb.device();
    let kind = if outputs.box_ltrb.kind() == Kind::Double { Kind::Double } else { Kind::Float };
    let constant = |values: &[f32]| Tensor::from_slice(values).to_kind(kind).to_device(device);
    let ltrb = outputs.box_ltrb.to_kind(kind);
    let boxes = ltrb * constant(&LTRB_SIGNS) + locations.points_xyxy(kind, device);
    let boxes = boxes.clamp_min(0.0).minimum(&constant(&locations.limits()));
    let cls = outputs.cls_logits.to_kind(kind).sigmoid();
    let centerness = outputs.centerness_logits.to_kind(kind).sigmoid();
    let scores = (cls * centerness.unsqueeze(-1)).sqrt();
    (boxes, scores)
}

/// ONNX of [`decode`]: the locations become constant initializers (`decode/points_xyxy`, `[A, 4]`), so the graph
/// is for the one input size of `locations`; the batch may stay dynamic.
pub fn emit_decode(g: &mut Graph, head: &HeadValues, locations: &Locations) -> Result<(Value, Value)> {
    let points: Vec<f32> = Vec::try_from(locations.points_xyxy(Kind::Float, Device::Cpu).flatten(0, -1))?;
    g.scoped("decode", |g| {
        let points = g.constant("points_xyxy", &[locations.len(), 4], &points)?;
        let signs = g.constant("ltrb_signs", &[4], &LTRB_SIGNS)?;
        let zero = g.constant("zero", &[], &[0.0])?;
        let limits = g.constant("limits", &[4], &locations.limits())?;
        let offsets = g.op("Mul", &[&head.box_ltrb, &signs], vec![])?;
        let boxes = g.op("Add", &[&offsets, &points], vec![])?;
        let boxes = g.op("Max", &[&boxes, &zero], vec![])?;
        let boxes = g.op("Min", &[&boxes, &limits], vec![])?;

        let cls = g.op("Sigmoid", &[&head.cls_logits], vec![])?;
        let centerness = g.op("Sigmoid", &[&head.centerness_logits], vec![])?;
        let axes = g.constant_i64("axes", &[2])?;
        let centerness = g.op("Unsqueeze", &[&centerness, &axes], vec![])?;
        let product = g.op("Mul", &[&cls, &centerness], vec![])?;
        let scores = g.op("Sqrt", &[&product], vec![])?;
        Ok((boxes, scores))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Tensor, b: &[f32]) -> bool {
        let values: Vec<f32> = Vec::try_from(a.flatten(0, -1)).unwrap();
        values.len() == b.len() && values.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    #[test]
    fn points_are_cell_centres_level_by_level_row_major() {
        let locations = Locations::new(32, 48, vec![(2, 3), (1, 2)], vec![16, 32], 0.5);
        assert_eq!(locations.len(), 8);
        let expected = [
            8.0, 8.0, 24.0, 8.0, 40.0, 8.0, // level 0, row 0
            8.0, 24.0, 24.0, 24.0, 40.0, 24.0, // level 0, row 1
            16.0, 16.0, 48.0, 16.0, // level 1
        ];
        assert!(close(&locations.points, &expected), "{}", locations.points);
        assert!(close(&locations.strides, &[16.0, 16.0, 16.0, 16.0, 16.0, 16.0, 32.0, 32.0]));
        assert_eq!(locations.level_ranges(), [0..6, 6..8]);
        // torchvision's anchor centres: the cells' top-left corners.
        let corners = Locations::new(32, 48, vec![(2, 3), (1, 2)], vec![16, 32], 0.0);
        let expected = [0.0, 0.0, 16.0, 0.0, 32.0, 0.0, 0.0, 16.0, 16.0, 16.0, 32.0, 16.0, 0.0, 0.0, 32.0, 0.0];
        assert!(close(&corners.points, &expected), "{}", corners.points);
    }

    #[test]
    fn decoding_subtracts_and_adds_distances_clamps_and_scores() {
        // Two locations on a 32 (high) × 48 (wide) image: one box well inside, one past every edge.
        let locations = Locations::new(32, 48, vec![(1, 2)], vec![16], 0.5);
        let outputs = HeadOutputs {
            cls_logits: Tensor::from_slice(&[0f32, 2.0, -1.0, 0.0]).view([1, 2, 2]),
            box_ltrb: Tensor::from_slice(&[2f32, 3.0, 4.0, 5.0, 100.0, 100.0, 100.0, 100.0]).view([1, 2, 4]),
            centerness_logits: Tensor::from_slice(&[0f32, 1.0]).view([1, 2]),
        };
        let (boxes, scores) = decode(&outputs, &locations);
        // Points (8, 8) and (24, 8).
        assert!(close(&boxes, &[6.0, 5.0, 12.0, 13.0, 0.0, 0.0, 48.0, 32.0]), "{boxes}");
        let s = |x: f32| 1.0 / (1.0 + (-x).exp());
        let expected =
            [(s(0.0) * s(0.0)).sqrt(), (s(2.0) * s(0.0)).sqrt(), (s(-1.0) * s(1.0)).sqrt(), (s(0.0) * s(1.0)).sqrt()];
        assert!(close(&scores, &expected), "{scores}");

        let half = HeadOutputs {
            cls_logits: outputs.cls_logits.to_kind(Kind::BFloat16),
            box_ltrb: outputs.box_ltrb.to_kind(Kind::BFloat16),
            centerness_logits: outputs.centerness_logits.to_kind(Kind::BFloat16),
        };
        let (boxes, scores) = decode(&half, &locations);
        assert_eq!((boxes.kind(), scores.kind()), (Kind::Float, Kind::Float), "decoded in fp32");
        assert!(close(&boxes, &[6.0, 5.0, 12.0, 13.0, 0.0, 0.0, 48.0, 32.0]), "{boxes}");
    }
}
