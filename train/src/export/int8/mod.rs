//! `kiln export onnx --int8 static|dynamic`: an int8 model made from the run's float export, for any task.
//!
//! Static: calibration images ([`calibrate`]) run through the float graph on ONNX Runtime, their activation
//! statistics give the ranges, and kiln-export writes the QDQ graph. Which op families are computed in int8 is
//! decided by measuring on this CPU at the model's size (unless `--int8-ops` names them): the candidate plans are
//! timed at batch 1 and the fastest is kept, since a plan that is faster on one CPU (or model size) can be slower
//! on another. Dynamic: linear layers only, no calibration.
//!
//! With the comparison on (the default) the fp32 and fp16 models are written beside the int8 one and
//! [`compare`] measures all three: size, the task's metric and agreement with fp32 on the val split, latency.

pub mod calibrate;
pub mod compare;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kiln_export::quantize::{observation_points, quantize_dynamic, quantize_static, StaticOptions};
pub use kiln_export::quantize::{CalibMethod, OpFamily, QuantSummary};
use kiln_export::{CalibrationInfo, ModelMetadata, QuantizationInfo, METADATA_KEY};
use serde::Serialize;

use crate::config::TrainConfig;
use crate::data::Split;
use crate::export::{ExportOptions, ExportReport};
use crate::fsutil::write_atomic;
use crate::{Error, Result};

/// The run an int8 export comes from, and what its task gives calibration and the comparison (the generic
/// export fills it from [`crate::engine::Task`], so int8 names no task).
#[derive(Clone, Copy)]
pub struct RunData<'a> {
    pub config: &'a TrainConfig,
    /// The images of a split of the run's dataset, with their class index where the task labels whole images.
    pub split_images: fn(&TrainConfig, Split) -> Result<crate::data::LabelledImages>,
    /// The task's metric of an exported model, as the comparison prints it (e.g. "CER").
    pub metric_name: &'static str,
    /// That metric of the model file on the val split (`None` where it comes from the images' class labels).
    pub metric: fn(&TrainConfig, &Path) -> Result<Option<f64>>,
}

/// Static (calibrated activation ranges) or dynamic (ranges measured at run time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Mode {
    Static,
    Dynamic,
}

impl Int8Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Dynamic => "dynamic",
        }
    }
}

impl std::str::FromStr for Int8Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "static" => Ok(Self::Static),
            "dynamic" => Ok(Self::Dynamic),
            other => Err(format!("'{other}': expected static or dynamic")),
        }
    }
}

/// Where calibration images come from.
#[derive(Clone, Debug, PartialEq)]
pub enum CalibSource {
    /// Every image under a folder (recursively).
    Folder(PathBuf),
    /// A split of the run's own dataset.
    Split(Split),
}

/// What `--int8` asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Request {
    pub mode: Int8Mode,
    pub source: CalibSource,
    /// At most this many calibration images, spread evenly over the source.
    pub images: usize,
    pub method: CalibMethod,
    pub per_channel: bool,
    /// The op families to compute in int8; `None` times the candidate plans on this CPU and keeps the fastest.
    pub families: Option<BTreeSet<OpFamily>>,
    /// Also write fp32 and fp16 and compare the three (`<out>.comparison.json`).
    pub compare: bool,
}

impl Default for Int8Request {
    fn default() -> Self {
        Self {
            mode: Int8Mode::Static,
            source: CalibSource::Split(Split::Val),
            images: 64,
            method: CalibMethod::MinMax,
            per_channel: true,
            families: None,
            compare: true,
        }
    }
}

/// The plans `auto` measures: the pointwise layers alone, with the dense convolutions, with the depthwise ones too,
/// and the convolutions without the pointwise layers.
pub fn candidate_plans() -> Vec<BTreeSet<OpFamily>> {
    use OpFamily::*;
    vec![[Linear].into(), [Linear, Conv].into(), [Linear, Conv, Depthwise].into(), [Conv, Depthwise].into()]
}

/// One plan's latency while choosing.
#[derive(Clone, Debug, Serialize)]
pub struct PlanTiming {
    pub families: Vec<String>,
    pub ms: f64,
}

/// What an int8 export did besides writing the model.
#[derive(Clone, Debug, Serialize)]
pub struct Int8Report {
    pub summary: QuantSummary,
    /// fp32 at batch 1 while choosing the plan (ONNX Runtime, one thread), and each plan measured.
    pub fp32_ms: Option<f64>,
    pub plans: Vec<PlanTiming>,
    pub calibration_images: usize,
    pub calibration_skipped: usize,
    /// The fp32 and fp16 models written beside it for the comparison.
    pub references: Vec<PathBuf>,
    /// Why there is no fp16 model to compare, for a task that cannot export one.
    pub fp16_unavailable: Option<String>,
    pub comparison: Option<compare::Comparison>,
    pub comparison_path: Option<PathBuf>,
    /// Set when even the fastest plan ran slower than fp32 on this CPU (the model is still written).
    pub warning: Option<String>,
}

