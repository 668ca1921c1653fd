//! Preprocessing shared by every task and by training's evaluation path: decode (any format, EXIF orientation,
//! grayscale/palette/RGBA → RGB), resize (stretch or letterbox, antialiased), normalise, lay out as NCHW floats.

use std::cell::RefCell;
use std::path::Path;

use fast_image_resize as fir;
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use kiln_export::ModelMetadata;

use crate::exif::Exif;
use crate::{Error, Result};

/// Decodes `path` to RGB8: grayscale, palette, 16-bit and RGBA images are converted (alpha is dropped), and the
/// EXIF orientation is applied. The error is a human-readable reason (the caller knows the path).
pub fn decode_rgb(path: &Path) -> std::result::Result<RgbImage, String> {
    decode_rgb_with(path, Exif::Apply)
}

/// [`decode_rgb`], applying the EXIF orientation or not as `exif` says.
pub fn decode_rgb_with(path: &Path, exif: Exif) -> std::result::Result<RgbImage, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() == 0 {
        return Err("empty file".into());
    }
    let reader = ImageReader::open(path).map_err(|e| e.to_string())?;
    let reader = reader.with_guessed_format().map_err(|e| e.to_string())?;
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let orientation = decoder.orientation().map_err(|e| e.to_string())?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())?;
    if exif == Exif::Apply {
        image.apply_orientation(orientation);
    }
    Ok(match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// A rectangle of source pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Crop {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

impl Crop {
    /// The whole of an image.
    pub fn full(image: &RgbImage) -> Self {
        Crop { left: 0.0, top: 0.0, width: image.width() as f64, height: image.height() as f64 }
    }
}

thread_local! {
    static RESIZER: RefCell<fir::Resizer> = RefCell::new(fir::Resizer::new());
}

/// Resizes `crop` of `image` to `width`×`height` RGB8 (row-major) with antialiased bilinear filtering.
pub fn resize_region(image: &RgbImage, crop: Crop, width: u32, height: u32) -> Vec<u8> {
    let (w, h) = image.dimensions();
    let src = fir::images::ImageRef::new(w, h, image.as_raw(), fir::PixelType::U8x3)
        .expect("an RgbImage's buffer matches its dimensions");
    let mut dst = fir::images::Image::new(width.max(1), height.max(1), fir::PixelType::U8x3);
    let options = fir::ResizeOptions::new().resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear)).crop(
        crop.left,
        crop.top,
        crop.width,
        crop.height,
    );
    RESIZER.with(|r| r.borrow_mut().resize(&src, &mut dst, &options)).expect("same pixel type, valid crop");
    dst.into_vec()
}

/// How an image is brought to the model's input size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Resize {
    /// Resize to exactly the input size, ignoring the aspect ratio (what kiln's training evaluates on).
    Stretch,
    /// Keep the aspect ratio, fit inside the input size and pad the rest with grey (114).
    Letterbox,
    /// Text lines: resize to the input height keeping the aspect ratio, at most the input width (a wider line is
    /// squeezed to it), placed at the left and padded on the right with grey (114). See [`fit_height_width`].
    FitHeight,
    /// timm's evaluation resize: the shorter side to `floor(size / crop_pct)`, then the centre `size` × `size`
    /// (for a non-square input, each side to `floor(side / crop_pct)`, then the centre crop). Keeps the aspect
    /// ratio; `crop_pct` in (0, 1] (timm's ConvNeXt uses 0.875 at 224 px, 1.0 at 384 px).
    CenterCrop { crop_pct: f32 },
}

/// timm's default `crop_pct`, used when a model's metadata asks for `center_crop` without one.
pub const DEFAULT_CROP_PCT: f32 = 0.875;

