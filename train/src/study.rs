//! Studies of kiln runs: kiln-tune's study loop with kiln-train's trainer injected. A trial's parameters are
//! set in the base config (dotted keys reach nested settings), the config's task trains it (reporting the task's
//! objective each epoch), and the study directory `<project>/<task>/<study>/` gets, besides kiln-tune's files,
//! the best trial's `best.safetensors` and `test_metrics.json` (when this machine ran it), `history.png` and
//! `importance.png`.

use std::ops::ControlFlow;
use std::path::Path;

use serde_json::Value;

use kiln_tune::{Params, SearchSpace, StudyOptions, StudyOutcome, Trainer, TrialError, TrialRun, TrialState};

use crate::config::{merge, TaskKind, TrainConfig};
use crate::fsutil::write_atomic;
use crate::plots::{plot_panels, plot_shares, Panel, Series};
use crate::tasks;
use crate::{Error, Result};

/// The default search space of a study of `task` (each task gives its own).
pub fn default_space(task: TaskKind) -> Result<SearchSpace> {
    tasks::default_space(task)
}

/// The base config with `params` set (dotted keys reach nested settings), validated.
pub fn apply_params(base: &TrainConfig, params: &Params) -> Result<TrainConfig> {
    let mut value = serde_json::to_value(base).expect("the config serialises");
    for (key, v) in params {
        let mut nested = v.clone();
        for part in key.rsplit('.') {
            nested = Value::Object(serde_json::Map::from_iter([(part.to_string(), nested)]));
        }
        merge(&mut value, &nested);
    }
    let config: TrainConfig = serde_json::from_value(value)
        .map_err(|e| Error::InvalidSetting { key: "search space".into(), reason: e.to_string() })?;
    let config = config.with_img_size_rounded();
    config.validate()?;
    tasks::with_settings_spelt_out(&config)?;
    Ok(config)
}

/// kiln-train's trainer: each trial is a run of the base config's task with the trial's parameters.
struct RunTrainer<'a> {
    base: &'a TrainConfig,
    objective: kiln_tune::Objective,
}

impl Trainer for RunTrainer<'_> {
    fn objective(&self) -> kiln_tune::Objective {
        self.objective.clone()
    }

    fn settings(&self) -> Value {
        serde_json::to_value(self.base).expect("the config serialises")
    }

    fn seed(&self) -> u64 {
        self.base.seed
    }

    fn train(
        &mut self,
        params: &Params,
        trial: &str,
        report: &mut dyn FnMut(usize, Option<f64>) -> ControlFlow<()>,
    ) -> std::result::Result<TrialRun, TrialError> {
        let mut config = apply_params(self.base, params)?;
        config.name = Some(trial.to_string());
        let metric = self.objective.metric.clone();
        let mut on_epoch = |record: &crate::engine::EpochRecord| report(record.epoch, record.val(&metric));
        let summary = tasks::train_observed(&config, &mut on_epoch)?;
        Ok(TrialRun {
            run_dir: Some(summary.run.path),
            interrupted: summary.interrupted,
            best_objective: summary.best_objective,
        })
    }
}

/// Runs the study's missing trials on the base config's task (see the module documentation).
pub fn run_study(base: &TrainConfig, options: &StudyOptions) -> Result<StudyOutcome> {
    base.validate()?;
    // The task's section spelt out, so that the search space's keys into it are config keys.
    let base = &tasks::with_settings_spelt_out(base)?;
    if base.fast_dev_run > 0 {
        return Err(Error::InvalidSetting {
            key: "fast_dev_run".into(),
            reason: "a fast dev run checks one run; a study's trials must train (set it to 0)".into(),
        });
    }
    let space = match &base.search_space {
        Some(space) => space.clone(),
        None => default_space(base.task)?,
    };
    let objective = tasks::objective(base)?;
    let mut trainer = RunTrainer {
        base,
        objective: kiln_tune::Objective { metric: objective.metric.into(), direction: objective.direction },
    };
    let dir = study_dir(base, &options.name);
    let outcome = kiln_tune::run_study(&mut trainer, &space, &dir, options)?;
    if outcome.best.is_some() {
        // The best trial's checkpoint and test metrics, beside the study's other outputs; an earlier best's copies
        // are removed when the best trial left none here.
        let run = outcome.best.as_ref().and_then(|b| b.run_dir.as_ref());
        for (from, to) in [("weights/best.safetensors", "best.safetensors"), ("test_metrics.json", "test_metrics.json")]
        {
            match run.and_then(|run| std::fs::read(run.join(from)).ok()) {
                Some(bytes) => write_atomic(&dir.join(to), &bytes)?,
                None => {
                    let _ = std::fs::remove_file(dir.join(to));
                }
            }
        }
    }
    plot_history(&outcome.trials, &format!("validation {}", outcome.metric), &dir.join("history.png"))?;
    plot_importances(&outcome.importances, &dir.join("importance.png"))?;
    Ok(outcome)
}