/// Builds the float graph for given options (a task's exporter), so that the int8 flow can ask for fp32 and fp16.
pub type BuildGraph<'a> = dyn Fn(&ExportOptions) -> Result<(Vec<u8>, ModelMetadata, usize)> + 'a;

/// The fp32 and fp16 reference files for an int8 export to `out`: `<checkpoint>.onnx` and
/// `<checkpoint>-fp16.onnx` in the same folder.
pub fn reference_paths(out: &Path, checkpoint: &Path) -> [PathBuf; 2] {
    let stem = checkpoint.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    [out.with_file_name(format!("{stem}.onnx")), out.with_file_name(format!("{stem}-fp16.onnx"))]
}

/// An int8 model made from a float one, with what it took.
pub struct Quantized {
    pub model: kiln_export::proto::ModelProto,
    pub metadata: ModelMetadata,
    pub report: Int8Report,
}

/// Quantizes the float `model` (whose kiln metadata is `fp32_meta`) as `request` asks. Calibration images from a
/// split need the `run`; `scratch` is a folder for temporary models.
pub fn quantize(
    model: &kiln_export::proto::ModelProto,
    fp32_meta: &ModelMetadata,
    request: &Int8Request,
    run: Option<&RunData<'_>>,
    scratch: &Path,
) -> Result<Quantized> {
    let (mut quantized, summary, plans, fp32_ms, calibration, used, skipped) = match request.mode {
        Int8Mode::Dynamic => {
            let (q, summary) = quantize_dynamic(model, request.per_channel)?;
            (q, summary, Vec::new(), None, None, 0, 0)
        }
        Int8Mode::Static => {
            let (images, source) = calibrate::calibration_images(&request.source, request.images, run)?;
            let all: BTreeSet<OpFamily> = OpFamily::ALL.into_iter().collect();
            let points = observation_points(model, &all);
            let preprocess = kiln_infer::Preprocess::from_metadata(fp32_meta)
                .map_err(|e| Error::Int8 { path: scratch.into(), reason: e.to_string() })?;
            let calib = calibrate::collect(model, &points, &images, &preprocess, scratch, &source)?;
            let plans_to_try = match &request.families {
                Some(f) => vec![f.clone()],
                None => candidate_plans(),
            };
            let mut built = Vec::new();
            for families in plans_to_try {
                let static_options = StaticOptions {
                    families: families.clone(),
                    method: request.method,
                    per_channel: request.per_channel,
                };
                let (q, summary) = quantize_static(model, &calib.stats, &static_options)?;
                if summary.quantized.is_empty() && request.families.is_none() {
                    continue;
                }
                built.push((families, q, summary));
            }
            if built.is_empty() {
                return Err(Error::Int8 {
                    path: scratch.into(),
                    reason: "the graph has no node kiln quantizes (linear, conv or depthwise)".into(),
                });
            }
            let (mut timings, mut fp32_ms) = (Vec::new(), None);
            let chosen = if built.len() > 1 {
                let probe = calib.first_input.as_deref().unwrap_or_default();
                let batch = fp32_meta_batch(fp32_meta);
                fp32_ms = Some(compare::time_bytes(&kiln_export::to_bytes(model)?, scratch, probe, batch)?);
                let mut best = 0;
                for (i, (families, q, _)) in built.iter().enumerate() {
                    let ms = compare::time_bytes(&kiln_export::to_bytes(q)?, scratch, probe, batch)?;
                    timings.push(PlanTiming { families: families.iter().map(|f| f.name().to_string()).collect(), ms });
                    if ms < timings[best].ms {
                        best = i;
                    }
                }
                best
            } else {
                0
            };
            let (_, q, summary) = built.swap_remove(chosen);
            let info = CalibrationInfo { method: request.method.name(), images: calib.used, source };
            (q, summary, timings, fp32_ms, Some(info), calib.used, calib.skipped)
        }
    };
    let mut metadata = fp32_meta.clone();
    metadata.precision = "int8".into();
    metadata.quantization = Some(QuantizationInfo {
        mode: request.mode.name().into(),
        families: summary.quantized.keys().cloned().collect(),
        per_channel: request.per_channel,
        calibration,
    });
    set_metadata(&mut quantized, &metadata);
    let report = Int8Report {
        summary,
        fp32_ms,
        plans: plans.clone(),
        calibration_images: used,
        calibration_skipped: skipped,
        references: Vec::new(),
        fp16_unavailable: None,
        comparison: None,
        comparison_path: None,
        warning: match (fp32_ms, plans.iter().map(|p| p.ms).min_by(f64::total_cmp)) {
            (Some(fp32), Some(best)) if best > fp32 => Some(format!(
                "every int8 plan ran slower than fp32 on this CPU (best {best:.2} ms, fp32 {fp32:.2} ms): deploy the fp32 model"
            )),
            _ => None,
        },
    };
    Ok(Quantized { model: quantized, metadata, report })
}

