//! Atomic file writes (temp file beside the target, fsynced, renamed over it), with kiln-train's error type.

use std::path::Path;

use crate::{Error, Result};

/// Writes `bytes` to `path` atomically: readers see the old file or the whole new one, never a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    kiln_export::write_atomic(path, bytes).map_err(|e| match e {
        kiln_export::Error::Io { path, source } => Error::Io { path, source },
        other => Error::Export(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temp_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join("a.json");
        let err = write_atomic(&path, b"x").unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
