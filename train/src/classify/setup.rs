//! What every classification command prepares from a config: the device, the dataset, loaders.

use std::sync::Arc;

use tch::Device;

use crate::config::TrainConfig;
use crate::data::{ImageFolder, Loader, LoaderConfig, Sample, SkipLog, SplitRatios, Transform};
use crate::device::select_device;
use crate::{Error, Result};

/// Selects the device, seeds libtorch and sets its thread count.
pub fn prepare_runtime(config: &TrainConfig, device_override: Option<&str>) -> Result<Device> {
    let device = select_device(device_override.unwrap_or(&config.device))?;
    tch::manual_seed(config.seed as i64);
    if device.is_cuda() {
        tch::Cuda::manual_seed_all(config.seed);
    }
    if config.threads > 0 {
        tch::set_num_threads(config.threads as i32);
    }
    Ok(device)
}

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
