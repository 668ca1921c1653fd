//! Text-recognition metrics with jiwer's definitions (PyPI `jiwer` 4.0.0, its default transforms), so that kiln's
//! numbers are the ones jiwer reports for the same pairs (`tests/fixtures/jiwer/` and `tests/text_metrics_jiwer.rs`
//! check it).
//!
//! What jiwer 4.0.0 does, read from its source (`transformations.py`, `transforms.py`, `process.py`):
//!
//! - **Characters** are Unicode scalar values (Rust `char`, what a Python `str` iterates): a combining sequence
//!   such as `e` + U+0301 counts as two characters, the precomposed (NFC) `é` as one. No normalisation is applied.
//! - **CER** (`cer_default`: `Strip`, `ReduceToListOfListOfChars`): each text loses its leading and trailing
//!   whitespace (Python's `str.strip()`); every other character counts, spaces included, and runs of spaces are
//!   not collapsed. CER = total character edit distance / total reference characters, over all pairs.
//! - **WER** (`wer_default`: `RemoveMultipleSpaces`, `Strip`, `ReduceToListOfListOfWords`): every run of two or
//!   more whitespace characters becomes one space (`re.sub(r"\s\s+", " ", s)`), the text is stripped, then split
//!   on the space character `' '` only, empty pieces dropped. So a single tab or no-break space between two words
//!   does *not* separate them (`"a\tb"` is one word) while `"a \tb"` is two words. WER = total word edit distance
//!   / total reference words.
//! - **Whitespace** is Python's: `str.isspace()` (which `\s` matches too), Rust's `char::is_whitespace` plus the
//!   four information separators U+001C–U+001F.
//! - **Empty references** are accepted (jiwer 4.0.0 no longer refuses them): they add the hypothesis's length to
//!   the errors (all insertions) and nothing to the reference length. When the total reference length is 0, jiwer
//!   returns the number of insertions itself instead of a rate; so does [`TextScores`] (0 when nothing was read
//!   either, and 0 with no pairs at all).
//!
//! jiwer has no exact-match accuracy or normalised edit distance; [`TextScores`] defines them on the same CER
//! normalisation: a pair matches exactly when the stripped texts are equal, and its normalised edit distance is the
//! character edit distance divided by the longer of the two lengths (0 when both are empty).

use serde::{Deserialize, Serialize};

/// The Levenshtein distance between `a` and `b`: the fewest insertions, deletions and substitutions turning one
/// into the other. One row of the dynamic-programming table (over the shorter sequence) at a time:
/// O(len a · len b) time, O(min len) memory.
pub fn edit_distance<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let mut row: Vec<usize> = (0..=short.len()).collect();
    for (i, x) in long.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, y) in short.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(x != y)).min(above + 1).min(row[j] + 1);
            diagonal = above;
        }
    }
    row[short.len()]
}

/// Python's `str.isspace()`: Unicode White_Space plus the information separators U+001C–U+001F.
pub fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The characters CER compares: `text` without leading and trailing whitespace, one per Unicode scalar value
/// (jiwer's `cer_default`).
pub fn cer_chars(text: &str) -> Vec<char> {
    text.trim_matches(is_python_whitespace).chars().collect()
}

/// The words WER compares (jiwer's `wer_default`): runs of two or more whitespace characters and single spaces
/// separate words, a single other whitespace character (a tab, a no-break space) does not; leading and trailing
/// whitespace is dropped.
pub fn wer_words(text: &str) -> Vec<&str> {
    let text = text.trim_matches(is_python_whitespace);
    let mut words = Vec::new();
    let (mut start, mut chars) = (0, text.char_indices().peekable());
    while let Some((i, c)) = chars.next() {
        if !is_python_whitespace(c) {
            continue;
        }
        let next_is_space = chars.peek().is_some_and(|&(_, n)| is_python_whitespace(n));
        if c != ' ' && !next_is_space {
            continue; // a lone tab, no-break space, … is part of the word
        }
        let mut end = i + c.len_utf8();
        while let Some(&(j, n)) = chars.peek() {
            if !is_python_whitespace(n) {
                break;
            }
            end = j + n.len_utf8();
            chars.next();
        }
        if i > start {
            words.push(&text[start..i]);
        }
        start = end;
    }
    if start < text.len() {
        words.push(&text[start..]);
    }
    words
}

