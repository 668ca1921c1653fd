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

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

mod constraint;

pub use constraint::{Constraint, Lexicon, TextPattern};

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
/// vectorises), then its first position. NaNs are skipped (class 0 when every entry is NaN).
#[inline]
fn argmax(frame: &[f32]) -> (usize, f32) {
    const LANES: usize = 8;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = frame.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (best, &p) in lanes.iter_mut().zip(chunk) {
            *best = if p > *best { p } else { *best };
        }
    }
    let best = lanes.iter().chain(tail).fold(f32::NEG_INFINITY, |best, &p| if p > best { p } else { best });
    let index = frame.iter().position(|&p| p == best).unwrap_or(0);
    (index, frame[index])
}

/// Best-path decoding: the most probable class of each frame (the first on ties), consecutive repeats collapsed,
/// blanks dropped. A blank between two equal classes separates them (`a ␣ a` reads two a's, `a a` one).
pub fn greedy(probs: &[f32], classes: usize, blank: usize) -> Decoded {
    let frames = frame_count(probs, classes, blank);
    let (mut labels, mut char_confidences) = (Vec::new(), Vec::<f32>::new());
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

/// The char confidences of `labels` on its best alignment (Viterbi, in log space): per label, the highest
/// probability of its class among the frames the alignment gives it. Zeros when no alignment exists.
fn aligned_confidences(probs: &[f32], classes: usize, blank: usize, labels: &[usize]) -> Vec<f32> {
    let frames = frame_count(probs, classes, blank);
    let mut confidences = vec![0.0f32; labels.len()];
    if labels.is_empty() || frames == 0 {
        return confidences;
    }
    let states = 2 * labels.len() + 1;
    let class_of = |s: usize| if s % 2 == 0 { blank } else { labels[s / 2] };
    let ln = |p: f32| (p as f64).ln();
    let (mut delta, mut next) = (vec![f64::NEG_INFINITY; states], vec![f64::NEG_INFINITY; states]);
    // How many states back each (frame, state) came from: 0, 1 or 2.
    let mut steps = vec![0u8; frames * states];
    delta[0] = ln(probs[blank]);
    delta[1] = ln(probs[labels[0]]);
    for (t, row) in probs.chunks_exact(classes).enumerate().skip(1) {
        for s in 0..states {
            let (mut best, mut step) = (delta[s], 0u8);
            if s >= 1 && delta[s - 1] > best {
                (best, step) = (delta[s - 1], 1);
            }
            if s >= 3 && s % 2 == 1 && labels[s / 2] != labels[s / 2 - 1] && delta[s - 2] > best {
                (best, step) = (delta[s - 2], 2);
            }
            next[s] = best + ln(row[class_of(s)]);
            steps[t * states + s] = step;
        }
        std::mem::swap(&mut delta, &mut next);
    }
    let mut s = if delta[states - 2] > delta[states - 1] { states - 2 } else { states - 1 };
    if delta[s] == f64::NEG_INFINITY {
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
///
/// Pruning that cannot change the result: a prefix grows only by the `width + 1` most probable classes of the
/// frame it may emit (any other new prefix is outranked by `width` of its siblings), and not at all by a class whose
/// growth already scores below every staying prefix once `width` prefixes stay (it would be outranked by all of
/// them). A surviving prefix still receives the growth of its surviving parent by a class so pruned, so its
/// probability sums every alignment through surviving prefixes.
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

/// The label of the prefix tree's root (the empty prefix).
const NO_LABEL: u32 = u32::MAX;

/// A prefix: a node of the prefix tree, with the frame stamps saying where it sits in the current beams and in
/// the candidates of the frame being decoded.
#[derive(Clone, Copy)]
struct Node {
    parent: u32,
    label: u32,
    beam_frame: u32,
    beam_index: u32,
    candidate_frame: u32,
    candidate_index: u32,
}

/// A prefix in the beams: its probabilities (rescaled) of ending in a blank and in a non-blank, its constraint
/// state (trie node or DFA state), and whether its parent's growth reached it in the current frame.
#[derive(Clone, Copy)]
struct Beam {
    node: u32,
    blank: f64,
    non_blank: f64,
    state: u32,
    reached: bool,
}

impl Beam {
    fn total(&self) -> f64 {
        self.blank + self.non_blank
    }
}

/// Hashes the prefix tree's `parent << 32 | class` keys with one multiplication (a bijection, then the high bits
/// folded into the low ones the table indexes with).
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(self.0.rotate_left(8) ^ byte as u64);
        }
    }

    fn write_u64(&mut self, key: u64) {
        let h = key.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 32);
    }
}

/// The state of one prefix beam search.
struct Search<'a> {
    classes: usize,
    blank: usize,
    width: usize,
    constraint: Option<&'a Constraint>,
    nodes: Vec<Node>,
    children: HashMap<u64, u32, BuildHasherDefault<KeyHasher>>,
    beams: Vec<Beam>,
    candidates: Vec<Beam>,
    /// The frame's classes a prefix may grow by, most probable first (see [`Search::rank_classes`]).
    ranked: Vec<(usize, f32)>,
    /// One prefix's growth classes: (class, probability, constraint state after it).
    growth: Vec<(usize, f32, u32)>,
    log_scale: f64,
}

