//! Image classification from a kiln model's metadata: top-k classes with names and probabilities, and each
//! image's energy score (out-of-distribution detection) when the model gives logits.

use std::path::Path;

use image::RgbImage;
use serde::Serialize;

use crate::model::Model;
use crate::preprocess::{decode_rgb, Preprocess};
use crate::{Error, Result};

/// One class and its probability.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassScore {
    pub class: String,
    pub index: usize,
    pub probability: f32,
}

/// One image's classification: its top classes and, when the model has a `logits` output (every kiln export
/// does), its energy score `−logsumexp(logits)`: higher for images unlike the training data (Liu et al., 2020).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Classification {
    pub top: Vec<ClassScore>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy: Option<f32>,
}

/// A classifier over a [`Model`] whose metadata says `task: classify` (or a raw model with class names given).
pub struct Classifier {
    model: Model,
    class_names: Vec<String>,
    preprocess: Preprocess,
    /// Index of the output holding probabilities, or of the logits when there is none.
    output: usize,
    softmax: bool,
    /// Index of the logits output, for the energy score.
    logits: Option<usize>,
}

impl Classifier {
    /// Wraps a model with kiln classification metadata.
    pub fn new(model: Model) -> Result<Self> {
        let meta = model.metadata().ok_or_else(|| Error::NoMetadata { path: model.path().to_path_buf() })?;
        if meta.task != "classify" {
            return Err(Error::WrongTask {
                path: model.path().to_path_buf(),
                expected: "classify".into(),
                found: meta.task.clone(),
            });
        }
        crate::metadata_check::check_has_classes(model.path(), meta)?;
        let class_names = meta.class_names.clone();
        for output in ["probs", "logits"] {
            let graph = crate::metadata_check::fixed_last_dim(model.outputs(), output);
            crate::metadata_check::check_class_count(model.path(), "class_names", class_names.len(), graph, "classes")?;
        }
        Self::with_classes(model, class_names)
    }

    /// Wraps any classification model: `class_names` name its outputs' entries (a raw model needs
    /// [`crate::ModelBuilder::raw`] preprocessing). An output named `probs` is used as is; otherwise the first
    /// output is taken as logits and softmaxed.
    pub fn with_classes(model: Model, class_names: Vec<String>) -> Result<Self> {
        let preprocess =
            model.preprocess().cloned().ok_or_else(|| Error::NoMetadata { path: model.path().to_path_buf() })?;
        let (output, softmax) = match model.outputs().iter().position(|o| o.name == "probs") {
            Some(i) => (i, false),
            None => (0, true),
        };
        let logits = match model.outputs().iter().position(|o| o.name == "logits") {
            Some(i) => Some(i),
            None if softmax => Some(0),
            None => None,
        };
        Ok(Self { model, class_names, preprocess, output, softmax, logits })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// The top `k` classes of one decoded image, most probable first.
    pub fn predict(&self, image: &RgbImage, k: usize) -> Result<Vec<ClassScore>> {
        Ok(self.predict_batch(std::slice::from_ref(image), k)?.remove(0))
    }

    /// Decodes and classifies an image file.
    pub fn predict_path(&self, path: &Path, k: usize) -> Result<Vec<ClassScore>> {
        let image = decode_rgb(path).map_err(|reason| Error::Image { path: path.to_path_buf(), reason })?;
        self.predict(&image, k)
    }

    /// The top `k` classes of each image. A model with a fixed batch size is run in chunks of that size.
    pub fn predict_batch(&self, images: &[RgbImage], k: usize) -> Result<Vec<Vec<ClassScore>>> {
        Ok(self.classify_batch(images, k)?.into_iter().map(|c| c.top).collect())
    }

    /// [`Classifier::predict_batch`] with each image's energy score.
    pub fn classify_batch(&self, images: &[RgbImage], k: usize) -> Result<Vec<Classification>> {
        let per = self.preprocess.tensor_len();
        let fixed = self.model.fixed_batch();
        let mut results = Vec::with_capacity(images.len());
        for group in images.chunks(fixed.unwrap_or(images.len().max(1))) {
            // A fixed-batch model gets its batch filled up with zeros; only the group's rows are read back.
            let batch = fixed.unwrap_or(group.len());
            let mut input = vec![0.0; batch * per];
            for (image, out) in group.iter().zip(input.chunks_mut(per)) {
                self.preprocess.apply(image, out);
            }
            let outputs = self.model.run(&input, batch)?;
            let scores = &outputs[self.output];
            crate::metadata_check::check_batch_rows(self.model.path(), scores, batch)?;
            let classes = scores.data.len() / batch;
            if classes == 0 || classes * batch != scores.data.len() || classes != self.class_names.len() {
                return Err(Error::InvalidInput(format!(
                    "the model gives {classes} scores per image for {} class names",
                    self.class_names.len()
                )));
            }
            let energies: Vec<Option<f32>> = match self.logits {
                Some(i) => outputs[i].data.chunks(classes).take(group.len()).map(|row| Some(energy(row))).collect(),
                None => vec![None; group.len()],
            };
            for (row, energy) in scores.data.chunks(classes).take(group.len()).zip(energies) {
                results.push(Classification { top: self.top_k(row, k), energy });
            }
        }
        Ok(results)
    }

    fn top_k(&self, row: &[f32], k: usize) -> Vec<ClassScore> {
        let probs: Vec<f32> = if self.softmax {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
            let sum: f32 = exp.iter().sum();
            exp.iter().map(|v| v / sum).collect()
        } else {
            row.to_vec()
        };
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        order
            .into_iter()
            .take(k.max(1))
            .map(|i| ClassScore { class: self.class_names[i].clone(), index: i, probability: probs[i] })
            .collect()
    }
}

/// `−logsumexp(row)`, computed stably.
pub fn energy(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
    -(max + sum.ln())
}

#[cfg(test)]
mod tests {
    #[test]
    fn energy_is_minus_logsumexp() {
        let e = super::energy(&[1.0, 2.0, 3.0]);
        let expected = -(1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        assert!((e - expected).abs() < 1e-6, "{e} vs {expected}");
        // Large logits do not overflow.
        assert!((super::energy(&[1000.0, 1000.0]) + 1000.0 + 2f32.ln()).abs() < 1e-3);
    }
}
