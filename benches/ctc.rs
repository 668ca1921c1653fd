//! CTC decoding of one text line, `kiln_infer::ctc`: greedy and prefix beam search (width 10) on 64 frames × 63
//! classes (goals: at most 2 µs greedy, 200 µs beam search on one core).
//!
//! `cargo bench --bench ctc` (`make bench`). The line is generated here from a fixed seed: each frame's logits are
//! uniform in [-2, 2) with one class raised by 3 to 9 (so its probability is 0.15 to 0.99), the blank (class 0) on
//! about half the frames and characters held for one to three frames, then softmaxed, like a trained
//! recognizer's output.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{Rng, SeedableRng};

use kiln_infer::ctc::{greedy, BeamSearch};

const FRAMES: usize = 64;
const CLASSES: usize = 63;
const BLANK: usize = 0;

/// One line's `[FRAMES, CLASSES]` probabilities (see the module documentation).
fn peaked_line(seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut probs = Vec::with_capacity(FRAMES * CLASSES);
    let (mut class, mut held) = (BLANK, 0);
    for _ in 0..FRAMES {
        if held == 0 {
            class = if rng.random_bool(0.5) { BLANK } else { rng.random_range(1..CLASSES) };
            held = rng.random_range(1..=3);
        }
        held -= 1;
        let raise = rng.random_range(3.0f32..9.0);
        let logits: Vec<f32> =
            (0..CLASSES).map(|c| rng.random_range(-2.0f32..2.0) + if c == class { raise } else { 0.0 }).collect();
        let sum: f32 = logits.iter().map(|l| l.exp()).sum();
        probs.extend(logits.iter().map(|l| l.exp() / sum));
    }
    probs
}

fn benches(c: &mut Criterion) {
    let probs = peaked_line(0);
    let beam = BeamSearch { width: 10, constraint: None };
    let read = beam.decode(&probs, CLASSES, BLANK);
    println!(
        "ctc: greedy reads {} classes, beam search {} (confidence {:.3e})",
        greedy(&probs, CLASSES, BLANK).labels.len(),
        read.labels.len(),
        read.confidence
    );

    let mut group = c.benchmark_group("ctc");
    group.throughput(Throughput::Elements(FRAMES as u64));
    let name = format!("{FRAMES}x{CLASSES}");
    group.bench_with_input(BenchmarkId::new("greedy", &name), &probs, |b, probs| {
        b.iter(|| greedy(std::hint::black_box(probs), CLASSES, BLANK))
    });
    group.bench_with_input(BenchmarkId::new("beam_10", &name), &probs, |b, probs| {
        b.iter(|| beam.decode(std::hint::black_box(probs), CLASSES, BLANK))
    });
    group.finish();
}

criterion_group!(ctc_benches, benches);
criterion_main!(ctc_benches);
