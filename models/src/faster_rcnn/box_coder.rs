//! Box arithmetic shared by the RPN and the RoI heads, as torchvision defines it: the `BoxCoder` (deltas
//! `(dx, dy, dw, dh)` of a box relative to a reference box, scaled by per-coordinate weights), pairwise IoU,
//! clipping to the image and the small-box filter. Corners are `(x1, y1, x2, y2)` in input pixels; a width is
//! `x2 - x1` (no `+ 1`).

use kiln_export::{Graph, Value};
use tch::{Kind, Tensor};

use crate::Result;

/// The largest `dw`/`dh` decoding accepts (torchvision's `log(1000 / 16)`), so that `exp` cannot overflow.
pub fn bbox_xform_clip() -> f64 {
    (1000.0f64 / 16.0).ln()
}

/// torchvision's `BoxCoder` with `weights = (wx, wy, ww, wh)`: `(1, 1, 1, 1)` for the RPN, `(10, 10, 5, 5)` for the
/// RoI heads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoxCoder {
    pub weights: [f64; 4],
}

impl BoxCoder {
    pub const RPN: BoxCoder = BoxCoder { weights: [1.0, 1.0, 1.0, 1.0] };
    pub const ROI_HEADS: BoxCoder = BoxCoder { weights: [10.0, 10.0, 5.0, 5.0] };

    /// The deltas that move each `reference` box onto its `target`: `[..., 4]` each, same shape.
    pub fn encode(&self, targets: &Tensor, references: &Tensor) -> Tensor {
        let [wx, wy, ww, wh] = self.weights;
        let (ex_w, ex_h, ex_cx, ex_cy) = centres(references);
        let (gt_w, gt_h, gt_cx, gt_cy) = centres(targets);
        let dx = (gt_cx - &ex_cx) / &ex_w * wx;
        let dy = (gt_cy - &ex_cy) / &ex_h * wy;
        let dw = (gt_w / ex_w).log() * ww;
        let dh = (gt_h / ex_h).log() * wh;
        Tensor::stack(&[dx, dy, dw, dh], -1)
    }

    /// The boxes that `deltas` `[..., 4]` make of `references` `[..., 4]` (broadcast against each other: `[K, C, 4]`
    /// deltas with `[K, 1, 4]` references give each of K boxes C decodings).
    pub fn decode(&self, deltas: &Tensor, references: &Tensor) -> Tensor {
        let [wx, wy, ww, wh] = self.weights;
        let references = references.to_kind(deltas.kind());
        let (w, h, cx, cy) = centres(&references);
        let clip = bbox_xform_clip();
        let dx = deltas.select(-1, 0) / wx;
        let dy = deltas.select(-1, 1) / wy;
        let dw = (deltas.select(-1, 2) / ww).clamp_max(clip);
        let dh = (deltas.select(-1, 3) / wh).clamp_max(clip);
        let pred_cx = dx * &w + cx;
        let pred_cy = dy * &h + cy;
        let half_w = dw.exp() * w * 0.5;
        let half_h = dh.exp() * h * 0.5;
        Tensor::stack(&[&pred_cx - &half_w, &pred_cy - &half_h, pred_cx + half_w, pred_cy + half_h], -1)
    }

