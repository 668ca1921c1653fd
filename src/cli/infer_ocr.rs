//! `kiln infer` with a text-recognition model: one line of text per image, greedy or beam-search CTC decoding with
//! an optional constraint.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use kiln_infer::{file_batches, Model, Reading, TextRecognizer};

use super::output::Format;
use kiln_infer::listing::{write_error, write_header, Listed};

/// How an OCR model's output is decoded.
#[derive(Args, Debug, Clone, Default)]
pub struct DecodeArgs {
    /// OCR models: decode with prefix beam search of this width (default: greedy; a constraint implies 10).
    #[arg(long, value_name = "WIDTH")]
    pub beam: Option<usize>,
    /// OCR models: only these characters may be read, e.g. --allowed 0123456789 for barcodes.
    #[arg(long, value_name = "CHARS")]
    pub allowed: Option<String>,
    /// OCR models: the text must be one of the words in this file (one per line).
    #[arg(long, value_name = "FILE")]
    pub lexicon: Option<PathBuf>,
    /// OCR models: the text must match this regular expression as a whole, e.g. '[0-9]{13}'.
    #[arg(long, value_name = "PATTERN")]
    pub regex: Option<String>,
}

impl DecodeArgs {
    /// Applies the options to a recognizer.
    pub fn apply(&self, mut recognizer: TextRecognizer) -> anyhow::Result<TextRecognizer> {
        let constraints = [self.allowed.is_some(), self.lexicon.is_some(), self.regex.is_some()];
        anyhow::ensure!(
            constraints.iter().filter(|c| **c).count() <= 1,
            "give at most one of --allowed, --lexicon, --regex"
        );
        if let Some(width) = self.beam {
            anyhow::ensure!(width >= 1, "--beam {width}: expected a width of at least 1");
            recognizer = recognizer.with_beam_search(width);
        }
        if let Some(chars) = &self.allowed {
            let chars: Vec<String> = chars.chars().map(String::from).collect();
            let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
            recognizer = recognizer.with_allowed_chars(&refs)?;
        }
        if let Some(file) = &self.lexicon {
            let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let words: Vec<&str> = text.lines().map(str::trim).filter(|w| !w.is_empty()).collect();
            anyhow::ensure!(!words.is_empty(), "{}: no words", file.display());
            recognizer = recognizer.with_lexicon(&words).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        }
        if let Some(pattern) = &self.regex {
            recognizer = recognizer.with_regex(pattern)?;
        }
        Ok(recognizer)
    }
}

/// Reads `files` in batches of `batch` and prints one reading per image.
pub fn run(model: Model, files: &[PathBuf], batch: usize, format: Format, decode: &DecodeArgs) -> anyhow::Result<()> {
    let Some(listing) = format.listing() else {
        anyhow::bail!("--format coco is for detection models; this model reads text");
    };
    let recognizer = decode.apply(TextRecognizer::new(model)?)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    write_header::<Reading>(&mut out, listing)?;
    let mut failed = 0;
    for batch in file_batches(files, batch) {
        for (path, reason) in &batch.unreadable {
            failed += 1;
            write_error::<Reading>(&mut out, listing, path, reason)?;
        }
        if batch.images.is_empty() {
            continue;
        }
        for (path, reading) in batch.paths.iter().zip(recognizer.predict_batch(&batch.images)?) {
            reading.write(&mut out, listing, path, &[])?;
        }
        out.flush()?;
    }
    if failed > 0 {
        eprintln!("{failed} of {} image(s) could not be read", files.len());
    }
    Ok(())
}
