//! `kiln infer` on a detection model: boxes per image, in the image's own pixels, as a table, JSON lines or CSV.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use kiln_infer::nms::Detection;
use kiln_infer::preprocess::decode_rgb;
use kiln_infer::{Detector, Model};

use super::output::{csv_field, Format};

/// NMS overrides for a detection model (default: the settings in its metadata).
#[derive(Args, Debug, Clone, Default)]
pub struct NmsArgs {
    /// IoU above which a lower-scored box of the same class is suppressed.
    #[arg(long)]
    pub iou: Option<f32>,
    /// Detections scoring below this are dropped.
    #[arg(long)]
    pub score: Option<f32>,
    /// At most this many detections per image.
    #[arg(long)]
    pub max_det: Option<usize>,
    /// Suppress across classes.
    #[arg(long)]
    pub agnostic: bool,
}

/// Runs `model` (a detect model) over `files`, writing each image's detections as they come.
pub fn run(model: Model, files: &[PathBuf], format: Format, batch: usize, nms: &NmsArgs) -> anyhow::Result<()> {
    let mut detector = Detector::new(model)?;
    let mut settings = *detector.nms();
    settings.iou_threshold = nms.iou.unwrap_or(settings.iou_threshold);
    settings.score_threshold = nms.score.unwrap_or(settings.score_threshold);
    settings.max_detections = nms.max_det.unwrap_or(settings.max_detections);
    settings.class_agnostic |= nms.agnostic;
    detector = detector.with_nms(settings);
    let names = detector.class_names().to_vec();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if format == Format::Csv {
        writeln!(out, "path,class,score,x1,y1,x2,y2,error")?;
    }
    let mut failed = 0;
    for chunk in files.chunks(batch.max(1)) {
        let (mut images, mut paths) = (Vec::new(), Vec::new());
        for path in chunk {
            match decode_rgb(path) {
                Ok(image) => {
                    images.push(image);
                    paths.push(path);
                }
                Err(reason) => {
                    failed += 1;
                    write_error(&mut out, format, path, &reason)?;
                }
            }
        }
        if images.is_empty() {
            continue;
        }
        for (path, detections) in paths.iter().zip(detector.predict_batch(&images)?) {
            write_detections(&mut out, format, path, &detections, &names)?;
        }
        out.flush()?;
    }
    if failed > 0 {
        eprintln!("{failed} of {} image(s) could not be read", files.len());
    }
    Ok(())
}

fn write_detections(
    out: &mut impl Write,
    format: Format,
    path: &Path,
    detections: &[Detection],
    names: &[String],
) -> std::io::Result<()> {
    let shown = path.display().to_string();
    let name = |c: usize| names.get(c).map_or("?", String::as_str);
    match format {
        Format::Table => {
            let boxes: Vec<String> = detections
                .iter()
                .map(|d| {
                    let [x1, y1, x2, y2] = d.bbox;
                    format!("{} {:.3} [{x1:.1}, {y1:.1}, {x2:.1}, {y2:.1}]", name(d.class), d.score)
                })
                .collect();
            writeln!(
                out,
                "{shown}  {} detection(s){}{}",
                detections.len(),
                if boxes.is_empty() { "" } else { ": " },
                boxes.join("; ")
            )
        }
        Format::Json => {
            let list: Vec<serde_json::Value> = detections
                .iter()
                .map(|d| serde_json::json!({"class": name(d.class), "class_index": d.class, "score": d.score, "bbox": d.bbox}))
                .collect();
            writeln!(out, "{}", serde_json::json!({"path": shown, "detections": list}))
        }
        Format::Csv => {
            for d in detections {
                let [x1, y1, x2, y2] = d.bbox;
                writeln!(
                    out,
                    "{},{},{:.6},{x1:.2},{y1:.2},{x2:.2},{y2:.2},",
                    csv_field(&shown),
                    csv_field(name(d.class)),
                    d.score
                )?;
            }
            Ok(())
        }
    }
}

fn write_error(out: &mut impl Write, format: Format, path: &Path, reason: &str) -> std::io::Result<()> {
    let shown = path.display().to_string();
    match format {
        Format::Table => writeln!(out, "{shown}  error: {reason}"),
        Format::Json => writeln!(out, "{}", serde_json::json!({"path": shown, "error": reason})),
        Format::Csv => writeln!(out, "{},,,,,,,{}", csv_field(&shown), csv_field(reason)),
    }
}
