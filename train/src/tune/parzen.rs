//! The Parzen estimators of TPE: mixtures of truncated normal kernels (numerical parameters, in the internal,
//! possibly log-transformed space) and of categorical kernels, one component per observation plus a prior.

use rand::Rng;

/// Draws from N(0, 1) (Box–Muller).
pub fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn normal_cdf(x: f64) -> f64 {
    0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// The log normaliser of N(mu, sigma) truncated to [low, high]: log(sigma √(2π)) + log(mass inside the range).
fn truncated_normal_log_norm(mu: f64, sigma: f64, low: f64, high: f64) -> f64 {
    let mass = (normal_cdf((high - mu) / sigma) - normal_cdf((low - mu) / sigma)).max(1e-300);
    (sigma * (2.0 * std::f64::consts::PI).sqrt()).ln() + mass.ln()
}

fn sample_truncated_normal(rng: &mut impl Rng, mu: f64, sigma: f64, low: f64, high: f64) -> f64 {
    for _ in 0..100 {
        let x = mu + sigma * standard_normal(rng);
        if (low..=high).contains(&x) {
            return x;
        }
    }
    rng.random_range(low..=high)
}

/// One dimension of a mixture.
#[derive(Clone, Debug)]
pub enum Kernels {
    /// Per component: mean, standard deviation and log normaliser, truncated to [low, high].
    Numerical { mus: Vec<f64>, sigmas: Vec<f64>, log_norms: Vec<f64>, low: f64, high: f64 },
    /// Per component: probabilities of each choice.
    Categorical { probs: Vec<Vec<f64>> },
}

/// A mixture over components (observations and the prior) with weights; each component has a kernel in every
/// dimension, and a sample picks one component and draws every dimension from it.
#[derive(Clone, Debug)]
pub struct Mixture {
    pub weights: Vec<f64>,
    pub dims: Vec<Kernels>,
}

/// What a dimension's observations are, before the kernels are built.
pub enum Observed<'a> {
    Numerical { values: &'a [f64], low: f64, high: f64 },
    Categorical { indices: &'a [usize], choices: usize },
}

/// Optuna's "magic clip" bandwidths for one numerical dimension: each kernel as wide as the larger gap to its
/// sorted neighbours (the range ends bound the outermost), clipped to [range / min(100, 1 + n), range]; the prior
/// (last) spans the range.
fn magic_clip_sigmas(values: &[f64], low: f64, high: f64) -> Vec<f64> {
    let range = high - low;
    let mut mus: Vec<f64> = values.to_vec();
    mus.push(0.5 * (low + high));
    let n = mus.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| mus[a].total_cmp(&mus[b]));
    let max_sigma = range;
    let min_sigma = range / (100f64).min(1.0 + n as f64);
    let mut sigmas = vec![0.0; n];
    for (rank, &i) in order.iter().enumerate() {
        let left = if rank == 0 { low } else { mus[order[rank - 1]] };
        let right = if rank + 1 == n { high } else { mus[order[rank + 1]] };
        sigmas[i] = (mus[i] - left).max(right - mus[i]).clamp(min_sigma, max_sigma);
    }
    sigmas[n - 1] = max_sigma;
    sigmas
}

impl Mixture {
    /// Builds a mixture of `weights.len()` observations plus a prior of weight `prior_weight`. `multivariate`
    /// uses one bandwidth per dimension from Scott's rule (Optuna's multivariate TPE) instead of magic clip.
    pub fn new(observed: &[Observed], weights: &[f64], prior_weight: f64, multivariate: bool) -> Self {
        let n = weights.len();
        let mut all_weights: Vec<f64> = weights.to_vec();
        all_weights.push(prior_weight);
        let total: f64 = all_weights.iter().sum();
        all_weights.iter_mut().for_each(|w| *w /= total);
        let dims = observed
            .iter()
            .map(|obs| match obs {
                Observed::Numerical { values, low, high } => {
                    let mut mus = values.to_vec();
                    mus.push(0.5 * (low + high));
                    let sigmas = if multivariate {
                        let d = observed.len() as f64;
                        let sigma = 0.2 * ((n.max(1)) as f64).powf(-1.0 / (d + 4.0)) * (high - low);
                        let mut s = vec![sigma; n];
                        s.push(high - low);
                        s
                    } else {
                        magic_clip_sigmas(values, *low, *high)
                    };
                    let log_norms =
                        mus.iter().zip(&sigmas).map(|(m, s)| truncated_normal_log_norm(*m, *s, *low, *high)).collect();
                    Kernels::Numerical { mus, sigmas, log_norms, low: *low, high: *high }
                }
                Observed::Categorical { indices, choices } => {
                    let base = prior_weight / *choices as f64;
                    let mut probs: Vec<Vec<f64>> = indices
                        .iter()
                        .map(|&i| {
                            let mut row = vec![base; *choices];
                            row[i] += 1.0;
                            let sum: f64 = row.iter().sum();
                            row.iter().map(|p| p / sum).collect()
                        })
                        .collect();
                    probs.push(vec![1.0 / *choices as f64; *choices]);
                    Kernels::Categorical { probs }
                }
            })
            .collect();
        Self { weights: all_weights, dims }
    }

    /// Draws one point (one value per dimension; categorical indices as f64).
    pub fn sample(&self, rng: &mut impl Rng) -> Vec<f64> {
        let mut u: f64 = rng.random();
        let mut component = self.weights.len() - 1;
        for (i, w) in self.weights.iter().enumerate() {
            if u < *w {
                component = i;
                break;
            }
            u -= w;
        }
        self.dims
            .iter()
            .map(|kernels| match kernels {
                Kernels::Numerical { mus, sigmas, low, high, .. } => {
                    sample_truncated_normal(rng, mus[component], sigmas[component], *low, *high)
                }
                Kernels::Categorical { probs } => {
                    let row = &probs[component];
                    let mut u: f64 = rng.random();
                    let mut choice = row.len() - 1;
                    for (i, p) in row.iter().enumerate() {
                        if u < *p {
                            choice = i;
                            break;
                        }
                        u -= p;
                    }
                    choice as f64
                }
            })
            .collect()
    }

    /// log density of a point.
    pub fn log_pdf(&self, x: &[f64]) -> f64 {
        let per_component: Vec<f64> = (0..self.weights.len())
            .map(|c| {
                let mut lp = self.weights[c].max(1e-300).ln();
                for (kernels, &v) in self.dims.iter().zip(x) {
                    lp += match kernels {
                        Kernels::Numerical { mus, sigmas, log_norms, .. } => {
                            let z = (v - mus[c]) / sigmas[c];
                            -0.5 * z * z - log_norms[c]
                        }
                        Kernels::Categorical { probs } => probs[c][v as usize].max(1e-300).ln(),
                    };
                }
                lp
            })
            .collect();
        let max = per_component.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        max + per_component.iter().map(|lp| (lp - max).exp()).sum::<f64>().ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_density_integrates_to_one_and_samples_stay_in_range() {
        let values = [0.2, 0.25, 0.9];
        let m =
            Mixture::new(&[Observed::Numerical { values: &values, low: 0.0, high: 1.0 }], &[1.0, 1.0, 1.0], 1.0, false);
        let n = 20_000;
        let integral: f64 = (0..n).map(|i| m.log_pdf(&[(i as f64 + 0.5) / n as f64]).exp() / n as f64).sum();
        assert!((integral - 1.0).abs() < 1e-3, "{integral}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let samples: Vec<f64> = (0..2000).map(|_| m.sample(&mut rng)[0]).collect();
        assert!(samples.iter().all(|x| (0.0..=1.0).contains(x)));
        let near = samples.iter().filter(|x| (0.1..0.35).contains(*x)).count() as f64 / 2000.0;
        assert!(near > 0.35, "mass concentrates near the observations: {near}");
    }

    #[test]
    fn categorical_kernels_favour_observed_choices() {
        let m = Mixture::new(&[Observed::Categorical { indices: &[2, 2, 1], choices: 4 }], &[1.0; 3], 1.0, false);
        let p: Vec<f64> = (0..4).map(|i| m.log_pdf(&[i as f64]).exp()).collect();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(p[2] > p[1] && p[1] > p[0] && (p[0] - p[3]).abs() < 1e-12, "{p:?}");
    }

    #[test]
    fn magic_clip_widths() {
        // mus sorted: 0.1, 0.5 (prior), 0.6; gaps to neighbours: 0.1 -> max(0.1, 0.4) = 0.4, 0.6 -> max(0.1, 0.4).
        let s = magic_clip_sigmas(&[0.1, 0.6], 0.0, 1.0);
        assert!((s[0] - 0.4).abs() < 1e-12 && (s[1] - 0.4).abs() < 1e-12 && s[2] == 1.0, "{s:?}");
    }
}
