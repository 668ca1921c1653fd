//! Non-maximum suppression for object detection: greedy, per class or class-agnostic, in plain Rust.
//!
//! [`nms`] takes a list of [`Detection`]s; [`nms_per_image`] takes a detector's dense output (one box per anchor and
//! a score per class) and makes every (box, class) pair whose score passes the threshold a candidate (multi-label,
//! as torchvision's FCOS postprocessing does). Both then:
//!
//! 1. drop candidates whose score is NaN or below [`NmsConfig::score_threshold`], and boxes that cannot be a
//!    detection: a NaN or infinite coordinate, `x2 <= x1` or `y2 <= y1`, or an area that is not a finite positive
//!    number (zero-area boxes are dropped whatever their score);
//! 2. keep only the [`NmsConfig::pre_nms_top_k`] highest-scoring of the rest;
//! 3. visit them by score, highest first, ties in input order, and keep a box unless its [`iou`] with a box already
//!    kept of the same class (of any class when [`NmsConfig::class_agnostic`]) is strictly greater than
//!    [`NmsConfig::iou_threshold`] (as torchvision's `batched_nms`), stopping at [`NmsConfig::max_detections`].
//!
//! The result is sorted by score, highest first, and is deterministic. For n candidates of which m =
//! min(n, `pre_nms_top_k`) are ranked and k kept, the cost is O(n + m log m) to rank and at most O(m·k) IoUs to
//! suppress; class-aware, a candidate is only compared with the kept boxes of its class (m_c·k_c IoUs at most for
//! the m_c candidates and k_c kept boxes of class c, summed over the classes), eight kept boxes at a time.

use serde::{Deserialize, Serialize};

/// A detected object.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Corners `[x1, y1, x2, y2]` in input-image pixels, with `x1 < x2` and `y1 < y2`.
    pub bbox: [f32; 4],
    /// Confidence, normally a probability.
    pub score: f32,
    /// Class index.
    pub class: usize,
}

/// Settings of [`nms`] and [`nms_per_image`]. Fields missing when deserializing take their [`Default`] values;
/// unknown fields are an error.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NmsConfig {
    /// A box is suppressed by a kept box whose IoU with it is strictly greater than this. Default 0.6.
    pub iou_threshold: f32,
    /// Candidates scoring below this are dropped; a score equal to it is kept, NaN never is. Default 0.05.
    pub score_threshold: f32,
    /// The most detections returned. Default 100.
    pub max_detections: usize,
    /// Suppress across classes, not only within a class. Default false (class-aware).
    pub class_agnostic: bool,
    /// Only this many of the highest-scoring candidates left after filtering enter suppression; in
    /// [`nms_per_image`] each (box, class) pair counts as one. Bounds the O(m·k) suppression cost. Default 1000.
    pub pre_nms_top_k: usize,
}

impl Default for NmsConfig {
    fn default() -> Self {
        Self {
            iou_threshold: 0.6,
            score_threshold: 0.05,
            max_detections: 100,
            class_agnostic: false,
            pre_nms_top_k: 1000,
        }
    }
}

/// Changes to an [`NmsConfig`], as a command line or an export option gives them: each `Some` replaces that
/// setting, `None` keeps the one being changed (a model's metadata, a run's config).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NmsOverrides {
    pub iou_threshold: Option<f32>,
    pub score_threshold: Option<f32>,
    pub max_detections: Option<usize>,
    pub class_agnostic: Option<bool>,
    pub pre_nms_top_k: Option<usize>,
}

impl NmsOverrides {
    /// `settings` with these changes.
    pub fn apply(&self, settings: NmsConfig) -> NmsConfig {
        NmsConfig {
            iou_threshold: self.iou_threshold.unwrap_or(settings.iou_threshold),
            score_threshold: self.score_threshold.unwrap_or(settings.score_threshold),
            max_detections: self.max_detections.unwrap_or(settings.max_detections),
            class_agnostic: self.class_agnostic.unwrap_or(settings.class_agnostic),
            pre_nms_top_k: self.pre_nms_top_k.unwrap_or(settings.pre_nms_top_k),
        }
    }

