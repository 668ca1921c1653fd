//! Parameter importance of a study: fANOVA (Hutter et al., "An Efficient Approach for Assessing Hyperparameter
//! Importance", ICML 2014), Optuna's default evaluator.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::sampler::Params;
use super::space::{Distribution, SearchSpace};

/// The random forest fANOVA fits; the defaults are Optuna's (`FanovaImportanceEvaluator` over scikit-learn's
/// `RandomForestRegressor`). Every split considers all features (`max_features` = all).
#[derive(Clone, Debug, PartialEq)]
pub struct FanovaConfig {
    pub n_trees: usize,
    pub max_depth: usize,
    /// A node with fewer distinct trials than this is a leaf.
    pub min_samples_split: usize,
    /// Each child of a split keeps at least this many distinct trials.
    pub min_samples_leaf: usize,
    /// Each tree learns from a bootstrap resample (n draws with replacement) instead of all trials.
    pub bootstrap: bool,
}

impl Default for FanovaConfig {
    fn default() -> Self {
        Self { n_trees: 64, max_depth: 64, min_samples_split: 2, min_samples_leaf: 1, bootstrap: true }
    }
}

/// [`FanovaConfig::importances`] with Optuna's defaults.
pub fn fanova_importances(space: &SearchSpace, trials: &[(Params, f64)], seed: u64) -> Vec<(String, f64)> {
    FanovaConfig::default().importances(space, trials, seed)
}

/// The part of one axis a tree node covers; the root's extents are the whole search space.
#[derive(Clone, Debug)]
enum Extent {
    Interval(f64, f64),
    Choices(Vec<bool>),
}

impl Extent {
    fn size(&self) -> f64 {
        match self {
            Extent::Interval(lo, hi) => hi - lo,
            Extent::Choices(set) => set.iter().filter(|&&c| c).count() as f64,
        }
    }
}

impl FanovaConfig {
    /// Each parameter's share of the objective's variance, by fANOVA: a random forest regressor learns the value
    /// from the parameters, and per tree each parameter's main-effect variance (the variance of its marginal over
    /// the tree's partition of the space, all other parameters averaged out) is divided by the tree's total
    /// variance. The fractions are averaged over trees and normalised to sum to 1; sorted descending.
    ///
    /// Numerical parameters are features in the internal space of [`Distribution::to_internal`], clamped to
    /// [`Distribution::internal_range`]: a log-scale parameter's share of the space is measured in log space, as the
    /// samplers draw it (Optuna measures it on the raw scale). Categorical parameters split on subsets of their choices (present choices
    /// ordered by mean value, best prefix; choices absent from a node join the heavier side), each choice an equal
    /// share of the space; Optuna one-hot encodes them instead.
    ///
    /// Trials without a fitting value for every parameter, or with a non-finite value, are skipped. Fewer than 2
    /// trials left gives an empty list; otherwise every parameter is listed, at 0 if it has a single possible value
    /// or the objective never changes. The same `seed` gives the same result.
    pub fn importances(&self, space: &SearchSpace, trials: &[(Params, f64)], seed: u64) -> Vec<(String, f64)> {
        let axes: Vec<Option<Extent>> = space.values().map(axis).collect();
        let (mut columns, mut y) = (vec![Vec::new(); space.len()], Vec::new());
        for (params, value) in trials.iter().filter(|t| t.1.is_finite()) {
            let row: Option<Vec<f64>> = space
                .iter()
                .zip(&axes)
                .map(|((name, dist), axis)| {
                    let x = dist.to_internal(params.get(name)?).filter(|x| x.is_finite())?;
                    Some(if let Some(Extent::Interval(lo, hi)) = axis { x.clamp(*lo, *hi) } else { x })
                })
                .collect();
            if let Some(row) = row {
                columns.iter_mut().zip(row).for_each(|(column, x)| column.push(x));
                y.push(*value);
            }
        }
        if y.len() < 2 {
            return Vec::new();
        }
        let active: Vec<usize> = (0..axes.len()).filter(|&i| axes[i].is_some()).collect();
        let mut importance = vec![0.0; space.len()];
        if !active.is_empty() && y.iter().any(|&v| v != y[0]) {
            let forest = Forest {
                config: self,
                axes: active.iter().filter_map(|&i| axes[i].clone()).collect(),
                columns: active.iter().map(|&i| std::mem::take(&mut columns[i])).collect(),
                y,
            };
            let mut rng = StdRng::seed_from_u64(seed);
            let seeds: Vec<u64> = (0..self.n_trees).map(|_| rng.random()).collect();
            let per_tree: Vec<Vec<f64>> =
                seeds.par_iter().filter_map(|&s| forest.tree_fractions(&forest.grow_tree(s))).collect();
            for (k, &i) in active.iter().enumerate() {
                importance[i] = per_tree.iter().map(|f| f[k]).sum::<f64>() / per_tree.len().max(1) as f64;
            }
            let total: f64 = importance.iter().sum();
            if total > 0.0 {
                importance.iter_mut().for_each(|v| *v /= total);
            }
        }
        let mut out: Vec<(String, f64)> = space.keys().cloned().zip(importance).collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }
}

