//! Stochastic depth ("drop path", Huang et al. 2016): drops whole residual branches per sample while training.

use tch::Tensor;

/// Zeroes each sample's residual branch with probability `rate` and scales survivors by `1 / (1 - rate)`.
/// The identity at inference or when `rate` is 0.
///
/// # Shapes
/// `[N, …]` → `[N, …]`
pub fn drop_path(xs: &Tensor, rate: f64, train: bool) -> Tensor {
    if !train || rate <= 0.0 {
        return xs.shallow_clone();
    }
    let keep = 1.0 - rate;
    let mut shape = vec![1i64; xs.dim()];
    shape[0] = xs.size()[0];
    let mask = Tensor::rand(shape.as_slice(), (xs.kind(), xs.device())).lt(keep).to_kind(xs.kind());
    xs * mask / keep
}

/// timm's per-block rates: linearly spaced from 0 to `max_rate` over all blocks, split by stage.
pub fn block_rates(depths: &[usize], max_rate: f64) -> Vec<Vec<f64>> {
    let total: usize = depths.iter().sum();
    let rate = |i: usize| if total > 1 { max_rate * i as f64 / (total - 1) as f64 } else { 0.0 };
    let mut start = 0;
    depths
        .iter()
        .map(|&depth| {
            let stage = (start..start + depth).map(rate).collect();
            start += depth;
            stage
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn identity_at_inference() {
        let xs = Tensor::randn([4, 3, 2, 2], (Kind::Float, Device::Cpu));
        assert!(drop_path(&xs, 0.5, false).equal(&xs));
    }

    #[test]
    fn drops_whole_samples_and_keeps_the_expectation() {
        tch::manual_seed(7);
        let xs = Tensor::ones([4000, 2, 3], (Kind::Float, Device::Cpu));
        let ys = drop_path(&xs, 0.25, true);
        let per_sample = ys.sum_dim_intlist(&[1i64, 2][..], false, Kind::Float);
        let values: Vec<f32> = Vec::try_from(per_sample).unwrap();
        // Each sample is either dropped (0) or kept and scaled: 6 ones * 1/0.75 = 8.
        assert!(values.iter().all(|&v| v == 0.0 || (v - 8.0).abs() < 1e-4));
        let mean = ys.mean(Kind::Float).double_value(&[]);
        assert!((mean - 1.0).abs() < 0.05, "mean {mean}");
    }

    #[test]
    fn rates_follow_timm_linspace() {
        let rates = block_rates(&[1, 2, 2], 0.4);
        let expected = [vec![0.0], vec![0.1, 0.2], vec![0.3, 0.4]];
        assert_eq!(rates.len(), expected.len());
        for (got, want) in rates.iter().zip(&expected) {
            assert_eq!(got.len(), want.len());
            assert!(got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-12), "{rates:?}");
        }
    }
}
