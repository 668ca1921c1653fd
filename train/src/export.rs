//! What every task's `kiln export onnx` shares: the options, the report, where the file goes, and the checks
//! made before anything is written.

use std::path::{Path, PathBuf};

use kiln_export::{Dim, ElemType, Graph, ModelMetadata, OutputSpec, Value};
use kiln_infer::nms::NmsOverrides;

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
    pub int8: Option<crate::int8::Int8Request>,
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
}

/// What an export wrote.
#[derive(Clone, Debug)]
pub struct ExportReport {
    pub path: PathBuf,
    pub bytes: usize,
    pub nodes: usize,
    pub metadata: ModelMetadata,
    /// int8 exports: the plan, calibration and comparison.
    pub int8: Option<crate::int8::Int8Report>,
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
        if let crate::int8::CalibSource::Folder(dir) = &int8.source {
            if !dir.is_dir() {
                return Err(Error::Int8 { path: dir.clone(), reason: "the calibration folder does not exist".into() });
            }
        }
        if int8.compare && crate::int8::reference_paths(&out, &ckpt_path).contains(&out) {
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
/// model made from it (see [`crate::int8`]).
pub fn finish(
    config: &crate::config::TrainConfig,
    options: &ExportOptions,
    checkpoint: &Path,
    out: &Path,
    build: &crate::int8::BuildGraph<'_>,
) -> Result<ExportReport> {
    if options.calibrated && config.task != crate::config::TaskKind::Classify {
        return Err(Error::InvalidSetting {
            key: "calibrated".into(),
            reason: format!("temperature scaling is for classifiers; this is a {} run", config.task.name()),
        });
    }
    if let Some(request) = &options.int8 {
        return crate::int8::export(config, options, request, checkpoint, out, build);
    }
    let (bytes, metadata, nodes) = build(options)?;
    crate::fsutil::write_atomic(out, &bytes)?;
    Ok(ExportReport { path: out.to_path_buf(), bytes: bytes.len(), nodes, metadata, int8: None })
}
