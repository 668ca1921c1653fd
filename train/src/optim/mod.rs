//! Optimisation: optimisers, the learning-rate schedule, weight EMA and loss scaling.

pub mod ema;
pub mod grad_scaler;
pub mod optimizer;
pub mod schedule;

pub use ema::Ema;
pub use grad_scaler::{GradScaler, ScalerCounters};
pub use optimizer::{Optimizer, OptimizerConfig, Param};
pub use schedule::{warmup_steps, CosineSchedule};
