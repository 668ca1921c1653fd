//! The one error type of kiln-train.

use std::path::PathBuf;

/// Everything that can go wrong while preparing data, training, evaluating or writing a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("dataset {root}: {reason}")]
    Dataset { root: PathBuf, reason: String },

    #[error("dataset {root}: split '{split}' has class folders {found:?}, but 'train' has {expected:?}")]
    ClassMismatch { root: PathBuf, split: String, expected: Vec<String>, found: Vec<String> },

    #[error("dataset {root}: no readable image in split '{split}' ({skipped} skipped as unreadable)")]
    NoReadableImages { root: PathBuf, split: String, skipped: usize },

    #[error("config {path}: {reason}")]
    Config { path: PathBuf, reason: String },

    #[error("invalid setting {key}: {reason}")]
    InvalidSetting { key: String, reason: String },

    #[error("device '{requested}': {reason}")]
    Device { requested: String, reason: String },

    #[error("run {path} is being written by {holder}; wait for it to finish or stop it (one writer per run)")]
    RunLocked { path: PathBuf, holder: String },

    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },

    #[error("study storage {url}: {reason}")]
    Storage { url: String, reason: String },

    #[error("plot {path}: {reason}")]
    Plot { path: PathBuf, reason: String },

    #[error("image {path}: {reason}")]
    Image { path: PathBuf, reason: String },

    #[error("int8 export {path}: {reason}")]
    Int8 { path: PathBuf, reason: String },

    #[error("data loader: {0}")]
    DataLoader(String),

    #[error("training panicked: {0}")]
    TrialPanicked(String),

    #[error("training diverged at epoch {epoch}, step {step}: the loss is {loss}")]
    Diverged { epoch: usize, step: usize, loss: f64 },

    /// A task's own error (detection's annotation errors), which names its file and reason itself.
    #[error(transparent)]
    Task(Box<dyn std::error::Error + Send + Sync>),

    #[error(transparent)]
    Model(#[from] kiln_models::Error),

    #[error(transparent)]
    Export(#[from] kiln_export::Error),

    #[error(transparent)]
    Tune(#[from] kiln_tune::Error),

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),

    /// A c10d call of data-parallel training failed (a peer gone, a timeout, a store that cannot be reached).
    #[error("distributed {call}: {reason}")]
    Distributed { call: String, reason: String },
}

/// kiln-train's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
