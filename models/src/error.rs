//! The one error type of kiln-models.

use std::fmt;
use std::path::PathBuf;

/// How many mismatched keys an error message lists before it says "and N more".
const LISTED: usize = 8;

/// Everything that can go wrong while building a model or loading its weights.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown architecture '{name}' (known: {})", known.join(", "))]
    UnknownArchitecture { name: String, known: Vec<String> },

    #[error("invalid model setting {key}: {reason}")]
    InvalidSetting { key: String, reason: String },

    #[error("weights {path}: {reason}")]
    WeightsFile { path: PathBuf, reason: String },

    #[error("weights {path} do not match the model: {mismatch}")]
    WeightsMismatch { path: PathBuf, mismatch: Mismatch },

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),

    #[error(transparent)]
    Export(#[from] kiln_export::Error),
}

/// kiln-models' result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a weights file differs from the model it is loaded into.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Mismatch {
    /// Model parameters the file does not have.
    pub missing: Vec<String>,
    /// File tensors the model has no parameter for.
    pub unexpected: Vec<String>,
    /// (name, shape in the model, shape in the file).
    pub shapes: Vec<(String, Vec<i64>, Vec<i64>)>,
}

impl Mismatch {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shapes.is_empty()
    }
}

fn list(f: &mut fmt::Formatter<'_>, what: &str, items: &[String]) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = items.iter().take(LISTED).map(String::as_str).collect();
    write!(f, " {} {what}: {}", items.len(), shown.join(", "))?;
    if items.len() > LISTED {
        write!(f, " and {} more", items.len() - LISTED)?;
    }
    write!(f, ";")
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shapes: Vec<String> =
            self.shapes.iter().map(|(name, model, file)| format!("{name} (model {model:?}, file {file:?})")).collect();
        list(f, "with other shapes", &shapes)?;
        list(f, "missing from the file", &self.missing)?;
        list(f, "unexpected in the file", &self.unexpected)
    }
}