/// The region of a `width`×`height` image that [`Resize::CenterCrop`] to `[out_h, out_w]` keeps, in its pixels.
pub fn center_crop_region(width: u32, height: u32, out_h: u32, out_w: u32, crop_pct: f32) -> Crop {
    let (iw, ih) = (width as f64, height as f64);
    let pct = f64::from(crop_pct);
    // The size the image is resized to before the centre crop, as timm computes it.
    let (scaled_w, scaled_h) = if out_h == out_w {
        let short = (out_h as f64 / pct).floor();
        if width <= height {
            (short, (short * ih / iw).floor())
        } else {
            ((short * iw / ih).floor(), short)
        }
    } else {
        ((out_w as f64 / pct).floor(), (out_h as f64 / pct).floor())
    };
    let (cw, ch) = ((out_w as f64).min(scaled_w) * iw / scaled_w, (out_h as f64).min(scaled_h) * ih / scaled_h);
    Crop { left: (iw - cw) / 2.0, top: (ih - ch) / 2.0, width: cw, height: ch }
}

/// The width a `width`×`height` line takes after [`Resize::FitHeight`] to `[input_height, input_width]`.
pub fn fit_height_width(width: u32, height: u32, input_height: u32, input_width: u32) -> u32 {
    let scaled = (width as f64 * input_height as f64 / height.max(1) as f64).round() as u32;
    scaled.clamp(1, input_width.max(1))
}

/// The order of the colour channels the model expects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChannelOrder {
    #[default]
    Rgb,
    /// Blue, green, red (models trained on OpenCV-loaded images); `mean` and `std` are then in BGR order too.
    Bgr,
}

/// Where a letterboxed image landed inside the input: scale and offset, to map outputs back to the image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    pub scale_x: f32,
    pub scale_y: f32,
    pub offset_x: u32,
    pub offset_y: u32,
}

/// The grey letterboxing pads with.
pub const LETTERBOX_FILL: u8 = 114;

/// Everything between an image and the model's input tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// `[height, width]`.
    pub size: [u32; 2],
    pub resize: Resize,
    /// Per-channel mean and standard deviation on 0..1 values, in the model's channel order.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub channels: ChannelOrder,
}

impl Preprocess {
    /// The preprocessing a model's metadata describes.
    pub fn from_metadata(metadata: &ModelMetadata) -> Result<Self> {
        let input = &metadata.input;
        if input.layout != "NCHW" {
            return Err(Error::Unsupported(format!("input layout {}", input.layout)));
        }
        let channels = match input.color.as_str() {
            "RGB" => ChannelOrder::Rgb,
            "BGR" => ChannelOrder::Bgr,
            other => return Err(Error::Unsupported(format!("colour order '{other}'"))),
        };
        let resize = match input.resize.as_str() {
            "stretch" => Resize::Stretch,
            "letterbox" => Resize::Letterbox,
            "fit_height" => Resize::FitHeight,
            "center_crop" => {
                let crop_pct = input.crop_pct.unwrap_or(DEFAULT_CROP_PCT);
                if !(crop_pct > 0.0 && crop_pct <= 1.0) {
                    return Err(Error::Unsupported(format!("crop_pct {crop_pct} (it must be in (0, 1])")));
                }
                Resize::CenterCrop { crop_pct }
            }
            other => return Err(Error::Unsupported(format!("resize mode '{other}'"))),
        };
        Ok(Self { size: input.size, resize, mean: input.mean, std: input.std, channels })
    }

    /// Floats per image: `3 × height × width`.
    pub fn tensor_len(&self) -> usize {
        3 * self.size[0] as usize * self.size[1] as usize
    }

