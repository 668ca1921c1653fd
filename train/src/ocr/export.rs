//! `kiln export onnx` for an OCR run: the recognizer with its softmax inside the graph — input `images`
//! `[N, 3, H, W]` (fitted to the height, padded on the right; batch and width chosen at run time), output `probs`
//! `[N, W / 4, 1 + charset]` — and metadata naming the task, the charset as class names, the fit-height
//! preprocessing and how to decode (blank index, pixels per frame).

use kiln_export::{
    CtcSettings, Dim, ElemType, Graph, InputSpec, ModelMetadata, TrainingInfo, METADATA_KEY, SCHEMA_VERSION,
};
use kiln_models::text_line::BLANK;
use kiln_models::weights::{load_into, HeadPolicy};
use kiln_models::TextLineRecognizer;
use tch::{nn, Device};

use super::loader::WIDTH_STRIDE;
use super::task::recognizer_config;
use crate::checkpoint;
use crate::config::TaskKind;
use crate::data::Normalize;
use crate::export::{declare_output, dtype_name, plan_export, ExportOptions, ExportReport};
use crate::run_dir::RunDir;
use crate::{Error, Result};

/// The graph's input geometry and charset, independent of where the model came from.
#[derive(Clone, Debug)]
pub struct RecognizerGraphSpec {
    pub height: u32,
    /// The width lines are padded to (the metadata's; the graph takes any width).
    pub width: u32,
    pub normalize: Normalize,
    pub charset: Vec<String>,
    pub variant: String,
    pub training: TrainingInfo,
}

/// Builds the ONNX model of `model` with metadata; returns the bytes, the metadata and the node count.
pub fn recognizer_onnx(
    model: &TextLineRecognizer,
    spec: &RecognizerGraphSpec,
    options: &ExportOptions,
) -> Result<(Vec<u8>, ModelMetadata, usize)> {
    if options.half {
        return Err(Error::InvalidSetting {
            key: "half".into(),
            reason: "fp16 export of a text recognizer is not supported (ONNX Runtime's CPU LSTM computes in fp32 \
                     only)"
                .into(),
        });
    }
    if options.nms_in_graph || !options.nms.is_empty() {
        return Err(Error::InvalidSetting {
            key: "nms".into(),
            reason: "NMS settings are for detection runs, not ocr".into(),
        });
    }
    let mut g = Graph::new(options.opset, ElemType::F32)?;
    let batch = if options.dynamic_batch { Dim::Symbolic("batch".into()) } else { Dim::Fixed(1) };
    let h = spec.height as i64;
    let images = g.input(
        "images",
        ElemType::F32,
        &[batch.clone(), Dim::Fixed(3), Dim::Fixed(h), Dim::Symbolic("width".into())],
    )?;
    let probs = model.emit(&mut g, &images)?;
    let classes = spec.charset.len() as i64 + 1;
    let outputs = vec![declare_output(
        &mut g,
        &probs,
        "probs",
        ElemType::F32,
        &[batch, Dim::Symbolic("frames".into()), Dim::Fixed(classes)],
        "per-frame probabilities: class 0 is the CTC blank, class c > 0 is class_names[c - 1]; one frame per \
         ctc.width_stride input pixels; decode the line's frames with CTC (collapse repeats, drop blanks)",
    )?];
    let nodes = g.node_count();
    let metadata = ModelMetadata {
        schema_version: SCHEMA_VERSION,
        kiln_version: env!("CARGO_PKG_VERSION").into(),
        task: "ocr".into(),
        architecture: format!("{}-bilstm-ctc", model.config.backbone.name()),
        variant: spec.variant.clone(),
        class_names: spec.charset.clone(),
        input: InputSpec {
            name: "images".into(),
            shape: vec![if options.dynamic_batch { None } else { Some(1) }, Some(3), Some(h), None],
            layout: "NCHW".into(),
            dtype: dtype_name(ElemType::F32).into(),
            color: "RGB".into(),
            resize: "fit_height".into(),
            crop_pct: None,
            size: [spec.height, spec.width],
            mean: spec.normalize.mean,
            std: spec.normalize.std,
        },
        outputs,
        precision: "fp32".into(),
        opset: options.opset,
        training: spec.training.clone(),
        nms: None,
        ctc: Some(CtcSettings { blank: BLANK as usize, width_stride: WIDTH_STRIDE }),
        quantization: None,
        temperature_scaling: None,
    };
    let onnx = g.into_model(&spec.variant, &[(METADATA_KEY, metadata.to_json())]);
    Ok((kiln_export::to_bytes(&onnx)?, metadata, nodes))
}

/// Exports an OCR run's checkpoint; the file appears whole or not at all.
pub fn export_run(run: &RunDir, options: &ExportOptions) -> Result<ExportReport> {
    let (ckpt_path, out) = plan_export(run, options)?;
    let ckpt = checkpoint::load(&ckpt_path)?;
    let config = &ckpt.state.config;
    if config.task != TaskKind::Ocr {
        return Err(Error::Checkpoint { path: ckpt_path, reason: format!("a {} run, not ocr", config.task.name()) });
    }
    let charset = ckpt.state.class_names.clone();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = TextLineRecognizer::new(&vs.root(), &recognizer_config(config, charset.len()))?;
    load_into(&vs, ckpt.weights(), &ckpt.path, HeadPolicy::Strict, &[])?;
    let spec = RecognizerGraphSpec {
        height: config.ocr.height,
        width: config.ocr.width,
        normalize: config.normalize,
        charset,
        variant: config.model_name(),
        training: TrainingInfo { epoch: ckpt.state.epoch, metrics: ckpt.state.val_metrics.clone() },
    };
    let build = |o: &ExportOptions| tch::no_grad(|| recognizer_onnx(&model, &spec, o));
    crate::export::finish(config, options, &ckpt_path, &out, &build)
}
