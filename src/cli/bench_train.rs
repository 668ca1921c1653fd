//! `kiln bench train`: the isolated training step of a task's model (a fixed random batch on the device, no data
//! loading), timed step by step.

use std::path::PathBuf;

use clap::Args;

use kiln_train::config::TaskKind;
use kiln_train::precision::AmpMode;
use kiln_train::step_timer::StepBenchConfig;
use kiln_train::tasks::bench_train_step;

#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    /// classify | detect | ocr
    #[arg(long, default_value = "classify", value_name = "TASK")]
    pub task: TaskKind,
    /// Classes of the random labels / boxes.
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// convnext_atto | femto | pico | nano | tiny | small | base
    #[arg(long, default_value = "convnext_atto")]
    pub model: String,
    #[arg(long, default_value_t = 224)]
    pub img_size: u32,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// auto | bf16 | fp16 | false (CUDA only; the CPU trains in fp32).
    #[arg(long, default_value = "auto")]
    pub amp: AmpMode,
    /// Channels-last on CUDA (true/false).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub channels_last: bool,
    /// libtorch threads (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Also write the result as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// A key of the task's config section, e.g. `--set head=faster_rcnn` for detection (repeatable; values are
    /// YAML).
    #[arg(long, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// `KEY=VALUE` pairs (dotted keys nest) as a JSON object.
fn task_settings(pairs: &[String]) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    use anyhow::Context;
    let mut root = serde_json::Map::new();
    for item in pairs {
        let (key, raw) = item.split_once('=').with_context(|| format!("--set {item}: expected KEY=VALUE"))?;
        let value: serde_json::Value = serde_yaml::from_str(raw).with_context(|| format!("--set {item}: bad value"))?;
        let mut node = &mut root;
        let parts: Vec<&str> = key.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            let entry = node.entry(part.to_string()).or_insert_with(|| serde_json::json!({}));
            node = entry.as_object_mut().with_context(|| format!("--set {item}: {part} is not a section"))?;
        }
        node.insert(parts[parts.len() - 1].to_string(), value);
    }
    Ok(root)
}

pub fn run(args: BenchTrainArgs) -> anyhow::Result<()> {
    let config = StepBenchConfig {
        task: args.task,
        num_classes: args.classes,
        model: args.model,
        img_size: args.img_size,
        batch: args.batch,
        warmup: args.warmup,
        steps: args.steps,
        device: args.device,
        amp: args.amp,
        channels_last: args.channels_last,
        threads: args.threads,
        task_settings: task_settings(&args.set)?,
        ..Default::default()
    };
    let r = bench_train_step(&config)?;
    println!(
        "| task | model | img | batch | device | precision | threads | steps | mean step ms | p50 ms | images/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.1} |",
        r.task.name(),
        r.model,
        r.img_size,
        r.batch,
        r.device,
        r.precision,
        r.threads,
        r.steps,
        r.mean_step_ms,
        r.p50_step_ms,
        r.images_per_second
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&r)?)?;
    }
    Ok(())
}
