//! What every task's `kiln export onnx` shares: the options, the report, where the file goes, and the checks
//! made before anything is written; int8 exports are [`int8`].

pub mod int8;

use std::path::{Path, PathBuf};

use kiln_export::{
    CtcSettings, Dim, ElemType, Graph, InputSpec, ModelMetadata, NmsSettings, OutputSpec, TemperatureScaling,
    TrainingInfo, Value, METADATA_KEY, SCHEMA_VERSION,
};
use kiln_infer::nms::NmsOverrides;

use crate::config::TaskKind;
use crate::data::Normalize;
use crate::run_dir::{RunDir, Which};
use crate::{Error, Result};

/// ONNX's data type number for float32 (Cast's `to`).
pub const ONNX_FLOAT: i64 = 1;
/// ONNX's data type number for float16.
pub const ONNX_FLOAT16: i64 = 10;

/// How to export.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportOptions {
    pub which: Which,
    /// The file to write; by default `<run>/weights/<checkpoint>[-fp16].onnx`.
    pub out: Option<PathBuf>,
    pub opset: i64,
    /// A batch dimension chosen at run time instead of 1.
    pub dynamic_batch: bool,
    /// fp16 weights and compute.
    pub half: bool,
    /// With `half`: fp16 graph inputs and outputs too (else they stay fp32, converted inside the graph).
    pub half_io: bool,
    /// Detection: changes to the run's NMS settings, for the metadata (and the graph with `nms_in_graph`).
    pub nms: NmsOverrides,
    /// Detection: non-maximum suppression inside the graph, which then returns at most `max_detections` boxes per
    /// image (`num_detections`, `det_boxes`, `det_scores`, `det_classes`) instead of every candidate.
    pub nms_in_graph: bool,
    /// An int8 model instead of a float one (`--int8`), made from the fp32 export.
    pub int8: Option<crate::export::int8::Int8Request>,
    /// Classification: divide the logits by the run's fitted temperature (`calibration.json`, fitted on the
    /// validation split now when the run has none for this checkpoint), so that `probs` are calibrated.
    pub calibrated: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            which: Which::Best,
            out: None,
            opset: 17,
            dynamic_batch: false,
            half: false,
            half_io: false,
            nms: NmsOverrides::default(),
            nms_in_graph: false,
            int8: None,
            calibrated: false,
        }
    }
}

impl ExportOptions {
    /// The element types of the graph's compute and of its inputs/outputs.
    pub fn elem_types(&self) -> (ElemType, ElemType) {
        let compute = if self.half { ElemType::F16 } else { ElemType::F32 };
        let io = if self.half && self.half_io { ElemType::F16 } else { ElemType::F32 };
        (compute, io)
    }

    /// Refuses NMS settings for a `task` that has no boxes.
    pub fn refuse_nms(&self, task: TaskKind) -> Result<()> {
        if self.nms_in_graph || !self.nms.is_empty() {
            return Err(Error::InvalidSetting {
                key: "nms".into(),
                reason: format!("NMS settings are for detection runs, not {}", task.name()),
            });
        }
        Ok(())
    }

    /// Refuses temperature scaling for a `task` whose outputs are not class scores of whole images.
    pub fn refuse_calibrated(&self, task: TaskKind) -> Result<()> {
        if self.calibrated {
            return Err(Error::InvalidSetting {
                key: "calibrated".into(),
                reason: format!("temperature scaling is for classifiers; this is a {} run", task.name()),
            });
        }
        Ok(())
    }
}

/// The metadata of an RGB image input `images` in NCHW layout: its shape (`None` for a dimension chosen at run
/// time), element type, resize rule (`stretch`, `center_crop`, `letterbox`, `fit_height`), the size it resizes to
/// and the normalisation.
pub fn rgb_input(
    shape: Vec<Option<i64>>,
    elem: ElemType,
    resize: &str,
    crop_pct: Option<f32>,
    size: [u32; 2],
    normalize: Normalize,
) -> InputSpec {
    InputSpec {
        name: "images".into(),
        shape,
        layout: "NCHW".into(),
        dtype: dtype_name(elem).into(),
        color: "RGB".into(),
        resize: resize.into(),
        crop_pct,
        size,
        exif: None,
        mean: normalize.mean,
        std: normalize.std,
    }
}

/// What a task's graph says about itself; [`model_bytes`] adds what every export shares.
pub struct GraphDescription {
    pub task: TaskKind,
    pub architecture: String,
    pub variant: String,
    pub class_names: Vec<String>,
    pub input: InputSpec,
    pub outputs: Vec<OutputSpec>,
    pub training: TrainingInfo,
    pub nms: Option<NmsSettings>,
    pub ctc: Option<CtcSettings>,
    pub temperature_scaling: Option<TemperatureScaling>,
}

