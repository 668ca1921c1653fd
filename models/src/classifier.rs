//! Image classification: a ConvNeXt backbone and timm's `NormMlpClassifierHead` (pool → LayerNorm → dropout → fc).

use kiln_export::{Attr, Graph, Value};
use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

use crate::convnext::{ConvNext, ConvNextConfig};
use crate::layer_norm::{LayerNormLast, CONVNEXT_EPS};
use crate::onnx::{self, join, path_of};
use crate::{Error, Result};

/// What a classifier is: its architecture (a timm variant name) and its head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    /// `convnext_atto` … `convnext_base`.
    pub architecture: String,
    pub num_classes: i64,
    /// Stochastic depth rate of the last block.
    pub drop_path_rate: f64,
    /// Dropout before the final linear layer.
    pub drop_rate: f64,
}

impl ClassifierConfig {
    pub fn new(architecture: &str, num_classes: i64) -> Self {
        Self { architecture: architecture.to_string(), num_classes, drop_path_rate: 0.0, drop_rate: 0.0 }
    }

    pub fn backbone(&self) -> Result<ConvNextConfig> {
        Ok(ConvNextConfig::from_name(&self.architecture)?.with_drop_path_rate(self.drop_path_rate))
    }
}

/// The classification head: global average pool, LayerNorm, dropout, linear (`head.norm`, `head.fc`).
#[derive(Debug)]
pub struct ClassifierHead {
    norm: LayerNormLast,
    fc: nn::Linear,
    drop_rate: f64,
    name: String,
}

impl ClassifierHead {
    pub fn new(p: &nn::Path, in_features: i64, num_classes: i64, drop_rate: f64) -> Self {
        let norm = LayerNormLast::new(p / "norm", in_features, CONVNEXT_EPS);
        let fc = nn::linear(
            p / "fc",
            in_features,
            num_classes,
            nn::LinearConfig {
                ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 },
                bs_init: Some(nn::Init::Const(0.0)),
                bias: true,
            },
        );
        Self { norm, fc, drop_rate, name: path_of(p) }
    }

    /// ONNX of [`ClassifierHead::forward_t`] at inference (dropout is the identity): `[N, C, H, W]` → logits.
    pub fn emit(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        let pooled = g.scoped(&self.name, |g| -> kiln_export::Result<Value> {
            let pooled = g.op("GlobalAveragePool", &[x], vec![])?;
            g.op("Flatten", &[&pooled], vec![Attr::Int("axis", 1)])
        })?;
        let normed = self.norm.emit(g, &pooled)?;
        // MatMul + Add rather than Gemm: tract mistypes an fp16 Gemm.
        onnx::linear(g, &join(&self.name, "fc"), &self.fc, &normed)
    }
}

impl ModuleT for ClassifierHead {
    /// # Shapes
    /// `[N, C, H, W]` → `[N, num_classes]`
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let pooled = xs.mean_dim(&[2i64, 3][..], false, Kind::Float).to_kind(xs.kind());
        self.norm.forward(&pooled).dropout(self.drop_rate, train).apply(&self.fc)
    }
}

/// A ConvNeXt image classifier with timm's parameter names (`stem.*`, `stages.*`, `head.norm.*`, `head.fc.*`).
#[derive(Debug)]
pub struct ImageClassifier {
    pub backbone: ConvNext,
    pub head: ClassifierHead,
    pub config: ClassifierConfig,
}

impl ImageClassifier {
    /// Builds the model under `p`; pass the VarStore root to get timm's key names.
    pub fn new(p: &nn::Path, config: &ClassifierConfig) -> Result<Self> {
        Self::with_backbone(p, config, &config.backbone()?)
    }

    fn check(config: &ClassifierConfig) -> Result<()> {
        if config.num_classes < 1 {
            return Err(Error::InvalidSetting {
                key: "num_classes".into(),
                reason: format!("{} (need at least 1)", config.num_classes),
            });
        }
        if !(0.0..1.0).contains(&config.drop_rate) {
            return Err(Error::InvalidSetting {
                key: "drop_rate".into(),
                reason: format!("{} is not in [0, 1)", config.drop_rate),
            });
        }
        Ok(())
    }

    /// Builds the model with a custom backbone shape (`config.architecture` is then only a label).
    pub fn with_backbone(p: &nn::Path, config: &ClassifierConfig, backbone: &ConvNextConfig) -> Result<Self> {
        Self::check(config)?;
        let backbone = ConvNext::new(p, backbone)?;
        let head =
            ClassifierHead::new(&(p / "head"), backbone.config.num_features(), config.num_classes, config.drop_rate);
        Ok(Self { backbone, head, config: config.clone() })
    }

    /// Appends the model's inference graph to `g`: `images` `[N, 3, H, W]` → logits `[N, num_classes]`.
    pub fn emit(&self, g: &mut Graph, images: &Value) -> Result<Value> {
        let features = self.backbone.emit(g, images)?;
        self.head.emit(g, &features)
    }

    /// Parameter-path prefixes of the encoder's units in forward order (see [`ConvNext::unit_prefixes`]).
    pub fn encoder_units(&self) -> Vec<String> {
        self.backbone.unit_prefixes()
    }
}

impl ModuleT for ImageClassifier {
    /// # Shapes
    /// `[N, 3, H, W]` (H, W multiples of 32) → logits `[N, num_classes]`
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.head.forward_t(&self.backbone.forward_t(xs, train), train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convnext::VARIANTS;
    use tch::Device;

    #[test]
    fn every_variant_has_the_expected_output_shape_and_parameter_count() {
        // Parameter counts of timm's models with a 1000-class head (timm's model cards).
        let timm_params: [(&str, f64); 7] = [
            ("convnext_atto", 3.70),
            ("convnext_femto", 5.22),
            ("convnext_pico", 9.05),
            ("convnext_nano", 15.59),
            ("convnext_tiny", 28.59),
            ("convnext_small", 50.22),
            ("convnext_base", 88.59),
        ];
        for (name, millions) in timm_params {
            assert!(VARIANTS.contains(&name));
            let vs = nn::VarStore::new(Device::Cpu);
            let model = ImageClassifier::new(&vs.root(), &ClassifierConfig::new(name, 1000)).unwrap();
            let count: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
            assert!((count as f64 / 1e6 - millions).abs() < 0.01, "{name}: {count} parameters, timm has {millions}M");
            let cfg = &model.backbone.config;
            let xs = Tensor::zeros([2, 3, 64, 96], (Kind::Float, Device::Cpu));
            let features = tch::no_grad(|| model.backbone.forward_t(&xs, false));
            assert_eq!(features.size(), vec![2, cfg.num_features(), 2, 3], "{name}");
            if name == "convnext_atto" || name == "convnext_tiny" {
                let small =
                    ImageClassifier::new(&nn::VarStore::new(Device::Cpu).root(), &ClassifierConfig::new(name, 5))
                        .unwrap();
                let logits = tch::no_grad(|| small.forward_t(&xs, false));
                assert_eq!(logits.size(), vec![2, 5]);
            }
        }
    }

    #[test]
    fn unknown_architecture_lists_the_known_ones() {
        let vs = nn::VarStore::new(Device::Cpu);
        let err = ImageClassifier::new(&vs.root(), &ClassifierConfig::new("resnet50", 3)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("resnet50") && msg.contains("convnext_tiny"), "{msg}");
    }
}
