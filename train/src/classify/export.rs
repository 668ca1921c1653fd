//! `kiln export onnx`: a run's checkpoint as a self-describing ONNX model that computes what the libtorch model
//! computes (logits and softmax probabilities), written atomically.

use kiln_export::{Attr, Dim, Graph, ModelMetadata, TemperatureScaling, TrainingInfo};
use kiln_models::ImageClassifier;

use crate::checkpoint;
use crate::config::TaskKind;
use crate::data::Normalize;
use crate::engine::Task;
use crate::export::{declare_output, model_bytes, rgb_input, GraphDescription, ONNX_FLOAT, ONNX_FLOAT16};
pub use crate::export::{ExportOptions, ExportReport};
use crate::run_dir::RunDir;
use crate::Result;

/// The graph's shape and preprocessing, independent of where the model came from.
#[derive(Clone, Debug)]
pub struct GraphSpec {
    pub img_size: u32,
    pub normalize: Normalize,
    /// timm's evaluation `crop_pct` (`resize: center_crop`); `None` stretches.
    pub eval_crop_pct: Option<f64>,
    pub class_names: Vec<String>,
    pub variant: String,
    pub training: TrainingInfo,
    /// Temperature scaling folded in: the logits are divided by it before the softmax.
    pub temperature: Option<TemperatureScaling>,
}

/// Builds the ONNX model of `model`: input `images` `[N, 3, S, S]`, outputs `logits` and `probs`, with metadata.
pub fn classifier_onnx(
    model: &ImageClassifier,
    spec: &GraphSpec,
    options: &ExportOptions,
) -> Result<(Vec<u8>, ModelMetadata, usize)> {
    let (compute, io) = options.elem_types();
    let mut g = Graph::new(options.opset, compute)?;
    let batch = if options.dynamic_batch { Dim::Symbolic("batch".into()) } else { Dim::Fixed(1) };
    let s = spec.img_size as i64;
    let classes = spec.class_names.len() as i64;
    let images = g.input("images", io, &[batch.clone(), Dim::Fixed(3), Dim::Fixed(s), Dim::Fixed(s)])?;
    let x = if io != compute { g.op("Cast", &[&images], vec![Attr::Int("to", ONNX_FLOAT16)])? } else { images };
    let logits = model.emit(&mut g, &x)?;
    let logits = if io != compute { g.op("Cast", &[&logits], vec![Attr::Int("to", ONNX_FLOAT)])? } else { logits };
    let logits = match &spec.temperature {
        Some(scaling) => {
            // The logits are in the graph's output type here: float32, or float16 with fp16 inputs and outputs.
            let value = [scaling.temperature as f32];
            let t = if io == compute && options.half {
                g.constant("temperature", &[], &value)?
            } else {
                g.constant_f32("temperature", &[], &value)?
            };
            g.op("Div", &[&logits, &t], vec![])?
        }
        None => logits,
    };
    let probs = g.op("Softmax", &[&logits], vec![Attr::Int("axis", -1)])?;
    let out_dims = [batch.clone(), Dim::Fixed(classes)];
    let outputs = vec![
        declare_output(
            &mut g,
            &logits,
            "logits",
            io,
            &out_dims,
            if spec.temperature.is_some() {
                "class scores divided by the calibration temperature, one per class_names entry"
            } else {
                "unnormalised class scores, one per class_names entry"
            },
        )?,
        declare_output(&mut g, &probs, "probs", io, &out_dims, "softmax probabilities over class_names")?,
    ];
    let batch_meta = if options.dynamic_batch { None } else { Some(1) };
    let description = GraphDescription {
        task: TaskKind::Classify,
        architecture: "convnext".into(),
        variant: spec.variant.clone(),
        class_names: spec.class_names.clone(),
        input: rgb_input(
            vec![batch_meta, Some(3), Some(s), Some(s)],
            io,
            if spec.eval_crop_pct.is_some() { "center_crop" } else { "stretch" },
            spec.eval_crop_pct.map(|p| p as f32),
            [spec.img_size, spec.img_size],
            spec.normalize,
        ),
        outputs,
        training: spec.training.clone(),
        nms: None,
        ctc: None,
        temperature_scaling: spec.temperature.clone(),
    };
    model_bytes(g, description, options)
}

/// The graph spec of a classification run's checkpoint: its size, preprocessing and classes, and with
/// `options.calibrated` the temperature (see [`run_temperature`]).
pub fn graph_spec<T: Task<Model = ImageClassifier>>(
    run: &RunDir,
    ckpt: &checkpoint::Checkpoint,
    options: &ExportOptions,
) -> Result<GraphSpec> {
    options.refuse_nms(TaskKind::Classify)?;
    let config = &ckpt.state.config;
    Ok(GraphSpec {
        img_size: config.img_size,
        normalize: config.normalize,
        eval_crop_pct: config.eval_crop_pct,
        class_names: ckpt.state.class_names.clone(),
        variant: config.model.clone(),
        training: TrainingInfo { epoch: ckpt.state.epoch, metrics: ckpt.state.val_metrics.clone() },
        temperature: if options.calibrated { Some(run_temperature::<T>(run, options, ckpt)?) } else { None },
    })
}

/// The temperature of the checkpoint being exported: the run's `calibration.json` when it was fitted on this
/// checkpoint, else fitted on the validation split now (and saved).
fn run_temperature<T: Task<Model = ImageClassifier>>(
    run: &RunDir,
    options: &ExportOptions,
    ckpt: &checkpoint::Checkpoint,
) -> Result<TemperatureScaling> {
    let saved =
        super::calibration::read_calibration(run)?.filter(|c| c.checkpoint == ckpt.path && c.epoch == ckpt.state.epoch);
    let calibration = match saved {
        Some(c) => c,
        None => {
            let eval = crate::engine::EvalOptions { which: options.which, ..Default::default() };
            let c = super::calibration::calibrate_run::<T>(run, &eval)?;
            eprintln!(
                "fitted temperature {:.4} on {} val images (NLL {:.4} -> {:.4}, ECE {:.4} -> {:.4})",
                c.temperature, c.images, c.nll_before, c.nll_after, c.ece_before, c.ece_after
            );
            c
        }
    };
    Ok(TemperatureScaling {
        temperature: calibration.temperature,
        fitted_on: calibration.split.name().into(),
        images: calibration.images,
        nll_before: calibration.nll_before,
        nll_after: calibration.nll_after,
        ece_before: calibration.ece_before,
        ece_after: calibration.ece_after,
    })
}