    /// ONNX of [`BoxCoder::decode`] on `deltas` `[..., 4]` and `references` broadcastable to it.
    pub fn emit_decode(&self, g: &mut Graph, deltas: &Value, references: &Value) -> Result<Value> {
        let [wx, wy, ww, wh] = self.weights;
        Ok(g.scoped("box_coder", |g| -> kiln_export::Result<Value> {
            let slice = |g: &mut Graph, x: &Value, i: i64| -> kiln_export::Result<Value> {
                let start = g.constant_i64("start", &[i])?;
                let end = g.constant_i64("end", &[i + 1])?;
                let axis = g.constant_i64("axis", &[-1])?;
                g.op("Slice", &[x, &start, &end, &axis], vec![])
            };
            let scalar = |g: &mut Graph, v: f64| g.constant_f32("c", &[], &[v as f32]);
            let (x1, y1, x2, y2) = (
                slice(g, references, 0)?,
                slice(g, references, 1)?,
                slice(g, references, 2)?,
                slice(g, references, 3)?,
            );
            let w = g.op("Sub", &[&x2, &x1], vec![])?;
            let h = g.op("Sub", &[&y2, &y1], vec![])?;
            let half = scalar(g, 0.5)?;
            let hw = g.op("Mul", &[&w, &half], vec![])?;
            let hh = g.op("Mul", &[&h, &half], vec![])?;
            let cx = g.op("Add", &[&x1, &hw], vec![])?;
            let cy = g.op("Add", &[&y1, &hh], vec![])?;
            let clip = scalar(g, bbox_xform_clip())?;
            let mut coded = Vec::new();
            for (i, weight) in [wx, wy, ww, wh].into_iter().enumerate() {
                let d = slice(g, deltas, i as i64)?;
                let inv = scalar(g, 1.0 / weight)?;
                let d = g.op("Mul", &[&d, &inv], vec![])?;
                coded.push(if i >= 2 { g.op("Min", &[&d, &clip], vec![])? } else { d });
            }
            let pcx = g.op("Mul", &[&coded[0], &w], vec![])?;
            let pcx = g.op("Add", &[&pcx, &cx], vec![])?;
            let pcy = g.op("Mul", &[&coded[1], &h], vec![])?;
            let pcy = g.op("Add", &[&pcy, &cy], vec![])?;
            let ew = g.op("Exp", &[&coded[2]], vec![])?;
            let pw = g.op("Mul", &[&ew, &w], vec![])?;
            let phw = g.op("Mul", &[&pw, &half], vec![])?;
            let eh = g.op("Exp", &[&coded[3]], vec![])?;
            let ph = g.op("Mul", &[&eh, &h], vec![])?;
            let phh = g.op("Mul", &[&ph, &half], vec![])?;
            let bx1 = g.op("Sub", &[&pcx, &phw], vec![])?;
            let by1 = g.op("Sub", &[&pcy, &phh], vec![])?;
            let bx2 = g.op("Add", &[&pcx, &phw], vec![])?;
            let by2 = g.op("Add", &[&pcy, &phh], vec![])?;
            g.op("Concat", &[&bx1, &by1, &bx2, &by2], vec![kiln_export::Attr::Int("axis", -1)])
        })?)
    }
}

/// Widths, heights and centres of `[..., 4]` corner boxes.
fn centres(boxes: &Tensor) -> (Tensor, Tensor, Tensor, Tensor) {
    let (x1, y1, x2, y2) = (boxes.select(-1, 0), boxes.select(-1, 1), boxes.select(-1, 2), boxes.select(-1, 3));
    let w = &x2 - &x1;
    let h = &y2 - &y1;
    let cx = x1 + &w * 0.5;
    let cy = y1 + &h * 0.5;
    (w, h, cx, cy)
}

/// `[N, M]` IoU of every box in `a` `[N, 4]` with every box in `b` `[M, 4]` (torchvision's `box_iou`).
pub fn box_iou(a: &Tensor, b: &Tensor) -> Tensor {
    let area = |x: &Tensor| (x.select(1, 2) - x.select(1, 0)) * (x.select(1, 3) - x.select(1, 1));
    let (area_a, area_b) = (area(a), area(b));
    let lt = a.narrow(1, 0, 2).unsqueeze(1).maximum(&b.narrow(1, 0, 2).unsqueeze(0));
    let rb = a.narrow(1, 2, 2).unsqueeze(1).minimum(&b.narrow(1, 2, 2).unsqueeze(0));
    let wh = (rb - lt).clamp_min(0.0);
    let inter = wh.select(2, 0) * wh.select(2, 1);
    let union = area_a.unsqueeze(1) + area_b.unsqueeze(0) - &inter;
    inter / union
}

/// Boxes `[..., 4]` clipped to `[0, width] × [0, height]`.
pub fn clip_boxes(boxes: &Tensor, height: i64, width: i64) -> Tensor {
    let x = boxes.index_select(-1, &Tensor::from_slice(&[0i64, 2]).to_device(boxes.device()));
    let y = boxes.index_select(-1, &Tensor::from_slice(&[1i64, 3]).to_device(boxes.device()));
    let x = x.clamp(0.0, width as f64);
    let y = y.clamp(0.0, height as f64);
    Tensor::stack(&[x.select(-1, 0), y.select(-1, 0), x.select(-1, 1), y.select(-1, 1)], -1)
}

