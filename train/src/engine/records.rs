//! `results.csv`: one row per epoch, rewritten atomically after each epoch. Its columns come from the task:
//! `epoch`, `train_<loss part>`…, `val_<metric>`…, then `lr`, `seconds`, `images_per_second`, `skipped_images`.

use std::path::Path;

use crate::fsutil::write_atomic;
use crate::{Error, Result};

const TAIL: [&str; 4] = ["lr", "seconds", "images_per_second", "skipped_images"];

/// One epoch of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    /// Each loss part's mean over the epoch's images, by name (the total first).
    pub train: Vec<(String, f64)>,
    /// Each validation metric by name; `None` without validation data or where the metric is undefined.
    pub val: Vec<(String, Option<f64>)>,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    pub seconds: f64,
    pub images_per_second: f64,
    /// Unreadable images skipped so far.
    pub skipped_images: usize,
}

impl EpochRecord {
    /// The mean total training loss.
    pub fn train_loss(&self) -> f64 {
        self.train.first().map_or(f64::NAN, |(_, v)| *v)
    }

    /// A loss part by name.
    pub fn train_part(&self, name: &str) -> Option<f64> {
        self.train.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// A validation metric by name.
    pub fn val(&self, name: &str) -> Option<f64> {
        self.val.iter().find(|(n, _)| n == name).and_then(|(_, v)| *v)
    }
}

fn io_error(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Io { path: path.to_path_buf(), source: std::io::Error::other(reason.to_string()) }
}

fn number(value: f64) -> String {
    // Shortest text that reads back to the same f64.
    format!("{value:?}").trim_end_matches(".0").to_string()
}

impl EpochRecord {
    /// This record with its validation values in `metrics`' order: a metric added since it was written (a resumed
    /// older run) is empty, one no longer computed is dropped; so every row of `results.csv` has the same columns.
    pub fn with_metrics(mut self, metrics: &[&str]) -> Self {
        if !self.val.is_empty() {
            self.val = metrics.iter().map(|m| (m.to_string(), self.val(m))).collect();
        }
        self
    }
}

pub fn write_results(path: &Path, records: &[EpochRecord]) -> Result<()> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let write_err = |e: csv::Error| io_error(path, e);
    if let Some(first) = records.first() {
        let mut header = vec!["epoch".to_string()];
        header.extend(first.train.iter().map(|(n, _)| format!("train_{n}")));
        header.extend(first.val.iter().map(|(n, _)| format!("val_{n}")));
        header.extend(TAIL.iter().map(|s| s.to_string()));
        writer.write_record(&header).map_err(write_err)?;
    }
    for r in records {
        let mut row = vec![r.epoch.to_string()];
        row.extend(r.train.iter().map(|(_, v)| number(*v)));
        row.extend(r.val.iter().map(|(_, v)| v.map(number).unwrap_or_default()));
        row.extend([number(r.lr), number(r.seconds), number(r.images_per_second), r.skipped_images.to_string()]);
        writer.write_record(&row).map_err(write_err)?;
    }
    let bytes = writer.into_inner().map_err(|e| Error::Io { path: path.to_path_buf(), source: e.into_error() })?;
    write_atomic(path, &bytes)
}

pub fn read_results(path: &Path) -> Result<Vec<EpochRecord>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut reader = csv::Reader::from_path(path).map_err(|e| io_error(path, e))?;
    let header: Vec<String> = reader.headers().map_err(|e| io_error(path, e))?.iter().map(String::from).collect();
    let mut records = Vec::new();
    for (line, row) in reader.records().enumerate() {
        let row = row.map_err(|e| io_error(path, e))?;
        let bad =
            |column: &str, text: &str| io_error(path, format!("line {}: {column} '{text}' is not a number", line + 2));
        let mut record = EpochRecord {
            epoch: 0,
            train: Vec::new(),
            val: Vec::new(),
            lr: 0.0,
            seconds: 0.0,
            images_per_second: 0.0,
            skipped_images: 0,
        };
        for (column, text) in header.iter().zip(row.iter()) {
            let float = || text.parse::<f64>().map_err(|_| bad(column, text));
            match column.as_str() {
                "epoch" => record.epoch = text.parse().map_err(|_| bad(column, text))?,
                "lr" => record.lr = float()?,
                "seconds" => record.seconds = float()?,
                "images_per_second" => record.images_per_second = float()?,
                "skipped_images" => record.skipped_images = text.parse().map_err(|_| bad(column, text))?,
                _ => {
                    if let Some(name) = column.strip_prefix("train_") {
                        record.train.push((name.to_string(), float()?));
                    } else if let Some(name) = column.strip_prefix("val_") {
                        let value = if text.is_empty() { None } else { Some(float()?) };
                        record.val.push((name.to_string(), value));
                    } else {
                        return Err(io_error(path, format!("unknown column '{column}'")));
                    }
                }
            }
        }
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: usize, val: Option<f64>) -> EpochRecord {
        EpochRecord {
            epoch,
            train: vec![("loss".into(), 1.5 / epoch as f64), ("box".into(), 0.25)],
            val: vec![("loss".into(), val.map(|v| v * 2.0)), ("accuracy".into(), val)],
            lr: 1e-3 / epoch as f64,
            seconds: 2.0,
            images_per_second: 30.5,
            skipped_images: epoch - 1,
        }
    }

    #[test]
    fn round_trip_with_missing_validation_and_task_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.csv");
        let rows = vec![record(1, Some(0.1 + 0.2)), record(2, None)];
        write_results(&path, &rows).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(
                "epoch,train_loss,train_box,val_loss,val_accuracy,lr,seconds,images_per_second,skipped_images\n"
            ),
            "{text}"
        );
        assert_eq!(read_results(&path).unwrap(), rows, "values read back exactly");
        assert_eq!(rows[0].val("accuracy"), Some(0.1 + 0.2));
        assert_eq!(rows[1].val("accuracy"), None);
        assert_eq!(rows[0].train_part("box"), Some(0.25));
        assert_eq!(rows[1].train_loss(), 0.75);
    }

    #[test]
    fn a_damaged_file_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.csv");
        std::fs::write(&path, "epoch,train_loss,lr,seconds,images_per_second,skipped_images\n1,abc,0,0,0,0\n").unwrap();
        let err = read_results(&path).unwrap_err().to_string();
        assert!(err.contains("results.csv") && err.contains("line 2") && err.contains("train_loss"), "{err}");
    }
}
