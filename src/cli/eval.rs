//! `kiln val` and `kiln test`: a run's checkpoint on one split.

use std::path::PathBuf;

use clap::Args;

use kiln_train::classify::calibrate_run;
use kiln_train::classify::calibration::calibration_path;
use kiln_train::data::Split;
use kiln_train::engine::EvalOptions;
use kiln_train::tasks::evaluate_run;
use kiln_train::{RunDir, Which};

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
    /// Classification: test-time augmentation, the image and its mirror (with --tta-scales, at each scale);
    /// probabilities are averaged and the report goes to <split>_tta_metrics.json.
    #[command(flatten)]
    pub tta: TtaFlags,
    /// Classification (kiln val): fit temperature scaling on the val split and write calibration.json (NLL and
    /// ECE before and after, reliability diagrams); `kiln export onnx --calibrated` then folds it in.
    #[arg(long)]
    pub calibrate: bool,
}

/// Test-time augmentation flags (`kiln val`, `kiln test`, `kiln predict`).
#[derive(Args, Debug, Default)]
pub struct TtaFlags {
    /// Average the predictions of the image and its horizontal mirror.
    #[arg(long)]
    pub tta: bool,
    /// Average over these input scales too, comma-separated multiples of the trained size (e.g. 0.875,1,1.125;
    /// sides round to multiples of 32). Implies --tta.
    #[arg(long, value_name = "S,S,...", value_delimiter = ',', num_args = 0..)]
    pub tta_scales: Option<Vec<f64>>,
}

/// The test-time augmentation the flags ask for, in classification's settings form (`null`: none). Other tasks
/// refuse it.
pub fn tta_settings(tta: &TtaFlags) -> serde_json::Value {
    match (&tta.tta_scales, tta.tta) {
        (Some(scales), _) => serde_json::json!({ "flip": true, "scales": scales }),
        (None, true) => serde_json::json!({ "flip": true, "scales": [1.0] }),
        (None, false) => serde_json::Value::Null,
    }
}

/// The files in the run directory named for `split` that were written since `since`.
fn written_since(run: &RunDir, split: Split, since: std::time::SystemTime) -> Vec<PathBuf> {
    let prefix = format!("{}_", split.name());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&run.path)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter(|e| e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= since))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

pub fn run(args: EvalArgs, split: Split) -> anyhow::Result<()> {
    let run = RunDir::open(&args.run)?;
    let options = EvalOptions { which: args.checkpoint, data: args.data.clone(), device: args.device.clone() };
    if args.calibrate {
        if split != Split::Val {
            anyhow::bail!("--calibrate fits the temperature on the val split: use kiln val --calibrate");
        }
        anyhow::ensure!(
            tta_settings(&args.tta).is_null(),
            "--calibrate fits the temperature without test-time augmentation; leave out --tta and --tta-scales"
        );
        let c = calibrate_run(&run, &options)?;
        println!(
            "temperature {:.4} fitted on {} val images (epoch {}): NLL {:.4} -> {:.4}, ECE {:.4} -> {:.4}",
            c.temperature, c.images, c.epoch, c.nll_before, c.nll_after, c.ece_before, c.ece_after
        );
        if let Some(h) = &c.held_out {
            println!(
                "on {} {} images (not used to fit): NLL {:.4} -> {:.4}, ECE {:.4} -> {:.4}",
                h.images,
                h.split.name(),
                h.nll_before,
                h.nll_after,
                h.ece_before,
                h.ece_after
            );
        }
        println!("wrote {}", calibration_path(&run).display());
        return Ok(());
    }
    // A second's slack: file times can be coarser than the clock.
    let started = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    let report = evaluate_run(&run, split, &options, &tta_settings(&args.tta))?;
    print!("{report}");
    let written: Vec<String> = written_since(&run, split, started).iter().map(|p| p.display().to_string()).collect();
    println!("wrote {}", written.join(", "));
    Ok(())
}
