//! Classification's items on the shared loader ([`crate::data::ItemLoader`]): each image decoded (or taken
//! from the cache), augmented or resized for evaluation, normalised, with its class index.
//!
//! Streaming (the default source), memory holds at most `prefetch + 1` batches whatever the dataset's size; a
//! [`ImageSource::Ram`] or [`ImageSource::Disk`] source (see `cache`) replaces the decoding, not the batching.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::SeedableRng;
use tch::Tensor;

use super::cache::ImageSource;
use super::image_folder::Sample;
use super::transform::{transform_into, Transform};
use crate::data::batcher::ItemSource;
use crate::data::{ItemLoader, Items, Normalize, SkipLog};

/// One batch: `images` `[N, 3, S, S]` f32 normalised, `labels` `[N]` i64, and the files they came from.
pub struct Batch {
    pub images: Tensor,
    pub labels: Tensor,
    pub paths: Vec<PathBuf>,
}

/// Labelled images prepared for training or evaluation.
pub struct ClassifyItems {
    samples: Vec<Sample>,
    source: ImageSource,
    transform: Transform,
    norm: Normalize,
    size: u32,
    skips: Arc<SkipLog>,
    decoded: AtomicUsize,
}

impl ClassifyItems {
    pub fn new(samples: Vec<Sample>, transform: Transform, norm: Normalize, size: u32, skips: Arc<SkipLog>) -> Self {
        Self { samples, source: ImageSource::Stream, transform, norm, size, skips, decoded: AtomicUsize::new(0) }
    }

    /// Takes working images from `source` from the next epoch on (a RAM store must have been filled from these
    /// samples, in order).
    pub fn set_source(&mut self, source: ImageSource) {
        self.source = source;
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    pub fn transform(&self) -> &Transform {
        &self.transform
    }

    pub fn skips(&self) -> &Arc<SkipLog> {
        &self.skips
    }

    /// Images decoded since the items were made (all epochs).
    pub fn decoded(&self) -> usize {
        self.decoded.load(Ordering::Relaxed)
    }
}

impl ItemSource for ClassifyItems {
    type Target = i64;

    fn path(&self, index: usize) -> &Path {
        &self.samples[index].path
    }

    fn prepare(&self, index: usize, seed: u64, out: &mut [f32]) -> std::result::Result<i64, String> {
        let sample = &self.samples[index];
        self.decoded.fetch_add(1, Ordering::Relaxed);
        let image = self.source.load(index, sample, self.size, &self.transform).inspect_err(|reason| {
            if !self.source.reports_at_fill() {
                self.skips.record(&sample.path, reason.clone());
            }
        })?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        transform_into(&image, self.size, &self.transform, &self.norm, &mut rng, out);
        Ok(sample.label as i64)
    }
}

impl Items for ClassifyItems {
    type Batch = Batch;

    fn len(&self) -> usize {
        self.samples.len()
    }

    fn item_shape(&self) -> [usize; 3] {
        [3, self.size as usize, self.size as usize]
    }

    fn batch(images: Tensor, labels: Vec<i64>, paths: Vec<PathBuf>) -> Batch {
        Batch { images, labels: Tensor::from_slice(&labels), paths }
    }

    fn batch_len(batch: &Batch) -> usize {
        batch.paths.len()
    }
}

/// Batches of labelled images; each [`crate::data::Batches::epoch`] call is one pass. Batches that lost
/// unreadable images are smaller.
pub type ClassifyLoader = ItemLoader<ClassifyItems>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AugmentConfig;
    use crate::data::{Batches, LoaderSettings};
    use crate::Result;

    fn write_images(dir: &Path, n: usize) -> Vec<Sample> {
        (0..n)
            .map(|i| {
                let path = dir.join(format!("{i}.png"));
                image::RgbImage::from_pixel(20, 10, image::Rgb([(i * 10 % 256) as u8, 0, 0])).save(&path).unwrap();
                Sample { path, label: i % 2 }
            })
            .collect()
    }

    fn loader(samples: Vec<Sample>, transform: Transform, skips: Arc<SkipLog>) -> ClassifyLoader {
        let settings = LoaderSettings { batch_size: 4, workers: 2, prefetch: 2, seed: 9 };
        ClassifyLoader::new(ClassifyItems::new(samples, transform, Normalize::default(), 8, skips), settings).unwrap()
    }

