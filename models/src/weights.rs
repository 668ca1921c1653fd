//! Loading weights from safetensors files into a model's VarStore, with a report of every mismatch.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tch::{nn, Tensor};

use crate::error::Mismatch;
use crate::{Error, Result};

/// How strictly a weights file must match the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeadPolicy {
    /// Every parameter must be present with the same shape.
    #[default]
    Strict,
    /// Parameters under `head.` may be missing or differ in shape (a checkpoint trained on other classes):
    /// those keep their fresh initialisation and are listed in the report.
    ReinitialiseHead,
    /// A backbone checkpoint (e.g. a timm ConvNeXt classifier) into a model with other task layers (a
    /// detector): every backbone parameter (everything outside [`TASK_PREFIXES`]) must be in the file with its
    /// shape; task parameters are loaded where the file has them with the same shape and otherwise keep their
    /// fresh initialisation (listed in [`LoadReport::reinitialised`]); file tensors the model has no parameter
    /// for (a classifier's `head.norm.*`, `head.fc.*`) are skipped and listed in [`LoadReport::unused`].
    Backbone,
}

/// The parameter prefixes of task layers, which [`HeadPolicy::Backbone`] does not require from a file.
pub const TASK_PREFIXES: [&str; 2] = ["head.", "fpn."];

/// What a load did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    pub loaded: usize,
    /// Head parameters left at their initialisation under [`HeadPolicy::ReinitialiseHead`], or task parameters
    /// under [`HeadPolicy::Backbone`].
    pub reinitialised: Vec<String>,
    /// File tensors ignored because they start with an ignored prefix.
    pub ignored: usize,
    /// File tensors the model has no parameter for, skipped under [`HeadPolicy::Backbone`].
    pub unused: Vec<String>,
}

/// Reads all tensors of a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        return Err(Error::WeightsFile { path: path.to_path_buf(), reason: "no such file".into() });
    }
    Tensor::read_safetensors(path).map_err(|e| Error::WeightsFile {
        path: path.to_path_buf(),
        reason: format!("not a readable safetensors file: {e}"),
    })
}

/// Copies `tensors` into the variables of `vs` by name, converting dtype and device.
/// Tensors whose name starts with one of `ignore_prefixes` are skipped. Nothing is copied unless the whole
/// file matches (under `policy`): a mismatch is an error listing the first differing keys.
pub fn load_into(
    vs: &nn::VarStore,
    tensors: Vec<(String, Tensor)>,
    source: &Path,
    policy: HeadPolicy,
    ignore_prefixes: &[&str],
) -> Result<LoadReport> {
    let mut report = LoadReport::default();
    let mut file: BTreeMap<String, Tensor> = BTreeMap::new();
    for (name, tensor) in tensors {
        if ignore_prefixes.iter().any(|p| name.starts_with(p)) {
            report.ignored += 1;
        } else {
            file.insert(name, tensor);
        }
    }
    let variables: HashMap<String, Tensor> = vs.variables();
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort();

    let is_head = |name: &str| name.starts_with("head.");
    let is_task = |name: &str| TASK_PREFIXES.iter().any(|p| name.starts_with(p));
    let tolerated = |name: &str| match policy {
        HeadPolicy::Strict => false,
        HeadPolicy::ReinitialiseHead => is_head(name),
        HeadPolicy::Backbone => is_task(name),
    };
    let mut mismatch = Mismatch::default();
    let mut plan = Vec::new();
    for name in names {
        let var = &variables[name];
        match file.get(name.as_str()) {
            None if tolerated(name) => report.reinitialised.push(name.clone()),
            None => mismatch.missing.push(name.clone()),
            Some(src) if src.size() != var.size() => {
                if tolerated(name) {
                    report.reinitialised.push(name.clone());
                } else {
                    mismatch.shapes.push((name.clone(), var.size(), src.size()));
                }
            }
            Some(src) => plan.push((var, src)),
        }
    }
    let absent = file.keys().filter(|k| !variables.contains_key(k.as_str()));
    if policy == HeadPolicy::Backbone {
        report.unused = absent.cloned().collect();
    } else {
        mismatch.unexpected = absent.filter(|k| !tolerated(k)).cloned().collect();
    }
    if !mismatch.is_empty() {
        return Err(Error::WeightsMismatch { path: source.to_path_buf(), mismatch });
    }
    tch::no_grad(|| -> Result<()> {
        for (var, src) in &plan {
            let mut var = var.shallow_clone();
            var.f_copy_(&src.to_kind(var.kind()).to_device(var.device()))?;
        }
        Ok(())
    })?;
    report.loaded = plan.len();
    Ok(report)
}

