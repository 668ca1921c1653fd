//! `kiln predict` for a run of any task, written once: the checkpoint loaded ([`super::load_run`]), the inputs
//! expanded into image files, the task's prediction on each ([`Task::predict`]) and the listing written as the
//! task lists it ([`PredictionListing`]).

use std::io::Write;
use std::path::PathBuf;

use kiln_infer::ListingFormat;

use super::run_model::load_run;
use super::task::Task;
use crate::data::expand_inputs;
use crate::run_dir::{RunDir, Which};
use crate::Result;

/// Which checkpoint predicts, on what device, in batches of what size.
#[derive(Clone, Debug, Default)]
pub struct PredictOptions {
    pub which: Which,
    pub device: Option<String>,
    /// Images per batch (default: the run's batch size).
    pub batch: Option<usize>,
}

/// A task's predictions as a listing.
pub trait PredictionListing: Sized {
    /// The input file.
    fn path(&self) -> &std::path::Path;
    /// Why this input was not read, if it was not.
    fn error(&self) -> Option<&str>;
    /// Writes the predictions; `names` are the run's class names.
    fn write_listing(
        predictions: &[Self],
        format: ListingFormat,
        names: &[String],
        out: &mut dyn Write,
    ) -> std::io::Result<()>;
}

/// The predictions of checkpoint `options.which` of `run`, a run of task `T`, on every image under `inputs`
/// (files and folders); inputs that cannot be read get an entry saying why. Returns the run's class names too.
pub fn predict_run<T: Task>(
    run: &RunDir,
    inputs: &[PathBuf],
    options: &PredictOptions,
    settings: &T::PredictSettings,
) -> Result<(Vec<String>, Vec<T::Prediction>)> {
    let loaded = load_run::<T>(run, options.which, options.device.as_deref(), "kiln predict", |config| {
        if let Some(batch) = options.batch {
            config.batch = batch.max(1);
        }
    })?;
    let files = expand_inputs(inputs)?;
    let predictions = T::predict(&loaded, &files, settings)?;
    Ok((loaded.ckpt.state.class_names.clone(), predictions))
}
