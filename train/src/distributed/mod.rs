//! Data-parallel training on libtorch's own c10d (`native/c10d_shim.cpp`): the launch contract torchrun defines
//! ([`launch`]), a process group on Gloo with its collectives ([`group`]), the bucketed gradient all-reduce that
//! torch's DistributedDataParallel runs on ([`reducer`]), and each rank's shard of a split ([`shard`]).

pub mod group;
pub mod launch;
pub mod reducer;
pub mod shard;

#[cfg(test)]
mod tests;

pub use group::{ProcessGroup, ReduceOp};
pub use launch::{DistEnv, DEFAULT_TIMEOUT};
pub use reducer::GradientReducer;
pub use shard::deal;
