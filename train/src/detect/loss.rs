//! The detector's losses, as torchvision's FCOS: sigmoid focal loss over every location and class, GIoU loss on
//! the positive locations' boxes, and binary cross-entropy on their centerness, each summed and divided by the
//! number of positive locations in the batch (at least 1).

use tch::{Kind, Reduction, Tensor};

use kiln_models::faster_rcnn::SplitMix64;
use kiln_models::{FasterRcnn, ObjectDetector};

use super::loader::DetectBatch;
#[cfg(doc)]
use super::targets::locations_on;
use super::targets::{assign, Assignment};
use crate::engine::task::Normaliser;
use crate::engine::Losses;
use crate::precision::Precision;
use crate::Result;

/// Focal loss parameters (RetinaNet's).
pub const FOCAL_ALPHA: f64 = 0.25;
pub const FOCAL_GAMMA: f64 = 2.0;

/// The batch's loss parts; `total = classification + box + centerness`.
pub struct DetectionLosses {
    pub total: Tensor,
    pub classification: Tensor,
    pub boxes: Tensor,
    pub centerness: Tensor,
    pub positives: i64,
}

/// Sigmoid focal loss summed over all elements: `-α_t (1 - p_t)^γ log(p_t)`.
pub fn sigmoid_focal_loss_sum(logits: &Tensor, targets: &Tensor, alpha: f64, gamma: f64) -> Tensor {
    let p = logits.sigmoid();
    let ce = logits.binary_cross_entropy_with_logits::<Tensor>(targets, None, None, Reduction::None);
    let p_t: Tensor = &p * targets + (-&p + 1.0) * (-targets + 1.0);
    let alpha_t: Tensor = targets * alpha + (-targets + 1.0) * (1.0 - alpha);
    let modulating = (-p_t + 1.0).pow_tensor_scalar(gamma);
    (alpha_t * ce * modulating).sum(Kind::Float)
}

/// `1 - GIoU` of boxes given as distances `(l, t, r, b)` from the same points, `[P, 4]` each; summed.
pub fn giou_loss_sum(pred: &Tensor, target: &Tensor) -> Tensor {
    let eps = 1e-7;
    let (pl, pt, pr, pb) = (pred.select(1, 0), pred.select(1, 1), pred.select(1, 2), pred.select(1, 3));
    let (tl, tt, tr, tb) = (target.select(1, 0), target.select(1, 1), target.select(1, 2), target.select(1, 3));
    let pred_area = (&pl + &pr) * (&pt + &pb);
    let target_area = (&tl + &tr) * (&tt + &tb);
    let inter_w = pl.minimum(&tl) + pr.minimum(&tr);
    let inter_h = pt.minimum(&tt) + pb.minimum(&tb);
    let inter = inter_w.clamp_min(0.0) * inter_h.clamp_min(0.0);
    let union = pred_area + target_area - &inter;
    let iou = &inter / (&union + eps);
    let enclose = (pl.maximum(&tl) + pr.maximum(&tr)) * (pt.maximum(&tt) + pb.maximum(&tb));
    let giou = iou - (&enclose - &union) / (enclose + eps);
    (-giou + 1.0).sum(Kind::Float)
}

