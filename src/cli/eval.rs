//! `kiln val` and `kiln test`: a run's checkpoint on one split.

use std::path::PathBuf;

use clap::Args;

use kiln_train::classify::{evaluate_run, EvalOptions};
use kiln_train::data::Split;
use kiln_train::{RunDir, Which};

use super::output::print_split_report;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The run directory (runs/classify/NAME).
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// best | last
    #[arg(long, default_value = "best")]
    pub checkpoint: Which,
    /// Evaluate on another dataset root with the same classes.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// auto | cpu | cuda | cuda:N (default: the run's)
    #[arg(long)]
    pub device: Option<String>,
}

pub fn run(args: EvalArgs, split: Split) -> anyhow::Result<()> {
    let run = RunDir::open(&args.run)?;
    let options = EvalOptions { which: args.checkpoint, data: args.data, device: args.device };
    let report = evaluate_run(&run, split, &options)?;
    print_split_report(&report);
    println!("wrote {} and {}", run.metrics(split.name()).display(), run.confusion_matrix(split.name()).display());
    Ok(())
}
