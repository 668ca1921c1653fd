//! The training loop every task shares: epochs of optimiser steps under a warm-up + cosine schedule, validation
//! after each epoch, `results.csv`, `best`, `last` and top-k checkpoints, curves, early stopping, resume, and the
//! test pass at the end. The task ([`Task`]) gives the data, the model, the loss and the metrics.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use tch::nn;
use tch::{Device, Tensor};

use kiln_models::weights::{load_into, HeadPolicy};

use super::curves::plot_curves;
use super::data_parallel::DataParallel;
use super::fast_dev_run_report::{EvalPass, FastDevRunReport, TrainPass, REPORT_FILE};
use super::records::{read_results, write_results, EpochRecord};
use super::task::{Batches, Direction, Evaluation, Task};
use super::update::Update;

mod save;
use save::rank_rng_name;

use crate::checkpoint::{self, Checkpoint};
use crate::config::TrainConfig;
use crate::data::SkipLog;
use crate::device::{device_name, select_device};
use crate::fsutil::write_atomic;
use crate::optim::{CosineSchedule, Ema, GradScaler, Optimizer, OptimizerConfig};
use crate::precision::Precision;
use crate::progress::{EpochProgress, StepStats};
use crate::run_dir::{RunDir, Which};
use crate::run_lock::RunLock;
use crate::{Error, Result};

use crate::native::{set_rng_state, TORCH_RNG};

/// How much the validation score must rise to count as an improvement (best checkpoint, early stopping).
const MIN_IMPROVEMENT: f64 = 1e-9;

/// What a finished training run reports.
#[derive(Clone, Debug)]
pub struct TrainOutcome<M, R> {
    pub run: RunDir,
    pub device: String,
    /// Epochs finished, counting those before a resume.
    pub epochs: usize,
    pub best_epoch: usize,
    /// Early stopping ended the run before its last epoch.
    pub stopped_early: bool,
    /// The epoch callback stopped the run (no test pass was made; `--resume` continues it).
    pub interrupted: bool,
    /// The validation metrics of the best checkpoint.
    pub best_val: Option<M>,
    /// The objective's value at the best checkpoint (`None` without validation data).
    pub best_objective: Option<f64>,
    /// The best checkpoint on the test split (none when the test split is empty).
    pub test: Option<R>,
    pub skipped: Vec<(std::path::PathBuf, String)>,
}

impl<M: std::fmt::Display, R: std::fmt::Display> std::fmt::Display for TrainOutcome<M, R> {
    /// As `kiln train` prints it: epochs, the best validation metrics, the test report, the skipped files and the
    /// run directory.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "trained {} epoch(s) on {}{}; best epoch {}",
            self.epochs,
            self.device,
            if self.stopped_early { " (stopped early)" } else { "" },
            self.best_epoch
        )?;
        if let Some(val) = &self.best_val {
            writeln!(f, "best validation: {val}")?;
        }
        if let Some(test) = &self.test {
            write!(f, "{test}")?;
        }
        if !self.skipped.is_empty() {
            writeln!(f, "skipped {} unreadable image(s):", self.skipped.len())?;
            for (path, reason) in self.skipped.iter().take(10) {
                writeln!(f, "  {}: {reason}", path.display())?;
            }
        }
        writeln!(f, "run directory: {}", self.run.path.display())
    }
}

/// The outcome of training task `T`.
pub type Outcome<T> = TrainOutcome<<T as Task>::Metrics, <T as Task>::Report>;

/// Called after each epoch's checkpoints are written; `ControlFlow::Break` stops the run there.
pub type EpochCallback<'a> = &'a mut dyn FnMut(&EpochRecord) -> ControlFlow<()>;

