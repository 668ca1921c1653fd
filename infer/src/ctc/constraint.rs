//! The constraints of a CTC beam search ([`Constraint`]): allowed classes, a lexicon (a trie of words) or a regular
//! expression over the classes' text (a DFA). A constraint gives every prefix a state (a trie node, a DFA state)
//! that says which classes it may grow by and whether it is a complete result.

use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::util::primitives::StateID;
use regex_automata::util::{start, syntax};
use regex_automata::{Anchored, MatchKind};

use crate::{Error, Result};

/// What a [`BeamSearch`](super::BeamSearch) may read.
#[derive(Clone, Debug)]
pub enum Constraint {
    /// Only classes whose entry is `true` may be emitted (e.g. digits only for barcodes); classes past the end of
    /// the list may not.
    Allowed(Vec<bool>),
    /// The result must be one of a list of words.
    Lexicon(Lexicon),
    /// The result, as text, must match a regular expression as a whole.
    Regex(TextPattern),
}

impl Constraint {
    /// A [`Constraint::Lexicon`] of `words`, each a sequence of classes.
    pub fn lexicon<W: AsRef<[usize]>>(words: impl IntoIterator<Item = W>) -> Self {
        Constraint::Lexicon(Lexicon::new(words))
    }

    /// A [`Constraint::Regex`]: `pattern` (regex crate syntax, anchored at both ends whether or not it says so)
    /// over the text of the classes read, `charset[class]` being a class's text (the blank's entry is ignored).
    /// An invalid pattern is [`Error::InvalidInput`].
    pub fn regex<S: AsRef<str>>(pattern: &str, charset: &[S]) -> Result<Self> {
        TextPattern::new(pattern, charset).map(Constraint::Regex)
    }

    /// Whether a prefix in `state` is a complete result.
    pub(super) fn accepts(&self, state: u32) -> bool {
        match self {
            Constraint::Allowed(_) => true,
            Constraint::Lexicon(lexicon) => lexicon.nodes[state as usize].is_word,
            Constraint::Regex(pattern) => pattern.accepts(StateID::new_unchecked(state as usize)),
        }
    }

    /// The state of the empty prefix.
    pub(super) fn start(&self) -> u32 {
        match self {
            Constraint::Regex(pattern) => pattern.start.as_u32(),
            _ => 0,
        }
    }
}

/// Words as a trie of classes, for [`Constraint::Lexicon`]: a prefix may grow only along the trie, and only a
/// complete word is a result. When no beam ends on a complete word (the words' alignments were all pruned), every
/// word is scored exactly with [`ctc_forward_probability`](super::ctc_forward_probability) and the most probable
/// one (the first on ties) is the result, so a lexicon always reads one of its words (if any can be read).
#[derive(Clone, Debug)]
pub struct Lexicon {
    words: Vec<Vec<usize>>,
    nodes: Vec<TrieNode>,
}

#[derive(Clone, Debug, Default)]
struct TrieNode {
    children: Vec<(usize, u32)>,
    is_word: bool,
}

impl Lexicon {
    /// The trie of `words`, each a sequence of classes. Words holding the blank or a class the model lacks are
    /// kept but can never be read.
    pub fn new<W: AsRef<[usize]>>(words: impl IntoIterator<Item = W>) -> Self {
        let mut lexicon = Self { words: Vec::new(), nodes: vec![TrieNode::default()] };
        for word in words {
            let word = word.as_ref();
            let mut node = 0;
            for &class in word {
                node = match lexicon.nodes[node].children.iter().find(|&&(c, _)| c == class) {
                    Some(&(_, child)) => child as usize,
                    None => {
                        lexicon.nodes.push(TrieNode::default());
                        let child = lexicon.nodes.len() - 1;
                        lexicon.nodes[node].children.push((class, child as u32));
                        child
                    }
                };
            }
            lexicon.nodes[node].is_word = true;
            lexicon.words.push(word.to_vec());
        }
        lexicon
    }

    /// The words, in the order given.
    pub fn words(&self) -> &[Vec<usize>] {
        &self.words
    }

    /// The (class, trie node) children of trie node `node` (0 is the root, the empty prefix).
    pub(super) fn children(&self, node: u32) -> &[(usize, u32)] {
        &self.nodes[node as usize].children
    }
}

/// A regular expression over the text of classes, for [`Constraint::Regex`]: a dense DFA (anchored start, all
/// matches kept so that a full match is never cut short) that a prefix steps through the UTF-8 bytes of each class
/// it emits. A prefix whose state is dead is dropped; a result must reach a match state at the end of input.
#[derive(Clone, Debug)]
pub struct TextPattern {
    pattern: String,
    dfa: Box<dense::DFA<Vec<u32>>>,
    start: StateID,
    class_texts: Vec<Box<[u8]>>,
}

/// The most memory a pattern's DFA may take while being built and once built.
const PATTERN_SIZE_LIMIT: usize = 16 << 20;

