//! CTC decoding of one text line: per-frame class probabilities in, class indices out (the caller maps them to
//! characters through its charset).
//!
//! - [`greedy`]: the most probable class of every frame, repeats collapsed, blanks dropped (best-path decoding).
//! - [`BeamSearch`]: prefix beam search over labelings, optionally under a [`Constraint`] (allowed classes, a
//!   lexicon, or a regular expression the text must match as a whole).
//! - [`ctc_forward_probability`]: the probability of a labeling, summed over all its alignments.
//!
//! # Shapes
//!
//! Every function takes one line's probabilities as a row-major `[frames, classes]` slice whose rows are already
//! softmaxed, the number of `classes` (the blank included) and the `blank` class (kiln's models use 0). They
//! panic when `blank >= classes` or when the slice is not a whole number of frames.

mod constraint;
mod prefix_search;

pub use constraint::{Constraint, Lexicon, TextPattern};
use prefix_search::Search;

/// A decoded line.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// The classes read, in order (never the blank).
    pub labels: Vec<usize>,
    /// One per label, in [0, 1]: the highest probability of the label's class among the frames aligned to it
    /// (greedy: its run in the best path; beam search: its frames in the best alignment of the labeling found).
    pub char_confidences: Vec<f32>,
    /// [`greedy`]: the product of `char_confidences`; for an empty result the lowest per-frame maximum probability
    /// (how sure the model is that nothing is written), 1 for zero frames. [`BeamSearch`]: the labeling's
    /// probability summed over its alignments, as the search accumulated it (equal to [`ctc_forward_probability`]
    /// unless pruned prefixes carried some of its alignments); 0 when a constraint admits no result.
    pub confidence: f32,
}

impl Decoded {
    fn empty(confidence: f32) -> Self {
        Self { labels: Vec::new(), char_confidences: Vec::new(), confidence }
    }
}

/// The number of frames in `probs`, after checking the shape (see the module documentation).
fn frame_count(probs: &[f32], classes: usize, blank: usize) -> usize {
    assert!(blank < classes, "blank class {blank} is not one of the {classes} classes");
    assert!(probs.len() % classes == 0, "{} probabilities are not whole frames of {classes} classes", probs.len());
    probs.len() / classes
}

/// The first most probable class of a frame and its probability: the maximum over eight lanes (which the compiler
/// vectorises; the last chunk overlaps the one before rather than leaving a scalar tail), then the first chunk
/// holding it. NaNs are skipped (class 0 when every entry is NaN).
#[inline]
fn argmax(frame: &[f32]) -> (usize, f32) {
    const LANES: usize = 8;
    if frame.len() < LANES {
        let (mut index, mut best) = (0, f32::NEG_INFINITY);
        for (i, &p) in frame.iter().enumerate() {
            if p > best {
                (index, best) = (i, p);
            }
        }
        return (index, frame[index]);
    }
    let last = frame.len() - LANES;
    let chunk = |start: usize| -> &[f32; LANES] { frame[start.min(last)..][..LANES].try_into().expect("8 lanes") };
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for start in (0..frame.len()).step_by(LANES) {
        for (max, &p) in lanes.iter_mut().zip(chunk(start)) {
            *max = if p > *max { p } else { *max };
        }
    }
    let mut width = LANES / 2;
    while width > 0 {
        let (low, high) = lanes.split_at_mut(width);
        for (max, &p) in low.iter_mut().zip(&high[..width]) {
            *max = if p > *max { p } else { *max };
        }
        width /= 2;
    }
    let best = lanes[0];
    for start in (0..frame.len()).step_by(LANES) {
        let mut hits = 0u32;
        for (lane, &p) in chunk(start).iter().enumerate() {
            hits |= u32::from(p == best) << lane;
        }
        if hits != 0 {
            let index = start.min(last) + hits.trailing_zeros() as usize;
            return (index, frame[index]);
        }
    }
    (0, frame[0])
}

/// Best-path decoding: the most probable class of each frame (the first on ties), consecutive repeats collapsed,
/// blanks dropped. A blank between two equal classes separates them (`a ␣ a` reads two a's, `a a` one).
pub fn greedy(probs: &[f32], classes: usize, blank: usize) -> Decoded {
    let frames = frame_count(probs, classes, blank);
    let (mut labels, mut char_confidences) = (Vec::with_capacity(frames), Vec::<f32>::with_capacity(frames));
    let (mut previous, mut lowest) = (blank, 1.0f32);
    for frame in probs.chunks_exact(classes) {
        let (class, p) = argmax(frame);
        lowest = lowest.min(p);
        if class != blank {
            match char_confidences.last_mut() {
                Some(last) if class == previous => *last = last.max(p),
                _ => {
                    labels.push(class);
                    char_confidences.push(p);
                }
            }
        }
        previous = class;
    }
    let confidence = match (labels.is_empty(), frames) {
        (false, _) => char_confidences.iter().product(),
        (true, 0) => 1.0,
        (true, _) => lowest,
    };
    Decoded { labels, char_confidences, confidence }
}

