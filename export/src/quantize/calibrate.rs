//! Calibration: the range each activation is quantized over, from the values it took on calibration images.
//!
//! - **MinMax**: the smallest and largest value seen.
//! - **Percentile(p)**: the `p`-th and `(100 - p)`-th percentiles of the values, cutting rare outliers.
//! - **Entropy**: the clipping threshold whose 128-level quantization of the magnitude histogram loses the least
//!   information (the Kullback–Leibler divergence between clipped and quantized distributions, TensorRT's method).
//!
//! [`TensorStats`] keeps the exact minimum and maximum and a histogram of the values: 1,024 bins on each side of
//! zero over `[0, R]`. When a value beyond `R` arrives, `R` doubles and neighbouring bins merge, so the histogram
//! is exact at its resolution whatever order the batches come in.

use serde::{Deserialize, Serialize};

/// Bins on each side of zero.
pub const HALF_BINS: usize = 1024;
/// Levels the entropy method quantizes a magnitude histogram to (int8's 128 magnitudes).
pub const QUANTIZED_BINS: usize = 128;

/// How activation ranges are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum CalibMethod {
    MinMax,
    /// Keep the values between the `(100 - p)`-th and `p`-th percentiles (`p` in (50, 100]).
    Percentile {
        percentile: f64,
    },
    Entropy,
}

impl CalibMethod {
    /// The default percentile (as ONNX Runtime's percentile calibrator).
    pub const DEFAULT_PERCENTILE: f64 = 99.999;

    /// Parses `minmax`, `percentile`, `percentile:99.9` or `entropy`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "minmax" => Ok(Self::MinMax),
            "entropy" => Ok(Self::Entropy),
            "percentile" => Ok(Self::Percentile { percentile: Self::DEFAULT_PERCENTILE }),
            other => match other.strip_prefix("percentile:").map(str::parse::<f64>) {
                Some(Ok(p)) if p > 50.0 && p <= 100.0 => Ok(Self::Percentile { percentile: p }),
                _ => Err(format!("'{other}': expected minmax, entropy, percentile or percentile:P with 50 < P <= 100")),
            },
        }
    }

    pub fn name(&self) -> String {
        match self {
            Self::MinMax => "minmax".into(),
            Self::Percentile { percentile } => format!("percentile:{percentile}"),
            Self::Entropy => "entropy".into(),
        }
    }
}

/// What was seen of one tensor over all calibration batches.
#[derive(Clone, Debug)]
pub struct TensorStats {
    pub min: f32,
    pub max: f32,
    pub count: u64,
    /// The tensor's rank (its shape's length), as seen.
    pub rank: usize,
    /// The histogram covers magnitudes in `[0, range]`; 0 until a nonzero value arrives.
    range: f32,
    positive: Vec<u64>,
    negative: Vec<u64>,
}

impl Default for TensorStats {
    fn default() -> Self {
        Self {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            count: 0,
            rank: 0,
            range: 0.0,
            positive: vec![0; HALF_BINS],
            negative: vec![0; HALF_BINS],
        }
    }
}

impl TensorStats {
    /// Adds one batch of the tensor's values (non-finite values are ignored).
    pub fn observe(&mut self, values: &[f32], rank: usize) {
        self.rank = rank;
        let mut amax = 0f32;
        for &v in values.iter().filter(|v| v.is_finite()) {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
            amax = amax.max(v.abs());
        }
        if amax > self.range {
            self.grow(amax);
        }
        if self.range == 0.0 {
            self.count += values.iter().filter(|v| v.is_finite()).count() as u64;
            self.positive[0] += values.iter().filter(|v| v.is_finite()).count() as u64;
            return;
        }
        let per_bin = HALF_BINS as f32 / self.range;
        for &v in values.iter().filter(|v| v.is_finite()) {
            let bin = ((v.abs() * per_bin) as usize).min(HALF_BINS - 1);
            if v < 0.0 {
                self.negative[bin] += 1;
            } else {
                self.positive[bin] += 1;
            }
            self.count += 1;
        }
    }

    /// Widens the histogram to cover `amax`: the first range is `amax` itself, later ones double until it fits.
    fn grow(&mut self, amax: f32) {
        if self.range == 0.0 {
            // Values seen so far were all zero: they stay in bin 0 of the positive side.
            self.range = amax;
            return;
        }
        while self.range < amax {
            self.range *= 2.0;
            for side in [&mut self.positive, &mut self.negative] {
                for j in 0..HALF_BINS / 2 {
                    side[j] = side[2 * j] + side[2 * j + 1];
                }
                side[HALF_BINS / 2..].fill(0);
            }
        }
    }

