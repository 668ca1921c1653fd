//! Text-line recognition (CRNN: Shi et al., "An End-to-End Trainable Neural Network for Image-based Sequence
//! Recognition", <https://arxiv.org/abs/1507.05717>): a convolutional body whose downsampling leaves a column per
//! 4 pixels of width, the remaining height averaged away, a stacked bidirectional LSTM over the frames, and a
//! linear layer scoring each frame over the charset and the CTC blank (class 0).
//!
//! Two bodies ([`TextBackbone`]): VGG-BN ([`crate::vgg_bn`], 3×3 convolutions with BatchNorm and max-pooling,
//! height stride 16), and ConvNeXt (a stride-4 stem, then downsampling that halves only the height, height stride
//! 32; the seeds' CRNN).
//!
//! Parameters: the body at the root (VGG-BN's `stages.*`; ConvNeXt's `stem.*`, `stages.*` with timm's names, whose
//! 2×3 downsampling kernels do not take timm classifier weights), the LSTM under `rnn.` with PyTorch's names, the
//! frame classifier (over the LSTM output, and the frame features with `frame_shortcut`) under `head.`.

use kiln_export::{Attr, Graph, Value};
use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

use crate::bilstm::BiLstm;
use crate::convnext::{ConvNext, ConvNextConfig};
use crate::onnx;
use crate::vgg_bn::{VggBn, VggBnConfig};
use crate::{Error, Result};

/// Which convolutional body reads the line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextBackbone {
    /// ConvNeXt blocks (LayerNorm, GELU, layer scale) with height-only downsampling after a stride-4 stem: the
    /// seeds' CRNN, and the body that takes timm ConvNeXt weights. What a config saved before the choice existed
    /// means.
    #[default]
    Convnext,
    /// 3×3 convolution + BatchNorm + ReLU stages with max-pooling ([`crate::vgg_bn`]).
    VggBn,
}

impl TextBackbone {
    pub fn name(self) -> &'static str {
        match self {
            Self::Convnext => "convnext",
            Self::VggBn => "vgg_bn",
        }
    }

    /// Input rows per output row of the body with four stages (as every preset has): 32 for ConvNeXt (a stride-4
    /// stem and three height-halving downsamplings), 16 for VGG-BN (four height-halving pools).
    pub fn height_stride(self) -> i64 {
        match self {
            Self::Convnext => ConvNextConfig::atto().for_text_lines().output_stride()[0],
            Self::VggBn => VggBnConfig::default().output_stride()[0],
        }
    }
}

fn default_frame_shortcut() -> bool {
    true
}

/// The CTC blank's class index.
pub const BLANK: i64 = 0;

fn default_lstm_hidden() -> i64 {
    128
}
fn default_lstm_layers() -> usize {
    2
}
fn default_layer_scale_init() -> f64 {
    1.0
}

/// What a text-line recognizer is. Only `architecture`, `num_classes` and `input_height` are required when
/// deserialising.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecognizerConfig {
    /// The backbone's widths and depths, by timm name (`convnext_atto` … `convnext_base`), unless `dims` and
    /// `depths` are given.
    pub architecture: String,
    /// Charset size + 1 (the blank, class 0).
    pub num_classes: i64,
    /// Input height in pixels: a multiple of the backbone's height stride (32 with four stages).
    pub input_height: i64,
    /// Channels per stage, replacing the preset's (a smaller backbone for short lines or the CPU).
    #[serde(default)]
    pub dims: Option<Vec<i64>>,
    /// Blocks per stage, replacing the preset's.
    #[serde(default)]
    pub depths: Option<Vec<usize>>,
    /// LSTM units per direction.
    #[serde(default = "default_lstm_hidden")]
    pub lstm_hidden: i64,
    #[serde(default = "default_lstm_layers")]
    pub lstm_layers: usize,
    #[serde(default)]
    pub drop_path_rate: f64,
    /// The backbone blocks' initial layer scale (`gamma`). 1.0 by default, not timm's 1e-6 (blocks that start as
    /// the identity): from scratch, text lines leave CTC's all-blank plateau soonest with 1.0 (see
    /// `kiln_train::ocr::OcrSettings::layer_scale_init` for the measurement).
    #[serde(default = "default_layer_scale_init")]
    pub layer_scale_init: f64,
    /// The body: ConvNeXt (`architecture`'s widths, unless `dims` / `depths`) or VGG-BN (its own default widths,
    /// unless `dims` / `depths`).
    #[serde(default)]
    pub backbone: TextBackbone,
    /// Whether the frame classifier reads the frame features beside the LSTM's output (see
    /// [`TextLineRecognizer`]); without it, the classic CRNN head over the LSTM alone.
    #[serde(default = "default_frame_shortcut")]
    pub frame_shortcut: bool,
}

