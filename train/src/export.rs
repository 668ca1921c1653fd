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
        ckpt_path.with_file_name(format!("{stem}{}.onnx", if options.half { "-fp16" } else { "" }))
    });
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(Error::Io {
            path: out.clone(),
            source: std::io::Error::other("the output directory does not exist"),
        });
    }
    Graph::new(options.opset, ElemType::F32)?;
    Ok((ckpt_path, out))
}