    #[test]
    fn batches_cover_every_sample_once_and_shuffle_reproducibly() {
        let dir = tempfile::tempdir().unwrap();
        let samples = write_images(dir.path(), 10);
        let l = loader(samples, Transform::Train(AugmentConfig::default()), Arc::default());
        assert_eq!(l.num_batches(), 3);
        let batches: Vec<Batch> = l.epoch(0, true).map(Result::unwrap).collect();
        assert_eq!(batches.iter().map(|b| b.paths.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert_eq!(batches[0].images.size(), vec![4, 3, 8, 8]);
        let mut seen: Vec<PathBuf> = batches.iter().flat_map(|b| b.paths.clone()).collect();
        let order = seen.clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 10);
        let again: Vec<PathBuf> = l.epoch(0, true).flat_map(|b| b.unwrap().paths).collect();
        assert_eq!(order, again, "same seed and epoch, same order");
        let next: Vec<PathBuf> = l.epoch(1, true).flat_map(|b| b.unwrap().paths).collect();
        assert_ne!(order, next, "another epoch, another order");
        let first_again: Vec<Batch> = l.epoch(0, true).map(Result::unwrap).collect();
        assert!(first_again[0].images.equal(&batches[0].images), "augmentation is reproducible");
    }

    #[test]
    fn unreadable_files_are_skipped_and_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut samples = write_images(dir.path(), 5);
        let empty = dir.path().join("empty.jpg");
        std::fs::write(&empty, b"").unwrap();
        samples.push(Sample { path: empty.clone(), label: 0 });
        let skips = Arc::new(SkipLog::default());
        let l = loader(samples, Transform::Eval, Arc::clone(&skips));
        for epoch in 0..2 {
            let n: usize = l.epoch(epoch, false).map(|b| b.unwrap().paths.len()).sum();
            assert_eq!(n, 5);
        }
        assert_eq!(skips.count(), 1);
        assert_eq!(skips.entries()[0].0, empty);
    }

    #[test]
    fn a_slow_consumer_bounds_how_much_is_decoded_ahead() {
        // Memory stays flat whatever the dataset's size: at most the batch being consumed, `prefetch` ready
        // batches and one in preparation exist at any time.
        let dir = tempfile::tempdir().unwrap();
        let l = loader(write_images(dir.path(), 200), Transform::Eval, Arc::default());
        let mut it = l.epoch(0, false);
        let first = it.next().unwrap().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let ahead = l.items().decoded();
        assert!(ahead <= (1 + 2 + 1) * 4, "decoded {ahead} images while one batch of 4 was consumed");
        assert!(ahead >= 2 * 4, "the prefetch queue fills up ({ahead})");
        drop(first);
        assert_eq!(it.map(|b| b.unwrap().paths.len()).sum::<usize>(), 196);
        assert_eq!(l.items().decoded(), 200);
    }

    #[test]
    fn a_panicking_worker_ends_the_epoch_with_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let samples = write_images(dir.path(), 12);
        // A NaN jitter strength makes the jitter sampler panic (the config could not hold one; the loader must
        // not turn the panic into a short, "complete" epoch).
        let broken = AugmentConfig { color_jitter: f64::NAN, ..AugmentConfig::default() };
        let l = loader(samples, Transform::Train(broken), Arc::default());
        let items: Vec<Result<Batch>> = l.epoch(0, false).collect();
        let err = items.last().unwrap().as_ref().err().expect("the pass ends with an error").to_string();
        assert!(err.contains("panicked") && err.contains("0.png"), "{err}");
        assert!(items[..items.len() - 1].iter().all(|b| b.is_ok()), "nothing after the error");
    }

    #[test]
    fn dropping_an_epoch_early_stops_the_producer() {
        let dir = tempfile::tempdir().unwrap();
        let l = loader(write_images(dir.path(), 200), Transform::Eval, Arc::default());
        let mut it = l.epoch(0, false);
        assert!(it.next().is_some());
        drop(it);
        // A producer that went on would decode all 200 tiny images within milliseconds; a stopped one has done
        // the consumed batch, the prefetched ones and at most one more per worker, and does nothing more.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let after_drop = l.items().decoded();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(l.items().decoded(), after_drop, "nothing decoded after the drop settled");
        assert!(after_drop <= 4 * (1 + 2 + 2), "{after_drop} of 200 decoded: batch 4, prefetch 2, 2 workers");
    }
}
