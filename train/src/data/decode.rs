//! Decoding an image file to 8-bit RGB, whatever its format, colour type or EXIF orientation.

use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

/// Decodes `path` to RGB8: grayscale, palette, 16-bit and RGBA images are converted (alpha is dropped), and the
/// EXIF orientation is applied. The error is a human-readable reason (the caller knows the path).
pub fn decode_rgb(path: &Path) -> Result<RgbImage, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() == 0 {
        return Err("empty file".into());
    }
    let reader = ImageReader::open(path).map_err(|e| e.to_string())?;
    let reader = reader.with_guessed_format().map_err(|e| e.to_string())?;
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let orientation = decoder.orientation().map_err(|e| e.to_string())?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())?;
    image.apply_orientation(orientation);
    Ok(match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgba, RgbaImage};

    #[test]
    fn grayscale_and_rgba_become_rgb() {
        let dir = tempfile::tempdir().unwrap();
        let gray = dir.path().join("g.png");
        GrayImage::from_pixel(3, 2, Luma([77])).save(&gray).unwrap();
        let rgb = decode_rgb(&gray).unwrap();
        assert_eq!(rgb.dimensions(), (3, 2));
        assert_eq!(rgb.get_pixel(1, 1).0, [77, 77, 77]);

        let rgba = dir.path().join("a.png");
        RgbaImage::from_pixel(2, 2, Rgba([10, 20, 30, 0])).save(&rgba).unwrap();
        assert_eq!(decode_rgb(&rgba).unwrap().get_pixel(0, 0).0, [10, 20, 30]);
    }

    #[test]
    fn empty_and_truncated_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("e.jpg");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(decode_rgb(&empty).unwrap_err(), "empty file");

        let good = dir.path().join("g.png");
        RgbImage::from_pixel(64, 64, image::Rgb([1, 2, 3])).save(&good).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let truncated = dir.path().join("t.png");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        assert!(decode_rgb(&truncated).is_err());
    }
}
