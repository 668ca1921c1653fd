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
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
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
}

pub fn run(format: ExportFormat) -> anyhow::Result<()> {
    let ExportFormat::Onnx(args) = format;
    let run = RunDir::open(&args.run)?;
    let options = ExportOptions {
        which: args.checkpoint,
        out: args.out,
        opset: args.opset,
        dynamic_batch: args.dynamic_batch,
        half: args.half,
        half_io: args.half_io,
        nms: args.nms.overrides(),
        nms_in_graph: args.nms_in_graph,
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
    Ok(())
}
