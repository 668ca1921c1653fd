//! Non-maximum suppression inside an exported detector's graph, for runtimes that want one graph from image to
//! detections (TensorRT engines, Triton, a browser runtime): ONNX `NonMaxSuppression` between a top-k of the
//! candidates and a fixed number of detections per image, with the batch left dynamic.
//!
//! It computes what kiln-infer's `nms_per_image` computes on the graph's decoded `boxes` `[N, A, 4]` and `scores`
//! `[N, A, C]`, with [`NmsSettings`] fixed at export:
//!
//! 1. every (box, class) pair is a candidate; pairs scoring below `score_threshold` (or NaN) and boxes with
//!    `x2 <= x1` or `y2 <= y1` are masked out;
//! 2. `TopK` keeps the `pre_nms_top_k` best pairs, ties in `[A, C]` row-major order (ONNX's TopK puts the lower
//!    index first), so a candidate's position is its rank;
//! 3. `NonMaxSuppression` suppresses within each class (or, class-agnostic, across all candidates at once) with
//!    IoU strictly above `iou_threshold`, at most `max_detections` per class;
//! 4. the survivors of each image are ordered by rank and the first `max_detections` kept (`TopK` over a dense
//!    `[N, K + M]` matrix of negated ranks), padded to `M = max_detections`.
//!
//! Outputs: `num_detections` `[N]` (int64), `det_boxes` `[N, M, 4]` (xyxy, input pixels), `det_scores` `[N, M]`,
//! `det_classes` `[N, M]` (int64, -1 in padding); rows past `num_detections` are zeros. Everything is computed in
//! float32 (ONNX's NonMaxSuppression takes nothing else). Equal scores within a class are visited in rank order
//! by tract and may be visited in another order by ONNX Runtime; otherwise both forms give the same detections.

use crate::graph::{Attr, Graph, Value};
use crate::metadata::NmsSettings;
use crate::{Error, Result};

/// The graph outputs of [`emit_nms`], in order.
pub const NMS_OUTPUTS: [&str; 4] = ["num_detections", "det_boxes", "det_scores", "det_classes"];

/// The values [`emit_nms`] produces.
pub struct NmsValues {
    /// `[N]` int64.
    pub num_detections: Value,
    /// `[N, M, 4]` float32.
    pub boxes: Value,
    /// `[N, M]` float32.
    pub scores: Value,
    /// `[N, M]` int64.
    pub classes: Value,
}

/// ONNX's data type numbers for Cast's `to`.
const FLOAT: i64 = 1;
const INT64: i64 = 7;
/// The score of a masked-out candidate and of a padding slot: below every real score (scores are in `[0, 1]`).
const MASKED: f32 = -1.0;
/// Far below every negated rank.
const NO_RANK: f32 = -1e9;

