//! `kiln export onnx` for a detection run: the detector with its box decoding inside the graph — input `images`
//! `[N, 3, S, S]` (letterboxed, normalised), outputs `boxes` `[N, A, 4]` (xyxy, input pixels) and `scores`
//! `[N, A, C]` — and metadata naming the task, the classes, the letterbox preprocessing, what each output means
//! and the NMS settings validation used, so that an application reproduces what training measured.

use kiln_export::{
    emit_nms, Attr, Dim, ElemType, Graph, InputSpec, ModelMetadata, NmsSettings, TrainingInfo, Value, NMS_OUTPUTS,
};
use kiln_infer::nms::NmsConfig;
use kiln_infer::Exif;

use super::model::DetectorModel;
use super::settings::DetectSettings;
use crate::checkpoint;
use crate::config::TaskKind;
use crate::data::Normalize;
use crate::export::{
    declare_output, model_bytes, rgb_input, ExportOptions, GraphDescription, ONNX_FLOAT, ONNX_FLOAT16,
};
use crate::Result;

/// The graph's size, preprocessing and post-processing, independent of where the model came from.
#[derive(Clone, Debug)]
pub struct DetectorGraphSpec {
    pub img_size: u32,
    pub normalize: Normalize,
    pub class_names: Vec<String>,
    pub variant: String,
    pub nms: NmsConfig,
    pub training: TrainingInfo,
    /// The EXIF convention training read the images with; the deployed `Detector` reads them the same way.
    pub exif: Exif,
}

/// The metadata form of NMS settings.
pub fn nms_settings(nms: &NmsConfig) -> NmsSettings {
    NmsSettings {
        iou_threshold: nms.iou_threshold,
        score_threshold: nms.score_threshold,
        max_detections: nms.max_detections,
        class_agnostic: nms.class_agnostic,
        pre_nms_top_k: nms.pre_nms_top_k,
        in_graph: false,
    }
}

