//! `kiln bench`: latency and throughput of a model per backend, execution provider and batch size.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use kiln_infer::{Backend, LatencyOptions, LatencyRow, TimedRuns};

use super::infer::open_model;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[arg(long, value_name = "FILE.onnx", required = true)]
    pub model: Option<PathBuf>,
    /// Comma-separated: ort-cpu, ort-cuda[:N], ort-tensorrt[:N][-fp16], tract.
    #[arg(long, value_delimiter = ',', default_value = "ort-cpu,tract")]
    pub backends: Vec<Backend>,
    /// Comma-separated batch sizes (a model exported without --dynamic-batch runs only its own).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Timed runs per row.
    #[arg(long, default_value_t = 50, conflicts_with = "duration")]
    pub iters: usize,
    /// Seconds of timed runs per row, instead of --iters.
    #[arg(long, value_name = "SECONDS", value_parser = super::seconds::parse_seconds)]
    pub duration: Option<Duration>,
    /// ONNX Runtime intra-op threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// TensorRT: keep built engines in this folder between runs (the first run's build time shows once).
    #[arg(long, value_name = "DIR")]
    pub trt_cache: Option<PathBuf>,
    /// Also write the rows as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// A model without kiln metadata: its preprocessing (only the input size matters for timing).
    #[command(flatten)]
    pub raw: super::raw::RawArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// The isolated training step (forward, backward, AdamW) on a random batch: `kiln bench train --img-size 224`.
    Train(super::bench_train::BenchTrainArgs),
}

/// Measures the model on one backend at every `--batch` (kiln-infer's latency harness), or rows saying why not.
fn bench_one(args: &BenchArgs, backend: &Backend) -> Vec<LatencyRow> {
    let path = args.model.as_deref().expect("clap requires --model without a subcommand");
    let unavailable =
        |reason: String| args.batch.iter().map(|&b| LatencyRow::unavailable(backend, b, &reason)).collect();
    let raw = match args.raw.preprocess() {
        Ok(raw) => raw,
        Err(e) => return unavailable(e.to_string()),
    };
    let model = match open_model(path, backend.clone(), args.threads, raw) {
        Ok(m) => m,
        Err(e) => return unavailable(e.to_string()),
    };
    if model.preprocess().is_none() {
        return unavailable(format!("no kiln metadata: give its preprocessing with {}", super::raw::RAW_FLAGS));
    }
    let options = LatencyOptions {
        batches: args.batch.clone(),
        warmup: args.warmup,
        runs: match args.duration {
            Some(duration) => TimedRuns::For(duration),
            None => TimedRuns::Count(args.iters),
        },
    };
    kiln_infer::latency::measure(&model, backend, &options)
}

pub fn print_table(rows: &[LatencyRow]) {
    if let Some(row) = rows.iter().find(|r| !r.precision.is_empty()) {
        println!("precision: {}", row.precision);
    }
    println!(
        "| backend | batch | EP in use | load ms | first run ms | mean ms | p50 ms | p90 ms | p99 ms | images/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let f = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.backend,
            r.batch,
            r.status,
            f(r.load_ms),
            f(r.first_run_ms),
            f(r.mean_ms),
            f(r.p50_ms),
            f(r.p90_ms),
            f(r.p99_ms),
            r.images_per_second.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
        );
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(BenchCommand::Train(train)) = args.command {
        return super::bench_train::run(train);
    }
    let mut rows = Vec::new();
    for backend in &args.backends {
        let backend = super::infer::with_trt_cache(backend.clone(), args.trt_cache.as_deref());
        rows.extend(bench_one(&args, &backend));
    }
    print_table(&rows);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&rows)?)?;
    }
    Ok(())
}
