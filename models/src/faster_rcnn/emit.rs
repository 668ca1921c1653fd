//! Faster R-CNN's whole inference as one ONNX graph (opset 16 or later, for `RoiAlign`'s coordinate modes), what
//! [`FasterRcnn::detect`] computes in libtorch:
//!
//! 1. the backbone, the pyramid and the RPN head on every level; each level's best `pre_nms_top_n_test` anchors
//!    (`TopK`), decoded and clipped, tiny or low-scoring ones masked;
//! 2. NMS within each level (the levels as the classes of kiln-export's in-graph NMS, ONNX `NonMaxSuppression`),
//!    keeping the image's best `post_nms_top_n_test` proposals, padded to that count;
//! 3. every proposal pooled from P2–P5 by `RoiAlign` on every level, the level the box maps to selected by a mask
//!    (so the graph has no data-dependent shapes), the two-FC head, softmax scores and per-class boxes; padding
//!    and tiny boxes score 0;
//! 4. each image's best `candidates` (box, class) pairs as `boxes` `[N, M, 4]` and one-hot `scores` `[N, M, C]`,
//!    FCOS's output form.
//!
//! The batch stays dynamic.

use kiln_export::{emit_nms, Attr, Graph, NmsSettings, Value};

use super::box_coder::BoxCoder;
use super::FasterRcnn;
use crate::onnx::{self, join};
use crate::Result;

/// ONNX's data type number for Cast's `to` (float32).
const FLOAT: i64 = 1;

/// Small graph helpers over constant-shaped operations.
struct Ops<'g> {
    g: &'g mut Graph,
}

impl Ops<'_> {
    fn i64s(&mut self, hint: &str, values: &[i64]) -> Result<Value> {
        Ok(self.g.constant_i64(hint, values)?)
    }
    fn scalar(&mut self, hint: &str, v: f32) -> Result<Value> {
        Ok(self.g.constant_f32(hint, &[], &[v])?)
    }
    fn op(&mut self, op: &str, inputs: &[&Value], attrs: Vec<Attr>) -> Result<Value> {
        Ok(self.g.op(op, inputs, attrs)?)
    }
    fn reshape(&mut self, x: &Value, shape: &[i64]) -> Result<Value> {
        let s = self.i64s("shape", shape)?;
        self.op("Reshape", &[x, &s], vec![])
    }
    fn slice(&mut self, x: &Value, start: i64, end: i64, axis: i64) -> Result<Value> {
        let (s, e, a) = (self.i64s("start", &[start])?, self.i64s("end", &[end])?, self.i64s("axis", &[axis])?);
        self.op("Slice", &[x, &s, &e, &a], vec![])
    }
    fn unsqueeze(&mut self, x: &Value, axis: i64) -> Result<Value> {
        let a = self.i64s("axis", &[axis])?;
        self.op("Unsqueeze", &[x, &a], vec![])
    }
    fn top_k(&mut self, x: &Value, k: i64) -> Result<(Value, Value)> {
        let k = self.i64s("k", &[k])?;
        let attrs = vec![Attr::Int("axis", 1), Attr::Int("largest", 1), Attr::Int("sorted", 1)];
        let mut out = self.g.op_multi("TopK", &[x, &k], attrs, 2)?;
        let index = out.pop().expect("two outputs");
        Ok((out.pop().expect("two outputs"), index))
    }
    /// `x` `[N, A, 4]` at `index` `[N, K]` along axis 1.
    fn gather_rows(&mut self, x: &Value, index: &Value) -> Result<Value> {
        let at = self.unsqueeze(index, 2)?;
        let four = self.i64s("coords", &[1, 1, 4])?;
        let at = self.op("Expand", &[&at, &four], vec![])?;
        self.op("GatherElements", &[x, &at], vec![Attr::Int("axis", 1)])
    }
    /// Boxes `[..., 4]` clipped to the `height × width` image.
    fn clip(&mut self, boxes: &Value, height: i64, width: i64) -> Result<Value> {
        let zero = self.scalar("zero", 0.0)?;
        let low = self.op("Max", &[boxes, &zero], vec![])?;
        let (h, w) = (height as f32, width as f32);
        let limit = self.g.constant_f32("image_limit", &[4], &[w, h, w, h])?;
        self.op("Min", &[&low, &limit], vec![])
    }
    /// `[...]` bool: boxes `[..., 4]` at least `min_size` wide and high.
    fn large_enough(&mut self, boxes: &Value, min_size: f64) -> Result<Value> {
        let axis = -1;
        let (x1, y1) = (self.slice(boxes, 0, 1, axis)?, self.slice(boxes, 1, 2, axis)?);
        let (x2, y2) = (self.slice(boxes, 2, 3, axis)?, self.slice(boxes, 3, 4, axis)?);
        let w = self.op("Sub", &[&x2, &x1], vec![])?;
        let h = self.op("Sub", &[&y2, &y1], vec![])?;
        let min = self.scalar("min_size", min_size as f32)?;
        let wide = self.op("GreaterOrEqual", &[&w, &min], vec![])?;
        let tall = self.op("GreaterOrEqual", &[&h, &min], vec![])?;
        let both = self.op("And", &[&wide, &tall], vec![])?;
        let last = self.i64s("axis", &[-1])?;
        self.op("Squeeze", &[&both, &last], vec![])
    }
}

