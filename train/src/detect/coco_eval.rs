//! COCO bounding-box evaluation, reproducing pycocotools' `COCOeval` with `iouType='bbox'`.
//!
//! This is an independent implementation of the behaviour of `COCOeval.evaluate()`,
//! `accumulate()` and `summarize()`; for default parameters it agrees with pycocotools to the
//! last bit on the parity fixture (`tests/fixtures/coco_eval`, made by
//! `scripts/make_coco_eval_fixture.py`). Self-contained: depends on `std` and `serde` only.
//!
//! # Usage
//!
//! ```
//! use kiln_train::detect::coco_eval::{evaluate, CocoParams, GroundTruth, Prediction};
//!
//! let gts = [GroundTruth { image: 1, category: 7, bbox_xywh: [0.0, 0.0, 40.0, 40.0], area: 1600.0, iscrowd: false }];
//! let preds = [Prediction { image: 1, category: 7, bbox_xywh: [2.0, 0.0, 40.0, 40.0], score: 0.9 }];
//! let eval = evaluate(&[1], &[7], &gts, &preds, &CocoParams::default());
//! let stats = eval.stats(); // stats.map, stats.map_50, ..., stats.per_category_ap
//! assert!(stats.map_50 > 0.99 && stats.map < stats.map_50); // IoU 0.905: a hit up to the 0.9 threshold
//! let curve = eval.pr_curve(7, 0); // PR curve at IoU 0.5, area all, maxDets 100
//! assert_eq!(curve.len(), 101);
//! ```
//!
//! # Semantics (all as pycocotools)
//!
//! * The evaluated images and categories are the given id lists (sorted, duplicates removed).
//!   Ground truth and predictions whose image or category is not listed are skipped.
//! * Work is done per (image, category) cell. Predictions of a cell are sorted by descending
//!   score with a stable sort (ties keep input order; NaN scores last) and cut to the largest
//!   `max_dets`. Matching is done once with those; the smaller `max_dets` only truncate.
//! * A ground truth is ignored for an area range when it is crowd or its annotated `area` lies
//!   outside the (inclusive) range; ignored ground truth is moved behind the others (stably).
//! * IoU is computed on the boxes (`x, y, w, h`); against a crowd box the union is the
//!   prediction's box area. Each prediction, in score order, takes the ground truth with the
//!   highest IoU ≥ `min(threshold, 1 - 1e-10)` (later ground truth wins exact ties) that is
//!   not yet matched (crowd boxes can be matched any number of times); once it holds a
//!   non-ignored match it stops at the first ignored one. A prediction matched to ignored
//!   ground truth, or unmatched with a box area (`w * h`) outside the area range, is ignored.
//! * Per category, area range and `max_dets`, the cells' predictions are concatenated in image
//!   order and stably sorted by descending score; precision is made monotone from the right
//!   and read at the recall thresholds (first point with recall ≥ threshold; 0 past the end).
//!   Recall is `tp / (number of non-ignored ground truth)`. Where there is no non-ignored
//!   ground truth (or no cell at all) precision and recall are -1.
//! * A summary number is the mean of the selected entries that are > -1, or -1 if none are.
//!   Means are summed in numpy's pairwise order, so results match numpy bit for bit.
//!
//! Differences from pycocotools, none of which matter for the default parameters: there are
//! no annotation ids (pycocotools silently treats a ground truth with id 0 as unmatched), and
//! `map` uses the largest `max_dets` (pycocotools looks for `maxDets == 100`).

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::HashMap;

/// One ground-truth box. `bbox_xywh` is COCO's `[x, y, width, height]`; `area` is the
/// annotation's `area` field (used as given, e.g. the segmentation area), which decides the
/// small/medium/large split. Boxes are expected finite with non-negative sizes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    pub image: u64,
    pub category: u64,
    pub bbox_xywh: [f64; 4],
    pub area: f64,
    pub iscrowd: bool,
}

