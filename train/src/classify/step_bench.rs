//! The classifier's isolated training step: one fixed random batch on the device, no data loading, the same
//! loss ([`classification_loss`]) and update ([`Update::apply`]) the training loop runs (forward, loss, backward,
//! AdamW, under the run's precision). This is `kiln bench train`, the step-only half of the comparison with
//! PyTorch (`scripts/compare_train_speed.py`).

use tch::{nn, Kind, Tensor};

use kiln_models::{ClassifierConfig, ImageClassifier};

use super::loss::classification_loss;
use crate::engine::Update;
use crate::precision::Precision;
use crate::step_timer::{bench_optimizer, bench_runtime, time_steps};
pub use crate::step_timer::{StepBenchConfig, StepBenchResult};
use crate::Result;

/// Builds the model (random init), AdamW (lr 2e-3, weight decay 0.05, as the Fashion-MNIST recipe) and one random
/// batch, then times the steps ([`time_steps`]).
pub fn bench_train_step(config: &StepBenchConfig) -> Result<StepBenchResult> {
    let device = bench_runtime(config)?;
    let vs = nn::VarStore::new(device);
    let model = ImageClassifier::new(
        &vs.root(),
        &ClassifierConfig {
            architecture: config.model.clone(),
            num_classes: config.num_classes as i64,
            drop_path_rate: config.drop_path_rate,
            drop_rate: 0.0,
        },
    )?;
    let precision = Precision::resolve(config.amp, config.channels_last, device)?;
    precision.prepare_params(&vs)?;
    let (mut optimizer, mut scaler) = bench_optimizer(&vs, &precision);
    let s = config.img_size as i64;
    let images = Tensor::randn([config.batch as i64, 3, s, s], (Kind::Float, device));
    let labels = Tensor::randint(config.num_classes as i64, [config.batch as i64], (Kind::Int64, device));
    let mut update = Update { optimizer: &mut optimizer, scaler: &mut scaler, ema: None, grad_clip: 0.0 };
    let describe = precision.describe();
    time_steps(config, device, describe, &mut || {
        let loss = classification_loss(&model, &images, &labels, &precision, 0.1)?;
        update.apply(&loss, 2e-3).map(|_| ())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_the_requested_steps_and_refuses_an_empty_batch() {
        let config = StepBenchConfig {
            img_size: 32,
            batch: 2,
            warmup: 1,
            steps: 3,
            device: "cpu".into(),
            threads: 1,
            ..Default::default()
        };
        let result = bench_train_step(&config).unwrap();
        assert_eq!((result.steps, result.batch, result.device.as_str()), (3, 2, "cpu"));
        assert_eq!(result.precision, "fp32", "the CPU trains in fp32 whatever amp says");
        assert!(result.min_step_ms > 0.0 && result.min_step_ms <= result.mean_step_ms);
        let expected = 2.0 * 1e3 / result.mean_step_ms;
        assert!((result.images_per_second - expected).abs() < 1e-9);
        let err = bench_train_step(&StepBenchConfig { batch: 0, ..config }).unwrap_err().to_string();
        assert!(err.contains("batch"), "{err}");
    }
}