/// The finished graph `g` as ONNX bytes with kiln's metadata (schema and kiln version, precision, opset beside
/// the task's description); returns the bytes, the metadata and the node count.
pub fn model_bytes(
    g: Graph,
    description: GraphDescription,
    options: &ExportOptions,
) -> Result<(Vec<u8>, ModelMetadata, usize)> {
    let GraphDescription {
        task,
        architecture,
        variant,
        class_names,
        input,
        outputs,
        training,
        nms,
        ctc,
        temperature_scaling,
    } = description;
    let nodes = g.node_count();
    let metadata = ModelMetadata {
        schema_version: SCHEMA_VERSION,
        kiln_version: env!("CARGO_PKG_VERSION").into(),
        task: task.name().into(),
        architecture,
        variant,
        class_names,
        input,
        outputs,
        precision: if options.half { "fp16" } else { "fp32" }.into(),
        opset: options.opset,
        training,
        nms,
        ctc,
        quantization: None,
        temperature_scaling,
    };
    let onnx = g.into_model(&metadata.variant, &[(METADATA_KEY, metadata.to_json())]);
    Ok((kiln_export::to_bytes(&onnx)?, metadata, nodes))
}

/// What an export wrote.
#[derive(Clone, Debug)]
pub struct ExportReport {
    pub path: PathBuf,
    pub bytes: usize,
    pub nodes: usize,
    pub metadata: ModelMetadata,
    /// int8 exports: the plan, calibration and comparison.
    pub int8: Option<crate::export::int8::Int8Report>,
}

/// The metadata's name of an element type.
pub fn dtype_name(elem: ElemType) -> &'static str {
    match elem {
        ElemType::F16 => "float16",
        ElemType::I64 => "int64",
        ElemType::F32 => "float32",
    }
}

/// Declares `value` as the graph output `name` and returns its metadata entry, whose shape (`null` for a
/// symbolic dimension) and dtype are the graph's own.
pub fn declare_output(
    g: &mut Graph,
    value: &Value,
    name: &str,
    elem: ElemType,
    dims: &[Dim],
    meaning: &str,
) -> Result<OutputSpec> {
    g.output(value, name, elem, dims)?;
    let shape = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(v) => Some(*v),
            Dim::Symbolic(_) => None,
        })
        .collect();
    Ok(OutputSpec { name: name.into(), shape, dtype: dtype_name(elem).into(), meaning: meaning.into() })
}

/// The checkpoint to export and the file to write, after checking that the output directory exists and the
/// opset is supported (so that a bad option fails before the model is built).
pub fn plan_export(run: &RunDir, options: &ExportOptions) -> Result<(PathBuf, PathBuf)> {
    let ckpt_path = run.checkpoint(options.which);
    let out = options.out.clone().unwrap_or_else(|| {
        let stem = ckpt_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
        let suffix = if options.int8.is_some() {
            "-int8"
        } else if options.half {
            "-fp16"
        } else {
            ""
        };
        ckpt_path.with_file_name(format!("{stem}{suffix}.onnx"))
    });
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(Error::Io {
            path: out.clone(),
            source: std::io::Error::other("the output directory does not exist"),
        });
    }
    Graph::new(options.opset, ElemType::F32)?;
    if let Some(int8) = &options.int8 {
        if options.half {
            return Err(Error::InvalidSetting {
                key: "int8".into(),
                reason: "--int8 and --half are different precisions; export them one at a time".into(),
            });
        }
        if let crate::export::int8::CalibSource::Folder(dir) = &int8.source {
            if !dir.is_dir() {
                return Err(Error::Int8 { path: dir.clone(), reason: "the calibration folder does not exist".into() });
            }
        }
        if int8.compare && crate::export::int8::reference_paths(&out, &ckpt_path).contains(&out) {
            return Err(Error::Int8 {
                path: out,
                reason: "this name is taken by the fp32/fp16 reference the comparison writes; choose another --out"
                    .into(),
            });
        }
    }
    Ok((ckpt_path, out))
}

/// Writes the export `build` makes for `options` to `out`: the float graph, or with `options.int8` the int8
/// model made from it (see [`crate::int8`]) with the `run`'s data and its task's metric.
pub fn finish(
    run: &crate::export::int8::RunData<'_>,
    options: &ExportOptions,
    checkpoint: &Path,
    out: &Path,
    build: &crate::export::int8::BuildGraph<'_>,
) -> Result<ExportReport> {
    if let Some(request) = &options.int8 {
        return crate::export::int8::export(run, options, request, checkpoint, out, build);
    }
    let (bytes, metadata, nodes) = build(options)?;
    crate::fsutil::write_atomic(out, &bytes)?;
    Ok(ExportReport { path: out.to_path_buf(), bytes: bytes.len(), nodes, metadata, int8: None })
}