impl FasterRcnn {
    /// Appends the inference graph for a fixed `height × width` input to `g`: `images` `[N, 3, H, W]` → (boxes
    /// `[N, M, 4]`, scores `[N, M, C]`) with `M = `[`FasterRcnn::num_candidates`], what [`FasterRcnn::detect`]
    /// returns.
    pub fn emit(&self, g: &mut Graph, images: &Value, height: i64, width: i64) -> Result<(Value, Value)> {
        self.check_input_size(height, width)?;
        let features = self.backbone.emit_features(g, images)?;
        let pyramid = self.fpn.emit(g, &features)?;
        let (boxes, valid) = g.scoped("rpn", |g| self.emit_proposals(g, &pyramid, height, width))?;
        g.scoped("roi_heads", |g| self.emit_detections(g, &pyramid[..4], &boxes, &valid, height, width))
    }

    /// `M`, the (box, class) pairs per image that [`FasterRcnn::detect`] and [`FasterRcnn::emit`] output.
    pub fn num_candidates(&self) -> i64 {
        (self.config.rpn.post_nms_top_n_test * self.config.num_classes).min(self.config.roi_heads.candidates)
    }

    /// The proposals `[N, P, 4]` of the graph (P = `post_nms_top_n_test`, padded) and `[N, P]` bool: which are real.
    fn emit_proposals(&self, g: &mut Graph, pyramid: &[Value], height: i64, width: i64) -> Result<(Value, Value)> {
        let settings = &self.rpn.settings;
        let (conv, cls_logits, bbox_pred) = self.rpn.convs();
        let name = &self.rpn.name;
        let conv_p = onnx::conv_params(g, &join(name, "conv.0.0"), conv)?;
        let cls_p = onnx::conv_params(g, &join(name, "cls_logits"), cls_logits)?;
        let box_p = onnx::conv_params(g, &join(name, "bbox_pred"), bbox_pred)?;
        let a = self.rpn.anchors_per_cell;
        let sizes = self.level_sizes(height, width);
        let anchors = self.anchors(height, width);
        let (mut level_boxes, mut level_scores, mut level_of) = (Vec::new(), Vec::new(), Vec::new());
        let mut offset = 0;
        for (level, (x, &(h, w))) in pyramid.iter().zip(&sizes).enumerate() {
            let scope = format!("{name}.level{level}");
            let t = onnx::conv_apply(g, &scope, &conv_p, 1, 1, 1, x)?;
            let t = g.op("Relu", &[&t], vec![])?;
            let logits = onnx::conv_apply(g, &scope, &cls_p, 1, 0, 1, &t)?;
            let deltas = onnx::conv_apply(g, &scope, &box_p, 1, 0, 1, &t)?;
            let mut o = Ops { g };
            let perm = Attr::Ints("perm", vec![0, 3, 4, 1, 2]);
            let logits = o.reshape(&logits, &[0, a, 1, h, w])?;
            let logits = o.op("Transpose", &[&logits], vec![perm.clone()])?;
            let logits = o.reshape(&logits, &[0, -1])?;
            let deltas = o.reshape(&deltas, &[0, a, 4, h, w])?;
            let deltas = o.op("Transpose", &[&deltas], vec![perm])?;
            let deltas = o.reshape(&deltas, &[0, -1, 4])?;
            let count = h * w * a;
            let k = settings.pre_nms_top_n_test.min(count);
            let (best, index) = o.top_k(&logits, k)?;
            let picked_deltas = o.gather_rows(&deltas, &index)?;
            let level_anchors: Vec<f32> =
                Vec::try_from(anchors.narrow(0, offset, count).flatten(0, -1)).expect("float anchors");
            let level_anchors = o.g.constant_f32("anchors", &[count, 4], &level_anchors)?;
            let picked_anchors = o.op("Gather", &[&level_anchors, &index], vec![Attr::Int("axis", 0)])?;
            let decoded = BoxCoder::RPN.emit_decode(o.g, &picked_deltas, &picked_anchors)?;
            level_boxes.push(decoded);
            level_scores.push(o.op("Sigmoid", &[&best], vec![])?);
            level_of.extend(std::iter::repeat_n(level, k as usize));
            offset += count;
        }
        let mut o = Ops { g };
        let boxes = o.op("Concat", &level_boxes.iter().collect::<Vec<_>>(), vec![Attr::Int("axis", 1)])?;
        let boxes = o.clip(&boxes, height, width)?;
        let scores = o.op("Concat", &level_scores.iter().collect::<Vec<_>>(), vec![Attr::Int("axis", 1)])?;
        let large = o.large_enough(&boxes, settings.min_size)?;
        let threshold = o.scalar("score_thresh", settings.score_thresh as f32)?;
        let passes = o.op("GreaterOrEqual", &[&scores, &threshold], vec![])?;
        let keep = o.op("And", &[&large, &passes], vec![])?;
        // Levels as NMS classes: a candidate scores its level's column, -1 (masked) elsewhere.
        let levels = pyramid.len();
        let total = level_of.len() as i64;
        let one_hot: Vec<i64> = level_of.iter().flat_map(|&l| (0..levels).map(move |c| i64::from(c == l))).collect();
        let one_hot = o.g.constant_i64_shaped("level_one_hot", &[1, total, levels as i64], &one_hot)?;
        let zero = o.g.constant_i64_shaped("zero_i64", &[], &[0])?;
        let own = o.op("Greater", &[&one_hot, &zero], vec![])?;
        let keep = o.unsqueeze(&keep, 2)?;
        let own = o.op("And", &[&own, &keep], vec![])?;
        let score_column = o.unsqueeze(&scores, 2)?;
        let masked = o.scalar("masked", -1.0)?;
        let per_level = o.op("Where", &[&own, &score_column, &masked], vec![])?;
        let nms = NmsSettings {
            iou_threshold: settings.nms_thresh as f32,
            score_threshold: settings.score_thresh as f32,
            max_detections: settings.post_nms_top_n_test as usize,
            class_agnostic: false,
            pre_nms_top_k: total as usize,
            in_graph: true,
        };
        let kept = emit_nms(g, &boxes, &per_level, total, levels as i64, &nms)?;
        let mut o = Ops { g };
        let slots: Vec<i64> = (0..settings.post_nms_top_n_test).collect();
        let slots = o.g.constant_i64_shaped("slots", &[1, settings.post_nms_top_n_test], &slots)?;
        let counts = o.unsqueeze(&kept.num_detections, 1)?;
        let valid = o.op("Less", &[&slots, &counts], vec![])?;
        Ok((kept.boxes, valid))
    }