/// Appends NMS to `g` on float32 `boxes` `[N, locations, 4]` and `scores` `[N, locations, classes]`.
pub fn emit_nms(
    g: &mut Graph,
    boxes: &Value,
    scores: &Value,
    locations: i64,
    classes: i64,
    settings: &NmsSettings,
) -> Result<NmsValues> {
    if settings.max_detections == 0 || settings.pre_nms_top_k == 0 {
        return Err(Error::Graph("in-graph NMS needs max_detections and pre_nms_top_k of at least 1".into()));
    }
    if locations < 1 || classes < 1 {
        return Err(Error::Graph(format!("in-graph NMS over {locations} boxes and {classes} classes")));
    }
    let top_k_len = (settings.pre_nms_top_k as i64).min(locations * classes);
    let max = settings.max_detections as i64;
    g.scoped("nms", |g| {
        let axis = |g: &mut Graph, a: i64| g.constant_i64("axis", &[a]);
        let slice = |g: &mut Graph, x: &Value, start: i64, end: i64, ax: i64| -> Result<Value> {
            let (s, e, a) = (g.constant_i64("start", &[start])?, g.constant_i64("end", &[end])?, axis(g, ax)?);
            g.op("Slice", &[x, &s, &e, &a], vec![])
        };
        let unsqueeze = |g: &mut Graph, x: &Value, ax: i64| -> Result<Value> {
            let a = axis(g, ax)?;
            g.op("Unsqueeze", &[x, &a], vec![])
        };
        // Values and indices of the `k` largest along axis 1, sorted, lower index first among equals.
        let top_k = |g: &mut Graph, x: &Value, hint: &str, k: i64| -> Result<Vec<Value>> {
            let k = g.constant_i64(hint, &[k])?;
            let attrs = vec![Attr::Int("axis", 1), Attr::Int("largest", 1), Attr::Int("sorted", 1)];
            g.op_multi("TopK", &[x, &k], attrs, 2)
        };
        let reshape = |g: &mut Graph, x: &Value, shape: &[i64]| -> Result<Value> {
            let s = g.constant_i64("shape", shape)?;
            g.op("Reshape", &[x, &s], vec![])
        };

        // 1. Mask: boxes with positive width and height, scores at or above the threshold.
        let low = slice(g, boxes, 0, 2, 2)?;
        let high = slice(g, boxes, 2, 4, 2)?;
        let size = g.op("Sub", &[&high, &low], vec![])?;
        let zero = g.constant_f32("zero", &[], &[0.0])?;
        let width = slice(g, &size, 0, 1, 2)?;
        let height = slice(g, &size, 1, 2, 2)?;
        let wide = g.op("Greater", &[&width, &zero], vec![])?;
        let tall = g.op("Greater", &[&height, &zero], vec![])?;
        let proper = g.op("And", &[&wide, &tall], vec![])?;
        let threshold = g.constant_f32("score_threshold", &[], &[settings.score_threshold])?;
        let passes = g.op("GreaterOrEqual", &[scores, &threshold], vec![])?;
        let keep = g.op("And", &[&passes, &proper], vec![])?;
        let masked = g.constant_f32("masked", &[], &[MASKED])?;
        let candidates = g.op("Where", &[&keep, scores, &masked], vec![])?;

        // 2. The best `top_k` (box, class) pairs of each image, in rank order.
        let flat = reshape(g, &candidates, &[0, -1])?;
        let ranked = top_k(g, &flat, "top_k", top_k_len)?;
        let (rank_scores, pair) = (&ranked[0], &ranked[1]);
        let num_classes = g.constant_i64_shaped("classes", &[], &[classes])?;
        let box_index = g.op("Div", &[pair, &num_classes], vec![])?;
        let class_base = g.op("Mul", &[&box_index, &num_classes], vec![])?;
        let class = g.op("Sub", &[pair, &class_base], vec![])?;
        let gather_at = unsqueeze(g, &box_index, 2)?;
        let four = g.constant_i64("coords", &[1, 1, 4])?;
        let gather_at = g.op("Expand", &[&gather_at, &four], vec![])?;
        let ranked_boxes = g.op("GatherElements", &[boxes, &gather_at], vec![Attr::Int("axis", 1)])?;

        // 3. Suppression, per class or across classes.
        let nms_scores = if settings.class_agnostic {
            unsqueeze(g, rank_scores, 1)?
        } else {
            let class_ids: Vec<i64> = (0..classes).collect();
            let class_ids = g.constant_i64_shaped("class_ids", &[1, classes, 1], &class_ids)?;
            let class_row = unsqueeze(g, &class, 1)?;
            let own = g.op("Equal", &[&class_row, &class_ids], vec![])?;
            let score_row = unsqueeze(g, rank_scores, 1)?;
            g.op("Where", &[&own, &score_row, &masked], vec![])?
        };
        let max_per_class = g.constant_i64("max_per_class", &[max])?;
        let iou = g.constant_f32("iou_threshold", &[1], &[settings.iou_threshold])?;
        let floor = g.constant_f32("score_floor", &[1], &[MASKED / 2.0])?;
        let selected =
            g.op("NonMaxSuppression", &[&ranked_boxes, &nms_scores, &max_per_class, &iou, &floor], vec![])?;
        let selected_image = slice(g, &selected, 0, 1, 1)?;
        let selected_image = reshape(g, &selected_image, &[-1])?;
        let selected_rank = slice(g, &selected, 2, 3, 1)?;
        let selected_rank = reshape(g, &selected_rank, &[-1])?;
        let k_scalar = g.constant_i64_shaped("top_k_scalar", &[], &[top_k_len])?;
        let offset = g.op("Mul", &[&selected_image, &k_scalar], vec![])?;
        let selected_flat = g.op("Add", &[&offset, &selected_rank], vec![])?;

        // 4. Each image's first `max` survivors by rank: padded with `max` slots of no image, so TopK always has
        //    `max` entries to pick from.
        let no_image = g.constant_i64("no_image", &vec![-1; max as usize])?;
        let image_ext = g.op("Concat", &[&selected_image, &no_image], vec![Attr::Int("axis", 0)])?;
        let rank_float = g.op("Cast", &[&selected_rank], vec![Attr::Int("to", FLOAT)])?;
        let key = g.op("Neg", &[&rank_float], vec![])?;
        let zeros = g.constant_f32("pad_keys", &[max], &vec![0.0; max as usize])?;
        let key_ext = g.op("Concat", &[&key, &zeros], vec![Attr::Int("axis", 0)])?;
        let pad_index = g.constant_i64("pad_index", &vec![0; max as usize])?;
        let flat_ext = g.op("Concat", &[&selected_flat, &pad_index], vec![Attr::Int("axis", 0)])?;
        let shape = g.op("Shape", &[boxes], vec![])?;
        let batch = slice(g, &shape, 0, 1, 0)?;
        let batch = reshape(g, &batch, &[])?;
        let (start, step) =
            (g.constant_i64_shaped("range_start", &[], &[0])?, g.constant_i64_shaped("range_step", &[], &[1])?);
        let images = g.op("Range", &[&start, &batch, &step], vec![])?;
        let images = unsqueeze(g, &images, 1)?;
        let image_row = unsqueeze(g, &image_ext, 0)?;
        let mine = g.op("Equal", &[&image_row, &images], vec![])?;
        let key_row = unsqueeze(g, &key_ext, 0)?;
        let no_rank = g.constant_f32("no_rank", &[], &[NO_RANK])?;
        let keys = g.op("Where", &[&mine, &key_row, &no_rank], vec![])?;
        let best = top_k(g, &keys, "max_detections", max)?;
        let half_no_rank = g.constant_f32("valid_above", &[], &[NO_RANK / 2.0])?;
        let valid = g.op("Greater", &[&best[0], &half_no_rank], vec![])?;
        let chosen = g.op("Gather", &[&flat_ext, &best[1]], vec![Attr::Int("axis", 0)])?;

        let flat_scores = reshape(g, rank_scores, &[-1])?;
        let flat_classes = reshape(g, &class, &[-1])?;
        let flat_boxes = reshape(g, &ranked_boxes, &[-1, 4])?;
        let det_scores = g.op("Gather", &[&flat_scores, &chosen], vec![Attr::Int("axis", 0)])?;
        let det_scores = g.op("Where", &[&valid, &det_scores, &zero], vec![])?;
        let det_classes = g.op("Gather", &[&flat_classes, &chosen], vec![Attr::Int("axis", 0)])?;
        let minus_one = g.constant_i64_shaped("no_class", &[], &[-1])?;
        let det_classes = g.op("Where", &[&valid, &det_classes, &minus_one], vec![])?;
        let det_boxes = g.op("Gather", &[&flat_boxes, &chosen], vec![Attr::Int("axis", 0)])?;
        let valid_box = unsqueeze(g, &valid, 2)?;
        let det_boxes = g.op("Where", &[&valid_box, &det_boxes, &zero], vec![])?;
        let count = g.op("Cast", &[&valid], vec![Attr::Int("to", INT64)])?;
        let sum_axis = axis(g, 1)?;
        let num_detections = g.op("ReduceSum", &[&count, &sum_axis], vec![Attr::Int("keepdims", 0)])?;
        Ok(NmsValues { num_detections, boxes: det_boxes, scores: det_scores, classes: det_classes })
    })
}
