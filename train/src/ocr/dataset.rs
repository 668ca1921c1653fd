//! Text-line datasets: per split folder `ROOT/<split>/`, either `labels.txt` with `name<TAB>text` lines naming
//! images in `images/` (the seeds' layout), or `gt.txt` with `relative/path<TAB>text` lines relative to the split
//! folder. Paths that leave the data root are refused. Empty labels, labels needing more frames than the model
//! has, and lines whose image is missing are skipped and reported by file and line; characters outside the
//! charset are an error listing each character and where it occurs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::charset::{frames_needed, Charset};
use crate::data::paths::safe_relative;
use crate::{Error, Result};

/// The splits a text dataset may have.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// Which labels file a split folder has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TextLayout {
    /// `labels.txt`: `name<TAB>text`, images in `images/`.
    LabelsTxt,
    /// `gt.txt`: `relative/path<TAB>text`.
    GtTxt,
}

impl TextLayout {
    fn file_name(self) -> &'static str {
        match self {
            TextLayout::LabelsTxt => "labels.txt",
            TextLayout::GtTxt => "gt.txt",
        }
    }
}

/// One labelled line image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TextSample {
    pub path: PathBuf,
    pub text: String,
}

/// A labels-file line that was left out, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SkippedLine {
    pub file: PathBuf,
    pub line: usize,
    pub reason: String,
}

/// A text dataset: its charset and the samples of each split.
#[derive(Clone, Debug)]
pub struct TextDataset {
    pub root: PathBuf,
    pub layout: TextLayout,
    pub charset: Charset,
    pub train: Vec<TextSample>,
    pub val: Vec<TextSample>,
    pub test: Vec<TextSample>,
    pub skipped: Vec<SkippedLine>,
}

impl TextDataset {
    pub fn split(&self, name: &str) -> &[TextSample] {
        match name {
            "train" => &self.train,
            "val" => &self.val,
            _ => &self.test,
        }
    }
}

/// A parsed labels line, before the charset check.
struct RawLine {
    file: PathBuf,
    line: usize,
    sample: TextSample,
}

fn read_split(root: &Path, split: &str, layout: TextLayout, skipped: &mut Vec<SkippedLine>) -> Result<Vec<RawLine>> {
    let dir = root.join(split);
    let file = dir.join(layout.file_name());
    let text = std::fs::read_to_string(&file).map_err(|source| Error::Io { path: file.clone(), source })?;
    let base = match layout {
        TextLayout::LabelsTxt => dir.join("images"),
        TextLayout::GtTxt => dir.clone(),
    };
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.trim().is_empty() {
            continue;
        }
        let Some((name, label)) = raw.split_once('\t') else {
            return Err(Error::Dataset {
                root: root.to_path_buf(),
                reason: format!("{}:{line}: expected `path<TAB>text`, found no tab", file.display()),
            });
        };
        let relative = safe_relative(name.trim()).map_err(|problem| Error::Dataset {
            root: root.to_path_buf(),
            reason: format!("{}:{line}: path '{name}' is refused: {problem}", file.display()),
        })?;
        let mut skip = |reason: String| skipped.push(SkippedLine { file: file.clone(), line, reason });
        if label.is_empty() {
            skip("empty label".into());
            continue;
        }
        let path = base.join(&relative);
        if !path.is_file() {
            skip(format!("image {} does not exist", path.display()));
            continue;
        }
        lines.push(RawLine { file: file.clone(), line, sample: TextSample { path, text: label.to_string() } });
    }
    Ok(lines)
}

/// Where a dataset's charset comes from.
#[derive(Clone, Debug)]
pub enum CharsetChoice<'a> {
    /// The config's setting: a string with ranges, a file, or `auto`.
    Setting(&'a str),
    /// A run's saved charset (evaluating or resuming it), used exactly.
    Saved(Charset),
}