/// The probability of `labels` (classes, no blanks) given the frames: the sum over every alignment that collapses
/// to it, by the CTC forward algorithm with each frame rescaled (so hundreds of frames do not underflow before the
/// final product). 0 when a label is the blank or not a class, or when there are too few frames; 1 for no labels
/// and no frames.
pub fn ctc_forward_probability(probs: &[f32], classes: usize, blank: usize, labels: &[usize]) -> f64 {
    forward_log_probability(probs, classes, blank, labels).exp()
}

/// [`ctc_forward_probability`] as a natural logarithm (−∞ for probability 0).
fn forward_log_probability(probs: &[f32], classes: usize, blank: usize, labels: &[usize]) -> f64 {
    let frames = frame_count(probs, classes, blank);
    if labels.iter().any(|&c| c >= classes || c == blank) {
        return f64::NEG_INFINITY;
    }
    if frames == 0 {
        return if labels.is_empty() { 0.0 } else { f64::NEG_INFINITY };
    }
    // States interleave blanks and labels: blank, l0, blank, l1, …, blank.
    let states = 2 * labels.len() + 1;
    let class_of = |s: usize| if s % 2 == 0 { blank } else { labels[s / 2] };
    let (mut alpha, mut next) = (vec![0.0f64; states], vec![0.0f64; states]);
    alpha[0] = probs[blank] as f64;
    if states > 1 {
        alpha[1] = probs[labels[0]] as f64;
    }
    let mut log_p = 0.0;
    for (t, row) in probs.chunks_exact(classes).enumerate() {
        if t > 0 {
            for s in 0..states {
                let mut a = alpha[s];
                if s >= 1 {
                    a += alpha[s - 1];
                }
                if s >= 3 && s % 2 == 1 && labels[s / 2] != labels[s / 2 - 1] {
                    a += alpha[s - 2];
                }
                next[s] = a * row[class_of(s)] as f64;
            }
            std::mem::swap(&mut alpha, &mut next);
        }
        let sum: f64 = alpha.iter().sum();
        if !(sum > 0.0 && sum.is_finite()) {
            return f64::NEG_INFINITY;
        }
        alpha.iter_mut().for_each(|a| *a /= sum);
        log_p += sum.ln();
    }
    let end = alpha[states - 1] + if states > 1 { alpha[states - 2] } else { 0.0 };
    if end > 0.0 {
        log_p + end.ln()
    } else {
        f64::NEG_INFINITY
    }
}

/// The char confidences of `labels` on its best alignment (Viterbi, each frame rescaled so its best state is 1):
/// per label, the highest probability of its class among the frames the alignment gives it. Zeros when no
/// alignment exists.
fn aligned_confidences(probs: &[f32], classes: usize, blank: usize, labels: &[usize]) -> Vec<f32> {
    let frames = frame_count(probs, classes, blank);
    let mut confidences = vec![0.0f32; labels.len()];
    if labels.is_empty() || frames == 0 {
        return confidences;
    }
    let states = 2 * labels.len() + 1;
    let class_of = |s: usize| if s % 2 == 0 { blank } else { labels[s / 2] };
    let (mut delta, mut next) = (vec![0.0f64; states], vec![0.0f64; states]);
    // How many states back each (frame, state) came from: 0, 1 or 2.
    let mut steps = vec![0u8; frames * states];
    delta[0] = probs[blank] as f64;
    delta[1] = probs[labels[0]] as f64;
    for (t, row) in probs.chunks_exact(classes).enumerate().skip(1) {
        let mut scale = 0.0f64;
        for s in 0..states {
            let (mut best, mut step) = (delta[s], 0u8);
            if s >= 1 && delta[s - 1] > best {
                (best, step) = (delta[s - 1], 1);
            }
            if s >= 3 && s % 2 == 1 && labels[s / 2] != labels[s / 2 - 1] && delta[s - 2] > best {
                (best, step) = (delta[s - 2], 2);
            }
            next[s] = best * row[class_of(s)] as f64;
            scale = scale.max(next[s]);
            steps[t * states + s] = step;
        }
        if scale > 0.0 {
            next.iter_mut().for_each(|d| *d /= scale);
        }
        std::mem::swap(&mut delta, &mut next);
    }
    let mut s = if delta[states - 2] > delta[states - 1] { states - 2 } else { states - 1 };
    if delta[s] <= 0.0 {
        return confidences;
    }
    for (t, row) in probs.chunks_exact(classes).enumerate().rev() {
        if s % 2 == 1 {
            confidences[s / 2] = confidences[s / 2].max(row[labels[s / 2]]);
        }
        s -= steps[t * states + s] as usize;
    }
    confidences
}

