//! What every classification command prepares from a config: the dataset, loaders, the cache.

use std::sync::Arc;

use crate::config::TrainConfig;
use crate::data::cache::{self, DiskCache, ImageSource, RamStore, SplitToCache};
use crate::data::{CacheMode, ImageFolder, Loader, LoaderConfig, Sample, SkipLog, SplitRatios, Transform};
use crate::{Error, Result};

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
) -> Result<Loader> {
    let loader_config = LoaderConfig {
        batch_size: config.batch,
        img_size: config.img_size,
        workers: config.workers.max(1),
        prefetch: 2,
        seed: config.seed,
    };
    Loader::new(samples.to_vec(), transform, config.normalize, loader_config, Arc::clone(skips))
        .map_err(|e| Error::InvalidSetting { key: "workers".into(), reason: e.to_string() })
}

/// Gives each named loader the image source `config.cache` asks for: `auto` and `ram` are decided over all of
/// them together (one memory budget), then each RAM store is filled once, here, on its loader's threads.
pub fn apply_cache(config: &TrainConfig, loaders: &mut [(&str, &mut Loader)]) -> Result<CacheMode> {
    apply_cache_with_budget(config.cache, config.img_size, loaders, cache::available_memory())
}

/// [`apply_cache`] against a given amount of available memory (`None`: unknown).
pub fn apply_cache_with_budget(
    requested: CacheMode,
    img_size: u32,
    loaders: &mut [(&str, &mut Loader)],
    available: Option<u64>,
) -> Result<CacheMode> {
    let Some((_, first)) = loaders.first() else { return Ok(CacheMode::None) };
    let splits: Vec<SplitToCache> =
        loaders.iter().map(|(name, l)| SplitToCache { name, samples: l.samples(), transform: l.transform() }).collect();
    let (mode, estimates) = cache::plan(requested, &splits, img_size, available, first.pool())?;
    match mode {
        CacheMode::Ram => {
            let started = std::time::Instant::now();
            let mut bytes = 0;
            for ((_, loader), estimate) in loaders.iter_mut().zip(&estimates) {
                let store = RamStore::fill(
                    loader.samples(),
                    estimate,
                    img_size,
                    loader.transform(),
                    loader.pool(),
                    loader.skips(),
                );
                bytes += store.bytes();
                loader.set_source(ImageSource::Ram(store));
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
                loader.set_source(ImageSource::Disk(DiskCache::new(dir.clone())?));
            }
        }
        CacheMode::None | CacheMode::Auto => {}
    }
    Ok(mode)
}
