//! The recognizer's isolated training step: one fixed random batch of full-width lines (height 32, width
//! `img_size`) with fixed 8-character labels on the device, the CTC loss the training loop computes and the
//! shared update (AdamW, lr 2e-3, weight decay 0.05).

use tch::{nn, Kind, Tensor};

use kiln_models::{RecognizerConfig, TextLineRecognizer};

use super::loader::{LineTarget, TextBatch, WIDTH_STRIDE};
use super::loss::batch_loss;
use crate::engine::Update;
use crate::precision::Precision;
use crate::step_timer::{bench_optimizer, bench_runtime, time_steps, StepBenchConfig, StepBenchResult};
use crate::{Error, Result};

/// Line height of the benchmark.
pub const BENCH_HEIGHT: u32 = 32;

pub fn bench_ocr_step(config: &StepBenchConfig) -> Result<StepBenchResult> {
    if config.img_size % WIDTH_STRIDE != 0 {
        return Err(Error::InvalidSetting {
            key: "img_size".into(),
            reason: format!("{} (the line width for ocr) is not a multiple of {WIDTH_STRIDE}", config.img_size),
        });
    }
    let device = bench_runtime(config)?;
    let vs = nn::VarStore::new(device);
    let classes = config.num_classes.max(2) as i64;
    let model = TextLineRecognizer::new(
        &vs.root(),
        &RecognizerConfig {
            drop_path_rate: config.drop_path_rate,
            ..RecognizerConfig::new(&config.model, classes, 32)
        },
    )?;
    let precision = Precision::resolve(config.amp, config.channels_last, device)?;
    precision.prepare_params(&vs)?;
    let (mut optimizer, mut scaler) = bench_optimizer(&vs, &precision);
    let w = config.img_size as i64;
    let batch = TextBatch {
        images: Tensor::randn([config.batch as i64, 3, BENCH_HEIGHT as i64, w], (Kind::Float, device)),
        targets: (0..config.batch)
            .map(|i| LineTarget {
                classes: (0..8).map(|k| 1 + ((i + k) as i64 % (classes - 1))).collect(),
                frames: (config.img_size / WIDTH_STRIDE) as usize,
                index: i,
            })
            .collect(),
        paths: Vec::new(),
    };
    let mut update = Update { optimizer: &mut optimizer, scaler: &mut scaler, ema: None, grad_clip: 0.0 };
    let describe = precision.describe();
    time_steps(config, device, describe, &mut || {
        let losses = batch_loss(&model, &batch, &precision)?;
        update.apply(&losses.total, 2e-3).map(|_| ())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TaskKind;

    #[test]
    fn times_the_recognizer_step() {
        let config = StepBenchConfig {
            task: TaskKind::Ocr,
            model: "convnext_atto".into(),
            img_size: 64,
            batch: 2,
            num_classes: 11,
            warmup: 1,
            steps: 2,
            device: "cpu".into(),
            threads: 1,
            ..Default::default()
        };
        let result = bench_ocr_step(&config).unwrap();
        assert_eq!((result.steps, result.batch, result.task), (2, 2, TaskKind::Ocr));
        assert!(result.min_step_ms > 0.0 && result.min_step_ms <= result.mean_step_ms);
    }
}
