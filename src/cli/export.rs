//! `kiln export onnx`: a run's checkpoint as an ONNX model.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use kiln_train::export::ExportOptions;
use kiln_train::tasks::export_run;
use kiln_train::{RunDir, Which};

#[derive(Subcommand, Debug)]
pub enum ExportFormat {
    /// ONNX (opset 13 to 21), with kiln's metadata in metadata_props.
    Onnx(OnnxArgs),
}

#[derive(Args, Debug)]
pub struct OnnxArgs {
    /// The run directory (runs/classify/NAME, runs/detect/NAME).
    #[arg(long, value_name = "DIR", required_unless_present = "model")]
    pub run: Option<PathBuf>,
    /// With --int8: quantize this exported fp32 model instead of a run's checkpoint (calibration needs --calib).
    #[arg(long, value_name = "FILE.onnx", conflicts_with = "run", requires = "int8")]
    pub model: Option<PathBuf>,
    /// Output file (default: RUN/weights/<checkpoint>[-fp16].onnx).
    #[arg(long, value_name = "FILE.onnx")]
    pub out: Option<PathBuf>,
    /// best | last
    #[arg(long, default_value = "best")]
    pub checkpoint: Which,
    #[arg(long, default_value_t = 17)]
    pub opset: i64,
    /// A batch size chosen at run time (default: batch 1).
    #[arg(long)]
    pub dynamic_batch: bool,
    /// fp16 weights and compute; inputs and outputs stay fp32 unless --half-io.
    #[arg(long)]
    pub half: bool,
    /// With --half: fp16 inputs and outputs too.
    #[arg(long, requires = "half")]
    pub half_io: bool,
    /// Detection: end the graph in ONNX NonMaxSuppression, returning at most --max-det boxes per image
    /// (num_detections, det_boxes, det_scores, det_classes) instead of every candidate.
    #[arg(long)]
    pub nms_in_graph: bool,
    /// Detection: NMS settings for the metadata (and the graph) instead of the run's.
    #[command(flatten)]
    pub nms: super::infer_detect::NmsFlags,
    #[command(flatten)]
    pub int8: Int8Flags,
    /// Classification: divide the logits by the run's temperature (fitted on the val split by
    /// `kiln val --calibrate`, or now), so that the exported probs are calibrated; the metadata records it.
    #[arg(long)]
    pub calibrated: bool,
}

/// int8 quantization of the export.
#[derive(Args, Debug)]
pub struct Int8Flags {
    /// An int8 model: static (activation ranges calibrated on images) or dynamic (linear layers, ranges measured
    /// at run time). Writes RUN/weights/<checkpoint>-int8.onnx, and by default fp32 and fp16 beside it with a
    /// comparison table (<out>.comparison.json).
    #[arg(long, value_name = "MODE", conflicts_with = "half")]
    pub int8: Option<kiln_train::int8::Int8Mode>,
    /// Static: calibrate on every image under this folder (default: the run's val split).
    #[arg(long, value_name = "DIR", requires = "int8", conflicts_with = "calib_split")]
    pub calib: Option<PathBuf>,
    /// Static: calibrate on this split of the run's dataset: train | val | test.
    #[arg(long, value_name = "SPLIT", requires = "int8")]
    pub calib_split: Option<kiln_train::data::Split>,
    /// Static: at most this many calibration images, spread evenly over the source.
    #[arg(long, value_name = "N", default_value_t = 64, requires = "int8")]
    pub calib_images: usize,
    /// Static: minmax | percentile[:P] (default P 99.999) | entropy.
    #[arg(long, value_name = "METHOD", default_value = "minmax", requires = "int8")]
    pub calib_method: String,
    /// One weight scale per output channel (false: one per tensor).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value_t = true, default_missing_value = "true",
          action = clap::ArgAction::Set, requires = "int8")]
    pub per_channel: bool,
    /// Static: the op families computed in int8, comma-separated: linear, conv, depthwise (default: time the
    /// candidate plans on this CPU and keep the fastest).
    #[arg(long, value_name = "FAMILIES", requires = "int8")]
    pub int8_ops: Option<String>,
    /// Skip the fp32 / fp16 references and the comparison.
    #[arg(long, requires = "int8")]
    pub no_compare: bool,
}

impl Int8Flags {
    fn request(&self) -> anyhow::Result<Option<kiln_train::int8::Int8Request>> {
        use kiln_train::int8::{CalibSource, Int8Request};
        let Some(mode) = self.int8 else { return Ok(None) };
        let source = match (&self.calib, self.calib_split) {
            (Some(dir), _) => CalibSource::Folder(dir.clone()),
            (None, Some(split)) => CalibSource::Split(split),
            (None, None) => CalibSource::Split(kiln_train::data::Split::Val),
        };
        let method = kiln_train::int8::CalibMethod::parse(&self.calib_method)
            .map_err(|e| anyhow::anyhow!("--calib-method {e}"))?;
        let families = self
            .int8_ops
            .as_deref()
            .map(kiln_train::int8::OpFamily::parse_list)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--int8-ops {e}"))?;
        Ok(Some(Int8Request {
            mode,
            source,
            images: self.calib_images,
            method,
            per_channel: self.per_channel,
            families,
            compare: !self.no_compare,
        }))
    }
}

