//! What every detection command prepares from a config: the detector's config, the dataset and its loaders.

use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use kiln_models::DetectorConfig;

use super::annotations::{self, DetectionDataset, Split};
use super::loader::{DetectItems, DetectLoader, DetectTransform};
use super::settings::DetectSettings;
use crate::config::TrainConfig;
use crate::data::SkipLog;
use crate::Result;

/// The detector's config from the training config.
pub fn detector_config(config: &TrainConfig, num_classes: usize) -> Result<DetectorConfig> {
    let settings: DetectSettings = config.task_settings()?;
    Ok(DetectorConfig::new(&config.model, num_classes as i64)
        .with_fpn_channels(settings.fpn_channels)
        .with_head_convs(settings.head_convs)
        .with_num_levels(settings.num_levels)
        .with_drop_path_rate(config.drop_path_rate)
        .with_location_offset(settings.location_offset)
        .with_box_activation(settings.box_activation))
}

/// Opens the config's detection dataset; without a val split, `val_split` of train (seeded) becomes val.
pub fn open_dataset(config: &TrainConfig) -> Result<DetectionDataset> {
    let mut dataset = annotations::open(&config.data, config.task_settings::<DetectSettings>()?.layout)?;
    if dataset.val.is_empty() && config.val_split > 0.0 && dataset.train.len() > 1 {
        let mut train = std::mem::take(&mut dataset.train);
        train.shuffle(&mut rand::rngs::StdRng::seed_from_u64(config.seed));
        let n = ((train.len() as f64 * config.val_split).round() as usize).clamp(1, train.len() - 1);
        dataset.val = train.split_off(train.len() - n);
        train.sort_by(|a, b| a.path.cmp(&b.path));
        dataset.val.sort_by(|a, b| a.path.cmp(&b.path));
        dataset.train = train;
    }
    if !dataset.report.is_clean() {
        eprintln!("annotations: {}", dataset.report.summary());
    }
    Ok(dataset)
}

/// A loader over one split's samples.
pub fn make_loader(
    config: &TrainConfig,
    dataset: &DetectionDataset,
    split: Split,
    transform: DetectTransform,
    skips: &Arc<SkipLog>,
) -> Result<DetectLoader> {
    let items = DetectItems::new(
        dataset.split(split).to_vec(),
        transform,
        config.normalize,
        config.img_size,
        Arc::clone(skips),
    );
    DetectLoader::new(items, config.loader_settings())
}
