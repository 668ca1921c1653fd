//! The training loop under data-parallel training ([`crate::distributed`]): what every rank of a job agrees on and
//! how. One process per rank, launched by torchrun, Slurm, or `kiln train --nproc N` (the same variables).
//!
//! - **Weights.** Every rank builds the model from the run's seed; rank 0's values are then broadcast (after a check
//!   that every rank has the same parameters, as DDP does), and c10d's `Reducer` averages the gradients in backward.
//! - **Data.** The training loader deals each rank its share of the order all ranks compute alike
//!   ([`Batches::shard`](super::Batches::shard)); an item's augmentation draws from `(seed, epoch, item)`, so ranks
//!   never repeat each other's randomness. libtorch's own generator (drop-path, MixUp) is seeded per rank.
//! - **Loss.** A loss divided by a count that depends on the batch (the detector's positive locations) is rescaled
//!   to divide by the count over all ranks' batches ([`Normaliser`](super::task::Normaliser)); with the averaged
//!   gradients, `W` ranks with batch `B` then train as one process with batch `W·B`. The learning rate is the
//!   config's, for that global batch: scale it yourself when you scale the world (linearly, as Goyal et al., for
//!   SGD; AdamW usually needs less).
//! - **A step is skipped everywhere or nowhere**: the step's loss is summed over the ranks before backward, and a
//!   non-finite sum skips the step on every rank (a rank that skipped alone would leave the others waiting in the
//!   gradient all-reduce).
//! - **Validation.** Each rank evaluates its share of the split (disjoint, no padding), the shares' predictions
//!   and sums are gathered, and every rank merges them into the split's metrics as one process computes them
//!   ([`Task::merge_evaluation_shares`](super::Task::merge_evaluation_shares); a task that does not merge has every
//!   rank evaluate the whole split). Rank 0's values are broadcast so that the best checkpoint, top-k and early
//!   stopping are decided alike.
//! - **Writes.** Rank 0 alone creates the run directory, holds its lock, and writes `results.csv`, checkpoints and
//!   plots; the directory's name reaches the others through the job's store (the same key across torchrun restarts,
//!   which resume it). Each rank's generator state goes into the checkpoint, so a resume stays exact.

use std::time::Duration;

use tch::{nn, Kind, Tensor};

use super::task::Losses;
use crate::distributed::reducer::DEFAULT_BUCKET_CAP_MB;
use crate::distributed::{DistEnv, GradientReducer, ProcessGroup, ReduceOp, DEFAULT_TIMEOUT};
use crate::{Error, Result};

/// The job store's key for the run directory (outside the restart prefix: a torchrun restart resumes that run).
const RUN_DIR_KEY: &str = "kiln/run_dir";
/// Seconds a rank waits for another (store, collectives) before it fails: `KILN_DIST_TIMEOUT`, default 300.
pub const TIMEOUT_VAR: &str = "KILN_DIST_TIMEOUT";

/// This process's place in a data-parallel job, and what it shares with the other ranks.
pub struct DataParallel {
    pub env: DistEnv,
    group: ProcessGroup,
    reducer: Option<GradientReducer>,
    /// The model's buffers (BatchNorm's running statistics), given rank 0's values before every step, as DDP does.
    buffers: Vec<Tensor>,
}

/// How long a rank waits for the others: [`TIMEOUT_VAR`] seconds, or [`DEFAULT_TIMEOUT`].
pub fn timeout_from_env() -> Result<Duration> {
    match std::env::var(TIMEOUT_VAR) {
        Ok(text) if !text.trim().is_empty() => match text.trim().parse::<f64>() {
            Ok(seconds) if seconds > 0.0 && seconds.is_finite() => Ok(Duration::from_secs_f64(seconds)),
            _ => Err(Error::InvalidSetting {
                key: TIMEOUT_VAR.into(),
                reason: format!("'{text}' is not a positive number of seconds"),
            }),
        },
        _ => Ok(DEFAULT_TIMEOUT),
    }
}