    /// Nothing is changed.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Intersection over union of two `[x1, y1, x2, y2]` boxes, in `[0, 1]`. A box that cannot be a detection (a NaN or
/// infinite coordinate, `x2 <= x1` or `y2 <= y1`, an area that overflows) has IoU 0 with every box, itself included,
/// so the result is never NaN.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    match (box_area(a), box_area(b)) {
        (Some(area_a), Some(area_b)) => iou_with_areas(a, area_a, b, area_b),
        _ => 0.0,
    }
}

/// Non-maximum suppression of `candidates` (see the [module documentation](self) for the exact rules): the kept
/// detections, highest score first.
pub fn nms(candidates: &[Detection], config: &NmsConfig) -> Vec<Detection> {
    let pool = candidates
        .iter()
        .filter(|det| det.score >= config.score_threshold)
        .filter_map(|&det| box_area(&det.bbox).map(|area| Candidate { det, area }))
        .collect();
    suppress(pool, config)
}

/// Non-maximum suppression of a detector's dense output for one image: `boxes[i]` is the i-th box and
/// `scores[i * num_classes + c]` its score for class `c` (row-major `[num_boxes, num_classes]`). Every (box, class)
/// pair scoring at least [`NmsConfig::score_threshold`] is a candidate, so one box can be detected as several
/// classes; the [`NmsConfig::pre_nms_top_k`] best pairs then go through [`nms`]'s suppression. Ties in score are
/// broken by position in `scores`.
///
/// # Panics
/// If `scores.len() != boxes.len() * num_classes`.
pub fn nms_per_image(scores: &[f32], boxes: &[[f32; 4]], num_classes: usize, config: &NmsConfig) -> Vec<Detection> {
    assert_eq!(
        boxes.len().checked_mul(num_classes),
        Some(scores.len()),
        "nms_per_image: {} scores for {} boxes × {num_classes} classes",
        scores.len(),
        boxes.len()
    );
    if num_classes == 0 {
        return Vec::new();
    }
    let mut pool = Vec::new();
    for (bbox, row) in boxes.iter().zip(scores.chunks_exact(num_classes)) {
        let Some(area) = box_area(bbox) else { continue };
        for (class, &score) in row.iter().enumerate() {
            if score >= config.score_threshold {
                let det = Detection { bbox: *bbox, score, class };
                pool.push(Candidate { det, area });
            }
        }
    }
    suppress(pool, config)
}

/// A candidate that passed the filters, with its area. Both callers pool candidates in input order, so a candidate's
/// position in the pool is the tie-break between equal scores.
#[derive(Clone, Copy)]
struct Candidate {
    det: Detection,
    area: f32,
}

/// The area of a box that can be a detection: finite coordinates, `x1 < x2`, `y1 < y2`, a finite positive area.
fn box_area(bbox: &[f32; 4]) -> Option<f32> {
    let [x1, y1, x2, y2] = *bbox;
    let area = (x2 - x1) * (y2 - y1);
    let valid = bbox.iter().all(|c| c.is_finite()) && x2 > x1 && y2 > y1 && area.is_finite() && area > 0.0;
    valid.then_some(area)
}

/// IoU of two boxes whose areas, from [`box_area`], are finite and positive (so every width below is finite and the
/// union is positive). Branch-free, so that [`KeptBoxes::suppresses`] vectorizes: on finite coordinates the
/// comparisons pick the same values as `f32::min` and `f32::max`, but for the sign of a zero, which cannot change the
/// result.
#[inline(always)]
fn iou_with_areas(a: &[f32; 4], area_a: f32, b: &[f32; 4], area_b: f32) -> f32 {
    let min = |x: f32, y: f32| if x < y { x } else { y };
    let max = |x: f32, y: f32| if x > y { x } else { y };
    let width = min(a[2], b[2]) - max(a[0], b[0]);
    let height = min(a[3], b[3]) - max(a[1], b[1]);
    let intersection = width * height;
    // The sum of the areas may overflow to infinity: the IoU is then 0, not NaN. Rounding may push it past 1.
    let ratio = min(intersection / (area_a + area_b - intersection), 1.0);
    if width <= 0.0 || height <= 0.0 {
        0.0
    } else {
        ratio
    }
}

