//! Object detection from a kiln model's metadata: letterbox preprocessing, the model's decoded `boxes` and
//! `scores`, non-maximum suppression with the settings the model was validated with (or overrides), and boxes
//! mapped back to each image's own pixels. Training's validation runs these same steps, so a detector's measured
//! mAP is what this returns.

use std::path::Path;

use image::RgbImage;

use kiln_export::NMS_OUTPUTS;

use crate::exif::Exif;
use crate::model::{Model, Output};
use crate::nms::{nms_per_image, Detection, NmsConfig};
use crate::preprocess::{decode_rgb_with, Placement, Preprocess, Resize};
use crate::{metadata_check, Error, Result};

/// A box on the letterboxed input mapped back to the pixels of the `width`×`height` image it came from,
/// clamped to that image.
pub fn unletterbox(bbox: [f32; 4], placement: &Placement, width: u32, height: u32) -> [f32; 4] {
    let (w, h) = (width as f32, height as f32);
    let x = |v: f32| ((v - placement.offset_x as f32) / placement.scale_x).clamp(0.0, w);
    let y = |v: f32| ((v - placement.offset_y as f32) / placement.scale_y).clamp(0.0, h);
    [x(bbox[0]), y(bbox[1]), x(bbox[2]), y(bbox[3])]
}

/// Where a model's detections come from.
enum Outputs {
    /// Every candidate (`boxes` `[N, A, 4]`, `scores` `[N, A, C]`): NMS runs here.
    Candidates { boxes: usize, scores: usize },
    /// NMS inside the graph with the metadata's settings (`num_detections`, `det_boxes`, `det_scores`,
    /// `det_classes`); a stricter score threshold and fewer detections can still be applied here.
    InGraph { num: usize, boxes: usize, scores: usize, classes: usize, graph: NmsConfig },
}

/// A detector over a [`Model`] whose metadata says `task: detect`, in either export form: candidates that NMS
/// runs on here, or NMS inside the graph (`kiln export onnx --nms-in-graph`). Both give the same detections.
pub struct Detector {
    model: Model,
    class_names: Vec<String>,
    preprocess: Preprocess,
    nms: NmsConfig,
    outputs: Outputs,
    exif: Exif,
}

impl Detector {
    /// Wraps a model with kiln detection metadata; NMS settings come from the metadata (kiln-infer's defaults
    /// when it has none).
    pub fn new(model: Model) -> Result<Self> {
        let path = model.path().to_path_buf();
        let meta = model.metadata().ok_or_else(|| Error::NoMetadata { path: path.clone() })?;
        if meta.task != "detect" {
            return Err(Error::WrongTask { path, expected: "detect".into(), found: meta.task.clone() });
        }
        metadata_check::check_has_classes(&path, meta)?;
        let nms = meta.nms.map_or_else(NmsConfig::default, |n| NmsConfig {
            iou_threshold: n.iou_threshold,
            score_threshold: n.score_threshold,
            max_detections: n.max_detections,
            class_agnostic: n.class_agnostic,
            pre_nms_top_k: n.pre_nms_top_k,
        });
        let in_graph = meta.nms.is_some_and(|n| n.in_graph);
        let class_names = meta.class_names.clone();
        let preprocess = model.preprocess().cloned().ok_or_else(|| Error::NoMetadata { path: path.clone() })?;
        if preprocess.resize != Resize::Letterbox {
            return Err(Error::Unsupported(format!(
                "{}: a detector with '{:?}' resizing",
                path.display(),
                preprocess.resize
            )));
        }
        let find = |name: &str| {
            model.outputs().iter().position(|o| o.name == name).ok_or_else(|| Error::ModelFile {
                path: path.clone(),
                reason: format!("a detect model without a '{name}' output"),
            })
        };
        let lie =
            |field: &str, reason: String| Error::MetadataField { path: path.clone(), field: field.into(), reason };
        let unit = 0.0..=1.0;
        if !unit.contains(&nms.iou_threshold) {
            return Err(lie("nms.iou_threshold", format!("{} is not in [0, 1]", nms.iou_threshold)));
        }
        if !unit.contains(&nms.score_threshold) {
            return Err(lie("nms.score_threshold", format!("{} is not in [0, 1]", nms.score_threshold)));
        }
        if nms.max_detections == 0 {
            return Err(lie("nms.max_detections", "0: the model could never detect anything".into()));
        }
        let outputs = if in_graph {
            let [num, boxes, scores, classes] = NMS_OUTPUTS;
            // The graph's slots per image (det_scores' last dimension) are what NMS keeps at most.
            if let Some(slots) = metadata_check::fixed_last_dim(model.outputs(), scores) {
                if slots != nms.max_detections {
                    return Err(lie(
                        "nms.max_detections",
                        format!("{}, but the graph's {scores} has {slots} slots per image", nms.max_detections),
                    ));
                }
            }
            Outputs::InGraph {
                num: find(num)?,
                boxes: find(boxes)?,
                scores: find(scores)?,
                classes: find(classes)?,
                graph: nms,
            }
        } else {
            let graph_classes = metadata_check::fixed_last_dim(model.outputs(), "scores");
            metadata_check::check_class_count(&path, "class_names", class_names.len(), graph_classes, "classes")?;
            Outputs::Candidates { boxes: find("boxes")?, scores: find("scores")? }
        };
        // Checked when the model was opened ([`crate::metadata_check`]).
        let exif = meta
            .input
            .exif
            .as_deref()
            .map_or(Ok(Exif::Apply), str::parse)
            .map_err(|reason| lie("input.exif", reason))?;
        Ok(Self { model, class_names, preprocess, nms, outputs, exif })
    }