    /// Writes the normalised CHW tensor of `image` into `out` (length [`Preprocess::tensor_len`]) and returns where
    /// the image was placed.
    pub fn apply(&self, image: &RgbImage, out: &mut [f32]) -> Placement {
        let [h, w] = self.size;
        assert_eq!(out.len(), self.tensor_len(), "output buffer must hold 3 x height x width floats");
        match self.resize {
            Resize::Stretch => {
                let pixels = resize_region(image, Crop::full(image), w, h);
                self.normalize(&pixels, w as usize, h as usize, out);
                let (iw, ih) = image.dimensions();
                Placement { scale_x: w as f32 / iw as f32, scale_y: h as f32 / ih as f32, offset_x: 0, offset_y: 0 }
            }
            Resize::Letterbox => {
                let (iw, ih) = image.dimensions();
                let scale = (w as f32 / iw as f32).min(h as f32 / ih as f32);
                let (rw, rh) = (
                    ((iw as f32 * scale).round() as u32).clamp(1, w),
                    ((ih as f32 * scale).round() as u32).clamp(1, h),
                );
                let (ox, oy) = ((w - rw) / 2, (h - rh) / 2);
                let resized = resize_region(image, Crop::full(image), rw, rh);
                let mut canvas = vec![LETTERBOX_FILL; (w * h * 3) as usize];
                for y in 0..rh as usize {
                    let dst = ((y + oy as usize) * w as usize + ox as usize) * 3;
                    canvas[dst..dst + rw as usize * 3]
                        .copy_from_slice(&resized[y * rw as usize * 3..(y + 1) * rw as usize * 3]);
                }
                self.normalize(&canvas, w as usize, h as usize, out);
                Placement { scale_x: scale, scale_y: scale, offset_x: ox, offset_y: oy }
            }
            Resize::CenterCrop { crop_pct } => {
                let (iw, ih) = image.dimensions();
                let crop = center_crop_region(iw, ih, h, w, crop_pct);
                let pixels = resize_region(image, crop, w, h);
                self.normalize(&pixels, w as usize, h as usize, out);
                // A classifier's resize: the placement gives the scale (the crop's offset lies outside the input).
                Placement {
                    scale_x: w as f32 / crop.width as f32,
                    scale_y: h as f32 / crop.height as f32,
                    offset_x: 0,
                    offset_y: 0,
                }
            }
            Resize::FitHeight => {
                let (iw, ih) = image.dimensions();
                let rw = fit_height_width(iw, ih, h, w);
                let resized = resize_region(image, Crop::full(image), rw, h);
                let canvas = pad_right(&resized, rw, h, w);
                self.normalize(&canvas, w as usize, h as usize, out);
                Placement { scale_x: rw as f32 / iw as f32, scale_y: h as f32 / ih as f32, offset_x: 0, offset_y: 0 }
            }
        }
    }
}

/// Row-major RGB8 `pixels` of `width`×`height` placed at the left of a `canvas_width` canvas of grey (114).
pub fn pad_right(pixels: &[u8], width: u32, height: u32, canvas_width: u32) -> Vec<u8> {
    let (w, cw) = (width.min(canvas_width) as usize * 3, canvas_width as usize * 3);
    let mut canvas = vec![LETTERBOX_FILL; cw * height as usize];
    for (row, src) in canvas.chunks_mut(cw).zip(pixels.chunks(width as usize * 3)) {
        row[..w].copy_from_slice(&src[..w]);
    }
    canvas
}

impl Preprocess {
    fn normalize(&self, pixels: &[u8], width: usize, height: usize, out: &mut [f32]) {
        normalize_chw(pixels, width, height, &self.mean, &self.std, self.channels, out);
    }
}