    /// The width of one histogram bin.
    pub fn bin_width(&self) -> f32 {
        self.range / HALF_BINS as f32
    }

    /// The range to quantize over, by `method`. Nothing observed gives `(0, 0)`.
    pub fn range(&self, method: CalibMethod) -> (f32, f32) {
        if self.count == 0 || !self.min.is_finite() {
            return (0.0, 0.0);
        }
        match method {
            CalibMethod::MinMax => (self.min, self.max),
            CalibMethod::Percentile { percentile } => {
                let tail = ((100.0 - percentile) / 100.0 * self.count as f64).floor() as u64;
                (
                    self.min.max(-self.magnitude_above(&self.negative, tail)),
                    self.max.min(self.magnitude_above(&self.positive, tail)),
                )
            }
            CalibMethod::Entropy => {
                let magnitudes: Vec<u64> = self.positive.iter().zip(&self.negative).map(|(p, n)| p + n).collect();
                let t = entropy_threshold(&magnitudes, QUANTIZED_BINS) as f32 * self.bin_width();
                (self.min.max(-t), self.max.min(t))
            }
        }
    }

    /// The upper edge of the bin on `side` below which all but `tail` of all values lie (the values on the
    /// other side count as below). With no values on `side`, 0.
    fn magnitude_above(&self, side: &[u64], tail: u64) -> f32 {
        let mut beyond = 0u64;
        for (bin, &n) in side.iter().enumerate().rev() {
            beyond += n;
            if beyond > tail {
                return (bin + 1) as f32 * self.bin_width();
            }
        }
        0.0
    }
}

/// The number of histogram bins (from zero) to keep, as TensorRT's entropy calibration chooses it: for each
/// candidate `i` from `levels` up, the reference distribution is the first `i` bins with everything beyond folded
/// into bin `i - 1`; the candidate is those `i` bins merged into `levels` groups, each group's count spread evenly
/// over its nonzero bins. The `i` with the smallest KL(reference ‖ candidate) wins. A histogram of at most
/// `levels` bins keeps them all.
pub fn entropy_threshold(hist: &[u64], levels: usize) -> usize {
    let last_nonzero = hist.iter().rposition(|&n| n > 0).map_or(0, |i| i + 1);
    if last_nonzero <= levels {
        return last_nonzero.max(1);
    }
    let total_beyond: Vec<u64> = {
        let mut suffix = vec![0u64; hist.len() + 1];
        for i in (0..hist.len()).rev() {
            suffix[i] = suffix[i + 1] + hist[i];
        }
        suffix
    };
    let mut best = (f64::INFINITY, last_nonzero);
    for i in levels..=last_nonzero {
        let mut reference: Vec<f64> = hist[..i].iter().map(|&n| n as f64).collect();
        reference[i - 1] += total_beyond[i] as f64;
        let mut candidate = vec![0f64; i];
        for g in 0..levels {
            let (start, end) = (g * i / levels, (g + 1) * i / levels);
            let group = &hist[start..end];
            let nonzero = group.iter().filter(|&&n| n > 0).count();
            if nonzero == 0 {
                continue;
            }
            let each = group.iter().sum::<u64>() as f64 / nonzero as f64;
            for (j, &n) in group.iter().enumerate() {
                if n > 0 {
                    candidate[start + j] = each;
                }
            }
        }
        let kl = kl_divergence(&reference, &candidate);
        if kl < best.0 {
            best = (kl, i);
        }
    }
    best.1
}

