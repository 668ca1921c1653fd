//! FCOS target assignment: which feature-map location learns which ground-truth box.
//!
//! As FCOS (Tian et al., 2019) with centre sampling: a location is a candidate for a box when it lies inside the
//! box's centre region — the square of half-side `radius × stride` around the box centre, cut to the box — and
//! its largest distance to the box's sides falls strictly inside its level's size range (`(0, 64)`, `(64, 128)`,
//! `(128, 256)`, `(256, 512)`, `(512, ∞)` for P3…P7; the last level used is open above). This is torchvision's
//! `FCOS.compute_loss` with one anchor of size `stride` per location; `tests/detector_parity.rs` holds kiln to it. A location with several candidate boxes
//! takes the smallest. Its targets are the class, the distances `(l, t, r, b)` to the box's sides in pixels, and
//! the centerness `sqrt(min(l, r)/max(l, r) · min(t, b)/max(t, b))`.

use tch::{Device, Kind, Tensor};

use kiln_models::{Locations, ObjectDetector};

/// The locations of a square `size` input, on `device`.
pub fn locations_on(model: &ObjectDetector, size: i64, device: Device) -> (Locations, Tensor, Tensor) {
    let locations = model.locations(size, size);
    let points = locations.points.to_device(device);
    let strides = locations.strides.to_device(device);
    (locations, points, strides)
}

/// Half-side of the centre region in strides (FCOS's `center_sampling_radius`).
pub const CENTER_RADIUS: f64 = 1.5;
/// The upper size bound of the first level; each next level doubles it.
pub const FIRST_LEVEL_MAX: f64 = 64.0;

/// The targets of one image.
#[derive(Debug)]
pub struct Assignment {
    /// `[A]` i64: the assigned box's class, or -1 for background.
    pub classes: Tensor,
    /// `[A, 4]` f32: distances `(l, t, r, b)` to the assigned box's sides (0 for background).
    pub ltrb: Tensor,
    /// `[A]` f32: the centerness target (0 for background).
    pub centerness: Tensor,
    /// `[A]` i64: the index of the assigned box, or -1.
    pub matched: Tensor,
}

/// The size range `[lower, upper)` of each location, from its stride; `num_levels` levels starting at stride 8.
pub fn size_ranges(strides: &Tensor) -> (Tensor, Tensor) {
    // Level l (stride 8·2^l): lower 64·2^(l-1) (0 for the first), upper 64·2^l (∞ for the last).
    let max_stride = strides.max().double_value(&[]);
    let level_max = strides * (FIRST_LEVEL_MAX / 8.0);
    let lower = (&level_max / 2.0) * strides.gt(8.0).to_kind(Kind::Float);
    let upper = level_max.where_self(&strides.lt(max_stride), &Tensor::from(f64::INFINITY).to_kind(Kind::Float));
    (lower, upper)
}

