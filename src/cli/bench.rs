//! `kiln bench`: latency and throughput of a model per backend, execution provider and batch size.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use kiln_infer::Backend;

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
    #[arg(long)]
    pub duration: Option<f64>,
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

/// One row of the table.
#[derive(Debug, Serialize)]
pub struct BenchRow {
    pub backend: String,
    pub batch: usize,
    /// The execution provider in use, or why the row could not run.
    pub status: String,
    pub load_ms: Option<f64>,
    /// The first run (TensorRT builds its engine here; ONNX Runtime allocates).
    pub first_run_ms: Option<f64>,
    pub runs: usize,
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub images_per_second: Option<f64>,
    /// The model's precision from its metadata (`fp32`, `fp16`, `int8 static (…)`); empty when it did not load.
    pub precision: String,
}

fn unavailable(backend: &Backend, batch: usize, reason: String) -> BenchRow {
    BenchRow {
        backend: backend.to_string(),
        batch,
        status: format!("unavailable: {reason}"),
        load_ms: None,
        first_run_ms: None,
        runs: 0,
        mean_ms: None,
        p50_ms: None,
        p90_ms: None,
        p99_ms: None,
        images_per_second: None,
        precision: String::new(),
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn bench_one(args: &BenchArgs, backend: &Backend) -> Vec<BenchRow> {
    let path = args.model.as_deref().expect("clap requires --model without a subcommand");
    let raw = match args.raw.preprocess() {
        Ok(raw) => raw,
        Err(e) => return args.batch.iter().map(|&b| unavailable(backend, b, e.to_string())).collect(),
    };
    let model = match open_model(path, backend.clone(), args.threads, raw) {
        Ok(m) => m,
        Err(e) => return args.batch.iter().map(|&b| unavailable(backend, b, e.to_string())).collect(),
    };
    let load_ms = ms(model.load_time());
    let per = match model.preprocess() {
        Some(p) => p.tensor_len(),
        None => {
            let reason = format!("no kiln metadata: give its preprocessing with {}", super::raw::RAW_FLAGS);
            return args.batch.iter().map(|&b| unavailable(backend, b, reason.clone())).collect();
        }
    };
    let status = match backend {
        Backend::Ort(ep) => ep.provider_name().to_string(),
        Backend::Tract => "tract".to_string(),
    };
    let mut rows = Vec::new();
    for &batch in &args.batch {
        if let Some(fixed) = model.fixed_batch().filter(|&f| f != batch) {
            rows.push(unavailable(
                backend,
                batch,
                format!("the model has a fixed batch of {fixed} (export with --dynamic-batch)"),
            ));
            continue;
        }
        // A smooth pattern rather than zeros, so no runtime can shortcut it.
        let input: Vec<f32> = (0..batch * per).map(|i| ((i % 97) as f32 / 48.5) - 1.0).collect();
        // Any failing run (first, warm-up or timed) makes the whole row unavailable, never half a row.
        let measured = (|| -> kiln_infer::Result<(f64, Vec<f64>)> {
            let started = Instant::now();
            model.run(&input, batch)?;
            let first = ms(started.elapsed());
            for _ in 0..args.warmup {
                model.run(&input, batch)?;
            }
            let mut times = Vec::new();
            let deadline = args.duration.map(Duration::from_secs_f64);
            let begin = Instant::now();
            loop {
                let t = Instant::now();
                model.run(&input, batch)?;
                times.push(ms(t.elapsed()));
                let done = match deadline {
                    Some(d) => begin.elapsed() >= d,
                    None => times.len() >= args.iters.max(1),
                };
                if done {
                    return Ok((first, times));
                }
            }
        })();
        let (first, mut times) = match measured {
            Ok(m) => m,
            Err(e) => {
                rows.push(unavailable(backend, batch, e.to_string()));
                continue;
            }
        };
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        times.sort_by(f64::total_cmp);
        rows.push(BenchRow {
            backend: backend.to_string(),
            batch,
            status: status.clone(),
            load_ms: Some(load_ms),
            first_run_ms: Some(first),
            runs: times.len(),
            mean_ms: Some(mean),
            p50_ms: Some(percentile(&times, 0.5)),
            p90_ms: Some(percentile(&times, 0.9)),
            p99_ms: Some(percentile(&times, 0.99)),
            images_per_second: Some(batch as f64 * 1e3 / mean),
            precision: model.precision(),
        });
    }
    rows
}

pub fn print_table(rows: &[BenchRow]) {
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
    if let Some(d) = args.duration {
        anyhow::ensure!(d.is_finite() && d > 0.0, "--duration {d}: expected a positive number of seconds");
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
