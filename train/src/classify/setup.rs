//! What every classification command prepares from a config: the dataset, loaders, the cache.

use std::sync::Arc;

use super::cache::{self, DiskCache, ImageSource, RamStore, SplitToCache};
use super::image_folder::{ImageFolder, Sample, SplitRatios};
use super::loader::{ClassifyItems, ClassifyLoader};
use super::transform::Transform;
use crate::config::CacheMode;
use crate::config::TrainConfig;
use crate::data::{Batches, SkipLog};
use crate::Result;

pub use crate::engine::prepare_runtime;

/// Scans the config's dataset with its split ratios and seed.
pub fn open_dataset(config: &TrainConfig) -> Result<ImageFolder> {
    ImageFolder::open(&config.data, SplitRatios { val: config.val_split, test: config.test_split, seed: config.seed })
}

/// A loader over `samples` with the config's batch size, image size, workers and normalisation.
pub fn make_loader(
    config: &TrainConfig,
    samples: &[Sample],
    transform: Transform,
    skips: &Arc<SkipLog>,
) -> Result<ClassifyLoader> {
    let items = ClassifyItems::new(samples.to_vec(), transform, config.normalize, config.img_size, Arc::clone(skips));
    ClassifyLoader::new(items, config.loader_settings())
}

/// Gives each named loader the image source `config.cache` asks for: `auto` and `ram` are decided over all of
/// them together (one memory budget), then each RAM store is filled once, here, on its loader's threads.
pub fn apply_cache(config: &TrainConfig, loaders: &mut [(&str, &mut ClassifyLoader)]) -> Result<CacheMode> {
    apply_cache_with_budget(config.cache, config.img_size, loaders, cache::available_memory())
}

/// [`apply_cache`] against a given amount of available memory (`None`: unknown).
pub fn apply_cache_with_budget(
    requested: CacheMode,
    img_size: u32,
    loaders: &mut [(&str, &mut ClassifyLoader)],
    available: Option<u64>,
) -> Result<CacheMode> {
    let Some((_, first)) = loaders.first() else { return Ok(CacheMode::None) };
    let splits: Vec<SplitToCache> = loaders
        .iter()
        .map(|(name, l)| SplitToCache { name, samples: l.items().samples(), transform: l.items().transform() })
        .collect();
    let (mode, estimates) = cache::plan(requested, &splits, img_size, available, first.pool())?;
    match mode {
        CacheMode::Ram => {
            let started = std::time::Instant::now();
            let mut bytes = 0;
            for ((_, loader), estimate) in loaders.iter_mut().zip(&estimates) {
                let items = loader.items();
                let store = RamStore::fill(
                    items.samples(),
                    estimate,
                    img_size,
                    items.transform(),
                    loader.pool(),
                    items.skips(),
                );
                bytes += store.bytes();
                loader.items_mut().set_source(ImageSource::Ram(store));
            }
            let images: usize = loaders.iter().map(|(_, l)| l.len()).sum();
            eprintln!(
                "cache: ram, {images} images decoded once into {} in {:.1}s",
                cache::format_bytes(bytes as u64),
                started.elapsed().as_secs_f64()
            );
        }
        CacheMode::Disk => {
            let dir = DiskCache::default_dir();
            eprintln!("cache: disk, decoded images under {}", dir.display());
            for (_, loader) in loaders.iter_mut() {
                loader.items_mut().set_source(ImageSource::Disk(DiskCache::new(dir.clone())?));
            }
        }
        CacheMode::None | CacheMode::Auto => {}
    }
    Ok(mode)
}
