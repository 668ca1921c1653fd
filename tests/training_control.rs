//! Training control shared by every task: `limit_train_batches`, and `save_top_k` ranked by a monitored metric
//! every N epochs; and the classification recipe's augmentations (RandAugment, random erasing, MixUp/CutMix)
//! training a real run.

mod common;

use kiln_train::checkpoint;
use kiln_train::config::AutoAugment;
use kiln_train::config::{BatchLimit, CheckpointPolicy};
use kiln_train::engine::read_results;
use kiln_train::engine::Direction;
use kiln_train::run_dir::Which;

fn kept_epochs(run: &kiln_train::run_dir::RunDir) -> Vec<usize> {
    let mut kept: Vec<usize> = std::fs::read_dir(run.weights_dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_prefix("epoch_")?.strip_suffix(".safetensors")?.parse().ok()
        })
        .collect();
    kept.sort();
    kept
}

#[test]
fn limit_train_batches_takes_a_count_or_a_fraction_of_each_epoch() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (16, 4, 4), 1); // 48 train images: 6 batches of 8
    for (limit, steps) in [(BatchLimit::Count(2), 2), (BatchLimit::Fraction(0.5), 3), (BatchLimit::Count(99), 6)] {
        let mut config = common::quick_config(&data, &dir.path().join("runs"), 2);
        config.batch = 8;
        config.img_size = 32;
        config.limit_train_batches = Some(limit);
        let outcome = kiln_train::classify::train(&config).unwrap();
        let last = checkpoint::load(&outcome.run.checkpoint(Which::Last)).unwrap();
        assert_eq!(last.state.optimizer_step, 2 * steps, "{limit:?}: {steps} steps per epoch, two epochs");
        assert_eq!(last.state.global_step, 2 * steps as usize);
    }
}

#[test]
fn save_top_k_ranks_by_the_monitored_metric_every_n_epochs() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (12, 6, 2), 2);
    let mut config = common::quick_config(&data, &dir.path().join("runs"), 6);
    config.img_size = 32;
    config.batch = 12;
    config.save_top_k = 2;
    config.checkpoint = CheckpointPolicy { monitor: Some("val_loss".into()), mode: None, every_n_epochs: Some(2) };
    let outcome = kiln_train::classify::train(&config).unwrap();
    let rows = read_results(&outcome.run.results()).unwrap();
    // Only epochs 2, 4 and 6 may enter; the two of them with the lowest validation loss stay.
    let mut even: Vec<(f64, usize)> =
        rows.iter().filter(|r| r.epoch % 2 == 0).map(|r| (r.val("loss").unwrap(), r.epoch)).collect();
    even.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut expected: Vec<usize> = even.iter().take(2).map(|(_, e)| *e).collect();
    expected.sort();
    assert_eq!(kept_epochs(&outcome.run), expected, "losses by epoch: {even:?}");

    // top5 by max, every epoch: the kept epochs have the highest top-5 accuracy (3 classes: all are 1.0, so the
    // earliest two tie-break in).
    config.checkpoint =
        CheckpointPolicy { monitor: Some("top5".into()), mode: Some(Direction::Maximize), every_n_epochs: None };
    config.epochs = 3;
    let outcome = kiln_train::classify::train(&config).unwrap();
    let rows = read_results(&outcome.run.results()).unwrap();
    assert!(rows.iter().all(|r| r.val("top5") == Some(1.0)), "three classes are always in the top five");
    assert_eq!(kept_epochs(&outcome.run), vec![1, 2]);
}

#[test]
fn a_monitor_that_is_not_a_metric_is_refused_with_the_choices() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (4, 2, 2), 3);
    let mut config = common::quick_config(&data, &dir.path().join("runs"), 1);
    config.save_top_k = 1;
    config.checkpoint.monitor = Some("acuracy".into());
    let err = kiln_train::classify::train(&config).unwrap_err().to_string();
    assert!(err.contains("checkpoint.monitor") && err.contains("acuracy"), "{err}");
    assert!(err.contains("accuracy, top5"), "names the metrics: {err}");
    config.checkpoint.monitor = Some("f1".into());
    let err = kiln_train::classify::train(&config).unwrap_err().to_string();
    assert!(err.contains("checkpoint.mode"), "f1 needs a direction: {err}");
    config.checkpoint = CheckpointPolicy { every_n_epochs: Some(0), ..Default::default() };
    let err = kiln_train::classify::train(&config).unwrap_err().to_string();
    assert!(err.contains("checkpoint.every_n_epochs"), "{err}");
}

