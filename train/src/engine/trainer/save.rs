//! The epoch's checkpoints: `last`, `best` and the top-k copies, written by rank 0 alone (with every rank's generator
//! state gathered into them), atomically, `last` first.

use tch::{Device, Tensor};

use super::{DataParallel, Trainer};
use crate::checkpoint::{self, CheckpointState};
use crate::engine::task::Task;
use crate::fsutil::write_atomic;
use crate::native::rng_state;
use crate::run_dir::Which;
use crate::{Error, Result};

/// A generator's name in a checkpoint for `rank` (rank 0 keeps the single-process name).
pub(super) fn rank_rng_name(name: &str, rank: usize) -> String {
    if rank == 0 {
        name.to_string()
    } else {
        format!("{name}.rank{rank}")
    }
}

impl<T: Task> Trainer<T> {
    /// The generators whose state a checkpoint keeps, by tensor name: the CPU's, and the training GPU's.
    pub(super) fn rng_devices(&self) -> Vec<(String, Device)> {
        let mut devices = vec![("rng.cpu".to_string(), Device::Cpu)];
        if self.device.is_cuda() {
            devices.push(("rng.cuda".to_string(), self.device));
        }
        devices
    }

    pub(super) fn save_checkpoints(
        &mut self,
        epoch: usize,
        metrics: Option<serde_json::Value>,
        rank: Option<f64>,
        improved: bool,
    ) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        let mut model_vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        model_vars.sort_by(|a, b| a.0.cmp(&b.0));
        match &self.ema {
            Some(ema) => {
                tensors.extend(ema.named());
                tensors.extend(model_vars.into_iter().map(|(n, t)| (format!("train.{n}"), t)));
            }
            None => tensors.extend(model_vars),
        }
        let (optimizer_state, optimizer_step) = self.optimizer.state();
        tensors.extend(optimizer_state);
        for (name, device) in self.rng_devices() {
            let state = rng_state(device)?;
            match &self.data_parallel {
                // Every rank's generator, so that each resumes its own stream.
                Some(dp) => {
                    for (rank, state) in dp.gather_bytes(&state)?.into_iter().enumerate() {
                        tensors.push((rank_rng_name(&name, rank), state));
                    }
                }
                None => tensors.push((name, state)),
            }
        }
        // The top-k list this checkpoint belongs to: this epoch enters when it beats the worst kept one.
        let k = self.config.save_top_k;
        let mut top_k = self.top_k.clone();
        let enters =
            rank.is_some_and(|score| k > 0 && (top_k.len() < k || top_k.last().is_some_and(|(_, s)| score > *s)));
        if let (true, Some(score)) = (enters, rank) {
            top_k.push((epoch, score));
            top_k.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        let dropped: Vec<usize> = top_k.iter().skip(k).map(|(e, _)| *e).collect();
        top_k.truncate(k);
        let state = CheckpointState {
            kiln_version: env!("CARGO_PKG_VERSION").into(),
            epoch,
            global_step: self.global_step,
            optimizer_step,
            ema_updates: self.ema.as_ref().map_or(0, |e| e.updates),
            loss_scale: self.scaler.scale,
            scaler: self.scaler.counters(),
            best_score: self.best_score,
            best_epoch: self.best_epoch,
            val_metrics: metrics,
            class_names: self.task.class_names().to_vec(),
            top_k: top_k.clone(),
            config: self.config.clone(),
            world_size: self.data_parallel.as_ref().map_or(1, DataParallel::world_size),
        };
        if !self.is_main() {
            self.top_k = top_k;
            return Ok(());
        }
        let bytes = checkpoint::to_bytes(&tensors, &state)?;
        // `last` first, the record a resume continues from; a kill before `best` or the top-k copy is written is
        // repaired from it on resume (`reconcile_checkpoints`), as both are these very bytes.
        write_atomic(&self.run.checkpoint(Which::Last), &bytes)?;
        if improved {
            write_atomic(&self.run.checkpoint(Which::Best), &bytes)?;
        }
        if enters {
            write_atomic(&self.run.top_k_checkpoint(epoch), &bytes)?;
        }
        // Only once `last` records the new list are the checkpoints that left it removed.
        for old in dropped {
            let path = self.run.top_k_checkpoint(old);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(Error::Io { path, source: e });
                }
            }
        }
        self.top_k = top_k;
        Ok(())
    }
}
