//! What every detection command prepares from a config: the detector's config, the dataset and its loaders.

use std::sync::Arc;

use kiln_models::DetectorConfig;

use super::annotations::{self, AnnotationReport, DetectionDataset, OpenOptions, Split};
use super::loader::{DetectItems, DetectLoader, DetectTransform};
use super::settings::DetectSettings;
use crate::config::TrainConfig;
use crate::data::split::hold_out;
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
    let settings = config.task_settings::<DetectSettings>()?;
    let options = OpenOptions { layout: settings.layout, exif: settings.exif, coco: settings.coco };
    let mut dataset = annotations::open_with(&config.data, &options)?;
    if dataset.val.is_empty() {
        let train = std::mem::take(&mut dataset.train);
        (dataset.train, dataset.val) = hold_out(train, config.val_split, config.seed, |s| s.path.as_path());
    }
    if !dataset.report.is_clean() {
        eprintln!("annotations: {}", dataset.report.summary());
    }
    // A size unlike its record usually means the wrong EXIF convention: each is worth a line (up to 5).
    let mismatches = &dataset.report.size_mismatches;
    if !mismatches.is_empty() {
        let only =
            AnnotationReport { size_mismatches: mismatches.iter().take(5).cloned().collect(), ..Default::default() };
        let lines = only.to_string();
        for line in lines.lines().skip(1) {
            eprintln!("warning: {}", line.trim_start());
        }
        if mismatches.len() > 5 {
            eprintln!("warning: ... and {} more images sized unlike their records", mismatches.len() - 5);
        }
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
    )
    .with_exif(dataset.exif);
    DetectLoader::new(items, config.loader_settings())
}
