//! The classification training loop: epochs of AdamW/SGD steps under a warm-up + cosine schedule, validation
//! after each epoch, `results.csv`, `last` and `best` checkpoints, early stopping, and the test pass at the end.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tch::nn;
use tch::{Device, Tensor};

use kiln_models::weights::{load_into, HeadPolicy};
use kiln_models::ImageClassifier;

use super::evaluate::{evaluate, Evaluation};
use super::model::{build_classifier, trainable_params};
use super::report::{evaluate_run, EvalOptions, SplitReport};
use super::results::{read_results, write_results, EpochRecord};
use super::setup::{apply_cache, make_loader, open_dataset, prepare_runtime};
use super::step::StepParts;
use crate::checkpoint::{self, Checkpoint, CheckpointState};
use crate::config::TrainConfig;
use crate::data::{ImageFolder, Loader, SkipLog, Split, Transform};
use crate::device::device_name;
use crate::fsutil::write_atomic;
use crate::optim::{CosineSchedule, Ema, GradScaler, Optimizer, OptimizerConfig};
use crate::plots::{plot_panels, Panel, Series};
use crate::precision::Precision;
use crate::progress::{EpochProgress, StepStats};
use crate::run_dir::{RunDir, Which};
use crate::{Error, Result};

/// How much the validation score must rise to count as an improvement (best checkpoint, early stopping).
const MIN_IMPROVEMENT: f64 = 1e-9;

/// What a finished training run reports.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    pub run: RunDir,
    pub device: String,
    /// Epochs finished, counting those before a resume.
    pub epochs: usize,
    pub best_epoch: usize,
    /// Early stopping ended the run before its last epoch.
    pub stopped_early: bool,
    /// The epoch callback stopped the run (no test pass was made; `--resume` continues it).
    pub interrupted: bool,
    pub best_val: Option<crate::metrics::ClassificationMetrics>,
    /// The best checkpoint on the test split (none when the test split is empty).
    pub test: Option<SplitReport>,
    pub skipped: Vec<(std::path::PathBuf, String)>,
}

#[derive(Serialize)]
struct DatasetSummary<'a> {
    root: &'a std::path::Path,
    class_names: &'a [String],
    images: BTreeMap<&'static str, usize>,
    sources: &'a BTreeMap<String, crate::data::image_folder::SplitSource>,
}

/// Called after each epoch's checkpoints are written; `ControlFlow::Break` stops the run there.
pub type EpochCallback<'a> = &'a mut dyn FnMut(&EpochRecord) -> ControlFlow<()>;

/// Starts a new run: creates its directory, saves the resolved config, trains, tests.
pub fn train(config: &TrainConfig) -> Result<TrainOutcome> {
    train_observed(config, &mut |_| ControlFlow::Continue(()))
}

/// [`train`] with a callback after every epoch.
pub fn train_observed(config: &TrainConfig, on_epoch: EpochCallback) -> Result<TrainOutcome> {
    let config = &config.clone().with_img_size_rounded();
    config.validate()?;
    let device = prepare_runtime(config, None)?;
    let dataset = open_dataset(config)?;
    let run = RunDir::create(&config.project, config.task, config.name.as_deref())?;
    write_atomic(&run.config(), config.to_yaml().as_bytes())?;
    let summary = DatasetSummary {
        root: &dataset.root,
        class_names: &dataset.class_names,
        images: Split::ALL.iter().map(|s| (s.name(), dataset.split(*s).len())).collect(),
        sources: &dataset.sources,
    };
    write_atomic(&run.dataset(), &serde_json::to_vec_pretty(&summary).expect("serialises"))?;
    Trainer::new(run, config.clone(), device, dataset, None)?.run(on_epoch)
}

/// Continues a run from its `last` checkpoint: weights, optimiser state, EMA, schedule position and epoch.
pub fn resume(run: RunDir) -> Result<TrainOutcome> {
    resume_observed(run, &mut |_| ControlFlow::Continue(()))
}