/// The FCOS losses of a batch: `cls_logits` `[N, A, C]`, `box_ltrb` `[N, A, 4]` (pixels), `centerness_logits`
/// `[N, A]`, and one [`Assignment`] per image.
pub fn fcos_losses(
    cls_logits: &Tensor,
    box_ltrb: &Tensor,
    centerness_logits: &Tensor,
    assignments: &[Assignment],
) -> DetectionLosses {
    let num_classes = cls_logits.size()[2];
    let device = cls_logits.device();
    let classes =
        Tensor::stack(&assignments.iter().map(|a| a.classes.shallow_clone()).collect::<Vec<_>>(), 0).to_device(device); // [N, A]
    let ltrb_target =
        Tensor::stack(&assignments.iter().map(|a| a.ltrb.shallow_clone()).collect::<Vec<_>>(), 0).to_device(device);
    let ctr_target = Tensor::stack(&assignments.iter().map(|a| a.centerness.shallow_clone()).collect::<Vec<_>>(), 0)
        .to_device(device);
    let positive = classes.ge(0); // [N, A]
    let positives = positive.sum(Kind::Int64).int64_value(&[]);
    let normaliser = positives.max(1) as f64;
    // One-hot targets; background rows are all zero.
    let one_hot =
        classes.clamp_min(0).one_hot(num_classes).to_kind(Kind::Float) * positive.unsqueeze(-1).to_kind(Kind::Float);
    let cls_logits = cls_logits.to_kind(Kind::Float);
    let classification = sigmoid_focal_loss_sum(&cls_logits, &one_hot, FOCAL_ALPHA, FOCAL_GAMMA) / normaliser;
    let (boxes, centerness) = if positives > 0 {
        let index = positive.flatten(0, -1).nonzero().squeeze_dim(1);
        let pred = box_ltrb.to_kind(Kind::Float).flatten(0, 1).index_select(0, &index);
        let target = ltrb_target.flatten(0, 1).index_select(0, &index);
        let ctr_logits = centerness_logits.to_kind(Kind::Float).flatten(0, -1).index_select(0, &index);
        let ctr = ctr_target.flatten(0, -1).index_select(0, &index);
        (
            giou_loss_sum(&pred, &target) / normaliser,
            ctr_logits.binary_cross_entropy_with_logits::<Tensor>(&ctr, None, None, Reduction::Sum) / normaliser,
        )
    } else {
        // Keep the graph connected (zero gradient) so every parameter gets a gradient tensor.
        (box_ltrb.sum(Kind::Float) * 0.0, centerness_logits.sum(Kind::Float) * 0.0)
    };
    DetectionLosses { total: &classification + &boxes + &centerness, classification, boxes, centerness, positives }
}

/// The training loss of a batch — forward in training mode under `precision`, FCOS targets for each image's
/// canvas boxes at the input's locations (`points` `[A, 2]`, `strides` `[A]` on the device, from
/// [`locations_on`], made once per run rather than every step), [`fcos_losses`] — as the engine's loss parts
/// `[total, cls, box, ctr]`. Shared by the training loop and the step benchmark.
pub fn batch_losses(
    model: &ObjectDetector,
    batch: &DetectBatch,
    precision: &Precision,
    points: &Tensor,
    strides: &Tensor,
) -> Result<Losses> {
    let device = precision.device;
    let xs = precision.prepare_batch(&batch.images.to_device(device))?;
    let outputs = precision.autocast(|| model.forward_t(&xs, true));
    let assignments: Vec<_> = (0..batch.targets.len())
        .map(|i| {
            let (boxes, classes) = batch.boxes_tensors(i);
            assign(points, strides, &boxes.to_device(device), &classes.to_device(device))
        })
        .collect();
    let l = fcos_losses(&outputs.cls_logits, &outputs.box_ltrb, &outputs.centerness_logits, &assignments);
    let count = l.positives as f64;
    Ok(Losses {
        parts: vec![l.total.shallow_clone(), l.classification, l.boxes, l.centerness],
        total: l.total,
        // fcos_losses divides by the positive locations, at least 1.
        normaliser: Some(Normaliser { count, divisor: count.max(1.0), floor: 1.0 }),
    })
}