    /// Replaces the NMS settings (IoU, score threshold, max detections, class-agnostic, pre-NMS top-k). A model
    /// with NMS in its graph takes only a score threshold at least its own and at most its own max detections;
    /// other changes are an error naming the file.
    pub fn with_nms(mut self, nms: NmsConfig) -> Result<Self> {
        if let Outputs::InGraph { graph, .. } = &self.outputs {
            let same = nms.iou_threshold == graph.iou_threshold
                && nms.class_agnostic == graph.class_agnostic
                && nms.pre_nms_top_k == graph.pre_nms_top_k;
            if !same || nms.score_threshold < graph.score_threshold || nms.max_detections > graph.max_detections {
                return Err(Error::Unsupported(format!(
                    "{}: NMS is inside this model's graph (IoU {}, score ≥ {}, {} detections, {}, top {} \
                     candidates); only a higher score threshold and fewer detections can be applied to it \
                     (asked for IoU {}, score ≥ {}, {} detections, {}, top {}); export without --nms-in-graph \
                     to choose freely",
                    self.model.path().display(),
                    graph.iou_threshold,
                    graph.score_threshold,
                    graph.max_detections,
                    agnostic_name(graph.class_agnostic),
                    graph.pre_nms_top_k,
                    nms.iou_threshold,
                    nms.score_threshold,
                    nms.max_detections,
                    agnostic_name(nms.class_agnostic),
                    nms.pre_nms_top_k,
                )));
            }
        }
        self.nms = nms;
        Ok(self)
    }

    pub fn nms(&self) -> &NmsConfig {
        &self.nms
    }

    /// The EXIF convention the model was trained with (`input.exif` in its metadata; apply when absent):
    /// [`Detector::predict_path`] reads images this way, and so should an application that decodes them itself
    /// ([`crate::preprocess::decode_rgb_with`], [`crate::file_batches_with`]).
    pub fn exif(&self) -> Exif {
        self.exif
    }

