//! The Parzen estimators of TPE: mixtures of truncated normal kernels (numerical parameters, in the internal,
//! possibly log-transformed space) and of categorical kernels, one component per observation plus a prior.

use std::collections::HashMap;

use rand::Rng;

/// Draws from N(0, 1) (Box–Muller).
pub fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// log P(a ≤ Z ≤ b) for Z ~ N(0, 1), computed on the side of the tails where it does not cancel (as Optuna's
/// `_log_gauss_mass`).
fn log_gauss_mass(a: f64, b: f64) -> f64 {
    let half_erfc = |x: f64| 0.5 * libm::erfc(x / std::f64::consts::SQRT_2);
    let mass = if a >= 0.0 {
        // Right tail: Φ(-a) − Φ(-b).
        half_erfc(a) - half_erfc(b)
    } else if b <= 0.0 {
        // Left tail: Φ(b) − Φ(a).
        half_erfc(-b) - half_erfc(-a)
    } else {
        // Around the mean: 1 − Φ(a) − Φ(-b).
        1.0 - half_erfc(-a) - half_erfc(b)
    };
    mass.max(0.0).ln()
}

/// Draws from N(mu, sigma) truncated to [low, high].
fn sample_truncated_normal(rng: &mut impl Rng, mu: f64, sigma: f64, low: f64, high: f64) -> f64 {
    for _ in 0..100 {
        let x = mu + sigma * standard_normal(rng);
        if (low..=high).contains(&x) {
            return x;
        }
    }
    rng.random_range(low..=high)
}

/// The grid of an int or stepped-float dimension, in the parameter's own units: its kernels give each grid value
/// the mass of the cell around it (Optuna's discrete truncated normals).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    pub low: f64,
    pub high: f64,
    pub step: f64,
    /// The internal space is log(value).
    pub log: bool,
}

impl Grid {
    /// The internal value of the grid point nearest to internal value `v`.
    fn snap(&self, v: f64) -> f64 {
        let x = if self.log { v.exp() } else { v };
        let x = (self.low + ((x - self.low) / self.step).round() * self.step).clamp(self.low, self.high);
        if self.log {
            x.ln()
        } else {
            x
        }
    }

    /// The internal bounds of the cell of the grid point at internal value `v`.
    fn cell(&self, v: f64) -> (f64, f64) {
        let x = if self.log { v.exp() } else { v };
        let (left, right) = (x - self.step / 2.0, x + self.step / 2.0);
        if self.log {
            (left.ln(), right.ln())
        } else {
            (left, right)
        }
    }
}