/// The whole axis of a distribution; `None` for one with a single possible value, which has no importance.
fn axis(dist: &Distribution) -> Option<Extent> {
    match dist {
        Distribution::Categorical { choices } => {
            (choices.len() > 1).then(|| Extent::Choices(vec![true; choices.len()]))
        }
        _ => dist
            .internal_range()
            .filter(|(lo, hi)| hi > lo && (hi - lo).is_finite())
            .map(|(lo, hi)| Extent::Interval(lo, hi)),
    }
}

struct Forest<'a> {
    config: &'a FanovaConfig,
    axes: Vec<Extent>,
    /// `columns[feature][trial]`: internal values, choice indices for categoricals.
    columns: Vec<Vec<f64>>,
    y: Vec<f64>,
}

/// A leaf of a tree: its prediction and its box of the search space.
type Leaf = (f64, Vec<Extent>);

/// What one tree grows from: the bootstrap counts of the trials as weights.
struct Grower<'a> {
    forest: &'a Forest<'a>,
    rng: StdRng,
    w: Vec<f64>,
    leaves: Vec<Leaf>,
}

impl Forest<'_> {
    /// The leaves of one regression tree (CART, squared error, every feature tried at every node).
    fn grow_tree(&self, seed: u64) -> Vec<Leaf> {
        let (n, bootstrap) = (self.y.len(), self.config.bootstrap);
        let mut g = Grower { forest: self, rng: StdRng::seed_from_u64(seed), w: vec![0.0; n], leaves: Vec::new() };
        for i in 0..n {
            g.w[if bootstrap { g.rng.random_range(0..n) } else { i }] += 1.0;
        }
        let samples = (0..n).filter(|&i| g.w[i] > 0.0).collect();
        g.grow(samples, self.axes.clone(), 0);
        g.leaves
    }

    /// Per feature, the variance of its marginal over the tree's leaf partition divided by the tree's variance;
    /// `None` for a tree that predicts a constant.
    fn tree_fractions(&self, leaves: &[Leaf]) -> Option<Vec<f64>> {
        let d = self.axes.len();
        let shares: Vec<Vec<f64>> =
            leaves.iter().map(|l| l.1.iter().zip(&self.axes).map(|(e, a)| e.size() / a.size()).collect()).collect();
        let volumes: Vec<f64> = shares.iter().map(|s| s.iter().product()).collect();
        let total: f64 = volumes.iter().sum();
        let mean = leaves.iter().zip(&volumes).map(|(l, v)| l.0 * v).sum::<f64>() / total;
        let variance = leaves.iter().zip(&volumes).map(|(l, v)| v * (l.0 - mean).powi(2)).sum::<f64>() / total;
        if leaves.len() < 2 || !(variance > 0.0 && variance.is_finite()) {
            return None;
        }
        let marginal_variance = |f: usize| {
            // The marginal in a cell of axis f: each leaf covering it adds its value times its volume in the
            // other dimensions. Cells: the intervals between the tree's thresholds, or the choices.
            let weighted = |l: usize| leaves[l].0 * (0..d).filter(|&g| g != f).map(|g| shares[l][g]).product::<f64>();
            let cells: Vec<(f64, f64)> = match &self.axes[f] {
                Extent::Interval(low, high) => {
                    let bounds = |e: &Extent| if let Extent::Interval(lo, hi) = e { [*lo, *hi] } else { [*low, *high] };
                    let mut edges: Vec<f64> = leaves.iter().flat_map(|l| bounds(&l.1[f])).collect();
                    edges.sort_by(f64::total_cmp);
                    edges.dedup();
                    let at = |x: f64| edges.binary_search_by(|e| e.total_cmp(&x)).unwrap_or_else(|i| i);
                    let mut delta = vec![0.0; edges.len()];
                    for (l, leaf) in leaves.iter().enumerate() {
                        let [lo, hi] = bounds(&leaf.1[f]);
                        delta[at(lo)] += weighted(l);
                        delta[at(hi)] -= weighted(l);
                    }
                    let mut running = 0.0;
                    let mut cells = Vec::with_capacity(edges.len());
                    for (e, dv) in edges.windows(2).zip(&delta) {
                        running += dv;
                        cells.push(((e[1] - e[0]) / (high - low), running));
                    }
                    cells
                }
                Extent::Choices(all) => (0..all.len())
                    .map(|c| {
                        let covers = |l: &Leaf| matches!(&l.1[f], Extent::Choices(set) if set[c]);
                        let a = (0..leaves.len()).filter(|&l| covers(&leaves[l])).map(weighted).sum::<f64>();
                        (1.0 / all.len() as f64, a)
                    })
                    .collect(),
            };
            cells.iter().map(|(share, a)| share * (a / total - mean).powi(2)).sum::<f64>()
        };
        Some((0..d).map(|f| marginal_variance(f) / variance).collect())
    }
}

