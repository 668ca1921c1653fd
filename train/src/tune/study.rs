//! Running a study: each trial samples parameters, applies them to the training config, trains while reporting
//! validation accuracy every epoch (a pruner may stop it), and is recorded COMPLETE, PRUNED or FAIL (with the
//! reason) in the storage; the study goes on after a failure. Rerunning with the same storage and name resumes:
//! only the missing trials run. While a trial trains, a [`Heartbeat`] thread keeps it alive in the storage.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::heartbeat::{heartbeat_interval, Heartbeat};
use super::importance::{fanova_importances, plot_importances};
use super::pruner::{Curve, MedianPruner, NoPruner, Pruner, SuccessiveHalvingPruner};
use super::sampler::{GridSampler, Observation, Outcome, Params, RandomSampler, Sampler, TpeConfig, TpeSampler};
use super::space::SearchSpace;
use super::storage::{Direction, Storage, StorageUrl, TrialRecord, TrialState};
use crate::config::{merge, TrainConfig};
use crate::fsutil::write_atomic;
use crate::tasks;
use crate::{Error, Result};

/// Which sampler a study uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SamplerKind {
    #[default]
    Tpe,
    Random,
    Grid,
}

/// Which pruner a study uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrunerKind {
    #[default]
    Median,
    Halving,
    None,
}

/// How to run a study.
#[derive(Clone, Debug)]
pub struct StudyOptions {
    /// The study's total number of trials (resuming runs only the missing ones).
    pub trials: usize,
    /// Where the study lives.
    pub storage: StorageUrl,
    pub name: String,
    pub sampler: SamplerKind,
    pub pruner: PrunerKind,
    /// The search space; by default the config's `search_space`, else [`default_space`].
    pub space: Option<SearchSpace>,
    /// RUNNING trials without a heartbeat for this long are marked FAIL (their worker died); this worker beats
    /// every [`heartbeat_interval`]`(heartbeat_timeout)`. Every worker of a study should use the same timeout.
    pub heartbeat_timeout: Duration,
    pub worker: String,
    /// Told the running trial (storage, study id, trial number) so that an interrupt handler can mark it FAIL
    /// before the process exits; `None` when no trial runs.
    pub running: Option<RunningTrial>,
}

/// The trial a study process is running, shared with an interrupt handler: (storage, study id, number).
pub type RunningTrial = std::sync::Arc<std::sync::Mutex<Option<(StorageUrl, i64, u32)>>>;

/// Marks a running trial FAIL with `reason` through its own connection (for interrupt handlers).
pub fn fail_running(trial: &(StorageUrl, i64, u32), reason: &str) -> Result<()> {
    let (url, study, number) = trial;
    url.open()?.finish(*study, *number, TrialState::Fail, None, Some(reason))?;
    Ok(())
}

/// The default search space of a study of `task` (each task gives its own).
pub fn default_space(task: crate::config::TaskKind) -> SearchSpace {
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
    Ok(config)
}

/// What a study ended with.
#[derive(Clone, Debug)]
pub struct StudyOutcome {
    pub dir: PathBuf,
    pub trials: Vec<TrialRecord>,
    pub best: Option<TrialRecord>,
    /// Trials this call ran.
    pub ran: usize,
}

/// The sampler for trial `number` (seeded by the study seed and the number, so workers differ).
fn sampler(kind: SamplerKind, seed: u64, number: u32) -> Box<dyn Sampler> {
    let seed = seed.wrapping_add(number as u64);
    match kind {
        SamplerKind::Tpe => Box::new(TpeSampler::new(TpeConfig { seed, ..Default::default() })),
        SamplerKind::Random => Box::new(RandomSampler::new(seed)),
        SamplerKind::Grid => Box::new(GridSampler { points: 3, next: number as usize }),
    }
}

fn pruner(kind: PrunerKind) -> Box<dyn Pruner> {
    match kind {
        PrunerKind::Median => Box::new(MedianPruner::default()),
        PrunerKind::Halving => Box::new(SuccessiveHalvingPruner::default()),
        PrunerKind::None => Box::new(NoPruner),
    }
}