/// Builds the ONNX model of `model` with metadata; returns the bytes, the metadata and the node count. With
/// `options.nms_in_graph` the graph ends in non-maximum suppression with `spec.nms`
/// ([`kiln_export::emit_nms`]).
pub fn detector_onnx(
    model: &DetectorModel,
    spec: &DetectorGraphSpec,
    options: &ExportOptions,
) -> Result<(Vec<u8>, ModelMetadata, usize)> {
    let (compute, io) = options.elem_types();
    if let DetectorModel::FasterRcnn(_) = model {
        let refuse = |reason: &str| crate::Error::InvalidSetting { key: "export".into(), reason: reason.into() };
        if compute != ElemType::F32 || io != ElemType::F32 {
            return Err(refuse("a faster_rcnn detector exports in fp32 only (its proposals and RoIAlign run in fp32)"));
        }
        if options.opset < 16 {
            return Err(refuse("a faster_rcnn detector needs opset 16 or later (RoiAlign's coordinate mode)"));
        }
    }
    let mut g = Graph::new(options.opset, compute)?;
    let batch = if options.dynamic_batch { Dim::Symbolic("batch".into()) } else { Dim::Fixed(1) };
    let s = spec.img_size as i64;
    let classes = spec.class_names.len() as i64;
    let images = g.input("images", io, &[batch.clone(), Dim::Fixed(3), Dim::Fixed(s), Dim::Fixed(s)])?;
    let x = if io != compute { g.op("Cast", &[&images], vec![Attr::Int("to", ONNX_FLOAT16)])? } else { images };
    let (locations, (boxes, scores)) = match model {
        DetectorModel::Fcos(m) => (m.num_locations(s, s), m.emit(&mut g, &x, s, s)?),
        DetectorModel::FasterRcnn(m) => (m.num_candidates(), m.emit(&mut g, &x, s, s)?),
    };
    let (box_meaning, score_meaning) = match model {
        DetectorModel::Fcos(_) => (
            "one candidate box per feature-map location: x1, y1, x2, y2 in input (letterboxed) pixels, clamped to \
             the input; apply NMS with the `nms` settings and undo the letterbox",
            "per-class score of each candidate box, sqrt(sigmoid(class logit) * sigmoid(centerness)), one per \
             class_names entry",
        ),
        DetectorModel::FasterRcnn(_) => (
            "the image's best (proposal, class) candidates of Faster R-CNN: x1, y1, x2, y2 in input (letterboxed) \
             pixels, clamped to the input; apply NMS with the `nms` settings and undo the letterbox",
            "each candidate's softmax score in its class's column, 0 in the others (and in padding), one column \
             per class_names entry",
        ),
    };
    let cast = |g: &mut Graph, v: &Value, to: i64| g.op("Cast", &[v], vec![Attr::Int("to", to)]);
    let mut nms = nms_settings(&spec.nms);
    let outputs = if options.nms_in_graph {
        nms.in_graph = true;
        let (boxes, scores) = if compute != ElemType::F32 {
            (cast(&mut g, &boxes, ONNX_FLOAT)?, cast(&mut g, &scores, ONNX_FLOAT)?)
        } else {
            (boxes, scores)
        };
        let detections = emit_nms(&mut g, &boxes, &scores, locations, classes, &nms)?;
        let (det_boxes, det_scores) = if io != ElemType::F32 {
            (cast(&mut g, &detections.boxes, ONNX_FLOAT16)?, cast(&mut g, &detections.scores, ONNX_FLOAT16)?)
        } else {
            (detections.boxes, detections.scores)
        };
        let m = Dim::Fixed(nms.max_detections as i64);
        let [num_name, boxes_name, scores_name, classes_name] = NMS_OUTPUTS;
        vec![
            declare_output(
                &mut g,
                &detections.num_detections,
                num_name,
                ElemType::I64,
                std::slice::from_ref(&batch),
                "detections kept in each image (rows past it are padding)",
            )?,
            declare_output(
                &mut g,
                &det_boxes,
                boxes_name,
                io,
                &[batch.clone(), m.clone(), Dim::Fixed(4)],
                "x1, y1, x2, y2 of each detection in input (letterboxed) pixels, highest score first; undo the \
                 letterbox",
            )?,
            declare_output(
                &mut g,
                &det_scores,
                scores_name,
                io,
                &[batch.clone(), m.clone()],
                "score of each detection (0 in padding)",
            )?,
            declare_output(
                &mut g,
                &detections.classes,
                classes_name,
                ElemType::I64,
                &[batch.clone(), m],
                "class_names index of each detection (-1 in padding)",
            )?,
        ]
    } else {
        let (boxes, scores) = if io != compute {
            (cast(&mut g, &boxes, ONNX_FLOAT)?, cast(&mut g, &scores, ONNX_FLOAT)?)
        } else {
            (boxes, scores)
        };
        vec![
            declare_output(
                &mut g,
                &boxes,
                "boxes",
                io,
                &[batch.clone(), Dim::Fixed(locations), Dim::Fixed(4)],
                box_meaning,
            )?,
            declare_output(
                &mut g,
                &scores,
                "scores",
                io,
                &[batch.clone(), Dim::Fixed(locations), Dim::Fixed(classes)],
                score_meaning,
            )?,
        ]
    };
    let batch_meta = if options.dynamic_batch { None } else { Some(1) };
    let description = GraphDescription {
        task: TaskKind::Detect,
        architecture: match model {
            DetectorModel::Fcos(_) => "convnext-fpn-fcos",
            DetectorModel::FasterRcnn(_) => "convnext-fpn-faster-rcnn",
        }
        .into(),
        variant: spec.variant.clone(),
        class_names: spec.class_names.clone(),
        input: InputSpec {
            // Absent means apply, as in every model exported before the setting existed.
            exif: (spec.exif == Exif::Ignore).then(|| Exif::Ignore.name().to_string()),
            ..rgb_input(
                vec![batch_meta, Some(3), Some(s), Some(s)],
                io,
                "letterbox",
                None,
                [spec.img_size, spec.img_size],
                spec.normalize,
            )
        },
        outputs,
        training: spec.training.clone(),
        nms: Some(nms),
        ctc: None,
        temperature_scaling: None,
    };
    model_bytes(g, description, options)
}

/// The graph spec of a detection run's checkpoint: its size, preprocessing, classes and the run's NMS settings
/// with the options' changes.
pub fn graph_spec(ckpt: &checkpoint::Checkpoint, options: &ExportOptions) -> Result<DetectorGraphSpec> {
    options.refuse_calibrated(TaskKind::Detect)?;
    let config = &ckpt.state.config;
    let settings: DetectSettings = config.task_settings()?;
    Ok(DetectorGraphSpec {
        img_size: config.img_size,
        normalize: config.normalize,
        class_names: ckpt.state.class_names.clone(),
        variant: config.model.clone(),
        nms: options.nms.apply(settings.nms),
        training: TrainingInfo { epoch: ckpt.state.epoch, metrics: ckpt.state.val_metrics.clone() },
        exif: settings.exif,
    })
}