impl DataParallel {
    /// Joins the job the launch variables describe; `None` in a single process (no `WORLD_SIZE`, or a world of
    /// one, which trains exactly as a single process).
    pub fn from_env() -> Result<Option<Self>> {
        let Some(env) = DistEnv::from_env()? else { return Ok(None) };
        if env.world_size == 1 {
            return Ok(None);
        }
        let group = ProcessGroup::join(&env, timeout_from_env()?)?;
        Ok(Some(Self { env, group, reducer: None, buffers: Vec::new() }))
    }

    pub fn rank(&self) -> usize {
        self.env.rank
    }

    pub fn world_size(&self) -> usize {
        self.env.world_size
    }

    pub fn is_main(&self) -> bool {
        self.env.is_main()
    }

    /// Checks that every rank built the same variables, gives all of them rank 0's values, and arms the gradient
    /// reducer over `trainable` (the optimiser's parameters, in its order). `buffers` are the variables that are
    /// not parameters (named before any freezing), which [`sync_buffers`](Self::sync_buffers) keeps equal.
    pub fn wrap(&mut self, vs: &nn::VarStore, trainable: &[&Tensor], buffers: &[String]) -> Result<()> {
        if vs.device() != tch::Device::Cpu {
            return Err(Error::InvalidSetting {
                key: "device".into(),
                reason: format!(
                    "data-parallel training runs on the CPU (Gloo) in this build; {:?} needs the NCCL build",
                    vs.device()
                ),
            });
        }
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let tensors: Vec<&Tensor> = vars.iter().map(|(_, t)| t).collect();
        self.group.sync_params(&tensors).map_err(|e| self.named(e))?;
        let reducer =
            GradientReducer::new(&self.group, trainable, DEFAULT_BUCKET_CAP_MB, false).map_err(|e| self.named(e))?;
        self.reducer = Some(reducer);
        self.buffers = vars.into_iter().filter(|(name, _)| buffers.contains(name)).map(|(_, t)| t).collect();
        Ok(())
    }

    /// Gives every rank rank 0's buffers (one broadcast of all of them; nothing when the model has none).
    pub fn sync_buffers(&self) -> Result<()> {
        if self.buffers.is_empty() {
            return Ok(());
        }
        let flat: Vec<Tensor> = self.buffers.iter().map(|b| b.flatten(0, -1).to_kind(Kind::Double)).collect();
        let flat = Tensor::cat(&flat, 0).to_device(tch::Device::Cpu);
        self.group.broadcast(&flat, 0).map_err(|e| self.named(e))?;
        let mut offset = 0;
        tch::no_grad(|| {
            for buffer in &self.buffers {
                let len = buffer.numel() as i64;
                let values = flat.narrow(0, offset, len).view_as(buffer).to_kind(buffer.kind());
                buffer.shallow_clone().copy_(&values);
                offset += len;
            }
        });
        Ok(())
    }

    /// Arms the gradient all-reduce for the backward of `loss` (call right before it).
    pub fn prepare_backward(&self, loss: &Tensor) -> Result<()> {
        match &self.reducer {
            Some(reducer) => reducer.prepare_for_backward(&[loss]).map_err(|e| self.named(e)),
            None => Ok(()),
        }
    }

    /// The step's losses as every rank will use them: a count-normalised loss rescaled to the count over all
    /// ranks, and whether the loss is finite on every rank (when it is not, every rank skips the step).
    pub fn share_step(&self, mut losses: Losses) -> Result<(Losses, bool)> {
        let local = losses.total.double_value(&[]);
        let count = losses.normaliser.map_or(0.0, |n| n.count);
        let shared = self.sum(&[local, count])?;
        if let Some(normaliser) = losses.normaliser {
            let global_divisor = shared[1].max(normaliser.floor);
            let scale = normaliser.divisor * self.world_size() as f64 / global_divisor;
            losses.total = &losses.total * scale;
            losses.parts = losses.parts.iter().map(|p| p * scale).collect();
        }
        Ok((losses, shared[0].is_finite()))
    }

