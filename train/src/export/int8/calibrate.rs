//! Calibration for static int8: which images, and the activation statistics they produce in the float graph.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln_export::proto::ModelProto;
use kiln_export::quantize::{with_observed_outputs, TensorStats};
use kiln_infer::{Backend, Model, Preprocess};

use super::CalibSource;
use crate::data::is_image;
use crate::{Error, Result};

/// At most `limit` images from `source`, spread evenly over it (sorted by path, so the choice is repeatable), and
/// a description of the source for the metadata. An empty source is an error naming it.
pub fn calibration_images(
    source: &CalibSource,
    limit: usize,
    run: Option<&super::RunData<'_>>,
) -> Result<(Vec<PathBuf>, String)> {
    let (all, described) = match source {
        CalibSource::Folder(dir) => {
            if !dir.is_dir() {
                return Err(Error::Int8 { path: dir.clone(), reason: "the calibration folder does not exist".into() });
            }
            let mut found = Vec::new();
            walk(dir, &mut found)?;
            found.sort();
            (found, dir.display().to_string())
        }
        CalibSource::Split(split) => {
            let run = run.ok_or_else(|| Error::InvalidSetting {
                key: "calib-split".into(),
                reason: "calibrating on a split needs the run; give a folder with --calib".into(),
            })?;
            let images: Vec<PathBuf> = (run.split_images)(run.config, *split)?.into_iter().map(|(p, _)| p).collect();
            (images, format!("{} split of {}", split.name(), run.config.data.display()))
        }
    };
    if all.is_empty() {
        let path = match source {
            CalibSource::Folder(dir) => dir.clone(),
            CalibSource::Split(_) => run.map(|r| r.config.data.clone()).unwrap_or_default(),
        };
        return Err(Error::Int8 { path, reason: format!("no images to calibrate with ({described})") });
    }
    if limit == 0 {
        return Err(Error::InvalidSetting { key: "calib-images".into(), reason: "must be at least 1".into() });
    }
    let n = limit.min(all.len());
    let chosen = (0..n).map(|i| all[i * all.len() / n].clone()).collect();
    Ok((chosen, described))
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    for entry in entries {
        let path = entry.map_err(|source| Error::Io { path: dir.to_path_buf(), source })?.path();
        if path.is_dir() {
            walk(&path, found)?;
        } else if is_image(&path) {
            found.push(path);
        }
    }
    Ok(())
}

/// What calibration saw.
pub struct Calibration {
    pub stats: HashMap<String, TensorStats>,
    pub used: usize,
    /// Images that could not be decoded (skipped and counted).
    pub skipped: usize,
    /// The first image's preprocessed tensor, to time candidate plans on.
    pub first_input: Option<Vec<f32>>,
}

/// A file removed when dropped.
pub(crate) struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `bytes` as a hidden temporary model in `dir` and opens it on ONNX Runtime's CPU provider.
pub(crate) fn open_temporary(bytes: &[u8], dir: &Path, tag: &str, threads: Option<usize>) -> Result<(Model, TempFile)> {
    let path = dir.join(format!(".kiln-{tag}-{}.onnx", std::process::id()));
    crate::fsutil::write_atomic(&path, bytes)?;
    let guard = TempFile(path.clone());
    let mut builder = Model::builder().backend(Backend::default());
    if let Some(t) = threads {
        builder = builder.threads(t);
    }
    let model = builder.open(&path).map_err(|e| Error::Int8 { path: path.clone(), reason: e.to_string() })?;
    Ok((model, guard))
}

/// Runs `images` through `model` with `points` as extra outputs and gathers their statistics. Unreadable images
/// are skipped and counted; none readable is an error naming `source`.
pub fn collect(
    model: &ModelProto,
    points: &[String],
    images: &[PathBuf],
    preprocess: &Preprocess,
    scratch: &Path,
    source: &str,
) -> Result<Calibration> {
    // A graph input is observed from the tensor fed in (ONNX Runtime does not return an input as an output).
    let inputs: Vec<String> = model.graph.input.iter().map(|i| i.name.clone()).collect();
    let inner: Vec<String> = points.iter().filter(|p| !inputs.contains(p)).cloned().collect();
    let observed = with_observed_outputs(model, &inner);
    let (session, _guard) = open_temporary(&kiln_export::to_bytes(&observed)?, scratch, "calibrate", None)?;
    let batch = session.fixed_batch().unwrap_or(8);
    let mut stats: HashMap<String, TensorStats> = points.iter().map(|p| (p.clone(), TensorStats::default())).collect();
    let (mut used, mut skipped, mut first_input) = (0, 0, None);
    let mut pending: Vec<f32> = Vec::new();
    let mut in_batch = 0;
    let len = preprocess.tensor_len();
    let run = |input: &[f32], n: usize, stats: &mut HashMap<String, TensorStats>| -> Result<()> {
        let outputs = session.run(input, n).map_err(|e| Error::Int8 { path: scratch.into(), reason: e.to_string() })?;
        if let Some(s) = inputs.first().and_then(|name| stats.get_mut(name)) {
            s.observe(input, 4);
        }
        for o in outputs {
            if let Some(s) = stats.get_mut(&o.name) {
                s.observe(&o.data, o.shape.len());
            }
        }
        Ok(())
    };
    for path in images {
        let image = match kiln_infer::preprocess::decode_rgb(path) {
            Ok(image) => image,
            Err(reason) => {
                eprintln!("calibration: skipping {}: {reason}", path.display());
                skipped += 1;
                continue;
            }
        };
        let start = pending.len();
        pending.resize(start + len, 0.0);
        preprocess.apply(&image, &mut pending[start..]);
        if first_input.is_none() {
            first_input = Some(pending[start..].to_vec());
        }
        in_batch += 1;
        used += 1;
        if in_batch == batch {
            run(&pending, in_batch, &mut stats)?;
            pending.clear();
            in_batch = 0;
        }
    }
    if in_batch > 0 {
        if session.fixed_batch().is_some() {
            // A fixed batch cannot take a partial one: pad with copies of its first image.
            while in_batch < batch {
                pending.extend_from_within(..len);
                in_batch += 1;
            }
        }
        run(&pending, in_batch, &mut stats)?;
    }
    if used == 0 {
        return Err(Error::Int8 {
            path: PathBuf::from(source),
            reason: format!("no readable calibration image ({skipped} unreadable)"),
        });
    }
    Ok(Calibration { stats, used, skipped, first_input })
}