impl Grower<'_> {
    fn grow(&mut self, samples: Vec<usize>, mut region: Vec<Extent>, depth: usize) {
        let (x, y, config) = (&self.forest.columns, &self.forest.y, self.forest.config);
        let constant = samples.iter().all(|&i| y[i] == y[samples[0]]);
        let mut best: Option<(f64, usize, Extent)> = None;
        if depth < config.max_depth && samples.len() >= config.min_samples_split.max(2) && !constant {
            // Ties go to the first feature in a random order, as in scikit-learn.
            let mut features: Vec<usize> = (0..region.len()).collect();
            features.shuffle(&mut self.rng);
            for f in features {
                if let Some((score, left)) = self.best_split(f, &samples, &region[f]) {
                    if best.as_ref().is_none_or(|b| score > b.0) {
                        best = Some((score, f, left));
                    }
                }
            }
        }
        let Some((_, f, left)) = best else {
            let (sw, swy) = samples.iter().fold((0.0, 0.0), |(a, b), &i| (a + self.w[i], b + self.w[i] * y[i]));
            self.leaves.push((swy / sw, region));
            return;
        };
        let goes_left = |i: &usize| match &left {
            Extent::Interval(_, t) => x[f][*i] <= *t,
            Extent::Choices(set) => set[x[f][*i] as usize],
        };
        let (l, r): (Vec<usize>, Vec<usize>) = samples.into_iter().partition(goes_left);
        let mut left_region = region.clone();
        region[f] = match (&region[f], &left) {
            (Extent::Interval(_, hi), Extent::Interval(_, t)) => Extent::Interval(*t, *hi),
            (Extent::Choices(node), Extent::Choices(set)) => {
                Extent::Choices(node.iter().zip(set).map(|(&n, &s)| n && !s).collect())
            }
            (node, _) => node.clone(),
        };
        left_region[f] = left;
        self.grow(l, left_region, depth + 1);
        self.grow(r, region, depth + 1);
    }

    /// The split of `samples` on feature `f` that most reduces the weighted squared error (maximises
    /// `S_l² / W_l + S_r² / W_r`) and the left child's extent; `None` if no split leaves `min_samples_leaf`
    /// distinct trials on both sides.
    fn best_split(&self, f: usize, samples: &[usize], extent: &Extent) -> Option<(f64, Extent)> {
        let (x, y, w) = (&self.forest.columns[f], &self.forest.y, &self.w);
        // Trials with equal x, in split order, a cut between two: (x, weight, weighted sum, distinct trials).
        let mut groups: Vec<(f64, f64, f64, usize)> = Vec::new();
        let mut sorted = samples.to_vec();
        sorted.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
        for i in sorted {
            match groups.last_mut() {
                Some(g) if g.0 == x[i] => (g.1, g.2, g.3) = (g.1 + w[i], g.2 + w[i] * y[i], g.3 + 1),
                _ => groups.push((x[i], w[i], w[i] * y[i], 1)),
            }
        }
        if let Extent::Choices(_) = extent {
            groups.sort_by(|a, b| (a.2 / a.1).total_cmp(&(b.2 / b.1)));
        }
        let (sw, swy, n) = groups.iter().fold((0.0, 0.0, 0), |(a, b, c), g| (a + g.1, b + g.2, c + g.3));
        let (mut lw, mut ly, mut ln, min_leaf) = (0.0, 0.0, 0, self.forest.config.min_samples_leaf.max(1));
        let mut best: Option<(usize, f64, f64)> = None;
        for (k, g) in groups.iter().enumerate().take(groups.len().saturating_sub(1)) {
            (lw, ly, ln) = (lw + g.1, ly + g.2, ln + g.3);
            let score = ly * ly / lw + (swy - ly) * (swy - ly) / (sw - lw);
            if ln >= min_leaf && n - ln >= min_leaf && best.is_none_or(|b| score > b.1) {
                best = Some((k, score, lw));
            }
        }
        let (k, score, lw) = best?;
        let left = match extent {
            Extent::Interval(lo, _) => {
                let (a, b) = (groups[k].0, groups[k + 1].0);
                Extent::Interval(*lo, if 0.5 * (a + b) < b { 0.5 * (a + b) } else { a })
            }
            Extent::Choices(set) => {
                let side = |c: usize| groups.iter().position(|g| g.0 as usize == c).map(|p| p <= k);
                Extent::Choices((0..set.len()).map(|c| set[c] && side(c).unwrap_or(2.0 * lw >= sw)).collect())
            }
        };
        Some((score, left))
    }
}

