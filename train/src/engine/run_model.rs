//! A finished run's checkpoint in its task's model, and the evaluation of a split, each written once for every
//! task: `kiln val`, `kiln test`, `kiln predict`, Grad-CAM and the test pass after training all start here.

use std::path::PathBuf;

use tch::{nn, Device};

use kiln_models::weights::{load_into, HeadPolicy};

use super::task::Task;
use super::trainer::prepare_runtime;
use crate::checkpoint::{self, Checkpoint};
use crate::config::TrainConfig;
use crate::data::Split;
use crate::precision::Precision;
use crate::run_dir::{RunDir, Which};
use crate::{Error, Result};

/// A run's checkpoint loaded (strictly: every tensor, the right shapes) into its task's model.
pub struct LoadedRun<M> {
    /// The run's config, after the caller's edits, without `weights` (the checkpoint is what is loaded).
    pub config: TrainConfig,
    pub ckpt: Checkpoint,
    pub model: M,
    pub device: Device,
    /// The config's precision on `device`, with the model's parameters already laid out for it.
    pub precision: Precision,
    /// Keeps the model's variables alive.
    pub vs: nn::VarStore,
}

/// Loads checkpoint `which` of `run`, a run of task `T`, on `device` (default: the run's), after `edit` has
/// changed the run's config (another data root, batch size); `command` names what refuses other tasks' runs.
pub fn load_run<T: Task>(
    run: &RunDir,
    which: Which,
    device: Option<&str>,
    command: &str,
    edit: impl FnOnce(&mut TrainConfig),
) -> Result<LoadedRun<T::Model>> {
    let mut config = super::run_config::load_run_config::<T>(run, command)?;
    edit(&mut config);
    config.weights = None;
    let device = prepare_runtime(&config, device)?;
    let ckpt = checkpoint::load(&run.checkpoint(which))?;
    let vs = nn::VarStore::new(device);
    let model = T::new_model(&vs, &config, &ckpt.state.class_names)?;
    load_into(&vs, ckpt.weights(), &ckpt.path, HeadPolicy::Strict, &[])?;
    let precision = Precision::resolve(config.amp, config.channels_last, device)?;
    precision.prepare_params(&vs)?;
    Ok(LoadedRun { config, ckpt, model, device, precision, vs })
}

/// Refuses a dataset whose class names are not the checkpoint's: an error naming the data root and the split.
pub fn check_classes(root: &std::path::Path, split: &str, checkpoint: &[String], dataset: &[String]) -> Result<()> {
    if dataset != checkpoint {
        return Err(Error::ClassMismatch {
            root: root.to_path_buf(),
            split: split.into(),
            expected: checkpoint.to_vec(),
            found: dataset.to_vec(),
        });
    }
    Ok(())
}

/// Which checkpoint to evaluate, on what data and device.
#[derive(Clone, Debug, Default)]
pub struct EvalOptions {
    pub which: Which,
    /// Another dataset root with the same classes (or, for text, labels within the run's charset).
    pub data: Option<PathBuf>,
    pub device: Option<String>,
}

/// Loads the run's checkpoint and evaluates it on `split` with the task's `settings`, writing the report files
/// into the run.
pub fn evaluate_run<T: Task>(
    run: &RunDir,
    split: Split,
    options: &EvalOptions,
    settings: &T::EvalSettings,
) -> Result<T::Report> {
    let loaded = load_run::<T>(run, options.which, options.device.as_deref(), "kiln val and kiln test", |c| {
        if let Some(data) = &options.data {
            c.data = data.clone();
        }
    })?;
    let task = T::open_eval(&loaded.config, &loaded.ckpt.state.class_names)?;
    task.evaluate_split(&loaded, run, split, settings)
}
