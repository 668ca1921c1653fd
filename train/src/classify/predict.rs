//! `kiln predict`: a run's checkpoint on image files and folders, with libtorch; top-k classes per image (under
//! test-time augmentation when asked) and its energy score.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use kiln_infer::listing::csv_field;
use kiln_infer::ListingFormat;
use kiln_models::ImageClassifier;

use super::image_folder::Sample;
use super::setup::make_loader;
use super::transform::Transform;
use super::tta::Tta;
use crate::data::{Batches, SkipLog};
use crate::engine::{LoadedRun, PredictionListing};
use crate::run_dir::Which;
use crate::Result;

/// Options of [`super::predict`].
#[derive(Clone, Debug)]
pub struct PredictOptions {
    pub which: Which,
    pub top_k: usize,
    pub device: Option<String>,
    pub batch: Option<usize>,
    /// Test-time augmentation (none by default).
    pub tta: Tta,
}

impl Default for PredictOptions {
    fn default() -> Self {
        Self { which: Which::Best, top_k: 5, device: None, batch: None, tta: Tta::default() }
    }
}

/// One class and its probability.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassScore {
    pub class: String,
    pub index: usize,
    pub probability: f64,
}

/// The result for one image: its top classes, or why it could not be read.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top: Option<Vec<ClassScore>>,
    /// The energy score `−logsumexp(logits)` of the image: higher is less like the training data (compare with
    /// the `energy` percentiles of `kiln test`'s report).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Classification's prediction settings (`kiln predict --top-k --tta`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PredictSettings {
    /// Classes listed per image (1 by default, as `kiln predict`).
    pub top_k: usize,
    /// Test-time augmentation (none by default).
    pub tta: Tta,
}

impl Default for PredictSettings {
    fn default() -> Self {
        Self { top_k: 1, tta: Tta::default() }
    }
}

/// Classifies image `files` with a loaded checkpoint, one entry per file.
pub(crate) fn predict_loaded(
    loaded: &LoadedRun<ImageClassifier>,
    files: &[PathBuf],
    settings: &PredictSettings,
) -> Result<Vec<Prediction>> {
    let options = settings;
    options.tta.validate()?;
    let (config, model, device) = (&loaded.config, &loaded.model, loaded.device);
    let class_names = loaded.ckpt.state.class_names.clone();
    let precision = &loaded.precision;
    let files = files.to_vec();
    let samples: Vec<Sample> = files.iter().map(|path| Sample { path: path.clone(), label: 0 }).collect();
    let skips = Arc::new(SkipLog::default());
    let loader = make_loader(config, &samples, Transform::eval(config.eval_crop_pct), &skips)?;
    let k = options.top_k.clamp(1, class_names.len());
    let mut results: HashMap<PathBuf, (Vec<ClassScore>, f64)> = HashMap::new();
    tch::no_grad(|| -> Result<()> {
        for batch in loader.epoch(0, false) {
            let batch = batch?;
            let scores = options.tta.scores(model, &batch.images.to_device(device), precision)?;
            let (values, indices) = scores.log_probs.exp().topk(k as i64, -1, true, true);
            let values: Vec<Vec<f32>> = Vec::try_from(values.to_device(Device::Cpu))?;
            let indices: Vec<Vec<i64>> = Vec::try_from(indices.to_device(Device::Cpu))?;
            let energies: Vec<f64> = Vec::try_from(scores.energy.to_kind(Kind::Double).to_device(Device::Cpu))?;
            for (((path, vals), idxs), energy) in batch.paths.into_iter().zip(values).zip(indices).zip(energies) {
                let top = vals
                    .iter()
                    .zip(&idxs)
                    .map(|(&p, &i)| ClassScore {
                        class: class_names[i as usize].clone(),
                        index: i as usize,
                        probability: p as f64,
                    })
                    .collect();
                results.insert(path, (top, energy));
            }
        }
        Ok(())
    })?;
    let errors: HashMap<PathBuf, String> = skips.entries().into_iter().collect();
    Ok(files
        .into_iter()
        .map(|path| {
            let (top, energy) = results.remove(&path).unzip();
            let error = if top.is_none() {
                Some(errors.get(&path).cloned().unwrap_or_else(|| "not processed".into()))
            } else {
                None
            };
            Prediction { path, top, energy, error }
        })
        .collect())
}

impl PredictionListing for Prediction {
    fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// JSON is one array of the predictions; CSV has a row per listed class.
    fn write_listing(
        predictions: &[Self],
        format: ListingFormat,
        _names: &[String],
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        match format {
            ListingFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(predictions)?),
            ListingFormat::Csv => {
                writeln!(out, "path,rank,class,probability,energy,error")?;
                for p in predictions {
                    let path = csv_field(&p.path.display().to_string());
                    match (&p.top, &p.error) {
                        (Some(top), _) => {
                            for (rank, c) in top.iter().enumerate() {
                                writeln!(
                                    out,
                                    "{path},{},{},{:.6},{:.4},",
                                    rank + 1,
                                    csv_field(&c.class),
                                    c.probability,
                                    p.energy.unwrap_or(f64::NAN)
                                )?;
                            }
                        }
                        (None, error) => writeln!(out, "{path},,,,,{}", csv_field(error.as_deref().unwrap_or("")))?,
                    }
                }
                Ok(())
            }
            ListingFormat::Table => {
                for p in predictions {
                    match (&p.top, &p.error) {
                        (Some(top), _) => {
                            let classes: Vec<String> =
                                top.iter().map(|c| format!("{} {:.3}", c.class, c.probability)).collect();
                            let energy = p.energy.map(|e| format!("  (energy {e:.2})")).unwrap_or_default();
                            writeln!(out, "{}  {}{energy}", p.path.display(), classes.join(", "))?;
                        }
                        (None, error) => {
                            writeln!(out, "{}  error: {}", p.path.display(), error.as_deref().unwrap_or(""))?
                        }
                    }
                }
                Ok(())
            }
        }
    }
}