/// A recognizer's body, as configured.
#[derive(Debug)]
pub enum TextBody {
    ConvNext(Box<ConvNext>),
    VggBn(VggBn),
}

impl TextBody {
    /// `[N, 3, H, W]` → `[N, C, H / stride_h, W / 4]`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self {
            Self::ConvNext(b) => b.forward_t(xs, train),
            Self::VggBn(b) => b.forward_t(xs, train),
        }
    }

    pub fn emit(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        match self {
            Self::ConvNext(b) => b.emit(g, x),
            Self::VggBn(b) => b.emit(g, x),
        }
    }

    /// Parameter-path prefixes of the freezable units, input side first.
    pub fn unit_prefixes(&self) -> Vec<String> {
        match self {
            Self::ConvNext(b) => b.unit_prefixes(),
            Self::VggBn(b) => b.unit_prefixes(),
        }
    }
}

/// A body's config.
#[derive(Clone, Debug, PartialEq)]
pub enum TextBodyConfig {
    ConvNext(ConvNextConfig),
    VggBn(VggBnConfig),
}

impl TextBodyConfig {
    /// Input pixels per output row and frame, `[height, width]`.
    pub fn output_stride(&self) -> [i64; 2] {
        match self {
            Self::ConvNext(c) => c.output_stride(),
            Self::VggBn(c) => c.output_stride(),
        }
    }

    pub fn num_features(&self) -> i64 {
        match self {
            Self::ConvNext(c) => c.num_features(),
            Self::VggBn(c) => c.num_features(),
        }
    }
}

impl RecognizerConfig {
    pub fn new(architecture: &str, num_classes: i64, input_height: i64) -> Self {
        Self {
            architecture: architecture.into(),
            num_classes,
            input_height,
            dims: None,
            depths: None,
            lstm_hidden: default_lstm_hidden(),
            lstm_layers: default_lstm_layers(),
            drop_path_rate: 0.0,
            layer_scale_init: default_layer_scale_init(),
            backbone: TextBackbone::Convnext,
            frame_shortcut: default_frame_shortcut(),
        }
    }

    /// The body: for ConvNeXt the named preset (or the given widths and depths) with height-only downsampling;
    /// for VGG-BN its default widths (or the given ones).
    pub fn backbone(&self) -> Result<TextBodyConfig> {
        match self.backbone {
            TextBackbone::Convnext => {
                let mut config = ConvNextConfig::from_name(&self.architecture)?;
                if let Some(dims) = &self.dims {
                    config.dims = dims.clone();
                }
                if let Some(depths) = &self.depths {
                    config.depths = depths.clone();
                }
                config.layer_scale_init = self.layer_scale_init;
                Ok(TextBodyConfig::ConvNext(config.with_drop_path_rate(self.drop_path_rate).for_text_lines()))
            }
            TextBackbone::VggBn => {
                let mut config = VggBnConfig::default();
                if let Some(dims) = &self.dims {
                    config.dims = dims.clone();
                }
                if let Some(depths) = &self.depths {
                    config.depths = depths.clone();
                }
                Ok(TextBodyConfig::VggBn(config))
            }
        }
    }