/// Sets the heap policy ([`crate::allocator`]), selects the device, seeds libtorch and sets its thread count.
pub fn prepare_runtime(config: &TrainConfig, device_override: Option<&str>) -> Result<Device> {
    crate::allocator::keep_freed_memory();
    let device = select_device(device_override.unwrap_or(&config.device))?;
    tch::manual_seed(config.seed as i64);
    if device.is_cuda() {
        tch::Cuda::manual_seed_all(config.seed);
        // Input shapes are fixed, so cuDNN's per-shape algorithm search (torch.backends.cudnn.benchmark) pays.
        tch::Cuda::cudnn_set_benchmark(true);
    }
    if config.threads > 0 {
        tch::set_num_threads(config.threads as i32);
    }
    Ok(device)
}

/// Starts a new run of task `T`: creates its directory, saves the resolved config and the dataset summary,
/// trains, tests; `on_epoch` is called after every epoch.
pub fn train<T: Task>(config: &TrainConfig, on_epoch: EpochCallback) -> Result<Outcome<T>> {
    let mut config = config.clone().with_img_size_rounded();
    config.validate()?;
    // The task's section spelt out in full: config.yaml states every value the run trains with.
    let settings = config.task_settings::<T::Settings>()?;
    config.set_task_settings(&settings);
    let config = &config;
    if config.fast_dev_run > 0 {
        return Err(Error::InvalidSetting {
            key: "fast_dev_run".into(),
            reason: "a fast dev run trains no model to return: run it with engine::fast_dev_run".into(),
        });
    }
    let data_parallel = DataParallel::from_env()?;
    if let Some(dp) = &data_parallel {
        // A torchrun restart of the job continues the run its first launch made.
        if let (true, Some(path)) = (dp.env.restart_count > 0, dp.recorded_run_dir()?) {
            if dp.is_main() {
                eprintln!("restart {} of the job resumes {}", dp.env.restart_count, path.display());
            }
            return resume_with::<T>(RunDir::open(&path)?, on_epoch, data_parallel);
        }
    }
    let device = prepare_runtime(config, None)?;
    let task = T::open(config)?;
    let (run, _lock) = match &data_parallel {
        Some(dp) if !dp.is_main() => (RunDir::open(&dp.share_run_dir(None)?)?, None),
        _ => {
            let run = RunDir::create(&config.project, config.task, config.name.as_deref())?;
            // Held until the run ends (or the process dies): a second writer of this run is refused.
            let lock = RunLock::acquire(&run, "kiln train")?;
            write_atomic(&run.config(), config.to_yaml().as_bytes())?;
            let summary = serde_json::to_vec_pretty(&task.dataset_summary()).expect("serialises");
            write_atomic(&run.dataset(), &summary)?;
            if let Some(dp) = &data_parallel {
                dp.share_run_dir(Some(&run.path))?;
            }
            (run, Some(lock))
        }
    };
    Trainer::new(task, run, config.clone(), device, None, data_parallel)?.run(on_epoch)
}

/// Continues a run from its `last` checkpoint: weights, optimiser state, EMA, schedule position and epoch.
pub fn resume<T: Task>(run: RunDir, on_epoch: EpochCallback) -> Result<Outcome<T>> {
    resume_with::<T>(run, on_epoch, DataParallel::from_env()?)
}

/// [`resume`] as a rank of a data-parallel job (or in one process): rank 0 holds the lock and repairs the run.
fn resume_with<T: Task>(
    run: RunDir,
    on_epoch: EpochCallback,
    data_parallel: Option<DataParallel>,
) -> Result<Outcome<T>> {
    let main = data_parallel.as_ref().is_none_or(DataParallel::is_main);
    let _lock = if main { Some(RunLock::acquire(&run, "kiln train --resume")?) } else { None };
    let config = super::run_config::load_run_config::<T>(&run, "resume")?;
    let ckpt = checkpoint::load(&run.checkpoint(Which::Last))?;
    if main {
        for repaired in super::reconcile::reconcile_checkpoints(&run, &ckpt.state)? {
            eprintln!("resume: {repaired}");
        }
    }
    let device = prepare_runtime(&config, None)?;
    let task = T::open(&config)?;
    task.check_resume(&config, &ckpt)?;
    Trainer::new(task, run, config, device, Some(ckpt), data_parallel)?.run(on_epoch)
}

