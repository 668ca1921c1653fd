//! The characters a recognizer reads. A label is split into user-perceived characters (extended grapheme
//! clusters, so `é` written as `e` + a combining accent is one character), and each must be in the charset;
//! class `i + 1` of the model is `chars[i]` (class 0 is the CTC blank).

use std::collections::BTreeSet;
use std::path::Path;

use unicode_segmentation::UnicodeSegmentation;

pub use super::settings::DEFAULT_CHARSET;

/// The `charset` value that builds the charset from the training labels.
pub const AUTO: &str = "auto";

/// The characters of `text`, as the charset counts them.
pub fn graphemes(text: &str) -> Vec<&str> {
    text.graphemes(true).collect()
}

/// An ordered set of characters; a character's class is its position + 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charset {
    chars: Vec<String>,
}

impl Charset {
    /// The charset in this order, duplicates dropped.
    pub fn new(chars: impl IntoIterator<Item = String>) -> Self {
        let mut seen = BTreeSet::new();
        Self { chars: chars.into_iter().filter(|c| seen.insert(c.clone())).collect() }
    }

    /// Parses a charset string: `a-z` is the range of code points from `a` to `z` (a `-` first, last or next to
    /// another range is itself); everything else is itself.
    pub fn parse(spec: &str) -> Self {
        let chars: Vec<&str> = graphemes(spec);
        let single = |g: &str| {
            let mut it = g.chars();
            match (it.next(), it.next()) {
                (Some(c), None) => Some(c),
                _ => None,
            }
        };
        let mut out = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            if i + 2 < chars.len() && chars[i + 1] == "-" {
                if let (Some(a), Some(b)) = (single(chars[i]), single(chars[i + 2])) {
                    if a < b {
                        out.extend((a..=b).map(String::from));
                        i += 3;
                        continue;
                    }
                }
            }
            out.push(chars[i].to_string());
            i += 1;
        }
        Self::new(out)
    }

    /// `spec` as [`Charset::parse`] reads it, or, when it names an existing file, that file's characters
    /// (newlines aside, in file order). `Ok(None)` for `auto`.
    pub fn from_setting(spec: &str) -> std::io::Result<Option<Self>> {
        if spec == AUTO {
            return Ok(None);
        }
        let path = Path::new(spec);
        if spec.len() < 4096 && path.is_file() {
            let text = std::fs::read_to_string(path)?;
            return Ok(Some(Self::new(
                graphemes(&text).into_iter().filter(|g| !matches!(*g, "\n" | "\r\n" | "\r")).map(String::from),
            )));
        }
        Ok(Some(Self::parse(spec)))
    }

    /// Every character of `labels`, sorted by code points.
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = &'a str>) -> Self {
        let set: BTreeSet<&str> = labels.into_iter().flat_map(graphemes).collect();
        Self { chars: set.into_iter().map(String::from).collect() }
    }

    pub fn chars(&self) -> &[String] {
        &self.chars
    }

    pub fn len(&self) -> usize {
        self.chars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The model's classes: the characters and the blank.
    pub fn num_classes(&self) -> usize {
        self.chars.len() + 1
    }

    /// The classes of `text`, or the characters of it that are not in the charset.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, Vec<String>> {
        let mut missing = Vec::new();
        let classes = graphemes(text)
            .into_iter()
            .filter_map(|g| match self.chars.iter().position(|c| c == g) {
                Some(i) => Some(i as i64 + 1),
                None => {
                    if !missing.iter().any(|m| m == g) {
                        missing.push(g.to_string());
                    }
                    None
                }
            })
            .collect();
        if missing.is_empty() {
            Ok(classes)
        } else {
            Err(missing)
        }
    }

    /// The text of classes (blank and unknown classes are skipped).
    pub fn decode(&self, classes: &[usize]) -> String {
        classes.iter().filter_map(|&c| c.checked_sub(1).and_then(|i| self.chars.get(i))).map(String::as_str).collect()
    }
}

/// The frames CTC needs for `classes`: one per character, plus a blank between two equal neighbours.
pub fn frames_needed(classes: &[i64]) -> usize {
    classes.len() + classes.windows(2).filter(|w| w[0] == w[1]).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_expand_and_dashes_stay_literal() {
        let c = Charset::parse(DEFAULT_CHARSET);
        assert_eq!(c.len(), 62);
        assert_eq!((c.chars()[0].as_str(), c.chars()[10].as_str(), c.chars()[61].as_str()), ("0", "A", "z"));
        assert_eq!(Charset::parse("-a-c-").chars(), ["-", "a", "b", "c"]);
        assert_eq!(Charset::parse("z-a").chars(), ["z", "-", "a"], "a reversed range is three characters");
        assert_eq!(Charset::parse("aab ").chars(), ["a", "b", " "], "duplicates dropped, spaces kept");
    }

    #[test]
    fn characters_are_graphemes_not_bytes() {
        // "é" as e + U+0301 is one character; so is a flag of two regional indicators.
        let text = "cafe\u{301} \u{1F1EB}\u{1F1F7}ß";
        assert_eq!(graphemes(text), ["c", "a", "f", "e\u{301}", " ", "\u{1F1EB}\u{1F1F7}", "ß"]);
        let c = Charset::from_labels([text, "ab"]);
        let classes = c.encode(text).unwrap();
        assert_eq!(classes.len(), 7);
        let decoded = c.decode(&classes.iter().map(|&x| x as usize).collect::<Vec<_>>());
        assert_eq!(decoded, text);
    }

    #[test]
    fn unknown_characters_are_listed_once() {
        let c = Charset::parse("0-9");
        assert_eq!(c.encode("12a3a-").unwrap_err(), ["a", "-"]);
        assert_eq!(c.encode("").unwrap(), Vec::<i64>::new());
    }

    #[test]
    fn a_file_gives_its_characters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chars.txt");
        std::fs::write(&path, "ab\nc d\r\n").unwrap();
        let c = Charset::from_setting(path.to_str().unwrap()).unwrap().unwrap();
        assert_eq!(c.chars(), ["a", "b", "c", " ", "d"]);
        assert!(Charset::from_setting(AUTO).unwrap().is_none());
    }

    #[test]
    fn repeats_need_a_blank_between() {
        assert_eq!(frames_needed(&[1, 1, 2, 2, 2, 3]), 9);
        assert_eq!(frames_needed(&[]), 0);
    }
}
