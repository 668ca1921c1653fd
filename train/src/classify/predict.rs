//! `kiln predict`: a run's checkpoint on image files and folders, with libtorch; top-k classes per image (under
//! test-time augmentation when asked) and its energy score.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tch::{Device, Kind};

use super::model::load_run_classifier;
use super::setup::make_loader;
use super::tta::Tta;
use crate::data::image_folder::is_image;
use crate::data::{Sample, SkipLog, Transform};
use crate::precision::Precision;
use crate::run_dir::{RunDir, Which};
use crate::{Error, Result};

/// Options of [`predict`].
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

/// Expands folders (recursively, sorted) into their image files; files are kept as given, each file once.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let io = |source| Error::Io { path: dir.to_path_buf(), source };
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(io)?;
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out)?;
            } else if is_image(&path) {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            walk(input, &mut files)?;
        } else if input.exists() {
            files.push(input.clone());
        } else {
            return Err(Error::Io {
                path: input.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            });
        }
    }
    // A file named twice (given alone and inside a given folder, or twice) is classified once, where it first
    // appears.
    let mut seen = std::collections::HashSet::new();
    files.retain(|path| seen.insert(std::fs::canonicalize(path).unwrap_or_else(|_| path.clone())));
    Ok(files)
}

/// Classifies every image under `inputs` with the run's checkpoint. Unreadable images get an error entry and the
/// rest go on.
pub fn predict(run: &RunDir, inputs: &[PathBuf], options: &PredictOptions) -> Result<Vec<Prediction>> {
    options.tta.validate()?;
    let loaded = load_run_classifier(run, options.which, options.device.as_deref(), "kiln predict", |config| {
        if let Some(batch) = options.batch {
            config.batch = batch.max(1);
        }
    })?;
    let (config, model, device) = (&loaded.config, &loaded.model, loaded.device);
    let class_names = loaded.ckpt.state.class_names.clone();
    let precision = Precision::resolve(config.amp, config.channels_last, device)?;
    precision.prepare_params(&loaded.vs)?;

    let files = expand_inputs(inputs)?;
    let samples: Vec<Sample> = files.iter().map(|path| Sample { path: path.clone(), label: 0 }).collect();
    let skips = Arc::new(SkipLog::default());
    let loader = make_loader(config, &samples, Transform::eval(config), &skips)?;
    let k = options.top_k.clamp(1, class_names.len());
    let mut results: HashMap<PathBuf, (Vec<ClassScore>, f64)> = HashMap::new();
    tch::no_grad(|| -> Result<()> {
        for batch in loader.epoch(0, false) {
            let batch = batch?;
            let scores = options.tta.scores(model, &batch.images.to_device(device), &precision)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_named_twice_is_listed_once() {
        let dir = tempfile::tempdir().unwrap();
        let photos = dir.path().join("photos");
        std::fs::create_dir_all(photos.join("sub")).unwrap();
        for name in ["a.jpg", "sub/b.png"] {
            std::fs::write(photos.join(name), b"").unwrap();
        }
        std::fs::write(photos.join("notes.txt"), b"").unwrap();
        let inputs = [photos.join("sub/b.png"), photos.clone(), photos.join("./a.jpg")];
        let files = expand_inputs(&inputs).unwrap();
        assert_eq!(files, vec![photos.join("sub/b.png"), photos.join("a.jpg")]);
    }
}