/// CTC prefix beam search: keeps the `width` most probable prefixes (distinct labelings so far), each with its
/// probability of ending in a blank and in a non-blank, merging every alignment of the same prefix.
///
/// Per frame, each prefix stays (a blank, or a repeat of its last class) and grows by one class (a repeat of its
/// last class grows only from a blank ending); then the `width` prefixes of highest total probability survive and
/// are rescaled so the best is 1 (the scales are summed as logarithms, so hundreds of frames do not underflow).
/// The result is the surviving prefix of highest probability (under a constraint, the highest that is complete).
/// Under a lexicon or a regex, a frame whose `width` best prefixes are all incomplete also keeps its best complete
/// one; if still none survives to the end, a lexicon falls back to scoring its words ([`Lexicon`]) and a regex
/// reads nothing (confidence 0): widen the beam.
///
/// Pruning that cannot change the result (ties aside; a test checks it against the textbook search): a prefix
/// grows only by the `width + 1` most probable classes of the frame it may emit (any other new prefix is outranked
/// by `width` of its siblings), and not at all by a class whose growth already scores below every staying prefix
/// once `width` prefixes stay (it would be outranked by all of them). A surviving prefix still receives the growth
/// of its surviving parent by a class so pruned, so its probability sums every alignment through surviving
/// prefixes.
///
/// Width 1 without a constraint is a documented special case: it returns [`greedy`]'s labels and char
/// confidences with the labels' [`ctc_forward_probability`] as confidence (a width-1 prefix search can keep a
/// prefix that the best path does not collapse to, so greedy is what "one beam" means here). With a constraint,
/// width 1 runs the constrained search. A width of 0 counts as 1.
#[derive(Clone, Debug)]
pub struct BeamSearch {
    /// Prefixes kept per frame.
    pub width: usize,
    pub constraint: Option<Constraint>,
}

impl Default for BeamSearch {
    /// Width 10, unconstrained.
    fn default() -> Self {
        Self { width: 10, constraint: None }
    }
}

impl BeamSearch {
    /// Decodes one line (see the module documentation for the shapes).
    pub fn decode(&self, probs: &[f32], classes: usize, blank: usize) -> Decoded {
        let width = self.width.max(1);
        if width == 1 && self.constraint.is_none() {
            let mut decoded = greedy(probs, classes, blank);
            decoded.confidence = ctc_forward_probability(probs, classes, blank, &decoded.labels) as f32;
            return decoded;
        }
        match self.search(probs, classes, blank) {
            Some((labels, log_p)) => with_alignment(probs, classes, blank, labels, log_p),
            None => match &self.constraint {
                Some(Constraint::Lexicon(lexicon)) => best_word(lexicon, probs, classes, blank),
                _ => Decoded::empty(0.0),
            },
        }
    }

    /// The most probable complete labeling the search keeps, with its log probability.
    fn search(&self, probs: &[f32], classes: usize, blank: usize) -> Option<(Vec<usize>, f64)> {
        let frames = frame_count(probs, classes, blank);
        let mut search = Search::new(classes, blank, self.width.max(1), self.constraint.as_ref(), frames);
        for (t, row) in probs.chunks_exact(classes).enumerate() {
            search.step(t as u32 + 1, row);
        }
        search.best_complete()
    }
}

/// `labels` with its probability and its char confidences on its best alignment.
fn with_alignment(probs: &[f32], classes: usize, blank: usize, labels: Vec<usize>, log_p: f64) -> Decoded {
    let char_confidences = aligned_confidences(probs, classes, blank, &labels);
    Decoded { labels, char_confidences, confidence: log_p.exp() as f32 }
}

