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
    /// Classification: test-time augmentation (the image and its mirror, at each --tta-scales scale).
    #[command(flatten)]
    pub tta: super::eval::TtaFlags,
    /// Classification: write a Grad-CAM overlay per image into DIR (<stem>_gradcam.png), for the predicted class.
    #[arg(long, value_name = "DIR")]
    pub gradcam: Option<PathBuf>,
    /// With --gradcam: explain this class instead of the predicted one.
    #[arg(long, value_name = "CLASS", requires = "gradcam")]
    pub gradcam_class: Option<String>,
}

pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let run = RunDir::open(&args.run)?;
    let task = kiln_train::TrainConfig::load(&run.config())?.task;
    if task != kiln_train::TaskKind::Classify && args.tta.tta()? != kiln_train::classify::tta::Tta::default() {
        anyhow::bail!("--tta and --tta-scales are for classification runs; this is a {} run", task.name());
    }
    match task {
        kiln_train::TaskKind::Detect => return predict_detections(&run, &args),
        kiln_train::TaskKind::Ocr => return predict_lines(&run, &args),
        kiln_train::TaskKind::Classify => {}
    }
    let options = PredictOptions {
        which: args.checkpoint,
        top_k: args.top_k,
        device: args.device,
        batch: args.batch,
        tta: args.tta.tta()?,
    };
    let predictions = predict(&run, &args.inputs, &options)?;
    print_predictions(&predictions, args.format)?;
    if let Some(dir) = &args.gradcam {
        let readable: Vec<PathBuf> = predictions.iter().filter(|p| p.error.is_none()).map(|p| p.path.clone()).collect();
        let cam_options = kiln_train::classify::gradcam::GradCamOptions {
            which: args.checkpoint,
            class: args.gradcam_class.clone(),
            device: options.device.clone(),
        };
        let cams = kiln_train::classify::gradcam::gradcam(&run, &readable, dir, &cam_options)?;
        eprintln!("wrote {} Grad-CAM overlay(s) to {}", cams.len(), dir.display());
    }
    let failed = predictions.iter().filter(|p| p.error.is_some()).count();
    if failed > 0 {
        eprintln!("{failed} of {} image(s) could not be read", predictions.len());
    }
    Ok(())
}

/// `kiln predict` on a detection run: the detections `kiln infer` gives on the exported model.
fn predict_detections(run: &RunDir, args: &PredictArgs) -> anyhow::Result<()> {
    use std::io::Write;
    anyhow::ensure!(
        matches!(args.format, Format::Table | Format::Json | Format::Csv),
        "kiln predict on a detection run prints table, json or csv (for COCO results export the run and use kiln infer)"
    );
    let files = kiln_train::classify::predict::expand_inputs(&args.inputs)?;
    let (names, results) =
        kiln_train::detect::predict::predict_detections(run, &files, args.checkpoint, args.device.as_deref())?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.format == Format::Csv {
        writeln!(out, "path,class,score,x1,y1,x2,y2,error")?;
    }
    let mut failed = 0;
    for r in &results {
        match (&r.detections, &r.error) {
            (Some(d), _) => super::infer_detect::write_detections(&mut out, args.format, &r.path, d, &names)?,
            (None, reason) => {
                failed += 1;
                let reason = reason.as_deref().unwrap_or("not read");
                super::infer_detect::write_error(&mut out, args.format, &r.path, reason)?;
            }
        }
    }
    out.flush()?;
    if failed > 0 {
        eprintln!("{failed} of {} image(s) could not be read", results.len());
    }
    Ok(())
}

/// `kiln predict` on an OCR run: the text `kiln infer` reads with the exported model (greedy decoding).
fn predict_lines(run: &RunDir, args: &PredictArgs) -> anyhow::Result<()> {
    use std::io::Write;
    anyhow::ensure!(args.format != Format::Coco, "--format coco is for detection models");
    let files = kiln_train::classify::predict::expand_inputs(&args.inputs)?;
    let results =
        kiln_train::ocr::predict::predict_lines(run, &files, args.checkpoint, args.device.as_deref(), args.batch)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    super::infer_ocr::write_header(&mut out, args.format)?;
    let mut failed = 0;
    for r in &results {
        match &r.text {
            Some(text) => {
                let reading =
                    kiln_infer::Reading { text: text.clone(), confidence: r.confidence, chars: r.chars.clone() };
                super::infer_ocr::write_reading(&mut out, args.format, &r.path, &reading)?;
            }
            None => {
                failed += 1;
                super::infer_ocr::write_error(
                    &mut out,
                    args.format,
                    &r.path,
                    r.error.as_deref().unwrap_or("not read"),
                )?;
            }
        }
    }
    out.flush()?;
    if failed > 0 {
        eprintln!("{failed} of {} image(s) could not be read", results.len());
    }
    Ok(())
}
