//! Batches of detection samples on the shared batching machinery ([`crate::data::batcher`]). Training: decode,
//! box-aware augmentation (letterbox + random scale/crop or mosaic, HSV jitter, flip), normalise. Evaluation:
//! kiln-infer's own letterbox preprocessing (what production runs), with each image's placement kept so that
//! predictions map back to original pixels, where they are scored against the original boxes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use tch::{Kind, Tensor};

use kiln_infer::preprocess::{decode_rgb_with, resize_region, ChannelOrder, Placement, Preprocess, Resize};
use kiln_infer::Exif;

use super::annotations::DetectionSample;
use super::augment::{augment, needs_mosaic, AugmentConfig, TargetBox};
use crate::data::batcher::ItemSource;
use crate::data::{ItemLoader, Items, Normalize, SkipLog};

/// One image's targets in a batch.
#[derive(Clone, Debug)]
pub struct ImageTargets {
    /// Boxes on the input canvas (pixels), as the losses see them.
    pub boxes: Vec<TargetBox>,
    /// The index of the sample in its split.
    pub index: usize,
    /// Where the image was placed on the canvas (evaluation only: training's augmentation moves it).
    pub placement: Option<Placement>,
}

/// A batch: `images` `[N, 3, S, S]` normalised, one [`ImageTargets`] per image, and the files.
pub struct DetectBatch {
    pub images: Tensor,
    pub targets: Vec<ImageTargets>,
    pub paths: Vec<PathBuf>,
}

impl DetectBatch {
    /// The canvas boxes of image `i` as tensors: `[G, 4]` f32 and `[G]` i64.
    pub fn boxes_tensors(&self, i: usize) -> (Tensor, Tensor) {
        let t = &self.targets[i];
        let flat: Vec<f32> = t.boxes.iter().flat_map(|b| b.bbox).collect();
        let classes: Vec<i64> = t.boxes.iter().map(|b| b.class as i64).collect();
        (Tensor::from_slice(&flat).view([t.boxes.len() as i64, 4]).to_kind(Kind::Float), Tensor::from_slice(&classes))
    }
}

/// What a detection loader prepares: training with augmentation, or evaluation.
#[derive(Clone, Debug)]
pub enum DetectTransform {
    Train(AugmentConfig),
    Eval,
}

/// One split's detection samples, prepared for training or evaluation.
pub struct DetectItems {
    samples: Vec<DetectionSample>,
    transform: DetectTransform,
    norm: Normalize,
    size: u32,
    skips: Arc<SkipLog>,
    exif: Exif,
}

impl DetectItems {
    pub fn new(
        samples: Vec<DetectionSample>,
        transform: DetectTransform,
        norm: Normalize,
        size: u32,
        skips: Arc<SkipLog>,
    ) -> Self {
        Self { samples, transform, norm, size, skips, exif: Exif::Apply }
    }

    /// Reads the images under the EXIF convention `exif` (the one their boxes were read with; default apply).
    pub fn with_exif(mut self, exif: Exif) -> Self {
        self.exif = exif;
        self
    }

    pub fn samples(&self) -> &[DetectionSample] {
        &self.samples
    }

    fn decode(&self, index: usize) -> std::result::Result<image::RgbImage, String> {
        let path = &self.samples[index].path;
        decode_rgb_with(path, self.exif).inspect_err(|reason| {
            self.skips.record(path, reason.clone());
        })
    }

    fn training_boxes(&self, index: usize) -> Vec<TargetBox> {
        // Crowd regions are not objects to learn.
        self.samples[index]
            .boxes
            .iter()
            .filter(|b| !b.crowd)
            .map(|b| TargetBox { bbox: b.bbox, class: b.class })
            .collect()
    }
}

impl ItemSource for DetectItems {
    type Target = ImageTargets;

    fn path(&self, index: usize) -> &Path {
        &self.samples[index].path
    }

    fn prepare(&self, index: usize, seed: u64, out: &mut [f32]) -> std::result::Result<ImageTargets, String> {
        let image = self.decode(index)?;
        let s = self.size as usize;
        match &self.transform {
            DetectTransform::Eval => {
                let preprocess = Preprocess {
                    size: [self.size, self.size],
                    resize: Resize::Letterbox,
                    mean: self.norm.mean,
                    std: self.norm.std,
                    channels: ChannelOrder::Rgb,
                };
                let placement = preprocess.apply(&image, out);
                let boxes = self.samples[index]
                    .boxes
                    .iter()
                    .filter(|b| !b.crowd)
                    .map(|b| {
                        let [x1, y1, x2, y2] = b.bbox;
                        let map = |x: f32, y: f32| {
                            (
                                x * placement.scale_x + placement.offset_x as f32,
                                y * placement.scale_y + placement.offset_y as f32,
                            )
                        };
                        let ((a, c), (d, e)) = (map(x1, y1), map(x2, y2));
                        TargetBox { bbox: [a, c, d, e], class: b.class }
                    })
                    .collect();
                Ok(ImageTargets { boxes, index, placement: Some(placement) })
            }
            DetectTransform::Train(config) => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let boxes = self.training_boxes(index);
                let (canvas, boxes) = if needs_mosaic(config, &mut rng) && self.samples.len() > 1 {
                    // The other three tiles: random samples; an unreadable one is replaced by this image.
                    let others: Vec<usize> = (0..3).map(|_| rng.random_range(0..self.samples.len())).collect();
                    let mut tiles = vec![(image.clone(), boxes.clone())];
                    for &o in &others {
                        match self.decode(o) {
                            Ok(img) => tiles.push((img, self.training_boxes(o))),
                            Err(_) => tiles.push((image.clone(), boxes.clone())),
                        }
                    }
                    let refs: Vec<(&image::RgbImage, &[TargetBox])> =
                        tiles.iter().map(|(i, b)| (i, b.as_slice())).collect();
                    augment(&refs, self.size, config, &mut rng, &resize_region)
                } else {
                    augment(&[(&image, &boxes)], self.size, config, &mut rng, &resize_region)
                };
                kiln_infer::preprocess::normalize_chw(
                    canvas.as_raw(),
                    s,
                    s,
                    &self.norm.mean,
                    &self.norm.std,
                    ChannelOrder::Rgb,
                    out,
                );
                Ok(ImageTargets { boxes, index, placement: None })
            }
        }
    }
}

