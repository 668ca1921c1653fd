//! Decoding image files: the same function `kiln-infer` uses (any format, EXIF orientation, → RGB8).

pub use kiln_infer::preprocess::decode_rgb;
