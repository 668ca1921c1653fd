//! Non-maximum suppression: `kiln_infer::nms::nms`, class-aware at IoU 0.5 with every candidate kept in play (no
//! score threshold, top-k or detection cap, as torchvision's `batched_nms`), on one thread, for 10,000 and 1,000
//! clustered boxes over 80 classes (goal: at most half of torchvision's time on the 10,000-box case).
//!
//! `cargo bench --bench nms` (`make bench`) benchmarks cases generated here. With `KILN_NMS_CASE=FILE` (written by
//! `scripts/compare_nms_torchvision.py`, which runs this bench side by side with torchvision) it also benchmarks the
//! case in FILE as `nms/case_file`, and with `KILN_NMS_KEEP=OUT` writes the input indices of the boxes kept there
//! to OUT as a JSON array, highest score first.
//!
//! The case file is little-endian: the magic `KNMS`, a `u32` version (1), a `u32` box count n, then n×4 `f32`
//! corners `[x1, y1, x2, y2]`, n `f32` scores and n `u32` classes.

use std::collections::HashMap;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{Rng, SeedableRng};

use kiln_infer::nms::{nms, Detection, NmsConfig};

const IMAGE: f32 = 1024.0;
const CLASSES: usize = 80;

/// The comparison's settings for `n` candidates: class-aware, IoU 0.5, and every candidate enters suppression and
/// may be kept.
fn config(n: usize) -> NmsConfig {
    NmsConfig {
        iou_threshold: 0.5,
        score_threshold: f32::NEG_INFINITY,
        max_detections: n.max(1),
        class_agnostic: false,
        pre_nms_top_k: n.max(1),
    }
}

/// `n` boxes in a 1024×1024 image around n / 5 cluster centres (sizes log-uniform in 8-256 px), each a jittered copy
/// (centre moved up to ±15% of the size, size scaled by e^±0.15) of its cluster's box that keeps the cluster's class
/// with probability 0.8; scores uniform in [0, 1). The same recipe as the comparison script's, another generator.
fn clustered(n: usize, seed: u64) -> Vec<Detection> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (log_min, log_max) = (8f32.ln(), 256f32.ln());
    let clusters: Vec<([f32; 4], usize)> = (0..(n / 5).max(1))
        .map(|_| {
            let (cx, cy) = (rng.random_range(0.0..IMAGE), rng.random_range(0.0..IMAGE));
            let (w, h) = (rng.random_range(log_min..log_max).exp(), rng.random_range(log_min..log_max).exp());
            ([cx, cy, w, h], rng.random_range(0..CLASSES))
        })
        .collect();
    (0..n)
        .map(|_| {
            let ([cx, cy, w, h], class) = clusters[rng.random_range(0..clusters.len())];
            let cx = (cx + rng.random_range(-0.15..0.15) * w).clamp(0.0, IMAGE);
            let cy = (cy + rng.random_range(-0.15..0.15) * h).clamp(0.0, IMAGE);
            let w = w * rng.random_range(-0.15f32..0.15).exp();
            let h = h * rng.random_range(-0.15f32..0.15).exp();
            let bbox = [
                (cx - w / 2.0).max(0.0),
                (cy - h / 2.0).max(0.0),
                (cx + w / 2.0).min(IMAGE),
                (cy + h / 2.0).min(IMAGE),
            ];
            let class = if rng.random_bool(0.8) { class } else { rng.random_range(0..CLASSES) };
            Detection { bbox, score: rng.random(), class }
        })
        .collect()
}

/// Reads a case file (see the module documentation).
fn read_case(path: &str) -> Vec<Detection> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let word = |i: usize| u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
    assert!(bytes.len() >= 12 && &bytes[..4] == b"KNMS" && word(1) == 1, "{path}: not a version 1 KNMS case file");
    let n = word(2) as usize;
    assert_eq!(bytes.len(), 12 + 24 * n, "{path}: size does not match {n} boxes");
    let float = |i: usize| f32::from_bits(word(i));
    (0..n)
        .map(|i| Detection {
            bbox: std::array::from_fn(|c| float(3 + 4 * i + c)),
            score: float(3 + 4 * n + i),
            class: word(3 + 5 * n + i) as usize,
        })
        .collect()
}

/// The input indices of `kept` in `candidates`, whose (box, score, class) triples must be distinct.
fn kept_indices(candidates: &[Detection], kept: &[Detection]) -> Vec<usize> {
    let key = |d: &Detection| (d.bbox.map(f32::to_bits), d.score.to_bits(), d.class);
    let mut index = HashMap::with_capacity(candidates.len());
    for (i, d) in candidates.iter().enumerate() {
        assert!(index.insert(key(d), i).is_none(), "candidate {i} repeats an earlier one");
    }
    kept.iter().map(|d| index[&key(d)]).collect()
}

fn benches(c: &mut Criterion) {
    let mut cases: Vec<(String, Vec<Detection>)> =
        [10_000, 1_000].into_iter().map(|n| (format!("{n}_boxes_{CLASSES}_classes"), clustered(n, 0))).collect();
    if let Ok(path) = std::env::var("KILN_NMS_CASE") {
        let candidates = read_case(&path);
        let kept = nms(&candidates, &config(candidates.len()));
        println!("nms/case_file: {} boxes from {path}, {} kept", candidates.len(), kept.len());
        if let Ok(out) = std::env::var("KILN_NMS_KEEP") {
            let indices = kept_indices(&candidates, &kept);
            std::fs::write(&out, format!("{indices:?}\n")).unwrap_or_else(|e| panic!("writing {out}: {e}"));
        }
        cases.push(("case_file".into(), candidates));
    }

    let mut group = c.benchmark_group("nms");
    for (name, candidates) in &cases {
        let config = config(candidates.len());
        group.throughput(Throughput::Elements(candidates.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), candidates, |b, candidates| {
            b.iter(|| nms(std::hint::black_box(candidates), &config))
        });
    }
    group.finish();
}

criterion_group!(nms_benches, benches);
criterion_main!(nms_benches);
