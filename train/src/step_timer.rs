//! The isolated training step, timed, for any task: one fixed batch already on the device, no data loading, the
//! very loss and update the training loop runs. This is `kiln bench train`; set against a training run's
//! images/s it shows what the data pipeline and the loop cost (`scripts/compare_train_speed.py`,
//! `scripts/detect_train_speed.sh`).

use std::time::Instant;

use serde::Serialize;
use tch::Device;

use crate::config::TaskKind;
use crate::precision::AmpMode;
use crate::{Error, Result};

/// What to time.
#[derive(Clone, Debug)]
pub struct StepBenchConfig {
    pub task: TaskKind,
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
    /// The task's section of the config (e.g. detection's `{"head": "faster_rcnn"}`); empty: its defaults.
    pub task_settings: serde_json::Map<String, serde_json::Value>,
}

impl Default for StepBenchConfig {
    fn default() -> Self {
        Self {
            task: TaskKind::Classify,
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
            task_settings: Default::default(),
            drop_path_rate: 0.1,
        }
    }
}

impl StepBenchConfig {
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 || self.steps == 0 || self.img_size < 32 || self.img_size % 32 != 0 {
            return Err(Error::InvalidSetting {
                key: "bench train".into(),
                reason: "batch and steps must be at least 1 and img_size a multiple of 32".into(),
            });
        }
        Ok(())
    }
}

/// The timings of a step benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct StepBenchResult {
    pub task: TaskKind,
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

/// Runs `warmup` untimed steps, then times `steps` steps one by one (synchronising the GPU after each).
pub fn time_steps(
    config: &StepBenchConfig,
    device: Device,
    precision: String,
    step: &mut dyn FnMut() -> Result<()>,
) -> Result<StepBenchResult> {
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
        task: config.task,
        model: config.model.clone(),
        img_size: config.img_size,
        batch: config.batch,
        device: crate::device::device_name(device),
        precision,
        threads: tch::get_num_threads() as usize,
        steps: config.steps,
        mean_step_ms: mean,
        p50_step_ms: sorted[sorted.len() / 2],
        min_step_ms: sorted[0],
        images_per_second: config.batch as f64 * 1e3 / mean,
    })
}

/// The optimiser every step benchmark updates with (AdamW, weight decay 0.05, every variable of `vs` in name
/// order) and its loss scaler for `precision`.
pub fn bench_optimizer(
    vs: &tch::nn::VarStore,
    precision: &crate::precision::Precision,
) -> (crate::optim::Optimizer, crate::optim::GradScaler) {
    use crate::optim::{GradScaler, Optimizer, OptimizerConfig, Param};
    let mut vars: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let optimizer = Optimizer::new(
        vars.into_iter().map(|(name, tensor)| Param::new(name, tensor)).collect(),
        OptimizerConfig {
            kind: crate::config::OptimizerKind::AdamW,
            weight_decay: 0.05,
            momentum: 0.9,
            betas: (0.9, 0.999),
            eps: 1e-8,
        },
    );
    (optimizer, GradScaler::new(precision.needs_loss_scaling()))
}

/// The heap policy, device, threads and seed of a benchmark.
pub fn bench_runtime(config: &StepBenchConfig) -> Result<Device> {
    config.validate()?;
    crate::allocator::keep_freed_memory();
    let device = crate::device::select_device(&config.device)?;
    if config.threads > 0 {
        tch::set_num_threads(config.threads as i32);
    }
    tch::manual_seed(0);
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    Ok(device)
}