/// Validation accuracy is maximised; samplers and pruners minimise, so they see its negation.
/// What the sampler and the pruner minimise: the objective turned so that lower is better.
fn to_minimise(direction: Direction, value: f64) -> f64 {
    -direction.score(value)
}

fn observations(trials: &[TrialRecord], direction: Direction) -> Vec<Observation> {
    trials
        .iter()
        .filter_map(|t| {
            let outcome = match t.state {
                TrialState::Complete => Outcome::Complete,
                TrialState::Pruned => Outcome::Pruned,
                _ => return None,
            };
            Some(Observation { params: t.params.clone(), value: to_minimise(direction, t.value?), outcome })
        })
        .collect()
}

fn curves(trials: &[TrialRecord], except: u32, direction: Direction) -> Vec<Curve> {
    trials
        .iter()
        .filter(|t| t.number != except)
        .map(|t| Curve {
            values: t.intermediate.iter().map(|(s, v)| (*s, to_minimise(direction, *v))).collect(),
            complete: t.state == TrialState::Complete,
        })
        .collect()
}

/// Runs the study's missing trials, then writes into `<project>/<task>/<study>/`: `best_params.json`, `trials.csv`,
/// the best trial's `best.safetensors` and `test_metrics.json` (when this machine ran it), `history.png`, and the
/// parameter importances (`importances.json`, `importance.png`).
pub fn run_study(base: &TrainConfig, options: &StudyOptions) -> Result<StudyOutcome> {
    run_study_with(base, options, &mut |config, on_epoch| tasks::train_observed(config, on_epoch))
}

/// How a trial trains: [`tasks::train_observed`], or a stand-in in tests.
type TrainTrial<'a> = dyn FnMut(&TrainConfig, crate::engine::EpochCallback<'_>) -> Result<tasks::RunSummary> + 'a;

