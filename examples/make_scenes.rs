//! Writes procedural detection scenes in the CSV layout (as `kiln demo` does), of any size.
//!
//! `cargo run --release --example make_scenes -- OUT_DIR TRAIN_IMAGES [SIZE] [CLASSES]` writes TRAIN_IMAGES
//! square SIZE-pixel training scenes (default 128) with up to 3 objects of CLASSES shape classes (default 3), and a
//! quarter as many val and test scenes each.

use std::path::PathBuf;

use kiln_train::detect::synthetic::{generate_scenes, ScenesSpec};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, train, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: make_scenes OUT_DIR TRAIN_IMAGES [SIZE] [CLASSES]");
    };
    let train: usize = train.parse()?;
    let size: u32 = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(128);
    let classes: usize = rest.get(1).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let spec = ScenesSpec { classes, images: (train, train / 4, train / 4), size: (size, size), ..Default::default() };
    let summary = generate_scenes(&PathBuf::from(out), &spec)?;
    println!("wrote {} images with {} boxes to {}", summary.images, summary.boxes, summary.root.display());
    Ok(())
}
