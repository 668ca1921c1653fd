//! The energy score's distribution on a split (out-of-distribution detection, Liu et al. 2020): per-image
//! energies `−logsumexp(logits)` summarised in the split's report and drawn as a histogram
//! (`<split>_energy.png`). An image scoring well above the split's 95th percentile is unlike what the model saw.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::plots::{plot_panels, Panel, Series};
use crate::Result;

/// Bins of the energy histogram.
const HISTOGRAM_BINS: usize = 40;

/// Summary statistics of a split's energy scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnergySummary {
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    /// The 5th, 50th and 95th percentiles (linear interpolation between order statistics, as numpy's default).
    pub p05: f64,
    pub p50: f64,
    pub p95: f64,
}

/// The `q`-quantile of sorted values, interpolating linearly between neighbours.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

impl EnergySummary {
    /// `None` for no values.
    pub fn of(energies: &[f64]) -> Option<Self> {
        if energies.is_empty() {
            return None;
        }
        let mut sorted = energies.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            p05: quantile(&sorted, 0.05),
            p50: quantile(&sorted, 0.5),
            p95: quantile(&sorted, 0.95),
        })
    }
}

/// Counts of `energies` in equal-width bins between their minimum and maximum: `(bin centre, count)`.
pub fn histogram(energies: &[f64], bins: usize) -> Vec<(f64, f64)> {
    let Some(summary) = EnergySummary::of(energies) else {
        return Vec::new();
    };
    let width = ((summary.max - summary.min) / bins as f64).max(f64::EPSILON);
    let mut counts = vec![0usize; bins];
    for e in energies {
        counts[(((e - summary.min) / width) as usize).min(bins - 1)] += 1;
    }
    counts.iter().enumerate().map(|(i, &n)| (summary.min + (i as f64 + 0.5) * width, n as f64)).collect()
}

/// Draws the histogram of `energies` into `path` (PNG).
pub fn plot_energy(energies: &[f64], title: &str, path: &Path) -> Result<()> {
    let panel = Panel {
        title: format!("{title}: energy score of {} images (lower: more like the training data)", energies.len()),
        x_label: "energy = -logsumexp(logits)".into(),
        y_label: "images".into(),
        series: vec![Series { name: String::new(), points: histogram(energies, HISTOGRAM_BINS) }],
        log_y: false,
    };
    plot_panels(&[panel], path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_and_histogram_of_known_values() {
        let values: Vec<f64> = (0..=100).map(|i| -(i as f64)).collect();
        let s = EnergySummary::of(&values).unwrap();
        assert_eq!((s.min, s.max, s.mean, s.p50), (-100.0, 0.0, -50.0, -50.0));
        assert!((s.p05 + 95.0).abs() < 1e-12 && (s.p95 + 5.0).abs() < 1e-12, "{s:?}");
        let h = histogram(&values, 10);
        assert_eq!(h.len(), 10);
        assert_eq!(h.iter().map(|(_, n)| *n).sum::<f64>(), 101.0, "every value counted once");
        assert!((h[0].0 + 95.0).abs() < 1e-9, "first bin centred at -95: {h:?}");
        assert_eq!(EnergySummary::of(&[]), None);
        assert_eq!(histogram(&[3.0, 3.0], 4).iter().map(|(_, n)| *n).sum::<f64>(), 2.0, "equal values");
    }
}