pub fn run(format: ExportFormat) -> anyhow::Result<()> {
    let ExportFormat::Onnx(args) = format;
    if let Some(model) = &args.model {
        let request = args.int8.request()?.expect("clap requires --int8 with --model");
        let out = args.out.clone().unwrap_or_else(|| {
            let stem = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            model.with_file_name(format!("{stem}-int8.onnx"))
        });
        let report = kiln_train::int8::quantize_file(model, &request, &out)?;
        println!("quantized {} to {} ({:.1} MB)", model.display(), report.path.display(), report.bytes as f64 / 1e6);
        if let Some(int8) = &report.int8 {
            print_int8(int8);
        }
        return Ok(());
    }
    let run = RunDir::open(args.run.as_deref().expect("clap requires --run without --model"))?;
    let options = ExportOptions {
        which: args.checkpoint,
        out: args.out,
        opset: args.opset,
        dynamic_batch: args.dynamic_batch,
        half: args.half,
        half_io: args.half_io,
        nms: args.nms.overrides(),
        nms_in_graph: args.nms_in_graph,
        int8: args.int8.request()?,
        calibrated: args.calibrated,
    };
    let report = export_run(&run, &options)?;
    let m = &report.metadata;
    println!(
        "exported {} {} ({} classes, {} px, {}, opset {}, {} nodes, {:.1} MB) to {}",
        m.task,
        m.variant,
        m.class_names.len(),
        m.input.size[0],
        m.precision,
        m.opset,
        report.nodes,
        report.bytes as f64 / 1e6,
        report.path.display()
    );
    if let Some(t) = &m.temperature_scaling {
        println!(
            "calibrated: logits / {:.4} (fitted on {} {} images: NLL {:.4} -> {:.4}, ECE {:.4} -> {:.4})",
            t.temperature, t.images, t.fitted_on, t.nll_before, t.nll_after, t.ece_before, t.ece_after
        );
    }
    if let Some(int8) = &report.int8 {
        print_int8(int8);
    }
    Ok(())
}

fn print_int8(report: &kiln_train::int8::Int8Report) {
    let families: Vec<String> = report.summary.quantized.iter().map(|(f, n)| format!("{n} {f}")).collect();
    println!("int8: {} quantized; {} kept float", families.join(", "), report.summary.kept_float.len());
    if report.calibration_images > 0 {
        println!(
            "calibrated on {} images ({} unreadable, skipped)",
            report.calibration_images, report.calibration_skipped
        );
    }
    if let Some(fp32) = report.fp32_ms {
        println!("plans timed at batch 1, one thread (fp32 {fp32:.2} ms):");
        for p in &report.plans {
            println!("  {:<28} {:>8.2} ms  {:.2}x", p.families.join("+"), p.ms, fp32 / p.ms);
        }
    }
    if let Some(w) = &report.warning {
        eprintln!("warning: {w}");
    }
    let Some(c) = &report.comparison else { return };
    println!("\ncomparison on {} val images ({}; latency: one thread, median):", c.val_images, c.metric_name);
    let cells: Vec<(String, usize)> = c.rows[0].latency.iter().map(|l| (l.backend.clone(), l.batch)).collect();
    let mut header = format!("{:<10} {:>9} {:>9} {:>9}", "precision", "MB", "metric", "agree");
    for (b, n) in &cells {
        header += &format!(" {:>14}", format!("{b} b{n} ms"));
    }
    println!("{header}");
    for r in &c.rows {
        let metric = r.metric.map_or("-".into(), |m| format!("{:.4}", m));
        let agree = r.argmax_agreement.map_or("-".into(), |m| format!("{:.4}", m));
        let mut line = format!("{:<10} {:>9.2} {:>9} {:>9}", r.precision, r.bytes as f64 / 1e6, metric, agree);
        for l in &r.latency {
            line += &format!(" {:>14}", l.ms.map_or("n/a".into(), |ms| format!("{ms:.2}")));
        }
        println!("{line}");
    }
    for r in c.rows.iter().skip(1) {
        let diffs: Vec<String> = r.max_abs_diff.iter().map(|(k, v)| format!("{k} {v:.3e}")).collect();
        println!("{} max |diff| from fp32: {}", r.precision, diffs.join(", "));
        for l in r.latency.iter().filter(|l| l.ms.is_none()) {
            println!("{} on {} b{}: {}", r.precision, l.backend, l.batch, l.status);
        }
    }
    if let Some(reason) = &report.fp16_unavailable {
        println!("no fp16 row: {reason}");
    }
    if let Some(p) = &report.comparison_path {
        println!("wrote {}", p.display());
    }
}