/// One predicted box, COCO results style: `[x, y, width, height]` plus a confidence score.
/// Its area for the area ranges is `width * height` (as pycocotools' `loadRes`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub image: u64,
    pub category: u64,
    pub bbox_xywh: [f64; 4],
    pub score: f64,
}

impl GroundTruth {
    /// A box given by its corners `[x1, y1, x2, y2]` in pixels (its area the box's).
    pub fn from_corners(image: u64, category: usize, corners: [f32; 4], iscrowd: bool) -> Self {
        let [x1, y1, x2, y2] = corners.map(f64::from);
        Self {
            image,
            category: category as u64,
            bbox_xywh: [x1, y1, x2 - x1, y2 - y1],
            area: (x2 - x1) * (y2 - y1),
            iscrowd,
        }
    }
}

impl Prediction {
    /// A detection given by its corners `[x1, y1, x2, y2]` in pixels.
    pub fn from_corners(image: u64, category: usize, corners: [f32; 4], score: f32) -> Self {
        let [x1, y1, x2, y2] = corners.map(f64::from);
        Self { image, category: category as u64, bbox_xywh: [x1, y1, x2 - x1, y2 - y1], score: f64::from(score) }
    }
}

/// Labels of [`CocoParams::area_ranges`], in order.
pub const AREA_LABELS: [&str; 4] = ["all", "small", "medium", "large"];

/// Evaluation parameters; [`Default`] gives COCO's (and pycocotools') defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CocoParams {
    /// IoU thresholds, default `linspace(0.5, 0.95, 10)`. `map_50` / `map_75` look for
    /// entries exactly equal to 0.5 / 0.75 (-1 if absent).
    pub iou_thresholds: Vec<f64>,
    /// Recall thresholds (ascending), default `linspace(0, 1, 101)`.
    pub recall_thresholds: Vec<f64>,
    /// Maximum detections per image and category; sorted before use. Default `[1, 10, 100]`.
    pub max_dets: [usize; 3],
    /// Inclusive `(min, max)` annotated-area ranges for all, small, medium, large.
    pub area_ranges: [(f64, f64); 4],
}

impl Default for CocoParams {
    fn default() -> Self {
        CocoParams {
            iou_thresholds: linspace(0.5, 0.95, 10),
            recall_thresholds: linspace(0.0, 1.0, 101),
            max_dets: [1, 10, 100],
            area_ranges: [(0.0, 1e10), (0.0, 1024.0), (1024.0, 9216.0), (9216.0, 1e10)],
        }
    }
}

/// `numpy.linspace(start, stop, num)` (endpoint included), bit for bit: `start + i * step`
/// with `step = (stop - start) / (num - 1)`, and the last point set to `stop`.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let div = (num - 1) as f64;
            let delta = stop - start;
            let step = delta / div;
            let mut v: Vec<f64> = (0..num)
                .map(|i| if step == 0.0 { i as f64 / div * delta + start } else { i as f64 * step + start })
                .collect();
            v[num - 1] = stop;
            v
        }
    }
}

/// AP@[.5:.95] (area all, largest `max_dets`) of one category; -1 if it has no non-ignored
/// ground truth.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategoryAp {
    pub category: u64,
    pub ap: f64,
}

/// The 12 numbers of `COCOeval.stats`, in that order, plus per-category AP. A value of -1
/// means "nothing to average" (e.g. `map_large` without any large ground truth).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CocoStats {
    /// AP @ IoU 0.50:0.95, area all, maxDets 100.
    pub map: f64,
    pub map_50: f64,
    pub map_75: f64,
    pub map_small: f64,
    pub map_medium: f64,
    pub map_large: f64,
    /// AR @ IoU 0.50:0.95, area all, maxDets 1 / 10 / 100.
    pub mar_1: f64,
    pub mar_10: f64,
    pub mar_100: f64,
    pub mar_small: f64,
    pub mar_medium: f64,
    pub mar_large: f64,
    /// One entry per evaluated category, ascending id, including those at -1.
    pub per_category_ap: Vec<CategoryAp>,
}