/// KL(p ‖ q) of two unnormalised histograms; a bin where `p > 0` and `q = 0` costs as if `q` held a tiny mass.
fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
    if sp == 0.0 || sq == 0.0 {
        return f64::INFINITY;
    }
    p.iter()
        .zip(q)
        .filter(|(&pi, _)| pi > 0.0)
        .map(|(&pi, &qi)| {
            let (pn, qn) = (pi / sp, (qi / sq).max(1e-12));
            pn * (pn / qn).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minmax_is_the_exact_extremes_over_batches() {
        let mut s = TensorStats::default();
        s.observe(&[0.5, -0.25, 3.0], 2);
        s.observe(&[-7.5, 1.0, f32::NAN], 2);
        assert_eq!(s.range(CalibMethod::MinMax), (-7.5, 3.0));
        assert_eq!(s.count, 5);
        assert_eq!(TensorStats::default().range(CalibMethod::MinMax), (0.0, 0.0));
    }

    #[test]
    fn percentile_cuts_the_tails_at_the_bin_edges() {
        // 0.5, 1.5, …, 1023.5 and one outlier at -1024: the histogram's range is 1024, so each bin is 1 wide and
        // every value sits in its own bin.
        let mut values: Vec<f32> = (0..1024).map(|i| i as f32 + 0.5).collect();
        values.push(-1024.0);
        let mut s = TensorStats::default();
        s.observe(&values, 1);
        assert_eq!(s.bin_width(), 1.0);
        // 1025 values, 1 % tail = 10 values: the 11th largest (1013.5) is kept, so its bin's upper edge 1014.
        let (lo, hi) = s.range(CalibMethod::Percentile { percentile: 99.0 });
        assert_eq!(hi, 1014.0);
        // Only one negative value, inside the 10-value tail: the negative side cuts to 0.
        assert_eq!(lo, 0.0);
        // With no tail at all it is the extremes (clamped to them).
        assert_eq!(s.range(CalibMethod::Percentile { percentile: 100.0 }), (-1024.0, 1023.5));
    }

    #[test]
    fn the_histogram_doubles_without_losing_counts() {
        let mut s = TensorStats::default();
        s.observe(&[1.0, 0.5, -0.75], 1);
        assert_eq!(s.bin_width(), 1.0 / 1024.0);
        s.observe(&[3.5], 1);
        assert_eq!(s.bin_width(), 4.0 / 1024.0, "1 -> 2 -> 4");
        assert_eq!(s.positive.iter().sum::<u64>() + s.negative.iter().sum::<u64>(), 4);
        // 1.0 sat in the top bin of [0, 1] (from 1023/1024), which merges into bin 255 of [0, 4].
        assert_eq!(s.positive[255], 1);
        assert_eq!(s.positive[128], 1, "0.5");
        assert_eq!(s.negative[192], 1, "-0.75");
        assert_eq!(s.positive[896], 1, "3.5");
    }

    #[test]
    fn entropy_by_hand_on_a_small_histogram() {
        // Two levels, four bins [4, 4, 0, 1]. Candidates:
        //  i = 2: reference [4, 5]; candidate groups {4},{4} -> [4, 4]. KL = 4/9 ln((4/9)/(1/2)) + 5/9 ln((5/9)/(1/2))
        //  i = 3: reference [4, 4, 1] folded -> [4, 4, 1]; groups {4},{4,0} -> [4, 4, 0]: bin 2 has p > 0, q = 0: huge.
        //  i = 4: reference [4, 4, 0, 1]; groups {4,4},{0,1} -> [4, 4, 0, 1]: KL = 0.
        assert_eq!(entropy_threshold(&[4, 4, 0, 1], 2), 4);
        // Without the far bin the whole histogram fits in the levels.
        assert_eq!(entropy_threshold(&[4, 4], 2), 2);
        let kl2 = kl_divergence(&[4.0, 5.0], &[4.0, 4.0]);
        let by_hand = 4.0 / 9.0 * ((4.0 / 9.0) / 0.5f64).ln() + 5.0 / 9.0 * ((5.0 / 9.0) / 0.5f64).ln();
        assert!((kl2 - by_hand).abs() < 1e-12);
    }

    #[test]
    fn entropy_clips_rare_spikes() {
        // Laplace(0, 1) by its exact quantiles: 100,000 magnitudes -ln((i + 0.5) / n), signs alternating, the
        // largest ln(2n) = 12.2; and ten spikes at ±50. Minmax spends the 8 bits on the spikes, entropy keeps the
        // bulk.
        let n = 100_000;
        let mut values: Vec<f32> = (0..n)
            .map(|i| {
                let m = -(((i as f64) + 0.5) / n as f64).ln() as f32;
                if i % 2 == 0 {
                    m
                } else {
                    -m
                }
            })
            .collect();
        values.extend([50.0, -50.0].repeat(5));
        let mut s = TensorStats::default();
        s.observe(&values, 1);
        assert_eq!(s.range(CalibMethod::MinMax), (-50.0, 50.0));
        let (lo, hi) = s.range(CalibMethod::Entropy);
        assert!(hi > 3.0 && hi < 15.0, "{hi}");
        assert_eq!(lo, -hi, "symmetric data, symmetric threshold");
    }

    #[test]
    fn methods_parse_and_name_themselves() {
        for s in ["minmax", "entropy", "percentile:99.9"] {
            assert_eq!(CalibMethod::parse(s).unwrap().name(), s);
        }
        assert_eq!(CalibMethod::parse("percentile").unwrap(), CalibMethod::Percentile { percentile: 99.999 });
        assert!(CalibMethod::parse("percentile:40").is_err());
        assert!(CalibMethod::parse("kl").unwrap_err().contains("minmax"));
    }
}
