//! The config a run saved, read for a task: the run's task checked first, then the task's section as the run
//! trained with it.

use super::task::Task;
use crate::config::TrainConfig;
use crate::run_dir::RunDir;
use crate::{Error, Result};

/// The config `run` saved, refused unless it is a run of task `T` (`command` names what refuses it), with the
/// task's section as that run trained ([`TrainConfig::fill_added_later`]) and checked.
pub fn load_run_config<T: Task>(run: &RunDir, command: &str) -> Result<TrainConfig> {
    let mut config = TrainConfig::load(&run.config())?;
    if config.task != T::KIND {
        return Err(Error::InvalidSetting {
            key: "run".into(),
            reason: format!(
                "{} is a {} run; {command} works here on {} runs",
                run.path.display(),
                config.task.name(),
                T::KIND.name()
            ),
        });
    }
    config.fill_added_later::<T::Settings>();
    config.task_settings::<T::Settings>()?;
    Ok(config)
}
