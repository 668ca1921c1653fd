//! End-to-end classification training on generated data, on CPU: accuracy, run artifacts, resume, bad images.

mod common;

use std::ops::ControlFlow;

use kiln_train::checkpoint;
use kiln_train::classify;
use kiln_train::engine::read_results;
use kiln_train::{Error, RunDir, Which};
use tch::{Device, Tensor};

#[test]
fn convnext_atto_reaches_90_percent_and_writes_a_complete_run() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (80, 20, 20), 11);
    let config = common::quick_config(&data, &dir.path().join("runs"), 12);
    let outcome = classify::train(&config).unwrap();

    let best = outcome.best_val.as_ref().expect("validation metrics");
    assert!(best.accuracy >= 0.9, "best validation accuracy {}", best.accuracy);
    let test = outcome.test.as_ref().expect("a test split");
    assert_eq!(test.images, 60);
    assert!(test.metrics.accuracy >= 0.8, "test accuracy {}", test.metrics.accuracy);
    assert_eq!(test.confusion_matrix.iter().flatten().sum::<u64>(), 60);

    let run = &outcome.run;
    assert!(run.path.ends_with("runs/classify/exp"));
    for file in
        [run.config(), run.dataset(), run.results(), run.curves(), run.metrics("test"), run.confusion_matrix("test")]
    {
        assert!(file.is_file(), "{} is missing", file.display());
    }
    let rows = read_results(&run.results()).unwrap();
    assert_eq!(rows.iter().map(|r| r.epoch).collect::<Vec<_>>(), (1..=12).collect::<Vec<_>>());
    assert!(rows.last().unwrap().train_loss() < rows[0].train_loss(), "the loss goes down");
    let last = checkpoint::load(&run.checkpoint(Which::Last)).unwrap();
    assert_eq!(last.state.epoch, 12);
    assert_eq!(last.state.optimizer_step, 12 * 8, "240 images in batches of 32: 8 steps an epoch");
    let best_ckpt = checkpoint::load(&run.checkpoint(Which::Best)).unwrap();
    assert_eq!(best_ckpt.state.epoch, outcome.best_epoch);
    assert_eq!(best_ckpt.state.class_names, ["circle", "square", "triangle"]);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(run.metrics("test")).unwrap()).unwrap();
    assert!((saved["metrics"]["accuracy"].as_f64().unwrap() - test.metrics.accuracy).abs() < 1e-12);
}

fn weights(run: &RunDir) -> Vec<(String, Tensor)> {
    checkpoint::load(&run.checkpoint(Which::Last)).unwrap().tensors.into_iter().collect()
}

#[test]
fn resume_continues_exactly_where_the_run_stopped() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (20, 6, 0), 5);
    let mut config = common::quick_config(&data, &dir.path().join("runs"), 4);
    config.ema = true;
    config.ema_decay = 0.9;
    // Drop-path draws from libtorch's generator every step: a resume that reseeded it would repeat epoch 1's masks.
    config.drop_path_rate = 0.2;

    config.name = Some("straight".into());
    let straight = classify::train(&config).unwrap();

    config.name = Some("resumed".into());
    let interrupted = classify::train_observed(&config, &mut |record| {
        if record.epoch == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert!(interrupted.interrupted && interrupted.test.is_none());
    assert_eq!(checkpoint::load(&interrupted.run.checkpoint(Which::Last)).unwrap().state.epoch, 2);
    let resumed = classify::resume(RunDir::open(&interrupted.run.path).unwrap()).unwrap();
    assert_eq!(resumed.epochs, 4);

    let a = read_results(&straight.run.results()).unwrap();
    let b = read_results(&resumed.run.results()).unwrap();
    assert_eq!(b.iter().map(|r| r.epoch).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    for (x, y) in a.iter().zip(&b) {
        assert!((x.lr - y.lr).abs() < 1e-12, "epoch {}: the schedule continues where it stopped", x.epoch);
        assert!(
            (x.train_loss() - y.train_loss()).abs() < 1e-6,
            "epoch {}: {} vs {}",
            x.epoch,
            x.train_loss(),
            y.train_loss()
        );
    }
    let sa = checkpoint::load(&straight.run.checkpoint(Which::Last)).unwrap().state;
    let sb = checkpoint::load(&resumed.run.checkpoint(Which::Last)).unwrap().state;
    assert_eq!(
        (sa.optimizer_step, sa.ema_updates, sa.global_step),
        (sb.optimizer_step, sb.ema_updates, sb.global_step)
    );
    assert_eq!(sa.scaler, sb.scaler);
    // Restored optimizer moments, EMA and random stream: the resumed run's weights are the uninterrupted run's.
    let wb: std::collections::HashMap<String, Tensor> = weights(&resumed.run).into_iter().collect();
    for (name, ta) in weights(&straight.run) {
        let tb = &wb[&name];
        let diff = (&ta.to_kind(tch::Kind::Double) - tb.to_kind(tch::Kind::Double)).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{name} differs by {diff}");
    }
    assert!(wb.contains_key("optimizer.v.stem.0.weight") && wb.contains_key("train.stem.0.weight"));
    assert_eq!(wb["stem.0.weight"].device(), Device::Cpu);

    let again = classify::resume(RunDir::open(&resumed.run.path).unwrap()).unwrap_err().to_string();
    assert!(again.contains("already finished all 4 epochs"), "{again}");
}

#[test]
fn zero_byte_and_truncated_images_are_skipped_and_counted() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (10, 4, 0), 3);
    std::fs::write(data.join("train/circle/zero.png"), b"").unwrap();
    common::write_truncated_png(&data.join("train/square/truncated.png"));
    let config = common::quick_config(&data, &dir.path().join("runs"), 2);
    let outcome = classify::train(&config).unwrap();
    let names: Vec<String> =
        outcome.skipped.iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["zero.png", "truncated.png"]);
    assert_eq!(outcome.skipped[0].1, "empty file");
    let rows = read_results(&outcome.run.results()).unwrap();
    assert_eq!(rows.iter().map(|r| r.skipped_images).collect::<Vec<_>>(), vec![2, 2], "counted once, not per epoch");
}

#[test]
fn a_dataset_with_no_readable_image_aborts_clearly() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("broken");
    for class in ["a", "b"] {
        std::fs::create_dir_all(data.join("train").join(class)).unwrap();
        for i in 0..3 {
            std::fs::write(data.join("train").join(class).join(format!("{i}.jpg")), b"").unwrap();
        }
    }
    let mut config = common::quick_config(&data, &dir.path().join("runs"), 1);
    (config.val_split, config.test_split) = (0.0, 0.0);
    let err = classify::train(&config).unwrap_err();
    assert!(matches!(err, Error::NoReadableImages { skipped: 6, .. }), "{err}");
    assert!(err.to_string().contains("no readable image"), "{err}");
}

#[test]
fn early_stopping_ends_a_run_that_stops_improving() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (8, 4, 0), 9);
    let mut config = common::quick_config(&data, &dir.path().join("runs"), 6);
    // A learning rate too small to change any prediction: validation never improves after epoch 1.
    (config.lr, config.min_lr, config.warmup_epochs, config.patience) = (1e-12, 0.0, 0.0, 2);
    let outcome = classify::train(&config).unwrap();
    assert!(outcome.stopped_early);
    assert_eq!((outcome.epochs, outcome.best_epoch), (3, 1));
    assert_eq!(read_results(&outcome.run.results()).unwrap().len(), 3);
    assert!(outcome.test.is_some(), "an early stop still tests the best checkpoint");
}