/// Assigns `boxes` `[G, 4]` (xyxy pixels, f32) of classes `classes` `[G]` (i64) to the locations `points`
/// `[A, 2]` (x, y) of strides `strides` `[A]`. Everything on `points`' device.
pub fn assign(points: &Tensor, strides: &Tensor, boxes: &Tensor, classes: &Tensor) -> Assignment {
    let a = points.size()[0];
    let device = points.device();
    let g = boxes.size()[0];
    if g == 0 {
        return Assignment {
            classes: Tensor::full([a], -1, (Kind::Int64, device)),
            ltrb: Tensor::zeros([a, 4], (Kind::Float, device)),
            centerness: Tensor::zeros([a], (Kind::Float, device)),
            matched: Tensor::full([a], -1, (Kind::Int64, device)),
        };
    }
    let x = points.select(1, 0).unsqueeze(1); // [A, 1]
    let y = points.select(1, 1).unsqueeze(1);
    let (x1, y1, x2, y2) = (boxes.select(1, 0), boxes.select(1, 1), boxes.select(1, 2), boxes.select(1, 3)); // [G]
    let ltrb = Tensor::stack(&[&x - &x1, &y - &y1, &x2 - &x, &y2 - &y], 2); // [A, G, 4]
                                                                            // The centre region, cut to the box.
    let (cx, cy) = ((&x1 + &x2) / 2.0, (&y1 + &y2) / 2.0);
    let r = strides.unsqueeze(1) * CENTER_RADIUS; // [A, 1]
    let (rx1, ry1) = ((&cx - &r).maximum(&x1), (&cy - &r).maximum(&y1));
    let (rx2, ry2) = ((&cx + &r).minimum(&x2), (&cy + &r).minimum(&y2));
    let to_region = Tensor::stack(&[&x - rx1, &y - ry1, rx2 - &x, ry2 - &y], 2);
    let in_region = to_region.amin(&[2i64][..], false).gt(0.0); // [A, G]
    let reach = ltrb.amax(&[2i64][..], false); // [A, G]
    let (lower, upper) = size_ranges(strides);
    let in_range = reach.gt_tensor(&lower.unsqueeze(1)).logical_and(&reach.lt_tensor(&upper.unsqueeze(1)));
    let candidate = in_region.logical_and(&in_range);
    let area = ((&x2 - &x1) * (&y2 - &y1)).unsqueeze(0).expand([a, g], false);
    let masked = area.where_self(&candidate, &Tensor::from(f64::INFINITY).to_kind(Kind::Float).to_device(device));
    let (best_area, best) = masked.min_dim(1, false); // [A]
    let positive = best_area.isfinite();
    let matched = best.where_self(&positive, &Tensor::from(-1i64).to_device(device));
    let safe = best.clamp_min(0);
    let chosen = ltrb.gather(1, &safe.view([a, 1, 1]).expand([a, 1, 4], false), false).squeeze_dim(1); // [A, 4]
    let positive_f = positive.to_kind(Kind::Float).unsqueeze(1);
    let chosen = chosen * &positive_f;
    let (l, t, rr, b) = (chosen.select(1, 0), chosen.select(1, 1), chosen.select(1, 2), chosen.select(1, 3));
    let lr = l.minimum(&rr) / l.maximum(&rr).clamp_min(1e-6);
    let tb = t.minimum(&b) / t.maximum(&b).clamp_min(1e-6);
    let centerness = (lr * tb).clamp_min(0.0).sqrt() * positive_f.squeeze_dim(1);
    let assigned_classes = classes.to_device(device).index_select(0, &safe);
    Assignment {
        classes: assigned_classes.where_self(&positive, &Tensor::from(-1i64).to_device(device)),
        ltrb: chosen,
        centerness,
        matched,
    }
}

