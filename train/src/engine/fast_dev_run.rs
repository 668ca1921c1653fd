//! Lightning's `fast_dev_run` for every task: N training steps and N batches of val and of test through the same
//! code as a real run (data, augmentation, loss, backward, optimiser, EMA, evaluation), to find a broken config,
//! dataset or model in seconds. It writes nothing but its report, `fast_dev_run.json` in a new run directory: no
//! config, no checkpoint, no `results.csv`, no plot.

use super::task::Task;
use super::trainer::{prepare_runtime, Trainer};
use crate::config::CacheMode;
use crate::config::TrainConfig;
use crate::fsutil::write_atomic;
use crate::run_dir::RunDir;
use crate::Result;

pub use super::fast_dev_run_report::{EvalPass, FastDevRunReport, TrainPass, REPORT_FILE};

/// Runs `config.fast_dev_run` batches (at least one) of train, val and test of task `T` and writes the report
/// into a new run directory (`PROJECT/<task>/<name>`). The cache is off: only the images used are read.
pub fn fast_dev_run<T: Task>(config: &TrainConfig) -> Result<FastDevRunReport> {
    let config = TrainConfig { cache: CacheMode::None, ..config.clone().with_img_size_rounded() };
    config.validate()?;
    let batches = config.fast_dev_run.max(1);
    let device = prepare_runtime(&config, None)?;
    let task = T::open(&config)?;
    let run = RunDir::create_bare(&config.project, config.task, config.name.as_deref())?;
    let report = Trainer::new(task, run, config, device, None, None)?.fast_dev_run(batches)?;
    write_atomic(&report.report, &serde_json::to_vec_pretty(&report).expect("the report serialises"))?;
    Ok(report)
}
