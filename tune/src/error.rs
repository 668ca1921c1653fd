//! kiln-tune's errors: each names the storage, setting or file and the reason.

use std::path::PathBuf;

/// What can go wrong while tuning.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("study storage {url}: {reason}")]
    Storage { url: String, reason: String },

    #[error("invalid setting {key}: {reason}")]
    InvalidSetting { key: String, reason: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("training panicked: {0}")]
    TrialPanicked(String),

    /// The injected trainer failed outside a trial (before the study started).
    #[error("{0}")]
    Trainer(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