/// Ranks `pool` (whose scores are not NaN), keeps its `pre_nms_top_k` best and suppresses greedily.
///
/// Class-aware suppression compares a candidate only with kept boxes of its own class, so the candidates are
/// grouped by class (each group in rank order) and every class is suppressed on its own against its kept boxes
/// alone; the boxes kept, back in rank order, are the same as one pass over all candidates would keep. A class stops
/// at `max_detections` kept boxes, since no later one could be returned.
fn suppress(pool: Vec<Candidate>, config: &NmsConfig) -> Vec<Detection> {
    if config.pre_nms_top_k == 0 || config.max_detections == 0 || pool.is_empty() {
        return Vec::new();
    }
    let ranked: Vec<Candidate> = rank(&pool, config.pre_nms_top_k).into_iter().map(|p| pool[p]).collect();
    drop(pool);
    // `keep[r]`: the candidate ranked r-th is kept.
    let mut keep = vec![false; ranked.len()];
    let mut kept = KeptBoxes::default();
    if config.class_agnostic {
        suppress_group(0..ranked.len(), &ranked, config, &mut kept, &mut keep);
    } else {
        let class = |r: usize| ranked[r].det.class;
        for group in group_by_class(&ranked).chunk_by(|&a, &b| class(a) == class(b)) {
            suppress_group(group.iter().copied(), &ranked, config, &mut kept, &mut keep);
        }
    }
    let kept = ranked.iter().zip(&keep).filter(|(_, &keep)| keep).map(|(candidate, _)| candidate.det);
    kept.take(config.max_detections).collect()
}

/// Greedy suppression of the candidates ranked `group` (in rank order) against each other alone, stopping at
/// `config.max_detections` kept: sets `keep` for those kept.
fn suppress_group(
    group: impl Iterator<Item = usize>,
    ranked: &[Candidate],
    config: &NmsConfig,
    kept: &mut KeptBoxes,
    keep: &mut [bool],
) {
    kept.clear();
    for r in group {
        let candidate = &ranked[r];
        if !kept.suppresses(&candidate.det.bbox, candidate.area, config.iou_threshold) {
            keep[r] = true;
            kept.push(&candidate.det.bbox, candidate.area);
            if kept.len() == config.max_detections {
                break;
            }
        }
    }
}

/// The positions in `pool` of its `top_k` best candidates, best first: highest score first, then lowest position (a
/// total order, since scores are not NaN and positions are distinct, so the unstable sort and selection below give
/// the same result as a stable sort by score). Sorts integer keys, the score's key above the position.
fn rank(pool: &[Candidate], top_k: usize) -> Vec<usize> {
    let score = |p: usize| descending_key(pool[p].det.score);
    if u32::try_from(pool.len()).is_err() {
        let mut positions: Vec<usize> = (0..pool.len()).collect();
        let key = |&p: &usize| (score(p), p);
        if positions.len() > top_k {
            positions.select_nth_unstable_by_key(top_k - 1, key);
            positions.truncate(top_k);
        }
        positions.sort_unstable_by_key(key);
        return positions;
    }
    let mut keys: Vec<u64> = (0..pool.len()).map(|p| (u64::from(score(p)) << 32) | p as u64).collect();
    if keys.len() > top_k {
        keys.select_nth_unstable(top_k - 1);
        keys.truncate(top_k);
    }
    keys.sort_unstable();
    keys.into_iter().map(|key| (key & u64::from(u32::MAX)) as usize).collect()
}

/// A key of a score that is not NaN, smaller for a higher score, equal for equal scores (0.0 and -0.0 included).
fn descending_key(score: f32) -> u32 {
    // -0.0 + 0.0 is 0.0. Then flipping the sign bit of positive floats and every bit of negative ones orders them as
    // unsigned integers.
    let bits = (score + 0.0).to_bits();
    let ascending = if bits >> 31 == 1 { !bits } else { bits | 1 << 31 };
    !ascending
}

/// The ranks `0..ranked.len()` grouped by class, each group in rank order: a counting sort when the classes are
/// small numbers (as they are), a sort otherwise.
fn group_by_class(ranked: &[Candidate]) -> Vec<usize> {
    let max_class = ranked.iter().map(|candidate| candidate.det.class).max().unwrap_or(0);
    if max_class > 2 * ranked.len() + 1024 {
        let mut ranks: Vec<usize> = (0..ranked.len()).collect();
        ranks.sort_unstable_by_key(|&r| (ranked[r].det.class, r));
        return ranks;
    }
    // `next[c]`: where the next rank of class c goes.
    let mut next = vec![0; max_class + 1];
    for candidate in ranked {
        next[candidate.det.class] += 1;
    }
    let mut start = 0;
    for slot in &mut next {
        (*slot, start) = (start, start + *slot);
    }
    let mut ranks = vec![0; ranked.len()];
    for (r, candidate) in ranked.iter().enumerate() {
        let slot = &mut next[candidate.det.class];
        ranks[*slot] = r;
        *slot += 1;
    }
    ranks
}

