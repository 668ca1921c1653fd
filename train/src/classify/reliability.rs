//! Calibration of a classifier's confidence: the expected calibration error over equal-width confidence bins
//! (Guo et al., 2017: 15 bins, each `(lo, hi]`, weighted by its share of the images) and the reliability diagram
//! (`<split>_reliability.png`: each bin's accuracy against its mean confidence, beside the diagonal).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::plots::{plot_panels, Panel, Series};
use crate::Result;

/// The number of confidence bins of the expected calibration error.
pub const ECE_BINS: usize = 15;

/// Per-bin counts of top-1 confidence and correctness.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reliability {
    pub counts: Vec<u64>,
    pub confidence_sums: Vec<f64>,
    pub correct: Vec<u64>,
}

impl Default for Reliability {
    fn default() -> Self {
        Self::new(ECE_BINS)
    }
}

impl Reliability {
    pub fn new(bins: usize) -> Self {
        Self { counts: vec![0; bins], confidence_sums: vec![0.0; bins], correct: vec![0; bins] }
    }

    /// Adds `other`'s counts (the same bins) to these.
    pub fn merge(&mut self, other: &Reliability) {
        assert_eq!(self.counts.len(), other.counts.len(), "the same bins");
        for (i, count) in other.counts.iter().enumerate() {
            self.counts[i] += count;
            self.confidence_sums[i] += other.confidence_sums[i];
            self.correct[i] += other.correct[i];
        }
    }

    /// Adds an image whose top class had probability `confidence` and was (or was not) its label.
    pub fn add(&mut self, confidence: f64, correct: bool) {
        let bins = self.counts.len();
        // Bin i holds (i / B, (i + 1) / B]; a confidence of 0 goes to the first bin.
        let bin = ((confidence * bins as f64).ceil() as usize).saturating_sub(1).min(bins - 1);
        self.counts[bin] += 1;
        self.confidence_sums[bin] += confidence;
        self.correct[bin] += correct as u64;
    }

    /// Adds a batch: `log_probs` `[N, classes]` (log-probabilities) against `labels` `[N]`.
    pub fn add_batch(&mut self, log_probs: &tch::Tensor, labels: &tch::Tensor) -> crate::Result<()> {
        let (confidence, predicted) = log_probs.max_dim(-1, false);
        let correct: Vec<bool> = Vec::try_from(predicted.eq_tensor(labels).to_device(tch::Device::Cpu))?;
        let confidence: Vec<f64> =
            Vec::try_from(confidence.exp().to_kind(tch::Kind::Double).to_device(tch::Device::Cpu))?;
        for (c, ok) in confidence.into_iter().zip(correct) {
            self.add(c, ok);
        }
        Ok(())
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `Σ_b (n_b / n) · |accuracy_b − confidence_b|`; 0 with no images.
    pub fn ece(&self) -> f64 {
        let n = self.total();
        if n == 0 {
            return 0.0;
        }
        (0..self.counts.len())
            .filter(|&b| self.counts[b] > 0)
            .map(|b| {
                let count = self.counts[b] as f64;
                (self.correct[b] as f64 / count - self.confidence_sums[b] / count).abs() * count / n as f64
            })
            .sum()
    }

    /// Draws the reliability diagram into `path` (PNG).
    pub fn plot(&self, title: &str, path: &Path) -> Result<()> {
        let points: Vec<(f64, f64)> = (0..self.counts.len())
            .filter(|&b| self.counts[b] > 0)
            .map(|b| {
                let count = self.counts[b] as f64;
                (self.confidence_sums[b] / count, self.correct[b] as f64 / count)
            })
            .collect();
        let panel = Panel {
            title: format!("{title}: ECE {:.4} over {} images", self.ece(), self.total()),
            x_label: "confidence (mean of the bin's top-1 probabilities)".into(),
            y_label: "accuracy".into(),
            series: vec![
                Series { name: "perfectly calibrated".into(), points: vec![(0.0, 0.0), (1.0, 1.0)] },
                Series { name: format!("model ({} bins)", self.counts.len()), points },
            ],
            log_y: false,
        };
        plot_panels(&[panel], path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ece_weights_each_bins_gap_by_its_share() {
        let mut r = Reliability::new(10);
        // Bin (0.9, 1.0]: 4 images at 0.95, 3 right: gap |0.75 - 0.95| = 0.2, share 4/6.
        for correct in [true, true, true, false] {
            r.add(0.95, correct);
        }
        // Bin (0.5, 0.6]: 2 images at 0.55, both right: gap 0.45, share 2/6.
        r.add(0.55, true);
        r.add(0.55, true);
        let expected = 4.0 / 6.0 * 0.2 + 2.0 / 6.0 * 0.45;
        assert!((r.ece() - expected).abs() < 1e-12, "{} vs {expected}", r.ece());
        // Edges: 1.0 is in the last bin, 0.6 in (0.5, 0.6], 0 in the first.
        r.add(1.0, true);
        r.add(0.6, true);
        r.add(0.0, false);
        assert_eq!((r.counts[9], r.counts[5], r.counts[0]), (5, 3, 1));
        assert_eq!(Reliability::default().ece(), 0.0);
    }

    #[test]
    fn a_perfectly_calibrated_set_has_no_error_and_the_diagram_is_drawn() {
        let mut r = Reliability::default();
        for i in 0..10 {
            r.add(0.7, i < 7);
        }
        assert!(r.ece() < 1e-12);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reliability.png");
        r.plot("val", &path).unwrap();
        assert!(image::open(&path).unwrap().width() > 100);
    }
}