impl TextPattern {
    /// `pattern` over `charset[class]`, the text of each class (see [`Constraint::regex`]).
    pub fn new<S: AsRef<str>>(pattern: &str, charset: &[S]) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidInput(format!("regex {pattern:?}: {reason}"));
        let dfa = dense::Builder::new()
            .configure(
                dense::Config::new()
                    .start_kind(StartKind::Anchored)
                    .match_kind(MatchKind::All)
                    .dfa_size_limit(Some(PATTERN_SIZE_LIMIT))
                    .determinize_size_limit(Some(PATTERN_SIZE_LIMIT)),
            )
            .syntax(syntax::Config::new().utf8(true))
            .build(pattern)
            .map_err(|e| invalid(e.to_string()))?;
        let start =
            dfa.start_state(&start::Config::new().anchored(Anchored::Yes)).map_err(|e| invalid(e.to_string()))?;
        let class_texts = charset.iter().map(|text| text.as_ref().as_bytes().into()).collect();
        Ok(Self { pattern: pattern.to_string(), dfa: Box::new(dfa), start, class_texts })
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the text of `labels` matches the pattern as a whole.
    pub fn is_match(&self, labels: &[usize]) -> bool {
        labels.iter().try_fold(self.start, |state, &class| self.next(state, class)).is_some_and(|s| self.accepts(s))
    }

    /// The DFA state (as a `u32`) after a prefix in `state` emits `class`, or `None` when no match can follow.
    pub(super) fn step(&self, state: u32, class: usize) -> Option<u32> {
        self.next(StateID::new_unchecked(state as usize), class).map(|s| s.as_u32())
    }

    /// The state after emitting `class`, or `None` when no match can follow (or the class has no text entry).
    fn next(&self, mut state: StateID, class: usize) -> Option<StateID> {
        for &byte in self.class_texts.get(class)?.iter() {
            state = self.dfa.next_state(state, byte);
            if self.dfa.is_dead_state(state) || self.dfa.is_quit_state(state) {
                return None;
            }
        }
        Some(state)
    }