/// The text of a panic's payload (`panic!("...")` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn run_study_with(base: &TrainConfig, options: &StudyOptions, train: &mut TrainTrial<'_>) -> Result<StudyOutcome> {
    base.validate()?;
    if base.fast_dev_run > 0 {
        return Err(Error::InvalidSetting {
            key: "fast_dev_run".into(),
            reason: "a fast dev run checks one run; a study's trials must train (set it to 0)".into(),
        });
    }
    let mut space =
        options.space.clone().or_else(|| base.search_space.clone()).unwrap_or_else(|| default_space(base.task));
    for (key, dist) in space.iter_mut() {
        if let Some(adjusted) = dist.on_grid() {
            eprintln!("search space {key}: high moved onto the step grid, {dist:?} -> {adjusted:?}");
            *dist = adjusted;
        }
    }
    let base_json = serde_json::to_value(base).expect("the config serialises");
    for (key, dist) in &space {
        dist.validate().map_err(|reason| Error::InvalidSetting { key: format!("search space {key}"), reason })?;
        if key.split('.').try_fold(&base_json, |v, part| v.get(part)).is_none() {
            return Err(Error::InvalidSetting {
                key: format!("search space {key}"),
                reason: "not a config key".into(),
            });
        }
    }
    let dir = base.project.join(base.task.name()).join(&options.name);
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
    let mut storage = options.storage.open()?;
    let objective = tasks::objective(base.task);
    let direction = objective.direction;
    let study = storage.study(&options.name, direction)?;
    let space_json = serde_json::to_string(&space).expect("the space serialises");
    let stored = storage.set_space(study, &space_json)?;
    // Compared as spaces, not strings: the same space written by another serialiser (key order, number format)
    // is the same space.
    if !super::space::same_space(&stored, &space) {
        return Err(Error::Storage {
            url: options.storage.to_string(),
            reason: format!(
                "study '{}' samples the search space {stored}, not {space_json}; name another study (--study) to \
                 search another space",
                options.name
            ),
        });
    }
    let pruner = pruner(options.pruner);
    let mut ran = 0;
    loop {
        // Dead workers' trials are failed before each claim, so they count and show as soon as possible.
        let stale = storage.fail_stale(study, options.heartbeat_timeout)?;
        if stale > 0 {
            eprintln!("marked {stale} trial(s) without a heartbeat as FAIL");
        }
        let Some(number) = storage.claim_trial(study, options.trials, &options.worker)? else { break };
        // Told the interrupt handler at once, so that a Ctrl-C while the parameters are sampled still fails it.
        if let Some(running) = &options.running {
            *running.lock().unwrap_or_else(|e| e.into_inner()) = Some((options.storage.clone(), study, number));
        }
        ran += 1;
        let history = storage.trials(study).map_err(|e| abandon(&mut *storage, study, number, e))?;
        let mut params = sampler(options.sampler, base.seed, number).sample(&space, &observations(&history, direction));
        // A trial enqueued from Python (`study.enqueue_trial`) keeps the parameters it was given.
        if let Some(claimed) = history.iter().find(|t| t.number == number) {
            for (key, value) in &claimed.fixed_params {
                match space.get(key) {
                    Some(distribution) if distribution.to_internal(value).is_some() => {
                        params.insert(key.clone(), value.clone());
                    }
                    _ => eprintln!(
                        "warning: trial {number}: enqueued {key} = {value} is not in the search space; sampled instead"
                    ),
                }
            }
        }
        storage.set_params(study, number, &params, &space).map_err(|e| abandon(&mut *storage, study, number, e))?;
        eprintln!(
            "study {}: trial {number} with {}",
            options.name,
            serde_json::to_string(&params).expect("serialises")
        );
        let mut config = match apply_params(base, &params) {
            Ok(c) => c,
            Err(e) => {
                storage.finish(study, number, TrialState::Fail, None, Some(&e.to_string()))?;
                continue;
            }
        };
        let heartbeat =
            Heartbeat::start(&options.storage, study, number, heartbeat_interval(options.heartbeat_timeout))
                .map_err(|e| abandon(&mut *storage, study, number, e))?;
        config.name = Some(format!("{}/trial_{number}", options.name));
        let (mut best, mut last) = (f64::NAN, f64::NAN);
        let mut pruned = false;
        let mut ended_elsewhere = false;
        let mut report_error = None;
        // A panic inside training (libtorch reports shape errors and CUDA out-of-memory by panicking) fails this
        // trial at once, with its message, instead of leaving it RUNNING until the heartbeat times out.
        let mut on_epoch = |record: &crate::engine::EpochRecord| {
            let Some(value) = record.val(objective.metric) else { return ControlFlow::Continue(()) };
            best = if best.is_finite() && direction.score(best) >= direction.score(value) { best } else { value };
            last = value;
            if let Err(e) = storage.report(study, number, record.epoch, value) {
                report_error = Some(e);
                return ControlFlow::Break(());
            }
            // One read of the study: this trial's curve and everyone else's.
            let trials = storage.trials(study).unwrap_or_default();
            // Another worker (or Optuna's fail_stale_trials) may have ended this trial: stop training it.
            if trials.iter().any(|t| t.number == number && t.state != TrialState::Running) {
                ended_elsewhere = true;
                return ControlFlow::Break(());
            }
            let others = curves(&trials, number, direction);
            let current = Curve {
                values: trials
                    .iter()
                    .find(|t| t.number == number)
                    .map(|t| t.intermediate.iter().map(|(s, v)| (*s, to_minimise(direction, *v))).collect())
                    .unwrap_or_default(),
                complete: false,
            };
            if pruner.should_prune(&current, record.epoch, &others) {
                pruned = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| train(&config, &mut on_epoch)))
            .unwrap_or_else(|payload| Err(Error::TrialPanicked(panic_message(payload.as_ref()))));
        drop(heartbeat);
        if let Some(running) = &options.running {
            *running.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        if let Some(e) = report_error {
            return Err(abandon(&mut *storage, study, number, e));
        }
        if ended_elsewhere {
            eprintln!(
                "warning: study {}: trial {number} was ended by another worker (heartbeat timeout?); stopped training it",
                options.name
            );
            continue;
        }
        if let Ok(summary) = &result {
            let dir = Value::from(summary.run.path.display().to_string());
            storage
                .set_user_attr(study, number, super::storage::RUN_DIR_ATTR, &dir)
                .map_err(|e| abandon(&mut *storage, study, number, e))?;
        }
        let (state, value, reason) = match result {
            Ok(outcome) if pruned && outcome.interrupted => {
                // As in Optuna, a pruned trial's value is its last reported one.
                eprintln!("study {}: trial {number} pruned at {last:.4}", options.name);
                (TrialState::Pruned, Some(last), None)
            }
            Ok(outcome) => match outcome.best_objective.or(best.is_finite().then_some(best)) {
                Some(value) => {
                    eprintln!(
                        "study {}: trial {number} finished with val {} {value:.4}",
                        options.name, objective.metric
                    );
                    (TrialState::Complete, Some(value), None)
                }
                // Without a validation value there is nothing to optimise; a value of -inf would mislead TPE.
                None => (
                    TrialState::Fail,
                    None,
                    Some(format!("no validation {} (the data has no validation images)", objective.metric)),
                ),
            },
            Err(e) => {
                eprintln!("study {}: trial {number} failed: {e}", options.name);
                (TrialState::Fail, None, Some(e.to_string()))
            }
        };
        if !storage.finish(study, number, state, value, reason.as_deref())? {
            eprintln!(
                "warning: study {}: trial {number} had already been ended by another worker (heartbeat timeout?); \
                 its result is not recorded",
                options.name
            );
        }
    }
    let trials = storage.trials(study)?;
    let best = best_trial(&trials, direction).cloned();
    if let Some(b) = &best {
        // The directory the trial recorded; none when another client (a Python worker) ran it.
        let run = b.run_dir.as_ref();
        let json = serde_json::json!({"trial": b.number, "value": b.value, "params": b.params, "run": run});
        write_atomic(&dir.join("best_params.json"), &serde_json::to_vec_pretty(&json).expect("serialises"))?;
        // The best trial's checkpoint and test metrics, beside the study's other outputs; an earlier best's copies
        // are removed when the best trial left none here.
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
    write_atomic(&dir.join("trials.csv"), trials_csv(&trials).as_bytes())?;
    plot_history(&trials, &dir.join("history.png"))?;
    let importances = importances(&space, &trials);
    let json: serde_json::Map<String, Value> = importances.iter().map(|(k, v)| (k.clone(), Value::from(*v))).collect();
    write_atomic(&dir.join("importances.json"), &serde_json::to_vec_pretty(&json).expect("serialises"))?;
    plot_importances(&importances, &dir.join("importance.png"))?;
    Ok(StudyOutcome { dir, trials, best, ran })
}

/// The COMPLETE trial with the best objective value in `direction` (the first of equals).
pub fn best_trial(trials: &[TrialRecord], direction: Direction) -> Option<&TrialRecord> {
    trials
        .iter()
        .filter_map(|t| Some((t, direction.score(t.value?))))
        .filter(|(t, _)| t.state == TrialState::Complete)
        .fold(None, |best: Option<(&TrialRecord, f64)>, (t, v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((t, v)),
        })
        .map(|(t, _)| t)
}

/// Marks a trial FAIL (best effort) when the study stops with `error` while the trial runs, so it is not left
/// RUNNING until a heartbeat timeout; returns the error.
fn abandon(storage: &mut dyn Storage, study: i64, number: u32, error: Error) -> Error {
    let _ = storage.finish(study, number, TrialState::Fail, None, Some(&format!("study stopped: {error}")));
    error
}

/// Each parameter's fANOVA importance for the validation accuracy of the COMPLETE trials (empty below 2); seeded
/// with 0, so the study directory and `kiln study show` agree.
pub fn importances(space: &SearchSpace, trials: &[TrialRecord]) -> Vec<(String, f64)> {
    let complete: Vec<(Params, f64)> = trials
        .iter()
        .filter(|t| t.state == TrialState::Complete)
        .filter_map(|t| Some((t.params.clone(), t.value?)))
        .collect();
    fanova_importances(space, &complete, 0)
}

/// The optimisation history: each finished trial's value and the best so far, by trial number.
fn plot_history(trials: &[TrialRecord], path: &std::path::Path) -> Result<()> {
    use crate::plots::{plot_panels, Panel, Series};
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
        y_label: "validation accuracy".into(),
        series: vec![
            Series { name: "complete".into(), points: point(TrialState::Complete) },
            Series { name: "pruned".into(), points: point(TrialState::Pruned) },
            Series { name: "best so far".into(), points: best_so_far },
        ],
        log_y: false,
    };
    plot_panels(&[panel], path)
}