pub(super) struct Trainer<T: Task> {
    task: T,
    run: RunDir,
    config: TrainConfig,
    device: Device,
    vs: nn::VarStore,
    model: T::Model,
    optimizer: Optimizer,
    ema: Option<Ema>,
    scaler: GradScaler,
    precision: Precision,
    schedule: CosineSchedule,
    skips: Arc<SkipLog>,
    train_loader: T::Loader,
    val_loader: Option<T::Loader>,
    records: Vec<EpochRecord>,
    start_epoch: usize,
    global_step: usize,
    best_score: f64,
    best_epoch: usize,
    top_k: Vec<(usize, f64)>,
    /// Batches per training epoch (all of them, or `limit_train_batches`).
    train_batches: usize,
    /// What ranks the top-k checkpoints: a validation metric's index and direction (`None`: the objective's
    /// score, which is also the best checkpoint's).
    monitor: Option<(usize, Direction)>,
    /// This process's rank of a data-parallel job (`None`: training alone).
    data_parallel: Option<DataParallel>,
}

/// The metric `save_top_k` ranks by, from `checkpoint.monitor` / `checkpoint.mode`: its index among the task's
/// metrics and its direction, or `None` for the task's objective.
fn resolve_monitor<T: Task>(config: &TrainConfig, has_val: bool) -> Result<Option<(usize, Direction)>> {
    let policy = &config.checkpoint;
    let objective = T::objective_of(config)?;
    let bad = |key: &str, reason: String| Error::InvalidSetting { key: key.into(), reason };
    let Some(name) = policy.monitor.as_deref() else {
        return match policy.mode {
            Some(mode) if mode != objective.direction => Err(bad(
                "checkpoint.mode",
                format!(
                    "the default monitor, {}, is {}d; name a monitor to rank by another",
                    objective.metric,
                    objective.direction.name()
                ),
            )),
            _ => Ok(None),
        };
    };
    let name = name.strip_prefix("val_").unwrap_or(name);
    let index = T::METRICS.iter().position(|m| *m == name).ok_or_else(|| {
        bad(
            "checkpoint.monitor",
            format!("{name} is not a validation metric of {}: one of {}", T::KIND.name(), T::METRICS.join(", ")),
        )
    })?;
    if !has_val && config.save_top_k > 0 {
        return Err(bad("checkpoint.monitor", format!("{name} needs a validation split, and this run has none")));
    }
    let direction = match policy.mode {
        Some(mode) => mode,
        None if name == objective.metric => objective.direction,
        None if name == "loss" => Direction::Minimize,
        None => return Err(bad("checkpoint.mode", format!("say whether {name} is better low (min) or high (max)"))),
    };
    Ok(Some((index, direction)))
}