    /// Whether the model's graph runs NMS itself.
    pub fn nms_in_graph(&self) -> bool {
        matches!(self.outputs, Outputs::InGraph { .. })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// The detections of one decoded image, in its own pixels, highest score first.
    pub fn predict(&self, image: &RgbImage) -> Result<Vec<Detection>> {
        Ok(self.predict_batch(std::slice::from_ref(image))?.remove(0))
    }

    /// Decodes an image file (under the model's EXIF convention, [`Detector::exif`]) and detects on it.
    pub fn predict_path(&self, path: &Path) -> Result<Vec<Detection>> {
        let image =
            decode_rgb_with(path, self.exif).map_err(|reason| Error::Image { path: path.to_path_buf(), reason })?;
        self.predict(&image)
    }

    /// The detections of each image (any sizes). A model with a fixed batch size is run in chunks of that size.
    pub fn predict_batch(&self, images: &[RgbImage]) -> Result<Vec<Vec<Detection>>> {
        let per = self.preprocess.tensor_len();
        let fixed = self.model.fixed_batch();
        let mut results = Vec::with_capacity(images.len());
        for group in images.chunks(fixed.unwrap_or(images.len().max(1))) {
            let batch = fixed.unwrap_or(group.len());
            let mut input = vec![0.0; batch * per];
            let placements: Vec<Placement> =
                group.iter().zip(input.chunks_mut(per)).map(|(image, out)| self.preprocess.apply(image, out)).collect();
            let outputs = self.model.run(&input, batch)?;
            self.check_batch(&outputs, batch)?;
            for (i, (image, placement)) in group.iter().zip(&placements).enumerate() {
                let (w, h) = image.dimensions();
                let kept = self
                    .detections(&outputs, i, batch)?
                    .into_iter()
                    .map(|d| Detection { bbox: unletterbox(d.bbox, placement, w, h), ..d })
                    .collect();
                results.push(kept);
            }
        }
        Ok(results)
    }

    /// Once per run: the outputs hold one row per image and agree in length with each other.
    fn check_batch(&self, outputs: &[Output], batch: usize) -> Result<()> {
        let path = self.model.path();
        let num_classes = self.class_names.len();
        match self.outputs {
            Outputs::Candidates { boxes, scores } => {
                metadata_check::check_batch_rows(path, &outputs[boxes], batch)?;
                metadata_check::check_batch_rows(path, &outputs[scores], batch)?;
                let (boxes, scores) = (&outputs[boxes].data, &outputs[scores].data);
                let locations = boxes.len() / 4 / batch;
                if boxes.len() != locations * 4 * batch || scores.len() != locations * num_classes * batch {
                    return Err(Error::InvalidInput(format!(
                        "{}: the model gives {} scores for {locations} boxes and {num_classes} class names",
                        path.display(),
                        scores.len() / batch
                    )));
                }
            }
            Outputs::InGraph { num, boxes, scores, classes, .. } => {
                for output in [num, boxes, scores, classes] {
                    metadata_check::check_batch_rows(path, &outputs[output], batch)?;
                }
                let slots = outputs[scores].data.len() / batch;
                let lengths = [num, boxes, scores, classes].map(|o| outputs[o].data.len());
                if lengths != [batch, 4 * slots * batch, slots * batch, slots * batch] {
                    let [counts, box_values, scores, classes] = lengths;
                    return Err(Error::ModelOutput {
                        path: path.to_path_buf(),
                        output: NMS_OUTPUTS[0].into(),
                        reason: format!(
                            "NMS outputs of unequal lengths for a batch of {batch}: {counts} counts, {box_values} box \
                             values, {scores} scores, {classes} classes"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Image `i`'s detections on the letterboxed input, highest score first (the batch checked by
    /// [`Self::check_batch`]).
    fn detections(&self, outputs: &[Output], i: usize, batch: usize) -> Result<Vec<Detection>> {
        let num_classes = self.class_names.len();
        match self.outputs {
            Outputs::Candidates { boxes, scores } => {
                let (boxes, scores) = (&outputs[boxes].data, &outputs[scores].data);
                let locations = boxes.len() / 4 / batch;
                let image_boxes: Vec<[f32; 4]> = boxes[i * locations * 4..(i + 1) * locations * 4]
                    .chunks_exact(4)
                    .map(|c| [c[0], c[1], c[2], c[3]])
                    .collect();
                let image_scores = &scores[i * locations * num_classes..(i + 1) * locations * num_classes];
                Ok(nms_per_image(image_scores, &image_boxes, num_classes, &self.nms))
            }
            Outputs::InGraph { num, boxes, scores, classes, .. } => {
                let path = self.model.path();
                let slots = outputs[scores].data.len() / batch;
                let (num, boxes, scores, classes) =
                    (&outputs[num], &outputs[boxes].data, &outputs[scores].data, &outputs[classes].data);
                let count = num.data[i];
                if !(count >= 0.0 && count as usize <= slots) {
                    return Err(Error::ModelOutput {
                        path: path.to_path_buf(),
                        output: NMS_OUTPUTS[0].into(),
                        reason: format!("{count} detections for image {i}, which has {slots} slots"),
                    });
                }
                let count = count as usize;
                let mut kept = Vec::with_capacity(count);
                for j in i * slots..i * slots + count {
                    let class = classes[j];
                    if class < 0.0 || class as usize >= num_classes {
                        return Err(Error::InvalidInput(format!(
                            "{}: a detection of class {class} from a model with {num_classes} class names",
                            self.model.path().display()
                        )));
                    }
                    let score = scores[j];
                    if score < self.nms.score_threshold || kept.len() == self.nms.max_detections {
                        break;
                    }
                    let bbox = [boxes[4 * j], boxes[4 * j + 1], boxes[4 * j + 2], boxes[4 * j + 3]];
                    kept.push(Detection { bbox, score, class: class as usize });
                }
                Ok(kept)
            }
        }
    }
}

fn agnostic_name(agnostic: bool) -> &'static str {
    if agnostic {
        "class-agnostic"
    } else {
        "per class"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unletterbox_inverts_the_letterbox_and_clamps() {
        // A 200×100 image letterboxed onto 64×64: scale 0.32, 64×32 placed at y offset 16.
        let placement = Placement { scale_x: 0.32, scale_y: 0.32, offset_x: 0, offset_y: 16 };
        let back = unletterbox([6.4, 19.2, 32.0, 48.0], &placement, 200, 100);
        for (got, want) in back.iter().zip([20.0, 10.0, 100.0, 100.0]) {
            assert!((got - want).abs() < 1e-3, "{back:?}");
        }
        // A box in the padding above the image clamps to its top edge.
        assert_eq!(unletterbox([0.0, 0.0, 10.0, 8.0], &placement, 200, 100)[1], 0.0);
    }
}
