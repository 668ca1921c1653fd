//! Batches of detection samples on the shared batching machinery ([`crate::data::batcher`]). Training: decode,
//! box-aware augmentation (letterbox + random scale/crop or mosaic, HSV jitter, flip), normalise. Evaluation:
//! kiln-infer's own letterbox preprocessing (what production runs), with each image's placement kept so that
//! predictions map back to original pixels, where they are scored against the original boxes.

use std::path::Path;
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tch::{Kind, Tensor};

use kiln_infer::preprocess::{decode_rgb, resize_region, ChannelOrder, Placement, Preprocess, Resize};

use super::annotations::DetectionSample;
use super::augment::{augment, needs_mosaic, AugmentConfig, Crop, TargetBox};
use crate::data::batcher::{mix, spawn_epoch, BatchIter, ItemSource};
use crate::data::{Normalize, SkipLog};
use crate::engine::Batches;
use crate::Result;

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
    pub paths: Vec<std::path::PathBuf>,
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

struct DetectItems {
    samples: Arc<Vec<DetectionSample>>,
    transform: DetectTransform,
    norm: Normalize,
    size: u32,
    skips: Arc<SkipLog>,
}

fn kiln_resize(image: &image::RgbImage, crop: Crop, width: u32, height: u32) -> Vec<u8> {
    let crop = kiln_infer::preprocess::Crop { left: crop.left, top: crop.top, width: crop.width, height: crop.height };
    resize_region(image, crop, width, height)
}

impl DetectItems {
    fn decode(&self, index: usize) -> std::result::Result<image::RgbImage, String> {
        let path = &self.samples[index].path;
        decode_rgb(path).inspect_err(|reason| {
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
                    augment(&refs, self.size, config, &mut rng, &kiln_resize)
                } else {
                    augment(&[(&image, &boxes)], self.size, config, &mut rng, &kiln_resize)
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

/// Produces batches of one split's detection samples; each [`Batches::epoch`] call is one pass.
pub struct DetectLoader {
    samples: Arc<Vec<DetectionSample>>,
    transform: DetectTransform,
    norm: Normalize,
    size: u32,
    batch_size: usize,
    seed: u64,
    pool: Arc<rayon::ThreadPool>,
    skips: Arc<SkipLog>,
}

impl DetectLoader {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        samples: Vec<DetectionSample>,
        transform: DetectTransform,
        norm: Normalize,
        size: u32,
        batch_size: usize,
        workers: usize,
        seed: u64,
        skips: Arc<SkipLog>,
    ) -> std::result::Result<Self, rayon::ThreadPoolBuildError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers.max(1))
            .thread_name(|i| format!("kiln-data-{i}"))
            .build()?;
        Ok(Self {
            samples: Arc::new(samples),
            transform,
            norm,
            size,
            batch_size: batch_size.max(1),
            seed,
            pool: Arc::new(pool),
            skips,
        })
    }

    pub fn samples(&self) -> &[DetectionSample] {
        &self.samples
    }
}

/// The batches of one pass.
pub struct DetectEpoch {
    inner: BatchIter<ImageTargets>,
    size: i64,
}

impl Iterator for DetectEpoch {
    type Item = Result<DetectBatch>;

    fn next(&mut self) -> Option<Result<DetectBatch>> {
        let s = self.size;
        Some(self.inner.next()?.map(|b| DetectBatch {
            images: Tensor::from_slice(&b.pixels).view([b.targets.len() as i64, 3, s, s]),
            targets: b.targets,
            paths: b.paths,
        }))
    }
}

impl Batches for DetectLoader {
    type Batch = DetectBatch;

    fn len(&self) -> usize {
        self.samples.len()
    }

    fn num_batches(&self) -> usize {
        self.samples.len().div_ceil(self.batch_size)
    }

    fn epoch(&self, epoch: usize, shuffle: bool) -> Box<dyn Iterator<Item = Result<DetectBatch>> + '_> {
        let mut order: Vec<usize> = (0..self.samples.len()).collect();
        let epoch_seed = mix(self.seed ^ mix(epoch as u64 + 1));
        if shuffle {
            order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(epoch_seed));
        }
        let items = Arc::new(DetectItems {
            samples: Arc::clone(&self.samples),
            transform: self.transform.clone(),
            norm: self.norm,
            size: self.size,
            skips: Arc::clone(&self.skips),
        });
        let per = 3 * self.size as usize * self.size as usize;
        let inner = spawn_epoch(items, order, self.batch_size, per, Arc::clone(&self.pool), 2, epoch_seed);
        Box::new(DetectEpoch { inner, size: self.size as i64 })
    }

    fn batch_len(batch: &DetectBatch) -> usize {
        batch.targets.len()
    }
}