impl CocoStats {
    /// Names of [`CocoStats::values`], matching the field names.
    pub const NAMES: [&'static str; 12] = [
        "map",
        "map_50",
        "map_75",
        "map_small",
        "map_medium",
        "map_large",
        "mar_1",
        "mar_10",
        "mar_100",
        "mar_small",
        "mar_medium",
        "mar_large",
    ];

    /// The 12 summary numbers in `COCOeval.stats` order.
    pub fn values(&self) -> [f64; 12] {
        [
            self.map,
            self.map_50,
            self.map_75,
            self.map_small,
            self.map_medium,
            self.map_large,
            self.mar_1,
            self.mar_10,
            self.mar_100,
            self.mar_small,
            self.mar_medium,
            self.mar_large,
        ]
    }

    fn from_values(v: [f64; 12], per_category_ap: Vec<CategoryAp>) -> Self {
        CocoStats {
            map: v[0],
            map_50: v[1],
            map_75: v[2],
            map_small: v[3],
            map_medium: v[4],
            map_large: v[5],
            mar_1: v[6],
            mar_10: v[7],
            mar_100: v[8],
            mar_small: v[9],
            mar_medium: v[10],
            mar_large: v[11],
            per_category_ap,
        }
    }
}

/// Result of [`evaluate`]: the summary plus pycocotools' accumulated arrays
/// (`eval['precision']`, `eval['recall']`, `eval['scores']`).
///
/// Indices: `t` into `params().iou_thresholds`, `r` into `recall_thresholds`, `k` into
/// [`CocoEvaluation::categories`], `a` into [`AREA_LABELS`], `m` into the (sorted)
/// `params().max_dets`.
#[derive(Clone, Debug)]
pub struct CocoEvaluation {
    params: CocoParams,
    categories: Vec<u64>,
    /// `[T][R][K][A][M]`, row-major like numpy.
    precision: Vec<f64>,
    /// `[T][K][A][M]`.
    recall: Vec<f64>,
    /// `[T][R][K][A][M]`: score of the detection where each recall threshold is reached.
    scores: Vec<f64>,
    stats: CocoStats,
}

impl CocoEvaluation {
    /// The summary numbers.
    pub fn stats(&self) -> &CocoStats {
        &self.stats
    }

    pub fn into_stats(self) -> CocoStats {
        self.stats
    }

    /// Parameters used (with `max_dets` sorted).
    pub fn params(&self) -> &CocoParams {
        &self.params
    }

    /// Evaluated category ids, ascending; position = index `k`.
    pub fn categories(&self) -> &[u64] {
        &self.categories
    }

    /// `(T, R, K, A, M)`.
    pub fn dims(&self) -> (usize, usize, usize, usize, usize) {
        let p = &self.params;
        (p.iou_thresholds.len(), p.recall_thresholds.len(), self.categories.len(), 4, 3)
    }

    fn prk_index(&self, t: usize, r: usize, k: usize, a: usize, m: usize) -> usize {
        let (_, nr, nk, _, _) = self.dims();
        (((t * nr + r) * nk + k) * 4 + a) * 3 + m
    }

    /// Interpolated precision at recall threshold `r` (-1: no ground truth). Panics when an
    /// index is out of range.
    pub fn precision(&self, t: usize, r: usize, k: usize, a: usize, m: usize) -> f64 {
        self.precision[self.prk_index(t, r, k, a, m)]
    }

    /// Score of the detection at which recall threshold `r` is reached (0 if never, -1 if
    /// there is no ground truth).
    pub fn score(&self, t: usize, r: usize, k: usize, a: usize, m: usize) -> f64 {
        self.scores[self.prk_index(t, r, k, a, m)]
    }