    fn validate(&self, backbone: &TextBodyConfig) -> Result<()> {
        let invalid = |key: &str, reason: String| Err(Error::InvalidSetting { key: key.into(), reason });
        let [stride_h, _] = backbone.output_stride();
        if self.input_height < stride_h || self.input_height % stride_h != 0 {
            return invalid(
                "input_height",
                format!("{} is not a multiple of the backbone's height stride {stride_h}", self.input_height),
            );
        }
        if self.num_classes < 2 {
            return invalid("num_classes", format!("{} leaves no class besides the blank", self.num_classes));
        }
        if self.lstm_hidden < 1 || self.lstm_layers < 1 {
            return invalid("lstm_hidden/lstm_layers", "must be at least 1".into());
        }
        Ok(())
    }
}

/// The recognizer: backbone → mean over the remaining height → BiLSTM → per-frame class scores from the LSTM's
/// output and, beside it, the frame features themselves.
///
/// The shortcut around the LSTM (`frame_shortcut`) is what lets the ConvNeXt body train from scratch: with the
/// LSTM alone between its features and the classifier, CTC stayed on its all-blank plateau (loss ≈ 2.64 per
/// character on rendered digit lines) for 900 Adam steps at every learning rate and layer-scale init tried; with
/// the shortcut the loss fell to 0.5 in 150 steps and the LSTM adds context once the frames are read. The same
/// holds in PyTorch (timm's blocks: 50 % test CER without the shortcut, 9 % with it, after 4 epochs on real digit
/// lines). The VGG-BN body trains either way, and leaves the plateau sooner with it (README, OCR table).
#[derive(Debug)]
pub struct TextLineRecognizer {
    pub backbone: TextBody,
    pub rnn: BiLstm,
    head: nn::Linear,
    pub config: RecognizerConfig,
    width_stride: i64,
}

impl TextLineRecognizer {
    /// Builds the model under `p` (the VarStore root).
    pub fn new(p: &nn::Path, config: &RecognizerConfig) -> Result<Self> {
        let backbone_config = config.backbone()?;
        config.validate(&backbone_config)?;
        let backbone = match &backbone_config {
            TextBodyConfig::ConvNext(c) => TextBody::ConvNext(Box::new(ConvNext::new(p, c)?)),
            TextBodyConfig::VggBn(c) => TextBody::VggBn(VggBn::new(p, c)?),
        };
        let rnn = BiLstm::new(&(p / "rnn"), backbone_config.num_features(), config.lstm_hidden, config.lstm_layers);
        let shortcut = if config.frame_shortcut { backbone_config.num_features() } else { 0 };
        // PyTorch's default Linear init (uniform in ±1/√fan_in), not timm's N(0, 0.02) head: with the small init
        // the shortcut's gradient into the backbone was too weak to leave CTC's plateau in 300 steps.
        let head = nn::linear(p / "head", rnn.output_dim() + shortcut, config.num_classes, nn::LinearConfig::default());
        let [_, width_stride] = backbone_config.output_stride();
        Ok(Self { backbone, rnn, head, config: config.clone(), width_stride })
    }

    /// Input pixels per output frame along the width (4).
    pub fn width_stride(&self) -> i64 {
        self.width_stride
    }

    /// The frames of an input `width` pixels wide.
    pub fn frames(&self, width: i64) -> i64 {
        width / self.width_stride
    }

    /// Parameter-path prefixes of the backbone's freezable units (the stem, downsampling layers, blocks).
    pub fn encoder_units(&self) -> Vec<String> {
        self.backbone.unit_prefixes()
    }

