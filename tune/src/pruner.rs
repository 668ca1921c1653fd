//! Pruners: whether a running trial should stop, from its intermediate values and other trials' (values are
//! minimised). Median (Optuna's `MedianPruner`), successive halving (`SuccessiveHalvingPruner`), none.

use std::collections::BTreeMap;

/// A trial's reported values by step (epoch), and whether it ran to the end.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Curve {
    pub values: BTreeMap<usize, f64>,
    pub complete: bool,
}

/// Decides whether to stop a trial after it reports a value.
pub trait Pruner {
    /// `current` holds the running trial's values up to `step`; `others` every other trial's.
    fn should_prune(&self, current: &Curve, step: usize, others: &[Curve]) -> bool;
}

/// Never prunes.
pub struct NoPruner;

impl Pruner for NoPruner {
    fn should_prune(&self, _: &Curve, _: usize, _: &[Curve]) -> bool {
        false
    }
}

/// Prunes a trial whose best value so far is worse than the median of completed trials' values at the same step.
#[derive(Clone, Debug, PartialEq)]
pub struct MedianPruner {
    /// No pruning until this many trials have completed.
    pub n_startup_trials: usize,
    /// No pruning before this step.
    pub n_warmup_steps: usize,
}

impl Default for MedianPruner {
    fn default() -> Self {
        Self { n_startup_trials: 5, n_warmup_steps: 0 }
    }
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 { values[n / 2] } else { 0.5 * (values[n / 2 - 1] + values[n / 2]) })
}

impl Pruner for MedianPruner {
    fn should_prune(&self, current: &Curve, step: usize, others: &[Curve]) -> bool {
        let completed: Vec<&Curve> = others.iter().filter(|c| c.complete).collect();
        if completed.len() < self.n_startup_trials.max(1) || step < self.n_warmup_steps {
            return false;
        }
        let best = current.values.range(..=step).map(|(_, v)| *v).fold(f64::INFINITY, f64::min);
        let at_step: Vec<f64> = completed.iter().filter_map(|c| c.values.get(&step).copied()).collect();
        match median(at_step) {
            Some(m) => best > m,
            None => false,
        }
    }
}

/// Asynchronous successive halving: rungs at steps `min_resource · η^k`; at a rung a trial goes on only if its value
/// is among the best `1/η` of all values recorded at that rung (at least the single best).
#[derive(Clone, Debug, PartialEq)]
pub struct SuccessiveHalvingPruner {
    pub min_resource: usize,
    /// η.
    pub reduction_factor: usize,
}

impl Default for SuccessiveHalvingPruner {
    fn default() -> Self {
        Self { min_resource: 1, reduction_factor: 4 }
    }
}

impl SuccessiveHalvingPruner {
    /// Whether `step` (1-based epochs) is a rung.
    pub fn is_rung(&self, step: usize) -> bool {
        let (mut r, eta) = (self.min_resource.max(1), self.reduction_factor.max(2));
        while r < step {
            r *= eta;
        }
        r == step
    }
}

impl Pruner for SuccessiveHalvingPruner {
    fn should_prune(&self, current: &Curve, step: usize, others: &[Curve]) -> bool {
        if !self.is_rung(step) {
            return false;
        }
        let Some(&value) = current.values.get(&step) else { return false };
        let mut competing: Vec<f64> = others.iter().filter_map(|c| c.values.get(&step).copied()).collect();
        competing.push(value);
        competing.sort_by(f64::total_cmp);
        let promotable = (competing.len() / self.reduction_factor.max(2)).max(1) - 1;
        value > competing[promotable]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(values: &[f64], complete: bool) -> Curve {
        Curve { values: values.iter().enumerate().map(|(i, v)| (i + 1, *v)).collect(), complete }
    }

    /// A synthetic learning curve: loss decays from 2 towards `floor`.
    fn learning_curve(floor: f64, epochs: usize) -> Vec<f64> {
        (1..=epochs).map(|e| floor + (2.0 - floor) * (-(e as f64) / 3.0).exp()).collect()
    }

    #[test]
    fn median_pruner_stops_clearly_bad_trials_early_and_keeps_good_ones() {
        let pruner = MedianPruner { n_startup_trials: 3, n_warmup_steps: 1 };
        let epochs = 10;
        let mut finished: Vec<Curve> = Vec::new();
        let mut stopped_at = Vec::new();
        // Floors alternate good and clearly bad; the first three are the start-up trials.
        for floor in [0.2, 0.9, 0.3, 1.5, 0.25, 1.6, 0.15, 1.4] {
            let full = learning_curve(floor, epochs);
            let mut current = Curve::default();
            let mut stop = None;
            for (i, v) in full.iter().enumerate() {
                current.values.insert(i + 1, *v);
                if pruner.should_prune(&current, i + 1, &finished) {
                    stop = Some(i + 1);
                    break;
                }
            }
            current.complete = stop.is_none();
            stopped_at.push((floor, stop));
            finished.push(current);
        }
        for (floor, stop) in &stopped_at[3..] {
            if *floor >= 1.0 {
                assert!(stop.is_some_and(|s| s <= 3), "bad trial (floor {floor}) stopped at {stop:?}");
            } else {
                assert_eq!(*stop, None, "good trial (floor {floor}) was pruned");
            }
        }
    }

    #[test]
    fn median_pruner_waits_for_startup_trials_and_warmup() {
        let pruner = MedianPruner { n_startup_trials: 2, n_warmup_steps: 2 };
        let done = vec![curve(&[0.1, 0.1, 0.1], true)];
        assert!(!pruner.should_prune(&curve(&[9.0], false), 1, &done), "one completed trial is not enough");
        let done = vec![curve(&[0.1, 0.1, 0.1], true), curve(&[0.2, 0.2, 0.2], true)];
        assert!(!pruner.should_prune(&curve(&[9.0], false), 1, &done), "still warming up");
        assert!(pruner.should_prune(&curve(&[9.0, 9.0], false), 2, &done));
        assert!(!pruner.should_prune(&curve(&[9.0, 0.1], false), 2, &done));
    }

    #[test]
    fn successive_halving_keeps_the_top_fraction_at_each_rung() {
        let pruner = SuccessiveHalvingPruner { min_resource: 1, reduction_factor: 2 };
        assert!([1, 2, 4, 8].iter().all(|&s| pruner.is_rung(s)));
        assert!(![3, 5, 6, 7].iter().any(|&s| pruner.is_rung(s)));
        let others = vec![curve(&[0.5], false), curve(&[0.7], false), curve(&[0.9], false)];
        // Four values at rung 1: the best 4 / 2 = 2 go on (0.5 and 0.6).
        assert!(!pruner.should_prune(&curve(&[0.6], false), 1, &others));
        assert!(pruner.should_prune(&curve(&[0.8], false), 1, &others));
        assert!(!pruner.should_prune(&curve(&[0.8, 0.8, 0.8], false), 3, &others), "3 is not a rung");
        assert!(!pruner.should_prune(&curve(&[0.1], false), 1, &[]), "alone at a rung, it goes on");
    }
}
