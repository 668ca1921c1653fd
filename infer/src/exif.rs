//! The EXIF orientation convention: whether an image is taken as displayed (its EXIF orientation applied, as
//! Ultralytics and every photo viewer do) or as stored (the orientation ignored, as torchvision's `CocoDetection`
//! does). A detection set's boxes are in one of the two frames; training, validation, the deployed `Detector`, drawn
//! boxes and COCO results must all use the same one. An image's size in either frame is read from its header,
//! without decoding the pixels.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use image::{ImageDecoder, ImageEncoder, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};

/// Whether the EXIF orientation is applied when an image is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Exif {
    /// The image as displayed: rotated and flipped as its EXIF orientation says (the default).
    #[default]
    Apply,
    /// The pixels as stored, whatever the EXIF orientation says.
    Ignore,
}

impl Exif {
    pub const fn name(self) -> &'static str {
        match self {
            Exif::Apply => "apply",
            Exif::Ignore => "ignore",
        }
    }
}

impl fmt::Display for Exif {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Exif {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "apply" => Ok(Exif::Apply),
            "ignore" => Ok(Exif::Ignore),
            other => Err(format!("'{other}' is not an EXIF convention (apply or ignore)")),
        }
    }
}

/// What an image's header says: its stored size and EXIF orientation (1–8; 1 when it has none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Width and height as stored.
    pub stored: (u32, u32),
    pub orientation: u8,
}

impl ImageHeader {
    /// Whether the orientation turns the image by a quarter (EXIF 5–8), swapping width and height.
    pub fn transposes(&self) -> bool {
        (5..=8).contains(&self.orientation)
    }

    /// Width and height as displayed (the orientation applied).
    pub fn displayed(&self) -> (u32, u32) {
        let (w, h) = self.stored;
        if self.transposes() {
            (h, w)
        } else {
            (w, h)
        }
    }

    /// Width and height under `exif`.
    pub fn size(&self, exif: Exif) -> (u32, u32) {
        match exif {
            Exif::Apply => self.displayed(),
            Exif::Ignore => self.stored,
        }
    }
}

/// Reads the header of the image at `path` (format guessed from its bytes). The error is a human-readable reason.
pub fn read_header(path: &Path) -> Result<ImageHeader, String> {
    let reader = ImageReader::open(path).map_err(|e| e.to_string())?;
    let reader = reader.with_guessed_format().map_err(|e| e.to_string())?;
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let stored = decoder.dimensions();
    let orientation = decoder.orientation().map_err(|e| e.to_string())?;
    Ok(ImageHeader { stored, orientation: orientation.to_exif() })
}

/// A JPEG (quality 95) of `image` whose EXIF orientation tag is `orientation` (1–8): the pixels are stored as given
/// and a viewer shows them turned as the tag says. Makes the rotated photos that test a reader's EXIF convention.
pub fn jpeg_with_orientation(image: &RgbImage, orientation: u16) -> Vec<u8> {
    let mut exif = b"MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
    exif.extend(orientation.to_be_bytes());
    exif.extend([0, 0, 0, 0, 0, 0]);
    let mut jpeg = Vec::new();
    let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95);
    encoder.set_exif_metadata(exif).expect("encoding to memory");
    encoder
        .write_image(image.as_raw(), image.width(), image.height(), image::ExtendedColorType::Rgb8)
        .expect("encoding to memory");
    jpeg
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use image::RgbImage;

    #[test]
    fn the_header_gives_both_sizes_without_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("six.jpg");
        std::fs::write(&path, jpeg_with_orientation(&RgbImage::new(40, 24), 6)).unwrap();
        let header = read_header(&path).unwrap();
        assert_eq!((header.stored, header.orientation, header.transposes()), ((40, 24), 6, true));
        assert_eq!((header.size(Exif::Apply), header.size(Exif::Ignore)), ((24, 40), (40, 24)));
        let plain = dir.path().join("plain.png");
        RgbImage::new(7, 5).save(&plain).unwrap();
        let header = read_header(&plain).unwrap();
        assert_eq!((header.orientation, header.size(Exif::Apply)), (1, (7, 5)));
        assert_eq!("ignore".parse::<Exif>().unwrap(), Exif::Ignore);
        assert!("rotate".parse::<Exif>().unwrap_err().contains("apply or ignore"));
    }
}