/// Quantizes an exported float model file (one with kiln's metadata, which says how to preprocess calibration
/// images; they come from a folder, since there is no run) and writes the int8 model to `out`.
pub fn quantize_file(path: &Path, request: &Int8Request, out: &Path) -> Result<ExportReport> {
    let file_err = |reason: String| Error::Int8 { path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let model = kiln_export::from_bytes(&bytes).map_err(|e| file_err(format!("not an ONNX model ({e})")))?;
    let meta = ModelMetadata::from_model(&model)
        .map_err(|e| file_err(e.to_string()))?
        .ok_or_else(|| file_err("the model has no kiln metadata, so kiln does not know how to preprocess calibration images; export it with kiln".into()))?;
    if meta.precision != "fp32" {
        return Err(file_err(format!("the model is {}, int8 is made from an fp32 model", meta.precision)));
    }
    if request.mode == Int8Mode::Static && !matches!(request.source, CalibSource::Folder(_)) {
        return Err(file_err("quantizing a file needs --calib DIR (a split needs --run)".into()));
    }
    let scratch = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !scratch.is_dir() {
        return Err(Error::Io {
            path: out.into(),
            source: std::io::Error::other("the output directory does not exist"),
        });
    }
    let q = quantize(&model, &meta, request, None, scratch)?;
    let bytes = kiln_export::to_bytes(&q.model)?;
    write_atomic(out, &bytes)?;
    Ok(ExportReport {
        path: out.into(),
        bytes: bytes.len(),
        nodes: q.model.graph.node.len(),
        metadata: q.metadata,
        int8: Some(q.report),
    })
}

/// The int8 export of a run: see the module documentation. Nothing is written until the int8 model is built.
pub fn export(
    run: &RunData<'_>,
    options: &ExportOptions,
    request: &Int8Request,
    checkpoint: &Path,
    out: &Path,
    build: &BuildGraph<'_>,
) -> Result<ExportReport> {
    let fp32_options = ExportOptions { half: false, half_io: false, int8: None, ..options.clone() };
    let (fp32_bytes, fp32_meta, _) = build(&fp32_options)?;
    let model = kiln_export::from_bytes(&fp32_bytes)?;
    let scratch = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let Quantized { model: quantized, metadata, mut report } =
        quantize(&model, &fp32_meta, request, Some(run), &scratch)?;
    let bytes = kiln_export::to_bytes(&quantized)?;
    write_atomic(out, &bytes)?;
    let nodes = quantized.graph.node.len();
    if request.compare {
        let [fp32_path, fp16_path] = reference_paths(out, checkpoint);
        write_atomic(&fp32_path, &fp32_bytes)?;
        report.references = vec![fp32_path.clone()];
        // A task without an fp16 export (the text recognizer's LSTM) is compared without it.
        match build(&ExportOptions { half: true, half_io: false, int8: None, ..options.clone() }) {
            Ok((fp16_bytes, _, _)) => {
                write_atomic(&fp16_path, &fp16_bytes)?;
                report.references.push(fp16_path.clone());
            }
            Err(Error::InvalidSetting { key, reason }) if key == "half" => report.fp16_unavailable = Some(reason),
            Err(e) => return Err(e),
        }
        let mut models = vec![("fp32", fp32_path.as_path())];
        if report.references.len() == 2 {
            models.push(("fp16", fp16_path.as_path()));
        }
        models.push(("int8", out));
        let comparison = compare::compare(run, &models)?;
        let json_path = out.with_extension("comparison.json");
        let json = serde_json::to_string_pretty(&serde_json::json!({ "comparison": &comparison, "int8": &report }))
            .map_err(|e| Error::Int8 { path: json_path.clone(), reason: e.to_string() })?;
        write_atomic(&json_path, json.as_bytes())?;
        report.comparison = Some(comparison);
        report.comparison_path = Some(json_path);
    }
    Ok(ExportReport { path: out.to_path_buf(), bytes: bytes.len(), nodes, metadata, int8: Some(report) })
}

/// The batch the model is timed at while choosing a plan: its fixed batch, else 1.
fn fp32_meta_batch(meta: &ModelMetadata) -> usize {
    meta.input.shape.first().copied().flatten().unwrap_or(1) as usize
}

/// Replaces the model's kiln metadata entry.
fn set_metadata(model: &mut kiln_export::proto::ModelProto, metadata: &ModelMetadata) {
    match model.metadata_props.iter_mut().find(|p| p.key == METADATA_KEY) {
        Some(p) => p.value = metadata.to_json(),
        None => {
            let mut p = kiln_export::proto::StringStringEntryProto::new();
            p.key = METADATA_KEY.into();
            p.value = metadata.to_json();
            model.metadata_props.push(p);
        }
    }
}