    /// Per-frame class scores (logits; softmax over the last dimension gives probabilities, class 0 the blank).
    ///
    /// # Shapes
    /// `[N, 3, H, W]` → `[N, W / 4, num_classes]`
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let (frames, sequence) = self.frames_and_sequence(xs, train);
        if self.config.frame_shortcut {
            Tensor::cat(&[&sequence, &frames], -1).apply(&self.head)
        } else {
            sequence.apply(&self.head)
        }
    }

    /// The frame features `[N, T, C]` (the body's output averaged over its remaining rows) and the LSTM's output
    /// `[N, T, 2 · hidden]`.
    pub fn frames_and_sequence(&self, xs: &Tensor, train: bool) -> (Tensor, Tensor) {
        let features = self.backbone.forward_t(xs, train); // [N, C, H / stride_h, W / 4]
        let frames = features.mean_dim(&[2i64][..], false, features.kind()).permute([0, 2, 1]); // [N, T, C]
        let sequence = self.rnn.forward_t(&frames, train); // [N, T, 2 · hidden]
        (frames, sequence)
    }

    /// Per-frame probabilities at inference, what the exported graph returns.
    pub fn probabilities(&self, xs: &Tensor) -> Tensor {
        self.forward_t(xs, false).softmax(-1, Kind::Float)
    }

    /// ONNX of [`TextLineRecognizer::probabilities`]: `[N, 3, H, W]` → `[N, W / 4, num_classes]`.
    pub fn emit(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        let features = self.backbone.emit(g, x)?;
        let frames = g.scoped("frames", |g| -> Result<Value> {
            let pooled = onnx::mean_over(g, &features, 2, false)?; // [N, C, T]
            Ok(g.op("Transpose", &[&pooled], vec![Attr::Ints("perm", vec![2, 0, 1])])?)
            // [T, N, C]
        })?;
        let sequence = self.rnn.emit(g, &frames)?; // [T, N, 2 · hidden]
        let both = if self.config.frame_shortcut {
            g.scoped("head", |g| g.op("Concat", &[&sequence, &frames], vec![Attr::Int("axis", -1)]))?
        } else {
            sequence
        };
        let scores = onnx::linear(g, "head", &self.head, &both)?;
        Ok(g.scoped("head", |g| -> kiln_export::Result<Value> {
            let scores = g.op("Transpose", &[&scores], vec![Attr::Ints("perm", vec![1, 0, 2])])?;
            g.op("Softmax", &[&scores], vec![Attr::Int("axis", -1)])
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn small(classes: i64) -> RecognizerConfig {
        RecognizerConfig {
            dims: Some(vec![8, 16, 24, 32]),
            depths: Some(vec![1, 1, 1, 1]),
            lstm_hidden: 16,
            ..RecognizerConfig::new("convnext_atto", classes, 32)
        }
    }

    #[test]
    fn a_line_becomes_a_frame_per_four_pixels_of_width() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = TextLineRecognizer::new(&vs.root(), &small(11)).unwrap();
        let xs = Tensor::randn([2, 3, 32, 96], (Kind::Float, Device::Cpu));
        let probs = tch::no_grad(|| model.probabilities(&xs));
        assert_eq!(probs.size(), [2, 24, 11]);
        assert_eq!(model.frames(96), 24);
        let sums = probs.sum_dim_intlist(&[-1i64][..], false, Kind::Float);
        assert!(sums.allclose(&Tensor::ones_like(&sums), 1e-5, 1e-5, false));
        // Height 64 collapses too.
        let tall = Tensor::randn([1, 3, 64, 40], (Kind::Float, Device::Cpu));
        assert_eq!(tch::no_grad(|| model.forward_t(&tall, false)).size(), [1, 10, 11]);
    }

    #[test]
    fn bad_heights_and_class_counts_are_named() {
        let vs = nn::VarStore::new(Device::Cpu);
        let err = TextLineRecognizer::new(&vs.root(), &RecognizerConfig { input_height: 48, ..small(5) }).unwrap_err();
        assert!(err.to_string().contains("input_height") && err.to_string().contains("32"), "{err}");
        let err = TextLineRecognizer::new(&vs.root(), &small(1)).unwrap_err();
        assert!(err.to_string().contains("num_classes"), "{err}");
    }
}