    /// Boxes `[N, M, 4]` and one-hot scores `[N, M, C]` of the proposals `[N, P, 4]` (`valid` `[N, P]`).
    fn emit_detections(
        &self,
        g: &mut Graph,
        levels: &[Value],
        proposals: &Value,
        valid: &Value,
        height: i64,
        width: i64,
    ) -> Result<(Value, Value)> {
        let heads = &self.roi_heads;
        let c = heads.num_classes;
        let p = self.config.rpn.post_nms_top_n_test;
        let mut o = Ops { g };
        let rois = o.reshape(proposals, &[-1, 4])?;
        let shape = o.op("Shape", &[valid], vec![])?;
        let batch = o.slice(&shape, 0, 1, 0)?;
        let batch = o.reshape(&batch, &[])?;
        let (start, step) = (o.g.constant_i64_shaped("start", &[], &[0])?, o.g.constant_i64_shaped("step", &[], &[1])?);
        let images = o.op("Range", &[&start, &batch, &step], vec![])?;
        let images = o.unsqueeze(&images, 1)?;
        let images = o.op("Expand", &[&images, &shape], vec![])?;
        let batch_indices = o.reshape(&images, &[-1])?;
        // torchvision's level mapper: ⌊4 + log2(√area / 224) + 1e-6⌋ clamped to P2–P5.
        let (x1, y1) = (o.slice(&rois, 0, 1, 1)?, o.slice(&rois, 1, 2, 1)?);
        let (x2, y2) = (o.slice(&rois, 2, 3, 1)?, o.slice(&rois, 3, 4, 1)?);
        let w = o.op("Sub", &[&x2, &x1], vec![])?;
        let h = o.op("Sub", &[&y2, &y1], vec![])?;
        let area = o.op("Mul", &[&w, &h], vec![])?;
        let side = o.op("Sqrt", &[&area], vec![])?;
        let canonical = o.scalar("canonical_scale", 224.0)?;
        let ratio = o.op("Div", &[&side, &canonical], vec![])?;
        let log = o.op("Log", &[&ratio], vec![])?;
        let inv_ln2 = o.scalar("inv_ln2", std::f32::consts::LOG2_E)?;
        let log2 = o.op("Mul", &[&log, &inv_ln2], vec![])?;
        let shift = o.scalar("level_shift", (4.0 + 1e-6) as f32)?;
        let level = o.op("Add", &[&log2, &shift], vec![])?;
        let level = o.op("Floor", &[&level], vec![])?;
        let strides = heads.pool.strides.clone();
        let log2_of = |s: i64| (s as f64).log2().round() as f32;
        let (k_min, k_max) = (log2_of(strides[0]), log2_of(strides[strides.len() - 1]));
        let (low, high) = (o.scalar("k_min", k_min)?, o.scalar("k_max", k_max)?);
        let level = o.op("Clip", &[&level, &low, &high], vec![])?;
        let level = o.reshape(&level, &[-1, 1, 1, 1])?;
        let mut pooled: Option<Value> = None;
        for (map, &stride) in levels.iter().zip(&strides) {
            let this = o.scalar("level", log2_of(stride))?;
            let mask = o.op("Equal", &[&level, &this], vec![])?;
            let mask = o.op("Cast", &[&mask], vec![Attr::Int("to", FLOAT)])?;
            let part = heads.pool.align.emit(o.g, map, &rois, &batch_indices, 1.0 / stride as f64)?;
            let part = o.op("Mul", &[&part, &mask], vec![])?;
            pooled = Some(match pooled {
                Some(sum) => o.op("Add", &[&sum, &part], vec![])?,
                None => part,
            });
        }
        let pooled = pooled.expect("at least one pooled level");
        let flat = o.op("Flatten", &[&pooled], vec![Attr::Int("axis", 1)])?;
        let x = onnx::linear(o.g, "roi_heads.box_head.fc6", &heads.fc6, &flat)?;
        let x = o.op("Relu", &[&x], vec![])?;
        let x = onnx::linear(o.g, "roi_heads.box_head.fc7", &heads.fc7, &x)?;
        let x = o.op("Relu", &[&x], vec![])?;
        let logits = onnx::linear(o.g, "roi_heads.box_predictor.cls_score", &heads.cls_score, &x)?;
        let deltas = onnx::linear(o.g, "roi_heads.box_predictor.bbox_pred", &heads.bbox_pred, &x)?;
        let scores = o.op("Softmax", &[&logits], vec![Attr::Int("axis", -1)])?;
        let scores = o.slice(&scores, 1, c + 1, 1)?; // [R, C]
        let deltas = o.reshape(&deltas, &[-1, c + 1, 4])?;
        let references = o.unsqueeze(&rois, 1)?;
        let boxes = BoxCoder::ROI_HEADS.emit_decode(o.g, &deltas, &references)?;
        let boxes = o.clip(&boxes, height, width)?;
        let boxes = o.slice(&boxes, 1, c + 1, 1)?; // [R, C, 4]
        let large = o.large_enough(&boxes, heads.settings.min_size)?; // [R, C]
        let real = o.reshape(valid, &[-1, 1])?;
        let counts = o.op("And", &[&large, &real], vec![])?;
        let counts = o.op("Cast", &[&counts], vec![Attr::Int("to", FLOAT)])?;
        let scores = o.op("Mul", &[&scores, &counts], vec![])?;
        // Each image's best (proposal, class) pairs.
        let flat_scores = o.reshape(&scores, &[-1, p * c])?;
        let flat_boxes = o.reshape(&boxes, &[-1, p * c, 4])?;
        let (best, index) = o.top_k(&flat_scores, self.num_candidates())?;
        let chosen = o.gather_rows(&flat_boxes, &index)?;
        let classes = o.g.constant_i64_shaped("classes", &[], &[c])?;
        let class = o.op("Mod", &[&index, &classes], vec![])?;
        let class = o.unsqueeze(&class, 2)?;
        let ids: Vec<i64> = (0..c).collect();
        let ids = o.g.constant_i64_shaped("class_ids", &[1, 1, c], &ids)?;
        let one_hot = o.op("Equal", &[&class, &ids], vec![])?;
        let one_hot = o.op("Cast", &[&one_hot], vec![Attr::Int("to", FLOAT)])?;
        let best = o.unsqueeze(&best, 2)?;
        let scores = o.op("Mul", &[&one_hot, &best], vec![])?;
        Ok((chosen, scores))
    }
}
