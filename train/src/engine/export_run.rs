//! `kiln export onnx` for a run of any task, written once: the checkpoint checked and loaded strictly into the
//! task's model on the CPU, the task's graph built for the options, and the file (float, or int8 made from the
//! float graph with the task's own metric in the comparison) written atomically.

use tch::{nn, Device};

use kiln_models::weights::{load_into, HeadPolicy};

use super::task::Task;
use crate::checkpoint;
use crate::export::int8::RunData;
use crate::export::{finish, plan_export, ExportOptions, ExportReport};
use crate::run_dir::RunDir;
use crate::run_lock::RunLock;
use crate::{Error, Result};

/// Whether `out` lies inside the run's directory.
fn writes_into(run: &RunDir, out: &std::path::Path) -> bool {
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    match (dir.canonicalize(), run.path.canonicalize()) {
        (Ok(dir), Ok(run)) => dir.starts_with(run),
        _ => true,
    }
}

/// Exports the run's checkpoint `options.which`, a run of task `T`. Everything is checked before anything is
/// written; the file appears whole or not at all.
pub fn export_run<T: Task>(run: &RunDir, options: &ExportOptions) -> Result<ExportReport> {
    let (ckpt_path, out) = plan_export(run, options)?;
    // An export into the run, or one that fits and saves the run's calibration, writes into it: one writer.
    let _lock =
        if options.calibrated || writes_into(run, &out) { Some(RunLock::acquire(run, "kiln export")?) } else { None };
    let mut ckpt = checkpoint::load(&ckpt_path)?;
    ckpt.state.config.fill_added_later::<T::Settings>();
    let config = &ckpt.state.config;
    if config.task != T::KIND {
        return Err(Error::Checkpoint {
            path: ckpt_path,
            reason: format!("a {} run, not {}", config.task.name(), T::KIND.name()),
        });
    }
    let spec = T::graph_spec(run, &ckpt, options)?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = T::new_model(&vs, config, &ckpt.state.class_names)
        .map_err(|e| Error::Checkpoint { path: ckpt_path.clone(), reason: e.to_string() })?;
    load_into(&vs, ckpt.weights(), &ckpt.path, HeadPolicy::Strict, &[])?;
    let build = |o: &ExportOptions| tch::no_grad(|| T::onnx(&model, &spec, o));
    let data =
        RunData { config, split_images: T::split_images, metric_name: T::DEPLOYED_METRIC, metric: T::deployed_metric };
    finish(&data, options, &ckpt_path, &out, &build)
}
