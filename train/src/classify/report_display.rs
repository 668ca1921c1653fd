//! How a classification report reads (`kiln val`, `kiln test`, the test pass after training): the split's
//! metrics, each class's precision / recall / F1 / support, the confusion matrix and the skipped files.

use std::fmt::{Display, Formatter, Result};

use super::report::SplitReport;
use crate::metrics::ClassificationMetrics;

/// The macro metrics on one line, then a row per class.
pub struct MetricsTable<'a> {
    pub metrics: &'a ClassificationMetrics,
    pub class_names: &'a [String],
}

impl Display for MetricsTable<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        let m = self.metrics;
        write!(f, "  {m}")?;
        if let Some(s) = m.specificity {
            write!(f, "  specificity {s:.4}")?;
        }
        writeln!(f)?;
        let width = self.class_names.iter().map(String::len).max().unwrap_or(5).max(5);
        writeln!(f, "  {:width$}  precision  recall      f1  support", "class")?;
        for (name, c) in self.class_names.iter().zip(&m.per_class) {
            writeln!(f, "  {name:width$}  {:9.4}  {:6.4}  {:6.4}  {:7}", c.precision, c.recall, c.f1, c.support)?;
        }
        Ok(())
    }
}

impl Display for SplitReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        let tta = match &self.tta {
            Some(t) => format!(", TTA over {} views (flip {}, scales {:?})", t.views(), t.flip, t.scales),
            None => String::new(),
        };
        writeln!(
            f,
            "{} split: {} images, checkpoint {} (epoch {}), loss {:.4}{tta}",
            self.split,
            self.images,
            self.checkpoint.display(),
            self.epoch,
            self.loss
        )?;
        write!(f, "{}", MetricsTable { metrics: &self.metrics, class_names: &self.class_names })?;
        let width = self.class_names.iter().map(String::len).max().unwrap_or(4).max(6);
        writeln!(f, "  confusion matrix (rows: true, columns: predicted)")?;
        write!(f, "  {:width$}", "")?;
        for name in &self.class_names {
            write!(f, " {name:>width$}")?;
        }
        writeln!(f)?;
        for (name, row) in self.class_names.iter().zip(&self.confusion_matrix) {
            write!(f, "  {name:width$}")?;
            for count in row {
                write!(f, " {count:>width$}")?;
            }
            writeln!(f)?;
        }
        if !self.skipped.is_empty() {
            writeln!(f, "  skipped {} unreadable image(s), e.g. {}", self.skipped.len(), self.skipped[0].0.display())?;
        }
        Ok(())
    }
}
