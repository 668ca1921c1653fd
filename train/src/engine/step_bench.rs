//! The isolated training step of any task, timed (`kiln bench train`): the task's model (random init) and a
//! fixed random batch from the task ([`Task::synthetic_batch`]) on the device, no data loading, the very loss the
//! training loop runs ([`Task::losses`]) and the shared update (AdamW, lr 2e-3, weight decay 0.05, as the
//! Fashion-MNIST recipe). Set against a training run's images/s it shows what the data pipeline and the loop cost
//! (`scripts/compare_train_speed.py`, `scripts/detect_train_speed.sh`).

use tch::nn;

use super::task::Task;
use super::update::Update;
use crate::config::TrainConfig;
use crate::precision::Precision;
use crate::step_timer::{bench_optimizer, bench_runtime, time_steps, StepBenchConfig, StepBenchResult};
use crate::Result;

/// The training config the benchmark's task builds its model and batch from: the bench's task, model, input
/// size, batch, precision and drop-path rate over the defaults.
pub fn bench_train_config(bench: &StepBenchConfig) -> TrainConfig {
    let mut sections = std::collections::BTreeMap::new();
    if !bench.task_settings.is_empty() {
        sections.insert(bench.task.name().to_string(), serde_json::Value::Object(bench.task_settings.clone()));
    }
    TrainConfig {
        sections,
        task: bench.task,
        model: bench.model.clone(),
        img_size: bench.img_size,
        batch: bench.batch,
        amp: bench.amp,
        channels_last: bench.channels_last,
        drop_path_rate: bench.drop_path_rate,
        device: bench.device.clone(),
        ..TrainConfig::default()
    }
}

/// Times the isolated training step of task `T` (`bench.task` must be `T::KIND`).
pub fn bench_step<T: Task>(bench: &StepBenchConfig) -> Result<StepBenchResult> {
    let device = bench_runtime(bench)?;
    let config = bench_train_config(bench);
    let class_names = (0..bench.num_classes.max(1)).map(|i| format!("class_{i}")).collect();
    let task = T::synthetic(&config, class_names)?;
    let vs = nn::VarStore::new(device);
    let model = task.build_model(&vs, &config)?.model;
    let precision = Precision::resolve(config.amp, config.channels_last, device)?;
    precision.prepare_params(&vs)?;
    let (mut optimizer, mut scaler) = bench_optimizer(&vs, &precision);
    let batch = task.synthetic_batch(&config, device)?;
    let mut update = Update { optimizer: &mut optimizer, scaler: &mut scaler, ema: None, grad_clip: 0.0 };
    let describe = precision.describe();
    let mut result = time_steps(bench, device, describe, &mut || {
        let losses = task.losses(&model, &batch, &precision, &config)?;
        update.apply(&losses.total, 2e-3).map(|_| ())
    })?;
    result.model = T::model_name(&config);
    Ok(result)
}
