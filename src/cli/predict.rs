//! `kiln predict`: classify images and folders with a run's checkpoint (libtorch).

use std::path::PathBuf;

use clap::Args;

use kiln_train::classify::{predict, PredictOptions};
use kiln_train::{RunDir, Which};

use super::output::{print_predictions, Format};

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// The run directory (runs/classify/NAME).
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Image files and folders (searched recursively).
    #[arg(required = true, value_name = "IMAGES_OR_DIRS")]
    pub inputs: Vec<PathBuf>,
    /// best | last
    #[arg(long, default_value = "best")]
    pub checkpoint: Which,
    #[arg(long, default_value_t = 1)]
    pub top_k: usize,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// auto | cpu | cuda | cuda:N (default: the run's)
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long)]
    pub batch: Option<usize>,
}

pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let run = RunDir::open(&args.run)?;
    let options = PredictOptions { which: args.checkpoint, top_k: args.top_k, device: args.device, batch: args.batch };
    let predictions = predict(&run, &args.inputs, &options)?;
    print_predictions(&predictions, args.format)?;
    let failed = predictions.iter().filter(|p| p.error.is_some()).count();
    if failed > 0 {
        eprintln!("{failed} of {} image(s) could not be read", predictions.len());
    }
    Ok(())
}
