//! Writes a procedural shapes data set in the ImageFolder layout (as `kiln demo` does), of any size.
//!
//! `cargo run --release --example make_shapes -- OUT_DIR PER_CLASS [SIZE] [random|by-class]`
//! writes 4 classes × PER_CLASS training images (and a quarter as many val and test images each).

use std::path::PathBuf;

use kiln_train::synthetic::{generate_shapes, Palette, ShapesSpec};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, per_class, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: make_shapes OUT_DIR PER_CLASS [SIZE] [random|by-class]");
    };
    let per_class: usize = per_class.parse()?;
    let size: u32 = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let palette = match rest.get(1).map(String::as_str) {
        None | Some("by-class") => Palette::ByClass,
        Some("random") => Palette::Random,
        Some(other) => anyhow::bail!("unknown palette {other}"),
    };
    let spec = ShapesSpec {
        classes: 4,
        per_class: (per_class, per_class / 4, per_class / 4),
        size,
        seed: 0,
        palette,
        ..Default::default()
    };
    let summary = generate_shapes(&PathBuf::from(out), &spec)?;
    println!("wrote {} images to {}", summary.images, summary.root.display());
    Ok(())
}