    fn accepts(&self, state: StateID) -> bool {
        self.dfa.is_match_state(self.dfa.next_eoi_state(state))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{frames, Rng};
    use super::super::{greedy, BeamSearch, Decoded};
    use super::*;

    const BLANK: usize = 0;

    #[test]
    fn allowed_classes_only() {
        let mut rng = Rng(21);
        let allowed = vec![false, true, false, true, true];
        for case in 0..100 {
            let frames = 1 + rng.below(20);
            let probs = rng.probs(frames, 5, 4.0);
            for width in [1, 4] {
                let search = BeamSearch { width, constraint: Some(Constraint::Allowed(allowed.clone())) };
                let decoded = search.decode(&probs, 5, BLANK);
                assert!(decoded.labels.iter().all(|&c| allowed[c]), "case {case}: {:?}", decoded.labels);
            }
        }
        // A short mask: the classes past its end are not allowed.
        let probs = frames(&[&[0.1, 0.2, 0.7], &[0.5, 0.4, 0.1]]);
        let decoded =
            BeamSearch { width: 4, constraint: Some(Constraint::Allowed(vec![true, true])) }.decode(&probs, 3, BLANK);
        assert_eq!(decoded.labels, vec![1]);
    }

    #[test]
    fn lexicon_reads_a_word() {
        let (c, a, o, t, d, g) = (1, 2, 3, 4, 5, 6);
        let row = |class: usize, p: f32| {
            let mut row = vec![(1.0 - p) / 6.0; 7];
            row[class] = p;
            row
        };
        // Greedy reads "cot"; the lexicon knows "cat" and "dog".
        let probs = [row(c, 0.9), row(0, 0.8), row(o, 0.5), row(t, 0.9)].concat();
        let probs = {
            let mut p = probs;
            p[2 * 7 + a] = 0.3;
            p[2 * 7 + o] = 0.4;
            p
        };
        assert_eq!(greedy(&probs, 7, BLANK).labels, vec![c, o, t]);
        let lexicon = Constraint::lexicon(&[vec![c, a, t], vec![d, o, g]]);
        for width in [1, 10] {
            let decoded = BeamSearch { width, constraint: Some(lexicon.clone()) }.decode(&probs, 7, BLANK);
            assert_eq!(decoded.labels, vec![c, a, t], "width {width}");
        }
        let mut rng = Rng(23);
        let words = [vec![1, 2], vec![2, 1, 3], vec![3, 3], vec![1]];
        for case in 0..100 {
            let frames = 1 + rng.below(12);
            let probs = rng.probs(frames, 4, 4.0);
            let search = BeamSearch { width: 1 + rng.below(4), constraint: Some(Constraint::lexicon(&words)) };
            let decoded = search.decode(&probs, 4, BLANK);
            assert!(words.contains(&decoded.labels), "case {case}: {:?}", decoded.labels);
        }
    }

    #[test]
    fn lexicon_falls_back_to_scoring_every_word() {
        // One beam keeps "a" (0.45) over "ab" (0.05), and "a" is not a word: the words are scored exactly, and
        // "ba" (b then a: 0.4 × 0.45) beats "ab" (0.5 × 0.1).
        let probs = frames(&[&[0.1, 0.5, 0.4], &[0.45, 0.45, 0.1]]);
        let search = BeamSearch { width: 1, constraint: Some(Constraint::lexicon(&[vec![1, 2], vec![2, 1]])) };
        assert!(search.search(&probs, 3, BLANK).is_none(), "no beam completes a word");
        let decoded = search.decode(&probs, 3, BLANK);
        assert_eq!(decoded.labels, vec![2, 1]);
        assert!((decoded.confidence - 0.18).abs() < 1e-6);
        assert_eq!(decoded.char_confidences, vec![0.4, 0.45]);
        // Words that cannot be read (a blank, an unknown class) are skipped; none left reads nothing.
        let unreadable = BeamSearch { width: 2, constraint: Some(Constraint::lexicon(&[vec![0], vec![7]])) };
        assert_eq!(unreadable.decode(&probs, 3, BLANK), Decoded::empty(0.0));
    }

    #[test]
    fn regex_constrains_the_text() {
        let charset: Vec<String> =
            std::iter::once(String::new()).chain("0123456789ab".chars().map(String::from)).collect();
        let digit = |d: usize| d + 1;
        let classes = charset.len();
        let row = |class: usize, p: f32| {
            let mut row = vec![(1.0 - p) / (classes - 1) as f32; classes];
            row[class] = p;
            row
        };
        // Greedy reads "12a4"; three digits reads "124".
        let probs = [row(digit(1), 0.9), row(digit(2), 0.9), row(11, 0.6), row(0, 0.9), row(digit(4), 0.8)].concat();
        let text_of = |labels: &[usize]| labels.iter().map(|&c| charset[c].as_str()).collect::<String>();
        assert_eq!(text_of(&greedy(&probs, classes, BLANK).labels), "12a4");
        let three_digits = Constraint::regex("^[0-9]{3}$", &charset).unwrap();
        for width in [1, 10] {
            let decoded = BeamSearch { width, constraint: Some(three_digits.clone()) }.decode(&probs, classes, BLANK);
            assert_eq!(text_of(&decoded.labels), "124", "width {width}");
        }
        // Unanchored patterns match as a whole too.
        let decoded = BeamSearch { width: 10, constraint: Some(Constraint::regex("[0-9]+", &charset).unwrap()) }
            .decode(&probs, classes, BLANK);
        assert_eq!(text_of(&decoded.labels), "124");
        // Nothing matching survives: an empty result of confidence 0.
        let five = BeamSearch { width: 4, constraint: Some(Constraint::regex("b{5}", &charset).unwrap()) };
        assert_eq!(five.decode(&probs, classes, BLANK), Decoded::empty(0.0));
        // Random lines of at least twice as many frames as digits (on a line barely longer than the text, a narrow
        // beam can lose every prefix long enough to complete, and then reads nothing).
        let mut rng = Rng(29);
        for case in 0..100 {
            let frames = 6 + rng.below(30);
            let probs = rng.probs(frames, classes, 4.0);
            let decoded =
                BeamSearch { width: 5, constraint: Some(three_digits.clone()) }.decode(&probs, classes, BLANK);
            let text = text_of(&decoded.labels);
            assert!(text.len() == 3 && text.chars().all(|c| c.is_ascii_digit()), "case {case}: {text:?}");
        }
    }

    #[test]
    fn patterns() {
        let charset = ["", "a", "b", "é", "12"];
        let pattern = TextPattern::new("(a|ab)é*", &charset).unwrap();
        assert_eq!(pattern.as_str(), "(a|ab)é*");
        for (labels, expected) in [
            (&[1][..], true),
            (&[1, 2], true),
            (&[1, 2, 3, 3], true),
            (&[2], false),
            (&[], false),
            (&[1, 2, 2], false),
            (&[1, 0, 2], true), // the blank's text is empty
            (&[9], false),      // no text
        ] {
            assert_eq!(pattern.is_match(labels), expected, "{labels:?}");
        }
        let digits = TextPattern::new(r"^\d{2,3}$", &charset).unwrap();
        assert!(digits.is_match(&[4]) && !digits.is_match(&[4, 4]), "class 4 reads two digits");
        let error = Constraint::regex("[0-9", &charset).unwrap_err();
        assert!(matches!(&error, Error::InvalidInput(m) if m.starts_with("regex \"[0-9\"")), "{error}");
    }

    #[test]
    fn lexicon_trie() {
        let lexicon = Lexicon::new([&[1, 2][..], &[1, 2, 3], &[2], &[]]);
        assert_eq!(lexicon.words().len(), 4);
        let root = Constraint::Lexicon(lexicon.clone());
        assert!(root.accepts(0), "the empty word");
        let a = lexicon.children(0).iter().find(|&&(c, _)| c == 1).unwrap().1;
        assert!(!root.accepts(a));
        let ab = lexicon.children(a)[0].1;
        assert!(root.accepts(ab) && lexicon.children(ab).len() == 1);
    }
}
