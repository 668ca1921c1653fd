//! Batches of text lines on the shared batching machinery ([`crate::data::batcher`]). Every line is fitted to
//! the input height keeping its aspect ratio and padded on the right to the input width (kiln-infer's
//! [`Resize::FitHeight`], what production runs), so lines of any width batch together; each line keeps its own
//! length in frames, which the CTC loss and the decoder use. Training adds [`super::augment`]'s transforms.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::SeedableRng;
use tch::Tensor;

use kiln_infer::preprocess::{
    decode_rgb, fit_height_width, normalize_chw, pad_right, resize_region, ChannelOrder, Crop, Preprocess, Resize,
};

use super::augment::{augment_geometry, augment_pixels, TextAugment};
use super::charset::{frames_needed, Charset};
use super::dataset::TextSample;
use crate::data::batcher::ItemSource;
use crate::data::{ItemLoader, Items, Normalize, SkipLog};

/// Pixels of input width per output frame.
pub const WIDTH_STRIDE: u32 = 4;

/// The frames a line of `content_width` pixels (after fitting) occupies, at most `max_frames`.
pub fn line_frames(content_width: u32, max_frames: usize) -> usize {
    (content_width.div_ceil(WIDTH_STRIDE) as usize).clamp(1, max_frames.max(1))
}

/// One line's target in a batch.
#[derive(Clone, Debug)]
pub struct LineTarget {
    /// The label's classes (charset index + 1).
    pub classes: Vec<i64>,
    /// The frames the line occupies (the rest of the width is padding).
    pub frames: usize,
    /// The index of the sample in its split.
    pub index: usize,
}

/// A batch: `images` `[N, 3, H, W]` normalised, one [`LineTarget`] per line, and the files.
pub struct TextBatch {
    pub images: Tensor,
    pub targets: Vec<LineTarget>,
    pub paths: Vec<PathBuf>,
}

/// What a text loader prepares.
#[derive(Clone, Debug)]
pub enum TextTransform {
    Train(TextAugment),
    Eval,
}

/// The geometry of the input.
#[derive(Clone, Copy, Debug)]
pub struct LineInput {
    pub height: u32,
    pub width: u32,
    pub normalize: Normalize,
}

impl LineInput {
    pub fn max_frames(&self) -> usize {
        (self.width / WIDTH_STRIDE) as usize
    }

    /// kiln-infer's preprocessing of this input (evaluation and the exported model's metadata).
    pub fn preprocess(&self) -> Preprocess {
        Preprocess {
            size: [self.height, self.width],
            resize: Resize::FitHeight,
            mean: self.normalize.mean,
            std: self.normalize.std,
            channels: ChannelOrder::Rgb,
        }
    }
}

/// One split's text lines, prepared for training or evaluation.
pub struct TextItems {
    samples: Vec<TextSample>,
    charset: Charset,
    transform: TextTransform,
    input: LineInput,
    skips: Arc<SkipLog>,
}

impl TextItems {
    pub fn new(
        samples: Vec<TextSample>,
        charset: Charset,
        transform: TextTransform,
        input: LineInput,
        skips: Arc<SkipLog>,
    ) -> Self {
        Self { samples, charset, transform, input, skips }
    }

    pub fn samples(&self) -> &[TextSample] {
        &self.samples
    }

    pub fn input(&self) -> LineInput {
        self.input
    }
}

impl ItemSource for TextItems {
    type Target = LineTarget;

    fn path(&self, index: usize) -> &Path {
        &self.samples[index].path
    }

    fn prepare(&self, index: usize, seed: u64, out: &mut [f32]) -> std::result::Result<LineTarget, String> {
        let sample = &self.samples[index];
        let image = decode_rgb(&sample.path).inspect_err(|reason| {
            self.skips.record(&sample.path, reason.clone());
        })?;
        let classes = self.charset.encode(&sample.text).map_err(|missing| format!("characters {missing:?}"))?;
        let LineInput { height, width, normalize } = self.input;
        let content = match &self.transform {
            TextTransform::Eval => {
                self.input.preprocess().apply(&image, out);
                fit_height_width(image.width(), image.height(), height, width)
            }
            TextTransform::Train(config) => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let image = augment_geometry(&image, config, &mut rng);
                let rw = fit_height_width(image.width(), image.height(), height, width);
                let mut pixels = resize_region(&image, Crop::full(&image), rw, height);
                augment_pixels(&mut pixels, rw as usize, config, &mut rng);
                let canvas = pad_right(&pixels, rw, height, width);
                normalize_chw(
                    &canvas,
                    width as usize,
                    height as usize,
                    &normalize.mean,
                    &normalize.std,
                    ChannelOrder::Rgb,
                    out,
                );
                rw
            }
        };
        let frames = line_frames(content, self.input.max_frames());
        if matches!(self.transform, TextTransform::Train(_)) && frames_needed(&classes) > frames {
            // Evaluation keeps such a line (it counts as misread); training cannot align it.
            let reason = format!(
                "its label needs {} frames but the line, fitted to height {height}, gives {frames}",
                frames_needed(&classes)
            );
            self.skips.record(&sample.path, reason.clone());
            return Err(reason);
        }
        Ok(LineTarget { classes, frames, index })
    }
}

impl Items for TextItems {
    type Batch = TextBatch;

    fn len(&self) -> usize {
        self.samples.len()
    }

    fn item_shape(&self) -> [usize; 3] {
        [3, self.input.height as usize, self.input.width as usize]
    }

    fn batch(images: Tensor, targets: Vec<LineTarget>, paths: Vec<PathBuf>) -> TextBatch {
        TextBatch { images, targets, paths }
    }

    fn batch_len(batch: &TextBatch) -> usize {
        batch.targets.len()
    }
}

/// Batches of one split's lines; each [`crate::data::Batches::epoch`] call is one pass.
pub type TextLoader = ItemLoader<TextItems>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Batches;

    #[test]
    fn a_line_occupies_its_fitted_width_in_frames() {
        assert_eq!(line_frames(100, 64), 25);
        assert_eq!(line_frames(101, 64), 26);
        assert_eq!(line_frames(1000, 64), 64);
        assert_eq!(line_frames(0, 64), 1);
    }

    #[test]
    fn batches_hold_lines_of_any_width_with_their_own_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let mut samples = Vec::new();
        for (i, w) in [40u32, 160, 400].into_iter().enumerate() {
            let path = dir.path().join(format!("{i}.png"));
            image::RgbImage::from_pixel(w, 16, image::Rgb([90, 90, 90])).save(&path).unwrap();
            samples.push(TextSample { path, text: "12".into() });
        }
        let input = LineInput { height: 32, width: 256, normalize: Normalize::default() };
        let items = TextItems::new(samples, Charset::parse("0-9"), TextTransform::Eval, input, Arc::default());
        let settings = crate::data::LoaderSettings { batch_size: 8, workers: 1, prefetch: 2, seed: 0 };
        let loader = TextLoader::new(items, settings).unwrap();
        let batch = loader.epoch(0, false).next().unwrap().unwrap();
        assert_eq!(batch.images.size(), [3, 3, 32, 256]);
        // 40×16 → 80×32 (20 frames); 160×16 → 320, squeezed to 256 (64 frames); 400×16 too.
        let frames: Vec<usize> = batch.targets.iter().map(|t| t.frames).collect();
        assert_eq!(frames, [20, 64, 64]);
        assert_eq!(batch.targets[0].classes, [2, 3]);
    }
}
