//! `kiln val` and `kiln test`: a run's checkpoint on one split.

use std::path::PathBuf;

use clap::Args;

use kiln_train::classify::calibration::{calibrate_run, calibration_path};
use kiln_train::classify::tta::Tta;
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

impl TtaFlags {
    /// The augmentation asked for (none without either flag).
    pub fn tta(&self) -> anyhow::Result<Tta> {
        let tta = match &self.tta_scales {
            Some(scales) => Tta { flip: true, scales: scales.clone() },
            None if self.tta => Tta::flip(),
            None => Tta::default(),
        };
        tta.validate().map_err(|e| anyhow::anyhow!("--tta-scales: {e}"))?;
        Ok(tta)
    }
}

pub fn run(args: EvalArgs, split: Split) -> anyhow::Result<()> {
    let run = RunDir::open(&args.run)?;
    let task = kiln_train::TrainConfig::load(&run.config())?.task;
    if task != kiln_train::TaskKind::Classify && (args.tta.tta()? != Tta::default() || args.calibrate) {
        anyhow::bail!("--tta, --tta-scales and --calibrate are for classification runs; this is a {} run", task.name());
    }
    if task == kiln_train::TaskKind::Ocr {
        use kiln_train::ocr::report::{evaluate_run, EvalOptions};
        let options = EvalOptions { which: args.checkpoint, data: args.data, device: args.device };
        let report = evaluate_run(&run, split, &options)?;
        let m = &report.metrics;
        println!(
            "{split} ({} lines, epoch {}): CER {:.4}  WER {:.4}  exact match {:.4}  mean NED {:.4}",
            report.lines, report.epoch, m.cer, m.wer, m.accuracy, m.mean_ned
        );
        println!(
            "wrote {} and {}",
            run.metrics(split.name()).display(),
            run.path.join(format!("{}_predictions.csv", split.name())).display()
        );
        return Ok(());
    }
    if task == kiln_train::TaskKind::Detect {
        use kiln_train::detect::report::{evaluate_run, EvalOptions};
        let options = EvalOptions { which: args.checkpoint, data: args.data, device: args.device };
        let report = evaluate_run(&run, split, &options)?;
        let (c, t) = (&report.metrics.coco, &report.metrics.at_threshold);
        println!(
            "{split} ({} images, epoch {}): mAP@[.5:.95] {:.4}  mAP@.5 {:.4}  mAP@.75 {:.4}  small/medium/large \
             {:.4}/{:.4}/{:.4}  mean IoU {:.4}  P/R/F1 {:.3}/{:.3}/{:.3} at score {:.2}",
            report.images,
            report.epoch,
            c.map,
            c.map_50,
            c.map_75,
            c.map_small,
            c.map_medium,
            c.map_large,
            t.mean_iou,
            t.precision,
            t.recall,
            t.f1,
            t.score_threshold
        );
        println!("wrote {}", run.metrics(split.name()).display());
        return Ok(());
    }
    let tta = args.tta.tta()?;
    let options = EvalOptions { which: args.checkpoint, data: args.data, device: args.device, tta };
    if args.calibrate {
        if split != Split::Val {
            anyhow::bail!("--calibrate fits the temperature on the val split: use kiln val --calibrate");
        }
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
    let report = evaluate_run(&run, split, &options)?;
    print_split_report(&report);
    let stem = if report.tta.is_some() { format!("{}_tta", split.name()) } else { split.name().to_string() };
    println!("wrote {} and {}", run.metrics(&stem).display(), run.confusion_matrix(&stem).display());
    Ok(())
}