    /// Every rank's `values`, summed.
    pub fn sum(&self, values: &[f64]) -> Result<Vec<f64>> {
        let t = Tensor::from_slice(values).to_kind(Kind::Double);
        self.group.all_reduce(&t, ReduceOp::Sum).map_err(|e| self.named(e))?;
        Ok(Vec::<f64>::try_from(&t)?)
    }

    /// Rank 0's `values` (of the same length on every rank).
    pub fn from_main(&self, values: &[f64]) -> Result<Vec<f64>> {
        let t = Tensor::from_slice(values).to_kind(Kind::Double);
        self.group.broadcast(&t, 0).map_err(|e| self.named(e))?;
        Ok(Vec::<f64>::try_from(&t)?)
    }

    /// Every rank's `bytes` (the same length on every rank), by rank.
    pub fn gather_bytes(&self, bytes: &Tensor) -> Result<Vec<Tensor>> {
        self.group.all_gather(&bytes.contiguous()).map_err(|e| self.named(e))
    }

    /// Every rank's `bytes` (any length), by rank.
    pub fn gather_variable(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let lengths = self.gather_bytes(&Tensor::from_slice(&[bytes.len() as i64]))?;
        let lengths: Vec<usize> = lengths.iter().map(|t| t.int64_value(&[0]) as usize).collect();
        let longest = lengths.iter().copied().max().unwrap_or(0);
        let mut padded = bytes.to_vec();
        padded.resize(longest, 0);
        let gathered = self.gather_bytes(&Tensor::from_slice(&padded))?;
        gathered.iter().zip(&lengths).map(|(t, &len)| Ok(Vec::<u8>::try_from(t)?[..len].to_vec())).collect()
    }

    pub fn barrier(&self) -> Result<()> {
        self.group.barrier().map_err(|e| self.named(e))
    }

    /// The run directory of this job as rank 0 recorded it, if it has (a torchrun restart), else `None`.
    pub fn recorded_run_dir(&self) -> Result<Option<std::path::PathBuf>> {
        if !self.group.store_has(RUN_DIR_KEY).map_err(|e| self.named(e))? {
            return Ok(None);
        }
        self.run_dir_from_store().map(Some)
    }

    /// Rank 0 records the run directory it made; every other rank waits for it.
    pub fn share_run_dir(&self, made: Option<&std::path::Path>) -> Result<std::path::PathBuf> {
        match made {
            Some(path) => {
                let text = path.to_str().ok_or_else(|| Error::InvalidSetting {
                    key: "project".into(),
                    reason: format!("{} is not UTF-8, which the job's store needs", path.display()),
                })?;
                self.group.store_set(RUN_DIR_KEY, text.as_bytes()).map_err(|e| self.named(e))?;
                Ok(path.to_path_buf())
            }
            None => self.run_dir_from_store(),
        }
    }

    fn run_dir_from_store(&self) -> Result<std::path::PathBuf> {
        let bytes = self.group.store_get(RUN_DIR_KEY).map_err(|e| self.named(e))?;
        let text = String::from_utf8(bytes).map_err(|_| Error::Distributed {
            call: format!("rank {}: reading the run directory from the store", self.rank()),
            reason: "not UTF-8".into(),
        })?;
        Ok(text.into())
    }

    /// `error` with this rank in its call, so that a job's log says which rank failed.
    fn named(&self, error: Error) -> Error {
        match error {
            Error::Distributed { call, reason } => {
                let lost = ["closed by peer", "Connection reset", "Timed out", "timed out", "Broken pipe"];
                let hint = if lost.iter().any(|l| reason.contains(l)) {
                    " (another rank of the job died or stopped answering: its own log says why)"
                } else {
                    ""
                };
                Error::Distributed {
                    call: format!("rank {} of {}: {call}", self.rank(), self.world_size()),
                    reason: format!("{reason}{hint}"),
                }
            }
            other => other,
        }
    }
}
