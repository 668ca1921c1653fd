//! The training engine every task shares ([`train`], [`resume`], [`fast_dev_run`]) and the [`Task`] trait it drives. Tasks live in
//! their own folders (`classify/`, `detect/`); [`crate::tasks`] is the one place that names them all.

pub mod curves;
pub mod fast_dev_run;
pub mod freeze;
pub mod records;
pub mod task;
pub mod trainer;
pub mod update;

pub use fast_dev_run::{fast_dev_run, FastDevRunReport};
pub use records::{read_results, write_results, EpochRecord};
pub use task::{Batches, Built, Direction, Evaluation, Losses, Objective, Task};
pub use trainer::{prepare_runtime, resume, train, EpochCallback, Outcome, TrainOutcome};
pub use update::Update;