    /// Final recall (-1: no ground truth).
    pub fn recall(&self, t: usize, k: usize, a: usize, m: usize) -> f64 {
        let (_, _, nk, _, _) = self.dims();
        self.recall[((t * nk + k) * 4 + a) * 3 + m]
    }

    /// Position of a category id in [`CocoEvaluation::categories`].
    pub fn category_index(&self, category: u64) -> Option<usize> {
        self.categories.binary_search(&category).ok()
    }

    /// Interpolated precision-recall curve of one category at IoU threshold `iou_index`, area
    /// all, largest `max_dets`: one `(recall threshold, precision)` point per recall threshold.
    /// Empty for an unknown category or index, or a category without ground truth.
    pub fn pr_curve(&self, category: u64, iou_index: usize) -> Vec<(f64, f64)> {
        let Some(k) = self.category_index(category) else { return Vec::new() };
        if iou_index >= self.params.iou_thresholds.len() || self.precision(iou_index, 0, k, 0, 2) < 0.0 {
            return Vec::new();
        }
        let rec = &self.params.recall_thresholds;
        rec.iter().enumerate().map(|(r, &x)| (x, self.precision(iou_index, r, k, 0, 2))).collect()
    }
}

/// Outcome of one detection at one IoU threshold.
const FP: u8 = 0;
const TP: u8 = 1;
const IGNORED: u8 = 2;

/// Descending score, NaN last: the order of numpy's `argsort(-score)`.
fn by_score_desc(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (false, false) => b.partial_cmp(&a).unwrap_or(Ordering::Equal),
        (false, true) => Ordering::Less,
        (true, false) => Ordering::Greater,
        (true, true) => Ordering::Equal,
    }
}

