//! `curves.png`: the loss parts (train and val), the task's plotted validation metrics and the learning rate,
//! per epoch, redrawn after every epoch.

use std::path::Path;

use super::records::EpochRecord;
use super::task::Task;
use crate::plots::{plot_panels, Panel, Series};
use crate::Result;

/// `loss_names` and `loss_label` are the task's ([`Task::loss_names`], [`Task::loss_label`]).
pub fn plot_curves<T: Task>(records: &[EpochRecord], loss_names: &[&str], loss_label: &str, path: &Path) -> Result<()> {
    let series = |name: &str, f: &dyn Fn(&EpochRecord) -> Option<f64>| Series {
        name: name.into(),
        points: records.iter().filter_map(|r| f(r).map(|v| (r.epoch as f64, v))).collect(),
    };
    let panel = |title: &str, y: &str, series: Vec<Series>| Panel {
        title: title.into(),
        x_label: "epoch".into(),
        y_label: y.into(),
        series,
        log_y: false,
    };
    let mut losses = Vec::new();
    for (i, part) in loss_names.iter().enumerate() {
        let name = if i == 0 { "train".to_string() } else { format!("train {part}") };
        losses.push(series(&name, &|r| r.train_part(part)));
    }
    if T::METRICS.contains(&"loss") {
        losses.push(series("val", &|r| r.val("loss")));
    }
    let validation = T::PLOTTED.iter().map(|(metric, legend)| series(legend, &|r| r.val(metric))).collect();
    let panels = [
        panel("loss", loss_label, losses),
        panel("validation", "score", validation),
        panel("learning rate", "lr", vec![series("lr", &|r| Some(r.lr))]),
    ];
    plot_panels(&panels, path)
}
