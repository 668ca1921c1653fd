//! Evaluating a recognizer on a loader as production runs it: kiln-infer's fit-height preprocessing, per-frame
//! probabilities, kiln-infer's greedy CTC decoding over each line's own frames; then CER, WER, exact-match
//! accuracy and mean normalised edit distance (kiln-infer's [`TextScores`], jiwer's definitions), plus the
//! validation CTC loss.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use kiln_infer::ctc;
use kiln_infer::text_metrics::TextScores;
use kiln_models::text_line::BLANK;
use kiln_models::TextLineRecognizer;

use super::charset::Charset;
use super::loader::TextLoader;
use super::loss::ctc_loss;
use crate::engine::Batches;
use crate::precision::Precision;
use crate::Result;

impl std::fmt::Display for TextMetrics {
    /// CER, WER, exact match and mean normalised edit distance, on one line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CER {:.4}  WER {:.4}  exact match {:.4}  mean NED {:.4}",
            self.cer, self.wer, self.accuracy, self.mean_ned
        )
    }
}

/// The metrics of one evaluation pass (what checkpoints and reports keep).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextMetrics {
    /// Character error rate: character edit distance summed over the lines / reference characters.
    pub cer: f64,
    /// Word error rate: word edit distance summed over the lines / reference words.
    pub wer: f64,
    /// Lines read exactly right.
    pub accuracy: f64,
    /// Mean over lines of edit distance / the longer of reference and prediction.
    pub mean_ned: f64,
}

/// One line's reading.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LineReading {
    pub index: usize,
    pub text: String,
    pub confidence: f32,
    /// Each character with its confidence.
    pub chars: Vec<(String, f32)>,
}

/// One evaluation pass.
#[derive(Clone, Debug)]
pub struct TextEvaluation {
    pub loss: f64,
    pub metrics: TextMetrics,
    pub images: usize,
    /// Each line's reading, by sample index.
    pub readings: Vec<LineReading>,
}

/// Evaluates `model` over every line of `loader`.
pub fn evaluate(
    model: &TextLineRecognizer,
    loader: &TextLoader,
    charset: &Charset,
    precision: &Precision,
) -> Result<TextEvaluation> {
    let device = precision.device;
    let samples = loader.items().samples();
    let mut readings = Vec::with_capacity(samples.len());
    let (mut loss_sum, mut images) = (0.0, 0usize);
    tch::no_grad(|| -> Result<()> {
        for batch in loader.epoch(0, false) {
            let batch = batch?;
            let xs = precision.prepare_batch(&batch.images.to_device(device))?;
            let logits = precision.autocast(|| model.forward_t(&xs, false));
            let n = batch.targets.len();
            loss_sum += ctc_loss(&logits, &batch.targets).double_value(&[]) * n as f64;
            let probs = logits.to_kind(Kind::Float).softmax(-1, Kind::Float).to_device(Device::Cpu);
            let (frames, classes) = (probs.size()[1] as usize, probs.size()[2] as usize);
            let probs: Vec<f32> = Vec::try_from(probs.flatten(0, -1))?;
            for (i, target) in batch.targets.iter().enumerate() {
                let line = &probs[i * frames * classes..(i * frames + target.frames) * classes];
                let decoded = ctc::greedy(line, classes, BLANK as usize);
                let text = charset.decode(&decoded.labels);
                let chars = decoded
                    .labels
                    .iter()
                    .zip(&decoded.char_confidences)
                    .map(|(&c, &p)| (charset.decode(&[c]), p))
                    .collect();
                readings.push(LineReading { index: target.index, text, confidence: decoded.confidence, chars });
            }
            images += n;
        }
        Ok(())
    })?;
    Ok(TextShare { loss_sum, images, readings }.into_evaluation(samples))
}

/// What a recognizer's evaluation of part of a split contributes to the whole's: each line's reading (by sample
/// index) and the loss's sum; the text metrics are computed over all of them (data-parallel validation merges the
/// ranks' shares).
#[derive(Debug, Serialize, Deserialize)]
pub struct TextShare {
    pub loss_sum: f64,
    pub images: usize,
    pub readings: Vec<LineReading>,
}

impl TextShare {
    /// The share an evaluation is.
    pub fn of(evaluation: &TextEvaluation) -> Self {
        let images = evaluation.images;
        Self {
            loss_sum: if images > 0 { evaluation.loss * images as f64 } else { 0.0 },
            images,
            readings: evaluation.readings.clone(),
        }
    }

    /// The evaluation of all `shares`' lines together, in sample order, against `samples` (the split's).
    pub fn merge(shares: Vec<Self>, samples: &[super::dataset::TextSample]) -> TextEvaluation {
        let mut whole = TextShare { loss_sum: 0.0, images: 0, readings: Vec::new() };
        for share in shares {
            whole.loss_sum += share.loss_sum;
            whole.images += share.images;
            whole.readings.extend(share.readings);
        }
        whole.readings.sort_by_key(|r| r.index);
        whole.into_evaluation(samples)
    }

    /// CER, WER, exact match and mean NED of these readings against `samples`' labels.
    fn into_evaluation(self, samples: &[super::dataset::TextSample]) -> TextEvaluation {
        let mut scores = TextScores::default();
        for reading in &self.readings {
            scores.add(&samples[reading.index].text, &reading.text);
        }
        TextEvaluation {
            loss: if self.images > 0 { self.loss_sum / self.images as f64 } else { f64::NAN },
            metrics: TextMetrics {
                cer: scores.cer(),
                wer: scores.wer(),
                accuracy: scores.exact_match(),
                mean_ned: scores.mean_ned(),
            },
            images: self.images,
            readings: self.readings,
        }
    }
}