/// The lexicon's fallback: its most probable word, scored exactly (the first on ties; empty for no readable word).
fn best_word(lexicon: &Lexicon, probs: &[f32], classes: usize, blank: usize) -> Decoded {
    let mut best: Option<(&[usize], f64)> = None;
    for word in lexicon.words().iter().filter(|w| w.iter().all(|&c| c < classes && c != blank)) {
        let log_p = forward_log_probability(probs, classes, blank, word);
        if best.is_none_or(|(_, b)| log_p > b) {
            best = Some((word, log_p));
        }
    }
    match best {
        Some((word, log_p)) => with_alignment(probs, classes, blank, word.to_vec(), log_p),
        None => Decoded::empty(0.0),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const BLANK: usize = 0;

    /// Frames as rows of probabilities.
    pub(super) fn frames(rows: &[&[f32]]) -> Vec<f32> {
        rows.concat()
    }

    /// SplitMix64.
    pub(super) struct Rng(pub(super) u64);

    impl Rng {
        fn next_f32(&mut self) -> f32 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
        }

        pub(super) fn below(&mut self, n: usize) -> usize {
            ((self.next_f32() * n as f32) as usize).min(n - 1)
        }

        /// `frames` softmaxed rows of random logits, each frame's random class raised by up to `peak`.
        pub(super) fn probs(&mut self, frames: usize, classes: usize, peak: f32) -> Vec<f32> {
            let mut probs = Vec::with_capacity(frames * classes);
            for _ in 0..frames {
                let top = self.below(classes);
                let raise = peak * self.next_f32();
                let logits: Vec<f32> =
                    (0..classes).map(|c| 2.0 * self.next_f32() + if c == top { raise } else { 0.0 }).collect();
                let sum: f32 = logits.iter().map(|l| l.exp()).sum();
                probs.extend(logits.iter().map(|l| l.exp() / sum));
            }
            probs
        }
    }

    /// Every labeling of up to `max_len` non-blank classes.
    fn all_labelings(classes: usize, max_len: usize) -> Vec<Vec<usize>> {
        let mut all = vec![vec![]];
        let mut last = vec![vec![]];
        for _ in 0..max_len {
            last = last.iter().flat_map(|l: &Vec<usize>| (1..classes).map(move |c| [&l[..], &[c]].concat())).collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    /// Name, frames, labels, char confidences, confidence.
    type GreedyCase<'a> = (&'a str, Vec<f32>, &'a [usize], &'a [f32], f32);

    #[test]
    fn greedy_decoding_cases() {
        let (blank, a, b) = (&[0.8f32, 0.1, 0.1][..], &[0.1f32, 0.7, 0.2][..], &[0.2f32, 0.2, 0.6][..]);
        let a_high = &[0.05f32, 0.9, 0.05][..];
        #[rustfmt::skip]
        let cases: &[GreedyCase] = &[
            ("no frames", vec![], &[], &[], 1.0),
            ("one frame", frames(&[a]), &[1], &[0.7], 0.7),
            ("one blank frame", frames(&[blank]), &[], &[], 0.8),
            ("all blank: the lowest frame maximum", frames(&[blank, &[0.5, 0.3, 0.2], blank]), &[], &[], 0.5),
            ("repeats collapse, the run's maximum", frames(&[a, a_high, a]), &[1], &[0.9], 0.9),
            ("a blank between repeats keeps both", frames(&[a, blank, a_high]), &[1, 1], &[0.7, 0.9], 0.7 * 0.9),
            ("blanks around", frames(&[blank, a, blank, b, b, blank]), &[1, 2], &[0.7, 0.6], 0.7 * 0.6),
            ("change without blank", frames(&[a, b, a]), &[1, 2, 1], &[0.7, 0.6, 0.7], 0.7 * 0.6 * 0.7),
            ("ties: the first class", frames(&[&[0.4, 0.4, 0.2], &[0.2, 0.4, 0.4]]), &[1], &[0.4], 0.4),
        ];
        for (name, probs, labels, confidences, confidence) in cases {
            let decoded = greedy(probs, 3, BLANK);
            assert_eq!(decoded.labels, *labels, "{name}");
            assert_eq!(decoded.char_confidences, *confidences, "{name}");
            assert!((decoded.confidence - confidence).abs() < 1e-6, "{name}: {}", decoded.confidence);
        }
        // The blank need not be class 0.
        assert_eq!(greedy(&frames(&[a, blank, b]), 3, 1).labels, vec![0, 2]);
    }

    #[test]
    fn argmax_is_the_first_maximum() {
        let mut rng = Rng(1);
        for len in 1..70 {
            for _ in 0..20 {
                // Coarse values, so that ties are common.
                let frame: Vec<f32> = (0..len).map(|_| rng.below(5) as f32 / 4.0).collect();
                let best = frame.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let first = frame.iter().position(|&p| p == best).unwrap();
                assert_eq!(argmax(&frame), (first, best), "{frame:?}");
            }
        }
        assert_eq!(argmax(&[f32::NAN, 0.2, f32::NAN, 0.5, 0.5]), (3, 0.5));
        assert_eq!(argmax(&[f32::NAN; 9]).0, 0);
    }

    #[test]
    #[should_panic(expected = "5 probabilities are not whole frames of 3 classes")]
    fn rejects_partial_frames() {
        greedy(&[0.2; 5], 3, BLANK);
    }

    #[test]
    fn forward_probability_by_hand() {
        // Two frames: blank 0.4, a 0.35, b 0.25 each.
        let probs = frames(&[&[0.4, 0.35, 0.25], &[0.4, 0.35, 0.25]]);
        let p = |labels: &[usize]| ctc_forward_probability(&probs, 3, BLANK, labels);
        assert!((p(&[]) - 0.16).abs() < 1e-7);
        assert!((p(&[1]) - (0.35 * 0.35 + 2.0 * 0.35 * 0.4)).abs() < 1e-7, "{}", p(&[1]));
        assert!((p(&[1, 2]) - 0.35 * 0.25).abs() < 1e-7);
        assert_eq!(p(&[1, 1]), 0.0, "two a's need a blank between: three frames");
        assert_eq!(p(&[0]), 0.0, "the blank is not a label");
        assert_eq!(p(&[3]), 0.0, "not a class");
        assert_eq!(ctc_forward_probability(&[], 3, BLANK, &[]), 1.0);
        assert_eq!(ctc_forward_probability(&[], 3, BLANK, &[1]), 0.0);
    }

    #[test]
    fn forward_probabilities_sum_to_one() {
        let mut rng = Rng(3);
        for frames in 1..5 {
            let probs = rng.probs(frames, 3, 2.0);
            let total: f64 =
                all_labelings(3, frames).iter().map(|l| ctc_forward_probability(&probs, 3, BLANK, l)).sum();
            assert!((total - 1.0).abs() < 1e-5, "{frames} frames: {total}");
        }
    }

    #[test]
    fn beam_search_finds_what_greedy_misses() {
        // The best path is blank, blank (0.16), but "a" has 0.4025 over its three alignments.
        let probs = frames(&[&[0.4, 0.35, 0.25], &[0.4, 0.35, 0.25]]);
        assert_eq!(greedy(&probs, 3, BLANK).labels, Vec::<usize>::new());
        let decoded = BeamSearch { width: 3, constraint: None }.decode(&probs, 3, BLANK);
        assert_eq!(decoded.labels, vec![1]);
        assert!((decoded.confidence - 0.4025).abs() < 1e-6, "{}", decoded.confidence);
        // Its best alignment is (a, blank) or (blank, a): a's highest probability there.
        assert_eq!(decoded.char_confidences, vec![0.35]);
    }

    #[test]
    fn width_one_is_greedy() {
        let mut rng = Rng(5);
        let search = BeamSearch { width: 1, constraint: None };
        for case in 0..300 {
            let (frames, classes) = (rng.below(40), 2 + rng.below(8));
            let probs = rng.probs(frames, classes, 4.0);
            let (beam, best_path) = (search.decode(&probs, classes, BLANK), greedy(&probs, classes, BLANK));
            assert_eq!(beam.labels, best_path.labels, "case {case}");
            assert_eq!(beam.char_confidences, best_path.char_confidences, "case {case}");
            let total = ctc_forward_probability(&probs, classes, BLANK, &beam.labels) as f32;
            assert_eq!(beam.confidence, total, "case {case}");
        }
    }

    #[test]
    fn wide_search_is_exact_on_small_cases() {
        let mut rng = Rng(9);
        for case in 0..100 {
            let (frames, classes) = (1 + rng.below(5), 2 + rng.below(3));
            let probs = rng.probs(frames, classes, 3.0);
            let decoded = BeamSearch { width: 1000, constraint: None }.decode(&probs, classes, BLANK);
            let exact = ctc_forward_probability(&probs, classes, BLANK, &decoded.labels);
            assert!((decoded.confidence as f64 - exact).abs() < 1e-6, "case {case}: {decoded:?} vs {exact}");
            let best = all_labelings(classes, frames)
                .iter()
                .map(|l| ctc_forward_probability(&probs, classes, BLANK, l))
                .fold(0.0, f64::max);
            assert!((exact - best).abs() < 1e-9, "case {case}: the most probable labeling");
        }
    }

    /// The textbook prefix beam search: every prefix grows by every class and the `width` most probable survive,
    /// rescaled each frame; the best labeling and its log probability.
    fn textbook_beam_search(probs: &[f32], classes: usize, width: usize) -> (Vec<usize>, f64) {
        let mut beams: Vec<(Vec<usize>, f64, f64)> = vec![(vec![], 1.0, 0.0)];
        let mut log_scale = 0.0;
        for row in probs.chunks_exact(classes) {
            let mut next: HashMap<Vec<usize>, (f64, f64)> = HashMap::new();
            for (prefix, blank, non_blank) in &beams {
                let total = blank + non_blank;
                let stay = next.entry(prefix.clone()).or_default();
                stay.0 += total * row[BLANK] as f64;
                if let Some(&last) = prefix.last() {
                    stay.1 += non_blank * row[last] as f64;
                }
                for c in (0..classes).filter(|&c| c != BLANK) {
                    let from = if prefix.last() == Some(&c) { *blank } else { total };
                    next.entry([&prefix[..], &[c]].concat()).or_default().1 += from * row[c] as f64;
                }
            }
            let mut sorted: Vec<_> = next.into_iter().map(|(prefix, (b, n))| (prefix, b, n)).collect();
            sorted.sort_by(|x, y| (y.1 + y.2).total_cmp(&(x.1 + x.2)));
            sorted.truncate(width);
            let best = sorted[0].1 + sorted[0].2;
            log_scale += best.ln();
            beams = sorted.into_iter().map(|(prefix, b, n)| (prefix, b / best, n / best)).collect();
        }
        let (labels, blank, non_blank) = beams.swap_remove(0);
        (labels, (blank + non_blank).ln() + log_scale)
    }

    #[test]
    fn pruning_changes_nothing() {
        let mut rng = Rng(13);
        for case in 0..60 {
            // Short lines, and 200-frame ones (whose probabilities, about e^-150, would underflow unscaled).
            let frames = if case % 3 == 0 { 200 } else { 1 + rng.below(40) };
            let (classes, width) = (2 + rng.below(20), 2 + rng.below(12));
            let probs = rng.probs(frames, classes, 9.0);
            let (labels, log_p) = BeamSearch { width, constraint: None }.search(&probs, classes, BLANK).unwrap();
            let (expected, expected_log_p) = textbook_beam_search(&probs, classes, width);
            assert_eq!(labels, expected, "case {case}: {frames} frames, {classes} classes, width {width}");
            assert!((log_p - expected_log_p).abs() < 1e-9, "case {case}: {log_p} vs {expected_log_p}");
            let exact = forward_log_probability(&probs, classes, BLANK, &labels);
            assert!(log_p.is_finite() && log_p <= exact + 1e-9, "case {case}: a lower bound: {log_p} vs {exact}");
        }
    }

    #[test]
    fn char_confidences_on_the_best_alignment() {
        let mut rng = Rng(17);
        for case in 0..100 {
            let (frames, classes) = (1 + rng.below(30), 2 + rng.below(6));
            let probs = rng.probs(frames, classes, 3.0);
            let decoded = BeamSearch { width: 5, constraint: None }.decode(&probs, classes, BLANK);
            assert_eq!(decoded.char_confidences.len(), decoded.labels.len(), "case {case}");
            for (&c, &p) in decoded.labels.iter().zip(&decoded.char_confidences) {
                assert!(p > 0.0 && p <= 1.0, "case {case}");
                let frame_p = probs.chunks_exact(classes).map(|row| row[c]).collect::<Vec<_>>();
                assert!(frame_p.contains(&p), "case {case}: a frame's probability of the class");
            }
            assert!((0.0..=1.0).contains(&decoded.confidence), "case {case}");
        }
        // By hand: "ab" over a, a, b, b; the alignment is a a b b.
        let probs = frames(&[&[0.1, 0.6, 0.3], &[0.1, 0.8, 0.1], &[0.2, 0.3, 0.5], &[0.1, 0.2, 0.7]]);
        let decoded = BeamSearch::default().decode(&probs, 3, BLANK);
        assert_eq!((decoded.labels, decoded.char_confidences), (vec![1, 2], vec![0.8, 0.7]));
    }
}
