//! `results.csv`: one row per epoch, rewritten atomically after each epoch.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;
use crate::{Error, Result};

/// One epoch of a classification run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub val_precision: Option<f64>,
    pub val_recall: Option<f64>,
    pub val_f1: Option<f64>,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    pub seconds: f64,
    pub images_per_second: f64,
    /// Unreadable images skipped so far.
    pub skipped_images: usize,
}

pub fn write_results(path: &Path, records: &[EpochRecord]) -> Result<()> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for record in records {
        writer.serialize(record).map_err(|e| Error::Io { path: path.to_path_buf(), source: e.into() })?;
    }
    let bytes = writer.into_inner().map_err(|e| Error::Io { path: path.to_path_buf(), source: e.into_error() })?;
    write_atomic(path, &bytes)
}

pub fn read_results(path: &Path) -> Result<Vec<EpochRecord>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut reader =
        csv::Reader::from_path(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e.into() })?;
    reader
        .deserialize()
        .collect::<std::result::Result<Vec<EpochRecord>, _>>()
        .map_err(|e| Error::Io { path: path.to_path_buf(), source: e.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_missing_validation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.csv");
        let rows = vec![
            EpochRecord {
                epoch: 1,
                train_loss: 1.5,
                val_loss: Some(1.2),
                val_accuracy: Some(0.5),
                val_precision: Some(0.4),
                val_recall: Some(0.5),
                val_f1: Some(0.44),
                lr: 1e-3,
                seconds: 2.0,
                images_per_second: 30.0,
                skipped_images: 0,
            },
            EpochRecord {
                epoch: 2,
                train_loss: 1.0,
                val_loss: None,
                val_accuracy: None,
                val_precision: None,
                val_recall: None,
                val_f1: None,
                lr: 5e-4,
                seconds: 2.0,
                images_per_second: 31.0,
                skipped_images: 2,
            },
        ];
        write_results(&path, &rows).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("epoch,train_loss,val_loss,val_accuracy"), "{text}");
        assert_eq!(read_results(&path).unwrap(), rows);
    }
}
