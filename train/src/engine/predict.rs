//! `kiln predict` for a run of any task, written once: the checkpoint loaded ([`super::load_run`]), the inputs
//! expanded into image files, the task's prediction on each ([`Task::predict`]) and the listing written as the
//! task lists it ([`PredictionListing`]).

use std::io::Write;
use std::path::PathBuf;

use kiln_infer::{Listed, ListingFormat};

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

/// One input's result as kiln-infer would give it for the exported model (detections, a reading), or why the
/// input was not read; listed as `kiln infer` lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct Predicted<T> {
    pub path: PathBuf,
    /// `None` when the input could not be read (`error` says why).
    pub value: Option<T>,
    pub error: Option<String>,
}

impl<T> Predicted<T> {
    /// An entry for each of `files`, none read yet.
    pub fn unread(files: &[PathBuf]) -> Vec<Self> {
        files.iter().map(|path| Self { path: path.clone(), value: None, error: None }).collect()
    }

    /// Gives every entry still without a value or a reason its reason: the skip log's for its file, else
    /// `not read`.
    pub fn fill_errors(results: &mut [Self], skipped: &[(PathBuf, String)]) {
        for r in results.iter_mut().filter(|r| r.value.is_none() && r.error.is_none()) {
            let reason = skipped.iter().find(|(p, _)| *p == r.path).map(|(_, why)| why.clone());
            r.error = Some(reason.unwrap_or_else(|| "not read".into()));
        }
    }
}

impl<T: Listed> PredictionListing for Predicted<T> {
    fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    fn write_listing(
        predictions: &[Self],
        format: ListingFormat,
        names: &[String],
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        let rows = predictions.iter().map(|p| {
            let result = p.value.as_ref().ok_or_else(|| p.error.as_deref().unwrap_or("not read"));
            (p.path.as_path(), result)
        });
        kiln_infer::write_listing(out, format, rows, names).map(|_| ())
    }
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