/// CER, WER, exact-match accuracy and mean normalised edit distance over (reference, hypothesis) pairs, as jiwer
/// 4.0.0 defines CER and WER (see the module documentation).
///
/// ```
/// use kiln_infer::TextScores;
///
/// let mut scores = TextScores::default();
/// scores.add("hello world", "hallo world");
/// scores.add("kiln", "kiln");
/// assert_eq!(scores.cer(), 1.0 / 15.0);
/// assert_eq!(scores.wer(), 1.0 / 3.0);
/// assert_eq!(scores.exact_match(), 0.5);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TextScores {
    pairs: usize,
    reference_chars: usize,
    char_errors: usize,
    reference_words: usize,
    word_errors: usize,
    exact_matches: usize,
    normalised_distance_sum: f64,
}

impl TextScores {
    /// Adds one pair.
    pub fn add(&mut self, reference: &str, hypothesis: &str) {
        let (reference_chars, hypothesis_chars) = (cer_chars(reference), cer_chars(hypothesis));
        let char_errors = edit_distance(&reference_chars, &hypothesis_chars);
        let longer = reference_chars.len().max(hypothesis_chars.len());
        let reference_words = wer_words(reference);
        self.pairs += 1;
        self.reference_chars += reference_chars.len();
        self.char_errors += char_errors;
        self.reference_words += reference_words.len();
        self.word_errors += edit_distance(&reference_words, &wer_words(hypothesis));
        self.exact_matches += usize::from(reference_chars == hypothesis_chars);
        if longer > 0 {
            self.normalised_distance_sum += char_errors as f64 / longer as f64;
        }
    }

    /// Character error rate: character edit distance / reference characters, summed over the pairs (the edit
    /// distance itself when the references hold no characters).
    pub fn cer(&self) -> f64 {
        self.char_errors as f64 / self.reference_chars.max(1) as f64
    }

    /// Word error rate: word edit distance / reference words, summed over the pairs (the edit distance itself when
    /// the references hold no words).
    pub fn wer(&self) -> f64 {
        self.word_errors as f64 / self.reference_words.max(1) as f64
    }

    /// The fraction of pairs whose texts are equal after stripping leading and trailing whitespace; NaN for no
    /// pairs.
    pub fn exact_match(&self) -> f64 {
        self.exact_matches as f64 / self.pairs as f64
    }

    /// The mean over pairs of character edit distance / the longer text's length (0 for two empty texts); NaN for
    /// no pairs.
    pub fn mean_ned(&self) -> f64 {
        self.normalised_distance_sum / self.pairs as f64
    }

    /// Pairs added.
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// Reference characters, as CER counts them.
    pub fn reference_chars(&self) -> usize {
        self.reference_chars
    }

    /// Reference words, as WER counts them.
    pub fn reference_words(&self) -> usize {
        self.reference_words
    }

    /// Character edits (CER's numerator).
    pub fn char_errors(&self) -> usize {
        self.char_errors
    }

    /// Word edits (WER's numerator).
    pub fn word_errors(&self) -> usize {
        self.word_errors
    }

    /// The scores as one serialisable record.
    pub fn summary(&self) -> TextSummary {
        TextSummary {
            cer: self.cer(),
            wer: self.wer(),
            exact_match: self.exact_match(),
            mean_ned: self.mean_ned(),
            pairs: self.pairs,
            reference_chars: self.reference_chars,
            reference_words: self.reference_words,
        }
    }
}