/// Where a study of `base`'s task named `name` writes: `<project>/<task>/<name>/`.
pub fn study_dir(base: &TrainConfig, name: &str) -> std::path::PathBuf {
    base.project.join(base.task.name()).join(name)
}

/// Parameter importances as a horizontal bar chart PNG, most important at the top, each bar labelled with its
/// value, written atomically to `path`; an empty list gives a "no data" image.
pub fn plot_importances(importances: &[(String, f64)], path: &Path) -> Result<()> {
    plot_shares("Hyperparameter importance (fANOVA)", "importance (share of variance)", importances, path)
}

/// The optimisation history: each finished trial's value and the best so far, by trial number.
fn plot_history(trials: &[kiln_tune::TrialRecord], y_label: &str, path: &Path) -> Result<()> {
    let point = |state: TrialState| -> Vec<(f64, f64)> {
        trials.iter().filter(|t| t.state == state).filter_map(|t| Some((t.number as f64, t.value?))).collect()
    };
    let mut best = f64::NEG_INFINITY;
    let best_so_far: Vec<(f64, f64)> = trials
        .iter()
        .filter(|t| t.state == TrialState::Complete)
        .filter_map(|t| {
            best = best.max(t.value?);
            Some((t.number as f64, best))
        })
        .collect();
    let panel = Panel {
        title: "optimisation history".into(),
        x_label: "trial".into(),
        y_label: y_label.into(),
        series: vec![
            Series { name: "complete".into(), points: point(TrialState::Complete) },
            Series { name: "pruned".into(), points: point(TrialState::Pruned) },
            Series { name: "best so far".into(), points: best_so_far },
        ],
        log_y: false,
    };
    plot_panels(&[panel], path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_reach_nested_keys_and_bad_values_are_refused() {
        let base = TrainConfig { data: "/d".into(), ..Default::default() };
        let params = Params::from([("lr".to_string(), json!(0.005)), ("augment.hflip".to_string(), json!(0.0))]);
        let c = apply_params(&base, &params).unwrap();
        assert_eq!((c.lr, c.augment.hflip, c.augment.color_jitter), (0.005, 0.0, base.augment.color_jitter));
        assert!(apply_params(&base, &Params::from([("nonsense".to_string(), json!(1))])).is_err());
        assert!(apply_params(&base, &Params::from([("batch".to_string(), json!(0))])).is_err());
        let detect = TrainConfig { task: crate::TaskKind::Detect, ..base.clone() };
        let iou = |v: f64| Params::from([("detect.nms.iou_threshold".to_string(), json!(v))]);
        let c = apply_params(&detect, &iou(0.45)).unwrap();
        assert_eq!(c.task_settings::<crate::detect::DetectSettings>().unwrap().nms.iou_threshold, 0.45);
        let err = apply_params(&detect, &iou(1.5)).unwrap_err().to_string();
        assert!(err.contains("detect.nms"), "the task's section is checked by the task: {err}");
        let rounded = apply_params(&base, &Params::from([("img_size".to_string(), json!(100))])).unwrap();
        assert_eq!(rounded.img_size, 128, "rounded up to the stride, as on the command line");
    }

    #[test]
    fn the_importance_plot_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("importance.png");
        plot_importances(&[("lr".to_string(), 0.75), ("batch".to_string(), 0.25)], &path).unwrap();
        assert_eq!(image::open(&path).unwrap().height(), 56 + 2 * 30 + 62);
    }
}