/// `(x / 255 - mean) / std` per channel, from row-major RGB8 to planar CHW in `order` (`mean` and `std` are in
/// that order too).
pub fn normalize_chw(
    pixels: &[u8],
    width: usize,
    height: usize,
    mean: &[f32; 3],
    std: &[f32; 3],
    order: ChannelOrder,
    out: &mut [f32],
) {
    let plane = width * height;
    // Which RGB8 byte feeds each output plane.
    let source = match order {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    let scale = [1.0 / (255.0 * std[0]), 1.0 / (255.0 * std[1]), 1.0 / (255.0 * std[2])];
    let offset = [mean[0] / std[0], mean[1] / std[1], mean[2] / std[2]];
    let (c0, rest) = out.split_at_mut(plane);
    let (c1, c2) = rest.split_at_mut(plane);
    for (i, p) in pixels.chunks_exact(3).enumerate() {
        c0[i] = p[source[0]] as f32 * scale[0] - offset[0];
        c1[i] = p[source[1]] as f32 * scale[1] - offset[1];
        c2[i] = p[source[2]] as f32 * scale[2] - offset[2];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exif::jpeg_with_orientation;
    use image::{GrayImage, Luma, Rgba, RgbaImage};

    const IMAGENET: ([f32; 3], [f32; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);

    #[test]
    fn grayscale_and_rgba_become_rgb_and_bad_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let gray = dir.path().join("g.png");
        GrayImage::from_pixel(3, 2, Luma([77])).save(&gray).unwrap();
        assert_eq!(decode_rgb(&gray).unwrap().get_pixel(1, 1).0, [77, 77, 77]);
        let rgba = dir.path().join("a.png");
        RgbaImage::from_pixel(2, 2, Rgba([10, 20, 30, 0])).save(&rgba).unwrap();
        assert_eq!(decode_rgb(&rgba).unwrap().get_pixel(0, 0).0, [10, 20, 30]);
        let empty = dir.path().join("e.jpg");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(decode_rgb(&empty).unwrap_err(), "empty file");
        let text = dir.path().join("t.jpg");
        std::fs::write(&text, b"hello").unwrap();
        assert!(decode_rgb(&text).is_err());
    }

    #[test]
    fn exif_orientation_is_applied() {
        // 32x16, left half red, right half blue; orientation 6 means "rotate 90 degrees clockwise to display".
        let image =
            RgbImage::from_fn(32, 16, |x, _| if x < 16 { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rotated.jpg");
        std::fs::write(&path, jpeg_with_orientation(&image, 6)).unwrap();
        let decoded = decode_rgb(&path).unwrap();
        assert_eq!(decoded.dimensions(), (16, 32), "rotated to portrait");
        // Clockwise: the left (red) half is now on top.
        let top = decoded.get_pixel(8, 4).0;
        let bottom = decoded.get_pixel(8, 28).0;
        assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");
        assert_eq!(decode_rgb_with(&path, Exif::Ignore).unwrap().dimensions(), (32, 16), "as stored");
        // Orientation 1 (or none) leaves it as stored.
        std::fs::write(&path, jpeg_with_orientation(&image, 1)).unwrap();
        assert_eq!(decode_rgb(&path).unwrap().dimensions(), (32, 16));
    }

    #[test]
    fn stretch_normalises_into_chw() {
        let p = Preprocess {
            size: [4, 6],
            resize: Resize::Stretch,
            mean: IMAGENET.0,
            std: IMAGENET.1,
            channels: ChannelOrder::Rgb,
        };
        let image = RgbImage::from_pixel(12, 8, image::Rgb([255, 0, 128]));
        let mut out = vec![0.0; p.tensor_len()];
        let placement = p.apply(&image, &mut out);
        assert_eq!(placement.scale_x, 0.5);
        let expect = |c: usize, v: f32| (v / 255.0 - IMAGENET.0[c]) / IMAGENET.1[c];
        assert!((out[0] - expect(0, 255.0)).abs() < 1e-5);
        assert!((out[24] - expect(1, 0.0)).abs() < 1e-5);
        assert!((out[48] - expect(2, 128.0)).abs() < 1e-5);
    }

    #[test]
    fn center_crop_is_timms_resize_then_centre_crop() {
        // 640x480 to 224 at crop_pct 0.875: the shorter side to floor(224 / 0.875) = 256 (so 341x256), then the
        // centre 224x224 of that: 224 * 640 / 341 by 224 * 480 / 256 source pixels.
        let crop = center_crop_region(640, 480, 224, 224, 0.875);
        assert!((crop.width - 224.0 * 640.0 / 341.0).abs() < 1e-9 && (crop.height - 420.0).abs() < 1e-9, "{crop:?}");
        assert!((crop.left - (640.0 - crop.width) / 2.0).abs() < 1e-9 && (crop.top - 30.0).abs() < 1e-9);
        // A square image at crop_pct 1 is the whole image: the same pixels as stretch.
        assert_eq!(
            center_crop_region(300, 300, 100, 100, 1.0),
            Crop { left: 0.0, top: 0.0, width: 300.0, height: 300.0 }
        );
        let image = RgbImage::from_fn(300, 300, |x, y| image::Rgb([x as u8, y as u8, (x ^ y) as u8]));
        let stretch = Preprocess {
            size: [100, 100],
            resize: Resize::Stretch,
            mean: IMAGENET.0,
            std: IMAGENET.1,
            channels: ChannelOrder::Rgb,
        };
        let crop = Preprocess { resize: Resize::CenterCrop { crop_pct: 1.0 }, ..stretch.clone() };
        let (mut a, mut b) = (vec![0.0; stretch.tensor_len()], vec![0.0; stretch.tensor_len()]);
        stretch.apply(&image, &mut a);
        crop.apply(&image, &mut b);
        assert_eq!(a, b);
        // A wide image keeps its aspect ratio: a 2:1 image with red sixths at the sides and white between comes out white.
        let wide = RgbImage::from_fn(300, 150, |x, _| {
            if (50..250).contains(&x) {
                image::Rgb([255, 255, 255])
            } else {
                image::Rgb([255, 0, 0])
            }
        });
        let plain = Preprocess { mean: [0.0; 3], std: [1.0; 3], ..crop };
        let mut out = vec![0.0; plain.tensor_len()];
        plain.apply(&wide, &mut out);
        let green = &out[10_000..20_000];
        assert!(green.iter().all(|&g| g > 0.99), "only the white middle is kept");
        let stretched = Preprocess { resize: Resize::Stretch, ..plain };
        stretched.apply(&wide, &mut out);
        assert!(out[10_000..20_000].iter().any(|&g| g < 0.01), "stretch keeps the red sides");
    }

    #[test]
    fn center_crop_comes_from_the_metadata() {
        let json = r#"{"schema_version": 1, "kiln_version": "0.1.0", "task": "classify", "architecture": "convnext",
            "variant": "convnext_atto", "class_names": ["a", "b"], "precision": "fp32", "opset": 19,
            "training": {"epoch": 1, "metrics": null}, "outputs": [],
            "input": {"name": "images", "shape": [1, 3, 224, 224], "layout": "NCHW", "dtype": "float32",
                      "color": "RGB", "resize": "stretch", "size": [224, 224], "mean": [0.5, 0.5, 0.5],
                      "std": [0.5, 0.5, 0.5]}}"#;
        let mut metadata = kiln_export::ModelMetadata::from_json(json).unwrap();
        assert_eq!(Preprocess::from_metadata(&metadata).unwrap().resize, Resize::Stretch);
        metadata.input.resize = "center_crop".into();
        assert_eq!(
            Preprocess::from_metadata(&metadata).unwrap().resize,
            Resize::CenterCrop { crop_pct: DEFAULT_CROP_PCT }
        );
        metadata.input.crop_pct = Some(0.95);
        assert_eq!(Preprocess::from_metadata(&metadata).unwrap().resize, Resize::CenterCrop { crop_pct: 0.95 });
        metadata.input.crop_pct = Some(1.5);
        assert!(Preprocess::from_metadata(&metadata).unwrap_err().to_string().contains("crop_pct 1.5"));
    }

    #[test]
    fn bgr_models_get_blue_first() {
        let p = Preprocess {
            size: [2, 2],
            resize: Resize::Stretch,
            mean: [0.0; 3],
            std: [1.0; 3],
            channels: ChannelOrder::Bgr,
        };
        let mut out = vec![0.0; p.tensor_len()];
        p.apply(&RgbImage::from_pixel(2, 2, image::Rgb([255, 0, 51])), &mut out);
        assert!((out[0] - 0.2).abs() < 1e-6 && out[4] == 0.0 && (out[8] - 1.0).abs() < 1e-6, "{out:?}");
    }

    #[test]
    fn letterbox_keeps_the_aspect_ratio_and_pads_with_grey() {
        let p = Preprocess {
            size: [8, 8],
            resize: Resize::Letterbox,
            mean: [0.0; 3],
            std: [1.0; 3],
            channels: ChannelOrder::Rgb,
        };
        let image = RgbImage::from_pixel(16, 8, image::Rgb([255, 255, 255]));
        let mut out = vec![0.0; p.tensor_len()];
        let placement = p.apply(&image, &mut out);
        assert_eq!((placement.scale_x, placement.offset_x, placement.offset_y), (0.5, 0, 2));
        let grey = LETTERBOX_FILL as f32 / 255.0;
        assert!((out[0] - grey).abs() < 1e-6, "top rows are padding");
        assert!((out[2 * 8] - 1.0).abs() < 1e-6, "the image starts at row 2");
        assert!((out[6 * 8] - grey).abs() < 1e-6, "bottom rows are padding");
    }
}
