//! Checkpoints: one safetensors file holding the weights, the optimiser state and a JSON record of the run's
//! progress (in the file's metadata under `kiln`), written atomically.
//!
//! Tensor names: the weights to evaluate and deploy under timm's plain names (the EMA weights when EMA is on),
//! the raw training weights under `train.` when they differ, and the optimiser buffers under `optimizer.`.
//! So `--weights best.safetensors` and timm both read a kiln checkpoint directly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::config::TrainConfig;
use crate::fsutil::write_atomic;
use crate::optim::ScalerCounters;
use crate::{Error, Result};

/// Metadata key under which the progress record is stored.
pub const METADATA_KEY: &str = "kiln";
/// Prefixes of the tensors that are not deployable weights.
pub const TRAINING_PREFIXES: [&str; 3] = ["train.", "optimizer.", "rng."];

/// Where a run stood when the checkpoint was written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    pub kiln_version: String,
    /// Epochs finished (1-based count).
    pub epoch: usize,
    pub global_step: usize,
    pub optimizer_step: i64,
    pub ema_updates: i64,
    pub loss_scale: f64,
    /// The loss scaler's counters (absent in checkpoints written before kiln saved them: they restart at zero).
    #[serde(default)]
    pub scaler: ScalerCounters,
    /// The best validation score so far and its epoch.
    pub best_score: f64,
    pub best_epoch: usize,
    /// Validation metrics of these weights (the task's metrics type, as JSON).
    pub val_metrics: Option<serde_json::Value>,
    pub class_names: Vec<String>,
    /// The epochs kept as `weights/epoch_<N>.safetensors` (`save_top_k`), best first, with their scores.
    #[serde(default)]
    pub top_k: Vec<(usize, f64)>,
    pub config: TrainConfig,
    /// The data-parallel ranks that trained it (1 in a single process, and in checkpoints from before kiln said).
    #[serde(default = "one_rank")]
    pub world_size: usize,
}

fn one_rank() -> usize {
    1
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub path: PathBuf,
    pub state: CheckpointState,
    pub tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// The deployable weights (timm names), without training-only tensors.
    pub fn weights(&self) -> Vec<(String, Tensor)> {
        let mut named: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .filter(|(n, _)| !TRAINING_PREFIXES.iter().any(|p| n.starts_with(p)))
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    }

    /// The tensors under `prefix`, with the prefix removed.
    pub fn group(&self, prefix: &str) -> HashMap<String, Tensor> {
        self.tensors
            .iter()
            .filter_map(|(n, t)| n.strip_prefix(prefix).map(|rest| (rest.to_string(), t.shallow_clone())))
            .collect()
    }
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Uint8 => Dtype::U8,
        _ => return None,
    })
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::U8 => Kind::Uint8,
        _ => return None,
    })
}

/// Serialises named tensors and the state into safetensors bytes.
pub fn to_bytes(tensors: &[(String, Tensor)], state: &CheckpointState) -> Result<Vec<u8>> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let tensor = tensor.detach().to_device(Device::Cpu).contiguous();
        let dtype = dtype_of(tensor.kind()).ok_or_else(|| Error::Checkpoint {
            path: PathBuf::from(name),
            reason: format!("cannot store a tensor of kind {:?}", tensor.kind()),
        })?;
        let numel = tensor.numel();
        let mut bytes = vec![0u8; numel * tensor.kind().elt_size_in_bytes()];
        tensor.f_copy_data_u8(&mut bytes, numel)?;
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        buffers.push((name.clone(), dtype, shape, bytes));
    }
    let views = buffers
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Checkpoint { path: PathBuf::new(), reason: e.to_string() })?;
    let json = serde_json::to_string(state).expect("the checkpoint state serialises");
    let metadata = HashMap::from([(METADATA_KEY.to_string(), json), ("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| Error::Checkpoint { path: PathBuf::new(), reason: e.to_string() })
}

/// Writes a checkpoint atomically (temp file + rename).
pub fn save(path: &Path, tensors: &[(String, Tensor)], state: &CheckpointState) -> Result<()> {
    let bytes = to_bytes(tensors, state).map_err(|e| match e {
        Error::Checkpoint { reason, .. } => Error::Checkpoint { path: path.to_path_buf(), reason },
        other => other,
    })?;
    write_atomic(path, &bytes)
}

/// The record of a checkpoint written by [`save`], without making its tensors.
pub fn read_state(path: &Path) -> Result<CheckpointState> {
    let err = |reason: String| Error::Checkpoint { path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    state_of(&bytes, &err)
}

fn state_of(bytes: &[u8], err: &dyn Fn(String) -> Error) -> Result<CheckpointState> {
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let json = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY))
        .ok_or_else(|| err("a safetensors file without kiln's checkpoint record".into()))?;
    serde_json::from_str(json).map_err(|e| err(format!("bad checkpoint record: {e}")))
}

/// Reads a checkpoint written by [`save`].
pub fn load(path: &Path) -> Result<Checkpoint> {
    let err = |reason: String| Error::Checkpoint { path: path.to_path_buf(), reason };
    if !path.is_file() {
        return Err(err("no such checkpoint (has the run finished an epoch?)".into()));
    }
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let state = state_of(&bytes, &err)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| err(format!("{name}: unsupported dtype {:?}", view.dtype())))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        tensors.insert(name, Tensor::f_from_data_size(view.data(), &shape, kind)?);
    }
    Ok(Checkpoint { path: path.to_path_buf(), state, tensors })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> CheckpointState {
        CheckpointState {
            kiln_version: "test".into(),
            epoch: 3,
            global_step: 30,
            optimizer_step: 30,
            ema_updates: 0,
            loss_scale: 1.0,
            scaler: Default::default(),
            best_score: 0.5,
            best_epoch: 2,
            val_metrics: None,
            class_names: vec!["a".into(), "b".into()],
            top_k: vec![(2, 0.5)],
            config: TrainConfig { data: "/d".into(), ..Default::default() },
            world_size: 1,
        }
    }

    #[test]
    fn round_trip_keeps_tensors_and_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.safetensors");
        let w = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
        let m = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
        save(
            &path,
            &[("stem.0.weight".into(), w.shallow_clone()), ("optimizer.m.stem.0.weight".into(), m.shallow_clone())],
            &state(),
        )
        .unwrap();
        let ckpt = load(&path).unwrap();
        assert_eq!(ckpt.state, state());
        assert!(ckpt.tensors["stem.0.weight"].equal(&w));
        assert_eq!(ckpt.weights().len(), 1, "optimizer state is not a weight");
        assert!(ckpt.group("optimizer.m.")["stem.0.weight"].equal(&m));
        // timm/tch can read the file as plain safetensors.
        let plain = Tensor::read_safetensors(&path).unwrap();
        assert_eq!(plain.len(), 2);
    }

    #[test]
    fn missing_and_foreign_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = load(&dir.path().join("best.safetensors")).err().unwrap().to_string();
        assert!(missing.contains("best.safetensors") && missing.contains("no such checkpoint"), "{missing}");
        let foreign = dir.path().join("timm.safetensors");
        Tensor::write_safetensors(&[("a", Tensor::zeros([1], (Kind::Float, Device::Cpu)))], &foreign).unwrap();
        let err = load(&foreign).err().unwrap().to_string();
        assert!(err.contains("without kiln's checkpoint record"), "{err}");
    }
}
