//! Text-line recognition from a kiln OCR model's metadata: fit-height preprocessing, one run for a batch of lines
//! of any widths, and CTC decoding of each line's own frames (greedy, or beam search with an optional constraint:
//! allowed characters, a lexicon or a regular expression).

use std::path::Path;

use image::RgbImage;
use kiln_export::CtcSettings;
use serde::Serialize;

use crate::ctc::{self, BeamSearch, Constraint, Decoded};
use crate::model::Model;
use crate::preprocess::{decode_rgb, fit_height_width, Preprocess, Resize};
use crate::{metadata_check, Error, Result};

/// One line's reading.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reading {
    pub text: String,
    /// The line's confidence: greedy, the product of the characters' confidences; beam search, the probability
    /// of the text summed over its alignments.
    pub confidence: f32,
    /// Each character of `text` (a charset entry) with its confidence.
    pub chars: Vec<(String, f32)>,
}

/// How per-frame probabilities become text.
#[derive(Clone, Debug)]
pub enum Decoding {
    /// The most probable class per frame, repeats collapsed, blanks dropped.
    Greedy,
    Beam(BeamSearch),
}

/// A recognizer over a [`Model`] whose metadata says `task: ocr`.
pub struct TextRecognizer {
    model: Model,
    charset: Vec<String>,
    preprocess: Preprocess,
    ctc: CtcSettings,
    decoding: Decoding,
    output: usize,
}

impl TextRecognizer {
    /// Wraps a model with kiln OCR metadata; decodes greedily.
    pub fn new(model: Model) -> Result<Self> {
        let path = model.path().to_path_buf();
        let meta = model.metadata().ok_or_else(|| Error::NoMetadata { path: path.clone() })?;
        if meta.task != "ocr" {
            return Err(Error::WrongTask { path, expected: "ocr".into(), found: meta.task.clone() });
        }
        metadata_check::check_has_classes(&path, meta)?;
        let ctc = meta.ctc.ok_or_else(|| Error::ModelFile { path: path.clone(), reason: "no ctc settings".into() })?;
        let preprocess = model.preprocess().cloned().ok_or_else(|| Error::NoMetadata { path: path.clone() })?;
        if preprocess.resize != Resize::FitHeight {
            return Err(Error::ModelFile {
                path,
                reason: "an ocr model's input must be resized with fit_height".into(),
            });
        }
        let charset = meta.class_names.clone();
        // Output class `blank` is the blank; the charset's entries fill the others, so it is one of 0..=len.
        if ctc.blank > charset.len() {
            return Err(Error::MetadataField {
                path,
                field: "ctc.blank".into(),
                reason: format!(
                    "{} is not a class of a model with {} characters and the blank",
                    ctc.blank,
                    charset.len()
                ),
            });
        }
        if ctc.width_stride == 0 {
            return Err(Error::MetadataField { path, field: "ctc.width_stride".into(), reason: "0 pixels".into() });
        }
        let output = model.outputs().iter().position(|o| o.name == "probs").unwrap_or(0);
        let name = &model.outputs()[output].name;
        let graph_classes = metadata_check::fixed_last_dim(model.outputs(), name);
        metadata_check::check_class_count(
            &path,
            "class_names",
            charset.len() + 1,
            graph_classes,
            "classes (charset and blank)",
        )?;
        Ok(Self { model, charset, preprocess, ctc, decoding: Decoding::Greedy, output })
    }

    /// Decodes with prefix beam search of `width` beams (1 reads as greedy does).
    pub fn with_beam_search(mut self, width: usize) -> Self {
        let constraint = match self.decoding {
            Decoding::Beam(b) => b.constraint,
            Decoding::Greedy => None,
        };
        self.decoding = Decoding::Beam(BeamSearch { width: width.max(1), constraint });
        self
    }

    /// Only these characters may be read (e.g. `"0123456789"` for barcodes); each must be in the charset.
    /// Decodes with beam search (width 10 unless set).
    pub fn with_allowed_chars(self, chars: &[&str]) -> Result<Self> {
        let mut allowed = vec![false; self.charset.len() + 1];
        for c in chars {
            let i = self.class_of(c)?;
            allowed[i] = true;
        }
        Ok(self.with_constraint(Constraint::Allowed(allowed)))
    }

    /// The text read must be one of `words` (each made of charset entries). Decodes with beam search.
    pub fn with_lexicon(self, words: &[&str]) -> Result<Self> {
        let encoded = words.iter().map(|w| self.encode(w)).collect::<Result<Vec<_>>>()?;
        Ok(self.with_constraint(Constraint::lexicon(&encoded)))
    }

    /// The text read must match `pattern` as a whole (e.g. `[0-9]{12,13}`). Decodes with beam search.
    pub fn with_regex(self, pattern: &str) -> Result<Self> {
        let mut classes = self.charset.clone();
        classes.insert(self.ctc.blank.min(classes.len()), String::new());
        let constraint = Constraint::regex(pattern, &classes)?;
        Ok(self.with_constraint(constraint))
    }