/// Lanes of a [`KeptBoxes`] block.
const LANES: usize = 8;

/// The boxes kept so far in one suppression pass, in blocks of [`LANES`] boxes, a coordinate (or the area) at a time,
/// so that testing a candidate against a block is a few vector instructions.
#[derive(Default)]
struct KeptBoxes {
    blocks: Vec<[[f32; LANES]; 5]>,
    len: usize,
}

impl KeptBoxes {
    fn len(&self) -> usize {
        self.len
    }

    fn clear(&mut self) {
        self.blocks.clear();
        self.len = 0;
    }

    fn push(&mut self, bbox: &[f32; 4], area: f32) {
        let lane = self.len % LANES;
        if lane == 0 {
            self.blocks.push([[0.0; LANES]; 5]);
        }
        let block = self.blocks.last_mut().expect("a block was pushed");
        for (values, value) in block.iter_mut().zip([bbox[0], bbox[1], bbox[2], bbox[3], area]) {
            values[lane] = value;
        }
        self.len += 1;
    }

    /// Whether a kept box's IoU with `bbox` (of area `area`) is greater than `threshold`.
    fn suppresses(&self, bbox: &[f32; 4], area: f32, threshold: f32) -> bool {
        if 0.0 > threshold {
            return self.len > 0; // every IoU is at least 0
        }
        // The lanes of the last block past the last kept box hold zeros: a box of zero width, whose IoU with any box
        // is 0, which is not above a threshold that is not negative.
        self.blocks.iter().any(|[x1, y1, x2, y2, areas]| {
            let mut any = false;
            for lane in 0..LANES {
                let kept = [x1[lane], y1[lane], x2[lane], y2[lane]];
                any |= iou_with_areas(&kept, areas[lane], bbox, area) > threshold;
            }
            any
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_only_what_they_name() {
        let base = NmsConfig::default();
        assert!(NmsOverrides::default().is_empty());
        assert_eq!(NmsOverrides::default().apply(base), base);
        let changes = NmsOverrides { score_threshold: Some(0.3), class_agnostic: Some(true), ..Default::default() };
        assert!(!changes.is_empty());
        assert_eq!(changes.apply(base), NmsConfig { score_threshold: 0.3, class_agnostic: true, ..base });
    }

    fn det(bbox: [f32; 4], score: f32, class: usize) -> Detection {
        Detection { bbox, score, class }
    }

    fn with(edit: impl FnOnce(&mut NmsConfig)) -> NmsConfig {
        let mut config = NmsConfig::default();
        edit(&mut config);
        config
    }

    const NAN: f32 = f32::NAN;
    const INF: f32 = f32::INFINITY;

    #[test]
    fn iou_of_pairs() {
        let cases: &[(&str, [f32; 4], [f32; 4], f32)] = &[
            ("identical", [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0], 1.0),
            ("disjoint", [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 6.0, 6.0], 0.0),
            ("sharing an edge", [0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 2.0, 1.0], 0.0),
            ("sharing a corner", [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 2.0, 2.0], 0.0),
            ("half shifted", [0.0, 0.0, 2.0, 1.0], [1.0, 0.0, 3.0, 1.0], 1.0 / 3.0),
            ("contained", [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], 0.25),
            ("zero width, itself", [1.0, 0.0, 1.0, 5.0], [1.0, 0.0, 1.0, 5.0], 0.0),
            ("zero height inside", [0.0, 0.0, 4.0, 4.0], [1.0, 2.0, 3.0, 2.0], 0.0),
            ("inverted, itself", [3.0, 3.0, 1.0, 1.0], [3.0, 3.0, 1.0, 1.0], 0.0),
            ("NaN coordinate", [0.0, 0.0, NAN, 2.0], [0.0, 0.0, 2.0, 2.0], 0.0),
            ("infinite box, itself", [0.0, 0.0, INF, INF], [0.0, 0.0, INF, INF], 0.0),
            ("area overflows", [-3e38, -3e38, 3e38, 3e38], [0.0, 0.0, 1.0, 1.0], 0.0),
        ];
        for &(name, a, b, expected) in cases {
            assert_eq!(iou(&a, &b), expected, "{name}");
            assert_eq!(iou(&b, &a), expected, "{name}, swapped");
        }
        // Extreme boxes, every pair: never NaN, always within [0, 1].
        let extreme = [
            [0.0, 0.0, 3e19, 1e19], // the sum of these two areas overflows
            [1e19, 0.0, 4e19, 1e19],
            [0.0, 0.0, 1e-20, 1e-20], // area underflows to 0
            [-1e-30, -1e-30, 1e-30, 1e-30],
            [0.0, 0.0, f32::MAX, 1.0],
            [f32::MIN, 0.0, 0.0, 1.0],
            [0.0, NAN, NAN, 1.0],
            [-INF, -INF, INF, INF],
            [0.1, 0.2, 0.3, 0.4],
        ];
        for a in &extreme {
            for b in &extreme {
                let value = iou(a, b);
                assert!((0.0..=1.0).contains(&value), "iou({a:?}, {b:?}) = {value}");
            }
        }
    }

    #[test]
    fn nms_cases() {
        let unit = |x: f32, score: f32| det([x, 0.0, x + 1.0, 1.0], score, 0);
        let a = [0.0, 0.0, 4.0, 1.0];
        // IoU with `a`: 3/5 = 0.6 exactly in f32, the default threshold.
        let b = [1.0, 0.0, 5.0, 1.0];
        let c = [2.0, 0.0, 6.0, 1.0];
        let d = NmsConfig::default();
        let thr_half = with(|c| c.iou_threshold = 0.5);
        let (agnostic, top_3) = (with(|c| c.class_agnostic = true), with(|c| c.max_detections = 3));
        let cases: Vec<(&str, Vec<Detection>, NmsConfig, Vec<usize>)> = vec![
            ("no boxes", vec![], d, vec![]),
            ("identical boxes", vec![det(a, 0.8, 0), det(a, 0.9, 0)], d, vec![1]),
            ("sharing an edge", vec![unit(0.0, 0.9), unit(1.0, 0.8)], d, vec![0, 1]),
            ("IoU at the threshold", vec![det(a, 0.9, 0), det(b, 0.8, 0)], d, vec![0, 1]),
            (
                "IoU above the threshold",
                vec![det(a, 0.9, 0), det(b, 0.8, 0)],
                with(|c| c.iou_threshold = 0.59),
                vec![0],
            ),
            ("suppressed: no effect", vec![det(c, 0.7, 0), det(b, 0.8, 0), det(a, 0.9, 0)], thr_half, vec![2, 0]),
            ("other classes, class-aware", vec![det(a, 0.9, 0), det(a, 0.8, 1)], d, vec![0, 1]),
            ("other classes, agnostic", vec![det(a, 0.8, 0), det(a, 0.9, 1)], agnostic, vec![1]),
            ("sorted by score", vec![unit(0.0, 0.3), unit(2.0, 0.9), unit(4.0, 0.6)], d, vec![1, 2, 0]),
            (
                "NaN and negative scores dropped",
                vec![unit(0.0, NAN), unit(2.0, -0.5), unit(4.0, 0.5), unit(6.0, -0.0)],
                with(|c| c.score_threshold = 0.0),
                vec![2, 3],
            ),
            ("score at the threshold kept", vec![unit(0.0, 0.05), unit(2.0, 0.0499), unit(4.0, 0.0)], d, vec![0]),
            (
                "NaN scores never pass",
                vec![det(a, NAN, 0), det(a, 0.5, 0)],
                with(|c| c.score_threshold = -INF),
                vec![1],
            ),
            (
                "NaN and infinite coordinates dropped",
                vec![det([NAN, 0.0, 1.0, 1.0], 0.9, 0), det([0.0, 0.0, INF, 1.0], 0.9, 0), det(a, 0.1, 0)],
                d,
                vec![2],
            ),
            (
                "zero-area and inverted boxes dropped",
                vec![det([1.0, 0.0, 1.0, 1.0], 0.9, 0), det([4.0, 1.0, 0.0, 0.0], 0.9, 0), det(a, 0.2, 0)],
                with(|c| c.iou_threshold = 0.0),
                vec![2],
            ),
            ("max_detections", (0..5).map(|i| unit(2.0 * i as f32, i as f32)).collect(), top_3, vec![4, 3, 2]),
            ("max_detections 0", vec![unit(0.0, 0.9)], with(|c| c.max_detections = 0), vec![]),
            (
                "ties in input order",
                vec![unit(4.0, 0.5), unit(0.0, 0.5), unit(2.0, 0.7), unit(6.0, 0.5)],
                d,
                vec![2, 0, 1, 3],
            ),
            ("tied overlapping boxes: first kept", vec![det(b, 0.5, 0), det(a, 0.5, 0)], thr_half, vec![0]),
            ("tied overlapping boxes, swapped", vec![det(a, 0.5, 0), det(b, 0.5, 0)], thr_half, vec![0]),
            (
                "top_k after score filter",
                vec![unit(0.0, NAN), unit(2.0, 0.2), unit(4.0, 0.01), unit(6.0, 0.9), unit(8.0, 0.5)],
                with(|c| c.pre_nms_top_k = 2),
                vec![3, 4],
            ),
            ("pre_nms_top_k 0", vec![unit(0.0, 0.9)], with(|c| c.pre_nms_top_k = 0), vec![]),
        ];
        for (name, candidates, config, expected) in cases {
            let expected: Vec<Detection> = expected.iter().map(|&i| candidates[i]).collect();
            assert_eq!(nms(&candidates, &config), expected, "{name}");
        }
    }

    #[test]
    fn nms_per_image_cases() {
        let boxes = [[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [20.0, 20.0, 30.0, 30.0], [5.0, 5.0, 5.0, 9.0]];
        #[rustfmt::skip]
        let scores = [
            0.9, 0.7, 0.01,
            0.8, 0.02, 0.3,
            0.7, 0.9, 0.6,
            1.0, 1.0, 1.0, // zero width: dropped
        ];
        let d = |b: usize, score: f32, class: usize| det(boxes[b], score, class);
        let cases: &[(&str, NmsConfig, Vec<Detection>)] = &[
            (
                "one box, two classes",
                NmsConfig::default(),
                vec![d(0, 0.9, 0), d(2, 0.9, 1), d(0, 0.7, 1), d(2, 0.7, 0), d(2, 0.6, 2), d(1, 0.3, 2)],
            ),
            ("class-agnostic", with(|c| c.class_agnostic = true), vec![d(0, 0.9, 0), d(2, 0.9, 1)]),
            ("top_k counts pairs", with(|c| c.pre_nms_top_k = 3), vec![d(0, 0.9, 0), d(2, 0.9, 1)]),
            ("max_detections", with(|c| c.max_detections = 3), vec![d(0, 0.9, 0), d(2, 0.9, 1), d(0, 0.7, 1)]),
            ("score threshold", with(|c| c.score_threshold = 0.75), vec![d(0, 0.9, 0), d(2, 0.9, 1)]),
        ];
        for (name, config, expected) in cases {
            assert_eq!(&nms_per_image(&scores, &boxes, 3, config), expected, "{name}");
        }
        assert_eq!(nms_per_image(&[], &[], 3, &NmsConfig::default()), vec![]);
        assert_eq!(nms_per_image(&[], &boxes, 0, &NmsConfig::default()), vec![]);
    }

    #[test]
    #[should_panic(expected = "5 scores for 2 boxes × 3 classes")]
    fn nms_per_image_rejects_mismatched_scores() {
        nms_per_image(&[0.5; 5], &[[0.0, 0.0, 1.0, 1.0]; 2], 3, &NmsConfig::default());
    }

    /// SplitMix64.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % n
        }

        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len() as u64) as usize]
        }
    }

    /// The obvious O(n²) greedy NMS.
    fn reference_nms(candidates: &[Detection], config: &NmsConfig) -> Vec<Detection> {
        let mut sorted: Vec<Detection> = candidates
            .iter()
            .copied()
            .filter(|d| d.score >= config.score_threshold && d.bbox[2] > d.bbox[0] && d.bbox[3] > d.bbox[1])
            .collect();
        sorted.sort_by(|a, b| b.score.partial_cmp(&a.score).unwrap()); // stable: ties stay in input order
        sorted.truncate(config.pre_nms_top_k);
        let mut kept: Vec<Detection> = Vec::new();
        for d in sorted {
            if kept.len() < config.max_detections
                && !kept.iter().any(|k| {
                    (config.class_agnostic || k.class == d.class) && iou(&k.bbox, &d.bbox) > config.iou_threshold
                })
            {
                kept.push(d);
            }
        }
        kept
    }

    #[test]
    fn matches_the_reference_on_random_cases() {
        let mut rng = Rng(7);
        for case in 0..300 {
            let num_boxes = rng.below(60) as usize;
            let num_classes = 1 + rng.below(3) as usize;
            // Coordinates and scores on coarse grids, so that ties and IoUs exactly at the threshold happen.
            let boxes: Vec<[f32; 4]> = (0..num_boxes)
                .map(|_| {
                    let (x, y) = (rng.below(20) as f32, rng.below(20) as f32);
                    [x, y, x + rng.below(8) as f32, y + rng.below(8) as f32]
                })
                .collect();
            let scores: Vec<f32> = (0..num_boxes * num_classes)
                .map(|_| rng.pick(&[0.0, 0.05, 0.1, 0.25, 0.5, 0.5, 0.75, 0.9, 1.0, -0.5, NAN]))
                .collect();
            let config = NmsConfig {
                iou_threshold: rng.pick(&[0.0, 0.25, 0.5, 0.6, 1.0 / 3.0, 1.0]),
                score_threshold: rng.pick(&[0.0, 0.05, 0.5]),
                max_detections: rng.pick(&[0, 1, 5, 100]),
                class_agnostic: rng.below(2) == 0,
                pre_nms_top_k: rng.pick(&[1, 10, 1000]),
            };
            // For `nms`, each box with its first class's score and a random class.
            let candidates: Vec<Detection> = (0..num_boxes)
                .map(|b| det(boxes[b], scores[b * num_classes], rng.below(num_classes as u64) as usize))
                .collect();
            assert_eq!(nms(&candidates, &config), reference_nms(&candidates, &config), "nms, case {case}: {config:?}");
            let expanded: Vec<Detection> = (0..num_boxes)
                .flat_map(|b| (0..num_classes).map(move |c| (b, c)))
                .map(|(b, c)| det(boxes[b], scores[b * num_classes + c], c))
                .collect();
            assert_eq!(
                nms_per_image(&scores, &boxes, num_classes, &config),
                reference_nms(&expanded, &config),
                "nms_per_image, case {case}: {config:?}"
            );
        }
    }

    /// Larger cases than above, so that classes keep many boxes, with negative and NaN thresholds and class numbers
    /// too large to count.
    #[test]
    fn matches_the_reference_on_large_random_cases() {
        let mut rng = Rng(11);
        for case in 0..60 {
            let num_boxes = rng.below(400) as usize;
            let classes: Vec<usize> = match case % 3 {
                0 => vec![0],
                1 => (0..1 + rng.below(6) as usize).collect(),
                _ => vec![3, usize::MAX, usize::MAX - 1, 1 << 40],
            };
            let candidates: Vec<Detection> = (0..num_boxes)
                .map(|_| {
                    let (x, y) = (rng.below(60) as f32, rng.below(60) as f32);
                    let bbox = [x, y, x + rng.below(12) as f32, y + rng.below(12) as f32];
                    det(bbox, rng.pick(&[0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0, -0.0, NAN]), rng.pick(&classes))
                })
                .collect();
            let config = NmsConfig {
                iou_threshold: rng.pick(&[0.0, 0.3, 0.5, 0.7, 1.0, -0.5, NAN]),
                score_threshold: rng.pick(&[-INF, 0.0, 0.5]),
                max_detections: rng.pick(&[1, 7, 20, 1000]),
                class_agnostic: rng.below(4) == 0,
                pre_nms_top_k: rng.pick(&[5, 100, 1000]),
            };
            assert_eq!(nms(&candidates, &config), reference_nms(&candidates, &config), "case {case}: {config:?}");
        }
    }
}