/// `[K]` bool: boxes `[K, 4]` at least `min_size` wide and high (torchvision's `remove_small_boxes`).
pub fn large_enough(boxes: &Tensor, min_size: f64) -> Tensor {
    let w = boxes.select(1, 2) - boxes.select(1, 0);
    let h = boxes.select(1, 3) - boxes.select(1, 1);
    w.ge(min_size).logical_and(&h.ge(min_size))
}

/// `[K]` areas of `[K, 4]` boxes.
pub fn box_area(boxes: &Tensor) -> Tensor {
    (boxes.select(1, 2) - boxes.select(1, 0)) * (boxes.select(1, 3) - boxes.select(1, 1))
}

/// Smooth L1 summed over all elements, with torchvision's `beta` (1/9 in Faster R-CNN):
/// `0.5 x² / β` below `β`, `|x| - 0.5 β` above.
pub fn smooth_l1_sum(input: &Tensor, target: &Tensor, beta: f64) -> Tensor {
    input.smooth_l1_loss(target, tch::Reduction::Sum, beta).to_kind(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(values: &[f32], rows: i64) -> Tensor {
        Tensor::from_slice(values).view([rows, -1])
    }

    #[test]
    fn encode_then_decode_is_the_identity_for_both_weightings() {
        let refs = t(&[0.0, 0.0, 10.0, 20.0, 5.0, 5.0, 9.0, 7.0], 2);
        let gts = t(&[1.0, 2.0, 13.0, 18.0, 4.0, 6.0, 10.0, 9.5], 2);
        for coder in [BoxCoder::RPN, BoxCoder::ROI_HEADS] {
            let deltas = coder.encode(&gts, &refs);
            let back = coder.decode(&deltas, &refs);
            let err = f64::try_from((back - &gts).abs().max()).unwrap();
            assert!(err < 1e-5, "{coder:?}: {err}");
        }
        // torchvision's numbers: reference (0,0,10,20) → target (1,2,13,18): dx = (7 - 5) / 10, dw = ln(12 / 10).
        let deltas = BoxCoder::ROI_HEADS.encode(&gts, &refs);
        let first: Vec<f32> = Vec::try_from(deltas.get(0)).unwrap();
        let expected = [10.0 * 0.2, 10.0 * 0.0, 5.0 * (1.2f32).ln(), 5.0 * (0.8f32).ln()];
        for (a, b) in first.iter().zip(expected) {
            assert!((a - b).abs() < 1e-5, "{first:?} vs {expected:?}");
        }
    }

    #[test]
    fn decoding_clamps_huge_sizes() {
        let refs = t(&[0.0, 0.0, 10.0, 10.0], 1);
        let deltas = t(&[0.0, 0.0, 100.0, 100.0], 1);
        let boxes = BoxCoder::RPN.decode(&deltas, &refs);
        let w = f64::try_from(boxes.get(0).get(2) - boxes.get(0).get(0)).unwrap();
        assert!((w - 10.0 * 1000.0 / 16.0).abs() < 1e-2, "{w}");
    }

    #[test]
    fn iou_clip_and_small_boxes() {
        let a = t(&[0.0, 0.0, 10.0, 10.0, 20.0, 20.0, 30.0, 40.0], 2);
        let b = t(&[5.0, 0.0, 15.0, 10.0, 100.0, 100.0, 101.0, 101.0], 2);
        let iou: Vec<f32> = Vec::try_from(box_iou(&a, &b).flatten(0, -1)).unwrap();
        assert_eq!(iou, [50.0 / 150.0, 0.0, 0.0, 0.0]);
        let clipped: Vec<f32> =
            Vec::try_from(clip_boxes(&t(&[-5.0, 3.0, 70.0, 90.0], 1), 64, 48).flatten(0, -1)).unwrap();
        assert_eq!(clipped, [0.0, 3.0, 48.0, 64.0]);
        let keep: Vec<bool> =
            Vec::try_from(large_enough(&t(&[0.0, 0.0, 1.0, 0.5, 0.0, 0.0, 2.0, 2.0], 2), 1.0)).unwrap();
        assert_eq!(keep, [false, true]);
        let _ = Device::Cpu;
    }
}
