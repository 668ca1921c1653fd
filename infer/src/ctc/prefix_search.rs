//! The machinery of [`BeamSearch`](super::BeamSearch): prefixes as nodes of a prefix tree with integer ids (a
//! child map keyed by parent and class), the beams and the frame's candidates as flat vectors that frame stamps on
//! the nodes index into, so a frame merges the alignments of a prefix without hashing label sequences.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::Constraint;

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
pub(super) struct Search<'a> {
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
    pub(super) fn new(
        classes: usize,
        blank: usize,
        width: usize,
        constraint: Option<&'a Constraint>,
        frames: usize,
    ) -> Self {
        let root =
            Node { parent: 0, label: NO_LABEL, beam_frame: 1, beam_index: 0, candidate_frame: 0, candidate_index: 0 };
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

    /// The frame's classes more probable than `floor`, in the order prefixes consider them: without a constraint or
    /// with allowed classes, the `width + 1` most probable (allowed) ones; for a regex, all of them, as the DFA
    /// decides per prefix; for a lexicon none (a prefix's trie children are its classes).
    fn rank_classes(&mut self, row: &[f32], floor: f32) {
        self.ranked.clear();
        let blank = self.blank;
        match self.constraint {
            Some(Constraint::Lexicon(_)) => {}
            Some(Constraint::Regex(_)) => {
                self.ranked.extend(row.iter().copied().enumerate().filter(|&(c, p)| c != blank && p > floor));
                self.ranked.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            }
            None | Some(Constraint::Allowed(_)) => {
                let mask = match self.constraint {
                    Some(Constraint::Allowed(mask)) => Some(mask.as_slice()),
                    _ => None,
                };
                let (keep, ranked) = (self.width + 1, &mut self.ranked);
                // A class enters when more probable than this: `floor` (and 0), then, once full, the last one kept.
                let mut floor = floor.max(0.0);
                for (c, &p) in row.iter().enumerate() {
                    if p > floor && c != blank && mask.is_none_or(|m| m.get(c) == Some(&true)) {
                        if ranked.len() == keep {
                            ranked.pop();
                        }
                        ranked.push((c, p));
                        let mut i = ranked.len() - 1;
                        while i > 0 && ranked[i - 1].1 < p {
                            ranked[i] = ranked[i - 1];
                            i -= 1;
                        }
                        ranked[i] = (c, p);
                        if ranked.len() == keep {
                            floor = ranked[keep - 1].1;
                        }
                    }
                }
            }
        }
    }

    /// Fills `growth` with the classes `beam` may grow by whose growth (ignoring the repeat rule) would score at
    /// least `threshold`, at most `width + 1`, most probable first.
    fn growth_classes(&mut self, beam: &Beam, row: &[f32], threshold: f64) {
        self.growth.clear();
        let keep = self.width + 1;
        let total = beam.total();
        let scores = |p: f32| p as f64 * total >= threshold;
        match self.constraint {
            None | Some(Constraint::Allowed(_)) => {
                self.growth.extend(self.ranked.iter().take_while(|&&(_, p)| scores(p)).map(|&(c, p)| (c, p, 0)));
            }
            Some(Constraint::Regex(pattern)) => {
                for &(c, p) in self.ranked.iter().take_while(|&&(_, p)| scores(p)) {
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
                    if c != self.blank && c < self.classes && row[c] > 0.0 && scores(row[c]) {
                        self.growth.push((c, row[c], child));
                    }
                }
                self.growth.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                self.growth.truncate(keep);
            }
        }
    }

    /// Advances the beams by one frame, `frame` counting from 1.
    pub(super) fn step(&mut self, frame: u32, row: &[f32]) {
        let blank_p = row[self.blank] as f64;
        self.candidates.clear();
        // Every prefix stays: a blank, or a repeat of its last class.
        for beam in &self.beams {
            let node = &mut self.nodes[beam.node as usize];
            let repeat = if node.label == NO_LABEL { 0.0 } else { beam.non_blank * row[node.label as usize] as f64 };
            (node.candidate_frame, node.candidate_index) = (frame, self.candidates.len() as u32);
            self.candidates.push(Beam { blank: beam.total() * blank_p, non_blank: repeat, reached: false, ..*beam });
        }
        let threshold = if self.beams.len() >= self.width {
            self.candidates.iter().map(Beam::total).fold(f64::INFINITY, f64::min)
        } else {
            0.0
        };
        // No prefix grows by a class less probable than this above the threshold (the margin covers rounding).
        let best_total = self.beams.iter().map(Beam::total).fold(0.0, f64::max);
        self.rank_classes(row, if best_total > 0.0 { (threshold / best_total * (1.0 - 1e-6)) as f32 } else { 0.0 });
        // Every prefix grows by one class.
        for i in 0..self.beams.len() {
            let beam = self.beams[i];
            let total = beam.total();
            if total.is_nan() || total <= 0.0 {
                continue;
            }
            self.growth_classes(&beam, row, threshold);
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

    /// Keeps the `width` most probable candidates as the beams of frame `next_frame`, best first, rescaled. Under
    /// a lexicon or a regex, when none of them is a complete result, the most probable complete candidate is kept
    /// too (one beam more), so that incomplete prefixes do not crowd every result out.
    fn keep_best(&mut self, next_frame: u32) {
        let by_probability = |a: &Beam, b: &Beam| b.total().total_cmp(&a.total()).then(a.node.cmp(&b.node));
        if self.candidates.len() > self.width {
            self.candidates.select_nth_unstable_by(self.width - 1, by_probability);
            let mut keep = self.width;
            if let Some(constraint @ (Constraint::Lexicon(_) | Constraint::Regex(_))) = self.constraint {
                let (kept, rest) = self.candidates.split_at_mut(self.width);
                if !kept.iter().any(|b| constraint.accepts(b.state)) {
                    let complete = rest.iter().enumerate().filter(|(_, b)| constraint.accepts(b.state));
                    if let Some((i, _)) = complete.min_by(|(_, a), (_, b)| by_probability(a, b)) {
                        rest.swap(0, i);
                        keep += 1;
                    }
                }
            }
            self.candidates.truncate(keep);
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
    pub(super) fn best_complete(&self) -> Option<(Vec<usize>, f64)> {
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