impl<T: Task> Trainer<T> {
    pub(super) fn new(
        task: T,
        run: RunDir,
        config: TrainConfig,
        device: Device,
        resume_from: Option<Checkpoint>,
        mut data_parallel: Option<DataParallel>,
    ) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        // A resumed run takes its weights from the checkpoint, not from `weights`.
        let build_config =
            if resume_from.is_some() { TrainConfig { weights: None, ..config.clone() } } else { config.clone() };
        // libtorch's generator is one per process: seeding and initialising under one lock keeps a run's initial
        // weights a function of its seed even when several runs start in one process (tests, studies in threads).
        let built = {
            let _init = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
            tch::manual_seed(config.seed as i64);
            task.build_model(&vs, &build_config)?
        };
        if let Some(line) = &built.loaded {
            eprintln!("{line}");
        }
        let model = built.model;
        let precision = Precision::resolve(config.amp, config.channels_last, device)?;
        precision.prepare_params(&vs)?;
        // Variables that are not parameters (BatchNorm's statistics), named before freezing turns parameters off.
        let buffers: Vec<String> =
            vs.variables().into_iter().filter(|(_, t)| !t.requires_grad()).map(|(name, _)| name).collect();
        let params = task.trainable_params(&vs, &model, &config);
        if let Some(dp) = &mut data_parallel {
            let tensors: Vec<&Tensor> = params.iter().map(|p| &p.tensor).collect();
            dp.wrap(&vs, &tensors, &buffers)?;
            if dp.rank() > 0 {
                // Rank 0 goes on with the run's stream; the others draw their own (drop-path, MixUp).
                tch::manual_seed((config.seed as i64).wrapping_add(dp.rank() as i64));
            }
        }
        let optimizer = Optimizer::new(
            params,
            OptimizerConfig {
                kind: config.optimizer,
                weight_decay: config.weight_decay,
                momentum: config.momentum,
                betas: (0.9, 0.999),
                eps: 1e-8,
            },
        );
        let skips = Arc::new(SkipLog::default());
        let (train_loader, val_loader) = task.loaders(&config, &skips)?;
        let train_loader = match &data_parallel {
            Some(dp) => train_loader.shard(dp.world_size(), dp.rank()),
            None => train_loader,
        };
        let val_loader = match (&data_parallel, val_loader) {
            (Some(dp), Some(loader)) if T::MERGES_EVALUATIONS => Some(loader.shard_exact(dp.world_size(), dp.rank())),
            (_, loader) => loader,
        };
        let steps_per_epoch =
            config.limit_train_batches.map_or(train_loader.num_batches(), |limit| limit.of(train_loader.num_batches()));
        let monitor = resolve_monitor::<T>(&config, val_loader.is_some())?;
        let total_steps = config.epochs * steps_per_epoch;
        let schedule = CosineSchedule {
            peak_lr: config.lr,
            min_lr: config.min_lr.min(config.lr),
            warmup_steps: crate::optim::warmup_steps(
                config.warmup_epochs,
                config.warmup_min_steps,
                steps_per_epoch,
                total_steps,
            ),
            total_steps,
        };
        let ema = config.ema.then(|| Ema::new(&vs, config.ema_decay));
        let scaler = GradScaler::new(precision.needs_loss_scaling());
        let mut trainer = Self {
            records: read_results(&run.results())?.into_iter().map(|r| r.with_metrics(T::METRICS)).collect(),
            task,
            run,
            config,
            device,
            vs,
            model,
            optimizer,
            ema,
            scaler,
            precision,
            schedule,
            skips,
            train_loader,
            val_loader,
            start_epoch: 0,
            global_step: 0,
            best_score: f64::NEG_INFINITY,
            best_epoch: 0,
            top_k: Vec::new(),
            train_batches: steps_per_epoch,
            monitor,
            data_parallel,
        };
        match resume_from {
            Some(ckpt) => trainer.restore(ckpt)?,
            None => trainer.records.clear(),
        }
        Ok(trainer)
    }

    fn restore(&mut self, ckpt: Checkpoint) -> Result<()> {
        let state = &ckpt.state;
        let training = ckpt.group("train.");
        let model_weights: Vec<(String, Tensor)> =
            if training.is_empty() { ckpt.weights() } else { training.into_iter().collect() };
        load_into(&self.vs, model_weights, &ckpt.path, HeadPolicy::Strict, &[])?;
        if let Some(ema) = &mut self.ema {
            ema.load(&ckpt.weights().into_iter().collect())?;
            ema.updates = state.ema_updates;
        }
        let optimizer_state: std::collections::HashMap<String, Tensor> = ckpt
            .tensors
            .iter()
            .filter(|(n, _)| n.starts_with("optimizer."))
            .map(|(n, t)| (n.clone(), t.to_device(self.device)))
            .collect();
        self.optimizer.load_state(&optimizer_state, state.optimizer_step)?;
        self.scaler.restore(state.loss_scale, state.scaler);
        // The random stream continues where it stopped (drop-path masks, random init of anything built later);
        // checkpoints from before kiln saved it restart from the seed.
        for (name, device) in self.rng_devices() {
            if let Some(saved) = ckpt.tensors.get(&rank_rng_name(&name, self.rank())) {
                set_rng_state(device, saved)?;
            }
        }
        let world = self.data_parallel.as_ref().map_or(1, DataParallel::world_size);
        if state.world_size != world && self.is_main() {
            eprintln!(
                "warning: resuming a run trained on {} rank(s) with {world}: weights, optimiser and schedule go on, \
                 but the data order differs from an uninterrupted run",
                state.world_size
            );
        }
        self.start_epoch = state.epoch;
        self.global_step = state.global_step;
        self.best_score = state.best_score;
        self.best_epoch = state.best_epoch;
        self.top_k = state.top_k.clone();
        self.records.truncate(state.epoch);
        if self.is_main() {
            eprintln!("resuming {} after epoch {} (step {})", self.run.path.display(), state.epoch, state.global_step);
        }
        Ok(())
    }

    fn run(mut self, on_epoch: EpochCallback) -> Result<Outcome<T>> {
        let epochs = self.config.epochs;
        if self.start_epoch >= epochs {
            return Err(Error::InvalidSetting {
                key: "resume".into(),
                reason: format!("{} already finished all {epochs} epochs", self.run.path.display()),
            });
        }
        if self.is_main() {
            let ranks = match &self.data_parallel {
                Some(dp) => format!(" x {} ranks", dp.world_size()),
                None => String::new(),
            };
            eprintln!(
                "training {} on {}{ranks} in {} ({}) -> {}",
                T::model_name(&self.config),
                device_name(self.device),
                self.precision.describe(),
                self.task.describe(),
                self.run.path.display()
            );
        }
        let objective = T::objective_of(&self.config)?;
        let objective_index =
            T::METRICS.iter().position(|m| *m == objective.metric).expect("the objective is a metric");
        let loss_index = T::METRICS.iter().position(|m| *m == "loss");
        let (mut stopped_early, mut interrupted) = (false, false);
        let mut best_val = None;
        for epoch in self.start_epoch..epochs {
            let (train_losses, lr, seconds, images) = self.train_epoch(epoch)?;
            let images_per_second = images as f64 / seconds.max(1e-9);
            let eval = self.validate()?;
            let values = match eval.as_ref().map(|e| e.values()) {
                Some(values) => Some(self.shared_values(values)?),
                None => None,
            };
            self.share_skips()?;
            let record = self.record(epoch, &train_losses, lr, seconds, images_per_second, values.as_deref());
            // Higher is better: the objective in its direction, ties broken by a lower validation loss; without
            // validation data, a lower training loss.
            let score = match &values {
                Some(v) => {
                    let loss = loss_index.and_then(|i| v[i]).unwrap_or(0.0);
                    objective.direction.score(v[objective_index].unwrap_or(f64::NAN)) - 1e-6 * loss.min(1e5)
                }
                None => -train_losses[0],
            };
            let score = if score.is_nan() { f64::NEG_INFINITY } else { score };
            // The first epoch always gives a `best`, even when its objective is undefined.
            let improved = score > self.best_score + MIN_IMPROVEMENT || self.best_epoch == 0;
            if improved {
                self.best_score = score;
                self.best_epoch = epoch + 1;
                best_val = eval.as_ref().map(T::metrics);
                if let (Some(e), true) = (&eval, self.is_main()) {
                    self.task.plot_validation(&self.run, e)?;
                }
            }
            self.records.push(record.clone());
            if self.is_main() {
                write_results(&self.run.results(), &self.records)?;
            }
            let metrics = eval.as_ref().map(|e| serde_json::to_value(T::metrics(e)).expect("metrics serialise"));
            // The top-k rank: every N-th epoch only, by the monitored metric (undefined values never enter).
            let every = self.config.checkpoint.every_n_epochs.unwrap_or(1);
            let rank = match (self.monitor, &values) {
                _ if (epoch + 1) % every != 0 => None,
                (Some((i, direction)), Some(v)) => v[i].filter(|x| !x.is_nan()).map(|x| direction.score(x)),
                (Some(_), None) => None,
                (None, _) => Some(score),
            };
            self.save_checkpoints(epoch + 1, metrics, rank, improved)?;
            // Rank 0 has written the epoch's files before any rank goes on.
            if let Some(dp) = &self.data_parallel {
                dp.barrier()?;
            }
            // Plots are best-effort: results.csv and the checkpoints above are the record.
            if self.is_main() {
                if let Err(e) =
                    plot_curves::<T>(&self.records, self.task.loss_names(), self.task.loss_label(), &self.run.curves())
                {
                    eprintln!("warning: no training curves plot: {e}");
                }
            }
            let summary = match &values {
                Some(v) => {
                    let shown: Vec<String> = T::METRICS
                        .iter()
                        .zip(v)
                        .take(4)
                        .filter_map(|(name, value)| value.map(|x| format!("{name} {x:.4}")))
                        .collect();
                    format!(
                        "train loss {:.4} | val {}{}",
                        train_losses[0],
                        shown.join(" "),
                        if improved { " (best)" } else { "" }
                    )
                }
                None => format!("train loss {:.4} (no val split)", train_losses[0]),
            };
            if self.is_main() {
                eprintln!("epoch {}/{epochs} {summary} | {images_per_second:.1} img/s, {seconds:.1}s", epoch + 1);
            }
            let stop = on_epoch(&record).is_break();
            // Rank 0's callback decides for the job.
            let stop = match &self.data_parallel {
                Some(dp) => dp.from_main(&[f64::from(u8::from(stop))])?[0] != 0.0,
                None => stop,
            };
            if stop {
                interrupted = epoch + 1 < epochs;
                break;
            }
            let patience = self.config.patience;
            if patience > 0 && epoch + 1 - self.best_epoch >= patience && epoch + 1 < epochs {
                if self.is_main() {
                    eprintln!("early stop: no improvement for {patience} epochs (best epoch {})", self.best_epoch);
                }
                stopped_early = true;
                break;
            }
        }
        // Ranks other than 0 may not see rank 0's files (several machines); they keep what they computed.
        let best_state = match self.is_main() {
            true => Some(checkpoint::load(&self.run.checkpoint(Which::Best))?.state),
            false => None,
        };
        if best_val.is_none() {
            best_val =
                best_state.as_ref().and_then(|s| s.val_metrics.clone()).and_then(|v| serde_json::from_value(v).ok());
        }
        let best_objective = self
            .records
            .iter()
            .find(|r| r.epoch == best_state.as_ref().map_or(self.best_epoch, |s| s.best_epoch))
            .and_then(|r| r.val(objective.metric));
        let skipped = self.skips.entries();
        if !skipped.is_empty() {
            eprintln!(
                "skipped {} unreadable image(s); first: {} ({})",
                skipped.len(),
                skipped[0].0.display(),
                skipped[0].1
            );
        }
        let epochs_done = self.records.len();
        let test = if !self.task.has_test() || interrupted || !self.is_main() {
            None
        } else {
            Some(T::test(&self.run, &device_name(self.device))?)
        };
        Ok(TrainOutcome {
            run: self.run,
            device: device_name(self.device),
            epochs: epochs_done,
            best_epoch: self.best_epoch,
            stopped_early,
            interrupted,
            best_val,
            best_objective,
            test,
            skipped,
        })
    }

    /// One pass over the training set; returns (mean of each loss part, last lr, seconds, images trained on).
    fn train_epoch(&mut self, epoch: usize) -> Result<(Vec<f64>, f64, f64, usize)> {
        let started = Instant::now();
        let steps = self.train_batches;
        let mut progress =
            self.is_main().then(|| EpochProgress::new(format!("epoch {}/{}", epoch + 1, self.config.epochs), steps));
        let mut sums = vec![0.0; self.task.loss_names().len()];
        let (mut images, mut lr) = (0usize, 0.0);
        let skipped_before = self.scaler.skipped_steps;
        for (i, batch) in self.train_loader.epoch(epoch, true).take(steps).enumerate() {
            let batch = batch?;
            lr = self.schedule.lr(self.global_step);
            if let Some(dp) = &self.data_parallel {
                dp.sync_buffers()?;
            }
            let losses = self.task.losses(&self.model, &batch, &self.precision, &self.config)?;
            let (losses, finite_everywhere) = match &self.data_parallel {
                Some(dp) => dp.share_step(losses)?,
                None => (losses, true),
            };
            let loss_value = if finite_everywhere {
                if let Some(dp) = &self.data_parallel {
                    dp.prepare_backward(&losses.total)?;
                }
                Update {
                    optimizer: &mut self.optimizer,
                    scaler: &mut self.scaler,
                    ema: self.ema.as_mut(),
                    grad_clip: self.config.grad_clip,
                }
                .apply(&losses.total, lr)?
            } else {
                f64::NAN
            };
            if !loss_value.is_finite() {
                // Under fp16 loss scaling an overflowing step is skipped (as torch.amp.GradScaler does); a run
                // whose loss stays non-finite, or one without scaling, has diverged.
                if !self.scaler.skip_non_finite_loss() {
                    return Err(Error::Diverged { epoch: epoch + 1, step: self.global_step, loss: loss_value });
                }
                self.global_step += 1;
                continue;
            }
            self.global_step += 1;
            let n = T::Loader::batch_len(&batch);
            sums[0] += loss_value * n as f64;
            for (sum, part) in sums.iter_mut().zip(&losses.parts).skip(1) {
                *sum += part.double_value(&[]) * n as f64;
            }
            images += n;
            let images_per_second = images as f64 / started.elapsed().as_secs_f64().max(1e-9);
            if let Some(progress) = &mut progress {
                progress.step(i + 1, &StepStats { loss: sums[0] / images as f64, lr, images_per_second });
            }
        }
        // The job's losses and images: every rank's, summed.
        if let Some(dp) = &self.data_parallel {
            let mut local = sums.clone();
            local.push(images as f64);
            let mut shared = dp.sum(&local)?;
            images = shared.pop().unwrap_or(0.0) as usize;
            sums = shared;
        }
        let skipped = self.scaler.skipped_steps - skipped_before;
        if skipped > 0 && self.is_main() {
            eprintln!(
                "epoch {}: {skipped} of {steps} steps skipped for non-finite fp16 loss or gradients (loss scale now {})",
                epoch + 1,
                self.scaler.scale
            );
        }
        if images == 0 {
            return Err(Error::NoReadableImages {
                root: self.config.data.clone(),
                split: "train".into(),
                skipped: self.skips.count(),
            });
        }
        if let Some(progress) = progress {
            progress.finish();
        }
        let seconds = started.elapsed().as_secs_f64();
        let means = sums.iter().map(|s| s / images as f64).collect();
        Ok((means, lr, seconds, images))
    }

    /// Validation of the weights that will be saved (the EMA weights when EMA is on); under data-parallel training,
    /// of this rank's share, merged with the others' when the task merges evaluations.
    fn validate(&mut self) -> Result<Option<T::Evaluation>> {
        let Some(loader) = self.val_loader.take() else { return Ok(None) };
        let result = self.evaluate_saved(&loader, "val");
        self.val_loader = Some(loader);
        result.map(Some)
    }

    /// Evaluates the weights a checkpoint would hold (the EMA weights when EMA is on) over a loader of `split`.
    fn evaluate_saved(&mut self, loader: &T::Loader, split: &str) -> Result<T::Evaluation> {
        if let Some(ema) = &mut self.ema {
            ema.swap();
        }
        let result = self.task.evaluate(&self.model, loader, &self.precision);
        if let Some(ema) = &mut self.ema {
            ema.swap();
        }
        let eval = match (&self.data_parallel, T::MERGES_EVALUATIONS) {
            (Some(dp), true) => {
                let shares = dp.gather_variable(&T::evaluation_share(&result?)?)?;
                self.task.merge_evaluation_shares(shares)?
            }
            _ => result?,
        };
        if eval.images() == 0 {
            return Err(Error::NoReadableImages {
                root: self.config.data.clone(),
                split: split.into(),
                skipped: self.skips.count(),
            });
        }
        Ok(eval)
    }

    /// `fast_dev_run`: `batches` training steps, then `batches` batches of val and of test, all spread over
    /// their splits; nothing is written (the report names where [`super::fast_dev_run()`] writes itself).
    pub(super) fn fast_dev_run(mut self, batches: usize) -> Result<FastDevRunReport> {
        self.train_loader = self.train_loader.sample_batches(batches);
        self.val_loader = self.val_loader.as_ref().map(|l| l.sample_batches(batches));
        self.train_batches = self.train_loader.num_batches();
        let (losses, lr, seconds, images) = self.train_epoch(0)?;
        let train = TrainPass {
            batches: self.train_batches,
            images,
            losses: self.task.loss_names().iter().map(|n| n.to_string()).zip(losses).collect(),
            lr,
            seconds,
        };
        let val = match self.val_loader.take() {
            Some(loader) => Some(self.eval_pass(&loader, "val")?),
            None => None,
        };
        let test = match self.task.test_loader(&self.config, &self.skips)? {
            Some(loader) => Some(self.eval_pass(&loader.sample_batches(batches), "test")?),
            None => None,
        };
        Ok(FastDevRunReport {
            task: self.config.task.name().into(),
            model: T::model_name(&self.config),
            device: device_name(self.device),
            batches,
            train,
            val,
            test,
            skipped_images: self.skips.count(),
            report: self.run.path.join(REPORT_FILE),
        })
    }

    fn eval_pass(&mut self, loader: &T::Loader, split: &str) -> Result<EvalPass> {
        let started = Instant::now();
        let eval = self.evaluate_saved(loader, split)?;
        Ok(EvalPass {
            batches: loader.num_batches(),
            images: eval.images(),
            metrics: T::METRICS.iter().map(|n| n.to_string()).zip(eval.values()).collect(),
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    fn record(
        &self,
        epoch: usize,
        train_losses: &[f64],
        lr: f64,
        seconds: f64,
        ips: f64,
        values: Option<&[Option<f64>]>,
    ) -> EpochRecord {
        EpochRecord {
            epoch: epoch + 1,
            train: self.task.loss_names().iter().zip(train_losses).map(|(n, v)| (n.to_string(), *v)).collect(),
            val: T::METRICS
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), values.and_then(|v| v.get(i).copied().flatten())))
                .collect(),
            lr,
            seconds,
            images_per_second: ips,
            skipped_images: self.skips.count(),
        }
    }

    /// Under data-parallel training, records every rank's unreadable files on every rank, so that the counts and
    /// lists reported are the job's (each rank reads only its shares of the splits).
    fn share_skips(&self) -> Result<()> {
        let Some(dp) = &self.data_parallel else { return Ok(()) };
        let mine = super::task::encode_share(&self.skips.entries())?;
        let all = dp.gather_variable(&mine)?;
        for entries in super::task::decode_shares::<Vec<(std::path::PathBuf, String)>>(&all)? {
            for (path, reason) in entries {
                self.skips.record(&path, reason);
            }
        }
        Ok(())
    }

    /// Rank 0 of a data-parallel job, or a process training alone: the one that writes and reports.
    fn is_main(&self) -> bool {
        self.data_parallel.as_ref().is_none_or(DataParallel::is_main)
    }

    fn rank(&self) -> usize {
        self.data_parallel.as_ref().map_or(0, DataParallel::rank)
    }

    /// Validation values every rank agrees on: rank 0's (`None` travels as NaN, which every decision treats alike).
    fn shared_values(&self, values: Vec<Option<f64>>) -> Result<Vec<Option<f64>>> {
        let Some(dp) = &self.data_parallel else { return Ok(values) };
        let encoded: Vec<f64> = values.iter().map(|v| v.unwrap_or(f64::NAN)).collect();
        let shared = dp.from_main(&encoded)?;
        Ok(if dp.is_main() { values } else { shared.into_iter().map(|x| (!x.is_nan()).then_some(x)).collect() })
    }
}
