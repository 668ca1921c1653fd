//! Running a study: each trial samples parameters, hands them to the injected [`Trainer`], which trains while
//! reporting the objective every epoch (a pruner may stop it), and is recorded COMPLETE, PRUNED or FAIL (with the
//! reason) in the storage; the study goes on after a failure. Rerunning with the same storage and name resumes:
//! only the missing trials run. While a trial trains, a [`Heartbeat`] thread keeps it alive in the storage.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::heartbeat::{heartbeat_interval, Heartbeat};
use super::importance::fanova_importances;
use super::pruner::{Curve, MedianPruner, NoPruner, Pruner, SuccessiveHalvingPruner};
use super::sampler::{GridSampler, Observation, Outcome, Params, RandomSampler, Sampler, TpeConfig, TpeSampler};
use super::space::SearchSpace;
use super::storage::{Direction, Storage, StorageUrl, TrialRecord, TrialState};
use crate::fsutil::write_atomic;
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
    /// The search space; by default the one [`run_study`] is given (kiln-train: the config's `search_space`, else
    /// the task's).
    pub space: Option<SearchSpace>,
    /// RUNNING trials without a heartbeat for this long are marked FAIL (their worker died); this worker beats
    /// every [`heartbeat_interval`]`(heartbeat_timeout)`. Every worker of a study should use the same timeout.
    pub heartbeat_timeout: Duration,
    pub worker: String,
    /// Told the running trial (storage, study id, trial number) so that an interrupt handler can mark it FAIL
    /// before the process exits; `None` when no trial runs.
    pub running: Option<RunningTrial>,
}

/// How a trial ended: what the study records for it.
#[derive(Clone, Debug, PartialEq)]
pub struct TrialOutcome {
    pub state: TrialState,
    pub value: Option<f64>,
    pub reason: Option<String>,
}

/// The trial a study process is running, as an interrupt handler must know it: where it is stored, and how it
/// ended once training has ended (until the study has recorded that itself).
#[derive(Clone, Debug)]
pub struct RunningEntry {
    pub storage: StorageUrl,
    pub study: i64,
    pub number: u32,
    pub outcome: Option<TrialOutcome>,
}

/// The trial a study process is running, shared with an interrupt handler.
pub type RunningTrial = std::sync::Arc<std::sync::Mutex<Option<RunningEntry>>>;

/// Records the running trial when the process is interrupted, through a connection of its own: the outcome it
/// ended with when training had ended (a finished trial is never lost to the interrupt), else FAIL with `reason`.
/// Returns what really happened, for the handler to print.
pub fn record_interrupted(entry: &RunningEntry, reason: &str) -> Result<String> {
    let mut storage = entry.storage.open()?;
    let number = entry.number;
    Ok(match &entry.outcome {
        Some(o) => match storage.finish(entry.study, number, o.state, o.value, o.reason.as_deref())? {
            true => format!("trial {number} had ended {} before the interrupt; recorded as such", o.state.name()),
            false => format!("trial {number}'s result ({}) was already recorded", o.state.name()),
        },
        None => match storage.finish(entry.study, number, TrialState::Fail, None, Some(reason))? {
            true => format!("trial {number} marked FAIL ({reason})"),
            false => format!("trial {number} had already ended; left as it was"),
        },
    })
}

/// The metric a study optimises and its direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Objective {
    /// The name the trainer reports it by (e.g. `accuracy`, `cer`).
    pub metric: String,
    pub direction: Direction,
}

/// An error of one trial's training: it fails that trial, with this as the reason, and the study goes on.
pub type TrialError = Box<dyn std::error::Error + Send + Sync>;

/// What a trial's training reports back.
#[derive(Clone, Debug, Default)]
pub struct TrialRun {
    /// Where the trial's run was written, recorded as the trial's `kiln_run_dir` attribute.
    pub run_dir: Option<PathBuf>,
    /// The epoch callback stopped training before its end.
    pub interrupted: bool,
    /// The objective at the trial's best epoch (`None` when the trainer cannot tell; the best reported value is
    /// used then).
    pub best_objective: Option<f64>,
}

