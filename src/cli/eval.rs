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
    let task = kiln_train::TrainConfig::load(&run.config())?.task;
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
    let options = EvalOptions { which: args.checkpoint, data: args.data, device: args.device };
    let report = evaluate_run(&run, split, &options)?;
    print_split_report(&report);
    println!("wrote {} and {}", run.metrics(split.name()).display(), run.confusion_matrix(split.name()).display());
    Ok(())
}