impl<'a> Search<'a> {
    fn new(classes: usize, blank: usize, width: usize, constraint: Option<&'a Constraint>, frames: usize) -> Self {
        let root = Node { parent: 0, label: NO_LABEL, beam_frame: 1, beam_index: 0, candidate_frame: 0, candidate_index: 0 };
        let state = constraint.map_or(0, Constraint::start);
        let expected_nodes = (frames * width * 2).clamp(16, 1 << 14);
        let mut nodes = Vec::with_capacity(expected_nodes);
        nodes.push(root);
        Self {
            classes,
            blank,
            width,
            constraint,
            nodes,
            children: HashMap::with_capacity_and_hasher(expected_nodes, Default::default()),
            beams: vec![Beam { node: 0, blank: 1.0, non_blank: 0.0, state, reached: false }],
            candidates: Vec::with_capacity(width * (width + 3)),
            ranked: Vec::with_capacity(classes),
            growth: Vec::with_capacity(width + 1),
            log_scale: 0.0,
        }
    }

    /// The child of `parent` labelled `class`, added to the tree if new.
    fn child(&mut self, parent: u32, class: usize) -> u32 {
        let nodes = &mut self.nodes;
        *self.children.entry((parent as u64) << 32 | class as u64).or_insert_with(|| {
            nodes.push(Node {
                parent,
                label: class as u32,
                beam_frame: 0,
                beam_index: 0,
                candidate_frame: 0,
                candidate_index: 0,
            });
            nodes.len() as u32 - 1
        })
    }

    /// The frame's classes in the order prefixes consider them: without a constraint or with allowed classes, the
    /// `width + 1` most probable (allowed) ones; for a regex, every class, as the DFA decides per prefix; for a
    /// lexicon nothing (a prefix's trie children are its classes).
    fn rank_classes(&mut self, row: &[f32]) {
        self.ranked.clear();
        let blank = self.blank;
        let allowed = |c: usize| match self.constraint {
            Some(Constraint::Allowed(mask)) => mask.get(c).copied().unwrap_or(false),
            _ => true,
        };
        let by_probability = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        match self.constraint {
            Some(Constraint::Lexicon(_)) => {}
            Some(Constraint::Regex(_)) => {
                self.ranked.extend(row.iter().copied().enumerate().filter(|&(c, p)| c != blank && p > 0.0));
                self.ranked.sort_unstable_by(by_probability);
            }
            None | Some(Constraint::Allowed(_)) => {
                let keep = self.width + 1;
                for (c, &p) in row.iter().enumerate() {
                    let full = self.ranked.len() == keep;
                    if c == blank || !(p > 0.0) || (full && p <= self.ranked[keep - 1].1) || !allowed(c) {
                        continue;
                    }
                    if full {
                        self.ranked.pop();
                    }
                    let at = self.ranked.iter().position(|&(_, q)| p > q).unwrap_or(self.ranked.len());
                    self.ranked.insert(at, (c, p));
                }
            }
        }
    }

    /// Fills `growth` with the classes `beam` may grow by whose probability is at least `min_p`, at most
    /// `width + 1`, most probable first.
    fn growth_classes(&mut self, beam: &Beam, row: &[f32], min_p: f32) {
        self.growth.clear();
        let keep = self.width + 1;
        match self.constraint {
            None | Some(Constraint::Allowed(_)) => {
                self.growth.extend(self.ranked.iter().take_while(|&&(_, p)| p >= min_p).map(|&(c, p)| (c, p, 0)));
            }
            Some(Constraint::Regex(pattern)) => {
                for &(c, p) in self.ranked.iter().take_while(|&&(_, p)| p >= min_p) {
                    if let Some(next) = pattern.step(beam.state, c) {
                        self.growth.push((c, p, next));
                        if self.growth.len() == keep {
                            break;
                        }
                    }
                }
            }
            Some(Constraint::Lexicon(lexicon)) => {
                for &(c, child) in lexicon.children(beam.state) {
                    if c != self.blank && c < self.classes && row[c] > 0.0 && row[c] >= min_p {
                        self.growth.push((c, row[c], child));
                    }
                }
                self.growth.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                self.growth.truncate(keep);
            }
        }
    }