/// What a study tunes: the trainer it injects (kiln-train gives one for its runs; any other can be used).
pub trait Trainer {
    /// The metric optimised and its direction.
    fn objective(&self) -> Objective;
    /// The base settings as JSON: each search-space key must name a key in them (dotted for nested ones).
    fn settings(&self) -> Value;
    /// The seed the samplers start from (with the trial number added).
    fn seed(&self) -> u64;
    /// Trains trial `trial` (a name such as `study/trial_3`) with `params` applied to the base settings, calling
    /// `report(epoch, objective value)` after every epoch; when it returns `Break`, training stops there.
    fn train(
        &mut self,
        params: &Params,
        trial: &str,
        report: &mut dyn FnMut(usize, Option<f64>) -> ControlFlow<()>,
    ) -> std::result::Result<TrialRun, TrialError>;
}

/// What a study ended with.
#[derive(Clone, Debug)]
pub struct StudyOutcome {
    pub dir: PathBuf,
    pub trials: Vec<TrialRecord>,
    pub best: Option<TrialRecord>,
    /// Trials this call ran.
    pub ran: usize,
    /// Each parameter's fANOVA importance ([`importances`]).
    pub importances: Vec<(String, f64)>,
    pub direction: Direction,
    /// The objective's name.
    pub metric: String,
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

/// The text of a panic's payload (`panic!("...")` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs the study's missing trials, training each with `trainer` (over `options.space`, else `default_space`),
/// then writes into `dir`: `best_params.json`, `trials.csv` and the parameter importances (`importances.json`).
pub fn run_study(
    trainer: &mut dyn Trainer,
    default_space: &SearchSpace,
    dir: &Path,
    options: &StudyOptions,
) -> Result<StudyOutcome> {
    let mut space = options.space.clone().unwrap_or_else(|| default_space.clone());
    for (key, dist) in space.iter_mut() {
        if let Some(adjusted) = dist.on_grid() {
            eprintln!("search space {key}: high moved onto the step grid, {dist:?} -> {adjusted:?}");
            *dist = adjusted;
        }
    }
    let base_json = trainer.settings();
    for (key, dist) in &space {
        dist.validate().map_err(|reason| Error::InvalidSetting { key: format!("search space {key}"), reason })?;
        if key.split('.').try_fold(&base_json, |v, part| v.get(part)).is_none() {
            return Err(Error::InvalidSetting {
                key: format!("search space {key}"),
                reason: "not a config key".into(),
            });
        }
    }
    let dir = dir.to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
    let mut storage = options.storage.open()?;
    let objective = trainer.objective();
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
        let tell = |entry: Option<RunningEntry>| {
            if let Some(running) = &options.running {
                *running.lock().unwrap_or_else(|e| e.into_inner()) = entry;
            }
        };
        tell(Some(RunningEntry { storage: options.storage.clone(), study, number, outcome: None }));
        ran += 1;
        let history = storage.trials(study).map_err(|e| abandon(&mut *storage, study, number, e))?;
        let mut params =
            sampler(options.sampler, trainer.seed(), number).sample(&space, &observations(&history, direction));
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
        let heartbeat =
            Heartbeat::start(&options.storage, study, number, heartbeat_interval(options.heartbeat_timeout))
                .map_err(|e| abandon(&mut *storage, study, number, e))?;
        let trial_name = format!("{}/trial_{number}", options.name);
        let (mut best, mut last) = (f64::NAN, f64::NAN);
        let mut pruned = false;
        let mut ended_elsewhere = false;
        let mut report_error = None;
        // A panic inside training (libtorch reports shape errors and CUDA out-of-memory by panicking) fails this
        // trial at once, with its message, instead of leaving it RUNNING until the heartbeat times out.
        let mut on_epoch = |epoch: usize, value: Option<f64>| {
            let Some(value) = value else { return ControlFlow::Continue(()) };
            best = if best.is_finite() && direction.score(best) >= direction.score(value) { best } else { value };
            last = value;
            if let Err(e) = storage.report(study, number, epoch, value) {
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
            if pruner.should_prune(&current, epoch, &others) {
                pruned = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            trainer.train(&params, &trial_name, &mut on_epoch)
        }))
        .unwrap_or_else(|payload| Err(Box::new(Error::TrialPanicked(panic_message(payload.as_ref())))));
        drop(heartbeat);
        if let Some(e) = report_error {
            tell(None);
            return Err(abandon(&mut *storage, study, number, e));
        }
        if ended_elsewhere {
            eprintln!(
                "warning: study {}: trial {number} was ended by another worker (heartbeat timeout?); stopped training it",
                options.name
            );
            tell(None);
            continue;
        }
        if let Ok(TrialRun { run_dir: Some(run_dir), .. }) = &result {
            let dir = Value::from(run_dir.display().to_string());
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
        // The interrupt handler records this outcome, not FAIL, if Ctrl-C comes before the study has.
        let outcome = TrialOutcome { state, value, reason: reason.clone() };
        tell(Some(RunningEntry { storage: options.storage.clone(), study, number, outcome: Some(outcome) }));
        let recorded = storage.finish(study, number, state, value, reason.as_deref());
        tell(None);
        if !recorded? {
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
    }
    write_atomic(&dir.join("trials.csv"), trials_csv(&trials).as_bytes())?;
    let importances = importances(&space, &trials);
    let json: serde_json::Map<String, Value> = importances.iter().map(|(k, v)| (k.clone(), Value::from(*v))).collect();
    write_atomic(&dir.join("importances.json"), &serde_json::to_vec_pretty(&json).expect("serialises"))?;
    Ok(StudyOutcome { dir, trials, best, ran, importances, direction, metric: objective.metric })
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

    /// A trainer whose training is `train(trial number, report)`.
    struct StandIn<F> {
        train: F,
        trials: u32,
    }

    impl<F> Trainer for StandIn<F>
    where
        F: FnMut(
            u32,
            &mut dyn FnMut(usize, Option<f64>) -> ControlFlow<()>,
        ) -> std::result::Result<TrialRun, TrialError>,
    {
        fn objective(&self) -> Objective {
            Objective { metric: "accuracy".into(), direction: Direction::Maximize }
        }
        fn settings(&self) -> Value {
            json!({ "lr": 0.001 })
        }
        fn seed(&self) -> u64 {
            0
        }
        fn train(
            &mut self,
            _params: &Params,
            _trial: &str,
            report: &mut dyn FnMut(usize, Option<f64>) -> ControlFlow<()>,
        ) -> std::result::Result<TrialRun, TrialError> {
            self.trials += 1;
            (self.train)(self.trials - 1, report)
        }
    }

    #[test]
    fn an_interrupt_records_a_finished_trial_as_it_ended_and_says_what_happened() {
        let dir = tempfile::tempdir().unwrap();
        let url = StorageUrl::Sqlite(dir.path().join("s.db"));
        let mut storage = url.open().unwrap();
        let study = storage.study("s", Direction::Maximize).unwrap();
        let entry = |number, outcome| RunningEntry { storage: url.clone(), study, number, outcome };
        // Training had ended and the study had not recorded it yet: the outcome is recorded, not FAIL (the handler
        // used to mark every running trial FAIL, losing a finished one).
        let finished = storage.claim_trial(study, 10, "test").unwrap().unwrap();
        let complete = TrialOutcome { state: TrialState::Complete, value: Some(0.9), reason: None };
        let said = record_interrupted(&entry(finished, Some(complete.clone())), "interrupted").unwrap();
        assert!(said.contains("had ended COMPLETE"), "{said}");
        let said = record_interrupted(&entry(finished, Some(complete)), "interrupted").unwrap();
        assert!(said.contains("already recorded"), "{said}");
        // Mid-training: FAIL with the reason.
        let mid = storage.claim_trial(study, 10, "test").unwrap().unwrap();
        let said = record_interrupted(&entry(mid, None), "interrupted (Ctrl-C)").unwrap();
        assert!(said.contains("marked FAIL"), "{said}");
        // Ended before the handler ran: left as it was, and not called a FAIL.
        let said = record_interrupted(&entry(finished, None), "interrupted").unwrap();
        assert!(said.contains("already ended") && !said.contains("FAIL"), "{said}");
        let trials = storage.trials(study).unwrap();
        let of = |n: u32| trials.iter().find(|t| t.number == n).unwrap();
        assert_eq!((of(finished).state, of(finished).value), (TrialState::Complete, Some(0.9)));
        assert_eq!(of(mid).state, TrialState::Fail);
        assert_eq!(of(mid).reason.as_deref(), Some("interrupted (Ctrl-C)"));
    }

    fn lr_space() -> SearchSpace {
        SearchSpace::from([(
            "lr".to_string(),
            super::super::space::Distribution::Float { low: 1e-4, high: 1e-2, log: true, step: None },
        )])
    }

    #[test]
    fn a_trial_another_worker_ended_stops_at_its_next_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let url = StorageUrl::Sqlite(dir.path().join("study.db"));
        let options = stand_in_study(url.clone(), "ended", 1);
        let mut epochs_run = 0;
        let mut trainer = StandIn {
            trials: 0,
            train: |_, report: &mut dyn FnMut(usize, Option<f64>) -> ControlFlow<()>| {
                for epoch in 1..=10 {
                    if epoch == 3 {
                        // Another worker decides this trial is dead.
                        let mut other = url.open().unwrap();
                        let study = other.study("ended", Direction::Maximize).unwrap();
                        other.finish(study, 0, TrialState::Fail, None, Some("stale")).unwrap();
                    }
                    epochs_run = epoch;
                    if report(epoch, Some(0.5)).is_break() {
                        return Ok(TrialRun { run_dir: None, interrupted: true, best_objective: Some(0.5) });
                    }
                }
                Ok(TrialRun { run_dir: None, interrupted: false, best_objective: Some(0.5) })
            },
        };
        let outcome = run_study(&mut trainer, &lr_space(), dir.path(), &options).unwrap();
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
        let options = stand_in_study(StorageUrl::Sqlite(dir.path().join("study.db")), "panics", 3);
        // Trial 0 panics as libtorch does on a shape error, trial 1 with a String payload, trial 2 returns an error.
        let mut trainer = StandIn {
            trials: 0,
            train: |trial, _: &mut dyn FnMut(usize, Option<f64>) -> ControlFlow<()>| match trial {
                0 => panic!("shape '[2, 3]' is invalid for input of size 5"),
                1 => std::panic::panic_any(format!("CUDA out of memory (trial {trial})")),
                _ => Err("data loader: disk gone".into()),
            },
        };
        let outcome = run_study(&mut trainer, &lr_space(), dir.path(), &options).unwrap();
        assert_eq!(outcome.ran, 3, "the study went on after each panic");
        let states: Vec<TrialState> = outcome.trials.iter().map(|t| t.state).collect();
        assert_eq!(states, [TrialState::Fail; 3], "none left RUNNING");
        let reasons: Vec<&str> = outcome.trials.iter().map(|t| t.reason.as_deref().unwrap()).collect();
        assert!(reasons[0].contains("training panicked: shape '[2, 3]' is invalid"), "{reasons:?}");
        assert!(reasons[1].contains("CUDA out of memory (trial 1)"), "{reasons:?}");
        assert!(reasons[2].contains("disk gone"), "{reasons:?}");
        assert!(dir.path().join("trials.csv").is_file() && dir.path().join("importances.json").is_file());
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
}