/// [`resume`] with a callback after every epoch.
pub fn resume_observed(run: RunDir, on_epoch: EpochCallback) -> Result<TrainOutcome> {
    let config = TrainConfig::load(&run.config())?;
    let ckpt = checkpoint::load(&run.checkpoint(Which::Last))?;
    let device = prepare_runtime(&config, None)?;
    let dataset = open_dataset(&config)?;
    if dataset.class_names != ckpt.state.class_names {
        return Err(Error::ClassMismatch {
            root: config.data.clone(),
            split: "train".into(),
            expected: ckpt.state.class_names.clone(),
            found: dataset.class_names,
        });
    }
    Trainer::new(run, config, device, dataset, Some(ckpt))?.run(on_epoch)
}

struct Trainer {
    run: RunDir,
    config: TrainConfig,
    device: Device,
    dataset: ImageFolder,
    vs: nn::VarStore,
    model: ImageClassifier,
    optimizer: Optimizer,
    ema: Option<Ema>,
    scaler: GradScaler,
    precision: Precision,
    schedule: CosineSchedule,
    skips: Arc<SkipLog>,
    train_loader: Loader,
    val_loader: Option<Loader>,
    records: Vec<EpochRecord>,
    start_epoch: usize,
    global_step: usize,
    best_score: f64,
    best_epoch: usize,
}