/// Opens `root` with its charset; `max_frames` is the frames of a full-width line.
pub fn open(root: &Path, charset: CharsetChoice<'_>, max_frames: usize) -> Result<TextDataset> {
    let layout_of = |split: &str| {
        [TextLayout::LabelsTxt, TextLayout::GtTxt].into_iter().find(|l| root.join(split).join(l.file_name()).is_file())
    };
    let Some(layout) = layout_of("train") else {
        return Err(Error::Dataset {
            root: root.to_path_buf(),
            reason: "no train/labels.txt (name<TAB>text, images in train/images/) or train/gt.txt \
                     (relative/path<TAB>text)"
                .into(),
        });
    };
    let mut skipped = Vec::new();
    let mut splits: Vec<Vec<RawLine>> = Vec::new();
    for split in SPLITS {
        splits.push(match layout_of(split) {
            Some(l) => read_split(root, split, l, &mut skipped)?,
            None => Vec::new(),
        });
    }
    let charset = match charset {
        CharsetChoice::Saved(c) => c,
        CharsetChoice::Setting(setting) => {
            match Charset::from_setting(setting).map_err(|source| Error::Io { path: setting.into(), source })? {
                Some(c) => c,
                None => Charset::from_labels(splits[0].iter().map(|l| l.sample.text.as_str())),
            }
        }
    };
    if charset.is_empty() {
        return Err(Error::Dataset { root: root.to_path_buf(), reason: "the charset is empty".into() });
    }
    // Every character outside the charset, with where it occurs.
    let mut unknown: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut out: Vec<Vec<TextSample>> = Vec::new();
    for lines in splits {
        let mut kept = Vec::with_capacity(lines.len());
        for RawLine { file, line, sample } in lines {
            match charset.encode(&sample.text) {
                Err(missing) => {
                    for c in missing {
                        unknown.entry(c).or_default().push(format!("{}:{line}", file.display()));
                    }
                }
                Ok(classes) if frames_needed(&classes) > max_frames => skipped.push(SkippedLine {
                    file,
                    line,
                    reason: format!(
                        "label of {} characters needs {} frames; a full-width line has {max_frames}",
                        classes.len(),
                        frames_needed(&classes)
                    ),
                }),
                Ok(_) => kept.push(sample),
            }
        }
        out.push(kept);
    }
    if !unknown.is_empty() {
        let listed: Vec<String> = unknown
            .iter()
            .map(|(c, at)| {
                let more = if at.len() > 5 { format!(" and {} more", at.len() - 5) } else { String::new() };
                format!("{c:?} at {}{more}", at.iter().take(5).cloned().collect::<Vec<_>>().join(", "))
            })
            .collect();
        return Err(Error::Dataset {
            root: root.to_path_buf(),
            reason: format!(
                "{} character(s) outside the charset ({} characters): {} (add them with --charset, or use \
                 --charset auto)",
                unknown.len(),
                charset.len(),
                listed.join("; ")
            ),
        });
    }
    let [train, val, test]: [Vec<TextSample>; 3] = out.try_into().expect("three splits");
    if train.is_empty() {
        return Err(Error::Dataset { root: root.to_path_buf(), reason: "split 'train' has no usable lines".into() });
    }
    Ok(TextDataset { root: root.to_path_buf(), layout, charset, train, val, test, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(40, 16, image::Rgb([200, 200, 200])).save(path).unwrap();
    }

    fn labels(root: &Path, split: &str, lines: &[(&str, &str)]) {
        let mut text = String::new();
        for (name, label) in lines {
            write_png(&root.join(split).join("images").join(name));
            text.push_str(&format!("{name}\t{label}\n"));
        }
        std::fs::write(root.join(split).join("labels.txt"), text).unwrap();
    }

    #[test]
    fn labels_txt_and_gt_txt_both_read() {
        let dir = tempfile::tempdir().unwrap();
        labels(dir.path(), "train", &[("a.png", "12"), ("b.png", "ab")]);
        write_png(&dir.path().join("val/lines/x.png"));
        std::fs::write(dir.path().join("val/gt.txt"), "lines/x.png\tz9\r\n\n").unwrap();
        let d = open(dir.path(), CharsetChoice::Setting("0-9a-z"), 64).unwrap();
        assert_eq!(d.layout, TextLayout::LabelsTxt);
        assert_eq!(d.train.len(), 2);
        assert_eq!(d.val, [TextSample { path: dir.path().join("val/lines/x.png"), text: "z9".into() }]);
        assert!(d.test.is_empty() && d.skipped.is_empty());
    }

    #[test]
    fn bad_lines_are_skipped_and_reported_by_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        labels(dir.path(), "train", &[("a.png", "1"), ("b.png", ""), ("c.png", "1111")]);
        let file = dir.path().join("train/labels.txt");
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str("missing.png\t5\n");
        std::fs::write(&file, text).unwrap();
        // "1111" needs 7 frames; allow 6.
        let d = open(dir.path(), CharsetChoice::Setting("0-9"), 6).unwrap();
        assert_eq!(d.train.len(), 1);
        let reasons: Vec<(usize, &str)> = d.skipped.iter().map(|s| (s.line, s.reason.as_str())).collect();
        assert_eq!(reasons[0], (2, "empty label"));
        assert_eq!(reasons[2].0, 3, "{reasons:?}");
        assert!(reasons[2].1.contains("needs 7 frames"), "{reasons:?}");
        assert!(reasons[1].1.contains("missing.png") && reasons[1].0 == 4, "{reasons:?}");
    }

    #[test]
    fn characters_outside_the_charset_are_listed_with_their_lines() {
        let dir = tempfile::tempdir().unwrap();
        labels(dir.path(), "train", &[("a.png", "12"), ("b.png", "1x"), ("c.png", "x-")]);
        let err = open(dir.path(), CharsetChoice::Setting("0-9"), 64).unwrap_err().to_string();
        assert!(err.contains("\"x\" at") && err.contains("labels.txt:2") && err.contains("labels.txt:3"), "{err}");
        assert!(err.contains("\"-\" at") && err.contains("2 character(s)"), "{err}");
        let auto = open(dir.path(), CharsetChoice::Setting("auto"), 64).unwrap();
        assert_eq!(auto.charset.chars(), ["-", "1", "2", "x"]);
    }

    #[test]
    fn escaping_paths_and_missing_tabs_are_errors_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("train")).unwrap();
        std::fs::write(dir.path().join("train/gt.txt"), "../../etc/passwd\tx\n").unwrap();
        let err = open(dir.path(), CharsetChoice::Setting("a-z"), 64).unwrap_err().to_string();
        assert!(err.contains("gt.txt:1") && err.contains("refused"), "{err}");
        std::fs::write(dir.path().join("train/gt.txt"), "a.png x\n").unwrap();
        let err = open(dir.path(), CharsetChoice::Setting("a-z"), 64).unwrap_err().to_string();
        assert!(err.contains("gt.txt:1") && err.contains("no tab"), "{err}");
    }
}