    fn with_constraint(mut self, constraint: Constraint) -> Self {
        let width = match &self.decoding {
            Decoding::Beam(b) => b.width,
            Decoding::Greedy => 10,
        };
        self.decoding = Decoding::Beam(BeamSearch { width, constraint: Some(constraint) });
        self
    }

    /// The class of one charset entry.
    fn class_of(&self, c: &str) -> Result<usize> {
        let i = self
            .charset
            .iter()
            .position(|x| x == c)
            .ok_or_else(|| Error::InvalidInput(format!("{c:?} is not in the model's charset")))?;
        Ok(self.class_index(i))
    }

    /// Output class of charset entry `i`.
    fn class_index(&self, i: usize) -> usize {
        if i >= self.ctc.blank {
            i + 1
        } else {
            i
        }
    }

    /// Charset entry of output class `c` (not the blank).
    fn char_of(&self, c: usize) -> &str {
        &self.charset[if c > self.ctc.blank { c - 1 } else { c }]
    }

    /// `word` as classes, matching the longest charset entry at each position.
    fn encode(&self, word: &str) -> Result<Vec<usize>> {
        let mut rest = word;
        let mut classes = Vec::new();
        while !rest.is_empty() {
            let best = (0..self.charset.len())
                .filter(|&i| !self.charset[i].is_empty() && rest.starts_with(self.charset[i].as_str()))
                .max_by_key(|&i| self.charset[i].len())
                .ok_or_else(|| Error::InvalidInput(format!("{word:?}: {rest:?} is not made of charset entries")))?;
            classes.push(self.class_index(best));
            rest = &rest[self.charset[best].len()..];
        }
        Ok(classes)
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The characters the model reads.
    pub fn charset(&self) -> &[String] {
        &self.charset
    }

    pub fn decoding(&self) -> &Decoding {
        &self.decoding
    }

    /// Reads one decoded line image.
    pub fn predict(&self, image: &RgbImage) -> Result<Reading> {
        Ok(self.predict_batch(std::slice::from_ref(image))?.remove(0))
    }

    /// Decodes and reads an image file.
    pub fn predict_path(&self, path: &Path) -> Result<Reading> {
        let image = decode_rgb(path).map_err(|reason| Error::Image { path: path.to_path_buf(), reason })?;
        self.predict(&image)
    }

    /// Reads lines of any widths: each is fitted to the input height and padded to the input width, all run as
    /// one batch (in chunks for a fixed-batch model), and each is decoded over its own frames.
    pub fn predict_batch(&self, images: &[RgbImage]) -> Result<Vec<Reading>> {
        let per = self.preprocess.tensor_len();
        let [height, width] = self.preprocess.size;
        let fixed = self.model.fixed_batch();
        let mut readings = Vec::with_capacity(images.len());
        for group in images.chunks(fixed.unwrap_or(images.len().max(1))) {
            let batch = fixed.unwrap_or(group.len());
            let mut input = vec![0.0; batch * per];
            for (image, out) in group.iter().zip(input.chunks_mut(per)) {
                self.preprocess.apply(image, out);
            }
            let outputs = self.model.run(&input, batch)?;
            let probs = &outputs[self.output];
            metadata_check::check_batch_rows(self.model.path(), probs, batch)?;
            let &[_, frames, classes] = &probs.shape[..] else {
                return Err(Error::ModelOutput {
                    path: self.model.path().to_path_buf(),
                    output: probs.name.clone(),
                    reason: format!("expected [N, T, K] frame probabilities, got {:?}", probs.shape),
                });
            };
            if frames == 0 {
                return Err(Error::ModelOutput {
                    path: self.model.path().to_path_buf(),
                    output: probs.name.clone(),
                    reason: "0 frames per line".into(),
                });
            }
            if classes != self.charset.len() + 1 {
                return Err(Error::InvalidInput(format!(
                    "the model scores {classes} classes per frame for {} characters and the blank",
                    self.charset.len()
                )));
            }
            for (i, image) in group.iter().enumerate() {
                let content = fit_height_width(image.width(), image.height(), height, width);
                let line_frames = (content.div_ceil(self.ctc.width_stride.max(1)) as usize).clamp(1, frames);
                let start = i * frames * classes;
                readings.push(self.reading(&probs.data[start..start + line_frames * classes], classes));
            }
        }
        Ok(readings)
    }

    /// Decodes one line's `[frames, classes]` probabilities.
    pub fn decode(&self, probs: &[f32], classes: usize) -> Decoded {
        match &self.decoding {
            Decoding::Greedy => ctc::greedy(probs, classes, self.ctc.blank),
            Decoding::Beam(search) => search.decode(probs, classes, self.ctc.blank),
        }
    }

    fn reading(&self, probs: &[f32], classes: usize) -> Reading {
        let decoded = self.decode(probs, classes);
        let chars: Vec<(String, f32)> = decoded
            .labels
            .iter()
            .zip(&decoded.char_confidences)
            .map(|(&c, &p)| (self.char_of(c).to_string(), p))
            .collect();
        Reading { text: chars.iter().map(|(c, _)| c.as_str()).collect(), confidence: decoded.confidence, chars }
    }
}
