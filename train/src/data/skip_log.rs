//! The files a pass could not read, each recorded once with its reason: every task's loader records into one,
//! and reports, runs and predictions list them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Files that could not be decoded, each recorded once with its reason.
#[derive(Debug, Default)]
pub struct SkipLog {
    entries: Mutex<BTreeMap<PathBuf, String>>,
}

impl SkipLog {
    /// Records an unreadable file; true the first time this path is seen.
    pub fn record(&self, path: &Path, reason: String) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.insert(path.to_path_buf(), reason).is_none()
    }

    pub fn count(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// (path, reason) of every skipped file, sorted by path.
    pub fn entries(&self) -> Vec<(PathBuf, String)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().map(|(p, r)| (p.clone(), r.clone())).collect()
    }
}