    /// Advances the beams by one frame, `frame` counting from 1.
    fn step(&mut self, frame: u32, row: &[f32]) {
        self.rank_classes(row);
        let blank_p = row[self.blank] as f64;
        self.candidates.clear();
        // Every prefix stays: a blank, or a repeat of its last class.
        for beam in &self.beams {
            let node = &mut self.nodes[beam.node as usize];
            let repeat = if node.label == NO_LABEL { 0.0 } else { beam.non_blank * row[node.label as usize] as f64 };
            (node.candidate_frame, node.candidate_index) = (frame, self.candidates.len() as u32);
            self.candidates.push(Beam { blank: beam.total() * blank_p, non_blank: repeat, reached: false, ..*beam });
        }
        let threshold = if self.beams.len() == self.width {
            self.candidates.iter().map(Beam::total).fold(f64::INFINITY, f64::min)
        } else {
            0.0
        };
        // Every prefix grows by one class.
        for i in 0..self.beams.len() {
            let beam = self.beams[i];
            let total = beam.total();
            if !(total > 0.0) {
                continue;
            }
            self.growth_classes(&beam, row, (threshold / total) as f32);
            let last = self.nodes[beam.node as usize].label;
            for g in 0..self.growth.len() {
                let (class, p, state) = self.growth[g];
                let from = if class as u32 == last { beam.blank } else { total };
                let gained = from * p as f64;
                if gained < threshold || gained == 0.0 {
                    continue;
                }
                let child = self.child(beam.node, class);
                let node = self.nodes[child as usize];
                if node.beam_frame == frame {
                    self.beams[node.beam_index as usize].reached = true;
                }
                if node.candidate_frame == frame {
                    self.candidates[node.candidate_index as usize].non_blank += gained;
                } else {
                    let node = &mut self.nodes[child as usize];
                    (node.candidate_frame, node.candidate_index) = (frame, self.candidates.len() as u32);
                    self.candidates.push(Beam { node: child, blank: 0.0, non_blank: gained, state, reached: false });
                }
            }
        }
        // A kept prefix whose parent is kept too but did not grow into it above still gets that growth.
        for beam in &self.beams {
            let node = self.nodes[beam.node as usize];
            if beam.reached || node.label == NO_LABEL {
                continue;
            }
            let parent = self.nodes[node.parent as usize];
            if parent.beam_frame != frame {
                continue;
            }
            let parent_beam = &self.beams[parent.beam_index as usize];
            let from = if node.label == parent.label { parent_beam.blank } else { parent_beam.total() };
            self.candidates[node.candidate_index as usize].non_blank += from * row[node.label as usize] as f64;
        }
        self.keep_best(frame + 1);
    }

    /// Keeps the `width` most probable candidates as the beams of frame `next_frame`, best first, rescaled.
    fn keep_best(&mut self, next_frame: u32) {
        let by_probability = |a: &Beam, b: &Beam| b.total().total_cmp(&a.total()).then(a.node.cmp(&b.node));
        if self.candidates.len() > self.width {
            self.candidates.select_nth_unstable_by(self.width - 1, by_probability);
            self.candidates.truncate(self.width);
        }
        self.candidates.sort_unstable_by(by_probability);
        let best = self.candidates.first().map_or(0.0, Beam::total);
        let scale = best > 0.0 && best.is_finite();
        if scale {
            self.log_scale += best.ln();
        }
        for (i, beam) in self.candidates.iter_mut().enumerate() {
            if scale {
                beam.blank /= best;
                beam.non_blank /= best;
            }
            let node = &mut self.nodes[beam.node as usize];
            (node.beam_frame, node.beam_index) = (next_frame, i as u32);
        }
        std::mem::swap(&mut self.beams, &mut self.candidates);
    }

    /// The most probable complete prefix among the beams, with its log probability.
    fn best_complete(&self) -> Option<(Vec<usize>, f64)> {
        let beam = self.beams.iter().find(|b| self.constraint.is_none_or(|c| c.accepts(b.state)))?;
        let mut labels = Vec::new();
        let mut node = self.nodes[beam.node as usize];
        while node.label != NO_LABEL {
            labels.push(node.label as usize);
            node = self.nodes[node.parent as usize];
        }
        labels.reverse();
        Some((labels, beam.total().ln() + self.log_scale))
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn greedy_decoding_cases() {
        let (blank, a, b) = (&[0.8f32, 0.1, 0.1][..], &[0.1f32, 0.7, 0.2][..], &[0.2f32, 0.2, 0.6][..]);
        let a_high = &[0.05f32, 0.9, 0.05][..];
        #[rustfmt::skip]
        let cases: &[(&str, Vec<f32>, &[usize], &[f32], f32)] = &[
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

    #[test]
    fn pruned_search_probability_matches_forward_on_long_lines() {
        // 200 frames of peaked rows: the probability is about 1e-20, far from underflow in the rescaled search.
        let mut rng = Rng(13);
        for case in 0..20 {
            let (frames, classes) = (200, 20);
            let probs = rng.probs(frames, classes, 9.0);
            let search = BeamSearch { width: 16, constraint: None };
            let (labels, log_p) = search.search(&probs, classes, BLANK).unwrap();
            let exact = forward_log_probability(&probs, classes, BLANK, &labels);
            assert!(log_p.is_finite() && log_p <= exact + 1e-9, "case {case}: {log_p} vs {exact}");
            assert!((log_p - exact).abs() < 1e-3, "case {case}: pruning lost little: {log_p} vs {exact}");
            let no_pruning = BeamSearch { width: 16, constraint: Some(Constraint::Allowed(vec![true; classes])) };
            assert_eq!(search.decode(&probs, classes, BLANK), no_pruning.decode(&probs, classes, BLANK));
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