#[cfg(test)]
mod tests {
    use super::super::sampler::{RandomSampler, Sampler};
    use super::*;
    use serde_json::json;

    fn uniform(low: f64, high: f64) -> Distribution {
        Distribution::Float { low, high, log: false, step: None }
    }

    /// `n` random trials of `space`, valued by `f` of their parameters and a uniform noise draw.
    fn trials(space: &SearchSpace, n: usize, seed: u64, f: impl Fn(&Params, f64) -> f64) -> Vec<(Params, f64)> {
        let (mut sampler, mut rng) = (RandomSampler::new(seed), StdRng::seed_from_u64(seed));
        (0..n).map(|_| sampler.sample(space, &[])).map(|p| (p.clone(), f(&p, rng.random()))).collect()
    }

    fn num(p: &Params, k: &str) -> f64 {
        p[k].as_f64().unwrap()
    }

    fn of(importances: &[(String, f64)], name: &str) -> f64 {
        importances.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn three_floats() -> SearchSpace {
        ["x0", "x1", "x2"].iter().map(|k| (k.to_string(), uniform(0.0, 1.0))).collect()
    }

    fn quadratic(p: &Params, noise: f64) -> f64 {
        10.0 * (num(p, "x0") - 0.3).powi(2) + 0.1 * num(p, "x1") + 0.01 * noise
    }

    #[test]
    fn the_parameter_that_drives_the_objective_is_most_important() {
        let space = three_floats();
        let imp = fanova_importances(&space, &trials(&space, 60, 1, quadratic), 0);
        assert_eq!(imp[0].0, "x0", "{imp:?}");
        assert!(of(&imp, "x2") < 0.05, "{imp:?}");
        assert!((imp.iter().map(|p| p.1).sum::<f64>() - 1.0).abs() < 1e-9, "{imp:?}");
        assert!(imp.windows(2).all(|w| w[0].1 >= w[1].1), "{imp:?}");
    }

    #[test]
    fn a_categorical_that_drives_the_objective_dominates() {
        let choices = vec![json!("adamw"), json!("sgd"), json!("lion"), json!("adam")];
        let space: SearchSpace =
            [("optimizer".into(), Distribution::Categorical { choices }), ("wd".into(), uniform(0.0, 0.1))].into();
        let by_optimizer = |p: &Params, noise: f64| match p["optimizer"].as_str() {
            Some("sgd") => 1.0 + 0.05 * noise,
            Some("lion") => 0.4 + 0.05 * noise,
            _ => 0.1 + 0.05 * noise,
        };
        let imp = fanova_importances(&space, &trials(&space, 60, 2, by_optimizer), 0);
        assert_eq!(imp[0].0, "optimizer", "{imp:?}");
        assert!(of(&imp, "optimizer") > 0.8, "{imp:?}");
    }

    #[test]
    fn log_scale_parameters_are_measured_in_log_space() {
        // Below 1e-4 is a quarter of the log range but 0.1% of the raw one: only in log space is lr dominant.
        let lr = Distribution::Float { low: 1e-5, high: 1e-1, log: true, step: None };
        let space: SearchSpace = [("lr".into(), lr), ("dropout".into(), uniform(0.0, 0.5))].into();
        let step = |p: &Params, _: f64| if num(p, "lr") < 1e-4 { 1.0 } else { 0.0 } + 0.3 * num(p, "dropout");
        let imp = fanova_importances(&space, &trials(&space, 80, 3, step), 0);
        assert_eq!(imp[0].0, "lr", "{imp:?}");
        assert!(of(&imp, "lr") > 0.8, "{imp:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_importances() {
        let (space, config) = (three_floats(), FanovaConfig { n_trees: 8, ..FanovaConfig::default() });
        let t = trials(&space, 40, 4, quadratic);
        assert_eq!(config.importances(&space, &t, 7), config.importances(&space, &t, 7));
        assert_ne!(config.importances(&space, &t, 7), config.importances(&space, &t, 8));
    }

    #[test]
    fn degenerate_studies_give_zeros_or_nothing() {
        let mut space = three_floats();
        space.insert("fixed".into(), Distribution::Categorical { choices: vec![json!(1)] });
        let constant = trials(&space, 20, 5, |_, _| 0.5);
        let imp = fanova_importances(&space, &constant, 0);
        assert_eq!(imp.len(), 4);
        assert!(imp.iter().all(|(_, v)| *v == 0.0), "{imp:?}");
        assert!(fanova_importances(&space, &constant[..1], 0).is_empty());
        // Trials missing a parameter, or with a value that does not fit, are skipped.
        let mut unusable = constant[..3].to_vec();
        unusable[0].0.remove("x1");
        unusable[1].0.insert("fixed".into(), json!(2));
        unusable[2].1 = f64::NAN;
        assert!(fanova_importances(&space, &unusable, 0).is_empty());
        let mut varied = trials(&space, 30, 6, quadratic);
        varied.extend(unusable);
        let imp = fanova_importances(&space, &varied, 0);
        assert!(imp.iter().all(|(_, v)| v.is_finite()) && of(&imp, "fixed") == 0.0, "{imp:?}");
    }
}
