//! Writes rendered text lines in the `labels.txt` layout (as `kiln demo` does), of any size.
//!
//! `cargo run --release --example make_text_lines -- OUT_DIR TRAIN_LINES [ALPHABET] [MIN_LEN] [MAX_LEN]` writes
//! TRAIN_LINES training lines of random strings over ALPHABET (a charset string, default `0-9`) of MIN_LEN to
//! MAX_LEN characters (default 3 to 8), and a tenth as many val and test lines each.

use std::path::PathBuf;

use kiln_train::ocr::synthetic::{write_text_lines, TextLinesSpec};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, train, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: make_text_lines OUT_DIR TRAIN_LINES [ALPHABET] [MIN_LEN] [MAX_LEN]");
    };
    let train: usize = train.parse()?;
    let alphabet = rest.first().cloned().unwrap_or_else(|| "0-9".into());
    let min: usize = rest.get(1).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let max: usize = rest.get(2).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let held_out = (train / 10).max(1);
    let spec =
        TextLinesSpec { lines: (train, held_out, held_out), alphabet, length: (min, max), ..TextLinesSpec::default() };
    let lines = write_text_lines(&PathBuf::from(out), &spec)?;
    println!("wrote {lines} text lines to {out}");
    Ok(())
}
