//! Building the classifier a config describes: architecture, head size, optional pretrained weights, freezing.

use tch::nn;

use kiln_models::weights::{load_into, read_safetensors, HeadPolicy, LoadReport};
use kiln_models::{ClassifierConfig, ImageClassifier};

use crate::checkpoint::TRAINING_PREFIXES;
use crate::config::TrainConfig;
use crate::optim::Param;
use crate::Result;

/// The model's config from the training config.
pub fn classifier_config(config: &TrainConfig, num_classes: usize) -> ClassifierConfig {
    ClassifierConfig {
        architecture: config.model.clone(),
        num_classes: num_classes as i64,
        drop_path_rate: config.drop_path_rate,
        drop_rate: config.drop_rate,
    }
}

/// Builds the classifier under the VarStore root and loads `config.weights` if given (a head for other classes is
/// re-initialised). Returns the model and what the weights load did.
pub fn build_classifier(
    vs: &nn::VarStore,
    config: &TrainConfig,
    num_classes: usize,
) -> Result<(ImageClassifier, Option<LoadReport>)> {
    let model = ImageClassifier::new(&vs.root(), &classifier_config(config, num_classes))?;
    let report = match &config.weights {
        Some(path) => {
            let tensors = read_safetensors(path)?;
            Some(load_into(vs, tensors, path, HeadPolicy::ReinitialiseHead, &TRAINING_PREFIXES)?)
        }
        None => None,
    };
    Ok((model, report))
}

/// Freezes the first `fraction` of the encoder's units and returns the parameters left to train, by name.
pub fn trainable_params(vs: &nn::VarStore, model: &ImageClassifier, fraction: f64) -> Vec<Param> {
    crate::engine::freeze::trainable_params(vs, &model.encoder_units(), fraction)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Freeze;
    use tch::Device;

    #[test]
    fn freezing_a_fraction_freezes_the_input_side_first() {
        let config = TrainConfig { data: "/d".into(), model: "convnext_atto".into(), ..Default::default() };
        let vs = nn::VarStore::new(Device::Cpu);
        let (model, report) = build_classifier(&vs, &config, 3).unwrap();
        assert!(report.is_none());
        let all = vs.variables().len();
        let none_frozen = trainable_params(&vs, &model, Freeze(0.0).0);
        assert_eq!(none_frozen.len(), all);

        let vs = nn::VarStore::new(Device::Cpu);
        let (model, _) = build_classifier(&vs, &config, 3).unwrap();
        let half = trainable_params(&vs, &model, 0.5);
        let names: Vec<&str> = half.iter().map(|p| p.name.as_str()).collect();
        assert!(!names.iter().any(|n| n.starts_with("stem.") || n.starts_with("stages.0.")), "{names:?}");
        assert!(names.iter().any(|n| n.starts_with("stages.3.")));
        assert!(!vs.variables()["stem.0.weight"].requires_grad());

        let vs = nn::VarStore::new(Device::Cpu);
        let (model, _) = build_classifier(&vs, &config, 3).unwrap();
        let head_only = trainable_params(&vs, &model, 1.0);
        assert!(head_only.iter().all(|p| p.name.starts_with("head.")), "only the head trains");
    }
}
