//! How results are printed: metrics tables, prediction tables, JSON and CSV.

use kiln_train::classify::{Prediction, SplitReport, TrainOutcome};
use kiln_train::metrics::ClassificationMetrics;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
    /// COCO results JSON (detection models only).
    Coco,
}

fn print_metrics(title: &str, m: &ClassificationMetrics, class_names: &[String]) {
    println!("{title}");
    print!(
        "  accuracy {:.4}  precision {:.4}  recall {:.4}  f1 {:.4}",
        m.accuracy, m.precision_macro, m.recall_macro, m.f1_macro
    );
    if let Some(t) = m.top5_accuracy {
        print!("  top-5 {t:.4}");
    }
    if let Some(e) = m.ece {
        print!("  ECE {e:.4}");
    }
    if let Some(s) = m.specificity {
        print!("  specificity {s:.4}");
    }
    println!();
    let width = class_names.iter().map(String::len).max().unwrap_or(5).max(5);
    println!("  {:width$}  precision  recall      f1  support", "class");
    for (name, c) in class_names.iter().zip(&m.per_class) {
        println!("  {name:width$}  {:9.4}  {:6.4}  {:6.4}  {:7}", c.precision, c.recall, c.f1, c.support);
    }
}

fn print_confusion(report: &SplitReport) {
    let width = report.class_names.iter().map(String::len).max().unwrap_or(4).max(6);
    println!("  confusion matrix (rows: true, columns: predicted)");
    print!("  {:width$}", "");
    for name in &report.class_names {
        print!(" {name:>width$}");
    }
    println!();
    for (name, row) in report.class_names.iter().zip(&report.confusion_matrix) {
        print!("  {name:width$}");
        for count in row {
            print!(" {count:>width$}");
        }
        println!();
    }
}

pub fn print_split_report(report: &SplitReport) {
    let tta = match &report.tta {
        Some(t) => format!(", TTA over {} views (flip {}, scales {:?})", t.views(), t.flip, t.scales),
        None => String::new(),
    };
    let title = format!(
        "{} split: {} images, checkpoint {} (epoch {}), loss {:.4}{tta}",
        report.split,
        report.images,
        report.checkpoint.display(),
        report.epoch,
        report.loss
    );
    print_metrics(&title, &report.metrics, &report.class_names);
    print_confusion(report);
    if !report.skipped.is_empty() {
        println!("  skipped {} unreadable image(s), e.g. {}", report.skipped.len(), report.skipped[0].0.display());
    }
}

pub fn print_outcome(outcome: &TrainOutcome) {
    println!(
        "trained {} epoch(s) on {}{}; best epoch {}",
        outcome.epochs,
        outcome.device,
        if outcome.stopped_early { " (stopped early)" } else { "" },
        outcome.best_epoch
    );
    if let Some(test) = &outcome.test {
        print_split_report(test);
    } else if let Some(val) = &outcome.best_val {
        println!("best validation accuracy {:.4}, f1 {:.4} (no test split)", val.accuracy, val.f1_macro);
    }
    if !outcome.skipped.is_empty() {
        println!("skipped {} unreadable image(s):", outcome.skipped.len());
        for (path, reason) in outcome.skipped.iter().take(10) {
            println!("  {}: {reason}", path.display());
        }
    }
    println!("run directory: {}", outcome.run.path.display());
    if let Some(mib) = peak_rss_mib() {
        println!("peak resident memory: {mib:.0} MiB");
    }
}

/// What a detection run prints: epochs, the best validation and the test metrics, the run directory.
pub fn print_detection_outcome(outcome: &kiln_train::detect::TrainOutcome) {
    let show =
        |m: &kiln_train::detect::evaluate::DetectionMetrics| {
            let (c, t) = (&m.coco, &m.at_threshold);
            format!(
            "mAP@[.5:.95] {:.4}  mAP@.5 {:.4}  mAP@.75 {:.4}  mean IoU {:.4}  P/R/F1 {:.3}/{:.3}/{:.3} at score {:.2} \
             with {} duplicate(s) (best F1 {:.3} at {:.2})",
            c.map, c.map_50, c.map_75, t.mean_iou, t.precision, t.recall, t.f1, t.score_threshold, t.duplicates,
            t.best_f1, t.best_f1_threshold
        )
        };
    print_task_outcome(outcome, show, outcome.test.as_ref().map(|t| (t.images, "images", &t.metrics)));
}

pub fn print_ocr_outcome(outcome: &kiln_train::ocr::TrainOutcome) {
    let show = |m: &kiln_train::ocr::evaluate::TextMetrics| {
        format!("CER {:.4}  WER {:.4}  exact match {:.4}  mean NED {:.4}", m.cer, m.wer, m.accuracy, m.mean_ned)
    };
    print_task_outcome(outcome, show, outcome.test.as_ref().map(|t| (t.lines, "lines", &t.metrics)));
}

/// A finished run of any task with a metrics summary: epochs, best validation and test metrics, skipped files,
/// the run directory.
fn print_task_outcome<M, R>(
    outcome: &kiln_train::engine::TrainOutcome<M, R>,
    show: impl Fn(&M) -> String,
    test: Option<(usize, &str, &M)>,
) {
    println!(
        "trained {} epoch(s) on {}{}; best epoch {}",
        outcome.epochs,
        outcome.device,
        if outcome.stopped_early { " (stopped early)" } else { "" },
        outcome.best_epoch
    );
    if let Some(val) = &outcome.best_val {
        println!("best validation: {}", show(val));
    }
    if let Some((n, what, metrics)) = test {
        println!("test ({n} {what}): {}", show(metrics));
    }
    if !outcome.skipped.is_empty() {
        println!("skipped {} unreadable image(s); first: {}", outcome.skipped.len(), outcome.skipped[0].0.display());
    }
    println!("run directory: {}", outcome.run.path.display());
}

/// The process's peak resident set size (VmHWM), where /proc tells it.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}

pub fn print_predictions(predictions: &[Prediction], format: Format) -> anyhow::Result<()> {
    anyhow::ensure!(format != Format::Coco, "--format coco is for detection models");
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(predictions)?),
        Format::Coco => unreachable!("refused above"),
        Format::Csv => {
            println!("path,rank,class,probability,energy,error");
            for p in predictions {
                match (&p.top, &p.error) {
                    (Some(top), _) => {
                        for (rank, c) in top.iter().enumerate() {
                            println!(
                                "{},{},{},{:.6},{:.4},",
                                csv_field(&p.path.display().to_string()),
                                rank + 1,
                                csv_field(&c.class),
                                c.probability,
                                p.energy.unwrap_or(f64::NAN)
                            );
                        }
                    }
                    (None, error) => println!(
                        "{},,,,,{}",
                        csv_field(&p.path.display().to_string()),
                        csv_field(error.as_deref().unwrap_or(""))
                    ),
                }
            }
        }
        Format::Table => {
            for p in predictions {
                match (&p.top, &p.error) {
                    (Some(top), _) => {
                        let classes: Vec<String> =
                            top.iter().map(|c| format!("{} {:.3}", c.class, c.probability)).collect();
                        let energy = p.energy.map(|e| format!("  (energy {e:.2})")).unwrap_or_default();
                        println!("{}  {}{energy}", p.path.display(), classes.join(", "));
                    }
                    (None, error) => println!("{}  error: {}", p.path.display(), error.as_deref().unwrap_or("")),
                }
            }
        }
    }
    Ok(())
}

/// A CSV field, quoted when it holds a comma, a quote or a newline.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
