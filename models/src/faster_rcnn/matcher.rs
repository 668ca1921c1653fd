//! Matching anchors or proposals to ground-truth boxes, and the balanced sampling of positives and negatives that
//! the RPN and the RoI heads train on, as torchvision's `Matcher` and `BalancedPositiveNegativeSampler`.

use tch::{Kind, Tensor};

/// What [`Matcher::matches`] gives a prediction whose best IoU is below the low threshold.
pub const BELOW_LOW_THRESHOLD: i64 = -1;
/// … and one between the two thresholds.
pub const BETWEEN_THRESHOLDS: i64 = -2;

/// torchvision's `Matcher(high, low, allow_low_quality_matches)`: the RPN's is `(0.7, 0.3, true)`, the RoI heads'
/// `(0.5, 0.5, false)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Matcher {
    pub high: f64,
    pub low: f64,
    pub allow_low_quality_matches: bool,
}

impl Matcher {
    /// `[P]` int64: for each prediction (column of `quality` `[G, P]`, the IoUs), the index of its best ground
    /// truth when that IoU is at least `high`, else [`BELOW_LOW_THRESHOLD`] or [`BETWEEN_THRESHOLDS`]. With low-quality
    /// matches, every prediction that is some ground truth's best (ties included) keeps its best match whatever the
    /// IoU. No ground truth: every prediction is below the low threshold.
    pub fn matches(&self, quality: &Tensor) -> Tensor {
        let size = quality.size();
        if size[0] == 0 {
            return Tensor::full([size[1]], BELOW_LOW_THRESHOLD, (Kind::Int64, quality.device()));
        }
        let (values, matches) = quality.max_dim(0, false);
        let all_matches = matches.copy();
        let below = values.lt(self.low);
        let between = values.ge(self.low).logical_and(&values.lt(self.high));
        let matches = matches.masked_fill(&below, BELOW_LOW_THRESHOLD).masked_fill(&between, BETWEEN_THRESHOLDS);
        if !self.allow_low_quality_matches {
            return matches;
        }
        let (best_per_truth, _) = quality.max_dim(1, true);
        let is_best = quality.eq_tensor(&best_per_truth).any_dim(0, false); // [P]
        matches.where_self(&is_best.logical_not(), &all_matches)
    }
}

/// torchvision's `BalancedPositiveNegativeSampler`: from `labels` (`> 0` positive, `0` negative, `< 0` ignored),
/// at most `batch_size · positive_fraction` positives and enough negatives to fill `batch_size`, each drawn without
/// replacement by `shuffle`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    pub batch_size: usize,
    pub positive_fraction: f64,
}

/// The positions a [`Sampler`] drew.
#[derive(Debug, Default, PartialEq)]
pub struct Sampled {
    pub positives: Vec<i64>,
    pub negatives: Vec<i64>,
}

impl Sampled {
    pub fn all(&self) -> Vec<i64> {
        [&self.positives[..], &self.negatives[..]].concat()
    }
}

impl Sampler {
    /// Draws from `labels` (a CPU list); `rng` seeds the permutations.
    pub fn sample(&self, labels: &[i64], rng: &mut SplitMix64) -> Sampled {
        let positive: Vec<i64> = (0..labels.len() as i64).filter(|&i| labels[i as usize] > 0).collect();
        let negative: Vec<i64> = (0..labels.len() as i64).filter(|&i| labels[i as usize] == 0).collect();
        let num_pos = ((self.batch_size as f64 * self.positive_fraction) as usize).min(positive.len());
        let num_neg = (self.batch_size - num_pos).min(negative.len());
        Sampled { positives: rng.choose(&positive, num_pos), negatives: rng.choose(&negative, num_neg) }
    }
}

/// A small seeded generator (Steele et al.'s SplitMix64) for the samplers, so that a draw is reproducible from one
/// seed: training takes the seed from libtorch's generator (saved in checkpoints), validation a fixed one.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `count` distinct items of `items`, in a random order (a partial Fisher–Yates shuffle).
    pub fn choose(&mut self, items: &[i64], count: usize) -> Vec<i64> {
        let mut pool = items.to_vec();
        let count = count.min(pool.len());
        for i in 0..count {
            let j = i + (self.next_u64() % (pool.len() - i) as u64) as usize;
            pool.swap(i, j);
        }
        pool.truncate(count);
        pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: &[&[f32]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, -1])
    }

    #[test]
    fn thresholds_and_low_quality_matches_as_torchvision() {
        // 2 truths × 5 predictions. Prediction 1 is truth 1's best (0.4) though below 0.7; prediction 3 ties with it.
        let q = matrix(&[&[0.9, 0.1, 0.2, 0.0, 0.65], &[0.0, 0.4, 0.25, 0.4, 0.1]]);
        let rpn = Matcher { high: 0.7, low: 0.3, allow_low_quality_matches: true };
        let m: Vec<i64> = Vec::try_from(rpn.matches(&q)).unwrap();
        assert_eq!(m, [0, 1, BELOW_LOW_THRESHOLD, 1, BETWEEN_THRESHOLDS]);
        let strict = Matcher { allow_low_quality_matches: false, ..rpn };
        let m: Vec<i64> = Vec::try_from(strict.matches(&q)).unwrap();
        assert_eq!(m, [0, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, BETWEEN_THRESHOLDS]);
        let roi = Matcher { high: 0.5, low: 0.5, allow_low_quality_matches: false };
        let m: Vec<i64> = Vec::try_from(roi.matches(&q)).unwrap();
        assert_eq!(m, [0, -1, -1, -1, 0]);
        let none = rpn.matches(&Tensor::zeros([0, 3], (Kind::Float, tch::Device::Cpu)));
        assert_eq!(Vec::<i64>::try_from(none).unwrap(), [-1, -1, -1]);
    }

    #[test]
    fn sampling_caps_positives_and_fills_with_negatives() {
        let sampler = Sampler { batch_size: 8, positive_fraction: 0.25 };
        let labels: Vec<i64> = (0..100)
            .map(|i| {
                if i % 10 == 0 {
                    3
                } else if i % 10 == 5 {
                    -1
                } else {
                    0
                }
            })
            .collect();
        let mut rng = SplitMix64::new(7);
        let s = sampler.sample(&labels, &mut rng);
        assert_eq!((s.positives.len(), s.negatives.len()), (2, 6));
        assert!(s.positives.iter().all(|&i| labels[i as usize] > 0));
        assert!(s.negatives.iter().all(|&i| labels[i as usize] == 0));
        let mut all = s.all();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 8, "drawn without replacement");
        // Few positives: the negatives fill the batch; few of both: everything.
        let s = Sampler { batch_size: 8, positive_fraction: 0.5 }.sample(&[1, 0, 0, 0, 0, 0, 0, 0, 0, -1], &mut rng);
        assert_eq!((s.positives.len(), s.negatives.len()), (1, 7));
        let s = Sampler { batch_size: 8, positive_fraction: 0.5 }.sample(&[1, 0, -1], &mut rng);
        assert_eq!((s.positives, s.negatives), (vec![0], vec![1]));
        // The same seed draws the same items.
        let a = SplitMix64::new(3).choose(&(0..50).collect::<Vec<_>>(), 5);
        assert_eq!(a, SplitMix64::new(3).choose(&(0..50).collect::<Vec<_>>(), 5));
        assert_ne!(a, SplitMix64::new(4).choose(&(0..50).collect::<Vec<_>>(), 5));
    }
}