/// Faster R-CNN's training loss of a batch: forward in training mode under `precision` with each image's canvas
/// boxes, the samplers drawing from `rng`, as the engine's loss parts `[total, rpn_obj, rpn_box, cls, box]` (the
/// RPN's objectness and box losses, the RoI heads' classification and box losses). Each part is a mean over the
/// batch's samples, as torchvision's, so no count is shared between ranks.
pub fn faster_rcnn_batch_losses(
    model: &FasterRcnn,
    batch: &DetectBatch,
    precision: &Precision,
    rng: &mut SplitMix64,
) -> Result<Losses> {
    let device = precision.device;
    let xs = precision.prepare_batch(&batch.images.to_device(device))?;
    let size = xs.size();
    let anchors = model.anchors(size[2], size[3]);
    let truths: Vec<(Tensor, Tensor)> = (0..batch.targets.len())
        .map(|i| {
            let (boxes, classes) = batch.boxes_tensors(i);
            (boxes.to_device(device), classes.to_device(device))
        })
        .collect();
    let l = precision.autocast(|| model.losses(&xs, &anchors, &truths, rng, true));
    let total = l.total();
    Ok(Losses {
        parts: vec![total.shallow_clone(), l.objectness, l.rpn_box_regression, l.classifier, l.box_regression],
        total,
        normaliser: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn value(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    #[test]
    fn focal_loss_matches_its_formula_and_down_weights_easy_examples() {
        let logits = Tensor::from_slice(&[2.0f32, -1.0, 0.0]);
        let targets = Tensor::from_slice(&[1.0f32, 0.0, 1.0]);
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let term = |x: f64, y: f64| {
            let p = sigmoid(x);
            let p_t = if y == 1.0 { p } else { 1.0 - p };
            let a_t = if y == 1.0 { 0.25 } else { 0.75 };
            -a_t * (1.0 - p_t).powi(2) * p_t.ln()
        };
        let expected = term(2.0, 1.0) + term(-1.0, 0.0) + term(0.0, 1.0);
        let got = value(&sigmoid_focal_loss_sum(&logits, &targets, 0.25, 2.0));
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
        // A confidently right example costs far less than under plain cross-entropy.
        let easy =
            value(&sigmoid_focal_loss_sum(&Tensor::from_slice(&[5.0f32]), &Tensor::from_slice(&[1.0f32]), 0.25, 2.0));
        let cross_entropy = (1.0 + (-5.0f64).exp()).ln();
        assert!(easy < 1e-3 * cross_entropy, "{easy} vs {cross_entropy}");
    }

    #[test]
    fn giou_is_zero_for_identical_boxes_and_grows_with_distance() {
        let target = Tensor::from_slice(&[4.0f32, 4.0, 4.0, 4.0]).view([1, 4]);
        assert!(value(&giou_loss_sum(&target, &target)).abs() < 1e-6);
        // The prediction loses the right half: intersection 4·8 = 32, union 64, enclosure 64 → GIoU 0.5.
        let half = Tensor::from_slice(&[4.0f32, 4.0, 0.0, 4.0]).view([1, 4]);
        assert!((value(&giou_loss_sum(&half, &target)) - 0.5).abs() < 1e-6);
        // A degenerate prediction (all zero) has IoU 0 and enclosure = target: loss 1.
        let zero = Tensor::zeros([1, 4], (Kind::Float, Device::Cpu));
        assert!((value(&giou_loss_sum(&zero, &target)) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn losses_are_normalised_by_positives_and_background_only_images_train_classification() {
        let a = 6;
        let assignment = |positive: Option<usize>| {
            let mut classes = vec![-1i64; a];
            let mut ltrb = vec![0f32; a * 4];
            let mut ctr = vec![0f32; a];
            if let Some(i) = positive {
                classes[i] = 1;
                ltrb[i * 4..i * 4 + 4].copy_from_slice(&[2.0, 2.0, 2.0, 2.0]);
                ctr[i] = 1.0;
            }
            Assignment {
                classes: Tensor::from_slice(&classes),
                ltrb: Tensor::from_slice(&ltrb).view([a as i64, 4]),
                centerness: Tensor::from_slice(&ctr),
                matched: Tensor::from_slice(&classes),
            }
        };
        let cls = Tensor::zeros([2, a as i64, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let ltrb = Tensor::full([2, a as i64, 4], 2.0, (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let ctr = Tensor::zeros([2, a as i64], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let losses = fcos_losses(&cls, &ltrb, &ctr, &[assignment(Some(2)), assignment(None)]);
        assert_eq!(losses.positives, 1);
        assert!(value(&losses.boxes).abs() < 1e-6, "the predicted box equals the target");
        // Centerness BCE of logit 0 against 1: ln 2.
        assert!((value(&losses.centerness) - std::f64::consts::LN_2).abs() < 1e-6);
        // Focal loss at p = 0.5: 36 elements, one positive.
        let pos = 0.25 * 0.25 * std::f64::consts::LN_2;
        let neg = 0.75 * 0.25 * std::f64::consts::LN_2;
        assert!((value(&losses.classification) - (pos + 35.0 * neg)).abs() < 1e-5);
        losses.total.backward();
        assert!(cls.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);

        let none = fcos_losses(&cls, &ltrb, &ctr, &[assignment(None), assignment(None)]);
        assert_eq!(none.positives, 0);
        assert_eq!(value(&none.boxes), 0.0);
        assert!(value(&none.classification) > 0.0, "background still trains the classifier");
    }
}