/// One dimension of a mixture.
#[derive(Clone, Debug)]
pub enum Kernels {
    /// Per component: mean, standard deviation and the log of its mass inside [low, high] (the internal range);
    /// `grid` makes the kernels discrete.
    Numerical { mus: Vec<f64>, sigmas: Vec<f64>, log_masses: Vec<f64>, low: f64, high: f64, grid: Option<Grid> },
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

/// What a dimension's observations are, before the kernels are built. Numerical values and ranges are internal
/// (log-transformed where the distribution is log; widened by half a step for a grid).
pub enum Observed<'a> {
    Numerical { values: &'a [f64], low: f64, high: f64, grid: Option<Grid> },
    Categorical { indices: &'a [usize], choices: usize },
}

/// Optuna's bandwidths for one numerical dimension's observations (`consider_endpoints=False`, magic clip): each
/// kernel as wide as the larger gap to its sorted neighbours, the outermost ones as the gap to their one inner
/// neighbour (with a single observation, the range ends are its neighbours), clipped to
/// [range / min(100, 1 + kernels), range] where the prior counts as a kernel.
fn magic_clip_sigmas(values: &[f64], low: f64, high: f64) -> Vec<f64> {
    let n = values.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    // The sorted observations between the two range ends.
    let mut sorted = Vec::with_capacity(n + 2);
    sorted.push(low);
    sorted.extend(order.iter().map(|&i| values[i]));
    sorted.push(high);
    let mut sorted_sigmas: Vec<f64> =
        (1..=n).map(|r| (sorted[r] - sorted[r - 1]).max(sorted[r + 1] - sorted[r])).collect();
    if n >= 2 {
        sorted_sigmas[0] = sorted[2] - sorted[1];
        sorted_sigmas[n - 1] = sorted[n] - sorted[n - 1];
    }
    let range = high - low;
    let min_sigma = range / 100f64.min(1.0 + (n + 1) as f64);
    let mut sigmas = vec![0.0; n];
    for (rank, &i) in order.iter().enumerate() {
        sigmas[i] = sorted_sigmas[rank].clamp(min_sigma, range);
    }
    sigmas
}

impl Mixture {
    /// Builds a mixture of `weights.len()` observations plus a prior of weight `prior_weight`, as Optuna 5.0's
    /// `_ParzenEstimator` with its defaults (the same bandwidths for independent and multivariate TPE).
    pub fn new(observed: &[Observed], weights: &[f64], prior_weight: f64) -> Self {
        let n = weights.len();
        let mut all_weights: Vec<f64> = weights.to_vec();
        all_weights.push(if n == 0 { 1.0 } else { prior_weight });
        let total: f64 = all_weights.iter().sum();
        all_weights.iter_mut().for_each(|w| *w /= total);
        let dims = observed
            .iter()
            .map(|obs| match obs {
                Observed::Numerical { values, low, high, grid } => {
                    let mut mus = values.to_vec();
                    mus.push(0.5 * (low + high));
                    let mut sigmas = magic_clip_sigmas(values, *low, *high);
                    sigmas.push(high - low);
                    let log_masses =
                        mus.iter().zip(&sigmas).map(|(m, s)| log_gauss_mass((low - m) / s, (high - m) / s)).collect();
                    Kernels::Numerical { mus, sigmas, log_masses, low: *low, high: *high, grid: *grid }
                }
                Observed::Categorical { indices, choices } => {
                    // Optuna spreads the prior's weight over the kernels (observations and the prior itself).
                    let base = prior_weight / (indices.len() + 1) as f64;
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

    /// Draws one point (one internal value per dimension, on the grid where there is one; categorical indices as
    /// f64).
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
                Kernels::Numerical { mus, sigmas, low, high, grid, .. } => {
                    let v = sample_truncated_normal(rng, mus[component], sigmas[component], *low, *high);
                    grid.map_or(v, |g| g.snap(v))
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

    /// log density of a point (internal values): for a grid dimension, the log probability of its grid value.
    pub fn log_pdf(&self, x: &[f64]) -> f64 {
        self.log_pdfs(&[x.to_vec()])[0]
    }

    /// [`Mixture::log_pdf`] of several points at once: a grid dimension's cell masses are computed once per
    /// distinct value (TPE's candidates repeat grid values often).
    pub fn log_pdfs(&self, points: &[Vec<f64>]) -> Vec<f64> {
        let k = self.weights.len();
        let log_weights: Vec<f64> = self.weights.iter().map(|w| w.ln()).collect();
        // Per point and component: log weight + the log density of each dimension's kernel.
        let mut terms: Vec<f64> = points.iter().flat_map(|_| log_weights.iter().copied()).collect();
        let half_log_two_pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
        for (d, kernels) in self.dims.iter().enumerate() {
            match kernels {
                Kernels::Numerical { mus, sigmas, log_masses, grid: None, .. } => {
                    let log_norms: Vec<f64> =
                        sigmas.iter().zip(log_masses).map(|(s, m)| s.ln() + half_log_two_pi + m).collect();
                    for (p, point) in points.iter().enumerate() {
                        for c in 0..k {
                            let z = (point[d] - mus[c]) / sigmas[c];
                            terms[p * k + c] += -0.5 * z * z - log_norms[c];
                        }
                    }
                }
                Kernels::Numerical { mus, sigmas, log_masses, grid: Some(grid), .. } => {
                    // Kernels on a grid share means, and mostly widths: each distinct (mean, width) once.
                    let mut kernel_of: HashMap<(u64, u64), usize> = HashMap::new();
                    let mut distinct: Vec<usize> = Vec::new();
                    let component_kernel: Vec<usize> = (0..k)
                        .map(|c| {
                            *kernel_of.entry((mus[c].to_bits(), sigmas[c].to_bits())).or_insert_with(|| {
                                distinct.push(c);
                                distinct.len() - 1
                            })
                        })
                        .collect();
                    let mut rows: Vec<(u64, Vec<f64>)> = Vec::new();
                    for (p, point) in points.iter().enumerate() {
                        let key = point[d].to_bits();
                        let row = match rows.iter().position(|(v, _)| *v == key) {
                            Some(i) => &rows[i].1,
                            None => {
                                let (left, right) = grid.cell(point[d]);
                                let per_kernel: Vec<f64> = distinct
                                    .iter()
                                    .map(|&c| {
                                        log_gauss_mass((left - mus[c]) / sigmas[c], (right - mus[c]) / sigmas[c])
                                            - log_masses[c]
                                    })
                                    .collect();
                                rows.push((key, component_kernel.iter().map(|&i| per_kernel[i]).collect()));
                                &rows[rows.len() - 1].1
                            }
                        };
                        terms[p * k..(p + 1) * k].iter_mut().zip(row).for_each(|(t, r)| *t += r);
                    }
                }
                Kernels::Categorical { probs } => {
                    let mut rows: Vec<Option<Vec<f64>>> = vec![None; probs[0].len()];
                    for (p, point) in points.iter().enumerate() {
                        let choice = point[d] as usize;
                        let row = rows[choice].get_or_insert_with(|| probs.iter().map(|r| r[choice].ln()).collect());
                        terms[p * k..(p + 1) * k].iter_mut().zip(row.iter()).for_each(|(t, r)| *t += r);
                    }
                }
            }
        }
        terms
            .chunks(k)
            .map(|per_component| {
                let max = per_component.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if max == f64::NEG_INFINITY {
                    return max;
                }
                max + per_component.iter().map(|lp| (lp - max).exp()).sum::<f64>().ln()
            })
            .collect()
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
            Mixture::new(&[Observed::Numerical { values: &values, low: 0.0, high: 1.0, grid: None }], &[1.0; 3], 1.0);
        let n = 20_000;
        let integral: f64 = (0..n).map(|i| m.log_pdf(&[(i as f64 + 0.5) / n as f64]).exp() / n as f64).sum();
        assert!((integral - 1.0).abs() < 1e-3, "{integral}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let samples: Vec<f64> = (0..2000).map(|_| m.sample(&mut rng)[0]).collect();
        assert!(samples.iter().all(|x| (0.0..=1.0).contains(x)));
        // Samples follow the density: the share in [0.1, 0.35) is the density's mass there, above the uniform 0.25.
        let near = samples.iter().filter(|x| (0.1..0.35).contains(*x)).count() as f64 / 2000.0;
        let mass: f64 = (0..n)
            .map(|i| 0.1 + 0.25 * (i as f64 + 0.5) / n as f64)
            .map(|x| m.log_pdf(&[x]).exp() * 0.25 / n as f64)
            .sum();
        assert!(mass > 0.3 && (near - mass).abs() < 0.035, "sampled {near}, density's mass {mass}");
    }

    #[test]
    fn categorical_kernels_favour_observed_choices() {
        let m = Mixture::new(&[Observed::Categorical { indices: &[2, 2, 1], choices: 4 }], &[1.0; 3], 1.0);
        let p: Vec<f64> = (0..4).map(|i| m.log_pdf(&[i as f64]).exp()).collect();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(p[2] > p[1] && p[1] > p[0] && (p[0] - p[3]).abs() < 1e-12, "{p:?}");
    }

    #[test]
    fn magic_clip_widths() {
        // Sorted 0.1, 0.3, 0.6 in [0, 1]: the outer ones take the gap to their inner neighbour (0.2, 0.3), not to
        // the range ends; the middle one the larger of its gaps (0.3). The floor is 1 / min(100, 1 + 4).
        let s = magic_clip_sigmas(&[0.6, 0.1, 0.3], 0.0, 1.0);
        let expected = [0.3, 0.2, 0.3];
        assert!(s.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-12), "{s:?}");
        let s = magic_clip_sigmas(&[0.1, 0.1, 0.12], 0.0, 1.0);
        assert!(s.iter().all(|v| (v - 0.2).abs() < 1e-12), "gaps of 0 and 0.02 are clipped up to the floor: {s:?}");
        // One observation: both range ends are its neighbours.
        assert_eq!(magic_clip_sigmas(&[0.9], 0.0, 1.0), vec![0.9]);
    }

    #[test]
    fn a_grid_dimension_gives_each_value_the_mass_of_its_cell() {
        let grid = Grid { low: 1.0, high: 8.0, step: 1.0, log: false };
        let m = Mixture::new(
            &[Observed::Numerical { values: &[2.0, 3.0, 3.0], low: 0.5, high: 8.5, grid: Some(grid) }],
            &[1.0; 3],
            1.0,
        );
        let p: Vec<f64> = (1..=8).map(|k| m.log_pdf(&[k as f64]).exp()).collect();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9, "the grid's probabilities sum to 1: {p:?}");
        assert!(p[2] > p[1] && p[1] > p[0] && p[2] > p[7], "{p:?}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let v = m.sample(&mut rng)[0];
            assert!(v.fract() == 0.0 && (1.0..=8.0).contains(&v), "{v} is a grid value");
        }
    }
}