/// [`TextScores`]' results (NaN rates serialise as JSON `null`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextSummary {
    pub cer: f64,
    pub wer: f64,
    pub exact_match: f64,
    pub mean_ned: f64,
    pub pairs: usize,
    pub reference_chars: usize,
    pub reference_words: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(text: &str) -> Vec<char> {
        text.chars().collect()
    }

    #[test]
    fn edit_distance_cases() {
        let cases: &[(&str, &str, usize)] = &[
            ("", "", 0),
            ("abc", "", 3),
            ("", "abc", 3),
            ("kitten", "sitting", 3),
            ("abc", "abc", 0),
            ("abc", "axc", 1),  // substitution
            ("abc", "abxc", 1), // insertion
            ("abc", "ac", 1),   // deletion
            ("ab", "ba", 2),    // no transpositions
            ("straße", "strasse", 2),
            ("café", "cafe", 1),
            ("cafe\u{301}", "café", 2), // decomposed: e + combining acute is two code points
            ("👍ok", "ok👍", 2),
        ];
        for &(a, b, expected) in cases {
            assert_eq!(edit_distance(&chars(a), &chars(b)), expected, "{a:?} {b:?}");
            assert_eq!(edit_distance(&chars(b), &chars(a)), expected, "{b:?} {a:?}");
        }
        assert_eq!(edit_distance(&["the", "cat", "sat"], &["the", "sat"]), 1);
    }

    #[test]
    fn normalisation_cases() {
        assert_eq!(cer_chars("  a  b \t\n"), chars("a  b"));
        assert_eq!(cer_chars("\u{1c}a\u{a0}"), chars("a"), "Python's whitespace");
        assert_eq!(cer_chars("\u{200b}a"), chars("\u{200b}a"), "a zero-width space is not whitespace");
        let words: &[(&str, &[&str])] = &[
            ("", &[]),
            ("   ", &[]),
            ("one", &["one"]),
            (" one  two   three ", &["one", "two", "three"]),
            ("a\tb", &["a\tb"]),
            ("a \tb", &["a", "b"]),
            ("a\t\tb", &["a", "b"]),
            ("a\u{a0}b c", &["a\u{a0}b", "c"]),
            ("\ta b\n", &["a", "b"]),
            ("straße café", &["straße", "café"]),
        ];
        for &(text, expected) in words {
            assert_eq!(wer_words(text), expected, "{text:?}");
        }
    }

    #[test]
    fn scores_by_hand() {
        let mut scores = TextScores::default();
        scores.add("the cat sat", "the bat sat"); // 1 char of 11, 1 word of 3
        scores.add("café", "cafe"); // 1 of 4, 1 of 1
        scores.add(" straße ", "strasse"); // 2 of 6, 1 of 1
        scores.add("ok", "ok  "); // an exact match after stripping
        assert_eq!(scores.pairs(), 4);
        assert_eq!((scores.reference_chars(), scores.char_errors()), (11 + 4 + 6 + 2, 4));
        assert_eq!((scores.reference_words(), scores.word_errors()), (3 + 1 + 1 + 1, 3));
        assert_eq!(scores.cer(), 4.0 / 23.0);
        assert_eq!(scores.wer(), 3.0 / 6.0);
        assert_eq!(scores.exact_match(), 0.25);
        let ned = (1.0 / 11.0 + 1.0 / 4.0 + 2.0 / 7.0 + 0.0) / 4.0;
        assert!((scores.mean_ned() - ned).abs() < 1e-12);
        let summary = scores.summary();
        assert_eq!((summary.cer, summary.pairs, summary.reference_words), (4.0 / 23.0, 4, 6));
    }

    #[test]
    fn empty_references() {
        let mut scores = TextScores::default();
        assert_eq!((scores.cer(), scores.wer()), (0.0, 0.0));
        assert!(scores.exact_match().is_nan() && scores.mean_ned().is_nan());
        scores.add("", "");
        assert_eq!((scores.cer(), scores.exact_match(), scores.mean_ned()), (0.0, 1.0, 0.0));
        scores.add(" ", "ab c");
        // No reference characters: the rates are the edit counts, as in jiwer.
        assert_eq!((scores.cer(), scores.wer()), (4.0, 2.0));
        assert_eq!(scores.mean_ned(), 0.5);
        scores.add("abcd", "abcd");
        assert_eq!((scores.cer(), scores.wer()), (1.0, 2.0));
    }

    #[derive(Deserialize)]
    struct Fixture {
        jiwer_version: String,
        cases: Vec<FixtureCase>,
        cer: f64,
        wer: f64,
        exact_match: f64,
        mean_ned: f64,
    }

    #[derive(Deserialize)]
    struct FixtureCase {
        reference: String,
        hypothesis: String,
        cer: f64,
        wer: f64,
    }

    /// Parity with jiwer on `tests/fixtures/jiwer/cases.json` (made by `scripts/make_jiwer_fixture.py`).
    #[test]
    fn agrees_with_jiwer() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/jiwer/cases.json");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let fixture: Fixture = serde_json::from_str(&text).unwrap();
        assert_eq!(fixture.jiwer_version, "4.0.0");
        let close = |ours: f64, theirs: f64| (ours - theirs).abs() < 1e-6;
        let mut scores = TextScores::default();
        for case in &fixture.cases {
            let mut pair = TextScores::default();
            pair.add(&case.reference, &case.hypothesis);
            let what = format!("{:?} / {:?}", case.reference, case.hypothesis);
            assert!(close(pair.cer(), case.cer), "cer of {what}: {} vs jiwer {}", pair.cer(), case.cer);
            assert!(close(pair.wer(), case.wer), "wer of {what}: {} vs jiwer {}", pair.wer(), case.wer);
            scores.add(&case.reference, &case.hypothesis);
        }
        assert!(close(scores.cer(), fixture.cer), "cer {} vs jiwer {}", scores.cer(), fixture.cer);
        assert!(close(scores.wer(), fixture.wer), "wer {} vs jiwer {}", scores.wer(), fixture.wer);
        assert!(close(scores.exact_match(), fixture.exact_match), "exact match {}", scores.exact_match());
        assert!(close(scores.mean_ned(), fixture.mean_ned), "mean NED {}", scores.mean_ned());
    }
}