/// Reads a safetensors file and loads it into `vs` (see [`load_into`]).
pub fn load_safetensors(vs: &nn::VarStore, path: &Path, policy: HeadPolicy) -> Result<LoadReport> {
    load_into(vs, read_safetensors(path)?, path, policy, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::{ClassifierConfig, ImageClassifier};
    use tch::{Device, Kind};

    fn model(vs: &nn::VarStore, classes: i64) -> ImageClassifier {
        ImageClassifier::new(&vs.root(), &ClassifierConfig::new("convnext_atto", classes)).unwrap()
    }

    #[test]
    fn round_trip_restores_every_parameter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a = nn::VarStore::new(Device::Cpu);
        model(&a, 3);
        let named: Vec<(String, Tensor)> = a.variables().into_iter().collect();
        Tensor::write_safetensors(&named, &path).unwrap();
        let b = nn::VarStore::new(Device::Cpu);
        model(&b, 3);
        let report = load_safetensors(&b, &path, HeadPolicy::Strict).unwrap();
        assert_eq!(report.loaded, a.variables().len());
        let bv = b.variables();
        for (name, t) in a.variables() {
            assert!(t.equal(&bv[&name]), "{name}");
        }
    }

    #[test]
    fn mismatches_are_listed_and_nothing_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a = nn::VarStore::new(Device::Cpu);
        model(&a, 3);
        let mut named: Vec<(String, Tensor)> = a.variables().into_iter().filter(|(n, _)| n != "stem.0.bias").collect();
        named.push(("extra.weight".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu))));
        Tensor::write_safetensors(&named, &path).unwrap();

        let b = nn::VarStore::new(Device::Cpu);
        model(&b, 5);
        let before = b.variables()["stem.0.weight"].copy();
        let err = load_safetensors(&b, &path, HeadPolicy::Strict).unwrap_err().to_string();
        assert!(err.contains("stem.0.bias") && err.contains("extra.weight") && err.contains("head.fc.weight"), "{err}");
        assert!(err.contains("[5, 320]") && err.contains("[3, 320]"), "{err}");
        assert!(b.variables()["stem.0.weight"].equal(&before), "a failed load must not change the model");
    }

    #[test]
    fn head_policy_keeps_a_fresh_head_for_other_classes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a = nn::VarStore::new(Device::Cpu);
        model(&a, 1000);
        let named: Vec<(String, Tensor)> = a.variables().into_iter().collect();
        Tensor::write_safetensors(&named, &path).unwrap();
        let b = nn::VarStore::new(Device::Cpu);
        model(&b, 4);
        let report = load_safetensors(&b, &path, HeadPolicy::ReinitialiseHead).unwrap();
        assert_eq!(report.reinitialised, vec!["head.fc.bias".to_string(), "head.fc.weight".to_string()]);
        assert!(a.variables()["stages.3.blocks.1.gamma"].equal(&b.variables()["stages.3.blocks.1.gamma"]));
    }

    #[test]
    fn a_classifier_checkpoint_loads_into_a_detector_backbone() {
        use crate::detector::{DetectorConfig, ObjectDetector};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("convnext_atto.safetensors");
        let classifier = nn::VarStore::new(Device::Cpu);
        model(&classifier, 1000);
        let named: Vec<(String, Tensor)> = classifier.variables().into_iter().collect();
        Tensor::write_safetensors(&named, &path).unwrap();

        let vs = nn::VarStore::new(Device::Cpu);
        ObjectDetector::new(&vs.root(), &DetectorConfig::new("convnext_atto", 3)).unwrap();
        let fresh_head = vs.variables()["head.classification_head.cls_logits.bias"].copy();
        let report = load_safetensors(&vs, &path, HeadPolicy::Backbone).unwrap();

        let theirs = classifier.variables();
        let ours = vs.variables();
        let backbone: Vec<&String> =
            ours.keys().filter(|n| n.starts_with("stem.") || n.starts_with("stages.")).collect();
        assert_eq!(report.loaded, backbone.len());
        for name in backbone {
            assert!(ours[name].equal(&theirs[name]), "{name}");
        }
        let task = ours.keys().filter(|n| n.starts_with("fpn.") || n.starts_with("head.")).count();
        assert_eq!(report.reinitialised.len(), task);
        assert!(report.reinitialised.iter().all(|n| n.starts_with("fpn.") || n.starts_with("head.")));
        assert_eq!(report.unused, ["head.fc.bias", "head.fc.weight", "head.norm.bias", "head.norm.weight"]);
        assert!(ours["head.classification_head.cls_logits.bias"].equal(&fresh_head), "the head keeps its init");
    }

    #[test]
    fn a_backbone_of_another_shape_or_an_incomplete_one_is_an_error() {
        use crate::detector::{DetectorConfig, ObjectDetector};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("femto.safetensors");
        let femto = nn::VarStore::new(Device::Cpu);
        ImageClassifier::new(&femto.root(), &ClassifierConfig::new("convnext_femto", 10)).unwrap();
        let named: Vec<(String, Tensor)> = femto.variables().into_iter().collect();
        Tensor::write_safetensors(&named, &path).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        ObjectDetector::new(&vs.root(), &DetectorConfig::new("convnext_atto", 3)).unwrap();
        let err = load_safetensors(&vs, &path, HeadPolicy::Backbone).unwrap_err().to_string();
        let named = "stages.0.blocks.0.conv_dw.weight (model [40, 1, 7, 7], file [48, 1, 7, 7])";
        assert!(err.contains(named) && err.contains("124 with other shapes"), "{err}");

        let path = dir.path().join("partial.safetensors");
        let atto = nn::VarStore::new(Device::Cpu);
        model(&atto, 10);
        let named: Vec<(String, Tensor)> =
            atto.variables().into_iter().filter(|(n, _)| !n.starts_with("stages.3.")).collect();
        Tensor::write_safetensors(&named, &path).unwrap();
        let err = load_safetensors(&vs, &path, HeadPolicy::Backbone).unwrap_err().to_string();
        assert!(err.contains("missing from the file") && err.contains("stages.3."), "{err}");
    }

    #[test]
    fn a_file_that_is_not_safetensors_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.safetensors");
        std::fs::write(&path, b"not a tensor file").unwrap();
        let err = read_safetensors(&path).unwrap_err().to_string();
        assert!(err.contains("junk.safetensors"), "{err}");
    }
}