#[test]
fn the_recipe_augmentations_train_a_classifier() {
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (40, 10, 10), 4);
    let mut config = common::quick_config(&data, &dir.path().join("runs"), 6);
    config.img_size = 32;
    config.batch = 16;
    config.ema = true;
    config.ema_decay = 0.99;
    config.augment.scale = [0.6, 1.0];
    config.augment.color_jitter = 0.0;
    config.augment.auto_augment = Some(AutoAugment::RAND_AUGMENT);
    config.augment.random_erasing.prob = 0.25;
    config.mixup.mixup_alpha = 0.2;
    config.mixup.cutmix_alpha = 1.0;
    config.mixup.prob = 0.5;
    let outcome = kiln_train::classify::train(&config).unwrap();
    let rows = read_results(&outcome.run.results()).unwrap();
    assert!(rows.last().unwrap().train_loss() < rows[0].train_loss(), "the soft-target loss goes down");
    let test = outcome.test.expect("a test split");
    assert!(test.metrics.accuracy > 0.6, "test accuracy {} on 3 shapes", test.metrics.accuracy);
    let saved = kiln_train::TrainConfig::load(&outcome.run.config()).unwrap();
    assert_eq!((saved.augment.auto_augment, saved.mixup), (config.augment.auto_augment, config.mixup));
}

/// A kill between an epoch's checkpoint writes (`last` written, `best` not yet), and a top-k file `last` never
/// listed (written by an epoch the kill cut short): the resume makes the files agree with `last` (so `best` is the
/// epoch `results.csv` and `last` name, and no orphan stays), then trains on consistently.
#[test]
fn a_resume_after_a_kill_between_checkpoint_writes_reconciles_best_and_top_k() {
    use kiln_train::engine::reconcile::reconcile_checkpoints;
    let _serial = common::one_training_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = common::shapes(dir.path(), (8, 4, 0), 2);
    let config = kiln_train::TrainConfig {
        save_top_k: 2,
        limit_train_batches: Some(BatchLimit::Count(1)),
        ..common::quick_config(&data, &dir.path().join("runs"), 3)
    };
    // Stopped after epoch 2 of 3, as a kill would.
    let mut stop = |r: &kiln_train::engine::EpochRecord| {
        if r.epoch == 2 {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    };
    let run = kiln_train::classify::train_observed(&config, &mut stop).unwrap().run;
    let last = checkpoint::read_state(&run.checkpoint(Which::Last)).unwrap();
    assert_eq!((last.epoch, kept_epochs(&run)), (2, vec![1, 2]));
    // The files a kill leaves: `best` still the other epoch's checkpoint, and a top-k file of an epoch `last` does
    // not know.
    let other = 3 - last.best_epoch;
    std::fs::copy(run.top_k_checkpoint(other), run.checkpoint(Which::Best)).unwrap();
    std::fs::copy(run.checkpoint(Which::Last), run.top_k_checkpoint(3)).unwrap();
    let repaired = reconcile_checkpoints(&run, &last).unwrap();
    assert_eq!(repaired.len(), 2, "{repaired:?}");
    assert_eq!(checkpoint::read_state(&run.checkpoint(Which::Best)).unwrap().epoch, last.best_epoch);
    assert_eq!(kept_epochs(&run), vec![1, 2], "the orphan epoch_3 is removed");
    assert!(reconcile_checkpoints(&run, &last).unwrap().is_empty(), "nothing left to repair");

    // The same state again, through a resume, which then trains epoch 3 on a consistent run.
    std::fs::copy(run.top_k_checkpoint(other), run.checkpoint(Which::Best)).unwrap();
    let resumed = kiln_train::tasks::resume(kiln_train::RunDir::open(&run.path).unwrap());
    assert!(resumed.is_ok(), "{:?}", resumed.err());
    let last = checkpoint::read_state(&run.checkpoint(Which::Last)).unwrap();
    let best = checkpoint::read_state(&run.checkpoint(Which::Best)).unwrap();
    assert_eq!((last.epoch, best.epoch), (3, last.best_epoch), "best is the epoch last names");
    let mut listed: Vec<usize> = last.top_k.iter().map(|(e, _)| *e).collect();
    listed.sort();
    assert_eq!(kept_epochs(&run), listed, "the top-k files are the ones last lists");
    assert_eq!(read_results(&run.results()).unwrap().len(), 3);
}