/// pycocotools' `maskUtils.iou` for boxes (same operations in the same order).
fn box_iou(d: &[f64; 4], g: &[f64; 4], crowd: bool) -> f64 {
    let w = (d[2] + d[0]).min(g[2] + g[0]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[3] + d[1]).min(g[3] + g[1]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let inter = w * h;
    let da = d[2] * d[3];
    let union = if crowd { da } else { da + g[2] * g[3] - inter };
    inter / union
}

/// numpy's pairwise summation (`np.add.reduce` on a contiguous float64 array).
fn pairwise_sum(x: &[f64]) -> f64 {
    let n = x.len();
    if n < 8 {
        x.iter().fold(0.0, |acc, &v| acc + v)
    } else if n <= 128 {
        let mut r = [0.0; 8];
        r.copy_from_slice(&x[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for (j, rj) in r.iter_mut().enumerate() {
                *rj += x[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &x[i..] {
            res += v;
        }
        res
    } else {
        let n2 = n / 2;
        let n2 = n2 - n2 % 8;
        pairwise_sum(&x[..n2]) + pairwise_sum(&x[n2..])
    }
}

/// `summarize()`'s average: mean of the entries > -1 (numpy order), or -1 if there are none.
fn mean_valid(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.filter(|&x| x > -1.0).collect();
    if v.is_empty() {
        -1.0
    } else {
        pairwise_sum(&v) / v.len() as f64
    }
}

fn sorted_unique(ids: &[u64]) -> Vec<u64> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// A run of items of one (category index, image index) cell: key, start, end.
type CellRange = ((usize, usize), usize, usize);

/// Indices of `items` grouped by (category index, image index): returns the sorted cell keys
/// with their index ranges into the returned (stably sorted) index list. Items whose image or
/// category is not evaluated are dropped.
fn group_cells<T>(
    items: &[T],
    key: impl Fn(&T) -> (u64, u64),
    cat_index: &HashMap<u64, usize>,
    img_index: &HashMap<u64, usize>,
) -> (Vec<CellRange>, Vec<usize>) {
    let mut keyed: Vec<((usize, usize), usize)> = items
        .iter()
        .enumerate()
        .filter_map(|(i, it)| {
            let (cat, img) = key(it);
            Some(((*cat_index.get(&cat)?, *img_index.get(&img)?), i))
        })
        .collect();
    keyed.sort_by_key(|&(k, _)| k); // stable: input order within a cell
    let mut cells = Vec::new();
    let mut start = 0;
    for i in 1..=keyed.len() {
        if i == keyed.len() || keyed[i].0 != keyed[start].0 {
            cells.push((keyed[start].0, start, i));
            start = i;
        }
    }
    (cells, keyed.into_iter().map(|(_, i)| i).collect())
}

/// Per-category accumulation input: every kept detection of every cell (image order, then
/// score order within the cell) with its outcome per area range and IoU threshold.
#[derive(Default)]
struct CategoryMatches {
    scores: Vec<f64>,
    /// Position of the detection within its cell's score order (for `max_dets`).
    ranks: Vec<usize>,
    /// Per area range: `outcome[a][det * T + t]`.
    outcome: [Vec<u8>; 4],
    /// Per area range: number of non-ignored ground truth.
    npig: [usize; 4],
    /// Number of (image, category) cells with any ground truth or detection.
    cells: usize,
}

/// Matches the detections of one (image, category) cell for every area range and threshold.
fn match_cell(gts: &[&GroundTruth], dts: &[&Prediction], params: &CocoParams, acc: &mut CategoryMatches) {
    let nt = params.iou_thresholds.len();
    let (ng, nd) = (gts.len(), dts.len());
    let ious: Vec<f64> =
        dts.iter().flat_map(|d| gts.iter().map(|g| box_iou(&d.bbox_xywh, &g.bbox_xywh, g.iscrowd))).collect();
    acc.cells += 1;
    acc.scores.extend(dts.iter().map(|d| d.score));
    acc.ranks.extend(0..nd);
    let mut gt_ignored = vec![false; ng];
    let mut order: Vec<usize> = Vec::with_capacity(ng);
    let mut taken = vec![false; ng];
    for (a, &(lo, hi)) in params.area_ranges.iter().enumerate() {
        for (ig, g) in gt_ignored.iter_mut().zip(gts) {
            *ig = g.iscrowd || g.area < lo || g.area > hi;
        }
        order.clear();
        order.extend((0..ng).filter(|&g| !gt_ignored[g]));
        acc.npig[a] += order.len();
        order.extend((0..ng).filter(|&g| gt_ignored[g]));
        let base = acc.outcome[a].len();
        acc.outcome[a].resize(base + nd * nt, FP);
        for (t, &thr) in params.iou_thresholds.iter().enumerate() {
            taken.iter_mut().for_each(|x| *x = false);
            for (di, d) in dts.iter().enumerate() {
                let mut best_iou = thr.min(1.0 - 1e-10);
                let mut best: Option<usize> = None; // position in `order`
                for (pos, &g) in order.iter().enumerate() {
                    if taken[pos] && !gts[g].iscrowd {
                        continue;
                    }
                    if best.is_some_and(|b| !gt_ignored[order[b]]) && gt_ignored[g] {
                        break;
                    }
                    let iou = ious[di * ng + g];
                    if iou < best_iou {
                        continue;
                    }
                    best_iou = iou;
                    best = Some(pos);
                }
                let outcome = match best {
                    Some(pos) => {
                        taken[pos] = true;
                        if gt_ignored[order[pos]] {
                            IGNORED
                        } else {
                            TP
                        }
                    }
                    None => {
                        let area = d.bbox_xywh[2] * d.bbox_xywh[3];
                        if area < lo || area > hi {
                            IGNORED
                        } else {
                            FP
                        }
                    }
                };
                acc.outcome[a][base + di * nt + t] = outcome;
            }
        }
    }
}

/// Output arrays being filled by [`accumulate_category`].
struct Arrays {
    nt: usize,
    nr: usize,
    nk: usize,
    precision: Vec<f64>,
    recall: Vec<f64>,
    scores: Vec<f64>,
}

impl Arrays {
    fn prk(&self, t: usize, r: usize, k: usize, a: usize, m: usize) -> usize {
        (((t * self.nr + r) * self.nk + k) * 4 + a) * 3 + m
    }
}

/// `accumulate()` for category `k`.
fn accumulate_category(k: usize, acc: &CategoryMatches, params: &CocoParams, out: &mut Arrays) {
    if acc.cells == 0 {
        return;
    }
    let nt = out.nt;
    let mut rc = Vec::new();
    let mut pr = Vec::new();
    for (m, &max_det) in params.max_dets.iter().enumerate() {
        let mut sel: Vec<usize> = (0..acc.scores.len()).filter(|&i| acc.ranks[i] < max_det).collect();
        sel.sort_by(|&i, &j| by_score_desc(acc.scores[i], acc.scores[j]));
        let nd = sel.len();
        for a in 0..4 {
            let npig = acc.npig[a];
            if npig == 0 {
                continue;
            }
            for t in 0..nt {
                rc.clear();
                pr.clear();
                let (mut tp, mut fp) = (0usize, 0usize);
                for &i in &sel {
                    match acc.outcome[a][i * nt + t] {
                        TP => tp += 1,
                        FP => fp += 1,
                        _ => {}
                    }
                    let tpf = tp as f64;
                    rc.push(tpf / npig as f64);
                    pr.push(tpf / (fp as f64 + tpf + f64::EPSILON));
                }
                out.recall[((t * out.nk + k) * 4 + a) * 3 + m] = if nd > 0 { rc[nd - 1] } else { 0.0 };
                for i in (1..nd).rev() {
                    if pr[i] > pr[i - 1] {
                        pr[i - 1] = pr[i];
                    }
                }
                for r in 0..out.nr {
                    let idx = out.prk(t, r, k, a, m);
                    out.precision[idx] = 0.0;
                    out.scores[idx] = 0.0;
                }
                for (r, &thr) in params.recall_thresholds.iter().enumerate() {
                    let pi = rc.partition_point(|&x| x < thr);
                    if pi >= nd {
                        break; // recall never reached: this and all higher thresholds stay 0
                    }
                    let idx = out.prk(t, r, k, a, m);
                    out.precision[idx] = pr[pi];
                    out.scores[idx] = acc.scores[sel[pi]];
                }
            }
        }
    }
}

/// Evaluates `preds` against `gts` over the given images and categories, as pycocotools'
/// `COCOeval(gt, dt, 'bbox')` followed by `evaluate()`, `accumulate()` and `summarize()`.
///
/// `images` and `categories` are the evaluated ids (the COCO file's `images` and `categories`
/// lists; order and duplicates do not matter). An image without ground truth still counts
/// (its predictions are false positives); a category without ground truth gets -1 and is left
/// out of the means. Inputs are assumed validated: finite boxes with non-negative sizes and
/// finite scores. Cost is linear in the number of cells, each costing O(D·G·T) for D
/// predictions and G ground truth of that image and category, plus a sort per category.
pub fn evaluate(
    images: &[u64],
    categories: &[u64],
    gts: &[GroundTruth],
    preds: &[Prediction],
    params: &CocoParams,
) -> CocoEvaluation {
    let mut params = params.clone();
    params.max_dets.sort_unstable();
    let images = sorted_unique(images);
    let categories = sorted_unique(categories);
    let img_index: HashMap<u64, usize> = images.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let cat_index: HashMap<u64, usize> = categories.iter().enumerate().map(|(k, &id)| (id, k)).collect();
    let (gt_cells, gt_idx) = group_cells(gts, |g| (g.category, g.image), &cat_index, &img_index);
    let (dt_cells, dt_idx) = group_cells(preds, |p| (p.category, p.image), &cat_index, &img_index);

    let (nt, nr, nk) = (params.iou_thresholds.len(), params.recall_thresholds.len(), categories.len());
    let mut out = Arrays {
        nt,
        nr,
        nk,
        precision: vec![-1.0; nt * nr * nk * 12],
        recall: vec![-1.0; nt * nk * 12],
        scores: vec![-1.0; nt * nr * nk * 12],
    };

    // Walk the (category, image)-sorted cells of both lists together, one category at a time.
    let max_det = params.max_dets[2];
    let (mut gi, mut di) = (0, 0);
    let mut cell_gts: Vec<&GroundTruth> = Vec::new();
    let mut cell_dts: Vec<&Prediction> = Vec::new();
    for k in 0..nk {
        let mut acc = CategoryMatches::default();
        loop {
            let gkey = gt_cells.get(gi).map(|c| c.0).filter(|key| key.0 == k);
            let dkey = dt_cells.get(di).map(|c| c.0).filter(|key| key.0 == k);
            let key = match (gkey, dkey) {
                (None, None) => break,
                (Some(g), None) => g,
                (None, Some(d)) => d,
                (Some(g), Some(d)) => g.min(d),
            };
            cell_gts.clear();
            cell_dts.clear();
            if gkey == Some(key) {
                let (_, s, e) = gt_cells[gi];
                cell_gts.extend(gt_idx[s..e].iter().map(|&i| &gts[i]));
                gi += 1;
            }
            if dkey == Some(key) {
                let (_, s, e) = dt_cells[di];
                cell_dts.extend(dt_idx[s..e].iter().map(|&i| &preds[i]));
                di += 1;
            }
            cell_dts.sort_by(|a, b| by_score_desc(a.score, b.score));
            cell_dts.truncate(max_det);
            match_cell(&cell_gts, &cell_dts, &params, &mut acc);
        }
        accumulate_category(k, &acc, &params, &mut out);
    }

    let stats = summarize(&params, &categories, &out);
    CocoEvaluation { params, categories, precision: out.precision, recall: out.recall, scores: out.scores, stats }
}

/// `summarize()` for bbox: the 12 standard numbers and per-category AP.
fn summarize(params: &CocoParams, categories: &[u64], out: &Arrays) -> CocoStats {
    let (nt, nr, nk) = (out.nt, out.nr, out.nk);
    let all_t: Vec<usize> = (0..nt).collect();
    let at = |x: f64| -> Vec<usize> { (0..nt).filter(|&t| params.iou_thresholds[t] == x).collect() };
    // numpy's C order over the selected (t, r, k) entries.
    let ap = |ts: &[usize], a: usize, m: usize| {
        mean_valid(
            ts.iter()
                .flat_map(|&t| (0..nr).flat_map(move |r| (0..nk).map(move |k| out.precision[out.prk(t, r, k, a, m)]))),
        )
    };
    let ar = |a: usize, m: usize| {
        mean_valid((0..nt).flat_map(|t| (0..nk).map(move |k| out.recall[((t * nk + k) * 4 + a) * 3 + m])))
    };
    let values = [
        ap(&all_t, 0, 2),
        ap(&at(0.5), 0, 2),
        ap(&at(0.75), 0, 2),
        ap(&all_t, 1, 2),
        ap(&all_t, 2, 2),
        ap(&all_t, 3, 2),
        ar(0, 0),
        ar(0, 1),
        ar(0, 2),
        ar(1, 2),
        ar(2, 2),
        ar(3, 2),
    ];
    let per_category_ap = categories
        .iter()
        .enumerate()
        .map(|(k, &category)| CategoryAp {
            category,
            ap: mean_valid((0..nt).flat_map(|t| (0..nr).map(move |r| out.precision[out.prk(t, r, k, 0, 2)]))),
        })
        .collect();
    CocoStats::from_values(values, per_category_ap)
}

#[cfg(test)]
#[path = "coco_eval_tests.rs"]
mod tests;
