//! `kiln predict`: classify images and folders with a run's checkpoint (libtorch).

use std::path::PathBuf;

use clap::Args;

use kiln_infer::ListingFormat;
use kiln_train::engine::PredictOptions;
use kiln_train::tasks::predict;
use kiln_train::{RunDir, Which};

use super::output::Format;

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
    /// Classification: the classes listed per image (default 1).
    #[arg(long)]
    pub top_k: Option<usize>,
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
    let format = match args.format {
        Format::Table => ListingFormat::Table,
        Format::Json => ListingFormat::Json,
        Format::Csv => ListingFormat::Csv,
        Format::Coco => anyhow::bail!(
            "kiln predict prints table, json or csv; for COCO results export the run and use kiln infer --format coco"
        ),
    };
    let options = PredictOptions { which: args.checkpoint, device: args.device.clone(), batch: args.batch };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let summary = predict(&run, &args.inputs, &options, &predict_settings(&args), format, &mut out)?;
    drop(out);
    if let Some(dir) = &args.gradcam {
        let cam_options = kiln_train::classify::gradcam::GradCamOptions {
            which: args.checkpoint,
            class: args.gradcam_class.clone(),
            device: args.device.clone(),
        };
        let cams = kiln_train::classify::gradcam::gradcam(&run, &summary.read, dir, &cam_options)?;
        eprintln!("wrote {} Grad-CAM overlay(s) to {}", cams.len(), dir.display());
    }
    if summary.failed > 0 {
        eprintln!("{} of {} image(s) could not be read", summary.failed, summary.files);
    }
    Ok(())
}

/// The prediction settings the flags give, as the run's task reads them (`null`: the task's defaults): the
/// classes listed and test-time augmentation are classification's, and other tasks refuse them.
fn predict_settings(args: &PredictArgs) -> serde_json::Value {
    let mut settings = serde_json::Map::new();
    if let Some(k) = args.top_k {
        settings.insert("top_k".into(), k.into());
    }
    let tta = super::eval::tta_settings(&args.tta);
    if !tta.is_null() {
        settings.insert("tta".into(), tta);
    }
    if settings.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::Value::Object(settings)
    }
}
