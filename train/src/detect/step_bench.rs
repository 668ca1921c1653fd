//! The detector's isolated training step: one fixed random batch with fixed boxes on the device, the loss the
//! training loop computes ([`batch_losses`]: target assignment, focal + GIoU + centerness) and the shared update
//! (AdamW, lr 2e-3, weight decay 0.05).

use tch::{nn, Kind, Tensor};

use kiln_models::{DetectorConfig, ObjectDetector};

use super::augment::TargetBox;
use super::evaluate::locations_on;
use super::loader::{DetectBatch, ImageTargets};
use super::loss::batch_losses;
use crate::engine::Update;
use crate::precision::Precision;
use crate::step_timer::{bench_optimizer, bench_runtime, time_steps, StepBenchConfig, StepBenchResult};
use crate::Result;

/// Two boxes per image at fixed places and sizes (a small and a large one), classes cycling.
fn fixed_boxes(i: usize, size: f32, num_classes: usize) -> Vec<TargetBox> {
    vec![
        TargetBox { bbox: [size * 0.1, size * 0.15, size * 0.35, size * 0.4], class: i % num_classes },
        TargetBox { bbox: [size * 0.4, size * 0.3, size * 0.95, size * 0.9], class: (i + 1) % num_classes },
    ]
}

pub fn bench_detect_step(config: &StepBenchConfig) -> Result<StepBenchResult> {
    let device = bench_runtime(config)?;
    let vs = nn::VarStore::new(device);
    let model = ObjectDetector::new(
        &vs.root(),
        &DetectorConfig::new(&config.model, config.num_classes as i64)
            .with_fpn_channels(super::DetectSettings::default().fpn_channels)
            .with_drop_path_rate(config.drop_path_rate),
    )?;
    let precision = Precision::resolve(config.amp, config.channels_last, device)?;
    precision.prepare_params(&vs)?;
    let (mut optimizer, mut scaler) = bench_optimizer(&vs, &precision);
    let s = config.img_size as i64;
    let batch = DetectBatch {
        images: Tensor::randn([config.batch as i64, 3, s, s], (Kind::Float, device)),
        targets: (0..config.batch)
            .map(|i| ImageTargets {
                boxes: fixed_boxes(i, config.img_size as f32, config.num_classes),
                index: i,
                placement: None,
            })
            .collect(),
        paths: Vec::new(),
    };
    let mut update = Update { optimizer: &mut optimizer, scaler: &mut scaler, ema: None, grad_clip: 0.0 };
    let (_, points, strides) = locations_on(&model, s, device);
    let describe = precision.describe();
    time_steps(config, device, describe, &mut || {
        let losses = batch_losses(&model, &batch, &precision, &points, &strides)?;
        update.apply(&losses.total, 2e-3).map(|_| ())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TaskKind;

    #[test]
    fn times_the_detector_step() {
        let config = StepBenchConfig {
            task: TaskKind::Detect,
            img_size: 64,
            batch: 2,
            num_classes: 3,
            warmup: 1,
            steps: 2,
            device: "cpu".into(),
            threads: 1,
            ..Default::default()
        };
        let result = bench_detect_step(&config).unwrap();
        assert_eq!((result.steps, result.batch, result.task), (2, 2, TaskKind::Detect));
        assert!(result.min_step_ms > 0.0 && result.min_step_ms <= result.mean_step_ms);
    }
}