/// `number,state,value,params,intermediate,duration_s,reason` — params and intermediate values as JSON.
pub fn trials_csv(trials: &[TrialRecord]) -> String {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let _ = writer.write_record(["number", "state", "value", "params", "intermediate", "duration_s", "reason"]);
    for t in trials {
        let _ = writer.write_record([
            t.number.to_string(),
            t.state.name().to_string(),
            t.value.map(|v| v.to_string()).unwrap_or_default(),
            serde_json::to_string(&t.params).unwrap_or_default(),
            serde_json::to_string(&t.intermediate).unwrap_or_default(),
            t.finished.zip(t.started).map(|(f, s)| format!("{:.1}", f - s)).unwrap_or_default(),
            t.reason.clone().unwrap_or_default(),
        ]);
    }
    String::from_utf8(writer.into_inner().unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A random-sampler study of `trials` trials in `storage`, for tests whose trainer is a stand-in.
    fn stand_in_study(storage: StorageUrl, name: &str, trials: usize) -> StudyOptions {
        StudyOptions {
            trials,
            storage,
            name: name.into(),
            sampler: SamplerKind::Random,
            pruner: PrunerKind::None,
            space: None,
            heartbeat_timeout: Duration::from_secs(600),
            worker: "test".into(),
            running: None,
        }
    }

    #[test]
    fn a_trial_another_worker_ended_stops_at_its_next_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let base =
            TrainConfig { data: dir.path().join("data"), project: dir.path().join("runs"), ..TrainConfig::default() };
        let url = StorageUrl::Sqlite(dir.path().join("study.db"));
        let options = stand_in_study(url.clone(), "ended", 1);
        let mut epochs_run = 0;
        let mut train =
            |config: &TrainConfig, on_epoch: crate::engine::EpochCallback<'_>| -> Result<tasks::RunSummary> {
                let run = crate::run_dir::RunDir::create(&config.project, config.task, Some("t"))?;
                for epoch in 1..=10 {
                    if epoch == 3 {
                        // Another worker decides this trial is dead.
                        let mut other = url.open().unwrap();
                        let study = other.study("ended", Direction::Maximize).unwrap();
                        other.finish(study, 0, TrialState::Fail, None, Some("stale")).unwrap();
                    }
                    let record = crate::engine::EpochRecord {
                        epoch,
                        train: vec![("loss".into(), 1.0)],
                        val: vec![("accuracy".into(), Some(0.5))],
                        lr: 1e-3,
                        seconds: 1.0,
                        images_per_second: 1.0,
                        skipped_images: 0,
                    };
                    epochs_run = epoch;
                    if on_epoch(&record).is_break() {
                        return Ok(tasks::RunSummary { run, interrupted: true, best_objective: Some(0.5) });
                    }
                }
                Ok(tasks::RunSummary { run, interrupted: false, best_objective: Some(0.5) })
            };
        let outcome = run_study_with(&base, &options, &mut train).unwrap();
        assert_eq!(epochs_run, 3, "stopped at the first epoch after the trial was ended");
        let t = &outcome.trials[0];
        assert_eq!(
            (t.state, t.reason.as_deref()),
            (TrialState::Fail, Some("stale")),
            "the other worker's verdict stays"
        );
    }

    #[test]
    fn a_panic_inside_a_trial_fails_it_at_once_and_the_study_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let base =
            TrainConfig { data: dir.path().join("data"), project: dir.path().join("runs"), ..TrainConfig::default() };
        let options = stand_in_study(StorageUrl::Sqlite(dir.path().join("study.db")), "panics", 3);
        let mut calls = 0;
        // Trial 0 panics as libtorch does on a shape error, trial 1 with a String payload, trial 2 returns an error.
        let mut train = |_: &TrainConfig, _: crate::engine::EpochCallback<'_>| -> Result<tasks::RunSummary> {
            calls += 1;
            match calls {
                1 => panic!("shape '[2, 3]' is invalid for input of size 5"),
                2 => std::panic::panic_any(format!("CUDA out of memory (trial {})", calls - 1)),
                _ => Err(Error::DataLoader("disk gone".into())),
            }
        };
        let outcome = run_study_with(&base, &options, &mut train).unwrap();
        assert_eq!(outcome.ran, 3, "the study went on after each panic");
        let states: Vec<TrialState> = outcome.trials.iter().map(|t| t.state).collect();
        assert_eq!(states, [TrialState::Fail; 3], "none left RUNNING");
        let reasons: Vec<&str> = outcome.trials.iter().map(|t| t.reason.as_deref().unwrap()).collect();
        assert!(reasons[0].contains("training panicked: shape '[2, 3]' is invalid"), "{reasons:?}");
        assert!(reasons[1].contains("CUDA out of memory (trial 1)"), "{reasons:?}");
        assert!(reasons[2].contains("disk gone"), "{reasons:?}");
    }

    #[test]
    fn the_best_trial_is_the_first_complete_one_with_the_highest_value() {
        let trial = |number, state, value| TrialRecord {
            number,
            state,
            value,
            params: Params::new(),
            intermediate: Default::default(),
            reason: None,
            worker: "w".into(),
            run_dir: None,
            fixed_params: Params::new(),
            started: Some(0.0),
            finished: None,
        };
        let trials = [
            trial(0, TrialState::Complete, Some(0.5)),
            trial(1, TrialState::Pruned, Some(0.99)),
            trial(2, TrialState::Complete, Some(0.8)),
            trial(3, TrialState::Fail, None),
            trial(4, TrialState::Complete, Some(0.8)),
        ];
        assert_eq!(best_trial(&trials, Direction::Maximize).map(|t| t.number), Some(2));
        assert_eq!(best_trial(&trials, Direction::Minimize).map(|t| t.number), Some(0), "CER-like objectives");
        assert!(best_trial(&trials[1..2], Direction::Maximize).is_none(), "a pruned trial is never the best");
    }

    #[test]
    fn params_reach_nested_keys_and_bad_values_are_refused() {
        let base = TrainConfig { data: "/d".into(), ..Default::default() };
        let params = Params::from([("lr".to_string(), json!(0.005)), ("augment.hflip".to_string(), json!(0.0))]);
        let c = apply_params(&base, &params).unwrap();
        assert_eq!((c.lr, c.augment.hflip, c.augment.color_jitter), (0.005, 0.0, base.augment.color_jitter));
        assert!(apply_params(&base, &Params::from([("nonsense".to_string(), json!(1))])).is_err());
        assert!(apply_params(&base, &Params::from([("batch".to_string(), json!(0))])).is_err());
        let rounded = apply_params(&base, &Params::from([("img_size".to_string(), json!(100))])).unwrap();
        assert_eq!(rounded.img_size, 128, "rounded up to the stride, as on the command line");
    }
}