impl Trainer {
    fn new(
        run: RunDir,
        config: TrainConfig,
        device: Device,
        dataset: ImageFolder,
        resume_from: Option<Checkpoint>,
    ) -> Result<Self> {
        let num_classes = dataset.num_classes();
        let vs = nn::VarStore::new(device);
        // A resumed run takes its weights from the checkpoint, not from `weights`.
        let build_config =
            if resume_from.is_some() { TrainConfig { weights: None, ..config.clone() } } else { config.clone() };
        let (model, report) = build_classifier(&vs, &build_config, num_classes)?;
        if let (Some(report), Some(path)) = (&report, &config.weights) {
            eprintln!(
                "loaded {} tensors from {}{}",
                report.loaded,
                path.display(),
                if report.reinitialised.is_empty() {
                    String::new()
                } else {
                    format!(" (new head for {num_classes} classes: {})", report.reinitialised.join(", "))
                }
            );
        }
        let precision = Precision::resolve(config.amp, config.channels_last, device)?;
        precision.prepare_params(&vs)?;
        let params = trainable_params(&vs, &model, config.freeze.0);
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
        let mut train_loader = make_loader(&config, &dataset.train, Transform::Train(config.augment.clone()), &skips)?;
        let mut val_loader = if dataset.val.is_empty() {
            None
        } else {
            Some(make_loader(&config, &dataset.val, Transform::Eval, &skips)?)
        };
        let mut cached: Vec<(&str, &mut Loader)> = vec![("train", &mut train_loader)];
        if let Some(val) = val_loader.as_mut() {
            cached.push(("val", val));
        }
        apply_cache(&config, &mut cached)?;
        let steps_per_epoch = train_loader.num_batches();
        let schedule = CosineSchedule {
            peak_lr: config.lr,
            min_lr: config.min_lr.min(config.lr),
            warmup_steps: (config.warmup_epochs * steps_per_epoch as f64).round() as usize,
            total_steps: config.epochs * steps_per_epoch,
        };
        let ema = config.ema.then(|| Ema::new(&vs, config.ema_decay));
        let scaler = GradScaler::new(precision.needs_loss_scaling());
        let mut trainer = Self {
            records: read_results(&run.results())?,
            run,
            config,
            device,
            dataset,
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
        self.scaler.scale = state.loss_scale;
        self.start_epoch = state.epoch;
        self.global_step = state.global_step;
        self.best_score = state.best_score;
        self.best_epoch = state.best_epoch;
        self.records.truncate(state.epoch);
        eprintln!("resuming {} after epoch {} (step {})", self.run.path.display(), state.epoch, state.global_step);
        Ok(())
    }

    fn run(mut self, on_epoch: EpochCallback) -> Result<TrainOutcome> {
        let epochs = self.config.epochs;
        if self.start_epoch >= epochs {
            return Err(Error::InvalidSetting {
                key: "resume".into(),
                reason: format!("{} already finished all {epochs} epochs", self.run.path.display()),
            });
        }
        eprintln!(
            "training {} on {} in {} ({} classes; {} train / {} val / {} test images) -> {}",
            self.config.model,
            device_name(self.device),
            self.precision.describe(),
            self.dataset.num_classes(),
            self.dataset.train.len(),
            self.dataset.val.len(),
            self.dataset.test.len(),
            self.run.path.display()
        );
        let (mut stopped_early, mut interrupted) = (false, false);
        let mut best_val = None;
        for epoch in self.start_epoch..epochs {
            let (train_loss, lr, seconds, images_per_second) = self.train_epoch(epoch)?;
            let eval = self.validate()?;
            let record = self.record(epoch, train_loss, lr, seconds, images_per_second, eval.as_ref());
            // Higher is better: validation accuracy, ties broken by lower loss; without val, lower train loss.
            let score = match &eval {
                Some(e) => e.metrics.accuracy - 1e-6 * e.loss.min(1e5),
                None => -train_loss,
            };
            let improved = score > self.best_score + MIN_IMPROVEMENT;
            if improved {
                self.best_score = score;
                self.best_epoch = epoch + 1;
                best_val = eval.as_ref().map(|e| e.metrics.clone());
            }
            self.records.push(record.clone());
            write_results(&self.run.results(), &self.records)?;
            self.save_checkpoints(epoch + 1, eval.as_ref(), improved)?;
            self.plot_curves()?;
            let summary = match &eval {
                Some(e) => format!(
                    "train loss {train_loss:.4} | val loss {:.4} acc {:.4} f1 {:.4}{}",
                    e.loss,
                    e.metrics.accuracy,
                    e.metrics.f1_macro,
                    if improved { " (best)" } else { "" }
                ),
                None => format!("train loss {train_loss:.4} (no val split)"),
            };
            eprintln!("epoch {}/{epochs} {summary} | {images_per_second:.1} img/s, {seconds:.1}s", epoch + 1);
            if on_epoch(&record).is_break() {
                interrupted = epoch + 1 < epochs;
                break;
            }
            let patience = self.config.patience;
            if patience > 0 && epoch + 1 - self.best_epoch >= patience && epoch + 1 < epochs {
                eprintln!("early stop: no improvement for {patience} epochs (best epoch {})", self.best_epoch);
                stopped_early = true;
                break;
            }
        }
        if best_val.is_none() {
            best_val = checkpoint::load(&self.run.checkpoint(Which::Best))?.state.val_metrics;
        }
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
        let test = if self.dataset.test.is_empty() || interrupted {
            None
        } else {
            Some(evaluate_run(
                &self.run,
                Split::Test,
                &EvalOptions { device: Some(device_name(self.device)), ..Default::default() },
            )?)
        };
        Ok(TrainOutcome {
            run: self.run,
            device: device_name(self.device),
            epochs: epochs_done,
            best_epoch: self.best_epoch,
            stopped_early,
            interrupted,
            best_val,
            test,
            skipped,
        })
    }

    /// One pass over the training set; returns (mean loss, last lr, seconds, images per second).
    fn train_epoch(&mut self, epoch: usize) -> Result<(f64, f64, f64, f64)> {
        let started = Instant::now();
        let steps = self.train_loader.num_batches();
        let mut progress = EpochProgress::new(format!("epoch {}/{}", epoch + 1, self.config.epochs), steps);
        let (mut loss_sum, mut images, mut lr) = (0.0, 0usize, 0.0);
        for (i, batch) in self.train_loader.epoch(epoch, true).enumerate() {
            let batch = batch?;
            lr = self.schedule.lr(self.global_step);
            let images_on_device = batch.images.to_device(self.device);
            let labels = batch.labels.to_device(self.device);
            let loss_value = StepParts {
                model: &self.model,
                optimizer: &mut self.optimizer,
                scaler: &mut self.scaler,
                ema: self.ema.as_mut(),
                precision: &self.precision,
                label_smoothing: self.config.label_smoothing,
                grad_clip: self.config.grad_clip,
            }
            .step(&images_on_device, &labels, lr)?;
            if !loss_value.is_finite() {
                return Err(Error::Diverged { epoch: epoch + 1, step: self.global_step, loss: loss_value });
            }
            self.global_step += 1;
            let n = batch.paths.len();
            loss_sum += loss_value * n as f64;
            images += n;
            let images_per_second = images as f64 / started.elapsed().as_secs_f64().max(1e-9);
            progress.step(i + 1, &StepStats { loss: loss_sum / images as f64, lr, images_per_second });
        }
        if images == 0 {
            return Err(Error::NoReadableImages {
                root: self.config.data.clone(),
                split: "train".into(),
                skipped: self.skips.count(),
            });
        }
        progress.finish();
        let seconds = started.elapsed().as_secs_f64();
        Ok((loss_sum / images as f64, lr, seconds, images as f64 / seconds.max(1e-9)))
    }

    /// Validation of the weights that will be saved (the EMA weights when EMA is on).
    fn validate(&mut self) -> Result<Option<Evaluation>> {
        let Some(loader) = &self.val_loader else { return Ok(None) };
        if let Some(ema) = &mut self.ema {
            ema.swap();
        }
        let result = evaluate(&self.model, loader, &self.precision, self.dataset.num_classes());
        if let Some(ema) = &mut self.ema {
            ema.swap();
        }
        let eval = result?;
        if eval.images == 0 {
            return Err(Error::NoReadableImages {
                root: self.config.data.clone(),
                split: "val".into(),
                skipped: self.skips.count(),
            });
        }
        Ok(Some(eval))
    }

    fn record(
        &self,
        epoch: usize,
        train_loss: f64,
        lr: f64,
        seconds: f64,
        ips: f64,
        eval: Option<&Evaluation>,
    ) -> EpochRecord {
        EpochRecord {
            epoch: epoch + 1,
            train_loss,
            val_loss: eval.map(|e| e.loss),
            val_accuracy: eval.map(|e| e.metrics.accuracy),
            val_precision: eval.map(|e| e.metrics.precision_macro),
            val_recall: eval.map(|e| e.metrics.recall_macro),
            val_f1: eval.map(|e| e.metrics.f1_macro),
            lr,
            seconds,
            images_per_second: ips,
            skipped_images: self.skips.count(),
        }
    }

    fn save_checkpoints(&self, epoch: usize, eval: Option<&Evaluation>, improved: bool) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        let mut model_vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        model_vars.sort_by(|a, b| a.0.cmp(&b.0));
        match &self.ema {
            Some(ema) => {
                tensors.extend(ema.named());
                tensors.extend(model_vars.into_iter().map(|(n, t)| (format!("train.{n}"), t)));
            }
            None => tensors.extend(model_vars),
        }
        let (optimizer_state, optimizer_step) = self.optimizer.state();
        tensors.extend(optimizer_state);
        let state = CheckpointState {
            kiln_version: env!("CARGO_PKG_VERSION").into(),
            epoch,
            global_step: self.global_step,
            optimizer_step,
            ema_updates: self.ema.as_ref().map_or(0, |e| e.updates),
            loss_scale: self.scaler.scale,
            best_score: self.best_score,
            best_epoch: self.best_epoch,
            val_metrics: eval.map(|e| e.metrics.clone()),
            class_names: self.dataset.class_names.clone(),
            config: self.config.clone(),
        };
        let bytes = checkpoint::to_bytes(&tensors, &state)?;
        // `best` first: a kill between the two writes must not leave a `last` that names a best never written.
        if improved {
            write_atomic(&self.run.checkpoint(Which::Best), &bytes)?;
        }
        write_atomic(&self.run.checkpoint(Which::Last), &bytes)?;
        Ok(())
    }

    fn plot_curves(&self) -> Result<()> {
        let series = |name: &str, f: &dyn Fn(&EpochRecord) -> Option<f64>| Series {
            name: name.into(),
            points: self.records.iter().filter_map(|r| f(r).map(|v| (r.epoch as f64, v))).collect(),
        };
        let panel = |title: &str, y: &str, series: Vec<Series>, log_y: bool| Panel {
            title: title.into(),
            x_label: "epoch".into(),
            y_label: y.into(),
            series,
            log_y,
        };
        let panels = [
            panel(
                "loss",
                "cross-entropy",
                vec![series("train", &|r| Some(r.train_loss)), series("val", &|r| r.val_loss)],
                false,
            ),
            panel(
                "validation",
                "score",
                vec![series("accuracy", &|r| r.val_accuracy), series("macro F1", &|r| r.val_f1)],
                false,
            ),
            panel("learning rate", "lr", vec![series("lr", &|r| Some(r.lr))], false),
        ];
        plot_panels(&panels, &self.run.curves())
    }
}