/// The locations of one level laid out as the detector does: cell centres `((j + 0.5)·s, (i + 0.5)·s)`, row-major.
pub fn level_points(height: i64, width: i64, stride: i64, device: Device) -> Tensor {
    let s = stride as f64;
    let ys = (Tensor::arange(height, (Kind::Float, device)) + 0.5) * s;
    let xs = (Tensor::arange(width, (Kind::Float, device)) + 0.5) * s;
    let grid = Tensor::meshgrid_indexing(&[&ys, &xs], "ij");
    Tensor::stack(&[grid[1].flatten(0, -1), grid[0].flatten(0, -1)], 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }

    fn vec_i(t: &Tensor) -> Vec<i64> {
        Vec::try_from(t.flatten(0, -1)).unwrap()
    }

    fn vec_f(t: &Tensor) -> Vec<f32> {
        Vec::try_from(t.flatten(0, -1)).unwrap()
    }

    #[test]
    fn level_sizes_follow_fcos() {
        let strides = t(&[8.0, 16.0, 32.0], &[3]);
        let (lower, upper) = size_ranges(&strides);
        assert_eq!(vec_f(&lower), [0.0, 64.0, 128.0]);
        assert_eq!(vec_f(&upper), [64.0, 128.0, f32::INFINITY], "the last level is open above");
    }

    #[test]
    fn a_box_is_learned_by_the_locations_near_its_centre() {
        // A 16×16 box centred at (40, 40) on a stride-8 grid of 10×10 cells: centre region ±12 px cut to the box.
        let points = level_points(10, 10, 8, Device::Cpu);
        let strides = Tensor::full([100], 8.0, (Kind::Float, Device::Cpu));
        let boxes = t(&[32.0, 32.0, 48.0, 48.0], &[1, 4]);
        let a = assign(&points, &strides, &boxes, &Tensor::from_slice(&[2i64]));
        let classes = vec_i(&a.classes);
        let positives: Vec<usize> = (0..100).filter(|&i| classes[i] == 2).collect();
        // Cells with centres 36 and 44 on each axis lie strictly inside the box.
        assert_eq!(positives, [4 * 10 + 4, 4 * 10 + 5, 5 * 10 + 4, 5 * 10 + 5]);
        assert!(classes.iter().enumerate().all(|(i, &c)| c == -1 || positives.contains(&i)));
        let ltrb = vec_f(&a.ltrb);
        assert_eq!(&ltrb[44 * 4..45 * 4], &[4.0, 4.0, 12.0, 12.0], "(36, 36) to the sides of [32, 48]");
        let c = vec_f(&a.centerness)[44];
        assert!((c - (4.0f32 / 12.0)).abs() < 1e-6, "sqrt(4/12 · 4/12) = {c}");
        assert_eq!(vec_f(&a.centerness)[0], 0.0, "background has no centerness");
    }

    #[test]
    fn centre_sampling_limits_large_boxes_and_overlaps_go_to_the_smaller_box() {
        // A large box (0..80) and a small one inside it (30..50), both of class 0 and 1; stride 8, 10×10 cells.
        let points = level_points(10, 10, 8, Device::Cpu);
        let strides = Tensor::full([100], 8.0, (Kind::Float, Device::Cpu));
        let boxes = t(&[0.0, 0.0, 60.0, 60.0, 28.0, 28.0, 52.0, 52.0], &[2, 4]);
        let a = assign(&points, &strides, &boxes, &Tensor::from_slice(&[0i64, 1]));
        let matched = vec_i(&a.matched);
        // Location (36, 36) lies in both centre regions: the smaller box (index 1) wins.
        assert_eq!(matched[4 * 10 + 4], 1);
        // Location (4, 4) is inside the large box but outside its centre region (30 ± 12).
        assert_eq!(matched[0], -1);
        // Location (20, 20) is in the large box's centre region [18, 42] and outside the small box.
        assert_eq!(matched[2 * 10 + 2], 0);
    }

    #[test]
    fn the_size_range_picks_the_level() {
        // A 160×160 box centred at 96: near its centre the reach is 84–96 px, within [64, 128) only on P4.
        let p8 = level_points(24, 24, 8, Device::Cpu);
        let p16 = level_points(12, 12, 16, Device::Cpu);
        let p32 = level_points(6, 6, 32, Device::Cpu);
        let points = Tensor::cat(&[&p8, &p16, &p32], 0);
        let full = |n: i64, s: f64| Tensor::full([n], s, (Kind::Float, Device::Cpu));
        let strides = Tensor::cat(&[full(576, 8.0), full(144, 16.0), full(36, 32.0)], 0);
        let boxes = t(&[16.0, 16.0, 176.0, 176.0], &[1, 4]);
        let a = assign(&points, &strides, &boxes, &Tensor::from_slice(&[0i64]));
        let matched = vec_i(&a.matched);
        let count = |r: std::ops::Range<usize>| matched[r].iter().filter(|&&m| m == 0).count();
        assert_eq!(count(0..576), 0, "reach ≥ 64 is too large for P3");
        assert_eq!(count(576..720), 4, "P4 learns it at the 2×2 cells around the centre");
        assert_eq!(count(720..756), 0, "reach < 128 is too small for P5");
    }

    #[test]
    fn an_image_without_boxes_is_all_background() {
        let points = level_points(4, 4, 8, Device::Cpu);
        let strides = Tensor::full([16], 8.0, (Kind::Float, Device::Cpu));
        let a = assign(
            &points,
            &strides,
            &Tensor::zeros([0, 4], (Kind::Float, Device::Cpu)),
            &Tensor::zeros([0], (Kind::Int64, Device::Cpu)),
        );
        assert!(vec_i(&a.classes).iter().all(|&c| c == -1));
        assert_eq!(a.ltrb.size(), [16, 4]);
    }
}
