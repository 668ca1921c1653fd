//! `kiln export onnx` for an OCR run: the recognizer with its softmax inside the graph — input `images`
//! `[N, 3, H, W]` (fitted to the height, padded on the right; batch and width chosen at run time), output `probs`
//! `[N, W / 4, 1 + charset]` — and metadata naming the task, the charset as class names, the fit-height
//! preprocessing and how to decode (blank index, pixels per frame).

use kiln_export::{CtcSettings, Dim, ElemType, Graph, ModelMetadata, TrainingInfo};
use kiln_models::text_line::BLANK;
use kiln_models::TextLineRecognizer;

use super::loader::WIDTH_STRIDE;
use super::settings::OcrSettings;
use crate::checkpoint;
use crate::config::TaskKind;
use crate::data::Normalize;
use crate::export::{declare_output, model_bytes, rgb_input, ExportOptions, GraphDescription};
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
    let description = GraphDescription {
        task: TaskKind::Ocr,
        architecture: format!("{}-bilstm-ctc", model.config.backbone.name()),
        variant: spec.variant.clone(),
        class_names: spec.charset.clone(),
        input: rgb_input(
            vec![if options.dynamic_batch { None } else { Some(1) }, Some(3), Some(h), None],
            ElemType::F32,
            "fit_height",
            None,
            [spec.height, spec.width],
            spec.normalize,
        ),
        outputs,
        training: spec.training.clone(),
        nms: None,
        ctc: Some(CtcSettings { blank: BLANK as usize, width_stride: WIDTH_STRIDE }),
        temperature_scaling: None,
    };
    model_bytes(g, description, options)
}

/// The graph spec of an OCR run's checkpoint: its line geometry, preprocessing and charset.
pub fn graph_spec(ckpt: &checkpoint::Checkpoint, options: &ExportOptions) -> Result<RecognizerGraphSpec> {
    options.refuse_calibrated(TaskKind::Ocr)?;
    options.refuse_nms(TaskKind::Ocr)?;
    let config = &ckpt.state.config;
    let ocr: OcrSettings = config.task_settings()?;
    Ok(RecognizerGraphSpec {
        height: ocr.height,
        width: ocr.width,
        normalize: config.normalize,
        charset: ckpt.state.class_names.clone(),
        variant: ocr.model_name(&config.model),
        training: TrainingInfo { epoch: ckpt.state.epoch, metrics: ckpt.state.val_metrics.clone() },
    })
}
