//! What every OCR command prepares from a config: the recognizer's config, the input geometry, the dataset and
//! its loaders.

use std::sync::Arc;

use kiln_models::RecognizerConfig;

use super::charset::Charset;
use super::dataset::{self, CharsetChoice, TextDataset};
use super::loader::{LineInput, TextItems, TextLoader, TextTransform};
use super::settings::OcrSettings;
use crate::config::TrainConfig;
use crate::data::split::hold_out;
use crate::data::{SkipLog, Split};
use crate::Result;

/// The recognizer's config from the training config, for a charset of `num_chars` characters.
pub fn recognizer_config(config: &TrainConfig, num_chars: usize) -> Result<RecognizerConfig> {
    let ocr: OcrSettings = config.task_settings()?;
    Ok(RecognizerConfig {
        dims: ocr.dims.clone(),
        depths: ocr.depths.clone(),
        lstm_hidden: ocr.lstm_hidden,
        lstm_layers: ocr.lstm_layers,
        drop_path_rate: config.drop_path_rate,
        layer_scale_init: ocr.layer_scale_init,
        backbone: ocr.backbone,
        frame_shortcut: ocr.frame_shortcut,
        ..RecognizerConfig::new(&config.model, num_chars as i64 + 1, ocr.height as i64)
    })
}

/// The input geometry of the config.
pub fn line_input(config: &TrainConfig) -> Result<LineInput> {
    let ocr: OcrSettings = config.task_settings()?;
    Ok(LineInput { height: ocr.height, width: ocr.width, normalize: config.normalize })
}

/// Opens the config's text dataset; without a val split, `val_split` of train (seeded) becomes val. A charset
/// saved by a run (`charset` given) replaces the config's setting.
pub fn open_dataset(config: &TrainConfig, charset: Option<&[String]>) -> Result<TextDataset> {
    let ocr: OcrSettings = config.task_settings()?;
    let choice = match charset {
        Some(chars) => CharsetChoice::Saved(Charset::new(chars.iter().cloned())),
        None => CharsetChoice::Setting(&ocr.charset),
    };
    let mut dataset = dataset::open(&config.data, choice, ocr.frames())?;
    if dataset.val.is_empty() {
        let train = std::mem::take(&mut dataset.train);
        (dataset.train, dataset.val) = hold_out(train, config.val_split, config.seed, |s| s.path.as_path());
    }
    if !dataset.skipped.is_empty() {
        eprintln!("labels: {} line(s) skipped", dataset.skipped.len());
        for s in dataset.skipped.iter().take(10) {
            eprintln!("  {}:{}: {}", s.file.display(), s.line, s.reason);
        }
    }
    Ok(dataset)
}

/// A loader over one split's lines.
pub fn make_loader(
    config: &TrainConfig,
    dataset: &TextDataset,
    split: Split,
    transform: TextTransform,
    skips: &Arc<SkipLog>,
) -> Result<TextLoader> {
    let items = TextItems::new(
        dataset.split(split.name()).to_vec(),
        dataset.charset.clone(),
        transform,
        line_input(config)?,
        Arc::clone(skips),
    );
    TextLoader::new(items, config.loader_settings())
}