/// Class-balanced sampling weights: an image weighs the mean inverse frequency (in boxes) of its boxes' classes;
/// an image without boxes weighs the mean of the others (so negatives stay as common as they are).
pub fn balanced_weights(samples: &[DetectionSample]) -> Vec<f64> {
    let classes = samples.iter().flat_map(|s| s.boxes.iter().map(|b| b.class + 1)).max().unwrap_or(0);
    let mut counts = vec![0usize; classes];
    for b in samples.iter().flat_map(|s| &s.boxes) {
        counts[b.class] += 1;
    }
    let weights: Vec<Option<f64>> = samples
        .iter()
        .map(|s| {
            (!s.boxes.is_empty())
                .then(|| s.boxes.iter().map(|b| 1.0 / counts[b.class] as f64).sum::<f64>() / s.boxes.len() as f64)
        })
        .collect();
    let positives: Vec<f64> = weights.iter().flatten().copied().collect();
    let mean = if positives.is_empty() { 1.0 } else { positives.iter().sum::<f64>() / positives.len() as f64 };
    weights.into_iter().map(|w| w.unwrap_or(mean)).collect()
}

impl Items for DetectItems {
    type Batch = DetectBatch;

    fn len(&self) -> usize {
        self.samples.len()
    }

    fn item_shape(&self) -> [usize; 3] {
        [3, self.size as usize, self.size as usize]
    }

    fn batch(images: Tensor, targets: Vec<ImageTargets>, paths: Vec<PathBuf>) -> DetectBatch {
        DetectBatch { images, targets, paths }
    }

    fn batch_len(batch: &DetectBatch) -> usize {
        batch.targets.len()
    }
}

/// Batches of one split's detection samples; each [`crate::data::Batches::epoch`] call is one pass.
pub type DetectLoader = ItemLoader<DetectItems>;

/// Samples each training pass of `loader` with [`balanced_weights`] (with replacement, as many draws as samples).
pub fn with_balanced_sampling(loader: DetectLoader) -> DetectLoader {
    let weights = balanced_weights(loader.items().samples());
    loader.with_weights(weights)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::LoaderSettings;
    use crate::detect::annotations::BoxAnnotation;

    fn sample(i: usize, classes: &[usize]) -> DetectionSample {
        DetectionSample {
            path: format!("{i}.png").into(),
            width: 10,
            height: 10,
            boxes: classes
                .iter()
                .map(|&c| BoxAnnotation { bbox: [0.0, 0.0, 5.0, 5.0], class: c, crowd: false })
                .collect(),
        }
    }

    #[test]
    fn balanced_sampling_sees_a_rare_class_as_often_as_a_common_one() {
        // Nine images of class 0, one of class 1, one negative.
        let mut samples: Vec<DetectionSample> = (0..9).map(|i| sample(i, &[0])).collect();
        samples.push(sample(9, &[1]));
        samples.push(sample(10, &[]));
        let weights = balanced_weights(&samples);
        assert!((weights[0] - 1.0 / 9.0).abs() < 1e-12 && (weights[9] - 1.0).abs() < 1e-12);
        assert!((weights[10] - (9.0 / 9.0 + 1.0) / 10.0).abs() < 1e-12, "negatives weigh the mean");
        let items = DetectItems::new(samples, DetectTransform::Eval, Normalize::default(), 32, Arc::default());
        let settings = LoaderSettings { batch_size: 4, workers: 1, prefetch: 2, seed: 7 };
        let loader = with_balanced_sampling(DetectLoader::new(items, settings).unwrap());
        // The orders of many epochs (nothing is decoded): the rare image as often as all common ones together.
        let (mut rare, mut common) = (0usize, 0usize);
        for epoch in 0..200 {
            let (order, _) = loader.epoch_order(epoch, true);
            assert_eq!(order.len(), 11);
            rare += order.iter().filter(|&&i| i == 9).count();
            common += order.iter().filter(|&&i| i < 9).count();
        }
        let (plain, _) = loader.epoch_order(0, false);
        assert_eq!(plain, (0..11).collect::<Vec<_>>(), "evaluation passes take every sample once, in order");
        let ratio = rare as f64 / common as f64;
        assert!((0.8..1.25).contains(&ratio), "rare {rare} vs all common images {common}");
    }
}
