//! `kiln infer` on a detection model: boxes per image, in the image's own pixels, as a table, JSON lines or CSV.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use kiln_infer::nms::{Detection, NmsOverrides};
use kiln_infer::{file_batches_with, weighted_boxes_fusion, Detector, FileBatch, Model, WbfConfig};

use super::output::Format;
use kiln_infer::coco_results::{CocoGroundTruth, CocoResults};
use kiln_infer::listing::{write_error, write_header, Listed};

/// NMS settings given on the command line, each replacing the model's (or the run's) own.
#[derive(Args, Debug, Clone, Default)]
pub struct NmsFlags {
    /// IoU above which a lower-scored box of the same class is suppressed.
    #[arg(long)]
    pub iou: Option<f32>,
    /// Detections scoring below this are dropped.
    #[arg(long)]
    pub score: Option<f32>,
    /// At most this many detections per image.
    #[arg(long)]
    pub max_det: Option<usize>,
    /// Suppress across classes.
    #[arg(long)]
    pub agnostic: bool,
}

impl NmsFlags {
    pub fn overrides(&self) -> NmsOverrides {
        NmsOverrides {
            iou_threshold: self.iou,
            score_threshold: self.score,
            max_detections: self.max_det,
            class_agnostic: self.agnostic.then_some(true),
            pre_nms_top_k: None,
        }
    }
}

/// NMS overrides for a detection model (default: the settings in its metadata) and ensembling.
#[derive(Args, Debug, Clone)]
pub struct NmsArgs {
    #[command(flatten)]
    pub flags: NmsFlags,
    /// With several --model files: the IoU above which weighted boxes fusion merges their boxes.
    #[arg(long, default_value_t = 0.55)]
    pub wbf_iou: f32,
}

impl Default for NmsArgs {
    fn default() -> Self {
        Self { flags: NmsFlags::default(), wbf_iou: WbfConfig::default().iou_threshold }
    }
}

/// Runs `models` (detect models; several are fused by weighted boxes fusion) over `files`, writing each image's
/// detections as they come (COCO results: all at the end).
/// What to write besides the detections themselves.
pub struct DetectOutput<'a> {
    pub format: Format,
    pub coco_gt: Option<&'a CocoGroundTruth>,
    /// A folder for copies of the images with their boxes drawn.
    pub save_vis: Option<&'a Path>,
}

pub fn run(
    models: Vec<Model>,
    files: &[PathBuf],
    batch: usize,
    nms: &NmsArgs,
    output: &DetectOutput,
) -> anyhow::Result<()> {
    let (format, coco_gt) = (output.format, output.coco_gt);
    if let Some(dir) = output.save_vis {
        std::fs::create_dir_all(dir).with_context(|| format!("--save-vis {}", dir.display()))?;
    }
    let mut vis_names = std::collections::HashSet::new();
    let mut detectors = Vec::with_capacity(models.len());
    for model in models {
        let path = model.path().to_path_buf();
        let detector = Detector::new(model)?;
        let settings = nms.flags.overrides().apply(*detector.nms());
        if let Some(first) = detectors.first() {
            let first: &Detector = first;
            // Fused models must see the same classes in the same images.
            let reads = |d: &Detector| format!("{:?} (EXIF orientation {})", d.class_names(), d.exif());
            anyhow::ensure!(
                (first.class_names(), first.exif()) == (detector.class_names(), detector.exif()),
                "{} detects {}, {} detects {}: fused models must share their classes and read images alike",
                first.model().path().display(),
                reads(first),
                path.display(),
                reads(&detector)
            );
        }
        detectors.push(detector.with_nms(settings)?);
    }
    let names = detectors[0].class_names().to_vec();
    let wbf = WbfConfig { iou_threshold: nms.wbf_iou, ..WbfConfig::default() };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let listing = format.listing();
    if let Some(listing) = listing {
        write_header::<Vec<Detection>>(&mut out, listing)?;
    }
    let mut failed = 0;
    let mut coco = CocoResults::new(&names, coco_gt)?;
    // Images (and so boxes, drawings and COCO results) in the frame the models were trained in.
    for FileBatch { images, paths, unreadable } in file_batches_with(files, batch, detectors[0].exif()) {
        for (path, reason) in &unreadable {
            failed += 1;
            match listing {
                Some(listing) => write_error::<Vec<Detection>>(&mut out, listing, path, reason)?,
                None => eprintln!("{}: {reason}", path.display()),
            }
        }
        if images.is_empty() {
            continue;
        }
        let mut per_model = Vec::with_capacity(detectors.len());
        for detector in &detectors {
            per_model.push(detector.predict_batch(&images)?);
        }
        let fused: Vec<Vec<Detection>> = (0..images.len())
            .map(|i| {
                if per_model.len() == 1 {
                    per_model[0][i].clone()
                } else {
                    let models: Vec<Vec<Detection>> = per_model.iter().map(|m| m[i].clone()).collect();
                    weighted_boxes_fusion(&models, None, &wbf)
                }
            })
            .collect();
        for ((path, detections), image) in paths.iter().zip(fused).zip(&images) {
            if let Some(dir) = output.save_vis {
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
                // Inputs from different folders may share a name: number the later ones.
                let mut name = format!("{stem}.png");
                let mut n = 2;
                while !vis_names.insert(name.clone()) {
                    name = format!("{stem}_{n}.png");
                    n += 1;
                }
                kiln_train::detect::drawing::save_detections(&dir.join(name), image, &detections, &names)?;
            }
            match listing {
                Some(listing) => detections.write(&mut out, listing, path, &names)?,
                None => {
                    if let Err(reason) = coco.add(path, &detections) {
                        failed += 1;
                        eprintln!("{}: {reason}", path.display());
                    }
                }
            }
        }
        out.flush()?;
    }
    if format == Format::Coco {
        writeln!(out, "{}", serde_json::to_string(&coco.results)?)?;
    }
    if failed > 0 {
        eprintln!("{failed} of {} image(s) could not be read or placed", files.len());
    }
    Ok(())
}
