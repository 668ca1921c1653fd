//! The isolated training step, timed: one fixed random batch already on the device, no data loading, the same
//! loss ([`classification_loss`]) and update ([`Update::apply`]) the training loop runs (forward, loss, backward,
//! AdamW, under the run's precision). This is
//! `kiln bench train`, the step-only half of the comparison with PyTorch (`scripts/compare_train_speed.py`).

use std::time::Instant;

use serde::Serialize;
use tch::{nn, Device, Kind, Tensor};

use kiln_models::{ClassifierConfig, ImageClassifier};

use super::loss::classification_loss;
use crate::config::OptimizerKind;
use crate::device::{device_name, select_device};
use crate::engine::Update;
use crate::optim::{GradScaler, Optimizer, OptimizerConfig, Param};
use crate::precision::{AmpMode, Precision};
use crate::{Error, Result};

/// What to time.
#[derive(Clone, Debug)]
pub struct StepBenchConfig {
    pub model: String,
    pub img_size: u32,
    pub batch: usize,
    pub num_classes: usize,
    /// Untimed steps first (allocator and oneDNN/cuDNN warm-up).
    pub warmup: usize,
    pub steps: usize,
    pub device: String,
    pub amp: AmpMode,
    pub channels_last: bool,
    /// libtorch threads; 0 keeps libtorch's default.
    pub threads: usize,
    pub drop_path_rate: f64,
}

impl Default for StepBenchConfig {
    fn default() -> Self {
        Self {
            model: "convnext_atto".into(),
            img_size: 224,
            batch: 32,
            num_classes: 10,
            warmup: 5,
            steps: 20,
            device: "auto".into(),
            amp: AmpMode::Auto,
            channels_last: true,
            threads: 0,
            drop_path_rate: 0.1,
        }
    }
}

/// The timings of [`bench_train_step`].
#[derive(Clone, Debug, Serialize)]
pub struct StepBenchResult {
    pub model: String,
    pub img_size: u32,
    pub batch: usize,
    pub device: String,
    pub precision: String,
    pub threads: usize,
    pub steps: usize,
    pub mean_step_ms: f64,
    pub p50_step_ms: f64,
    pub min_step_ms: f64,
    pub images_per_second: f64,
}

fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Builds the model (random init), AdamW (lr 2e-3, weight decay 0.05, as the Fashion-MNIST recipe) and one random
/// batch, runs `warmup` steps, then times `steps` steps one by one (synchronising the GPU after each).
pub fn bench_train_step(config: &StepBenchConfig) -> Result<StepBenchResult> {
    if config.batch == 0 || config.steps == 0 || config.img_size < 32 {
        return Err(Error::InvalidSetting {
            key: "bench train".into(),
            reason: "batch and steps must be at least 1 and img_size at least 32".into(),
        });
    }
    crate::allocator::keep_freed_memory();
    let device = select_device(&config.device)?;
    if config.threads > 0 {
        tch::set_num_threads(config.threads as i32);
    }
    tch::manual_seed(0);
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
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
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let params = vars.into_iter().map(|(name, tensor)| Param::new(name, tensor)).collect();
    let mut optimizer = Optimizer::new(
        params,
        OptimizerConfig {
            kind: OptimizerKind::AdamW,
            weight_decay: 0.05,
            momentum: 0.9,
            betas: (0.9, 0.999),
            eps: 1e-8,
        },
    );
    let mut scaler = GradScaler::new(precision.needs_loss_scaling());
    let s = config.img_size as i64;
    let images = Tensor::randn([config.batch as i64, 3, s, s], (Kind::Float, device));
    let labels = Tensor::randint(config.num_classes as i64, [config.batch as i64], (Kind::Int64, device));
    let mut update = Update { optimizer: &mut optimizer, scaler: &mut scaler, ema: None, grad_clip: 0.0 };
    let mut step = || -> Result<f64> {
        let loss = classification_loss(&model, &images, &labels, &precision, 0.1)?;
        update.apply(&loss, 2e-3)
    };
    for _ in 0..config.warmup {
        step()?;
    }
    synchronize(device);
    let mut times = Vec::with_capacity(config.steps);
    for _ in 0..config.steps {
        let started = Instant::now();
        step()?;
        synchronize(device);
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(StepBenchResult {
        model: config.model.clone(),
        img_size: config.img_size,
        batch: config.batch,
        device: device_name(device),
        precision: precision.describe(),
        threads: tch::get_num_threads() as usize,
        steps: config.steps,
        mean_step_ms: mean,
        p50_step_ms: sorted[sorted.len() / 2],
        min_step_ms: sorted[0],
        images_per_second: config.batch as f64 * 1e3 / mean,
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
