//! The detector a detection run trains: FCOS or Faster R-CNN (`detect.head`), behind one type so that every
//! detection command (training, validation, predict, export, the step bench) takes either.

use tch::{nn, Tensor};

use kiln_models::faster_rcnn::FasterRcnnConfig;
use kiln_models::{FasterRcnn, ObjectDetector};

use super::settings::{DetectHead, DetectSettings};
use super::setup::detector_config;
use crate::config::TrainConfig;
use crate::Result;

/// A detection run's model (one per run, so the variants' size difference does not matter).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum DetectorModel {
    Fcos(ObjectDetector),
    FasterRcnn(FasterRcnn),
}

/// Faster R-CNN's config from the training config.
pub fn faster_rcnn_config(config: &TrainConfig, num_classes: usize) -> Result<FasterRcnnConfig> {
    let settings: DetectSettings = config.task_settings()?;
    Ok(FasterRcnnConfig {
        architecture: config.model.clone(),
        num_classes: num_classes as i64,
        fpn_channels: settings.fpn_channels,
        drop_path_rate: config.drop_path_rate,
        anchors: settings.anchors,
        rpn: settings.rpn,
        roi_heads: settings.roi_heads,
    })
}

impl DetectorModel {
    /// The model `config`'s `detect.head` names, for `num_classes` classes, under the root of `vs`.
    pub fn new(vs: &nn::VarStore, config: &TrainConfig, num_classes: usize) -> Result<Self> {
        let settings: DetectSettings = config.task_settings()?;
        Ok(match settings.head {
            DetectHead::Fcos => Self::Fcos(ObjectDetector::new(&vs.root(), &detector_config(config, num_classes)?)?),
            DetectHead::FasterRcnn => {
                Self::FasterRcnn(FasterRcnn::new(&vs.root(), &faster_rcnn_config(config, num_classes)?)?)
            }
        })
    }

    pub fn head(&self) -> DetectHead {
        match self {
            Self::Fcos(_) => DetectHead::Fcos,
            Self::FasterRcnn(_) => DetectHead::FasterRcnn,
        }
    }

    /// An error unless `height × width` is an input the model takes (multiples of 32).
    pub fn check_input_size(&self, height: i64, width: i64) -> Result<()> {
        match self {
            Self::Fcos(m) => m.check_input_size(height, width)?,
            Self::FasterRcnn(m) => m.check_input_size(height, width)?,
        }
        Ok(())
    }

    /// Parameter-path prefixes of the backbone's units in forward order (what `freeze` counts).
    pub fn encoder_units(&self) -> Vec<String> {
        match self {
            Self::Fcos(m) => m.encoder_units(),
            Self::FasterRcnn(m) => m.encoder_units(),
        }
    }

    /// Boxes `[N, M, 4]` (input pixels) and per-class scores `[N, M, C]` of `images` in evaluation mode, before
    /// NMS: FCOS's every location, Faster R-CNN's best (proposal, class) pairs.
    pub fn candidates(&self, images: &Tensor) -> (Tensor, Tensor) {
        let size = images.size();
        let (height, width) = (size[2], size[3]);
        match self {
            Self::Fcos(m) => {
                let outputs = m.forward_t(images, false);
                let locations = m.locations(height, width).to_device(images.device());
                m.decode(&outputs, &locations)
            }
            Self::FasterRcnn(m) => m.detect(images, &m.anchors(height, width)),
        }
    }
}
